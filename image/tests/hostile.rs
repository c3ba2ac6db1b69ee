//! Hostile and unusual layers, unpacked directly: each hostile case must be refused with
//! HostileLayer and leave everything outside the layer directory untouched.

mod common;
use common::*;
use rsrun_image::unpack::{unpack, UnpackOptions};
use rsrun_image::Error;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use tar::EntryType;

struct Scene {
    _t: TempDir,
    layer: std::path::PathBuf,
    outside: std::path::PathBuf,
}

fn scene() -> Scene {
    let t = TempDir::new("hostile");
    let layer = t.path().join("layer");
    let outside = t.path().join("outside");
    std::fs::create_dir_all(&layer).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("sentinel"), b"orig").unwrap();
    Scene {
        _t: t,
        layer,
        outside,
    }
}

fn assert_outside_untouched(s: &Scene) {
    let names: Vec<String> = std::fs::read_dir(&s.outside)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into())
        .collect();
    assert_eq!(
        names,
        vec!["sentinel".to_string()],
        "outside dir gained entries"
    );
    assert_eq!(std::fs::read(s.outside.join("sentinel")).unwrap(), b"orig");
    let parent: Vec<String> = std::fs::read_dir(s.layer.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into())
        .collect();
    let mut parent = parent;
    parent.sort();
    assert_eq!(
        parent,
        vec!["layer".to_string(), "outside".to_string()],
        "entries created next to the layer"
    );
}

/// A GNU sparse entry named `name` of `real_size` bytes: a hole, then its last 512 bytes
/// (the entry's data).
fn sparse_header(name: &str, real_size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    {
        let g = h.as_gnu_mut().unwrap();
        g.name[..name.len()].copy_from_slice(name.as_bytes());
        g.sparse[0].set_offset(real_size - 512);
        g.sparse[0].set_length(512);
        g.set_real_size(real_size);
    }
    h.set_entry_type(EntryType::GNUSparse);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(512);
    h.set_cksum();
    h
}

fn raw_tar(headers: Vec<(tar::Header, Vec<u8>)>) -> Vec<u8> {
    let mut out = Vec::new();
    for (h, data) in headers {
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(&data);
        let pad = (512 - data.len() % 512) % 512;
        out.extend(std::iter::repeat_n(0u8, pad));
    }
    out.extend(std::iter::repeat_n(0u8, 1024));
    out
}

fn expect_hostile(s: &Scene, tar: &[u8], why: &str) {
    let r = unpack(tar, &s.layer, "test-layer", &UnpackOptions::default());
    match r {
        Err(Error::HostileLayer { reason, .. }) => assert!(
            reason.contains(why),
            "reason {reason:?} does not mention {why:?}"
        ),
        other => panic!("expected HostileLayer ({why}), got {other:?}"),
    }
    assert_outside_untouched(s);
}

#[test]
fn dotdot_entry_is_refused() {
    let s = scene();
    let t = raw_tar(vec![(
        raw_header("../outside/evil", EntryType::Regular, 0o644, 4, None),
        b"evil".to_vec(),
    )]);
    expect_hostile(&s, &t, "'..'");
    let t = raw_tar(vec![(
        raw_header("a/../../outside/evil", EntryType::Regular, 0o644, 4, None),
        b"evil".to_vec(),
    )]);
    expect_hostile(&s, &t, "'..'");
}

#[test]
fn absolute_path_is_refused() {
    let s = scene();
    let p = format!("{}/evil", s.outside.display());
    let t = raw_tar(vec![(
        raw_header(&p, EntryType::Regular, 0o644, 4, None),
        b"evil".to_vec(),
    )]);
    expect_hostile(&s, &t, "absolute");
}

#[test]
fn write_through_absolute_symlink_is_refused() {
    let s = scene();
    let target = s.outside.display().to_string();
    let t = raw_tar(vec![
        (
            raw_header("link", EntryType::Symlink, 0o777, 0, Some(&target)),
            vec![],
        ),
        (
            raw_header("link/sentinel", EntryType::Regular, 0o644, 4, None),
            b"evil".to_vec(),
        ),
    ]);
    expect_hostile(&s, &t, "outside the layer");
}

#[test]
fn write_through_relative_symlink_chain_is_refused() {
    let s = scene();
    let t = raw_tar(vec![
        (
            raw_header("a", EntryType::Symlink, 0o777, 0, Some(".")),
            vec![],
        ),
        (
            raw_header("a/b", EntryType::Symlink, 0o777, 0, Some("../outside")),
            vec![],
        ),
        (
            raw_header("a/b/pwned", EntryType::Regular, 0o644, 4, None),
            b"evil".to_vec(),
        ),
    ]);
    expect_hostile(&s, &t, "outside the layer");
}

