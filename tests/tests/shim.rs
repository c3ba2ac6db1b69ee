//! rsrun-shim end to end: it creates and supervises busybox containers through the rsrun
//! library; the tests read what the kernel and the container did (exit statuses, the log
//! bytes, processes left, OOM kills), never a file the shim was told to write.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rsrun_tests::*;
use serde_json::{json, Value};

/// One container under a shim: its directory, log and exit file in a temp dir.
struct Shimmed {
    tmp: TempDir,
    id: String,
    rt: Rsrun,
    pid: i32,
}

impl Shimmed {
    fn dir(&self) -> PathBuf {
        self.tmp.path().join("shim")
    }
    fn log(&self) -> PathBuf {
        self.tmp.path().join("ctr.log")
    }
    fn exit_file(&self) -> PathBuf {
        self.tmp.path().join("exit.json")
    }

    /// Sends a control request; returns the answer line.
    fn control(&self, req: &Value) -> Value {
        self.try_control(req)
            .unwrap_or_else(|| panic!("no answer to {req}: the connection was closed"))
    }

    /// As `control`; None when the shim closed the connection without an answer (a shed
    /// connection).
    fn try_control(&self, req: &Value) -> Option<Value> {
        let mut s = UnixStream::connect(self.dir().join("control")).ok()?;
        s.write_all(format!("{req}\n").as_bytes()).ok()?;
        // A shed connection reads EOF, or ECONNRESET with the request unread: no line.
        Some(line_from(&mut s)).filter(|v| !v.is_null())
    }

    fn start(&self) {
        let v = self.control(&json!({"op": "start"}));
        assert_eq!(v["ok"], true, "{v}");
    }

    /// exec_sync: (header, stdout, stderr).
    fn exec_sync(&self, args: &[&str], timeout_ms: u64) -> (Value, Vec<u8>, Vec<u8>) {
        let mut s = UnixStream::connect(self.dir().join("control")).unwrap();
        let req = json!({"op": "exec_sync", "args": args, "timeout_ms": timeout_ms});
        s.write_all(format!("{req}\n").as_bytes()).unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        let nl = all.iter().position(|b| *b == b'\n').unwrap();
        let head: Value = serde_json::from_slice(&all[..nl]).unwrap();
        let rest = &all[nl + 1..];
        let n = head["stdout_len"].as_u64().unwrap_or(0) as usize;
        (head, rest[..n].to_vec(), rest[n..].to_vec())
    }

