//! Resource limits and live operations on this host's cgroup v1 controllers (the hybrid
//! layout). The cgroup v2 counterparts run in a VM: tests/tests/cgroups_v2.rs.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rsrun_tests::*;
use serde_json::{json, Value};

/// The container's directory in the v1 hierarchy of `controller` (cgroupsPath relative to
/// this process's own cgroup there, the default).
fn cg(controller: &str, id: &str) -> PathBuf {
    let s = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    for l in s.lines() {
        let f: Vec<&str> = l.splitn(3, ':').collect();
        if f.len() == 3 && f[1].split(',').any(|c| c == controller) {
            return PathBuf::from("/sys/fs/cgroup")
                .join(f[1])
                .join(f[2].trim_start_matches('/'))
                .join(id);
        }
    }
    panic!("no cgroup v1 {controller} controller on this host");
}

fn read(controller: &str, id: &str, file: &str) -> String {
    let p = cg(controller, id).join(file);
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
        .trim()
        .to_string()
}

fn keyed(controller: &str, id: &str, file: &str, key: &str) -> u64 {
    read(controller, id, file)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{file} has no {key}"))
}

fn detached(rt: &Rsrun, b: &Bundle) -> String {
    let id = unique("cg");
    rt.ok(&["run", "-d", "--bundle", b.dir.to_str().unwrap(), &id]);
    id
}

fn lib(rt: &Rsrun) -> rsrun::Runtime {
    rsrun::Runtime::new(rt.root.path(), false)
}

const MIB: i64 = 1 << 20;

#[test]
fn memory_limit_oom_kill_is_recorded() {
    let rt = Rsrun::new();
    let mut b = Bundle::new(&["tail", "/dev/zero"]);
    b.edit(|c| {
        c["linux"]["resources"] = json!({"memory": {"limit": 32 * MIB, "swap": 32 * MIB}});
    });
    let id = unique("oom");
    let o = rt.run(&["run", "--keep", "--bundle", b.dir.to_str().unwrap(), &id]);
    assert_eq!(
        o.status.code(),
        Some(137),
        "tail /dev/zero under a 32 MiB limit: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        read("memory", &id, "memory.limit_in_bytes"),
        (32 * MIB).to_string()
    );
    assert!(keyed("memory", &id, "memory.oom_control", "oom_kill") >= 1);
    assert!(lib(&rt).oom_killed(&id).unwrap());
    rt.ok(&["delete", &id]);
    assert!(!cg("memory", &id).exists());

    // Without a limit the same library call says no.
    let b2 = Bundle::new(&["true"]);
    let id2 = unique("nooom");
    let o = rt.run(&["run", "--keep", "--bundle", b2.dir.to_str().unwrap(), &id2]);
    assert!(o.status.success());
    assert!(!lib(&rt).oom_killed(&id2).unwrap());
    rt.ok(&["delete", &id2]);
}

#[test]
fn events_reports_oom() {
    let rt = Rsrun::new();
    // The memory hog starts once `events` has reported (its OOM count is taken when it
    // starts: an OOM before that is no event of its).
    let mut b = Bundle::new(&[
        "sh",
        "-c",
        "while [ ! -e /go ]; do sleep 0.05; done; tail /dev/zero; sleep 100",
    ]);
    b.edit(|c| {
        c["linux"]["resources"] = json!({"memory": {"limit": 32 * MIB, "swap": 32 * MIB}});
    });
    let id = detached(&rt, &b);
    let mut ev = rt
        .cmd()
        .args(["events", "--interval", "300ms", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = ev.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(|l| l.ok()) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut kinds = Vec::new();
    while Instant::now() < deadline {
        let Ok(l) = rx.recv_timeout(Duration::from_secs(1)) else {
            continue;
        };
        let v: Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["id"], id.as_str());
        kinds.push(v["type"].as_str().unwrap().to_string());
        if v["type"] == "oom" {
            break;
        }
        if v["type"] == "stats" {
            std::fs::write(b.rootfs().join("go"), b"").unwrap();
        }
    }
    let _ = ev.kill();
    let _ = ev.wait();
    assert!(kinds.iter().any(|k| k == "stats"), "{kinds:?}");
    assert!(kinds.iter().any(|k| k == "oom"), "no oom event: {kinds:?}");
    // The container itself survives: only tail was killed.
    assert_eq!(rt.status(&id), "running");
    rt.ok(&["delete", "-f", &id]);
}

#[test]
fn pids_limit_caps_forks() {
    let rt = Rsrun::new();
    // A bounded fork bomb: busybox sh gives up at the first refused fork.
    let mut b = Bundle::new(&[
        "sh",
        "-c",
        "for i in $(seq 40); do sleep 100 & echo started $i; done",
    ]);
    b.edit(|c| c["linux"]["resources"] = json!({"pids": {"limit": 10}}));
    let id = unique("pids");
    let o = rt.run(&["run", "--keep", "--bundle", b.dir.to_str().unwrap(), &id]);
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "all 40 forks succeeded: {out}");
    assert!(err.contains("fork"), "{err}");
    let started = out.lines().filter(|l| l.starts_with("started")).count();
    assert!((1..10).contains(&started), "{started} started: {out}");
    assert_eq!(read("pids", &id, "pids.max"), "10");
    assert!(
        keyed("pids", &id, "pids.events", "max") > 0,
        "no fork was refused"
    );
    rt.ok(&["delete", &id]);
}

