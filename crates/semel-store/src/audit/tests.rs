//! The audit log's own tests: appends, reopening, rebuilding what is
//! derived from the log, torn writes, period queries.

use super::*;
use crate::Store;
use semel_core::{AuditDecision, Outcome};

/// A test entry: entry `i`, about `citizen` if given.
pub(crate) fn record(i: u8, citizen: Option<&str>) -> AuditRecord {
    AuditRecord {
        request_id: [i; 16],
        time_micros: 1_700_000_000_000_000 + i64::from(i),
        operation: semel_core::LOOKUP_OPERATION.into(),
        consumer: Kbo::parse(if i.is_multiple_of(2) {
            "0566988259"
        } else {
            "0314595348"
        })
        .expect("kbo"),
        end_user: None,
        citizen: citizen.map(|c| Niss::parse(c).expect("niss")),
        dataset: "national_register.residence".into(),
        fields_requested: vec!["street".into()],
        fields_returned: vec![],
        purpose: "RIS_ELIGIBILITY".into(),
        authorisation: None,
        authorisation_version: None,
        decision: AuditDecision::Refused,
        reason: None,
        outcome: Outcome::NotForwarded,
        source: None,
        consumer_reference: String::new(),
        reference_date: None,
        citizen_as_given: None,
        checks: Vec::new(),
        detail: String::new(),
    }
}

async fn append_n(store: &Store, n: u8) {
    let futs: Vec<_> = (0..n)
        .map(|i| {
            store.audit().append(record(
                i,
                Some(if i.is_multiple_of(3) {
                    "93051822361"
                } else {
                    "85073003328"
                }),
            ))
        })
        .collect();
    for f in futs {
        f.await.expect("append");
    }
}

#[tokio::test]
async fn appends_chain_and_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    append_n(&store, 30).await;
    let report = store.audit().verify_chain().expect("verify");
    assert_eq!(report.entries, 30);
    assert_eq!(store.audit().head(), (30, report.head));
    store.close().expect("close");

    let store = Store::open(dir.path()).expect("reopen");
    assert_eq!(store.audit().head().0, 30);
    append_n(&store, 5).await;
    assert_eq!(store.audit().verify_chain().expect("verify").entries, 35);
    let by_citizen = store
        .audit()
        .query(&AuditQuery {
            citizen: Some(Niss::parse("93051822361").expect("niss")),
            limit: 100,
            ..Default::default()
        })
        .expect("query");
    // i % 3 == 0 for i in 0..30 (10) and 0..5 (2).
    assert_eq!(by_citizen.len(), 12);
    assert!(
        by_citizen
            .windows(2)
            .all(|w| w[0].entry.sequence > w[1].entry.sequence)
    );
    let by_consumer = store
        .audit()
        .query(&AuditQuery {
            consumer: Some(Kbo::parse("0566988259").expect("kbo")),
            limit: 7,
            ..Default::default()
        })
        .expect("query");
    assert_eq!(by_consumer.len(), 7);
    assert!(
        by_consumer
            .iter()
            .all(|e| e.entry.record.consumer.as_str() == "0566988259")
    );
    let paged = store
        .audit()
        .query(&AuditQuery {
            before_sequence: Some(10),
            limit: 100,
            ..Default::default()
        })
        .expect("query");
    assert_eq!(paged.len(), 10);
}

fn durable_offset(store: &Store) -> u64 {
    lock(&store.audit().shared.progress).durable.offset
}

#[tokio::test]
async fn lost_index_and_ends_are_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    append_n(&store, 12).await;
    let proof = store.audit().inclusion_proof(5, 12).expect("proof").1;
    store.close().expect("close");
    std::fs::remove_dir_all(dir.path().join("audit/index")).expect("remove index");
    std::fs::remove_dir_all(dir.path().join("audit/tree")).expect("remove tree");
    std::fs::remove_file(dir.path().join("audit/ends")).expect("remove ends");
    // Rebuilt in chunks of RECOVERY_CHUNK entries (4 under test).
    let store = Store::open(dir.path()).expect("reopen");
    assert_eq!(store.audit().head().0, 12);
    assert_eq!(
        store.audit().inclusion_proof(5, 12).expect("proof").1,
        proof
    );
    assert_eq!(
        store
            .audit()
            .inclusion_proof(11, 12)
            .expect("proof")
            .0
            .entry
            .sequence,
        11
    );
    let all = store
        .audit()
        .query(&AuditQuery {
            limit: 100,
            ..Default::default()
        })
        .expect("query");
    assert_eq!(all.len(), 12);
    let karim = Niss::parse("93051822361").expect("niss");
    let mine = store
        .audit()
        .query(&AuditQuery {
            citizen: Some(karim),
            limit: 100,
            ..Default::default()
        })
        .expect("query");
    assert_eq!(mine.len(), 4);
    store.close().expect("close");

    // Ends behind the index (not synced before a crash): rebuilt too.
    let ends = dir.path().join("audit/ends");
    let f = OpenOptions::new()
        .write(true)
        .open(&ends)
        .expect("open ends");
    f.set_len(5 * 8).expect("shorten");
    drop(f);
    let store = Store::open(dir.path()).expect("reopen");
    assert_eq!(
        store
            .audit()
            .read_sequence(11)
            .expect("read")
            .entry
            .sequence,
        11
    );
    append_n(&store, 1).await;
    assert_eq!(store.audit().verify_chain().expect("verify").entries, 13);
}

