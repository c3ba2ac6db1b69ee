#!/usr/bin/env python3
"""Podman drop-in suite: drives Debian's Podman with `--runtime PATH` for each runtime given (runc as
the reference, then rsrun) through the same checks, and prints one `ok`/`FAIL` line per check and
runtime, then a table. Exit status 1 when a check that passes with the reference (the first runtime)
fails with another one; 2 on a setup error.

Usage: suite.py [--runtime NAME=PATH]... [--work DIR] [--only CHECK]... [--debug] [--trace] [--json]
                [--keep]
  --runtime  default: runc=/usr/sbin/runc rsrun=$RSRUN_TOP/target/debug/rsrun (first one = reference)
  --work     work dir (default /var/tmp/rsrun-podman): podman's --root/--runroot/--tmpdir, logs/, the
             runtimes' state dirs, the image archive. Wiped at start, kept at the end for reading.
  --only     run only these checks (names as printed; prefix match)
  --debug    podman --log-level debug (into the per-check logs)
  --trace    put a wrapper named like the runtime in front of it that logs every call (time, pid,
             argv) to logs/NAME/runtime-calls.log and runs it with `--debug --log logs/NAME/runtime-debug.log`
  --json     a containers.conf that adds the runtimes' names to runtime_supports_json: Podman then
             passes `--log-format=json --log USERDATA/oci-log` to them (stock: only crun, runc, kata,
             runsc, youki, krun get it) and reads errors from that file instead of stderr
  --keep     leave containers and the image in place at the end (default: remove everything)
  --min-passed N  every runtime, the reference included, must pass at least N checks (the CI
             stage sets it to the number of checks: comparing with the reference alone passes
             when Podman is broken for both runtimes)

Isolation: the suite re-executes itself in a private mount namespace (unshare --mount, slave
propagation) where /run/<runtime basename> (the runtimes' default --root, which Podman does not
override) is a bind mount of WORK/state/NAME: Podman, conmon and conmon's exit command all inherit it,
so nothing here sees or touches the host's /run/runc or /run/rsrun, and other suites running at the
same time (runtime-tools deletes every container it finds in /run/rsrun) cannot touch ours. Podman's
`--runtime-flag root=...` is not usable for this: Podman 4.3 does not pass it on to the exit command
(`podman container cleanup`), whose `delete --force` then goes to the default root.
"""
import argparse, errno, fcntl, json, os, pty, re, select, shlex, shutil, signal, struct, subprocess
import sys, termios, time, traceback

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.environ.get("RSRUN_TOP") or os.path.dirname(os.path.dirname(HERE))
IMAGE = "localhost/rsrun-busybox:latest"
RUN_OPTS = ["--pull", "never", "--network", "none",
            "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768"]
CMD_TIMEOUT = 60
NS_ENV = "RSRUN_PODMAN_IN_NS"


def log(msg):
    print(msg, flush=True)


class Fail(Exception):
    pass


def need(cond, msg):
    if not cond:
        raise Fail(msg)


