//! The runtime's record of each container: `<root>/<id>/state.json` plus the exec socket
//! the waiting init process listens on until `start`.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Context, Error, Result};

pub const DEFAULT_ROOT: &str = "/run/rsrun";
const STATE_FILE: &str = "state.json";
const INTENT_FILE: &str = "intent.json";
pub const EXEC_SOCKET: &str = "exec.sock";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `create` records for later commands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Saved {
    pub oci_version: String,
    pub id: String,
    pub pid: i32,
    /// Start time of `pid` in clock ticks, to tell it from a later process with the same PID.
    pub start_time: u64,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    pub owner: u32,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    #[serde(default)]
    pub hooks: Option<oci_spec::runtime::Hooks>,
    /// The container's cgroup directories, one per hierarchy.
    #[serde(default)]
    pub cgroup_paths: Vec<PathBuf>,
    /// The namespace files of the container's init, by type (for joining later).
    #[serde(default)]
    pub namespaces: Vec<(String, PathBuf)>,
    /// The config's `process` as of create (the default for `exec`: the bundle may change
    /// after create).
    #[serde(default)]
    pub process: Option<oci_spec::runtime::Process>,
    /// The config's `linux.seccomp` as of create (loaded into `exec`'d processes too).
    #[serde(default)]
    pub seccomp: Option<oci_spec::runtime::LinuxSeccomp>,
    /// The config's `linux.personality` as of create (`exec`'d processes get it too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub personality: Option<oci_spec::runtime::LinuxPersonality>,
    /// The cgroup directories create made (the only ones delete removes). None in state
    /// written before ownership was recorded: then every path counts as owned.
    #[serde(default)]
    pub cgroup_owned: Option<Vec<PathBuf>>,
    /// The systemd scope that holds the cgroup (`--systemd-cgroup`), stopped on delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub systemd_unit: Option<String>,
}

/// What `create` records before it makes anything, and completes as it goes: whatever a
/// create killed at any point leaves behind, `delete --force` finds here.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Intent {
    pub id: String,
    /// The `create` process (PID, start time): while it lives the container is "creating".
    pub creator: (i32, u64),
    /// The cgroup directories the container uses, and those create makes (removed later).
    pub cgroup_paths: Vec<PathBuf>,
    pub cgroup_owned: Vec<PathBuf>,
    /// The claim on the cgroup path (see `claim_cgroup`).
    pub claim: Option<PathBuf>,
    /// The init (PID, start time) as soon as it exists.
    pub pid: i32,
    pub start_time: u64,
    /// The systemd scope about to be created (`--systemd-cgroup`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub systemd_unit: Option<String>,
}

impl Intent {
    /// Whether the `create` that wrote this is still running.
    pub fn creator_alive(&self) -> bool {
        let (pid, t) = self.creator;
        pid > 0 && crate::sys::process_start_time(pid).is_ok_and(|s| s == t)
    }

    /// A stand-in for state.json when it was never written (or was lost): enough for `list`,
    /// `state` and `delete --force`.
    pub fn as_saved(&self) -> Saved {
        Saved {
            oci_version: "1.2.0".into(),
            id: self.id.clone(),
            pid: self.pid,
            start_time: self.start_time,
            bundle: PathBuf::new(),
            rootfs: PathBuf::new(),
            created: String::new(),
            owner: 0,
            annotations: HashMap::new(),
            hooks: None,
            cgroup_paths: self.cgroup_paths.clone(),
            namespaces: Vec::new(),
            process: None,
            seccomp: None,
            personality: None,
            cgroup_owned: Some(self.cgroup_owned.clone()),
            systemd_unit: self.systemd_unit.clone(),
        }
    }
}

/// The directory of cgroup claims under the state root: one symlink per cgroup in use,
/// named after its path, pointing at the container ID. `@` cannot start an ID.
const CLAIMS: &str = "@cgroups";

