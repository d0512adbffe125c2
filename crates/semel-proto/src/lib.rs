//! The generated protobuf and gRPC code of `semel.v1` (`proto/semel/v1`),
//! in a crate of its own so that the broker (`semel-server`, which serves it
//! and converts it to `semel_core` types at its edge) and the command line's
//! client (`semel-client`) share it without the client depending on the
//! server. The rest of Semel works with `semel_core` types.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("semel.v1");

/// The encoded `FileDescriptorSet` of `semel.v1`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/semel_descriptor.bin"));
