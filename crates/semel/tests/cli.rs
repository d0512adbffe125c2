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
            "--http-listen",
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

    // Everything the demo wrote (the audit log, the sled store, keys,
    // tokens, certificates) is its owner's only (issue 35's ninth finding:
    // the log and the tokens were world-readable).
    let mut stack = vec![dir.to_path_buf()];
    let mut seen = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read the data directory") {
            let e = e.expect("entry");
            let path = e.path();
            if path.file_name().is_some_and(|n| n == "demo.log") {
                continue; // the test's own file
            }
            use std::os::unix::fs::PermissionsExt;
            let mode = e.metadata().expect("metadata").permissions().mode();
            assert_eq!(mode & 0o077, 0, "{} is {:o}", path.display(), mode & 0o777);
            seen += 1;
            if e.file_type().expect("type").is_dir() {
                stack.push(path);
            }
        }
    }
    assert!(seen > 10, "only {seen} files were looked at");

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
    // The number kept out of the process list: from standard input (`-`)
    // or a file (`@FILE`), the same call.
    let same = |given: &str, stdin: &[u8]| {
        let mut child = command(
            dir,
            &[
                "lookup",
                "--as",
                "commune-schaerbeek",
                "--citizen",
                given,
                "--dataset",
                "national_register.residence",
                "--fields",
                "street,nis_code",
                "--purpose",
                "SCHOOL_ENROLMENT",
                "--json",
            ],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run semel");
        use std::io::Write as _;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin)
            .expect("write");
        let out = child.wait_with_output().expect("wait");
        assert_eq!(out.status.code(), Some(3), "{given}");
        let err: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(
            err["error"]["reason"], "FIELD_NOT_ALLOWED",
            "{given}: {err}"
        );
    };
    same("-", b"93051822361\n");
    let file = dir.join("citizen.txt");
    std::fs::write(&file, "93051822361\n").expect("write");
    same(&format!("@{}", file.display()), b"");
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

/// A configuration for `semel serve` with a fresh development PKI in `dir`.
fn serve_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let pki = semel_demo::pki::DevPki::ensure(
        &dir.join("pki"),
        &[semel_demo::pki::Subject {
            file_stem: "broker",
            kbo: semel_core::Kbo::parse("0087654346").expect("kbo"),
            name: "Broker",
        }],
    )
    .expect("pki");
    let issuer = semel_demo::issuer::DevIssuer::ensure(&pki.dir).expect("issuer");
    let config = dir.join("semel.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\n[tls]\ncert = \"pki/broker.crt\"\nkey = \"pki/broker.key\"\nclient_ca = \"pki/ca.crt\"\n[operator]\nkbo = \"0087654346\"\nname = \"Operator\"\n{extra}\n[tokens]\n[[tokens.issuers]]\nissuer = \"{}\"\njwks = \"pki/issuer.jwks.json\"\n",
            issuer.issuer
        ),
    )
    .expect("config");
    config
}

#[test]
fn pki_revoke_writes_a_crl_that_check_config_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = serve_config(dir.path(), "[sources]\ncrls = [\"pki/ca.crl\"]\n");
    let pki = dir.path().join("pki");
    let out = Command::new(env!("CARGO_BIN_EXE_semel"))
        .args(["pki", "--json", "revoke", "--dir"])
        .arg(&pki)
        .arg("--cert")
        .arg(pki.join("broker.crt"))
        .output()
        .expect("run semel");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["crl"], pki.join("ca.crl").display().to_string(), "{v}");
    assert!(
        v["revoked_serial"].as_str().is_some_and(|s| !s.is_empty()),
        "{v}"
    );
    let check = || {
        Command::new(env!("CARGO_BIN_EXE_semel"))
            .args(["serve", "--check-config", "--config"])
            .arg(&config)
            .output()
            .expect("run semel")
    };
    let out = check();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(pki.join("ca.crl"), "-----BEGIN X509 CRL-----\nMIIB\n").expect("damage");
    let out = check();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("sources.crls[0]"), "{stderr}");
}

