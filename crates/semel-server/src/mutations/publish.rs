//! Publication: each change of a request checked, then routed to the
//! consumers concerned, recorded and queued.

use super::*;

/// A published change, checked.
struct Checked {
    event_id: String,
    dataset: DatasetName,
    citizen: Niss,
    kind: MutationKind,
    effective: time::Date,
    fields: BTreeMap<String, proto::Value>,
    changed: BTreeSet<FieldName>,
}

impl Checked {
    /// SHA-256 of the change as published (its fields in name order, their
    /// values canonically: records by key): the same event id is the same
    /// change only with the same digest.
    fn digest(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        let mut text = |s: &str| {
            h.update((s.len() as u64).to_be_bytes());
            h.update(s.as_bytes());
        };
        text(self.dataset.as_str());
        text(self.citizen.as_str());
        text(self.kind.as_str());
        text(&format_date(self.effective));
        for (name, value) in &self.fields {
            text(name);
            canonical(value, &mut text);
        }
        h.finalize().into()
    }
}

/// A value, canonically (a record's fields sorted by name), to a digest.
fn canonical(v: &proto::Value, out: &mut impl FnMut(&str)) {
    use proto::value::Kind;
    match &v.kind {
        None => out("n"),
        Some(Kind::StringValue(s)) => {
            out("s");
            out(s)
        }
        Some(Kind::IntValue(i)) => {
            out("i");
            out(&i.to_string())
        }
        Some(Kind::BoolValue(b)) => out(if *b { "t" } else { "f" }),
        Some(Kind::DateValue(d)) => {
            out("d");
            out(d)
        }
        Some(Kind::RecordValue(r)) => {
            out("r");
            let mut keys: Vec<&String> = r.fields.keys().collect();
            keys.sort();
            out(&keys.len().to_string());
            for k in keys {
                out(k);
                canonical(&r.fields[k], out);
            }
        }
        Some(Kind::ListValue(l)) => {
            out("l");
            out(&l.values.len().to_string());
            for item in &l.values {
                canonical(item, out);
            }
        }
    }
}

