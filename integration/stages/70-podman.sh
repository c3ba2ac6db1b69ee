#!/bin/sh
# Stage 70: Podman drop-in proof. Debian's Podman drives the debug rsrun (`--runtime PATH`) and,
# in the same invocation and as the reference, Debian's runc through the same checks (run, logs,
# exec, stop, rm, --memory, --cap-drop, --read-only, -it on a pty, inspect, restart, ...), with an
# image built locally as an oci-archive (no registry). Fails when a check that passes with runc
# fails with rsrun, and when either runtime passes fewer than all 20 checks (the floor: comparing
# with runc alone would pass with Podman broken for both). Details and results:
# integration/podman/README.md.
set -eu
cd "${RSRUN_TOP:-$(dirname "$0")/../..}"
export RSRUN_TOP="$PWD"
need=""
for p in podman:/usr/bin/podman conmon:/usr/bin/conmon runc:/usr/sbin/runc \
         busybox-static:/bin/busybox python3:/usr/bin/python3; do
    [ -x "${p#*:}" ] || need="$need ${p%%:*}"
done
if [ -n "$need" ]; then
    apt-get update -q >/dev/null
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $need >/dev/null
fi
cargo build -q -p rsrun
# SIGINT on timeout: the suite then removes its containers and image before exiting.
timeout -s INT -k 30 540 python3 integration/podman/suite.py \
    --runtime runc=/usr/sbin/runc --runtime rsrun="$PWD/target/debug/rsrun" --min-passed 20 "$@"
