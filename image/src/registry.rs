//! OCI distribution API client: manifests and blobs over HTTP(S), redirects, anonymous,
//! Basic and Bearer-token auth, deadlines and cancellation.

use crate::config::{Credentials, Endpoint};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::text::clean;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Everything but RFC 3986 unreserved characters.
const QUERY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
use std::collections::HashMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use ureq::http::Response;
use ureq::Body;

/// Redirects followed for one request (blob storage, CDNs).
pub const MAX_REDIRECTS: u32 = 10;

/// Largest manifest or index accepted (as containerd).
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;

pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// Cancellation of a pull: a deadline (the gRPC deadline) and/or a flag set by the caller.
/// Checked before every request and on every read of a streamed body; during a pull a
/// watchdog also checks it and interrupts the pull's connections at once when it fails.
#[derive(Clone, Debug, Default)]
pub struct Cancel {
    pub deadline: Option<Instant>,
    pub flag: Option<Arc<AtomicBool>>,
    /// Set by the pull itself when one of its layers failed, to stop the others.
    pub(crate) abort: Option<Arc<AtomicBool>>,
    /// The pull's progress clock (see `PullOptions::progress_timeout`).
    pub(crate) clock: Option<Arc<ProgressClock>>,
}

/// When the pull last received (or unpacked) a byte.
#[derive(Debug)]
pub(crate) struct ProgressClock {
    start: Instant,
    last_ms: AtomicU64,
    timeout: Duration,
}

impl ProgressClock {
    pub(crate) fn new(timeout: Duration) -> ProgressClock {
        ProgressClock {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            timeout,
        }
    }
    fn touch(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(now, Ordering::Relaxed);
    }
    fn stalled(&self) -> bool {
        let idle = (self.start.elapsed().as_millis() as u64)
            .saturating_sub(self.last_ms.load(Ordering::Relaxed));
        idle > self.timeout.as_millis() as u64
    }
}

/// The marker of a layer stopped because another one failed (see `Cancel::check`).
pub(crate) const ABORTED_BY_SIBLING: &str = "(another part of the pull failed)";

impl Cancel {
    pub fn with_deadline(deadline: Instant) -> Cancel {
        Cancel {
            deadline: Some(deadline),
            ..Cancel::default()
        }
    }
    pub fn with_flag(flag: Arc<AtomicBool>) -> Cancel {
        Cancel {
            flag: Some(flag),
            ..Cancel::default()
        }
    }
    pub fn check(&self, what: &str) -> Result<()> {
        if self
            .flag
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
        {
            return Err(Error::Cancelled(what.to_string()));
        }
        if self
            .abort
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
        {
            return Err(Error::Cancelled(format!("{what} {ABORTED_BY_SIBLING}")));
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(Error::DeadlineExceeded(what.to_string()));
        }
        if let Some(c) = self.clock.as_ref().filter(|c| c.stalled()) {
            return Err(Error::Stalled {
                what: what.to_string(),
                secs: c.timeout.as_secs(),
            });
        }
        Ok(())
    }
    /// Records progress (bytes received or unpacked, or waiting for another pull's lock).
    pub(crate) fn touch(&self) {
        if let Some(c) = &self.clock {
            c.touch();
        }
    }
    pub(crate) fn progress_timeout(&self) -> Option<Duration> {
        self.clock.as_ref().map(|c| c.timeout)
    }
    pub(crate) fn remaining(&self) -> Option<Duration> {
        self.deadline.map(|d| {
            d.saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1))
        })
    }
}

/// A reader that fails as soon as the pull is cancelled or its deadline passes.
pub(crate) struct CancelReader<R> {
    pub inner: R,
    pub cancel: Cancel,
}

impl<R: Read> Read for CancelReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Err(e) = self.cancel.check("streaming") {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                CancelledIo(e.to_string()),
            ));
        }
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.cancel.touch();
        }
        Ok(n)
    }
}

#[derive(Debug)]
struct CancelledIo(String);
impl std::fmt::Display for CancelledIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for CancelledIo {}

