//! The registry's objects: organisations, datasets and authorisations.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime};

use crate::check::{CheckRule, Question};
use crate::{AuthorisationRef, CapacityCode, DatasetName, FieldName, Kbo, PurposeCode};

/// What an organisation does through the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Publishes datasets and answers lookups.
    Source,
    /// Performs lookups.
    Consumer,
    /// Runs the broker: manages the registry.
    Operator,
    /// Supervises: its auditors read the whole audit log (a data
    /// protection authority, the sectoral committee).
    Auditor,
    /// Runs a portal where citizens see who consulted their data and manage
    /// their consents.
    CitizenPortal,
}

/// Whether an organisation may call the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrganisationStatus {
    Active,
    Suspended,
}

/// An administration registered with the broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Organisation {
    pub kbo: Kbo,
    pub name: String,
    pub roles: BTreeSet<Role>,
    pub status: OrganisationStatus,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl Organisation {
    /// Whether it may act in `role` now.
    pub fn may_act_as(&self, role: Role) -> bool {
        self.status == OrganisationStatus::Active && self.roles.contains(&role)
    }
}

/// The type of a dataset field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    String,
    Int,
    Bool,
    Date,
    Record,
    List,
}

/// One field of a dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldDefinition {
    pub name: FieldName,
    pub description: String,
    pub field_type: FieldType,
}

/// A dataset published by an authentic source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dataset {
    pub name: DatasetName,
    pub source: Kbo,
    pub description: String,
    pub fields: Vec<FieldDefinition>,
    /// The source's `SourceService` address, e.g. `https://127.0.0.1:7001`.
    pub endpoint: String,
    pub keeps_history: bool,
    /// Withdrawn for good: no lookup or change is served any more; it
    /// stays in the registry (nothing is deleted).
    #[serde(default)]
    pub withdrawn: bool,
}

impl Dataset {
    /// The definition of a field, if the dataset has it.
    pub fn field(&self, name: &str) -> Option<&FieldDefinition> {
        self.fields.iter().find(|f| f.name.as_str() == name)
    }
}

/// Whether an authorisation is in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthorisationStatus {
    Active,
    Suspended,
    /// Ended for good: it allows nothing and cannot be reinstated or
    /// amended. Its versions stay readable.
    Revoked,
}

/// An authorisation (deliberation) issued by an authorising body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authorisation {
    pub reference: AuthorisationRef,
    pub consumer: Kbo,
    pub dataset: DatasetName,
    pub fields: BTreeSet<FieldName>,
    pub purpose: PurposeCode,
    pub legal_basis: String,
    pub issuing_body: String,
    pub valid_from: Date,
    /// Last day of validity; `None` is open-ended.
    pub valid_until: Option<Date>,
    pub status: AuthorisationStatus,
    /// Increases by one at every change; the store keeps every version.
    pub version: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// For police or judicial investigations: lookups under this
    /// authorisation stay out of the citizen's view until this day.
    #[serde(default)]
    pub confidential_until: Option<Date>,
    /// Scalar fields the consumer may test for equality with a value it
    /// gives (EQUALS, NOT_EQUALS; a yes/no answer to "is `nis_code`
    /// 21004?"), never read. The broker bounds how many different values one
    /// consumer tries on one citizen.
    #[serde(default)]
    pub check_fields: BTreeSet<FieldName>,
    /// The questions the authorisation names: field, element, operator and
    /// threshold ("income of the year below 25,000 euros?").
    #[serde(default)]
    pub checks: Vec<CheckRule>,
    /// The capacities in which the consumer must hold an active file on the
    /// citizen (persons directory). Empty: a file in any capacity. A file
    /// is always required.
    #[serde(default)]
    pub capacities: BTreeSet<CapacityCode>,
    /// Whether the citizen's consent must be on record.
    #[serde(default)]
    pub consent_required: bool,
    /// Whether the consumer is told of the dataset's changes (mutations)
    /// about citizens it holds a file on, under the same rules as a lookup.
    #[serde(default)]
    pub receives_mutations: bool,
}

impl Authorisation {
    /// Whether the question may be asked: anything about a field that may
    /// be read; equality on a scalar field of `check_fields`; otherwise
    /// exactly a question the authorisation names.
    pub fn may_ask(&self, q: &Question) -> bool {
        self.fields.contains(&q.field)
            || (self.check_fields.contains(&q.field) && q.element.is_none() && !q.op.is_ordered())
            || self.checks.iter().any(|r| r.allows(q))
    }

