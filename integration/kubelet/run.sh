#!/bin/bash
# A one-node Kubernetes cluster on rsrun-cri: etcd, kube-apiserver and a real kubelet (v1.37.2,
# pinned in go.mod beside this script, built by build.sh and cached by version), driven through
# kubectl as the book's readers drive theirs: scenarios.py runs the workloads of Kubernetes in
# Action (2nd ed.) and checks what the book shows. No scheduler or controller manager: every pod
# names its node (spec.nodeName), and pods run without service account tokens.
#
# Usage: run.sh [-k REGEX] [--keep] [--rsrun-bin DIR]
#   -k REGEX        run only the scenarios whose name matches REGEX (scenarios.py -k)
#   --keep          leave the cluster's files (logs, etcd, kubelet dir) in $W/run for a look
#   --rsrun-bin DIR the directory holding rsrun, rsrun-shim and rsrun-cri (default: a debug
#                   build of the workspace, target/debug)
#
# Everything runs inside a network namespace made for the run (unshare --net): the registry on
# 127.0.0.1:5000, etcd, the API server and the kubelet on the node's address 10.231.9.1 (a dummy
# interface), the pods' bridge on 10.231.8.0/24; nothing reaches the host's network. The kubelet's
# cgroups live under /rsrun-kubelet in every v1 hierarchy and are removed at the end. The kubelet
# sets a few global sysctls on start (vm.overcommit_memory, kernel.panic, kernel.panic_on_oops,
# kernel.keys.*); their values are restored at the end. Work files: $RSRUN_KUBELET_WORK (default
# /var/tmp/rsrun-kubelet).
# Exit status: 0 when every scenario passed, 1 when one failed, 2 when the harness failed.
set -u -o pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/../.." && pwd)
W=${RSRUN_KUBELET_WORK:-/var/tmp/rsrun-kubelet}
R=$W/run
NODE=rsrun-node
NODE_IP=10.231.9.1
POD_SUBNET=10.231.8.0/24
SERVICE_RANGE=10.231.10.0/24
REGISTRY=127.0.0.1:5000
CGROOT=/rsrun-kubelet
SYSCTLS="vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes"

die() { echo "kubelet run.sh: $*" >&2; exit 2; }
say() { echo "kubelet run.sh: $*" >&2; }

filter=
keep=0
rbin=
while [ $# -gt 0 ]; do
    case "$1" in
        -k) filter=$2; shift 2 ;;
        --keep) keep=1; shift ;;
        --rsrun-bin) rbin=$2; shift 2 ;;
        --inner) shift; inner=1 ;;
        -h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
done

