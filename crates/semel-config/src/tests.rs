//! The configuration's tests: parsing, the environment's overrides and the
//! checks.

use std::time::Duration;

use super::*;

/// A public Ed25519 key (RFC 8037's example).
const TEST_JWKS: &str = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k1","alg":"EdDSA","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;

#[test]
fn unknown_keys_are_refused_by_name() {
    let err = toml::from_str::<Config>(
        "listen = \"127.0.0.1:1\"\ndata_dir = \"d\"\nlisten_port = 3\n[tls]\ncert=\"c\"\nkey=\"k\"\nclient_ca=\"a\"\n[operator]\nkbo=\"0566988259\"\nname=\"x\"\n",
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(err.contains("listen_port"), "{err}");
}

/// `audit.witness_quorum` is between 1 and the number of witnesses,
/// and defaults to one of them.
#[test]
fn the_witness_quorum_is_checked() {
    let text = include_str!("../../../deploy/semel.example.toml");
    let mut config: Config = toml::from_str(text).expect("example parses");
    let witness = semel_core::checkpoint::Cosigner::new(
        "witness.test/w1",
        ed25519_dalek::SigningKey::from_bytes(&[7; 32]),
    );
    config.audit.witnesses = vec![WitnessSection {
        url: "http://127.0.0.1:8701".into(),
        key: witness.verifier_key(),
    }];
    let settings = config.witness_settings().expect("the default quorum");
    assert_eq!(settings.quorum, 1);
    assert_eq!(settings.unconfirmed_bound, Duration::from_secs(600));
    assert_eq!(settings.refusal_grace, Duration::ZERO);
    for bad in [0, 2] {
        config.audit.witness_quorum = bad;
        let problems = config.problems().join("; ");
        assert!(
            problems.contains("audit.witness_quorum"),
            "{bad}: {problems}"
        );
    }
}

#[test]
fn the_example_in_deploy_parses_and_names_a_valid_operator() {
    let text = include_str!("../../../deploy/semel.example.toml");
    let config: Config = toml::from_str(text).expect("example parses");
    assert!(config.operator_kbo().is_ok());
    assert_eq!(config.source_deadline(), Duration::from_secs(5));
}

/// The database's URL, password included, from a file of its own (a
/// mounted secret), never in the configuration, the arguments or the
/// environment; not both ways at once.
#[test]
fn the_database_url_can_come_from_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("semel.toml");
    let text = include_str!("../../../deploy/semel.example.toml");
    for f in ["broker.crt", "broker.key", "clients-ca.crt"] {
        std::fs::write(dir.path().join(f), "x").expect("write");
    }
    std::fs::write(dir.path().join("cpas-anderlecht.jwks.json"), TEST_JWKS).expect("write");
    let text = text
        .replace("/etc/semel/tls/", "")
        .replace("/etc/semel/issuers/", "")
        .replace("/var/lib/semel", "data");
    std::fs::write(&path, &text).expect("write");
    std::fs::write(
        dir.path().join("database-url"),
        "postgresql://semel:s3cret@db.example:5432/semel\n",
    )
    .expect("write");
    let env = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<Vec<_>>()
    };
    let config = Config::read_with_env(&path, env(&[("SEMEL_STORE__URL_FILE", "database-url")]))
        .expect("reads");
    assert_eq!(
        config.store.postgresql(),
        Some("postgresql://semel:s3cret@db.example:5432/semel")
    );
    let err = Config::read_with_env(
        &path,
        env(&[
            ("SEMEL_STORE__URL_FILE", "database-url"),
            ("SEMEL_STORE__URL", "postgresql://other/semel"),
        ]),
    )
    .expect_err("both");
    assert!(format!("{err:#}").contains("give one"), "{err:#}");
    let err = Config::read_with_env(&path, env(&[("SEMEL_STORE__URL_FILE", "missing")]))
        .expect_err("no such file");
    assert!(format!("{err:#}").contains("store.url_file"), "{err:#}");
}

