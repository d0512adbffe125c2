//! The audit entry: what is recorded for every lookup, its canonical
//! encoding, and its hash.
//!
//! The encoding is the one thing hashed and stored, so it is defined here,
//! byte for byte, and never depends on a serialisation library's choices:
//!
//! ```text
//! u8 version (4)
//! u64 sequence | [16] request id | i64 time (µs since the Unix epoch)
//! str operation | [10] consumer KBO | opt str end user | opt [11] citizen
//! str dataset | list fields requested | list fields returned | str purpose
//! opt str authorisation | u8 decision | opt str reason | u8 outcome
//! opt [10] source KBO | str consumer reference | opt str reference date
//! opt [11] citizen as given | list checks | str detail
//! opt u32 authorisation version
//! [32] previous hash
//! ```
//!
//! where `str` is a u16 big-endian length and UTF-8 bytes, `list` a u16
//! count of `str`, and `opt` a 0/1 byte before the value. The entry hash is
//! the RFC 6962 leaf hash `SHA-256(0x00 || encoding)`, so the hash chain of
//! today and the Merkle tree of tomorrow share their leaves.
//!
//! `operation` is the gRPC method the entry records, e.g.
//! `semel.v1.LookupService/Lookup`: a lookup, or another call refused
//! because of who made it. `citizen as given` is the number the caller
//! named when it had been replaced by `citizen`; `checks` the fields tested
//! (yes/no answers, whose results are not kept); `detail` the rule that
//! allowed or refused, in words; `authorisation version` the version of
//! the authorisation it was decided under (or, for a registry change, the
//! version it made). Versions 1 (before `operation`), 2 (before citizen as
//! given, checks and detail) and 3 (before the authorisation version) are
//! still decoded.

use std::borrow::Cow;

use sha2::{Digest, Sha256};

use crate::{Kbo, Niss, RefusalReason};

/// Bytes of a SHA-256 hash.
pub type Hash = [u8; 32];

/// The hash before the first entry.
pub const ZERO_HASH: Hash = [0; 32];

/// Longest text kept from a consumer's request in an entry; longer input
/// is refused at the edge, so this only guards the encoding.
pub const MAX_TEXT: usize = 256;

/// Room for an entry's `detail`: what a change of the rules changed, in
/// full. A detail is never cut: one that does not fit is refused before the
/// change is made ([`AuditRecord::detail_fits`]), so an entry either states
/// its change whole or the change does not happen.
pub const MAX_DETAIL: usize = 60 * 1024;

/// How much of one free text (a reason, a name, a legal basis, a note) a
/// detail quotes: free text comes after the structured change and is
/// bounded on its own ([`quote_free_text`]), so it can never push the change
/// out of the entry.
pub const MAX_QUOTED: usize = 512;

/// Free text for a detail, bounded to [`MAX_QUOTED`] bytes at a character
/// boundary, saying how much was left out; control characters become
/// spaces. The structured change goes before it, never after.
pub fn quote_free_text(text: &str) -> Cow<'_, str> {
    let clean = if text.chars().any(char::is_control) {
        Cow::Owned(text.replace(char::is_control, " "))
    } else {
        Cow::Borrowed(text)
    };
    if clean.len() <= MAX_QUOTED {
        return clean;
    }
    let mut end = MAX_QUOTED;
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!(
        "{}… ({} more bytes)",
        &clean[..end],
        clean.len() - end
    ))
}

