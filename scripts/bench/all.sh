#!/usr/bin/env bash
# All four benchmarks in a row, at their default sizes; the Markdown tables go to stdout
# and to $BENCH_OUT/results.md, the raw runs and logs to $BENCH_OUT (default: a new
# directory under /tmp). Each driver starts and removes its own clusters.
#
#   scripts/bench/all.sh            (or set ROWS_MEMORY="1000000 4000000" for a shorter run)
set -euo pipefail
cd "$(dirname "$0")"
export BENCH_OUT=${BENCH_OUT:-$(mktemp -d /tmp/pg-ghost-bench-out.XXXXXX)}
chmod 755 "$BENCH_OUT"
{
  ./copy.sh
  ./apply.sh
  ./impact.sh
  ./memory.sh --sizes "${ROWS_MEMORY:-1000000 10000000}"
} | tee "$BENCH_OUT/results.md"
echo "Tables: $BENCH_OUT/results.md" >&2