#[test]
fn cpu_and_cpuset_values() {
    let rt = Rsrun::new();
    let mut b = Bundle::new(&["sleep", "100"]);
    b.edit(|c| {
        c["linux"]["resources"] = json!({"cpu": {
            "shares": 512, "quota": 50000, "period": 200000, "burst": 10000,
            "realtimePeriod": 1000000, "realtimeRuntime": 1000,
            "cpus": "0", "mems": "0"
        }});
    });
    let id = detached(&rt, &b);
    assert_eq!(read("cpu", &id, "cpu.shares"), "512");
    assert_eq!(read("cpu", &id, "cpu.cfs_quota_us"), "50000");
    assert_eq!(read("cpu", &id, "cpu.cfs_period_us"), "200000");
    assert_eq!(read("cpu", &id, "cpu.cfs_burst_us"), "10000");
    assert_eq!(read("cpu", &id, "cpu.rt_period_us"), "1000000");
    assert_eq!(read("cpu", &id, "cpu.rt_runtime_us"), "1000");
    assert_eq!(read("cpuset", &id, "cpuset.cpus"), "0");
    assert_eq!(read("cpuset", &id, "cpuset.mems"), "0");
    let pid = rt.state(&id)["pid"].as_i64().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status.contains("Cpus_allowed_list:\t0\n"),
        "{}",
        status
            .lines()
            .find(|l| l.starts_with("Cpus_allowed_list"))
            .unwrap_or("")
    );
    rt.ok(&["delete", "-f", &id]);
}

#[test]
fn device_rules_deny_kmsg_allow_null() {
    let rt = Rsrun::new();
    // Opened for writing: that needs no CAP_SYSLOG, so only the device rules decide.
    let script = "true 3>/dev/kmsg && echo kmsg-opened; echo hi > /dev/null && echo null-ok";
    let mut b = Bundle::new(&["sh", "-c", script]);
    b.edit(|c| {
        c["linux"]["devices"] =
            json!([{"path": "/dev/kmsg", "type": "c", "major": 1, "minor": 11, "fileMode": 0o600}]);
        // Control: a rule that allows every device.
        c["linux"]["resources"] = json!({"devices": [{"allow": true, "access": "rwm"}]});
    });
    // Control: with every device allowed the node opens.
    let out = rt.output(&b);
    assert!(
        out.contains("kmsg-opened") && out.contains("null-ok"),
        "{out}"
    );
    b.edit(|c| c["linux"]["resources"] = json!({"devices": [{"allow": false, "access": "rwm"}]}));
    let id = unique("dev");
    let (code, out, err) = rt.run_bundle(&id, &b);
    assert_eq!(code, 0, "{out} {err}");
    assert!(!out.contains("kmsg-opened"), "{out}");
    assert!(err.contains("Operation not permitted"), "{err}");
    assert!(out.contains("null-ok"), "{out}");
}

