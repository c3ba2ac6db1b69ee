//! The on-disk store: content-addressed blobs, unpacked layer snapshots, image records and
//! container rootfs records, all made visible by rename after their content is complete and
//! (for blobs and records) fsynced.
//!
//! ```text
//! ROOT/gc.lock                     shared by pulls and rootfs preparation, exclusive by prune
//! ROOT/meta.lock                   serializes read-modify-write of images.json
//! ROOT/images.json                 image records (atomically replaced)
//! ROOT/.images.json.tmp.PID.N      its next version being written (under meta.lock)
//! ROOT/blobs/sha256/HEX            verified blobs (manifests, configs, compressed layers)
//! ROOT/ingest/HEX.PID.N            blobs being downloaded
//! ROOT/locks/HEX                   per-digest flock files: one download/unpack at a time
//! ROOT/snapshots/DIFFIDHEX/        an unpacked layer (overlay lowerdir)
//! ROOT/tmp/HEX.PID.N/              a layer being unpacked
//! ROOT/tmp/HEX.PID.N.implicit       a layer's implicit-directory list being written
//! ROOT/implicit/DIFFIDHEX          the directories a committed layer made without entries,
//!                                  until they take the metadata of the layers below
//! ROOT/tmp.lock                    held shared while creating a temp entry, exclusive to sweep
//! ```
//!
//! Every temp entry (ingest file, tmp dir) is `flock`ed by its writer while it lives, so an
//! entry that can be locked is left over from a process that died or failed: it is removed on
//! the next open of the store, at the start of every pull, and when its digest is pulled. An
//! ingest file of another process that died (a killed pull) is kept instead, as what a failed
//! pull keeps of a blob (`ingest/HEX.partial`): the next pull goes on from it.
//!
//! ```text
//! ROOT/containers/ID/              a container rootfs: rootfs.json, upper/, work/, rootfs/
//! ```

