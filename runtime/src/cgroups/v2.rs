//! cgroup v2: one directory for the container in the unified hierarchy; device rules as an
//! eBPF program attached to it.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::{LinuxRdma, LinuxResources};
use serde_json::{json, Value};

use super::{
    blkio_weight_to_io, check_blkio_weight, check_cpu, check_limit_vs_usage, check_memory,
    check_page_size, devices, read_keyed, read_trim, read_u64, shares_to_weight, write_file, Tx,
};
use crate::error::{Context, Error, Result};

#[derive(Debug, Clone)]
pub struct V2 {
    pub dir: PathBuf,
}

fn v1_only(field: &str) -> Error {
    Error::Unsupported(format!(
        "{field}: has no cgroup v2 equivalent (this host runs cgroup v2)"
    ))
}

/// The "dev hca_handle=N hca_object=M" line of rdma.max.
/// A device's rdma.max line: only the limits given (the kernel keeps the other as it is;
/// `max` there would lift a limit an update did not name). None when neither is given.
pub fn rdma_line(dev: &str, l: &LinuxRdma) -> Option<String> {
    let mut line = dev.to_string();
    if let Some(h) = l.hca_handles() {
        line.push_str(&format!(" hca_handle={h}"));
    }
    if let Some(o) = l.hca_objects() {
        line.push_str(&format!(" hca_object={o}"));
    }
    (line.len() > dev.len()).then_some(line)
}

/// The swap to set, 0 being "not set": the one given, or none, except that a memory limit
/// lifted (-1) with no swap given lifts the swap limit too (as runc does; else the old
/// memory.swap.max stays).
pub fn swap_of(swap: Option<i64>, limit: Option<i64>) -> Option<i64> {
    match (swap.filter(|s| *s != 0), limit) {
        (Some(s), _) => Some(s),
        (None, Some(-1)) => Some(-1),
        (None, _) => None,
    }
}

/// OCI's memory.swap (memory plus swap) as memory.swap.max (swap alone), as runc converts it.
pub fn swap_max(swap: i64, limit: i64) -> Result<String> {
    if swap == -1 {
        return Ok("max".into());
    }
    if limit <= 0 {
        return Err(Error::Config(format!(
            "linux.resources.memory.swap: {swap} needs a memory.limit (cgroup v2 limits swap separately)"
        )));
    }
    if swap < limit {
        return Err(Error::Config(format!(
            "linux.resources.memory.swap: {swap} is below memory.limit {limit}"
        )));
    }
    Ok((swap - limit).to_string())
}

/// Enables every available controller for the children of each cgroup from the mount down
/// to `dir`'s parent, so that `dir` gets the controllers' files. Best effort: a cgroup with
/// processes of its own cannot delegate (the root excepted).
pub fn enable_controllers(mount: &Path, dir: &Path) {
    let Ok(rel) = dir.strip_prefix(mount) else {
        return;
    };
    let mut ancestors = vec![mount.to_path_buf()];
    for c in rel.components() {
        let next = ancestors[ancestors.len() - 1].join(c);
        ancestors.push(next);
    }
    ancestors.pop();
    for cur in ancestors {
        let avail = read_trim(&cur.join("cgroup.controllers")).unwrap_or_default();
        let enabled = read_trim(&cur.join("cgroup.subtree_control")).unwrap_or_default();
        for ctrl in avail.split_whitespace() {
            if enabled.split_whitespace().any(|e| e == ctrl) {
                continue;
            }
            if let Err(e) = write_file(&cur.join("cgroup.subtree_control"), &format!("+{ctrl}")) {
                crate::log::debug(&format!(
                    "enable {ctrl} in {}/cgroup.subtree_control: {e}",
                    cur.display()
                ));
            }
        }
    }
}

impl V2 {
    pub fn new(dir: PathBuf) -> V2 {
        V2 { dir }
    }