/// A config without device rules gets the defaults alone, over deny-all, as runc applies
/// them: with CAP_MKNOD a container may make any node, but not open a host disk through it
/// (a loop device here: the host itself may read it); the standard devices and /dev/net/tun
/// (runc's list) open.
#[test]
fn no_device_rules_deny_all_but_the_defaults() {
    let rt = Rsrun::new();
    let tmp = TempDir::new("nodev");
    let disk = LoopDevice::new(&tmp, "disk.img");
    assert!(
        std::fs::File::open(&disk.path).is_ok(),
        "the host cannot read {}",
        disk.path
    );
    let script = format!(
        "mknod /dev/xdisk b {} {} && echo made; head -c 1 /dev/xdisk >/dev/null && echo disk-read; \\
         echo hi > /dev/null && echo null-ok; mknod /dev/xtun c 10 200; \\
         if (true 3<>/dev/xtun) 2>/dev/null; then echo tun-opened; fi",
        disk.major, disk.minor
    );
    let mut b = Bundle::new(&["sh", "-c", &script]);
    b.edit(|c| {
        if let Some(r) = c["linux"]["resources"].as_object_mut() {
            r.remove("devices");
        }
        for set in ["bounding", "effective", "permitted"] {
            c["process"]["capabilities"][set] = json!(["CAP_MKNOD"]);
        }
    });
    let id = unique("nodev");
    let (code, out, err) = rt.run_bundle(&id, &b);
    assert_eq!(code, 0, "{out} {err}");
    assert!(
        out.contains("made"),
        "mknod of any node is allowed: {out} {err}"
    );
    assert!(
        !out.contains("disk-read"),
        "the host's disk {} was read through a node the container made: {out}",
        disk.path
    );
    assert!(err.contains("Operation not permitted"), "{err}");
    assert!(out.contains("null-ok"), "{out}");
    // (Where the host itself can open it: the tun driver is there.)
    let host_tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .is_ok();
    assert!(!host_tun || out.contains("tun-opened"), "{out}");
}

/// A burst lowered with its quota: the kernel refuses a quota below the burst in place, so
/// the burst goes first (as runc writes it); a burst raised with its quota goes after it.
#[test]
fn update_lowers_and_raises_quota_and_burst_together() {
    let rt = Rsrun::new();
    let mut b = Bundle::new(&["sleep", "100"]);
    b.edit(|c| {
        c["linux"]["resources"]["cpu"] = json!({"quota": 50000, "period": 100000, "burst": 40000});
    });
    let id = detached(&rt, &b);
    assert_eq!(read("cpu", &id, "cpu.cfs_burst_us"), "40000");
    let f = b.tmp.path().join("burst.json");
    // The flags too (runc's --cpu-burst).
    rt.ok(&["update", "--cpu-burst", "30000", &id]);
    assert_eq!(read("cpu", &id, "cpu.cfs_burst_us"), "30000");
    for (quota, burst) in [(20000, 10000), (60000, 50000)] {
        std::fs::write(
            &f,
            json!({"cpu": {"quota": quota, "burst": burst}}).to_string(),
        )
        .unwrap();
        rt.ok(&["update", "-r", f.to_str().unwrap(), &id]);
        assert_eq!(read("cpu", &id, "cpu.cfs_quota_us"), quota.to_string());
        assert_eq!(read("cpu", &id, "cpu.cfs_burst_us"), burst.to_string());
    }
    rt.ok(&["delete", "--force", &id]);
}

