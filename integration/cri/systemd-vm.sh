#!/bin/sh
# rsrun-cri with cgroup_driver = "systemd", run INSIDE the VM of stage 42 (systemd as PID 1,
# pure cgroup v2): pods in the slices the kubelet names (kubepods-besteffort-pod<uid>.slice),
# each pause and container a transient scope of that slice, limits seen by systemd and in the
# cgroup files, UpdateContainerResources through systemd, every scope gone after rm/rmp, and a
# cgroupfs-style parent refused with a clear error. What is checked is read from systemd
# (systemctl) and the kernel (/proc/PID/cgroup, cgroup files).
# Usage: systemd-vm.sh RSRUN-CRI-BINARY RSRUN-BINARY CRICTL
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/../.." && pwd)
CRI=$1
RSRUN=$2
CRICTL=$3
fail() { echo "cri systemd: FAIL: $*" >&2; [ -f "$R/cri.log" ] && tail -n 30 "$R/cri.log" >&2; exit 1; }
ok() { echo "cri systemd: ok: $*"; }
[ "$(cat /proc/1/comm)" = systemd ] || fail "systemd is not PID 1 here (run it through integration/stages/42-systemd-vm.sh)"

R=$(mktemp -d /tmp/rsrun-cri-sd.XXXXXX)
python3 "$TOP/integration/podman/mkimage.py" "$R/busybox.tar" docker.io/library/busybox:latest >/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 "$HERE/serve-oci.py" "$R/busybox.tar" "$port" & reg=$!
for _ in $(seq 1 300); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $port))" 2>/dev/null && break
    sleep 0.1
done
cat > "$R/registries.json" <<JSON
{"registries": {"docker.io": {"mirrors": [{"endpoint": "http://127.0.0.1:$port", "insecure": true}], "mirrors_only": true}}}
JSON
mkdir -p "$R/net.d"
cat > "$R/rsrun-cri.toml" <<TOML
cgroup_driver = "systemd"
cni_conf_dir = "$R/net.d"
cni_bin_dirs = ["/usr/lib/cni"]
TOML
"$CRI" --config "$R/rsrun-cri.toml" --listen "unix://$R/cri.sock" --root "$R/root" --state "$R/state" \
    --registry-config "$R/registries.json" >"$R/cri.log" 2>&1 & srv=$!
trap 'kill $srv $reg 2>/dev/null || true' EXIT
c() { "$CRICTL" --runtime-endpoint "unix://$R/cri.sock" --image-endpoint "unix://$R/cri.sock" --timeout 30s "$@" 2>"$R/crictl.err"; }
for _ in $(seq 1 200); do c version >/dev/null 2>&1 && break; sleep 0.1; done
c version >/dev/null || fail "the server did not start"
show() { systemctl show -p "$2" --value "$1"; }
gone() { [ "$(show "$1" LoadState)" = not-found ]; }

c pull busybox >/dev/null || fail "pull: $(cat "$R/crictl.err")"
SLICE=kubepods-besteffort-podsd1.slice
cat > "$R/pod.json" <<JSON
{"metadata": {"name": "sd", "namespace": "default", "uid": "sd1"}, "log_directory": "$R/logs",
 "linux": {"cgroup_parent": "$SLICE", "security_context": {"namespace_options": {"network": 2}}}}
JSON
cat > "$R/ctr.json" <<'JSON'
{"metadata": {"name": "c"}, "image": {"image": "busybox"}, "log_path": "c.log",
 "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done"],
 "linux": {"resources": {"memory_limit_in_bytes": 67108864, "cpu_shares": 512}}}
