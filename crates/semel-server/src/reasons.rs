//! Every reason code a client can receive in an error's `ErrorInfo`, with
//! its gRPC code and what the client should do: the one list.
//!
//! The integration guide's error table is generated from it (a test checks
//! that the guide holds [`markdown_table`]), `ApiError::new` refuses a
//! reason that is not listed (in debug builds, so every test catches it),
//! and a test checks that every code the audit log can record is listed.

/// One row of the table: codes that share a gRPC code and an answer.
#[derive(Debug)]
pub struct Reasons {
    pub grpc: &'static str,
    pub codes: &'static [&'static str],
    /// What a client (or its developer) should do.
    pub action: &'static str,
}

const fn row(grpc: &'static str, codes: &'static [&'static str], action: &'static str) -> Reasons {
    Reasons {
        grpc,
        codes,
        action,
    }
}

/// The table.
pub const REASONS: &[Reasons] = &[
    row(
        "INVALID_ARGUMENT",
        &["INVALID_CITIZEN"],
        "the number is malformed; the message says exactly how (length, format, check digits, month, day, counter)",
    ),
    row(
        "INVALID_ARGUMENT",
        &[
            "UNKNOWN_FIELD",
            "INVALID_ARGUMENT",
            "INVALID_DATE",
            "HISTORY_NOT_KEPT",
        ],
        "fix the named field (`BadRequest`)",
    ),
    row(
        "INVALID_ARGUMENT",
        &["UNKNOWN_PURPOSE"],
        "the purpose is not in the catalogue; `ListPurposes` (or `semel admin purpose list`) shows the codes and their legal basis",
    ),
    row(
        "INVALID_ARGUMENT",
        &["INVALID_ENTERPRISE_NUMBER"],
        "an enterprise number is malformed (10 digits, mod-97 check); fix the named field",
    ),
    row(
        "INVALID_ARGUMENT",
        &["INVALID_ENDPOINT"],
        "(`CreateDataset`, `AmendDataset`) the endpoint must be an `https://host:port` address, not on a loopback, link-local, private or unspecified address nor the broker's own unless the operator allow-listed it (`sources.allowed_endpoints`)",
    ),
    row(
        "NOT_FOUND",
        &["UNKNOWN_DATASET"],
        "check the name with `ListDatasets`",
    ),
    row(
        "NOT_FOUND",
        &["UNKNOWN_ORGANISATION", "UNKNOWN_AUTHORISATION"],
        "no organisation or authorisation with that enterprise number or reference; check it with `ListOrganisations` or `ListAuthorisations`",
    ),
    row(
        "NOT_FOUND",
        &["SUBJECT_NOT_FOUND"],
        "the source holds nothing about this citizen (a negative answer)",
    ),
    row(
        "NOT_FOUND",
        &["NOT_FOUND"],
        "what the call names does not exist (for your organisation); the message says what",
    ),
    row(
        "PERMISSION_DENIED",
        &["NO_AUTHORISATION"],
        "no authorisation for your organisation and this dataset",
    ),
    row(
        "PERMISSION_DENIED",
        &["PURPOSE_NOT_ALLOWED"],
        "your authorisations for this dataset are for other purposes",
    ),
    row(
        "PERMISSION_DENIED",
        &["FIELD_NOT_ALLOWED"],
        "ask only for the fields the authorisation allows (metadata `fields_not_allowed`, `authorisation_reference`)",
    ),
    row(
        "PERMISSION_DENIED",
        &[
            "AUTHORISATION_NOT_YET_VALID",
            "AUTHORISATION_EXPIRED",
            "AUTHORISATION_SUSPENDED",
            "AUTHORISATION_REVOKED",
        ],
        "see metadata `authorisation_reference`; contact the authorising body",
    ),
    row(
        "PERMISSION_DENIED",
        &["NO_ACTIVE_FILE"],
        "open a file on the citizen in one of the capacities in metadata `capacities_required` (empty: any), covering today and the reference date (`PersonsService.RegisterFile`)",
    ),
    row(
        "PERMISSION_DENIED",
        &["CONSENT_MISSING"],
        "the authorisation requires the citizen's consent; metadata `consent_id` and `consent_state` name a withdrawn or expired one",
    ),
    row(
        "INVALID_ARGUMENT",
        &["INVALID_CHECK"],
        "a check compares a field with a value of another type, orders text, or misses its operator, operand or list element",
    ),
    row(
        "PERMISSION_DENIED",
        &["CHECK_NOT_ALLOWED"],
        "ask only the questions your authorisation names (metadata `checks_not_allowed`; the message lists those allowed)",
    ),
    row(
        "RESOURCE_EXHAUSTED",
        &["CHECK_LIMIT_REACHED"],
        "you asked as many different questions about this citizen's field today as you may; the same questions may be asked again, new ones tomorrow",
    ),
    row(
        "INVALID_ARGUMENT",
        &["UNKNOWN_CAPACITY"],
        "(`RegisterFile`) use a capacity one of your authorisations requires",
    ),
    row(
        "INVALID_ARGUMENT",
        &["BACKDATE_TOO_FAR"],
        "(`RegisterFile`) a file may begin at most the configured number of days (92 by default) before today",
    ),
    row(
        "FAILED_PRECONDITION",
        &["CONSENT_WITHDRAWN_BY_CITIZEN"],
        "(`GiveConsent` at a counter) the citizen withdrew this consent; only the citizen can give it again, on a citizen portal",
    ),
    row(
        "PERMISSION_DENIED",
        &["REGISTER_DATASET_RESERVED"],
        "(`CreateDataset`) the register of persons is published by the operator only",
    ),
    row(
        "PERMISSION_DENIED",
        &["NOT_DATASET_SOURCE"],
        "(`PublishMutations`) only a dataset's source publishes its changes; check the dataset name, or publish through the organisation that is its source",
    ),
    row(
        "OUT_OF_RANGE",
        &["NOT_DELIVERED"],
        "(`AcknowledgeMutations`) acknowledge only positions you received; the message says up to where changes were delivered",
    ),
    row(
        "NOT_FOUND",
        &["CITIZEN_UNKNOWN"],
        "(`RegisterFile`) the register does not know the number",
    ),
    row(
        "FAILED_PRECONDITION",
        &["REGISTER_UNAVAILABLE"],
        "(`RegisterFile`, `ReplaceNationalNumber`) the broker publishes no register of persons (`sources.register_dataset`, by default `national_register.identity`), so no number can be checked; the operator must register that dataset. Retrying will not help until then",
    ),
    row(
        "NOT_FOUND",
        &["FILE_NOT_FOUND", "CONSENT_NOT_FOUND"],
        "no file or consent with that id for that citizen (and your organisation)",
    ),
    row(
        "INVALID_ARGUMENT",
        &["EVIDENCE_REQUIRED"],
        "a consent given at a counter needs the reference of its evidence",
    ),
    row(
        "FAILED_PRECONDITION",
        &["REPLACEMENT_CONFLICT"],
        "the old number was already replaced by another, or the replacement would make a loop",
    ),
    row(
        "FAILED_PRECONDITION",
        &["NOT_A_CONSUMER", "NOT_A_SOURCE"],
        "(`CreateAuthorisation`, `CreateDataset`) the organisation named is not registered in that role; register the role first",
    ),
    row(
        "ALREADY_EXISTS",
        &["EVENT_ID_REUSED"],
        "(`PublishMutations`) the event id was published before for a different change: give each change its own id (an identical change published again is a duplicate, not an error)",
    ),
    row(
        "ALREADY_EXISTS",
        &["ALREADY_EXISTS"],
        "(registry) something with that name or reference exists; choose another or read it",
    ),
    row(
        "FAILED_PRECONDITION",
        &["DATASET_WITHDRAWN"],
        "the dataset was withdrawn by its source: it serves no lookup or change any more, and cannot be amended; the catalogue marks it",
    ),
    row(
        "FAILED_PRECONDITION",
        &["AUTHORISATION_ENDED"],
        "(`AmendAuthorisation`, `SuspendAuthorisation`, `ReinstateAuthorisation`) the authorisation was revoked for good; its versions stay readable, a new deliberation is a new authorisation under its own reference",
    ),
    row(
        "INVALID_ARGUMENT",
        &["IMMUTABLE_FIELD"],
        "(`AmendAuthorisation`, `AmendDataset`) an authorisation's consumer and dataset, and a dataset's source, never change: another is a new one, recorded with `CreateAuthorisation` or `CreateDataset`",
    ),
    row(
        "PERMISSION_DENIED",
        &["NOT_SUPERVISORY_BODY"],
        "(`DecideAuthorisationApplication`) only a person with the auditor role of a supervisory body (an organisation registered with the auditor role) decides on applications",
    ),
    row(
        "NOT_FOUND",
        &["UNKNOWN_APPLICATION"],
        "(`DecideAuthorisationApplication`) no application has that id; `ListAuthorisationApplications` shows them",
    ),
    row(
        "FAILED_PRECONDITION",
        &["APPLICATION_DECIDED"],
        "(`DecideAuthorisationApplication`, `DecideMembershipApplication`) the application was already approved or rejected (by another administrator, perhaps through another broker: the refusal is in the audit log with this reason); a new need is a new application",
    ),
    row(
        "ABORTED",
        &["APPLY_INTERRUPTED"],
        "(`ApplyRegistry`) the apply was settled as not applied before its commit: the broker applying it was found stopped (or cut off from the database) by another broker, which recorded so in the audit log; nothing was applied: apply the same files again",
    ),
    row(
        "INVALID_ARGUMENT",
        &["REGISTRY_INVALID"],
        "(`ApplyRegistry`) the registry described breaks rules; each `BadRequest` violation names the item (`authorisations[3].fields`) and the rule (`UNKNOWN_FIELD: …`), and `semel registry apply` shows them by file and line; nothing was applied",
    ),
    row(
        "FAILED_PRECONDITION",
        &["FIELD_IN_USE", "ROLE_IN_USE"],
        "(`AmendDataset`, `AmendOrganisation`) authorisations still name the field, or the organisation still uses the role (its authorisations, its datasets); the message names them: amend or revoke those first",
    ),
    row(
        "ABORTED",
        &["CONFLICT"],
        "(registry) a concurrent change came first, perhaps through another broker (the record changed since it was read, an application was decided or applied for at once); nothing was written: read the current record or version and try again if the change still applies",
    ),
    row(
        "FAILED_PRECONDITION",
        &["NO_CHECKPOINT"],
        "(proofs) no checkpoint is signed yet; retry after the configured checkpoint interval",
    ),
    row(
        "OUT_OF_RANGE",
        &["OUT_OF_RANGE"],
        "(proofs) the entry or tree size lies beyond the log; ask for one within `GetAuditHead`",
    ),
    row(
        "OUT_OF_RANGE",
        &["REQUEST_TOO_LARGE"],
        "the request is larger than the broker accepts (64 KiB; 1 MiB for the registry; over HTTP/JSON 256 KiB of JSON, 4 MiB and 1000 items for a batch, each item 64 KiB as protobuf, HTTP 413); send a smaller one",
    ),
    row(
        "DEADLINE_EXCEEDED",
        &["CALL_TIMEOUT"],
        "(gRPC port) a unary call took longer than the broker allows (150 s, or the operator's `[grpc] request_timeout_ms`), or a stream's first request did not arrive in that time; a lookup may be retried (it changes nothing), a change's outcome is unknown (read before retrying it); send a stream's request at once",
    ),
    row(
        "DEADLINE_EXCEEDED",
        &["REQUEST_TIMEOUT"],
        "(HTTP/JSON, HTTP 408) the request body did not arrive in time (30 s, or the operator's `[http] body_timeout_ms`), and the connection is closed; send the body at once",
    ),
    row(
        "INVALID_ARGUMENT",
        &["MALFORMED_REQUEST"],
        "the request body is not a valid protobuf message of the RPC: regenerate the client from the published contract",
    ),
    row(
        "INVALID_ARGUMENT",
        &["MALFORMED_JSON"],
        "(HTTP/JSON) the body, a path or a query parameter is not the operation's JSON: not JSON, an unknown field, a wrong type; the message names it (see /openapi.json)",
    ),
    row(
        "INVALID_ARGUMENT",
        &["UNSUPPORTED_MEDIA_TYPE"],
        "(HTTP/JSON, HTTP 415) send the body as `Content-Type: application/json`",
    ),
    row(
        "NOT_FOUND",
        &["NO_SUCH_ROUTE"],
        "(HTTP/JSON) no operation is served on this path; `/openapi.json` lists them",
    ),
    row(
        "UNIMPLEMENTED",
        &["METHOD_NOT_ALLOWED"],
        "(HTTP/JSON, HTTP 405) the path takes another HTTP method (the `Allow` header names it)",
    ),
    row(
        "PERMISSION_DENIED",
        &["ROLE_NOT_PERMITTED"],
        "the person's token lacks a role this call needs (metadata `required_roles`)",
    ),
    row(
        "PERMISSION_DENIED",
        &["ORGANISATION_ROLE_MISSING"],
        "the token has the role, your organisation is not registered for it; contact the operator",
    ),
    row(
        "PERMISSION_DENIED",
        &["ORGANISATION_SUSPENDED"],
        "your organisation is suspended; contact the operator",
    ),
    row(
        "PERMISSION_DENIED",
        &["OTHER_ORGANISATION", "CITIZEN_MISMATCH"],
        "the call concerns another organisation or citizen than yours",
    ),
    row(
        "UNAUTHENTICATED",
        &[
            "CLIENT_CERTIFICATE_REQUIRED",
            "CERTIFICATE_WITHOUT_ORGANISATION",
            "ORGANISATION_NOT_REGISTERED",
            "CERTIFICATE_REVOKED",
            "CERTIFICATE_EXPIRED",
        ],
        "present your organisation's (current) certificate, on a new connection; not registered yet: apply for membership (`ApplyForMembership`, `semel membership apply`)",
    ),
    row(
        "UNAUTHENTICATED",
        &["TOKEN_CERTIFICATE_MISMATCH"],
        "the token is bound (`cnf.x5t#S256`) to another certificate than the connection's",
    ),
    row(
        "UNAUTHENTICATED",
        &["TOKEN_MISSING", "TOKEN_MALFORMED"],
        "send the person's JWT as `authorization: Bearer …`, with `sub`, `org`, `iss`, `aud` and `exp`",
    ),
    row(
        "UNAUTHENTICATED",
        &["TOKEN_EXPIRED", "TOKEN_NOT_YET_VALID"],
        "get a fresh token; check clocks",
    ),
    row(
        "UNAUTHENTICATED",
        &[
            "TOKEN_AUDIENCE",
            "TOKEN_UNTRUSTED_ISSUER",
            "TOKEN_SIGNATURE",
        ],
        "the token is not for this broker, its issuer is not registered or not trusted for it (its organisation, a role it claims, its authentication level `acr`, its lifetime: the message says which), or its signature does not verify with the issuer's published keys",
    ),
    row(
        "UNAUTHENTICATED",
        &["TOKEN_ORGANISATION_MISMATCH"],
        "the token's `org` must be your certificate's organisation",
    ),
    row(
        "PERMISSION_DENIED",
        &["SOURCE_REFUSED"],
        "the source refused the request under its own rules (its message is quoted); retrying will not help: ask the operator or the source",
    ),
    row(
        "FAILED_PRECONDITION",
        &["SOURCE_REJECTED_REQUEST"],
        "the source found the request invalid (its message is quoted); retrying the same request will not help",
    ),
    row(
        "UNAVAILABLE",
        &["SOURCE_UNAVAILABLE", "SOURCE_ERROR"],
        "the source cannot answer now; retrying later is safe (lookups change nothing)",
    ),
    row(
        "DEADLINE_EXCEEDED",
        &["SOURCE_TIMEOUT"],
        "the source was too slow; retrying later is safe",
    ),
    row(
        "UNAVAILABLE",
        &["AUDIT_UNAVAILABLE", "STORAGE_UNAVAILABLE"],
        "the broker cannot record the call or read its storage, so it answers none; retry later",
    ),
    row(
        "UNAVAILABLE",
        &["REGISTRY_STALE"],
        "(broker on PostgreSQL) the broker could not confirm within its bound (`store.max_staleness_ms`) that its copy of the registry is current, so it decides nothing; retry later or through another broker",
    ),
    row(
        "RESOURCE_EXHAUSTED",
        &["SUBSCRIPTIONS_EXCEEDED"],
        "(`Subscribe`) your organisation holds as many subscriptions on this broker as it may; close one (one is enough: each receives the same changes), or read with `PullMutations`. (`PullMutations`) your organisation has as many pulls in progress on this broker as it may (4); wait for their answers, then pull again",
    ),
    row(
        "RESOURCE_EXHAUSTED",
        &["STREAMS_EXCEEDED"],
        "(gRPC port) the connection holds as many calls open as it may: `grpc.health.v1.Health/Watch` streams, or calls without a client certificate (also counted over all such connections); close one, or call with your certificate",
    ),
    row(
        "UNAVAILABLE",
        &["SHUTTING_DOWN"],
        "(`Subscribe`) the broker is shutting down; subscribe again: delivery resumes after your last acknowledgement",
    ),
    row(
        "UNIMPLEMENTED",
        &["NOT_SUPPORTED_BY_STORE"],
        "the broker's store does not do this (yet): archiving on PostgreSQL; the message says what instead",
    ),
    row(
        "RESOURCE_EXHAUSTED",
        &["RATE_LIMITED"],
        "your organisation is over its rate of lookups, or of other calls, or has as many calls in progress as it may (or, for applications for membership and audit summaries, their pace); retry after the `RetryInfo` delay",
    ),
    row(
        "RESOURCE_EXHAUSTED",
        &["AUDIT_CALLS_EXCEEDED"],
        "(`ListAuditEntries`, `SummariseAuditEntries`, an auditor's `ListCitizenAccesses`) your organisation has as many audit calls in flight as it may (2); wait for one to end, then retry",
    ),
    row(
        "RESOURCE_EXHAUSTED",
        &["APPLICATIONS_EXCEEDED"],
        "(`ApplyForAuthorisation`) your organisation has as many applications pending as it may (50); wait for the supervisory body's decisions",
    ),
    row(
        "RESOURCE_EXHAUSTED",
        &["PUBLICATION_RATE_LIMITED"],
        "(`PublishMutations`) your organisation is over its rate of published changes; nothing of the request was stored: publish it again, whole, after the `RetryInfo` delay",
    ),
    row(
        "RESOURCE_EXHAUSTED",
        &["QUOTA_EXCEEDED"],
        "your organisation used up its lookups for today; the `RetryInfo` delay runs to midnight in Brussels",
    ),
    row(
        "RESOURCE_EXHAUSTED",
        &["SOURCE_BUSY"],
        "the source has as many lookups in flight as it may take, or said it is overloaded; retry shortly",
    ),
    row(
        "UNAVAILABLE",
        &["SOURCE_CIRCUIT_OPEN"],
        "the source failed repeatedly; lookups to it fail fast until the `RetryInfo` delay passes",
    ),
    row(
        "UNAVAILABLE",
        &["SOURCE_NOT_AUTHENTIC"],
        "the server at the dataset's endpoint presented a certificate that does not name the dataset's owner: nothing was sent to it; the operator must correct the endpoint or the source its certificate",
    ),
    row(
        "INTERNAL",
        &["INTERNAL"],
        "a fault in the broker; report it to the operator with the request id",
    ),
];

/// Whether `code` is in the table.
pub fn is_listed(code: &str) -> bool {
    REASONS.iter().any(|r| r.codes.contains(&code))
}

/// The table as the integration guide shows it.
pub fn markdown_table() -> String {
    let mut out = String::from("| gRPC code | reason | what to do |\n|---|---|---|\n");
    for r in REASONS {
        let codes: Vec<String> = r.codes.iter().map(|c| format!("`{c}`")).collect();
        out.push_str(&format!(
            "| `{}` | {} | {} |\n",
            r.grpc,
            codes.join(", "),
            r.action
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_integration_guide_shows_the_table() {
        let guide = include_str!("../../../docs/integration-guide.md");
        let table = markdown_table();
        assert!(
            guide.contains(&table),
            "docs/integration-guide.md is out of date; its error table must read:\n{table}"
        );
    }

    #[test]
    fn every_code_the_log_records_is_listed_once() {
        for r in semel_core::RefusalReason::ALL {
            assert!(is_listed(r.code()), "{} is not listed", r.code());
        }
        for code in semel_core::ReasonCode::all_codes() {
            assert!(is_listed(code), "{code} is not listed");
        }
        let mut all: Vec<&str> = REASONS
            .iter()
            .flat_map(|r| r.codes.iter().copied())
            .collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "a code is listed twice");
    }

    /// Every reason literal in the crate's code is listed: a scan of the
    /// sources (before their test modules) for upper-case string literals
    /// passed where a reason goes.
    #[test]
    fn every_reason_in_the_code_is_listed() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut missing = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("src") {
            let path = entry.expect("entry").path();
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read");
            let code = text.split("#[cfg(test)]").next().unwrap_or("");
            for call in [
                "ApiError::new(",
                "ApiError::retryable(",
                "ApiError::invalid(",
                "ApiError::denied(",
                "ApiError::not_found(",
                "ApiError::unauthenticated(",
                "precondition(",
                "until_midnight(",
            ] {
                for (i, _) in code.match_indices(call) {
                    let args = &code[i + call.len()..];
                    let args = &args[..args.len().min(300)];
                    // The reason is the first all-caps literal among the
                    // arguments (after the code, or the field for `invalid`).
                    // Only literals closed within the window count.
                    let parts: Vec<&str> = args.split('"').collect();
                    let closed = &parts[..parts.len().saturating_sub(1)];
                    let reason = closed.iter().skip(1).step_by(2).copied().find(|s| {
                        s.len() > 2
                            && s.chars()
                                .all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit())
                    });
                    if let Some(r) = reason
                        && !is_listed(r)
                    {
                        missing.push(format!("{}: {r}", path.display()));
                    }
                }
            }
        }
        assert!(
            missing.is_empty(),
            "not in reasons::REASONS:\n{}",
            missing.join("\n")
        );
    }
}
