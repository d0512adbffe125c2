//! The persons' calls: a consumer's files on a citizen, replaced national
//! numbers, and consents.

use semel_proto as proto;
use serde_json::{Value as Json, json};

use crate::Client;
use crate::error::{CallResult, usage};
use crate::json::{consent_json, file_json, parse_time, with_request_id};

/// A new file for `semel files register`.
#[derive(Debug, Clone, Default)]
pub struct NewFile {
    pub citizen: String,
    pub capacity: String,
    /// `provisional` or `definitive`.
    pub phase: String,
    pub begin_date: Option<String>,
    pub end_date: Option<String>,
    pub reference: Option<String>,
}

/// A new consent for `semel consent give`.
#[derive(Debug, Clone, Default)]
pub struct NewConsent {
    pub citizen: String,
    pub consumer: Option<String>,
    pub purpose: String,
    pub datasets: Vec<String>,
    pub evidence: Option<String>,
    /// RFC 3339.
    pub expires_at: Option<String>,
}

impl Client {
    /// Opens a file of the caller's organisation on a citizen.
    pub async fn register_file(&self, f: NewFile) -> CallResult {
        let phase = match f.phase.as_str() {
            "provisional" => proto::FilePhase::Provisional,
            "definitive" => proto::FilePhase::Definitive,
            other => {
                return Err(usage(format!(
                    "{other}: the phase is provisional or definitive"
                )));
            }
        };
        let r = self
            .persons()
            .register_file(proto::RegisterFileRequest {
                file: Some(proto::PersonFile {
                    citizen: f.citizen,
                    capacity: f.capacity,
                    phase: phase as i32,
                    begin_date: f.begin_date.unwrap_or_default(),
                    end_date: f.end_date.unwrap_or_default(),
                    consumer_reference: f.reference.unwrap_or_default(),
                    ..Default::default()
                }),
            })
            .await?
            .into_inner();
        Ok(with_request_id(
            r.file.as_ref().map(file_json).unwrap_or(Json::Null),
            r.request_id,
        ))
    }

    /// Closes a file of the caller's organisation.
    pub async fn close_file(
        &self,
        citizen: String,
        file_id: String,
        end_date: Option<String>,
    ) -> CallResult {
        let r = self
            .persons()
            .close_file(proto::CloseFileRequest {
                citizen,
                file_id,
                end_date: end_date.unwrap_or_default(),
            })
            .await?
            .into_inner();
        Ok(with_request_id(
            r.file.as_ref().map(file_json).unwrap_or(Json::Null),
            r.request_id,
        ))
    }

    /// The caller's organisation's files on a citizen.
    pub async fn list_files(&self, citizen: String) -> CallResult {
        let r = self
            .persons()
            .list_files(proto::ListFilesRequest { citizen })
            .await?
            .into_inner();
        Ok(Json::Array(r.files.iter().map(file_json).collect()))
    }

    /// Records a replaced national number (the register, or the operator).
    pub async fn replace_number(&self, old: String, new: String) -> CallResult {
        let r = self
            .persons()
            .replace_national_number(proto::ReplaceNationalNumberRequest {
                old_number: old,
                new_number: new,
                replaced_on: String::new(),
            })
            .await?
            .into_inner();
        Ok(json!({ "request_id": r.request_id }))
    }

    /// Takes back a replacement (the register, or the operator).
    pub async fn undo_replacement(&self, old: String, reason: String) -> CallResult {
        let r = self
            .persons()
            .undo_number_replacement(proto::UndoNumberReplacementRequest {
                old_number: old,
                reason,
            })
            .await?
            .into_inner();
        Ok(json!({ "new_number": r.new_number, "request_id": r.request_id }))
    }

    /// Records a consent: on a portal (citizen role) or at a counter.
    pub async fn give_consent(&self, c: NewConsent) -> CallResult {
        let expires_at = c.expires_at.as_deref().map(parse_time).transpose()?;
        let r = self
            .consents()
            .give_consent(proto::GiveConsentRequest {
                consent: Some(proto::Consent {
                    citizen: c.citizen,
                    consumer_kbo: c.consumer.unwrap_or_default(),
                    purpose: c.purpose,
                    datasets: c.datasets,
                    evidence: c.evidence.unwrap_or_default(),
                    expires_at,
                    ..Default::default()
                }),
            })
            .await?
            .into_inner();
        Ok(with_request_id(
            r.consent.as_ref().map(consent_json).unwrap_or(Json::Null),
            r.request_id,
        ))
    }

    /// Withdraws a consent.
    pub async fn withdraw_consent(&self, citizen: String, consent_id: String) -> CallResult {
        let r = self
            .consents()
            .withdraw_consent(proto::WithdrawConsentRequest {
                citizen,
                consent_id,
            })
            .await?
            .into_inner();
        Ok(with_request_id(
            r.consent.as_ref().map(consent_json).unwrap_or(Json::Null),
            r.request_id,
        ))
    }

    /// A citizen's consents, as the caller may see them.
    pub async fn list_consents(&self, citizen: String) -> CallResult {
        let r = self
            .consents()
            .list_consents(proto::ListConsentsRequest { citizen })
            .await?
            .into_inner();
        Ok(Json::Array(r.consents.iter().map(consent_json).collect()))
    }
}
