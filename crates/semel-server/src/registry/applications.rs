//! Applications for authorisations: a consumer applies for the
//! authorisation it needs, and the operator decides.

use super::authorisations::{authorisation_text, check_authorisation, ended};
use super::*;

/// The most applications for authorisations one organisation has pending.
pub const MAX_PENDING_APPLICATIONS: usize = 50;

fn application_to_proto(
    a: &semel_core::AuthorisationApplication,
) -> proto::AuthorisationApplication {
    proto::AuthorisationApplication {
        id: a.id.clone(),
        proposed: Some(authorisation_to_proto(&a.proposed)),
        justification: a.justification.clone(),
        applicant_kbo: a.applicant.as_str().to_owned(),
        applied_by: a.applied_by.clone(),
        applied_at: Some(timestamp(a.applied_at)),
        state: application_state_to_proto(a.state) as i32,
        decided_by_kbo: a
            .decided_by
            .map(|k| k.as_str().to_owned())
            .unwrap_or_default(),
        decided_by: a.decided_by_person.clone().unwrap_or_default(),
        decided_at: a.decided_at.map(timestamp),
        decision_note: a.decision_note.clone(),
        approved_version: a.approved_version.unwrap_or(0),
    }
}

impl RegistryService {
    pub(super) async fn apply_for_authorisation(
        &self,
        req: Request<proto::ApplyForAuthorisationRequest>,
    ) -> Result<Response<proto::ApplyForAuthorisationResponse>, Status> {
        let caller = self.broker.admit(&req).await?;
        let _guard = self.broker.admin.lock().await;
        let msg = req.into_inner();
        let now = OffsetDateTime::now_utc();
        let (application, _) = self
            .broker
            .audited(&caller, async |c: &mut Change| {
                let mut asked = required("authorisation", msg.authorisation)?;
                if asked.consumer_kbo.is_empty() {
                    asked.consumer_kbo = caller.org.kbo.as_str().to_owned();
                }
                let proposed = authorisation_from_proto(asked, now)?;
                c.authorisation = Some(proposed.reference.to_string());
                c.dataset = proposed.dataset.to_string();
                c.purpose = proposed.purpose.to_string();
                if proposed.consumer != caller.org.kbo {
                    return Err(ApiError::denied(
                        "OTHER_ORGANISATION",
                        "an organisation applies for itself: authorisation.consumer_kbo must be your organisation",
                    ));
                }
                let justification = msg.justification.trim();
                if justification.is_empty() || justification.len() > 4000 {
                    return Err(ApiError::invalid(
                        "justification",
                        "INVALID_ARGUMENT",
                        "say why your organisation needs this (at most 4000 bytes): the supervisory body decides on it",
                    ));
                }
                {
                    let snapshot = self.broker.snapshot();
                    check_authorisation(&snapshot, &proposed)?;
                    if let Some(current) = snapshot.authorisations.get(proposed.reference.as_str()) {
                        if current.consumer != proposed.consumer || current.dataset != proposed.dataset {
                            return Err(ApiError::invalid(
                                "authorisation.reference",
                                "IMMUTABLE_FIELD",
                                format!(
                                    "authorisation {} is another organisation's or another dataset's: choose a new reference",
                                    current.reference
                                ),
                            ));
                        }
                        if current.status == AuthorisationStatus::Revoked {
                            return Err(ended(current));
                        }
                    }
                }
                // The version it amends (0: a new one), so that an approval
                // over a later version is refused rather than undoing it.
                let mut proposed = proposed;
                proposed.version = self
                    .broker
                    .snapshot()
                    .authorisations
                    .get(proposed.reference.as_str())
                    .map_or(0, |a| a.version);
                let application = semel_core::AuthorisationApplication {
                    id: crate::state::new_id().to_string(),
                    proposed,
                    justification: semel_core::redact_national_numbers(justification).into_owned(),
                    applicant: caller.org.kbo,
                    applied_by: caller.user.subject.clone(),
                    applied_at: now,
                    state: semel_core::ApplicationState::Pending,
                    decided_by: None,
                    decided_by_person: None,
                    decided_at: None,
                    decision_note: String::new(),
                    approved_version: None,
                };
                let pending: Vec<semel_core::AuthorisationApplication> = self
                    .broker
                    .storage()
                    .registry
                    .applications()
                    .await?
                    .into_iter()
                    .filter(|a| {
                        a.state == semel_core::ApplicationState::Pending
                            && a.applicant == application.applicant
                    })
                    .collect();
                // An organisation's pending applications are bounded: each
                // is kept, listed and read by the supervisory body, and a
                // flood of them would bury the others'.
                if pending.len() >= MAX_PENDING_APPLICATIONS {
                    return Err(ApiError::new(
                        Code::ResourceExhausted,
                        "APPLICATIONS_EXCEEDED",
                        format!(
                            "your organisation has {} applications pending, as many as it may; wait for decisions on them",
                            pending.len()
                        ),
                    ));
                }
                if let Some(p) = pending
                    .into_iter()
                    .find(|a| a.proposed.reference == application.proposed.reference)
                {
                    return Err(ApiError::new(
                        Code::AlreadyExists,
                        "ALREADY_EXISTS",
                        format!(
                            "your application {} for {} is pending: one at a time per reference",
                            p.id, p.proposed.reference
                        ),
                    ));
                }
                c.reference = format!("application {}", application.id);
                c.detail = format!(
                    "application {} for authorisation {}",
                    application.id,
                    authorisation_text(&application.proposed)
                );
                self.apply(c, move |reg| async move {
                    // The store holds the rule across brokers: one pending
                    // application per reference and applicant.
                    let staged = reg.stage(&[RegistryWrite::Application {
                        after: Box::new(application.clone()),
                        before: None,
                    }])
                    .await?;
                    Ok((application, Some(staged)))
                })
                .await
            })
            .await?;
        tracing::info!(application = %application.id, "authorisation applied for");
        Ok(Response::new(proto::ApplyForAuthorisationResponse {
            application: Some(application_to_proto(&application)),
        }))
    }

