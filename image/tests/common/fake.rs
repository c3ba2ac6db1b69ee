//! A registry of the tests' own that can be told to misbehave: it serves manifests and blobs
//! from memory (OCI distribution paths, HTTP/1.1 with keep-alive) and, before that, asks its
//! rules, which may answer anything: an error status with a hostile message, a redirect
//! anywhere, a body dripped a byte at a time or stalled forever, wrong headers. Extra listeners
//! (another port of 127.0.0.1, a "storage host" or "token realm") share the same handler and
//! rules; every request is logged with the port it came in on.
#![allow(dead_code)]

use super::{Layer, Pushed};
use rsrun_image::Digest;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: String,
    pub target: String,
    /// Lower-cased names.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    /// The local port the request came in on (which listener).
    pub port: u16,
}

impl Req {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

pub enum Body {
    Bytes(Vec<u8>),
    /// `first` bytes at once, then one byte every `every` (Content-Length is the full size).
    Drip {
        data: Vec<u8>,
        first: usize,
        every: Duration,
    },
    /// `first` bytes of `data`, then nothing, ever (until the client goes away).
    Stall {
        data: Vec<u8>,
        first: usize,
    },
}

pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Body,
    /// Overrides the Content-Length header (None: the body's real length).
    pub content_length: Option<String>,
    /// Delay before the status line is sent.
    pub delay: Duration,
}

impl Reply {
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            headers: vec![],
            body: Body::Bytes(body.into()),
            content_length: None,
            delay: Duration::ZERO,
        }
    }
    pub fn header(mut self, k: &str, v: impl Into<String>) -> Reply {
        self.headers.push((k.to_string(), v.into()));
        self
    }
    pub fn redirect(status: u16, location: impl Into<String>) -> Reply {
        Reply::new(status, Vec::new()).header("Location", location)
    }
    /// A registry error body: `{"errors":[{"code":..,"message":..}]}`.
    pub fn error(status: u16, code: &str, message: &str) -> Reply {
        let body =
            serde_json::to_vec(&serde_json::json!({"errors":[{"code":code,"message":message}]}))
                .unwrap();
        Reply::new(status, body).header("Content-Type", "application/json")
    }
}

type Rule = Arc<dyn Fn(&Req) -> Option<Reply> + Send + Sync>;

#[derive(Default)]
struct Content {
    /// (repo, tag or digest) → (media type, bytes)
    manifests: HashMap<(String, String), (String, Vec<u8>)>,
    blobs: HashMap<String, Vec<u8>>,
}

struct Shared {
    content: Mutex<Content>,
    rules: Mutex<Vec<Rule>>,
    log: Mutex<Vec<Req>>,
    stop: AtomicBool,
}

pub struct Fake {
    /// `127.0.0.1:PORT` of the main listener.
    pub addr: String,
    shared: Arc<Shared>,
    listeners: Mutex<Vec<String>>,
}

/// A connection, plain or TLS.
trait Stream: Read + Write + Send {
    fn tcp(&self) -> &TcpStream;
}
impl Stream for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}
impl Stream for rustls::StreamOwned<rustls::ServerConnection, TcpStream> {
    fn tcp(&self) -> &TcpStream {
        &self.sock
    }
}

impl Fake {
    pub fn start() -> Fake {
        Fake::start_with(None)
    }

    /// The main listener speaks TLS with this certificate chain and key (PEM files).
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> Fake {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        Fake::start_with(Some(Arc::new(cfg)))
    }

    fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> Fake {
        let shared = Arc::new(Shared {
            content: Mutex::new(Content::default()),
            rules: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let mut f = Fake {
            addr: String::new(),
            shared,
            listeners: Mutex::new(Vec::new()),
        };
        f.addr = f.listen_with(tls);
        f
    }

    /// Another (plain HTTP) listener on a new port of 127.0.0.1 with the same handler; returns
    /// its address.
    pub fn listen(&self) -> String {
        self.listen_with(None)
    }

    fn listen_with(&self, tls: Option<Arc<rustls::ServerConfig>>) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let port = l.local_addr().unwrap().port();
        let shared = self.shared.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                if shared.stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(c) = c else { continue };
                let _ = c.set_nodelay(true);
                let shared = shared.clone();
                let tls = tls.clone();
                std::thread::spawn(move || match tls {
                    None => serve_conn(c, port, &shared),
                    Some(cfg) => {
                        let Ok(conn) = rustls::ServerConnection::new(cfg) else {
                            return;
                        };
                        serve_conn(rustls::StreamOwned::new(conn, c), port, &shared)
                    }
                });
            }
        });
        self.listeners.lock().unwrap().push(addr.clone());
        addr
    }

    /// Adds a rule, asked before the built-in content (rules added first win).
    pub fn on(&self, f: impl Fn(&Req) -> Option<Reply> + Send + Sync + 'static) {
        self.shared.rules.lock().unwrap().push(Arc::new(f));
    }
    pub fn clear_rules(&self) {
        self.shared.rules.lock().unwrap().clear();
    }

    pub fn add_blob(&self, data: &[u8]) -> Digest {
        let d = Digest::of_bytes(data);
        self.shared
            .content
            .lock()
            .unwrap()
            .blobs
            .insert(d.to_string(), data.to_vec());
        d
    }

    /// Serves `body` as `repo`'s manifest under its digest and, if given, a tag.
    pub fn add_manifest(&self, repo: &str, tag: Option<&str>, mt: &str, body: &[u8]) -> Digest {
        let d = Digest::of_bytes(body);
        let mut c = self.shared.content.lock().unwrap();
        c.manifests.insert(
            (repo.to_string(), d.to_string()),
            (mt.to_string(), body.to_vec()),
        );
        if let Some(t) = tag {
            c.manifests.insert(
                (repo.to_string(), t.to_string()),
                (mt.to_string(), body.to_vec()),
            );
        }
        d
    }

    /// Layers + config + an OCI manifest (tagged `tag`).
    pub fn add_image(&self, repo: &str, tag: &str, layers: &[Layer], config: &[u8]) -> Pushed {
        let cd = self.add_blob(config);
        let descs: Vec<_> = layers
            .iter()
            .map(|l| {
                let d = self.add_blob(&l.blob);
                serde_json::json!({"mediaType": l.media_type, "digest": d.to_string(), "size": l.blob.len()})
            })
            .collect();
        let m = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
            "config": {"mediaType": MT_OCI_CONFIG, "digest": cd.to_string(), "size": config.len()},
            "layers": descs,
        }))
        .unwrap();
        let md = self.add_manifest(repo, Some(tag), MT_OCI_MANIFEST, &m);
        Pushed {
            manifest_digest: md,
            config_digest: cd,
            manifest: m,
        }
    }

    /// Every request so far.
    pub fn log(&self) -> Vec<Req> {
        self.shared.log.lock().unwrap().clone()
    }
    pub fn clear_log(&self) {
        self.shared.log.lock().unwrap().clear();
    }
    /// How many requests had `method` and a target containing `contains`.
    pub fn count(&self, method: &str, contains: &str) -> usize {
        self.log()
            .iter()
            .filter(|r| r.method == method && r.target.contains(contains))
            .count()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for a in self.listeners.lock().unwrap().iter() {
            let _ = TcpStream::connect(a);
        }
    }
}

fn read_request<S: Read>(r: &mut BufReader<S>, port: u16) -> Option<Req> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(Req {
        method,
        target,
        headers,
        body,
        port,
    })
}

fn serve_conn<S: Stream>(c: S, port: u16, shared: &Shared) {
    let mut r = BufReader::new(c);
    while let Some(req) = read_request(&mut r, port) {
        shared.log.lock().unwrap().push(req.clone());
        let rules: Vec<Rule> = shared.rules.lock().unwrap().clone();
        let reply = rules
            .iter()
            .find_map(|f| f(&req))
            .unwrap_or_else(|| builtin(shared, &req));
        if !send(r.get_mut(), &req, reply, shared) {
            break;
        }
    }
    let _ = r.get_mut().flush();
    let _ = r.get_ref().tcp().shutdown(Shutdown::Both);
}

