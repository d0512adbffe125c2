//! The command line as scripts and people use it, against a real `semel
//! demo` on ports of its own: output to a reader that went away, tables and
//! complete JSON, exit codes.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Demo {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `semel demo` on port 0 (broker and metrics) and waits until it answers.
fn demo() -> Demo {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = std::fs::File::create(dir.path().join("demo.log")).expect("demo.log");
    let child = Command::new(env!("CARGO_BIN_EXE_semel"))
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--population",
            "500",
            "--data-dir",
        ])
        .arg(dir.path())
        .env("SEMEL_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start semel demo");
    let mut demo = Demo { child, dir };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if demo.dir.path().join("demo.json").exists()
            && semel(demo.dir.path(), &["health"]).status.success()
        {
            return demo;
        }
        if let Some(status) = demo.child.try_wait().expect("check the demo") {
            panic!(
                "semel demo stopped ({status}):\n{}",
                std::fs::read_to_string(demo.dir.path().join("demo.log")).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "the demo did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn command(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_semel"));
    c.args(args)
        .env("SEMEL_DEMO_DIR", dir)
        .env_remove("SEMEL_TOKEN_FILE")
        .stdin(Stdio::null());
    c
}

fn semel(dir: &Path, args: &[&str]) -> Output {
    command(dir, args).output().expect("run semel")
}

#[test]
fn the_command_line_serves_scripts_and_people() {
    let demo = demo();
    let dir = demo.dir.path();

    // A reader that is gone before anything is written (`| head -0`): the
    // command ends quietly, as `ls | head` does, not with a panic.
    for args in [
        &["admin", "org", "list"][..],
        &["admin", "org", "list", "--json"],
        &["audit", "list", "--limit", "5"],
    ] {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out = command(dir, args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .expect("run semel");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }

    // People get a table; scripts the whole answer.
    let out = semel(dir, &["admin", "org", "list"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("KBO ") && text.contains("NAME") && !text.contains('{'),
        "{text}"
    );
    let out = semel(dir, &["admin", "dataset", "list", "--json"]);
    let datasets: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let residence = datasets
        .as_array()
        .expect("a list")
        .iter()
        .find(|d| d["name"] == "national_register.residence")
        .expect("the residence dataset");
    assert!(
        residence["fields"]
            .as_array()
            .expect("fields")
            .iter()
            .all(|f| f["type"].as_str().is_some_and(|t| !t.is_empty())),
        "{residence}"
    );
    let out = semel(dir, &["admin", "authorisation", "list", "--json"]);
    let auths: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    for a in auths.as_array().expect("a list") {
        for key in [
            "check_fields",
            "capacities",
            "consent_required",
            "version",
            "updated_at",
        ] {
            assert!(a.get(key).is_some(), "{key} missing from {a}");
        }
    }

    // A refusal by the broker: exit 3, and with --json the reason on stdout.
    let out = semel(
        dir,
        &[
            "lookup",
            "--as",
            "commune-schaerbeek",
            "--citizen",
            "93051822361",
            "--dataset",
            "national_register.residence",
            "--fields",
            "street,nis_code",
            "--purpose",
            "SCHOOL_ENROLMENT",
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(3));
    let err: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(err["error"]["reason"], "FIELD_NOT_ALLOWED", "{err}");
    // A command line that does not parse: exit 2.
    assert_eq!(
        semel(dir, &["admin", "org", "list", "--no-such-option"])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn serve_accepts_the_command_lines_own_variables() {
    // SEMEL_TOKEN_FILE is the command line's; `semel serve` must not take
    // it for a configuration key.
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = semel_demo::pki::DevPki::ensure(
        &dir.path().join("pki"),
        &[semel_demo::pki::Subject {
            file_stem: "broker",
            kbo: semel_core::Kbo::parse("0087654346").expect("kbo"),
            name: "Broker",
        }],
    )
    .expect("pki");
    let issuer = semel_demo::issuer::DevIssuer::ensure(&pki.dir).expect("issuer");
    let config = dir.path().join("semel.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\n[tls]\ncert = \"pki/broker.crt\"\nkey = \"pki/broker.key\"\nclient_ca = \"pki/ca.crt\"\n[operator]\nkbo = \"0087654346\"\nname = \"Operator\"\n[tokens]\n[[tokens.issuers]]\nissuer = \"{}\"\njwks = \"pki/issuer.jwks.json\"\n",
            issuer.issuer
        ),
    )
    .expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_semel"))
        .args(["serve", "--check-config", "--config"])
        .arg(&config)
        .env("SEMEL_TOKEN_FILE", dir.path().join("token.jwt"))
        .env("SEMEL_DEMO_DIR", dir.path())
        .output()
        .expect("run semel");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
