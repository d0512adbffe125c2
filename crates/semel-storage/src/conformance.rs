//! The conformance suite: the same cases, run against every implementation
//! of the port. An implementation's tests call [`persons_conformance!`]
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

/// The cases on the persons directory.
pub mod persons {
    use super::*;

    async fn resolved(store: &dyn PersonsStore, n: Niss) -> Resolved {
        let mut r = store.resolve(&n).await.expect("resolve");
        r.former.sort();
        r
    }

    pub async fn replacements_resolve_both_ways_and_refuse_loops(store: &dyn PersonsStore) {
        let (bis, nr, other) = (
            niss("98472899765"),
            niss("93051822361"),
            niss("85073003328"),
        );
        conflict(store.replace(&replacement(nr, nr)).await, "itself");
        store.replace(&replacement(bis, nr)).await.expect("replace");
        assert_eq!(
            store.replace(&replacement(bis, nr)).await.expect("again"),
            replacement(bis, nr),
            "the same replacement again is accepted"
        );
        conflict(
            store.replace(&replacement(bis, other)).await,
            "already replaced by another",
        );
        conflict(store.replace(&replacement(nr, bis)).await, "a loop");
        let r = resolved(store, bis).await;
        assert_eq!((r.current, r.given, r.former), (nr, Some(bis), vec![bis]));
        let r = resolved(store, nr).await;
        assert_eq!((r.current, r.given, r.former), (nr, None, vec![bis]));
        let r = resolved(store, other).await;
        assert_eq!((r.current, r.given, r.former), (other, None, vec![]));
    }

    pub async fn chains_are_followed_to_the_number_in_force(store: &dyn PersonsStore) {
        let (a, b, c) = (
            niss("98472899765"),
            niss("93051822361"),
            niss("85073003328"),
        );
        store.replace(&replacement(a, b)).await.expect("a → b");
        store.replace(&replacement(b, c)).await.expect("b → c");
        conflict(store.replace(&replacement(c, a)).await, "a longer loop");
        let r = resolved(store, a).await;
        assert_eq!(r.current, c);
        assert_eq!(r.given, Some(a));
        assert_eq!(r.former, sorted(vec![a, b]));
        assert_eq!(resolved(store, c).await.former, sorted(vec![a, b]));
        assert_eq!(resolved(store, b).await.current, c);
    }

    /// The `i`th of a series of valid national numbers (born 30 July 1985).
    fn numbered(i: u64) -> Niss {
        let base = 850_730_001 + i;
        niss(&format!("{base}{:02}", 97 - base % 97))
    }

    pub async fn a_loop_longer_than_resolution_follows_is_still_refused(store: &dyn PersonsStore) {
        let chain: Vec<Niss> = (0..12).map(numbered).collect();
        for pair in chain.windows(2) {
            store
                .replace(&replacement(pair[0], pair[1]))
                .await
                .expect("a link of the chain");
        }
        conflict(
            store.replace(&replacement(chain[11], chain[0])).await,
            "closing a loop of twelve numbers",
        );
    }

    pub async fn a_replacement_taken_back_separates_the_numbers_again(store: &dyn PersonsStore) {
        let (bis, nr) = (niss("98472899765"), niss("93051822361"));
        let consumer = kbo("0566988259");
        assert_eq!(store.unreplace(&bis).await.expect("nothing"), None);
        store.replace(&replacement(bis, nr)).await.expect("replace");
        store
            .put_files(&[file("f1", consumer, bis)])
            .await
            .expect("file");
        let joined = resolved(store, nr).await;
        assert_eq!(
            store
                .files_of(&consumer, &joined)
                .await
                .expect("files")
                .len(),
            1
        );
        assert_eq!(
            store.unreplace(&bis).await.expect("unreplace"),
            Some(replacement(bis, nr))
        );
        let apart = resolved(store, nr).await;
        assert_eq!(apart.former, vec![]);
        assert!(
            store
                .files_of(&consumer, &apart)
                .await
                .expect("files")
                .is_empty(),
            "a file under the old number no longer counts for the new one"
        );
        let r = resolved(store, bis).await;
        assert_eq!((r.current, r.given), (bis, None));
        // And it may be replaced again, by the right number this time.
        store
            .replace(&replacement(bis, niss("85073003328")))
            .await
            .expect("replace again");
    }

    pub async fn files_round_trip_and_count_under_former_numbers(store: &dyn PersonsStore) {
        let (bis, nr, other) = (
            niss("98472899765"),
            niss("93051822361"),
            niss("85073003328"),
        );
        let (cpas, commune) = (kbo("0566988259"), kbo("0314595348"));
        store.replace(&replacement(bis, nr)).await.expect("replace");
        let files = vec![
            file("f1", cpas, bis),
            file("f2", cpas, nr),
            file("f3", commune, nr),
            file("f4", cpas, other),
        ];
        store.put_files(&files).await.expect("put");
        assert_eq!(
            store.file(&cpas, &bis, "f1").await.expect("read"),
            Some(files[0].clone())
        );
        assert_eq!(
            store.file(&cpas, &nr, "f1").await.expect("read"),
            None,
            "a file is found under the number it was registered with"
        );
        assert_eq!(
            store.file(&commune, &nr, "f2").await.expect("read"),
            None,
            "another consumer's file is not this one's"
        );
        let citizen = resolved(store, nr).await;
        assert_eq!(
            by_id(store.files_of(&cpas, &citizen).await.expect("files")),
            vec![files[0].clone(), files[1].clone()]
        );
        assert_eq!(
            store.files_of(&commune, &citizen).await.expect("files"),
            vec![files[2].clone()]
        );
        // Insert or replace: closing a file rewrites it.
        let mut closed = files[1].clone();
        closed.ends = Some(date!(2026 - 06 - 30));
        closed.closed_at = Some(datetime!(2026-06-30 12:00 UTC));
        store
            .put_files(std::slice::from_ref(&closed))
            .await
            .expect("close");
        assert_eq!(
            store.file(&cpas, &nr, "f2").await.expect("read"),
            Some(closed)
        );
        store.delete_file(&files[0]).await.expect("delete");
        assert_eq!(store.file(&cpas, &bis, "f1").await.expect("read"), None);
        assert_eq!(
            store.files_of(&cpas, &citizen).await.expect("files").len(),
            1
        );
    }

    pub async fn consents_round_trip_and_count_under_former_numbers(store: &dyn PersonsStore) {
        let (bis, nr, other) = (
            niss("98472899765"),
            niss("93051822361"),
            niss("85073003328"),
        );
        store.replace(&replacement(bis, nr)).await.expect("replace");
        let (c1, c2, c3) = (consent("c1", bis), consent("c2", nr), consent("c3", other));
        for c in [&c1, &c2, &c3] {
            store.put_consent(c).await.expect("put");
        }
        let citizen = resolved(store, bis).await;
        assert_eq!(
            sorted_consents(store.consents_of(&citizen).await.expect("read")),
            vec![c1.clone(), c2.clone()]
        );
        // Withdrawal rewrites the consent.
        let mut withdrawn = c2.clone();
        withdrawn.withdrawn_at = Some(datetime!(2026-03-01 9:00 UTC));
        withdrawn.withdrawn_through = Some(ConsentChannel::Portal);
        store.put_consent(&withdrawn).await.expect("withdraw");
        store.delete_consent(&c1).await.expect("delete");
        assert_eq!(
            store.consents_of(&citizen).await.expect("read"),
            vec![withdrawn]
        );
        assert_eq!(
            store
                .consents_of(&resolved(store, other).await)
                .await
                .expect("read"),
            vec![c3]
        );
    }

    fn by_id(mut v: Vec<PersonFile>) -> Vec<PersonFile> {
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    fn sorted_consents(mut v: Vec<Consent>) -> Vec<Consent> {
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }
}

/// The cases on the registry.
pub mod registry {
    use super::*;
    use semel_core::{
        Authorisation, AuthorisationRef, AuthorisationStatus, CertificateId, Dataset, DatasetName,
        FieldDefinition, FieldName, FieldType, Organisation, OrganisationStatus, Purpose,
        RevokedCertificate, Role,
    };

    /// A test organisation (also used by implementations' own tests).
    pub fn organisation(number: &str, status: OrganisationStatus) -> Organisation {
        Organisation {
            kbo: kbo(number),
            name: format!("organisation {number}"),
            roles: [Role::Consumer].into_iter().collect(),
            status,
            created_at: datetime!(2026-01-01 0:00 UTC),
        }
    }

    fn dataset(name: &str, description: &str) -> Dataset {
        Dataset {
            withdrawn: false,
            name: DatasetName::new(name).expect("dataset"),
            source: kbo("0314595348"),
            description: description.into(),
            fields: vec![FieldDefinition {
                name: FieldName::new("street").expect("field"),
                description: "street".into(),
                field_type: FieldType::String,
            }],
            endpoint: "https://127.0.0.1:7001".into(),
            keeps_history: false,
        }
    }