class Podman:
    """One runtime's view: podman with the suite's global flags and --runtime PATH."""

    def __init__(self, work, name, path, debug):
        self.work, self.name, self.path = work, name, path
        self.base = ["podman", "--root", f"{work}/root", "--runroot", f"{work}/runroot",
                     "--tmpdir", f"{work}/tmp", "--cgroup-manager", "cgroupfs",
                     "--events-backend", "file", "--storage-driver", "overlay", "--runtime", path]
        if debug:
            self.base += ["--log-level", "debug"]
        self.logdir = f"{work}/logs/{name}"
        os.makedirs(self.logdir, exist_ok=True)
        self.logf = None
        self.created = []      # container names, for cleanup
        self.pids = {}         # pid -> expected comm (container init / conmon), for cleanup

    def open_log(self, check):
        if self.logf:
            self.logf.close()
        self.logf = open(f"{self.logdir}/{re.sub(r'[^A-Za-z0-9_.-]+', '_', check)}.log", "a")

    def note(self, text):
        if self.logf:
            self.logf.write(text + "\n")
            self.logf.flush()

    def __call__(self, *args, timeout=CMD_TIMEOUT, check=False, input=None):
        argv = self.base + list(args)
        t0 = time.monotonic()
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input,
                               stdin=None if input is not None else subprocess.DEVNULL)
            rc, out, err = p.returncode, p.stdout, p.stderr
        except subprocess.TimeoutExpired as e:
            rc, out, err = None, (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or ""), \
                (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        dt = time.monotonic() - t0
        self.note(f"$ podman {shlex.join(args)}\n# rc={rc} in {dt:.2f}s\n"
                  + (f"# stdout:\n{out}" if out else "") + (f"# stderr:\n{err}" if err else ""))
        if rc is None:
            raise Fail(f"`podman {shlex.join(args[:3])} ...` timed out after {timeout}s")
        if check and rc != 0:
            raise Fail(f"`podman {shlex.join(args)}` exited {rc}: {last_line(err)}")
        return rc, out, err

    def run_d(self, cname, *cmd, opts=()):
        self.created.append(cname)
        rc, out, err = self("run", "-d", "--name", cname, *RUN_OPTS, *opts, IMAGE, *cmd)
        need(rc == 0, f"run -d {cname} exited {rc}: {last_line(err)}")
        self.track(cname)
        return out.strip()

    def inspect(self, cname):
        rc, out, err = self("inspect", "--type", "container", cname)
        need(rc == 0, f"inspect {cname} exited {rc}: {last_line(err)}")
        return json.loads(out)[0]

    def track(self, cname):
        """Remember the container's init PID and conmon PID so cleanup can end them by PID."""
        try:
            st = self.inspect(cname)
        except Exception:
            return
        pid = st.get("State", {}).get("Pid") or 0
        if pid > 0:
            self.pids[pid] = comm(pid)
        cp = st.get("State", {}).get("ConmonPid") or 0
        if cp > 0:
            self.pids[cp] = "conmon"

    def wait_logs(self, cname, needles, timeout=CMD_TIMEOUT):
        deadline = time.monotonic() + timeout
        while True:
            rc, out, err = self("logs", cname)
            text = out + err
            if all(n in text for n in needles):
                return text
            if time.monotonic() > deadline:
                raise Fail(f"logs of {cname} never showed {needles!r}: got {text[-200:]!r}")
            time.sleep(0.2)

    def wait_state(self, cname, status, timeout=CMD_TIMEOUT):
        deadline = time.monotonic() + timeout
        while True:
            st = self.inspect(cname)["State"]
            if st["Status"] == status:
                return st
            if time.monotonic() > deadline:
                raise Fail(f"{cname} never reached {status!r}: State={short_state(st)}")
            time.sleep(0.2)

    def rm(self, *names):
        if names:
            self("rm", "-f", "-t", "0", *names)


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def last_line(s):
    lines = [l for l in (s or "").strip().splitlines() if l.strip()]
    return lines[-1][:300] if lines else ""


def short_state(st):
    return {k: st.get(k) for k in ("Status", "Running", "Pid", "ExitCode", "OOMKilled", "Error")}


# ---------------------------------------------------------------- the checks
# Each takes (pm, name prefix) and raises Fail with a reason; returning means ok. A returned string
# is printed after `ok` as a detail.

def check_run(pm, p):
    rc, out, err = pm("run", "--rm", *RUN_OPTS, IMAGE, "sh", "-c",
                      "echo out-$((40+2)); echo err-line >&2; exit 3")
    need(out == "out-42\n", f"stdout {out!r}, want 'out-42\\n' (rc={rc}, stderr {last_line(err)!r})")
    need("err-line" in err, f"stderr {err!r} lacks 'err-line'")
    need(rc == 3, f"exit code {rc}, want 3")


def check_run_errors(pm, p):
    """Podman maps the runtime's create error text to 127 (command not found) and 126 (not
    executable), as it does for runc's messages."""
    rc, out, err = pm("run", "--rm", *RUN_OPTS, IMAGE, "/no/such/cmd")
    need(rc == 127, f"missing command: rc={rc} (want 127) {last_line(err)!r}")
    rc, out, err = pm("run", "--rm", *RUN_OPTS, IMAGE, "/etc/passwd")
    need(rc == 126, f"non-executable command: rc={rc} (want 126) {last_line(err)!r}")
    rc, out, err = pm("run", "--rm", *RUN_OPTS, IMAGE, "true")
    need(rc == 0, f"the container after them: rc={rc} {last_line(err)!r}")


def check_init_start_rm(pm, p):
    """create + init (runtime create only) + start -a + init again + rm: a container that sits in
    the runtime's `created` state, is started attached, then re-initialised and removed unstarted."""
    c = f"{p}-init"
    pm.created.append(c)
    rc, out, err = pm("create", "--name", c, *RUN_OPTS, IMAGE, "sh", "-c", "echo started; exit 6")
    need(rc == 0, f"create exited {rc}: {last_line(err)}")
    rc, out, err = pm("init", c)
    need(rc == 0, f"init exited {rc}: {last_line(err)}")
    st = pm.inspect(c)["State"]
    need(st["Status"] == "initialized", f"after init: {short_state(st)}")
    rc, out, err = pm("start", "-a", c)
    need(rc == 6 and out.strip() == "started", f"start -a: rc={rc} (want 6) {out!r} {last_line(err)!r}")
    rc, out, err = pm("init", c)
    need(rc == 0, f"second init exited {rc}: {last_line(err)}")
    cid = pm.inspect(c)["Id"]
    state = f"/run/{os.path.basename(pm.path)}/{cid}"
    need(os.path.exists(state), f"no runtime state {state} for the initialized container")
    rc, out, err = pm("rm", c)
    need(rc == 0, f"rm of an initialized container exited {rc}: {last_line(err)}")
    rc, _, _ = pm("container", "exists", c)
    need(rc == 1, f"container exists after rm: rc={rc}")
    need(not os.path.exists(state), f"runtime state {state} left behind after rm")


def check_run_d_logs(pm, p):
    c = f"{p}-logs"
    cid = pm.run_d(c, "sh", "-c", "echo line-one; echo line-two >&2; exec sleep 1000")
    need(re.fullmatch(r"[0-9a-f]{64}", cid), f"run -d printed {cid!r}, not an ID")
    pm.wait_logs(c, ["line-one", "line-two"])
    st = pm.inspect(c)["State"]
    need(st["Status"] == "running", f"after logs: {short_state(st)}")
    pm.rm(c)


def svc(pm, p):
    """The long-running container the exec checks share."""
    c = f"{p}-svc"
    if c not in pm.created:
        pm.run_d(c, "sleep", "1000")
        pm.wait_state(c, "running")
    return c


def check_exec(pm, p):
    c = svc(pm, p)
    rc, out, err = pm("exec", c, "sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '; echo; exit 7")
    need(rc == 7 and out.strip() == "sleep 1000",
         f"exec: rc={rc} stdout={out!r} stderr={last_line(err)!r} (want rc 7, 'sleep 1000' as PID 1)")
    st = pm.inspect(c)["State"]
    need(st["Status"] == "running", f"container after exec: {short_state(st)}")


def check_exec_opts(pm, p):
    c = svc(pm, p)
    rc, out, err = pm("exec", "-e", "FOO=bar baz", "-u", "65534:65534", "-w", "/tmp", c, "sh", "-c",
                      'echo "$FOO|$(id -u):$(id -g)|$(pwd)"')
    want = "bar baz|65534:65534|/tmp"
    need(rc == 0 and out.strip() == want,
         f"exec -e -u -w: rc={rc} stdout={out!r} stderr={last_line(err)!r} (want {want!r})")


def check_exec_it(pm, p):
    c = svc(pm, p)
    t = Tty(pm, ["exec", "-it", c, "sh"])
    try:
        t.expect(r"[#$] ", "a shell prompt")
        t.send("tty\n")
        m = t.expect(r"(/dev/pts/\d+)\r?\n", "tty's /dev/pts/N")
        t.send("echo exec-$((6*7))-tty\n")
        t.expect(r"exec-42-tty", "the typed command's output")
        t.send("exit 4\n")
        rc = t.wait()
        need(rc == 4, f"exec -it exit code {rc}, want 4")
        return m.group(1)
    finally:
        t.close()


def check_stop_term(pm, p):
    c = f"{p}-stopterm"
    pm.run_d(c, "sh", "-c", 'trap "echo got-TERM; exit 42" TERM; echo ready; '
                            'while :; do sleep 0.2; done')
    pm.wait_logs(c, ["ready"])
    t0 = time.monotonic()
    rc, out, err = pm("stop", "-t", "20", c)
    dt = time.monotonic() - t0
    need(rc == 0, f"stop exited {rc}: {last_line(err)}")
    st = pm.inspect(c)["State"]
    need(st["Status"] == "exited" and st["ExitCode"] == 42,
         f"after stop: {short_state(st)} (want exited, 42 from the TERM trap)")
    # (No bound on dt: exit code 42 is the trap's; a SIGKILL after the 20 s would be 137.)
    pm.wait_logs(c, ["got-TERM"])
    pm.rm(c)
    return f"{dt:.1f}s"


def check_stop_kill(pm, p):
    c = f"{p}-stopkill"
    pm.run_d(c, "sh", "-c", 'trap "" TERM; echo ready; while :; do sleep 0.2; done')
    pm.wait_logs(c, ["ready"])
    t0 = time.monotonic()
    rc, out, err = pm("stop", "-t", "2", c)
    dt = time.monotonic() - t0
    need(rc == 0, f"stop exited {rc}: {last_line(err)}")
    st = pm.inspect(c)["State"]
    need(st["Status"] == "exited" and st["ExitCode"] == 137,
         f"after stop: {short_state(st)} (want exited, 137 from SIGKILL)")
    # At least the grace (137 says SIGKILL came; no upper bound on a loaded machine).
    need(dt >= 2, f"stop -t 2 took {dt:.1f}s (want the 2 s grace, then SIGKILL)")
    pm.rm(c)
    return f"{dt:.1f}s"


def check_rm(pm, p):
    c = f"{p}-rm"
    pm.run_d(c, "sh", "-c", "exit 0")
    st = pm.wait_state(c, "exited")
    cid = pm.inspect(c)["Id"]
    rc, out, err = pm("rm", c)
    need(rc == 0, f"rm of an exited container exited {rc}: {last_line(err)}")
    rc, _, _ = pm("container", "exists", c)
    need(rc == 1, f"container exists after rm: rc={rc}")
    need(not os.path.exists(f"/run/{os.path.basename(pm.path)}/{cid}"),
         f"runtime state /run/{os.path.basename(pm.path)}/{cid} left behind after rm")


def check_rm_force(pm, p):
    c = f"{p}-rmf"
    pm.run_d(c, "sleep", "1000")
    st = pm.wait_state(c, "running")
    pid, cid = st["Pid"], pm.inspect(c)["Id"]
    rc, out, err = pm("rm", "-f", "-t", "0", c)
    need(rc == 0, f"rm -f of a running container exited {rc}: {last_line(err)}")
    rc, _, _ = pm("container", "exists", c)
    need(rc == 1, f"container exists after rm -f: rc={rc}")
    deadline = time.monotonic() + CMD_TIMEOUT
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    need(not alive(pid), f"container process {pid} still alive after rm -f")
    need(not os.path.exists(f"/run/{os.path.basename(pm.path)}/{cid}"),
         f"runtime state /run/{os.path.basename(pm.path)}/{cid} left behind after rm -f")


# The container's own view of its limit (runc and crun bind its cgroup at /sys/fs/cgroup/memory on
# v1), then the allocation in a child shell (the one holding the string is the one the OOM killer
# picks), then the cgroup's oom_kill counter, and the child's status as the container's exit code.
MEM_SH = ('echo limit=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || '
          'cat /sys/fs/cgroup/memory.max); '
          'sh -c \'x=$(head -c %s /dev/zero | tr "\\0" a); echo held=${#x}\'; rc=$?; '
          'grep -h "^oom_kill " /sys/fs/cgroup/memory/memory.oom_control /sys/fs/cgroup/memory.events '
          '2>/dev/null; exit $rc')


def check_memory(pm, p):
    rc, out, err = pm("run", "--rm", "--memory", "48m", "--memory-swap", "48m", *RUN_OPTS, IMAGE,
                      "sh", "-c", MEM_SH % "8m")
    need(rc == 0 and "held=8388608" in out,
         f"8 MiB under a 48 MiB limit: rc={rc} stdout={out!r} stderr={last_line(err)!r}")
    need("limit=50331648" in out, f"memory limit inside the container: {out.splitlines()[:1]!r}, "
                                   "want limit=50331648")
    c = f"{p}-oom"
    pm.created.append(c)
    rc, out, err = pm("run", "--name", c, "--memory", "48m", "--memory-swap", "48m", *RUN_OPTS,
                      IMAGE, "sh", "-c", MEM_SH % "256m")
    st = pm.inspect(c)["State"]
    need(rc == 137 and "held=" not in out,
         f"256 MiB under a 48 MiB limit: rc={rc} (want 137) stdout={out!r} "
         f"stderr={last_line(err)!r} State={short_state(st)}")
    m = re.search(r"^oom_kill (\d+)$", out, re.M)
    need(m, f"no oom_kill line from the container's memory cgroup: stdout={out!r}")
    need(int(m.group(1)) >= 1, f"killed but the cgroup's oom_kill counter is {m.group(1)}")
    pm.rm(c)
    return f"oom_kill={m.group(1)} OOMKilled={st.get('OOMKilled')}"


def check_cap_drop(pm, p):
    sh = "grep CapEff /proc/self/status; chown 65534 /tmp && echo chown-ok"
    rc, out, err = pm("run", "--rm", *RUN_OPTS, IMAGE, "sh", "-c", sh)
    need(rc == 0 and "chown-ok" in out, f"control (no --cap-drop): rc={rc} {out!r} {last_line(err)!r}")
    rc, out2, err2 = pm("run", "--rm", "--cap-drop", "CAP_CHOWN", *RUN_OPTS, IMAGE, "sh", "-c", sh)
    m = re.search(r"CapEff:\s*([0-9a-f]+)", out2)
    need(m, f"no CapEff in {out2!r} (rc={rc}, {last_line(err2)!r})")
    need(not int(m.group(1), 16) & 1, f"CAP_CHOWN still in CapEff {m.group(1)}")
    need(rc != 0 and "chown-ok" not in out2 and "not permitted" in err2,
         f"chown with CAP_CHOWN dropped: rc={rc} {out2!r} {last_line(err2)!r}")
    return f"CapEff {m.group(1)}"


def check_read_only(pm, p):
    sh = ("touch /rootfile; echo root-rc=$?; touch /tmp/x && echo tmp-ok; "
          "grep -E ' / ' /proc/mounts | head -n1")
    rc, out, err = pm("run", "--rm", *RUN_OPTS, IMAGE, "sh", "-c", sh)
    need(rc == 0 and "root-rc=0" in out, f"control (no --read-only): rc={rc} {out!r} {last_line(err)!r}")
    rc, out, err = pm("run", "--rm", "--read-only", *RUN_OPTS, IMAGE, "sh", "-c", sh)
    need(rc == 0 or "root-rc=" in out, f"--read-only: the container did not run: rc={rc} {last_line(err)!r}")
    need(rc == 0 and "root-rc=1" in out and "Read-only file system" in err,
         f"--read-only: write to / did not fail: rc={rc} {out!r} {last_line(err)!r}")
    need("tmp-ok" in out, f"--read-only: /tmp (Podman's tmpfs) not writable: {out!r} {last_line(err)!r}")


def check_tmpfs_copyup(pm, p):
    """podman --tmpfs adds the tmpcopyup mount option (a runc extension that --read-only's /tmp,
    /var/tmp and /run get too): the tmpfs starts with the image's content of that directory."""
    rc, out, err = pm("run", "--rm", "--tmpfs", "/etc", *RUN_OPTS, IMAGE, "sh", "-c",
                      "grep -c root: /etc/passwd; grep ' /etc ' /proc/mounts")
    need(rc == 0 and out.startswith("1\n") and "tmpfs /etc tmpfs" in out,
         f"--tmpfs /etc: rc={rc} {out!r} {last_line(err)!r} (want the image's /etc/passwd on a tmpfs)")


def check_run_it(pm, p):
    t = Tty(pm, ["run", "-it", "--rm", *RUN_OPTS, IMAGE, "sh"])
    try:
        t.expect(r"[#$] ", "a shell prompt")
        t.send("tty\n")
        m = t.expect(r"(/dev/pts/\d+)\r?\n", "tty's /dev/pts/N")
        t.send("echo typed-$((6*7))-back\n")
        t.expect(r"typed-42-back", "the typed command's output")
        t.send("stty size\n")
        sz = t.expect(r"(\d+) (\d+)\r?\n", "stty size")
        t.send("exit 5\n")
        rc = t.wait()
        need(rc == 5, f"run -it exit code {rc}, want 5")
        need(sz.groups() == ("40", "120"), f"window size {sz.groups()} inside, want 40 120")
        return m.group(1)
    finally:
        t.close()


def check_inspect(pm, p):
    c = f"{p}-insp"
    pm.run_d(c, "sh", "-c", "echo hi; exec sleep 1000")
    st = pm.wait_state(c, "running")
    ci = pm.inspect(c)
    pid = st["Pid"]
    need(st["Running"] and pid > 0 and alive(pid), f"running: {short_state(st)}")
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        cmd = f.read().replace(b"\0", b" ").strip()
    need(cmd == b"sleep 1000", f"State.Pid {pid} runs {cmd!r}, not the container's sleep")
    need(ci.get("OCIRuntime") in (pm.path, os.path.basename(pm.path)),
         f"OCIRuntime {ci.get('OCIRuntime')!r}")
    rc, out, err = pm("ps", "--filter", f"name=^{c}$", "--format", "{{.Status}}")
    need(out.startswith("Up"), f"ps status {out!r}")
    rc, out, err = pm("kill", "-s", "KILL", c)
    need(rc == 0, f"kill exited {rc}: {last_line(err)}")
    st = pm.wait_state(c, "exited")
    need(st["ExitCode"] == 137 and not st["Running"] and st["Pid"] == 0, f"after kill: {short_state(st)}")
    pm.rm(c)


def check_restart(pm, p):
    c = f"{p}-restart"
    pm.run_d(c, "sh", "-c", "echo started; exec sleep 1000")
    st1 = pm.wait_state(c, "running")
    pm.wait_logs(c, ["started"])
    rc, out, err = pm("restart", "-t", "1", c)
    need(rc == 0, f"restart exited {rc}: {last_line(err)}")
    st2 = pm.wait_state(c, "running")
    pm.track(c)
    need(st2["Pid"] != st1["Pid"] and alive(st2["Pid"]) and not alive(st1["Pid"]),
         f"PIDs before/after restart {st1['Pid']}/{st2['Pid']}")
    need(st2["StartedAt"] != st1["StartedAt"], "StartedAt unchanged")
    text = pm.wait_logs(c, ["started"])
    need(text.count("started") == 2, f"logs after restart {text!r}, want 'started' twice")
    pm.rm(c)


def check_restart_exited(pm, p):
    c = f"{p}-rexit"
    pm.run_d(c, "sh", "-c", "echo pass; exit 3")
    st = pm.wait_state(c, "exited")
    need(st["ExitCode"] == 3, f"first run: {short_state(st)}")
    rc, out, err = pm("start", c)
    need(rc == 0, f"start of an exited container exited {rc}: {last_line(err)}")
    deadline = time.monotonic() + CMD_TIMEOUT
    while True:
        rc, out, err = pm("logs", c)
        if out.count("pass") == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    need(out.count("pass") == 2, f"logs {out!r}, want 'pass' twice")
    st = pm.wait_state(c, "exited")
    need(st["ExitCode"] == 3, f"second run: {short_state(st)}")
    pm.rm(c)


def check_pause(pm, p):
    c = f"{p}-pause"
    # A counter the container bumps every 50 ms (written then renamed, so a read never sees a
    # half-written file), read from the host through /proc/PID/root: reading needs nothing of the
    # container, so it works while it is frozen.
    pm.run_d(c, "sh", "-c", "i=0; while :; do i=$((i+1)); echo $i > /tmp/t.new; mv /tmp/t.new /tmp/t; "
                            "sleep 0.05; done")
    st = pm.wait_state(c, "running")
    ticks = f"/proc/{st['Pid']}/root/tmp/t"

    def tick():
        try:
            with open(ticks) as f:
                return int(f.read().strip() or 0)
        except (OSError, ValueError):
            return 0

    def advances(frm, timeout=CMD_TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if tick() > frm:
                return True
            time.sleep(0.05)
        return False

    need(advances(0), f"the container's counter never ticked ({ticks})")
    rc, out, err = pm("pause", c)
    need(rc == 0, f"pause exited {rc}: {last_line(err)}")
    st = pm.inspect(c)["State"]
    need(st["Status"] == "paused", f"after pause: {short_state(st)}")
    frozen = tick()
    time.sleep(1)
    need(tick() == frozen, f"paused, yet the counter moved from {frozen} to {tick()} in 1 s")
    rc, out, err = pm("unpause", c)
    need(rc == 0, f"unpause exited {rc}: {last_line(err)}")
    st = pm.inspect(c)["State"]
    need(st["Status"] == "running", f"after unpause: {short_state(st)}")
    need(advances(frozen), f"unpaused, yet the counter stays at {frozen}")
    pm.rm(c)
    return f"counter held at {frozen} while paused"


CHECKS = [
    ("run", check_run),
    ("run errors (127/126)", check_run_errors),
    ("run -d + logs", check_run_d_logs),
    ("exec", check_exec),
    ("exec -e -u -w", check_exec_opts),
    ("exec -it", check_exec_it),
    ("stop (SIGTERM)", check_stop_term),
    ("stop (timeout, SIGKILL)", check_stop_kill),
    ("rm", check_rm),
    ("rm -f (running)", check_rm_force),
    ("--memory (OOM 137)", check_memory),
    ("--cap-drop CAP_CHOWN", check_cap_drop),
    ("--read-only", check_read_only),
    ("--tmpfs (tmpcopyup)", check_tmpfs_copyup),
    ("run -it (pty)", check_run_it),
    ("inspect + kill", check_inspect),
    ("restart (running)", check_restart),
    ("start (exited)", check_restart_exited),
    ("init, start -a, rm", check_init_start_rm),
    ("pause/unpause", check_pause),
]


class Tty:
    """podman with its stdin/stdout/stderr on a new pty (40x120) that the test reads and types into."""

    def __init__(self, pm, args, timeout=CMD_TIMEOUT):
        self.pm, self.timeout, self.buf = pm, timeout, ""
        argv = pm.base + list(args)
        pm.note(f"$ [pty] podman {shlex.join(args)}")
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            try:
                os.execvp(argv[0], argv)
            finally:
                os._exit(127)
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self.rc = None

    def _read(self, until):
        r, _, _ = select.select([self.fd], [], [], max(0, until - time.monotonic()))
        if not r:
            return False
        try:
            data = os.read(self.fd, 4096)
        except OSError as e:
            if e.errno == errno.EIO:
                return None
            raise
        if not data:
            return None
        self.buf += data.decode(errors="replace")
        return True

    def expect(self, pattern, what):
        until = time.monotonic() + self.timeout
        rx = re.compile(pattern)
        while True:
            m = rx.search(self.buf)
            if m:
                self.pm.note(f"# pty read: {self.buf[:m.end()]!r}")
                self.buf = self.buf[m.end():]
                return m
            got = self._read(until)
            if not got:
                self.pm.note(f"# pty read (no match for {pattern!r}): {self.buf!r}")
                raise Fail(f"no {what} on the tty ({'EOF' if got is None else 'timeout'}); "
                           f"screen: {self.buf[-200:]!r}")

    def send(self, s):
        self.pm.note(f"# pty send: {s!r}")
        os.write(self.fd, s.encode())

    def wait(self):
        until = time.monotonic() + self.timeout
        while time.monotonic() < until:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.rc = os.waitstatus_to_exitcode(status)
                self.pm.note(f"# pty podman exited {self.rc}; rest: {self.buf!r}")
                return self.rc
            self._read(time.monotonic() + 0.1)
        raise Fail("podman did not exit after `exit`")

    def close(self):
        if self.rc is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            self.rc = -9
        try:
            os.close(self.fd)
        except OSError:
            pass


# ---------------------------------------------------------------- setup and cleanup

def ensure_packages():
    need_pkgs = [p for p, b in (("podman", "/usr/bin/podman"), ("conmon", "/usr/bin/conmon"),
                                ("runc", "/usr/sbin/runc"), ("busybox-static", "/bin/busybox"))
                 if not os.path.exists(b)]
    if need_pkgs:
        log(f"installing {' '.join(need_pkgs)} from Debian")
        subprocess.run(["apt-get", "update", "-q"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *need_pkgs],
                       check=True, stdout=subprocess.DEVNULL,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))


def mounts_under(path):
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].encode().decode("unicode_escape")
            if mp == path or mp.startswith(path.rstrip("/") + "/"):
                out.append(mp)
    return sorted(out, key=len, reverse=True)


