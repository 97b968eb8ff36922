//! Compiles `proto/sakuga/v1/*.proto` with protox (pure Rust: no system protoc) and
//! generates prost messages plus tonic clients and servers. The encoded descriptor set is
//! written beside the code for server reflection.

use std::{env, fs, path::PathBuf};

use protox::prost::Message as _;

const FILES: &[&str] = &[
    "sakuga/v1/common.proto",
    "sakuga/v1/auth.proto",
    "sakuga/v1/jobs.proto",
    "sakuga/v1/projects.proto",
    "sakuga/v1/worker.proto",
    "sakuga/v1/files.proto",
    "sakuga/v1/webhooks.proto",
];

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    // compile_fds prints no rerun-if-changed lines itself.
    println!("cargo:rerun-if-changed={}", root.display());
    for file in FILES {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    let fds = protox::compile(FILES, [&root])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join("sakuga_descriptor.bin"), fds.encode_to_vec())?;
    // No default stubs: every RPC of every service must be implemented to compile.
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