/// HTTP client settings, one per CA file (and one for the web PKI roots / plain HTTP). Each
/// repository access gets an agent (connection pool) of its own, so that a failed or
/// cancelled pull can interrupt its own connections without touching other pulls'.
pub struct Client {
    configs: Mutex<HashMap<Option<PathBuf>, ureq::config::Config>>,
}

impl Default for Client {
    fn default() -> Self {
        Client::new()
    }
}

/// Where distributions keep the node's trusted roots (Debian, Fedora/RHEL, openSUSE, Alpine).
const SYSTEM_ROOTS: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// The certificates of the first bundle of `paths` that holds any (none when no file does).
fn system_roots(paths: &[&str]) -> Vec<ureq::tls::Certificate<'static>> {
    for p in paths {
        let Ok(pem) = std::fs::read(p) else { continue };
        let certs: Vec<_> = ureq::tls::parse_pem(&pem)
            .filter_map(|i| match i {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c.to_owned()),
                _ => None,
            })
            .collect();
        if !certs.is_empty() {
            return certs;
        }
    }
    Vec::new()
}

impl Client {
    pub fn new() -> Client {
        Client {
            configs: Mutex::new(HashMap::new()),
        }
    }

    /// A new agent (its own connection pool) for one pull from one endpoint.
    fn agent(&self, ca_file: Option<&Path>) -> Result<ureq::Agent> {
        let key = ca_file.map(Path::to_path_buf);
        let mut configs = self.configs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = configs.get(&key) {
            return Ok(ureq::Agent::new_with_config(c.clone()));
        }
        let mut b = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("rsrun-image/", env!("CARGO_PKG_VERSION")))
            .accept_encoding("identity")
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_body(None)
            .max_idle_connections_per_host(16);
        if let Some(ca) = ca_file {
            let pem = std::fs::read(ca).map_err(|e| {
                Error::InvalidConfig(format!("cannot read CA file {}: {e}", ca.display()))
            })?;
            let mut certs = Vec::new();
            for item in ureq::tls::parse_pem(&pem) {
                match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
                    Ok(_) => {}
                    Err(e) => {
                        return Err(Error::InvalidConfig(format!(
                            "CA file {}: {e}",
                            ca.display()
                        )))
                    }
                }
            }
            if certs.is_empty() {
                return Err(Error::InvalidConfig(format!(
                    "CA file {} holds no certificate",
                    ca.display()
                )));
            }
            // Added to the node's trusted roots, not in their place (as containerd's `ca`
            // in hosts.toml): a registry whose blobs redirect to a public CDN needs both.
            certs.extend(system_roots(SYSTEM_ROOTS));
            b = b.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                    .build(),
            );
        }
        let config = b.build();
        configs.insert(key, config.clone());
        Ok(ureq::Agent::new_with_config(config))
    }
}

#[derive(Clone, Debug)]
enum AuthState {
    Anonymous,
    Bearer(String),
    Basic(String),
}

/// One repository on one endpoint, with its auth state shared by the pull's threads.
pub struct Repo {
    agent: ureq::Agent,
    pub endpoint: Endpoint,
    pub path: String,
    creds: Option<Credentials>,
    auth: Mutex<AuthState>,
    cancel: Cancel,
}

/// What a manifest request returned.
pub struct FetchedManifest {
    pub bytes: Vec<u8>,
    pub media_type: String,
    pub digest: Digest,
}

impl Repo {
    pub fn new(
        client: &Client,
        endpoint: Endpoint,
        path: &str,
        creds: Option<Credentials>,
        cancel: Cancel,
    ) -> Result<Repo> {
        let agent = client.agent(endpoint.ca_file.as_deref())?;
        let auth = match &creds {
            Some(Credentials::RegistryToken(t)) => AuthState::Bearer(t.clone()),
            _ => AuthState::Anonymous,
        };
        Ok(Repo {
            agent,
            endpoint,
            path: path.to_string(),
            creds,
            auth: Mutex::new(auth),
            cancel,
        })
    }

    fn registry_err(&self, message: impl Into<String>) -> Error {
        Error::Registry {
            registry: self.endpoint.base_url(),
            message: message.into(),
        }
    }

