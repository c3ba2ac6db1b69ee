//! Layer unpacking into a snapshot directory that overlayfs uses as a lowerdir.
//!
//! Every path is resolved with openat2(RESOLVE_BENEATH) from the layer directory, and the
//! final component is created with *at() calls that never follow it, so no entry can touch
//! anything outside the layer: `..` components and absolute paths are refused outright,
//! writes through a symlink that points out fail with EXDEV and refuse the layer, hardlink
//! targets obey the same rules, and GNU sparse entries larger than a limit are refused.
//! OCI whiteouts become overlayfs whiteouts: `.wh.NAME` → a 0/0 character device NAME,
//! `.wh..wh..opq` → `trusted.overlay.opaque=y` on the directory.

use crate::error::{Error, Result};
use crate::sys;
use std::cell::Cell;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use tar::EntryType;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";
const AUFS_META: &[u8] = b".wh..wh.";

#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// Largest logical size accepted for the GNU sparse entries of a layer together (their
    /// holes are not in the archive, so a tiny layer could otherwise describe files of
    /// petabytes, or thousands of 1 GiB files whose zeros the reader fills in and scans for
    /// hours).
    pub max_sparse_size: u64,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        UnpackOptions {
            max_sparse_size: 1 << 30,
        }
    }
}

/// Most tar bytes read between one entry's data and the next's: the next entry's header and
/// what describes it (a GNU long name, a GNU long link, a PAX extended header, GNU sparse
/// extension blocks). The tar reader holds all of these in memory (a long name of gigabytes
/// compresses to a few megabytes), so a layer over this is refused. Go's archive/tar, which
/// containerd uses, allows 1 MiB for each of the first three.
const MAX_HEADER_BYTES: u64 = 4 << 20;

/// The layer's tar stream, counted: reads stop at `limit`, which the unpacker moves past each
/// entry's data as it reaches it, so only headers are bounded.
struct HeaderBudget<'c, R> {
    inner: R,
    pos: &'c Cell<u64>,
    limit: &'c Cell<u64>,
    tripped: &'c Cell<bool>,
}

impl<R: Read> Read for HeaderBudget<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let room = self.limit.get().saturating_sub(self.pos.get());
        if room == 0 && !buf.is_empty() {
            self.tripped.set(true);
            return Err(io::Error::other("tar headers over the limit"));
        }
        let take = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..take])?;
        self.pos.set(self.pos.get() + n as u64);
        Ok(n)
    }
}

/// The bytes the archive holds for `entry`'s data, as the tar reader skips them: its size,
/// except for a GNU sparse entry, whose size is the logical one; the archive holds the PAX
/// `size` record's value if there is a valid one, else the header's size.
fn stored_size<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<u64> {
    if entry.header().entry_type() != EntryType::GNUSparse {
        return Ok(entry.size());
    }
    let pax_size = entry.pax_extensions()?.and_then(|pax| {
        for ext in pax {
            let ext = ext.ok()?;
            if ext.key() == Ok("size") {
                return ext.value().ok()?.parse::<u64>().ok();
            }
        }
        None
    });
    match pax_size {
        Some(n) => Ok(n),
        None => entry.header().entry_size(),
    }
}

#[derive(Debug, Default, Clone)]
pub struct UnpackStats {
    pub entries: u64,
    pub bytes: u64,
    /// Directories the layer has no entry for (made, 0755 root, for entries below them):
    /// their metadata is the layers' below, which the pull gives them (`inherit_parents`).
    /// Shortest first.
    pub implicit_dirs: Vec<Vec<u8>>,
}

struct Unpacker<'a> {
    root: OwnedFd,
    dest: PathBuf,
    layer: &'a str,
    opts: &'a UnpackOptions,
    cache: Option<(Vec<u8>, OwnedFd)>,
    /// Each directory's mtime, set at the end (its last entry's: a repeated entry replaces,
    /// so repeats of one path cost no memory).
    dir_times: std::collections::HashMap<Vec<u8>, (i64, i64)>,
    buf: Vec<u8>,
    stats: UnpackStats,
    /// The logical sizes of the layer's sparse entries so far.
    sparse_total: u64,
    /// The directories made for entries below them and given no entry of their own (yet).
    implicit: std::cell::RefCell<std::collections::HashSet<Vec<u8>>>,
}

struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    xattrs: Vec<(CString, Vec<u8>)>,
}

