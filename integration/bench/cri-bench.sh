#!/bin/bash
# CRI server benchmark (issue 10): critest -benchmark against Debian's containerd 1.6 with its
# runc shim (the reference) and against rsrun-cri, in one invocation, then the idle memory of
# each server with N pods of one `sleep` container each. A benchmark, not a test: it asserts no
# timing, it prints figures.
#
# Usage: cri-bench.sh [--bin-dir DIR] [--cri-bin F] [--shim-bin F] [--rsrun-bin F] [--runc PATH]
#                     [--params FILE] [--rounds N] [--pods N] [--tools-from DIR]
#                     [--cri-log-level LEVEL] [--wait-quiet SECONDS] [--report FILE]
#   --bin-dir DIR     where rsrun-cri, rsrun-shim and rsrun are (default <repo>/target/debug);
#                     --cri-bin, --shim-bin, --rsrun-bin name one of them elsewhere (e.g. the
#                     release builds of integration/build-release.sh). They are copied into
#                     $W/rsrun-bin first, so that a rebuild during the run does not change them
#   --runc PATH       the runtime of containerd's shim (default /usr/sbin/runc)
#   --params FILE     critest's benchmark parameters (default: benchmark-params.yml beside this)
#   --rounds N        critest -benchmark runs per server (default 3), each a run.sh invocation
#                     (containerd first, then rsrun-cri); the samples of all rounds are pooled
#   --pods N          pods for the idle memory figures (default 50; 0: none), made in one more
#                     run.sh invocation after the rounds (critest skips every spec there)
#   --tools-from DIR  a work dir of integration/containerd/run.sh whose bin/ (critest, crictl,
#                     ginkgo, built for the same go.mod) is copied (cp -a) when $W/bin has none
#   --cri-log-level L rsrun-cri's log level (default warn; debug for a diagnosis run: it logs
#                     more, so its figures are not the measured ones)
#   --wait-quiet S    before starting, wait up to S seconds for the 1-minute load average to fall
#                     below 1.0 (default 0: do not wait)
#   --report FILE     also write the markdown tables to FILE (default $W/report.md)
#
# Work dir: $RSRUN_CONTAINERD_WORK (default /var/tmp/rsrun-cri-bench). The runs themselves are
# integration/containerd/run.sh's (its --benchmark and --hook options): the registry and the
# CNI bridge in a network namespace of their own, containerd's config (sandbox image
# registry.k8s.io/pause:3.6, the stock runc shim, cgroupfs), rsrun-cri in its --cri mode;
# results in $W/rounds/ROUND/{containerd,rsrun-cri}/benchmark/*.json (critest's per-operation
# durations) and report.json (the pod+container-from-scratch measurement), the memory figures
# in $W/rounds/memory/LABEL/memory-*.json. Everything they start is ended and removed by run.sh's
# teardown (pods through the CRI, then the server, its leftover shims, containers and mounts).
#
# Memory (measured by this script again, as run.sh's --hook, with fresh servers): N pods are made with crictl (runp, create, start), each with one busybox
# `sleep 3600` container, first with the kubelet's default PID namespace mode (CONTAINER), then
# again with a pod-shared one (POD). containerd runs its pause container (the sandbox image) in
# every pod; rsrun-cri runs rsrun-pause only in a pod that shares its PID namespace. After 10 s
# idle: the server's VmRSS and Pss, the shims' Pss (containerd-shim-runc-v2: one per
# pod; rsrun-shim: one per container, and one more for the pause in POD mode), and the CPU time
# the server and shims use over 10 s more. Pss is /proc/PID/smaps_rollup's.
#
# Load: `uptime` before and after and a 2-second sampler of the load average and of the
# compilers (rustc, cc1, go) running on the machine, summed up per critest run: the other
# engineers' builds share these 2 cores, and a run during one is not a quiet-machine figure.
set -u -o pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/../.." && pwd)
W=${RSRUN_CONTAINERD_WORK:-/var/tmp/rsrun-cri-bench}
export RSRUN_CONTAINERD_WORK=$W

die() { echo "cri-bench.sh: $*" >&2; exit 2; }
say() { echo "cri-bench.sh: $*" >&2; }

# ------------------------------------------------------------------ the memory hook (run.sh --hook)

# /proc facts of the server and its shims, as JSON on stdout.
census() { # KIND DIR SERVER_PID PODS MODE
    python3 - "$@" <<'EOF'
import json, os, sys
kind, rundir, server, pods, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]

