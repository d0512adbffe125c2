//! Who may call what: the permission matrix, one row per RPC.
//!
//! `docs/permissions.md` shows the same table; a unit test compares the two,
//! and an end-to-end test calls every RPC with every role, so the table, the
//! document and the code cannot drift apart. An RPC missing from the table
//! is refused to everyone.
//!
//! Rows decide which roles may call an RPC at all. Some RPCs narrow further
//! by what the caller asks for (a consumer sees only its own authorisations,
//! a citizen only their own accesses); those rules live with the RPC.

use semel_core::UserRole::{self, Admin, Auditor, Citizen, Consumer, Source};
use tonic::codegen::http;

/// One RPC and the roles that may call it.
#[derive(Debug)]
pub struct Rule {
    /// `package.Service/Method`, e.g. `semel.v1.LookupService/Lookup`.
    pub method: &'static str,
    pub roles: &'static [UserRole],
}

const READERS: &[UserRole] = &[Admin, Consumer, Source, Auditor];

/// The matrix.
pub const RULES: &[Rule] = &[
    rule("semel.v1.LookupService/Lookup", &[Consumer]),
    rule("semel.v1.LookupService/LookupBatch", &[Consumer]),
    rule("semel.v1.PersonsService/RegisterFile", &[Consumer]),
    rule("semel.v1.PersonsService/CloseFile", &[Consumer]),
    rule("semel.v1.PersonsService/ListFiles", &[Consumer]),
    rule(
        "semel.v1.PersonsService/ReplaceNationalNumber",
        &[Admin, Source],
    ),
    rule(
        "semel.v1.PersonsService/UndoNumberReplacement",
        &[Admin, Source],
    ),
    rule("semel.v1.ConsentService/GiveConsent", &[Consumer, Citizen]),
    rule(
        "semel.v1.ConsentService/WithdrawConsent",
        &[Consumer, Citizen],
    ),
    rule(
        "semel.v1.ConsentService/ListConsents",
        &[Consumer, Citizen, Auditor],
    ),
    rule("semel.v1.RegistryService/CreateOrganisation", &[Admin]),
    rule("semel.v1.RegistryService/GetOrganisation", READERS),
    rule("semel.v1.RegistryService/ListOrganisations", READERS),
    rule("semel.v1.RegistryService/SuspendOrganisation", &[Admin]),
    rule("semel.v1.RegistryService/ReinstateOrganisation", &[Admin]),
    rule("semel.v1.RegistryService/AmendOrganisation", &[Admin]),
    rule("semel.v1.RegistryService/CreateDataset", &[Admin, Source]),
    rule("semel.v1.RegistryService/AmendDataset", &[Admin, Source]),
    rule("semel.v1.RegistryService/WithdrawDataset", &[Admin, Source]),
    rule("semel.v1.RegistryService/GetDataset", READERS),
    rule("semel.v1.RegistryService/ListDatasets", READERS),
    rule("semel.v1.RegistryService/CreateAuthorisation", &[Admin]),
    rule("semel.v1.RegistryService/GetAuthorisation", READERS),
    rule("semel.v1.RegistryService/ListAuthorisations", READERS),
    rule("semel.v1.RegistryService/SuspendAuthorisation", &[Admin]),
    rule("semel.v1.RegistryService/ReinstateAuthorisation", &[Admin]),
    rule("semel.v1.RegistryService/AmendAuthorisation", &[Admin]),
    rule("semel.v1.RegistryService/RevokeAuthorisation", &[Admin]),
    rule(
        "semel.v1.RegistryService/ListAuthorisationVersions",
        READERS,
    ),
    rule("semel.v1.RegistryService/RevokeCertificate", &[Admin]),
    rule("semel.v1.RegistryService/CreatePurpose", &[Admin]),
    rule("semel.v1.RegistryService/ListPurposes", READERS),
    rule("semel.v1.RegistryService/GetCatalogue", READERS),
    rule("semel.v1.RegistryService/ApplyRegistry", &[Admin]),
    // For organisations not registered yet, by certificate alone (see the
    // handler): no role of a registered one may call it.
    rule("semel.v1.RegistryService/ApplyForMembership", &[]),
    rule(
        "semel.v1.RegistryService/ListMembershipApplications",
        &[Admin],
    ),
    rule(
        "semel.v1.RegistryService/DecideMembershipApplication",
        &[Admin],
    ),
    rule(
        "semel.v1.RegistryService/ApplyForAuthorisation",
        &[Consumer],
    ),
    rule(
        "semel.v1.RegistryService/ListAuthorisationApplications",
        READERS,
    ),
    rule(
        "semel.v1.RegistryService/DecideAuthorisationApplication",
        &[Auditor],
    ),
    rule(
        "semel.v1.RegistryService/ListRevokedCertificates",
        &[Admin, Auditor],
    ),
    rule("semel.v1.AuditService/ListAuditEntries", &[Auditor]),
    rule("semel.v1.AuditService/GetAuditHead", &[Admin, Auditor]),
    rule(
        "semel.v1.AuditService/ListCitizenAccesses",
        &[Citizen, Auditor],
    ),
    rule(
        "semel.v1.AuditService/GetLatestCheckpoint",
        &[Admin, Auditor],
    ),
    rule("semel.v1.AuditService/GetInclusionProof", &[Auditor]),
    rule("semel.v1.AuditService/ListCheckpoints", &[Admin, Auditor]),
    rule("semel.v1.AuditService/SummariseAuditEntries", &[Auditor]),
    rule(
        "semel.v1.AuditService/GetConsistencyProof",
        &[Admin, Auditor],
    ),
    rule("semel.v1.MutationService/PublishMutations", &[Source]),
    rule("semel.v1.MutationService/Subscribe", &[Consumer]),
    rule("semel.v1.MutationService/PullMutations", &[Consumer]),
    rule("semel.v1.MutationService/AcknowledgeMutations", &[Consumer]),
];

