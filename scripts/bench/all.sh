#!/usr/bin/env bash
# All four benchmarks in a row, at their default sizes; the Markdown tables go to stdout
# and to $BENCH_OUT/results.md, the raw runs and logs to $BENCH_OUT (default: a new
# directory under /tmp). Each driver starts and removes its own clusters. Extra arguments
# per driver through COPY_ARGS, APPLY_ARGS, IMPACT_ARGS, MEMORY_ARGS, e.g. a quick check:
#
#   COPY_ARGS="--rows 100000 --runs 1" APPLY_ARGS="--rows 100000 --changes 10000 --runs 1" \
#   IMPACT_ARGS="--rows 100000 --runs 1 --alone-secs 5" MEMORY_ARGS="--sizes 100000 --runs 1" \
#   scripts/bench/all.sh
#
#   scripts/bench/all.sh     (about 40 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")"
export BENCH_OUT=${BENCH_OUT:-$(mktemp -d /tmp/pg-ghost-bench-out.XXXXXX)}
mkdir -p "$BENCH_OUT"
chmod 755 "$BENCH_OUT"
{
  # shellcheck disable=SC2086 # the *_ARGS are word lists on purpose
  ./copy.sh ${COPY_ARGS:-}
  ./apply.sh ${APPLY_ARGS:-}
  ./impact.sh ${IMPACT_ARGS:-}
  ./memory.sh ${MEMORY_ARGS:-}
} | tee "$BENCH_OUT/results.md"
echo "Tables: $BENCH_OUT/results.md" >&2
