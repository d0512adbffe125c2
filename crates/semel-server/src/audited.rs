//! Calls other than lookups that change the rules or read personal data:
//! each is recorded in the audit log, allowed or refused, before it is
//! answered. A change is stored, its entry made durable, and only then is
//! the answer sent; if the entry cannot be written the change is undone and
//! the call fails. A read is answered only once its entry is durable.

use semel_core::{AuditDecision, Kbo, Niss, Outcome};

use crate::error::ApiError;
use crate::state::{Broker, Caller};

/// What to do to take a change back when its entry cannot be written: a
/// future, which does nothing unless it is awaited.
pub type Undo = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// What puts a stored change in force once its entry is durable: seals
/// the rows it wrote with that entry (no rule without its entry; see
/// `PersonsStore::seal_files`). Runs after the entry, never without it.
/// Idempotent: it may run again while its store fails.
pub type Seal = Box<
    dyn Fn(
            semel_storage::Appended,
        ) -> std::pin::Pin<
            Box<dyn Future<Output = Result<(), semel_storage::StorageError>> + Send>,
        > + Send
        + Sync,
>;

/// Seals files with the entry of the change that stored them.
pub fn seal_files(
    persons: std::sync::Arc<dyn semel_storage::PersonsStore>,
    files: Vec<semel_core::PersonFile>,
) -> Seal {
    Box::new(move |at| {
        let (persons, files) = (persons.clone(), files.clone());
        Box::pin(async move { persons.seal_files(&files, at).await })
    })
}

/// Seals a consent with the entry of the change that stored it.
pub fn seal_consent(
    persons: std::sync::Arc<dyn semel_storage::PersonsStore>,
    consent: semel_core::Consent,
) -> Seal {
    Box::new(move |at| {
        let (persons, consent) = (persons.clone(), consent.clone());
        Box::pin(async move { persons.seal_consent(&consent, at).await })
    })
}

/// Seals a number replacement (as stored) with the entry that recorded it.
pub fn seal_replacement(
    persons: std::sync::Arc<dyn semel_storage::PersonsStore>,
    replacement: semel_core::NumberReplacement,
) -> Seal {
    Box::new(move |at| {
        let (persons, replacement) = (persons.clone(), replacement.clone());
        Box::pin(async move { persons.seal_replacement(&replacement, at).await })
    })
}

/// The undo of a read, or of a change that stands whatever happens (a
/// number replaced by the register).
pub fn nothing_to_undo() -> Undo {
    Box::pin(async {})
}

