//! CRI metrics and pod sandbox stats: ListMetricDescriptors, ListPodSandboxMetrics,
//! PodSandboxStats and ListPodSandboxStats.
//!
//! Every value is read from the kernel when asked (nothing is cached, so metrics carry
//! timestamp 0 as the CRI asks for live values): the container's cgroups through the runtime
//! library (`rsrun::Runtime::stats`, runc's stats shape, no fork) and the cgroup files beside
//! them, the processes of its cgroup under /proc (threads, file descriptors, sockets, the
//! init's limits), the pod's network namespace's /proc/PID/net/dev, the image store's usage
//! of the writable layer and statvfs(2) of its filesystem.
//!
//! The metric names, label keys and meanings are cAdvisor's (what the kubelet exported before
//! it took them from the CRI). Base labels are cAdvisor's `id`, `name`, `image` and the
//! `pod`, `namespace` and `container` the kubelet added to them (with the CRI it exports the
//! label values as they come: containerd sends pod, namespace and container too, and the
//! queries of dashboards and HPA adapters select on them). Pod-level metrics (the network's)
//! carry the pod's ID, the name "POD" and an empty image and container. A CRI metric value is an unsigned integer: the `*_seconds*`
//! metrics are whole seconds (rounded down; counters stay monotonic).
//!
//! A metric is left out when the kernel has nothing for it (no file, no key, nothing to
//! report): the host's cgroup layout decides. Where the kernel reports "unlimited" a limit is
//! 0, cAdvisor's convention (container_spec_memory_*, container_threads_max).

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tonic::Status;

use crate::api;
use crate::container::{self, CpuSample as Sample};
use crate::runtime_service::Runtime;
use crate::sandbox;
use crate::store::{self, ContainerRecord, SandboxRecord};

const NS_PER_SEC: u64 = 1_000_000_000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Counter,
    Gauge,
}

struct Desc {
    name: &'static str,
    help: &'static str,
    /// Label keys after the base ones.
    extra: &'static [&'static str],
    kind: Kind,
}

/// The label keys every metric starts with.
const BASE: [&str; 6] = ["id", "name", "image", "pod", "namespace", "container"];

const fn counter(name: &'static str, help: &'static str, extra: &'static [&'static str]) -> Desc {
    Desc {
        name,
        help,
        extra,
        kind: Kind::Counter,
    }
}

const fn gauge(name: &'static str, help: &'static str, extra: &'static [&'static str]) -> Desc {
    Desc {
        name,
        help,
        extra,
        kind: Kind::Gauge,
    }
}

const IFACE: &[&str] = &["interface"];
const DEVICE: &[&str] = &["device"];

/// Every metric this server can report (which ones a container gets depends on what its
/// cgroups offer).
const DESCRIPTORS: &[Desc] = &[
    // CPU: cpuacct (v1) or cpu.stat (v2); CFS figures from cpu.stat.
    counter("container_cpu_user_seconds_total", "Cumulative CPU time spent in user mode, in whole seconds.", &[]),
    counter("container_cpu_system_seconds_total", "Cumulative CPU time spent in kernel mode, in whole seconds.", &[]),
    counter("container_cpu_usage_seconds_total", "Cumulative CPU time consumed (all CPUs: cpu=\"total\"), in whole seconds.", &["cpu"]),
    counter("container_cpu_cfs_periods_total", "Number of CFS enforcement periods that have elapsed.", &[]),
    counter("container_cpu_cfs_throttled_periods_total", "Number of CFS periods in which the container was throttled.", &[]),
    counter("container_cpu_cfs_throttled_seconds_total", "Total time the container has been throttled by CFS, in whole seconds.", &[]),
    // Memory: the memory controller.
    gauge("container_memory_cache", "Page cache memory of the container, in bytes.", &[]),
    gauge("container_memory_rss", "Anonymous and swap cache memory of the container (RSS), in bytes.", &[]),
    gauge("container_memory_kernel_usage", "Kernel memory charged to the container, in bytes.", &[]),
    gauge("container_memory_mapped_file", "Memory-mapped file pages of the container, in bytes.", &[]),
    gauge("container_memory_swap", "Swap used by the container, in bytes.", &[]),
    counter("container_memory_failcnt", "Number of times the container's memory usage hit its limit.", &[]),
    gauge("container_memory_usage_bytes", "Current memory usage of the container in bytes, including all memory regardless of when it was accessed.", &[]),
    gauge("container_memory_max_usage_bytes", "Maximum memory usage of the container recorded by the kernel, in bytes.", &[]),
    gauge("container_memory_working_set_bytes", "Working set of the container (usage minus inactive file pages), in bytes.", &[]),
    counter("container_memory_failures_total", "Cumulative count of page faults (failure_type pgfault or pgmajfault) of the container itself (scope container) or with its descendants (scope hierarchy).", &["failure_type", "scope"]),
    // Huge pages: the hugetlb controller.
    gauge("container_hugetlb_usage_bytes", "Current huge page usage of the container, in bytes, per page size.", &["pagesize"]),
    gauge("container_hugetlb_max_usage_bytes", "Maximum huge page usage of the container recorded by the kernel, in bytes, per page size.", &["pagesize"]),
    // Network: the pod's network namespace (pod level).
    counter("container_network_receive_bytes_total", "Cumulative count of bytes received on the interface.", IFACE),
    counter("container_network_receive_packets_total", "Cumulative count of packets received on the interface.", IFACE),
    counter("container_network_receive_packets_dropped_total", "Cumulative count of packets dropped while receiving on the interface.", IFACE),
    counter("container_network_receive_errors_total", "Cumulative count of errors while receiving on the interface.", IFACE),
    counter("container_network_transmit_bytes_total", "Cumulative count of bytes transmitted on the interface.", IFACE),
    counter("container_network_transmit_packets_total", "Cumulative count of packets transmitted on the interface.", IFACE),
    counter("container_network_transmit_packets_dropped_total", "Cumulative count of packets dropped while transmitting on the interface.", IFACE),
    counter("container_network_transmit_errors_total", "Cumulative count of errors while transmitting on the interface.", IFACE),
    // Filesystem: the writable layer's filesystem; I/O from the blkio/io controller.
    gauge("container_fs_inodes_free", "Number of free inodes on the filesystem of the container's writable layer.", DEVICE),
    gauge("container_fs_inodes_total", "Number of inodes on the filesystem of the container's writable layer.", DEVICE),
    gauge("container_fs_limit_bytes", "Number of bytes the container can consume on the filesystem of its writable layer (its size).", DEVICE),
    gauge("container_fs_usage_bytes", "Number of bytes the container's writable layer consumes on its filesystem.", DEVICE),
    counter("container_fs_reads_bytes_total", "Cumulative count of bytes the container read from the block device.", DEVICE),
    counter("container_fs_reads_total", "Cumulative count of reads the container completed on the block device.", DEVICE),
    counter("container_fs_writes_bytes_total", "Cumulative count of bytes the container wrote to the block device.", DEVICE),
    counter("container_fs_writes_total", "Cumulative count of writes the container completed on the block device.", DEVICE),
    counter("container_blkio_device_usage_total", "Cumulative block I/O bytes of the container, per device and operation.", &["device", "major", "minor", "operation"]),
    // OOM kills.
    counter("container_oom_events_total", "Count of processes of the container killed by the OOM killer.", &[]),
    // Processes: the container's cgroup and /proc.
    gauge("container_file_descriptors", "Number of open file descriptors of the container's processes.", &[]),
    gauge("container_processes", "Number of processes running in the container.", &[]),
    gauge("container_sockets", "Number of open sockets of the container's processes.", &[]),
    gauge("container_threads", "Number of threads running in the container.", &[]),
    gauge("container_threads_max", "Maximum number of threads (tasks) allowed in the container; 0 means unlimited.", &[]),
    gauge("container_ulimits_soft", "Soft resource limits of the container's first process (finite ones only).", &["ulimit"]),
    // Spec: the limits in force in the container's cgroup.
    gauge("container_spec_cpu_period", "CPU CFS period of the container, in microseconds.", &[]),
    gauge("container_spec_cpu_quota", "CPU CFS quota of the container per period, in microseconds (absent without a quota).", &[]),
    gauge("container_spec_cpu_shares", "CPU shares of the container (cgroup v2 weight converted to shares).", &[]),
    gauge("container_spec_memory_limit_bytes", "Memory limit of the container in bytes; 0 means unlimited.", &[]),
    gauge("container_spec_memory_reservation_limit_bytes", "Memory reservation (soft limit, memory.low on cgroup v2) of the container in bytes; 0 means none.", &[]),
    gauge("container_spec_memory_swap_limit_bytes", "Memory plus swap limit of the container in bytes; 0 means unlimited.", &[]),
    // Times.
    gauge("container_start_time_seconds", "Start time of the container since the Unix epoch, in seconds.", &[]),
    gauge("container_last_seen", "Last time the container was seen by the runtime, since the Unix epoch in seconds.", &[]),
    // Pressure stall information (the container's cgroup in the v2 hierarchy).
    counter("container_pressure_cpu_waiting_seconds_total", "Total time tasks of the container waited for a CPU (PSI some), in whole seconds.", &[]),
    counter("container_pressure_cpu_stalled_seconds_total", "Total time no task of the container could run for want of CPU (PSI full), in whole seconds.", &[]),
    counter("container_pressure_memory_waiting_seconds_total", "Total time tasks of the container waited for memory (PSI some), in whole seconds.", &[]),
    counter("container_pressure_memory_stalled_seconds_total", "Total time no task of the container could make progress for want of memory (PSI full), in whole seconds.", &[]),
    counter("container_pressure_io_waiting_seconds_total", "Total time tasks of the container waited for I/O (PSI some), in whole seconds.", &[]),
    counter("container_pressure_io_stalled_seconds_total", "Total time no task of the container could make progress for want of I/O (PSI full), in whole seconds.", &[]),
];

