//! The systemd cgroup driver (`rsrun --systemd-cgroup`) on a host where systemd is PID 1 and
//! the hierarchy is pure cgroup v2. This project's hosts have neither, so
//! integration/stages/42-systemd-vm.sh runs this binary in a VM that boots systemd
//! (integration/vm/vm-run.sh with RSRUN_VM_INIT=systemd). Elsewhere each test prints that
//! it is skipped; RSRUN_REQUIRE_SYSTEMD turns that into a failure.
//!
//! What systemd did is read from systemd (`systemctl show`) and from the kernel (the
//! cgroup files, /proc/PID/cgroup), never from rsrun's own state.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use rsrun_tests::*;
use serde_json::json;

fn systemd_host(test: &str) -> bool {
    let pid1 = std::fs::read_to_string("/proc/1/comm").unwrap_or_default();
    let ok = pid1.trim() == "systemd" && Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    if !ok && std::env::var_os("RSRUN_REQUIRE_SYSTEMD").is_some() {
        panic!("{test}: RSRUN_REQUIRE_SYSTEMD is set but systemd is not PID 1 on cgroup v2 here");
    }
    if !ok {
        println!("skipping {test}: systemd is not PID 1 (run integration/stages/42-systemd-vm.sh)");
    }
    ok
}

/// `systemctl show -p PROP UNIT` → the value.
fn show(unit: &str, prop: &str) -> String {
    let out = Command::new("systemctl")
        .args(["show", "-p", prop, "--value", unit])
        .output()
        .expect("run systemctl");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn unit_gone(unit: &str) -> bool {
    show(unit, "LoadState") == "not-found"
}

fn systemctl(args: &[&str]) {
    let st = Command::new("systemctl")
        .args(args)
        .status()
        .expect("run systemctl");
    assert!(st.success(), "systemctl {args:?} failed");
}

fn cg_dir(slice_path: &str, unit: &str) -> PathBuf {
    Path::new("/sys/fs/cgroup").join(slice_path).join(unit)
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.join(file).display()))
        .trim()
        .to_string()
}

fn wait_for(what: &str, f: impl FnMut() -> bool) {
    assert!(
        wait_until(Duration::from_secs(120), f),
        "timed out waiting for {what}"
    );
}

fn sd(rt: &Rsrun, args: &[&str]) -> String {
    let mut a = vec!["--systemd-cgroup"];
    a.extend_from_slice(args);
    rt.ok(&a)
}

fn sd_fails(rt: &Rsrun, args: &[&str]) -> String {
    let mut a = vec!["--systemd-cgroup"];
    a.extend_from_slice(args);
    rt.fails(&a)
}

const MIB: i64 = 1 << 20;

/// The OOM tests one at a time: under the VM's emulated CPUs, a memory hog of one starves the
/// shim of the other of the CPU it needs to read memory.events before systemd removes the scope.
static OOM_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A detached `sleep` in `slice:rsrun:ID` with limits; returns (ID, unit, its cgroup).
fn limited(rt: &Rsrun, slice: &str, slice_path: &str) -> (String, String, PathBuf, Bundle) {
    let id = unique("sd");
    let mut b = Bundle::new(&["sleep", "1000"]);
    b.edit(|c| {
        c["linux"]["cgroupsPath"] = json!(format!("{slice}:rsrun:{id}"));
        c["linux"]["resources"] = json!({
            "memory": {"limit": 64 * MIB},
            "pids": {"limit": 32},
            "cpu": {"shares": 512, "quota": 50000, "period": 100000},
            // Not a property systemd has: written to the file.
            "unified": {"memory.swap.high": "1048576"}
        });
    });
    sd(rt, &["run", "-d", "--bundle", b.dir.to_str().unwrap(), &id]);
    let unit = format!("rsrun-{id}.scope");
    (id, unit.clone(), cg_dir(slice_path, &unit), b)
}

