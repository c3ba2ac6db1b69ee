#!/bin/sh
# Builds rsrun and runs a container from a default busybox bundle it makes itself.
# Usage: ./run.sh [COMMAND...]   (default: a greeting from inside the container)
# Needs root (namespaces, mounts, cgroups). Installs busybox-static and libseccomp-dev if missing.
set -eu
cd "$(dirname "$0")"
need=""
[ -x /bin/busybox ] && dpkg -s busybox-static >/dev/null 2>&1 || need="$need busybox-static"
dpkg -s libseccomp-dev >/dev/null 2>&1 || need="$need libseccomp-dev"
dpkg -s pkg-config >/dev/null 2>&1 || need="$need pkg-config"
command -v python3 >/dev/null 2>&1 || need="$need python3"
if [ -n "$need" ]; then
    apt-get update -q >/dev/null
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $need >/dev/null
fi
RSRUN=$(integration/build-release.sh)
B=$PWD/.work/bundle
if [ ! -f "$B/config.json" ]; then
    rm -rf "$B"
    mkdir -p "$B/rootfs/bin" "$B/rootfs/proc" "$B/rootfs/sys" "$B/rootfs/dev" "$B/rootfs/tmp" "$B/rootfs/etc" "$B/rootfs/root"
    cp /bin/busybox "$B/rootfs/bin/busybox"
    for a in $("$B/rootfs/bin/busybox" --list); do
        [ "$a" = busybox ] || ln -sf busybox "$B/rootfs/bin/$a"
    done
    echo 'root:x:0:0:root:/root:/bin/sh' > "$B/rootfs/etc/passwd"
    echo 'root:x:0:' > "$B/rootfs/etc/group"
    "$RSRUN" spec --bundle "$B"
fi
if [ $# -eq 0 ]; then
    set -- sh -c 'echo "hello from $(hostname): pid $$, uid $(id -u), $(ls /sys/class/net | wc -l) network interface(s)"; uname -sr'
fi
# Put the command into config.json (terminal off, so it works without a tty).
python3 - "$B/config.json" "$@" <<'PY'
import json, sys
path, args = sys.argv[1], sys.argv[2:]
c = json.load(open(path))
c["process"]["terminal"] = False
c["process"]["args"] = args
json.dump(c, open(path, "w"), indent=2)
PY
exec "$RSRUN" run "$B/"
