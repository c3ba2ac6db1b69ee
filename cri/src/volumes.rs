//! The image's VOLUME entries (its config's `Volumes`), as containerd makes them: each path
//! that no CRI mount covers gets a directory of the container's own,
//! `ROOT/cri/volumes/ID/N`, which starts as a copy of what the image has at that path (its
//! files, directories, symlinks and special files with their modes and owners, the files'
//! and directories' extended attributes; an empty
//! directory where the image has nothing) and is bound read-write there. So the path is
//! writable with a read-only root filesystem (an image such as redis or postgres writes its
//! data there), and its writes bypass the overlay. The directories go with the container
//! (RemoveContainer, an undone CreateContainer, the sweep after a killed server).
//! `ignore_image_defined_volumes` turns this off, as containerd's setting of that name: the
//! paths then stay in the writable layer (CRI-O's default).

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};

use crate::api;

/// `path` without `.`, `..` and repeated slashes, as Go's filepath.Clean reads an absolute
/// path (`..` at the root stays there); None for a relative path.
pub fn clean(path: &str) -> Option<String> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return None;
    }
    Some(lexical(p))
}

fn lexical(p: &Path) -> String {
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => parts.push(n),
            Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    let joined: Vec<String> = parts
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    format!("/{}", joined.join("/"))
}

/// The image's volume paths that get a directory: cleaned, without those a CRI mount has
/// at the same path (the kubelet's volume wins, as containerd's `isInCRIMounts`), each once,
/// in order. A relative path is taken from the root (as containerd joins it); the root
/// itself is refused, naming it.
pub fn wanted(image: &[String], mounts: &[api::Mount]) -> Result<Vec<String>, String> {
    let covered: Vec<String> = mounts
        .iter()
        .filter_map(|m| clean(&m.container_path))
        .collect();
    let mut out: Vec<String> = Vec::new();
    for v in image {
        let c = lexical(&Path::new("/").join(v));
        if c == "/" {
            return Err(format!("the image's volume {v:?} would cover the root"));
        }
        if !covered.contains(&c) && !out.contains(&c) {
            out.push(c);
        }
    }
    out.sort();
    Ok(out)
}

/// Where the volumes of container `id` are.
pub fn dir(root: &Path, id: &str) -> PathBuf {
    root.join(id)
}

/// Makes `dir/N` for each path of `wanted` from what the mounted root filesystem `rootfs`
/// has there (resolved inside it: a symlink in the image cannot lead out), and returns the
/// mounts to add. `owner` is the host's uid and gid of the container's root (not 0 in a
/// user namespace). `dir` is root's, mode 0710 with that gid (the container's root may pass,
/// nobody else; the image's files, setuid binaries and device nodes included, are out of
/// other host users' reach, as the image store keeps its own; nobody but root may change
/// its entries while they are made), and an empty volume is the container root's. On an
/// error `dir` may be half made: the caller removes it.
pub fn make(
    rootfs: &Path,
    dir: &Path,
    wanted: &[String],
    owner: (u32, u32),
) -> Result<Vec<api::Mount>, String> {
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let own = |p: &Path| {
        std::os::unix::fs::chown(p, Some(owner.0), Some(owner.1))
            .map_err(|e| format!("chown {}: {e}", p.display()))
    };
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("create {}: {e}", dir.display()))?;
    std::os::unix::fs::chown(dir, Some(0), Some(owner.1))
        .map_err(|e| format!("chown {}: {e}", dir.display()))?;
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o710))
        .map_err(|e| format!("chmod {}: {e}", dir.display()))?;
    let root =
        std::fs::File::open(rootfs).map_err(|e| format!("open {}: {e}", rootfs.display()))?;
    let mut mounts = Vec::new();
    for (n, path) in wanted.iter().enumerate() {
        let to = dir.join(n.to_string());
        let what = format!("the image's volume {path}");
        let src = rsrun::rootfs::open_in_root(
            root.as_raw_fd(),
            Path::new(path),
            nix::libc::O_RDONLY | nix::libc::O_DIRECTORY | nix::libc::O_CLOEXEC,
        );
        match src {
            Ok(src) => copy_up(&src, &to).map_err(|e| format!("{what}: {e}"))?,
            // Nothing there in the image: an empty directory (the runtime makes the mount
            // point).
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => {
                std::fs::DirBuilder::new()
                    .mode(0o755)
                    .create(&to)
                    .map_err(|e| format!("{what}: create {}: {e}", to.display()))?;
                own(&to)?;
            }
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOTDIR) => {
                return Err(format!("{what} is not a directory in the image"))
            }
            Err(e) => return Err(format!("{what}: open in {}: {e}", rootfs.display())),
        }
        mounts.push(api::Mount {
            container_path: path.clone(),
            host_path: to.to_string_lossy().into_owned(),
            readonly: false,
            propagation: api::MountPropagation::PropagationPrivate as i32,
            ..Default::default()
        });
    }
    Ok(mounts)
}

