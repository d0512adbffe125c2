//! `RegistryService`: organisations, datasets and authorisations. Reads are
//! open to every registered organisation; changes need the operator role.
//! Every change is durable before it is answered and takes effect on the
//! next call.

use std::sync::Arc;

use semel_core::{
    AuthorisationStatus, CertificateId, Kbo, Organisation, OrganisationStatus, RevokedCertificate,
    Role, UserRole,
};
use semel_storage::{RegistryStore, RegistryUndo, RegistryWrite, Staged};
use time::OffsetDateTime;
use tonic::{Code, Request, Response, Status};

use crate::audited::{Change, Undo, nothing_to_undo};
use crate::convert::*;
use crate::error::ApiError;
use crate::proto::{self, registry_service_server::RegistryService as Rpc};
use crate::state::Broker;

mod apply;

pub struct RegistryService {
    broker: Arc<Broker>,
    /// Applications for membership come from certificates of organisations
    /// not registered yet, before any role is known: bounded per enterprise
    /// number and in all, before anything is read from the store.
    memberships: Arc<MembershipThrottle>,
}

/// The pace of applications for membership: per enterprise number, and for
/// all unregistered applicants together.
struct MembershipThrottle {
    each: crate::limits::ConsumerLimits,
    all: crate::limits::ConsumerLimits,
}

impl MembershipThrottle {
    /// Three at once per enterprise number, then one a minute; twenty at
    /// once from everyone, then one a second.
    fn new() -> Self {
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

impl RegistryService {
    pub fn new(broker: Arc<Broker>) -> Self {
        RegistryService {
            broker,
            memberships: Arc::new(MembershipThrottle::new()),
        }
    }

    /// Applies a registry change made by `f`: staged (see
    /// `RegistryStore::stage`), it is sealed and committed by the call's
    /// entry once durable (`c.registry`); committed at once (the embedded
    /// store), the snapshot is reloaded and the undo returned takes it
    /// back when the entry cannot be made durable. The caller holds the
    /// admin lock through the entry's append.
    async fn apply<T: Send + 'static, F>(
        &self,
        c: &mut Change,
        f: impl FnOnce(Arc<dyn RegistryStore>) -> F,
    ) -> Result<(T, Undo), ApiError>
    where
        F: Future<Output = Result<(T, Option<Staged>), ApiError>> + Send,
    {
        let registry = self.broker.storage().registry.clone();
        let (out, staged) = f(registry.clone()).await?;
        let undo: Undo = match staged {
            None => nothing_to_undo(),
            Some(Staged::Open(open)) => {
                c.registry = Some(open);
                nothing_to_undo()
            }
            Some(Staged::Committed(undos)) => {
                // The change is stored: from here on the undo must not be
                // lost, so a failed reload is retried rather than reported.
                self.reload_or_retry().await;
                let broker = self.broker.clone();
                Box::pin(async move {
                    crate::audited::retry_undo("registry change", || {
                        let (registry, undos) = (registry.clone(), undos.clone());
                        async move { registry.undo_all(&undos).await }
                    })
                    .await;
                    let _ = broker.reload().await;
                })
            }
        };
        Ok((out, undo))
    }
}

impl RegistryService {
    /// Refuses a file that registers a dataset, or moves one, to an address
    /// sources may not use (as `CreateDataset` and `AmendDataset` do).
    async fn check_planned_endpoints(&self, plan: &apply::Plan) -> Result<(), ApiError> {
        for (_, w) in &plan.writes {
            if let apply::Write::Dataset(d, before) = w
                && before.as_ref().is_none_or(|b| b.endpoint != d.endpoint)
            {
                self.broker
                    .check_endpoint(&d.endpoint)
                    .await
                    .map_err(|e| ApiError {
                        message: format!("dataset {}: {}", d.name, e.message),
                        ..e
                    })?;
            }
        }
        Ok(())
    }

    /// Reloads the snapshot after a stored change; a failure is retried in
    /// the background (the change stands, and must take effect).
    async fn reload_or_retry(&self) {
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

    async fn amend_organisation(
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
                let mut dataset = dataset_from_proto(required("dataset", req.into_inner().dataset)?)?;
                dataset.withdrawn = false;
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
                self.broker.check_endpoint(&dataset.endpoint).await?;
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
                self.apply(c, move |reg| async move {
                    let staged = reg
                        .stage(&[RegistryWrite::Dataset {
                            after: Box::new(dataset.clone()),
                            before: None,
                        }])
                        .await
                        .map_err(|e| taken(e, &format!("dataset {}", dataset.name)))?;
                    Ok((dataset, Some(staged)))
                })
                .await
            })
            .await?;
        tracing::info!(dataset = %stored.name, "dataset registered");
        Ok(Response::new(proto::CreateDatasetResponse {
            dataset: Some(dataset_to_proto(&stored)),
        }))
    }

