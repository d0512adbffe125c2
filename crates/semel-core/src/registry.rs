//! The registry's objects: organisations, datasets and authorisations.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime};

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
    /// Fields the consumer may only test (a yes/no answer to a check such
    /// as "is `nis_code` 21004?"), never read.
    #[serde(default)]
    pub check_fields: BTreeSet<FieldName>,
    /// The capacities in which the consumer must hold an active file on the
    /// citizen (persons directory). Empty: a file in any capacity. A file
    /// is always required.
    #[serde(default)]
    pub capacities: BTreeSet<CapacityCode>,
    /// Whether the citizen's consent must be on record.
    #[serde(default)]
    pub consent_required: bool,
}

impl Authorisation {
    /// Whether `field` may be tested (read fields may be tested too).
    pub fn may_check(&self, field: &FieldName) -> bool {
        self.fields.contains(field) || self.check_fields.contains(field)
    }

    /// Whether its lookups are hidden from the citizen on `today`.
    pub fn hidden_from_citizen(&self, today: Date) -> bool {
        self.confidential_until.is_some_and(|d| today < d)
    }
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
    /// Serial number: lowercase hex without leading zeros. It matches that
    /// serial from any trusted CA.
    Serial(String),
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

    /// The serial of a certificate, from its big-endian bytes.
    pub fn serial_from_bytes(bytes: &[u8]) -> Self {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let trimmed = hex.trim_start_matches('0');
        CertificateId::Serial(if trimmed.is_empty() { "0" } else { trimmed }.to_owned())
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
        }
    }
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
}
