//! `RegistryService`: organisations, datasets and authorisations. Reads are
//! open to every registered organisation; changes need the operator role.
//! Every change is durable before it is answered and takes effect on the
//! next call.
//!
//! This file holds the service, the way a change is applied, the errors and
//! texts the resources share, and the list of calls; each resource's calls
//! are in its submodule: `organisations`, `datasets` (with the purposes and
//! the catalogue), `authorisations`, `memberships` (applications for
//! membership), `applications` (applications for authorisations),
//! `certificates` (revocations), and `apply` (`ApplyRegistry`'s plan).

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

mod applications;
mod apply;
mod authorisations;
mod certificates;
mod datasets;
mod memberships;
mod organisations;

pub use applications::MAX_PENDING_APPLICATIONS;
use memberships::MembershipThrottle;

pub struct RegistryService {
    broker: Arc<Broker>,
    /// Applications for membership come from certificates of organisations
    /// not registered yet, before any role is known: bounded per enterprise
    /// number and in all, before anything is read from the store.
    memberships: Arc<MembershipThrottle>,
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

// Each call's body is a method of `RegistryService` in the submodule of its
// resource; an inherent method is found before the trait's of the same name,
// so `self.create_organisation(request)` below calls the submodule's.
#[tonic::async_trait]
impl Rpc for RegistryService {
    async fn create_organisation(
        &self,
        request: Request<proto::CreateOrganisationRequest>,
    ) -> Result<Response<proto::CreateOrganisationResponse>, Status> {
        self.create_organisation(request).await
    }

    async fn amend_organisation(
        &self,
        request: Request<proto::AmendOrganisationRequest>,
    ) -> Result<Response<proto::AmendOrganisationResponse>, Status> {
        self.amend_organisation(request).await
    }

    async fn get_organisation(
        &self,
        request: Request<proto::GetOrganisationRequest>,
    ) -> Result<Response<proto::GetOrganisationResponse>, Status> {
        self.get_organisation(request).await
    }

    async fn list_organisations(
        &self,
        request: Request<proto::ListOrganisationsRequest>,
    ) -> Result<Response<proto::ListOrganisationsResponse>, Status> {
        self.list_organisations(request).await
    }

    async fn suspend_organisation(
        &self,
        request: Request<proto::SuspendOrganisationRequest>,
    ) -> Result<Response<proto::SuspendOrganisationResponse>, Status> {
        self.suspend_organisation(request).await
    }

    async fn reinstate_organisation(
        &self,
        request: Request<proto::ReinstateOrganisationRequest>,
    ) -> Result<Response<proto::ReinstateOrganisationResponse>, Status> {
        self.reinstate_organisation(request).await
    }

    async fn create_dataset(
        &self,
        request: Request<proto::CreateDatasetRequest>,
    ) -> Result<Response<proto::CreateDatasetResponse>, Status> {
        self.create_dataset(request).await
    }

    async fn amend_dataset(
        &self,
        request: Request<proto::AmendDatasetRequest>,
    ) -> Result<Response<proto::AmendDatasetResponse>, Status> {
        self.amend_dataset(request).await
    }

    async fn withdraw_dataset(
        &self,
        request: Request<proto::WithdrawDatasetRequest>,
    ) -> Result<Response<proto::WithdrawDatasetResponse>, Status> {
        self.withdraw_dataset(request).await
    }

    async fn get_dataset(
        &self,
        request: Request<proto::GetDatasetRequest>,
    ) -> Result<Response<proto::GetDatasetResponse>, Status> {
        self.get_dataset(request).await
    }

    async fn list_datasets(
        &self,
        request: Request<proto::ListDatasetsRequest>,
    ) -> Result<Response<proto::ListDatasetsResponse>, Status> {
        self.list_datasets(request).await
    }

    async fn create_authorisation(
        &self,
        request: Request<proto::CreateAuthorisationRequest>,
    ) -> Result<Response<proto::CreateAuthorisationResponse>, Status> {
        self.create_authorisation(request).await
    }

    async fn get_authorisation(
        &self,
        request: Request<proto::GetAuthorisationRequest>,
    ) -> Result<Response<proto::GetAuthorisationResponse>, Status> {
        self.get_authorisation(request).await
    }

    async fn list_authorisations(
        &self,
        request: Request<proto::ListAuthorisationsRequest>,
    ) -> Result<Response<proto::ListAuthorisationsResponse>, Status> {
        self.list_authorisations(request).await
    }

