#!/usr/bin/env bash
# Benchmark 5, the cut-over against autovacuum: a pgbench update workload on the table, whose
# autovacuum is made slow (autovacuum_vacuum_cost_limit = 1, cost delay 100 ms, threshold and
# scale factor 0, on a cluster with autovacuum_naptime = 1s), so that a worker holds the
# original when the cut-over starts, as on a large production table where it runs for hours.
#
# pg-ghost runs with --postpone-cut-over-flag-file; once it is postponed and an autovacuum
# worker holds the original, the flag is removed. Measured: the cut-over's attempts and the
# time from the flag's removal to the run's end, how often autovacuum ran on the ghost during
# the run, pg-ghost's own vacuum/analyze of the ghost, and the heap fetches of an index-only
# scan of the new table right after the swap (0 when its visibility map is set).
# PG_GHOST_BIN=path times another build (e.g. one from before the change). --plain leaves
# autovacuum as it is and does not wait for a worker: the visibility map of the new table
# (heap fetches) compared with a build whose cut-over fails against the slow worker.
#
#   scripts/bench/autovacuum.sh [--rows N] [--rate TPS] [--runs N] [--retries N] [--plain]
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ROWS=1000000 RATE=200 RUNS=3 RETRIES=20 PLAIN=
while [[ $# -gt 0 ]]; do
  case $1 in
    --rows) ROWS=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --retries) RETRIES=$2; shift 2 ;;
    --plain) PLAIN=1; shift ;;
    *) sed -n '2,17p' "$0"; exit 2 ;;
  esac
done

need_tools
build_ghost
bench_workdir
bench_output autovacuum
BENCH_SETTINGS+=("autovacuum_naptime = '1s'")

cat >"$WORK/update.sql" <<'SQL'
\set id random(1, :rows)
UPDATE orders SET qty = qty + 1 WHERE id = :id;
SQL

say "starting a cluster in $WORK"
PORT=$(cluster_start pg)
say "loading $ROWS rows into the template database"
load_template "$PORT" tpl "$ROWS"

# worker_on PORT DB: pid of an autovacuum worker holding a lock on orders, or nothing.
worker_on() {
  qc "$1" "$2" "SELECT a.pid FROM pg_locks l JOIN pg_stat_activity a USING (pid)
                 WHERE a.backend_type = 'autovacuum worker' AND l.locktype = 'relation' AND l.granted
                   AND l.relation = 'orders'::regclass LIMIT 1"
}

for run in $(seq 1 "$RUNS"); do
  fresh_db "$PORT" tpl run
  [[ -n $PLAIN ]] || qc "$PORT" run "ALTER TABLE orders SET (autovacuum_vacuum_cost_delay = 100, autovacuum_vacuum_cost_limit = 1,
                  autovacuum_vacuum_threshold = 0, autovacuum_vacuum_scale_factor = 0)"
  dir="$OUT/autovacuum-$run"
  rm -rf "$dir"; mkdir -p "$dir"
  (cd "$dir" && exec pgbench -n -h 127.0.0.1 -p "$PORT" -U ghost -c 2 -j 2 -R "$RATE" -T 3600 \
    -D rows="$ROWS" -f "$WORK/update.sql" run >pgbench.out 2>&1) &
  BG_PIDS=($!)
  flag="$dir/postpone"
  touch "$flag"
  "$GHOST" run --conn "$(conninfo "$PORT" run)" --table orders --alter "$ALTER_CLAUSE" --execute --ok-to-drop-table \
    --postpone-cut-over-flag-file "$flag" --cut-over-retries "$RETRIES" >"$dir/op.log" 2>&1 &
  ghost_pid=$!
  BG_PIDS+=("$ghost_pid")
  wait_log "$dir/op.log" "cut-over postponed" 3600 "$ghost_pid"
  worker=none
  for ((i = 0; i < 600 && ! PLAIN; i++)); do
    worker=$(worker_on "$PORT" run)
    [[ -n $worker ]] && break
    sleep 0.1
  done
  [[ -n $worker && $worker != none || -n $PLAIN ]] || { echo "bench: no autovacuum worker on orders within 60 s" >&2; exit 1; }
  ghost_autovacuums=$(qc "$PORT" run "SELECT autovacuum_count + autoanalyze_count FROM pg_stat_user_tables WHERE relname = '_orders_gho'")
  t0=$(now)
  rm -f "$flag"
  rc=0
  wait "$ghost_pid" || rc=$?
  t1=$(now)
  heap_fetches=$(q "$PORT" run -c "SET enable_seqscan = off; SET enable_bitmapscan = off" \
    -c "EXPLAIN (ANALYZE, FORMAT JSON) SELECT count(*) FROM orders WHERE customer_id < 5000" |
    python3 -c "import json, sys
def walk(p):
    return p.get('Heap Fetches', 0) + sum(walk(c) for c in p.get('Plans', []))
print(walk(json.load(sys.stdin)[0]['Plan']))")
  kill "${BG_PIDS[0]}" 2>/dev/null || true
  wait "${BG_PIDS[0]}" 2>/dev/null || true
  BG_PIDS=()
  failed=$(grep -c "cut-over attempt failed" "$dir/op.log" || true)
  attempts=$(grep -o 'cut-over complete.*' "$dir/op.log" | grep -o 'attempts=[0-9]*' | cut -d= -f2 || true)
  [[ $rc -eq 0 ]] || attempts="failed($((failed + 1)))"
  cancelled=$(grep -c "cancelled an autovacuum worker" "$dir/op.log" || true)
  prep=$(grep -E "ghost (vacuumed and )?analyzed" "$dir/op.log" | grep -o 'secs=[0-9.]*' | cut -d= -f2 | xargs printf "%.2f" || true)
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$run" "${attempts:-?}" "$failed" "$(elapsed "$t0" "$t1")" "$cancelled" \
    "$ghost_autovacuums" "${prep:-?}" "$heap_fetches" "$rc" | tee -a "$RAW" >&2
  drop_db "$PORT" run
done

echo
echo "### Cut-over against a slow autovacuum of the original: $ROWS rows, pgbench $RATE updates/s"
echo
echo "$(machine_note). Binary: $GHOST. One row per run."
echo
echo "| run | attempts | failed attempts | flag removed → run ended, s | workers cancelled | autovacuum runs on the ghost before the cut-over | ghost (vacuum) analyze s | heap fetches, index-only scan after the swap | exit |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
awk -F'\t' '{printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, $8, $9}' "$RAW"
echo
echo "Raw runs: $RAW"