    async fn amend_dataset(
        &self,
        req: Request<proto::AmendDatasetRequest>,
    ) -> Result<Response<proto::AmendDatasetResponse>, Status> {
        let caller = self.broker.admit(&req).await?;
        let _guard = self.broker.admin.lock().await;
        let msg = req.into_inner();
        let admin = caller.has(UserRole::Admin);
        let ((before, after), _) = self
            .broker
            .audited(&caller, async |c: &mut Change| {
                let mut proposed = dataset_from_proto(required("dataset", msg.dataset)?)?;
                // Withdrawing is WithdrawDataset's, and final.
                proposed.withdrawn = false;
                c.dataset = proposed.name.to_string();
                let reason = semel_core::redact_national_numbers(msg.reason.trim()).into_owned();
                let snapshot = self.broker.snapshot();
                let before = snapshot
                    .routes
                    .get(&proposed.name)
                    .map(|r| r.dataset.clone())
                    .ok_or_else(|| {
                        ApiError::not_found(
                            "UNKNOWN_DATASET",
                            format!("there is no dataset named {}", proposed.name),
                        )
                    })?;
                c.source = Some(before.source);
                if before.withdrawn {
                    return Err(withdrawn(&before.name));
                }
                if !admin && before.source != caller.org.kbo {
                    return Err(ApiError::denied(
                        "OTHER_ORGANISATION",
                        "a source amends its own datasets only",
                    ));
                }
                if !admin && &before.name == self.broker.register_dataset() {
                    return Err(ApiError::denied(
                        "REGISTER_DATASET_RESERVED",
                        format!(
                            "{} is the register of persons on this broker; only the operator amends it",
                            before.name
                        ),
                    ));
                }
                if proposed.source != before.source {
                    return Err(ApiError::invalid(
                        "dataset.source_kbo",
                        "IMMUTABLE_FIELD",
                        format!(
                            "dataset {} is published by {}; another source publishes another dataset",
                            before.name, before.source
                        ),
                    ));
                }
                // Where the citizens' numbers go is the operator's to
                // approve: a source cannot move its dataset's lookups to
                // another server on its own.
                if proposed.endpoint != before.endpoint {
                    if !admin {
                        return Err(ApiError::denied(
                            "ROLE_NOT_PERMITTED",
                            format!(
                                "changing the endpoint of {} (to {}) is the operator's to approve: ask the operator to amend it",
                                before.name, proposed.endpoint
                            ),
                        ));
                    }
                    self.broker.check_endpoint(&proposed.endpoint).await?;
                }
                let changes = dataset_changes(&before, &proposed);
                // What consumers receive changes only when a field goes or
                // changes type: that is the operator's to decide, and never
                // under an authorisation that still names the field.
                let altered: Vec<&semel_core::FieldName> = before
                    .fields
                    .iter()
                    .filter(|f| {
                        proposed
                            .field(f.name.as_str())
                            .is_none_or(|n| n.field_type != f.field_type)
                    })
                    .map(|f| &f.name)
                    .collect();
                if !altered.is_empty() && !admin {
                    return Err(ApiError::denied(
                        "ROLE_NOT_PERMITTED",
                        format!(
                            "removing or retyping fields ({}) changes what consumers receive: ask the operator",
                            altered.iter().map(|f| f.as_str()).collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
                for f in &altered {
                    let users: Vec<&str> = snapshot
                        .authorisations
                        .values()
                        .filter(|a| {
                            a.dataset == before.name
                                && a.status != AuthorisationStatus::Revoked
                                && (a.fields.contains(*f)
                                    || a.check_fields.contains(*f)
                                    || a.checks.iter().any(|r| &r.field == *f))
                        })
                        .map(|a| a.reference.as_str())
                        .collect();
                    if !users.is_empty() {
                        return Err(precondition(
                            "FIELD_IN_USE",
                            format!(
                                "field {f} of {} is named by authorisations {}: amend or revoke them first",
                                before.name,
                                users.join(", ")
                            ),
                        ));
                    }
                }
                drop(snapshot);
                c.detail = format!(
                    "dataset {} amended: {}{}",
                    before.name,
                    if changes.is_empty() { "nothing to amend".to_owned() } else { changes.join("; ") },
                    because(&reason)
                );
                let unchanged = changes.is_empty();
                self.apply(c, move |reg| async move {
                    // Checked against this broker's snapshot: the store must
                    // still hold what was checked (another broker may have
                    // changed it since).
                    let stored = reg
                        .datasets()
                        .await?
                        .into_iter()
                        .find(|d| d.name == before.name);
                    if stored.as_ref() != Some(&before) {
                        return Err(ApiError::new(
                            Code::Aborted,
                            "CONFLICT",
                            format!(
                                "dataset {} changed meanwhile (through another broker): read it again and amend it as it is now",
                                before.name
                            ),
                        ));
                    }
                    if unchanged {
                        return Ok(((before.clone(), before), None));
                    }
                    let staged = reg
                        .stage(&[RegistryWrite::Dataset {
                            after: Box::new(proposed.clone()),
                            before: Some(Box::new(before.clone())),
                        }])
                        .await?;
                    Ok(((before, proposed), Some(staged)))
                })
                .await
            })
            .await?;
        tracing::info!(dataset = %after.name, "dataset amended");
        Ok(Response::new(proto::AmendDatasetResponse {
            dataset: Some(dataset_to_proto(&after)),
            previous: Some(dataset_to_proto(&before)),
        }))
    }

    async fn withdraw_dataset(
        &self,
        req: Request<proto::WithdrawDatasetRequest>,
    ) -> Result<Response<proto::WithdrawDatasetResponse>, Status> {
        let caller = self.broker.admit(&req).await?;
        let _guard = self.broker.admin.lock().await;
        let msg = req.into_inner();
        let admin = caller.has(UserRole::Admin);
        let (stored, _) = self
            .broker
            .audited(&caller, async |c: &mut Change| {
                let reason = semel_core::redact_national_numbers(msg.reason.trim()).into_owned();
                let before = self
                    .broker
                    .snapshot()
                    .routes
                    .values()
                    .find(|r| r.dataset.name.as_str() == msg.name)
                    .map(|r| r.dataset.clone())
                    .ok_or_else(|| {
                        ApiError::not_found(
                            "UNKNOWN_DATASET",
                            format!("there is no dataset named {}", msg.name),
                        )
                    })?;
                c.dataset = before.name.to_string();
                c.source = Some(before.source);
                if !admin && before.source != caller.org.kbo {
                    return Err(ApiError::denied(
                        "OTHER_ORGANISATION",
                        "a source withdraws its own datasets only",
                    ));
                }
                if !admin && &before.name == self.broker.register_dataset() {
                    return Err(ApiError::denied(
                        "REGISTER_DATASET_RESERVED",
                        format!("{} is the register of persons on this broker; only the operator withdraws it", before.name),
                    ));
                }
                if reason.is_empty() {
                    return Err(ApiError::invalid(
                        "reason",
                        "INVALID_ARGUMENT",
                        "a withdrawal is final: say why, for the record",
                    ));
                }
                c.detail = format!("dataset {} withdrawn{}", before.name, because(&reason));
                if before.withdrawn {
                    c.detail = format!("dataset {} already withdrawn; nothing changed", before.name);
                }
                self.apply(c, move |reg| async move {
                    let stored = reg
                        .datasets()
                        .await?
                        .into_iter()
                        .find(|d| d.name == before.name);
                    if stored.as_ref() != Some(&before) {
                        return Err(ApiError::new(
                            Code::Aborted,
                            "CONFLICT",
                            format!("dataset {} changed meanwhile (through another broker): try again", before.name),
                        ));
                    }
                    if before.withdrawn {
                        return Ok((before, None));
                    }
                    let after = semel_core::Dataset {
                        withdrawn: true,
                        ..before.clone()
                    };
                    let staged = reg
                        .stage(&[RegistryWrite::Dataset {
                            after: Box::new(after.clone()),
                            before: Some(Box::new(before)),
                        }])
                        .await?;
                    Ok((after, Some(staged)))
                })
                .await
            })
            .await?;
        tracing::warn!(dataset = %stored.name, "dataset withdrawn");
        Ok(Response::new(proto::WithdrawDatasetResponse {
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
                let stored = self
                    .apply(c, move |reg| async move {
                        if reg
                            .authorisations()
                            .await?
                            .iter()
                            .any(|a| a.reference == auth.reference)
                        {
                            return Err(exists(&format!("authorisation {}", auth.reference)));
                        }
                        let staged = reg
                            .stage(&[RegistryWrite::Authorisation {
                                after: Box::new(auth.clone()),
                                before: None,
                            }])
                            .await?;
                        Ok((auth, Some(staged)))
                    })
                    .await;
                c.authorisation_version = stored.as_ref().ok().map(|(a, _)| a.version);
                stored
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

    async fn apply_for_membership(
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

    async fn list_membership_applications(
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

    async fn decide_membership_application(
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

    async fn apply_for_authorisation(
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

    async fn list_authorisation_applications(
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

    async fn decide_authorisation_application(
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

    async fn apply_registry(
        &self,
        req: Request<proto::ApplyRegistryRequest>,
    ) -> Result<Response<proto::ApplyRegistryResponse>, Status> {
        let caller = self.broker.admit(&req).await?;
        let _guard = self.broker.admin.lock().await;
        let msg = req.into_inner();
        let now = OffsetDateTime::now_utc();
        let registry = self.broker.storage().registry.clone();
        if msg.dry_run {
            let current = apply::Current::read(&*registry).await?;
            let plan = apply::plan(&current, &msg, caller.org.kbo, now)?;
            self.check_planned_endpoints(&plan).await?;
            return Ok(Response::new(proto::ApplyRegistryResponse {
                changes: plan.changes,
                applied: false,
            }));
        }
        // An apply a broker left unsettled (stopped between its first
        // change entry and its closing entry) is settled first.
        if let Err(e) = self.broker.settle_applies_locked().await {
            tracing::warn!(error = %e.message, "could not settle earlier registry applies");
        }
        let apply_id = format!("apply {}", crate::state::new_id());
        let reason = semel_core::redact_national_numbers(msg.reason.trim()).into_owned();
        let opened = std::sync::atomic::AtomicBool::new(false);
        let result = self
            .broker
            .audited(&caller, async |c: &mut Change| {
                c.reference = apply_id.clone();
                let current = apply::Current::read(&*registry).await?;
                let plan = apply::plan(&current, &msg, caller.org.kbo, now)?;
                self.check_planned_endpoints(&plan).await?;
                let count = |a: proto::PlannedAction| {
                    plan.changes.iter().filter(|c| c.action == a as i32).count()
                };
                let closing = format!(
                    "registry applied: {} created, {} amended, {} suspended, {} reinstated, {} revoked or withdrawn, {} unchanged{}",
                    count(proto::PlannedAction::Create),
                    count(proto::PlannedAction::Amend),
                    count(proto::PlannedAction::Suspend),
                    count(proto::PlannedAction::Reinstate),
                    count(proto::PlannedAction::Revoke) + count(proto::PlannedAction::Withdraw),
                    count(proto::PlannedAction::Unchanged),
                    because(&reason)
                );
                // The apply's marker, before its first entry: a broker that
                // stops from here on leaves it, and whoever settles it
                // writes the closing entry this apply could not.
                registry
                    .open_apply(&semel_storage::ApplyMarker {
                        id: apply_id.clone(),
                        broker: String::new(),
                        organisation: caller.org.kbo,
                        end_user: crate::state::recorded_end_user(&caller.user, None, None),
                        committed: false,
                        closing: String::new(),
                    })
                    .await?;
                opened.store(true, std::sync::atomic::Ordering::Relaxed);
                // Each change's entry is durable before anything is stored,
                // and seals what it recorded.
                let mut entries = Vec::with_capacity(plan.writes.len());
                for (i, w) in &plan.writes {
                    let mut record = self.broker.audit_record(&caller, crate::state::new_id());
                    apply::record_change(&mut record, &plan.changes[*i], w, &apply_id, &reason);
                    entries.push(self.broker.append_durably_at(record).await?);
                }
                // The writes and the marker turned committed, in one commit.
                let undos = apply::write(&*registry, &plan.writes, &entries, &apply_id, &closing)
                    .await
                    .map_err(|e| ApiError {
                        message: format!("{}; nothing was applied", e.message),
                        ..e
                    })?;
                self.reload_or_retry().await;
                c.detail = closing;
                let broker = self.broker.clone();
                let registry = registry.clone();
                let apply = apply_id.clone();
                let undo: Undo = Box::pin(async move {
                    apply::undo_all(&*registry, undos, &apply).await;
                    let _ = broker.reload().await;
                });
                Ok((plan.changes, undo))
            })
            .await;
        // The closing entry is durable (or the refusal's): the marker goes.
        // A committed one taken back went with its undo; one whose undo
        // failed stays, and the next settling records the apply as standing.
        if opened.load(std::sync::atomic::Ordering::Relaxed) {
            apply::close_marker(&*registry, &apply_id, result.is_ok()).await;
        }
        let (changes, _) = result?;
        tracing::info!(changes = changes.len(), "registry applied");
        Ok(Response::new(proto::ApplyRegistryResponse {
            changes,
            applied: true,
        }))
    }

    async fn amend_authorisation(
        &self,
        req: Request<proto::AmendAuthorisationRequest>,
    ) -> Result<Response<proto::AmendAuthorisationResponse>, Status> {
        let caller = self.broker.admit(&req).await?;
        let _guard = self.broker.admin.lock().await;
        let msg = req.into_inner();
        let now = OffsetDateTime::now_utc();
        let ((before, after), _) = self
            .broker
            .audited(&caller, async |c: &mut Change| {
                let proposed =
                    authorisation_from_proto(required("authorisation", msg.authorisation)?, now)?;
                c.authorisation = Some(proposed.reference.to_string());
                c.dataset = proposed.dataset.to_string();
                c.purpose = proposed.purpose.to_string();
                let expected = msg.expected_version;
                if expected == 0 {
                    return Err(ApiError::invalid(
                        "expected_version",
                        "INVALID_ARGUMENT",
                        "expected_version is required: the version you amend, as GetAuthorisation shows it",
                    ));
                }
                check_authorisation(&self.broker.snapshot(), &proposed)?;
                let reason = semel_core::redact_national_numbers(msg.reason.trim()).into_owned();
                let (pair, undo) = self
                    .apply(c, move |reg| async move {
                        let before = current_authorisation(&*reg, proposed.reference.as_str()).await?;
                        if before.status == AuthorisationStatus::Revoked {
                            return Err(ended(&before));
                        }
                        for (field, was, is) in [
                            ("authorisation.consumer_kbo", before.consumer.to_string(), proposed.consumer.to_string()),
                            ("authorisation.dataset", before.dataset.to_string(), proposed.dataset.to_string()),
                        ] {
                            if was != is {
                                return Err(ApiError::invalid(
                                    field,
                                    "IMMUTABLE_FIELD",
                                    format!(
                                        "authorisation {} is for {was}, not {is}; for another, record a new authorisation",
                                        before.reference
                                    ),
                                ));
                            }
                        }
                        if before.version != expected {
                            return Err(ApiError::new(
                                Code::Aborted,
                                "CONFLICT",
                                format!(
                                    "authorisation {} is at version {}, not {expected}: read it again and amend the current version",
                                    before.reference, before.version
                                ),
                            ));
                        }
                        let after = semel_core::Authorisation {
                            status: before.status,
                            version: before.version + 1,
                            updated_at: now,
                            ..proposed
                        };
                        // The same content again changes nothing: applying
                        // a reviewed file twice makes no second version.
                        if same_content(&before, &after) {
                            return Ok(((before.clone(), before), None));
                        }
                        let staged = reg
                            .stage(&[RegistryWrite::Authorisation {
                                after: Box::new(after.clone()),
                                before: Some(Box::new(before.clone())),
                            }])
                            .await?;
                        Ok(((before, after), Some(staged)))
                    })
                    .await?;
                let (before, after) = &pair;
                c.authorisation_version = Some(after.version);
                c.detail = if before.version == after.version {
                    format!("authorisation amended: v{} unchanged, nothing to amend", after.version)
                } else {
                    format!(
                        "authorisation amended v{} → v{}: {}{}",
                        before.version,
                        after.version,
                        amendment_text(before, after),
                        because(&reason)
                    )
                };
                Ok((pair, undo))
            })
            .await?;
        tracing::info!(reference = %after.reference, version = after.version, "authorisation amended");
        Ok(Response::new(proto::AmendAuthorisationResponse {
            authorisation: Some(authorisation_to_proto(&after)),
            previous: Some(authorisation_to_proto(&before)),
        }))
    }

    async fn revoke_authorisation(
        &self,
        req: Request<proto::RevokeAuthorisationRequest>,
    ) -> Result<Response<proto::RevokeAuthorisationResponse>, Status> {
        let caller = self.broker.admit(&req).await?;
        let msg = req.into_inner();
        let auth = self
            .set_auth_status(
                &caller,
                msg.reference.clone(),
                AuthorisationStatus::Revoked,
                &msg.reason,
            )
            .await?;
        tracing::warn!(reference = %auth.reference, version = auth.version, "authorisation revoked");
        Ok(Response::new(proto::RevokeAuthorisationResponse {
            authorisation: Some(authorisation_to_proto(&auth)),
        }))
    }

    async fn list_authorisation_versions(
        &self,
        req: Request<proto::ListAuthorisationVersionsRequest>,
    ) -> Result<Response<proto::ListAuthorisationVersionsResponse>, Status> {
        let caller = self.broker.admit(&req).await?;
        let snapshot = self.broker.snapshot();
        let reference = req.get_ref().reference.trim();
        // Whoever may see the authorisation may see its history.
        snapshot
            .authorisations
            .get(reference)
            .filter(|a| visible(&caller, a, &snapshot))
            .ok_or_else(|| unknown_authorisation(reference))?;
        let versions = self.broker.authorisation_history(reference).await?;
        Ok(Response::new(proto::ListAuthorisationVersionsResponse {
            versions: versions.iter().map(authorisation_to_proto).collect(),
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
                    "purpose {} added; description: {}; legal basis: {}",
                    purpose.code,
                    quoted(&purpose.description),
                    quoted(&purpose.legal_basis)
                );
                self.apply(c, move |reg| async move {
                    let staged = reg
                        .stage(&[RegistryWrite::Purpose {
                            after: Box::new(purpose.clone()),
                            before: None,
                        }])
                        .await
                        .map_err(|e| taken(e, &format!("purpose {}", purpose.code)))?;
                    Ok((purpose, Some(staged)))
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
                    "certificate {} revoked{}",
                    colon_pairs(&revoked.id.key()),
                    because(&revoked.reason)
                );
                self.apply(c, move |reg| async move {
                    let existed = reg
                        .revoked_certificates()
                        .await?
                        .iter()
                        .any(|r| r.id == revoked.id);
                    let stored = reg.revoke_certificate(&revoked).await?;
                    let undo = (!existed).then(|| {
                        Staged::Committed(vec![RegistryUndo::Revocation(stored.id.clone())])
                    });
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
            Standing::DatasetWithdrawn => proto::CatalogueState::DatasetWithdrawn,
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

    async fn set_auth_status(
        &self,
        caller: &crate::state::Caller,
        reference: String,
        status: AuthorisationStatus,
        reason: &str,
    ) -> Result<semel_core::Authorisation, ApiError> {
        let _guard = self.broker.admin.lock().await;
        let reason = semel_core::redact_national_numbers(reason.trim()).into_owned();
        let c_started = OffsetDateTime::now_utc();
        self.broker
            .audited(caller, async |c: &mut Change| {
                c.authorisation = Some(reference.chars().take(64).collect());
                let word = match status {
                    AuthorisationStatus::Suspended => "suspended",
                    AuthorisationStatus::Active => "reinstated",
                    AuthorisationStatus::Revoked => "revoked",
                };
                c.detail = format!("authorisation {word}{}", because(&reason));
                if status == AuthorisationStatus::Revoked && reason.is_empty() {
                    return Err(ApiError::invalid(
                        "reason",
                        "INVALID_ARGUMENT",
                        "a revocation is final: say why, for the record (e.g. the deliberation that ends it)",
                    ));
                }
                let (auth, undo) = self
                    .apply(c, move |reg| async move {
                        let before = current_authorisation(&*reg, &reference).await?;
                        if before.status == status {
                            return Ok((before, None));
                        }
                        if before.status == AuthorisationStatus::Revoked {
                            return Err(ended(&before));
                        }
                        let mut auth = before.clone();
                        auth.status = status;
                        auth.version += 1;
                        auth.updated_at = OffsetDateTime::now_utc();
                        let staged = reg
                            .stage(&[RegistryWrite::Authorisation {
                                after: Box::new(auth.clone()),
                                before: Some(Box::new(before)),
                            }])
                            .await?;
                        Ok((auth, Some(staged)))
                    })
                    .await?;
                c.authorisation_version = Some(auth.version);
                if auth.status == status && auth.updated_at < c_started {
                    c.detail = format!(
                        "authorisation already {} at v{}; nothing changed",
                        match status {
                            AuthorisationStatus::Active => "active",
                            _ => word,
                        },
                        auth.version
                    );
                }
                Ok((auth, undo))
            })
            .await
            .map(|(auth, _)| auth)
    }
}

/// The stored (current) version of an authorisation, read from the store
/// rather than the snapshot: another broker may have changed it.
async fn current_authorisation(
    reg: &dyn RegistryStore,
    reference: &str,
) -> Result<semel_core::Authorisation, ApiError> {
    reg.authorisations()
        .await?
        .into_iter()
        .find(|a| a.reference.as_str() == reference)
        .ok_or_else(|| unknown_authorisation(reference))
}

/// The reasons of a decision on an application: required to reject.
fn decision_note(approve: bool, note: &str) -> Result<String, ApiError> {
    let note = semel_core::redact_national_numbers(note.trim()).into_owned();
    if !approve && note.is_empty() {
        return Err(ApiError::invalid(
            "note",
            "INVALID_ARGUMENT",
            "a rejection gives its reasons, for the applicant",
        ));
    }
    Ok(note)
}

fn unknown_application(id: &str) -> ApiError {
    ApiError::not_found(
        "UNKNOWN_APPLICATION",
        format!("no application {id} is on record"),
    )
}

fn already_decided(id: &str) -> ApiError {
    precondition(
        "APPLICATION_DECIDED",
        format!("application {id} was already decided"),
    )
}

fn withdrawn(name: &semel_core::DatasetName) -> ApiError {
    precondition(
        "DATASET_WITHDRAWN",
        format!(
            "dataset {name} was withdrawn: it can no longer change; a new publication is a new dataset"
        ),
    )
}

fn ended(a: &semel_core::Authorisation) -> ApiError {
    precondition(
        "AUTHORISATION_ENDED",
        format!(
            "authorisation {} was revoked at version {}: it can no longer change; a new deliberation is a new authorisation",
            a.reference, a.version
        ),
    )
}

/// What an amendment changed, attribute by attribute, for its audit entry:
/// `fields [a, b] → [a]; valid until open end → 2027-12-31`. Both versions
/// stay in the registry's history; this says where to look.
fn amendment_text(before: &semel_core::Authorisation, after: &semel_core::Authorisation) -> String {
    fn list<T: std::fmt::Display>(i: impl IntoIterator<Item = T>) -> String {
        let v: Vec<String> = i.into_iter().map(|x| x.to_string()).collect();
        format!("[{}]", v.join(", "))
    }
    let date =
        |d: Option<time::Date>, none: &str| d.map_or_else(|| none.to_owned(), |d| d.to_string());
    let attributes = |a: &semel_core::Authorisation| {
        [
            ("fields", list(&a.fields)),
            ("check fields", list(&a.check_fields)),
            (
                "questions",
                list(a.checks.iter().map(semel_core::CheckRule::describe)),
            ),
            ("capacities", list(&a.capacities)),
            ("purpose", a.purpose.to_string()),
            ("valid from", a.valid_from.to_string()),
            ("valid until", date(a.valid_until, "open end")),
            (
                "confidential until",
                date(a.confidential_until, "not confidential"),
            ),
            ("consent required", a.consent_required.to_string()),
            ("receives mutations", a.receives_mutations.to_string()),
            // Free text last, bounded: it never pushes the change out.
            ("legal basis", quoted(&a.legal_basis).into_owned()),
            ("issuing body", quoted(&a.issuing_body).into_owned()),
        ]
    };
    let changes: Vec<String> = attributes(before)
        .into_iter()
        .zip(attributes(after))
        .filter(|((_, b), (_, a))| b != a)
        .map(|((name, b), (_, a))| format!("{name} {b} → {a}"))
        .collect();
    changes.join("; ")
}

/// What an amendment of a dataset changes, in words.
fn dataset_changes(before: &semel_core::Dataset, after: &semel_core::Dataset) -> Vec<String> {
    let mut out = Vec::new();
    if before.endpoint != after.endpoint {
        out.push(format!("endpoint {} → {}", before.endpoint, after.endpoint));
    }
    if before.description != after.description {
        out.push("description changed".to_owned());
    }
    if before.keeps_history != after.keeps_history {
        out.push(format!(
            "keeps history {} → {}",
            before.keeps_history, after.keeps_history
        ));
    }
    let names = |d: &semel_core::Dataset, other: &semel_core::Dataset| -> Vec<String> {
        d.fields
            .iter()
            .filter(|f| other.field(f.name.as_str()).is_none())
            .map(|f| f.name.to_string())
            .collect()
    };
    let added = names(after, before);
    if !added.is_empty() {
        out.push(format!("fields added [{}]", added.join(", ")));
    }
    let removed = names(before, after);
    if !removed.is_empty() {
        out.push(format!("fields removed [{}]", removed.join(", ")));
    }
    for f in &before.fields {
        if let Some(n) = after.field(f.name.as_str()) {
            if n.field_type != f.field_type {
                out.push(format!(
                    "field {} {:?} → {:?}",
                    f.name, f.field_type, n.field_type
                ));
            } else if n.description != f.description {
                out.push(format!("field {} described anew", f.name));
            }
        }
    }
    let order =
        |d: &semel_core::Dataset| d.fields.iter().map(|f| f.name.clone()).collect::<Vec<_>>();
    if out.is_empty() && order(before) != order(after) {
        out.push("fields reordered".to_owned());
    }
    out
}

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

/// Whether two versions say the same thing (version and time aside).
fn same_content(a: &semel_core::Authorisation, b: &semel_core::Authorisation) -> bool {
    let strip = |x: &semel_core::Authorisation| semel_core::Authorisation {
        version: 0,
        updated_at: OffsetDateTime::UNIX_EPOCH,
        ..x.clone()
    };
    strip(a) == strip(b)
}

/// Checks an authorisation against the registry: its consumer, purpose,
/// dataset, fields and questions must exist.
fn check_authorisation(
    snapshot: &crate::state::Snapshot,
    auth: &semel_core::Authorisation,
) -> Result<(), ApiError> {
    check_authorisation_in(
        snapshot.organisations.get(&auth.consumer).map(|o| &**o),
        snapshot.purposes.contains_key(auth.purpose.as_str()),
        snapshot.routes.get(&auth.dataset).map(|r| &r.dataset),
        auth,
    )
}

/// Checks an authorisation against its consumer, whether its purpose is in
/// the catalogue, and its dataset, as they are or as they will be.
pub(crate) fn check_authorisation_in(
    consumer: Option<&Organisation>,
    purpose_known: bool,
    dataset: Option<&semel_core::Dataset>,
    auth: &semel_core::Authorisation,
) -> Result<(), ApiError> {
    match consumer {
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
    if !purpose_known {
        return Err(precondition(
            "UNKNOWN_PURPOSE",
            format!(
                "there is no purpose {} in the catalogue; add it with CreatePurpose first",
                auth.purpose
            ),
        ));
    }
    let dataset = dataset.ok_or_else(|| {
        ApiError::not_found(
            "UNKNOWN_DATASET",
            format!("there is no dataset named {}", auth.dataset),
        )
    })?;
    if dataset.withdrawn {
        return Err(withdrawn(&dataset.name));
    }
    if let Some(f) = auth
        .fields
        .iter()
        .chain(&auth.check_fields)
        .chain(auth.checks.iter().map(|r| &r.field))
        .find(|f| dataset.field(f.as_str()).is_none())
    {
        return Err(ApiError::invalid(
            "authorisation.fields",
            "UNKNOWN_FIELD",
            format!("dataset {} has no field {f}", auth.dataset),
        ));
    }
    for f in &auth.check_fields {
        if dataset.field(f.as_str()).is_some_and(|d| {
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
            dataset,
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
        "{} v{} for {} on {}, purpose {}, fields [{}], check fields [{}], questions [{}], capacities [{}], consent {}, valid {} to {}{}{}; legal basis: {}; issuing body: {}",
        a.reference,
        a.version,
        a.consumer,
        a.dataset,
        a.purpose,
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
            .unwrap_or_default(),
        if a.receives_mutations {
            ", receives changes"
        } else {
            ""
        },
        quoted(&a.legal_basis),
        quoted(&a.issuing_body)
    )
}

/// The most applications for authorisations one organisation has pending.
pub const MAX_PENDING_APPLICATIONS: usize = 50;

/// The most applications listed at once, and by default.
const MAX_APPLICATION_PAGE: usize = 1000;
const DEFAULT_APPLICATION_PAGE: usize = 100;

/// Where a page of applications starts: (time applied in microseconds, id)
/// of the last one of the page before, as its token says.
type PageAfter = Option<(i128, String)>;

/// A page of applications' size and start, from a request.
fn application_page(page_size: i32, page_token: &str) -> Result<(usize, PageAfter), ApiError> {
    let limit = match page_size {
        0 => DEFAULT_APPLICATION_PAGE,
        n if n < 0 => {
            return Err(ApiError::invalid(
                "page_size",
                "INVALID_ARGUMENT",
                "page_size cannot be negative",
            ));
        }
        n => (n as usize).min(MAX_APPLICATION_PAGE),
    };
    if page_token.is_empty() {
        return Ok((limit, None));
    }
    let bad = || {
        ApiError::invalid(
            "page_token",
            "INVALID_ARGUMENT",
            "page_token must be copied from a previous response's next_page_token",
        )
    };
    let (micros, id) = page_token.split_once('.').ok_or_else(bad)?;
    let micros: i128 = micros.parse().map_err(|_| bad())?;
    Ok((limit, Some((micros, id.to_owned()))))
}

/// Keeps one page of `items`, newest first (by time applied, then id),
/// after `after`; returns the next page's token, empty after the last.
fn page_of<T>(
    items: &mut Vec<T>,
    limit: usize,
    after: PageAfter,
    key: impl Fn(&T) -> (OffsetDateTime, &String),
) -> String {
    let micros = |t: OffsetDateTime| t.unix_timestamp_nanos() / 1000;
    items.sort_by(|a, b| {
        let (ta, ia) = key(a);
        let (tb, ib) = key(b);
        (micros(tb), ib).cmp(&(micros(ta), ia))
    });
    if let Some((t, id)) = after {
        items.retain(|x| {
            let (tx, ix) = key(x);
            (micros(tx), ix) < (t, &id)
        });
    }
    let more = items.len() > limit;
    items.truncate(limit);
    match items.last() {
        Some(last) if more => {
            let (t, id) = key(last);
            format!("{}.{id}", micros(t))
        }
        _ => String::new(),
    }
}

/// Free text (a name, a legal basis) as a detail quotes it: bounded on its
/// own, so it never pushes the change out of the entry.
fn quoted(text: &str) -> std::borrow::Cow<'_, str> {
    semel_core::quote_free_text(text)
}

/// A change's reason, after the change: `; reason: …`, bounded.
fn because(reason: &str) -> String {
    if reason.trim().is_empty() {
        String::new()
    } else {
        format!("; reason: {}", quoted(reason.trim()))
    }
}

/// A decision's note, after the decision: `; note: …`, bounded.
fn note_text(note: &str) -> String {
    if note.trim().is_empty() {
        String::new()
    } else {
        format!("; note: {}", quoted(note.trim()))
    }
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

fn application_state_to_proto(s: semel_core::ApplicationState) -> proto::ApplicationState {
    match s {
        semel_core::ApplicationState::Pending => proto::ApplicationState::Pending,
        semel_core::ApplicationState::Approved => proto::ApplicationState::Approved,
        semel_core::ApplicationState::Rejected => proto::ApplicationState::Rejected,
    }
}

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
