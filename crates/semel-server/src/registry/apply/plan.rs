//! The plan of an apply: the registry as stored, the request checked against the registry as it will be, and every item's action or every broken rule.

use std::collections::BTreeMap;

use semel_core::{
    Authorisation, AuthorisationStatus, Dataset, Kbo, Organisation, OrganisationStatus, Purpose,
    Role,
};
use semel_storage::RegistryStore;
use time::OffsetDateTime;

use crate::convert::*;
use crate::error::ApiError;
use crate::proto::{self, PlannedAction};
use crate::registry::authorisations::{
    amendment_text, authorisation_text, check_authorisation_in, same_content,
};
use crate::registry::datasets::dataset_changes;
use crate::registry::roles_text;

/// The registry as stored.
pub(in crate::registry) struct Current {
    orgs: BTreeMap<Kbo, Organisation>,
    purposes: BTreeMap<String, Purpose>,
    datasets: BTreeMap<String, Dataset>,
    auths: BTreeMap<String, Authorisation>,
}

impl Current {
    pub(in crate::registry) async fn read(reg: &dyn RegistryStore) -> Result<Current, ApiError> {
        Ok(Current {
            orgs: reg
                .organisations()
                .await?
                .into_iter()
                .map(|o| (o.kbo, o))
                .collect(),
            purposes: reg
                .purposes()
                .await?
                .into_iter()
                .map(|p| (p.code.to_string(), p))
                .collect(),
            datasets: reg
                .datasets()
                .await?
                .into_iter()
                .map(|d| (d.name.to_string(), d))
                .collect(),
            auths: reg
                .authorisations()
                .await?
                .into_iter()
                .map(|a| (a.reference.to_string(), a))
                .collect(),
        })
    }
}

/// One write of the plan, with what it replaces (`None`: it is new).
#[derive(Clone)]
#[allow(clippy::large_enum_variant)] // a few per apply, never in a hot path
pub(in crate::registry) enum Write {
    Organisation(Organisation, Option<Organisation>),
    Purpose(Purpose, Option<Purpose>),
    Dataset(Dataset, Option<Dataset>),
    Authorisation(Authorisation, Option<Authorisation>),
}

pub(in crate::registry) struct Plan {
    /// Every item, in the order applied.
    pub changes: Vec<proto::PlannedChange>,
    /// The writes, each with the index of its change.
    pub writes: Vec<(usize, Write)>,
}

/// Collects every broken rule, each named by its item.
#[derive(Default)]
struct Violations(Vec<(String, String)>);

impl Violations {
    /// `e` about item `i` of `list` (e.g. `authorisations`), whose own
    /// field names start with `singular` (`authorisation.fields`).
    fn push(&mut self, list: &str, singular: &str, i: usize, e: ApiError) {
        // A rule about what an item names, said without a field: the field
        // that names it.
        let named = match e.reason {
            "UNKNOWN_PURPOSE" => Some("purpose"),
            "UNKNOWN_DATASET" => Some("dataset"),
            "NOT_A_CONSUMER" | "UNKNOWN_ORGANISATION" if list == "authorisations" => {
                Some("consumer_kbo")
            }
            _ => None,
        };
        let field = match (e.field, named) {
            (Some(f), _) => match f.strip_prefix(singular) {
                Some(rest) => format!("{list}[{i}]{rest}"),
                None => format!("{list}[{i}].{f}"),
            },
            (None, Some(f)) => format!("{list}[{i}].{f}"),
            (None, None) => format!("{list}[{i}]"),
        };
        self.0.push((field, format!("{}: {}", e.reason, e.message)));
    }

    fn say(&mut self, list: &str, i: usize, field: &str, reason: &str, message: String) {
        let at = if field.is_empty() {
            format!("{list}[{i}]")
        } else {
            format!("{list}[{i}].{field}")
        };
        self.0.push((at, format!("{reason}: {message}")));
    }
}

fn change(
    kind: &str,
    key: String,
    index: usize,
    action: PlannedAction,
    detail: String,
) -> proto::PlannedChange {
    proto::PlannedChange {
        kind: kind.to_owned(),
        key,
        index: index as u32,
        action: action as i32,
        detail,
    }
}

fn status_word(s: AuthorisationStatus) -> &'static str {
    match s {
        AuthorisationStatus::Active => "active",
        AuthorisationStatus::Suspended => "suspended",
        AuthorisationStatus::Revoked => "revoked",
    }
}

