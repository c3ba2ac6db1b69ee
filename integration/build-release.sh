#!/bin/sh
# Builds the release rsrun as a static-pie binary (glibc, crt-static) and prints its path.
# Static linking drops ld.so and the shared libc mappings: peak RSS of `rsrun run` falls
# from 3.4 MiB to 2.6 MiB on this host (docs/benchmarks.md). --target keeps the flag off
# build scripts and proc-macros, which cannot be static.
set -eu
cd "$(dirname "$0")/.."
host=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" cargo build --release -q --target "$host" -p rsrun
echo "$PWD/target/$host/release/rsrun"
