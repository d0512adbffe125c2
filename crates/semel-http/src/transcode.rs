//! The HTTP/JSON face's mapping, read from the contract: each RPC's
//! `google.api.http` rule (AIP-127) gives its route, and the canonical
//! proto3 JSON mapping (prost-reflect) turns a request into the RPC's
//! protobuf message and its answer back into JSON. Nothing here is written
//! per RPC: a new RPC with a rule is on the HTTP face, with its JSON, the
//! day it is in `proto/`, so the two faces cannot drift.
//!
//! Client-streaming and server-streaming RPCs (`LookupBatch`) take a JSON
//! array of their request messages and answer a JSON array of their
//! responses, once every item is done.

use std::collections::BTreeMap;

use prost::Message as _;
use prost::bytes::{Buf, Bytes};
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor,
    MethodDescriptor, SerializeOptions,
};
use serde_json::{Map, Value};
use tonic::codegen::http::Method;

use semel_server::permissions::Rule;

/// The routes of the HTTP/JSON face and the descriptors behind them.
pub struct HttpApi {
    pool: DescriptorPool,
    pub routes: Vec<Route>,
}

/// One RPC's HTTP binding.
pub struct Route {
    pub verb: Method,
    pub template: Template,
    pub body: BodyRule,
    pub method: MethodDescriptor,
    /// `/package.Service/Method`, the gRPC path the call is made on.
    pub grpc_path: String,
    pub rule: &'static Rule,
}

impl Route {
    /// Whether the RPC takes (and answers) a stream of messages: its JSON
    /// is an array.
    pub fn streams_in(&self) -> bool {
        self.method.is_client_streaming()
    }
    pub fn streams_out(&self) -> bool {
        self.method.is_server_streaming()
    }
}

/// Where the request message comes from besides the path.
pub enum BodyRule {
    /// No body: the other fields are query parameters.
    None,
    /// `body: "*"`: the whole message (but the path's fields).
    Whole,
    /// `body: "field"`: that field's message.
    Field(FieldDescriptor),
}

/// A path template: `/v1/files/{file_id}:close`.
pub struct Template {
    pub text: String,
    segments: Vec<Segment>,
    verb: Option<String>,
}

enum Segment {
    Literal(String),
    /// A field: one segment, or (`{name=**}`) every segment left.
    Field {
        name: String,
        rest: bool,
    },
}

/// What a request's method and path lead to.
pub enum Routed<'a> {
    Found(&'a Route, Vec<(String, String)>),
    /// The path exists, with other methods.
    WrongMethod(Vec<Method>),
    NotFound,
}

impl HttpApi {
    /// Reads every rule of the contract. Fails on a rule this face cannot
    /// serve (a test keeps the contract servable).
    pub fn load() -> anyhow::Result<HttpApi> {
        let pool = pool()?;
        let http = pool
            .get_extension_by_name("google.api.http")
            .ok_or_else(|| anyhow::anyhow!("the contract has no google.api.http extension"))?;
        let mut routes = Vec::new();
        for service in pool.services() {
            if service.package_name() != "semel.v1" {
                continue;
            }
            for method in service.methods() {
                let options = method.options();
                if !options.has_extension(&http) {
                    continue;
                }
                let value = options.get_extension(&http);
                let Some(rule) = value.as_message() else {
                    continue;
                };
                let grpc = format!("{}/{}", service.full_name(), method.name());
                let rpc =
                    semel_server::permissions::for_path(&format!("/{grpc}")).ok_or_else(|| {
                        anyhow::anyhow!("{grpc} has an HTTP rule but no permission row")
                    })?;
                let (verb, path) = ["get", "put", "post", "delete", "patch"]
                    .into_iter()
                    .find(|v| rule.has_field_by_name(v))
                    .and_then(|v| {
                        let path = rule.get_field_by_name(v)?.as_str()?.to_owned();
                        Some((Method::from_bytes(v.to_uppercase().as_bytes()).ok()?, path))
                    })
                    .ok_or_else(|| anyhow::anyhow!("{grpc}: the HTTP rule names no method"))?;
                let body = rule
                    .get_field_by_name("body")
                    .and_then(|b| b.as_str().map(str::to_owned))
                    .unwrap_or_default();
                let input = method.input();
                let body = match body.as_str() {
                    "" => BodyRule::None,
                    "*" => BodyRule::Whole,
                    field => BodyRule::Field(input.get_field_by_name(field).ok_or_else(|| {
                        anyhow::anyhow!("{grpc}: the body names no field {field:?}")
                    })?),
                };
                let template = Template::parse(&path)
                    .map_err(|e| anyhow::anyhow!("{grpc}: path {path:?}: {e}"))?;
                for name in template.fields() {
                    let field = input.get_field_by_name(name).ok_or_else(|| {
                        anyhow::anyhow!("{grpc}: the path names no field {name:?}")
                    })?;
                    anyhow::ensure!(
                        !field.is_list()
                            && !field.is_map()
                            && !matches!(field.kind(), Kind::Message(_)),
                        "{grpc}: path field {name:?} must be a scalar"
                    );
                }
                if method.is_client_streaming() {
                    anyhow::ensure!(
                        matches!(body, BodyRule::Whole) && template.fields().next().is_none(),
                        "{grpc}: a streaming RPC takes its messages in the body (body \"*\", no path fields)"
                    );
                }
                routes.push(Route {
                    verb,
                    template,
                    body,
                    grpc_path: format!("/{grpc}"),
                    method,
                    rule: rpc,
                });
            }
        }
        Ok(HttpApi { pool, routes })
    }