    /// Whether it can allow anything on `today`: not when revoked or
    /// suspended, nor outside its validity (the first reason, in that
    /// order). Lookups, deliveries of changes and the catalogue all ask this.
    pub fn in_force(&self, today: Date) -> Result<(), crate::RefusalReason> {
        crate::decision::in_force(self, today)
    }

    /// Whether its lookups are hidden from the citizen on `today`.
    pub fn hidden_from_citizen(&self, today: Date) -> bool {
        self.confidential_until.is_some_and(|d| today < d)
    }
}

/// Where an application for an authorisation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplicationState {
    /// Waiting for the supervisory body.
    Pending,
    /// Approved: the authorisation (a new one, or a new version) is recorded.
    Approved,
    /// Rejected; nothing was recorded.
    Rejected,
}

/// A consumer's application for an authorisation, or for an amendment of
/// one it holds, decided by the supervisory body. Only an approved one
/// becomes an authorisation version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorisationApplication {
    pub id: String,
    /// The authorisation as it would read if approved as asked.
    pub proposed: Authorisation,
    /// Why the consumer needs it, in its own words.
    pub justification: String,
    pub applicant: Kbo,
    /// The person who applied (the token's `sub`).
    pub applied_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub applied_at: OffsetDateTime,
    pub state: ApplicationState,
    pub decided_by: Option<Kbo>,
    pub decided_by_person: Option<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub decided_at: Option<OffsetDateTime>,
    /// The supervisory body's reasons, given to the parties.
    #[serde(default)]
    pub decision_note: String,
    /// The authorisation version an approval recorded (the proposal as
    /// approved, amended or not).
    #[serde(default)]
    pub approved_version: Option<u32>,
}

/// An administration's application for membership, made with its own
/// certificate before it is registered, decided by the operator. Only an
/// approved one registers the organisation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipApplication {
    pub id: String,
    /// The enterprise number its certificate names.
    pub kbo: Kbo,
    /// Its legal name, as it gives it.
    pub name: String,
    /// The roles it asks for.
    pub roles: BTreeSet<Role>,
    /// Who to contact (a functional mailbox, a telephone number).
    pub contact: String,
    /// What else the operator needs: its endpoints, its datasets, why.
    pub note: String,
    /// The certificate it applied with (`sha256:…`).
    pub certificate: String,
    #[serde(with = "time::serde::rfc3339")]
    pub applied_at: OffsetDateTime,
    pub state: ApplicationState,
    pub decided_by_person: Option<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub decided_at: Option<OffsetDateTime>,
    #[serde(default)]
    pub decision_note: String,
}

/// A purpose of the catalogue: what a lookup is for, and the law that
/// allows it. Authorisations and lookups name purposes by code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purpose {
    pub code: PurposeCode,
    pub description: String,
    pub legal_basis: String,
}

/// How a revoked certificate is recognised.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertificateId {
    /// SHA-256 of the DER encoding: 64 lowercase hex digits.
    Sha256(String),
    /// Serial number: lowercase hex without leading zeros. Recorded before
    /// revocations named the issuer, it matches that serial from any
    /// trusted CA (the safe reading of an old record).
    Serial(String),
    /// Serial number from one issuer: the SHA-256 of the DER encoding of the
    /// issuer's name (64 lowercase hex digits) and the serial as above.
    /// Serials are unique per issuer only.
    IssuedSerial { issuer: String, serial: String },
}

impl CertificateId {
    /// Parses a fingerprint given as hex, with or without colons.
    pub fn sha256(text: &str) -> Result<Self, String> {
        let hex = normalise_hex(text)?;
        if hex.len() != 64 {
            return Err(format!(
                "a SHA-256 fingerprint has 64 hex digits, this one has {}",
                hex.len()
            ));
        }
        Ok(CertificateId::Sha256(hex))
    }

    /// Parses a serial number given as hex, with or without colons.
    pub fn serial(text: &str) -> Result<Self, String> {
        let hex = normalise_hex(text)?;
        let trimmed = hex.trim_start_matches('0');
        let trimmed = if trimmed.is_empty() { "0" } else { trimmed };
        if trimmed.len() > 40 {
            return Err("a serial number has at most 20 bytes (40 hex digits)".into());
        }
        Ok(CertificateId::Serial(trimmed.to_owned()))
    }

