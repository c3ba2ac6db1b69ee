//! What the server knows, kept as one JSON file per object under `ROOT/cri/` (written
//! atomically: temporary file, fsync, rename, directory fsync) and in memory. A record is
//! written before the object is made and completed after, so a server killed in between finds
//! it at start and can finish or undo the work.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct SandboxRecord {
    /// The pod-level resources and overhead the kubelet declared (RunPodSandbox, then each
    /// UpdatePodSandboxResources), as OCI `linux.resources`. The kubelet owns the pod's cgroup
    /// (its cgroup_parent) and sets these limits there itself; they are kept and reported
    /// (verbose PodSandboxStatus), not applied again.
    #[serde(default)]
    pub resources: Option<serde_json::Value>,
    #[serde(default)]
    pub overhead: Option<serde_json::Value>,
    pub id: String,
    pub name: String,
    pub uid: String,
    pub namespace: String,
    pub attempt: u32,
    pub created_at: i64,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
    pub hostname: String,
    pub log_directory: String,
    pub cgroup_parent: String,
    /// Where the pod's network, IPC and UTS namespaces are pinned (bind mounts).
    pub ns_dir: PathBuf,
    /// False once stopped.
    pub ready: bool,
    /// Set once the namespaces exist (a record without it was interrupted).
    pub complete: bool,
    /// The pause container (PID 1 of the pod's PID namespace), when the pod shares one.
    #[serde(default)]
    pub pause_id: String,
    /// The pod's CNI attachment: the network list from the start of RunPodSandbox (before its
    /// ADD, with no result), then the ADD's result too; absent on the host's network, or once
    /// a DEL has detached it.
    #[serde(default)]
    pub network: Option<crate::network::Attachment>,
    /// What the pod asked for hostPort (the CNI portmap plugin's runtime config).
    #[serde(default)]
    pub port_mappings: Vec<(i32, i32, i32, String)>,
    #[serde(default)]
    pub host_network: bool,
    #[serde(default)]
    pub host_ipc: bool,
    /// The containers share the pause's PID namespace.
    #[serde(default)]
    pub pid_shared: bool,
    /// The containers run in the node's PID namespace (hostPID).
    #[serde(default)]
    pub host_pid: bool,
    /// The pod's user namespace, made by its pause container.
    #[serde(default)]
    pub userns: Option<crate::sandbox::UserNs>,
    /// The pod's namespaced sysctls (dotted names), written once its network is attached.
    #[serde(default)]
    pub sysctls: Vec<(String, String)>,
    /// Whether the pod was run privileged (RunPodSandbox's
    /// linux.security_context.privileged): only then may its containers be. None in
    /// records written before it was kept.
    #[serde(default)]
    pub privileged: Option<bool>,
    /// The CNI `dns` capability's runtime config, from the pod's DNSConfig (servers,
    /// searches, options), as containerd passes it at ADD and DEL. None without a DNSConfig
    /// (and in records written before it was kept).
    #[serde(default)]
    pub cni_dns: Option<serde_json::Value>,
}