use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::registry::Cancel;
use crate::sys;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub const DEFAULT_ROOT: &str = "/var/lib/rsrun/images";
/// The name ending of what a failed pull kept of a blob (`ingest/HEX.partial`).
pub const PARTIAL: &str = ".partial";
/// How long a kept part waits for a pull to go on from it before the sweeps take it.
pub const PARTIAL_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LayerRecord {
    pub digest: Digest,
    pub diff_id: Digest,
    pub size: u64,
    pub media_type: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageRecord {
    /// The config digest (what `crictl images` shows as IMAGE ID).
    pub id: Digest,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    /// The platform manifest.
    pub manifest: Digest,
    /// Every manifest and index blob this image keeps (for GC).
    pub manifest_blobs: Vec<Digest>,
    pub config: Digest,
    pub layers: Vec<LayerRecord>,
    /// Manifest + config + compressed layers, in bytes.
    pub size: u64,
    /// The config's User (`uid`, `name`, `uid:gid`, ...), empty if unset.
    pub user: String,
    pub platform: String,
    #[serde(default)]
    pub pinned: bool,
    /// Unix seconds of the first pull.
    pub created: u64,
}

impl ImageRecord {
    /// ImageStatus' uid / username split: a numeric user gives uid, a name gives username.
    pub fn uid_or_username(&self) -> (Option<i64>, String) {
        let u = self.user.split(':').next().unwrap_or("");
        match u.parse::<i64>() {
            Ok(n) => (Some(n), String::new()),
            Err(_) => (None, u.to_string()),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Db {
    pub images: BTreeMap<String, ImageRecord>,
}

/// A container rootfs known to the store (GC keeps its snapshots).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RootfsRecord {
    pub id: String,
    pub image: Digest,
    pub snapshots: Vec<Digest>,
    pub readonly: bool,
}

pub struct Store {
    root: PathBuf,
    fsync: bool,
    seq: AtomicU64,
    syncs: AtomicU64,
    /// The last images.json read (its bytes) and what they parse to: `db` parses only when
    /// the bytes differ (whoever wrote them, this process or another).
    db_cache: std::sync::Mutex<Option<DbCache>>,
}

/// The bytes of images.json as last read (None: no file) and what they parse to.
type DbCache = (Option<Vec<u8>>, std::sync::Arc<Db>);

/// A directory a layer is being unpacked into, locked by its writer until dropped.
pub struct TempSnapshot {
    pub path: PathBuf,
    _lock: File,
}

/// A layer whose blob and/or snapshot are complete and verified, waiting (with its digest lock
/// held) for the batched flush that makes it visible: see [`Store::commit_batch`].
pub(crate) struct PendingLayer {
    pub _lock: FileLock,
    /// The blob's temp file (in `ingest/`), its path and digest.
    pub blob: Option<(File, PathBuf, Digest)>,
    pub snapshot: Option<(TempSnapshot, Digest)>,
}

/// An flock held on a file; released on drop (or when the process dies).
pub struct FileLock {
    _f: File,
}

/// A lock file, made if missing (its content is never used).
fn open_lock(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .ctx("opening lock", path)
}

impl Store {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let root = root.into();
        // Image content is untrusted (setuid binaries, device nodes, world-writable dirs)
        // and may be private: only root may reach into the store. The root stays
        // traversable (0711) for the runtime's bundle paths; everything below is 0700.
        use std::os::unix::fs::PermissionsExt;
        fs::create_dir_all(&root).ctx("creating store directory", &root)?;
        fs::set_permissions(&root, fs::Permissions::from_mode(0o711))
            .ctx("setting mode of", &root)?;
        for d in [
            "blobs",
            "blobs/sha256",
            "ingest",
            "locks",
            "snapshots",
            "implicit",
            "containers",
            "tmp",
        ] {
            let p = root.join(d);
            fs::create_dir_all(&p).ctx("creating store directory", &p)?;
            fs::set_permissions(&p, fs::Permissions::from_mode(0o700))
                .ctx("setting mode of", &p)?;
        }
        let store = Store {
            root,
            fsync: std::env::var_os("RSRUN_IMAGE_NO_FSYNC").is_none(),
            seq: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            db_cache: Default::default(),
        };
        store.sweep_stale()?;
        store.sweep_db_temps()?;
        Ok(store)
    }

    /// Removes the temporary copies of images.json (`.images.json.tmp.PID.N`) that writers
    /// killed before their rename left. They are written only under the metadata lock: with
    /// it held, none is being written. Returns how many went.
    fn sweep_db_temps(&self) -> Result<u64> {
        let _l = self.lock_file(&self.root.join("meta.lock"), true, None, "")?;
        let mut n = 0;
        for e in fs::read_dir(&self.root)
            .ctx("reading", &self.root)?
            .flatten()
        {
            if e.file_name()
                .to_string_lossy()
                .starts_with(".images.json.tmp.")
            {
                let p = e.path();
                fs::remove_file(&p).ctx("removing", &p)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// How many fsync/syncfs calls this handle made (durability cost; the tests read it).
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }
    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }
    pub fn snapshot_path(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("snapshots").join(diff_id.hex())
    }
    pub fn has_snapshot(&self, diff_id: &Digest) -> bool {
        self.snapshot_path(diff_id).is_dir()
    }
    pub fn containers_dir(&self) -> PathBuf {
        self.root.join("containers")
    }

    fn unique(&self) -> String {
        format!(
            "{}.{}",
            std::process::id(),
            self.seq.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn lock_file(
        &self,
        path: &Path,
        exclusive: bool,
        cancel: Option<&Cancel>,
        what: &str,
    ) -> Result<FileLock> {
        self.lock_file_waiting(path, exclusive, cancel, what, &|| {})
    }

    /// `lock_file`, calling `on_wait` while the lock is held elsewhere.
    fn lock_file_waiting(
        &self,
        path: &Path,
        exclusive: bool,
        cancel: Option<&Cancel>,
        what: &str,
        on_wait: &dyn Fn(),
    ) -> Result<FileLock> {
        let f = open_lock(path)?;
        loop {
            match sys::flock(f.as_fd(), exclusive, cancel.is_some()) {
                Ok(()) => return Ok(FileLock { _f: f }),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if let Some(c) = cancel {
                        c.check(what)?;
                        // Waiting for another pull is not a stall of this one.
                        c.touch();
                    }
                    on_wait();
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("locking", path, e)),
            }
        }
    }

    /// Held (shared) for the whole of a pull or rootfs preparation; prune takes it exclusively.
    pub fn gc_lock_shared(&self, cancel: Option<&Cancel>) -> Result<FileLock> {
        self.lock_file(
            &self.root.join("gc.lock"),
            false,
            cancel,
            "waiting for a prune to finish",
        )
    }
    pub fn gc_lock_exclusive(&self) -> Result<FileLock> {
        self.lock_file(&self.root.join("gc.lock"), true, None, "")
    }
    /// The exclusive lock if nothing holds the shared one now (no pull, no rootfs being
    /// prepared), else `None`.
    pub fn try_gc_lock_exclusive(&self) -> Result<Option<FileLock>> {
        let path = self.root.join("gc.lock");
        let f = open_lock(&path)?;
        match sys::flock(f.as_fd(), true, true) {
            Ok(()) => Ok(Some(FileLock { _f: f })),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(Error::io("locking", &path, e)),
        }
    }

    /// One download / unpack of a digest at a time, across threads and processes.
    pub fn lock_digest(&self, d: &Digest, cancel: &Cancel) -> Result<FileLock> {
        self.lock_digest_waiting(d, cancel, &|| {})
    }

    /// `lock_digest`, calling `on_wait` while another pull holds the digest (a pull flushes
    /// its own pending layers then, so that two pulls never wait for each other).
    pub(crate) fn lock_digest_waiting(
        &self,
        d: &Digest,
        cancel: &Cancel,
        on_wait: &dyn Fn(),
    ) -> Result<FileLock> {
        self.lock_file_waiting(
            &self.root.join("locks").join(d.hex()),
            true,
            Some(cancel),
            &format!("waiting for {} in another pull", d.short()),
            on_wait,
        )
    }

    /// Removes temp files and directories a dead or failed pull left for this digest (entries
    /// whose writer still holds them locked are kept). Call with the digest's lock held.
    pub fn clean_stale(&self, d: &Digest) {
        let prefix = format!("{}.", d.hex());
        self.remove_unlocked(false, &["ingest", "tmp"], |_, name| {
            name.starts_with(&prefix) && !name.ends_with(PARTIAL)
        });
    }

    /// The part of blob `d` a failed pull kept (`ingest/HEX.partial`), taken for this pull:
    /// moved to a temp name of its own and locked, as `ingest_file` makes one, with its
    /// length. None when there is none, another pull has it, or it is not shorter than
    /// `size` (then it goes: the blob was complete, or it is not that blob).
    pub fn take_partial(&self, d: &Digest, size: u64) -> Result<Option<(File, PathBuf, u64)>> {
        let p = self.partial_path(d.hex());
        let _c = self.creating_temp()?;
        let f = match OpenOptions::new().read(true).append(true).open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("opening", &p, e)),
        };
        if sys::flock(f.as_fd(), true, true).is_err() {
            return Ok(None);
        }
        // Still the file at that name (another pull may have taken it between the open and
        // the lock, and kept a new one since).
        let md = f.metadata().ctx("stat", &p)?;
        match fs::symlink_metadata(&p) {
            Ok(now) if (now.dev(), now.ino()) == (md.dev(), md.ino()) => {}
            _ => return Ok(None),
        }
        let len = md.len();
        if len >= size {
            sys::ignore_gone(fs::remove_file(&p)).ctx("removing", &p)?;
            return Ok(None);
        }
        let tmp = self
            .root
            .join("ingest")
            .join(format!("{}.{}", d.hex(), self.unique()));
        match fs::rename(&p, &tmp) {
            Ok(()) => Ok(Some((f, tmp, len))),
            // Swept meanwhile (too old).
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("renaming", &p, e)),
        }
    }

    /// Where what a failed or killed pull received of blob `hex` is kept.
    fn partial_path(&self, hex: &str) -> PathBuf {
        self.root.join("ingest").join(format!("{hex}{PARTIAL}"))
    }

    /// Keeps what a failed pull received of blob `d` (the temp blob `tmp`, whose writer
    /// `file` is) as `ingest/HEX.partial`, durable, for the next pull to go on from
    /// (`take_partial`). Swept after PARTIAL_MAX_AGE.
    pub fn keep_partial(&self, tmp: &Path, file: &File, d: &Digest) -> Result<()> {
        file.sync_all().ctx("fsync", tmp)?;
        let p = self.partial_path(d.hex());
        fs::rename(tmp, &p).ctx("renaming", &p)?;
        self.sync_dir(&self.root.join("ingest"))
    }

    /// Removes every temp entry that no live writer holds: what killed or failed pulls left
    /// in `ingest/` and `tmp/` (and `snapshots/.tmp-*` of older versions). Returns (entries,
    /// bytes) removed. Runs at every open of the store and at the start of every pull.
    pub fn sweep_stale(&self) -> Result<(u64, u64)> {
        let _l = self.lock_file(&self.root.join("tmp.lock"), true, None, "")?;
        Ok(self.remove_unlocked(
            true,
            &["ingest", "tmp", "snapshots", "containers"],
            |dir, name| match dir {
                "snapshots" => name.starts_with(".tmp-"),
                // What failed pulls kept of a blob: for a while.
                "ingest" if name.ends_with(PARTIAL) => fs::metadata(self.root.join(dir).join(name))
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().is_ok_and(|a| a > PARTIAL_MAX_AGE)),
                // A container rootfs whose removal (rename to `.removing-ID-PID`, then
                // delete) was cut short, unless that process still runs.
                "containers" => name.strip_prefix(".removing-").is_some_and(|rest| {
                    rest.rsplit_once('-').is_none_or(|(_, pid)| {
                        pid.parse::<u32>()
                            .map_or(true, |p| !Path::new(&format!("/proc/{p}")).exists())
                    })
                }),
                _ => true,
            },
        ))
    }

    /// Removes the entries of `dirs` that `wanted` names and no live writer holds; with
    /// `salvage`, the blob ingest files of other processes (dead: their lock is free) are kept
    /// as partial blobs instead (`Store::salvage`).
    fn remove_unlocked(
        &self,
        salvage: bool,
        dirs: &[&str],
        wanted: impl Fn(&str, &str) -> bool,
    ) -> (u64, u64) {
        let (mut n, mut bytes) = (0, 0);
        for dir in dirs {
            let Ok(rd) = fs::read_dir(self.root.join(dir)) else {
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !wanted(dir, &name) {
                    continue;
                }
                let p = e.path();
                // A writer holds its entry flocked; one we can lock is abandoned.
                let Ok(f) = File::open(&p) else { continue };
                if sys::flock(f.as_fd(), true, true).is_err() {
                    continue;
                }
                if salvage && *dir == "ingest" {
                    // (What cannot be kept goes, as before: the part only saves a download.)
                    if others_ingest(&name)
                        .is_some_and(|hex| self.salvage(&p, &f, hex).is_ok_and(|k| k))
                    {
                        continue;
                    }
                }
                bytes += crate::disk_usage(&p).0;
                let removed = if p.is_dir() {
                    sys::remove_tree(&p)
                } else {
                    fs::remove_file(&p)
                };
                if removed.is_ok() {
                    n += 1;
                }
            }
        }
        (n, bytes)
    }

    /// Keeps the ingest file `tmp` (`file`, locked) of blob `hex`, which a killed pull left, as
    /// `ingest/HEX.partial`: the bytes it received, in order (the writer appends), for the
    /// next pull to go on from, as a failed pull keeps them (`keep_partial`; the blob's digest
    /// judges them, and a wrong part is dropped). False when it has nothing, is older than
    /// a kept part may be, or a kept part of that blob is as long: then it goes.
    fn salvage(&self, tmp: &Path, file: &File, hex: &str) -> Result<bool> {
        let md = file.metadata().ctx("stat", tmp)?;
        let len = md.len();
        let p = self.partial_path(hex);
        let old = md
            .modified()
            .is_ok_and(|t| t.elapsed().is_ok_and(|a| a > PARTIAL_MAX_AGE));
        if len == 0 || old || fs::symlink_metadata(&p).is_ok_and(|m| m.len() >= len) {
            return Ok(false);
        }
        // (Not fsynced here, under the sweep's exclusive lock: a part that a crash tears is
        // found wrong by the blob's digest and dropped.)
        fs::rename(tmp, &p).ctx("renaming", tmp)?;
        self.sync_dir(&self.root.join("ingest"))?;
        Ok(true)
    }

    /// Held shared while a temp entry is created and locked, so a sweep never sees one
    /// between the two.
    fn creating_temp(&self) -> Result<FileLock> {
        self.lock_file(&self.root.join("tmp.lock"), false, None, "")
    }

    /// A new temp file for a blob being downloaded.
    /// The file is locked (flock) for as long as it is open.
    pub fn ingest_file(&self, d: &Digest) -> Result<(File, PathBuf)> {
        self.temp_file("ingest", format!("{}.{}", d.hex(), self.unique()))
    }

    /// A new temp file `ROOT/DIR/NAME`, flocked by its writer (the sweeps pass it over).
    fn temp_file(&self, dir: &str, name: String) -> Result<(File, PathBuf)> {
        let p = self.root.join(dir).join(name);
        let _c = self.creating_temp()?;
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
            .ctx("creating", &p)?;
        sys::flock(f.as_fd(), true, true).map_err(|e| Error::io("locking", &p, e))?;
        Ok((f, p))
    }

    /// Makes a verified temp blob visible under its digest.
    pub fn commit_blob(&self, tmp: &Path, file: File, d: &Digest) -> Result<()> {
        if self.fsync {
            file.sync_all().ctx("fsync", tmp)?;
            self.syncs.fetch_add(1, Ordering::Relaxed);
        }
        drop(file);
        let dst = self.blob_path(d);
        fs::rename(tmp, &dst).ctx("renaming blob into place", &dst)?;
        self.sync_dir(&self.root.join("blobs/sha256"))
    }

    /// Writes a small blob whose bytes were already verified to hash to `d`.
    pub fn put_blob(&self, d: &Digest, bytes: &[u8]) -> Result<()> {
        if self.has_blob(d) {
            return Ok(());
        }
        let (mut f, tmp) = self.ingest_file(d)?;
        f.write_all(bytes).ctx("writing", &tmp)?;
        self.commit_blob(&tmp, f, d)
    }

    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        let p = self.blob_path(d);
        match fs::read(&p) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(Error::NotFound(format!("blob {d}")))
            }
            Err(e) => Err(Error::io("reading", p, e)),
        }
    }

    /// A new temp directory (in `tmp/`) to unpack a layer into, locked until dropped.
    pub fn snapshot_tmp(&self, diff_id: &Digest) -> Result<TempSnapshot> {
        let p = self
            .root
            .join("tmp")
            .join(format!("{}.{}", diff_id.hex(), self.unique()));
        let _c = self.creating_temp()?;
        fs::create_dir(&p).ctx("creating", &p)?;
        // The layer's root is the image's `/` where no layer says otherwise: 0755 whatever
        // the caller's umask (the store's privacy is its parent directories').
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755))
                .ctx("setting mode of", &p)?;
        }
        let f = File::open(&p).ctx("opening", &p)?;
        sys::flock(f.as_fd(), true, true).map_err(|e| Error::io("locking", &p, e))?;
        Ok(TempSnapshot { path: p, _lock: f })
    }

    /// Records the directories the unpacked layer `diff_id` made without entries of their own
    /// (`UnpackStats::implicit_dirs`) until `implicit_done`: a layer committed before its
    /// pull ends (a batch, while slower layers come) keeps the list through a failed or
    /// killed pull, so the next pull that finds the layer in place still gives them the
    /// metadata of the layers below. Written whole (a temp file renamed into place) before
    /// the layer is committed (`commit_batch` flushes the store's filesystem first). An empty
    /// list removes any record. (A record of a layer that was not committed in the end, a
    /// failed pull's, holds what any unpack of the same diff ID finds: it is overwritten by
    /// the next, and swept with its snapshot.)
    pub fn put_implicit(&self, diff_id: &Digest, dirs: &[Vec<u8>]) -> Result<()> {
        let dst = self.implicit_path(diff_id);
        if dirs.is_empty() {
            return sys::ignore_gone(fs::remove_file(&dst)).ctx("removing", &dst);
        }
        let (mut f, tmp) = self.temp_file(
            "tmp",
            format!("{}.{}.implicit", diff_id.hex(), self.unique()),
        )?;
        let mut data = Vec::new();
        for d in dirs {
            data.extend_from_slice(d);
            data.push(0);
        }
        let res = f
            .write_all(&data)
            .ctx("writing", &tmp)
            .and_then(|()| fs::rename(&tmp, &dst).ctx("renaming into place", &dst));
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res
    }

    /// The directories `put_implicit` recorded for the layer `diff_id` and no
    /// `implicit_done` has cleared: None when there are none.
    pub fn implicit_dirs(&self, diff_id: &Digest) -> Result<Option<Vec<Vec<u8>>>> {
        let p = self.implicit_path(diff_id);
        match fs::read(&p) {
            Ok(data) => Ok(Some(
                data.split(|b| *b == 0)
                    .filter(|d| !d.is_empty())
                    .map(<[u8]>::to_vec)
                    .collect(),
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("reading", &p, e)),
        }
    }

    /// The layers' implicit directories have their metadata: their records go, once that is
    /// on disk (one flush for all; a crash before leaves the records, and the next pull does
    /// it again).
    pub fn implicit_done(&self, diff_ids: &[Digest]) -> Result<()> {
        if diff_ids.is_empty() {
            return Ok(());
        }
        if self.fsync {
            let snaps = self.root.join("snapshots");
            let f = File::open(&snaps).ctx("opening", &snaps)?;
            sys::syncfs(f.as_fd()).map_err(|e| Error::io("syncfs", &snaps, e))?;
            self.syncs.fetch_add(1, Ordering::Relaxed);
        }
        for d in diff_ids {
            let p = self.implicit_path(d);
            sys::ignore_gone(fs::remove_file(&p)).ctx("removing", &p)?;
        }
        Ok(())
    }

    fn implicit_path(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("implicit").join(diff_id.hex())
    }

    /// Makes a batch of verified layers visible with one flush for all of them: the store's
    /// filesystem is flushed (syncfs) first, so that a crash cannot leave a visible but partly
    /// written blob or snapshot; then each is renamed into place, the two directories are
    /// fsynced once, and the layers' locks are released.
    pub(crate) fn commit_batch(&self, items: Vec<PendingLayer>) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        if self.fsync {
            let mut seen = Vec::new();
            for d in ["ingest", "tmp", "implicit"] {
                let p = self.root.join(d);
                let f = File::open(&p).ctx("opening", &p)?;
                let dev = f.metadata().ctx("stat", &p)?.dev();
                if !seen.contains(&dev) {
                    seen.push(dev);
                    sys::syncfs(f.as_fd()).map_err(|e| Error::io("syncfs", &p, e))?;
                    self.syncs.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let (mut blobs, mut snaps) = (false, false);
        let mut res = Ok(());
        for it in &items {
            if let Some((_, tmp, d)) = &it.blob {
                let dst = self.blob_path(d);
                if res.is_ok() {
                    res = fs::rename(tmp, &dst).ctx("renaming blob into place", &dst);
                    blobs = true;
                }
                let _ = fs::remove_file(tmp);
            }
            if let Some((t, d)) = &it.snapshot {
                let dst = self.snapshot_path(d);
                if res.is_ok() {
                    res = match fs::rename(&t.path, &dst) {
                        // Another pull committed the same layer first.
                        Err(_) if dst.is_dir() => Ok(()),
                        r => r.ctx("renaming snapshot into place", &dst),
                    };
                    snaps = true;
                }
                if t.path.exists() {
                    let _ = sys::remove_tree(&t.path);
                }
            }
        }
        res?;
        if blobs {
            self.sync_dir(&self.root.join("blobs/sha256"))?;
        }
        if snaps {
            self.sync_dir(&self.root.join("snapshots"))?;
        }
        drop(items);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> Result<()> {
        if self.fsync {
            File::open(dir)
                .and_then(|f| f.sync_all())
                .ctx("fsync", dir)?;
            self.syncs.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Atomically replaces `path` with `bytes` (temp file, fsync, rename, fsync dir).
    pub fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        let dir = path.parent().expect("path in store");
        let tmp = dir.join(format!(
            ".{}.tmp.{}",
            path.file_name().unwrap_or_default().to_string_lossy(),
            self.unique()
        ));
        let mut f = File::create(&tmp).ctx("creating", &tmp)?;
        f.write_all(bytes).ctx("writing", &tmp)?;
        if self.fsync {
            f.sync_all().ctx("fsync", &tmp)?;
        }
        drop(f);
        fs::rename(&tmp, path).ctx("renaming into place", path)?;
        self.sync_dir(dir)
    }

    /// The image records, for reading: as `load_db`, but the file is parsed again only when
    /// its bytes changed since the last call (ImageStatus and ListImages come often).
    pub fn db(&self) -> Result<std::sync::Arc<Db>> {
        let p = self.root.join("images.json");
        // None: no file yet (an empty store).
        let bytes = match fs::read(&p) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io("reading", p, e)),
        };
        let mut cache = self.db_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((b, db)) = cache.as_ref() {
            if *b == bytes {
                return Ok(db.clone());
            }
        }
        let db = match &bytes {
            None => Db::default(),
            Some(b) => serde_json::from_slice(b).map_err(|e| Error::CorruptStore {
                path: p,
                reason: e.to_string(),
            })?,
        };
        let db = std::sync::Arc::new(db);
        *cache = Some((bytes, db.clone()));
        Ok(db)
    }

    /// The image records, to change (a copy of what `db` reads).
    pub fn load_db(&self) -> Result<Db> {
        Ok(Db::clone(&*self.db()?))
    }

    /// Read-modify-write of the image records under the metadata lock.
    pub fn update_db<T>(&self, f: impl FnOnce(&mut Db) -> Result<T>) -> Result<T> {
        let _l = self.lock_file(&self.root.join("meta.lock"), true, None, "")?;
        let mut db = self.load_db()?;
        let out = f(&mut db)?;
        let bytes = serde_json::to_vec_pretty(&db).expect("serializable");
        self.write_atomic(&self.root.join("images.json"), &bytes)?;
        // The next reader finds these bytes in the file and need not parse them.
        *self.db_cache.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Some(bytes), std::sync::Arc::new(db)));
        Ok(out)
    }

    pub fn rootfs_records(&self) -> Result<Vec<RootfsRecord>> {
        let dir = self.containers_dir();
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).ctx("listing", &dir)?.flatten() {
            let p = e.path().join("rootfs.json");
            match fs::read(&p) {
                Ok(b) => out.push(serde_json::from_slice(&b).map_err(|e| Error::CorruptStore {
                    path: p,
                    reason: e.to_string(),
                })?),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("reading", p, e)),
            }
        }
        Ok(out)
    }
}