    /// Parses a serial number and its issuer's name hash, given as hex.
    pub fn issued_serial(issuer: &str, serial: &str) -> Result<Self, String> {
        let CertificateId::Serial(serial) = Self::serial(serial)? else {
            return Err("not a serial".into());
        };
        let issuer =
            normalise_hex(issuer).map_err(|e| format!("the issuer name's SHA-256: {e}"))?;
        if issuer.len() != 64 {
            return Err(format!(
                "the issuer name's SHA-256 has 64 hex digits, this one has {}",
                issuer.len()
            ));
        }
        Ok(CertificateId::IssuedSerial { issuer, serial })
    }

    /// The serial of a certificate, from its big-endian bytes.
    pub fn serial_from_bytes(bytes: &[u8]) -> Self {
        CertificateId::Serial(serial_hex(bytes))
    }

    /// The serial of a certificate with its issuer: the serial's bytes and
    /// the SHA-256 of the issuer name's DER encoding.
    pub fn issued_serial_from(issuer_name_sha256: &[u8; 32], serial: &[u8]) -> Self {
        CertificateId::IssuedSerial {
            issuer: issuer_name_sha256
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            serial: serial_hex(serial),
        }
    }

    /// The fingerprint of a certificate's DER encoding.
    pub fn sha256_of(digest: &[u8; 32]) -> Self {
        CertificateId::Sha256(digest.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// A stable storage key, e.g. `sha256:ab…` or `serial:1f…`.
    pub fn key(&self) -> String {
        match self {
            CertificateId::Sha256(h) => format!("sha256:{h}"),
            CertificateId::Serial(h) => format!("serial:{h}"),
            CertificateId::IssuedSerial { issuer, serial } => format!("serial:{issuer}:{serial}"),
        }
    }

    /// The id a storage key names ([`CertificateId::key`] read back), or
    /// `None` if `key` is not one that method writes.
    pub fn from_key(key: &str) -> Option<Self> {
        let id = match key.split(':').collect::<Vec<_>>().as_slice() {
            ["sha256", hex] => CertificateId::sha256(hex).ok()?,
            ["serial", hex] => CertificateId::serial(hex).ok()?,
            ["serial", issuer, serial] => CertificateId::issued_serial(issuer, serial).ok()?,
            _ => return None,
        };
        (id.key() == key).then_some(id)
    }
}

/// A serial's big-endian bytes as lowercase hex without leading zeros.
fn serial_hex(bytes: &[u8]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let trimmed = hex.trim_start_matches('0');
    if trimmed.is_empty() { "0" } else { trimmed }.to_owned()
}

fn normalise_hex(text: &str) -> Result<String, String> {
    let hex: String = text
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if hex.is_empty() {
        return Err("it is empty".into());
    }
    if let Some(bad) = hex.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(format!("{bad:?} is not a hex digit"));
    }
    Ok(hex)
}

/// A certificate the broker refuses, whatever CA issued it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedCertificate {
    pub id: CertificateId,
    pub reason: String,
    #[serde(with = "time::serde::rfc3339")]
    pub revoked_at: OffsetDateTime,
}

#[cfg(test)]
mod certificate_tests {
    use super::CertificateId;

    #[test]
    fn identifiers_are_normalised() {
        assert_eq!(
            CertificateId::serial("00:1F:ab"),
            Ok(CertificateId::Serial("1fab".into()))
        );
        assert_eq!(
            CertificateId::serial_from_bytes(&[0, 0x1f, 0xab]),
            CertificateId::Serial("1fab".into())
        );
        assert!(CertificateId::sha256("ab").is_err());
        assert!(CertificateId::serial("xyz").is_err());
        let fp = "AB:".repeat(31) + "AB";
        assert_eq!(
            CertificateId::sha256(&fp).map(|c| c.key()),
            Ok(format!("sha256:{}", "ab".repeat(32)))
        );
    }

    #[test]
    fn a_key_names_its_id_again() {
        for id in [
            CertificateId::Sha256("ab".repeat(32)),
            CertificateId::Serial("1fab".into()),
            CertificateId::IssuedSerial {
                issuer: "cd".repeat(32),
                serial: "0".into(),
            },
        ] {
            assert_eq!(CertificateId::from_key(&id.key()), Some(id));
        }
        for not_a_key in [
            "",
            "sha256:ab",
            "serial:001f",
            "serial:XY",
            "md5:ab",
            "serial:ab:1f",
            "sha256:ab:cd",
        ] {
            assert_eq!(CertificateId::from_key(not_a_key), None, "{not_a_key}");
        }
    }
}