    fn has(&self, f: &str) -> bool {
        self.dir.join(f).exists()
    }

    /// Applies (create) or changes (update) the fields present in `r`, except devices.
    pub fn set(&self, r: &LinuxResources, tx: &mut Tx, updating: bool) -> Result<()> {
        let d = self.dir.as_path();
        if let Some(m) = r.memory() {
            check_memory(m)?;
            let nz = |v: Option<i64>| v.filter(|&v| v != 0);
            let mx = |v: i64| {
                if v < 0 {
                    "max".to_string()
                } else {
                    v.to_string()
                }
            };
            if let Some(l) = nz(m.limit()) {
                if updating {
                    check_limit_vs_usage(
                        l,
                        read_u64(&d.join("memory.current")),
                        read_u64(&d.join("memory.max")),
                    )?;
                }
            }
            // (The implied lift only where the kernel accounts swap.)
            let implied = nz(m.swap()).is_none();
            if let Some(s) = swap_of(m.swap(), m.limit())
                .filter(|_| !implied || d.join("memory.swap.max").exists())
            {
                let limit = match nz(m.limit()) {
                    Some(l) => l,
                    None => read_trim(&d.join("memory.max"))
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(-1),
                };
                let v = swap_max(s, limit)?;
                // No swap accounting: "no swap beyond the limit" and "unlimited" need no
                // file (runc passes them over too); an actual swap limit does.
                if d.join("memory.swap.max").exists() || !(v == "0" || v == "max") {
                    tx.write(d, "memory.swap.max", &v, "linux.resources.memory.swap")?;
                }
            }
            if let Some(l) = nz(m.limit()) {
                tx.write(d, "memory.max", &mx(l), "linux.resources.memory.limit")?;
            }
            if let Some(v) = nz(m.reservation()) {
                tx.write(
                    d,
                    "memory.low",
                    &mx(v),
                    "linux.resources.memory.reservation",
                )?;
            }
            // Knobs cgroup v2 has no file for: passed over with a warning, as runc passes them
            // (Docker and Podman still send some of them).
            for (set, field) in [
                (nz(m.kernel()).is_some(), "kernel"),
                (nz(m.kernel_tcp()).is_some(), "kernelTCP"),
                (m.swappiness().is_some(), "swappiness"),
                (m.disable_oom_killer() == Some(true), "disableOOMKiller"),
            ] {
                if set {
                    crate::log::warn(&format!(
                        "linux.resources.memory.{field}: cgroup v2 has no such setting; ignored"
                    ));
                }
            }
        }

        if let Some(c) = r.cpu() {
            check_cpu(c)?;
            let f = |n: &str| format!("linux.resources.cpu.{n}");
            if let Some(s) = c.shares().filter(|&v| v != 0) {
                tx.write(
                    d,
                    "cpu.weight",
                    &shares_to_weight(s).to_string(),
                    &f("shares"),
                )?;
            }
            let quota = c.quota().filter(|&v| v != 0);
            let period = c.period().filter(|&v| v != 0);
            // The kernel refuses a burst above the quota: tried before cpu.max (a burst
            // lowered with the quota), and written after it when that failed (a quota
            // raised with the burst), as runc does.
            let burst_done = c.burst().is_some_and(|b| {
                tx.write(d, "cpu.max.burst", &b.to_string(), &f("burst"))
                    .is_ok()
            });
            if quota.is_some() || period.is_some() {
                // cpu.max holds both: keep the current value of the one not given.
                let cur = read_trim(&d.join("cpu.max")).unwrap_or_else(|| "max 100000".into());
                let mut it = cur.split_whitespace();
                let cur_q = it.next().unwrap_or("max").to_string();
                let cur_p = it.next().unwrap_or("100000").to_string();
                let q = match quota {
                    Some(-1) => "max".to_string(),
                    Some(q) => q.to_string(),
                    None => cur_q,
                };
                let p = period.map_or(cur_p, |p| p.to_string());
                let field = if quota.is_some() {
                    f("quota")
                } else {
                    f("period")
                };
                tx.write(d, "cpu.max", &format!("{q} {p}"), &field)?;
            }
            if let (Some(b), false) = (c.burst(), burst_done) {
                tx.write(d, "cpu.max.burst", &b.to_string(), &f("burst"))?;
            }
            if c.realtime_runtime().is_some_and(|v| v != 0) {
                return Err(v1_only(&f("realtimeRuntime")));
            }
            if c.realtime_period().is_some_and(|v| v != 0) {
                return Err(v1_only(&f("realtimePeriod")));
            }
            if let Some(i) = c.idle() {
                tx.write(d, "cpu.idle", &i.to_string(), &f("idle"))?;
            }
            if let Some(v) = c.cpus().as_deref().filter(|v| !v.is_empty()) {
                tx.write(d, "cpuset.cpus", v, &f("cpus"))?;
            }
            if let Some(v) = c.mems().as_deref().filter(|v| !v.is_empty()) {
                tx.write(d, "cpuset.mems", v, &f("mems"))?;
            }
        }

        if let Some(p) = r.pids() {
            let v = if p.limit() > 0 {
                p.limit().to_string()
            } else {
                "max".to_string()
            };
            tx.write(d, "pids.max", &v, "linux.resources.pids.limit")?;
        }

        if let Some(b) = r.block_io() {
            let f = |n: &str| format!("linux.resources.blockIO.{n}");
            let bfq = self.has("io.bfq.weight");
            if let Some(w) = b.weight().filter(|&w| w != 0) {
                check_blkio_weight(w, &f("weight"))?;
                if bfq {
                    tx.write(d, "io.bfq.weight", &format!("default {w}"), &f("weight"))?;
                } else {
                    let v = format!("default {}", blkio_weight_to_io(w));
                    tx.write(d, "io.weight", &v, &f("weight"))?;
                }
            }
            if b.leaf_weight().is_some_and(|w| w != 0) {
                return Err(v1_only(&f("leafWeight")));
            }
            for (i, wd) in b.weight_device().iter().flatten().enumerate() {
                let field = f(&format!("weightDevice[{i}]"));
                if wd.leaf_weight().is_some_and(|w| w != 0) {
                    return Err(v1_only(&format!("{field}.leafWeight")));
                }
                if let Some(w) = wd.weight() {
                    check_blkio_weight(w, &format!("{field}.weight"))?;
                    let (file, w) = if bfq {
                        ("io.bfq.weight", u64::from(w))
                    } else {
                        ("io.weight", blkio_weight_to_io(w))
                    };
                    let v = format!("{}:{} {w}", wd.major(), wd.minor());
                    tx.write(d, file, &v, &format!("{field}.weight"))?;
                }
            }
            // io.max: one line per device with only the keys given.
            let mut max: BTreeMap<(i64, i64), Vec<String>> = BTreeMap::new();
            for (key, list) in [
                ("rbps", b.throttle_read_bps_device()),
                ("wbps", b.throttle_write_bps_device()),
                ("riops", b.throttle_read_iops_device()),
                ("wiops", b.throttle_write_iops_device()),
            ] {
                for t in list.iter().flatten() {
                    let v = if t.rate() == 0 {
                        "max".to_string()
                    } else {
                        t.rate().to_string()
                    };
                    max.entry((t.major(), t.minor()))
                        .or_default()
                        .push(format!("{key}={v}"));
                }
            }
            for ((maj, min), kv) in max {
                let v = format!("{maj}:{min} {}", kv.join(" "));
                tx.write(d, "io.max", &v, &f(&format!("throttle ({maj}:{min})")))?;
            }
        }

        for (i, h) in r.hugepage_limits().iter().flatten().enumerate() {
            let field = format!("linux.resources.hugepageLimits[{i}]");
            check_page_size(h.page_size(), &format!("{field}.pageSize"))?;
            let v = if h.limit() < 0 {
                "max".to_string()
            } else {
                h.limit().to_string()
            };
            tx.write(d, &format!("hugetlb.{}.max", h.page_size()), &v, &field)?;
            // The reservation limit too (kernels from 5.11 account pages reserved at mmap
            // time apart): without it a container could reserve the node's whole pool and
            // others' mmaps fail (runc writes both).
            let rsvd = format!("hugetlb.{}.rsvd.max", h.page_size());
            if d.join(&rsvd).exists() {
                tx.write(d, &rsvd, &v, &field)?;
            }
        }

        if let Some(n) = r.network() {
            if n.class_id().is_some() {
                return Err(v1_only("linux.resources.network.classID"));
            }
            if n.priorities().as_ref().is_some_and(|p| !p.is_empty()) {
                return Err(v1_only("linux.resources.network.priorities"));
            }
        }

        for (dev, l) in r.rdma().iter().flatten() {
            let f = format!("linux.resources.rdma.{dev}");
            if let Some(line) = rdma_line(dev, l) {
                tx.write(d, "rdma.max", &line, &f)?;
            }
        }

        if let Some(u) = r.unified() {
            let sorted: BTreeMap<_, _> = u.iter().collect();
            for (k, v) in sorted {
                let field = format!("linux.resources.unified[{k:?}]");
                check_unified_key(k, &field)?;
                if !self.has(k) {
                    return Err(Error::Config(format!(
                        "{field}: unknown key: {} does not exist (misspelled, or its controller is not enabled)",
                        d.join(k).display()
                    )));
                }
                // One write per line (io.max with several devices: the kernel takes one
                // device's line per write, as runc writes them).
                for line in v.lines().filter(|l| !l.trim().is_empty()) {
                    tx.write(d, k, line, &field)?;
                }
                if v.trim().is_empty() {
                    tx.write(d, k, v, &field)?;
                }
            }
        }
        Ok(())
    }

