//! The second insider review (issue 29), held: an organisation's auditor
//! learns no citizen from what it was refused; every change of the rules
//! leaves an entry that states it whole, whatever the length of its texts
//! and through whichever path; applications are bounded and paged.

use std::time::Duration;

use semel_core::UserRole;
use semel_demo::seed::datasets::*;
use semel_server::proto::{
    self, audit_service_client::AuditServiceClient, consent_service_client::ConsentServiceClient,
    registry_service_client::RegistryServiceClient,
};
use tonic::Code;

use crate::harness::*;

fn kbo(slug: &str) -> String {
    semel_demo::seed::org(slug)
        .expect("org")
        .kbo
        .as_str()
        .to_owned()
}

/// A demo that signs a checkpoint every few entries, so proofs can be had.
async fn start_checkpointing() -> TestDemo {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut opts, db) = demo_options(dir.path()).await;
    opts.checkpoint_every_entries = 5;
    TestDemo {
        demo: Some(semel_demo_stack::Demo::start(opts).await.expect("start")),
        dir,
        db,
    }
}

/// The size of the newest checkpoint, once one covers `size` entries.
async fn checkpointed(t: &TestDemo, size: u64) -> u64 {
    let mut auditor = t.audit().await;
    for _ in 0..200 {
        let r = auditor
            .get_latest_checkpoint(proto::GetLatestCheckpointRequest {})
            .await
            .expect("checkpoint")
            .into_inner();
        if let Some(c) = r.checkpoint.filter(|c| c.tree_size >= size) {
            return c.tree_size;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no checkpoint of {size} entries");
}

/// Finding 1: asking for the proof of every entry of the log, then reading
/// its own organisation's entries, an organisation's auditor learns no
/// citizen of another organisation's entries: a refusal records what was
/// asked (the sequence), never what was refused. The same for a consent's
/// purpose when withdrawing another organisation's consent is refused.
#[tokio::test]
async fn an_organisations_auditor_learns_no_citizen_from_what_it_was_refused() {
    let t = start_checkpointing().await;
    // CPAS Anderlecht consults Karim and Jan.
    let mut c = t.lookup_client(ANDERLECHT).await;
    for citizen in [KARIM, JAN, KARIM, JAN, KARIM, JAN] {
        c.lookup(lookup(citizen, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
            .await
            .expect("allowed");
    }
    let size = checkpointed(&t, t.audit_size().await).await;

    // The commune's own auditor (its DPO) asks for every entry's proof.
    let token = t.token(SCHAERBEEK, &[UserRole::Auditor]);
    let mut dpo = AuditServiceClient::new(t.channel_as(SCHAERBEEK, &token).await);
    let mut refused = 0;
    for sequence in 0..size {
        match dpo
            .get_inclusion_proof(proto::GetInclusionProofRequest {
                sequence,
                tree_size: size,
            })
            .await
        {
            Ok(r) => {
                let entry = r.into_inner().entry.expect("entry");
                assert_eq!(entry.consumer_kbo, kbo(SCHAERBEEK));
            }
            Err(e) => {
                assert_error(&e, Code::PermissionDenied, "OTHER_ORGANISATION");
                refused += 1;
            }
        }
    }
    assert!(refused >= 6, "{refused}");

    // Its own entries record each refusal, and name no citizen.
    let own = dpo
        .list_audit_entries(proto::ListAuditEntriesRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .expect("own entries")
        .into_inner()
        .entries;
    let proofs: Vec<&proto::AuditEntry> = own
        .iter()
        .filter(|e| e.operation == "semel.v1.AuditService/GetInclusionProof")
        .collect();
    assert_eq!(proofs.len(), refused, "each refusal is recorded");
    for e in &own {
        assert!(
            e.citizen.is_empty() && e.citizen_as_given.is_empty(),
            "an entry of the auditor's own names a citizen: {e:?}"
        );
        assert!(!e.detail.contains(KARIM) && !e.detail.contains(JAN));
    }
    // Searching its own entries for the citizens finds nothing.
    for citizen in [KARIM, JAN] {
        let found = dpo
            .list_audit_entries(proto::ListAuditEntriesRequest {
                citizen: citizen.into(),
                ..Default::default()
            })
            .await
            .expect("search")
            .into_inner()
            .entries;
        assert!(found.is_empty(), "{found:?}");
    }

    // A consent Karim gave CPAS Anderlecht: the commune's clerk, refused
    // its withdrawal, leaves no trace of its purpose in its own entries.
    let mut portal = ConsentServiceClient::new(t.citizen_channel(KARIM).await);
    let consent = portal
        .give_consent(proto::GiveConsentRequest {
            consent: Some(proto::Consent {
                citizen: KARIM.into(),
                purpose: "SOCIAL_HOUSING".into(),
                consumer_kbo: kbo(ANDERLECHT),
                ..Default::default()
            }),
        })
        .await
        .expect("consent")
        .into_inner()
        .consent
        .expect("consent");
    let clerk = t.token(SCHAERBEEK, &[UserRole::Consumer]);
    let err = ConsentServiceClient::new(t.channel_as(SCHAERBEEK, &clerk).await)
        .withdraw_consent(proto::WithdrawConsentRequest {
            citizen: KARIM.into(),
            consent_id: consent.id.clone(),
        })
        .await
        .expect_err("another organisation's consent");
    assert_error(&err, Code::PermissionDenied, "OTHER_ORGANISATION");
    let refusal = t
        .audit_entries()
        .await
        .into_iter()
        .rev()
        .find(|e| e.operation == "semel.v1.ConsentService/WithdrawConsent")
        .expect("the refusal's entry");
    assert_eq!(refusal.decision, proto::AuditDecision::Refused as i32);
    assert_eq!(refusal.purpose, "", "the refused consent's purpose");
    t.stop().await;
}

/// The newest allowed entry of a registry operation.
async fn last_change(t: &TestDemo, rpc: &str) -> proto::AuditEntry {
    let operation = format!("semel.v1.RegistryService/{rpc}");
    t.audit_entries()
        .await
        .into_iter()
        .rev()
        .find(|e| e.operation == operation && e.decision == proto::AuditDecision::Allowed as i32)
        .unwrap_or_else(|| panic!("no entry of {operation}"))
}

/// Finding 2: a change of the rules is stated whole in its entry, the
/// structured change before any free text, whatever that text's length.
#[tokio::test]
async fn a_rule_changes_entry_states_the_change_whole_whatever_its_texts() {
    let t = TestDemo::start().await;
    let mut operator = t.registry().await;
    let long = "a reason that goes on and on ".repeat(30);

    // An organisation amended with a long reason is given the auditor role.
    let schaerbeek = operator
        .get_organisation(proto::GetOrganisationRequest {
            kbo: kbo(SCHAERBEEK),
        })
        .await
        .expect("org")
        .into_inner()
        .organisation
        .expect("org");
    let mut amended = schaerbeek.clone();
    amended.roles.push(proto::OrganisationRole::Auditor as i32);
    operator
        .amend_organisation(proto::AmendOrganisationRequest {
            organisation: Some(amended),
            reason: long.clone(),
        })
        .await
        .expect("amended");
    let entry = last_change(&t, "AmendOrganisation").await;
    assert!(
        entry.detail.contains("roles [") && entry.detail.contains("auditor]"),
        "{}",
        entry.detail
    );
    let roles_at = entry.detail.find("roles [").expect("roles");
    let reason_at = entry.detail.find("reason: ").expect("reason");
    assert!(roles_at < reason_at, "the change before the reason");

    // An authorisation with a long legal basis: every rule in its entry.
    let created = proto::Authorisation {
        reference: "BSC/2026/300".into(),
        consumer_kbo: kbo(ANDERLECHT),
        dataset: RESIDENCE.into(),
        fields: vec!["street".into(), "municipality".into()],
        purpose: "SOCIAL_HOUSING".into(),
        legal_basis: "Code bruxellois du Logement, ".repeat(12),
        issuing_body: "Brussels Supervisory Commission".into(),
        valid_from: "2026-01-01".into(),
        valid_until: "2030-12-31".into(),
        consent_required: true,
        capacities: vec!["TENANT".into()],
        ..Default::default()
    };
    operator
        .create_authorisation(proto::CreateAuthorisationRequest {
            authorisation: Some(created),
        })
        .await
        .expect("created");
    let entry = last_change(&t, "CreateAuthorisation").await;
    for part in [
        "fields [municipality, street]",
        "capacities [TENANT]",
        "consent required",
        "valid 2026-01-01 to 2030-12-31",
        "legal basis: Code bruxellois",
    ] {
        assert!(entry.detail.contains(part), "{part}: {}", entry.detail);
    }
    t.stop().await;
}

/// Finding 2: registry files that amend an authorisation and revoke it at
/// once are a revocation: refused without a reason, and with one, the entry
/// says it was revoked and what else changed.
#[tokio::test]
async fn files_that_amend_and_revoke_at_once_are_a_revocation() {
    use semel_client::registry_files;
    let t = TestDemo::start().await;
    let mut reg = t.registry().await;
    let dir = export_registry(&t).await;
    // BSC/2024/017 loses a field and is revoked, in one edit.
    let path = dir.path().join("authorisations.toml");
    let text = std::fs::read_to_string(&path).expect("read");
    let at = text.find("reference = \"BSC/2024/017\"").expect("017");
    let street_at = at + text[at..].find("\"street\",").expect("street");
    let mut edited = format!(
        "{}{}",
        &text[..street_at],
        &text[street_at + "\"street\",".len()..]
    );
    let at = edited.find("reference = \"BSC/2024/017\"").expect("017");
    edited.insert_str(at, "status = \"revoked\"\n");
    std::fs::write(&path, &edited).expect("write");
    let read = registry_files::read_dir(dir.path()).expect("read");

    // Without a reason: refused, nothing applied.
    let mut request = read.request.clone();
    request.reason = String::new();
    let err = reg
        .apply_registry(request.clone())
        .await
        .expect_err("a revocation needs a reason");
    assert_error(&err, Code::InvalidArgument, "REGISTRY_INVALID");
    assert!(
        err.message().contains("revoking BSC/2024/017"),
        "{}",
        err.message()
    );

    // With one: planned and recorded as a revocation.
    request.reason = "ended by deliberation 2026/77".into();
    let applied = reg
        .apply_registry(request)
        .await
        .expect("applied")
        .into_inner();
    let change = applied
        .changes
        .iter()
        .find(|c| c.key == "BSC/2024/017")
        .expect("017 planned");
    assert_eq!(change.action, proto::PlannedAction::Revoke as i32);
    let entry = t
        .audit_entries()
        .await
        .into_iter()
        .rev()
        .find(|e| {
            e.authorisation_reference == "BSC/2024/017"
                && e.operation == "semel.v1.RegistryService/ApplyRegistry"
                && e.detail.starts_with("authorisation ")
        })
        .expect("the change's entry");
    for part in [
        "revoke",
        "status active → revoked",
        "fields [",
        "reason: ended by",
    ] {
        assert!(entry.detail.contains(part), "{part}: {}", entry.detail);
    }
    t.stop().await;
}

/// Finding 2: an approval amended by the supervisory body records the
/// dataset and purpose it grants, not those asked for.
#[tokio::test]
async fn an_amended_approval_records_what_it_grants() {
    let t = TestDemo::start().await;
    let mut cpas = RegistryServiceClient::new(t.channel(ANDERLECHT).await);
    let asked = proto::Authorisation {
        reference: "BSC/2026/310".into(),
        dataset: RESIDENCE.into(),
        fields: vec!["municipality".into()],
        purpose: "SOCIAL_HOUSING".into(),
        legal_basis: "Code bruxellois du Logement, art. 31".into(),
        issuing_body: "Brussels Supervisory Commission".into(),
        valid_from: "2026-01-01".into(),
        ..Default::default()
    };
    let application = cpas
        .apply_for_authorisation(proto::ApplyForAuthorisationRequest {
            authorisation: Some(asked.clone()),
            justification: "social housing files".into(),
        })
        .await
        .expect("applied")
        .into_inner()
        .application
        .expect("application");
    let mut granted = asked.clone();
    granted.consumer_kbo = kbo(ANDERLECHT);
    granted.purpose = "RIS_ELIGIBILITY".into();
    RegistryServiceClient::new(t.channel("control-commission").await)
        .decide_authorisation_application(proto::DecideAuthorisationApplicationRequest {
            id: application.id,
            approve: true,
            amended: Some(granted),
            note: "granted for the RIS inquiry only".into(),
        })
        .await
        .expect("approved amended");
    let entry = last_change(&t, "DecideAuthorisationApplication").await;
    assert_eq!(
        (entry.dataset.as_str(), entry.purpose.as_str()),
        (RESIDENCE, "RIS_ELIGIBILITY")
    );
    assert!(
        entry.detail.contains("purpose RIS_ELIGIBILITY"),
        "{}",
        entry.detail
    );
    t.stop().await;
}

/// Finding 8: an organisation's pending applications are bounded and
/// listed in pages; applications for membership are paced before anything
/// is read.
#[tokio::test]
async fn applications_are_bounded_paged_and_paced() {
    let t = TestDemo::start().await;
    let mut cpas = RegistryServiceClient::new(t.channel(ANDERLECHT).await);
    let apply = |n: usize| proto::ApplyForAuthorisationRequest {
        authorisation: Some(proto::Authorisation {
            reference: format!("BSC/2026/{}", 400 + n),
            dataset: RESIDENCE.into(),
            fields: vec!["municipality".into()],
            purpose: "SOCIAL_HOUSING".into(),
            legal_basis: "Code bruxellois du Logement, art. 31".into(),
            issuing_body: "Brussels Supervisory Commission".into(),
            valid_from: "2026-01-01".into(),
            ..Default::default()
        }),
        justification: "social housing files".into(),
    };
    let max = semel_server::MAX_PENDING_APPLICATIONS;
    for n in 0..max {
        cpas.apply_for_authorisation(apply(n))
            .await
            .expect("within the bound");
    }
    let err = cpas
        .apply_for_authorisation(apply(max))
        .await
        .expect_err("beyond the bound");
    assert_error(&err, Code::ResourceExhausted, "APPLICATIONS_EXCEEDED");

    // Listed in pages, newest first, each once.
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let r = cpas
            .list_authorisation_applications(proto::ListAuthorisationApplicationsRequest {
                page_size: 7,
                page_token,
                ..Default::default()
            })
            .await
            .expect("page")
            .into_inner();
        assert!(r.applications.len() <= 7);
        seen.extend(r.applications.into_iter().map(|a| a.id));
        if r.next_page_token.is_empty() {
            break;
        }
        page_token = r.next_page_token;
    }
    let distinct: std::collections::BTreeSet<&String> = seen.iter().collect();
    assert_eq!((seen.len(), distinct.len()), (max, max));

    // Membership: three at once from one enterprise number, then paced.
    let files = t.issue("newcomer", "0999999823", "OCMW Nieuwkomer");
    let channel = t
        .channel_with(Some((&files.cert, &files.key)), &t.pki().ca_cert())
        .await
        .expect("connect");
    let mut newcomer = RegistryServiceClient::new(channel);
    let ask = proto::ApplyForMembershipRequest {
        name: "OCMW Nieuwkomer".into(),
        roles: vec![proto::OrganisationRole::Consumer as i32],
        contact: "ict@ocmw-nieuwkomer.example".into(),
        note: String::new(),
    };
    newcomer
        .apply_for_membership(ask.clone())
        .await
        .expect("applied");
    for _ in 0..2 {
        let err = newcomer
            .apply_for_membership(ask.clone())
            .await
            .expect_err("pending");
        assert_error(&err, Code::AlreadyExists, "ALREADY_EXISTS");
    }
    let err = newcomer.apply_for_membership(ask).await.expect_err("paced");
    assert_error(&err, Code::ResourceExhausted, "RATE_LIMITED");
    t.stop().await;
}

/// Finding 2: a change too large for its entry to state whole is refused,
/// through the RPC and through files alike, and nothing of it stays.
#[tokio::test]
async fn a_change_too_large_for_its_entry_is_refused_never_recorded_cut() {
    use semel_client::registry_files;
    let t = TestDemo::start().await;
    let mut reg = t.registry().await;
    let datasets = reg
        .list_datasets(proto::ListDatasetsRequest {})
        .await
        .expect("datasets")
        .into_inner()
        .datasets;
    let residence = datasets
        .iter()
        .find(|d| d.name == RESIDENCE)
        .expect("residence")
        .clone();
    // A thousand fields of sixty-odd characters: more than an entry holds.
    let huge = proto::Dataset {
        name: "national_register.too_wide".into(),
        description: "too wide to state in one entry".into(),
        fields: (0..1000)
            .map(|i| proto::FieldDefinition {
                name: format!("{i:04}_{}", "f".repeat(58)),
                description: "a field".into(),
                r#type: proto::FieldType::String as i32,
            })
            .collect(),
        keeps_history: false,
        withdrawn: false,
        ..residence.clone()
    };
    let before = t.audit_size().await;
    let err = reg
        .create_dataset(proto::CreateDatasetRequest {
            dataset: Some(huge.clone()),
        })
        .await
        .expect_err("too large to record whole");
    assert_error(&err, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert!(err.message().contains("smaller steps"), "{}", err.message());
    let listed = reg
        .list_datasets(proto::ListDatasetsRequest {})
        .await
        .expect("datasets")
        .into_inner()
        .datasets;
    assert!(
        listed.iter().all(|d| d.name != huge.name),
        "the change was undone"
    );
    let refusal = t
        .audit_entries()
        .await
        .into_iter()
        .rev()
        .find(|e| e.operation == "semel.v1.RegistryService/CreateDataset")
        .expect("the refusal's entry");
    assert_eq!(refusal.decision, proto::AuditDecision::Refused as i32);
    assert!(t.audit_size().await > before);

    // Through files: refused in the plan, the dry run included.
    let dir = export_registry(&t).await;
    let mut request = registry_files::read_dir(dir.path()).expect("read").request;
    request.datasets.push(huge);
    for dry_run in [true, false] {
        request.dry_run = dry_run;
        let err = reg
            .apply_registry(request.clone())
            .await
            .expect_err("too large to record whole");
        assert_error(&err, Code::InvalidArgument, "REGISTRY_INVALID");
        assert!(
            err.message().contains("too large a change"),
            "{}",
            err.message()
        );
    }
    t.stop().await;
}
