//! The container's root filesystem: mounts, devices, /dev links, masked and read-only
//! paths, pivot_root. Runs in the init process, inside the new mount namespace.
//!
//! Every path inside the rootfs is resolved with openat2(RESOLVE_IN_ROOT), so symlinks and
//! `..` in the image cannot point a mount or a device node outside it, and every mount
//! targets the resolved file through its /proc/self/fd magic link (no second lookup).

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount, Spec};

use crate::error::{Context, Error, Result};
use crate::sys;

/// Mount propagation types by name (for rootfsPropagation and mount options).
pub fn propagation_flag(name: &str) -> Option<MsFlags> {
    Some(match name {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

/// Mount options split into flags to set, flags to clear, propagation, and fs data.
#[derive(Debug)]
pub struct MountOptions {
    pub flags: MsFlags,
    pub clear: MsFlags,
    pub propagation: Vec<MsFlags>,
    pub data: Vec<String>,
    pub bind: bool,
    pub recursive: bool,
    /// Podman/runc extension for tmpfs: start with a copy of what the image has there.
    pub tmpcopyup: bool,
    /// Recursive mount attributes (runc's `rro`, `rnosuid`, ...): MOUNT_ATTR_* bits set and
    /// cleared on the whole subtree with mount_setattr(2) and AT_RECURSIVE.
    pub rec_set: u64,
    pub rec_clr: u64,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            flags: MsFlags::empty(),
            clear: MsFlags::empty(),
            propagation: Vec::new(),
            data: Vec::new(),
            bind: false,
            recursive: false,
            tmpcopyup: false,
            rec_set: 0,
            rec_clr: 0,
        }
    }
}

/// A recursive mount attribute (the option without its leading `r`) as the MOUNT_ATTR_*
/// bits it sets and clears.
fn recursive_attr(a: &str) -> Option<(u64, u64)> {
    use crate::sys::{
        MOUNT_ATTR_NODEV as NODEV, MOUNT_ATTR_NODIRATIME as NODIRATIME,
        MOUNT_ATTR_NOEXEC as NOEXEC, MOUNT_ATTR_NOSUID as NOSUID, MOUNT_ATTR_RDONLY as RDONLY,
        MOUNT_ATTR__ATIME as ATIME,
    };
    Some(match a {
        "ro" => (RDONLY, 0),
        "rw" => (0, RDONLY),
        "nosuid" => (NOSUID, 0),
        "suid" => (0, NOSUID),
        "nodev" => (NODEV, 0),
        "dev" => (0, NODEV),
        "noexec" => (NOEXEC, 0),
        "exec" => (0, NOEXEC),
        "nodiratime" => (NODIRATIME, 0),
        "diratime" => (0, NODIRATIME),
        // The atime modes are one field: clearing it and setting a value.
        "relatime" => (crate::sys::MOUNT_ATTR_RELATIME, ATIME),
        "noatime" => (crate::sys::MOUNT_ATTR_NOATIME, ATIME),
        "strictatime" => (crate::sys::MOUNT_ATTR_STRICTATIME, ATIME),
        _ => return None,
    })
}

pub fn parse_options(opts: &[String]) -> Result<MountOptions> {
    let mut o = MountOptions::default();
    for opt in opts.iter().flat_map(|s| s.split(',')) {
        let (set, clear) = match opt {
            "" | "defaults" => (MsFlags::empty(), MsFlags::empty()),
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "lazytime" => (MsFlags::MS_LAZYTIME, MsFlags::empty()),
            "nolazytime" => (MsFlags::empty(), MsFlags::MS_LAZYTIME),
            "silent" => (MsFlags::MS_SILENT, MsFlags::empty()),
            "loud" => (MsFlags::empty(), MsFlags::MS_SILENT),
            "iversion" => (MsFlags::MS_I_VERSION, MsFlags::empty()),
            "noiversion" => (MsFlags::empty(), MsFlags::MS_I_VERSION),
            "bind" => {
                o.bind = true;
                continue;
            }
            "rbind" => {
                o.bind = true;
                o.recursive = true;
                continue;
            }
            // Made before the clone (idmap.rs); the init moves the result into place.
            "idmap" | "ridmap" => continue,
            "tmpcopyup" => {
                o.tmpcopyup = true;
                continue;
            }
            "notmpcopyup" => {
                o.tmpcopyup = false;
                continue;
            }
            p => {
                if let Some(f) = propagation_flag(p) {
                    o.propagation.push(f);
                } else if let Some((set, clr)) = p.strip_prefix('r').and_then(recursive_attr) {
                    o.rec_set = (o.rec_set & !clr) | set;
                    o.rec_clr = (o.rec_clr & !set) | clr;
                } else {
                    o.data.push(p.to_string());
                }
                continue;
            }
        };
        o.flags |= set;
        o.flags &= !clear;
        o.clear |= clear;
    }
    Ok(o)
}

/// Everything rootfs setup needs from the config and the caller.
pub struct Setup<'a> {
    pub spec: &'a Spec,
    pub bundle: &'a Path,
    pub rootfs: &'a Path,
    pub in_userns: bool,
    pub new_cgroupns: bool,
    pub new_netns: bool,
    /// The container's cgroup directories on the host (for v1 cgroup mounts without a
    /// cgroup namespace).
    pub cgroup_paths: &'a [PathBuf],
    /// Idmapped bind mounts made before the clone, by mount index.
    pub idmapped: &'a crate::idmap::Prepared,
}

/// Resolves `path` inside `root` (an O_PATH directory fd) without leaving it.
pub fn open_in_root(root: RawFd, path: &Path, flags: i32) -> std::io::Result<OwnedFd> {
    let rel = path.strip_prefix("/").unwrap_or(path);
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let c = sys::cstr(&rel.to_string_lossy());
    sys::openat2(root, &c, flags, 0, sys::RESOLVE_IN_ROOT)
}

