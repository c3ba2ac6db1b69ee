//! The runtime-spec lifecycle through runc's command line.

use rsrun_tests::*;
use serde_json::json;

#[test]
fn create_start_kill_delete() {
    let rt = Rsrun::new();
    let b = Bundle::new(&["sleep", "100"]);
    let id = unique("life");
    rt.ok(&["create", "--bundle", b.dir.to_str().unwrap(), &id]);
    let st = rt.state(&id);
    assert_eq!(st["status"], "created");
    assert_eq!(st["id"], id.as_str());
    assert_eq!(st["bundle"], b.dir.to_str().unwrap());
    let pid = st["pid"].as_i64().unwrap();
    assert!(pid > 0);
    // The init waits in the runtime until start: not yet the user program (busybox's sleep,
    // told by its file: the runtime's own may be a sealed copy whose path says nothing).
    use std::os::unix::fs::MetadataExt;
    let file = |p: &std::path::Path| {
        let m = std::fs::metadata(p).unwrap();
        (m.dev(), m.ino())
    };
    let exe = std::path::PathBuf::from(format!("/proc/{pid}/exe"));
    let program = file(&b.rootfs().join("bin/busybox"));
    assert_ne!(file(&exe), program, "the user program ran before start");
    // The spec says: deleting a created (not stopped) container is an error without --force.
    let e = rt.fails(&["delete", &id]);
    assert!(e.contains("created"), "{e}");
    rt.ok(&["start", &id]);
    assert_eq!(rt.status(&id), "running");
    assert_eq!(file(&exe), program, "start did not exec the user program");
    let e = rt.fails(&["start", &id]);
    assert!(e.contains("running"), "{e}");
    let list = rt.ok(&["list", "-q"]);
    assert_eq!(list.trim(), id);
    let listj: serde_json::Value =
        serde_json::from_str(&rt.ok(&["list", "--format", "json"])).unwrap();
    assert_eq!(listj[0]["status"], "running");
    rt.ok(&["kill", &id, "KILL"]);
    rt.wait_status(&id, "stopped");
    let e = rt.fails(&["kill", &id, "TERM"]);
    assert!(e.contains("container not running"), "{e}");
    // --all has nothing left to signal: not an error (containerd's shim relies on it).
    rt.ok(&["kill", "--all", &id, "KILL"]);
    rt.ok(&["kill", "-a", &id, "0"]);
    let e = rt.fails(&["kill", &id, "0"]);
    assert!(e.contains("container not running"), "{e}");
    // A stopped container has no processes: an empty list, not an error (runc).
    assert_eq!(rt.ok(&["ps", "--format", "json", &id]).trim(), "[]");
    rt.ok(&["delete", &id]);
    let e = rt.fails(&["state", &id]);
    assert!(e.contains("does not exist"), "{e}");
    assert_eq!(rt.count(), 0);
}

#[test]
fn force_delete_of_created_and_running() {
    let rt = Rsrun::new();
    let b = Bundle::new(&["sleep", "100"]);
    let a = unique("fd");
    rt.ok(&["create", "--bundle", b.dir.to_str().unwrap(), &a]);
    rt.ok(&["delete", "--force", &a]);
    let c = unique("fd");
    rt.ok(&["run", "-d", "--bundle", b.dir.to_str().unwrap(), &c]);
    assert_eq!(rt.status(&c), "running");
    let pid = rt.state(&c)["pid"].as_i64().unwrap();
    rt.ok(&["delete", "-f", &c]);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}/exe")).exists()
            || std::fs::read_link(format!("/proc/{pid}/exe")).is_err()
    );
    assert_eq!(rt.count(), 0);
    // --force on a missing container is not an error (as runc).
    rt.ok(&["delete", "--force", "no-such-container"]);
    let e = rt.fails(&["delete", "no-such-container"]);
    assert!(e.contains("does not exist"));
}

#[test]
fn kill_signal_forms() {
    let rt = Rsrun::new();
    let b = Bundle::new(&[
        "sh",
        "-c",
        "trap 'exit 0' USR1; while true; do sleep 0.05; done",
    ]);
    for sig in ["USR1", "SIGUSR1", "10"] {
        let id = unique("sig");
        rt.ok(&["run", "-d", "--bundle", b.dir.to_str().unwrap(), &id]);
        wait_caught(&rt, &id, 10);
        rt.ok(&["kill", &id, sig]);
        rt.wait_status(&id, "stopped");
        rt.ok(&["delete", &id]);
    }
    let id = unique("sig");
    rt.ok(&["run", "-d", "--bundle", b.dir.to_str().unwrap(), &id]);
    let e = rt.fails(&["kill", &id, "NOPE"]);
    assert!(e.contains("unknown signal"), "{e}");
    rt.ok(&["kill", "--all", &id, "KILL"]);
    rt.wait_status(&id, "stopped");
    rt.ok(&["delete", &id]);
}

