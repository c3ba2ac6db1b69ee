//! What a container sees from inside: namespaces, rootfs, devices, process settings.

use rsrun_tests::*;
use serde_json::json;

fn sh(script: &str) -> Bundle {
    Bundle::new(&["sh", "-c", script])
}

fn ns_inode(pid: u32, ns: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{ns}"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn new_namespaces() {
    let rt = Rsrun::new();
    let mut b = sh("echo pid=$$; hostname; domainname 2>/dev/null || cat /proc/sys/kernel/domainname; ls /sys/class/net; for n in ipc uts net mnt cgroup; do readlink /proc/self/ns/$n; done; cat /proc/self/cgroup");
    b.add_namespace("cgroup", None);
    b.edit(|c| {
        c["hostname"] = json!("box");
        c["domainname"] = json!("example.org");
    });
    let out = rt.output(&b);
    let me = std::process::id();
    assert!(out.contains("pid=1\n"), "{out}");
    assert!(
        out.contains("box\n") && out.contains("example.org"),
        "{out}"
    );
    let ifaces: Vec<&str> = out.lines().filter(|l| *l == "lo").collect();
    assert_eq!(ifaces, vec!["lo"], "{out}");
    for ns in ["ipc", "uts", "net", "mnt", "cgroup"] {
        assert!(
            out.contains(&format!("{ns}:[")),
            "{ns} namespace not listed: {out}"
        );
        assert!(
            !out.contains(&ns_inode(me, ns)),
            "{ns} namespace shared with the host: {out}"
        );
    }
    // In its own cgroup namespace the container's cgroup is the root.
    assert!(
        out.lines()
            .any(|l| l.ends_with(":/") && l.contains("memory")),
        "{out}"
    );
}

#[test]
fn join_namespace_by_path_and_reject_wrong_type() {
    let rt = Rsrun::new();
    let a = Bundle::new(&["sleep", "100"]);
    let ida = unique("nsa");
    rt.ok(&["run", "-d", "--bundle", a.dir.to_str().unwrap(), &ida]);
    let pid = rt.state(&ida)["pid"].as_i64().unwrap() as u32;
    let mut b = sh("readlink /proc/self/ns/net; readlink /proc/self/ns/uts");
    b.add_namespace("network", Some(&format!("/proc/{pid}/ns/net")));
    b.add_namespace("uts", Some(&format!("/proc/{pid}/ns/uts")));
    let out = rt.output(&b);
    assert!(out.contains(&ns_inode(pid, "net")), "{out}");
    assert!(out.contains(&ns_inode(pid, "uts")), "{out}");
    // A path of another namespace type is refused.
    let mut bad = sh("true");
    bad.add_namespace("network", Some(&format!("/proc/{pid}/ns/uts")));
    let e = rt.fails(&["run", "--bundle", bad.dir.to_str().unwrap(), &unique("bad")]);
    assert!(e.contains("\"uts\" namespace, not \"net\""), "{e}");
    rt.ok(&["delete", "-f", &ida]);
}

