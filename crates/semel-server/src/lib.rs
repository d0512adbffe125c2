//! Semel's gRPC edge: the services, the caller's identity from mutual TLS,
//! the lookup path and clients of the sources.
//!
//! This crate, `semel-proto` (the generated code, re-exported here as
//! [`proto`]) and `semel-client` are the only ones that know tonic and
//! prost: protobuf messages are converted to `semel_core` types in
//! [`convert`], and errors become `tonic::Status` only in
//! [`error::ApiError::into_status`].

mod audit;
pub mod audited;
mod checks;
pub mod codec;
pub mod config;
pub mod connection_slots;
mod convert;
pub mod error;
pub mod grpc_limits;
pub mod http_settings;
pub mod limits;
mod lookup;
pub mod metrics;
mod mutations;
pub mod permissions;
mod persons;
pub mod readiness;
pub mod reasons;
pub mod reflection;
mod registry;
pub mod server;
pub mod source_channel;
pub mod state;
pub mod stores;
pub mod telemetry;
pub mod tls;
pub mod tokens;
pub mod witness;

pub use config::Config;
/// The contract's date format (YYYY-MM-DD), for sources built outside this
/// crate (the demo's) that read and write dates as the broker does.
pub use convert::{format_date, parse_date};
pub use registry::MAX_PENDING_APPLICATIONS;
/// The generated code of `semel.v1`, which this crate serves.
pub use semel_proto as proto;
