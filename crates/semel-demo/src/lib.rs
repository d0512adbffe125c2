//! Demo material for Semel: a deterministic synthetic Brussels population,
//! the demo registry (organisations, datasets, authorisations) and a
//! development PKI. Nothing here runs a server.

pub mod pki;
pub mod population;
pub mod seed;

pub use population::Population;
