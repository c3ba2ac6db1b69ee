//! Test harness: a real registry (Debian's docker-registry) on 127.0.0.1, a throttling and
//! request-counting proxy in front of it, temp dirs, and image building/pushing.
#![allow(dead_code)]

pub mod fake;

use rsrun_image::{Digest, ImageStore, RegistryConfig};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "rsrun-image-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Unmount anything a failed test left below us before deleting.
        if let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") {
            let me = self.0.to_string_lossy().to_string();
            let mut mps: Vec<String> = info
                .lines()
                .filter_map(|l| l.split(' ').nth(4))
                .filter(|m| m.starts_with(&me))
                .map(String::from)
                .collect();
            mps.sort_by_key(|m| std::cmp::Reverse(m.len()));
            for m in mps {
                let _ = Command::new("umount").arg("-l").arg(&m).status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn registry_bin() -> &'static str {
    ["/usr/bin/docker-registry", "/usr/sbin/docker-registry"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("docker-registry is not installed: apt-get install docker-registry (integration/stages/30-image.sh does)")
}

fn spawn_registry(bin: &str, cfg: &Path, log: &Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    Command::new(bin)
        .arg("serve")
        .arg(cfg)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// Debian's docker-registry, started for one test with its own port and storage.
pub struct Registry {
    child: Child,
    pub addr: String,
    _dir: TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        let bin = registry_bin();
        let dir = TempDir::new("registry");
        for _attempt in 0..5 {
            let port = free_port();
            let addr = format!("127.0.0.1:{port}");
            let cfg = dir.path().join("config.yml");
            // A header of its own in every answer: the probe below knows it reached this
            // registry, not another test's that took the port meanwhile.
            let me = dir.path().display().to_string();
            std::fs::write(
                &cfg,
                format!(
                    "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n  headers:\n    X-Rsrun-Test-Registry: [\"{me}\"]\n",
                    dir.path().join("storage").display()
                ),
            )
            .unwrap();
            let mut child = spawn_registry(bin, &cfg, &dir.path().join("registry.log"));
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if let Ok(r) = http().get(&format!("http://{addr}/v2/")).call() {
                    if r.status() == 200
                        && r.headers()
                            .get("x-rsrun-test-registry")
                            .and_then(|v| v.to_str().ok())
                            == Some(me.as_str())
                    {
                        return Registry {
                            child,
                            addr,
                            _dir: dir,
                        };
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "docker-registry did not start: {}",
            std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default()
        );
    }
}

impl Registry {
    /// Where this registry keeps its content.
    pub fn storage(&self) -> PathBuf {
        self._dir.path().join("storage")
    }

    /// A second registry serving `storage` over HTTPS with `cert`/`key`.
    pub fn start_tls(storage: &Path, cert: &Path, key: &Path) -> Registry {
        let bin = registry_bin();
        let dir = TempDir::new("registry-tls");
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let cfg = dir.path().join("config.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n  tls:\n    certificate: {}\n    key: {}\n",
                storage.display(),
                cert.display(),
                key.display()
            ),
        )
        .unwrap();
        let child = spawn_registry(bin, &cfg, &dir.path().join("registry.log"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && TcpStream::connect(&addr).is_err() {
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into()
}

/// A TCP proxy that counts `GET /v2/...` request lines per path and can throttle responses.
pub struct Proxy {
    pub addr: String,
    pub requests: Arc<Mutex<HashMap<String, u64>>>,
    /// Bytes per second for responses; 0 = unthrottled.
    pub rate: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(upstream: &str) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let requests = Arc::new(Mutex::new(HashMap::new()));
        let rate = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (up, req2, rate2, stop2) = (
            upstream.to_string(),
            requests.clone(),
            rate.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || {
            for c in l.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(c) = c else { continue };
                let (up, req, rate) = (up.clone(), req2.clone(), rate2.clone());
                std::thread::spawn(move || proxy_conn(c, &up, req, rate));
            }
        });
        Proxy {
            addr,
            requests,
            rate,
            stop,
        }
    }
    pub fn count(&self, path_contains: &str) -> u64 {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.contains(path_contains))
            .map(|(_, v)| *v)
            .sum()
    }
    pub fn reset(&self) {
        self.requests.lock().unwrap().clear();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(&self.addr);
    }
}

fn proxy_conn(
    client: TcpStream,
    upstream: &str,
    requests: Arc<Mutex<HashMap<String, u64>>>,
    rate: Arc<AtomicU64>,
) {
    let Ok(server) = TcpStream::connect(upstream) else {
        return;
    };
    let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    // client -> server: watch request lines
    std::thread::spawn(move || {
        let mut r = BufReader::new(client);
        let mut line = Vec::new();
        loop {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if line.starts_with(b"GET ") || line.starts_with(b"HEAD ") {
                let s = String::from_utf8_lossy(&line).to_string();
                let key = s.split(' ').take(2).collect::<Vec<_>>().join(" ");
                *requests.lock().unwrap().entry(key).or_default() += 1;
            }
            if s2.write_all(&line).is_err() {
                break;
            }
        }
        let _ = s2.shutdown(std::net::Shutdown::Write);
    });
    let mut buf = vec![0u8; 16 * 1024];
    let mut server = server;
    loop {
        let r = rate.load(Ordering::Relaxed);
        let n = if r > 0 {
            buf.len().min((r / 20).max(1) as usize)
        } else {
            buf.len()
        };
        match server.read(&mut buf[..n]) {
            Ok(0) | Err(_) => break,
            Ok(k) => {
                if c2.write_all(&buf[..k]).is_err() {
                    break;
                }
                if r > 0 {
                    std::thread::sleep(Duration::from_secs_f64(k as f64 / r as f64));
                }
            }
        }
    }
    let _ = c2.shutdown(std::net::Shutdown::Both);
}

// ---------- image building ----------

pub enum E<'a> {
    Dir(&'a str, u32),
    DirOwned(&'a str, u32, u64, u64),
    File(&'a str, &'a [u8], u32),
    FileOwned(&'a str, &'a [u8], u32, u64, u64),
    Link(&'a str, &'a str),
    Symlink(&'a str, &'a str),
    Fifo(&'a str),
    Char(&'a str, u32, u32),
}

pub fn header(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_path(path).unwrap_or_else(|_| {
        let b = path.as_bytes();
        h.as_old_mut().name[..b.len()].copy_from_slice(b);
    });
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(1_600_000_000);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// Raw header with any path (bypassing the tar crate's own `..`/absolute checks).
pub fn raw_header(
    path: &str,
    kind: tar::EntryType,
    mode: u32,
    size: u64,
    link: Option<&str>,
) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    {
        let g = h.as_gnu_mut().unwrap();
        g.name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(l) = link {
            g.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
    }
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(1_600_000_000);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    h
}

pub fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match e {
            E::Dir(p, m) => {
                let mut h = header(p, tar::EntryType::Directory, *m, 0);
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
            E::DirOwned(p, m, uid, gid) => {
                let mut h = header(p, tar::EntryType::Directory, *m, 0);
                h.set_uid(*uid);
                h.set_gid(*gid);
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
            E::File(p, data, m) => {
                let mut h = header(p, tar::EntryType::Regular, *m, data.len() as u64);
                h.set_cksum();
                b.append(&h, *data).unwrap();
            }
            E::FileOwned(p, data, m, uid, gid) => {
                let mut h = header(p, tar::EntryType::Regular, *m, data.len() as u64);
                h.set_uid(*uid);
                h.set_gid(*gid);
                h.set_cksum();
                b.append(&h, *data).unwrap();
            }
            E::Link(p, t) => {
                let mut h = header(p, tar::EntryType::Link, 0o644, 0);
                h.set_link_name(t).unwrap();
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
            E::Symlink(p, t) => {
                let mut h = header(p, tar::EntryType::Symlink, 0o777, 0);
                h.set_link_name(t).unwrap();
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
            E::Fifo(p) => {
                let mut h = header(p, tar::EntryType::Fifo, 0o600, 0);
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
            E::Char(p, maj, min) => {
                let mut h = header(p, tar::EntryType::Char, 0o666, 0);
                h.set_device_major(*maj).unwrap();
                h.set_device_minor(*min).unwrap();
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(data, 3).unwrap()
}

pub const MT_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MT_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const MT_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MT_DOCKER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

pub struct Layer {
    pub blob: Vec<u8>,
    pub media_type: &'static str,
    pub diff_id: Digest,
}

pub fn layer(tar: &[u8], mt: &'static str) -> Layer {
    let blob = match mt {
        MT_GZIP | MT_DOCKER_GZIP => gzip(tar),
        MT_ZSTD => zstd(tar),
        _ => tar.to_vec(),
    };
    Layer {
        blob,
        media_type: mt,
        diff_id: Digest::of_bytes(tar),
    }
}

pub struct Pushed {
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    pub manifest: Vec<u8>,
}

pub fn push_blob(registry: &str, repo: &str, data: &[u8]) -> Digest {
    let d = Digest::of_bytes(data);
    let a = http();
    let r = a
        .post(&format!("http://{registry}/v2/{repo}/blobs/uploads/"))
        .send(&[][..])
        .unwrap();
    assert_eq!(r.status(), 202, "start upload");
    let loc = r
        .headers()
        .get("location")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let loc = if loc.starts_with("http") {
        loc
    } else {
        format!("http://{registry}{loc}")
    };
    let sep = if loc.contains('?') { '&' } else { '?' };
    let r = a
        .put(&format!("{loc}{sep}digest={d}"))
        .header("Content-Type", "application/octet-stream")
        .send(data)
        .unwrap();
    assert_eq!(r.status(), 201, "finish upload of {d}");
    d
}

pub fn push_manifest(
    registry: &str,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
) -> Digest {
    let r = http()
        .put(&format!(
            "http://{registry}/v2/{repo}/manifests/{reference}"
        ))
        .header("Content-Type", media_type)
        .send(body)
        .unwrap();
    let status = r.status();
    assert_eq!(
        status,
        201,
        "push manifest {repo}:{reference}: {}",
        r.into_body().read_to_string().unwrap_or_default()
    );
    Digest::of_bytes(body)
}

pub fn config_json(arch: &str, user: &str, layers: &[Layer]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": { "User": user, "Cmd": ["/bin/sh"] },
        "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>() },
    }))
    .unwrap()
}

/// Pushes layers + config + manifest; tags it when `tag` is given (else by digest only).
pub fn push_image(
    registry: &str,
    repo: &str,
    tag: Option<&str>,
    layers: &[Layer],
    config: &[u8],
    docker_types: bool,
) -> Pushed {
    let cd = push_blob(registry, repo, config);
    let mut descs = Vec::new();
    for l in layers {
        let d = push_blob(registry, repo, &l.blob);
        descs.push(serde_json::json!({"mediaType": l.media_type, "digest": d.to_string(), "size": l.blob.len()}));
    }
    let (mt, cmt) = if docker_types {
        (
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.container.image.v1+json",
        )
    } else {
        (
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.oci.image.config.v1+json",
        )
    };
    let m = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": mt,
        "config": {"mediaType": cmt, "digest": cd.to_string(), "size": config.len()},
        "layers": descs,
    }))
    .unwrap();
    let md = Digest::of_bytes(&m);
    push_manifest(registry, repo, tag.unwrap_or(md.as_str()), mt, &m);
    Pushed {
        manifest_digest: md,
        config_digest: cd,
        manifest: m,
    }
}

pub fn busybox() -> Vec<u8> {
    std::fs::read("/bin/busybox")
        .expect("/bin/busybox (busybox-static) is needed: apt-get install busybox-static")
}

/// A registry config sending docker.io to the test registry (plain HTTP mirror) and
/// allowing plain HTTP to it directly.
pub fn mirror_config(addr: &str) -> RegistryConfig {
    RegistryConfig::from_json(&format!(
        r#"{{"registries":{{"docker.io":{{"mirrors":[{{"endpoint":"http://{addr}","insecure":true}}],"mirrors_only":true}},"{addr}":{{"insecure":true}}}}}}"#
    ))
    .unwrap()
}

pub fn open_store(root: &Path, addr: &str) -> ImageStore {
    ImageStore::open(root, mirror_config(addr)).unwrap()
}

/// Names of the visible (committed) snapshots.
pub fn snapshots(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root.join("snapshots"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| !n.starts_with('.'))
        .collect();
    v.sort();
    v
}

pub fn getxattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: buf is writable for its length; p and n are NUL-terminated.
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return None;
    }
    buf.truncate(r as usize);
    Some(buf)
}

/// Incompressible bytes (xorshift64), so throttled downloads take predictable time.
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}

/// A gzip stream of several members (valid: OCI readers, like ours and Go's, read
/// multi-member gzip) that inflates to a tar holding one file of `zeros` zero bytes:
/// about 1 KiB of gzip per MiB of output, built without compressing the whole output.
pub fn gzip_bomb(zeros: u64) -> Vec<u8> {
    let mut h = header("zeros", tar::EntryType::Regular, 0o644, zeros);
    h.set_cksum();
    let mut out = gzip(h.as_bytes());
    let mib = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(&vec![0u8; 1 << 20]).unwrap();
        e.finish().unwrap()
    };
    let mut left = zeros;
    while left >= 1 << 20 {
        out.extend_from_slice(&mib);
        left -= 1 << 20;
    }
    let pad = (512 - (zeros % 512)) % 512;
    out.extend_from_slice(&gzip(&vec![0u8; (left + pad + 1024) as usize]));
    out
}

/// A test CA and a certificate it signs for 127.0.0.1 (openssl): (ca.pem, cert.pem, key.pem).
pub fn test_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let script = "set -e; cd \"$1\"; \
        openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=rsrun-test-ca -keyout ca.key -out ca.pem; \
        openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout key.pem -out leaf.csr; \
        printf 'subjectAltName=IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\n' > ext; \
        openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile ext -out cert.pem";
    let ok = Command::new("sh")
        .args(["-c", script, "sh"])
        .arg(dir)
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(ok.success(), "openssl failed");
    (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    )
}

/// Bytes on disk (allocated blocks) under `p`, not following symlinks.
pub fn du(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    let mut n = m.blocks() * 512;
    if m.is_dir() {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                n += du(&e.path());
            }
        }
    }
    n
}

/// Entry names in `dir` (empty if it does not exist).
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
