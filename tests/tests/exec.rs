//! `rsrun exec`: every flag observed from inside the container (namespaces, cgroups,
//! capabilities, user, env, cwd, terminal), plus refusals, exit statuses, signal
//! forwarding and descriptor hygiene.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use rsrun_tests::*;
use serde_json::{json, Value};

/// A writable busybox bundle running `sleep 1000`.
fn sleeper() -> Bundle {
    let mut b = Bundle::new(&["sleep", "1000"]);
    b.edit(|c| c["root"]["readonly"] = json!(false));
    b
}

/// Starts the bundle detached; returns (id, init pid).
fn start(rt: &Rsrun, b: &Bundle) -> (String, i64) {
    let id = unique("ex");
    rt.ok(&["run", "-d", "--bundle", b.dir.to_str().unwrap(), &id]);
    let pid = rt.state(&id)["pid"].as_i64().unwrap();
    (id, pid)
}

/// `rsrun exec ARGS`: (exit code, stdout, stderr).
fn exec(rt: &Rsrun, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec!["exec"];
    args.extend_from_slice(extra);
    let o = rt.run(&args);
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `rsrun exec [flags] ID sh -c SCRIPT`, asserting success; returns stdout.
fn exec_sh(rt: &Rsrun, id: &str, flags: &[&str], script: &str) -> String {
    let mut args: Vec<&str> = vec!["exec"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&[id, "sh", "-c", script]);
    rt.ok(&args)
}

fn state_json(rt: &Rsrun, id: &str) -> Value {
    serde_json::from_slice(&std::fs::read(rt.root.path().join(id).join("state.json")).unwrap())
        .unwrap()
}

fn cgroup_paths(rt: &Rsrun, id: &str) -> Vec<PathBuf> {
    state_json(rt, id)["cgroup_paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| PathBuf::from(p.as_str().unwrap()))
        .collect()
}

fn procs(dir: &Path) -> Vec<i64> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn wait_for(what: &str, f: impl Fn() -> bool) {
    assert!(wait_until(Duration::from_secs(10), f), "timed out: {what}");
}

fn read_pid_file(p: &Path) -> i64 {
    std::fs::read_to_string(p).unwrap().trim().parse().unwrap()
}

/// `rsrun exec -d --pid-file F ID sleep 999`: the exec'd process's PID.
fn sleep_detached(rt: &Rsrun, b: &Bundle, id: &str) -> i64 {
    let pf = b.tmp.path().join("exec.pid");
    let _ = std::fs::remove_file(&pf);
    rt.ok(&[
        "exec",
        "-d",
        "--pid-file",
        pf.to_str().unwrap(),
        id,
        "sleep",
        "999",
    ]);
    read_pid_file(&pf)
}

const NS: [&str; 8] = ["cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts"];

fn host_ns(pid: i64) -> Vec<String> {
    NS.iter()
        .map(|n| {
            std::fs::read_link(format!("/proc/{pid}/ns/{n}"))
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

const NS_SCRIPT: &str =
    "for n in cgroup ipc mnt net pid time user uts; do readlink /proc/self/ns/$n; done";

/// A `--process` file that leaves out the container's confinement gets the container's
/// (runc's rule): its rlimits, no_new_privs and capabilities, read in the exec'd process's
/// /proc (the kernel's); a file that gives its own keeps them.
#[test]
fn exec_process_file_inherits_the_containers_confinement() {
    let rt = Rsrun::new();
    let mut b = sleeper();
    b.edit(|c| {
        c["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 1234, "soft": 1234}]);
        c["process"]["noNewPrivileges"] = json!(true);
        c["process"]["capabilities"] = json!({"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"],
            "permitted": ["CAP_KILL"]});
    });
    let (id, _) = start(&rt, &b);
    let tmp = TempDir::new("exec-conf");
    let script =
        "grep -E '^(NoNewPrivs|CapBnd)' /proc/self/status; grep 'open files' /proc/self/limits";
    let minimal = tmp.path().join("minimal.json");
    std::fs::write(
        &minimal,
        json!({"args": ["sh", "-c", script], "cwd": "/", "user": {"uid": 0, "gid": 0}}).to_string(),
    )
    .unwrap();
    let out = rt.ok(&["exec", "--process", minimal.to_str().unwrap(), &id]);
    let kill_only = format!("{:016x}", 1u64 << 5);
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains(&format!("CapBnd:\t{kill_only}")), "{out}");
    assert!(out.contains("1234                 1234"), "{out}");
    // Its own values win.
    let own = tmp.path().join("own.json");
    std::fs::write(
        &own,
        json!({"args": ["sh", "-c", script], "cwd": "/", "user": {"uid": 0, "gid": 0},
               "noNewPrivileges": false,
               "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 999, "soft": 999}]})
        .to_string(),
    )
    .unwrap();
    let out = rt.ok(&["exec", "--process", own.to_str().unwrap(), &id]);
    assert!(out.contains("NoNewPrivs:\t0"), "{out}");
    assert!(out.contains("999                  999"), "{out}");
    rt.ok(&["delete", "--force", &id]);
}

/// An exec'd process gets the container's OOM score (or its --process file's own), not its
/// caller's: a shim's, often far below the container's, would have the kernel kill the
/// container's main process before an exec or a probe. The caller is started at 200 (raising
/// needs no privilege; this host withholds CAP_SYS_RESOURCE, which lowering needs).
#[test]
fn exec_gets_the_containers_oom_score_not_its_callers() {
    let rt = Rsrun::new();
    let mut b = sleeper();
    b.edit(|c| c["process"]["oomScoreAdj"] = json!(500));
    let (id, _) = start(&rt, &b);
    let tmp = TempDir::new("oom-exec");
    let own = tmp.path().join("process.json");
    std::fs::write(
        &own,
        json!({"args": ["cat", "/proc/self/oom_score_adj"], "cwd": "/", "user": {"uid": 0, "gid": 0},
               "oomScoreAdj": 700})
        .to_string(),
    )
    .unwrap();
    let own = own.to_str().unwrap();
    for (extra, want) in [
        (vec![id.as_str(), "cat", "/proc/self/oom_score_adj"], "500"),
        (vec!["--process", own, id.as_str()], "700"),
    ] {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg("echo 200 > /proc/self/oom_score_adj && exec \"$@\"")
            .arg("sh");
        c.arg(rsrun_bin())
            .arg("--root")
            .arg(rt.root.path())
            .arg("exec");
        c.args(&extra);
        let o = c.output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{extra:?}: {err}");
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            want,
            "{extra:?}: {err}"
        );
    }
}

#[test]
fn joins_every_namespace_of_the_init() {
    let rt = Rsrun::new();
    let mut b = sleeper();
    b.add_namespace("time", None);
    b.edit(|c| c["linux"]["timeOffsets"] = json!({"boottime": {"secs": 86400 * 400}}));
    let (id, pid) = start(&rt, &b);
    let out = exec_sh(&rt, &id, &[], &format!("{NS_SCRIPT}; cat /proc/1/cmdline | tr '\\0' ' '; echo; echo self=$$; cut -d. -f1 /proc/uptime"));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..8].to_vec(), host_ns(pid), "{out}");
    // Its pid namespace: pid 1 is the container's sleep, and it has a small pid there.
    assert_eq!(lines[8].trim(), "sleep 1000", "{out}");
    let selfpid: i64 = lines[9].strip_prefix("self=").unwrap().parse().unwrap();
    assert!(selfpid > 1 && selfpid < 100, "{out}");
    // The time namespace's boottime offset applies to it.
    let up: i64 = lines[10].trim().parse().unwrap();
    assert!(up >= 86400 * 400, "{out}");
    // Namespaces really differ from the host's (the comparison above is not vacuous).
    assert_ne!(host_ns(pid)[2], host_ns(std::process::id() as i64)[2]);
    rt.ok(&["delete", "-f", &id]);
}

#[test]
fn joins_the_user_namespace_first() {
    let rt = Rsrun::new();
    let mut b = sleeper();
    b.add_namespace("user", None);
    b.edit(|c| {
        c["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        c["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    });
    let (id, pid) = start(&rt, &b);
    let out = exec_sh(
        &rt,
        &id,
        &[],
        &format!("{NS_SCRIPT}; cat /proc/self/uid_map; id -u"),
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..8].to_vec(), host_ns(pid), "{out}");
    assert_eq!(
        lines[8].split_whitespace().collect::<Vec<_>>(),
        ["0", "100000", "65536"],
        "{out}"
    );
    assert_eq!(lines[9], "0", "{out}");
    // A user switch inside the mapping works (setgroups allowed in this namespace).
    let out = exec_sh(
        &rt,
        &id,
        &["-u", "1000:1000", "-g", "44"],
        "id -u; id -G; grep Uid /proc/self/status",
    );
    assert!(out.starts_with("1000\n1000 44\n"), "{out}");
    rt.ok(&["delete", "-f", &id]);
}

#[test]
fn kill_all_reaches_the_processes_of_sub_cgroups() {
    // A process of the container that sits in a cgroup below the container's (as one made
    // by a container with its own cgroup namespace) gets `kill --all`'s signal too, as runc.
    let rt = Rsrun::new();
    let b = sleeper();
    let (id, _) = start(&rt, &b);
    let epid = sleep_detached(&rt, &b, &id);
    let paths = cgroup_paths(&rt, &id);
    for p in &paths {
        let sub = p.join("sub");
        std::fs::create_dir(&sub).unwrap();
        for f in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(v) = std::fs::read_to_string(p.join(f)) {
                std::fs::write(sub.join(f), v.trim()).unwrap();
            }
        }
        std::fs::write(sub.join("cgroup.procs"), epid.to_string()).unwrap();
        assert!(
            procs(&sub).contains(&epid),
            "{epid} not moved to {}",
            sub.display()
        );
    }
    rt.ok(&["kill", "--all", &id, "TERM"]);
    wait_for("the process in the sub-cgroup ended by kill --all", || {
        !Path::new(&format!("/proc/{epid}/cmdline")).exists()
    });
    // The init (PID 1 of its namespace, no handler) ignores TERM: still running.
    assert_eq!(rt.status(&id), "running");
    rt.ok(&["delete", "-f", &id]);
    for p in &paths {
        assert!(!p.exists(), "{} left behind", p.display());
    }
}

#[test]
fn joins_the_cgroups_and_detaches_with_a_pid_file() {
    let rt = Rsrun::new();
    let b = sleeper();
    let (id, _) = start(&rt, &b);
    let paths = cgroup_paths(&rt, &id);
    assert!(!paths.is_empty());
    // Detached: the exec returned while its process runs on.
    let epid = sleep_detached(&rt, &b, &id);
    assert!(
        alive(epid as i32),
        "exec -d returned after its process {epid} ended"
    );
    let cmdline = std::fs::read(format!("/proc/{epid}/cmdline")).unwrap();
    assert_eq!(cmdline, b"sleep\0999\0");
    for p in &paths {
        assert!(
            procs(p).contains(&epid),
            "{epid} not in {}: {:?}",
            p.display(),
            procs(p)
        );
    }
    // From inside: the same cgroups as the init.
    let out = exec_sh(
        &rt,
        &id,
        &[],
        "cat /proc/self/cgroup; echo --; cat /proc/1/cgroup",
    );
    let (mine, init) = out.split_once("--\n").unwrap();
    assert_eq!(mine, init);
    // `ps` of the container lists the exec'd process.
    let ps: Vec<i64> = serde_json::from_str(&rt.ok(&["ps", "-f", "json", &id])).unwrap();
    assert!(ps.contains(&epid), "{ps:?}");
    rt.ok(&["delete", "-f", &id]);
    wait_for("exec'd process killed", || {
        !Path::new(&format!("/proc/{epid}/cmdline")).exists()
            || std::fs::read(format!("/proc/{epid}/cmdline")).unwrap_or_default() != cmdline
    });
}

#[test]
fn sub_cgroups_with_the_cgroup_flag() {
    let rt = Rsrun::new();
    let b = sleeper();
    let (id, _) = start(&rt, &b);
    let paths = cgroup_paths(&rt, &id);
    let mk = |d: PathBuf| {
        std::fs::create_dir(&d).unwrap();
        // A new v1 cpuset cgroup has no CPUs or memory nodes until given some.
        for f in ["cpuset.cpus", "cpuset.mems"] {
            let parent = d.parent().unwrap().join(f);
            if d.join(f).exists() {
                std::fs::write(d.join(f), std::fs::read(parent).unwrap()).unwrap();
            }
        }
    };
    for p in &paths {
        mk(p.join("sub"));
    }
    let pf = b.tmp.path().join("sub.pid");
    let pfs = pf.to_str().unwrap();
    rt.ok(&[
        "exec",
        "-d",
        "--pid-file",
        pfs,
        "--cgroup",
        "sub",
        &id,
        "sleep",
        "998",
    ]);
    let epid = read_pid_file(&pf);
    for p in &paths {
        assert!(procs(&p.join("sub")).contains(&epid), "{}", p.display());
    }
    let e = rt.fails(&["exec", "--cgroup", "nope", &id, "true"]);
    assert!(e.contains("nope") && e.contains("does not exist"), "{e}");
    let e = rt.fails(&["exec", "--cgroup", "../x", &id, "true"]);
    assert!(e.contains(".."), "{e}");
    let mem = paths
        .iter()
        .find(|p| p.starts_with("/sys/fs/cgroup/memory"));
    if let Some(mem) = mem {
        // cgroup v1: controller:path for one controller, the others stay put.
        mk(mem.join("msub"));
        let pf2 = b.tmp.path().join("msub.pid");
        rt.ok(&[
            "exec",
            "-d",
            "--pid-file",
            pf2.to_str().unwrap(),
            "--cgroup",
            "memory:msub",
            &id,
            "sleep",
            "997",
        ]);
        let p2 = read_pid_file(&pf2);
        assert!(procs(&mem.join("msub")).contains(&p2));
        for p in paths.iter().filter(|p| *p != mem) {
            assert!(procs(p).contains(&p2), "{}", p.display());
        }
        let e = rt.fails(&["exec", "--cgroup", "nosuchctl:x", &id, "true"]);
        assert!(e.contains("nosuchctl"), "{e}");
    }
    rt.ok(&["kill", "--all", &id, "KILL"]);
    rt.wait_status(&id, "stopped");
    for p in &paths {
        for s in ["sub", "msub"] {
            let d = p.join(s);
            if d.exists() {
                wait_for("sub-cgroup empty", || procs(&d).is_empty());
                std::fs::remove_dir(&d).unwrap();
            }
        }
    }
    rt.ok(&["delete", &id]);
}

const STATUS_SCRIPT: &str =
    "echo uid=$(id -u) gid=$(id -g) groups=$(id -G); pwd; echo FOO=$FOO NEW=$NEW; \
     grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; ulimit -n";

fn field<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {out}"))
        .trim()
}

#[test]
fn process_settings_come_from_the_config_as_created() {
    let rt = Rsrun::new();
    let mut b = sleeper();
    b.edit(|c| {
        c["process"]["env"] = json!(["PATH=/bin", "FOO=from-config"]);
        c["process"]["cwd"] = json!("/tmp");
        c["process"]["user"] = json!({"uid": 1000, "gid": 1001, "additionalGids": [44]});
        c["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 777, "soft": 777}]);
        c["process"]["noNewPrivileges"] = json!(true);
        // Inheritable, so that the ambient set (and with it the capabilities of a
        // non-root user) survives execve.
        c["process"]["capabilities"]["inheritable"] =
            c["process"]["capabilities"]["bounding"].clone();
    });
    let (id, _) = start(&rt, &b);
    // The bundle changes after create: exec keeps using what create recorded.
    b.edit(|c| c["process"]["env"] = json!(["PATH=/bin", "FOO=changed"]));
    std::fs::remove_file(b.dir.join("config.json")).unwrap();
    let out = exec_sh(&rt, &id, &[], STATUS_SCRIPT);
    assert!(out.contains("uid=1000 gid=1001 groups=1001 44"), "{out}");
    assert!(out.contains("\n/tmp\n"), "{out}");
    assert!(out.contains("FOO=from-config NEW="), "{out}");
    // rsrun spec's capabilities: AUDIT_WRITE, KILL, NET_BIND_SERVICE.
    assert_eq!(field(&out, "CapEff:"), "0000000020000420", "{out}");
    assert_eq!(field(&out, "CapBnd:"), "0000000020000420", "{out}");
    assert_eq!(field(&out, "NoNewPrivs:"), "1", "{out}");
    assert_eq!(out.lines().last().unwrap(), "777", "{out}");
    rt.ok(&["delete", "-f", &id]);
}

#[test]
fn flags_override_the_process() {
    let rt = Rsrun::new();
    let mut b = sleeper();
    b.edit(|c| {
        c["process"]["env"] = json!(["PATH=/bin", "FOO=from-config"]);
        c["process"]["noNewPrivileges"] = json!(false);
    });
    let (id, _) = start(&rt, &b);
    let out = exec_sh(&rt, &id, &[], STATUS_SCRIPT);
    assert_eq!(field(&out, "NoNewPrivs:"), "0", "{out}");
    assert!(out.contains("uid=0 gid=0 groups=0"), "{out}");
    let out = exec_sh(
        &rt,
        &id,
        &[
            "--cwd",
            "/etc",
            "-e",
            "FOO=flag",
            "--env=NEW=1",
            "-u",
            "65534:65534",
            "--additional-gids",
            "5,6",
            "-g",
            "7",
            "--cap",
            "CAP_SYS_ADMIN",
            "-c",
            "NET_RAW",
            "--no-new-privs",
        ],
        STATUS_SCRIPT,
    );
    assert!(
        out.contains("uid=65534 gid=65534 groups=65534 5 6 7"),
        "{out}"
    );
    assert!(out.contains("\n/etc\n"), "{out}");
    assert!(out.contains("FOO=flag NEW=1"), "{out}");
    // + SYS_ADMIN (21) and NET_RAW (13) in the bounding set; a non-root user without
    // inheritable (hence ambient) capabilities keeps none across execve.
    assert_eq!(field(&out, "CapBnd:"), "0000000020202420", "{out}");
    assert_eq!(field(&out, "CapEff:"), "0000000000000000", "{out}");
    assert_eq!(field(&out, "NoNewPrivs:"), "1", "{out}");
    // As root the added capabilities are effective.
    let out = exec_sh(
        &rt,
        &id,
        &["--cap", "CAP_SYS_ADMIN", "-c", "net_raw"],
        STATUS_SCRIPT,
    );
    assert_eq!(field(&out, "CapEff:"), "0000000020202420", "{out}");
    // -u with a uid only keeps the process's gid.
    let out = exec_sh(&rt, &id, &["-u", "33"], "id -u; id -g");
    assert_eq!(out, "33\n0\n");
    let e = rt.fails(&["exec", "-u", "bob", &id, "true"]);
    assert!(e.contains("bob"), "{e}");
    let e = rt.fails(&["exec", "-e", "NOEQUALS", &id, "true"]);
    assert!(e.contains("NOEQUALS"), "{e}");
    let e = rt.fails(&["exec", "--cwd", "relative", &id, "true"]);
    assert!(e.contains("absolute"), "{e}");
    let e = rt.fails(&["exec", &id]);
    assert!(e.contains("command"), "{e}");
    rt.ok(&["delete", "-f", &id]);
}

#[test]
fn process_json_replaces_the_process() {
    let rt = Rsrun::new();
    let b = sleeper();
    let (id, _) = start(&rt, &b);
    let pj = b.tmp.path().join("process.json");
    std::fs::write(
        &pj,
        json!({
            "args": ["sh", "-c", STATUS_SCRIPT],
            "env": ["PATH=/bin", "FOO=from-json"],
            "cwd": "/dev",
            "user": {"uid": 7, "gid": 8},
            "terminal": false,
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 99, "soft": 99}]
        })
        .to_string(),
    )
    .unwrap();
    // As runc: with --process the other process flags do not apply.
    let out = rt.ok(&[
        "exec",
        "--process",
        pj.to_str().unwrap(),
        "-e",
        "NEW=x",
        &id,
    ]);
    assert!(out.contains("uid=7 gid=8 groups=8"), "{out}");
    assert!(out.contains("\n/dev\n"), "{out}");
    assert!(out.contains("FOO=from-json NEW=\n"), "{out}");
    // No capabilities section: none.
    assert_eq!(field(&out, "CapEff:"), "0000000000000000", "{out}");
    assert_eq!(out.lines().last().unwrap(), "99", "{out}");
    std::fs::write(
        &pj,
        r#"{"args": ["true"], "cwd": "/", "user": {"uid": "x"}}"#,
    )
    .unwrap();
    let e = rt.fails(&["exec", "-p", pj.to_str().unwrap(), &id]);
    assert!(e.contains("user.uid"), "{e}");
    rt.ok(&["delete", "-f", &id]);
}

