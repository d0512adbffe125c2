//! The authorisations' calls: created, amended, suspended, revoked, their
//! versions, and the applications for them.

use semel_proto as proto;
use serde_json::{Value as Json, json};

use crate::Client;
use crate::checks::parse_question;
use crate::error::{CallError, CallResult, usage};
use crate::json::{application_json, auth_json};
use crate::registry::pending_filter;

/// What an amendment changes; `None` keeps the current value. Lists given
/// replace the current ones (an empty list empties it).
#[derive(Debug, Default)]
pub struct AuthorisationPatch {
    pub fields: Option<Vec<String>>,
    pub check_fields: Option<Vec<String>>,
    /// Named questions, `NAME: check` (see [`parse_question`](crate::parse_question)).
    pub questions: Option<Vec<String>>,
    pub capacities: Option<Vec<String>>,
    pub consent_required: Option<bool>,
    pub receives_mutations: Option<bool>,
    pub purpose: Option<String>,
    pub legal_basis: Option<String>,
    pub issuing_body: Option<String>,
    pub valid_from: Option<String>,
    /// Empty: open-ended.
    pub valid_until: Option<String>,
    /// Empty: not confidential.
    pub confidential_until: Option<String>,
}

/// A new authorisation for `semel admin authorisation create`.
#[derive(Debug, Clone, Default)]
pub struct NewAuthorisation {
    pub reference: String,
    pub consumer: String,
    pub dataset: String,
    pub fields: Vec<String>,
    /// Fields that may only be tested for equality.
    pub check_fields: Vec<String>,
    /// Named questions, `NAME: check` (see [`parse_question`](crate::parse_question)).
    pub questions: Vec<String>,
    /// Capacities it accepts (empty: any).
    pub capacities: Vec<String>,
    pub consent_required: bool,
    /// Whether the consumer is told of the dataset's changes.
    pub receives_mutations: bool,
    pub purpose: String,
    pub legal_basis: String,
    pub issuing_body: String,
    pub valid_from: String,
    pub valid_until: Option<String>,
    /// Hidden from the citizen's view until this day (investigations).
    pub confidential_until: Option<String>,
}

fn new_authorisation_proto(a: NewAuthorisation) -> Result<proto::Authorisation, CallError> {
    Ok(proto::Authorisation {
        reference: a.reference,
        consumer_kbo: a.consumer,
        dataset: a.dataset,
        fields: a.fields,
        purpose: a.purpose,
        legal_basis: a.legal_basis,
        issuing_body: a.issuing_body,
        valid_from: a.valid_from,
        valid_until: a.valid_until.unwrap_or_default(),
        status: 0,
        version: 0,
        updated_at: None,
        confidential_until: a.confidential_until.unwrap_or_default(),
        check_fields: a.check_fields,
        capacities: a.capacities,
        consent_required: a.consent_required,
        receives_mutations: a.receives_mutations,
        checks: a
            .questions
            .iter()
            .map(|q| parse_question(q))
            .collect::<anyhow::Result<Vec<_>>>()
            .map_err(|e| usage(format!("{e:#}")))?,
    })
}

impl Client {
    pub async fn list_authorisations(
        &self,
        consumer: Option<String>,
        dataset: Option<String>,
    ) -> CallResult {
        let r = self
            .registry()
            .list_authorisations(proto::ListAuthorisationsRequest {
                consumer_kbo: consumer.unwrap_or_default(),
                dataset: dataset.unwrap_or_default(),
            })
            .await?
            .into_inner();
        Ok(Json::Array(
            r.authorisations.iter().map(auth_json).collect(),
        ))
    }

    /// Applies, as a consumer, for an authorisation (the consumer is the
    /// caller's organisation when `a.consumer` is empty).
    pub async fn apply_for_authorisation(
        &self,
        a: NewAuthorisation,
        justification: String,
    ) -> CallResult {
        let authorisation = new_authorisation_proto(a)?;
        let r = self
            .registry()
            .apply_for_authorisation(proto::ApplyForAuthorisationRequest {
                authorisation: Some(authorisation),
                justification,
            })
            .await?
            .into_inner();
        Ok(r.application
            .as_ref()
            .map(application_json)
            .unwrap_or(Json::Null))
    }

    /// Applications for authorisations the caller may see, newest first.
    pub async fn authorisation_applications(&self, pending_only: bool) -> CallResult {
        // Every page, newest first.
        let mut out = Vec::new();
        let mut page_token = String::new();
        loop {
            let r = self
                .registry()
                .list_authorisation_applications(proto::ListAuthorisationApplicationsRequest {
                    state: pending_filter(pending_only),
                    page_size: 1000,
                    page_token,
                })
                .await?
                .into_inner();
            out.extend(r.applications.iter().map(application_json));
            if r.next_page_token.is_empty() {
                return Ok(Json::Array(out));
            }
            page_token = r.next_page_token;
        }
    }

