#!/usr/bin/env bash
# Benchmark 3, application impact: a fixed-rate pgbench workload (single-row UPDATEs and
# INSERTs on the table, half each) and its latency while the table is changed:
#
#   alone    the workload alone, for --alone-secs
#   ghost    during pg-ghost run --execute (default flags: 1 copy worker, 500ms chunks)
#   alter    during a plain ALTER TABLE
#   repack   during pg_repack --table
#
# pgbench runs with --rate, so latency is measured from each transaction's scheduled start:
# a transaction queued behind a lock counts the whole wait. Transactions scheduled while
# the operation ran are counted; p50/p99/max latency and the longest stall (longest time in
# which no transaction completed) come from pgbench's per-transaction logs (--log). The
# workload starts 5 s before the operation and stops 5 s after it.
#
#   scripts/bench/impact.sh [--rows N] [--rate TPS] [--clients N] [--runs N] [--alone-secs S] [--contenders "alone ghost alter repack"]
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ROWS=2000000 RATE=500 CLIENTS=4 RUNS=3 ALONE=30 WHICH="alone ghost alter repack"
while [[ $# -gt 0 ]]; do
  case $1 in
    --rows) ROWS=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --clients) CLIENTS=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --alone-secs) ALONE=$2; shift 2 ;;
    --contenders) WHICH=$2; shift 2 ;;
    *) sed -n '2,18p' "$0"; exit 2 ;;
  esac
done

need_tools pg_repack
build_ghost
bench_workdir
bench_output impact

cat >"$WORK/update.sql" <<'SQL'
\set id random(1, :rows)
UPDATE orders SET qty = qty + 1, amount = amount + 1 WHERE id = :id;
SQL
cat >"$WORK/insert.sql" <<'SQL'
\set c random(1, 50000)
INSERT INTO orders (customer_id, qty, status, amount, note) VALUES (:c, 1, 0, 9.99, 'live');
SQL

say "starting a cluster in $WORK"
PORT=$(cluster_start pg)
say "loading $ROWS rows into the template database"
load_template "$PORT" tpl "$ROWS"

op_ghost() {
  "$GHOST" run --conn "$(conninfo "$PORT" run)" --table orders --alter "$ALTER_CLAUSE" --execute \
    --ok-to-drop-table --throttle-additional-flag-file '' >"$1" 2>&1 || { tail -n 20 "$1" >&2; return 1; }
}
op_alter() { qc "$PORT" run "ALTER TABLE orders $ALTER_CLAUSE" >"$1" 2>&1; }
op_repack() { pg_repack -h 127.0.0.1 -p "$PORT" -U ghost -d run --table=orders >"$1" 2>&1; }

for run in $(seq 1 "$RUNS"); do
  for c in $WHICH; do
    fresh_db "$PORT" tpl run
    dir="$OUT/impact-$c-$run"
    rm -rf "$dir"; mkdir -p "$dir"
    (cd "$dir" && exec pgbench -n -h 127.0.0.1 -p "$PORT" -U ghost -c "$CLIENTS" -j 2 -R "$RATE" -T 3600 \
      -D rows="$ROWS" -f "$WORK/update.sql@1" -f "$WORK/insert.sql@1" --log --log-prefix=tx run >pgbench.out 2>&1) &
    bench_pid=$!
    BG_PIDS=("$bench_pid")
    sleep 5
    t0=$(now)
    case $c in
      alone) sleep "$ALONE" ;;
      ghost) op_ghost "$dir/op.log" ;;
      alter) op_alter "$dir/op.log" ;;
      repack) op_repack "$dir/op.log" ;;
    esac
    t1=$(now)
    sleep 5
    kill "$bench_pid" 2>/dev/null || true
    wait "$bench_pid" 2>/dev/null || true
    BG_PIDS=()
    errors=$(grep -ciE "error|abort" "$dir/pgbench.out" || true)
    read -r n p50 p99 max stall < <(python3 "$BENCH_DIR/stats.py" latency "$t0" "$t1" "$dir"/tx.*)
    cut="- -"
    if [[ $c == ghost ]]; then
      cut=$(python3 "$BENCH_DIR/phases.py" --cut-over "$dir/op.log")
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$c" "$run" "$(elapsed "$t0" "$t1")" "$n" "$p50" "$p99" "$max" "$stall" "$errors" "$cut" | tee -a "$RAW" >&2
    drop_db "$PORT" run
  done
done

echo
echo "### Application impact: pgbench at $RATE tx/s ($CLIENTS clients; single-row UPDATE or INSERT, half each) on a $ROWS-row table"
echo
echo "$(machine_note). $RUNS interleaved runs; median (min–max) over runs of each run's figure. Latency from the scheduled start (pgbench --rate), transactions scheduled while the operation ran."
echo
echo "| during | operation s | p50 ms | p99 ms | max ms | longest stall ms | pgbench errors |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
# col CONTENDER FIELD DECIMALS: "median (min–max)" of a raw column.
col() { awk -F'\t' -v c="$1" -v k="$2" '$1 == c {print $k}' "$RAW" | stats3 | awk -v d="${3:-1}" '{f = "%." d "f"; printf f " (" f "–" f ")", $1, $2, $3}'; }
for c in $WHICH; do
  label=$c
  case $c in
    alone) label="nothing (workload alone, ${ALONE} s)" ;;
    ghost) label="pg-ghost run --execute" ;;
    alter) label="plain ALTER TABLE" ;;
    repack) label="pg_repack --table" ;;
  esac
  echo "| $label | $(col "$c" 3 1) | $(col "$c" 5 2) | $(col "$c" 6 1) | $(col "$c" 7 0) | $(col "$c" 8 0) | $(awk -F'\t' -v c="$c" '$1 == c {s += $9} END {print s + 0}' "$RAW") |"
done
if [[ " $WHICH " == *" ghost "* ]]; then
  echo
  cf() { awk -F'\t' -v k="$1" '$1 == "ghost" {split($10, a, " "); print a[k]}' "$RAW" | stats3 | awk '{printf "%s (%s–%s)", $1, $2, $3}'; }
  echo "pg-ghost's cut-over, from its log, median (min–max) over runs: attempts $(cf 1); lock waited for $(cf 2) ms in all;" \
       "held $(cf 3) ms in all attempts (a failed attempt holds the lock too); held by the successful attempt (pg-ghost's lock_held_ms) $(cf 4) ms."
fi
echo
echo "Raw runs: $RAW"
