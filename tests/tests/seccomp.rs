//! linux.seccomp: filters loaded into busybox containers, checked from what the programs
//! see (errno texts, exit codes) and from the NOTIFY agent's side.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use rsrun_tests::*;
use serde_json::{json, Value};

fn sh(script: &str) -> Bundle {
    Bundle::new(&["sh", "-c", script])
}

fn set_seccomp(b: &mut Bundle, s: Value) {
    b.edit(|c| c["linux"]["seccomp"] = s);
}

/// Runs the bundle; returns (exit code, stdout + stderr).
fn run(rt: &Rsrun, b: &Bundle) -> (i32, String) {
    let (code, out, err) = rt.run_bundle(&unique("sc"), b);
    (code, format!("{out}{err}"))
}

#[test]
fn errno_rules_fail_with_the_configured_errno() {
    let rt = Rsrun::new();
    let mut b = sh("mkdir /made 2>&1; rmdir /root 2>&1; mkdir /plain && echo plain-ok; echo end");
    b.edit(|c| c["root"]["readonly"] = json!(false));
    set_seccomp(
        &mut b,
        json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                // busybox's mkdir passes mode 0777 (511): every mkdir here gets ENOSPC.
                {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 28,
                 "args": [{"index": 1, "value": 511, "op": "SCMP_CMP_EQ"}]},
                // No errnoRet: EPERM.
                {"names": ["rmdir"], "action": "SCMP_ACT_ERRNO"},
                // A typo is skipped, as runc does.
                {"names": ["mkdri"], "action": "SCMP_ACT_KILL"}
            ]
        }),
    );
    let (code, out) = run(&rt, &b);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("can't create directory '/made': No space left on device"),
        "{out}"
    );
    assert!(out.contains("'/root': Operation not permitted"), "{out}");
    assert!(!out.contains("plain-ok"), "{out}");
    assert!(out.contains("end"), "{out}");
    assert!(b.rootfs().join("root").is_dir());
    assert!(!b.rootfs().join("made").exists());
}

/// The RuntimeDefault profile with mkdir and mkdirat off its allow-list.
fn default_without_mkdir() -> Value {
    let mut prof = serde_json::to_value(rsrun::seccomp::runtime_default_profile()).unwrap();
    for r in prof["syscalls"].as_array_mut().unwrap() {
        r["names"]
            .as_array_mut()
            .unwrap()
            .retain(|n| n != "mkdir" && n != "mkdirat");
    }
    prof
}

#[test]
fn default_errno_with_an_allow_list() {
    let rt = Rsrun::new();
    // Take mkdir off the allow-list and make the default errno recognisable.
    let mut prof = default_without_mkdir();
    prof["defaultErrnoRet"] = json!(libc::ENOLINK);
    let mut b = sh("echo before; mkdir /tmp/x 2>&1; echo after");
    set_seccomp(&mut b, prof);
    let (code, out) = run(&rt, &b);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("before\n"), "{out}");
    assert!(
        out.contains("can't create directory '/tmp/x': Link has been severed"),
        "{out}"
    );
    assert!(out.contains("after\n"), "{out}");
}

#[test]
fn kill_actions_end_the_process_with_sigsys() {
    let rt = Rsrun::new();
    for action in [
        "SCMP_ACT_KILL_PROCESS",
        "SCMP_ACT_KILL",
        "SCMP_ACT_KILL_THREAD",
        "SCMP_ACT_TRAP",
    ] {
        let mut b = Bundle::new(&["mkdir", "/x"]);
        set_seccomp(
            &mut b,
            json!({"defaultAction": "SCMP_ACT_ALLOW",
                   "syscalls": [{"names": ["mkdir", "mkdirat"], "action": action}]}),
        );
        let (code, out) = run(&rt, &b);
        assert_eq!(code, 128 + libc::SIGSYS, "{action}: {out}");
    }
}

#[test]
fn trace_without_tracer_is_enosys_and_log_allows() {
    let rt = Rsrun::new();
    let mut b = sh("mkdir /x 2>&1; rmdir /root && echo rmdir-ok");
    b.edit(|c| c["root"]["readonly"] = json!(false));
    set_seccomp(
        &mut b,
        json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_TRACE", "errnoRet": 7},
            {"names": ["rmdir"], "action": "SCMP_ACT_LOG"}]}),
    );
    let (code, out) = run(&rt, &b);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("'/x': Function not implemented"), "{out}");
    assert!(out.contains("rmdir-ok"), "{out}");
}

