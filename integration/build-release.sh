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
flags="-C target-feature=+crt-static"
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
if [ "$pkg" = rsrun-shim ]; then
    # The shim stays for the container's lifetime, one per container: a position-dependent
    # static binary needs no relocation at start, so its relocated data pages stay clean and
    # shared by every shim (about 0.2 MiB of Pss each with static-pie; docs/design.md). Its
    # own target dir: other RUSTFLAGS would rebuild the runtime's.
    flags="$flags -C relocation-model=static"
    target_dir="$target_dir/nopie"
fi
RUSTFLAGS="${RUSTFLAGS:-} $flags" CARGO_TARGET_DIR="$target_dir" cargo build --release -q --target "$host" -p "$pkg"
bin="$target_dir/$host/release/$pkg"
# A binary that still wants a dynamic loader would crash at start-up: refuse it here.
if command -v readelf >/dev/null && readelf -lW "$bin" | grep -q 'Requesting program interpreter'; then
    echo "build-release.sh: $bin is not statically linked" >&2
    exit 1
fi
echo "$bin"
