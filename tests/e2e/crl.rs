//! Revocation by the certificate authorities: the CRLs named by
//! `tls.client_crls` and `sources.crls` (in the demo, the development CA's
//! `ca.crl`, which `semel pki revoke` writes) are loaded with the CA
//! bundles and reloaded with them, all or nothing. A client certificate a
//! loaded CRL lists fails the handshake; a source whose certificate one
//! lists is not called.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use semel_client::with_token;
use semel_core::UserRole;
use semel_demo::pki::CertFiles;
use semel_demo::seed::datasets::RESIDENCE;
use semel_server::proto::lookup_service_client::LookupServiceClient;
use tonic::Code;

use crate::harness::*;

/// A certificate for CPAS Anderlecht, issued by the demo CA under `stem`.
fn anderlecht_certificate(t: &TestDemo, stem: &str) -> CertFiles {
    let kbo = semel_demo::seed::org(ANDERLECHT).expect("org").kbo;
    t.issue(stem, kbo.as_str(), "CPAS d'Anderlecht")
}

/// Revokes the certificate in `files` into the demo CA's CRL.
fn revoke(t: &TestDemo, files: &CertFiles) {
    let serial = semel_server::tls::certificate_serial(&files.cert).expect("serial");
    t.pki().revoke(&serial).expect("revoke");
}

