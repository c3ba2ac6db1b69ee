//! Thin wrappers over the Linux syscalls std does not expose. Every `unsafe` block is here.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub fn cstr(b: &[u8]) -> io::Result<CString> {
    CString::new(b)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

pub fn cpath(p: &Path) -> io::Result<CString> {
    cstr(p.as_os_str().as_bytes())
}

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// openat2(2) with RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS: `path` must resolve inside `dir`,
/// symlinks included (a symlink pointing out of `dir` fails with EXDEV). The runtime's
/// wrapper, which retries the EAGAIN of a `..` step raced by a mount or rename elsewhere.
pub fn open_beneath(dir: BorrowedFd<'_>, path: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    rsrun::sys::openat2(
        dir.as_raw_fd(),
        path,
        flags,
        0,
        libc::RESOLVE_BENEATH | rsrun::sys::RESOLVE_NO_MAGICLINKS,
    )
}

/// openat(2) of a single component, never following a final symlink.
pub fn openat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    // SAFETY: name is NUL-terminated; dir is a valid descriptor for the call's duration.
    let fd = check(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    })?;
    // SAFETY: fd is a fresh descriptor returned by the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: plain syscall with a NUL-terminated name.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }).map(drop)
}

pub fn mknodat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    mode: libc::mode_t,
    dev: libc::dev_t,
) -> io::Result<()> {
    // SAFETY: plain syscall with a NUL-terminated name.
    check(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, dev) }).map(drop)
}

pub fn makedev(major: u32, minor: u32) -> libc::dev_t {
    libc::makedev(major, minor)
}

pub fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: plain syscall with NUL-terminated strings.
    check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
}

/// linkat(2) without AT_SYMLINK_FOLLOW: a symlink source is linked itself, never followed.
pub fn linkat(
    odir: BorrowedFd<'_>,
    oname: &CStr,
    ndir: BorrowedFd<'_>,
    nname: &CStr,
) -> io::Result<()> {
    // SAFETY: plain syscall with NUL-terminated names.
    check(unsafe {
        libc::linkat(
            odir.as_raw_fd(),
            oname.as_ptr(),
            ndir.as_raw_fd(),
            nname.as_ptr(),
            0,
        )
    })
    .map(drop)
}

pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, is_dir: bool) -> io::Result<()> {
    let flags = if is_dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: plain syscall with a NUL-terminated name.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

/// lstat of one entry in a directory.
pub fn fstatat_nofollow(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: st points to writable memory of the right size; on success the kernel filled it.
    check(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat succeeded, so st is initialized.
    Ok(unsafe { st.assume_init() })
}

pub fn fchownat_nofollow(dir: BorrowedFd<'_>, name: &CStr, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: plain syscall with a NUL-terminated name.
    check(unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            name.as_ptr(),
            uid,
            gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// fchmodat(2) of a name known not to be a symlink (Linux cannot chmod a symlink).
pub fn fchmodat(dir: BorrowedFd<'_>, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: plain syscall with a NUL-terminated name.
    check(unsafe { libc::fchmodat(dir.as_raw_fd(), name.as_ptr(), mode, 0) }).map(drop)
}

pub fn fchmod(fd: BorrowedFd<'_>, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    check(unsafe { libc::fchmod(fd.as_raw_fd(), mode) }).map(drop)
}

pub fn fchown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    check(unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) }).map(drop)
}

/// Sets atime and mtime of `name` (not following symlinks); an empty name means `dir` itself.
pub fn utimensat_nofollow(
    dir: BorrowedFd<'_>,
    name: &CStr,
    secs: i64,
    nsecs: i64,
) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: nsecs as _,
    };
    let times = [ts, ts];
    let flags = if name.is_empty() {
        libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW
    } else {
        libc::AT_SYMLINK_NOFOLLOW
    };
    // SAFETY: times is an array of two valid timespecs; name is NUL-terminated.
    check(unsafe { libc::utimensat(dir.as_raw_fd(), name.as_ptr(), times.as_ptr(), flags) })
        .map(drop)
}

pub fn futimens(fd: BorrowedFd<'_>, secs: i64, nsecs: i64) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: nsecs as _,
    };
    let times = [ts, ts];
    // SAFETY: times is an array of two valid timespecs.
    check(unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) }).map(drop)
}

