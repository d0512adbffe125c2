//! SummariseAuditEntries: the entries a query matches, counted by day,
//! decision and reason, and the patterns of conduct an auditor looks for
//! (one person fishing for citizens their organisation has no file on, or
//! refused again and again).

use semel_core::{Niss, ReasonCode};
use semel_storage::AuditQuery;

use super::AuditService;
use crate::convert::timestamp_micros;
use crate::error::ApiError;
use crate::proto;

/// The most entries one summary counts (the newest of those matching).
const SUMMARY_LIMIT: usize = 200_000;
/// One person refused NO_ACTIVE_FILE for this many citizens or more is
/// looking for people their organisation has no file on.
const FISHING_CITIZENS: usize = 3;
/// One person refused this often or more, and more often than allowed.
const MANY_REFUSALS: u64 = 10;

/// What one person (or, without a token, one organisation) did.
#[derive(Default)]
struct Conduct {
    total: u64,
    refused: u64,
    no_file: u64,
    no_file_citizens: std::collections::HashSet<Niss>,
    refused_citizens: std::collections::HashSet<Niss>,
    first: i64,
    last: i64,
}

impl AuditService {
    /// Counts the entries a query matches, newest first, up to
    /// [`SUMMARY_LIMIT`] and within the scan budget: when either stops it,
    /// the answer is `truncated` and says below which sequence the rest
    /// lies.
    pub(super) async fn summarise(
        &self,
        mut query: AuditQuery,
    ) -> Result<proto::SummariseAuditEntriesResponse, ApiError> {
        use std::collections::{BTreeMap, HashMap};
        type Day = (String, String, String, String);
        let mut days: BTreeMap<Day, (u64, u64)> = BTreeMap::new();
        let mut reasons: HashMap<ReasonCode, u64> = HashMap::new();
        let mut people: HashMap<(Option<String>, semel_core::Kbo), Conduct> = HashMap::new();
        let mut out = proto::SummariseAuditEntriesResponse::default();
        let page = 1000;
        let budget = self.scan_budget();
        let mut examined = 0;
        loop {
            // One more than is left to count: finding it says there were
            // more than a summary counts.
            query.limit = page.min(SUMMARY_LIMIT + 1 - out.total as usize);
            query.scan_limit = Some(budget - examined);
            let found = self.query_page(query.clone()).await?;
            examined += found.examined;
            let entries = found.entries;
            for e in &entries {
                if out.total as usize == SUMMARY_LIMIT {
                    out.truncated = true;
                    out.next_before_sequence = e.entry.sequence + 1;
                    break;
                }
                let r = &e.entry.record;
                out.total += 1;
                let refused = r.decision == semel_core::AuditDecision::Refused;
                let day = time::OffsetDateTime::from_unix_timestamp_nanos(
                    i128::from(r.time_micros) * 1000,
                )
                .map(|t| t.date().to_string())
                .unwrap_or_default();
                let count = days
                    .entry((
                        day,
                        r.consumer.as_str().to_owned(),
                        r.dataset.clone(),
                        r.operation.to_string(),
                    ))
                    .or_default();
                let conduct = people
                    .entry((r.end_user.clone(), r.consumer))
                    .or_insert_with(|| Conduct {
                        first: r.time_micros,
                        ..Conduct::default()
                    });
                conduct.total += 1;
                conduct.first = conduct.first.min(r.time_micros);
                conduct.last = conduct.last.max(r.time_micros);
                if refused {
                    out.refused += 1;
                    count.1 += 1;
                    conduct.refused += 1;
                    conduct.refused_citizens.extend(r.citizen);
                    if let Some(reason) = r.reason {
                        *reasons.entry(reason).or_default() += 1;
                        if reason == ReasonCode::Refused(semel_core::RefusalReason::NoActiveFile) {
                            conduct.no_file += 1;
                            conduct.no_file_citizens.extend(r.citizen);
                        }
                    }
                } else {
                    out.allowed += 1;
                    count.0 += 1;
                }
            }
            match entries.last() {
                _ if out.truncated => break,
                Some(last) if entries.len() == query.limit && last.entry.sequence > 0 => {
                    query.before_sequence = Some(last.entry.sequence);
                    if examined >= budget {
                        out.truncated = true;
                        out.next_before_sequence = last.entry.sequence;
                        break;
                    }
                }
                _ => {
                    // The budget ran out with older entries unread.
                    if let Some(resume) = found.resume_before {
                        out.truncated = true;
                        out.next_before_sequence = resume;
                    }
                    break;
                }
            }
        }
        out.days = days
            .into_iter()
            .rev()
            .map(
                |((day, consumer_kbo, dataset, operation), (allowed, refused))| {
                    proto::AuditDayCount {
                        day,
                        consumer_kbo,
                        dataset,
                        allowed,
                        refused,
                        operation,
                    }
                },
            )
            .collect();
        let mut reasons: Vec<_> = reasons.into_iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.as_str().cmp(b.0.as_str())));
        out.reasons = reasons
            .into_iter()
            .map(|(reason, count)| proto::AuditReasonCount {
                reason: reason.as_str().to_owned(),
                count,
            })
            .collect();
        for ((end_user, consumer), c) in people {
            let pattern = |kind: &str, count: u64, citizens: usize| proto::AuditPattern {
                kind: kind.to_owned(),
                end_user: end_user.clone().unwrap_or_default(),
                consumer_kbo: consumer.as_str().to_owned(),
                count,
                citizens: citizens as u64,
                first: Some(timestamp_micros(c.first)),
                last: Some(timestamp_micros(c.last)),
            };
            if c.no_file_citizens.len() >= FISHING_CITIZENS {
                out.patterns.push(pattern(
                    "NO_ACTIVE_FILE_FISHING",
                    c.no_file,
                    c.no_file_citizens.len(),
                ));
            }
            if c.refused >= MANY_REFUSALS && c.refused * 2 > c.total {
                out.patterns.push(pattern(
                    "MANY_REFUSALS",
                    c.refused,
                    c.refused_citizens.len(),
                ));
            }
        }
        out.patterns.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| a.kind.cmp(&b.kind))
                .then_with(|| a.end_user.cmp(&b.end_user))
        });
        Ok(out)
    }
}
