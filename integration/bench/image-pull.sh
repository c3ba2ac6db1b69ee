#!/bin/sh
# Image pull benchmark: rsrun-image vs Debian's containerd 1.6 (ctr), pulling and unpacking the
# same image from the same local registry (Debian's docker-registry on 127.0.0.1), cold (empty
# store) and warm (image present: a no-op pull), median of $RUNS runs each.
# The image is a Debian minbase made with debootstrap, split into 4 gzip layers.
#
# Usage: integration/bench/image-pull.sh            (results on stdout and in $BENCH_HOME/results.md)
# Env:   BENCH_HOME (default /var/tmp/rsrun-image-bench), RUNS (default 5), PORT (default 5055),
#        SUITE (default bookworm), MIRROR (default http://deb.debian.org/debian)
set -eu
TOP=$(cd "$(dirname "$0")/../.." && pwd)
W=${BENCH_HOME:-/var/tmp/rsrun-image-bench}
RUNS=${RUNS:-5}
PORT=${PORT:-5055}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
REG=127.0.0.1:$PORT
REPO=bench/minbase
IMG=$REG/$REPO:v1
mkdir -p "$W"

need=""
for p in docker-registry containerd debootstrap curl bc; do
    dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"
done
if [ -n "$need" ]; then
    apt-get update -q >/dev/null
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $need >/dev/null
fi

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

# ---- the image ----------------------------------------------------------------------------
if [ ! -f "$W/rootfs-minbase/etc/debian_version" ]; then
    rm -rf "$W/rootfs-minbase"
    debootstrap --variant=minbase "$SUITE" "$W/rootfs-minbase" "$MIRROR" >"$W/debootstrap.log" 2>&1
fi
L=$W/layers
if [ ! -f "$L/manifest.json" ]; then
    rm -rf "$L" && mkdir -p "$L"
    R=$W/rootfs-minbase
    tar -C "$R" --numeric-owner -cf "$L/1.tar" usr/lib
    tar -C "$R" --numeric-owner --exclude=usr/lib -cf "$L/2.tar" usr
    tar -C "$R" --numeric-owner -cf "$L/3.tar" var
    tar -C "$R" --numeric-owner --exclude=./usr --exclude=./var -cf "$L/4.tar" .
    diffs="" descs=""
    for i in 1 2 3 4; do
        diffs="$diffs${diffs:+,}\"sha256:$(sha256sum "$L/$i.tar" | cut -d' ' -f1)\""
        gzip -6 -n -c "$L/$i.tar" >"$L/$i.tar.gz"
        rm "$L/$i.tar"
        d=$(sha256sum "$L/$i.tar.gz" | cut -d' ' -f1)
        s=$(stat -c %s "$L/$i.tar.gz")
        descs="$descs${descs:+,}{\"mediaType\":\"application/vnd.docker.image.rootfs.diff.tar.gzip\",\"digest\":\"sha256:$d\",\"size\":$s}"
    done
    printf '{"architecture":"amd64","os":"linux","config":{"Cmd":["/bin/bash"]},"rootfs":{"type":"layers","diff_ids":[%s]}}' "$diffs" >"$L/config.json"
    cd_=$(sha256sum "$L/config.json" | cut -d' ' -f1)
    cs=$(stat -c %s "$L/config.json")
    printf '{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"sha256:%s","size":%s},"layers":[%s]}' \
        "$cd_" "$cs" "$descs" >"$L/manifest.json"
fi

# ---- the registry -------------------------------------------------------------------------
RD=$W/registry
mkdir -p "$RD/storage"
cat >"$RD/config.yml" <<EOC
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $RD/storage
http:
  addr: $REG
EOC
regpid=""
ctrdpid=""
cleanup() {
    [ -n "$ctrdpid" ] && kill "$ctrdpid" 2>/dev/null || true
    [ -n "$regpid" ] && kill "$regpid" 2>/dev/null || true
}
trap cleanup EXIT INT TERM
if ! curl -fsS "http://$REG/v2/" >/dev/null 2>&1; then
    docker-registry serve "$RD/config.yml" >"$RD/log" 2>&1 &
    regpid=$!
    for _ in $(seq 50); do curl -fsS "http://$REG/v2/" >/dev/null 2>&1 && break; sleep 0.2; done
fi