/// Every operator, several conditions ANDed, and runc's splitting of conditions on one
/// argument into separate (ORed) rules. kill(pid, sig): pid 1 (the shell) ignores the
/// real-time signals sent here, a background sleep is the other target.
#[test]
fn argument_comparisons() {
    let rt = Rsrun::new();
    let script = r#"
k() { if out=$(kill -$1 $2 2>&1); then echo "$1@$3 ok"; else echo "$1@$3 ${out##*: }"; fi; }
sleep 100 & S=$!
k 63 1 one; k 62 1 one; k 50 1 one; k 49 1 one; k 47 1 one; k 48 1 one
k 35 1 one; k 36 1 one; k 40 1 one; k 40 $S s; k 41 1 one; k 41 $S s
k 33 1 one; k 33 $S s
linux32 true 2>&1 && echo p32 ok; linux64 -R true 2>&1 && echo p64R ok; linux64 true && echo p64 ok
k 34 $S s
"#;
    let mut b = sh(script);
    let a = |index: u32, op: &str, value: u64| json!({"index": index, "value": value, "op": op});
    set_seccomp(
        &mut b,
        json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::ENOSPC,
             "args": [a(1, "SCMP_CMP_GT", 62)]},
            {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "args": [a(1, "SCMP_CMP_EQ", 50)]},
            {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EXDEV,
             "args": [a(1, "SCMP_CMP_EQ", 47), a(1, "SCMP_CMP_EQ", 48)]},
            {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::E2BIG,
             "args": [a(0, "SCMP_CMP_EQ", 1), a(1, "SCMP_CMP_LE", 35)]},
            {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::ENOTTY,
             "args": [a(0, "SCMP_CMP_GE", 2), a(1, "SCMP_CMP_EQ", 40)]},
            {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::ENOEXEC,
             "args": [a(0, "SCMP_CMP_NE", 1), a(1, "SCMP_CMP_EQ", 41)]},
            {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EBADF,
             "args": [a(0, "SCMP_CMP_GT", 1), a(1, "SCMP_CMP_LT", 34)]},
            {"names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EACCES,
             "args": [{"index": 0, "value": 0x40000, "valueTwo": 0x40000, "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["personality"], "action": "SCMP_ACT_ERRNO", "args": [a(0, "SCMP_CMP_EQ", 8)]}
        ]}),
    );
    let (code, out) = run(&rt, &b);
    assert_eq!(code, 0, "{out}");
    let want = [
        "63@one No space left on device",
        "62@one ok",
        "50@one Operation not permitted",
        "49@one ok",
        "47@one Invalid cross-device link",
        "48@one Invalid cross-device link",
        "35@one Argument list too long",
        "36@one ok",
        "40@one ok",
        "40@s Inappropriate ioctl for device",
        "41@one ok",
        "41@s Exec format error",
        "33@one Argument list too long",
        "33@s Bad file descriptor",
        "34@s ok",
        "p64 ok",
    ];
    for w in want {
        assert!(out.lines().any(|l| l == w), "missing {w:?} in:\n{out}");
    }
    assert!(!out.contains("p32 ok") && !out.contains("p64R ok"), "{out}");
    assert!(
        out.contains("Operation not permitted") && out.contains("Permission denied"),
        "{out}"
    );
}

/// Receives one message with a descriptor: (payload, fd).
fn recv_with_fd(sock: RawFd) -> (Vec<u8>, OwnedFd) {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut buf = vec![0u8; 65536];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let (n, fd) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg =
            recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC).unwrap();
        let mut fd = None;
        for c in msg.cmsgs().unwrap() {
            if let ControlMessageOwned::ScmRights(fds) = c {
                fd = fds.first().copied();
            }
        }
        (msg.bytes, fd.expect("no descriptor in the message"))
    };
    buf.truncate(n);
    // A descriptor just received with SCM_RIGHTS, owned by nobody else.
    (buf, rsrun::sys::own(fd))
}

#[test]
fn notify_hands_the_listener_to_the_agent() {
    notify_with(json!({"defaultAction": "SCMP_ACT_ALLOW"}));
}