fn desc(name: &str) -> &'static Desc {
    DESCRIPTORS
        .iter()
        .find(|d| d.name == name)
        .unwrap_or_else(|| panic!("metric {name} has no descriptor"))
}

/// ListMetricDescriptors.
pub fn descriptors() -> Vec<api::MetricDescriptor> {
    DESCRIPTORS
        .iter()
        .map(|d| api::MetricDescriptor {
            name: d.name.into(),
            help: d.help.into(),
            label_keys: BASE.iter().chain(d.extra).map(|k| k.to_string()).collect(),
        })
        .collect()
}

/// Metrics of one object (a container, or a pod's own).
struct Out {
    base: [String; 6],
    list: Vec<api::Metric>,
}

impl Out {
    /// A container's metrics (`c` Some) or its pod's own (None).
    fn new(sb: &SandboxRecord, c: Option<&ContainerRecord>) -> Out {
        let (id, name, image, container) = match c {
            // The image's name as ContainerStatus.image gives it (its repo tag): the kubelet
            // creates by image ID, which made every series' label a digest.
            Some(c) => (
                c.id.as_str(),
                c.name.as_str(),
                if c.repo_tag.is_empty() {
                    c.image.as_str()
                } else {
                    c.repo_tag.as_str()
                },
                c.name.as_str(),
            ),
            None => (sb.id.as_str(), "POD", "", ""),
        };
        Out {
            base: [id, name, image, &sb.name, &sb.namespace, container].map(String::from),
            list: Vec::new(),
        }
    }

    fn put(&mut self, name: &str, extra: &[&str], value: u64) {
        let d = desc(name);
        debug_assert_eq!(d.extra.len(), extra.len(), "labels of {name}");
        let mut label_values: Vec<String> = self.base.to_vec();
        label_values.extend(extra.iter().map(|s| s.to_string()));
        self.list.push(api::Metric {
            name: d.name.into(),
            // Gathered live.
            timestamp: 0,
            metric_type: match d.kind {
                Kind::Counter => api::MetricType::Counter as i32,
                Kind::Gauge => api::MetricType::Gauge as i32,
            },
            label_values,
            value: Some(api::UInt64Value { value }),
        });
    }

    fn put_opt(&mut self, name: &str, value: Option<u64>) {
        if let Some(v) = value {
            self.put(name, &[], v);
        }
    }
}

// ---- parsing helpers -------------------------------------------------------------------

/// "key value" lines (memory.stat, cpu.stat, memory.events).
fn keyed(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let k = it.next()?;
            let v = it.next()?.parse().ok()?;
            Some((k.to_string(), v))
        })
        .collect()
}

fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

fn read_u64(p: &Path) -> Option<u64> {
    read(p)?.trim().parse().ok()
}

/// A cgroup limit file: a number, "max" (unlimited: None inside Some), or absent (None).
fn read_limit(p: &Path) -> Option<Option<u64>> {
    let s = read(p)?;
    match s.trim() {
        "max" => Some(None),
        v => v.parse().ok().map(Some),
    }
}

/// Memory sizes from the kernel: "unlimited" (v1 reports a page-rounded i64::MAX, v2 "max")
/// becomes 0, cAdvisor's convention.
fn mem_limit(v: Option<u64>) -> u64 {
    match v {
        Some(n) if n < 1 << 62 => n,
        _ => 0,
    }
}

/// One interface of /proc/PID/net/dev.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NetDev {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// /proc/net/dev: two header lines, then "name: 16 counters" (8 receive, 8 transmit).
fn parse_net_dev(text: &str) -> Vec<NetDev> {
    text.lines()
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let n: Vec<u64> = rest
                .split_whitespace()
                .map(|f| f.parse().ok())
                .collect::<Option<_>>()?;
            if n.len() < 16 {
                return None;
            }
            Some(NetDev {
                name: name.trim().to_string(),
                rx_bytes: n[0],
                rx_packets: n[1],
                rx_errors: n[2],
                rx_dropped: n[3],
                tx_bytes: n[8],
                tx_packets: n[9],
                tx_errors: n[10],
                tx_dropped: n[11],
            })
        })
        .collect()
}