/// `to` made as a copy of the directory `src`: its tree, then its own owner, extended
/// attributes and mode.
fn copy_up(src: &OwnedFd, to: &Path) -> Result<(), String> {
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(to)
        .map_err(|e| format!("create {}: {e}", to.display()))?;
    let dst: OwnedFd = std::fs::File::open(to)
        .map_err(|e| format!("open {}: {e}", to.display()))?
        .into();
    rsrun::rootfs::copy_tree(src, &dst).map_err(|e| format!("copy into {}: {e}", to.display()))?;
    let st = nix::sys::stat::fstat(src).map_err(|e| format!("stat: {e}"))?;
    nix::unistd::fchown(
        &dst,
        Some(nix::unistd::Uid::from_raw(st.st_uid)),
        Some(nix::unistd::Gid::from_raw(st.st_gid)),
    )
    .map_err(|e| format!("chown {}: {e}", to.display()))?;
    rsrun::rootfs::copy_xattrs(src, &dst).map_err(|e| format!("{}: {e}", to.display()))?;
    nix::sys::stat::fchmod(
        &dst,
        nix::sys::stat::Mode::from_bits_truncate(st.st_mode & 0o7777),
    )
    .map_err(|e| format!("chmod {}: {e}", to.display()))
}

/// Removes the volumes of container `id` (absent is removed), however deep the container
/// made them.
pub fn remove(root: &Path, id: &str) -> Result<(), String> {
    let d = dir(root, id);
    rsrun_image::remove_tree(&d).map_err(|e| format!("remove {}: {e}", d.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(p: &str) -> api::Mount {
        api::Mount {
            container_path: p.into(),
            host_path: "/x".into(),
            ..Default::default()
        }
    }

    #[test]
    fn paths_are_cleaned_and_a_cri_mount_at_the_same_path_wins() {
        assert_eq!(clean("/data/"), Some("/data".into()));
        assert_eq!(clean("//var/./lib/../run"), Some("/var/run".into()));
        assert_eq!(clean("/../x"), Some("/x".into()));
        assert_eq!(clean("data"), None);
        let image = vec![
            "/var/lib/db/".to_string(),
            "/data".to_string(),
            "/cache".to_string(),
            "/data/.".to_string(),
            "rel/../logs".to_string(),
        ];
        let got = wanted(&image, &[mount("/var/lib/db"), mount("/other")]).unwrap();
        assert_eq!(got, ["/cache", "/data", "/logs"]);
        let e = wanted(&["/x/..".into()], &[]).unwrap_err();
        assert!(e.contains("cover the root"), "{e}");
    }

    /// The copy keeps modes, owners and symlinks as they are (a symlink's target is not
    /// followed: the copy of one pointing at the host's /etc/passwd stays a symlink), an
    /// absent path becomes an empty directory, a file is refused, and a symlinked volume
    /// path resolves inside the rootfs, never on the host.
    #[test]
    fn the_copy_keeps_the_images_tree_and_stays_in_the_rootfs() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let t = std::env::temp_dir().join(format!("rsrun-volumes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&t);
        let rootfs = t.join("rootfs");
        std::fs::create_dir_all(rootfs.join("data/sub")).unwrap();
        std::fs::write(rootfs.join("data/sub/seed"), "seed").unwrap();
        std::fs::set_permissions(
            rootfs.join("data/sub/seed"),
            PermissionsExt::from_mode(0o640),
        )
        .unwrap();
        std::os::unix::fs::chown(rootfs.join("data/sub/seed"), Some(65534), Some(65533)).unwrap();
        std::fs::set_permissions(rootfs.join("data"), PermissionsExt::from_mode(0o1750)).unwrap();
        std::os::unix::fs::chown(rootfs.join("data"), Some(65534), Some(65534)).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", rootfs.join("data/link")).unwrap();
        // A setuid file (a chown after the chmod would clear the bit), two names of one
        // file, a FIFO of mode 0666 (the umask would take 0022 off), an old mtime.
        std::fs::write(rootfs.join("data/suid"), "x").unwrap();
        std::os::unix::fs::chown(rootfs.join("data/suid"), Some(65534), Some(65534)).unwrap();
        std::fs::set_permissions(rootfs.join("data/suid"), PermissionsExt::from_mode(0o4755))
            .unwrap();
        std::fs::hard_link(rootfs.join("data/sub/seed"), rootfs.join("data/seed2")).unwrap();
        nix::unistd::mkfifo(
            &rootfs.join("data/fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o666),
        )
        .unwrap();
        std::fs::set_permissions(rootfs.join("data/fifo"), PermissionsExt::from_mode(0o666))
            .unwrap();
        std::fs::File::options()
            .write(true)
            .open(rootfs.join("data/suid"))
            .unwrap()
            .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000))
            .unwrap();
        std::fs::set_permissions(rootfs.join("data/suid"), PermissionsExt::from_mode(0o4755))
            .unwrap();
        std::fs::write(rootfs.join("file"), "x").unwrap();
        // Extended attributes: a file capability (cap_net_raw, effective: what `setcap
        // cap_net_raw+ep` writes) on a file of another owner (a chown clears it), user
        // attributes on a file and on the volume's own directory, and overlayfs's mark.
        std::fs::write(rootfs.join("data/ping"), "x").unwrap();
        std::os::unix::fs::chown(rootfs.join("data/ping"), Some(65534), Some(65534)).unwrap();
        let cap: Vec<u8> = [0x0200_0001u32, 1 << 13, 0, 0, 0]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        let set = |p: &str, name: &std::ffi::CStr, v: &[u8]| {
            let f = std::fs::File::open(rootfs.join(p)).unwrap();
            rsrun::sys::fsetxattr(std::os::fd::AsFd::as_fd(&f), name, v).unwrap();
        };
        set("data/ping", c"security.capability", &cap);
        set("data/sub/seed", c"user.rsrun", b"seed");
        set("data", c"user.rsrun", b"top");
        set("data/sub", c"trusted.overlay.opaque", b"y");
        set("data/sub", c"user.rsrun", b"sub");
        // A volume path that is an absolute symlink: inside the rootfs, /data.
        std::os::unix::fs::symlink("/data", rootfs.join("viasym")).unwrap();
        let dir = t.join("vols");
        let want = vec![
            "/data".to_string(),
            "/missing/deep".to_string(),
            "/viasym".to_string(),
        ];
        let m = make(&rootfs, &dir, &want, (4242, 4343)).unwrap();
        let md = std::fs::metadata(&dir).unwrap();
        assert_eq!((md.mode() & 0o7777, md.uid(), md.gid()), (0o710, 0, 4343));
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].container_path, "/data");
        assert!(!m[0].readonly);
        let data = Path::new(&m[0].host_path);
        let md = std::fs::metadata(data).unwrap();
        assert_eq!(
            (md.mode() & 0o7777, md.uid(), md.gid()),
            (0o1750, 65534, 65534)
        );
        let seed = std::fs::metadata(data.join("sub/seed")).unwrap();
        assert_eq!(
            (seed.mode() & 0o7777, seed.uid(), seed.gid()),
            (0o640, 65534, 65533)
        );
        assert_eq!(
            std::fs::read_to_string(data.join("sub/seed")).unwrap(),
            "seed"
        );
        assert_eq!(
            std::fs::read_link(data.join("link")).unwrap(),
            Path::new("/etc/passwd")
        );
        let suid = std::fs::metadata(data.join("suid")).unwrap();
        assert_eq!(
            (suid.mode() & 0o7777, suid.uid(), suid.mtime()),
            (0o4755, 65534, 1_000_000_000),
            "the setuid file's mode, owner and mtime"
        );
        assert_eq!(
            std::fs::metadata(data.join("seed2")).unwrap().ino(),
            std::fs::metadata(data.join("sub/seed")).unwrap().ino(),
            "two names of one file stay one file"
        );
        assert_eq!(
            std::fs::symlink_metadata(data.join("fifo")).unwrap().mode() & 0o7777,
            0o666
        );
        let xattrs = |p: &Path| {
            let f = std::fs::File::open(p).unwrap();
            rsrun::sys::fxattrs(std::os::fd::AsFd::as_fd(&f)).unwrap()
        };
        let named = |n: &str, v: &[u8]| vec![(std::ffi::CString::new(n).unwrap(), v.to_vec())];
        assert_eq!(
            xattrs(&data.join("ping")),
            named("security.capability", &cap)
        );
        assert_eq!(xattrs(&data.join("sub/seed")), named("user.rsrun", b"seed"));
        assert_eq!(xattrs(data), named("user.rsrun", b"top"));
        assert_eq!(xattrs(&data.join("sub")), named("user.rsrun", b"sub"));
        let empty = Path::new(&m[1].host_path);
        assert_eq!(std::fs::read_dir(empty).unwrap().count(), 0);
        let md = std::fs::metadata(empty).unwrap();
        assert_eq!(
            (md.uid(), md.gid()),
            (4242, 4343),
            "the empty volume is the root's"
        );
        let via = Path::new(&m[2].host_path);
        assert!(
            via.join("sub/seed").exists(),
            "the symlinked path resolved in the rootfs"
        );
        let e = make(&rootfs, &t.join("vols2"), &["/file".to_string()], (0, 0)).unwrap_err();
        assert!(e.contains("/file is not a directory"), "{e}");
        remove(&t, "vols").unwrap();
        assert!(!dir.exists());
        remove(&t, "vols").unwrap();
        let _ = std::fs::remove_dir_all(&t);
    }
}