    async fn suspend_authorisation(
        &self,
        request: Request<proto::SuspendAuthorisationRequest>,
    ) -> Result<Response<proto::SuspendAuthorisationResponse>, Status> {
        self.suspend_authorisation(request).await
    }

    async fn reinstate_authorisation(
        &self,
        request: Request<proto::ReinstateAuthorisationRequest>,
    ) -> Result<Response<proto::ReinstateAuthorisationResponse>, Status> {
        self.reinstate_authorisation(request).await
    }

    async fn apply_for_membership(
        &self,
        request: Request<proto::ApplyForMembershipRequest>,
    ) -> Result<Response<proto::ApplyForMembershipResponse>, Status> {
        self.apply_for_membership(request).await
    }

    async fn list_membership_applications(
        &self,
        request: Request<proto::ListMembershipApplicationsRequest>,
    ) -> Result<Response<proto::ListMembershipApplicationsResponse>, Status> {
        self.list_membership_applications(request).await
    }

    async fn decide_membership_application(
        &self,
        request: Request<proto::DecideMembershipApplicationRequest>,
    ) -> Result<Response<proto::DecideMembershipApplicationResponse>, Status> {
        self.decide_membership_application(request).await
    }

    async fn apply_for_authorisation(
        &self,
        request: Request<proto::ApplyForAuthorisationRequest>,
    ) -> Result<Response<proto::ApplyForAuthorisationResponse>, Status> {
        self.apply_for_authorisation(request).await
    }

    async fn list_authorisation_applications(
        &self,
        request: Request<proto::ListAuthorisationApplicationsRequest>,
    ) -> Result<Response<proto::ListAuthorisationApplicationsResponse>, Status> {
        self.list_authorisation_applications(request).await
    }

    async fn decide_authorisation_application(
        &self,
        request: Request<proto::DecideAuthorisationApplicationRequest>,
    ) -> Result<Response<proto::DecideAuthorisationApplicationResponse>, Status> {
        self.decide_authorisation_application(request).await
    }

    async fn apply_registry(
        &self,
        request: Request<proto::ApplyRegistryRequest>,
    ) -> Result<Response<proto::ApplyRegistryResponse>, Status> {
        self.apply_registry(request).await
    }

    async fn amend_authorisation(
        &self,
        request: Request<proto::AmendAuthorisationRequest>,
    ) -> Result<Response<proto::AmendAuthorisationResponse>, Status> {
        self.amend_authorisation(request).await
    }

    async fn revoke_authorisation(
        &self,
        request: Request<proto::RevokeAuthorisationRequest>,
    ) -> Result<Response<proto::RevokeAuthorisationResponse>, Status> {
        self.revoke_authorisation(request).await
    }

    async fn list_authorisation_versions(
        &self,
        request: Request<proto::ListAuthorisationVersionsRequest>,
    ) -> Result<Response<proto::ListAuthorisationVersionsResponse>, Status> {
        self.list_authorisation_versions(request).await
    }

    async fn create_purpose(
        &self,
        request: Request<proto::CreatePurposeRequest>,
    ) -> Result<Response<proto::CreatePurposeResponse>, Status> {
        self.create_purpose(request).await
    }

    async fn list_purposes(
        &self,
        request: Request<proto::ListPurposesRequest>,
    ) -> Result<Response<proto::ListPurposesResponse>, Status> {
        self.list_purposes(request).await
    }

    async fn get_catalogue(
        &self,
        request: Request<proto::GetCatalogueRequest>,
    ) -> Result<Response<proto::GetCatalogueResponse>, Status> {
        self.get_catalogue(request).await
    }

    async fn revoke_certificate(
        &self,
        request: Request<proto::RevokeCertificateRequest>,
    ) -> Result<Response<proto::RevokeCertificateResponse>, Status> {
        self.revoke_certificate(request).await
    }

    async fn list_revoked_certificates(
        &self,
        request: Request<proto::ListRevokedCertificatesRequest>,
    ) -> Result<Response<proto::ListRevokedCertificatesResponse>, Status> {
        self.list_revoked_certificates(request).await
    }
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

fn roles_text(roles: &std::collections::BTreeSet<Role>) -> String {
    roles
        .iter()
        .map(|r| format!("{r:?}").to_lowercase())
        .collect::<Vec<_>>()
        .join(", ")
}

fn application_state_to_proto(s: semel_core::ApplicationState) -> proto::ApplicationState {
    match s {
        semel_core::ApplicationState::Pending => proto::ApplicationState::Pending,
        semel_core::ApplicationState::Approved => proto::ApplicationState::Approved,
        semel_core::ApplicationState::Rejected => proto::ApplicationState::Rejected,
    }
}