#[test]
fn hardlink_to_outside_is_refused() {
    let s = scene();
    let t = raw_tar(vec![(
        raw_header("h", EntryType::Link, 0o644, 0, Some("../outside/sentinel")),
        vec![],
    )]);
    expect_hostile(&s, &t, "hardlink target");
    let abs = format!("{}/sentinel", s.outside.display());
    let t = raw_tar(vec![(
        raw_header("h", EntryType::Link, 0o644, 0, Some(&abs)),
        vec![],
    )]);
    expect_hostile(&s, &t, "hardlink target");
    // through a symlink inside the layer that points out
    let t = raw_tar(vec![
        (
            raw_header(
                "l",
                EntryType::Symlink,
                0o777,
                0,
                Some(&s.outside.display().to_string()),
            ),
            vec![],
        ),
        (
            raw_header("h2", EntryType::Link, 0o644, 0, Some("l/sentinel")),
            vec![],
        ),
    ]);
    expect_hostile(&s, &t, "outside the layer");
    assert_eq!(
        std::fs::metadata(s.outside.join("sentinel"))
            .unwrap()
            .nlink(),
        1
    );
}

#[test]
fn huge_sparse_file_is_refused() {
    let s = scene();
    let h = sparse_header("huge", 4u64 << 30);
    let t = raw_tar(vec![(h, vec![7u8; 512])]);
    expect_hostile(&s, &t, "sparse file expands");
    assert!(!s.layer.join("huge").exists());
}

/// Many sparse files each under the limit count together: 2000 entries of 1 GiB holes in a
/// layer of about a megabyte would have the reader fill in and scan 2 TB of zeros.
#[test]
fn many_sparse_files_count_together() {
    let s = scene();
    let mut entries = Vec::new();
    for i in 0..2000 {
        entries.push((sparse_header(&format!("s{i}"), 1u64 << 29), vec![7u8; 512]));
    }
    let t = raw_tar(entries);
    expect_hostile(&s, &t, "with the layer's other sparse files");
    // The first two (512 MiB each) fit the 1 GiB; the third is refused.
    assert!(!s.layer.join("s2").exists());
}

#[test]
fn small_sparse_file_keeps_its_holes() {
    let s = scene();
    let h = sparse_header("sparse", 64 << 20);
    let t = raw_tar(vec![(h, vec![7u8; 512])]);
    unpack(&t[..], &s.layer, "l", &UnpackOptions::default()).unwrap();
    let m = std::fs::metadata(s.layer.join("sparse")).unwrap();
    assert_eq!(m.len(), 64 << 20);
    assert!(
        m.blocks() * 512 < 1 << 20,
        "holes were written out: {} blocks",
        m.blocks()
    );
    // A stricter limit refuses the same file.
    let s2 = scene();
    let r = unpack(
        &t[..],
        &s2.layer,
        "l",
        &UnpackOptions {
            max_sparse_size: 1 << 20,
        },
    );
    assert!(matches!(r, Err(Error::HostileLayer { .. })), "{r:?}");
}

/// A whiteout applies only to the layers below (image spec): an entry the same layer made,
/// explicitly or as the parent of another, stays (it shadows the lower layers' anyway).
#[test]
fn a_whiteout_leaves_the_same_layers_entries() {
    let s = scene();
    let t = raw_tar(vec![
        (
            raw_header("a/x", EntryType::Regular, 0o644, 4, None),
            b"kept".to_vec(),
        ),
        (
            raw_header("a/.wh.x", EntryType::Regular, 0o644, 0, None),
            vec![],
        ),
        (
            raw_header("a/d/y", EntryType::Regular, 0o644, 4, None),
            b"also".to_vec(),
        ),
        (
            raw_header("a/.wh.d", EntryType::Regular, 0o644, 0, None),
            vec![],
        ),
        (
            raw_header("a/.wh.lower", EntryType::Regular, 0o644, 0, None),
            vec![],
        ),
    ]);
    unpack(&t[..], &s.layer, "l", &UnpackOptions::default()).unwrap();
    assert_eq!(std::fs::read(s.layer.join("a/x")).unwrap(), b"kept");
    assert_eq!(std::fs::read(s.layer.join("a/d/y")).unwrap(), b"also");
    // A whiteout of what the layer did not make is one (a 0/0 character device).
    let m = std::fs::symlink_metadata(s.layer.join("a/lower")).unwrap();
    assert!(m.file_type().is_char_device() && m.rdev() == 0, "{m:?}");
}

/// A lower layer beside the scene's with `a/d/old`.
fn lower_with_old_file(s: &Scene) -> std::path::PathBuf {
    let lower = s.layer.parent().unwrap().join("lower");
    std::fs::create_dir_all(lower.join("a/d")).unwrap();
    std::fs::write(lower.join("a/d/old"), b"old").unwrap();
    lower
}

/// The names in `dir` through an overlay of the scene's layer over `lower` (as a container
/// sees them).
fn names_over(s: &Scene, lower: &Path, dir: &str) -> Vec<String> {
    let merged = s.layer.parent().unwrap().join("merged");
    std::fs::create_dir_all(&merged).unwrap();
    let opts = format!("lowerdir={}:{}", s.layer.display(), lower.display());
    let ok = std::process::Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(&merged)
        .status()
        .unwrap();
    assert!(ok.success(), "mount overlay");
    let names = names_in(&merged.join(dir));
    let _ = std::process::Command::new("umount").arg(&merged).status();
    names
}

