#!/bin/bash
# Streaming benchmark (issue 11): exec and port-forward through rsrun-cri's streaming server
# against Debian's containerd 1.6 (+ runc), side by side in one invocation of
# integration/containerd/run.sh (containerd first, then rsrun-cri, fresh servers, same registry,
# same private network namespace). A benchmark, not a test: it asserts no timing.
#
# Usage: stream-bench.sh [--bin-dir DIR] [--runc PATH] [--iters N] [--rt-lines N] [--mib N]
#                        [--pf-runs N] [--pod-end direct|pipe] [--tools-from DIR] [--report FILE]
#   --bin-dir DIR    rsrun-cri, rsrun-shim, rsrun (default <repo>/target/debug), copied to $W/rsrun-bin
#   --iters N        crictl invocations per exec figure (default 200)
#   --rt-lines N     lines echoed through one open `exec -i cat` session (default 200)
#   --mib N          port-forward transfer size in MiB (default 1024)
#   --pf-runs N      transfers per direction (default 3)
#   --pod-end E      the pod's end of each transfer: `direct` (default), busybox `nc -l -e dd`:
#                    dd reads or writes the socket itself, 1 MiB at a time; `pipe`, busybox
#                    `dd | nc` (nc relays through a pipe, 8 KiB at a time: it was the bound of
#                    both servers' pod→client figure, 1.8 CPU s per GiB in the pod)
#   --tools-from DIR a run.sh work dir whose bin/ (crictl, critest, ginkgo) and image-inputs/
#                    are copied (cp -a) when $W has none (default /var/tmp/rsrun-cri-critest)
#   --report FILE    also write the markdown table to FILE (default $W/report.md)
#
# What is timed (wall clock, time.perf_counter in a Python driver run as run.sh's --hook inside
# the network namespace; one pod of one busybox container per server):
#   exec-sync   `crictl exec -s CTR true`: one crictl process, ExecSync over the CRI socket
#   exec-echo   `crictl exec CTR echo hi` (reads "hi"): one crictl process, Exec RPC, then the
#               SPDY stream to the server's streaming URL, stdout back, exit status
#   rt-line     per-line round trip inside one open `crictl exec -i CTR cat` (SPDY): write
#               "lineN\n" to crictl's stdin, read it back from its stdout; session setup excluded
#   crictl-version  `crictl version` (Version RPC): the floor every crictl process pays
#   pf-down     `crictl port-forward POD 18080:8080`; the container runs busybox
#               `nc -l -p 8080 -e dd if=/dev/zero bs=1M count=N` in a loop (`--pod-end pipe`:
#               `dd … | nc -l -p 8080`); timed from connect() to the local port until N MiB
#               were received
#   pf-up       same, into `nc -l -p 900K -e dd of=/dev/null bs=1M` (`pipe`: `tail -f /dev/null
#               | nc -l -p 900K > /dev/null`; one listener per transfer, forwarded from 1900K);
#               timed from connect() until N MiB were sent, the write side shut down and the
#               server's EOF came back (all bytes through)
# Results: $W/runs/{containerd,rsrun-cri}/stream.json (every sample), hook.log; $W/report.md.
set -u -o pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/../.." && pwd)
W=${RSRUN_CONTAINERD_WORK:-/var/tmp/rsrun-stream-bench}
export RSRUN_CONTAINERD_WORK=$W
die() { echo "stream-bench.sh: $*" >&2; exit 2; }
say() { echo "stream-bench.sh: $*" >&2; }

# ------------------------------------------------------------------ the hook (inside run.sh)
if [ "${1:-}" = --hook ]; then
    iters=${2:?} rtlines=${3:?} mib=${4:?} pfruns=${5:?} podend=${6:-direct}
    exec python3 - "$RUN_CRICTL" "$RUN_ENDPOINT" "$RUN_DIR" "$RUN_KIND" "$iters" "$rtlines" "$mib" "$pfruns" "$podend" <<'EOF'
import json, os, socket, subprocess, sys, time
crictl, ep, rdir, kind = sys.argv[1:5]
iters, rtlines, mib, pfruns = map(int, sys.argv[5:9])
podend = sys.argv[9]
img = "registry.k8s.io/e2e-test-images/busybox:1.29-2"
base = [crictl, "--runtime-endpoint", ep, "--image-endpoint", ep, "--timeout", "60s"]
def cc(*a, **kw):
    return subprocess.run(base + list(a), check=True, capture_output=True, text=True, **kw).stdout.strip()