def rollup(pid):
    out = {}
    try:
        for line in open("/proc/%d/smaps_rollup" % pid):
            f = line.split()
            if len(f) == 3 and f[2] == "kB":
                out[f[0].rstrip(":")] = int(f[1])
    except OSError:
        pass
    return out

def status(pid, key):
    try:
        for line in open("/proc/%d/status" % pid):
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None

def ticks(pid):
    try:
        f = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[12])  # utime, stime
    except (OSError, IndexError):
        return 0

procs = {}
for d in os.listdir("/proc"):
    if not d.isdigit():
        continue
    pid = int(d)
    try:
        exe = os.path.basename(os.readlink("/proc/%d/exe" % pid))
        cmd = open("/proc/%d/cmdline" % pid, "rb").read().split(b"\0")
        ppid = int(open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError):
        continue
    procs[pid] = (exe, [c.decode(errors="replace") for c in cmd if c], ppid)

if kind == "containerd":  # the shims of this run: -address RUNDIR/containerd.sock
    shims = [p for p, (exe, cmd, _) in procs.items()
             if exe == "containerd-shim-runc-v2" and rundir + "/containerd.sock" in cmd]
else:  # rsrun-shim monitors of this run's state dir (their exe is the sealed bind of the binary)
    shims = [p for p, (exe, cmd, _) in procs.items()
             if cmd and os.path.basename(cmd[0]) == "rsrun-shim" and any(c.startswith(rundir + "/") for c in cmd)]
workloads = [p for p, (_, _, ppid) in procs.items() if ppid in shims]

def summary(pids):
    r = [rollup(p) for p in pids]
    rss = sorted(x.get("Rss", 0) for x in r)
    return {"count": len(pids), "pss_kib": sum(x.get("Pss", 0) for x in r),
            "rss_median_kib": rss[len(rss) // 2] if rss else 0,
            "uss_kib": sum(x.get("Private_Clean", 0) + x.get("Private_Dirty", 0) for x in r),
            "ticks": sum(ticks(p) for p in pids)}

sr = rollup(server)
print(json.dumps({"kind": kind, "mode": mode, "pods": pods,
                  "server": {"pid": server, "vmrss_kib": status(server, "VmRSS"), "pss_kib": sr.get("Pss"),
                             "rss_anon_kib": status(server, "RssAnon"), "rss_file_kib": status(server, "RssFile"),
                             "threads": status(server, "Threads"), "ticks": ticks(server)},
                  "shims": summary(shims), "workloads": summary(workloads),
                  "workload_names": sorted(set(procs[p][0] for p in workloads))}))
EOF
}

rss_hook() {
    local c=$RUN_CRICTL ep=$RUN_ENDPOINT kind=$RUN_KIND r=$RUN_DIR
    local img=registry.k8s.io/e2e-test-images/busybox:1.29-2 mode pidmode i pod ctr n
    cc() { "$c" --runtime-endpoint "$ep" --image-endpoint "$ep" --timeout 60s "$@"; }
    cc pull "$img" >/dev/null || { echo "pull $img failed"; return 1; }
    census "$kind" "$r" "$RUN_PID" 0 none > "$r/memory-baseline.json"
    for mode in container pod; do
        case $mode in container) pidmode=1 ;; pod) pidmode=0 ;; esac
        mkdir -p "$r/idle/$mode"
        n=0
        for i in $(seq 1 "$pods"); do
            mkdir -p "$r/idle/$mode/logs/$i"
            cat > "$r/idle/$mode/pod-$i.json" <<EOF
{"metadata": {"name": "idle-$mode-$i", "namespace": "cri-bench", "uid": "idle-$mode-$i", "attempt": 0},
 "log_directory": "$r/idle/$mode/logs/$i",
 "linux": {"security_context": {"namespace_options": {"pid": $pidmode}}}}
EOF
            cat > "$r/idle/$mode/ctr.json" <<EOF
{"metadata": {"name": "sleep"}, "image": {"image": "$img"}, "command": ["sleep", "3600"],
 "log_path": "sleep.log", "linux": {}}
