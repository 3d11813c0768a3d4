#!/usr/bin/env bash
# Benchmark 4, memory: peak RSS of pg-ghost (GNU time -v, "Maximum resident set size") for
# a whole run --execute (default flags) on tables of different sizes, with a light write
# workload (pgbench at --rate tx/s, single-row UPDATEs and INSERTs) so the apply path works
# too. Sizes are interleaved (1M 10M 1M 10M ...).
#
#   scripts/bench/memory.sh [--sizes "1000000 10000000"] [--runs N] [--rate TPS]
set -euo pipefail
source "$(dirname "$0")/lib.sh"

SIZES="1000000 10000000" RUNS=3 RATE=200
while [[ $# -gt 0 ]]; do
  case $1 in
    --sizes) SIZES=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    *) sed -n '2,8p' "$0"; exit 2 ;;
  esac
done

need_tools /usr/bin/time
build_ghost
bench_workdir
bench_output memory

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
for n in $SIZES; do
  say "loading $n rows into template tpl_$n"
  load_template "$PORT" "tpl_$n" "$n"
done

for run in $(seq 1 "$RUNS"); do
  for n in $SIZES; do
    fresh_db "$PORT" "tpl_$n" run
    log="$OUT/memory-$n-$run.log"
    pgbench -n -h 127.0.0.1 -p "$PORT" -U ghost -c 2 -j 1 -R "$RATE" -T 36000 -D rows="$n" \
      -f "$WORK/update.sql@1" -f "$WORK/insert.sql@1" run >"$OUT/memory-$n-$run.pgbench" 2>&1 &
    bench_pid=$!
    BG_PIDS=("$bench_pid")
    t0=$(now)
    /usr/bin/time -v "$GHOST" run --conn "$(conninfo "$PORT" run)" --table orders --alter "$ALTER_CLAUSE" --execute \
      --ok-to-drop-table --throttle-additional-flag-file '' >"$log" 2>&1 || { tail -n 30 "$log" >&2; exit 1; }
    t1=$(now)
    kill "$bench_pid" 2>/dev/null || true; wait "$bench_pid" 2>/dev/null || true
    BG_PIDS=()
    kb=$(grep 'Maximum resident set size' "$log" | awk '{print $NF}')
    copy=$(grep -o 'row copy complete.*' "$log" | grep -o 'secs=[0-9.]*' | head -1 | cut -d= -f2)
    printf '%s\t%s\t%s\t%s\t%s\n' "$n" "$run" "$kb" "$(elapsed "$t0" "$t1")" "${copy:-?}" | tee -a "$RAW" >&2
    drop_db "$PORT" run
  done
done

echo
echo "### Memory: peak RSS of pg-ghost run --execute, with pgbench writing $RATE tx/s"
echo
echo "$(machine_note). $RUNS interleaved runs; median (min–max)."
echo
echo "| rows | peak RSS MB | run time s | row copy s |"
echo "| --- | --- | --- | --- |"
for n in $SIZES; do
  rss=$(awk -F'\t' -v n="$n" '$1 == n {print $3 / 1024}' "$RAW" | stats3 | awk '{printf "%.1f (%.1f–%.1f)", $1, $2, $3}')
  secs=$(awk -F'\t' -v n="$n" '$1 == n {print $4}' "$RAW" | stats3 | awk '{printf "%.0f (%.0f–%.0f)", $1, $2, $3}')
  cp=$(awk -F'\t' -v n="$n" '$1 == n {print $5}' "$RAW" | stats3 | awk '{printf "%.0f (%.0f–%.0f)", $1, $2, $3}')
  echo "| $(printf "%'d" "$n") | $rss | $secs | $cp |"
done
echo
echo "Raw runs: $RAW"
