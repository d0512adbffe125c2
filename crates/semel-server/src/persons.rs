//! `PersonsService` and `ConsentService`: the persons directory, replaced
//! national numbers and consents.
//!
//! Every call that changes a file, a consent or a number is recorded in the
//! audit log, allowed or refused, like a lookup: the change is stored, its
//! entry made durable, and only then is the answer sent. If the entry
//! cannot be written the change is undone and the call fails.

use std::sync::Arc;

use semel_core::{
    CapacityCode, FilePhase, Niss, NumberReplacement, PersonFile, UserRole, brussels_today,
};
use semel_store::Resolved;
use time::OffsetDateTime;
use tonic::{Code, Request, Response, Status};

use crate::audited::{Change, Undo, nothing_to_undo};
use crate::convert::{format_date, parse_date, timestamp};
use crate::error::ApiError;
use crate::limits::SourceRefusal;
use crate::proto::{self, FetchRequest};
use crate::state::{Broker, Caller};

mod consents;

pub use consents::ConsentService;

/// The longest consumer reference or evidence reference.
const MAX_REFERENCE: usize = 64;
const MAX_EVIDENCE: usize = 128;

pub struct PersonsService {
    broker: Arc<Broker>,
}

impl PersonsService {
    pub fn new(broker: Arc<Broker>) -> Self {
        PersonsService { broker }
    }
}

fn parse_citizen(field: &'static str, s: &str) -> Result<Niss, ApiError> {
    Niss::parse(s).map_err(|e| ApiError::invalid(field, "INVALID_CITIZEN", format!("{field}: {e}")))
}

fn printable(field: &'static str, s: &str, max: usize) -> Result<String, ApiError> {
    if s.chars().count() > max || s.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            field,
            "INVALID_ARGUMENT",
            format!("{field} must be at most {max} printable characters"),
        ));
    }
    Ok(s.to_owned())
}

impl Broker {
    async fn resolve(&self, citizen: &Niss) -> Result<Resolved, ApiError> {
        Ok(self.storage().persons.resolve(citizen).await?)
    }

    /// Asks the register whether it knows a national number: a Fetch of its
    /// dataset with no field.
    async fn register_knows(&self, citizen: &Niss, change: &mut Change) -> Result<(), ApiError> {
        let dataset = self.register_dataset().clone();
        let route = self.snapshot().routes.get(&dataset).filter(|r| !r.dataset.withdrawn).cloned().ok_or_else(|| {
            ApiError::new(
                Code::FailedPrecondition,
                "REGISTER_UNAVAILABLE",
                format!(
                    "the register dataset {dataset} is not published on this broker, so no number can be checked; ask the operator"
                ),
            )
        })?;
        change.source = Some(route.dataset.source);
        // The register is asked through its guard, as a lookup asks it: at
        // its cap, or with its circuit open, it is not called, so that a
        // burst of files cannot pile calls on a register in trouble.
        let pass = route.guard.enter(std::time::Instant::now()).map_err(
            |refusal| match refusal {
                SourceRefusal::Busy => ApiError {
                    retry_after: Some(std::time::Duration::from_millis(100)),
                    ..ApiError::new(
                        Code::ResourceExhausted,
                        "SOURCE_BUSY",
                        "the register has as many calls in flight as it may take; retry shortly",
                    )
                },
                SourceRefusal::CircuitOpen(wait) => ApiError {
                    retry_after: Some(wait),
                    ..ApiError::new(
                        Code::Unavailable,
                        "SOURCE_CIRCUIT_OPEN",
                        format!(
                            "the register failed repeatedly; calls to it fail fast for {} ms",
                            wait.as_millis()
                        ),
                    )
                },
            },
        )?;
        let mut client = route.client.clone();
        let call = client.fetch(FetchRequest {
            request_id: crate::state::new_id().to_string(),
            dataset: dataset.to_string(),
            citizen: citizen.as_str().to_owned(),
            fields: Vec::new(),
            reference_date: String::new(),
            consumer_kbo: String::new(),
            purpose: "PERSONS_DIRECTORY".to_owned(),
            authorisation_reference: String::new(),
        });
        let deadline = self.source_deadline();
        let answer = tokio::time::timeout(deadline, call).await;
        // Unreachable or too slow counts against the register's circuit;
        // an answer, even "unknown", is a register that works.
        let reachable = match &answer {
            Ok(Ok(_)) => true,
            Ok(Err(status)) => !matches!(
                status.code(),
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled
            ),
            Err(_) => false,
        };
        route
            .guard
            .record(pass, reachable, std::time::Instant::now());
        match answer {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) if status.code() == Code::NotFound => Err(ApiError::not_found(
                "CITIZEN_UNKNOWN",
                "the register does not know this national number; check it, or register the person first",
            )),
            Ok(Err(status)) => Err(ApiError::retryable(
                Code::Unavailable,
                "SOURCE_UNAVAILABLE",
                format!(
                    "the register cannot be asked right now ({:?}); try again later",
                    status.code()
                ),
            )),
            Err(_) => Err(ApiError::retryable(
                Code::DeadlineExceeded,
                "SOURCE_TIMEOUT",
                format!(
                    "the register did not answer within {} ms; try again later",
                    deadline.as_millis()
                ),
            )),
        }
    }
}

