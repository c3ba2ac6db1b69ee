#!/bin/bash
# rsrun-cri against a CNI plugin that misbehaves on demand (a script that records every call:
# its command, its stdin and its PATH), where the real plugins of smoke.sh always behave:
#   - an ADD that gives the pod no address fails RunPodSandbox, and is undone with a DEL;
#   - the pod's address is its interface's (eth0), not a host-side interface's;
#   - the runtime config of the capabilities containerd sends (pod annotations, cgroupPath);
#   - plugins run with the server's PATH;
#   - a RunPodSandbox that fails after its ADD, and whose undoing DEL fails too, keeps the pod
#     (not ready) for StopPodSandbox to DEL again: no address lease leaks;
#   - a plugin whose binary is gone does not keep a pod from being stopped and removed;
#   - a pod whose server was killed during its ADD, and whose undoing DEL fails at the restart,
#     is listed not ready for StopPodSandbox to DEL again (not hidden, holding its name);
#   - the same kill with the network's configuration gone by the restart: DELed all the same
#     (the list is recorded before the ADD);
#   - a failed RunPodSandbox whose undoing fails after the DEL (its namespace pins cannot be
#     removed) keeps the pod, not ready, for RemovePodSandbox to finish.
# Usage: cni-faults.sh RSRUN-CRI-BINARY
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
CRI=$1
W=${CRI_CNIFAULTS_WORK:-/var/tmp/rsrun-cri-cnifaults}
CRICTL=${CRICTL:-/var/tmp/rsrun-cri-smoke/bin/crictl}
fail() { echo "cri cni-faults: FAIL: $*" >&2; exit 1; }
ok() { echo "cri cni-faults: ok: $*"; }
[ -x "$CRICTL" ] || fail "no crictl at $CRICTL (integration/cri/smoke.sh builds it)"

R=$W/run
awk -v p="$R/" 'index($5, p) == 1 {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
done
rm -rf "$R"; mkdir -p "$R/net.d" "$R/bin" "$R/custom-path"
cri=
zp=
cleanup() {
    if [ -n "$cri" ]; then
        "$CRICTL" --runtime-endpoint "unix://$R/cri.sock" --timeout 30s rmp -af >/dev/null 2>&1 || true
        kill "$cri" 2>/dev/null; wait "$cri" 2>/dev/null || true
    fi
    if [ -n "$zp" ]; then kill "$zp" 2>/dev/null; wait "$zp" 2>/dev/null || true; fi
}
trap cleanup EXIT

# The plugin. Its behaviour: $R/mode ("ok", "veth": an address on a host-side interface too,
# "noip": a result without one, "failadd": ADD fails, "waitfail": ADD fails once $R/release
# exists); $R/fail-del present: the next DELs
# fail (as many as it says, 1 when empty).
cat > "$R/bin/fake" <<'PLUGIN'
#!/bin/bash
R=$(dirname "$(dirname "$0")")
in=$(cat)
printf '%s %s PATH=%s\n' "$CNI_COMMAND" "$(echo "$in" | tr -d '\n')" "$PATH" >> "$R/calls.log"
case $CNI_COMMAND in
ADD)
    case $(cat "$R/mode") in
    ok) echo '{"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "'"$CNI_NETNS"'"}], "ips": [{"address": "10.99.0.5/24", "interface": 0}]}' ;;
    veth) echo '{"cniVersion": "1.0.0", "interfaces": [{"name": "veth0"}, {"name": "eth0", "sandbox": "'"$CNI_NETNS"'"}], "ips": [{"address": "169.254.1.1/32", "interface": 0}, {"address": "10.99.0.7/24", "interface": 1}]}' ;;
    noip) echo '{"cniVersion": "1.0.0"}' ;;
    failadd) echo '{"cniVersion": "1.0.0", "code": 11, "msg": "ADD failed on purpose"}'; exit 1 ;;
    hang) sleep 60 ;;
    waitfail) # fails once $R/release exists
        for _ in $(seq 600); do [ -e "$R/release" ] && break; sleep 0.05; done
        echo '{"cniVersion": "1.0.0", "code": 11, "msg": "ADD failed on purpose"}'; exit 1 ;;
    esac ;;
DEL)
    if [ -e "$R/fail-del" ]; then
        n=$(cat "$R/fail-del"); n=${n:-1}
        if [ "$n" -gt 1 ]; then echo $((n - 1)) > "$R/fail-del"; else rm -f "$R/fail-del"; fi
        echo '{"cniVersion": "1.0.0", "code": 11, "msg": "DEL failed on purpose"}'
        exit 1
    fi ;;
