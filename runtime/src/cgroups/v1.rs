//! cgroup v1: one directory per controller. On a hybrid host the unified (v2) mount sits
//! beside them and may hold controllers of its own (hugetlb on this project's hosts); it is
//! used for those and otherwise left alone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::LinuxResources;
use serde_json::{json, Value};

use super::{
    check_blkio_weight, check_cpu, check_limit_vs_usage, check_memory, check_page_size,
    devices::{self, Rule},
    read_keyed, read_trim, read_u64, write_file, Tx,
};
use crate::error::{Error, Result};

#[derive(Debug, Default, Clone)]
pub struct V1 {
    /// Controller name (e.g. "memory", "cpu", "name=systemd") → the container's directory.
    pub dirs: BTreeMap<String, PathBuf>,
    /// The container's directory in the hybrid layout's cgroup2 mount, if any.
    pub unified: Option<PathBuf>,
}

impl V1 {
    fn dir(&self, ctrl: &str, field: &str) -> Result<&Path> {
        self.dirs.get(ctrl).map(|p| p.as_path()).ok_or_else(|| {
            Error::Unsupported(format!(
                "{field}: the cgroup v1 {ctrl} controller is not mounted on this host"
            ))
        })
    }

    pub fn pids_dir(&self) -> Option<PathBuf> {
        ["pids", "freezer", "memory", "cpu", "name=systemd"]
            .iter()
            .find_map(|c| self.dirs.get(*c).cloned())
            .or_else(|| self.dirs.values().next().cloned())
    }

