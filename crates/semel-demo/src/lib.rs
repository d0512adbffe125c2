//! Demo material for Semel: a deterministic synthetic Brussels population,
//! the demo registry (organisations, datasets, authorisations) and a
//! development PKI and identity provider. Nothing here runs a server.

pub mod issuer;
pub mod pki;
pub mod population;
pub mod seed;

pub use population::Population;