const fn rule(method: &'static str, roles: &'static [UserRole]) -> Rule {
    Rule { method, roles }
}

/// The rule of a request path (`/package.Service/Method`).
pub fn for_path(path: &str) -> Option<&'static Rule> {
    let method = path.strip_prefix('/')?;
    RULES.iter().find(|r| r.method == method)
}

/// The RPC a request is for, as the router saw it: put in the request's
/// extensions by [`layer`] before any service runs.
#[derive(Debug, Clone, Copy)]
pub struct Rpc(pub Option<&'static Rule>);

/// A tower layer that tags every request with its [`Rpc`].
pub fn layer<B>() -> tower::util::MapRequestLayer<fn(http::Request<B>) -> http::Request<B>> {
    tower::util::MapRequestLayer::new(tag::<B>)
}

fn tag<B>(mut req: http::Request<B>) -> http::Request<B> {
    let rule = for_path(req.uri().path());
    req.extensions_mut().insert(Rpc(rule));
    req
}

/// The matrix as the Markdown table of `docs/permissions.md`.
pub fn markdown_table() -> String {
    let mut out = String::from("| RPC |");
    for r in UserRole::ALL {
        out.push_str(&format!(" {r} |"));
    }
    out.push_str("\n|---|");
    for _ in UserRole::ALL {
        out.push_str(":-:|");
    }
    out.push('\n');
    for rule in RULES {
        out.push_str(&format!("| `{}` |", rule.method));
        for r in UserRole::ALL {
            out.push_str(if rule.roles.contains(&r) {
                " ✓ |"
            } else {
                " |"
            });
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_shows_the_matrix_the_code_enforces() {
        let doc = include_str!("../../../docs/permissions.md");
        let table = markdown_table();
        assert!(
            doc.contains(&table),
            "docs/permissions.md is out of date; its table must read:\n{table}"
        );
    }

    #[test]
    fn every_rpc_of_the_contract_has_a_row_and_every_row_an_rpc() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET)
            .expect("descriptor set");
        let mut methods = Vec::new();
        for file in &set.file {
            for service in &file.service {
                // SourceService is served by the sources, not the broker.
                if service.name() == "SourceService" {
                    continue;
                }
                for m in &service.method {
                    methods.push(format!(
                        "{}.{}/{}",
                        file.package(),
                        service.name(),
                        m.name()
                    ));
                }
            }
        }
        for m in &methods {
            assert!(for_path(&format!("/{m}")).is_some(), "{m} has no row");
        }
        for r in RULES {
            assert!(
                methods.iter().any(|m| m == r.method),
                "{} is no RPC",
                r.method
            );
        }
    }
}
