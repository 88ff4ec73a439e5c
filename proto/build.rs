//! Compiles every .proto under `pension/` with protox (pure Rust, so no protoc is needed on the machine), generates
//! the Rust code with tonic-prost-build, and keeps the descriptor set for gRPC reflection.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = proto_files(PathBuf::from("pension"))?;
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let descriptors = protox::compile(&files, ["."])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // Reflection describes the platform's API; the test-only package stays out of it.
    let mut published = descriptors.clone();
    published.file.retain(|file| !file.package().starts_with("pension.testing."));
    std::fs::write(out_dir.join("descriptor.bin"), published.encode_to_vec())?;
    // The agencies' port describes their package alone (and what it imports), never the internal contracts.
    let mut agency = descriptors.clone();
    agency.file.retain(|file| file.package().starts_with("pension.agency.") || !file.package().starts_with("pension."));
    std::fs::write(out_dir.join("agency_descriptor.bin"), agency.encode_to_vec())?;
    tonic_prost_build::configure()
        // Decode failures must be INVALID_ARGUMENT (the caller sent bad bytes), not tonic's default INTERNAL.
        .codec_path("crate::codec::ProtobufCodec")
        .compile_fds(descriptors)?;
    Ok(())
}

fn proto_files(dir: PathBuf) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(proto_files(path)?);
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}