    /// Interrupts every request of this repository access in flight (blocked reads included).
    pub(crate) fn shutdown(&self) {
        self.agent.clone().shutdown();
    }

    /// The per-request timeouts: the pull's deadline, and the progress timeout for waiting
    /// for the response and for each read of its body.
    fn timeouts<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        let pt = self.cancel.progress_timeout();
        req.config()
            .timeout_global(self.cancel.remaining())
            .timeout_recv_response(pt)
            .timeout_per_read(pt)
            .build()
    }

    /// GET (or HEAD) with redirects and auth challenges handled; `from`: only the bytes from
    /// there on (a Range request, sent again to wherever the registry redirects).
    fn send(
        &self,
        head: bool,
        url: String,
        accept: Option<&str>,
        from: Option<u64>,
        what: &str,
    ) -> Result<Response<Body>> {
        let mut url = url;
        let mut redirects = 0;
        let mut auth_tries = 0;
        loop {
            self.cancel.check(what)?;
            let (scheme, authority, _) = split_url(&url)
                .ok_or_else(|| self.registry_err(format!("bad URL {:?}", clean(&url))))?;
            if scheme == "http" && self.endpoint.scheme == "https" {
                return Err(self.registry_err(format!(
                    "refusing redirect from HTTPS to plain HTTP {} {what}",
                    clean(&url)
                )));
            }
            let same_origin = authority == self.endpoint.host && scheme == self.endpoint.scheme;
            // Who answered, for messages: the registry, or the host it redirected to.
            let who = if same_origin {
                self.endpoint.base_url()
            } else {
                format!(
                    "{scheme}://{} (where {} redirected)",
                    clean(authority),
                    self.endpoint.base_url()
                )
            };
            let mut req = if head {
                self.agent.head(&url)
            } else {
                self.agent.get(&url)
            };
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            if let Some(n) = from {
                req = req.header("Range", format!("bytes={n}-"));
            }
            if same_origin {
                match &*self.auth.lock().unwrap_or_else(|p| p.into_inner()) {
                    AuthState::Anonymous => {}
                    AuthState::Bearer(t) => {
                        req = req.header("Authorization", format!("Bearer {t}"))
                    }
                    AuthState::Basic(h) => req = req.header("Authorization", h.as_str()),
                }
            }
            let resp = self
                .timeouts(req)
                .call()
                .map_err(|e| self.transport_err(e, what))?;
            self.cancel.touch();
            let status = resp.status().as_u16();
            match status {
                200..=299 => return Ok(resp),
                301 | 302 | 303 | 307 | 308 => {
                    redirects += 1;
                    if redirects > MAX_REDIRECTS {
                        return Err(self.registry_err(format!(
                            "more than {MAX_REDIRECTS} redirects {what} (last to {})",
                            clean(&url)
                        )));
                    }
                    let loc = header(&resp, "location").ok_or_else(|| {
                        self.registry_err(format!("{who} redirected without a Location {what}"))
                    })?;
                    url = resolve_url(&url, &loc).map_err(|reason| {
                        self.registry_err(format!("{who} redirected {what}: {reason}"))
                    })?;
                }
                401 if same_origin && auth_tries < 1 => {
                    auth_tries += 1;
                    let challenge = header(&resp, "www-authenticate").unwrap_or_default();
                    self.authenticate(&challenge)?;
                }
                401 | 403 if same_origin => {
                    let msg = error_message(resp);
                    let how = if self.creds.is_some() {
                        "with the given credentials"
                    } else {
                        "anonymously"
                    };
                    return Err(Error::Unauthorized(format!(
                        "{who} denied access {what} {how}: HTTP {status} {msg}"
                    )));
                }
                404 if same_origin => {
                    return Err(Error::NotFound(format!("{} {what} on {who}", self.path)))
                }
                _ => {
                    let msg = error_message(resp);
                    return Err(
                        self.registry_err(format!("{who} answered HTTP {status} {what}: {msg}"))
                    );
                }
            }
        }
    }

    fn transport_err(&self, e: ureq::Error, what: &str) -> Error {
        if let Err(c) = self.cancel.check(what) {
            return c;
        }
        self.registry_err(format!("{what}: {}", clean(&e.to_string())))
    }

    fn authenticate(&self, challenge: &str) -> Result<()> {
        let (scheme, params) = parse_challenge(challenge);
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => {
                let h = self
                    .creds
                    .as_ref()
                    .and_then(Credentials::basic_header)
                    .ok_or_else(|| {
                        Error::Unauthorized(format!(
                            "{} requires credentials (Basic auth)",
                            self.endpoint.base_url()
                        ))
                    })?;
                *self.auth.lock().unwrap_or_else(|p| p.into_inner()) = AuthState::Basic(h);
                Ok(())
            }
            "bearer" => {
                let token = self.fetch_token(&params)?;
                *self.auth.lock().unwrap_or_else(|p| p.into_inner()) = AuthState::Bearer(token);
                Ok(())
            }
            _ => Err(Error::Unauthorized(format!(
                "{} answered 401 with an unsupported challenge \"{}\"",
                self.endpoint.base_url(),
                clean(challenge)
            ))),
        }
    }

    fn fetch_token(&self, params: &HashMap<String, String>) -> Result<String> {
        let realm = params
            .get("realm")
            .ok_or_else(|| self.registry_err("Bearer challenge without realm"))?;
        let shown = clean(realm);
        let (rscheme, rauth, _) = split_url(realm)
            .ok_or_else(|| self.registry_err(format!("bad token realm \"{shown}\"")))?;
        if rscheme == "http" && self.endpoint.scheme != "http" {
            return Err(self.registry_err(format!(
                "token realm {shown} is plain HTTP for an HTTPS registry"
            )));
        }
        // Credentials go to the realm the registry names (as Docker and containerd do), but
        // never in the clear to a host other than the plain-HTTP registry itself.
        if rscheme == "http"
            && self.creds.is_some()
            && !host_part(rauth).eq_ignore_ascii_case(host_part(&self.endpoint.host))
        {
            return Err(self.registry_err(format!(
                "token realm {shown} is plain HTTP on another host than the registry: \
                 credentials are not sent there"
            )));
        }
        let scope = params
            .get("scope")
            .cloned()
            .unwrap_or_else(|| format!("repository:{}:pull", self.path));
        let service = params.get("service").cloned().unwrap_or_default();
        let enc = |s: &str| utf8_percent_encode(s, QUERY).to_string();
        self.cancel.check("fetching a registry token")?;
        let resp = match &self.creds {
            Some(Credentials::IdentityToken(refresh)) => {
                let form = format!(
                    "grant_type=refresh_token&client_id=rsrun&service={}&scope={}&refresh_token={}",
                    enc(&service),
                    enc(&scope),
                    enc(refresh)
                );
                self.timeouts(
                    self.agent
                        .post(realm)
                        .header("Content-Type", "application/x-www-form-urlencoded"),
                )
                .send(form.as_bytes())
            }
            creds => {
                let sep = if realm.contains('?') { '&' } else { '?' };
                let mut url = format!("{realm}{sep}scope={}", enc(&scope));
                if !service.is_empty() {
                    url.push_str(&format!("&service={}", enc(&service)));
                }
                let mut req = self.agent.get(&url);
                if let Some(h) = creds.as_ref().and_then(Credentials::basic_header) {
                    req = req.header("Authorization", h);
                }
                self.timeouts(req).call()
            }
        }
        .map_err(|e| self.transport_err(e, "fetching a registry token"))?;
        self.cancel.touch();
        let status = resp.status().as_u16();
        if status == 401 || status == 403 {
            return Err(Error::Unauthorized(format!(
                "token endpoint {shown} refused the credentials: {}",
                error_message(resp)
            )));
        }
        if status != 200 {
            return Err(self.registry_err(format!(
                "token endpoint {shown} answered HTTP {status}: {}",
                error_message(resp)
            )));
        }
        let body = read_limited(resp, 1 << 20)
            .map_err(|e| self.stream_err(e, "reading the token response"))?;
        #[derive(serde::Deserialize)]
        struct Tok {
            #[serde(default)]
            token: String,
            #[serde(default)]
            access_token: String,
        }
        let t: Tok = serde_json::from_slice(&body)
            .map_err(|e| self.registry_err(format!("bad token response from {shown}: {e}")))?;
        let tok = if t.token.is_empty() {
            t.access_token
        } else {
            t.token
        };
        if tok.is_empty() {
            return Err(self.registry_err("token endpoint returned no token"));
        }
        Ok(tok)
    }

    fn url(&self, kind: &str, reference: &str) -> String {
        format!(
            "{}/v2/{}/{}/{}",
            self.endpoint.base_url(),
            self.path,
            kind,
            reference
        )
    }

    /// GET a manifest or index by tag or digest. Verifies the digest when pinned and
    /// against Docker-Content-Digest when the registry sends it.
    pub fn fetch_manifest(
        &self,
        reference: &str,
        expected: Option<&Digest>,
    ) -> Result<FetchedManifest> {
        let what = format!("fetching manifest {reference}");
        let resp = self.send(
            false,
            self.url("manifests", reference),
            Some(ACCEPT_MANIFESTS),
            None,
            &what,
        )?;
        let media_type = header(&resp, "content-type").unwrap_or_default();
        let header_digest = header(&resp, "docker-content-digest");
        let bytes = read_limited(resp, MAX_MANIFEST_SIZE).map_err(|e| self.stream_err(e, &what))?;
        let digest = Digest::of_bytes(&bytes);
        if let Some(exp) = expected {
            if &digest != exp {
                return Err(Error::DigestMismatch {
                    what: format!("manifest {}", self.path),
                    expected: exp.to_string(),
                    actual: digest.to_string(),
                });
            }
        }
        if let Some(h) = header_digest {
            if h.starts_with("sha256:") && h != digest.as_str() {
                return Err(Error::DigestMismatch {
                    what: format!("manifest {} (Docker-Content-Digest)", self.path),
                    expected: h,
                    actual: digest.to_string(),
                });
            }
        }
        let media_type = media_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        Ok(FetchedManifest {
            bytes,
            media_type,
            digest,
        })
    }

    /// HEAD a manifest: its digest from Docker-Content-Digest, if the registry sends it.
    pub fn head_manifest(&self, reference: &str) -> Result<Option<Digest>> {
        let resp = self.send(
            true,
            self.url("manifests", reference),
            Some(ACCEPT_MANIFESTS),
            None,
            &format!("resolving {reference}"),
        )?;
        Ok(header(&resp, "docker-content-digest").and_then(|d| Digest::parse(&d).ok()))
    }

    /// Streams a blob, with the Content-Length of the answer. The reader fails once the pull
    /// is cancelled; a connection dropped before the answer's end is taken up again where it
    /// ended (`ResumingBlob`).
    pub fn blob(&self, digest: &Digest) -> Result<(Box<dyn Read + Send + '_>, Option<u64>)> {
        let resp = self.send(
            false,
            self.url("blobs", digest.as_str()),
            None,
            None,
            &format!("fetching blob {}", digest.short()),
        )?;
        let len = header(&resp, "content-length").and_then(|l| l.parse().ok());
        Ok((
            self.resuming(digest, resp.into_body().into_reader(), 0),
            len,
        ))
    }

    /// `blob` from byte `offset` on (what a failed pull kept of it is there): a Range request
    /// (`blob_from`). No length: the caller counts the bytes.
    pub fn blob_at(
        &self,
        digest: &Digest,
        offset: u64,
    ) -> Result<(Box<dyn Read + Send + '_>, Option<u64>)> {
        if offset == 0 {
            return self.blob(digest);
        }
        let reader = self.blob_from(digest, offset)?;
        Ok((self.resuming(digest, reader, offset), None))
    }

    fn resuming(
        &self,
        digest: &Digest,
        reader: ureq::BodyReader<'static>,
        offset: u64,
    ) -> Box<dyn Read + Send + '_> {
        Box::new(CancelReader {
            inner: ResumingBlob {
                repo: self,
                digest: digest.clone(),
                inner: reader,
                offset,
                tries: 0,
            },
            cancel: self.cancel.clone(),
        })
    }

    /// The blob again from byte `offset`: a Range request; a registry that answers with the
    /// whole blob instead (200) has the bytes before `offset` read and passed over.
    fn blob_from(&self, digest: &Digest, offset: u64) -> Result<ureq::BodyReader<'static>> {
        let what = format!("fetching blob {} from byte {offset}", digest.short());
        let resp = self.send(
            false,
            self.url("blobs", digest.as_str()),
            None,
            Some(offset),
            &what,
        )?;
        let partial = resp.status().as_u16() == 206;
        let range = header(&resp, "content-range").unwrap_or_default();
        let mut reader = resp.into_body().into_reader();
        if partial {
            // `bytes FIRST-LAST/SIZE`
            let first = range
                .strip_prefix("bytes ")
                .and_then(|r| r.split('-').next())
                .and_then(|f| f.trim().parse::<u64>().ok());
            if first != Some(offset) {
                return Err(self.registry_err(format!(
                    "{what}: the answer's Content-Range is {:?}",
                    clean(&range)
                )));
            }
        } else {
            // (Bytes passed over are progress too: the stall watchdog must not end it.)
            let (mut left, mut buf) = (offset, vec![0u8; 64 << 10]);
            while left > 0 {
                let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let k = reader
                    .read(&mut buf[..want])
                    .map_err(|e| self.stream_err(e, &what))?;
                if k == 0 {
                    return Err(self.registry_err(format!(
                        "{what}: the whole blob sent again ended at byte {}",
                        offset - left
                    )));
                }
                left -= k as u64;
                self.cancel.touch();
            }
        }
        Ok(reader)
    }

    pub(crate) fn stream_err(&self, e: io::Error, what: &str) -> Error {
        if let Err(c) = self.cancel.check(what) {
            return c;
        }
        self.registry_err(format!("{what}: {}", clean(&e.to_string())))
    }
}

