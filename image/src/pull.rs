//! Pulling: resolve, select the platform, fetch config, then fetch + decompress + unpack
//! every layer concurrently (each layer streamed from the socket through the digest check,
//! the blob file, the decompressor, the diff_id check and the unpacker in one pass).

use crate::config::{AuthFile, Credentials};
use crate::digest::{Digest, HashingReader, TeeReader};
use crate::error::{Error, Result};
use crate::manifest::{self, Compression, Descriptor, ImageConfig, Parsed, Platform};
use crate::reference::Reference;
use crate::registry::{Cancel, ProgressClock, Repo};
use crate::store::{ImageRecord, LayerRecord, PendingLayer, Store, TempSnapshot};

/// A verified blob's temp file, its path and digest.
type TempBlob = (File, std::path::PathBuf, Digest);
use crate::text::clean;
use crate::unpack::{self, UnpackOptions};
use crate::ImageStore;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Cursor, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// containers/image's (CRI-O's) limit for a config: real ones take kilobytes.
const MAX_CONFIG_SIZE: u64 = 4 << 20;
/// Longest `User` of an image config accepted.
const MAX_USER_LEN: usize = 256;

/// Verified layers made visible together with one flush (see `Store::commit_batch`).
const BATCH_LAYERS: usize = 64;
/// …or once the oldest of them has waited this long.
const BATCH_AGE: Duration = Duration::from_millis(500);

/// The default `PullOptions::progress_timeout`: 5 minutes, containerd's default
/// `image_pull_progress_timeout` (a pull-through cache may answer only once it has fetched a
/// large blob from upstream).
pub const DEFAULT_PROGRESS_TIMEOUT: Duration = Duration::from_secs(300);

const GIB: u64 = 1 << 30;

/// Uncompressed bytes between two checks of the store's free space and inodes (a statvfs, about
/// a microsecond): at most 2048 tar entries (512-byte headers) are made between two.
const FREE_CHECK_EVERY: u64 = 1 << 20;

/// Bounds on what a pull may write. A layer's uncompressed content may reach
/// `max(ratio_floor, max_ratio × its compressed size)`, never more than `max_layer_bytes`;
/// all layers of a pull together at most `max_image_bytes`; and no pull leaves less than
/// `min_free_bytes` free on the store's filesystem, nor less than `min_free_inodes_percent` of
/// its inodes (a layer of millions of empty files is small, even gzipped). The pull fails as soon as a bound is
/// passed (`Error::LimitExceeded`) and what it wrote is removed at once.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_ratio: u64,
    pub ratio_floor: u64,
    /// Also the largest compressed size a layer may declare.
    pub max_layer_bytes: u64,
    pub max_image_bytes: u64,
    pub min_free_bytes: u64,
    /// The share of the filesystem's inodes kept free, in percent (the kubelet's hard
    /// eviction threshold nodefs.inodesFree is 5 %); not checked where the filesystem reports
    /// no inode count.
    pub min_free_inodes_percent: u64,
}

impl Default for Limits {
    /// 100× (gzip of real layers is 2–10×; gzip cannot pass ~1030×), at least 2 GiB, at most
    /// 64 GiB a layer and 128 GiB an image, 1 GiB and 5 % of the inodes kept free.
    fn default() -> Self {
        Limits {
            max_ratio: 100,
            ratio_floor: 2 * GIB,
            max_layer_bytes: 64 * GIB,
            max_image_bytes: 128 * GIB,
            min_free_bytes: GIB,
            min_free_inodes_percent: 5,
        }
    }
}

impl Limits {
    /// What a layer of `compressed` bytes may expand to.
    pub fn layer_limit(&self, compressed: u64) -> u64 {
        compressed
            .saturating_mul(self.max_ratio)
            .max(self.ratio_floor)
            .min(self.max_layer_bytes)
    }
}

/// What a pull reports about each layer (for progress displays).
#[derive(Debug, Clone)]
pub enum LayerEvent {
    /// Work on a layer starts; `size` is its compressed size.
    Start { digest: Digest, size: u64 },
    /// `done` compressed bytes of the layer have been received so far.
    Bytes { digest: Digest, done: u64 },
    /// The layer is unpacked (or was already present: `cached`).
    Done { digest: Digest, cached: bool },
}

pub trait Progress: Send + Sync {
    fn event(&self, ev: LayerEvent);
}

#[derive(Clone)]
pub struct PullOptions {
    pub platform: Platform,
    /// Explicit credentials (CRI AuthConfig, --creds); used for every endpoint tried, or only
    /// for those of `credentials_server`'s host when it is given.
    pub credentials: Option<Credentials>,
    /// The registry the explicit credentials are for (the CRI AuthConfig's server_address:
    /// `host[:port]`, with or without a scheme and path). A mirror of another host gets none
    /// of them, as containerd does.
    pub credentials_server: Option<String>,
    /// Looked up by endpoint host when no explicit credentials are given; for the registry's
    /// own endpoint also by the image's registry name (a mirror gets only its own entry).
    pub auth_file: Option<AuthFile>,
    pub cancel: Cancel,
    pub progress: Option<Arc<dyn Progress>>,
    /// Layers fetched and unpacked at once.
    pub concurrency: usize,
    pub unpack: UnpackOptions,
    /// Fail an endpoint (`Error::Stalled`, then the next mirror is tried) when no byte has
    /// arrived for this long, for the pull as a whole and for any one request (a stalled
    /// connection while others progress). None: wait forever. Default 5 minutes.
    pub progress_timeout: Option<Duration>,
    pub limits: Limits,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            platform: Platform::host(),
            credentials: None,
            credentials_server: None,
            auth_file: None,
            cancel: Cancel::default(),
            progress: None,
            concurrency: 3,
            unpack: UnpackOptions::default(),
            progress_timeout: Some(DEFAULT_PROGRESS_TIMEOUT),
            limits: Limits::default(),
        }
    }
}

