//! Applications for membership: an organisation not registered yet applies
//! with its certificate, and the operator decides.

use super::*;

/// The pace of applications for membership: per enterprise number, and for
/// all unregistered applicants together.
pub(super) struct MembershipThrottle {
    each: crate::limits::ConsumerLimits,
    all: crate::limits::ConsumerLimits,
}

impl MembershipThrottle {
    /// Three at once per enterprise number, then one a minute; twenty at
    /// once from everyone, then one a second.
    pub(super) fn new() -> Self {
        let settings = |rate: f64, burst: f64| crate::limits::LimitSettings {
            consumer_rate: Some(rate),
            consumer_burst: burst,
            ..crate::limits::LimitSettings::default()
        };
        MembershipThrottle {
            each: crate::limits::ConsumerLimits::new(&settings(1.0 / 60.0, 3.0)),
            all: crate::limits::ConsumerLimits::new(&settings(1.0, 20.0)),
        }
    }

    /// Admits one application of `kbo`, or says how long to wait.
    fn admit(&self, kbo: Kbo) -> Result<(), ApiError> {
        let now = std::time::Instant::now();
        // Everyone's bucket is keyed by a number no organisation has.
        let everyone = Kbo::parse("0000000097").unwrap_or(kbo);
        let wait = match self.each.admit(kbo, now) {
            Ok(()) => match self.all.admit(everyone, now) {
                Ok(()) => return Ok(()),
                Err(wait) => wait,
            },
            Err(wait) => wait,
        };
        Err(ApiError {
            retry_after: Some(wait),
            ..ApiError::new(
                Code::ResourceExhausted,
                "RATE_LIMITED",
                format!(
                    "too many applications for membership; retry in {} s",
                    wait.as_secs().max(1)
                ),
            )
        })
    }
}

fn membership_to_proto(a: &semel_core::MembershipApplication) -> proto::MembershipApplication {
    proto::MembershipApplication {
        id: a.id.clone(),
        kbo: a.kbo.as_str().to_owned(),
        name: a.name.clone(),
        roles: a.roles.iter().map(|r| role_to_proto(*r)).collect(),
        contact: a.contact.clone(),
        note: a.note.clone(),
        certificate: a.certificate.clone(),
        applied_at: Some(timestamp(a.applied_at)),
        state: application_state_to_proto(a.state) as i32,
        decided_by: a.decided_by_person.clone().unwrap_or_default(),
        decided_at: a.decided_at.map(timestamp),
        decision_note: a.decision_note.clone(),
    }
}

