//! The generated protobuf and gRPC code of `semel.v1`. Only this crate sees
//! it; the rest of Semel works with `semel_core` types.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("semel.v1");

/// The encoded `FileDescriptorSet` of `semel.v1`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/semel_descriptor.bin"));
