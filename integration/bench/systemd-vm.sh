#!/bin/sh
# The systemd cgroup driver's start-up cost against runc's (integration/bench/systemd-vm.py),
# in a VM that boots systemd as PID 1 on pure cgroup v2 (integration/vm/vm-run.sh,
# RSRUN_VM_INIT=systemd). Usage: systemd-vm.sh [--rounds N]; RSRUN (default: the static
# release build of integration/build-release.sh), RUNC (default /usr/sbin/runc).
set -eu
cd "$(dirname "$0")/../.."
RSRUN=${RSRUN:-$PWD/target/x86_64-unknown-linux-gnu/release/rsrun}
[ -x "$RSRUN" ] || integration/build-release.sh >&2
RSRUN_VM_INIT=systemd RSRUN_VM_TIMEOUT=${RSRUN_VM_TIMEOUT:-1800} integration/vm/vm-run.sh \
    "python3 integration/bench/systemd-vm.py --rsrun $RSRUN --runc ${RUNC:-/usr/sbin/runc} $*"
