//! Process security settings applied by the init process just before exec: rlimits, the
//! user and groups, capabilities, no_new_privs.

use std::str::FromStr;

use caps::{CapSet, Capability, CapsHashSet};
use oci_spec::runtime::{LinuxCapabilities, PosixRlimitType, Process};

use crate::error::{Context, Error, Result};

fn rlimit_resource(t: PosixRlimitType) -> i32 {
    (match t {
        PosixRlimitType::RlimitCpu => libc::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => libc::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => libc::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => libc::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => libc::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => libc::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => libc::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => libc::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => libc::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => libc::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => libc::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => libc::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => libc::RLIMIT_RTTIME,
    }) as i32
}

pub fn set_rlimits(p: &Process) -> Result<()> {
    for r in p.rlimits().iter().flatten() {
        crate::sys::setrlimit(rlimit_resource(r.typ()), r.soft(), r.hard()).with_ctx(|| {
            format!(
                "process.rlimits {:?} soft {} hard {}",
                r.typ(),
                r.soft(),
                r.hard()
            )
        })?;
    }
    Ok(())
}

/// Writes oom_score_adj. Lowering it needs CAP_SYS_RESOURCE; when the host withholds that
/// capability (as on some CI hosts) a failure to lower is logged, not fatal.
pub fn set_oom_score_adj(p: &Process) -> Result<()> {
    match p.oom_score_adj() {
        Some(adj) => write_oom_score_adj("self", adj),
        None => Ok(()),
    }
}

/// Applies `process.scheduler` (sched_setattr(2)) to this process, as runc: the kernel checks
/// the policy's parameters and privileges (a real-time policy needs CAP_SYS_NICE, kept until
/// the capabilities are dropped after this).
pub fn set_scheduler(s: &oci_spec::runtime::Scheduler) -> Result<()> {
    use oci_spec::runtime::{LinuxSchedulerFlag as F, LinuxSchedulerPolicy as P};
    let policy = match s.policy() {
        P::SchedOther => 0,
        P::SchedFifo => 1,
        P::SchedRr => 2,
        P::SchedBatch => 3,
        P::SchedIso => 4,
        P::SchedIdle => 5,
        P::SchedDeadline => 6,
    };
    let flags = s.flags().iter().flatten().fold(0u64, |acc, f| {
        acc | match f {
            F::SchedResetOnFork => 0x01,
            F::SchedFlagReclaim => 0x02,
            F::SchedFlagDLOverrun => 0x04,
            F::SchedFlagKeepPolicy => 0x08,
            F::SchedFlagKeepParams => 0x10,
            F::SchedFlagUtilClampMin => 0x20,
            F::SchedFlagUtilClampMax => 0x40,
        }
    });
    let priority = s.priority().unwrap_or(0);
    let mut attr = crate::sys::SchedAttr {
        policy,
        flags,
        nice: s.nice().unwrap_or(0),
        priority: u32::try_from(priority).map_err(|_| {
            Error::Invalid(format!("process.scheduler.priority {priority}: negative"))
        })?,
        runtime: s.runtime().unwrap_or(0),
        deadline: s.deadline().unwrap_or(0),
        period: s.period().unwrap_or(0),
        ..Default::default()
    };
    crate::sys::sched_setattr(&mut attr)
        .map_err(|e| Error::os(format!("process.scheduler {:?}", s.policy()), e))
}

/// Applies `process.ioPriority` (ioprio_set(2)) to this process, as runc.
pub fn set_io_priority(p: &oci_spec::runtime::LinuxIOPriority) -> Result<()> {
    use oci_spec::runtime::IOPriorityClass as C;
    let class = match p.class() {
        C::IoprioClassRt => 1,
        C::IoprioClassBe => 2,
        C::IoprioClassIdle => 3,
    };
    let prio = p.priority();
    if !(0..=7).contains(&prio) {
        return Err(Error::Invalid(format!(
            "process.ioPriority.priority {prio}: out of range (0 to 7)"
        )));
    }
    crate::sys::ioprio_set((class << 13) | prio as i32)
        .map_err(|e| Error::os(format!("process.ioPriority {:?} {prio}", p.class()), e))
}

/// Writes `adj` as the oom_score_adj of process `pid` ("self" or a number), as
/// `set_oom_score_adj`: a refused lowering is logged, not fatal.
pub fn write_oom_score_adj(pid: &str, adj: i32) -> Result<()> {
    match std::fs::write(format!("/proc/{pid}/oom_score_adj"), adj.to_string()) {
        Ok(()) => Ok(()),
        Err(e)
            if e.raw_os_error() == Some(libc::EACCES) || e.raw_os_error() == Some(libc::EPERM) =>
        {
            crate::log::warn(&format!("process.oomScoreAdj {adj}: {e} (CAP_SYS_RESOURCE missing?); keeping the current value"));
            Ok(())
        }
        Err(e) => Err(Error::os(format!("process.oomScoreAdj {adj}"), e)),
    }
}

/// Converts one set. Capabilities this process cannot grant (beyond the kernel's last one,
/// or outside our own bounding set, e.g. CAP_SYS_RESOURCE on hosts that withhold it) are
/// logged and left out, as the runtime spec asks ("runtimes SHOULD NOT fail if the container
/// configuration requests capabilities that cannot be granted"). Unknown names were already
/// refused when the config was parsed.
fn to_caps(
    set: &Option<oci_spec::runtime::Capabilities>,
    last: u8,
    bounding: &CapsHashSet,
) -> Result<CapsHashSet> {
    let mut out = CapsHashSet::new();
    for c in set.iter().flatten() {
        let name = format!("CAP_{c}");
        let cap = Capability::from_str(&name)
            .map_err(|_| Error::Config(format!("unknown capability {name}")))?;
        if cap.index() > last {
            crate::log::warn(&format!(
                "capability {name} is not supported by this kernel; ignored"
            ));
            continue;
        }
        if !bounding.contains(&cap) {
            crate::log::warn(&format!(
                "capability {name} is not in the runtime's bounding set; not granted"
            ));
            continue;
        }
        out.insert(cap);
    }
    Ok(out)
}

