//! The OpenAPI 3.1 document of the HTTP/JSON face, generated from the same
//! descriptors and `google.api.http` rules the face routes by
//! (`transcode`), with the canonical proto3 JSON mapping's schemas and the
//! contract's comments. The broker serves it at `/openapi.json`; a unit
//! test keeps `docs/openapi.json` current (`SEMEL_WRITE_DOCS=1` rewrites it).

use std::collections::BTreeMap;

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};

use crate::transcode::{BodyRule, HttpApi, Route, by_path};

/// The document, as pretty JSON.
pub fn render(api: &HttpApi) -> Vec<u8> {
    let mut schemas = Schemas::default();
    let mut paths = Map::new();
    for (path, routes) in by_path(api) {
        let mut item = Map::new();
        for route in routes {
            item.insert(
                route.verb.as_str().to_ascii_lowercase(),
                operation(route, &mut schemas),
            );
        }
        paths.insert(path, Value::Object(item));
    }
    // The error and the details Semel puts in it.
    for name in [
        "google.rpc.Status",
        "google.rpc.ErrorInfo",
        "google.rpc.BadRequest",
        "google.rpc.RetryInfo",
    ] {
        if let Some(m) = api.pool().get_message_by_name(name) {
            schemas.message(&m);
        }
    }
    let mut components = Map::new();
    components.insert("schemas".into(), Value::Object(schemas.done));
    components.insert(
        "securitySchemes".into(),
        json!({
            "organisation": {
                "type": "mutualTLS",
                "description": "the organisation's client certificate, issued under a CA the broker trusts, with the enterprise number in organizationIdentifier (NTRBE-<number>)"
            },
            "person": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "the end user's token from a trusted issuer: who, for which organisation, in which roles"
            }
        }),
    );
    components.insert(
        "responses".into(),
        json!({
            "Error": {
                "description": "Refused or failed: the JSON of a google.rpc.Status. `code` is the gRPC code, `message` a sentence for a person, `details` holds a google.rpc.ErrorInfo (domain semel.brussels) whose `reason` is the stable reason code and whose `metadata.request_id` is the request id, and where useful a google.rpc.BadRequest (the field at fault) and a google.rpc.RetryInfo. The HTTP status follows the gRPC code (INVALID_ARGUMENT 400, UNAUTHENTICATED 401, PERMISSION_DENIED 403, NOT_FOUND 404, ALREADY_EXISTS 409, RESOURCE_EXHAUSTED 429, UNAVAILABLE 503, DEADLINE_EXCEEDED 504, INTERNAL 500), but REQUEST_TOO_LARGE is 413, METHOD_NOT_ALLOWED 405 and UNSUPPORTED_MEDIA_TYPE 415.",
                "headers": {
                    "x-request-id": { "$ref": "#/components/headers/RequestId" }
                },
                "content": {
                    "application/json": {
                        "schema": { "$ref": "#/components/schemas/google.rpc.Status" }
                    }
                }
            }
        }),
    );
    components.insert(
        "headers".into(),
        json!({
            "RequestId": {
                "description": "the request id, as the audit log records it (also in the body: `requestId`, or the ErrorInfo's metadata.request_id)",
                "schema": { "type": "string" }
            }
        }),
    );
    let doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Semel HTTP/JSON API",
            "version": "v1",
            "description": "The HTTP/JSON face of Semel's gRPC contract (semel.v1), generated from its google.api.http rules: the same operations, identity, rules and audit as the gRPC face. Every call needs mutual TLS with the organisation's certificate and the person's token as `Authorization: Bearer`. Bodies and answers use the canonical proto3 JSON mapping: lowerCamelCase names, 64-bit integers as strings, enums by name, timestamps in RFC 3339, bytes in base64; fields at their default value are left out of answers; unknown fields are refused. National numbers are never put in a path or a query: operations keyed by a citizen take the number in the body (POST …:search).",
        },
        "security": [ { "organisation": [], "person": [] } ],
        "paths": paths,
        "components": components,
    });
    let mut out = serde_json::to_vec_pretty(&doc).unwrap_or_default();
    out.push(b'\n');
    out
}