    /// Waits for the exit record (bounded).
    fn wait_exit(&self) -> Value {
        for _ in 0..2000 {
            if let Ok(d) = std::fs::read(self.exit_file()) {
                return serde_json::from_slice(&d).unwrap();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("no exit record for {}", self.id);
    }
}

impl Drop for Shimmed {
    fn drop(&mut self) {
        let _ = self.rt.run(&["delete", "--force", &self.id]);
    }
}

fn shim(b: &Bundle, extra: &[&str]) -> Result<Shimmed, String> {
    shim_in(TempDir::new("shim"), b, extra)
}

/// As `shim`, in `tmp` (whose `ctr.log` a test may have made a link elsewhere).
fn shim_in(tmp: TempDir, b: &Bundle, extra: &[&str]) -> Result<Shimmed, String> {
    let rt = Rsrun::new();
    let id = unique("sh");
    let out = shim_command(&rt, tmp.path(), &id, b)
        .args(extra)
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let pid = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    Ok(Shimmed { tmp, id, rt, pid })
}

/// The records of a CRI log: (stream, tag, content).
fn records(log: &Path) -> Vec<(String, String, Vec<u8>)> {
    let data = std::fs::read(log).unwrap_or_default();
    let mut out = Vec::new();
    for rec in data.split(|b| *b == b'\n').filter(|r| !r.is_empty()) {
        let mut f = rec.splitn(4, |b| *b == b' ');
        let ts = String::from_utf8_lossy(f.next().unwrap()).into_owned();
        // RFC 3339 with nanoseconds, UTC.
        assert!(
            ts.len() == 30 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
            "timestamp {ts:?}"
        );
        let stream = String::from_utf8_lossy(f.next().unwrap()).into_owned();
        let tag = String::from_utf8_lossy(f.next().unwrap()).into_owned();
        out.push((stream, tag, f.next().unwrap_or(b"").to_vec()));
    }
    out
}

/// A stream put back together from the records (P pieces joined, F ends a line).
fn stream_bytes(log: &Path, stream: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for (s, tag, content) in records(log) {
        if s == stream {
            out.extend_from_slice(&content);
            if tag == "F" {
                out.push(b'\n');
            }
        }
    }
    out
}

/// The disk of the exit records fills while the container runs (the container's own log,
/// here): the exit is recorded all the same, in the space the shim took at its start.
/// Before, the record's write failed with ENOSPC and the exit was lost.
#[test]
fn the_exit_is_recorded_on_a_full_disk() {
    let tmp = TempDir::new("shim-full");
    let dir = tmp.path().to_str().unwrap().to_string();
    run_ok(&["mount", "-t", "tmpfs", "-o", "size=2m", "shimfull", &dir]);
    struct Unmount(String);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _u = Unmount(dir.clone());
    // Writes until the disk is full, then waits.
    let b = Bundle::new(&["sh", "-c", "yes filling | head -c 4000000; sleep 1000"]);
    let s = shim_in(tmp, &b, &[]).unwrap();
    s.start();
    // The log has filled the disk: its dropped bytes are counted.
    let mut full = false;
    for _ in 0..2000 {
        let v = s.control(&json!({"op": "status"}));
        if v["log_dropped_bytes"].as_u64().unwrap_or(0) > 0 {
            full = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(full, "the container's log never filled the disk");
    // (The log cuts a batch it could not write whole back off the file, which frees a
    // little: taken too.)
    let mut fill = std::fs::File::create(Path::new(&dir).join("fill")).unwrap();
    while fill
        .write_all(&[0u8; 512])
        .and_then(|_| fill.sync_all())
        .is_ok()
    {}
    s.rt.ok(&["kill", &s.id, "KILL"]);
    let e = s.wait_exit();
    assert_eq!(e["exit_code"], 137, "{e}");
}

#[test]
fn exit_codes_and_signals_are_recorded() {
    let b = Bundle::new(&["sh", "-c", "exit 3"]);
    let s = shim(&b, &[]).unwrap();
    s.start();
    let e = s.wait_exit();
    assert_eq!(e["exit_code"], 3, "{e}");
    assert_eq!(e["signal"], Value::Null);
    assert!(
        e["started_at"].is_string() && e["finished_at"].is_string(),
        "{e}"
    );
    assert_eq!(e["oom_killed"], false);

    // Killed by a signal (from outside: the container's PID 1 ignores its own SIGKILL).
    let b = Bundle::new(&["sleep", "1000"]);
    let s = shim(&b, &[]).unwrap();
    s.start();
    let shim_pid: i32 = std::fs::read_to_string(s.dir().join("shim.pid"))
        .unwrap()
        .parse()
        .unwrap();
    s.rt.ok(&["kill", &s.id, "KILL"]);
    let e = s.wait_exit();
    assert_eq!(e["exit_code"], 137, "{e}");
    assert_eq!(e["signal"], 9, "{e}");
    // The shim leaves once the exit is recorded, and takes its sockets with it.
    for _ in 0..500 {
        if !alive(shim_pid) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        !alive(shim_pid),
        "the shim stayed after its container exited"
    );
    assert!(!s.dir().join("control").exists(), "control socket left");
}

/// SIGTERM, SIGINT, SIGHUP and SIGQUIT sent to the shim (a `systemctl kill` of the CRI
/// server's unit, whose cgroup the shims stay in) are passed over: it still answers after
/// each, and records the exit when the container ends. (A fatal signal's default action
/// ends a process before it runs another instruction: an answer after kill() returned is
/// one from a shim that survived it.)
#[test]
fn termination_signals_do_not_end_the_shim() {
    let b = Bundle::new(&["sleep", "1000"]);
    let s = shim(&b, &[]).unwrap();
    s.start();
    let shim_pid = shim_pid(&s);
    use nix::sys::signal::Signal;
    for sig in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(shim_pid), sig).unwrap();
        let v = s
            .try_control(&json!({"op": "status"}))
            .unwrap_or_else(|| panic!("the shim did not answer after {sig}"));
        assert!(v.get("error").is_none(), "{sig}: {v}");
        assert!(alive(shim_pid), "{sig}");
    }
    s.rt.ok(&["kill", &s.id, "KILL"]);
    let e = s.wait_exit();
    assert_eq!(e["exit_code"], 137, "{e}");
    let log = std::fs::read_to_string(s.dir().join("shim.log")).unwrap();
    assert!(log.contains("SIGTERM from pid"), "{log}");
}

#[test]
fn the_monitor_keeps_no_descriptor_its_starter_leaked() {
    // A pipe's write end inherited (not close-on-exec) by the shim, as a daemon's own
    // inherited descriptors would be: once the starter closes its copy, the reader sees EOF
    // only if the long-lived monitor holds none.
    let (r, w) = nix::unistd::pipe().unwrap();
    let b = Bundle::new(&["sleep", "1000"]);
    let s = shim(&b, &[]).unwrap();
    drop(w);
    let mut p = [nix::poll::PollFd::new(
        std::os::fd::AsFd::as_fd(&r),
        nix::poll::PollFlags::POLLIN,
    )];
    let n = nix::poll::poll(&mut p, nix::poll::PollTimeout::from(10_000u16)).unwrap();
    assert_eq!(n, 1, "the shim (pid {}) holds its starter's pipe", s.pid);
    let mut buf = [0u8; 1];
    assert_eq!(nix::unistd::read(&r, &mut buf), Ok(0));
}

#[test]
fn a_failed_start_is_recorded_with_the_runtimes_error() {
    // The program is found at create; removed before the start, its execve fails: the start
    // answers the runtime's error and the exit record carries it (exit code 128), as the CRI
    // server reports a failed start (reason StartError), not a plain exit of the init.
    let b = Bundle::new(&["sleep", "1000"]);
    let s = shim(&b, &[]).unwrap();
    let a = attach(&s);
    std::fs::remove_file(b.rootfs().join("bin/sleep")).unwrap();
    let v = s.control(&json!({"op": "start"}));
    let err = v["error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains("No such file"), "{v}");
    let e = s.wait_exit();
    assert_eq!(e["exit_code"], 128, "{e}");
    assert_eq!(e["start_error"], json!(err), "{e}");
    // An attached client is told the same code as the record.
    let t = nix::sys::time::TimeVal::new(10, 0);
    nix::sys::socket::setsockopt(&a, nix::sys::socket::sockopt::ReceiveTimeout, &t).unwrap();
    let mut buf = [0u8; 64];
    let exit = loop {
        let n =
            nix::sys::socket::recv(a.as_raw_fd(), &mut buf, nix::sys::socket::MsgFlags::empty())
                .unwrap();
        match (n, buf[0]) {
            (0, _) => break None,
            (5, 3) => break Some(i32::from_le_bytes(buf[1..5].try_into().unwrap())),
            _ => {}
        }
    };
    assert_eq!(exit, Some(128));
}

/// A process the init leaves behind (no PID namespace of its own) that keeps writing to the
/// container's stdout: the exit is still recorded (its output is read for a short grace, not
/// until it stops), and the delete at exit ends it.
#[test]
fn a_writer_outliving_the_init_does_not_hold_the_exit_record() {
    let marker = unique("outliver");
    let mut b = Bundle::new(&["sh", "-c", &format!("(yes {marker} &); exit 4")]);
    b.edit(|c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|n| n["type"] != "pid");
    });
    // (The log to /dev/null: `yes` writes as fast as the shim reads, for the whole grace.)
    let tmp = TempDir::new("outliver");
    std::os::unix::fs::symlink("/dev/null", tmp.path().join("ctr.log")).unwrap();
    let s = shim_in(tmp, &b, &["--delete-on-exit"]).unwrap();
    s.start();
    let e = s.wait_exit();
    assert_eq!(e["exit_code"], 4, "{e}");
    assert!(
        processes_with(&marker).is_empty(),
        "the writer outlived the delete at exit"
    );
}

/// finished_at is when the init was reaped, not when the record was written after the
/// cleanup: a poststop hook (run by the delete at exit, before the record) notes the time it
/// ran, in the same format, and the container had finished before it.
#[test]
fn finished_at_is_the_exit_not_the_cleanup_after_it() {
    let tmp = TempDir::new("fin");
    let mark = tmp.path().join("hook-ran");
    let mut b = Bundle::new(&["true"]);
    let script = format!(
        "date -u +%Y-%m-%dT%H:%M:%S.%NZ > {}; sleep 1",
        mark.display()
    );
    b.edit(|c| {
        c["hooks"] = json!({"poststop": [{"path": "/bin/sh", "args": ["sh", "-c", script]}]})
    });
    let s = shim(&b, &["--delete-on-exit"]).unwrap();
    s.start();
    let e = s.wait_exit();
    let hook = std::fs::read_to_string(&mark).unwrap();
    let finished = e["finished_at"].as_str().unwrap();
    assert_eq!(finished.len(), hook.trim().len(), "{finished} {hook}");
    assert!(
        finished < hook.trim(),
        "finished_at {finished} is not before the poststop hook ran ({hook})"
    );
}

/// The log's filesystem fills up while the container writes: the batches that do not fit are
/// dropped whole and counted, never left half-written (the next record would be glued to the
/// torn one, a line the kubelet cannot parse), and the container is not blocked. Once space is
/// free again (a file on that filesystem removed) the records go on.
#[test]
fn a_full_disk_drops_whole_batches_and_counts_them() {
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    // The log on a small tmpfs of its own (the shim's other files beside it as usual).
    let disk = TempDir::new("full-disk");
    nix::mount::mount(
        Some("tmpfs"),
        disk.path(),
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=2m"),
    )
    .unwrap();
    let _unmount = Unmount(disk.path().to_path_buf());
    let tmp = TempDir::new("full");
    std::os::unix::fs::symlink(disk.path().join("ctr.log"), tmp.path().join("ctr.log")).unwrap();
    let filler = disk.path().join("filler");
    // About 200 KiB left free, less than the container's lines; once the filler is removed,
    // more than all of them (the shim may still be behind the container then).
    std::fs::write(&filler, vec![0u8; 1800 * 1024]).unwrap();
    let sig = TempDir::new("full-sig");
    std::fs::write(sig.path().join("full"), "").unwrap();
    let line = "x".repeat(60);
    let mut b = Bundle::new(&[
        "sh",
        "-c",
        &format!(
            "i=0; while [ $i -lt 5000 ]; do echo line-$i-{line}; i=$((i+1)); done; \
             while [ -e /sig/full ]; do usleep 20000; done; echo after"
        ),
    ]);
    b.edit(|c| {
        c["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/sig", "type": "bind",
            "source": sig.path(), "options": ["rbind", "rw"]}));
    });
    let s = shim_in(tmp, &b, &[]).unwrap();
    s.start();
    // Full: the container's 5000 lines (about 500 KB framed) are past what is free, and a
    // batch is dropped (the filesystem is full only for a moment: a batch that did not fit is
    // cut back off).
    let mut full = false;
    for _ in 0..500 {
        if s.control(&json!({"op": "status"}))["log_dropped_bytes"].as_u64() > Some(0) {
            full = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        full,
        "no log batch was dropped: the log's filesystem never filled up"
    );
    std::fs::remove_file(&filler).unwrap();
    std::fs::remove_file(sig.path().join("full")).unwrap();
    let e = s.wait_exit();
    assert_eq!(e["exit_code"], 0, "{e}");
    assert!(e["log_dropped_bytes"].as_u64().unwrap() > 0, "{e}");
    let data = std::fs::read(s.log()).unwrap();
    assert!(data.ends_with(b"\n"), "the log ends in a torn record");
    let mut last = Vec::new();
    for (stream, tag, content) in records(&s.log()) {
        let text = String::from_utf8_lossy(&content).into_owned();
        let whole = text == "after"
            || text
                .strip_prefix("line-")
                .and_then(|r| r.split_once('-'))
                .is_some_and(|(n, x)| n.parse::<u32>().is_ok() && x == line);
        assert!(
            stream == "stdout" && tag == "F" && whole,
            "a torn or glued record: {stream} {tag} {text:?}"
        );
        last = content;
    }
    assert_eq!(
        last, b"after",
        "the records did not go on once space was free"
    );
}

