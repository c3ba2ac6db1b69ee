//! Security properties: the runtime binary cannot be reached through /proc/PID/exe,
//! no host descriptor leaks, cwd stays inside, mounts cannot escape the rootfs through
//! symlinks, failed creates leave nothing behind.

use std::time::Duration;

use rsrun_tests::*;
use serde_json::json;

/// CVE-2019-5736: while the runtime runs inside a container's namespaces (the init before
/// exec), a container process must not be able to open its /proc/PID/exe — for writing
/// (which would overwrite the host binary once it exits) or at all.
#[test]
fn runtime_binary_not_reachable_through_proc_exe() {
    let rt = Rsrun::new();
    let shared = TempDir::new("cve");
    // Container A watches for other processes in its pid namespace and tries their exe.
    let mut a = Bundle::new(&[
        "sh",
        "-c",
        "while [ ! -e /shared/go ]; do sleep 0.05; done; \
         for p in /proc/[0-9]*; do n=${p#/proc/}; [ $n = 1 ] && continue; [ $n = $$ ] && continue; \
           echo \"pid $n\" >> /shared/out; readlink $p/exe >> /shared/out 2>&1 || echo readlink-denied >> /shared/out; \
           (echo x >> $p/exe) 2>> /shared/out || echo open-failed >> /shared/out; done; touch /shared/done; sleep 100",
    ]);
    // A runs as root of its own user namespace with every capability there (CAP_SYS_PTRACE
    // included, but only over its user namespace): ptrace-style access to a process of the
    // same namespace is then allowed unless the process is non-dumpable.
    a.add_namespace("user", None);
    std::fs::create_dir_all(a.rootfs().join("shared")).unwrap();
    a.edit(|c| {
        c["mounts"].as_array_mut().unwrap().push(json!({"destination": "/shared", "type": "bind", "source": shared.path(), "options": ["rbind"]}));
        c["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 200000, "size": 65536}]);
        c["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 200000, "size": 65536}]);
        let caps: Vec<String> = ["CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
            "NET_BIND_SERVICE", "NET_RAW", "SYS_CHROOT", "SYS_PTRACE", "SYS_ADMIN", "MKNOD", "AUDIT_WRITE", "SETFCAP"]
            .iter().map(|c| format!("CAP_{c}")).collect();
        let caps = json!(caps);
        c["process"]["capabilities"] = json!({"bounding": caps, "effective": caps, "permitted": caps});
    });
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let ida = unique("cveA");
    rt.ok(&["run", "-d", "--bundle", a.dir.to_str().unwrap(), &ida]);
    let pida = rt.state(&ida)["pid"].as_i64().unwrap();
    // Container B joins A's pid namespace and stays in `created`: its init is rsrun code.
    let mut b = Bundle::new(&["sleep", "100"]);
    b.add_namespace("pid", Some(&format!("/proc/{pida}/ns/pid")));
    b.add_namespace("user", Some(&format!("/proc/{pida}/ns/user")));
    let idb = unique("cveB");
    let before = std::fs::read(rsrun_bin()).unwrap();
    rt.ok(&["create", "--bundle", b.dir.to_str().unwrap(), &idb]);
    std::fs::write(shared.path().join("go"), "").unwrap();
    assert!(
        wait_until(Duration::from_secs(60), || shared
            .path()
            .join("done")
            .exists()),
        "container A never finished its scan"
    );
    let out = std::fs::read_to_string(shared.path().join("out")).unwrap_or_default();
    assert!(
        out.contains("pid "),
        "container A saw no other process: {out:?}"
    );
    assert!(
        !out.contains("rsrun"),
        "the runtime's exe was readable: {out}"
    );
    assert!(
        out.contains("readlink-denied") && out.contains("open-failed"),
        "{out}"
    );
    assert!(
        !out.contains("Text file busy"),
        "exe was openable (only busy): {out}"
    );
    assert_eq!(
        std::fs::read(rsrun_bin()).unwrap(),
        before,
        "runtime binary changed"
    );
    rt.ok(&["delete", "-f", &idb]);
    rt.ok(&["delete", "-f", &ida]);
}

/// CVE-2019-5736 as it was exploited: the container's program is a script whose
/// interpreter is /proc/self/exe (the runtime itself). The runtime refuses to exec it.
#[test]
fn refuses_to_exec_itself_as_the_container_program() {
    use std::os::unix::fs::PermissionsExt;
    let rt = Rsrun::new();
    let before = std::fs::read(rsrun_bin()).unwrap();
    for (name, script) in [
        ("direct", "#!/proc/self/exe\n"),
        ("chained", "#!/bin/evil-direct\n"),
    ] {
        let b = Bundle::new(&[&format!("/bin/evil-{name}")]);
        for (n, sc) in [
            ("direct", "#!/proc/self/exe\n"),
            ("chained", "#!/bin/evil-direct\n"),
        ] {
            let p = b.rootfs().join(format!("bin/evil-{n}"));
            std::fs::write(&p, sc).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let _ = script;
        let e = rt.fails(&["run", "--bundle", b.dir.to_str().unwrap(), &unique("self")]);
        assert!(e.contains("CVE-2019-5736"), "{name}: {e}");
        assert_eq!(rt.count(), 0);
    }
    // A normal script still runs.
    let b = Bundle::new(&["/bin/ok"]);
    std::fs::write(b.rootfs().join("bin/ok"), "#!/bin/sh\necho fine\n").unwrap();
    std::fs::set_permissions(
        b.rootfs().join("bin/ok"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    assert_eq!(rt.output(&b).trim(), "fine");
    assert_eq!(std::fs::read(rsrun_bin()).unwrap(), before);
}

/// CVE-2024-21626: a descriptor of a host directory must not reach the container, and a
/// cwd through /proc/self/fd must not resolve to the host.
#[test]
fn no_host_fd_leak_and_cwd_inside() {
    let rt = Rsrun::new();
    let b = Bundle::new(&["sh", "-c", "ls /proc/self/fd | tr '\\n' ' '"]);
    let id = unique("leak");
    let mut c = std::process::Command::new("sh");
    c.arg("-c").arg("exec 7</ 8</tmp; exec \"$@\"").arg("sh");
    c.arg(rsrun_bin()).arg("--root").arg(rt.root.path());
    c.args(["run", "--bundle", b.dir.to_str().unwrap(), &id]);
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let fds: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(
        fds,
        vec!["0", "1", "2", "3"],
        "descriptors in the container"
    );

    // cwd = /proc/self/fd/7 with the host's / open as fd 7 in the runtime.
    let mut b = Bundle::new(&["sh", "-c", "pwd; ls"]);
    b.edit(|c| c["process"]["cwd"] = json!("/proc/self/fd/7"));
    let mut c = std::process::Command::new("sh");
    c.arg("-c").arg("exec 7</; exec \"$@\"").arg("sh");
    c.arg(rsrun_bin()).arg("--root").arg(rt.root.path());
    c.args(["run", "--bundle", b.dir.to_str().unwrap(), &unique("cwd")]);
    let o = c.output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "cwd through a leaked fd worked: {out}");
    assert!(!out.contains("work") && !out.contains("home"), "{out}");
}

/// CVE-2024-21626, the working directory made when the image lacks it: a cwd under
/// /proc/self/fd/N, with a host directory open as N in the runtime, must not make a
/// directory on the host (it is made inside the rootfs, or refused).
#[test]
fn a_missing_cwd_is_not_made_through_a_host_descriptor() {
    let rt = Rsrun::new();
    let host = TempDir::new("cwdhost");
    let mut b = Bundle::new(&["true"]);
    b.edit(|c| c["process"]["cwd"] = json!("/proc/self/fd/7/made"));
    let mut c = std::process::Command::new("sh");
    c.arg("-c")
        .arg("exec 7<\"$0\"; exec \"$@\"")
        .arg(host.path());
    c.arg(rsrun_bin()).arg("--root").arg(rt.root.path());
    c.args(["run", "--bundle", b.dir.to_str().unwrap(), &unique("cwdmk")]);
    let o = c.output().unwrap();
    let made: Vec<_> = std::fs::read_dir(host.path()).unwrap().collect();
    assert!(
        made.is_empty(),
        "the container's cwd was made in the host directory (exit {:?}, {})",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A user or group ID of 4294967295 is `(uid_t)-1`, which setresuid(2) reads as "leave
/// unchanged": the container would run as root (past the kubelet's runAsNonRoot, which sees a
/// non-zero uid). Refused at create and at exec, as runc refuses IDs above 2^31-1; without
/// the check the process's real and effective IDs read 0 on the host.
#[test]
fn a_user_id_of_minus_one_is_refused_not_run_as_root() {
    let rt = Rsrun::new();
    for (field, user) in [
        ("uid", json!({"uid": 4294967295u32, "gid": 1000})),
        ("gid", json!({"uid": 1000, "gid": 4294967295u32})),
        (
            "additionalGids",
            json!({"uid": 1000, "gid": 1000, "additionalGids": [5, 4294967295u32]}),
        ),
    ] {
        let mut b = Bundle::new(&["sleep", "30"]);
        b.edit(|c| c["process"]["user"] = user.clone());
        let id = unique("minus1");
        let o = rt.run(&["create", "--bundle", b.dir.to_str().unwrap(), &id]);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        let ids = o.status.success().then(|| {
            let pid = rt.state(&id)["pid"].as_i64().unwrap();
            let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            let _ = rt.run(&["delete", "--force", &id]);
            st.lines()
                .filter(|l| {
                    l.starts_with("Uid:") || l.starts_with("Gid:") || l.starts_with("Groups:")
                })
                .collect::<Vec<_>>()
                .join("; ")
        });
        assert!(
            !o.status.success() && err.contains(&format!("process.user.{field} 4294967295")),
            "{field}: created ({ids:?}), stderr {err:?}"
        );
    }
    assert_eq!(rt.count(), 0);
    let b = Bundle::new(&["sleep", "30"]);
    let id = unique("minus1x");
    rt.ok(&["run", "-d", "--bundle", b.dir.to_str().unwrap(), &id]);
    let o = rt.run(&["exec", "--user", "4294967295:1000", &id, "id"]);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    );
    assert!(
        !o.status.success() && err.contains("process.user.uid 4294967295"),
        "exec ran: {out:?}, stderr {err:?}"
    );
    rt.ok(&["delete", "--force", &id]);
}

/// An image whose /proc is a symlink (here into a directory that a volume then covers)
/// would get the procfs mounted where the volume hides it, and a /proc of its own making:
/// the runtime reads and writes /proc files after pivot_root. Refused, as runc does.
#[test]
fn a_proc_symlink_in_the_image_is_refused() {
    let rt = Rsrun::new();
    let vol = TempDir::new("fakeproc");
    std::fs::create_dir_all(vol.path().join("p/sys/kernel")).unwrap();
    std::fs::write(vol.path().join("p/sys/kernel/cap_last_cap"), "0\n").unwrap();
    let mut b = Bundle::new(&["sleep", "30"]);
    let r = b.rootfs();
    let _ = std::fs::remove_dir(r.join("proc"));
    std::fs::create_dir_all(r.join("data")).unwrap();
    std::os::unix::fs::symlink("/data/p", r.join("proc")).unwrap();
    b.edit(|c| {
        c["mounts"].as_array_mut().unwrap().push(
            json!({"destination": "/data", "type": "bind", "source": vol.path(), "options": ["rbind"]}),
        );
    });
    let id = unique("procln");
    let o = rt.run(&["create", "--bundle", b.dir.to_str().unwrap(), &id]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    let bounding = (o.status.success())
        .then(|| {
            let pid = rt.state(&id)["pid"].as_i64().unwrap();
            let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            let _ = rt.run(&["delete", "--force", &id]);
            st.lines()
                .find(|l| l.starts_with("CapBnd:"))
                .map(String::from)
        })
        .flatten();
    assert!(
        !o.status.success() && err.contains("/proc") && err.contains("not an ordinary directory"),
        "created (bounding set {bounding:?}), stderr {err:?}"
    );
}

/// The bounding set does not depend on what the container's /proc says the last capability
/// is: here a createContainer hook (in the container's mount namespace, just before the
/// init's pivot_root) covers /proc/sys/kernel with a tmpfs saying 0. Read on the host, the
/// init's bounding set is the config's (no CAP_SYS_ADMIN).
#[test]
fn a_fake_cap_last_cap_does_not_keep_the_bounding_set() {
    let rt = Rsrun::new();
    let mut b = Bundle::new(&["sleep", "30"]);
    b.edit(|c| {
        c["hooks"] = json!({"createContainer": [{"path": "/bin/sh", "args": ["sh", "-c",
            "mount -t tmpfs t proc/sys/kernel && echo 0 > proc/sys/kernel/cap_last_cap"]}]});
    });
    let id = unique("lastcap");
    rt.ok(&["create", "--bundle", b.dir.to_str().unwrap(), &id]);
    rt.ok(&["start", &id]);
    let pid = rt.state(&id)["pid"].as_i64().unwrap();
    // The sets are set just before the exec of sleep.
    let mut st = String::new();
    wait_until(std::time::Duration::from_secs(10), || {
        st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        st.contains("Name:\tsleep")
    });
    let _ = rt.run(&["delete", "--force", &id]);
    let bnd = st
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    let sys_admin = 1u64 << 21;
    assert!(
        bnd != 0,
        "empty bounding set: the workload's check would prove nothing"
    );
    assert_eq!(
        bnd & sys_admin,
        0,
        "CAP_SYS_ADMIN kept in the bounding set {bnd:#x}"
    );
}

/// Mount destinations with symlinks pointing out of the rootfs stay inside it.
#[test]
fn mount_through_symlinks_stays_in_rootfs() {
    let rt = Rsrun::new();
    let victim = TempDir::new("victim");
    let mut b = Bundle::new(&["sh", "-c", "ls -d /escape/abs/x /escape/rel/x"]);
    let r = b.rootfs();
    std::fs::create_dir_all(r.join("escape")).unwrap();
    // Absolute and relative symlinks that point at the victim directory on the host.
    std::os::unix::fs::symlink(victim.path(), r.join("escape/abs")).unwrap();
    let depth = r.join("escape").components().count();
    let rel = format!(
        "{}{}",
        "../".repeat(depth + 2),
        victim.path().display().to_string().trim_start_matches('/')
    );
    std::os::unix::fs::symlink(&rel, r.join("escape/rel")).unwrap();
    b.edit(|c| {
        let m = c["mounts"].as_array_mut().unwrap();
        m.push(json!({"destination": "/escape/abs/x", "type": "tmpfs", "source": "tmpfs"}));
        m.push(json!({"destination": "/escape/rel/x", "type": "tmpfs", "source": "tmpfs"}));
    });
    rt.output(&b);
    assert!(
        std::fs::read_dir(victim.path()).unwrap().next().is_none(),
        "something was created in the host victim dir"
    );
    // The targets were created inside the rootfs instead.
    let inside = r.join(victim.path().strip_prefix("/").unwrap()).join("x");
    assert!(inside.is_dir(), "{} missing", inside.display());
}

/// A failed create leaves no state, no cgroup, no mount, no process.
#[test]
fn failed_create_leaves_nothing() {
    let rt = Rsrun::new();
    let mut b = Bundle::new(&["true"]);
    b.edit(|c| {
        c["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"destination": "/bad", "type": "nosuchfs", "source": "x"}))
    });
    // The mounts before the failing one (/proc, /dev, ...) are made in the init's mount
    // namespace and die with it, unless they propagate: with the bundle a shared mount here,
    // a runtime that did not make them slaves would leak them into this namespace.
    let _shared = SharedMount::new(&b.dir);
    let id = unique("fail");
    let e = rt.fails(&["create", "--bundle", b.dir.to_str().unwrap(), &id]);
    assert!(e.contains("nosuchfs"), "{e}");
    assert_eq!(rt.count(), 0);
    assert!(!memory_cgroup_of_self().unwrap().join(&id).exists());
    assert_eq!(
        mounts_under(&b.dir),
        Vec::<String>::new(),
        "the container's mounts leaked into the host's namespace"
    );
    assert_eq!(mounts_under(rt.root.path()), Vec::<String>::new());
    for d in ["proc", "dev", "sys"] {
        assert!(
            std::fs::read_dir(b.rootfs().join(d))
                .unwrap()
                .next()
                .is_none(),
            "the bundle's rootfs/{d} is not empty"
        );
    }
    // No init process left: the init is a fork of `rsrun create ... ID`, so its command
    // line carries the ID.
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(p.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            assert!(
                !cmd.contains(&id),
                "process {:?} left behind: {cmd}",
                p.path()
            );
        }
    }
    // A missing executable is found at create time, with nothing left either.
    let b = Bundle::new(&["/no/such/binary"]);
    let e = rt.fails(&[
        "create",
        "--bundle",
        b.dir.to_str().unwrap(),
        &unique("fail"),
    ]);
    assert!(e.contains("/no/such/binary"), "{e}");
    assert_eq!(rt.count(), 0);
}

/// CVE-2019-16884/CVE-2019-19921 and CVE-2025-52881: a volume mounted where the image made a
/// symlink into /proc/sys lands on procfs and plants a symlink where a sysctl is written; the
/// pod's sysctl value then goes wherever that symlink points (here the container's own
/// hostname, harmless; on a host, kernel.core_pattern). The mount is refused, and nothing of
/// the value reaches the kernel.
#[test]
fn a_volume_mounted_into_proc_cannot_redirect_a_sysctl() {
    let rt = Rsrun::new();
    let vol = TempDir::new("procvol");
    std::os::unix::fs::symlink("/proc/sys/kernel/hostname", vol.path().join("ip_forward")).unwrap();
    let mut b = Bundle::new(&["hostname"]);
    std::os::unix::fs::symlink("/proc/sys/net/ipv4", b.rootfs().join("v")).unwrap();
    b.edit(|c| {
        c["hostname"] = json!("orig");
        c["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "pwned"});
        c["mounts"].as_array_mut().unwrap().push(
            json!({"destination": "/v", "type": "bind", "source": vol.path(), "options": ["rbind"]}),
        );
    });
    let (code, out, err) = rt.run_bundle(&unique("procvol"), &b);
    assert!(
        code != 0 && err.contains("is on procfs"),
        "code {code} stdout {out:?} stderr {err:?}"
    );
    assert!(!out.contains("pwned"), "{out}");
    // A tmpfs straight at a path under /proc is refused the same way.
    let mut b = Bundle::new(&["true"]);
    b.edit(|c| {
        c["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"destination": "/proc/sys/net", "type": "tmpfs", "source": "tmpfs"}));
    });
    let (code, _, err) = rt.run_bundle(&unique("proctmpfs"), &b);
    assert!(code != 0 && err.contains("is on procfs"), "{err}");
    // lxcfs's files may be bound over their /proc paths.
    let fake = TempDir::new("lxcfs");
    std::fs::write(fake.path().join("uptime"), "12345.00 1.00\n").unwrap();
    let mut b = Bundle::new(&["cat", "/proc/uptime"]);
    b.edit(|c| {
        c["mounts"].as_array_mut().unwrap().push(json!({"destination": "/proc/uptime", "type": "bind", "source": fake.path().join("uptime"), "options": ["bind", "ro"]}));
    });
    assert_eq!(rt.output(&b), "12345.00 1.00\n");
}

/// CVE-2025-52881, the write itself: whatever is mounted over /proc/sys before the sysctls
/// are written (here by a createContainer hook, which runs in the container's mount
/// namespace just before) cannot redirect one through a symlink.
#[test]
fn a_sysctl_is_written_only_to_procfs() {
    let rt = Rsrun::new();
    let mut b = Bundle::new(&["hostname"]);
    b.edit(|c| {
        c["hostname"] = json!("orig");
        c["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "pwned"});
        c["hooks"] = json!({"createContainer": [{"path": "/bin/sh", "args": ["sh", "-c",
            "mount -t tmpfs t proc/sys/net/ipv4 && ln -s /proc/sys/kernel/hostname proc/sys/net/ipv4/ip_forward"]}]});
    });
    let (code, out, err) = rt.run_bundle(&unique("sysctlredir"), &b);
    assert!(
        code != 0 && err.contains("linux.sysctl net.ipv4.ip_forward"),
        "code {code} stdout {out:?} stderr {err:?}"
    );
    assert!(!out.contains("pwned"), "{out}");
}

/// CVE-2025-52565: the terminal is bound to /dev/console; a /dev the container controls (here
/// a bound directory, as a privileged pod's hostPath /dev) with /dev/console a symlink into
/// /proc/sys must not get the terminal mounted over that procfs file (which would also hide
/// it from readonlyPaths' protection). The create is refused, and the init's mount table (the
/// kernel's) shows no mount on /proc/sys/kernel/hostname.
#[test]
fn the_console_is_not_bound_through_a_symlink() {
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixListener;
    let rt = Rsrun::new();
    let mut b = Bundle::new(&["sh", "-c", "sleep 30"]);
    let dev = b.tmp.path().join("hostdev");
    std::fs::create_dir_all(dev.join("pts")).unwrap();
    std::os::unix::fs::symlink("pts/ptmx", dev.join("ptmx")).unwrap();
    std::os::unix::fs::symlink("/proc/sys/kernel/hostname", dev.join("console")).unwrap();
    b.edit(|c| {
        c["process"]["terminal"] = json!(true);
        c["mounts"].as_array_mut().unwrap().retain(|m| {
            let d = m["destination"].as_str().unwrap_or("");
            d != "/dev" && !d.starts_with("/dev/")
        });
        let m = c["mounts"].as_array_mut().unwrap();
        m.push(json!({"destination": "/dev", "type": "bind", "source": dev.to_str().unwrap(), "options": ["rbind", "rw"]}));
        m.push(json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}));
    });
    let sock = b.tmp.path().join("console.sock");
    let l = UnixListener::bind(&sock).unwrap();
    l.set_nonblocking(true).unwrap();
    let id = unique("console");
    let mut child = rt
        .cmd()
        .args([
            "create",
            "--bundle",
            b.dir.to_str().unwrap(),
            "--console-socket",
        ])
        .arg(&sock)
        .arg(&id)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Take the terminal if it comes (create blocks until it is taken), until create ends.
    let mut _master = None;
    let status = loop {
        if let Ok((conn, _)) = l.accept() {
            conn.set_nonblocking(false).unwrap();
            _master = rsrun::sys::recv_fd(conn.as_raw_fd()).ok();
        }
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    if status.success() {
        let pid = rt.state(&id)["pid"].as_i64().unwrap();
        let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
        let _ = rt.run(&["delete", "--force", &id]);
        panic!("create succeeded; the init's mounts:\n{mounts}");
    }
    assert!(err.contains("/dev/console"), "{err}");
}
