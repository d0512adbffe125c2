//! What the tests that run the real binary share: starting `semel demo`
//! on ports of its own, waiting for it to answer, and writing a broker's
//! configuration on a development PKI.

// Not every test binary uses every helper.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use semel_client::Client;

/// Starts `semel demo` on ports of its own (port 0 for the broker and the
/// metrics), so a demo a user runs on the default ports is no obstacle. Its
/// stderr goes to `demo.log`, which [`connect`] shows if it stops.
pub fn start(dir: &Path) -> Child {
    let _ = std::fs::remove_file(dir.join("demo.json"));
    let log = std::fs::File::create(dir.join("demo.log")).expect("create demo.log");
    Command::new(env!("CARGO_BIN_EXE_semel"))
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--population",
            "2000",
            "--data-dir",
        ])
        .arg(dir)
        .env("SEMEL_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start semel demo")
}

/// Waits for the demo to answer; fails with its log if it stopped.
pub async fn connect(child: &mut Child, dir: &Path, who: &str) -> Client {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if dir.join("demo.json").exists()
            && let Ok(config) = semel_demo_stack::demo::client_config(dir, who)
            && let Ok(client) = Client::connect(&config).await
        {
            return client;
        }
        if let Some(status) = child.try_wait().expect("check the demo") {
            panic!(
                "semel demo stopped ({status}):\n{}",
                std::fs::read_to_string(dir.join("demo.log")).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "the demo did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes `semel.toml` in `dir` for a broker on the development PKI in
/// `pki` (created if missing: the broker's certificate, the CA, the token
/// issuer and the audit signing key), its data in `data_dir`, under the
/// audit origin `origin`; `extra` is more TOML (a `[store]` section, say).
pub fn broker_config(
    dir: &Path,
    pki: &Path,
    data_dir: &Path,
    origin: &str,
    extra: &str,
) -> std::path::PathBuf {
    let kbo = semel_core::Kbo::parse("0087654346").expect("kbo");
    let pki = semel_demo::pki::DevPki::ensure(
        pki,
        &[semel_demo::pki::Subject {
            file_stem: "broker",
            kbo,
            name: "Broker",
        }],
    )
    .expect("pki");
    let issuer = semel_demo::issuer::DevIssuer::ensure(&pki.dir).expect("issuer");
    let q = |p: std::path::PathBuf| format!("{:?}", p.display().to_string());
    let config = dir.join("semel.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {data}\n{extra}\n\
             [tls]\ncert = {cert}\nkey = {key}\nclient_ca = {ca}\n\
             [operator]\nkbo = \"{kbo}\"\nname = \"Operator\"\n\
             [audit]\nsigning_key = {signing}\norigin = \"{origin}\"\n\
             [tokens]\n[[tokens.issuers]]\nissuer = \"{iss}\"\njwks = {jwks}\n",
            data = q(data_dir.to_path_buf()),
            cert = q(pki.dir.join("broker.crt")),
            key = q(pki.dir.join("broker.key")),
            ca = q(pki.ca_cert()),
            kbo = kbo.as_str(),
            signing = q(pki.dir.join("audit-signing.key")),
            iss = issuer.issuer,
            jwks = q(issuer.jwks_file()),
        ),
    )
    .expect("config");
    config
}
