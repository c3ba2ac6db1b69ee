#!/bin/bash
# Runs runc's own bats integration tests (tests/integration of the runc release
# pinned below, fetched through the Go module proxy) against rsrun and, in the
# same invocation, against Debian's runc as the reference, and reports per
# file: tests ok / not ok / skipped, then every test that passes with the
# reference but not with rsrun, with its TAP diagnostic lines.
# Not required to be green: this is an outside oracle, not a gate.
#
# Usage: run.sh [-r NAME=BINARY]... [-f FILES] [-t SECONDS] [-j] [--setup-only]
#   -r NAME=BINARY  a runtime to run the suite against (repeatable); the first
#                   is the one under test, the second the reference.
#                   Default: rsrun=<repo>/target/debug/rsrun runc=/usr/sbin/runc
#   -f FILES        bats files to run, space- or comma-separated, without
#                   .bats (default: $CORE_FILES below; "all" = every file)
#   -t SECONDS      timeout per bats file and runtime (default 120)
#   -j              run the runtimes concurrently (default: one after the other)
#   --setup-only    fetch, build the helpers, make the images, then exit
#
# Nothing of runc's code goes into this repository: the module is downloaded
# into the Go module cache and copied into $RSRUN_BATS_WORKDIR
# (default /var/tmp/rsrun-bats)/src-<version>, where its contrib helpers
# (recvtty, sd-helper, seccompagent) are built with `go build` at the paths
# helpers.bash expects, and where the images get-images.sh would download are
# made offline:
#   testdata/busybox-<arch>.tar.xz  Debian's busybox-static, one hard link per
#                                   applet in /bin, with docker's busybox
#                                   /etc/passwd and /etc/group;
#   testdata/debian-<arch>.tar.xz   a stand-in for debian buster slim (used by
#                                   hooks.bats only): the same busybox plus the
#                                   host's static /sbin/ldconfig and an empty /lib.
# get-images.sh skips a download when the file exists, so the suite runs
# unchanged. helpers.bash runs "$RUNC --root $ROOT/state" with ROOT under the
# bats run's temporary directory, so each runtime's state is apart: every
# runtime gets its own TMPDIR ($WORKDIR/tmp/<name>).
#
# bats runs under a pseudo-terminal (script(1)), as in runc's CI: the
# default spec has terminal: true and tests run without --console-socket.
#
# Logs: $WORKDIR/logs/<name>/<file>.tap (bats --tap output with diagnostics),
# $WORKDIR/logs/summary.txt (the report printed at the end).
# Needs root, go, and Debian's bats, jq, gawk, gcc (installed if missing).
set -u
set -o pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/../.." && pwd)

MOD=github.com/opencontainers/runc
# Pinned: the release Debian 12's runc package (1.1.5+ds1) is built from, so
# the reference binary and the tests are the same version.
VERSION=v1.1.5
CORE_FILES="create start start_detached start_hello run exec kill delete update events ps pause state list spec hooks"

WORKDIR=${RSRUN_BATS_WORKDIR:-/var/tmp/rsrun-bats}
timeout_s=120
files=$CORE_FILES
runtimes=()
parallel=0
setup_only=0

usage() { sed -n '2,/^set -u/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }

while [ $# -gt 0 ]; do
    case "$1" in
        -r) runtimes+=("${2:?-r needs NAME=BINARY}"); shift 2 ;;
        -f) files=${2:?-f needs a value}; shift 2 ;;
        -t) timeout_s=${2:?-t needs a value}; shift 2 ;;
        -j) parallel=1; shift ;;
        --setup-only) setup_only=1; shift ;;
        -h|--help) usage 0 ;;
        *) echo "run.sh: unknown argument $1" >&2; usage ;;
    esac