    fn purpose(code: &str) -> Purpose {
        Purpose {
            code: PurposeCode::new(code).expect("purpose"),
            description: "a purpose".into(),
            legal_basis: "a law".into(),
        }
    }

    /// A test authorisation (also used by implementations' own tests).
    pub fn authorisation(
        reference: &str,
        version: u32,
        status: AuthorisationStatus,
    ) -> Authorisation {
        Authorisation {
            reference: AuthorisationRef::new(reference).expect("reference"),
            consumer: kbo("0566988259"),
            dataset: DatasetName::new("national_register.residence").expect("dataset"),
            fields: [FieldName::new("street").expect("field")]
                .into_iter()
                .collect(),
            purpose: PurposeCode::new("RIS_ELIGIBILITY").expect("purpose"),
            legal_basis: "test".into(),
            issuing_body: "test".into(),
            valid_from: date!(2026 - 01 - 01),
            valid_until: None,
            status,
            version,
            updated_at: datetime!(2026-01-01 0:00 UTC),
            confidential_until: None,
            check_fields: Default::default(),
            checks: Vec::new(),
            capacities: Default::default(),
            consent_required: false,
            receives_mutations: false,
        }
    }

    pub async fn applications_are_kept_decided_and_undone(store: &dyn RegistryStore) {
        use semel_core::{ApplicationState, AuthorisationApplication};
        assert!(store.applications().await.expect("read").is_empty());
        let pending = |id: &str| AuthorisationApplication {
            id: id.into(),
            proposed: authorisation("BSC/2026/201", 1, AuthorisationStatus::Active),
            justification: "debt mediation files".into(),
            applicant: kbo("0566988259"),
            applied_by: "clerk-1".into(),
            applied_at: datetime!(2026-03-01 9:00 UTC),
            state: ApplicationState::Pending,
            decided_by: None,
            decided_by_person: None,
            decided_at: None,
            decision_note: String::new(),
            approved_version: None,
        };
        let (a, mut b) = (pending("01b-second"), pending("01a-first"));
        // One pending application per reference and applicant: the second
        // is for another reference.
        b.proposed.reference = AuthorisationRef::new("BSC/2026/202").expect("reference");
        store.put_application(&a).await.expect("put");
        store.put_application(&b).await.expect("put");
        assert_eq!(
            store.applications().await.expect("read"),
            [b.clone(), a.clone()],
            "by id"
        );
        let decided = AuthorisationApplication {
            state: ApplicationState::Approved,
            decided_by: Some(kbo("0314595348")),
            decided_by_person: Some("commissioner".into()),
            decided_at: Some(datetime!(2026-03-02 9:00 UTC)),
            decision_note: "as asked".into(),
            approved_version: Some(1),
            ..a.clone()
        };
        store.put_application(&decided).await.expect("decide");
        assert_eq!(store.applications().await.expect("read")[1], decided);
        // A decision whose entry failed is taken back to pending; an
        // application whose entry failed disappears.
        store
            .undo(&RegistryUndo::Application(
                Box::new(decided.clone()),
                Some(Box::new(a.clone())),
            ))
            .await
            .expect("undo the decision");
        store
            .undo(&RegistryUndo::Application(Box::new(b.clone()), None))
            .await
            .expect("undo the application");
        assert_eq!(store.applications().await.expect("read"), [a]);

        // Applications for membership: kept, decided, undone alike.
        assert!(store.memberships().await.expect("read").is_empty());
        let m = semel_core::MembershipApplication {
            id: "01c-member".into(),
            kbo: kbo("0999999724"),
            name: "OCMW Test".into(),
            roles: [semel_core::Role::Consumer].into_iter().collect(),
            contact: "ict@ocmw.example".into(),
            note: String::new(),
            certificate: "sha256:00".into(),
            applied_at: datetime!(2026-03-01 9:00 UTC),
            state: ApplicationState::Pending,
            decided_by_person: None,
            decided_at: None,
            decision_note: String::new(),
        };
        store.put_membership(&m).await.expect("put");
        let approved = semel_core::MembershipApplication {
            state: ApplicationState::Approved,
            decided_by_person: Some("operator".into()),
            decided_at: Some(datetime!(2026-03-02 9:00 UTC)),
            ..m.clone()
        };
        store.put_membership(&approved).await.expect("decide");
        assert_eq!(
            store.memberships().await.expect("read"),
            std::slice::from_ref(&approved)
        );
        store
            .undo(&RegistryUndo::Membership(
                Box::new(approved),
                Some(Box::new(m.clone())),
            ))
            .await
            .expect("undo");
        assert_eq!(store.memberships().await.expect("read"), [m]);
    }

    fn application(id: &str, reference: &str) -> semel_core::AuthorisationApplication {
        semel_core::AuthorisationApplication {
            id: id.into(),
            proposed: authorisation(reference, 1, AuthorisationStatus::Active),
            justification: "debt mediation files".into(),
            applicant: kbo("0566988259"),
            applied_by: "clerk-1".into(),
            applied_at: datetime!(2026-03-01 9:00 UTC),
            state: semel_core::ApplicationState::Pending,
            decided_by: None,
            decided_by_person: None,
            decided_at: None,
            decision_note: String::new(),
            approved_version: None,
        }
    }

    fn membership(id: &str, number: &str) -> semel_core::MembershipApplication {
        semel_core::MembershipApplication {
            id: id.into(),
            kbo: kbo(number),
            name: "OCMW Test".into(),
            roles: [semel_core::Role::Consumer].into_iter().collect(),
            contact: "ict@ocmw.example".into(),
            note: String::new(),
            certificate: "sha256:00".into(),
            applied_at: datetime!(2026-03-01 9:00 UTC),
            state: semel_core::ApplicationState::Pending,
            decided_by_person: None,
            decided_at: None,
            decision_note: String::new(),
        }
    }

    fn conflict<T: std::fmt::Debug>(r: Result<T, StorageError>, what: &str) -> String {
        match r {
            Err(StorageError::Conflict(m)) => m,
            other => panic!("{what}: expected a conflict, got {other:?}"),
        }
    }

    /// An amendment names the record as it read it: one made over a change
    /// stored meanwhile (a suspension through another broker) is refused,
    /// and the suspension stands.
    pub async fn a_commit_writes_only_over_what_it_read(store: &dyn RegistryStore) {
        let active = organisation("0566988259", OrganisationStatus::Active);
        store
            .commit(&[RegistryWrite::Organisation {
                after: Box::new(active.clone()),
                before: None,
            }])
            .await
            .expect("create");
        // Creating it again: it exists.
        conflict(
            store
                .commit(&[RegistryWrite::Organisation {
                    after: Box::new(active.clone()),
                    before: None,
                }])
                .await,
            "a second creation",
        );
        let suspended = Organisation {
            status: OrganisationStatus::Suspended,
            ..active.clone()
        };
        store
            .commit(&[RegistryWrite::Organisation {
                after: Box::new(suspended.clone()),
                before: Some(Box::new(active.clone())),
            }])
            .await
            .expect("suspend");
        // An amendment of the name, read before the suspension.
        let renamed = Organisation {
            name: "renamed".into(),
            ..active.clone()
        };
        let message = conflict(
            store
                .commit(&[RegistryWrite::Organisation {
                    after: Box::new(renamed),
                    before: Some(Box::new(active.clone())),
                }])
                .await,
            "an amendment over a suspension",
        );
        assert!(
            message.contains(&format!("organisation {}", active.kbo)),
            "{message}"
        );
        assert_eq!(
            store.organisation(&active.kbo).await.expect("read"),
            Some(suspended.clone()),
            "the suspension stands"
        );
        // An authorisation's next version names the version it follows.
        let v1 = authorisation("BSC/2026/301", 1, AuthorisationStatus::Active);
        store
            .commit(&[RegistryWrite::Authorisation {
                after: Box::new(v1.clone()),
                before: None,
            }])
            .await
            .expect("version 1");
        let v2 = |legal: &str| Authorisation {
            version: 2,
            legal_basis: legal.into(),
            ..v1.clone()
        };
        store
            .commit(&[RegistryWrite::Authorisation {
                after: Box::new(v2("first")),
                before: Some(Box::new(v1.clone())),
            }])
            .await
            .expect("version 2");
        conflict(
            store
                .commit(&[RegistryWrite::Authorisation {
                    after: Box::new(v2("second")),
                    before: Some(Box::new(v1.clone())),
                }])
                .await,
            "a second version 2",
        );
        let history = store
            .authorisation_history("BSC/2026/301")
            .await
            .expect("history");
        assert_eq!(history.len(), 2);
        assert_eq!(history[1].legal_basis, "first");
        // Datasets and purposes alike.
        let d = dataset("test.one", "one");
        store
            .commit(&[RegistryWrite::Dataset {
                after: Box::new(d.clone()),
                before: None,
            }])
            .await
            .expect("dataset");
        let stale = dataset("test.one", "stale");
        conflict(
            store
                .commit(&[RegistryWrite::Dataset {
                    after: Box::new(dataset("test.one", "two")),
                    before: Some(Box::new(stale)),
                }])
                .await,
            "a dataset amended over what it did not read",
        );
        assert_eq!(store.datasets().await.expect("read"), [d]);
    }