fn proc_fd(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// What kind of file to create at a mount target that does not exist yet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

/// Opens `path` inside the rootfs, creating missing directories (and the last component
/// as `kind`) without following anything out of the rootfs: symlinks met on the way,
/// dangling ones included, are resolved by hand with the rootfs as `/`, and `..` stops at
/// it. Returns an O_PATH fd.
pub fn mkdir_all_in_root(root: RawFd, path: &Path, kind: Kind) -> Result<OwnedFd> {
    match open_in_root(root, path, libc::O_PATH) {
        Ok(fd) => return Ok(fd),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        Err(e) => return Err(Error::os(format!("open {} in rootfs", path.display()), e)),
    }
    use nix::fcntl::{AtFlags, OFlag};
    use nix::sys::stat::{Mode, SFlag};
    let err =
        |what: &str, e: nix::Error| Error::os(format!("{what} {} in rootfs", path.display()), e);
    let mut stack: Vec<OwnedFd> =
        vec![
            open_in_root(root, Path::new("/"), libc::O_PATH | libc::O_DIRECTORY)
                .with_ctx(|| format!("open rootfs for {}", path.display()))?,
        ];
    let mut queue: std::collections::VecDeque<std::ffi::OsString> = components(path);
    let mut links = 0;
    while let Some(c) = queue.pop_front() {
        if c == ".." {
            if stack.len() > 1 {
                stack.pop();
            }
            continue;
        }
        let parent = stack.last().expect("root stays on the stack");
        let last = queue.is_empty();
        match nix::sys::stat::fstatat(parent, c.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK => {
                links += 1;
                if links > 40 {
                    return Err(err("too many symlinks resolving", nix::errno::Errno::ELOOP));
                }
                let target = nix::fcntl::readlinkat(parent, c.as_os_str())
                    .map_err(|e| err("readlink", e))?;
                let target = PathBuf::from(target);
                if target.is_absolute() {
                    stack.truncate(1);
                }
                for t in components(&target).into_iter().rev() {
                    queue.push_front(t);
                }
                continue;
            }
            Ok(_) => {}
            Err(nix::errno::Errno::ENOENT) => {
                let res = if last && kind == Kind::File {
                    nix::sys::stat::mknodat(
                        parent,
                        c.as_os_str(),
                        SFlag::S_IFREG,
                        Mode::from_bits_truncate(0o644),
                        0,
                    )
                } else {
                    nix::sys::stat::mkdirat(parent, c.as_os_str(), Mode::from_bits_truncate(0o755))
                };
                match res {
                    Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                    Err(e) => return Err(err("create", e)),
                }
            }
            Err(e) => return Err(err("stat", e)),
        }
        let fd = nix::fcntl::openat(
            parent,
            c.as_os_str(),
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| err("open", e))?;
        stack.push(fd);
    }
    Ok(stack.pop().expect("root stays on the stack"))
}

fn components(p: &Path) -> std::collections::VecDeque<std::ffi::OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

fn mount_at(
    src: Option<&str>,
    target: &str,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> nix::Result<()> {
    nix::mount::mount(src, target, fstype, flags, data)
}

/// Flags that a mount in a user namespace inherits locked from its source and that a
/// remount must therefore repeat.
fn locked_flags(target: &str) -> MsFlags {
    let Ok(st) = nix::sys::statvfs::statvfs(target) else {
        return MsFlags::empty();
    };
    use nix::sys::statvfs::FsFlags;
    let f = st.flags();
    let mut m = MsFlags::empty();
    for (a, b) in [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(a) {
            m |= b;
        }
    }
    m
}

/// The mount point of the mount that contains `path` (the longest mountinfo prefix).
fn mount_point_of(path: &Path) -> Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ctx("read /proc/self/mountinfo")?;
    let mut best = PathBuf::from("/");
    for line in info.lines() {
        let Some(mp) = line.split(' ').nth(4) else {
            continue;
        };
        let mp = PathBuf::from(mp.replace("\\040", " "));
        if path.starts_with(&mp) && mp.components().count() > best.components().count() {
            best = mp;
        }
    }
    Ok(best)
}

/// Prepares the mount namespace and performs every mount of the config. Returns an O_PATH
/// fd of the rootfs (the mount point of its bind mount).
pub fn prepare(s: &Setup) -> Result<OwnedFd> {
    let linux = s.spec.linux().as_ref();
    let prop = linux
        .and_then(|l| l.rootfs_propagation().as_deref())
        .and_then(propagation_flag)
        .unwrap_or(MsFlags::MS_SLAVE | MsFlags::MS_REC);
    // The whole tree gets the configured propagation (rslave by default: host mounts
    // propagate in, ours never out; rshared keeps the host's peer groups, so that mounts
    // made in the container reach the host, as Kubernetes' Bidirectional volumes need).
    // (Unbindable is applied after pivot_root: the rootfs must be bound onto itself first.)
    let initial = if prop.contains(MsFlags::MS_UNBINDABLE) {
        MsFlags::MS_SLAVE
    } else {
        prop
    };
    mount_at(None, "/", None, initial | MsFlags::MS_REC, None)
        .with_ctx(|| format!("set propagation {initial:?} on /"))?;
    // pivot_root refuses a new root whose parent mount is shared: make that one mount
    // private (only then do shared propagations need it).
    if prop.contains(MsFlags::MS_SHARED) {
        // The mount that holds the rootfs itself (the rootfs when it is a mount point, as
        // containerd's overlay is): it becomes the parent of the rootfs bind below.
        let mp = mount_point_of(s.rootfs)?;
        mount_at(
            None,
            mp.to_string_lossy().as_ref(),
            None,
            MsFlags::MS_PRIVATE,
            None,
        )
        .with_ctx(|| format!("make {} (the rootfs's parent mount) private", mp.display()))?;
    }
    let rootfs = s.rootfs.display();
    // The rootfs is opened once, without following a symlink, and everything after works on
    // that handle: a writable bundle that swaps the directory (for a symlink to /, say) after
    // validation cannot redirect the bind, the mounts or the pivot.
    let dir = nix::fcntl::open(
        s.rootfs,
        nix::fcntl::OFlag::O_PATH
            | nix::fcntl::OFlag::O_DIRECTORY
            | nix::fcntl::OFlag::O_NOFOLLOW
            | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .with_ctx(|| format!("open rootfs {rootfs} (it must be a directory, not a symlink)"))?;
    let st = nix::sys::stat::fstat(&dir).with_ctx(|| format!("stat rootfs {rootfs}"))?;
    let host = nix::sys::stat::stat("/").ctx("stat /")?;
    if (st.st_dev, st.st_ino) == (host.st_dev, host.st_ino) {
        return Err(Error::Config(format!(
            "root.path {rootfs} is the host's root directory"
        )));
    }
    // pivot_root needs the rootfs to be a mount point: a recursive bind of it onto itself,
    // made from the handle (open_tree + move_mount), whose detached-tree descriptor then
    // refers to the new mount's root.
    let root = sys::open_tree(
        dir.as_raw_fd(),
        c"",
        sys::OPEN_TREE_CLONE | sys::AT_RECURSIVE,
    )
    .with_ctx(|| format!("bind mount rootfs {rootfs} (open_tree)"))?;
    sys::move_mount(root.as_raw_fd(), dir.as_raw_fd())
        .with_ctx(|| format!("bind mount rootfs {rootfs} (move_mount)"))?;
    drop(dir);

    let mut dev_bound = false;
    for (i, m) in s.spec.mounts().iter().flatten().enumerate() {
        mount_one(s, root.as_raw_fd(), i, m)
            .map_err(|e| prefix(e, &format!("mounts[{i}] {}", m.destination().display())))?;
        if m.destination() == Path::new("/dev") && m.typ().as_deref() != Some("tmpfs") {
            dev_bound = true;
        }
    }
    // A /dev that is not ours (the host's, bound in by a privileged pod's hostPath, as CSI
    // node plugins do) gets no device node made in it, not even the config's: each would
    // replace (unlink, mknod) the host's node of that name, losing its ACLs, labels and
    // xattrs, and host processes would see it missing meanwhile. runc skips them likewise.
    if !dev_bound {
        create_default_devices(s, root.as_raw_fd())?;
        create_dev_links(root.as_raw_fd())?;
        for d in linux
            .and_then(|l| l.devices().as_ref())
            .into_iter()
            .flatten()
        {
            create_device(s, root.as_raw_fd(), d)?;
        }
    }
    Ok(root)
}

fn prefix(e: Error, what: &str) -> Error {
    match e {
        Error::Os { context, err } => Error::Os {
            context: format!("{what}: {context}"),
            err,
        },
        Error::Unsupported(m) => Error::Unsupported(format!("{what}: {m}")),
        Error::Invalid(m) => Error::Invalid(format!("{what}: {m}")),
        other => other,
    }
}

fn mount_one(s: &Setup, root: RawFd, i: usize, m: &Mount) -> Result<()> {
    let typ = m.typ().as_deref().unwrap_or("");
    let opts = parse_options(m.options().as_deref().unwrap_or(&[]))?;
    let dest = m.destination();
    if typ == "cgroup" {
        return mount_cgroup_v1(s, root, dest, &opts);
    }
    let bind = opts.bind || typ == "bind";
    if bind {
        let src = m.source().as_ref().ok_or_else(|| {
            Error::Config(format!(
                "mount {} is a bind mount without a source",
                dest.display()
            ))
        })?;
        let src = if src.is_relative() {
            s.bundle.join(src)
        } else {
            src.clone()
        };
        // An idmapped mount was opened by the runtime: its source may be out of this
        // process's reach (in a user namespace), and the mount says what it is.
        let is_dir = match s.idmapped.get(i) {
            Some(tree) => nix::sys::stat::fstat(tree)
                .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
                .with_ctx(|| format!("the idmapped mount of {}", src.display()))?,
            None => std::fs::metadata(&src)
                .with_ctx(|| format!("bind source {}", src.display()))?
                .is_dir(),
        };
        let kind = if is_dir { Kind::Dir } else { Kind::File };
        let target = mkdir_all_in_root(root, dest, kind)?;
        check_not_on_proc(root, &target, dest, typ, true)?;
        let src_s = src.to_string_lossy();
        // The new mount is held by a descriptor from here on: a detached copy of the source
        // (open_tree), moved onto the target's descriptor, then remounted and given its
        // propagation through that same descriptor. Looked up again by path, the
        // destination could have been swapped meanwhile by a process sharing the volume
        // (CVE-2021-30465's pattern), and the flags (ro) applied elsewhere.
        let cloned;
        let tree = match s.idmapped.get(i) {
            Some(tree) => tree.as_raw_fd(),
            None => {
                let mut how = sys::OPEN_TREE_CLONE;
                if opts.recursive {
                    how |= sys::AT_RECURSIVE;
                }
                cloned = sys::open_tree(libc::AT_FDCWD, &sys::cstr(&src_s), how)
                    .with_ctx(|| format!("bind {src_s} (open_tree)"))?;
                cloned.as_raw_fd()
            }
        };
        sys::move_mount(tree, target.as_raw_fd())
            .with_ctx(|| format!("bind {src_s} (move_mount)"))?;
        let mt = format!("/proc/self/fd/{tree}");
        // Flags other than bind need a remount of the new mount.
        let extra = opts.flags & !(MsFlags::MS_REMOUNT);
        if !extra.is_empty() || !opts.clear.is_empty() {
            let keep = if s.in_userns {
                locked_flags(&mt)
            } else {
                MsFlags::empty()
            };
            let want = (keep & !opts.clear) | extra;
            mount_at(
                None,
                &mt,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | want,
                None,
            )
            .or_else(|e| {
                // Locked flags that we did not know about: retry keeping them all.
                if e == nix::errno::Errno::EPERM {
                    mount_at(
                        None,
                        &mt,
                        None,
                        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | want | locked_flags(&mt),
                        None,
                    )
                } else {
                    Err(e)
                }
            })
            .with_ctx(|| format!("remount {} with {:?}", dest.display(), want))?;
        }
        apply_propagation_at(tree, dest, &opts)?;
        return Ok(());
    }
    if typ == "proc" || typ == "sysfs" {
        ordinary_dir(root, dest, typ)?;
    }
    let target = mkdir_all_in_root(root, dest, Kind::Dir)?;
    check_not_on_proc(root, &target, dest, typ, false)?;
    let t = proc_fd(&target);
    let data = opts.data.join(",");
    let src = m
        .source()
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| typ.to_string());
    let flags = opts.flags & !MsFlags::MS_REMOUNT;
    // tmpcopyup: keep a handle on the image's directory, which the tmpfs is about to hide.
    let copy_from = if opts.tmpcopyup && typ == "tmpfs" {
        Some(
            nix::fcntl::open(
                t.as_str(),
                nix::fcntl::OFlag::O_RDONLY
                    | nix::fcntl::OFlag::O_DIRECTORY
                    | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .with_ctx(|| format!("open {} for tmpcopyup", dest.display()))?,
        )
    } else {
        None
    };
    let res = mount_at(
        Some(&src),
        &t,
        Some(typ),
        flags,
        if data.is_empty() { None } else { Some(&data) },
    );
    match res {
        Ok(()) => {
            if let Some(from) = copy_from {
                let to = open_in_root(root, dest, libc::O_RDONLY | libc::O_DIRECTORY)
                    .with_ctx(|| format!("reopen {}", dest.display()))?;
                copy_tree(&from, &to)
                    .map_err(|e| prefix(e, &format!("tmpcopyup {}", dest.display())))?;
                let st = nix::sys::stat::fstat(&from).ctx("stat tmpcopyup source")?;
                // Owner, extended attributes, mode: in copy_tree's order.
                let _ = nix::unistd::fchown(
                    &to,
                    Some(nix::unistd::Uid::from_raw(st.st_uid)),
                    Some(nix::unistd::Gid::from_raw(st.st_gid)),
                );
                copy_xattrs(&from, &to)
                    .map_err(|e| prefix(e, &format!("tmpcopyup {}", dest.display())))?;
                let _ = nix::sys::stat::fchmod(
                    &to,
                    nix::sys::stat::Mode::from_bits_truncate(st.st_mode & 0o7777),
                );
            }
        }
        // sysfs and mqueue cannot be mounted for a network/ipc namespace we do not own:
        // bind the host's instead, as runc does.
        Err(nix::errno::Errno::EPERM)
            if (typ == "sysfs" || typ == "mqueue") && (s.in_userns || !s.new_netns) =>
        {
            let host = if typ == "sysfs" {
                "/sys"
            } else {
                "/dev/mqueue"
            };
            mount_at(
                Some(host),
                &t,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )
            .with_ctx(|| format!("bind {host} (fallback for {typ})"))?;
            let mounted = open_in_root(root, dest, libc::O_PATH)
                .with_ctx(|| format!("reopen {}", dest.display()))?;
            let mt = proc_fd(&mounted);
            let want = flags | locked_flags(&mt);
            mount_at(
                None,
                &mt,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | want,
                None,
            )
            .with_ctx(|| format!("remount {}", dest.display()))?;
        }
        Err(e) => {
            return Err(Error::os(
                format!("mount {typ} {src} (options {data:?})"),
                e,
            ))
        }
    }
    apply_propagation(root, dest, &opts)
}

/// Copies the directory tree under `from` into `to`, descriptor-relative and never following
/// symlinks: files, directories, symlinks and special files with their modes (setuid and
/// setgid bits too: the owner is set first, as a chown clears them), owners and times; hard
/// links stay links. Files and directories keep their extended attributes (file
/// capabilities, ACLs; not overlayfs's marks nor SELinux labels), set after the owner (a
/// chown clears `security.capability`) and before the mode (an ACL sets the group bits);
/// symlinks and special files do not.
pub fn copy_tree(from: &OwnedFd, to: &OwnedFd) -> Result<()> {
    let mut links = std::collections::HashMap::new();
    copy_tree_at(from, to, to, Path::new(""), &mut links)
}

/// Gives `to` the extended attributes of `from` (both open files or directories), but for
/// overlayfs's own (`trusted.overlay.*`, a layer's whiteout and opaque marks) and the SELinux
/// label (`security.selinux`: the copy gets its place's, as containerd excludes it). One
/// that cannot be read or set (a file system that keeps none, `trusted.*` in a user
/// namespace, a file capability of another user namespace's root) is skipped, as a chown
/// that is not allowed is.
pub fn copy_xattrs(from: impl std::os::fd::AsFd, to: impl std::os::fd::AsFd) -> Result<()> {
    for (name, value) in crate::sys::fxattrs(from.as_fd()).ctx("list xattrs")? {
        let n = name.as_bytes();
        if n.starts_with(b"trusted.overlay.") || n == b"security.selinux" {
            continue;
        }
        let _ = crate::sys::fsetxattr(to.as_fd(), &name, &value);
    }
    Ok(())
}

/// The times of `st` (atime, mtime) as utimensat takes them.
fn times_of(st: &nix::sys::stat::FileStat) -> (nix::sys::time::TimeSpec, nix::sys::time::TimeSpec) {
    (
        nix::sys::time::TimeSpec::new(st.st_atime, st.st_atime_nsec),
        nix::sys::time::TimeSpec::new(st.st_mtime, st.st_mtime_nsec),
    )
}

/// `copy_tree` of the directory `from` into `to`, which is `rel` under `top`; `links` maps a
/// multiply linked file's (device, inode) to its first copy's path under `top` (made by this
/// copy: directories of its own all the way).
fn copy_tree_at(
    from: &OwnedFd,
    to: &OwnedFd,
    top: &OwnedFd,
    rel: &Path,
    links: &mut std::collections::HashMap<(u64, u64), PathBuf>,
) -> Result<()> {
    use nix::fcntl::{AtFlags, OFlag};
    use nix::sys::stat::{FchmodatFlags, Mode, SFlag, UtimensatFlags};
    // (Close-on-exec, as `try_clone` makes it: the CRI server, which has other threads,
    // copies image volumes with this.)
    let dup = from.try_clone().ctx("dup")?;
    let mut dir = nix::dir::Dir::from_fd(dup).ctx("read directory")?;
    let names: Vec<std::ffi::CString> = dir
        .iter()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_owned())
        .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
        .collect();
    drop(dir);
    for name in names {
        let n = name.as_c_str();
        let shown = n.to_string_lossy();
        let st = nix::sys::stat::fstatat(from, n, AtFlags::AT_SYMLINK_NOFOLLOW)
            .with_ctx(|| format!("stat {shown}"))?;
        let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        let mode = Mode::from_bits_truncate(st.st_mode & 0o7777);
        let owner = (
            Some(nix::unistd::Uid::from_raw(st.st_uid)),
            Some(nix::unistd::Gid::from_raw(st.st_gid)),
        );
        let (atime, mtime) = times_of(&st);
        let here = rel.join(std::ffi::OsStr::from_bytes(n.to_bytes()));
        if kind == SFlag::S_IFDIR {
            nix::sys::stat::mkdirat(to, n, Mode::from_bits_truncate(0o700))
                .with_ctx(|| format!("mkdir {shown}"))?;
            let open = |d: &OwnedFd, what: &str| {
                nix::fcntl::openat(
                    d,
                    n,
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .with_ctx(|| format!("open {what}{shown}"))
            };
            let (sub_from, sub_to) = (open(from, "")?, open(to, "copy of ")?);
            copy_tree_at(&sub_from, &sub_to, top, &here, links)?;
            let _ = nix::unistd::fchown(&sub_to, owner.0, owner.1);
            copy_xattrs(&sub_from, &sub_to).map_err(|e| prefix(e, &format!("copy of {shown}")))?;
            let _ = nix::sys::stat::fchmod(&sub_to, mode);
            let _ = nix::sys::stat::futimens(&sub_to, &atime, &mtime);
        } else if kind == SFlag::S_IFREG {
            if st.st_nlink > 1 {
                match links.get(&(st.st_dev, st.st_ino)) {
                    // (A link that cannot be made, the path too long or the file's links
                    // too many, is a copy of its own.)
                    Some(first)
                        if nix::unistd::linkat(
                            top,
                            first.as_path(),
                            to,
                            n,
                            nix::fcntl::AtFlags::empty(),
                        )
                        .is_ok() =>
                    {
                        continue
                    }
                    Some(_) => {}
                    None => {
                        links.insert((st.st_dev, st.st_ino), here.clone());
                    }
                }
            }
            let src = nix::fcntl::openat(
                from,
                n,
                OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .with_ctx(|| format!("open {shown}"))?;
            let dst = nix::fcntl::openat(
                to,
                n,
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            )
            .with_ctx(|| format!("create {shown}"))?;
            let (mut r, mut w) = (std::fs::File::from(src), std::fs::File::from(dst));
            std::io::copy(&mut r, &mut w).with_ctx(|| format!("copy {shown}"))?;
            let _ = nix::unistd::fchown(&w, owner.0, owner.1);
            copy_xattrs(&r, &w).map_err(|e| prefix(e, &format!("copy of {shown}")))?;
            let _ = nix::sys::stat::fchmod(&w, mode);
            let _ = nix::sys::stat::futimens(&w, &atime, &mtime);
        } else if kind == SFlag::S_IFLNK {
            let target =
                nix::fcntl::readlinkat(from, n).with_ctx(|| format!("readlink {shown}"))?;
            nix::unistd::symlinkat(target.as_os_str(), to, n)
                .with_ctx(|| format!("symlink {shown}"))?;
            let _ = nix::unistd::fchownat(to, n, owner.0, owner.1, AtFlags::AT_SYMLINK_NOFOLLOW);
            let _ =
                nix::sys::stat::utimensat(to, n, &atime, &mtime, UtimensatFlags::NoFollowSymlink);
        } else {
            nix::sys::stat::mknodat(to, n, kind, Mode::from_bits_truncate(0o600), st.st_rdev)
                .with_ctx(|| format!("mknod {shown}"))?;
            let _ = nix::unistd::fchownat(to, n, owner.0, owner.1, AtFlags::AT_SYMLINK_NOFOLLOW);
            // (Not a symlink: following is the same as not.)
            let _ = nix::sys::stat::fchmodat(to, n, mode, FchmodatFlags::FollowSymlink);
            let _ =
                nix::sys::stat::utimensat(to, n, &atime, &mtime, UtimensatFlags::NoFollowSymlink);
        }
    }
    Ok(())
}

/// The recursive attributes (`rro`, ...) and then the propagation asked for a new mount.
fn apply_propagation(root: RawFd, dest: &Path, opts: &MountOptions) -> Result<()> {
    if opts.rec_set == 0 && opts.rec_clr == 0 && opts.propagation.is_empty() {
        return Ok(());
    }
    let mounted =
        open_in_root(root, dest, libc::O_PATH).with_ctx(|| format!("reopen {}", dest.display()))?;
    apply_propagation_at(mounted.as_raw_fd(), dest, opts)
}

/// `apply_propagation` on the mount whose root `mounted` is.
fn apply_propagation_at(mounted: RawFd, dest: &Path, opts: &MountOptions) -> Result<()> {
    if opts.rec_set != 0 || opts.rec_clr != 0 {
        crate::sys::mount_setattr_recursive(mounted, opts.rec_set, opts.rec_clr)
            .with_ctx(|| format!("recursive mount attributes of {}", dest.display()))?;
    }
    let mt = format!("/proc/self/fd/{mounted}");
    for p in &opts.propagation {
        mount_at(None, &mt, None, *p, None)
            .with_ctx(|| format!("set propagation of {}", dest.display()))?;
    }
    Ok(())
}

/// The options of the cgroup2 superblock mounted here (`nsdelegate,memory_recursiveprot`,
/// ...; not rw/ro), from /proc/self/mountinfo.
fn host_cgroup2_options() -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (_, post) = l.split_once(" - ")?;
        let mut f = post.split(' ');
        if f.next() != Some("cgroup2") {
            return None;
        }
        let super_opts = f.nth(1)?;
        Some(
            super_opts
                .split(',')
                .filter(|o| *o != "rw" && *o != "ro")
                .collect::<Vec<_>>()
                .join(","),
        )
    })
}