#[test]
fn update_changes_limits_live() {
    let rt = Rsrun::new();
    let b = Bundle::new(&["sleep", "100"]);
    let id = detached(&rt, &b);
    rt.ok(&[
        "update",
        "--memory",
        "64m",
        "--memory-swap",
        "128m",
        "--memory-reservation",
        "32m",
        "--cpu-shares",
        "256",
        "--cpu-quota",
        "20000",
        "--cpu-period",
        "100000",
        "--cpuset-cpus",
        "0",
        "--pids-limit",
        "20",
        &id,
    ]);
    assert_eq!(
        read("memory", &id, "memory.limit_in_bytes"),
        (64 * MIB).to_string()
    );
    assert_eq!(
        read("memory", &id, "memory.memsw.limit_in_bytes"),
        (128 * MIB).to_string()
    );
    assert_eq!(
        read("memory", &id, "memory.soft_limit_in_bytes"),
        (32 * MIB).to_string()
    );
    assert_eq!(read("cpu", &id, "cpu.shares"), "256");
    assert_eq!(read("cpu", &id, "cpu.cfs_quota_us"), "20000");
    assert_eq!(read("cpuset", &id, "cpuset.cpus"), "0");
    assert_eq!(read("pids", &id, "pids.max"), "20");
    // Lowering memory below swap: memory first, then memsw.
    rt.ok(&["update", "--memory", "48m", "--memory-swap", "48m", &id]);
    assert_eq!(
        read("memory", &id, "memory.memsw.limit_in_bytes"),
        (48 * MIB).to_string()
    );
    // -r FILE and -r - (stdin).
    let f = b.tmp.path().join("res.json");
    std::fs::write(
        &f,
        r#"{"memory": {"limit": 41943040}, "pids": {"limit": 30}}"#,
    )
    .unwrap();
    rt.ok(&["update", "-r", f.to_str().unwrap(), &id]);
    assert_eq!(read("memory", &id, "memory.limit_in_bytes"), "41943040");
    assert_eq!(read("pids", &id, "pids.max"), "30");
    let mut c = rt
        .cmd()
        .args(["update", "-r", "-", &id])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    c.stdin
        .take()
        .unwrap()
        .write_all(br#"{"pids": {"limit": 40}}"#)
        .unwrap();
    assert!(c.wait().unwrap().success());
    assert_eq!(read("pids", &id, "pids.max"), "40");
    rt.ok(&["update", "--pids-limit", "-1", &id]);
    assert_eq!(read("pids", &id, "pids.max"), "max");
    rt.ok(&["delete", "-f", &id]);
    let e = rt.fails(&["update", "--pids-limit", "5", &id]);
    assert!(e.contains("does not exist"), "{e}");
}

#[test]
fn failed_update_keeps_previous_limits() {
    let rt = Rsrun::new();
    let b = Bundle::new(&["sleep", "100"]);
    let id = detached(&rt, &b);
    rt.ok(&[
        "update",
        "--memory",
        "64m",
        "--cpu-shares",
        "256",
        "--pids-limit",
        "20",
        &id,
    ]);
    // memory and cpu.shares are written before cpuset.cpus fails in the kernel: both must
    // come back.
    let f = b.tmp.path().join("bad.json");
    std::fs::write(
        &f,
        r#"{"memory": {"limit": 100000000}, "cpu": {"shares": 300, "cpus": "4095"}}"#,
    )
    .unwrap();
    let e = rt.fails(&["update", "-r", f.to_str().unwrap(), &id]);
    assert!(e.contains("linux.resources.cpu.cpus"), "{e}");
    assert_eq!(
        read("memory", &id, "memory.limit_in_bytes"),
        (64 * MIB).to_string()
    );
    assert_eq!(read("cpu", &id, "cpu.shares"), "256");
    // Out-of-range values are refused before anything is written.
    let e = rt.fails(&["update", "--pids-limit", "9", "--cpu-quota", "500", &id]);
    assert!(e.contains("linux.resources.cpu.quota"), "{e}");
    assert_eq!(read("pids", &id, "pids.max"), "20");
    let e = rt.fails(&["update", "--memory", "4096", &id]);
    assert!(
        e.contains("linux.resources.memory.limit") && e.contains("usage"),
        "{e}"
    );
    assert_eq!(
        read("memory", &id, "memory.limit_in_bytes"),
        (64 * MIB).to_string()
    );
    let e = rt.fails(&["update", "--memory", "lots", &id]);
    assert!(e.contains("--memory"), "{e}");
    std::fs::write(&f, r#"{"unified": {"memory.high": "1000000"}}"#).unwrap();
    let e = rt.fails(&["update", "-r", f.to_str().unwrap(), &id]);
    assert!(e.contains("linux.resources.unified"), "{e}");
    rt.ok(&["delete", "-f", &id]);
}

#[test]
fn bad_resources_at_create() {
    let rt = Rsrun::new();
    let cases = [
        (json!({"cpu": {"quota": 500}}), "linux.resources.cpu.quota"),
        (json!({"cpu": {"shares": 1}}), "linux.resources.cpu.shares"),
        (
            json!({"devices": [{"allow": true, "type": "p", "access": "rw"}]}),
            "linux.resources.devices[0].type",
        ),
        (
            json!({"devices": [{"allow": true, "type": "c", "access": "rwx"}]}),
            "linux.resources.devices[0].access",
        ),
        (
            json!({"unified": {"memory.high": "1"}}),
            "linux.resources.unified",
        ),
        (
            json!({"memory": {"limit": 1000000, "swap": 500000}}),
            "linux.resources.memory.swap",
        ),
        (
            json!({"hugepageLimits": [{"pageSize": "3MB", "limit": 0}]}),
            "linux.resources.hugepageLimits[0].pageSize",
        ),
        (
            json!({"network": {"classID": 1}}),
            "linux.resources.network.classID",
        ),
        (
            json!({"rdma": {"mlx5_0": {"hcaHandles": 1}}}),
            "linux.resources.rdma",
        ),
    ];
    for (res, field) in cases {
        let mut b = Bundle::new(&["true"]);
        b.edit(|c| c["linux"]["resources"] = res.clone());
        let id = unique("bad");
        let e = rt.fails(&["run", "--bundle", b.dir.to_str().unwrap(), &id]);
        assert!(e.contains(field), "{res}: {e}");
        assert!(!cg("memory", &id).exists(), "cgroup left after {res}");
    }
    assert_eq!(rt.count(), 0);
}

#[test]
fn pause_resume() {
    let rt = Rsrun::new();
    let mut b = Bundle::new(&[
        "sh",
        "-c",
        "while true; do echo x >> /tmp/ticks; sleep 0.05; done",
    ]);
    b.edit(|c| c["root"]["readonly"] = json!(false));
    let id = detached(&rt, &b);
    let ticks = b.rootfs().join("tmp/ticks");
    let size = || std::fs::metadata(&ticks).map(|m| m.len()).unwrap_or(0);
    let grows = |from: u64| {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if size() > from {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    };
    assert!(grows(0));
    let e = rt.fails(&["resume", &id]);
    assert!(e.contains("running"), "{e}");
    rt.ok(&["pause", &id]);
    assert_eq!(rt.status(&id), "paused");
    assert_eq!(read("freezer", &id, "freezer.state"), "FROZEN");
    let list: Value = serde_json::from_str(&rt.ok(&["list", "-f", "json"])).unwrap();
    assert_eq!(list[0]["status"], "paused");
    let frozen_at = size();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(size(), frozen_at, "a paused container kept running");
    let e = rt.fails(&["pause", &id]);
    assert!(e.contains("paused"), "{e}");
    rt.ok(&["resume", &id]);
    assert_eq!(rt.status(&id), "running");
    assert_eq!(read("freezer", &id, "freezer.state"), "THAWED");
    assert!(grows(frozen_at));
    // A paused container can be force-deleted.
    rt.ok(&["pause", &id]);
    rt.ok(&["delete", "-f", &id]);
    assert!(!cg("freezer", &id).exists());
    assert_eq!(rt.count(), 0);
    // SIGKILL ends a paused container: a frozen process dies only once thawed (v1), and
    // `kill` thaws after it, as runc (`ctr task kill -s KILL` of a paused task).
    let id = detached(&rt, &b);
    rt.ok(&["pause", &id]);
    rt.ok(&["kill", &id, "KILL"]);
    rt.wait_status(&id, "stopped");
    rt.ok(&["delete", &id]);
    let id = detached(&rt, &b);
    rt.ok(&["pause", &id]);
    rt.ok(&["kill", "--all", &id, "KILL"]);
    rt.wait_status(&id, "stopped");
    rt.ok(&["delete", &id]);
    assert_eq!(rt.count(), 0);
    // A created container can be paused too, as runc allows: "paused" (the kernel's freezer
    // says FROZEN) and no start until resumed, then "created" again, and it starts.
    let id = unique("cg");
    rt.ok(&["create", "--bundle", b.dir.to_str().unwrap(), &id]);
    rt.ok(&["pause", &id]);
    assert_eq!(rt.status(&id), "paused");
    assert_eq!(read("freezer", &id, "freezer.state"), "FROZEN");
    let e = rt.fails(&["start", &id]);
    assert!(e.contains("paused"), "{e}");
    rt.ok(&["resume", &id]);
    assert_eq!(rt.status(&id), "created");
    assert_eq!(read("freezer", &id, "freezer.state"), "THAWED");
    let at = size();
    rt.ok(&["start", &id]);
    assert!(
        grows(at),
        "the resumed created container did not run once started"
    );
    rt.ok(&["delete", "-f", &id]);
    assert_eq!(rt.count(), 0);
}

/// `kill --all` of a container whose processes keep forking (children in a loop, the init
/// already gone: no PID namespace ends them): nothing forked during the kill is left (the
/// cgroup frozen while signalled, as runc), read in the cgroup (the kernel's).
#[test]
fn kill_all_leaves_no_child_forked_meanwhile() {
    let rt = Rsrun::new();
    for sig in ["KILL", "TERM"] {
        // A chain of subshells, each starting a short sleep and the next link, then ending:
        // the newest process is always the one forking.
        let mut b = Bundle::new(&[
            "sh",
            "-c",
            "(g() { sleep 2 & ( g ) & exit 0; }; g) & sleep 100",
        ]);
        b.edit(|c| {
            c["linux"]["resources"]["pids"] = json!({"limit": 4000});
            c["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .retain(|n| n["type"] != "pid");
        });
        let id = detached(&rt, &b);
        let procs = || {
            std::fs::read_to_string(cg("pids", &id).join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .count()
        };
        assert!(
            wait_until(Duration::from_secs(10), || procs() > 20),
            "{sig}: no forks"
        );
        rt.ok(&["kill", "--all", &id, sig]);
        assert!(
            wait_until(Duration::from_secs(5), || procs() == 0),
            "{sig}: {} processes left after kill --all",
            procs()
        );
        rt.ok(&["delete", "--force", &id]);
    }
}

#[test]
fn ps_lists_the_containers_processes() {
    let rt = Rsrun::new();
    let b = Bundle::new(&["sh", "-c", "sleep 101 & sleep 102 & wait"]);
    let id = detached(&rt, &b);
    let init = rt.state(&id)["pid"].as_i64().unwrap();
    let t = Instant::now();
    let mut pids: Vec<i64> = Vec::new();
    while t.elapsed() < Duration::from_secs(10) {
        pids = serde_json::from_str(&rt.ok(&["ps", "-f", "json", &id])).unwrap();
        if pids.len() == 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(pids.len(), 3, "{pids:?}");
    assert!(pids.contains(&init));
    let table = rt.ok(&["ps", &id]);
    let mut lines = table.lines();
    assert!(lines.next().unwrap().contains("PID"), "{table}");
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 3, "{table}");
    assert!(rows.iter().any(|l| l.contains("sleep 101")), "{table}");
    let custom = rt.ok(&["ps", &id, "--", "-o", "pid,args"]);
    assert!(
        custom.lines().next().unwrap().trim().starts_with("PID"),
        "{custom}"
    );
    assert_eq!(custom.lines().count(), 4, "{custom}");
    let e = rt.fails(&["ps", "-f", "json", &id, "-o", "pid"]);
    assert!(e.contains("json"), "{e}");
    rt.ok(&["delete", "-f", &id]);
}

#[test]
fn events_stats_once() {
    let rt = Rsrun::new();
    let mut b = Bundle::new(&["sh", "-c", "sleep 100 & sleep 100"]);
    b.edit(|c| {
        c["linux"]["resources"] =
            json!({"memory": {"limit": 64 * MIB}, "pids": {"limit": 50}, "cpu": {"quota": 50000, "period": 100000}});
    });
    let id = detached(&rt, &b);
    // Once the shell has forked its second process (a minute at most).
    let mut out = String::new();
    wait_until(Duration::from_secs(60), || {
        out = rt.ok(&["events", "--stats", &id]);
        serde_json::from_str::<Value>(&out)
            .is_ok_and(|v| v["data"]["pids"]["current"].as_u64() >= Some(2))
    });
    assert_eq!(out.lines().count(), 1, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["type"], "stats");
    assert_eq!(v["id"], id.as_str());
    let d = &v["data"];
    assert!(d["cpu"]["usage"]["total"].as_u64().unwrap() > 0, "{d}");
    assert!(d["cpu"]["usage"]["percpu"].is_array());
    assert!(d["cpu"]["throttling"]["periods"].is_u64());
    assert_eq!(d["memory"]["usage"]["limit"], 64 * MIB);
    assert!(d["memory"]["usage"]["usage"].as_u64().unwrap() > 0);
    assert!(d["memory"]["raw"]["rss"].is_u64(), "{}", d["memory"]);
    assert_eq!(d["pids"]["limit"], 50);
    assert!(d["pids"]["current"].as_u64().unwrap() >= 2);
    assert!(d["blkio"]["ioServiceBytesRecursive"].is_array());
    assert!(d["hugetlb"].is_object());
    rt.ok(&["kill", &id, "KILL"]);
    rt.wait_status(&id, "stopped");
    let e = rt.fails(&["events", "--stats", &id]);
    assert!(e.contains("stopped"), "{e}");
    rt.ok(&["delete", &id]);
}

#[test]
fn delete_kills_leftover_processes() {
    let rt = Rsrun::new();
    // No pid namespace: killing the init leaves its child behind in the cgroup.
    let mut b = Bundle::new(&[
        "sh",
        "-c",
        "(trap '' TERM HUP; exec sleep 1000) & exec sleep 999",
    ]);
    b.edit(|c| {
        let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
        ns.retain(|n| n["type"] != "pid");
    });
    let id = detached(&rt, &b);
    let t = Instant::now();
    let mut pids: Vec<i64> = Vec::new();
    while t.elapsed() < Duration::from_secs(10) {
        pids = serde_json::from_str(&rt.ok(&["ps", "-f", "json", &id])).unwrap();
        if pids.len() == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(pids.len(), 2, "{pids:?}");
    let init = rt.state(&id)["pid"].as_i64().unwrap();
    let leftover = *pids.iter().find(|&&p| p != init).unwrap();
    rt.ok(&["kill", &id, "KILL"]);
    rt.wait_status(&id, "stopped");
    assert!(std::path::Path::new(&format!("/proc/{leftover}")).exists());
    rt.ok(&["delete", &id]);
    let gone = |p: i64| {
        std::fs::read_to_string(format!("/proc/{p}/stat"))
            .map(|s| {
                s.rsplit_once(')')
                    .map(|(_, r)| r.trim_start().starts_with('Z'))
                    .unwrap_or(true)
            })
            .unwrap_or(true)
    };
    assert!(
        gone(leftover),
        "leftover process {leftover} survived delete"
    );
    for c in ["memory", "pids", "freezer", "cpu"] {
        assert!(!cg(c, &id).exists(), "{c} cgroup left");
    }
}

#[test]
fn memory_swappiness_kernel_tcp_and_disabled_oom_killer() {
    let rt = Rsrun::new();
    // Over its limit with the OOM killer disabled, the process is not killed: it waits in
    // the cgroup's OOM state (under_oom 1), which is what disableOOMKiller is for. (The
    // memory is touched from user space, awk doubling a string: a charge that fails inside a
    // syscall, as tail's read(2) of /dev/zero, returns an error instead of waiting.)
    let mut b = Bundle::new(&["awk", "BEGIN { s = \"a\"; while (1) s = s s }"]);
    b.edit(|c| {
        c["linux"]["resources"] = json!({"memory": {
            "limit": 32 * MIB, "swap": 32 * MIB, "swappiness": 30,
            "kernelTCP": 16 * MIB, "disableOOMKiller": true
        }});
    });
    let id = detached(&rt, &b);
    assert_eq!(read("memory", &id, "memory.swappiness"), "30");
    assert_eq!(
        read("memory", &id, "memory.kmem.tcp.limit_in_bytes"),
        (16 * MIB).to_string()
    );
    assert_eq!(
        keyed("memory", &id, "memory.oom_control", "oom_kill_disable"),
        1
    );
    let t = Instant::now();
    while keyed("memory", &id, "memory.oom_control", "under_oom") != 1 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "never reached its limit: {}",
            read("memory", &id, "memory.oom_control")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Held at the limit, not killed.
    assert_eq!(keyed("memory", &id, "memory.oom_control", "oom_kill"), 0);
    assert_eq!(rt.status(&id), "running");
    assert!(!lib(&rt).oom_killed(&id).unwrap());
    rt.ok(&["delete", "-f", &id]);
    assert!(!cg("memory", &id).exists());
}

#[test]
fn cpu_idle() {
    let rt = Rsrun::new();
    let mut b = Bundle::new(&["sleep", "100"]);
    b.edit(|c| c["linux"]["resources"] = json!({"cpu": {"idle": 1}}));
    let id = detached(&rt, &b);
    assert_eq!(read("cpu", &id, "cpu.idle"), "1");
    rt.ok(&["delete", "-f", &id]);
    let mut b = Bundle::new(&["sleep", "100"]);
    b.edit(|c| c["linux"]["resources"] = json!({"cpu": {"idle": 0}}));
    let id = detached(&rt, &b);
    assert_eq!(read("cpu", &id, "cpu.idle"), "0");
    rt.ok(&["delete", "-f", &id]);
}

#[test]
fn blkio_weight_and_throttles() {
    let tmp = TempDir::new("loop");
    let dev = LoopDevice::new(&tmp, "disk.img");
    let (major, minor) = (dev.major, dev.minor);
    // BFQ on the device, for the per-device weight (blkio.bfq.weight_device only takes
    // devices that BFQ schedules).
    let sched = std::path::Path::new("/sys/dev/block")
        .join(format!("{major}:{minor}"))
        .join("queue/scheduler");
    let scheds = std::fs::read_to_string(&sched).unwrap_or_default();
    let bfq = scheds
        .split_whitespace()
        .any(|s| s.trim_matches(['[', ']']) == "bfq");
    if bfq {
        std::fs::write(&sched, "bfq").unwrap();
    }
    let rt = Rsrun::new();
    let disk = json!([{"path": "/dev/disk", "type": "b", "major": major, "minor": minor}]);
    let dm = |rate: i64| json!([{"major": major, "minor": minor, "rate": rate}]);
    let weights =
        json!({"weight": 300, "weightDevice": [{"major": major, "minor": minor, "weight": 400}]});
    if !bfq {
        // A kernel without BFQ (or CFQ) has no weight files in blkio: a weight is refused
        // with the field named, as runc refuses it, rather than dropped.
        println!(
            "blkio_weight_and_throttles: no BFQ on this kernel ({}): weights are refused",
            scheds.trim()
        );
        let mut b = Bundle::new(&["sleep", "100"]);
        b.edit(|c| c["linux"]["resources"] = json!({"blockIO": weights.clone()}));
        let o = rt.run(&[
            "run",
            "-d",
            "--bundle",
            b.dir.to_str().unwrap(),
            &unique("iow"),
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains("blockIO.weight"),
            "{err}"
        );
    }
    // Every field at once, read back from the kernel. blkio.weight is CFQ's, gone from this
    // kernel: BFQ's blkio.bfq.weight and blkio.bfq.weight_device take the weights.
    let mut b = Bundle::new(&["sleep", "100"]);
    b.edit(|c| {
        c["linux"]["devices"] = disk.clone();
        let mut io = json!({
            "throttleReadBpsDevice": dm(1048576),
            "throttleWriteBpsDevice": dm(2097152),
            "throttleReadIOPSDevice": dm(1000),
            "throttleWriteIOPSDevice": dm(2000),
        });
        if bfq {
            io["weight"] = weights["weight"].clone();
            io["weightDevice"] = weights["weightDevice"].clone();
        }
        c["linux"]["resources"] = json!({ "blockIO": io });
    });
    let id = detached(&rt, &b);
    if bfq {
        let weight = if cg("blkio", &id).join("blkio.weight").exists() {
            "blkio.weight"
        } else {
            "blkio.bfq.weight"
        };
        assert_eq!(read("blkio", &id, weight), "300");
        let wd = read("blkio", &id, &format!("{weight}_device"));
        assert!(
            wd.lines().any(|l| l == format!("{major}:{minor} 400")),
            "{weight}_device: {wd:?}"
        );
    }
    for (file, v) in [
        ("blkio.throttle.read_bps_device", 1048576),
        ("blkio.throttle.write_bps_device", 2097152),
        ("blkio.throttle.read_iops_device", 1000),
        ("blkio.throttle.write_iops_device", 2000),
    ] {
        assert_eq!(
            read("blkio", &id, file),
            format!("{major}:{minor} {v}"),
            "{file}"
        );
    }
    rt.ok(&["delete", "-f", &id]);
    // The throttles throttle: 2 MiB read, then 2 MiB written, each at 1 MiB/s, direct I/O
    // (a page-cache-backed loop device does either in milliseconds unthrottled). Only a
    // lower bound on the time: a slow machine cannot make it fail, a missing limit does.
    for (dd, key) in [
        (
            "if=/dev/disk of=/dev/null iflag=direct",
            "throttleReadBpsDevice",
        ),
        (
            "if=/dev/zero of=/dev/disk oflag=direct",
            "throttleWriteBpsDevice",
        ),
    ] {
        let mut b = Bundle::new(&["sh", "-c", &format!("dd {dd} bs=64k count=32")]);
        b.edit(|c| {
            c["linux"]["devices"] = disk.clone();
            c["linux"]["resources"] = json!({"blockIO": {key: dm(1048576)},
                "devices": [{"allow": true, "type": "b", "major": major, "minor": minor, "access": "rw"}]});
        });
        let id = unique("io");
        let t = Instant::now();
        let o = rt.run(&["run", "--bundle", b.dir.to_str().unwrap(), &id]);
        let el = t.elapsed();
        assert!(
            o.status.success(),
            "{key}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            el >= Duration::from_millis(1200),
            "{key}: 2 MiB in {el:?} under a 1 MiB/s limit"
        );
    }
}