#[test]
fn user_namespace_with_mappings() {
    let rt = Rsrun::new();
    let mut b = sh("cat /proc/self/uid_map /proc/self/gid_map; id -u; ls -ln /bin/busybox");
    b.add_namespace("user", None);
    b.edit(|c| {
        c["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        c["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    });
    // The rootfs must be reachable by the mapped root.
    let out = rt.output(&b);
    let maps: Vec<Vec<&str>> = out
        .lines()
        .take(2)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(maps[0], vec!["0", "100000", "65536"], "{out}");
    assert_eq!(maps[1], vec!["0", "100000", "65536"], "{out}");
    // Host root's files appear as the overflow user.
    assert!(out.contains("65534"), "{out}");
}

#[test]
fn idmapped_bind_mounts_give_the_container_root_host_roots_files() {
    // What the kubelet asks of every volume of a `hostUsers: false` pod: the volume is
    // host root's; through the idmapped mount the container's root (host 100000) owns it.
    let rt = Rsrun::new();
    // Under a directory of host root's that the container's root cannot enter (as the
    // kubelet's pod directories are): the runtime opens the sources, not the init.
    use std::os::unix::fs::PermissionsExt;
    let private = TempDir::new("idmap");
    std::fs::set_permissions(private.path(), PermissionsExt::from_mode(0o700)).unwrap();
    let vol_dir = private.path().join("vol");
    std::fs::create_dir(&vol_dir).unwrap();
    std::fs::write(vol_dir.join("f"), "data").unwrap();
    // The plain bind's source must be reachable from the container's user namespace.
    let open = TempDir::new("idmap-plain");
    std::fs::set_permissions(open.path(), PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(open.path().join("f"), "data").unwrap();
    let maps = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    let src = vol_dir.to_str().unwrap();
    let plain = open.path().to_str().unwrap();
    let script = "stat -c '%u %g' /vol/f /own/f /plain/f /file; \
                  echo hi > /vol/new && echo wrote; \
                  (echo x > /plain/other) 2>/dev/null || echo refused";
    let mut b = sh(script);
    // (The mapped root cannot create them in host root's rootfs.)
    for d in ["vol", "own", "plain"] {
        std::fs::create_dir(b.rootfs().join(d)).unwrap();
    }
    std::fs::write(b.rootfs().join("file"), "").unwrap();
    b.add_namespace("user", None);
    b.edit(|c| {
        c["linux"]["uidMappings"] = maps.clone();
        c["linux"]["gidMappings"] = maps.clone();
        let m = c["mounts"].as_array_mut().unwrap();
        m.push(json!({"destination": "/vol", "type": "bind", "source": src,
                      "options": ["rbind"], "uidMappings": maps, "gidMappings": maps}));
        // The idmap option alone takes the container's own mappings.
        m.push(json!({"destination": "/own", "type": "bind", "source": src,
                      "options": ["bind", "idmap"]}));
        m.push(
            json!({"destination": "/plain", "type": "bind", "source": plain,
                      "options": ["bind"]}),
        );
        // A file (the kubelet binds /etc/hosts and the termination log so).
        m.push(json!({"destination": "/file", "type": "bind",
                      "source": format!("{src}/f"), "options": ["bind"],
                      "uidMappings": maps, "gidMappings": maps}));
    });
    let out = rt.output(&b);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        ["0 0", "0 0", "65534 65534", "0 0", "wrote", "refused"],
        "{out}"
    );
    // Written by the container's root through the mount: host root's on disk.
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(vol_dir.join("new")).unwrap();
    assert_eq!((m.uid(), m.gid()), (0, 0));
    assert!(!open.path().join("other").exists());

    // Bad requests name the mount; nothing is made.
    for (what, mount, want) in [
        (
            "uid without gid",
            json!({"destination": "/v", "type": "bind", "source": src, "options": ["bind"],
                   "uidMappings": maps}),
            "mounts[",
        ),
        (
            "a tmpfs",
            json!({"destination": "/v", "type": "tmpfs", "source": "tmpfs",
                   "uidMappings": maps, "gidMappings": maps}),
            "only bind mounts can be idmapped",
        ),
        (
            "size 0",
            json!({"destination": "/v", "type": "bind", "source": src, "options": ["bind"],
                   "uidMappings": [{"containerID": 0, "hostID": 1, "size": 0}],
                   "gidMappings": maps}),
            "size 0",
        ),
    ] {
        let mut b = sh("true");
        b.edit(|c| c["mounts"].as_array_mut().unwrap().push(mount));
        let e = rt.fails(&["run", "--bundle", b.dir.to_str().unwrap(), &unique("idm")]);
        assert!(e.contains(want) && e.contains("/v"), "{what}: {e}");
    }
    // The idmap option in a container without mappings of its own has none to take.
    let mut b = sh("true");
    b.edit(|c| {
        c["mounts"].as_array_mut().unwrap().push(
            json!({"destination": "/v", "type": "bind", "source": src, "options": ["bind", "idmap"]}),
        )
    });
    let e = rt.fails(&["run", "--bundle", b.dir.to_str().unwrap(), &unique("idm")]);
    assert!(e.contains("linux.uidMappings"), "{e}");
    assert_eq!(rt.count(), 0);
}

#[test]
fn idmapped_mounts_do_not_propagate_back_to_the_host() {
    // A shared source: the detached copy would join its peer group, and what the container
    // mounts under it would appear on the host (a plain bind in the container's rslave tree
    // would not).
    let host = TempDir::new("idmap-shared");
    std::fs::create_dir(host.path().join("sub")).unwrap();
    let _shared = SharedMount::new(host.path());
    let maps = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    let mut b = sh("mount -t tmpfs t /vol/sub && echo mounted");
    let src = host.path().to_str().unwrap().to_string();
    b.edit(|c| {
        c["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"destination": "/vol", "type": "bind",
            "source": src, "options": ["rbind"], "uidMappings": maps, "gidMappings": maps}));
        c["process"]["capabilities"]["bounding"] = json!(["CAP_SYS_ADMIN"]);
        c["process"]["capabilities"]["effective"] = json!(["CAP_SYS_ADMIN"]);
        c["process"]["capabilities"]["permitted"] = json!(["CAP_SYS_ADMIN"]);
    });
    let out = Rsrun::new().output(&b);
    assert!(
        out.contains("mounted"),
        "the container could not mount: {out}"
    );
    let left = mounts_under(host.path());
    assert!(
        left.is_empty(),
        "the container's mount reached the host: {left:?}"
    );
}