impl ImageStore {
    /// Pulls an image and unpacks its layers; returns its record once it is fully visible.
    /// The same call backs the CLI's pull and the CRI PullImage (run it in spawn_blocking and
    /// pass the gRPC deadline in `opts.cancel`).
    pub fn pull(&self, reference: &str, opts: &PullOptions) -> Result<ImageRecord> {
        let r = Reference::parse(reference)?;
        opts.cancel.check("starting the pull")?;
        let _gc = self.store.gc_lock_shared(Some(&opts.cancel))?;
        // Whatever killed or failed pulls left behind goes first.
        self.store.sweep_stale()?;
        if let Some(d) = &r.digest {
            if let Some(img) = self.complete_image(&r.repo_digest(d), &opts.platform)? {
                return self.attach_tag(&r, img);
            }
        }
        let endpoints = self.config.endpoints(&r.domain)?;
        let mut first_definite: Option<Error> = None;
        let mut last: Option<Error> = None;
        for ep in endpoints {
            let creds = match &opts.credentials {
                Some(c) => opts
                    .credentials_server
                    .as_deref()
                    .is_none_or(|server| same_registry(server, &ep.host, &r.domain, ep.is_mirror))
                    .then(|| c.clone()),
                None => opts.auth_file.as_ref().and_then(|af| {
                    af.get(&ep.host)
                        .or_else(|| (!ep.is_mirror).then(|| af.get(&r.domain)).flatten())
                        .cloned()
                }),
            };
            // This endpoint's attempt: the caller's deadline and flag, plus an abort flag (a
            // failed layer stops the others) and the progress clock. A watchdog interrupts
            // the attempt's connections as soon as any of them fires.
            let cancel = Cancel {
                abort: Some(Arc::new(AtomicBool::new(false))),
                clock: opts
                    .progress_timeout
                    .map(|t| Arc::new(ProgressClock::new(t))),
                ..opts.cancel.clone()
            };
            let repo = Repo::new(&self.client, ep, &r.path, creds, cancel.clone())?;
            let done = AtomicBool::new(false);
            let res = std::thread::scope(|s| {
                let w = s.spawn(|| {
                    while !done.load(Ordering::SeqCst) {
                        if cancel.check("").is_err() {
                            repo.shutdown();
                            return;
                        }
                        std::thread::park_timeout(Duration::from_millis(20));
                    }
                });
                let res = self.pull_from(&repo, &r, opts, &cancel);
                done.store(true, Ordering::SeqCst);
                w.thread().unpark();
                res
            });
            match res {
                Ok(img) => return Ok(img),
                Err(e @ (Error::NotFound(_) | Error::Unauthorized(_))) => {
                    if first_definite.is_none() {
                        first_definite = Some(e);
                    }
                }
                Err(e) if e.is_endpoint_failure() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(first_definite
            .or(last)
            .unwrap_or_else(|| Error::InvalidConfig(format!("no endpoint for {}", r.domain))))
    }

    /// An image already complete in the store under this repo digest for this platform.
    fn complete_image(
        &self,
        repo_digest: &str,
        platform: &Platform,
    ) -> Result<Option<ImageRecord>> {
        let db = self.store.load_db()?;
        let found = db.images.values().find(|i| {
            i.repo_digests.iter().any(|d| d == repo_digest)
                // The wanted platform itself: an image of a compatible one (arm v7 for an
                // arm64 host) was picked from an index that may hold a closer one for this.
                && Platform::parse(&i.platform).is_ok_and(|p| platform.rank(&p) == Some(0))
                && i.layers.iter().all(|l| self.store.has_snapshot(&l.diff_id))
        });
        Ok(found.cloned())
    }

    /// The image found complete, with this reference's tag. A removal since it was found
    /// (the kubelet's image GC racing a pull with policy Always) took its record: it is put
    /// back, without the tags other images hold now (its content is still there: this pull
    /// holds the store's shared lock, which the sweep that frees it waits for). Without
    /// that, the pull answered an image ID that no longer named an image.
    fn attach_tag(&self, r: &Reference, img: ImageRecord) -> Result<ImageRecord> {
        // Nothing to write when it is there with the tag (a warm pull).
        if let Some(cur) = self.store.load_db()?.images.get(img.id.as_str()) {
            if r.repo_tag().is_none_or(|t| cur.repo_tags.contains(&t)) {
                return Ok(cur.clone());
            }
        }
        self.store
            .update_db(|db| Ok(attach(db, &img, r.repo_tag().as_deref())))
    }

    fn pull_from(
        &self,
        repo: &Repo,
        r: &Reference,
        opts: &PullOptions,
        cancel: &Cancel,
    ) -> Result<ImageRecord> {
        // Resolve the tag cheaply first: a warm pull is one HEAD request.
        if r.digest.is_none() {
            if let Ok(Some(d)) = repo.head_manifest(&r.manifest_ref()) {
                if let Some(img) = self.complete_image(&r.repo_digest(&d), &opts.platform)? {
                    return self.attach_tag(r, img);
                }
            }
        }
        let top = repo.fetch_manifest(&r.manifest_ref(), r.digest.as_ref())?;
        let what = format!("{r}");
        storable_json(&top.bytes, &what)?;
        let mut manifest_blobs = vec![(top.digest.clone(), top.bytes.clone())];
        let (manifest, manifest_digest, platform) =
            match manifest::parse(&top.bytes, &top.media_type, &what)? {
                Parsed::Index(idx) => {
                    let d =
                        manifest::select(&idx, &opts.platform, &format!("index {what}"))?.clone();
                    if let Some(p) = &d.platform {
                        if !manifest::is_platform_word(&p.variant) {
                            return Err(Error::InvalidManifest {
                                what: format!("index {what}"),
                                reason: format!(
                                    "variant \"{}\" is not a platform name",
                                    clean(&p.variant)
                                ),
                            });
                        }
                    }
                    let m = repo.fetch_manifest(d.digest.as_str(), Some(&d.digest))?;
                    storable_json(&m.bytes, &format!("{what} manifest {}", d.digest))?;
                    let parsed = match manifest::parse(&m.bytes, &m.media_type, &what)? {
                        Parsed::Manifest(pm) => pm,
                        Parsed::Index(_) => {
                            return Err(Error::InvalidManifest {
                                what,
                                reason: "index entry for the platform is itself an index".into(),
                            })
                        }
                    };
                    manifest_blobs.push((m.digest.clone(), m.bytes));
                    (parsed, m.digest, d.platform.clone().unwrap_or_default())
                }
                Parsed::Manifest(m) => (m, top.digest.clone(), Platform::default()),
            };
        let limits = &opts.limits;
        let mut total: u64 = 0;
        for l in &manifest.layers {
            manifest::layer_compression(&l.media_type)?;
            if l.size > limits.max_layer_bytes {
                return Err(Error::LimitExceeded {
                    what: format!("layer {}", l.digest),
                    reason: format!(
                        "the manifest declares {} bytes, over the {}-byte layer limit",
                        l.size, limits.max_layer_bytes
                    ),
                });
            }
            total = total.saturating_add(l.size);
        }
        if total > limits.max_image_bytes {
            return Err(Error::LimitExceeded {
                what: format!("image {what}"),
                reason: format!(
                    "the manifest's layers total {total} bytes, over the {}-byte image limit",
                    limits.max_image_bytes
                ),
            });
        }

        // Config.
        let config_bytes =
            self.fetch_small_blob(repo, &manifest.config, MAX_CONFIG_SIZE, "config")?;
        storable_json(&config_bytes, &format!("{what} config"))?;
        let config: ImageConfig =
            serde_json::from_slice(&config_bytes).map_err(|e| Error::InvalidManifest {
                what: format!("{what} config"),
                reason: e.to_string(),
            })?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(Error::InvalidManifest {
                what,
                reason: format!(
                    "{} layers but {} diff_ids in the config",
                    manifest.layers.len(),
                    config.rootfs.diff_ids.len()
                ),
            });
        }
        for (field, v) in [("os", &config.os), ("architecture", &config.architecture)] {
            if !manifest::is_platform_word(v) {
                return Err(Error::InvalidManifest {
                    what: format!("{what} config"),
                    reason: format!("{field} \"{}\" is not a platform name", clean(v)),
                });
            }
        }
        let platform = if platform.os.is_empty() {
            let p = Platform {
                os: config.os.clone(),
                architecture: config.architecture.clone(),
                variant: String::new(),
            };
            if !p.os.is_empty()
                && !p.architecture.is_empty()
                && !opts.platform.matches(&Platform {
                    variant: opts.platform.variant.clone(),
                    ..p.clone()
                })
            {
                return Err(Error::NoMatchingPlatform {
                    reference: format!("image {what} (a single-platform manifest)"),
                    wanted: opts.platform.to_string(),
                    available: p.to_string(),
                });
            }
            if p.os.is_empty() {
                opts.platform.clone()
            } else {
                Platform {
                    variant: opts.platform.variant.clone(),
                    ..p
                }
            }
        } else {
            platform
        };

        // Layers, concurrently; then the directories layers made without an entry take
        // their metadata from the layers below, now all in place, bottom-up (an implicit
        // directory passes what it took on). Also those of a layer found in place: a pull
        // that committed it and then failed, or was killed, left its record.
        self.fetch_layers(
            repo,
            &manifest.layers,
            &config.rootfs.diff_ids,
            opts,
            cancel,
        )?;
        let ids = &config.rootfs.diff_ids;
        let mut fixed = Vec::new();
        for (i, d) in ids.iter().enumerate() {
            if let Some(dirs) = self.store.implicit_dirs(d)? {
                let lowers: Vec<PathBuf> = ids[..i]
                    .iter()
                    .rev()
                    .map(|l| self.store.snapshot_path(l))
                    .collect();
                unpack::inherit_parents(&self.store.snapshot_path(d), &lowers, &dirs)?;
                cancel.touch();
                fixed.push(d.clone());
            }
        }
        self.store.implicit_done(&fixed)?;
        cancel.touch();
        cancel.check("committing the image")?;

        for (d, b) in &manifest_blobs {
            self.store.put_blob(d, b)?;
        }
        self.store
            .put_blob(&manifest.config.digest, &config_bytes)?;

        let layers: Vec<LayerRecord> = manifest
            .layers
            .iter()
            .zip(&config.rootfs.diff_ids)
            .map(|(l, d)| LayerRecord {
                digest: l.digest.clone(),
                diff_id: d.clone(),
                size: l.size,
                media_type: l.media_type.clone(),
            })
            .collect();
        let size = layers
            .iter()
            .fold(0u64, |a, l| a.saturating_add(l.size))
            .saturating_add(manifest.config.size)
            .saturating_add(manifest_blobs.last().map_or(0, |m| m.1.len() as u64));
        let user = config
            .config
            .as_ref()
            .and_then(|c| c.user.clone())
            .unwrap_or_default();
        // Kept in the image's record and sent with every ListImages: a user name of megabytes
        // would push that reply past the kubelet's 16 MiB gRPC limit. `name:group`, IDs or
        // names (Linux names are at most 32 bytes).
        if user.len() > MAX_USER_LEN || user.chars().any(char::is_control) {
            return Err(Error::InvalidManifest {
                what: format!("{what} config"),
                reason: format!(
                    "User of {} bytes{}: at most {MAX_USER_LEN} bytes of `user[:group]`",
                    user.len(),
                    if user.chars().any(char::is_control) {
                        ", with control characters"
                    } else {
                        ""
                    }
                ),
            });
        }
        let id = manifest.config.digest.clone();
        let repo_digest = r.repo_digest(&top.digest);
        let tag = r.repo_tag();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.store.update_db(|db| {
            let rec = db
                .images
                .entry(id.to_string())
                .or_insert_with(|| ImageRecord {
                    id: id.clone(),
                    repo_tags: vec![],
                    repo_digests: vec![],
                    manifest: manifest_digest.clone(),
                    manifest_blobs: vec![],
                    config: id.clone(),
                    layers: layers.clone(),
                    size,
                    user: user.clone(),
                    platform: platform.to_string(),
                    pinned: false,
                    created: now,
                });
            if !rec.repo_digests.contains(&repo_digest) {
                rec.repo_digests.push(repo_digest.clone());
            }
            for (d, _) in &manifest_blobs {
                if !rec.manifest_blobs.contains(d) {
                    rec.manifest_blobs.push(d.clone());
                }
            }
            if let Some(t) = &tag {
                move_tag(db, t, &id);
            }
            Ok(db.images[id.as_str()].clone())
        })
    }

    fn fetch_small_blob(
        &self,
        repo: &Repo,
        d: &Descriptor,
        limit: u64,
        what: &str,
    ) -> Result<Vec<u8>> {
        if d.size > limit {
            return Err(Error::InvalidManifest {
                what: what.into(),
                reason: format!("{what} of {} bytes is over the {limit} byte limit", d.size),
            });
        }
        // A stored blob of that digest (configs and layers share the store) is read only if it
        // has the declared size: a manifest naming a cached layer of gigabytes as its config
        // must not have it read into memory.
        match std::fs::metadata(self.store.blob_path(&d.digest)) {
            Ok(m) if m.is_file() && m.len() == d.size => {
                return self.store.read_blob(&d.digest);
            }
            Ok(m) if m.is_file() => {
                return Err(Error::InvalidManifest {
                    what: what.into(),
                    reason: format!(
                        "{what} {} is declared as {} bytes, but the stored blob of that digest \
                         has {}",
                        d.digest,
                        d.size,
                        m.len()
                    ),
                });
            }
            _ => {}
        }
        let (mut r, _) = repo.blob(&d.digest)?;
        let mut buf = Vec::new();
        (&mut r)
            .take(d.size + 1)
            .read_to_end(&mut buf)
            .map_err(|e| repo.stream_err(e, &format!("fetching {what}")))?;
        if buf.len() as u64 != d.size {
            return Err(Error::InvalidManifest {
                what: what.into(),
                reason: format!(
                    "{what} {} is declared as {} bytes, but the registry sent {}{}",
                    d.digest,
                    d.size,
                    buf.len(),
                    if buf.len() as u64 > d.size {
                        " or more"
                    } else {
                        ""
                    }
                ),
            });
        }
        let got = Digest::of_bytes(&buf);
        if got != d.digest {
            return Err(Error::DigestMismatch {
                what: what.into(),
                expected: d.digest.to_string(),
                actual: got.to_string(),
            });
        }
        Ok(buf)
    }

    fn fetch_layers(
        &self,
        repo: &Repo,
        layers: &[Descriptor],
        diff_ids: &[Digest],
        opts: &PullOptions,
        cancel: &Cancel,
    ) -> Result<()> {
        let abort = cancel.abort.clone().unwrap_or_default();
        let next = AtomicUsize::new(0);
        let errors: Mutex<Vec<Error>> = Mutex::new(Vec::new());
        let fail = |e: Error| {
            errors.lock().unwrap_or_else(|p| p.into_inner()).push(e);
            abort.store(true, Ordering::SeqCst);
        };
        let ctx = LayerCtx {
            implicit: Mutex::new(HashMap::new()),
            image_used: AtomicU64::new(0),
            batch: Batch {
                store: &self.store,
                pending: Mutex::new((Vec::new(), None)),
                progress: opts.progress.clone(),
            },
        };
        let workers = opts.concurrency.clamp(1, 16).min(layers.len().max(1));
        // Set when the workers are done: the committer below ends.
        let finished = (Mutex::new(false), std::sync::Condvar::new());
        std::thread::scope(|s| {
            // Layers done wait at most the batch age for their commit, also while the
            // workers are on slow ones (the locks of pending layers hold other pulls of
            // them: a layer dripping in must not keep another image's base layer locked).
            s.spawn(|| {
                let (m, cv) = &finished;
                let mut done = m.lock().unwrap_or_else(|p| p.into_inner());
                while !*done {
                    let wait = ctx.batch.due_in().unwrap_or(BATCH_AGE);
                    done = cv
                        .wait_timeout(done, wait)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                    if !*done && ctx.batch.due_in() == Some(Duration::ZERO) {
                        if let Err(e) = ctx.batch.flush() {
                            fail(e);
                        }
                    }
                }
            });
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    s.spawn(|| loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= layers.len() || abort.load(Ordering::SeqCst) {
                            break;
                        }
                        if let Err(e) = self.fetch_layer(
                            repo,
                            &layers[i],
                            &diff_ids[i],
                            opts,
                            cancel,
                            &ctx,
                            &fail,
                        ) {
                            fail(e);
                            break;
                        }
                    })
                })
                .collect();
            for h in handles {
                // A worker that panicked (debug builds; release ones abort) fails the pull,
                // its layer not made.
                if h.join().is_err() {
                    fail(Error::BadLayer {
                        layer: "(a worker's)".into(),
                        reason: "the layer worker panicked".into(),
                    });
                }
            }
            *finished.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
            finished.1.notify_all();
        });
        let mut errs = errors.into_inner().unwrap_or_else(|p| p.into_inner());
        if errs.is_empty() {
            // The last batch (a failed pull drops its pending layers with their temps).
            ctx.batch.flush()?;
            // A long flush is not a stall.
            cancel.touch();
            return Ok(());
        }
        ctx.batch.discard();
        // The first failure: the siblings it stopped record theirs after it.
        Err(errs.swap_remove(0))
    }

    #[allow(clippy::too_many_arguments)]
    fn fetch_layer(
        &self,
        repo: &Repo,
        desc: &Descriptor,
        diff_id: &Digest,
        opts: &PullOptions,
        cancel: &Cancel,
        ctx: &LayerCtx<'_>,
        fail: &(dyn Fn(Error) + Sync),
    ) -> Result<()> {
        let st = &self.store;
        let done = |cached| {
            if let Some(p) = &opts.progress {
                p.event(LayerEvent::Done {
                    digest: desc.digest.clone(),
                    cached,
                });
            }
        };
        if st.has_snapshot(diff_id) && st.has_blob(&desc.digest) {
            done(true);
            return Ok(());
        }
        // While another pull holds this layer, commit ours: two pulls never wait on each other.
        let lock = st.lock_digest_waiting(diff_id, cancel, &|| {
            if let Err(e) = ctx.batch.flush() {
                fail(e);
            }
        })?;
        if st.has_snapshot(diff_id) && st.has_blob(&desc.digest) {
            done(true); // another pull did it while we waited
            return Ok(());
        }
        st.clean_stale(diff_id);
        st.clean_stale(&desc.digest);
        if let Some(p) = &opts.progress {
            p.event(LayerEvent::Start {
                digest: desc.digest.clone(),
                size: desc.size,
            });
        }
        let res = if st.has_blob(&desc.digest) {
            self.unpack_local(desc, diff_id, opts, cancel, ctx)
                .map(|snap| (None, Some(snap)))
        } else {
            self.stream_layer(
                repo,
                desc,
                diff_id,
                opts,
                cancel,
                ctx,
                !st.has_snapshot(diff_id),
            )
        };
        // The implicit directories' record before the layer can be committed.
        let implicit = ctx
            .implicit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(diff_id)
            .unwrap_or_default();
        let res = res.and_then(|(blob, snapshot)| {
            if snapshot.is_some() {
                st.put_implicit(diff_id, &implicit)?;
            }
            Ok((blob, snapshot))
        });
        match res {
            Ok((blob, snapshot)) => ctx.batch.add(
                PendingLayer {
                    _lock: lock,
                    blob,
                    snapshot: snapshot.map(|s| (s, diff_id.clone())),
                },
                desc.digest.clone(),
            ),
            Err(e) => {
                st.clean_stale(diff_id);
                st.clean_stale(&desc.digest);
                cancel.check(&format!("pulling layer {}", desc.digest.short()))?;
                Err(e)
            }
        }
    }

    fn unpack_local(
        &self,
        desc: &Descriptor,
        diff_id: &Digest,
        opts: &PullOptions,
        cancel: &Cancel,
        ctx: &LayerCtx<'_>,
    ) -> Result<TempSnapshot> {
        let path = self.store.blob_path(&desc.digest);
        let f = File::open(&path).map_err(|e| Error::io("opening", &path, e))?;
        let tmp = self.store.snapshot_tmp(diff_id)?;
        let mut r = BufReader::with_capacity(
            256 << 10,
            crate::registry::CancelReader {
                inner: f,
                cancel: cancel.clone(),
            },
        );
        let layer = desc.digest.to_string();
        let added = std::cell::Cell::new(0);
        let got =
            decompress_and_unpack(&mut r, &tmp.path, &layer, desc, opts, cancel, ctx, &added)?;
        check_diff(&got, diff_id, &layer)?;
        Ok(tmp)
    }

    /// One pass over the network stream: blob digest + blob file, decompression, diff_id and
    /// unpacking (unless the snapshot already exists: then only the blob is stored). Returns
    /// the verified temp blob and snapshot, for the batched commit. What a failed pull kept of
    /// the blob (`Store::take_partial`) is read first, through the same digest, decompressor
    /// and unpacker, and the registry asked for the rest only, as containerd goes on with an
    /// ingest; a pull whose stream breaks (dropped past its resumes, stalled, timed out,
    /// cancelled) keeps what it received for the next one.
    #[allow(clippy::too_many_arguments)]
    fn stream_layer(
        &self,
        repo: &Repo,
        desc: &Descriptor,
        diff_id: &Digest,
        opts: &PullOptions,
        cancel: &Cancel,
        ctx: &LayerCtx<'_>,
        unpack_too: bool,
    ) -> Result<(Option<TempBlob>, Option<TempSnapshot>)> {
        let st = &self.store;
        if let Some((file, tmp, kept)) = st.take_partial(&desc.digest, desc.size)? {
            let first = self.stream_blob(
                repo, desc, diff_id, opts, cancel, ctx, unpack_too, file, tmp, kept,
            );
            match first {
                // The kept part proved wrong (the blob's digest, its decompression): gone,
                // and the blob again from its start, in this pull.
                Err((_, true)) => {
                    st.clean_stale(&desc.digest);
                    st.clean_stale(diff_id);
                }
                r => return r.map_err(|(e, _)| e),
            }
        }
        let (file, tmp) = st.ingest_file(&desc.digest)?;
        self.stream_blob(
            repo, desc, diff_id, opts, cancel, ctx, unpack_too, file, tmp, 0,
        )
        .map_err(|(e, _)| e)
    }

    /// `stream_layer` into the temp blob `tmp_blob` (`file`), whose first `kept` bytes a
    /// failed pull received. Fails with whether those bytes proved wrong (then the caller
    /// starts over without them).
    #[allow(clippy::too_many_arguments)]
    fn stream_blob(
        &self,
        repo: &Repo,
        desc: &Descriptor,
        diff_id: &Digest,
        opts: &PullOptions,
        cancel: &Cancel,
        ctx: &LayerCtx<'_>,
        unpack_too: bool,
        file: File,
        tmp_blob: PathBuf,
        kept: u64,
    ) -> std::result::Result<(Option<TempBlob>, Option<TempSnapshot>), (Error, bool)> {
        let layer = desc.digest.to_string();
        let st = &self.store;
        let plain = |e: Error| (e, false);
        let (body, len, kept) = match repo.blob_at(&desc.digest, kept) {
            Ok((b, l)) => (b, l, kept),
            // A registry that refuses the range (416, or another range than asked): the
            // whole blob, the kept part dropped once that answers.
            Err(e) if kept > 0 && range_refused(&e) => match repo.blob(&desc.digest) {
                Ok((b, l)) => {
                    file.set_len(0)
                        .map_err(|e| plain(Error::io("truncating", &tmp_blob, e)))?;
                    (b, l, 0)
                }
                Err(e) => {
                    st.keep_partial(&tmp_blob, &file, &desc.digest)
                        .map_err(plain)?;
                    return Err(plain(e));
                }
            },
            // Anything else (the registry down, a timeout): the part waits for the next pull.
            Err(e) if kept > 0 => {
                st.keep_partial(&tmp_blob, &file, &desc.digest)
                    .map_err(plain)?;
                return Err(plain(e));
            }
            Err(e) => return Err(plain(e)),
        };
        if let Some(l) = len {
            if l != desc.size {
                return Err(plain(Error::SizeMismatch {
                    what: format!("layer {layer} (Content-Length)"),
                    expected: desc.size,
                    actual: l,
                }));
            }
        }
        let full = RefCell::new(None);
        let broke = std::cell::Cell::new(false);
        // The uncompressed bytes this try counted against the image's limit.
        let unpacked = std::cell::Cell::new(0);
        let counted = Counting {
            inner: body.take((desc.size - kept).saturating_add(1)),
            done: kept,
            last: kept,
            progress: opts.progress.clone(),
            digest: &desc.digest,
            root: self.store.root(),
            limits: &opts.limits,
            unchecked: 0,
            full: &full,
            broke: &broke,
        };
        let prefix: Box<dyn Read> = if kept > 0 {
            // (A description of its own: the writer's appends move its offset.)
            Box::new(
                File::open(&tmp_blob)
                    .map_err(|e| plain(Error::io("opening", &tmp_blob, e)))?
                    .take(kept),
            )
        } else {
            Box::new(io::empty())
        };
        let mut hashing = HashingReader::new(prefix.chain(TeeReader {
            inner: counted,
            out: BufWriter::with_capacity(256 << 10, file),
        }));
        let what = format!("fetching layer {}", desc.digest.short());
        let r = (|| -> Result<Option<TempSnapshot>> {
            let tmp_dir = if unpack_too {
                Some(self.store.snapshot_tmp(diff_id)?)
            } else {
                None
            };
            if let Some(dir) = &tmp_dir {
                let mut br = BufReader::with_capacity(256 << 10, &mut hashing);
                let got = decompress_and_unpack(
                    &mut br, &dir.path, &layer, desc, opts, cancel, ctx, &unpacked,
                )
                .map_err(|e| match e {
                    Error::BadLayer { reason, .. }
                        if reason.contains("reading tar") || reason.contains("decompress") =>
                    {
                        match repo.stream_err(io::Error::other(reason.clone()), &what) {
                            e @ (Error::Cancelled(_)
                            | Error::DeadlineExceeded(_)
                            | Error::Stalled { .. }) => e,
                            _ => Error::BadLayer {
                                layer: layer.clone(),
                                reason,
                            },
                        }
                    }
                    e => e,
                })?;
                // Whatever the decompressor buffered was already hashed below it.
                drop(br);
                check_diff(&got, diff_id, &layer)?;
            }
            io::copy(&mut hashing, &mut io::sink()).map_err(|e| repo.stream_err(e, &what))?;
            Ok(tmp_dir)
        })();
        let (got, n, chain) = hashing.into_parts();
        let mut out = chain.into_inner().1.out;
        // A failed free-space check is the reason, whatever the readers above made of it.
        if let Some(e) = full.into_inner() {
            return Err(plain(e));
        }
        // Content found wrong with a kept part read first: that part may be why.
        let suspect = |e: Error| {
            let wrong = kept > 0
                && matches!(
                    e,
                    Error::DigestMismatch { .. }
                        | Error::SizeMismatch { .. }
                        | Error::BadLayer { .. }
                );
            if wrong {
                // The retry counts the layer against the image's limit again.
                ctx.image_used.fetch_sub(unpacked.get(), Ordering::Relaxed);
            }
            (e, wrong)
        };
        let tmp_dir = match r {
            Ok(d) => d,
            Err(e) => {
                // The registry's stream broke (not its content, not our disk): what came is
                // kept for the next pull. (Not verified yet: the blob's digest will say.)
                if broke.get()
                    && io::Write::flush(&mut out).is_ok()
                    && out.get_ref().metadata().is_ok_and(|m| m.len() > 0)
                {
                    if let Err(k) = st.keep_partial(&tmp_blob, out.get_ref(), &desc.digest) {
                        return Err(plain(Error::BadLayer {
                            layer,
                            reason: format!("{e}; keeping the part received: {k}"),
                        }));
                    }
                    return Err(plain(e));
                }
                return Err(suspect(e));
            }
        };
        if n != desc.size {
            return Err(suspect(Error::SizeMismatch {
                what: format!("layer {layer}"),
                expected: desc.size,
                actual: n,
            }));
        }
        if got != desc.digest {
            return Err(suspect(Error::DigestMismatch {
                what: format!("layer {layer}"),
                expected: layer.clone(),
                actual: got.to_string(),
            }));
        }
        let file = out
            .into_inner()
            .map_err(|e| plain(Error::io("writing", &tmp_blob, e.into_error())))?;
        Ok((Some((file, tmp_blob, desc.digest.clone())), tmp_dir))
    }
}