out = {"kind": kind, "pod-end": podend}
d = os.path.join(rdir, "stream"); os.makedirs(d + "/logs", exist_ok=True)
cc("pull", img)
json.dump({"metadata": {"name": "stream", "namespace": "stream-bench", "uid": "stream-1", "attempt": 0},
           "log_directory": d + "/logs", "linux": {}}, open(d + "/pod.json", "w"))
# nc's stdin must not end: busybox nc closes the connection soon after EOF on its stdin (the
# container's is /dev/null), which cut the upload short after about 1 s with containerd
# (and the pipeline then never ends: one listener per upload, on ports 9001, 9002, ...)
if podend == "pipe":
    server = "".join("(tail -f /dev/null | nc -l -p %d > /dev/null) & " % (9001 + i) for i in range(pfruns)) + \
        "while :; do dd if=/dev/zero bs=1048576 count=%d 2>/dev/null | nc -l -p 8080; done" % mib
else:
    # nc execs dd with the connection as its stdin and stdout: no relay in the pod.
    server = "".join("nc -l -p %d -e dd of=/dev/null bs=1048576 & " % (9001 + i) for i in range(pfruns)) + \
        "while :; do nc -l -p 8080 -e dd if=/dev/zero bs=1048576 count=%d; done" % mib
json.dump({"metadata": {"name": "srv"}, "image": {"image": img}, "command": ["sh", "-c", server],
           "log_path": "srv.log", "linux": {}}, open(d + "/ctr.json", "w"))
pod = cc("runp", d + "/pod.json")
ctr = cc("create", pod, d + "/ctr.json", d + "/pod.json")
cc("start", ctr)
time.sleep(1)

def timed(args, expect=None):
    xs = []
    for _ in range(iters):
        t = time.perf_counter()
        r = subprocess.run(base + args, capture_output=True, text=True)
        xs.append((time.perf_counter() - t) * 1e3)
        if r.returncode != 0 or (expect is not None and r.stdout.strip() != expect):
            raise SystemExit("%s: rc %d out %r err %r" % (args, r.returncode, r.stdout, r.stderr))
    return xs

for _ in range(5):  # warm-up
    cc("exec", "-s", ctr, "true"); cc("exec", ctr, "true")
out["crictl-version"] = timed(["version"])
out["exec-sync"] = timed(["exec", "-s", ctr, "true"])
out["exec-echo"] = timed(["exec", ctr, "echo", "hi"], "hi")