    /// A commit of several writes whose last is refused writes none of
    /// them; an undo of several takes back all or none.
    pub async fn a_commit_is_all_or_nothing_and_so_is_its_undo(store: &dyn RegistryStore) {
        let taken = purpose("TAKEN");
        store
            .commit(&[RegistryWrite::Purpose {
                after: Box::new(taken.clone()),
                before: None,
            }])
            .await
            .expect("purpose");
        let org = organisation("0566988259", OrganisationStatus::Active);
        let v1 = authorisation("BSC/2026/302", 1, AuthorisationStatus::Active);
        let writes = vec![
            RegistryWrite::Organisation {
                after: Box::new(org.clone()),
                before: None,
            },
            RegistryWrite::Authorisation {
                after: Box::new(v1.clone()),
                before: None,
            },
            RegistryWrite::Dataset {
                after: Box::new(dataset("test.two", "two")),
                before: None,
            },
            // Created meanwhile: the whole commit is refused.
            RegistryWrite::Purpose {
                after: Box::new(purpose("TAKEN")),
                before: None,
            },
        ];
        conflict(store.commit(&writes).await, "a commit with a stale write");
        assert!(store.organisations().await.expect("read").is_empty());
        assert!(store.authorisations().await.expect("read").is_empty());
        assert!(
            store
                .authorisation_history("BSC/2026/302")
                .await
                .expect("read")
                .is_empty()
        );
        assert!(store.datasets().await.expect("read").is_empty());
        assert_eq!(store.purposes().await.expect("read"), [taken]);
        // Without it, all of it.
        let writes = &writes[..3];
        store.commit(writes).await.expect("commit");
        assert_eq!(
            store.organisations().await.expect("read"),
            std::slice::from_ref(&org)
        );
        assert_eq!(
            store.authorisations().await.expect("read"),
            std::slice::from_ref(&v1)
        );
        assert_eq!(store.datasets().await.expect("read").len(), 1);
        // An undo of all three, one of which moved since: none is undone.
        let suspended = Organisation {
            status: OrganisationStatus::Suspended,
            ..org.clone()
        };
        store
            .commit(&[RegistryWrite::Organisation {
                after: Box::new(suspended.clone()),
                before: Some(Box::new(org.clone())),
            }])
            .await
            .expect("suspend");
        let undos: Vec<RegistryUndo> = writes.iter().map(RegistryWrite::undo).collect();
        conflict(store.undo_all(&undos).await, "an undo over a later change");
        assert_eq!(
            store.organisations().await.expect("read"),
            std::slice::from_ref(&suspended)
        );
        assert_eq!(store.authorisations().await.expect("read"), [v1]);
        assert_eq!(store.datasets().await.expect("read").len(), 1);
        // Back to what was written: all of it is undone.
        store
            .commit(&[RegistryWrite::Organisation {
                after: Box::new(org.clone()),
                before: Some(Box::new(suspended)),
            }])
            .await
            .expect("reinstate");
        store.undo_all(&undos).await.expect("undo all");
        assert!(store.organisations().await.expect("read").is_empty());
        assert!(store.authorisations().await.expect("read").is_empty());
        assert!(
            store
                .authorisation_history("BSC/2026/302")
                .await
                .expect("read")
                .is_empty()
        );
        assert!(store.datasets().await.expect("read").is_empty());
    }

    /// The entry a test change is sealed with.
    const AT: crate::Appended = crate::Appended {
        sequence: 0,
        hash: [0; 32],
    };

    /// A staged change is the change [`RegistryStore::commit`] makes, but
    /// in force only once sealed with its entry: left open, no reader sees
    /// it; dropped (its entry failed), it is as if never made; staged over
    /// a record that moved, it is refused.
    pub async fn a_staged_change_is_in_force_once_sealed_and_never_if_dropped(
        store: &dyn RegistryStore,
    ) {
        let org = organisation("0566988259", OrganisationStatus::Active);
        let create = [RegistryWrite::Organisation {
            after: Box::new(org.clone()),
            before: None,
        }];
        match store.stage(&create).await.expect("stage") {
            crate::Staged::Committed(undos) => store.undo_all(&undos).await.expect("undo"),
            crate::Staged::Open(open) => {
                assert!(store.organisations().await.expect("read").is_empty());
                assert_eq!(store.organisation(&org.kbo).await.expect("read"), None);
                drop(open);
            }
        }
        assert!(store.organisations().await.expect("read").is_empty());
        match store.stage(&create).await.expect("stage again") {
            crate::Staged::Committed(_) => {}
            crate::Staged::Open(open) => {
                assert!(store.organisations().await.expect("read").is_empty());
                open.seal(AT).await.expect("seal");
            }
        }
        assert_eq!(
            store.organisations().await.expect("read"),
            std::slice::from_ref(&org)
        );
        conflict(
            store.stage(&create).await.map(|_| ()),
            "a stage over a record created meanwhile",
        );
        let suspended = Organisation {
            status: OrganisationStatus::Suspended,
            ..org.clone()
        };
        let suspend = [RegistryWrite::Organisation {
            after: Box::new(suspended.clone()),
            before: Some(Box::new(org.clone())),
        }];
        match store.stage(&suspend).await.expect("stage a suspension") {
            crate::Staged::Committed(_) => {}
            crate::Staged::Open(open) => {
                // The record as it was stays in force until the seal.
                assert_eq!(
                    store.organisation(&org.kbo).await.expect("read"),
                    Some(org.clone())
                );
                open.seal(AT).await.expect("seal");
            }
        }
        assert_eq!(
            store.organisation(&org.kbo).await.expect("read"),
            Some(suspended)
        );
    }

    /// A revocation is a registry change like the others: staged, it is in
    /// force once sealed with its entry and never if dropped; it is written
    /// only while the certificate is not revoked yet (a second one is
    /// refused, the first record stands), and an undo takes it back.
    pub async fn a_revocation_is_staged_like_any_change(store: &dyn RegistryStore) {
        let first = RevokedCertificate {
            id: CertificateId::Sha256("cd".repeat(32)),
            reason: "key compromise".into(),
            revoked_at: datetime!(2026-02-01 0:00 UTC),
        };
        let revoke = [RegistryWrite::Revocation {
            after: Box::new(first.clone()),
        }];
        match store.stage(&revoke).await.expect("stage") {
            crate::Staged::Committed(undos) => store.undo_all(&undos).await.expect("undo"),
            crate::Staged::Open(open) => {
                assert!(
                    store.revoked_certificates().await.expect("read").is_empty(),
                    "a revocation staged is not in force before its seal"
                );
                drop(open);
            }
        }
        assert!(store.revoked_certificates().await.expect("read").is_empty());
        match store.stage(&revoke).await.expect("stage again") {
            crate::Staged::Committed(_) => {}
            crate::Staged::Open(open) => open.seal(AT).await.expect("seal"),
        }
        assert_eq!(
            store.revoked_certificates().await.expect("read"),
            std::slice::from_ref(&first)
        );
        // Revoked already: a second revocation is refused, the first stands.
        let again = RevokedCertificate {
            reason: "again".into(),
            revoked_at: datetime!(2026-03-01 0:00 UTC),
            ..first.clone()
        };
        conflict(
            store
                .stage(&[RegistryWrite::Revocation {
                    after: Box::new(again.clone()),
                }])
                .await
                .map(|_| ()),
            "a second revocation of one certificate",
        );
        conflict(
            store
                .commit(&[RegistryWrite::Revocation {
                    after: Box::new(again),
                }])
                .await,
            "a second revocation committed",
        );
        assert_eq!(
            store.revoked_certificates().await.expect("read"),
            std::slice::from_ref(&first)
        );
        // Another certificate, committed with another change at once, and
        // taken back with it.
        let other = RevokedCertificate {
            id: CertificateId::Serial("1f".into()),
            ..first.clone()
        };
        let writes = [
            RegistryWrite::Revocation {
                after: Box::new(other.clone()),
            },
            RegistryWrite::Organisation {
                after: Box::new(organisation("0566988259", OrganisationStatus::Active)),
                before: None,
            },
        ];
        store.commit(&writes).await.expect("commit");
        let mut all = store.revoked_certificates().await.expect("read");
        all.sort_by_key(|r| r.id.key());
        let mut expected = vec![first.clone(), other];
        expected.sort_by_key(|r| r.id.key());
        assert_eq!(all, expected);
        store
            .undo_all(&writes.iter().map(RegistryWrite::undo).collect::<Vec<_>>())
            .await
            .expect("undo");
        assert_eq!(
            store.revoked_certificates().await.expect("read"),
            std::slice::from_ref(&first)
        );
        assert!(store.organisations().await.expect("read").is_empty());
    }

