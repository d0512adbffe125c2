//! Generates the gRPC code from `proto/` with protox (pure Rust: no system
//! `protoc` needed) and tonic-prost-build.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time: a build script compiled elsewhere (a copied target
    // directory) must still find this checkout's proto/.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        "values",
        "registry",
        "lookup",
        "source",
        "audit",
        "persons",
        "mutations",
    ]
    .map(|f| root.join(format!("semel/v1/{f}.proto")));
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    for f in ["annotations", "http"] {
        println!(
            "cargo:rerun-if-changed={}",
            root.join(format!("google/api/{f}.proto")).display()
        );
    }
    let mut compiler = protox::Compiler::new([&root])?;
    compiler
        .include_source_info(true)
        .include_imports(true)
        .open_files(&files)?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // Encoded by protox itself, which keeps extension options: the HTTP/JSON
    // face reads the `google.api.http` rules from this set.
    std::fs::write(
        out.join("semel_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    let fds = compiler.file_descriptor_set();
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