JSON
P=$(c runp "$R/pod.json") || fail "runp: $(cat "$R/crictl.err")"
pause="rsrun-pause-$P.scope"
[ "$(show "$pause" ActiveState)" = active ] || fail "$pause is not active: $(show "$pause" ActiveState)"
[ "$(show "$pause" Slice)" = "$SLICE" ] || fail "$pause is in $(show "$pause" Slice), not $SLICE"
ppid=$("$RSRUN" --root "$R/state/runtime" state "pause-$P" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
want="0::/kubepods.slice/kubepods-besteffort.slice/$SLICE/$pause"
[ "$(cat /proc/"$ppid"/cgroup)" = "$want" ] || fail "the pause's cgroup is $(cat /proc/"$ppid"/cgroup), not $want"
ok "the pod's pause is the scope $pause in $SLICE (the kernel puts it there)"

C=$(c create "$P" "$R/ctr.json" "$R/pod.json") || fail "create: $(cat "$R/crictl.err")"
c start "$C" >/dev/null || fail "start: $(cat "$R/crictl.err")"
u="rsrun-$C.scope"
dir=/sys/fs/cgroup/kubepods.slice/kubepods-besteffort.slice/$SLICE/$u
[ "$(show "$u" ActiveState)" = active ] || fail "$u is not active"
[ "$(show "$u" MemoryMax)" = 67108864 ] || fail "$u MemoryMax $(show "$u" MemoryMax)"
[ "$(cat "$dir/memory.max")" = 67108864 ] || fail "$dir/memory.max: $(cat "$dir/memory.max")"
c update --memory 134217728 "$C" >/dev/null || fail "update: $(cat "$R/crictl.err")"
[ "$(show "$u" MemoryMax)" = 134217728 ] || fail "after update: $u MemoryMax $(show "$u" MemoryMax)"
[ "$(cat "$dir/memory.max")" = 134217728 ] || fail "after update: memory.max $(cat "$dir/memory.max")"
systemctl daemon-reload
[ "$(cat "$dir/memory.max")" = 134217728 ] || fail "after daemon-reload: memory.max $(cat "$dir/memory.max")"
ok "the container is the scope $u: MemoryMax in systemd and memory.max, UpdateContainerResources, daemon-reload"
# cgroup v2: a container has a cgroup namespace of its own (its /proc/self/cgroup is 0::/), a
# privileged one the node's (it sees and manages the whole hierarchy), as containerd does.
cpid=$("$RSRUN" --root "$R/state/runtime" state "$C" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
[ "$(readlink /proc/"$cpid"/ns/cgroup)" != "$(readlink /proc/self/ns/cgroup)" ] || fail "the container shares the node's cgroup namespace"
sed 's/"network": 2}/"network": 2}, "privileged": true/' "$R/pod.json" > "$R/podp.json"
sed 's/"uid": "sd1"/"uid": "sdp"/; s/"name": "sd"/"name": "sdp"/' -i "$R/podp.json"
cat > "$R/ctrp.json" <<'JSON'
{"metadata": {"name": "p"}, "image": {"image": "busybox"}, "command": ["sleep", "1000"],
 "linux": {"security_context": {"privileged": true}}}
JSON
PP=$(c runp "$R/podp.json") || fail "runp (privileged): $(cat "$R/crictl.err")"
CP=$(c create "$PP" "$R/ctrp.json" "$R/podp.json") && c start "$CP" >/dev/null || fail "privileged container: $(cat "$R/crictl.err")"
ppid2=$("$RSRUN" --root "$R/state/runtime" state "$CP" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
[ "$(readlink /proc/"$ppid2"/ns/cgroup)" = "$(readlink /proc/self/ns/cgroup)" ] || fail "a privileged container has a cgroup namespace of its own"
c rm -f "$CP" >/dev/null && c stopp "$PP" >/dev/null && c rmp "$PP" >/dev/null || fail "rm the privileged pod: $(cat "$R/crictl.err")"
ok "cgroup v2: a container's own cgroup namespace, a privileged one's the node's"

c stop "$C" >/dev/null || fail "stop: $(cat "$R/crictl.err")"
c rm "$C" >/dev/null || fail "rm: $(cat "$R/crictl.err")"
gone "$u" || fail "$u left after rm: $(show "$u" ActiveState)"
c stopp "$P" >/dev/null || fail "stopp: $(cat "$R/crictl.err")"
c rmp "$P" >/dev/null || fail "rmp: $(cat "$R/crictl.err")"
gone "$pause" || fail "$pause left after rmp"
left=$(systemctl list-units --all --plain --no-legend 'rsrun-*.scope' | wc -l)
[ "$left" = 0 ] || fail "$left rsrun scopes left: $(systemctl list-units --all --plain --no-legend 'rsrun-*.scope')"
ok "rm and rmp stop the scopes"

sed "s/$SLICE/\/kubepods\/besteffort\/podsd2/; s/\"sd1\"/\"sd2\"/" "$R/pod.json" > "$R/pod2.json"
if c runp "$R/pod2.json" >/dev/null; then fail "a cgroupfs parent was accepted with the systemd driver"; fi
grep -q "not a systemd slice" "$R/crictl.err" || fail "unclear error for a cgroupfs parent: $(cat "$R/crictl.err")"
ok "a cgroupfs-style cgroup_parent is refused: $(grep -o 'cgroup_parent[^:]*' "$R/crictl.err" | head -1)"
echo "cri systemd: all passed"