#[test]
fn a_directory_made_after_its_whiteout_hides_the_layers_below() {
    // The layer whites out a/d, then makes a/d again: through overlayfs the lower a/d's
    // files are gone and only the new ones show (a merge would bring `old` back).
    let s = scene();
    let lower = lower_with_old_file(&s);
    let t = raw_tar(vec![
        (
            raw_header("a/.wh.d", EntryType::Regular, 0o644, 0, None),
            vec![],
        ),
        (
            raw_header("a/d", EntryType::Directory, 0o755, 0, None),
            vec![],
        ),
        (
            raw_header("a/d/new", EntryType::Regular, 0o644, 3, None),
            b"new".to_vec(),
        ),
    ]);
    unpack(&t[..], &s.layer, "l", &UnpackOptions::default()).unwrap();
    assert_eq!(names_over(&s, &lower, "a/d"), vec!["new".to_string()]);
}

/// The same, the whiteout after the directory (in the same layer): the directory the layer
/// made replaces the lower one (opaque), the lower files the whiteout deleted stay deleted.
#[test]
fn a_directory_made_before_its_whiteout_hides_the_layers_below() {
    let s = scene();
    let lower = lower_with_old_file(&s);
    let t = raw_tar(vec![
        (
            raw_header("a/d/new", EntryType::Regular, 0o644, 3, None),
            b"new".to_vec(),
        ),
        (
            raw_header("a/.wh.d", EntryType::Regular, 0o644, 0, None),
            vec![],
        ),
    ]);
    unpack(&t[..], &s.layer, "l", &UnpackOptions::default()).unwrap();
    assert_eq!(names_over(&s, &lower, "a/d"), vec!["new".to_string()]);
}

/// One directory's entry repeated many times: one mtime kept (the last), not one per entry
/// (the repeats cost no inode: memory was the only bound).
#[test]
fn a_repeated_directory_entry_keeps_its_last_mtime() {
    let s = scene();
    let mut entries = Vec::new();
    for i in 0..1000u64 {
        let mut h = raw_header("d", EntryType::Directory, 0o755, 0, None);
        h.set_mtime(1_000_000 + i);
        h.set_cksum();
        entries.push((h, vec![]));
    }
    let t = raw_tar(entries);
    unpack(&t[..], &s.layer, "l", &UnpackOptions::default()).unwrap();
    let m = std::fs::metadata(s.layer.join("d")).unwrap();
    assert_eq!(m.mtime(), 1_000_999);
}

#[test]
fn whiteout_of_dotdot_is_refused() {
    let s = scene();
    let t = raw_tar(vec![(
        raw_header("x/.wh...", EntryType::Regular, 0o644, 0, None),
        vec![],
    )]);
    expect_hostile(&s, &t, "whiteout");
}

#[test]
fn symlink_replaced_by_file_is_not_followed() {
    let s = scene();
    let target = format!("{}/sentinel", s.outside.display());
    let t = raw_tar(vec![
        (
            raw_header("x", EntryType::Symlink, 0o777, 0, Some(&target)),
            vec![],
        ),
        (
            raw_header("x", EntryType::Regular, 0o644, 4, None),
            b"mine".to_vec(),
        ),
    ]);
    unpack(&t[..], &s.layer, "l", &UnpackOptions::default()).unwrap();
    assert_eq!(std::fs::read(s.layer.join("x")).unwrap(), b"mine");
    assert!(std::fs::symlink_metadata(s.layer.join("x"))
        .unwrap()
        .is_file());
    assert_outside_untouched(&s);
}

