//! People and roles: end-user tokens and the permission matrix. None of the
//! forged or misplaced credentials gets through, and every refusal of a known
//! organisation is in the audit log. Certificates revoked and keys rotated are
//! in `identity_keys`, the citizen's view in `citizen_view`.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use semel_client::with_token;
use semel_core::UserRole;
use semel_demo::issuer::{DEV_AUDIENCE, DEV_ISSUER, DevIssuer, TokenRequest, base64_url};
use semel_demo::seed::datasets::*;
use semel_server::proto::{self, lookup_service_client::LookupServiceClient};
use tonic::Code;

use crate::harness::*;

pub(crate) fn karim_residence() -> proto::LookupRequest {
    lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY")
}

/// A token request for a clerk of CPAS Anderlecht with the consumer role.
pub(crate) fn clerk<'a>(expires_in: i64) -> TokenRequest<'a> {
    TokenRequest {
        subject: "clerk-7@cpas-anderlecht",
        organisation: semel_demo::seed::org(ANDERLECHT).expect("org").kbo,
        roles: &[UserRole::Consumer],
        audience: DEV_AUDIENCE,
        expires_in,
        not_before: None,
        bound_to: None,
    }
}

/// A lookup as CPAS Anderlecht (its certificate) with `token`.
pub(crate) async fn lookup_with(t: &TestDemo, token: &str) -> Result<(), tonic::Status> {
    LookupServiceClient::new(t.channel_as(ANDERLECHT, token).await)
        .lookup(karim_residence())
        .await
        .map(drop)
}

/// Signs `claims` as JSON with `key` under `header`.
fn sign(header: &Header, claims: &serde_json::Value, key: &EncodingKey) -> String {
    jsonwebtoken::encode(header, claims, key).expect("sign")
}

fn claims(t: &TestDemo) -> serde_json::Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let _ = t;
    serde_json::json!({
        "iss": DEV_ISSUER,
        "sub": "clerk-7@cpas-anderlecht",
        "aud": DEV_AUDIENCE,
        "org": semel_demo::seed::org(ANDERLECHT).expect("org").kbo.as_str(),
        "roles": ["consumer"],
        "exp": now + 600,
    })
}

fn demo_key(t: &TestDemo) -> EncodingKey {
    EncodingKey::from_ed_pem(&std::fs::read(t.issuer().key_file()).expect("key")).expect("pem")
}

fn demo_header() -> Header {
    let mut h = Header::new(Algorithm::EdDSA);
    h.kid = Some(semel_demo::issuer::DEV_KID.into());
    h
}

#[tokio::test]
async fn a_valid_token_names_the_person_in_the_audit_entry() {
    let t = TestDemo::start().await;
    let token = t.mint(&clerk(600));
    lookup_with(&t, &token).await.expect("allowed");
    // The same token again is served from the verified-token cache.
    lookup_with(&t, &token).await.expect("allowed again");
    let e = t.audit_entries().await.pop().expect("entry");
    assert_eq!(e.end_user, "clerk-7@cpas-anderlecht");
    assert_eq!(e.operation, "semel.v1.LookupService/Lookup");
    t.stop().await;
}

#[tokio::test]
async fn no_token_is_unauthenticated_and_audited() {
    let t = TestDemo::start().await;
    let channel = with_token(t.raw_channel(ANDERLECHT).await, None).expect("channel");
    let err = LookupServiceClient::new(channel)
        .lookup(karim_residence())
        .await
        .expect_err("refused");
    assert_error(&err, Code::Unauthenticated, "TOKEN_MISSING");
    let e = t.audit_entries().await.pop().expect("entry");
    assert_eq!(e.reason, "TOKEN_MISSING");
    assert_eq!(e.end_user, "", "no person is known");
    assert_eq!(e.citizen, KARIM, "the citizen sees the attempt");
    assert_eq!(e.outcome, proto::AuditOutcome::NotForwarded as i32);
    t.stop().await;
}

