//! Cgroup placement: the container's cgroup is created from `linux.cgroupsPath` in every
//! mounted hierarchy (cgroup v1 controllers, the hybrid layout's unified mount, or the one
//! cgroup v2 hierarchy), the init process is moved into it, and it is removed on delete.
//!
//! `Manager` applies `linux.resources` and runs the live operations (update, freeze, stats,
//! OOM counts, kill) through `v1` (one directory per controller; the hybrid layout's
//! unified mount beside them) or `v2` (one directory; device rules as an eBPF program).

pub mod devices;
pub mod systemd;
pub mod v1;
pub mod v2;

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::LinuxResources;

use crate::error::{Context, Error, Result};

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone)]
pub struct Hierarchy {
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    /// The cgroup path that the mount's root shows (usually "/").
    pub root: String,
    /// Controllers (v1), e.g. ["cpu", "cpuacct"] or ["name=systemd"]; empty for v2.
    pub controllers: Vec<String>,
    pub v2: bool,
}

/// The kernel's cgroup v1 controllers (its cgroup_subsys list).
const V1_CONTROLLERS: &[&str] = &[
    "cpuset",
    "cpu",
    "cpuacct",
    "blkio",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "perf_event",
    "net_prio",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
    "debug",
];

/// Every cgroup hierarchy mounted in this mount namespace.
pub fn hierarchies() -> Result<Vec<Hierarchy>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ctx("read /proc/self/mountinfo")?;
    Ok(parse_mountinfo(&info))
}

pub fn parse_mountinfo(info: &str) -> Vec<Hierarchy> {
    let mut out: Vec<Hierarchy> = Vec::new();
    for line in info.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if pre.len() < 5 || post.len() < 3 {
            continue;
        }
        let fstype = post[0];
        if fstype != "cgroup" && fstype != "cgroup2" {
            continue;
        }
        let mountpoint = PathBuf::from(unescape(pre[4]));
        if out.iter().any(|h| h.mountpoint == mountpoint) {
            continue;
        }
        let controllers = if fstype == "cgroup" {
            // Only controller names and `name=`: the rest of the options (rw, seclabel on
            // SELinux hosts, noprefix, favordynmods, ...) would be taken for controllers
            // that no /proc/PID/cgroup line ever names.
            post[2]
                .split(',')
                .filter(|o| V1_CONTROLLERS.contains(o) || o.starts_with("name="))
                .map(String::from)
                .collect()
        } else {
            Vec::new()
        };
        out.push(Hierarchy {
            mountpoint,
            root: unescape(pre[3]),
            controllers,
            v2: fstype == "cgroup2",
        });
    }
    out
}

fn unescape(s: &str) -> String {
    crate::sys::unescape_mountinfo(s)
}

/// Whether the host runs the unified (pure v2) hierarchy at /sys/fs/cgroup.
pub fn is_unified(hs: &[Hierarchy]) -> bool {
    !hs.iter().any(|h| !h.v2)
}

/// Whether hugepage limits can be applied on this host: a v1 hugetlb hierarchy, or the pure
/// cgroup v2 hierarchy offering the hugetlb controller. (The hybrid layout's unified mount may
/// carry hugetlb too, but only where a parent enables it for its children: not something to
/// count on.) A CRI server drops the kubelet's hugepage limits when this is false, as
/// containerd and CRI-O do, rather than failing every container.
pub fn hugetlb_available(hs: &[Hierarchy]) -> bool {
    hs.iter().any(|h| {
        if h.v2 {
            is_unified(hs)
                && std::fs::read_to_string(h.mountpoint.join("cgroup.controllers"))
                    .is_ok_and(|c| c.split_whitespace().any(|x| x == "hugetlb"))
        } else {
            h.controllers.iter().any(|c| c == "hugetlb")
        }
    })
}

/// This process's own cgroup path in hierarchy `h` (from /proc/self/cgroup).
fn own_path(h: &Hierarchy, self_cgroup: &str) -> String {
    path_in(h, self_cgroup).unwrap_or_else(|| "/".to_string())
}

/// Whether process `pid` is in the cgroup directory `dir` or below it, by its
/// /proc/PID/cgroup line for the hierarchy mounted where `dir` is.
pub fn holds(dir: &Path, hs: &[Hierarchy], pid: i32) -> bool {
    let Some(h) = hs
        .iter()
        .filter(|h| dir.starts_with(&h.mountpoint))
        .max_by_key(|h| h.mountpoint.as_os_str().len())
    else {
        return false;
    };
    let Ok(rel) = dir.strip_prefix(&h.mountpoint) else {
        return false;
    };
    let want = format!("{}/{}", h.root.trim_end_matches('/'), rel.display());
    let want = match want.trim_end_matches('/') {
        "" => "/",
        w => w,
    };
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return false;
    };
    path_in(h, &text)
        .is_some_and(|have| have == want || want == "/" || have.starts_with(&format!("{want}/")))
}