/// The same under a refusing default action: that filter is loaded behind the ENOSYS stub
/// by rsrun's own seccomp(2) call, which must ask the kernel for the listener.
#[test]
fn notify_hands_the_listener_to_the_agent_behind_the_enosys_stub() {
    notify_with(default_without_mkdir());
}

/// `base` with a NOTIFY rule for mkdir and the agent's socket added.
fn notify_with(base: Value) {
    let rt = Rsrun::new();
    let tmp = TempDir::new("agent");
    let sock_path = tmp.path().join("agent.sock");
    let listener = UnixListener::bind(&sock_path).unwrap();
    listener.set_nonblocking(true).unwrap();
    let agent = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        let conn = loop {
            match listener.accept() {
                Ok((c, _)) => break c,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("no connection from the runtime: {e}"),
            }
        };
        conn.set_nonblocking(false).unwrap();
        let (msg, fd) = recv_with_fd(conn.as_raw_fd());
        let state: Value = serde_json::from_slice(&msg).unwrap();
        // Answer the first notification: mkdir fails with ENOLINK.
        let req = libseccomp::ScmpNotifReq::receive(fd.as_raw_fd()).unwrap();
        let name = req.data.syscall.get_name().unwrap();
        libseccomp::ScmpNotifResp::new_error(
            req.id,
            -libc::ENOLINK,
            libseccomp::ScmpNotifRespFlags::empty(),
        )
        .respond(fd.as_raw_fd())
        .unwrap();
        (state, name, req.pid)
    });
    let mut b = sh("echo pid=$$; ls -l /proc/$$/fd; mkdir /tmp/n 2>&1; echo done");
    let mut prof = base;
    prof["listenerPath"] = json!(sock_path);
    prof["listenerMetadata"] = json!("agent-data");
    let rules = prof["syscalls"].as_array_mut().map(std::mem::take);
    let mut rules = rules.unwrap_or_default();
    rules.push(json!({"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"}));
    prof["syscalls"] = json!(rules);
    set_seccomp(&mut b, prof);
    let id = unique("notify");
    let (code, out, err) = rt.run_bundle(&id, &b);
    let (state, name, req_pid) = agent.join().unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("pid=1\n"), "{out}");
    assert!(out.contains("'/tmp/n': Link has been severed"), "{out}");
    assert!(out.contains("done"), "{out}");
    // Neither the listener nor the agent's socket leaks into the container.
    assert!(out.contains("0 -> "), "{out}");
    assert!(
        !out.contains("seccomp") && !out.contains("socket:"),
        "{out}"
    );
    assert_eq!(name, "mkdir");
    assert_eq!(state["fds"], json!(["seccompFd"]), "{state}");
    assert_eq!(state["metadata"], "agent-data", "{state}");
    assert_eq!(state["ociVersion"], b.config["ociVersion"], "{state}");
    assert_eq!(state["state"]["id"], json!(id), "{state}");
    assert_eq!(state["state"]["status"], "created", "{state}");
    assert_eq!(state["state"]["bundle"], json!(b.dir), "{state}");
    // The state's pid is the container's init as the host sees it; the notifying process
    // is a child of it (a fork of the shell).
    let pid = state["pid"].as_u64().unwrap();
    assert_eq!(state["state"]["pid"].as_u64(), Some(pid), "{state}");
    assert!(pid > 1 && req_pid as u64 != pid, "{state} {req_pid}");
}

#[test]
fn notify_without_an_agent_socket_fails_create() {
    let rt = Rsrun::new();
    let mut b = sh("true");
    set_seccomp(
        &mut b,
        json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/nonexistent/agent.sock",
               "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]}),
    );
    let e = rt.fails(&["run", "--bundle", b.dir.to_str().unwrap(), &unique("na")]);
    assert!(
        e.contains("linux.seccomp.listenerPath /nonexistent/agent.sock"),
        "{e}"
    );
    assert_eq!(rt.count(), 0);
}