/// Whether a Range request's failure is the registry refusing the range itself (416, or a
/// Content-Range other than asked), rather than being down or slow: read in the parts of
/// the message `Repo::send` and `Repo::blob_from` write before any text of the registry's.
fn range_refused(e: &Error) -> bool {
    let Error::Registry { message, .. } = e else {
        return false;
    };
    let mut parts = message.splitn(3, ": ");
    let (first, second) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    first.contains(" answered HTTP 416 fetching blob ")
        || (first.starts_with("fetching blob ")
            && second.starts_with("the answer's Content-Range is"))
}

/// What the layers of one pull share.
struct LayerCtx<'a> {
    /// Uncompressed bytes unpacked so far by all layers (`Limits::max_image_bytes`).
    image_used: AtomicU64,
    batch: Batch<'a>,
    /// The directories each layer unpacked here made without an entry (by diff ID), for
    /// its record (`Store::put_implicit`).
    implicit: Mutex<HashMap<Digest, Vec<Vec<u8>>>>,
}

/// Verified layers waiting for their batched commit, and when the oldest was added.
struct Batch<'a> {
    store: &'a Store,
    #[allow(clippy::type_complexity)]
    pending: Mutex<(Vec<(PendingLayer, Digest)>, Option<Instant>)>,
    progress: Option<Arc<dyn Progress>>,
}

