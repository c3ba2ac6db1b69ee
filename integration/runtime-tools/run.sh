#!/bin/bash
# Runs the OCI runtime-tools validation suite (pinned in go.mod beside this file)
# against an OCI runtime and reports results per validation file.
#
# Usage: run.sh [-r RUNTIME] [-f REGEX] [-t SECONDS] [-R N [--retry-only NAMES]]
#               [--check [-e FILE]] [--list] [--build-only]
#   -r RUNTIME   runtime binary (default: $RUNTIME, else <repo>/target/debug/rsrun)
#   -f REGEX     run only validation files whose name matches REGEX (grep -E)
#   -t SECONDS   timeout per validation file (default: $RTT_TIMEOUT, else 180)
#   -R N         run a failing file up to N more times; one that then passes
#                counts as passed and is reported as flaky (default 0)
#   --retry-only NAMES  retry (-R) only these files, comma-separated: the
#                ones whose own check races (a file that fails half the time
#                would pass three times in four with a retry for every file)
#   --check      exit non-zero only if a file listed in expected-pass.txt fails
#                (default: exit non-zero if any selected file fails)
#   -e FILE      the list --check reads (default: expected-pass.txt beside run.sh)
#   --list       print the validation file names and exit
#   --build-only build the test programs and rootfs, then exit
#
# A file passes when its program exits 0 and its TAP output has no line
# starting with "not ok" and no error diagnostic outside a test point (the
# way the hook and lifecycle programs report failures; see tap_failures).
# The last line printed is "N passed, M failed".
#
# The suite hands the runtime to each program in $RUNTIME (looked up like a
# command, then called as `$RUNTIME create --bundle DIR ID`, `start ID`,
# `state ID`, `kill ID SIG`, `delete [--force] ID`), with no global flags.
# Each program unpacks ./rootfs-amd64.tar.gz (into a bundle under $TMPDIR,
# config.json's root.path being ".") and copies ./runtimetest into it, so the
# programs run from the build directory, which holds both. Each program runs
# in a mount namespace of its own (see below).
#
# Peers, to check the runner: -r /usr/sbin/runc; -r ./crun-compat (Debian's
# crun with the two workarounds this host needs, see that file).
#
# Environment: RTT_WORKDIR (default /var/tmp/rsrun-rtt) holds the builds, one
# directory per pinned version, reused between runs, and the logs of the last
# run per runtime under logs/.
set -u
set -o pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/../.." && pwd)
MOD=github.com/opencontainers/runtime-tools

runtime=${RUNTIME:-$TOP/target/debug/rsrun}
filter=
timeout_s=${RTT_TIMEOUT:-180}
retries=0
retry_only=()
check=0
expected_file=$HERE/expected-pass.txt
list_only=0
build_only=0

usage() { sed -n '2,/^set -u/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }

while [ $# -gt 0 ]; do
    case "$1" in
        -r) runtime=${2:?-r needs a value}; shift 2 ;;
        -r*) runtime=${1#-r}; shift ;;
        -f) filter=${2:?-f needs a value}; shift 2 ;;
        -f*) filter=${1#-f}; shift ;;
        -t) timeout_s=${2:?-t needs a value}; shift 2 ;;
        -R) retries=${2:?-R needs a value}; shift 2 ;;
        --retry-only) IFS=, read -r -a retry_only <<<"${2:?--retry-only needs file names}"; shift 2 ;;
        --check) check=1; shift ;;
        -e) expected_file=${2:?-e needs a value}; shift 2 ;;
        --list) list_only=1; shift ;;
        --build-only) build_only=1; shift ;;
        -h|--help) usage 0 ;;
        *) echo "run.sh: unknown argument: $1" >&2; usage 2 ;;
    esac
done

die() { echo "run.sh: $*" >&2; exit 2; }
# in_list WORD LIST...: whether WORD is one of LIST. (Not `printf | grep -q`: with pipefail,
# grep exiting at the first match can kill printf with SIGPIPE, and the pipeline then "fails":
# a file that passed was once reported as a regression that way.)
in_list() {
    local w=$1 x
    shift
    for x in "$@"; do [ "$x" = "$w" ] && return 0; done
    return 1
}

