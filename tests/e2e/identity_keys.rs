//! Certificates revoked, and issuers' keys and the CA bundle rotated while the broker serves.

use semel_client::with_token;
use semel_core::UserRole;
use semel_demo::issuer::DevIssuer;
use semel_demo::seed::datasets::*;
use semel_server::proto::{self, lookup_service_client::LookupServiceClient};
use tonic::Code;

use crate::harness::*;
use crate::identity::{clerk, karim_residence, lookup_with};

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