/// Why a lookup was refused or failed, as recorded in the log and sent in
/// `google.rpc.ErrorInfo`. The codes are stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReasonCode {
    Refused(RefusalReason),
    /// The citizen is not a valid national or BIS number.
    InvalidCitizen,
    /// A change published for a dataset the caller is not the source of.
    NotDatasetSource,
    /// An acknowledgement of changes not delivered yet.
    NotDelivered,
    /// Another field of the request is malformed.
    InvalidArgument,
    /// The dataset does not exist.
    UnknownDataset,
    /// The dataset was withdrawn by its source.
    DatasetWithdrawn,
    /// A requested field does not exist in the dataset.
    UnknownField,
    /// The purpose is not in the catalogue.
    UnknownPurpose,
    /// The person's role needs a registration the organisation lacks
    /// (e.g. the consumer role of an organisation not registered as one).
    OrganisationRoleMissing,
    /// None of the person's roles may call this RPC.
    RoleNotPermitted,
    /// A citizen asked about another citizen.
    CitizenMismatch,
    /// The call concerns another organisation than the caller's.
    OtherOrganisation,
    /// The organisation is suspended.
    OrganisationSuspended,
    /// The client certificate has been revoked.
    CertificateRevoked,
    /// The call carried no end-user token.
    TokenMissing,
    /// The token is not a well-formed JWT with the required claims.
    TokenMalformed,
    TokenExpired,
    TokenNotYetValid,
    /// The token is meant for another audience.
    TokenAudience,
    /// The token's issuer is not trusted (for this organisation).
    TokenUntrustedIssuer,
    /// The token's signature does not verify with its issuer's keys.
    TokenSignature,
    /// The token names another organisation than the certificate.
    TokenOrganisationMismatch,
    /// The source holds nothing about the citizen.
    SubjectNotFound,
    /// The source could not be reached.
    SourceUnavailable,
    /// The source did not answer within the deadline.
    SourceTimeout,
    /// The source answered with an error.
    SourceError,
    /// The consumer exceeded its rate limit.
    RateLimited,
    /// The consumer used up its daily quota.
    QuotaExceeded,
    /// The source has as many lookups in flight as it is allowed.
    SourceBusy,
    /// The source failed repeatedly; lookups to it fail fast for a while.
    SourceCircuitOpen,
    /// The source's certificate does not name the dataset's owner: it was
    /// sent nothing.
    SourceNotAuthentic,
    /// The register does not know the national number (a file for it is
    /// refused).
    CitizenUnknown,
    /// The file, consent or record named does not exist (for this caller).
    NotFound,
    /// The consumer asked as many different yes/no questions about this
    /// citizen's field today as it may.
    CheckLimitReached,
    /// The client certificate has expired (during a long-lived connection).
    CertificateExpired,
    /// A consent registered by an agent after the citizen withdrew theirs.
    ConsentWithdrawnByCitizen,
    /// A file's begin date lies further back than its capacity allows.
    BackdateTooFar,
    /// A file names a capacity that no authorisation names.
    UnknownCapacity,
    /// The token is bound (`cnf`) to another certificate than the one the
    /// call came with.
    TokenCertificateMismatch,
    /// The source refused the request under its own rules.
    SourceRefused,
    /// The source found the request invalid.
    SourceRejectedRequest,
    /// An organisation has as many applications pending as it may.
    ApplicationsExceeded,
    /// A source published more changes than its budget allows.
    PublicationRateLimited,
    /// An organisation has as many audit calls in flight as it may.
    AuditCallsExceeded,
    /// The broker's registry snapshot was not confirmed current by a read
    /// of the database within its freshness bound: it decides nothing.
    RegistryStale,
    /// The broker's storage failed while it decided or answered (the call
    /// was refused; the client got `STORAGE_UNAVAILABLE`).
    StorageUnavailable,
    /// A registry change lost a race: the record changed since it was read
    /// (through another broker, perhaps); nothing was written.
    Conflict,
    /// A registry record with that name, or a pending application, exists.
    AlreadyExists,
    /// An application (for an authorisation or for membership) was
    /// already approved or rejected: this decision came second (perhaps
    /// through another broker) and was not stored.
    ApplicationDecided,
    /// A registry apply whose broker stopped (or lost the database) before
    /// its commit: not applied. Recorded by the broker that settled it;
    /// sent to the apply's caller when another broker settled it first.
    ApplyInterrupted,
}

