#!/bin/sh
# A run.sh --hook for --systemd-cgroup runs (stage 42, systemd as PID 1): with the server of the
# run still up, a pod in the slice critest uses (test.slice) and a container in it; each must be
# a scope of that slice which systemd has active and the kernel shows holding processes, and
# both scopes must be gone after rmp. Prints "systemd check: ok" as its last line on success.
set -eu
c() { "$RUN_CRICTL" --runtime-endpoint "$RUN_ENDPOINT" --image-endpoint "$RUN_ENDPOINT" --timeout 60s "$@"; }
fail() { echo "systemd check: FAIL: $*"; exit 1; }
IMG=registry.k8s.io/e2e-test-images/busybox:1.29-2
c pull "$IMG" >/dev/null
cat > "$RUN_DIR/sd-pod.json" <<JSON
{"metadata": {"name": "sd-check", "namespace": "default", "uid": "sd-check-uid"},
 "linux": {"cgroup_parent": "test.slice", "security_context": {"namespace_options": {"network": 2}}}}
JSON
cat > "$RUN_DIR/sd-ctr.json" <<JSON
{"metadata": {"name": "sleeper"}, "image": {"image": "$IMG"}, "command": ["sleep", "1000"]}
JSON
P=$(c runp "$RUN_DIR/sd-pod.json")
C=$(c create "$P" "$RUN_DIR/sd-ctr.json" "$RUN_DIR/sd-pod.json")
c start "$C" >/dev/null
units=""
for id in "$P" "$C"; do
    d=$(ls -d /sys/fs/cgroup/test.slice/*"$id"*.scope 2>/dev/null | head -n1) || true
    [ -n "$d" ] || fail "no scope named after $id in /sys/fs/cgroup/test.slice: $(ls /sys/fs/cgroup/test.slice)"
    u=$(basename "$d")
    [ "$(systemctl show -p ActiveState --value "$u")" = active ] || fail "$u is not active in systemd"
    [ "$(systemctl show -p Slice --value "$u")" = test.slice ] || fail "$u is not in test.slice"
    [ -n "$(cat "$d/cgroup.procs")" ] || fail "$u holds no process"
    echo "scope $u: active in test.slice, pids $(tr '\n' ' ' < "$d/cgroup.procs")"
    units="$units $u"
done
c stopp "$P" >/dev/null
c rmp "$P" >/dev/null
for u in $units; do
    i=0
    while [ "$(systemctl show -p LoadState --value "$u")" != not-found ]; do
        i=$((i + 1)); [ $i -lt 600 ] || fail "$u is still loaded after rmp: $(systemctl show -p ActiveState --value "$u")"
        sleep 0.1
    done
done
echo "systemd check: ok"
