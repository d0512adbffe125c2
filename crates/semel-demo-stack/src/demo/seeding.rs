//! The demo's registry and persons directory, seeded where they differ from
//! the demo's.

use semel_demo::Population;
use semel_demo::seed::{self, DemoOrg};
use semel_storage::Storage;
use time::OffsetDateTime;

/// Registers the demo organisations, purposes and authorisations if
/// missing, and (re)points the demo datasets at the sources' current
/// addresses: one change, recorded in the audit log by the operator (no
/// rule without its entry), made only where something differs.
pub(super) async fn seed_registry(
    storage: &Storage,
    operator: semel_core::Kbo,
    orgs: &[DemoOrg],
    endpoint: impl Fn(&str) -> String,
) -> anyhow::Result<()> {
    use semel_storage::RegistryWrite;
    let now = OffsetDateTime::now_utc();
    let reg = &storage.registry;
    let mut writes = Vec::new();
    for o in orgs {
        if reg.organisation(&o.kbo).await?.is_none() {
            writes.push(RegistryWrite::Organisation {
                after: Box::new(o.to_organisation(now)),
                before: None,
            });
        }
    }
    let datasets = reg.datasets().await?;
    for d in seed::datasets(endpoint) {
        let before = datasets.iter().find(|s| s.name == d.name);
        if before != Some(&d) {
            writes.push(RegistryWrite::Dataset {
                after: Box::new(d),
                before: before.cloned().map(Box::new),
            });
        }
    }
    let purposes = reg.purposes().await?;
    for p in seed::purposes() {
        let before = purposes.iter().find(|s| s.code == p.code);
        if before != Some(&p) {
            writes.push(RegistryWrite::Purpose {
                after: Box::new(p),
                before: before.cloned().map(Box::new),
            });
        }
    }
    let existing: std::collections::BTreeSet<String> = reg
        .authorisations()
        .await?
        .into_iter()
        .map(|a| a.reference.to_string())
        .collect();
    for a in seed::authorisations(now) {
        if !existing.contains(a.reference.as_str()) {
            writes.push(RegistryWrite::Authorisation {
                after: Box::new(a),
                before: None,
            });
        }
    }
    let detail = format!(
        "the demo's registry: {} records registered or pointed at the demo sources' addresses ({})",
        writes.len(),
        writes
            .iter()
            .map(RegistryWrite::name)
            .collect::<Vec<_>>()
            .join(", ")
    );
    // An entry states its change whole; the demo's names are short, but a
    // detail that cannot hold them all says how many instead.
    let detail = if detail.len() > semel_core::MAX_DETAIL {
        format!(
            "the demo's registry: {} records registered or pointed at the demo sources' addresses",
            writes.len()
        )
    } else {
        detail
    };
    semel_server::stores::record_registry(
        storage,
        operator,
        "semel.seed/Registry",
        &detail,
        &writes,
    )
    .await
}

/// Opens the demo persons directory's files, the first time only: files
/// closed in a demo stay closed across restarts.
pub(super) async fn seed_files(
    storage: &Storage,
    operator: semel_core::Kbo,
    population: &Population,
) -> anyhow::Result<()> {
    let people: Vec<semel_core::Niss> = population.people.iter().map(|p| p.niss).collect();
    let files = seed::files(&people, OffsetDateTime::now_utc());
    let Some(first) = files.first() else {
        return Ok(());
    };
    let persons = &storage.persons;
    if persons
        .file(&first.consumer, &first.citizen, &first.id)
        .await?
        .is_none()
    {
        semel_server::stores::seed_files(storage, operator, &files, "the demo's persons directory")
            .await?;
    }
    Ok(())
}