/// Writes the reply; false when the connection must be closed afterwards.
fn send<S: Stream>(w: &mut S, req: &Req, reply: Reply, shared: &Shared) -> bool {
    if !reply.delay.is_zero() {
        std::thread::sleep(reply.delay);
    }
    let head = req.method == "HEAD";
    let (len, keep) = match &reply.body {
        Body::Bytes(b) => (b.len(), true),
        Body::Drip { data, .. } | Body::Stall { data, .. } => (data.len(), false),
    };
    let mut s = format!("HTTP/1.1 {} X\r\n", reply.status);
    match &reply.content_length {
        Some(v) => s.push_str(&format!("Content-Length: {v}\r\n")),
        None => s.push_str(&format!("Content-Length: {len}\r\n")),
    }
    for (k, v) in &reply.headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    if !keep {
        s.push_str("Connection: close\r\n");
    }
    s.push_str("\r\n");
    if head {
        return w.write_all(s.as_bytes()).is_ok() && w.flush().is_ok() && keep;
    }
    if let Body::Bytes(b) = &reply.body {
        let mut all = s.into_bytes();
        all.extend_from_slice(b);
        return w.write_all(&all).is_ok() && w.flush().is_ok() && reply.content_length.is_none();
    }
    if w.write_all(s.as_bytes()).is_err() {
        return false;
    }
    match reply.body {
        Body::Bytes(_) => unreachable!("sent above"),
        Body::Drip { data, first, every } => {
            let first = first.min(data.len());
            if w.write_all(&data[..first]).is_err() {
                return false;
            }
            for b in &data[first..] {
                if shared.stop.load(Ordering::Relaxed) {
                    return false;
                }
                std::thread::sleep(every);
                if w.write_all(std::slice::from_ref(b)).is_err() || w.flush().is_err() {
                    return false;
                }
            }
            false
        }
        Body::Stall { data, first } => {
            let _ = w.write_all(&data[..first.min(data.len())]);
            let _ = w.flush();
            // Hold the connection open until the client closes it (or the test ends).
            let start = Instant::now();
            let mut probe = [0u8; 1];
            let _ = w.tcp().set_read_timeout(Some(Duration::from_millis(100)));
            while !shared.stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(600)
            {
                match w.read(&mut probe) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(_) => break,
                }
            }
            false
        }
    }
}

/// The well-behaved registry: `/v2/`, manifests by tag or digest, blobs by digest.
fn builtin(shared: &Shared, req: &Req) -> Reply {
    let path = req.path();
    if path == "/v2/" || path == "/v2" {
        return Reply::new(200, b"{}".to_vec());
    }
    let c = shared.content.lock().unwrap();
    if let Some(rest) = path.strip_prefix("/v2/") {
        if let Some((repo, reference)) = rest.rsplit_once("/manifests/") {
            return match c.manifests.get(&(repo.to_string(), reference.to_string())) {
                Some((mt, b)) => Reply::new(200, b.clone())
                    .header("Content-Type", mt.clone())
                    .header("Docker-Content-Digest", Digest::of_bytes(b).to_string()),
                None => Reply::error(404, "MANIFEST_UNKNOWN", "manifest unknown"),
            };
        }
        if let Some((_, d)) = rest.rsplit_once("/blobs/") {
            return match c.blobs.get(d) {
                Some(b) => Reply::new(200, b.clone())
                    .header("Content-Type", "application/octet-stream")
                    .header("Docker-Content-Digest", d.to_string()),
                None => Reply::error(404, "BLOB_UNKNOWN", "blob unknown"),
            };
        }
    }
    Reply::error(404, "NOT_FOUND", "not found")
}

/// A blob body by digest, for rules that serve content from elsewhere (a storage host).
impl Fake {
    pub fn blob(&self, d: &str) -> Option<Vec<u8>> {
        self.shared.content.lock().unwrap().blobs.get(d).cloned()
    }
}