impl Batch<'_> {
    fn add(&self, p: PendingLayer, layer: Digest) -> Result<()> {
        let full = {
            let mut g = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            g.0.push((p, layer));
            let oldest = *g.1.get_or_insert_with(Instant::now);
            g.0.len() >= BATCH_LAYERS || oldest.elapsed() >= BATCH_AGE
        };
        if full {
            self.flush()?;
        }
        Ok(())
    }

    /// Deletes the temps of every pending layer (the pull failed) and releases their locks.
    fn discard(&self) {
        let items = std::mem::take(&mut self.pending.lock().unwrap_or_else(|p| p.into_inner()).0);
        for (p, _) in items {
            if let Some((_, path, _)) = &p.blob {
                let _ = std::fs::remove_file(path);
            }
            if let Some((t, _)) = &p.snapshot {
                let _ = crate::sys::remove_tree(&t.path);
            }
        }
    }

    /// How long until the oldest pending layer is due for its commit (zero: now); None when
    /// nothing is pending.
    fn due_in(&self) -> Option<Duration> {
        let g = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        g.1.map(|oldest| BATCH_AGE.saturating_sub(oldest.elapsed()))
    }

    /// Commits every pending layer (one flush) and reports them done.
    fn flush(&self) -> Result<()> {
        let items = {
            let mut g = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            g.1 = None;
            std::mem::take(&mut g.0)
        };
        if items.is_empty() {
            return Ok(());
        }
        let (items, layers): (Vec<PendingLayer>, Vec<Digest>) = items.into_iter().unzip();
        self.store.commit_batch(items)?;
        if let Some(p) = &self.progress {
            for digest in layers {
                p.event(LayerEvent::Done {
                    digest,
                    cached: false,
                });
            }
        }
        Ok(())
    }
}

