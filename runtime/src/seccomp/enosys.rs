//! The ENOSYS stub: syscalls newer than a profile return ENOSYS, not its default action.
//!
//! A profile names the syscalls its authors knew. One whose default action refuses (an
//! errno, a kill, a trap) also refuses every syscall the kernel gained after it was
//! written, and with EPERM where programs and C libraries expect ENOSYS before they fall
//! back to an older call (glibc's clone3, faccessat2, fchmodat2 and the like): the program
//! fails instead of falling back. As runc does, the BPF program libseccomp compiles is
//! prefixed with a check of its own: per architecture of the filter, a syscall number above
//! the largest one the profile names (whatever its action) gets ENOSYS; every other call
//! runs the profile's program unchanged. Numbers below that largest one that the profile
//! leaves out still get the default action. Architectures without a stub here (s390, MIPS,
//! PA-RISC, SuperH, m68k: their numbering needs more than one comparison) run the profile
//! as compiled.

use libseccomp::{ScmpArch, ScmpSyscall};
use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction};

/// `BPF_LD | BPF_W | BPF_ABS`: A = the 32-bit word at offset k of `struct seccomp_data`.
const LD_ABS: u16 = 0x20;
/// `BPF_JMP | BPF_JEQ | BPF_K`.
const JEQ: u16 = 0x15;
/// `BPF_JMP | BPF_JGT | BPF_K` (unsigned).
const JGT: u16 = 0x25;
/// `BPF_JMP | BPF_JSET | BPF_K`.
const JSET: u16 = 0x45;
/// `BPF_RET | BPF_K`.
const RET: u16 = 0x06;

/// Offsets in `struct seccomp_data`.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;

const RET_ERRNO: u32 = 0x0005_0000;
/// The bit that marks an x32 syscall on x86-64 (`__X32_SYSCALL_BIT`).
const X32_BIT: u32 = 0x4000_0000;
/// The kernel's limit on a classic BPF program (`BPF_MAXINSNS`).
pub const MAX_INSNS: usize = 4096;

/// The AUDIT_ARCH_* value the kernel puts in `seccomp_data.arch` (x32 shares x86-64's).
fn audit_arch(a: ScmpArch) -> Option<u32> {
    Some(match a {
        ScmpArch::X8664 | ScmpArch::X32 => 0xC000_003E,
        ScmpArch::X86 => 0x4000_0003,
        ScmpArch::Aarch64 => 0xC000_00B7,
        ScmpArch::Arm => 0x4000_0028,
        ScmpArch::Riscv64 => 0xC000_00F3,
        ScmpArch::Ppc64Le => 0xC000_0015,
        ScmpArch::Ppc64 => 0x8000_0015,
        ScmpArch::Ppc => 0x0000_0014,
        ScmpArch::Loongarch64 => 0xC000_0102,
        _ => return None,
    })
}

/// Default actions under which a syscall the profile does not know already runs (a tracer
/// is expected to handle syscalls it does not know, as runc reasons): no stub for them.
fn allows(a: LinuxSeccompAction) -> bool {
    matches!(
        a,
        LinuxSeccompAction::ScmpActAllow
            | LinuxSeccompAction::ScmpActLog
            | LinuxSeccompAction::ScmpActTrace
    )
}

/// The largest number any of `names` has on `arch`, among the names libseccomp knows there.
fn largest(names: &[&str], arch: ScmpArch) -> Option<u32> {
    names
        .iter()
        .filter_map(|n| ScmpSyscall::from_name_by_arch(n, arch).ok())
        .map(i32::from)
        // Negative: a pseudo-syscall number (a name that is no syscall on this arch).
        .filter_map(|nr| u32::try_from(nr).ok())
        .max()
}

/// One architecture's check: a number above `native` (or, for an x32 call, above `x32`)
/// is ENOSYS. `u32::MAX` where the filter has no such syscalls: the check never fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Section {
    audit: u32,
    native: u32,
    x32: Option<u32>,
}

