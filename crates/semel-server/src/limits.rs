//! Limits that keep one consumer or one source from hurting the others:
//! a token bucket per consumer, and per source a cap on lookups in flight
//! and a circuit breaker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use semel_core::Kbo;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use semel_config::settings::{
    DEFAULT_AUDIT_SCAN_BUDGET, DEFAULT_CALL_BURST, DEFAULT_CALLS_IN_FLIGHT,
    DEFAULT_CALLS_PER_SECOND, DEFAULT_LOOKUP_BURST, DEFAULT_LOOKUPS_PER_DAY,
    DEFAULT_LOOKUPS_PER_SECOND, DEFAULT_PUBLICATION_BURST, DEFAULT_PUBLICATIONS_PER_SECOND,
    LimitSettings,
};

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// How many brokers share each organisation's limits: every limit of an
/// organisation (its rate and burst, its daily quota, its distinct checks)
/// is held on each broker at this broker's share of it, the limit divided
/// by the brokers alive on the same database (counted every second on
/// PostgreSQL; always 1 on the embedded store), so that the organisation
/// gets its limit in all, not once per broker.
#[derive(Clone, Debug)]
pub struct Share(Arc<std::sync::atomic::AtomicUsize>);

impl Default for Share {
    fn default() -> Self {
        Share(Arc::new(std::sync::atomic::AtomicUsize::new(1)))
    }
}

impl Share {
    /// The brokers sharing the limits (at least 1).
    pub fn brokers(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Relaxed).max(1)
    }

    /// Sets the brokers alive.
    pub fn set_brokers(&self, n: usize) {
        self.0.store(n.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// This broker's share of an amount (a rate, a burst).
    fn of(&self, amount: f64) -> f64 {
        amount / self.brokers() as f64
    }

    /// This broker's share of a count, at least 1 (never none of it).
    fn of_count(&self, count: u64) -> u64 {
        (count / self.brokers() as u64).max(1)
    }
}

/// A token bucket per consumer, and a daily quota.
pub struct ConsumerLimits {
    rate: Option<f64>,
    burst: f64,
    buckets: Mutex<HashMap<Kbo, Bucket>>,
    daily_quota: Option<u64>,
    /// Lookups counted today, per consumer.
    used: Mutex<HashMap<Kbo, (time::Date, u64)>>,
    /// This broker's share of the limits above.
    share: Share,
}

impl ConsumerLimits {
    /// The budget of changes each source may publish: a bucket per source
    /// (of the same kind as a consumer's lookups), no daily quota.
    pub fn publications(settings: &LimitSettings) -> Self {
        ConsumerLimits {
            rate: Some(settings.source_publications_per_second),
            burst: settings
                .source_publication_burst
                .max(settings.source_publications_per_second)
                .max(1.0),
            buckets: Mutex::new(HashMap::new()),
            daily_quota: None,
            used: Mutex::new(HashMap::new()),
            share: Share::default(),
        }
    }

    /// The summaries of the audit log each organisation may ask for: a
    /// summary reads up to a scan budget of entries, so it is rationed as
    /// lookups are.
    pub fn audit_summaries(settings: &LimitSettings) -> Self {
        ConsumerLimits {
            rate: Some(settings.audit_summaries_per_second),
            burst: settings
                .audit_summary_burst
                .max(settings.audit_summaries_per_second)
                .max(1.0),
            buckets: Mutex::new(HashMap::new()),
            daily_quota: None,
            used: Mutex::new(HashMap::new()),
            share: Share::default(),
        }
    }

    pub fn new(settings: &LimitSettings) -> Self {
        let burst = settings
            .consumer_rate
            .map_or(0.0, |r| settings.consumer_burst.max(r).max(1.0));
        ConsumerLimits {
            rate: settings.consumer_rate,
            burst,
            buckets: Mutex::new(HashMap::new()),
            daily_quota: settings.consumer_daily_quota,
            used: Mutex::new(HashMap::new()),
            share: Share::default(),
        }
    }

    /// These limits held at this broker's share of them.
    pub fn shared(mut self, share: &Share) -> Self {
        self.share = share.clone();
        self
    }

    /// Counts one lookup against `consumer`'s quota for `today`, or says
    /// the quota is used up. Counts live in memory: a restart starts the
    /// day's count again.
    pub fn take_quota(&self, consumer: Kbo, today: time::Date) -> Result<(), u64> {
        let Some(quota) = self.daily_quota else {
            return Ok(());
        };
        // This broker's share; the refusal names the organisation's quota.
        let share = self.share.of_count(quota);
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        let (day, count) = used.entry(consumer).or_insert((today, 0));
        if *day != today {
            *day = today;
            *count = 0;
        }
        if *count >= share {
            return Err(quota);
        }
        *count += 1;
        Ok(())
    }

    /// Takes one token for `consumer`, or says how long until one is there.
    pub fn admit(&self, consumer: Kbo, now: Instant) -> Result<(), Duration> {
        self.admit_many(consumer, 1, now)
    }

    /// Takes `n` tokens for `org` at once (a publication's changes), or
    /// none and says how long until they are there. More than the burst
    /// are never there: the wait is then a full bucket's.
    pub fn admit_many(&self, org: Kbo, n: usize, now: Instant) -> Result<(), Duration> {
        let Some(rate) = self.rate else { return Ok(()) };
        // This broker's share of the rate and of the burst (a burst of at
        // least one call of `n`, as unshared).
        let (rate, burst) = (self.share.of(rate), self.share.of(self.burst).max(1.0));
        let n = n as f64;
        let consumer = org;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let b = buckets.entry(consumer).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        b.tokens =
            (b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * rate).min(burst);
        b.last = now;
        if b.tokens >= n {
            b.tokens -= n;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (n.min(burst) - b.tokens).max(0.0) / rate,
            ))
        }
    }
}

