//! The registry's objects: organisations, datasets and authorisations.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime};

use crate::{AuthorisationRef, DatasetName, FieldName, Kbo, PurposeCode};

/// What an organisation does through the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Publishes datasets and answers lookups.
    Source,
    /// Performs lookups.
    Consumer,
    /// Runs the broker: manages the registry, reads the audit log.
    Operator,
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
}