/// A manifest or config is stored only if every later command can read it back
/// (`store::parse_json`). Checked with `JsonCheck`, which accepts what serde_json's `Value`
/// accepts without building it: a 16 MiB config of `[0,0,…]` would be 8 million values
/// (256 MiB) for a check.
fn storable_json(bytes: &[u8], what: &str) -> Result<()> {
    serde_json::from_slice::<JsonCheck>(bytes)
        .map(drop)
        .map_err(|e| Error::InvalidManifest {
            what: what.to_string(),
            reason: format!("JSON the store could not read back: {e}"),
        })
}

/// Any JSON document, read as `serde_json::Value` reads it (the same nesting limit, number
/// range and string checks, through `deserialize_any`), keeping nothing.
struct JsonCheck;

impl<'de> serde::Deserialize<'de> for JsonCheck {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(JsonCheck)
    }
}

impl<'de> serde::de::Visitor<'de> for JsonCheck {
    type Value = JsonCheck;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> std::result::Result<Self, E> {
        Ok(JsonCheck)
    }
    fn visit_i64<E>(self, _: i64) -> std::result::Result<Self, E> {
        Ok(JsonCheck)
    }
    fn visit_u64<E>(self, _: u64) -> std::result::Result<Self, E> {
        Ok(JsonCheck)
    }
    fn visit_f64<E>(self, _: f64) -> std::result::Result<Self, E> {
        Ok(JsonCheck)
    }
    fn visit_str<E>(self, _: &str) -> std::result::Result<Self, E> {
        Ok(JsonCheck)
    }
    fn visit_unit<E>(self) -> std::result::Result<Self, E> {
        Ok(JsonCheck)
    }
    fn visit_none<E>(self) -> std::result::Result<Self, E> {
        Ok(JsonCheck)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Self, A::Error> {
        while seq.next_element::<JsonCheck>()?.is_some() {}
        Ok(JsonCheck)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self, A::Error> {
        while map.next_key::<JsonCheck>()?.is_some() {
            map.next_value::<JsonCheck>()?;
        }
        Ok(JsonCheck)
    }
}

/// Moves `tag` to image `id`; images left with neither tags nor digests are dropped.
/// `img` in the records with `tag`: put back if it is gone (without the tags other images
/// hold now), the tag moved to it.
fn attach(db: &mut crate::store::Db, img: &ImageRecord, tag: Option<&str>) -> ImageRecord {
    if !db.images.contains_key(img.id.as_str()) {
        let mut back = img.clone();
        back.repo_tags
            .retain(|t| !db.images.values().any(|o| o.repo_tags.contains(t)));
        db.images.insert(img.id.to_string(), back);
    }
    if let Some(t) = tag {
        move_tag(db, t, &img.id);
    }
    db.images
        .get(img.id.as_str())
        .cloned()
        .unwrap_or_else(|| img.clone())
}

pub(crate) fn move_tag(db: &mut crate::store::Db, tag: &str, id: &Digest) {
    for (k, img) in db.images.iter_mut() {
        if k != id.as_str() {
            img.repo_tags.retain(|t| t != tag);
        }
    }
    db.images
        .retain(|_, i| !i.repo_tags.is_empty() || !i.repo_digests.is_empty());
    if let Some(img) = db.images.get_mut(id.as_str()) {
        if !img.repo_tags.iter().any(|t| t == tag) {
            img.repo_tags.push(tag.to_string());
        }
    }
}

fn check_diff(got: &Digest, want: &Digest, layer: &str) -> Result<()> {
    if got != want {
        return Err(Error::DigestMismatch {
            what: format!("layer {layer} uncompressed content (diff_id)"),
            expected: want.to_string(),
            actual: got.to_string(),
        });
    }
    Ok(())
}

struct Counting<'a, R> {
    inner: R,
    done: u64,
    last: u64,
    progress: Option<Arc<dyn Progress>>,
    digest: &'a Digest,
    /// The store's free space is checked every MiB of the blob too (it is written to the
    /// store as it comes): a blob that decompresses to nothing (padding frames) or is only
    /// stored (its layer unpacked already) passed no check of the uncompressed side.
    root: &'a Path,
    limits: &'a Limits,
    unchecked: u64,
    /// Why a check failed (the reader's error carries only its text).
    full: &'a RefCell<Option<Error>>,
    /// Set when the stream itself failed (what came before it is worth keeping).
    broke: &'a std::cell::Cell<bool>,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf).inspect_err(|_| self.broke.set(true))?;
        self.done += n as u64;
        self.unchecked += n as u64;
        if self.unchecked >= FREE_CHECK_EVERY {
            self.unchecked = 0;
            if let Err(e) = check_free(self.root, self.limits, &self.digest.to_string()) {
                let msg = e.to_string();
                *self.full.borrow_mut() = Some(e);
                return Err(io::Error::other(msg));
            }
        }
        if let Some(p) = &self.progress {
            if self.done - self.last >= 256 << 10 || n == 0 {
                self.last = self.done;
                p.event(LayerEvent::Bytes {
                    digest: self.digest.clone(),
                    done: self.done,
                });
            }
        }
        Ok(n)
    }
}