# ---------------------------------------------------------------- outside the namespace
if [ -z "${inner:-}" ]; then
    need=()
    for pair in docker-registry:docker-registry /usr/lib/cni/bridge:containernetworking-plugins \
                iptables:iptables ip:iproute2 openssl:openssl gcc:gcc /usr/lib/x86_64-linux-gnu/libc.a:libc6-dev \
                unshare:util-linux python3:python3 ldd:libc-bin; do
        what=${pair%%:*}
        case "$what" in /*) [ -e "$what" ] ;; *) command -v "$what" >/dev/null 2>&1 ;; esac \
            || need+=("${pair#*:}")
    done
    if [ ${#need[@]} -gt 0 ]; then
        say "installing: ${need[*]}"
        apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            --no-install-recommends "${need[@]}" >/dev/null || die "apt-get install ${need[*]} failed"
    fi
    command -v go >/dev/null 2>&1 || die "go is required (the kubelet is built from the Go module proxy)"
    K8S_BIN=$("$HERE/build.sh") || die "building the Kubernetes binaries failed"
    if [ -z "$rbin" ]; then
        ( cd "$TOP" && cargo build -q -p rsrun -p rsrun-shim -p rsrun-cri ) || die "cargo build failed"
        rbin=$TOP/target/debug
    fi
    rbin=$(cd "$rbin" && pwd)
    for b in rsrun rsrun-shim rsrun-cri; do [ -x "$rbin/$b" ] || die "no $b in $rbin"; done
    # crictl (pinned in integration/containerd/go.mod) for the scenarios that look at the runtime
    # directly and for the teardown
    stamp=$(cat "$TOP/integration/containerd/go.mod" "$TOP/integration/containerd/go.sum" | sha256sum | cut -c1-16)
    mkdir -p "$W/bin"
    if [ "$(cat "$W/bin/.crictl-stamp" 2>/dev/null)" != "$stamp" ] || [ ! -x "$W/bin/crictl" ]; then
        ( cd "$TOP/integration/containerd" && GOFLAGS=-mod=readonly go build -o "$W/bin/crictl" \
            sigs.k8s.io/cri-tools/cmd/crictl ) || die "building crictl failed"
        echo "$stamp" > "$W/bin/.crictl-stamp"
    fi
    "$TOP/integration/containerd/images/inputs.sh" "$W/image-inputs" || die "preparing the image inputs failed"
    gcc -static -O2 -Wall -o "$W/bin/kiada" "$HERE/images/kiada.c" && strip "$W/bin/kiada" \
        || die "compiling kiada.c failed"
    # what an earlier run left: mounts under the run dir, then the dir itself
    awk -v p="$R/" 'index($5, p) == 1 {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done
    rm -rf "$R"
    mkdir -p "$R"
    for s in $SYSCTLS; do echo "$s=$(sysctl -n "$s")"; done > "$W/sysctls.saved"
    args=(--inner ${filter:+-k "$filter"})
    [ $keep = 1 ] && args+=(--keep)
    K8S_BIN=$K8S_BIN RSRUN_BIN=$rbin unshare --net "$0" "${args[@]}"
    rc=$?
    # the kubelet's global sysctls back to what they were
    while IFS== read -r k v; do sysctl -q -w "$k=$v" >/dev/null || say "could not restore $k=$v"; done < "$W/sysctls.saved"
    exit $rc
fi

# ---------------------------------------------------------------- inside the namespace
PIDS=()
start() { # NAME CMD...: start in the background, output to $R/logs/NAME.log
    local name=$1; shift
    "$@" >"$R/logs/$name.log" 2>&1 </dev/null &
    PIDS+=("$!")
    eval "PID_${name//-/_}=$!"
}
wait_for() { # SECONDS WHAT CMD...: poll CMD every 0.5 s
    local end=$(( $(date +%s) + $1 )) what=$2; shift 2
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$end" ] || return 1
        sleep 0.5
    done
    say "$what"
}
crictl() { "$W/bin/crictl" --runtime-endpoint "unix://$R/cri/rsrun-cri.sock" --timeout 30s "$@"; }
KUBECTL() { "$K8S_BIN/kubectl" --kubeconfig "$R/admin.kubeconfig" "$@"; }

teardown() {
    say "teardown"
    if [ -n "${PID_kubelet:-}" ]; then
        # the one running now (scenario 19 starts another)
        PID_kubelet=$(cat "$R/kubelet.pid" 2>/dev/null || echo "$PID_kubelet")
        # pods first, through the API, while the kubelet still runs them
        KUBECTL delete pods --all --all-namespaces --grace-period=1 --timeout=60s >/dev/null 2>&1
        kill "$PID_kubelet" 2>/dev/null
        while kill -0 "$PID_kubelet" 2>/dev/null; do sleep 0.1; done
    fi
    local cri
    cri=$(cat "$R/rsrun-cri.pid" 2>/dev/null)
    if [ -n "$cri" ] && kill -0 "$cri" 2>/dev/null; then
        crictl rmp -a -f >/dev/null 2>&1
        kill "$cri"; while kill -0 "$cri" 2>/dev/null; do sleep 0.1; done
    fi
    # the rest in the reverse order of their start; the API server gets 10 s to finish
    local i p n
    for (( i=${#PIDS[@]}-1; i>=0; i-- )); do
        p=${PIDS[$i]}
        kill "$p" 2>/dev/null || continue
        n=0
        while kill -0 "$p" 2>/dev/null && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done
        kill -9 "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    awk -v p="$R/" 'index($5, p) == 1 {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done
    local c
    for c in /sys/fs/cgroup/*/; do
        [ -d "$c$CGROOT" ] || continue
        find "$c$CGROOT" -depth -type d -exec rmdir {} + 2>/dev/null
        [ -d "$c$CGROOT" ] && say "left behind: $c$CGROOT"
    done
    [ "$keep" = 1 ] || rm -rf "$R/etcd" "$R/kubelet" "$R/cri"
}
trap teardown EXIT
trap 'exit 130' INT TERM
mkdir -p "$R/logs" "$R/pki" "$R/net.d"

