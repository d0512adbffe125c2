//! The cases on the audit log.

use super::*;
use semel_core::merkle::{CompactRange, verify_consistency, verify_inclusion};
use semel_core::{AuditDecision, AuditEntry, AuditRecord, Hash, Outcome, ZERO_HASH, entry_hash};

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
pub async fn a_halted_log_refuses_every_append_until_restart_and_says_why(store: &dyn AuditStore) {
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