    /// The descriptors: the contract, with `google.rpc` for errors.
    pub fn pool(&self) -> &DescriptorPool {
        &self.pool
    }

    /// The route of a request.
    pub fn route(&self, method: &Method, path: &str) -> Routed<'_> {
        let mut allowed = Vec::new();
        for route in &self.routes {
            if let Some(params) = route.template.matches(path) {
                if route.verb == *method {
                    return Routed::Found(route, params);
                }
                allowed.push(route.verb.clone());
            }
        }
        if allowed.is_empty() {
            Routed::NotFound
        } else {
            Routed::WrongMethod(allowed)
        }
    }

    /// The request's protobuf encoding, as gRPC frames: from the body, the
    /// path's fields and the query's. The error says what is wrong, for a
    /// person (national numbers masked), and tells a request too large (a
    /// batch of more than [`MAX_BATCH_ITEMS`], an item larger than the gRPC
    /// face takes) from one malformed, before any item is processed.
    pub fn request(
        &self,
        route: &Route,
        params: Vec<(String, String)>,
        query: Option<&str>,
        body: &[u8],
    ) -> Result<Bytes, Unreadable> {
        let input = route.method.input();
        let blank = body.iter().all(u8::is_ascii_whitespace);
        let parsed: Option<Value> = if blank {
            None
        } else {
            Some(
                serde_json::from_slice::<Strict>(body)
                    .map_err(|e| format!("the body is not valid JSON: {e}"))?
                    .0,
            )
        };
        let query = query.filter(|q| !q.is_empty());
        if route.streams_in() {
            if query.is_some() {
                return Err("this operation takes no query parameters".into());
            }
            let items = match parsed {
                Some(Value::Array(items)) => items,
                None => Vec::new(),
                Some(_) => return Err("the body must be a JSON array of requests".into()),
            };
            // The answer is built in memory: a batch is bounded here, and
            // every item is refused before any is looked up.
            if items.len() > MAX_BATCH_ITEMS {
                return Err(Unreadable::TooLarge(format!(
                    "a batch over HTTP/JSON takes at most {MAX_BATCH_ITEMS} items, not {}; send several, or stream them over gRPC",
                    items.len()
                )));
            }
            let mut frames = Vec::new();
            for (i, item) in items.into_iter().enumerate() {
                if !item.is_object() {
                    return Err(format!("item {i}: must be a JSON object").into());
                }
                let message = decode(&input, item).map_err(|e| format!("item {i}: {e}"))?;
                if message.encoded_len() > semel_server::server::MAX_REQUEST {
                    return Err(Unreadable::TooLarge(format!(
                        "item {i} is larger than the broker accepts ({} KiB as protobuf)",
                        semel_server::server::MAX_REQUEST / 1024
                    )));
                }
                frame(&mut frames, &message);
            }
            return Ok(frames.into());
        }
        let mut object = match (&route.body, parsed) {
            (BodyRule::None, Some(_)) => {
                return Err("this operation takes no body; its fields are query parameters".into());
            }
            (_, None) => Map::new(),
            (BodyRule::Whole, Some(Value::Object(o))) => o,
            (BodyRule::Whole, Some(_)) => return Err("the body must be a JSON object".into()),
            (BodyRule::Field(f), Some(v)) => {
                let mut o = Map::new();
                o.insert(f.json_name().to_owned(), v);
                o
            }
        };
        for (name, value) in params {
            let field = input
                .get_field_by_name(&name)
                .ok_or_else(|| format!("no field {name}"))?;
            object.remove(field.name());
            object.insert(field.json_name().to_owned(), scalar(&field, value)?);
        }
        if let Some(query) = query {
            if !matches!(route.body, BodyRule::None) {
                return Err(
                    "this operation takes its fields in the body, not as query parameters".into(),
                );
            }
            for (key, value) in parse_query(query) {
                let field = input
                    .get_field_by_name(&key)
                    .or_else(|| input.get_field_by_json_name(&key))
                    .filter(|f| !f.is_map() && !is_plain_message(f))
                    .ok_or_else(|| format!("unknown query parameter {key:?}"))?;
                let value = scalar(&field, value)?;
                let key = field.json_name().to_owned();
                if field.is_list() {
                    match object
                        .entry(key.clone())
                        .or_insert_with(|| Value::Array(Vec::new()))
                    {
                        Value::Array(a) => a.push(value),
                        _ => return Err(format!("query parameter {key:?} given twice").into()),
                    }
                } else if object.insert(key.clone(), value).is_some() {
                    return Err(format!("query parameter {key:?} given twice").into());
                }
            }
        }
        let message = decode(&input, Value::Object(object))?;
        let mut frames = Vec::new();
        frame(&mut frames, &message);
        Ok(frames.into())
    }

    /// The JSON of an answer's gRPC frames, and the request id it carries
    /// (a `request_id` field), if any.
    pub fn response(
        &self,
        route: &Route,
        mut frames: Bytes,
    ) -> Result<(Vec<u8>, Option<String>), String> {
        let output = route.method.output();
        let mut messages = Vec::new();
        while frames.has_remaining() {
            if frames.remaining() < 5 {
                return Err("a truncated gRPC frame".into());
            }
            let compressed = frames.get_u8();
            let len = frames.get_u32() as usize;
            if compressed != 0 || frames.remaining() < len {
                return Err("an unreadable gRPC frame".into());
            }
            let message = DynamicMessage::decode(output.clone(), frames.split_to(len))
                .map_err(|e| format!("an undecodable answer: {e}"))?;
            messages.push(message);
        }
        let request_id = match messages.as_slice() {
            [one] => one
                .get_field_by_name("request_id")
                .and_then(|v| v.as_str().map(str::to_owned))
                .filter(|id| !id.is_empty()),
            _ => None,
        };
        let json = if route.streams_out() {
            let values = messages
                .iter()
                .map(to_json)
                .collect::<Result<Vec<_>, _>>()?;
            serde_json::to_vec(&values)
        } else {
            let message = messages
                .pop()
                .unwrap_or_else(|| DynamicMessage::new(output));
            serde_json::to_vec(&to_json(&message)?)
        }
        .map_err(|e| e.to_string())?;
        Ok((json, request_id))
    }

    /// A status as the JSON of `google.rpc.Status`: its code, message and
    /// details (`ErrorInfo` with the reason and request id, `BadRequest`,
    /// `RetryInfo`) in the canonical mapping, each with its `@type`.
    pub fn status_json(&self, status: &tonic::Status) -> Vec<u8> {
        let details = self
            .pool
            .get_message_by_name("google.rpc.Status")
            .filter(|_| !status.details().is_empty())
            .and_then(|desc| DynamicMessage::decode(desc, status.details()).ok())
            .and_then(|m| to_json(&m).ok());
        let value = details.unwrap_or_else(|| {
            serde_json::json!({
                "code": status.code() as i32,
                "message": status.message(),
            })
        });
        serde_json::to_vec(&value).unwrap_or_default()
    }
}

