//! `ApplyRegistry`: the registry described in full (the reviewed files of
//! `semel registry apply`), planned against the registry as stored and
//! applied all or nothing.
//!
//! The plan is made from the store, not the snapshot (another broker may
//! have changed it), under the admin lock. Every rule a single change obeys
//! is checked against the registry as it will be, and every broken rule is
//! reported at once, each named by its item (`authorisations[3].fields`).
//! Each change's audit entry is made durable before anything is stored;
//! then every write is stored in one commit (all or nothing, for every
//! broker), and the call's own entry (the last of the apply) says whether
//! it was applied: an apply's changes stand exactly when that last entry
//! says it was applied. A broker killed before the commit leaves the
//! registry as it was and change entries with no closing entry (not
//! applied).

mod commit;
mod plan;
mod settle;

pub(super) use commit::{close_marker, record_change, undo_all, write};
pub(super) use plan::{Current, Plan, Write, plan};