#[tokio::test]
async fn a_torn_write_is_zeroed_and_damage_stops_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    append_n(&store, 4).await;
    let end = durable_offset(&store);
    store.close().expect("close");
    let log = dir.path().join("audit/log");

    // A torn write: a frame header promising 256 bytes, 3 of them written.
    let f = OpenOptions::new().write(true).open(&log).expect("open");
    f.write_all_at(&[0, 0, 1, 0, 9, 9, 9, 9, 1, 2, 3], end)
        .expect("write");
    drop(f);
    std::fs::remove_dir_all(dir.path().join("audit/index")).expect("remove index");
    let store = Store::open(dir.path()).expect("reopen repairs the tail");
    assert_eq!(store.audit().head().0, 4);
    append_n(&store, 2).await;
    assert_eq!(store.audit().verify_chain().expect("verify").entries, 6);
    store.close().expect("close");

    // A flipped byte inside the second entry, with entries after it.
    let mut bytes = std::fs::read(&log).expect("read");
    let second = {
        let len = u32::from_be_bytes(bytes[..4].try_into().expect("4")) as usize;
        HEADER + len
    };
    bytes[second + HEADER + 3] ^= 0xff;
    std::fs::write(&log, &bytes).expect("write");
    std::fs::remove_dir_all(dir.path().join("audit/index")).expect("remove index");
    std::fs::remove_dir_all(dir.path().join("audit/tree")).expect("remove tree");
    std::fs::remove_file(dir.path().join("audit/ends")).expect("remove ends");
    let err = Store::open(dir.path())
        .err()
        .expect("damage must stop the start");
    assert!(
        err.to_string().contains(&format!("offset {second}")),
        "{err}"
    );
}

#[tokio::test]
async fn a_period_query_finds_entries_appended_out_of_time_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    // A slow lookup (arrived at t=50) is appended after a fast one (t=100).
    for t in [10, 100, 50, 120] {
        let mut r = record(1, Some("93051822361"));
        r.time_micros = t * 1_000_000;
        store.audit().append(r).await.expect("append");
    }
    let since = |s: i64, until: Option<i64>| {
        let q = AuditQuery {
            since_micros: Some(s * 1_000_000),
            until_micros: until.map(|u| u * 1_000_000),
            limit: 10,
            ..Default::default()
        };
        let mut times: Vec<i64> = store
            .audit()
            .query(&q)
            .expect("query")
            .iter()
            .map(|e| e.entry.record.time_micros / 1_000_000)
            .collect();
        times.sort_unstable();
        times
    };
    assert_eq!(since(80, None), vec![100, 120]);
    assert_eq!(since(40, None), vec![50, 100, 120]);
    assert_eq!(since(40, Some(110)), vec![50, 100]);
    assert_eq!(since(0, Some(60)), vec![10, 50]);
}

#[tokio::test]
async fn a_truncated_log_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    append_n(&store, 6).await;
    let end = durable_offset(&store);
    store.close().expect("close");
    let f = OpenOptions::new()
        .write(true)
        .open(dir.path().join("audit/log"))
        .expect("open");
    f.set_len(end / 2).expect("truncate");
    drop(f);
    let log = std::fs::read(dir.path().join("audit/log")).expect("read");
    let err = Store::open(dir.path())
        .err()
        .expect("a truncated log must stop the start");
    let err = err.to_string();
    assert!(
        err.contains("cut short") || err.contains("removed"),
        "{err}"
    );
    assert!(
        err.contains("entry 3") || err.contains("entries 3 to 5"),
        "names the first entry lost: {err}"
    );
    // Nothing was zeroed: the evidence stays as it was found.
    assert_eq!(
        std::fs::read(dir.path().join("audit/log")).expect("read"),
        log
    );
}