const SIMPLE_CODES: [(ReasonCode, &str); 50] = [
    (ReasonCode::ApplyInterrupted, "APPLY_INTERRUPTED"),
    (ReasonCode::ApplicationDecided, "APPLICATION_DECIDED"),
    (ReasonCode::RegistryStale, "REGISTRY_STALE"),
    (ReasonCode::StorageUnavailable, "STORAGE_UNAVAILABLE"),
    (ReasonCode::Conflict, "CONFLICT"),
    (ReasonCode::AlreadyExists, "ALREADY_EXISTS"),
    (ReasonCode::ApplicationsExceeded, "APPLICATIONS_EXCEEDED"),
    (ReasonCode::AuditCallsExceeded, "AUDIT_CALLS_EXCEEDED"),
    (
        ReasonCode::PublicationRateLimited,
        "PUBLICATION_RATE_LIMITED",
    ),
    (ReasonCode::NotDatasetSource, "NOT_DATASET_SOURCE"),
    (ReasonCode::NotDelivered, "NOT_DELIVERED"),
    (ReasonCode::SourceRefused, "SOURCE_REFUSED"),
    (ReasonCode::SourceRejectedRequest, "SOURCE_REJECTED_REQUEST"),
    (
        ReasonCode::TokenCertificateMismatch,
        "TOKEN_CERTIFICATE_MISMATCH",
    ),
    (ReasonCode::CheckLimitReached, "CHECK_LIMIT_REACHED"),
    (ReasonCode::CertificateExpired, "CERTIFICATE_EXPIRED"),
    (
        ReasonCode::ConsentWithdrawnByCitizen,
        "CONSENT_WITHDRAWN_BY_CITIZEN",
    ),
    (ReasonCode::BackdateTooFar, "BACKDATE_TOO_FAR"),
    (ReasonCode::UnknownCapacity, "UNKNOWN_CAPACITY"),
    (ReasonCode::CitizenUnknown, "CITIZEN_UNKNOWN"),
    (ReasonCode::NotFound, "NOT_FOUND"),
    (ReasonCode::UnknownPurpose, "UNKNOWN_PURPOSE"),
    (ReasonCode::QuotaExceeded, "QUOTA_EXCEEDED"),
    (ReasonCode::OtherOrganisation, "OTHER_ORGANISATION"),
    (
        ReasonCode::OrganisationRoleMissing,
        "ORGANISATION_ROLE_MISSING",
    ),
    (ReasonCode::RoleNotPermitted, "ROLE_NOT_PERMITTED"),
    (ReasonCode::CitizenMismatch, "CITIZEN_MISMATCH"),
    (ReasonCode::OrganisationSuspended, "ORGANISATION_SUSPENDED"),
    (ReasonCode::CertificateRevoked, "CERTIFICATE_REVOKED"),
    (ReasonCode::TokenMissing, "TOKEN_MISSING"),
    (ReasonCode::TokenMalformed, "TOKEN_MALFORMED"),
    (ReasonCode::TokenExpired, "TOKEN_EXPIRED"),
    (ReasonCode::TokenNotYetValid, "TOKEN_NOT_YET_VALID"),
    (ReasonCode::TokenAudience, "TOKEN_AUDIENCE"),
    (ReasonCode::TokenUntrustedIssuer, "TOKEN_UNTRUSTED_ISSUER"),
    (ReasonCode::TokenSignature, "TOKEN_SIGNATURE"),
    (
        ReasonCode::TokenOrganisationMismatch,
        "TOKEN_ORGANISATION_MISMATCH",
    ),
    (ReasonCode::RateLimited, "RATE_LIMITED"),
    (ReasonCode::SourceBusy, "SOURCE_BUSY"),
    (ReasonCode::SourceCircuitOpen, "SOURCE_CIRCUIT_OPEN"),
    (ReasonCode::SourceNotAuthentic, "SOURCE_NOT_AUTHENTIC"),
    (ReasonCode::InvalidCitizen, "INVALID_CITIZEN"),
    (ReasonCode::InvalidArgument, "INVALID_ARGUMENT"),
    (ReasonCode::UnknownDataset, "UNKNOWN_DATASET"),
    (ReasonCode::DatasetWithdrawn, "DATASET_WITHDRAWN"),
    (ReasonCode::UnknownField, "UNKNOWN_FIELD"),
    (ReasonCode::SubjectNotFound, "SUBJECT_NOT_FOUND"),
    (ReasonCode::SourceUnavailable, "SOURCE_UNAVAILABLE"),
    (ReasonCode::SourceTimeout, "SOURCE_TIMEOUT"),
    (ReasonCode::SourceError, "SOURCE_ERROR"),
];

const REFUSALS: [RefusalReason; 10] = RefusalReason::ALL;

