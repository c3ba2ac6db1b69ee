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
    let sealed = match read_only_bind() {
        Ok(fd) => fd,
        Err(e) => {
            crate::log::debug(&format!(
                "read-only bind of the binary: {e}; using a memfd copy"
            ));
            memfd_copy(exe)?
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