/// A `cgroup` (v1) mount: a tmpfs with one cgroup mount (or bind) per hierarchy.
fn mount_cgroup_v1(s: &Setup, root: RawFd, dest: &Path, opts: &MountOptions) -> Result<()> {
    let hs = crate::cgroups::hierarchies()?;
    if crate::cgroups::is_unified(&hs) {
        // A v2 host: the container sees cgroup2. Mounted from the host's cgroup namespace,
        // its options are applied to the node's one cgroup2 root: without the host's own
        // (systemd's nsdelegate, memory_recursiveprot), a privileged container would turn
        // them off for every cgroup of the node. The config's options, else the host's.
        let target = mkdir_all_in_root(root, dest, Kind::Dir)?;
        check_not_on_proc(root, &target, dest, "cgroup", false)?;
        let data = if !opts.data.is_empty() {
            Some(opts.data.join(","))
        } else if !s.new_cgroupns {
            host_cgroup2_options().filter(|d| !d.is_empty())
        } else {
            None
        };
        return mount_at(
            Some("cgroup"),
            &proc_fd(&target),
            Some("cgroup2"),
            opts.flags & !MsFlags::MS_REMOUNT,
            data.as_deref(),
        )
        .ctx("mount cgroup2");
    }
    let target = mkdir_all_in_root(root, dest, Kind::Dir)?;
    check_not_on_proc(root, &target, dest, "cgroup", false)?;
    mount_at(
        Some("tmpfs"),
        &proc_fd(&target),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=755"),
    )
    .ctx("mount tmpfs for cgroups")?;
    let ro = opts.flags.contains(MsFlags::MS_RDONLY);
    for (h, host_path) in hs.iter().zip(s.cgroup_paths) {
        let name = h
            .mountpoint
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.is_empty() {
            continue;
        }
        let sub = dest.join(&name);
        let t = mkdir_all_in_root(root, &sub, Kind::Dir)?;
        let tp = proc_fd(&t);
        let base = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        if s.new_cgroupns {
            let (fstype, data) = if h.v2 {
                ("cgroup2", String::new())
            } else {
                ("cgroup", h.controllers.join(","))
            };
            mount_at(
                Some("cgroup"),
                &tp,
                Some(fstype),
                base | if ro {
                    MsFlags::MS_RDONLY
                } else {
                    MsFlags::empty()
                },
                if data.is_empty() { None } else { Some(&data) },
            )
            .with_ctx(|| format!("mount cgroup {}", sub.display()))?;
        } else {
            let hp = host_path.to_string_lossy();
            mount_at(
                Some(&hp),
                &tp,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )
            .with_ctx(|| format!("bind cgroup {hp}"))?;
            if ro {
                let m = open_in_root(root, &sub, libc::O_PATH).ctx("reopen cgroup mount")?;
                mount_at(
                    None,
                    &proc_fd(&m),
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | base,
                    None,
                )
                .ctx("remount cgroup read-only")?;
            }
        }
        // Co-mounted controllers get a link per controller name (cpu -> cpu,cpuacct).
        if h.controllers.len() > 1 {
            let dirfd = open_in_root(root, dest, libc::O_PATH | libc::O_DIRECTORY)
                .ctx("open cgroup dir")?;
            for c in &h.controllers {
                if c != &name && !c.starts_with("name=") {
                    let _ = nix::unistd::symlinkat(name.as_str(), &dirfd, c.as_str());
                }
            }
        }
    }
    if ro {
        let t = open_in_root(root, dest, libc::O_PATH).ctx("reopen cgroup tmpfs")?;
        mount_at(
            None,
            &proc_fd(&t),
            None,
            MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC,
            Some("mode=755"),
        )
        .ctx("remount cgroup tmpfs read-only")?;
    }
    Ok(())
}

