//! Generates the CRI runtime.v1 services and messages from the vendored upstream api.proto
//! (proto/README.md): parsed by protox (pure Rust, no system protoc), code by tonic-prost-build.
//! Also builds `pause/` (rsrun-pause, a freestanding static binary that rsrun-cri carries and
//! installs as the PID 1 of pods that share a PID namespace).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/api.proto");
    let fds = protox::compile(["api.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;

    for f in ["pause/Cargo.toml", "pause/build.rs", "pause/src/main.rs"] {
        println!("cargo:rerun-if-changed={f}");
    }
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Its own target dir and profile (panic=abort, no std): none of this build's flags apply.
    let st = std::process::Command::new(cargo)
        .args([
            "build",
            "--release",
            "--quiet",
            "--manifest-path",
            "pause/Cargo.toml",
        ])
        .arg("--target-dir")
        .arg(out.join("pause-target"))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .status()?;
    if !st.success() {
        return Err("building cri/pause (rsrun-pause) failed".into());
    }
    std::fs::copy(
        out.join("pause-target/release/rsrun-pause"),
        out.join("rsrun-pause"),
    )?;
    Ok(())
}