    /// A registry apply's writes are committed with its marker, turned
    /// committed with its closing words, in one commit; an apply whose
    /// marker was settled (removed) meanwhile commits nothing.
    pub async fn an_apply_commits_with_its_marker_or_not_at_all(store: &dyn RegistryStore) {
        let marker = |id: &str| crate::ApplyMarker {
            id: id.to_owned(),
            broker: String::new(),
            organisation: kbo("0212345668"),
            end_user: "admin@operator".to_owned(),
            committed: false,
            closing: String::new(),
        };
        let said = |markers: Vec<crate::ApplyMarker>| -> Vec<(String, bool, String)> {
            markers
                .into_iter()
                .map(|m| (m.id, m.committed, m.closing))
                .collect()
        };
        let write = |code: &str| {
            vec![RegistryWrite::Purpose {
                after: Box::new(purpose(code)),
                before: None,
            }]
        };
        // Opened, then committed with its writes.
        store.open_apply(&marker("apply 1")).await.expect("open");
        assert_eq!(
            said(store.unsettled_applies().await.expect("markers")),
            [("apply 1".to_owned(), false, String::new())]
        );
        store
            .commit_apply(
                &write("ONE"),
                &[AT],
                "apply 1",
                "registry applied: 1 created",
            )
            .await
            .expect("commit");
        assert_eq!(store.purposes().await.expect("read"), [purpose("ONE")]);
        assert_eq!(
            said(store.unsettled_applies().await.expect("markers")),
            [(
                "apply 1".to_owned(),
                true,
                "registry applied: 1 created".to_owned()
            )]
        );
        // Committed once only.
        conflict(
            store
                .commit_apply(&write("TWO"), &[AT], "apply 1", "again")
                .await,
            "a second commit of one apply",
        );
        assert_eq!(store.purposes().await.expect("read"), [purpose("ONE")]);
        // Removed only as it is.
        assert!(!store.close_apply("apply 1", false).await.expect("close"));
        assert!(store.close_apply("apply 1", true).await.expect("close"));
        assert!(store.unsettled_applies().await.expect("markers").is_empty());
        // Settled as not applied before its commit: the commit is refused.
        store.open_apply(&marker("apply 2")).await.expect("open");
        assert!(store.close_apply("apply 2", false).await.expect("settle"));
        conflict(
            store
                .commit_apply(&write("THREE"), &[AT], "apply 2", "late")
                .await,
            "the commit of an apply settled as not applied",
        );
        assert_eq!(store.purposes().await.expect("read"), [purpose("ONE")]);
        // A stale write: neither the writes nor the marker change.
        store.open_apply(&marker("apply 3")).await.expect("open");
        conflict(
            store
                .commit_apply(&write("ONE"), &[AT], "apply 3", "stale")
                .await,
            "an apply over a record created meanwhile",
        );
        assert_eq!(
            said(store.unsettled_applies().await.expect("markers")),
            [("apply 3".to_owned(), false, String::new())]
        );
    }

    /// Two pending applications of one applicant for one reference cannot
    /// both be stored, however they are written; a decided one does not
    /// count.
    pub async fn one_application_pending_per_reference_and_applicant(store: &dyn RegistryStore) {
        let first = application("01a", "BSC/2026/401");
        store
            .commit(&[RegistryWrite::Application {
                after: Box::new(first.clone()),
                before: None,
            }])
            .await
            .expect("first");
        let second = application("01b", "BSC/2026/401");
        conflict(
            store
                .commit(&[RegistryWrite::Application {
                    after: Box::new(second.clone()),
                    before: None,
                }])
                .await,
            "a second pending application",
        );
        // Not by an upsert either.
        conflict(store.put_application(&second).await, "a second one put");
        assert_eq!(
            store.applications().await.expect("read"),
            std::slice::from_ref(&first)
        );
        // Another reference, or another applicant: fine.
        store
            .commit(&[RegistryWrite::Application {
                after: Box::new(application("01c", "BSC/2026/402")),
                before: None,
            }])
            .await
            .expect("another reference");
        let mut other = application("01d", "BSC/2026/401");
        other.applicant = kbo("0314595348");
        store
            .commit(&[RegistryWrite::Application {
                after: Box::new(other),
                before: None,
            }])
            .await
            .expect("another applicant");
        // Once the first is decided, a new one may be pending.
        let rejected = semel_core::AuthorisationApplication {
            state: semel_core::ApplicationState::Rejected,
            ..first.clone()
        };
        store
            .commit(&[
                RegistryWrite::Application {
                    after: Box::new(rejected.clone()),
                    before: Some(Box::new(first.clone())),
                },
                RegistryWrite::Application {
                    after: Box::new(second.clone()),
                    before: None,
                },
            ])
            .await
            .expect("decided, then a new one");
        // Two decisions made at once on one application: one stands.
        let approved = semel_core::AuthorisationApplication {
            state: semel_core::ApplicationState::Approved,
            ..first.clone()
        };
        conflict(
            store
                .commit(&[RegistryWrite::Application {
                    after: Box::new(approved),
                    before: Some(Box::new(first.clone())),
                }])
                .await,
            "a second decision",
        );
        let stored = store.applications().await.expect("read");
        assert_eq!(stored.iter().find(|a| a.id == "01a"), Some(&rejected));
        // Taking the decision back would make two pending: refused.
        conflict(
            store
                .undo(&RegistryUndo::Application(
                    Box::new(rejected),
                    Some(Box::new(first)),
                ))
                .await,
            "an undo that makes two pending",
        );
    }

    /// One pending application for membership per enterprise number.
    pub async fn one_membership_application_pending_per_enterprise_number(
        store: &dyn RegistryStore,
    ) {
        let first = membership("01a", "0999999724");
        store
            .commit(&[RegistryWrite::Membership {
                after: Box::new(first.clone()),
                before: None,
            }])
            .await
            .expect("first");
        conflict(
            store
                .commit(&[RegistryWrite::Membership {
                    after: Box::new(membership("01b", "0999999724")),
                    before: None,
                }])
                .await,
            "a second pending membership application",
        );
        conflict(
            store.put_membership(&membership("01b", "0999999724")).await,
            "a second one put",
        );
        store
            .commit(&[RegistryWrite::Membership {
                after: Box::new(membership("01c", "0566988259")),
                before: None,
            }])
            .await
            .expect("another number");
        // Approved and rejected at once: one decision stands.
        let decide = |state| semel_core::MembershipApplication {
            state,
            ..first.clone()
        };
        store
            .commit(&[RegistryWrite::Membership {
                after: Box::new(decide(semel_core::ApplicationState::Approved)),
                before: Some(Box::new(first.clone())),
            }])
            .await
            .expect("approve");
        conflict(
            store
                .commit(&[RegistryWrite::Membership {
                    after: Box::new(decide(semel_core::ApplicationState::Rejected)),
                    before: Some(Box::new(first.clone())),
                }])
                .await,
            "a rejection over an approval",
        );
        assert_eq!(store.memberships().await.expect("read").len(), 2);
    }

    pub async fn an_empty_registry_lists_nothing(store: &dyn RegistryStore) {
        assert!(store.organisations().await.expect("read").is_empty());
        assert!(store.datasets().await.expect("read").is_empty());
        assert!(store.purposes().await.expect("read").is_empty());
        assert!(store.authorisations().await.expect("read").is_empty());
        assert!(
            store
                .authorisation_history("BSC/2024/017")
                .await
                .expect("read")
                .is_empty()
        );
        assert!(store.revoked_certificates().await.expect("read").is_empty());
    }

    pub async fn records_are_inserted_or_replaced_and_listed_in_key_order(
        store: &dyn RegistryStore,
    ) {
        let (a, b) = ("0566988259", "0314595348");
        store
            .put_organisation(&organisation(a, OrganisationStatus::Active))
            .await
            .expect("put");
        store
            .put_organisation(&organisation(b, OrganisationStatus::Active))
            .await
            .expect("put");
        store
            .put_organisation(&organisation(a, OrganisationStatus::Suspended))
            .await
            .expect("suspend");
        assert_eq!(
            store.organisations().await.expect("read"),
            vec![
                organisation(b, OrganisationStatus::Active),
                organisation(a, OrganisationStatus::Suspended)
            ]
        );
        // Byte order, not a locale's (which would skip punctuation):
        // '-' < '.' < '_' < letters.
        for (name, d) in [
            ("ab", "v1"),
            ("a_a", "v1"),
            ("a.b", "v1"),
            ("ab", "v2"),
            ("a-c", "v1"),
        ] {
            store.put_dataset(&dataset(name, d)).await.expect("put");
        }
        assert_eq!(
            store.datasets().await.expect("read"),
            vec![
                dataset("a-c", "v1"),
                dataset("a.b", "v1"),
                dataset("a_a", "v1"),
                dataset("ab", "v2"),
            ]
        );
        for code in ["SOCIAL_HOUSING", "RIS_ELIGIBILITY", "SOCIAL_HOUSING"] {
            store.put_purpose(&purpose(code)).await.expect("put");
        }
        assert_eq!(
            store.purposes().await.expect("read"),
            vec![purpose("RIS_ELIGIBILITY"), purpose("SOCIAL_HOUSING")]
        );
    }