def wipe(work):
    for mp in mounts_under(work):
        subprocess.run(["umount", "-l", mp], stderr=subprocess.DEVNULL)
    for d in ("root", "runroot", "tmp", "state", "logs", "trace"):
        shutil.rmtree(f"{work}/{d}", ignore_errors=True)


def make_trace_wrapper(work, name, path):
    d = f"{work}/trace/{name}"
    os.makedirs(d, exist_ok=True)
    w = f"{d}/{os.path.basename(path)}"
    logs = f"{work}/logs/{name}"
    with open(w, "w") as f:
        # exec, not a child: the runtime's stdio is the container's, and conmon needs its pid.
        f.write(f"""#!/bin/sh
# suite.py --trace: logs each call of {path}, then runs it with --debug --log
echo "$(date +%T.%N) [$$] $*" >> {logs}/runtime-calls.log
exec {path} --debug --log {logs}/runtime-debug.log "$@"
""")
    os.chmod(w, 0o755)
    return w


def cleanup(pms, keep):
    for pm in pms:
        pm.open_log("cleanup")
        if not keep:
            pm("rm", "-a", "-f", "-t", "0", timeout=120)
    # conmon lingers a moment after its container is removed (it runs the exit command first).
    tracked = [(pid, c, pm.name) for pm in pms for pid, c in pm.pids.items() if c]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(p) and comm(p) == c for p, c, _ in tracked):
        time.sleep(0.2)
    leftovers = []
    for pid, c, name in tracked:
        if alive(pid) and comm(pid) == c and not keep:
            leftovers.append((pid, c, name))
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if leftovers:
        log(f"cleanup: killed leftover processes {leftovers}")
    if not keep and pms:
        pms[0]("rmi", "-a", "-f", timeout=120)


