//! A client of the broker for the command line: it speaks gRPC here and
//! hands the binary plain JSON values and [`CallError`]s, so the binary
//! never sees tonic or prost.
//!
//! It is built on the generated code (`semel-proto`), not on the server, so
//! it depends on no storage engine (`.ci/layering` holds that).

pub mod registry_files;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use semel_proto::{self as proto, value::Kind};
use serde_json::{Value as Json, json};
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_types::StatusExt;

/// Where the broker is and which files identify the caller.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// e.g. `https://127.0.0.1:50051`
    pub broker: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The person's token (JWT), sent as `authorization: Bearer ...`.
    pub token: Option<String>,
}

/// Adds the person's token to every call.
#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::AsciiMetadataValue>);

impl Bearer {
    pub fn new(token: Option<&str>) -> anyhow::Result<Bearer> {
        token
            .map(|t| {
                format!("Bearer {}", t.trim())
                    .parse()
                    .context("the token is not valid metadata (stray characters?)")
            })
            .transpose()
            .map(Bearer)
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A channel to the broker that carries a person's token.
pub type AuthChannel = tonic::service::interceptor::InterceptedService<Channel, Bearer>;

/// Wraps a channel so every call carries `token`.
pub fn with_token(channel: Channel, token: Option<&str>) -> anyhow::Result<AuthChannel> {
    Ok(tonic::service::interceptor::InterceptedService::new(
        channel,
        Bearer::new(token)?,
    ))
}

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

/// Asks a broker's `grpc.health.v1` for `service` ("" is the whole broker)
/// over TLS, without a client certificate, as probes do. `server_name` is
/// the name the certificate must carry when it is not the host in `broker`
/// (a probe connects to 127.0.0.1, a production certificate names the
/// broker's DNS name only). Returns the status name, e.g. `SERVING`.
pub async fn check_health(
    broker: &str,
    ca: &std::path::Path,
    server_name: Option<&str>,
    service: &str,
) -> anyhow::Result<String> {
    let ca = std::fs::read(ca).with_context(|| format!("read {}", ca.display()))?;
    let mut tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca));
    if let Some(name) = server_name {
        tls = tls.domain_name(name);
    }
    let channel = Endpoint::from_shared(broker.to_owned())
        .with_context(|| format!("broker address {broker}"))?
        .tls_config(tls)
        .context("configure TLS")?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(3))
        .connect()
        .await
        .with_context(|| format!("connect to the broker at {broker}"))?;
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = client
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", CallError::from(s)))?
        .into_inner()
        .status();
    Ok(status.as_str_name().to_owned())
}

/// A connected client.
#[derive(Clone)]
pub struct Client {
    channel: AuthChannel,
}

/// What `semel lookup` asks.
#[derive(Debug, Clone, Default)]
pub struct LookupArgs {
    pub citizen: String,
    pub dataset: String,
    pub fields: Vec<String>,
    pub purpose: String,
    pub reference_date: Option<String>,
    pub consumer_reference: Option<String>,
    /// Yes/no checks, see [`parse_check`].
    pub checks: Vec<proto::Check>,
}

/// Parses a check written `field OP value`, or for a list of records
/// `field[key_field=key].value_field OP value`, where OP is one of
/// `=`, `!=`, `<`, `<=`, `>`, `>=`; e.g. `nis_code=21004` or
/// `income_years[income_year=2024].taxable_income_cents<2000000`. A value
/// that reads as a whole number is an int, `YYYY-MM-DD` a date,
/// `true`/`false` a bool, anything else a string.
/// Parses a named question of an authorisation, `NAME: check`, where the
/// check is written as for `--check` and `*` stands for what the consumer
/// gives (an element's key, or the value of an equality):
/// `INCOME_BELOW_CEILING: income_years[income_year=*].taxable_income_cents<2500000`.
pub fn parse_question(text: &str) -> anyhow::Result<proto::CheckRule> {
    let (name, expression) = text
        .split_once(':')
        .ok_or_else(|| anyhow::anyhow!("question {text:?}: write NAME: check"))?;
    let check = parse_check(expression.trim())?;
    let given = |v: &Option<proto::Value>| matches!(v.as_ref().and_then(|v| v.kind.as_ref()), Some(proto::value::Kind::StringValue(s)) if s == "*");
    let (key_field, value_field) = check
        .element
        .as_ref()
        .map_or((String::new(), String::new()), |e| {
            (e.key_field.clone(), e.value_field.clone())
        });
    Ok(proto::CheckRule {
        name: name.trim().to_owned(),
        field: check.field,
        element_key_field: key_field,
        element_value_field: value_field,
        operator: check.operator,
        operand: if given(&check.operand) {
            None
        } else {
            check.operand
        },
    })
}

/// A named question in the form `parse_question` reads.
pub(crate) fn question_text(r: &proto::CheckRule) -> String {
    let value = |v: &Option<proto::Value>| match v.as_ref().and_then(|v| v.kind.as_ref()) {
        None => "*".to_owned(),
        // Text that would read back as something else is quoted.
        Some(proto::value::Kind::StringValue(s))
            if s == "*"
                || !matches!(
                    check_value(s).kind,
                    Some(proto::value::Kind::StringValue(_))
                ) =>
        {
            format!("\"{s}\"")
        }
        Some(proto::value::Kind::StringValue(s)) => s.clone(),
        Some(proto::value::Kind::IntValue(i)) => i.to_string(),
        Some(proto::value::Kind::BoolValue(b)) => b.to_string(),
        Some(proto::value::Kind::DateValue(d)) => d.clone(),
        Some(_) => "?".to_owned(),
    };
    let op = match proto::CheckOperator::try_from(r.operator) {
        Ok(proto::CheckOperator::Equals) => "=",
        Ok(proto::CheckOperator::NotEquals) => "!=",
        Ok(proto::CheckOperator::LessThan) => "<",
        Ok(proto::CheckOperator::LessOrEqual) => "<=",
        Ok(proto::CheckOperator::GreaterThan) => ">",
        Ok(proto::CheckOperator::GreaterOrEqual) => ">=",
        _ => "?",
    };
    let mut lhs = r.field.clone();
    if !r.element_key_field.is_empty() {
        lhs = format!("{lhs}[{}=*].{}", r.element_key_field, r.element_value_field);
    }
    format!("{}: {lhs}{op}{}", r.name, value(&r.operand))
}

pub fn parse_check(text: &str) -> anyhow::Result<proto::Check> {
    use proto::CheckOperator::*;
    let (at, op, len) = ["!=", "<=", ">=", "=", "<", ">"]
        .iter()
        .filter_map(|op| {
            // The first operator outside the element's brackets.
            let outside = text.find(']').map_or(0, |i| i + 1);
            text[outside..]
                .find(op)
                .map(|i| (outside + i, *op, op.len()))
        })
        .min_by_key(|(i, _, len)| (*i, std::cmp::Reverse(*len)))
        .ok_or_else(|| anyhow::anyhow!("check {text:?}: no operator (=, !=, <, <=, >, >=)"))?;
    let operator = match op {
        "=" => Equals,
        "!=" => NotEquals,
        "<" => LessThan,
        "<=" => LessOrEqual,
        ">" => GreaterThan,
        _ => GreaterOrEqual,
    };
    let (lhs, value) = (&text[..at], &text[at + len..]);
    let (field, element) = match lhs.split_once('[') {
        None => (lhs.to_owned(), None),
        Some((field, rest)) => {
            let (selector, value_field) = rest.split_once("].").ok_or_else(|| {
                anyhow::anyhow!("check {text:?}: write field[key_field=key].value_field")
            })?;
            let (key_field, key) = selector.split_once('=').ok_or_else(|| {
                anyhow::anyhow!("check {text:?}: write field[key_field=key].value_field")
            })?;
            (
                field.to_owned(),
                Some(proto::ElementSelector {
                    key_field: key_field.to_owned(),
                    key: Some(check_value(key)),
                    value_field: value_field.to_owned(),
                }),
            )
        }
    };
    Ok(proto::Check {
        field,
        operator: operator as i32,
        operand: Some(check_value(value)),
        element,
    })
}