#[test]
fn run_returns_exit_status() {
    let rt = Rsrun::new();
    let b = Bundle::new(&["sh", "-c", "exit 3"]);
    assert_eq!(rt.run_bundle(&unique("ex"), &b).0, 3);
    // Killed by a signal from outside (pid 1 ignores its own kill -9): 128 + 9.
    let b = Bundle::new(&["sleep", "100"]);
    let id = unique("ex");
    let mut child = rt
        .cmd()
        .args(["run", "--bundle", b.dir.to_str().unwrap(), &id])
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_until(std::time::Duration::from_secs(60), || {
            rt.run(&["state", &id]).status.success() && rt.status(&id) == "running"
        }),
        "{id} never ran"
    );
    rt.ok(&["kill", &id, "KILL"]);
    assert_eq!(child.wait().unwrap().code(), Some(137));
    let b = Bundle::new(&["true"]);
    assert_eq!(rt.run_bundle(&unique("ex"), &b).0, 0);
    // Foreground run cleans up after itself.
    assert_eq!(rt.count(), 0);
}

#[test]
fn run_keep_leaves_stopped_container() {
    let rt = Rsrun::new();
    let b = Bundle::new(&["true"]);
    let id = unique("keep");
    rt.ok(&["run", "--keep", "--bundle", b.dir.to_str().unwrap(), &id]);
    assert_eq!(rt.status(&id), "stopped");
    rt.ok(&["delete", &id]);
}

#[test]
fn run_bundle_path_form() {
    let rt = Rsrun::new();
    let b = Bundle::new(&["echo", "short form"]);
    let arg = format!("{}/", b.dir.display());
    let out = rt.ok(&["run", &arg]);
    assert_eq!(out.trim(), "short form");
    // The ID was the directory's name: run it detached and look.
    let mut b = b;
    b.edit(|c| c["process"]["args"] = json!(["sleep", "100"]));
    let o = rt.ok(&["run", "-d", &arg]);
    assert!(o.is_empty());
    let st = rt.state("bundle");
    assert_eq!(st["id"], "bundle");
    rt.ok(&["delete", "-f", "bundle"]);
}

#[test]
fn pid_file_and_annotations() {
    let rt = Rsrun::new();
    let mut b = Bundle::new(&["sleep", "100"]);
    b.edit(|c| c["annotations"] = json!({"org.example.key": "value"}));
    let id = unique("pf");
    let pf = b.tmp.path().join("pid");
    rt.ok(&[
        "create",
        "--bundle",
        b.dir.to_str().unwrap(),
        "--pid-file",
        pf.to_str().unwrap(),
        &id,
    ]);
    let st = rt.state(&id);
    assert_eq!(std::fs::read_to_string(&pf).unwrap(), st["pid"].to_string());
    assert_eq!(st["annotations"]["org.example.key"], "value");
    rt.ok(&["delete", "-f", &id]);
}

#[test]
fn cgroup_created_and_removed() {
    let rt = Rsrun::new();
    let b = Bundle::new(&["sleep", "100"]);
    let id = unique("cg");
    rt.ok(&["run", "-d", "--bundle", b.dir.to_str().unwrap(), &id]);
    let pid = rt.state(&id)["pid"].as_i64().unwrap();
    let own = memory_cgroup_of_self().expect("memory cgroup");
    let dir = own.join(&id);
    assert!(dir.is_dir(), "{} missing", dir.display());
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
    assert!(procs.lines().any(|l| l == pid.to_string()), "{procs}");
    rt.ok(&["delete", "-f", &id]);
    assert!(!dir.exists(), "{} left behind", dir.display());

    // An absolute cgroupsPath.
    let mut b = Bundle::new(&["sleep", "100"]);
    let path = format!("/rsrun-test/{}", unique("abs"));
    b.edit(|c| c["linux"]["cgroupsPath"] = json!(path));
    let id = unique("cg");
    rt.ok(&["run", "-d", "--bundle", b.dir.to_str().unwrap(), &id]);
    let hier = if std::path::Path::new("/sys/fs/cgroup/memory").exists() {
        "/sys/fs/cgroup/memory"
    } else {
        "/sys/fs/cgroup"
    };
    let dir = std::path::Path::new(hier).join(path.trim_start_matches('/'));
    assert!(dir.is_dir());
    rt.ok(&["delete", "-f", &id]);
    assert!(!dir.exists());
}

