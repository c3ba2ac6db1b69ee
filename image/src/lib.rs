//! rsrun's image store: an OCI distribution client, a crash-safe content store, layer
//! unpacking into overlayfs snapshots, and copy-on-write container root filesystems.
//!
//! The CRI server's ImageService maps onto [`ImageStore`]: PullImage → [`ImageStore::pull`]
//! (blocking: call it from `spawn_blocking`, pass the deadline in [`PullOptions::cancel`]),
//! ListImages → [`ImageStore::list`], ImageStatus → [`ImageStore::get`], RemoveImage →
//! [`ImageStore::remove`], ImageFsInfo → [`ImageStore::fs_info`]; container root
//! filesystems come from [`ImageStore::prepare_rootfs`] / [`ImageStore::remove_rootfs`].

pub mod config;
pub mod digest;
pub mod error;
pub mod manifest;
pub mod mount;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod store;
mod sys;
pub mod text;
pub mod unpack;

pub use config::{AuthFile, Credentials, RegistryConfig};
pub use digest::Digest;
pub use error::{Error, Result};
pub use manifest::Platform;
pub use pull::{LayerEvent, Progress, PullOptions, DEFAULT_PROGRESS_TIMEOUT};
pub use reference::Reference;
pub use registry::Cancel;
pub use store::{ImageRecord, LayerRecord, RootfsRecord, Store, DEFAULT_ROOT};

/// Removes `path` and everything under it (absent is removed) with a bounded number of
/// descriptors, however deep the tree (std's `remove_dir_all` fails with EMFILE on a tree
/// deeper than the open-file limit): what the store uses for snapshots and writable
/// layers, for callers with other trees a container wrote.
pub fn remove_tree(path: &std::path::Path) -> std::io::Result<()> {
    sys::remove_tree(path)
}

use error::IoContext;
use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub struct ImageStore {
    pub(crate) store: Store,
    pub(crate) config: RegistryConfig,
    pub(crate) client: registry::Client,
    /// Bytes and inodes of each layer snapshot, by its directory's name (the layer's
    /// diff_id), device and inode (a snapshot removed and pulled again is walked again): a
    /// snapshot never changes once in place, so `fs_info` (the kubelet's ImageFsInfo, every
    /// few seconds) walks each one once, not every file of every layer on each call.
    snapshot_usage: std::sync::Mutex<std::collections::HashMap<SnapshotKey, (u64, u64)>>,
}

/// A snapshot directory's name, device and inode.
type SnapshotKey = (std::ffi::OsString, u64, u64);

/// What `inspect` shows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Inspection {
    pub image: ImageRecord,
    pub manifest: manifest::Manifest,
    pub config: manifest::ImageConfig,
}

