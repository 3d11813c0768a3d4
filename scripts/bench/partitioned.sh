#!/usr/bin/env bash
# Partitioned tables: the same rows in a plain table and in a table range-partitioned by month
# (--partitions leaves, no default), both keyed by (id, created_at), changed by
# ALTER COLUMN customer_id TYPE bigint, no concurrent load, contenders interleaved; and the
# plain table converted into the partitioned one with the same change ("convert"):
#
#   alter      plain blocking ALTER TABLE (on the partitioned parent: every leaf rewritten);
#              for "convert", the conversion done offline: the partitioned table created, the
#              rows inserted, the tables renamed, in one transaction
#   ghost-N    pg-ghost run --execute --copy-workers N (for "convert": --partition-by
#              "RANGE (created_at)" --partitions-auto "monthly from 2020-01 to ...")
#
#   before-N   the same with the build given as PG_GHOST_BEFORE_BIN (a before/after of a change)
#
# Reports per table shape: wall time, pg-ghost's row copy (seconds, rows/s overall and per
# partition), its checksum (seconds), and its cut-over: lock held (ms, all attempts) and the
# statements the swap ran under the lock (a partitioned swap renames every leaf and its indexes).
#
#   scripts/bench/partitioned.sh [--rows N] [--partitions N] [--runs N] [--workers "1 2"] [--shapes "plain part convert"]
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ROWS=1000000 PARTS=60 RUNS=3 WORKERS="1 2" SHAPES="plain part convert"
while [[ $# -gt 0 ]]; do
  case $1 in
    --rows) ROWS=$2; shift 2 ;;
    --partitions) PARTS=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    --shapes) SHAPES=$2; shift 2 ;;
    *) sed -n '2,18p' "$0"; exit 2 ;;
  esac
done

need_tools
build_ghost
bench_workdir
bench_output partitioned

say "starting a cluster in $WORK"
PORT=$(cluster_start pg)

# created_at spreads the rows evenly over the first 28 days of PARTS months, so every leaf
# holds about ROWS / PARTS rows.
COLUMNS="id bigint GENERATED ALWAYS AS IDENTITY, customer_id int NOT NULL, qty int NOT NULL,
    status int NOT NULL, amount numeric(12,2) NOT NULL, note text, created_at timestamptz NOT NULL,
    PRIMARY KEY (id, created_at)"
FILL="INSERT INTO orders (customer_id, qty, status, amount, note, created_at)
SELECT g % 50000, g % 97, g % 5, (g % 100000) / 100.0,
       CASE WHEN g % 5 = 0 THEN NULL ELSE md5(g::text) END,
       timestamptz '2020-01-01 00:00:00+00' + ((g - 1) % $PARTS) * interval '1 month'
         + ((g - 1) / $PARTS) * (interval '28 days' / ceil($ROWS::numeric / $PARTS))
  FROM generate_series(1, $ROWS) g;"

load_shape() {
  local shape=$1
  qc "$PORT" postgres "CREATE DATABASE tpl_$shape"
  if [[ $shape == plain ]]; then
    q "$PORT" "tpl_$shape" -c "CREATE TABLE orders ($COLUMNS)"
  else
    q "$PORT" "tpl_$shape" <<SQL
CREATE TABLE orders ($COLUMNS) PARTITION BY RANGE (created_at);
SELECT format('CREATE TABLE %I PARTITION OF orders FOR VALUES FROM (%L) TO (%L)',
              'orders_' || to_char(m, 'YYYY_MM'), m, m + interval '1 month')
  FROM generate_series(timestamptz '2020-01-01 00:00:00+00', timestamptz '2020-01-01 00:00:00+00' + ($PARTS - 1) * interval '1 month', interval '1 month') m
\\gexec
SQL
  fi
  q "$PORT" "tpl_$shape" <<SQL
$FILL
CREATE INDEX orders_customer_idx ON orders (customer_id);
CREATE INDEX orders_created_idx ON orders (created_at);
VACUUM (FREEZE, ANALYZE);
SQL
}

CONTENDERS=(alter)
for w in $WORKERS; do CONTENDERS+=("ghost-$w"); done
if [[ -n ${PG_GHOST_BEFORE_BIN:-} ]]; then
  [[ -x $PG_GHOST_BEFORE_BIN ]] || { echo "bench: PG_GHOST_BEFORE_BIN is not an executable" >&2; exit 2; }
  for w in $WORKERS; do CONTENDERS+=("before-$w"); done
fi

# "convert" starts from the plain table.
template() { [[ $1 == convert ]] && echo tpl_plain || echo "tpl_$1"; }
LAST_MONTH=$(python3 -c "import sys; n = int(sys.argv[1]); print(f'{2020 + n // 12}-{n % 12 + 1:02d}')" "$PARTS")
PARTITION_MONTHS="SELECT format('CREATE TABLE %I PARTITION OF orders_new FOR VALUES FROM (%L) TO (%L)',
              'orders_p' || to_char(m, 'YYYY_MM'), m, m + interval '1 month')
  FROM generate_series(timestamptz '2020-01-01 00:00:00+00', timestamptz '2020-01-01 00:00:00+00' + ($PARTS - 1) * interval '1 month', interval '1 month') m"