#[test]
fn the_environment_overrides_keys_and_unknown_names_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("semel.toml");
    let text = include_str!("../../../deploy/semel.example.toml");
    for f in ["broker.crt", "broker.key", "clients-ca.crt"] {
        std::fs::write(dir.path().join(f), "x").expect("write");
    }
    std::fs::write(dir.path().join("cpas-anderlecht.jwks.json"), TEST_JWKS).expect("write");
    let text = text
        .replace("/etc/semel/tls/", "")
        .replace("/etc/semel/issuers/", "")
        .replace("/var/lib/semel", "data");
    std::fs::write(&path, text).expect("write");
    let env = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<Vec<_>>()
    };
    let config = Config::load_with_env(
        &path,
        env(&[
            ("SEMEL_LISTEN", "127.0.0.1:1234"),
            ("SEMEL_SOURCES__DEADLINE_MS", "250"),
            ("SEMEL_LIMITS__CONSUMER_LOOKUPS_PER_SECOND", "50.5"),
            ("SEMEL_LOG", "debug"),
            ("SEMEL_TOKEN_FILE", "/run/secrets/token"),
            ("PATH", "/bin"),
        ]),
    )
    .expect("loads");
    assert_eq!(config.listen, "127.0.0.1:1234".parse().expect("addr"));
    assert_eq!(config.source_deadline(), Duration::from_millis(250));
    assert_eq!(config.limits.consumer_lookups_per_second, Some(50.5));
    // The HTTP/JSON face's limits: the defaults when left out, as the
    // example leaves them, and each key settable.
    let http = config.http.as_ref().expect("the example serves HTTP/JSON");
    let defaults = crate::settings::HttpSettings::default();
    let settings = http.settings();
    assert_eq!(settings.max_connections, defaults.max_connections);
    assert_eq!(
        settings.max_connections_per_address_without_certificate,
        defaults.max_connections_per_address_without_certificate
    );
    assert_eq!(settings.body_timeout, defaults.body_timeout);
    assert_eq!(settings.header_timeout, defaults.header_timeout);
    assert_eq!(settings.max_handshakes, defaults.max_handshakes);
    // The gRPC port's limits: the example names every key, commented
    // out, so the defaults apply; each is settable.
    let grpc = config.grpc.settings();
    let defaults = crate::settings::GrpcSettings::default();
    assert_eq!(grpc.max_concurrent_streams, defaults.max_concurrent_streams);
    assert_eq!(
        grpc.max_connections_without_certificate,
        defaults.max_connections_without_certificate
    );
    assert_eq!(grpc.request_timeout, defaults.request_timeout);
    let config = Config::load_with_env(
        &path,
        env(&[
            ("SEMEL_GRPC__MAX_CONCURRENT_STREAMS", "64"),
            ("SEMEL_GRPC__CONCURRENCY_LIMIT_PER_CONNECTION", "32"),
            ("SEMEL_GRPC__MAX_HEALTH_WATCHES_PER_CONNECTION", "0"),
            ("SEMEL_GRPC__REQUEST_TIMEOUT_MS", "60000"),
        ]),
    )
    .expect("loads");
    let grpc = config.grpc.settings();
    assert_eq!(grpc.max_concurrent_streams, 64);
    assert_eq!(grpc.concurrency_limit_per_connection, 32);
    assert_eq!(grpc.max_health_watches_per_connection, 0);
    assert_eq!(grpc.request_timeout, Duration::from_secs(60));
    let err = format!(
        "{:#}",
        Config::load_with_env(
            &path,
            env(&[
                ("SEMEL_SOURCES__DEADLINE_MS", "90000"),
                ("SEMEL_GRPC__REQUEST_TIMEOUT_MS", "90000"),
            ]),
        )
        .expect_err("a unary call's timeout no longer than the sources' deadline")
    );
    assert!(err.contains("grpc.request_timeout_ms"), "{err}");
    let config = Config::load_with_env(
        &path,
        env(&[
            ("SEMEL_HTTP__MAX_CONNECTIONS_PER_ADDRESS", "16"),
            (
                "SEMEL_HTTP__MAX_CONNECTIONS_PER_ADDRESS_WITHOUT_CERTIFICATE",
                "0",
            ),
            ("SEMEL_HTTP__BODY_TIMEOUT_MS", "1500"),
            ("SEMEL_HTTP__HEADER_TIMEOUT_MS", "20000"),
        ]),
    )
    .expect("loads");
    let settings = config.http.as_ref().expect("http").settings();
    assert_eq!(settings.max_connections_per_address, 16);
    assert_eq!(settings.max_connections_per_address_without_certificate, 0);
    assert_eq!(settings.body_timeout, Duration::from_millis(1500));
    assert_eq!(settings.header_timeout, Duration::from_secs(20));
    let err = format!(
        "{:#}",
        Config::load_with_env(&path, env(&[("SEMEL_LISTEN_PORT", "1")])).expect_err("unknown")
    );
    assert!(
        err.contains("listen_port") && err.contains("SEMEL_LISTEN_PORT"),
        "{err}"
    );
    let err = format!(
        "{:#}",
        Config::load_with_env(&path, env(&[("SEMEL_SOURCES__DEADLINE_MS", "1")]))
            .expect_err("too small")
    );
    assert!(err.contains("sources.deadline_ms"), "{err}");
    // Limits out of range are named, before anything is built with them
    // (a huge batch_in_flight made the channel allocation panic).
    for (key, value, named) in [
        (
            "SEMEL_LIMITS__BATCH_IN_FLIGHT",
            "18446744073709551615",
            "limits.batch_in_flight",
        ),
        (
            "SEMEL_LIMITS__BATCH_IN_FLIGHT",
            "0",
            "limits.batch_in_flight",
        ),
        (
            "SEMEL_LIMITS__DISTINCT_CHECKS_PER_CITIZEN",
            "0",
            "limits.distinct_checks_per_citizen",
        ),
        (
            "SEMEL_LIMITS__REFUSALS_PER_SECOND",
            "-1",
            "limits.refusals_per_second",
        ),
        (
            "SEMEL_LIMITS__CONSUMER_BURST",
            "-1",
            "limits.consumer_burst",
        ),
        (
            "SEMEL_LIMITS__CALLS_PER_SECOND",
            "0",
            "limits.calls_per_second",
        ),
        ("SEMEL_LIMITS__CALL_BURST", "0.5", "limits.call_burst"),
        (
            "SEMEL_LIMITS__CALLS_IN_FLIGHT",
            "0",
            "limits.calls_in_flight",
        ),
        (
            "SEMEL_SOURCES__BREAKER_COOLDOWN_MS",
            "0",
            "sources.breaker_cooldown_ms",
        ),
        ("SEMEL_HTTP__MAX_CONNECTIONS", "0", "http.max_connections"),
        (
            "SEMEL_HTTP__MAX_CONNECTIONS_PER_ADDRESS",
            "5000",
            "http.max_connections_per_address",
        ),
        (
            "SEMEL_HTTP__MAX_CONNECTIONS_PER_ADDRESS_WITHOUT_CERTIFICATE",
            "65",
            "http.max_connections_per_address_without_certificate",
        ),
        (
            "SEMEL_HTTP__MAX_CONNECTIONS_WITHOUT_CERTIFICATE",
            "5000",
            "http.max_connections_without_certificate",
        ),
        ("SEMEL_HTTP__BODY_TIMEOUT_MS", "0", "http.body_timeout_ms"),
        ("SEMEL_HTTP__MAX_HANDSHAKES", "0", "http.max_handshakes"),
        ("SEMEL_GRPC__MAX_CONNECTIONS", "0", "grpc.max_connections"),
        (
            "SEMEL_GRPC__MAX_CONNECTIONS_PER_ADDRESS",
            "5000",
            "grpc.max_connections_per_address",
        ),
        (
            "SEMEL_GRPC__MAX_CONNECTIONS_PER_ADDRESS_WITHOUT_CERTIFICATE",
            "65",
            "grpc.max_connections_per_address_without_certificate",
        ),
        (
            "SEMEL_GRPC__MAX_CONNECTIONS_WITHOUT_CERTIFICATE",
            "5000",
            "grpc.max_connections_without_certificate",
        ),
        ("SEMEL_GRPC__MAX_HANDSHAKES", "0", "grpc.max_handshakes"),
        (
            "SEMEL_GRPC__MAX_CONCURRENT_STREAMS",
            "0",
            "grpc.max_concurrent_streams",
        ),
        (
            "SEMEL_GRPC__CONCURRENCY_LIMIT_PER_CONNECTION",
            "257",
            "grpc.concurrency_limit_per_connection",
        ),
        (
            "SEMEL_GRPC__MAX_CALLS_PER_CONNECTION_WITHOUT_CERTIFICATE",
            "0",
            "grpc.max_calls_per_connection_without_certificate",
        ),
        (
            "SEMEL_GRPC__MAX_CALLS_WITHOUT_CERTIFICATE",
            "2",
            "grpc.max_calls_without_certificate",
        ),
        (
            "SEMEL_GRPC__MAX_HEALTH_WATCHES_PER_CONNECTION",
            "300",
            "grpc.max_health_watches_per_connection",
        ),
        (
            "SEMEL_GRPC__MAX_HEALTH_WATCHES",
            "-1",
            "grpc.max_health_watches",
        ),
        (
            "SEMEL_GRPC__REQUEST_TIMEOUT_MS",
            "100",
            "grpc.request_timeout_ms",
        ),
        (
            "SEMEL_GRPC__KEEPALIVE_INTERVAL_MS",
            "10",
            "grpc.keepalive_interval_ms",
        ),
        (
            "SEMEL_GRPC__KEEPALIVE_TIMEOUT_MS",
            "0",
            "grpc.keepalive_timeout_ms",
        ),
        ("SEMEL_GRPC__MAX_WATCHES", "1", "max_watches"),
        (
            "SEMEL_HTTP__HEADER_TIMEOUT_MS",
            "50",
            "http.header_timeout_ms",
        ),
    ] {
        let err = format!(
            "{:#}",
            Config::load_with_env(&path, env(&[(key, value)])).expect_err(key)
        );
        assert!(err.contains(named), "{key}={value}: {err}");
    }
}