#[tokio::test]
async fn forged_expired_and_misdirected_tokens_are_refused() {
    let t = TestDemo::start().await;
    let before = t.audit_entries().await.len();
    let other_dir = tempfile::tempdir().expect("tempdir");
    let stranger = DevIssuer::ensure(other_dir.path()).expect("other issuer");
    let stranger_key =
        EncodingKey::from_ed_pem(&std::fs::read(stranger.key_file()).expect("key")).expect("pem");
    let valid = t.mint(&clerk(600));
    let mut cases: Vec<(&str, String, &str)> = Vec::new();

    cases.push(("expired", t.mint(&clerk(-3600)), "TOKEN_EXPIRED"));
    cases.push((
        "not yet valid",
        t.mint(&TokenRequest {
            not_before: Some(3600),
            bound_to: None,
            expires_in: 7200,
            ..clerk(0)
        }),
        "TOKEN_NOT_YET_VALID",
    ));
    cases.push((
        "for another audience",
        t.mint(&TokenRequest {
            audience: "another-broker",
            ..clerk(600)
        }),
        "TOKEN_AUDIENCE",
    ));
    // Another identity provider, unknown to the broker.
    let mut unknown_issuer = stranger.clone();
    unknown_issuer.issuer = "https://idp.elsewhere.invalid".into();
    cases.push((
        "from an unknown issuer",
        unknown_issuer.mint(&clerk(600)).expect("mint"),
        "TOKEN_UNTRUSTED_ISSUER",
    ));
    // The trusted issuer's name, a key it never published, under a kid it
    // does not have, and under its own kid.
    let mut header = demo_header();
    header.kid = Some("rotated-away".into());
    cases.push((
        "with an unknown kid",
        sign(&header, &claims(&t), &stranger_key),
        "TOKEN_SIGNATURE",
    ));
    cases.push((
        "signed with another key under the issuer's kid",
        sign(&demo_header(), &claims(&t), &stranger_key),
        "TOKEN_SIGNATURE",
    ));
    // alg none: a header, a payload, no signature.
    let none = format!(
        "{}.{}.",
        base64_url(br#"{"alg":"none","typ":"JWT"}"#),
        base64_url(claims(&t).to_string().as_bytes())
    );
    cases.push(("signed with alg none", none, "TOKEN_MALFORMED"));
    // HMAC keyed with the issuer's public key (the classic confusion).
    let jwks: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.issuer().jwks_file()).expect("jwks"))
            .expect("json");
    let x = jwks["keys"][0]["x"].as_str().expect("x").to_owned();
    let mut hmac = Header::new(Algorithm::HS256);
    hmac.kid = Some(semel_demo::issuer::DEV_KID.into());
    for secret in [x.as_bytes().to_vec(), jwks.to_string().into_bytes()] {
        cases.push((
            "HMAC-signed with the issuer's public key",
            sign(&hmac, &claims(&t), &EncodingKey::from_secret(&secret)),
            "TOKEN_SIGNATURE",
        ));
    }
    // A valid token whose payload was changed to grant admin.
    let parts: Vec<&str> = valid.split('.').collect();
    let mut tampered_claims = claims(&t);
    tampered_claims["roles"] = serde_json::json!(["consumer", "admin"]);
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        base64_url(tampered_claims.to_string().as_bytes()),
        parts[2]
    );
    cases.push(("with a tampered payload", tampered, "TOKEN_SIGNATURE"));
    for missing in ["sub", "org"] {
        let mut c = claims(&t);
        c.as_object_mut().expect("object").remove(missing);
        cases.push((
            if missing == "sub" {
                "without sub"
            } else {
                "without org"
            },
            sign(&demo_header(), &c, &demo_key(&t)),
            "TOKEN_MALFORMED",
        ));
    }
    cases.push(("not a JWT at all", "hello".into(), "TOKEN_MALFORMED"));

    for (what, token, reason) in &cases {
        let err = lookup_with(&t, token)
            .await
            .expect_err(&format!("a token {what} must be refused"));
        assert_error(&err, Code::Unauthenticated, reason);
        assert!(
            !err.message().contains(&x),
            "the message reveals no key material"
        );
    }
    // Every one of them is in the audit log, as a refused lookup.
    let entries = t.audit_entries().await;
    let refused: Vec<_> = entries.iter().skip(before).collect();
    assert_eq!(refused.len(), cases.len());
    for (e, (_, _, reason)) in refused.iter().zip(&cases) {
        assert_eq!(&e.reason, reason);
        assert_eq!(e.decision, proto::AuditDecision::Refused as i32);
        assert_eq!(e.end_user, "", "an invalid token names no one");
    }
    // The genuine token still works.
    lookup_with(&t, &valid)
        .await
        .expect("the valid token works");
    t.stop().await;
}

#[tokio::test]
async fn a_token_of_one_organisation_on_the_certificate_of_another_is_refused() {
    let t = TestDemo::start().await;
    // A Schaerbeek clerk's genuine token, presented on CPAS Anderlecht's
    // connection.
    let token = t.token(SCHAERBEEK, &[UserRole::Consumer]);
    let err = lookup_with(&t, &token).await.expect_err("refused");
    assert_error(&err, Code::Unauthenticated, "TOKEN_ORGANISATION_MISMATCH");
    let e = t.audit_entries().await.pop().expect("entry");
    assert_eq!(e.reason, "TOKEN_ORGANISATION_MISMATCH");
    assert_eq!(
        e.consumer_kbo,
        semel_demo::seed::org(ANDERLECHT).expect("org").kbo.as_str(),
        "recorded against the certificate's organisation"
    );
    t.stop().await;
}

