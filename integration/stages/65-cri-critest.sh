#!/bin/sh
# Stage 65: critest (pinned in integration/containerd/go.mod, same images and registry as stage 60)
# against rsrun-cri, the project's own CRI server, with its floor: at least the passes measured
# and no failure but the known ones below. Skipped: what rsrun-cri does not have yet (the
# streaming server: exec, attach, port-forward; CNI networking: port mappings, pod-to-pod
# network), listed in docs/cri.md.
set -eu
cd "${RSRUN_TOP:-$(dirname "$0")/../..}"
command -v go >/dev/null 2>&1 || { echo "go is required (critest is built from the Go module proxy)"; exit 1; }
cargo build -q -p rsrun -p rsrun-shim -p rsrun-cri
exec integration/containerd/run.sh --cri "rsrun-cri=$PWD/target/debug/rsrun-cri" \
    -s 'runtime should support streaming interfaces' -s 'port mapping' -s 'should support network$' \
    --min-passed 84 \
    --known-failure '[k8s.io] Image Manager public image with digest should be pulled and removed [Conformance]' \
    --known-failure '[k8s.io] Runtime info runtime should support returning runtime info runtime should return runtime conditions [Conformance]' \
    --known-failure "[k8s.io] Container Mount Propagation runtime should support mount propagation mount with 'rshared' should support propagation from host to container and vice versa"