#[test]
fn runtime_default_profile_runs_busybox() {
    let rt = Rsrun::new();
    let prof = serde_json::to_value(rsrun::seccomp::runtime_default_profile()).unwrap();
    let script = "echo hi | tr a-z A-Z; ls / | wc -l; cat /proc/self/status | grep -c Seccomp; \
                  grep Seccomp: /proc/self/status; sleep 0.1 & wait; id -u; date +%Y >/dev/null && echo date-ok; \
                  linux32 true 2>&1 && echo p32-ok; unshare -U true 2>&1 || echo unshare-denied";
    let mut b = sh(script);
    set_seccomp(&mut b, prof.clone());
    let (code, out) = run(&rt, &b);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("HI\n") && out.contains("date-ok"), "{out}");
    // Mode 2: a filter is installed.
    assert!(out.contains("Seccomp:\t2"), "{out}");
    // personality(PER_LINUX32) is on the profile's list; new namespaces are not.
    assert!(out.contains("p32-ok"), "{out}");
    assert!(out.contains("unshare-denied"), "{out}");

    // Without no_new_privs and as another user the filter is loaded before the
    // capabilities are dropped; the profile allows what the init does after that.
    let mut b = sh("id -u; grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status");
    b.edit(|c| {
        c["process"]["noNewPrivileges"] = json!(false);
        c["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [10]});
    });
    set_seccomp(&mut b, prof);
    let (code, out) = run(&rt, &b);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1000\n"), "{out}");
    assert!(
        out.contains("Seccomp:\t2") && out.contains("NoNewPrivs:\t0"),
        "{out}"
    );
}

/// Where the filter is loaded: with no_new_privs just before exec (so a profile may deny
/// what the runtime itself needs), without it before the capabilities are dropped.
#[test]
fn load_point_depends_on_no_new_privs() {
    let rt = Rsrun::new();
    let prof = json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["capset", "setresuid"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::ENOLINK}]});
    let mut b = sh("grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status");
    set_seccomp(&mut b, prof.clone());
    let (code, out) = run(&rt, &b);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("Seccomp:\t2") && out.contains("NoNewPrivs:\t1"),
        "{out}"
    );

    let mut b = sh("true");
    b.edit(|c| c["process"]["noNewPrivileges"] = json!(false));
    set_seccomp(&mut b, prof);
    let e = rt.fails(&["run", "--bundle", b.dir.to_str().unwrap(), &unique("early")]);
    assert!(e.contains("Link has been severed"), "{e}");
    assert_eq!(rt.count(), 0);
}

#[test]
fn bad_profiles_error_naming_the_field() {
    let rt = Rsrun::new();
    let cases = [
        (
            json!({"defaultAction": "SCMP_ACT_ALLOW",
                   "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOPE"}]}),
            "linux.seccomp.syscalls[0].action",
        ),
        (
            json!({"defaultAction": "SCMP_ACT_BOGUS"}),
            "linux.seccomp.defaultAction",
        ),
        (
            json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_Z80"]}),
            "linux.seccomp.architectures[1]",
        ),
        (
            // A real architecture that cannot share a filter with this host's.
            json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_S390X"]}),
            "linux.seccomp: architectures[0]: \"SCMP_ARCH_S390X\" is not supported",
        ),
        (
            json!({"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_NOPE"]}),
            "linux.seccomp.flags[0]",
        ),
        (
            json!({"defaultAction": "SCMP_ACT_ALLOW",
                   "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO",
                                 "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_ABOUT"}]}]}),
            "linux.seccomp.syscalls[0].args[0].op",
        ),
        (
            json!({"defaultAction": "SCMP_ACT_ALLOW",
                   "syscalls": [{"names": [], "action": "SCMP_ACT_ERRNO"}]}),
            "linux.seccomp: syscalls[0].names must not be empty",
        ),
        (
            json!({"defaultAction": "SCMP_ACT_ALLOW",
                   "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]}),
            "listenerPath is required",
        ),
    ];
    for (prof, want) in cases {
        let mut b = sh("true");
        set_seccomp(&mut b, prof.clone());
        let e = rt.fails(&["run", "--bundle", b.dir.to_str().unwrap(), &unique("bad")]);
        assert!(e.contains(want), "{prof}: want {want:?} in {e}");
        assert!(e.contains("config.json"), "{e}");
    }
    assert_eq!(rt.count(), 0);
}

