//! `RegistryService`: organisations, datasets and authorisations. Reads are
//! open to every registered organisation; changes need the operator role.
//! Every change is durable before it is answered and takes effect on the
//! next call.

use std::sync::Arc;

use semel_core::{
    AuthorisationStatus, CertificateId, Kbo, OrganisationStatus, ReasonCode, RevokedCertificate,
    Role, UserRole,
};
use time::OffsetDateTime;
use tonic::{Code, Request, Response, Status};

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

    /// Runs a registry change under the admin lock, then reloads the snapshot.
    async fn change<T: Send + 'static>(
        &self,
        f: impl FnOnce(&semel_store::Registry) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let _guard = self.broker.admin.lock().await;
        let broker = self.broker.clone();
        tokio::task::spawn_blocking(move || {
            let out = f(broker.store().registry())?;
            broker.reload()?;
            Ok(out)
        })
        .await
        .map_err(|e| ApiError::internal(format!("registry change failed: {e}")))?
    }
}

fn exists(what: &str) -> ApiError {
    ApiError::new(
        Code::AlreadyExists,
        "ALREADY_EXISTS",
        format!("{what} already exists"),
    )
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
        self.broker.admit(&req).await?;
        let org = organisation_from_proto(
            required("organisation", req.into_inner().organisation)?,
            OffsetDateTime::now_utc(),
        )?;
        let stored = self
            .change(move |reg| {
                if reg.organisation(&org.kbo)?.is_some() {
                    return Err(exists(&format!("organisation {}", org.kbo)));
                }
                reg.put_organisation(&org)?;
                Ok(org)
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
        self.broker.admit(&req).await?;
        let msg = req.into_inner();
        let kbo = parse_kbo("kbo", &msg.kbo)?;
        let org = self
            .set_org_status(kbo, OrganisationStatus::Suspended)
            .await?;
        tracing::warn!(kbo = kbo.as_str(), reason = %semel_core::redact_national_numbers(&msg.reason), "organisation suspended");
        Ok(Response::new(proto::SuspendOrganisationResponse {
            organisation: Some(organisation_to_proto(&org)),
        }))
    }

    async fn reinstate_organisation(
        &self,
        req: Request<proto::ReinstateOrganisationRequest>,
    ) -> Result<Response<proto::ReinstateOrganisationResponse>, Status> {
        self.broker.admit(&req).await?;
        let kbo = parse_kbo("kbo", &req.get_ref().kbo)?;
        let org = self.set_org_status(kbo, OrganisationStatus::Active).await?;
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
        let dataset = dataset_from_proto(required("dataset", req.into_inner().dataset)?)?;
        if !caller.has(UserRole::Admin) && dataset.source != caller.org.kbo {
            let error = ApiError::denied(
                "OTHER_ORGANISATION",
                "a source registers its own datasets only: source_kbo must be your organisation",
            );
            return Err(self
                .broker
                .refuse(&caller, error, ReasonCode::OtherOrganisation, None)
                .await
                .into());
        }
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
                )
                .into());
            }
            None => return Err(unknown_org(&dataset.source).into()),
        }
        drop(snapshot);
        let stored = self
            .change(move |reg| {
                if reg.datasets()?.iter().any(|d| d.name == dataset.name) {
                    return Err(exists(&format!("dataset {}", dataset.name)));
                }
                reg.put_dataset(&dataset)?;
                Ok(dataset)
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
        self.broker.admit(&req).await?;
        let auth = authorisation_from_proto(
            required("authorisation", req.into_inner().authorisation)?,
            OffsetDateTime::now_utc(),
        )?;
        let snapshot = self.broker.snapshot();
        match snapshot.organisations.get(&auth.consumer) {
            Some(o) if o.roles.contains(&Role::Consumer) => {}
            Some(_) => {
                return Err(precondition(
                    "NOT_A_CONSUMER",
                    format!(
                        "organisation {} is not registered as a consumer",
                        auth.consumer
                    ),
                )
                .into());
            }
            None => return Err(unknown_org(&auth.consumer).into()),
        }
        if !snapshot.purposes.contains_key(auth.purpose.as_str()) {
            return Err(precondition(
                "UNKNOWN_PURPOSE",
                format!(
                    "there is no purpose {} in the catalogue; add it with CreatePurpose first",
                    auth.purpose
                ),
            )
            .into());
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
            .find(|f| route.dataset.field(f.as_str()).is_none())
        {
            return Err(ApiError::invalid(
                "authorisation.fields",
                "UNKNOWN_FIELD",
                format!("dataset {} has no field {f}", auth.dataset),
            )
            .into());
        }
        drop(snapshot);
        let stored = self
            .change(move |reg| {
                if reg
                    .authorisations()?
                    .iter()
                    .any(|a| a.reference == auth.reference)
                {
                    return Err(exists(&format!("authorisation {}", auth.reference)));
                }
                reg.put_authorisation(&auth)?;
                Ok(auth)
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
        self.broker.admit(&req).await?;
        let msg = req.into_inner();
        let auth = self
            .set_auth_status(msg.reference.clone(), AuthorisationStatus::Suspended)
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
        self.broker.admit(&req).await?;
        let auth = self
            .set_auth_status(req.into_inner().reference, AuthorisationStatus::Active)
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
        self.broker.admit(&req).await?;
        let purpose = purpose_from_proto(required("purpose", req.into_inner().purpose)?)?;
        let stored = self
            .change(move |reg| {
                if reg.purposes()?.iter().any(|p| p.code == purpose.code) {
                    return Err(exists(&format!("purpose {}", purpose.code)));
                }
                reg.put_purpose(&purpose)?;
                Ok(purpose)
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

    async fn revoke_certificate(
        &self,
        req: Request<proto::RevokeCertificateRequest>,
    ) -> Result<Response<proto::RevokeCertificateResponse>, Status> {
        let caller = self.broker.admit(&req).await?;
        let proto::RevokeCertificateRequest {
            sha256_fingerprint,
            serial_number,
            reason,
        } = req.into_inner();
        let id = match (sha256_fingerprint.is_empty(), serial_number.is_empty()) {
            (false, true) => CertificateId::sha256(&sha256_fingerprint).map_err(|e| {
                ApiError::invalid(
                    "sha256_fingerprint",
                    "INVALID_ARGUMENT",
                    format!("sha256_fingerprint: {e}"),
                )
            })?,
            (true, false) => CertificateId::serial(&serial_number).map_err(|e| {
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
                )
                .into());
            }
        };
        let reason = reason.trim().to_owned();
        if reason.is_empty() || reason.chars().count() > 256 {
            return Err(ApiError::invalid(
                "reason",
                "INVALID_ARGUMENT",
                "reason is required, at most 256 characters",
            )
            .into());
        }
        let revoked = RevokedCertificate {
            id,
            reason: semel_core::redact_national_numbers(&reason).into_owned(),
            revoked_at: OffsetDateTime::now_utc(),
        };
        let stored = self
            .change(move |reg| Ok(reg.revoke_certificate(&revoked)?))
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
        let broker = self.broker.clone();
        let mut revoked =
            tokio::task::spawn_blocking(move || broker.store().registry().revoked_certificates())
                .await
                .map_err(|e| ApiError::internal(format!("read revocations failed: {e}")))?
                .map_err(ApiError::from)?;
        revoked.sort_by_key(|r| std::cmp::Reverse(r.revoked_at));
        Ok(Response::new(proto::ListRevokedCertificatesResponse {
            revoked: revoked.iter().map(revoked_to_proto).collect(),
        }))
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
        kbo: Kbo,
        status: OrganisationStatus,
    ) -> Result<semel_core::Organisation, ApiError> {
        self.change(move |reg| {
            let mut org = reg.organisation(&kbo)?.ok_or_else(|| unknown_org(&kbo))?;
            org.status = status;
            reg.put_organisation(&org)?;
            Ok(org)
        })
        .await
    }

    async fn set_auth_status(
        &self,
        reference: String,
        status: AuthorisationStatus,
    ) -> Result<semel_core::Authorisation, ApiError> {
        self.change(move |reg| {
            let mut auth = reg
                .authorisations()?
                .into_iter()
                .find(|a| a.reference.as_str() == reference)
                .ok_or_else(|| unknown_authorisation(&reference))?;
            if auth.status == status {
                return Ok(auth);
            }
            auth.status = status;
            auth.version += 1;
            auth.updated_at = OffsetDateTime::now_utc();
            reg.put_authorisation(&auth)?;
            Ok(auth)
        })
        .await
    }
}

fn revoked_to_proto(r: &RevokedCertificate) -> proto::RevokedCertificate {
    let (sha256_fingerprint, serial_number) = match &r.id {
        CertificateId::Sha256(h) => (h.clone(), String::new()),
        CertificateId::Serial(h) => (String::new(), h.clone()),
    };
    proto::RevokedCertificate {
        sha256_fingerprint,
        serial_number,
        reason: r.reason.clone(),
        revoked_at: Some(timestamp_micros(
            (r.revoked_at.unix_timestamp_nanos() / 1000) as i64,
        )),
    }
}
