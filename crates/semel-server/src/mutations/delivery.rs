//! Delivery: a queued change recorded and sent as its authorisation allows
//! it at that moment, a page of a queue at a time.

use super::*;

impl Broker {
    /// Records one change delivered to `caller` and returns it to send,
    /// as its authorisation allows it now: the fields it may still read
    /// (a narrowed authorisation narrows what was queued), through a file
    /// still open. Or, when the authorisation or the file no longer allows
    /// it, records why, drops it from the queue and returns `None`.
    async fn deliver_one(
        &self,
        caller: &Caller,
        queued: &Queued,
    ) -> Result<Option<proto::MutationEvent>, ApiError> {
        let mut event = proto::MutationEvent::decode(queued.payload.as_slice()).map_err(|e| {
            ApiError::from(StorageError::Corrupt(format!(
                "a queued change cannot be read: {e}"
            )))
        })?;
        event.position = queued.position;
        let mut record = self.audit_record(caller, crate::state::new_id());
        let citizen = Niss::parse(&event.citizen).ok();
        record.citizen = citizen;
        record.dataset = event.dataset.clone();
        record.source = Kbo::parse(&event.source_kbo).ok();
        record.authorisation = Some(event.authorisation_reference.clone());
        let event_id = semel_core::redact_national_numbers(&event.source_event_id).into_owned();
        record.consumer_reference = event_id.clone();
        record.reference_date = Some(event.effective_date.clone());
        let kind = kind_from_proto(event.kind).map_or("changed", MutationKind::as_str);
        record.detail = format!(
            "change {event_id} of {} ({kind}, effective {}) at position {}",
            event.source_kbo, event.effective_date, queued.position,
        );
        let now = OffsetDateTime::now_utc();
        let today = brussels_today(now);
        let snapshot = self.snapshot();
        let auth = snapshot.authorisations.get(&event.authorisation_reference);
        record.purpose = auth.map(|a| a.purpose.to_string()).unwrap_or_default();
        record.authorisation_version = auth.map(|a| a.version);
        let mut refusal = match auth {
            None => Some(RefusalReason::NoAuthorisation),
            Some(a) if a.consumer != caller.org.kbo || !a.receives_mutations => {
                Some(RefusalReason::NoAuthorisation)
            }
            Some(a) => a.in_force(today).err(),
        };
        // The lookup's rule again, for today: a file open now in a capacity
        // the authorisation names (it may have replaced the one at routing),
        // the citizen's consent where it requires one.
        if refusal.is_none()
            && let (Some(citizen), Some(a)) = (citizen, auth)
        {
            let persons = &self.storage().persons;
            let resolved = persons.resolve(&citizen).await?;
            let files = persons.files_of(&caller.org.kbo, &resolved).await?;
            let consents = if a.consent_required {
                persons.consents_of(&resolved).await?
            } else {
                Vec::new()
            };
            match semel_core::mutation::still_told(a, &a.dataset, &files, &consents, today, now) {
                Ok((file, _consent)) => event.file_id = file,
                Err(reason) => refusal = Some(reason),
            }
        }
        // A change of a dataset withdrawn since it was queued is not served.
        let withdrawn = snapshot
            .routes
            .get(event.dataset.as_str())
            .is_some_and(|r| r.dataset.withdrawn);
        if withdrawn || refusal.is_some() {
            record.decision = AuditDecision::Refused;
            record.outcome = Outcome::NotForwarded;
            if let Some(reason) = refusal {
                record.reason = Some(ReasonCode::Refused(reason));
                record
                    .detail
                    .push_str(": not sent, its authorisation or file no longer allows it; dropped");
            } else {
                record.reason = Some(ReasonCode::DatasetWithdrawn);
                record
                    .detail
                    .push_str(": not sent, its dataset was withdrawn; dropped");
            }
            self.append_durably(record).await?;
            self.storage()
                .mutations
                .withhold(&caller.org.kbo, queued.position)
                .await?;
            self.count_delivery(caller, &event.dataset, "withheld");
            return Ok(None);
        }
        if let Some(a) = auth {
            // What the authorisation allows today: fields it may no longer
            // read become, at most, fields it may test.
            let mut checked: BTreeSet<String> = event.checked_fields.iter().cloned().collect();
            event.fields.retain(|name, _| {
                let readable = a.fields.iter().any(|f| f.as_str() == name);
                if !readable
                    && (a.check_fields.iter().any(|f| f.as_str() == name)
                        || a.checks.iter().any(|r| r.field.as_str() == name))
                {
                    checked.insert(name.clone());
                }
                readable
            });
            checked.retain(|name| {
                a.check_fields.iter().any(|f| f.as_str() == name)
                    || a.checks.iter().any(|r| r.field.as_str() == name)
            });
            event.checked_fields = checked.into_iter().collect();
        }
        let mut fields: Vec<String> = event.fields.keys().cloned().collect();
        fields.sort();
        if !event.checked_fields.is_empty() {
            record.detail.push_str(&format!(
                "; fields it may only test changed: {}",
                event.checked_fields.join(", ")
            ));
        }
        record.fields_requested = fields.clone();
        record.fields_returned = fields;
        record.outcome = Outcome::Answered;
        self.append_durably(record).await?;
        self.count_delivery(caller, &event.dataset, "delivered");
        Ok(Some(event))
    }