    /// Approves (as asked) or rejects an application, as the supervisory body.
    pub async fn decide_application(&self, id: String, approve: bool, note: String) -> CallResult {
        let r = self
            .registry()
            .decide_authorisation_application(proto::DecideAuthorisationApplicationRequest {
                id,
                approve,
                amended: None,
                note,
            })
            .await?
            .into_inner();
        let mut out = r
            .application
            .as_ref()
            .map(application_json)
            .unwrap_or(Json::Null);
        if let (Json::Object(o), Some(a)) = (&mut out, &r.authorisation) {
            o.insert("authorisation".into(), auth_json(a));
        }
        Ok(out)
    }

    pub async fn create_authorisation(&self, a: NewAuthorisation) -> CallResult {
        let r = self
            .registry()
            .create_authorisation(proto::CreateAuthorisationRequest {
                authorisation: Some(new_authorisation_proto(a)?),
            })
            .await?
            .into_inner();
        Ok(r.authorisation
            .as_ref()
            .map(auth_json)
            .unwrap_or(Json::Null))
    }

    /// Amends an authorisation: reads the current version, applies the
    /// patch, and asks for a new version based on `expected_version` (by
    /// default the version just read). The answer holds the new version and
    /// the one it replaced.
    pub async fn amend_authorisation(
        &self,
        reference: String,
        expected_version: Option<u32>,
        patch: AuthorisationPatch,
        reason: String,
    ) -> CallResult {
        let mut a = self
            .registry()
            .get_authorisation(proto::GetAuthorisationRequest {
                reference: reference.clone(),
            })
            .await?
            .into_inner()
            .authorisation
            .ok_or_else(|| usage(format!("the broker returned no authorisation {reference}")))?;
        let expected_version = expected_version.unwrap_or(a.version);
        let list = |v: Vec<String>| -> Vec<String> {
            v.into_iter().filter(|s| !s.trim().is_empty()).collect()
        };
        let AuthorisationPatch {
            fields,
            check_fields,
            questions,
            capacities,
            consent_required,
            receives_mutations,
            purpose,
            legal_basis,
            issuing_body,
            valid_from,
            valid_until,
            confidential_until,
        } = patch;
        if let Some(v) = fields {
            a.fields = list(v);
        }
        if let Some(v) = check_fields {
            a.check_fields = list(v);
        }
        if let Some(v) = questions {
            a.checks = list(v)
                .iter()
                .map(|q| parse_question(q))
                .collect::<anyhow::Result<Vec<_>>>()
                .map_err(|e| usage(format!("{e:#}")))?;
        }
        if let Some(v) = capacities {
            a.capacities = list(v);
        }
        if let Some(v) = consent_required {
            a.consent_required = v;
        }
        if let Some(v) = receives_mutations {
            a.receives_mutations = v;
        }
        for (to, from) in [
            (&mut a.purpose, purpose),
            (&mut a.legal_basis, legal_basis),
            (&mut a.issuing_body, issuing_body),
            (&mut a.valid_from, valid_from),
            (&mut a.valid_until, valid_until),
            (&mut a.confidential_until, confidential_until),
        ] {
            if let Some(v) = from {
                *to = v.trim().to_owned();
            }
        }
        let r = self
            .registry()
            .amend_authorisation(proto::AmendAuthorisationRequest {
                authorisation: Some(a),
                expected_version,
                reason,
            })
            .await?
            .into_inner();
        let mut out = r
            .authorisation
            .as_ref()
            .map(auth_json)
            .unwrap_or(Json::Null);
        if let (Json::Object(o), Some(p)) = (&mut out, &r.previous) {
            o.insert("previous_version".into(), json!(p.version));
        }
        Ok(out)
    }

    /// Revokes an authorisation for good.
    pub async fn revoke_authorisation(&self, reference: String, reason: String) -> CallResult {
        let r = self
            .registry()
            .revoke_authorisation(proto::RevokeAuthorisationRequest { reference, reason })
            .await?
            .into_inner();
        Ok(r.authorisation
            .as_ref()
            .map(auth_json)
            .unwrap_or(Json::Null))
    }

    /// Every version of an authorisation, oldest first.
    pub async fn authorisation_versions(&self, reference: String) -> CallResult {
        let r = self
            .registry()
            .list_authorisation_versions(proto::ListAuthorisationVersionsRequest { reference })
            .await?
            .into_inner();
        Ok(Json::Array(r.versions.iter().map(auth_json).collect()))
    }

    pub async fn set_authorisation_suspended(
        &self,
        reference: String,
        suspended: bool,
        reason: String,
    ) -> CallResult {
        let a = if suspended {
            self.registry()
                .suspend_authorisation(proto::SuspendAuthorisationRequest { reference, reason })
                .await?
                .into_inner()
                .authorisation
        } else {
            self.registry()
                .reinstate_authorisation(proto::ReinstateAuthorisationRequest { reference })
                .await?
                .into_inner()
                .authorisation
        };
        Ok(a.as_ref().map(auth_json).unwrap_or(Json::Null))
    }
}