impl Inspection {
    /// The ChainID of the image's layers (the OCI image spec's: the first diff_id, then
    /// `sha256(chain + " " + next diff_id)` for each next), as containerd reports it; None
    /// without layers.
    pub fn chain_id(&self) -> Option<String> {
        use sha2::Digest as _;
        let mut it = self.config.rootfs.diff_ids.iter().map(|d| d.to_string());
        let mut chain = it.next()?;
        for d in it {
            let h = sha2::Sha256::digest(format!("{chain} {d}").as_bytes());
            chain = format!("sha256:{}", digest::hex(&h));
        }
        Some(chain)
    }
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct PruneStats {
    pub blobs_removed: u64,
    pub snapshots_removed: u64,
    pub temp_removed: u64,
    pub bytes_freed: u64,
}

/// Filesystem usage (CRI ImageFsInfo / ContainerFsInfo).
#[derive(Debug, Clone, serde::Serialize)]
pub struct FsUsage {
    pub mountpoint: PathBuf,
    pub used_bytes: u64,
    pub inodes_used: u64,
    pub timestamp_ns: i64,
}

impl ImageStore {
    pub fn open(root: impl Into<PathBuf>, config: RegistryConfig) -> Result<ImageStore> {
        let root = root.into();
        let s = root.to_string_lossy();
        if s.contains(',') || s.contains(':') {
            return Err(Error::InvalidConfig(format!(
                "store root {s:?} must not contain ',' or ':' (overlay options)"
            )));
        }
        Ok(ImageStore {
            store: Store::open(root)?,
            config,
            client: registry::Client::new(),
            snapshot_usage: Default::default(),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn list(&self) -> Result<Vec<ImageRecord>> {
        Ok(self.store.db()?.images.values().cloned().collect())
    }

    /// An image by ID (full, `sha256:`-prefixed or a unique prefix of 12+), tag or repo digest.
    pub fn get(&self, key: &str) -> Result<Option<ImageRecord>> {
        Ok(store::find_image(&*self.store.db()?, key).cloned())
    }

    pub fn inspect(&self, key: &str) -> Result<Inspection> {
        let image = self
            .get(key)?
            .ok_or_else(|| Error::NotFound(format!("image {key}")))?;
        fn parse<T: serde::de::DeserializeOwned>(st: &store::Store, d: &Digest) -> Result<T> {
            let b = st.read_blob(d)?;
            serde_json::from_slice(&b).map_err(|e| Error::CorruptStore {
                path: st.blob_path(d),
                reason: e.to_string(),
            })
        }
        Ok(Inspection {
            manifest: parse(&self.store, &image.manifest)?,
            config: parse(&self.store, &image.config)?,
            image,
        })
    }

    /// Removes by tag (only that tag; the image goes with its last tag), by ID (every tag) or
    /// by repo digest. Returns whether anything was removed; a missing image is not an error.
    pub fn remove(&self, key: &str) -> Result<bool> {
        self.remove_as(key, false)
    }

    /// Removes the image `key` names (a tag, its ID or a repo digest) with all its tags: the
    /// CRI's RemoveImage, as containerd removes it (crictl warns that every tag goes).
    pub fn remove_image(&self, key: &str) -> Result<bool> {
        self.remove_as(key, true)
    }

    fn remove_as(&self, key: &str, whole: bool) -> Result<bool> {
        self.store.update_db(|db| {
            let Some(id) = store::find_image_id(db, key) else {
                return Ok(false);
            };
            let by_tag = Reference::parse(key)
                .ok()
                .filter(|r| !whole && r.digest.is_none())
                .and_then(|r| r.repo_tag());
            let img = db.images.get_mut(&id).expect("found");
            match by_tag {
                Some(t) if img.repo_tags.contains(&t) && img.repo_tags.len() > 1 => {
                    img.repo_tags.retain(|x| *x != t)
                }
                _ => {
                    db.images.remove(&id);
                }
            }
            Ok(true)
        })
    }

    /// Deletes blobs and snapshots that no image and no container rootfs references, and
    /// everything interrupted pulls left behind.
    pub fn prune(&self) -> Result<PruneStats> {
        self.sweep(true)
    }

    /// Deletes the blobs and snapshots that no image and no container rootfs references any
    /// more: what `remove` leaves (as containerd's garbage collector after an image delete).
    /// Unlike `prune`, it leaves the temporary and container directories alone, so it may
    /// run beside a server that removes containers.
    pub fn collect(&self) -> Result<PruneStats> {
        self.sweep(false)
    }

    /// `collect` now if no pull or rootfs preparation is in flight (they hold what a sweep
    /// must wait for), else `None` without waiting.
    pub fn try_collect(&self) -> Result<Option<PruneStats>> {
        match self.store.try_gc_lock_exclusive()? {
            Some(gc) => self.sweep_locked(false, gc).map(Some),
            None => Ok(None),
        }
    }

    fn sweep(&self, everything: bool) -> Result<PruneStats> {
        let gc = self.store.gc_lock_exclusive()?;
        self.sweep_locked(everything, gc)
    }

    fn sweep_locked(&self, everything: bool, _gc: store::FileLock) -> Result<PruneStats> {
        let db = self.store.load_db()?;
        let rootfs = self.store.rootfs_records()?;
        let mut blobs: HashSet<String> = HashSet::new();
        let mut snaps: HashSet<String> = HashSet::new();
        for i in db.images.values() {
            blobs.insert(i.config.hex().to_string());
            blobs.extend(i.manifest_blobs.iter().map(|d| d.hex().to_string()));
            for l in &i.layers {
                blobs.insert(l.digest.hex().to_string());
                snaps.insert(l.diff_id.hex().to_string());
            }
        }
        for r in &rootfs {
            snaps.extend(r.snapshots.iter().map(|d| d.hex().to_string()));
        }
        let mut st = PruneStats::default();
        let root = self.store.root();
        let sweep = |dir: &Path,
                     keep: &dyn Fn(&str) -> bool,
                     count: &mut u64,
                     st_bytes: &mut u64|
         -> Result<()> {
            for e in fs::read_dir(dir).ctx("listing", dir)?.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if keep(&name) {
                    continue;
                }
                let p = e.path();
                let bytes = disk_usage(&p).0;
                let removed = if p.is_dir() {
                    // Out of its name first: a layer snapshot counts as present when its
                    // directory exists, and one half removed (a crash, a removal that
                    // failed part way) would be used as whole by the next pull. The next
                    // sweep of temp entries removes what is left of it.
                    let out = dir.join(format!(".tmp-gc-{name}-{}", std::process::id()));
                    fs::rename(&p, &out).and_then(|()| sys::remove_tree(&out))
                } else {
                    fs::remove_file(&p)
                };
                match removed {
                    Ok(()) => {}
                    // Gone meanwhile (removed by another sweep): nothing freed here.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(Error::io("removing", p, e)),
                }
                *st_bytes += bytes;
                *count += 1;
            }
            Ok(())
        };
        let (mut b, mut s, mut t, mut bytes) = (0, 0, 0, 0);
        sweep(
            &root.join("blobs/sha256"),
            &|n| blobs.contains(n),
            &mut b,
            &mut bytes,
        )?;
        sweep(
            &root.join("snapshots"),
            &|n| snaps.contains(n),
            &mut s,
            &mut bytes,
        )?;
        // Implicit-directory records go with their layers (`Store::put_implicit`).
        sweep(
            &root.join("implicit"),
            &|n| snaps.contains(n),
            &mut 0,
            &mut 0,
        )?;
        if everything {
            sweep(&root.join("ingest"), &|_| false, &mut t, &mut bytes)?;
            sweep(&root.join("tmp"), &|_| false, &mut t, &mut bytes)?;
            sweep(&root.join("locks"), &|_| false, &mut 0, &mut 0)?;
            // Half-created container dirs (no record) that are not mounted.
            let live: HashSet<&str> = rootfs.iter().map(|r| r.id.as_str()).collect();
            sweep(
                &self.store.containers_dir(),
                &|n| {
                    live.contains(n)
                        || mount::is_mounted(&self.store.containers_dir().join(n).join("rootfs"))
                },
                &mut t,
                &mut bytes,
            )?;
        }
        st.blobs_removed = b;
        st.snapshots_removed = s;
        st.temp_removed = t;
        st.bytes_freed = bytes;
        Ok(st)
    }

    /// Image filesystem usage: blobs, snapshots and temp files (CRI ImageFsInfo).
    pub fn fs_info(&self) -> Result<FsUsage> {
        let root = self.store.root();
        let mut seen = HashSet::new();
        let (mut bytes, mut inodes) = (0, 0);
        for d in ["blobs", "ingest", "tmp"] {
            let (b, i) = usage_dedup(&root.join(d), &mut seen);
            bytes += b;
            inodes += i;
        }
        // The snapshots: each one's figures once (they are renamed into place complete and
        // never change); the directory itself and its listing every time.
        let snaps = root.join("snapshots");
        if let Ok(m) = fs::symlink_metadata(&snaps) {
            bytes += m.blocks() * 512;
            inodes += 1;
        }
        let mut cache = self
            .snapshot_usage
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut live = HashSet::new();
        for e in fs::read_dir(&snaps).into_iter().flatten().flatten() {
            let Ok(m) = fs::symlink_metadata(e.path()) else {
                continue; // removed meanwhile
            };
            let key = (e.file_name(), m.dev(), m.ino());
            live.insert(key.clone());
            let (b, i) = *cache
                .entry(key)
                .or_insert_with(|| usage_dedup(&e.path(), &mut HashSet::new()));
            bytes += b;
            inodes += i;
        }
        cache.retain(|k, _| live.contains(k));
        Ok(FsUsage {
            mountpoint: root.to_path_buf(),
            used_bytes: bytes,
            inodes_used: inodes,
            timestamp_ns: now_ns(),
        })
    }

    /// Writable-layer usage of every container rootfs (CRI ContainerFsInfo): each container
    /// directory's `upper`, whatever its record says (one unreadable record must not take the
    /// kubelet's ImageFsInfo, and with it eviction and image GC, down).
    pub fn container_fs_info(&self) -> Result<FsUsage> {
        let mut seen = HashSet::new();
        let (mut bytes, mut inodes) = (0, 0);
        let dir = self.store.containers_dir();
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let (b, i) = usage_dedup(&e.path().join("upper"), &mut seen);
            bytes += b;
            inodes += i;
        }
        Ok(FsUsage {
            mountpoint: self.store.containers_dir(),
            used_bytes: bytes,
            inodes_used: inodes,
            timestamp_ns: now_ns(),
        })
    }

    /// Writable-layer usage of one container's rootfs (CRI ContainerStats.writable_layer).
    pub fn container_usage(&self, container_id: &str) -> Result<FsUsage> {
        let upper = self.container_dir(container_id)?.join("upper");
        let (used_bytes, inodes_used) = usage_dedup(&upper, &mut HashSet::new());
        Ok(FsUsage {
            mountpoint: self.store.containers_dir(),
            used_bytes,
            inodes_used,
            timestamp_ns: now_ns(),
        })
    }

    /// Creates and mounts a container's root filesystem: an overlay of the image's layers with
    /// the container's own upper/work dirs (or read-only without them). Returns the mounted path.
    pub fn prepare_rootfs(
        &self,
        container_id: &str,
        image: &str,
        readonly: bool,
    ) -> Result<PathBuf> {
        let dir = self.container_dir(container_id)?;
        let target = dir.join("rootfs");
        self.prepare_at(container_id, image, readonly, &target, false, None)?;
        Ok(target)
    }

    /// As `prepare_rootfs`, mounted at `target` instead of inside the store, for a
    /// container in a user namespace (`idmap`): root of it but not of the host, it must
    /// reach its rootfs by a path it may walk, and own what host root owns in the image. The
    /// image's layers are then idmapped mounts through that user namespace, and the
    /// writable layer's root belongs to the container's root. The store still keeps the
    /// record and the writable layer; `remove_rootfs` unmounts all of it.
    pub fn prepare_rootfs_at(
        &self,
        container_id: &str,
        image: &str,
        readonly: bool,
        target: &Path,
        idmap: Option<&IdMap>,
    ) -> Result<()> {
        self.prepare_at(container_id, image, readonly, target, false, idmap)
    }

    /// The IDs of every container root filesystem in the store (made by `prepare_rootfs` or
    /// `prepare_rootfs_at`, whether or not its record was completed), for a caller that owns
    /// them to remove those it no longer knows of (after a power loss, say).
    pub fn rootfs_ids(&self) -> Result<Vec<String>> {
        let dir = self.store.containers_dir();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("listing", dir, e)),
        };
        Ok(rd
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| !n.starts_with('.'))
            .collect())
    }

    /// Unmounts and deletes a container's root filesystem; a missing one is not an error.
    pub fn remove_rootfs(&self, container_id: &str) -> Result<()> {
        let dir = self.container_dir(container_id)?;
        let rec: Option<RootfsRecordFile> = fs::read(dir.join("rootfs.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let target = rec
            .and_then(|r| r.mountpoint)
            .unwrap_or_else(|| dir.join("rootfs"));
        if !dir.exists() {
            return Ok(());
        }
        // Only an overlay is ours to unmount there: after a mount that failed, or one undone
        // by hand, the target may be a mount of someone else's (an inspection target is any
        // directory the user named).
        if mount::is_overlay_mount(&target) {
            mount::unmount(&target)?;
        }
        unmount_idmapped_layers(&dir)?;
        // Drop the record last-but-atomically: rename the dir away, then delete it.
        let gone = self
            .store
            .containers_dir()
            .join(format!(".removing-{container_id}-{}", std::process::id()));
        fs::rename(&dir, &gone).ctx("renaming", &dir)?;
        sys::remove_tree(&gone).ctx("removing", &gone)
    }

    /// Mounts an image's root filesystem at `target` for inspection: read-only, or with
    /// `writable` a copy-on-write overlay whose changes stay in the store (dropped on unmount).
    pub fn mount_image(&self, image: &str, target: &Path, writable: bool) -> Result<()> {
        let target = fs::canonicalize(target).ctx("resolving mount point", target)?;
        self.prepare_at(&mount_id(&target), image, !writable, &target, true, None)
    }

    pub fn unmount_image(&self, target: &Path) -> Result<()> {
        let target = fs::canonicalize(target).ctx("resolving mount point", target)?;
        self.remove_rootfs(&mount_id(&target))
    }

    fn container_dir(&self, id: &str) -> Result<PathBuf> {
        let ok = !id.is_empty()
            && id.len() <= 128
            && id != "."
            && id != ".."
            && !id.starts_with('.')
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if !ok {
            return Err(Error::InvalidConfig(format!(
                "container id {id:?} must be 1-128 of [A-Za-z0-9_.-], not starting with '.'"
            )));
        }
        Ok(self.store.containers_dir().join(id))
    }

    fn prepare_at(
        &self,
        id: &str,
        image: &str,
        readonly: bool,
        target: &Path,
        inspect: bool,
        idmap: Option<&IdMap>,
    ) -> Result<()> {
        let dir = self.container_dir(id)?;
        let _gc = self.store.gc_lock_shared(None)?;
        let img = self
            .get(image)?
            .ok_or_else(|| Error::NotFound(format!("image {image}")))?;
        let snapshots: Vec<Digest> = img.layers.iter().map(|l| l.diff_id.clone()).collect();
        for s in &snapshots {
            if !self.store.has_snapshot(s) {
                return Err(Error::NotFound(format!(
                    "layer snapshot {s} of image {image} (pull it again)"
                )));
            }
        }
        if dir.join("rootfs.json").exists() {
            return Err(Error::InvalidConfig(format!("rootfs {id} already exists")));
        }
        fs::create_dir_all(&dir).ctx("creating", &dir)?;
        let rec = RootfsRecordFile {
            record: RootfsRecord {
                id: id.to_string(),
                image: img.id.clone(),
                snapshots: snapshots.clone(),
                readonly,
            },
            mountpoint: Some(target.to_path_buf()),
        };
        self.store.write_atomic(
            &dir.join("rootfs.json"),
            &serde_json::to_vec_pretty(&rec).expect("serializable"),
        )?;
        let res = (|| {
            let lowers: Vec<PathBuf> = snapshots
                .iter()
                .rev()
                .map(|s| self.store.snapshot_path(s))
                .collect();
            let mut lowers = mount::distinct_lowers(lowers);
            // overlayfs wants a lowerdir, and two when there is no upperdir: a read-only
            // rootfs of a one-layer image (an image volume, most often) gets an empty one
            // under its layer, of an image without layers two (distinct: a lowerdir given
            // twice is refused).
            let need = if readonly { 2 } else { 1 };
            for i in lowers.len()..need {
                let empty = dir.join(if i == 0 {
                    "empty".to_string()
                } else {
                    format!("empty-{i}")
                });
                fs::create_dir_all(&empty).ctx("creating", &empty)?;
                lowers.push(empty);
            }
            if let Some(m) = idmap {
                let ns = fs::File::open(&m.userns).ctx("opening user namespace", &m.userns)?;
                for (i, l) in lowers.iter_mut().enumerate() {
                    let at = dir.join(format!("lower-{i}"));
                    fs::create_dir_all(&at).ctx("creating", &at)?;
                    rsrun::sys::bind_idmapped(l, &at, std::os::fd::AsRawFd::as_raw_fd(&ns))
                        .map_err(|e| Error::io("idmapped mount of", l.clone(), e))?;
                    *l = at;
                }
            }
            fs::create_dir_all(target).ctx("creating", target)?;
            if readonly {
                mount::mount_overlay(target, &lowers, None, true, inspect)
            } else {
                let (u, w) = (dir.join("upper"), dir.join("work"));
                fs::create_dir_all(&u).ctx("creating", &u)?;
                fs::create_dir_all(&w).ctx("creating", &w)?;
                // The upper dir's root is the container's `/`: 0755 whatever the umask, or
                // a non-root user of the container could not even reach its own files.
                {
                    use std::os::unix::fs::PermissionsExt;
                    fs::set_permissions(&u, fs::Permissions::from_mode(0o755))
                        .ctx("setting mode of", &u)?;
                }
                if let Some(m) = idmap {
                    std::os::unix::fs::chown(&u, Some(m.uid), Some(m.gid))
                        .ctx("setting the owner of", &u)?;
                }
                mount::mount_overlay(target, &lowers, Some((&u, &w)), false, inspect)
            }
        })();
        if let Err(e) = res {
            // (Nothing is mounted at the target: the overlay's mount is the last step. What
            // may be mounted there is not ours.)
            let _ = unmount_idmapped_layers(&dir);
            let _ = sys::remove_tree(&dir);
            return Err(e);
        }
        Ok(())
    }
}

/// A container's user namespace, for `prepare_rootfs_at`: its nsfs file (e.g. a pinned
/// bind mount of /proc/PID/ns/user) and the host uid and gid of its root.
#[derive(Debug, Clone)]
pub struct IdMap {
    pub userns: PathBuf,
    pub uid: u32,
    pub gid: u32,
}

/// Unmounts the idmapped layer mounts (`lower-N`) of a container's directory.
fn unmount_idmapped_layers(dir: &Path) -> Result<()> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Ok(());
    };
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().starts_with("lower-") {
            mount::unmount(&e.path())?;
        }
    }
    Ok(())
}