p = subprocess.Popen(base + ["exec", "-i", ctr, "cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
rt = []
for i in range(rtlines + 5):
    line = b"line%d\n" % i
    t = time.perf_counter()
    p.stdin.write(line)
    got = b""
    while not got.endswith(b"\n"):
        c = p.stdout.read(1)
        if not c:
            raise SystemExit("exec -i cat: EOF")
        got += c
    if i >= 5:
        rt.append((time.perf_counter() - t) * 1e3)
    assert got == line, got
p.stdin.close(); p.wait(30)
out["rt-line"] = rt

pf = subprocess.Popen(base + ["port-forward", pod, "18080:8080"] + ["%d:%d" % (19001 + i, 9001 + i) for i in range(pfruns)],
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
n = mib << 20
seen = 0
while seen < 1 + pfruns:
    l = pf.stdout.readline()
    if not l:
        raise SystemExit("port-forward exited")
    seen += "Forwarding from" in l
down, up = [], []
# CPU time of each transfer, by process: where the 2 cores go (crictl, the server, this
# driver, and the rest: the container's nc and dd, the kernel's network work).
hz = os.sysconf("SC_CLK_TCK")
srv = int(os.environ["RUN_PID"])
def ticks(pid):
    try:
        f = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[12])
    except (OSError, IndexError, ValueError):
        return 0
def busy():
    f = list(map(int, open("/proc/stat").readline().split()[1:]))
    return sum(f) - f[3] - f[4]
def sample():
    return {"crictl": ticks(pf.pid), "server": ticks(srv), "driver": ticks(os.getpid()), "all": busy()}
def spent(a, b, direction):
    d = {k: (b[k] - a[k]) / hz for k in a}
    d["rest"] = d["all"] - d["crictl"] - d["server"] - d["driver"]
    d["dir"] = direction
    out.setdefault("pf-cpu", []).append(d)
buf = bytearray(1 << 20)
zero = bytes(1 << 20)
for run in range(pfruns):
    time.sleep(0.5)
    c0 = sample()
    t = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", 18080))
    got = 0
    mv = memoryview(buf)
    while got < n:
        k = s.recv_into(mv)
        if not k:
            raise SystemExit("pf-down: EOF after %d bytes" % got)
        got += k
    down.append(time.perf_counter() - t)
    spent(c0, sample(), "down")
    s.close()
    time.sleep(0.5)
    c0 = sample()
    t = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", 19001 + run))
    sent = 0
    try:
        for _ in range(mib):
            s.sendall(zero)
            sent += len(zero)
        s.shutdown(socket.SHUT_WR)
        s.settimeout(120)
        while s.recv(65536):
            pass
        up.append(time.perf_counter() - t)
        spent(c0, sample(), "up")
    except OSError as e:  # recorded, not fatal: the other figures still count
        out.setdefault("pf-up-errors", []).append("%s after %d bytes sent, %.3f s" % (e, sent, time.perf_counter() - t))
    s.close()
pf.terminate(); pf.wait(10)
out["pf-down-s"], out["pf-up-s"], out["pf-mib"] = down, up, mib
cc("rmp", "-a", "-f")
json.dump(out, open(os.path.join(rdir, "stream.json"), "w"))
print("done", {k: (sorted(v)[len(v) // 2] if isinstance(v, list) and v else v) for k, v in out.items()})
EOF
fi

# ------------------------------------------------------------------ main
bindir=$TOP/target/debug runc=/usr/sbin/runc iters=200 rtlines=200 mib=1024 pfruns=3 podend=direct
tools_from=/var/tmp/rsrun-cri-critest report=
while [ $# -gt 0 ]; do
    case "$1" in
        --bin-dir) bindir=${2:?}; shift 2 ;;
        --runc) runc=${2:?}; shift 2 ;;
        --iters) iters=${2:?}; shift 2 ;;
        --rt-lines) rtlines=${2:?}; shift 2 ;;
        --mib) mib=${2:?}; shift 2 ;;
        --pf-runs) pfruns=${2:?}; shift 2 ;;
        --pod-end) podend=${2:?}; shift 2
                   case $podend in direct|pipe) ;; *) die "--pod-end: direct or pipe, not $podend" ;; esac ;;
        --tools-from) tools_from=${2:?}; shift 2 ;;
        --report) report=${2:?}; shift 2 ;;
        -h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
[ "$(id -u)" = 0 ] || die "needs root"
report=${report:-$W/report.md}
for b in rsrun-cri rsrun-shim rsrun; do [ -x "$bindir/$b" ] || die "$bindir/$b missing"; done
mkdir -p "$W"
[ -x "$W/bin/crictl" ] || cp -a "$tools_from/bin" "$W/" || die "copying $tools_from/bin failed"
[ -d "$W/image-inputs" ] || [ ! -d "$tools_from/image-inputs" ] || cp -a "$tools_from/image-inputs" "$W/"