ip link set lo up || die "cannot bring up lo"
# a veth pair stands in for the node's NIC (no dummy driver here); its peer leads nowhere
ip link add node0 type veth peer name node0-peer && ip link set node0-peer up \
    && ip addr add "$NODE_IP/24" dev node0 && ip link set node0 up \
    && ip route add default dev node0 || die "cannot make the node's interface"

# the registry and the images
cat > "$R/registry.yml" <<EOF
version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $R/registry}}
http: {addr: $REGISTRY}
EOF
start registry docker-registry serve "$R/registry.yml"
wait_for 60 "registry on $REGISTRY" curl -sf "http://$REGISTRY/v2/" || die "the registry did not start"
python3 "$HERE/images/mkimages.py" --inputs "$W/image-inputs" --kiada "$W/bin/kiada" \
    --registry "$REGISTRY" > "$R/images.txt" || die "building/pushing the images failed"

# keys and credentials: the API server's serving certificate is its own self-signed one
# (--cert-dir), clients skip its verification; tokens for the admin and the node.
openssl genrsa -out "$R/pki/sa.key" 2048 2>/dev/null && openssl rsa -in "$R/pki/sa.key" -pubout \
    -out "$R/pki/sa.pub" 2>/dev/null || die "openssl failed"
admin_token=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
node_token=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
cat > "$R/pki/tokens.csv" <<EOF
$admin_token,admin,admin,"system:masters"
$node_token,system:node:$NODE,node,"system:nodes"
EOF
kubeconfig() { # USER TOKEN
    cat <<EOF
apiVersion: v1
kind: Config
clusters: [{name: rsrun, cluster: {server: "https://$NODE_IP:6443", insecure-skip-tls-verify: true}}]
users: [{name: $1, user: {token: $2}}]
contexts: [{name: rsrun, context: {cluster: rsrun, user: $1}}]
current-context: rsrun
EOF
}
kubeconfig admin "$admin_token" > "$R/admin.kubeconfig"
kubeconfig "system:node:$NODE" "$node_token" > "$R/kubelet.kubeconfig"

start etcd "$K8S_BIN/etcd" --name rsrun --data-dir "$R/etcd" --unsafe-no-fsync \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster rsrun=http://127.0.0.1:2380
wait_for 90 "etcd up" curl -sf http://127.0.0.1:2379/health || die "etcd did not start (logs/etcd.log)"

start kube-apiserver "$K8S_BIN/kube-apiserver" --etcd-servers http://127.0.0.1:2379 \
    --advertise-address "$NODE_IP" --secure-port 6443 --cert-dir "$R/pki" \
    --token-auth-file "$R/pki/tokens.csv" --authorization-mode Node,RBAC \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$R/pki/sa.pub" --service-account-signing-key-file "$R/pki/sa.key" \
    --service-cluster-ip-range "$SERVICE_RANGE" --disable-admission-plugins ServiceAccount \
    --allow-privileged --kubelet-preferred-address-types InternalIP --profiling=false
wait_for 270 "kube-apiserver ready" KUBECTL get --raw /readyz || die "kube-apiserver did not become ready (logs/kube-apiserver.log)"

# rsrun-cri: a bridge network on the pods' subnet with portmap, docker.io served by the registry
cat > "$R/net.d/10-rsrun.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "rsrun-kubelet", "plugins": [
  {"type": "bridge", "bridge": "rsrun0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_SUBNET"}]], "routes": [{"dst": "0.0.0.0/0"}],
           "dataDir": "$R/cni-ipam"}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
