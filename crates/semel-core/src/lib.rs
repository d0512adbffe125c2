//! Semel's domain, with no I/O: identifiers that can only hold valid numbers,
//! the registry's objects, the lookup decision and the audit entry encoding.
//!
//! Nothing here knows about tokio, tonic, prost or sled; the layering check
//! in `.ci/run` holds that absence.

mod audit;
mod clock;
mod decision;
mod kbo;
mod names;
mod niss;
mod registry;

pub use audit::{
    AuditDecision, AuditEntry, AuditRecord, DecodeError, Hash, MAX_TEXT, Outcome, ReasonCode,
    ZERO_HASH, entry_hash,
};
pub use clock::brussels_today;
pub use decision::{Decision, LookupQuestion, Refusal, RefusalReason, decide};
pub use kbo::{Kbo, KboError};
pub use names::{AuthorisationRef, DatasetName, FieldName, NameError, PurposeCode};
pub use niss::{Niss, NissError, NissKind, Sex};
pub use registry::{
    Authorisation, AuthorisationStatus, Dataset, FieldDefinition, FieldType, Organisation,
    OrganisationStatus, Role,
};
