#!/bin/sh
# Stage 62: critest with the systemd cgroup driver in the VM that boots systemd as PID 1:
# containerd SystemdCgroup = true with runc (the reference) and rsrun, then rsrun-cri with
# cgroup_driver = "systemd"; floors and the OOMKilled spec as integration/containerd/systemd-critest.sh
# explains.
set -eu
cd "${RSRUN_TOP:-$(dirname "$0")/../..}"
exec integration/containerd/systemd-critest.sh