impl ReasonCode {
    /// The stable code, e.g. `NO_AUTHORISATION`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Refused(r) => r.code(),
            other => SIMPLE_CODES
                .iter()
                .find(|(c, _)| *c == other)
                .map_or("UNKNOWN", |(_, s)| s),
        }
    }

    /// Every stable code other than the refusals of `decide()`
    /// ([`RefusalReason::ALL`] has those).
    pub fn all_codes() -> impl Iterator<Item = &'static str> {
        SIMPLE_CODES.iter().map(|(_, s)| *s)
    }

    /// Parses a stable code.
    pub fn parse(s: &str) -> Option<Self> {
        REFUSALS
            .iter()
            .find(|r| r.code() == s)
            .map(|r| Self::Refused(*r))
            .or_else(|| SIMPLE_CODES.iter().find(|(_, c)| *c == s).map(|(r, _)| *r))
    }
}

/// What the broker decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditDecision {
    Allowed,
    Refused,
}

/// What happened to the lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The source answered; the allowed fields were returned.
    Answered,
    /// The source holds nothing about the citizen.
    NoData,
    /// Refused by the broker; nothing was forwarded.
    NotForwarded,
    SourceUnavailable,
    SourceTimeout,
    SourceError,
}

impl Outcome {
    const ALL: [Outcome; 6] = [
        Outcome::Answered,
        Outcome::NoData,
        Outcome::NotForwarded,
        Outcome::SourceUnavailable,
        Outcome::SourceTimeout,
        Outcome::SourceError,
    ];

    fn to_byte(self) -> u8 {
        Self::ALL.iter().position(|o| *o == self).unwrap_or(0) as u8 + 1
    }

    fn from_byte(b: u8) -> Option<Self> {
        Self::ALL.get(usize::from(b).checked_sub(1)?).copied()
    }
}

/// An entry as the lookup path fills it in, before the log gives it its
/// place (sequence) and its link (previous hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub request_id: [u8; 16],
    /// Microseconds since the Unix epoch, when the broker received the call.
    pub time_micros: i64,
    /// The gRPC method, e.g. [`LOOKUP_OPERATION`].
    pub operation: Cow<'static, str>,
    /// The calling organisation (the consumer, for a lookup).
    pub consumer: Kbo,
    /// The person who made the call (the token's `sub`), when known.
    pub end_user: Option<String>,
    pub citizen: Option<Niss>,
    pub dataset: String,
    pub fields_requested: Vec<String>,
    pub fields_returned: Vec<String>,
    pub purpose: String,
    pub authorisation: Option<String>,
    /// The version of `authorisation` the call was decided under.
    pub authorisation_version: Option<u32>,
    pub decision: AuditDecision,
    pub reason: Option<ReasonCode>,
    pub outcome: Outcome,
    pub source: Option<Kbo>,
    pub consumer_reference: String,
    /// ISO date, when the lookup asked for one.
    pub reference_date: Option<String>,
    /// The number the caller named, when it was replaced by `citizen`.
    pub citizen_as_given: Option<Niss>,
    /// The fields tested (yes/no answers); the answers are not kept.
    pub checks: Vec<String>,
    /// Which rule allowed or refused it: the file, the consent, the
    /// capacity missing. Never a citizen's number or data.
    pub detail: String,
}

impl AuditRecord {
    /// Whether the detail fits its entry whole ([`MAX_DETAIL`]): a change
    /// whose detail does not is refused, never recorded cut.
    pub fn detail_fits(detail: &str) -> bool {
        detail.len() <= MAX_DETAIL
    }
}

/// An entry in its place in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub sequence: u64,
    pub previous_hash: Hash,
    pub record: AuditRecord,
    /// The encoding's version: [`FORMAT`] for a new entry, the one it was
    /// written in for a decoded one, so that encoding it again gives back
    /// exactly the bytes that were hashed (an archive, a proof).
    pub format: u8,
}

