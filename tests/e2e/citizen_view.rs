//! The citizen's view of who consulted their data: their own accesses only, and investigations kept out of it until their disclosure date.

use semel_demo::seed::datasets::*;
use semel_server::proto::{self, lookup_service_client::LookupServiceClient};
use tonic::Code;

use crate::harness::*;
use crate::identity::karim_residence;

/// The citizen's view of `citizen`, as the caller of `channel`.
async fn accesses(
    channel: semel_client::AuthChannel,
    citizen: &str,
) -> Result<Vec<proto::CitizenAccess>, tonic::Status> {
    proto::audit_service_client::AuditServiceClient::new(channel)
        .list_citizen_accesses(proto::ListCitizenAccessesRequest {
            citizen: citizen.into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().accesses)
}

#[tokio::test]
async fn a_citizen_sees_who_consulted_them_and_no_one_else() {
    let t = TestDemo::start().await;
    // Two lookups about Karim, one about Jan.
    let mut c = t.lookup_client(ANDERLECHT).await;
    c.lookup(karim_residence()).await.expect("allowed");
    c.lookup(lookup(KARIM, RESIDENCE, &["street"], "SCHOOL_ENROLMENT"))
        .await
        .expect_err("refused");
    c.lookup(lookup(JAN, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
        .await
        .expect("allowed");
    let karim = t.citizen_token(KARIM);
    let mut audit =
        proto::audit_service_client::AuditServiceClient::new(t.channel_as("irisbox", &karim).await);
    let mine = audit
        .list_citizen_accesses(proto::ListCitizenAccessesRequest {
            citizen: KARIM.into(),
            ..Default::default()
        })
        .await
        .expect("own report")
        .into_inner()
        .accesses;
    assert_eq!(mine.len(), 2, "{mine:?}");
    let allowed = &mine[1];
    assert_eq!(allowed.consumer_name, "CPAS d'Anderlecht");
    assert_eq!(allowed.source_name, "SPF Intérieur – Registre national");
    assert_eq!(allowed.dataset, RESIDENCE);
    assert_eq!(allowed.fields, vec!["street".to_owned()]);
    assert_eq!(allowed.purpose, "RIS_ELIGIBILITY");
    assert_eq!(mine[0].decision, proto::AuditDecision::Refused as i32);
    // Karim asks about Jan: refused, and recorded.
    let err = audit
        .list_citizen_accesses(proto::ListCitizenAccessesRequest {
            citizen: JAN.into(),
            ..Default::default()
        })
        .await
        .expect_err("another citizen");
    assert_error(&err, Code::PermissionDenied, "CITIZEN_MISMATCH");
    let e = t.all_audit_entries().await.pop().expect("entry");
    assert_eq!(e.reason, "CITIZEN_MISMATCH");
    assert_eq!(e.operation, "semel.v1.AuditService/ListCitizenAccesses");
    // A citizen token must name a national number; a portal's citizen
    // cannot make lookups.
    let err = LookupServiceClient::new(t.channel_as("irisbox", &karim).await)
        .lookup(karim_residence())
        .await
        .expect_err("a citizen makes no lookups");
    assert_error(&err, Code::PermissionDenied, "ROLE_NOT_PERMITTED");
    // The supervisory commission's auditor reads anyone's report.
    let jan = accesses(t.channel("control-commission").await, JAN)
        .await
        .expect("auditor");
    assert_eq!(jan.len(), 1);
    t.stop().await;
}

#[tokio::test]
async fn an_investigation_stays_out_of_the_citizens_view_until_its_disclosure_date() {
    let t = TestDemo::start().await;
    let ville = semel_demo::seed::org(VILLE).expect("org").kbo;
    let mut reg = t.registry().await;
    for (reference, until) in [("PJ/2026/001", "2099-12-31"), ("PJ/2020/007", "2021-01-01")] {
        reg.create_purpose(proto::CreatePurposeRequest {
            purpose: Some(proto::Purpose {
                code: format!("INQUIRY_{}", &reference[3..7]),
                description: "A judicial inquiry".into(),
                legal_basis: "Code d'instruction criminelle, art. 46quater".into(),
            }),
        })
        .await
        .expect("purpose");
        reg.create_authorisation(proto::CreateAuthorisationRequest {
            authorisation: Some(proto::Authorisation {
                reference: reference.into(),
                consumer_kbo: ville.as_str().into(),
                dataset: RESIDENCE.into(),
                fields: vec!["street".into()],
                purpose: format!("INQUIRY_{}", &reference[3..7]),
                legal_basis: "Code d'instruction criminelle, art. 46quater".into(),
                issuing_body: "Juge d'instruction".into(),
                valid_from: "2020-01-01".into(),
                confidential_until: until.into(),
                capacities: vec!["SUSPECT".into()],
                ..Default::default()
            }),
        })
        .await
        .expect("authorisation");
    }
    t.open_file(VILLE, KARIM, "SUSPECT").await;
    let mut c = t.lookup_client(VILLE).await;
    c.lookup(lookup(KARIM, RESIDENCE, &["street"], "INQUIRY_2026"))
        .await
        .expect("the current inquiry");
    c.lookup(lookup(KARIM, RESIDENCE, &["street"], "INQUIRY_2020"))
        .await
        .expect("the old inquiry");
    let karim = t.citizen_token(KARIM);
    let seen = accesses(t.channel_as("irisbox", &karim).await, KARIM)
        .await
        .expect("report");
    let references: Vec<&str> = seen
        .iter()
        .map(|a| a.authorisation_reference.as_str())
        .collect();
    assert_eq!(references, vec!["PJ/2020/007"], "the disclosed one only");
    // The supervisory commission sees both.
    let all = accesses(t.channel("control-commission").await, KARIM)
        .await
        .expect("report");
    assert_eq!(all.len(), 2);

    // Refusals made before any authorisation was chosen do not tip off the
    // subject either: an unknown field, a dataset the inquiry does not
    // cover, a forged token, each with the inquiry's purpose.
    c.lookup(lookup(KARIM, RESIDENCE, &["no_such_field"], "INQUIRY_2026"))
        .await
        .expect_err("unknown field");
    c.lookup(lookup(KARIM, UNEMPLOYMENT, &["entitled"], "INQUIRY_2026"))
        .await
        .expect_err("no authorisation");
    LookupServiceClient::new(t.channel_as(VILLE, "not-a-token").await)
        .lookup(lookup(KARIM, RESIDENCE, &["street"], "INQUIRY_2026"))
        .await
        .expect_err("forged token");
    let seen = accesses(t.channel_as("irisbox", &karim).await, KARIM)
        .await
        .expect("report");
    let references: Vec<&str> = seen
        .iter()
        .map(|a| a.authorisation_reference.as_str())
        .collect();
    assert_eq!(references, vec!["PJ/2020/007"], "no refusal tips Karim off");
    assert!(seen.iter().all(|a| !a.purpose.contains("2026")), "{seen:?}");

    // A citizen whose only entries are hidden sees an empty page and no
    // page token (which would be a hidden entry's sequence number).
    t.open_file(VILLE, JAN, "SUSPECT").await;
    c.lookup(lookup(JAN, RESIDENCE, &["street"], "INQUIRY_2026"))
        .await
        .expect("the inquiry on Jan");
    c.lookup(lookup(JAN, RESIDENCE, &["bogus"], "INQUIRY_2026"))
        .await
        .expect_err("unknown field");
    let jan = t.citizen_token(JAN);
    let page =
        proto::audit_service_client::AuditServiceClient::new(t.channel_as("irisbox", &jan).await)
            .list_citizen_accesses(proto::ListCitizenAccessesRequest {
                citizen: JAN.into(),
                page_size: 1,
                ..Default::default()
            })
            .await
            .expect("Jan's view")
            .into_inner();
    assert!(page.accesses.is_empty(), "{:?}", page.accesses);
    assert_eq!(page.next_page_token, "");
    // Karim's view, a page at a time: one visible entry, then nothing.
    let mut portal =
        proto::audit_service_client::AuditServiceClient::new(t.channel_as("irisbox", &karim).await);
    let first = portal
        .list_citizen_accesses(proto::ListCitizenAccessesRequest {
            citizen: KARIM.into(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .expect("page 1")
        .into_inner();
    assert_eq!(first.accesses.len(), 1);
    assert_eq!(first.accesses[0].authorisation_reference, "PJ/2020/007");
    let hidden: Vec<String> = t
        .audit_entries()
        .await
        .iter()
        .filter(|e| e.citizen == KARIM && e.authorisation_reference != "PJ/2020/007")
        .map(|e| e.sequence.to_string())
        .collect();
    assert!(!hidden.contains(&first.next_page_token));
    let second = portal
        .list_citizen_accesses(proto::ListCitizenAccessesRequest {
            citizen: KARIM.into(),
            page_size: 1,
            page_token: first.next_page_token,
        })
        .await
        .expect("page 2")
        .into_inner();
    assert!(second.accesses.is_empty(), "{:?}", second.accesses);
    t.stop().await;
}

/// Confidentiality is not retroactive: an amendment that makes an
/// authorisation confidential hides the lookups made under it from then on,
/// not those the citizen could already see; ending it discloses them all.
#[tokio::test]
async fn an_amendment_making_an_authorisation_confidential_hides_nothing_already_visible() {
    const REF: &str = "BSC/2024/017";
    let t = TestDemo::start().await;
    let mut c = t.lookup_client(ANDERLECHT).await;
    let street = lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY");
    c.lookup(street.clone()).await.expect("under v1");
    let karim = t.citizen_token(KARIM);
    let seen = || async {
        accesses(t.channel_as("irisbox", &karim).await, KARIM)
            .await
            .expect("report")
            .iter()
            .filter(|a| a.authorisation_reference == REF)
            .count()
    };
    assert_eq!(seen().await, 1);
    let mut reg = t.registry().await;
    let mut a = reg
        .get_authorisation(proto::GetAuthorisationRequest {
            reference: REF.into(),
        })
        .await
        .expect("get")
        .into_inner()
        .authorisation
        .expect("auth");
    let amend = |a: proto::Authorisation, v| proto::AmendAuthorisationRequest {
        authorisation: Some(a),
        expected_version: v,
        reason: String::new(),
    };
    let original_basis = a.legal_basis.clone();
    a.confidential_until = "2099-12-31".into();
    a.legal_basis = "Code d'instruction criminelle, art. 46quater".into();
    reg.amend_authorisation(amend(a.clone(), 1))
        .await
        .expect("confidential from v2");
    c.lookup(street).await.expect("under v2");
    assert_eq!(
        seen().await,
        1,
        "the v1 lookup stays in view, the v2 one not"
    );
    // The access in view shows the law of the version it was decided
    // under, not the investigation's.
    let bases = || async {
        accesses(t.channel_as("irisbox", &karim).await, KARIM)
            .await
            .expect("report")
            .into_iter()
            .filter(|a| a.authorisation_reference == REF)
            .map(|a| a.legal_basis)
            .collect::<Vec<_>>()
    };
    assert_eq!(bases().await, vec![original_basis.clone()]);
    a.confidential_until = String::new();
    reg.amend_authorisation(amend(a, 2))
        .await
        .expect("disclosed in v3");
    assert_eq!(seen().await, 2, "both in view once disclosed");
    assert_eq!(
        bases().await,
        vec![
            "Code d'instruction criminelle, art. 46quater".to_owned(),
            original_basis
        ],
        "newest first, each under its own version's law"
    );
    t.stop().await;
}