command -v go >/dev/null || die "go is not installed"
version=$(awk -v m="$MOD" '$1 == m { print $2; exit } $1 == "require" && $2 == m { print $3; exit }' "$HERE/go.mod")
[ -n "$version" ] || die "no $MOD version in $HERE/go.mod"

if [ "$list_only" = 0 ] && [ "$build_only" = 0 ]; then
    rt_path=$runtime
    case "$rt_path" in */*) ;; *) rt_path=$(command -v "$rt_path" || true) ;; esac
    [ -n "$rt_path" ] && [ -x "$rt_path" ] || die "runtime not found or not executable: $runtime (build it, or set RUNTIME / -r)"
    rt_path=$(cd "$(dirname "$rt_path")" && pwd)/$(basename "$rt_path")
fi

WORK=${RTT_WORKDIR:-/var/tmp/rsrun-rtt}
B=$WORK/$version
mkdir -p "$B" || die "cannot create $B"

# ---------------------------------------------------------------- build --
# Test programs and runtimetest, built once per pinned version (and per
# go.mod/go.sum/Go toolchain contents, in case the pin's dependencies move).
build_suite() {
    local key stamp=$B/.built
    key=$( { cat "$HERE/go.mod" "$HERE/go.sum"; declare -f build_suite; } | sha256sum | cut -c1-16)-$(go env GOVERSION)
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ] && [ -x "$B/runtimetest" ]; then
        return 0
    fi
    echo "building runtime-tools $version into $B ..." >&2
    rm -f "$stamp"
    rm -rf "$B/bin.new" && mkdir -p "$B/bin.new" || return 1
    local pkgs
    # One fix to the suite, in a build copy (nothing of it is kept in this repository): the
    # pids check compares two *int64 pointers (validation/util/linux_resources_pids.go), so
    # it fails for every runtime whatever the limit; the copy compares the values. It
    # affects linux_cgroups_pids, linux_cgroups_relative_pids and delete_resources.
    local src=$B/src modfile=$B/go.mod
    rm -rf "$src" && mkdir -p "$src" || return 1
    (cd "$HERE" && go mod download "$MOD") || return 1
    cp -r "$(cd "$HERE" && go list -m -f '{{.Dir}}' "$MOD")/." "$src/" && chmod -R u+w "$src" || return 1
    grep -q 'lpd.Limit == config.Linux.Resources.Pids.Limit' "$src/validation/util/linux_resources_pids.go" || return 1
    sed -i 's/lpd.Limit == config.Linux.Resources.Pids.Limit/lpd.Limit != nil \&\& config.Linux.Resources.Pids.Limit != nil \&\& *lpd.Limit == *config.Linux.Resources.Pids.Limit/; s/config.Linux.Resources.Pids.Limit, lpd.Limit)/*config.Linux.Resources.Pids.Limit, *lpd.Limit)/' \
        "$src/validation/util/linux_resources_pids.go" || return 1
    cp "$HERE/go.mod" "$modfile" && cp "$HERE/go.sum" "$B/go.sum" && echo "replace $MOD => $src" >> "$modfile" || return 1
    pkgs=$(cd "$HERE" && go list -modfile="$modfile" -f '{{.ImportPath}}' "$MOD/validation/..." | grep -v '/validation/util$') || return 1
    # The programs come from the module cache (the pinned version is
    # downloaded through the module proxy when missing). runtimetest runs
    # inside the busybox rootfs, so it must be static: no cgo.
    (cd "$HERE" && CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false" \
        go build -modfile="$modfile" -trimpath -tags 'netgo osusergo' -o "$B/bin.new/" $pkgs "$MOD/cmd/runtimetest") || return 1
    rm -rf "$B/validation" && mkdir -p "$B/validation" || return 1
    local p n
    for p in $pkgs; do
        n=${p##*/}
        mv "$B/bin.new/$n" "$B/validation/$n.t" || return 1
    done
    mv "$B/bin.new/runtimetest" "$B/runtimetest" || return 1
    rmdir "$B/bin.new"
    echo "$key" > "$stamp"
}