    /// Counts a delivery under a dataset name that is registered (a
    /// payload is the broker's own, but a label must never carry anything
    /// else).
    fn count_delivery(&self, caller: &Caller, dataset: &str, outcome: &'static str) {
        let dataset = DatasetName::new(dataset.to_owned())
            .ok()
            .filter(|d| self.snapshot().routes.contains_key(d))
            .map_or_else(|| "unknown".to_owned(), |d| d.to_string());
        self.metrics
            .mutations_delivered
            .get_or_create(&crate::metrics::MutationLabels {
                organisation: caller.org.kbo.as_str().to_owned(),
                dataset,
                outcome,
            })
            .inc();
    }

    /// Reads the caller's queue after `after`: the changes to deliver (each
    /// through [`Broker::deliver_one`], then sent at once), the notice of
    /// changes lost, and the last position read. `pending` need not read
    /// a snapshot (sled's scan may see an expiry half-way): the state is
    /// read after the queue unless the read is contiguous from `after`,
    /// and positions expire as a prefix recorded with the deletion, so a
    /// state read after the queue tells of every position a read skipped.
    pub(super) async fn next_changes(
        &self,
        caller: &Caller,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<Queued>, Option<proto::MutationsLost>, u64), ApiError> {
        let store = &self.storage().mutations;
        let consumer = caller.org.kbo;
        let queued = store.pending(&consumer, after, limit).await?;
        let contiguous =
            !queued.is_empty() && queued.iter().zip(after + 1..).all(|(q, p)| q.position == p);
        let lost_through = if contiguous {
            0
        } else {
            store.queue_state(&consumer).await?.lost_through
        };
        let mut lost = None;
        let mut skip_through = after;
        if lost_through > after {
            lost = Some(proto::MutationsLost {
                first_position: after + 1,
                last_position: lost_through,
            });
            skip_through = lost_through;
        }
        let queued: Vec<Queued> = queued
            .into_iter()
            .filter(|q| q.position > skip_through)
            .collect();
        let last = queued.last().map_or(skip_through, |q| q.position);
        Ok((queued, lost, last))
    }

    /// Delivers a page read by [`Broker::next_changes`]: each change
    /// recorded, then the page marked delivered up to `last` (if it was
    /// read from where delivery stands: a page read ahead, after a
    /// position the consumer was never sent, leaves the changes it skipped
    /// unsent, and so not to be acknowledged); returns the changes to
    /// send, in order.
    pub(super) async fn deliver_page(
        &self,
        caller: &Caller,
        queued: &[Queued],
        after: u64,
        last: u64,
    ) -> Result<Vec<proto::MutationEvent>, ApiError> {
        // One after the other: a subscriber's entries then join the group
        // commits of everything else, and publications are not queued
        // behind a page's hundred entries at once.
        let mut events = Vec::with_capacity(queued.len());
        for q in queued {
            if let Some(e) = self.deliver_one(caller, q).await? {
                events.push(e);
            }
        }
        if last > after {
            self.storage()
                .mutations
                .delivered(&caller.org.kbo, after, last)
                .await?;
        }
        Ok(events)
    }
}