/// Plans a request against the registry as stored: every item's action,
/// or every broken rule at once.
pub(in crate::registry) fn plan(
    current: &Current,
    req: &proto::ApplyRegistryRequest,
    own: Kbo,
    now: OffsetDateTime,
) -> Result<Plan, ApiError> {
    let mut v = Violations::default();

    // What the request describes, converted; a malformed item is named
    // and left out of the rest of the checks.
    let mut orgs: Vec<(usize, Organisation)> = Vec::new();
    for (i, p) in req.organisations.iter().enumerate() {
        // A status left out keeps the stored one: files written before an
        // emergency suspension do not lift it.
        let status = match proto::OrganisationStatus::try_from(p.status) {
            Ok(proto::OrganisationStatus::Suspended) => Some(OrganisationStatus::Suspended),
            Ok(proto::OrganisationStatus::Active) => Some(OrganisationStatus::Active),
            _ => None,
        };
        match organisation_from_proto(p.clone(), now) {
            Ok(mut o) => {
                o.status = status
                    .or_else(|| current.orgs.get(&o.kbo).map(|c| c.status))
                    .unwrap_or(OrganisationStatus::Active);
                orgs.push((i, o));
            }
            Err(e) => v.push("organisations", "organisation", i, e),
        }
    }
    let mut purposes: Vec<(usize, Purpose)> = Vec::new();
    for (i, p) in req.purposes.iter().enumerate() {
        match purpose_from_proto(p.clone()) {
            Ok(p) => purposes.push((i, p)),
            Err(e) => v.push("purposes", "purpose", i, e),
        }
    }
    let mut datasets: Vec<(usize, Dataset)> = Vec::new();
    for (i, p) in req.datasets.iter().enumerate() {
        match dataset_from_proto(p.clone()) {
            Ok(d) => datasets.push((i, d)),
            Err(e) => v.push("datasets", "dataset", i, e),
        }
    }
    let mut auths: Vec<(usize, Authorisation)> = Vec::new();
    // The version each authorisation was written from (0: not said).
    let mut bases: Vec<u32> = Vec::new();
    for (i, p) in req.authorisations.iter().enumerate() {
        let status = match proto::AuthorisationStatus::try_from(p.status) {
            Ok(proto::AuthorisationStatus::Suspended) => AuthorisationStatus::Suspended,
            Ok(proto::AuthorisationStatus::Revoked) => AuthorisationStatus::Revoked,
            _ => AuthorisationStatus::Active,
        };
        match authorisation_from_proto(p.clone(), now) {
            Ok(mut a) => {
                a.status = status;
                auths.push((i, a));
                bases.push(p.version);
            }
            Err(e) => v.push("authorisations", "authorisation", i, e),
        }
    }

    // Each key once.
    fn once<T>(v: &mut Violations, list: &str, items: &[(usize, T)], key: impl Fn(&T) -> String) {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for (i, item) in items {
            if let Some(first) = seen.insert(key(item), *i) {
                v.say(
                    list,
                    *i,
                    "",
                    "INVALID_ARGUMENT",
                    format!("{} is described twice: also {list}[{first}]", key(item)),
                );
            }
        }
    }
    once(&mut v, "organisations", &orgs, |o| o.kbo.to_string());
    once(&mut v, "purposes", &purposes, |p| p.code.to_string());
    once(&mut v, "datasets", &datasets, |d| d.name.to_string());
    once(&mut v, "authorisations", &auths, |a| {
        a.reference.to_string()
    });

    // The registry as it will be.
    let mut will_orgs = current.orgs.clone();
    for (_, o) in &orgs {
        let mut o = o.clone();
        if let Some(c) = current.orgs.get(&o.kbo) {
            o.created_at = c.created_at;
        }
        will_orgs.insert(o.kbo, o);
    }
    let mut will_purposes = current.purposes.clone();
    for (_, p) in &purposes {
        will_purposes.insert(p.code.to_string(), p.clone());
    }
    let mut will_datasets = current.datasets.clone();
    for (_, d) in &datasets {
        will_datasets.insert(d.name.to_string(), d.clone());
    }
    let mut will_auths = current.auths.clone();
    for (_, a) in &auths {
        will_auths.insert(a.reference.to_string(), a.clone());
    }
    let live = |a: &&Authorisation| a.status != AuthorisationStatus::Revoked;

    let mut changes = Vec::new();
    let mut writes = Vec::new();

    for (i, o) in &orgs {
        let before = current.orgs.get(&o.kbo);
        if let Some(b) = before {
            for dropped in b.roles.difference(&o.roles) {
                let why = match dropped {
                    Role::Consumer => {
                        let held: Vec<&str> = will_auths
                            .values()
                            .filter(live)
                            .filter(|a| a.consumer == o.kbo)
                            .map(|a| a.reference.as_str())
                            .collect();
                        (!held.is_empty())
                            .then(|| format!("it holds authorisations {}", held.join(", ")))
                    }
                    Role::Source => {
                        let published: Vec<&str> = will_datasets
                            .values()
                            .filter(|d| d.source == o.kbo && !d.withdrawn)
                            .map(|d| d.name.as_str())
                            .collect();
                        (!published.is_empty())
                            .then(|| format!("it publishes {}", published.join(", ")))
                    }
                    Role::Operator if o.kbo == own => Some(
                        "it is your own organisation, and its administrators would lose the registry"
                            .to_owned(),
                    ),
                    _ => None,
                };
                if let Some(why) = why {
                    v.say(
                        "organisations",
                        *i,
                        "roles",
                        "ROLE_IN_USE",
                        format!(
                            "organisation {} cannot stop being a {}: {why}",
                            o.kbo,
                            format!("{dropped:?}").to_lowercase()
                        ),
                    );
                }
            }
        }
        if o.kbo == own && o.status == OrganisationStatus::Suspended {
            v.say(
                "organisations",
                *i,
                "status",
                "INVALID_ARGUMENT",
                "you would suspend your own organisation, and lose the registry".to_owned(),
            );
        }
        let after = Organisation {
            created_at: before.map_or(o.created_at, |b| b.created_at),
            ..o.clone()
        };
        let (action, detail) = match before {
            None => (
                PlannedAction::Create,
                format!(
                    "with roles {}; name: {}",
                    roles_text(&o.roles),
                    crate::registry::quoted(&o.name)
                ),
            ),
            Some(b) => {
                let mut what = Vec::new();
                if b.roles != o.roles {
                    what.push(format!(
                        "roles [{}] → [{}]",
                        roles_text(&b.roles),
                        roles_text(&o.roles)
                    ));
                }
                if b.name != o.name {
                    what.push(format!(
                        "name {} → {}",
                        crate::registry::quoted(&b.name),
                        crate::registry::quoted(&o.name)
                    ));
                }
                let status = b.status != o.status;
                if status {
                    what.push(format!("status {:?} → {:?}", b.status, o.status).to_lowercase());
                }
                // A status change is classed as its status action whatever
                // else changes with it, so its rules (and its word in the
                // log) are never lost in an amendment.
                let action = if what.is_empty() {
                    PlannedAction::Unchanged
                } else if !status {
                    PlannedAction::Amend
                } else if o.status == OrganisationStatus::Suspended {
                    PlannedAction::Suspend
                } else {
                    PlannedAction::Reinstate
                };
                (action, what.join("; "))
            }
        };
        if action != PlannedAction::Unchanged {
            writes.push((changes.len(), Write::Organisation(after, before.cloned())));
        }
        changes.push(change(
            "organisation",
            o.kbo.to_string(),
            *i,
            action,
            detail,
        ));
    }

    for (i, p) in &purposes {
        let before = current.purposes.get(p.code.as_str());
        let (action, detail) = match before {
            None => (
                PlannedAction::Create,
                format!(
                    "description: {}; legal basis: {}",
                    crate::registry::quoted(&p.description),
                    crate::registry::quoted(&p.legal_basis)
                ),
            ),
            Some(b) if b == p => (PlannedAction::Unchanged, String::new()),
            Some(b) => {
                let mut what = Vec::new();
                if b.description != p.description {
                    what.push("description changed".to_owned());
                }
                if b.legal_basis != p.legal_basis {
                    what.push(format!(
                        "legal basis {} → {}",
                        crate::registry::quoted(&b.legal_basis),
                        crate::registry::quoted(&p.legal_basis)
                    ));
                }
                (PlannedAction::Amend, what.join("; "))
            }
        };
        if action != PlannedAction::Unchanged {
            writes.push((changes.len(), Write::Purpose(p.clone(), before.cloned())));
        }
        changes.push(change("purpose", p.code.to_string(), *i, action, detail));
    }

    for (i, d) in &datasets {
        let unchanged = current.datasets.get(d.name.as_str()) == Some(d);
        match will_orgs.get(&d.source) {
            _ if unchanged => {}
            Some(o) if o.roles.contains(&Role::Source) => {}
            Some(_) => v.say(
                "datasets",
                *i,
                "source_kbo",
                "NOT_A_SOURCE",
                format!("organisation {} is not registered as a source", d.source),
            ),
            None => v.say(
                "datasets",
                *i,
                "source_kbo",
                "UNKNOWN_ORGANISATION",
                format!("no organisation {} is registered or described", d.source),
            ),
        }
        let before = current.datasets.get(d.name.as_str());
        if let Some(b) = before
            && b.withdrawn
            && b != d
        {
            v.say(
                "datasets",
                *i,
                "",
                "DATASET_WITHDRAWN",
                format!("dataset {} was withdrawn: it can no longer change", b.name),
            );
        }
        if before.is_none() && d.withdrawn {
            v.say(
                "datasets",
                *i,
                "status",
                "INVALID_ARGUMENT",
                format!("dataset {} is new: it cannot be withdrawn", d.name),
            );
        }
        if d.withdrawn && before.is_some_and(|b| !b.withdrawn) && req.reason.trim().is_empty() {
            v.say(
                "datasets",
                *i,
                "status",
                "INVALID_ARGUMENT",
                format!(
                    "withdrawing {} is final: give the apply a reason (--reason)",
                    d.name
                ),
            );
        }
        if let Some(b) = before {
            if b.source != d.source {
                v.say(
                    "datasets",
                    *i,
                    "source_kbo",
                    "IMMUTABLE_FIELD",
                    format!(
                        "dataset {} is published by {}; another source publishes another dataset",
                        b.name, b.source
                    ),
                );
            }
            for f in b.fields.iter().filter(|f| {
                d.field(f.name.as_str())
                    .is_none_or(|n| n.field_type != f.field_type)
            }) {
                let users: Vec<&str> = will_auths
                    .values()
                    .filter(live)
                    .filter(|a| {
                        a.dataset == d.name
                            && (a.fields.contains(&f.name)
                                || a.check_fields.contains(&f.name)
                                || a.checks.iter().any(|r| r.field == f.name))
                    })
                    .map(|a| a.reference.as_str())
                    .collect();
                if !users.is_empty() {
                    v.say(
                        "datasets",
                        *i,
                        "fields",
                        "FIELD_IN_USE",
                        format!(
                            "field {} of {} is named by authorisations {}",
                            f.name,
                            d.name,
                            users.join(", ")
                        ),
                    );
                }
            }
        }
        let (action, detail) = match before {
            None => (
                PlannedAction::Create,
                format!(
                    "of {}, fields {}, endpoint {}",
                    d.source,
                    d.fields
                        .iter()
                        .map(|f| f.name.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    d.endpoint
                ),
            ),
            Some(b) if b == d => (PlannedAction::Unchanged, String::new()),
            Some(b) if d.withdrawn && !b.withdrawn => {
                (PlannedAction::Withdraw, dataset_changes(b, d).join("; "))
            }
            Some(b) => (PlannedAction::Amend, dataset_changes(b, d).join("; ")),
        };
        if action != PlannedAction::Unchanged {
            writes.push((changes.len(), Write::Dataset(d.clone(), before.cloned())));
        }
        changes.push(change("dataset", d.name.to_string(), *i, action, detail));
    }

    for (auth_position, (i, a)) in auths.iter().enumerate() {
        let before = current.auths.get(a.reference.as_str());
        if let Some(b) = before {
            for (field, was, is) in [
                (
                    "consumer_kbo",
                    b.consumer.to_string(),
                    a.consumer.to_string(),
                ),
                ("dataset", b.dataset.to_string(), a.dataset.to_string()),
            ] {
                if was != is {
                    v.say(
                        "authorisations",
                        *i,
                        field,
                        "IMMUTABLE_FIELD",
                        format!(
                            "authorisation {} is for {was}, not {is}; for another, describe a new authorisation",
                            b.reference
                        ),
                    );
                }
            }
        }
        let (action, after) = match before {
            None => {
                if a.status == AuthorisationStatus::Revoked {
                    v.say(
                        "authorisations",
                        *i,
                        "status",
                        "INVALID_ARGUMENT",
                        format!("authorisation {} is new: it cannot be revoked", a.reference),
                    );
                }
                (PlannedAction::Create, a.clone())
            }
            Some(b) => {
                let after = Authorisation {
                    version: b.version + 1,
                    updated_at: now,
                    ..a.clone()
                };
                let content_same = same_content(
                    b,
                    &Authorisation {
                        status: b.status,
                        ..after.clone()
                    },
                );
                // A status change is classed as its status action whatever
                // else changes with it: a revocation that also amends is a
                // revocation (it needs its reason, and the log says so).
                let action = if content_same && b.status == a.status {
                    PlannedAction::Unchanged
                } else if b.status == AuthorisationStatus::Revoked {
                    v.say(
                        "authorisations",
                        *i,
                        "",
                        "AUTHORISATION_ENDED",
                        format!(
                            "authorisation {} was revoked at version {}: it can no longer change",
                            b.reference, b.version
                        ),
                    );
                    PlannedAction::Unchanged
                } else if b.status == a.status {
                    PlannedAction::Amend
                } else {
                    match a.status {
                        AuthorisationStatus::Active => PlannedAction::Reinstate,
                        AuthorisationStatus::Suspended => PlannedAction::Suspend,
                        AuthorisationStatus::Revoked => PlannedAction::Revoke,
                    }
                };
                (action, after)
            }
        };
        // What does not change is not judged again: a revoked authorisation
        // whose field or consumer role has since gone stays history.
        if action != PlannedAction::Unchanged {
            if let Err(e) = check_authorisation_in(
                will_orgs.get(&a.consumer),
                will_purposes.contains_key(a.purpose.as_str()),
                will_datasets.get(a.dataset.as_str()),
                a,
            ) {
                v.push("authorisations", "authorisation", *i, e);
            }
            // Written from an older version than the stored one: applying
            // would undo what changed since (an emergency suspension, an
            // approved application, a single amendment).
            let base = bases[auth_position];
            if let Some(b) = before
                && base != b.version
            {
                let described = if base == 0 {
                    "no version".to_owned()
                } else {
                    format!("version {base}")
                };
                v.say(
                    "authorisations",
                    *i,
                    "version",
                    "CONFLICT",
                    format!(
                        "authorisation {} is at version {}; these files describe {described}: export again (or merge what changed, see `semel admin authorisation versions {}`)",
                        b.reference, b.version, b.reference
                    ),
                );
            }
            if action == PlannedAction::Revoke && req.reason.trim().is_empty() {
                v.say(
                    "authorisations",
                    *i,
                    "status",
                    "INVALID_ARGUMENT",
                    format!(
                        "revoking {} is final: give the apply a reason (--reason)",
                        a.reference
                    ),
                );
            }
        }
        let detail = match (action, before) {
            (PlannedAction::Create, _) => authorisation_text(a),
            (PlannedAction::Unchanged, _) | (_, None) => String::new(),
            (_, Some(b)) => {
                let mut what = vec![format!("v{} → v{}", b.version, after.version)];
                let amended = amendment_text(b, &after);
                if !amended.is_empty() {
                    what.push(amended);
                }
                if b.status != after.status {
                    what.push(format!(
                        "status {} → {}",
                        status_word(b.status),
                        status_word(after.status)
                    ));
                }
                what.join("; ")
            }
        };
        if action != PlannedAction::Unchanged {
            writes.push((changes.len(), Write::Authorisation(after, before.cloned())));
        }
        changes.push(change(
            "authorisation",
            a.reference.to_string(),
            *i,
            action,
            detail,
        ));
    }

    // Each change's entry states it whole: one too large for an entry is
    // refused here, in the plan (and its dry run), never recorded cut.
    // The room left for the entry's own words, the apply's id and reason.
    for c in &changes {
        let framing = c.kind.len() + c.key.len() + 64 + 2 * semel_core::MAX_QUOTED;
        let written = semel_core::redact_national_numbers(&c.detail).len() + framing;
        if written > semel_core::MAX_DETAIL {
            v.say(
                &format!("{}s", c.kind),
                c.index as usize,
                "",
                "INVALID_ARGUMENT",
                format!(
                    "{} {} is too large a change for its audit entry to state whole ({written} bytes, at most {}): make it in smaller steps",
                    c.kind,
                    c.key,
                    semel_core::MAX_DETAIL
                ),
            );
        }
    }
    if v.0.is_empty() {
        return Ok(Plan { changes, writes });
    }
    let n = v.0.len();
    let first = v.0[0].clone();
    Err(ApiError {
        violations: v.0.into_boxed_slice(),
        ..ApiError::new(
            tonic::Code::InvalidArgument,
            "REGISTRY_INVALID",
            format!(
                "the registry described breaks {n} rule{}, nothing was applied; first: {}: {}",
                if n == 1 { "" } else { "s" },
                first.0,
                first.1
            ),
        )
    })
}