#[test]
fn check_config_loads_every_file_and_reports_every_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Every key of the HTTP/JSON face's section is accepted.
    let config = serve_config(
        dir.path(),
        "[http]\nlisten = \"127.0.0.1:8443\"\nmax_connections = 2048\nmax_connections_per_address = 32\nmax_connections_per_address_without_certificate = 4\nmax_connections_without_certificate = 256\nbody_timeout_ms = 10000\nheader_timeout_ms = 60000\n",
    );
    let check = |json: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_semel"));
        c.args(["serve", "--check-config", "--config"]).arg(&config);
        if json {
            c.arg("--json");
        }
        c.output().expect("run semel")
    };
    let out = check(true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(v["problems"], serde_json::json!([]), "{v}");

    // Three problems at once: a key file that holds a certificate (it
    // exists, so only loading it finds out), a JWKS that is not one, and a
    // negative burst.
    let pki = dir.path().join("pki");
    std::fs::copy(pki.join("broker.crt"), pki.join("broker.key")).expect("copy");
    std::fs::write(pki.join("issuer.jwks.json"), "{\"keys\": 3}").expect("write");
    let text = std::fs::read_to_string(&config).expect("read");
    std::fs::write(
        &config,
        text.replace("[tokens]", "[limits]\nconsumer_burst = -1\n[tokens]"),
    )
    .expect("write");
    let out = check(false);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for named in ["tls.key", "tokens.issuers[0]", "limits.consumer_burst"] {
        assert!(stderr.contains(named), "{named} not reported: {stderr}");
    }
    let out = check(true);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["valid"], false, "{v}");
    assert_eq!(v["problems"].as_array().map(Vec::len), Some(3), "{v}");
}