#[test]
fn flags_and_features() {
    let rt = Rsrun::new();
    let f: Value = serde_json::from_str(&rt.ok(&["features"])).unwrap();
    let sc = &f["linux"]["seccomp"];
    assert_eq!(sc["enabled"], true, "{sc}");
    assert!(sc["actions"].as_array().unwrap().len() == 9, "{sc}");
    assert!(sc["operators"].as_array().unwrap().len() == 7, "{sc}");
    let supported: Vec<String> = sc["supportedFlags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert!(
        supported.iter().any(|f| f == "SECCOMP_FILTER_FLAG_TSYNC"),
        "{sc}"
    );
    // Every supported flag works on a real container.
    let mut b = sh("grep Seccomp: /proc/self/status");
    set_seccomp(
        &mut b,
        json!({"defaultAction": "SCMP_ACT_ALLOW", "flags": supported,
               "syscalls": [{"names": ["reboot"], "action": "SCMP_ACT_ERRNO"}]}),
    );
    let (code, out) = run(&rt, &b);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Seccomp:\t2"), "{out}");
    // And behind the ENOSYS stub (rsrun's own seccomp(2) call passes them).
    let mut prof = serde_json::to_value(rsrun::seccomp::runtime_default_profile()).unwrap();
    prof["flags"] = json!(supported);
    set_seccomp(&mut b, prof);
    let (code, out) = run(&rt, &b);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Seccomp:\t2"), "{out}");
    // A known flag this libseccomp cannot set is an error naming it, not ignored.
    for flag in sc["knownFlags"].as_array().unwrap() {
        if supported.iter().any(|s| s == flag) {
            continue;
        }
        let mut b = sh("true");
        set_seccomp(
            &mut b,
            json!({"defaultAction": "SCMP_ACT_ALLOW", "flags": [flag]}),
        );
        let e = rt.fails(&["run", "--bundle", b.dir.to_str().unwrap(), &unique("fl")]);
        assert!(
            e.contains("flags[0]") && e.contains(flag.as_str().unwrap()),
            "{e}"
        );
    }
}

/// The kernel's answers under the RuntimeDefault filter, in a child process that loads it:
/// socket for AF_UNIX and AF_INET, EPERM for AF_ALG (the crypto API's attack surface) and
/// AF_VSOCK, as containerd's profile; ptrace(PTRACE_TRACEME) without CAP_SYS_PTRACE (strace,
/// gdb and LeakSanitizer need it; safe since Linux 4.8).
#[test]
fn runtime_default_socket_families_and_ptrace() {
    let ctx = rsrun::seccomp::build(&rsrun::seccomp::runtime_default_profile()).unwrap();
    let (r, w) = nix::unistd::pipe().unwrap();
    ctx.export_bpf(&w).unwrap();
    drop(w);
    let mut bpf = Vec::new();
    std::io::Read::read_to_end(&mut std::fs::File::from(r), &mut bpf).unwrap();
    let prog = libc::sock_fprog {
        len: (bpf.len() / 8) as u16,
        filter: bpf.as_mut_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: the child only makes system calls (async-signal-safe) and leaves with _exit;
    // `prog` points into `bpf`, alive in both processes until then.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        // SAFETY: plain system calls on values owned here; no allocation after fork.
        unsafe {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::syscall(libc::SYS_seccomp, 1, 0, &prog as *const libc::sock_fprog) != 0
            {
                libc::_exit(100);
            }
            let eperm = |fam: i32, ty: i32| {
                let fd = libc::socket(fam, ty, 0);
                if fd >= 0 {
                    libc::close(fd);
                    return false;
                }
                *libc::__errno_location() == libc::EPERM
            };
            let opens = |fam: i32, ty: i32| {
                let fd = libc::socket(fam, ty, 0);
                fd >= 0 && libc::close(fd) == 0
            };
            let mut code = 0;
            if !opens(libc::AF_UNIX, libc::SOCK_STREAM) {
                code |= 1;
            }
            if !opens(libc::AF_INET, libc::SOCK_DGRAM) {
                code |= 2;
            }
            if !eperm(libc::AF_ALG, libc::SOCK_SEQPACKET) {
                code |= 4;
            }
            if !eperm(libc::AF_VSOCK, libc::SOCK_STREAM) {
                code |= 8;
            }
            if libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) != 0 {
                code |= 16;
            }
            // socket's family is an int: the kernel drops the high half of the register, so
            // a family with high bits set must meet the same rules as its low half.
            let raw = |fam: u64, ty: i32| {
                let fd = libc::syscall(libc::SYS_socket, fam, ty as u64, 0u64);
                if fd >= 0 {
                    libc::close(fd as i32);
                    return 0;
                }
                *libc::__errno_location()
            };
            if raw(1 << 32 | libc::AF_ALG as u64, libc::SOCK_SEQPACKET) != libc::EPERM
                || raw(
                    0xffff_ffff_0000_0000 | libc::AF_VSOCK as u64,
                    libc::SOCK_STREAM,
                ) != libc::EPERM
            {
                code |= 32;
            }
            if raw(1 << 32 | libc::AF_UNIX as u64, libc::SOCK_STREAM) != 0 {
                code |= 64;
            }
            // The families beside and above the two refused ones are left to the kernel
            // (EAFNOSUPPORT where it has no such family), never EPERM.
            for fam in [
                libc::AF_ALG - 1,
                libc::AF_ALG + 1,
                libc::AF_VSOCK + 1,
                0x7fff_ffff,
            ] {
                if raw(fam as u64, libc::SOCK_DGRAM) == libc::EPERM {
                    code |= 128;
                }
            }
            libc::_exit(code);
        }
    }
    let st = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).unwrap();
    assert_eq!(
        st,
        nix::sys::wait::WaitStatus::Exited(nix::unistd::Pid::from_raw(pid), 0),
        "1: AF_UNIX refused, 2: AF_INET refused, 4: AF_ALG not EPERM, 8: AF_VSOCK not EPERM, 16: ptrace refused, 32: AF_ALG/AF_VSOCK with high bits set not EPERM, 64: AF_UNIX with high bits set refused, 128: a family beside the refused ones EPERM, 100: the filter did not load"
    );
}