#[test]
fn delete_on_exit_removes_the_cgroups_before_the_exit_record() {
    // The container prints its own cgroup; once its exit is recorded, that cgroup is gone
    // from the kernel's hierarchy with --delete-on-exit, and still there without it.
    fn cgroup_dir(s: &Shimmed) -> PathBuf {
        let out = String::from_utf8(stream_bytes(&s.log(), "stdout")).unwrap();
        let find = |pat: &str| out.lines().find(|l| l.contains(pat)).map(str::to_string);
        let (base, line) = match find(":memory:") {
            Some(l) => ("/sys/fs/cgroup/memory", l),
            None => ("/sys/fs/cgroup", find("0::").expect("a cgroup line")),
        };
        let path = line.splitn(3, ':').nth(2).unwrap().to_string();
        assert_ne!(path, "/", "the container runs in a root cgroup: {out}");
        PathBuf::from(format!("{base}{path}"))
    }
    for delete in [true, false] {
        let b = Bundle::new(&["sh", "-c", "cat /proc/self/cgroup; exit 3"]);
        let extra: &[&str] = if delete { &["--delete-on-exit"] } else { &[] };
        let s = shim(&b, extra).unwrap();
        s.start();
        let e = s.wait_exit();
        assert_eq!(e["exit_code"], 3, "{e}");
        let dir = cgroup_dir(&s);
        if delete {
            assert!(
                !dir.exists(),
                "{} left after the exit record",
                dir.display()
            );
            assert_eq!(s.rt.count(), 0, "the runtime still lists the container");
        } else {
            assert!(
                dir.exists(),
                "{} gone without --delete-on-exit",
                dir.display()
            );
            assert_eq!(s.rt.count(), 1);
        }
    }
}

/// One line from a control connection (byte by byte: what follows stays unread).
fn line_from(c: &mut UnixStream) -> Value {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    // read_exact: a read interrupted by a signal is retried (a plain read's EINTR failed a
    // CI run).
    while c.read_exact(&mut b).is_ok() && b[0] != b'\n' {
        line.push(b[0]);
    }
    serde_json::from_slice(&line).unwrap_or(Value::Null)
}

#[test]
fn exec_runs_on_the_requesters_pipes_and_reports_the_exit_code() {
    let b = Bundle::new(&["sleep", "1000"]);
    let s = shim(&b, &[]).unwrap();
    s.start();
    // The process's stdio: pipes whose other ends stay here (the shim keeps none).
    let (in_r, in_w) = nix::unistd::pipe().unwrap();
    let (out_r, out_w) = nix::unistd::pipe().unwrap();
    let (err_r, err_w) = nix::unistd::pipe().unwrap();
    let mut c = UnixStream::connect(s.dir().join("control")).unwrap();
    let req = json!({"op": "exec",
        "args": ["sh", "-c", "read l; echo \"got $l\"; echo oops >&2; exit 7"]});
    let fds = [in_r.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()];
    rsrun::sys::send_with_fds(c.as_raw_fd(), format!("{req}\n").as_bytes(), &fds).unwrap();
    drop((in_r, out_w, err_w));
    let first = line_from(&mut c);
    assert_eq!(first["ok"], true, "{first}");
    let pid = first["pid"].as_i64().unwrap();
    // In the kernel's process tree, the exec'd process is the shim's child.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let shim_pid = std::fs::read_to_string(s.dir().join("shim.pid")).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l == format!("PPid:\t{}", shim_pid.trim())),
        "{status}"
    );
    std::fs::File::from(in_w).write_all(b"hello\n").unwrap();
    let mut out = String::new();
    std::fs::File::from(out_r).read_to_string(&mut out).unwrap();
    let mut err = String::new();
    std::fs::File::from(err_r).read_to_string(&mut err).unwrap();
    assert_eq!((out.as_str(), err.as_str()), ("got hello\n", "oops\n"));
    let last = line_from(&mut c);
    assert_eq!(last["exit_code"], 7, "{last}");

    // Two descriptors instead of three: refused, saying so; the container carries on.
    let (r, w) = nix::unistd::pipe().unwrap();
    let mut c = UnixStream::connect(s.dir().join("control")).unwrap();
    let req = json!({"op": "exec", "args": ["true"]});
    let fds = [r.as_raw_fd(), w.as_raw_fd()];
    rsrun::sys::send_with_fds(c.as_raw_fd(), format!("{req}\n").as_bytes(), &fds).unwrap();
    let v = line_from(&mut c);
    assert!(
        v["error"]
            .as_str()
            .unwrap_or("")
            .contains("three descriptors"),
        "{v}"
    );
    assert_eq!(s.control(&json!({"op": "status"}))["ok"], true);
}

