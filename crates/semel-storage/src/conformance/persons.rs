//! The cases on the persons directory.

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