EOF
cat > "$R/registries.json" <<EOF
{"registries": {"docker.io": {"mirrors": [{"endpoint": "http://$REGISTRY", "insecure": true}], "mirrors_only": true}}}
EOF
# started by a script of its own, which scenario 15 runs again after a kill -9
cat > "$R/start-cri.sh" <<EOF
#!/bin/sh
"$RSRUN_BIN/rsrun-cri" --listen "unix://$R/cri/rsrun-cri.sock" --root "$R/cri/root" \\
    --state "$R/cri/state" --registry-config "$R/registries.json" --cni-conf-dir "$R/net.d" \\
    --cni-bin-dir /usr/lib/cni --log-level info >>"$R/logs/rsrun-cri.log" 2>&1 </dev/null &
echo \$! > "$R/rsrun-cri.pid"
EOF
chmod +x "$R/start-cri.sh"
"$R/start-cri.sh"
wait_for 90 "rsrun-cri up" crictl version || die "rsrun-cri did not start (logs/rsrun-cri.log)"

for c in /sys/fs/cgroup/*/; do
    case "$c" in */unified/) continue ;; esac
    mkdir -p "$c$CGROOT"
done
cat > "$R/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$R/cri/rsrun-cri.sock
imageServiceEndpoint: unix://$R/cri/rsrun-cri.sock
cgroupDriver: cgroupfs
cgroupRoot: $CGROOT
failCgroupV1: false
failSwapOn: false
authentication: {anonymous: {enabled: true}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
podLogsDir: $R/pod-logs
volumePluginDir: $R/volume-plugins
clusterDomain: cluster.local
syncFrequency: 5s
fileCheckFrequency: 5s
containerLogMaxSize: 64Ki
containerLogMaxFiles: 6
containerLogMonitorInterval: 3s
evictionHard: {memory.available: "50Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
EOF
# started by a script of its own, which scenario 19 runs again after killing the kubelet
cat > "$R/start-kubelet.sh" <<EOF
#!/bin/sh
"$K8S_BIN/kubelet" --config "$R/kubelet.yaml" --kubeconfig "$R/kubelet.kubeconfig" \\
    --root-dir "$R/kubelet" --cert-dir "$R/kubelet/pki" --hostname-override "$NODE" \\
    --node-ip "$NODE_IP" --v 2 >>"$R/logs/kubelet.log" 2>&1 </dev/null &
echo \$! > "$R/kubelet.pid"
EOF
chmod +x "$R/start-kubelet.sh"
: > "$R/logs/kubelet.log"
"$R/start-kubelet.sh"
PID_kubelet=$(cat "$R/kubelet.pid")
node_ready() {
    kill -0 "$PID_kubelet" || return 0  # no use waiting: said below
    [ "$(KUBECTL get node "$NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}
wait_for 360 "node $NODE Ready" node_ready && kill -0 "$PID_kubelet" 2>/dev/null || {
    tail -n 30 "$R/logs/kubelet.log" >&2; die "the node did not become Ready (logs/kubelet.log)"; }

KUBECONFIG=$R/admin.kubeconfig KUBECTL_BIN=$K8S_BIN/kubectl CRICTL="$W/bin/crictl" \
    CRI_ENDPOINT="unix://$R/cri/rsrun-cri.sock" NODE=$NODE NODE_IP=$NODE_IP RUN_DIR=$R \
    python3 "$HERE/scenarios.py" ${filter:+-k "$filter"}
rc=$?
if [ -n "${RSRUN_KUBELET_HOLD:-}" ]; then
    # for a look inside: nsenter --net=/proc/$(cat $R/hold.pid)/ns/net; rm $R/hold to go on
    echo $$ > "$R/hold.pid"; touch "$R/hold"
    say "holding: rm $R/hold to tear down"
    while [ -e "$R/hold" ]; do sleep 1; done
fi
exit $rc