EOF
            pod=$(cc runp "$r/idle/$mode/pod-$i.json") || { echo "runp $mode $i failed"; continue; }
            ctr=$(cc create "$pod" "$r/idle/$mode/ctr.json" "$r/idle/$mode/pod-$i.json") \
                || { echo "create $mode $i failed"; continue; }
            cc start "$ctr" >/dev/null || { echo "start $mode $i failed"; continue; }
            n=$((n + 1))
        done
        echo "$mode: $n of $pods pods running"
        sleep 10
        census "$kind" "$r" "$RUN_PID" "$n" "$mode" > "$r/memory-$mode.json"
        sleep 10
        census "$kind" "$r" "$RUN_PID" "$n" "$mode" > "$r/memory-$mode-later.json"
        cc rmp -a -f >/dev/null 2>&1 || echo "rmp -a -f failed"
        census "$kind" "$r" "$RUN_PID" 0 "$mode-removed" > "$r/memory-$mode-removed.json"
        cat "$r/memory-$mode.json"
    done
}

if [ "${1:-}" = --rss-hook ]; then
    pods=${2:?}
    rss_hook
    exit $?
fi

# ------------------------------------------------------------------ main

bindir=$TOP/target/debug
cri_bin= shim_bin= rsrun_bin=
runc=/usr/sbin/runc
params=$HERE/benchmark-params.yml
pods=50
rounds=3
tools_from=
loglevel=warn
wait_quiet=0
report=
while [ $# -gt 0 ]; do
    case "$1" in
        --bin-dir) bindir=${2:?}; shift 2 ;;
        --cri-bin) cri_bin=${2:?}; shift 2 ;;
        --shim-bin) shim_bin=${2:?}; shift 2 ;;
        --rsrun-bin) rsrun_bin=${2:?}; shift 2 ;;
        --runc) runc=${2:?}; shift 2 ;;
        --params) params=${2:?}; shift 2 ;;
        --pods) pods=${2:?}; shift 2 ;;
        --rounds) rounds=${2:?}; shift 2 ;;
        --tools-from) tools_from=${2:?}; shift 2 ;;
        --cri-log-level) loglevel=${2:?}; shift 2 ;;
        --wait-quiet) wait_quiet=${2:?}; shift 2 ;;
        --report) report=${2:?}; shift 2 ;;
        -h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
[ "$(id -u)" = 0 ] || die "needs root"
[ "$pods" -ge 0 ] 2>/dev/null || die "--pods wants a number"
[ "$rounds" -ge 1 ] 2>/dev/null || die "--rounds wants a number"
[ -f "$params" ] || die "no parameters file $params"
report=${report:-$W/report.md}
cri_bin=${cri_bin:-$bindir/rsrun-cri}
shim_bin=${shim_bin:-$bindir/rsrun-shim}
rsrun_bin=${rsrun_bin:-$bindir/rsrun}
for b in "$cri_bin" "$shim_bin" "$rsrun_bin"; do
    [ -x "$b" ] || die "$b missing (cargo build -p rsrun -p rsrun-shim -p rsrun-cri)"
done
[ -x "$runc" ] || die "$runc is not executable"
mkdir -p "$W"
if [ ! -x "$W/bin/critest" ] && [ -n "$tools_from" ]; then
    [ -x "$tools_from/bin/critest" ] || die "--tools-from: no $tools_from/bin/critest"
    cp -a "$tools_from/bin" "$W/" || die "copying $tools_from/bin failed"
fi