/// Resumes after this many dropped connections in a row with no byte between them (as
/// containerd's blob reader does).
const MAX_RESUMES: u32 = 3;

/// A blob's body that takes a dropped connection (reset, or closed before the answer's
/// Content-Length or last chunk) up again where it ended, with a Range request, as containerd's fetcher does: a large layer
/// over a link that drops now and then completes instead of starting over at every pull.
/// What reads it sees one stream (the digest, the decompressor and the unpacking go on). Not
/// after a timeout, a cancellation or a stall: those end the pull (or go to the next mirror).
struct ResumingBlob<'a> {
    repo: &'a Repo,
    digest: Digest,
    inner: ureq::BodyReader<'static>,
    offset: u64,
    /// Resumes since the last byte came.
    tries: u32,
}

impl Read for ResumingBlob<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // (A body that ends cleanly, by its Content-Length or its last chunk, ends the
            // stream: shorter than the manifest says is the manifest's lie, not a drop.)
            let e = match self.inner.read(buf) {
                Ok(n) => {
                    self.offset += n as u64;
                    if n > 0 {
                        self.tries = 0;
                    }
                    return Ok(n);
                }
                Err(e) => e,
            };
            let dropped = matches!(
                e.kind(),
                io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
            );
            if !dropped {
                return Err(e);
            }
            // A request to take it up again that fails at the registry (a 5xx, a connection
            // dropped again) is one more try; what the registry refuses for good (not found,
            // denied) and an ended pull are not.
            let mut last = None;
            loop {
                if self.tries >= MAX_RESUMES || self.repo.cancel.check("streaming").is_err() {
                    return Err(match last {
                        None => e,
                        Some(e2) => io::Error::new(
                            e.kind(),
                            format!("{e}; taking it up again at byte {}: {e2}", self.offset),
                        ),
                    });
                }
                self.tries += 1;
                match self.repo.blob_from(&self.digest, self.offset) {
                    Ok(r) => {
                        self.inner = r;
                        break;
                    }
                    Err(e2 @ Error::Registry { .. }) => last = Some(e2),
                    Err(e2) => {
                        return Err(io::Error::new(
                            e.kind(),
                            format!("{e}; taking it up again at byte {}: {e2}", self.offset),
                        ))
                    }
                }
            }
        }
    }
}

