#!/bin/sh
# Builds crictl (the cri-tools pinned by integration/containerd/go.mod) into DIR/crictl, once
# per version of that go.mod, and prints its path. Usage: build-crictl.sh DIR
set -eu
TOP=$(cd "$(dirname "$0")/../.." && pwd)
D=$1
stamp=$(cat "$TOP/integration/containerd/go.mod" "$TOP/integration/containerd/go.sum" | sha256sum | cut -c1-16)
mkdir -p "$D"
if [ "$(cat "$D/.stamp" 2>/dev/null)" != "$stamp" ] || [ ! -x "$D/crictl" ]; then
    ( cd "$TOP/integration/containerd" && GOFLAGS=-mod=readonly go build -o "$D/crictl" sigs.k8s.io/cri-tools/cmd/crictl ) >&2
    echo "$stamp" > "$D/.stamp"
fi
echo "$D/crictl"