/// A lookup as CPAS Anderlecht over a new connection with this
/// certificate: `Ok` if it was answered, or why the connection failed.
async fn lookup_with_certificate(t: &TestDemo, files: &CertFiles) -> Result<(), String> {
    let channel = t
        .channel_with(Some((&files.cert, &files.key)), &t.pki().ca_cert())
        .await
        .map_err(|e| format!("{e:?}"))?;
    let token = t.token(ANDERLECHT, &[UserRole::Consumer]);
    LookupServiceClient::new(with_token(channel, Some(&token)).expect("token"))
        .lookup(lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
        .await
        .map(drop)
        .map_err(|s| format!("{s:?}"))
}

/// Asserts the connection with `files` failed at the handshake because the
/// certificate is revoked: the TLS alert, not an answer of the broker.
async fn assert_revoked_at_handshake(t: &TestDemo, files: &CertFiles, what: &str) {
    let err = lookup_with_certificate(t, files).await.expect_err(what);
    assert!(
        err.contains("CertificateRevoked"),
        "{what}: refused, but not as revoked at the handshake: {err}"
    );
}

/// A TLS connection to the HTTP/JSON face with this certificate, read
/// from until the server speaks: `Err` with the alert when it refuses the
/// certificate. (TLS 1.3 completes the client's side of the handshake
/// before the server has checked the certificate: its verdict comes with
/// the first read.)
async fn http_handshake(t: &TestDemo, files: &CertFiles) -> Result<(), String> {
    use tokio::io::AsyncReadExt;
    let config =
        semel_server::tls::https_client_config(&t.pki().ca_cert(), &files.cert, &files.key)
            .expect("config");
    let tcp = tokio::net::TcpStream::connect(t.demo().http_addr.expect("HTTP/JSON served"))
        .await
        .expect("connect");
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(
            rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name"),
            tcp,
        )
        .await
        .map_err(|e| format!("{e:?}"))?;
    let mut byte = [0u8; 1];
    // A guard, not a synchronisation: the refusal arrives at once.
    match tokio::time::timeout(Duration::from_secs(10), tls.read(&mut byte)).await {
        Ok(Err(e)) => Err(format!("{e:?}")),
        Ok(Ok(_)) => Ok(()),
        Err(_) => Ok(()),
    }
}

#[tokio::test]
async fn a_client_certificate_in_the_loaded_crl_fails_the_handshake_and_another_of_its_ca_works() {
    let t = TestDemo::start().await;
    let revoked = anderlecht_certificate(&t, "crl-revoked");
    let kept = anderlecht_certificate(&t, "crl-kept");
    lookup_with_certificate(&t, &revoked)
        .await
        .expect("the certificate works before its CA revokes it");

    revoke(&t, &revoked);
    t.demo().reloader.reload().expect("reload");

    assert_revoked_at_handshake(&t, &revoked, "revoked by the CA's CRL").await;
    lookup_with_certificate(&t, &kept)
        .await
        .expect("another certificate of the same CA still works");
    // The HTTP/JSON face shares the verifier: the same handshake fails.
    let err = http_handshake(&t, &revoked)
        .await
        .expect_err("HTTP/JSON face");
    assert!(err.contains("CertificateRevoked"), "{err}");
    // The broker's registry knows nothing of it: the CA's revocation is
    // enough, no operator had to act.
    t.stop().await;
}

#[tokio::test]
async fn a_replaced_crl_refuses_the_newly_revoked_certificate_after_a_reload() {
    let t = TestDemo::start().await;
    let first = anderlecht_certificate(&t, "crl-first");
    let second = anderlecht_certificate(&t, "crl-second");
    revoke(&t, &first);
    t.demo().reloader.reload().expect("reload");
    assert_revoked_at_handshake(&t, &first, "in the first CRL").await;
    lookup_with_certificate(&t, &second)
        .await
        .expect("not in the first CRL");

    // The CA publishes a new list; the file is replaced.
    revoke(&t, &second);
    lookup_with_certificate(&t, &second)
        .await
        .expect("the new list applies once reloaded, not before");
    t.demo().reloader.reload().expect("reload");
    assert_revoked_at_handshake(&t, &second, "in the replaced CRL").await;
    assert_revoked_at_handshake(&t, &first, "still in the replaced CRL").await;
    t.stop().await;
}

#[tokio::test]
async fn an_unreadable_crl_fails_the_reload_and_the_old_lists_stay_in_force() {
    let t = TestDemo::start().await;
    let revoked = anderlecht_certificate(&t, "crl-revoked");
    let kept = anderlecht_certificate(&t, "crl-kept");
    revoke(&t, &revoked);
    t.demo().reloader.reload().expect("reload");
    assert_revoked_at_handshake(&t, &revoked, "revoked").await;

    let crl = t.pki().crl();
    for (damage, bytes) in [
        ("a truncated PEM", &b"-----BEGIN X509 CRL-----\nMIIB\n"[..]),
        ("not a CRL", &b"\x30\x03\x02\x01\x01"[..]),
        ("an empty file", &b""[..]),
    ] {
        std::fs::write(&crl, bytes).expect("damage the CRL");
        let err = t
            .demo()
            .reloader
            .reload()
            .expect_err(&format!("{damage}: the reload fails"));
        assert!(
            format!("{err:#}").contains("ca.crl"),
            "{damage}: the error names the file: {err:#}"
        );
        assert_revoked_at_handshake(&t, &revoked, "the old list stays in force").await;
        lookup_with_certificate(&t, &kept)
            .await
            .unwrap_or_else(|e| panic!("{damage}: the old configuration keeps serving: {e}"));
    }
    std::fs::remove_file(&crl).expect("remove the CRL");
    t.demo()
        .reloader
        .reload()
        .expect_err("a missing CRL fails the reload");
    assert_revoked_at_handshake(&t, &revoked, "a missing list revokes nothing less").await;
    t.stop().await;
}

#[tokio::test]
async fn a_crl_past_its_next_update_refuses_its_cas_certificates() {
    let t = TestDemo::start().await;
    let kept = anderlecht_certificate(&t, "crl-kept");
    lookup_with_certificate(&t, &kept).await.expect("works");
    t.pki()
        .sign_crl(time::OffsetDateTime::now_utc() - time::Duration::hours(1))
        .expect("an expired CRL");
    t.demo()
        .reloader
        .reload()
        .expect("an expired CRL still loads");
    let err = lookup_with_certificate(&t, &kept)
        .await
        .expect_err("a stale list may miss a revocation: refused");
    // rustls sends the "unknown CA" alert for an expired CRL.
    assert!(
        err.contains("fatal alert"),
        "refused at the handshake: {err}"
    );
    t.stop().await;
}

/// Counts the lookups that reach it, and answers each.
#[derive(Clone, Default)]
struct CountingSource {
    calls: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl semel_server::proto::source_service_server::SourceService for CountingSource {
    async fn fetch(
        &self,
        request: tonic::Request<semel_server::proto::FetchRequest>,
    ) -> Result<tonic::Response<semel_server::proto::FetchResponse>, tonic::Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        TestSource {
            delay: Duration::ZERO,
            extra: false,
            calls: Arc::default(),
        }
        .fetch(request)
        .await
    }
}

#[tokio::test]
async fn a_source_whose_certificate_is_in_the_sources_crl_gets_no_lookup() {
    let t = TestDemo::start().await;
    // The source's own certificate, issued by the demo CA.
    let files = t.issue("crl-source", "0999999922", "Test source");
    let tls = semel_server::tls::server_config(&semel_server::tls::TlsFiles {
        cert: &files.cert,
        key: &files.key,
        client_ca: &t.pki().ca_cert(),
        client_crls: &[],
    })
    .expect("tls");
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .expect("bind");
    let endpoint = format!("https://{}", listener.local_addr().expect("addr"));
    let source = CountingSource::default();
    let calls = source.calls.clone();
    tokio::spawn(semel_server::server::serve_source(
        listener,
        tls,
        semel_server::proto::source_service_server::SourceServiceServer::new(source),
        std::future::pending(),
    ));
    register_test_dataset(&t, "test.crl", &endpoint).await;
    let mut c = t.lookup_client(ANDERLECHT).await;
    c.lookup(lookup(KARIM, "test.crl", &["a"], "TEST"))
        .await
        .expect("the source answers before its CA revokes its certificate");
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    revoke(&t, &files);
    t.demo().reloader.reload().expect("reload");

    let err = c
        .lookup(lookup(KARIM, "test.crl", &["a"], "TEST"))
        .await
        .expect_err("a revoked source is not called");
    assert_error(&err, Code::Unavailable, "SOURCE_UNAVAILABLE");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "nothing reached the revoked source"
    );
    t.stop().await;
}
