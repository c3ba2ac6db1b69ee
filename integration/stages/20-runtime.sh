#!/bin/sh
# Stage 20: the runtime: unit tests, then the end-to-end tests in tests/ that drive the
# built rsrun binary on busybox bundles (needs root, namespaces, cgroups).
set -eu
cd "${RSRUN_TOP:-$(dirname "$0")/../..}"
need=""
[ -x /bin/busybox ] && dpkg -s busybox-static >/dev/null 2>&1 || need="$need busybox-static"
dpkg -s libseccomp-dev >/dev/null 2>&1 || need="$need libseccomp-dev"
command -v pkg-config >/dev/null 2>&1 || need="$need pkg-config"
# tests/tests/rootless.rs: newuidmap/newgidmap for subordinate id mappings.
command -v newuidmap >/dev/null 2>&1 || need="$need uidmap"
if [ -n "$need" ]; then
    apt-get update -q >/dev/null
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $need >/dev/null
fi
cargo build -p rsrun -p rsrun-shim
cargo test -p rsrun
cargo test -p rsrun-shim
cargo test -p rsrun-tests
