//! Resource limits and live operations on a pure cgroup v2 host. This project's hosts are
//! hybrid (cgroup v1), so these run inside a VM booted with cgroup_no_v1=all:
//! integration/stages/40-cgroup-v2-vm.sh builds this test binary and runs it there. On any
//! other host each test prints that it is skipped and returns.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rsrun_tests::*;
use serde_json::{json, Value};

/// Pure cgroup v2: the unified hierarchy at /sys/fs/cgroup and no v1 hierarchy mounted.
fn pure_v2(test: &str) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let v1 = info.lines().any(|l| {
        l.split_once(" - ")
            .is_some_and(|(_, r)| r.starts_with("cgroup "))
    });
    let ok = Path::new("/sys/fs/cgroup/cgroup.controllers").exists() && !v1;
    if !ok && std::env::var_os("RSRUN_REQUIRE_CGROUP_V2").is_some() {
        panic!("{test}: RSRUN_REQUIRE_CGROUP_V2 is set but this is not a pure cgroup v2 host");
    }
    if !ok {
        println!("skipping {test}: not a pure cgroup v2 host (run integration/stages/40-cgroup-v2-vm.sh)");
    }
    ok
}

/// The container's cgroup (cgroupsPath relative to this process's own cgroup, the default).
fn cg(id: &str) -> PathBuf {
    let s = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let own = s
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("no cgroup v2 entry in /proc/self/cgroup");
    PathBuf::from("/sys/fs/cgroup")
        .join(own.trim_start_matches('/'))
        .join(id)
}

fn read(id: &str, file: &str) -> String {
    let p = cg(id).join(file);
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
        .trim()
        .to_string()
}

fn keyed(id: &str, file: &str, key: &str) -> u64 {
    read(id, file)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{file} has no {key}"))
}

fn detached(rt: &Rsrun, b: &Bundle) -> String {
    let id = unique("v2");
    rt.ok(&["run", "-d", "--bundle", b.dir.to_str().unwrap(), &id]);
    id
}

fn wait_for(what: &str, f: impl FnMut() -> bool) {
    assert!(
        wait_until(Duration::from_secs(30), f),
        "timed out waiting for {what}"
    );
}

const MIB: i64 = 1 << 20;

