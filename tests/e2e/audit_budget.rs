//! Audit calls within bounds: each reads at most a budget of entries (a
//! page cut short carries a token to go on, a summary says where it
//! stopped), a query with `until` starts at the newest entry that can
//! match it, and an organisation has few audit calls in flight at once.

use std::time::Duration;

use semel_demo::seed::datasets::*;
use semel_server::limits::LimitSettings;
use semel_server::proto::{self, audit_service_client::AuditServiceClient};
use tonic::Code;

use crate::harness::*;

/// The scan budget of these tests: far below the demo's log, so that a
/// filter no index serves cannot be answered in one call.
const BUDGET: usize = 20;

/// A demo whose audit calls read at most [`BUDGET`] entries, and whose
/// summaries are not rationed (the tests follow them page by page).
async fn start() -> TestDemo {
    TestDemo::start_with(
        LimitSettings {
            audit_scan_budget: BUDGET,
            audit_summaries_per_second: 1000.0,
            audit_summary_burst: 1000.0,
            ..LimitSettings::default()
        },
        Duration::from_millis(400),
    )
    .await
}

/// National numbers the demo's registers do not hold: Anderlecht has no
/// file for them, so a lookup is refused NO_ACTIVE_FILE.
fn strangers(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let nine = format!("500615{:03}", 101 + 2 * i);
            let check = 97 - nine.parse::<u64>().expect("digits") % 97;
            format!("{nine}{check:02}")
        })
        .collect()
}

