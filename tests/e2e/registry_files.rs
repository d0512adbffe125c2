//! The registry as reviewed files: exported, edited, planned and applied, and the demo's shipped files.

use semel_demo::seed::datasets::*;
use semel_server::proto::{self, registry_service_client::RegistryServiceClient};
use tonic::Code;

use crate::harness::*;

/// The registry as reviewed files: export, edit, plan, apply; lookups follow
/// the new version, the entry of a lookup before the change still names the
/// old one; broken rules come back all at once, located by file and line,
/// with nothing applied; applying twice changes nothing.
#[tokio::test]
async fn the_registry_round_trips_through_reviewed_files() {
    use semel_client::registry_files;
    let t = TestDemo::start().await;
    let mut reg = t.registry().await;
    let mut c = t.lookup_client(ANDERLECHT).await;
    let street = lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY");
    c.lookup(street.clone()).await.expect("allowed before");

    // Export.
    let dir = export_registry(&t).await;
    let apply = |read: &registry_files::Read, dry_run: bool| {
        let mut r = read.request.clone();
        r.dry_run = dry_run;
        r.reason = "reviewed in !42".into();
        r
    };
    let unchanged = proto::PlannedAction::Unchanged as i32;

    // As exported, nothing to do.
    let read = registry_files::read_dir(dir.path()).expect("read");
    let plan = reg
        .apply_registry(apply(&read, true))
        .await
        .expect("plan")
        .into_inner();
    assert!(
        plan.changes.iter().all(|c| c.action == unchanged),
        "{plan:?}"
    );

    // Edit: BSC/2024/017 loses street; a new purpose, and an authorisation
    // under it; BSC/2024/020 suspended.
    let path = dir.path().join("authorisations.toml");
    let text = std::fs::read_to_string(&path).expect("read");
    let at = text.find("reference = \"BSC/2024/017\"").expect("017");
    let street_at = at + text[at..].find("\"street\",").expect("street");
    let mut edited = format!(
        "{}{}",
        &text[..street_at],
        &text[street_at + "\"street\",".len()..]
    );
    let at = edited.find("reference = \"BSC/2024/020\"").expect("020");
    edited.insert_str(at, "status = \"suspended\"\n");
    let anderlecht = semel_demo::seed::org(ANDERLECHT).expect("org").kbo;
    edited.push_str(&format!(
        "\n[[authorisation]]\nreference = \"BSC/2026/200\"\nconsumer = \"{}\"\ndataset = \"{RESIDENCE}\"\npurpose = \"DEBT_MEDIATION\"\nfields = [\"municipality\"]\nlegal_basis = \"Ordonnance du 2026\"\nissuing_body = \"BSC\"\nvalid_from = \"2026-01-01\"\n",
        anderlecht.as_str()
    ));
    std::fs::write(&path, &edited).expect("write");
    std::fs::write(
        dir.path().join("purposes-2026.toml"),
        "[[purpose]]\ncode = \"DEBT_MEDIATION\"\ndescription = \"Collective debt mediation\"\nlegal_basis = \"Code judiciaire, art. 1675/2\"\n",
    )
    .expect("write");

    // Dry run: the plan, and nothing changed yet.
    let read = registry_files::read_dir(dir.path()).expect("read");
    let plan = reg
        .apply_registry(apply(&read, true))
        .await
        .expect("plan")
        .into_inner();
    assert!(!plan.applied);
    let planned: Vec<(String, i32)> = plan
        .changes
        .iter()
        .filter(|c| c.action != unchanged)
        .map(|c| (c.key.clone(), c.action))
        .collect();
    assert_eq!(
        planned,
        [
            (
                "DEBT_MEDIATION".to_owned(),
                proto::PlannedAction::Create as i32
            ),
            (
                "BSC/2024/017".to_owned(),
                proto::PlannedAction::Amend as i32
            ),
            (
                "BSC/2024/020".to_owned(),
                proto::PlannedAction::Suspend as i32
            ),
            (
                "BSC/2026/200".to_owned(),
                proto::PlannedAction::Create as i32
            ),
        ]
    );
    c.lookup(street.clone())
        .await
        .expect("a dry run changes nothing");

    // Apply: lookups follow the new version.
    let applied = reg
        .apply_registry(apply(&read, false))
        .await
        .expect("apply")
        .into_inner();
    assert!(applied.applied);
    assert_error(
        &c.lookup(street.clone())
            .await
            .expect_err("street no longer"),
        Code::PermissionDenied,
        "FIELD_NOT_ALLOWED",
    );
    let entries = t.audit_entries().await;
    let lookups: Vec<&proto::AuditEntry> = entries
        .iter()
        .filter(|e| e.operation == "semel.v1.LookupService/Lookup")
        .collect();
    let (before, after) = (lookups[lookups.len() - 2], lookups[lookups.len() - 1]);
    assert_eq!(
        (before.authorisation_version, after.authorisation_version),
        (1, 2)
    );
    // Each change has its entry, the apply its closing one.
    let of_apply: Vec<&proto::AuditEntry> = entries
        .iter()
        .filter(|e| e.operation == "semel.v1.RegistryService/ApplyRegistry")
        .collect();
    assert_eq!(of_apply.len(), 5, "four changes and the closing entry");
    assert!(
        of_apply[..4]
            .iter()
            .all(|e| e.consumer_reference == of_apply[4].consumer_reference)
    );
    assert!(
        of_apply[4]
            .detail
            .contains("2 created, 1 amended, 1 suspended"),
        "{}",
        of_apply[4].detail
    );
    // Applying the same files again changes nothing.
    let again = reg
        .apply_registry(apply(&read, false))
        .await
        .expect("again")
        .into_inner();
    assert!(again.changes.iter().all(|c| c.action == unchanged));

    // Files written before an emergency suspension do not lift it: their
    // authorisation is an older version than the stored one.
    reg.suspend_authorisation(proto::SuspendAuthorisationRequest {
        reference: "BSC/2024/017".into(),
        reason: "incident".into(),
    })
    .await
    .expect("suspend");
    let stale = reg
        .apply_registry(apply(&read, true))
        .await
        .expect_err("the files are older than the registry");
    assert_error(&stale, Code::InvalidArgument, "REGISTRY_INVALID");
    assert!(stale.message().contains("CONFLICT"), "{}", stale.message());
    reg.reinstate_authorisation(proto::ReinstateAuthorisationRequest {
        reference: "BSC/2024/017".into(),
    })
    .await
    .expect("reinstate");

    // Broken rules: every one at once, each locatable, nothing applied.
    let mut broken = edited.replace(
        "purpose = \"DEBT_MEDIATION\"",
        "purpose = \"NO_SUCH_PURPOSE\"",
    );
    let at = broken.find("reference = \"BSC/2024/017\"").expect("017");
    let nis = at + broken[at..].find("\"nis_code\",").expect("nis_code");
    broken.replace_range(nis..nis + "\"nis_code\",".len(), "\"shoe_size\",");
    std::fs::write(&path, &broken).expect("write");
    std::fs::write(
        dir.path().join("purposes-2026.toml"),
        "[[purpose]]\ncode = \"DEBT_MEDIATION\"\ndescription = \"Changed\"\nlegal_basis = \"Code judiciaire, art. 1675/2\"\n",
    )
    .expect("write");
    let read = registry_files::read_dir(dir.path()).expect("read");
    let err = reg
        .apply_registry(apply(&read, false))
        .await
        .expect_err("broken");
    assert_error(&err, Code::InvalidArgument, "REGISTRY_INVALID");
    let violations: Vec<String> = {
        use tonic_types::StatusExt;
        err.get_error_details()
            .bad_request()
            .expect("violations")
            .field_violations
            .iter()
            .map(|v| read.locate_with(&v.field, &v.description).expect("located"))
            .collect()
    };
    // The unknown field, the unknown purpose, BSC/2024/017 changed since
    // these files were written, and BSC/2026/200 (registered by the first
    // apply) described without the version it now has.
    assert_eq!(violations.len(), 4, "{violations:?}");
    let line_of = |needle: &str| {
        broken
            .lines()
            .position(|l| l.contains(needle))
            .expect("line")
            + 1
    };
    assert!(
        violations
            .iter()
            .any(|v| v.ends_with(&format!("authorisations.toml:{}", line_of("shoe_size")))),
        "{violations:?}"
    );
    assert!(
        violations.iter().any(|v| v.ends_with(&format!(
            "authorisations.toml:{}",
            line_of("NO_SUCH_PURPOSE")
        ))),
        "{violations:?}"
    );
    let purpose = reg
        .list_purposes(proto::ListPurposesRequest {})
        .await
        .expect("purposes")
        .into_inner()
        .purposes
        .into_iter()
        .find(|p| p.code == "DEBT_MEDIATION")
        .expect("purpose");
    assert_eq!(
        purpose.description, "Collective debt mediation",
        "nothing of a refused apply is applied"
    );
    // Only an administrator applies.
    assert_error(
        &RegistryServiceClient::new(t.channel(ANDERLECHT).await)
            .apply_registry(apply(&read, true))
            .await
            .expect_err("not an administrator"),
        Code::PermissionDenied,
        "ROLE_NOT_PERMITTED",
    );
    t.stop().await;
}