fn operation(route: &Route, schemas: &mut Schemas) -> Value {
    let method = &route.method;
    let input = method.input();
    let path_fields: Vec<&str> = route.template.fields().collect();
    let mut op = Map::new();
    op.insert(
        "operationId".into(),
        json!(format!(
            "{}_{}",
            method.parent_service().name(),
            method.name()
        )),
    );
    op.insert("tags".into(), json!([method.parent_service().name()]));
    let (summary, description) = comment(&method.parent_file(), method.path());
    if let Some(s) = summary {
        op.insert("summary".into(), json!(s));
    }
    let mut description = description.unwrap_or_default();
    if !description.is_empty() {
        description.push_str("\n\n");
    }
    description.push_str(&format!(
        "gRPC: `{}`. Who may call it: {}.",
        route.rule.method,
        route
            .rule
            .roles
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    op.insert("description".into(), json!(description));
    let mut parameters = Vec::new();
    for name in &path_fields {
        if let Some(f) = input.get_field_by_name(name) {
            parameters.push(json!({
                "name": name,
                "in": "path",
                "required": true,
                "schema": schemas.field(&f),
            }));
        }
    }
    match &route.body {
        BodyRule::None => {
            for f in input.fields() {
                if path_fields.contains(&f.name()) || f.is_map() {
                    continue;
                }
                if matches!(f.kind(), Kind::Message(m) if m.full_name() != "google.protobuf.Timestamp")
                {
                    continue;
                }
                parameters.push(json!({
                    "name": f.json_name(),
                    "in": "query",
                    "required": false,
                    "schema": schemas.field(&f),
                }));
            }
        }
        BodyRule::Whole => {
            let schema = if route.streams_in() {
                schemas.message(&input);
                json!({
                    "type": "array",
                    "items": { "$ref": reference(&input) },
                })
            } else if path_fields.is_empty() {
                schemas.message(&input)
            } else {
                schemas.object(&input, &path_fields)
            };
            op.insert(
                "requestBody".into(),
                json!({
                    "required": true,
                    "content": { "application/json": { "schema": schema } }
                }),
            );
        }
        BodyRule::Field(f) => {
            op.insert(
                "requestBody".into(),
                json!({
                    "required": true,
                    "content": { "application/json": { "schema": schemas.field(f) } }
                }),
            );
        }
    }
    if !parameters.is_empty() {
        op.insert("parameters".into(), Value::Array(parameters));
    }
    let output = method.output();
    schemas.message(&output);
    let answer = if route.streams_out() {
        json!({ "type": "array", "items": { "$ref": reference(&output) } })
    } else {
        json!({ "$ref": reference(&output) })
    };
    let mut ok = json!({
        "description": "OK",
        "content": { "application/json": { "schema": answer } }
    });
    if output.get_field_by_name("request_id").is_some() {
        ok["headers"] = json!({ "x-request-id": { "$ref": "#/components/headers/RequestId" } });
    }
    op.insert(
        "responses".into(),
        json!({
            "200": ok,
            "default": { "$ref": "#/components/responses/Error" }
        }),
    );
    Value::Object(op)
}

fn reference(m: &MessageDescriptor) -> String {
    format!("#/components/schemas/{}", m.full_name())
}

/// The leading comment at `path` in `file`: its first sentence, and all
/// of it.
fn comment(file: &prost_reflect::FileDescriptor, path: &[i32]) -> (Option<String>, Option<String>) {
    let text = file
        .file_descriptor_proto()
        .source_code_info
        .as_ref()
        .and_then(|info| info.location.iter().find(|l| l.path == path))
        .and_then(|l| l.leading_comments.as_deref())
        .map(|t| t.split_whitespace().collect::<Vec<_>>().join(" "));
    match text {
        Some(t) if !t.is_empty() => {
            let summary = t
                .split(". ")
                .next()
                .unwrap_or(&t)
                .trim_end_matches('.')
                .to_owned();
            (Some(summary), Some(t))
        }
        _ => (None, None),
    }
}

/// The schemas made so far, by message name.
#[derive(Default)]
struct Schemas {
    done: Map<String, Value>,
}

impl Schemas {
    /// A reference to the message's schema, made if needed.
    fn message(&mut self, m: &MessageDescriptor) -> Value {
        let name = m.full_name().to_owned();
        if let Some(known) = well_known(m.full_name()) {
            return known;
        }
        if !self.done.contains_key(&name) {
            // Placed first, so a recursive message refers to itself.
            self.done.insert(name.clone(), Value::Null);
            let schema = self.object(m, &[]);
            self.done.insert(name.clone(), schema);
        }
        json!({ "$ref": format!("#/components/schemas/{name}") })
    }

    /// The message's object schema, without the fields `except` (bound by
    /// the path).
    fn object(&mut self, m: &MessageDescriptor, except: &[&str]) -> Value {
        let mut properties = BTreeMap::new();
        for f in m.fields() {
            if except.contains(&f.name()) {
                continue;
            }
            let mut schema = self.field(&f);
            // OpenAPI 3.1 allows a description beside a $ref.
            let (_, description) = comment(&m.parent_file(), f.path());
            if let (Some(d), Some(obj)) = (description, schema.as_object_mut()) {
                obj.insert("description".into(), json!(d));
            }
            properties.insert(f.json_name().to_owned(), schema);
        }
        let mut schema = json!({
            "type": "object",
            "properties": properties,
            "additionalProperties": false,
        });
        let (_, description) = comment(&m.parent_file(), m.path());
        if let Some(d) = description {
            schema["description"] = json!(d);
        }
        schema
    }

    /// A field's schema (repeated and maps included).
    fn field(&mut self, f: &FieldDescriptor) -> Value {
        if f.is_map()
            && let Kind::Message(entry) = f.kind()
        {
            let value = entry.map_entry_value_field();
            return json!({
                "type": "object",
                "additionalProperties": self.single(&value),
            });
        }
        let one = self.single(f);
        if f.is_list() {
            json!({ "type": "array", "items": one })
        } else {
            one
        }
    }

    fn single(&mut self, f: &FieldDescriptor) -> Value {
        match f.kind() {
            Kind::Double | Kind::Float => json!({ "type": "number" }),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                json!({ "type": "integer", "format": "int32" })
            }
            Kind::Uint32 | Kind::Fixed32 => {
                json!({ "type": "integer", "format": "int32", "minimum": 0 })
            }
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
                json!({ "type": "string", "format": "int64", "pattern": "^-?[0-9]{1,18}$" })
            }
            Kind::Uint64 | Kind::Fixed64 => {
                json!({ "type": "string", "format": "uint64", "pattern": "^[0-9]{1,19}$" })
            }
            Kind::Bool => json!({ "type": "boolean" }),
            Kind::String => json!({ "type": "string" }),
            Kind::Bytes => json!({ "type": "string", "contentEncoding": "base64" }),
            Kind::Enum(e) => {
                let names: Vec<String> = e.values().map(|v| v.name().to_owned()).collect();
                json!({ "type": "string", "enum": names })
            }
            Kind::Message(m) => self.message(&m),
        }
    }
}

