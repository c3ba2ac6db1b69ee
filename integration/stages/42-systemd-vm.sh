#!/bin/sh
# Stage 42: the systemd cgroup driver (tests/tests/systemd.rs). This host has no systemd as
# PID 1, so the test binary runs in ONE boot of a throw-away VM that boots the host's
# systemd as PID 1 on pure cgroup v2, with the D-Bus system bus
# (integration/vm/vm-run.sh, RSRUN_VM_INIT=systemd). RSRUN_REQUIRE_SYSTEMD turns the tests'
# "skipped" into a failure, so the stage cannot pass without running them. In the same boot,
# integration/cri/systemd-vm.sh drives rsrun-cri with cgroup_driver = "systemd" through crictl.
set -eu
cd "${RSRUN_TOP:-$(dirname "$0")/../..}"
cargo build -p rsrun -p rsrun-shim -p rsrun-cri
crictl=$(integration/cri/build-crictl.sh /var/tmp/rsrun-cri-smoke/bin)
bin=$(cargo test -p rsrun-tests --test systemd --no-run --message-format=json 2>/dev/null \
    | grep '"executable":"[^"]*systemd-' | sed 's/.*"executable":"\([^"]*\)".*/\1/' | tail -n 1)
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
    echo "42-systemd-vm: cannot find the systemd test binary" >&2
    exit 1
fi
echo "42-systemd-vm: running $bin in a VM with systemd as PID 1" >&2
# (4 GiB: the image store keeps 1 GiB free on the VM's /tmp, a tmpfs of half the memory.)
RSRUN_VM_MEM=${RSRUN_VM_MEM:-4G} RSRUN_VM_INIT=systemd RSRUN_REQUIRE_SYSTEMD=1 integration/vm/vm-run.sh \
    "$bin --test-threads=2 && integration/cri/systemd-vm.sh $PWD/target/debug/rsrun-cri $PWD/target/debug/rsrun $crictl"
