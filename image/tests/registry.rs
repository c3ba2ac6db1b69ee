//! End-to-end pulls from a real registry (Debian's docker-registry on 127.0.0.1).

mod common;
use common::*;
use rsrun_image::{Cancel, Error, ImageStore, Platform, PullOptions};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// busybox in layer 1 (gzip), changes with whiteouts in layer 2 (zstd), layer 3 plain tar.
fn busybox_layers() -> Vec<Layer> {
    let bb = busybox();
    let l1 = tar_of(&[
        E::Dir("bin/", 0o755),
        E::File("bin/busybox", &bb, 0o755),
        E::Symlink("bin/sh", "busybox"),
        E::Dir("etc/", 0o755),
        E::File(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n",
            0o644,
        ),
        E::File("etc/old", b"old", 0o644),
        E::Dir("data/", 0o755),
        E::File("data/a", b"a", 0o644),
        E::Dir("tmp/", 0o1777),
    ]);
    let l2 = tar_of(&[
        E::File("etc/.wh.old", b"", 0o644),
        E::Dir("data/", 0o755),
        E::File("data/.wh..wh..opq", b"", 0o644),
        E::File("data/b", b"b", 0o644),
        E::Link("data/b2", "data/b"),
    ]);
    let l3 = tar_of(&[
        E::Dir("srv/", 0o755),
        E::FileOwned("srv/owned", b"o", 0o600, 1000, 1000),
    ]);
    vec![layer(&l1, MT_GZIP), layer(&l2, MT_ZSTD), layer(&l3, MT_TAR)]
}

