//! Device access rules (`linux.resources.devices`): checked, completed with the default
//! allow list runc uses, and turned into v1 devices.allow/deny lines or a cgroup v2 eBPF
//! device program assembled here from raw instructions.

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use crate::error::{Error, Result};

/// Access bits as BPF_DEVCG_ACC_* define them.
pub const ACC_MKNOD: u32 = 1;
pub const ACC_READ: u32 = 2;
pub const ACC_WRITE: u32 = 4;
pub const ACC_ALL: u32 = ACC_MKNOD | ACC_READ | ACC_WRITE;

/// One rule: `kind` 'a' (all), 'b' or 'c'; None for a wildcard major/minor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub allow: bool,
    pub kind: char,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: u32,
}

impl Rule {
    const fn new(kind: char, major: Option<u32>, minor: Option<u32>, access: u32) -> Rule {
        Rule {
            allow: true,
            kind,
            major,
            minor,
            access,
        }
    }

    /// The v1 devices.allow/devices.deny line, e.g. "c 1:3 rwm".
    pub fn v1_line(&self) -> String {
        let n = |v: Option<u32>| v.map_or("*".to_string(), |v| v.to_string());
        let acc = self.access_str();
        if self.kind == 'a' {
            return "a".to_string();
        }
        format!("{} {}:{} {acc}", self.kind, n(self.major), n(self.minor))
    }

    /// The access bits as "rwm" letters.
    pub fn access_str(&self) -> String {
        let mut acc = String::new();
        for (bit, c) in [(ACC_READ, 'r'), (ACC_WRITE, 'w'), (ACC_MKNOD, 'm')] {
            if self.access & bit != 0 {
                acc.push(c);
            }
        }
        acc
    }

    fn is_all(&self) -> bool {
        self.kind == 'a' && self.major.is_none() && self.minor.is_none() && self.access == ACC_ALL
    }
}

/// The devices every container may use, appended after the config's rules as runc does:
/// mknod of any device, /dev/null, zero, full, random, urandom, tty, ptmx, pts/*, and
/// /dev/net/tun (runc's list again since 1.2: VPN sidecars make the node and open it).
pub const DEFAULT_ALLOWED: [Rule; 11] = [
    Rule::new('c', None, None, ACC_MKNOD),
    Rule::new('b', None, None, ACC_MKNOD),
    Rule::new('c', Some(1), Some(3), ACC_ALL),
    Rule::new('c', Some(1), Some(5), ACC_ALL),
    Rule::new('c', Some(1), Some(7), ACC_ALL),
    Rule::new('c', Some(1), Some(8), ACC_ALL),
    Rule::new('c', Some(1), Some(9), ACC_ALL),
    Rule::new('c', Some(5), Some(0), ACC_ALL),
    Rule::new('c', Some(5), Some(2), ACC_ALL),
    Rule::new('c', Some(136), None, ACC_ALL),
    Rule::new('c', Some(10), Some(200), ACC_ALL),
];

/// Checks the config's rules and returns them followed by the default allow list.
pub fn rules(spec: &[LinuxDeviceCgroup]) -> Result<Vec<Rule>> {
    let mut out = Vec::with_capacity(spec.len() + DEFAULT_ALLOWED.len());
    for (i, d) in spec.iter().enumerate() {
        let field = format!("linux.resources.devices[{i}]");
        let kind = match d.typ().unwrap_or_default() {
            LinuxDeviceType::A => 'a',
            LinuxDeviceType::B => 'b',
            LinuxDeviceType::C => 'c',
            t => {
                return Err(Error::Config(format!(
                    "{field}.type: {:?} is not a device cgroup type (a, b or c)",
                    t.as_str()
                )))
            }
        };
        let num = |v: Option<i64>, what: &str| -> Result<Option<u32>> {
            match v {
                None | Some(-1) => Ok(None),
                Some(n) if (0..=u32::MAX as i64).contains(&n) => Ok(Some(n as u32)),
                Some(n) => Err(Error::Config(format!(
                    "{field}.{what}: {n} is not a device number"
                ))),
            }
        };
        let major = num(d.major(), "major")?;
        let minor = num(d.minor(), "minor")?;
        let mut access = 0;
        let acc = d.access().as_deref().unwrap_or("rwm");
        for c in acc.chars() {
            access |= match c {
                'r' => ACC_READ,
                'w' => ACC_WRITE,
                'm' => ACC_MKNOD,
                _ => {
                    return Err(Error::Config(format!(
                        "{field}.access: {acc:?} may only contain r, w and m"
                    )))
                }
            };
        }
        if access == 0 {
            access = ACC_ALL;
        }
        let (major, minor) = if kind == 'a' {
            (None, None)
        } else {
            (major, minor)
        };
        out.push(Rule {
            allow: d.allow(),
            kind,
            major,
            minor,
            access,
        });
    }
    out.extend(DEFAULT_ALLOWED.iter().cloned());
    Ok(out)
}