/// How every command reads a stored manifest or config (`inspect`): a pull checks each one
/// it stores the same way, so nothing it accepts is later called corrupt (serde_json refuses
/// nesting deeper than 128 levels, numbers out of f64 range, …).
pub fn parse_json(bytes: &[u8]) -> serde_json::Result<serde_json::Value> {
    serde_json::from_slice(bytes)
}

/// Finds an image by full/short ID, `sha256:` ID, tag, or repo digest (normalized).
pub fn find_image<'a>(db: &'a Db, key: &str) -> Option<&'a ImageRecord> {
    find_image_id(db, key).and_then(|id| db.images.get(&id))
}

pub(crate) fn find_image_id(db: &Db, key: &str) -> Option<String> {
    // A name first, then an ID (as containerd resolves): `deadbeef1234` is the image of that
    // name when there is one, not whichever image's ID starts so.
    let by_name = crate::reference::Reference::parse(key).ok().and_then(|r| {
        let (tag, digest) = (r.repo_tag(), r.digest.as_ref().map(|d| r.repo_digest(d)));
        db.images
            .values()
            .find(|i| match &digest {
                Some(d) => i.repo_digests.contains(d),
                None => tag.as_ref().is_some_and(|t| i.repo_tags.contains(t)),
            })
            .map(|i| i.id.to_string())
    });
    if by_name.is_some() {
        return by_name;
    }
    let k = key.strip_prefix("sha256:").unwrap_or(key);
    if k.len() >= 12 && k.len() <= 64 && k.bytes().all(|b| b.is_ascii_hexdigit()) {
        let matches: Vec<&ImageRecord> = db
            .images
            .values()
            .filter(|i| i.id.hex().starts_with(k))
            .collect();
        if matches.len() == 1 {
            return Some(matches[0].id.to_string());
        }
    }
    None
}

