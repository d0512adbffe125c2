//! A client of the broker for the command line: it speaks gRPC here and
//! hands the binary plain JSON values and [`CallError`]s, so the binary
//! never sees tonic or prost.
//!
//! It is built on the generated code (`semel-proto`), not on the server, so
//! it depends on no storage engine (`.ci/layering` holds that).
//!
//! The calls are methods of [`Client`], one module per service (`lookup`,
//! `registry`, `authorisations`, `persons`, `mutations`, `audit`); `json`
//! writes the answers the binary prints, `checks` reads the check syntax.

mod audit;
mod authorisations;
mod checks;
mod connection;
mod error;
mod json;
mod lookup;
mod mutations;
mod persons;
mod registry;
pub mod registry_files;

pub use audit::AuditFilter;
pub use authorisations::{AuthorisationPatch, NewAuthorisation};
pub use checks::{parse_check, parse_question};
pub use connection::{AuthChannel, Bearer, Client, ClientConfig, check_health, with_token};
pub use error::CallError;
pub use json::value_json;
pub use lookup::LookupArgs;
pub use mutations::{NewMutation, Subscription};
pub use persons::{NewConsent, NewFile};
pub use registry::{DatasetPatch, NewDataset};
