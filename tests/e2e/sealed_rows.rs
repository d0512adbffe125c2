//! No rule without its entry (issue 36): a file in the persons directory
//! is honoured only when a broker wrote it after recording its change, and
//! as it wrote it. On PostgreSQL, a database administrator's INSERT or
//! UPDATE grants nothing; on the embedded store only the broker writes.

use semel_demo::seed::datasets::*;
use semel_server::proto;
use tonic::Code;

use crate::harness::*;

/// A person of the demo's population on whom the CPAS of the City of
/// Brussels holds no file (the demo opens none for it), one per `i`, and
/// whom no other test reads.
fn person(t: &TestDemo, i: usize) -> String {
    t.demo().population.people[1_000 + i]
        .niss
        .as_str()
        .to_owned()
}

fn cpas() -> String {
    semel_demo::seed::org(BRUXELLES_CPAS)
        .expect("the CPAS")
        .kbo
        .as_str()
        .to_owned()
}

/// Whether a lookup of `citizen` by the CPAS's clerk passed the file
/// check (answered, or refused for another reason).
async fn passes_file_check(t: &TestDemo, citizen: &str) -> bool {
    let mut clerk = t.lookup_client(BRUXELLES_CPAS).await;
    match clerk
        .lookup(lookup(citizen, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
        .await
    {
        Ok(_) => true,
        Err(e) => {
            let (reason, _, _) = error_info(&e);
            if reason == "NO_ACTIVE_FILE" {
                assert_eq!(e.code(), Code::PermissionDenied);
                false
            } else {
                true
            }
        }
    }
}

#[tokio::test]
async fn a_file_written_by_sql_grants_nothing() {
    let t = TestDemo::start().await;
    // A file registered through the broker is honoured (both stores).
    let genuine = person(&t, 0);
    t.open_file(BRUXELLES_CPAS, &genuine, "RIS_APPLICANT").await;
    assert!(
        passes_file_check(&t, &genuine).await,
        "a file registered through the broker opens lookups"
    );
    let Some(db) = t.db.as_ref() else {
        eprintln!("PostgreSQL only from here: on the embedded store only the broker writes");
        t.stop().await;
        return;
    };
    let kbo = cpas();

    // 1. A row inserted by SQL, a copy of the genuine one under another
    //    citizen and id.
    let forged = person(&t, 1);
    db.sql(&format!(
        "INSERT INTO person_files (consumer, citizen, id, value) \
         SELECT consumer, '{forged}', 'forged-1', \
                value || jsonb_build_object('citizen', '{forged}', 'id', 'forged-1') \
         FROM person_files WHERE consumer = '{kbo}' AND citizen = '{genuine}'"
    ))
    .await
    .expect("insert");
    assert!(
        !passes_file_check(&t, &forged).await,
        "a file inserted by SQL opened a lookup"
    );

    // 2. The same, carrying the genuine row's entry and seal.
    let copied = person(&t, 2);
    db.sql(&format!(
        "INSERT INTO person_files (consumer, citizen, id, value, audit_sequence, audit_hash, seal) \
         SELECT consumer, '{copied}', 'forged-2', \
                value || jsonb_build_object('citizen', '{copied}', 'id', 'forged-2'), \
                audit_sequence, audit_hash, seal \
         FROM person_files WHERE consumer = '{kbo}' AND citizen = '{genuine}'"
    ))
    .await
    .expect("insert with a copied seal");
    assert!(
        !passes_file_check(&t, &copied).await,
        "a file carrying another file's seal opened a lookup"
    );

    // 3. A genuine file that ended, edited by SQL to run on.
    let ended = person(&t, 3);
    let yesterday = time::OffsetDateTime::now_utc().date() - time::Duration::days(1);
    let begins = yesterday - time::Duration::days(30);
    t.persons_client(BRUXELLES_CPAS)
        .await
        .register_file(proto::RegisterFileRequest {
            file: Some(proto::PersonFile {
                citizen: ended.clone(),
                capacity: "RIS_APPLICANT".into(),
                phase: proto::FilePhase::Provisional as i32,
                begin_date: begins.to_string(),
                end_date: yesterday.to_string(),
                ..Default::default()
            }),
        })
        .await
        .expect("register an ended file");
    let edited = db
        .sql(&format!(
            "UPDATE person_files SET value = value - 'ends' \
             WHERE consumer = '{kbo}' AND citizen = '{ended}' RETURNING id"
        ))
        .await
        .expect("update");
    assert_eq!(edited.len(), 1, "the ended file is in the database");
    assert!(
        !passes_file_check(&t, &ended).await,
        "a file whose end was removed by SQL opened a lookup"
    );

    // 4. A genuine file pointed at another genuine entry (the audit log
    //    itself untouched: an entry rewritten is the log's own defences'
    //    to catch, see audit_integrity.rs).
    let repointed = person(&t, 4);
    t.open_file(BRUXELLES_CPAS, &repointed, "RIS_APPLICANT")
        .await;
    db.sql(&format!(
        "UPDATE person_files AS r SET audit_sequence = g.audit_sequence, audit_hash = g.audit_hash \
         FROM person_files AS g \
         WHERE r.consumer = '{kbo}' AND r.citizen = '{repointed}' \
           AND g.consumer = '{kbo}' AND g.citizen = '{genuine}'"
    ))
    .await
    .expect("point the file at another entry");
    assert!(
        !passes_file_check(&t, &repointed).await,
        "a file pointed at another file's audit entry opened a lookup"
    );

    // The genuine file still opens lookups, and the broker counted what it
    // refused to honour.
    assert!(passes_file_check(&t, &genuine).await);
    let metrics = t.demo().broker.metrics.render(
        t.demo().broker.storage().audit.stats(),
        semel_server::metrics::Format::Prometheus,
    );
    let unsealed: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("semel_persons_unsealed_rows_total "))
        .expect("the metric")
        .trim()
        .parse()
        .expect("a number");
    assert!(unsealed >= 4.0, "{unsealed} rows counted as unsealed");
    t.stop().await;
}

/// The reason a lookup by the CPAS's clerk of `citizen`'s residence for
/// `purpose` got (`None`: answered).
async fn cpas_lookup(t: &TestDemo, citizen: &str, purpose: &str) -> Option<String> {
    let mut clerk = t.lookup_client(BRUXELLES_CPAS).await;
    match clerk
        .lookup(lookup(citizen, RESIDENCE, &["street"], purpose))
        .await
    {
        Ok(_) => None,
        Err(e) => Some(error_info(&e).0),
    }
}

/// Until `done` says yes of the CPAS's lookup's outcome, for up to 10 s
/// (a change made by SQL reaches the brokers by the registry's NOTIFY).
async fn until(
    t: &TestDemo,
    citizen: &str,
    purpose: &str,
    done: impl Fn(&Option<String>) -> bool,
) -> Option<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let got = cpas_lookup(t, citizen, purpose).await;
        if done(&got) || std::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_rule_written_by_sql_grants_nothing() {
    let t = TestDemo::start().await;
    let citizen = person(&t, 10);
    t.open_file(BRUXELLES_CPAS, &citizen, "RIS_APPLICANT").await;
    // The genuine authorisation: the CPAS reads residence for RIS.
    assert_eq!(cpas_lookup(&t, &citizen, "RIS_ELIGIBILITY").await, None);
    // None for social housing.
    let refused = cpas_lookup(&t, &citizen, "SOCIAL_HOUSING").await;
    assert!(
        matches!(
            refused.as_deref(),
            Some("PURPOSE_NOT_ALLOWED" | "NO_AUTHORISATION")
        ),
        "{refused:?}"
    );
    let Some(db) = t.db.as_ref() else {
        eprintln!("PostgreSQL only from here: on the embedded store only the broker writes");
        t.stop().await;
        return;
    };
    let kbo = cpas();
    let genuine = db
        .sql(&format!(
            "SELECT key FROM registry_records WHERE kind = 'authorisation' \
               AND value->>'consumer' = '{kbo}' AND value->>'dataset' = '{RESIDENCE}' \
               AND value->>'purpose' = 'RIS_ELIGIBILITY'"
        ))
        .await
        .expect("the genuine authorisation");
    let reference = genuine[0][0].clone().expect("a reference");
    let announce = "UPDATE registry_version SET version = version + 1 WHERE id = 0; \
                    SELECT pg_notify('semel_registry', 'sql')";

    // 1. An authorisation inserted by SQL, a copy of the genuine one for
    //    another purpose, its seal and entry copied too.
    db.sql(&format!(
        "INSERT INTO registry_records (kind, key, value, audit_sequence, audit_hash, seal) \
         SELECT 'authorisation', 'FORGED/2026/1', \
                value || jsonb_build_object('reference', 'FORGED/2026/1', 'purpose', 'SOCIAL_HOUSING'), \
                audit_sequence, audit_hash, seal \
         FROM registry_records WHERE kind = 'authorisation' AND key = '{reference}'; {announce}"
    ))
    .await
    .expect("insert a forged authorisation");
    // Given time to be read (the genuine rule's lookups go on meanwhile).
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    assert_eq!(
        cpas_lookup(&t, &citizen, "SOCIAL_HOUSING").await,
        refused,
        "an authorisation inserted by SQL opened a lookup"
    );
    assert_eq!(cpas_lookup(&t, &citizen, "RIS_ELIGIBILITY").await, None);

    // 2. The genuine authorisation widened by SQL to another purpose: not
    //    honoured at all, not even as it was.
    db.sql(&format!(
        "UPDATE registry_records SET value = value || jsonb_build_object('purpose', 'SOCIAL_HOUSING') \
         WHERE kind = 'authorisation' AND key = '{reference}'; {announce}"
    ))
    .await
    .expect("edit the genuine authorisation");
    let edited = until(&t, &citizen, "RIS_ELIGIBILITY", |r| r.is_some()).await;
    assert!(
        matches!(
            edited.as_deref(),
            Some("PURPOSE_NOT_ALLOWED" | "NO_AUTHORISATION")
        ),
        "an authorisation edited by SQL is no longer honoured: {edited:?}"
    );
    assert!(
        cpas_lookup(&t, &citizen, "SOCIAL_HOUSING").await.is_some(),
        "an authorisation edited by SQL opened a lookup"
    );

    // 3. Put back as it was sealed, it is honoured again: the seal is over
    //    what the row says.
    db.sql(&format!(
        "UPDATE registry_records SET value = value || jsonb_build_object('purpose', 'RIS_ELIGIBILITY') \
         WHERE kind = 'authorisation' AND key = '{reference}'; {announce}"
    ))
    .await
    .expect("put the authorisation back as sealed");
    assert_eq!(
        until(&t, &citizen, "RIS_ELIGIBILITY", |r| r.is_none()).await,
        None,
        "the authorisation as sealed is honoured again"
    );

    let metrics = t.demo().broker.metrics.render(
        t.demo().broker.storage().audit.stats(),
        semel_server::metrics::Format::Prometheus,
    );
    let unsealed: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("semel_registry_unsealed_rows_total "))
        .expect("the metric")
        .trim()
        .parse()
        .expect("a number");
    assert!(unsealed >= 2.0, "{unsealed} rules counted as unsealed");
    t.stop().await;
}