#[test]
fn log_framing_partial_long_binary_interleaved() {
    // stdout: a short line, a 40-byte line (max 16: two P pieces and an F), a line with
    // invalid UTF-8 ended by "\r\n" (a line end, as containerd reads it: the "\r" goes), a
    // lone "\r" (content), an unfinished line at exit (a P record: the kubelet adds no
    // newline to it); stderr interleaved.
    let script = r#"printf 'one\n'; printf 'e1\n' >&2; printf 'abcdefghijklmnopqrstuvwxyz0123456789ABCD\n';
printf '\377\376 bin\r\n'; printf 'e2 no newline' >&2; printf 'a\rb\n'; printf 'tail'"#;
    let b = Bundle::new(&["sh", "-c", script]);
    let s = shim(&b, &["--log-max-line", "16"]).unwrap();
    s.start();
    assert_eq!(s.wait_exit()["exit_code"], 0);
    let out = stream_bytes(&s.log(), "stdout");
    assert_eq!(
        out,
        b"one\nabcdefghijklmnopqrstuvwxyz0123456789ABCD\n\xff\xfe bin\na\rb\ntail".to_vec()
    );
    assert_eq!(
        stream_bytes(&s.log(), "stderr"),
        b"e1\ne2 no newline".to_vec()
    );
    let recs = records(&s.log());
    let long: Vec<_> = recs
        .iter()
        .filter(|(st, _, c)| st == "stdout" && c.first().is_some_and(|b| b.is_ascii_alphanumeric()))
        .map(|(_, t, c)| (t.as_str(), c.len()))
        .collect();
    assert_eq!(
        long,
        [("F", 3), ("P", 16), ("P", 16), ("F", 8), ("F", 3), ("P", 4)],
        "{recs:?}"
    );
}

/// The anonymous memory (KiB, from the page tables: smaps_rollup), the thread count and
/// the context switches of a process, as the kernel counts them.
fn anon_threads_switches(pid: i32) -> (u64, usize, u64) {
    let field = |text: &str, name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap()
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    (
        field(&rollup, "Anonymous:"),
        field(&status, "Threads:") as usize,
        field(&status, "voluntary_ctxt_switches:") + field(&status, "nonvoluntary_ctxt_switches:"),
    )
}

/// A container that writes as fast as it can (`cat` of 27 MB: full pipes, the log writer
/// thread; 100-byte lines, then a 3 MB line: pieces, and a read's worth of unfinished line at
/// a time) and then idles: every byte is in the log, and afterwards the shim is back to one
/// thread and to about the memory it had before (its 512 KiB read buffer, the burst's batches
/// and the long line's buffer given back), and asleep: no timer left. Before, the buffers
/// stayed: 0.7 MiB more anonymous memory after a burst of short lines with 256 KiB reads,
/// 2.5 MiB with 1 MiB reads.
#[test]
fn a_burst_of_output_is_logged_and_its_memory_given_back() {
    let b = Bundle::new(&["sh", "-c", "cat /data; sleep 313373"]);
    let line: Vec<u8> = (0..99u8).map(|i| b'a' + i % 26).chain([b'\n']).collect();
    let mut data = line.repeat(240_000);
    data.extend(std::iter::repeat_n(b'L', 3_000_000).chain([b'\n']));
    std::fs::write(b.rootfs().join("data"), &data).unwrap();
    let s = shim(&b, &[]).unwrap();
    let pid = shim_pid(&s);
    let (before, _, _) = anon_threads_switches(pid);
    s.start();
    assert!(
        wait_until(Duration::from_secs(60), || stream_bytes(&s.log(), "stdout")
            .len()
            >= data.len()),
        "the log did not grow to the container's output"
    );
    assert_eq!(stream_bytes(&s.log(), "stdout"), data);
    let mut last = (0, 0, 0);
    let settled = wait_until(Duration::from_secs(10), || {
        last = anon_threads_switches(pid);
        last.1 == 1 && last.0 < before + 512
    });
    assert!(
        settled,
        "after the burst: {} KiB of anonymous memory (before it: {before} KiB), {} threads",
        last.0, last.1
    );
    // The blocks the burst allocated ahead of the log's end are given back with its thread.
    let m = std::fs::metadata(s.log()).unwrap();
    assert!(
        m.blocks() * 512 < m.len() + 64 * 1024,
        "{} bytes allocated for a log of {}",
        m.blocks() * 512,
        m.len()
    );
    // (The last look after the burst may be due still.)
    std::thread::sleep(Duration::from_millis(200));
    let switches = anon_threads_switches(pid).2;
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        anon_threads_switches(pid).2,
        switches,
        "the shim woke up while its container was idle"
    );
    assert!(alive(pid));
}

#[test]
fn log_reopen_after_rename_loses_nothing() {
    // The container counts on stdout, until told to stop, while the log is rotated twice;
    // each rotation once the current file holds 20 records (whatever the machine's speed).
    let b = Bundle::new(&[
        "sh",
        "-c",
        "i=0; while [ ! -e /stop ]; do echo line $i; i=$((i+1)); usleep 2000; done",
    ]);
    let s = shim(&b, &[]).unwrap();
    s.start();
    let records_in =
        |p: &Path| std::fs::read(p).map_or(0, |b| b.iter().filter(|c| **c == b'\n').count());
    let mut rotated = Vec::new();
    for n in 0..2 {
        assert!(
            wait_until(Duration::from_secs(60), || records_in(&s.log()) >= 20),
            "the log has {} records",
            records_in(&s.log())
        );
        let to = s.tmp.path().join(format!("ctr.log.{n}"));
        std::fs::rename(s.log(), &to).unwrap();
        let v = s.control(&json!({"op": "reopen_log"}));
        assert_eq!(v["ok"], true, "{v}");
        rotated.push(to);
    }
    assert!(wait_until(Duration::from_secs(60), || records_in(&s.log()) >= 20));
    std::fs::write(b.rootfs().join("stop"), b"").unwrap();
    assert_eq!(s.wait_exit()["exit_code"], 0);
    rotated.push(s.log());
    let mut all = Vec::new();
    for p in &rotated {
        let part = stream_bytes(p, "stdout");
        assert!(!part.is_empty(), "{} is empty", p.display());
        all.extend(part);
    }
    let all = String::from_utf8(all).unwrap();
    let n = all.lines().count();
    assert!(n >= 60, "{n} lines");
    let want: String = (0..n).map(|i| format!("line {i}\n")).collect();
    assert_eq!(all, want);
}

/// An attach client on the seqpacket socket.
fn attach(s: &Shimmed) -> OwnedFd {
    use nix::sys::socket::*;
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    connect(
        fd.as_raw_fd(),
        &UnixAddr::new(&s.dir().join("attach")).unwrap(),
    )
    .unwrap();
    fd
}

fn send(fd: &OwnedFd, kind: u8, data: &[u8]) {
    let mut m = vec![kind];
    m.extend_from_slice(data);
    nix::sys::socket::send(fd.as_raw_fd(), &m, nix::sys::socket::MsgFlags::empty()).unwrap();
}