push_blob() {
    d=sha256:$(sha256sum "$1" | cut -d' ' -f1)
    if curl -fsI "http://$REG/v2/$REPO/blobs/$d" >/dev/null 2>&1; then return; fi
    loc=$(curl -fsS -X POST -D - -o /dev/null "http://$REG/v2/$REPO/blobs/uploads/" | tr -d '\r' | awk 'tolower($1)=="location:" {print $2}')
    case $loc in http*) ;; *) loc="http://$REG$loc" ;; esac
    case $loc in *\?*) sep='&' ;; *) sep='?' ;; esac
    curl -fsS -X PUT -H 'Content-Type: application/octet-stream' --data-binary "@$1" "$loc${sep}digest=$d" >/dev/null
}
for f in "$L"/config.json "$L"/*.tar.gz; do push_blob "$f"; done
curl -fsS -X PUT -H 'Content-Type: application/vnd.docker.distribution.manifest.v2+json' \
    --data-binary "@$L/manifest.json" "http://$REG/v2/$REPO/manifests/v1" >/dev/null
compressed=$(cat "$L"/*.tar.gz | wc -c)

# ---- rsrun-image --------------------------------------------------------------------------
(cd "$TOP" && cargo build -q --release -p rsrun-image)
BIN=$TOP/target/release/rsrun-image
RCFG=$W/rsrun-registries.json
printf '{"registries":{"%s":{"insecure":true}}}\n' "$REG" >"$RCFG"
RROOT=$W/rsrun-root
rs_pull() { "$BIN" --root "$RROOT" --config "$RCFG" pull -q "$IMG" >/dev/null; }

# ---- containerd 1.6 -----------------------------------------------------------------------
C=$W/ctrd
SOCK=$C/containerd.sock
start_containerd() {
    rm -rf "$C/root" "$C/state"
    mkdir -p "$C/root" "$C/state"
    cat >"$C/config.toml" <<EOC
version = 2
root = "$C/root"
state = "$C/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[debug]
  address = "$C/debug.sock"
EOC
    containerd --config "$C/config.toml" >"$C/log" 2>&1 &
    ctrdpid=$!
    for _ in $(seq 100); do ctr --address "$SOCK" version >/dev/null 2>&1 && return; sleep 0.1; done
    echo "containerd did not start; see $C/log" >&2; exit 1
}
stop_containerd() { kill "$ctrdpid"; wait "$ctrdpid" 2>/dev/null || true; ctrdpid=""; }
ctr_pull() { ctr --address "$SOCK" -n bench images pull --plain-http "$IMG" >/dev/null; }

# Cold runs alternate between the two so both see the same background load.
: >"$W/rs-cold" ; : >"$W/rs-warm" ; : >"$W/ct-cold" ; : >"$W/ct-warm"
for _ in $(seq "$RUNS"); do
    rm -rf "$RROOT"; sync
    t0=$(now); rs_pull; t1=$(now)
    echo "$t1 - $t0" | bc >>"$W/rs-cold"
    start_containerd; sync
    t0=$(now); ctr_pull; t1=$(now)
    echo "$t1 - $t0" | bc >>"$W/ct-cold"
    stop_containerd
done
for _ in $(seq "$RUNS"); do
    t0=$(now); rs_pull; t1=$(now)
    echo "$t1 - $t0" | bc >>"$W/rs-warm"
done
start_containerd; ctr_pull
for _ in $(seq "$RUNS"); do
    t0=$(now); ctr_pull; t1=$(now)
    echo "$t1 - $t0" | bc >>"$W/ct-warm"
done
stop_containerd

# ---- reference: tar -xzf of the same layers, one after the other ---------------------------
: >"$W/tar"
for _ in $(seq "$RUNS"); do
    rm -rf "$W/tarx"; mkdir -p "$W/tarx"; sync
    t0=$(now); for i in 1 2 3 4; do tar -C "$W/tarx" -xzf "$L/$i.tar.gz"; done; t1=$(now)
    echo "$t1 - $t0" | bc >>"$W/tar"
done
rm -rf "$W/tarx"

rc=$(median <"$W/rs-cold"); rw=$(median <"$W/rs-warm")
cc=$(median <"$W/ct-cold"); cw=$(median <"$W/ct-warm")
tx=$(median <"$W/tar")
{
    echo "image: debootstrap --variant=minbase $SUITE, 4 gzip layers, $compressed bytes compressed; $RUNS runs, medians"
    echo
    echo "| | rsrun-image | containerd $(containerd --version | awk '{print $3}') (ctr) | ratio rsrun/containerd |"
    echo "|---|---|---|---|"
    printf '| cold pull + unpack | %.3f s | %.3f s | %.2f |\n' "$rc" "$cc" "$(echo "$rc / $cc" | bc -l)"
    printf '| warm no-op pull | %.1f ms | %.1f ms | %.2f |\n' "$(echo "$rw * 1000" | bc -l)" "$(echo "$cw * 1000" | bc -l)" "$(echo "$rw / $cw" | bc -l)"
    printf '| reference: tar -xzf of the 4 layers, sequential | %.3f s | | |\n' "$tx"
    echo
    echo "runs (s): rsrun cold $(tr '\n' ' ' <"$W/rs-cold"); containerd cold $(tr '\n' ' ' <"$W/ct-cold")"
    echo "runs (s): rsrun warm $(tr '\n' ' ' <"$W/rs-warm"); containerd warm $(tr '\n' ' ' <"$W/ct-warm")"
} | tee "$W/results.md"