#[test]
fn an_issuer_grants_the_citizen_role_only_when_told_and_with_an_acr() {
    let example = include_str!("../../../deploy/semel.example.toml");
    let settings = |extra: &str| {
        let text = example.replace(
            "max_lifetime_s = 28800\n",
            &format!("max_lifetime_s = 28800\n{extra}"),
        );
        toml::from_str::<Config>(&text)
            .expect("parses")
            .token_settings()
    };
    let default = settings("").expect("settings");
    let issuer = &default.issuers[0];
    assert_eq!(issuer.roles, crate::settings::default_issuer_roles());
    assert!(!issuer.roles.contains(semel_core::UserRole::Citizen));
    assert!(issuer.required_acr.is_empty());
    assert_eq!(issuer.max_lifetime_s, 28800);
    let err = format!(
        "{:#}",
        settings("roles = [\"citizen\"]\n").expect_err("no acr")
    );
    assert!(err.contains("required_acr"), "{err}");
    let err = format!(
        "{:#}",
        settings("roles = [\"mayor\"]\n").expect_err("unknown")
    );
    assert!(
        err.contains("tokens.issuers[0].roles") && err.contains("mayor"),
        "{err}"
    );
    let citizen = settings("roles = [\"citizen\"]\nrequired_acr = [\"high\"]\n").expect("settings");
    assert_eq!(citizen.issuers[0].required_acr, ["high"]);
    // Without max_lifetime_s: 12 hours for citizens' tokens, 24 for others.
    let text = example.replace("max_lifetime_s = 28800\n", "");
    let config: Config = toml::from_str(&text).expect("parses");
    assert_eq!(
        config.token_settings().expect("settings").issuers[0].max_lifetime_s,
        24 * 3600
    );
    let text = example.replace(
        "max_lifetime_s = 28800\n",
        "roles = [\"citizen\"]\nrequired_acr = [\"high\"]\n",
    );
    let config: Config = toml::from_str(&text).expect("parses");
    assert_eq!(
        config.token_settings().expect("settings").issuers[0].max_lifetime_s,
        12 * 3600
    );
    let text = example.replace("max_lifetime_s = 28800\n", "max_lifetime_s = 31536000\n");
    let config: Config = toml::from_str(&text).expect("parses");
    let err = format!("{:#}", config.token_settings().expect_err("a year"));
    assert!(err.contains("max_lifetime_s"), "{err}");
}

#[test]
fn a_bad_value_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("semel.toml");
    std::fs::write(
        &path,
        include_str!("../../../deploy/semel.example.toml").replace("0087654346", "0087654347"),
    )
    .expect("write");
    // The enterprise number is checked before any file.
    let err = format!("{:#}", Config::load(&path).expect_err("bad kbo"));
    assert!(err.contains("operator.kbo"), "{err}");
}
