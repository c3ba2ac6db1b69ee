#!/bin/sh
# Stage 60: containerd drop-in proof. critest (cri-tools, pinned in integration/containerd/go.mod,
# built from the Go module proxy) against Debian's containerd 1.6 with its stock runc shim, run
# twice in one invocation: BinaryName = Debian's runc (the reference), then the debug rsrun.
# Installs what it needs (containerd, CNI plugins, docker-registry, ...); images are built from
# Debian packages and served by a registry inside a network namespace made for the run.
# Fails when a spec that passes with runc fails with rsrun. See integration/containerd/README.md.
set -eu
cd "${RSRUN_TOP:-$(dirname "$0")/../..}"
command -v go >/dev/null 2>&1 || { echo "go is required (critest is built from the Go module proxy)"; exit 1; }
cargo build -q -p rsrun
exec integration/containerd/run.sh -r runc=/usr/sbin/runc -r "rsrun=$PWD/target/debug/rsrun"
