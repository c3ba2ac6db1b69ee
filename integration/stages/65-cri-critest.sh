#!/bin/sh
# Stage 65: critest (pinned in integration/containerd/go.mod, same images and registry as stage 60)
# against rsrun-cri, the project's own CRI server, with its floor: at least the passes measured
# (109 of 142 with critest v1.37.0; the rest: NRI 13 and AppArmor 9 skip themselves on this
# host, the 5 benchmarks are a separate mode) and no failure but the digest-pinned image that
# cannot be rebuilt offline. Skipped here: the streaming specs (exec, attach, port-forward), the
# streaming server is not built yet.
set -eu
cd "${RSRUN_TOP:-$(dirname "$0")/../..}"
command -v go >/dev/null 2>&1 || { echo "go is required (critest is built from the Go module proxy)"; exit 1; }
cargo build -q -p rsrun -p rsrun-shim -p rsrun-cri
exec integration/containerd/run.sh --cri "rsrun-cri=$PWD/target/debug/rsrun-cri" \
    -s 'runtime should support streaming interfaces' \
    --min-passed 109 \
    --known-failure '[k8s.io] Image Manager public image with digest should be pulled and removed [Conformance]'