const DEFAULT_DEVICES: [(&str, u64, u64); 6] = [
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

fn create_default_devices(s: &Setup, root: RawFd) -> Result<()> {
    for (path, major, minor) in DEFAULT_DEVICES {
        make_node(
            s,
            root,
            Path::new(path),
            libc::S_IFCHR,
            major,
            minor,
            0o666,
            Some(0),
            Some(0),
        )?;
    }
    Ok(())
}

fn create_device(s: &Setup, root: RawFd, d: &LinuxDevice) -> Result<()> {
    let typ = match d.typ() {
        LinuxDeviceType::C | LinuxDeviceType::U => libc::S_IFCHR,
        LinuxDeviceType::B => libc::S_IFBLK,
        LinuxDeviceType::P => libc::S_IFIFO,
        LinuxDeviceType::A => {
            return Err(Error::Config(format!(
                "linux.devices {}: type \"a\" is only valid in cgroup rules",
                d.path().display()
            )))
        }
    };
    if d.major() < 0 || d.minor() < 0 {
        return Err(Error::Config(format!(
            "linux.devices {}: negative major/minor",
            d.path().display()
        )));
    }
    make_node(
        s,
        root,
        d.path(),
        typ,
        d.major() as u64,
        d.minor() as u64,
        d.file_mode().unwrap_or(0o666),
        d.uid(),
        d.gid(),
    )
}

#[allow(clippy::too_many_arguments)]
fn make_node(
    s: &Setup,
    root: RawFd,
    path: &Path,
    typ: libc::mode_t,
    major: u64,
    minor: u64,
    mode: u32,
    uid: Option<u32>,
    gid: Option<u32>,
) -> Result<()> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    let name = path
        .file_name()
        .ok_or_else(|| Error::Config(format!("device path {} has no file name", path.display())))?;
    if s.in_userns && typ != libc::S_IFIFO {
        // mknod is not allowed in a user namespace: bind the host's node instead.
        let host = Path::new("/dev").join(path.strip_prefix("/dev").unwrap_or(path));
        let meta =
            std::fs::metadata(&host).with_ctx(|| format!("host device {}", host.display()))?;
        if !(meta.file_type().is_char_device() || meta.file_type().is_block_device()) {
            return Err(Error::Invalid(format!(
                "host {} is not a device",
                host.display()
            )));
        }
        let t = mkdir_all_in_root(root, path, Kind::File)?;
        return mount_at(
            Some(&host.to_string_lossy()),
            &proc_fd(&t),
            None,
            MsFlags::MS_BIND,
            None,
        )
        .with_ctx(|| format!("bind device {}", host.display()));
    }
    let dir = mkdir_all_in_root(root, parent, Kind::Dir)?;
    let dirfd = nix::fcntl::openat(
        &dir,
        ".",
        nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .with_ctx(|| format!("open {}", parent.display()))?;
    let cname = CString::new(name.as_encoded_bytes())
        .map_err(|_| Error::Invalid("NUL in device path".into()))?;
    // Replace whatever the image had there (never following it).
    let _ = nix::unistd::unlinkat(
        &dirfd,
        cname.as_c_str(),
        nix::unistd::UnlinkatFlags::NoRemoveDir,
    );
    let dev = nix::sys::stat::makedev(major, minor);
    let sflag = nix::sys::stat::SFlag::from_bits_truncate(typ);
    // The exact mode at creation (no umask), so that nothing has to follow the name
    // afterwards (a chmod by name could be redirected through a swapped-in symlink).
    let old_umask = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    let res = nix::sys::stat::mknodat(
        &dirfd,
        cname.as_c_str(),
        sflag,
        nix::sys::stat::Mode::from_bits_truncate(mode & 0o7777),
        dev,
    );
    nix::sys::stat::umask(old_umask);
    let res = res.with_ctx(|| format!("mknod {}", path.display()));
    if res.is_ok() {
        let _ = nix::unistd::fchownat(
            &dirfd,
            cname.as_c_str(),
            uid.map(nix::unistd::Uid::from_raw),
            gid.map(nix::unistd::Gid::from_raw),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        );
    }
    res
}

fn create_dev_links(root: RawFd) -> Result<()> {
    let dev = open_in_root(root, Path::new("/dev"), libc::O_PATH | libc::O_DIRECTORY)
        .ctx("open /dev in rootfs")?;
    let mut links = vec![
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ];
    if Path::new("/proc/kcore").exists() {
        links.push(("/proc/kcore", "core"));
    }
    for (target, name) in links {
        match nix::unistd::symlinkat(target, &dev, name) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(Error::os(format!("symlink /dev/{name}"), e)),
        }
    }
    // /dev/ptmx -> pts/ptmx when the container has its own devpts.
    if open_in_root(root, Path::new("/dev/pts/ptmx"), libc::O_PATH).is_ok() {
        let _ = nix::unistd::unlinkat(&dev, "ptmx", nix::unistd::UnlinkatFlags::NoRemoveDir);
        nix::unistd::symlinkat("pts/ptmx", &dev, "ptmx").ctx("symlink /dev/ptmx")?;
    }
    Ok(())
}