#[tokio::test]
async fn a_replacement_written_by_sql_grants_nothing() {
    let t = TestDemo::start().await;
    // The CPAS holds a file on one person, none on another.
    let held = person(&t, 20);
    let other = person(&t, 21);
    t.open_file(BRUXELLES_CPAS, &held, "RIS_APPLICANT").await;
    assert!(passes_file_check(&t, &held).await);
    assert!(!passes_file_check(&t, &other).await);
    let Some(db) = t.db.as_ref() else {
        eprintln!("PostgreSQL only from here: on the embedded store only the broker writes");
        t.stop().await;
        return;
    };
    // A replacement inserted by SQL: the held person's number "replaced" by
    // the other's, so that the file under the former would count for the
    // latter.
    let forged = semel_core::NumberReplacement {
        old: semel_core::Niss::parse(&held).expect("niss"),
        new: semel_core::Niss::parse(&other).expect("niss"),
        replaced_on: time::OffsetDateTime::now_utc().date(),
        registered_by: semel_core::Kbo::parse(&cpas()).expect("kbo"),
        registered_at: time::OffsetDateTime::now_utc(),
    };
    let value = serde_json::to_string(&forged).expect("json");
    db.sql(&format!(
        "INSERT INTO number_replacements (old, new, value) VALUES ('{held}', '{other}', '{value}'::jsonb)"
    ))
    .await
    .expect("insert a forged replacement");
    // Given time to reach the brokers' memory (the change feed).
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    assert!(
        !passes_file_check(&t, &other).await,
        "a replacement inserted by SQL made another person's file count"
    );
    assert!(passes_file_check(&t, &held).await);
    t.stop().await;
}

