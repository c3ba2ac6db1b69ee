#!/bin/sh
# Builds the Kubernetes binaries the kubelet harness runs (kubelet, kube-apiserver, kubectl) and
# etcd, at the versions pinned in go.mod/go.sum beside this script, from the Go module proxy.
# The binaries are cached by the hash of go.mod and go.sum under $RSRUN_K8S_CACHE (default
# /var/tmp/rsrun-k8s), so only a new machine or a new pin pays for the build (about 10 minutes
# on 2 cores). Prints the bin directory on stdout.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${RSRUN_K8S_CACHE:-/var/tmp/rsrun-k8s}
key=$(cat "$HERE/go.mod" "$HERE/go.sum" | sha256sum | cut -c1-16)
BIN=$CACHE/$key/bin
tools="kubelet kube-apiserver kubectl etcd"
have=1
for t in $tools; do [ -x "$BIN/$t" ] || have=0; done
if [ $have = 0 ]; then
    mkdir -p "$BIN.tmp"
    start=$(date +%s)
    echo "build.sh: building $tools into $BIN (go.mod key $key)" >&2
    cd "$HERE"
    # The version stamps Kubernetes' own build sets (hack/lib/version.sh): without them the
    # binaries call themselves v0.0.0-master, and the API server's compatibility version with
    # them. -trimpath and no debug info: smaller binaries, the same code.
    v=$(go list -m -f '{{.Version}}' k8s.io/kubernetes)
    minor=$(echo "$v" | cut -d. -f2)
    x=
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        x="$x -X $pkg.gitVersion=$v -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
    done
    CGO_ENABLED=0 go build -trimpath -ldflags="-s -w$x" -o "$BIN.tmp/" \
        k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-apiserver \
        k8s.io/kubernetes/cmd/kubectl go.etcd.io/etcd/server/v3 >&2
    # go names the etcd binary after its module path: go.etcd.io/etcd/server/v3 -> server
    mv "$BIN.tmp/server" "$BIN.tmp/etcd"
    for t in $tools; do [ -x "$BIN.tmp/$t" ] || { echo "build.sh: $t was not built" >&2; exit 1; }; done
    rm -rf "$BIN" && mv "$BIN.tmp" "$BIN"
    echo "build.sh: built in $(( $(date +%s) - start ))s" >&2
fi
echo "$BIN"