/// Where the claim on the cgroup `path` lives under `root` (recorded before it is made).
pub fn claim_path(root: &Path, path: &Path) -> PathBuf {
    let name = format!("{:016x}", fnv1a(path.as_os_str().as_encoded_bytes()));
    root.join(CLAIMS).join(name)
}

/// Claims the cgroup `path` for container `id` (the symlink `claim`, made atomically).
/// A claim held by another container that still has a state directory under `root` is
/// refused: two containers in one cgroup would kill each other's processes on delete.
pub fn claim_cgroup(root: &Path, claim: &Path, path: &Path, id: &str) -> Result<()> {
    let dir = root.join(CLAIMS);
    for _ in 0..5 {
        match std::os::unix::fs::symlink(id, claim) {
            Ok(()) => return Ok(()),
            // No claims directory (none yet, or the last claim was just released).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Err(e) = std::fs::create_dir(&dir) {
                    if e.kind() != std::io::ErrorKind::AlreadyExists {
                        return Err(Error::os(format!("create {}", dir.display()), e));
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let owner = std::fs::read_link(claim).unwrap_or_default();
                let owner = owner.to_string_lossy();
                if owner != id && !owner.is_empty() && root.join(owner.as_ref()).is_dir() {
                    return Err(Error::Invalid(format!(
                        "cgroup {} is in use by container {owner}: a container needs a cgroup of its own",
                        path.display()
                    )));
                }
                // A claim left by a container that is gone (or by an earlier try of ours).
                let _ = std::fs::remove_file(claim);
            }
            Err(e) => return Err(Error::os(format!("claim {}", claim.display()), e)),
        }
    }
    Err(Error::Invalid(format!(
        "cgroup {}: could not claim it ({})",
        path.display(),
        claim.display()
    )))
}

