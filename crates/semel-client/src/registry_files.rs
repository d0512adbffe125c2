//! The registry as files an operator keeps in git and reviews: TOML, one
//! array of tables per kind (`[[organisation]]`, `[[purpose]]`,
//! `[[dataset]]`, `[[authorisation]]`), in any number of `*.toml` files of
//! one directory. `semel registry export` writes one file per kind;
//! `semel registry apply` reads them all, remembering where each item is,
//! so the broker's verdict on `authorisations[3].fields` is shown as
//! `authorisations.toml:42`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use semel_proto as proto;
use serde::{Deserialize, Serialize};

/// The files of an export, each with its name.
pub const FILES: [&str; 4] = [
    "organisations.toml",
    "purposes.toml",
    "datasets.toml",
    "authorisations.toml",
];

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    organisation: Vec<toml::Spanned<Organisation>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    purpose: Vec<toml::Spanned<Purpose>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    dataset: Vec<toml::Spanned<Dataset>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    authorisation: Vec<toml::Spanned<Authorisation>>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Organisation {
    kbo: String,
    name: String,
    roles: Vec<String>,
    /// `suspended` or `active`; absent: as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Purpose {
    code: String,
    description: String,
    legal_basis: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Dataset {
    name: String,
    source: String,
    description: String,
    endpoint: String,
    #[serde(default)]
    keeps_history: bool,
    /// `withdrawn`; absent: published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<String>,
    fields: Vec<Field>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Field {
    name: String,
    /// string, int, bool, date, record, list
    #[serde(rename = "type")]
    field_type: String,
    #[serde(default)]
    description: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Authorisation {
    reference: String,
    consumer: String,
    dataset: String,
    purpose: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    fields: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    check_fields: Vec<String>,
    /// `NAME: check`, as `semel admin authorisation create --question`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    questions: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    capacities: Vec<String>,
    #[serde(default)]
    consent_required: bool,
    #[serde(default)]
    receives_mutations: bool,
    legal_basis: String,
    issuing_body: String,
    valid_from: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    valid_until: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    confidential_until: Option<String>,
    /// `suspended` or `revoked`; absent: active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<String>,
    /// The version these lines were exported from: applying them over a
    /// later version is refused (it would undo what changed since).
    /// Absent: not checked (a new authorisation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<u32>,
}

const FIELD_TYPES: [(&str, proto::FieldType); 6] = [
    ("string", proto::FieldType::String),
    ("int", proto::FieldType::Int),
    ("bool", proto::FieldType::Bool),
    ("date", proto::FieldType::Date),
    ("record", proto::FieldType::Record),
    ("list", proto::FieldType::List),
];

const ROLES: [(&str, proto::OrganisationRole); 5] = [
    ("source", proto::OrganisationRole::Source),
    ("consumer", proto::OrganisationRole::Consumer),
    ("operator", proto::OrganisationRole::Operator),
    ("auditor", proto::OrganisationRole::Auditor),
    ("citizen_portal", proto::OrganisationRole::CitizenPortal),
];

/// The registry as files: (file name, TOML text), one file per kind.
pub fn export(
    organisations: &[proto::Organisation],
    purposes: &[proto::Purpose],
    datasets: &[proto::Dataset],
    authorisations: &[proto::Authorisation],
) -> anyhow::Result<Vec<(&'static str, String)>> {
    let role = |r: &i32| {
        ROLES
            .iter()
            .find(|(_, p)| *p as i32 == *r)
            .map_or("unknown", |(n, _)| *n)
            .to_owned()
    };
    let mut orgs: Vec<&proto::Organisation> = organisations.iter().collect();
    orgs.sort_by(|a, b| a.kbo.cmp(&b.kbo));
    let mut ps: Vec<&proto::Purpose> = purposes.iter().collect();
    ps.sort_by(|a, b| a.code.cmp(&b.code));
    let mut ds: Vec<&proto::Dataset> = datasets.iter().collect();
    ds.sort_by(|a, b| a.name.cmp(&b.name));
    let mut auths: Vec<&proto::Authorisation> = authorisations.iter().collect();
    auths.sort_by(|a, b| a.reference.cmp(&b.reference));

    let files = [
        File {
            organisation: orgs
                .into_iter()
                .map(|o| {
                    toml::Spanned::new(
                        0..0,
                        Organisation {
                            kbo: o.kbo.clone(),
                            name: o.name.clone(),
                            roles: o.roles.iter().map(role).collect(),
                            status: (o.status == proto::OrganisationStatus::Suspended as i32)
                                .then(|| "suspended".to_owned()),
                        },
                    )
                })
                .collect(),
            ..File::default()
        },
        File {
            purpose: ps
                .into_iter()
                .map(|p| {
                    toml::Spanned::new(
                        0..0,
                        Purpose {
                            code: p.code.clone(),
                            description: p.description.clone(),
                            legal_basis: p.legal_basis.clone(),
                        },
                    )
                })
                .collect(),
            ..File::default()
        },
        File {
            dataset: ds
                .into_iter()
                .map(|d| {
                    toml::Spanned::new(
                        0..0,
                        Dataset {
                            name: d.name.clone(),
                            source: d.source_kbo.clone(),
                            description: d.description.clone(),
                            endpoint: d.endpoint.clone(),
                            keeps_history: d.keeps_history,
                            status: d.withdrawn.then(|| "withdrawn".to_owned()),
                            fields: d
                                .fields
                                .iter()
                                .map(|f| Field {
                                    name: f.name.clone(),
                                    field_type: FIELD_TYPES
                                        .iter()
                                        .find(|(_, t)| *t as i32 == f.r#type)
                                        .map_or("unknown", |(n, _)| *n)
                                        .to_owned(),
                                    description: f.description.clone(),
                                })
                                .collect(),
                        },
                    )
                })
                .collect(),
            ..File::default()
        },
        File {
            authorisation: auths
                .into_iter()
                .map(|a| {
                    let opt = |s: &String| (!s.is_empty()).then(|| s.clone());
                    toml::Spanned::new(
                        0..0,
                        Authorisation {
                            reference: a.reference.clone(),
                            consumer: a.consumer_kbo.clone(),
                            dataset: a.dataset.clone(),
                            purpose: a.purpose.clone(),
                            fields: a.fields.clone(),
                            check_fields: a.check_fields.clone(),
                            questions: a.checks.iter().map(crate::checks::question_text).collect(),
                            capacities: a.capacities.clone(),
                            consent_required: a.consent_required,
                            receives_mutations: a.receives_mutations,
                            legal_basis: a.legal_basis.clone(),
                            issuing_body: a.issuing_body.clone(),
                            valid_from: a.valid_from.clone(),
                            valid_until: opt(&a.valid_until),
                            confidential_until: opt(&a.confidential_until),
                            status: match proto::AuthorisationStatus::try_from(a.status) {
                                Ok(proto::AuthorisationStatus::Suspended) => {
                                    Some("suspended".to_owned())
                                }
                                Ok(proto::AuthorisationStatus::Revoked) => {
                                    Some("revoked".to_owned())
                                }
                                _ => None,
                            },
                            version: (a.version > 0).then_some(a.version),
                        },
                    )
                })
                .collect(),
            ..File::default()
        },
    ];
    let heads = [
        "# Organisations: enterprise number (KBO/BCE), legal name, roles (source, consumer,\n# operator, auditor, citizen_portal); status = \"suspended\" suspends, \"active\" reinstates,\n# absent keeps the status as it is.\n",
        "# Purposes: what a lookup is for, and the law that allows it.\n",
        "# Datasets: their source, endpoint and fields (type: string, int, bool, date, record, list).\n",
        "# Authorisations: who may read which fields of which dataset, for what, on which basis.\n# Changing one makes a new version; status = \"suspended\" or \"revoked\" ends it (revoked: for good).\n# `version` is the version exported: a change over a later one is refused; export again after an apply.\n",
    ];
    let mut out = Vec::new();
    for ((name, file), head) in FILES.into_iter().zip(files).zip(heads) {
        let body = toml::to_string_pretty(&file)?;
        out.push((
            name,
            format!(
                "# Semel registry, {name}. Review changes, then `semel registry apply --dry-run`.\n{head}\n{body}"
            ),
        ));
    }
    Ok(out)
}

/// Where an item was read: its file, its first line, and its text.
#[derive(Debug, Clone)]
struct Place {
    file: PathBuf,
    line: usize,
    text: String,
}

/// The registry read from files, and where each item came from.
#[derive(Debug, Default)]
pub struct Read {
    pub request: proto::ApplyRegistryRequest,
    places: BTreeMap<&'static str, Vec<Place>>,
}

/// A `status` of the files: `None` when left out, else the value its word
/// names, or what to say about an unknown word.
fn status_word<T: Copy>(given: Option<&str>, words: &[(&str, T)]) -> Result<Option<T>, String> {
    let Some(given) = given else {
        return Ok(None);
    };
    words
        .iter()
        .find(|(w, _)| *w == given)
        .map(|(_, v)| Some(*v))
        .ok_or_else(|| {
            let known: Vec<&str> = words.iter().map(|(w, _)| *w).collect();
            format!(
                "unknown status {given:?}; use {}, or leave it out",
                known.join(" or ")
            )
        })
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Reads every `*.toml` file of `dir` (in name order). Every error of
/// every file is returned at once, each as `file:line: what`.
pub fn read_dir(dir: &Path) -> Result<Read, Vec<String>> {
    let mut paths: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect(),
        Err(e) => return Err(vec![format!("{}: {e}", dir.display())]),
    };
    paths.sort();
    if paths.is_empty() {
        return Err(vec![format!("{}: no *.toml file", dir.display())]);
    }
    let mut read = Read::default();
    let mut errors = Vec::new();
    for path in paths {
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                errors.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        let file: File = match toml::from_str(&text) {
            Ok(f) => f,
            Err(e) => {
                let line = e.span().map_or(1, |s| line_of(&text, s.start));
                errors.push(format!(
                    "{}:{line}: {}",
                    path.display(),
                    e.message().trim_end()
                ));
                continue;
            }
        };
        // An item's span is its `[[kind]]` header; its text runs to the
        // next header of its kind.
        let place = |span: std::ops::Range<usize>| {
            let start = span.start.min(text.len());
            let header = &text[start..span.end.min(text.len())];
            let end = text[start + header.len()..]
                .find(&format!("\n{header}"))
                .map_or(text.len(), |i| start + header.len() + i);
            Place {
                file: path.clone(),
                line: line_of(&text, start),
                text: text[start..end].to_owned(),
            }
        };
        let mut bad = |span: std::ops::Range<usize>, what: String| {
            errors.push(format!(
                "{}:{}: {what}",
                path.display(),
                line_of(&text, span.start)
            ));
        };
        for o in file.organisation {
            let span = o.span();
            let o = o.into_inner();
            let roles: Vec<i32> = o
                .roles
                .iter()
                .filter_map(|r| match ROLES.iter().find(|(n, _)| n == r) {
                    Some((_, p)) => Some(*p as i32),
                    None => {
                        bad(span.clone(), format!("unknown role {r:?}; use source, consumer, operator, auditor or citizen_portal"));
                        None
                    }
                })
                .collect();
            let status = status_word(
                o.status.as_deref(),
                &[
                    ("active", proto::OrganisationStatus::Active),
                    ("suspended", proto::OrganisationStatus::Suspended),
                ],
            )
            .unwrap_or_else(|e| {
                bad(span.clone(), e);
                None
            })
            .unwrap_or(proto::OrganisationStatus::Unspecified);
            read.request.organisations.push(proto::Organisation {
                kbo: o.kbo,
                name: o.name,
                roles,
                status: status as i32,
                created_at: None,
            });
            read.places
                .entry("organisations")
                .or_default()
                .push(place(span));
        }
        for p in file.purpose {
            let span = p.span();
            let p = p.into_inner();
            read.request.purposes.push(proto::Purpose {
                code: p.code,
                description: p.description,
                legal_basis: p.legal_basis,
            });
            read.places.entry("purposes").or_default().push(place(span));
        }
        for d in file.dataset {
            let span = d.span();
            let d = d.into_inner();
            let fields = d
                .fields
                .into_iter()
                .map(|f| {
                    let t = match FIELD_TYPES.iter().find(|(n, _)| *n == f.field_type) {
                        Some((_, t)) => *t as i32,
                        None => {
                            bad(span.clone(), format!("field {}: unknown type {:?}; use string, int, bool, date, record or list", f.name, f.field_type));
                            0
                        }
                    };
                    proto::FieldDefinition {
                        name: f.name,
                        description: f.description,
                        r#type: t,
                    }
                })
                .collect();
            let withdrawn = status_word(
                d.status.as_deref(),
                &[("published", false), ("withdrawn", true)],
            )
            .unwrap_or_else(|e| {
                bad(span.clone(), e);
                None
            })
            .unwrap_or(false);
            read.request.datasets.push(proto::Dataset {
                withdrawn,
                name: d.name,
                source_kbo: d.source,
                description: d.description,
                fields,
                endpoint: d.endpoint,
                keeps_history: d.keeps_history,
            });
            read.places.entry("datasets").or_default().push(place(span));
        }
        for a in file.authorisation {
            let span = a.span();
            let a = a.into_inner();
            let checks = a
                .questions
                .iter()
                .filter_map(|q| match crate::parse_question(q) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        bad(span.clone(), format!("{e:#}"));
                        None
                    }
                })
                .collect();
            let status = status_word(
                a.status.as_deref(),
                &[
                    ("active", proto::AuthorisationStatus::Active),
                    ("suspended", proto::AuthorisationStatus::Suspended),
                    ("revoked", proto::AuthorisationStatus::Revoked),
                ],
            )
            .unwrap_or_else(|e| {
                bad(span.clone(), e);
                None
            })
            .unwrap_or(proto::AuthorisationStatus::Active);
            read.request.authorisations.push(proto::Authorisation {
                reference: a.reference,
                consumer_kbo: a.consumer,
                dataset: a.dataset,
                fields: a.fields,
                purpose: a.purpose,
                legal_basis: a.legal_basis,
                issuing_body: a.issuing_body,
                valid_from: a.valid_from,
                valid_until: a.valid_until.unwrap_or_default(),
                status: status as i32,
                version: a.version.unwrap_or(0),
                updated_at: None,
                confidential_until: a.confidential_until.unwrap_or_default(),
                check_fields: a.check_fields,
                capacities: a.capacities,
                consent_required: a.consent_required,
                checks,
                receives_mutations: a.receives_mutations,
            });
            read.places
                .entry("authorisations")
                .or_default()
                .push(place(span));
        }
    }
    if errors.is_empty() {
        Ok(read)
    } else {
        Err(errors)
    }
}

/// Names the kind of the request's lists in the files' words.
const FILE_KEYS: [(&str, &str); 6] = [
    ("consumer_kbo", "consumer"),
    ("source_kbo", "source"),
    ("checks", "questions"),
    ("status", "status"),
    ("fields", "fields"),
    ("roles", "roles"),
];

impl Read {
    /// `authorisations[3].fields` as `authorisations.toml:42`: the line of
    /// the item's key when it is written, else the item's first line.
    pub fn locate(&self, field: &str) -> Option<String> {
        self.locate_with(field, "")
    }

    /// As [`Read::locate`]; within a list written over several lines, the
    /// line of the value `description` names (`… has no field shoe_size`).
    pub fn locate_with(&self, field: &str, description: &str) -> Option<String> {
        let (list, rest) = field.split_once('[')?;
        let (index, rest) = rest.split_once(']')?;
        let place = self.places.get(list)?.get(index.parse::<usize>().ok()?)?;
        let key = rest
            .trim_start_matches('.')
            .split(['.', '['])
            .next()
            .unwrap_or_default();
        let key = FILE_KEYS
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(key, |(_, f)| *f);
        let offset = (!key.is_empty())
            .then(|| {
                place.text.lines().position(|l| {
                    l.trim_start()
                        .strip_prefix(key)
                        .is_some_and(|r| r.trim_start().starts_with('='))
                })
            })
            .flatten()
            .unwrap_or(0);
        let words: Vec<String> = description
            .split(|c: char| !(c.is_alphanumeric() || "_./-".contains(c)))
            .filter(|w| w.len() > 1)
            .map(|w| format!("\"{w}\""))
            .collect();
        let lines: Vec<&str> = place.text.lines().collect();
        let mut within = offset;
        if offset > 0 && !words.is_empty() {
            for (i, line) in lines.iter().enumerate().skip(offset) {
                if words.iter().any(|w| line.contains(w.as_str())) {
                    within = i;
                    break;
                }
                if line.trim_end().ends_with(']') {
                    break;
                }
            }
        }
        Some(format!("{}:{}", place.file.display(), place.line + within))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> tempfile_like::Dir {
        let d = tempfile_like::Dir::new();
        for (name, text) in files {
            std::fs::write(d.path().join(name), text).expect("write");
        }
        d
    }

    /// A throwaway directory without a dependency.
    mod tempfile_like {
        pub struct Dir(std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                let p = std::env::temp_dir().join(format!(
                    "semel-registry-files-{}-{:?}",
                    std::process::id(),
                    std::thread::current().id()
                ));
                let _ = std::fs::remove_dir_all(&p);
                std::fs::create_dir_all(&p).expect("dir");
                Dir(p)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn export_then_read_gives_back_the_registry_and_places_items_by_line() {
        let orgs = [proto::Organisation {
            kbo: "0212345668".into(),
            name: "CPAS d'Anderlecht".into(),
            roles: vec![proto::OrganisationRole::Consumer as i32],
            status: proto::OrganisationStatus::Active as i32,
            created_at: None,
        }];
        let auths = [
            proto::Authorisation {
                reference: "BSC/2024/017".into(),
                consumer_kbo: "0212345668".into(),
                dataset: "national_register.residence".into(),
                fields: vec!["street".into()],
                purpose: "RIS_ELIGIBILITY".into(),
                legal_basis: "Loi".into(),
                issuing_body: "BSC".into(),
                valid_from: "2024-03-01".into(),
                status: proto::AuthorisationStatus::Suspended as i32,
                version: 4,
                ..Default::default()
            },
            proto::Authorisation {
                reference: "BSC/2024/018".into(),
                consumer_kbo: "0212345668".into(),
                dataset: "national_register.residence".into(),
                fields: vec!["street".into()],
                purpose: "RIS_ELIGIBILITY".into(),
                legal_basis: "Loi".into(),
                issuing_body: "BSC".into(),
                valid_from: "2024-03-01".into(),
                valid_until: "2029-12-31".into(),
                status: proto::AuthorisationStatus::Active as i32,
                ..Default::default()
            },
        ];
        let files = export(&orgs, &[], &[], &auths).expect("export");
        let owned: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
        let d = dir_with(&owned);
        let read = read_dir(d.path()).expect("read");
        // An active organisation's status is left out: as it is.
        let mut want_orgs = orgs.to_vec();
        want_orgs[0].status = proto::OrganisationStatus::Unspecified as i32;
        assert_eq!(read.request.organisations, want_orgs);
        assert_eq!(read.request.authorisations, auths);
        // The second authorisation's valid_until, by its line.
        let text = &files[3].1;
        let line = text
            .lines()
            .position(|l| l.starts_with("valid_until"))
            .expect("valid_until")
            + 1;
        let at = read
            .locate("authorisations[1].valid_until")
            .expect("located");
        assert!(
            at.ends_with(&format!("authorisations.toml:{line}")),
            "{at} vs {line}"
        );
        let first = read.locate("authorisations[0]").expect("located");
        let head = text
            .lines()
            .position(|l| l.starts_with("[[authorisation]]"))
            .expect("table")
            + 1;
        assert!(first.ends_with(&format!(":{head}")), "{first} vs {head}");
    }

    #[test]
    fn every_error_of_every_file_is_given_with_its_line() {
        let d = dir_with(&[
            (
                "a.toml",
                "[[purpose]]\ncode = \"X\"\ndescription = \"d\"\nlegal_basis = \"l\"\ncolour = \"red\"\n",
            ),
            (
                "b.toml",
                "[[organisation]]\nkbo = \"0212345668\"\nname = \"n\"\nroles = [\"consumer\", \"king\"]\n",
            ),
            ("c.toml", "[[dataset]\n"),
        ]);
        let errors = read_dir(d.path()).expect_err("three files, three errors");
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors[0].contains("a.toml:5") && errors[0].contains("colour"),
            "{errors:?}"
        );
        assert!(
            errors[1].contains("b.toml:1") && errors[1].contains("king"),
            "{errors:?}"
        );
        assert!(errors[2].contains("c.toml:1"), "{errors:?}");
    }
}