/// A proc or sysfs mount goes on a directory or where nothing is yet, never through a
/// symlink of the image (as runc): an image's `/proc -> /data/p` would put the procfs where a
/// volume then covers it, and leave the container's /proc to the image (CVE-2019-16884,
/// CVE-2023-28642).
fn ordinary_dir(root: RawFd, dest: &Path, typ: &str) -> Result<()> {
    use nix::sys::stat::SFlag;
    let (Some(parent), Some(name)) = (dest.parent(), dest.file_name()) else {
        return Ok(());
    };
    let dir = match open_in_root(root, parent, libc::O_PATH | libc::O_DIRECTORY) {
        Ok(d) => d,
        // Made below, as directories.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(Error::os(format!("open {} in rootfs", parent.display()), e)),
    };
    match nix::sys::stat::fstatat(&dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFDIR => {
            Err(Error::Invalid(format!(
                "mount of {typ} on {}: not an ordinary directory in the rootfs (a symlink or a \
                 file); {typ} is mounted only on a directory",
                dest.display()
            )))
        }
        Ok(_) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(Error::os(format!("stat {} in rootfs", dest.display()), e)),
    }
}

/// Whether `fd` is on a procfs.
fn on_procfs(fd: &OwnedFd) -> std::io::Result<bool> {
    Ok(nix::sys::statfs::fstatfs(fd)?.filesystem_type() == nix::sys::statfs::PROC_SUPER_MAGIC)
}

