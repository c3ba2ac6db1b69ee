#!/usr/bin/env python3
"""Benchmarks rsrun-shim against Debian's conmon (under Podman, `--runtime runc`), side by side in
one run, and prints a markdown report for docs/benchmarks.md.

  memory  N idle containers each (default 50): the sum of every monitor process's Pss (from
          /proc/PID/smaps_rollup) divided by N, and its RSS and USS per process. For rsrun-shim:
          N shims of the static release build, each supervising `sleep` in a busybox bundle; for
          conmon: `podman run -d` of N containers of a busybox image built here (no registry).
  idle    CPU ticks and context switches of the N shims (and conmons) over a quiet interval:
          0 means no timer or polling loop wakes an idle monitor.
  logs    a container that `cat`s a file of text lines (default 512 MiB of 100-byte lines; the
          length with --line-bytes, the newline included) as fast as it can:
          bytes per second from `start` to the exit record, with the CRI framing, against
          `cat` of the same file into a file in the same directory on the host.

Usage: shim.py [-n N] [--log-mib M] [--line-bytes B] [--idle-seconds S] [--work DIR]
               [--skip-conmon]
Needs root, busybox-static, podman, conmon, runc (installed from Debian when missing).
"""
import argparse, datetime, json, mmap, os, re, select, shutil, socket, subprocess, sys, time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
IMAGE = "localhost/rsrun-busybox:latest"


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def smaps(pid):
    """(Pss, Rss, USS) in KiB of one process."""
    f = {}
    with open(f"/proc/{pid}/smaps_rollup") as r:
        for line in r:
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(":"):
                try:
                    f[parts[0][:-1]] = int(parts[1])
                except ValueError:
                    pass
    return f.get("Pss", 0), f.get("Rss", 0), f.get("Private_Clean", 0) + f.get("Private_Dirty", 0)


def cpu_and_switches(pid):
    with open(f"/proc/{pid}/stat") as r:
        rest = r.read().rsplit(") ", 1)[1].split()
    ticks = int(rest[11]) + int(rest[12])
    sw = 0
    with open(f"/proc/{pid}/status") as r:
        for line in r:
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                sw += int(line.split()[1])
    return ticks, sw


def idle(pids, seconds):
    before = {p: cpu_and_switches(p) for p in pids}
    time.sleep(seconds)
    after = {p: cpu_and_switches(p) for p in pids}
    ticks = sum(after[p][0] - before[p][0] for p in pids)
    sw = sum(after[p][1] - before[p][1] for p in pids)
    return ticks, sw


def memory(pids, n):
    m = [smaps(p) for p in pids]
    pss = sum(x[0] for x in m) / n
    rss = sorted(x[1] for x in m)[len(m) // 2]
    uss = sorted(x[2] for x in m)[len(m) // 2]
    return pss, rss, uss


def log_span(path):
    """Seconds from the first record's timestamp to the last one's in a CRI log."""
    def ts(rec):
        m = re.match(rb"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d) ", rec)
        if not m:
            raise SystemExit(f"{path}: not a CRI log record: {rec[:80]!r}")
        base = datetime.datetime.fromisoformat(m.group(1).decode() + (
            "+00:00" if m.group(3) == b"Z" else m.group(3).decode()))
        return base.timestamp() + (float(m.group(2)) if m.group(2) else 0.0)
    with open(path, "rb") as f:
        first = f.readline()
        f.seek(max(0, os.path.getsize(path) - 65536))
        last = f.read().rstrip(b"\n").rsplit(b"\n", 1)[-1]
    span = ts(last) - ts(first)
    if span <= 0:
        raise SystemExit(f"{path}: no time between the first and last record")
    return span


def fresh_pages(mib=1536):
    """Touch and free MIB of anonymous memory, so that the timed run after it allocates its page
    cache from pages just freed. On this VM the balloon driver reports pages free for a few
    seconds to the host, and the first touch of a reported page costs the host's fault (`dd`
    of 716 MiB into a file: 0.16-0.21 s after 4 s idle, 0.14-0.16 s right after this). A run
    whose writes need more than the run before it freed (the shim's 716 MiB of log after
    `cat`'s 512 MiB) would pay it where the next does not. Done before every timed run, of
    each side alike. (The callers sync first: no round pays for the writeback of the one
    before it.)"""
    m = mmap.mmap(-1, mib << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_POPULATE)
    m.close()


MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0x8000)


def make_bundle(rsrun, bundle, args):
    if os.path.exists(bundle):
        shutil.rmtree(bundle)
    root = f"{bundle}/rootfs"
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc"]:
        os.makedirs(f"{root}/{d}")
    shutil.copy("/bin/busybox", f"{root}/bin/busybox")
    for a in ["sh", "sleep", "cat"]:
        os.symlink("busybox", f"{root}/bin/{a}")
    sh(rsrun, "spec", "--bundle", bundle)
    c = json.load(open(f"{bundle}/config.json"))
    c["process"]["terminal"] = False
    c["process"]["args"] = args
    json.dump(c, open(f"{bundle}/config.json", "w"))


def control(sockpath, req):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sockpath)
    s.sendall((json.dumps(req) + "\n").encode())
    data = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        data += d
    return json.loads(data.split(b"\n", 1)[0])