    /// Applies (create) or changes (update) the fields present in `r`, except devices.
    pub fn set(&self, r: &LinuxResources, tx: &mut Tx, updating: bool) -> Result<()> {
        if let Some(m) = r.memory() {
            check_memory(m)?;
            let nz = |v: Option<i64>| v.filter(|&v| v != 0);
            let limit = nz(m.limit());
            let swap = nz(m.swap());
            let any = limit.is_some()
                || swap.is_some()
                || nz(m.reservation()).is_some()
                || nz(m.kernel()).is_some()
                || nz(m.kernel_tcp()).is_some()
                || m.swappiness().is_some()
                || m.disable_oom_killer().is_some();
            if any {
                let d = self.dir("memory", "linux.resources.memory")?;
                let lf = "linux.resources.memory.limit";
                let sf = "linux.resources.memory.swap";
                if updating {
                    if let Some(l) = limit {
                        check_limit_vs_usage(
                            l,
                            read_u64(&d.join("memory.usage_in_bytes")),
                            read_u64(&d.join("memory.limit_in_bytes")),
                        )?;
                    }
                }
                match (limit, swap) {
                    (Some(l), Some(s)) => {
                        // memsw may never be below the memory limit: raise it first, lower
                        // it last.
                        let cur = read_trim(&d.join("memory.limit_in_bytes"))
                            .and_then(|v| v.parse::<i64>().ok())
                            .unwrap_or(i64::MAX);
                        if s == -1 || cur < s {
                            tx.write(d, "memory.memsw.limit_in_bytes", &s.to_string(), sf)?;
                            tx.write(d, "memory.limit_in_bytes", &l.to_string(), lf)?;
                        } else {
                            tx.write(d, "memory.limit_in_bytes", &l.to_string(), lf)?;
                            tx.write(d, "memory.memsw.limit_in_bytes", &s.to_string(), sf)?;
                        }
                    }
                    // Unlimited memory needs unlimited memory+swap first (memsw may never
                    // be below the limit), as runc's update does.
                    (Some(-1), None) if d.join("memory.memsw.limit_in_bytes").exists() => {
                        tx.write(d, "memory.memsw.limit_in_bytes", "-1", sf)?;
                        tx.write(d, "memory.limit_in_bytes", "-1", lf)?;
                    }
                    (Some(l), None) => tx.write(d, "memory.limit_in_bytes", &l.to_string(), lf)?,
                    (None, Some(s)) => {
                        tx.write(d, "memory.memsw.limit_in_bytes", &s.to_string(), sf)?
                    }
                    (None, None) => {}
                }
                if let Some(v) = nz(m.reservation()) {
                    tx.write(
                        d,
                        "memory.soft_limit_in_bytes",
                        &v.to_string(),
                        "linux.resources.memory.reservation",
                    )?;
                }
                if let Some(v) = nz(m.kernel()) {
                    tx.write(
                        d,
                        "memory.kmem.limit_in_bytes",
                        &v.to_string(),
                        "linux.resources.memory.kernel",
                    )?;
                }
                if let Some(v) = nz(m.kernel_tcp()) {
                    tx.write(
                        d,
                        "memory.kmem.tcp.limit_in_bytes",
                        &v.to_string(),
                        "linux.resources.memory.kernelTCP",
                    )?;
                }
                if let Some(v) = m.swappiness() {
                    tx.write(
                        d,
                        "memory.swappiness",
                        &v.to_string(),
                        "linux.resources.memory.swappiness",
                    )?;
                }
                match m.disable_oom_killer() {
                    Some(true) => tx.write(
                        d,
                        "memory.oom_control",
                        "1",
                        "linux.resources.memory.disableOOMKiller",
                    )?,
                    Some(false) if updating => tx.write(
                        d,
                        "memory.oom_control",
                        "0",
                        "linux.resources.memory.disableOOMKiller",
                    )?,
                    _ => {}
                }
            }
        }

        if let Some(c) = r.cpu() {
            check_cpu(c)?;
            let f = |n: &str| format!("linux.resources.cpu.{n}");
            if let Some(v) = c.shares().filter(|&v| v != 0) {
                let d = self.dir("cpu", &f("shares"))?;
                tx.write(d, "cpu.shares", &v.to_string(), &f("shares"))?;
            }
            let period = c.period().filter(|&v| v != 0);
            let quota = c.quota().filter(|&v| v != 0);
            // The kernel refuses a burst above the quota: tried before the quota (a burst
            // lowered with it), written after it when that failed (as runc does).
            let burst_done = c.burst().is_some_and(|b| {
                self.dir("cpu", &f("burst")).is_ok_and(|d| {
                    tx.write(d, "cpu.cfs_burst_us", &b.to_string(), &f("burst"))
                        .is_ok()
                })
            });
            if let (Some(p), Some(q)) = (period, quota) {
                // The kernel checks the quota/period ratio against the parent's on each
                // write: one order can be refused where the other passes (as runc retries).
                let d = self.dir("cpu", &f("period"))?;
                if tx
                    .write(d, "cpu.cfs_period_us", &p.to_string(), &f("period"))
                    .is_ok()
                {
                    tx.write(d, "cpu.cfs_quota_us", &q.to_string(), &f("quota"))?;
                } else {
                    tx.write(d, "cpu.cfs_quota_us", &q.to_string(), &f("quota"))?;
                    tx.write(d, "cpu.cfs_period_us", &p.to_string(), &f("period"))?;
                }
            } else {
                if let Some(v) = period {
                    let d = self.dir("cpu", &f("period"))?;
                    tx.write(d, "cpu.cfs_period_us", &v.to_string(), &f("period"))?;
                }
                if let Some(v) = quota {
                    let d = self.dir("cpu", &f("quota"))?;
                    tx.write(d, "cpu.cfs_quota_us", &v.to_string(), &f("quota"))?;
                }
            }
            if let (Some(v), false) = (c.burst(), burst_done) {
                let d = self.dir("cpu", &f("burst"))?;
                tx.write(d, "cpu.cfs_burst_us", &v.to_string(), &f("burst"))?;
            }
            if let Some(v) = c.realtime_period().filter(|&v| v != 0) {
                let d = self.dir("cpu", &f("realtimePeriod"))?;
                tx.write(d, "cpu.rt_period_us", &v.to_string(), &f("realtimePeriod"))?;
            }
            if let Some(v) = c.realtime_runtime().filter(|&v| v != 0) {
                let d = self.dir("cpu", &f("realtimeRuntime"))?;
                tx.write(
                    d,
                    "cpu.rt_runtime_us",
                    &v.to_string(),
                    &f("realtimeRuntime"),
                )?;
            }
            if let Some(v) = c.idle() {
                let d = self.dir("cpu", &f("idle"))?;
                tx.write(d, "cpu.idle", &v.to_string(), &f("idle"))?;
            }
            if let Some(v) = c.cpus().as_deref().filter(|v| !v.is_empty()) {
                let d = self.dir("cpuset", &f("cpus"))?;
                tx.write(d, "cpuset.cpus", v, &f("cpus"))?;
            }
            if let Some(v) = c.mems().as_deref().filter(|v| !v.is_empty()) {
                let d = self.dir("cpuset", &f("mems"))?;
                tx.write(d, "cpuset.mems", v, &f("mems"))?;
            }
        }

        if let Some(p) = r.pids() {
            let f = "linux.resources.pids.limit";
            let d = self.dir("pids", f)?;
            let v = if p.limit() > 0 {
                p.limit().to_string()
            } else {
                "max".to_string()
            };
            tx.write(d, "pids.max", &v, f)?;
        }

        if let Some(b) = r.block_io() {
            let f = |n: &str| format!("linux.resources.blockIO.{n}");
            let pick = |d: &Path, a: &'static str, b: &'static str| {
                if d.join(a).exists() {
                    a
                } else {
                    b
                }
            };
            if let Some(w) = b.weight().filter(|&w| w != 0) {
                check_blkio_weight(w, &f("weight"))?;
                let d = self.dir("blkio", &f("weight"))?;
                let file = pick(d, "blkio.weight", "blkio.bfq.weight");
                tx.write(d, file, &w.to_string(), &f("weight"))?;
            }
            if let Some(w) = b.leaf_weight().filter(|&w| w != 0) {
                check_blkio_weight(w, &f("leafWeight"))?;
                let d = self.dir("blkio", &f("leafWeight"))?;
                tx.write(d, "blkio.leaf_weight", &w.to_string(), &f("leafWeight"))?;
            }
            for (i, wd) in b.weight_device().iter().flatten().enumerate() {
                let field = f(&format!("weightDevice[{i}]"));
                let d = self.dir("blkio", &field)?;
                if let Some(w) = wd.weight() {
                    check_blkio_weight(w, &format!("{field}.weight"))?;
                    let file = pick(d, "blkio.weight_device", "blkio.bfq.weight_device");
                    let v = format!("{}:{} {w}", wd.major(), wd.minor());
                    tx.write(d, file, &v, &format!("{field}.weight"))?;
                }
                if let Some(w) = wd.leaf_weight() {
                    check_blkio_weight(w, &format!("{field}.leafWeight"))?;
                    let v = format!("{}:{} {w}", wd.major(), wd.minor());
                    tx.write(
                        d,
                        "blkio.leaf_weight_device",
                        &v,
                        &format!("{field}.leafWeight"),
                    )?;
                }
            }
            for (name, file, list) in [
                (
                    "throttleReadBpsDevice",
                    "blkio.throttle.read_bps_device",
                    b.throttle_read_bps_device(),
                ),
                (
                    "throttleWriteBpsDevice",
                    "blkio.throttle.write_bps_device",
                    b.throttle_write_bps_device(),
                ),
                (
                    "throttleReadIOPSDevice",
                    "blkio.throttle.read_iops_device",
                    b.throttle_read_iops_device(),
                ),
                (
                    "throttleWriteIOPSDevice",
                    "blkio.throttle.write_iops_device",
                    b.throttle_write_iops_device(),
                ),
            ] {
                for (i, t) in list.iter().flatten().enumerate() {
                    let field = f(&format!("{name}[{i}]"));
                    let d = self.dir("blkio", &field)?;
                    let v = format!("{}:{} {}", t.major(), t.minor(), t.rate());
                    tx.write(d, file, &v, &field)?;
                }
            }
        }

        for (i, h) in r.hugepage_limits().iter().flatten().enumerate() {
            let field = format!("linux.resources.hugepageLimits[{i}]");
            check_page_size(h.page_size(), &format!("{field}.pageSize"))?;
            if let Some(d) = self.dirs.get("hugetlb") {
                let file = format!("hugetlb.{}.limit_in_bytes", h.page_size());
                tx.write(d, &file, &h.limit().to_string(), &field)?;
                // The reservation limit with it, where the kernel has one (as on v2).
                let rsvd = format!("hugetlb.{}.rsvd.limit_in_bytes", h.page_size());
                if d.join(&rsvd).exists() {
                    tx.write(d, &rsvd, &h.limit().to_string(), &field)?;
                }
            } else {
                let file = format!("hugetlb.{}.max", h.page_size());
                match &self.unified {
                    Some(u) if u.join(&file).exists() => {
                        let v = if h.limit() < 0 {
                            "max".to_string()
                        } else {
                            h.limit().to_string()
                        };
                        tx.write(u, &file, &v, &field)?;
                        let rsvd = format!("hugetlb.{}.rsvd.max", h.page_size());
                        if u.join(&rsvd).exists() {
                            tx.write(u, &rsvd, &v, &field)?;
                        }
                    }
                    _ => {
                        return Err(Error::Unsupported(format!(
                            "{field}: the hugetlb controller is not available to this container (not mounted as v1, not enabled for it on the unified mount)"
                        )))
                    }
                }
            }
        }

        if let Some(n) = r.network() {
            if let Some(id) = n.class_id() {
                let f = "linux.resources.network.classID";
                tx.write(
                    self.dir("net_cls", f)?,
                    "net_cls.classid",
                    &id.to_string(),
                    f,
                )?;
            }
            for (i, p) in n.priorities().iter().flatten().enumerate() {
                let f = format!("linux.resources.network.priorities[{i}]");
                let v = format!("{} {}", p.name(), p.priority());
                tx.write(self.dir("net_prio", &f)?, "net_prio.ifpriomap", &v, &f)?;
            }
        }

        for (dev, l) in r.rdma().iter().flatten() {
            let f = format!("linux.resources.rdma.{dev}");
            let d = self.dir("rdma", &f)?;
            if let Some(line) = super::v2::rdma_line(dev, l) {
                tx.write(d, "rdma.max", &line, &f)?;
            }
        }

        if r.unified().as_ref().is_some_and(|u| !u.is_empty()) {
            return Err(Error::Unsupported(
                "linux.resources.unified: needs cgroup v2; this host runs cgroup v1 controllers"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Device rules: deny everything, then each rule in order (devices.allow/devices.deny).
    pub fn set_devices(&self, rules: &[Rule]) -> Result<()> {
        let f = "linux.resources.devices";
        let d = self.dir("devices", f)?;
        for (file, line) in devices::v1_writes(rules) {
            let p = d.join(file);
            write_file(&p, &line)
                .map_err(|e| Error::os(format!("{f}: write {line:?} to {}", p.display()), e))?;
        }
        Ok(())
    }

    /// Writes FROZEN or THAWED to freezer.state until the kernel reports that state (a
    /// freeze can stay FREEZING while tasks are in uninterruptible sleep).
    pub fn set_freezer(&self, frozen: bool) -> Result<()> {
        let d = self.dir("freezer", "freezer")?;
        let want = if frozen { "FROZEN" } else { "THAWED" };
        let p = d.join("freezer.state");
        for i in 0..1000u64 {
            write_file(&p, want)
                .map_err(|e| Error::os(format!("write {want} to {}", p.display()), e))?;
            if read_trim(&p).as_deref() == Some(want) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(1 + i.min(9)));
        }
        if frozen {
            let _ = write_file(&p, "THAWED");
        }
        Err(Error::Invalid(format!(
            "{} did not reach {want} within 10 s",
            p.display()
        )))
    }

    pub fn is_frozen(&self) -> bool {
        self.dirs
            .get("freezer")
            .and_then(|d| read_trim(&d.join("freezer.state")))
            .is_some_and(|s| s == "FROZEN")
    }

    fn oom_control(&self) -> BTreeMap<String, u64> {
        self.dirs
            .get("memory")
            .map(|d| read_keyed(&d.join("memory.oom_control")))
            .unwrap_or_default()
    }

    pub fn oom_kill_count(&self) -> u64 {
        self.oom_control().get("oom_kill").copied().unwrap_or(0)
    }

    pub fn under_oom(&self) -> bool {
        self.oom_control().get("under_oom").copied().unwrap_or(0) > 0
    }

    /// runc's stats: cpu (cpuacct + cpu.stat), memory, pids, blkio, hugetlb.
    pub fn stats(&self) -> Value {
        let mut cpu = json!({"usage": {"total": 0, "percpu": [], "kernel": 0, "user": 0},
                             "throttling": {"periods": 0, "throttled_periods": 0, "throttled_time": 0}});
        if let Some(d) = self.dirs.get("cpuacct") {
            cpu["usage"]["total"] = read_u64(&d.join("cpuacct.usage")).unwrap_or(0).into();
            let per: Vec<u64> = read_trim(&d.join("cpuacct.usage_percpu"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            cpu["usage"]["percpu"] = per.into();
            // cpuacct.stat counts USER_HZ (100 Hz) ticks; runc reports nanoseconds.
            let st = read_keyed(&d.join("cpuacct.stat"));
            let ns = |k: &str| st.get(k).copied().unwrap_or(0) * 10_000_000;
            cpu["usage"]["user"] = ns("user").into();
            cpu["usage"]["kernel"] = ns("system").into();
        }
        if let Some(d) = self.dirs.get("cpu") {
            let st = read_keyed(&d.join("cpu.stat"));
            let g = |k: &str| st.get(k).copied().unwrap_or(0);
            cpu["throttling"] = json!({"periods": g("nr_periods"),
                "throttled_periods": g("nr_throttled"), "throttled_time": g("throttled_time")});
        }
        let mut memory =
            json!({"cache": 0, "usage": {}, "swap": {}, "kernel": {}, "kernelTCP": {}, "raw": {}});
        if let Some(d) = self.dirs.get("memory") {
            let entry = |prefix: &str| {
                let g = |f: &str| read_u64(&d.join(format!("{prefix}.{f}"))).unwrap_or(0);
                json!({"limit": g("limit_in_bytes"), "usage": g("usage_in_bytes"),
                       "max": g("max_usage_in_bytes"), "failcnt": g("failcnt")})
            };
            let raw = read_keyed(&d.join("memory.stat"));
            memory["cache"] = raw.get("cache").copied().unwrap_or(0).into();
            memory["usage"] = entry("memory");
            memory["swap"] = entry("memory.memsw");
            memory["kernel"] = entry("memory.kmem");
            memory["kernelTCP"] = entry("memory.kmem.tcp");
            memory["raw"] = json!(raw);
        }
        let mut pids = json!({"current": 0, "limit": 0});
        if let Some(d) = self.dirs.get("pids") {
            pids["current"] = read_u64(&d.join("pids.current")).unwrap_or(0).into();
            pids["limit"] = read_u64(&d.join("pids.max")).unwrap_or(0).into();
        }
        let mut blkio = json!({"ioServiceBytesRecursive": [], "ioServicedRecursive": []});
        if let Some(d) = self.dirs.get("blkio") {
            for (key, files) in [
                (
                    "ioServiceBytesRecursive",
                    [
                        "blkio.io_service_bytes_recursive",
                        "blkio.throttle.io_service_bytes_recursive",
                    ],
                ),
                (
                    "ioServicedRecursive",
                    [
                        "blkio.io_serviced_recursive",
                        "blkio.throttle.io_serviced_recursive",
                    ],
                ),
            ] {
                if let Some(text) = files
                    .iter()
                    .find_map(|f| std::fs::read_to_string(d.join(f)).ok())
                {
                    blkio[key] = blkio_entries(&text).into();
                }
            }
        }
        let mut hugetlb = serde_json::Map::new();
        for size in super::hugepage_sizes() {
            if let Some(d) = self.dirs.get("hugetlb") {
                let g = |f: &str| read_u64(&d.join(format!("hugetlb.{size}.{f}"))).unwrap_or(0);
                hugetlb.insert(
                    size.clone(),
                    json!({"usage": g("usage_in_bytes"), "max": g("max_usage_in_bytes"), "failcnt": g("failcnt")}),
                );
            } else if let Some(u) = &self.unified {
                if let Some(cur) = read_u64(&u.join(format!("hugetlb.{size}.current"))) {
                    let ev = read_keyed(&u.join(format!("hugetlb.{size}.events")));
                    hugetlb.insert(
                        size.clone(),
                        json!({"usage": cur, "max": 0, "failcnt": ev.get("max").copied().unwrap_or(0)}),
                    );
                }
            }
        }
        json!({"cpu": cpu, "memory": memory, "pids": pids, "blkio": blkio,
               "hugetlb": hugetlb, "intel_rdt": {}, "network_interfaces": null})
    }
}

/// v1 blkio lines "8:0 Read 4096" (and a final "Total N") → runc's BlkioEntry objects.
fn blkio_entries(text: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() != 3 {
            continue;
        }
        let Some((maj, min)) = f[0].split_once(':') else {
            continue;
        };
        let (Ok(maj), Ok(min), Ok(v)) =
            (maj.parse::<u64>(), min.parse::<u64>(), f[2].parse::<u64>())
        else {
            continue;
        };
        out.push(json!({"major": maj, "minor": min, "op": f[1], "value": v}));
    }
    out
}