    pub async fn authorisation_versions_follow_each_other(store: &dyn RegistryStore) {
        use AuthorisationStatus::{Active, Suspended};
        let r = "BSC/2024/017";
        conflict(
            store.put_authorisation(&authorisation(r, 2, Active)).await,
            "a first version that is not 1",
        );
        store
            .put_authorisation(&authorisation(r, 1, Active))
            .await
            .expect("version 1");
        conflict(
            store
                .put_authorisation(&authorisation(r, 1, Suspended))
                .await,
            "version 1 again",
        );
        store
            .put_authorisation(&authorisation(r, 2, Suspended))
            .await
            .expect("version 2");
        conflict(
            store.put_authorisation(&authorisation(r, 4, Active)).await,
            "a skipped version",
        );
        store
            .put_authorisation(&authorisation("BSC/2025/001", 1, Active))
            .await
            .expect("another authorisation");
        assert_eq!(
            store.authorisations().await.expect("read"),
            vec![
                authorisation(r, 2, Suspended),
                authorisation("BSC/2025/001", 1, Active)
            ]
        );
        assert_eq!(
            store.authorisation_history(r).await.expect("history"),
            vec![authorisation(r, 1, Active), authorisation(r, 2, Suspended)]
        );
        assert_eq!(
            store
                .authorisation_history("BSC/2024/01")
                .await
                .expect("history"),
            vec![],
            "a prefix of a reference is not the reference"
        );
    }

    pub async fn a_second_revocation_keeps_the_first(store: &dyn RegistryStore) {
        let first = RevokedCertificate {
            id: CertificateId::Sha256("ab".repeat(32)),
            reason: "key compromise".into(),
            revoked_at: datetime!(2026-02-01 0:00 UTC),
        };
        assert_eq!(
            store.revoke_certificate(&first).await.expect("revoke"),
            first
        );
        let again = RevokedCertificate {
            reason: "again".into(),
            revoked_at: datetime!(2026-03-01 0:00 UTC),
            ..first.clone()
        };
        assert_eq!(
            store.revoke_certificate(&again).await.expect("again"),
            first
        );
        let other = RevokedCertificate {
            id: CertificateId::Serial("1f".into()),
            ..first.clone()
        };
        store.revoke_certificate(&other).await.expect("another");
        let mut all = store.revoked_certificates().await.expect("read");
        all.sort_by_key(|r| r.id.key());
        let mut expected = vec![first, other];
        expected.sort_by_key(|r| r.id.key());
        assert_eq!(all, expected);
    }

    pub async fn creations_refuse_a_key_taken(store: &dyn RegistryStore) {
        let first = organisation("0566988259", OrganisationStatus::Active);
        store.insert_organisation(&first).await.expect("created");
        let again = organisation("0566988259", OrganisationStatus::Suspended);
        let refused = store.insert_organisation(&again).await;
        assert!(
            matches!(refused, Err(StorageError::Conflict(_))),
            "a second creation: {refused:?}"
        );
        assert_eq!(
            store.organisation(&first.kbo).await.expect("read"),
            Some(first),
            "the first stands"
        );
        let d = dataset("national_register.residence", "first");
        store.insert_dataset(&d).await.expect("created");
        let refused = store
            .insert_dataset(&dataset("national_register.residence", "second"))
            .await;
        assert!(
            matches!(refused, Err(StorageError::Conflict(_))),
            "{refused:?}"
        );
        assert_eq!(store.datasets().await.expect("list"), vec![d]);
        let p = purpose("RIS_ELIGIBILITY");
        store.insert_purpose(&p).await.expect("created");
        let refused = store.insert_purpose(&p).await;
        assert!(
            matches!(refused, Err(StorageError::Conflict(_))),
            "{refused:?}"
        );
        assert_eq!(store.purposes().await.expect("list"), vec![p]);
    }

    pub async fn changes_are_undone_to_what_was_stored(store: &dyn RegistryStore) {
        let active = organisation("0566988259", OrganisationStatus::Active);
        store.put_organisation(&active).await.expect("put");
        let suspended = organisation("0566988259", OrganisationStatus::Suspended);
        store.put_organisation(&suspended).await.expect("put");
        store
            .undo(&RegistryUndo::Organisation(
                Box::new(suspended.clone()),
                Some(Box::new(active.clone())),
            ))
            .await
            .expect("undo a change");
        assert_eq!(
            store.organisation(&active.kbo).await.expect("read"),
            Some(active.clone())
        );
        // A change made since (through another broker) stands: the undo
        // of the one before it is refused, and nothing changes.
        let refused = store
            .undo(&RegistryUndo::Organisation(
                Box::new(suspended.clone()),
                Some(Box::new(active.clone())),
            ))
            .await;
        assert!(
            matches!(refused, Err(StorageError::Conflict(_))),
            "an undo of a record changed since: {refused:?}"
        );
        assert_eq!(
            store.organisation(&active.kbo).await.expect("read"),
            Some(active.clone())
        );
        store
            .undo(&RegistryUndo::Organisation(Box::new(active.clone()), None))
            .await
            .expect("undo a creation");
        assert_eq!(store.organisation(&active.kbo).await.expect("read"), None);
        let v1 = authorisation("BSC/2024/001", 1, AuthorisationStatus::Active);
        store.put_authorisation(&v1).await.expect("v1");
        let v2 = authorisation("BSC/2024/001", 2, AuthorisationStatus::Active);
        store.put_authorisation(&v2).await.expect("v2");
        store
            .undo(&RegistryUndo::Authorisation(
                Box::new(v2.clone()),
                Some(Box::new(v1.clone())),
            ))
            .await
            .expect("undo a version");
        assert_eq!(
            store.authorisations().await.expect("list"),
            vec![v1.clone()]
        );
        assert_eq!(
            store
                .authorisation_history("BSC/2024/001")
                .await
                .expect("history"),
            vec![v1.clone()],
            "the undone version leaves the history"
        );
        // The version can be written again.
        store.put_authorisation(&v2).await.expect("v2 again");
        // A version written since (through another broker) stands: the
        // undo of the one before it is refused, and nothing changes.
        let v3 = authorisation("BSC/2024/001", 3, AuthorisationStatus::Active);
        store.put_authorisation(&v3).await.expect("v3");
        let refused = store
            .undo(&RegistryUndo::Authorisation(
                Box::new(v2.clone()),
                Some(Box::new(v1.clone())),
            ))
            .await;
        assert!(
            matches!(refused, Err(StorageError::Conflict(_))),
            "an undo under a later version: {refused:?}"
        );
        assert_eq!(
            store.authorisations().await.expect("list"),
            vec![v3.clone()]
        );
        assert_eq!(
            store
                .authorisation_history("BSC/2024/001")
                .await
                .expect("history")
                .len(),
            3
        );
    }
}

/// The cases on the audit log.
pub mod audit {
    use super::*;
    use semel_core::merkle::{CompactRange, verify_consistency, verify_inclusion};
    use semel_core::{
        AuditDecision, AuditEntry, AuditRecord, Hash, Outcome, ZERO_HASH, entry_hash,
    };

    fn record(i: u64) -> AuditRecord {
        AuditRecord {
            request_id: [(i % 251) as u8; 16],
            time_micros: 1_767_225_600_000_000 + i as i64,
            operation: semel_core::LOOKUP_OPERATION.into(),
            consumer: kbo(if i.is_multiple_of(2) {
                "0566988259"
            } else {
                "0314595348"
            }),
            end_user: Some(format!("clerk-{i}")),
            citizen: Some(niss("93051822361")),
            dataset: "national_register.residence".into(),
            fields_requested: vec!["street".into()],
            fields_returned: if i.is_multiple_of(3) {
                vec![]
            } else {
                vec!["street".into()]
            },
            purpose: "RIS_ELIGIBILITY".into(),
            authorisation: Some("BSC/2024/017".into()),
            authorisation_version: None,
            decision: if i.is_multiple_of(3) {
                AuditDecision::Refused
            } else {
                AuditDecision::Allowed
            },
            // Refusals: NO_ACTIVE_FILE every sixth, NO_AUTHORISATION between.
            reason: i.is_multiple_of(3).then(|| {
                semel_core::ReasonCode::Refused(if i.is_multiple_of(6) {
                    semel_core::RefusalReason::NoActiveFile
                } else {
                    semel_core::RefusalReason::NoAuthorisation
                })
            }),
            outcome: Outcome::Answered,
            source: None,
            consumer_reference: String::new(),
            reference_date: None,
            citizen_as_given: None,
            checks: Vec::new(),
            detail: String::new(),
        }
    }

    async fn fill(store: &dyn AuditStore, n: u64) -> Vec<Hash> {
        let mut hashes = Vec::new();
        for i in 0..n {
            let a = store.append(record(i)).await.expect("append");
            assert_eq!(a.sequence, i, "dense sequences");
            hashes.push(a.hash);
        }
        hashes
    }