/// Opens /proc/sys/`file` of the container's procfs for writing, so that nothing mounted or
/// planted on the way can redirect the write (CVE-2025-52881: a symlink or bind mount in
/// /proc/sys/net/ipv4 turned a pod's sysctl into a write to the host's core_pattern): /proc
/// must be the root of a procfs, reached without a symlink, and the file is resolved from it
/// with no symlink and no mount crossed, and checked to be on procfs.
fn open_sysctl(root: RawFd, file: &str) -> std::io::Result<OwnedFd> {
    open_proc_file(root, &format!("sys/{file}"), libc::O_WRONLY)
}

/// Opens `rel` (such as "sys/net/core/somaxconn" or "1/attr/apparmor/exec") under the /proc
/// of the root `root` with `flags`, as [`open_sysctl`] does: refused unless /proc is a procfs
/// root reached without a symlink and the file is on it, reached without a symlink or a mount.
pub(crate) fn open_proc_file(root: RawFd, rel: &str, flags: i32) -> std::io::Result<OwnedFd> {
    let bad = |what: &str| std::io::Error::other(what.to_string());
    let proc_dir = sys::openat2(
        root,
        c"proc",
        libc::O_PATH | libc::O_DIRECTORY,
        0,
        sys::RESOLVE_BENEATH | sys::RESOLVE_NO_SYMLINKS,
    )?;
    if !on_procfs(&proc_dir)? || nix::sys::stat::fstat(&proc_dir)?.st_ino != 1 {
        return Err(bad("/proc is not a procfs mount"));
    }
    let rel = sys::cstr(rel);
    let fd = sys::openat2(
        proc_dir.as_raw_fd(),
        &rel,
        flags,
        0,
        sys::RESOLVE_BENEATH
            | sys::RESOLVE_NO_SYMLINKS
            | sys::RESOLVE_NO_MAGICLINKS
            | sys::RESOLVE_NO_XDEV,
    )
    .map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) => bad("a symlink is on the way (refused)"),
        Some(libc::EXDEV) => bad("a mount is on the way (refused)"),
        _ => e,
    })?;
    if !on_procfs(&fd)? {
        return Err(bad("not on procfs (refused)"));
    }
    Ok(fd)
}

