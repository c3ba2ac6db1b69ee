//! The systemd cgroup driver (`rsrun --systemd-cgroup`): the container's cgroup is a
//! transient scope unit that systemd creates (StartTransientUnit with Delegate=yes and the
//! init's PID), in a slice named as systemd names them, with the limits systemd can express
//! passed as unit properties, so that systemd keeps them when it re-applies its view of the
//! cgroup tree (daemon-reload, unit changes). Everything else is written to the scope's
//! cgroup files by the cgroup v2 code, as with the cgroupfs driver.
//!
//! `cgroupsPath` takes runc's form `slice:prefix:name` → unit `prefix-name.scope` in
//! `slice` (system.slice when empty). Only the unified (cgroup v2) hierarchy is supported.
//!
//! No D-Bus code runs without the flag: nothing here is reached by the cgroupfs driver.

use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::LinuxResources;

use super::{blkio_weight_to_io, devices, is_unified, shares_to_weight, Hierarchy};
use crate::dbus::{prop, Conn, Value};
use crate::error::{Error, Result};

const DEST: &str = "org.freedesktop.systemd1";
const PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
/// How long a systemd call or job may take before the operation fails.
const TIMEOUT: Duration = Duration::from_secs(30);

/// A container's scope and the slice it goes in.
#[derive(Debug, Clone, PartialEq)]
pub struct Scope {
    pub slice: String,
    pub unit: String,
}

impl Scope {
    /// Parses `slice:prefix:name` (absent: `system.slice:rsrun:<id>`).
    pub fn parse(cgroups_path: Option<&str>, id: &str) -> Result<Scope> {
        let Some(p) = cgroups_path else {
            return Ok(Scope {
                slice: "system.slice".into(),
                unit: format!("rsrun-{id}.scope"),
            });
        };
        let parts: Vec<&str> = p.split(':').collect();
        let [slice, prefix, name] = parts[..] else {
            return Err(Error::Config(format!(
                "linux.cgroupsPath {p:?}: the systemd cgroup driver expects \"slice:prefix:name\""
            )));
        };
        let slice = if slice.is_empty() {
            "system.slice"
        } else {
            slice
        };
        slice_path(slice).map_err(|e| Error::Config(format!("linux.cgroupsPath {p:?}: {e}")))?;
        if name.is_empty() {
            return Err(Error::Config(format!(
                "linux.cgroupsPath {p:?}: the name part is empty"
            )));
        }
        if name.ends_with(".slice") {
            return Err(Error::Config(format!(
                "linux.cgroupsPath {p:?}: a container's cgroup is a scope, not a slice"
            )));
        }
        let unit = match (prefix, name.ends_with(".scope")) {
            (_, true) => name.to_string(),
            ("", false) => format!("{name}.scope"),
            (pre, false) => format!("{pre}-{name}.scope"),
        };
        if let Some(c) = unit
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || ":-_.\\@".contains(*c)))
        {
            return Err(Error::Config(format!(
                "linux.cgroupsPath {p:?}: {c:?} is not allowed in a systemd unit name"
            )));
        }
        Ok(Scope {
            slice: slice.to_string(),
            unit,
        })
    }

    /// The scope's cgroup directory in the unified hierarchy.
    pub fn dir(&self, hs: &[Hierarchy]) -> Result<PathBuf> {
        if !is_unified(hs) {
            return Err(Error::Config(
                "--systemd-cgroup: the systemd cgroup driver needs the unified cgroup v2 hierarchy; this host mounts cgroup v1 controllers (use the cgroupfs driver)".into(),
            ));
        }
        let mount = hs
            .iter()
            .find(|h| h.v2)
            .map(|h| h.mountpoint.clone())
            .ok_or_else(|| {
                Error::Config("--systemd-cgroup: no cgroup2 hierarchy is mounted".into())
            })?;
        Ok(mount.join(slice_path(&self.slice)?).join(&self.unit))
    }
}