impl SandboxRecord {
    /// Whether the pod's containers share one PID namespace (the pause's). Records written
    /// before `pid_shared` existed had a pause only for that.
    pub fn shares_pid(&self) -> bool {
        self.pid_shared || (!self.pause_id.is_empty() && self.userns.is_none())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ContainerRecord {
    pub id: String,
    pub sandbox_id: String,
    pub name: String,
    pub attempt: u32,
    pub created_at: i64,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
    /// The image as asked, and its ID.
    pub image: String,
    pub image_ref: String,
    pub log_path: String,
    pub bundle: PathBuf,
    /// rsrun-shim's directory (control and attach sockets, shim.pid).
    pub shim_dir: PathBuf,
    pub exit_file: PathBuf,
    pub pid: i32,
    pub started_at: i64,
    pub mounts: Vec<MountRecord>,
    /// The container's limits as OCI `linux.resources` (at create, then each update).
    #[serde(default)]
    pub resources: Option<serde_json::Value>,
    /// The first process's uid, gid and supplementary groups.
    #[serde(default)]
    pub user: Option<(u32, u32, Vec<u32>)>,
    /// Set once the container is created (its record, rootfs and bundle complete).
    pub complete: bool,
    /// Created, with its shim and the runtime's create still to run (at StartContainer, as
    /// containerd makes the task only at start); the stdio settings wait here until then.
    #[serde(default)]
    pub deferred: Option<Stdio>,
    /// The image's STOPSIGNAL, which StopContainer sends before SIGKILL (none: SIGTERM).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stop_signal: String,
    /// The image's repo digest (`repo@sha256:...` of its manifest) at create, for
    /// ContainerStatus.image_ref (the kubelet's imageID of the container); none when pulled
    /// by no digest-bearing name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub repo_digest: String,
    /// The image's repo tag at create (the one asked for, else another), for
    /// ContainerStatus.image; none when the image has no tag.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub repo_tag: String,
    /// Pid mode TARGET: the target's PID and its PID namespace's inode at create, checked
    /// again at start (the runtime joins `/proc/PID/ns/pid` then: a PID reused meanwhile
    /// must not give another process's namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_pid_ns: Option<(i32, u64)>,
    /// linux.resources.oom_score_adj at create (the process's), for ContainerStatus.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub oom_score_adj: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// A container's stdio settings from its CRI config.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct Stdio {
    pub tty: bool,
    pub stdin: bool,
    pub stdin_once: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct MountRecord {
    pub container_path: String,
    pub host_path: String,
    pub readonly: bool,
    pub propagation: i32,
    #[serde(default)]
    pub recursive_read_only: bool,
    /// An image volume: the image as asked (its snapshot is `<container>-image-<index>`).
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub image_ref: String,
}

/// Records of one kind in one directory.
pub struct Table<T> {
    dir: PathBuf,
    pub items: HashMap<String, T>,
}

impl<T: Serialize + DeserializeOwned + Clone> Table<T> {
    pub fn open(dir: PathBuf) -> std::io::Result<Table<T>> {
        std::fs::create_dir_all(&dir)?;
        let mut items = HashMap::new();
        for e in std::fs::read_dir(&dir)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            // A record's temporary file (`.ID.json.tmp`): a server killed while writing it.
            // The server is its table's only writer (the root is locked), and the first
            // write of a record comes before the object it describes: nothing else refers
            // to it.
            if name.starts_with('.') && name.ends_with(".json.tmp") {
                match std::fs::remove_file(e.path()) {
                    Ok(()) => {
                        tracing::warn!(path = %e.path().display(), "removed a record a killed server had not finished writing")
                    }
                    Err(err) => {
                        tracing::error!(path = %e.path().display(), "remove an unfinished record: {err}")
                    }
                }
                continue;
            }
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            match std::fs::read(e.path())
                .ok()
                .and_then(|d| serde_json::from_slice::<T>(&d).ok())
            {
                Some(r) => {
                    items.insert(id.to_string(), r);
                }
                None => tracing::warn!(path = %e.path().display(), "unreadable record skipped"),
            }
        }
        Ok(Table { dir, items })
    }

    /// The IDs of every record file, readable or not (a record that does not parse is
    /// skipped by `open`, but its object is still the server's).
    pub fn file_ids(&self) -> std::io::Result<std::collections::HashSet<String>> {
        let mut ids = std::collections::HashSet::new();
        for e in std::fs::read_dir(&self.dir)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".json").filter(|i| !i.starts_with('.')) {
                ids.insert(id.to_string());
            }
        }
        Ok(ids)
    }

    pub fn put(&mut self, id: &str, r: T) -> std::io::Result<()> {
        write_atomic(
            &self.dir.join(format!("{id}.json")),
            &serde_json::to_vec(&r)?,
        )?;
        self.items.insert(id.to_string(), r);
        Ok(())
    }