#[test]
fn systemd_scope_carries_limits_survives_reload_and_goes_on_delete() {
    if !systemd_host("systemd_scope_carries_limits_survives_reload_and_goes_on_delete") {
        return;
    }
    let rt = Rsrun::new();
    let (id, unit, dir, b) = limited(
        &rt,
        "rsrun-test-a.slice",
        "rsrun.slice/rsrun-test.slice/rsrun-test-a.slice",
    );
    // systemd made the scope, in the nested slice, delegated, with the init in it.
    assert_eq!(show(&unit, "ActiveState"), "active");
    assert_eq!(show(&unit, "Slice"), "rsrun-test-a.slice");
    assert_eq!(show(&unit, "Delegate"), "yes");
    let pid = rt.state(&id)["pid"].as_i64().unwrap();
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert_eq!(
        own.trim(),
        format!("0::/rsrun.slice/rsrun-test.slice/rsrun-test-a.slice/{unit}")
    );
    assert!(read(&dir, "cgroup.procs")
        .lines()
        .any(|l| l == pid.to_string()));
    // The limits, as systemd holds them and as the kernel has them.
    let check = |when: &str| {
        assert_eq!(show(&unit, "MemoryMax"), (64 * MIB).to_string(), "{when}");
        assert_eq!(show(&unit, "TasksMax"), "32", "{when}");
        assert_eq!(show(&unit, "CPUQuotaPerSecUSec"), "500ms", "{when}");
        assert_eq!(show(&unit, "CPUWeight"), "59", "{when}");
        assert_eq!(read(&dir, "memory.max"), (64 * MIB).to_string(), "{when}");
        assert_eq!(read(&dir, "pids.max"), "32", "{when}");
        assert_eq!(read(&dir, "cpu.max"), "50000 100000", "{when}");
        assert_eq!(read(&dir, "cpu.weight"), "59", "{when}");
        assert_eq!(read(&dir, "memory.swap.high"), "1048576", "{when}");
    };
    check("after create");
    // systemd re-applies its view of the tree on reload: nothing of ours may be lost.
    systemctl(&["daemon-reload"]);
    check("after daemon-reload");
    assert_eq!(show(&unit, "ActiveState"), "active");

    // update: through systemd and in the files.
    rt.ok(&["update", "--memory", "128M", "--pids-limit", "64", &id]);
    assert_eq!(show(&unit, "MemoryMax"), (128 * MIB).to_string());
    assert_eq!(show(&unit, "TasksMax"), "64");
    assert_eq!(read(&dir, "memory.max"), (128 * MIB).to_string());
    assert_eq!(read(&dir, "pids.max"), "64");
    systemctl(&["daemon-reload"]);
    assert_eq!(read(&dir, "memory.max"), (128 * MIB).to_string());

    // A refused update changes nothing, in systemd's view either: a memory limit systemd
    // would take, with a unified key rsrun refuses.
    let bad = b.dir.join("bad-update.json");
    std::fs::write(
        &bad,
        json!({"memory": {"limit": 96 * MIB}, "unified": {"cgroup.procs": "1"}}).to_string(),
    )
    .unwrap();
    let err = rt.fails(&["update", "-r", bad.to_str().unwrap(), &id]);
    assert!(err.contains("cgroup.procs"), "{err}");
    assert_eq!(show(&unit, "MemoryMax"), (128 * MIB).to_string());
    assert_eq!(read(&dir, "memory.max"), (128 * MIB).to_string());
    systemctl(&["daemon-reload"]);
    assert_eq!(read(&dir, "memory.max"), (128 * MIB).to_string());

    // delete --force: the unit and its cgroup go, the process with them.
    rt.ok(&["delete", "--force", &id]);
    assert!(
        unit_gone(&unit),
        "{unit} still loaded: {}",
        show(&unit, "ActiveState")
    );
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(!alive(pid as i32));
    assert_eq!(rt.count(), 0);
}