/// The demo's registry is shipped as reviewed files (deploy/demo-registry):
/// they describe exactly what the demo seeds, endpoints aside (its sources
/// listen on ports chosen at start).
#[tokio::test]
async fn the_shipped_demo_registry_files_describe_the_demo() {
    let t = TestDemo::start().await;
    let mut reg = t.registry().await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/demo-registry");
    let read = semel_client::registry_files::read_dir(&dir).expect("the shipped files read");
    let live = reg
        .list_datasets(proto::ListDatasetsRequest {})
        .await
        .expect("datasets")
        .into_inner()
        .datasets;
    let mut request = read.request.clone();
    for d in &mut request.datasets {
        d.endpoint = live
            .iter()
            .find(|l| l.name == d.name)
            .map(|l| l.endpoint.clone())
            .unwrap_or_default();
    }
    request.dry_run = true;
    let plan = reg
        .apply_registry(request)
        .await
        .expect("plan")
        .into_inner();
    let changed: Vec<_> = plan
        .changes
        .iter()
        .filter(|c| c.action != proto::PlannedAction::Unchanged as i32)
        .collect();
    assert!(
        changed.is_empty(),
        "regenerate with `semel registry export`: {changed:?}"
    );
    let authorisations = reg
        .list_authorisations(proto::ListAuthorisationsRequest::default())
        .await
        .expect("auths")
        .into_inner()
        .authorisations;
    assert_eq!(read.request.authorisations.len(), authorisations.len());
    assert_eq!(read.request.datasets.len(), live.len());
    t.stop().await;
}
