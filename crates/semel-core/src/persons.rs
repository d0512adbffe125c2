//! The persons directory and consents: which institution holds a file on
//! which citizen, in which capacity and for which period; which citizen
//! agreed to which exchange; and which national numbers replaced which.
//!
//! These hold identifiers and dates, never data about the citizen: the
//! broker still stores no payload.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime};

use crate::{CapacityCode, DatasetName, Kbo, Niss, PurposeCode};

/// How far a registration in the persons directory has gone (CBSS codes
/// 902 and 000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FilePhase {
    /// The institution is examining a request (an RIS application).
    Provisional,
    /// The institution has decided: the person is its beneficiary, pupil…
    Definitive,
}

impl FilePhase {
    pub fn as_str(self) -> &'static str {
        match self {
            FilePhase::Provisional => "provisional",
            FilePhase::Definitive => "definitive",
        }
    }
}

/// A consumer's file on a citizen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersonFile {
    /// The broker's id of the file (a UUID).
    pub id: String,
    pub consumer: Kbo,
    pub citizen: Niss,
    pub capacity: CapacityCode,
    pub phase: FilePhase,
    /// First day the file covers.
    pub begins: Date,
    /// Last day the file covers; `None` while it is open-ended.
    pub ends: Option<Date>,
    /// The consumer's own file number.
    pub consumer_reference: String,
    /// Who registered it (the token's `sub`).
    pub registered_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub registered_at: OffsetDateTime,
    /// When it was closed, if it was.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub closed_at: Option<OffsetDateTime>,
}

impl PersonFile {
    /// Whether the file covers `date`.
    pub fn covers(&self, date: Date) -> bool {
        self.begins <= date && self.ends.is_none_or(|end| date <= end)
    }

    /// Whether the file still holds at `now`: a file closed to end on the
    /// day it was closed (or earlier) stops at the moment it was closed, not
    /// at midnight. A file closed to end on a later day holds until then.
    pub fn open_at(&self, now: OffsetDateTime) -> bool {
        self.closed_at.is_none_or(|closed| {
            now < closed
                || self
                    .ends
                    .is_some_and(|end| end > crate::brussels_today(closed))
        })
    }
}

/// How a consent was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentChannel {
    /// By the citizen, signed in on a citizen portal.
    Portal,
    /// At an institution's counter, registered by one of its agents with a
    /// reference to the evidence (the signed form).
    Counter,
}

impl ConsentChannel {
    pub fn as_str(self) -> &'static str {
        match self {
            ConsentChannel::Portal => "portal",
            ConsentChannel::Counter => "counter",
        }
    }
}

/// A citizen's consent to an exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consent {
    /// The broker's id of the consent (a UUID).
    pub id: String,
    pub citizen: Niss,
    /// The consumer it is given to; `None`: any consumer.
    pub consumer: Option<Kbo>,
    pub purpose: PurposeCode,
    /// The datasets it covers; empty: every dataset, for this purpose.
    pub datasets: BTreeSet<DatasetName>,
    #[serde(with = "time::serde::rfc3339")]
    pub given_at: OffsetDateTime,
    pub channel: ConsentChannel,
    /// The organisation through which it was registered (a portal, or the
    /// consumer at whose counter it was given).
    pub registered_through: Kbo,
    /// The agent who registered it at a counter (the token's `sub`); empty
    /// when the citizen gave it themselves.
    pub registered_by: String,
    /// The reference of the evidence kept by the registering organisation.
    pub evidence: String,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub withdrawn_at: Option<OffsetDateTime>,
    /// How it was withdrawn: by the citizen (portal) or by an agent
    /// (counter). Records from before this was kept have none, and count as
    /// the citizen's: the protective reading.
    #[serde(default)]
    pub withdrawn_through: Option<ConsentChannel>,
}

/// Why a consent does not hold at a given moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsentState {
    Valid,
    NotYetGiven,
    Expired,
    Withdrawn,
}

impl Consent {
    /// Whether it concerns this exchange (whatever its validity).
    pub fn concerns(&self, consumer: Kbo, purpose: &PurposeCode, dataset: &DatasetName) -> bool {
        self.consumer.is_none_or(|c| c == consumer)
            && &self.purpose == purpose
            && (self.datasets.is_empty() || self.datasets.contains(dataset))
    }

    /// Whether the citizen withdrew it, at or before `now`.
    pub fn withdrawn_by_citizen(&self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        self.withdrawn_at
            .filter(|w| *w <= now)
            .filter(|_| self.withdrawn_through != Some(ConsentChannel::Counter))
    }

    /// Its state at `now`.
    pub fn state(&self, now: OffsetDateTime) -> ConsentState {
        if self.withdrawn_at.is_some_and(|w| w <= now) {
            ConsentState::Withdrawn
        } else if self.expires_at.is_some_and(|e| e <= now) {
            ConsentState::Expired
        } else if self.given_at > now {
            ConsentState::NotYetGiven
        } else {
            ConsentState::Valid
        }
    }
}