#[test]
fn new_pid_namespace_inside_a_joined_user_namespace() {
    // A container of a `hostUsers: false` pod: it joins the pod's user namespace and has a
    // PID namespace of its own, which that user namespace must own (its root mounts /proc).
    let rt = Rsrun::new();
    let maps = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    let mut pod = Bundle::new(&["sleep", "100"]);
    pod.add_namespace("user", None);
    pod.edit(|c| {
        c["linux"]["uidMappings"] = maps.clone();
        c["linux"]["gidMappings"] = maps.clone();
    });
    let pod_id = unique("upod");
    rt.ok(&["run", "-d", "--bundle", pod.dir.to_str().unwrap(), &pod_id]);
    let ppid = rt.state(&pod_id)["pid"].as_i64().unwrap() as u32;
    let join = |b: &mut Bundle| {
        b.add_namespace("user", Some(&format!("/proc/{ppid}/ns/user")));
        b.add_namespace("network", Some(&format!("/proc/{ppid}/ns/net")));
    };
    // Foreground: its exit status comes back (the init is the runtime's grandchild).
    let mut b = sh("echo pid $$; ls /proc | grep -c '^[0-9]'; cat /proc/self/uid_map; exit 3");
    join(&mut b);
    let (code, out, err) = rt.run_bundle(&unique("uctr"), &b);
    assert_eq!(code, 3, "{out} {err}");
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(&words[..2], ["pid", "1"], "{out}");
    // Its own /proc: only its own processes (sh, ls, grep).
    assert!(words[2].parse::<u32>().unwrap() <= 3, "{out}");
    assert_eq!(&words[3..6], ["0", "100000", "65536"], "{out}");

    // Detached: state, exec, kill and delete find the init (not the process that forked it).
    let mut b = Bundle::new(&["sleep", "100"]);
    join(&mut b);
    let id = unique("uctr");
    rt.ok(&["run", "-d", "--bundle", b.dir.to_str().unwrap(), &id]);
    let pid = rt.state(&id)["pid"].as_i64().unwrap() as u32;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status.contains("NSpid:\t")
            && status
                .lines()
                .any(|l| l.starts_with("NSpid:") && l.ends_with("\t1")),
        "the recorded pid {pid} is not PID 1 of its namespace: {status}"
    );
    assert!(status.contains("Name:\tsleep"), "{status}");
    assert_eq!(ns_inode(pid, "user"), ns_inode(ppid, "user"));
    assert_ne!(ns_inode(pid, "pid"), ns_inode(ppid, "pid"));
    let out = rt.ok(&["exec", &id, "sh", "-c", "echo $$ $(cat /proc/1/comm)"]);
    let w: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(w[1], "sleep", "{out}");
    assert_ne!(w[0], "1", "{out}");
    rt.ok(&["kill", &id, "KILL"]);
    rt.wait_status(&id, "stopped");
    rt.ok(&["delete", &id]);
    rt.ok(&["delete", "-f", &pod_id]);
    assert_eq!(rt.count(), 0);
}

#[test]
fn time_namespace_offsets() {
    let rt = Rsrun::new();
    let mut b = sh("cat /proc/self/timens_offsets; cut -d. -f1 /proc/uptime");
    b.add_namespace("time", None);
    b.edit(|c| {
        c["linux"]["timeOffsets"] =
            json!({"boottime": {"secs": 86400, "nanosecs": 0}, "monotonic": {"secs": 3600}})
    });
    let out = rt.output(&b);
    assert!(out.contains("monotonic") && out.contains("3600"), "{out}");
    assert!(out.contains("boottime") && out.contains("86400"), "{out}");
    let up: u64 = out.lines().last().unwrap().trim().parse().unwrap();
    let host: f64 = std::fs::read_to_string("/proc/uptime")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(up as f64 >= host + 86000.0, "uptime {up} vs host {host}");
}