/// `a-b-c.slice` → `a.slice/a-b.slice/a-b-c.slice` (systemd's nesting by dashes); `-.slice`
/// is the root.
pub fn slice_path(slice: &str) -> Result<PathBuf> {
    if slice == "-.slice" {
        return Ok(PathBuf::new());
    }
    let Some(stem) = slice.strip_suffix(".slice") else {
        return Err(Error::Config(format!(
            "slice {slice:?} does not end in .slice"
        )));
    };
    if stem.is_empty()
        || stem.starts_with('-')
        || stem.ends_with('-')
        || stem.contains("--")
        || stem.contains('/')
    {
        return Err(Error::Config(format!(
            "slice {slice:?} is not a valid slice name"
        )));
    }
    let mut out = PathBuf::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        out.push(format!("{prefix}.slice"));
    }
    Ok(out)
}

/// A cpuset list ("0-3,8") as systemd's byte mask (bit n of byte n/8).
pub fn cpuset_mask(list: &str, field: &str) -> Result<Vec<u8>> {
    let bad = || Error::Config(format!("{field}: {list:?} is not a cpu or node list"));
    let mut mask = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<usize>(), b.parse::<usize>()),
            None => (part.parse::<usize>(), part.parse::<usize>()),
        };
        let (a, b) = (a.map_err(|_| bad())?, b.map_err(|_| bad())?);
        if a > b || b >= 8192 {
            return Err(bad());
        }
        for n in a..=b {
            if mask.len() <= n / 8 {
                mask.resize(n / 8 + 1, 0);
            }
            mask[n / 8] |= 1 << (n % 8);
        }
    }
    Ok(mask)
}

fn bytes(mask: Vec<u8>) -> Value {
    Value::Array("y".into(), mask.into_iter().map(Value::Byte).collect())
}

fn limit(v: i64) -> u64 {
    if v < 0 {
        u64::MAX
    } else {
        v as u64
    }
}

/// A unified-map value ("max" or a number) as a systemd limit.
fn unified_limit(k: &str, v: &str) -> Result<u64> {
    let v = v.trim();
    if v == "max" {
        return Ok(u64::MAX);
    }
    v.parse().map_err(|_| {
        Error::Config(format!(
            "linux.resources.unified.{k}: {v:?} is not a number or \"max\""
        ))
    })
}

/// The unit properties for the limits systemd manages itself (the rest goes to the files).
pub fn properties(r: Option<&LinuxResources>) -> Result<Vec<Value>> {
    properties_for(r, &whole_disk)
}

/// Whether MAJOR:MINOR is a whole block device of this host (not a partition, nothing
/// stacked under it).
fn whole_disk(ma: i64, mi: i64) -> bool {
    let d = PathBuf::from(format!("/sys/dev/block/{ma}:{mi}"));
    d.exists()
        && !d.join("partition").exists()
        && std::fs::read_dir(d.join("slaves")).map_or(true, |mut r| r.next().is_none())
}

