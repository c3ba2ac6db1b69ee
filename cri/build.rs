//! Generates the CRI runtime.v1 services and messages from the vendored upstream api.proto
//! (proto/README.md): parsed by protox (pure Rust, no system protoc), code by tonic-prost-build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/api.proto");
    let fds = protox::compile(["api.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