#[test]
fn systemd_failed_create_leaves_no_unit() {
    if !systemd_host("systemd_failed_create_leaves_no_unit") {
        return;
    }
    let rt = Rsrun::new();
    let id = unique("sdf");
    let mut b = Bundle::new(&["/bin/does-not-exist"]);
    b.edit(|c| c["linux"]["cgroupsPath"] = json!(format!("rsrun-fail.slice:rsrun:{id}")));
    let err = sd_fails(
        &rt,
        &["run", "-d", "--bundle", b.dir.to_str().unwrap(), &id],
    );
    assert!(err.contains("does-not-exist"), "{err}");
    let unit = format!("rsrun-{id}.scope");
    assert!(
        unit_gone(&unit),
        "{unit} left behind: {}",
        show(&unit, "ActiveState")
    );
    assert!(!cg_dir("rsrun.slice/rsrun-fail.slice", &unit).exists());
    assert_eq!(rt.count(), 0);

    // Another runtime root asking for the scope of a running container: refused, and the
    // running container's unit and process are left alone.
    let rt2 = Rsrun::new();
    let (id_a, unit_a, _dir_a, _ba) =
        limited(&rt2, "rsrun-fail.slice", "rsrun.slice/rsrun-fail.slice");
    let pid_a = rt2.state(&id_a)["pid"].as_i64().unwrap() as i32;
    let mut b2 = Bundle::new(&["true"]);
    b2.edit(|c| c["linux"]["cgroupsPath"] = json!(format!("rsrun-fail.slice:rsrun:{id_a}")));
    let err = sd_fails(
        &rt,
        &[
            "run",
            "-d",
            "--bundle",
            b2.dir.to_str().unwrap(),
            &unique("sdf"),
        ],
    );
    assert!(
        err.contains("not empty") || err.contains("already"),
        "{err}"
    );
    assert_eq!(show(&unit_a, "ActiveState"), "active");
    assert!(alive(pid_a));
    rt2.ok(&["delete", "--force", &id_a]);
    assert!(unit_gone(&unit_a));

    // systemd unreachable once the init exists: the create fails naming the bus, and a
    // directory of the scope's name that was there before (not made by this create, not a
    // unit systemd made for it) is left where it was.
    let id3 = unique("sdf");
    let foreign = cg_dir(
        "rsrun.slice/rsrun-fail.slice",
        &format!("rsrun-{id3}.scope"),
    );
    std::fs::create_dir_all(&foreign).unwrap();
    b.edit(|c| c["linux"]["cgroupsPath"] = json!(format!("rsrun-fail.slice:rsrun:{id3}")));
    b.edit(|c| c["process"]["args"] = json!(["true"]));
    let out = rt
        .cmd()
        .env(
            "DBUS_SYSTEM_BUS_ADDRESS",
            "unix:path=/run/rsrun-test-no-bus",
        )
        .args([
            "--systemd-cgroup",
            "run",
            "--bundle",
            b.dir.to_str().unwrap(),
            &id3,
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("rsrun-test-no-bus"), "{err}");
    assert!(
        foreign.is_dir(),
        "a failed create removed {}",
        foreign.display()
    );
    assert_eq!(rt.count(), 0);
    std::fs::remove_dir(&foreign).unwrap();

    // A malformed path is refused before anything is made.
    let id2 = unique("sdf");
    b.edit(|c| c["linux"]["cgroupsPath"] = json!("/not/a/slice"));
    let err = sd_fails(
        &rt,
        &["run", "-d", "--bundle", b.dir.to_str().unwrap(), &id2],
    );
    assert!(err.contains("slice:prefix:name"), "{err}");
    assert_eq!(rt.count(), 0);
}

#[test]
fn systemd_scope_of_an_exited_container_is_cleaned_by_delete() {
    if !systemd_host("systemd_scope_of_an_exited_container_is_cleaned_by_delete") {
        return;
    }
    // Over systemd's private socket this time, not the system bus (dbus-daemon).
    let rt = Rsrun::new();
    let id = unique("sdx");
    let mut b = Bundle::new(&["sleep", "1000"]);
    b.edit(|c| c["linux"]["cgroupsPath"] = json!(format!(":rsrun:{id}")));
    // (stderr to a file: the detached container keeps a pipe open.)
    let err_path = rt.root.path().join("run.err");
    let st = rt
        .cmd()
        .env("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/run/systemd/private")
        .args([
            "--systemd-cgroup",
            "run",
            "-d",
            "--bundle",
            b.dir.to_str().unwrap(),
            &id,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .status()
        .unwrap();
    assert!(
        st.success(),
        "{}",
        std::fs::read_to_string(&err_path).unwrap_or_default()
    );
    let unit = format!("rsrun-{id}.scope");
    assert_eq!(show(&unit, "Slice"), "system.slice");
    assert_eq!(show(&unit, "ActiveState"), "active");
    rt.ok(&["kill", &id, "KILL"]);
    rt.wait_status(&id, "stopped");
    // systemd ends an empty scope by itself; delete still finishes cleanly.
    wait_for("the empty scope to stop", || {
        show(&unit, "ActiveState") != "active"
    });
    rt.ok(&["delete", &id]);
    assert!(unit_gone(&unit));
    assert!(!cg_dir("system.slice", &unit).exists());
}

#[test]
fn systemd_oom_kill_is_recorded_by_the_shim_though_the_scope_goes_at_exit() {
    if !systemd_host("systemd_oom_kill_is_recorded_by_the_shim_though_the_scope_goes_at_exit") {
        return;
    }
    let _one = OOM_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    // The OOM killer takes `tail`; then the init leaves the scope for a cgroup of the
    // test's, lives on there and exits 0. systemd removes the scope's cgroup (and its
    // memory.events) as soon as it is empty, before the exit, as it does when a container's
    // last process exits: the shim must count the kill as it happens, not at the exit.
    let rt = Rsrun::new();
    let tmp = TempDir::new("sdoom");
    let id = unique("sdoom");
    let away = Path::new("/sys/fs/cgroup").join(format!("rsrun-test-{id}"));
    std::fs::create_dir(&away).unwrap();
    let script = format!(
        "tail /dev/zero; sleep 0.5; echo 0 > /sys/fs/cgroup/rsrun-test-{id}/cgroup.procs && sleep 2"
    );
    let mut b = Bundle::new(&["sh", "-c", &script]);
    b.edit(|c| {
        c["linux"]["cgroupsPath"] = json!(format!("rsrun-oom.slice:rsrun:{id}"));
        c["linux"]["resources"] = json!({"memory": {"limit": 32 * MIB, "swap": 32 * MIB}});
        // The host's hierarchy, writable, to leave by.
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|n| n["type"] != "cgroup");
        let mounts = c["mounts"].as_array_mut().unwrap();
        mounts.retain(|m| m["destination"] != "/sys/fs/cgroup");
        mounts.push(json!({"destination": "/sys/fs/cgroup", "type": "bind",
            "source": "/sys/fs/cgroup", "options": ["rbind", "rw"]}));
    });
    let exit_file = shim_create(&rt, &tmp, &id, &b);
    let unit = format!("rsrun-{id}.scope");
    let dir = cg_dir("rsrun.slice/rsrun-oom.slice", &unit);
    assert!(dir.is_dir(), "no scope cgroup {}", dir.display());
    rt.ok(&["start", &id]);
    wait_for("the exit record", || exit_file.exists());
    let e: serde_json::Value = serde_json::from_slice(&std::fs::read(&exit_file).unwrap()).unwrap();
    assert_eq!(e["exit_code"], 0, "{e}");
    assert_eq!(e["oom_killed"], true, "{e}");
    // (What made this hard: the cgroup goes without a delete, as a rule before the exit;
    // systemd under emulation can take longer than the init's 2 s.)
    wait_for("systemd to remove the emptied scope's cgroup", || {
        !dir.exists()
    });
    rt.ok(&["delete", "--force", &id]);
    assert!(unit_gone(&unit));
    wait_for("the test's cgroup to empty", || {
        std::fs::remove_dir(&away).is_ok()
    });
}

#[test]
fn systemd_device_rules_in_the_unit_and_in_the_kernel_across_a_reload() {
    if !systemd_host("systemd_device_rules_in_the_unit_and_in_the_kernel_across_a_reload") {
        return;
    }
    // Deny all, then c 10:250 rw (a misc minor no driver has: opening it is allowed by the
    // device rules and then fails with ENODEV/ENXIO); c 10:251 stays denied (EPERM).
    let rt = Rsrun::new();
    let id = unique("sddev");
    let mut b = Bundle::new(&["sleep", "1000"]);
    b.edit(|c| {
        c["linux"]["cgroupsPath"] = json!(format!("rsrun-dev.slice:rsrun:{id}"));
        c["linux"]["resources"] = json!({"devices": [
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": 10, "minor": 250, "access": "rw"}
        ]});
        for set in ["bounding", "effective", "permitted"] {
            c["process"]["capabilities"][set] = json!(["CAP_MKNOD"]);
        }
    });
    sd(
        &rt,
        &["run", "-d", "--bundle", b.dir.to_str().unwrap(), &id],
    );
    let unit = format!("rsrun-{id}.scope");
    // What the kernel says when the container opens each (mknod of any is allowed).
    let probe = || {
        rt.ok(&[
            "exec",
            &id,
            "sh",
            "-c",
            "(cd /dev && mknod a c 10 250 && mknod b c 10 251; cat a; cat b; rm -f a b) 2>&1",
        ])
    };
    let check = |when: &str| {
        assert_eq!(show(&unit, "DevicePolicy"), "strict", "{when}");
        let allow = show(&unit, "DeviceAllow");
        assert!(allow.contains("/dev/char/10:250 rw"), "{when}: {allow}");
        assert!(allow.contains("/dev/char/1:3 rwm"), "{when}: {allow}");
        let out = probe();
        let line = |f: &str| {
            out.lines()
                .find(|l| l.contains(&format!("'{f}'")))
                .unwrap_or_else(|| panic!("{when}: nothing about {f}: {out}"))
                .to_string()
        };
        assert!(
            !line("a").contains("not permitted"),
            "{when}: c 10:250 denied: {out}"
        );
        assert!(
            line("b").contains("not permitted"),
            "{when}: c 10:251 allowed: {out}"
        );
    };
    check("after create");
    systemctl(&["daemon-reload"]);
    check("after daemon-reload");
    rt.ok(&["delete", "--force", &id]);
    assert!(unit_gone(&unit));
}

#[test]
fn systemd_io_limits_per_device_in_the_unit_and_in_the_kernel_across_a_reload() {
    if !systemd_host("systemd_io_limits_per_device_in_the_unit_and_in_the_kernel_across_a_reload") {
        return;
    }
    // A loop device over a file: a block device of the test's own to limit.
    let tmp = TempDir::new("sdio");
    let img = tmp.path().join("disk.img");
    std::fs::write(&img, vec![0u8; 4 << 20]).unwrap();
    let _ = Command::new("modprobe").arg("loop").status();
    let out = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&img)
        .output()
        .expect("run losetup");
    assert!(
        out.status.success(),
        "losetup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let loopdev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let name = loopdev.trim_start_matches("/dev/");
    let devno = std::fs::read_to_string(format!("/sys/block/{name}/dev")).unwrap();
    let (ma, mi) = devno.trim().split_once(':').unwrap();
    let (ma, mi): (i64, i64) = (ma.parse().unwrap(), mi.parse().unwrap());

    let rt = Rsrun::new();
    let id = unique("sdio");
    let mut b = Bundle::new(&["sleep", "1000"]);
    b.edit(|c| {
        c["linux"]["cgroupsPath"] = json!(format!("rsrun-io.slice:rsrun:{id}"));
        c["linux"]["resources"] = json!({"blockIO": {
            "throttleReadBpsDevice": [{"major": ma, "minor": mi, "rate": 1048576}],
            "throttleWriteIOPSDevice": [{"major": ma, "minor": mi, "rate": 300}]
        }});
    });
    sd(
        &rt,
        &["run", "-d", "--bundle", b.dir.to_str().unwrap(), &id],
    );
    let unit = format!("rsrun-{id}.scope");
    let dir = cg_dir("rsrun.slice/rsrun-io.slice", &unit);
    let check = |when: &str| {
        let r = show(&unit, "IOReadBandwidthMax");
        assert!(
            r.contains(&format!("/dev/block/{ma}:{mi} 1048576")),
            "{when}: {r}"
        );
        let w = show(&unit, "IOWriteIOPSMax");
        assert!(
            w.contains(&format!("/dev/block/{ma}:{mi} 300")),
            "{when}: {w}"
        );
        let io = read(&dir, "io.max");
        let line = io
            .lines()
            .find(|l| l.starts_with(&format!("{ma}:{mi} ")))
            .unwrap_or_else(|| panic!("{when}: no {ma}:{mi} in io.max: {io}"));
        assert!(line.contains("rbps=1048576"), "{when}: {line}");
        assert!(line.contains("wiops=300"), "{when}: {line}");
    };
    check("after create");
    systemctl(&["daemon-reload"]);
    check("after daemon-reload");
    rt.ok(&["delete", "--force", &id]);
    assert!(unit_gone(&unit));
    let _ = Command::new("losetup").args(["-d", &loopdev]).status();
}

/// rsrun-shim (with the systemd driver) creates container `id` of `b`; returns its exit
/// file's path.
fn shim_create(rt: &Rsrun, tmp: &TempDir, id: &str, b: &Bundle) -> PathBuf {
    let out = shim_command(rt, tmp.path(), id, b)
        .arg("--systemd-cgroup")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tmp.path().join("exit.json")
}

#[test]
fn systemd_oom_kill_of_the_init_itself_is_recorded_by_the_shim() {
    if !systemd_host("systemd_oom_kill_of_the_init_itself_is_recorded_by_the_shim") {
        return;
    }
    let _one = OOM_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    // The init is the victim: its death empties the scope at once (critest's OOMKilled spec).
    for round in 0..3 {
        let rt = Rsrun::new();
        let tmp = TempDir::new("sdoomi");
        let id = unique("sdoomi");
        let mut b = Bundle::new(&["tail", "/dev/zero"]);
        b.edit(|c| {
            c["linux"]["cgroupsPath"] = json!(format!("rsrun-oom.slice:rsrun:{id}"));
            c["linux"]["resources"] = json!({"memory": {"limit": 32 * MIB, "swap": 32 * MIB}});
        });
        let exit_file = shim_create(&rt, &tmp, &id, &b);
        rt.ok(&["start", &id]);
        wait_for("the exit record", || exit_file.exists());
        let e: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&exit_file).unwrap()).unwrap();
        assert_eq!(e["exit_code"], 137, "round {round}: {e}");
        assert_eq!(e["oom_killed"], true, "round {round}: {e}");
        rt.ok(&["delete", "--force", &id]);
    }
}