#[test]
fn v2_memory_max_oom_kill_recorded() {
    if !pure_v2("v2_memory_max_oom_kill_recorded") {
        return;
    }
    let rt = Rsrun::new();
    let mut b = Bundle::new(&["tail", "/dev/zero"]);
    b.edit(|c| {
        c["linux"]["resources"] =
            json!({"memory": {"limit": 32 * MIB, "swap": 32 * MIB, "reservation": 8 * MIB}});
    });
    let id = unique("oom");
    let o = rt.run(&["run", "--keep", "--bundle", b.dir.to_str().unwrap(), &id]);
    assert_eq!(
        o.status.code(),
        Some(137),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(read(&id, "memory.max"), (32 * MIB).to_string());
    assert_eq!(read(&id, "memory.swap.max"), "0");
    assert_eq!(read(&id, "memory.low"), (8 * MIB).to_string());
    assert!(keyed(&id, "memory.events", "oom_kill") >= 1);
    let lib = rsrun::Runtime::new(rt.root.path(), false);
    assert!(lib.oom_killed(&id).unwrap());
    rt.ok(&["delete", &id]);
    assert!(!cg(&id).exists());
}

/// What Docker and Podman still send and cgroup v2 has no file for (kernel memory,
/// swappiness, the OOM killer switch) is passed over as runc passes it; the subtree limits
/// of `unified` (cgroup.max.descendants) are taken; a burst lowered with its quota is
/// written first (the kernel refuses a quota below the burst in place).
#[test]
fn v2_passes_over_v1_memory_knobs_and_orders_the_burst() {
    if !pure_v2("v2_passes_over_v1_memory_knobs_and_orders_the_burst") {
        return;
    }
    let rt = Rsrun::new();
    let mut b = Bundle::new(&["sleep", "100"]);
    b.edit(|c| {
        c["linux"]["resources"] = json!({
            "memory": {"limit": 64 << 20, "kernel": 32 << 20, "kernelTCP": 16 << 20,
                       "swappiness": 10, "disableOOMKiller": true},
            "cpu": {"quota": 50000, "period": 100000, "burst": 40000},
            "unified": {"cgroup.max.descendants": "5"},
        })
    });
    let id = detached(&rt, &b);
    assert_eq!(read(&id, "memory.max"), (64u64 << 20).to_string());
    assert_eq!(read(&id, "cgroup.max.descendants"), "5");
    assert_eq!(read(&id, "cpu.max.burst"), "40000");
    let f = b.tmp.path().join("burst.json");
    std::fs::write(
        &f,
        json!({"cpu": {"quota": 20000, "burst": 10000}}).to_string(),
    )
    .unwrap();
    rt.ok(&["update", "-r", f.to_str().unwrap(), &id]);
    assert_eq!(read(&id, "cpu.max"), "20000 100000");
    assert_eq!(read(&id, "cpu.max.burst"), "10000");
    rt.ok(&["delete", "--force", &id]);
}

/// A container whose init does what systemd does at its start (moves itself into
/// init.scope and hands controllers down from the container's cgroup, which then may hold
/// no process): `exec` goes where the init is, as runc does (it failed with EBUSY).
#[test]
fn v2_exec_into_a_container_that_delegated_its_cgroup() {
    if !pure_v2("v2_exec_into_a_container_that_delegated_its_cgroup") {
        return;
    }
    let rt = Rsrun::new();
    let mut b = Bundle::new(&[
        "sh",
        "-c",
        "exec 2>/err; cat /proc/self/cgroup /sys/fs/cgroup/cgroup.controllers >&2; \
         mkdir /sys/fs/cgroup/init.scope && echo $$ > /sys/fs/cgroup/init.scope/cgroup.procs \
         && echo +pids > /sys/fs/cgroup/cgroup.subtree_control; exec sleep 100",
    ]);
    b.edit(|c| {
        c["linux"]["resources"] = json!({"pids": {"limit": 100}});
        c["root"]["readonly"] = json!(false);
        let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
        if !ns.iter().any(|n| n["type"] == "cgroup") {
            ns.push(json!({"type": "cgroup"}));
        }
        for m in c["mounts"].as_array_mut().unwrap() {
            if m["destination"] == "/sys/fs/cgroup" {
                m["options"] = json!(["nosuid", "noexec", "nodev", "relatime", "rw"]);
            }
        }
    });
    let id = detached(&rt, &b);
    let handed = wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(cg(&id).join("cgroup.subtree_control"))
            .is_ok_and(|s| s.contains("pids"))
    });
    let err = std::fs::read_to_string(b.rootfs().join("err")).unwrap_or_default();
    assert!(
        handed,
        "the container's init did not hand its controllers down: {err}"
    );
    let out = rt.ok(&["exec", &id, "cat", "/proc/self/cgroup"]);
    assert_eq!(out.trim(), "0::/init.scope");
    rt.ok(&["delete", "--force", &id]);
}

#[test]
fn v2_pids_max() {
    if !pure_v2("v2_pids_max") {
        return;
    }
    let rt = Rsrun::new();
    let mut b = Bundle::new(&[
        "sh",
        "-c",
        "for i in $(seq 40); do sleep 100 & echo started $i; done",
    ]);
    b.edit(|c| c["linux"]["resources"] = json!({"pids": {"limit": 10}}));
    let id = unique("pids");
    let o = rt.run(&["run", "--keep", "--bundle", b.dir.to_str().unwrap(), &id]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "all forks succeeded: {out}");
    let started = out.lines().filter(|l| l.starts_with("started")).count();
    assert!((1..10).contains(&started), "{started}: {out}");
    assert_eq!(read(&id, "pids.max"), "10");
    assert!(keyed(&id, "pids.events", "max") > 0);
    rt.ok(&["delete", &id]);
}