/// The host of `host[:port]` or `[v6]:port`.
fn host_part(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

fn header(resp: &Response<Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn read_limited(resp: Response<Body>, limit: u64) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    resp.into_body()
        .into_reader()
        .take(limit + 1)
        .read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(io::Error::other(format!(
            "response larger than {limit} bytes"
        )));
    }
    Ok(out)
}

/// The registry's error message (`{"errors":[{"code":..,"message":..}]}`) or the body's start.
fn error_message(resp: Response<Body>) -> String {
    let body = read_limited(resp, 64 << 10).unwrap_or_default();
    #[derive(serde::Deserialize)]
    struct Errs {
        errors: Vec<E>,
    }
    #[derive(serde::Deserialize)]
    struct E {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(e) = serde_json::from_slice::<Errs>(&body) {
        return e
            .errors
            .iter()
            .map(|e| clean(format!("{} {}", e.code, e.message).trim()))
            .collect::<Vec<_>>()
            .join("; ");
    }
    let s = String::from_utf8_lossy(&body);
    clean(s.chars().take(200).collect::<String>().trim())
}

/// `scheme://authority/rest` → (scheme, authority, path-and-query).
pub(crate) fn split_url(url: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let i = rest.find(['/', '?']).unwrap_or(rest.len());
    let (auth, path) = rest.split_at(i);
    if auth.is_empty() {
        return None;
    }
    Some((scheme, auth, path))
}

/// The URL a `Location` header sends to, relative to `base`. Only http and https are followed:
/// any other scheme (`file:`, `ftp:`, …) is an error naming it, never a relative path.
pub(crate) fn resolve_url(base: &str, loc: &str) -> std::result::Result<String, String> {
    if let Some((scheme, _)) = loc.split_once(':') {
        let is_scheme = scheme
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic())
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.');
        if is_scheme {
            let lower = scheme.to_ascii_lowercase();
            if lower != "http" && lower != "https" {
                return Err(format!(
                    "redirect to unsupported URL scheme \"{}\" ({})",
                    clean(scheme),
                    clean(loc)
                ));
            }
            let url = format!("{lower}{}", &loc[scheme.len()..]);
            return match split_url(&url) {
                Some(_) => Ok(url),
                None => Err(format!("redirect to a bad URL \"{}\"", clean(loc))),
            };
        }
    }
    let (scheme, auth, path) =
        split_url(base).ok_or_else(|| format!("bad base URL \"{}\"", clean(base)))?;
    if let Some(rest) = loc.strip_prefix("//") {
        let url = format!("{scheme}://{rest}");
        return match split_url(&url) {
            Some(_) => Ok(url),
            None => Err(format!("redirect to a bad URL \"{}\"", clean(loc))),
        };
    }
    let joined = if loc.starts_with('/') {
        loc.to_string()
    } else {
        let path = path.split('?').next().unwrap_or("");
        let dir = &path[..path.rfind('/').map(|i| i + 1).unwrap_or(0)];
        let dir = if dir.is_empty() { "/" } else { dir };
        format!("{dir}{loc}")
    };
    Ok(format!("{scheme}://{auth}{}", remove_dot_segments(&joined)))
}