impl RegistryService {
    pub(super) async fn apply_for_membership(
        &self,
        req: Request<proto::ApplyForMembershipRequest>,
    ) -> Result<Response<proto::ApplyForMembershipResponse>, Status> {
        const OPERATION: &str = "semel.v1.RegistryService/ApplyForMembership";
        let now = OffsetDateTime::now_utc();
        let peer = crate::state::Credentials::of(&req).peer.cloned();
        let Some(cert) = peer.as_ref().and_then(|p| p.certificate.as_ref()) else {
            return Err(ApiError::unauthenticated(
                "CLIENT_CERTIFICATE_REQUIRED",
                "apply with your organisation's certificate (mutual TLS), from a CA this broker trusts",
            )
            .into());
        };
        let kbo = cert.kbo.clone().map_err(|why| {
            ApiError::unauthenticated(
                "CERTIFICATE_WITHOUT_ORGANISATION",
                format!("{why}; use a certificate whose subject carries organizationIdentifier NTRBE-<enterprise number>"),
            )
        })?;
        let (registered, revoked) = {
            let snapshot = self.broker.snapshot();
            (
                snapshot.organisations.contains_key(&kbo),
                snapshot.is_revoked(cert),
            )
        };
        if registered {
            // A member is refused as the matrix says (its revoked or
            // expired certificate, its missing token, or no role), and
            // audited like any call of its.
            self.broker.admit(&req).await?;
            return Err(exists(&format!("organisation {kbo}")).into());
        }
        if revoked {
            return Err(ApiError::unauthenticated(
                "CERTIFICATE_REVOKED",
                "this certificate has been revoked",
            )
            .into());
        }
        if cert.expired_at(std::time::SystemTime::now()) {
            return Err(ApiError::unauthenticated(
                "CERTIFICATE_EXPIRED",
                "this certificate has expired; apply with your organisation's new certificate",
            )
            .into());
        }
        // Paced before anything is read: each call scans the applications.
        self.memberships.admit(kbo)?;
        let msg = req.into_inner();
        let name = text("name", msg.name, 200)?;
        let contact = text("contact", msg.contact, 200)?;
        let note = if msg.note.trim().is_empty() {
            String::new()
        } else {
            text("note", msg.note, 2000)?
        };
        if name.trim().is_empty() || contact.trim().is_empty() {
            return Err(ApiError::invalid(
                "name",
                "INVALID_ARGUMENT",
                "give your organisation's legal name and a contact",
            )
            .into());
        }
        let roles = msg
            .roles
            .into_iter()
            .map(role_from_proto)
            .collect::<Result<std::collections::BTreeSet<Role>, _>>()?;
        if roles.is_empty()
            || roles
                .iter()
                .any(|r| matches!(r, Role::Operator | Role::Auditor))
        {
            return Err(ApiError::invalid(
                "roles",
                "INVALID_ARGUMENT",
                "ask for source, consumer and/or citizen_portal; the operator and supervisory roles are granted by the operator only",
            )
            .into());
        }
        let registry = self.broker.storage().registry.clone();
        let pending = async || -> Result<(), ApiError> {
            match registry
                .memberships()
                .await?
                .into_iter()
                .find(|m| m.kbo == kbo && m.state == semel_core::ApplicationState::Pending)
            {
                Some(p) => Err(ApiError::new(
                    Code::AlreadyExists,
                    "ALREADY_EXISTS",
                    format!(
                        "your application {} is pending; the operator will decide on it",
                        p.id
                    ),
                )),
                None => Ok(()),
            }
        };
        // Checked before the registry's lock too: a repeated application
        // does not queue behind (or hold up) the operator's changes.
        pending().await?;
        let _guard = self.broker.admin.lock().await;
        pending().await?;
        let application = semel_core::MembershipApplication {
            id: crate::state::new_id().to_string(),
            kbo,
            name,
            roles,
            contact: semel_core::redact_national_numbers(&contact).into_owned(),
            note: semel_core::redact_national_numbers(&note).into_owned(),
            certificate: cert.fingerprint.key(),
            applied_at: now,
            state: semel_core::ApplicationState::Pending,
            decided_by_person: None,
            decided_at: None,
            decision_note: String::new(),
        };
        // The store holds the rule across brokers: one pending application
        // per enterprise number. A race lost to another broker is refused
        // with CONFLICT, and the refusal is recorded.
        if let Err(e) = registry
            .commit(&[RegistryWrite::Membership {
                after: Box::new(application.clone()),
                before: None,
            }])
            .await
        {
            let e = ApiError::from(e);
            if e.reason == "CONFLICT" {
                let mut record =
                    crate::state::blank_record(crate::state::new_id(), OPERATION, kbo, None);
                record.decision = semel_core::AuditDecision::Refused;
                record.reason = e.reason_code();
                record.consumer_reference = format!("membership {}", application.id);
                record.detail = semel_core::redact_national_numbers(&e.message).into_owned();
                self.broker.append_durably(record).await?;
            }
            return Err(e.into());
        }
        // Its entry, durable before the answer; the application is taken
        // back if the entry cannot be written.
        let mut record = crate::state::blank_record(crate::state::new_id(), OPERATION, kbo, None);
        record.outcome = semel_core::Outcome::Answered;
        record.consumer_reference = format!("membership {}", application.id);
        record.detail = semel_core::redact_national_numbers(&format!(
            "membership applied for: {}, roles {}, certificate {}; name: {}",
            application.kbo,
            roles_text(&application.roles),
            application.certificate,
            quoted(&application.name)
        ))
        .into_owned();
        if let Err(e) = self.broker.append_durably(record).await {
            let undo = RegistryUndo::Membership(Box::new(application.clone()), None);
            crate::audited::retry_undo("a membership application", || registry.undo(&undo)).await;
            return Err(e.into());
        }
        tracing::info!(kbo = kbo.as_str(), "membership applied for");
        Ok(Response::new(proto::ApplyForMembershipResponse {
            application: Some(membership_to_proto(&application)),
        }))
    }

