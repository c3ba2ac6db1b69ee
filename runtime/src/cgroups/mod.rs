//! Cgroup placement: the container's cgroup is created from `linux.cgroupsPath` in every
//! mounted hierarchy (cgroup v1 controllers, the hybrid layout's unified mount, or the one
//! cgroup v2 hierarchy), the init process is moved into it, and it is removed on delete.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
            post[2]
                .split(',')
                .filter(|o| {
                    !matches!(
                        *o,
                        "rw" | "ro"
                            | "nosuid"
                            | "nodev"
                            | "noexec"
                            | "relatime"
                            | "noatime"
                            | "clone_children"
                            | "xattr"
                    ) && !o.starts_with("release_agent")
                })
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
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Ok(n) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(n as char);
                i += 4;
                continue;
            }
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

/// Whether the host runs the unified (pure v2) hierarchy at /sys/fs/cgroup.
pub fn is_unified(hs: &[Hierarchy]) -> bool {
    !hs.iter().any(|h| !h.v2)
}

/// This process's own cgroup path in hierarchy `h` (from /proc/self/cgroup).
fn own_path(h: &Hierarchy, self_cgroup: &str) -> String {
    for line in self_cgroup.lines() {
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
            return path.to_string();
        }
    }
    "/".to_string()
}

/// The container's cgroup directories, computed from `cgroupsPath` (absolute: from each
/// hierarchy's root; relative: under this process's own cgroup; absent: `<id>` relative).
pub fn paths_for(cgroups_path: Option<&Path>, id: &str, hs: &[Hierarchy]) -> Result<Vec<PathBuf>> {
    let requested = cgroups_path
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| id.to_string());
    if requested.contains(':') && !requested.starts_with('/') {
        return Err(Error::Unsupported(format!(
            "cgroupsPath {requested:?} is in the systemd slice:prefix:name form, which needs the systemd cgroup driver"
        )));
    }
    if requested.split('/').any(|c| c == "..") {
        return Err(Error::Config(format!(
            "linux.cgroupsPath {requested:?} must not contain .."
        )));
    }
    let self_cgroup = if requested.starts_with('/') {
        String::new()
    } else {
        std::fs::read_to_string("/proc/self/cgroup").ctx("read /proc/self/cgroup")?
    };
    let mut out = Vec::with_capacity(hs.len());
    for h in hs {
        let full = if requested.starts_with('/') {
            requested.clone()
        } else {
            format!(
                "{}/{}",
                own_path(h, &self_cgroup).trim_end_matches('/'),
                requested
            )
        };
        // Strip the mount's root (a nested host may mount only a sub-tree).
        let rel = if h.root != "/" {
            full.strip_prefix(&h.root).unwrap_or(&full).to_string()
        } else {
            full
        };
        out.push(h.mountpoint.join(rel.trim_start_matches('/')));
    }
    Ok(out)
}

/// Creates the cgroup directories. On failure, removes what it created.
pub fn create(paths: &[PathBuf]) -> Result<()> {
    for (i, p) in paths.iter().enumerate() {
        if let Err(e) = std::fs::create_dir_all(p) {
            remove_dirs(&paths[..i]);
            return Err(Error::os(format!("create cgroup {}", p.display()), e));
        }
        if p.join("cpuset.cpus").exists() {
            if let Err(e) = init_cpuset(p) {
                remove_dirs(&paths[..=i]);
                return Err(e);
            }
        }
    }
    Ok(())
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

/// PIDs in the container's cgroup (from the first hierarchy that lists them).
pub fn pids(paths: &[PathBuf]) -> Vec<i32> {
    for p in paths {
        if let Ok(s) = std::fs::read_to_string(p.join("cgroup.procs")) {
            return s.lines().filter_map(|l| l.trim().parse().ok()).collect();
        }
    }
    Vec::new()
}

/// Whether the cgroup is frozen (v1 freezer or v2 cgroup.freeze).
pub fn is_frozen(paths: &[PathBuf]) -> bool {
    for p in paths {
        if let Ok(s) = std::fs::read_to_string(p.join("freezer.state")) {
            return s.trim() == "FROZEN";
        }
        if let Ok(s) = std::fs::read_to_string(p.join("cgroup.freeze")) {
            return s.trim() == "1";
        }
    }
    false
}

/// Thaws a frozen cgroup.
pub fn thaw(paths: &[PathBuf]) -> Result<()> {
    for p in paths {
        if p.join("freezer.state").exists() {
            return std::fs::write(p.join("freezer.state"), "THAWED")
                .with_ctx(|| format!("thaw {}", p.display()));
        }
        if p.join("cgroup.freeze").exists() {
            return std::fs::write(p.join("cgroup.freeze"), "0")
                .with_ctx(|| format!("thaw {}", p.display()));
        }
    }
    Ok(())
}

/// Kills every process left in the cgroup (v2: cgroup.kill; v1: SIGKILL to each listed PID).
pub fn kill_all(paths: &[PathBuf]) {
    for p in paths {
        if std::fs::write(p.join("cgroup.kill"), "1").is_ok() {
            return;
        }
    }
    for pid in pids(paths) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Removes the cgroup directories, retrying briefly while exiting processes release them.
pub fn remove(paths: &[PathBuf]) -> Result<()> {
    let mut last = None;
    for p in paths {
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

fn remove_dirs(paths: &[PathBuf]) {
    for p in paths {
        let _ = std::fs::remove_dir(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(own_path(&hs[2], self_cg), "/");
        assert_eq!(own_path(&hs[0], self_cg), "/u");
        let ps = paths_for(Some(Path::new("/x/y")), "id", &hs).unwrap();
        assert_eq!(ps[3], PathBuf::from("/sys/fs/cgroup/memory/x/y"));
        assert!(paths_for(Some(Path::new("/x/../y")), "id", &hs).is_err());
        assert!(paths_for(Some(Path::new("system.slice:rsrun:id")), "id", &hs).is_err());
    }
}
