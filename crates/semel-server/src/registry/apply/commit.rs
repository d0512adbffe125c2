//! Storing a planned apply: each change's audit entry, the one commit of every write, and taking it back or closing its marker.

use semel_storage::{RegistryStore, RegistryUndo, RegistryWrite};

use super::plan::Write;
use crate::error::ApiError;
use crate::proto::{self, PlannedAction};

/// The audit entry of one planned change, before it is stored.
pub(in crate::registry) fn record_change(
    record: &mut semel_core::AuditRecord,
    change: &proto::PlannedChange,
    write: &Write,
    apply: &str,
    reason: &str,
) {
    // As the closing entry's (`audited` masks what looks like a national
    // number in every reference): an apply id whose hex happens to hold
    // eleven digits in a row reads the same in all its entries.
    record.consumer_reference = semel_core::redact_national_numbers(apply).into_owned();
    let action = PlannedAction::try_from(change.action)
        .map(|a| {
            a.as_str_name()
                .trim_start_matches("PLANNED_ACTION_")
                .to_lowercase()
        })
        .unwrap_or_default();
    // The structured change first; the apply and its reason (free text,
    // bounded) after it.
    record.detail = semel_core::redact_national_numbers(&format!(
        "{} {} {action}: {}; by registry apply {apply}{}",
        change.kind,
        change.key,
        change.detail,
        crate::registry::because(reason)
    ))
    .into_owned();
    match write {
        Write::Organisation(..) => {}
        Write::Purpose(p, _) => record.purpose = p.code.to_string(),
        Write::Dataset(d, _) => {
            record.dataset = d.name.to_string();
            record.source = Some(d.source);
        }
        Write::Authorisation(a, _) => {
            record.dataset = a.dataset.to_string();
            record.purpose = a.purpose.to_string();
            record.authorisation = Some(a.reference.to_string());
            record.authorisation_version = Some(a.version);
        }
    }
}

/// Stores the writes all or nothing: one commit (one transaction on
/// PostgreSQL, which other brokers see whole or not at all; one sled
/// transaction on the embedded store), each write only over the record the
/// plan read, and in the same commit the apply's marker turned committed
/// with `closing`, the words of its closing entry; each write sealed with
/// its change's entry (`entries`, one per write, durable). Returns what
/// takes them all back.
pub(in crate::registry) async fn write(
    reg: &dyn RegistryStore,
    writes: &[(usize, Write)],
    entries: &[semel_storage::Appended],
    apply: &str,
    closing: &str,
) -> Result<Vec<RegistryUndo>, ApiError> {
    let writes: Vec<RegistryWrite> = writes
        .iter()
        .map(|(_, w)| match w {
            Write::Organisation(o, b) => RegistryWrite::Organisation {
                after: Box::new(o.clone()),
                before: b.clone().map(Box::new),
            },
            Write::Purpose(p, b) => RegistryWrite::Purpose {
                after: Box::new(p.clone()),
                before: b.clone().map(Box::new),
            },
            Write::Dataset(d, b) => RegistryWrite::Dataset {
                after: Box::new(d.clone()),
                before: b.clone().map(Box::new),
            },
            Write::Authorisation(a, b) => RegistryWrite::Authorisation {
                after: Box::new(a.clone()),
                before: b.clone().map(Box::new),
            },
        })
        .collect();
    pause_for_tests(PausePoint::BeforeCommit).await;
    reg.commit_apply(&writes, entries, apply, closing)
        .await
        .map_err(|e| match e {
            // The marker was settled by another broker, which found this
            // one stopped: said as such, not as a registry conflict.
            semel_storage::StorageError::Conflict(m) if m.starts_with("registry apply ") => {
                ApiError::new(
                    tonic::Code::Aborted,
                    "APPLY_INTERRUPTED",
                    semel_core::redact_national_numbers(&m).into_owned(),
                )
            }
            e => ApiError::from(e),
        })?;
    pause_for_tests(PausePoint::AfterCommit).await;
    Ok(writes.iter().map(RegistryWrite::undo).collect())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PausePoint {
    BeforeCommit,
    AfterCommit,
}

/// For the tests that kill a broker in the middle of an apply: with
/// `TEST_SEMEL_APPLY_PAUSE_MS` set, an apply waits that long at one point
/// and says so on stderr: after its change entries are durable and before
/// its commit, or, with `TEST_SEMEL_APPLY_PAUSE_AT=after-commit`, after its
/// commit and before its closing entry.
async fn pause_for_tests(at: PausePoint) {
    let Some(ms) = std::env::var("TEST_SEMEL_APPLY_PAUSE_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    let after = std::env::var("TEST_SEMEL_APPLY_PAUSE_AT").is_ok_and(|v| v == "after-commit");
    let chosen = if after {
        PausePoint::AfterCommit
    } else {
        PausePoint::BeforeCommit
    };
    if at != chosen {
        return;
    }
    eprintln!(
        "semel test hook: registry apply paused {}",
        match at {
            PausePoint::BeforeCommit => "before its commit",
            PausePoint::AfterCommit => "after its commit, before its closing entry",
        }
    );
    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
}

/// Takes back a committed apply, all or nothing; its marker goes with it
/// (the registry is as it was: the refusal entry says the rest). Left
/// committed when the apply cannot be taken back (a later change stands on
/// it): the apply stands, and the next settling says so in the log.
pub(in crate::registry) async fn undo_all(
    reg: &dyn RegistryStore,
    undos: Vec<RegistryUndo>,
    apply: &str,
) {
    if crate::audited::retry_undo("registry apply", || reg.undo_all(&undos)).await {
        close_marker(reg, apply, true).await;
    }
}

/// Removes an apply's marker once its closing entry is durable, trying
/// again for a while (the database may be failing over); a marker left
/// behind is settled later, with a second closing entry saying the same.
pub(in crate::registry) async fn close_marker(
    reg: &dyn RegistryStore,
    apply: &str,
    committed: bool,
) {
    let mut wait = std::time::Duration::from_millis(100);
    for _ in 0..20 {
        match reg.close_apply(apply, committed).await {
            Ok(_) => return,
            Err(e) => {
                let error = semel_core::redact_national_numbers(&e.to_string()).into_owned();
                tracing::warn!(%error, "the marker of a registry apply is not removed yet; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(5));
            }
        }
    }
    tracing::warn!(
        "the marker of a registry apply was left behind: it will be settled again, and its closing entry written a second time"
    );
}

#[cfg(test)]
mod tests {
    use semel_core::Purpose;

    use super::*;

    /// An apply's id is a UUID: its hex may hold eleven digits in a row,
    /// which every reference in the log masks. Its change entries mask it
    /// as its closing entry does, so they still name the same apply.
    #[test]
    fn change_entries_name_the_apply_as_its_closing_entry_does() {
        let apply = "apply 01a23644-d83a-7574-940d-a20361230867";
        let mut record = crate::state::blank_record(
            uuid::Uuid::nil(),
            "semel.v1.RegistryService/ApplyRegistry",
            semel_core::Kbo::parse("0212345668").expect("kbo"),
            None,
        );
        let purpose = Purpose {
            code: semel_core::PurposeCode::new("DEBT_MEDIATION").expect("code"),
            description: String::new(),
            legal_basis: String::new(),
        };
        let change = proto::PlannedChange::default();
        record_change(
            &mut record,
            &change,
            &Write::Purpose(purpose, None),
            apply,
            "",
        );
        assert_eq!(
            record.consumer_reference,
            semel_core::redact_national_numbers(apply)
        );
        assert!(!record.consumer_reference.contains("20361230867"));
    }
}