/// Audit calls in flight per organisation: each may read a scan budget
/// of entries, so one organisation's auditors cannot take every core by
/// calling many at once.
pub struct AuditCalls {
    most: usize,
    open: Arc<Mutex<HashMap<Kbo, usize>>>,
}

/// One audit call of an organisation, given back when dropped.
pub struct AuditCall {
    org: Kbo,
    open: Arc<Mutex<HashMap<Kbo, usize>>>,
}

impl AuditCalls {
    pub fn new(settings: &LimitSettings) -> Self {
        AuditCalls {
            most: settings.audit_calls_in_flight.max(1),
            open: Arc::default(),
        }
    }

    /// A place for one more call of `org`, or `None` when it has as many
    /// in flight as it may.
    pub fn enter(&self, org: Kbo) -> Option<AuditCall> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(org).or_insert(0);
        if *n >= self.most {
            return None;
        }
        *n += 1;
        Some(AuditCall {
            org,
            open: self.open.clone(),
        })
    }
}

impl Drop for AuditCall {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.org) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.org);
            }
        }
    }
}

/// Why a call (other than a lookup) is not handled right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallRefusal {
    /// Over the organisation's rate: a token is there after this long.
    Rate(Duration),
    /// As many of the organisation's calls in flight as allowed.
    InFlight(usize),
}

/// The budget of every RPC but the lookups, per organisation: a token
/// bucket, and a cap on calls being handled at once, so that one
/// organisation's script cannot take the broker's store, register or
/// audit log from the others.
pub struct CallLimits {
    rate: ConsumerLimits,
    in_flight: usize,
    slots: Mutex<HashMap<Kbo, Arc<Semaphore>>>,
}

/// Held while one of an organisation's calls is handled.
#[derive(Debug)]
pub struct CallSlot {
    _permit: OwnedSemaphorePermit,
}

impl CallLimits {
    /// These limits' rate held at this broker's share of it (the calls in
    /// flight are this broker's own work, not shared).
    pub fn shared(mut self, share: &Share) -> Self {
        self.rate.share = share.clone();
        self
    }

    pub fn new(settings: &LimitSettings) -> Self {
        let rate = settings.calls_per_second.max(0.01);
        CallLimits {
            rate: ConsumerLimits {
                rate: Some(rate),
                burst: settings.call_burst.max(rate).max(1.0),
                buckets: Mutex::new(HashMap::new()),
                daily_quota: None,
                used: Mutex::new(HashMap::new()),
                share: Share::default(),
            },
            in_flight: settings.calls_in_flight.max(1),
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// Lets one of `org`'s calls in, or says why not. Never waits. The
    /// slot is checked first, so that a call refused for being one too
    /// many at once does not spend a token.
    pub fn enter(&self, org: Kbo, now: Instant) -> Result<CallSlot, CallRefusal> {
        let permit = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            // Organisations with nothing in flight are forgotten now and
            // then, so the map holds at most the busy ones and the last few.
            if slots.len() > 1024 {
                let cap = self.in_flight;
                slots.retain(|_, s| s.available_permits() < cap);
            }
            slots
                .entry(org)
                .or_insert_with(|| Arc::new(Semaphore::new(self.in_flight)))
                .clone()
                .try_acquire_owned()
                .map_err(|_| CallRefusal::InFlight(self.in_flight))?
        };
        self.rate.admit(org, now).map_err(CallRefusal::Rate)?;
        Ok(CallSlot { _permit: permit })
    }
}

/// Why a lookup is not forwarded to its source right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceRefusal {
    /// As many lookups in flight as allowed.
    Busy,
    /// The circuit is open for this much longer.
    CircuitOpen(Duration),
}

