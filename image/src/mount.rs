//! Overlay mounts of image layers: container rootfs (own upper/work, copy-on-write) and
//! read-only views, with the overlay option length limit handled.

use crate::error::{Error, Result};
use crate::sys;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The kernel copies mount data into one page; the options must fit in it.
const MAX_OPTIONS: usize = 4095;

/// Mounts an overlay at `target`. `lowers` are ordered top-most first (overlayfs order).
/// With `upper` = Some((upperdir, workdir)) the mount is writable copy-on-write; without it
/// it is read-only; `inspect` adds nosuid,nodev. When the option string would not fit in a page (many layers, long
/// paths), the lowerdirs are passed as short `/proc/self/fd/N` paths of open descriptors.
pub fn mount_overlay(
    target: &Path,
    lowers: &[PathBuf],
    upper: Option<(&Path, &Path)>,
    readonly: bool,
    inspect: bool,
) -> Result<()> {
    if lowers.is_empty() {
        return Err(Error::InvalidConfig(
            "overlay needs at least one lower directory".into(),
        ));
    }
    for p in lowers
        .iter()
        .map(PathBuf::as_path)
        .chain(upper.iter().flat_map(|(u, w)| [*u, *w]))
        .chain([target])
    {
        let s = p.to_string_lossy();
        if s.contains(',') || s.contains(':') || s.contains('\\') {
            return Err(Error::InvalidConfig(format!(
                "path {s:?} contains ',', ':' or '\\', which overlay options cannot carry"
            )));
        }
    }
    let mut flags: libc::c_ulong = 0;
    if readonly {
        flags |= libc::MS_RDONLY;
    }
    // An operator's inspection mount shows untrusted image content in the host's mount
    // namespace: its setuid binaries and device nodes must not work there.
    if inspect {
        flags |= libc::MS_NOSUID | libc::MS_NODEV;
    }
    let tail = match upper {
        Some((u, w)) => format!(",upperdir={},workdir={}", u.display(), w.display()),
        None => String::new(),
    };
    let direct = format!(
        "lowerdir={}{tail}",
        lowers
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    );
    if direct.len() <= MAX_OPTIONS {
        return sys::mount("overlay", target, Some("overlay"), flags, Some(&direct))
            .map_err(|e| Error::io("mounting overlay on", target, e));
    }
    // Too long: open every lowerdir and refer to it through its descriptor.
    let mut fds = Vec::with_capacity(lowers.len());
    for l in lowers {
        fds.push(File::open(l).map_err(|e| Error::io("opening lowerdir", l, e))?);
    }
    let short = format!(
        "lowerdir={}{tail}",
        fds.iter()
            .map(|f| format!("/proc/self/fd/{}", f.as_raw_fd()))
            .collect::<Vec<_>>()
            .join(":")
    );
    if short.len() > MAX_OPTIONS {
        return Err(Error::InvalidConfig(format!(
            "{} layers are too many for one overlay mount",
            lowers.len()
        )));
    }
    let r = sys::mount("overlay", target, Some("overlay"), flags, Some(&short))
        .map_err(|e| Error::io("mounting overlay on", target, e));
    drop(fds);
    r
}

/// `lowers` (top first) with each directory kept only at its top-most place: an image may
/// list a layer twice (a builder's step that changed nothing makes the same empty layer
/// each time), and overlayfs refuses a lowerdir given twice (ELOOP, "conflicting lowerdir
/// path"). The view is the same: a layer's second place, below its first, only holds
/// what the first already shows, and its whiteouts hide what the first's hide.
pub fn distinct_lowers(lowers: Vec<PathBuf>) -> Vec<PathBuf> {
    let mut seen = std::collections::HashSet::new();
    lowers
        .into_iter()
        .filter(|l| seen.insert(l.clone()))
        .collect()
}

/// Unmounts `target`; not mounted is fine; busy falls back to a lazy detach.
pub fn unmount(target: &Path) -> Result<()> {
    match sys::umount(target, false) {
        Ok(()) => Ok(()),
        Err(e)
            if e.raw_os_error() == Some(libc::EINVAL) || e.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            sys::umount(target, true).map_err(|e| Error::io("unmounting", target, e))
        }
        Err(e) => Err(Error::io("unmounting", target, e)),
    }
}

/// Is an overlay mounted at `path` (the top of what is mounted there)?
pub fn is_overlay_mount(path: &Path) -> bool {
    const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;
    use std::os::unix::fs::MetadataExt;
    let (Ok(here), Ok(parent)) = (
        std::fs::symlink_metadata(path),
        std::fs::symlink_metadata(path.join("..")),
    ) else {
        return false;
    };
    // A mount point's device differs from its parent's; an overlay's directory inside a
    // larger overlay (a node whose own / is one) does not.
    (here.dev() != parent.dev() || here.ino() == parent.ino())
        && sys::statfs_type(path).is_ok_and(|t| t == OVERLAYFS_SUPER_MAGIC)
}

/// Is `path` a mount point (per /proc/self/mountinfo)?
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|m| unescape(m) == want))
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v as char);
                i += 4;
                continue;
            }
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}