/// The kernel's last capability, asked of the kernel (prctl PR_CAPBSET_READ fails past it),
/// not read from /proc/sys/kernel/cap_last_cap: in the init, after pivot_root, that path is
/// the container's, which an image could fake (a low value would leave the bounding set whole).
fn last_cap() -> u8 {
    caps::runtime::thread_all_supported()
        .iter()
        .map(|c| c.index())
        .max()
        .unwrap_or(0)
}

/// The capability sets, converted and checked.
pub struct CapSets {
    bounding: CapsHashSet,
    effective: CapsHashSet,
    permitted: CapsHashSet,
    inheritable: CapsHashSet,
    ambient: CapsHashSet,
}

impl CapSets {
    /// Whether `cap` stays in the effective set once the sets are applied.
    pub fn has_effective(&self, cap: Capability) -> bool {
        self.effective.contains(&cap)
    }
}

pub fn cap_sets(c: &LinuxCapabilities) -> Result<CapSets> {
    let last = last_cap();
    let bounding = caps::read(None, CapSet::Bounding).unwrap_or_else(|_| caps::all());
    Ok(CapSets {
        bounding: to_caps(c.bounding(), last, &bounding)?,
        effective: to_caps(c.effective(), last, &bounding)?,
        permitted: to_caps(c.permitted(), last, &bounding)?,
        inheritable: to_caps(c.inheritable(), last, &bounding)?,
        ambient: to_caps(c.ambient(), last, &bounding)?,
    })
}

/// Every set empty.
pub fn no_caps() -> CapSets {
    CapSets {
        bounding: CapsHashSet::new(),
        effective: CapsHashSet::new(),
        permitted: CapsHashSet::new(),
        inheritable: CapsHashSet::new(),
        ambient: CapsHashSet::new(),
    }
}

/// Drops everything outside the bounding set (needs CAP_SETPCAP: do it while still root).
pub fn drop_bounding(c: &CapSets) -> Result<()> {
    let last = last_cap();
    for cap in caps::all() {
        if cap.index() > last || c.bounding.contains(&cap) {
            continue;
        }
        caps::drop(None, CapSet::Bounding, cap).map_err(|e| {
            Error::os(
                format!("drop {cap} from the bounding set"),
                std::io::Error::other(e.to_string()),
            )
        })?;
    }
    Ok(())
}

/// Switches to the process user (groups, gid, uid) keeping the permitted capabilities.
pub fn set_user(p: &Process, setgroups_allowed: bool) -> Result<()> {
    let u = p.user();
    nix::sys::prctl::set_keepcaps(true).ctx("prctl(PR_SET_KEEPCAPS)")?;
    if setgroups_allowed {
        let groups: Vec<nix::unistd::Gid> = u
            .additional_gids()
            .iter()
            .flatten()
            .map(|g| nix::unistd::Gid::from_raw(*g))
            .collect();
        nix::unistd::setgroups(&groups)
            .with_ctx(|| format!("setgroups {:?}", u.additional_gids()))?;
    } else if u.additional_gids().as_ref().is_some_and(|g| !g.is_empty()) {
        return Err(Error::Config(
            "process.user.additionalGids cannot be set: setgroups is denied in this user namespace"
                .into(),
        ));
    }
    let gid = nix::unistd::Gid::from_raw(u.gid());
    nix::unistd::setresgid(gid, gid, gid).with_ctx(|| format!("setresgid {}", u.gid()))?;
    let uid = nix::unistd::Uid::from_raw(u.uid());
    nix::unistd::setresuid(uid, uid, uid).with_ctx(|| format!("setresuid {}", u.uid()))?;
    Ok(())
}

/// Sets the effective, permitted, inheritable and ambient sets (after the user switch).
pub fn apply_caps(c: &CapSets) -> Result<()> {
    let err = |set: &str, e: caps::errors::CapsError| {
        Error::os(
            format!("set {set} capabilities"),
            std::io::Error::other(e.to_string()),
        )
    };
    // Permitted must be a superset of effective and inheritable.
    // Order matters: inheritable while CAP_SETPCAP may still be effective, then effective
    // (a subset of the old permitted set), then shrink permitted.
    caps::set(None, CapSet::Inheritable, &c.inheritable).map_err(|e| err("inheritable", e))?;
    caps::set(None, CapSet::Effective, &c.effective).map_err(|e| err("effective", e))?;
    caps::set(None, CapSet::Permitted, &c.permitted).map_err(|e| err("permitted", e))?;
    caps::clear(None, CapSet::Ambient).map_err(|e| err("ambient", e))?;
    for cap in &c.ambient {
        // Ambient needs the capability in permitted and inheritable; the kernel says EPERM
        // otherwise, which runc only logs.
        if let Err(e) = caps::raise(None, CapSet::Ambient, *cap) {
            crate::log::debug(&format!("cannot raise ambient capability {cap}: {e}"));
        }
    }
    Ok(())
}

pub fn set_no_new_privs() -> Result<()> {
    nix::sys::prctl::set_no_new_privs().ctx("prctl(PR_SET_NO_NEW_PRIVS)")
}
