//! Pulls against the tests' own misbehaving registry (tests/common/fake.rs): decompression
//! bombs, a failed layer among slow siblings, stalls, hostile strings, deep JSON, bad sizes,
//! redirects, credentials and token realms, and a pull of thousands of tiny layers.

mod common;
use common::fake::*;
use common::*;
use rsrun_image::{ImageStore, PullOptions, RegistryConfig};
use std::time::Instant;

fn insecure(addr: &str) -> RegistryConfig {
    RegistryConfig::from_json(&format!(
        r#"{{"registries":{{"{addr}":{{"insecure":true}}}}}}"#
    ))
    .unwrap()
}

fn store(t: &TempDir, f: &Fake) -> ImageStore {
    ImageStore::open(t.path(), insecure(&f.addr)).unwrap()
}

#[test]
fn five_thousand_tiny_layers() {
    let f = Fake::start();
    let layers: Vec<Layer> = (0..5000)
        .map(|i| layer(&tar_of(&[E::File(&format!("f{i}"), b"x", 0o644)]), MT_TAR))
        .collect();
    let cfg = config_json("amd64", "", &layers);
    f.add_image("many", "v1", &layers, &cfg);
    let t = TempDir::new("5000");
    let s = store(&t, &f);
    let start = Instant::now();
    let img = s
        .pull(&format!("{}/many:v1", f.addr), &PullOptions::default())
        .unwrap();
    let took = start.elapsed();
    eprintln!("5000 tiny layers: {took:?}, {} syncs", s.store().syncs());
    assert_eq!(img.layers.len(), 5000);
    assert_eq!(snapshots(t.path()).len(), 5000);
    // Flushes are batched: before, each layer cost an fsync of its blob, a syncfs and two
    // directory fsyncs (20,000 here).
    assert!(
        s.store().syncs() <= 5000 / 16,
        "{} fsync/syncfs calls for 5000 layers",
        s.store().syncs()
    );
}