    /// Writes a new record atomically but without fsync, for an object whose every
    /// persistent part its owner can find without the record: a container (its rootfs and
    /// image volumes are in the image store under its ID; recovery removes those no record
    /// names, `Runtime::sweep_rootfs`). A kill of the server loses nothing; a power loss may
    /// lose the record, and the container with it, which a power loss ends anyway.
    pub fn put_volatile(&mut self, id: &str, r: T) -> std::io::Result<()> {
        self.update(id, r)
    }

    /// Rewrites a record that is already on disk, atomically but without fsync. Only the
    /// first write of a record, made before the object it describes, must survive a power
    /// loss (that is what recovery undoes); an update lost with the page cache leaves that
    /// earlier version, which recovery handles as it handles the objects a power loss ended
    /// anyway (an incomplete container is undone, a pod found without its pause is not
    /// ready). A kill of the server loses nothing: the page cache stays. Each fsync pair
    /// costs about 0.6 ms here, a CreateContainer made two of them.
    pub fn update(&mut self, id: &str, r: T) -> std::io::Result<()> {
        rsrun::state::write_file_atomic(
            &self.dir.join(format!("{id}.json")),
            &serde_json::to_vec(&r)?,
            false,
        )
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        self.items.insert(id.to_string(), r);
        Ok(())
    }

    pub fn remove(&mut self, id: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.dir.join(format!("{id}.json"))) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.items.remove(id);
        Ok(())
    }
}

fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    rsrun::state::write_file_atomic(path, data, true)
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// A new object ID: 64 hex digits from the kernel's random source.
pub fn new_id() -> String {
    use std::io::Read;
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("read /dev/urandom");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Whether `s` has the form of the IDs `new_id` gives (64 lowercase hex digits).
pub fn is_object_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Nanoseconds since the epoch (CRI timestamps).
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// RFC 3339 (as the shim writes it) to nanoseconds since the epoch.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    // YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[10] != b'T' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (h, mi, se) = (n(11..13)?, n(14..16)?, n(17..19)?);
    let frac = s
        .get(20..)
        .map(|f| f.trim_end_matches('Z'))
        .filter(|f| !f.is_empty());
    let nanos = match frac {
        Some(f) => format!("{f:0<9}").get(..9)?.parse::<i64>().ok()?,
        None => 0,
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some((days * 86400 + h * 3600 + mi * 60 + se) * 1_000_000_000 + nanos)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_round_trip() {
        for (secs, nanos) in [(0i64, 0u32), (1_700_000_000, 5), (951_782_400, 999_999_999)] {
            let s = rsrun::state::rfc3339(secs, nanos);
            assert_eq!(
                super::parse_rfc3339(&s),
                Some(secs * 1_000_000_000 + nanos as i64),
                "{s}"
            );
        }
        assert_eq!(super::parse_rfc3339("nope"), None);
    }

    /// A record's temporary file left by a server killed while writing it is removed when
    /// the table opens (kill9.sh found one left behind); records stay.
    #[test]
    fn an_unfinished_record_is_removed_on_open() {
        let dir = std::env::temp_dir().join(format!("rsrun-cri-table-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut t = super::Table::<serde_json::Value>::open(dir.clone()).unwrap();
        let (a, b) = (super::new_id(), super::new_id());
        t.put(&a, serde_json::json!({"id": a})).unwrap();
        let tmp = dir.join(format!(".{b}.json.tmp"));
        std::fs::write(&tmp, b"{\"id\": \"").unwrap();
        let t = super::Table::<serde_json::Value>::open(dir.clone()).unwrap();
        assert!(!tmp.exists(), "the unfinished record is still there");
        assert_eq!(t.items.keys().collect::<Vec<_>>(), [&a]);
        assert!(dir.join(format!("{a}.json")).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn object_ids() {
        let id = super::new_id();
        assert!(super::is_object_id(&id), "{id}");
        assert_ne!(id, super::new_id());
        for bad in [
            "",
            "abc",
            &id[1..],
            &id.to_uppercase(),
            &format!("{id}-image-0"),
        ] {
            assert!(!super::is_object_id(bad), "{bad}");
        }
    }
}
