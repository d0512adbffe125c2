//! What the PostgreSQL store's tests share.

use semel_core::seal::RowSealer;
use semel_core::{AuditDecision, AuditRecord, Kbo, Niss, Outcome};
use semel_postgres::{PgAudit, PgRegistry, testing::TestDatabase};
use semel_storage::{Appended, RegistryStore, RegistryWrite, Staged, StorageError};

/// The `i`th test record: one citizen, two consumers alternating.
pub fn record(i: u64) -> AuditRecord {
    AuditRecord {
        request_id: [(i % 251) as u8; 16],
        time_micros: 1_700_000_000_000_000 + i as i64,
        operation: semel_core::LOOKUP_OPERATION.into(),
        consumer: Kbo::parse(if i.is_multiple_of(2) {
            "0566988259"
        } else {
            "0314595348"
        })
        .expect("kbo"),
        end_user: Some(format!("clerk-{i}")),
        citizen: Niss::parse("93051822361").ok(),
        dataset: "national_register.residence".into(),
        fields_requested: vec!["street".into()],
        fields_returned: vec!["street".into()],
        purpose: "RIS_ELIGIBILITY".into(),
        authorisation: Some("BSC/2024/017".into()),
        authorisation_version: None,
        decision: AuditDecision::Allowed,
        reason: None,
        outcome: Outcome::Answered,
        source: None,
        consumer_reference: String::new(),
        reference_date: None,
        citizen_as_given: None,
        checks: Vec::new(),
        detail: String::new(),
    }
}

/// What the tests' brokers seal rows with.
#[allow(dead_code)] // not every test binary seals
pub fn sealer() -> RowSealer {
    RowSealer::derive(&[42; 32])
}

/// A registry that seals with [`sealer`].
#[allow(dead_code)]
pub async fn sealed_registry(db: &TestDatabase) -> PgRegistry {
    PgRegistry::connect(&db.url)
        .await
        .expect("registry")
        .sealed_by(sealer())
}

/// Appends one entry to the log, as a broker records a change.
#[allow(dead_code)]
pub async fn entry(log: &mut PgAudit, i: u64) -> Appended {
    let placed = log.append(vec![record(i)]).await.expect("append");
    Appended {
        sequence: placed[0].sequence,
        hash: placed[0].hash,
    }
}

/// Stages `writes`, records them, and seals them with their entry.
#[allow(dead_code)]
pub async fn change(
    reg: &PgRegistry,
    log: &mut PgAudit,
    i: u64,
    writes: &[RegistryWrite],
) -> Result<(), StorageError> {
    let Staged::Open(open) = reg.stage(writes).await? else {
        panic!("PostgreSQL stages in an open transaction");
    };
    open.seal(entry(log, i).await).await
}