/// Reads attach packets until `want` appears in the stdout bytes; returns them all.
fn read_until(fd: &OwnedFd, want: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    for _ in 0..1000 {
        let t = nix::sys::time::TimeVal::new(10, 0);
        nix::sys::socket::setsockopt(fd, nix::sys::socket::sockopt::ReceiveTimeout, &t).unwrap();
        let n = nix::sys::socket::recv(
            fd.as_raw_fd(),
            &mut buf,
            nix::sys::socket::MsgFlags::empty(),
        )
        .unwrap();
        assert!(
            n > 0,
            "attach closed before {:?}",
            String::from_utf8_lossy(want)
        );
        if buf[0] == 1 {
            got.extend_from_slice(&buf[1..n]);
        }
        if got.windows(want.len()).any(|w| w == want) {
            return got;
        }
    }
    panic!("never saw {:?}", String::from_utf8_lossy(want));
}

#[test]
fn attach_several_clients_stdin_fan_in_output_fan_out() {
    let b = Bundle::new(&["cat"]);
    let s = shim(&b, &["--stdin"]).unwrap();
    s.start();
    let a = attach(&s);
    let c = attach(&s);
    send(&a, 0, b"from a\n");
    send(&c, 0, b"from c\n");
    for fd in [&a, &c] {
        let got = read_until(fd, b"from c\n");
        assert!(got.windows(7).any(|w| w == b"from a\n"), "{got:?}");
    }
    // A bad message drops that client only; the container carries on.
    send(&c, 9, b"junk");
    send(&a, 0, b"still here\n");
    read_until(&a, b"still here\n");
    // Detach without disturbing the container; the end of a client's input does not close
    // stdin without --stdin-once: that attachment ends, the next attacher still reaches cat.
    drop(c);
    send(&a, 5, b"");
    let mut buf = [0u8; 64];
    let t = nix::sys::time::TimeVal::new(10, 0);
    nix::sys::socket::setsockopt(&a, nix::sys::socket::sockopt::ReceiveTimeout, &t).unwrap();
    let n = nix::sys::socket::recv(a.as_raw_fd(), &mut buf, nix::sys::socket::MsgFlags::empty());
    assert_eq!(n, Ok(0), "the attachment did not end with its input");
    drop(a);
    let d = attach(&s);
    send(&d, 0, b"after the end of input\n");
    read_until(&d, b"after the end of input\n");
    s.rt.ok(&["kill", &s.id, "KILL"]);
    let e = s.wait_exit();
    assert_eq!(e["exit_code"], 137, "{e}");
    assert!(stream_bytes(&s.log(), "stdout").starts_with(b"from a\nfrom c\nstill here\n"));
}

/// A slow attacher still gets the end of the output and the exit: the shim sends what waits
/// for it before it goes (3 MB, more than the socket holds, wait when the container exits).
/// And a packet longer than the protocol allows drops its client, whose stdin would reach the
/// container with bytes missing.
#[test]
fn a_slow_attacher_gets_the_whole_output_and_the_exit() {
    let b = Bundle::new(&["sh", "-c", "head -c 3000000 /dev/zero; exit 6"]);
    let s = shim(&b, &[]).unwrap();
    let a = attach(&s);
    s.start();
    assert_eq!(s.wait_exit()["exit_code"], 6);
    std::thread::sleep(Duration::from_millis(300));
    let t = nix::sys::time::TimeVal::new(10, 0);
    nix::sys::socket::setsockopt(&a, nix::sys::socket::sockopt::ReceiveTimeout, &t).unwrap();
    let (mut bytes, mut exit) = (0usize, None);
    let mut buf = vec![0u8; 65536];
    loop {
        let n =
            nix::sys::socket::recv(a.as_raw_fd(), &mut buf, nix::sys::socket::MsgFlags::empty())
                .unwrap();
        match (n, buf[0]) {
            (0, _) => break,
            (_, 1) => bytes += n - 1,
            (5, 3) => exit = Some(i32::from_le_bytes(buf[1..5].try_into().unwrap())),
            _ => {}
        }
    }
    assert_eq!((bytes, exit), (3_000_000, Some(6)));

    let b = Bundle::new(&["cat"]);
    let s = shim(&b, &["--stdin"]).unwrap();
    s.start();
    let big = attach(&s);
    send(&big, 0, &[b'x'; 40_000]);
    let mut buf = [0u8; 64];
    nix::sys::socket::setsockopt(&big, nix::sys::socket::sockopt::ReceiveTimeout, &t).unwrap();
    let n = nix::sys::socket::recv(
        big.as_raw_fd(),
        &mut buf,
        nix::sys::socket::MsgFlags::empty(),
    );
    assert_eq!(n, Ok(0), "a client with an oversized packet was kept");
    let ok = attach(&s);
    send(&ok, 0, b"whole\n");
    let got = read_until(&ok, b"whole\n");
    assert!(
        !got.contains(&b'x'),
        "part of the oversized packet reached the container"
    );
    s.rt.ok(&["kill", &s.id, "KILL"]);
    s.wait_exit();
}

/// With --stdin-once, the end of the attacher's input closes the container's stdin only after
/// all the input before it: a container that has not read it yet (here for a second) still
/// gets every byte (it was dropped when it did not fit the pipe at once).
#[test]
fn stdin_once_closes_stdin_after_the_input_before_it() {
    let b = Bundle::new(&["sh", "-c", "sleep 1; wc -c"]);
    let s = shim(&b, &["--stdin", "--stdin-once"]).unwrap();
    s.start();
    let a = attach(&s);
    for _ in 0..10 {
        send(&a, 0, &[b'y'; 30_000]);
    }
    send(&a, 5, b"");
    assert_eq!(s.wait_exit()["exit_code"], 0);
    let out = String::from_utf8(stream_bytes(&s.log(), "stdout")).unwrap();
    assert_eq!(
        out.trim(),
        "300000",
        "the container read {out:?} of 300000 bytes"
    );
}

#[test]
fn stdin_once_closes_stdin_when_the_attacher_leaves() {
    let b = Bundle::new(&["cat"]);
    let s = shim(&b, &["--stdin", "--stdin-once"]).unwrap();
    s.start();
    let a = attach(&s);
    send(&a, 0, b"once\n");
    read_until(&a, b"once\n");
    drop(a);
    assert_eq!(s.wait_exit()["exit_code"], 0);

    // The end of the attacher's input closes it too: cat ends while the client still reads,
    // and the client gets its last output and the exit.
    let b = Bundle::new(&["sh", "-c", "cat; echo after-eof"]);
    let s = shim(&b, &["--stdin", "--stdin-once"]).unwrap();
    s.start();
    let a = attach(&s);
    send(&a, 0, b"once\n");
    send(&a, 5, b"");
    read_until(&a, b"after-eof\n");
    assert_eq!(s.wait_exit()["exit_code"], 0);

    // An attacher that stops receiving (the shim's send of cat's echo fails; no detach is
    // ever read from it) is a detach as well.
    let b = Bundle::new(&["sh", "-c", "cat; echo gone"]);
    let s = shim(&b, &["--stdin", "--stdin-once"]).unwrap();
    s.start();
    let a = attach(&s);
    nix::sys::socket::shutdown(a.as_raw_fd(), nix::sys::socket::Shutdown::Read).unwrap();
    send(&a, 0, b"once\n");
    assert_eq!(s.wait_exit()["exit_code"], 0);
    drop(a);
}