#[test]
fn rootfs_readonly_mounts_and_propagation() {
    let rt = Rsrun::new();
    let host = TempDir::new("bind");
    std::fs::write(host.path().join("f"), "from host").unwrap();
    // The bind's source is a shared mount: the container's copy is then a slave of it (its
    // / is made rslave) unless the mount's own "rprivate" is applied.
    let _shared = SharedMount::new(host.path());
    let mut b = sh(
        "touch /x 2>/dev/null && echo rootrw || echo rootro; cat /data/f; touch /data/g 2>/dev/null && echo bindrw || echo bindro; \
         touch /scratch/t && echo tmpfsrw; grep -E ' /scratch | /data ' /proc/self/mountinfo",
    );
    b.edit(|c| {
        c["root"]["readonly"] = json!(true);
        let m = c["mounts"].as_array_mut().unwrap();
        m.push(json!({"destination": "/data", "type": "bind", "source": host.path(), "options": ["rbind", "ro", "nosuid", "rprivate"]}));
        m.push(json!({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid,nodev", "noexec", "mode=1777", "size=1m"]}));
    });
    let out = rt.output(&b);
    assert!(out.contains("rootro"), "{out}");
    assert!(out.contains("from host"), "{out}");
    assert!(out.contains("bindro"), "{out}");
    assert!(out.contains("tmpfsrw"), "{out}");
    let scratch = out.lines().find(|l| l.contains(" /scratch ")).unwrap();
    assert!(
        scratch.contains("nosuid") && scratch.contains("nodev") && scratch.contains("noexec"),
        "{scratch}"
    );
    let data = out.lines().find(|l| l.contains(" /data ")).unwrap();
    assert!(
        !data.contains("shared:") && !data.contains("master:"),
        "rprivate not applied: {data}"
    );
    assert!(!host.path().join("g").exists());
}

/// `ro` makes only the bind itself read-only; `rro` (mount_setattr with AT_RECURSIVE) also
/// the mounts below it: a tmpfs mounted inside the bind's source on the host.
#[test]
fn recursive_readonly_bind() {
    let rt = Rsrun::new();
    let host = TempDir::new("rro");
    let sub = host.path().join("tmpfs");
    std::fs::create_dir_all(&sub).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &sub,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=64k"),
    )
    .unwrap();
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _u = Unmount(sub.clone());
    let probe = "touch /a/x 2>/dev/null && echo top-rw || echo top-ro; \
                 touch /a/tmpfs/x 2>/dev/null && echo sub-rw || echo sub-ro";
    for (opts, want) in [
        (json!(["rbind", "ro", "rprivate"]), "top-ro\nsub-rw"),
        (json!(["rbind", "ro", "rro", "rprivate"]), "top-ro\nsub-ro"),
    ] {
        let mut b = sh(probe);
        b.edit(|c| {
            let m = c["mounts"].as_array_mut().unwrap();
            m.push(json!({"destination": "/a", "type": "bind", "source": host.path(), "options": opts}));
        });
        let out = rt.output(&b);
        assert_eq!(out.trim(), want, "options {opts}");
    }
    // The host's own mounts are untouched: still writable.
    std::fs::write(sub.join("host-write"), "ok").unwrap();
}

#[test]
fn overlay_mount_with_split_options() {
    let rt = Rsrun::new();
    let t = TempDir::new("ovl");
    for d in ["lower", "upper", "work"] {
        std::fs::create_dir_all(t.path().join(d)).unwrap();
    }
    std::fs::write(t.path().join("lower/l"), "lower file").unwrap();
    let mut b = sh("cat /ovl/l; echo new > /ovl/n; cat /ovl/n");
    let lower = format!("lowerdir={}", t.path().join("lower").display());
    let upper = format!("upperdir={}", t.path().join("upper").display());
    let work = format!("workdir={}", t.path().join("work").display());
    b.edit(|c| {
        c["mounts"].as_array_mut().unwrap().push(json!({"destination": "/ovl", "type": "overlay", "source": "overlay", "options": [lower, upper, work]}));
    });
    let out = rt.output(&b);
    assert!(out.contains("lower file") && out.contains("new"), "{out}");
    assert_eq!(
        std::fs::read_to_string(t.path().join("upper/n")).unwrap(),
        "new\n"
    );
}

#[test]
fn devices_links_masked_and_readonly_paths() {
    let rt = Rsrun::new();
    let mut b = sh(
        "for d in null zero full random urandom tty mydev; do stat -c '%n %t:%T %a' /dev/$d; done; \
         for l in fd stdin stdout stderr ptmx; do readlink /dev/$l; done; \
         stat -c 'keys %t:%T' /proc/keys; echo masked=$(ls -A /secret | wc -l) visible=$(ls -A /visible | wc -l); \
         echo 1 > /proc/sys/kernel/domainname 2>/dev/null && echo sysrw || echo sysro; \
         cat /proc/sys/net/ipv4/conf/lo/accept_local; cat /proc/sys/net/ipv4/ip_forward",
    );
    // A masked directory that has entries (this host's /proc/acpi is empty anyway), beside
    // an unmasked one with the same entries.
    for d in ["secret", "visible"] {
        std::fs::create_dir_all(b.rootfs().join(d)).unwrap();
        std::fs::write(b.rootfs().join(d).join("a"), "x").unwrap();
        std::fs::write(b.rootfs().join(d).join(".b"), "y").unwrap();
    }
    b.edit(|c| {
        c["linux"]["devices"] = json!([{"path": "/dev/mydev", "type": "c", "major": 1, "minor": 3, "fileMode": 0o640, "uid": 0, "gid": 0}]);
        // Both forms of a key, as sysctl(8) reads them (the slashed one from a kubelet).
        c["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1", "net/ipv4/conf/lo/accept_local": "1"});
        c["linux"]["maskedPaths"].as_array_mut().unwrap().push(json!("/secret"));
    });
    let out = rt.output(&b);
    for want in [
        "/dev/null 1:3 666",
        "/dev/zero 1:5 666",
        "/dev/tty 5:0 666",
        "/dev/mydev 1:3 640",
    ] {
        assert!(out.contains(want), "{want} missing: {out}");
    }
    for want in [
        "/proc/self/fd\n",
        "/proc/self/fd/0\n",
        "/proc/self/fd/2\n",
        "pts/ptmx\n",
    ] {
        assert!(out.contains(want), "{want} missing: {out}");
    }
    assert!(out.contains("keys 1:3"), "{out}");
    assert!(
        out.contains("masked=0 visible=2\n"),
        "masked directory /secret: {out}"
    );
    // Masked, not emptied.
    assert!(b.rootfs().join("secret/a").exists());
    assert!(out.contains("sysro"), "{out}");
    assert!(
        out.trim_end().ends_with("1\n1"),
        "sysctls not applied: {out}"
    );
}

#[test]
fn a_bound_dev_gets_no_device_nodes() {
    // A directory bound at /dev (a privileged pod's hostPath /dev): the config's devices
    // are not made in it, and what is there stays as it was (runc's behaviour). Made, they
    // would replace the host's nodes of those names.
    let rt = Rsrun::new();
    let mut b = sh("ls /dev; cat /dev/null");
    let dev = b.tmp.path().join("hostdev");
    std::fs::create_dir_all(&dev).unwrap();
    std::fs::write(dev.join("null"), "keep\n").unwrap();
    b.edit(|c| {
        c["mounts"].as_array_mut().unwrap().retain(|m| {
            let d = m["destination"].as_str().unwrap_or("");
            d != "/dev" && !d.starts_with("/dev/")
        });
        c["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/dev", "type": "bind",
            "source": dev.to_str().unwrap(), "options": ["rbind", "rw"]}));
        c["linux"]["devices"] = json!([
            {"path": "/dev/null", "type": "c", "major": 1, "minor": 3, "fileMode": 0o666},
            {"path": "/dev/mydev", "type": "c", "major": 1, "minor": 5, "fileMode": 0o666}]);
    });
    let out = rt.output(&b);
    assert!(
        out.contains("keep"),
        "the bound /dev's null was replaced: {out}"
    );
    use std::os::unix::fs::FileTypeExt;
    let null = std::fs::symlink_metadata(dev.join("null")).unwrap();
    assert!(null.file_type().is_file(), "{:?}", null.file_type());
    assert!(
        !dev.join("mydev").exists() && !null.file_type().is_char_device(),
        "device nodes made in the bound directory: {:?}",
        std::fs::read_dir(&dev)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect::<Vec<_>>()
    );
}

