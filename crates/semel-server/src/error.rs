//! The API's errors, and the one place they become a `tonic::Status`.
//!
//! Every error carries a gRPC code, a stable reason code (sent as a
//! `google.rpc.ErrorInfo` in domain [`DOMAIN`]), a message a person can act
//! on, and where useful the request field at fault (`google.rpc.BadRequest`)
//! and metadata such as the request id. Messages never contain a national
//! number.

use std::collections::HashMap;

use semel_core::redact_national_numbers;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo` domain of every Semel error.
pub const DOMAIN: &str = "semel.brussels";

/// An API error, before it becomes a `Status`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: Code,
    pub reason: &'static str,
    pub message: String,
    /// The request field at fault, for `BadRequest`.
    pub field: Option<&'static str>,
    pub metadata: Vec<(&'static str, String)>,
    /// When retrying helps: how long to wait first (`google.rpc.RetryInfo`).
    pub retry_after: Option<std::time::Duration>,
    /// Every field at fault, with what is wrong with it, when a request
    /// has several (`BadRequest` field violations, e.g.
    /// `authorisations[3].fields`).
    pub violations: Box<[(String, String)]>,
}

impl ApiError {
    pub fn new(code: Code, reason: &'static str, message: impl Into<String>) -> Self {
        debug_assert!(
            crate::reasons::is_listed(reason),
            "reason {reason} is not in reasons::REASONS (the documented list)"
        );
        ApiError {
            code,
            reason,
            message: message.into(),
            field: None,
            metadata: Vec::new(),
            retry_after: None,
            violations: Box::default(),
        }
    }

    pub fn invalid(field: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            field: Some(field),
            ..Self::new(Code::InvalidArgument, reason, message)
        }
    }

    pub fn unauthenticated(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(Code::Unauthenticated, reason, message)
    }

    pub fn denied(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(Code::PermissionDenied, reason, message)
    }

    pub fn not_found(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, reason, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::Internal, "INTERNAL", message)
    }

    /// An error that a later retry may not meet: the source or the broker's
    /// storage is unavailable for now. Lookups change nothing, so retrying
    /// is always safe.
    pub fn retryable(code: Code, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            retry_after: Some(std::time::Duration::from_secs(1)),
            ..Self::new(code, reason, message)
        }
    }

    pub fn with(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.metadata.push((key, value.into()));
        self
    }

    /// The `Status` a client receives.
    ///
    /// Messages and metadata may repeat what the caller sent (a dataset or
    /// field name); anything shaped like a national number is masked here,
    /// whatever the caller put in it.
    pub fn into_status(self) -> Status {
        let metadata: HashMap<String, String> = self.masked_metadata();
        let message = redact_national_numbers(&self.message).into_owned();
        let mut details = ErrorDetails::with_error_info(self.reason, DOMAIN, metadata);
        if let Some(field) = self.field {
            details.add_bad_request_violation(field, message.clone());
        }
        for (field, what) in self.violations.into_vec() {
            details.add_bad_request_violation(field, redact_national_numbers(&what).into_owned());
        }
        if let Some(delay) = self.retry_after {
            details.set_retry_info(Some(delay));
        }
        Status::with_error_details(self.code, message, details)
    }
}

impl ApiError {
    /// The metadata a client receives: anything shaped like a national
    /// number masked, whatever the caller put in it.
    fn masked_metadata<C: FromIterator<(String, String)>>(&self) -> C {
        self.metadata
            .iter()
            .map(|(k, v)| {
                // The request id is the broker's own UUID: masking a run of
                // its digits that happens to pass the national-number check
                // would only corrupt it.
                let v = if *k == "request_id" {
                    v.clone()
                } else {
                    redact_national_numbers(v).into_owned()
                };
                ((*k).to_owned(), v)
            })
            .collect()
    }

    /// The error as one item of a LookupBatch stream, masked as
    /// [`ApiError::into_status`] masks.
    pub fn to_item_error(&self) -> crate::proto::LookupError {
        crate::proto::LookupError {
            code: self.code as i32,
            message: redact_national_numbers(&self.message).into_owned(),
            reason: self.reason.to_owned(),
            metadata: self.masked_metadata(),
        }
    }
}

impl ApiError {
    /// The reason code its audit entry records: the stable code when it is
    /// one, else the kind of error.
    pub fn reason_code(&self) -> Option<semel_core::ReasonCode> {
        use semel_core::ReasonCode;
        ReasonCode::parse(self.reason).or(match self.code {
            Code::InvalidArgument => Some(ReasonCode::InvalidArgument),
            Code::NotFound => Some(ReasonCode::NotFound),
            _ => None,
        })
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        e.into_status()
    }
}

impl From<semel_storage::StorageError> for ApiError {
    fn from(e: semel_storage::StorageError) -> Self {
        use semel_storage::StorageError as E;
        // Storage errors are logged where they are handled (here), since
        // the client only gets a generic message.
        match e {
            E::Conflict(m) => ApiError::new(Code::Aborted, "CONFLICT", m),
            E::OutOfRange(m) => ApiError::new(Code::OutOfRange, "OUT_OF_RANGE", m),
            E::Unsupported(m) => ApiError::new(Code::Unimplemented, "NOT_SUPPORTED_BY_STORE", m),
            e => {
                // A damaged record's decoding error may quote its content.
                let error = redact_national_numbers(&e.to_string()).into_owned();
                tracing::error!(%error, "storage failure");
                ApiError::retryable(
                    Code::Unavailable,
                    "STORAGE_UNAVAILABLE",
                    "the broker's storage failed; try again later",
                )
            }
        }
    }
}

impl From<semel_store::StoreError> for ApiError {
    fn from(e: semel_store::StoreError) -> Self {
        semel_storage::StorageError::from(e).into()
    }
}

#[cfg(test)]
mod storage_failure_tests {
    use super::*;

    /// A call refused because storage failed is recorded with the reason
    /// its client gets, not with none.
    #[test]
    fn a_storage_failure_is_recorded_with_the_reason_the_client_gets() {
        for e in [
            semel_storage::StorageError::Unavailable("connection refused".into()),
            semel_storage::StorageError::Corrupt("a damaged record".into()),
        ] {
            let api = ApiError::from(e);
            assert_eq!(api.reason, "STORAGE_UNAVAILABLE");
            assert_eq!(
                api.reason_code().map(semel_core::ReasonCode::as_str),
                Some(api.reason)
            );
        }
    }
}

#[cfg(test)]
mod request_id_tests {
    use super::*;

    #[test]
    fn a_request_id_is_never_masked_but_other_metadata_is() {
        // Its last digits pass the national-number check by chance.
        let id = "01a20501-fb5d-758d-82a7-07960109825d";
        let status = ApiError::denied("NO_AUTHORISATION", "no")
            .with("request_id", id)
            .with("citizen_hint", "93051822361")
            .into_status();
        let details = tonic_types::StatusExt::get_error_details(&status);
        let info = details.error_info().expect("info");
        assert_eq!(
            info.metadata.get("request_id").map(String::as_str),
            Some(id)
        );
        assert_ne!(
            info.metadata.get("citizen_hint").map(String::as_str),
            Some("93051822361")
        );
    }

    #[test]
    fn batch_item_errors_are_masked_like_statuses() {
        let item = ApiError::denied("NO_AUTHORISATION", "about 93051822361")
            .with("request_id", "01a20501-fb5d-758d-82a7-07960109825d")
            .with("field", "93.05.18-223.61")
            .to_item_error();
        assert!(!item.message.contains("93051822361"));
        assert!(
            !item.metadata["field"].contains("223"),
            "{:?}",
            item.metadata
        );
        assert_eq!(
            item.metadata["request_id"],
            "01a20501-fb5d-758d-82a7-07960109825d"
        );
    }
}