pub fn fsetxattr(fd: BorrowedFd<'_>, name: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: name is NUL-terminated; value points to value.len() readable bytes.
    check(unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
    .map(drop)
}

pub fn lsetxattr(path: &CStr, name: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: path and name are NUL-terminated; value points to value.len() readable bytes.
    check(unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
    .map(drop)
}

/// flock(2). `exclusive` or shared; `nonblock` returns WouldBlock instead of waiting.
pub fn flock(fd: BorrowedFd<'_>, exclusive: bool, nonblock: bool) -> io::Result<()> {
    let mut op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    };
    if nonblock {
        op |= libc::LOCK_NB;
    }
    // SAFETY: plain syscall on a valid fd.
    check(unsafe { libc::flock(fd.as_raw_fd(), op) }).map(drop)
}

/// syncfs(2): flushes the filesystem holding `fd`.
pub fn syncfs(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    check(unsafe { libc::syncfs(fd.as_raw_fd()) }).map(drop)
}

pub fn mount(
    source: &str,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let src = cstr(source.as_bytes())?;
    let tgt = cpath(target)?;
    let fst = fstype.map(|f| cstr(f.as_bytes())).transpose()?;
    let dat = data.map(|d| cstr(d.as_bytes())).transpose()?;
    // SAFETY: all pointers are NUL-terminated strings or null, valid for the call's duration.
    check(unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            fst.as_ref().map_or(std::ptr::null(), |f| f.as_ptr()),
            flags,
            dat.as_ref().map_or(std::ptr::null(), |d| d.as_ptr().cast()),
        )
    })
    .map(drop)
}

pub fn umount(target: &Path, detach: bool) -> io::Result<()> {
    let tgt = cpath(target)?;
    let flags = if detach { libc::MNT_DETACH } else { 0 };
    // SAFETY: tgt is NUL-terminated.
    check(unsafe { libc::umount2(tgt.as_ptr(), flags) }).map(drop)
}

/// What the filesystem holding `path` has free for unprivileged users (statvfs).
#[derive(Debug, Clone, Copy)]
pub struct Free {
    /// Bytes (f_bavail).
    pub bytes: u64,
    /// Inodes (f_favail), and how many there are (f_files: 0 where the filesystem makes them
    /// as needed, as btrfs does).
    pub inodes: u64,
    pub inodes_total: u64,
}

pub fn free_space(path: &Path) -> io::Result<Free> {
    let p = cpath(path)?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: p is NUL-terminated; st points to writable memory of the right size.
    check(unsafe { libc::statvfs(p.as_ptr(), st.as_mut_ptr()) })?;
    // SAFETY: statvfs succeeded, so st is initialized.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)] // u32 fields on some targets
    Ok(Free {
        bytes: (st.f_bavail as u64).saturating_mul(st.f_frsize as u64),
        inodes: st.f_favail as u64,
        inodes_total: st.f_files as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// Layers hold relative symlinks such as `lib -> usr/../usr/lib`; resolving their ".."
    /// under RESOLVE_BENEATH fails with EAGAIN whenever a rename or mount happens anywhere on
    /// the node meanwhile (snapshots are mounted as pulls unpack). The open must still succeed.
    #[test]
    fn open_beneath_through_dotdot_symlinks_survives_renames_elsewhere() {
        let dir = std::env::temp_dir().join(format!("rsrun-image-beneath-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("usr/lib")).unwrap();
        std::fs::write(dir.join("usr/lib/libc.so"), b"x").unwrap();
        std::os::unix::fs::symlink("usr/../usr/lib", dir.join("lib")).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let other =
            std::env::temp_dir().join(format!("rsrun-image-renames-{}", std::process::id()));
        let renamer = {
            let (stop, other) = (stop.clone(), other.clone());
            std::thread::spawn(move || {
                std::fs::write(&other, b"").unwrap();
                let moved = other.with_extension("moved");
                while !stop.load(Ordering::Relaxed) {
                    std::fs::rename(&other, &moved).unwrap();
                    std::fs::rename(&moved, &other).unwrap();
                }
                std::fs::remove_file(&other).unwrap();
            })
        };
        let root = std::fs::File::open(&dir).unwrap();
        let path = c"lib/libc.so";
        let failed = (0..20_000)
            .filter_map(|_| open_beneath(root.as_fd(), path, libc::O_RDONLY).err())
            .collect::<Vec<_>>();
        stop.store(true, Ordering::Relaxed);
        renamer.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            failed.is_empty(),
            "{} of 20000 opens failed: {:?}",
            failed.len(),
            failed.first()
        );
    }
}
