#!/bin/bash
# Benchmarks `RUNTIME run` of /bin/true for rsrun, Debian's runc and crun.
#
# Usage: bench.sh [-n ROUNDS] [-m RUNS] [--steps] [-w WARMUP] [-o FILE] [--runtimes LIST]
#   -n ROUNDS    rounds (default 3)
#   -m RUNS      paired runs per round (default 50): each pair runs every
#                runtime once, in an order that rotates from pair to pair
#   --steps      time `create`, `start` and `delete` separately instead of `run`
#   -w WARMUP    untimed runs per runtime first (default 3)
#   -o FILE      also write the markdown report to FILE
#   --runtimes   comma-separated subset of rsrun,runc,crun (default: all three)
#
# Runtimes: RSRUN (default: the static release build of integration/build-release.sh), RUNC (default
# /usr/sbin/runc), CRUN (default /usr/bin/crun). A runtime whose binary is
# missing is skipped with a message.
#
# The bundle (built once into $BENCH_WORKDIR/bundle, default
# /var/tmp/rsrun-bench): Debian's busybox-static as rootfs, the config of
# `runc spec` (its namespaces, read-only root) with terminal false and args
# /bin/true. Every run uses a new container ID; `run` deletes the container
# when /bin/true exits, and after every run the script checks (untimed) that
# no state or cgroup is left, removing and counting any.
#
# crun 1.8.1 refuses this host's hybrid cgroup layout unless
# /sys/fs/cgroup/unified/cgroup.controllers reads empty: `crun-hybrid --hold`
# (beside this script) keeps a mount namespace where it does, and spawnstat
# enters that namespace before its clock starts and execs crun itself, so the
# figures are crun's own, with no wrapper process timed or measured.
#
# Timing and RSS come from spawnstat.c (built with cc into the work dir):
# wall time from spawn to reap, and ru_maxrss of the runtime's process.
# The report is markdown for docs/benchmarks.md, on stdout.
set -u
set -o pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/../.." && pwd)
WORK=${BENCH_WORKDIR:-/var/tmp/rsrun-bench}

rounds=3 runs=50 warmup=3 mode=run outfile= only=rsrun,runc,crun
usage() { sed -n '2,/^set -u/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
while [ $# -gt 0 ]; do
    case "$1" in
        -n) rounds=${2:?}; shift 2 ;;
        -m) runs=${2:?}; shift 2 ;;
        -w) warmup=${2:?}; shift 2 ;;
        -o) outfile=${2:?}; shift 2 ;;
        --steps) mode=steps; shift ;;
        --runtimes) only=${2:?}; shift 2 ;;
        -h|--help) usage 0 ;;
        *) echo "bench.sh: unknown argument: $1" >&2; usage 2 ;;
    esac
done

die() { echo "bench.sh: $*" >&2; exit 2; }
[ "$(id -u)" = 0 ] || die "must run as root"
command -v python3 >/dev/null || die "python3 is needed"
mkdir -p "$WORK" || die "cannot create $WORK"

# ------------------------------------------------------------- spawnstat --
spawnstat=$WORK/spawnstat
key=$(sha256sum "$HERE/spawnstat.c" | cut -c1-16)
if [ ! -x "$spawnstat" ] || [ "$(cat "$WORK/.spawnstat" 2>/dev/null)" != "$key" ]; then
    cc=$(command -v cc || command -v gcc) || die "a C compiler (cc) is needed to build spawnstat"
    # Static when libc.a is there: a smaller helper carries less RSS into the child.
    "$cc" -O2 -Wall -static -o "$spawnstat.new" "$HERE/spawnstat.c" 2>/dev/null \
        || "$cc" -O2 -Wall -o "$spawnstat.new" "$HERE/spawnstat.c" || die "building spawnstat failed"
    mv "$spawnstat.new" "$spawnstat" && echo "$key" > "$WORK/.spawnstat"
fi

# ---------------------------------------------------------------- bundle --
runc_bin=${RUNC:-/usr/sbin/runc}
[ -x "$runc_bin" ] || runc_bin=$(command -v runc || true)
bundle=$WORK/bundle
bb=/bin/busybox
if ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed'; then
    echo "installing busybox-static ..." >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q busybox-static >&2 \
        || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q busybox-static >&2; } \
        || die "need Debian's busybox-static (/bin/busybox)"