/// Detects the compression from the stream's magic bytes (it must agree with the media type),
/// decompresses within the pull's limits, unpacks into `dir` and returns the digest of the
/// uncompressed stream.
#[allow(clippy::too_many_arguments)]
fn decompress_and_unpack<R: Read>(
    r: &mut R,
    dir: &Path,
    layer: &str,
    desc: &Descriptor,
    opts: &PullOptions,
    cancel: &Cancel,
    ctx: &LayerCtx<'_>,
    added: &std::cell::Cell<u64>,
) -> Result<Digest> {
    let bad = |reason: String| Error::BadLayer {
        layer: layer.to_string(),
        reason,
    };
    let mut head = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Err(bad(format!("reading tar: {e}"))),
        }
    }
    let declared = manifest::layer_compression(&desc.media_type)?;
    let kind = if got >= 2 && head[..2] == [0x1f, 0x8b] {
        Compression::Gzip
    } else if got == 4 && head == [0x28, 0xb5, 0x2f, 0xfd] {
        Compression::Zstd
    } else {
        Compression::None
    };
    if kind != declared {
        let name = |c: Compression| match c {
            Compression::None => "uncompressed tar",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        };
        return Err(bad(format!(
            "media type {} says {} but the data is {}",
            clean(&desc.media_type),
            name(declared),
            name(kind)
        )));
    }
    // The compressed bytes read so far bound what they may expand to as the stream goes: the
    // size the manifest declares is checked against the blob only at its end, so a manifest
    // that declares a huge layer for a small bomb would otherwise raise the bound with it.
    let read_so_far = std::cell::Cell::new(got as u64);
    let counted = ReadCount {
        inner: r,
        n: &read_so_far,
    };
    let stream =
        BufReader::with_capacity(128 << 10, Cursor::new(head[..got].to_vec()).chain(counted));
    let dec: Box<dyn Read + '_> = match kind {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(stream)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(stream)
                .map_err(|e| bad(format!("zstd: {e}")))?,
        ),
        Compression::None => Box::new(stream),
    };
    let limits = &opts.limits;
    let exceeded = RefCell::new(None);
    let budget = Budget {
        inner: dec,
        used: 0,
        limit: limits.layer_limit(desc.size),
        limits,
        compressed: desc.size,
        read_so_far: &read_so_far,
        image_used: &ctx.image_used,
        added,
        unchecked: 0,
        root: dir,
        cancel,
        layer,
        exceeded: &exceeded,
    };
    budget.check_free()?;
    let mut hashed = HashingReader::new(budget);
    let res = unpack::unpack(&mut hashed, dir, layer, &opts.unpack).and_then(|st| {
        hashed
            .finish()
            .map(|(d, _)| (d, st.implicit_dirs))
            .map_err(|e| bad(format!("reading tar: decompress: {e}")))
    });
    // A passed bound is the reason, whatever the tar reader made of the cut stream.
    if let Some(e) = exceeded.into_inner() {
        return Err(e);
    }
    let (d, implicit) = res?;
    if !implicit.is_empty() {
        ctx.implicit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(d.clone(), implicit);
    }
    Ok(d)
}