/// Checks one change of a publication; `at` names it in messages.
fn check(
    broker: &Broker,
    caller: &Caller,
    at: usize,
    m: proto::Mutation,
) -> Result<Checked, ApiError> {
    let say = |field: &'static str, reason: &'static str, what: String| {
        ApiError::invalid(field, reason, format!("mutations[{at}]: {what}"))
    };
    // Each consumer's queue holds a copy until it acknowledges: one change
    // is bounded, whatever the request's size.
    if m.encoded_len() > MAX_CHANGE_BYTES {
        return Err(ApiError::new(
            Code::OutOfRange,
            "REQUEST_TOO_LARGE",
            format!(
                "mutations[{at}] is {} bytes; a change carries at most {MAX_CHANGE_BYTES} bytes of new values",
                m.encoded_len()
            ),
        ));
    }
    let id = m.source_event_id;
    if id.is_empty() || id.chars().count() > MAX_EVENT_ID || id.chars().any(char::is_control) {
        return Err(say(
            "mutations.source_event_id",
            "INVALID_ARGUMENT",
            format!(
                "source_event_id must be 1 to {MAX_EVENT_ID} printable characters, your own id of the event"
            ),
        ));
    }
    let citizen = Niss::parse(&m.citizen).map_err(|e| {
        say(
            "mutations.citizen",
            "INVALID_CITIZEN",
            format!("citizen: {e}"),
        )
    })?;
    let snapshot = broker.snapshot();
    let dataset = DatasetName::new(m.dataset.clone())
        .ok()
        .and_then(|d| snapshot.routes.get(&d).map(|r| r.dataset.clone()))
        .ok_or_else(|| {
            ApiError::not_found(
                "UNKNOWN_DATASET",
                format!(
                    "mutations[{at}]: no dataset {:?} is registered; ListDatasets shows those that are",
                    m.dataset
                ),
            )
        })?;
    if dataset.withdrawn {
        return Err(ApiError::new(
            Code::FailedPrecondition,
            "DATASET_WITHDRAWN",
            format!("mutations[{at}]: dataset {} was withdrawn", dataset.name),
        ));
    }
    if dataset.source != caller.org.kbo {
        return Err(ApiError::new(
            Code::PermissionDenied,
            "NOT_DATASET_SOURCE",
            format!(
                "mutations[{at}]: {} is published by {}, not by your organisation: only a dataset's source publishes its changes",
                dataset.name,
                dataset.source.as_str()
            ),
        ));
    }
    let kind = kind_from_proto(m.kind).ok_or_else(|| {
        say(
            "mutations.kind",
            "INVALID_ARGUMENT",
            "kind must be CREATED, CHANGED or ENDED".into(),
        )
    })?;
    let effective = if m.effective_date.is_empty() {
        brussels_today(OffsetDateTime::now_utc())
    } else {
        parse_date("mutations.effective_date", &m.effective_date)
            .map_err(|e| say("mutations.effective_date", "INVALID_DATE", e.message))?
    };
    let today = brussels_today(OffsetDateTime::now_utc());
    if effective.year() < 1900 || effective > today.saturating_add(time::Duration::days(3653)) {
        return Err(say(
            "mutations.effective_date",
            "INVALID_DATE",
            "effective_date must lie between 1900 and ten years from now".into(),
        ));
    }
    let mut changed = BTreeSet::new();
    for name in m.fields.keys() {
        match dataset.field(name) {
            Some(f) => {
                changed.insert(f.name.clone());
            }
            None => {
                return Err(say(
                    "mutations.fields",
                    "UNKNOWN_FIELD",
                    format!(
                        "{} has no field {name:?}; its fields are {}",
                        dataset.name,
                        dataset
                            .fields
                            .iter()
                            .map(|f| f.name.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
    }
    if changed.is_empty() && kind != MutationKind::Ended {
        return Err(say(
            "mutations.fields",
            "INVALID_ARGUMENT",
            "a creation or change carries the new values of the fields it changes".into(),
        ));
    }
    Ok(Checked {
        event_id: id,
        dataset: dataset.name,
        citizen,
        kind,
        effective,
        fields: m.fields.into_iter().collect(),
        changed,
    })
}

impl Broker {
    /// Routes one checked change: what each consumer concerned receives.
    async fn route_change(
        &self,
        caller: &Caller,
        c: &Checked,
        resolved: &semel_store::Resolved,
        now: OffsetDateTime,
    ) -> Result<(Vec<semel_core::mutation::Route>, Vec<Routed>), ApiError> {
        let persons = &self.storage().persons;
        let snapshot = self.snapshot();
        // A suspended organisation's lookups are refused: its queue gets no
        // citizen values either while it is suspended, and nothing of what
        // it missed when it is reinstated.
        let may_receive = |consumer: &Kbo| {
            snapshot
                .organisations
                .get(consumer)
                .is_some_and(|o| o.status != semel_core::OrganisationStatus::Suspended)
        };
        let candidates: Vec<&semel_core::Authorisation> = snapshot
            .authorisations
            .values()
            .filter(|a| a.dataset == c.dataset && a.receives_mutations && may_receive(&a.consumer))
            .collect();
        let consumers: BTreeSet<Kbo> = candidates.iter().map(|a| a.consumer).collect();
        // Each consumer's files, read at once rather than one after the
        // other (a round trip each on PostgreSQL when not in memory: one
        // after the other, 38 of them were most of a publication's time),
        // with the consents.
        let consents = async {
            if candidates.iter().any(|a| a.consent_required) {
                persons.consents_of(resolved).await
            } else {
                Ok(Vec::new())
            }
        };
        let (files, consents) = futures::future::try_join(
            futures::future::try_join_all(consumers.iter().map(|c| persons.files_of(c, resolved))),
            consents,
        )
        .await?;
        let files: Vec<_> = files.into_iter().flatten().collect();
        let now_micros = (now.unix_timestamp_nanos() / 1000) as i64;
        let routes = route(
            &MutationFacts {
                dataset: &c.dataset,
                changed: &c.changed,
                effective: c.effective,
                today: brussels_today(now),
                now,
                files: &files,
                consents: &consents,
            },
            candidates.iter().copied(),
        );
        let routed = routes
            .iter()
            .map(|r| {
                let event = proto::MutationEvent {
                    position: 0,
                    source_kbo: caller.org.kbo.as_str().to_owned(),
                    source_event_id: c.event_id.clone(),
                    dataset: c.dataset.to_string(),
                    citizen: resolved.current.as_str().to_owned(),
                    kind: match c.kind {
                        MutationKind::Created => proto::MutationKind::Created,
                        MutationKind::Changed => proto::MutationKind::Changed,
                        MutationKind::Ended => proto::MutationKind::Ended,
                    } as i32,
                    effective_date: format_date(c.effective),
                    fields: c
                        .fields
                        .iter()
                        .filter(|(k, _)| r.fields.iter().any(|f| f.as_str() == k.as_str()))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    checked_fields: r.checked.iter().map(ToString::to_string).collect(),
                    authorisation_reference: r.authorisation.to_string(),
                    file_id: r.file.clone(),
                    published_at: Some(timestamp_micros(now_micros)),
                };
                Routed {
                    consumer: r.consumer,
                    payload: event.encode_to_vec(),
                }
            })
            .collect();
        Ok((routes, routed))
    }

    /// Publishes one checked change. Its audit entries are made durable
    /// first (sharing their syncs), then the change is stored and queued:
    /// a change is never readable by a consumer before the entries that say
    /// it was accepted and queued. The source's entry says only that the
    /// change was accepted; who is told, and whether anyone is, is in one
    /// entry per consumer, attributed to that consumer
    /// ([`semel_core::mutation::QUEUE_OPERATION`]): the source's auditors
    /// read their own organisation's entries, and a list (or a count) of
    /// the consumers told would tell them which administrations hold a
    /// file on the citizen. If storing fails after the entries, further
    /// entries say so, to the same readers.
    async fn publish_one(
        &self,
        caller: &Caller,
        c: Checked,
    ) -> Result<proto::PublishedMutation, ApiError> {
        let request_id = crate::state::new_id();
        let mut record = self.audit_record(caller, request_id);
        record.citizen = Some(c.citizen);
        record.dataset = c.dataset.to_string();
        record.source = Some(caller.org.kbo);
        record.consumer_reference = semel_core::redact_national_numbers(&c.event_id).into_owned();
        record.reference_date = Some(format_date(c.effective));
        record.fields_requested = c.changed.iter().map(ToString::to_string).collect();
        let event = semel_core::redact_national_numbers(&c.event_id).into_owned();
        let store = &self.storage().mutations;
        let now = OffsetDateTime::now_utc();
        let digest = c.digest();
        // The id is remembered by its key only: a source's own ids may
        // carry a national number, and they are kept 400 days.
        let key = semel_core::mutation::event_key(&caller.org.kbo, &c.event_id);
        let prepared = async {
            let resolved = self.storage().persons.resolve(&c.citizen).await?;
            match store.known(&caller.org.kbo, &key).await? {
                Some(stored) if stored == digest => return Ok((resolved, None)),
                Some(_) => {
                    return Err(ApiError::new(
                        Code::AlreadyExists,
                        "EVENT_ID_REUSED",
                        format!(
                            "event id {:?} was published before for a different change; give each change its own id",
                            c.event_id
                        ),
                    ));
                }
                None => {}
            }
            let routed = self.route_change(caller, &c, &resolved, now).await?;
            Ok::<_, ApiError>((resolved, Some(routed)))
        }
        .await;
        let id = request_id.to_string();
        let answer = |duplicate| proto::PublishedMutation {
            source_event_id: c.event_id.clone(),
            duplicate,
            request_id: id.clone(),
        };
        let (resolved, routed) = match prepared {
            Ok(p) => p,
            Err(e) => {
                record.decision = AuditDecision::Refused;
                record.reason = e.reason_code();
                record.detail = semel_core::redact_national_numbers(&e.message).into_owned();
                self.append_durably(record).await?;
                return Err(e.with("request_id", id));
            }
        };
        record.citizen = Some(resolved.current);
        record.citizen_as_given = resolved.given;
        record.outcome = Outcome::Answered;
        let Some((routes, routed)) = routed else {
            record.detail =
                format!("change {event} published again: already stored, nothing queued");
            self.append_durably(record).await?;
            return Ok(answer(true));
        };
        record.detail = format!(
            "change {event} ({}, effective {}) accepted",
            c.kind.as_str(),
            format_date(c.effective),
        );
        let queued: Vec<AuditRecord> = routes
            .iter()
            .map(|r| self.queued_record(&record, r, &event, c.kind))
            .collect();
        // Entries that take back what the first ones said, if the change
        // is not stored after all: each to the readers of the entry it
        // corrects.
        let second = |of: &AuditRecord, detail: &str| {
            let mut r = of.clone();
            r.request_id = *crate::state::new_id().as_bytes();
            r.time_micros = (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64;
            r.detail = format!("change {event} {detail}");
            r
        };
        let corrections = |detail: &str, queued_detail: &str| {
            std::iter::once(second(&record, detail))
                .chain(queued.iter().map(|q| second(q, queued_detail)))
                .collect::<Vec<_>>()
        };
        // Appended together, the entries share their syncs. If some fail
        // (the log is failing: it refuses every entry from then on), the
        // change is not stored and the source is told to publish again.
        self.append_all_durably(std::iter::once(record.clone()).chain(queued.iter().cloned()))
            .await?;
        let now_micros = (now.unix_timestamp_nanos() / 1000) as i64;
        let count = |outcome| {
            self.metrics
                .mutations_published
                .get_or_create(&crate::metrics::MutationLabels {
                    organisation: caller.org.kbo.as_str().to_owned(),
                    dataset: c.dataset.to_string(),
                    outcome,
                })
                .inc();
        };
        match store
            .accept(&caller.org.kbo, &key, &digest, now_micros, &routed)
            .await
        {
            Ok(Accepted::New) => {
                count("queued");
                Ok(answer(false))
            }
            Ok(Accepted::Duplicate) => {
                count("duplicate");
                // Published at the same moment through another broker: that
                // publication stored it (and queued it under its own
                // entries).
                let _ = self
                    .append_all_durably(corrections(
                        "was stored by a publication made at the same time: this one queued nothing",
                        "was not queued by this publication after all: a publication made at the same time queued it",
                    ))
                    .await;
                Ok(answer(true))
            }
            Err(e) => {
                let e = ApiError::from(e);
                let why = semel_core::redact_national_numbers(&e.message).into_owned();
                let mut entries = corrections(
                    &format!("could not be stored: nothing was queued ({why})"),
                    &format!("was not queued after all: it could not be stored ({why})"),
                );
                for r in &mut entries {
                    r.decision = AuditDecision::Refused;
                    r.reason = e.reason_code();
                    r.outcome = Outcome::NotForwarded;
                    r.fields_returned.clear();
                }
                let _ = self.append_all_durably(entries).await;
                Err(e.with("request_id", id))
            }
        }
    }

    /// The entry saying that a change was queued for one consumer: its
    /// own, whose auditors (and those of the whole log) read it; the
    /// source's do not. It names the source, the citizen, the
    /// authorisation (and its version) and the fields the consumer
    /// receives, and carries no end user (no one of the consumer's acted).
    fn queued_record(
        &self,
        publication: &AuditRecord,
        r: &semel_core::mutation::Route,
        event: &str,
        kind: MutationKind,
    ) -> AuditRecord {
        let snapshot = self.snapshot();
        let auth = snapshot.authorisations.get(r.authorisation.as_str());
        let mut q = crate::state::blank_record(
            crate::state::new_id(),
            semel_core::mutation::QUEUE_OPERATION,
            r.consumer,
            None,
        );
        q.time_micros = publication.time_micros;
        q.citizen = publication.citizen;
        q.citizen_as_given = publication.citizen_as_given;
        q.dataset = publication.dataset.clone();
        q.source = publication.source;
        q.consumer_reference = publication.consumer_reference.clone();
        q.reference_date = publication.reference_date.clone();
        q.authorisation = Some(r.authorisation.to_string());
        q.authorisation_version = auth.map(|a| a.version);
        q.purpose = auth.map(|a| a.purpose.to_string()).unwrap_or_default();
        q.fields_requested = publication.fields_requested.clone();
        q.fields_returned = r.fields.iter().map(ToString::to_string).collect();
        q.outcome = Outcome::Answered;
        let source = publication.source.as_ref().map_or("", |k| k.as_str());
        q.detail = format!(
            "change {event} of {source} ({}, effective {}) queued under {}, file {}",
            kind.as_str(),
            publication.reference_date.as_deref().unwrap_or(""),
            r.authorisation,
            semel_core::redact_national_numbers(&r.file),
        );
        if !r.checked.is_empty() {
            q.detail.push_str(&format!(
                "; fields it may only test changed: {}",
                r.checked
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        q
    }

    /// Appends entries together (they share the log's syncs) and waits
    /// until all are durable.
    pub(super) async fn append_all_durably(
        &self,
        records: impl IntoIterator<Item = AuditRecord>,
    ) -> Result<(), ApiError> {
        futures::future::try_join_all(records.into_iter().map(|r| self.append_durably(r)))
            .await
            .map(|_| ())
    }
}

impl MutationService {
    pub(super) async fn publish_mutations(
        &self,
        req: Request<proto::PublishMutationsRequest>,
    ) -> Result<Response<proto::PublishMutationsResponse>, Status> {
        let caller = self.broker.admit(&req).await?;
        let broker = &self.broker;
        let mutations = req.into_inner().mutations;
        // Every change is checked before any is stored: a bad one refuses
        // the request whole, and the refusal is recorded. An accepted
        // request gets one entry per change.
        let checked = (|| {
            if mutations.is_empty() || mutations.len() > MAX_PUBLISH {
                return Err(Box::new((
                    String::new(),
                    ApiError::invalid(
                        "mutations",
                        "INVALID_ARGUMENT",
                        format!(
                            "publish 1 to {MAX_PUBLISH} changes at once, not {}",
                            mutations.len()
                        ),
                    ),
                )));
            }
            let mut checked = Vec::with_capacity(mutations.len());
            for (at, m) in mutations.into_iter().enumerate() {
                let dataset = m.dataset.clone();
                checked.push(check(broker, &caller, at, m).map_err(|e| Box::new((dataset, e)))?);
            }
            Ok(checked)
        })();
        let checked = match checked {
            Ok(checked) => checked,
            Err(refused) => {
                let (dataset, e) = *refused;
                let refused = broker
                    .audited(&caller, async |change: &mut Change| {
                        if let Ok(d) = DatasetName::new(dataset)
                            && broker.snapshot().routes.contains_key(&d)
                        {
                            change.dataset = d.to_string();
                        }
                        Err::<((), Undo), _>(e)
                    })
                    .await;
                return Err(match refused {
                    Err(e) => e.into(),
                    Ok(_) => ApiError::internal("a refused publication was not refused").into(),
                });
            }
        };
        // A source's budget of changes: a flood would fill every consumer's
        // queue and the audit log. The whole request is admitted or none of
        // it; the refusal is recorded (within the refusal budget).
        if let Err(wait) = broker.publication_limits.admit_many(
            caller.org.kbo,
            checked.len(),
            std::time::Instant::now(),
        ) {
            let error = ApiError {
                retry_after: Some(wait),
                ..ApiError::new(
                    Code::ResourceExhausted,
                    "PUBLICATION_RATE_LIMITED",
                    format!(
                        "your organisation exceeded its rate of published changes; nothing of this request was stored; publish it again in {} ms",
                        wait.as_millis().max(1)
                    ),
                )
            };
            return Err(broker
                .refuse(&caller, error, ReasonCode::PublicationRateLimited, None)
                .await
                .into());
        }
        let mut results = Vec::with_capacity(checked.len());
        for c in checked {
            results.push(broker.publish_one(&caller, c).await?);
        }
        broker
            .mutations_queued
            .send_modify(|n| *n = n.wrapping_add(1));
        Ok(Response::new(proto::PublishMutationsResponse { results }))
    }
}