fn is_plain_message(f: &FieldDescriptor) -> bool {
    // Timestamps read from one string; other messages have no query form.
    matches!(f.kind(), Kind::Message(m) if m.full_name() != "google.protobuf.Timestamp")
}

fn decode(desc: &MessageDescriptor, value: Value) -> Result<DynamicMessage, String> {
    once_each(desc, &value)?;
    DynamicMessage::deserialize_with_options(desc.clone(), value, &DeserializeOptions::new())
        .map_err(|e| semel_core::redact_national_numbers(&e.to_string()).into_owned())
}

/// Refuses a field given under both its names (`consumer_reference` and
/// `consumerReference`), at every level: which one would count is not for
/// the reader to guess.
fn once_each(desc: &MessageDescriptor, value: &Value) -> Result<(), String> {
    let Value::Object(object) = value else {
        return Ok(());
    };
    let mut seen = std::collections::HashSet::new();
    for (key, v) in object {
        let field = desc
            .get_field_by_json_name(key)
            .or_else(|| desc.get_field_by_name(key));
        let Some(field) = field else { continue };
        if !seen.insert(field.number()) {
            return Err(format!(
                "the field {} is given twice (as {} and {})",
                field.name(),
                field.name(),
                field.json_name()
            ));
        }
        if let Kind::Message(inner) = field.kind() {
            match v {
                Value::Array(items) => {
                    for item in items {
                        once_each(&inner, item)?;
                    }
                }
                v => once_each(&inner, v)?,
            }
        }
    }
    Ok(())
}

