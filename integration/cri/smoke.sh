#!/bin/sh
# rsrun-cri through crictl (the pinned cri-tools of integration/containerd/go.mod): what this
# slice of the server answers. Version (the "0.1.0" the kubelet requires), Status (runtime ready,
# network not yet), RuntimeConfig's cgroup driver, image pull from a local plain-HTTP endpoint
# through the registry settings (a mirror of docker.io), list, inspect, ImageFsInfo counting the
# pulled bytes, removal (twice: idempotent), and clear errors for what is not built or not there.
# Usage: smoke.sh RSRUN-CRI-BINARY
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/../.." && pwd)
CRI=$1
W=${CRI_SMOKE_WORK:-/var/tmp/rsrun-cri-smoke}
fail() { echo "cri smoke: FAIL: $*" >&2; exit 1; }
ok() { echo "cri smoke: ok: $*"; }

# crictl, cached by the go.mod that pins it.
stamp=$(cat "$TOP/integration/containerd/go.mod" "$TOP/integration/containerd/go.sum" | sha256sum | cut -c1-16)
mkdir -p "$W/bin"
if [ "$(cat "$W/bin/.stamp" 2>/dev/null)" != "$stamp" ] || [ ! -x "$W/bin/crictl" ]; then
    ( cd "$TOP/integration/containerd" && GOFLAGS=-mod=readonly go build -o "$W/bin/crictl" sigs.k8s.io/cri-tools/cmd/crictl )
    echo "$stamp" > "$W/bin/.stamp"
fi

rm -rf "$W/run"; mkdir -p "$W/run"
R=$W/run
python3 "$TOP/integration/podman/mkimage.py" "$R/busybox.tar" docker.io/library/busybox:latest >/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 "$HERE/serve-oci.py" "$R/busybox.tar" "$port" & reg=$!
cat > "$R/registries.json" <<JSON
{"registries": {"docker.io": {"mirrors": [{"endpoint": "http://127.0.0.1:$port", "insecure": true}], "mirrors_only": true}}}
JSON
"$CRI" --listen "unix://$R/cri.sock" --root "$R/root" --state "$R/state" \
    --registry-config "$R/registries.json" >"$R/cri.log" 2>&1 & cri=$!
trap 'kill $cri $reg 2>/dev/null; wait $cri $reg 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -S "$R/cri.sock" ] && break; sleep 0.1; done
c() { "$W/bin/crictl" --runtime-endpoint "unix://$R/cri.sock" --image-endpoint "unix://$R/cri.sock" --timeout 30s "$@" 2>"$R/crictl.err"; }

v=$(c version) || fail "version: $(cat "$R/crictl.err")"
echo "$v" | grep -q '^Version:  0.1.0$' || fail "version: $v"
echo "$v" | grep -q '^RuntimeName:  rsrun$' || fail "version: $v"
ok "version"
info=$(c info -o json) || fail "info: $(cat "$R/crictl.err")"
echo "$info" | python3 -c '
import json, sys
c = {x["type"]: x["status"] for x in json.load(sys.stdin)["status"]["conditions"]}
assert c == {"RuntimeReady": True, "NetworkReady": False}, c' || fail "status conditions: $info"
ok "status"
used_before=$(c imagefsinfo -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"]["imageFilesystems"][0]["usedBytes"]["value"])')
c pull busybox >/dev/null || fail "pull: $(cat "$R/crictl.err")"
c images | grep -q '^docker.io/library/busybox  *latest ' || fail "images: $(c images)"
id=$(c inspecti -o json busybox | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"]["id"])')
case $id in sha256:????????????????????????????????????????????????????????????????) ;; *) fail "image id $id" ;; esac
used_after=$(c imagefsinfo -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"]["imageFilesystems"][0]["usedBytes"]["value"])')
[ "$used_after" -gt $((used_before + 500000)) ] || fail "ImageFsInfo did not count the pull: $used_before -> $used_after"
ok "pull, images, inspecti, imagefsinfo ($used_before -> $used_after bytes)"
c rmi busybox >/dev/null || fail "rmi: $(cat "$R/crictl.err")"
[ -z "$(c images -q)" ] || fail "image left after rmi: $(c images)"
ok "rmi"
if c pull busybox:no-such-tag >/dev/null; then fail "pull of a missing image succeeded"; fi
grep -q 'code = NotFound.*no-such-tag' "$R/crictl.err" || fail "the pull error is not NotFound naming the image: $(cat "$R/crictl.err")"
ok "missing image: $(tail -n1 "$R/crictl.err" | cut -c1-160)"
echo '{"metadata":{"name":"p","namespace":"n","uid":"u"}}' > "$R/pod.json"
if c runp "$R/pod.json" >/dev/null; then fail "runp answered though sandboxes are not built"; fi
grep -q 'Unimplemented' "$R/crictl.err" || fail "runp: $(cat "$R/crictl.err")"
ok "runp: UNIMPLEMENTED, as docs/cri.md says"
echo "cri smoke: all passed"
