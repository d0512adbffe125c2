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

use crate::{PersonsStore, StorageError};

/// A store under test, with whatever must live as long as it (a temporary
/// directory, a test database).
pub struct Subject<S: ?Sized> {
    pub store: Box<S>,
    pub keep: Box<dyn std::any::Any + Send>,
}

/// Runs every persons case against stores made by `$make` (an expression
/// of type `impl Future<Output = Option<Subject<dyn PersonsStore>>>`,
/// evaluated once per case). Needs `tokio` with `macros` and `rt`.
#[macro_export]
macro_rules! persons_conformance {
    ($make:expr) => {
        mod persons_conformance {
            use super::*;
            $crate::persons_conformance!(@cases $make;
                replacements_resolve_both_ways_and_refuse_loops,
                chains_are_followed_to_the_number_in_force,
                a_replacement_taken_back_separates_the_numbers_again,
                files_round_trip_and_count_under_former_numbers,
                consents_round_trip_and_count_under_former_numbers,
            );
        }
    };
    (@cases $make:expr; $($case:ident,)*) => {
        $(
            #[tokio::test]
            async fn $case() {
                let Some(subject) = $make.await else { return };
                $crate::conformance::persons::$case(&*subject.store).await;
                drop(subject);
            }
        )*
    };
}

fn niss(s: &str) -> Niss {
    Niss::parse(s).expect("a valid test number")
}

fn kbo(s: &str) -> Kbo {
    Kbo::parse(s).expect("a valid test enterprise number")
}

fn replacement(old: Niss, new: Niss) -> NumberReplacement {
    NumberReplacement {
        old,
        new,
        replaced_on: date!(2026 - 01 - 01),
        registered_by: kbo("0314595348"),
        registered_at: datetime!(2026-01-01 0:00 UTC),
    }
}

fn file(id: &str, consumer: Kbo, citizen: Niss) -> PersonFile {
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

fn consent(id: &str, citizen: Niss) -> Consent {
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
