#!/usr/bin/env bash
# Decode throughput, side by side: pg-ghost's transport + pgoutput decoder against
# pg_recvlogical, consuming the same burst of single-row changes (one big transaction,
# then many one-row transactions) from identical slots on a throwaway local cluster.
#
#   scripts/bench-decode.sh [--changes N] [--runs N] [--dir CLUSTER_DIR]
#
# Defaults: 200000 changes, 3 runs; prints median, min and max changes/s per consumer.
# Needs PostgreSQL 15 server binaries (see scripts/pg-local.sh); builds in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench --bench stream_decode -- "$@"