/// Five lookups refused NO_ACTIVE_FILE, each followed by eight allowed
/// ones: the refusals lie further apart than a budget's worth of reading
/// could find together. Returns their sequences, newest first.
async fn refusals_among_lookups(t: &TestDemo) -> Vec<u64> {
    let mut clerk = t.lookup_client(ANDERLECHT).await;
    for n in strangers(5) {
        let err = clerk
            .lookup(lookup(&n, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
            .await
            .expect_err("no file");
        assert_error(&err, Code::PermissionDenied, "NO_ACTIVE_FILE");
        for _ in 0..8 {
            clerk
                .lookup(lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
                .await
                .expect("allowed");
        }
    }
    let mut refused: Vec<u64> = t
        .all_audit_entries()
        .await
        .into_iter()
        .filter(|e| e.reason == "NO_ACTIVE_FILE")
        .map(|e| e.sequence)
        .collect();
    refused.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(refused.len(), 5, "the refusals are in the log");
    refused
}

/// A filter no index serves (the reason) over a log larger than the scan
/// budget: the first page is short and carries a token; followed, the
/// tokens reach every match exactly once.
#[tokio::test]
async fn a_filter_without_an_index_pages_within_the_scan_budget() {
    let t = start().await;
    let expected = refusals_among_lookups(&t).await;
    let size = t.audit_size().await;
    assert!(
        size > 2 * BUDGET as u64,
        "a log larger than the budget: {size}"
    );
    let mut auditor = AuditServiceClient::new(t.channel("control-commission").await);
    let mut found = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = auditor
            .list_audit_entries(proto::ListAuditEntriesRequest {
                reason: "NO_ACTIVE_FILE".into(),
                page_size: 100,
                page_token: token,
                ..Default::default()
            })
            .await
            .expect("a page")
            .into_inner();
        if pages == 0 {
            assert!(
                page.entries.len() < expected.len() && !page.next_page_token.is_empty(),
                "the first page is cut short by the budget and says to go on: {} entries, token {:?}",
                page.entries.len(),
                page.next_page_token
            );
        }
        pages += 1;
        found.extend(page.entries.iter().map(|e| e.sequence));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
        assert!(pages < 1000, "the pages end");
    }
    assert_eq!(found, expected, "every match once, newest first");

    // A summary stops at the budget too, says where, and counts the rest
    // when asked again from there.
    let mut total = 0;
    let mut before_sequence = 0;
    let mut summaries = 0;
    loop {
        let summary = auditor
            .summarise_audit_entries(proto::SummariseAuditEntriesRequest {
                reason: "NO_ACTIVE_FILE".into(),
                before_sequence,
                ..Default::default()
            })
            .await
            .expect("a summary")
            .into_inner();
        if summaries == 0 {
            assert!(
                summary.truncated && summary.next_before_sequence > 0,
                "the first summary stops at the budget and says where"
            );
            assert!(summary.total < expected.len() as u64);
        }
        summaries += 1;
        total += summary.total;
        if !summary.truncated {
            assert_eq!(summary.next_before_sequence, 0);
            break;
        }
        assert!(summary.next_before_sequence < before_sequence || before_sequence == 0);
        before_sequence = summary.next_before_sequence;
        assert!(summaries < 1000, "the summaries end");
    }
    assert_eq!(total, expected.len() as u64, "every match counted once");
}

/// `until` seeks: on a log whose newer part lies hours past the bound
/// (more entries than the budget), a query with `until` finds the older
/// matches in its first page, reading only what lies before the bound.
/// Without the seek, the budget would be spent on the newer entries and
/// the first page would be empty.
#[tokio::test]
async fn a_query_with_until_starts_at_the_bound_not_at_the_head() {
    let t = start().await;
    // Three refusals, the newest entries of the log as it is now.
    let mut clerk = t.lookup_client(ANDERLECHT).await;
    for n in strangers(3) {
        clerk
            .lookup(lookup(&n, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
            .await
            .expect_err("no file");
    }
    // The log goes on: entries stamped an hour apart from an hour on,
    // appended as the broker appends, more than a budget of them.
    let now = time::OffsetDateTime::now_utc();
    let now_micros = (now.unix_timestamp_nanos() / 1000) as i64;
    let hour = 3_600_000_000i64;
    let consumer = semel_demo::seed::org(ANDERLECHT).expect("org").kbo;
    for i in 0..(2 * BUDGET as i64) {
        let record = semel_core::AuditRecord {
            request_id: [7; 16],
            time_micros: now_micros + hour * (1 + i),
            operation: semel_core::LOOKUP_OPERATION.into(),
            consumer,
            end_user: Some("later".into()),
            citizen: None,
            dataset: RESIDENCE.into(),
            fields_requested: vec!["street".into()],
            fields_returned: vec!["street".into()],
            purpose: "RIS_ELIGIBILITY".into(),
            authorisation: None,
            authorisation_version: None,
            decision: semel_core::AuditDecision::Allowed,
            reason: None,
            outcome: semel_core::Outcome::Answered,
            source: None,
            consumer_reference: String::new(),
            reference_date: None,
            citizen_as_given: None,
            checks: Vec::new(),
            detail: String::new(),
        };
        t.demo()
            .broker
            .storage()
            .audit
            .append(record)
            .await
            .expect("append");
    }
    let mut auditor = AuditServiceClient::new(t.channel("control-commission").await);
    let until = now + time::Duration::minutes(30);
    let page = auditor
        .list_audit_entries(proto::ListAuditEntriesRequest {
            reason: "NO_ACTIVE_FILE".into(),
            until: Some(prost_types::Timestamp {
                seconds: until.unix_timestamp(),
                nanos: 0,
            }),
            page_size: 100,
            ..Default::default()
        })
        .await
        .expect("a page")
        .into_inner();
    // The refusals lie just below the bound: the first page holds them.
    assert_eq!(page.entries.len(), 3, "found within one page's budget");
    assert!(page.entries.iter().all(|e| e.reason == "NO_ACTIVE_FILE"));
    assert!(
        page.entries
            .windows(2)
            .all(|w| w[0].sequence > w[1].sequence),
        "newest first"
    );
}

/// An organisation has at most two audit calls in flight: a third is
/// refused RESOURCE_EXHAUSTED (AUDIT_CALLS_EXCEEDED) and recorded; another
/// organisation's auditors, and the citizen, are not held back by it; the
/// place is free again when a call ends.
#[tokio::test]
async fn a_third_concurrent_audit_call_of_one_organisation_is_refused() {
    let t = start().await;
    let commission = semel_demo::seed::org("control-commission")
        .expect("org")
        .kbo;
    // Two calls in flight, held as a running call holds its place.
    let first = t.demo().broker.hold_audit_call(commission).expect("first");
    let _second = t.demo().broker.hold_audit_call(commission).expect("second");
    let mut auditor = AuditServiceClient::new(t.channel("control-commission").await);
    let err = auditor
        .list_audit_entries(proto::ListAuditEntriesRequest::default())
        .await
        .expect_err("a third list");
    assert_error(&err, Code::ResourceExhausted, "AUDIT_CALLS_EXCEEDED");
    let err = auditor
        .summarise_audit_entries(proto::SummariseAuditEntriesRequest::default())
        .await
        .expect_err("a third summary");
    assert_error(&err, Code::ResourceExhausted, "AUDIT_CALLS_EXCEEDED");
    let err = auditor
        .list_citizen_accesses(proto::ListCitizenAccessesRequest {
            citizen: KARIM.into(),
            ..Default::default()
        })
        .await
        .expect_err("a third reading of a citizen's accesses");
    assert_error(&err, Code::ResourceExhausted, "AUDIT_CALLS_EXCEEDED");

    // Another organisation's auditor, and a citizen reading their own
    // accesses, are not held back.
    let dpo = t.token(SCHAERBEEK, &[semel_core::UserRole::Auditor]);
    let mut dpo = AuditServiceClient::new(t.channel_as(SCHAERBEEK, &dpo).await);
    dpo.list_audit_entries(proto::ListAuditEntriesRequest::default())
        .await
        .expect("another organisation's auditor");
    let mut karim = AuditServiceClient::new(t.citizen_channel(KARIM).await);
    karim
        .list_citizen_accesses(proto::ListCitizenAccessesRequest {
            citizen: KARIM.into(),
            ..Default::default()
        })
        .await
        .expect("the citizen");

    // One call ends: the next is served.
    drop(first);
    auditor
        .list_audit_entries(proto::ListAuditEntriesRequest::default())
        .await
        .expect("a place is free");
    // The refusals were recorded.
    let refused = t
        .all_audit_entries()
        .await
        .into_iter()
        .filter(|e| e.reason == "AUDIT_CALLS_EXCEEDED")
        .count();
    assert_eq!(refused, 3);
}

/// Summaries are rationed per organisation: beyond the burst, the next is
/// refused RATE_LIMITED with the delay to wait.
#[tokio::test]
async fn summaries_are_rationed_per_organisation() {
    let t = TestDemo::start_with(
        LimitSettings {
            audit_summaries_per_second: 0.001,
            audit_summary_burst: 2.0,
            ..LimitSettings::default()
        },
        Duration::from_millis(400),
    )
    .await;
    let mut auditor = AuditServiceClient::new(t.channel("control-commission").await);
    for _ in 0..2 {
        auditor
            .summarise_audit_entries(proto::SummariseAuditEntriesRequest::default())
            .await
            .expect("within the burst");
    }
    let err = auditor
        .summarise_audit_entries(proto::SummariseAuditEntriesRequest::default())
        .await
        .expect_err("beyond the burst");
    assert_error(&err, Code::ResourceExhausted, "RATE_LIMITED");
    // Listing is not a summary: still served.
    auditor
        .list_audit_entries(proto::ListAuditEntriesRequest::default())
        .await
        .expect("a list");
}
