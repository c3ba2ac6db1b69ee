#!/usr/bin/env python3
"""Timing loop of bench.sh: OCI runtimes running /bin/true, interleaved.

Each measured command is started by spawnstat (a small C helper), which
reports the wall time from spawn to reap and ru_maxrss of the command (its
peak RSS and that of the descendants it reaped). This script only schedules
the runs, cleans up after each, and prints the statistics as markdown.

Run mode: for each of ROUNDS rounds, RUNS paired runs; in each pair every
runtime does one `RUNTIME run --bundle B ID` (the order rotates from pair to
pair). Steps mode: the same schedule with `create`, `start` and `delete`
timed separately (the container's exit is awaited, untimed, between start and
delete). After every run the container must be gone: if `state ID` still
succeeds it is force-deleted and counted as a leftover, and any cgroup
directory named ID is removed (and counted).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class Runtime:
    def __init__(self, name, binary, ctl, ns):
        self.name = name
        self.binary = binary          # what is measured (exec'd by spawnstat)
        self.ctl = ctl                # argv prefix for untimed control calls
        self.ns = ns                  # mount namespace to run `binary` in, or None
        self.version = version_of(ctl)
        self.samples = {}             # step -> list of (round, wall_ms, maxrss_kib)
        self.failures = 0
        self.leftover_state = 0
        self.leftover_cgroups = 0
        self.first_error = None
        self.dropped = None


def version_of(ctl):
    try:
        out = subprocess.run(ctl + ["--version"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    first = out.strip().splitlines()[0] if out.strip() else "?"
    return " ".join(first.replace("version", " ").split()) or first


class Bench:
    def __init__(self, args):
        self.args = args
        self.spawnstat = args.spawnstat
        self.bundle = args.bundle
        self.errfile = os.path.join(args.work, "stderr.log")
        self.seq = 0
        self.cgroup_bases = cgroup_bases()

    def measure(self, rt, argv):
        """Runs rt.binary ARGV under spawnstat; returns (wall_ms, status, maxrss_kib)."""
        cmd = [self.spawnstat]
        if rt.ns:
            cmd += ["-n", rt.ns]
        cmd += ["-e", self.errfile, "--", rt.binary] + argv
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError("spawnstat failed: " + p.stderr.strip())
        f = dict(kv.split("=", 1) for kv in p.stdout.split())
        return int(f["wall_ns"]) / 1e6, int(f["status"]), int(f["maxrss_kib"])

    def last_stderr(self):
        try:
            with open(self.errfile, errors="replace") as f:
                return f.read().strip()[-600:]
        except OSError:
            return ""

    def ctl(self, rt, argv, timeout=30):
        return subprocess.run(rt.ctl + argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def new_id(self, rt):
        self.seq += 1
        return "bench-%s-%d-%d" % (rt.name, os.getpid(), self.seq)

    def cleanup(self, rt, cid):
        """Untimed: the container must be gone; remove what is left and count it."""
        if self.ctl(rt, ["state", cid]).returncode == 0:
            rt.leftover_state += 1
            self.ctl(rt, ["kill", cid, "KILL"])
            self.ctl(rt, ["delete", "--force", cid])
        for base in self.cgroup_bases:
            path = os.path.join(base, cid)
            if os.path.isdir(path):
                rt.leftover_cgroups += 1
                remove_cgroup_tree(path)

    def wait_stopped(self, rt, cid, limit=10.0):
        end = time.monotonic() + limit
        while time.monotonic() < end:
            p = self.ctl(rt, ["state", cid])
            if p.returncode != 0:
                return False
            try:
                if json.loads(p.stdout).get("status") == "stopped":
                    return True
            except ValueError:
                return False
            time.sleep(0.001)
        return False

    def one(self, rt, rnd, record=True):
        """One measured iteration for rt; returns False when it failed."""
        cid = self.new_id(rt)
        b = self.bundle
        ok = True
        try:
            if self.args.mode == "run":
                steps = [("run", ["run", "--bundle", b, cid])]
            else:
                steps = [("create", ["create", "--bundle", b, cid]), ("start", ["start", cid]),
                         ("delete", ["delete", cid])]
            got = []
            for step, argv in steps:
                if step == "delete" and not self.wait_stopped(rt, cid):
                    ok = False
                    rt.first_error = rt.first_error or "container did not reach 'stopped' after start"
                    break
                wall, status, rss = self.measure(rt, argv)
                if status != 0:
                    ok = False
                    rt.first_error = rt.first_error or "%s exited %d: %s" % (step, status, self.last_stderr())
                    break
                got.append((step, wall, rss))
            if ok and record:
                for step, wall, rss in got:
                    rt.samples.setdefault(step, []).append((rnd, wall, rss))
        finally:
            self.cleanup(rt, cid)
        if not ok:
            rt.failures += 1
        return ok

    def run(self, runtimes):
        a = self.args
        # Warm-up (page cache, dentries, first-run costs); a runtime that
        # cannot complete its warm-up is dropped with its error.
        for rt in runtimes:
            for _ in range(a.warmup):
                if not self.one(rt, 0, record=False) and rt.failures >= min(3, a.warmup):
                    rt.dropped = rt.first_error
                    log("skipping %s: %s" % (rt.name, rt.first_error))
                    break
            rt.failures = 0
        live = [rt for rt in runtimes if not rt.dropped]
        for rnd in range(1, a.rounds + 1):
            t0 = time.monotonic()
            for i in range(a.runs):
                k = i % len(live) if live else 0
                for rt in live[k:] + live[:k]:
                    self.one(rt, rnd)
            meds = []
            for rt in live:
                s = [w for r, w, _ in rt.samples.get(self.main_step(), []) if r == rnd]
                meds.append("%s %.1f ms" % (rt.name, statistics.median(s)) if s else "%s -" % rt.name)
            log("round %d/%d (%.0f s): %s" % (rnd, a.rounds, time.monotonic() - t0, ", ".join(meds)))

    def main_step(self):
        return "run" if self.args.mode == "run" else "create"


def cgroup_bases():
    """Each cgroup hierarchy's root and this process's cgroup in it."""
    bases = []
    own = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, ctl, path = line.rstrip("\n").split(":", 2)
            own[ctl] = path
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, post = line.split(" - ", 1)
            mnt = pre.split()[4]
            fstype, _, opts = post.split()[:3]
            if fstype not in ("cgroup", "cgroup2") or not mnt.startswith("/sys/fs/cgroup"):
                continue
            bases.append(mnt)
            if fstype == "cgroup2":
                path = own.get("")
            else:
                path = next((p for c, p in own.items() if c and set(c.split(",")) <= set(opts.split(","))), None)
            if path and path != "/":
                bases.append(mnt + path)
    return bases


def remove_cgroup_tree(path):
    for root, dirs, _ in os.walk(path, topdown=False):
        for d in dirs:
            try:
                os.rmdir(os.path.join(root, d))
            except OSError:
                pass
    try:
        os.rmdir(path)
    except OSError as e:
        log("cannot remove leftover cgroup %s: %s" % (path, e))


def pct(values, q):
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    x = q * (len(s) - 1)
    lo = int(x)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (x - lo)


def round_medians(samples, rounds):
    out = []
    for r in range(1, rounds + 1):
        s = [w for rr, w, _ in samples if rr == r]
        if s:
            out.append(statistics.median(s))
    return out


def fmt_range(vals, fmt="%.1f"):
    if not vals:
        return "-"
    lo, hi = min(vals), max(vals)
    return (fmt % lo) if fmt % lo == fmt % hi else (fmt + "–" + fmt) % (lo, hi)


def mib(kib):
    return kib / 1024.0


def report(bench, runtimes, out):
    a = bench.args
    live = [rt for rt in runtimes if not rt.dropped and rt.samples]
    w = out.write
    w("### %s\n\n" % ("`RUNTIME run` of /bin/true" if a.mode == "run" else "`create` / `start` / `delete` of /bin/true"))
    w("%s; %s %s, %d CPUs; %d rounds × %d paired runs per runtime, interleaved; "
      "bundle: busybox-static rootfs, stock `runc spec` (namespaces %s), terminal false, args /bin/true.\n\n"
      % (time.strftime("%Y-%m-%d"), platform.system(), platform.release(), os.cpu_count(),
         a.rounds, a.runs, bench_namespaces(bench.bundle)))
    if a.mode == "run":
        w("| runtime | version | `run` median | per-round medians | p10–p90 | peak RSS of `run` (median) | failed runs |\n")
        w("|---|---|---:|---:|---:|---:|---:|\n")
        for rt in live:
            s = rt.samples["run"]
            walls = [x[1] for x in s]
            w("| %s | %s | %.1f ms | %s ms | %.1f–%.1f ms | %.1f MiB | %d |\n" % (
                rt.name, rt.version, statistics.median(walls), fmt_range(round_medians(s, a.rounds)),
                pct(walls, 0.1), pct(walls, 0.9), mib(statistics.median([x[2] for x in s])), rt.failures))
    else:
        w("| runtime | version | create | start | delete | sum of medians | peak RSS create / start / delete (median) | failed runs |\n")
        w("|---|---|---:|---:|---:|---:|---:|---:|\n")
        for rt in live:
            meds = {st: statistics.median([x[1] for x in rt.samples.get(st, [])]) for st in ("create", "start", "delete")
                    if rt.samples.get(st)}
            rss = {st: mib(statistics.median([x[2] for x in rt.samples.get(st, [])])) for st in meds}
            cells = ["%.1f ms (%s)" % (meds[st], fmt_range(round_medians(rt.samples[st], a.rounds)))
                     if st in meds else "-" for st in ("create", "start", "delete")]
            w("| %s | %s | %s | %.1f ms | %s MiB | %d |\n" % (
                rt.name, rt.version, " | ".join(cells), sum(meds.values()),
                " / ".join("%.1f" % rss[st] for st in ("create", "start", "delete") if st in rss), rt.failures))
        w("\nCells: median over all runs (range of the per-round medians).\n")

    # Ratios of medians, overall and per round (the runs of a round are interleaved).
    step = "run" if a.mode == "run" else None
    by = {rt.name: rt for rt in live}
    pairs = [("rsrun", "crun"), ("rsrun", "runc"), ("crun", "runc")]
    lines = []
    for x, y in pairs:
        if x not in by or y not in by:
            lines.append("- %s/%s: n/a (%s not measured)" % (x, y, x if x not in by else y))
            continue
        rx, ry = by[x], by[y]
        if step:
            num, den = statistics.median([s[1] for s in rx.samples[step]]), statistics.median([s[1] for s in ry.samples[step]])
            per = [m1 / m2 for m1, m2 in zip(round_medians(rx.samples[step], a.rounds), round_medians(ry.samples[step], a.rounds))]
        else:
            num = sum(statistics.median([s[1] for s in rx.samples[st]]) for st in ("create", "start", "delete"))
            den = sum(statistics.median([s[1] for s in ry.samples[st]]) for st in ("create", "start", "delete"))
            per = []
            for r in range(1, a.rounds + 1):
                t = [sum(statistics.median([s[1] for s in rt.samples[st] if s[0] == r] or [0]) for st in ("create", "start", "delete"))
                     for rt in (rx, ry)]
                if t[1]:
                    per.append(t[0] / t[1])
        rss = ""
        if step:
            rss = "; peak RSS %.2f" % (statistics.median([s[2] for s in rx.samples[step]]) /
                                       statistics.median([s[2] for s in ry.samples[step]]))
        lines.append("- %s/%s: wall %.2f (per round %s)%s" % (x, y, num / den, fmt_range(per, "%.2f"), rss))
    w("\nRatios of medians%s:\n\n%s\n" % ("" if step else " (sum of the create, start and delete medians)", "\n".join(lines)))

    notes = []
    for rt in runtimes:
        if rt.dropped:
            notes.append("- %s: not measured: %s" % (rt.name, rt.dropped))
        elif rt.leftover_state or rt.leftover_cgroups:
            notes.append("- %s: %d runs left state behind and %d left cgroups (removed after the run, untimed)"
                         % (rt.name, rt.leftover_state, rt.leftover_cgroups))
        if rt.ns:
            notes.append("- %s runs in a mount namespace where /sys/fs/cgroup/unified/cgroup.controllers reads empty "
                         "(crun-hybrid --hold); spawnstat enters it before the clock starts, so no wrapper process is "
                         "timed or measured." % rt.name)
    if notes:
        w("\n" + "\n".join(notes) + "\n")
    w("\nPeak RSS is ru_maxrss from wait4(2) of the runtime's process: the largest of it and the children it "
      "reaped (for `run`, the runtime's own init stage and /bin/true).\n")


def bench_namespaces(bundle):
    try:
        with open(os.path.join(bundle, "config.json")) as f:
            c = json.load(f)
        return ", ".join(n["type"] for n in c["linux"]["namespaces"])
    except (OSError, ValueError, KeyError):
        return "?"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spawnstat", required=True)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--mode", choices=("run", "steps"), default="run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--runtime", action="append", default=[],
                    help="NAME=BINARY[,ctl=PROGRAM][,ns=MNTNS]: measure BINARY; untimed calls go through "
                         "PROGRAM (default BINARY); BINARY runs in mount namespace MNTNS")
    ap.add_argument("--json", help="also write the raw samples here")
    a = ap.parse_args()
    if a.rounds < 1 or a.runs < 1:
        ap.error("--rounds and --runs must be at least 1")

    runtimes = []
    for spec in a.runtime:
        name, rest = spec.split("=", 1)
        parts = rest.split(",")
        opts = dict(p.split("=", 1) for p in parts[1:])
        binary = parts[0]
        runtimes.append(Runtime(name, binary, [opts.get("ctl", binary)], opts.get("ns")))
    if not runtimes:
        log("no runtime to measure")
        return 2

    b = Bench(a)
    log("%s: %d rounds x %d paired runs of %s" % (a.mode, a.rounds, a.runs, ", ".join(r.name for r in runtimes)))
    b.run(runtimes)
    report(b, runtimes, sys.stdout)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({rt.name: {"version": rt.version, "binary": rt.binary, "samples": rt.samples,
                                 "failures": rt.failures, "dropped": rt.dropped} for rt in runtimes}, f)
    return 0 if any(rt.samples for rt in runtimes) else 1


if __name__ == "__main__":
    sys.exit(main())