fn properties_for(
    r: Option<&LinuxResources>,
    whole: &dyn Fn(i64, i64) -> bool,
) -> Result<Vec<Value>> {
    let mut p = Vec::new();
    let Some(r) = r else { return Ok(p) };
    if let Some(m) = r.memory() {
        // 0 is "not set", as the cgroupfs driver reads it (MemoryMax=0 would OOM-kill the
        // init at once).
        let nz = |v: Option<i64>| v.filter(|v| *v != 0);
        if let Some(l) = nz(m.limit()) {
            p.push(prop("MemoryMax", Value::U64(limit(l))));
        }
        if let Some(l) = nz(m.reservation()) {
            p.push(prop("MemoryLow", Value::U64(limit(l))));
        }
        if let Some(s) = super::v2::swap_of(m.swap(), m.limit()) {
            let v = super::v2::swap_max(s, m.limit().unwrap_or(0))?;
            p.push(prop(
                "MemorySwapMax",
                Value::U64(unified_limit("memory.swap.max", &v)?),
            ));
        }
    }
    if let Some(c) = r.cpu() {
        if let Some(s) = c.shares().filter(|s| *s != 0) {
            p.push(prop("CPUWeight", Value::U64(shares_to_weight(s))));
        }
        let period = c.period().filter(|p| *p != 0);
        if let Some(q) = c.quota().filter(|q| *q != 0) {
            let per_sec = if q < 0 {
                u64::MAX
            } else {
                (q as u64).saturating_mul(1_000_000) / period.unwrap_or(100_000)
            };
            p.push(prop("CPUQuotaPerSecUSec", Value::U64(per_sec)));
        }
        if let Some(pe) = period {
            p.push(prop("CPUQuotaPeriodUSec", Value::U64(pe)));
        }
        if let Some(cpus) = c.cpus().as_deref().filter(|s| !s.is_empty()) {
            p.push(prop(
                "AllowedCPUs",
                bytes(cpuset_mask(cpus, "linux.resources.cpu.cpus")?),
            ));
        }
        if let Some(mems) = c.mems().as_deref().filter(|s| !s.is_empty()) {
            p.push(prop(
                "AllowedMemoryNodes",
                bytes(cpuset_mask(mems, "linux.resources.cpu.mems")?),
            ));
        }
    }
    if let Some(pids) = r.pids() {
        p.push(prop(
            "TasksMax",
            Value::U64(if pids.limit() > 0 {
                pids.limit() as u64
            } else {
                u64::MAX
            }),
        ));
    }
    if let Some(b) = r.block_io() {
        if let Some(w) = b.weight().filter(|w| *w != 0) {
            p.push(prop("IOWeight", Value::U64(blkio_weight_to_io(w))));
        }
        // Per device, by its /dev/block/MAJOR:MINOR name. systemd takes a partition or a
        // stacked device (dm, md) to the disk under it, which would limit another device
        // than asked: those are left to the io.max/io.weight lines rsrun writes itself.
        let dev = |ma: i64, mi: i64| Value::Str(format!("/dev/block/{ma}:{mi}"));
        let entry = |ma, mi, v: u64| Value::Struct(vec![dev(ma, mi), Value::U64(v)]);

        if let Some(ws) = b.weight_device().as_ref() {
            let list: Vec<Value> = ws
                .iter()
                .filter(|w| whole(w.major(), w.minor()))
                .filter_map(|w| {
                    let v = w.weight().filter(|v| *v != 0)?;
                    Some(entry(w.major(), w.minor(), blkio_weight_to_io(v)))
                })
                .collect();
            if !list.is_empty() {
                p.push(prop("IODeviceWeight", Value::Array("(st)".into(), list)));
            }
        }
        for (name, list) in [
            ("IOReadBandwidthMax", b.throttle_read_bps_device()),
            ("IOWriteBandwidthMax", b.throttle_write_bps_device()),
            ("IOReadIOPSMax", b.throttle_read_iops_device()),
            ("IOWriteIOPSMax", b.throttle_write_iops_device()),
        ] {
            if let Some(l) = list.as_ref().filter(|l| !l.is_empty()) {
                // (A rate of 0 is no limit, as rsrun writes it to io.max.)
                let es: Vec<Value> = l
                    .iter()
                    .filter(|t| whole(t.major(), t.minor()))
                    .map(|t| {
                        entry(
                            t.major(),
                            t.minor(),
                            if t.rate() == 0 { u64::MAX } else { t.rate() },
                        )
                    })
                    .collect();
                if !es.is_empty() {
                    p.push(prop(name, Value::Array("(st)".into(), es)));
                }
            }
        }
    }
    if let Some(u) = r.unified() {
        let mut keys: Vec<&String> = u.keys().collect();
        keys.sort();
        for k in keys {
            let v = &u[k];
            let f = format!("linux.resources.unified.{k}");
            let name = match k.as_str() {
                "memory.max" => "MemoryMax",
                "memory.high" => "MemoryHigh",
                "memory.low" => "MemoryLow",
                "memory.min" => "MemoryMin",
                "memory.swap.max" => "MemorySwapMax",
                "pids.max" => "TasksMax",
                "cpu.weight" => "CPUWeight",
                "io.weight" if !v.trim().starts_with("default") => "IOWeight",
                "cpuset.cpus" => {
                    p.push(prop("AllowedCPUs", bytes(cpuset_mask(v, &f)?)));
                    continue;
                }
                "cpuset.mems" => {
                    p.push(prop("AllowedMemoryNodes", bytes(cpuset_mask(v, &f)?)));
                    continue;
                }
                _ => continue,
            };
            p.retain(|x| !matches!(x, Value::Struct(f) if f.first().and_then(Value::as_str) == Some(name)));
            p.push(prop(name, Value::U64(unified_limit(k, v)?)));
        }
    }
    Ok(p)
}

