//! Seccomp filters from `linux.seccomp`, compiled and loaded with libseccomp.
//!
//! The filter is built (and the config checked) twice: once by `create` through
//! [`validate`], so that a bad profile fails before any container exists, and once in the
//! container's init by [`prepare`], which also connects to the SCMP_ACT_NOTIFY listener
//! socket while the host's filesystem is still reachable (before pivot_root). The init
//! loads the filter with [`Prepared::load`] as late as it can: see `init.rs`.
//!
//! Semantics follow runc's:
//! - syscall names that neither libseccomp nor the kernel know are skipped (logged at debug
//!   level), so that one profile serves several kernels; an empty name is an error;
//! - a rule whose action equals the default action is skipped (libseccomp refuses it);
//! - errnoRet defaults to EPERM for SCMP_ACT_ERRNO and SCMP_ACT_TRACE;
//! - several argument conditions on one rule are ANDed, except when one argument index
//!   appears more than once: then each condition becomes a rule of its own (ORed), which is
//!   what runc does since libseccomp cannot AND two conditions on the same argument;
//! - libseccomp's own no_new_privs attribute is off: no_new_privs is process.noNewPrivileges
//!   alone.
//!
//! - syscalls numbered above the largest one the profile names return ENOSYS rather than a
//!   refusing default action (runc's patched BPF): see [`enosys`]. Such a filter is loaded
//!   with seccomp(2) here, the others by libseccomp.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
    ScmpVersion,
};
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompFilterFlag, LinuxSeccompOperator, LinuxSyscall, Spec,
};
use serde_json::{json, Value};

use crate::error::{Error, Result};

mod enosys;

/// The largest syscall argument index (seccomp sees six arguments).
const MAX_ARG_INDEX: usize = 5;

fn bad(msg: String) -> Error {
    Error::Config(format!("linux.seccomp: {msg}"))
}