/// The probe commands of the deployment kit: every JSON array naming
/// `semel health` in the Dockerfile, the compose file and the Kubernetes
/// manifests, with Docker's leading `CMD` dropped.
fn kit_probes() -> Vec<(String, Vec<String>)> {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let mut probes = Vec::new();
    for file in [
        "Dockerfile",
        "compose/docker-compose.yml",
        "kubernetes/deployment.yaml",
    ] {
        let text = std::fs::read_to_string(deploy.join(file)).expect("read the kit");
        for line in text.lines().filter(|l| l.contains(r#""semel", "health""#)) {
            let (Some(a), Some(b)) = (line.find('['), line.rfind(']')) else {
                continue;
            };
            let mut args: Vec<String> = serde_json::from_str(&line[a..=b]).expect("a JSON array");
            if args.first().is_some_and(|a| a == "CMD") {
                args.remove(0);
            }
            probes.push((file.to_owned(), args));
        }
    }
    probes
}

#[test]
fn the_kits_probes_work_with_a_certificate_that_names_only_its_dns_name() {
    const NAME: &str = "semel.example.brussels";
    let dir = tempfile::tempdir().expect("tempdir");
    let config = serve_config(dir.path(), "");
    // A production-style certificate: the broker's DNS name, no IP address.
    let pki = semel_demo::pki::DevPki {
        dir: dir.path().join("pki"),
    };
    pki.issue_for_names(
        &semel_demo::pki::Subject {
            file_stem: "broker",
            kbo: semel_core::Kbo::parse("0087654346").expect("kbo"),
            name: "Broker",
        },
        &[NAME.to_owned()],
    )
    .expect("issue");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let text = std::fs::read_to_string(&config).expect("read");
    std::fs::write(
        &config,
        text.replace("127.0.0.1:0", &format!("127.0.0.1:{port}")),
    )
    .expect("write");
    let child = Command::new(env!("CARGO_BIN_EXE_semel"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("SEMEL_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("serve.log")).expect("serve.log"))
        .spawn()
        .expect("start semel serve");
    let mut broker = Demo {
        child,
        dir: tempfile::tempdir().expect("tempdir"),
    };
    // Each probe as the kit writes it, pointed at this broker; the kit's
    // containers set SEMEL_SERVER_NAME to the certificate's name.
    let run = |args: &[String], server_name: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_semel"));
        for a in &args[1..] {
            c.arg(if a.ends_with("ca.crt") {
                pki.ca_cert().display().to_string()
            } else {
                a.replace(":50051", &format!(":{port}"))
            });
        }
        match server_name {
            Some(name) => c.env("SEMEL_SERVER_NAME", name),
            None => c.env_remove("SEMEL_SERVER_NAME"),
        };
        c.stdin(Stdio::null()).output().expect("run the probe")
    };
    let probes = kit_probes();
    assert!(probes.len() >= 5, "{probes:?}");
    let (_, first) = &probes[0];
    let deadline = Instant::now() + Duration::from_secs(60);
    while !run(first, Some(NAME)).status.success() {
        if let Some(status) = broker.child.try_wait().expect("check the broker") {
            panic!(
                "semel serve stopped ({status}):\n{}",
                std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "the broker did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    for (file, args) in &probes {
        assert_eq!(args[..2], ["semel", "health"], "{file}");
        let out = run(args, Some(NAME));
        assert!(
            out.status.success(),
            "{file}: {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "SERVING");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_semel"))
        .args(["health", "--json", "--server-name", NAME, "--ca"])
        .arg(pki.ca_cert())
        .args(["--broker", &format!("https://127.0.0.1:{port}")])
        .output()
        .expect("run semel health");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["status"], "SERVING", "{v}");
    // Without the name the certificate is refused for 127.0.0.1: what the
    // probes did before.
    let out = run(first, None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("connect to the broker"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn key_files_semel_writes_are_standard_pkcs8() {
    use rustls::pki_types::PrivatePkcs8KeyDer;
    use rustls::pki_types::pem::PemObject;
    let dir = tempfile::tempdir().expect("tempdir");
    let issuer = semel_demo::issuer::DevIssuer::ensure(&dir.path().join("pki")).expect("issuer");
    let audit = dir.path().join("audit-signing.key");
    semel_store::load_or_create_signing_key(&audit).expect("audit key");
    semel_server::witness::Witness::open(&dir.path().join("witness"), "witness.example", &[])
        .expect("witness");
    let files = [
        issuer.key_file(),
        audit,
        dir.path().join("witness/witness.key"),
    ];
    for file in &files {
        // Byte for byte RFC 8410: version 0, id-Ed25519, the 32-byte seed.
        let der = PrivatePkcs8KeyDer::from_pem_file(file).expect("a PRIVATE KEY PEM");
        let der = der.secret_pkcs8_der();
        assert_eq!(der.len(), 48, "{}", file.display());
        assert_eq!(
            der[..16],
            semel_core::keyfile::RFC8410_PREFIX,
            "{}",
            file.display()
        );
    }
    match Command::new("openssl").arg("version").output() {
        Ok(v) if v.status.success() => {
            for file in &files {
                let out = Command::new("openssl")
                    .args(["pkey", "-noout", "-text", "-in"])
                    .arg(file)
                    .output()
                    .expect("run openssl");
                let text = String::from_utf8_lossy(&out.stdout);
                assert!(
                    out.status.success() && text.contains("ED25519 Private-Key"),
                    "openssl pkey {}: {}{}",
                    file.display(),
                    text,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        _ => eprintln!(
            "\n!!! SKIPPED: openssl is not installed; key files checked byte by byte only !!!\n"
        ),
    }
    let python = Command::new("python3")
        .args(["-c", "import cryptography"])
        .output();
    if python.is_ok_and(|o| o.status.success()) {
        for file in &files {
            let out = Command::new("python3")
                .args([
                    "-c",
                    "import sys\nfrom cryptography.hazmat.primitives.serialization import load_pem_private_key\nfrom cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey\nk = load_pem_private_key(open(sys.argv[1], 'rb').read(), None)\nassert isinstance(k, Ed25519PrivateKey)",
                ])
                .arg(file)
                .output()
                .expect("run python3");
            assert!(
                out.status.success(),
                "python cryptography {}: {}",
                file.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    } else {
        eprintln!("\n!!! SKIPPED: Python cryptography is not installed !!!\n");
    }
}

#[test]
fn pki_token_and_health_print_json_for_scripts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = dir.path().join("pki");
    let json = |args: &[&str]| -> (Option<i32>, serde_json::Value) {
        let out = semel(dir.path(), args);
        let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{args:?}: not JSON ({e}): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code(), v)
    };
    let dir_arg = pki.to_str().expect("utf-8");
    let (code, v) = json(&["pki", "init", "--dir", dir_arg, "--json"]);
    assert_eq!(code, Some(0));
    assert!(
        v["ca"].as_str().is_some_and(|p| p.ends_with("ca.crt")),
        "{v}"
    );
    let (_, v) = json(&[
        "pki",
        "issue",
        "--json",
        "--dir",
        dir_arg,
        "--kbo",
        "0087654346",
        "--name",
        "B",
    ]);
    let cert = v["certificate"].as_str().expect("certificate").to_owned();
    assert!(
        v["key"].as_str().is_some_and(|p| p.ends_with(".key")),
        "{v}"
    );
    let (_, v) = json(&["pki", "fingerprint", "--json", &cert]);
    assert_eq!(
        v["sha256_fingerprint"].as_str().map(str::len),
        Some(64),
        "{v}"
    );
    assert!(
        v["serial"].is_string() && v["issuer_name_sha256"].is_string(),
        "{v}"
    );
    let (_, v) = json(&["pki", "issuer", "--dir", dir_arg, "--json"]);
    assert!(v["jwks"].is_string() && v["private_key"].is_string(), "{v}");
    let (_, v) = json(&[
        "token",
        "--dir",
        dir_arg,
        "--sub",
        "clerk-1",
        "--org",
        "0087654346",
        "--roles",
        "consumer",
        "--json",
    ]);
    assert_eq!(
        v["token"].as_str().map(|t| t.split('.').count()),
        Some(3),
        "{v}"
    );
    assert_eq!(v["roles"], serde_json::json!(["consumer"]), "{v}");
    assert!(v["acr"].is_null(), "{v}");
    // A citizen's token comes from the citizen identity provider, with its
    // authentication level; the citizen role alone.
    let citizen = |extra: &[&str]| {
        let mut args = vec![
            "token",
            "--dir",
            dir_arg,
            "--sub",
            "93051822361",
            "--org",
            "0087654346",
            "--json",
        ];
        args.extend_from_slice(extra);
        json(&args)
    };
    let (_, v) = citizen(&["--roles", "citizen"]);
    assert_eq!(v["issuer"], semel_demo::issuer::DEV_CITIZEN_ISSUER, "{v}");
    assert_eq!(v["acr"], semel_demo::issuer::DEV_CITIZEN_ACR, "{v}");
    let (_, v) = citizen(&["--roles", "citizen", "--acr", "eidas-substantial"]);
    assert_eq!(v["acr"], "eidas-substantial", "{v}");
    let out = semel(
        dir.path(),
        &[
            "token",
            "--dir",
            dir_arg,
            "--sub",
            "93051822361",
            "--org",
            "0087654346",
            "--roles",
            "citizen,consumer",
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("citizen identity provider"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nobody listens on a port just released: still JSON, with the error.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a port")
        .port();
    let (code, v) = json(&[
        "health",
        "--json",
        "--broker",
        &format!("https://127.0.0.1:{port}"),
        "--ca",
        &format!("{dir_arg}/ca.crt"),
    ]);
    assert_eq!(code, Some(1));
    assert!(v["status"].is_null() && v["error"].is_string(), "{v}");
}

/// `semel audit verify` tells tampering from trouble: a file that is not an
/// export, or that is missing, cannot be checked (exit 1); an export whose
/// line was damaged does not verify (exit 4).
#[test]
fn audit_verify_exits_1_for_trouble_and_4_for_tampering() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = semel_core::checkpoint::NoteSigner::new(
        "semel.test/audit",
        semel_store::load_or_create_signing_key(&dir.path().join("signing.key")).expect("key"),
    )
    .verifier_key();
    let verify = |file: &Path| {
        Command::new(env!("CARGO_BIN_EXE_semel"))
            .args(["audit", "verify", "--verifier-key", &key, "--export"])
            .arg(file)
            .output()
            .expect("run semel")
    };
    let missing = verify(&dir.path().join("missing.jsonl"));
    assert_eq!(missing.status.code(), Some(1), "a missing file");
    let other = dir.path().join("other.jsonl");
    std::fs::write(&other, "{\"format\": \"something else\"}\n").expect("write");
    let out = verify(&other);
    assert_eq!(
        out.status.code(),
        Some(1),
        "not an export: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let damaged = dir.path().join("damaged.jsonl");
    std::fs::write(
        &damaged,
        "{\"format\": \"semel-audit-export/1\"}\n{\"type\": \"entry\", \"sequ\n",
    )
    .expect("write");
    let out = verify(&damaged);
    assert_eq!(
        out.status.code(),
        Some(4),
        "a damaged export: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