fn to_json(message: &DynamicMessage) -> Result<Value, String> {
    message
        .serialize_with_options(serde_json::value::Serializer, &SerializeOptions::new())
        .map_err(|e| e.to_string())
}

/// JSON read as a [`Value`], refusing an object that names a key twice:
/// a proxy or a log reading the first `citizen` must not see another
/// citizen than the one looked up (serde_json keeps the last).
struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(v) = map.next_value()?;
            if out.insert(key.clone(), v).is_some() {
                return Err(serde::de::Error::custom(format!(
                    "the key {key:?} is given twice"
                )));
            }
        }
        Ok(Value::Object(out))
    }
}

/// The most items one HTTP/JSON batch takes (its answer is built in
/// memory; the gRPC face streams any number with backpressure).
pub const MAX_BATCH_ITEMS: usize = 1000;

/// Why a request could not be transcoded.
#[derive(Debug)]
pub enum Unreadable {
    Malformed(String),
    TooLarge(String),
}

impl Unreadable {
    /// What is wrong, for a person.
    pub fn message(&self) -> &str {
        match self {
            Unreadable::Malformed(m) | Unreadable::TooLarge(m) => m,
        }
    }
}

impl From<String> for Unreadable {
    fn from(m: String) -> Self {
        Unreadable::Malformed(m)
    }
}

impl From<&str> for Unreadable {
    fn from(m: &str) -> Self {
        Unreadable::Malformed(m.to_owned())
    }
}

fn frame(out: &mut Vec<u8>, message: &DynamicMessage) {
    let encoded = message.encode_to_vec();
    out.push(0);
    out.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    out.extend_from_slice(&encoded);
}

/// A path or query value as the JSON the canonical mapping reads for the
/// field: strings for everything (numbers, enums and timestamps read from
/// strings) but booleans.
fn scalar(field: &FieldDescriptor, raw: String) -> Result<Value, String> {
    match field.kind() {
        Kind::Bool => match raw.as_str() {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(format!("{}: expected true or false", field.json_name())),
        },
        _ => Ok(Value::String(raw)),
    }
}

/// `a=1&b=x%20y` as pairs, percent-decoded (`+` is a space).
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (
                percent_decode(&k.replace('+', " ")),
                percent_decode(&v.replace('+', " ")),
            )
        })
        .collect()
}

