//! Rotation without a restart, on the real binary: `semel serve` with file
//! polling off reloads its certificate and the issuers' keys on SIGHUP, and
//! only then.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use semel_client::{Client, ClientConfig};
use semel_core::UserRole;
use semel_demo::issuer::{DEV_AUDIENCE, DevIssuer, TokenRequest};
use semel_demo::pki::{DevPki, Subject};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// The end-entity certificate the server presents to a new connection.
async fn presented_certificate(port: u16, ca: &Path) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("ca") {
        roots.add(c.expect("ca cert")).expect("add");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("handshake");
    tls.get_ref().1.peer_certificates().expect("certificates")[0].to_vec()
}

fn file_certificate(path: &Path) -> Vec<u8> {
    CertificateDer::pem_file_iter(path)
        .expect("read")
        .next()
        .expect("one")
        .expect("parse")
        .to_vec()
}

async fn head_with(config: &ClientConfig, token: &str) -> Result<(), String> {
    let config = ClientConfig {
        token: Some(token.to_owned()),
        ..config.clone()
    };
    let client = Client::connect(&config)
        .await
        .map_err(|e| format!("{e:#}"))?;
    client
        .audit_head()
        .await
        .map(drop)
        .map_err(|e| e.reason.unwrap_or(e.code))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_and_the_issuer_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let operator = semel_demo::seed::org("operator").expect("operator");
    let stem = operator.kbo.as_str().to_owned();
    let subjects = [
        Subject {
            file_stem: &stem,
            kbo: operator.kbo,
            name: "Operator",
        },
        Subject {
            file_stem: "broker",
            kbo: operator.kbo,
            name: "Semel broker",
        },
    ];
    let pki = DevPki::ensure(&dir.path().join("pki"), &subjects).expect("pki");
    let issuer = DevIssuer::ensure(&pki.dir).expect("issuer");
    let port = free_port();
    let config_path = dir.path().join("semel.toml");
    std::fs::write(
        &config_path,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"data\"\nreload_poll_ms = 0\n[tls]\ncert = \"pki/broker.crt\"\nkey = \"pki/broker.key\"\nclient_ca = \"pki/ca.crt\"\n[operator]\nkbo = \"{}\"\nname = \"Operator\"\n[tokens]\n[[tokens.issuers]]\nissuer = \"{}\"\njwks = \"pki/issuer.jwks.json\"\n",
            operator.kbo.as_str(),
            issuer.issuer
        ),
    )
    .expect("config");
    let child = Command::new(env!("CARGO_BIN_EXE_semel"))
        .args(["serve", "--config"])
        .arg(&config_path)
        .env("SEMEL_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("serve.log")).expect("serve.log"))
        .spawn()
        .expect("start semel serve");
    let mut child = Killed(child);
    let files = pki.files(&stem);
    let client = ClientConfig {
        broker: format!("https://127.0.0.1:{port}"),
        ca: pki.ca_cert(),
        cert: files.cert,
        key: files.key,
        token: None,
    };
    let mint = |issuer: &DevIssuer| {
        issuer
            .mint(&TokenRequest {
                subject: "admin-1",
                organisation: operator.kbo,
                roles: &[UserRole::Admin],
                audience: DEV_AUDIENCE,
                expires_in: 600,
                not_before: None,
                bound_to: None,
            })
            .expect("mint")
    };
    let old_token = mint(&issuer);
    let deadline = Instant::now() + Duration::from_secs(60);
    while head_with(&client, &old_token).await.is_err() {
        if let Some(status) = child.0.try_wait().expect("check the broker") {
            panic!(
                "semel serve stopped ({status}):\n{}",
                std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "the broker did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Rotate: a new issuer key, a new broker certificate.
    let other = tempfile::tempdir().expect("tempdir");
    let fresh = DevIssuer::ensure(other.path()).expect("new issuer key");
    std::fs::copy(fresh.key_file(), issuer.key_file()).expect("key");
    std::fs::copy(fresh.jwks_file(), issuer.jwks_file()).expect("jwks");
    let new_token = mint(&issuer);
    let before = presented_certificate(port, &pki.ca_cert()).await;
    pki.issue(&subjects[1]).expect("new broker certificate");
    let renewed = file_certificate(&pki.files("broker").cert);
    assert_ne!(before, renewed);

    // Polling is off: nothing changes until the signal.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        head_with(&client, &new_token).await,
        Err("TOKEN_SIGNATURE".to_owned())
    );
    assert_eq!(presented_certificate(port, &pki.ca_cert()).await, before);

    let status = Command::new("kill")
        .args(["-HUP", &child.0.id().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while head_with(&client, &new_token).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the new key was not loaded on SIGHUP"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        head_with(&client, &old_token).await,
        Err("TOKEN_SIGNATURE".to_owned()),
        "the old key is gone"
    );
    assert_eq!(
        presented_certificate(port, &pki.ca_cert()).await,
        renewed,
        "new connections get the new certificate"
    );
    drop(child);
}