# The rootfs the programs unpack into each bundle: Debian's static busybox
# with its applets as symlinks in /bin, /etc/passwd and /etc/group, and the
# empty mount points (the same layout as upstream's rootfs-amd64.tar.gz; runc
# gets the same results with either). The hook programs run <bundle>/bin/sh
# on the host. Debian's busybox is built with "prefer applets" and the
# standalone shell, so `sh -c '...'` runs applets (touch, cat, ...) in-process
# and a hook such as `sh -c "echo x >> file"` exits within a millisecond
# without reading its stdin: a runtime that writes the state to a hook's
# stdin must survive EPIPE/SIGPIPE (crun 1.8.1 at times dies of SIGPIPE in
# hooks and poststart here).
build_rootfs() {
    local bb=/bin/busybox
    if ! busybox_static_installed; then
        [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || { echo "need Debian's busybox-static" >&2; return 1; }
        echo "installing busybox-static ..." >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q busybox-static >&2 \
            || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q busybox-static >&2; } \
            || return 1
    fi
    local key stamp=$B/.rootfs tar=$B/rootfs-amd64.tar.gz
    key=$( { cat "$bb"; declare -f build_rootfs; } | sha256sum | cut -c1-16)
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ] && [ -f "$tar" ]; then
        return 0
    fi
    echo "building $tar from $bb ..." >&2
    local r=$B/rootfs.new
    rm -rf "$r" && mkdir -p "$r" || return 1
    mkdir -p "$r/bin" "$r/dev" "$r/proc" "$r/sys" "$r/etc" "$r/tmp" "$r/root" || return 1
    chmod 1777 "$r/tmp"; chmod 700 "$r/root"
    cp "$bb" "$r/bin/busybox" || return 1
    local a
    for a in $("$bb" --list); do
        [ "$a" = busybox ] || ln -s busybox "$r/bin/$a"
    done
    cat > "$r/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/:/bin/false
bin:x:2:2:bin:/bin:/bin/false
nobody:x:65534:65534:nobody:/:/bin/false
EOF
    cat > "$r/etc/group" <<'EOF'
root:x:0:
daemon:x:1:
bin:x:2:
tty:x:5:
users:x:100:
nogroup:x:65534:
EOF
    (cd "$r" && tar --numeric-owner --owner=0 --group=0 -czf "$tar.new" .) || return 1
    mv "$tar.new" "$tar" && rm -rf "$r" && echo "$key" > "$stamp"
}

busybox_static_installed() {
    dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' && [ -x /bin/busybox ]
}

(
    flock 9
    build_suite || die "building the validation programs failed"
    build_rootfs || die "building the rootfs tarball failed"
) 9>"$WORK/.lock" || exit 2

