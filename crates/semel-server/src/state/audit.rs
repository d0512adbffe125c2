//! The audit entries of calls other than lookups: refusals (one by one
//! within a budget, summarised beyond it), blank records and durable
//! appends, and the audit log's unavailability.

use super::*;

impl Broker {
    /// Whether a refusal of `org`'s gets its own audit entry: within the
    /// organisation's budget of refusals it does; beyond it, it is counted
    /// and recorded later as part of one summary entry, so that a flood of
    /// refused calls (a revoked certificate, a caller without a token) cannot
    /// fill the disk or citizens' views.
    pub fn refusal_recorded_alone(&self, org: Kbo, reason: &'static str) -> bool {
        let now = time::OffsetDateTime::now_utc();
        self.refusals.admit(
            org,
            std::time::Instant::now(),
            reason,
            (now.unix_timestamp_nanos() / 1000) as i64,
        )
    }

    /// Records the refusals counted beyond organisations' budgets, one
    /// summary entry per organisation: how many, why, from when to when.
    pub async fn record_refusal_floods(&self) {
        let floods = self.refusals.take_floods();
        let mut failed = Vec::new();
        for (org, flood) in floods {
            let mut record = blank_record(new_id(), REFUSALS_SUMMARY_OPERATION, org, None);
            record.time_micros = flood.last_micros;
            record.decision = AuditDecision::Refused;
            let top = flood
                .reasons
                .iter()
                .max_by_key(|(_, n)| **n)
                .map(|(r, _)| *r);
            record.reason = top.and_then(ReasonCode::parse);
            record.detail = format!(
                "{} refused calls not recorded one by one (over {} per second) between {} and {} (µs since the epoch): {}",
                flood.count,
                self.sources.limits.refusals_per_second,
                flood.first_micros,
                flood.last_micros,
                flood
                    .reasons
                    .iter()
                    .map(|(r, n)| format!("{r} ×{n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if let Err(e) = self.storage.audit.append(record).await {
                self.audit_unavailable(&e);
                failed.push((org, flood));
            } else {
                tracing::warn!(
                    organisation = org.as_str(),
                    refused = flood.count,
                    "refused calls summarised in the audit log"
                );
            }
        }
        if !failed.is_empty() {
            self.refusals.restore(failed);
        }
    }

    /// Records a refused call (when its organisation is known) and returns
    /// the error to send.
    pub async fn record_refusal(&self, denied: Denied, citizen: Option<Niss>) -> ApiError {
        let Denied {
            error,
            reason,
            org,
            user,
            operation,
        } = denied;
        let request_id = new_id();
        let Some(org) = org else {
            // `authorize_parts` gave it its request id.
            tracing::info!(
                operation,
                reason = error.reason,
                "call refused: caller not identified"
            );
            return error;
        };
        if !self.refusal_recorded_alone(org.kbo, error.reason) {
            return error
                .with("audit", "summarised")
                .with("request_id", request_id.to_string());
        }
        let mut record = blank_record(
            request_id,
            operation,
            org.kbo,
            user.map(|u| recorded_end_user(&u, citizen, None)),
        );
        record.citizen = citizen;
        record.decision = AuditDecision::Refused;
        record.reason = Some(reason);
        record.detail = semel_core::redact_national_numbers(&error.message).into_owned();
        if let Err(e) = self.storage.audit.append(record).await {
            self.audit_unavailable(&e);
        }
        tracing::info!(
            request_id = %request_id,
            operation,
            organisation = org.kbo.as_str(),
            reason = error.reason,
            "call refused"
        );
        error.with("request_id", request_id.to_string())
    }

    /// Refuses an authorised caller for what they asked (another citizen,
    /// another organisation), recording the refusal.
    pub async fn refuse(
        &self,
        caller: &Caller,
        error: ApiError,
        reason: ReasonCode,
        citizen: Option<Niss>,
    ) -> ApiError {
        let denied = Denied {
            error,
            reason,
            org: Some(caller.org.clone()),
            user: Some(caller.user.clone()),
            operation: caller.rule.method,
        };
        self.record_refusal(denied, citizen).await
    }

    /// A blank audit entry for the caller's call: allowed, nothing forwarded.
    pub fn audit_record(&self, caller: &Caller, request_id: uuid::Uuid) -> AuditRecord {
        blank_record(
            request_id,
            caller.rule.method,
            caller.org.kbo,
            Some(caller.user.subject.clone()),
        )
    }

    /// Appends an entry and waits until it is durable: a change is not
    /// acknowledged without its entry.
    pub async fn append_durably(&self, record: AuditRecord) -> Result<(), ApiError> {
        self.append_durably_at(record).await.map(|_| ())
    }

    /// [`Broker::append_durably`], saying where the entry landed.
    pub async fn append_durably_at(
        &self,
        record: AuditRecord,
    ) -> Result<semel_storage::Appended, ApiError> {
        self.storage
            .audit
            .append(record)
            .await
            .inspect(|_| self.audit_recorded())
            .map_err(|e| {
                self.audit_unavailable(&e);
                ApiError::retryable(
                    tonic::Code::Unavailable,
                    "AUDIT_UNAVAILABLE",
                    "the broker cannot record changes right now, so it makes none; try again later",
                )
            })
    }

    /// Counts a call refused because its entry could not be made durable,
    /// and says so in the log once: the embedded log refuses every append
    /// from its first failure until a restart (PostgreSQL's until it can be
    /// reached again), and a line per refused call (tens of thousands a
    /// second) would only add to the pressure on a disk that is often the
    /// same one.
    pub fn audit_unavailable(&self, error: &StorageError) {
        self.metrics.audit_unavailable.inc();
        if !self
            .audit_unavailable_said
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::error!(
                error = %semel_core::redact_national_numbers(&error.to_string()),
                "audit log unavailable: every call is refused until it can record again (the embedded store: fixed and the broker restarted; PostgreSQL: reachable again); semel_audit_unavailable_refusals_total counts them"
            );
        }
    }

    /// Notes that the audit log records again, so that its next failure is
    /// said in the log again (PostgreSQL recovers without a restart).
    pub fn audit_recorded(&self) {
        if self
            .audit_unavailable_said
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            self.audit_unavailable_said
                .store(false, std::sync::atomic::Ordering::Relaxed);
            tracing::info!("audit log records again");
        }
    }
}