    fn out_of_range<T: std::fmt::Debug>(r: Result<T, StorageError>, what: &str) {
        assert!(
            matches!(r, Err(StorageError::OutOfRange(_))),
            "{what}: expected out of range, got {r:?}"
        );
    }

    pub async fn appends_are_dense_chained_and_durable(store: &dyn AuditStore) {
        assert_eq!(store.head().await.expect("head"), (0, ZERO_HASH));
        let hashes = fill(store, 10).await;
        assert_eq!(
            store.head().await.expect("head"),
            (10, *hashes.last().expect("ten"))
        );
        let mut previous = ZERO_HASH;
        for (i, hash) in hashes.iter().enumerate() {
            let bytes = store.entry(i as u64).await.expect("read");
            assert_eq!(entry_hash(&bytes), *hash, "entry {i}'s hash");
            let entry = AuditEntry::decode(&bytes).expect("decodes");
            assert_eq!(entry.sequence, i as u64);
            assert_eq!(entry.previous_hash, previous, "entry {i} chains");
            assert_eq!(entry.record, record(i as u64), "entry {i} as recorded");
            previous = *hash;
        }
    }

    pub async fn proofs_verify_against_the_root(store: &dyn AuditStore) {
        let leaves = fill(store, 13).await;
        let mut roots = Vec::new();
        let mut range = CompactRange::new();
        for leaf in &leaves {
            range.push(*leaf);
            roots.push(range.root());
        }
        let root = |size: u64| roots[size as usize - 1];
        for size in [1, 2, 5, 8, 13] {
            assert_eq!(
                store.root(size).await.expect("root"),
                root(size),
                "root of {size}"
            );
            for index in 0..size {
                let proof = store.inclusion_proof(index, size).await.expect("proof");
                assert!(
                    verify_inclusion(&leaves[index as usize], index, size, &proof, &root(size)),
                    "entry {index} in {size}"
                );
            }
        }
        for old in 1..=13 {
            let proof = store.consistency_proof(old, 13).await.expect("proof");
            assert!(
                verify_consistency(old, 13, &root(old), &root(13), &proof),
                "{old} → 13"
            );
        }
    }

    pub async fn requests_beyond_the_log_are_out_of_range(store: &dyn AuditStore) {
        out_of_range(store.entry(0).await, "an entry of an empty log");
        fill(store, 4).await;
        out_of_range(store.entry(4).await, "the entry past the head");
        out_of_range(store.root(5).await, "a root past the head");
        out_of_range(
            store.inclusion_proof(4, 4).await,
            "an entry outside its tree",
        );
        out_of_range(store.inclusion_proof(1, 5).await, "a tree past the head");
        out_of_range(store.consistency_proof(0, 4).await, "from the empty tree");
        out_of_range(store.consistency_proof(3, 2).await, "a shrinking tree");
        out_of_range(
            store.consistency_proof(2, 5).await,
            "to a tree past the head",
        );
    }

    fn sequences(found: &[crate::StoredEntry]) -> Vec<u64> {
        found.iter().map(|e| e.entry.sequence).collect()
    }

    pub async fn queries_find_entries_newest_first_by_every_filter(store: &dyn AuditStore) {
        let hashes = fill(store, 12).await;
        // Entry 7 was made under a number since replaced.
        let mut replaced = record(12);
        replaced.citizen = Some(niss("85073003328"));
        replaced.citizen_as_given = Some(niss("17073003384"));
        store.append(replaced).await.expect("append");
        let all = |q: crate::AuditQuery| crate::AuditQuery { limit: 100, ..q };
        let found = store
            .query(&all(crate::AuditQuery::default()))
            .await
            .expect("query");
        assert_eq!(sequences(&found), (0..13).rev().collect::<Vec<_>>());
        assert_eq!(found[12].hash, hashes[0], "hashes as appended");
        let by_consumer = store
            .query(&all(crate::AuditQuery {
                consumer: Some(kbo("0566988259")),
                ..Default::default()
            }))
            .await
            .expect("query");
        assert_eq!(sequences(&by_consumer), vec![12, 10, 8, 6, 4, 2, 0]);
        let refused_of_consumer = store
            .query(&all(crate::AuditQuery {
                consumer: Some(kbo("0566988259")),
                decision: Some(AuditDecision::Refused),
                ..Default::default()
            }))
            .await
            .expect("query");
        assert_eq!(sequences(&refused_of_consumer), vec![12, 6, 0]);
        let no_file = semel_core::ReasonCode::Refused(semel_core::RefusalReason::NoActiveFile);
        let by_reason = store
            .query(&all(crate::AuditQuery {
                reason: Some(no_file),
                ..Default::default()
            }))
            .await
            .expect("query");
        assert_eq!(sequences(&by_reason), vec![12, 6, 0]);
        let other_reason_of_consumer = store
            .query(&all(crate::AuditQuery {
                consumer: Some(kbo("0314595348")),
                reason: Some(semel_core::ReasonCode::Refused(
                    semel_core::RefusalReason::NoAuthorisation,
                )),
                ..Default::default()
            }))
            .await
            .expect("query");
        assert_eq!(sequences(&other_reason_of_consumer), vec![9, 3]);
        let by_user = store
            .query(&all(crate::AuditQuery {
                end_user: Some("clerk-5".into()),
                ..Default::default()
            }))
            .await
            .expect("query");
        assert_eq!(sequences(&by_user), vec![5]);
        for number in ["85073003328", "17073003384"] {
            let by_citizen = store
                .query(&all(crate::AuditQuery {
                    citizen: Some(niss(number)),
                    ..Default::default()
                }))
                .await
                .expect("query");
            assert_eq!(
                sequences(&by_citizen),
                vec![12],
                "found under the number in force and the one given"
            );
        }
        let page = store
            .query(&crate::AuditQuery {
                citizen: Some(niss("93051822361")),
                before_sequence: Some(9),
                limit: 3,
                ..Default::default()
            })
            .await
            .expect("query");
        assert_eq!(sequences(&page), vec![8, 7, 6], "a page before a sequence");
        let period = store
            .query(&all(crate::AuditQuery {
                since_micros: Some(1_767_225_600_000_000 + 3),
                until_micros: Some(1_767_225_600_000_000 + 6),
                ..Default::default()
            }))
            .await
            .expect("query");
        assert_eq!(
            sequences(&period),
            vec![5, 4, 3],
            "since inclusive, until exclusive"
        );
        let none = store
            .query(&all(crate::AuditQuery {
                dataset: Some("onem.unemployment".into()),
                ..Default::default()
            }))
            .await
            .expect("query");
        assert!(none.is_empty());
    }

    pub async fn a_query_reads_within_its_scan_limit_and_until_seeks(store: &dyn AuditStore) {
        // Entries twenty minutes apart: further than the longest lookup.
        const MINUTES_20: i64 = 20 * 60 * 1_000_000;
        let base = record(0).time_micros;
        for i in 0..40 {
            let mut r = record(i);
            r.time_micros = base + i as i64 * MINUTES_20;
            store.append(r).await.expect("append");
        }
        // Refused NO_ACTIVE_FILE: every sixth entry (0, 6, …, 36). The
        // reason has no index: the query reads the log newest first.
        let no_file = semel_core::ReasonCode::Refused(semel_core::RefusalReason::NoActiveFile);
        let mut query = crate::AuditQuery {
            reason: Some(no_file),
            limit: 100,
            scan_limit: Some(10),
            ..Default::default()
        };
        let first = store.query_page(&query).await.expect("query");
        assert_eq!(first.examined, 10, "no more read than the limit");
        assert_eq!(sequences(&first.entries), vec![36, 30]);
        assert_eq!(first.resume_before, Some(30), "where to go on");
        // Followed to the end, every match is found once.
        let mut found = sequences(&first.entries);
        let mut resume = first.resume_before;
        let mut pages = 1;
        while let Some(r) = resume {
            query.before_sequence = Some(r);
            let page = store.query_page(&query).await.expect("query");
            assert!(page.examined <= 10, "no more read than the limit");
            found.extend(sequences(&page.entries));
            resume = page.resume_before;
            pages += 1;
            assert!(pages <= 5, "the pages end");
        }
        assert_eq!(found, vec![36, 30, 24, 18, 12, 6, 0]);
        // A full page says nothing of where to go on: its last entry does.
        let full = store
            .query_page(&crate::AuditQuery {
                reason: Some(no_file),
                limit: 2,
                scan_limit: Some(30),
                ..Default::default()
            })
            .await
            .expect("query");
        assert_eq!(sequences(&full.entries), vec![36, 30]);
        assert_eq!(full.resume_before, None);
        // `until` seeks: an upper bound at entry 4 finds entries 3..0
        // reading those up to the longest lookup past it (entry 4), not the
        // 35 newer, which would spend the limit on entries that cannot match.
        let old = store
            .query_page(&crate::AuditQuery {
                until_micros: Some(base + 4 * MINUTES_20),
                limit: 100,
                scan_limit: Some(10),
                ..Default::default()
            })
            .await
            .expect("query");
        assert_eq!(sequences(&old.entries), vec![3, 2, 1, 0]);
        assert_eq!(old.resume_before, None, "all found within the limit");
        assert_eq!(old.examined, 5, "entries 4..0 read");
    }

