#!/usr/bin/env bash
# Benchmark 1, copy throughput: rebuilding a table with ALTER COLUMN customer_id TYPE bigint,
# no concurrent load, on one throwaway cluster, contenders interleaved (A B C ... A B C ...):
#
#   limit      the physical limit: CREATE TABLE (LIKE) + one INSERT ... SELECT + index builds
#   alter      plain blocking ALTER TABLE
#   repack     pg_repack --table (a rebuild without the type change)
#   ghost-N    pg-ghost run --execute --copy-workers N (the default run: checksum on)
#   skip-N     the same with --skip-checksum (data movement only)
#   before-ghost-N, before-skip-N   the same with an earlier build (PG_GHOST_BEFORE_BIN), interleaved
#
# Each run starts from a fresh copy of a template database (CREATE DATABASE ... TEMPLATE,
# then CHECKPOINT). Reports wall time (median, min, max), rows/s and MB/s (heap+TOAST size
# of the table / median time) and WAL written (pg_current_wal_lsn() difference), and each
# contender's median against the reference: the faster of the blocking ALTER and the
# physical limit (insert-then-index), when both ran.
#
#   scripts/bench/copy.sh [--rows N] [--runs N] [--workers "1 2 4"] [--contenders "limit alter repack ghost skip"]
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ROWS=2000000 RUNS=3 WORKERS="1 2 4" WHICH="limit alter repack ghost"
while [[ $# -gt 0 ]]; do
  case $1 in
    --rows) ROWS=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    --contenders) WHICH=$2; shift 2 ;;
    *) sed -n '2,16p' "$0"; exit 2 ;;
  esac
done

need_tools pg_repack
build_ghost
bench_workdir
bench_output copy

say "starting a cluster in $WORK"
PORT=$(cluster_start pg)
say "loading $ROWS rows into the template database"
load_template "$PORT" tpl "$ROWS"
HEAP=$(qc "$PORT" tpl "SELECT pg_table_size('orders')")
TOTAL=$(qc "$PORT" tpl "SELECT pg_total_relation_size('orders')")
say "table: $(( HEAP / 1048576 )) MB heap+TOAST, $(( TOTAL / 1048576 )) MB with indexes"

CONTENDERS=()
for c in $WHICH; do
  if [[ $c == ghost || $c == skip || $c == before-ghost || $c == before-skip ]]; then
    [[ $c == before-* && -z ${PG_GHOST_BEFORE_BIN:-} ]] && { echo "bench: $c needs PG_GHOST_BEFORE_BIN" >&2; exit 2; }
    for w in $WORKERS; do CONTENDERS+=("$c-$w"); done
  else CONTENDERS+=("$c"); fi
done

run_limit() {
  q "$PORT" run <<SQL
CREATE TABLE orders_new (LIKE orders INCLUDING DEFAULTS);
ALTER TABLE orders_new $ALTER_CLAUSE;
INSERT INTO orders_new SELECT * FROM orders;
ALTER TABLE orders_new ADD PRIMARY KEY (id);
CREATE INDEX ON orders_new (customer_id);
CREATE INDEX ON orders_new (created_at);
SQL
}
run_alter() { qc "$PORT" run "ALTER TABLE orders $ALTER_CLAUSE"; }
run_repack() { pg_repack -h 127.0.0.1 -p "$PORT" -U ghost -d run --table=orders >"$1" 2>&1; }
run_ghost() {
  local bin=$1 workers=$2 log=$3; shift 3
  "$bin" run "$@" --conn "$(conninfo "$PORT" run)" --table orders --alter "$ALTER_CLAUSE" --execute \
    --ok-to-drop-table --copy-workers "$workers" --throttle-additional-flag-file '' >"$log" 2>&1 \
    || { tail -n 20 "$log" >&2; return 1; }
}

