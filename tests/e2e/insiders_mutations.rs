//! The insider review of the mutation flow (issue 29, findings 3, 4, 9 and
//! 10): a source's auditor does not learn who was told of a change; a
//! consumer acknowledges only what it was sent, and acknowledgements and
//! expiries are recorded; a waiting pull stops when its organisation is
//! suspended; a suspended organisation's queue gets nothing; a source has
//! a budget of published changes.

use std::collections::HashMap;
use std::time::Duration;

use semel_client::AuthChannel;
use semel_core::UserRole;
use semel_demo::seed::datasets::RESIDENCE;
use semel_server::proto::{self, mutation_service_client::MutationServiceClient};
use tonic::Code;

use crate::harness::*;

const REGISTER: &str = "national-register";
const QUEUE: &str = semel_core::mutation::QUEUE_OPERATION;
const EXPIRE: &str = semel_core::mutation::EXPIRE_OPERATION;
const ACKNOWLEDGE: &str = "semel.v1.MutationService/AcknowledgeMutations";

fn kbo(slug: &str) -> String {
    semel_demo::seed::org(slug)
        .expect("org")
        .kbo
        .as_str()
        .to_owned()
}

async fn mutations(t: &TestDemo, slug: &str) -> MutationServiceClient<AuthChannel> {
    MutationServiceClient::new(t.channel(slug).await)
}

/// Karim (on whom CPAS d'Anderlecht holds a file) moves.
fn a_move(id: &str) -> proto::Mutation {
    let text = |s: &str| proto::Value {
        kind: Some(proto::value::Kind::StringValue(s.into())),
    };
    proto::Mutation {
        source_event_id: id.into(),
        dataset: RESIDENCE.into(),
        citizen: KARIM.into(),
        kind: proto::MutationKind::Changed as i32,
        effective_date: time::OffsetDateTime::now_utc().date().to_string(),
        fields: HashMap::from([
            ("street".to_owned(), text("Rue Wayez")),
            ("house_number".to_owned(), text("12")),
            ("nis_code".to_owned(), text("21001")),
        ]),
    }
}

async fn publish(
    t: &TestDemo,
    m: Vec<proto::Mutation>,
) -> Result<Vec<proto::PublishedMutation>, tonic::Status> {
    mutations(t, REGISTER)
        .await
        .publish_mutations(proto::PublishMutationsRequest { mutations: m })
        .await
        .map(|r| r.into_inner().results)
}