fn sections(s: &LinuxSeccomp, arches: &[ScmpArch]) -> Vec<Section> {
    let names: Vec<&str> = s
        .syscalls()
        .iter()
        .flatten()
        .flat_map(|r| r.names().iter().map(String::as_str))
        .collect();
    let mut out: Vec<Section> = Vec::new();
    for &a in arches {
        let Some(audit) = audit_arch(a) else { continue };
        let Some(max) = largest(&names, a) else {
            continue;
        };
        let i = match out.iter().position(|x| x.audit == audit) {
            Some(i) => i,
            None => {
                out.push(Section {
                    audit,
                    native: u32::MAX,
                    x32: None,
                });
                out.len() - 1
            }
        };
        if a == ScmpArch::X32 {
            // libseccomp's x32 numbers carry the x32 bit.
            out[i].x32 = Some(max | X32_BIT);
        } else {
            out[i].native = max;
        }
    }
    // x86-64 checks the x32 bit whether or not x32 is in the filter: an x32 call is never
    // compared with the native numbers.
    for x in &mut out {
        if x.audit == audit_arch(ScmpArch::X8664).unwrap_or(0) && x.x32.is_none() {
            x.x32 = Some(u32::MAX);
        }
    }
    out
}

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The stub for `s` compiled for `arches` (the native one among them), to be put before
/// libseccomp's program; empty when none is needed.
pub fn stub(s: &LinuxSeccomp, arches: &[ScmpArch]) -> Vec<libc::sock_filter> {
    if allows(s.default_action()) {
        return Vec::new();
    }
    let secs = sections(s, arches);
    if secs.is_empty() {
        return Vec::new();
    }
    let size = |x: &Section| if x.x32.is_some() { 6 } else { 4 };
    let enosys: usize = secs.iter().map(size).sum();
    let filter = enosys + 1;
    // Offsets of conditional jumps count from the next instruction; the stub is at most a
    // few dozen instructions, far from the 255 a jump can span.
    let rel = |from: usize, to: usize| u8::try_from(to - from - 1).expect("short stub");
    let mut p = Vec::with_capacity(filter);
    for x in &secs {
        // Where a call of another architecture goes: the next check, after the last one
        // the profile's program.
        let next = match p.len() + size(x) {
            n if n == enosys => filter,
            n => n,
        };
        p.push(insn(LD_ABS, 0, 0, DATA_ARCH));
        let at = p.len();
        p.push(insn(JEQ, 0, rel(at, next), x.audit));
        p.push(insn(LD_ABS, 0, 0, DATA_NR));
        if let Some(x32) = x.x32 {
            // An x32 call skips the native comparison.
            p.push(insn(JSET, 1, 0, X32_BIT));
            let at = p.len();
            p.push(insn(JGT, rel(at, enosys), rel(at, filter), x.native));
            let at = p.len();
            p.push(insn(JGT, rel(at, enosys), rel(at, filter), x32));
        } else {
            let at = p.len();
            p.push(insn(JGT, rel(at, enosys), rel(at, filter), x.native));
        }
    }
    p.push(insn(RET, 0, 0, RET_ERRNO | libc::ENOSYS as u32));
    debug_assert_eq!(p.len(), filter);
    p
}

