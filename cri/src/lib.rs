//! The parts of rsrun-cri that stand on their own, as a library: the CRI API generated from
//! the upstream api.proto (server traits and a client, which the tests use) and the SPDY/3.1
//! framing of the streaming server (also what the fuzz targets in cri/fuzz link).

/// Generated from the upstream api.proto (build.rs); its comments are upstream's.
#[allow(clippy::all, clippy::pedantic)]
pub mod api {
    tonic::include_proto!("runtime.v1");
}
pub mod spdy;