/// Unpacks an uncompressed tar stream into the existing, empty directory `dest`.
pub fn unpack<R: Read>(
    reader: R,
    dest: &Path,
    layer: &str,
    opts: &UnpackOptions,
) -> Result<UnpackStats> {
    let root = File::open(dest).map_err(|e| Error::io("opening layer directory", dest, e))?;
    let root: OwnedFd = root.into();
    let mut u = Unpacker {
        root,
        dest: dest.to_path_buf(),
        layer,
        opts,
        cache: None,
        dir_times: std::collections::HashMap::new(),
        buf: vec![0; 256 * 1024],
        stats: UnpackStats::default(),
        sparse_total: 0,
        implicit: Default::default(),
    };
    let pos = Cell::new(0);
    let limit = Cell::new(MAX_HEADER_BYTES);
    let tripped = Cell::new(false);
    let budget = HeaderBudget {
        inner: reader,
        pos: &pos,
        limit: &limit,
        tripped: &tripped,
    };
    let mut archive = tar::Archive::new(budget);
    let entries = archive
        .entries()
        .map_err(|e| u.bad("", format!("reading tar: {e}")))?;
    let mut last = String::new();
    for entry in entries {
        let mut entry = entry.map_err(|e| {
            let after = if last.is_empty() {
                "at the start of the layer".to_string()
            } else {
                format!("after entry {last:?}")
            };
            if tripped.get() {
                u.hostile(
                    "",
                    format!(
                        "over {} MiB of tar headers {after} (GNU long name and link, PAX \
                         extended header, GNU sparse map) describing one entry",
                        MAX_HEADER_BYTES >> 20
                    ),
                )
            } else {
                u.bad("", format!("reading tar {after}: {e}"))
            }
        })?;
        // The tar reader is now at the entry's data; what follows its data, up to the next
        // entry's data, is headers the reader keeps in memory.
        let stored = stored_size(&mut entry).map_err(|e| u.bad("", format!("reading tar: {e}")))?;
        limit.set(
            pos.get()
                .saturating_add(stored.div_ceil(512).saturating_mul(512))
                .saturating_add(MAX_HEADER_BYTES),
        );
        last = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        u.entry(&mut entry)?;
        u.stats.entries += 1;
    }
    u.finish()?;
    let mut implicit: Vec<Vec<u8>> = u.implicit.take().into_iter().collect();
    implicit.sort_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
    u.stats.implicit_dirs = implicit;
    Ok(u.stats)
}

/// Gives each directory of `dirs` (a layer's implicit ones, `UnpackStats::implicit_dirs`)
/// in the unpacked layer `layer` the owner, mode and mtime the same directory has in the
/// layers below, `lowers` (top-most first) merged as overlayfs merges them, as containerd
/// copies them from the parents when it makes a parent an entry needs: a layer that adds
/// `tmp/x` without a `tmp/` entry otherwise shows `/tmp` as 0755 root over the base's 1777
/// (an overlay directory takes the upper-most layer's metadata). A directory no lower layer
/// shows, or that the layer has replaced or removed since, is left as it is.
pub fn inherit_parents(layer: &Path, lowers: &[PathBuf], dirs: &[Vec<u8>]) -> Result<()> {
    if dirs.is_empty() {
        return Ok(());
    }
    let open_dir = |p: &Path| -> Result<OwnedFd> {
        File::open(p)
            .map(OwnedFd::from)
            .map_err(|e| Error::io("opening layer directory", p, e))
    };
    let root = open_dir(layer)?;
    let lowers: Vec<OwnedFd> = lowers.iter().map(|l| open_dir(l)).collect::<Result<_>>()?;
    for d in dirs {
        let comps: Vec<&[u8]> = d.split(|b| *b == b'/').filter(|c| !c.is_empty()).collect();
        // This layer's own opaque directories (its `.wh..wh..opq`, or a whiteout of a name
        // it made) at the directory or above it: nothing below shows through there.
        if own_opaque(root.as_fd(), &comps) {
            continue;
        }
        let Some(st) = merged_dir(&lowers, &comps) else {
            continue;
        };
        let Ok(path) = sys::cstr(d) else { continue };
        let fd = match sys::open_beneath(
            root.as_fd(),
            &path,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        ) {
            Ok(fd) => fd,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP)
                ) =>
            {
                continue;
            }
            Err(e) => {
                return Err(Error::io(
                    "opening",
                    layer.join(String::from_utf8_lossy(d).as_ref()),
                    e,
                ))
            }
        };
        let shown = || layer.join(String::from_utf8_lossy(d).as_ref());
        sys::fchown(fd.as_fd(), st.st_uid, st.st_gid)
            .map_err(|e| Error::io("chown", shown(), e))?;
        sys::fchmod(fd.as_fd(), st.st_mode & 0o7777).map_err(|e| Error::io("chmod", shown(), e))?;
        sys::futimens(fd.as_fd(), st.st_mtime, st.st_mtime_nsec)
            .map_err(|e| Error::io("setting the times of", shown(), e))?;
    }
    Ok(())
}

/// Whether a directory at `comps` or above it in the layer at `root` is opaque (a component
/// that cannot be opened counts as not: the caller finds it gone).
fn own_opaque(root: BorrowedFd<'_>, comps: &[&[u8]]) -> bool {
    let mut cur: Option<OwnedFd> = None;
    for c in comps {
        let dir = cur.as_ref().map_or(root, |f| f.as_fd());
        let Ok(name) = sys::cstr(c) else { return false };
        match sys::open_subdir(dir, &name) {
            Ok(fd) if sys::is_opaque(fd.as_fd()) => return true,
            Ok(fd) => cur = Some(fd),
            Err(_) => return false,
        }
    }
    false
}

