#!/bin/sh
# The inputs of mkimages.py (here and in integration/kubelet/images/): busybox and nginx
# unpacked from their Debian .debs (never installed), pause and nnp compiled statically.
# Usage: inputs.sh DIR   (DIR/busybox, DIR/nginx, DIR/pause, DIR/nnp; the .debs are kept)
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
d=$1
mkdir -p "$d/debs"
if [ ! -x "$d/busybox/bin/busybox" ] || [ ! -x "$d/nginx/usr/sbin/nginx" ]; then
    echo "inputs.sh: downloading the busybox and nginx .debs" >&2
    rm -rf "$d/debs"/*.deb "$d/busybox" "$d/nginx"
    # apt-get download writes into the current directory; _apt cannot, hence the warning
    ( cd "$d/debs" && apt-get download busybox nginx nginx-common ) >"$d/download.log" 2>&1 \
        || { cat "$d/download.log" >&2; echo "inputs.sh: apt-get download failed (apt-get update first?)" >&2; exit 1; }
    mkdir -p "$d/busybox" "$d/nginx"
    dpkg-deb -x "$d"/debs/busybox_*.deb "$d/busybox"
    dpkg-deb -x "$d"/debs/nginx_*.deb "$d/nginx"
    dpkg-deb -x "$d"/debs/nginx-common_*.deb "$d/nginx"
fi
for c in pause nnp; do
    gcc -static -O2 -o "$d/$c" "$HERE/$c.c" && strip "$d/$c" \
        || { echo "inputs.sh: compiling $c.c failed" >&2; exit 1; }
done
