//! The mapping's cases, on the real contract: routes, JSON both ways, errors.

use super::*;

fn api() -> HttpApi {
    HttpApi::load().expect("the contract's HTTP rules load")
}

#[test]
fn every_consumer_citizen_and_auditor_rpc_has_a_route() {
    let api = api();
    for rule in semel_server::permissions::RULES {
        let theirs = rule.roles.iter().any(|r| {
            matches!(
                r,
                semel_core::UserRole::Consumer
                    | semel_core::UserRole::Citizen
                    | semel_core::UserRole::Auditor
            )
        });
        // An endless stream has no JSON answer: over HTTP/JSON the same
        // queue is read by PullMutations (long polling).
        let endless = rule.method == "semel.v1.MutationService/Subscribe";
        let routed = api.routes.iter().any(|r| r.rule.method == rule.method);
        assert!(
            !theirs || routed || endless,
            "{} has no HTTP rule",
            rule.method
        );
        assert!(
            !(endless && routed),
            "{} cannot be on the HTTP face",
            rule.method
        );
    }
}

#[test]
fn paths_route_to_their_rpc_with_their_fields() {
    let api = api();
    let Routed::Found(r, params) = api.route(&Method::POST, "/v1/files/abc%2Fd:close") else {
        panic!("no route")
    };
    assert_eq!(r.grpc_path, "/semel.v1.PersonsService/CloseFile");
    assert_eq!(params, vec![("file_id".to_owned(), "abc/d".to_owned())]);
    let Routed::Found(r, params) = api.route(&Method::GET, "/v1/authorisations/BSC/2024/017")
    else {
        panic!("no route")
    };
    assert_eq!(r.grpc_path, "/semel.v1.RegistryService/GetAuthorisation");
    assert_eq!(params[0].1, "BSC/2024/017");
    assert!(matches!(
        api.route(&Method::GET, "/v1/lookups"),
        Routed::WrongMethod(_)
    ));
    assert!(matches!(
        api.route(&Method::POST, "/v1/lookups:nothing"),
        Routed::NotFound
    ));
    assert!(matches!(
        api.route(&Method::GET, "/v1/files/:close"),
        Routed::NotFound
    ));
}

#[test]
fn json_becomes_the_rpcs_message_and_bad_json_is_named() {
    let api = api();
    let Routed::Found(r, params) = api.route(&Method::POST, "/v1/lookups") else {
        panic!()
    };
    let body = br#"{"citizen":"93051822361","dataset":"d","fields":["a"],"checks":[{"field":"x","operator":"CHECK_OPERATOR_EQUALS","operand":{"intValue":"3"}}]}"#;
    let frames = api.request(r, params.clone(), None, body).expect("valid");
    let msg = semel_server::proto::LookupRequest::decode(&frames[5..]).expect("decodes");
    assert_eq!(msg.citizen, "93051822361");
    assert_eq!(msg.checks[0].operator, 1);
    for (bad, says) in [
        (&b"{"[..], "not valid JSON"),
        (br#"{"nope":1}"#, "nope"),
        (br#"{"fields":"a"}"#, "invalid type"),
        (br#"{"citizen":93051822361}"#, "invalid type"),
        (br#"[1]"#, "JSON object"),
        (
            br#"{"citizen":"93051822361","citizen":"85073003328"}"#,
            "given twice",
        ),
        (
            br#"{"consumer_reference":"a","consumerReference":"b"}"#,
            "given twice",
        ),
    ] {
        let e = api
            .request(r, params.clone(), None, bad)
            .expect_err("refused");
        let e = e.message();
        assert!(e.contains(says), "{e}");
        assert!(!e.contains("93051822361"), "{e}");
    }
    let Routed::Found(r, params) = api.route(&Method::GET, "/v1/audit/consistencyProof") else {
        panic!()
    };
    let frames = api
        .request(r, params, Some("firstTreeSize=2&second_tree_size=5"), b"")
        .expect("valid");
    let msg =
        semel_server::proto::GetConsistencyProofRequest::decode(&frames[5..]).expect("decodes");
    assert_eq!((msg.first_tree_size, msg.second_tree_size), (2, 5));
}

#[test]
fn errors_are_google_rpc_status_json_with_their_details() {
    let api = api();
    let status = semel_server::error::ApiError::denied("NO_ACTIVE_FILE", "no file")
        .with("request_id", "r-1")
        .into_status();
    let json: Value = serde_json::from_slice(&api.status_json(&status)).expect("json");
    assert_eq!(json["code"], 7);
    assert_eq!(json["message"], "no file");
    assert_eq!(
        json["details"][0]["@type"],
        "type.googleapis.com/google.rpc.ErrorInfo"
    );
    assert_eq!(json["details"][0]["reason"], "NO_ACTIVE_FILE");
    assert_eq!(json["details"][0]["metadata"]["request_id"], "r-1");
    assert_eq!(http_status(status.code(), Some("NO_ACTIVE_FILE")), 403);
}