#[test]
fn v2_cpu_max_throttles() {
    if !pure_v2("v2_cpu_max_throttles") {
        return;
    }
    let rt = Rsrun::new();
    let mut b = Bundle::new(&["sh", "-c", "while :; do :; done"]);
    b.edit(|c| {
        c["linux"]["resources"] =
            json!({"cpu": {"shares": 1024, "quota": 20000, "period": 100000, "cpus": "0"}});
    });
    let id = detached(&rt, &b);
    assert_eq!(read(&id, "cpu.max"), "20000 100000");
    // 1024 shares: the default weight (runc's and the kubelet's conversion).
    assert_eq!(read(&id, "cpu.weight"), "100");
    assert_eq!(read(&id, "cpuset.cpus"), "0");
    let usage = || keyed(&id, "cpu.stat", "usage_usec");
    let (u0, t0) = (usage(), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let (u1, el) = (usage(), t0.elapsed());
    let share = (u1 - u0) as f64 / el.as_micros() as f64;
    // 20% of one CPU; TCG timing is noisy, so only "clearly throttled" is asserted.
    assert!(
        share < 0.6,
        "a 20% quota used {:.0}% of a CPU",
        share * 100.0
    );
    // Throttled, unless other work left it under its quota anyway (a loaded VM).
    let throttled = keyed(&id, "cpu.stat", "nr_throttled");
    assert!(
        throttled > 0 || share < 0.15,
        "never throttled at {:.0}% of a CPU",
        share * 100.0
    );
    // The quota is enforced whatever the load: the kernel counts bandwidth periods only for
    // a group with a quota.
    let enforced = keyed(&id, "cpu.stat", "nr_periods");
    assert!(
        enforced > 0,
        "no bandwidth period counted: no quota in force"
    );
    // events reports the kernel's counters (read after them: as many or more).
    let ev: Value = serde_json::from_str(&rt.ok(&["events", "--stats", &id])).unwrap();
    let t = &ev["data"]["cpu"]["throttling"];
    let (periods, throttled_periods) = (t["periods"].as_u64(), t["throttled_periods"].as_u64());
    assert!(
        periods >= Some(enforced) && throttled_periods >= Some(throttled),
        "events: {t}, the kernel's {enforced} periods, {throttled} throttled"
    );
    assert!(ev["data"]["cpu"]["usage"]["total"].as_u64().unwrap() > 0);
    rt.ok(&["delete", "-f", &id]);
}

#[test]
fn v2_io_max_on_a_loop_device() {
    if !pure_v2("v2_io_max_on_a_loop_device") {
        return;
    }
    let tmp = TempDir::new("loop");
    let dev = LoopDevice::new(&tmp, "disk.img");
    let (major, minor) = (dev.major, dev.minor);

    let rt = Rsrun::new();
    let mut b = Bundle::new(&[
        "dd",
        "if=/dev/disk",
        "of=/dev/null",
        "bs=64k",
        "count=32",
        "iflag=direct",
    ]);
    b.edit(|c| {
        c["linux"]["devices"] =
            json!([{"path": "/dev/disk", "type": "b", "major": major, "minor": minor}]);
        c["linux"]["resources"] = json!({"blockIO": {
            "throttleReadBpsDevice": [{"major": major, "minor": minor, "rate": 1048576}]
        }, "devices": [{"allow": true, "type": "b", "major": major, "minor": minor, "access": "rw"}]});
    });
    let id = unique("io");
    let t = Instant::now();
    let o = rt.run(&["run", "--keep", "--bundle", b.dir.to_str().unwrap(), &id]);
    let el = t.elapsed();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        read(&id, "io.max"),
        format!("{major}:{minor} rbps=1048576 wbps=max riops=max wiops=max")
    );
    let stat = read(&id, "io.stat");
    let rbytes: u64 = stat
        .lines()
        .find(|l| l.starts_with(&format!("{major}:{minor} ")))
        .and_then(|l| {
            l.split_whitespace()
                .find_map(|kv| kv.strip_prefix("rbytes="))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no io.stat line for {major}:{minor}: {stat}"));
    assert!(rbytes >= 2 << 20, "rbytes {rbytes}");
    // 2 MiB at 1 MiB/s: well over a second, whatever TCG does to the clock.
    assert!(
        el >= Duration::from_millis(1200),
        "2 MiB read in {el:?} under a 1 MiB/s limit"
    );
    rt.ok(&["delete", &id]);
}

#[test]
fn v2_ebpf_device_filter() {
    if !pure_v2("v2_ebpf_device_filter") {
        return;
    }
    // Two block devices in the container: the rules allow reading one ("r" only) and say
    // nothing of the other, which the filter must then deny. /dev/kmsg (opened for writing,
    // which needs no CAP_SYSLOG) is denied too; the default list keeps /dev/null and /dev/zero.
    let tmp = TempDir::new("loop");
    let (allowed, denied) = (
        LoopDevice::new(&tmp, "allowed.img"),
        LoopDevice::new(&tmp, "denied.img"),
    );
    let rt = Rsrun::new();
    let script = "dd if=/dev/allowed of=/dev/null bs=4k count=1 && echo allowed-read; \
                  dd if=/dev/zero of=/dev/allowed bs=4k count=1 && echo allowed-write; \
                  dd if=/dev/denied of=/dev/null bs=4k count=1 && echo denied-read; \
                  true 3>/dev/kmsg && echo kmsg-opened; echo hi > /dev/null && echo null-ok; \
                  head -c 4 /dev/zero | wc -c";
    let mut b = Bundle::new(&["sh", "-c", script]);
    b.edit(|c| {
        c["linux"]["devices"] = json!([
            {"path": "/dev/kmsg", "type": "c", "major": 1, "minor": 11, "fileMode": 0o600},
            {"path": "/dev/allowed", "type": "b", "major": allowed.major, "minor": allowed.minor},
            {"path": "/dev/denied", "type": "b", "major": denied.major, "minor": denied.minor},
        ]);
        // Control: a rule that allows every device.
        c["linux"]["resources"] = json!({"devices": [{"allow": true, "access": "rwm"}]});
    });
    // Control: with every device allowed every access works.
    let out = rt.output(&b);
    for want in [
        "allowed-read",
        "allowed-write",
        "denied-read",
        "kmsg-opened",
    ] {
        assert!(
            out.contains(want),
            "control with all allowed: {want}: {out}"
        );
    }
    b.edit(|c| {
        c["linux"]["resources"] = json!({"devices": [
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "b", "major": allowed.major, "minor": allowed.minor, "access": "r"}
        ]});
    });
    let id = unique("dev");
    let (code, out, err) = rt.run_bundle(&id, &b);
    assert_eq!(code, 0, "{out} {err}");
    assert!(
        out.contains("allowed-read"),
        "the allow rule did not allow: {out} {err}"
    );
    assert!(
        !out.contains("allowed-write"),
        "write access was allowed: {out}"
    );
    assert!(
        !out.contains("denied-read"),
        "a device without a rule was readable: {out}"
    );
    assert!(!out.contains("kmsg-opened"), "{out}");
    assert!(err.contains("Operation not permitted"), "{err}");
    assert!(out.contains("null-ok") && out.contains('4'), "{out}");
}

#[test]
fn v2_io_weight_hugetlb_and_cpu_idle() {
    if !pure_v2("v2_io_weight_hugetlb_and_cpu_idle") {
        return;
    }
    let rt = Rsrun::new();
    let mut b = Bundle::new(&["sleep", "1000"]);
    b.edit(|c| {
        c["linux"]["resources"] = json!({
            "blockIO": {"weight": 500},
            "hugepageLimits": [{"pageSize": "2MB", "limit": 4 * MIB}],
            "cpu": {"idle": 1}
        });
    });
    let id = detached(&rt, &b);
    assert_eq!(read(&id, &io_weight_file(&id)), io_weight_of(&id, 500));
    assert_eq!(read(&id, "hugetlb.2MB.max"), (4 * MIB).to_string());
    assert_eq!(read(&id, "cpu.idle"), "1");
    rt.ok(&["delete", "-f", &id]);
}

/// The file rsrun writes blockIO.weight to: BFQ's own when the kernel has it, else io.weight.
fn io_weight_file(id: &str) -> String {
    if cg(id).join("io.bfq.weight").exists() {
        "io.bfq.weight".into()
    } else {
        "io.weight".into()
    }
}

/// What that file reads after blockIO.weight = `w`: BFQ takes the weight itself, io.weight
/// the converted one, 1 + (w - 10) * 9999 / 990 (as runc).
fn io_weight_of(id: &str, w: u64) -> String {
    if io_weight_file(id) == "io.bfq.weight" {
        format!("default {w}")
    } else {
        format!("default {}", 1 + (w - 10) * 9999 / 990)
    }
}

#[test]
fn v2_freeze_thaw() {
    if !pure_v2("v2_freeze_thaw") {
        return;
    }
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
    wait_for("ticks", || size() > 0);
    rt.ok(&["pause", &id]);
    assert_eq!(rt.status(&id), "paused");
    assert_eq!(read(&id, "cgroup.freeze"), "1");
    assert_eq!(keyed(&id, "cgroup.events", "frozen"), 1);
    let at = size();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(size(), at, "a frozen container kept running");
    rt.ok(&["resume", &id]);
    assert_eq!(rt.status(&id), "running");
    assert_eq!(keyed(&id, "cgroup.events", "frozen"), 0);
    wait_for("ticks after thaw", || size() > at);
    rt.ok(&["pause", &id]);
    rt.ok(&["delete", "-f", &id]);
    assert!(!cg(&id).exists());
    // A created container pauses too (as runc), and starts once resumed.
    let id = unique("cg");
    rt.ok(&["create", "--bundle", b.dir.to_str().unwrap(), &id]);
    rt.ok(&["pause", &id]);
    assert_eq!(rt.status(&id), "paused");
    wait_for("the created container frozen", || {
        keyed(&id, "cgroup.events", "frozen") == 1
    });
    assert!(rt.fails(&["start", &id]).contains("paused"));
    rt.ok(&["resume", &id]);
    assert_eq!(rt.status(&id), "created");
    let at = size();
    rt.ok(&["start", &id]);
    wait_for("ticks after the start", || size() > at);
    rt.ok(&["delete", "-f", &id]);
    assert!(!cg(&id).exists());
}

#[test]
fn v2_update_live_and_rollback() {
    if !pure_v2("v2_update_live_and_rollback") {
        return;
    }
    let rt = Rsrun::new();
    let b = Bundle::new(&["sleep", "1000"]);
    let id = detached(&rt, &b);
    rt.ok(&[
        "update",
        "--memory",
        "64m",
        "--memory-swap",
        "96m",
        "--cpu-shares",
        "2048",
        "--cpu-quota",
        "50000",
        "--pids-limit",
        "20",
        "--blkio-weight",
        "500",
        &id,
    ]);
    assert_eq!(read(&id, "memory.max"), (64 * MIB).to_string());
    assert_eq!(read(&id, "memory.swap.max"), (32 * MIB).to_string());
    assert_eq!(read(&id, "cpu.weight"), "174");
    assert_eq!(read(&id, "cpu.max"), "50000 100000");
    assert_eq!(read(&id, "pids.max"), "20");
    assert_eq!(read(&id, &io_weight_file(&id)), io_weight_of(&id, 500));
    // Period alone keeps the quota.
    rt.ok(&["update", "--cpu-period", "200000", &id]);
    assert_eq!(read(&id, "cpu.max"), "50000 200000");
    let f = b.tmp.path().join("r.json");
    std::fs::write(&f, r#"{"unified": {"memory.high": "50331648"}}"#).unwrap();
    rt.ok(&["update", "-r", f.to_str().unwrap(), &id]);
    assert_eq!(read(&id, "memory.high"), "50331648");
    // Failures: nothing changes.
    std::fs::write(
        &f,
        r#"{"pids": {"limit": 5}, "unified": {"memory.nosuchknob": "1"}}"#,
    )
    .unwrap();
    let e = rt.fails(&["update", "-r", f.to_str().unwrap(), &id]);
    assert!(
        e.contains("linux.resources.unified") && e.contains("memory.nosuchknob"),
        "{e}"
    );
    assert_eq!(read(&id, "pids.max"), "20");
    std::fs::write(&f, r#"{"unified": {"../memory.max": "1"}}"#).unwrap();
    let e = rt.fails(&["update", "-r", f.to_str().unwrap(), &id]);
    assert!(e.contains("linux.resources.unified"), "{e}");
    std::fs::write(
        &f,
        r#"{"memory": {"limit": 100000000}, "pids": {"limit": 7}, "cpu": {"cpus": "4095"}}"#,
    )
    .unwrap();
    let e = rt.fails(&["update", "-r", f.to_str().unwrap(), &id]);
    assert!(e.contains("linux.resources.cpu.cpus"), "{e}");
    assert_eq!(read(&id, "memory.max"), (64 * MIB).to_string());
    assert_eq!(read(&id, "pids.max"), "20");
    let e = rt.fails(&["update", "--memory", "4096", &id]);
    assert!(e.contains("usage"), "{e}");
    assert_eq!(read(&id, "memory.max"), (64 * MIB).to_string());
    let e = rt.fails(&["update", "--cpu-quota", "999", &id]);
    assert!(e.contains("linux.resources.cpu.quota"), "{e}");
    assert_eq!(read(&id, "cpu.max"), "50000 200000");
    let e = rt.fails(&["update", "--cpu-rt-runtime", "1000", &id]);
    assert!(e.contains("realtimeRuntime"), "{e}");
    rt.ok(&["delete", "-f", &id]);
}

#[test]
fn v2_delete_kills_stuck_processes() {
    if !pure_v2("v2_delete_kills_stuck_processes") {
        return;
    }
    let rt = Rsrun::new();
    // No pid namespace: the child outlives the init; it also ignores TERM and is stopped.
    let mut b = Bundle::new(&[
        "sh",
        "-c",
        "(trap '' TERM HUP; exec sleep 1000) & exec sleep 999",
    ]);
    b.edit(|c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|n| n["type"] != "pid");
    });
    let id = detached(&rt, &b);
    let mut pids: Vec<i64> = Vec::new();
    wait_for("two processes", || {
        pids = serde_json::from_str(&rt.ok(&["ps", "-f", "json", &id])).unwrap();
        pids.len() == 2
    });
    let init = rt.state(&id)["pid"].as_i64().unwrap();
    let left = *pids.iter().find(|&&p| p != init).unwrap();
    send_signal(left, libc::SIGSTOP);
    rt.ok(&["kill", &id, "KILL"]);
    rt.wait_status(&id, "stopped");
    assert!(Path::new(&format!("/proc/{left}")).exists());
    rt.ok(&["delete", &id]);
    assert!(!cg(&id).exists(), "cgroup left");
    wait_for("the leftover to be gone", || {
        std::fs::read_to_string(format!("/proc/{left}/stat"))
            .map(|s| s.contains(") Z"))
            .unwrap_or(true)
    });
}

fn send_signal(pid: i64, sig: i32) {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn v2_events_stats_shape() {
    if !pure_v2("v2_events_stats_shape") {
        return;
    }
    let rt = Rsrun::new();
    let mut b = Bundle::new(&["sh", "-c", "sleep 100 & sleep 100"]);
    b.edit(|c| {
        c["linux"]["resources"] = json!({"memory": {"limit": 64 * MIB}, "pids": {"limit": 50}})
    });
    let id = detached(&rt, &b);
    let v: Value = serde_json::from_str(&rt.ok(&["events", "--stats", &id])).unwrap();
    assert_eq!(v["type"], "stats");
    let d = &v["data"];
    assert_eq!(d["memory"]["usage"]["limit"], 64 * MIB);
    assert!(d["memory"]["usage"]["usage"].as_u64().unwrap() > 0);
    assert!(d["memory"]["raw"]["anon"].is_u64());
    assert_eq!(d["pids"]["limit"], 50);
    assert!(d["pids"]["current"].as_u64().unwrap() >= 2);
    let ps: Vec<i64> = serde_json::from_str(&rt.ok(&["ps", "-f", "json", &id])).unwrap();
    assert!(ps.len() >= 2, "{ps:?}");
    rt.ok(&["delete", "-f", &id]);
}

/// Issue 8: a cgroupsPath that resolves to the hierarchy's root or to the caller's own
/// cgroup is refused before anything is written; a failed create, `delete --force` and
/// `kill --all` then touch nothing. Only in the VM: on a host, a regression would signal
/// every process and remove every empty cgroup.
#[test]
fn v2_root_and_own_cgroup_refused() {
    if !pure_v2("v2_root_and_own_cgroup_refused") {
        return;
    }
    // Canaries (other tests of this binary run alongside, so the check is on what this
    // test owns): a process in a cgroup of its own, and empty cgroups at the root and beside
    // ours, which a failed create's cleanup would remove if it reached them.
    let canary_cg = PathBuf::from("/sys/fs/cgroup").join(unique("canary"));
    std::fs::create_dir(&canary_cg).unwrap();
    let mut canary = Command::new("sleep").arg("1000").spawn().unwrap();
    std::fs::write(canary_cg.join("cgroup.procs"), canary.id().to_string()).unwrap();
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let own = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap()
        .to_string();
    let own_dir = PathBuf::from("/sys/fs/cgroup").join(own.trim_start_matches('/'));
    let empties = [
        PathBuf::from("/sys/fs/cgroup").join(unique("empty-root")),
        if own == "/" {
            own_dir.join(unique("empty-beside"))
        } else {
            own_dir.parent().unwrap().join(unique("empty-beside"))
        },
    ];
    for e in &empties {
        std::fs::create_dir(e).unwrap();
    }
    let rt = Rsrun::new();
    for path in ["/", "/.", "", ".", "//", own.as_str()] {
        let mut b = Bundle::new(&["/bin/does-not-exist"]);
        b.edit(|c| c["linux"]["cgroupsPath"] = json!(path));
        let id = unique("root");
        let e = rt.fails(&["create", "--bundle", b.dir.to_str().unwrap(), &id]);
        assert!(
            e.contains("a container needs a cgroup of its own"),
            "{path:?}: {e}"
        );
        rt.ok(&["delete", "--force", &id]);
        rt.fails(&["kill", "--all", &id, "KILL"]);
        assert_eq!(rt.count(), 0, "{path:?}: state left");
        // Nothing was created for it either.
        assert!(!own_dir.join(&id).exists() && !Path::new("/sys/fs/cgroup").join(&id).exists());
    }
    assert!(
        canary.try_wait().unwrap().is_none(),
        "the canary in another cgroup was killed"
    );
    assert!(own_dir.is_dir(), "our own cgroup was removed");
    for e in &empties {
        assert!(e.is_dir(), "{} was removed", e.display());
        std::fs::remove_dir(e).unwrap();
    }
    let _ = canary.kill();
    let _ = canary.wait();
    let _ = std::fs::remove_dir(&canary_cg);
}

/// Issue 9: rsrun-shim records an OOM kill on cgroup v2 (memory.events oom_kill), as the
/// CRI server's reason OOMKilled needs.
#[test]
fn v2_shim_records_oom() {
    if !pure_v2("v2_shim_records_oom") {
        return;
    }
    let rt = Rsrun::new();
    let tmp = TempDir::new("shim-oom");
    let mut b = Bundle::new(&["sh", "-c", "tail /dev/zero"]);
    b.edit(|c| c["linux"]["resources"] = json!({"memory": {"limit": 32 * MIB, "swap": 32 * MIB}}));
    let id = unique("oom");
    let exit = tmp.path().join("exit.json");
    let out = shim_command(&rt, tmp.path(), &id, &b).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut s = std::os::unix::net::UnixStream::connect(tmp.path().join("shim/control")).unwrap();
    std::io::Write::write_all(&mut s, b"{\"op\":\"start\"}\n").unwrap();
    let mut rec = None;
    for _ in 0..3000 {
        if let Ok(d) = std::fs::read(&exit) {
            rec = Some(serde_json::from_slice::<Value>(&d).unwrap());
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let rec = rec.expect("no exit record");
    assert_eq!(rec["oom_killed"], true, "{rec}");
    assert_eq!(rec["exit_code"], 137, "{rec}");
    rt.ok(&["delete", "--force", &id]);
}