/// Drops a claim if it is still ours.
pub fn release_claim(claim: &Path, id: &str) {
    if std::fs::read_link(claim).is_ok_and(|o| o.as_os_str() == id) {
        let _ = std::fs::remove_file(claim);
        // The directory goes with its last claim (a concurrent claimer recreates it).
        if let Some(dir) = claim.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// FNV-1a, 64 bits: a stable name for a claim (the same in every build).
fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The state directory of one container.
pub struct ContainerDir {
    pub id: String,
    pub path: PathBuf,
}

impl ContainerDir {
    pub fn new(root: &Path, id: &str) -> Result<Self> {
        crate::config::validate_id(id)?;
        Ok(ContainerDir {
            id: id.to_string(),
            path: root.join(id),
        })
    }

    /// Creates the directory; fails if a container with this ID exists.
    pub fn create(&self) -> Result<()> {
        let root = self.path.parent().unwrap_or(Path::new("/"));
        if !root.exists() {
            // The state holds each container's environment (often secrets): root only.
            std::fs::create_dir_all(root)
                .with_ctx(|| format!("create state root {}", root.display()))?;
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700));
        }
        match std::fs::create_dir(&self.path) {
            Ok(()) => {
                use std::os::unix::fs::PermissionsExt;
                let _ =
                    std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o711));
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(Error::Exists(self.id.clone()))
            }
            Err(e) => Err(Error::os(
                format!("create state dir {}", self.path.display()),
                e,
            )),
        }
    }

    pub fn exists(&self) -> bool {
        self.path.is_dir()
    }

    pub fn exec_socket(&self) -> PathBuf {
        self.path.join(EXEC_SOCKET)
    }

    /// Writes state.json atomically.
    pub fn save(&self, saved: &Saved) -> Result<()> {
        let data =
            serde_json::to_vec(saved).map_err(|e| Error::Invalid(format!("encode state: {e}")))?;
        self.write_atomic(STATE_FILE, &data)
    }

    /// Writes the preliminary record (see `Intent`) atomically.
    pub fn save_intent(&self, intent: &Intent) -> Result<()> {
        let data = serde_json::to_vec(intent)
            .map_err(|e| Error::Invalid(format!("encode {INTENT_FILE}: {e}")))?;
        self.write_atomic(INTENT_FILE, &data)
    }

    /// Reads the preliminary record, if there is a readable one.
    pub fn load_intent(&self) -> Option<Intent> {
        let data = std::fs::read(self.path.join(INTENT_FILE)).ok()?;
        serde_json::from_slice(&data).ok()
    }

    /// A fresh temporary file (mode 0600: state holds the container's environment),
    /// written, then renamed over `name`.
    fn write_atomic(&self, name: &str, data: &[u8]) -> Result<()> {
        let tmp = self.path.join(format!(".{name}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        let mut f = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .with_ctx(|| format!("write {}", tmp.display()))?
        };
        // No fsync: what these files describe (processes, cgroups, mounts) does not survive
        // a machine crash either, and a file torn by one is handled (`delete --force` falls
        // back from state.json to intent.json, then to removing the directory). A killed
        // rsrun cannot tear them: the rename is atomic and the page cache outlives it.
        f.write_all(data)
            .with_ctx(|| format!("write {}", tmp.display()))?;
        drop(f);
        let dst = self.path.join(name);
        std::fs::rename(&tmp, &dst)
            .with_ctx(|| format!("rename {} to {}", tmp.display(), dst.display()))
    }

    /// Reads state.json. `Ok(None)` while the container is still being created.
    pub fn load(&self) -> Result<Option<Saved>> {
        if !self.exists() {
            return Err(Error::NotFound(self.id.clone()));
        }
        let p = self.path.join(STATE_FILE);
        match std::fs::read(&p) {
            Ok(data) => serde_json::from_slice(&data)
                .map(Some)
                .map_err(|e| Error::Invalid(format!("corrupt state file {}: {e}", p.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::os(format!("read {}", p.display()), e)),
        }
    }

    pub fn remove(&self) -> Result<()> {
        match std::fs::remove_dir_all(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::os(
                format!("remove state dir {}", self.path.display()),
                e,
            )),
        }
    }
}

impl Saved {
    /// Whether the init process recorded here is still alive (and not a zombie).
    pub fn alive(&self) -> bool {
        if self.pid <= 0 {
            return false;
        }
        match crate::sys::process_start_time(self.pid) {
            Ok(t) if t == self.start_time => !matches!(
                crate::sys::process_state(self.pid),
                Ok('Z') | Ok('X') | Err(_)
            ),
            _ => false,
        }
    }

    pub fn status(&self, dir: &ContainerDir) -> Status {
        if !self.alive() {
            return Status::Stopped;
        }
        // Frozen first: a created container can be paused too (runc's order).
        if crate::cgroups::is_frozen(&self.cgroup_paths) {
            return Status::Paused;
        }
        if dir.exec_socket().exists() {
            return Status::Created;
        }
        Status::Running
    }

    /// The state as the runtime spec defines it (for `state` and for hooks).
    pub fn spec_state(&self, status: Status) -> serde_json::Value {
        let mut v = serde_json::json!({
            "ociVersion": self.oci_version,
            "id": self.id,
            "status": status.as_str(),
            "bundle": self.bundle,
        });
        if status != Status::Stopped {
            v["pid"] = self.pid.into();
        }
        if !self.annotations.is_empty() {
            v["annotations"] = serde_json::to_value(&self.annotations).unwrap_or_default();
        }
        v
    }
}

/// The temporary file `write_file_atomic` writes `path` through (`.NAME.tmp` beside it): a
/// writer killed midway leaves it.
pub fn atomic_temp(path: &Path) -> std::path::PathBuf {
    path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy()
    ))
}

