#!/bin/sh
# Runs the whole test suite on a fresh machine: installs what it needs, builds, and
# runs the stages in integration/stages/ in order (fast first). Usage: ./test.sh [STAGE...]
set -eu
cd "$(dirname "$0")"
export RSRUN_TOP="$PWD"
fails=""
stages=${*:-$(ls integration/stages/ | sort)}
for s in $stages; do
    f=integration/stages/$s
    [ -x "$f" ] || f=$(ls integration/stages/*"$s"* 2>/dev/null | head -n1)
    echo "=== stage $(basename "$f")"
    start=$(date +%s)
    if "$f"; then r=ok; else r=FAILED; fails="$fails $(basename "$f")"; fi
    echo "=== stage $(basename "$f"): $r in $(( $(date +%s) - start ))s"
done
if [ -n "$fails" ]; then echo "FAILED stages:$fails"; exit 1; fi
echo "all stages passed"