#[test]
fn systemd_oom_kill_read_only_after_the_scope_went_comes_from_the_kernel_log() {
    let test = "systemd_oom_kill_read_only_after_the_scope_went_comes_from_the_kernel_log";
    if !systemd_host(test) {
        return;
    }
    let _one = OOM_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    // The race a starved monitor loses: the init is OOM-killed, systemd removes the emptied
    // scope's cgroup, and only then does the monitor read. Here the watch reads nothing until
    // the cgroup is gone; a container SIGKILLed without any OOM is the control.
    let rt = Rsrun::new();
    let lib = rsrun::Runtime::new(rt.root.path(), false);
    for (oom, argv) in [(true, ["tail", "/dev/zero"]), (false, ["sleep", "1000"])] {
        let id = unique("sdoomk");
        let mut b = Bundle::new(&argv);
        b.edit(|c| {
            c["linux"]["cgroupsPath"] = json!(format!("rsrun-oom.slice:rsrun:{id}"));
            c["linux"]["resources"] = json!({"memory": {"limit": 32 * MIB, "swap": 32 * MIB}});
        });
        sd(&rt, &["create", "--bundle", b.dir.to_str().unwrap(), &id]);
        let dir = cg_dir("rsrun.slice/rsrun-oom.slice", &format!("rsrun-{id}.scope"));
        assert!(dir.join("memory.events").exists(), "{}", dir.display());
        let watch = lib.oom_watch(&id).expect("the OOM watch");
        sd(&rt, &["start", &id]);
        if !oom {
            sd(&rt, &["kill", &id, "KILL"]);
        }
        wait_for("the scope's cgroup to go", || !dir.exists());
        assert_eq!(watch.killed(true), oom, "{argv:?}: the kernel log");
        assert!(!watch.killed(false), "{argv:?}: not killed by SIGKILL");
        sd(&rt, &["delete", "--force", &id]);
    }
}