/// A national number replaced by another (a BIS number by a register
/// number, a change of registered sex): the old one points to the new one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumberReplacement {
    pub old: Niss,
    pub new: Niss,
    /// The day the register made the change.
    pub replaced_on: Date,
    /// The organisation that registered it (the register, or the operator).
    pub registered_by: Kbo,
    #[serde(with = "time::serde::rfc3339")]
    pub registered_at: OffsetDateTime,
}

/// How many replacements are followed before giving up (a loop would be a
/// register error); former numbers are bounded by four times as many.
pub const MAX_REPLACEMENT_CHAIN: usize = 8;

/// How far the loop check of a new replacement follows a chain before it
/// calls the register damaged: far beyond any real chain, but finite.
pub const MAX_REPLACEMENT_WALK: usize = 10_000;

/// A national number, resolved through its replacements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The number in force.
    pub current: Niss,
    /// The number as given, when it was replaced.
    pub given: Option<Niss>,
    /// Every number the current one replaced (directly or not): files and
    /// consents registered under them still count.
    pub former: Vec<Niss>,
}

impl Resolved {
    /// The current number, then the former ones.
    pub fn numbers(&self) -> impl Iterator<Item = &Niss> {
        std::iter::once(&self.current).chain(self.former.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::{date, datetime};

    fn consent() -> Consent {
        Consent {
            id: "c1".into(),
            citizen: Niss::parse("93051822361").expect("niss"),
            consumer: None,
            purpose: PurposeCode::new("SOCIAL_HOUSING").expect("p"),
            datasets: BTreeSet::new(),
            given_at: datetime!(2026-01-01 10:00 UTC),
            channel: ConsentChannel::Portal,
            registered_through: Kbo::parse("0566988259").expect("kbo"),
            registered_by: String::new(),
            evidence: String::new(),
            expires_at: Some(datetime!(2027-01-01 0:00 UTC)),
            withdrawn_at: None,
            withdrawn_through: None,
        }
    }

    #[test]
    fn consent_states() {
        let mut c = consent();
        assert_eq!(
            c.state(datetime!(2025-12-31 0:00 UTC)),
            ConsentState::NotYetGiven
        );
        assert_eq!(c.state(datetime!(2026-06-01 0:00 UTC)), ConsentState::Valid);
        assert_eq!(
            c.state(datetime!(2027-01-01 0:00 UTC)),
            ConsentState::Expired
        );
        c.withdrawn_at = Some(datetime!(2026-03-01 0:00 UTC));
        assert_eq!(
            c.state(datetime!(2026-06-01 0:00 UTC)),
            ConsentState::Withdrawn
        );
        assert_eq!(c.state(datetime!(2026-02-01 0:00 UTC)), ConsentState::Valid);
    }

    #[test]
    fn consent_scope() {
        let mut c = consent();
        let k = Kbo::parse("0314595348").expect("kbo");
        let p = PurposeCode::new("SOCIAL_HOUSING").expect("p");
        let d = DatasetName::new("spf_finances.taxable_income").expect("d");
        assert!(c.concerns(k, &p, &d), "any consumer, any dataset");
        assert!(!c.concerns(k, &PurposeCode::new("OTHER").expect("p"), &d));
        c.consumer = Some(Kbo::parse("0566988259").expect("kbo"));
        assert!(!c.concerns(k, &p, &d), "another consumer");
        c.consumer = Some(k);
        c.datasets
            .insert(DatasetName::new("national_register.residence").expect("d"));
        assert!(!c.concerns(k, &p, &d), "another dataset");
    }

    #[test]
    fn file_coverage_is_inclusive() {
        let f = PersonFile {
            id: "f".into(),
            consumer: Kbo::parse("0566988259").expect("kbo"),
            citizen: Niss::parse("93051822361").expect("niss"),
            capacity: CapacityCode::new("RIS_APPLICANT").expect("c"),
            phase: FilePhase::Provisional,
            begins: date!(2026 - 11 - 01),
            ends: Some(date!(2026 - 11 - 30)),
            consumer_reference: String::new(),
            registered_by: "clerk".into(),
            registered_at: datetime!(2026-11-01 9:00 UTC),
            closed_at: None,
        };
        assert!(!f.covers(date!(2026 - 10 - 31)));
        assert!(f.covers(date!(2026 - 11 - 01)));
        assert!(f.covers(date!(2026 - 11 - 30)));
        assert!(!f.covers(date!(2026 - 12 - 01)));
        assert!(f.open_at(datetime!(2026-11-20 9:00 UTC)));
        // Closed on the 20th to end that day: over from that moment.
        let mut closed = f.clone();
        closed.ends = Some(date!(2026 - 11 - 20));
        closed.closed_at = Some(datetime!(2026-11-20 10:00 UTC));
        assert!(closed.open_at(datetime!(2026-11-20 9:59 UTC)));
        assert!(!closed.open_at(datetime!(2026-11-20 10:00 UTC)));
        // Closed on the 20th to end on the 25th: holds until then.
        closed.ends = Some(date!(2026 - 11 - 25));
        assert!(closed.open_at(datetime!(2026-11-21 10:00 UTC)));
    }
}