/// The directory at `comps` as the layers `lowers` (top-most first) show it merged: the
/// upper-most one that has it, unless a whiteout, a non-directory or an opaque directory
/// above hides it.
fn merged_dir(lowers: &[OwnedFd], comps: &[&[u8]]) -> Option<libc::stat> {
    let is_dir = |st: &libc::stat| st.st_mode & libc::S_IFMT == libc::S_IFDIR;
    'layers: for root in lowers {
        let mut cur: Option<OwnedFd> = None;
        // Whether a directory of this layer above the path is opaque: then the layers
        // below show nothing of what this one lacks under it.
        let mut opaque = false;
        for (j, c) in comps.iter().enumerate() {
            let dir = cur.as_ref().map_or(root.as_fd(), |f| f.as_fd());
            opaque |= j > 0 && sys::is_opaque(dir);
            let name = sys::cstr(c).ok()?;
            let Ok(st) = sys::fstatat_nofollow(dir, &name) else {
                if opaque {
                    return None;
                }
                continue 'layers;
            };
            if !is_dir(&st) {
                // A whiteout, a file or a symlink: nothing below shows through.
                return None;
            }
            if j + 1 == comps.len() {
                return Some(st);
            }
            cur = Some(sys::open_subdir(dir, &name).ok()?);
        }
    }
    None
}

fn clean_path(p: &[u8]) -> std::result::Result<Vec<&[u8]>, &'static str> {
    if p.first() == Some(&b'/') {
        return Err("absolute path");
    }
    let mut out = Vec::new();
    for c in p.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("path has a '..' component"),
            c => out.push(c),
        }
    }
    Ok(out)
}

fn is_prefix_path(prefix: &[u8], path: &[u8]) -> bool {
    path == prefix
        || (path.len() > prefix.len() && path.starts_with(prefix) && path[prefix.len()] == b'/')
}

