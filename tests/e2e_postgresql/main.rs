//! The end-to-end suite (tests/e2e) again, with every demo on a fresh
//! PostgreSQL database of its own instead of the embedded store: the same
//! files, built as a second test binary (`harness::on_postgresql`). Tests
//! that hold only on the embedded store say so and end early.

#[path = "../e2e/audit_budget.rs"]
mod audit_budget;
#[path = "../e2e/audit_integrity.rs"]
mod audit_integrity;
#[path = "../e2e/audit_proofs.rs"]
mod audit_proofs;
#[path = "../e2e/brokers.rs"]
mod brokers;
#[path = "../e2e/citizen_view.rs"]
mod citizen_view;
#[path = "../e2e/crl.rs"]
mod crl;
#[path = "../e2e/durability.rs"]
mod durability;
// The failover cases need a primary and a standby: PostgreSQL only.
#[path = "../e2e/failover.rs"]
mod failover;
#[path = "../e2e/harness.rs"]
mod harness;
#[path = "../e2e/http_face.rs"]
mod http_face;
#[path = "../e2e/identity.rs"]
mod identity;
#[path = "../e2e/identity_binding.rs"]
mod identity_binding;
#[path = "../e2e/identity_keys.rs"]
mod identity_keys;
#[path = "../e2e/insiders.rs"]
mod insiders;
#[path = "../e2e/insiders_console.rs"]
mod insiders_console;
#[path = "../e2e/insiders_http.rs"]
mod insiders_http;
#[path = "../e2e/insiders_mutations.rs"]
mod insiders_mutations;
#[path = "../e2e/insiders_second.rs"]
mod insiders_second;
#[path = "../e2e/limits.rs"]
mod limits;
#[path = "../e2e/lookups.rs"]
mod lookups;
#[path = "../e2e/mutations.rs"]
mod mutations;
#[path = "../e2e/only_once.rs"]
mod only_once;
#[path = "../e2e/registry_amendments.rs"]
mod registry_amendments;
#[path = "../e2e/registry_and_identity.rs"]
mod registry_and_identity;
#[path = "../e2e/registry_applications.rs"]
mod registry_applications;
#[path = "../e2e/registry_files.rs"]
mod registry_files;
#[path = "../e2e/rpc_limits.rs"]
mod rpc_limits;
#[path = "../e2e/sealed_rows.rs"]
mod sealed_rows;
#[path = "../e2e/serve.rs"]
mod serve;
#[path = "../e2e/source_binding.rs"]
mod source_binding;
#[path = "../e2e/standard.rs"]
mod standard;
#[path = "../e2e/transport_limits.rs"]
mod transport_limits;
#[path = "../e2e/witness_memory.rs"]
mod witness_memory;