/// The v1 writes: ("devices.deny" | "devices.allow", line), starting from deny-all.
pub fn v1_writes(rules: &[Rule]) -> Vec<(&'static str, String)> {
    let mut out = vec![("devices.deny", "a".to_string())];
    for r in rules {
        let file = if r.allow {
            "devices.allow"
        } else {
            "devices.deny"
        };
        if r.kind == 'a' && !r.is_all() {
            // "a" with a partial access mask has no v1 form: the kernel would read it as
            // all-or-nothing. Spell it as both types.
            for k in ['b', 'c'] {
                let mut x = r.clone();
                x.kind = k;
                out.push((file, x.v1_line()));
            }
        } else {
            out.push((file, r.v1_line()));
        }
    }
    out
}

// ---- eBPF (BPF_PROG_TYPE_CGROUP_DEVICE) ------------------------------------------------

// Instruction classes, operations and modes of the BPF instruction set.
const BPF_LDX: u8 = 0x01;
const BPF_ALU: u8 = 0x04;
const BPF_JMP: u8 = 0x05;
const BPF_ALU64: u8 = 0x07;
const BPF_W: u8 = 0x00;
const BPF_MEM: u8 = 0x60;
const BPF_K: u8 = 0x00;
const BPF_X: u8 = 0x08;
const BPF_AND: u8 = 0x50;
const BPF_RSH: u8 = 0x70;
const BPF_MOV: u8 = 0xb0;
const BPF_JEQ: u8 = 0x10;
const BPF_JNE: u8 = 0x50;
const BPF_EXIT: u8 = 0x90;

/// BPF_DEVCG_DEV_BLOCK / BPF_DEVCG_DEV_CHAR.
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;

/// One `struct bpf_insn` (8 bytes: code, dst:4|src:4, off, imm), as the kernel reads it on
/// a little-endian machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    pub dst: u8,
    pub src: u8,
    pub off: i16,
    pub imm: i32,
}

impl Insn {
    const fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        Insn {
            code,
            dst,
            src,
            off,
            imm,
        }
    }

    pub fn encode(&self) -> u64 {
        u64::from(self.code)
            | (u64::from(self.dst & 0xf) << 8)
            | (u64::from(self.src & 0xf) << 12)
            | (u64::from(self.off as u16) << 16)
            | (u64::from(self.imm as u32) << 32)
    }
}

fn ldx_w(dst: u8, src: u8, off: i16) -> Insn {
    Insn::new(BPF_LDX | BPF_MEM | BPF_W, dst, src, off, 0)
}
fn alu32_k(op: u8, dst: u8, imm: i32) -> Insn {
    Insn::new(BPF_ALU | op | BPF_K, dst, 0, 0, imm)
}
fn mov32_x(dst: u8, src: u8) -> Insn {
    Insn::new(BPF_ALU | BPF_MOV | BPF_X, dst, src, 0, 0)
}
fn mov64_k(dst: u8, imm: i32) -> Insn {
    Insn::new(BPF_ALU64 | BPF_MOV | BPF_K, dst, 0, 0, imm)
}
fn jmp_k(op: u8, dst: u8, imm: i32) -> Insn {
    // The offset is filled in when the rule's block is complete.
    Insn::new(BPF_JMP | op | BPF_K, dst, 0, 0, imm)
}
fn exit() -> Insn {
    Insn::new(BPF_JMP | BPF_EXIT, 0, 0, 0, 0)
}