# Phase times from pg-ghost's log: copy secs, index builds secs (sum), cut-over lock held ms.
ghost_phases() {
  local log=$1
  local copy idx held
  copy=$(grep -o 'row copy complete.*' "$log" | grep -o 'secs=[0-9.]*' | head -1 | cut -d= -f2)
  idx=$(grep 'built on the ghost' "$log" | grep -o 'secs=[0-9.]*' | cut -d= -f2 | awk '{s+=$1} END {printf "%.3f", s}')
  # Every attempt's locked time, the failed ones too (see phases.py --cut-over).
  held=$(python3 "$BENCH_DIR/phases.py" --cut-over "$log" | cut -d' ' -f3)
  # The run as it would have been had the first cut-over attempt succeeded: everything
  # up to the cut-over, plus the successful attempt's locked time.
  local ideal
  ideal=$(python3 -c "import sys; print(f'{float(sys.argv[1]) + float(sys.argv[2]) / 1000:.3f}')" \
    "$(python3 "$BENCH_DIR/phases.py" --to-cut-over "$log")" "$(python3 "$BENCH_DIR/phases.py" --cut-over "$log" | cut -d' ' -f4)")
  echo "${copy:-?} ${idx:-?} ${held:-?} ${ideal:-?}"
}

for run in $(seq 1 "$RUNS"); do
  for c in "${CONTENDERS[@]}"; do
    fresh_db "$PORT" tpl run
    log="$OUT/copy-$c-$run.log"
    lsn0=$(wal_lsn "$PORT")
    t0=$(now)
    case $c in
      limit) run_limit ;;
      alter) run_alter ;;
      repack) run_repack "$log" ;;
      ghost-*) run_ghost "$GHOST" "${c#ghost-}" "$log" ;;
      skip-*) run_ghost "$GHOST" "${c#skip-}" "$log" --skip-checksum ;;
      before-ghost-*) run_ghost "$PG_GHOST_BEFORE_BIN" "${c#before-ghost-}" "$log" ;;
      before-skip-*) run_ghost "$PG_GHOST_BEFORE_BIN" "${c#before-skip-}" "$log" --skip-checksum ;;
    esac
    t1=$(now)
    lsn1=$(wal_lsn "$PORT")
    secs=$(elapsed "$t0" "$t1")
    wal=$(wal_diff "$PORT" "$lsn0" "$lsn1")
    # Sanity: every row is there, and the column has the new type (pg_repack keeps int).
    check=$(qc "$PORT" run "SELECT count(*) || ' ' || format_type(atttypid, atttypmod) FROM $( [[ $c == limit ]] && echo orders_new || echo orders ), pg_attribute
                            WHERE attrelid = '$( [[ $c == limit ]] && echo orders_new || echo orders )'::regclass AND attname = 'customer_id' GROUP BY atttypid, atttypmod")
    phases="- - -"
    if [[ $c == ghost-* || $c == skip-* || $c == before-* ]]; then
      phases=$(ghost_phases "$log")
      echo "$c $run $(python3 "$BENCH_DIR/phases.py" "$log")" >>"$OUT/copy-phases.txt"
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$c" "$run" "$secs" "$wal" "$check" "$phases" | tee -a "$RAW" >&2
    [[ ${check%% *} == "$ROWS" ]] || { echo "bench: $c left ${check%% *} rows, expected $ROWS" >&2; exit 1; }
    drop_db "$PORT" run
  done
done

echo
echo "### Copy throughput: $ROWS rows, \`$ALTER_CLAUSE\`, no concurrent load"
echo
echo "$(machine_note). Table: $(( HEAP / 1048576 )) MB heap+TOAST ($(( TOTAL / 1048576 )) MB with its 3 indexes). $RUNS interleaved runs; median (min–max)."
echo
echo "| contender | wall time s | rows/s | MB/s | WAL written MB |"
echo "| --- | --- | --- | --- | --- |"
for c in "${CONTENDERS[@]}"; do
  read -r med lo hi < <(awk -F'\t' -v c="$c" '$1 == c {print $3}' "$RAW" | stats3)
  read -r wmed wlo whi < <(awk -F'\t' -v c="$c" '$1 == c {print $4 / 1048576}' "$RAW" | stats3)
  label=$c
  case $c in
    limit) label="physical limit (INSERT ... SELECT + index builds)" ;;
    alter) label="plain ALTER TABLE (blocking)" ;;
    repack) label="pg_repack --table (rebuild, no type change)" ;;
    ghost-*) label="pg-ghost, --copy-workers ${c#ghost-}" ;;
    skip-*) label="pg-ghost --skip-checksum, --copy-workers ${c#skip-}" ;;
    before-ghost-*) label="before: pg-ghost, --copy-workers ${c#before-ghost-}" ;;
    before-skip-*) label="before: pg-ghost --skip-checksum, --copy-workers ${c#before-skip-}" ;;
  esac
  python3 - "$label" "$med" "$lo" "$hi" "$wmed" "$wlo" "$whi" "$ROWS" "$HEAP" <<'PY'
