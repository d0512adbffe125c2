//! `RegistryService`: organisations, datasets and authorisations. Reads are
//! open to every registered organisation; changes need the operator role.
//! Every change is durable before it is answered and takes effect on the
//! next call.

use std::sync::Arc;

use semel_core::{
    AuthorisationStatus, CertificateId, Kbo, OrganisationStatus, RevokedCertificate, Role, UserRole,
};
use semel_storage::{RegistryStore, RegistryUndo};
use time::OffsetDateTime;
use tonic::{Code, Request, Response, Status};

use crate::audited::{Change, Undo, nothing_to_undo};
use crate::convert::*;
use crate::error::ApiError;
use crate::proto::{self, registry_service_server::RegistryService as Rpc};
use crate::state::Broker;

pub struct RegistryService {
    broker: Arc<Broker>,
}

impl RegistryService {
    pub fn new(broker: Arc<Broker>) -> Self {
        RegistryService { broker }
    }

    /// Applies a registry write and reloads the snapshot. The caller holds
    /// the admin lock, through the audit entry's append, so the undo (used
    /// when the entry cannot be made durable) finds the record as it left it.
    async fn apply<T: Send + 'static, F>(
        &self,
        f: impl FnOnce(Arc<dyn RegistryStore>) -> F,
    ) -> Result<(T, Undo), ApiError>
    where
        F: Future<Output = Result<(T, Option<RegistryUndo>), ApiError>> + Send,
    {
        let registry = self.broker.storage().registry.clone();
        let (out, undo) = f(registry.clone()).await?;
        // The change is stored: from here on the undo must not be lost, so
        // a failed reload is retried rather than reported as a failure.
        if let Err(e) = self.broker.reload().await {
            tracing::warn!(error = %e.message, "registry reload after a change failed; retrying");
            let broker = self.broker.clone();
            tokio::spawn(async move {
                for _ in 0..60 {
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    if broker.reload().await.is_ok() {
                        return;
                    }
                }
                tracing::error!("the registry could not be reloaded after a change");
            });
        }
        let broker = self.broker.clone();
        let undo: Undo = match undo {
            None => nothing_to_undo(),
            Some(u) => Box::pin(async move {
                crate::audited::retry_undo("registry change", || {
                    let (registry, u) = (registry.clone(), u.clone());
                    async move { registry.undo(&u).await }
                })
                .await;
                let _ = broker.reload().await;
            }),
        };
        Ok((out, undo))
    }
}

fn exists(what: &str) -> ApiError {
    ApiError::new(
        Code::AlreadyExists,
        "ALREADY_EXISTS",
        format!("{what} already exists"),
    )
}

/// A creation refused because the key is taken (checked by the store, so
/// two brokers creating at once cannot both succeed).
fn taken(e: semel_storage::StorageError, what: &str) -> ApiError {
    match e {
        semel_storage::StorageError::Conflict(_) => exists(what),
        e => e.into(),
    }
}

fn precondition(reason: &'static str, message: String) -> ApiError {
    ApiError::new(Code::FailedPrecondition, reason, message)
}

fn unknown_org(kbo: &Kbo) -> ApiError {
    ApiError::not_found(
        "UNKNOWN_ORGANISATION",
        format!("no organisation {kbo} is registered"),
    )
}

fn unknown_authorisation(reference: &str) -> ApiError {
    ApiError::not_found(
        "UNKNOWN_AUTHORISATION",
        format!("no authorisation {reference} is registered"),
    )
}

fn required<T>(field: &'static str, v: Option<T>) -> Result<T, ApiError> {
    v.ok_or_else(|| ApiError::invalid(field, "INVALID_ARGUMENT", format!("{field} is required")))
}