#[test]
fn the_containers_seccomp_filter_applies() {
    let rt = Rsrun::new();
    let mut b = sleeper();
    b.edit(|c| {
        c["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 28}]
        })
    });
    let (id, _) = start(&rt, &b);
    let (code, out, err) = exec(&rt, &[&id, "mkdir", "/made"]);
    assert_ne!(code, 0);
    assert!(err.contains("No space left on device"), "{out}{err}");
    assert!(!b.rootfs().join("made").exists());
    // And the filter is the config's as of create, even if the bundle changes.
    b.edit(|c| c["linux"]["seccomp"] = Value::Null);
    let (code, _, err) = exec(&rt, &[&id, "mkdir", "/made"]);
    assert_ne!(code, 0, "{err}");
    rt.ok(&["delete", "-f", &id]);
}

fn read_until(f: &mut std::fs::File, needle: &str) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match f.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
        if String::from_utf8_lossy(&out).contains(needle) {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn terminal_through_a_console_socket() {
    use std::os::unix::net::UnixListener;
    let rt = Rsrun::new();
    let b = sleeper();
    let (id, _) = start(&rt, &b);
    let sock = b.tmp.path().join("console.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let mut child = rt
        .cmd()
        .args([
            "exec",
            "-t",
            "--console-socket",
            sock.to_str().unwrap(),
            &id,
        ])
        .args([
            "sh",
            "-c",
            "tty; [ -t 0 ] && echo stdin-is-tty; echo on-the-terminal",
        ])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let (conn, _) = l.accept().unwrap();
    let master = rsrun::sys::recv_fd(conn.as_raw_fd()).unwrap();
    let mut f = std::fs::File::from(master);
    let s = read_until(&mut f, "on-the-terminal");
    assert!(s.contains("/dev/pts/"), "{s}");
    assert!(s.contains("stdin-is-tty"), "{s}");
    assert!(child.wait().unwrap().success());
    // A console socket without a terminal, and a terminal detached without one, are errors.
    let e = rt.fails(&[
        "exec",
        "--console-socket",
        sock.to_str().unwrap(),
        &id,
        "true",
    ]);
    assert!(e.contains("terminal"), "{e}");
    let e = rt.fails(&["exec", "-t", "-d", &id, "true"]);
    assert!(e.contains("console-socket"), "{e}");
    rt.ok(&["delete", "-f", &id]);
}

#[test]
fn terminal_proxied_without_a_console_socket() {
    let rt = Rsrun::new();
    let b = sleeper();
    let (id, _) = start(&rt, &b);
    let (code, out, err) = exec(&rt, &["-t", &id, "sh", "-c", "tty; echo proxied; exit 5"]);
    assert_eq!(code, 5, "{out}{err}");
    assert!(out.contains("/dev/pts/"), "{out}");
    assert!(out.contains("proxied"), "{out}");
    rt.ok(&["delete", "-f", &id]);
}

#[test]
fn paused_containers_refuse_unless_ignore_paused() {
    let rt = Rsrun::new();
    let b = sleeper();
    let (id, _) = start(&rt, &b);
    rt.ok(&["pause", &id]);
    let e = rt.fails(&["exec", &id, "true"]);
    assert!(e.contains("paused"), "{e}");
    let out = b.tmp.path().join("paused.out");
    let mut child = rt
        .cmd()
        .args(["exec", "--ignore-paused", &id, "sh", "-c", "echo ran"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .spawn()
        .unwrap();
    // The process joined the frozen cgroup: it cannot run until the container resumes.
    std::thread::sleep(Duration::from_millis(400));
    assert!(child.try_wait().unwrap().is_none());
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "");
    rt.ok(&["resume", &id]);
    assert!(child.wait().unwrap().success());
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "ran\n");
    rt.ok(&["delete", "-f", &id]);
}

#[test]
fn created_accepts_and_stopped_refuses() {
    let rt = Rsrun::new();
    let b = sleeper();
    let id = unique("ex");
    rt.ok(&["create", "--bundle", b.dir.to_str().unwrap(), &id]);
    // As runc: exec into a created container runs (the init still waits for start).
    let out = rt.ok(&[
        "exec",
        &id,
        "sh",
        "-c",
        "echo in-created; cat /proc/1/cmdline | head -c 5",
    ]);
    assert!(out.starts_with("in-created"), "{out}");
    assert_eq!(rt.status(&id), "created");
    rt.ok(&["start", &id]);
    rt.ok(&["exec", &id, "true"]);
    rt.ok(&["kill", &id, "KILL"]);
    rt.wait_status(&id, "stopped");
    let e = rt.fails(&["exec", &id, "true"]);
    assert!(e.contains("stopped"), "{e}");
    rt.ok(&["delete", &id]);
    let e = rt.fails(&["exec", &id, "true"]);
    assert!(e.contains("does not exist"), "{e}");
}

#[test]
fn a_missing_binary_fails_cleanly() {
    let rt = Rsrun::new();
    let b = sleeper();
    let (id, pid) = start(&rt, &b);
    let e = rt.fails(&["exec", &id, "no-such-binary", "arg"]);
    assert!(e.contains("no-such-binary"), "{e}");
    let e = rt.fails(&["exec", &id, "/no/such/path"]);
    assert!(e.contains("/no/such/path"), "{e}");
    let e = rt.fails(&["exec", &id, "/etc"]);
    assert!(e.contains("directory"), "{e}");
    // The container is undisturbed: still running, only its init in it.
    assert_eq!(rt.status(&id), "running");
    assert_eq!(rt.state(&id)["pid"].as_i64().unwrap(), pid);
    let ps: Vec<i64> = serde_json::from_str(&rt.ok(&["ps", "-f", "json", &id])).unwrap();
    assert_eq!(ps, vec![pid]);
    assert_eq!(exec_sh(&rt, &id, &[], "echo still-fine"), "still-fine\n");
    rt.ok(&["delete", "-f", &id]);
}

#[test]
fn exit_status_is_propagated() {
    let rt = Rsrun::new();
    let b = sleeper();
    let (id, _) = start(&rt, &b);
    assert_eq!(exec(&rt, &[&id, "sh", "-c", "exit 7"]).0, 7);
    assert_eq!(exec(&rt, &[&id, "true"]).0, 0);
    assert_eq!(exec(&rt, &[&id, "false"]).0, 1);
    // Killed by a signal: 128 + N.
    assert_eq!(exec(&rt, &[&id, "sh", "-c", "kill -KILL $$"]).0, 137);
    assert_eq!(exec(&rt, &[&id, "sh", "-c", "kill -TERM $$"]).0, 143);
    // `--` before the command, and a command whose flags look like exec's.
    let (code, out, _) = exec(&rt, &[&id, "--", "echo", "-d", "--tty"]);
    assert_eq!((code, out.as_str()), (0, "-d --tty\n"));
    rt.ok(&["delete", "-f", &id]);
}

#[test]
fn signals_are_forwarded() {
    let rt = Rsrun::new();
    let b = sleeper();
    let (id, _) = start(&rt, &b);
    let out = b.tmp.path().join("sig.out");
    let mut child = rt
        .cmd()
        .args(["exec", &id, "sh", "-c"])
        .arg("trap 'echo got-usr1' USR1; trap 'echo got-term; exit 42' TERM; touch /tmp/ready; while :; do sleep 0.05; done")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .spawn()
        .unwrap();
    let ready = b.rootfs().join("tmp/ready");
    wait_for("trap installed", || ready.exists());
    let rpid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(rpid, nix::sys::signal::Signal::SIGUSR1).unwrap();
    wait_for("USR1 delivered", || {
        std::fs::read_to_string(&out).unwrap().contains("got-usr1")
    });
    nix::sys::signal::kill(rpid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(42));
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "got-usr1\ngot-term\n"
    );
    assert_eq!(rt.status(&id), "running");
    rt.ok(&["delete", "-f", &id]);
}

#[test]
fn no_descriptor_leaks_and_preserve_fds() {
    let rt = Rsrun::new();
    let b = sleeper();
    let (id, _) = start(&rt, &b);
    let out_path = b.tmp.path().join("fd3.txt");
    // The shell opens fd 3 on a file and an unrelated fd 4, then execs rsrun.
    let run = |extra: &[&str], script: &str| {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg("exec 3>\"$OUT\" 4</; exec \"$@\"")
            .arg("sh")
            .arg(rsrun_bin())
            .arg("--root")
            .arg(rt.root.path())
            .arg("exec")
            .args(extra)
            .args([id.as_str(), "sh", "-c", script])
            .env("OUT", &out_path);
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    // Without --preserve-fds: only stdio (and ls's own descriptor, 3).
    let out = run(&[], "ls /proc/self/fd | tr '\\n' ' '");
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["0", "1", "2", "3"]
    );
    let out = run(
        &["--preserve-fds", "1"],
        "echo via-fd3 >&3; ls /proc/self/fd | tr '\\n' ' '",
    );
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["0", "1", "2", "3", "4"]
    );
    assert_eq!(std::fs::read_to_string(&out_path).unwrap(), "via-fd3\n");
    // The working directory is inside the container (CVE-2024-21626).
    assert_eq!(exec_sh(&rt, &id, &[], "readlink /proc/self/cwd"), "/\n");
    rt.ok(&["delete", "-f", &id]);
}

