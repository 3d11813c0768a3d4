#!/usr/bin/env bash
# What pg-ghost's copy statement costs, by part: the same 2M rows copied by one
# INSERT ... SELECT into (a) a table with no index, (b) a table with its key index, (c) a
# table with its key index and ON CONFLICT (id) DO NOTHING (pg-ghost's chunk statement,
# unchunked, no slot). Interleaved, fresh database each time; prints seconds and WAL MB.
#
#   scripts/bench/copy-statement.sh [--rows N] [--runs N]
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ROWS=2000000 RUNS=3
while [[ $# -gt 0 ]]; do
  case $1 in
    --rows) ROWS=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    *) sed -n '2,8p' "$0"; exit 2 ;;
  esac
done

need_tools
bench_workdir
PORT=$(cluster_start pg)
load_template "$PORT" tpl "$ROWS"
RAW="$WORK/statement.tsv"
for run in $(seq 1 "$RUNS"); do
  for v in no-index key-index key-index+on-conflict; do
    fresh_db "$PORT" tpl run
    pre="CREATE TABLE orders_new (LIKE orders INCLUDING DEFAULTS); ALTER TABLE orders_new $ALTER_CLAUSE"
    sql="INSERT INTO orders_new SELECT * FROM orders"
    [[ $v == no-index ]] || pre="$pre; ALTER TABLE orders_new ADD PRIMARY KEY (id)"
    [[ $v != *on-conflict ]] || sql="$sql ON CONFLICT (id) DO NOTHING"
    qc "$PORT" run "$pre"
    l0=$(wal_lsn "$PORT"); t0=$(now)
    qc "$PORT" run "$sql" >/dev/null
    t1=$(now); l1=$(wal_lsn "$PORT")
    printf '%s\t%s\t%s\t%s\n' "$v" "$run" "$(elapsed "$t0" "$t1")" "$(( $(wal_diff "$PORT" "$l0" "$l1") / 1048576 ))" | tee -a "$RAW" >&2
  done
done
echo
echo "| INSERT ... SELECT of $ROWS rows into | time s, median (min–max) | WAL MB |"
echo "| --- | --- | --- |"
for v in no-index key-index key-index+on-conflict; do
  t=$(awk -F'\t' -v v="$v" '$1 == v {print $3}' "$RAW" | stats3 | awk '{printf "%.2f (%.2f–%.2f)", $1, $2, $3}')
  w=$(awk -F'\t' -v v="$v" '$1 == v {print $4}' "$RAW" | stats3 | cut -d' ' -f1)
  echo "| $v | $t | $w |"
done