#[test]
fn stdin_once_only_an_attacher_with_stdin_closes_it_and_never_a_terminals() {
    // An attacher without stdin comes and goes: cat still reads.
    let b = Bundle::new(&["sh", "-c", "cat; echo closed"]);
    let s = shim(&b, &["--stdin", "--stdin-once"]).unwrap();
    s.start();
    drop(attach(&s));
    let a = attach(&s);
    send(&a, 0, b"still open\n");
    read_until(&a, b"still open\n");
    // One that says it carries stdin (an empty stdin packet) and goes without a byte: its
    // input ended.
    let y = attach(&s);
    send(&y, 0, b"");
    drop(y);
    read_until(&a, b"closed\n");
    assert_eq!(s.wait_exit()["exit_code"], 0);

    // A terminal's input stays open for the next attacher (`kubectl attach -it` after a
    // dropped `kubectl run -it`), as containerd leaves it.
    let mut b = Bundle::new(&["sh", "-c", "read x; echo got-$x; read y; echo got-$y"]);
    b.edit(|c| c["process"]["terminal"] = json!(true));
    let s = shim(&b, &["--terminal", "--stdin", "--stdin-once"]).unwrap();
    s.start();
    let a = attach(&s);
    send(&a, 0, b"one\n");
    read_until(&a, b"got-one");
    drop(a);
    let c = attach(&s);
    send(&c, 0, b"two\n");
    read_until(&c, b"got-two");
    assert_eq!(s.wait_exit()["exit_code"], 0);
}

#[test]
fn terminal_and_resize() {
    let mut b = Bundle::new(&["sh", "-c", "read x; stty size; exit 7"]);
    b.edit(|c| c["process"]["terminal"] = json!(true));
    let s = shim(&b, &["--terminal", "--stdin"]).unwrap();
    s.start();
    let a = attach(&s);
    let mut rc = vec![];
    rc.extend_from_slice(&33u16.to_le_bytes());
    rc.extend_from_slice(&111u16.to_le_bytes());
    send(&a, 4, &rc);
    send(&a, 0, b"go\n");
    read_until(&a, b"33 111");
    assert_eq!(s.wait_exit()["exit_code"], 7);
    let out = stream_bytes(&s.log(), "stdout");
    // The terminal ends its lines with "\r\n"; the log's lines end as any other's.
    assert!(
        String::from_utf8_lossy(&out).contains("33 111\n") && !out.contains(&b'\r'),
        "the log has the terminal's output, without carriage returns: {:?}",
        String::from_utf8_lossy(&out)
    );
}

/// A terminal that no process holds open for a while (the init closed its stdio, as a getty
/// between sessions) has not ended: what a process writes after opening it again reaches the
/// log, and is not blocked once the terminal's buffer fills.
#[test]
fn a_terminal_opened_again_after_a_hangup_is_still_read() {
    let mut b = Bundle::new(&[
        "sh",
        "-c",
        "exec >&- 2>&- <&-; sleep 1; seq 3000 > /dev/pts/0; exit 5",
    ]);
    b.edit(|c| c["process"]["terminal"] = json!(true));
    let s = shim(&b, &["--terminal"]).unwrap();
    s.start();
    assert_eq!(s.wait_exit()["exit_code"], 5);
    let out = stream_bytes(&s.log(), "stdout");
    let want: String = (1..=3000).map(|i| format!("{i}\n")).collect();
    assert!(
        out == want.as_bytes(),
        "the log holds {} bytes of the {} written after the hangup",
        out.len(),
        want.len()
    );
}

#[test]
fn exec_sync_output_exit_code_and_timeout_kills_the_tree() {
    let b = Bundle::new(&["sleep", "1000"]);
    let s = shim(&b, &[]).unwrap();
    s.start();
    let (h, out, err) = s.exec_sync(&["sh", "-c", "echo out; echo err >&2; exit 5"], 10_000);
    assert_eq!(h["exit_code"], 5, "{h}");
    assert_eq!(h["timed_out"], false);
    assert_eq!(out, b"out\n");
    assert_eq!(err, b"err\n");
    // A tree of processes past the timeout: every one of them is killed.
    let marker = "31337";
    let (h, _, _) = s.exec_sync(
        &[
            "sh",
            "-c",
            &format!("sleep {marker}1 & sleep {marker}2 & sleep {marker}3"),
        ],
        300,
    );
    assert_eq!(h["timed_out"], true, "{h}");
    // Killed: gone once the kernel has delivered the SIGKILLs (10 s at most).
    wait_until(Duration::from_secs(10), || {
        processes_with(marker).is_empty()
    });
    let left = processes_with(marker);
    assert!(
        left.is_empty(),
        "processes of the timed-out exec left: {left:?}"
    );
    // An orphan (its parent gone, it belongs to the container's init now): killed too, as
    // a member of the exec's process group.
    let (h, _, _) = s.exec_sync(
        &["sh", "-c", &format!("(sleep {marker}4 &); sleep {marker}5")],
        300,
    );
    assert_eq!(h["timed_out"], true, "{h}");
    wait_until(Duration::from_secs(10), || {
        processes_with(marker).is_empty()
    });
    let left = processes_with(marker);
    assert!(
        left.is_empty(),
        "the timed-out exec's orphan left: {left:?}"
    );
    // A child in a session (and process group) of its own, its parent the exec's process
    // itself: killing that parent first handed the child to the container's init before the
    // scan for descendants could find it.
    let (h, _, _) = s.exec_sync(
        &[
            "sh",
            "-c",
            &format!("setsid sleep {marker}6 & exec sleep {marker}7"),
        ],
        300,
    );
    assert_eq!(h["timed_out"], true, "{h}");
    wait_until(Duration::from_secs(10), || {
        processes_with(marker).is_empty()
    });
    let left = processes_with(marker);
    assert!(
        left.is_empty(),
        "the timed-out exec's child in a session of its own left: {left:?}"
    );
    // Output is capped at the CRI limit of 16 MiB.
    let (h, out, _) = s.exec_sync(&["head", "-c", "20000000", "/dev/zero"], 60_000);
    assert_eq!(h["truncated"], true, "{h}");
    assert_eq!(out.len(), 16 * 1024 * 1024);
    // The container is untouched by all of this.
    assert!(alive(s.pid));
    // A malformed request is refused.
    let v = s.control(&json!({"op": "exec_sync", "args": "not a list"}));
    assert!(
        v["error"].as_str().unwrap().contains("bad control request"),
        "{v}"
    );
    assert!(alive(s.pid));
}

/// An exec_sync requester that reads its answer slowly does not hold the shim: another
/// request is answered while most of that answer is still unread. Before, the shim wrote
/// the answer blocking, and its whole loop (the container's output, exits, every other
/// request) waited for as long as the reader kept taking a little at a time.
#[test]
fn a_slow_exec_sync_reader_does_not_hold_the_shim() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let b = Bundle::new(&["sleep", "1000"]);
    let s = shim(&b, &[]).unwrap();
    s.start();
    const SIZE: usize = 8 << 20;
    let mut conn = UnixStream::connect(s.dir().join("control")).unwrap();
    let req = json!({"op": "exec_sync", "args": ["head", "-c", SIZE.to_string(), "/dev/zero"],
                     "timeout_ms": 0});
    conn.write_all(format!("{req}\n").as_bytes()).unwrap();
    let read = Arc::new(AtomicUsize::new(0));
    let r = read.clone();
    let reader = std::thread::spawn(move || {
        // 64 KiB every 100 ms: 8 MiB takes about 13 s.
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => r.fetch_add(n, Ordering::SeqCst),
            };
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    // Wait until the answer has begun to flow, then ask something else.
    while read.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let v = s.control(&json!({"op": "status"}));
    let when = read.load(Ordering::SeqCst);
    assert_eq!(v["ok"], true, "{v}");
    assert!(
        when < SIZE / 2,
        "status was answered only after {when} of {SIZE} bytes were read"
    );
    reader.join().unwrap();
    assert!(
        read.load(Ordering::SeqCst) > SIZE,
        "the whole answer arrived: {}",
        read.load(Ordering::SeqCst)
    );
}