/// Why bytes are not a valid entry encoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit entry encoding: {0}")]
pub struct DecodeError(&'static str);

/// The encoding's version new entries are written in.
pub const FORMAT: u8 = 4;

/// The operation of a lookup entry.
pub const LOOKUP_OPERATION: &str = "semel.v1.LookupService/Lookup";

impl AuditEntry {
    /// Appends the canonical encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let r = &self.record;
        let format = self.format;
        out.push(format);
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out.extend_from_slice(&r.request_id);
        out.extend_from_slice(&r.time_micros.to_be_bytes());
        // Older formats lack what came later (see the module's comment):
        // an entry decoded from one encodes back to the same bytes.
        if format >= 2 {
            put_str(out, &r.operation);
        }
        out.extend_from_slice(r.consumer.as_bytes());
        put_opt(out, r.end_user.as_deref(), put_str);
        put_opt(out, r.citizen.as_ref(), |o, n| {
            o.extend_from_slice(n.as_bytes())
        });
        put_str(out, &r.dataset);
        put_list(out, &r.fields_requested);
        put_list(out, &r.fields_returned);
        put_str(out, &r.purpose);
        put_opt(out, r.authorisation.as_deref(), put_str);
        out.push(match r.decision {
            AuditDecision::Allowed => 1,
            AuditDecision::Refused => 2,
        });
        put_opt(out, r.reason.map(ReasonCode::as_str), put_str);
        out.push(r.outcome.to_byte());
        put_opt(out, r.source.as_ref(), |o, k| {
            o.extend_from_slice(k.as_bytes())
        });
        put_str(out, &r.consumer_reference);
        put_opt(out, r.reference_date.as_deref(), put_str);
        if format >= 3 {
            put_opt(out, r.citizen_as_given.as_ref(), |o, n| {
                o.extend_from_slice(n.as_bytes())
            });
            put_list(out, &r.checks);
            put_text(out, &r.detail, MAX_DETAIL);
        }
        if format >= 4 {
            put_opt(out, r.authorisation_version, |o, v| {
                o.extend_from_slice(&v.to_be_bytes())
            });
        }
        out.extend_from_slice(&self.previous_hash);
    }

    /// The canonical encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        self.encode(&mut out);
        out
    }

    /// Decodes a canonical encoding, strictly: trailing bytes, unknown codes
    /// and invalid identifiers are errors.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader(bytes);
        let version = r.u8()?;
        if !(1..=FORMAT).contains(&version) {
            return Err(DecodeError("unknown version"));
        }
        let sequence = u64::from_be_bytes(r.array()?);
        let request_id = r.array()?;
        let time_micros = i64::from_be_bytes(r.array()?);
        let operation = if version == 1 {
            Cow::Borrowed(LOOKUP_OPERATION)
        } else {
            Cow::Owned(r.string()?)
        };
        let consumer = r.kbo()?;
        let end_user = r.opt(|r| r.string())?;
        let citizen = r.opt(Reader::niss)?;
        let dataset = r.string()?;
        let fields_requested = r.list()?;
        let fields_returned = r.list()?;
        let purpose = r.string()?;
        let authorisation = r.opt(|r| r.string())?;
        let decision = match r.u8()? {
            1 => AuditDecision::Allowed,
            2 => AuditDecision::Refused,
            _ => return Err(DecodeError("decision")),
        };
        let reason = r.opt(|r| ReasonCode::parse(&r.string()?).ok_or(DecodeError("reason")))?;
        let outcome = Outcome::from_byte(r.u8()?).ok_or(DecodeError("outcome"))?;
        let source = r.opt(|r| r.kbo())?;
        let consumer_reference = r.string()?;
        let reference_date = r.opt(|r| r.string())?;
        let (citizen_as_given, checks, detail) = if version >= 3 {
            (r.opt(Reader::niss)?, r.list()?, r.string()?)
        } else {
            (None, Vec::new(), String::new())
        };
        let authorisation_version = if version >= 4 {
            r.opt(|r| Ok(u32::from_be_bytes(r.array()?)))?
        } else {
            None
        };
        let previous_hash = r.array()?;
        if !r.0.is_empty() {
            return Err(DecodeError("trailing bytes"));
        }
        Ok(AuditEntry {
            format: version,
            sequence,
            previous_hash,
            record: AuditRecord {
                request_id,
                time_micros,
                operation,
                consumer,
                end_user,
                citizen,
                dataset,
                fields_requested,
                fields_returned,
                purpose,
                authorisation,
                authorisation_version,
                decision,
                reason,
                outcome,
                source,
                consumer_reference,
                reference_date,
                citizen_as_given,
                checks,
                detail,
            },
        })
    }
}