VERSION) echo '{"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0"]}' ;;
esac
PLUGIN
chmod +x "$R/bin/fake"
cat > "$R/net.d/10-fake.conflist" <<JSON
{"cniVersion": "1.0.0", "name": "fake", "plugins": [
  {"type": "fake", "capabilities": {"io.kubernetes.cri.pod-annotations": true, "cgroupPath": true, "dns": true}}]}
JSON
echo ok > "$R/mode"

start_cri() {
    rm -f "$R/cri.sock"
    PATH="$R/custom-path:$PATH" "$CRI" --listen "unix://$R/cri.sock" --root "$R/root" --state "$R/state" \
        --cni-conf-dir "$R/net.d" --cni-bin-dir "$R/bin" --cgroup-parent rsrun-cri-cnifaults \
        --log-level info >>"$R/cri.log" 2>&1 &
    cri=$!
    for _ in $(seq 100); do [ -S "$R/cri.sock" ] && break; sleep 0.1; done
    [ -S "$R/cri.sock" ] || fail "rsrun-cri did not start: $(cat "$R/cri.log")"
}
start_cri
c() { "$CRICTL" --runtime-endpoint "unix://$R/cri.sock" --timeout 30s "$@" 2>"$R/crictl.err"; }
pod() { # NAME [EXTRA-JSON]
    echo '{"metadata": {"name": "'"$1"'", "namespace": "default", "uid": "'"$1"'-uid"}'"${2:-}"'}' > "$R/$1.json"
}
dels() { grep -c '^DEL ' "$R/calls.log" || true; }

# The runtime config and PATH a plugin is given.
: > "$R/calls.log"
pod caps ', "annotations": {"team": "blue"}, "linux": {"cgroup_parent": "/rsrun-cri-cnifaults-caps"},
 "dns_config": {"servers": ["10.99.0.53"], "searches": ["svc.test", "test"], "options": ["ndots:5"]}'
p=$(c runp "$R/caps.json") || fail "runp (caps): $(cat "$R/crictl.err")"
add=$(grep '^ADD ' "$R/calls.log")
dns_of() { python3 -c 'import json,sys; l=sys.stdin.read().split("\n")[0]; print(json.dumps(json.loads(l.split(" ", 1)[1].rsplit(" PATH=", 1)[0]).get("runtimeConfig", {}).get("dns"), sort_keys=True))'; }
echo "$add" | grep -q '"cgroupPath":"/rsrun-cri-cnifaults-caps"' \
    && echo "$add" | grep -q '"io.kubernetes.cri.pod-annotations":{"team":"blue"}' \
    || fail "the runtime config of the declared capabilities: $add"
want_dns='{"options": ["ndots:5"], "searches": ["svc.test", "test"], "servers": ["10.99.0.53"]}'
[ "$(echo "$add" | dns_of)" = "$want_dns" ] || fail "the dns capability at ADD: $add"
echo "$add" | grep -q "PATH=$R/custom-path:" || fail "the plugin did not get the server's PATH: $add"
[ "$(c inspectp -o go-template --template '{{.status.network.ip}}' "$p")" = 10.99.0.5 ] || fail "pod IP: $(c inspectp "$p")"
c stopp "$p" >/dev/null && c rmp "$p" >/dev/null || fail "stopp/rmp (caps): $(cat "$R/crictl.err")"
[ "$(grep '^DEL ' "$R/calls.log" | head -1 | dns_of)" = "$want_dns" ] || fail "the dns capability at DEL: $(grep '^DEL ' "$R/calls.log")"
ok "plugins get the pod annotations, cgroupPath and dns capabilities (at ADD and DEL) and the server's PATH"

# The pod's address is eth0's.
echo veth > "$R/mode"
pod veth
p=$(c runp "$R/veth.json") || fail "runp (veth): $(cat "$R/crictl.err")"
ip=$(c inspectp -o go-template --template '{{.status.network.ip}}' "$p")
[ "$ip" = 10.99.0.7 ] || fail "the pod's address is $ip, not its eth0's 10.99.0.7"
c stopp "$p" >/dev/null && c rmp "$p" >/dev/null || fail "stopp/rmp (veth): $(cat "$R/crictl.err")"
ok "the pod's address is its interface's, not a host-side one's"

# No address: RunPodSandbox fails and the ADD is undone.
echo noip > "$R/mode"; : > "$R/calls.log"
pod noip
if c runp "$R/noip.json" >/dev/null; then fail "a pod without an address was made"; fi
grep -q 'no address' "$R/crictl.err" || fail "runp without an address: $(cat "$R/crictl.err")"
[ "$(dels)" -ge 1 ] || fail "the ADD without an address was not undone: $(cat "$R/calls.log")"
[ -z "$(c pods -q)" ] || fail "a pod is listed after a failed runp: $(c pods)"
ok "an ADD that gives no address fails RunPodSandbox and is undone"