/// Out of descriptors, a connection waiting to be accepted is closed (its client reads EOF)
/// instead of being left in the backlog, where it kept the listener readable and the shim's
/// loop spinning; once descriptors are free again, requests are served.
#[test]
fn out_of_descriptors_a_connection_is_shed_not_spun_on() {
    let b = Bundle::new(&["sleep", "1000"]);
    let s = shim(&b, &[]).unwrap();
    s.start();
    let open = std::fs::read_dir(format!("/proc/{}/fd", shim_pid(&s)))
        .unwrap()
        .count();
    let limit = open + 4;
    assert!(Command::new("prlimit")
        .arg(format!("--pid={}", shim_pid(&s)))
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .unwrap()
        .success());
    // Connections that send nothing: the shim holds each, until it has no descriptor left,
    // and sheds the rest. Told apart without timing: a held one is closed after the shim's
    // 5 s with a line saying so, a shed one reads EOF with nothing.
    let conns: Vec<UnixStream> = (0..12)
        .map(|_| UnixStream::connect(s.dir().join("control")).unwrap())
        .collect();
    let mut held = 0;
    let mut shed = 0;
    for mut c in conns {
        // A hang guard, not a timing.
        c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut all = Vec::new();
        c.read_to_end(&mut all).unwrap();
        match all.is_empty() {
            true => shed += 1,
            false => held += 1,
        }
    }
    assert!(shed > 0, "no connection was shed with {held} held");
    // Served again once the shim has seen the hang-ups (10 s at most).
    let mut v = None;
    for _ in 0..100 {
        v = s.try_control(&json!({"op": "status"}));
        if v.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let v = v.expect("the shim sheds connections after the held ones are gone");
    assert_eq!(v["ok"], true, "{v}");
}

/// A control connection that never finishes its request is closed (its place and buffer
/// given back), and exec sessions are capped: one past the cap is refused with an error
/// that names it, the container and the shim untouched; the cap frees as they end.
#[test]
fn silent_connections_are_closed_and_exec_sessions_capped() {
    let b = Bundle::new(&["sleep", "1000"]);
    let s = shim(&b, &[]).unwrap();
    s.start();
    let mut c = UnixStream::connect(s.dir().join("control")).unwrap();
    c.write_all(b"{\"op\": ").unwrap();
    // A hang guard, not a timing: the shim's own limit is 5 s.
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let v = line_from(&mut c);
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("no request within")),
        "{v}"
    );
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "the connection was not closed");
    // 64 exec_syncs without a timeout, their requesters waiting.
    let marker = "64646";
    let mut held = Vec::new();
    for _ in 0..64 {
        let mut c = UnixStream::connect(s.dir().join("control")).unwrap();
        let req =
            json!({"op": "exec_sync", "args": ["sleep", format!("{marker}")], "timeout_ms": 0});
        c.write_all(format!("{req}\n").as_bytes()).unwrap();
        held.push(c);
    }
    // (A debug shim forks 64 execs into the container: seconds, more on a loaded machine.)
    wait_until(Duration::from_secs(120), || {
        processes_with(marker).len() == 64
    });
    assert_eq!(processes_with(marker).len(), 64);
    let (h, _, _) = s.exec_sync(&["true"], 10_000);
    assert!(
        h["error"]
            .as_str()
            .is_some_and(|e| e.contains("64 exec_sync sessions")),
        "{h}"
    );
    assert!(alive(s.pid));
    // Their requesters gone, they end, and execs run again.
    drop(held);
    wait_until(Duration::from_secs(120), || {
        processes_with(marker).is_empty()
    });
    let mut last = Value::Null;
    wait_until(Duration::from_secs(60), || {
        last = s.exec_sync(&["true"], 10_000).0;
        last["exit_code"] == 0
    });
    assert_eq!(last["exit_code"], 0, "{last}");
    // Interactive execs that outlive their clients (a process that ignores the end of its
    // stdin: `kubectl exec … tail -f` interrupted) count on their own: the probes'
    // exec_syncs still run, and one interactive exec past the cap is refused.
    let marker = "64647";
    let exec = |args: &[&str]| {
        let (in_r, in_w) = nix::unistd::pipe().unwrap();
        let (out_r, out_w) = nix::unistd::pipe().unwrap();
        let (err_r, err_w) = nix::unistd::pipe().unwrap();
        let mut c = UnixStream::connect(s.dir().join("control")).unwrap();
        let req = json!({"op": "exec", "args": args});
        let fds = [in_r.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()];
        rsrun::sys::send_with_fds(c.as_raw_fd(), format!("{req}\n").as_bytes(), &fds).unwrap();
        let first = line_from(&mut c);
        // The client is gone: its ends of the stdio close; the session stays (the CRI
        // server waits on it for the exit code).
        drop((in_r, in_w, out_r, out_w, err_r, err_w));
        (first, c)
    };
    let mut sessions = Vec::new();
    for _ in 0..64 {
        let (first, c) = exec(&["sleep", marker]);
        assert_eq!(first["ok"], true, "{first}");
        sessions.push(c);
    }
    let (h, _, _) = s.exec_sync(&["true"], 10_000);
    assert_eq!(
        h["exit_code"], 0,
        "an exec_sync beside 64 interactive execs: {h}"
    );
    let (first, _c) = exec(&["true"]);
    assert!(
        first["error"]
            .as_str()
            .is_some_and(|e| e.contains("64 interactive exec sessions")),
        "{first}"
    );
    assert!(alive(s.pid));
}

/// An exec_sync still running when the container exits ends with it and is answered with
/// its exit status (137: killed), not an error. In the node's PID namespace, where the
/// init's end does not take the exec's process with it, the shim kills it.
#[test]
fn an_exec_running_when_the_container_exits_gets_its_status() {
    let mut b = Bundle::new(&["sleep", "1000"]);
    b.edit(|c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|n| n["type"] != "pid")
    });
    let s = shim(&b, &[]).unwrap();
    s.start();
    let marker = "73737";
    let mut c = UnixStream::connect(s.dir().join("control")).unwrap();
    let req = json!({"op": "exec_sync", "args": ["sh", "-c", format!("echo before; exec sleep {marker}")], "timeout_ms": 0});
    c.write_all(format!("{req}\n").as_bytes()).unwrap();
    for _ in 0..500 {
        if !processes_with(marker).is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!processes_with(marker).is_empty(), "the exec never ran");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(s.pid), nix::sys::signal::SIGKILL).unwrap();
    let mut all = Vec::new();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    c.read_to_end(&mut all).unwrap();
    let nl = all.iter().position(|b| *b == b'\n').unwrap_or(all.len());
    let h: Value = serde_json::from_slice(&all[..nl]).unwrap();
    assert_eq!(h["exit_code"], 137, "{h}");
    assert_eq!(&all[nl + 1..], b"before\n", "{h}");
    assert!(processes_with(marker).is_empty());
    assert_eq!(s.wait_exit()["exit_code"], 137);
}

