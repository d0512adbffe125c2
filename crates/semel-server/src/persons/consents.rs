//! `ConsentService`: a citizen's consents to a purpose, given, withdrawn
//! and listed, each recorded in the audit log like the persons directory's
//! changes.

use std::collections::BTreeSet;
use std::sync::Arc;

use semel_core::{Consent, ConsentChannel, DatasetName, PurposeCode, UserRole, brussels_today};
use semel_store::Resolved;
use time::OffsetDateTime;
use tonic::{Code, Request, Response, Status};

use super::{MAX_EVIDENCE, parse_citizen, printable};
use crate::audited::{Change, Undo, nothing_to_undo};
use crate::convert::{parse_kbo, timestamp};
use crate::error::ApiError;
use crate::proto;
use crate::state::{Broker, Caller};

pub struct ConsentService {
    broker: Arc<Broker>,
}

impl ConsentService {
    pub fn new(broker: Arc<Broker>) -> Self {
        ConsentService { broker }
    }
}

fn channel_to_proto(c: ConsentChannel) -> i32 {
    let channel = match c {
        ConsentChannel::Portal => proto::ConsentChannel::Portal,
        ConsentChannel::Counter => proto::ConsentChannel::Counter,
    };
    channel as i32
}

fn consent_to_proto(c: &Consent) -> proto::Consent {
    proto::Consent {
        id: c.id.clone(),
        citizen: c.citizen.as_str().to_owned(),
        consumer_kbo: c
            .consumer
            .map(|k| k.as_str().to_owned())
            .unwrap_or_default(),
        purpose: c.purpose.to_string(),
        datasets: c.datasets.iter().map(ToString::to_string).collect(),
        given_at: Some(timestamp(c.given_at)),
        channel: channel_to_proto(c.channel),
        registered_through_kbo: c.registered_through.as_str().to_owned(),
        registered_by: c.registered_by.clone(),
        evidence: c.evidence.clone(),
        expires_at: c.expires_at.map(timestamp),
        withdrawn_at: c.withdrawn_at.map(timestamp),
    }
}

fn consent_detail(c: &Consent) -> String {
    format!(
        "consent {} to {} for {} ({}) via {}",
        c.id,
        c.consumer
            .map_or("any consumer".to_owned(), |k| k.as_str().to_owned()),
        c.purpose,
        if c.datasets.is_empty() {
            "every dataset".to_owned()
        } else {
            c.datasets
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        },
        c.channel.as_str()
    )
}

/// Whether the caller is this citizen (under any of their numbers).
fn is_own(caller: &Caller, citizen: &Resolved) -> bool {
    caller
        .user
        .citizen()
        .is_some_and(|c| citizen.numbers().any(|n| *n == c) || citizen.given == Some(c))
}

/// A citizen acts on their own consents only.
fn own_citizen(caller: &Caller, citizen: &Resolved) -> Result<(), ApiError> {
    if is_own(caller, citizen) {
        return Ok(());
    }
    Err(ApiError::denied(
        "CITIZEN_MISMATCH",
        "a citizen can only manage their own consents",
    ))
}