/// RFC 3986 5.2.4 on an absolute path (its query kept as is): `/a/b/../c/./d` → `/a/c/d`.
fn remove_dot_segments(path_and_query: &str) -> String {
    let (path, query) = match path_and_query.find(['?', '#']) {
        Some(i) => path_and_query.split_at(i),
        None => (path_and_query, ""),
    };
    let mut out: Vec<&str> = Vec::new();
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    for (i, seg) in segs.iter().enumerate() {
        let last = i + 1 == segs.len();
        match *seg {
            "." => {
                if last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    format!("/{}{query}", out.join("/"))
}

/// `Bearer realm="x",service="y",scope="a,b"` → ("Bearer", {realm: x, ...}).
pub(crate) fn parse_challenge(h: &str) -> (String, HashMap<String, String>) {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut params = HashMap::new();
    let b = rest.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i] == b' ' || b[i] == b',') {
            i += 1;
        }
        let ks = i;
        while i < b.len() && b[i] != b'=' && b[i] != b',' {
            i += 1;
        }
        let key = rest[ks..i].trim().to_ascii_lowercase();
        if i >= b.len() || b[i] != b'=' {
            continue;
        }
        i += 1;
        let mut val = String::new();
        if i < b.len() && b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' && i + 1 < b.len() {
                    i += 1;
                }
                let ch = rest[i..].chars().next().unwrap_or(' ');
                val.push(ch);
                i += ch.len_utf8();
            }
            i += 1;
        } else {
            let vs = i;
            while i < b.len() && b[i] != b',' {
                i += 1;
            }
            val = rest[vs..i].trim().to_string();
        }
        if !key.is_empty() {
            params.insert(key, val);
        }
    }
    (scheme.to_string(), params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_system_bundle_with_certificates_is_taken() {
        let dir = std::env::temp_dir().join(format!("rsrun-roots-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ok = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=rsrun-roots", "-keyout"])
            .arg(dir.join("k.pem"))
            .arg("-out")
            .arg(dir.join("a.pem"))
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl");
        assert!(ok.success());
        let one = std::fs::read(dir.join("a.pem")).unwrap();
        std::fs::write(dir.join("two.pem"), [&one[..], &one[..]].concat()).unwrap();
        std::fs::write(dir.join("none.pem"), "no certificate here\n").unwrap();
        let p = |n: &str| dir.join(n).to_string_lossy().into_owned();
        let (missing, none, two) = (p("missing.pem"), p("none.pem"), p("two.pem"));
        assert_eq!(system_roots(&[&missing, &none, &two]).len(), 2);
        assert_eq!(system_roots(&[&missing, &none]).len(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn challenge_parsing() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(s, "Bearer");
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
        let (s, p) = parse_challenge(r#"Basic realm=reg"#);
        assert_eq!(s, "Basic");
        assert_eq!(p["realm"], "reg");
    }

    #[test]
    fn url_resolution() {
        let r = |l: &str| resolve_url("http://a:1/v2/x/blobs/s", l);
        assert_eq!(r("/store/1?sig=2").unwrap(), "http://a:1/store/1?sig=2");
        assert_eq!(r("https://s3/b?x").unwrap(), "https://s3/b?x");
        assert_eq!(r("HTTPS://s3/b").unwrap(), "https://s3/b");
        assert_eq!(r("//cdn/b").unwrap(), "http://cdn/b");
        assert_eq!(r("t").unwrap(), "http://a:1/v2/x/blobs/t");
        assert_eq!(r("../../../s/t?a=../b").unwrap(), "http://a:1/s/t?a=../b");
        assert_eq!(r("/a/./b/../../../c/").unwrap(), "http://a:1/c/");
        let e = r("file:///etc/passwd").unwrap_err();
        assert!(e.contains("unsupported URL scheme \"file\""), "{e}");
        assert!(r("ftp://h/x").is_err());
        assert!(r("http://").is_err());
        assert_eq!(host_part("a.b:5000"), "a.b");
        assert_eq!(host_part("[::1]:5000"), "::1");
        assert_eq!(host_part("h"), "h");
        assert_eq!(split_url("https://h:5/p?q"), Some(("https", "h:5", "/p?q")));
        assert_eq!(split_url("ftp://h/p"), None);
    }

    #[test]
    fn cancel_maps_to_deadline_and_cancelled() {
        let c = Cancel::with_deadline(Instant::now() - Duration::from_millis(1));
        assert!(matches!(c.check("x"), Err(Error::DeadlineExceeded(_))));
        let f = Arc::new(AtomicBool::new(false));
        let c = Cancel::with_flag(f.clone());
        assert!(c.check("x").is_ok());
        f.store(true, Ordering::Relaxed);
        assert!(matches!(c.check("x"), Err(Error::Cancelled(_))));
    }
}