fn lib_version() -> String {
    ScmpVersion::current()
        .map(|v| v.to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// The runtime-spec name of an action, e.g. `SCMP_ACT_ERRNO`.
fn action_name(a: LinuxSeccompAction) -> String {
    serde_json::to_value(a)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{a:?}"))
}

fn to_action(a: LinuxSeccompAction, errno_ret: Option<u32>, field: &str) -> Result<ScmpAction> {
    let ret = |what: &str| -> Result<u16> {
        match errno_ret {
            None => Ok(libc::EPERM as u16),
            Some(v) => u16::try_from(v).map_err(|_| {
                bad(format!(
                    "{field}: {what} {v} does not fit in 16 bits (SECCOMP_RET_DATA)"
                ))
            }),
        }
    };
    Ok(match a {
        // SCMP_ACT_KILL is the old name of SCMP_ACT_KILL_THREAD.
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(ret("errnoRet")?.into()),
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(ret("errnoRet")?),
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActNotify => ScmpAction::Notify,
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
    })
}

fn to_arch(a: Arch) -> ScmpArch {
    match a {
        Arch::ScmpArchNative => ScmpArch::Native,
        Arch::ScmpArchX86 => ScmpArch::X86,
        Arch::ScmpArchX86_64 => ScmpArch::X8664,
        Arch::ScmpArchX32 => ScmpArch::X32,
        Arch::ScmpArchArm => ScmpArch::Arm,
        Arch::ScmpArchAarch64 => ScmpArch::Aarch64,
        Arch::ScmpArchMips => ScmpArch::Mips,
        Arch::ScmpArchMips64 => ScmpArch::Mips64,
        Arch::ScmpArchMips64n32 => ScmpArch::Mips64N32,
        Arch::ScmpArchMipsel => ScmpArch::Mipsel,
        Arch::ScmpArchMipsel64 => ScmpArch::Mipsel64,
        Arch::ScmpArchMipsel64n32 => ScmpArch::Mipsel64N32,
        Arch::ScmpArchPpc => ScmpArch::Ppc,
        Arch::ScmpArchPpc64 => ScmpArch::Ppc64,
        Arch::ScmpArchPpc64le => ScmpArch::Ppc64Le,
        Arch::ScmpArchS390 => ScmpArch::S390,
        Arch::ScmpArchS390x => ScmpArch::S390X,
        Arch::ScmpArchParisc => ScmpArch::Parisc,
        Arch::ScmpArchParisc64 => ScmpArch::Parisc64,
        Arch::ScmpArchRiscv64 => ScmpArch::Riscv64,
        Arch::ScmpArchLoongarch64 => ScmpArch::Loongarch64,
        Arch::ScmpArchM68k => ScmpArch::M68k,
        Arch::ScmpArchSh => ScmpArch::Sh,
        Arch::ScmpArchSheb => ScmpArch::Sheb,
    }
}

const ALL_ARCHS: [Arch; 24] = [
    Arch::ScmpArchX86,
    Arch::ScmpArchX86_64,
    Arch::ScmpArchX32,
    Arch::ScmpArchArm,
    Arch::ScmpArchAarch64,
    Arch::ScmpArchMips,
    Arch::ScmpArchMips64,
    Arch::ScmpArchMips64n32,
    Arch::ScmpArchMipsel,
    Arch::ScmpArchMipsel64,
    Arch::ScmpArchMipsel64n32,
    Arch::ScmpArchPpc,
    Arch::ScmpArchPpc64,
    Arch::ScmpArchPpc64le,
    Arch::ScmpArchS390,
    Arch::ScmpArchS390x,
    Arch::ScmpArchParisc,
    Arch::ScmpArchParisc64,
    Arch::ScmpArchRiscv64,
    Arch::ScmpArchLoongarch64,
    Arch::ScmpArchM68k,
    Arch::ScmpArchSh,
    Arch::ScmpArchSheb,
    Arch::ScmpArchNative,
];

const ALL_FLAGS: [LinuxSeccompFilterFlag; 4] = [
    LinuxSeccompFilterFlag::SeccompFilterFlagTsync,
    LinuxSeccompFilterFlag::SeccompFilterFlagLog,
    LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow,
    LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv,
];

fn add_arch(ctx: &mut ScmpFilterContext, a: Arch) -> std::result::Result<(), String> {
    let arch = to_arch(a);
    let present = ctx.is_arch_present(arch).map_err(|e| e.to_string())?;
    if !present {
        ctx.add_arch(arch).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn set_flag(
    ctx: &mut ScmpFilterContext,
    f: LinuxSeccompFilterFlag,
) -> std::result::Result<(), String> {
    let r = match f {
        LinuxSeccompFilterFlag::SeccompFilterFlagTsync => ctx.set_ctl_tsync(true),
        LinuxSeccompFilterFlag::SeccompFilterFlagLog => ctx.set_ctl_log(true),
        LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => ctx.set_ctl_ssb(true),
        LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => ctx.set_ctl_waitkill(true),
    };
    r.map(|_| ()).map_err(|e| e.to_string())
}

fn flag_name(f: LinuxSeccompFilterFlag) -> String {
    serde_json::to_value(f)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{f:?}"))
}

fn to_compare(a: &LinuxSeccompArg, field: &str) -> Result<ScmpArgCompare> {
    if a.index() > MAX_ARG_INDEX {
        return Err(bad(format!(
            "{field}.index {} is out of range (0-{MAX_ARG_INDEX})",
            a.index()
        )));
    }
    let (op, datum) = match a.op() {
        LinuxSeccompOperator::ScmpCmpNe => (ScmpCompareOp::NotEqual, a.value()),
        LinuxSeccompOperator::ScmpCmpLt => (ScmpCompareOp::Less, a.value()),
        LinuxSeccompOperator::ScmpCmpLe => (ScmpCompareOp::LessOrEqual, a.value()),
        LinuxSeccompOperator::ScmpCmpEq => (ScmpCompareOp::Equal, a.value()),
        LinuxSeccompOperator::ScmpCmpGe => (ScmpCompareOp::GreaterEqual, a.value()),
        LinuxSeccompOperator::ScmpCmpGt => (ScmpCompareOp::Greater, a.value()),
        // (arg & value) == valueTwo
        LinuxSeccompOperator::ScmpCmpMaskedEq => (
            ScmpCompareOp::MaskedEqual(a.value()),
            a.value_two().unwrap_or(0),
        ),
    };
    Ok(ScmpArgCompare::new(a.index() as u32, op, datum))
}

/// Whether any rule uses SCMP_ACT_NOTIFY.
fn uses_notify(s: &LinuxSeccomp) -> bool {
    s.syscalls()
        .iter()
        .flatten()
        .any(|sc| sc.action() == LinuxSeccompAction::ScmpActNotify)
}

/// Syscalls the init makes between loading the filter and handing the listener to the
/// agent: notifying on them would wait for an agent that cannot have the listener yet.
const NOTIFY_FORBIDDEN: &[&str] = &["sendmsg"];

fn add_syscall_rule(
    ctx: &mut ScmpFilterContext,
    i: usize,
    sc: &LinuxSyscall,
    default: ScmpAction,
) -> Result<()> {
    let field = format!("syscalls[{i}]");
    if sc.names().is_empty() {
        return Err(bad(format!("{field}.names must not be empty")));
    }
    let action = to_action(sc.action(), sc.errno_ret(), &format!("{field}.action"))?;
    let mut conds = Vec::new();
    let mut per_index = [0usize; MAX_ARG_INDEX + 1];
    for (j, a) in sc.args().iter().flatten().enumerate() {
        let c = to_compare(a, &format!("{field}.args[{j}]"))?;
        per_index[a.index()] += 1;
        conds.push(c);
    }
    for (k, name) in sc.names().iter().enumerate() {
        if name.is_empty() {
            return Err(bad(format!("{field}.names[{k}] is empty")));
        }
        if action == ScmpAction::Notify && NOTIFY_FORBIDDEN.contains(&name.as_str()) {
            return Err(bad(format!(
                "{field}: SCMP_ACT_NOTIFY cannot be used for {name:?}: the runtime needs it to hand over the listener"
            )));
        }
    }
    if action == default {
        crate::log::debug(&format!(
            "seccomp: {field} ({}) has the default action; skipped",
            sc.names().join(",")
        ));
        return Ok(());
    }
    let split = conds.len() > 1 && per_index.iter().any(|&n| n > 1);
    for name in sc.names() {
        let nr = match ScmpSyscall::from_name(name) {
            Ok(nr) => nr,
            Err(_) => {
                crate::log::debug(&format!(
                    "seccomp: ignoring syscall {name:?} in {field}: unknown to libseccomp {}",
                    lib_version()
                ));
                continue;
            }
        };
        let groups: Vec<&[ScmpArgCompare]> = if split {
            conds.iter().map(std::slice::from_ref).collect()
        } else {
            vec![&conds[..]]
        };
        for g in groups {
            ctx.add_rule_conditional(action, nr, g).map_err(|e| {
                bad(format!(
                    "{field}: adding the rule for {name:?} ({}): {e}",
                    action_name(sc.action())
                ))
            })?;
        }
    }
    Ok(())
}

/// Compiles `linux.seccomp` into a libseccomp filter (not loaded). Errors name the field.
pub fn build(s: &LinuxSeccomp) -> Result<ScmpFilterContext> {
    if s.default_action() == LinuxSeccompAction::ScmpActNotify {
        return Err(bad(
            "defaultAction: SCMP_ACT_NOTIFY cannot be the default action".into(),
        ));
    }
    let default = to_action(s.default_action(), s.default_errno_ret(), "defaultErrnoRet")?;
    if uses_notify(s)
        && s.listener_path()
            .as_ref()
            .is_none_or(|p| p.as_os_str().is_empty())
    {
        return Err(bad(
            "listenerPath is required when a rule uses SCMP_ACT_NOTIFY".into(),
        ));
    }
    let mut ctx = ScmpFilterContext::new(default)
        .map_err(|e| bad(format!("defaultAction: cannot create the filter: {e}")))?;
    // no_new_privs is the process's setting (process.noNewPrivileges), not libseccomp's.
    ctx.set_ctl_nnp(false)
        .map_err(|e| bad(format!("cannot clear the no_new_privs attribute: {e}")))?;
    for (i, a) in s.architectures().iter().flatten().enumerate() {
        add_arch(&mut ctx, *a).map_err(|e| {
            bad(format!(
                "architectures[{i}]: {} is not supported by libseccomp {}: {e}",
                serde_json::to_value(a).unwrap_or_default(),
                lib_version()
            ))
        })?;
    }
    for (i, f) in s.flags().iter().flatten().enumerate() {
        set_flag(&mut ctx, *f).map_err(|e| {
            bad(format!(
                "flags[{i}]: {} is not supported by libseccomp {} or this kernel: {e}",
                flag_name(*f),
                lib_version()
            ))
        })?;
    }
    for (i, sc) in s.syscalls().iter().flatten().enumerate() {
        add_syscall_rule(&mut ctx, i, sc, default)?;
    }
    Ok(ctx)
}

/// Checks `linux.seccomp` of a config (at `create`, before anything is set up).
pub fn validate(spec: &Spec) -> Result<()> {
    if let Some(s) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        build(s)?;
    }
    Ok(())
}

/// A compiled filter ready to load, and the connection to the NOTIFY agent if any.
pub struct Prepared {
    ctx: ScmpFilterContext,
    /// libseccomp's program behind the ENOSYS stub, when the profile needs one.
    patched: Option<Vec<libc::sock_filter>>,
    /// The profile's `flags`, for loading the patched program.
    flags: Vec<LinuxSeccompFilterFlag>,
    listener: Option<Listener>,
}

struct Listener {
    path: PathBuf,
    sock: UnixStream,
    /// The container process state (runtime-spec "containerProcessState"), sent with the fd.
    msg: String,
}

/// Compiles the filter and, when a rule uses SCMP_ACT_NOTIFY, connects to
/// `linux.seccomp.listenerPath` (a path of the host: call this before pivot_root).
/// `state` is the container's state as of the exec, for the agent.
pub fn prepare(spec: &Spec, state: Value) -> Result<Option<Prepared>> {
    let Some(s) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) else {
        return Ok(None);
    };
    let pid = state["pid"].clone();
    prepare_section(s, spec.version(), pid, state).map(Some)
}

/// `prepare` for a `linux.seccomp` section on its own (`exec` keeps it in the state):
/// `pid` is the process the filter is for, `state` the container's state.
pub fn prepare_section(
    s: &LinuxSeccomp,
    oci_version: &str,
    pid: Value,
    state: Value,
) -> Result<Prepared> {
    let ctx = build(s)?;
    let patched = patch(s, &ctx)?;
    let listener = match s.listener_path() {
        Some(path) if uses_notify(s) => {
            let sock = UnixStream::connect(path).map_err(|e| {
                Error::os(
                    format!("linux.seccomp.listenerPath {}: connect", path.display()),
                    e,
                )
            })?;
            let mut msg = json!({
                "ociVersion": oci_version,
                "fds": ["seccompFd"],
                "pid": pid,
                "state": state,
            });
            if let Some(m) = s.listener_metadata() {
                msg["metadata"] = json!(m);
            }
            Some(Listener {
                path: path.clone(),
                sock,
                msg: msg.to_string(),
            })
        }
        _ => None,
    };
    Ok(Prepared {
        ctx,
        patched,
        flags: s.flags().clone().unwrap_or_default(),
        listener,
    })
}

/// libseccomp's program for `ctx` behind the ENOSYS stub `s` needs, or `None` when it needs
/// none.
fn patch(s: &LinuxSeccomp, ctx: &ScmpFilterContext) -> Result<Option<Vec<libc::sock_filter>>> {
    let native = ScmpArch::native();
    let mut arches = vec![native];
    for a in s.architectures().iter().flatten() {
        arches.push(match to_arch(*a) {
            ScmpArch::Native => native,
            x => x,
        });
    }
    let mut prog = enosys::stub(s, &arches);
    if prog.is_empty() {
        return Ok(None);
    }
    let exported = export(ctx)?;
    prog.extend(enosys::parse(&exported).map_err(|e| Error::Init(format!("seccomp: {e}")))?);
    if prog.len() > enosys::MAX_INSNS {
        return Err(bad(format!(
            "the compiled filter has {} instructions with its ENOSYS check, more than the kernel's {}",
            prog.len(),
            enosys::MAX_INSNS
        )));
    }
    Ok(Some(prog))
}

/// The BPF program libseccomp compiles for `ctx` (through a memfd: libseccomp 2.5 exports
/// to a file descriptor only).
fn export(ctx: &ScmpFilterContext) -> Result<Vec<u8>> {
    use nix::sys::memfd::{memfd_create, MFdFlags};
    use std::io::{Read, Seek};
    let fd = memfd_create(c"rsrun-seccomp", MFdFlags::MFD_CLOEXEC)
        .map_err(|e| Error::os("seccomp: memfd_create", e))?;
    let mut f = std::fs::File::from(fd);
    ctx.export_bpf(&f)
        .map_err(|e| Error::Init(format!("seccomp: export the compiled filter: {e}")))?;
    let mut out = Vec::new();
    f.rewind()
        .and_then(|_| f.read_to_end(&mut out))
        .map_err(|e| Error::os("seccomp: read the exported filter", e))?;
    Ok(out)
}

impl Prepared {
    /// The seccomp(2) flags libseccomp would load this filter with: the profile's (which
    /// `build` gave the context) and a listener for SCMP_ACT_NOTIFY.
    fn load_flags(&self) -> libc::c_ulong {
        let mut flags = 0;
        for f in self.flags.iter() {
            flags |= match f {
                LinuxSeccompFilterFlag::SeccompFilterFlagTsync => libc::SECCOMP_FILTER_FLAG_TSYNC,
                LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
                LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                    libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
                }
                // Only with a listener: the kernel refuses it (EINVAL) without one, and
                // libseccomp passes it only for a filter with SCMP_ACT_NOTIFY rules.
                LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => {
                    if self.listener.is_some() {
                        libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
                    } else {
                        0
                    }
                }
            };
        }
        if self.listener.is_some() {
            flags |= libc::SECCOMP_FILTER_FLAG_NEW_LISTENER;
            if flags & libc::SECCOMP_FILTER_FLAG_TSYNC != 0 {
                // TSYNC's failure would otherwise be reported as a thread ID, where the
                // listener's fd is expected.
                flags |= libc::SECCOMP_FILTER_FLAG_TSYNC_ESRCH;
            }
        }
        flags
    }

    /// The listener connection, which must survive the init's closing of inherited fds.
    pub fn listener_fd(&self) -> Option<RawFd> {
        self.listener.as_ref().map(|l| l.sock.as_raw_fd())
    }

    /// Loads the filter into this process (inherited across execve), then hands the
    /// notification fd to the agent. Needs no_new_privs or CAP_SYS_ADMIN.
    pub fn load(self) -> Result<()> {
        let failed = |e: &dyn std::fmt::Display, eacces: bool| {
            let hint = if eacces {
                " (loading a filter needs no_new_privs or CAP_SYS_ADMIN)"
            } else {
                ""
            };
            Error::Init(format!("load the seccomp filter: {e}{hint}"))
        };
        let notify_fd = match &self.patched {
            Some(prog) => crate::sys::seccomp_set_filter(self.load_flags(), prog)
                .map_err(|e| failed(&e, e.raw_os_error() == Some(libc::EACCES)))?,
            None => {
                self.ctx.load().map_err(|e| {
                    let eacces = matches!(e.errno(), Some(libseccomp::error::SeccompErrno::EACCES));
                    failed(&e, eacces)
                })?;
                None
            }
        };
        if let Some(l) = self.listener {
            let fd = match notify_fd {
                Some(fd) => fd,
                None => {
                    let fd = self
                        .ctx
                        .get_notify_fd()
                        .map_err(|e| Error::Init(format!("seccomp notify fd: {e}")))?;
                    crate::sys::own(fd)
                }
            };
            let sent = crate::sys::send_fd(l.sock.as_raw_fd(), fd.as_raw_fd(), &l.msg);
            // The agent holds its own copy now; the container must not inherit ours.
            drop(fd);
            sent.map_err(|e| {
                Error::os(
                    format!(
                        "send the seccomp listener to linux.seccomp.listenerPath {}",
                        l.path.display()
                    ),
                    e,
                )
            })?;
        }
        Ok(())
    }
}

/// The `linux.seccomp` part of the `features` document: what this build and the linked
/// libseccomp support.
pub fn features() -> Value {
    let actions = [
        "SCMP_ACT_ALLOW",
        "SCMP_ACT_ERRNO",
        "SCMP_ACT_KILL",
        "SCMP_ACT_KILL_PROCESS",
        "SCMP_ACT_KILL_THREAD",
        "SCMP_ACT_LOG",
        "SCMP_ACT_NOTIFY",
        "SCMP_ACT_TRACE",
        "SCMP_ACT_TRAP",
    ];
    let operators = [
        "SCMP_CMP_EQ",
        "SCMP_CMP_GE",
        "SCMP_CMP_GT",
        "SCMP_CMP_LE",
        "SCMP_CMP_LT",
        "SCMP_CMP_MASKED_EQ",
        "SCMP_CMP_NE",
    ];
    let name = |v: Value| v.as_str().unwrap_or_default().to_string();
    let mut archs: Vec<String> = Vec::new();
    let mut supported_flags: Vec<String> = Vec::new();
    if let Ok(mut ctx) = ScmpFilterContext::new(ScmpAction::Allow) {
        for a in ALL_ARCHS {
            if add_arch(&mut ctx, a).is_ok() {
                archs.push(name(serde_json::to_value(a).unwrap_or_default()));
            }
        }
        for f in ALL_FLAGS {
            if set_flag(&mut ctx, f).is_ok() {
                supported_flags.push(flag_name(f));
            }
        }
    }
    archs.sort();
    let mut known_flags: Vec<String> = ALL_FLAGS.iter().map(|f| flag_name(*f)).collect();
    known_flags.sort();
    supported_flags.sort();
    json!({
        "enabled": true,
        "actions": actions,
        "operators": operators,
        "archs": archs,
        "knownFlags": known_flags,
        "supportedFlags": supported_flags,
    })
}

// ---------------------------------------------------------------------------------------
// The RuntimeDefault profile.

/// Syscalls the default profile allows unconditionally: what ordinary programs use, and
/// none that reach past the container's namespaces (mount, setns, module loading, kexec,
/// bpf, perf, keyrings, ptrace, clock setting and the like). Names of other architectures
/// are included; the ones libseccomp does not know on this host are skipped.
const DEFAULT_ALLOW: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "get_robust_list",
    "get_thread_area",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "getxattrat",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "io_setup",
    "io_submit",
    "ioctl",
    "ioprio_get",
    "ioprio_set",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listmount",
    "listxattr",
    "listxattrat",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lsm_get_self_attr",
    "lsm_list_modules",
    "lsm_set_self_attr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "mseal",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "process_vm_readv",
    "process_vm_writev",
    "pselect6",
    "pselect6_time64",
    "ptrace",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "removexattrat",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "set_robust_list",
    "set_thread_area",
    "set_tid_address",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "setsid",
    "setsockopt",
    "setuid",
    "setuid32",
    "setxattr",
    "setxattrat",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statmount",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "uretprobe",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// Syscalls allowed only when the container keeps a capability: (capability, syscalls).
const CAP_ALLOW: &[(&str, &[&str])] = &[
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    (
        "CAP_SYS_MODULE",
        &["delete_module", "init_module", "finit_module"],
    ),
    ("CAP_SYS_PACCT", &["acct"]),
    (
        "CAP_SYS_PTRACE",
        &["kcmp", "pidfd_getfd", "process_madvise"],
    ),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    (
        "CAP_SYS_TIME",
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    (
        "CAP_SYS_NICE",
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
];

/// The capabilities a CRI container gets by default (containerd's and CRI-O's list).
pub const CRI_DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Namespace-creating clone flags (CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER,
/// NEWPID, NEWNET): without CAP_SYS_ADMIN, clone is allowed only without them.
const CLONE_NS_FLAGS: u64 = 0x7E02_0000;

fn rule(names: &[&str], action: LinuxSeccompAction) -> LinuxSyscall {
    let mut s = LinuxSyscall::default();
    s.set_names(names.iter().map(|n| n.to_string()).collect());
    s.set_action(action);
    s
}

fn arg(
    index: usize,
    op: LinuxSeccompOperator,
    value: u64,
    value_two: Option<u64>,
) -> LinuxSeccompArg {
    let mut b = LinuxSeccompArgBuilder::default()
        .index(index)
        .op(op)
        .value(value);
    if let Some(v) = value_two {
        b = b.value_two(v);
    }
    // Every field is set or has a default: building cannot fail.
    b.build().unwrap_or_default()
}

/// The default profile for containers that ask for `RuntimeDefault`, with the CRI default
/// capability set ([`CRI_DEFAULT_CAPS`]). See [`runtime_default_profile_for_caps`].
pub fn runtime_default_profile() -> LinuxSeccomp {
    runtime_default_profile_for_caps(CRI_DEFAULT_CAPS)
}

/// The range `lo..=hi` of 32-bit values as aligned power-of-two blocks, each a (mask, value)
/// pair of a masked equality on the low 32 bits: `x & mask == value` for exactly the values
/// of the range (the fewest such blocks, at most 62).
fn low32_blocks(lo: u32, hi: u32) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let (mut at, end) = (u64::from(lo), u64::from(hi) + 1);
    while at < end {
        // The largest block that starts at `at` (aligned to its size) and ends by `end`.
        let mut size = if at == 0 {
            1u64 << 32
        } else {
            1u64 << at.trailing_zeros()
        };
        while at + size > end {
            size >>= 1;
        }
        out.push((0xffff_ffff & !(size - 1), at));
        at += size;
    }
    out
}

/// The RuntimeDefault profile, written for rsrun after the profiles containerd and CRI-O
/// ship: default action ERRNO(EPERM); an allow-list of ordinary syscalls; personality only
/// with the values of PER_LINUX, PER_LINUX32, UNAME26 (and both) and the 0xffffffff query;
/// clone without namespace flags and clone3 failing with ENOSYS (so that libc falls back
/// to clone, whose flags can be checked) unless CAP_SYS_ADMIN is kept; socket for every
/// address family but AF_ALG and AF_VSOCK; ptrace and process_vm_readv/writev for all (safe
/// since Linux 4.8, which checks seccomp after ptrace; strace, gdb and LeakSanitizer need
/// them); arch_prctl and modify_ldt on x86; syscalls tied to a capability only when `caps`
/// holds it.
///
/// Differences from containerd's profile: the architecture list is chosen from the
/// architecture rsrun was built for (x86_64: X86_64, X86, X32; aarch64: AARCH64, ARM;
/// otherwise the native one) rather than at run time; the s390-specific rules (clone's
/// argument order, s390_pci_mmio_*) are absent; minimum-kernel conditions are not
/// expressed (unknown names are skipped instead; rsrun needs Linux 5.6 or later anyway, so
/// ptrace is allowed without containerd's 4.8 check); socket's family rules compare the
/// argument's low 32 bits only (containerd's compare the whole register, so a family with
/// high bits set passes them and the kernel truncates it to AF_ALG or AF_VSOCK). Shared with
/// containerd's profile and not closed here: socketcall(2), the 32-bit x86 way to socket
/// whose arguments are behind a pointer that seccomp cannot read, is allowed
/// unconditionally (old 32-bit C libraries make every socket call through it).
pub fn runtime_default_profile_for_caps(caps: &[&str]) -> LinuxSeccomp {
    use LinuxSeccompAction::{ScmpActAllow as Allow, ScmpActErrno as Errno};
    let has = |c: &str| caps.contains(&c);
    let mut syscalls = vec![rule(DEFAULT_ALLOW, Allow)];
    // socket for every address family but AF_ALG (the kernel crypto API's attack surface)
    // and AF_VSOCK, as containerd's profile. The family is an int: the kernel drops the
    // register's high half, which a plain comparison (containerd's `> AF_VSOCK`) sees, so
    // a family of 1 << 32 | AF_ALG would pass it. Each allowed range of the low half is
    // instead a set of masked equalities on the low 32 bits alone, one rule each (one rule
    // with several conditions on the same argument would not AND them in libseccomp).
    let (alg, vsock) = (libc::AF_ALG as u32, libc::AF_VSOCK as u32);
    for (lo, hi) in [(0, alg - 1), (alg + 1, vsock - 1), (vsock + 1, u32::MAX)] {
        for (mask, value) in low32_blocks(lo, hi) {
            let mut r = rule(&["socket"], Allow);
            r.set_args(Some(vec![arg(
                0,
                LinuxSeccompOperator::ScmpCmpMaskedEq,
                mask,
                Some(value),
            )]));
            syscalls.push(r);
        }
    }
    for v in [0x0u64, 0x8, 0x20000, 0x20008, 0xffff_ffff] {
        let mut r = rule(&["personality"], Allow);
        r.set_args(Some(vec![arg(0, LinuxSeccompOperator::ScmpCmpEq, v, None)]));
        syscalls.push(r);
    }
    if cfg!(any(target_arch = "x86_64", target_arch = "x86")) {
        syscalls.push(rule(&["arch_prctl", "modify_ldt"], Allow));
    }
    if cfg!(target_arch = "aarch64") || cfg!(target_arch = "arm") {
        syscalls.push(rule(
            &[
                "arm_fadvise64_64",
                "arm_sync_file_range",
                "sync_file_range2",
                "breakpoint",
                "cacheflush",
                "set_tls",
            ],
            Allow,
        ));
    }
    let mut extra: Vec<&str> = Vec::new();
    for (cap, names) in CAP_ALLOW {
        if has(cap) {
            extra.extend(names.iter().copied());
        }
    }
    extra.sort_unstable();
    extra.dedup();
    if !has("CAP_SYS_ADMIN") {
        let mut r = rule(&["clone"], Allow);
        r.set_args(Some(vec![arg(
            0,
            LinuxSeccompOperator::ScmpCmpMaskedEq,
            CLONE_NS_FLAGS,
            Some(0),
        )]));
        syscalls.push(r);
        let mut r = rule(&["clone3"], Errno);
        r.set_errno_ret(Some(libc::ENOSYS as u32));
        syscalls.push(r);
    }
    if !extra.is_empty() {
        syscalls.push(rule(&extra, Allow));
    }
    let archs = if cfg!(target_arch = "x86_64") {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    } else if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    } else {
        vec![Arch::ScmpArchNative]
    };
    let mut p = LinuxSeccomp::default();
    p.set_default_action(Errno);
    p.set_default_errno_ret(Some(libc::EPERM as u32));
    p.set_architectures(Some(archs));
    p.set_syscalls(Some(syscalls));
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(v: Value) -> LinuxSeccomp {
        serde_json::from_value(v).unwrap()
    }

    fn err(v: Value) -> String {
        match build(&profile(v)) {
            Ok(_) => panic!("built"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn low32_blocks_cover_exactly_the_range() {
        let hits = |b: &[(u64, u64)], x: u64| b.iter().filter(|(m, v)| x & m == *v).count();
        for (lo, hi) in [(0, 37), (39, 39), (41, u32::MAX), (0, u32::MAX), (5, 1000)] {
            let b = low32_blocks(lo, hi);
            assert!(b.len() <= 62, "{lo}..={hi}: {} blocks", b.len());
            let edges = [
                0u64,
                1,
                4,
                5,
                36,
                37,
                38,
                39,
                40,
                41,
                42,
                1000,
                1001,
                0xffff_ffff,
            ];
            for x in edges {
                let want = usize::from((u64::from(lo)..=u64::from(hi)).contains(&x));
                assert_eq!(hits(&b, x), want, "{lo}..={hi} at {x}");
                // The high half never matters.
                assert_eq!(hits(&b, x | 7 << 32), want, "{lo}..={hi} at {x} | 7 << 32");
            }
        }
        assert_eq!(low32_blocks(0, 37).len(), 3);
    }

    #[test]
    fn runtime_default_loads_into_libseccomp() {
        let p = runtime_default_profile();
        let ctx = build(&p).unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        ctx.export_bpf(&w).unwrap();
        drop(w);
        let mut bpf = Vec::new();
        std::io::Read::read_to_end(&mut std::fs::File::from(r), &mut bpf).unwrap();
        // Hundreds of allowed syscalls over three architectures: a long program.
        assert!(bpf.len() / 8 > 300, "{} instructions", bpf.len() / 8);
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        // Round-trips through the config format the CRI server writes.
        let text = serde_json::to_string(&p).unwrap();
        let back: LinuxSeccomp = serde_json::from_str(&text).unwrap();
        assert_eq!(back, p);
        let names: Vec<String> = p
            .syscalls()
            .iter()
            .flatten()
            .filter(|s| s.action() == LinuxSeccompAction::ScmpActAllow && s.args().is_none())
            .flat_map(|s| s.names().clone())
            .collect();
        for n in [
            "execve",
            "capset",
            "setresuid",
            "setgroups",
            "chdir",
            "umask",
            "prctl",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} not allowed");
        }
        for n in ["ptrace", "process_vm_readv", "name_to_handle_at"] {
            assert!(names.iter().any(|x| x == n), "{n} not allowed");
        }
        for n in [
            "mount",
            "unshare",
            "setns",
            "pidfd_getfd",
            "kexec_load",
            "bpf",
            "reboot",
            "socket",
        ] {
            assert!(!names.iter().any(|x| x == n), "{n} allowed");
        }
        // socket only with conditions on its family.
        let socket: Vec<_> = p
            .syscalls()
            .iter()
            .flatten()
            .filter(|s| s.names().iter().any(|n| n == "socket"))
            .collect();
        assert_eq!(socket.len(), 34);
        assert!(socket
            .iter()
            .all(|s| s.args().as_ref().is_some_and(|a| a.len() == 1)));
        // With CAP_SYS_ADMIN: mount and unrestricted clone.
        let p = runtime_default_profile_for_caps(&["CAP_SYS_ADMIN"]);
        build(&p).unwrap();
        let text = serde_json::to_string(&p).unwrap();
        assert!(text.contains("\"mount\""));
        let clone_limited = p.syscalls().iter().flatten().any(|s| {
            (s.names().iter().any(|n| n.starts_with("clone")) && s.args().is_some())
                || s.action() != LinuxSeccompAction::ScmpActAllow
        });
        assert!(!clone_limited, "{text}");
    }

    #[test]
    fn unknown_names_skipped_empty_names_refused() {
        build(&profile(
            json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mkdir", "no_such_syscall_xyz"], "action": "SCMP_ACT_ERRNO"}]}),
        ))
        .unwrap();
        let e = err(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"},
            {"names": [], "action": "SCMP_ACT_ERRNO"}]}));
        assert!(
            e.contains("linux.seccomp: syscalls[1].names must not be empty"),
            "{e}"
        );
        let e = err(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mkdir", ""], "action": "SCMP_ACT_ERRNO"}]}));
        assert!(e.contains("syscalls[0].names[1] is empty"), "{e}");
    }

    #[test]
    fn field_errors() {
        let e = err(json!({"defaultAction": "SCMP_ACT_NOTIFY", "listenerPath": "/x"}));
        assert!(e.contains("defaultAction"), "{e}");
        let e = err(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]}));
        assert!(e.contains("listenerPath"), "{e}");
        let e = err(
            json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/x", "syscalls": [
            {"names": ["sendmsg"], "action": "SCMP_ACT_NOTIFY"}]}),
        );
        assert!(e.contains("syscalls[0]") && e.contains("sendmsg"), "{e}");
        let e = err(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 70000}]}));
        assert!(e.contains("syscalls[0].action: errnoRet 70000"), "{e}");
        let e = err(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}));
        assert!(
            e.contains("syscalls[0].args[0].index 6 is out of range"),
            "{e}"
        );
        // Unknown action names are refused by the config parser with the JSON path.
        let r: std::result::Result<LinuxSeccomp, _> = serde_json::from_value(json!(
            {"defaultAction": "SCMP_ACT_NOPE"}));
        assert!(r.is_err());
    }

    #[test]
    fn every_operator_action_and_split_rule_compiles() {
        let ops = [
            "SCMP_CMP_NE",
            "SCMP_CMP_LT",
            "SCMP_CMP_LE",
            "SCMP_CMP_EQ",
            "SCMP_CMP_GE",
            "SCMP_CMP_GT",
            "SCMP_CMP_MASKED_EQ",
        ];
        let acts = [
            "SCMP_ACT_KILL",
            "SCMP_ACT_KILL_PROCESS",
            "SCMP_ACT_KILL_THREAD",
            "SCMP_ACT_TRAP",
            "SCMP_ACT_ERRNO",
            "SCMP_ACT_TRACE",
            "SCMP_ACT_LOG",
            "SCMP_ACT_NOTIFY",
        ];
        let mut rules = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            rules.push(
                json!({"names": ["personality"], "action": acts[i % acts.len()],
                "args": [{"index": 0, "value": 8 + i as u64, "valueTwo": 8, "op": op}]}),
            );
        }
        // Two conditions on arg 1 (split into two rules) and two on different args (ANDed).
        rules.push(
            json!({"names": ["kill"], "action": "SCMP_ACT_ERRNO", "args": [
            {"index": 1, "value": 10, "op": "SCMP_CMP_EQ"},
            {"index": 1, "value": 12, "op": "SCMP_CMP_EQ"}]}),
        );
        rules.push(
            json!({"names": ["tkill"], "action": "SCMP_ACT_ERRNO", "args": [
            {"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
            {"index": 1, "value": 12, "op": "SCMP_CMP_EQ"}]}),
        );
        let ctx = build(&profile(json!({"defaultAction": "SCMP_ACT_ALLOW",
            "listenerPath": "/run/agent.sock", "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
            "flags": ["SECCOMP_FILTER_FLAG_LOG"], "syscalls": rules}))).unwrap();
        assert!(ctx.get_ctl_log().unwrap());
        assert!(!ctx.get_ctl_nnp().unwrap());
    }

    #[test]
    fn features_are_truthful() {
        let f = features();
        assert_eq!(f["enabled"], true);
        let archs = f["archs"].as_array().unwrap();
        assert!(archs
            .iter()
            .any(|a| a == "SCMP_ARCH_X86_64" || a == "SCMP_ARCH_AARCH64"));
        // Every supported flag can be set on a filter.
        for fl in f["supportedFlags"].as_array().unwrap() {
            let p = profile(json!({"defaultAction": "SCMP_ACT_ALLOW", "flags": [fl]}));
            build(&p).unwrap();
        }
    }
}