#[test]
fn features_and_spec() {
    let rt = Rsrun::new();
    let f: serde_json::Value = serde_json::from_str(&rt.ok(&["features"])).unwrap();
    assert_eq!(f["ociVersionMax"], "1.2.0");
    assert!(f["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .contains(&json!("time")));
    let t = TempDir::new("spec");
    rt.ok(&["spec", "--bundle", t.path().to_str().unwrap()]);
    let e = rt.fails(&["spec", "--bundle", t.path().to_str().unwrap()]);
    assert!(e.contains("already exists"));
    let t2 = TempDir::new("spec");
    rt.ok(&[
        "spec",
        "--rootless",
        "--bundle",
        t2.path().to_str().unwrap(),
    ]);
    let c: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t2.path().join("config.json")).unwrap()).unwrap();
    assert!(c["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["type"] == "user"));
    // The systemd driver where systemd does not run (this host: no systemd as PID 1,
    // hybrid cgroups): a clear error, nothing left behind. (It works in stage 42's VM.)
    if std::fs::read_to_string("/proc/1/comm").is_ok_and(|c| c.trim() != "systemd") {
        let b = Bundle::new(&["true"]);
        let e = rt.fails(&[
            "--systemd-cgroup",
            "run",
            "--bundle",
            b.dir.to_str().unwrap(),
            "sd",
        ]);
        assert!(e.contains("systemd"), "{e}");
        assert_eq!(rt.count(), 0);
    }
}

#[test]
fn create_without_process_then_start_fails() {
    let rt = Rsrun::new();
    let mut b = Bundle::new(&["true"]);
    b.edit(|c| {
        c.as_object_mut().unwrap().remove("process");
    });
    let id = unique("noproc");
    rt.ok(&["create", "--bundle", b.dir.to_str().unwrap(), &id]);
    assert_eq!(rt.status(&id), "created");
    let e = rt.fails(&["start", &id]);
    assert!(e.contains("process is required"), "{e}");
    rt.wait_status(&id, "stopped");
    rt.ok(&["delete", &id]);
}

#[test]
fn apparmor_profile_is_applied_or_refused() {
    let enabled = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|s| s.trim() == "Y");
    let rt = Rsrun::new();
    let mut b = Bundle::new(&["cat", "/proc/self/attr/current"]);
    b.edit(|c| c["process"]["apparmorProfile"] = json!("unconfined"));
    let (code, out, err) = rt.run_bundle(&unique("aa"), &b);
    if enabled {
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("unconfined"), "{out}");
    } else {
        assert_ne!(code, 0);
        assert!(err.contains("AppArmor is not enabled"), "{err}");
    }
}