/// The RFC 6962 leaf hash of an entry's canonical encoding.
pub fn entry_hash(encoding: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(encoding);
    h.finalize().into()
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_text(out, s, MAX_TEXT);
}

fn put_text(out: &mut Vec<u8>, s: &str, max: usize) {
    // Texts are bounded at the edge (a detail by `detail_fits`, before its
    // change is made); the cut here only keeps the length prefix honest, at
    // a character boundary.
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u16).to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..end]);
}

fn put_list(out: &mut Vec<u8>, items: &[String]) {
    let n = items.len().min(usize::from(u16::MAX));
    out.extend_from_slice(&(n as u16).to_be_bytes());
    for s in &items[..n] {
        put_str(out, s);
    }
}

fn put_opt<T>(out: &mut Vec<u8>, v: Option<T>, put: impl FnOnce(&mut Vec<u8>, T)) {
    match v {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            put(out, v);
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError("truncated"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u16(&mut self) -> Result<usize, DecodeError> {
        Ok(usize::from(u16::from_be_bytes(self.array()?)))
    }
    fn string(&mut self) -> Result<String, DecodeError> {
        let n = self.u16()?;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError("text is not UTF-8"))
    }
    fn list(&mut self) -> Result<Vec<String>, DecodeError> {
        let n = self.u16()?;
        (0..n).map(|_| self.string()).collect()
    }
    fn niss(&mut self) -> Result<Niss, DecodeError> {
        let d: [u8; 11] = self.array()?;
        let s = std::str::from_utf8(&d).map_err(|_| DecodeError("citizen"))?;
        Niss::parse(s).map_err(|_| DecodeError("citizen"))
    }

    fn kbo(&mut self) -> Result<Kbo, DecodeError> {
        let d: [u8; 10] = self.array()?;
        let s = std::str::from_utf8(&d).map_err(|_| DecodeError("enterprise number"))?;
        Kbo::parse(s).map_err(|_| DecodeError("enterprise number"))
    }
    fn opt<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Option<T>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => f(self).map(Some),
            _ => Err(DecodeError("option tag")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample(sequence: u64) -> AuditEntry {
        AuditEntry {
            format: FORMAT,
            sequence,
            previous_hash: [7; 32],
            record: AuditRecord {
                request_id: [1; 16],
                time_micros: 1_700_000_000_000_000,
                operation: LOOKUP_OPERATION.into(),
                consumer: Kbo::parse("0566988259").expect("kbo"),
                end_user: Some("clerk-17".into()),
                citizen: Some(Niss::parse("93051822361").expect("niss")),
                dataset: "national_register.residence".into(),
                fields_requested: vec!["street".into(), "nis_code".into()],
                fields_returned: vec!["street".into()],
                purpose: "RIS_ELIGIBILITY".into(),
                authorisation: Some("BSC/2024/017".into()),
                authorisation_version: Some(3),
                decision: AuditDecision::Allowed,
                reason: None,
                outcome: Outcome::Answered,
                source: Some(Kbo::parse("0314595348").expect("kbo")),
                consumer_reference: "dossier 42".into(),
                reference_date: Some("2025-01-01".into()),
                citizen_as_given: Some(Niss::parse("98472899765").expect("niss")),
                checks: vec!["nis_code".into()],
                detail: "file f1 (RIS_APPLICANT, provisional)".into(),
            },
        }
    }

    #[test]
    fn a_long_detail_is_kept_whole_and_free_text_is_quoted_bounded() {
        // A registry change's detail is longer than any request's text:
        // it round-trips whole up to MAX_DETAIL.
        let mut e = sample(7);
        e.record.detail = "roles [consumer] → [consumer, auditor]; ".repeat(100);
        assert!(e.record.detail.len() > MAX_TEXT);
        assert!(AuditRecord::detail_fits(&e.record.detail));
        let decoded = AuditEntry::decode(&e.to_bytes()).expect("decode");
        assert_eq!(decoded.record.detail, e.record.detail);
        assert!(!AuditRecord::detail_fits(&"x".repeat(MAX_DETAIL + 1)));
        // Free text is quoted to its own bound, saying what was left out.
        let long = "é".repeat(400);
        let quoted = quote_free_text(&long);
        assert!(quoted.len() < long.len());
        assert!(quoted.ends_with("… (288 more bytes)"), "{quoted}");
        assert_eq!(quote_free_text("short\nreason"), "short reason");
    }

    #[test]
    fn encoding_round_trips() {
        let mut e = sample(42);
        assert_eq!(AuditEntry::decode(&e.to_bytes()), Ok(e.clone()));
        e.record.citizen = None;
        e.record.end_user = None;
        e.record.decision = AuditDecision::Refused;
        e.record.reason = Some(ReasonCode::Refused(RefusalReason::FieldNotAllowed));
        e.record.outcome = Outcome::NotForwarded;
        e.record.source = None;
        assert_eq!(AuditEntry::decode(&e.to_bytes()), Ok(e));
    }

    #[test]
    fn older_versions_still_decode() {
        // Version 3 had no authorisation version: an entry without one,
        // its absent option removed before the hash.
        let mut e = sample(3);
        e.record.authorisation_version = None;
        let v4 = e.to_bytes();
        let mut v3 = v4[..v4.len() - 33].to_vec();
        v3.extend_from_slice(&v4[v4.len() - 32..]);
        v3[0] = 3;
        let old = AuditEntry::decode(&v3).expect("v3");
        assert_eq!(
            old,
            AuditEntry {
                format: 3,
                ..e.clone()
            }
        );
        // It encodes back to the very bytes that were hashed.
        assert_eq!(old.to_bytes(), v3);
        // Version 2 had no citizen as given, checks or detail either.
        e.record.citizen_as_given = None;
        e.record.checks.clear();
        e.record.detail.clear();
        let v4 = e.to_bytes();
        let tail = 1 + 2 + 2 + 1 + 32; // opt none, empty list, empty str, opt none, hash
        let mut v2 = v4[..v4.len() - tail].to_vec();
        v2.extend_from_slice(&v4[v4.len() - 32..]);
        v2[0] = 2;
        let old = AuditEntry::decode(&v2).expect("v2");
        assert_eq!(
            old,
            AuditEntry {
                format: 2,
                ..e.clone()
            }
        );
        assert_eq!(old.to_bytes(), v2);
        // Version 1 had no operation either: drop its length-prefixed text,
        // which follows version, sequence, request id and time.
        let at = 1 + 8 + 16 + 8;
        let len = 2 + LOOKUP_OPERATION.len();
        let mut v1 = v2[..at].to_vec();
        v1[0] = 1;
        v1.extend_from_slice(&v2[at + len..]);
        let old = AuditEntry::decode(&v1).expect("v1");
        assert_eq!(old, AuditEntry { format: 1, ..e });
        assert_eq!(old.to_bytes(), v1);
    }

    #[test]
    fn decoding_is_strict() {
        let bytes = sample(1).to_bytes();
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(AuditEntry::decode(&longer).is_err());
        assert!(AuditEntry::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut version = bytes.clone();
        version[0] = 9;
        assert!(AuditEntry::decode(&version).is_err());
    }

    #[test]
    fn hash_changes_with_any_byte_and_is_a_leaf_hash() {
        let bytes = sample(1).to_bytes();
        let h = entry_hash(&bytes);
        for i in [0, 5, bytes.len() / 2, bytes.len() - 1] {
            let mut b = bytes.clone();
            b[i] ^= 1;
            assert_ne!(entry_hash(&b), h, "byte {i}");
        }
        let mut plain = Sha256::new();
        plain.update(&bytes);
        let plain: Hash = plain.finalize().into();
        assert_ne!(
            plain, h,
            "a leaf hash is domain-separated from a plain hash"
        );
    }

    #[test]
    fn reason_codes_round_trip() {
        for r in REFUSALS {
            assert_eq!(ReasonCode::parse(r.code()), Some(ReasonCode::Refused(r)));
        }
        for (c, s) in SIMPLE_CODES {
            assert_eq!(ReasonCode::parse(s), Some(c));
            assert_eq!(c.as_str(), s);
        }
    }
}