#[test]
fn refuses_to_exec_the_runtime_binary() {
    let rt = Rsrun::new();
    let mut b = sleeper();
    std::fs::write(b.rootfs().join("rsrun"), "").unwrap();
    std::fs::write(b.rootfs().join("bin/via-script"), "#!/rsrun\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        b.rootfs().join("bin/via-script"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    b.edit(|c| {
        c["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/rsrun", "type": "bind",
            "source": rsrun_bin(), "options": ["bind", "ro"]
        }))
    });
    let (id, _) = start(&rt, &b);
    let before = std::fs::read(rsrun_bin()).unwrap();
    for prog in ["/rsrun", "via-script"] {
        let e = rt.fails(&["exec", &id, prog]);
        assert!(e.contains("CVE-2019-5736"), "{prog}: {e}");
    }
    assert_eq!(rt.status(&id), "running");
    assert_eq!(std::fs::read(rsrun_bin()).unwrap(), before);
    rt.ok(&["delete", "-f", &id]);
}

#[test]
fn apparmor_and_selinux_flags() {
    let rt = Rsrun::new();
    let b = sleeper();
    let (id, _) = start(&rt, &b);
    let e = rt.fails(&[
        "exec",
        "--process-label",
        "system_u:system_r:x",
        &id,
        "true",
    ]);
    assert!(e.contains("SELinux"), "{e}");
    let aa = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|s| s.trim() == "Y");
    if !aa {
        // This host has no AppArmor: asking for a profile is an error, not ignored.
        let e = rt.fails(&["exec", "--apparmor", "some-profile", &id, "true"]);
        assert!(e.contains("AppArmor") && e.contains("some-profile"), "{e}");
    }
    assert_eq!(rt.status(&id), "running");
    rt.ok(&["delete", "-f", &id]);
}