/// A PSI file (`cpu.pressure`, ...) as the CRI's PsiStats: its "some" and "full" lines, the
/// averages in percent as the kernel gives them, the totals in nanoseconds (the kernel's are
/// microseconds). None without either line.
fn parse_psi(text: &str) -> Option<api::PsiStats> {
    let line = |kind: &str| {
        let l = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(kind))?;
        let field = |k: &str| {
            l.split_whitespace()
                .find_map(|f| f.strip_prefix(k)?.strip_prefix('='))
        };
        Some(api::PsiData {
            total: field("total")?.parse::<u64>().ok()?.saturating_mul(1000),
            avg10: field("avg10")?.parse().ok()?,
            avg60: field("avg60")?.parse().ok()?,
            avg300: field("avg300")?.parse().ok()?,
        })
    };
    let (some, full) = (line("some"), line("full"));
    (some.is_some() || full.is_some()).then_some(api::PsiStats { full, some })
}

/// The PSI of a cgroup's directory in the v2 hierarchy: CPU, memory, I/O.
#[derive(Default)]
pub(crate) struct Psi {
    pub cpu: Option<api::PsiStats>,
    pub memory: Option<api::PsiStats>,
    pub io: Option<api::PsiStats>,
}

impl Psi {
    pub(crate) fn of(dir: Option<&Path>) -> Psi {
        let Some(d) = dir else {
            return Psi::default();
        };
        let of = |r: &str| read(&d.join(format!("{r}.pressure"))).and_then(|t| parse_psi(&t));
        Psi {
            cpu: of("cpu"),
            memory: of("memory"),
            io: of("io"),
        }
    }

    /// The I/O figures of a container's or pod's stats (the CRI has only PSI there).
    pub(crate) fn io_usage(&self, ts: i64) -> Option<api::IoUsage> {
        self.io.map(|psi| api::IoUsage {
            timestamp: ts,
            psi: Some(psi),
        })
    }
}

/// The container's directory in the v2 hierarchy (see `Psi`), from the runtime's state.
pub(crate) fn container_v2_dir(root: &Path, id: &str) -> Option<PathBuf> {
    runtime_state(root, id).and_then(|(_, cg)| cg.unified().map(Path::to_path_buf))
}

/// /proc/PID/limits: (name as cAdvisor spells it, e.g. "max_open_files", soft limit; None
/// when unlimited).
fn parse_limits(text: &str) -> Vec<(String, Option<u64>)> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            // "Max open files            1024                 1048576              files"
            // The name is the text before the first run of two spaces.
            let (name, rest) = l.split_once("  ")?;
            let soft = rest.split_whitespace().next()?;
            let soft = if soft == "unlimited" {
                None
            } else {
                Some(soft.parse().ok()?)
            };
            Some((name.trim().to_lowercase().replace(' ', "_"), soft))
        })
        .collect()
}

/// The `Threads:` of /proc/PID/status.
fn parse_threads(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
}

/// cgroup v2 cpu.max: (quota or None for "max", period).
fn parse_cpu_max(text: &str) -> Option<(Option<u64>, u64)> {
    let mut it = text.split_whitespace();
    let q = it.next()?;
    let period = it.next()?.parse().ok()?;
    let quota = if q == "max" {
        None
    } else {
        Some(q.parse().ok()?)
    };
    Some((quota, period))
}

/// The mount source of the filesystem with device `maj:min` (/proc/self/mountinfo).
fn mount_source(mountinfo: &str, maj: u64, min: u64) -> Option<String> {
    let want = format!("{maj}:{min}");
    mountinfo.lines().find_map(|l| {
        let mut f = l.split(' ');
        if f.nth(2)? != want {
            return None;
        }
        let (_, after) = l.split_once(" - ")?;
        after.split(' ').nth(1).map(str::to_string)
    })
}

/// A block device's name: /dev/NAME from sysfs, else "maj:min".
fn block_device(maj: u64, min: u64) -> String {
    read(Path::new(&format!("/sys/dev/block/{maj}:{min}/uevent")))
        .and_then(|u| {
            u.lines()
                .find_map(|l| l.strip_prefix("DEVNAME="))
                .map(|d| format!("/dev/{d}"))
        })
        .unwrap_or_else(|| format!("{maj}:{min}"))
}

fn now_secs() -> u64 {
    (store::now_ns().max(0) as u64) / NS_PER_SEC
}

// ---- per-container collection ------------------------------------------------------------

/// The filesystem of a writable layer.
struct FsInfo {
    device: String,
    inodes: u64,
    inodes_free: u64,
    size: u64,
}

fn fs_info(mountpoint: &Path) -> Option<FsInfo> {
    let m = std::fs::metadata(mountpoint).ok()?;
    let (maj, min) = (
        nix::sys::stat::major(m.dev()),
        nix::sys::stat::minor(m.dev()),
    );
    let device = read(Path::new("/proc/self/mountinfo"))
        .and_then(|mi| mount_source(&mi, maj, min))
        .unwrap_or_else(|| format!("{maj}:{min}"));
    let v = nix::sys::statvfs::statvfs(mountpoint).ok()?;
    Some(FsInfo {
        device,
        inodes: v.files() as u64,
        inodes_free: v.files_free() as u64,
        size: (v.blocks() as u64).saturating_mul(v.fragment_size() as u64),
    })
}

/// What a collection shares between containers: the runtime, the image store and the
/// filesystems already looked at.
struct Ctx<'a> {
    rt: &'a rsrun::Runtime,
    root: &'a Path,
    images: &'a rsrun_image::ImageStore,
    fs: HashMap<PathBuf, Option<FsInfo>>,
    now: u64,
}

/// The container's cgroup directories.
enum Cgroup {
    V1 {
        dirs: BTreeMap<String, PathBuf>,
        unified: Option<PathBuf>,
    },
    V2(PathBuf),
}

impl Cgroup {
    /// The directory holding `ctrl`'s files.
    fn dir(&self, ctrl: &str) -> Option<&Path> {
        match self {
            Cgroup::V1 { dirs, .. } => dirs.get(ctrl).map(PathBuf::as_path),
            Cgroup::V2(d) => Some(d),
        }
    }

    /// The directory in the v2 hierarchy (PSI lives there, also on a hybrid host).
    fn unified(&self) -> Option<&Path> {
        match self {
            Cgroup::V1 { unified, .. } => unified.as_deref(),
            Cgroup::V2(d) => Some(d),
        }
    }

    fn v2(&self) -> bool {
        matches!(self, Cgroup::V2(_))
    }
}

/// The container's init PID and cgroup, from the runtime's state.
fn runtime_state(root: &Path, id: &str) -> Option<(i32, Cgroup)> {
    let saved = rsrun::state::ContainerDir::new(root, id)
        .ok()?
        .load()
        .ok()??;
    let cg = match rsrun::cgroups::Manager::new(&saved.cgroup_paths).ok()? {
        rsrun::cgroups::Manager::V1(m) => Cgroup::V1 {
            dirs: m.dirs,
            unified: m.unified,
        },
        rsrun::cgroups::Manager::V2(m) => Cgroup::V2(m.dir),
    };
    Some((saved.pid, cg))
}