/// A process's cgroup path in hierarchy `h`, from its /proc/PID/cgroup text.
fn path_in(h: &Hierarchy, proc_cgroup: &str) -> Option<String> {
    for line in proc_cgroup.lines() {
        let mut it = line.splitn(3, ':');
        let (Some(_), Some(ctrl), Some(path)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        let matches = if h.v2 {
            ctrl.is_empty()
        } else {
            let set: Vec<&str> = ctrl.split(',').collect();
            !h.controllers.is_empty() && h.controllers.iter().all(|c| set.contains(&c.as_str()))
        };
        if matches {
            return Some(path.to_string());
        }
    }
    None
}

/// The container's cgroup directories, computed from `cgroupsPath` (absolute: from each
/// hierarchy's root; relative: under this process's own cgroup; absent: `<id>` relative).
///
/// A path that resolves to a hierarchy's root, to this process's own cgroup or to one of its
/// ancestors is refused before anything is written: killing "every process in the
/// container's cgroup" there would reach the whole host.
pub fn paths_for(cgroups_path: Option<&Path>, id: &str, hs: &[Hierarchy]) -> Result<Vec<PathBuf>> {
    let requested = cgroups_path
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| id.to_string());
    // With the cgroupfs driver, a systemd-style "slice:prefix:name" is just a relative path
    // (containerd passes "test.slice:cri-containerd:ID" when it cannot ask the CRI client for
    // the driver; runc's cgroupfs driver does the same).
    if requested.split('/').any(|c| c == "..") {
        return Err(Error::Config(format!(
            "linux.cgroupsPath {requested:?} must not contain .."
        )));
    }
    let absolute = requested.starts_with('/');
    let components: Vec<&str> = requested
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if components.is_empty() {
        let what = if absolute {
            "the root of every cgroup hierarchy"
        } else {
            "rsrun's own cgroup"
        };
        return Err(Error::Config(format!(
            "linux.cgroupsPath {requested:?} resolves to {what}: a container needs a cgroup of its own"
        )));
    }
    let requested = components.join("/");
    let self_cgroup = std::fs::read_to_string("/proc/self/cgroup").ctx("read /proc/self/cgroup")?;
    let mut out = Vec::with_capacity(hs.len());
    for h in hs {
        let own = own_path(h, &self_cgroup);
        let own = own.trim_end_matches('/');
        let full = if absolute {
            format!("/{requested}")
        } else {
            format!("{own}/{requested}")
        };
        // The caller's own cgroup or an ancestor of it: it holds the caller.
        if own == full || own.starts_with(&format!("{full}/")) {
            return Err(Error::Config(format!(
                "linux.cgroupsPath {requested:?} resolves to {full}, which holds rsrun itself ({}): a container needs a cgroup of its own",
                h.mountpoint.display()
            )));
        }
        // Strip the mount's root (a nested host may mount only a sub-tree).
        let rel = if h.root != "/" {
            full.strip_prefix(&h.root).unwrap_or(&full).to_string()
        } else {
            full
        };
        let rel = rel.trim_start_matches('/');
        if rel.is_empty() {
            return Err(Error::Config(format!(
                "linux.cgroupsPath {requested:?} resolves to the root of the hierarchy at {}",
                h.mountpoint.display()
            )));
        }
        out.push(h.mountpoint.join(rel));
    }
    Ok(out)
}

/// Refuses cgroups that already hold processes (in them or below): a container needs a
/// cgroup of its own, since killing "every process of the container" kills whatever is in it
/// (runc refuses likewise). Missing directories are fine.
pub fn check_empty(paths: &[PathBuf]) -> Result<()> {
    for p in paths {
        let mut pids = Vec::new();
        collect_pids(p, &mut pids);
        if let Some(pid) = pids.first() {
            return Err(Error::Invalid(format!(
                "cgroup {} is not empty: it holds {} process(es) (pid {pid}); a container needs a cgroup of its own",
                p.display(),
                pids.len()
            )));
        }
    }
    Ok(())
}

/// Creates the cgroup directories. On failure, removes what it created. Returns the
/// directories it created (existing ones are joined, not owned: never removed later).
pub fn create(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let hs = hierarchies()?;
    let unified = is_unified(&hs);
    let mut created: Vec<PathBuf> = Vec::new();
    for p in paths {
        match std::fs::create_dir(p) {
            Ok(()) => created.push(p.clone()),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {
                // Missing parents: made as needed (and left in place, as runc does).
                if let Err(e) = std::fs::create_dir_all(p) {
                    remove_dirs(&created);
                    return Err(Error::os(format!("create cgroup {}", p.display()), e));
                }
                created.push(p.clone());
            }
            Err(e) => {
                remove_dirs(&created);
                return Err(Error::os(format!("create cgroup {}", p.display()), e));
            }
        }
        if unified {
            // Pure v2: delegate the controllers down to the new cgroup. (The hybrid layout's
            // unified mount belongs to the host: left as it is.)
            if let Some(h) = hs.iter().find(|h| p.starts_with(&h.mountpoint)) {
                v2::enable_controllers(&h.mountpoint, p);
            }
        }
        if !unified && p.join("cpuset.cpus").exists() {
            if let Err(e) = init_cpuset(p) {
                remove_dirs(&created);
                return Err(e);
            }
        }
    }
    Ok(created)
}