#[tokio::test]
async fn a_consumer_cannot_call_an_admin_rpc_even_if_its_token_says_admin() {
    let t = TestDemo::start().await;
    let schaerbeek = semel_demo::seed::org(SCHAERBEEK).expect("org").kbo;
    // A clerk's token; then a token in which the commune's identity
    // provider wrote "admin": the CPAS is not the operator, so the role is
    // not granted.
    for (role, reason) in [
        (UserRole::Consumer, "ROLE_NOT_PERMITTED"),
        (UserRole::Admin, "ORGANISATION_ROLE_MISSING"),
    ] {
        let err = proto::registry_service_client::RegistryServiceClient::new(
            t.channel_as(ANDERLECHT, &t.token(ANDERLECHT, &[role]))
                .await,
        )
        .suspend_organisation(proto::SuspendOrganisationRequest {
            kbo: schaerbeek.as_str().into(),
            reason: "mischief".into(),
        })
        .await
        .expect_err("refused");
        assert_error(&err, Code::PermissionDenied, reason);
    }
    let entries = t.audit_entries().await;
    let last: Vec<_> = entries.iter().rev().take(2).collect();
    for e in last {
        assert_eq!(e.operation, "semel.v1.RegistryService/SuspendOrganisation");
        assert_eq!(e.end_user, "demo-user@cpas-anderlecht");
    }
    t.stop().await;
}

/// Every RPC of the contract, called with a token holding exactly one role,
/// by an organisation registered for every role: the broker answers
/// PERMISSION_DENIED / ROLE_NOT_PERMITTED exactly where the matrix has no ✓.
#[tokio::test]
async fn every_rpc_with_every_role_follows_the_permission_matrix() {
    let t = TestDemo::start().await;
    let kbo = "0999999724";
    let files = t.issue("matrix", kbo, "Every role");
    t.registry()
        .await
        .create_organisation(proto::CreateOrganisationRequest {
            organisation: Some(proto::Organisation {
                kbo: kbo.into(),
                name: "Every role".into(),
                roles: vec![
                    proto::OrganisationRole::Source as i32,
                    proto::OrganisationRole::Consumer as i32,
                    proto::OrganisationRole::Operator as i32,
                    proto::OrganisationRole::Auditor as i32,
                    proto::OrganisationRole::CitizenPortal as i32,
                ],
                ..Default::default()
            }),
        })
        .await
        .expect("register");
    let channel = t
        .channel_with(Some((&files.cert, &files.key)), &t.pki().ca_cert())
        .await
        .expect("connect");
    let org = semel_core::Kbo::parse(kbo).expect("kbo");
    let mut checked = 0;
    for role in UserRole::ALL {
        // A citizen's sub is their national number.
        let subject = if role == UserRole::Citizen {
            KARIM
        } else {
            "matrix-tester"
        };
        let token = t.mint(&TokenRequest {
            subject,
            organisation: org,
            roles: &[role],
            audience: DEV_AUDIENCE,
            expires_in: 600,
            not_before: None,
            bound_to: None,
        });
        let authed = with_token(channel.clone(), Some(&token)).expect("token");
        for rule in semel_server::permissions::RULES {
            let mut grpc = tonic::client::Grpc::new(authed.clone());
            grpc.ready().await.expect("ready");
            let path: tonic::codegen::http::uri::PathAndQuery =
                format!("/{}", rule.method).parse().expect("path");
            // An empty message is a valid (default) request of every RPC.
            // A subscription allowed never ends: still open after a while,
            // it was not refused.
            let call = grpc.unary::<(), (), _>(
                tonic::Request::new(()),
                path,
                tonic_prost::ProstCodec::default(),
            );
            let result = match tokio::time::timeout(Duration::from_secs(3), call).await {
                Ok(result) => result,
                Err(_) => Ok(tonic::Response::new(())),
            };
            let allowed = rule.roles.contains(&role);
            let role_refusal = match &result {
                Ok(_) => false,
                Err(s) => {
                    assert_ne!(
                        s.code(),
                        Code::Unauthenticated,
                        "{} as {role}: {s:?}",
                        rule.method
                    );
                    s.code() == Code::PermissionDenied
                        && matches!(
                            error_info(s).0.as_str(),
                            "ROLE_NOT_PERMITTED" | "ORGANISATION_ROLE_MISSING"
                        )
                }
            };
            assert_eq!(
                !role_refusal,
                allowed,
                "{} as {role}: the matrix says {}, the broker answered {result:?}",
                rule.method,
                if allowed { "allowed" } else { "refused" }
            );
            checked += 1;
        }
    }
    assert_eq!(checked, semel_server::permissions::RULES.len() * 5);
    t.stop().await;
}