# The runtime keeps a read-only bind of each binary it seals itself from (rsrun::seal,
# /run/rsrun-sealed/DEV-INO): those of our copies go with them (before a new copy, and at the end).
unseal_copies() {
    local b s
    for b in "$W"/rsrun-bin/*; do
        [ -f "$b" ] || continue
        s=/run/rsrun-sealed/$(stat -c '%d-%i' "$b")
        [ -e "$s" ] || continue
        umount -l "$s" 2>/dev/null
        rm -f "$s"
    done
}
unseal_copies

# The binaries under test, frozen for the run (rsrun-cri finds rsrun-shim beside itself, run.sh
# the rsrun it deletes leftovers with).
rm -rf "$W/rsrun-bin" "$W/rounds" "$W/runs"
mkdir -p "$W/rsrun-bin" "$W/rounds"
cp "$cri_bin" "$W/rsrun-bin/rsrun-cri" && cp "$shim_bin" "$W/rsrun-bin/rsrun-shim" &&
    cp "$rsrun_bin" "$W/rsrun-bin/rsrun" || die "copying the binaries failed"
{
    echo "binaries copied $(date -u +%FT%TZ):"
    for b in "rsrun-cri:$cri_bin" "rsrun-shim:$shim_bin" "rsrun:$rsrun_bin"; do
        echo "  ${b#*:}: modified $(stat -c '%y' "${b#*:}"), $(stat -c '%s bytes' "$W/rsrun-bin/${b%%:*}")," \
             "sha256 $(sha256sum < "$W/rsrun-bin/${b%%:*}" | cut -c1-16)"
    done
    echo "repository HEAD $(git -C "$TOP" rev-parse --short HEAD 2>/dev/null)," \
         "$(git -C "$TOP" status --porcelain 2>/dev/null | wc -l) uncommitted paths at copy time"
    echo "containerd: $(containerd --version 2>/dev/null)"
    echo "runc: $("$runc" --version 2>/dev/null | head -n1)"
    echo "kernel: $(uname -r), $(nproc) CPUs"
    echo "critest parameters: $params; rsrun-cri log level $loglevel; $rounds rounds; $pods pods"
} > "$W/versions.txt"

# The harness, copied: bash reads a script as it runs it, and run.sh may be edited meanwhile.
rm -rf "$W/harness"
mkdir -p "$W/harness"
cp -a "$TOP/integration/containerd" "$W/harness/" && cp -a "$HERE/cri-bench.sh" "$W/harness/cri-bench.sh" \
    || die "copying the harness failed"

if [ "$wait_quiet" -gt 0 ]; then
    end=$((SECONDS + wait_quiet))
    while [ $SECONDS -lt $end ] && awk '{ exit !($1 >= 1.0) }' /proc/loadavg; do
        say "load $(cut -d' ' -f1-3 /proc/loadavg): waiting for it to fall below 1.0"
        sleep 15
    done
fi

# Load sampler: epoch, 1-minute load, and the compilers running (by /proc/PID/comm).
sampler() {
    while :; do
        local n=0 p comm
        for p in /proc/[0-9]*; do
            read -r comm 2>/dev/null < "$p/comm" || continue
            case "$comm" in rustc|cc1|cc1plus|ld|go|compile|link) n=$((n + 1)) ;; esac
        done
        echo "$(date +%s) $(cut -d' ' -f1 /proc/loadavg) $n"
        sleep 2
    done
}
uptime > "$W/load-before.txt"
sampler > "$W/load-samples.txt" 2>/dev/null &
sampler_pid=$!
trap 'kill "$sampler_pid" 2>/dev/null; unseal_copies' EXIT
say "load before: $(cat "$W/load-before.txt")"

# Each round is one run.sh invocation: registry, containerd + critest, rsrun-cri + critest. The
# idle memory is one more invocation after them, whose critest runs no spec (-s .), so that
# making and removing 2 × N pods disturbs no timed round; its servers are fresh.
rc=0
for k in $(seq 1 "$rounds") memory; do
    hookargs=()
    if [ "$k" = memory ]; then
        [ "$pods" -gt 0 ] || continue
        hookargs=(-s . --hook "'$W/harness/cri-bench.sh' --rss-hook $pods")
        say "idle memory, $pods pods per mode (load $(cut -d' ' -f1-3 /proc/loadavg))"
    else
        say "round $k of $rounds (load $(cut -d' ' -f1-3 /proc/loadavg))"
    fi
    "$W/harness/containerd/run.sh" -r "containerd=$runc" --cri "rsrun-cri=$W/rsrun-bin/rsrun-cri" \
        --benchmark "$params" --cri-log-level "$loglevel" -t 900 "${hookargs[@]+"${hookargs[@]}"}" \
        > "$W/run-$k.log" 2>&1
    r=$?
    [ "$r" = 0 ] || { say "$k: run.sh exit $r (see $W/run-$k.log, $W/rounds/$k/*/critest.log)"; rc=$r; }
    mv "$W/runs" "$W/rounds/$k" || die "no $W/runs after $k"
done
kill "$sampler_pid" 2>/dev/null
wait "$sampler_pid" 2>/dev/null
trap - EXIT
unseal_copies
uptime > "$W/load-after.txt"
say "load after: $(cat "$W/load-after.txt")"

python3 - "$W" "$pods" "$rounds" <<'EOF' | tee "$report"
import json, os, re, sys
from datetime import datetime
W, pods, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
labels = ["containerd", "rsrun-cri"]

def pct(xs, q):  # linear interpolation between closest ranks
    xs = sorted(xs)
    if not xs:
        return None
    k = (len(xs) - 1) * q
    i = int(k)
    return xs[i] if i + 1 >= len(xs) else xs[i] + (xs[i + 1] - xs[i]) * (k - i)