/// Whether credentials for `server` (a CRI server_address: `host[:port]`, maybe with a scheme
/// and a path, as the kubelet's keyring gives it) are for endpoint `host`, which serves the
/// registry `domain` (as a mirror, or itself). Docker Hub's names are one registry.
fn same_registry(server: &str, host: &str, domain: &str, is_mirror: bool) -> bool {
    let name = |s: &str| -> String {
        let s = s
            .strip_prefix("https://")
            .or_else(|| s.strip_prefix("http://"))
            .unwrap_or(s);
        let h = s.split('/').next().unwrap_or("").to_ascii_lowercase();
        match h.as_str() {
            "docker.io" | "index.docker.io" | "registry-1.docker.io" => "docker.io".into(),
            _ => h,
        }
    };
    let server = name(server);
    !server.is_empty() && (server == name(host) || (!is_mirror && server == name(domain)))
}

/// Counts the bytes read through it.
struct ReadCount<'a, R> {
    inner: R,
    n: &'a std::cell::Cell<u64>,
}

impl<R: Read> Read for ReadCount<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n.set(self.n.get() + k as u64);
        Ok(k)
    }
}

/// Counts the uncompressed bytes of a layer against the pull's limits and fails the read that
/// passes one (recording why in `exceeded`); checks the store's free space and inodes every
/// MiB and at the layer's end.
struct Budget<'a, R> {
    inner: R,
    used: u64,
    limit: u64,
    limits: &'a Limits,
    compressed: u64,
    /// The compressed bytes read so far (`ReadCount`).
    read_so_far: &'a std::cell::Cell<u64>,
    image_used: &'a AtomicU64,
    /// What this layer added to `image_used` (a retry of it gives that back).
    added: &'a std::cell::Cell<u64>,
    unchecked: u64,
    root: &'a Path,
    cancel: &'a Cancel,
    layer: &'a str,
    exceeded: &'a RefCell<Option<Error>>,
}

impl<R> Budget<'_, R> {
    fn check_free(&self) -> Result<()> {
        check_free(self.root, self.limits, self.layer)
    }

    fn fail(&self, e: Error) -> io::Error {
        let msg = e.to_string();
        *self.exceeded.borrow_mut() = Some(e);
        io::Error::other(msg)
    }
}

