//! The registry's organisations: registered, amended, suspended,
//! reinstated and read.

use super::*;

/// Refuses to drop a role an organisation still uses: a consumer's
/// authorisations (not revoked), a source's datasets, or the operator role
/// of the administrator's own organisation (which would lock it out).
async fn role_still_used(
    reg: &dyn RegistryStore,
    org: &Organisation,
    role: Role,
    own: Kbo,
) -> Result<(), ApiError> {
    let in_use = |what: String| {
        precondition(
            "ROLE_IN_USE",
            format!(
                "organisation {} cannot stop being a {}: {what}",
                org.kbo,
                format!("{role:?}").to_lowercase()
            ),
        )
    };
    match role {
        Role::Consumer => {
            let held: Vec<String> = reg
                .authorisations()
                .await?
                .into_iter()
                .filter(|a| a.consumer == org.kbo && a.status != AuthorisationStatus::Revoked)
                .map(|a| a.reference.to_string())
                .collect();
            if !held.is_empty() {
                return Err(in_use(format!(
                    "it holds authorisations {}; revoke them first",
                    held.join(", ")
                )));
            }
        }
        Role::Source => {
            let published: Vec<String> = reg
                .datasets()
                .await?
                .into_iter()
                .filter(|d| d.source == org.kbo && !d.withdrawn)
                .map(|d| d.name.to_string())
                .collect();
            if !published.is_empty() {
                return Err(in_use(format!("it publishes {}", published.join(", "))));
            }
        }
        Role::Operator if org.kbo == own => {
            return Err(in_use(
                "it is your own organisation, and its administrators would lose the registry"
                    .to_owned(),
            ));
        }
        _ => {}
    }
    Ok(())
}

impl RegistryService {
    pub(super) async fn create_organisation(
        &self,
        req: Request<proto::CreateOrganisationRequest>,
    ) -> Result<Response<proto::CreateOrganisationResponse>, Status> {
        let caller = self.broker.admit(&req).await?;
        let _guard = self.broker.admin.lock().await;
        let (stored, _) = self
            .broker
            .audited(&caller, async |c: &mut Change| {
                let org = organisation_from_proto(
                    required("organisation", req.into_inner().organisation)?,
                    OffsetDateTime::now_utc(),
                )?;
                c.detail = format!(
                    "organisation {} registered with roles {}; name: {}",
                    org.kbo,
                    roles_text(&org.roles),
                    quoted(&org.name)
                );
                self.apply(c, move |reg| async move {
                    let staged = reg
                        .stage(&[RegistryWrite::Organisation {
                            after: Box::new(org.clone()),
                            before: None,
                        }])
                        .await
                        .map_err(|e| taken(e, &format!("organisation {}", org.kbo)))?;
                    Ok((org, Some(staged)))
                })
                .await
            })
            .await?;
        tracing::info!(kbo = stored.kbo.as_str(), "organisation registered");
        Ok(Response::new(proto::CreateOrganisationResponse {
            organisation: Some(organisation_to_proto(&stored)),
        }))
    }

    pub(super) async fn amend_organisation(
        &self,
        req: Request<proto::AmendOrganisationRequest>,
    ) -> Result<Response<proto::AmendOrganisationResponse>, Status> {
        let caller = self.broker.admit(&req).await?;
        let _guard = self.broker.admin.lock().await;
        let msg = req.into_inner();
        let ((before, after), _) = self
            .broker
            .audited(&caller, async |c: &mut Change| {
                let proposed = organisation_from_proto(
                    required("organisation", msg.organisation)?,
                    OffsetDateTime::now_utc(),
                )?;
                let reason = semel_core::redact_national_numbers(msg.reason.trim()).into_owned();
                let own = caller.org.kbo;
                let (pair, undo) = self
                    .apply(c, move |reg| async move {
                        let before = reg
                            .organisation(&proposed.kbo)
                            .await?
                            .ok_or_else(|| unknown_org(&proposed.kbo))?;
                        let after = Organisation {
                            status: before.status,
                            created_at: before.created_at,
                            ..proposed
                        };
                        for dropped in before.roles.difference(&after.roles) {
                            role_still_used(&*reg, &before, *dropped, own).await?;
                        }
                        if after == before {
                            return Ok(((before.clone(), before), None));
                        }
                        // Only over what was read: a suspension made meanwhile
                        // through another broker is not undone by this.
                        let staged = reg
                            .stage(&[RegistryWrite::Organisation {
                                after: Box::new(after.clone()),
                                before: Some(Box::new(before.clone())),
                            }])
                            .await?;
                        Ok(((before, after), Some(staged)))
                    })
                    .await?;
                let (before, after) = &pair;
                let mut changes = Vec::new();
                // The structured change first, free text after it.
                if before.roles != after.roles {
                    changes.push(format!(
                        "roles [{}] → [{}]",
                        roles_text(&before.roles),
                        roles_text(&after.roles)
                    ));
                }
                if before.name != after.name {
                    changes.push(format!(
                        "name {} → {}",
                        quoted(&before.name),
                        quoted(&after.name)
                    ));
                }
                c.detail = format!(
                    "organisation {} amended: {}{}",
                    after.kbo,
                    if changes.is_empty() {
                        "nothing to amend".to_owned()
                    } else {
                        changes.join("; ")
                    },
                    because(&reason)
                );
                Ok((pair, undo))
            })
            .await?;
        tracing::info!(kbo = after.kbo.as_str(), "organisation amended");
        Ok(Response::new(proto::AmendOrganisationResponse {
            organisation: Some(organisation_to_proto(&after)),
            previous: Some(organisation_to_proto(&before)),
        }))
    }

