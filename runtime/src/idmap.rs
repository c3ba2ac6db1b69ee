//! Idmapped bind mounts (runtime-spec 1.1: a mount's `uidMappings`/`gidMappings`, and the
//! `idmap`/`ridmap` options): what Kubernetes asks for every volume of a pod with
//! `hostUsers: false`, so that the container's root owns what host root owns on disk.
//!
//! The kernel lets only a caller privileged over the filesystem (the host's root here) make
//! an idmapped mount, so the runtime makes them before the clone: a detached copy of each
//! source (open_tree), given a user namespace with the mount's mappings (mount_setattr
//! MOUNT_ATTR_IDMAP). The init inherits the descriptors and moves each mount into place
//! (move_mount) where a plain bind would be.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use oci_spec::runtime::{LinuxIdMapping, Mount, Spec};

use crate::error::{Context, Error, Result};
use crate::sys;

/// A mount's uid and gid mappings.
type Mappings = (Vec<LinuxIdMapping>, Vec<LinuxIdMapping>);

/// Detached idmapped mounts, by index in `mounts` (a list: most configs have none, and a
/// HashMap's random keys would cost every `create` a getrandom and their code's pages).
#[derive(Default)]
pub struct Prepared {
    pub mounts: Vec<(usize, OwnedFd)>,
}

impl Prepared {
    pub fn get(&self, i: usize) -> Option<&OwnedFd> {
        self.mounts.iter().find(|(k, _)| *k == i).map(|(_, fd)| fd)
    }
}

/// The mappings mount `i` asks for and whether recursively (`ridmap`); None for a mount
/// that is not idmapped. The `idmap` options without mappings take the container's own
/// (runc does the same).
fn wanted(i: usize, m: &Mount, spec: &Spec) -> Result<Option<(Mappings, bool)>> {
    let opts: Vec<&str> = m
        .options()
        .iter()
        .flatten()
        .flat_map(|o| o.split(','))
        .collect();
    let ridmap = opts.contains(&"ridmap");
    let option = ridmap || opts.contains(&"idmap");
    let nonempty = |v: &Option<Vec<LinuxIdMapping>>| v.clone().filter(|v| !v.is_empty());
    let (uids, gids) = (nonempty(m.uid_mappings()), nonempty(m.gid_mappings()));
    let field = format!("mounts[{i}] {}", m.destination().display());
    let bad = |what: &str| Error::Config(format!("{field}: {what}"));
    let (uids, gids) = match (uids, gids) {
        (None, None) if !option => return Ok(None),
        (None, None) => {
            let linux = spec.linux().as_ref();
            match (
                linux.and_then(|l| nonempty(l.uid_mappings())),
                linux.and_then(|l| nonempty(l.gid_mappings())),
            ) {
                (Some(u), Some(g)) => (u, g),
                _ => {
                    return Err(bad(
                        "the idmap option without uidMappings/gidMappings needs the container's own (linux.uidMappings)",
                    ))
                }
            }
        }
        (Some(u), Some(g)) => (u, g),
        _ => return Err(bad("uidMappings and gidMappings go together")),
    };
    let bind =
        m.typ().as_deref() == Some("bind") || opts.contains(&"bind") || opts.contains(&"rbind");
    if !bind {
        return Err(bad("only bind mounts can be idmapped"));
    }
    for (what, maps) in [("uidMappings", &uids), ("gidMappings", &gids)] {
        for (k, mp) in maps.iter().enumerate() {
            let end_c = mp.container_id().checked_add(mp.size());
            let end_h = mp.host_id().checked_add(mp.size());
            if mp.size() == 0 || end_c.is_none() || end_h.is_none() {
                return Err(bad(&format!(
                    "{what}[{k}]: size {} is 0 or overflows the ID range",
                    mp.size()
                )));
            }
        }
    }
    Ok(Some(((uids, gids), ridmap)))
}

/// Whether the config has an idmapped mount (checked at validation, without making any).
pub fn check(spec: &Spec) -> Result<bool> {
    let mut any = false;
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        any |= wanted(i, m, spec)?.is_some();
    }
    Ok(any)
}