#[test]
fn pull_unpack_and_copy_on_write_rootfs() {
    let reg = Registry::start();
    let layers = busybox_layers();
    let cfg = config_json("amd64", "65534", &layers);
    let pushed = push_image(
        &reg.addr,
        "library/busybox",
        Some("1.0"),
        &layers,
        &cfg,
        false,
    );
    let t = TempDir::new("pull");
    let store = open_store(t.path(), &reg.addr);
    // short name through the docker.io mirror
    let img = store.pull("busybox:1.0", &PullOptions::default()).unwrap();
    assert_eq!(img.id, pushed.config_digest);
    assert_eq!(
        img.repo_tags,
        vec!["docker.io/library/busybox:1.0".to_string()]
    );
    assert_eq!(
        img.repo_digests,
        vec![format!(
            "docker.io/library/busybox@{}",
            pushed.manifest_digest
        )]
    );
    assert_eq!(img.user, "65534");
    assert_eq!(img.uid_or_username(), (Some(65534), String::new()));
    assert_eq!(img.layers.len(), 3);
    assert_eq!(img.platform, "linux/amd64");
    assert!(img.size > layers.iter().map(|l| l.blob.len() as u64).sum::<u64>());
    assert_eq!(snapshots(t.path()).len(), 3);
    assert!(
        store.store().has_blob(&pushed.manifest_digest)
            && store.store().has_blob(&pushed.config_digest)
    );
    for l in &layers {
        assert!(store.store().has_snapshot(&l.diff_id));
    }
    // lookups by tag, short name, ID, ID prefix and digest
    for key in [
        "busybox:1.0",
        "docker.io/library/busybox:1.0",
        img.id.as_str(),
        img.id.hex(),
        &img.id.hex()[..12],
    ] {
        assert_eq!(
            store.get(key).unwrap().map(|i| i.id),
            Some(img.id.clone()),
            "{key}"
        );
    }
    assert!(store
        .get(&format!("busybox@{}", pushed.manifest_digest))
        .unwrap()
        .is_some());
    let ins = store.inspect("busybox:1.0").unwrap();
    assert_eq!(
        ins.config.config.as_ref().unwrap().user.as_deref(),
        Some("65534")
    );
    assert_eq!(ins.manifest.layers.len(), 3);

    // A writable rootfs: whiteouts, opaque dir, hardlink, ownership, and copy-on-write.
    let root = store.prepare_rootfs("c1", "busybox:1.0", false).unwrap();
    assert!(root.join("bin/busybox").is_file());
    assert!(!root.join("etc/old").exists(), "whiteout hides etc/old");
    assert!(!root.join("data/a").exists(), "opaque dir hides data/a");
    assert_eq!(std::fs::read(root.join("data/b2")).unwrap(), b"b");
    assert_eq!(
        std::fs::metadata(root.join("srv/owned")).unwrap().uid(),
        1000
    );
    let out = Command::new("chroot")
        .arg(&root)
        .args([
            "/bin/sh",
            "-c",
            "echo hi > /tmp/x; busybox rm /etc/passwd; busybox cat /tmp/x",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hi");
    let l1 = store.store().snapshot_path(&layers[0].diff_id);
    assert!(
        l1.join("etc/passwd").exists(),
        "deleting in the container never touches the layer"
    );
    assert!(!l1.join("tmp/x").exists());
    let upper = t.path().join("containers/c1/upper");
    assert!(upper.join("tmp/x").exists());
    assert!(std::fs::symlink_metadata(upper.join("etc/passwd"))
        .unwrap()
        .file_type()
        .is_char_device());
    let cfs = store.container_fs_info().unwrap();
    assert!(cfs.used_bytes > 0 && cfs.inodes_used >= 3, "{cfs:?}");
    // read-only rootfs
    let ro = store.prepare_rootfs("c2", img.id.as_str(), true).unwrap();
    assert!(ro.join("bin/busybox").exists());
    let e = std::fs::write(ro.join("tmp/y"), b"y").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    // collect (what rsrun-cri runs after RemoveImage) keeps what containers and images use,
    // and leaves temporary entries to prune
    std::fs::create_dir_all(t.path().join("tmp")).unwrap();
    std::fs::write(t.path().join("tmp/left-by-a-pull"), b"x").unwrap();
    store.remove(img.id.as_str()).unwrap();
    let p = store.collect().unwrap();
    assert_eq!(
        p.snapshots_removed, 0,
        "container rootfs still references the snapshots"
    );
    assert!(p.blobs_removed >= 5, "{p:?}");
    assert!(t.path().join("tmp/left-by-a-pull").exists());
    store.remove_rootfs("c1").unwrap();
    store.remove_rootfs("c2").unwrap();
    store.remove_rootfs("c2").unwrap(); // missing is fine
    assert!(!root.exists());
    let p = store.collect().unwrap();
    assert_eq!(p.snapshots_removed, 3);
    assert!(snapshots(t.path()).is_empty());
    assert_eq!(store.prune().unwrap().temp_removed, 1);
    assert!(!t.path().join("tmp/left-by-a-pull").exists());
    let fs = store.fs_info().unwrap();
    assert!(fs.used_bytes < 100_000, "{fs:?}");
}

#[test]
fn multi_arch_index_selects_platform() {
    let reg = Registry::start();
    let mut manifests = Vec::new();
    for (arch, variant) in [("amd64", ""), ("arm64", "v8"), ("arm", "v7")] {
        let tarball = tar_of(&[E::File("arch", arch.as_bytes(), 0o644)]);
        let layers = vec![layer(&tarball, MT_DOCKER_GZIP)];
        let cfg = config_json(arch, "", &layers);
        let p = push_image(&reg.addr, "multi", None, &layers, &cfg, true);
        let mut plat = serde_json::json!({"architecture": arch, "os": "linux"});
        if !variant.is_empty() {
            plat["variant"] = variant.into();
        }
        manifests.push((
            serde_json::json!({
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "digest": p.manifest_digest.to_string(), "size": p.manifest.len(), "platform": plat,
            }),
            p.config_digest,
        ));
    }
    let idx = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
        "manifests": manifests.iter().map(|m| m.0.clone()).collect::<Vec<_>>(),
    }))
    .unwrap();
    let idx_digest = push_manifest(
        &reg.addr,
        "multi",
        "v1",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        &idx,
    );
    let t = TempDir::new("multi");
    let store = open_store(t.path(), &reg.addr);
    let name = format!("{}/multi:v1", reg.addr);
    let amd = store
        .pull(
            &name,
            &PullOptions {
                platform: Platform::parse("linux/amd64").unwrap(),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(amd.id, manifests[0].1);
    assert_eq!(
        amd.repo_digests,
        vec![format!("{}/multi@{idx_digest}", reg.addr)]
    );
    let arm = store
        .pull(
            &name,
            &PullOptions {
                platform: Platform::parse("linux/arm/v7").unwrap(),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(arm.id, manifests[2].1);
    assert_eq!(arm.platform, "linux/arm/v7");
    // the tag moved to the arm image; the amd64 one keeps its digest name
    assert_eq!(store.get(&name).unwrap().unwrap().id, arm.id);
    let arm64 = store
        .pull(
            &name,
            &PullOptions {
                platform: Platform::parse("linux/arm64").unwrap(),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(arm64.id, manifests[1].1);
    let snap = store.store().snapshot_path(&arm64.layers[0].diff_id);
    assert_eq!(std::fs::read(snap.join("arch")).unwrap(), b"arm64");
    let e = store
        .pull(
            &name,
            &PullOptions {
                platform: Platform::parse("linux/s390x").unwrap(),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(matches!(e, Error::NoMatchingPlatform { .. }), "{e}");
    assert!(e.to_string().contains("linux/arm/v7"), "{e}");
}

#[test]
fn unknown_image_is_not_found_and_bad_names_are_invalid() {
    let reg = Registry::start();
    let t = TempDir::new("nf");
    let store = open_store(t.path(), &reg.addr);
    let e = store
        .pull(
            &format!("{}/nothing/here:v1", reg.addr),
            &PullOptions::default(),
        )
        .unwrap_err();
    assert!(matches!(e, Error::NotFound(_)), "{e}");
    let e = store
        .pull("busybox:nope", &PullOptions::default())
        .unwrap_err();
    assert!(matches!(e, Error::NotFound(_)), "{e}");
    let e = store
        .pull("Upper/Case", &PullOptions::default())
        .unwrap_err();
    assert!(
        matches!(e, Error::InvalidReference { .. }) && e.to_string().contains("lowercase"),
        "{e}"
    );
    // a registry not configured insecure is spoken to over HTTPS only (the error names
    // https://; that no plain request is made is checked against the fake registry in
    // misbehave.rs: cli_plain_http_auth_file_timeout_and_registry_config_env)
    let plain = ImageStore::open(t.path(), rsrun_image::RegistryConfig::default()).unwrap();
    let e = plain
        .pull(&format!("{}/x:v1", reg.addr), &PullOptions::default())
        .unwrap_err();
    assert!(
        matches!(e, Error::Registry { ref registry, .. } if registry.starts_with("https://")),
        "{e}"
    );
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn concurrent_pulls_share_downloads_and_warm_pull_is_a_noop() {
    let reg = Registry::start();
    let proxy = Proxy::start(&reg.addr);
    let big = noise(6_000_000, 13);
    let layers: Vec<Layer> = (0..4)
        .map(|i| {
            layer(
                &tar_of(&[E::File(&format!("f{i}"), &big[i * 1000..], 0o644)]),
                MT_GZIP,
            )
        })
        .collect();
    let cfg = config_json("amd64", "", &layers);
    push_image(&reg.addr, "con", Some("v1"), &layers, &cfg, false);
    let t = TempDir::new("con");
    let store = Arc::new(open_store(t.path(), &proxy.addr));
    proxy.rate.store(40 << 20, Ordering::Relaxed);
    let name = format!("{}/con:v1", proxy.addr);
    let ids: Vec<_> = (0..4)
        .map(|_| {
            let (s, n) = (store.clone(), name.clone());
            std::thread::spawn(move || s.pull(&n, &PullOptions::default()).unwrap().id)
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] == w[1]));
    proxy.rate.store(0, Ordering::Relaxed);
    for l in &layers {
        let d = rsrun_image::Digest::of_bytes(&l.blob);
        assert_eq!(
            proxy.count(&format!("GET /v2/con/blobs/{d}")),
            1,
            "layer {d} downloaded once"
        );
    }
    // Another process (the CLI) finds the layers present: no blob fetched, one HEAD.
    let cfgfile = t.path().join("registries.json");
    std::fs::write(
        &cfgfile,
        format!(
            r#"{{"registries":{{"{}":{{"insecure":true}}}}}}"#,
            proxy.addr
        ),
    )
    .unwrap();
    proxy.reset();
    let out = Command::new(env!("CARGO_BIN_EXE_rsrun-image"))
        .arg("--root")
        .arg(t.path())
        .arg("--config")
        .arg(&cfgfile)
        .args(["pull", "-q", &name])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), ids[0].as_str());
    assert_eq!(proxy.count("/blobs/"), 0, "other process fetches no blob");
    assert_eq!(proxy.count("HEAD /v2/con/manifests"), 1);
    // A second handle on the same store in this process (its time is printed: the figure is
    // integration/bench's; tests assert no timing).
    let other = open_store(t.path(), &proxy.addr);
    proxy.reset();
    let start = Instant::now();
    other.pull(&name, &PullOptions::default()).unwrap();
    let warm = start.elapsed();
    assert_eq!(proxy.count("/blobs/"), 0, "warm pull fetches no blob");
    assert_eq!(
        proxy.count("GET /v2/con/manifests"),
        0,
        "warm pull is one HEAD"
    );
    assert_eq!(proxy.count("HEAD /v2/con/manifests"), 1);
    eprintln!("warm no-op pull: {warm:?}");
    // digest pull of a present image needs no network at all
    let by_digest = format!(
        "{}@{}",
        name.split(':').take(2).collect::<Vec<_>>().join(":"),
        store.get(&name).unwrap().unwrap().repo_digests[0]
            .split('@')
            .nth(1)
            .unwrap()
    );
    proxy.reset();
    other.pull(&by_digest, &PullOptions::default()).unwrap();
    assert_eq!(proxy.count("/v2/"), 0);
}

#[test]
fn deadline_and_cancel_stop_a_pull_and_leave_nothing_visible() {
    let reg = Registry::start();
    let proxy = Proxy::start(&reg.addr);
    let data = noise(3_000_000, 7);
    let layers = vec![layer(&tar_of(&[E::File("f", &data, 0o644)]), MT_GZIP)];
    let cfg = config_json("amd64", "", &layers);
    push_image(&reg.addr, "slow", Some("v1"), &layers, &cfg, false);
    let t = TempDir::new("deadline");
    let store = open_store(t.path(), &proxy.addr);
    // 100 kB/s: the whole pull would take 30 s; one that honours its deadline ends long before.
    proxy.rate.store(100_000, Ordering::Relaxed);
    let name = format!("{}/slow:v1", proxy.addr);
    let start = Instant::now();
    let e = store
        .pull(
            &name,
            &PullOptions {
                cancel: Cancel::with_deadline(Instant::now() + Duration::from_millis(700)),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(matches!(e, Error::DeadlineExceeded(_)), "{e}");
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "deadline honoured before the download's end: {:?}",
        start.elapsed()
    );
    assert!(store.list().unwrap().is_empty());
    assert!(snapshots(t.path()).is_empty());
    let flag = Arc::new(AtomicBool::new(false));
    let f2 = flag.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        f2.store(true, Ordering::Relaxed);
    });
    let e = store
        .pull(
            &name,
            &PullOptions {
                cancel: Cancel::with_flag(flag),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(matches!(e, Error::Cancelled(_)), "{e}");
    assert!(store.list().unwrap().is_empty());
    proxy.rate.store(0, Ordering::Relaxed);
    store.pull(&name, &PullOptions::default()).unwrap();
    assert_eq!(
        std::fs::read_dir(t.path().join("ingest")).unwrap().count(),
        0,
        "no temp left"
    );
}

#[test]
fn kill_9_mid_pull_then_repull_completes() {
    let reg = Registry::start();
    let proxy = Proxy::start(&reg.addr);
    let data = noise(4_000_000, 11);
    let layers: Vec<Layer> = (0..3)
        .map(|i| {
            layer(
                &tar_of(&[E::File(&format!("f{i}"), &data[i..], 0o644)]),
                MT_GZIP,
            )
        })
        .collect();
    let cfg = config_json("amd64", "", &layers);
    push_image(&reg.addr, "kill", Some("v1"), &layers, &cfg, false);
    let t = TempDir::new("kill");
    let cfgfile = t.path().join("registries.json");
    std::fs::write(
        &cfgfile,
        format!(
            r#"{{"registries":{{"{}":{{"insecure":true}}}}}}"#,
            proxy.addr
        ),
    )
    .unwrap();
    let root = t.path().join("store");
    let bin = env!("CARGO_BIN_EXE_rsrun-image");
    let name = format!("{}/kill:v1", proxy.addr);
    proxy.rate.store(1_000_000, Ordering::Relaxed);
    let mut child = Command::new(bin)
        .arg("--root")
        .arg(&root)
        .arg("--config")
        .arg(&cfgfile)
        .args(["pull", "-q", &name])
        .spawn()
        .unwrap();
    // wait until layer data is being written
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let partial = std::fs::read_dir(root.join("ingest"))
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.metadata().map(|m| m.len() > 100_000).unwrap_or(false))
            })
            .unwrap_or(false);
        if partial {
            break;
        }
        assert!(Instant::now() < deadline, "pull never started writing");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let list = Command::new(bin)
        .arg("--root")
        .arg(&root)
        .args(["list", "-q"])
        .output()
        .unwrap();
    assert!(list.status.success());
    assert!(
        list.stdout.is_empty(),
        "no image visible after kill: {}",
        String::from_utf8_lossy(&list.stdout)
    );
    assert!(
        snapshots(&root).is_empty(),
        "no snapshot visible after kill"
    );
    proxy.rate.store(0, Ordering::Relaxed);
    let out = Command::new(bin)
        .arg("--root")
        .arg(&root)
        .arg("--config")
        .arg(&cfgfile)
        .args(["pull", &name])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(id.starts_with("sha256:"));
    assert_eq!(snapshots(&root).len(), 3);
    assert_eq!(
        std::fs::read_dir(root.join("ingest")).unwrap().count(),
        0,
        "stale temp cleaned"
    );
    let tmp_snaps = std::fs::read_dir(root.join("snapshots"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .count();
    assert_eq!(tmp_snaps, 0, "stale snapshot dirs cleaned");
    let store = ImageStore::open(&root, rsrun_image::RegistryConfig::default()).unwrap();
    let snap = store.store().snapshot_path(&layers[1].diff_id);
    assert_eq!(std::fs::read(snap.join("f1")).unwrap(), &data[1..]);
}

#[test]
fn remove_by_tag_id_and_digest() {
    let reg = Registry::start();
    let layers = vec![layer(&tar_of(&[E::File("x", b"x", 0o644)]), MT_GZIP)];
    let cfg = config_json("amd64", "app", &layers);
    let p = push_image(&reg.addr, "rm", Some("a"), &layers, &cfg, false);
    push_manifest(
        &reg.addr,
        "rm",
        "b",
        "application/vnd.oci.image.manifest.v1+json",
        &p.manifest,
    );
    let t = TempDir::new("rm");
    let store = open_store(t.path(), &reg.addr);
    let (a, b) = (format!("{}/rm:a", reg.addr), format!("{}/rm:b", reg.addr));
    store.pull(&a, &PullOptions::default()).unwrap();
    let img = store.pull(&b, &PullOptions::default()).unwrap();
    assert_eq!(img.repo_tags.len(), 2);
    assert_eq!(img.uid_or_username(), (None, "app".to_string()));
    assert!(store.remove(&a).unwrap());
    assert_eq!(store.get(&b).unwrap().unwrap().repo_tags, vec![b.clone()]);
    assert!(store.get(&a).unwrap().is_none());
    assert!(
        !store.remove(&a).unwrap(),
        "removing a missing image succeeds"
    );
    assert!(store.remove(img.id.as_str()).unwrap());
    assert!(store.list().unwrap().is_empty());
    store.pull(&a, &PullOptions::default()).unwrap();
    store.pull(&b, &PullOptions::default()).unwrap();
    assert!(store
        .remove(&format!("{}/rm@{}", reg.addr, p.manifest_digest))
        .unwrap());
    assert!(
        store.list().unwrap().is_empty(),
        "by digest removes the image"
    );
    assert!(!store
        .remove("sha256:0000000000000000000000000000000000000000000000000000000000000000")
        .unwrap());
    // The CRI's removal by one tag takes the image with every tag.
    store.pull(&a, &PullOptions::default()).unwrap();
    store.pull(&b, &PullOptions::default()).unwrap();
    assert!(store.remove_image(&a).unwrap());
    assert!(
        store.get(&b).unwrap().is_none() && store.list().unwrap().is_empty(),
        "remove_image by one tag left {:?}",
        store.list().unwrap()
    );
    assert!(!store.remove_image(&a).unwrap());
    // CLI remove of a missing image succeeds; prune empties the store
    let bin = env!("CARGO_BIN_EXE_rsrun-image");
    let out = Command::new(bin)
        .arg("--root")
        .arg(t.path())
        .args(["remove", "nothing:here"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = Command::new(bin)
        .arg("--root")
        .arg(t.path())
        .args(["prune"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 snapshots"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn removal_frees_at_once_unless_a_pull_holds_the_store_and_a_name_wins_over_an_id() {
    let reg = Registry::start();
    let la = vec![layer(&tar_of(&[E::File("f", b"first", 0o644)]), MT_GZIP)];
    let lb = vec![layer(&tar_of(&[E::File("g", b"second", 0o644)]), MT_GZIP)];
    let a = push_image(
        &reg.addr,
        "library/frees",
        Some("latest"),
        &la,
        &config_json("amd64", "", &la),
        false,
    );
    let t = TempDir::new("frees");
    let store = open_store(t.path(), &reg.addr);
    let img = store.pull("frees", &PullOptions::default()).unwrap();
    assert_eq!(img.id, a.config_digest);
    // A second image named by the first 12 hex digits of the first's ID: the name is that
    // image, not an ID prefix of the other (as containerd resolves).
    let short = &img.id.hex()[..12];
    let b = push_image(
        &reg.addr,
        &format!("library/{short}"),
        Some("latest"),
        &lb,
        &config_json("amd64", "", &lb),
        false,
    );
    store.pull(short, &PullOptions::default()).unwrap();
    assert_eq!(
        store.get(short).unwrap().unwrap().id,
        b.config_digest,
        "{short} as a name"
    );
    assert_eq!(
        store.get(&format!("sha256:{short}")).unwrap().unwrap().id,
        img.id,
        "sha256:{short}"
    );
    assert!(store.remove_image(short).unwrap());
    // Something holds the store shared (a pull, a rootfs being made): nothing is freed now,
    // and nothing waits for it.
    let blobs = || {
        std::fs::read_dir(t.path().join("blobs/sha256"))
            .unwrap()
            .count()
    };
    let other = rsrun_image::store::Store::open(t.path()).unwrap();
    let held = other.gc_lock_shared(None).unwrap();
    let before = (blobs(), snapshots(t.path()).len());
    assert!(
        store.try_collect().unwrap().is_none(),
        "collected under a shared lock"
    );
    assert_eq!((blobs(), snapshots(t.path()).len()), before);
    drop(held);
    // Then at once: the removed image's blobs and layer go, the other image's stay.
    let st = store
        .try_collect()
        .unwrap()
        .expect("nothing holds the store");
    assert!(st.blobs_removed >= 2 && st.snapshots_removed == 1, "{st:?}");
    assert_eq!(
        (blobs(), snapshots(t.path()).len()),
        (before.0 - st.blobs_removed as usize, 1)
    );
    assert_eq!(store.get("frees").unwrap().unwrap().id, img.id);
}

/// A layer snapshot whose removal fails part way (here: a mount inside it; a crash does the
/// same) does not pass for a whole one afterwards: it left its name before its files went,
/// so a pull of the image unpacks the layer again.
#[test]
fn a_snapshot_removed_part_way_is_not_taken_for_whole() {
    let reg = Registry::start();
    let la = vec![layer(
        &tar_of(&[E::File("f", b"first", 0o644), E::Dir("sub", 0o755)]),
        MT_GZIP,
    )];
    push_image(
        &reg.addr,
        "library/partgone",
        Some("latest"),
        &la,
        &config_json("amd64", "", &la),
        false,
    );
    let t = TempDir::new("partgone");
    let store = open_store(t.path(), &reg.addr);
    store.pull("partgone", &PullOptions::default()).unwrap();
    let snaps = snapshots(t.path());
    assert_eq!(snaps.len(), 1);
    let snap = t.path().join("snapshots").join(&snaps[0]);
    // A mount point inside it: its removal stops there, with `f` already gone.
    let m = snap.join("sub");
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(&m)
        .status()
        .unwrap();
    assert!(ok.success(), "mount tmpfs");
    assert!(store.remove_image("partgone").unwrap());
    let r = store.collect();
    let left: Vec<String> = std::fs::read_dir(t.path().join("snapshots"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    // (Unmounted wherever it went, before any assertion.)
    for n in &left {
        let _ = std::process::Command::new("umount")
            .arg(t.path().join("snapshots").join(n).join("sub"))
            .status();
    }
    assert!(r.is_err(), "the removal was to fail at the mount: {r:?}");
    assert!(
        !snap.exists(),
        "a half-removed snapshot kept its name: {left:?}"
    );
    // Pulled again: the layer is unpacked whole.
    store.pull("partgone", &PullOptions::default()).unwrap();
    assert_eq!(std::fs::read(snap.join("f")).unwrap(), b"first");
}

#[test]
fn a_tag_given_with_a_digest_is_not_moved() {
    // `name:tag@digest` pulls the pinned content and leaves the tag where it is (as
    // containerd): a later `name:tag` must still be the tag's own image.
    let reg = Registry::start();
    let la = vec![layer(&tar_of(&[E::File("a", b"a", 0o644)]), MT_GZIP)];
    let lb = vec![layer(&tar_of(&[E::File("b", b"b", 0o644)]), MT_GZIP)];
    let a = push_image(
        &reg.addr,
        "pin",
        Some("t"),
        &la,
        &config_json("amd64", "", &la),
        false,
    );
    let b = push_image(
        &reg.addr,
        "pin",
        None,
        &lb,
        &config_json("amd64", "", &lb),
        false,
    );
    let t = TempDir::new("pin");
    let store = open_store(t.path(), &reg.addr);
    let tagged = format!("{}/pin:t", reg.addr);
    store.pull(&tagged, &PullOptions::default()).unwrap();
    let pinned = store
        .pull(
            &format!("{}/pin:t@{}", reg.addr, b.manifest_digest),
            &PullOptions::default(),
        )
        .unwrap();
    assert_eq!(pinned.id, b.config_digest, "the digest's image is pulled");
    assert!(pinned.repo_tags.is_empty(), "{:?}", pinned.repo_tags);
    let img = store.get(&tagged).unwrap().unwrap();
    assert_eq!(img.id, a.config_digest, "the tag moved to the pinned image");
    assert_eq!(img.repo_tags, vec![tagged]);
}

#[test]
fn hostile_layer_in_a_pull_leaves_no_image() {
    let reg = Registry::start();
    let mut evil = Vec::new();
    let mut h = raw_header("../escape", tar::EntryType::Regular, 0o644, 1, None);
    h.set_cksum();
    evil.extend_from_slice(h.as_bytes());
    evil.extend_from_slice(&[b'x'; 512]);
    evil.extend_from_slice(&[0; 1024]);
    let layers = vec![
        layer(&tar_of(&[E::File("ok", b"ok", 0o644)]), MT_GZIP),
        layer(&evil, MT_GZIP),
    ];
    let cfg = config_json("amd64", "", &layers);
    push_image(&reg.addr, "evil", Some("v1"), &layers, &cfg, false);
    let t = TempDir::new("evil");
    let store = open_store(t.path(), &reg.addr);
    let e = store
        .pull(&format!("{}/evil:v1", reg.addr), &PullOptions::default())
        .unwrap_err();
    assert!(matches!(e, Error::HostileLayer { .. }), "{e}");
    assert!(store.list().unwrap().is_empty());
    assert!(!t.path().join("escape").exists() && !t.path().join("snapshots/escape").exists());
}

#[test]
fn cli_pull_list_inspect_mount() {
    let reg = Registry::start();
    let layers = busybox_layers();
    let cfg = config_json("amd64", "", &layers);
    push_image(
        &reg.addr,
        "library/busybox",
        Some("latest"),
        &layers,
        &cfg,
        false,
    );
    let t = TempDir::new("cli");
    let cfgfile = t.path().join("registries.json");
    std::fs::write(&cfgfile, format!(r#"{{"registries":{{"docker.io":{{"mirrors":[{{"endpoint":"http://{}","insecure":true}}],"mirrors_only":true}}}}}}"#, reg.addr)).unwrap();
    let root = t.path().join("store");
    let bin = env!("CARGO_BIN_EXE_rsrun-image");
    let run = |args: &[&str]| {
        let o = Command::new(bin)
            .arg("--root")
            .arg(&root)
            .arg("--config")
            .arg(&cfgfile)
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let id = run(&["pull", "busybox"]);
    assert!(id.trim().starts_with("sha256:"));
    let list = run(&["list"]);
    assert!(list.contains("docker.io/library/busybox:latest"), "{list}");
    let ins: serde_json::Value = serde_json::from_str(&run(&["inspect", "busybox"])).unwrap();
    assert_eq!(ins["image"]["layers"].as_array().unwrap().len(), 3);
    let mnt = t.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    run(&["mount", "--rw", "busybox", mnt.to_str().unwrap()]);
    assert!(mnt.join("bin/busybox").exists());
    std::fs::write(mnt.join("new"), b"n").unwrap();
    run(&["unmount", mnt.to_str().unwrap()]);
    assert!(!mnt.join("bin/busybox").exists());
    run(&["mount", "busybox", mnt.to_str().unwrap()]);
    assert!(!mnt.join("new").exists(), "rw changes dropped at unmount");
    assert!(std::fs::write(mnt.join("x"), b"x").is_err());
    run(&["unmount", mnt.to_str().unwrap()]);
    let fsinfo: serde_json::Value = serde_json::from_str(&run(&["fsinfo"])).unwrap();
    assert!(fsinfo["image_fs"]["used_bytes"].as_u64().unwrap() > 1_000_000);
    // bad input is named
    let o = Command::new(bin)
        .arg("--root")
        .arg(&root)
        .args(["pull", "--platform", "linux", "busybox"])
        .output()
        .unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("os/arch"));
    let o = Command::new(bin)
        .arg("--root")
        .arg(&root)
        .args(["pull", "--creds", "nocolon", "busybox"])
        .output()
        .unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("user:password"));
}

#[test]
fn many_layers_exceed_overlay_option_page() {
    let reg = Registry::start();
    let layers: Vec<Layer> = (0..40)
        .map(|i| {
            layer(
                &tar_of(&[E::File(&format!("l{i}"), format!("{i}").as_bytes(), 0o644)]),
                MT_GZIP,
            )
        })
        .collect();
    let cfg = config_json("amd64", "", &layers);
    push_image(&reg.addr, "many", Some("v1"), &layers, &cfg, false);
    let t = TempDir::new("many");
    // a long store path makes 40 lowerdirs far longer than one page
    let root = t.path().join("x".repeat(200)).join("y".repeat(200));
    let store = open_store(&root, &reg.addr);
    store
        .pull(
            &format!("{}/many:v1", reg.addr),
            &PullOptions {
                concurrency: 6,
                ..Default::default()
            },
        )
        .unwrap();
    let rootfs = store
        .prepare_rootfs("many", &format!("{}/many:v1", reg.addr), false)
        .unwrap();
    for i in 0..40 {
        assert_eq!(
            std::fs::read_to_string(rootfs.join(format!("l{i}"))).unwrap(),
            i.to_string()
        );
    }
    store.remove_rootfs("many").unwrap();
}

/// A layer listed twice (the classic builder gives every step that changed nothing the same
/// empty layer) and a one-layer image mounted read-only (an image volume): both are mounts
/// overlayfs refuses as such (a lowerdir given twice; a single lowerdir without an upper).
#[test]
fn repeated_layers_and_a_read_only_single_layer_mount() {
    let reg = Registry::start();
    let empty = tar_of(&[]);
    let a = tar_of(&[E::File("a", b"a1", 0o644), E::File("gone", b"g", 0o644)]);
    let b = tar_of(&[
        E::File("b", b"b", 0o644),
        E::File(".wh.gone", b"", 0o644),
        E::File("a", b"from b", 0o644),
    ]);
    // [A, E, B, E, A]: A on top again shows its own a and gone, over B's.
    let layers = vec![
        layer(&a, MT_GZIP),
        layer(&empty, MT_GZIP),
        layer(&b, MT_GZIP),
        layer(&empty, MT_GZIP),
        layer(&a, MT_GZIP),
    ];
    let cfg = config_json("amd64", "", &layers);
    push_image(&reg.addr, "repeated", Some("v1"), &layers, &cfg, false);
    let one = vec![layer(&tar_of(&[E::File("data", b"d", 0o644)]), MT_GZIP)];
    let cfg1 = config_json("amd64", "", &one);
    push_image(&reg.addr, "one", Some("v1"), &one, &cfg1, false);
    let t = TempDir::new("repeated");
    let store = open_store(t.path(), &reg.addr);
    let (rep, single) = (
        format!("{}/repeated:v1", reg.addr),
        format!("{}/one:v1", reg.addr),
    );
    let img = store.pull(&rep, &PullOptions::default()).unwrap();
    assert_eq!(img.layers.len(), 5);
    store.pull(&single, &PullOptions::default()).unwrap();
    for (id, readonly) in [("rw", false), ("ro", true)] {
        let root = store.prepare_rootfs(id, &rep, readonly).unwrap();
        assert_eq!(std::fs::read(root.join("a")).unwrap(), b"a1", "{id}");
        assert_eq!(std::fs::read(root.join("gone")).unwrap(), b"g", "{id}");
        assert_eq!(std::fs::read(root.join("b")).unwrap(), b"b", "{id}");
        store.remove_rootfs(id).unwrap();
    }
    let root = store.prepare_rootfs("vol", &single, true).unwrap();
    assert_eq!(std::fs::read(root.join("data")).unwrap(), b"d");
    let e = std::fs::write(root.join("new"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    store.remove_rootfs("vol").unwrap();
    assert!(!root.exists());
    // And an image without layers, read-only: two empty lowerdirs.
    let cfg0 = config_json("amd64", "", &[]);
    push_image(&reg.addr, "none", Some("v1"), &[], &cfg0, false);
    let none = format!("{}/none:v1", reg.addr);
    store.pull(&none, &PullOptions::default()).unwrap();
    let root = store.prepare_rootfs("nil", &none, true).unwrap();
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
    let e = std::fs::write(root.join("new"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    store.remove_rootfs("nil").unwrap();
}

#[test]
fn https_with_a_configured_ca() {
    let reg = Registry::start();
    let layers = busybox_layers();
    let cfg = config_json("amd64", "0", &layers);
    let pushed = push_image(
        &reg.addr,
        "library/busybox",
        Some("tls"),
        &layers,
        &cfg,
        false,
    );
    // A test CA and a certificate it signs for 127.0.0.1; the same content over HTTPS.
    let t = TempDir::new("tls");
    let (ca, cert, key) = (
        t.path().join("ca.pem"),
        t.path().join("cert.pem"),
        t.path().join("key.pem"),
    );
    let script = "set -e; cd \"$1\"; \
        openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=rsrun-test-ca -keyout ca.key -out ca.pem; \
        openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout key.pem -out leaf.csr; \
        printf 'subjectAltName=IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\n' > ext; \
        openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile ext -out cert.pem";
    let ok = std::process::Command::new("sh")
        .args(["-c", script, "sh"])
        .arg(t.path())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl");
    assert!(ok.success());
    let tls = Registry::start_tls(&reg.storage(), &cert, &key);
    let image = format!("{}/library/busybox:tls", tls.addr);
    // Without the CA the certificate is not trusted: an error, nothing stored.
    let untrusted =
        ImageStore::open(t.path().join("a"), rsrun_image::RegistryConfig::default()).unwrap();
    let e = untrusted.pull(&image, &PullOptions::default()).unwrap_err();
    assert!(e.to_string().contains("https://"), "{e}");
    assert!(untrusted.list().unwrap().is_empty());
    // With the CA configured for that registry the pull works over HTTPS.
    let conf = rsrun_image::RegistryConfig::from_json(&format!(
        r#"{{"registries":{{"{}":{{"ca_file":"{}"}}}}}}"#,
        tls.addr,
        ca.display()
    ))
    .unwrap();
    let store = ImageStore::open(t.path().join("b"), conf).unwrap();
    let img = store.pull(&image, &PullOptions::default()).unwrap();
    assert_eq!(img.id, pushed.config_digest);
}

/// An inspection mount that fails (a ',' in the target, which overlay options cannot carry)
/// leaves what is mounted at the target alone, and so does an unmount after the image's
/// overlay was undone by hand and something else mounted there.
#[test]
fn a_target_mounted_by_someone_else_is_left_mounted() {
    let reg = Registry::start();
    let one = vec![layer(&tar_of(&[E::File("data", b"d", 0o644)]), MT_GZIP)];
    let cfg = config_json("amd64", "", &one);
    push_image(&reg.addr, "one", Some("v1"), &one, &cfg, false);
    let t = TempDir::new("theirs");
    let store = open_store(t.path(), &reg.addr);
    let image = format!("{}/one:v1", reg.addr);
    store.pull(&image, &PullOptions::default()).unwrap();
    let theirs = |target: &Path| {
        std::fs::create_dir_all(target).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "theirs"])
            .arg(target)
            .status()
            .unwrap()
            .success();
        assert!(ok);
        std::fs::write(target.join("marker"), b"m").unwrap();
    };
    let umount = |target: &Path| {
        assert!(Command::new("umount")
            .arg(target)
            .status()
            .unwrap()
            .success());
    };

    let comma = t.path().join("a,b");
    theirs(&comma);
    let e = store.mount_image(&image, &comma, false).unwrap_err();
    assert!(e.to_string().contains("','"), "{e}");
    assert!(
        comma.join("marker").exists(),
        "the failed mount unmounted the target's own"
    );
    umount(&comma);

    let target = t.path().join("view");
    std::fs::create_dir_all(&target).unwrap();
    store.mount_image(&image, &target, false).unwrap();
    assert_eq!(std::fs::read(target.join("data")).unwrap(), b"d");
    umount(&target);
    theirs(&target);
    store.unmount_image(&target).unwrap();
    assert!(
        target.join("marker").exists(),
        "unmount_image unmounted another mount"
    );
    umount(&target);
}

/// A directory a layer makes only for the entries below it shows the layers' below metadata,
/// as containerd gives it: `/tmp` stays 1777 and a home directory its owner when an upper
/// layer adds a file to them without their entries. Merged as overlayfs merges: nothing
/// from under a whiteout or an opaque directory; the layers fixed bottom-up, so that a
/// middle layer's implicit directory passes its inherited metadata on.
#[test]
fn implicit_directories_inherit_from_the_layers_below() {
    let reg = Registry::start();
    let l1 = tar_of(&[
        E::Dir("tmp/", 0o1777),
        E::DirOwned("home/app/", 0o750, 1000, 1000),
        E::Dir("opt/", 0o700),
        E::Dir("var/", 0o711),
        E::Dir("var/lib/", 0o701),
        E::Dir("srv/", 0o755),
        E::Dir("srv/sub/", 0o750),
        E::Dir("deep/", 0o755),
        E::Dir("deep/b/", 0o755),
        E::Dir("deep/b/c/", 0o750),
        E::DirOwned("own/s/", 0o700, 1000, 1000),
    ]);
    let l2 = tar_of(&[
        E::Dir("deep/", 0o755),
        E::File("deep/.wh..wh..opq", b"", 0o644),
        E::Dir("deep/b/", 0o755),
        E::File("tmp/a", b"a", 0o644),
        E::File("home/app/f", b"f", 0o644),
        E::File("opt/x", b"x", 0o644),
        E::File("var/.wh.lib", b"", 0o644),
        E::Dir("srv/", 0o700),
        E::File("srv/.wh..wh..opq", b"", 0o644),
    ]);
    let l3 = tar_of(&[
        E::File("var/lib/z", b"z", 0o644),
        E::File("srv/sub/y", b"y", 0o644),
        E::File("opt/more", b"m", 0o644),
        E::File("deep/b/c/z", b"z", 0o644),
        E::Dir("own/", 0o755),
        E::File("own/.wh..wh..opq", b"", 0o644),
        E::File("own/s/f", b"f", 0o644),
    ]);
    let layers = vec![layer(&l1, MT_GZIP), layer(&l2, MT_GZIP), layer(&l3, MT_TAR)];
    let cfg = config_json("amd64", "", &layers);
    push_image(&reg.addr, "implicit", Some("v1"), &layers, &cfg, false);
    let t = TempDir::new("implicit");
    let store = open_store(t.path(), &reg.addr);
    let image = format!("{}/implicit:v1", reg.addr);
    store.pull(&image, &PullOptions::default()).unwrap();
    let root = store.prepare_rootfs("imp", &image, true).unwrap();
    let meta = |p: &str| {
        let m = std::fs::metadata(root.join(p)).unwrap();
        (m.mode() & 0o7777, m.uid(), m.gid())
    };
    assert_eq!(meta("tmp"), (0o1777, 0, 0), "tmp");
    assert_eq!(meta("home/app"), (0o750, 1000, 1000), "home/app");
    assert_eq!(
        meta("home"),
        (0o755, 0, 0),
        "home (implicit in the base layer)"
    );
    assert_eq!(meta("opt"), (0o700, 0, 0), "opt (two layers up)");
    assert_eq!(meta("var"), (0o711, 0, 0), "var");
    assert_eq!(meta("var/lib"), (0o755, 0, 0), "var/lib (whited out below)");
    assert_eq!(meta("srv"), (0o700, 0, 0), "srv");
    assert_eq!(
        meta("srv/sub"),
        (0o755, 0, 0),
        "srv/sub (under an opaque directory)"
    );
    assert_eq!(
        meta("deep/b/c"),
        (0o755, 0, 0),
        "deep/b/c (an opaque directory two up)"
    );
    assert_eq!(
        meta("own/s"),
        (0o755, 0, 0),
        "own/s (under the layer's own opaque directory)"
    );
    assert_eq!(std::fs::read(root.join("srv/sub/y")).unwrap(), b"y");
    store.remove_rootfs("imp").unwrap();
}
