#!/bin/sh
# Stage 10: formatting and lints (the cheapest failures first).
set -eu
cd "${RSRUN_TOP:-$(dirname "$0")/../..}"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
