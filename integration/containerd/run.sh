#!/bin/bash
# Runs critest (cri-tools, pinned in go.mod beside this file) against Debian's containerd 1.6 with
# its stock runc shim (io.containerd.runc.v2), once per runtime binary (the shim's BinaryName),
# and compares the results: a spec that passes with the first runtime (the reference) and fails
# with another is a regression.
#
# Usage: run.sh [-r LABEL=PATH]... [--cri LABEL=PATH] [-f REGEX]... [-s REGEX]... [-p N] [-t SECONDS]
#               [--trace] [--keep] [--min-passed N] [--known-failure NAME]...
#               [--benchmark PARAMS] [--hook CMD] [--cri-log-level LEVEL]
#   -r LABEL=PATH  a runtime binary to run critest with; may repeat, the first is the reference
#                  (default: runc=/usr/sbin/runc rsrun=<repo>/target/debug/rsrun)
#   --cri LABEL=PATH  run critest against rsrun-cri (PATH, with rsrun-shim beside it) instead of
#                  containerd: same images, registry and network namespace; with no -r, the only
#                  run (the floor then applies to it alone)
#   -f REGEX       ginkgo focus (may repeat)      -s REGEX  ginkgo skip (may repeat)
#   --critest-arg ARG  passed to critest as it is (repeatable), e.g. -websocket-exec
#   -p N           ginkgo parallel nodes (default 1; at most 2 on this machine)
#   -t SECONDS     time limit of one critest run (default 480; ginkgo reports what ran by then)
#   --trace        point BinaryName at a wrapper that logs each runtime call, its exit status
#                  and its --log file (log.json) to runs/LABEL/runtime-trace.log; for diagnosis
#                  only, the measured runs use the binary itself
#   --keep         keep containerd's root and state dirs of each run (default: removed)
#   --min-passed N every run, the reference included, must pass at least N specs
#   --known-failure NAME  a spec (full name as compare.py prints it) allowed to fail; with it,
#                  any other failing spec in any run fails the comparison (repeatable). These two
#                  are the floor of the CI stage (integration/stages/60-containerd-critest.sh):
#                  parity alone passes when both runtimes pass nothing.
#   --benchmark PARAMS  critest's benchmark mode instead of the conformance specs (-benchmark,
#                  -benchmarking-params-file=PARAMS, a fixed -ginkgo.seed so that every run takes
#                  the specs in the same order); the per-operation latencies go to
#                  runs/LABEL/benchmark/*.json. The images the benchmarks use (busybox, and
#                  containerd's sandbox image) are pulled first, so that no timed call pulls.
#   --hook CMD     run CMD (through sh -c) after critest while the server of the run is still up,
#                  inside the network namespace, with RUN_LABEL, RUN_KIND (containerd or cri),
#                  RUN_DIR, RUN_ENDPOINT, RUN_PID (the server's PID) and RUN_CRICTL in its
#                  environment; its output goes to runs/LABEL/hook.log. Before the teardown.
#   --cri-log-level LEVEL  rsrun-cri's --log-level in --cri mode (default warn)
#   --prepare      only install what the runs need, build critest/crictl/ginkgo and the image
#                  inputs into $RSRUN_CONTAINERD_WORK, and exit (for a run elsewhere, e.g. a VM)
#   --systemd-cgroup  the systemd cgroup driver: containerd's SystemdCgroup = true (the runtime
#                  gets --systemd-cgroup), rsrun-cri's cgroup_driver = "systemd"; needs systemd
#                  as PID 1 (integration/stages/42-systemd-vm.sh runs it in the VM)
#
# Everything lives under $RSRUN_CONTAINERD_WORK (default /var/tmp/rsrun-containerd): bin/ (critest,
# crictl, ginkgo), the registry's storage, runs/LABEL/ (config.toml, containerd.log, critest.log,
# report.json, summary.txt) and summary.txt for the comparison. The registry, each containerd and
# critest run inside a network namespace made for this run (unshare --net), so the registry on
# 127.0.0.1:5000, the CNI bridge, its iptables rules and the host-network pods never touch the
# host's network; the namespace disappears with the last process in it.
#
# Exit status: 0 when no spec regresses and the floor (if set) holds, 1 otherwise, 2 when the
# harness itself fails.
# The last line is "parity: N passed, M failed": N specs that pass with the reference pass with
# every other runtime, M do not.
set -u -o pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/../.." && pwd)
W=${RSRUN_CONTAINERD_WORK:-/var/tmp/rsrun-containerd}
CNI_BIN=/usr/lib/cni
SUBNET=10.231.7.0/24      # only ever exists inside the run's own network namespace
REGISTRY=127.0.0.1:5000