/// Files under /proc that a bind mount may cover: lxcfs's (runc allows the same ones).
const PROC_BINDS_ALLOWED: &[&str] = &[
    "/proc/cpuinfo",
    "/proc/diskstats",
    "/proc/meminfo",
    "/proc/stat",
    "/proc/swaps",
    "/proc/uptime",
    "/proc/loadavg",
    "/proc/slabinfo",
    "/proc/sys/kernel/ns_last_pid",
    "/proc/sys/devices/system/cpu/online",
];

/// A mount may not land on procfs (CVE-2019-16884, CVE-2019-19921: a volume at /proc/sys/…,
/// or at a path the image made a symlink into /proc, hides the kernel's files behind ones
/// the container controls, which the runtime then writes to: sysctls, LSM attributes). Only
/// proc itself at /proc, and binds of lxcfs's files at their own paths (no symlink on the
/// way), land there. `target` is the destination as resolved in the root.
fn check_not_on_proc(
    root: RawFd,
    target: &OwnedFd,
    dest: &Path,
    typ: &str,
    bind: bool,
) -> Result<()> {
    if !on_procfs(target).with_ctx(|| format!("fstatfs {}", dest.display()))? {
        return Ok(());
    }
    let clean: PathBuf = Path::new("/").join(
        dest.components()
            .filter(|c| matches!(c, std::path::Component::Normal(_)))
            .collect::<PathBuf>(),
    );
    let exact = || {
        let rel = sys::cstr(&clean.to_string_lossy()[1..]);
        sys::openat2(
            root,
            &rel,
            libc::O_PATH,
            0,
            sys::RESOLVE_IN_ROOT | sys::RESOLVE_NO_SYMLINKS,
        )
        .is_ok()
    };
    if typ == "proc" && clean == Path::new("/proc") && exact() {
        return Ok(());
    }
    if bind && PROC_BINDS_ALLOWED.iter().any(|a| clean == Path::new(a)) && exact() {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "mount destination {} is on procfs: refused (a mount there hides the kernel's own \
         files; only proc at /proc and binds of lxcfs's files in /proc are allowed)",
        dest.display()
    )))
}