/// Every metric of one live container; None when it is not running (no cgroup to read).
fn container_metrics(
    cx: &mut Ctx,
    sb: &SandboxRecord,
    r: &ContainerRecord,
) -> Option<Vec<api::Metric>> {
    let v = cx.rt.stats(&r.id).ok()?;
    let (init, cg) = runtime_state(cx.root, &r.id)?;
    let mut o = Out::new(sb, Some(r));
    cpu(&mut o, &v, &cg);
    memory(&mut o, &v, &cg);
    hugetlb(&mut o, &v, &cg);
    blkio(&mut o, &v);
    processes(&mut o, cx.rt, &r.id, init, &cg);
    spec(&mut o, &cg);
    pressure(&mut o, &cg);
    o.put_opt(
        "container_oom_events_total",
        cx.rt.oom_kill_count(&r.id).ok(),
    );
    if let Ok(u) = cx.images.container_usage(&r.id) {
        let info = cx
            .fs
            .entry(u.mountpoint.clone())
            .or_insert_with(|| fs_info(&u.mountpoint));
        if let Some(f) = info {
            let d = [f.device.as_str()];
            o.put("container_fs_usage_bytes", &d, u.used_bytes);
            o.put("container_fs_inodes_total", &d, f.inodes);
            o.put("container_fs_inodes_free", &d, f.inodes_free);
            o.put("container_fs_limit_bytes", &d, f.size);
        }
    }
    let start = if r.started_at > 0 {
        r.started_at
    } else {
        r.created_at
    };
    o.put(
        "container_start_time_seconds",
        &[],
        start.max(0) as u64 / NS_PER_SEC,
    );
    o.put("container_last_seen", &[], cx.now);
    Some(o.list)
}

fn cpu(o: &mut Out, v: &Value, cg: &Cgroup) {
    let usage = &v["cpu"]["usage"];
    o.put_opt(
        "container_cpu_user_seconds_total",
        usage["user"].as_u64().map(|n| n / NS_PER_SEC),
    );
    o.put_opt(
        "container_cpu_system_seconds_total",
        usage["kernel"].as_u64().map(|n| n / NS_PER_SEC),
    );
    // One figure, cpu="total", as the kubelet's cAdvisor reports it (per-CPU figures are
    // off there, and each would be rounded down to whole seconds on its own).
    o.put_opt_l(
        "container_cpu_usage_seconds_total",
        &["total"],
        usage["total"].as_u64().map(|n| n / NS_PER_SEC),
    );
    // CFS: cpu.stat of the cpu controller (v1: throttled_time in ns; v2: throttled_usec).
    if let Some(st) = cg.dir("cpu").and_then(|d| read(&d.join("cpu.stat"))) {
        let st = keyed(&st);
        o.put_opt(
            "container_cpu_cfs_periods_total",
            st.get("nr_periods").copied(),
        );
        o.put_opt(
            "container_cpu_cfs_throttled_periods_total",
            st.get("nr_throttled").copied(),
        );
        let throttled = st
            .get("throttled_time")
            .map(|ns| ns / NS_PER_SEC)
            .or_else(|| st.get("throttled_usec").map(|us| us / 1_000_000));
        o.put_opt("container_cpu_cfs_throttled_seconds_total", throttled);
    }
}

fn memory(o: &mut Out, v: &Value, cg: &Cgroup) {
    let Some(dir) = cg.dir("memory") else {
        return;
    };
    let mem = &v["memory"];
    let raw = &mem["raw"];
    let pick = |keys: &[&str]| keys.iter().find_map(|k| raw[*k].as_u64());
    let v2 = cg.v2();
    // v1 memory.stat: the cgroup's own figures and total_* ones with its descendants; a
    // container has no descendants, the total_* are preferred as cAdvisor does. v2's
    // memory.stat is hierarchical.
    o.put_opt("container_memory_cache", pick(&["total_cache", "file"]));
    o.put_opt("container_memory_rss", pick(&["total_rss", "anon"]));
    o.put_opt(
        "container_memory_mapped_file",
        pick(&["total_mapped_file", "file_mapped"]),
    );
    let usage = mem["usage"]["usage"].as_u64();
    o.put_opt("container_memory_usage_bytes", usage);
    if let Some(u) = usage {
        let inactive = pick(&["total_inactive_file", "inactive_file"]).unwrap_or(0);
        o.put(
            "container_memory_working_set_bytes",
            &[],
            u.saturating_sub(inactive),
        );
    }
    if v2 {
        o.put_opt("container_memory_kernel_usage", pick(&["kernel"]));
        // Swap accounting: memory.swap.current (absent without it).
        o.put_opt(
            "container_memory_swap",
            read_u64(&dir.join("memory.swap.current")),
        );
        // memory.events "max": times the usage hit memory.max.
        o.put_opt(
            "container_memory_failcnt",
            read(&dir.join("memory.events")).and_then(|e| keyed(&e).get("max").copied()),
        );
        // memory.peak (kernel 5.19 and later).
        o.put_opt(
            "container_memory_max_usage_bytes",
            read_u64(&dir.join("memory.peak")),
        );
    } else {
        o.put_opt(
            "container_memory_kernel_usage",
            read_u64(&dir.join("memory.kmem.usage_in_bytes")),
        );
        // memory.stat has swap figures only with swap accounting.
        o.put_opt("container_memory_swap", pick(&["total_swap", "swap"]));
        o.put_opt("container_memory_failcnt", mem["usage"]["failcnt"].as_u64());
        o.put_opt(
            "container_memory_max_usage_bytes",
            mem["usage"]["max"].as_u64(),
        );
    }
    // Page faults. v1: pgfault is the cgroup's own, total_pgfault with descendants; v2's
    // counters always include descendants (a container has none: the same number).
    for (kind, own, total) in [
        ("pgfault", "pgfault", "total_pgfault"),
        ("pgmajfault", "pgmajfault", "total_pgmajfault"),
    ] {
        let own_v = raw[own].as_u64();
        let total_v = if v2 { own_v } else { raw[total].as_u64() };
        if let Some(n) = own_v {
            o.put("container_memory_failures_total", &[kind, "container"], n);
        }
        if let Some(n) = total_v {
            o.put("container_memory_failures_total", &[kind, "hierarchy"], n);
        }
    }
}

fn hugetlb(o: &mut Out, v: &Value, cg: &Cgroup) {
    let Some(sizes) = v["hugetlb"].as_object() else {
        return;
    };
    // The maximum is recorded by the v1 controller only (v2 has no max_usage file).
    let v1_max = matches!(cg, Cgroup::V1 { dirs, .. } if dirs.contains_key("hugetlb"));
    for (size, h) in sizes {
        o.put_opt_l(
            "container_hugetlb_usage_bytes",
            &[size],
            h["usage"].as_u64(),
        );
        if v1_max {
            o.put_opt_l(
                "container_hugetlb_max_usage_bytes",
                &[size],
                h["max"].as_u64(),
            );
        }
    }
}