    /// Loads the device program for `rules` and attaches it to the cgroup (allow-multi, so
    /// that an ancestor's programs still apply).
    pub fn set_devices(&self, rules: &[devices::Rule]) -> Result<()> {
        let f = "linux.resources.devices";
        let insns: Vec<u64> = devices::program(rules).iter().map(|i| i.encode()).collect();
        let prog = crate::bpf::load_device_program(&insns).with_ctx(|| {
            format!(
                "{f}: load the eBPF device program ({} instructions)",
                insns.len()
            )
        })?;
        let dirfd = nix::fcntl::open(
            &self.dir,
            nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .with_ctx(|| format!("{f}: open {}", self.dir.display()))?;
        crate::bpf::attach_device_program(
            dirfd.as_fd(),
            prog.as_fd(),
            crate::bpf::BPF_F_ALLOW_MULTI,
        )
        .with_ctx(|| {
            format!(
                "{f}: attach the eBPF device program to {}",
                self.dir.display()
            )
        })
    }

    /// Writes cgroup.freeze and waits until cgroup.events reports the state.
    pub fn set_frozen(&self, frozen: bool) -> Result<()> {
        let want = if frozen { "1" } else { "0" };
        let p = self.dir.join("cgroup.freeze");
        write_file(&p, want).with_ctx(|| format!("write {want} to {}", p.display()))?;
        for i in 0..1000u64 {
            let ev = read_keyed(&self.dir.join("cgroup.events"));
            if ev.get("frozen").map(|v| v.to_string()).as_deref() == Some(want) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(1 + i.min(9)));
        }
        if frozen {
            let _ = write_file(&p, "0");
        }
        Err(Error::Invalid(format!(
            "{}: the cgroup did not report frozen {want} within 10 s",
            self.dir.display()
        )))
    }