/// Runs an undo until it succeeds: its store may be failing for the same
/// reason the entry was (PostgreSQL unreachable), and a change without its
/// entry must not stay. Gives up, loudly, after ten minutes, or at once
/// when a later change stands on this one. Says whether it was undone.
pub async fn retry_undo<F, Fut>(what: &str, mut undo: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), semel_storage::StorageError>>,
{
    let started = std::time::Instant::now();
    let mut wait = std::time::Duration::from_millis(100);
    // A storage error may quote what it failed on: never a number in a log.
    let said = |e: &semel_storage::StorageError| {
        semel_core::redact_national_numbers(&e.to_string()).into_owned()
    };
    loop {
        match undo().await {
            Ok(()) => return true,
            Err(ref e @ semel_storage::StorageError::Conflict(_)) => {
                let e = said(e);
                // The record moved on (a later change, through another
                // broker): taking this one back would undo that one too.
                tracing::error!(error = %e, what, "a change whose audit entry failed was not undone: a later change stands on it; an operator must review it");
                return false;
            }
            Err(e) if started.elapsed() > std::time::Duration::from_secs(600) => {
                let e = said(&e);
                tracing::error!(error = %e, what, "a change whose audit entry failed could not be undone: it stands without its entry; an operator must take it back");
                return false;
            }
            Err(e) => {
                let e = said(&e);
                tracing::warn!(error = %e, what, "a change whose audit entry failed is not undone yet; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(5));
            }
        }
    }
}

/// What a call learnt, for its audit entry.
///
/// A refused call's entry is attributed to the caller, whose own auditor
/// reads it: fill it with what the caller asked, and with what was read
/// from the store only once the caller is known to be allowed to read it
/// (check, then record). A refusal records what was asked, never what was
/// refused.
#[derive(Default)]
pub struct Change {
    pub citizen: Option<Niss>,
    pub citizen_as_given: Option<Niss>,
    pub purpose: String,
    pub dataset: String,
    pub source: Option<Kbo>,
    pub authorisation: Option<String>,
    /// The version of `authorisation` decided under, or made.
    pub authorisation_version: Option<u32>,
    pub reference: String,
    /// What was done, in words: the rule changed (before and after), the
    /// query run. Never a citizen's number.
    pub detail: String,
    /// Seals the rows the change stored with its entry, once durable.
    pub seal: Option<Seal>,
    /// A registry change written but not in force (see
    /// `RegistryStore::stage`): sealed with the entry and committed once
    /// the entry is durable, then the registry reloaded; rolled back
    /// (dropped) otherwise.
    pub registry: Option<Box<dyn semel_storage::OpenChange>>,
}

impl Broker {
    /// Runs a call and records it, allowed or refused. `undo` reverts the
    /// stored change when its entry cannot be made durable. Returns the
    /// value and the request id of the entry.
    pub async fn audited<T>(
        &self,
        caller: &Caller,
        run: impl AsyncFnOnce(&mut Change) -> Result<(T, Undo), ApiError>,
    ) -> Result<(T, String), ApiError> {
        let request_id = crate::state::new_id();
        let mut change = Change::default();
        let mut result = run(&mut change).await;
        // An entry states its change whole or the change does not stand:
        // a detail that cannot hold it is an error, never a cut.
        // Measured as it is written: masked numbers take more room.
        let written = semel_core::redact_national_numbers(&change.detail).len();
        if result.is_ok() && written > semel_core::MAX_DETAIL {
            let size = written;
            if let Ok((_, undo)) = std::mem::replace(&mut result, Err(ApiError::internal(""))) {
                let _ = tokio::spawn(undo).await;
            }
            result = Err(ApiError::new(
                tonic::Code::InvalidArgument,
                "INVALID_ARGUMENT",
                format!(
                    "this change takes {size} bytes to state and an audit entry holds {}: nothing was changed; make it in smaller steps",
                    semel_core::MAX_DETAIL
                ),
            ));
        }
        let mut record = self.audit_record(caller, request_id);
        record.citizen = change.citizen;
        record.citizen_as_given = change.citizen_as_given;
        record.end_user = Some(crate::state::recorded_end_user(
            &caller.user,
            record.citizen,
            record.citizen_as_given,
        ));
        record.purpose = change.purpose;
        record.dataset = change.dataset;
        record.source = change.source;
        record.authorisation = change.authorisation;
        record.authorisation_version = change.authorisation_version;
        record.consumer_reference =
            semel_core::redact_national_numbers(&change.reference).into_owned();
        match &result {
            Ok(_) => {
                record.detail = semel_core::redact_national_numbers(&change.detail).into_owned();
                record.outcome = Outcome::Answered;
            }
            Err(e) => {
                record.decision = AuditDecision::Refused;
                record.reason = e.reason_code();
                // Messages may repeat what the caller sent: never a number.
                record.detail = semel_core::redact_national_numbers(&e.message).into_owned();
            }
        }
        let appended = self.append_durably_at(record).await;
        let request_id = request_id.to_string();
        let entry = match (&result, &appended) {
            (Ok(_), Ok(at)) => Some(*at),
            _ => None,
        };
        if let (Some(at), Some(open)) = (entry, change.registry.take()) {
            // On a task of its own, as an undo: a caller who gives up does
            // not leave the change recorded and never committed.
            let sealed = tokio::spawn(open.seal(at)).await;
            match sealed {
                Ok(Ok(())) => {
                    // In force on the next call; should this read fail,
                    // the registry watch reloads on the change's NOTIFY.
                    if let Err(e) = self.reload().await {
                        tracing::warn!(error = %e.message, "registry reload after a change failed; the registry watch will reload it");
                    }
                }
                Ok(Err(e)) => {
                    let error = semel_core::redact_national_numbers(&e.to_string()).into_owned();
                    tracing::error!(%error, "a registry change was recorded but its commit failed: it is not in force");
                    return Err(ApiError::retryable(
                        tonic::Code::Unavailable,
                        "STORAGE_UNAVAILABLE",
                        "the change was recorded but the broker's storage failed before it took effect, so it is not in force; read the registry and make it again",
                    )
                    .with("request_id", request_id));
                }
                Err(e) => {
                    return Err(
                        ApiError::internal(format!("committing a change stopped: {e}"))
                            .with("request_id", request_id),
                    );
                }
            }
        }
        match (result, appended) {
            (Ok((value, _)), Ok(at)) => match change.seal.take() {
                None => Ok((value, request_id)),
                // On a task of its own, as an undo: a caller who gives up
                // does not leave the change recorded and never sealed.
                Some(seal) => match tokio::spawn(seal_with_retries(seal, at)).await {
                    Ok(Ok(())) => Ok((value, request_id)),
                    Ok(Err(e)) => {
                        let error =
                            semel_core::redact_national_numbers(&e.to_string()).into_owned();
                        tracing::error!(%error, "a change was recorded but could not be sealed: it is not in force");
                        Err(ApiError::retryable(
                            tonic::Code::Unavailable,
                            "STORAGE_UNAVAILABLE",
                            "the change was recorded but the broker's storage failed before it took effect, so it is not in force; make it again",
                        )
                        .with("request_id", request_id))
                    }
                    Err(e) => Err(ApiError::internal(format!("sealing a change stopped: {e}"))
                        .with("request_id", request_id)),
                },
            },
            (Ok((_, undo)), Err(e)) => {
                // On a task of its own: a caller who gives up (a deadline,
                // a reset stream) drops this handler, not the undo.
                let _ = tokio::spawn(undo).await;
                Err(e.with("request_id", request_id))
            }
            (Err(e), _) => Err(e.with("request_id", request_id)),
        }
    }
}

/// Seals a change, trying again for a few seconds while its store fails
/// (PostgreSQL reconnecting); the seal is idempotent.
async fn seal_with_retries(
    seal: Seal,
    at: semel_storage::Appended,
) -> Result<(), semel_storage::StorageError> {
    let started = std::time::Instant::now();
    let mut wait = std::time::Duration::from_millis(50);
    loop {
        match seal(at).await {
            Ok(()) => return Ok(()),
            Err(e @ semel_storage::StorageError::Unavailable(_))
                if started.elapsed() < std::time::Duration::from_secs(10) =>
            {
                let error = semel_core::redact_national_numbers(&e.to_string()).into_owned();
                tracing::warn!(%error, "sealing a recorded change failed; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
}
