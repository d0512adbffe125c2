//! The HTTP/JSON face's settings (`[http]` in the configuration), read by
//! the configuration and the demo here, and served by `semel-http`.

use std::time::Duration;

/// The face's limits on connections and its timeouts (`[http]` in the
/// configuration). Anyone who reaches the port can open a connection, with
/// or without a certificate: these keep what one peer holds small, and what
/// it holds for free short.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Connections open at once, TLS handshakes included.
    pub max_connections: usize,
    /// Connections open at once from one address (an IPv6 address counts by
    /// its /64).
    pub max_connections_per_address: usize,
    /// Of those, connections whose handshake showed no client certificate.
    pub max_connections_per_address_without_certificate: usize,
    /// Connections without a client certificate open at once in all: the
    /// rest is kept for organisations.
    pub max_connections_without_certificate: usize,
    /// TLS handshakes in progress at once.
    pub max_handshakes: usize,
    /// How long a request's body may take to arrive; also how long an
    /// answer may wait for the client to take any of it.
    pub body_timeout: Duration,
    /// How long a client may take to send a request's headers, counted
    /// from the connection's start or the end of the previous answer on a
    /// kept-alive connection: an idle connection is closed after it.
    pub header_timeout: Duration,
}

impl HttpSettings {
    /// The caps on the face's connections.
    pub fn caps(&self) -> crate::connection_slots::ConnectionCaps {
        crate::connection_slots::ConnectionCaps {
            max_connections: self.max_connections,
            per_address: self.max_connections_per_address,
            per_address_without_certificate: self.max_connections_per_address_without_certificate,
            without_certificate: self.max_connections_without_certificate,
            handshakes: self.max_handshakes,
        }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            max_connections: 4096,
            max_connections_per_address: 64,
            max_connections_per_address_without_certificate: 8,
            max_connections_without_certificate: 1024,
            max_handshakes: 1024,
            body_timeout: Duration::from_secs(30),
            // Longer than common client pools' idle times, so that a
            // client rarely sends a request on a connection being closed.
            header_timeout: Duration::from_secs(75),
        }
    }
}