#[derive(serde::Serialize, serde::Deserialize)]
struct RootfsRecordFile {
    #[serde(flatten)]
    record: RootfsRecord,
    #[serde(default)]
    mountpoint: Option<PathBuf>,
}

fn mount_id(target: &Path) -> String {
    format!(
        "mnt-{}",
        &Digest::of_bytes(target.as_os_str().as_encoded_bytes()).hex()[..24]
    )
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// (bytes on disk, inodes) under `p`, not following symlinks.
pub(crate) fn disk_usage(p: &Path) -> (u64, u64) {
    usage_dedup(p, &mut HashSet::new())
}

fn usage_dedup(p: &Path, seen: &mut HashSet<(u64, u64)>) -> (u64, u64) {
    let Ok(m) = fs::symlink_metadata(p) else {
        return (0, 0);
    };
    let mut bytes = 0;
    let mut inodes = 0;
    if seen.insert((m.dev(), m.ino())) {
        bytes += m.blocks() * 512;
        inodes += 1;
    }
    if m.is_dir() {
        if let Ok(rd) = fs::read_dir(p) {
            for e in rd.flatten() {
                let (b, i) = usage_dedup(&e.path(), seen);
                bytes += b;
                inodes += i;
            }
        }
    }
    (bytes, inodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_id_of_the_layers() {
        let (a, b, c) = (
            format!("sha256:{}", "a".repeat(64)),
            format!("sha256:{}", "b".repeat(64)),
            format!("sha256:{}", "c".repeat(64)),
        );
        let with = |ids: &[&String]| Inspection {
            image: ImageRecord {
                id: Digest::parse(&a).unwrap(),
                repo_tags: vec![],
                repo_digests: vec![],
                manifest: Digest::parse(&a).unwrap(),
                manifest_blobs: vec![],
                config: Digest::parse(&a).unwrap(),
                layers: vec![],
                size: 0,
                user: String::new(),
                platform: String::new(),
                pinned: false,
                created: 0,
            },
            manifest: serde_json::from_value(serde_json::json!({"schemaVersion": 2,
                "config": {"mediaType": "x", "digest": a, "size": 1}, "layers": []}))
            .unwrap(),
            config: serde_json::from_value(
                serde_json::json!({"rootfs": {"type": "layers", "diff_ids": ids}}),
            )
            .unwrap(),
        };
        assert_eq!(with(&[]).chain_id(), None);
        assert_eq!(with(&[&a]).chain_id().as_deref(), Some(a.as_str()));
        // Computed apart (Python's hashlib) from the image spec's definition.
        assert_eq!(
            with(&[&a, &b]).chain_id().unwrap(),
            "sha256:ccd722928bd92476ba1745586fed6e45a102504185ad88cd89e01ff116fd146c"
        );
        assert_eq!(
            with(&[&a, &b, &c]).chain_id().unwrap(),
            "sha256:c1377126441fb2f5ec2c21ae2a60255331d639e830f0ee1b40a36e52d4c40588"
        );
    }
}