/// A date as the broker reads one (`semel_server::convert::DATE_FORMAT`).
const DATE_FORMAT: &[BorrowedFormatItem<'static>] = format_description!("[year]-[month]-[day]");

fn check_value(text: &str) -> proto::Value {
    use proto::value::Kind;
    // "21015" in quotes is text, not a number.
    let quoted = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .filter(|_| text.len() >= 2);
    let kind = if let Some(t) = quoted {
        Kind::StringValue(t.to_owned())
    } else if let Ok(i) = text.parse::<i64>() {
        Kind::IntValue(i)
    } else if let Ok(b) = text.parse::<bool>() {
        Kind::BoolValue(b)
    } else if time::Date::parse(text, DATE_FORMAT).is_ok() {
        Kind::DateValue(text.to_owned())
    } else {
        Kind::StringValue(text.to_owned())
    };
    proto::Value { kind: Some(kind) }
}

/// Filters of `semel audit list`.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub citizen: Option<String>,
    pub consumer: Option<String>,
    /// The person (token `sub`).
    pub end_user: Option<String>,
    pub authorisation: Option<String>,
    pub dataset: Option<String>,
    /// "allowed" or "refused".
    pub decision: Option<String>,
    /// A reason code, e.g. NO_ACTIVE_FILE.
    pub reason: Option<String>,
    /// RFC 3339 times.
    pub since: Option<String>,
    pub until: Option<String>,
    pub limit: i32,
    pub page_token: Option<String>,
}

/// What an amendment changes; `None` keeps the current value. Lists given
/// replace the current ones (an empty list empties it).
#[derive(Debug, Default)]
pub struct AuthorisationPatch {
    pub fields: Option<Vec<String>>,
    pub check_fields: Option<Vec<String>>,
    /// Named questions, `NAME: check` (see [`parse_question`]).
    pub questions: Option<Vec<String>>,
    pub capacities: Option<Vec<String>>,
    pub consent_required: Option<bool>,
    pub receives_mutations: Option<bool>,
    pub purpose: Option<String>,
    pub legal_basis: Option<String>,
    pub issuing_body: Option<String>,
    pub valid_from: Option<String>,
    /// Empty: open-ended.
    pub valid_until: Option<String>,
    /// Empty: not confidential.
    pub confidential_until: Option<String>,
}

/// A new authorisation for `semel admin authorisation create`.
#[derive(Debug, Clone, Default)]
pub struct NewAuthorisation {
    pub reference: String,
    pub consumer: String,
    pub dataset: String,
    pub fields: Vec<String>,
    /// Fields that may only be tested for equality.
    pub check_fields: Vec<String>,
    /// Named questions, `NAME: check` (see [`parse_question`]).
    pub questions: Vec<String>,
    /// Capacities it accepts (empty: any).
    pub capacities: Vec<String>,
    pub consent_required: bool,
    /// Whether the consumer is told of the dataset's changes.
    pub receives_mutations: bool,
    pub purpose: String,
    pub legal_basis: String,
    pub issuing_body: String,
    pub valid_from: String,
    pub valid_until: Option<String>,
    /// Hidden from the citizen's view until this day (investigations).
    pub confidential_until: Option<String>,
}

/// A change for `semel source publish`.
#[derive(Debug, Clone, Default)]
pub struct NewMutation {
    /// Your own id of the event; publishing it again stores nothing new.
    pub event_id: String,
    pub dataset: String,
    pub citizen: String,
    /// `created`, `changed` or `ended`.
    pub kind: String,
    /// YYYY-MM-DD
    pub effective_date: String,
    /// `name=value`, typed by the dataset's definition of the field.
    pub fields: Vec<String>,
}

/// A subscription to the caller's changes (`semel subscribe`).
pub struct Subscription {
    stream: tonic::Streaming<proto::SubscribeResponse>,
}

impl Subscription {
    /// The next change (or notice of changes lost), as JSON; `None` when
    /// the broker ended the stream.
    pub async fn next(&mut self) -> Result<Option<Json>, CallError> {
        Ok(self.stream.message().await?.map(|r| match r.item {
            Some(proto::subscribe_response::Item::Event(e)) => mutation_event_json(&e),
            Some(proto::subscribe_response::Item::Lost(l)) => lost_json(&l),
            None => Json::Null,
        }))
    }
}

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

/// A new dataset for `semel admin dataset create`; each field is
/// `name:type:description`.
#[derive(Debug, Clone, Default)]
pub struct NewDataset {
    pub name: String,
    pub source: String,
    pub description: String,
    pub endpoint: String,
    pub fields: Vec<String>,
    pub keeps_history: bool,
}

/// What `semel admin dataset amend` changes; `None` keeps the value.
#[derive(Debug, Default)]
pub struct DatasetPatch {
    pub description: Option<String>,
    pub endpoint: Option<String>,
    pub keeps_history: Option<bool>,
    /// `name:type:description`; a field of that name is replaced.
    pub add_fields: Vec<String>,
    pub remove_fields: Vec<String>,
}

type CallResult = Result<Json, CallError>;

fn usage(message: String) -> CallError {
    CallError {
        code: "InvalidArgument".into(),
        message,
        reason: None,
        metadata: BTreeMap::new(),
    }
}

fn organisation_roles(roles: &[String]) -> Result<Vec<i32>, CallError> {
    roles
        .iter()
        .filter(|r| !r.trim().is_empty())
        .map(|r| match r.trim() {
            "source" => Ok(proto::OrganisationRole::Source as i32),
            "consumer" => Ok(proto::OrganisationRole::Consumer as i32),
            "operator" => Ok(proto::OrganisationRole::Operator as i32),
            "auditor" => Ok(proto::OrganisationRole::Auditor as i32),
            "citizen_portal" => Ok(proto::OrganisationRole::CitizenPortal as i32),
            other => Err(usage(format!(
                "unknown role {other}; use source, consumer, operator, auditor or citizen_portal"
            ))),
        })
        .collect()
}

fn field_definition(spec: &str) -> Result<proto::FieldDefinition, CallError> {
    let mut parts = spec.splitn(3, ':');
    let (Some(name), Some(kind), Some(description)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(usage(format!(
            "field {spec:?} must be name:type:description"
        )));
    };
    let r#type = match kind {
        "string" => proto::FieldType::String,
        "int" => proto::FieldType::Int,
        "bool" => proto::FieldType::Bool,
        "date" => proto::FieldType::Date,
        "record" => proto::FieldType::Record,
        "list" => proto::FieldType::List,
        other => {
            return Err(usage(format!(
                "field type {other:?} is not one of string, int, bool, date, record, list"
            )));
        }
    } as i32;
    Ok(proto::FieldDefinition {
        name: name.to_owned(),
        description: description.to_owned(),
        r#type,
    })
}

