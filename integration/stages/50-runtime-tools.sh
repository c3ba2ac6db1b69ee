#!/bin/sh
# Stage 50: the OCI runtime-tools validation suite (pinned in integration/runtime-tools/go.mod,
# built with Go from the module proxy) against the debug rsrun. Fails when a file listed in
# integration/runtime-tools/expected-pass.txt fails; prints every file's result and the count.
# One retry, and only for the files whose own check races (docs/runtime-tools.md): killsig,
# pidfile, poststart. Every other file gets one run: a retry for all would let a file that fails
# half the time pass three times in four.
set -eu
cd "${RSRUN_TOP:-$(dirname "$0")/../..}"
command -v go >/dev/null 2>&1 || { echo "go is required (the suite is built from the Go module proxy)"; exit 1; }
cargo build -q -p rsrun
integration/runtime-tools/run.sh -r "$PWD/target/debug/rsrun" -t 120 -R 1 --retry-only killsig,pidfile,poststart --check