fi
key=$(cat "$bb" "$0" | sha256sum | cut -c1-16)
if [ ! -f "$bundle/config.json" ] || [ "$(cat "$WORK/.bundle" 2>/dev/null)" != "$key" ]; then
    [ -n "$runc_bin" ] || die "runc is needed once, for \`runc spec\`"
    echo "building $bundle ..." >&2
    new=$WORK/bundle.$$
    rm -rf "$new" && mkdir -p "$new/rootfs" || die "cannot create $new"
    r=$new/rootfs
    mkdir -p "$r/bin" "$r/proc" "$r/sys" "$r/dev" "$r/tmp" "$r/etc" "$r/root"
    cp "$bb" "$r/bin/busybox" || die "cannot copy $bb"
    for a in $("$bb" --list); do [ "$a" = busybox ] || ln -s busybox "$r/bin/$a"; done
    echo 'root:x:0:0:root:/root:/bin/sh' > "$r/etc/passwd"
    echo 'root:x:0:' > "$r/etc/group"
    (cd "$new" && "$runc_bin" spec) || die "runc spec failed"
    python3 - "$new/config.json" <<'PY' || die "editing config.json failed"
import json, sys
p = sys.argv[1]
c = json.load(open(p))
c["process"]["terminal"] = False
c["process"]["args"] = ["/bin/true"]
json.dump(c, open(p, "w"), indent=2)
PY
    rm -rf "$bundle" && mv "$new" "$bundle" && echo "$key" > "$WORK/.bundle"
fi

# -------------------------------------------------------------- runtimes --
holder=
cleanup() { [ -n "$holder" ] && kill "$holder" 2>/dev/null; }
trap cleanup EXIT
trap 'exit 130' INT TERM

args=()
for name in ${only//,/ }; do
    case "$name" in
        rsrun) bin=${RSRUN:-$TOP/target/$(rustc -vV | sed -n 's/^host: //p')/release/rsrun} ;;
        runc) bin=${RUNC:-/usr/sbin/runc} ;;
        crun) bin=${CRUN:-/usr/bin/crun} ;;
        *) die "unknown runtime $name (rsrun, runc, crun)" ;;
    esac
    if [ ! -x "$bin" ]; then
        echo "skipping $name: $bin not found (set ${name^^}=PATH)" >&2
        continue
    fi
    if [ "$name" = crun ]; then
        # The holder: `crun-hybrid --hold` execs (unshare, then sh, then
        # sleep) in one process, so $! is the process in the namespace.
        CRUN=$bin "$HERE/crun-hybrid" --hold >"$WORK/holder.out" 2>&1 &
        holder=$!
        for _ in $(seq 100); do [ -s "$WORK/holder.out" ] && break; sleep 0.05; done
        if [ "$(cat "$WORK/holder.out" 2>/dev/null)" != "$holder" ] || \
           [ "$(readlink /proc/$holder/ns/mnt)" = "$(readlink /proc/self/ns/mnt)" ]; then
            die "crun-hybrid --hold did not start: $(cat "$WORK/holder.out" 2>/dev/null)"
        fi
        args+=(--runtime "crun=$bin,ctl=$HERE/crun-hybrid,ns=/proc/$holder/ns/mnt")
        export CRUN=$bin
    else
        args+=(--runtime "$name=$bin")
    fi
done
[ ${#args[@]} -gt 0 ] || die "no runtime to measure"

load=$(cut -d' ' -f1 /proc/loadavg)
echo "load average $load (other work on the machine skews the figures; the runs are interleaved so it skews all runtimes alike)" >&2

report=$WORK/report.$mode.md
python3 "$HERE/bench.py" --spawnstat "$spawnstat" --bundle "$bundle" --work "$WORK" --mode "$mode" \
    --rounds "$rounds" --runs "$runs" --warmup "$warmup" --json "$WORK/samples.$mode.json" \
    "${args[@]}" >"$report"
rc=$?
cat "$report"
[ -z "$outfile" ] || cp "$report" "$outfile"
exit $rc
