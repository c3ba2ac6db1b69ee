#!/bin/sh
# Stage 15: bounded fuzzing runs (cargo-fuzz, libFuzzer) of config.json loading and
# validation (runtime/fuzz/fuzz_targets/config.rs) and of the streaming server's SPDY/3.1
# frame decoder (cri/fuzz/fuzz_targets/spdy_frames.rs): no input may panic. Each starts from
# its seeds (runtime/fuzz/seeds/config; cri/fuzz/seeds/spdy_frames, bytes a Go SPDY client
# sent); new corpus entries go to a temporary directory. A crash fails the stage and leaves its
# input in the fuzz directory's artifacts/. FUZZ_SECONDS (default 60) bounds each run.
set -eu
cd "${RSRUN_TOP:-$(dirname "$0")/../..}"
need=""
dpkg -s libseccomp-dev >/dev/null 2>&1 || need="$need libseccomp-dev"
command -v pkg-config >/dev/null 2>&1 || need="$need pkg-config"
if [ -n "$need" ]; then
    apt-get update -q >/dev/null
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $need >/dev/null
fi
command -v cargo-fuzz >/dev/null 2>&1 || cargo install -q cargo-fuzz --locked --version 0.13.2
# libFuzzer's sanitizer flags need a nightly compiler: rustup's nightly when installed,
# else the stable one with RUSTC_BOOTSTRAP and no sanitizer (coverage-guided all the same).
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    run() { cargo +nightly fuzz "$@"; }
else
    echo "15-fuzz: no nightly toolchain; stable with RUSTC_BOOTSTRAP=1, no sanitizer" >&2
    run() { sub=$1; shift; RUSTC_BOOTSTRAP=1 cargo fuzz "$sub" -s none "$@"; }
fi
corpus=$(mktemp -d)
trap 'rm -rf "$corpus"' EXIT
mkdir -p "$corpus/config" "$corpus/spdy"
( cd runtime/fuzz &&
  run run config "$corpus/config" seeds/config -- -max_total_time="${FUZZ_SECONDS:-60}" -print_final_stats=1 )
( cd cri/fuzz &&
  run run spdy_frames "$corpus/spdy" seeds/spdy_frames -- -max_total_time="${FUZZ_SECONDS:-60}" -print_final_stats=1 )