#[test]
fn a_fake_proc_in_the_container_does_not_keep_the_callers_groups() {
    // Root of a user namespace with CAP_SYS_ADMIN there covers its /proc with a tmpfs that
    // says setgroups is denied. The exec must read the namespace's real setting (through
    // the host's /proc) and drop the caller's supplementary groups (4242 here), which would
    // otherwise stay on the process (shown as the overflow gid: 4242 is not mapped).
    let rt = Rsrun::new();
    let mut b = Bundle::new(&[
        "sh",
        "-c",
        "mount -t tmpfs t /proc && mkdir /proc/self && echo deny > /proc/self/setgroups \
         && touch /dev/shm/faked; sleep 1000",
    ]);
    b.edit(|c| c["root"]["readonly"] = json!(false));
    b.add_namespace("user", None);
    b.edit(|c| {
        c["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        c["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        for set in ["bounding", "effective", "permitted"] {
            c["process"]["capabilities"][set]
                .as_array_mut()
                .unwrap()
                .push(json!("CAP_SYS_ADMIN"));
        }
    });
    let (id, pid) = start(&rt, &b);
    // (The rootfs is not the user namespace's to write: the marker is in its /dev/shm.)
    let faked = PathBuf::from(format!("/proc/{pid}/root/dev/shm/faked"));
    for _ in 0..500 {
        if faked.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(faked.exists(), "the container did not cover its /proc");
    let o = Command::new("setpriv")
        .args(["--groups", "4242", "--"])
        .arg(rsrun_bin())
        .arg("--root")
        .arg(rt.root.path())
        .args(["exec", &id, "id", "-G"])
        .output()
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{out} {err}");
    assert_eq!(out.trim(), "0", "groups of the exec'd process: {out}");
    rt.ok(&["delete", "-f", &id]);
}
