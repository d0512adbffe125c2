//! What one peer may hold of the broker's ports: the caps on connections
//! both faces share, the gRPC port's limits and timeouts (`[grpc]`), and
//! the HTTP/JSON face's (`[http]`).

use std::time::Duration;

/// A face's caps on connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionCaps {
    /// Connections open at once, TLS handshakes included.
    pub max_connections: usize,
    /// Connections open at once from one address (an IPv6 address counts by
    /// its /64).
    pub per_address: usize,
    /// Of those, connections whose handshake showed no client certificate.
    pub per_address_without_certificate: usize,
    /// Connections without a client certificate open at once in all.
    pub without_certificate: usize,
    /// TLS handshakes in progress at once.
    pub handshakes: usize,
}

/// The gRPC port's limits and timeouts.
#[derive(Debug, Clone)]
pub struct GrpcSettings {
    /// Connections open at once, TLS handshakes included.
    pub max_connections: usize,
    /// Connections open at once from one address (an IPv6 address counts by
    /// its /64).
    pub max_connections_per_address: usize,
    /// Of those, connections whose handshake showed no client certificate.
    pub max_connections_per_address_without_certificate: usize,
    /// Connections without a client certificate open at once in all.
    pub max_connections_without_certificate: usize,
    /// TLS handshakes in progress at once.
    pub max_handshakes: usize,
    /// HTTP/2 streams (calls) a connection may have open at once, as the
    /// broker announces it (`SETTINGS_MAX_CONCURRENT_STREAMS`): a client
    /// queues more, a stream beyond it is refused.
    pub max_concurrent_streams: u32,
    /// Calls a connection may have in progress at once before their
    /// answer starts; more wait their turn.
    pub concurrency_limit_per_connection: usize,
    /// Calls open at once on one connection without a client certificate
    /// (health checks and watches, reflection, and the refusals of the
    /// rest).
    pub max_calls_per_connection_without_certificate: usize,
    /// Calls open at once on all connections without a certificate.
    pub max_calls_without_certificate: usize,
    /// `grpc.health.v1.Health/Watch` streams open at once on one connection.
    pub max_health_watches_per_connection: usize,
    /// `grpc.health.v1.Health/Watch` streams open at once in all.
    pub max_health_watches: usize,
    /// How long a unary call may take, from its request's first byte to its
    /// answer (DEADLINE_EXCEEDED, `CALL_TIMEOUT`; a client's shorter
    /// `grpc-timeout` wins). A streaming call's answer starts at once, so
    /// the timeout covers only its request (the first message for
    /// `Subscribe` and `Health/Watch`), never the stream.
    pub request_timeout: Duration,
    /// How often an HTTP/2 PING checks a connection that is silent.
    pub keepalive_interval: Duration,
    /// How long the PING's answer may take before the connection is closed.
    /// (These PINGs find a dead peer sooner than TCP keepalive would, and a
    /// peer whose TCP stack answers but whose HTTP/2 does not; tonic sets
    /// TCP keepalive only on listeners of its own, not on ours.)
    pub keepalive_timeout: Duration,
}

impl Default for GrpcSettings {
    fn default() -> Self {
        GrpcSettings {
            max_connections: 4096,
            max_connections_per_address: 64,
            max_connections_per_address_without_certificate: 8,
            max_connections_without_certificate: 256,
            max_handshakes: 1024,
            // The load generator runs 64 calls at once over one or a few
            // connections; an organisation's client pool does the like.
            max_concurrent_streams: 256,
            concurrency_limit_per_connection: 128,
            max_calls_per_connection_without_certificate: 16,
            max_calls_without_certificate: 1024,
            max_health_watches_per_connection: 8,
            max_health_watches: 1024,
            // Longer than a lookup may take (the source's deadline is at
            // most 120 s) and than a publication of a thousand changes.
            request_timeout: Duration::from_secs(150),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(20),
        }
    }
}

impl GrpcSettings {
    /// The caps on the port's connections.
    pub fn caps(&self) -> ConnectionCaps {
        ConnectionCaps {
            max_connections: self.max_connections,
            per_address: self.max_connections_per_address,
            per_address_without_certificate: self.max_connections_per_address_without_certificate,
            without_certificate: self.max_connections_without_certificate,
            handshakes: self.max_handshakes,
        }
    }
}

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
    pub fn caps(&self) -> ConnectionCaps {
        ConnectionCaps {
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
