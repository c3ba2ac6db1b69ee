//! Sealing the runtime binary (CVE-2019-5736 and its whole class).
//!
//! The container's init (between create and start) and every `exec` helper run as this
//! binary inside the container's PID namespace. A process there with CAP_SYS_PTRACE in the
//! host's user namespace (a debug sidecar in a shared-PID pod) can open /proc/PID/exe with
//! O_PATH while they run and, once they are gone, reopen it for writing: the host's runtime
//! binary. So the commands that put a process into a container first re-exec themselves from
//! a sealed copy of the binary:
//!
//! - as root: a detached, read-only bind mount of the binary file itself (open_tree +
//!   mount_setattr, then execveat of its descriptor). No copy is made, and the kernel refuses
//!   any write through that mount (EROFS), whoever holds a path to it;
//! - where mounts cannot be made (rootless): a sealed memfd copy (F_SEAL_WRITE and friends),
//!   so that a write fails (EPERM) or, at worst, reaches the copy.
//!
//! A binary already on a read-only mount, or a sealed memfd, needs nothing: no re-exec.
//! docs/design.md has the measurements and the reasoning.

use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::sync::OnceLock;

use crate::error::{Context, Error, Result};
use crate::sys;

/// Set for the re-exec'd process: the original binary's device and inode ("dev:ino"). Its
/// presence stops a second re-exec (should the seal not be visible for some reason).
const SEALED_ENV: &str = "_RSRUN_SEALED";

static IDENTITY: OnceLock<(u64, u64)> = OnceLock::new();

/// Device and inode of the runtime binary as installed (not of the sealed copy): what the
/// init and `exec` compare the container's program against, to refuse running the runtime
/// itself in a container.
pub fn runtime_identity() -> Result<(u64, u64)> {
    if let Some(id) = IDENTITY.get() {
        return Ok(*id);
    }
    let m = std::fs::metadata("/proc/self/exe").ctx("stat /proc/self/exe")?;
    Ok((m.dev(), m.ino()))
}

/// How the running binary is protected against writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seal {
    /// On a read-only mount (ours, or the host's own).
    ReadOnlyMount,
    /// A sealed memfd copy.
    Memfd,
    /// Writable: the re-exec is still to be done.
    None,
}

/// What protects the running binary now.
pub fn current() -> Result<Seal> {
    let exe = std::fs::File::open("/proc/self/exe").ctx("open /proc/self/exe")?;
    seal_of(&exe)
}

fn seal_of(f: &std::fs::File) -> Result<Seal> {
    let st = nix::sys::statvfs::fstatvfs(f).ctx("statvfs /proc/self/exe")?;
    if st.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY) {
        return Ok(Seal::ReadOnlyMount);
    }
    if let Ok(seals) = nix::fcntl::fcntl(f, nix::fcntl::FcntlArg::F_GET_SEALS) {
        let s = nix::fcntl::SealFlag::from_bits_truncate(seals);
        if s.contains(nix::fcntl::SealFlag::F_SEAL_WRITE) {
            return Ok(Seal::Memfd);
        }
    }
    Ok(Seal::None)
}

/// Makes sure this process runs from a sealed binary: returns at once when it does, else
/// re-execs itself (same argv, same environment plus the marker) from a sealed one and
/// does not return. Call it first thing, single-threaded, before any state is changed.
pub fn ensure_sealed() -> Result<()> {
    if let Some(v) = std::env::var_os(SEALED_ENV) {
        // (Single-threaded here: changing the environment is sound.)
        std::env::remove_var(SEALED_ENV);
        if let Some((d, i)) = v.to_str().and_then(|s| s.split_once(':')) {
            if let (Ok(d), Ok(i)) = (d.parse(), i.parse()) {
                let _ = IDENTITY.set((d, i));
            }
        }
        if current()? == Seal::None {
            crate::log::warn("the re-exec'd runtime binary is not sealed; carrying on");
        }
        return Ok(());
    }
    let exe = std::fs::File::open("/proc/self/exe").ctx("open /proc/self/exe")?;
    if seal_of(&exe)? != Seal::None {
        return Ok(());
    }
    let m = exe.metadata().ctx("stat /proc/self/exe")?;
    let sealed = match persistent_bind(&m) {
        Ok(fd) => fd,
        Err(e) => {
            crate::log::debug(&format!("persistent sealed binary: {e}"));
            match read_only_bind() {
                Ok(fd) => fd,
                Err(e) => {
                    crate::log::debug(&format!(
                        "read-only bind of the binary: {e}; using a memfd copy"
                    ));
                    memfd_copy(exe)?
                }
            }
        }
    };
    let argv: Vec<CString> = std::env::args_os().map(cstring).collect();
    let mut envp: Vec<CString> = std::env::vars_os()
        .map(|(k, v)| {
            let mut kv = k;
            kv.push("=");
            kv.push(v);
            cstring(kv)
        })
        .collect();
    envp.push(cstring(
        format!("{SEALED_ENV}={}:{}", m.dev(), m.ino()).into(),
    ));
    let e = sys::execveat_fd(sealed.as_raw_fd(), &argv, &envp);
    Err(Error::os("re-exec the runtime from its sealed binary", e))
}