    pub(super) async fn get_organisation(
        &self,
        req: Request<proto::GetOrganisationRequest>,
    ) -> Result<Response<proto::GetOrganisationResponse>, Status> {
        self.broker.admit(&req).await?;
        let kbo = parse_kbo("kbo", &req.get_ref().kbo)?;
        let snapshot = self.broker.snapshot();
        let org = snapshot
            .organisations
            .get(&kbo)
            .ok_or_else(|| unknown_org(&kbo))?;
        Ok(Response::new(proto::GetOrganisationResponse {
            organisation: Some(organisation_to_proto(org)),
        }))
    }

    pub(super) async fn list_organisations(
        &self,
        req: Request<proto::ListOrganisationsRequest>,
    ) -> Result<Response<proto::ListOrganisationsResponse>, Status> {
        self.broker.admit(&req).await?;
        let snapshot = self.broker.snapshot();
        Ok(Response::new(proto::ListOrganisationsResponse {
            organisations: snapshot
                .organisations
                .values()
                .map(|o| organisation_to_proto(o))
                .collect(),
        }))
    }

    pub(super) async fn suspend_organisation(
        &self,
        req: Request<proto::SuspendOrganisationRequest>,
    ) -> Result<Response<proto::SuspendOrganisationResponse>, Status> {
        let caller = self.broker.admit(&req).await?;
        let msg = req.into_inner();
        let org = self
            .set_org_status(
                &caller,
                &msg.kbo,
                OrganisationStatus::Suspended,
                &msg.reason,
            )
            .await?;
        let kbo = org.kbo;
        tracing::warn!(kbo = kbo.as_str(), reason = %semel_core::redact_national_numbers(&msg.reason), "organisation suspended");
        Ok(Response::new(proto::SuspendOrganisationResponse {
            organisation: Some(organisation_to_proto(&org)),
        }))
    }

    pub(super) async fn reinstate_organisation(
        &self,
        req: Request<proto::ReinstateOrganisationRequest>,
    ) -> Result<Response<proto::ReinstateOrganisationResponse>, Status> {
        let caller = self.broker.admit(&req).await?;
        let org = self
            .set_org_status(&caller, &req.get_ref().kbo, OrganisationStatus::Active, "")
            .await?;
        let kbo = org.kbo;
        tracing::info!(kbo = kbo.as_str(), "organisation reinstated");
        Ok(Response::new(proto::ReinstateOrganisationResponse {
            organisation: Some(organisation_to_proto(&org)),
        }))
    }

    async fn set_org_status(
        &self,
        caller: &crate::state::Caller,
        kbo: &str,
        status: OrganisationStatus,
        reason: &str,
    ) -> Result<semel_core::Organisation, ApiError> {
        let _guard = self.broker.admin.lock().await;
        let reason = semel_core::redact_national_numbers(reason.trim()).into_owned();
        self.broker
            .audited(caller, async |c: &mut Change| {
                let kbo = parse_kbo("kbo", kbo)?;
                c.detail = format!(
                    "organisation {kbo} {}{}",
                    match status {
                        OrganisationStatus::Suspended => "suspended",
                        OrganisationStatus::Active => "reinstated",
                    },
                    because(&reason)
                );
                self.apply(c, move |reg| async move {
                    let before = reg
                        .organisation(&kbo)
                        .await?
                        .ok_or_else(|| unknown_org(&kbo))?;
                    let mut org = before.clone();
                    org.status = status;
                    let staged = reg
                        .stage(&[RegistryWrite::Organisation {
                            after: Box::new(org.clone()),
                            before: Some(Box::new(before)),
                        }])
                        .await?;
                    Ok((org, Some(staged)))
                })
                .await
            })
            .await
            .map(|(org, _)| org)
    }
}