#[derive(Default)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
    /// A probe is in flight after the cooldown: others still fail fast.
    probing: bool,
}

/// The guard in front of one source.
pub struct SourceGuard {
    in_flight: Arc<Semaphore>,
    breaker: Mutex<Breaker>,
    failures_to_open: u32,
    cooldown: Duration,
}

/// Held while a lookup is at the source.
pub struct Pass {
    _permit: OwnedSemaphorePermit,
    probe: bool,
}

impl SourceGuard {
    pub fn new(settings: &LimitSettings) -> Self {
        SourceGuard {
            in_flight: Arc::new(Semaphore::new(settings.source_max_in_flight.max(1))),
            breaker: Mutex::new(Breaker::default()),
            failures_to_open: settings.breaker_failures.max(1),
            cooldown: settings.breaker_cooldown,
        }
    }

    /// Lets a lookup through to the source, or says why not. Never waits:
    /// a slow source makes its own consumers wait, not everyone's.
    pub fn enter(&self, now: Instant) -> Result<Pass, SourceRefusal> {
        let mut probe = false;
        {
            let mut b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(until) = b.open_until {
                if now < until {
                    return Err(SourceRefusal::CircuitOpen(until - now));
                }
                if b.probing {
                    return Err(SourceRefusal::CircuitOpen(self.cooldown));
                }
                b.probing = true;
                probe = true;
            }
        }
        match self.in_flight.clone().try_acquire_owned() {
            Ok(permit) => Ok(Pass {
                _permit: permit,
                probe,
            }),
            Err(_) => {
                if probe {
                    self.breaker
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .probing = false;
                }
                Err(SourceRefusal::Busy)
            }
        }
    }

    /// Whether the source is known to work: not since its circuit opened,
    /// until a call (the probe after the cooldown, or any) succeeds. The end
    /// of the cooldown only lets a probe through; it says nothing of the
    /// source, so its health stays NOT_SERVING.
    pub fn is_serving(&self) -> bool {
        let b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        b.open_until.is_none()
    }

    /// Records how the source did: `reachable` is false when it could not
    /// be reached or was too slow.
    pub fn record(&self, pass: Pass, reachable: bool, now: Instant) {
        let mut b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        if reachable {
            *b = Breaker::default();
        } else {
            b.failures += 1;
            if pass.probe || b.failures >= self.failures_to_open {
                if b.open_until.is_none() || pass.probe {
                    tracing::warn!(failures = b.failures, "source circuit opened");
                }
                b.open_until = Some(now + self.cooldown);
                b.probing = false;
            }
        }
    }
}

#[cfg(test)]
mod tests;

/// Bounds the different yes/no questions one consumer asks about one
/// citizen's field in a day, so that equality cannot enumerate a value and
/// element keys cannot sweep a history. Keys are keyed hashes: the map
/// holds no national number. Counts live in memory, per broker; every
/// question is in the audit log whatever this allows.
pub struct QuestionLimiter {
    per_key: usize,
    /// This broker's share of `per_key`.
    share: Share,
    hasher: std::collections::hash_map::RandomState,
    asked: Mutex<AskedToday>,
}

/// The day counted, and for each (consumer, citizen, field) key the
/// questions asked that day.
type AskedToday = (Option<time::Date>, HashMap<u64, Vec<u64>>);

/// Keys tracked at most in one day; beyond, new (consumer, citizen, field)
/// keys are refused rather than forgotten (fail closed).
const QUESTION_KEYS: usize = 262_144;

impl QuestionLimiter {
    pub fn new(settings: &LimitSettings) -> Self {
        QuestionLimiter {
            per_key: settings.distinct_checks_per_citizen.max(1),
            share: Share::default(),
            hasher: std::collections::hash_map::RandomState::new(),
            asked: Mutex::new((None, HashMap::new())),
        }
    }

    /// This budget held at this broker's share of it: with more brokers
    /// than distinct checks, each still allows one.
    pub fn shared(mut self, share: &Share) -> Self {
        self.share = share.clone();
        self
    }

