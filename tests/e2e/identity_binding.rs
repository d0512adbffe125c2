//! What binds a token to its person: each issuer grants only the roles it
//! is trusted with (the citizen role only the citizen identity provider
//! does, at a required authentication level), and for a bounded time. A
//! citizen reading their own history is recorded, out of their own view.

use semel_core::UserRole;
use semel_demo::issuer::{DEV_AUDIENCE, DevIssuer, TokenRequest};
use semel_server::proto::{self, audit_service_client::AuditServiceClient};
use tonic::Code;

use crate::harness::*;

/// A citizen's token through the IRISbox portal.
fn citizen<'a>(niss: &'a str, expires_in: i64) -> TokenRequest<'a> {
    TokenRequest {
        subject: niss,
        organisation: semel_demo::seed::org("irisbox").expect("portal").kbo,
        roles: &[UserRole::Citizen],
        audience: DEV_AUDIENCE,
        expires_in,
        not_before: None,
        bound_to: None,
    }
}

/// A clerk's token at CPAS Anderlecht.
fn clerk<'a>(expires_in: i64) -> TokenRequest<'a> {
    TokenRequest {
        subject: "clerk-7@cpas-anderlecht",
        organisation: semel_demo::seed::org(ANDERLECHT).expect("org").kbo,
        roles: &[UserRole::Consumer],
        audience: DEV_AUDIENCE,
        expires_in,
        not_before: None,
        bound_to: None,
    }
}

