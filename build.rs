//! Compiles `proto/` once, without protoc: protox parses the files, tonic-prost-build emits the
//! Rust types, clients and servers, and the encoded descriptor set (with the
//! `google.api.http` options intact) is written for embedding (reflection, transcoding, OpenAPI).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut files = Vec::new();
    collect(&PathBuf::from("proto/sharemesh"), &mut files)?;
    files.sort();
    println!("cargo:rerun-if-changed=proto");

    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(&files)?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // Encode with protox itself: re-encoding through prost-types would drop extension options.
    std::fs::write(out_dir.join("sharemesh_descriptor.bin"), compiler.encode_file_descriptor_set())?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .emit_rerun_if_changed(false)
        .compile_fds_with_config(compiler.file_descriptor_set(), {
            // `prost::Name` on every message: event subjects and `ce-type` are the full names.
            let mut config = tonic_prost_build::Config::new();
            config.enable_type_names();
            config
        })?;
    Ok(())
}

fn collect(dir: &PathBuf, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}