/// Assembles the device program. The context is `struct bpf_cgroup_dev_ctx { u32
/// access_type; u32 major; u32 minor; }` with access_type = access << 16 | type. Registers:
/// r2 type, r3 access, r4 major, r5 minor, r1 scratch. Rules are tested last to first and
/// the first that matches decides (so a later rule overrides an earlier one, as on v1); an
/// allow rule matches when it grants every requested access bit, a deny rule when it
/// covers any of them. Nothing matching: denied.
pub fn program(rules: &[Rule]) -> Vec<Insn> {
    let mut p = vec![
        ldx_w(2, 1, 0),
        alu32_k(BPF_AND, 2, 0xffff),
        ldx_w(3, 1, 0),
        alu32_k(BPF_RSH, 3, 16),
        ldx_w(4, 1, 4),
        ldx_w(5, 1, 8),
    ];
    for r in rules.iter().rev() {
        let mut b: Vec<Insn> = Vec::new();
        let mut jumps = Vec::new();
        match r.kind {
            'b' => {
                jumps.push(b.len());
                b.push(jmp_k(BPF_JNE, 2, DEV_BLOCK));
            }
            'c' => {
                jumps.push(b.len());
                b.push(jmp_k(BPF_JNE, 2, DEV_CHAR));
            }
            _ => {}
        }
        if r.access != ACC_ALL {
            b.push(mov32_x(1, 3));
            if r.allow {
                // requested & ~granted must be 0
                b.push(alu32_k(BPF_AND, 1, (!r.access & ACC_ALL) as i32));
                jumps.push(b.len());
                b.push(jmp_k(BPF_JNE, 1, 0));
            } else {
                // requested & denied must be non-zero
                b.push(alu32_k(BPF_AND, 1, r.access as i32));
                jumps.push(b.len());
                b.push(jmp_k(BPF_JEQ, 1, 0));
            }
        }
        if let Some(m) = r.major {
            jumps.push(b.len());
            b.push(jmp_k(BPF_JNE, 4, m as i32));
        }
        if let Some(m) = r.minor {
            jumps.push(b.len());
            b.push(jmp_k(BPF_JNE, 5, m as i32));
        }
        b.push(mov64_k(0, i32::from(r.allow)));
        b.push(exit());
        let len = b.len();
        let unconditional = jumps.is_empty();
        for j in jumps {
            // Past this block's last instruction: the next rule.
            b[j].off = (len - 1 - j) as i16;
        }
        p.extend(b);
        if unconditional {
            // Matches everything: what follows could never run, and the verifier refuses
            // unreachable instructions.
            return p;
        }
    }
    p.push(mov64_k(0, 0));
    p.push(exit());
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the program the way the kernel would, for the instructions `program` emits.
    fn eval(p: &[Insn], typ: u32, access: u32, major: u32, minor: u32) -> u64 {
        let ctx = [access << 16 | typ, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = p[pc];
            pc += 1;
            let (d, s) = (i.dst as usize, i.src as usize);
            match i.code {
                0x61 => r[d] = u64::from(ctx[(r[s] as usize + i.off as usize) / 4]),
                0x54 => r[d] = (r[d] as u32 & i.imm as u32) as u64,
                0x74 => r[d] = ((r[d] as u32) >> i.imm) as u64,
                0xbc => r[d] = r[s] as u32 as u64,
                0xb7 => r[d] = i.imm as i64 as u64,
                0x55 if r[d] != i.imm as i64 as u64 => pc += i.off as usize,
                0x15 if r[d] == i.imm as i64 as u64 => pc += i.off as usize,
                0x55 | 0x15 => {}
                0x95 => return r[0],
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    fn rule(
        allow: bool,
        kind: char,
        major: Option<u32>,
        minor: Option<u32>,
        acc: &str,
    ) -> LinuxDeviceCgroup {
        let mut d = LinuxDeviceCgroup::default();
        d.set_allow(allow);
        d.set_typ(Some(match kind {
            'a' => LinuxDeviceType::A,
            'b' => LinuxDeviceType::B,
            'p' => LinuxDeviceType::P,
            _ => LinuxDeviceType::C,
        }));
        d.set_major(major.map(i64::from));
        d.set_minor(minor.map(i64::from));
        d.set_access(Some(acc.to_string()));
        d
    }

    #[test]
    fn deny_all_then_defaults() {
        let rs = rules(&[rule(false, 'a', None, None, "rwm")]).unwrap();
        let p = program(&rs);
        let rw = ACC_READ | ACC_WRITE;
        assert_eq!(eval(&p, 2, rw, 1, 3), 1, "/dev/null");
        assert_eq!(eval(&p, 2, rw, 1, 11), 0, "/dev/kmsg");
        assert_eq!(eval(&p, 2, ACC_MKNOD, 1, 11), 1, "mknod of any char device");
        assert_eq!(eval(&p, 1, ACC_READ, 8, 0), 0, "a disk");
        assert_eq!(eval(&p, 2, rw, 136, 4), 1, "a pts");
        let v1 = v1_writes(&rs);
        assert_eq!(v1[0], ("devices.deny", "a".to_string()));
        assert_eq!(v1[1], ("devices.deny", "a".to_string()));
        assert!(v1.contains(&("devices.allow", "c 1:3 rwm".to_string())));
        assert!(v1.contains(&("devices.allow", "c *:* m".to_string())));
    }

    #[test]
    fn later_rules_override_and_partial_access() {
        let rs = rules(&[
            rule(true, 'a', None, None, "rwm"),
            rule(false, 'b', Some(8), None, "w"),
            rule(true, 'c', Some(10), Some(229), "r"),
        ])
        .unwrap();
        let p = program(&rs);
        assert_eq!(eval(&p, 1, ACC_READ, 8, 1), 1);
        assert_eq!(eval(&p, 1, ACC_WRITE, 8, 1), 0);
        assert_eq!(eval(&p, 1, ACC_READ | ACC_WRITE, 8, 1), 0);
        assert_eq!(
            eval(&p, 2, ACC_WRITE, 10, 229),
            1,
            "falls through to allow-all"
        );
        let rs = rules(&[
            rule(false, 'a', None, None, "rwm"),
            rule(true, 'c', Some(10), Some(229), "r"),
        ])
        .unwrap();
        let p = program(&rs);
        assert_eq!(eval(&p, 2, ACC_READ, 10, 229), 1);
        assert_eq!(eval(&p, 2, ACC_READ | ACC_WRITE, 10, 229), 0);
    }

    /// Every instruction is reachable (the verifier refuses programs with dead code).
    fn all_reachable(p: &[Insn]) {
        let mut seen = vec![false; p.len()];
        let mut todo = vec![0usize];
        while let Some(pc) = todo.pop() {
            if pc >= p.len() || seen[pc] {
                continue;
            }
            seen[pc] = true;
            match p[pc].code {
                0x95 => {}
                0x55 | 0x15 => {
                    todo.push(pc + 1);
                    todo.push(pc + 1 + p[pc].off as usize);
                }
                _ => todo.push(pc + 1),
            }
        }
        assert!(
            seen.iter().all(|&s| s),
            "unreachable instructions: {seen:?}"
        );
    }

    #[test]
    fn no_dead_code() {
        all_reachable(&program(
            &rules(&[rule(false, 'a', None, None, "rwm")]).unwrap(),
        ));
        all_reachable(&program(&rules(&[]).unwrap()));
        all_reachable(&program(&[Rule::new('a', None, None, ACC_ALL)]));
        let p = program(&[
            Rule::new('c', Some(1), Some(3), ACC_ALL),
            Rule::new('a', None, None, ACC_ALL),
        ]);
        all_reachable(&p);
        assert_eq!(eval(&p, 1, ACC_READ, 8, 0), 1);
    }

    #[test]
    fn bad_rules() {
        let e = rules(&[rule(true, 'p', Some(1), Some(1), "rw")]).unwrap_err();
        assert!(e.to_string().contains("devices[0].type"), "{e}");
        let e = rules(&[rule(true, 'c', Some(1), Some(1), "rx")]).unwrap_err();
        assert!(e.to_string().contains("devices[0].access"), "{e}");
    }

    #[test]
    fn encoding() {
        // r0 = 1 (mov64 imm): code 0xb7, dst 0, imm 1.
        assert_eq!(mov64_k(0, 1).encode(), 0x0000_0001_0000_00b7);
        // r2 = *(u32 *)(r1 + 4): code 0x61, dst 2, src 1, off 4.
        assert_eq!(ldx_w(2, 1, 4).encode(), 0x0000_0000_0004_1261);
    }
}