impl Client {
    pub async fn connect(config: &ClientConfig) -> anyhow::Result<Client> {
        let read = |p: &Path| std::fs::read(p).with_context(|| format!("read {}", p.display()));
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&config.ca)?))
            .identity(Identity::from_pem(read(&config.cert)?, read(&config.key)?));
        let channel = Endpoint::from_shared(config.broker.clone())
            .with_context(|| format!("broker address {}", config.broker))?
            .tls_config(tls)
            .context("configure TLS")?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .connect()
            .await
            .with_context(|| format!("connect to the broker at {}", config.broker))?;
        Ok(Client {
            channel: with_token(channel, config.token.as_deref())?,
        })
    }

    fn registry(&self) -> proto::registry_service_client::RegistryServiceClient<AuthChannel> {
        proto::registry_service_client::RegistryServiceClient::new(self.channel.clone())
    }

    pub async fn lookup(&self, args: LookupArgs) -> CallResult {
        let mut client =
            proto::lookup_service_client::LookupServiceClient::new(self.channel.clone());
        let r = client
            .lookup(proto::LookupRequest {
                citizen: args.citizen,
                dataset: args.dataset,
                fields: args.fields,
                purpose: args.purpose,
                reference_date: args.reference_date.unwrap_or_default(),
                consumer_reference: args.consumer_reference.unwrap_or_default(),
                checks: args.checks,
            })
            .await?
            .into_inner();
        let fields: serde_json::Map<String, Json> = r
            .fields
            .iter()
            .map(|(k, v)| (k.clone(), value_json(v)))
            .collect();
        Ok(json!({
            "request_id": r.request_id,
            "authorisation_reference": r.authorisation_reference,
            "source_kbo": r.source_kbo,
            "fields": sorted(fields),
            "checks": r.checks.iter().map(|c| json!({
                "field": c.field,
                "answer": proto::CheckAnswer::try_from(c.answer).map_or("UNKNOWN", |a| {
                    a.as_str_name().trim_start_matches("CHECK_ANSWER_")
                }),
            })).collect::<Vec<_>>(),
        }))
    }

    /// Writes the whole registry into `dir` as reviewed files (one per
    /// kind, see [`registry_files`]).
    pub async fn registry_export(&self, dir: &std::path::Path) -> CallResult {
        let mut reg = self.registry();
        let organisations = reg
            .list_organisations(proto::ListOrganisationsRequest {})
            .await?
            .into_inner()
            .organisations;
        let purposes = reg
            .list_purposes(proto::ListPurposesRequest {})
            .await?
            .into_inner()
            .purposes;
        let datasets = reg
            .list_datasets(proto::ListDatasetsRequest {})
            .await?
            .into_inner()
            .datasets;
        let authorisations = reg
            .list_authorisations(proto::ListAuthorisationsRequest::default())
            .await?
            .into_inner()
            .authorisations;
        let files = registry_files::export(&organisations, &purposes, &datasets, &authorisations)
            .map_err(|e| usage(format!("{e:#}")))?;
        std::fs::create_dir_all(dir)
            .map_err(|e| usage(format!("create {}: {e}", dir.display())))?;
        // Other *.toml files would be read with these by `apply`: every
        // item twice.
        let others: Vec<String> = std::fs::read_dir(dir)
            .map_err(|e| usage(format!("read {}: {e}", dir.display())))?
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".toml") && !registry_files::FILES.contains(&n.as_str()))
            .collect();
        if !others.is_empty() {
            return Err(usage(format!(
                "{} holds other registry files ({}): `apply` would read them with the export; export into an empty directory",
                dir.display(),
                others.join(", ")
            )));
        }
        let mut written = Vec::new();
        for (name, text) in files {
            let path = dir.join(name);
            std::fs::write(&path, text)
                .map_err(|e| usage(format!("write {}: {e}", path.display())))?;
            written.push(path.display().to_string());
        }
        Ok(json!({
            "files": written,
            "organisations": organisations.len(),
            "purposes": purposes.len(),
            "datasets": datasets.len(),
            "authorisations": authorisations.len(),
        }))
    }

    /// Applies the registry described by the files of `dir` (or, with
    /// `dry_run`, only plans it). The broker's every objection comes back
    /// located by file and line.
    pub async fn registry_apply(
        &self,
        dir: &std::path::Path,
        dry_run: bool,
        reason: String,
    ) -> CallResult {
        let read = registry_files::read_dir(dir).map_err(|errors| CallError {
            code: "InvalidArgument".into(),
            message: format!(
                "{} error{} in the files, nothing was sent:\n  {}",
                errors.len(),
                if errors.len() == 1 { "" } else { "s" },
                errors.join("\n  ")
            ),
            reason: Some("REGISTRY_FILES_INVALID".into()),
            metadata: BTreeMap::new(),
        })?;
        let mut request = read.request.clone();
        request.dry_run = dry_run;
        request.reason = reason;
        let r = match self.registry().apply_registry(request).await {
            Ok(r) => r.into_inner(),
            Err(status) => {
                let violations: Vec<String> = status
                    .get_error_details()
                    .bad_request()
                    .map(|b| {
                        b.field_violations
                            .iter()
                            .map(|v| {
                                let at = read
                                    .locate_with(&v.field, &v.description)
                                    .unwrap_or_else(|| v.field.clone());
                                format!("{at}: {} ({})", v.description, v.field)
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let mut e = CallError::from(status);
                if !violations.is_empty() {
                    e.message = format!(
                        "{} rule{} broken, nothing was applied:\n  {}",
                        violations.len(),
                        if violations.len() == 1 { "" } else { "s" },
                        violations.join("\n  ")
                    );
                }
                return Err(e);
            }
        };
        let action = |a: i32| {
            proto::PlannedAction::try_from(a)
                .map(|a| {
                    a.as_str_name()
                        .trim_start_matches("PLANNED_ACTION_")
                        .to_lowercase()
                })
                .unwrap_or_default()
        };
        let changes: Vec<Json> = r
            .changes
            .iter()
            .map(|c| {
                let list = match c.kind.as_str() {
                    "organisation" => "organisations",
                    "purpose" => "purposes",
                    "dataset" => "datasets",
                    _ => "authorisations",
                };
                json!({
                    "action": action(c.action),
                    "kind": c.kind,
                    "key": c.key,
                    "at": read.locate(&format!("{list}[{}]", c.index)).unwrap_or_default(),
                    "detail": c.detail,
                })
            })
            .collect();
        Ok(json!({ "applied": r.applied, "changes": changes }))
    }

    pub async fn list_organisations(&self) -> CallResult {
        let r = self
            .registry()
            .list_organisations(proto::ListOrganisationsRequest {})
            .await?
            .into_inner();
        Ok(Json::Array(r.organisations.iter().map(org_json).collect()))
    }

    pub async fn create_organisation(
        &self,
        kbo: String,
        name: String,
        roles: &[String],
    ) -> CallResult {
        let roles = organisation_roles(roles)?;
        let r = self
            .registry()
            .create_organisation(proto::CreateOrganisationRequest {
                organisation: Some(proto::Organisation {
                    kbo,
                    name,
                    roles,
                    status: 0,
                    created_at: None,
                }),
            })
            .await?
            .into_inner();
        Ok(r.organisation.as_ref().map(org_json).unwrap_or(Json::Null))
    }

    pub async fn set_organisation_suspended(
        &self,
        kbo: String,
        suspended: bool,
        reason: String,
    ) -> CallResult {
        let org = if suspended {
            self.registry()
                .suspend_organisation(proto::SuspendOrganisationRequest { kbo, reason })
                .await?
                .into_inner()
                .organisation
        } else {
            self.registry()
                .reinstate_organisation(proto::ReinstateOrganisationRequest { kbo })
                .await?
                .into_inner()
                .organisation
        };
        Ok(org.as_ref().map(org_json).unwrap_or(Json::Null))
    }

    pub async fn list_datasets(&self) -> CallResult {
        let r = self
            .registry()
            .list_datasets(proto::ListDatasetsRequest {})
            .await?
            .into_inner();
        Ok(Json::Array(r.datasets.iter().map(dataset_json).collect()))
    }

    /// Withdraws a dataset for good.
    pub async fn withdraw_dataset(&self, name: String, reason: String) -> CallResult {
        let r = self
            .registry()
            .withdraw_dataset(proto::WithdrawDatasetRequest { name, reason })
            .await?
            .into_inner();
        Ok(r.dataset.as_ref().map(dataset_json).unwrap_or(Json::Null))
    }

    /// Amends an organisation: a new name, new roles (`None` keeps them).
    pub async fn amend_organisation(
        &self,
        kbo: String,
        name: Option<String>,
        roles: Option<Vec<String>>,
        reason: String,
    ) -> CallResult {
        let mut o = self
            .registry()
            .get_organisation(proto::GetOrganisationRequest { kbo: kbo.clone() })
            .await?
            .into_inner()
            .organisation
            .ok_or_else(|| usage(format!("the broker returned no organisation {kbo}")))?;
        if let Some(n) = name {
            o.name = n;
        }
        if let Some(r) = roles {
            o.roles = organisation_roles(&r)?;
        }
        let r = self
            .registry()
            .amend_organisation(proto::AmendOrganisationRequest {
                organisation: Some(o),
                reason,
            })
            .await?
            .into_inner();
        Ok(r.organisation.as_ref().map(org_json).unwrap_or(Json::Null))
    }

    /// Amends a dataset: fields added (`name:type:description`, replacing a
    /// field of the same name) or removed, a new endpoint, description or
    /// history flag (`None` keeps it).
    pub async fn amend_dataset(
        &self,
        name: String,
        patch: DatasetPatch,
        reason: String,
    ) -> CallResult {
        let mut d = self
            .registry()
            .get_dataset(proto::GetDatasetRequest { name: name.clone() })
            .await?
            .into_inner()
            .dataset
            .ok_or_else(|| usage(format!("the broker returned no dataset {name}")))?;
        let DatasetPatch {
            description,
            endpoint,
            keeps_history,
            add_fields,
            remove_fields,
        } = patch;
        if let Some(v) = description {
            d.description = v;
        }
        if let Some(v) = endpoint {
            d.endpoint = v;
        }
        if let Some(v) = keeps_history {
            d.keeps_history = v;
        }
        for f in &remove_fields {
            if !d.fields.iter().any(|x| &x.name == f) {
                return Err(usage(format!("dataset {name} has no field {f} to remove")));
            }
            d.fields.retain(|x| &x.name != f);
        }
        for spec in &add_fields {
            let f = field_definition(spec)?;
            match d.fields.iter_mut().find(|x| x.name == f.name) {
                Some(x) => *x = f,
                None => d.fields.push(f),
            }
        }
        let r = self
            .registry()
            .amend_dataset(proto::AmendDatasetRequest {
                dataset: Some(d),
                reason,
            })
            .await?
            .into_inner();
        Ok(r.dataset.as_ref().map(dataset_json).unwrap_or(Json::Null))
    }

    pub async fn create_dataset(&self, d: NewDataset) -> CallResult {
        let fields = d
            .fields
            .iter()
            .map(|f| field_definition(f))
            .collect::<Result<Vec<_>, _>>()?;
        let r = self
            .registry()
            .create_dataset(proto::CreateDatasetRequest {
                dataset: Some(proto::Dataset {
                    name: d.name,
                    source_kbo: d.source,
                    description: d.description,
                    fields,
                    endpoint: d.endpoint,
                    keeps_history: d.keeps_history,
                    withdrawn: false,
                }),
            })
            .await?
            .into_inner();
        Ok(r.dataset.as_ref().map(dataset_json).unwrap_or(Json::Null))
    }

    pub async fn list_authorisations(
        &self,
        consumer: Option<String>,
        dataset: Option<String>,
    ) -> CallResult {
        let r = self
            .registry()
            .list_authorisations(proto::ListAuthorisationsRequest {
                consumer_kbo: consumer.unwrap_or_default(),
                dataset: dataset.unwrap_or_default(),
            })
            .await?
            .into_inner();
        Ok(Json::Array(
            r.authorisations.iter().map(auth_json).collect(),
        ))
    }

    /// Applies, as a consumer, for an authorisation (the consumer is the
    /// caller's organisation when `a.consumer` is empty).
    pub async fn apply_for_authorisation(
        &self,
        a: NewAuthorisation,
        justification: String,
    ) -> CallResult {
        let authorisation = new_authorisation_proto(a)?;
        let r = self
            .registry()
            .apply_for_authorisation(proto::ApplyForAuthorisationRequest {
                authorisation: Some(authorisation),
                justification,
            })
            .await?
            .into_inner();
        Ok(r.application
            .as_ref()
            .map(application_json)
            .unwrap_or(Json::Null))
    }

    /// Applies for membership with the connection's certificate (no token
    /// needed).
    pub async fn apply_for_membership(
        &self,
        name: String,
        roles: &[String],
        contact: String,
        note: String,
    ) -> CallResult {
        let roles = organisation_roles(roles)?;
        let r = self
            .registry()
            .apply_for_membership(proto::ApplyForMembershipRequest {
                name,
                roles,
                contact,
                note,
            })
            .await?
            .into_inner();
        Ok(r.application
            .as_ref()
            .map(membership_json)
            .unwrap_or(Json::Null))
    }

    /// Applications for membership (the operator's administrators).
    pub async fn membership_applications(&self, pending_only: bool) -> CallResult {
        // Every page, newest first.
        let mut out = Vec::new();
        let mut page_token = String::new();
        loop {
            let r = self
                .registry()
                .list_membership_applications(proto::ListMembershipApplicationsRequest {
                    state: pending_filter(pending_only),
                    page_size: 1000,
                    page_token,
                })
                .await?
                .into_inner();
            out.extend(r.applications.iter().map(membership_json));
            if r.next_page_token.is_empty() {
                return Ok(Json::Array(out));
            }
            page_token = r.next_page_token;
        }
    }

    /// Approves (with the roles asked, or `roles`) or rejects an
    /// application for membership.
    pub async fn decide_membership(
        &self,
        id: String,
        approve: bool,
        roles: &[String],
        note: String,
    ) -> CallResult {
        let roles = organisation_roles(roles)?;
        let r = self
            .registry()
            .decide_membership_application(proto::DecideMembershipApplicationRequest {
                id,
                approve,
                roles,
                note,
            })
            .await?
            .into_inner();
        Ok(r.application
            .as_ref()
            .map(membership_json)
            .unwrap_or(Json::Null))
    }

    /// Applications for authorisations the caller may see, newest first.
    pub async fn authorisation_applications(&self, pending_only: bool) -> CallResult {
        // Every page, newest first.
        let mut out = Vec::new();
        let mut page_token = String::new();
        loop {
            let r = self
                .registry()
                .list_authorisation_applications(proto::ListAuthorisationApplicationsRequest {
                    state: pending_filter(pending_only),
                    page_size: 1000,
                    page_token,
                })
                .await?
                .into_inner();
            out.extend(r.applications.iter().map(application_json));
            if r.next_page_token.is_empty() {
                return Ok(Json::Array(out));
            }
            page_token = r.next_page_token;
        }
    }

    /// Approves (as asked) or rejects an application, as the supervisory body.
    pub async fn decide_application(&self, id: String, approve: bool, note: String) -> CallResult {
        let r = self
            .registry()
            .decide_authorisation_application(proto::DecideAuthorisationApplicationRequest {
                id,
                approve,
                amended: None,
                note,
            })
            .await?
            .into_inner();
        let mut out = r
            .application
            .as_ref()
            .map(application_json)
            .unwrap_or(Json::Null);
        if let (Json::Object(o), Some(a)) = (&mut out, &r.authorisation) {
            o.insert("authorisation".into(), auth_json(a));
        }
        Ok(out)
    }

    pub async fn create_authorisation(&self, a: NewAuthorisation) -> CallResult {
        let r = self
            .registry()
            .create_authorisation(proto::CreateAuthorisationRequest {
                authorisation: Some(new_authorisation_proto(a)?),
            })
            .await?
            .into_inner();
        Ok(r.authorisation
            .as_ref()
            .map(auth_json)
            .unwrap_or(Json::Null))
    }

    /// Amends an authorisation: reads the current version, applies the
    /// patch, and asks for a new version based on `expected_version` (by
    /// default the version just read). The answer holds the new version and
    /// the one it replaced.
    pub async fn amend_authorisation(
        &self,
        reference: String,
        expected_version: Option<u32>,
        patch: AuthorisationPatch,
        reason: String,
    ) -> CallResult {
        let mut a = self
            .registry()
            .get_authorisation(proto::GetAuthorisationRequest {
                reference: reference.clone(),
            })
            .await?
            .into_inner()
            .authorisation
            .ok_or_else(|| usage(format!("the broker returned no authorisation {reference}")))?;
        let expected_version = expected_version.unwrap_or(a.version);
        let list = |v: Vec<String>| -> Vec<String> {
            v.into_iter().filter(|s| !s.trim().is_empty()).collect()
        };
        let AuthorisationPatch {
            fields,
            check_fields,
            questions,
            capacities,
            consent_required,
            receives_mutations,
            purpose,
            legal_basis,
            issuing_body,
            valid_from,
            valid_until,
            confidential_until,
        } = patch;
        if let Some(v) = fields {
            a.fields = list(v);
        }
        if let Some(v) = check_fields {
            a.check_fields = list(v);
        }
        if let Some(v) = questions {
            a.checks = list(v)
                .iter()
                .map(|q| parse_question(q))
                .collect::<anyhow::Result<Vec<_>>>()
                .map_err(|e| usage(format!("{e:#}")))?;
        }
        if let Some(v) = capacities {
            a.capacities = list(v);
        }
        if let Some(v) = consent_required {
            a.consent_required = v;
        }
        if let Some(v) = receives_mutations {
            a.receives_mutations = v;
        }
        for (to, from) in [
            (&mut a.purpose, purpose),
            (&mut a.legal_basis, legal_basis),
            (&mut a.issuing_body, issuing_body),
            (&mut a.valid_from, valid_from),
            (&mut a.valid_until, valid_until),
            (&mut a.confidential_until, confidential_until),
        ] {
            if let Some(v) = from {
                *to = v.trim().to_owned();
            }
        }
        let r = self
            .registry()
            .amend_authorisation(proto::AmendAuthorisationRequest {
                authorisation: Some(a),
                expected_version,
                reason,
            })
            .await?
            .into_inner();
        let mut out = r
            .authorisation
            .as_ref()
            .map(auth_json)
            .unwrap_or(Json::Null);
        if let (Json::Object(o), Some(p)) = (&mut out, &r.previous) {
            o.insert("previous_version".into(), json!(p.version));
        }
        Ok(out)
    }

    /// Revokes an authorisation for good.
    pub async fn revoke_authorisation(&self, reference: String, reason: String) -> CallResult {
        let r = self
            .registry()
            .revoke_authorisation(proto::RevokeAuthorisationRequest { reference, reason })
            .await?
            .into_inner();
        Ok(r.authorisation
            .as_ref()
            .map(auth_json)
            .unwrap_or(Json::Null))
    }

    /// Every version of an authorisation, oldest first.
    pub async fn authorisation_versions(&self, reference: String) -> CallResult {
        let r = self
            .registry()
            .list_authorisation_versions(proto::ListAuthorisationVersionsRequest { reference })
            .await?
            .into_inner();
        Ok(Json::Array(r.versions.iter().map(auth_json).collect()))
    }

    pub async fn set_authorisation_suspended(
        &self,
        reference: String,
        suspended: bool,
        reason: String,
    ) -> CallResult {
        let a = if suspended {
            self.registry()
                .suspend_authorisation(proto::SuspendAuthorisationRequest { reference, reason })
                .await?
                .into_inner()
                .authorisation
        } else {
            self.registry()
                .reinstate_authorisation(proto::ReinstateAuthorisationRequest { reference })
                .await?
                .into_inner()
                .authorisation
        };
        Ok(a.as_ref().map(auth_json).unwrap_or(Json::Null))
    }

    pub async fn audit_list(&self, filter: AuditFilter) -> CallResult {
        let mut client = proto::audit_service_client::AuditServiceClient::new(self.channel.clone());
        let r = client
            .list_audit_entries(proto::ListAuditEntriesRequest {
                citizen: filter.citizen.unwrap_or_default(),
                consumer_kbo: filter.consumer.unwrap_or_default(),
                since: filter.since.as_deref().map(parse_time).transpose()?,
                until: filter.until.as_deref().map(parse_time).transpose()?,
                page_size: filter.limit,
                page_token: filter.page_token.unwrap_or_default(),
                end_user: filter.end_user.unwrap_or_default(),
                authorisation_reference: filter.authorisation.unwrap_or_default(),
                dataset: filter.dataset.unwrap_or_default(),
                reason: filter.reason.unwrap_or_default(),
                decision: match filter.decision.as_deref() {
                    None => proto::AuditDecision::Unspecified,
                    Some("allowed") => proto::AuditDecision::Allowed,
                    Some("refused") => proto::AuditDecision::Refused,
                    Some(other) => {
                        return Err(usage(format!("--decision {other}: use allowed or refused")));
                    }
                } as i32,
            })
            .await?
            .into_inner();
        Ok(json!({
            "entries": r.entries.iter().map(audit_json).collect::<Vec<_>>(),
            "next_page_token": r.next_page_token,
        }))
    }

    /// The citizen's view: who consulted a citizen's data.
    pub async fn citizen_accesses(&self, citizen: String, limit: i32) -> CallResult {
        let mut client = proto::audit_service_client::AuditServiceClient::new(self.channel.clone());
        let r = client
            .list_citizen_accesses(proto::ListCitizenAccessesRequest {
                citizen,
                page_size: limit,
                page_token: String::new(),
            })
            .await?
            .into_inner();
        let accesses: Vec<Json> = r
            .accesses
            .iter()
            .map(|a| {
                let proto::CitizenAccess {
                    time,
                    consumer_kbo,
                    consumer_name,
                    source_kbo,
                    source_name,
                    dataset,
                    fields,
                    purpose,
                    authorisation_reference,
                    decision,
                    reason,
                    checked_fields,
                    action,
                    purpose_description,
                    legal_basis,
                    issuing_body,
                    dataset_description,
                } = a;
                json!({
                    "time": time.as_ref().map(timestamp_text),
                    "consumer_kbo": consumer_kbo,
                    "consumer_name": consumer_name,
                    "source_kbo": source_kbo,
                    "source_name": source_name,
                    "dataset": dataset,
                    "fields": fields,
                    "checked_fields": checked_fields,
                    "action": action,
                    "purpose": purpose,
                    "purpose_description": purpose_description,
                    "legal_basis": legal_basis,
                    "issuing_body": issuing_body,
                    "dataset_description": dataset_description,
                    "authorisation": authorisation_reference,
                    "decision": enum_name(proto::AuditDecision::try_from(*decision).ok().map(|s| s.as_str_name()), "AUDIT_DECISION_"),
                    "reason": reason,
                })
            })
            .collect();
        Ok(json!({"accesses": accesses, "next_page_token": r.next_page_token}))
    }

    fn persons(&self) -> proto::persons_service_client::PersonsServiceClient<AuthChannel> {
        proto::persons_service_client::PersonsServiceClient::new(self.channel.clone())
    }

    fn consents(&self) -> proto::consent_service_client::ConsentServiceClient<AuthChannel> {
        proto::consent_service_client::ConsentServiceClient::new(self.channel.clone())
    }

    fn mutations(&self) -> proto::mutation_service_client::MutationServiceClient<AuthChannel> {
        proto::mutation_service_client::MutationServiceClient::new(self.channel.clone())
    }

    /// Publishes changes of the caller's datasets (a source). Field values
    /// are typed by the dataset's definition, read from the registry.
    pub async fn publish_mutations(&self, changes: Vec<NewMutation>) -> CallResult {
        let mut datasets: BTreeMap<String, proto::Dataset> = BTreeMap::new();
        let mut mutations = Vec::with_capacity(changes.len());
        for c in changes {
            if !datasets.contains_key(&c.dataset) {
                let d = self
                    .registry()
                    .get_dataset(proto::GetDatasetRequest {
                        name: c.dataset.clone(),
                    })
                    .await?
                    .into_inner()
                    .dataset
                    .unwrap_or_default();
                datasets.insert(c.dataset.clone(), d);
            }
            let dataset = &datasets[&c.dataset];
            let kind = match c.kind.as_str() {
                "created" => proto::MutationKind::Created,
                "changed" => proto::MutationKind::Changed,
                "ended" => proto::MutationKind::Ended,
                other => {
                    return Err(usage(format!(
                        "{other}: a change is created, changed or ended"
                    )));
                }
            };
            let mut fields = HashMap::new();
            for f in &c.fields {
                let (name, text) = f
                    .split_once('=')
                    .ok_or_else(|| usage(format!("{f}: write a field as name=value")))?;
                let def = dataset
                    .fields
                    .iter()
                    .find(|d| d.name == name)
                    .ok_or_else(|| {
                        usage(format!(
                            "{} has no field {name}; its fields are {}",
                            c.dataset,
                            dataset
                                .fields
                                .iter()
                                .map(|d| d.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                    })?;
                let value = match proto::FieldType::try_from(def.r#type) {
                    Ok(proto::FieldType::String) => Kind::StringValue(text.to_owned()),
                    Ok(proto::FieldType::Date) => Kind::DateValue(text.to_owned()),
                    Ok(proto::FieldType::Int) => Kind::IntValue(
                        text.parse()
                            .map_err(|_| usage(format!("{name}: {text} is not a whole number")))?,
                    ),
                    Ok(proto::FieldType::Bool) => {
                        Kind::BoolValue(text.parse().map_err(|_| {
                            usage(format!("{name}: write true or false, not {text}"))
                        })?)
                    }
                    _ => {
                        return Err(usage(format!(
                            "{name} holds records or lists: publish it through the API"
                        )));
                    }
                };
                fields.insert(name.to_owned(), proto::Value { kind: Some(value) });
            }
            mutations.push(proto::Mutation {
                source_event_id: c.event_id,
                dataset: c.dataset,
                citizen: c.citizen,
                kind: kind as i32,
                effective_date: c.effective_date,
                fields,
            });
        }
        let r = self
            .mutations()
            .publish_mutations(proto::PublishMutationsRequest { mutations })
            .await?
            .into_inner();
        Ok(Json::Array(
            r.results
                .iter()
                .map(|p| {
                    json!({
                        "source_event_id": p.source_event_id,
                        "duplicate": p.duplicate,
                        "request_id": p.request_id,
                    })
                })
                .collect(),
        ))
    }

    /// Subscribes to the caller's changes after `after` (0: after the last
    /// acknowledged one).
    pub async fn subscribe(&self, after: u64) -> Result<Subscription, CallError> {
        let stream = self
            .mutations()
            .subscribe(proto::SubscribeRequest { after })
            .await?
            .into_inner();
        Ok(Subscription { stream })
    }

    /// The caller's changes after `after`, waiting up to `wait_seconds`.
    pub async fn pull_mutations(&self, after: u64, max: i32, wait_seconds: i32) -> CallResult {
        let r = self
            .mutations()
            .pull_mutations(proto::PullMutationsRequest {
                after,
                max_events: max,
                wait_seconds,
            })
            .await?
            .into_inner();
        Ok(json!({
            "events": r.events.iter().map(mutation_event_json).collect::<Vec<_>>(),
            "lost": r.lost.as_ref().map(lost_json),
            "acknowledged": r.acknowledged,
            "last_position": r.last_position,
        }))
    }

    /// Acknowledges the caller's changes up to `position`.
    pub async fn acknowledge_mutations(&self, position: u64) -> CallResult {
        let r = self
            .mutations()
            .acknowledge_mutations(proto::AcknowledgeMutationsRequest { position })
            .await?
            .into_inner();
        Ok(json!({"acknowledged": r.acknowledged, "pending": r.pending}))
    }

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

    /// What an organisation may call and, as a source, who may call it
    /// (`kbo` empty: the caller's own organisation).
    pub async fn catalogue(&self, kbo: String) -> CallResult {
        let r = self
            .registry()
            .get_catalogue(proto::GetCatalogueRequest { kbo })
            .await?
            .into_inner();
        Ok(json!({
            "kbo": r.kbo,
            "name": r.name,
            "as_of": r.as_of,
            "may_call": r.may_call.iter().map(catalogue_entry_json).collect::<Vec<_>>(),
            "called_by": r.called_by.iter().map(catalogue_entry_json).collect::<Vec<_>>(),
        }))
    }

    pub async fn list_purposes(&self) -> CallResult {
        let r = self
            .registry()
            .list_purposes(proto::ListPurposesRequest {})
            .await?
            .into_inner();
        Ok(Json::Array(r.purposes.iter().map(purpose_json).collect()))
    }

    pub async fn create_purpose(
        &self,
        code: String,
        description: String,
        legal_basis: String,
    ) -> CallResult {
        let r = self
            .registry()
            .create_purpose(proto::CreatePurposeRequest {
                purpose: Some(proto::Purpose {
                    code,
                    description,
                    legal_basis,
                }),
            })
            .await?
            .into_inner();
        Ok(r.purpose.as_ref().map(purpose_json).unwrap_or(Json::Null))
    }

    /// Revokes a client certificate by fingerprint or serial.
    pub async fn revoke_certificate(
        &self,
        sha256_fingerprint: Option<String>,
        serial_number: Option<String>,
        issuer_name_sha256: Option<String>,
        reason: String,
    ) -> CallResult {
        let r = self
            .registry()
            .revoke_certificate(proto::RevokeCertificateRequest {
                sha256_fingerprint: sha256_fingerprint.unwrap_or_default(),
                serial_number: serial_number.unwrap_or_default(),
                reason,
                issuer_name_sha256: issuer_name_sha256.unwrap_or_default(),
            })
            .await?
            .into_inner();
        Ok(r.revoked.as_ref().map(revoked_json).unwrap_or(Json::Null))
    }

    pub async fn revoked_certificates(&self) -> CallResult {
        let r = self
            .registry()
            .list_revoked_certificates(proto::ListRevokedCertificatesRequest {})
            .await?
            .into_inner();
        Ok(json!({"revoked": r.revoked.iter().map(revoked_json).collect::<Vec<_>>()}))
    }

    /// The newest signed checkpoint and the verifier key.
    pub async fn latest_checkpoint(&self) -> CallResult {
        let mut client = proto::audit_service_client::AuditServiceClient::new(self.channel.clone());
        let r = client
            .get_latest_checkpoint(proto::GetLatestCheckpointRequest {})
            .await?
            .into_inner();
        Ok(json!({
            "verifier_key": r.verifier_key,
            "origin": r.checkpoint.as_ref().map(|c| c.origin.clone()),
            "tree_size": r.checkpoint.as_ref().map(|c| c.tree_size),
            "root_hash": r.checkpoint.as_ref().map(|c| hex(&c.root_hash)),
            "signed_note": r.checkpoint.as_ref().map(|c| c.signed_note.clone()),
        }))
    }

    pub async fn audit_head(&self) -> CallResult {
        let mut client = proto::audit_service_client::AuditServiceClient::new(self.channel.clone());
        let r = client
            .get_audit_head(proto::GetAuditHeadRequest {})
            .await?
            .into_inner();
        Ok(json!({"size": r.size, "head_hash": hex(&r.head_hash)}))
    }
}

// The JSON the command line prints is the whole answer: each message is
// destructured without `..`, so a field added to the proto is a compile
// error here rather than a field `--json` silently leaves out.

fn revoked_json(r: &proto::RevokedCertificate) -> Json {
    let proto::RevokedCertificate {
        sha256_fingerprint,
        serial_number,
        reason,
        revoked_at,
        issuer_name_sha256,
    } = r;
    json!({
        "sha256_fingerprint": sha256_fingerprint,
        "serial_number": serial_number,
        "issuer_name_sha256": issuer_name_sha256,
        "reason": reason,
        "revoked_at": revoked_at.as_ref().map(timestamp_text),
    })
}

fn purpose_json(p: &proto::Purpose) -> Json {
    let proto::Purpose {
        code,
        description,
        legal_basis,
    } = p;
    json!({"code": code, "description": description, "legal_basis": legal_basis})
}

/// An answer's object with the call's request id beside its fields.
fn with_request_id(mut v: Json, request_id: String) -> Json {
    if let Json::Object(m) = &mut v {
        m.insert("request_id".into(), Json::String(request_id));
    }
    v
}

fn sorted(m: serde_json::Map<String, Json>) -> Json {
    let b: BTreeMap<String, Json> = m.into_iter().collect();
    json!(b)
}

/// A source value as JSON.
pub fn value_json(v: &proto::Value) -> Json {
    match &v.kind {
        None => Json::Null,
        Some(Kind::StringValue(s)) | Some(Kind::DateValue(s)) => json!(s),
        Some(Kind::IntValue(i)) => json!(i),
        Some(Kind::BoolValue(b)) => json!(b),
        Some(Kind::RecordValue(r)) => sorted(
            r.fields
                .iter()
                .map(|(k, v)| (k.clone(), value_json(v)))
                .collect(),
        ),
        Some(Kind::ListValue(l)) => Json::Array(l.values.iter().map(value_json).collect()),
    }
}

fn enum_name(name: Option<&str>, prefix: &str) -> String {
    name.map(|n| n.trim_start_matches(prefix).to_lowercase())
        .unwrap_or_default()
}

fn mutation_event_json(e: &proto::MutationEvent) -> Json {
    let proto::MutationEvent {
        position,
        source_kbo,
        source_event_id,
        dataset,
        citizen,
        kind,
        effective_date,
        fields,
        checked_fields,
        authorisation_reference,
        file_id,
        published_at,
    } = e;
    json!({
        "position": position,
        "source_kbo": source_kbo,
        "source_event_id": source_event_id,
        "dataset": dataset,
        "citizen": citizen,
        "kind": enum_name(proto::MutationKind::try_from(*kind).ok().map(|k| k.as_str_name()), "MUTATION_KIND_"),
        "effective_date": effective_date,
        "fields": sorted(fields.iter().map(|(k, v)| (k.clone(), value_json(v))).collect()),
        "checked_fields": checked_fields,
        "authorisation_reference": authorisation_reference,
        "file_id": file_id,
        "published_at": published_at.as_ref().map(timestamp_text),
    })
}

fn lost_json(l: &proto::MutationsLost) -> Json {
    json!({"lost": {"first_position": l.first_position, "last_position": l.last_position}})
}

fn file_json(f: &proto::PersonFile) -> Json {
    let proto::PersonFile {
        id,
        consumer_kbo,
        citizen,
        capacity,
        phase,
        begin_date,
        end_date,
        consumer_reference,
        registered_by,
        registered_at,
        closed_at,
    } = f;
    json!({
        "id": id,
        "consumer_kbo": consumer_kbo,
        "citizen": citizen,
        "capacity": capacity,
        "phase": enum_name(proto::FilePhase::try_from(*phase).ok().map(|p| p.as_str_name()), "FILE_PHASE_"),
        "begin_date": begin_date,
        "end_date": end_date,
        "consumer_reference": consumer_reference,
        "registered_by": registered_by,
        "registered_at": registered_at.as_ref().map(timestamp_text),
        "closed_at": closed_at.as_ref().map(timestamp_text),
    })
}

fn consent_json(c: &proto::Consent) -> Json {
    let proto::Consent {
        id,
        citizen,
        consumer_kbo,
        purpose,
        datasets,
        given_at,
        channel,
        registered_through_kbo,
        registered_by,
        evidence,
        expires_at,
        withdrawn_at,
    } = c;
    json!({
        "id": id,
        "citizen": citizen,
        "consumer_kbo": consumer_kbo,
        "purpose": purpose,
        "datasets": datasets,
        "channel": enum_name(proto::ConsentChannel::try_from(*channel).ok().map(|p| p.as_str_name()), "CONSENT_CHANNEL_"),
        "registered_through_kbo": registered_through_kbo,
        "registered_by": registered_by,
        "evidence": evidence,
        "given_at": given_at.as_ref().map(timestamp_text),
        "expires_at": expires_at.as_ref().map(timestamp_text),
        "withdrawn_at": withdrawn_at.as_ref().map(timestamp_text),
    })
}

fn org_json(o: &proto::Organisation) -> Json {
    let proto::Organisation {
        kbo,
        name,
        roles,
        status,
        created_at,
    } = o;
    json!({
        "kbo": kbo,
        "name": name,
        "roles": roles.iter().map(|r| enum_name(proto::OrganisationRole::try_from(*r).ok().map(|r| r.as_str_name()), "ORGANISATION_ROLE_")).collect::<Vec<_>>(),
        "status": enum_name(proto::OrganisationStatus::try_from(*status).ok().map(|s| s.as_str_name()), "ORGANISATION_STATUS_"),
        "created_at": created_at.as_ref().map(timestamp_text),
    })
}

fn field_json(f: &proto::FieldDefinition) -> Json {
    let proto::FieldDefinition {
        name,
        description,
        r#type,
    } = f;
    json!({
        "name": name,
        "type": enum_name(proto::FieldType::try_from(*r#type).ok().map(|t| t.as_str_name()), "FIELD_TYPE_"),
        "description": description,
    })
}

fn dataset_json(d: &proto::Dataset) -> Json {
    let proto::Dataset {
        name,
        source_kbo,
        description,
        fields,
        endpoint,
        keeps_history,
        withdrawn,
    } = d;
    json!({
        "name": name,
        "source_kbo": source_kbo,
        "description": description,
        "endpoint": endpoint,
        "keeps_history": keeps_history,
        "withdrawn": withdrawn,
        "fields": fields.iter().map(field_json).collect::<Vec<_>>(),
    })
}

fn catalogue_entry_json(e: &proto::CatalogueEntry) -> Json {
    let proto::CatalogueEntry {
        dataset,
        dataset_description,
        source_kbo,
        source_name,
        consumer_kbo,
        consumer_name,
        authorisation_reference,
        authorisation_version,
        fields,
        check_fields,
        checks,
        purpose,
        purpose_description,
        capacities,
        consent_required,
        valid_from,
        valid_until,
        legal_basis,
        issuing_body,
        receives_mutations,
        keeps_history,
        state,
        confidential_until,
    } = e;
    json!({
        "dataset": dataset,
        "dataset_description": dataset_description,
        "source_kbo": source_kbo,
        "source_name": source_name,
        "consumer_kbo": consumer_kbo,
        "consumer_name": consumer_name,
        "authorisation_reference": authorisation_reference,
        "authorisation_version": authorisation_version,
        "fields": fields.iter().map(field_json).collect::<Vec<_>>(),
        "check_fields": check_fields.iter().map(field_json).collect::<Vec<_>>(),
        "questions": checks.iter().map(question_text).collect::<Vec<_>>(),
        "purpose": purpose,
        "purpose_description": purpose_description,
        "capacities": capacities,
        "consent_required": consent_required,
        "valid_from": valid_from,
        "valid_until": valid_until,
        "legal_basis": legal_basis,
        "issuing_body": issuing_body,
        "receives_mutations": receives_mutations,
        "keeps_history": keeps_history,
        "state": enum_name(proto::CatalogueState::try_from(*state).ok().map(|s| s.as_str_name()), "CATALOGUE_STATE_"),
        "confidential_until": confidential_until,
    })
}

fn new_authorisation_proto(a: NewAuthorisation) -> Result<proto::Authorisation, CallError> {
    Ok(proto::Authorisation {
        reference: a.reference,
        consumer_kbo: a.consumer,
        dataset: a.dataset,
        fields: a.fields,
        purpose: a.purpose,
        legal_basis: a.legal_basis,
        issuing_body: a.issuing_body,
        valid_from: a.valid_from,
        valid_until: a.valid_until.unwrap_or_default(),
        status: 0,
        version: 0,
        updated_at: None,
        confidential_until: a.confidential_until.unwrap_or_default(),
        check_fields: a.check_fields,
        capacities: a.capacities,
        consent_required: a.consent_required,
        receives_mutations: a.receives_mutations,
        checks: a
            .questions
            .iter()
            .map(|q| parse_question(q))
            .collect::<anyhow::Result<Vec<_>>>()
            .map_err(|e| usage(format!("{e:#}")))?,
    })
}

/// The state filter of the applications' lists.
fn pending_filter(pending_only: bool) -> i32 {
    if pending_only {
        proto::ApplicationState::Pending as i32
    } else {
        0
    }
}

fn membership_json(a: &proto::MembershipApplication) -> Json {
    let role = |r: &i32| {
        enum_name(
            proto::OrganisationRole::try_from(*r)
                .ok()
                .map(|s| s.as_str_name()),
            "ORGANISATION_ROLE_",
        )
    };
    json!({
        "id": a.id,
        "state": enum_name(proto::ApplicationState::try_from(a.state).ok().map(|s| s.as_str_name()), "APPLICATION_STATE_"),
        "kbo": a.kbo,
        "name": a.name,
        "roles": a.roles.iter().map(role).collect::<Vec<_>>(),
        "contact": a.contact,
        "note": a.note,
        "certificate": a.certificate,
        "applied_at": a.applied_at.as_ref().map(timestamp_text).unwrap_or_default(),
        "decided_by": a.decided_by,
        "decided_at": a.decided_at.as_ref().map(timestamp_text).unwrap_or_default(),
        "decision_note": a.decision_note,
    })
}

fn application_json(a: &proto::AuthorisationApplication) -> Json {
    let p = a.proposed.as_ref();
    json!({
        "id": a.id,
        "state": enum_name(proto::ApplicationState::try_from(a.state).ok().map(|s| s.as_str_name()), "APPLICATION_STATE_"),
        "reference": p.map(|p| p.reference.clone()).unwrap_or_default(),
        "applicant_kbo": a.applicant_kbo,
        "applied_by": a.applied_by,
        "applied_at": a.applied_at.as_ref().map(timestamp_text).unwrap_or_default(),
        "dataset": p.map(|p| p.dataset.clone()).unwrap_or_default(),
        "fields": p.map(|p| p.fields.clone()).unwrap_or_default(),
        "purpose": p.map(|p| p.purpose.clone()).unwrap_or_default(),
        "justification": a.justification,
        "decided_by_kbo": a.decided_by_kbo,
        "decided_by": a.decided_by,
        "decided_at": a.decided_at.as_ref().map(timestamp_text).unwrap_or_default(),
        "decision_note": a.decision_note,
        "approved_version": a.approved_version,
        "proposed": p.map(auth_json).unwrap_or(Json::Null),
    })
}

fn auth_json(a: &proto::Authorisation) -> Json {
    let proto::Authorisation {
        reference,
        consumer_kbo,
        dataset,
        fields,
        purpose,
        legal_basis,
        issuing_body,
        valid_from,
        valid_until,
        status,
        version,
        updated_at,
        confidential_until,
        check_fields,
        capacities,
        consent_required,
        checks,
        receives_mutations,
    } = a;
    json!({
        "reference": reference,
        "consumer_kbo": consumer_kbo,
        "dataset": dataset,
        "fields": fields,
        "purpose": purpose,
        "legal_basis": legal_basis,
        "issuing_body": issuing_body,
        "valid_from": valid_from,
        "valid_until": valid_until,
        "status": enum_name(proto::AuthorisationStatus::try_from(*status).ok().map(|s| s.as_str_name()), "AUTHORISATION_STATUS_"),
        "version": version,
        "updated_at": updated_at.as_ref().map(timestamp_text),
        "check_fields": check_fields,
        "questions": checks.iter().map(question_text).collect::<Vec<_>>(),
        "capacities": capacities,
        "consent_required": consent_required,
        "receives_mutations": receives_mutations,
        "confidential_until": confidential_until,
    })
}

/// An RFC 3339 time (e.g. 2026-11-01T00:00:00Z) as a protobuf timestamp.
fn parse_time(text: &str) -> Result<prost_types::Timestamp, CallError> {
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| {
            usage(format!(
                "{text}: not an RFC 3339 time such as 2026-11-01T00:00:00Z: {e}"
            ))
        })?;
    Ok(prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: t.nanosecond() as i32,
    })
}

fn timestamp_text(t: &prost_types::Timestamp) -> String {
    time::OffsetDateTime::from_unix_timestamp(t.seconds)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn audit_json(e: &proto::AuditEntry) -> Json {
    let proto::AuditEntry {
        sequence,
        request_id,
        time,
        consumer_kbo,
        citizen,
        dataset,
        fields_requested,
        fields_returned,
        purpose,
        authorisation_reference,
        decision,
        reason,
        outcome,
        source_kbo,
        consumer_reference,
        reference_date,
        end_user,
        previous_hash,
        entry_hash,
        operation,
        encoding,
        citizen_as_given,
        checks,
        detail,
        authorisation_version,
    } = e;
    json!({
        "sequence": sequence,
        "request_id": request_id,
        "time": time.as_ref().map(timestamp_text).unwrap_or_default(),
        "operation": operation,
        "consumer_kbo": consumer_kbo,
        "end_user": end_user,
        "citizen": citizen,
        "citizen_as_given": citizen_as_given,
        "dataset": dataset,
        "fields_requested": fields_requested,
        "fields_returned": fields_returned,
        "checks": checks,
        "purpose": purpose,
        "authorisation_reference": authorisation_reference,
        "authorisation_version": authorisation_version,
        "reference_date": reference_date,
        "decision": enum_name(proto::AuditDecision::try_from(*decision).ok().map(|s| s.as_str_name()), "AUDIT_DECISION_"),
        "reason": reason,
        "detail": detail,
        "outcome": enum_name(proto::AuditOutcome::try_from(*outcome).ok().map(|s| s.as_str_name()), "AUDIT_OUTCOME_"),
        "source_kbo": source_kbo,
        "consumer_reference": consumer_reference,
        "previous_hash": hex(previous_hash),
        "entry_hash": hex(entry_hash),
        "encoding": hex(encoding),
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod check_syntax_tests {
    use super::*;
    use proto::value::Kind;

    #[test]
    fn checks_parse_with_their_operator_and_element() {
        let c = parse_check("nis_code=21015").expect("check");
        assert_eq!(
            (c.field.as_str(), c.operator),
            ("nis_code", proto::CheckOperator::Equals as i32)
        );
        let c = parse_check("income_years[income_year=2024].taxable_income_cents<=2500000")
            .expect("check");
        assert_eq!(c.field, "income_years");
        assert_eq!(c.operator, proto::CheckOperator::LessOrEqual as i32);
        let e = c.element.expect("element");
        assert_eq!(
            (e.key_field.as_str(), e.value_field.as_str()),
            ("income_year", "taxable_income_cents")
        );
        assert_eq!(e.key.and_then(|v| v.kind), Some(Kind::IntValue(2024)));
        assert_eq!(
            c.operand.and_then(|v| v.kind),
            Some(Kind::IntValue(2_500_000))
        );
        let c = parse_check("birth_date>=2010-01-01").expect("check");
        assert_eq!(c.operator, proto::CheckOperator::GreaterOrEqual as i32);
        assert_eq!(
            c.operand.and_then(|v| v.kind),
            Some(Kind::DateValue("2010-01-01".into()))
        );
        assert_eq!(
            parse_check("sex!=M").map(|c| c.operator).ok(),
            Some(proto::CheckOperator::NotEquals as i32)
        );
        assert!(parse_check("nis_code").is_err());
        assert!(parse_check("income_years[income_year].x<3").is_err());
    }

    #[test]
    fn answers_keep_every_field_the_api_returns() {
        let d = dataset_json(&proto::Dataset {
            name: "x.y".into(),
            fields: vec![proto::FieldDefinition {
                name: "age".into(),
                description: "in years".into(),
                r#type: proto::FieldType::Int as i32,
            }],
            ..Default::default()
        });
        assert_eq!(d["fields"][0]["type"], "int", "{d}");
        let a = auth_json(&proto::Authorisation {
            reference: "BSC/1".into(),
            check_fields: vec!["nis_code".into()],
            capacities: vec!["RIS_APPLICANT".into()],
            consent_required: true,
            version: 3,
            updated_at: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            ..Default::default()
        });
        assert_eq!(a["check_fields"][0], "nis_code", "{a}");
        assert_eq!(a["capacities"][0], "RIS_APPLICANT", "{a}");
        assert_eq!(a["consent_required"], true, "{a}");
        assert_eq!(a["version"], 3, "{a}");
        assert_eq!(a["updated_at"], "1970-01-01T00:00:00Z", "{a}");
        let o = org_json(&proto::Organisation {
            created_at: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            ..Default::default()
        });
        assert_eq!(o["created_at"], "1970-01-01T00:00:00Z", "{o}");
    }
}
