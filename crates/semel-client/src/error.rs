//! A refused or failed call ([`CallError`]), as the broker said it.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Value as Json, json};
use tonic_types::StatusExt;

/// A refused or failed call, with what the broker said.
#[derive(Debug, Clone)]
pub struct CallError {
    /// The gRPC code, e.g. `PermissionDenied`.
    pub code: String,
    pub message: String,
    /// The `ErrorInfo` reason, e.g. `FIELD_NOT_ALLOWED`.
    pub reason: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(r) = &self.reason {
            write!(f, " ({r})")?;
        }
        write!(f, ": {}", self.message)?;
        for (k, v) in &self.metadata {
            write!(f, "\n  {k}: {v}")?;
        }
        Ok(())
    }
}

impl std::error::Error for CallError {}

impl CallError {
    pub fn to_json(&self) -> Json {
        json!({"error": {"code": self.code, "reason": self.reason, "message": self.message, "metadata": self.metadata}})
    }
}

impl From<tonic::Status> for CallError {
    fn from(s: tonic::Status) -> Self {
        let details = s.get_error_details();
        let info = details.error_info();
        let mut message = s.message().to_owned();
        if s.code() == tonic::Code::Unavailable && info.is_none() && message.contains("transport") {
            message = format!("{message} (is the broker running at that address?)");
        }
        CallError {
            code: format!("{:?}", s.code()),
            message,
            reason: info.map(|i| i.reason.clone()),
            metadata: info
                .map(|i| i.metadata.clone().into_iter().collect())
                .unwrap_or_default(),
        }
    }
}

pub(crate) type CallResult = Result<Json, CallError>;

pub(crate) fn usage(message: String) -> CallError {
    CallError {
        code: "InvalidArgument".into(),
        message,
        reason: None,
        metadata: BTreeMap::new(),
    }
}
