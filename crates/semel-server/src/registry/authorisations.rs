//! The registry's authorisations: created, amended, suspended, reinstated
//! and revoked, each version kept; read by those they concern; and the
//! rules every authorisation obeys.

use super::*;

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

pub(super) fn ended(a: &semel_core::Authorisation) -> ApiError {
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
pub(super) fn amendment_text(
    before: &semel_core::Authorisation,
    after: &semel_core::Authorisation,
) -> String {
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

/// Whether two versions say the same thing (version and time aside).
pub(super) fn same_content(a: &semel_core::Authorisation, b: &semel_core::Authorisation) -> bool {
    let strip = |x: &semel_core::Authorisation| semel_core::Authorisation {
        version: 0,
        updated_at: OffsetDateTime::UNIX_EPOCH,
        ..x.clone()
    };
    strip(a) == strip(b)
}

/// Checks an authorisation against the registry: its consumer, purpose,
/// dataset, fields and questions must exist.
pub(super) fn check_authorisation(
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
pub(super) fn authorisation_text(a: &semel_core::Authorisation) -> String {
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

impl RegistryService {
    pub(super) async fn create_authorisation(
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

    pub(super) async fn get_authorisation(
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

    pub(super) async fn list_authorisations(
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

    pub(super) async fn suspend_authorisation(
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

    pub(super) async fn reinstate_authorisation(
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

    pub(super) async fn amend_authorisation(
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

    pub(super) async fn revoke_authorisation(
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

    pub(super) async fn list_authorisation_versions(
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