/// What a new scope gets: `properties` and the device rules (`device_properties`), which an
/// update leaves as they are (as runc does).
pub fn create_properties(r: Option<&LinuxResources>) -> Result<Vec<Value>> {
    let mut p = properties(r)?;
    // The config's rules and the defaults, as with the cgroupfs driver (no rules: the
    // defaults alone).
    let d = r.and_then(|r| r.devices().as_deref()).unwrap_or(&[]);
    p.extend(device_properties(&devices::rules(d)?, &proc_devices()));
    Ok(p)
}

/// The device rules as systemd's DevicePolicy and DeviceAllow. systemd attaches its own eBPF
/// program for them beside rsrun's (both attached allow-multi, so a device must pass both):
/// its list only has to allow at least what rsrun's exact program allows, and it stays in
/// force across a daemon-reload. Rules are read as the program reads them, default deny; a
/// deny of all or of exactly an earlier allowed device is taken out, and a deny systemd
/// cannot say (a part of a wildcard) is left to rsrun's program. An allow of everything
/// leaves systemd's policy at auto. `names` maps (type, major) to the /proc/devices group
/// systemd names a wildcard minor by (`char-pts`); an unknown major widens to the type.
pub fn device_properties(rules: &[devices::Rule], names: &[(char, u32, String)]) -> Vec<Value> {
    use devices::ACC_ALL as ALL;
    let mut allowed: Vec<devices::Rule> = Vec::new();
    for r in rules {
        match (r.kind, r.allow) {
            ('a', true) if r.access == ALL => {
                return vec![prop("DevicePolicy", Value::Str("auto".into()))]
            }
            ('a', true) => {
                for kind in ['c', 'b'] {
                    allowed.push(devices::Rule { kind, ..r.clone() });
                }
            }
            ('a', false) if r.access == ALL => allowed.clear(),
            ('a', false) => allowed.iter_mut().for_each(|e| e.access &= !r.access),
            (_, true) => allowed.push(r.clone()),
            (_, false) => {
                for e in allowed
                    .iter_mut()
                    .filter(|e| e.kind == r.kind && e.major == r.major && e.minor == r.minor)
                {
                    e.access &= !r.access;
                }
            }
        }
    }
    let mut list = Vec::new();
    for e in allowed.iter().filter(|e| e.access != 0) {
        let kind = if e.kind == 'b' { "block" } else { "char" };
        let path = match (e.major, e.minor) {
            (Some(ma), Some(mi)) => format!("/dev/{kind}/{ma}:{mi}"),
            (Some(ma), None) => match names.iter().find(|(k, m, _)| *k == e.kind && *m == ma) {
                Some((_, _, n)) => format!("{kind}-{n}"),
                None => format!("{kind}-*"),
            },
            (None, _) => format!("{kind}-*"),
        };
        let entry = Value::Struct(vec![Value::Str(path), Value::Str(e.access_str())]);
        if !list.contains(&entry) {
            list.push(entry);
        }
    }
    vec![
        prop("DevicePolicy", Value::Str("strict".into())),
        prop("DeviceAllow", Value::Array("(ss)".into(), list)),
    ]
}