#[tonic::async_trait]
impl Rpc for RegistryService {
    async fn create_organisation(
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
                    "organisation {} ({}) registered with roles {}",
                    org.kbo,
                    org.name,
                    roles_text(&org.roles)
                );
                self.apply(move |reg| async move {
                    reg.insert_organisation(&org)
                        .await
                        .map_err(|e| taken(e, &format!("organisation {}", org.kbo)))?;
                    let undo = RegistryUndo::Organisation(Box::new(org.clone()), None);
                    Ok((org, Some(undo)))
                })
                .await
            })
            .await?;
        tracing::info!(kbo = stored.kbo.as_str(), "organisation registered");
        Ok(Response::new(proto::CreateOrganisationResponse {
            organisation: Some(organisation_to_proto(&stored)),
        }))
    }

    async fn get_organisation(
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

    async fn list_organisations(
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

    async fn suspend_organisation(
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

    async fn reinstate_organisation(
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

    async fn create_dataset(
        &self,
        req: Request<proto::CreateDatasetRequest>,
    ) -> Result<Response<proto::CreateDatasetResponse>, Status> {
        let caller = self.broker.admit(&req).await?;
        let _guard = self.broker.admin.lock().await;
        let (stored, _) = self
            .broker
            .audited(&caller, async |c: &mut Change| {
                let dataset = dataset_from_proto(required("dataset", req.into_inner().dataset)?)?;
                c.dataset = dataset.name.to_string();
                c.source = Some(dataset.source);
                if !caller.has(UserRole::Admin) && dataset.source != caller.org.kbo {
                    return Err(ApiError::denied(
                        "OTHER_ORGANISATION",
                        "a source registers its own datasets only: source_kbo must be your organisation",
                    ));
                }
                // The register's dataset carries the right to replace
                // national numbers: only the operator publishes it.
                if &dataset.name == self.broker.register_dataset() && !caller.has(UserRole::Admin) {
                    return Err(ApiError::denied(
                        "REGISTER_DATASET_RESERVED",
                        format!(
                            "{} is the register of persons on this broker; only the operator publishes it",
                            dataset.name
                        ),
                    ));
                }
                {
                    let snapshot = self.broker.snapshot();
                    match snapshot.organisations.get(&dataset.source) {
                        Some(o) if o.roles.contains(&Role::Source) => {}
                        Some(_) => {
                            return Err(precondition(
                                "NOT_A_SOURCE",
                                format!(
                                    "organisation {} is not registered as a source",
                                    dataset.source
                                ),
                            ));
                        }
                        None => return Err(unknown_org(&dataset.source)),
                    }
                }
                c.detail = format!(
                    "dataset {} of {} registered: fields {}; endpoint {}",
                    dataset.name,
                    dataset.source,
                    dataset
                        .fields
                        .iter()
                        .map(|f| f.name.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    dataset.endpoint
                );
                self.apply(move |reg| async move {
                    reg.insert_dataset(&dataset)
                        .await
                        .map_err(|e| taken(e, &format!("dataset {}", dataset.name)))?;
                    let undo = RegistryUndo::Dataset(Box::new(dataset.clone()), None);
                    Ok((dataset, Some(undo)))
                })
                .await
            })
            .await?;
        tracing::info!(dataset = %stored.name, "dataset registered");
        Ok(Response::new(proto::CreateDatasetResponse {
            dataset: Some(dataset_to_proto(&stored)),
        }))
    }

    async fn get_dataset(
        &self,
        req: Request<proto::GetDatasetRequest>,
    ) -> Result<Response<proto::GetDatasetResponse>, Status> {
        self.broker.admit(&req).await?;
        let snapshot = self.broker.snapshot();
        let route = snapshot
            .routes
            .iter()
            .find(|(n, _)| n.as_str() == req.get_ref().name)
            .map(|(_, r)| r)
            .ok_or_else(|| {
                ApiError::not_found(
                    "UNKNOWN_DATASET",
                    format!("there is no dataset named {}", req.get_ref().name),
                )
            })?;
        Ok(Response::new(proto::GetDatasetResponse {
            dataset: Some(dataset_to_proto(&route.dataset)),
        }))
    }

    async fn list_datasets(
        &self,
        req: Request<proto::ListDatasetsRequest>,
    ) -> Result<Response<proto::ListDatasetsResponse>, Status> {
        self.broker.admit(&req).await?;
        let snapshot = self.broker.snapshot();
        Ok(Response::new(proto::ListDatasetsResponse {
            datasets: snapshot
                .routes
                .values()
                .map(|r| dataset_to_proto(&r.dataset))
                .collect(),
        }))
    }

    async fn create_authorisation(
        &self,
        req: Request<proto::CreateAuthorisationRequest>,
    ) -> Result<Response<proto::CreateAuthorisationResponse>, Status> {
        let caller = self.broker.admit(&req).await?;
        let _guard = self.broker.admin.lock().await;
        let (stored, _) = self
            .broker
            .audited(&caller, async |c: &mut Change| {
                let auth = authorisation_from_proto(
                    required("authorisation", req.into_inner().authorisation)?,
                    OffsetDateTime::now_utc(),
                )?;
                c.authorisation = Some(auth.reference.to_string());
                c.dataset = auth.dataset.to_string();
                c.purpose = auth.purpose.to_string();
                check_authorisation(&self.broker.snapshot(), &auth)?;
                c.detail = format!("authorisation recorded: {}", authorisation_text(&auth));
                self.apply(move |reg| async move {
                    if reg
                        .authorisations()
                        .await?
                        .iter()
                        .any(|a| a.reference == auth.reference)
                    {
                        return Err(exists(&format!("authorisation {}", auth.reference)));
                    }
                    reg.put_authorisation(&auth).await?;
                    let undo = RegistryUndo::Authorisation(Box::new(auth.clone()), None);
                    Ok((auth, Some(undo)))
                })
                .await
            })
            .await?;
        tracing::info!(reference = %stored.reference, "authorisation recorded");
        Ok(Response::new(proto::CreateAuthorisationResponse {
            authorisation: Some(authorisation_to_proto(&stored)),
        }))
    }

    async fn get_authorisation(
        &self,
        req: Request<proto::GetAuthorisationRequest>,
    ) -> Result<Response<proto::GetAuthorisationResponse>, Status> {
        let caller = self.broker.admit(&req).await?;
        let snapshot = self.broker.snapshot();
        let reference = &req.get_ref().reference;
        let auth = snapshot
            .authorisations
            .get(reference)
            .filter(|a| visible(&caller, a, &snapshot))
            .ok_or_else(|| unknown_authorisation(reference))?;
        Ok(Response::new(proto::GetAuthorisationResponse {
            authorisation: Some(authorisation_to_proto(auth)),
        }))
    }

    async fn list_authorisations(
        &self,
        req: Request<proto::ListAuthorisationsRequest>,
    ) -> Result<Response<proto::ListAuthorisationsResponse>, Status> {
        let caller = self.broker.admit(&req).await?;
        let msg = req.into_inner();
        let consumer = if msg.consumer_kbo.is_empty() {
            None
        } else {
            Some(parse_kbo("consumer_kbo", &msg.consumer_kbo)?)
        };
        let snapshot = self.broker.snapshot();
        let authorisations = snapshot
            .authorisations
            .values()
            .filter(|a| visible(&caller, a, &snapshot))
            .filter(|a| consumer.is_none_or(|c| a.consumer == c))
            .filter(|a| msg.dataset.is_empty() || a.dataset.as_str() == msg.dataset)
            .map(authorisation_to_proto)
            .collect();
        Ok(Response::new(proto::ListAuthorisationsResponse {
            authorisations,
        }))
    }

    async fn suspend_authorisation(
        &self,
        req: Request<proto::SuspendAuthorisationRequest>,
    ) -> Result<Response<proto::SuspendAuthorisationResponse>, Status> {
        let caller = self.broker.admit(&req).await?;
        let msg = req.into_inner();
        let auth = self
            .set_auth_status(
                &caller,
                msg.reference.clone(),
                AuthorisationStatus::Suspended,
                &msg.reason,
            )
            .await?;
        tracing::warn!(reference = %auth.reference, reason = %semel_core::redact_national_numbers(&msg.reason), "authorisation suspended");
        Ok(Response::new(proto::SuspendAuthorisationResponse {
            authorisation: Some(authorisation_to_proto(&auth)),
        }))
    }

    async fn reinstate_authorisation(
        &self,
        req: Request<proto::ReinstateAuthorisationRequest>,
    ) -> Result<Response<proto::ReinstateAuthorisationResponse>, Status> {
        let caller = self.broker.admit(&req).await?;
        let auth = self
            .set_auth_status(
                &caller,
                req.into_inner().reference,
                AuthorisationStatus::Active,
                "",
            )
            .await?;
        tracing::info!(reference = %auth.reference, "authorisation reinstated");
        Ok(Response::new(proto::ReinstateAuthorisationResponse {
            authorisation: Some(authorisation_to_proto(&auth)),
        }))
    }

    async fn create_purpose(
        &self,
        req: Request<proto::CreatePurposeRequest>,
    ) -> Result<Response<proto::CreatePurposeResponse>, Status> {
        let caller = self.broker.admit(&req).await?;
        let _guard = self.broker.admin.lock().await;
        let (stored, _) = self
            .broker
            .audited(&caller, async |c: &mut Change| {
                let purpose = purpose_from_proto(required("purpose", req.into_inner().purpose)?)?;
                c.purpose = purpose.code.to_string();
                c.detail = format!(
                    "purpose {} added: {} (legal basis: {})",
                    purpose.code, purpose.description, purpose.legal_basis
                );
                self.apply(move |reg| async move {
                    reg.insert_purpose(&purpose)
                        .await
                        .map_err(|e| taken(e, &format!("purpose {}", purpose.code)))?;
                    let undo = RegistryUndo::Purpose(Box::new(purpose.clone()), None);
                    Ok((purpose, Some(undo)))
                })
                .await
            })
            .await?;
        tracing::info!(purpose = %stored.code, "purpose added to the catalogue");
        Ok(Response::new(proto::CreatePurposeResponse {
            purpose: Some(purpose_to_proto(&stored)),
        }))
    }

    async fn list_purposes(
        &self,
        req: Request<proto::ListPurposesRequest>,
    ) -> Result<Response<proto::ListPurposesResponse>, Status> {
        self.broker.admit(&req).await?;
        let snapshot = self.broker.snapshot();
        Ok(Response::new(proto::ListPurposesResponse {
            purposes: snapshot.purposes.values().map(purpose_to_proto).collect(),
        }))
    }

    async fn get_catalogue(
        &self,
        req: Request<proto::GetCatalogueRequest>,
    ) -> Result<Response<proto::GetCatalogueResponse>, Status> {
        let caller = self.broker.admit(&req).await?;
        let msg = req.into_inner();
        let given = msg.kbo.trim();
        let kbo = if given.is_empty() {
            caller.org.kbo
        } else {
            parse_kbo("kbo", given)?
        };
        // Another organisation's catalogue names every consumer of its
        // datasets: for those who may read the whole registry. A refusal
        // is audited, like every refusal for who asked.
        if kbo != caller.org.kbo && !caller.has(UserRole::Admin) && !caller.audits_everything() {
            let error = ApiError::denied(
                "OTHER_ORGANISATION",
                "you may read your own organisation's catalogue only; leave kbo empty",
            );
            return Err(self
                .broker
                .refuse(
                    &caller,
                    error,
                    semel_core::ReasonCode::OtherOrganisation,
                    None,
                )
                .await
                .into_status());
        }
        let snapshot = self.broker.snapshot();
        let org = snapshot
            .organisations
            .get(&kbo)
            .ok_or_else(|| unknown_org(&kbo))?;
        let today = semel_core::brussels_today(time::OffsetDateTime::now_utc());
        let catalogue = semel_core::catalogue::catalogue(
            kbo,
            snapshot.authorisations.values(),
            |name| snapshot.routes.get(name).map(|r| &r.dataset),
            |k| snapshot.organisations.get(k).map(AsRef::as_ref),
            today,
        );
        let entry = |e: &semel_core::catalogue::Entry<'_>| catalogue_entry_to_proto(e, &snapshot);
        Ok(Response::new(proto::GetCatalogueResponse {
            kbo: kbo.as_str().to_owned(),
            name: org.name.clone(),
            as_of: crate::convert::format_date(today),
            may_call: catalogue.may_call.iter().map(entry).collect(),
            called_by: catalogue.called_by.iter().map(entry).collect(),
        }))
    }

    async fn revoke_certificate(
        &self,
        req: Request<proto::RevokeCertificateRequest>,
    ) -> Result<Response<proto::RevokeCertificateResponse>, Status> {
        let caller = self.broker.admit(&req).await?;
        let _guard = self.broker.admin.lock().await;
        let (stored, _) = self
            .broker
            .audited(&caller, async |c: &mut Change| {
                let revoked = revocation_from_proto(req.into_inner())?;
                // Hex in pairs: a long run of digits in a fingerprint would
                // be masked as a national number.
                c.detail = format!(
                    "certificate {} revoked: {}",
                    colon_pairs(&revoked.id.key()),
                    revoked.reason
                );
                self.apply(move |reg| async move {
                    let existed = reg
                        .revoked_certificates()
                        .await?
                        .iter()
                        .any(|r| r.id == revoked.id);
                    let stored = reg.revoke_certificate(&revoked).await?;
                    let undo = (!existed).then(|| RegistryUndo::Revocation(stored.id.clone()));
                    Ok((stored, undo))
                })
                .await
            })
            .await?;
        tracing::warn!(certificate = %stored.id.key(), by = caller.org.kbo.as_str(), "certificate revoked");
        Ok(Response::new(proto::RevokeCertificateResponse {
            revoked: Some(revoked_to_proto(&stored)),
        }))
    }

    async fn list_revoked_certificates(
        &self,
        req: Request<proto::ListRevokedCertificatesRequest>,
    ) -> Result<Response<proto::ListRevokedCertificatesResponse>, Status> {
        self.broker.admit(&req).await?;
        let mut revoked = self
            .broker
            .storage()
            .registry
            .revoked_certificates()
            .await
            .map_err(ApiError::from)?;
        revoked.sort_by_key(|r| std::cmp::Reverse(r.revoked_at));
        Ok(Response::new(proto::ListRevokedCertificatesResponse {
            revoked: revoked.iter().map(revoked_to_proto).collect(),
        }))
    }
}

/// One catalogue entry, with the names and descriptions the registry has.
fn catalogue_entry_to_proto(
    e: &semel_core::catalogue::Entry<'_>,
    snapshot: &crate::state::Snapshot,
) -> proto::CatalogueEntry {
    use semel_core::catalogue::Standing;
    let a = authorisation_to_proto(e.authorisation);
    let name_of = |k: &Kbo| {
        snapshot
            .organisations
            .get(k)
            .map(|o| o.name.clone())
            .unwrap_or_default()
    };
    let fields = |picked: &[&semel_core::FieldDefinition]| {
        picked.iter().map(|f| field_to_proto(f)).collect()
    };
    proto::CatalogueEntry {
        dataset: a.dataset.clone(),
        dataset_description: e.dataset.map(|d| d.description.clone()).unwrap_or_default(),
        source_kbo: e
            .dataset
            .map(|d| d.source.as_str().to_owned())
            .unwrap_or_default(),
        source_name: e.dataset.map(|d| name_of(&d.source)).unwrap_or_default(),
        consumer_kbo: a.consumer_kbo.clone(),
        consumer_name: name_of(&e.authorisation.consumer),
        authorisation_reference: a.reference,
        authorisation_version: a.version,
        fields: fields(&e.fields),
        check_fields: fields(&e.check_fields),
        checks: a.checks,
        purpose_description: snapshot
            .purposes
            .get(&a.purpose)
            .map(|p| p.description.clone())
            .unwrap_or_default(),
        purpose: a.purpose,
        capacities: a.capacities,
        consent_required: a.consent_required,
        valid_from: a.valid_from,
        valid_until: a.valid_until,
        legal_basis: a.legal_basis,
        issuing_body: a.issuing_body,
        receives_mutations: a.receives_mutations,
        confidential_until: a.confidential_until,
        keeps_history: e.dataset.is_some_and(|d| d.keeps_history),
        state: match e.standing {
            Standing::InForce => proto::CatalogueState::InForce,
            Standing::NotYetValid => proto::CatalogueState::NotYetValid,
            Standing::Expired => proto::CatalogueState::Expired,
            Standing::Suspended => proto::CatalogueState::Suspended,
            Standing::ConsumerSuspended => proto::CatalogueState::ConsumerSuspended,
        } as i32,
    }
}

/// A consumer sees its own authorisations, a source those on its datasets,
/// the operator all of them.
fn visible(
    caller: &crate::state::Caller,
    a: &semel_core::Authorisation,
    snapshot: &crate::state::Snapshot,
) -> bool {
    caller.has(UserRole::Admin)
        || caller.audits_everything()
        || a.consumer == caller.org.kbo
        || snapshot
            .routes
            .get(&a.dataset)
            .is_some_and(|r| r.dataset.source == caller.org.kbo)
}

impl RegistryService {
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
                    if reason.is_empty() {
                        String::new()
                    } else {
                        format!(": {reason}")
                    }
                );
                self.apply(move |reg| async move {
                    let before = reg
                        .organisation(&kbo)
                        .await?
                        .ok_or_else(|| unknown_org(&kbo))?;
                    let mut org = before.clone();
                    org.status = status;
                    reg.put_organisation(&org).await?;
                    let undo =
                        RegistryUndo::Organisation(Box::new(org.clone()), Some(Box::new(before)));
                    Ok((org, Some(undo)))
                })
                .await
            })
            .await
            .map(|(org, _)| org)
    }

    async fn set_auth_status(
        &self,
        caller: &crate::state::Caller,
        reference: String,
        status: AuthorisationStatus,
        reason: &str,
    ) -> Result<semel_core::Authorisation, ApiError> {
        let _guard = self.broker.admin.lock().await;
        let reason = semel_core::redact_national_numbers(reason.trim()).into_owned();
        self.broker
            .audited(caller, async |c: &mut Change| {
                c.authorisation = Some(reference.chars().take(64).collect());
                let word = match status {
                    AuthorisationStatus::Suspended => "suspended",
                    AuthorisationStatus::Active => "reinstated",
                };
                c.detail = if reason.is_empty() {
                    format!("authorisation {word}")
                } else {
                    format!("authorisation {word}: {reason}")
                };
                self.apply(move |reg| async move {
                    let before = reg
                        .authorisations()
                        .await?
                        .into_iter()
                        .find(|a| a.reference.as_str() == reference)
                        .ok_or_else(|| unknown_authorisation(&reference))?;
                    if before.status == status {
                        return Ok((before, None));
                    }
                    let mut auth = before.clone();
                    auth.status = status;
                    auth.version += 1;
                    auth.updated_at = OffsetDateTime::now_utc();
                    reg.put_authorisation(&auth).await?;
                    let undo =
                        RegistryUndo::Authorisation(Box::new(auth.clone()), Some(Box::new(before)));
                    Ok((auth, Some(undo)))
                })
                .await
            })
            .await
            .map(|(auth, _)| auth)
    }
}