fn blkio(o: &mut Out, v: &Value) {
    let entries = |k: &str| -> Vec<(u64, u64, String, u64)> {
        v["blkio"][k]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| {
                        Some((
                            e["major"].as_u64()?,
                            e["minor"].as_u64()?,
                            e["op"].as_str()?.to_string(),
                            e["value"].as_u64()?,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut names: HashMap<(u64, u64), String> = HashMap::new();
    let mut name = |maj: u64, min: u64| {
        names
            .entry((maj, min))
            .or_insert_with(|| block_device(maj, min))
            .clone()
    };
    for (maj, min, op, n) in entries("ioServiceBytesRecursive") {
        let dev = name(maj, min);
        o.put(
            "container_blkio_device_usage_total",
            &[&dev, &maj.to_string(), &min.to_string(), &op],
            n,
        );
        match op.as_str() {
            "Read" => o.put("container_fs_reads_bytes_total", &[&dev], n),
            "Write" => o.put("container_fs_writes_bytes_total", &[&dev], n),
            _ => {}
        }
    }
    for (maj, min, op, n) in entries("ioServicedRecursive") {
        let dev = name(maj, min);
        match op.as_str() {
            "Read" => o.put("container_fs_reads_total", &[&dev], n),
            "Write" => o.put("container_fs_writes_total", &[&dev], n),
            _ => {}
        }
    }
}

/// Processes, threads, file descriptors and sockets of every process in the container's
/// cgroup; the pids controller's limit; the init's soft limits.
fn processes(o: &mut Out, rt: &rsrun::Runtime, id: &str, init: i32, cg: &Cgroup) {
    let Ok(pids) = rt.processes(id) else {
        return;
    };
    let (mut threads, mut fds, mut sockets) = (0u64, 0u64, 0u64);
    for pid in &pids {
        threads += read(Path::new(&format!("/proc/{pid}/status")))
            .and_then(|s| parse_threads(&s))
            .unwrap_or(0);
        if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
            for e in rd.flatten() {
                fds += 1;
                if std::fs::read_link(e.path())
                    .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
                {
                    sockets += 1;
                }
            }
        }
    }
    o.put("container_processes", &[], pids.len() as u64);
    o.put("container_threads", &[], threads);
    o.put("container_file_descriptors", &[], fds);
    o.put("container_sockets", &[], sockets);
    if let Some(max) = cg.dir("pids").and_then(|d| read_limit(&d.join("pids.max"))) {
        o.put("container_threads_max", &[], max.unwrap_or(0));
    }
    if init > 0 {
        if let Some(l) = read(Path::new(&format!("/proc/{init}/limits"))) {
            for (name, soft) in parse_limits(&l) {
                // CRI values are unsigned: an unlimited one has no number to give.
                if let Some(s) = soft {
                    o.put("container_ulimits_soft", &[&name], s);
                }
            }
        }
    }
}

/// The limits in force, read back from the cgroup.
fn spec(o: &mut Out, cg: &Cgroup) {
    if let Some(d) = cg.dir("cpu") {
        if cg.v2() {
            if let Some((quota, period)) = read(&d.join("cpu.max")).and_then(|s| parse_cpu_max(&s))
            {
                o.put("container_spec_cpu_period", &[], period);
                o.put_opt("container_spec_cpu_quota", quota);
            }
            o.put_opt(
                "container_spec_cpu_shares",
                read_u64(&d.join("cpu.weight")).map(rsrun::cgroups::weight_to_shares),
            );
        } else {
            o.put_opt(
                "container_spec_cpu_period",
                read_u64(&d.join("cpu.cfs_period_us")),
            );
            // -1: no quota.
            if let Some(q) = read(&d.join("cpu.cfs_quota_us"))
                .and_then(|s| s.trim().parse::<i64>().ok())
                .filter(|q| *q > 0)
            {
                o.put("container_spec_cpu_quota", &[], q as u64);
            }
            o.put_opt("container_spec_cpu_shares", read_u64(&d.join("cpu.shares")));
        }
    }
    if let Some(d) = cg.dir("memory") {
        if cg.v2() {
            let max = read_limit(&d.join("memory.max"));
            if let Some(m) = max {
                o.put("container_spec_memory_limit_bytes", &[], mem_limit(m));
            }
            if let Some(low) = read_limit(&d.join("memory.low")) {
                o.put(
                    "container_spec_memory_reservation_limit_bytes",
                    &[],
                    mem_limit(low),
                );
            }
            // As v1's memsw limit (and the CRI's memory_swap_limit_in_bytes): memory plus
            // swap; unlimited if either is.
            if let (Some(m), Some(s)) = (max, read_limit(&d.join("memory.swap.max"))) {
                let both = m.zip(s).map(|(m, s)| m.saturating_add(s));
                o.put(
                    "container_spec_memory_swap_limit_bytes",
                    &[],
                    mem_limit(both),
                );
            }
        } else {
            for (metric, file) in [
                ("container_spec_memory_limit_bytes", "memory.limit_in_bytes"),
                (
                    "container_spec_memory_reservation_limit_bytes",
                    "memory.soft_limit_in_bytes",
                ),
                (
                    "container_spec_memory_swap_limit_bytes",
                    "memory.memsw.limit_in_bytes",
                ),
            ] {
                if let Some(n) = read_u64(&d.join(file)) {
                    o.put(metric, &[], mem_limit(Some(n)));
                }
            }
        }
    }
}

/// PSI of the container's cgroup in the v2 hierarchy (cpu.pressure, memory.pressure,
/// io.pressure), in whole seconds.
fn pressure(o: &mut Out, cg: &Cgroup) {
    let psi = Psi::of(cg.unified());
    for (r, p) in [("cpu", psi.cpu), ("memory", psi.memory), ("io", psi.io)] {
        let Some(p) = p else { continue };
        let secs = |d: Option<api::PsiData>| d.map(|d| d.total / NS_PER_SEC);
        o.put_opt(
            &format!("container_pressure_{r}_waiting_seconds_total"),
            secs(p.some),
        );
        o.put_opt(
            &format!("container_pressure_{r}_stalled_seconds_total"),
            secs(p.full),
        );
    }
}

impl Out {
    fn put_opt_l(&mut self, name: &str, extra: &[&str], value: Option<u64>) {
        if let Some(v) = value {
            self.put(name, extra, v);
        }
    }
}

// ---- the pod's network -------------------------------------------------------------------

/// The interfaces of the pod's network namespace (None for a pod on the node's network).
/// Read from /proc/PID/net/dev of a process inside it (the pause or a container's init,
/// checked against the pinned namespace), else by a short-lived thread that enters it.
fn pod_net_dev(sb: &SandboxRecord, pids: &[i32]) -> Option<Vec<NetDev>> {
    let ns = sandbox::ns_path(sb, "net")?;
    let m = std::fs::metadata(&ns).ok()?;
    let want = (m.dev(), m.ino());
    let text = pids
        .iter()
        .filter(|p| **p > 0)
        .find(|p| {
            std::fs::metadata(format!("/proc/{p}/ns/net")).is_ok_and(|m| (m.dev(), m.ino()) == want)
        })
        .and_then(|p| read(Path::new(&format!("/proc/{p}/net/dev"))))
        .or_else(|| {
            let f = std::fs::File::open(&ns).ok()?;
            // The thread ends in that namespace: nothing else runs there on this side.
            std::thread::spawn(move || {
                nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
                read(Path::new("/proc/thread-self/net/dev"))
            })
            .join()
            .ok()?
        })?;
    // Loopback is the pod's own business (cAdvisor leaves it out too).
    Some(
        parse_net_dev(&text)
            .into_iter()
            .filter(|d| d.name != "lo")
            .collect(),
    )
}

/// The PIDs that may be inside the pod's network namespace: the pause's and the containers'
/// inits.
fn pod_pids(root: &Path, sb: &SandboxRecord, ctrs: &[ContainerRecord]) -> Vec<i32> {
    let mut pids: Vec<i32> = Vec::new();
    if !sb.pause_id.is_empty() {
        if let Some(Ok(Some(s))) = rsrun::state::ContainerDir::new(root, &sb.pause_id)
            .ok()
            .map(|d| d.load())
        {
            pids.push(s.pid);
        }
    }
    // a container whose create waits for its start has no process yet (pid 0)
    pids.extend(ctrs.iter().map(|c| c.pid).filter(|p| *p > 0));
    pids
}

fn network_metrics(sb: &SandboxRecord, devs: &[NetDev]) -> Vec<api::Metric> {
    let mut o = Out::new(sb, None);
    for d in devs {
        let i = [d.name.as_str()];
        o.put("container_network_receive_bytes_total", &i, d.rx_bytes);
        o.put("container_network_receive_packets_total", &i, d.rx_packets);
        o.put(
            "container_network_receive_packets_dropped_total",
            &i,
            d.rx_dropped,
        );
        o.put("container_network_receive_errors_total", &i, d.rx_errors);
        o.put("container_network_transmit_bytes_total", &i, d.tx_bytes);
        o.put("container_network_transmit_packets_total", &i, d.tx_packets);
        o.put(
            "container_network_transmit_packets_dropped_total",
            &i,
            d.tx_dropped,
        );
        o.put("container_network_transmit_errors_total", &i, d.tx_errors);
    }
    o.list
}

// ---- pod stats ---------------------------------------------------------------------------

fn iface_usage(d: &NetDev) -> api::NetworkInterfaceUsage {
    let u = |value| Some(api::UInt64Value { value });
    api::NetworkInterfaceUsage {
        name: d.name.clone(),
        rx_bytes: u(d.rx_bytes),
        rx_errors: u(d.rx_errors),
        tx_bytes: u(d.tx_bytes),
        tx_errors: u(d.tx_errors),
    }
}

/// The pod's interfaces as NetworkUsage: eth0 (else the first one) is the default, and every
/// one is in the list, the default too. (The proto's comment says the list excludes the
/// default; containerd lists it, and the kubelet's summary from cAdvisor did: consumers of the
/// summary that add up the list would lose eth0.)
fn network_usage(devs: &[NetDev], ts: i64) -> Option<api::NetworkUsage> {
    let default = devs
        .iter()
        .position(|d| d.name == "eth0")
        .or(if devs.is_empty() { None } else { Some(0) })?;
    Some(api::NetworkUsage {
        timestamp: ts,
        default_interface: Some(iface_usage(&devs[default])),
        interfaces: devs.iter().map(iface_usage).collect(),
    })
}

fn add(acc: &mut Option<u64>, v: Option<&api::UInt64Value>) {
    if let Some(v) = v {
        *acc = Some(acc.unwrap_or(0) + v.value);
    }
}

/// The stats of the pod's own cgroup, its cgroup_parent (the kubelet makes one per pod; a
/// parent that other pods share is not the pod's and gives None): they count every process
/// the pod had, those of containers that exited (whose cgroups are gone) included, and carry
/// the pod's memory limit.
pub(crate) fn pod_cgroup_stats(
    parent: &str,
    systemd: bool,
    hs: &[rsrun::cgroups::Hierarchy],
) -> Option<(Value, Psi)> {
    let paths = if systemd {
        let slice = parent.trim_end_matches('/').rsplit('/').next()?;
        let mount = &hs.iter().find(|h| h.v2)?.mountpoint;
        vec![mount.join(rsrun::cgroups::systemd::slice_path(slice).ok()?)]
    } else {
        // (Refuses a parent that holds the server itself, or a hierarchy's root.)
        rsrun::cgroups::paths_for(Some(Path::new(parent)), "", hs).ok()?
    };
    let paths: Vec<PathBuf> = paths.into_iter().filter(|p| p.is_dir()).collect();
    let m = rsrun::cgroups::Manager::with_hierarchies(&paths, hs).ok()?;
    Some((m.stats(), Psi::of(m.v2_dir())))
}

/// A pod's stats: its containers' (container::stats); the pod's CPU and memory from its own
/// cgroup's stats (`own`: of its cgroup_parent when no other pod shares it), else as the sum of
/// its containers' and its pause's cgroups; its processes; its network namespace's
/// interfaces. Returns the CPU samples taken (for nano-cores next time).
fn pod_stats(
    rt: &rsrun::Runtime,
    root: &Path,
    images: &rsrun_image::ImageStore,
    sb: &SandboxRecord,
    own: Option<&(Value, Psi)>,
    ctrs: &[(ContainerRecord, Option<Sample>)],
    last_pod: Option<Sample>,
) -> (api::PodSandboxStats, Vec<(String, Sample)>) {
    let ts = store::now_ns();
    let mut samples = Vec::new();
    let mut containers = Vec::new();
    let mut live = Vec::new();
    for (r, last) in ctrs {
        if container::state(r).0 == api::ContainerState::ContainerExited as i32 {
            continue;
        }
        let (s, sample) = container::stats(rt, images, r, *last);
        if let Some(x) = sample {
            samples.push((r.id.clone(), x));
        }
        containers.push(s);
        live.push(r.clone());
    }
    // The pause's cgroup counts for the pod too (it is no CRI container).
    let mut parts: Vec<api::ContainerStats> = containers.clone();
    let mut ids: Vec<&str> = live.iter().map(|r| r.id.as_str()).collect();
    if !sb.pause_id.is_empty() && sb.ready {
        let pause = ContainerRecord {
            id: sb.pause_id.clone(),
            ..Default::default()
        };
        parts.push(container::stats(rt, images, &pause, None).0);
        ids.push(&sb.pause_id);
    }
    let (mut cpu, mut ws, mut usage, mut rss, mut pf, mut majpf) =
        (None, None, None, None, None, None);
    for p in &parts {
        if let Some(c) = &p.cpu {
            add(&mut cpu, c.usage_core_nano_seconds.as_ref());
        }
        if let Some(m) = &p.memory {
            add(&mut ws, m.working_set_bytes.as_ref());
            add(&mut usage, m.usage_bytes.as_ref());
            add(&mut rss, m.rss_bytes.as_ref());
            add(&mut pf, m.page_faults.as_ref());
            add(&mut majpf, m.major_page_faults.as_ref());
        }
    }
    // The pod's own cgroup, where there is one: a sum of the live containers' would go
    // backwards when one exits (the kubelet's pod CPU counter, as containerd reads the pod's
    // cgroup), and has no limit to tell what is available.
    let mut available = None;
    // PSI only from the pod's own cgroup: stall times of its containers do not add up.
    let psi = own.map(|(_, p)| p);
    let own = own
        .map(|(v, _)| container::CgroupUsage::of(v))
        .unwrap_or_default();
    if own.cpu_total.is_some() {
        cpu = own.cpu_total;
    }
    if own.usage.is_some() {
        (ws, usage, rss, pf, majpf) = (
            own.working_set,
            own.usage,
            own.rss,
            own.page_faults,
            own.major_page_faults,
        );
        available = own.available;
    }
    let u = |o: Option<u64>| o.map(|value| api::UInt64Value { value });
    let pod_sample = cpu.map(|c| Sample::next(last_pod, ts, c));
    let nano_cores = pod_sample.and_then(|s| s.rate);
    if let Some(s) = pod_sample {
        samples.push((pod_key(&sb.id), s));
    }
    let mut procs = None;
    for id in &ids {
        if let Ok(p) = rt.processes(id) {
            procs = Some(procs.unwrap_or(0) + p.len() as u64);
        }
    }
    let net = if sb.ready {
        pod_net_dev(sb, &pod_pids(root, sb, &live)).and_then(|d| network_usage(&d, ts))
    } else {
        None
    };
    let stats = api::PodSandboxStats {
        attributes: Some(api::PodSandboxAttributes {
            id: sb.id.clone(),
            metadata: Some(sandbox::meta(sb)),
            labels: sb.labels.clone(),
            annotations: sb.annotations.clone(),
        }),
        linux: Some(api::LinuxPodSandboxStats {
            cpu: cpu.map(|_| api::CpuUsage {
                timestamp: ts,
                usage_core_nano_seconds: u(cpu),
                usage_nano_cores: u(nano_cores),
                psi: psi.and_then(|p| p.cpu),
            }),
            memory: usage.map(|_| api::MemoryUsage {
                timestamp: ts,
                working_set_bytes: u(ws),
                available_bytes: u(available),
                usage_bytes: u(usage),
                rss_bytes: u(rss),
                page_faults: u(pf),
                major_page_faults: u(majpf),
                psi: psi.and_then(|p| p.memory),
            }),
            network: net,
            process: procs.map(|n| api::ProcessUsage {
                timestamp: ts,
                process_count: u(Some(n)),
            }),
            containers,
            io: psi.and_then(|p| p.io_usage(ts)),
        }),
        windows: None,
    };
    (stats, samples)
}

/// A pod to take stats of: its record, its last CPU sample, its containers with theirs.
type PodWork = (
    SandboxRecord,
    Option<Sample>,
    Vec<(ContainerRecord, Option<Sample>)>,
);

/// The key of a pod's CPU sample in `cpu_samples` (beside the containers' IDs).
pub(crate) fn pod_key(id: &str) -> String {
    format!("pod/{id}")
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("blocking task: {e}")))
}

impl Runtime {
    /// ListPodSandboxMetrics: every ready pod, its network (pod level) and its live
    /// containers.
    pub async fn pod_sandbox_metrics(&self) -> Result<Vec<api::PodSandboxMetrics>, Status> {
        let pods: Vec<SandboxRecord> = self.ready_pods().await;
        let ctrs: Vec<ContainerRecord> = self
            .containers
            .lock()
            .await
            .items
            .values()
            .filter(|c| c.complete && pods.iter().any(|p| p.id == c.sandbox_id))
            .cloned()
            .collect();
        let rt = rsrun::Runtime::new(self.runtime_root.clone(), false);
        let root = self.runtime_root.clone();
        let images = self.images.clone();
        blocking(move || {
            let mut cx = Ctx {
                rt: &rt,
                root: &root,
                images: &images,
                fs: HashMap::new(),
                now: now_secs(),
            };
            pods.iter()
                .map(|sb| {
                    let mine: Vec<ContainerRecord> = ctrs
                        .iter()
                        .filter(|c| c.sandbox_id == sb.id)
                        .cloned()
                        .collect();
                    let container_metrics = mine
                        .iter()
                        .filter(|c| {
                            container::state(c).0 != api::ContainerState::ContainerExited as i32
                        })
                        .filter_map(|c| {
                            container_metrics(&mut cx, sb, c).map(|metrics| api::ContainerMetrics {
                                container_id: c.id.clone(),
                                metrics,
                            })
                        })
                        .collect();
                    let metrics = pod_net_dev(sb, &pod_pids(&root, sb, &mine))
                        .map(|d| network_metrics(sb, &d))
                        .unwrap_or_default();
                    api::PodSandboxMetrics {
                        pod_sandbox_id: sb.id.clone(),
                        metrics,
                        container_metrics,
                    }
                })
                .collect()
        })
        .await
    }

    /// PodSandboxStats: NotFound for an unknown pod.
    pub async fn pod_stats_of(&self, id: &str) -> Result<api::PodSandboxStats, Status> {
        if id.is_empty() {
            return Err(Status::invalid_argument("pod_sandbox_id is required"));
        }
        let sb = {
            let t = self.sandboxes.lock().await;
            let m: Vec<&SandboxRecord> = t
                .items
                .values()
                .filter(|s| s.complete && s.id.starts_with(id))
                .collect();
            match m.as_slice() {
                [one] => (*one).clone(),
                [] => return Err(Status::not_found(format!("pod sandbox {id} not found"))),
                _ => {
                    return Err(Status::invalid_argument(format!(
                        "pod sandbox ID prefix {id} is ambiguous"
                    )))
                }
            }
        };
        let mut all = self.stats_of_pods(vec![sb]).await?;
        all.pop()
            .ok_or_else(|| Status::internal("no stats for the pod sandbox"))
    }

    /// ListPodSandboxStats: the ready pods that pass the filter (ID prefix, labels).
    pub async fn list_pod_stats(
        &self,
        f: Option<api::PodSandboxStatsFilter>,
    ) -> Result<Vec<api::PodSandboxStats>, Status> {
        let f = f.unwrap_or_default();
        let pods: Vec<SandboxRecord> = self
            .sandboxes
            .lock()
            .await
            .items
            .values()
            .filter(|s| {
                s.complete
                    && s.ready
                    && (f.id.is_empty() || s.id.starts_with(&f.id))
                    && f.label_selector
                        .iter()
                        .all(|(k, v)| s.labels.get(k) == Some(v))
            })
            .cloned()
            .collect();
        self.stats_of_pods(pods).await
    }

    async fn stats_of_pods(
        &self,
        pods: Vec<SandboxRecord>,
    ) -> Result<Vec<api::PodSandboxStats>, Status> {
        let ctrs: Vec<ContainerRecord> = self
            .containers
            .lock()
            .await
            .items
            .values()
            .filter(|c| c.complete && pods.iter().any(|p| p.id == c.sandbox_id))
            .cloned()
            .collect();
        let work: Vec<PodWork> = {
            let m = self.cpu_samples.lock().unwrap_or_else(|e| e.into_inner());
            pods.into_iter()
                .map(|sb| {
                    let mine = ctrs
                        .iter()
                        .filter(|c| c.sandbox_id == sb.id)
                        .map(|c| (c.clone(), m.get(&c.id).copied()))
                        .collect();
                    let last = m.get(&pod_key(&sb.id)).copied();
                    (sb, last, mine)
                })
                .collect()
        };
        // Cgroup parents that more than one ready pod names are no pod's own (a pod's
        // not-ready predecessor, which the kubelet removes later, keeps its parent).
        let shared: std::collections::HashSet<String> = {
            let t = self.sandboxes.lock().await;
            let mut seen = std::collections::HashSet::new();
            t.items
                .values()
                .filter(|s| s.complete && s.ready && !s.cgroup_parent.is_empty())
                .filter(|s| !seen.insert(s.cgroup_parent.clone()))
                .map(|s| s.cgroup_parent.clone())
                .collect()
        };
        let systemd = self.systemd_cgroup;
        let rt = rsrun::Runtime::new(self.runtime_root.clone(), false);
        let root = self.runtime_root.clone();
        let images = self.images.clone();
        let out = blocking(move || {
            // The node's cgroup mounts, read once for all the pods.
            let hs = rsrun::cgroups::hierarchies().unwrap_or_default();
            work.iter()
                .map(|(sb, last, mine)| {
                    let own = Some(sb.cgroup_parent.as_str())
                        .filter(|p| !p.is_empty() && !shared.contains(*p))
                        .and_then(|p| pod_cgroup_stats(p, systemd, &hs));
                    pod_stats(&rt, &root, &images, sb, own.as_ref(), mine, *last)
                })
                .collect::<Vec<_>>()
        })
        .await?;
        let mut m = self.cpu_samples.lock().unwrap_or_else(|e| e.into_inner());
        Ok(out
            .into_iter()
            .map(|(s, samples)| {
                m.extend(samples);
                s
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_are_whole() {
        let d = descriptors();
        assert_eq!(d.len(), 56);
        let mut names: Vec<&str> = d.iter().map(|d| d.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 56, "duplicate names");
        for x in &d {
            assert!(!x.help.is_empty(), "{}", x.name);
            assert_eq!(&x.label_keys[..6], &BASE, "{}", x.name);
        }
    }

    #[test]
    fn put_matches_descriptor() {
        let sb = SandboxRecord {
            id: "p1".into(),
            name: "frontend".into(),
            namespace: "shop".into(),
            ..Default::default()
        };
        let c = ContainerRecord {
            id: "c1".into(),
            name: "web".into(),
            image: "busybox".into(),
            ..Default::default()
        };
        let mut o = Out::new(&sb, Some(&c));
        o.put("container_network_receive_bytes_total", &["eth0"], 7);
        o.put("container_memory_rss", &[], 4096);
        let want = ["c1", "web", "busybox", "frontend", "shop", "web", "eth0"];
        assert_eq!(o.list[0].label_values, want);
        assert_eq!(o.list[0].metric_type, api::MetricType::Counter as i32);
        assert_eq!(o.list[1].metric_type, api::MetricType::Gauge as i32);
        assert_eq!(o.list[1].value, Some(api::UInt64Value { value: 4096 }));
        assert_eq!(o.list[1].timestamp, 0);
        let mut o = Out::new(&sb, None);
        o.put("container_network_receive_bytes_total", &["eth0"], 7);
        let want = ["p1", "POD", "", "frontend", "shop", "", "eth0"];
        assert_eq!(o.list[0].label_values, want);
    }

    #[test]
    fn net_dev() {
        let text = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     140       2    0    0    0     0          0         0      140       2    0    0    0     0       0          0
  eth0: 1006      12    1    3    0     0          0         0      656       8    2    4    0     0       0          0
";
        let d = parse_net_dev(text);
        assert_eq!(d.len(), 2);
        assert_eq!(
            d[1],
            NetDev {
                name: "eth0".into(),
                rx_bytes: 1006,
                rx_packets: 12,
                rx_errors: 1,
                rx_dropped: 3,
                tx_bytes: 656,
                tx_packets: 8,
                tx_errors: 2,
                tx_dropped: 4,
            }
        );
        let n = network_usage(&d[..], 5).unwrap();
        assert_eq!(n.default_interface.unwrap().name, "eth0");
        // Every interface given is listed, the default too (as containerd lists them).
        let names: Vec<&str> = n.interfaces.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["lo", "eth0"]);
        assert!(network_usage(&[], 5).is_none());
    }

    #[test]
    fn pressure() {
        let t = "some avg10=1.50 avg60=0.25 avg300=0.00 total=2500000\n\
                 full avg10=0.00 avg60=0.00 avg300=0.00 total=17\n";
        let p = parse_psi(t).unwrap();
        let some = p.some.unwrap();
        assert_eq!(
            (some.total, some.avg10, some.avg60),
            (2_500_000_000, 1.5, 0.25)
        );
        assert_eq!(p.full.unwrap().total, 17_000);
        let p = parse_psi("some avg10=0.00 avg60=0.00 avg300=0.00 total=3\n").unwrap();
        assert_eq!((p.some.unwrap().total, p.full), (3000, None));
        assert!(parse_psi("").is_none());
    }

    #[test]
    fn limits() {
        let t = "\
Limit                     Soft Limit           Hard Limit           Units
Max cpu time              unlimited            unlimited            seconds
Max open files            1024                 1048576              files
Max nice priority         0                    0
";
        let l = parse_limits(t);
        assert_eq!(
            l,
            vec![
                ("max_cpu_time".to_string(), None),
                ("max_open_files".to_string(), Some(1024)),
                ("max_nice_priority".to_string(), Some(0)),
            ]
        );
    }

    #[test]
    fn small_files() {
        assert_eq!(
            parse_threads("Name:\tsh\nThreads:\t3\nSigQ:\t0/1\n"),
            Some(3)
        );
        assert_eq!(parse_cpu_max("max 100000\n"), Some((None, 100_000)));
        assert_eq!(
            parse_cpu_max("20000 100000\n"),
            Some((Some(20_000), 100_000))
        );
        assert_eq!(parse_cpu_max("junk"), None);
        assert_eq!(mem_limit(Some(9_223_372_036_854_771_712)), 0);
        assert_eq!(mem_limit(None), 0);
        assert_eq!(mem_limit(Some(64 << 20)), 64 << 20);
        let k = keyed("cache 10\nrss 3\nbad\n");
        assert_eq!(k.get("rss"), Some(&3));
        assert_eq!(k.len(), 2);
    }

    #[test]
    fn mountinfo() {
        let mi = "\
22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
30 22 0:26 / /sys rw shared:2 - sysfs sysfs rw
";
        assert_eq!(mount_source(mi, 253, 1).as_deref(), Some("/dev/vda1"));
        assert_eq!(mount_source(mi, 0, 26).as_deref(), Some("sysfs"));
        assert_eq!(mount_source(mi, 8, 0), None);
    }
}