    pub fn is_frozen(&self) -> bool {
        read_trim(&self.dir.join("cgroup.freeze")).is_some_and(|v| v == "1")
    }

    pub fn oom_kill_count(&self) -> u64 {
        read_keyed(&self.dir.join("memory.events"))
            .get("oom_kill")
            .copied()
            .unwrap_or(0)
    }

    pub fn oom_events(&self) -> u64 {
        read_keyed(&self.dir.join("memory.events"))
            .get("oom")
            .copied()
            .unwrap_or(0)
    }

    /// runc's stats from cpu.stat, memory.*, pids.*, io.stat and hugetlb.*.
    pub fn stats(&self) -> Value {
        let d = &self.dir;
        let cs = read_keyed(&d.join("cpu.stat"));
        let c = |k: &str| cs.get(k).copied().unwrap_or(0);
        let cpu = json!({
            "usage": {"total": c("usage_usec") * 1000, "percpu": [],
                      "kernel": c("system_usec") * 1000, "user": c("user_usec") * 1000},
            "throttling": {"periods": c("nr_periods"), "throttled_periods": c("nr_throttled"),
                           "throttled_time": c("throttled_usec") * 1000}
        });
        let max_of = |f: &str| match read_trim(&d.join(f)).as_deref() {
            Some("max") | None => u64::MAX,
            Some(v) => v.parse().unwrap_or(u64::MAX),
        };
        let raw = read_keyed(&d.join("memory.stat"));
        let ev = read_keyed(&d.join("memory.events"));
        let cur = read_u64(&d.join("memory.current")).unwrap_or(0);
        let swap_cur = read_u64(&d.join("memory.swap.current")).unwrap_or(0);
        let memory = json!({
            "cache": raw.get("file").copied().unwrap_or(0),
            "usage": {"limit": max_of("memory.max"), "usage": cur,
                      "max": read_u64(&d.join("memory.peak")).unwrap_or(0),
                      "failcnt": ev.get("max").copied().unwrap_or(0)},
            "swap": {"limit": max_of("memory.max").saturating_add(max_of("memory.swap.max")),
                     "usage": cur + swap_cur, "max": 0, "failcnt": 0},
            "kernel": {}, "kernelTCP": {},
            "raw": raw,
        });
        let pids = json!({
            "current": read_u64(&d.join("pids.current")).unwrap_or(0),
            "limit": read_u64(&d.join("pids.max")).unwrap_or(0),
        });
        let mut bytes = Vec::new();
        let mut ios = Vec::new();
        if let Ok(s) = std::fs::read_to_string(d.join("io.stat")) {
            for l in s.lines() {
                let mut it = l.split_whitespace();
                let Some((maj, min)) = it.next().and_then(|x| x.split_once(':')) else {
                    continue;
                };
                let (Ok(maj), Ok(min)) = (maj.parse::<u64>(), min.parse::<u64>()) else {
                    continue;
                };
                for kv in it {
                    let Some((k, v)) = kv.split_once('=') else {
                        continue;
                    };
                    let Ok(v) = v.parse::<u64>() else { continue };
                    let e = |op: &str| json!({"major": maj, "minor": min, "op": op, "value": v});
                    match k {
                        "rbytes" => bytes.push(e("Read")),
                        "wbytes" => bytes.push(e("Write")),
                        "rios" => ios.push(e("Read")),
                        "wios" => ios.push(e("Write")),
                        _ => {}
                    }
                }
            }
        }
        let mut hugetlb = serde_json::Map::new();
        for size in super::hugepage_sizes() {
            if let Some(cur) = read_u64(&d.join(format!("hugetlb.{size}.current"))) {
                let ev = read_keyed(&d.join(format!("hugetlb.{size}.events")));
                hugetlb.insert(
                    size.clone(),
                    json!({"usage": cur, "max": 0, "failcnt": ev.get("max").copied().unwrap_or(0)}),
                );
            }
        }
        json!({"cpu": cpu, "memory": memory, "pids": pids,
               "blkio": {"ioServiceBytesRecursive": bytes, "ioServicedRecursive": ios},
               "hugetlb": hugetlb, "intel_rdt": {}, "network_interfaces": null})
    }
}

