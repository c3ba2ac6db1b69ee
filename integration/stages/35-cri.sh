#!/bin/sh
# Stage 35: rsrun-cri, the CRI server: its unit tests, then integration/cri/smoke.sh drives the
# built server with crictl (built from the Go module proxy, pinned in integration/containerd).
set -eu
cd "${RSRUN_TOP:-$(dirname "$0")/../..}"
command -v go >/dev/null 2>&1 || { echo "go is required (crictl is built from the Go module proxy)"; exit 1; }
# The smoke test's pod network: Debian's CNI plugins and iptables (for portmap).
if [ ! -x /usr/lib/cni/bridge ] || ! command -v iptables >/dev/null 2>&1; then
    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        containernetworking-plugins iptables >/dev/null
fi
cargo build -p rsrun-cri -p rsrun-shim -p rsrun
cargo test -p rsrun-cri
integration/cri/smoke.sh "$PWD/target/debug/rsrun-cri" "$PWD/target/debug/rsrun"
# A CNI plugin that misbehaves on demand (no address, failing DEL, gone).
integration/cri/cni-faults.sh "$PWD/target/debug/rsrun-cri"
# The server killed -9 at random points (seeded by the time; the seed is printed on failure).
integration/cri/kill9.sh "$PWD/target/debug/rsrun-cri" "$PWD/target/debug/rsrun" 25