#[test]
fn no_pivot_mode() {
    use std::os::unix::fs::MetadataExt;
    let rt = Rsrun::new();
    let b = sh("cat /marker; stat -c 'root-inode=%d:%i' /; ls -A /");
    let mark = unique("rootfs-marker");
    std::fs::write(b.rootfs().join("marker"), format!("{mark}\n")).unwrap();
    let id = unique("np");
    let o = rt.run(&[
        "run",
        "--no-pivot",
        "--bundle",
        b.dir.to_str().unwrap(),
        &id,
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The container's / is the bundle's rootfs: its marker, its inode, exactly its entries.
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some(mark.as_str()), "{out}");
    let m = std::fs::metadata(b.rootfs()).unwrap();
    let want = format!("root-inode={}:{}", m.dev(), m.ino());
    assert_eq!(lines.next(), Some(want.as_str()), "{out}");
    let mut inside: Vec<&str> = lines.collect();
    inside.sort();
    let mut host: Vec<String> = std::fs::read_dir(b.rootfs())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    host.sort();
    assert_eq!(inside, host, "{out}");
}

#[test]
fn process_user_env_cwd_umask_rlimits_caps() {
    let rt = Rsrun::new();
    let mut b = sh("id; echo env=$FOO home=$HOME; pwd; umask; ulimit -n; ulimit -Hn; grep -E 'NoNewPrivs|CapEff|CapBnd|CapPrm|CapAmb' /proc/self/status");
    std::fs::create_dir_all(b.rootfs().join("work")).unwrap();
    b.edit(|c| {
        c["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [10, 20], "umask": 0o077});
        c["process"]["env"] = json!(["PATH=/bin", "FOO=bar"]);
        c["process"]["cwd"] = json!("/work");
        c["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": 123, "hard": 456}]);
        c["process"]["noNewPrivileges"] = json!(true);
        let caps = json!(["CAP_KILL", "CAP_NET_RAW"]);
        c["process"]["capabilities"] = json!({"bounding": caps, "effective": caps, "permitted": caps, "inheritable": caps, "ambient": caps});
    });
    let out = rt.output(&b);
    assert!(out.contains("uid=1000 gid=1000 groups=10,20"), "{out}");
    // HOME from the container's /etc/passwd (uid 1000 has no entry there: "/").
    assert!(out.contains("env=bar home=/\n"), "{out}");
    assert!(out.contains("/work\n"), "{out}");
    assert!(out.contains("0077"), "{out}");
    assert!(out.contains("123\n456"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    // CAP_KILL (5) and CAP_NET_RAW (13): 0x2020.
    for set in ["CapEff", "CapPrm", "CapBnd", "CapAmb"] {
        assert!(
            out.contains(&format!("{set}:\t0000000000002020")),
            "{set}: {out}"
        );
    }
}

#[test]
fn oom_score_adj_raise_and_lower() {
    let rt = Rsrun::new();
    let mut b = sh("cat /proc/self/oom_score_adj");
    b.edit(|c| c["process"]["oomScoreAdj"] = json!(500));
    assert_eq!(rt.output(&b).trim(), "500");
    // Lowering needs CAP_SYS_RESOURCE, which this host withholds. rsrun then keeps the value
    // it inherited and logs a warning (security::set_oom_score_adj). rsrun is started at 200
    // (raising needs no privilege) so that the fallback is told apart from 0 or a reset.
    let can_lower = std::process::Command::new("sh")
        .args(["-c", "echo -500 > /proc/self/oom_score_adj"])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success();
    let mut b = sh("cat /proc/self/oom_score_adj");
    b.edit(|c| c["process"]["oomScoreAdj"] = json!(-500));
    let mut c = std::process::Command::new("sh");
    c.arg("-c")
        .arg("echo 200 > /proc/self/oom_score_adj && exec \"$@\"")
        .arg("sh");
    c.arg(rsrun_bin()).arg("--root").arg(rt.root.path());
    c.args(["run", "--bundle", b.dir.to_str().unwrap(), &unique("oom")]);
    let o = c.output().unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{err}");
    if can_lower {
        assert_eq!(out.trim(), "-500", "{err}");
    } else {
        assert_eq!(out.trim(), "200", "not the inherited value: {err}");
        assert!(
            err.contains("process.oomScoreAdj -500") && err.contains("keeping the current value"),
            "no warning: {err:?}"
        );
    }
}

#[test]
fn terminal_through_console_socket() {
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixListener;
    let rt = Rsrun::new();
    let mut b = sh("tty; stty size; stat -c 'console %t:%T' /dev/console; echo on-the-terminal");
    b.edit(|c| {
        c["process"]["terminal"] = json!(true);
        c["process"]["consoleSize"] = json!({"height": 33, "width": 77});
    });
    let sock = b.tmp.path().join("console.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let id = unique("tty");
    let mut child = rt
        .cmd()
        .args([
            "create",
            "--bundle",
            b.dir.to_str().unwrap(),
            "--console-socket",
            sock.to_str().unwrap(),
            &id,
        ])
        .spawn()
        .unwrap();
    let (conn, _) = l.accept().unwrap();
    let master = rsrun::sys::recv_fd(conn.as_raw_fd()).unwrap();
    assert!(child.wait().unwrap().success());
    rt.ok(&["start", &id]);
    let mut f = std::fs::File::from(master);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match std::io::Read::read(&mut f, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
        if String::from_utf8_lossy(&out).contains("on-the-terminal") {
            break;
        }
    }
    let s = String::from_utf8_lossy(&out);
    assert!(s.contains("/dev/pts/0"), "{s}");
    assert!(s.contains("33 77"), "{s}");
    // /dev/console is the same terminal (pts major 136 = 0x88, minor 0).
    assert!(s.contains("console 88:0"), "{s}");
    rt.wait_status(&id, "stopped");
    rt.ok(&["delete", &id]);
}

#[test]
fn preserve_fds_and_listen_fds() {
    let rt = Rsrun::new();
    let b = sh("echo via-fd3 >&3; echo LISTEN_FDS=$LISTEN_FDS LISTEN_PID=$LISTEN_PID; ls /proc/self/fd | tr '\\n' ' '");
    let out_path = b.tmp.path().join("fd3.txt");
    let id = unique("pfd");
    // The shell opens the file at fd 3 (and an unrelated fd 4 that must not leak) and execs rsrun.
    let mut c = std::process::Command::new("sh");
    c.arg("-c")
        .arg("exec 3>\"$OUT\" 4</; LISTEN_PID=$$ exec \"$@\"")
        .arg("sh");
    c.arg(rsrun_bin()).arg("--root").arg(rt.root.path());
    c.args([
        "run",
        "--preserve-fds",
        "1",
        "--bundle",
        b.dir.to_str().unwrap(),
        &id,
    ]);
    c.env("OUT", &out_path).env("LISTEN_FDS", "1");
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read_to_string(&out_path).unwrap(), "via-fd3\n");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("LISTEN_FDS=1 LISTEN_PID=1"), "{out}");
    // 0-2, the preserved 3, and the descriptor ls itself opens for /proc/self/fd.
    let fds: Vec<&str> = out.lines().last().unwrap().split_whitespace().collect();
    // A leaked fd 4 would push ls's own descriptor to 5.
    assert_eq!(fds, vec!["0", "1", "2", "3", "4"], "unexpected descriptors");
}

#[test]
fn personality_linux32() {
    let rt = Rsrun::new();
    let mut b = sh("uname -m");
    b.edit(|c| c["linux"]["personality"] = json!({"domain": "LINUX32"}));
    let out = rt.output(&b);
    assert!(
        out.trim().starts_with('i') && out.trim().ends_with("86"),
        "{out}"
    );
    // An exec'd process gets the container's personality too (as runc's).
    let mut b = Bundle::new(&["sleep", "1000"]);
    b.edit(|c| c["linux"]["personality"] = json!({"domain": "LINUX32"}));
    let id = unique("pers");
    rt.ok(&["run", "-d", "--bundle", b.dir.to_str().unwrap(), &id]);
    let out = rt.ok(&["exec", &id, "uname", "-m"]);
    assert!(
        out.trim().starts_with('i') && out.trim().ends_with("86"),
        "exec: {out}"
    );
    rt.ok(&["delete", "--force", &id]);
}

/// process.scheduler and process.ioPriority as the kernel reports them: the init and an
/// exec'd process run under SCHED_BATCH at nice 5 (/proc/PID/stat) in the idle I/O class
/// (ioprio_get(2)); neither needs a privilege.
#[test]
fn scheduler_and_io_priority() {
    let rt = Rsrun::new();
    let mut b = Bundle::new(&["sleep", "1000"]);
    b.edit(|c| {
        c["process"]["scheduler"] = json!({"policy": "SCHED_BATCH", "nice": 5});
        c["process"]["ioPriority"] = json!({"class": "IOPRIO_CLASS_IDLE", "priority": 0});
    });
    let id = unique("sched");
    rt.ok(&["run", "-d", "--bundle", b.dir.to_str().unwrap(), &id]);
    let pid = rt.state(&id)["pid"].as_i64().unwrap();
    // (nice, policy): fields 19 and 41 of /proc/PID/stat, counted after the command's ")".
    let sched = |stat: &str| {
        let f: Vec<String> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .map(String::from)
            .collect();
        (f[16].clone(), f[38].clone())
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    assert_eq!(sched(&stat), ("5".into(), "3".into()), "init: {stat}");
    // SAFETY: integer arguments only.
    let ioprio = unsafe { libc::syscall(libc::SYS_ioprio_get, 1, pid as libc::c_long) };
    assert_eq!(ioprio, 3 << 13, "the init's I/O priority");
    let stat = rt.ok(&["exec", &id, "cat", "/proc/self/stat"]);
    assert_eq!(sched(&stat), ("5".into(), "3".into()), "exec: {stat}");
    rt.ok(&["delete", "--force", &id]);
    // A priority out of range is refused naming the field.
    let mut b = Bundle::new(&["true"]);
    b.edit(|c| c["process"]["ioPriority"] = json!({"class": "IOPRIO_CLASS_BE", "priority": 9}));
    let e = rt.fails(&["run", "--bundle", b.dir.to_str().unwrap(), &unique("sched")]);
    assert!(e.contains("process.ioPriority.priority 9"), "{e}");
}

#[test]
fn tmpcopyup_tmpfs_starts_with_the_image_contents() {
    let rt = Rsrun::new();
    let mut b = sh("cat /etc/passwd | head -1; echo changed > /etc/passwd; grep -c changed /etc/passwd; grep tmpfs /proc/self/mountinfo | grep -c ' /etc '");
    b.edit(|c| {
        c["root"]["readonly"] = json!(true);
        c["mounts"].as_array_mut().unwrap().push(json!({"destination": "/etc", "type": "tmpfs", "source": "tmpfs", "options": ["rw", "nosuid", "nodev", "tmpcopyup"]}));
    });
    let out = rt.output(&b);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        vec!["root:x:0:0:root:/root:/bin/sh", "1", "1"],
        "{out}"
    );
    // The image's file is untouched.
    assert!(std::fs::read_to_string(b.rootfs().join("etc/passwd"))
        .unwrap()
        .starts_with("root:"));
}

#[test]
fn relative_program_resolves_against_cwd() {
    use std::os::unix::fs::PermissionsExt;
    let rt = Rsrun::new();
    let mut b = Bundle::new(&["./server"]);
    std::fs::create_dir_all(b.rootfs().join("app")).unwrap();
    std::fs::write(
        b.rootfs().join("app/server"),
        "#!/bin/sh\necho served from $(pwd)\n",
    )
    .unwrap();
    std::fs::set_permissions(
        b.rootfs().join("app/server"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    b.edit(|c| c["process"]["cwd"] = json!("/app"));
    assert_eq!(rt.output(&b).trim(), "served from /app");
}

#[test]
fn missing_cwd_is_made_as_runc_does_also_under_a_readonly_root() {
    let rt = Rsrun::new();
    let mut b = sh("pwd; stat -c %a .; touch x 2>/dev/null || echo read-only");
    b.edit(|c| {
        c["process"]["cwd"] = json!("/new/work/dir");
        c["root"]["readonly"] = json!(true);
    });
    assert_eq!(rt.output(&b), "/new/work/dir\n755\nread-only\n");
    assert!(b.rootfs().join("new/work/dir").is_dir());
    // One that cannot be made fails the start, naming it.
    std::fs::write(b.rootfs().join("blocked"), "a file").unwrap();
    b.edit(|c| c["process"]["cwd"] = json!("/blocked/dir"));
    let (code, _, err) = rt.run_bundle(&unique("cwd"), &b);
    assert_ne!(code, 0);
    assert!(err.contains("process.cwd /blocked/dir: create"), "{err}");
}

#[test]
fn no_capabilities_section_means_none() {
    let rt = Rsrun::new();
    let mut b = sh("grep -E '^Cap(Eff|Prm|Bnd|Inh|Amb)' /proc/self/status");
    b.edit(|c| {
        c["process"].as_object_mut().unwrap().remove("capabilities");
    });
    let out = rt.output(&b);
    for l in out.lines() {
        assert!(l.ends_with("0000000000000000"), "{l} in {out}");
    }
    assert_eq!(out.lines().count(), 5, "{out}");
}

#[test]
fn join_bind_mounted_netns_file() {
    // `ip netns add` makes /var/run/netns/NAME: an nsfs bind mount, not a /proc symlink
    // (what containerd's CRI passes for pod networks).
    let name = unique("rsrun-ns");
    let st = std::process::Command::new("ip")
        .args(["netns", "add", &name])
        .status();
    if !matches!(st, Ok(s) if s.success()) {
        panic!("ip netns add failed (iproute2 needed): {st:?}");
    }
    let rt = Rsrun::new();
    let path = format!("/var/run/netns/{name}");
    let mut b = sh("readlink /proc/self/ns/net");
    b.add_namespace("network", Some(&path));
    let out = rt.output(&b);
    let want = std::process::Command::new("ip")
        .args(["netns", "exec", &name, "readlink", "/proc/self/ns/net"])
        .output()
        .unwrap();
    let _ = std::process::Command::new("ip")
        .args(["netns", "delete", &name])
        .status();
    assert_eq!(out.trim(), String::from_utf8_lossy(&want.stdout).trim());
}

#[test]
fn host_sysctls_are_refused() {
    let rt = Rsrun::new();
    for (key, drop_ns) in [
        ("kernel.core_pattern", None),
        ("net.ipv4.ip_forward", Some("network")),
        ("kernel.shmmax", Some("ipc")),
    ] {
        let mut b = sh("true");
        b.edit(|c| {
            c["linux"]["sysctl"] = json!({key: "1"});
            if let Some(ns) = drop_ns {
                c["linux"]["namespaces"]
                    .as_array_mut()
                    .unwrap()
                    .retain(|n| n["type"] != ns);
            }
        });
        let e = rt.fails(&[
            "run",
            "--bundle",
            b.dir.to_str().unwrap(),
            &unique("sysctl"),
        ]);
        assert!(e.contains(key) && e.contains("host"), "{key}: {e}");
    }
    // A network namespace joined by path that is the runtime's own (the host's) is no
    // namespace of the container's: its net.* sysctls are refused too (the value is the
    // current one, so that a runtime that let it through changes nothing).
    let key = "net.core.somaxconn";
    let now = std::fs::read_to_string("/proc/sys/net/core/somaxconn").unwrap();
    let own = format!("/proc/{}/ns/net", std::process::id());
    let mut b = sh("true");
    b.edit(|c| {
        c["linux"]["sysctl"] = json!({key: now.trim()});
        let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
        ns.retain(|n| n["type"] != "network");
        ns.push(json!({"type": "network", "path": own}));
    });
    let e = rt.fails(&[
        "run",
        "--bundle",
        b.dir.to_str().unwrap(),
        &unique("sysctl"),
    ]);
    assert!(
        e.contains(key) && e.contains("joined is the host's"),
        "{key}: {e}"
    );
}

#[test]
fn rshared_rootfs_propagates_mounts_back_to_the_host() {
    let rt = Rsrun::new();
    let host = TempDir::new("bidi");
    let h = host.path().to_str().unwrap().to_string();
    std::fs::create_dir_all(host.path().join("sub")).unwrap();
    // The host side of a Bidirectional volume is a shared mount (our own, in a temp dir).
    let sh_ok = |cmd: &str| {
        assert!(
            std::process::Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .status()
                .unwrap()
                .success(),
            "{cmd}"
        )
    };
    sh_ok(&format!("mount --bind {h} {h} && mount --make-shared {h}"));
    let mut b = sh("mount -t tmpfs -o size=1m inner /vol/sub && echo mounted");
    // containerd's rootfs is itself a mount point (an overlay): the same here.
    let r = b.rootfs().to_str().unwrap().to_string();
    sh_ok(&format!("mount --bind {r} {r}"));
    b.edit(|c| {
        c["linux"]["rootfsPropagation"] = json!("rshared");
        c["mounts"].as_array_mut().unwrap().push(json!({"destination": "/vol", "type": "bind", "source": h, "options": ["rbind", "rshared"]}));
        let caps = json!(["CAP_SYS_ADMIN"]);
        c["process"]["capabilities"] = json!({"bounding": caps, "effective": caps, "permitted": caps});
    });
    let out = rt.output(&b);
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let propagated = info
        .lines()
        .any(|l| l.contains(&format!("{h}/sub ")) && l.contains(" - tmpfs inner "));
    let _ = std::process::Command::new("umount")
        .arg("-l")
        .arg(format!("{h}/sub"))
        .status();
    let _ = std::process::Command::new("umount")
        .arg("-l")
        .arg(&h)
        .status();
    let _ = std::process::Command::new("umount")
        .arg("-l")
        .arg(&r)
        .status();
    assert!(out.contains("mounted"), "{out}");
    assert!(propagated, "the container's mount did not reach the host");
}

#[test]
fn config_without_a_mount_namespace_is_refused() {
    // runc would mount the container's /proc, /dev and /sys in the caller's mount namespace.
    // rsrun runs in a private mount namespace of its own here, so that a runtime that did
    // not refuse could do no harm to the host's.
    let rt = Rsrun::new();
    let mut b = sh("true");
    b.edit(|c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|n| n["type"] != "mount")
    });
    let id = unique("nomnt");
    let o = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private"])
        .arg(rsrun_bin())
        .arg("--root")
        .arg(rt.root.path())
        .args(["run", "--bundle", b.dir.to_str().unwrap(), &id])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "a config without a mount namespace ran"
    );
    assert!(
        err.contains("linux.namespaces must include a mount namespace"),
        "{err}"
    );
    assert_eq!(rt.count(), 0);
}

#[test]
fn joining_namespaces_with_a_new_user_namespace_is_refused() {
    let rt = Rsrun::new();
    let a = Bundle::new(&["sleep", "100"]);
    let ida = unique("nsa");
    rt.ok(&["run", "-d", "--bundle", a.dir.to_str().unwrap(), &ida]);
    let pid = rt.state(&ida)["pid"].as_i64().unwrap();
    let mut b = sh("true");
    b.add_namespace("user", None);
    b.add_namespace("network", Some(&format!("/proc/{pid}/ns/net")));
    b.edit(|c| {
        c["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        c["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    });
    let e = rt.fails(&[
        "create",
        "--bundle",
        b.dir.to_str().unwrap(),
        &unique("nsb"),
    ]);
    assert!(
        e.contains("joining existing namespaces together with a new user namespace"),
        "{e}"
    );
    assert_eq!(rt.count(), 1, "state of the refused container left");
    rt.ok(&["delete", "-f", &ida]);
}