fn shim_pid(s: &Shimmed) -> i32 {
    std::fs::read_to_string(s.dir().join("shim.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The PIDs of live processes with an argument that starts with `marker`: a word of digits
/// (`sleep 313371`), or a marker of `unique` (not found inside a path such as a bundle's,
/// `/tmp/…-PID-N`, whatever the test's PID).
fn processes_with(marker: &str) -> Vec<i32> {
    let numeric = marker.bytes().all(|b| b.is_ascii_digit());
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| {
                c.split(|b| *b == 0).any(|a| match numeric {
                    true => a.starts_with(marker.as_bytes()) && a.iter().all(u8::is_ascii_digit),
                    false => a.starts_with(marker.as_bytes()),
                })
            }) && alive(*p)
        })
        .collect()
}

#[test]
fn exec_sync_whose_requester_goes_away_is_ended() {
    let b = Bundle::new(&["sleep", "1000"]);
    let s = shim(&b, &[]).unwrap();
    s.start();
    // No timeout: only the requester's departure can end it (a cancelled ExecSync).
    let marker = "42424";
    let mut c = UnixStream::connect(s.dir().join("control")).unwrap();
    let req = json!({"op": "exec_sync", "args": ["sh", "-c", format!("sleep {marker}1 & sleep {marker}2")], "timeout_ms": 0});
    c.write_all(format!("{req}\n").as_bytes()).unwrap();
    let running = || processes_with(marker).len() == 2;
    for _ in 0..500 {
        if running() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        running(),
        "the exec never ran: {:?}",
        processes_with(marker)
    );
    // A half-close is no departure: the requester still reads.
    c.shutdown(std::net::Shutdown::Write).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        running(),
        "ended on a half-close: {:?}",
        processes_with(marker)
    );
    drop(c);
    for _ in 0..500 {
        if processes_with(marker).is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        processes_with(marker).is_empty(),
        "the exec outlived its requester: {:?}",
        processes_with(marker)
    );
    // The container and the shim go on.
    assert!(alive(s.pid));
    let (h, out, _) = s.exec_sync(&["echo", "still"], 10_000);
    assert_eq!(
        (h["exit_code"].as_i64(), out.as_slice()),
        (Some(0), &b"still\n"[..]),
        "{h}"
    );
}

#[test]
fn oom_kill_is_recorded() {
    let mut b = Bundle::new(&["sh", "-c", "tail /dev/zero"]);
    b.edit(|c| {
        c["linux"]["resources"] =
            json!({"memory": {"limit": 32 * 1024 * 1024, "swap": 32 * 1024 * 1024}})
    });
    let s = shim(&b, &[]).unwrap();
    s.start();
    let e = s.wait_exit();
    assert_eq!(e["oom_killed"], true, "{e}");
    assert_eq!(e["exit_code"], 137, "{e}");
}

#[test]
fn a_refused_bundle_leaves_nothing() {
    let mut b = Bundle::new(&["true"]);
    b.edit(|c| c["process"]["cwd"] = json!("relative"));
    let tmp = TempDir::new("refused");
    let rt = Rsrun::new();
    let id = unique("bad");
    let dir = tmp.path().join("shim");
    let out = Command::new(shim_bin())
        .args(["--id", &id, "--bundle", b.dir.to_str().unwrap()])
        .arg("--dir")
        .arg(&dir)
        .arg("--log-path")
        .arg(tmp.path().join("log"))
        .arg("--exit-file")
        .arg(tmp.path().join("exit"))
        .arg("--root")
        .arg(rt.root.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("process.cwd") && e.trim_end().lines().count() == 1,
        "{e}"
    );
    assert!(!dir.exists(), "shim directory left");
    assert_eq!(rt.count(), 0);
    assert!(!tmp.path().join("exit").exists());
    // No process of it stays behind (the monitor may still be exiting: 10 s at most).
    let left = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
            .any(|p| {
                std::fs::read(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&id))
                    && alive(p)
            })
    };
    wait_until(Duration::from_secs(10), || !left());
    assert!(!left(), "a process of the refused container is left");
}

#[test]
fn the_monitor_outlives_its_starter() {
    // The starter (here a shell in its own process group) is SIGKILLed with its whole group
    // right after the shim reported: the monitor lives in a session of its own and still
    // records the exit.
    let b = Bundle::new(&["sh", "-c", "read x; exit 42"]);
    let tmp = TempDir::new("starter");
    let rt = Rsrun::new();
    let id = unique("st");
    let dir = tmp.path().join("shim");
    let exit = tmp.path().join("exit.json");
    let script = format!(
        "{} --id {id} --bundle {} --dir {} --log-path {} --exit-file {} --root {} --stdin >/dev/null && kill -9 0",
        shim_bin().display(),
        b.dir.display(),
        dir.display(),
        tmp.path().join("log").display(),
        exit.display(),
        rt.root.path().display()
    );
    use std::os::unix::process::CommandExt;
    let st = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .process_group(0)
        .status()
        .unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(9));
    let s = Shimmed {
        tmp,
        id,
        rt,
        pid: 0,
    };
    s.start();
    let a = attach(&s);
    send(&a, 0, b"\n");
    let e = s.wait_exit();
    assert_eq!(e["exit_code"], 42, "{e}");
    let _ = exit;
}

/// A control request that reaches a shim while it finishes (the container exited, its output
/// still being drained) is answered at once, never left waiting for the shim's end: the
/// sockets' names are gone (the connect fails), or, queued just before, it is told the
/// container exited. (It waited for the shim's end, and then read no answer at all.)
#[test]
fn a_request_while_the_shim_finishes_is_answered_at_once() {
    let mut b = Bundle::new(&["sh", "-c", "echo bye; sleep 4322 & exit 3"]);
    // The node's PID namespace: the sleep outlives the init and holds the output open,
    // which the shim then drains for a grace of 1 s before it records the exit.
    b.edit(|c| {
        let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
        ns.retain(|n| n["type"] != "pid");
    });
    let s = shim(&b, &[]).unwrap();
    s.start();
    assert!(wait_until(Duration::from_secs(10), || !alive(s.pid)));
    // (Past the shim's reaping of the init, well within the grace.)
    std::thread::sleep(Duration::from_millis(100));
    match UnixStream::connect(s.dir().join("control")) {
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ),
            "{e}"
        ),
        Ok(mut c) => {
            let req = json!({"op": "exec_sync", "args": ["true"], "timeout_ms": 0});
            c.write_all(format!("{req}\n").as_bytes()).unwrap();
            let v = line_from(&mut c);
            assert!(
                v["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("has exited")),
                "a request to a finishing shim: {v}"
            );
        }
    }
    assert_eq!(s.wait_exit()["exit_code"], 3);
}