    pub(super) async fn list_authorisation_applications(
        &self,
        req: Request<proto::ListAuthorisationApplicationsRequest>,
    ) -> Result<Response<proto::ListAuthorisationApplicationsResponse>, Status> {
        let caller = self.broker.admit(&req).await?;
        let state = req.get_ref().state;
        let (limit, after) = application_page(req.get_ref().page_size, &req.get_ref().page_token)?;
        let all = caller.has(UserRole::Admin) || caller.audits_everything();
        let snapshot = self.broker.snapshot();
        let mut applications: Vec<semel_core::AuthorisationApplication> = self
            .broker
            .storage()
            .registry
            .applications()
            .await
            .map_err(ApiError::from)?
            .into_iter()
            .filter(|a| {
                all || a.applicant == caller.org.kbo
                    || snapshot
                        .routes
                        .get(&a.proposed.dataset)
                        .is_some_and(|r| r.dataset.source == caller.org.kbo)
            })
            .filter(|a| state == 0 || application_state_to_proto(a.state) as i32 == state)
            .collect();
        let next_page_token = page_of(&mut applications, limit, after, |a| (a.applied_at, &a.id));
        Ok(Response::new(
            proto::ListAuthorisationApplicationsResponse {
                next_page_token,
                applications: applications
                    .iter()
                    .map(|a| {
                        let mut p = application_to_proto(a);
                        // A source sees what is asked of its data, not
                        // who the applicant's or the body's people are.
                        if !all && a.applicant != caller.org.kbo {
                            p.applied_by.clear();
                            p.decided_by.clear();
                        }
                        p
                    })
                    .collect(),
            },
        ))
    }