mapfile -t all_files < <(cd "$B/validation" && ls -- *.t | sed 's/\.t$//' | sort)
[ ${#all_files[@]} -gt 0 ] || die "no validation programs in $B/validation"

if [ "$list_only" = 1 ]; then printf '%s\n' "${all_files[@]}"; exit 0; fi
if [ "$build_only" = 1 ]; then echo "built ${#all_files[@]} validation programs in $B/validation"; exit 0; fi

files=()
for f in "${all_files[@]}"; do
    if [ -z "$filter" ] || grep -Eq -- "$filter" <<<"$f"; then files+=("$f"); fi
done
[ ${#files[@]} -gt 0 ] || die "no validation file matches '$filter'"

# ------------------------------------------------------------------ run --

logs=$WORK/logs/$(basename "$rt_path")
rm -rf "$logs" && mkdir -p "$logs" || die "cannot create $logs"
tmproot=$WORK/tmp.$$
mkdir -p "$tmproot" || die "cannot create $tmproot"
trap 'rm -rf --one-file-system "$tmproot"' EXIT

# Each program runs in a mount namespace of its own whose mounts are slaves of
# the host's: linux_ns_itype creates a container without a mount namespace, so
# the runtime mounts (and would pivot_root) in its caller's namespace. There,
# nothing it mounts reaches the host, and the namespace goes away with its
# last process. RTT_PROPAGATION=private cuts host mount events too.
propagation=${RTT_PROPAGATION:-slave}

# The cgroup tests use fixed paths (/cgrouptest, testdir/cgrouptest/container
# relative to the caller's cgroup); remove what a failing runtime leaves there
# so the next file and the next run start clean. Only empty cgroups go.
# cgroup_mounts: "MOUNTPOINT FSTYPE SUPEROPTIONS" of each cgroup hierarchy.
cgroup_mounts() {
    awk '{ for (i = 7; i <= NF; i++) if ($i == "-") break;
           if (($(i+1) == "cgroup" || $(i+1) == "cgroup2") && $5 ~ "^/sys/fs/cgroup/") print $5, $(i+1), $(i+3) }' /proc/self/mountinfo
}
# cgroup_of FSTYPE SUPEROPTIONS: this shell's cgroup in that hierarchy ("" for /).
cgroup_of() {
    local ctl path
    while IFS=: read -r _ ctl path; do
        if [ "$1" = cgroup2 ]; then [ -z "$ctl" ] || continue
        else case ",$2," in *",$ctl,"*) [ -n "$ctl" ] || continue ;; *) continue ;; esac
        fi
        [ "$path" = / ] || echo "$path"
        return
    done </proc/self/cgroup
}
cleanup_cgroups() {
    local mnt fs opts base d
    while read -r mnt fs opts; do
        for base in "$mnt" "$mnt$(cgroup_of "$fs" "$opts")"; do
            for d in testdir/cgrouptest/container testdir/cgrouptest testdir cgrouptest/container cgrouptest; do
                [ -d "$base/$d" ] && rmdir "$base/$d" 2>/dev/null
            done
        done
    done < <(cgroup_mounts)
    return 0
}
cleanup_cgroups

# tap_failures < TAP: the lines that make a file fail: each "not ok" test
# point, and each error diagnostic that belongs to no test point. The hook and
# lifecycle programs (hooks, prestart, poststart, poststop, ...) report a
# failed check only that way: a YAML block with an "error" between the
# header and the plan, then "1..0" and exit status 0. Such a block is printed
# as "# error (no test point): MESSAGE". Diagnostics that follow an "ok" line
# belong to it (they show the error a runtime was expected to return).
tap_failures() {
    awk '
    /^not ok/          { print; prev = "test"; pending = ""; next }
    /^ok/              { prev = "test"; pending = ""; next }
    /^1\.\./           { if (pending != "") print "# error (no test point): " pending; pending = ""; prev = "plan"; next }
    /^  ---$/          { inyaml = 1; err = ""; next }
    inyaml && /^  \.\.\.$/ { inyaml = 0; if (err != "" && prev != "test") pending = err; next }
    inyaml && /^ *"error": "./ {
        e = $0; sub(/^ *"error": "/, "", e); sub(/",?$/, "", e)
        sub(/\\n.*/, "", e); err = substr(e, 1, 200); next }
    END { if (pending != "") print "# error (no test point): " pending }
    '
}

# Containers a killed program leaves behind are deleted afterwards when the
# runtime implements `list -q` (best effort: the suite names them by UUID).
list_ids() { "$rt_path" list -q 2>/dev/null | sort; }

echo "runtime-tools $version, runtime $rt_path, ${#files[@]} files, timeout ${timeout_s}s" >&2
# run_file NAME: runs one validation program; sets rc, secs and nfail.
run_file() {
    local f=$1 t=$tmproot/$1 before after id start
    before=$(list_ids)
    mkdir -p "$t"
    start=$(date +%s)
    (cd "$B" && exec env RUNTIME="$rt_path" TMPDIR="$t" timeout -k 10 "$timeout_s" \
        unshare --mount --propagation "$propagation" "./validation/$f.t") \
        </dev/null >"$logs/$f.tap" 2>"$logs/$f.stderr"
    rc=$?
    secs=$(( $(date +%s) - start ))
    cleanup_cgroups
    after=$(list_ids)
    for id in $(comm -13 <(echo "$before") <(echo "$after")); do
        "$rt_path" delete --force "$id" >/dev/null 2>&1 || "$rt_path" delete -f "$id" >/dev/null 2>&1 || true
    done
    rm -rf --one-file-system "$t"
    echo "$rc" > "$logs/$f.rc"
    tap_failures <"$logs/$f.tap" >"$logs/$f.fail"
    nfail=$(wc -l <"$logs/$f.fail")
}