/// Checks an authorisation against the registry: its consumer, purpose,
/// dataset, fields and questions must exist.
fn check_authorisation(
    snapshot: &crate::state::Snapshot,
    auth: &semel_core::Authorisation,
) -> Result<(), ApiError> {
    match snapshot.organisations.get(&auth.consumer) {
        Some(o) if o.roles.contains(&Role::Consumer) => {}
        Some(_) => {
            return Err(precondition(
                "NOT_A_CONSUMER",
                format!(
                    "organisation {} is not registered as a consumer",
                    auth.consumer
                ),
            ));
        }
        None => return Err(unknown_org(&auth.consumer)),
    }
    if !snapshot.purposes.contains_key(auth.purpose.as_str()) {
        return Err(precondition(
            "UNKNOWN_PURPOSE",
            format!(
                "there is no purpose {} in the catalogue; add it with CreatePurpose first",
                auth.purpose
            ),
        ));
    }
    let route = snapshot.routes.get(&auth.dataset).ok_or_else(|| {
        ApiError::not_found(
            "UNKNOWN_DATASET",
            format!("there is no dataset named {}", auth.dataset),
        )
    })?;
    if let Some(f) = auth
        .fields
        .iter()
        .chain(&auth.check_fields)
        .chain(auth.checks.iter().map(|r| &r.field))
        .find(|f| route.dataset.field(f.as_str()).is_none())
    {
        return Err(ApiError::invalid(
            "authorisation.fields",
            "UNKNOWN_FIELD",
            format!("dataset {} has no field {f}", auth.dataset),
        ));
    }
    for f in &auth.check_fields {
        if route.dataset.field(f.as_str()).is_some_and(|d| {
            matches!(
                d.field_type,
                semel_core::FieldType::List | semel_core::FieldType::Record
            )
        }) {
            return Err(ApiError::invalid(
                "authorisation.check_fields",
                "INVALID_CHECK",
                format!(
                    "{f} is a list or a record: name the question about it in checks, with its element"
                ),
            ));
        }
    }
    // Each named question must be one the dataset can answer: its operand
    // of the field's type, an element for a list and none for a scalar.
    for r in &auth.checks {
        let operand = r
            .operand
            .clone()
            .unwrap_or(semel_core::Operand::Text(String::new()));
        let key = semel_core::Operand::Text(String::new());
        crate::checks::question(
            &route.dataset,
            r.field.clone(),
            r.element.clone().map(|e| (e, key)),
            if r.operand.is_some() {
                r.op
            } else {
                semel_core::CheckOp::Equals
            },
            operand,
        )
        .map_err(|e| {
            ApiError::invalid(
                "authorisation.checks",
                "INVALID_CHECK",
                format!("question {}: {}", r.name, e.message),
            )
        })?;
    }
    Ok(())
}