    pub(super) async fn decide_authorisation_application(
        &self,
        req: Request<proto::DecideAuthorisationApplicationRequest>,
    ) -> Result<Response<proto::DecideAuthorisationApplicationResponse>, Status> {
        let caller = self.broker.admit(&req).await?;
        let _guard = self.broker.admin.lock().await;
        let msg = req.into_inner();
        let now = OffsetDateTime::now_utc();
        let ((application, authorisation), _) = self
            .broker
            .audited(&caller, async |c: &mut Change| {
                c.reference = format!("application {}", msg.id.chars().take(64).collect::<String>());
                // Only the supervisory body decides: not the operator, who
                // runs the network, nor the parties.
                if !caller.org.roles.contains(&Role::Auditor) {
                    return Err(ApiError::denied(
                        "NOT_SUPERVISORY_BODY",
                        "only a supervisory body (an organisation registered with the auditor role) decides on applications",
                    ));
                }
                let note = decision_note(msg.approve, &msg.note)?;
                let registry = self.broker.storage().registry.clone();
                let before = registry
                    .applications()
                    .await?
                    .into_iter()
                    .find(|a| a.id == msg.id)
                    .ok_or_else(|| unknown_application(&msg.id))?;
                c.authorisation = Some(before.proposed.reference.to_string());
                c.dataset = before.proposed.dataset.to_string();
                c.purpose = before.proposed.purpose.to_string();
                if before.applicant == caller.org.kbo || caller.org.roles.contains(&Role::Operator) {
                    return Err(ApiError::denied(
                        "NOT_SUPERVISORY_BODY",
                        "an organisation does not decide on its own applications, nor does the operator: the supervisory body does",
                    ));
                }
                if before.state != semel_core::ApplicationState::Pending {
                    return Err(already_decided(&before.id));
                }
                // What is approved: the proposal, or the body's amendment of
                // it (same reference and consumer).
                let approved = match (msg.approve, msg.amended) {
                    (false, _) => None,
                    (true, None) => Some(before.proposed.clone()),
                    (true, Some(p)) => {
                        let a = authorisation_from_proto(p, now)?;
                        if a.reference != before.proposed.reference || a.consumer != before.applicant {
                            return Err(ApiError::invalid(
                                "amended",
                                "IMMUTABLE_FIELD",
                                "an amended approval keeps the application's reference and consumer",
                            ));
                        }
                        Some(a)
                    }
                };
                if let Some(a) = &approved {
                    check_authorisation(&self.broker.snapshot(), a)?;
                }
                let caller_kbo = caller.org.kbo;
                let person = caller.user.subject.clone();
                let (pair, undo) = self
                    .apply(c, move |reg| async move {
                        let mut writes = Vec::new();
                        let recorded = match approved {
                            None => None,
                            Some(proposed) => {
                                let current = reg
                                    .authorisations()
                                    .await?
                                    .into_iter()
                                    .find(|a| a.reference == proposed.reference);
                                let based_on = before.proposed.version;
                                if current.as_ref().map_or(0, |c| c.version) != based_on {
                                    return Err(ApiError::new(
                                        Code::Aborted,
                                        "CONFLICT",
                                        format!(
                                            "authorisation {} changed since the application (it amended version {based_on}): the applicant applies again against the current version",
                                            proposed.reference
                                        ),
                                    ));
                                }
                                if let Some(cur) = &current {
                                    if cur.status == AuthorisationStatus::Revoked {
                                        return Err(ended(cur));
                                    }
                                    if cur.consumer != proposed.consumer || cur.dataset != proposed.dataset {
                                        return Err(ApiError::invalid(
                                            "amended",
                                            "IMMUTABLE_FIELD",
                                            format!("authorisation {} is for another consumer or dataset", cur.reference),
                                        ));
                                    }
                                }
                                let auth = semel_core::Authorisation {
                                    version: current.as_ref().map_or(1, |c| c.version + 1),
                                    status: current.as_ref().map_or(AuthorisationStatus::Active, |c| c.status),
                                    updated_at: now,
                                    ..proposed
                                };
                                writes.push(RegistryWrite::Authorisation {
                                    after: Box::new(auth.clone()),
                                    before: current.map(Box::new),
                                });
                                Some(auth)
                            }
                        };
                        let decided = semel_core::AuthorisationApplication {
                            state: if recorded.is_some() {
                                semel_core::ApplicationState::Approved
                            } else {
                                semel_core::ApplicationState::Rejected
                            },
                            decided_by: Some(caller_kbo),
                            decided_by_person: Some(person),
                            decided_at: Some(now),
                            decision_note: note,
                            approved_version: recorded.as_ref().map(|a| a.version),
                            ..before.clone()
                        };
                        // The version and the decision in one commit over the
                        // application as read: two decisions at once (through
                        // two brokers), one stands.
                        writes.push(RegistryWrite::Application {
                            after: Box::new(decided.clone()),
                            before: Some(Box::new(before.clone())),
                        });
                        let staged = reg.stage(&writes).await?;
                        Ok(((decided, recorded), Some(staged)))
                    })
                    .await?;
                let (decided, recorded) = pair;
                c.authorisation_version = recorded.as_ref().map(|a| a.version);
                // What an approval grants is what was recorded, the body's
                // amendment included: the entry names its dataset and purpose.
                if let Some(a) = &recorded {
                    c.dataset = a.dataset.to_string();
                    c.purpose = a.purpose.to_string();
                }
                c.detail = match &recorded {
                    Some(a) => format!(
                        "application {} approved: {}{}",
                        decided.id,
                        authorisation_text(a),
                        note_text(&decided.decision_note)
                    ),
                    None => format!(
                        "application {} rejected{}",
                        decided.id,
                        note_text(&decided.decision_note)
                    ),
                };
                Ok(((decided, recorded), undo))
            })
            .await?;
        tracing::info!(application = %application.id, approved = authorisation.is_some(), "application decided");
        Ok(Response::new(
            proto::DecideAuthorisationApplicationResponse {
                application: Some(application_to_proto(&application)),
                authorisation: authorisation.as_ref().map(authorisation_to_proto),
            },
        ))
    }
}