# Fails after its ADD (a sysctl the kernel refuses), and its DEL fails too: kept, not ready;
# StopPodSandbox runs the DEL again.
echo ok > "$R/mode"; : > "$R/calls.log"; touch "$R/fail-del"
pod kept ', "linux": {"sysctls": {"net.ipv4.ip_forward": "bogus"}}'
if c runp "$R/kept.json" >/dev/null; then fail "a pod with a refused sysctl was made"; fi
p=$(c pods -q --name kept)
[ -n "$p" ] || fail "the pod whose network could not be undone is not kept: $(cat "$R/cri.log" | tail -n 5)"
[ "$(c inspectp -o go-template --template '{{.status.state}}' "$p")" = SANDBOX_NOTREADY ] || fail "the kept pod is not NOTREADY"
[ "$(dels)" = 1 ] || fail "DELs before the stop: $(dels)"
c stopp "$p" >/dev/null || fail "stopp (kept): $(cat "$R/crictl.err")"
[ "$(dels)" = 2 ] || fail "StopPodSandbox did not run the DEL again: $(dels) DELs"
c rmp "$p" >/dev/null || fail "rmp (kept): $(cat "$R/crictl.err")"
# The same when the ADD itself failed (no result recorded) and both DELs that undo it fail.
echo failadd > "$R/mode"; : > "$R/calls.log"; echo 2 > "$R/fail-del"
pod kept2
if c runp "$R/kept2.json" >/dev/null; then fail "a pod whose ADD failed was made"; fi
p=$(c pods -q --name kept2)
[ -n "$p" ] || fail "the pod whose failed ADD could not be undone is not kept"
[ "$(dels)" = 2 ] || fail "DELs before the stop (failed ADD): $(dels)"
c stopp "$p" >/dev/null || fail "stopp (kept2): $(cat "$R/crictl.err")"
[ "$(dels)" = 3 ] || fail "StopPodSandbox did not DEL the pod whose ADD failed: $(dels) DELs"
c rmp "$p" >/dev/null || fail "rmp (kept2): $(cat "$R/crictl.err")"
echo ok > "$R/mode"
ok "a failed RunPodSandbox whose DEL fails keeps the pod, not ready, and StopPodSandbox DELs again (also when the ADD itself failed)"

# Its plugin's binary gone: the pod is still stopped and removed.
pod gone
p=$(c runp "$R/gone.json") || fail "runp (gone): $(cat "$R/crictl.err")"
mv "$R/bin/fake" "$R/fake.away"
c stopp "$p" >/dev/null || fail "stopp with the plugin gone: $(cat "$R/crictl.err")"
c rmp "$p" >/dev/null || fail "rmp with the plugin gone: $(cat "$R/crictl.err")"
mv "$R/fake.away" "$R/bin/fake"
grep -q 'CNI DEL passed over' "$R/cri.log" || fail "the passed-over DEL is not logged"
ok "a pod whose CNI plugin is gone is stopped and removed (the DEL logged as passed over)"
# Killed during its ADD; at the restart the undoing DEL fails: listed, not ready, and
# StopPodSandbox runs the DEL again.
echo hang > "$R/mode"; : > "$R/calls.log"
pod half
c runp "$R/half.json" >/dev/null 2>&1 &
runp=$!
for _ in $(seq 600); do grep -q '^ADD ' "$R/calls.log" && break; sleep 0.05; done
grep -q '^ADD ' "$R/calls.log" || fail "no ADD for the pod to kill the server in"
kill -9 "$cri"; wait "$cri" 2>/dev/null || true
wait "$runp" 2>/dev/null || true
echo ok > "$R/mode"; touch "$R/fail-del"
start_cri
p=$(c pods -q --name half)
[ -n "$p" ] || fail "a half-made pod whose undoing DEL failed is not listed: $(tail -n 5 "$R/cri.log")"
[ "$(c inspectp -o go-template --template '{{.status.state}}' "$p")" = SANDBOX_NOTREADY ] || fail "the half-made pod kept is not NOTREADY"
[ "$(dels)" = 1 ] || fail "DELs at the restart: $(dels)"
c stopp "$p" >/dev/null || fail "stopp (half): $(cat "$R/crictl.err")"
[ "$(dels)" = 2 ] || fail "StopPodSandbox did not DEL the half-made pod again: $(dels) DELs"
c rmp "$p" >/dev/null || fail "rmp (half): $(cat "$R/crictl.err")"
ok "a pod whose server was killed during its ADD and whose DEL failed at the restart is listed not ready; StopPodSandbox DELs it again"
# Killed during its ADD, and the network's configuration gone by the restart (a CNI
# daemonset rewriting it): the DEL still runs, with the list the ADD was given.
echo hang > "$R/mode"; : > "$R/calls.log"
pod noconf
c runp "$R/noconf.json" >/dev/null 2>&1 &
runp=$!
for _ in $(seq 600); do grep -q '^ADD ' "$R/calls.log" && break; sleep 0.05; done
grep -q '^ADD ' "$R/calls.log" || fail "no ADD for the pod to kill the server in (noconf)"
kill -9 "$cri"; wait "$cri" 2>/dev/null || true
wait "$runp" 2>/dev/null || true
echo ok > "$R/mode"
mv "$R/net.d/10-fake.conflist" "$R/fake.conflist.away"
start_cri
# (The first answer comes once the restart's recovery is done.)
[ -z "$(c pods -q --name noconf)" ] || fail "the half-made pod is still listed after its DEL"
[ "$(dels)" = 1 ] || fail "the ADD interrupted by the kill was not DELed once its configuration was gone: $(dels) DELs"
grep '^DEL ' "$R/calls.log" | grep -q '"name":"fake"' || fail "the DEL did not get the ADD's network list: $(grep '^DEL ' "$R/calls.log")"
mv "$R/fake.conflist.away" "$R/net.d/10-fake.conflist"
ok "an ADD interrupted by a kill is DELed at the restart with the list it was given, also when the configuration is gone"
# Plugins a killed server left that have exited but are nobody's to reap yet (zombies: their
# new parent does not wait for them, as a container's PID 1 without an init): ended, so the
# restart does not wait on them (it waited 5 s for each; 12 of them held it a minute).
kill -9 "$cri"; wait "$cri" 2>/dev/null || true
python3 - "$R/state/cni-running" > "$R/zombies.pid" <<'PY' &
import os, sys, time
pids = []
for _ in range(12):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    pids.append(pid)
time.sleep(0.5)
for pid in pids:
    start = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()[19]
    with open(os.path.join(sys.argv[1], str(pid)), "w") as f:
        f.write(start)