runtimes=()
focus=()
skip=()
par=1
limit=480
trace=0
keep=0
inner=0
floor=()
extra=()
cri=
bench=
hook=
cri_log_level=warn
systemd_cgroup=false
prepare=0

usage() { sed -n '2,/^set -u/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
die() { echo "run.sh: $*" >&2; exit 2; }
say() { echo "run.sh: $*" >&2; }

args=("$@")
while [ $# -gt 0 ]; do
    case "$1" in
        -r) runtimes+=("${2:?-r needs LABEL=PATH}"); shift 2 ;;
        --cri) cri=${2:?--cri needs LABEL=PATH}; shift 2 ;;
        -f) focus+=("${2:?-f needs a value}"); shift 2 ;;
        -s) skip+=("${2:?-s needs a value}"); shift 2 ;;
        -p) par=${2:?-p needs a value}; shift 2 ;;
        -t) limit=${2:?-t needs a value}; shift 2 ;;
        --trace) trace=1; shift ;;
        --critest-arg) extra+=("${2:?--critest-arg needs a value}"); shift 2 ;;
        --keep) keep=1; shift ;;
        --min-passed) floor+=(--min-passed "${2:?--min-passed needs a number}"); shift 2 ;;
        --known-failure) floor+=(--known-failure "${2:?--known-failure needs a spec name}"); shift 2 ;;
        --benchmark) bench=${2:?--benchmark needs a parameters file}; shift 2 ;;
        --hook) hook=${2:?--hook needs a command}; shift 2 ;;
        --cri-log-level) cri_log_level=${2:?--cri-log-level needs a level}; shift 2 ;;
        --systemd-cgroup) systemd_cgroup=true; shift ;;
        --prepare) prepare=1; shift ;;
        --inner) inner=1; shift ;;
        -h|--help) usage 0 ;;
        *) echo "run.sh: unknown argument: $1" >&2; usage 2 ;;
    esac
done
if [ -n "$bench" ]; then
    [ -f "$bench" ] || die "--benchmark: no such file: $bench"
    bench=$(cd "$(dirname "$bench")" && pwd)/$(basename "$bench")