def in_namespace(args, runtimes):
    """Re-run this script in a private mount namespace with /run/<runtime> bound to WORK/state/NAME."""
    if os.environ.get(NS_ENV) == "1":
        return None
    wipe(args.work)
    os.makedirs(args.work, exist_ok=True)
    binds = []
    for name, path in runtimes:
        st = f"{args.work}/state/{name}"
        os.makedirs(st, exist_ok=True)
        mp = f"/run/{os.path.basename(path)}"
        os.makedirs(mp, exist_ok=True)
        binds.append(f"mount --bind {shlex.quote(st)} {shlex.quote(mp)}")
    script = " && ".join(binds + ['exec "$0" "$@"'])
    argv = ["unshare", "--mount", "--propagation", "slave", "sh", "-c", script,
            sys.executable, os.path.abspath(__file__)] + sys.argv[1:]
    env = dict(os.environ, **{NS_ENV: "1", "RSRUN_TOP": TOP})
    p = subprocess.Popen(argv, env=env)
    try:
        return p.wait()
    except KeyboardInterrupt:
        p.send_signal(signal.SIGINT)
        return p.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runtime", action="append", default=[])
    ap.add_argument("--work", default="/var/tmp/rsrun-podman")
    ap.add_argument("--only", action="append", default=[])
    ap.add_argument("--debug", action="store_true")
    ap.add_argument("--trace", action="store_true")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--min-passed", type=int, default=0)
    args = ap.parse_args()
    args.work = os.path.abspath(args.work)
    runtimes = [(n, os.path.abspath(p)) for n, p in (r.split("=", 1) for r in args.runtime)] or \
        [("runc", "/usr/sbin/runc"), ("rsrun", f"{TOP}/target/debug/rsrun")]
    for name, path in runtimes:
        if not os.access(path, os.X_OK):
            log(f"runtime {name}: {path} is not executable")
            return 2
    if os.geteuid() != 0:
        log("needs root")
        return 2
    ensure_packages()
    rc = in_namespace(args, runtimes)
    if rc is not None:
        return rc
    # In the work dir: Podman, conmon and the runtimes inherit it, and Debian's conmon writes
    # a file `oom` into its working directory when its container is OOM-killed (the --memory
    # check), which landed in the caller's (the repository's top) before.
    os.chdir(args.work)

    checks = [(n, f) for n, f in CHECKS if not args.only or any(n.startswith(o) for o in args.only)]
    os.makedirs(f"{args.work}/logs", exist_ok=True)
    if args.json:
        conf = f"{args.work}/containers.conf"
        names = ["crun", "runc", "kata", "runsc", "youki", "krun"]
        names += [os.path.basename(p) for _, p in runtimes if os.path.basename(p) not in names]
        with open(conf, "w") as f:
            f.write("[engine]\nruntime_supports_json = [%s]\n" % ", ".join(f'"{n}"' for n in names))
        os.environ["CONTAINERS_CONF"] = conf  # podman, conmon and the exit command inherit it
    t_all = time.monotonic()
    pms = []
    results = {}
    try:
        subprocess.run([sys.executable, f"{HERE}/mkimage.py", f"{args.work}/busybox.tar", IMAGE],
                       check=True, stdout=subprocess.DEVNULL)
        for name, path in runtimes:
            rpath = make_trace_wrapper(args.work, name, path) if args.trace else path
            pm = Podman(args.work, name, rpath, args.debug)
            pms.append(pm)
        pm0 = pms[0]
        pm0.open_log("setup")
        rc, out, err = pm0("load", "-i", f"{args.work}/busybox.tar", timeout=120)
        if rc != 0:
            log(f"podman load failed: {last_line(err)}")
            return 2
        log(f"image {IMAGE} loaded from a locally built oci-archive; podman "
            f"{pm0('version', '--format', '{{.Client.Version}}')[1].strip()}, conmon "
            f"{subprocess.run(['conmon', '--version'], capture_output=True, text=True).stdout.split()[2]}")
        for pm in pms:
            results[pm.name] = {}
            t_rt = time.monotonic()
            for cname, fn in checks:
                pm.open_log(cname)
                pm.note(f"##### {cname} ({pm.name}: {pm.path})")
                t0 = time.monotonic()
                try:
                    detail = fn(pm, pm.name)
                    ok = True
                except Fail as e:
                    ok, detail = False, str(e)
                except Exception as e:
                    ok, detail = False, f"{type(e).__name__}: {e}"
                    pm.note(traceback.format_exc())
                dt = time.monotonic() - t0
                results[pm.name][cname] = (ok, detail)
                log(f"{'ok  ' if ok else 'FAIL'} {pm.name:6} {cname:24} {dt:5.1f}s"
                    + (f"  {detail}" if detail else ""))
            pm.open_log("svc")
            pm.rm(*[c for c in pm.created if c.endswith("-svc")])
            log(f"--- {pm.name}: {sum(r[0] for r in results[pm.name].values())} of "
                f"{len(checks)} checks passed in {time.monotonic() - t_rt:.0f}s")
    finally:
        try:
            cleanup(pms, args.keep)
        except Exception as e:
            log(f"cleanup error: {e}")

    ref = runtimes[0][0]
    names = [n for n, _ in runtimes]
    log("")
    log(f"{'check':26}" + "".join(f"{n:8}" for n in names))
    regressions = []
    for cname, _ in checks:
        row = f"{cname:26}"
        for n in names:
            row += f"{'ok' if results[n][cname][0] else 'FAIL':8}"
        log(row)
        for n in names[1:]:
            if results[ref][cname][0] and not results[n][cname][0]:
                regressions.append((n, cname))
    below = []
    for n in names:
        passed = sum(1 for c, _ in checks if n in results and results[n][c][0])
        log(f"{n}: {passed} passed, {len(checks) - passed} failed")
        if passed < args.min_passed:
            below.append(f"{n} passed {passed}")
    log(f"logs: {args.work}/logs/NAME/CHECK.log; total {time.monotonic() - t_all:.0f}s")
    if regressions:
        log("FAILED: pass with %s, fail with: %s" % (ref, ", ".join(f"{n} {c}" for n, c in regressions)))
    else:
        log(f"every check that passes with {ref} passes with " + ", ".join(names[1:]))
    if below:
        log(f"FAILED: below the floor of {args.min_passed} checks: " + ", ".join(below))
    elif args.min_passed:
        log(f"floor: every runtime passed at least {args.min_passed} checks")
    return 1 if regressions or below else 0


if __name__ == "__main__":
    sys.exit(main())