/// Makes the detached idmapped mounts the config asks for (none: nothing is done). Runs in
/// the single-threaded runtime before the clone; `rootless` callers cannot (the kernel
/// wants the host's CAP_SYS_ADMIN), which is a clear error.
pub fn prepare(spec: &Spec, bundle: &Path, rootless: bool) -> Result<Prepared> {
    let mut out = Prepared::default();
    // One user namespace per distinct pair of mappings (a pod's volumes share theirs).
    let mut userns: Vec<(Mappings, OwnedFd)> = Vec::new();
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        let Some((key, recursive)) = wanted(i, m, spec)? else {
            continue;
        };
        let field = format!("mounts[{i}] {}", m.destination().display());
        if rootless {
            return Err(Error::Unsupported(format!(
                "{field}: idmapped mounts of a rootless container"
            )));
        }
        let ns = match userns.iter().find(|(k, _)| *k == key) {
            Some((_, fd)) => fd.as_raw_fd(),
            None => {
                let fd = user_namespace(&key.0, &key.1)
                    .map_err(|e| prefixed(e, &format!("{field}: the mappings' user namespace")))?;
                userns.push((key.clone(), fd));
                userns.last().map(|(_, fd)| fd.as_raw_fd()).unwrap_or(-1)
            }
        };
        let src = m
            .source()
            .as_ref()
            .ok_or_else(|| Error::Config(format!("{field}: a bind mount without a source")))?;
        let src = if src.is_relative() {
            bundle.join(src)
        } else {
            src.clone()
        };
        let rbind = m
            .options()
            .iter()
            .flatten()
            .flat_map(|o| o.split(','))
            .any(|o| o == "rbind");
        let fd = sys::idmapped_tree(&src, ns, rbind, recursive).map_err(|e| {
            let hint = if e.raw_os_error() == Some(libc::EINVAL) {
                " (does its filesystem support idmapped mounts?)"
            } else {
                ""
            };
            Error::os(
                format!("{field}: idmapped mount of {}{hint}", src.display()),
                e,
            )
        })?;
        out.mounts.push((i, fd));
    }
    Ok(out)
}

fn prefixed(e: Error, what: &str) -> Error {
    match e {
        Error::Os { context, err } => Error::Os {
            context: format!("{what}: {context}"),
            err,
        },
        other => other,
    }
}

/// A new user namespace with these mappings, as a descriptor: a child is cloned into it,
/// given the maps, and ends once its namespace is open here.
fn user_namespace(uids: &[LinuxIdMapping], gids: &[LinuxIdMapping]) -> Result<OwnedFd> {
    let (r, w) = nix::unistd::pipe().ctx("pipe for the user namespace's holder")?;
    let pid = sys::clone_fork(libc::CLONE_NEWUSER as u64).ctx("clone into a new user namespace")?;
    if pid == 0 {
        // The child of a single-threaded process: it waits for the pipe's EOF and exits,
        // with async-signal-safe calls only.
        drop(w);
        let mut b = [0u8; 1];
        // SAFETY: reading into a valid one-byte buffer; _exit never returns.
        unsafe {
            libc::read(r.as_raw_fd(), b.as_mut_ptr().cast(), 1);
            libc::_exit(0);
        }
    }
    drop(r);
    let fmt = |m: &[LinuxIdMapping]| {
        m.iter()
            .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
            .collect::<String>()
    };
    let res = (|| {
        let (u, g) = (fmt(uids), fmt(gids));
        std::fs::write(format!("/proc/{pid}/uid_map"), &u)
            .with_ctx(|| format!("uidMappings: write uid_map {u:?}"))?;
        std::fs::write(format!("/proc/{pid}/gid_map"), &g)
            .with_ctx(|| format!("gidMappings: write gid_map {g:?}"))?;
        nix::fcntl::open(
            format!("/proc/{pid}/ns/user").as_str(),
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .ctx("open the user namespace")
    })();
    drop(w);
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    res
}