passed=(); failed=(); flaky=()
for f in "${files[@]}"; do
    attempt=0
    while :; do
        run_file "$f"
        if [ "$rc" = 0 ] && [ "$nfail" = 0 ]; then
            passed+=("$f")
            if [ $attempt -gt 0 ]; then
                flaky+=("$f")
                echo "ok   $f (${secs}s, flaky: passed on run $((attempt + 1)); the failed runs are in $f.try*.*)" >&2
            else
                echo "ok   $f (${secs}s)" >&2
            fi
            break
        fi
        why="exit $rc"
        [ "$rc" = 124 ] || [ "$rc" = 137 ] && why="timed out after ${timeout_s}s"
        echo "FAIL $f (${secs}s, $why, $nfail failing TAP lines)" >&2
        if [ $attempt -ge "$retries" ] || { [ ${#retry_only[@]} -gt 0 ] && ! in_list "$f" "${retry_only[@]}"; }; then
            failed+=("$f"); break
        fi
        attempt=$((attempt + 1))
        for x in tap stderr rc fail; do mv "$logs/$f.$x" "$logs/$f.try$attempt.$x"; done
    done
done

printf '%s\n' "${passed[@]}" > "$logs/passed.txt"
printf '%s\n' "${failed[@]}" > "$logs/failed.txt"
[ ${#flaky[@]} -eq 0 ] || echo "Flaky (failed, then passed on a retry): ${flaky[*]}"

# ------------------------------------------------------------- report --
if [ ${#failed[@]} -gt 0 ]; then
    echo
    echo "Failing files (full TAP and stderr in $logs):"
    for f in "${failed[@]}"; do
        rc=$(cat "$logs/$f.rc")
        case "$rc" in 0) why= ;; 124|137) why=" [timed out after ${timeout_s}s]" ;; *) why=" [exit $rc]" ;; esac
        echo "--- $f$why"
        if [ -s "$logs/$f.fail" ]; then
            sed 's/^/    /' "$logs/$f.fail"
        else
            # No failing TAP line: show the end of stderr to say why it failed.
            tail -n 3 "$logs/$f.stderr" | cut -c1-300 | sed 's/^/    stderr: /'
        fi
    done
    echo
fi

status=0
if [ "$check" = 1 ]; then
    [ -r "$expected_file" ] || die "cannot read $expected_file"
    mapfile -t expected < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$expected_file" | grep -v '^$')
    regress=(); unknown=(); newpass=()
    for e in "${expected[@]}"; do
        if ! in_list "$e" "${all_files[@]}"; then unknown+=("$e"); continue; fi
        in_list "$e" "${files[@]}" || continue   # not selected by -f
        in_list "$e" "${passed[@]}" || regress+=("$e")
    done
    for p in "${passed[@]}"; do
        in_list "$p" "${expected[@]}" || newpass+=("$p")
    done
    [ ${#unknown[@]} -gt 0 ] && { echo "$(basename "$expected_file") names files the suite lacks: ${unknown[*]}"; status=1; }
    [ ${#newpass[@]} -gt 0 ] && echo "passing but not in $(basename "$expected_file") (add them): ${newpass[*]}"
    if [ ${#regress[@]} -gt 0 ]; then
        echo "REGRESSION: expected to pass but failed: ${regress[*]}"
        status=1
    else
        echo "check: all ${#expected[@]} expected files pass"
    fi
else
    [ ${#failed[@]} -eq 0 ] || status=1
fi

echo "${#passed[@]} passed, ${#failed[@]} failed"
exit $status