convert_offline() {
  q "$PORT" run <<SQL
BEGIN;
CREATE TABLE orders_new (LIKE orders INCLUDING ALL) PARTITION BY RANGE (created_at);
$PARTITION_MONTHS
\gexec
ALTER TABLE orders_new $ALTER_CLAUSE;
INSERT INTO orders_new OVERRIDING SYSTEM VALUE SELECT * FROM orders;
DROP TABLE orders;
ALTER TABLE orders_new RENAME TO orders;
COMMIT;
SQL
}

for shape in $SHAPES; do
  [[ $shape == convert ]] && continue
  say "loading $ROWS rows into the $shape template"
  load_shape "$shape"
done
[[ " $SHAPES " == *" convert "* && " $SHAPES " != *" plain "* ]] && { say "loading $ROWS rows into the plain template"; load_shape plain; }
say "leaves of the partitioned table: $(qc "$PORT" tpl_part "SELECT count(*) FROM pg_partition_tree('orders') WHERE isleaf" 2>/dev/null || echo -)"

# From pg-ghost's log: row copy s, cut-over lock held ms (all attempts), swap statements, checksum s.
ghost_figures() {
  local log=$1 copy held stmts sum
  copy=$(grep -o 'row copy complete.*' "$log" | grep -o 'secs=[0-9.]*' | head -1 | cut -d= -f2)
  sum=$(grep -o 'checksum complete.*' "$log" | grep -o 'secs=[0-9.]*' | head -1 | cut -d= -f2)
  held=$(python3 "$BENCH_DIR/phases.py" --cut-over "$log" | cut -d' ' -f3)
  stmts=$(grep 'swap statements ran under the lock' "$log" | tail -1 | grep -o 'statements=[0-9]*' | cut -d= -f2)
  echo "${copy:-?} ${held:-?} ${stmts:-?} ${sum:-?}"
}

for run in $(seq 1 "$RUNS"); do
  for shape in $SHAPES; do
    for c in "${CONTENDERS[@]}"; do
      fresh_db "$PORT" "$(template "$shape")" run
      log="$OUT/partitioned-$shape-$c-$run.log"
      extra=()
      [[ $shape == convert ]] && extra=(--partition-by "RANGE (created_at)" --partitions-auto "monthly from 2020-01 to $LAST_MONTH")
      t0=$(now)
      case $shape/$c in
        convert/alter) convert_offline ;;
        */alter) qc "$PORT" run "ALTER TABLE orders $ALTER_CLAUSE" ;;
        */ghost-*|*/before-*)
          bin=$GHOST
          [[ $c == before-* ]] && bin=$PG_GHOST_BEFORE_BIN
          "$bin" run --conn "$(conninfo "$PORT" run)" --table orders --alter "$ALTER_CLAUSE" --execute "${extra[@]}" \
            --ok-to-drop-table --copy-workers "${c#*-}" --throttle-additional-flag-file '' >"$log" 2>&1 || { tail -n 20 "$log" >&2; exit 1; } ;;
      esac
      t1=$(now)
      secs=$(elapsed "$t0" "$t1")
      n=$(qc "$PORT" run "SELECT count(*) FROM orders")
      [[ $n == "$ROWS" ]] || { echo "bench: $shape/$c left $n rows, expected $ROWS" >&2; exit 1; }
      figures="- - - -"
      [[ $c == ghost-* || $c == before-* ]] && figures=$(ghost_figures "$log")
      printf '%s\t%s\t%s\t%s\t%s\n' "$shape" "$c" "$run" "$secs" "$figures" | tee -a "$RAW" >&2
      drop_db "$PORT" run
    done
  done
done

echo
echo "### Partitioned tables: $ROWS rows, plain, in $PARTS monthly partitions, or converted into them; \`$ALTER_CLAUSE\`, no concurrent load"
echo
echo "$(machine_note). $RUNS interleaved runs; median (min–max)."
echo
echo "| table | contender | wall time s | row copy s | rows/s copied | rows/s per partition | checksum s | cut-over lock held ms | statements under the lock |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for shape in $SHAPES; do
  parts=1
  [[ $shape != plain ]] && parts=$PARTS
  for c in "${CONTENDERS[@]}"; do
    sel() { awk -F'\t' -v s="$shape" -v c="$c" -v f="$1" '$1 == s && $2 == c {split($5, a, " "); print (f == 0 ? $4 : a[f])}' "$RAW"; }
    read -r med lo hi < <(sel 0 | stats3)
    case $shape in
      plain) table=plain ;;
      part) table="$PARTS partitions" ;;
      convert) table="plain into $PARTS partitions" ;;
    esac
    case $shape/$c in
      convert/alter) who="offline conversion (one transaction)" ;;
      */alter) who="plain ALTER TABLE" ;;
      */before-*) who="pg-ghost before, --copy-workers ${c#before-}" ;;
      *) who="pg-ghost, --copy-workers ${c#ghost-}" ;;
    esac
    row="| $table | $who | $med ($lo–$hi)"
    if [[ $c == ghost-* || $c == before-* ]]; then
      read -r cp _ _ < <(sel 1 | stats3)
      read -r cs _ _ < <(sel 4 | stats3)
      read -r lh llo lhi < <(sel 2 | stats3)
      st=$(sel 3 | head -1)
      rate=$(python3 -c "import sys; r, c, p = map(float, sys.argv[1:]); print(f'{r / c:,.0f} | {r / c / p:,.0f}')" "$ROWS" "$cp" "$parts")
      row="$row | $cp | $rate | $cs | $lh ($llo–$lhi) | $st |"
    else
      row="$row | | | | | | |"
    fi
    echo "$row"
  done
done
echo
echo "Raw runs: $RAW"
