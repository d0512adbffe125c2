//! The registry's calls: its files exported and applied, organisations and
//! their applications for membership, datasets, purposes, revoked
//! certificates and the catalogue.

use std::collections::BTreeMap;

use semel_proto as proto;
use serde_json::{Value as Json, json};
use tonic_types::StatusExt;

use crate::error::{CallError, CallResult, usage};
use crate::json::{
    catalogue_entry_json, dataset_json, membership_json, org_json, purpose_json, revoked_json,
};
use crate::{Client, registry_files};

/// A new dataset for `semel admin dataset create`; each field is
/// `name:type:description`.
#[derive(Debug, Clone, Default)]
pub struct NewDataset {
    pub name: String,
    pub source: String,
    pub description: String,
    pub endpoint: String,
    pub fields: Vec<String>,
    pub keeps_history: bool,
}

/// What `semel admin dataset amend` changes; `None` keeps the value.
#[derive(Debug, Default)]
pub struct DatasetPatch {
    pub description: Option<String>,
    pub endpoint: Option<String>,
    pub keeps_history: Option<bool>,
    /// `name:type:description`; a field of that name is replaced.
    pub add_fields: Vec<String>,
    pub remove_fields: Vec<String>,
}

fn organisation_roles(roles: &[String]) -> Result<Vec<i32>, CallError> {
    roles
        .iter()
        .filter(|r| !r.trim().is_empty())
        .map(|r| match r.trim() {
            "source" => Ok(proto::OrganisationRole::Source as i32),
            "consumer" => Ok(proto::OrganisationRole::Consumer as i32),
            "operator" => Ok(proto::OrganisationRole::Operator as i32),
            "auditor" => Ok(proto::OrganisationRole::Auditor as i32),
            "citizen_portal" => Ok(proto::OrganisationRole::CitizenPortal as i32),
            other => Err(usage(format!(
                "unknown role {other}; use source, consumer, operator, auditor or citizen_portal"
            ))),
        })
        .collect()
}

fn field_definition(spec: &str) -> Result<proto::FieldDefinition, CallError> {
    let mut parts = spec.splitn(3, ':');
    let (Some(name), Some(kind), Some(description)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(usage(format!(
            "field {spec:?} must be name:type:description"
        )));
    };
    let r#type = match kind {
        "string" => proto::FieldType::String,
        "int" => proto::FieldType::Int,
        "bool" => proto::FieldType::Bool,
        "date" => proto::FieldType::Date,
        "record" => proto::FieldType::Record,
        "list" => proto::FieldType::List,
        other => {
            return Err(usage(format!(
                "field type {other:?} is not one of string, int, bool, date, record, list"
            )));
        }
    } as i32;
    Ok(proto::FieldDefinition {
        name: name.to_owned(),
        description: description.to_owned(),
        r#type,
    })
}

/// The state filter of the applications' lists.
pub(crate) fn pending_filter(pending_only: bool) -> i32 {
    if pending_only {
        proto::ApplicationState::Pending as i32
    } else {
        0
    }
}

