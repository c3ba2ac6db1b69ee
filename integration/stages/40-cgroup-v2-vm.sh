#!/bin/sh
# Stage 40: the cgroup v2 tests (tests/tests/cgroups_v2.rs). This host is hybrid (cgroup
# v1) and its cgroup mounts are never changed, so the test binary is built here and run in
# ONE boot of a throw-away VM with pure cgroup v2 (integration/vm/vm-run.sh; qemu, TCG:
# seconds per boot). RSRUN_REQUIRE_CGROUP_V2 turns the tests' "not v2: skipped" into a
# failure, so the stage cannot pass without running them.
set -eu
cd "${RSRUN_TOP:-$(dirname "$0")/../..}"
cargo build -p rsrun -p rsrun-shim
bin=$(cargo test -p rsrun-tests --test cgroups_v2 --no-run --message-format=json 2>/dev/null \
    | grep '"executable":"[^"]*cgroups_v2-' | sed 's/.*"executable":"\([^"]*\)".*/\1/' | tail -n 1)
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
    echo "40-cgroup-v2-vm: cannot find the cgroups_v2 test binary" >&2
    exit 1
fi
echo "40-cgroup-v2-vm: running $bin in a cgroup v2 VM" >&2
RSRUN_REQUIRE_CGROUP_V2=1 integration/vm/vm-run.sh "$bin --test-threads=2"