import sys
label, med, lo, hi, wmed, wlo, whi, rows, heap = sys.argv[1], *map(float, sys.argv[2:])
print(f"| {label} | {med:.1f} ({lo:.1f}–{hi:.1f}) | {rows / med:,.0f} | {heap / 1048576 / med:.1f} | {wmed:.0f} ({wlo:.0f}–{whi:.0f}) |")
PY
done
median_of() { awk -F'\t' -v c="$1" '$1 == c {print $3}' "$RAW" | stats3 | cut -d' ' -f1; }
if grep -q '^limit' "$RAW" && grep -q '^alter' "$RAW"; then
  REF=$(python3 -c "import sys; print(min(float(sys.argv[1]), float(sys.argv[2])))" "$(median_of limit)" "$(median_of alter)")
  echo
  echo "Against the reference, the faster of the blocking ALTER and the physical limit (median $REF s):"
  echo
  echo "| contender | median s | × reference |"
  echo "| --- | --- | --- |"
  for c in "${CONTENDERS[@]}"; do
    python3 -c "import sys; m = float(sys.argv[2]); print(f'| {sys.argv[1]} | {m:.2f} | {m / float(sys.argv[3]):.2f} |')" "$c" "$(median_of "$c")" "$REF"
  done
fi
if grep -q -e '^ghost' -e '^skip' -e '^before' "$RAW"; then
  echo
  echo "pg-ghost phases (median of runs): row copy s, index builds on the ghost s, cut-over lock held ms (all attempts, failed ones"
  echo "included), and the run's time had its first cut-over attempt succeeded (up to the cut-over + the successful attempt)"
  echo
  echo "| contender | row copy s | index builds s | cut-over lock held ms | time with a first-try cut-over s |"
  echo "| --- | --- | --- | --- | --- |"
  for c in "${CONTENDERS[@]}"; do
    [[ $c == ghost-* || $c == skip-* || $c == before-* ]] || continue
    cp=$(awk -F'\t' -v c="$c" '$1 == c {split($6, a, " "); print a[1]}' "$RAW" | stats3 | cut -d' ' -f1)
    ix=$(awk -F'\t' -v c="$c" '$1 == c {split($6, a, " "); print a[2]}' "$RAW" | stats3 | cut -d' ' -f1)
    lh=$(awk -F'\t' -v c="$c" '$1 == c {split($6, a, " "); print a[3]}' "$RAW" | stats3 | cut -d' ' -f1)
    id=$(awk -F'\t' -v c="$c" '$1 == c {split($6, a, " "); print a[4]}' "$RAW" | stats3 | cut -d' ' -f1)
    echo "| $c | $cp | $ix | $lh | $id |"
  done
fi
echo
echo "Raw runs: $RAW; every pg-ghost run's phases (seconds, from its log): $OUT/copy-phases.txt"
