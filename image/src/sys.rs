//! Thin wrappers over the Linux syscalls std does not expose. Every `unsafe` block is here.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
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

/// statfs(2)'s f_type of the filesystem `path` is on.
pub fn statfs_type(path: &Path) -> io::Result<i64> {
    let p = cpath(path)?;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: p is NUL-terminated; st points to writable memory of the right size.
    check(unsafe { libc::statfs(p.as_ptr(), st.as_mut_ptr()) })?;
    // SAFETY: statfs succeeded, so st is initialized.
    #[allow(clippy::unnecessary_cast)] // (f_type is i64 on x86-64, narrower elsewhere)
    Ok(unsafe { st.assume_init() }.f_type as i64)
}

/// openat(2) of the directory `name` in `dir`, not through a symlink.
pub fn open_subdir(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    openat(
        dir,
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )
}

/// renameat2(2) with RENAME_NOREPLACE: fails with EEXIST rather than replace `to`.
pub fn rename_noreplace(
    from_dir: BorrowedFd<'_>,
    from: &CStr,
    to_dir: BorrowedFd<'_>,
    to: &CStr,
) -> io::Result<()> {
    // SAFETY: plain syscall with NUL-terminated names and descriptors valid for the call.
    check(unsafe {
        libc::renameat2(
            from_dir.as_raw_fd(),
            from.as_ptr(),
            to_dir.as_raw_fd(),
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    })
    .map(drop)
}

/// Levels `remove_tree` descends before it moves what is deeper up.
const REMOVE_DEPTH: usize = 32;

/// Removes `path` and everything under it (a missing `path` is no error) with at most
/// [`REMOVE_DEPTH`] + 2 descriptors open, whatever the depth. std's `remove_dir_all` keeps
/// one descriptor per level: a tree deeper than the open-file limit (a container nests its
/// writable layer as deep as it likes; a layer may hold 2000 levels) failed with EMFILE,
/// and the collector's sweep and the container's removal failed on it at every attempt.
/// A directory found at that depth is renamed to `.deep-N` at the top of `path` (the
/// same filesystem, inside what is being removed) and emptied by the next pass.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    remove_tree_within(path, REMOVE_DEPTH)
}

fn remove_tree_within(path: &Path, max_depth: usize) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let root = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(f) => OwnedFd::from(f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        // A symlink (ELOOP) or anything else that is not a directory.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTDIR | libc::ELOOP)) => {
            return ignore_gone(std::fs::remove_file(path));
        }
        Err(e) => return Err(e),
    };
    let mut names = 0u64;
    loop {
        let mut moved = false;
        empty_dir(
            root.as_fd(),
            root.as_fd(),
            0,
            max_depth,
            &mut names,
            &mut moved,
        )?;
        if !moved {
            break;
        }
    }
    drop(root);
    ignore_gone(std::fs::remove_dir(path))
}

/// `r`, with a path that was not there taken as done.
pub(crate) fn ignore_gone(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// The names in `dir` and whether each is a directory (read through a descriptor of its
/// own, closed before returning).
fn dir_entries(dir: BorrowedFd<'_>) -> io::Result<Vec<(CString, bool)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))? {
        let e = e?;
        let name = cstr(e.file_name().as_bytes())?;
        let is_dir = match e.file_type() {
            Ok(t) => t.is_dir(),
            Err(_) => fstatat_nofollow(dir, &name)?.st_mode & libc::S_IFMT == libc::S_IFDIR,
        };
        out.push((name, is_dir));
    }
    Ok(out)
}

