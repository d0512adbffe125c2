//! The demo assembled, for `semel demo`, the load generators and the
//! end-to-end tests: the broker on the embedded store or PostgreSQL, its
//! HTTP/JSON face, a witness, the three demo authentic sources
//! ([`demo_source`]) and the seeded registry, all in one process
//! ([`demo::Demo`]).
//!
//! The fixtures (population, organisations, development PKI and token
//! issuer) are `semel-demo`'s, which knows no server; this crate is where
//! they meet one.

pub mod demo;
pub mod demo_source;

pub use demo::{Demo, DemoOptions};