#[test]
fn json_log_file_for_containerd() {
    let rt = Rsrun::new();
    let log = rt.root.path().join(".log.json");
    let b = Bundle::new(&["/no/such/program"]);
    let o = rt
        .cmd()
        .args([
            "--log",
            log.to_str().unwrap(),
            "--log-format",
            "json",
            "create",
            "--bundle",
            b.dir.to_str().unwrap(),
            &unique("log"),
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(line["level"], "error");
    assert!(
        line["msg"].as_str().unwrap().contains("/no/such/program"),
        "{text}"
    );
    assert!(line["time"].as_str().unwrap().ends_with('Z'));
    // The error also reaches stderr.
    assert!(String::from_utf8_lossy(&o.stderr).contains("/no/such/program"));
}

#[test]
fn the_inits_late_log_lines_go_to_the_log_file() {
    // A capability outside the runtime's bounding set is warned about by the init after it
    // closed the descriptors it inherited and before exec (after the start request): that
    // line must reach the log file, not the descriptor that took the log's number (the
    // start connection: `start` then failed with the warning as its error).
    use std::os::unix::process::CommandExt;
    let rt = Rsrun::new();
    let log = rt.root.path().join(".log.json");
    let mut b = Bundle::new(&["true"]);
    b.edit(|c| {
        c["process"]["capabilities"]["bounding"] = json!(["CAP_WAKE_ALARM"]);
        c["process"]["capabilities"]["effective"] = json!(["CAP_WAKE_ALARM"]);
        c["process"]["capabilities"]["permitted"] = json!(["CAP_WAKE_ALARM"]);
    });
    let id = unique("late-log");
    let rsrun = |args: &[&str]| {
        let mut c = rt.cmd();
        c.args(["--log", log.to_str().unwrap(), "--log-format", "json"])
            .args(args);
        // SAFETY: between fork and exec only prctl, which is async-signal-safe.
        unsafe {
            c.pre_exec(|| {
                // CAP_WAKE_ALARM is capability 35.
                if libc::prctl(libc::PR_CAPBSET_DROP, 35, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        // The container keeps the stdio it is created with: no pipes here. Errors are in
        // the log file.
        c.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c.status().unwrap()
    };
    let st = rsrun(&["create", "--bundle", b.dir.to_str().unwrap(), &id]);
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(st.success(), "create: {}", text());
    let st = rsrun(&["start", &id]);
    assert!(st.success(), "start: {}", text());
    let text = text();
    assert!(
        text.contains("CAP_WAKE_ALARM is not in the runtime's bounding set"),
        "{text}"
    );
    rt.ok(&["delete", "--force", &id]);
}

#[test]
fn start_fails_when_the_init_dies_before_exec() {
    let rt = Rsrun::new();
    let mut b = Bundle::new(&["sleep", "100"]);
    // Without no_new_privs or CAP_SYS_ADMIN the filter is loaded before the last steps of
    // the init, and this one kills it at umask(2): it never reaches exec.
    b.edit(|c| {
        c["process"]["noNewPrivileges"] = json!(false);
        c["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["umask"], "action": "SCMP_ACT_KILL_PROCESS"}]
        });
    });
    let id = unique("died");
    rt.ok(&["create", "--bundle", b.dir.to_str().unwrap(), &id]);
    let e = rt.fails(&["start", &id]);
    assert!(e.contains("exited before starting the program"), "{e}");
    rt.wait_status(&id, "stopped");
    rt.ok(&["delete", &id]);
}

#[test]
fn kill_sends_real_time_signals_as_runc_numbers_them() {
    let rt = Rsrun::new();
    // PID 1 of its namespace: the kernel drops the signals it has no handler for, so only
    // the one trapped (37, SIGRTMIN+3 with SIGRTMIN = 34: systemd's stop signal) ends it.
    let b = Bundle::new(&[
        "sh",
        "-c",
        "trap 'exit 7' 37; while true; do sleep 0.05; done",
    ]);
    let id = unique("rt");
    rt.ok(&["run", "-d", "--bundle", b.dir.to_str().unwrap(), &id]);
    wait_caught(&rt, &id, 37);
    for near in ["SIGRTMIN+2", "RTMAX-26", "TERM"] {
        rt.ok(&["kill", &id, near]);
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(rt.status(&id), "running", "a signal other than 37 ended it");
    for bad in ["SIGRTMIN+31", "RTMAX-40", "SIGNOPE", "65", "0x25"] {
        let e = rt.fails(&["kill", &id, bad]);
        assert!(e.contains("signal"), "{bad}: {e}");
    }
    rt.ok(&["kill", &id, "SIGRTMIN+3"]);
    rt.wait_status(&id, "stopped");
    rt.ok(&["delete", &id]);
}

/// Waits (a minute at most) until container `id`'s PID 1 has a handler for `sig`: its shell's
/// trap is set (before that, the kernel drops the signal sent to a namespace's PID 1).
fn wait_caught(rt: &Rsrun, id: &str, sig: u32) {
    let pid = rt.state(id)["pid"].as_i64().unwrap();
    assert!(
        wait_until(std::time::Duration::from_secs(60), || {
            caught_signals(pid) & (1 << (sig - 1)) != 0
        }),
        "container {id}'s PID 1 never trapped signal {sig}"
    );
}

/// The signal-handler mask of `pid` from /proc (SigCgt).
fn caught_signals(pid: i64) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .unwrap_or(0)
}

#[test]
fn foreground_run_and_exec_forward_real_time_signals() {
    let rt = Rsrun::new();
    // The init traps 37 (SIGRTMIN+3, systemd's stop signal) and exits 7 on it.
    let b = Bundle::new(&[
        "sh",
        "-c",
        "trap 'exit 7' 37; while true; do sleep 0.05; done",
    ]);
    let id = unique("rtfwd");
    let mut run = rt
        .cmd()
        .args(["run", "--bundle", b.dir.to_str().unwrap(), &id])
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut pid = 0;
    wait_until(std::time::Duration::from_secs(60), || {
        let st = rt.run(&["state", &id]);
        if st.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
            pid = v["pid"].as_i64().unwrap_or(0);
        }
        pid > 0 && caught_signals(pid) & (1 << (37 - 1)) != 0
    });
    assert_ne!(
        caught_signals(pid) & (1 << (37 - 1)),
        0,
        "the init never trapped 37"
    );
    // An exec'd shell in the foreground traps 40 (SIGRTMIN+6) and exits 9 on it.
    let mut exec = rt
        .cmd()
        .args([
            "exec",
            &id,
            "sh",
            "-c",
            "trap 'exit 9' 40; while true; do sleep 0.05; done",
        ])
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut exec_pid = 0i64;
    wait_until(std::time::Duration::from_secs(60), || {
        // The exec'd shell: the process in the container's PID namespace that traps 40.
        exec_pid = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i64>().ok())
            .find(|p| {
                *p != pid
                    && caught_signals(*p) & (1 << (40 - 1)) != 0
                    && std::fs::read_link(format!("/proc/{p}/ns/pid")).ok()
                        == std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()
            })
            .unwrap_or(0);
        exec_pid > 0
    });
    assert!(exec_pid > 0, "the exec'd shell never trapped 40");
    // SAFETY: plain integers; both are our own children.
    assert_eq!(unsafe { libc::kill(exec.id() as i32, 40) }, 0);
    assert_eq!(
        exec.wait().unwrap().code(),
        Some(9),
        "signal 40 not forwarded by exec"
    );
    assert_eq!(rt.status(&id), "running");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(run.id() as i32, 37) }, 0);
    assert_eq!(
        run.wait().unwrap().code(),
        Some(7),
        "signal 37 not forwarded by run"
    );
    // `run` deletes the container once it exits.
    assert!(!rt.run(&["state", &id]).status.success());
}

/// Without a PID namespace of its own, what the init left behind runs on in the container's
/// cgroup after the init exits: `ps` lists it and `kill --all` reaches it (containerd's shim
/// ends such a container's leftovers with `kill --all ID 9`, as runc serves it).
#[test]
fn kill_all_and_ps_reach_what_a_stopped_init_left_in_the_cgroup() {
    let rt = Rsrun::new();
    let marker = "42421";
    let mut b = Bundle::new(&["sh", "-c", &format!("sleep {marker} & exit 0")]);
    b.edit(|c| {
        let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
        ns.retain(|n| n["type"] != "pid");
    });
    let id = unique("left");
    rt.ok(&["run", "-d", "--bundle", b.dir.to_str().unwrap(), &id]);
    rt.wait_status(&id, "stopped");
    // The init may exit before its child has exec'd sleep: wait for the sleep to show.
    wait_until(std::time::Duration::from_secs(10), || {
        live_processes(&["sleep", marker]).len() == 1
    });
    let left = live_processes(&["sleep", marker]);
    assert_eq!(left.len(), 1, "{left:?}");
    let ps: Vec<i32> = serde_json::from_str(&rt.ok(&["ps", "--format", "json", &id])).unwrap();
    assert_eq!(ps, left, "ps of the stopped container");
    rt.ok(&["kill", "--all", &id, "KILL"]);
    assert!(
        wait_until(std::time::Duration::from_secs(10), || !alive(left[0])),
        "kill --all left process {} running",
        left[0]
    );
    rt.ok(&["delete", &id]);
    assert_eq!(rt.count(), 0);
}

/// A create killed half-way (here in its createRuntime hook) is stopped, as `list` shows it:
/// `state` says so (Podman refuses any status but created, running, paused and stopped) and
/// a plain `delete` removes what it made.
#[test]
fn a_create_killed_half_way_is_stopped_and_deleted_without_force() {
    let rt = Rsrun::new();
    let mut b = Bundle::new(&["sleep", "100"]);
    b.edit(|c| {
        c["hooks"] = json!({"createRuntime": [{"path": "/bin/sleep", "args": ["sleep", "5"]}]})
    });
    let id = unique("half");
    let mut create = rt
        .cmd()
        .args(["create", "--bundle", b.dir.to_str().unwrap(), &id])
        .spawn()
        .unwrap();
    assert!(
        wait_until(std::time::Duration::from_secs(20), || {
            rt.run(&["state", &id]).status.success() && rt.status(&id) == "creating"
        }),
        "never seen creating"
    );
    create.kill().unwrap();
    create.wait().unwrap();
    assert_eq!(rt.status(&id), "stopped");
    let list: serde_json::Value =
        serde_json::from_str(&rt.ok(&["list", "--format", "json"])).unwrap();
    assert_eq!(list[0]["status"], "stopped", "{list}");
    rt.ok(&["delete", &id]);
    assert_eq!(rt.count(), 0);
    assert_eq!(rt.claims(), 0);
}