/// Whether a call with the CPAS's certificate is refused as revoked.
async fn cpas_revoked(t: &TestDemo) -> bool {
    let citizen = person(t, 30);
    let mut clerk = t.lookup_client(BRUXELLES_CPAS).await;
    match clerk
        .lookup(lookup(&citizen, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
        .await
    {
        Ok(_) => false,
        Err(e) => {
            let revoked = error_info(&e).0 == "CERTIFICATE_REVOKED";
            if revoked {
                assert_eq!(e.code(), Code::Unauthenticated);
            }
            revoked
        }
    }
}

#[tokio::test]
async fn a_revocation_deleted_by_sql_still_refuses_its_certificate() {
    let t = TestDemo::start().await;
    assert!(!cpas_revoked(&t).await, "not revoked yet");
    let files = t.demo().client(BRUXELLES_CPAS).expect("files");
    let fingerprint = semel_server::tls::certificate_ids(&files.cert)
        .expect("certificate ids")
        .fingerprint;
    let mut reg = t.registry().await;
    reg.revoke_certificate(proto::RevokeCertificateRequest {
        sha256_fingerprint: fingerprint.clone(),
        reason: "laptop stolen".into(),
        ..Default::default()
    })
    .await
    .expect("revoke");
    assert!(cpas_revoked(&t).await, "revoked through the broker");
    let Some(db) = t.db.as_ref() else {
        eprintln!("PostgreSQL only from here: on the embedded store only the broker writes");
        t.stop().await;
        return;
    };
    // The revocation deleted by a database administrator, and the brokers
    // told to reload.
    let deleted = db
        .sql(&format!(
            "DELETE FROM registry_records WHERE kind = 'revoked_certificate' \
               AND key = 'sha256:{fingerprint}' RETURNING key"
        ))
        .await
        .expect("delete the revocation");
    assert_eq!(deleted.len(), 1, "the revocation was in the database");
    db.sql(
        "UPDATE registry_version SET version = version + 1 WHERE id = 0; \
         SELECT pg_notify('semel_registry', 'sql')",
    )
    .await
    .expect("announce");
    // Given time to be read.
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    assert!(
        cpas_revoked(&t).await,
        "a revocation deleted by SQL re-admitted its certificate"
    );
    // The operator still sees it, and the broker counted what it found.
    let listed = reg
        .list_revoked_certificates(proto::ListRevokedCertificatesRequest {})
        .await
        .expect("list")
        .into_inner()
        .revoked;
    assert!(
        listed.iter().any(|r| r.sha256_fingerprint == fingerprint),
        "{listed:?}"
    );
    let metrics = t.demo().broker.metrics.render(
        t.demo().broker.storage().audit.stats(),
        semel_server::metrics::Format::Prometheus,
    );
    let unsealed: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("semel_registry_unsealed_rows_total "))
        .expect("the metric")
        .trim()
        .parse()
        .expect("a number");
    assert!(unsealed >= 1.0, "{unsealed} rules counted as unsealed");
    t.stop().await;
}