/// A `unified` key names one file of the container's own cgroup directory.
pub fn check_unified_key(k: &str, field: &str) -> Result<()> {
    if k.is_empty() || k.contains('/') || k == "." || k == ".." || k.contains('\0') {
        return Err(Error::Config(format!(
            "{field}: a key must be a plain cgroup file name (no '/', not '..')"
        )));
    }
    // The limits of a subtree a container may be given (runc takes them); the other core
    // files are the runtime's.
    if k.starts_with("cgroup.") && !matches!(k, "cgroup.max.descendants" | "cgroup.max.depth") {
        return Err(Error::Config(format!(
            "{field}: cgroup.* core files are managed by the runtime, not by unified"
        )));
    }
    if !k.contains('.') {
        return Err(Error::Config(format!(
            "{field}: {k:?} is not a controller file name (CONTROLLER.KNOB)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_lifted_with_the_memory_limit_and_rdma_only_what_is_given() {
        assert_eq!(swap_of(None, Some(-1)), Some(-1));
        assert_eq!(swap_of(Some(0), Some(-1)), Some(-1));
        assert_eq!(swap_of(None, Some(1 << 20)), None);
        assert_eq!(swap_of(Some(2 << 20), Some(1 << 20)), Some(2 << 20));
        assert_eq!(swap_of(None, None), None);
        let rdma = |v: serde_json::Value| -> LinuxRdma { serde_json::from_value(v).unwrap() };
        assert_eq!(
            rdma_line("mlx5_0", &rdma(serde_json::json!({"hcaHandles": 3}))).as_deref(),
            Some("mlx5_0 hca_handle=3")
        );
        assert_eq!(
            rdma_line(
                "mlx5_0",
                &rdma(serde_json::json!({"hcaHandles": 3, "hcaObjects": 9}))
            )
            .as_deref(),
            Some("mlx5_0 hca_handle=3 hca_object=9")
        );
        assert_eq!(rdma_line("mlx5_0", &rdma(serde_json::json!({}))), None);
    }

    #[test]
    fn conversions() {
        assert_eq!(swap_max(-1, 100).unwrap(), "max");
        assert_eq!(swap_max(300, 100).unwrap(), "200");
        assert!(swap_max(50, 100).is_err());
        assert!(swap_max(50, -1).is_err());
        use super::super::{shares_to_weight, weight_to_shares};
        // The values runc's and the kubelet's conversion gives (opencontainers/cgroups).
        for (shares, weight) in [
            (0, 0),
            (1, 1),
            (2, 1),
            (3, 2),
            (102, 17),
            (512, 59),
            (1024, 100),
            (2048, 174),
            (10240, 639),
            (262143, 10000),
            (262144, 10000),
            (262145, 10000),
        ] {
            assert_eq!(shares_to_weight(shares), weight, "{shares} shares");
        }
        for w in 1..=10_000 {
            let s = weight_to_shares(w);
            assert_eq!(shares_to_weight(s), w, "weight {w} → {s} shares");
            assert!(
                s >= 262_144 || shares_to_weight(s + 1) > w,
                "weight {w}: not the most shares"
            );
        }
        // The canonical values come back.
        for s in [2, 1024, 262_144] {
            assert_eq!(weight_to_shares(shares_to_weight(s)), s);
        }
        assert_eq!(super::super::blkio_weight_to_io(10), 1);
        assert_eq!(super::super::blkio_weight_to_io(1000), 10000);
        assert!(check_unified_key("../memory.max", "f").is_err());
        assert!(check_unified_key("..", "f").is_err());
        assert!(check_unified_key("memory.high", "f").is_ok());
        assert!(check_unified_key("cgroup.procs", "f").is_err());
    }
}
