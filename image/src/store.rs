//! The on-disk store: content-addressed blobs, unpacked layer snapshots, image records and
//! container rootfs records, all made visible by rename after their content is complete and
//! (for blobs and records) fsynced.
//!
//! ```text
//! ROOT/gc.lock                     shared by pulls and rootfs preparation, exclusive by prune
//! ROOT/meta.lock                   serializes read-modify-write of images.json
//! ROOT/images.json                 image records (atomically replaced)
//! ROOT/blobs/sha256/HEX            verified blobs (manifests, configs, compressed layers)
//! ROOT/ingest/HEX.PID.N            blobs being downloaded
//! ROOT/locks/HEX                   per-digest flock files: one download/unpack at a time
//! ROOT/snapshots/DIFFIDHEX/        an unpacked layer (overlay lowerdir)
//! ROOT/snapshots/.tmp-HEX.PID.N/   a layer being unpacked
//! ROOT/containers/ID/              a container rootfs: rootfs.json, upper/, work/, rootfs/
//! ```

use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::registry::Cancel;
use crate::sys;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub const DEFAULT_ROOT: &str = "/var/lib/rsrun/images";

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
}

/// An flock held on a file; released on drop (or when the process dies).
pub struct FileLock {
    _f: File,
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
            "containers",
        ] {
            let p = root.join(d);
            fs::create_dir_all(&p).ctx("creating store directory", &p)?;
            fs::set_permissions(&p, fs::Permissions::from_mode(0o700))
                .ctx("setting mode of", &p)?;
        }
        Ok(Store {
            root,
            fsync: std::env::var_os("RSRUN_IMAGE_NO_FSYNC").is_none(),
            seq: AtomicU64::new(0),
        })
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
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .ctx("opening lock", path)?;
        loop {
            match sys::flock(f.as_fd(), exclusive, cancel.is_some()) {
                Ok(()) => return Ok(FileLock { _f: f }),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if let Some(c) = cancel {
                        c.check(what)?;
                    }
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

    /// One download / unpack of a digest at a time, across threads and processes.
    pub fn lock_digest(&self, d: &Digest, cancel: &Cancel) -> Result<FileLock> {
        self.lock_file(
            &self.root.join("locks").join(d.hex()),
            true,
            Some(cancel),
            &format!("waiting for {} in another pull", d.short()),
        )
    }

    /// Removes temp files and directories a killed pull left for this digest. Call with the
    /// digest's lock held.
    pub fn clean_stale(&self, d: &Digest) {
        let hex = d.hex();
        for (dir, prefix) in [
            ("ingest", format!("{hex}.")),
            ("snapshots", format!(".tmp-{hex}.")),
        ] {
            let dir = self.root.join(dir);
            if let Ok(rd) = fs::read_dir(&dir) {
                for e in rd.flatten() {
                    if e.file_name().to_string_lossy().starts_with(&prefix) {
                        let p = e.path();
                        let _ = if p.is_dir() {
                            fs::remove_dir_all(&p)
                        } else {
                            fs::remove_file(&p)
                        };
                    }
                }
            }
        }
    }

    /// A new temp file for a blob being downloaded.
    pub fn ingest_file(&self, d: &Digest) -> Result<(File, PathBuf)> {
        let p = self
            .root
            .join("ingest")
            .join(format!("{}.{}", d.hex(), self.unique()));
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
            .ctx("creating", &p)?;
        Ok((f, p))
    }

    /// Makes a verified temp blob visible under its digest.
    pub fn commit_blob(&self, tmp: &Path, file: File, d: &Digest) -> Result<()> {
        if self.fsync {
            file.sync_all().ctx("fsync", tmp)?;
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

    /// A new temp directory to unpack a layer into.
    pub fn snapshot_tmp(&self, diff_id: &Digest) -> Result<PathBuf> {
        let p =
            self.root
                .join("snapshots")
                .join(format!(".tmp-{}.{}", diff_id.hex(), self.unique()));
        fs::create_dir(&p).ctx("creating", &p)?;
        Ok(p)
    }

    /// Makes an unpacked, verified layer visible: its data is flushed (syncfs) first so that a
    /// crash cannot leave a visible but partly written snapshot.
    pub fn commit_snapshot(&self, tmp: &Path, diff_id: &Digest) -> Result<()> {
        if self.fsync {
            let f = File::open(tmp).ctx("opening", tmp)?;
            sys::syncfs(f.as_fd()).map_err(|e| Error::io("syncfs", tmp, e))?;
        }
        let dst = self.snapshot_path(diff_id);
        fs::rename(tmp, &dst).ctx("renaming snapshot into place", &dst)?;
        self.sync_dir(&self.root.join("snapshots"))
    }

    fn sync_dir(&self, dir: &Path) -> Result<()> {
        if self.fsync {
            File::open(dir)
                .and_then(|f| f.sync_all())
                .ctx("fsync", dir)?;
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

    pub fn load_db(&self) -> Result<Db> {
        let p = self.root.join("images.json");
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::CorruptStore {
                path: p,
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Db::default()),
            Err(e) => Err(Error::io("reading", p, e)),
        }
    }

    /// Read-modify-write of the image records under the metadata lock.
    pub fn update_db<T>(&self, f: impl FnOnce(&mut Db) -> Result<T>) -> Result<T> {
        let _l = self.lock_file(&self.root.join("meta.lock"), true, None, "")?;
        let mut db = self.load_db()?;
        let out = f(&mut db)?;
        let bytes = serde_json::to_vec_pretty(&db).expect("serializable");
        self.write_atomic(&self.root.join("images.json"), &bytes)?;
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

/// Finds an image by full/short ID, `sha256:` ID, tag, or repo digest (normalized).
pub fn find_image<'a>(db: &'a Db, key: &str) -> Option<&'a ImageRecord> {
    find_image_id(db, key).and_then(|id| db.images.get(&id))
}

pub(crate) fn find_image_id(db: &Db, key: &str) -> Option<String> {
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
    let r = crate::reference::Reference::parse(key).ok()?;
    let (tag, digest) = (r.repo_tag(), r.digest.as_ref().map(|d| r.repo_digest(d)));
    db.images
        .values()
        .find(|i| match &digest {
            Some(d) => i.repo_digests.contains(d),
            None => tag.as_ref().is_some_and(|t| i.repo_tags.contains(t)),
        })
        .map(|i| i.id.to_string())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

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
}