print(os.getpid(), flush=True)
time.sleep(300)
PY
zp=$!
for _ in $(seq 100); do [ -s "$R/zombies.pid" ] && break; sleep 0.1; done
[ "$(ls "$R/state/cni-running" | wc -l)" -ge 12 ] || fail "the zombie plugins' markers were not made"
start_cri
# A hang guard, not a timing: the first answer comes after the recovery.
timeout 30 "$CRICTL" --runtime-endpoint "unix://$R/cri.sock" --timeout 29s version >/dev/null 2>&1 \
    || fail "the restart waited on zombie plugins: $(tail -n 3 "$R/cri.log")"
kill "$zp"; wait "$zp" 2>/dev/null || true; zp=
[ -z "$(ls "$R/state/cni-running")" ] || fail "markers of ended plugins left: $(ls "$R/state/cni-running")"
ok "plugins a killed server left as zombies do not hold up its restart"

# The ADD fails, and the pod's directory cannot be removed (a mount another agent made in
# it): kept, not ready; RemovePodSandbox finishes once the mount is gone.
echo waitfail > "$R/mode"; : > "$R/calls.log"; rm -f "$R/release"
pod busy
c runp "$R/busy.json" >/dev/null 2>"$R/busy.err" &
runp=$!
for _ in $(seq 600); do grep -q '^ADD ' "$R/calls.log" && break; sleep 0.05; done
grep -q '^ADD ' "$R/calls.log" || fail "no ADD (busy)"
d=$(ls -dt "$R"/state/sandboxes/*/ | head -n 1)
[ -n "$d" ] || fail "no pod directory under $R/state/sandboxes"
mkdir -p "$d/busy" && mount -t tmpfs busy "$d/busy" || fail "mount in the pod's directory"
touch "$R/release"
if wait "$runp"; then fail "a pod whose ADD failed was made (busy)"; fi
p=$(c pods -q --name busy)
[ -n "$p" ] || { umount "$d/busy"; fail "the pod whose undoing failed is not kept: $(tail -n 3 "$R/cri.log")"; }
[ "$(c inspectp -o go-template --template '{{.status.state}}' "$p")" = SANDBOX_NOTREADY ] || { umount "$d/busy"; fail "the kept pod (busy) is not NOTREADY"; }
umount "$d/busy"
echo ok > "$R/mode"
c stopp "$p" >/dev/null && c rmp "$p" >/dev/null || fail "stopp/rmp (busy): $(cat "$R/crictl.err")"
[ ! -e "$d" ] || fail "the pod's directory $d is left after rmp"
[ -z "$(c pods -q --name busy)" ] || fail "the busy pod is still listed after rmp"
ok "a failed RunPodSandbox whose undoing fails keeps the pod, not ready, and RemovePodSandbox finishes"
echo "cri cni-faults: all passed"