/// The end user an entry names when it is the citizen it is about, acting
/// themselves (their token's `sub` is their national number, which the
/// entry's `citizen` field already holds).
pub const CITIZEN_THEMSELVES: &str = "(the citizen)";

/// The end user an entry about `citizen` (given as `as_given`) records for
/// `user`: the token's subject, but never a citizen's national number twice
/// in one entry.
pub(crate) fn recorded_end_user(
    user: &EndUser,
    citizen: Option<semel_core::Niss>,
    as_given: Option<semel_core::Niss>,
) -> String {
    match user.citizen() {
        Some(own) if Some(own) == citizen || Some(own) == as_given => CITIZEN_THEMSELVES.to_owned(),
        _ => user.subject.clone(),
    }
}

/// The operation of an entry that summarises refused calls beyond an
/// organisation's budget.
pub const REFUSALS_SUMMARY_OPERATION: &str = "semel.broker/RefusedCallsSummary";

/// An entry for a call other than a lookup, made now: allowed, about
/// nobody, nothing forwarded, until the caller says otherwise.
pub(crate) fn blank_record(
    request_id: uuid::Uuid,
    operation: &'static str,
    organisation: semel_core::Kbo,
    end_user: Option<String>,
) -> AuditRecord {
    AuditRecord {
        request_id: *request_id.as_bytes(),
        time_micros: (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64,
        operation: operation.into(),
        consumer: organisation,
        end_user,
        citizen: None,
        dataset: String::new(),
        fields_requested: Vec::new(),
        fields_returned: Vec::new(),
        purpose: String::new(),
        authorisation: None,
        authorisation_version: None,
        decision: AuditDecision::Allowed,
        reason: None,
        outcome: Outcome::NotForwarded,
        source: None,
        consumer_reference: String::new(),
        reference_date: None,
        citizen_as_given: None,
        checks: Vec::new(),
        detail: String::new(),
    }
}