fn cstring(s: OsString) -> CString {
    // Arguments and environment strings from the kernel never hold a NUL byte.
    CString::new(s.into_vec()).unwrap_or_default()
}

/// Where the persistent read-only binds of runtime binaries live (one per binary, named by
/// device and inode).
pub const SEALED_DIR: &str = "/run/rsrun-sealed";

/// A read-only bind mount of this binary at `SEALED_DIR/DEV-INO`, made by the first
/// invocation and kept: later ones only re-exec through it. (A detached mount per
/// invocation costs its teardown at every exit, an RCU grace period: milliseconds.)
fn persistent_bind(m: &std::fs::Metadata) -> Result<OwnedFd> {
    use nix::fcntl::{open, OFlag};
    use nix::mount::{mount, MsFlags};
    use nix::sys::stat::Mode;
    let dir = std::path::Path::new(SEALED_DIR);
    let name = format!("{}-{}", m.dev(), m.ino());
    let path = dir.join(&name);
    let usable = |p: &std::path::Path| -> Option<OwnedFd> {
        let fd = open(p, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty()).ok()?;
        let st = nix::sys::stat::fstat(&fd).ok()?;
        let ro = nix::sys::statvfs::fstatvfs(&fd)
            .ok()?
            .flags()
            .contains(nix::sys::statvfs::FsFlags::ST_RDONLY);
        (ro && st.st_dev == m.dev() && st.st_ino == m.ino()).then_some(fd)
    };
    if let Some(fd) = usable(&path) {
        return Ok(fd);
    }
    // First use: make it, one process at a time.
    if let Err(e) = std::fs::create_dir(dir) {
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            return Err(Error::os(format!("create {SEALED_DIR}"), e));
        }
    }
    let lock = std::fs::File::open(dir).with_ctx(|| format!("open {SEALED_DIR}"))?;
    nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| Error::os(format!("lock {SEALED_DIR}"), e))
        .and_then(|_guard| {
            if let Some(fd) = usable(&path) {
                return Ok(fd);
            }
            // A bind of an older binary at this name (its inode reused): replaced. Binds of
            // binaries deleted since (upgrades) go too.
            let _ = nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH);
            remove_stale_binds();
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .with_ctx(|| format!("create {}", path.display()))?;
            mount(
                Some("/proc/self/exe"),
                &path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .with_ctx(|| format!("bind the runtime binary to {}", path.display()))?;
            let ro = MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV;
            if let Err(e) = mount(None::<&str>, &path, None::<&str>, ro, None::<&str>) {
                let _ = nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH);
                return Err(Error::os(format!("make {} read-only", path.display()), e));
            }
            usable(&path).ok_or_else(|| {
                Error::Invalid(format!(
                    "{} is not a read-only bind of the runtime",
                    path.display()
                ))
            })
        })
}

/// Unmounts and removes the binds under SEALED_DIR whose binary was deleted.
fn remove_stale_binds() {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    for l in info.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        if f.len() > 4 && f[3].ends_with("//deleted") && f[4].starts_with(SEALED_DIR) {
            let p = std::path::Path::new(f[4]);
            if nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH).is_ok() {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// A detached bind mount of the binary file, made read-only (and nosuid, nodev): the
/// descriptor refers to the binary through that mount only.
fn read_only_bind() -> Result<OwnedFd> {
    let fd = sys::open_tree(libc::AT_FDCWD, c"/proc/self/exe", sys::OPEN_TREE_CLONE)
        .ctx("open_tree /proc/self/exe")?;
    sys::mount_setattr(
        fd.as_raw_fd(),
        sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV,
    )
    .ctx("mount_setattr read-only")?;
    Ok(fd)
}

/// A memfd copy of the binary, sealed against any write, growth or shrink.
fn memfd_copy(mut exe: std::fs::File) -> Result<OwnedFd> {
    use nix::fcntl::SealFlag;
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let fd = memfd_create(
        c"rsrun-sealed",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .ctx("memfd_create")?;
    let mut f = std::fs::File::from(fd);
    std::io::copy(&mut exe, &mut f).ctx("copy the runtime binary into a memfd")?;
    nix::fcntl::fcntl(
        &f,
        nix::fcntl::FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_SEAL
                | SealFlag::F_SEAL_SHRINK
                | SealFlag::F_SEAL_GROW
                | SealFlag::F_SEAL_WRITE,
        ),
    )
    .ctx("seal the memfd copy")?;
    Ok(OwnedFd::from(f))
}
