//! `[http]`: the HTTP/JSON face's address, limits and timeouts.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

/// The HTTP/JSON face (docs/integration-guide.md, "HTTP/JSON"): the same
/// operations, identity, rules and audit as the gRPC port, on a port of its
/// own. It speaks HTTPS with mutual TLS only, with the `[tls]` files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// Address of the HTTP/JSON port.
    pub listen: SocketAddr,
    /// Connections open at once, handshakes included (default 4096); one
    /// more is closed at once.
    #[serde(default = "default_http_max_connections")]
    pub max_connections: usize,
    /// Connections open at once from one address (default 64; an IPv6
    /// address counts by its /64, which one host commonly holds whole).
    #[serde(default = "default_http_max_connections_per_address")]
    pub max_connections_per_address: usize,
    /// Of those, connections without a client certificate (default 8): they
    /// are served only the console's files and a 401.
    #[serde(default = "default_http_max_connections_per_address_without_certificate")]
    pub max_connections_per_address_without_certificate: usize,
    /// Connections without a client certificate open at once from all
    /// addresses (default 1024): the rest is kept for organisations.
    #[serde(default = "default_http_max_connections_without_certificate")]
    pub max_connections_without_certificate: usize,
    /// TLS handshakes in progress at once (default 1024).
    #[serde(default = "default_http_max_handshakes")]
    pub max_handshakes: usize,
    /// How long a request's body may take to arrive, in milliseconds
    /// (default 30000); a slower one is refused (408). Also how long an
    /// answer may wait for the client to take any of it, after which the
    /// connection is closed.
    #[serde(default = "default_http_body_timeout_ms")]
    pub body_timeout_ms: u64,
    /// How long a client may take to send a request's headers, counted from
    /// the connection's start or the end of the previous answer, in
    /// milliseconds (default 75000): also how long an idle connection is
    /// kept open.
    #[serde(default = "default_http_header_timeout_ms")]
    pub header_timeout_ms: u64,
}

fn default_http_max_connections() -> usize {
    crate::settings::HttpSettings::default().max_connections
}

fn default_http_max_connections_per_address() -> usize {
    crate::settings::HttpSettings::default().max_connections_per_address
}

fn default_http_max_connections_per_address_without_certificate() -> usize {
    crate::settings::HttpSettings::default().max_connections_per_address_without_certificate
}

fn default_http_max_connections_without_certificate() -> usize {
    crate::settings::HttpSettings::default().max_connections_without_certificate
}

fn default_http_max_handshakes() -> usize {
    crate::settings::HttpSettings::default().max_handshakes
}

fn default_http_body_timeout_ms() -> u64 {
    crate::settings::HttpSettings::default()
        .body_timeout
        .as_millis() as u64
}

fn default_http_header_timeout_ms() -> u64 {
    crate::settings::HttpSettings::default()
        .header_timeout
        .as_millis() as u64
}

impl HttpSection {
    /// The face's limits and timeouts.
    pub fn settings(&self) -> crate::settings::HttpSettings {
        crate::settings::HttpSettings {
            max_connections: self.max_connections,
            max_connections_per_address: self.max_connections_per_address,
            max_connections_per_address_without_certificate: self
                .max_connections_per_address_without_certificate,
            max_connections_without_certificate: self.max_connections_without_certificate,
            max_handshakes: self.max_handshakes,
            body_timeout: Duration::from_millis(self.body_timeout_ms),
            header_timeout: Duration::from_millis(self.header_timeout_ms),
        }
    }

    /// Every problem with the values, each naming its key.
    pub(super) fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut ensure = |ok: bool, problem: String| {
            if !ok {
                problems.push(problem);
            }
        };
        ensure(
            (1..=1_000_000).contains(&self.max_connections),
            format!(
                "http.max_connections: must lie between 1 and 1000000, got {}",
                self.max_connections
            ),
        );
        ensure(
            (1..=self.max_connections.max(1)).contains(&self.max_connections_per_address),
            format!(
                "http.max_connections_per_address: must lie between 1 and http.max_connections ({}), got {}",
                self.max_connections, self.max_connections_per_address
            ),
        );
        ensure(
            self.max_connections_per_address_without_certificate
                <= self.max_connections_per_address,
            format!(
                "http.max_connections_per_address_without_certificate: at most http.max_connections_per_address ({}), got {}",
                self.max_connections_per_address,
                self.max_connections_per_address_without_certificate
            ),
        );
        ensure(
            self.max_connections_without_certificate <= self.max_connections,
            format!(
                "http.max_connections_without_certificate: at most http.max_connections ({}), got {}",
                self.max_connections, self.max_connections_without_certificate
            ),
        );
        ensure(
            (1..=self.max_connections.max(1)).contains(&self.max_handshakes),
            format!(
                "http.max_handshakes: must lie between 1 and http.max_connections ({}), got {}",
                self.max_connections, self.max_handshakes
            ),
        );
        ensure(
            (100..=600_000).contains(&self.body_timeout_ms),
            format!(
                "http.body_timeout_ms: must lie between 100 and 600000, got {}",
                self.body_timeout_ms
            ),
        );
        ensure(
            (100..=3_600_000).contains(&self.header_timeout_ms),
            format!(
                "http.header_timeout_ms: must lie between 100 and 3600000, got {}",
                self.header_timeout_ms
            ),
        );
        problems
    }
}