/// A new v1 cpuset cgroup starts with no CPUs and no memory nodes: copy them down from the
/// nearest ancestor that has them.
fn init_cpuset(p: &Path) -> Result<()> {
    let read = |d: &Path, f: &str| {
        std::fs::read_to_string(d.join(f))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    let mut chain = Vec::new();
    let mut cur = p;
    while read(cur, "cpuset.cpus").is_empty() || read(cur, "cpuset.mems").is_empty() {
        chain.push(cur.to_path_buf());
        match cur.parent() {
            Some(parent) if parent.join("cpuset.cpus").exists() => cur = parent,
            _ => break,
        }
    }
    for d in chain.iter().rev() {
        let parent = d.parent().unwrap_or(Path::new("/"));
        for f in ["cpuset.cpus", "cpuset.mems"] {
            if read(d, f).is_empty() {
                let v = read(parent, f);
                std::fs::write(d.join(f), &v)
                    .with_ctx(|| format!("write {} = {v:?}", d.join(f).display()))?;
            }
        }
    }
    Ok(())
}

/// Moves `pid` into every cgroup directory.
pub fn add_pid(paths: &[PathBuf], pid: i32) -> Result<()> {
    let s = pid.to_string();
    for p in paths {
        let f = p.join("cgroup.procs");
        std::fs::write(&f, &s).with_ctx(|| format!("add pid {pid} to {}", f.display()))?;
    }
    Ok(())
}

/// Joining a new init to its cgroups without the kernel's global migration lock. A write of
/// a PID to `cgroup.procs` takes cgroup_threadgroup_rwsem for writing, whose first writer
/// waits for an RCU grace period (5-9 ms on this project's hosts, most of a `run`). Two ways
/// around it: the init is born in its v2 cgroup (clone3 with CLONE_INTO_CGROUP, through
/// [`SelfJoin::v2`]), and it moves itself into each v1 cgroup by writing "0" (the calling
/// thread, the whole of a single-threaded process) to `tasks`, which the kernel does
/// without that lock. The `tasks` files are opened by the runtime: the kernel checks the
/// opener's credentials, whatever the init's are by then.
pub struct SelfJoin {
    /// The v2 directory (pure v2, or the hybrid layout's unified mount) and its descriptor.
    pub v2: Option<(PathBuf, OwnedFd)>,
    /// Each v1 cgroup's `tasks`, open for writing.
    pub v1_tasks: Vec<(PathBuf, OwnedFd)>,
}

impl SelfJoin {
    /// Opens what the init will need; `paths` are the container's cgroups, one per
    /// hierarchy of `hs` (as [`paths_for`] made them).
    pub fn open(paths: &[PathBuf], hs: &[Hierarchy]) -> Result<SelfJoin> {
        use nix::fcntl::OFlag;
        let open = |p: &Path, flags: OFlag| {
            nix::fcntl::open(p, flags | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())
                .with_ctx(|| format!("open {}", p.display()))
        };
        let mut j = SelfJoin {
            v2: None,
            v1_tasks: Vec::with_capacity(paths.len()),
        };
        for (p, h) in paths.iter().zip(hs) {
            if h.v2 {
                j.v2 = Some((p.clone(), open(p, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?));
            } else {
                let t = p.join("tasks");
                let fd = open(&t, OFlag::O_WRONLY)?;
                j.v1_tasks.push((t, fd));
            }
        }
        Ok(j)
    }

    /// As [`open`](Self::open) for the cgroups of an existing container (`exec`): a
    /// directory without `tasks` is the v2 one. None where that is not clear-cut (then the
    /// caller joins the usual way, whose errors name what is wrong).
    pub fn open_existing(paths: &[PathBuf]) -> Option<SelfJoin> {
        use nix::fcntl::OFlag;
        let cloexec = OFlag::O_CLOEXEC;
        let none = nix::sys::stat::Mode::empty();
        let mut j = SelfJoin {
            v2: None,
            v1_tasks: Vec::with_capacity(paths.len()),
        };
        for p in paths {
            let t = p.join("tasks");
            match nix::fcntl::open(&t, OFlag::O_WRONLY | cloexec, none) {
                Ok(fd) => j.v1_tasks.push((t, fd)),
                Err(nix::errno::Errno::ENOENT) if j.v2.is_none() => {
                    let fd =
                        nix::fcntl::open(p, OFlag::O_RDONLY | OFlag::O_DIRECTORY | cloexec, none);
                    j.v2 = Some((p.clone(), fd.ok()?));
                }
                Err(_) => return None,
            }
        }
        Some(j)
    }

    /// Forks (as `sys::clone_fork` with `flags`) the process that joins: born in the v2
    /// cgroup where clone3 allows it. Returns its PID (0 in the child) and the cgroups the
    /// caller must still put it in by `cgroup.procs` (the v2 one where clone3 was refused:
    /// a kernel before 5.7, a seccomp filter around the runtime).
    pub fn fork(&self, flags: u64) -> std::io::Result<(i32, Vec<PathBuf>)> {
        use std::os::fd::AsRawFd;
        if let Some((p, fd)) = &self.v2 {
            match crate::sys::clone_fork_into(flags, fd.as_raw_fd()) {
                Ok(pid) => return Ok((pid, Vec::new())),
                Err(_) => return Ok((crate::sys::clone_fork(flags)?, vec![p.clone()])),
            }
        }
        Ok((crate::sys::clone_fork(flags)?, Vec::new()))
    }

    /// In the init: moves the calling (single-threaded) process into every v1 cgroup.
    pub fn join_v1(&self) -> Result<()> {
        for (t, fd) in &self.v1_tasks {
            match nix::unistd::write(fd, b"0") {
                Ok(1) => {}
                Ok(_) => return Err(Error::Invalid(format!("short write to {}", t.display()))),
                Err(e) => return Err(Error::os(format!("join cgroup {}", t.display()), e)),
            }
        }
        Ok(())
    }
}

/// The container's cgroups behind one interface: the v1 controllers (with the hybrid
/// layout's unified mount beside them) or the single cgroup v2 directory.
pub enum Manager {
    V1(v1::V1),
    V2(v2::V2),
}

impl Manager {
    /// The manager for the directories a container recorded (`Saved::cgroup_paths`).
    pub fn new(paths: &[PathBuf]) -> Result<Manager> {
        let hs = hierarchies()?;
        Self::with_hierarchies(paths, &hs)
    }

    pub fn with_hierarchies(paths: &[PathBuf], hs: &[Hierarchy]) -> Result<Manager> {
        if paths.is_empty() {
            return Err(Error::Unsupported(
                "the container has no cgroup (no cgroup hierarchy is mounted, or rootless mode ignored cgroup errors)".into(),
            ));
        }
        if is_unified(hs) {
            return Ok(Manager::V2(v2::V2::new(paths[0].clone())));
        }
        let mut m = v1::V1::default();
        for p in paths {
            let h = hs
                .iter()
                .filter(|h| p.starts_with(&h.mountpoint))
                .max_by_key(|h| h.mountpoint.as_os_str().len());
            match h {
                Some(h) if h.v2 => m.unified = Some(p.clone()),
                Some(h) => {
                    for c in &h.controllers {
                        m.dirs.insert(c.clone(), p.clone());
                    }
                }
                None => {}
            }
        }
        Ok(Manager::V1(m))
    }

    pub fn is_v2(&self) -> bool {
        matches!(self, Manager::V2(_))
    }

    /// The cgroup's directory in the v2 hierarchy: the whole cgroup on v2, its directory in
    /// the cgroup2 mount of a hybrid host (where PSI is), none on a pure v1 host.
    pub fn v2_dir(&self) -> Option<&Path> {
        match self {
            Manager::V1(m) => m.unified.as_deref(),
            Manager::V2(m) => Some(&m.dir),
        }
    }

    /// Applies every field of `linux.resources` to a new cgroup (before any process is in it),
    /// the device rules included (`apply_devices`).
    pub fn apply(&self, r: &LinuxResources, rootless: bool) -> Result<()> {
        let mut tx = Tx::create();
        match self {
            Manager::V1(m) => m.set(r, &mut tx, false)?,
            Manager::V2(m) => m.set(r, &mut tx, false)?,
        }
        self.apply_devices(r.devices().as_deref().unwrap_or(&[]), rootless)
    }

    /// The device rules of a new cgroup: the config's, then the devices every container may
    /// use (`devices::DEFAULT_ALLOWED`), over deny-all, as runc applies them. A config without
    /// rules gets the defaults alone, never every device of the host (with CAP_MKNOD, a
    /// container could otherwise make and open the node of the host's disk). A rootless
    /// container, or one made by root of a user namespace, cannot set them (bpf(2) needs
    /// privileges the user lacks): skipped then, as runc skips them, unless the config denies
    /// something.
    pub fn apply_devices(
        &self,
        spec: &[oci_spec::runtime::LinuxDeviceCgroup],
        rootless: bool,
    ) -> Result<()> {
        let rules = devices::rules(spec)?;
        let r = match self {
            Manager::V1(m) => m.set_devices(&rules),
            Manager::V2(m) => m.set_devices(&rules),
        };
        // (Root of a user namespace, as a runtime inside a rootless Kubernetes node, is
        // refused them too: runc passes over the error there as well.)
        match r {
            Err(e)
                if (rootless || crate::lifecycle::rootless_auto())
                    && spec.iter().all(|d| d.allow()) =>
            {
                crate::log::debug(&format!("rootless: device rules not applied: {e}"));
                Ok(())
            }
            r => r,
        }
    }

    /// Changes the limits of a live container: only the fields present in `r`. On failure,
    /// every file already written gets its previous value back. Device rules are not changed
    /// by an update (as with runc): they are reported in the debug log and skipped.
    pub fn update(&self, r: &LinuxResources) -> Result<()> {
        self.update_then(r, || Ok(()))
    }

    /// As `update`, then `then` (systemd's view of the same limits): when that fails, the
    /// files written are restored too. Every check runs before anything changes.
    pub fn update_then(&self, r: &LinuxResources, then: impl FnOnce() -> Result<()>) -> Result<()> {
        if r.devices().as_ref().is_some_and(|d| !d.is_empty()) {
            crate::log::debug("update: linux.resources.devices is not changed by update");
        }
        let mut tx = Tx::update();
        let res = match self {
            Manager::V1(m) => m.set(r, &mut tx, true),
            Manager::V2(m) => m.set(r, &mut tx, true),
        }
        .and_then(|()| then());
        if res.is_err() {
            tx.rollback();
        }
        res
    }

    /// Freezes every process and waits until the kernel reports the cgroup frozen.
    pub fn freeze(&self) -> Result<()> {
        match self {
            Manager::V1(m) => m.set_freezer(true),
            Manager::V2(m) => m.set_frozen(true),
        }
    }

    pub fn thaw(&self) -> Result<()> {
        match self {
            Manager::V1(m) => m.set_freezer(false),
            Manager::V2(m) => m.set_frozen(false),
        }
    }

    pub fn is_frozen(&self) -> bool {
        match self {
            Manager::V1(m) => m.is_frozen(),
            Manager::V2(m) => m.is_frozen(),
        }
    }

    /// How many processes of the cgroup the OOM killer killed (v2 memory.events oom_kill;
    /// v1 memory.oom_control oom_kill).
    pub fn oom_kill_count(&self) -> u64 {
        match self {
            Manager::V1(m) => m.oom_kill_count(),
            Manager::V2(m) => m.oom_kill_count(),
        }
    }

    /// How many times the cgroup hit its memory limit with nothing left to reclaim (v2
    /// memory.events oom; v1 counts only kills).
    pub fn oom_event_count(&self) -> u64 {
        match self {
            Manager::V1(m) => m.oom_kill_count(),
            Manager::V2(m) => m.oom_events(),
        }
    }

    /// The file whose changes announce OOM events (v2 memory.events, which the kernel
    /// notifies through inotify); v1 has none of that kind.
    pub fn oom_events_file(&self) -> Option<PathBuf> {
        match self {
            Manager::V1(_) => None,
            Manager::V2(m) => Some(m.dir.join("memory.events")),
        }
    }

    /// Whether the cgroup ran out of memory at least once (an OOM kill or, on v1, a memory
    /// limit hit while the OOM killer is disabled).
    pub fn oom_seen(&self) -> bool {
        match self {
            Manager::V1(m) => m.oom_kill_count() > 0 || m.under_oom(),
            Manager::V2(m) => m.oom_kill_count() > 0 || m.oom_events() > 0,
        }
    }

    /// Resource usage in the shape of runc's `events --stats` data.
    pub fn stats(&self) -> serde_json::Value {
        match self {
            Manager::V1(m) => m.stats(),
            Manager::V2(m) => m.stats(),
        }
    }

    /// PIDs of every process in the cgroup and its descendants.
    /// The directory whose tree lists every process of the container.
    pub fn pids_dir(&self) -> Option<PathBuf> {
        match self {
            Manager::V1(m) => m.pids_dir(),
            Manager::V2(m) => Some(m.dir.clone()),
        }
    }

    /// Every process in the container's cgroup and below.
    pub fn all_pids(&self) -> Vec<i32> {
        let dir = self.pids_dir();
        let mut out = Vec::new();
        if let Some(d) = dir {
            collect_pids(&d, &mut out);
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// SIGKILL to every process of the cgroup and its subtree through v2's cgroup.kill;
    /// false where there is none (v1, a kernel before 5.14).
    pub fn cgroup_kill(&self) -> bool {
        match self {
            Manager::V2(m) => write_file(&m.dir.join("cgroup.kill"), "1").is_ok(),
            Manager::V1(_) => false,
        }
    }

    /// Kills every process in the cgroup: v2 cgroup.kill (kernel ≥ 5.14; else freeze, kill,
    /// thaw); v1 freeze, SIGKILL each one, thaw. Then waits (bounded) until it is empty.
    pub fn kill_all(&self) {
        let killed = match self {
            Manager::V2(m) => write_file(&m.dir.join("cgroup.kill"), "1").is_ok(),
            Manager::V1(_) => false,
        };
        if !killed {
            let frozen = self.freeze().is_ok();
            for pid in self.all_pids() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            if frozen {
                if let Err(e) = self.thaw() {
                    crate::log::warn(&format!("thaw after kill: {e}"));
                }
            }
        }
        for i in 0..500u64 {
            if self.all_pids().is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(2 + i.min(20)));
        }
        crate::log::warn("processes are left in the container's cgroup after SIGKILL");
    }
}

fn collect_pids(dir: &Path, out: &mut Vec<i32>) {
    if let Ok(s) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_pids(&e.path(), out);
            }
        }
    }
}