fn phase_from_proto(p: i32) -> Result<FilePhase, ApiError> {
    match proto::FilePhase::try_from(p) {
        Ok(proto::FilePhase::Provisional) => Ok(FilePhase::Provisional),
        Ok(proto::FilePhase::Definitive) => Ok(FilePhase::Definitive),
        _ => Err(ApiError::invalid(
            "file.phase",
            "INVALID_ARGUMENT",
            "say whether the file is provisional or definitive",
        )),
    }
}

fn file_to_proto(f: &PersonFile) -> proto::PersonFile {
    proto::PersonFile {
        id: f.id.clone(),
        consumer_kbo: f.consumer.as_str().to_owned(),
        citizen: f.citizen.as_str().to_owned(),
        capacity: f.capacity.to_string(),
        phase: match f.phase {
            FilePhase::Provisional => proto::FilePhase::Provisional,
            FilePhase::Definitive => proto::FilePhase::Definitive,
        } as i32,
        begin_date: format_date(f.begins),
        end_date: f.ends.map(format_date).unwrap_or_default(),
        consumer_reference: f.consumer_reference.clone(),
        registered_by: f.registered_by.clone(),
        registered_at: Some(timestamp(f.registered_at)),
        closed_at: f.closed_at.map(timestamp),
    }
}

fn file_detail(f: &PersonFile) -> String {
    format!(
        "file {} ({}, {}) from {}{}",
        f.id,
        f.capacity,
        f.phase.as_str(),
        format_date(f.begins),
        f.ends
            .map(|e| format!(" to {}", format_date(e)))
            .unwrap_or_default()
    )
}

#[tonic::async_trait]
impl proto::persons_service_server::PersonsService for PersonsService {
    async fn register_file(
        &self,
        req: Request<proto::RegisterFileRequest>,
    ) -> Result<Response<proto::RegisterFileResponse>, Status> {
        let caller = self.broker.admit(&req).await?;
        let broker = &self.broker;
        let file = req.into_inner().file.unwrap_or_default();
        let (file, request_id) = broker.audited(&caller, async |change: &mut Change| {
            let given = parse_citizen("file.citizen", &file.citizen)?;
            change.citizen = Some(given);
            let resolved = broker.resolve(&given).await?;
            change.citizen = Some(resolved.current);
            change.citizen_as_given = resolved.given;
            change.reference = printable(
                "file.consumer_reference",
                &file.consumer_reference,
                MAX_REFERENCE,
            )?;
            let capacity = CapacityCode::new(file.capacity.clone()).map_err(|e| {
                ApiError::invalid(
                    "file.capacity",
                    "INVALID_ARGUMENT",
                    format!("file.capacity: {e}"),
                )
            })?;
            let phase = phase_from_proto(file.phase)?;
            // A capacity is one that an authorisation names (the knowledge
            // directory): a made-up capacity would open nothing, and is a
            // mistake or a probe.
            if !broker.snapshot().capacities.contains(&capacity) {
                return Err(ApiError::invalid(
                    "file.capacity",
                    "UNKNOWN_CAPACITY",
                    format!("no authorisation names the capacity {capacity}; use one of the capacities your authorisations require (ListAuthorisations)"),
                ));
            }
            let now = OffsetDateTime::now_utc();
            let today = brussels_today(now);
            let begins = if file.begin_date.is_empty() {
                today
            } else {
                parse_date("file.begin_date", &file.begin_date)?
            };
            // A file opens the citizen's data from its begin date: backdated
            // without limit, it would open any past.
            let max_days = broker.persons_settings().max_backdate(capacity.as_str());
            if begins < today - time::Duration::days(i64::from(max_days)) {
                return Err(ApiError::invalid(
                    "file.begin_date",
                    "BACKDATE_TOO_FAR",
                    format!("a file in capacity {capacity} may begin at most {max_days} days before today"),
                ));
            }
            let ends = if file.end_date.is_empty() {
                None
            } else {
                Some(parse_date("file.end_date", &file.end_date)?)
            };
            if ends.is_some_and(|e| e < begins) {
                return Err(ApiError::invalid(
                    "file.end_date",
                    "INVALID_ARGUMENT",
                    "end_date is before begin_date",
                ));
            }
            broker.register_knows(&resolved.current, change).await?;
            let stored = PersonFile {
                id: crate::state::new_id().to_string(),
                consumer: caller.org.kbo,
                citizen: resolved.current,
                capacity,
                phase,
                begins,
                ends,
                consumer_reference: change.reference.clone(),
                registered_by: caller.user.subject.clone(),
                registered_at: now,
                closed_at: None,
            };
            let persons = broker.storage().persons.clone();
            {
                let (persons, f) = (persons.clone(), stored.clone());
                persons.put_files(std::slice::from_ref(&f)).await?;
            }
            change.detail = file_detail(&stored);
            change.seal = Some(crate::audited::seal_files(
                persons.clone(),
                vec![stored.clone()],
            ));
            let undo = {
                let f = stored.clone();
                Box::pin(async move {
                    crate::audited::retry_undo("delete_file", || {
                        let (p, a) = (persons.clone(), f.clone());
                        async move { p.delete_file(&a).await }
                    })
                    .await;
                }) as Undo
            };
            Ok((stored, undo))
        })
        .await?;
        Ok(Response::new(proto::RegisterFileResponse {
            file: Some(file_to_proto(&file)),
            request_id,
        }))
    }