/// The device groups of /proc/devices: (type, major, name).
fn proc_devices() -> Vec<(char, u32, String)> {
    let text = std::fs::read_to_string("/proc/devices").unwrap_or_default();
    let mut kind = 'c';
    let mut out = Vec::new();
    for line in text.lines() {
        match line.trim() {
            "Character devices:" => kind = 'c',
            "Block devices:" => kind = 'b',
            l => {
                if let Some((m, n)) = l.split_once(' ') {
                    if let Ok(m) = m.parse() {
                        out.push((kind, m, n.trim().to_string()));
                    }
                }
            }
        }
    }
    out
}

/// systemd's own socket for direct (peer-to-peer) connections of root.
const PRIVATE: &str = "/run/systemd/private";

/// A connection to systemd: the system bus (`DBUS_SYSTEM_BUS_ADDRESS`, unix:path= only, or
/// /run/dbus/system_bus_socket), as runc and the kubelet use it; without a bus daemon, as
/// root, systemd's private socket (also when the address names it).
fn connect() -> Result<Conn> {
    let from_env = std::env::var("DBUS_SYSTEM_BUS_ADDRESS").ok();
    let path = match from_env.as_deref() {
        Some(a) => a
            .split(';')
            .find_map(|a| a.strip_prefix("unix:path="))
            .map(|p| p.split(',').next().unwrap_or(p).to_string())
            .ok_or_else(|| {
                Error::Config(format!(
                    "DBUS_SYSTEM_BUS_ADDRESS {a:?}: only unix:path= addresses are supported"
                ))
            })?,
        None if !Path::new("/run/dbus/system_bus_socket").exists()
            && nix::unistd::geteuid().is_root()
            && Path::new(PRIVATE).exists() =>
        {
            PRIVATE.to_string()
        }
        None => "/run/dbus/system_bus_socket".to_string(),
    };
    let bus = path != PRIVATE;
    let mut c = Conn::connect(&path, bus, TIMEOUT)?;
    if bus {
        // On the bus, systemd sends job signals only to subscribers that asked for them.
        c.call(
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "AddMatch",
            &[Value::Str(format!(
                "type='signal',sender='{DEST}',interface='{MANAGER}',member='JobRemoved'"
            ))],
        )?;
        c.call(DEST, PATH, MANAGER, "Subscribe", &[])?;
    }
    Ok(c)
}

/// Waits for the job's JobRemoved signal and returns its result ("done", "failed", ...).
/// systemd does not always send it (a job found redundant is dropped without one, as when
/// the unit already reached the state asked for): `reached` says whether the state the job
/// was for is visible already, checked between signals.
fn wait_job(c: &mut Conn, job: &str, what: &str, reached: impl Fn() -> bool) -> Result<String> {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        match c.next_signal(Duration::from_millis(50))? {
            Some(m)
                if m.member.as_deref() == Some("JobRemoved")
                    && m.body.get(1).and_then(Value::as_str) == Some(job) =>
            {
                return Ok(m
                    .body
                    .get(3)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string());
            }
            Some(_) => {}
            None if reached() => return Ok("done".into()),
            None if std::time::Instant::now() > deadline => {
                return Err(Error::Invalid(format!(
                    "{what}: systemd job {job} did not finish within {}s",
                    TIMEOUT.as_secs()
                )))
            }
            None => {}
        }
    }
}