/// libseccomp's exported program (host-endian `struct sock_filter`s) as instructions.
pub fn parse(bytes: &[u8]) -> Result<Vec<libc::sock_filter>, String> {
    if !bytes.chunks_exact(8).remainder().is_empty() {
        return Err(format!(
            "the exported program is {} bytes, not whole instructions",
            bytes.len()
        ));
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| {
            insn(
                u16::from_ne_bytes([c[0], c[1]]),
                c[2],
                c[3],
                u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn profile(v: serde_json::Value) -> LinuxSeccomp {
        serde_json::from_value(v).unwrap()
    }

    /// Runs a classic BPF program over (arch, nr) as the kernel would (the instructions
    /// the stub and these tests use).
    fn run(p: &[libc::sock_filter], arch: u32, nr: u32) -> u32 {
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let i = p[pc];
            pc += 1;
            match i.code {
                LD_ABS => a = if i.k == DATA_ARCH { arch } else { nr },
                JEQ | JGT | JSET => {
                    let t = match i.code {
                        JEQ => a == i.k,
                        JGT => a > i.k,
                        _ => a & i.k != 0,
                    };
                    pc += usize::from(if t { i.jt } else { i.jf });
                }
                RET => return i.k,
                c => panic!("instruction {c:#x} not modelled"),
            }
        }
    }

    const FILTER: u32 = 0x7fff_0000; // what the "profile" below returns (ALLOW)

    fn with_tail(mut p: Vec<libc::sock_filter>) -> Vec<libc::sock_filter> {
        p.push(insn(RET, 0, 0, FILTER));
        p
    }

    #[test]
    fn newer_syscalls_get_enosys_per_architecture() {
        let s = profile(json!({"defaultAction": "SCMP_ACT_ERRNO",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [{"names": ["read", "write", "openat", "no_such_call"],
                          "action": "SCMP_ACT_ALLOW"}]}));
        let p = with_tail(stub(&s, &[ScmpArch::X8664, ScmpArch::X86, ScmpArch::X32]));
        let enosys = RET_ERRNO | libc::ENOSYS as u32;
        let x86_64 = 0xC000_003E;
        // openat is 257 on x86-64, 295 on i386, 0x40000101 on x32.
        assert_eq!(run(&p, x86_64, 257), FILTER);
        assert_eq!(run(&p, x86_64, 0), FILTER);
        assert_eq!(run(&p, x86_64, 258), enosys);
        assert_eq!(run(&p, x86_64, 435), enosys);
        assert_eq!(run(&p, x86_64, X32_BIT | 257), FILTER);
        assert_eq!(run(&p, x86_64, X32_BIT | 258), enosys);
        assert_eq!(run(&p, 0x4000_0003, 295), FILTER);
        assert_eq!(run(&p, 0x4000_0003, 296), enosys);
        // An architecture the filter does not name: libseccomp's program decides.
        assert_eq!(run(&p, 0xC000_00B7, 1000), FILTER);
    }

    #[test]
    fn x32_calls_go_to_the_filter_when_x32_is_not_named() {
        let s = profile(json!({"defaultAction": "SCMP_ACT_KILL_PROCESS",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}));
        let p = with_tail(stub(&s, &[ScmpArch::X8664]));
        assert_eq!(run(&p, 0xC000_003E, 1), RET_ERRNO | libc::ENOSYS as u32);
        assert_eq!(run(&p, 0xC000_003E, 0), FILTER);
        assert_eq!(run(&p, 0xC000_003E, X32_BIT | 5), FILTER);
    }

    #[test]
    fn no_stub_where_unknown_syscalls_already_run_or_nothing_is_named() {
        for d in ["SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_TRACE"] {
            let s = profile(json!({"defaultAction": d,
                "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO"}]}));
            assert!(stub(&s, &[ScmpArch::X8664]).is_empty(), "{d}");
        }
        let s = profile(json!({"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["no_such_call"], "action": "SCMP_ACT_ALLOW"}]}));
        assert!(stub(&s, &[ScmpArch::X8664]).is_empty());
        let s = profile(json!({"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}));
        assert!(stub(&s, &[ScmpArch::S390X]).is_empty());
    }

    #[test]
    fn exported_programs_parse() {
        assert!(parse(&[0; 7]).is_err());
        let p = parse(&[0x06, 0, 1, 2, 5, 0, 0, 0]).unwrap();
        assert_eq!((p[0].code, p[0].jt, p[0].jf), (6, 1, 2));
        assert_eq!(p[0].k, u32::from_ne_bytes([5, 0, 0, 0]));
    }
}