fi
[ ${#runtimes[@]} -gt 0 ] || [ -n "$cri" ] || runtimes=("runc=/usr/sbin/runc" "rsrun=$TOP/target/debug/rsrun")
for r in "${runtimes[@]+"${runtimes[@]}"}" ${cri:+"$cri"}; do
    case "$r" in
        [A-Za-z0-9]*=/*) ;;
        *) die "-r wants LABEL=/absolute/path, got $r" ;;
    esac
done

# ---------------------------------------------------------------- outside the namespace

install_deps() {
    local need=() pair
    for pair in containerd:containerd containerd-shim-runc-v2:containerd \
                "$CNI_BIN/bridge:containernetworking-plugins" docker-registry:docker-registry \
                ipcmk:util-linux unshare:util-linux gcc:gcc /usr/lib/x86_64-linux-gnu/libc.a:libc6-dev \
                iptables:iptables ip:iproute2 ldd:libc-bin python3:python3 /usr/sbin/runc:runc; do
        local what=${pair%%:*} pkg=${pair#*:}
        case "$what" in
            /*) [ -e "$what" ] ;;
            *) command -v "$what" >/dev/null 2>&1 ;;
        esac || need+=("$pkg")
    done
    if [ ${#need[@]} -gt 0 ]; then
        say "installing: ${need[*]}"
        apt-get update -q >/dev/null || die "apt-get update failed"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null \
            || die "apt-get install ${need[*]} failed"
    fi
    command -v go >/dev/null 2>&1 || die "go is required (critest is built from the Go module proxy)"
}

# critest is a Go test binary (cri-tools builds it with go test -c); crictl and ginkgo are
# the go.mod's tools. Rebuilt when go.mod or go.sum change.
build_tools() {
    local stamp
    stamp=$(cat "$HERE/go.mod" "$HERE/go.sum" | sha256sum | cut -c1-16)
    if [ "$(cat "$W/bin/.stamp" 2>/dev/null)" = "$stamp" ] && [ -x "$W/bin/critest" ]; then return; fi
    say "building critest, crictl and ginkgo (go.mod $stamp)"
    mkdir -p "$W/bin"
    ( cd "$HERE" && GOFLAGS=-mod=readonly GOBIN="$W/bin" go install tool &&
      GOFLAGS=-mod=readonly go test -c -o "$W/bin/critest" sigs.k8s.io/cri-tools/cmd/critest ) \
        || die "building the cri-tools failed"
    echo "$stamp" > "$W/bin/.stamp"
}

# Inputs of images/mkimages.py (images/inputs.sh): busybox and nginx from their Debian .debs,
# pause and nnp compiled statically.
image_inputs() {
    "$HERE/images/inputs.sh" "$W/image-inputs" || die "preparing the image inputs failed"
}

# ---------------------------------------------------------------- inside the namespace

registry_pid=
containerd_pid=
critest_pid=
cur=
cur_label=
had_run_containerd=0
[ -e /run/containerd ] && had_run_containerd=1
cur_bin=

wait_http() { # URL SECONDS
    python3 - "$1" "$2" <<'EOF'
import sys, time, urllib.request
end = time.time() + float(sys.argv[2])
while time.time() < end:
    try:
        urllib.request.urlopen(sys.argv[1], timeout=2).close()
        sys.exit(0)
    except Exception:
        time.sleep(0.2)
sys.exit(1)
EOF
}

start_registry() {
    mkdir -p "$W/registry/storage"
    cat > "$W/registry/config.yml" <<EOF
# docker-registry (distribution 2.8) for the critest images; plain HTTP on the loopback
# of the run's own network namespace.
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $W/registry/storage
  delete:
    enabled: true
http:
  addr: $REGISTRY
EOF
    docker-registry serve "$W/registry/config.yml" >"$W/registry/registry.log" 2>&1 </dev/null &
    registry_pid=$!
    wait_http "http://$REGISTRY/v2/" 60 || { cat "$W/registry/registry.log" >&2; die "the registry did not start"; }
    say "registry on $REGISTRY (pid $registry_pid)"
}

write_hosts() {
    local h
    rm -rf "$W/certs.d"
    for h in registry.k8s.io k8s.gcr.io gcr.io public.ecr.aws docker.io; do
        mkdir -p "$W/certs.d/$h"
        cat > "$W/certs.d/$h/hosts.toml" <<EOF
# $h is served by the local mirror only; nothing is ever asked of the real host.
server = "http://$REGISTRY"

[host."http://$REGISTRY"]
  capabilities = ["pull", "resolve"]
EOF
    done
}

# The CNI network of a run (containerd's and rsrun-cri's): a bridge on the run's private subnet,
# inside the run's network namespace, and portmap for hostPort.
write_netconf() { # RUNDIR
    local r=$1
    mkdir -p "$r/net.d"
    cat > "$r/net.d/10-rsrun-critest.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "rsrun-critest",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "rsrcri0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "$SUBNET" }]],
        "routes": [{ "dst": "0.0.0.0/0" }],
        "dataDir": "$r/cni-ipam"
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
EOF
}

write_config() { # LABEL BINARY RUNDIR
    local label=$1 bin=$2 r=$3
    write_netconf "$r"
    cat > "$r/config.toml" <<EOF
# containerd 1.6 for the critest run "$label": everything under $r, the stock runc
# shim with BinaryName = $bin, SystemdCgroup = $systemd_cgroup.
version = 2
root = "$r/root"
state = "$r/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$r/containerd.sock"

[ttrpc]
  address = "$r/containerd.sock.ttrpc"

[debug]
  level = "debug"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$r/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.6"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  netns_mounts_under_state_dir = true
  # CAP_SYS_RESOURCE is not in this host's bounding set: lowering oom_score_adj below the
  # current value (the CRI asks -998 for sandboxes) fails, and runc 1.1.5 then refuses to
  # start the sandbox ("nsexec: failed to update /proc/self/oom_score_adj: Permission
  # denied"). containerd clamps the value to its own instead.
  restrict_oom_score_adj = true

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$bin"
        Root = "$r/runtime-root"
        SystemdCgroup = $systemd_cgroup

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN"
    conf_dir = "$r/net.d"
    max_conf_num = 1

  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$W/certs.d"
EOF
}

# A wrapper for --trace: logs each call and the runtime's log.json, keeps the exit status.
write_trace_wrapper() { # BINARY RUNDIR
    cat > "$2/runtime-wrapper" <<EOF
#!/bin/sh
# --trace: logs this call, its exit status and what it added to its --log file (left as it
# is: the shim reads it afterwards for its error message).
trace=$2/runtime-trace.log
echo "=== \$(date +%T.%N) pid \$\$: $1 \$*" >> "\$trace"
log=
prev=
for a in "\$@"; do [ "\$prev" = --log ] && log=\$a; prev=\$a; done
before=0
[ -n "\$log" ] && [ -f "\$log" ] && before=\$(wc -l < "\$log")
"$1" "\$@"
rc=\$?
echo "=== \$(date +%T.%N) pid \$\$: exit \$rc" >> "\$trace"
[ -n "\$log" ] && [ -f "\$log" ] && tail -n "+\$((before + 1))" "\$log" | sed 's/^/    | /' >> "\$trace"
exit \$rc
EOF
    chmod +x "$2/runtime-wrapper"
}

crictl_() { "$W/bin/crictl" --runtime-endpoint "unix://$cur/containerd.sock" --timeout 20s "$@"; }

pids_with_arg() { # print the pids whose command line holds the argument STRING
    local p
    for p in /proc/[0-9]*; do
        grep -qxF -- "$1" < <(tr '\0' '\n' 2>/dev/null < "$p/cmdline") && echo "${p#/proc/}"
    done
}

stop_containerd() {
    [ -n "$containerd_pid" ] || return 0
    kill "$containerd_pid" 2>/dev/null
    local i
    for i in $(seq 1 50); do kill -0 "$containerd_pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$containerd_pid" 2>/dev/null
    wait "$containerd_pid" 2>/dev/null
    containerd_pid=
}

# After a run: remove every pod (the runtime stops its containers), stop containerd, then end
# what it left: shims started for its socket (found by that -address argument), containers
# still in its runtime root (the runtime's own delete --force), mounts under the run dir.
teardown() { # LABEL BINARY RUNDIR
    local label=$1 bin=$2 r=$3 p id
    if [ -n "$containerd_pid" ] && kill -0 "$containerd_pid" 2>/dev/null; then
        crictl_ rmp -a -f >"$r/teardown.log" 2>&1
        crictl_ rm -a -f >>"$r/teardown.log" 2>&1
    fi
    stop_containerd
    for p in $(pids_with_arg "$r/containerd.sock"); do
        # its socket: /run/containerd/s/sha256(<containerd address>/<namespace>/<shim id>)
        id=$(tr '\0' '\n' 2>/dev/null < "/proc/$p/cmdline" | sed -n '/^-id$/{n;p;q}')
        say "$label: ending leftover shim $p ($id)"; kill -KILL "$p" 2>/dev/null
        [ -n "$id" ] && rm -f "/run/containerd/s/$(printf '%s' "$r/containerd.sock/k8s.io/$id" | sha256sum | cut -d' ' -f1)"
    done
    # the shims made /run/containerd/s: remove it again if it was not there before (empty only)
    [ "$had_run_containerd" = 1 ] || rmdir /run/containerd/s /run/containerd 2>/dev/null
    if [ -d "$r/runtime-root/k8s.io" ]; then
        for id in $("$bin" --root "$r/runtime-root/k8s.io" list -q 2>/dev/null); do
            say "$label: deleting leftover container $id"
            "$bin" --root "$r/runtime-root/k8s.io" delete --force "$id" >>"$r/teardown.log" 2>&1
        done
    fi
    awk -v pre="$r/" 'index($5, pre) == 1 { print $5 }' /proc/self/mountinfo | sort -r | while read -r m; do
        umount -l "$m" 2>/dev/null
    done
    if [ "$keep" = 0 ]; then rm -rf "$r/root" "$r/state" "$r/opt" "$r/tmp"; fi
}

shm_ids() { ipcs -m 2>/dev/null | awk '$2 ~ /^[0-9]+$/ { print $2 }' | sort; }

# critest against the CRI socket of run dir R (containerd's or rsrun-cri's): its report, exit
# status and duration in R; the shm segments its HostIpc specs leave are removed.
critest_run() { # R [IMAGE...: pulled first in benchmark mode]
    local r=$1 rc start=$SECONDS f img
    shift
    local cargs=(--runtime-endpoint="unix://$r/containerd.sock" --image-endpoint="unix://$r/containerd.sock"
                 -ginkgo.no-color -ginkgo.timeout="${limit}s"
                 -ginkgo.junit-report="$r/junit.xml" -ginkgo.json-report="$r/report.json")
    if [ -n "$bench" ]; then
        # -benchmark sets -ginkgo.succinct (ginkgo refuses it together with -ginkgo.v)
        mkdir -p "$r/benchmark"
        cp "$bench" "$r/benchmark-params.yml"
        cargs+=(-benchmark -benchmarking-params-file="$bench" -benchmarking-output-dir="$r/benchmark"
                -ginkgo.seed=1)
        for img in registry.k8s.io/e2e-test-images/busybox:1.29-2 "$@"; do
            crictl_ pull "$img" >>"$r/prepull.log" 2>&1 || say "pulling $img failed (see $r/prepull.log)"
        done
    else
        cargs+=(-ginkgo.v)
    fi
    [ "$par" -gt 1 ] && cargs+=(-parallel="$par")
    for f in "${focus[@]+"${focus[@]}"}"; do cargs+=(-ginkgo.focus="$f"); done
    for f in "${skip[@]+"${skip[@]}"}"; do cargs+=(-ginkgo.skip="$f"); done
    cargs+=("${extra[@]+"${extra[@]}"}")
    echo "critest ${cargs[*]}" > "$r/command.txt"

    shm_ids > "$r/shm-before.txt"
    # critest puts pod log dirs, volume sources and bind-mount points under TMPDIR
    ( cd "$r" && TMPDIR=$r/tmp PATH=$W/bin:$PATH exec timeout -k 20 $((limit + 60)) "$W/bin/critest" "${cargs[@]}" ) \
        >"$r/critest.log" 2>&1 &
    critest_pid=$!
    wait "$critest_pid"
    rc=$?
    critest_pid=
    echo "$rc $((SECONDS - start))" > "$r/critest.rc"
    # The HostIpc specs make a 1 MiB segment with ipcmk on the host and never remove it.
    ipcs -m 2>/dev/null | awk '$2 ~ /^[0-9]+$/ && $5 == 1048576 && $6 == 0 { print $2 }' | sort \
        | comm -13 "$r/shm-before.txt" - | while read -r id; do
            ipcrm -m "$id" && echo "removed shm segment $id left by critest"; done > "$r/shm-removed.txt" 2>&1
    return "$rc"
}

# --hook: CMD with the run's facts in its environment, while its server is up.
run_hook() { # LABEL KIND RUNDIR
    [ -n "$hook" ] || return 0
    say "$1: hook: $hook"
    RUN_LABEL=$1 RUN_KIND=$2 RUN_DIR=$3 RUN_ENDPOINT="unix://$3/containerd.sock" RUN_PID=$containerd_pid \
        RUN_CRICTL="$W/bin/crictl" sh -c "$hook" >"$3/hook.log" 2>&1 </dev/null \
        || say "$1: hook exit $? (see $3/hook.log)"
}

run_one() { # LABEL BINARY
    local label=$1 bin=$2 r=$W/runs/$1 shim_bin=$2 rc
    cur=$r cur_label=$label cur_bin=$bin
    if [ -d "$r" ]; then
        awk -v pre="$r/" 'index($5, pre) == 1 { print $5 }' /proc/self/mountinfo | sort -r \
            | while read -r m; do umount -l "$m"; done
        rm -rf "$r"
    fi
    mkdir -p "$r/tmp"
    if [ "$trace" = 1 ]; then write_trace_wrapper "$bin" "$r"; shim_bin=$r/runtime-wrapper; fi
    write_config "$label" "$shim_bin" "$r"
    "$bin" --version > "$r/runtime-version.txt" 2>&1
    containerd --config "$r/config.toml" >"$r/containerd.log" 2>&1 </dev/null &
    containerd_pid=$!
    local i
    for i in $(seq 1 300); do
        crictl_ version >"$r/version.txt" 2>&1 && break
        kill -0 "$containerd_pid" 2>/dev/null || break
        sleep 0.2
    done
    if ! crictl_ version >"$r/version.txt" 2>&1; then
        tail -n 30 "$r/containerd.log" >&2
        teardown "$label" "$bin" "$r"
        die "$label: containerd did not answer on $r/containerd.sock"
    fi
    say "$label: containerd $containerd_pid up, BinaryName $shim_bin ($(head -n1 "$r/runtime-version.txt"))"

    local start=$SECONDS rc=0
    critest_run "$r" "$(sed -n 's/^ *sandbox_image = "\(.*\)"$/\1/p' "$r/config.toml")" || rc=$?
    run_hook "$label" containerd "$r"
    teardown "$label" "$bin" "$r"
    cur=
    say "$label: critest exit $rc after $((SECONDS - start))s"
}

# critest against rsrun-cri: the server (and its shims) instead of containerd, the images from the
# same registry through a registry-settings file that maps critest's hosts to it.
run_cri() { # LABEL BINARY
    local label=$1 bin=$2 r=$W/runs/$1 rc p id
    cur=$r
    if [ -d "$r" ]; then
        awk -v pre="$r/" 'index($5, pre) == 1 { print $5 }' /proc/self/mountinfo | sort -r \
            | while read -r m; do umount -l "$m"; done
        rm -rf "$r"
    fi
    mkdir -p "$r/tmp"
    local hosts="" h
    for h in registry.k8s.io k8s.gcr.io gcr.io public.ecr.aws docker.io; do
        hosts="$hosts\"$h\": {\"mirrors\": [{\"endpoint\": \"http://$REGISTRY\", \"insecure\": true}], \"mirrors_only\": true}, "
    done
    echo "{\"registries\": {$hosts\"$REGISTRY\": {\"insecure\": true}}}" > "$r/registries.json"
    write_netconf "$r"
    if [ "$systemd_cgroup" = true ]; then echo 'cgroup_driver = "systemd"' > "$r/rsrun-cri.toml"; else : > "$r/rsrun-cri.toml"; fi
    "$bin" --config "$r/rsrun-cri.toml" --listen "unix://$r/containerd.sock" --root "$r/root" --state "$r/state" \
        --registry-config "$r/registries.json" --cni-conf-dir "$r/net.d" --cni-bin-dir "$CNI_BIN" --log-level "$cri_log_level" >"$r/containerd.log" 2>&1 </dev/null &
    containerd_pid=$!
    local i
    for i in $(seq 1 300); do
        crictl_ version >"$r/version.txt" 2>&1 && break
        kill -0 "$containerd_pid" 2>/dev/null || break
        sleep 0.2
    done
    crictl_ version >"$r/version.txt" 2>&1 || { tail -n 30 "$r/containerd.log" >&2; die "$label: $bin did not answer"; }
    say "$label: $bin $containerd_pid up"
    local start=$SECONDS
    rc=0
    critest_run "$r" || rc=$?
    run_hook "$label" cri "$r"
    # Teardown: every pod through the server, then the server; then what is left (shims of its
    # state dir, containers in its runtime root, mounts under the run dir).
    crictl_ rmp -a -f >"$r/teardown.log" 2>&1
    stop_containerd
    for p in $(pids_with_arg "$r/state/runtime"); do kill -KILL "$p" 2>/dev/null; done
    # the runtime beside the server (as its shim is), else the debug build
    local rt=$TOP/target/debug/rsrun
    [ -x "$(dirname "$bin")/rsrun" ] && rt=$(dirname "$bin")/rsrun
    for id in $("$rt" --root "$r/state/runtime" list -q 2>/dev/null); do
        "$rt" --root "$r/state/runtime" delete --force "$id" >>"$r/teardown.log" 2>&1
    done
    awk -v pre="$r/" 'index($5, pre) == 1 { print $5 }' /proc/self/mountinfo | sort -r | while read -r m; do
        umount -l "$m" 2>/dev/null
    done
    [ "$keep" = 1 ] || rm -rf "$r/root" "$r/state" "$r/tmp"
    cur=
    say "$label: critest exit $rc after $((SECONDS - start))s"
}

# On any exit of the inner script (error, signal): end critest, remove the current run's
# pods, stop its containerd and the registry, each by the PID this script started.
on_exit() {
    if [ -n "$critest_pid" ]; then
        kill "$critest_pid" 2>/dev/null
        wait "$critest_pid" 2>/dev/null
    fi
    [ -n "$cur" ] && teardown "$cur_label" "$cur_bin" "$cur"
    stop_containerd
    if [ -n "$registry_pid" ]; then
        kill "$registry_pid" 2>/dev/null
        wait "$registry_pid" 2>/dev/null
    fi
}

inner_main() {
    trap on_exit EXIT
    trap 'exit 130' INT TERM
    ip link set lo up || die "cannot bring up lo in the run's network namespace"
    start_registry
    python3 "$HERE/images/mkimages.py" --registry "$REGISTRY" \
        --busybox-root "$W/image-inputs/busybox" --nginx-root "$W/image-inputs/nginx" \
        --pause "$W/image-inputs/pause" --nnp "$W/image-inputs/nnp" >"$W/registry/pushed.txt" \
        || die "building/pushing the images failed"
    say "$(tail -n1 "$W/registry/pushed.txt")"
    write_hosts
    local r
    for r in "${runtimes[@]+"${runtimes[@]}"}"; do run_one "${r%%=*}" "${r#*=}"; done
    if [ -n "$cri" ]; then run_cri "${cri%%=*}" "${cri#*=}"; fi
}

if [ "$inner" = 1 ]; then
    inner_main
    exit 0
fi

[ "$(id -u)" = 0 ] || die "needs root (containerd, namespaces, cgroups)"
[ "$par" -ge 1 ] 2>/dev/null || die "-p wants a number"
[ "$limit" -ge 30 ] 2>/dev/null || die "-t wants a number of seconds (at least 30)"
mkdir -p "$W"
install_deps
for r in "${runtimes[@]+"${runtimes[@]}"}" ${cri:+"$cri"}; do [ -x "${r#*=}" ] || die "${r#*=} is not an executable file"; done
build_tools
image_inputs
[ "$prepare" = 1 ] && exit 0
unshare --net -- "$HERE/run.sh" --inner "${args[@]}" || die "the critest runs failed (see $W/runs)"
labels=()
for r in "${runtimes[@]+"${runtimes[@]}"}" ${cri:+"$cri"}; do labels+=("${r%%=*}"); done
python3 "$HERE/compare.py" "${floor[@]+"${floor[@]}"}" "$W/runs" "${labels[@]}" | tee "$W/summary.txt"
exit "${PIPESTATUS[0]}"