/// sysctl, readonlyPaths and maskedPaths (after the hooks, before pivot_root). `devnull`
/// is the host's /dev/null, checked to be the real character device 1:3.
pub fn finish_paths(spec: &Spec, root: RawFd, devnull: &OwnedFd) -> Result<()> {
    let Some(linux) = spec.linux() else {
        return Ok(());
    };
    if let Some(sysctl) = linux.sysctl() {
        for (k, v) in sysctl {
            let Some((_, file)) = crate::config::sysctl_key(k) else {
                return Err(Error::Config(format!("linux.sysctl key {k:?} is invalid")));
            };
            let fd = open_sysctl(root, &file)
                .with_ctx(|| format!("linux.sysctl {k}: open /proc/sys/{file}"))?;
            let mut f = std::fs::File::from(fd);
            std::io::Write::write_all(&mut f, v.as_bytes())
                .with_ctx(|| format!("linux.sysctl {k}={v}"))?;
        }
    }
    for p in linux.readonly_paths().iter().flatten() {
        let fd = match open_in_root(root, Path::new(p), libc::O_PATH) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(Error::os(format!("linux.readonlyPaths {p}"), e)),
        };
        let t = proc_fd(&fd);
        mount_at(Some(&t), &t, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)
            .with_ctx(|| format!("readonlyPaths: bind {p}"))?;
        let m =
            open_in_root(root, Path::new(p), libc::O_PATH).with_ctx(|| format!("reopen {p}"))?;
        let mt = proc_fd(&m);
        let want = MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC
            | locked_flags(&mt);
        mount_at(
            None,
            &mt,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_REC | want,
            None,
        )
        .with_ctx(|| format!("readonlyPaths: remount {p} read-only"))?;
    }
    let nullp = proc_fd(devnull);
    for p in linux.masked_paths().iter().flatten() {
        let fd = match open_in_root(root, Path::new(p), libc::O_PATH | libc::O_NOFOLLOW) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(Error::os(format!("linux.maskedPaths {p}"), e)),
        };
        let t = proc_fd(&fd);
        let meta = std::fs::metadata(&t).with_ctx(|| format!("maskedPaths: stat {p}"))?;
        if meta.is_dir() {
            mount_at(
                Some("tmpfs"),
                &t,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                Some("size=0k"),
            )
            .with_ctx(|| format!("maskedPaths: mask directory {p}"))?;
        } else {
            mount_at(Some(&nullp), &t, None, MsFlags::MS_BIND, None)
                .with_ctx(|| format!("maskedPaths: mask {p}"))?;
        }
    }
    Ok(())
}

/// Opens the host's /dev/null and checks it is the real device (a replaced /dev/null must
/// not be bind-mounted over masked paths).
pub fn open_devnull() -> Result<OwnedFd> {
    let fd = nix::fcntl::open(
        "/dev/null",
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ctx("open /dev/null")?;
    let meta = std::fs::metadata(proc_fd(&fd)).ctx("stat /dev/null")?;
    if !meta.file_type().is_char_device() || meta.rdev() != nix::sys::stat::makedev(1, 3) {
        return Err(Error::Invalid(
            "/dev/null is not the null character device (1:3)".into(),
        ));
    }
    Ok(fd)
}

/// pivot_root into the rootfs (or move-mount + chroot with `no_pivot`), then detach the old
/// root so nothing of the host stays reachable.
pub fn enter(root: &OwnedFd, rootfs: &Path, no_pivot: bool) -> Result<()> {
    // Always through the handle of the rootfs mount, never its path again.
    nix::unistd::fchdir(root).with_ctx(|| format!("fchdir rootfs {}", rootfs.display()))?;
    if no_pivot {
        mount_at(Some("."), "/", None, MsFlags::MS_MOVE, None)
            .ctx("move rootfs to / (--no-pivot)")?;
        nix::unistd::chroot(".").ctx("chroot (--no-pivot)")?;
        nix::unistd::chdir("/").ctx("chdir /")?;
        return Ok(());
    }
    let old_root = nix::fcntl::open(
        "/",
        nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ctx("open the old root")?;
    nix::unistd::pivot_root(".", ".").with_ctx(|| format!("pivot_root {}", rootfs.display()))?;
    // The old root is now stacked on the new one. Step into it (not "." of the new root,
    // whose mounts must keep their propagation), make it a slave so that detaching it
    // does not propagate to the host, then detach it.
    nix::unistd::fchdir(&old_root).ctx("fchdir old root")?;
    drop(old_root);
    mount_at(None, ".", None, MsFlags::MS_SLAVE | MsFlags::MS_REC, None)
        .ctx("make old root a slave")?;
    nix::mount::umount2(".", MntFlags::MNT_DETACH).ctx("detach old root")?;
    nix::unistd::chdir("/").ctx("chdir /")?;
    Ok(())
}

/// After pivot_root: a read-only root and the configured rootfs propagation.
pub fn finish_root(spec: &Spec, in_userns: bool) -> Result<()> {
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        let keep = if in_userns {
            locked_flags("/")
        } else {
            MsFlags::empty()
        };
        mount_at(
            None,
            "/",
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | keep,
            None,
        )
        .ctx("remount / read-only")?;
    }
    if let Some(p) = spec
        .linux()
        .as_ref()
        .and_then(|l| l.rootfs_propagation().as_deref())
    {
        if let Some(f) = propagation_flag(p) {
            mount_at(None, "/", None, f, None)
                .with_ctx(|| format!("set rootfs propagation {p}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let o = parse_options(&[
            "nosuid,noexec".into(),
            "rbind".into(),
            "rslave".into(),
            "mode=755".into(),
        ])
        .unwrap();
        assert!(o.flags.contains(MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC));
        assert!(o.bind && o.recursive);
        assert_eq!(o.propagation, vec![MsFlags::MS_SLAVE | MsFlags::MS_REC]);
        assert_eq!(o.data, vec!["mode=755"]);
        let o = parse_options(&["ro".into(), "rw".into()]).unwrap();
        assert!(!o.flags.contains(MsFlags::MS_RDONLY));
        // (idmap/ridmap are made before the clone: idmap.rs.)
        assert!(parse_options(&["idmap".into()]).unwrap().data.is_empty());
        let o = parse_options(&["rbind,rro,rnosuid,rnoatime".into(), "rrw".into()]).unwrap();
        use crate::sys::*;
        assert_eq!(o.rec_set, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOATIME);
        assert_eq!(o.rec_clr, MOUNT_ATTR_RDONLY | MOUNT_ATTR__ATIME);
        assert!(o.data.is_empty());
    }
}