/// Starts the container's scope with `pid` in it, `Delegate=yes` and the limits `props`;
/// returns once systemd has created it.
pub fn start_scope(s: &Scope, pid: i32, props: Vec<Value>) -> Result<()> {
    let mut c = connect()?;
    let mut all = vec![
        prop(
            "Description",
            Value::Str(format!("rsrun container {}", s.unit)),
        ),
        prop("Slice", Value::Str(s.slice.clone())),
        prop("Delegate", Value::Bool(true)),
        prop("DefaultDependencies", Value::Bool(false)),
        prop(
            "PIDs",
            Value::Array("u".into(), vec![Value::U32(pid as u32)]),
        ),
        prop("MemoryAccounting", Value::Bool(true)),
        prop("CPUAccounting", Value::Bool(true)),
        prop("IOAccounting", Value::Bool(true)),
        prop("TasksAccounting", Value::Bool(true)),
    ];
    all.extend(props);
    let reply = c
        .call(
            DEST,
            PATH,
            MANAGER,
            "StartTransientUnit",
            &[
                Value::Str(s.unit.clone()),
                Value::Str("fail".into()),
                Value::Array("(sv)".into(), all),
                Value::Array("(sa(sv))".into(), Vec::new()),
            ],
        )
        .map_err(|e| Error::Invalid(format!("systemd scope {} in {}: {e}", s.unit, s.slice)))?;
    let job = reply
        .first()
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let result = wait_job(&mut c, &job, &format!("systemd scope {}", s.unit), || {
        std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .is_ok_and(|c| c.trim_end().ends_with(&format!("/{}", s.unit)))
    });
    let err = match result {
        Ok(r) if r == "done" => return Ok(()),
        Ok(r) => Error::Invalid(format!(
            "systemd scope {} in {}: the start job ended with {r:?}",
            s.unit, s.slice
        )),
        Err(e) => e,
    };
    // The unit was made for this container (StartTransientUnit refuses an existing one, which
    // is left alone): it goes with the failed start.
    let unit = Value::Str(s.unit.clone());
    let _ = c.call(
        DEST,
        PATH,
        MANAGER,
        "StopUnit",
        &[unit.clone(), Value::Str("replace".into())],
    );
    let _ = c.call(DEST, PATH, MANAGER, "ResetFailedUnit", &[unit]);
    Err(err)
}

/// Stops the unit (its processes are killed by systemd, its cgroup removed) and forgets a
/// failed state. A unit that no longer exists is not an error.
pub fn stop_unit(unit: &str, dir: &Path) -> Result<()> {
    let mut c = connect()?;
    match c.call(
        DEST,
        PATH,
        MANAGER,
        "StopUnit",
        &[Value::Str(unit.into()), Value::Str("replace".into())],
    ) {
        Ok(reply) => {
            let job = reply
                .first()
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            wait_job(&mut c, &job, &format!("systemd unit {unit}"), || {
                !dir.exists()
            })?;
        }
        Err(e)
            if e.to_string()
                .contains("org.freedesktop.systemd1.NoSuchUnit") => {}
        Err(e) => return Err(Error::Invalid(format!("systemd unit {unit}: {e}"))),
    }
    let _ = c.call(
        DEST,
        PATH,
        MANAGER,
        "ResetFailedUnit",
        &[Value::Str(unit.into())],
    );
    Ok(())
}