impl Client {
    /// Writes the whole registry into `dir` as reviewed files (one per
    /// kind, see [`registry_files`](crate::registry_files)).
    pub async fn registry_export(&self, dir: &std::path::Path) -> CallResult {
        let mut reg = self.registry();
        let organisations = reg
            .list_organisations(proto::ListOrganisationsRequest {})
            .await?
            .into_inner()
            .organisations;
        let purposes = reg
            .list_purposes(proto::ListPurposesRequest {})
            .await?
            .into_inner()
            .purposes;
        let datasets = reg
            .list_datasets(proto::ListDatasetsRequest {})
            .await?
            .into_inner()
            .datasets;
        let authorisations = reg
            .list_authorisations(proto::ListAuthorisationsRequest::default())
            .await?
            .into_inner()
            .authorisations;
        let files = registry_files::export(&organisations, &purposes, &datasets, &authorisations)
            .map_err(|e| usage(format!("{e:#}")))?;
        std::fs::create_dir_all(dir)
            .map_err(|e| usage(format!("create {}: {e}", dir.display())))?;
        // Other *.toml files would be read with these by `apply`: every
        // item twice.
        let others: Vec<String> = std::fs::read_dir(dir)
            .map_err(|e| usage(format!("read {}: {e}", dir.display())))?
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".toml") && !registry_files::FILES.contains(&n.as_str()))
            .collect();
        if !others.is_empty() {
            return Err(usage(format!(
                "{} holds other registry files ({}): `apply` would read them with the export; export into an empty directory",
                dir.display(),
                others.join(", ")
            )));
        }
        let mut written = Vec::new();
        for (name, text) in files {
            let path = dir.join(name);
            std::fs::write(&path, text)
                .map_err(|e| usage(format!("write {}: {e}", path.display())))?;
            written.push(path.display().to_string());
        }
        Ok(json!({
            "files": written,
            "organisations": organisations.len(),
            "purposes": purposes.len(),
            "datasets": datasets.len(),
            "authorisations": authorisations.len(),
        }))
    }

    /// Applies the registry described by the files of `dir` (or, with
    /// `dry_run`, only plans it). The broker's every objection comes back
    /// located by file and line.
    pub async fn registry_apply(
        &self,
        dir: &std::path::Path,
        dry_run: bool,
        reason: String,
    ) -> CallResult {
        let read = registry_files::read_dir(dir).map_err(|errors| CallError {
            code: "InvalidArgument".into(),
            message: format!(
                "{} error{} in the files, nothing was sent:\n  {}",
                errors.len(),
                if errors.len() == 1 { "" } else { "s" },
                errors.join("\n  ")
            ),
            reason: Some("REGISTRY_FILES_INVALID".into()),
            metadata: BTreeMap::new(),
        })?;
        let mut request = read.request.clone();
        request.dry_run = dry_run;
        request.reason = reason;
        let r = match self.registry().apply_registry(request).await {
            Ok(r) => r.into_inner(),
            Err(status) => {
                let violations: Vec<String> = status
                    .get_error_details()
                    .bad_request()
                    .map(|b| {
                        b.field_violations
                            .iter()
                            .map(|v| {
                                let at = read
                                    .locate_with(&v.field, &v.description)
                                    .unwrap_or_else(|| v.field.clone());
                                format!("{at}: {} ({})", v.description, v.field)
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let mut e = CallError::from(status);
                if !violations.is_empty() {
                    e.message = format!(
                        "{} rule{} broken, nothing was applied:\n  {}",
                        violations.len(),
                        if violations.len() == 1 { "" } else { "s" },
                        violations.join("\n  ")
                    );
                }
                return Err(e);
            }
        };
        let action = |a: i32| {
            proto::PlannedAction::try_from(a)
                .map(|a| {
                    a.as_str_name()
                        .trim_start_matches("PLANNED_ACTION_")
                        .to_lowercase()
                })
                .unwrap_or_default()
        };
        let changes: Vec<Json> = r
            .changes
            .iter()
            .map(|c| {
                let list = match c.kind.as_str() {
                    "organisation" => "organisations",
                    "purpose" => "purposes",
                    "dataset" => "datasets",
                    _ => "authorisations",
                };
                json!({
                    "action": action(c.action),
                    "kind": c.kind,
                    "key": c.key,
                    "at": read.locate(&format!("{list}[{}]", c.index)).unwrap_or_default(),
                    "detail": c.detail,
                })
            })
            .collect();
        Ok(json!({ "applied": r.applied, "changes": changes }))
    }

    pub async fn list_organisations(&self) -> CallResult {
        let r = self
            .registry()
            .list_organisations(proto::ListOrganisationsRequest {})
            .await?
            .into_inner();
        Ok(Json::Array(r.organisations.iter().map(org_json).collect()))
    }

    pub async fn create_organisation(
        &self,
        kbo: String,
        name: String,
        roles: &[String],
    ) -> CallResult {
        let roles = organisation_roles(roles)?;
        let r = self
            .registry()
            .create_organisation(proto::CreateOrganisationRequest {
                organisation: Some(proto::Organisation {
                    kbo,
                    name,
                    roles,
                    status: 0,
                    created_at: None,
                }),
            })
            .await?
            .into_inner();
        Ok(r.organisation.as_ref().map(org_json).unwrap_or(Json::Null))
    }

    pub async fn set_organisation_suspended(
        &self,
        kbo: String,
        suspended: bool,
        reason: String,
    ) -> CallResult {
        let org = if suspended {
            self.registry()
                .suspend_organisation(proto::SuspendOrganisationRequest { kbo, reason })
                .await?
                .into_inner()
                .organisation
        } else {
            self.registry()
                .reinstate_organisation(proto::ReinstateOrganisationRequest { kbo })
                .await?
                .into_inner()
                .organisation
        };
        Ok(org.as_ref().map(org_json).unwrap_or(Json::Null))
    }

    pub async fn list_datasets(&self) -> CallResult {
        let r = self
            .registry()
            .list_datasets(proto::ListDatasetsRequest {})
            .await?
            .into_inner();
        Ok(Json::Array(r.datasets.iter().map(dataset_json).collect()))
    }

    /// Withdraws a dataset for good.
    pub async fn withdraw_dataset(&self, name: String, reason: String) -> CallResult {
        let r = self
            .registry()
            .withdraw_dataset(proto::WithdrawDatasetRequest { name, reason })
            .await?
            .into_inner();
        Ok(r.dataset.as_ref().map(dataset_json).unwrap_or(Json::Null))
    }

    /// Amends an organisation: a new name, new roles (`None` keeps them).
    pub async fn amend_organisation(
        &self,
        kbo: String,
        name: Option<String>,
        roles: Option<Vec<String>>,
        reason: String,
    ) -> CallResult {
        let mut o = self
            .registry()
            .get_organisation(proto::GetOrganisationRequest { kbo: kbo.clone() })
            .await?
            .into_inner()
            .organisation
            .ok_or_else(|| usage(format!("the broker returned no organisation {kbo}")))?;
        if let Some(n) = name {
            o.name = n;
        }
        if let Some(r) = roles {
            o.roles = organisation_roles(&r)?;
        }
        let r = self
            .registry()
            .amend_organisation(proto::AmendOrganisationRequest {
                organisation: Some(o),
                reason,
            })
            .await?
            .into_inner();
        Ok(r.organisation.as_ref().map(org_json).unwrap_or(Json::Null))
    }

    /// Amends a dataset: fields added (`name:type:description`, replacing a
    /// field of the same name) or removed, a new endpoint, description or
    /// history flag (`None` keeps it).
    pub async fn amend_dataset(
        &self,
        name: String,
        patch: DatasetPatch,
        reason: String,
    ) -> CallResult {
        let mut d = self
            .registry()
            .get_dataset(proto::GetDatasetRequest { name: name.clone() })
            .await?
            .into_inner()
            .dataset
            .ok_or_else(|| usage(format!("the broker returned no dataset {name}")))?;
        let DatasetPatch {
            description,
            endpoint,
            keeps_history,
            add_fields,
            remove_fields,
        } = patch;
        if let Some(v) = description {
            d.description = v;
        }
        if let Some(v) = endpoint {
            d.endpoint = v;
        }
        if let Some(v) = keeps_history {
            d.keeps_history = v;
        }
        for f in &remove_fields {
            if !d.fields.iter().any(|x| &x.name == f) {
                return Err(usage(format!("dataset {name} has no field {f} to remove")));
            }
            d.fields.retain(|x| &x.name != f);
        }
        for spec in &add_fields {
            let f = field_definition(spec)?;
            match d.fields.iter_mut().find(|x| x.name == f.name) {
                Some(x) => *x = f,
                None => d.fields.push(f),
            }
        }
        let r = self
            .registry()
            .amend_dataset(proto::AmendDatasetRequest {
                dataset: Some(d),
                reason,
            })
            .await?
            .into_inner();
        Ok(r.dataset.as_ref().map(dataset_json).unwrap_or(Json::Null))
    }

    pub async fn create_dataset(&self, d: NewDataset) -> CallResult {
        let fields = d
            .fields
            .iter()
            .map(|f| field_definition(f))
            .collect::<Result<Vec<_>, _>>()?;
        let r = self
            .registry()
            .create_dataset(proto::CreateDatasetRequest {
                dataset: Some(proto::Dataset {
                    name: d.name,
                    source_kbo: d.source,
                    description: d.description,
                    fields,
                    endpoint: d.endpoint,
                    keeps_history: d.keeps_history,
                    withdrawn: false,
                }),
            })
            .await?
            .into_inner();
        Ok(r.dataset.as_ref().map(dataset_json).unwrap_or(Json::Null))
    }

    /// Applies for membership with the connection's certificate (no token
    /// needed).
    pub async fn apply_for_membership(
        &self,
        name: String,
        roles: &[String],
        contact: String,
        note: String,
    ) -> CallResult {
        let roles = organisation_roles(roles)?;
        let r = self
            .registry()
            .apply_for_membership(proto::ApplyForMembershipRequest {
                name,
                roles,
                contact,
                note,
            })
            .await?
            .into_inner();
        Ok(r.application
            .as_ref()
            .map(membership_json)
            .unwrap_or(Json::Null))
    }

    /// Applications for membership (the operator's administrators).
    pub async fn membership_applications(&self, pending_only: bool) -> CallResult {
        // Every page, newest first.
        let mut out = Vec::new();
        let mut page_token = String::new();
        loop {
            let r = self
                .registry()
                .list_membership_applications(proto::ListMembershipApplicationsRequest {
                    state: pending_filter(pending_only),
                    page_size: 1000,
                    page_token,
                })
                .await?
                .into_inner();
            out.extend(r.applications.iter().map(membership_json));
            if r.next_page_token.is_empty() {
                return Ok(Json::Array(out));
            }
            page_token = r.next_page_token;
        }
    }

    /// Approves (with the roles asked, or `roles`) or rejects an
    /// application for membership.
    pub async fn decide_membership(
        &self,
        id: String,
        approve: bool,
        roles: &[String],
        note: String,
    ) -> CallResult {
        let roles = organisation_roles(roles)?;
        let r = self
            .registry()
            .decide_membership_application(proto::DecideMembershipApplicationRequest {
                id,
                approve,
                roles,
                note,
            })
            .await?
            .into_inner();
        Ok(r.application
            .as_ref()
            .map(membership_json)
            .unwrap_or(Json::Null))
    }

    /// What an organisation may call and, as a source, who may call it
    /// (`kbo` empty: the caller's own organisation).
    pub async fn catalogue(&self, kbo: String) -> CallResult {
        let r = self
            .registry()
            .get_catalogue(proto::GetCatalogueRequest { kbo })
            .await?
            .into_inner();
        Ok(json!({
            "kbo": r.kbo,
            "name": r.name,
            "as_of": r.as_of,
            "may_call": r.may_call.iter().map(catalogue_entry_json).collect::<Vec<_>>(),
            "called_by": r.called_by.iter().map(catalogue_entry_json).collect::<Vec<_>>(),
        }))
    }

    pub async fn list_purposes(&self) -> CallResult {
        let r = self
            .registry()
            .list_purposes(proto::ListPurposesRequest {})
            .await?
            .into_inner();
        Ok(Json::Array(r.purposes.iter().map(purpose_json).collect()))
    }

    pub async fn create_purpose(
        &self,
        code: String,
        description: String,
        legal_basis: String,
    ) -> CallResult {
        let r = self
            .registry()
            .create_purpose(proto::CreatePurposeRequest {
                purpose: Some(proto::Purpose {
                    code,
                    description,
                    legal_basis,
                }),
            })
            .await?
            .into_inner();
        Ok(r.purpose.as_ref().map(purpose_json).unwrap_or(Json::Null))
    }

    /// Revokes a client certificate by fingerprint or serial.
    pub async fn revoke_certificate(
        &self,
        sha256_fingerprint: Option<String>,
        serial_number: Option<String>,
        issuer_name_sha256: Option<String>,
        reason: String,
    ) -> CallResult {
        let r = self
            .registry()
            .revoke_certificate(proto::RevokeCertificateRequest {
                sha256_fingerprint: sha256_fingerprint.unwrap_or_default(),
                serial_number: serial_number.unwrap_or_default(),
                reason,
                issuer_name_sha256: issuer_name_sha256.unwrap_or_default(),
            })
            .await?
            .into_inner();
        Ok(r.revoked.as_ref().map(revoked_json).unwrap_or(Json::Null))
    }

    pub async fn revoked_certificates(&self) -> CallResult {
        let r = self
            .registry()
            .list_revoked_certificates(proto::ListRevokedCertificatesRequest {})
            .await?
            .into_inner();
        Ok(json!({"revoked": r.revoked.iter().map(revoked_json).collect::<Vec<_>>()}))
    }
}