/// Percent-decoding; a malformed escape stays as it is.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Template {
    fn parse(text: &str) -> Result<Template, String> {
        let path = text.strip_prefix('/').ok_or("must start with /")?;
        // The verb follows the last colon outside braces.
        let mut depth = 0;
        let mut colon = None;
        for (i, c) in path.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ':' if depth == 0 => colon = Some(i),
                _ => {}
            }
        }
        let (path, verb) = match colon {
            Some(i) => (&path[..i], Some(path[i + 1..].to_owned())),
            None => (path, None),
        };
        let mut segments = Vec::new();
        let parts: Vec<&str> = path.split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            if let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                let (name, pattern) = inner.split_once('=').unwrap_or((inner, "*"));
                let rest = match pattern {
                    "*" => false,
                    "**" if i + 1 == parts.len() => true,
                    other => return Err(format!("unsupported pattern {other:?}")),
                };
                segments.push(Segment::Field {
                    name: name.to_owned(),
                    rest,
                });
            } else if part.is_empty() || part.contains(['{', '}', '*']) {
                return Err(format!("unsupported segment {part:?}"));
            } else {
                segments.push(Segment::Literal((*part).to_owned()));
            }
        }
        Ok(Template {
            text: text.to_owned(),
            segments,
            verb,
        })
    }

    /// The fields the path binds.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Field { name, .. } => Some(name.as_str()),
            Segment::Literal(_) => None,
        })
    }

    /// The template as an OpenAPI path: `{name=**}` becomes `{name}`.
    pub fn openapi_path(&self) -> String {
        let mut out = String::new();
        for s in &self.segments {
            out.push('/');
            match s {
                Segment::Literal(l) => out.push_str(l),
                Segment::Field { name, .. } => {
                    out.push('{');
                    out.push_str(name);
                    out.push('}');
                }
            }
        }
        if let Some(v) = &self.verb {
            out.push(':');
            out.push_str(v);
        }
        out
    }

    /// The path's fields if `path` matches, percent-decoded.
    fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        let mut path = path.strip_prefix('/')?;
        if let Some(verb) = &self.verb {
            path = path.strip_suffix(verb.as_str())?.strip_suffix(':')?;
        }
        let parts: Vec<&str> = path.split('/').collect();
        let mut params = Vec::new();
        let mut i = 0;
        for s in &self.segments {
            match s {
                Segment::Literal(l) => {
                    if parts.get(i) != Some(&l.as_str()) {
                        return None;
                    }
                    i += 1;
                }
                Segment::Field { name, rest: false } => {
                    let part = parts.get(i).filter(|p| !p.is_empty())?;
                    params.push((name.clone(), percent_decode(part)));
                    i += 1;
                }
                Segment::Field { name, rest: true } => {
                    let tail = parts.get(i..).filter(|t| !t.is_empty())?;
                    if tail.iter().any(|p| p.is_empty()) {
                        return None;
                    }
                    let value: Vec<String> = tail.iter().map(|p| percent_decode(p)).collect();
                    params.push((name.clone(), value.join("/")));
                    i = parts.len();
                }
            }
        }
        (i == parts.len()).then_some(params)
    }
}

/// The contract's descriptors (with their options, so the HTTP rules are
/// there) and `google.rpc`'s, for errors.
fn pool() -> anyhow::Result<DescriptorPool> {
    let mut pool = DescriptorPool::decode(semel_server::proto::FILE_DESCRIPTOR_SET)?;
    // google.rpc's files import these well-known types.
    let known = DescriptorPool::global();
    for name in [
        "google/protobuf/any.proto",
        "google/protobuf/duration.proto",
    ] {
        if pool.get_file_by_name(name).is_none()
            && let Some(file) = known.get_file_by_name(name)
        {
            pool.add_file_descriptor_proto(file.file_descriptor_proto().clone())?;
        }
    }
    let rpc = prost_types::FileDescriptorSet::decode(tonic_types::pb::FILE_DESCRIPTOR_SET)?;
    pool.add_file_descriptor_protos(rpc.file)?;
    Ok(pool)
}

/// The HTTP status of a gRPC code (as Google's APIs and grpc-gateway map
/// them), with the few reasons that have a more precise one.
pub fn http_status(code: tonic::Code, reason: Option<&str>) -> u16 {
    use tonic::Code::*;
    match reason {
        Some("REQUEST_TOO_LARGE") => return 413,
        Some("REQUEST_TIMEOUT") => return 408,
        Some("METHOD_NOT_ALLOWED") => return 405,
        Some("UNSUPPORTED_MEDIA_TYPE") => return 415,
        _ => {}
    }
    match code {
        Ok => 200,
        Cancelled => 499,
        Unknown | Internal | DataLoss => 500,
        InvalidArgument | FailedPrecondition | OutOfRange => 400,
        DeadlineExceeded => 504,
        NotFound => 404,
        AlreadyExists | Aborted => 409,
        PermissionDenied => 403,
        Unauthenticated => 401,
        ResourceExhausted => 429,
        Unimplemented => 501,
        Unavailable => 503,
    }
}

/// Every HTTP route, by path then method, for the OpenAPI document.
pub fn by_path(api: &HttpApi) -> BTreeMap<String, Vec<&Route>> {
    let mut out: BTreeMap<String, Vec<&Route>> = BTreeMap::new();
    for r in &api.routes {
        out.entry(r.template.openapi_path()).or_default().push(r);
    }
    out
}

#[cfg(test)]
mod tests;