/// A static program that makes the raw syscalls its arguments number and prints
/// `NR=ERRNO` for each (0 when the call succeeded).
fn syscall_prober(rootfs: &std::path::Path) -> std::path::PathBuf {
    let dir = TempDir::new("sysno");
    let src = dir.path().join("sysno.c");
    std::fs::write(
        &src,
        r#"#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        long nr = strtol(argv[i], NULL, 0);
        errno = 0;
        long r = syscall(nr, 0L, 0L, 0L, 0L, 0L, 0L);
        printf("%s=%d\n", argv[i], r == -1 ? errno : 0);
    }
    return 0;
}
"#,
    )
    .unwrap();
    let out = rootfs.join("sysno");
    run_ok(&[
        "cc",
        "-static",
        "-O1",
        "-o",
        out.to_str().unwrap(),
        src.to_str().unwrap(),
    ]);
    out
}

/// runc's ENOSYS stub: under a refusing default action, a syscall numbered above every one
/// the profile names returns ENOSYS (what C libraries fall back on; EPERM fails the
/// program), on x86-64 and, as the profile names x32, for x32 numbers; one the profile
/// refuses below that keeps the default errno.
#[test]
fn syscalls_newer_than_the_profile_get_enosys() {
    let rt = Rsrun::new();
    // 169: reboot, refused without CAP_SYS_BOOT; 1000 and x32's 1000: no such syscalls.
    let mut b = Bundle::new(&["/sysno", "169", "1000", "0x400003e8"]);
    syscall_prober(&b.rootfs());
    let mut prof = serde_json::to_value(rsrun::seccomp::runtime_default_profile()).unwrap();
    prof["defaultErrnoRet"] = json!(libc::ENOLINK);
    assert!(
        prof["architectures"]
            .as_array()
            .unwrap()
            .contains(&json!("SCMP_ARCH_X32")),
        "{prof}"
    );
    set_seccomp(&mut b, prof);
    let (code, out) = run(&rt, &b);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("169={}\n", libc::ENOLINK)), "{out}");
    assert!(out.contains(&format!("1000={}\n", libc::ENOSYS)), "{out}");
    assert!(
        out.contains(&format!("0x400003e8={}\n", libc::ENOSYS)),
        "{out}"
    );

    // An allow-by-default profile gets no stub: gettid (186), numbered above the only
    // syscall it names, still runs.
    b.edit(|c| c["process"]["args"] = json!(["/sysno", "169", "186"]));
    set_seccomp(
        &mut b,
        json!({"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["reboot"], "action": "SCMP_ACT_ERRNO",
                             "errnoRet": libc::ENOLINK}]}),
    );
    let (code, out) = run(&rt, &b);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("169={}\n", libc::ENOLINK)), "{out}");
    assert!(out.contains("186=0\n"), "{out}");
}
