//! Mutations end to end: a source publishes a change; the consumers holding
//! a file on the citizen, and authorised for the data, are told (only the
//! fields they may read); nobody else is; every publication and delivery is
//! in the audit log; bad input is refused with its reason.

use std::collections::HashMap;
use std::time::Duration;

use semel_client::AuthChannel;
use semel_demo::seed::datasets::*;
use semel_server::proto::{self, mutation_service_client::MutationServiceClient};
use tonic::Code;

use crate::harness::*;

const REGISTER: &str = "national-register";

async fn mutations(t: &TestDemo, slug: &str) -> MutationServiceClient<AuthChannel> {
    MutationServiceClient::new(t.channel(slug).await)
}

fn text(s: &str) -> proto::Value {
    proto::Value {
        kind: Some(proto::value::Kind::StringValue(s.into())),
    }
}

/// Karim moves, within Anderlecht.
fn a_move(id: &str, citizen: &str) -> proto::Mutation {
    proto::Mutation {
        source_event_id: id.into(),
        dataset: RESIDENCE.into(),
        citizen: citizen.into(),
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

async fn pull(t: &TestDemo, slug: &str, after: u64, wait: i32) -> proto::PullMutationsResponse {
    mutations(t, slug)
        .await
        .pull_mutations(proto::PullMutationsRequest {
            after,
            max_events: 0,
            wait_seconds: wait,
        })
        .await
        .expect("pull")
        .into_inner()
}

#[tokio::test]
async fn a_move_is_told_to_the_cpas_holding_a_file_and_to_nobody_else() {
    let t = TestDemo::start().await;
    // CPAS d'Anderlecht subscribes before the move (it holds a file on
    // Karim); the commune of Schaerbeek, authorised for residence changes
    // of its pupils, holds none.
    let mut stream = mutations(&t, ANDERLECHT)
        .await
        .subscribe(proto::SubscribeRequest { after: 0 })
        .await
        .expect("subscribe")
        .into_inner();
    let published = publish(&t, vec![a_move("move-1", KARIM)])
        .await
        .expect("published");
    assert_eq!(published.len(), 1);
    assert!(!published[0].duplicate);
    let item = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("told within seconds")
        .expect("stream")
        .expect("an item");
    let Some(proto::subscribe_response::Item::Event(e)) = item.item else {
        panic!("an event, got {item:?}");
    };
    assert_eq!(e.position, 1);
    assert_eq!(e.citizen, KARIM);
    assert_eq!(e.dataset, RESIDENCE);
    assert_eq!(e.kind, proto::MutationKind::Changed as i32);
    assert_eq!(e.authorisation_reference, "BSC/2024/017");
    let mut fields: Vec<&str> = e.fields.keys().map(String::as_str).collect();
    fields.sort();
    assert_eq!(fields, ["house_number", "nis_code", "street"]);
    assert_eq!(e.fields["street"], text("Rue Wayez"));

    // The commune is not told.
    let nothing = pull(&t, SCHAERBEEK, 0, 1).await;
    assert!(nothing.events.is_empty(), "{nothing:?}");

    // Published again (a source's retry): stored once, told once.
    let again = publish(&t, vec![a_move("move-1", KARIM)])
        .await
        .expect("published again");
    assert!(again[0].duplicate);
    let acked = mutations(&t, ANDERLECHT)
        .await
        .acknowledge_mutations(proto::AcknowledgeMutationsRequest { position: 1 })
        .await
        .expect("ack")
        .into_inner();
    assert_eq!((acked.acknowledged, acked.pending), (1, 0));
    assert!(pull(&t, ANDERLECHT, 0, 0).await.events.is_empty());

    // The log holds the publication and the delivery, and the citizen sees
    // that the CPAS was told.
    let entries = t.audit_entries().await;
    let published: Vec<_> = entries
        .iter()
        .filter(|e| e.operation == "semel.v1.MutationService/PublishMutations")
        .collect();
    assert_eq!(published.len(), 2, "each publication is recorded");
    assert_eq!(published[0].citizen, KARIM);
    // The source's entry says it was accepted; who was told is in an
    // entry of the consumer's own.
    assert!(
        published[0].detail.ends_with("accepted"),
        "{}",
        published[0].detail
    );
    let queued: Vec<_> = entries
        .iter()
        .filter(|e| e.operation == semel_core::mutation::QUEUE_OPERATION)
        .collect();
    assert_eq!(queued.len(), 1);
    assert_eq!(
        (
            queued[0].consumer_kbo.as_str(),
            queued[0].authorisation_reference.as_str()
        ),
        ("0212345668", "BSC/2024/017")
    );
    assert!(
        published[1].detail.contains("published again"),
        "{}",
        published[1].detail
    );
    assert_eq!(
        published[0].fields_requested,
        ["house_number", "nis_code", "street"]
    );
    let delivered: Vec<_> = entries
        .iter()
        .filter(|e| e.operation == "semel.v1.MutationService/Subscribe")
        .collect();
    assert_eq!(delivered.len(), 1);
    let d = delivered[0];
    assert_eq!(d.citizen, KARIM);
    assert_eq!(d.authorisation_reference, "BSC/2024/017");
    assert_eq!(d.fields_returned, ["house_number", "nis_code", "street"]);
    assert_eq!(d.decision, proto::AuditDecision::Allowed as i32);
    let accesses =
        proto::audit_service_client::AuditServiceClient::new(t.citizen_channel(KARIM).await)
            .list_citizen_accesses(proto::ListCitizenAccessesRequest {
                citizen: KARIM.into(),
                page_size: 50,
                ..Default::default()
            })
            .await
            .expect("accesses")
            .into_inner()
            .accesses;
    assert!(
        accesses
            .iter()
            .any(|a| a.action == "told of a change" && a.consumer_name == "CPAS d'Anderlecht"),
        "{accesses:?}"
    );
    t.stop().await;
}

#[tokio::test]
async fn a_consumer_that_may_only_test_learns_the_change_and_no_value() {
    let t = TestDemo::start().await;
    // Schaerbeek may only ask whether a pupil lives in Schaerbeek (a named
    // question on nis_code); it opens a pupil's file on Jan.
    t.open_file(SCHAERBEEK, JAN, "PUPIL").await;
    publish(&t, vec![a_move("move-jan", JAN)])
        .await
        .expect("published");
    let got = pull(&t, SCHAERBEEK, 0, 5).await;
    assert_eq!(got.events.len(), 1, "{got:?}");
    let e = &got.events[0];
    assert!(e.fields.is_empty(), "no value: {e:?}");
    assert_eq!(e.checked_fields, ["nis_code"]);
    assert_eq!(e.authorisation_reference, "BSC/2023/044");
    t.stop().await;
}

#[tokio::test]
async fn a_suspended_authorisation_or_a_closed_file_gets_nothing() {
    let t = TestDemo::start().await;
    t.registry()
        .await
        .suspend_authorisation(proto::SuspendAuthorisationRequest {
            reference: "BSC/2024/017".into(),
            reason: "review".into(),
        })
        .await
        .expect("suspend");
    publish(&t, vec![a_move("while-suspended", KARIM)])
        .await
        .expect("published");
    assert!(pull(&t, ANDERLECHT, 0, 0).await.events.is_empty());
    let routed = t
        .audit_entries()
        .await
        .into_iter()
        .rfind(|e| e.operation == "semel.v1.MutationService/PublishMutations")
        .expect("the publication is recorded");
    assert_eq!(routed.consumer_reference, "while-suspended");
    assert!(
        !t.audit_entries()
            .await
            .iter()
            .any(|e| e.operation == semel_core::mutation::QUEUE_OPERATION),
        "queued for nobody"
    );
    t.registry()
        .await
        .reinstate_authorisation(proto::ReinstateAuthorisationRequest {
            reference: "BSC/2024/017".into(),
        })
        .await
        .expect("reinstate");
    // Routed while allowed, suspended before delivery: not sent, and the
    // refusal is recorded.
    publish(&t, vec![a_move("then-suspended", KARIM)])
        .await
        .expect("published");
    t.registry()
        .await
        .suspend_authorisation(proto::SuspendAuthorisationRequest {
            reference: "BSC/2024/017".into(),
            reason: "review".into(),
        })
        .await
        .expect("suspend");
    let withheld = pull(&t, ANDERLECHT, 0, 0).await;
    assert!(withheld.events.is_empty());
    // The position it read past is given, to acknowledge.
    assert!(withheld.last_position >= 1, "{withheld:?}");
    let refused = t
        .audit_entries()
        .await
        .into_iter()
        .filter(|e| e.operation == "semel.v1.MutationService/PullMutations")
        .find(|e| e.decision == proto::AuditDecision::Refused as i32)
        .expect("the withheld delivery is recorded");
    assert_eq!(refused.reason, "AUTHORISATION_SUSPENDED");
    assert!(refused.fields_returned.is_empty());
    // It was dropped: reinstated, the consumer is not sent it later.
    t.registry()
        .await
        .reinstate_authorisation(proto::ReinstateAuthorisationRequest {
            reference: "BSC/2024/017".into(),
        })
        .await
        .expect("reinstate");
    assert!(pull(&t, ANDERLECHT, 0, 0).await.events.is_empty());

    // A file closed before the change takes effect: nothing. CPAS de
    // Bruxelles opens a file on Jan and closes it the same day.
    let file = t.open_file(BRUXELLES_CPAS, JAN, "RIS_APPLICANT").await;
    t.persons_client(BRUXELLES_CPAS)
        .await
        .close_file(proto::CloseFileRequest {
            citizen: JAN.into(),
            file_id: file.id.clone(),
            end_date: time::OffsetDateTime::now_utc().date().to_string(),
        })
        .await
        .expect("close");
    publish(&t, vec![a_move("after-closing", JAN)])
        .await
        .expect("published");
    assert!(pull(&t, BRUXELLES_CPAS, 0, 0).await.events.is_empty());
    t.stop().await;
}

#[tokio::test]
async fn delivery_resumes_after_a_disconnect_in_order_without_loss() {
    let t = TestDemo::start().await;
    for i in 1..=3 {
        publish(&t, vec![a_move(&format!("m{i}"), KARIM)])
            .await
            .expect("published");
    }
    let mut client = mutations(&t, ANDERLECHT).await;
    let mut stream = client
        .subscribe(proto::SubscribeRequest { after: 0 })
        .await
        .expect("subscribe")
        .into_inner();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let item = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("in time")
            .expect("stream")
            .expect("item");
        if let Some(proto::subscribe_response::Item::Event(e)) = item.item {
            seen.push((e.position, e.source_event_id));
        }
    }
    assert_eq!(seen, [(1, "m1".to_owned()), (2, "m2".to_owned())]);
    client
        .acknowledge_mutations(proto::AcknowledgeMutationsRequest { position: 1 })
        .await
        .expect("ack 1");
    // The consumer goes away without acknowledging 2 (and maybe having
    // been sent 3): it gets 2 and 3 again, in order, when it returns.
    drop(stream);
    let again = pull(&t, ANDERLECHT, 0, 5).await;
    let positions: Vec<u64> = again.events.iter().map(|e| e.position).collect();
    assert_eq!(positions, [2, 3]);
    assert_eq!(again.acknowledged, 1);
    t.stop().await;
}

#[tokio::test]
async fn bad_publications_and_acknowledgements_are_refused_with_their_reason() {
    let t = TestDemo::start().await;
    let before = t.audit_size().await;
    let mut m = a_move("bad", "93051822362");
    let err = publish(&t, vec![m.clone()]).await.expect_err("bad number");
    assert_error(&err, Code::InvalidArgument, "INVALID_CITIZEN");
    assert!(!err.message().contains("93051822362"), "{}", err.message());

    m.citizen = KARIM.into();
    m.fields.insert("shoe_size".into(), text("44"));
    let err = publish(&t, vec![m.clone()])
        .await
        .expect_err("unknown field");
    assert_error(&err, Code::InvalidArgument, "UNKNOWN_FIELD");

    m.fields.remove("shoe_size");
    m.dataset = "national_register.nothing".into();
    let err = publish(&t, vec![m.clone()])
        .await
        .expect_err("unknown dataset");
    assert_error(&err, Code::NotFound, "UNKNOWN_DATASET");

    // Another source's dataset.
    m.dataset = RESIDENCE.into();
    let err = mutations(&t, "spf-finances")
        .await
        .publish_mutations(proto::PublishMutationsRequest {
            mutations: vec![m.clone()],
        })
        .await
        .expect_err("not its dataset");
    assert_error(&err, Code::PermissionDenied, "NOT_DATASET_SOURCE");

    // A consumer cannot publish at all.
    let err = mutations(&t, ANDERLECHT)
        .await
        .publish_mutations(proto::PublishMutationsRequest {
            mutations: vec![m.clone()],
        })
        .await
        .expect_err("a consumer");
    assert_eq!(err.code(), Code::PermissionDenied);

    m.effective_date = "2026-02-30".into();
    let err = publish(&t, vec![m.clone()]).await.expect_err("bad date");
    assert_error(&err, Code::InvalidArgument, "INVALID_DATE");

    let err = publish(&t, vec![]).await.expect_err("nothing");
    assert_error(&err, Code::InvalidArgument, "INVALID_ARGUMENT");

    // One bad change refuses the whole publication: the good one before
    // it is not stored.
    let mut bad = a_move("second", KARIM);
    bad.kind = proto::MutationKind::Unspecified as i32;
    let err = publish(&t, vec![a_move("first", KARIM), bad])
        .await
        .expect_err("a bad change");
    assert_error(&err, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert!(err.message().contains("mutations[1]"), "{}", err.message());
    assert!(pull(&t, ANDERLECHT, 0, 0).await.events.is_empty());

    // Every refusal is recorded.
    assert!(t.audit_size().await >= before + 8);

    // An id used again for another change is refused, not taken for a
    // duplicate (the change would be lost).
    publish(&t, vec![a_move("once", KARIM)])
        .await
        .expect("published");
    let mut other = a_move("once", KARIM);
    other.fields.insert("street".into(), text("Rue Wayez 14"));
    let err = publish(&t, vec![other]).await.expect_err("the id is taken");
    assert_error(&err, Code::AlreadyExists, "EVENT_ID_REUSED");
    let same = publish(&t, vec![a_move("once", KARIM)])
        .await
        .expect("the same change again");
    assert!(same[0].duplicate);

    let err = mutations(&t, ANDERLECHT)
        .await
        .acknowledge_mutations(proto::AcknowledgeMutationsRequest { position: 50 })
        .await
        .expect_err("nothing delivered");
    assert_error(&err, Code::OutOfRange, "NOT_DELIVERED");
    t.stop().await;
}

#[tokio::test]
async fn publishing_and_pulling_over_http_json() {
    let t = TestDemo::start().await;
    let register_token = t.token(REGISTER, &[semel_core::UserRole::Source]);
    let body = serde_json::json!({"mutations": [{
        "sourceEventId": "http-1",
        "dataset": RESIDENCE,
        "citizen": KARIM,
        "kind": "MUTATION_KIND_CHANGED",
        "fields": {"street": {"stringValue": "Chaussée de Mons"}},
    }]});
    let a = http_call(
        &t,
        Some(REGISTER),
        Some(&register_token),
        "POST",
        "/v1/mutations:publish",
        Some(body.to_string().as_bytes()),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        a.body["results"][0].get("consumers").is_none(),
        "{}",
        a.body
    );
    let cpas_token = t.token(ANDERLECHT, &[semel_core::UserRole::Consumer]);
    let a = http_call(
        &t,
        Some(ANDERLECHT),
        Some(&cpas_token),
        "POST",
        "/v1/mutations:pull",
        Some(br#"{"waitSeconds": 5}"#),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let event = &a.body["events"][0];
    assert_eq!(event["fields"]["street"]["stringValue"], "Chaussée de Mons");
    assert_eq!(event["position"], "1", "uint64 is a string in proto3 JSON");
    let a = http_call(
        &t,
        Some(ANDERLECHT),
        Some(&cpas_token),
        "POST",
        "/v1/mutations:acknowledge",
        Some(br#"{"position": "1"}"#),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["acknowledged"], "1");
    t.stop().await;
}