async fn pull(
    t: &TestDemo,
    slug: &str,
    after: u64,
    wait: i32,
) -> Result<proto::PullMutationsResponse, tonic::Status> {
    mutations(t, slug)
        .await
        .pull_mutations(proto::PullMutationsRequest {
            after,
            max_events: 0,
            wait_seconds: wait,
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn acknowledge(
    t: &TestDemo,
    slug: &str,
    position: u64,
) -> Result<proto::AcknowledgeMutationsResponse, tonic::Status> {
    mutations(t, slug)
        .await
        .acknowledge_mutations(proto::AcknowledgeMutationsRequest { position })
        .await
        .map(tonic::Response::into_inner)
}

async fn suspend(t: &TestDemo, slug: &str) {
    t.registry()
        .await
        .suspend_organisation(proto::SuspendOrganisationRequest {
            kbo: kbo(slug),
            reason: "under review".into(),
        })
        .await
        .expect("suspend");
}

/// Every entry an organisation's own auditor reads, through both queries:
/// the entries, and the summary.
async fn as_auditor_of(
    t: &TestDemo,
    slug: &str,
) -> (Vec<proto::AuditEntry>, proto::SummariseAuditEntriesResponse) {
    let token = t.token(slug, &[UserRole::Auditor]);
    let mut audit =
        proto::audit_service_client::AuditServiceClient::new(t.channel_as(slug, &token).await);
    let mut entries = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = audit
            .list_audit_entries(proto::ListAuditEntriesRequest {
                page_size: 1000,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .expect("an organisation's auditor reads its entries")
            .into_inner();
        entries.extend(page.entries);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let summary = audit
        .summarise_audit_entries(proto::SummariseAuditEntriesRequest::default())
        .await
        .expect("an organisation's auditor summarises its entries")
        .into_inner();
    (entries, summary)
}

/// Finding 3: the source's entry of a publication says the change was
/// accepted, no more; who was told (and whether anyone was) is in entries
/// attributed to each consumer told, which the source's auditors do not
/// read.
#[tokio::test]
async fn a_sources_auditor_reads_no_entry_naming_the_consumers_told() {
    let t = TestDemo::start().await;
    // Two consumers hold a file on Karim: both are told.
    t.open_file(BRUXELLES_CPAS, KARIM, "RIS_APPLICANT").await;
    publish(&t, vec![a_move("move-audited")])
        .await
        .expect("published");
    let told = [kbo(ANDERLECHT), kbo(BRUXELLES_CPAS)];

    let (entries, summary) = as_auditor_of(&t, REGISTER).await;
    let publication = entries
        .iter()
        .find(|e| e.operation == semel_core::mutation::PUBLISH_OPERATION)
        .expect("the source's auditor reads its publication");
    assert_eq!(publication.consumer_reference, "move-audited");
    assert_eq!(publication.citizen, KARIM);
    assert!(
        publication.detail.ends_with("accepted"),
        "{}",
        publication.detail
    );
    for e in &entries {
        assert_eq!(e.consumer_kbo, kbo(REGISTER), "{e:?}");
        assert_ne!(e.operation, QUEUE, "{e:?}");
        let shown = format!("{e:?}");
        for consumer in &told {
            assert!(!shown.contains(consumer.as_str()), "{shown}");
        }
        // Not even how many were told.
        assert!(!e.detail.contains("consumer"), "{}", e.detail);
    }
    let summarised = format!("{summary:?}");
    for consumer in &told {
        assert!(!summarised.contains(consumer.as_str()), "{summarised}");
    }

    // The whole log's auditors read who was told: one entry per consumer,
    // attributed to it, under its authorisation and version, with the
    // fields it receives; and so does each consumer's own auditor.
    let queued: Vec<proto::AuditEntry> = t
        .audit_entries()
        .await
        .into_iter()
        .filter(|e| e.operation == QUEUE)
        .collect();
    let mut to: Vec<&str> = queued.iter().map(|e| e.consumer_kbo.as_str()).collect();
    to.sort_unstable();
    assert_eq!(to, told.iter().map(String::as_str).collect::<Vec<_>>());
    let anderlecht = queued
        .iter()
        .find(|e| e.consumer_kbo == kbo(ANDERLECHT))
        .expect("queued for the CPAS");
    assert_eq!(anderlecht.authorisation_reference, "BSC/2024/017");
    assert!(anderlecht.authorisation_version > 0, "{anderlecht:?}");
    assert_eq!(anderlecht.citizen, KARIM);
    assert_eq!(anderlecht.source_kbo, kbo(REGISTER));
    assert_eq!(anderlecht.consumer_reference, "move-audited");
    assert_eq!(
        anderlecht.fields_returned,
        ["house_number", "nis_code", "street"]
    );
    assert!(anderlecht.end_user.is_empty(), "{anderlecht:?}");
    let (own, _) = as_auditor_of(&t, ANDERLECHT).await;
    assert!(
        own.iter()
            .any(|e| e.operation == QUEUE && e.consumer_reference == "move-audited"),
        "the consumer's auditor reads that it was told"
    );
    t.stop().await;
}

/// Finding 4: pulling after a position ahead of what was delivered does
/// not make the changes skipped acknowledgeable; what is acknowledged, and
/// what expires, is recorded.
#[tokio::test]
async fn a_consumer_acknowledges_only_what_it_was_sent_and_drops_are_recorded() {
    let t = TestDemo::start().await;
    for i in 1..=3 {
        publish(&t, vec![a_move(&format!("m{i}"))])
            .await
            .expect("published");
    }
    // A clerk reads only the last change, then acknowledges it: the two
    // before it, never sent, would be dropped unseen.
    let ahead = pull(&t, ANDERLECHT, 2, 0).await.expect("pull ahead");
    let positions: Vec<u64> = ahead.events.iter().map(|e| e.position).collect();
    assert_eq!(positions, [3]);
    let err = acknowledge(&t, ANDERLECHT, 3)
        .await
        .expect_err("positions 1 and 2 were never sent");
    assert_error(&err, Code::OutOfRange, "NOT_DELIVERED");
    let all = pull(&t, ANDERLECHT, 0, 0).await.expect("pull");
    let positions: Vec<u64> = all.events.iter().map(|e| e.position).collect();
    assert_eq!(positions, [1, 2, 3], "nothing was lost");
    let acked = acknowledge(&t, ANDERLECHT, 3).await.expect("all were sent");
    assert_eq!((acked.acknowledged, acked.pending), (3, 0));

    let entries = t.audit_entries().await;
    let acks: Vec<&proto::AuditEntry> = entries
        .iter()
        .filter(|e| e.operation == ACKNOWLEDGE)
        .collect();
    assert_eq!(acks.len(), 2, "{acks:?}");
    assert_eq!(acks[0].decision, proto::AuditDecision::Refused as i32);
    assert_eq!(acks[1].decision, proto::AuditDecision::Allowed as i32);
    assert_eq!(acks[1].consumer_kbo, kbo(ANDERLECHT));
    assert!(
        acks[1].detail.contains("through position 3: 3 dropped"),
        "{}",
        acks[1].detail
    );

    // A change nobody acknowledges outlives the retention period: it is
    // dropped, and the log says which positions the consumer lost.
    publish(&t, vec![a_move("m4")]).await.expect("published");
    t.demo()
        .broker
        .expire_mutations_as_of(time::OffsetDateTime::now_utc() + time::Duration::days(30))
        .await;
    let expired = t
        .audit_entries()
        .await
        .into_iter()
        .find(|e| e.operation == EXPIRE)
        .expect("the expiry is recorded");
    assert_eq!(expired.consumer_kbo, kbo(ANDERLECHT));
    assert!(
        expired.detail.contains("1 change(s) at positions 4 to 4"),
        "{}",
        expired.detail
    );
    let lost = pull(&t, ANDERLECHT, 0, 0)
        .await
        .expect("pull")
        .lost
        .expect("told of the loss");
    assert_eq!((lost.first_position, lost.last_position), (4, 4));
    t.stop().await;
}

/// Finding 9: a pull waiting for changes checks its caller again each
/// round, as a subscription does: a suspension ends it.
#[tokio::test]
async fn a_waiting_pull_ends_when_its_organisation_is_suspended() {
    let t = TestDemo::start().await;
    let mut client = mutations(&t, ANDERLECHT).await;
    let waiting = tokio::spawn(async move {
        client
            .pull_mutations(proto::PullMutationsRequest {
                after: 0,
                max_events: 0,
                wait_seconds: 30,
            })
            .await
    });
    // Suspended once the pull waits (one suspended before it starts is
    // refused at its start, which proves nothing here).
    let broker = t.demo().broker.clone();
    tokio::time::timeout(Duration::from_secs(10), async {
        while broker.waiting_for_changes() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the pull waits for changes");
    suspend(&t, ANDERLECHT).await;
    let ended = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the pull ends well before its 30 seconds")
        .expect("task");
    let err = ended.expect_err("a suspended organisation is sent nothing");
    assert_error(&err, Code::PermissionDenied, "ORGANISATION_SUSPENDED");
    t.stop().await;
}

/// Finding 10 (a): a suspended organisation's lookups are refused, so its
/// queue gets no values either; reinstated, it gets nothing of what it
/// missed.
#[tokio::test]
async fn a_suspended_organisations_queue_gets_nothing() {
    let t = TestDemo::start().await;
    suspend(&t, ANDERLECHT).await;
    publish(&t, vec![a_move("while-suspended")])
        .await
        .expect("published");
    t.registry()
        .await
        .reinstate_organisation(proto::ReinstateOrganisationRequest {
            kbo: kbo(ANDERLECHT),
        })
        .await
        .expect("reinstate");
    let got = pull(&t, ANDERLECHT, 0, 0).await.expect("pull");
    assert!(got.events.is_empty(), "{got:?}");
    assert_eq!(got.last_position, 0, "nothing was queued: {got:?}");
    assert!(
        !t.audit_entries()
            .await
            .iter()
            .any(|e| e.operation == QUEUE && e.consumer_kbo == kbo(ANDERLECHT)),
        "nothing was queued for it"
    );
    // Reinstated, it is told again.
    publish(&t, vec![a_move("after-reinstating")])
        .await
        .expect("published");
    let got = pull(&t, ANDERLECHT, 0, 5).await.expect("pull");
    assert_eq!(got.events.len(), 1, "{got:?}");
    assert_eq!(got.events[0].source_event_id, "after-reinstating");
    t.stop().await;
}

/// Finding 10 (b): a source publishes within a budget of changes; a
/// request beyond it is refused whole, with the time to wait, and the
/// refusal is recorded.
#[tokio::test]
async fn a_source_over_its_budget_of_changes_is_refused_whole() {
    let limits = semel_server::limits::LimitSettings {
        source_publications_per_second: 0.5,
        source_publication_burst: 3.0,
        ..Default::default()
    };
    let t = TestDemo::start_with(limits, Duration::from_millis(400)).await;
    publish(&t, vec![a_move("b1"), a_move("b2")])
        .await
        .expect("within the burst");
    let err = publish(&t, vec![a_move("b3"), a_move("b4")])
        .await
        .expect_err("over the budget");
    assert_error(&err, Code::ResourceExhausted, "PUBLICATION_RATE_LIMITED");
    use tonic_types::StatusExt;
    assert!(
        err.get_error_details()
            .retry_info()
            .and_then(|r| r.retry_delay)
            .is_some_and(|d| d > Duration::ZERO)
    );
    // Nothing of the refused request was stored.
    let got = pull(&t, ANDERLECHT, 0, 0).await.expect("pull");
    let ids: Vec<&str> = got
        .events
        .iter()
        .map(|e| e.source_event_id.as_str())
        .collect();
    assert_eq!(ids, ["b1", "b2"]);
    let refused = t
        .audit_entries()
        .await
        .into_iter()
        .rfind(|e| e.operation == semel_core::mutation::PUBLISH_OPERATION)
        .expect("recorded");
    assert_eq!(refused.decision, proto::AuditDecision::Refused as i32);
    assert_eq!(refused.reason, "PUBLICATION_RATE_LIMITED");
    // One more change fits what is left.
    publish(&t, vec![a_move("b5")]).await.expect("within it");
    t.stop().await;
}
