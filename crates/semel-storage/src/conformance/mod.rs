//! The conformance suite: the same cases, run against every implementation
//! of the port. An implementation's tests call [`persons_conformance!`](crate::persons_conformance)
//! with an expression that makes a fresh, empty store (or `None` when the
//! store cannot run here, as PostgreSQL's tests say loudly).
//!
//! Every case panics with what differed; none depends on timing.

use std::collections::BTreeSet;

use semel_core::persons::Resolved;
use semel_core::{
    CapacityCode, Consent, ConsentChannel, FilePhase, Kbo, Niss, NumberReplacement, PersonFile,
    PurposeCode,
};
use time::macros::{date, datetime};

use crate::{AuditStore, PersonsStore, RegistryStore, RegistryUndo, RegistryWrite, StorageError};

pub mod audit;
pub mod mutations;
pub mod persons;
pub mod registry;

/// A store under test, with whatever must live as long as it (a temporary
/// directory, a test database).
pub struct Subject<S: ?Sized> {
    pub store: Box<S>,
    pub keep: Box<dyn std::any::Any + Send>,
}

/// Runs every registry case against stores made by `$make` (an expression
/// of type `impl Future<Output = Option<Subject<dyn RegistryStore>>>`,
/// evaluated once per case). Needs `tokio` with `macros` and `rt`.
#[macro_export]
macro_rules! registry_conformance {
    ($make:expr) => {
        mod registry_conformance {
            use super::*;
            $crate::conformance_cases!(registry, $make;
                an_empty_registry_lists_nothing,
                records_are_inserted_or_replaced_and_listed_in_key_order,
                authorisation_versions_follow_each_other,
                a_second_revocation_keeps_the_first,
                changes_are_undone_to_what_was_stored,
                creations_refuse_a_key_taken,
                applications_are_kept_decided_and_undone,
                a_commit_writes_only_over_what_it_read,
                a_commit_is_all_or_nothing_and_so_is_its_undo,
                an_apply_commits_with_its_marker_or_not_at_all,
                a_staged_change_is_in_force_once_sealed_and_never_if_dropped,
                a_revocation_is_staged_like_any_change,
                one_application_pending_per_reference_and_applicant,
                one_membership_application_pending_per_enterprise_number,
            );
        }
    };
}

/// Runs every audit case against stores made by `$make` (an expression of
/// type `impl Future<Output = Option<Subject<dyn AuditStore>>>`, evaluated
/// once per case). Needs `tokio` with `macros` and `rt`.
#[macro_export]
macro_rules! audit_conformance {
    ($make:expr) => {
        mod audit_conformance {
            use super::*;
            $crate::conformance_cases!(audit, $make;
                appends_are_dense_chained_and_durable,
                proofs_verify_against_the_root,
                requests_beyond_the_log_are_out_of_range,
                queries_find_entries_newest_first_by_every_filter,
                a_query_reads_within_its_scan_limit_and_until_seeks,
                checkpoints_are_signed_kept_and_cosigned,
                the_oldest_unsigned_entry_is_read_from_the_log_and_a_clean_stop_signs_every_entry,
                a_halted_log_refuses_every_append_until_restart_and_says_why,
            );
        }
    };
}

/// One `#[tokio::test]` per case of a module of this suite.
#[doc(hidden)]
#[macro_export]
macro_rules! conformance_cases {
    ($module:ident, $make:expr; $($case:ident,)*) => {
        $(
            #[tokio::test]
            async fn $case() {
                let Some(subject) = $make.await else { return };
                $crate::conformance::$module::$case(&*subject.store).await;
                drop(subject);
            }
        )*
    };
}