/// The canonical JSON of the well-known types the contract uses.
fn well_known(name: &str) -> Option<Value> {
    Some(match name {
        "google.protobuf.Timestamp" => json!({ "type": "string", "format": "date-time" }),
        "google.protobuf.Duration" => {
            json!({ "type": "string", "pattern": "^-?[0-9]+(\\.[0-9]+)?s$" })
        }
        "google.protobuf.Any" => json!({
            "type": "object",
            "properties": { "@type": { "type": "string" } },
            "required": ["@type"],
            "additionalProperties": true
        }),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_openapi_document_in_docs_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
        let api = crate::transcode::HttpApi::load().expect("routes");
        let rendered = super::render(&api);
        if std::env::var_os("SEMEL_WRITE_DOCS").is_some() {
            std::fs::write(path, &rendered).expect("write docs/openapi.json");
        }
        let current = std::fs::read(path).unwrap_or_default();
        assert!(
            current == rendered,
            "docs/openapi.json is out of date: run `SEMEL_WRITE_DOCS=1 cargo test -p semel-http --lib reference openapi`"
        );
        let doc: serde_json::Value = serde_json::from_slice(&rendered).expect("json");
        assert_eq!(doc["openapi"], "3.1.0");
        assert!(doc["paths"]["/v1/lookups"]["post"]["requestBody"].is_object());
        assert!(doc["components"]["schemas"]["semel.v1.LookupResponse"].is_object());
        assert!(doc["components"]["schemas"]["google.rpc.ErrorInfo"].is_object());
    }
}