/// Reads a citizen's history through the portal with `token`.
async fn history(
    t: &TestDemo,
    niss: &str,
    token: &str,
) -> Result<proto::ListCitizenAccessesResponse, tonic::Status> {
    AuditServiceClient::new(t.channel_as("irisbox", token).await)
        .list_citizen_accesses(proto::ListCitizenAccessesRequest {
            citizen: niss.into(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

/// A clerk's lookup at CPAS Anderlecht with `token`.
async fn clerk_lookup(t: &TestDemo, token: &str) -> Result<(), tonic::Status> {
    semel_server::proto::lookup_service_client::LookupServiceClient::new(
        t.channel_as(ANDERLECHT, token).await,
    )
    .lookup(lookup(
        KARIM,
        semel_demo::seed::datasets::RESIDENCE,
        &["street"],
        "RIS_ELIGIBILITY",
    ))
    .await
    .map(|_| ())
}

#[tokio::test]
async fn an_issuer_grants_only_the_roles_it_is_trusted_with() {
    let t = TestDemo::start().await;
    // The staff's identity provider, trusted for every role but the
    // citizen's: its token for a citizen reads no one's history.
    let forged = t.issuer().mint(&citizen(JAN, 600)).expect("mint");
    let s = history(&t, JAN, &forged).await.expect_err("refused");
    assert_error(&s, Code::Unauthenticated, "TOKEN_UNTRUSTED_ISSUER");
    assert!(s.message().contains("citizen"), "{}", s.message());
    // The attempt is in the log, against the portal whose certificate
    // carried it, naming no one as its end user.
    let all = t.all_audit_entries().await;
    let refused = all
        .iter()
        .rev()
        .find(|e| e.operation == "semel.v1.AuditService/ListCitizenAccesses")
        .expect("the refused read is recorded");
    assert_eq!(refused.reason, "TOKEN_UNTRUSTED_ISSUER");
    assert_eq!(
        refused.consumer_kbo,
        semel_demo::seed::org("irisbox")
            .expect("portal")
            .kbo
            .as_str()
    );
    assert_eq!(refused.end_user, "");
    // Refused whole, not trimmed: a clerk's token that also claims the
    // citizen role makes no lookup either.
    let both = t
        .issuer()
        .mint(&TokenRequest {
            roles: &[UserRole::Consumer, UserRole::Citizen],
            ..clerk(600)
        })
        .expect("mint");
    let s = clerk_lookup(&t, &both).await.expect_err("refused");
    assert_error(&s, Code::Unauthenticated, "TOKEN_UNTRUSTED_ISSUER");
    // The citizens' identity provider grants the citizen role alone.
    let staff = t.citizen_issuer().mint(&clerk(600)).expect("mint");
    let s = clerk_lookup(&t, &staff).await.expect_err("refused");
    assert_error(&s, Code::Unauthenticated, "TOKEN_UNTRUSTED_ISSUER");
    // Each from its own issuer: accepted.
    assert!(history(&t, JAN, &t.citizen_token(JAN)).await.is_ok());
    clerk_lookup(&t, &t.mint(&clerk(600)))
        .await
        .expect("lookup");
    t.stop().await;
}

#[tokio::test]
async fn a_citizens_token_needs_the_required_authentication_level() {
    let t = TestDemo::start().await;
    let idp = t.citizen_issuer();
    for (acr, case) in [(None, "no acr"), (Some("eidas-low"), "too low an acr")] {
        let weak = DevIssuer {
            acr: acr.map(str::to_owned),
            ..idp.clone()
        };
        let token = weak.mint(&citizen(KARIM, 600)).expect("mint");
        let s = history(&t, KARIM, &token).await.expect_err(case);
        assert_error(&s, Code::Unauthenticated, "TOKEN_UNTRUSTED_ISSUER");
        assert!(s.message().contains("acr"), "{case}: {}", s.message());
    }
    let token = idp.mint(&citizen(KARIM, 600)).expect("mint");
    assert!(history(&t, KARIM, &token).await.is_ok());
    t.stop().await;
}

#[tokio::test]
async fn a_token_lives_no_longer_than_its_issuer_may_let_it() {
    let t = TestDemo::start().await;
    const HOUR: i64 = 3600;
    // A year-long token for a citizen, from the very identity provider
    // trusted with citizens, at the right level: refused.
    let year = t.mint(&citizen(JAN, 365 * 24 * HOUR));
    let s = history(&t, JAN, &year).await.expect_err("a year");
    assert_error(&s, Code::Unauthenticated, "TOKEN_UNTRUSTED_ISSUER");
    assert!(s.message().contains("longer"), "{}", s.message());
    // Citizens' tokens: 12 hours at most; staff's: 24.
    let s = history(&t, JAN, &t.mint(&citizen(JAN, 13 * HOUR)))
        .await
        .expect_err("13 h");
    assert_error(&s, Code::Unauthenticated, "TOKEN_UNTRUSTED_ISSUER");
    assert!(
        history(&t, JAN, &t.mint(&citizen(JAN, 11 * HOUR)))
            .await
            .is_ok()
    );
    let s = clerk_lookup(&t, &t.mint(&clerk(25 * HOUR)))
        .await
        .expect_err("25 h");
    assert_error(&s, Code::Unauthenticated, "TOKEN_UNTRUSTED_ISSUER");
    clerk_lookup(&t, &t.mint(&clerk(23 * HOUR)))
        .await
        .expect("23 h");
    t.stop().await;
}

#[tokio::test]
async fn a_citizens_read_of_their_history_is_logged_out_of_their_view() {
    let t = TestDemo::start().await;
    // Something to see: Anderlecht consults Karim.
    clerk_lookup(&t, &t.mint(&clerk(600)))
        .await
        .expect("lookup");
    let token = t.citizen_token(KARIM);
    let before = t.audit_size().await;
    let first = history(&t, KARIM, &token).await.expect("read");
    assert!(!first.accesses.is_empty());
    assert_eq!(t.audit_size().await, before + 1, "the read is recorded");
    let all = t.all_audit_entries().await;
    let read = all.last().expect("an entry");
    assert_eq!(read.operation, "semel.v1.AuditService/ListCitizenAccesses");
    assert_eq!(read.citizen, KARIM);
    assert_eq!(
        read.consumer_kbo,
        semel_demo::seed::org("irisbox")
            .expect("portal")
            .kbo
            .as_str()
    );
    // The number is in the entry once, as the citizen it is about.
    assert_eq!(read.end_user, semel_server::state::CITIZEN_THEMSELVES);
    assert!(!read.end_user.contains(KARIM));
    // The citizen's view is what it was: their reads are not in it.
    let before = t.audit_size().await;
    let second = history(&t, KARIM, &token).await.expect("read again");
    assert_eq!(second.accesses, first.accesses);
    assert_eq!(t.audit_size().await, before + 1);
    // Their consents read by themselves: recorded too, out of view.
    let before = t.audit_size().await;
    semel_server::proto::consent_service_client::ConsentServiceClient::new(
        t.citizen_channel(KARIM).await,
    )
    .list_consents(proto::ListConsentsRequest {
        citizen: KARIM.into(),
    })
    .await
    .expect("consents");
    assert_eq!(t.audit_size().await, before + 1);
    let listed = t.all_audit_entries().await.pop().expect("an entry");
    assert_eq!(listed.operation, "semel.v1.ConsentService/ListConsents");
    assert_eq!(listed.citizen, KARIM);
    assert_eq!(listed.end_user, semel_server::state::CITIZEN_THEMSELVES);
    let third = history(&t, KARIM, &token).await.expect("read");
    assert_eq!(third.accesses, first.accesses);
    t.stop().await;
}
