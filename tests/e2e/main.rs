//! End-to-end tests: the real broker and demo sources, started in-process on
//! port 0 with a temporary data directory, called over mutual TLS.

mod audit_budget;
mod audit_integrity;
mod audit_proofs;
mod brokers;
mod citizen_view;
mod crl;
mod durability;
mod harness;
mod http_face;
mod identity;
mod identity_binding;
mod identity_keys;
mod insiders;
mod insiders_console;
mod insiders_http;
mod insiders_mutations;
mod insiders_second;
mod limits;
mod lookups;
mod mutations;
mod only_once;
mod registry_amendments;
mod registry_and_identity;
mod registry_applications;
mod registry_files;
mod rpc_limits;
mod sealed_rows;
mod serve;
mod source_binding;
mod standard;
mod transport_limits;
mod witness_memory;
