//! `[grpc]`: the gRPC port's limits on connections and calls, and its
//! timeouts.

use std::time::Duration;

use serde::Deserialize;

/// The gRPC port's limits (docs/operator-guide.md, "[grpc]"): anyone who
/// reaches the port may connect, and call health and reflection without a
/// certificate, so what one peer holds is bounded. Every key has a default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcSection {
    /// Connections open at once, handshakes included (default 4096).
    pub max_connections: usize,
    /// Connections open at once from one address (default 64; an IPv6
    /// address counts by its /64).
    pub max_connections_per_address: usize,
    /// Of those, connections without a client certificate (default 8).
    pub max_connections_per_address_without_certificate: usize,
    /// Connections without a client certificate from all addresses
    /// (default 256).
    pub max_connections_without_certificate: usize,
    /// TLS handshakes in progress at once (default 1024).
    pub max_handshakes: usize,
    /// HTTP/2 streams one connection may have open at once (default 256).
    pub max_concurrent_streams: u32,
    /// Calls one connection may have in progress before their answers
    /// start; more wait their turn (default 128).
    pub concurrency_limit_per_connection: usize,
    /// Calls open at once on one connection without a client certificate
    /// (default 16).
    pub max_calls_per_connection_without_certificate: usize,
    /// Calls open at once on all connections without a client certificate
    /// (default 1024).
    pub max_calls_without_certificate: usize,
    /// `grpc.health.v1.Health/Watch` streams open at once on one connection
    /// (default 8).
    pub max_health_watches_per_connection: usize,
    /// `grpc.health.v1.Health/Watch` streams open at once in all (default
    /// 1024).
    pub max_health_watches: usize,
    /// How long a unary call may take, in milliseconds (default 150000;
    /// more than `sources.deadline_ms` and than PullMutations' longest wait,
    /// 30 s). A stream's answer starts at once: the timeout covers only its
    /// request, never the stream.
    pub request_timeout_ms: u64,
    /// How often a silent connection is checked with an HTTP/2 PING, in
    /// milliseconds (default 30000).
    pub keepalive_interval_ms: u64,
    /// How long the PING's answer may take before the connection is closed,
    /// in milliseconds (default 20000).
    pub keepalive_timeout_ms: u64,
}

impl Default for GrpcSection {
    fn default() -> Self {
        let d = crate::settings::GrpcSettings::default();
        GrpcSection {
            max_connections: d.max_connections,
            max_connections_per_address: d.max_connections_per_address,
            max_connections_per_address_without_certificate: d
                .max_connections_per_address_without_certificate,
            max_connections_without_certificate: d.max_connections_without_certificate,
            max_handshakes: d.max_handshakes,
            max_concurrent_streams: d.max_concurrent_streams,
            concurrency_limit_per_connection: d.concurrency_limit_per_connection,
            max_calls_per_connection_without_certificate: d
                .max_calls_per_connection_without_certificate,
            max_calls_without_certificate: d.max_calls_without_certificate,
            max_health_watches_per_connection: d.max_health_watches_per_connection,
            max_health_watches: d.max_health_watches,
            request_timeout_ms: d.request_timeout.as_millis() as u64,
            keepalive_interval_ms: d.keepalive_interval.as_millis() as u64,
            keepalive_timeout_ms: d.keepalive_timeout.as_millis() as u64,
        }
    }
}

impl GrpcSection {
    /// The port's limits and timeouts.
    pub fn settings(&self) -> crate::settings::GrpcSettings {
        crate::settings::GrpcSettings {
            max_connections: self.max_connections,
            max_connections_per_address: self.max_connections_per_address,
            max_connections_per_address_without_certificate: self
                .max_connections_per_address_without_certificate,
            max_connections_without_certificate: self.max_connections_without_certificate,
            max_handshakes: self.max_handshakes,
            max_concurrent_streams: self.max_concurrent_streams,
            concurrency_limit_per_connection: self.concurrency_limit_per_connection,
            max_calls_per_connection_without_certificate: self
                .max_calls_per_connection_without_certificate,
            max_calls_without_certificate: self.max_calls_without_certificate,
            max_health_watches_per_connection: self.max_health_watches_per_connection,
            max_health_watches: self.max_health_watches,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            keepalive_interval: Duration::from_millis(self.keepalive_interval_ms),
            keepalive_timeout: Duration::from_millis(self.keepalive_timeout_ms),
        }
    }

    /// Every problem with the values, each naming its key; `deadline_ms` is
    /// the sources' deadline, which a unary call's timeout must exceed.
    pub(super) fn problems(&self, deadline_ms: u64) -> Vec<String> {
        let mut problems = Vec::new();
        let mut within = |key: &str, value: u64, low: u64, high: u64, bound: &str| {
            if !(low..=high).contains(&value) {
                problems.push(format!(
                    "grpc.{key}: must lie between {low} and {high}{bound}, got {value}"
                ));
            }
        };
        let streams = u64::from(self.max_concurrent_streams);
        let connections = self.max_connections as u64;
        let per_address = self.max_connections_per_address as u64;
        let calls_per_connection = self.max_calls_per_connection_without_certificate as u64;
        let watches_per_connection = self.max_health_watches_per_connection as u64;
        within("max_connections", connections, 1, 1_000_000, "");
        within(
            "max_connections_per_address",
            per_address,
            1,
            connections.max(1),
            " (grpc.max_connections)",
        );
        within(
            "max_connections_per_address_without_certificate",
            self.max_connections_per_address_without_certificate as u64,
            0,
            per_address,
            " (grpc.max_connections_per_address)",
        );
        within(
            "max_connections_without_certificate",
            self.max_connections_without_certificate as u64,
            0,
            connections,
            " (grpc.max_connections)",
        );
        within(
            "max_handshakes",
            self.max_handshakes as u64,
            1,
            connections.max(1),
            " (grpc.max_connections)",
        );
        within("max_concurrent_streams", streams, 1, 10_000, "");
        within(
            "concurrency_limit_per_connection",
            self.concurrency_limit_per_connection as u64,
            1,
            streams.max(1),
            " (grpc.max_concurrent_streams)",
        );
        within(
            "max_calls_per_connection_without_certificate",
            calls_per_connection,
            1,
            streams.max(1),
            " (grpc.max_concurrent_streams)",
        );
        within(
            "max_calls_without_certificate",
            self.max_calls_without_certificate as u64,
            calls_per_connection,
            1_000_000,
            "",
        );
        within(
            "max_health_watches_per_connection",
            watches_per_connection,
            0,
            streams,
            " (grpc.max_concurrent_streams)",
        );
        within(
            "max_health_watches",
            self.max_health_watches as u64,
            watches_per_connection,
            1_000_000,
            "",
        );
        // A lookup waits for its source; PullMutations waits for changes.
        within(
            "request_timeout_ms",
            self.request_timeout_ms,
            deadline_ms
                .max(crate::settings::MAX_WAIT_MS)
                .saturating_add(1),
            3_600_000,
            " (more than sources.deadline_ms and PullMutations' longest wait)",
        );
        within(
            "keepalive_interval_ms",
            self.keepalive_interval_ms,
            1000,
            3_600_000,
            "",
        );
        within(
            "keepalive_timeout_ms",
            self.keepalive_timeout_ms,
            1000,
            600_000,
            "",
        );
        problems
    }
}