#[tonic::async_trait]
impl proto::consent_service_server::ConsentService for ConsentService {
    async fn give_consent(
        &self,
        req: Request<proto::GiveConsentRequest>,
    ) -> Result<Response<proto::GiveConsentResponse>, Status> {
        let caller = self.broker.admit(&req).await?;
        let broker = &self.broker;
        let c = req.into_inner().consent.unwrap_or_default();
        let (consent, request_id) = broker.audited(&caller, async |change: &mut Change| {
            let given = parse_citizen("consent.citizen", &c.citizen)?;
            change.citizen = Some(given);
            let resolved = broker.resolve(&given).await?;
            change.citizen = Some(resolved.current);
            change.citizen_as_given = resolved.given;
            change.purpose = c.purpose.chars().take(64).collect();
            let portal = caller.has(UserRole::Citizen);
            if portal {
                own_citizen(&caller, &resolved)?;
            }
            let purpose = PurposeCode::new(c.purpose.clone()).map_err(|e| {
                ApiError::invalid("consent.purpose", "INVALID_ARGUMENT", format!("consent.purpose: {e}"))
            })?;
            let snapshot = broker.snapshot();
            if !snapshot.purposes.contains_key(purpose.as_str()) {
                return Err(ApiError::invalid(
                    "consent.purpose",
                    "UNKNOWN_PURPOSE",
                    format!("there is no purpose {purpose} in the catalogue; ListPurposes shows them"),
                ));
            }
            let mut datasets = BTreeSet::new();
            for d in &c.datasets {
                let name = DatasetName::new(d.clone()).map_err(|e| {
                    ApiError::invalid("consent.datasets", "INVALID_ARGUMENT", format!("consent.datasets: {e}"))
                })?;
                if !snapshot.routes.contains_key(&name) {
                    return Err(ApiError::not_found(
                        "UNKNOWN_DATASET",
                        format!("there is no dataset named {name}; ListDatasets shows the published ones"),
                    ));
                }
                datasets.insert(name);
            }
            drop(snapshot);
            change.dataset = datasets
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",");
            let consumer = if c.consumer_kbo.is_empty() {
                None
            } else {
                Some(parse_kbo("consent.consumer_kbo", &c.consumer_kbo)?)
            };
            let evidence = printable("consent.evidence", c.evidence.trim(), MAX_EVIDENCE)?;
            let (channel, consumer, registered_by) = if portal {
                (ConsentChannel::Portal, consumer, String::new())
            } else {
                // At a counter: given to the organisation registering it,
                // with the evidence it keeps.
                if consumer.is_some_and(|k| k != caller.org.kbo) {
                    return Err(ApiError::denied(
                        "OTHER_ORGANISATION",
                        "at a counter, a consent is registered for your own organisation only",
                    ));
                }
                if evidence.is_empty() {
                    return Err(ApiError::invalid(
                        "consent.evidence",
                        "EVIDENCE_REQUIRED",
                        "a consent given at a counter needs the reference of its evidence (the signed form you keep)",
                    ));
                }
                // The citizen's withdrawal stands until the citizen gives
                // consent again: an agent cannot register it back.
                let org = caller.org.kbo;
                let overlaps = |d: &BTreeSet<DatasetName>| {
                    d.is_empty() || datasets.is_empty() || d.iter().any(|x| datasets.contains(x))
                };
                let now = OffsetDateTime::now_utc();
                let existing = broker.storage().persons.consents_of(&resolved).await?;
                let concerns = |x: &&Consent| {
                    x.consumer.is_none_or(|k| k == org) && x.purpose == purpose && overlaps(&x.datasets)
                };
                let withdrawn = existing
                    .iter()
                    .filter(concerns)
                    .filter_map(|x| x.withdrawn_by_citizen(now))
                    .max();
                if let Some(w) = withdrawn {
                    let given_again = existing.iter().filter(concerns).any(|x| {
                        x.channel == ConsentChannel::Portal
                            && x.given_at > w
                            && x.state(now) == semel_core::ConsentState::Valid
                    });
                    if !given_again {
                        return Err(ApiError::new(
                            Code::FailedPrecondition,
                            "CONSENT_WITHDRAWN_BY_CITIZEN",
                            "the citizen withdrew this consent; only the citizen can give it again (on a citizen portal)",
                        ));
                    }
                }
                (
                    ConsentChannel::Counter,
                    Some(caller.org.kbo),
                    caller.user.subject.clone(),
                )
            };
            let now = OffsetDateTime::now_utc();
            let expires_at = c
                .expires_at
                .map(|t| {
                    OffsetDateTime::from_unix_timestamp(t.seconds)
                        .map_err(|_| ApiError::invalid("consent.expires_at", "INVALID_ARGUMENT", "expires_at is out of range"))
                })
                .transpose()?;
            if expires_at.is_some_and(|e| e <= now) {
                return Err(ApiError::invalid(
                    "consent.expires_at",
                    "INVALID_ARGUMENT",
                    "expires_at lies in the past",
                ));
            }
            let consent = Consent {
                id: crate::state::new_id().to_string(),
                citizen: resolved.current,
                consumer,
                purpose,
                datasets,
                given_at: now,
                channel,
                registered_through: caller.org.kbo,
                registered_by,
                evidence,
                expires_at,
                withdrawn_at: None,
                withdrawn_through: None,
            };
            let persons = broker.storage().persons.clone();
            {
                let (persons, c) = (persons.clone(), consent.clone());
                persons.put_consent(&c).await?;
            }
            change.detail = consent_detail(&consent);
            change.seal = Some(crate::audited::seal_consent(
                persons.clone(),
                consent.clone(),
            ));
            let undo = {
                let c = consent.clone();
                Box::pin(async move {
                    crate::audited::retry_undo("delete_consent", || {
                        let (p, a) = (persons.clone(), c.clone());
                        async move { p.delete_consent(&a).await }
                    })
                    .await;
                }) as Undo
            };
            Ok((consent, undo))
        })
        .await?;
        Ok(Response::new(proto::GiveConsentResponse {
            consent: Some(consent_to_proto(&consent)),
            request_id,
        }))
    }

    async fn withdraw_consent(
        &self,
        req: Request<proto::WithdrawConsentRequest>,
    ) -> Result<Response<proto::WithdrawConsentResponse>, Status> {
        let caller = self.broker.admit(&req).await?;
        let broker = &self.broker;
        let msg = req.into_inner();
        let (consent, request_id) = broker.audited(&caller, async |change: &mut Change| {
            let given = parse_citizen("citizen", &msg.citizen)?;
            change.citizen = Some(given);
            let resolved = broker.resolve(&given).await?;
            change.citizen = Some(resolved.current);
            change.citizen_as_given = resolved.given;
            if caller.has(UserRole::Citizen) {
                own_citizen(&caller, &resolved)?;
            }
            let persons = broker.storage().persons.clone();
            let found = persons
                .consents_of(&resolved).await?
                .into_iter()
                .find(|c| c.id == msg.consent_id);
            let Some(before) = found else {
                return Err(ApiError::not_found(
                    "CONSENT_NOT_FOUND",
                    "there is no consent with this id for this citizen; ListConsents shows them",
                ));
            };
            // An agent withdraws only consents given to, or registered by,
            // their own organisation. Checked before the consent's purpose
            // goes into the call's record: a refusal records what was asked,
            // never what was refused.
            if !caller.has(UserRole::Citizen)
                && before.registered_through != caller.org.kbo
                && before.consumer != Some(caller.org.kbo)
            {
                return Err(ApiError::denied(
                    "OTHER_ORGANISATION",
                    "this consent was neither given to nor registered by your organisation",
                ));
            }
            change.purpose = before.purpose.to_string();
            let mut after = before.clone();
            if after.withdrawn_at.is_none() {
                after.withdrawn_at = Some(OffsetDateTime::now_utc());
                // The citizen's own withdrawal outweighs any consent an
                // agent registers later; an agent's does not.
                after.withdrawn_through = Some(if caller.has(UserRole::Citizen) {
                    ConsentChannel::Portal
                } else {
                    ConsentChannel::Counter
                });
                let (persons, c) = (persons.clone(), after.clone());
                persons.put_consent(&c).await?;
                change.seal = Some(crate::audited::seal_consent(persons.clone(), after.clone()));
            }
            // Put back unsealed if the entry fails: the consent is then not
            // honoured until given again (withdrawn, failing closed).
            change.detail = format!("{} withdrawn", consent_detail(&after));
            let undo = Box::pin(async move {
                crate::audited::retry_undo("put_consent", || {
                    let (p, a) = (persons.clone(), before.clone());
                    async move { p.put_consent(&a).await }
                })
                .await;
            }) as Undo;
            Ok((after, undo))
        })
        .await?;
        Ok(Response::new(proto::WithdrawConsentResponse {
            consent: Some(consent_to_proto(&consent)),
            request_id,
        }))
    }

    async fn list_consents(
        &self,
        req: Request<proto::ListConsentsRequest>,
    ) -> Result<Response<proto::ListConsentsResponse>, Status> {
        let caller = self.broker.admit(&req).await?;
        let broker = &self.broker;
        let given = req.into_inner().citizen;
        // Reading a citizen's consents is reading personal data: recorded,
        // the citizen's reading their own too (as their reads of their
        // history are); the entry is not one the citizen's view shows.
        let read = async |change: &mut Change| {
            let citizen = parse_citizen("citizen", &given)?;
            change.citizen = Some(citizen);
            let resolved = broker.resolve(&citizen).await?;
            change.citizen = Some(resolved.current);
            change.citizen_as_given = resolved.given;
            let org = caller.org.kbo;
            let own = is_own(&caller, &resolved);
            let persons = broker.storage().persons.clone();
            // Who sees which: the citizen all of theirs; a supervisory
            // auditor all; a consumer with an active file on the citizen those
            // given to it (or to any consumer) or registered at its counter;
            // another organisation's auditor those given to or registered by
            // its organisation.
            let scope: Box<dyn Fn(&Consent) -> bool + Send> = if own || caller.audits_everything() {
                Box::new(|_| true)
            } else if caller.has(UserRole::Consumer) && {
                let r = resolved.clone();
                let p = persons.clone();
                let now = OffsetDateTime::now_utc();
                let today = brussels_today(now);
                p.files_of(&org, &r)
                    .await?
                    .iter()
                    .any(|f| f.covers(today) && f.open_at(now))
            } {
                Box::new(move |c| {
                    c.consumer.is_none_or(|k| k == org) || c.registered_through == org
                })
            } else if caller.has(UserRole::Auditor) {
                Box::new(move |c| c.consumer == Some(org) || c.registered_through == org)
            } else if caller.has(UserRole::Consumer) {
                return Err(ApiError::denied(
                    "NO_ACTIVE_FILE",
                    "your organisation holds no active file on this citizen; register the file first (PersonsService.RegisterFile)",
                ));
            } else {
                return Err(ApiError::denied(
                    "CITIZEN_MISMATCH",
                    "a citizen can only see their own consents",
                ));
            };
            let r = resolved.clone();
            let mut consents: Vec<Consent> = persons
                .consents_of(&r)
                .await?
                .into_iter()
                .filter(|c| scope(c))
                .collect();
            consents.sort_by_key(|c| std::cmp::Reverse(c.given_at));
            change.detail = format!("{} consents listed", consents.len());
            Ok((consents, nothing_to_undo()))
        };
        let consents = broker.audited(&caller, read).await?.0;
        Ok(Response::new(proto::ListConsentsResponse {
            consents: consents.iter().map(consent_to_proto).collect(),
        }))
    }
}