/// The blob of an ingest file `HEX.PID.N` that another process made (a temp of this one is
/// its own failed pull's, whose bytes are not kept unless it said so).
fn others_ingest(name: &str) -> Option<&str> {
    let mut parts = name.splitn(3, '.');
    let (hex, pid, n) = (parts.next()?, parts.next()?, parts.next()?);
    let ours = pid.parse::<u32>().ok()? == std::process::id();
    (hex.len() == 64
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
        && n.bytes().all(|b| b.is_ascii_digit())
        && !ours)
        .then_some(hex)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn only_other_processes_ingest_files_are_kept() {
        let hex = "ab".repeat(32);
        let me = std::process::id();
        let other = if me == 1 { 2 } else { me - 1 };
        assert_eq!(
            super::others_ingest(&format!("{hex}.{other}.7")),
            Some(hex.as_str())
        );
        for name in [
            format!("{hex}.{me}.7"),
            format!("{hex}.partial"),
            format!("{}.{other}.7", &hex[2..]),
            format!("{hex}.x.7"),
            format!("{hex}.{other}"),
            format!("{hex}.{other}.7.implicit"),
        ] {
            assert_eq!(super::others_ingest(&name), None, "{name}");
        }
    }

    #[test]
    fn store_directories_are_private() {
        let base = std::env::temp_dir().join(format!("rsrun-store-modes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        // A pre-existing, too open root is tightened too.
        std::fs::create_dir_all(base.join("snapshots")).unwrap();
        std::fs::set_permissions(
            base.join("snapshots"),
            std::fs::Permissions::from_mode(0o777),
        )
        .unwrap();
        super::Store::open(&base).unwrap();
        let mode = |p: &str| {
            std::fs::metadata(base.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode(""), 0o711);
        for d in [
            "blobs",
            "blobs/sha256",
            "ingest",
            "locks",
            "snapshots",
            "containers",
        ] {
            assert_eq!(mode(d), 0o700, "{d}");
        }
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_cut_rootfs_removal_is_finished_at_open_unless_its_process_runs() {
        let base = std::env::temp_dir().join(format!("rsrun-store-rm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        super::Store::open(&base).unwrap();
        let c = base.join("containers");
        // PID 0 never names a process of ours; this test's own PID is alive.
        let dead = c.join(format!(".removing-{}-0", "a".repeat(64)));
        let live = c.join(format!(
            ".removing-{}-{}",
            "b".repeat(64),
            std::process::id()
        ));
        let other = c.join("some-container");
        for d in [&dead, &live, &other] {
            std::fs::create_dir_all(d.join("upper/etc")).unwrap();
        }
        super::Store::open(&base).unwrap();
        assert!(!dead.exists(), "the cut removal was not finished");
        assert!(live.exists(), "a removal whose process runs was taken over");
        assert!(other.exists(), "a container's rootfs was removed");
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn the_cached_db_follows_the_file() {
        let base = std::env::temp_dir().join(format!("rsrun-store-db-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let s = super::Store::open(&base).unwrap();
        assert!(s.db().unwrap().images.is_empty());
        let record = |tag: &str| {
            let d = format!("sha256:{}", "a".repeat(64));
            serde_json::json!({"id": d, "repo_tags": [tag], "repo_digests": [], "manifest": d,
                "manifest_blobs": [], "config": d, "layers": [], "size": 1, "user": "",
                "platform": "linux/amd64", "created": 0})
        };
        s.update_db(|db| {
            let r = serde_json::from_value(record("one:1")).unwrap();
            db.images.insert("x".into(), r);
            Ok(())
        })
        .unwrap();
        assert_eq!(s.db().unwrap().images["x"].repo_tags, ["one:1"]);
        // Rewritten by another writer (not through this handle): seen at the next read.
        let other = serde_json::json!({"images": {"x": record("two:2")}});
        std::fs::write(base.join("images.json"), other.to_string()).unwrap();
        assert_eq!(s.db().unwrap().images["x"].repo_tags, ["two:2"]);
        std::fs::write(base.join("images.json"), b"{").unwrap();
        assert!(s.db().is_err(), "a corrupt file is not hidden by the cache");
        std::fs::remove_file(base.join("images.json")).unwrap();
        assert!(s.db().unwrap().images.is_empty());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