unseal_copies() { # the runtime's read-only binds of our copies (rsrun::seal)
    local b s
    for b in "$W"/rsrun-bin/*; do
        [ -f "$b" ] || continue
        s=/run/rsrun-sealed/$(stat -c '%d-%i' "$b")
        [ -e "$s" ] || continue
        umount -l "$s" 2>/dev/null; rm -f "$s"
    done
}
unseal_copies
rm -rf "$W/rsrun-bin" "$W/runs" "$W/harness"
mkdir -p "$W/rsrun-bin" "$W/harness"
for b in rsrun-cri rsrun-shim rsrun; do cp "$bindir/$b" "$W/rsrun-bin/$b" || die "copying $b failed"; done
cp -a "$TOP/integration/containerd" "$W/harness/" && cp -a "$HERE/stream-bench.sh" "$W/harness/" || die "copying the harness failed"
trap unseal_copies EXIT
uptime > "$W/load-before.txt"
say "load before: $(cat "$W/load-before.txt")"
"$W/harness/containerd/run.sh" -r "containerd=$runc" --cri "rsrun-cri=$W/rsrun-bin/rsrun-cri" -s . -t 600 \
    --hook "'$W/harness/stream-bench.sh' --hook $iters $rtlines $mib $pfruns $podend" > "$W/run.log" 2>&1
say "run.sh exit $? (see $W/run.log)"
uptime > "$W/load-after.txt"
say "load after: $(cat "$W/load-after.txt")"

python3 - "$W" "$bindir" <<'EOF' | tee "$report"
import json, os, sys
W, bindir = sys.argv[1:3]
def pct(xs, q):
    xs = sorted(xs)
    if not xs: return None
    k = (len(xs) - 1) * q; i = int(k)
    return xs[i] if i + 1 >= len(xs) else xs[i] + (xs[i + 1] - xs[i]) * (k - i)
r = {}
for label in ("containerd", "rsrun-cri"):
    try:
        r[label] = json.load(open(os.path.join(W, "runs", label, "stream.json")))
    except (OSError, ValueError):
        print("- %s: no figures (see %s/runs/%s/hook.log)" % (label, W, label))
print("| figure | containerd p50 | containerd p90 | rsrun-cri p50 | rsrun-cri p90 | p50 ratio rsrun-cri/containerd |")
print("|---|---:|---:|---:|---:|---:|")
for key, what in (("exec-sync", "ExecSync `true` (`crictl exec -s`), ms"),
                  ("exec-echo", "`crictl exec CTR echo hi` (Exec + SPDY), ms"),
                  ("rt-line", "line round trip in open `crictl exec -i CTR cat`, ms"),
                  ("crictl-version", "`crictl version` (crictl floor), ms")):
    a = r.get("containerd", {}).get(key, []); b = r.get("rsrun-cri", {}).get(key, [])
    f = lambda x: "-" if x is None else "%.2f" % x
    a50, b50 = pct(a, .5), pct(b, .5)
    print("| %s (n=%d/%d) | %s | %s | %s | %s | %s |" % (what, len(a), len(b), f(a50), f(pct(a, .9)), f(b50),
          f(pct(b, .9)), "%.2f" % (b50 / a50) if a50 and b50 is not None else "-"))
for key, what in (("pf-down-s", "port-forward pod→client"), ("pf-up-s", "port-forward client→pod")):
    a = r.get("containerd", {}).get(key, []); b = r.get("rsrun-cri", {}).get(key, [])
    mib = (r.get("containerd") or r.get("rsrun-cri") or {}).get("pf-mib", 0)
    end = (r.get("containerd") or r.get("rsrun-cri") or {}).get("pod-end", "pipe")
    t = lambda xs: "-" if not xs else "%.1f s (%.0f MiB/s)" % (pct(xs, .5), mib / pct(xs, .5))
    runs = lambda xs: "/".join("%.1f" % x for x in xs)
    print("| %s %d MiB (pod end: %s), median of %s s / %s s | %s | | %s | | %s (time; throughput ratio %s) |" % (
        what, mib, end, runs(a) or "-", runs(b) or "-", t(a), t(b),
        "%.2f" % (pct(b, .5) / pct(a, .5)) if a and b else "-",
        "%.2f" % (pct(a, .5) / pct(b, .5)) if a and b else "-"))
print()
# Where the CPU went during the transfers (medians over the transfers of each direction).
for label, x in r.items():
    for direction in ("down", "up"):
        ds = [d for d in x.get("pf-cpu", []) if d["dir"] == direction]
        if ds:
            m = lambda k: pct([d[k] for d in ds], .5)
            print("- %s, port-forward %s: CPU s per transfer: crictl %.2f, server %.2f, driver %.2f, "
                  "rest (container, kernel) %.2f; all %.2f of %.2f s wall x 2 cores" % (
                      label, "pod→client" if direction == "down" else "client→pod", m("crictl"),
                      m("server"), m("driver"), m("rest"), m("all"),
                      pct(x.get("pf-down-s" if direction == "down" else "pf-up-s", []), .5) or 0))
for label, x in r.items():
    for e in x.get("pf-up-errors", []):
        print("- %s: port-forward client→pod failed: %s" % (label, e))
for f in ("load-before.txt", "load-after.txt"):
    try: print("- %s: `%s`" % (f[:-4].replace("-", " "), open(os.path.join(W, f)).read().strip()))
    except OSError: pass
print("- binaries: %s (copied to %s/rsrun-bin)" % (bindir, W))
EOF
