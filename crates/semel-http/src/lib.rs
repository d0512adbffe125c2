//! Semel's HTTP/JSON face, for back offices that do not speak gRPC and for
//! the web console: the contract's `google.api.http` rules ([`transcode`])
//! served over the broker's mutual TLS ([`http_face`]), each call made in
//! process on the very services and layers the gRPC server runs, which
//! `semel-server` hands it ([`semel_server::server::Face`]). With it, what
//! is derived from the same rules: the OpenAPI document ([`openapi`]), the
//! API reference ([`reference`]), and the web console's files
//! ([`console`], from `console/`).
//!
//! It knows the broker only through `semel-server`'s public items; the
//! broker knows it only as a [`semel_server::server::Face`], which the
//! binary and the demo wire in ([`face`]).

pub mod console;
pub mod http_face;
pub mod openapi;
pub mod reference;
pub mod transcode;

pub use http_face::face;
