//! The registry's datasets, the purposes catalogue, and an organisation's
//! catalogue (what it may call, and who calls it).

use super::*;

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

/// What an amendment of a dataset changes, in words.
pub(super) fn dataset_changes(
    before: &semel_core::Dataset,
    after: &semel_core::Dataset,
) -> Vec<String> {
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

impl RegistryService {
    pub(super) async fn create_dataset(
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

    pub(super) async fn amend_dataset(
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

    pub(super) async fn withdraw_dataset(
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

    pub(super) async fn get_dataset(
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

    pub(super) async fn list_datasets(
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

    pub(super) async fn create_purpose(
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

    pub(super) async fn list_purposes(
        &self,
        req: Request<proto::ListPurposesRequest>,
    ) -> Result<Response<proto::ListPurposesResponse>, Status> {
        self.broker.admit(&req).await?;
        let snapshot = self.broker.snapshot();
        Ok(Response::new(proto::ListPurposesResponse {
            purposes: snapshot.purposes.values().map(purpose_to_proto).collect(),
        }))
    }

    pub(super) async fn get_catalogue(
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
}
