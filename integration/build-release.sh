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
# Packed relative relocations (DT_RELR; GNU ld >= 2.38, glibc >= 2.36): a static-pie binary
# relocates itself at start, and its 9,900 RELA entries (237 KB) were read into memory by
# every `rsrun run`; as RELR they take 3 KB. Peak RSS of `run` 3124 -> 2932 KiB with ASLR
# kept (docs/design.md). Used only when the toolchain links it without a warning.
relr="-Wl,-z,pack-relative-relocs"
probe=$(mktemp -d)
if printf 'int main(void){return 0;}\n' | ${CC:-cc} -x c - -static-pie "$relr" -Wl,--fatal-warnings \
        -o "$probe/a" 2>/dev/null && readelf -SW "$probe/a" 2>/dev/null | grep -q '\.relr\.dyn'; then
    flags="$flags -C link-arg=$relr"
fi
rm -rf "$probe"
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
