#!/bin/sh
# Builds the release rsrun (or the package named as $1, e.g. rsrun-shim) as a static-pie binary
# (glibc, crt-static) and prints its path.
# Static linking drops ld.so and the shared libc mappings: peak RSS of `rsrun run` falls
# by about 0.8 MiB on this host (docs/benchmarks.md). --target keeps the flag off
# build scripts and proc-macros, which cannot be static.
set -eu
cd "$(dirname "$0")/.."
host=$(rustc -vV | sed -n 's/^host: //p')
# libseccomp-sys links libseccomp as a shared library unless told otherwise; a static-pie
# binary needs the archive, which Debian's libseccomp-dev ships.
export LIBSECCOMP_LINK_TYPE=static
# rustc looks for static archives only in -L directories: point it at the compiler's.
LIBSECCOMP_LIB_PATH="${LIBSECCOMP_LIB_PATH:-$(dirname "$(${CC:-cc} -print-file-name=libseccomp.a)")}"
export LIBSECCOMP_LIB_PATH
pkg=${1:-rsrun}
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" cargo build --release -q --target "$host" -p "$pkg"
bin="${CARGO_TARGET_DIR:-$PWD/target}/$host/release/$pkg"
# A binary that still wants a dynamic loader would crash at start-up: refuse it here.
if command -v readelf >/dev/null && readelf -lW "$bin" | grep -q 'Requesting program interpreter'; then
    echo "build-release.sh: $bin is not statically linked" >&2
    exit 1
fi
echo "$bin"
