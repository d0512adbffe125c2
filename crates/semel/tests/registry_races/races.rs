//! Two brokers racing each registry rule: exactly one of two racing changes wins, and the other's refusal is recorded.

use std::time::{Duration, Instant};

use semel_client::{AuditFilter, Client, NewAuthorisation};

use crate::{Pair, reason};

const ANDERLECHT: &str = "cpas-anderlecht";

/// Refusals recorded with `reason` in the log (read through `client`).
async fn refusals(client: &Client, reason: &str) -> Vec<serde_json::Value> {
    let page = client
        .audit_list(AuditFilter {
            decision: Some("refused".into()),
            reason: Some(reason.into()),
            limit: 1000,
            ..Default::default()
        })
        .await
        .expect("list the audit log");
    page["entries"].as_array().expect("entries").clone()
}

fn application(reference: &str, consumer: &str) -> NewAuthorisation {
    NewAuthorisation {
        reference: reference.into(),
        consumer: consumer.into(),
        dataset: "national_register.residence".into(),
        fields: vec!["municipality".into()],
        purpose: "SOCIAL_HOUSING".into(),
        legal_basis: "Code bruxellois du Logement, art. 31".into(),
        issuing_body: "Brussels Supervisory Commission".into(),
        valid_from: "2026-01-01".into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_brokers_racing_each_registry_rule_one_wins() {
    let Some(mut pair) = Pair::start(&[]).await else {
        return;
    };
    let anderlecht = semel_demo::seed::org(ANDERLECHT)
        .expect("demo org")
        .kbo
        .as_str()
        .to_owned();

    // One pending application per reference and applicant: the same
    // application sent through both brokers at once, again and again.
    let (ca, cb) = pair.both(ANDERLECHT).await;
    let mut lost = 0;
    for round in 0..12 {
        let reference = format!("BSC/2026/9{round:02}");
        let (ra, rb) = tokio::join!(
            ca.apply_for_authorisation(application(&reference, &anderlecht), "race A".into()),
            cb.apply_for_authorisation(application(&reference, &anderlecht), "race B".into()),
        );
        let won = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "{reference}: {ra:?} / {rb:?}");
        let loser = [ra, rb].into_iter().find_map(Result::err).expect("a loser");
        assert!(
            matches!(reason(&loser), "CONFLICT" | "ALREADY_EXISTS"),
            "{loser:?}"
        );
        if reason(&loser) == "CONFLICT" {
            lost += 1;
        }
        let pending = ca
            .authorisation_applications(true)
            .await
            .expect("applications");
        let same = pending
            .as_array()
            .expect("list")
            .iter()
            .filter(|a| a.to_string().contains(&reference))
            .count();
        assert_eq!(same, 1, "{reference}: one pending application");
    }
    eprintln!(
        "applications: {lost} of 12 races decided by the store (CONFLICT), the rest by the broker's own check"
    );
    // Every race the store decided is a refusal in the log, with its reason.
    let (oa, ob) = pair.both("operator").await;
    assert_eq!(
        refusals(&oa, "CONFLICT")
            .await
            .iter()
            .filter(|e| e["operation"]
                .as_str()
                .unwrap_or_default()
                .contains("ApplyForAuthorisation"))
            .count(),
        lost,
        "each application refused by the store is recorded"
    );

    // An amendment against a suspension: neither undoes the other.
    let mut conflicts = 0;
    for round in 0..8 {
        let name = format!("CPAS Anderlecht (round {round})");
        let (amended, suspended) = tokio::join!(
            oa.amend_organisation(
                anderlecht.clone(),
                Some(name.clone()),
                None,
                "rename".into()
            ),
            ob.set_organisation_suspended(anderlecht.clone(), true, "race".into()),
        );
        for r in [&amended, &suspended] {
            if let Err(e) = r {
                assert_eq!(reason(e), "CONFLICT", "{e:?}");
                conflicts += 1;
            }
        }
        // Broker A learns of a change made through B from the database
        // (NOTIFY, or the poll): wait for the winner's change to reach it,
        // a few seconds at most, before saying what stands.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let org = loop {
            let orgs = oa.list_organisations().await.expect("organisations");
            let org = orgs
                .as_array()
                .expect("list")
                .iter()
                .find(|o| o["kbo"].as_str() == Some(anderlecht.as_str()))
                .expect("anderlecht")
                .clone();
            let reached = (suspended.is_err() || org["status"] == "suspended")
                && (amended.is_err() || org["name"] == name.as_str());
            if reached || std::time::Instant::now() > deadline {
                break org;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        if suspended.is_ok() {
            assert_eq!(
                org["status"], "suspended",
                "round {round}: the suspension stands: {org}"
            );
        }
        if amended.is_ok() {
            assert_eq!(
                org["name"],
                name.as_str(),
                "round {round}: the amendment stands: {org}"
            );
        }
        if org["status"] == "suspended" {
            oa.set_organisation_suspended(anderlecht.clone(), false, String::new())
                .await
                .expect("reinstate");
        }
    }

    eprintln!("amendment against suspension: {conflicts} of 8 races refused with CONFLICT");
    // Two amendments of one authorisation's version at once: one new
    // version.
    for round in 0..6 {
        let versions = oa
            .authorisation_versions("BSC/2024/017".into())
            .await
            .expect("versions");
        let current = versions.as_array().expect("list").len() as u32;
        let patch = |basis: String| semel_client::AuthorisationPatch {
            legal_basis: Some(basis),
            ..Default::default()
        };
        let (ra, rb) = tokio::join!(
            oa.amend_authorisation(
                "BSC/2024/017".into(),
                Some(current),
                patch(format!("law A {round}")),
                "race".into()
            ),
            ob.amend_authorisation(
                "BSC/2024/017".into(),
                Some(current),
                patch(format!("law B {round}")),
                "race".into()
            ),
        );
        assert_eq!(
            [&ra, &rb].iter().filter(|r| r.is_ok()).count(),
            1,
            "{ra:?} / {rb:?}"
        );
        let loser = [ra, rb].into_iter().find_map(Result::err).expect("a loser");
        assert_eq!(reason(&loser), "CONFLICT", "{loser:?}");
        let after = oa
            .authorisation_versions("BSC/2024/017".into())
            .await
            .expect("versions");
        assert_eq!(after.as_array().expect("list").len() as u32, current + 1);
    }
    let amendments_refused = refusals(&oa, "CONFLICT")
        .await
        .iter()
        .filter(|e| {
            e["operation"]
                .as_str()
                .unwrap_or_default()
                .contains("AmendAuthorisation")
        })
        .count();
    assert_eq!(amendments_refused, 6, "each lost amendment is recorded");
}

/// A valid enterprise number not in the demo: `0999990<n>` with its check
/// digits.
fn newcomer_kbo(n: u64) -> String {
    let first8 = 9_999_900 + n;
    format!("{first8:08}{:02}", 97 - first8 % 97)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_operators_deciding_one_membership_through_two_brokers_one_decision_stands() {
    let Some(mut pair) = Pair::start(&[]).await else {
        return;
    };
    let d = pair.dir.path().to_owned();
    let (oa, ob) = pair.both("operator").await;
    let pki = semel_demo::pki::DevPki { dir: d.join("pki") };
    let a_url = semel_demo_stack::demo::client_config(&d, "operator")
        .expect("operator config")
        .broker;
    // How each race was lost: CONFLICT when the store refused the second
    // commit; APPLICATION_DECIDED or ALREADY_EXISTS (the organisation an
    // approval registers) when the loser read the first decision.
    let mut lost_by = std::collections::BTreeMap::<String, usize>::new();
    for round in 0..8u64 {
        // A newcomer applies with its certificate alone, through A.
        let kbo = newcomer_kbo(round);
        let stem = format!("newcomer-{round}");
        let name = format!("OCMW Nieuwkomer {round}");
        let files = pki
            .issue(&semel_demo::pki::Subject {
                file_stem: &stem,
                kbo: semel_core::Kbo::parse(&kbo).expect("kbo"),
                name: &name,
            })
            .expect("issue a certificate");
        let newcomer = Client::connect(&semel_client::ClientConfig {
            broker: a_url.clone(),
            ca: pki.ca_cert(),
            cert: files.cert,
            key: files.key,
            token: None,
        })
        .await
        .expect("connect the newcomer");
        let application = newcomer
            .apply_for_membership(
                name.clone(),
                &["consumer".to_owned()],
                "ict@nieuwkomer.example".into(),
                String::new(),
            )
            .await
            .expect("apply for membership");
        let id = application["id"].as_str().expect("id").to_owned();
        // Two operators decide it at once, one through each broker: even
        // rounds approve against reject, odd rounds approve twice.
        let b_approves = round % 2 == 1;
        let (ra, rb) = tokio::join!(
            oa.decide_membership(id.clone(), true, &[], "approved through A".into()),
            ob.decide_membership(id.clone(), b_approves, &[], "decided through B".into()),
        );
        assert_eq!(
            [&ra, &rb].iter().filter(|r| r.is_ok()).count(),
            1,
            "round {round}: exactly one decision stands: {ra:?} / {rb:?}"
        );
        let loser = [&ra, &rb]
            .into_iter()
            .find_map(|r| r.as_ref().err())
            .expect("a loser");
        assert!(
            matches!(
                reason(loser),
                "CONFLICT" | "APPLICATION_DECIDED" | "ALREADY_EXISTS"
            ),
            "round {round}: {loser:?}"
        );
        *lost_by.entry(reason(loser).to_owned()).or_default() += 1;
        // The stored decision is the winner's, and the organisation is
        // registered exactly when the winner approved.
        let a_won = ra.is_ok();
        let approved = a_won || b_approves;
        let stored = oa
            .membership_applications(false)
            .await
            .expect("applications")
            .as_array()
            .expect("list")
            .iter()
            .find(|m| m["id"].as_str() == Some(id.as_str()))
            .expect("the application")
            .clone();
        assert_eq!(
            stored["state"].as_str().unwrap_or_default().to_lowercase(),
            if approved { "approved" } else { "rejected" },
            "round {round}: {stored}"
        );
        // Each broker serves the registry from its snapshot, which the
        // other's change wakes: registered on both once it caught up.
        for client in [&oa, &ob] {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let registered = client
                    .list_organisations()
                    .await
                    .expect("organisations")
                    .as_array()
                    .expect("list")
                    .iter()
                    .any(|o| o["kbo"].as_str() == Some(kbo.as_str()));
                if registered == approved {
                    break;
                }
                assert!(
                    approved && Instant::now() < deadline,
                    "round {round}: {kbo} registered: {registered}, approved: {approved}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    eprintln!("membership decisions lost, by reason: {lost_by:?}");
    // The log holds each decision that stood and each that was refused,
    // with its reason.
    let page = oa
        .audit_list(AuditFilter {
            limit: 1000,
            ..Default::default()
        })
        .await
        .expect("list the audit log");
    let decisions: Vec<&serde_json::Value> = page["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| {
            e["operation"]
                .as_str()
                .unwrap_or_default()
                .contains("DecideMembershipApplication")
        })
        .collect();
    let refused = |why: &str| {
        decisions
            .iter()
            .filter(|e| e["decision"] == "refused" && e["reason"] == why)
            .count()
    };
    assert_eq!(
        decisions.len(),
        16,
        "both attempts of each race are recorded"
    );
    let said: Vec<(&serde_json::Value, &serde_json::Value)> = decisions
        .iter()
        .map(|e| (&e["decision"], &e["reason"]))
        .collect();
    for (why, n) in &lost_by {
        assert_eq!(refused(why), *n, "{why}: {said:?}");
    }
    assert_eq!(
        decisions
            .iter()
            .filter(|e| e["decision"] == "allowed")
            .count(),
        8,
        "{said:?}"
    );
}
