//! The settings the configuration's sections become, as the broker's parts
//! take them: plain values with their defaults, and the contract's limits
//! the configuration is checked against.

mod broker;
mod connections;
mod limits;
mod telemetry;
mod tokens;
mod witness;

pub use broker::{DEFAULT_MUTATIONS_POLL, MutationSettings, PersonsSettings};
pub use connections::{ConnectionCaps, GrpcSettings, HttpSettings};
pub use limits::{
    DEFAULT_AUDIT_SCAN_BUDGET, DEFAULT_CALL_BURST, DEFAULT_CALLS_IN_FLIGHT,
    DEFAULT_CALLS_PER_SECOND, DEFAULT_LOOKUP_BURST, DEFAULT_LOOKUPS_PER_DAY,
    DEFAULT_LOOKUPS_PER_SECOND, DEFAULT_PUBLICATION_BURST, DEFAULT_PUBLICATIONS_PER_SECOND,
    LimitSettings,
};
pub use telemetry::TelemetrySettings;
pub use tokens::{
    DEFAULT_CITIZEN_MAX_LIFETIME_S, DEFAULT_MAX_LIFETIME_S, IssuerSettings, TokenSettings,
    default_issuer_roles,
};
pub use witness::{WitnessSettings, WitnessTarget};

/// The most changes in one publication (`PublishMutations`).
pub const MAX_PUBLISH: usize = 1000;
/// The longest a pull waits for a first change, in seconds.
pub const MAX_WAIT_S: i32 = 30;
/// The same, in milliseconds: a unary call's timeout must exceed it.
pub const MAX_WAIT_MS: u64 = MAX_WAIT_S as u64 * 1000;