    async fn close_file(
        &self,
        req: Request<proto::CloseFileRequest>,
    ) -> Result<Response<proto::CloseFileResponse>, Status> {
        let caller = self.broker.admit(&req).await?;
        let broker = &self.broker;
        let msg = req.into_inner();
        let (file, request_id) = broker.audited(&caller, async |change: &mut Change| {
            let given = parse_citizen("citizen", &msg.citizen)?;
            change.citizen = Some(given);
            let resolved = broker.resolve(&given).await?;
            change.citizen = Some(resolved.current);
            change.citizen_as_given = resolved.given;
            let persons = broker.storage().persons.clone();
            let mut found = None;
            for n in resolved.numbers() {
                if let Some(f) = persons.file(&caller.org.kbo, n, &msg.file_id).await? {
                    found = Some(f);
                    break;
                }
            }
            let Some(before) = found else {
                return Err(ApiError::not_found(
                    "FILE_NOT_FOUND",
                    "your organisation has no file with this id on this citizen; ListFiles shows them",
                ));
            };
            let now = OffsetDateTime::now_utc();
            let end = if msg.end_date.is_empty() {
                brussels_today(now)
            } else {
                parse_date("end_date", &msg.end_date)?
            };
            if end < before.begins {
                return Err(ApiError::invalid(
                    "end_date",
                    "INVALID_ARGUMENT",
                    format!(
                        "the file begins on {}; it cannot end before",
                        format_date(before.begins)
                    ),
                ));
            }
            let mut after = before.clone();
            after.ends = Some(before.ends.map_or(end, |e| e.min(end)));
            after.closed_at = Some(now);
            {
                let (persons, f) = (persons.clone(), after.clone());
                persons.put_files(std::slice::from_ref(&f)).await?;
            }
            change.reference = after.consumer_reference.clone();
            change.detail = file_detail(&after);
            change.seal = Some(crate::audited::seal_files(
                persons.clone(),
                vec![after.clone()],
            ));
            // Put back unsealed if the entry fails: the file is then not
            // honoured until made again (closed, failing closed).
            let undo = Box::pin(async move {
                crate::audited::retry_undo("put_files", || {
                    let (p, a) = (persons.clone(), before.clone());
                    async move { p.put_files(std::slice::from_ref(&a)).await }
                })
                .await;
            }) as Undo;
            Ok((after, undo))
        })
        .await?;
        Ok(Response::new(proto::CloseFileResponse {
            file: Some(file_to_proto(&file)),
            request_id,
        }))
    }

    async fn list_files(
        &self,
        req: Request<proto::ListFilesRequest>,
    ) -> Result<Response<proto::ListFilesResponse>, Status> {
        let caller = self.broker.admit(&req).await?;
        let broker = &self.broker;
        // Which files an organisation holds on a citizen is personal data:
        // reading it is recorded like any read.
        let (files, _) = broker
            .audited(&caller, async |change: &mut Change| {
                let citizen = parse_citizen("citizen", &req.get_ref().citizen)?;
                change.citizen = Some(citizen);
                let resolved = broker.resolve(&citizen).await?;
                change.citizen = Some(resolved.current);
                change.citizen_as_given = resolved.given;
                let mut files = broker
                    .storage()
                    .persons
                    .files_of(&caller.org.kbo, &resolved)
                    .await?;
                files.sort_by_key(|f| std::cmp::Reverse(f.registered_at));
                change.detail = format!("{} files listed", files.len());
                Ok((files, nothing_to_undo()))
            })
            .await?;
        Ok(Response::new(proto::ListFilesResponse {
            files: files.iter().map(file_to_proto).collect(),
        }))
    }