    pub async fn checkpoints_are_signed_kept_and_cosigned(store: &dyn AuditStore) {
        fill(store, 5).await;
        let Some(key) = store.verifier_key() else {
            // A log configured without signing keeps no checkpoints.
            assert!(store.latest_checkpoint().await.expect("latest").is_none());
            return;
        };
        let verifier = semel_core::checkpoint::NoteVerifier::parse(&key).expect("the key parses");
        // Each store signs on its own schedule: wait for one covering all.
        let mut latest = None;
        for _ in 0..300 {
            if let Some(c) = store.latest_checkpoint().await.expect("latest")
                && c.checkpoint.size == 5
            {
                latest = Some(c);
                break;
            }
            pause(std::time::Duration::from_millis(20)).await;
        }
        let latest = latest.expect("a checkpoint covering the five entries is signed");
        assert_eq!(
            verifier.verify(&latest.note).expect("it verifies"),
            latest.checkpoint
        );
        assert_eq!(latest.checkpoint.root, store.root(5).await.expect("root"));
        let kept = store.checkpoints().await.expect("checkpoints");
        assert_eq!(kept.last(), Some(&latest), "the newest is kept, last");
        assert!(
            kept.windows(2)
                .all(|w| w[0].checkpoint.size < w[1].checkpoint.size),
            "kept oldest first, growing"
        );
        assert_eq!(store.cosigned().await.expect("cosigned"), None);
        let cosigned = format!("{}— witness.example AAAA\n", latest.note);
        store
            .set_cosigned(&cosigned)
            .await
            .expect("keep the cosigned note");
        assert_eq!(store.cosigned().await.expect("cosigned"), Some(cosigned));
    }

    /// An integrity failure found outside the store (a witness that saw a
    /// longer history) halts the log: every later append is refused with
    /// the reason, nothing is written, and the reason stays (a second halt
    /// does not replace the first).
    pub async fn a_halted_log_refuses_every_append_until_restart_and_says_why(
        store: &dyn AuditStore,
    ) {
        fill(store, 2).await;
        assert_eq!(store.failure(), None);
        store.halt("a witness cosigned 40 entries, the log holds 2".into());
        store.halt("a second reason".into());
        for i in 2..4 {
            let refused = store
                .append(record(i))
                .await
                .expect_err("a halted log refuses");
            assert!(
                refused.to_string().contains("cosigned 40 entries"),
                "{refused}"
            );
        }
        let why = store.failure().expect("the failure is reported");
        assert!(why.contains("cosigned 40 entries"), "{why}");
        assert_eq!(store.head().await.expect("head").0, 2, "nothing written");
    }

    pub async fn the_oldest_unsigned_entry_is_read_from_the_log_and_a_clean_stop_signs_every_entry(
        store: &dyn AuditStore,
    ) {
        assert_eq!(store.oldest_uncovered().await.expect("read"), None);
        fill(store, 3).await;
        if store.verifier_key().is_none() {
            return;
        }
        // Until a checkpoint covers them, the oldest unsigned entry is the
        // one at the newest checkpoint's size, with its recorded time.
        let mut covered = false;
        for _ in 0..300 {
            match store.oldest_uncovered().await.expect("read") {
                Some((sequence, time)) => {
                    assert!(sequence < 3, "{sequence}");
                    assert_eq!(
                        time,
                        record(sequence).time_micros,
                        "entry {sequence}'s time"
                    );
                }
                None => {
                    covered = true;
                    break;
                }
            }
            pause(std::time::Duration::from_millis(20)).await;
        }
        assert!(
            covered,
            "the three entries are signed on the store's schedule"
        );
        // A clean stop leaves nothing unsigned, whatever the schedule.
        for i in 3..9 {
            store.append(record(i)).await.expect("append");
        }
        store.close().await.expect("close");
        let latest = store.latest_checkpoint().await.expect("latest");
        assert_eq!(latest.map(|c| c.checkpoint.size), Some(9));
        assert_eq!(store.oldest_uncovered().await.expect("read"), None);
    }
}

pub mod mutations {
    //! The mutation queues: dense positions per consumer, one acceptance
    //! per event id, acknowledgements bounded by delivery, retention.

    use super::kbo;
    use crate::{Accepted, Expired, MutationStore, QueueState, Routed, StorageError};

    fn routed(consumer: &str, payload: &[u8]) -> Routed {
        Routed {
            consumer: kbo(consumer),
            payload: payload.to_vec(),
        }
    }

    /// The key of an event id (the store never sees the id itself).
    fn key(id: &str) -> [u8; 32] {
        semel_core::mutation::event_key(&kbo(SOURCE), id)
    }

    const SOURCE: &str = "0207373429";
    const DIGEST: [u8; 32] = [7; 32];
    const CPAS: &str = "0566988259";
    const OTHER: &str = "0316381039";