#[test]
fn regular_layer_metadata_whiteouts_and_special_files() {
    let s = scene();
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |h: &mut tar::Header, data: &[u8]| {
        h.set_cksum();
        b.append(h, data).unwrap();
    };
    add(&mut header("etc/", EntryType::Directory, 0o755, 0), b"");
    let mut f = header("etc/suid", EntryType::Regular, 0o4755, 3);
    f.set_uid(1234);
    f.set_gid(5678);
    f.set_mtime(1_234_567_890);
    add(&mut f, b"abc");
    // A hard link's header repeats its file's metadata, as tar writers make it.
    let mut h = header("etc/hard", EntryType::Link, 0o4755, 0);
    h.set_uid(1234);
    h.set_gid(5678);
    h.set_mtime(1_234_567_890);
    add(h.tap_link("etc/suid"), b"");
    add(
        header("etc/sym", EntryType::Symlink, 0o777, 0).tap_link("/etc/suid"),
        b"",
    );
    add(&mut header("dev/fifo", EntryType::Fifo, 0o600, 0), b"");
    let mut c = header("dev/null", EntryType::Char, 0o666, 0);
    c.set_device_major(1).unwrap();
    c.set_device_minor(3).unwrap();
    add(&mut c, b"");
    add(
        &mut header("old/.wh.gone", EntryType::Regular, 0o644, 0),
        b"",
    );
    add(
        &mut header("opq/.wh..wh..opq", EntryType::Regular, 0o644, 0),
        b"",
    );
    let mut d = header("etc/", EntryType::Directory, 0o750, 0);
    d.set_mtime(1_111_111_111);
    add(&mut d, b"");
    let mut tarball = b.into_inner().unwrap();
    // add a PAX xattr entry by hand
    let mut pb = tar::Builder::new(Vec::new());
    let mut xh = header("withx", EntryType::Regular, 0o644, 1);
    xh.set_cksum();
    pb.append_pax_extensions([
        ("SCHILY.xattr.user.test", &b"val"[..]),
        ("SCHILY.xattr.trusted.overlay.redirect", &b"/x"[..]),
    ])
    .unwrap();
    pb.append(&xh, &b"x"[..]).unwrap();
    let pax = pb.into_inner().unwrap();
    tarball.truncate(tarball.len() - 1024);
    tarball.extend_from_slice(&pax);

    let st = unpack(&tarball[..], &s.layer, "l", &UnpackOptions::default()).unwrap();
    assert!(st.entries >= 10);
    let l = &s.layer;
    let m = std::fs::metadata(l.join("etc/suid")).unwrap();
    assert_eq!((m.uid(), m.gid()), (1234, 5678));
    assert_eq!(
        m.permissions().mode() & 0o7777,
        0o4755,
        "setuid kept after chown"
    );
    assert_eq!(m.mtime(), 1_234_567_890);
    assert_eq!(m.nlink(), 2);
    assert_eq!(
        std::fs::metadata(l.join("etc/hard")).unwrap().ino(),
        m.ino()
    );
    assert_eq!(
        std::fs::read_link(l.join("etc/sym")).unwrap(),
        Path::new("/etc/suid")
    );
    assert!(std::fs::symlink_metadata(l.join("dev/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    let n = std::fs::symlink_metadata(l.join("dev/null")).unwrap();
    assert!(n.file_type().is_char_device());
    assert_eq!(n.rdev(), libc::makedev(1, 3));
    let w = std::fs::symlink_metadata(l.join("old/gone")).unwrap();
    assert!(
        w.file_type().is_char_device() && w.rdev() == 0,
        "whiteout is a 0/0 char device"
    );
    assert!(!l.join("old/.wh.gone").exists());
    assert_eq!(
        getxattr(&l.join("opq"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!l.join("opq/.wh..wh..opq").exists());
    let e = std::fs::metadata(l.join("etc")).unwrap();
    assert_eq!(e.permissions().mode() & 0o7777, 0o750);
    assert_eq!(
        e.mtime(),
        1_111_111_111,
        "directory mtime applied after its children"
    );
    assert_eq!(
        getxattr(&l.join("withx"), "user.test").as_deref(),
        Some(&b"val"[..])
    );
    assert_eq!(
        getxattr(&l.join("withx"), "trusted.overlay.redirect"),
        None,
        "overlay xattrs from a layer are dropped"
    );
}

trait TapLink {
    fn tap_link(&mut self, t: &str) -> &mut Self;
}
impl TapLink for tar::Header {
    fn tap_link(&mut self, t: &str) -> &mut Self {
        self.set_link_name(t).unwrap();
        self
    }
}

/// A hard link whose header says other metadata than its file's: the shared inode takes the
/// link's (owner, mode, mtime), as containerd and Docker unpack it; a link to a symlink
/// changes the symlink's owner and times, never the mode of what it points to. The file
/// capability a chown drops stays when the link's header gives none (and is untouched when
/// the header repeats the owner, as tar writers make it).
#[test]
fn a_hard_links_header_sets_the_shared_inodes_metadata() {
    let s = scene();
    let mut b = tar::Builder::new(Vec::new());
    fn add(b: &mut tar::Builder<Vec<u8>>, h: &mut tar::Header) {
        h.set_cksum();
        b.append(h, &b""[..]).unwrap();
    }
    add(&mut b, &mut header("f", EntryType::Regular, 0o600, 0));
    let mut h = header("hard", EntryType::Link, 0o2750, 0);
    h.set_uid(1000);
    h.set_gid(2000);
    h.set_mtime(1_500_000_000);
    add(&mut b, h.tap_link("f"));
    let out = s.outside.join("sentinel");
    add(
        &mut b,
        header("sym", EntryType::Symlink, 0o777, 0).tap_link(out.to_str().unwrap()),
    );
    let mut h = header("symhard", EntryType::Link, 0o777, 0);
    h.set_uid(1000);
    h.set_mtime(1_500_000_000);
    add(&mut b, h.tap_link("sym"));
    // cap_net_raw+ep (VFS_CAP_REVISION_2, effective).
    let cap: Vec<u8> = [0x0200_0001u32, 1 << 13, 0, 0, 0]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    b.append_pax_extensions([("SCHILY.xattr.security.capability", &cap[..])])
        .unwrap();
    add(&mut b, &mut header("capf", EntryType::Regular, 0o755, 0));
    add(
        &mut b,
        header("capsame", EntryType::Link, 0o755, 0).tap_link("capf"),
    );
    let mut h = header("capowner", EntryType::Link, 0o755, 0);
    h.set_uid(1000);
    add(&mut b, h.tap_link("capf"));
    let tarball = b.into_inner().unwrap();
    let before = std::fs::metadata(&out).unwrap().mode();
    unpack(&tarball[..], &s.layer, "l", &UnpackOptions::default()).unwrap();
    let m = std::fs::metadata(s.layer.join("f")).unwrap();
    assert_eq!(
        (m.uid(), m.gid(), m.mode() & 0o7777, m.mtime(), m.nlink()),
        (1000, 2000, 0o2750, 1_500_000_000, 2)
    );
    let l = std::fs::symlink_metadata(s.layer.join("sym")).unwrap();
    assert!(l.file_type().is_symlink());
    assert_eq!((l.uid(), l.mtime(), l.nlink()), (1000, 1_500_000_000, 2));
    assert_eq!(std::fs::metadata(&out).unwrap().mode(), before);
    let c = std::fs::metadata(s.layer.join("capf")).unwrap();
    assert_eq!((c.uid(), c.mode() & 0o7777, c.nlink()), (1000, 0o755, 3));
    assert_eq!(
        getxattr(&s.layer.join("capf"), "security.capability").as_deref(),
        Some(&cap[..]),
        "the file capability after its links' chown"
    );
    assert_outside_untouched(&s);
}

#[test]
fn truncated_tar_is_an_error_not_a_partial_success() {
    let s = scene();
    let t = tar_of(&[E::File("big", &[1u8; 10000], 0o644)]);
    let r = unpack(&t[..3000], &s.layer, "l", &UnpackOptions::default());
    assert!(matches!(r, Err(Error::BadLayer { .. })), "{r:?}");
}

/// Data after a header-only entry: the tar crate skips it, Go's archive/tar (containerd,
/// scanners) reads a header there. Here the "data" of `d/` is a header for `bin/sh` that
/// only a Go reader would unpack: refused, whichever reading is right.
#[test]
fn data_after_a_header_only_entry_is_refused() {
    for (name, kind, link) in [
        ("d/", EntryType::Directory, None),
        ("l", EntryType::Symlink, Some("x")),
        ("p", EntryType::Fifo, None),
        ("old/", EntryType::Regular, None),
    ] {
        let s = scene();
        let hidden = raw_header("bin/sh", EntryType::Regular, 0o755, 0, None);
        let t = raw_tar(vec![
            (
                raw_header(name, kind, 0o755, 512, link),
                hidden.as_bytes().to_vec(),
            ),
            (raw_header("f", EntryType::Regular, 0o644, 0, None), vec![]),
        ]);
        expect_hostile(&s, &t, "bytes of data");
    }
}

#[test]
fn hardlink_to_a_directory_is_refused() {
    let s = scene();
    let t = raw_tar(vec![
        (
            raw_header("d/", EntryType::Directory, 0o755, 0, None),
            vec![],
        ),
        (
            raw_header("h", EntryType::Link, 0o644, 0, Some("d")),
            vec![],
        ),
    ]);
    expect_hostile(&s, &t, "hardlink to a directory");
    assert!(!s.layer.join("h").exists());
}

/// A GNU long-name entry ('L') carrying `path`, then `header` for the entry it names.
fn long_name(path: &str, header: tar::Header, data: Vec<u8>) -> Vec<(tar::Header, Vec<u8>)> {
    let mut name = path.as_bytes().to_vec();
    name.push(0);
    let l = raw_header(
        "././@LongLink",
        EntryType::GNULongName,
        0o644,
        name.len() as u64,
        None,
    );
    vec![(l, name), (header, data)]
}

#[test]
fn long_names_with_dotdot_are_refused() {
    let s = scene();
    // Over 100 bytes: only the GNU long-name entry holds the real path.
    let deep = format!("{}../../../outside/evil", "a/".repeat(60));
    assert!(deep.len() > 100);
    let t = raw_tar(long_name(
        &deep,
        raw_header("placeholder", EntryType::Regular, 0o644, 4, None),
        b"evil".to_vec(),
    ));
    expect_hostile(&s, &t, "'..'");
    // The same through a PAX `path` record.
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([("path", deep.as_bytes())])
        .unwrap();
    let mut h = header("placeholder", EntryType::Regular, 0o644, 4);
    h.set_cksum();
    b.append(&h, &b"evil"[..]).unwrap();
    let t = b.into_inner().unwrap();
    expect_hostile(&s, &t, "'..'");
    // A long name without `..` is fine.
    let ok = format!("{}file", "b/".repeat(60));
    let t = raw_tar(long_name(
        &ok,
        raw_header("placeholder", EntryType::Regular, 0o644, 2, None),
        b"ok".to_vec(),
    ));
    unpack(&t[..], &s.layer, "l", &UnpackOptions::default()).unwrap();
    assert_eq!(std::fs::read(s.layer.join(&ok)).unwrap(), b"ok");
}

/// A PAX header that gives `size` (or `path`, `linkpath`) twice: the tar crate takes the first
/// record, Go's archive/tar (containerd, image scanners) the last; with two sizes the two
/// readers see different entries from there on (here a harmless document for Go, and an
/// `etc/ld.so.preload` hidden in its data for a first-record reader). Refused.
#[test]
fn pax_records_given_twice_are_refused() {
    let s = scene();
    let mut inner = tar::Builder::new(Vec::new());
    let mut h = header("etc/ld.so.preload", EntryType::Regular, 0o644, 4);
    h.set_cksum();
    inner.append(&h, &b"evil"[..]).unwrap();
    let hidden = inner.into_inner().unwrap()[..1024].to_vec();
    let mut b = tar::Builder::new(Vec::new());
    let size = hidden.len().to_string();
    b.append_pax_extensions([("size", &b"0"[..]), ("size", size.as_bytes())])
        .unwrap();
    let mut h = header(
        "usr/share/doc/README",
        EntryType::Regular,
        0o644,
        hidden.len() as u64,
    );
    h.set_cksum();
    b.append(&h, &hidden[..]).unwrap();
    let t = b.into_inner().unwrap();
    expect_hostile(&s, &t, "two `size` records");
    assert!(!s.layer.join("etc/ld.so.preload").exists());
    for key in ["path", "linkpath"] {
        let s = scene();
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([(key, &b"a"[..]), (key, &b"b"[..])])
            .unwrap();
        let mut h = header("x", EntryType::Regular, 0o644, 2);
        h.set_cksum();
        b.append(&h, &b"ok"[..]).unwrap();
        let t = b.into_inner().unwrap();
        expect_hostile(&s, &t, &format!("two `{key}` records"));
    }
}

#[test]
fn pax_sparse_files_are_refused() {
    let s = scene();
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([
        ("GNU.sparse.major", &b"1"[..]),
        ("GNU.sparse.minor", &b"0"[..]),
        ("GNU.sparse.name", &b"huge"[..]),
        ("GNU.sparse.realsize", &b"1099511627776"[..]),
    ])
    .unwrap();
    let mut h = header("GNUSparseFile.0/huge", EntryType::Regular, 0o644, 512);
    h.set_cksum();
    b.append(&h, &[0u8; 512][..]).unwrap();
    let t = b.into_inner().unwrap();
    let r = unpack(&t[..], &s.layer, "l", &UnpackOptions::default());
    assert!(
        matches!(&r, Err(Error::BadLayer { reason, .. }) if reason.contains("PAX-format sparse")),
        "{r:?}"
    );
    assert!(names_in(&s.layer).is_empty(), "{:?}", names_in(&s.layer));
    assert_outside_untouched(&s);
}

fn names_in(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into())
        .collect();
    v.sort();
    v
}

#[test]
fn whiteout_of_dot_is_refused() {
    let s = scene();
    let t = raw_tar(vec![(
        raw_header("x/.wh..", EntryType::Regular, 0o644, 0, None),
        vec![],
    )]);
    expect_hostile(&s, &t, "whiteout");
    let t = raw_tar(vec![(
        raw_header(".wh.", EntryType::Regular, 0o644, 0, None),
        vec![],
    )]);
    expect_hostile(&s, &t, "whiteout");
}

#[test]
fn aufs_metadata_entries_are_skipped() {
    let s = scene();
    let t = raw_tar(vec![
        (
            raw_header(".wh..wh.plnk/", EntryType::Directory, 0o700, 0, None),
            vec![],
        ),
        (
            raw_header(".wh..wh.plnk/12.34", EntryType::Regular, 0o644, 4, None),
            b"aufs".to_vec(),
        ),
        (
            raw_header(".wh..wh.aufs", EntryType::Regular, 0o644, 0, None),
            vec![],
        ),
        (
            raw_header("d/.wh..wh.orph/x", EntryType::Regular, 0o644, 0, None),
            vec![],
        ),
        (
            raw_header("kept", EntryType::Regular, 0o644, 0, None),
            vec![],
        ),
    ]);
    unpack(&t[..], &s.layer, "l", &UnpackOptions::default()).unwrap();
    assert_eq!(names_in(&s.layer), vec!["kept".to_string()]);
}

#[test]
fn overlay_xattrs_from_a_layer_are_dropped() {
    let s = scene();
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([
        ("SCHILY.xattr.user.overlay.redirect", &b"/etc"[..]),
        ("SCHILY.xattr.user.overlay.opaque", &b"y"[..]),
        ("SCHILY.xattr.trusted.overlay.opaque", &b"y"[..]),
        ("SCHILY.xattr.user.kept", &b"1"[..]),
    ])
    .unwrap();
    let mut h = header("d/", EntryType::Directory, 0o755, 0);
    h.set_cksum();
    b.append(&h, &[][..]).unwrap();
    let t = b.into_inner().unwrap();
    unpack(&t[..], &s.layer, "l", &UnpackOptions::default()).unwrap();
    let d = s.layer.join("d");
    assert_eq!(getxattr(&d, "user.overlay.redirect"), None);
    assert_eq!(getxattr(&d, "user.overlay.opaque"), None);
    assert_eq!(getxattr(&d, "trusted.overlay.opaque"), None);
    assert_eq!(getxattr(&d, "user.kept").as_deref(), Some(&b"1"[..]));
}

/// Every `trusted.*` xattr is the node's, never a layer's (containerd refuses them all);
/// `security.capability` is the file's, kept.
#[test]
fn trusted_xattrs_from_a_layer_are_dropped() {
    let s = scene();
    let mut b = tar::Builder::new(Vec::new());
    // A v2 file capability: CAP_NET_BIND_SERVICE (10) permitted and effective.
    let mut cap = Vec::new();
    for w in [0x0200_0001u32, 1 << 10, 0, 0, 0] {
        cap.extend_from_slice(&w.to_le_bytes());
    }
    b.append_pax_extensions([
        ("SCHILY.xattr.trusted.SGI_ACL_FILE", &b"x"[..]),
        ("SCHILY.xattr.trusted.glusterfs.gfid", &b"y"[..]),
        ("SCHILY.xattr.security.capability", &cap[..]),
    ])
    .unwrap();
    let mut h = header("f", EntryType::Regular, 0o755, 1);
    h.set_cksum();
    b.append(&h, &b"x"[..]).unwrap();
    let t = b.into_inner().unwrap();
    unpack(&t[..], &s.layer, "l", &UnpackOptions::default()).unwrap();
    let f = s.layer.join("f");
    assert_eq!(getxattr(&f, "trusted.SGI_ACL_FILE"), None);
    assert_eq!(getxattr(&f, "trusted.glusterfs.gfid"), None);
    assert_eq!(getxattr(&f, "security.capability"), Some(cap));
}

/// The mode is applied after the xattrs: an access ACL whose mask is rwx would otherwise
/// make a 0644 file's group bits rwx (the kernel keeps the mode's group bits and the mask
/// the same).
#[test]
fn the_mode_wins_over_an_acl_mask() {
    let s = scene();
    // POSIX ACL xattr v2: user::rw-, user:1000:rw-, group::r--, mask::rwx, other::r--.
    let mut acl = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (0x01u16, 6u16, u32::MAX),
        (0x02, 6, 1000),
        (0x04, 4, u32::MAX),
        (0x10, 7, u32::MAX),
        (0x20, 4, u32::MAX),
    ] {
        acl.extend_from_slice(&tag.to_le_bytes());
        acl.extend_from_slice(&perm.to_le_bytes());
        acl.extend_from_slice(&id.to_le_bytes());
    }
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([("SCHILY.xattr.system.posix_acl_access", &acl[..])])
        .unwrap();
    let mut h = header("f", EntryType::Regular, 0o644, 1);
    h.set_cksum();
    b.append(&h, &b"x"[..]).unwrap();
    let t = b.into_inner().unwrap();
    unpack(&t[..], &s.layer, "l", &UnpackOptions::default()).unwrap();
    let f = s.layer.join("f");
    assert!(
        getxattr(&f, "system.posix_acl_access").is_some(),
        "ACL not set"
    );
    let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o644, "mode {mode:o}");
}

/// Parents a layer leaves out are made 0755 whatever the umask (077 made them 0700, which
/// a container's non-root user cannot enter). In a child process (the test binary again):
/// the umask is the whole process's.
#[test]
fn implicit_parents_are_0755_under_any_umask() {
    const CHILD: &str = "RSRUN_IMAGE_UMASK_CHILD";
    if std::env::var_os(CHILD).is_some() {
        // SAFETY: umask has no failure mode; this child process runs this test alone.
        unsafe { libc::umask(0o077) };
        let s = scene();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = header("a/b/f", EntryType::Regular, 0o644, 1);
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        let t = b.into_inner().unwrap();
        unpack(&t[..], &s.layer, "l", &UnpackOptions::default()).unwrap();
        for d in ["a", "a/b"] {
            let m = std::fs::metadata(s.layer.join(d))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777;
            assert_eq!(m, 0o755, "{d}: {m:o}");
        }
        println!("child: checked");
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "implicit_parents_are_0755_under_any_umask",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("child: checked"),
        "{text}"
    );
}

#[test]
fn layer_bytes_quoted_in_errors_are_escaped() {
    let s = scene();
    // A mode field that is not a number: the tar reader's message quotes it.
    let mut h = raw_header("f", EntryType::Regular, 0o644, 0, None);
    h.as_old_mut().mode.copy_from_slice(b"\x1b[2J\r\n\x07\x1b");
    h.set_cksum();
    let t = raw_tar(vec![(h, vec![])]);
    let e = unpack(&t[..], &s.layer, "l", &UnpackOptions::default()).unwrap_err();
    let msg = e.to_string();
    assert!(rsrun_image::text::is_clean(&msg), "{msg:?}");
}

/// A tar stream made as it is read: `head`, then `fill` bytes of `b'a'`, then `tail`; counts
/// what its reader took.
struct Lazy {
    head: Vec<u8>,
    fill: u64,
    tail: Vec<u8>,
    at: u64,
    read: std::rc::Rc<std::cell::Cell<u64>>,
}

impl std::io::Read for Lazy {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let (h, f) = (self.head.len() as u64, self.fill);
        let mut n = 0;
        while n < buf.len() {
            let at = self.at;
            let b = if at < h {
                self.head[at as usize]
            } else if at < h + f {
                b'a'
            } else if at < h + f + self.tail.len() as u64 {
                self.tail[(at - h - f) as usize]
            } else {
                break;
            };
            buf[n] = b;
            n += 1;
            self.at += 1;
        }
        self.read.set(self.at);
        Ok(n)
    }
}

/// A small regular file if `second`, an extension entry (`kind`) of `size` bytes of `a`,
/// then a small regular file.
fn lazy_extension(
    kind: EntryType,
    size: u64,
    second: bool,
) -> (Lazy, std::rc::Rc<std::cell::Cell<u64>>) {
    let mut head = Vec::new();
    if second {
        head = raw_tar(vec![(
            raw_header("first", EntryType::Regular, 0o644, 3, None),
            b"one".to_vec(),
        )]);
        head.truncate(head.len() - 1024);
    }
    head.extend_from_slice(raw_header("././@LongLink", kind, 0o644, size, None).as_bytes());
    let mut tail = vec![0u8; ((512 - size % 512) % 512) as usize];
    tail.extend(raw_tar(vec![(
        raw_header("f", EntryType::Regular, 0o644, 2, None),
        b"ok".to_vec(),
    )]));
    let read = std::rc::Rc::new(std::cell::Cell::new(0));
    let lazy = Lazy {
        head,
        fill: size,
        tail,
        at: 0,
        read: read.clone(),
    };
    (lazy, read)
}

#[test]
fn huge_tar_headers_are_refused_before_they_are_read() {
    // The tar reader keeps a long name, long link or PAX header whole in memory: 64 MiB of
    // one (gzip makes that 64 KiB) must be refused after a few MiB, not read.
    for (kind, second) in [
        (EntryType::GNULongName, false),
        (EntryType::GNULongLink, false),
        (EntryType::XHeader, false),
        (EntryType::GNULongName, true),
        (EntryType::XHeader, true),
    ] {
        let s = scene();
        let (lazy, read) = lazy_extension(kind, 64 << 20, second);
        let r = unpack(lazy, &s.layer, "l", &UnpackOptions::default());
        match &r {
            Err(Error::HostileLayer { reason, .. }) => {
                assert!(reason.contains("MiB of tar headers"), "{kind:?}: {reason}")
            }
            other => panic!("{kind:?}: expected HostileLayer, got {other:?}"),
        }
        assert!(
            read.get() < 5 << 20,
            "{kind:?}: the unpacker read {} bytes of headers",
            read.get()
        );
        assert_outside_untouched(&s);
    }
    // A long name of 1 MiB (Go's archive/tar limit) is still read.
    let s = scene();
    let (lazy, _) = lazy_extension(EntryType::XHeader, 1 << 20, false);
    let r = unpack(lazy, &s.layer, "l", &UnpackOptions::default());
    // 1 MiB of `a` is not a valid PAX record: the reader's error, not the limit.
    assert!(matches!(&r, Err(Error::BadLayer { .. })), "{r:?}");
}

#[test]
fn data_is_not_counted_as_headers() {
    // Large file data between entries, a long name and a sparse entry whose archive size is
    // in a PAX record: all within the header limit, however big the data.
    let s = scene();
    let big = vec![7u8; 9 << 20];
    let mut entries = long_name(
        &format!("{}big", "d/".repeat(60)),
        raw_header(
            "placeholder",
            EntryType::Regular,
            0o644,
            big.len() as u64,
            None,
        ),
        big.clone(),
    );
    let data = 5u64 << 20;
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([("size", data.to_string().as_bytes())])
        .unwrap();
    let mut pax = b.into_inner().unwrap();
    pax.truncate(pax.len() - 1024); // the builder's end-of-archive blocks
                                    // A hole of 3 MiB, then 5 MiB of data; the header's own size field lies (0): the PAX
                                    // record gives the archive's 5 MiB.
    let mut sp = sparse_header("sparse", 8 << 20);
    sp.as_gnu_mut().unwrap().sparse[0].set_offset(3 << 20);
    sp.as_gnu_mut().unwrap().sparse[0].set_length(data);
    sp.set_size(0);
    sp.set_cksum();
    entries.push((
        raw_header("after", EntryType::Regular, 0o644, 3, None),
        b"end".to_vec(),
    ));
    let mut t = raw_tar(entries);
    t.truncate(t.len() - 1024);
    t.extend_from_slice(&pax);
    t.extend_from_slice(sp.as_bytes());
    t.extend(std::iter::repeat_n(9u8, data as usize));
    t.extend(raw_tar(vec![(
        raw_header("last", EntryType::Regular, 0o644, 2, None),
        b"ok".to_vec(),
    )]));
    unpack(&t[..], &s.layer, "l", &UnpackOptions::default()).unwrap();
    assert_eq!(
        std::fs::read(s.layer.join(format!("{}big", "d/".repeat(60)))).unwrap(),
        big
    );
    let sparse = std::fs::read(s.layer.join("sparse")).unwrap();
    assert_eq!(sparse.len(), 8 << 20);
    assert!(sparse[..3 << 20].iter().all(|b| *b == 0));
    assert!(sparse[3 << 20..].iter().all(|b| *b == 9));
    assert_eq!(std::fs::read(s.layer.join("last")).unwrap(), b"ok");
}