/// An authorisation in words, for its audit entry.
fn authorisation_text(a: &semel_core::Authorisation) -> String {
    let list = |i: &mut dyn Iterator<Item = String>| i.collect::<Vec<_>>().join(", ");
    format!(
        "{} v{} for {} on {} ({}), purpose {}, legal basis {}, fields [{}], check fields [{}], questions [{}], capacities [{}], consent {}, valid {} to {}{}",
        a.reference,
        a.version,
        a.consumer,
        a.dataset,
        a.issuing_body,
        a.purpose,
        a.legal_basis,
        list(&mut a.fields.iter().map(ToString::to_string)),
        list(&mut a.check_fields.iter().map(ToString::to_string)),
        list(&mut a.checks.iter().map(semel_core::CheckRule::describe)),
        list(&mut a.capacities.iter().map(ToString::to_string)),
        if a.consent_required {
            "required"
        } else {
            "not required"
        },
        a.valid_from,
        a.valid_until
            .map_or_else(|| "open end".to_owned(), |d| d.to_string()),
        a.confidential_until
            .map(|d| format!(", confidential until {d}"))
            .unwrap_or_default()
    )
}

/// `sha256:abcd…` as `sha256:ab:cd:…`.
fn colon_pairs(key: &str) -> String {
    let (kind, hex) = key.split_once(':').unwrap_or(("", key));
    let pairs: Vec<String> = hex
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    format!("{kind}:{}", pairs.join(":"))
}

