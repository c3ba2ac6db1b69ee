#!/usr/bin/env python3
"""Start-up cost of the systemd cgroup driver: `RUNTIME run` of /bin/true with the cgroupfs
driver and with --systemd-cgroup, for rsrun and runc, side by side, in a VM that boots systemd
as PID 1 (the host has none). Run it through integration/bench/systemd-vm.sh, which boots the VM.

Each round runs every (runtime, driver) pair once, in an order that rotates from round to
round; every run uses a new container ID, and after each the script checks (untimed) that the
container left no state, no cgroup and (systemd) no unit. Timing is wall time from spawn to
reap of the runtime process. The report (markdown, stdout) gives the median and p90 of each
pair, rsrun/runc per driver, and each runtime's systemd/cgroupfs ratio. Figures under TCG are
slower than on hardware in absolute terms; the ratios are what is compared.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def sh(argv, **kw):
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def make_bundle(d, runc):
    rootfs = os.path.join(d, "rootfs")
    os.makedirs(os.path.join(rootfs, "bin"))
    shutil.copy("/bin/busybox", os.path.join(rootfs, "bin/busybox"))
    os.symlink("busybox", os.path.join(rootfs, "bin/true"))
    r = sh([runc, "spec", "--bundle", d])
    if r.returncode:
        sys.exit("runc spec: " + r.stderr)
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = ["/bin/true"]
    return cfg


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rsrun", required=True)
    ap.add_argument("--runc", default="/usr/sbin/runc")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=3)
    a = ap.parse_args()
    if open("/proc/1/comm").read().strip() != "systemd":
        sys.exit("systemd is not PID 1 here: run integration/bench/systemd-vm.sh")
    work = tempfile.mkdtemp(prefix="rsrun-sd-bench.")
    bundle = os.path.join(work, "bundle")
    cfg = make_bundle(bundle, a.runc)
    runtimes = {"rsrun": a.rsrun, "runc": a.runc}
    pairs = [(rt, drv) for rt in runtimes for drv in ("cgroupfs", "systemd")]
    samples = {p: [] for p in pairs}
    leftovers = {p: 0 for p in pairs}
    seq = [0]

    def one(rt, drv, record):
        seq[0] += 1
        cid = f"b{seq[0]}"
        root = os.path.join(work, "root-" + rt)
        if drv == "systemd":
            cfg["linux"]["cgroupsPath"] = f"system.slice:bench:{cid}"
            unit = f"bench-{cid}.scope"
            cgdir = f"/sys/fs/cgroup/system.slice/{unit}"
        else:
            cfg["linux"]["cgroupsPath"] = f"/bench/{cid}"
            unit = None
            cgdir = f"/sys/fs/cgroup/bench/{cid}"
        with open(os.path.join(bundle, "config.json"), "w") as f:
            json.dump(cfg, f)
        argv = [runtimes[rt], "--root", root] + (["--systemd-cgroup"] if drv == "systemd" else [])
        argv += ["run", "--bundle", bundle, cid]
        t0 = time.perf_counter()
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        dt = time.perf_counter() - t0
        if r.returncode:
            sys.exit(f"{' '.join(argv)}: exit {r.returncode}: {r.stderr.decode(errors='replace')}")
        if record:
            samples[(rt, drv)].append(dt * 1000)
        # Untimed: nothing may be left.
        left = os.path.exists(os.path.join(root, cid)) or os.path.exists(cgdir)
        if unit:
            st = sh(["systemctl", "show", "-p", "LoadState", "--value", unit]).stdout.strip()
            left = left or st != "not-found"
        if left:
            leftovers[(rt, drv)] += 1
            sh([runtimes[rt], "--root", root, "delete", "--force", cid])
            if unit:
                sh(["systemctl", "stop", unit])

    for p in pairs:
        for _ in range(a.warmup):
            one(*p, record=False)
    for i in range(a.rounds):
        k = i % len(pairs)
        for p in pairs[k:] + pairs[:k]:
            one(*p, record=True)

    def med(p):
        return statistics.median(samples[p])

    def p90(p):
        s = sorted(samples[p])
        return s[min(len(s) - 1, int(0.9 * len(s)))]

    vers = {rt: sh([b, "--version"]).stdout.splitlines()[0] for rt, b in runtimes.items()}
    sd_ver = sh(["systemctl", "--version"]).stdout.splitlines()[0]
    print(f"`run` of /bin/true, {a.rounds} rounds, {sd_ver}, pure cgroup v2, qemu TCG VM "
          f"({', '.join(vers.values())})\n")
    print("| runtime | driver | median ms | p90 ms | left behind |")
    print("|---|---|---|---|---|")
    for p in pairs:
        print(f"| {p[0]} | {p[1]} | {med(p):.1f} | {p90(p):.1f} | {leftovers[p]} |")
    print()
    for drv in ("cgroupfs", "systemd"):
        print(f"- {drv}: rsrun/runc median ratio {med(('rsrun', drv)) / med(('runc', drv)):.2f}")
    for rt in runtimes:
        extra = med((rt, "systemd")) - med((rt, "cgroupfs"))
        print(f"- {rt}: systemd driver adds {extra:.1f} ms to the median "
              f"({med((rt, 'systemd')) / med((rt, 'cgroupfs')):.2f}x)")
    shutil.rmtree(work, ignore_errors=True)
    if any(leftovers.values()):
        sys.exit("some runs left state, cgroups or units behind (see the table)")


if __name__ == "__main__":
    main()