impl Unpacker<'_> {
    fn hostile(&self, entry: &str, reason: impl Into<String>) -> Error {
        Error::HostileLayer {
            layer: self.layer.to_string(),
            entry: entry.to_string(),
            reason: crate::text::clean_unbounded(&reason.into()),
        }
    }
    fn bad(&self, entry: &str, reason: impl Into<String>) -> Error {
        let r = reason.into();
        let entry = if entry.is_empty() {
            String::new()
        } else {
            format!("entry {entry:?}: ")
        };
        // Reasons may quote the layer's bytes (the tar reader's messages do).
        Error::BadLayer {
            layer: self.layer.to_string(),
            reason: crate::text::clean_unbounded(&format!("{entry}{r}")),
        }
    }
    fn os_err(&self, entry: &str, action: &str, e: io::Error) -> Error {
        match e.raw_os_error() {
            Some(libc::EXDEV) => self.hostile(
                entry,
                format!("{action}: path resolves outside the layer through a symlink"),
            ),
            Some(libc::ELOOP) => self.hostile(entry, format!("{action}: too many symlinks")),
            _ => self.bad(entry, format!("{action}: {e}")),
        }
    }

    /// The directory holding `parent` (components), created (0755) if missing.
    fn parent_fd(&mut self, parent: &[&[u8]], shown: &str) -> Result<BorrowedFd<'_>> {
        if parent.is_empty() {
            return Ok(self.root.as_fd());
        }
        let joined = parent.join(&b'/');
        let hit = self.cache.as_ref().is_some_and(|(p, _)| *p == joined);
        if !hit {
            let fd = self.resolve_dir(parent, shown)?;
            self.cache = Some((joined, fd));
        }
        Ok(self
            .cache
            .as_ref()
            .map(|(_, fd)| fd.as_fd())
            .unwrap_or(self.root.as_fd()))
    }

    fn resolve_dir(&self, parent: &[&[u8]], shown: &str) -> Result<OwnedFd> {
        let joined = sys::cstr(&parent.join(&b'/')).map_err(|e| self.bad(shown, e.to_string()))?;
        match sys::open_beneath(self.root.as_fd(), &joined, libc::O_PATH | libc::O_DIRECTORY) {
            Ok(fd) => return Ok(fd),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(self.os_err(shown, "opening parent directory", e)),
        }
        // Create missing parents one by one (tars may omit directory entries).
        let mut cur: Option<OwnedFd> = None;
        for (i, comp) in parent.iter().enumerate() {
            let dir = cur.as_ref().map(|f| f.as_fd()).unwrap_or(self.root.as_fd());
            let name = sys::cstr(comp).map_err(|e| self.bad(shown, e.to_string()))?;
            match sys::mkdirat(dir, &name, 0o755) {
                // 0755 whatever the process's umask (a server run with umask 077 made them
                // 0700: a container's non-root user could not reach what is below).
                Ok(()) => {
                    sys::fchmodat(dir, &name, 0o755).map_err(|e| {
                        self.os_err(shown, "setting the mode of a parent directory", e)
                    })?;
                    self.implicit.borrow_mut().insert(parent[..=i].join(&b'/'));
                }
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(self.os_err(shown, "creating parent directory", e)),
            }
            let sub =
                sys::cstr(&parent[..=i].join(&b'/')).map_err(|e| self.bad(shown, e.to_string()))?;
            cur = Some(
                sys::open_beneath(self.root.as_fd(), &sub, libc::O_PATH | libc::O_DIRECTORY)
                    .map_err(|e| self.os_err(shown, "opening parent directory", e))?,
            );
        }
        cur.ok_or_else(|| self.bad(shown, "empty parent"))
    }

    fn invalidate(&mut self, path: &[u8]) {
        if self
            .cache
            .as_ref()
            .is_some_and(|(c, _)| is_prefix_path(path, c))
        {
            self.cache = None;
        }
    }

    /// Marks directory `name` in `dir` opaque for overlayfs (it replaces the lower layers'
    /// directory instead of merging with it).
    fn mark_opaque(&self, dir: BorrowedFd<'_>, name: &std::ffi::CStr, shown: &str) -> Result<()> {
        let d = sys::openat(
            dir,
            name,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )
        .map_err(|e| self.os_err(shown, "opening directory", e))?;
        sys::fsetxattr(d.as_fd(), c"trusted.overlay.opaque", b"y")
            .map_err(|e| self.bad(shown, format!("marking directory opaque: {e}")))
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader) {
            return Ok(());
        }
        // Data after a header-only entry (a directory, link, device or fifo; a name ending
        // in '/'): Go's archive/tar, which containerd and image scanners read layers with,
        // takes none and reads the next header right after; the tar crate skips the header's
        // size. The two would see different files from there on.
        let header_only = matches!(
            kind,
            EntryType::Directory
                | EntryType::Symlink
                | EntryType::Link
                | EntryType::Char
                | EntryType::Block
                | EntryType::Fifo
        ) || raw_path.ends_with(b"/");
        if header_only && entry.size() > 0 {
            return Err(self.hostile(
                &shown,
                format!(
                    "a {kind:?} entry with {} bytes of data (tar readers disagree on where \
                     the next header is)",
                    entry.size()
                ),
            ));
        }
        // A PAX header that says `size`, `path` or `linkpath` twice: the tar crate takes the
        // first, Go's archive/tar (containerd, image scanners) the last. With two sizes the
        // two read different entries from there on, with two paths a different file.
        if let Some(pax) = entry
            .pax_extensions()
            .map_err(|e| self.bad(&shown, format!("PAX header: {e}")))?
        {
            let mut seen = [false; 3];
            for ext in pax {
                let ext = ext.map_err(|e| self.bad(&shown, format!("PAX header: {e}")))?;
                let i = match ext.key_bytes() {
                    b"size" => 0,
                    b"path" => 1,
                    b"linkpath" => 2,
                    _ => continue,
                };
                if std::mem::replace(&mut seen[i], true) {
                    return Err(self.hostile(
                        &shown,
                        format!(
                            "a PAX header with two `{}` records (tar readers disagree on which \
                             counts)",
                            String::from_utf8_lossy(ext.key_bytes())
                        ),
                    ));
                }
            }
        }
        let comps = clean_path(&raw_path).map_err(|r| self.hostile(&shown, r))?;
        let meta = self.meta(entry, &shown)?;
        if comps.is_empty() {
            // "./": the layer root's own metadata.
            if kind.is_dir() {
                std::os::unix::fs::chown(&self.dest, Some(meta.uid), Some(meta.gid))
                    .map_err(|e| self.bad(&shown, format!("chown: {e}")))?;
                std::fs::set_permissions(
                    &self.dest,
                    std::os::unix::fs::PermissionsExt::from_mode(meta.mode),
                )
                .map_err(|e| self.bad(&shown, format!("chmod: {e}")))?;
                self.dir_times
                    .insert(Vec::new(), (meta.mtime.0, meta.mtime.1));
                return Ok(());
            }
            return Err(self.hostile(&shown, "non-directory entry for the layer root"));
        }
        let (name, parent) = comps.split_last().expect("non-empty");
        let name = *name;
        // AUFS metadata (`.wh..wh.plnk/…`, `.wh..wh.aufs`): no meaning for overlay, skipped
        // with whatever is below it.
        if parent.iter().any(|c| c.starts_with(AUFS_META)) {
            return Ok(());
        }
        let full = comps.join(&b'/');

        // Whiteouts.
        if name == OPAQUE {
            let dir = self
                .parent_fd(parent, &shown)?
                .try_clone_to_owned()
                .map_err(|e| self.bad(&shown, e.to_string()))?;
            let d = sys::openat(dir.as_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)
                .map_err(|e| self.os_err(&shown, "opening directory", e))?;
            sys::fsetxattr(d.as_fd(), c"trusted.overlay.opaque", b"y")
                .map_err(|e| self.bad(&shown, format!("marking directory opaque: {e}")))?;
            return Ok(());
        }
        if let Some(target) = name.strip_prefix(WHITEOUT_PREFIX) {
            if target.starts_with(WHITEOUT_PREFIX) {
                return Ok(()); // AUFS metadata (.wh..wh.plnk etc.): no meaning for overlay.
            }
            if target.is_empty() || target == b"." || target == b".." || target.contains(&b'/') {
                return Err(self.hostile(&shown, "whiteout of an invalid name"));
            }
            let mut tpath = parent.join(&b'/');
            if !tpath.is_empty() {
                tpath.push(b'/');
            }
            tpath.extend_from_slice(target);
            self.invalidate(&tpath);
            let dir = self
                .parent_fd(parent, &shown)?
                .try_clone_to_owned()
                .map_err(|e| self.bad(&shown, e.to_string()))?;
            let tname = sys::cstr(target).map_err(|e| self.bad(&shown, e.to_string()))?;
            // A layer is unpacked into a directory of its own: whatever is there was made by
            // this layer, and a whiteout applies only to the layers below it (image spec),
            // which this layer's entry shadows anyway: kept. A file does shadow them; a
            // directory would merge with theirs (the files the whiteout deleted would come
            // back): it replaces them, opaque, as when the whiteout comes first.
            if let Ok(st) = sys::fstatat_nofollow(dir.as_fd(), &tname) {
                if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                    self.mark_opaque(dir.as_fd(), &tname, &shown)?;
                }
                return Ok(());
            }
            sys::mknodat(dir.as_fd(), &tname, libc::S_IFCHR, sys::makedev(0, 0))
                .map_err(|e| self.os_err(&shown, "creating whiteout", e))?;
            return Ok(());
        }

        self.invalidate(&full);
        let cname = sys::cstr(name).map_err(|e| self.bad(&shown, e.to_string()))?;
        let dir = self
            .parent_fd(parent, &shown)?
            .try_clone_to_owned()
            .map_err(|e| self.bad(&shown, e.to_string()))?;
        let dir = dir.as_fd();
        let existing = sys::fstatat_nofollow(dir, &cname).ok();
        let existing_is_dir = existing.is_some_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR);

        match kind {
            EntryType::Directory => {
                self.implicit.borrow_mut().remove(&full);
                if existing.is_some() && !existing_is_dir {
                    self.remove_existing(dir, &cname, &shown)?;
                }
                if !existing_is_dir {
                    sys::mkdirat(dir, &cname, 0o700)
                        .map_err(|e| self.os_err(&shown, "mkdir", e))?;
                }
                // A directory made after this layer's whiteout of its name replaces the
                // layers' below instead of merging with it: opaque, as overlayfs makes a
                // directory created where a whiteout was (and as containerd, applying the
                // layer onto the mounted layers below, gets).
                if existing
                    .is_some_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == 0)
                {
                    self.mark_opaque(dir, &cname, &shown)?;
                }
                sys::fchownat_nofollow(dir, &cname, meta.uid, meta.gid)
                    .map_err(|e| self.bad(&shown, format!("chown: {e}")))?;
                // xattrs before the mode (here and below), as containerd: an ACL's mask
                // would otherwise rewrite the group bits the header gives.
                if !meta.xattrs.is_empty() {
                    let d = sys::openat(
                        dir,
                        &cname,
                        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                        0,
                    )
                    .map_err(|e| self.os_err(&shown, "opening directory", e))?;
                    self.set_xattrs_fd(d.as_fd(), &meta, &shown)?;
                }
                sys::fchmodat(dir, &cname, meta.mode)
                    .map_err(|e| self.bad(&shown, format!("chmod: {e}")))?;
                self.dir_times.insert(full, (meta.mtime.0, meta.mtime.1));
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let sparse = kind == EntryType::GNUSparse;
                let size = entry.size();
                if sparse {
                    self.sparse_total = self.sparse_total.saturating_add(size);
                    if self.sparse_total > self.opts.max_sparse_size {
                        return Err(self.hostile(
                            &shown,
                            format!(
                                "sparse file expands to {size} bytes, {} with the layer's other sparse files (limit {})",
                                self.sparse_total, self.opts.max_sparse_size
                            ),
                        ));
                    }
                }
                if existing.is_some() {
                    self.remove_existing(dir, &cname, &shown)?;
                }
                let fd = sys::openat(
                    dir,
                    &cname,
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                    0o600,
                )
                .map_err(|e| self.os_err(&shown, "creating file", e))?;
                let mut f = File::from(fd);
                let written = self
                    .copy_data(entry, &mut f, sparse, size)
                    .map_err(|e| self.bad(&shown, format!("writing file: {e}")))?;
                if written != size {
                    return Err(self.bad(&shown, format!("truncated: {written} of {size} bytes")));
                }
                sys::fchown(f.as_fd(), meta.uid, meta.gid)
                    .map_err(|e| self.bad(&shown, format!("chown: {e}")))?;
                self.set_xattrs_fd(f.as_fd(), &meta, &shown)?;
                sys::fchmod(f.as_fd(), meta.mode)
                    .map_err(|e| self.bad(&shown, format!("chmod: {e}")))?;
                sys::futimens(f.as_fd(), meta.mtime.0, meta.mtime.1)
                    .map_err(|e| self.bad(&shown, format!("utimes: {e}")))?;
                self.stats.bytes += size;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.bad(&shown, "symlink without target"))?
                    .into_owned();
                if target.is_empty() {
                    return Err(self.bad(&shown, "symlink with an empty target"));
                }
                if existing.is_some() {
                    self.remove_existing(dir, &cname, &shown)?;
                }
                let t = sys::cstr(&target).map_err(|e| self.bad(&shown, e.to_string()))?;
                sys::symlinkat(&t, dir, &cname).map_err(|e| self.os_err(&shown, "symlink", e))?;
                sys::fchownat_nofollow(dir, &cname, meta.uid, meta.gid)
                    .map_err(|e| self.bad(&shown, format!("lchown: {e}")))?;
                self.set_xattrs_path(dir, &cname, &meta, &shown)?;
                sys::utimensat_nofollow(dir, &cname, meta.mtime.0, meta.mtime.1)
                    .map_err(|e| self.bad(&shown, format!("utimes: {e}")))?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.bad(&shown, "hardlink without target"))?
                    .into_owned();
                let tcomps = clean_path(&target)
                    .map_err(|r| self.hostile(&shown, format!("hardlink target: {r}")))?;
                let Some((tname, tparent)) = tcomps.split_last() else {
                    return Err(self.hostile(&shown, "hardlink to the layer root"));
                };
                if tcomps == comps {
                    return Err(self.bad(&shown, "hardlink to itself"));
                }
                let tdir = self.resolve_dir_existing(tparent, &shown)?;
                let tc = sys::cstr(tname).map_err(|e| self.bad(&shown, e.to_string()))?;
                let tst = sys::fstatat_nofollow(tdir.as_fd(), &tc).map_err(|e| {
                    self.bad(
                        &shown,
                        format!(
                            "hardlink target {:?} not found in this layer: {e}",
                            String::from_utf8_lossy(&target)
                        ),
                    )
                })?;
                if tst.st_mode & libc::S_IFMT == libc::S_IFDIR {
                    return Err(self.hostile(&shown, "hardlink to a directory"));
                }
                if existing.is_some() {
                    self.remove_existing(dir, &cname, &shown)?;
                }
                sys::linkat(tdir.as_fd(), &tc, dir, &cname)
                    .map_err(|e| self.os_err(&shown, "link", e))?;
                // The link's own header says the (shared) inode's owner, xattrs, mode and
                // times, as containerd and Docker apply it; tar writers repeat the file's
                // there, and then nothing changes. A chown drops the file's capabilities (and
                // setuid bits): a changed owner keeps the capability the file had unless the
                // header gives one; the mode comes after the xattrs (an ACL's mask). No mode
                // for a link to a symlink (chmod would follow it).
                let cap = c"security.capability";
                let owner = (meta.uid, meta.gid) != (tst.st_uid, tst.st_gid);
                if owner {
                    let path = self.fd_path(dir, &cname, &shown)?;
                    let kept = if meta.xattrs.iter().any(|(k, _)| k.as_c_str() == cap) {
                        None
                    } else {
                        sys::lgetxattr(&path, cap)
                            .map_err(|e| self.bad(&shown, format!("reading {cap:?}: {e}")))?
                    };
                    sys::fchownat_nofollow(dir, &cname, meta.uid, meta.gid)
                        .map_err(|e| self.bad(&shown, format!("lchown: {e}")))?;
                    if let Some(v) = kept {
                        sys::lsetxattr(&path, cap, &v)
                            .map_err(|e| self.bad(&shown, format!("setting {cap:?}: {e}")))?;
                    }
                }
                self.set_xattrs_path(dir, &cname, &meta, &shown)?;
                if tst.st_mode & libc::S_IFMT != libc::S_IFLNK
                    && (owner || tst.st_mode & 0o7777 != meta.mode & 0o7777)
                {
                    sys::fchmodat(dir, &cname, meta.mode)
                        .map_err(|e| self.bad(&shown, format!("chmod: {e}")))?;
                }
                sys::utimensat_nofollow(dir, &cname, meta.mtime.0, meta.mtime.1)
                    .map_err(|e| self.bad(&shown, format!("utimes: {e}")))?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                if existing.is_some() {
                    self.remove_existing(dir, &cname, &shown)?;
                }
                let (fmt, dev) = match kind {
                    EntryType::Fifo => (libc::S_IFIFO, 0),
                    k => {
                        let major = entry.header().device_major().ok().flatten().unwrap_or(0);
                        let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
                        (
                            if k == EntryType::Char {
                                libc::S_IFCHR
                            } else {
                                libc::S_IFBLK
                            },
                            sys::makedev(major, minor),
                        )
                    }
                };
                sys::mknodat(dir, &cname, fmt | (meta.mode & 0o777), dev)
                    .map_err(|e| self.os_err(&shown, "mknod", e))?;
                sys::fchownat_nofollow(dir, &cname, meta.uid, meta.gid)
                    .map_err(|e| self.bad(&shown, format!("chown: {e}")))?;
                self.set_xattrs_path(dir, &cname, &meta, &shown)?;
                sys::fchmodat(dir, &cname, meta.mode)
                    .map_err(|e| self.bad(&shown, format!("chmod: {e}")))?;
                sys::utimensat_nofollow(dir, &cname, meta.mtime.0, meta.mtime.1)
                    .map_err(|e| self.bad(&shown, format!("utimes: {e}")))?;
            }
            other => return Err(self.bad(&shown, format!("unsupported tar entry type {other:?}"))),
        }
        Ok(())
    }

    fn resolve_dir_existing(&self, parent: &[&[u8]], shown: &str) -> Result<OwnedFd> {
        if parent.is_empty() {
            return self
                .root
                .try_clone()
                .map_err(|e| self.bad(shown, e.to_string()));
        }
        let p = sys::cstr(&parent.join(&b'/')).map_err(|e| self.bad(shown, e.to_string()))?;
        sys::open_beneath(self.root.as_fd(), &p, libc::O_PATH | libc::O_DIRECTORY)
            .map_err(|e| self.os_err(shown, "resolving hardlink target", e))
    }

    fn meta<R: Read>(&self, entry: &mut tar::Entry<'_, R>, shown: &str) -> Result<Meta> {
        let h = entry.header();
        let mode = h
            .mode()
            .map_err(|e| self.bad(shown, format!("mode: {e}")))?
            & 0o7777;
        let mut uid = h.uid().map_err(|e| self.bad(shown, format!("uid: {e}")))?;
        let mut gid = h.gid().map_err(|e| self.bad(shown, format!("gid: {e}")))?;
        let mut mtime = (h.mtime().unwrap_or(0) as i64, 0i64);
        let mut xattrs = Vec::new();
        if let Some(pax) = entry
            .pax_extensions()
            .map_err(|e| self.bad(shown, format!("pax header: {e}")))?
        {
            for ext in pax {
                let ext = ext.map_err(|e| self.bad(shown, format!("pax header: {e}")))?;
                let key = ext.key_bytes();
                if key.starts_with(b"GNU.sparse.") {
                    return Err(self.bad(shown, "PAX-format sparse files are not supported"));
                } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    // trusted.* is the node administrator's namespace (overlayfs keeps its
                    // own metadata there, and user.overlay.* in a user namespace): never
                    // from a layer, as containerd refuses it.
                    if name.starts_with(b"trusted.") || name.starts_with(b"user.overlay.") {
                        continue;
                    }
                    xattrs.push((
                        sys::cstr(name).map_err(|e| self.bad(shown, e.to_string()))?,
                        ext.value_bytes().to_vec(),
                    ));
                } else if key == b"uid" || key == b"gid" {
                    let v: u64 = std::str::from_utf8(ext.value_bytes())
                        .ok()
                        .and_then(|s| s.trim().parse().ok())
                        .ok_or_else(|| self.bad(shown, "bad PAX uid/gid"))?;
                    if key == b"uid" {
                        uid = v;
                    } else {
                        gid = v;
                    }
                } else if key == b"mtime" {
                    if let Ok(s) = std::str::from_utf8(ext.value_bytes()) {
                        let (sec, frac) = s.split_once('.').unwrap_or((s, ""));
                        if let Ok(sec) = sec.parse::<i64>() {
                            let mut ns = 0i64;
                            for (i, c) in frac.bytes().take(9).enumerate() {
                                if c.is_ascii_digit() {
                                    ns += (c - b'0') as i64 * 10i64.pow(8 - i as u32);
                                }
                            }
                            mtime = (sec, ns);
                        }
                    }
                }
            }
        }
        let uid =
            u32::try_from(uid).map_err(|_| self.bad(shown, format!("uid {uid} out of range")))?;
        let gid =
            u32::try_from(gid).map_err(|_| self.bad(shown, format!("gid {gid} out of range")))?;
        Ok(Meta {
            mode,
            uid,
            gid,
            mtime,
            xattrs,
        })
    }

    fn set_xattrs_fd(&self, fd: BorrowedFd<'_>, meta: &Meta, shown: &str) -> Result<()> {
        for (k, v) in &meta.xattrs {
            match sys::fsetxattr(fd, k, v) {
                Ok(()) => {}
                // The store's filesystem has no such namespace (containerd passes over it
                // too): the layer is no less usable without it.
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
                Err(e) => return Err(self.bad(shown, format!("setting xattr {k:?}: {e}"))),
            }
        }
        Ok(())
    }

    /// `name` in `dir` as a path (for the calls that take no descriptor), through the
    /// descriptor's /proc link: resolved where `dir` is, never again by its path.
    fn fd_path(&self, dir: BorrowedFd<'_>, name: &std::ffi::CStr, shown: &str) -> Result<CString> {
        use std::os::fd::AsRawFd;
        let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
        p.extend_from_slice(name.to_bytes());
        sys::cstr(&p).map_err(|e| self.bad(shown, e.to_string()))
    }

    fn set_xattrs_path(
        &self,
        dir: BorrowedFd<'_>,
        name: &std::ffi::CStr,
        meta: &Meta,
        shown: &str,
    ) -> Result<()> {
        if meta.xattrs.is_empty() {
            return Ok(());
        }
        let p = self.fd_path(dir, name, shown)?;
        for (k, v) in &meta.xattrs {
            match sys::lsetxattr(&p, k, v) {
                Ok(()) => {}
                // Linux allows no user.* xattrs on symlinks and device nodes.
                Err(e)
                    if e.raw_os_error() == Some(libc::EPERM)
                        && k.to_bytes().starts_with(b"user.") => {}
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
                Err(e) => return Err(self.bad(shown, format!("setting xattr {k:?}: {e}"))),
            }
        }
        Ok(())
    }

    /// Removes whatever is at `name` in `dir` (recursively for directories), not following symlinks.
    fn remove_existing(
        &self,
        dir: BorrowedFd<'_>,
        name: &std::ffi::CStr,
        shown: &str,
    ) -> Result<()> {
        let st = match sys::fstatat_nofollow(dir, name) {
            Ok(st) => st,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(e) => return Err(self.bad(shown, format!("stat: {e}"))),
        };
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            use std::os::fd::AsRawFd;
            use std::os::unix::ffi::OsStrExt;
            let p = Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd()))
                .join(std::ffi::OsStr::from_bytes(name.to_bytes()));
            sys::remove_tree(&p).map_err(|e| self.bad(shown, format!("removing directory: {e}")))
        } else {
            sys::unlinkat(dir, name, false).map_err(|e| self.bad(shown, format!("unlink: {e}")))
        }
    }

    fn copy_data<R: Read>(
        &mut self,
        r: &mut R,
        f: &mut File,
        sparse: bool,
        size: u64,
    ) -> io::Result<u64> {
        let mut total = 0u64;
        let mut hole = false;
        loop {
            let n = match r.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted && e.get_ref().is_none() => {
                    continue
                }
                Err(e) => return Err(e),
            };
            let chunk = &self.buf[..n];
            if sparse && chunk.iter().all(|b| *b == 0) {
                f.seek(SeekFrom::Current(n as i64))?;
                hole = true;
            } else {
                f.write_all(chunk)?;
                hole = false;
            }
            total += n as u64;
            if total > size {
                return Err(io::Error::other("entry longer than its header says"));
            }
        }
        if hole {
            f.set_len(total)?;
        }
        Ok(total)
    }

    fn finish(&mut self) -> Result<()> {
        self.cache = None;
        // Directory mtimes last, deepest first, as creating children changed them.
        let mut times: Vec<_> = std::mem::take(&mut self.dir_times).into_iter().collect();
        times.sort_by_key(|b| std::cmp::Reverse(b.0.len()));
        for (path, (s, ns)) in times {
            if path.is_empty() {
                let f = File::open(&self.dest).map_err(|e| Error::io("opening", &self.dest, e))?;
                sys::futimens(f.as_fd(), s, ns)
                    .map_err(|e| Error::io("setting mtime of", &self.dest, e))?;
                continue;
            }
            let shown = String::from_utf8_lossy(&path).into_owned();
            let comps: Vec<&[u8]> = path.split(|b| *b == b'/').collect();
            let (name, parent) = comps.split_last().expect("non-empty");
            let dir = match self.resolve_dir_existing(parent, &shown) {
                Ok(d) => d,
                Err(_) => continue, // removed by a later entry
            };
            let c = sys::cstr(name).map_err(|e| self.bad(&shown, e.to_string()))?;
            match sys::fstatat_nofollow(dir.as_fd(), &c) {
                Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                    sys::utimensat_nofollow(dir.as_fd(), &c, s, ns)
                        .map_err(|e| self.bad(&shown, format!("utimes: {e}")))?;
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn clean_paths() {
        assert_eq!(
            clean_path(b"./a//b/./c").unwrap(),
            vec![&b"a"[..], b"b", b"c"]
        );
        assert!(clean_path(b"/etc/passwd").is_err());
        assert!(clean_path(b"a/../../x").is_err());
        assert!(clean_path(b"./").unwrap().is_empty());
        assert!(is_prefix_path(b"a/b", b"a/b/c"));
        assert!(!is_prefix_path(b"a/b", b"a/bc"));
    }
}
