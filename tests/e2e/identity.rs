//! People and roles: end-user tokens, the permission matrix, certificate
//! revocation, reloading keys, and the adversarial cases. None of the forged
//! or misplaced credentials gets through, and every refusal of a known
//! organisation is in the audit log.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use semel_client::with_token;
use semel_core::UserRole;
use semel_demo::issuer::{DEV_AUDIENCE, DEV_ISSUER, DevIssuer, TokenRequest, base64_url};
use semel_demo::seed::datasets::*;
use semel_server::proto::{self, lookup_service_client::LookupServiceClient};
use tonic::Code;

use crate::harness::*;

fn karim_residence() -> proto::LookupRequest {
    lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY")
}

/// A token request for a clerk of CPAS Anderlecht with the consumer role.
fn clerk<'a>(expires_in: i64) -> TokenRequest<'a> {
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
async fn lookup_with(t: &TestDemo, token: &str) -> Result<(), tonic::Status> {
    LookupServiceClient::new(t.channel_as(ANDERLECHT, token).await)
        .lookup(karim_residence())
        .await
        .map(drop)
}

/// The citizen's view of `citizen`, as the caller of `channel`.
async fn accesses(
    channel: semel_client::AuthChannel,
    citizen: &str,
) -> Result<Vec<proto::CitizenAccess>, tonic::Status> {
    proto::audit_service_client::AuditServiceClient::new(channel)
        .list_citizen_accesses(proto::ListCitizenAccessesRequest {
            citizen: citizen.into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().accesses)
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

#[tokio::test]
async fn a_citizen_sees_who_consulted_them_and_no_one_else() {
    let t = TestDemo::start().await;
    // Two lookups about Karim, one about Jan.
    let mut c = t.lookup_client(ANDERLECHT).await;
    c.lookup(karim_residence()).await.expect("allowed");
    c.lookup(lookup(KARIM, RESIDENCE, &["street"], "SCHOOL_ENROLMENT"))
        .await
        .expect_err("refused");
    c.lookup(lookup(JAN, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
        .await
        .expect("allowed");
    let karim = t.citizen_token(KARIM);
    let mut audit =
        proto::audit_service_client::AuditServiceClient::new(t.channel_as("irisbox", &karim).await);
    let mine = audit
        .list_citizen_accesses(proto::ListCitizenAccessesRequest {
            citizen: KARIM.into(),
            ..Default::default()
        })
        .await
        .expect("own report")
        .into_inner()
        .accesses;
    assert_eq!(mine.len(), 2, "{mine:?}");
    let allowed = &mine[1];
    assert_eq!(allowed.consumer_name, "CPAS d'Anderlecht");
    assert_eq!(allowed.source_name, "SPF Intérieur – Registre national");
    assert_eq!(allowed.dataset, RESIDENCE);
    assert_eq!(allowed.fields, vec!["street".to_owned()]);
    assert_eq!(allowed.purpose, "RIS_ELIGIBILITY");
    assert_eq!(mine[0].decision, proto::AuditDecision::Refused as i32);
    // Karim asks about Jan: refused, and recorded.
    let err = audit
        .list_citizen_accesses(proto::ListCitizenAccessesRequest {
            citizen: JAN.into(),
            ..Default::default()
        })
        .await
        .expect_err("another citizen");
    assert_error(&err, Code::PermissionDenied, "CITIZEN_MISMATCH");
    let e = t.all_audit_entries().await.pop().expect("entry");
    assert_eq!(e.reason, "CITIZEN_MISMATCH");
    assert_eq!(e.operation, "semel.v1.AuditService/ListCitizenAccesses");
    // A citizen token must name a national number; a portal's citizen
    // cannot make lookups.
    let err = LookupServiceClient::new(t.channel_as("irisbox", &karim).await)
        .lookup(karim_residence())
        .await
        .expect_err("a citizen makes no lookups");
    assert_error(&err, Code::PermissionDenied, "ROLE_NOT_PERMITTED");
    // The supervisory commission's auditor reads anyone's report.
    let jan = accesses(t.channel("control-commission").await, JAN)
        .await
        .expect("auditor");
    assert_eq!(jan.len(), 1);
    t.stop().await;
}

#[tokio::test]
async fn a_revoked_certificate_is_refused_from_its_next_call_on() {
    let t = TestDemo::start().await;
    let mut c = t.lookup_client(ANDERLECHT).await;
    c.lookup(karim_residence()).await.expect("allowed");
    let files = t.demo().client(ANDERLECHT).expect("files");
    let ids = semel_server::tls::certificate_ids(&files.cert).expect("certificate ids");
    let (fingerprint, serial) = (ids.fingerprint, ids.serial);
    let mut reg = t.registry().await;
    let revoked = reg
        .revoke_certificate(proto::RevokeCertificateRequest {
            sha256_fingerprint: fingerprint.to_uppercase(),
            reason: "laptop stolen".into(),
            ..Default::default()
        })
        .await
        .expect("revoke")
        .into_inner()
        .revoked
        .expect("record");
    assert_eq!(revoked.sha256_fingerprint, fingerprint);
    // The open connection is refused on its next call.
    let err = c.lookup(karim_residence()).await.expect_err("revoked");
    assert_error(&err, Code::Unauthenticated, "CERTIFICATE_REVOKED");
    let e = t.audit_entries().await.pop().expect("entry");
    assert_eq!(e.reason, "CERTIFICATE_REVOKED");
    // A certificate revoked by serial number likewise; serials are unique
    // per issuer only, so the issuer is named, and another issuer's
    // certificate with that serial is not touched.
    let schaerbeek = t.demo().client(SCHAERBEEK).expect("files");
    let ids_s = semel_server::tls::certificate_ids(&schaerbeek.cert).expect("ids");
    assert_ne!(serial, ids_s.serial);
    let err = reg
        .revoke_certificate(proto::RevokeCertificateRequest {
            serial_number: ids_s.serial.clone(),
            reason: "key compromised".into(),
            ..Default::default()
        })
        .await
        .expect_err("a serial without its issuer");
    assert_error(&err, Code::InvalidArgument, "INVALID_ARGUMENT");
    reg.revoke_certificate(proto::RevokeCertificateRequest {
        serial_number: ids_s.serial.clone(),
        issuer_name_sha256: "00".repeat(32),
        reason: "another CA's certificate".into(),
        ..Default::default()
    })
    .await
    .expect("revoke another issuer's serial");
    t.lookup_client(SCHAERBEEK)
        .await
        .lookup(lookup(JAN, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
        .await
        .map(drop)
        .or_else(|s| {
            if s.code() == Code::PermissionDenied {
                Ok(())
            } else {
                Err(s)
            }
        })
        .expect("the same serial from another issuer does not revoke this certificate");
    reg.revoke_certificate(proto::RevokeCertificateRequest {
        serial_number: ids_s.serial,
        issuer_name_sha256: ids_s.issuer_name_sha256,
        reason: "key compromised".into(),
        ..Default::default()
    })
    .await
    .expect("revoke by serial");
    let err = t
        .lookup_client(SCHAERBEEK)
        .await
        .lookup(lookup(JAN, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
        .await
        .expect_err("revoked");
    assert_error(&err, Code::Unauthenticated, "CERTIFICATE_REVOKED");
    let list = reg
        .list_revoked_certificates(proto::ListRevokedCertificatesRequest {})
        .await
        .expect("list")
        .into_inner()
        .revoked;
    assert_eq!(list.len(), 3);
    // Bad input is named.
    let err = reg
        .revoke_certificate(proto::RevokeCertificateRequest {
            sha256_fingerprint: "abc".into(),
            serial_number: "01".into(),
            reason: "x".into(),
            issuer_name_sha256: String::new(),
        })
        .await
        .expect_err("both");
    assert_error(&err, Code::InvalidArgument, "INVALID_ARGUMENT");
    // Another organisation carries on.
    t.lookup_client(BRUXELLES_CPAS)
        .await
        .lookup(karim_residence())
        .await
        .map(drop)
        .or_else(|s| {
            if s.code() == Code::PermissionDenied {
                Ok(())
            } else {
                Err(s)
            }
        })
        .expect("not refused for its certificate");
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

#[tokio::test]
async fn issuer_keys_and_the_ca_bundle_rotate_without_a_restart_or_a_dropped_call() {
    let t = TestDemo::start().await;
    let old = t.mint(&clerk(600));
    lookup_with(&t, &old).await.expect("old key works");

    // A lookup to a slow source is in flight while everything rotates.
    let endpoint = start_test_source(
        &t,
        TestSource {
            delay: std::time::Duration::from_millis(300),
            extra: false,
            calls: Default::default(),
        },
    )
    .await;
    register_test_dataset(&t, "test.slow", &endpoint).await;
    let mut slow_client = t.lookup_client(ANDERLECHT).await;
    let in_flight = tokio::spawn(async move {
        slow_client
            .lookup(lookup(KARIM, "test.slow", &["a"], "TEST"))
            .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;

    // New issuer key: the identity provider rotated it.
    let fresh_dir = tempfile::tempdir().expect("tempdir");
    let fresh = DevIssuer::ensure(fresh_dir.path()).expect("new key");
    let demo_issuer = t.issuer();
    std::fs::copy(fresh.key_file(), demo_issuer.key_file()).expect("copy key");
    std::fs::copy(fresh.jwks_file(), demo_issuer.jwks_file()).expect("copy jwks");
    // A new CA joins the bundle, for an organisation moving to it.
    let new_ca_dir = tempfile::tempdir().expect("tempdir");
    let kbo = semel_demo::seed::org(BRUXELLES_CPAS).expect("org").kbo;
    let stem = kbo.as_str().to_owned();
    let new_pki = semel_demo::pki::DevPki::ensure(
        new_ca_dir.path(),
        &[semel_demo::pki::Subject {
            file_stem: &stem,
            kbo,
            name: "CPAS de la Ville de Bruxelles",
        }],
    )
    .expect("new ca");
    let moved = new_pki.files(&stem);
    let token = t.token(BRUXELLES_CPAS, &[UserRole::Consumer]);
    assert!(
        !certificate_works(&t, &moved, &token).await,
        "the new CA is not trusted before the reload"
    );
    let mut bundle = std::fs::read_to_string(t.pki().ca_cert()).expect("ca");
    bundle.push_str(&std::fs::read_to_string(new_pki.ca_cert()).expect("new ca"));
    std::fs::write(t.pki().ca_cert(), bundle).expect("write bundle");

    t.demo().reloader.reload().expect("reload");

    let err = lookup_with(&t, &old)
        .await
        .expect_err("the rotated-away key no longer verifies");
    assert_error(&err, Code::Unauthenticated, "TOKEN_SIGNATURE");
    lookup_with(&t, &t.mint(&clerk(600)))
        .await
        .expect("a token of the new key works");
    assert!(
        certificate_works(&t, &moved, &token).await,
        "the new CA is trusted after the reload"
    );
    let answered = in_flight.await.expect("task");
    assert!(
        answered.is_ok(),
        "the call in flight finished: {answered:?}"
    );
    t.stop().await;
}

#[tokio::test]
async fn a_changed_key_file_is_picked_up_without_a_signal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut opts, db) = demo_options(dir.path()).await;
    opts.reload_poll = Some(std::time::Duration::from_millis(100));
    let t = TestDemo {
        demo: Some(semel_demo_stack::Demo::start(opts).await.expect("start")),
        dir,
        db,
    };
    let fresh_dir = tempfile::tempdir().expect("tempdir");
    let fresh = DevIssuer::ensure(fresh_dir.path()).expect("new key");
    let demo_issuer = t.issuer();
    std::fs::copy(fresh.key_file(), demo_issuer.key_file()).expect("copy key");
    std::fs::copy(fresh.jwks_file(), demo_issuer.jwks_file()).expect("copy jwks");
    let token = t.mint(&clerk(600));
    let mut ok = false;
    for _ in 0..100 {
        if lookup_with(&t, &token).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(ok, "the new key was not picked up within 5 s");
    t.stop().await;
}

/// Whether a lookup with this certificate and token gets past identity.
async fn certificate_works(t: &TestDemo, files: &semel_demo::pki::CertFiles, token: &str) -> bool {
    let Ok(channel) = t
        .channel_with(Some((&files.cert, &files.key)), &t.pki().ca_cert())
        .await
    else {
        return false;
    };
    let authed = with_token(channel, Some(token)).expect("token");
    match LookupServiceClient::new(authed)
        .lookup(karim_residence())
        .await
    {
        Ok(_) => true,
        Err(s) => s.code() == Code::PermissionDenied,
    }
}

#[tokio::test]
async fn an_investigation_stays_out_of_the_citizens_view_until_its_disclosure_date() {
    let t = TestDemo::start().await;
    let ville = semel_demo::seed::org(VILLE).expect("org").kbo;
    let mut reg = t.registry().await;
    for (reference, until) in [("PJ/2026/001", "2099-12-31"), ("PJ/2020/007", "2021-01-01")] {
        reg.create_purpose(proto::CreatePurposeRequest {
            purpose: Some(proto::Purpose {
                code: format!("INQUIRY_{}", &reference[3..7]),
                description: "A judicial inquiry".into(),
                legal_basis: "Code d'instruction criminelle, art. 46quater".into(),
            }),
        })
        .await
        .expect("purpose");
        reg.create_authorisation(proto::CreateAuthorisationRequest {
            authorisation: Some(proto::Authorisation {
                reference: reference.into(),
                consumer_kbo: ville.as_str().into(),
                dataset: RESIDENCE.into(),
                fields: vec!["street".into()],
                purpose: format!("INQUIRY_{}", &reference[3..7]),
                legal_basis: "Code d'instruction criminelle, art. 46quater".into(),
                issuing_body: "Juge d'instruction".into(),
                valid_from: "2020-01-01".into(),
                confidential_until: until.into(),
                capacities: vec!["SUSPECT".into()],
                ..Default::default()
            }),
        })
        .await
        .expect("authorisation");
    }
    t.open_file(VILLE, KARIM, "SUSPECT").await;
    let mut c = t.lookup_client(VILLE).await;
    c.lookup(lookup(KARIM, RESIDENCE, &["street"], "INQUIRY_2026"))
        .await
        .expect("the current inquiry");
    c.lookup(lookup(KARIM, RESIDENCE, &["street"], "INQUIRY_2020"))
        .await
        .expect("the old inquiry");
    let karim = t.citizen_token(KARIM);
    let seen = accesses(t.channel_as("irisbox", &karim).await, KARIM)
        .await
        .expect("report");
    let references: Vec<&str> = seen
        .iter()
        .map(|a| a.authorisation_reference.as_str())
        .collect();
    assert_eq!(references, vec!["PJ/2020/007"], "the disclosed one only");
    // The supervisory commission sees both.
    let all = accesses(t.channel("control-commission").await, KARIM)
        .await
        .expect("report");
    assert_eq!(all.len(), 2);

    // Refusals made before any authorisation was chosen do not tip off the
    // subject either: an unknown field, a dataset the inquiry does not
    // cover, a forged token, each with the inquiry's purpose.
    c.lookup(lookup(KARIM, RESIDENCE, &["no_such_field"], "INQUIRY_2026"))
        .await
        .expect_err("unknown field");
    c.lookup(lookup(KARIM, UNEMPLOYMENT, &["entitled"], "INQUIRY_2026"))
        .await
        .expect_err("no authorisation");
    LookupServiceClient::new(t.channel_as(VILLE, "not-a-token").await)
        .lookup(lookup(KARIM, RESIDENCE, &["street"], "INQUIRY_2026"))
        .await
        .expect_err("forged token");
    let seen = accesses(t.channel_as("irisbox", &karim).await, KARIM)
        .await
        .expect("report");
    let references: Vec<&str> = seen
        .iter()
        .map(|a| a.authorisation_reference.as_str())
        .collect();
    assert_eq!(references, vec!["PJ/2020/007"], "no refusal tips Karim off");
    assert!(seen.iter().all(|a| !a.purpose.contains("2026")), "{seen:?}");

    // A citizen whose only entries are hidden sees an empty page and no
    // page token (which would be a hidden entry's sequence number).
    t.open_file(VILLE, JAN, "SUSPECT").await;
    c.lookup(lookup(JAN, RESIDENCE, &["street"], "INQUIRY_2026"))
        .await
        .expect("the inquiry on Jan");
    c.lookup(lookup(JAN, RESIDENCE, &["bogus"], "INQUIRY_2026"))
        .await
        .expect_err("unknown field");
    let jan = t.citizen_token(JAN);
    let page =
        proto::audit_service_client::AuditServiceClient::new(t.channel_as("irisbox", &jan).await)
            .list_citizen_accesses(proto::ListCitizenAccessesRequest {
                citizen: JAN.into(),
                page_size: 1,
                ..Default::default()
            })
            .await
            .expect("Jan's view")
            .into_inner();
    assert!(page.accesses.is_empty(), "{:?}", page.accesses);
    assert_eq!(page.next_page_token, "");
    // Karim's view, a page at a time: one visible entry, then nothing.
    let mut portal =
        proto::audit_service_client::AuditServiceClient::new(t.channel_as("irisbox", &karim).await);
    let first = portal
        .list_citizen_accesses(proto::ListCitizenAccessesRequest {
            citizen: KARIM.into(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .expect("page 1")
        .into_inner();
    assert_eq!(first.accesses.len(), 1);
    assert_eq!(first.accesses[0].authorisation_reference, "PJ/2020/007");
    let hidden: Vec<String> = t
        .audit_entries()
        .await
        .iter()
        .filter(|e| e.citizen == KARIM && e.authorisation_reference != "PJ/2020/007")
        .map(|e| e.sequence.to_string())
        .collect();
    assert!(!hidden.contains(&first.next_page_token));
    let second = portal
        .list_citizen_accesses(proto::ListCitizenAccessesRequest {
            citizen: KARIM.into(),
            page_size: 1,
            page_token: first.next_page_token,
        })
        .await
        .expect("page 2")
        .into_inner();
    assert!(second.accesses.is_empty(), "{:?}", second.accesses);
    t.stop().await;
}

/// Confidentiality is not retroactive: an amendment that makes an
/// authorisation confidential hides the lookups made under it from then on,
/// not those the citizen could already see; ending it discloses them all.
#[tokio::test]
async fn an_amendment_making_an_authorisation_confidential_hides_nothing_already_visible() {
    const REF: &str = "BSC/2024/017";
    let t = TestDemo::start().await;
    let mut c = t.lookup_client(ANDERLECHT).await;
    let street = lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY");
    c.lookup(street.clone()).await.expect("under v1");
    let karim = t.citizen_token(KARIM);
    let seen = || async {
        accesses(t.channel_as("irisbox", &karim).await, KARIM)
            .await
            .expect("report")
            .iter()
            .filter(|a| a.authorisation_reference == REF)
            .count()
    };
    assert_eq!(seen().await, 1);
    let mut reg = t.registry().await;
    let mut a = reg
        .get_authorisation(proto::GetAuthorisationRequest {
            reference: REF.into(),
        })
        .await
        .expect("get")
        .into_inner()
        .authorisation
        .expect("auth");
    let amend = |a: proto::Authorisation, v| proto::AmendAuthorisationRequest {
        authorisation: Some(a),
        expected_version: v,
        reason: String::new(),
    };
    let original_basis = a.legal_basis.clone();
    a.confidential_until = "2099-12-31".into();
    a.legal_basis = "Code d'instruction criminelle, art. 46quater".into();
    reg.amend_authorisation(amend(a.clone(), 1))
        .await
        .expect("confidential from v2");
    c.lookup(street).await.expect("under v2");
    assert_eq!(
        seen().await,
        1,
        "the v1 lookup stays in view, the v2 one not"
    );
    // The access in view shows the law of the version it was decided
    // under, not the investigation's.
    let bases = || async {
        accesses(t.channel_as("irisbox", &karim).await, KARIM)
            .await
            .expect("report")
            .into_iter()
            .filter(|a| a.authorisation_reference == REF)
            .map(|a| a.legal_basis)
            .collect::<Vec<_>>()
    };
    assert_eq!(bases().await, vec![original_basis.clone()]);
    a.confidential_until = String::new();
    reg.amend_authorisation(amend(a, 2))
        .await
        .expect("disclosed in v3");
    assert_eq!(seen().await, 2, "both in view once disclosed");
    assert_eq!(
        bases().await,
        vec![
            "Code d'instruction criminelle, art. 46quater".to_owned(),
            original_basis
        ],
        "newest first, each under its own version's law"
    );
    t.stop().await;
}