    pub(super) async fn list_membership_applications(
        &self,
        req: Request<proto::ListMembershipApplicationsRequest>,
    ) -> Result<Response<proto::ListMembershipApplicationsResponse>, Status> {
        self.broker.admit(&req).await?;
        let state = req.get_ref().state;
        let (limit, after) = application_page(req.get_ref().page_size, &req.get_ref().page_token)?;
        let mut all: Vec<semel_core::MembershipApplication> = self
            .broker
            .storage()
            .registry
            .memberships()
            .await
            .map_err(ApiError::from)?
            .into_iter()
            .filter(|a| state == 0 || application_state_to_proto(a.state) as i32 == state)
            .collect();
        let next_page_token = page_of(&mut all, limit, after, |a| (a.applied_at, &a.id));
        Ok(Response::new(proto::ListMembershipApplicationsResponse {
            applications: all.iter().map(membership_to_proto).collect(),
            next_page_token,
        }))
    }

    pub(super) async fn decide_membership_application(
        &self,
        req: Request<proto::DecideMembershipApplicationRequest>,
    ) -> Result<Response<proto::DecideMembershipApplicationResponse>, Status> {
        let caller = self.broker.admit(&req).await?;
        let _guard = self.broker.admin.lock().await;
        let msg = req.into_inner();
        let now = OffsetDateTime::now_utc();
        let ((application, organisation), _) = self
            .broker
            .audited(&caller, async |c: &mut Change| {
                c.reference = format!("membership {}", msg.id.chars().take(64).collect::<String>());
                let note = decision_note(msg.approve, &msg.note)?;
                let roles = msg
                    .roles
                    .iter()
                    .map(|r| role_from_proto(*r))
                    .collect::<Result<std::collections::BTreeSet<Role>, _>>()?;
                let person = caller.user.subject.clone();
                let (out, undo) = self
                    .apply(c, move |reg| async move {
                        let before = reg
                            .memberships()
                            .await?
                            .into_iter()
                            .find(|a| a.id == msg.id)
                            .ok_or_else(|| unknown_application(&msg.id))?;
                        if before.state != semel_core::ApplicationState::Pending {
                            return Err(already_decided(&before.id));
                        }
                        let organisation = msg.approve.then(|| Organisation {
                            kbo: before.kbo,
                            name: before.name.clone(),
                            roles: if roles.is_empty() {
                                before.roles.clone()
                            } else {
                                roles
                            },
                            status: OrganisationStatus::Active,
                            created_at: now,
                        });
                        let decided = semel_core::MembershipApplication {
                            state: if msg.approve {
                                semel_core::ApplicationState::Approved
                            } else {
                                semel_core::ApplicationState::Rejected
                            },
                            decided_by_person: Some(person),
                            decided_at: Some(now),
                            decision_note: note,
                            ..before.clone()
                        };
                        // The decision and the organisation it registers, in
                        // one commit over the application as read: approved
                        // and rejected at once (through two brokers), one
                        // stands.
                        let mut writes = Vec::new();
                        if let Some(org) = &organisation {
                            if reg.organisation(&org.kbo).await?.is_some() {
                                return Err(exists(&format!("organisation {}", org.kbo)));
                            }
                            writes.push(RegistryWrite::Organisation {
                                after: Box::new(org.clone()),
                                before: None,
                            });
                        }
                        writes.push(RegistryWrite::Membership {
                            after: Box::new(decided.clone()),
                            before: Some(Box::new(before.clone())),
                        });
                        let staged = reg.stage(&writes).await?;
                        Ok(((decided, organisation), Some(staged)))
                    })
                    .await?;
                let (decided, organisation) = &out;
                c.detail = match organisation {
                    Some(o) => format!(
                        "membership {} approved: organisation {} registered with roles {}; name: {}{}",
                        decided.id,
                        o.kbo,
                        roles_text(&o.roles),
                        quoted(&o.name),
                        note_text(&decided.decision_note)
                    ),
                    None => format!(
                        "membership {} of {} rejected{}",
                        decided.id,
                        decided.kbo,
                        note_text(&decided.decision_note)
                    ),
                };
                // The organisation and the decision stand or fall together
                // with the decision's entry (one staged change).
                Ok((out, undo))
            })
            .await?;
        tracing::info!(application = %application.id, approved = organisation.is_some(), "membership decided");
        Ok(Response::new(proto::DecideMembershipApplicationResponse {
            application: Some(membership_to_proto(&application)),
            organisation: organisation.as_ref().map(organisation_to_proto),
        }))
    }
}
