//! The reference of the gRPC contract (`docs/api-reference.md`), rendered
//! from the compiled descriptors and their comments, so it cannot say
//! anything `proto/` does not. A unit test keeps the file current; run it
//! with `SEMEL_WRITE_DOCS=1` to rewrite the file after changing `proto/`.

use std::collections::HashMap;
use std::fmt::Write as _;

use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet};

/// The Markdown reference of every `semel.v1` file.
pub fn render() -> String {
    let set =
        FileDescriptorSet::decode(semel_server::proto::FILE_DESCRIPTOR_SET).unwrap_or_default();
    let mut out = String::from(
        "# gRPC contract reference\n\n\
         Generated from [`proto/semel/v1`](../proto/semel/v1) and its comments (`crates/semel-http/src/reference.rs`); \
         do not edit by hand. Every call needs mutual TLS and a person's token (see the \
         [integration guide](integration-guide.md)), but ApplyForMembership, which an organisation \
         not registered yet makes with its certificate alone; who may call what is in \
         [permissions.md](permissions.md). Errors carry a `google.rpc.ErrorInfo` with domain \
         `semel.brussels`. The HTTP/JSON column is each RPC's `google.api.http` rule: the \
         [HTTP/JSON face](integration-guide.md#httpjson) serves it ([openapi.json](openapi.json)).\n",
    );
    let mut files: Vec<&FileDescriptorProto> = set
        .file
        .iter()
        .filter(|f| f.package() == "semel.v1")
        .collect();
    files.sort_by_key(|f| order(f.name()));
    // The HTTP/JSON route of each RPC, from its google.api.http rule.
    let routes: HashMap<String, String> = crate::transcode::HttpApi::load()
        .map(|api| {
            api.routes
                .iter()
                .map(|r| {
                    (
                        r.rule.method.to_owned(),
                        format!("`{} {}`", r.verb, r.template.text),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    for file in files {
        render_file(&mut out, file, &routes);
    }
    out
}

fn order(name: &str) -> usize {
    ["lookup", "registry", "audit", "source", "values"]
        .iter()
        .position(|n| name.ends_with(&format!("/{n}.proto")))
        .unwrap_or(99)
}

fn render_file(out: &mut String, file: &FileDescriptorProto, routes: &HashMap<String, String>) {
    let comments: HashMap<Vec<i32>, String> = file
        .source_code_info
        .as_ref()
        .map(|info| {
            info.location
                .iter()
                .filter_map(|l| {
                    let text = l.leading_comments().trim();
                    (!text.is_empty()).then(|| (l.path.clone(), one_paragraph(text)))
                })
                .collect()
        })
        .unwrap_or_default();
    let comment = |path: &[i32]| comments.get(path).cloned().unwrap_or_default();
    let _ = write!(out, "\n## `{}`\n", file.name());
    for (si, service) in file.service.iter().enumerate() {
        let _ = write!(
            out,
            "\n### service `{}`\n\n{}\n\n| RPC | HTTP/JSON | request → response | what it does |\n|---|---|---|---|\n",
            service.name(),
            comment(&[6, si as i32])
        );
        for (mi, m) in service.method.iter().enumerate() {
            let route = routes
                .get(&format!(
                    "{}.{}/{}",
                    file.package(),
                    service.name(),
                    m.name()
                ))
                .map_or("—", String::as_str);
            let _ = writeln!(
                out,
                "| `{}` | {route} | `{}` → `{}` | {} |",
                m.name(),
                short(m.input_type()),
                short(m.output_type()),
                comment(&[6, si as i32, 2, mi as i32])
            );
        }
    }
    for (ei, e) in file.enum_type.iter().enumerate() {
        let _ = write!(
            out,
            "\n### enum `{}`\n\n{}\n\n| value | number | meaning |\n|---|---|---|\n",
            e.name(),
            comment(&[5, ei as i32])
        );
        for (vi, v) in e.value.iter().enumerate() {
            let _ = writeln!(
                out,
                "| `{}` | {} | {} |",
                v.name(),
                v.number(),
                comment(&[5, ei as i32, 2, vi as i32])
            );
        }
    }
    for (mi, m) in file.message_type.iter().enumerate() {
        let _ = write!(
            out,
            "\n### message `{}`\n\n{}\n",
            m.name(),
            comment(&[4, mi as i32])
        );
        if m.field.is_empty() {
            continue;
        }
        out.push_str("\n| field | number | type | meaning |\n|---|---|---|---|\n");
        for (fi, f) in m.field.iter().enumerate() {
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {} |",
                f.name(),
                f.number(),
                field_type(f, m),
                comment(&[4, mi as i32, 2, fi as i32])
            );
        }
    }
}

fn one_paragraph(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

fn short(type_name: &str) -> &str {
    type_name.rsplit('.').next().unwrap_or(type_name)
}

fn field_type(f: &FieldDescriptorProto, m: &prost_types::DescriptorProto) -> String {
    // Map fields are repeated entries of a nested *Entry message.
    if let Some(entry) = m.nested_type.iter().find(|n| {
        n.options.as_ref().is_some_and(|o| o.map_entry()) && short(f.type_name()) == n.name()
    }) {
        let kv: Vec<String> = entry.field.iter().map(scalar).collect();
        return format!("map<{}>", kv.join(", "));
    }
    let base = scalar(f);
    let oneof = f
        .oneof_index
        .filter(|_| !f.proto3_optional())
        .and_then(|i| m.oneof_decl.get(i as usize))
        .map(|o| format!(" (oneof `{}`)", o.name()))
        .unwrap_or_default();
    if f.label() == Label::Repeated {
        format!("repeated {base}{oneof}")
    } else {
        format!("{base}{oneof}")
    }
}

fn scalar(f: &FieldDescriptorProto) -> String {
    match f.r#type() {
        Type::Message | Type::Enum => format!("`{}`", short(f.type_name())),
        other => format!("{other:?}").to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_reference_in_docs_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/api-reference.md");
        let rendered = super::render();
        if std::env::var_os("SEMEL_WRITE_DOCS").is_some() {
            std::fs::write(path, &rendered).expect("write docs/api-reference.md");
        }
        let current = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            current == rendered,
            "docs/api-reference.md is out of date: run `SEMEL_WRITE_DOCS=1 cargo test -p semel-http reference`"
        );
        assert!(rendered.contains("### service `LookupService`"));
        assert!(rendered.contains("| `Lookup` |"));
    }
}
