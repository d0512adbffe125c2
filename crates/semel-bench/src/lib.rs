//! Semel's load generators, kept out of the serving crates: they change
//! when what is measured changes, not when the broker does.
//!
//! [`load`] is the system `semel bench` measures (the demo, the broker and a
//! null forwarder in process) and its closed-loop lookup generator;
//! [`fanout`] is `semel bench-mutations`, the fan-out of published changes
//! to many subscribed consumers.

pub mod fanout;
pub mod load;