# critest's operation names -> the CRI RPC they time
CRI = {"CreatePod": "RunPodSandbox", "StatusPod": "PodSandboxStatus", "StopPod": "StopPodSandbox",
       "RemovePod": "RemovePodSandbox", "CreateContainer": "CreateContainer",
       "StartContainer": "StartContainer", "StatusContainer": "ContainerStatus",
       "StopContainer": "StopContainer", "RemoveContainer": "RemoveContainer",
       "PullImage": "PullImage", "StatusImage": "ImageStatus", "RemoveImage": "RemoveImage",
       "ListImages": "ListImages"}
FILES = ["pod_benchmark_data.json", "container_benchmark_data.json",
         "image_lifecycle_benchmark_data.json", "image_listing_benchmark_data.json"]
SCRATCH = "pod + container from scratch"
BOTH = "CreateContainer + StartContainer"

def epoch(s):  # ginkgo's times: RFC 3339 with nanoseconds
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", s or "")
    if not m:
        return None
    frac = (m.group(2) or ".0")[:7]
    return datetime.fromisoformat(m.group(1) + frac + m.group(3).replace("Z", "+00:00")).timestamp()

# data[op][label][round] = [ms, ...]
data, order, runs = {}, [], {}
def add(key, label, k, v):
    if key not in order:
        order.append(key)
    data.setdefault(key, {}).setdefault(label, {}).setdefault(k, []).append(v)

for k in range(1, rounds + 1):
    for label in labels:
        d = os.path.join(W, "rounds", str(k), label)
        for f in FILES:
            p = os.path.join(d, "benchmark", f)
            if not os.path.exists(p):
                continue
            rs = json.load(open(p))
            for dp in rs["datapoints"]:
                ops = dict(zip(rs["operationsNames"], dp["operationsDurationsNs"]))
                for name, ns in ops.items():
                    add(CRI.get(name, name), label, k, ns / 1e6)
                if "CreateContainer" in ops and "StartContainer" in ops:
                    add(BOTH, label, k, (ops["CreateContainer"] + ops["StartContainer"]) / 1e6)
        # "start a container from scratch": one gmeasure duration per round in ginkgo's report
        rep = os.path.join(d, "report.json")
        states, start, end = {}, None, None
        if os.path.exists(rep):
            for suite in json.load(open(rep)):
                start, end = epoch(suite.get("StartTime")), epoch(suite.get("EndTime"))
                for s in suite.get("SpecReports") or []:
                    if s.get("LeafNodeType") == "It":
                        states[s.get("State")] = states.get(s.get("State"), 0) + 1
                    for e in s.get("ReportEntries") or []:
                        try:
                            exp = json.loads(e["Value"]["AsJSON"])
                        except (KeyError, TypeError, ValueError):
                            continue
                        for m in exp.get("Measurements") or []:
                            for x in m.get("Durations") or []:
                                add(SCRATCH, label, k, x / 1e6)
        runs[(k, label)] = {"states": states, "start": start, "end": end}

def ms(x):
    return "-" if x is None else ("%.2f" % x if x < 10 else "%.1f" % x)

print("## critest -benchmark: p50 and p90 per operation, ms (all %d rounds pooled)\n" % rounds)
print("| operation | samples | containerd p50 | containerd p90 | rsrun-cri p50 | rsrun-cri p90 | p50 ratio | per-round p50 ratios | target ≤ 0.5 |")
print("|---|---:|---:|---:|---:|---:|---:|---|---|")
for key in order:
    per = data[key]
    a = [v for r in per.get("containerd", {}).values() for v in r]
    b = [v for r in per.get("rsrun-cri", {}).values() for v in r]
    a50, b50 = pct(a, .5), pct(b, .5)
    ratio = b50 / a50 if a50 and b50 is not None else None
    rr = []
    for k in range(1, rounds + 1):
        x, y = pct(per.get("containerd", {}).get(k, []), .5), pct(per.get("rsrun-cri", {}).get(k, []), .5)
        rr.append("%.2f" % (y / x) if x and y is not None else "-")
    target = "-" if ratio is None else ("met" if ratio <= 0.5 else "**not met**")
    if key == BOTH:
        target = "(sum per sample)"
    print("| %s | %d/%d | %s | %s | %s | %s | %s | %s | %s |" % (
        key, len(a), len(b), ms(a50), ms(pct(a, .9)), ms(b50), ms(pct(b, .9)),
        "%.2f" % ratio if ratio is not None else "-", " ".join(rr), target))