    fn hash(&self, parts: impl std::hash::Hash) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(parts)
    }

    /// Records the questions, or says which field has had its share of
    /// different questions today (nothing is recorded then).
    pub fn admit(
        &self,
        consumer: Kbo,
        citizen: &semel_core::Niss,
        questions: &[semel_core::Question],
        today: time::Date,
    ) -> Result<(), semel_core::FieldName> {
        if questions.is_empty() {
            return Ok(());
        }
        let per_key = self.share.of_count(self.per_key as u64) as usize;
        let mut asked = self.asked.lock().unwrap_or_else(|p| p.into_inner());
        let (day, map) = &mut *asked;
        if *day != Some(today) {
            *day = Some(today);
            map.clear();
        }
        let keyed: Vec<(u64, u64)> = questions
            .iter()
            .map(|q| {
                (
                    self.hash((consumer.as_str(), citizen.as_str(), q.field.as_str())),
                    self.hash(q),
                )
            })
            .collect();
        // Check every question before recording any.
        let mut pending: HashMap<u64, Vec<u64>> = HashMap::new();
        for ((key, question), q) in keyed.iter().zip(questions) {
            let known = map.get(key).map_or(&[][..], Vec::as_slice);
            let new = pending.entry(*key).or_default();
            if known.contains(question) || new.contains(question) {
                continue;
            }
            if known.len() + new.len() >= per_key
                || (!map.contains_key(key) && map.len() >= QUESTION_KEYS)
            {
                return Err(q.field.clone());
            }
            new.push(*question);
        }
        for (key, new) in pending {
            map.entry(key).or_default().extend(new);
        }
        Ok(())
    }

    /// Different questions per consumer, citizen and field a day, across
    /// the brokers (each holds its share of it).
    pub fn per_key(&self) -> usize {
        self.per_key
    }
}

/// What an organisation's refused calls beyond its budget leave behind:
/// how many, for which reasons, between which times.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flood {
    pub count: u64,
    pub first_micros: i64,
    pub last_micros: i64,
    pub reasons: std::collections::BTreeMap<&'static str, u64>,
}

/// A token bucket per organisation for refused calls, so that a revoked
/// certificate or a caller without a token cannot fill the disk (and
/// citizens' views) with entries: within the budget each refusal is an
/// entry; beyond it, refusals are counted and recorded as one summary.
pub struct RefusalBudget {
    rate: f64,
    burst: f64,
    state: Mutex<HashMap<Kbo, (Bucket, Flood)>>,
}

impl RefusalBudget {
    pub fn new(settings: &LimitSettings) -> Self {
        let rate = settings.refusals_per_second.max(0.01);
        RefusalBudget {
            rate,
            burst: (rate * 10.0).max(1.0),
            state: Mutex::new(HashMap::new()),
        }
    }

    /// Whether this refusal gets its own entry. When it does not, it is
    /// counted in the organisation's flood.
    pub fn admit(&self, org: Kbo, now: Instant, reason: &'static str, at_micros: i64) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (b, flood) = state.entry(org).or_insert_with(|| {
            (
                Bucket {
                    tokens: self.burst,
                    last: now,
                },
                Flood::default(),
            )
        });
        b.tokens = (b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * self.rate)
            .min(self.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return true;
        }
        if flood.count == 0 {
            flood.first_micros = at_micros;
        }
        flood.count += 1;
        flood.last_micros = at_micros;
        *flood.reasons.entry(reason).or_default() += 1;
        false
    }

    /// Takes the floods counted so far, to be recorded.
    pub fn take_floods(&self) -> Vec<(Kbo, Flood)> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for (org, (_, flood)) in state.iter_mut() {
            if flood.count > 0 {
                out.push((*org, std::mem::take(flood)));
            }
        }
        out
    }

    /// Puts back floods that could not be recorded.
    pub fn restore(&self, floods: Vec<(Kbo, Flood)>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for (org, f) in floods {
            if let Some((_, flood)) = state.get_mut(&org) {
                if flood.count == 0 {
                    flood.first_micros = f.first_micros;
                }
                flood.count += f.count;
                flood.first_micros = flood.first_micros.min(f.first_micros);
                flood.last_micros = flood.last_micros.max(f.last_micros);
                for (r, n) in f.reasons {
                    *flood.reasons.entry(r).or_default() += n;
                }
            }
        }
    }
}

#[cfg(test)]
mod insider_tests;