fn empty_dir(
    root: BorrowedFd<'_>,
    dir: BorrowedFd<'_>,
    depth: usize,
    max_depth: usize,
    names: &mut u64,
    moved: &mut bool,
) -> io::Result<()> {
    for (name, is_dir) in dir_entries(dir)? {
        if !is_dir {
            ignore_gone(unlinkat(dir, &name, false))?;
            continue;
        }
        if depth == max_depth {
            loop {
                let to = cstr(format!(".deep-{names}").as_bytes())?;
                *names += 1;
                match rename_noreplace(dir, &name, root, &to) {
                    Ok(()) => break,
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
                    Err(e) => return Err(e),
                }
            }
            *moved = true;
            continue;
        }
        let child = match open_subdir(dir, &name) {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        empty_dir(root, child.as_fd(), depth + 1, max_depth, names, moved)?;
        drop(child);
        ignore_gone(unlinkat(dir, &name, true))?;
    }
    Ok(())
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

pub use rsrun::sys::fsetxattr;

/// Whether `fd` (a directory) is marked opaque for overlayfs (`trusted.overlay.opaque=y`).
pub fn is_opaque(fd: BorrowedFd<'_>) -> bool {
    let mut v = [0u8; 2];
    // SAFETY: the name is NUL-terminated; v is writable for its length.
    let n = unsafe {
        libc::fgetxattr(
            fd.as_raw_fd(),
            c"trusted.overlay.opaque".as_ptr(),
            v.as_mut_ptr().cast(),
            v.len(),
        )
    };
    n == 1 && v[0] == b'y'
}

/// The value of the xattr `name` of `path` (a last symlink not followed); None when it has
/// none (or the filesystem keeps none).
pub fn lgetxattr(path: &CStr, name: &CStr) -> io::Result<Option<Vec<u8>>> {
    let mut v = vec![0u8; 4096];
    // SAFETY: path and name are NUL-terminated; v has v.len() writable bytes.
    let n =
        unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODATA) | Some(libc::EOPNOTSUPP) => Ok(None),
            _ => Err(e),
        };
    }
    v.truncate(n as usize);
    Ok(Some(v))
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

    /// A chain of `depth` directories under `top`, each with a file, a symlink and an empty
    /// sibling directory; made with two descriptors open at a time.
    fn deep_tree(top: &Path, depth: usize) {
        std::fs::create_dir_all(top).unwrap();
        let mut dir = OwnedFd::from(std::fs::File::open(top).unwrap());
        for i in 0..depth {
            let f = openat(dir.as_fd(), c"f", libc::O_WRONLY | libc::O_CREAT, 0o600).unwrap();
            drop(f);
            symlinkat(c"/etc/passwd", dir.as_fd(), c"l").unwrap();
            mkdirat(dir.as_fd(), c"empty", 0o755).unwrap();
            let name = cstr(format!("d{i}").as_bytes()).unwrap();
            mkdirat(dir.as_fd(), &name, 0o755).unwrap();
            dir = openat(dir.as_fd(), &name, libc::O_RDONLY | libc::O_DIRECTORY, 0).unwrap();
        }
    }

    #[test]
    fn remove_tree_moves_what_is_deeper_up_and_removes_everything() {
        let top = std::env::temp_dir().join(format!("rsrun-image-rmtree-{}", std::process::id()));
        deep_tree(&top.join("t"), 40);
        std::fs::write(top.join("t/.deep-0"), b"a name the moves must not replace").unwrap();
        remove_tree_within(&top.join("t"), 3).unwrap();
        assert!(!top.join("t").exists());
        // A file, a symlink (not followed) and a missing path.
        std::fs::write(top.join("file"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc", top.join("link")).unwrap();
        remove_tree(&top.join("file")).unwrap();
        remove_tree(&top.join("link")).unwrap();
        remove_tree(&top.join("missing")).unwrap();
        assert!(Path::new("/etc/passwd").exists());
        std::fs::remove_dir(&top).unwrap();
    }

    /// Under an open-file limit of 64, a tree 300 levels deep: std's remove_dir_all fails
    /// on it (EMFILE), remove_tree removes it. In a child process (the test binary again),
    /// so that the lowered limit does not reach the other tests' threads.
    #[test]
    fn remove_tree_goes_deeper_than_the_open_file_limit() {
        const CHILD: &str = "RSRUN_IMAGE_REMOVE_TREE_CHILD";
        let top = std::env::temp_dir().join(format!("rsrun-image-emfile-{}", std::process::id()));
        if let Some(dir) = std::env::var_os(CHILD) {
            let dir = std::path::PathBuf::from(dir);
            let lim = libc::rlimit {
                rlim_cur: 64,
                rlim_max: 64,
            };
            // SAFETY: setrlimit with a valid struct; this child process runs this test alone.
            assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
            deep_tree(&dir.join("std"), 300);
            deep_tree(&dir.join("ours"), 300);
            let e = std::fs::remove_dir_all(dir.join("std")).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "{e}");
            remove_tree(&dir.join("ours")).unwrap();
            assert!(!dir.join("ours").exists());
            remove_tree(&dir.join("std")).unwrap();
            println!("child: removed");
            return;
        }
        std::fs::create_dir_all(&top).unwrap();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "sys::tests::remove_tree_goes_deeper_than_the_open_file_limit",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, &top)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::remove_dir_all(&top);
        assert!(
            out.status.success() && text.contains("child: removed"),
            "{text}"
        );
    }

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