/// The super options of the node's cgroup2 mount at /sys/fs/cgroup.
fn cgroup2_options() -> String {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .find(|l| l.split(' ').nth(4) == Some("/sys/fs/cgroup"))
        .and_then(|l| l.split_once(" - "))
        .map(|(_, post)| post.split(' ').nth(2).unwrap_or("").to_string())
        .unwrap_or_default()
}

#[test]
fn systemd_a_container_in_the_nodes_cgroup_namespace_keeps_its_cgroup2_options() {
    if !systemd_host("systemd_a_container_in_the_nodes_cgroup_namespace_keeps_its_cgroup2_options")
    {
        return;
    }
    // systemd mounts cgroup2 with nsdelegate (and memory_recursiveprot where the kernel has it).
    let before = cgroup2_options();
    assert!(before.contains("nsdelegate"), "{before}");
    // A container without a cgroup namespace of its own (a privileged pod's) mounts cgroup2
    // from the node's: the kernel applies that mount's options to the one cgroup2 root.
    let rt = Rsrun::new();
    let id = unique("cg2");
    let mut b = Bundle::new(&["sh", "-c", "grep -c ' - cgroup2 ' /proc/self/mountinfo"]);
    b.edit(|c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|n| n["type"] != "cgroup");
        c["linux"]["cgroupsPath"] = json!(format!("rsrun-cg2.slice:rsrun:{id}"));
    });
    let o = rt.run(&[
        "--systemd-cgroup",
        "run",
        "--bundle",
        b.dir.to_str().unwrap(),
        &id,
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out.trim() != "0",
        "the container has no cgroup2 mount: {out}"
    );
    assert_eq!(
        cgroup2_options(),
        before,
        "the node's cgroup2 options changed"
    );
}