print()
samples = []
try:
    for line in open(os.path.join(W, "load-samples.txt")):
        t, l, n = line.split()
        samples.append((int(t), float(l), int(n)))
except (OSError, ValueError):
    pass
for (k, label), v in sorted(runs.items()):
    sel = [x for x in samples if v["start"] and v["end"] and v["start"] - 1 <= x[0] <= v["end"] + 1]
    load = ""
    if sel:
        load = "; 1-min load %.2f–%.2f, compilers running in %d of %d samples" % (
            min(x[1] for x in sel), max(x[1] for x in sel), sum(1 for x in sel if x[2]), len(sel))
    dur = "%.0f s" % (v["end"] - v["start"]) if v["start"] and v["end"] else "?"
    print("- round %d, %s: specs %s, %s%s" % (k, label, v["states"] or "no report", dur, load))
if samples:
    print("- whole run: 1-min load %.2f–%.2f, compilers running in %d of %d samples (every 2 s)" % (
        min(x[1] for x in samples), max(x[1] for x in samples), sum(1 for x in samples if x[2]), len(samples)))
for f in ("load-before.txt", "load-after.txt"):
    try:
        print("- %s: `%s`" % (f[:-4].replace("-", " "), open(os.path.join(W, f)).read().strip()))
    except OSError:
        pass

if pods:
    print("\n## Idle memory with %d pods of one `sleep` container each (fresh servers, 10 s after the last start)\n" % pods)
    print("| server | PID mode | pods | server VmRSS | server Pss | shims | shim Pss total | shim Pss per pod | shim RSS (median) | pause + sleep Pss per pod | server CPU ticks in 10 s | shims' CPU ticks in 10 s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    mib = lambda k: "%.1f MiB" % (k / 1024.0) if k is not None else "-"
    mem = {}
    for label in labels:
        d = os.path.join(W, "rounds", "memory", label)
        try:
            base = json.load(open(os.path.join(d, "memory-baseline.json")))
            print("| %s | (no pods yet) | 0 | %s | %s | %d | | | | | | |" % (
                label, mib(base["server"]["vmrss_kib"]), mib(base["server"]["pss_kib"]), base["shims"]["count"]))
        except (OSError, ValueError, KeyError):
            pass
        for mode in ("container", "pod"):
            try:
                m = json.load(open(os.path.join(d, "memory-%s.json" % mode)))
                later = json.load(open(os.path.join(d, "memory-%s-later.json" % mode)))
            except (OSError, ValueError):
                print("| %s | %s | no figures (see %s/hook.log) |" % (label, mode.upper(), d))
                continue
            mem[(label, mode)] = m
            n = max(m["pods"], 1)
            print("| %s | %s | %d | %s | %s | %d | %s | %.2f MiB | %s | %.2f MiB | %d | %d |" % (
                label, mode.upper(), m["pods"], mib(m["server"]["vmrss_kib"]), mib(m["server"]["pss_kib"]),
                m["shims"]["count"], mib(m["shims"]["pss_kib"]), m["shims"]["pss_kib"] / 1024.0 / n,
                mib(m["shims"]["rss_median_kib"]), m["workloads"]["pss_kib"] / 1024.0 / n,
                later["server"]["ticks"] - m["server"]["ticks"], later["shims"]["ticks"] - m["shims"]["ticks"]))
    print()
    for mode in ("container", "pod"):
        a, b = mem.get(("containerd", mode)), mem.get(("rsrun-cri", mode))
        if a and b:
            print("- %s mode: server VmRSS rsrun-cri/containerd %.2f (target < 1: %s); shim Pss per pod rsrun-cri/containerd %.2f" % (
                mode.upper(), b["server"]["vmrss_kib"] / a["server"]["vmrss_kib"],
                "met" if b["server"]["vmrss_kib"] < a["server"]["vmrss_kib"] else "**not met**",
                (b["shims"]["pss_kib"] / max(b["pods"], 1)) / max(a["shims"]["pss_kib"] / max(a["pods"], 1), 1)))
    for label in labels:
        for mode in ("container", "pod"):
            try:
                m = json.load(open(os.path.join(W, "rounds", "memory", label, "memory-%s-removed.json" % mode)))
                if m["shims"]["count"]:
                    print("- %s: %d shims left after removing the %s-mode pods" % (label, m["shims"]["count"], mode))
            except (OSError, ValueError):
                pass
print()
print("```\n" + open(os.path.join(W, "versions.txt")).read().rstrip() + "\n```")
EOF
exit "$rc"