fn roles_text(roles: &std::collections::BTreeSet<Role>) -> String {
    roles
        .iter()
        .map(|r| format!("{r:?}").to_lowercase())
        .collect::<Vec<_>>()
        .join(", ")
}

fn revocation_from_proto(
    r: proto::RevokeCertificateRequest,
) -> Result<RevokedCertificate, ApiError> {
    let proto::RevokeCertificateRequest {
        sha256_fingerprint,
        serial_number,
        reason,
        issuer_name_sha256,
    } = r;
    let id = match (sha256_fingerprint.is_empty(), serial_number.is_empty()) {
        (false, true) => CertificateId::sha256(&sha256_fingerprint).map_err(|e| {
            ApiError::invalid(
                "sha256_fingerprint",
                "INVALID_ARGUMENT",
                format!("sha256_fingerprint: {e}"),
            )
        })?,
        (true, false) if issuer_name_sha256.trim().is_empty() => {
            return Err(ApiError::invalid(
                "issuer_name_sha256",
                "INVALID_ARGUMENT",
                "a serial number is unique per issuer only: give issuer_name_sha256 too (semel pki fingerprint prints it)",
            ));
        }
        (true, false) => CertificateId::issued_serial(&issuer_name_sha256, &serial_number)
            .map_err(|e| {
                ApiError::invalid(
                    "serial_number",
                    "INVALID_ARGUMENT",
                    format!("serial_number: {e}"),
                )
            })?,
        _ => {
            return Err(ApiError::invalid(
                "sha256_fingerprint",
                "INVALID_ARGUMENT",
                "give exactly one of sha256_fingerprint and serial_number",
            ));
        }
    };
    let reason = reason.trim().to_owned();
    if reason.is_empty() || reason.chars().count() > 256 {
        return Err(ApiError::invalid(
            "reason",
            "INVALID_ARGUMENT",
            "reason is required, at most 256 characters",
        ));
    }
    Ok(RevokedCertificate {
        id,
        reason: semel_core::redact_national_numbers(&reason).into_owned(),
        revoked_at: OffsetDateTime::now_utc(),
    })
}

fn revoked_to_proto(r: &RevokedCertificate) -> proto::RevokedCertificate {
    let (sha256_fingerprint, serial_number, issuer_name_sha256) = match &r.id {
        CertificateId::Sha256(h) => (h.clone(), String::new(), String::new()),
        CertificateId::Serial(h) => (String::new(), h.clone(), String::new()),
        CertificateId::IssuedSerial { issuer, serial } => {
            (String::new(), serial.clone(), issuer.clone())
        }
    };
    proto::RevokedCertificate {
        sha256_fingerprint,
        serial_number,
        issuer_name_sha256,
        reason: r.reason.clone(),
        revoked_at: Some(timestamp_micros(
            (r.revoked_at.unix_timestamp_nanos() / 1000) as i64,
        )),
    }
}