class Shims:
    def __init__(self, shim, rsrun, work):
        self.shim, self.rsrun, self.work = shim, rsrun, work
        self.root = f"{work}/state"
        self.ids = []

    def start(self, bundle, cid, extra=(), log=None):
        d = f"{self.work}/c/{cid}"
        os.makedirs(d, exist_ok=True)
        sh(self.shim, "--id", cid, "--bundle", bundle, "--dir", f"{d}/shim", "--log-path",
           log or f"{d}/ctr.log", "--exit-file", f"{d}/exit.json", "--root", self.root, *extra,
           stdout=subprocess.DEVNULL)
        self.ids.append(cid)
        return d

    def pid(self, cid):
        return int(open(f"{self.work}/c/{cid}/shim/shim.pid").read())

    def cleanup(self):
        for cid in self.ids:
            subprocess.run([self.rsrun, "--root", self.root, "delete", "--force", cid],
                           stderr=subprocess.DEVNULL)
        self.ids = []


def conmon_pids(podman_root):
    out = []
    for e in os.listdir("/proc"):
        if not e.isdigit():
            continue
        try:
            cmd = open(f"/proc/{e}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if cmd and os.path.basename(cmd[0]) == b"conmon" and podman_root.encode() in b" ".join(cmd):
            out.append(int(e))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=50)
    ap.add_argument("--log-mib", type=int, default=512)
    ap.add_argument("--line-bytes", type=int, default=100)
    ap.add_argument("--idle-seconds", type=float, default=10)
    ap.add_argument("--work", default="/var/tmp/rsrun-shim-bench")
    ap.add_argument("--skip-conmon", action="store_true")
    a = ap.parse_args()
    n = a.n
    shim = subprocess.run([f"{TOP}/integration/build-release.sh", "rsrun-shim"], check=True,
                          capture_output=True, text=True).stdout.strip()
    rsrun = subprocess.run([f"{TOP}/integration/build-release.sh"], check=True,
                           capture_output=True, text=True).stdout.strip()
    if os.path.exists(a.work):
        shutil.rmtree(a.work)
    os.makedirs(a.work)
    report = [f"### rsrun-shim and conmon\n",
              f"{time.strftime('%Y-%m-%d')}; {os.uname().release}, {os.cpu_count()} CPUs; "
              f"{n} idle containers per monitor, in one run.\n"]

    # Memory and idle CPU: N shims.
    bundle = f"{a.work}/idle-bundle"
    make_bundle(rsrun, bundle, ["sleep", "1000000"])
    shims = Shims(shim, rsrun, a.work)
    try:
        for i in range(n):
            shims.start(bundle, f"idle{i}")
            control(f"{a.work}/c/idle{i}/shim/control", {"op": "start"})
        pids = [shims.pid(c) for c in shims.ids]
        time.sleep(1)
        s_pss, s_rss, s_uss = memory(pids, n)
        s_ticks, s_sw = idle(pids, a.idle_seconds)
    finally:
        shims.cleanup()

    c_pss = c_rss = c_uss = c_ticks = c_sw = None
    proot = f"{a.work}/podman"
    pm = ["podman", "--root", f"{proot}/root", "--runroot", f"{proot}/runroot", "--tmpdir",
          f"{proot}/tmp", "--cgroup-manager", "cgroupfs", "--events-backend", "file",
          "--storage-driver", "overlay", "--runtime", "/usr/sbin/runc"]
    if not a.skip_conmon:
        sh(sys.executable, f"{TOP}/integration/podman/mkimage.py", f"{a.work}/busybox.tar", IMAGE,
           stdout=subprocess.DEVNULL)
        sh(*pm, "load", "-i", f"{a.work}/busybox.tar", stdout=subprocess.DEVNULL,
           stderr=subprocess.DEVNULL)
        names = []
        try:
            for i in range(n):
                name = f"rsrun-bench-idle{i}"
                sh(*pm, "run", "-d", "--name", name, "--pull", "never", "--network", "none",
                   "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768",
                   IMAGE, "sleep", "1000000", stdout=subprocess.DEVNULL)
                names.append(name)
            time.sleep(1)
            cp = conmon_pids(proot)
            if len(cp) != n:
                print(f"found {len(cp)} conmon processes, expected {n}", file=sys.stderr)
                return 1
            c_pss, c_rss, c_uss = memory(cp, n)
            c_ticks, c_sw = idle(cp, a.idle_seconds)
        finally:
            if names:
                subprocess.run([*pm, "rm", "-f", "-t", "0", *names], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)

    report.append("| monitor | Pss per container | RSS (median) | USS (median) | CPU ticks idle "
                  f"({a.idle_seconds:g} s, all) | context switches idle (all) |")
    report.append("|---|---:|---:|---:|---:|---:|")
    report.append(f"| rsrun-shim | {s_pss / 1024:.2f} MiB | {s_rss / 1024:.2f} MiB | "
                  f"{s_uss / 1024:.2f} MiB | {s_ticks} | {s_sw} |")
    if c_pss is not None:
        report.append(f"| conmon | {c_pss / 1024:.2f} MiB | {c_rss / 1024:.2f} MiB | "
                      f"{c_uss / 1024:.2f} MiB | {c_ticks} | {c_sw} |")
        report.append(f"\nPss ratio rsrun-shim/conmon: {s_pss / c_pss:.2f}\n")

    # Log throughput.
    lbundle = f"{a.work}/log-bundle"
    make_bundle(rsrun, lbundle, ["cat", "/data"])
    data = f"{lbundle}/rootfs/data"
    line = b"".join(bytes([0x61 + (i % 26)]) for i in range(a.line_bytes - 1)) + b"\n"
    with open(data, "wb") as f:
        block = line * max(1, 1000000 // len(line))
        for _ in range(a.log_mib * 1024 * 1024 // len(block)):
            f.write(block)
    size = os.path.getsize(data)
    subprocess.run(["cat", data], stdout=subprocess.DEVNULL)  # page cache warm for both
    rates = []
    floor = []
    in_log = {"rsrun-shim": [], "conmon": []}

    def run_shim(cid, log=None):
        # From the start request to the shim's own end (it ends once the container's exit is
        # recorded and every byte is in the log), waited for on a pidfd: polling for exit.json
        # every few ms added up to a poll's period (~1.5% of a round) to every figure.
        d = shims.start(lbundle, cid, log=log)
        pidfd = os.pidfd_open(shims.pid(cid))
        os.sync()
        fresh_pages()
        try:
            t0 = time.monotonic()
            control(f"{d}/shim/control", {"op": "start"})
            p = select.poll()
            p.register(pidfd, select.POLLIN)
            p.poll()
            dt = time.monotonic() - t0
        finally:
            os.close(pidfd)
        if not os.path.exists(f"{d}/exit.json"):
            raise SystemExit(f"{cid}: the shim ended without an exit record")
        return d, dt

    for rnd in range(5):
        # The floor: the shim reading and framing everything, its writes to /dev/null free.
        _, dt = run_shim(f"null{rnd}", log="/dev/null")
        shims.cleanup()
        floor.append(size / dt)
        d, dt = run_shim(f"log{rnd}")
        ex = json.load(open(f"{d}/exit.json"))
        logsize = os.path.getsize(f"{d}/ctr.log")
        in_log["rsrun-shim"].append(size / log_span(f"{d}/ctr.log"))
        shims.cleanup()
        os.remove(f"{d}/ctr.log")
        if not a.skip_conmon:
            # conmon writes the same CRI format (podman's k8s-file log driver).
            clog = f"{a.work}/conmon-{rnd}.log"
            name = f"rsrun-bench-log{rnd}"
            os.sync()
            fresh_pages()
            sh(*pm, "run", "-d", "--name", name, "--pull", "never", "--network", "none",
               "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768",
               "--log-driver", "k8s-file", "--log-opt", f"path={clog}",
               "-v", f"{data}:/data:ro", IMAGE, "cat", "/data", stdout=subprocess.DEVNULL)
            sh(*pm, "wait", name, stdout=subprocess.DEVNULL)
            in_log["conmon"].append(size / log_span(clog))
            subprocess.run([*pm, "rm", "-f", "-t", "0", name], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            os.remove(clog)
        out = f"{a.work}/cat.out"
        os.sync()
        fresh_pages()
        t0 = time.monotonic()
        with open(out, "wb") as o:
            sh("cat", data, stdout=o)
        ct = time.monotonic() - t0
        os.remove(out)
        rates.append((size / dt, size / ct, ex["exit_code"], ex["log_dropped_bytes"], logsize))
    ratios = sorted(r[0] / r[1] for r in rates)
    shim_rate = sorted(r[0] for r in rates)[2]
    cat_rate = sorted(r[1] for r in rates)[2]
    code = max(r[2] for r in rates)
    dropped = sum(r[3] for r in rates)
    logsize = rates[0][4]
    report.append(f"\nLog throughput, `cat` of {size / 2**20:.0f} MiB of {a.line_bytes}-byte lines in a "
                  f"container, 5 rounds interleaved with the host's `cat` of the same file into a "
                  f"file in the same directory (medians): rsrun-shim {shim_rate / 1e6:.0f} MB/s "
                  f"with the CRI framing ({logsize / 2**20:.0f} MiB of log), `cat` "
                  f"{cat_rate / 1e6:.0f} MB/s; per-round ratio {ratios[0]:.2f}–{ratios[-1]:.2f}, "
                  f"median {ratios[2]:.2f} (exit codes {code}, {dropped} bytes dropped).")
    f50 = sorted(floor)[2]
    report.append(f"\nThe floor, rsrun-shim with `--log-path /dev/null` (every byte read from the "
                  f"container's pipe and framed, the writes free), same rounds: "
                  f"{f50 / 1e6:.0f} MB/s, {f50 / cat_rate:.2f} of `cat`.")
    med = lambda xs: sorted(xs)[len(xs) // 2]
    line = (f"\nThe same from the logs' own timestamps (the container's bytes over the time from "
            f"the first record to the last, medians of 5): rsrun-shim "
            f"{med(in_log['rsrun-shim']) / 1e6:.0f} MB/s")
    if in_log["conmon"]:
        line += (f", conmon (podman `--log-driver k8s-file`, runc, same file and image, rounds "
                 f"interleaved) {med(in_log['conmon']) / 1e6:.0f} MB/s: ratio rsrun-shim/conmon "
                 f"{med(in_log['rsrun-shim']) / med(in_log['conmon']):.2f}")
    report.append(line + ".")
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