/// Changes the unit's properties at runtime (`update`).
pub fn set_properties(unit: &str, props: Vec<Value>) -> Result<()> {
    if props.is_empty() {
        return Ok(());
    }
    let mut c = connect()?;
    c.call(
        DEST,
        PATH,
        MANAGER,
        "SetUnitProperties",
        &[
            Value::Str(unit.into()),
            Value::Bool(true),
            Value::Array("(sv)".into(), props),
        ],
    )
    .map_err(|e| Error::Invalid(format!("systemd unit {unit}: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use oci_spec::runtime::LinuxDeviceCgroup;

    use super::*;

    #[test]
    fn cgroups_path_forms() {
        let s = Scope::parse(Some("kubepods-burstable-pod12.slice:rsrun:abc"), "x").unwrap();
        assert_eq!(s.slice, "kubepods-burstable-pod12.slice");
        assert_eq!(s.unit, "rsrun-abc.scope");
        assert_eq!(
            Scope::parse(Some(":runc:abc"), "x").unwrap().slice,
            "system.slice"
        );
        assert_eq!(
            Scope::parse(Some("a.slice::abc"), "x").unwrap().unit,
            "abc.scope"
        );
        assert_eq!(Scope::parse(None, "c1").unwrap().unit, "rsrun-c1.scope");
        for bad in [
            "/a/b",
            "a.slice:x",
            "a:b:c",
            "a.slice:p:",
            "a.slice:p:x.slice",
            "a.slice:p:x/y",
            "-a.slice:p:x",
        ] {
            let e = Scope::parse(Some(bad), "x").unwrap_err().to_string();
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn slices_nest_by_dashes() {
        assert_eq!(
            slice_path("kubepods-burstable-pod1.slice").unwrap(),
            PathBuf::from("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice")
        );
        assert_eq!(slice_path("-.slice").unwrap(), PathBuf::new());
        assert!(slice_path("a--b.slice").is_err());
    }

    #[test]
    fn cpu_lists_as_masks() {
        assert_eq!(cpuset_mask("0-3,9", "f").unwrap(), vec![0x0f, 0x02]);
        assert_eq!(cpuset_mask("1", "f").unwrap(), vec![0x02]);
        assert!(cpuset_mask("3-1", "f").is_err());
        assert!(cpuset_mask("x", "f").is_err());
        assert!(cpuset_mask("0-100000", "f").is_err());
    }

    #[test]
    fn memory_zero_is_not_set() {
        let props = |v: serde_json::Value| -> Vec<String> {
            let r: LinuxResources = serde_json::from_value(v).unwrap();
            properties_for(Some(&r), &|_, _| true)
                .unwrap()
                .iter()
                .filter_map(|x| match x {
                    Value::Struct(f) => f[0].as_str().map(|n| format!("{n}={:?}", f[1])),
                    _ => None,
                })
                .collect()
        };
        // 0 is "not set", as the cgroupfs driver reads it: no MemoryMax=0 (an OOM kill at
        // once), and a swap of 0 is no error.
        assert!(props(serde_json::json!({"memory": {"limit": 0, "swap": 0}})).is_empty());
        let p = props(serde_json::json!({"memory": {"limit": 1048576}}));
        assert_eq!(p, vec!["MemoryMax=Variant(U64(1048576))".to_string()]);
        // A limit lifted lifts the swap limit too.
        let p = props(serde_json::json!({"memory": {"limit": -1}}));
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p.iter()
                .all(|x| x.ends_with(&format!("U64({}))", u64::MAX))),
            "{p:?}"
        );
    }

    #[test]
    fn io_limits_per_device() {
        let r: LinuxResources = serde_json::from_value(serde_json::json!({"blockIO": {
            "weight": 500,
            "weightDevice": [{"major": 8, "minor": 0, "weight": 100}],
            "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}],
            "throttleWriteIOPSDevice": [{"major": 8, "minor": 16, "rate": 300},
                                        {"major": 253, "minor": 1, "rate": 300}],
            "throttleWriteBpsDevice": [{"major": 8, "minor": 16, "rate": 0}]
        }}))
        .unwrap();
        // 253:1 stands for a stacked device (dm): left to rsrun's own io.max line.
        let p = properties_for(Some(&r), &|ma, _| ma == 8).unwrap();
        let get = |n: &str| {
            p.iter()
                .find_map(|x| match x {
                    Value::Struct(f) if f[0].as_str() == Some(n) => Some(format!("{:?}", f[1])),
                    _ => None,
                })
                .unwrap_or_else(|| panic!("no {n} in {p:?}"))
        };
        assert!(get("IOReadBandwidthMax").contains("\"/dev/block/8:0\"), U64(1048576)"));
        assert!(get("IOWriteIOPSMax").contains("\"/dev/block/8:16\"), U64(300)"));
        assert!(!get("IOWriteIOPSMax").contains("253:1"));
        assert!(get("IOWriteBandwidthMax").contains(&format!("U64({})", u64::MAX)));
        assert!(get("IODeviceWeight").contains(&format!("U64({})", blkio_weight_to_io(100))));
        assert!(get("IOWeight").contains(&format!("U64({})", blkio_weight_to_io(500))));
    }

    #[test]
    fn device_rules_as_device_allow() {
        let rule = |allow, kind, major, minor, access: &str| {
            serde_json::json!({"allow": allow, "type": kind, "major": major, "minor": minor,
                               "access": access})
        };
        let list = |spec: Vec<serde_json::Value>| {
            let spec: Vec<LinuxDeviceCgroup> =
                serde_json::from_value(serde_json::Value::Array(spec)).unwrap();
            let names = vec![('c', 136, "pts".to_string()), ('c', 10, "misc".to_string())];
            let p = device_properties(&devices::rules(&spec).unwrap(), &names);
            let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
            let mut out = Vec::new();
            for x in &p {
                let Value::Struct(f) = x else { panic!() };
                match (&f[0], &f[1]) {
                    (n, Value::Variant(v)) if s(n) == "DevicePolicy" => out.push(s(v)),
                    (n, Value::Variant(v)) if s(n) == "DeviceAllow" => {
                        let Value::Array(_, es) = &**v else { panic!() };
                        for e in es {
                            let Value::Struct(f) = e else { panic!() };
                            out.push(format!("{} {}", s(&f[0]), s(&f[1])));
                        }
                    }
                    _ => panic!("{x:?}"),
                }
            }
            out
        };
        // The kubelet's and containerd's shape: deny all, then allows; the defaults follow.
        let l = list(vec![
            rule(false, "a", -1, -1, "rwm"),
            rule(true, "c", 10, 200, "rwm"),
            rule(true, "c", 10, -1, "r"),
            rule(true, "b", 8, 0, "rw"),
            rule(false, "c", 10, 200, "w"),
        ]);
        assert_eq!(l[0], "strict");
        for want in [
            "/dev/char/10:200 rm",
            "char-misc r",
            "/dev/block/8:0 rw",
            "char-* m",
            "block-* m",
            "/dev/char/1:3 rwm",
            "char-pts rwm",
        ] {
            assert!(l.iter().any(|e| e == want), "{want} not in {l:?}");
        }
        // Allowed, then everything denied: only the defaults remain.
        let l = list(vec![
            rule(true, "b", 8, 0, "rw"),
            rule(false, "a", -1, -1, "rwm"),
        ]);
        assert!(!l.iter().any(|e| e.contains("block/8:0")), "{l:?}");
        // Everything allowed: systemd's policy stays auto, rsrun's program does the rest.
        assert_eq!(list(vec![rule(true, "a", -1, -1, "rwm")]), vec!["auto"]);
        // An unknown major with any minor widens to the type (rsrun's program is exact).
        let l = list(vec![
            rule(false, "a", -1, -1, "rwm"),
            rule(true, "c", 250, -1, "r"),
        ]);
        assert!(l.iter().any(|e| e == "char-* r"), "{l:?}");
    }

    #[test]
    fn limits_as_properties() {
        let r: LinuxResources = serde_json::from_value(serde_json::json!({
            "memory": {"limit": 1048576, "swap": 2097152},
            "cpu": {"shares": 1024, "quota": 50000, "period": 100000, "cpus": "0"},
            "pids": {"limit": 10},
            "unified": {"memory.high": "786432"}
        }))
        .unwrap();
        let p = properties(Some(&r)).unwrap();
        let get = |n: &str| {
            p.iter().find_map(|x| match x {
                Value::Struct(f) if f[0].as_str() == Some(n) => f[1].as_u64().or(Some(0)),
                _ => None,
            })
        };
        assert_eq!(get("MemoryMax"), Some(1048576));
        assert_eq!(get("MemorySwapMax"), Some(1048576));
        assert_eq!(get("CPUWeight"), Some(shares_to_weight(1024)));
        assert_eq!(get("CPUQuotaPerSecUSec"), Some(500_000));
        assert_eq!(get("TasksMax"), Some(10));
        assert_eq!(get("MemoryHigh"), Some(786432));
        assert!(get("AllowedCPUs").is_some());
    }
}
