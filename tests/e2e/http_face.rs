//! The HTTP/JSON face over real HTTPS with mutual TLS: the same identity,
//! rules and audit as the gRPC face, errors as `google.rpc.Status` JSON
//! under the right HTTP status, and clear 4xx answers for bad input.

use semel_core::UserRole;
use semel_demo::issuer::{DEV_AUDIENCE, TokenRequest};
use serde_json::{Value, json};

use crate::harness::*;

async fn start() -> TestDemo {
    // Every test demo serves the HTTP/JSON face too.
    TestDemo::start().await
}

fn consumer_token(t: &TestDemo, slug: &str) -> String {
    let org = semel_demo::seed::org(slug).expect("demo org");
    t.token(slug, &org.user_roles())
}

/// The reason of an error body (its ErrorInfo) and its request id.
#[track_caller]
fn reason(a: &Answer) -> (String, String) {
    let info = a.body["details"]
        .as_array()
        .and_then(|d| {
            d.iter()
                .find(|d| d["@type"] == "type.googleapis.com/google.rpc.ErrorInfo")
        })
        .unwrap_or_else(|| panic!("no ErrorInfo in {}", String::from_utf8_lossy(&a.raw)));
    assert_eq!(info["domain"], "semel.brussels");
    (
        info["reason"].as_str().unwrap_or_default().to_owned(),
        info["metadata"]["request_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

#[track_caller]
fn assert_refused(a: &Answer, status: u16, why: &str) {
    assert_eq!(a.status, status, "{}", String::from_utf8_lossy(&a.raw));
    let (r, id) = reason(a);
    assert_eq!(r, why, "{}", String::from_utf8_lossy(&a.raw));
    assert!(a.body["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(a.body["code"].as_i64().is_some());
    if !id.is_empty() {
        assert_eq!(a.request_id.as_deref(), Some(id.as_str()));
    }
    for n in [KARIM, JAN] {
        assert!(
            !String::from_utf8_lossy(&a.raw).contains(n),
            "an error leaks a national number: {}",
            String::from_utf8_lossy(&a.raw)
        );
    }
}

fn residence(citizen: &str) -> Vec<u8> {
    json!({
        "citizen": citizen,
        "dataset": "national_register.residence",
        "fields": ["street", "municipality"],
        "purpose": "RIS_ELIGIBILITY",
    })
    .to_string()
    .into_bytes()
}

#[tokio::test]
async fn a_lookup_over_http_answers_and_is_audited_like_one_over_grpc() {
    let t = start().await;
    let token = consumer_token(&t, ANDERLECHT);
    let http = http_call(
        &t,
        Some(ANDERLECHT),
        Some(&token),
        "POST",
        "/v1/lookups",
        Some(&residence(KARIM)),
    )
    .await;
    assert_eq!(http.status, 200, "{}", String::from_utf8_lossy(&http.raw));
    let http_id = http.body["requestId"]
        .as_str()
        .expect("requestId")
        .to_owned();
    assert_eq!(http.request_id.as_deref(), Some(http_id.as_str()));
    assert_eq!(http.body["authorisationReference"], "BSC/2024/017");

    let mut grpc = t.lookup_client(ANDERLECHT).await;
    let answer = grpc
        .lookup(lookup(
            KARIM,
            "national_register.residence",
            &["street", "municipality"],
            "RIS_ELIGIBILITY",
        ))
        .await
        .expect("allowed")
        .into_inner();
    // The same answer, in the canonical JSON mapping.
    let mut expected = serde_json::to_value(json!({
        "authorisationReference": answer.authorisation_reference,
        "sourceKbo": answer.source_kbo,
    }))
    .expect("json");
    expected["fields"] = json!({});
    for (k, v) in &answer.fields {
        let Some(semel_server::proto::value::Kind::StringValue(s)) = &v.kind else {
            panic!("a string field")
        };
        expected["fields"][k] = json!({ "stringValue": s });
    }
    assert_eq!(http.body["fields"], expected["fields"]);
    assert_eq!(http.body["sourceKbo"], expected["sourceKbo"]);

    // The same kind of audit entry, but for the request id.
    let entries = t.audit_entries().await;
    let by_id = |id: &str| {
        entries
            .iter()
            .find(|e| e.request_id == id)
            .unwrap_or_else(|| panic!("no entry for {id}"))
            .clone()
    };
    let over_http = by_id(&http_id);
    let over_grpc = by_id(&answer.request_id);
    let same = |mut e: semel_server::proto::AuditEntry| {
        e.sequence = 0;
        e.request_id.clear();
        e.time = None;
        e.previous_hash.clear();
        e.entry_hash.clear();
        e.encoding.clear();
        e
    };
    assert_eq!(same(over_http.clone()), same(over_grpc));
    assert_eq!(over_http.operation, "semel.v1.LookupService/Lookup");
    assert_eq!(over_http.citizen, KARIM);
    assert_eq!(over_http.end_user, format!("demo-user@{ANDERLECHT}"));

    // A refusal is the same refusal, audited the same way.
    let refused = http_call(
        &t,
        Some(BRUXELLES_CPAS),
        Some(&consumer_token(&t, BRUXELLES_CPAS)),
        "POST",
        "/v1/lookups",
        Some(&residence(KARIM)),
    )
    .await;
    assert_refused(&refused, 403, "NO_ACTIVE_FILE");
    let (_, id) = reason(&refused);
    let entries = t.audit_entries().await;
    let entry = entries
        .iter()
        .find(|e| e.request_id == id)
        .expect("the refusal is audited");
    assert_eq!(entry.reason, "NO_ACTIVE_FILE");
    t.stop().await;
}

#[tokio::test]
async fn every_kind_of_operation_is_reachable_over_http() {
    let t = start().await;
    let auditor = t.token(OPERATOR, &[UserRole::Auditor]);
    let consumer = consumer_token(&t, BRUXELLES_CPAS);

    // Files: register, list (the number in the body, never in the URL), close.
    let file = http_call(
        &t,
        Some(BRUXELLES_CPAS),
        Some(&consumer),
        "POST",
        "/v1/files",
        Some(json!({ "citizen": KARIM, "capacity": "RIS_APPLICANT", "phase": "FILE_PHASE_DEFINITIVE" }).to_string().as_bytes()),
    )
    .await;
    assert_eq!(file.status, 200, "{}", String::from_utf8_lossy(&file.raw));
    let file_id = file.body["file"]["id"]
        .as_str()
        .expect("file id")
        .to_owned();
    assert!(file.request_id.is_some());
    let listed = http_call(
        &t,
        Some(BRUXELLES_CPAS),
        Some(&consumer),
        "POST",
        "/v1/files:search",
        Some(json!({ "citizen": KARIM }).to_string().as_bytes()),
    )
    .await;
    assert_eq!(
        listed.status,
        200,
        "{}",
        String::from_utf8_lossy(&listed.raw)
    );
    assert!(
        listed.body["files"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f["id"] == file_id.as_str()))
    );
    // The lookup the file opens.
    let allowed = http_call(
        &t,
        Some(BRUXELLES_CPAS),
        Some(&consumer),
        "POST",
        "/v1/lookups",
        Some(&residence(KARIM)),
    )
    .await;
    assert_eq!(
        allowed.status,
        200,
        "{}",
        String::from_utf8_lossy(&allowed.raw)
    );
    let closed = http_call(
        &t,
        Some(BRUXELLES_CPAS),
        Some(&consumer),
        "POST",
        &format!("/v1/files/{file_id}:close"),
        Some(json!({ "citizen": KARIM }).to_string().as_bytes()),
    )
    .await;
    assert_eq!(
        closed.status,
        200,
        "{}",
        String::from_utf8_lossy(&closed.raw)
    );

    // Consents, as the citizen on the portal.
    let citizen = t.citizen_token(KARIM);
    let given = http_call(
        &t,
        Some("irisbox"),
        Some(&citizen),
        "POST",
        "/v1/consents",
        Some(
            json!({ "citizen": KARIM, "purpose": "SOCIAL_HOUSING", "consumerKbo": "0212345767" })
                .to_string()
                .as_bytes(),
        ),
    )
    .await;
    assert_eq!(given.status, 200, "{}", String::from_utf8_lossy(&given.raw));
    let consent_id = given.body["consent"]["id"].as_str().expect("id").to_owned();
    let consents = http_call(
        &t,
        Some("irisbox"),
        Some(&citizen),
        "POST",
        "/v1/consents:search",
        Some(json!({ "citizen": KARIM }).to_string().as_bytes()),
    )
    .await;
    assert_eq!(
        consents.status,
        200,
        "{}",
        String::from_utf8_lossy(&consents.raw)
    );
    let withdrawn = http_call(
        &t,
        Some("irisbox"),
        Some(&citizen),
        "POST",
        &format!("/v1/consents/{consent_id}:withdraw"),
        Some(json!({ "citizen": KARIM }).to_string().as_bytes()),
    )
    .await;
    assert_eq!(
        withdrawn.status,
        200,
        "{}",
        String::from_utf8_lossy(&withdrawn.raw)
    );
    assert!(withdrawn.body["consent"]["withdrawnAt"].is_string());

    // The citizen's view.
    let accesses = http_call(
        &t,
        Some("irisbox"),
        Some(&citizen),
        "POST",
        "/v1/citizenAccesses:search",
        Some(json!({ "citizen": KARIM }).to_string().as_bytes()),
    )
    .await;
    assert_eq!(
        accesses.status,
        200,
        "{}",
        String::from_utf8_lossy(&accesses.raw)
    );
    assert!(
        accesses.body["accesses"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    );

    // Batch lookups: an array in, an array out.
    let batch = http_call(
        &t,
        Some(ANDERLECHT),
        Some(&consumer_token(&t, ANDERLECHT)),
        "POST",
        "/v1/lookups:batch",
        Some(
            json!([
                { "item": serde_json::from_slice::<Value>(&residence(KARIM)).expect("json") },
                { "item": serde_json::from_slice::<Value>(&residence("00000000000")).expect("json") },
            ])
            .to_string()
            .as_bytes(),
        ),
    )
    .await;
    assert_eq!(batch.status, 200, "{}", String::from_utf8_lossy(&batch.raw));
    let items = batch.body.as_array().expect("an array");
    assert_eq!(items.len(), 2);
    assert!(items.iter().any(|i| i["response"].is_object()));
    assert!(items.iter().any(|i| i["error"]["reason"].is_string()));

    // The auditor's reads: the entries, the head, checkpoints and proofs.
    let entries = http_call(
        &t,
        Some(OPERATOR),
        Some(&auditor),
        "POST",
        "/v1/auditEntries:search",
        Some(
            json!({ "citizen": KARIM, "pageSize": 5 })
                .to_string()
                .as_bytes(),
        ),
    )
    .await;
    assert_eq!(
        entries.status,
        200,
        "{}",
        String::from_utf8_lossy(&entries.raw)
    );
    let sequence = entries.body["entries"][0]["sequence"]
        .as_str()
        .expect("64-bit integers are strings")
        .to_owned();
    let head = http_call(
        &t,
        Some(OPERATOR),
        Some(&auditor),
        "GET",
        "/v1/audit/head",
        None,
    )
    .await;
    assert_eq!(head.status, 200, "{}", String::from_utf8_lossy(&head.raw));
    let size = head.body["size"].as_str().expect("size").to_owned();
    let proof = http_call(
        &t,
        Some(OPERATOR),
        Some(&auditor),
        "GET",
        &format!("/v1/auditEntries/{sequence}/inclusionProof?treeSize={size}"),
        None,
    )
    .await;
    assert_eq!(proof.status, 200, "{}", String::from_utf8_lossy(&proof.raw));
    let consistency = http_call(
        &t,
        Some(OPERATOR),
        Some(&auditor),
        "GET",
        &format!("/v1/audit/consistencyProof?firstTreeSize=1&secondTreeSize={size}"),
        None,
    )
    .await;
    assert_eq!(
        consistency.status,
        200,
        "{}",
        String::from_utf8_lossy(&consistency.raw)
    );
    let checkpoint = http_call(
        &t,
        Some(OPERATOR),
        Some(&auditor),
        "GET",
        "/v1/audit/checkpoints/latest",
        None,
    )
    .await;
    // No checkpoint may be signed yet in a short test: a clear answer either way.
    assert!(
        checkpoint.status == 200 || checkpoint.status == 400,
        "{}",
        String::from_utf8_lossy(&checkpoint.raw)
    );

    // Registry reads, with a path field holding slashes.
    let authorisation = http_call(
        &t,
        Some(ANDERLECHT),
        Some(&consumer_token(&t, ANDERLECHT)),
        "GET",
        "/v1/authorisations/BSC/2024/017",
        None,
    )
    .await;
    assert_eq!(
        authorisation.status,
        200,
        "{}",
        String::from_utf8_lossy(&authorisation.raw)
    );
    assert_eq!(
        authorisation.body["authorisation"]["reference"],
        "BSC/2024/017"
    );

    // The OpenAPI document, served.
    let doc = http_call(&t, Some(ANDERLECHT), None, "GET", "/openapi.json", None).await;
    assert_eq!(doc.status, 200);
    assert_eq!(doc.body["openapi"], "3.1.0");
    t.stop().await;
}

#[tokio::test]
async fn bad_requests_get_clear_4xx_answers_never_500() {
    let t = start().await;
    let token = consumer_token(&t, ANDERLECHT);
    let post = |body: Vec<u8>| {
        let token = token.clone();
        let t = &t;
        async move {
            http_call(
                t,
                Some(ANDERLECHT),
                Some(&token),
                "POST",
                "/v1/lookups",
                Some(&body),
            )
            .await
        }
    };
    assert_refused(
        &post(b"{\"citizen\":".to_vec()).await,
        400,
        "MALFORMED_JSON",
    );
    let unknown = post(br#"{"citizen":"93051822361","colour":"blue"}"#.to_vec()).await;
    assert_refused(&unknown, 400, "MALFORMED_JSON");
    assert!(
        unknown.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("colour"))
    );
    assert_refused(
        &post(br#"{"fields":"street"}"#.to_vec()).await,
        400,
        "MALFORMED_JSON",
    );
    assert_refused(
        &post(br#"{"citizen":93051822361}"#.to_vec()).await,
        400,
        "MALFORMED_JSON",
    );
    let mut big = b"{\"consumerReference\":\"".to_vec();
    big.extend(std::iter::repeat_n(b'x', 300 * 1024));
    big.extend(b"\"}");
    assert_refused(&post(big).await, 413, "REQUEST_TOO_LARGE");
    assert_refused(
        &post(residence("93051822362")).await,
        400,
        "INVALID_CITIZEN",
    );
    let mut unknown_dataset: Value = serde_json::from_slice(&residence(KARIM)).expect("json");
    unknown_dataset["dataset"] = json!("national_register.nothing");
    assert_refused(
        &post(unknown_dataset.to_string().into_bytes()).await,
        404,
        "UNKNOWN_DATASET",
    );

    // Identity: no certificate, no token, an expired token.
    let no_cert = http_call(
        &t,
        None,
        Some(&token),
        "POST",
        "/v1/lookups",
        Some(&residence(KARIM)),
    )
    .await;
    assert_refused(&no_cert, 401, "CLIENT_CERTIFICATE_REQUIRED");
    let no_cert_doc = http_call(&t, None, None, "GET", "/openapi.json", None).await;
    assert_refused(&no_cert_doc, 401, "CLIENT_CERTIFICATE_REQUIRED");
    // The document and the answers that call no RPC need an organisation
    // in good standing too, not just a certificate.
    let kbo = semel_demo::seed::org(ANDERLECHT)
        .expect("org")
        .kbo
        .as_str()
        .to_owned();
    let mut reg = t.registry().await;
    reg.suspend_organisation(semel_server::proto::SuspendOrganisationRequest {
        kbo: kbo.clone(),
        reason: "security incident".into(),
    })
    .await
    .expect("suspend");
    let suspended = http_call(&t, Some(ANDERLECHT), None, "GET", "/openapi.json", None).await;
    assert_refused(&suspended, 403, "ORGANISATION_SUSPENDED");
    let suspended = http_call(&t, Some(ANDERLECHT), None, "GET", "/v1/nowhere", None).await;
    assert_refused(&suspended, 403, "ORGANISATION_SUSPENDED");
    reg.reinstate_organisation(semel_server::proto::ReinstateOrganisationRequest { kbo })
        .await
        .expect("reinstate");
    let no_token = http_call(
        &t,
        Some(ANDERLECHT),
        None,
        "POST",
        "/v1/lookups",
        Some(&residence(KARIM)),
    )
    .await;
    assert_eq!(
        no_token.status,
        401,
        "{}",
        String::from_utf8_lossy(&no_token.raw)
    );
    let org = semel_demo::seed::org(ANDERLECHT).expect("org");
    let expired = t.mint(&TokenRequest {
        subject: "demo-user@cpas-anderlecht",
        organisation: org.kbo,
        roles: &[UserRole::Consumer],
        audience: DEV_AUDIENCE,
        expires_in: -3600,
        not_before: None,
        bound_to: None,
    });
    let expired = http_call(
        &t,
        Some(ANDERLECHT),
        Some(&expired),
        "POST",
        "/v1/lookups",
        Some(&residence(KARIM)),
    )
    .await;
    assert_eq!(
        expired.status,
        401,
        "{}",
        String::from_utf8_lossy(&expired.raw)
    );
    // The permission matrix, unchanged: a consumer reads no audit log.
    let clerk = t.token(ANDERLECHT, &[UserRole::Consumer]);
    let denied = http_call(
        &t,
        Some(ANDERLECHT),
        Some(&clerk),
        "GET",
        "/v1/audit/head",
        None,
    )
    .await;
    assert_refused(&denied, 403, "ROLE_NOT_PERMITTED");

    // Routes: unknown, wrong method, wrong media type, query where none goes.
    let none = http_call(
        &t,
        Some(ANDERLECHT),
        Some(&token),
        "GET",
        "/v1/nothing",
        None,
    )
    .await;
    assert_refused(&none, 404, "NO_SUCH_ROUTE");
    let wrong = http_call(
        &t,
        Some(ANDERLECHT),
        Some(&token),
        "GET",
        "/v1/lookups",
        None,
    )
    .await;
    assert_refused(&wrong, 405, "METHOD_NOT_ALLOWED");
    let query = http_call(
        &t,
        Some(OPERATOR),
        Some(&t.token(OPERATOR, &[UserRole::Auditor])),
        "GET",
        "/v1/audit/consistencyProof?colour=blue",
        None,
    )
    .await;
    assert_refused(&query, 400, "MALFORMED_JSON");
    t.stop().await;
}

#[tokio::test]
async fn a_connection_stays_usable_after_a_refused_request_with_a_body() {
    let t = start().await;
    let token = consumer_token(&t, ANDERLECHT);
    let mut conn = http_connect(&t, Some(ANDERLECHT)).await;
    // Refusals before any RPC (no such path, no such method) read the body
    // and keep the connection: a client's pool reuses it.
    let body = residence(KARIM);
    for (method, path, status) in [
        ("PUT", "/v1/lookups", 405),
        ("POST", "/v1/nothing", 404),
        ("POST", "/v1/lookups", 200),
        ("QUERY", "/v1/lookups", 405),
        ("POST", "/v1/lookups", 200),
    ] {
        let a = http_send(&mut conn, Some(&token), method, path, Some(&body), &[]).await;
        assert_eq!(
            a.status,
            status,
            "{method} {path}: {}",
            String::from_utf8_lossy(&a.raw)
        );
    }
    t.stop().await;
}

#[tokio::test]
async fn a_batch_too_large_is_refused_whole_before_any_item_is_looked_up() {
    let t = start().await;
    let token = consumer_token(&t, ANDERLECHT);
    let batch = |items: Vec<Value>| {
        let token = token.clone();
        let t = &t;
        async move {
            http_call(
                t,
                Some(ANDERLECHT),
                Some(&token),
                "POST",
                "/v1/lookups:batch",
                Some(Value::Array(items).to_string().as_bytes()),
            )
            .await
        }
    };
    let good =
        || json!({ "item": serde_json::from_slice::<Value>(&residence(KARIM)).expect("json") });
    let before = t.audit_entries().await.len();
    // One item larger than the gRPC face takes, after two good ones: the
    // whole batch is refused, and neither good item is looked up (nor
    // audited as answered with its answer never sent).
    let mut oversized = good();
    oversized["item"]["consumerReference"] = json!("x".repeat(70_000));
    let refused = batch(vec![good(), good(), oversized]).await;
    assert_refused(&refused, 413, "REQUEST_TOO_LARGE");
    assert!(
        refused.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("item 2")),
        "{}",
        String::from_utf8_lossy(&refused.raw)
    );
    // More items than a batch over HTTP/JSON takes.
    let many = batch(vec![json!({}); 1001]).await;
    assert_refused(&many, 413, "REQUEST_TOO_LARGE");
    let entries = t.audit_entries().await;
    assert!(
        entries[before..]
            .iter()
            .all(|e| e.decision != semel_server::proto::AuditDecision::Allowed as i32),
        "no item of a refused batch was looked up"
    );
    // The largest batch taken is answered.
    let most = batch(vec![good(); 3]).await;
    assert_eq!(most.status, 200, "{}", String::from_utf8_lossy(&most.raw));
    t.stop().await;
}