    pub async fn changes_queue_densely_per_consumer_and_once_per_event_id(
        store: &dyn MutationStore,
    ) {
        let source = kbo(SOURCE);
        assert_eq!(
            store
                .queue_state(&kbo(CPAS))
                .await
                .expect("the store answers"),
            QueueState::default()
        );
        let a = store
            .accept(
                &source,
                &key("e1"),
                &DIGEST,
                1_000,
                &[routed(CPAS, b"one"), routed(OTHER, b"uno")],
            )
            .await
            .expect("the store answers");
        assert_eq!(a, Accepted::New);
        let again = store
            .accept(
                &source,
                &key("e1"),
                &DIGEST,
                2_000,
                &[routed(CPAS, b"changed")],
            )
            .await
            .expect("the store answers");
        assert_eq!(again, Accepted::Duplicate, "an event id is accepted once");
        // Another source may use the same id.
        assert_eq!(
            store
                .accept(
                    &kbo(OTHER),
                    &key("e1"),
                    &DIGEST,
                    2_500,
                    &[routed(CPAS, b"other source")]
                )
                .await
                .expect("the store answers"),
            Accepted::New
        );
        store
            .accept(&source, &key("e2"), &DIGEST, 3_000, &[routed(CPAS, b"two")])
            .await
            .expect("the store answers");
        store
            .accept(&source, &key("e3"), &DIGEST, 4_000, &[])
            .await
            .expect("the store answers");
        let q = store
            .pending(&kbo(CPAS), 0, 10)
            .await
            .expect("the store answers");
        let got: Vec<(u64, i64, &[u8])> = q
            .iter()
            .map(|e| (e.position, e.accepted_micros, e.payload.as_slice()))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, 1_000, &b"one"[..]),
                (2, 2_500, &b"other source"[..]),
                (3, 3_000, &b"two"[..])
            ]
        );
        assert_eq!(
            store
                .pending(&kbo(CPAS), 1, 1)
                .await
                .expect("the store answers")[0]
                .position,
            2
        );
        assert!(
            store
                .pending(&kbo(CPAS), 3, 10)
                .await
                .expect("the store answers")
                .is_empty()
        );
        let other = store
            .pending(&kbo(OTHER), 0, 10)
            .await
            .expect("the store answers");
        assert_eq!(other.len(), 1);
        assert_eq!(
            (other[0].position, other[0].payload.as_slice()),
            (1, &b"uno"[..])
        );
        assert_eq!(
            store
                .queue_state(&kbo(CPAS))
                .await
                .expect("the store answers")
                .head,
            3
        );
    }

    pub async fn acknowledgements_drop_what_was_delivered_and_no_more(store: &dyn MutationStore) {
        let (source, cpas) = (kbo(SOURCE), kbo(CPAS));
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            store
                .accept(
                    &source,
                    &key(id),
                    &DIGEST,
                    i as i64,
                    &[routed(CPAS, id.as_bytes())],
                )
                .await
                .expect("the store answers");
        }
        match store.acknowledge(&cpas, 1).await {
            Err(StorageError::OutOfRange(_)) => {}
            other => panic!("an acknowledgement beyond delivery must be refused: {other:?}"),
        }
        store
            .delivered(&cpas, 0, 2)
            .await
            .expect("the store answers");
        // Delivery cannot run past the head.
        store
            .delivered(&cpas, 2, 99)
            .await
            .expect("the store answers");
        assert_eq!(
            store
                .queue_state(&cpas)
                .await
                .expect("the store answers")
                .delivered,
            3
        );
        let a = store
            .acknowledge(&cpas, 2)
            .await
            .expect("the store answers");
        let s = a.state;
        assert_eq!((s.head, s.delivered, s.acknowledged), (3, 3, 2));
        assert_eq!((a.previous, a.dropped), (0, 2));
        let left: Vec<u64> = store
            .pending(&cpas, 0, 10)
            .await
            .expect("the store answers")
            .iter()
            .map(|e| e.position)
            .collect();
        assert_eq!(left, vec![3], "acknowledged changes are dropped");
        // An older acknowledgement changes nothing.
        let a = store
            .acknowledge(&cpas, 1)
            .await
            .expect("the store answers");
        assert_eq!((a.state.acknowledged, a.previous, a.dropped), (2, 2, 0));
        let a = store
            .acknowledge(&cpas, 3)
            .await
            .expect("the store answers");
        assert_eq!((a.state.acknowledged, a.previous, a.dropped), (3, 2, 1));
        assert!(
            store
                .pending(&cpas, 0, 10)
                .await
                .expect("the store answers")
                .is_empty()
        );
        // Positions go on after the queue emptied.
        store
            .accept(&source, &key("d"), &DIGEST, 9, &[routed(CPAS, b"d")])
            .await
            .expect("the store answers");
        assert_eq!(
            store
                .pending(&cpas, 0, 10)
                .await
                .expect("the store answers")[0]
                .position,
            4
        );
    }

    pub async fn a_withheld_change_leaves_a_hole_and_ids_are_known(store: &dyn MutationStore) {
        let (source, cpas) = (kbo(SOURCE), kbo(CPAS));
        assert_eq!(
            store
                .known(&source, &key("x"))
                .await
                .expect("the store answers"),
            None
        );
        for id in ["x", "y"] {
            store
                .accept(
                    &source,
                    &key(id),
                    &DIGEST,
                    1,
                    &[routed(CPAS, id.as_bytes())],
                )
                .await
                .expect("the store answers");
        }
        assert_eq!(
            store
                .known(&source, &key("x"))
                .await
                .expect("the store answers"),
            Some(DIGEST),
            "the digest comes back"
        );
        assert_eq!(
            store
                .known(&kbo(OTHER), &key("x"))
                .await
                .expect("the store answers"),
            None
        );
        store.withhold(&cpas, 1).await.expect("the store answers");
        let left: Vec<u64> = store
            .pending(&cpas, 0, 10)
            .await
            .expect("the store answers")
            .iter()
            .map(|e| e.position)
            .collect();
        assert_eq!(left, vec![2], "the hole is skipped");
        // The next change takes the next position, never the hole's.
        store
            .accept(&source, &key("z"), &DIGEST, 2, &[routed(CPAS, b"z")])
            .await
            .expect("the store answers");
        assert_eq!(
            store
                .queue_state(&cpas)
                .await
                .expect("the store answers")
                .head,
            3
        );
    }

    pub async fn changes_published_at_once_get_dense_positions(store: &dyn MutationStore) {
        let source = kbo(SOURCE);
        let ids: Vec<String> = (0..16).map(|i| format!("c{i}")).collect();
        // Each consumer its own payload, given in either order.
        let routes: Vec<Vec<Routed>> = (0..16)
            .map(|i| {
                let both = vec![routed(CPAS, b"for cpas"), routed(OTHER, b"for other")];
                if i % 2 == 0 {
                    both
                } else {
                    both.into_iter().rev().collect()
                }
            })
            .collect();
        let keys: Vec<[u8; 32]> = ids.iter().map(|id| key(id)).collect();
        let all = keys
            .iter()
            .zip(&routes)
            .map(|(k, routed)| store.accept(&source, k, &DIGEST, 5, routed));
        for a in futures_join_all(all).await {
            assert_eq!(a.expect("the store answers"), Accepted::New);
        }
        for (consumer, payload) in [(CPAS, &b"for cpas"[..]), (OTHER, &b"for other"[..])] {
            let queued = store
                .pending(&kbo(consumer), 0, 100)
                .await
                .expect("the store answers");
            let mut positions: Vec<u64> = queued.iter().map(|e| e.position).collect();
            positions.sort_unstable();
            assert_eq!(positions, (1..=16).collect::<Vec<u64>>(), "{consumer}");
            assert!(
                queued.iter().all(|e| e.payload == payload),
                "each consumer gets its own payload"
            );
        }
    }

    /// A consumer that reads after a position it was never sent (a pull's
    /// `after` ahead of its delivery) is not thereby sent what it skipped:
    /// delivery moves only from where it stands, so that an
    /// acknowledgement can never drop changes nobody was sent.
    pub async fn delivery_advances_only_contiguously(store: &dyn MutationStore) {
        let (source, cpas) = (kbo(SOURCE), kbo(CPAS));
        for (i, id) in ["p", "q", "r", "s"].iter().enumerate() {
            store
                .accept(
                    &source,
                    &key(id),
                    &DIGEST,
                    i as i64,
                    &[routed(CPAS, id.as_bytes())],
                )
                .await
                .expect("the store answers");
        }
        let delivered = async || {
            store
                .queue_state(&cpas)
                .await
                .expect("the store answers")
                .delivered
        };
        // A page read after 3 (positions 1 to 3 unseen) delivers nothing.
        store
            .delivered(&cpas, 3, 4)
            .await
            .expect("the store answers");
        assert_eq!(delivered().await, 0, "a page read ahead delivers nothing");
        match store.acknowledge(&cpas, 4).await {
            Err(StorageError::OutOfRange(_)) => {}
            other => panic!("changes never sent must not be acknowledged: {other:?}"),
        }
        // From the start, then on from where delivery stands.
        store
            .delivered(&cpas, 0, 2)
            .await
            .expect("the store answers");
        assert_eq!(delivered().await, 2);
        store
            .delivered(&cpas, 2, 4)
            .await
            .expect("the store answers");
        assert_eq!(delivered().await, 4);
        // A page read again from before it moves nothing back.
        store
            .delivered(&cpas, 0, 1)
            .await
            .expect("the store answers");
        assert_eq!(delivered().await, 4);
        let a = store
            .acknowledge(&cpas, 4)
            .await
            .expect("the store answers");
        assert_eq!((a.state.acknowledged, a.dropped), (4, 4));
    }

    /// Polls every future until all are done (the port knows no runtime).
    async fn futures_join_all<F: std::future::Future>(
        futures: impl Iterator<Item = F>,
    ) -> Vec<F::Output> {
        let mut pending: Vec<std::pin::Pin<Box<F>>> = futures.map(Box::pin).collect();
        let mut done: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
        std::future::poll_fn(move |cx| {
            let mut all = true;
            for (i, f) in pending.iter_mut().enumerate() {
                if done[i].is_none() {
                    match f.as_mut().poll(cx) {
                        std::task::Poll::Ready(v) => done[i] = Some(v),
                        std::task::Poll::Pending => all = false,
                    }
                }
            }
            if all {
                std::task::Poll::Ready(done.iter_mut().map(|d| d.take().expect("done")).collect())
            } else {
                std::task::Poll::Pending
            }
        })
        .await
    }

    pub async fn expired_changes_are_reported_lost(store: &dyn MutationStore) {
        let (source, cpas, other) = (kbo(SOURCE), kbo(CPAS), kbo(OTHER));
        // Position 2 was accepted "earlier" than position 1 (two brokers'
        // clocks): the prefix up to it goes, 1 included.
        for (t, id) in [(20, "old1"), (10, "old2"), (30, "new")] {
            store
                .accept(
                    &source,
                    &key(id),
                    &DIGEST,
                    t,
                    &[routed(CPAS, id.as_bytes()), routed(OTHER, b"o")],
                )
                .await
                .expect("the store answers");
        }
        store
            .delivered(&other, 0, 2)
            .await
            .expect("the store answers");
        store
            .acknowledge(&other, 2)
            .await
            .expect("the store answers");
        assert_eq!(
            store.expire(15, 15).await.expect("the store answers"),
            vec![Expired {
                consumer: cpas,
                first: 1,
                last: 2,
                dropped: 2
            }],
            "what each consumer lost, and nothing of what was acknowledged"
        );
        let s = store.queue_state(&cpas).await.expect("the store answers");
        assert_eq!((s.head, s.lost_through), (3, 2));
        assert_eq!(
            store
                .pending(&cpas, 0, 10)
                .await
                .expect("the store answers")[0]
                .position,
            3
        );
        // What was lost may be acknowledged, to move past the notice.
        let a = store
            .acknowledge(&cpas, 2)
            .await
            .expect("lost positions acknowledged");
        assert_eq!((a.state.acknowledged, a.dropped), (2, 0));
        // What was acknowledged was not lost.
        assert_eq!(
            store
                .queue_state(&other)
                .await
                .expect("the store answers")
                .lost_through,
            0
        );
        // Event ids are forgotten on their own horizon only.
        let known = async |id: &str| {
            store
                .known(&source, &key(id))
                .await
                .expect("the store answers")
        };
        assert!(known("old1").await.is_some());
        assert_eq!(
            store.expire(15, 25).await.expect("the store answers"),
            vec![],
            "nothing more to drop"
        );
        assert!(known("old1").await.is_none());
        assert!(known("new").await.is_some());
        assert_eq!(
            store
                .accept(&source, &key("old1"), &DIGEST, 40, &[])
                .await
                .expect("the store answers"),
            Accepted::New
        );
    }
}