/// Applies `linux.resources` to the cgroups just created for a container, and the default
/// device rules without any (nothing to do in rootless mode without cgroups).
pub fn apply(paths: &[PathBuf], r: Option<&LinuxResources>, rootless: bool) -> Result<()> {
    if paths.is_empty() {
        return Ok(());
    }
    let m = Manager::new(paths)?;
    match r {
        Some(r) => m.apply(r, rootless),
        None => m.apply_devices(&[], rootless),
    }
}

/// Whether the OOM killer killed a process of the container (for reason "OOMKilled").
pub fn oom_killed(paths: &[PathBuf]) -> bool {
    Manager::new(paths)
        .map(|m| m.oom_kill_count() > 0)
        .unwrap_or(false)
}

/// Every process in the container's cgroups and their sub-cgroups (a container's systemd,
/// or a delegated cgroup namespace, leaves the top empty), in every hierarchy.
pub fn pids(paths: &[PathBuf]) -> Vec<i32> {
    let mut out = Vec::new();
    for p in paths {
        collect_pids(p, &mut out);
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Whether the cgroup is frozen (v1 freezer or v2 cgroup.freeze).
pub fn is_frozen(paths: &[PathBuf]) -> bool {
    Manager::new(paths).map(|m| m.is_frozen()).unwrap_or(false)
}

/// Thaws a frozen cgroup.
pub fn thaw(paths: &[PathBuf]) -> Result<()> {
    match Manager::new(paths) {
        Ok(m) => m.thaw(),
        Err(_) => Ok(()),
    }
}

/// Kills every process left in the cgroup (v2: cgroup.kill; v1: freeze, SIGKILL, thaw).
pub fn kill_all(paths: &[PathBuf]) {
    match Manager::new(paths) {
        Ok(m) => m.kill_all(),
        Err(_) => {
            for pid in pids(paths) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// Removes the cgroup directories, retrying briefly while exiting processes release them.
pub fn remove(paths: &[PathBuf]) -> Result<()> {
    let mut last = None;
    for p in paths {
        // Sub-cgroups the container made (cgroup namespace, writable cgroupfs) go first.
        if let Err(e) = remove_children(p) {
            last = Some(e);
        }
        let mut tries = 0;
        loop {
            match std::fs::remove_dir(p) {
                Ok(()) => break,
                Err(e) if e.kind() == ErrorKind::NotFound => break,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(2 * tries));
                }
                Err(e) => {
                    last = Some(Error::os(format!("remove cgroup {}", p.display()), e));
                    break;
                }
            }
        }
    }
    match last {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Removes every sub-cgroup below `dir`, deepest first (cgroupfs rmdir is not recursive).
fn remove_children(dir: &Path) -> Result<()> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in rd.flatten() {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let child = e.path();
        remove_children(&child)?;
        let mut tries = 0;
        loop {
            match std::fs::remove_dir(&child) {
                Ok(()) => break,
                Err(e) if e.kind() == ErrorKind::NotFound => break,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(2 * tries));
                }
                Err(e) => return Err(Error::os(format!("remove cgroup {}", child.display()), e)),
            }
        }
    }
    Ok(())
}

/// Writes a cgroup file in one write(2) (the kernel parses each write on its own). An empty
/// value is written as a newline: no bytes would be no write at all (a rollback to an empty
/// cpuset.cpus would leave the new value).
pub(crate) fn write_file(p: &Path, value: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().write(true).open(p)?;
    f.write_all(if value.is_empty() {
        b"\n"
    } else {
        value.as_bytes()
    })
}

pub(crate) fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

pub(crate) fn read_u64(p: &Path) -> Option<u64> {
    read_trim(p).and_then(|s| s.parse().ok())
}

/// A flat-keyed file ("key value" per line), e.g. memory.stat or cpu.stat.
pub(crate) fn read_keyed(p: &Path) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    if let Ok(s) = std::fs::read_to_string(p) {
        for l in s.lines() {
            let mut it = l.split_whitespace();
            if let (Some(k), Some(v)) = (it.next(), it.next()) {
                if let Ok(v) = v.parse() {
                    m.insert(k.to_string(), v);
                }
            }
        }
    }
    m
}

/// The writes of one apply or update, with what to write back if a later one fails.
pub struct Tx {
    undo: Option<Vec<(PathBuf, String)>>,
}

impl Tx {
    /// For a new cgroup: nothing to restore (a failed create removes the cgroup).
    pub fn create() -> Tx {
        Tx { undo: None }
    }

    /// For a live update: every write records the value it replaces.
    pub fn update() -> Tx {
        Tx {
            undo: Some(Vec::new()),
        }
    }

    /// Writes `value` to `dir/file` for the config field `field`. A file that does not exist
    /// (controller not available, or a kernel without that knob) is an error naming the field.
    pub fn write(&mut self, dir: &Path, file: &str, value: &str, field: &str) -> Result<()> {
        let p = dir.join(file);
        if std::fs::symlink_metadata(&p).is_err() {
            return Err(Error::Unsupported(format!(
                "{field}: {} does not exist (the cgroup controller or this kernel lacks it)",
                p.display()
            )));
        }
        let old = match &self.undo {
            Some(_) => std::fs::read_to_string(&p).ok(),
            None => None,
        };
        write_file(&p, value)
            .map_err(|e| Error::os(format!("{field}: write {value:?} to {}", p.display()), e))?;
        if let (Some(u), Some(old)) = (&mut self.undo, old) {
            if let Some(v) = restore_value(file, &old, value) {
                u.push((p, v));
            }
        }
        Ok(())
    }

    /// Puts back the values the writes replaced, newest first.
    pub fn rollback(&mut self) {
        for (p, v) in self.undo.take().unwrap_or_default().into_iter().rev() {
            if let Err(e) = write_file(&p, &v) {
                crate::log::warn(&format!(
                    "restore {v:?} to {} after a failed update: {e}",
                    p.display()
                ));
            }
        }
    }
}

/// What to write to `file` to undo writing `written` over the content `old`.
fn restore_value(file: &str, old: &str, written: &str) -> Option<String> {
    if file == "memory.oom_control" {
        return old
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill_disable "))
            .map(|v| v.trim().to_string());
    }
    let per_device = file.ends_with("_device")
        || matches!(
            file,
            "io.max" | "io.weight" | "io.bfq.weight" | "rdma.max" | "net_prio.ifpriomap"
        );
    if per_device {
        let key = written.split_whitespace().next()?;
        if let Some(line) = old
            .lines()
            .find(|l| l.split_whitespace().next() == Some(key))
        {
            return Some(line.trim().to_string());
        }
        return Some(match file {
            "io.max" => format!("{key} rbps=max wbps=max riops=max wiops=max"),
            "io.weight" | "io.bfq.weight" => format!("{key} default"),
            "rdma.max" => format!("{key} hca_handle=max hca_object=max"),
            _ => format!("{key} 0"),
        });
    }
    Some(old.lines().next().unwrap_or("").trim().to_string())
}

/// "2MB", "1GB", ... for every huge page size the kernel offers.
pub(crate) fn hugepage_sizes() -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/sys/kernel/mm/hugepages") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(kb) = name
                .strip_prefix("hugepages-")
                .and_then(|s| s.strip_suffix("kB"))
                .and_then(|s| s.parse::<u64>().ok())
            {
                out.push(page_size_name(kb * 1024));
            }
        }
    }
    out
}