    async fn replace_national_number(
        &self,
        req: Request<proto::ReplaceNationalNumberRequest>,
    ) -> Result<Response<proto::ReplaceNationalNumberResponse>, Status> {
        let caller = self.broker.admit(&req).await?;
        let broker = &self.broker;
        let msg = req.into_inner();
        let ((), request_id) = broker
            .audited(&caller, async |change: &mut Change| {
                speaks_for_the_register(broker, &caller)?;
                let old = parse_citizen("old_number", &msg.old_number)?;
                let new = parse_citizen("new_number", &msg.new_number)?;
                change.citizen = Some(new);
                change.citizen_as_given = Some(old);
                let now = OffsetDateTime::now_utc();
                let replaced_on = if msg.replaced_on.is_empty() {
                    brussels_today(now)
                } else {
                    parse_date("replaced_on", &msg.replaced_on)?
                };
                let replacement = NumberReplacement {
                    old,
                    new,
                    replaced_on,
                    registered_by: caller.org.kbo,
                    registered_at: now,
                };
                let persons = broker.storage().persons.clone();
                let stored = persons.replace(&replacement).await.map_err(|e| match e {
                    semel_storage::StorageError::Conflict(m) => {
                        ApiError::new(Code::FailedPrecondition, "REPLACEMENT_CONFLICT", m)
                    }
                    other => other.into(),
                })?;
                // Followed only once sealed with its entry (no rule without
                // its entry): a replacement decides whose files count.
                change.seal = Some(crate::audited::seal_replacement(persons, stored));
                change.detail = format!("number replaced on {}", format_date(replaced_on));
                // A replacement is not undone: the register's word stands, and
                // the entry's absence is reported to the caller, who retries
                // (the same replacement again is accepted).
                Ok(((), nothing_to_undo()))
            })
            .await?;
        Ok(Response::new(proto::ReplaceNationalNumberResponse {
            request_id,
        }))
    }

    async fn undo_number_replacement(
        &self,
        req: Request<proto::UndoNumberReplacementRequest>,
    ) -> Result<Response<proto::UndoNumberReplacementResponse>, Status> {
        let caller = self.broker.admit(&req).await?;
        let broker = &self.broker;
        let msg = req.into_inner();
        let (removed, request_id) = broker
            .audited(&caller, async |change: &mut Change| {
                speaks_for_the_register(broker, &caller)?;
                let old = parse_citizen("old_number", &msg.old_number)?;
                change.citizen_as_given = Some(old);
                let reason = msg.reason.trim().to_owned();
                if reason.is_empty()
                    || reason.chars().count() > 256
                    || reason.chars().any(char::is_control)
                {
                    return Err(ApiError::invalid(
                        "reason",
                        "INVALID_ARGUMENT",
                        "reason is required: 1 to 256 printable characters",
                    ));
                }
                let persons = broker.storage().persons.clone();
                let undone = {
                    let persons = persons.clone();
                    persons.unreplace(&old).await?
                };
                let Some(removed) = undone else {
                    return Err(ApiError::not_found(
                        "NOT_FOUND",
                        "this number was not replaced by another; nothing to undo",
                    ));
                };
                change.citizen = Some(removed.new);
                change.detail = format!(
                    "replacement of {} taken back: {}",
                    format_date(removed.replaced_on),
                    semel_core::redact_national_numbers(&reason)
                );
                let again = removed.clone();
                let undo = Box::pin(async move {
                    crate::audited::retry_undo("replace", || {
                        let (p, a) = (persons.clone(), again.clone());
                        async move { p.replace(&a).await.map(|_| ()) }
                    })
                    .await;
                }) as Undo;
                Ok((removed, undo))
            })
            .await?;
        Ok(Response::new(proto::UndoNumberReplacementResponse {
            new_number: removed.new.as_str().to_owned(),
            request_id,
        }))
    }
}

/// Only the operator, or the organisation that publishes the register, may
/// say that a number changed (or take that back).
fn speaks_for_the_register(broker: &Broker, caller: &Caller) -> Result<(), ApiError> {
    let register = broker
        .snapshot()
        .routes
        .get(broker.register_dataset())
        .filter(|r| !r.dataset.withdrawn)
        .map(|r| r.dataset.source);
    if !caller.has(UserRole::Admin) && register != Some(caller.org.kbo) {
        return Err(ApiError::denied(
            "OTHER_ORGANISATION",
            "only the register's organisation (or the operator) records replaced numbers",
        ));
    }
    Ok(())
}