/// The free space and inodes of `root`'s filesystem against the pull's reserve.
fn check_free(root: &Path, limits: &Limits, layer: &str) -> Result<()> {
    let free =
        crate::sys::free_space(root).map_err(|e| Error::io("checking free space of", root, e))?;
    let exceeded = |reason| Error::LimitExceeded {
        what: format!("layer {layer}"),
        reason,
    };
    if free.bytes < limits.min_free_bytes {
        return Err(exceeded(format!(
            "the store's filesystem has {} bytes free, less than the {} to keep free",
            free.bytes, limits.min_free_bytes
        )));
    }
    let pct = limits.min_free_inodes_percent;
    if free.inodes_total > 0
        && (free.inodes as u128) * 100 < (free.inodes_total as u128) * (pct as u128)
    {
        return Err(exceeded(format!(
            "the store's filesystem has {} of its {} inodes free, less than the {pct} % \
             to keep free",
            free.inodes, free.inodes_total
        )));
    }
    Ok(())
}

impl<R: Read> Read for Budget<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 {
            // The layer's end: what it made since the last look is looked at too.
            if self.unchecked > 0 {
                self.unchecked = 0;
                if let Err(e) = self.check_free() {
                    return Err(self.fail(e));
                }
            }
            return Ok(0);
        }
        self.cancel.touch();
        let n64 = n as u64;
        self.used = self.used.saturating_add(n64);
        self.added.set(self.used);
        let image = self
            .image_used
            .fetch_add(n64, Ordering::Relaxed)
            .saturating_add(n64);
        let read = self.read_so_far.get();
        if self.used > self.limits.layer_limit(read) {
            return Err(self.fail(Error::LimitExceeded {
                what: format!("layer {}", self.layer),
                reason: format!(
                    "uncompressed content passes {} bytes, the limit for the {read} compressed \
                     bytes read so far (max {}× them, at least {}, at most {} bytes)",
                    self.limits.layer_limit(read),
                    self.limits.max_ratio,
                    self.limits.ratio_floor,
                    self.limits.max_layer_bytes
                ),
            }));
        }
        if self.used > self.limit {
            return Err(self.fail(Error::LimitExceeded {
                what: format!("layer {}", self.layer),
                reason: format!(
                    "uncompressed content passes {} bytes, the limit for a {}-byte layer \
                     (max {}× its size, at least {}, at most {} bytes)",
                    self.limit,
                    self.compressed,
                    self.limits.max_ratio,
                    self.limits.ratio_floor,
                    self.limits.max_layer_bytes
                ),
            }));
        }
        if image > self.limits.max_image_bytes {
            return Err(self.fail(Error::LimitExceeded {
                what: format!("layer {}", self.layer),
                reason: format!(
                    "the image's layers pass {} uncompressed bytes together (the image limit)",
                    self.limits.max_image_bytes
                ),
            }));
        }
        self.unchecked += n64;
        if self.unchecked >= FREE_CHECK_EVERY {
            self.unchecked = 0;
            if let Err(e) = self.check_free() {
                return Err(self.fail(e));
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only the registry's refusal of a range sends the whole blob instead (the kept part
    /// then dropped): not a registry that is down, nor text of the registry's own.
    #[test]
    fn a_refused_range_is_told_from_a_failed_request() {
        let reg = |m: &str| Error::Registry {
            registry: "http://r".into(),
            message: m.into(),
        };
        assert!(range_refused(&reg(
            "http://r answered HTTP 416 fetching blob 0123 from byte 9: "
        )));
        assert!(range_refused(&reg(
            "fetching blob 0123 from byte 9: the answer's Content-Range is \"bytes 0-9/10\""
        )));
        for other in [
            "http://r answered HTTP 503 fetching blob 0123 from byte 9: the answer's Content-Range is x",
            "http://r answered HTTP 500 fetching blob 0123 from byte 9: answered HTTP 416 fetching blob ",
            "fetching blob 0123 from byte 9: connection refused",
        ] {
            assert!(!range_refused(&reg(other)), "{other}");
        }
        assert!(!range_refused(&Error::NotFound("x".into())));
    }

    #[test]
    fn credentials_server_names() {
        // As the kubelet's keyring gives them: with a scheme and path, or bare.
        for server in [
            "https://index.docker.io/v1/",
            "docker.io",
            "registry-1.docker.io",
        ] {
            assert!(same_registry(
                server,
                "registry-1.docker.io",
                "docker.io",
                false
            ));
        }
        assert!(same_registry(
            "Reg.Example:5000",
            "reg.example:5000",
            "reg.example:5000",
            false
        ));
        assert!(!same_registry(
            "reg.example",
            "reg.example:5000",
            "reg.example:5000",
            false
        ));
        // A mirror of the registry is not the registry.
        assert!(!same_registry(
            "reg.example",
            "mirror.example",
            "reg.example",
            true
        ));
        assert!(same_registry(
            "mirror.example",
            "mirror.example",
            "reg.example",
            true
        ));
        assert!(!same_registry("", "reg.example", "reg.example", false));
    }

    fn record(hex: char, tags: &[&str]) -> ImageRecord {
        let d = Digest::parse(&format!("sha256:{}", hex.to_string().repeat(64))).unwrap();
        ImageRecord {
            id: d.clone(),
            repo_tags: tags.iter().map(|t| t.to_string()).collect(),
            repo_digests: vec![format!("r/x@{d}")],
            manifest: d.clone(),
            manifest_blobs: vec![],
            config: d,
            layers: vec![],
            size: 0,
            user: String::new(),
            platform: "linux/amd64".into(),
            pinned: false,
            created: 0,
        }
    }

    #[test]
    fn an_image_removed_while_a_pull_found_it_complete_is_put_back() {
        // The pull found `a` complete with tags t1 and t2; then a removal took it, and t2
        // went to another image `b` meanwhile.
        let a = record('a', &["r/x:t1", "r/x:t2"]);
        let mut db = crate::store::Db::default();
        db.images.insert(
            record('b', &["r/x:t2"]).id.to_string(),
            record('b', &["r/x:t2"]),
        );
        let got = attach(&mut db, &a, Some("r/x:t1"));
        assert_eq!(got.id, a.id);
        assert_eq!(
            db.images[a.id.as_str()].repo_tags,
            vec!["r/x:t1".to_string()]
        );
        assert_eq!(
            db.images[record('b', &[]).id.as_str()].repo_tags,
            vec!["r/x:t2".to_string()]
        );
        // Present: only the tag moves, nothing else changes.
        let got = attach(&mut db, &a, Some("r/x:t2"));
        assert_eq!(
            got.repo_tags,
            vec!["r/x:t1".to_string(), "r/x:t2".to_string()]
        );
        assert!(db.images[record('b', &[]).id.as_str()].repo_tags.is_empty());
    }
}