fn page_size_name(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = bytes;
    let mut i = 0;
    while v >= 1024 && v & 1023 == 0 && i < UNITS.len() - 1 {
        v /= 1024;
        i += 1;
    }
    format!("{v}{}", UNITS[i])
}

/// Checks a hugepageLimits entry's page size against what the kernel offers.
pub(crate) fn check_page_size(size: &str, field: &str) -> Result<()> {
    let sizes = hugepage_sizes();
    if sizes.iter().any(|s| s == size) {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "{field}: page size {size:?} is not one this kernel offers ({})",
            sizes.join(", ")
        )))
    }
}

/// The conversion of cpu.shares (2..262144) to cpu.weight (1..10000) that runc (1.3.2 on), crun
/// (1.23 on) and the kubelet (opencontainers/cgroups, for the pod cgroups it makes) use: a
/// quadratic in log2(shares) through the minimum, the maximum and the defaults (1024 → 100).
/// The older linear one gave 1024 shares weight 39, so a container asking for one CPU weighed
/// less than its own pod's cgroup, which the kubelet sets to 100 for the same shares.
pub fn shares_to_weight(shares: u64) -> u64 {
    match shares {
        0 => 0,
        1..=2 => 1,
        262_144.. => 10_000,
        _ => {
            let l = (shares as f64).log2();
            let exponent = (l * l + 125.0 * l) / 612.0 - 7.0 / 34.0;
            10f64.powf(exponent).ceil() as u64
        }
    }
}

