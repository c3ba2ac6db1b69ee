#!/bin/sh
# Stage 30: the image store (image/). Installs what its tests need (Debian's docker-registry for
# a real registry on 127.0.0.1, busybox-static for test images, chroot from coreutils) and runs
# its unit and integration tests. Needs root (mknod, overlay mounts, chroot).
set -eu
cd "${RSRUN_TOP:-$(dirname "$0")/../..}"
need=""
command -v docker-registry >/dev/null 2>&1 || need="$need docker-registry"
[ -x /bin/busybox ] && dpkg -s busybox-static >/dev/null 2>&1 || need="$need busybox-static"
command -v chroot >/dev/null 2>&1 || need="$need coreutils"
command -v openssl >/dev/null 2>&1 || need="$need openssl"
if [ -n "$need" ]; then
    apt-get update -q >/dev/null
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $need >/dev/null
fi
grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null || true
cargo test -p rsrun-image