/// Runs every persons case against stores made by `$make` (an expression
/// of type `impl Future<Output = Option<Subject<dyn PersonsStore>>>`,
/// evaluated once per case). Needs `tokio` with `macros` and `rt`.
#[macro_export]
macro_rules! persons_conformance {
    ($make:expr) => {
        mod persons_conformance {
            use super::*;
            $crate::conformance_cases!(persons, $make;
                replacements_resolve_both_ways_and_refuse_loops,
                chains_are_followed_to_the_number_in_force,
                a_replacement_taken_back_separates_the_numbers_again,
                a_loop_longer_than_resolution_follows_is_still_refused,
                files_round_trip_and_count_under_former_numbers,
                consents_round_trip_and_count_under_former_numbers,
            );
        }
    };
}

/// Runs every mutation-queue case against stores made by `$make` (an
/// expression of type `impl Future<Output = Option<Subject<dyn
/// MutationStore>>>`, evaluated once per case).
#[macro_export]
macro_rules! mutations_conformance {
    ($make:expr) => {
        mod mutations_conformance {
            use super::*;
            $crate::conformance_cases!(mutations, $make;
                changes_queue_densely_per_consumer_and_once_per_event_id,
                acknowledgements_drop_what_was_delivered_and_no_more,
                a_withheld_change_leaves_a_hole_and_ids_are_known,
                changes_published_at_once_get_dense_positions,
                expired_changes_are_reported_lost,
                delivery_advances_only_contiguously,
            );
        }
    };
}

/// Waits without holding up the runtime, whichever it is (the port knows
/// none): a thread sleeps and wakes the task.
async fn pause(d: std::time::Duration) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    struct Pause {
        done: Arc<AtomicBool>,
        started: bool,
        d: std::time::Duration,
    }
    impl std::future::Future for Pause {
        type Output = ();
        fn poll(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<()> {
            if self.done.load(Ordering::Acquire) {
                return std::task::Poll::Ready(());
            }
            if !self.started {
                self.started = true;
                let (done, waker, d) = (self.done.clone(), cx.waker().clone(), self.d);
                std::thread::spawn(move || {
                    std::thread::sleep(d);
                    done.store(true, Ordering::Release);
                    waker.wake();
                });
            }
            std::task::Poll::Pending
        }
    }
    Pause {
        done: Arc::default(),
        started: false,
        d,
    }
    .await;
}

pub fn niss(s: &str) -> Niss {
    Niss::parse(s).expect("a valid test number")
}

pub fn kbo(s: &str) -> Kbo {
    Kbo::parse(s).expect("a valid test enterprise number")
}

pub fn replacement(old: Niss, new: Niss) -> NumberReplacement {
    NumberReplacement {
        old,
        new,
        replaced_on: date!(2026 - 01 - 01),
        registered_by: kbo("0314595348"),
        registered_at: datetime!(2026-01-01 0:00 UTC),
    }
}

pub fn file(id: &str, consumer: Kbo, citizen: Niss) -> PersonFile {
    PersonFile {
        id: id.into(),
        consumer,
        citizen,
        capacity: CapacityCode::new("RIS_APPLICANT").expect("capacity"),
        phase: FilePhase::Provisional,
        begins: date!(2026 - 01 - 01),
        ends: None,
        consumer_reference: format!("ref-{id}"),
        registered_by: "clerk".into(),
        registered_at: datetime!(2026-01-01 0:00 UTC),
        closed_at: None,
    }
}

pub fn consent(id: &str, citizen: Niss) -> Consent {
    Consent {
        id: id.into(),
        citizen,
        consumer: None,
        purpose: PurposeCode::new("SOCIAL_HOUSING").expect("purpose"),
        datasets: BTreeSet::new(),
        given_at: datetime!(2026-01-01 10:00 UTC),
        channel: ConsentChannel::Portal,
        registered_through: kbo("0566988259"),
        registered_by: String::new(),
        evidence: String::new(),
        expires_at: Some(datetime!(2027-01-01 0:00 UTC)),
        withdrawn_at: None,
        withdrawn_through: None,
    }
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

fn conflict<T: std::fmt::Debug>(r: Result<T, StorageError>, what: &str) {
    assert!(
        matches!(r, Err(StorageError::Conflict(_))),
        "{what}: expected a conflict, got {r:?}"
    );
}