/// The inverse of [`shares_to_weight`]: the most shares that convert to `weight`, so that
/// the canonical values come back (2 → 1 → 2, 1024 → 100 → 1024, 262144 → 10000 → 262144;
/// the conversion rounds up, so the fewest would read 100 back as 1011). For cgroup v2
/// readers that report shares, as cAdvisor's `container_spec_cpu_shares`.
pub fn weight_to_shares(weight: u64) -> u64 {
    match weight {
        0 => 0,
        1 => 2,
        10_000.. => 262_144,
        // shares_to_weight only grows: a binary search for the last shares whose weight is
        // not above `w` (weight(2) = 1 <= w < 10000 = weight(262144)).
        w => {
            let (mut lo, mut hi) = (2u64, 262_144u64);
            while hi - lo > 1 {
                let mid = (lo + hi) / 2;
                if shares_to_weight(mid) <= w {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            lo
        }
    }
}

/// runc's conversion of a blkio weight (10..1000) to io.weight (1..10000).
pub fn blkio_weight_to_io(w: u16) -> u64 {
    if w == 0 {
        return 0;
    }
    1 + (u64::from(w).saturating_sub(10) * 9999) / 990
}

/// Common checks of out-of-range values, shared by v1 and v2.
pub(crate) fn check_cpu(c: &oci_spec::runtime::LinuxCpu) -> Result<()> {
    if let Some(q) = c.quota() {
        if q != -1 && q != 0 && q < 1000 {
            return Err(Error::Config(format!(
                "linux.resources.cpu.quota: {q} is out of range (-1 for no limit, or at least 1000 microseconds)"
            )));
        }
    }
    if let Some(p) = c.period() {
        if p != 0 && !(1000..=1_000_000).contains(&p) {
            return Err(Error::Config(format!(
                "linux.resources.cpu.period: {p} is out of range (1000 to 1000000 microseconds)"
            )));
        }
    }
    if let Some(s) = c.shares() {
        if s != 0 && !(2..=262144).contains(&s) {
            return Err(Error::Config(format!(
                "linux.resources.cpu.shares: {s} is out of range (2 to 262144)"
            )));
        }
    }
    if let Some(i) = c.idle() {
        if i != 0 && i != 1 {
            return Err(Error::Config(format!(
                "linux.resources.cpu.idle: {i} is out of range (0 or 1)"
            )));
        }
    }
    Ok(())
}

pub(crate) fn check_memory(m: &oci_spec::runtime::LinuxMemory) -> Result<()> {
    for (name, v) in [
        ("limit", m.limit()),
        ("reservation", m.reservation()),
        ("swap", m.swap()),
        ("kernel", m.kernel()),
        ("kernelTCP", m.kernel_tcp()),
    ] {
        if let Some(v) = v {
            if v < -1 {
                return Err(Error::Config(format!(
                    "linux.resources.memory.{name}: {v} is out of range (-1 for no limit, or a number of bytes)"
                )));
            }
        }
    }
    if let (Some(l), Some(s)) = (m.limit(), m.swap()) {
        if l > 0 && s > 0 && s < l {
            return Err(Error::Config(format!(
                "linux.resources.memory.swap: {s} is below memory.limit {l} (swap is the limit of memory plus swap)"
            )));
        }
    }
    if let Some(s) = m.swappiness() {
        if s > 100 {
            return Err(Error::Config(format!(
                "linux.resources.memory.swappiness: {s} is out of range (0 to 100)"
            )));
        }
    }
    Ok(())
}

pub(crate) fn check_blkio_weight(w: u16, field: &str) -> Result<()> {
    if w != 0 && !(10..=1000).contains(&w) {
        return Err(Error::Config(format!(
            "{field}: {w} is out of range (10 to 1000)"
        )));
    }
    Ok(())
}

/// Refuses a new memory limit below what the container uses now (on v2 the kernel would
/// OOM-kill to get there; on v1 it fails with EBUSY after reclaiming).
/// A memory limit an update lowers below what the container uses now is refused (the
/// kernel would reclaim or OOM-kill to meet it). Only a lowered one, as the kubelet checks: a
/// limit sent again unchanged (a CPU-only resize) passes even while the usage sits above it,
/// which forced charges allow for a moment. `current`: the limit in force (None: unlimited).
pub(crate) fn check_limit_vs_usage(
    limit: i64,
    usage: Option<u64>,
    current: Option<u64>,
) -> Result<()> {
    if limit > 0 && current.is_some_and(|c| limit as u64 >= c) {
        return Ok(());
    }
    if let Some(u) = usage {
        if limit > 0 && (limit as u64) < u {
            return Err(Error::Invalid(format!(
                "linux.resources.memory.limit: {limit} is below the container's current memory usage of {u} bytes"
            )));
        }
    }
    Ok(())
}

fn remove_dirs(paths: &[PathBuf]) {
    for p in paths {
        let _ = std::fs::remove_dir(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_lowered_memory_limit_is_checked_against_the_usage() {
        // Sent again unchanged, or raised: passes though the usage is above it.
        assert!(check_limit_vs_usage(100, Some(101), Some(100)).is_ok());
        assert!(check_limit_vs_usage(200, Some(201), Some(100)).is_ok());
        // Lowered below the usage, from a limit or from unlimited: refused, naming the field.
        let e = check_limit_vs_usage(90, Some(101), Some(100)).unwrap_err();
        assert!(e.to_string().contains("memory.limit"), "{e}");
        assert!(check_limit_vs_usage(100, Some(101), None).is_err());
        assert!(check_limit_vs_usage(90, Some(80), Some(100)).is_ok());
    }

    #[test]
    fn holds_tells_members_from_others() {
        // This test process, in the live kernel's hierarchies: its own cgroup and every
        // ancestor hold it; a child of its cgroup does not, nor does its cgroup hold PID 1
        // unless both sit at a hierarchy's root.
        let hs = hierarchies().unwrap();
        let me = std::process::id() as i32;
        let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let mut checked = 0;
        for h in &hs {
            let own = own_path(h, &text);
            let Some(rel) = own.strip_prefix(h.root.trim_end_matches('/')) else {
                continue;
            };
            let dir = h.mountpoint.join(rel.trim_start_matches('/'));
            assert!(holds(&dir, &hs, me), "{} does not hold us", dir.display());
            assert!(holds(&h.mountpoint, &hs, me));
            assert!(!holds(&dir.join("rsrun-no-such-child"), &hs, me));
            assert!(!holds(&dir, &hs, i32::MAX), "a PID that does not exist");
            if rel.trim_matches('/').is_empty() {
                continue;
            }
            let init = std::fs::read_to_string("/proc/1/cgroup").unwrap();
            if path_in(h, &init).is_some_and(|p| !p.starts_with(&own)) {
                assert!(!holds(&dir, &hs, 1), "{} holds PID 1", dir.display());
            }
            checked += 1;
        }
        assert!(checked > 0 || hs.iter().all(|h| own_path(h, &text) == h.root));
    }

    const HYBRID: &str = "\
25 1 0:23 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:25 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
30 25 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,cpu,cpuacct
31 25 0:29 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,memory
";

    #[test]
    fn hybrid_layout() {
        let hs = parse_mountinfo(HYBRID);
        assert_eq!(hs.len(), 4);
        assert!(hs[0].v2);
        assert_eq!(hs[1].controllers, vec!["name=systemd"]);
        assert_eq!(hs[2].controllers, vec!["cpu", "cpuacct"]);
        assert!(!is_unified(&hs));
        let self_cg = "4:memory:/a/b\n3:cpu,cpuacct:/\n1:name=systemd:/s\n0::/u\n";
        assert_eq!(own_path(&hs[3], self_cg), "/a/b");
        // An SELinux host's (and newer kernels') options are not controllers: the hierarchy
        // is still found in /proc/self/cgroup.
        let selinux = HYBRID
            .replace("rw,memory", "rw,seclabel,memory")
            .replace(
                "rw,cpu,cpuacct",
                "rw,seclabel,cpu,cpuacct,favordynmods,noprefix",
            )
            .replace("rw,xattr,name=systemd", "rw,seclabel,xattr,name=systemd");
        let hs2 = parse_mountinfo(&selinux);
        assert_eq!(hs2[1].controllers, vec!["name=systemd"]);
        assert_eq!(hs2[2].controllers, vec!["cpu", "cpuacct"]);
        assert_eq!(hs2[3].controllers, vec!["memory"]);
        assert_eq!(own_path(&hs2[3], self_cg), "/a/b");
        assert_eq!(own_path(&hs2[1], self_cg), "/s");
        assert_eq!(own_path(&hs[2], self_cg), "/");
        assert_eq!(own_path(&hs[0], self_cg), "/u");
        let ps = paths_for(Some(Path::new("/x/y")), "id", &hs).unwrap();
        assert_eq!(ps[3], PathBuf::from("/sys/fs/cgroup/memory/x/y"));
        assert!(paths_for(Some(Path::new("/x/../y")), "id", &hs).is_err());
        // The roots of the hierarchies and our own cgroup are refused, however spelled.
        for bad in ["/", "/.", "", ".", "//", "./", "/./."] {
            let e = paths_for(Some(Path::new(bad)), "id", &hs)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("a container needs a cgroup of its own"),
                "{bad:?}: {e}"
            );
        }
        let ps = paths_for(Some(Path::new("/./x//y/")), "id", &hs).unwrap();
        assert_eq!(ps[3], PathBuf::from("/sys/fs/cgroup/memory/x/y"));
        let self_cg = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let mine = own_path(&hs[3], &self_cg);
        if mine != "/" {
            // Our own cgroup (absolute) and each ancestor of it.
            let e = paths_for(Some(Path::new(&mine)), "id", &hs)
                .unwrap_err()
                .to_string();
            assert!(e.contains("holds rsrun itself"), "{e}");
            let parent = Path::new(&mine).parent().unwrap();
            if parent != Path::new("/") {
                assert!(paths_for(Some(parent), "id", &hs).is_err());
            }
        }
        let own = own_path(
            &hs[3],
            &std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default(),
        );
        let ps = paths_for(Some(Path::new("test.slice:cri-containerd:id")), "id", &hs).unwrap();
        let want = Path::new("/sys/fs/cgroup/memory")
            .join(own.trim_start_matches('/'))
            .join("test.slice:cri-containerd:id");
        assert_eq!(ps[3], want);
    }
}