/// The file a `Reserved` record of `path` waits in (`.NAME.reserved` beside it): a writer
/// killed before its commit leaves it.
pub fn reserved_temp(path: &Path) -> std::path::PathBuf {
    path.with_file_name(format!(
        ".{}.reserved",
        path.file_name().unwrap_or_default().to_string_lossy()
    ))
}

/// A record whose disk space is taken now, to be written later whatever the disk's state
/// then: an exit record must not be lost because the container filled the disk meanwhile.
/// Its blocks are allocated at once (fallocate); `commit` writes into them, shrinks the file
/// to the data, and renames it over `path` (atomic and durable, as `write_file_atomic`).
pub struct Reserved {
    file: std::fs::File,
    tmp: std::path::PathBuf,
    path: std::path::PathBuf,
}

impl Reserved {
    /// The space `new` takes; a larger record is written without it.
    pub const SIZE: u64 = 64 * 1024;

    pub fn new(path: &Path) -> Result<Reserved> {
        let tmp = reserved_temp(path);
        let _ = std::fs::remove_file(&tmp);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .with_ctx(|| format!("reserve {}", tmp.display()))?;
        let taken = nix::fcntl::fallocate(
            &file,
            nix::fcntl::FallocateFlags::empty(),
            0,
            Self::SIZE as libc::off_t,
        );
        if let Err(e) = taken {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::os(format!("reserve {}", tmp.display()), e));
        }
        Ok(Reserved {
            file,
            tmp,
            path: path.to_path_buf(),
        })
    }

    /// Writes `data` as the record; on any failure, removes the reservation and tries
    /// `write_file_atomic` instead.
    pub fn commit(self, data: &[u8]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let into_reserved = || -> std::io::Result<()> {
            if data.len() as u64 > Self::SIZE {
                return Err(std::io::Error::other("larger than the reservation"));
            }
            self.file.write_all_at(data, 0)?;
            self.file.set_len(data.len() as u64)?;
            self.file.sync_all()?;
            std::fs::rename(&self.tmp, &self.path)?;
            if let Some(dir) = self.path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        if into_reserved().is_ok() {
            return Ok(());
        }
        let _ = std::fs::remove_file(&self.tmp);
        write_file_atomic(&self.path, data, true)
    }
}

impl Drop for Reserved {
    /// A reservation never committed (its writer failed first) is not left behind; after a
    /// commit there is nothing left under its name.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// Writes `data` to `path` atomically: a fresh temporary file beside it (never through a
/// symlink planted under that name), then a rename. With `durable`, the file and the
/// directory are fsynced too (for files on disk that a crash must not empty).
pub fn write_file_atomic(path: &Path, data: &[u8], durable: bool) -> Result<()> {
    let tmp = atomic_temp(path);
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .with_ctx(|| format!("write {}", tmp.display()))?;
    f.write_all(data)
        .and_then(|_| if durable { f.sync_all() } else { Ok(()) })
        .with_ctx(|| format!("write {}", tmp.display()))?;
    drop(f);
    std::fs::rename(&tmp, path)
        .with_ctx(|| format!("rename {} to {}", tmp.display(), path.display()))?;
    if durable {
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .with_ctx(|| format!("fsync {}", dir.display()))?;
        }
    }
    Ok(())
}

/// Every container ID under `root`.
pub fn list_ids(root: &Path) -> Result<Vec<String>> {
    let rd = match std::fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::os(format!("read {}", root.display()), e)),
    };
    let mut ids: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|id| crate::config::validate_id(id).is_ok())
        .collect();
    ids.sort();
    Ok(ids)
}

/// Current time as RFC 3339 with nanoseconds, UTC.
pub fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs() as i64, d.subsec_nanos())
}

pub fn rfc3339(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339() {
        assert_eq!(super::rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            super::rfc3339(1_700_000_000, 5),
            "2023-11-14T22:13:20.000000005Z"
        );
        assert_eq!(
            super::rfc3339(951_782_400, 0),
            "2000-02-29T00:00:00.000000000Z"
        );
    }
}