done
[ ${#runtimes[@]} -gt 0 ] || runtimes=("rsrun=$TOP/target/debug/rsrun" "runc=/usr/sbin/runc")
files=${files//,/ }

die() { echo "run.sh: $*" >&2; exit 2; }
log() { echo "== $*" >&2; }

[ "$(id -u)" -eq 0 ] || die "must run as root (the suite's root-only tests are the point)"
for rt in "${runtimes[@]}"; do
    case "$rt" in *=*) ;; *) die "-r wants NAME=BINARY, got $rt" ;; esac
    [ -x "${rt#*=}" ] || die "runtime ${rt#*=} is not an executable"
done

# ---- setup -----------------------------------------------------------------

ensure_pkg() { # command package
    command -v "$1" >/dev/null 2>&1 && return 0
    log "installing Debian's $2"
    apt-get install -y "$2" >/dev/null 2>&1 ||
        { apt-get update >/dev/null 2>&1 && apt-get install -y "$2" >/dev/null 2>&1; } ||
        die "cannot install $2"
}
ensure_pkg bats bats
ensure_pkg jq jq
ensure_pkg gawk gawk   # helpers.bash (init_cgroup_paths)
ensure_pkg gcc gcc
ensure_pkg nsenter util-linux
command -v go >/dev/null || die "go is needed (module download and helper builds)"
if ! file -L /bin/busybox 2>/dev/null | grep -q 'statically linked'; then
    log "installing Debian's busybox-static"
    apt-get install -y busybox-static >/dev/null 2>&1 ||
        { apt-get update >/dev/null 2>&1 && apt-get install -y busybox-static >/dev/null 2>&1; } ||
        die "cannot install busybox-static"
fi

mkdir -p "$WORKDIR"
SRC=$WORKDIR/src-$VERSION
INTEG=$SRC/tests/integration
if [ ! -f "$SRC/.complete" ]; then
    log "fetching $MOD@$VERSION through the Go module proxy"
    mkdir -p "$WORKDIR/gomod"
    [ -f "$WORKDIR/gomod/go.mod" ] || (cd "$WORKDIR/gomod" && go mod init rsrun-bats-fetch >/dev/null 2>&1)
    dir=$(cd "$WORKDIR/gomod" && GOFLAGS=-mod=mod go mod download -json "$MOD@$VERSION" | jq -r .Dir) ||
        die "go mod download $MOD@$VERSION failed"
    [ -d "$dir/tests/integration" ] || die "no tests/integration in $dir"
    rm -rf "$SRC"
    cp -r "$dir" "$SRC" && chmod -R u+w "$SRC" || die "copy failed"
    # module zips carry no exec bits; helpers.bash runs get-images.sh directly
    find "$SRC" -name '*.sh' -exec chmod +x {} +
    touch "$SRC/.complete"
fi

# contrib helpers, at the paths helpers.bash hard-codes (../../contrib/cmd/X/X)
for h in recvtty sd-helper seccompagent; do
    [ -d "$SRC/contrib/cmd/$h" ] || continue
    [ -x "$SRC/contrib/cmd/$h/$h" ] && continue
    log "building $h"
    (cd "$SRC" && GOFLAGS=-mod=mod go build -tags seccomp -o "contrib/cmd/$h/$h" "./contrib/cmd/$h") >"$WORKDIR/build-$h.log" 2>&1 ||
        echo "run.sh: warning: $h did not build (see $WORKDIR/build-$h.log); tests needing it will fail" >&2
done

# images get-images.sh would download
arch=$(go env GOARCH)
make_busybox_tree() { # dir
    local d=$1 a
    chmod 755 "$d"   # mktemp's 0700 would become the rootfs' mode
    mkdir -p "$d"/{bin,dev,etc,home,root,tmp,usr/sbin,var/spool/mail,var/www,proc,sys}
    chmod 1777 "$d/tmp"
    cp /bin/busybox "$d/bin/busybox"
    for a in $(/bin/busybox --list); do
        [ "$a" = busybox ] || ln -f "$d/bin/busybox" "$d/bin/$a"
    done
    cat >"$d/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
sync:x:4:100:sync:/bin:/bin/sync
mail:x:8:8:mail:/var/spool/mail:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
operator:x:37:37:Operator:/var:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
EOF
    cat >"$d/etc/group" <<'EOF'
root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
disk:x:6:
lp:x:7:
mail:x:8:
kmem:x:9:
wheel:x:10:root
cdrom:x:11:
dialout:x:18:
floppy:x:19:
video:x:28:
audio:x:29:
tape:x:32:
www-data:x:33:
operator:x:37:
utmp:x:43:
plugdev:x:46:
staff:x:50:
lock:x:54:
netdev:x:82:
users:x:100:
nogroup:x:65534:
EOF
}
bb_tar=$INTEG/testdata/busybox-$arch.tar.xz
deb_tar=$INTEG/testdata/debian-$arch.tar.xz
if [ ! -s "$bb_tar" ]; then
    log "making $bb_tar from Debian's busybox-static"
    t=$(mktemp -d "$WORKDIR/img.XXXXXX")
    make_busybox_tree "$t"
    tar -C "$t" --numeric-owner --owner=0 --group=0 -cJf "$bb_tar.tmp" . && mv "$bb_tar.tmp" "$bb_tar" || die "tar failed"
    rm -rf "$t"
fi
if [ ! -s "$deb_tar" ]; then
    log "making $deb_tar (busybox + ldconfig stand-in for debian)"
    t=$(mktemp -d "$WORKDIR/img.XXXXXX")
    make_busybox_tree "$t"
    mkdir -p "$t/sbin" "$t/lib" "$t/usr/lib" "$t/etc/ld.so.conf.d"
    cp /sbin/ldconfig "$t/sbin/ldconfig"
    : >"$t/etc/ld.so.conf"
    tar -C "$t" --numeric-owner --owner=0 --group=0 -cJf "$deb_tar.tmp" . && mv "$deb_tar.tmp" "$deb_tar" || die "tar failed"
    rm -rf "$t"
fi
(cd "$INTEG" && ./get-images.sh >/dev/null) || die "get-images.sh still wants to download something"

[ "$setup_only" -eq 1 ] && { log "setup done in $WORKDIR"; exit 0; }

if [ "$files" = all ]; then
    files=$(cd "$INTEG" && ls ./*.bats | sed 's|^\./||; s|\.bats$||' | tr '\n' ' ')
fi
sel=()
for f in $files; do
    if [ -f "$INTEG/$f.bats" ]; then sel+=("$f"); else log "no $f.bats at $VERSION, skipped"; fi
done

# ---- run ---------------------------------------------------------------------

# Containers, recvtty processes and mounts left behind by a file that timed
# out (bats' own teardown handles the normal case). Only what this run made:
# containers found in the state directories under this runtime's TMPDIR, and
# recvtty processes by the PID files helpers.bash writes there.
cleanup_tmp() { # binary tmpdir
    local bin=$1 tmp=$2 st ct m
    [ -d "$tmp" ] || return 0
    while IFS= read -r st; do
        for ct in $("$bin" --root "$st" list -q 2>/dev/null); do
            "$bin" --root "$st" delete -f "$ct" >/dev/null 2>&1 || "$bin" --root "$st" kill "$ct" KILL >/dev/null 2>&1
        done
    done < <(find "$tmp" -mindepth 3 -maxdepth 3 -type d -name state -path '*/runc.*/state' 2>/dev/null)
    kill_recvtty "$tmp"
    # innermost first
    awk -v p="$tmp/" 'index($2, p) == 1 {print $2}' /proc/self/mounts | sort -r | while read -r m; do
        umount -l "$m" 2>/dev/null
    done
    rm -rf "$tmp"
}

# A memory cap for everything one runtime's bats starts: rsrun's spec has no
# linux.resources, so events.bats "events oom" (which sets the memory limit
# through `.. | select(.resources? != null)`) runs its memory hog unlimited.
# Containers without an absolute cgroupsPath are nested under the caller's
# cgroup, so they stay under this cap. cgroup v1 memory, or v2 memory.max
# where the current cgroup delegates it; best effort.
MEM_CAP=${RSRUN_BATS_MEM_CAP:-4294967296}
mem_cap_dir() { # name
    local rel
    if [ -d /sys/fs/cgroup/memory ] && rel=$(awk -F: '$2 == "memory" {print $3}' /proc/self/cgroup) && [ -n "$rel" ]; then
        echo "/sys/fs/cgroup/memory${rel%/}/rsrun-bats-$1"
    elif [ -f /sys/fs/cgroup/cgroup.controllers ]; then
        rel=$(awk -F: '$1 == "0" {print $3}' /proc/self/cgroup)
        echo "/sys/fs/cgroup${rel%/}/rsrun-bats-$1"
    fi
}
enter_mem_cap() { # name (called in the subshell that becomes bats)
    local d
    d=$(mem_cap_dir "$1")
    [ -n "$d" ] && mkdir -p "$d" 2>/dev/null || { echo "# run.sh: no memory cap" >&2; return 0; }
    if [ -f "$d/memory.limit_in_bytes" ]; then
        echo "$MEM_CAP" >"$d/memory.limit_in_bytes" 2>/dev/null
        [ -f "$d/memory.memsw.limit_in_bytes" ] && echo "$MEM_CAP" >"$d/memory.memsw.limit_in_bytes" 2>/dev/null
    else
        echo "$MEM_CAP" >"$d/memory.max" 2>/dev/null
    fi
    echo "$BASHPID" >"$d/cgroup.procs" 2>/dev/null || echo "# run.sh: could not enter memory cap $d" >&2
}
leave_mem_cap() { # name
    local d
    d=$(mem_cap_dir "$1")
    # empty cgroups only (a container cgroup a runtime left behind, then the cap)
    [ -n "$d" ] && [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null
    return 0
}

kill_recvtty() { # tmpdir: recvtty processes by the PID files the suite writes
    local pidf pid
    while IFS= read -r pidf; do
        pid=$(cat "$pidf" 2>/dev/null)
        [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = recvtty ] && kill -9 "$pid" 2>/dev/null
    done < <(find "$1" \( -path '*/tty/pid' -o -name recvtty.pid \) 2>/dev/null)
}

run_runtime() { # name binary
    local name=$1 bin=$2 f rc start pp plan n done_at
    local logs=$WORKDIR/logs/$name tmp=$WORKDIR/tmp/$name
    rm -rf "$logs"; mkdir -p "$logs"
    cleanup_tmp "$bin" "$tmp"
    for f in "${sel[@]}"; do
        mkdir -p "$tmp"
        start=$(date +%s)
        # Under a pseudo-terminal, as runc's CI runs the suite: `runc spec`
        # writes terminal: true, and runc run/exec without --console-socket
        # then use the caller's terminal (/dev/tty).
        (
            enter_mem_cap "$name"
            # (No BATS_TEST_TIMEOUT: its watchdog is a background job of the
            # test shell, and events.bats' bare `wait` then waits for it.)
            cd "$INTEG" && export TMPDIR=$tmp RUNC=$bin &&
                timeout -k 20 $((timeout_s + 30)) script -qec "timeout -k 10 $timeout_s bats --tap $f.bats" /dev/null </dev/null
            echo $? >"$logs/$f.exit"
        ) 2>&1 | sed -u 's/\r//g' >"$logs/$f.tap" &
        pp=$!
        # A test that fails early can leave its own recvtty (update.bats
        # "minimal transition rules") holding bats' output open: once every
        # planned test has a result, give bats 10 s, then end those.
        done_at=
        while kill -0 "$pp" 2>/dev/null; do
            sleep 1
            plan=$(grep -m1 -E '^1\.\.[0-9]+' "$logs/$f.tap" 2>/dev/null | cut -d. -f3)
            n=$(grep -cE '^(not )?ok [0-9]+' "$logs/$f.tap" 2>/dev/null)
            if [ -n "$plan" ] && [ "${n:-0}" -ge "$plan" ]; then
                [ -n "$done_at" ] || done_at=$(date +%s)
                if [ $(( $(date +%s) - done_at )) -ge 10 ]; then
                    echo "# run.sh: all results in, bats still running after 10s: killed the suite's leftover recvtty" >"$logs/$f.note"
                    kill_recvtty "$tmp"
                    done_at=$(date +%s)
                fi
            fi
        done
        wait "$pp"
        [ -f "$logs/$f.note" ] && cat "$logs/$f.note" >>"$logs/$f.tap" && rm -f "$logs/$f.note"
        rc=$(cat "$logs/$f.exit" 2>/dev/null || echo 255)
        rm -f "$logs/$f.exit"
        echo "$rc $(( $(date +%s) - start ))" >"$logs/$f.rc"
        [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && echo "# run.sh: bats timed out after ${timeout_s}s" >>"$logs/$f.tap"
        cleanup_tmp "$bin" "$tmp"
        log "$name $f.bats: exit $rc in $(( $(date +%s) - start ))s"
    done
    leave_mem_cap "$name"
}

t0=$(date +%s)
names=()
if [ "$parallel" -eq 1 ]; then
    pids=()
    for rt in "${runtimes[@]}"; do
        names+=("${rt%%=*}")
        run_runtime "${rt%%=*}" "${rt#*=}" & pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p"; done
else
    for rt in "${runtimes[@]}"; do
        names+=("${rt%%=*}")
        run_runtime "${rt%%=*}" "${rt#*=}"
    done
fi
elapsed=$(( $(date +%s) - t0 ))

# ---- report ------------------------------------------------------------------

# per test: "<file>\t<status>\t<name>"; status ok|fail|skip|notrun (notrun:
# in the plan but no result line, i.e. the file timed out)
results() { # name file
    awk -v f="$2" '
        /^1\.\.[0-9]+/ { split($0, a, "\\.\\."); plan = a[2] + 0; next }
        /^(not )?ok [0-9]+/ {
            st = ($1 == "not") ? "fail" : "ok"
            line = $0
            sub(/^(not )?ok [0-9]+ /, "", line)
            if (st == "ok" && line ~ / # [Ss][Kk][Ii][Pp]/) st = "skip"
            sub(/ # [Ss][Kk][Ii][Pp].*$/, "", line)
            n = ($1 == "not") ? $3 : $2
            seen[n] = 1
            print f "\t" st "\t" line
        }
        END { for (i = 1; i <= plan; i++) if (!(i in seen)) print f "\t" "notrun" "\t" "#" i " (no result: timed out?)" }
    ' "$WORKDIR/logs/$1/$2.tap"
}
# the diagnostic lines of one failed test
diag() { # name file testname
    awk -v t="$3" '
        /^(not )?ok [0-9]+/ { line = $0; sub(/^(not )?ok [0-9]+ /, "", line); on = ($1 == "not" && line == t); next }
        on && /^#/ { print }
    ' "$WORKDIR/logs/$1/$2.tap"
}

summary=$WORKDIR/logs/summary.txt
{
    echo "runc integration tests $VERSION ($(cd "$INTEG" && pwd)), timeout ${timeout_s}s per file, ${elapsed}s in all"
    for rt in "${runtimes[@]}"; do echo "  ${rt%%=*} = ${rt#*=} ($("${rt#*=}" --version 2>/dev/null | head -1))"; done
    echo
    printf '%-16s' file; for n in "${names[@]}"; do printf ' %22s' "$n ok/notok/skip"; done; echo
    declare -A tot
    for f in "${sel[@]}"; do
        printf '%-16s' "$f"
        for n in "${names[@]}"; do
            r=$(results "$n" "$f")
            ok=$(grep -c $'\tok\t' <<<"$r"); nok=$(grep -cE $'\t(fail|notrun)\t' <<<"$r"); sk=$(grep -c $'\tskip\t' <<<"$r")
            tot[$n.ok]=$(( ${tot[$n.ok]:-0} + ok )); tot[$n.nok]=$(( ${tot[$n.nok]:-0} + nok )); tot[$n.sk]=$(( ${tot[$n.sk]:-0} + sk ))
            extra=; [ "$(cut -d' ' -f1 "$WORKDIR/logs/$n/$f.rc")" = 124 ] && extra=" T"
            printf ' %22s' "$ok/$nok/$sk$extra"
        done
        echo
    done
    printf '%-16s' TOTAL; for n in "${names[@]}"; do printf ' %22s' "${tot[$n.ok]}/${tot[$n.nok]}/${tot[$n.sk]}"; done; echo
    echo "(T: the file hit the timeout; its tests without a result count as not ok)"
    for n in "${names[@]}"; do
        echo "$n: ${tot[$n.ok]} ok, ${tot[$n.nok]} not ok, ${tot[$n.sk]} skipped"
    done
    if [ ${#names[@]} -ge 2 ]; then
        a=${names[0]} b=${names[1]}
        echo
        echo "Tests ok with $b but not ok with $a:"
        cnt=0
        for f in "${sel[@]}"; do
            while IFS=$'\t' read -r _ st t; do
                [ "$st" = ok ] || continue
                sa=$(results "$a" "$f" | awk -F'\t' -v t="$t" '$3 == t {print $2}')
                [ "$sa" = ok ] || [ "$sa" = skip ] && continue
                cnt=$((cnt + 1))
                echo
                echo "[$f.bats] $t  (${a}: ${sa:-missing})"
                diag "$a" "$f" "$t" | head -40
            done < <(results "$b" "$f")
        done
        echo
        echo "$cnt test(s) ok with $b but not with $a"
        echo
        echo "Tests ok with $a but not ok with $b:"
        for f in "${sel[@]}"; do
            while IFS=$'\t' read -r _ st t; do
                [ "$st" = ok ] || continue
                sb=$(results "$b" "$f" | awk -F'\t' -v t="$t" '$3 == t {print $2}')
                [ "$sb" = ok ] || [ "$sb" = skip ] && continue
                echo "  [$f.bats] $t  (${b}: ${sb:-missing})"
            done < <(results "$a" "$f")
        done
    fi
} >"$summary"
cat "$summary"
exit 0
