#!/usr/bin/env bash
# What the network between pg-ghost and the server costs: pg-ghost run on a plain table with
# dependents (foreign keys both ways, a view, a trigger) and on a partitioned one, straight
# to the server and through a proxy that delays every byte each way (delay_proxy.py), so
# that each round trip costs what it costs across a network. The cut-over's lock is held
# for the statements it runs and every round trip they need; so is the whole run's time.
#
# Reports, per table and delay: the measured round trip (median of 30 `SELECT 1`), the
# cut-over's lock held (ms, the committed attempt), and the run's phases from its log.
#
#   scripts/bench/latency.sh [--rows N] [--partitions N] [--runs N] [--one-way-ms "0 0.5"] [--shapes "plain part"]
#
# A one-way delay of "direct" connects without the proxy. PG_GHOST_BEFORE_BIN adds the
# contender "before" (a before/after of a change).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ROWS=100000 PARTS=100 RUNS=3 DELAYS="direct 0.5" SHAPES="plain part"
while [[ $# -gt 0 ]]; do
  case $1 in
    --rows) ROWS=$2; shift 2 ;;
    --partitions) PARTS=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --one-way-ms) DELAYS=$2; shift 2 ;;
    --shapes) SHAPES=$2; shift 2 ;;
    *) sed -n '2,15p' "$0"; exit 2 ;;
  esac
done

need_tools
build_ghost
bench_workdir
bench_output latency

say "starting a cluster in $WORK"
PORT=$(cluster_start pg)

load_plain() {
  qc "$PORT" postgres "CREATE DATABASE tpl_plain"
  q "$PORT" tpl_plain <<SQL
CREATE TABLE customers (id int PRIMARY KEY);
INSERT INTO customers SELECT generate_series(0, 49999);
$TABLE_DDL
ALTER TABLE orders ADD FOREIGN KEY (customer_id) REFERENCES customers, ADD CHECK (amount >= 0);
INSERT INTO orders (customer_id, qty, status, amount, note, created_at)
SELECT g % 50000, g % 97, g % 5, (g % 100000) / 100.0, md5(g::text), timestamptz '2026-01-01' + g * interval '1 second'
  FROM generate_series(1, $ROWS) g;
CREATE INDEX orders_customer_idx ON orders (customer_id);
CREATE TABLE order_lines (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, order_id bigint NOT NULL REFERENCES orders, sku text);
INSERT INTO order_lines (order_id, sku) SELECT g, 'sku-' || g FROM generate_series(1, least($ROWS, 10000)) g;
CREATE VIEW large_orders AS SELECT id, amount, note FROM orders WHERE amount > 500;
CREATE FUNCTION orders_touch() RETURNS trigger LANGUAGE plpgsql AS \$\$BEGIN RETURN NEW; END\$\$;
CREATE TRIGGER orders_touch BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION orders_touch();
VACUUM (FREEZE, ANALYZE);
SQL
}

load_part() {
  qc "$PORT" postgres "CREATE DATABASE tpl_part"
  q "$PORT" tpl_part <<SQL
CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY, customer_id int NOT NULL, qty int NOT NULL,
    status int NOT NULL, amount numeric(12,2) NOT NULL, note text, created_at timestamptz NOT NULL,
    PRIMARY KEY (id, created_at)) PARTITION BY RANGE (created_at);
SELECT format('CREATE TABLE %I PARTITION OF orders FOR VALUES FROM (%L) TO (%L)',
              'orders_' || to_char(m, 'YYYY_MM'), m, m + interval '1 month')
  FROM generate_series(timestamptz '2000-01-01 00:00:00+00', timestamptz '2000-01-01 00:00:00+00' + ($PARTS - 1) * interval '1 month', interval '1 month') m
\\gexec
INSERT INTO orders (customer_id, qty, status, amount, note, created_at)
SELECT g % 50000, g % 97, g % 5, (g % 100000) / 100.0, md5(g::text),
       timestamptz '2000-01-01 00:00:00+00' + ((g - 1) % $PARTS) * interval '1 month' + interval '1 day'
  FROM generate_series(1, $ROWS) g;
CREATE INDEX orders_customer_idx ON orders (customer_id);
CREATE INDEX orders_created_idx ON orders (created_at);
VACUUM (FREEZE, ANALYZE);
SQL
}

for shape in $SHAPES; do
  say "loading the $shape template ($ROWS rows$([[ $shape == part ]] && echo ", $PARTS partitions"))"
  "load_$shape"
done

# One proxy per delay; "direct" connects to the server itself.
declare -A PORTS
next=$((PORT + 100))
for d in $DELAYS; do
  if [[ $d == direct ]]; then PORTS[$d]=$PORT; continue; fi
  python3 "$BENCH_DIR/delay_proxy.py" "$next" "$PORT" "$d" &
  BG_PIDS+=($!)
  PORTS[$d]=$next
  next=$((next + 1))
done
sleep 1

# The round trip as a client sees it: median of 30 `SELECT 1` in one session.
declare -A RTT
for d in $DELAYS; do
  RTT[$d]=$( (echo '\timing on'; for _ in $(seq 1 30); do echo 'SELECT 1;'; done) \
    | psql -X -q -At -h 127.0.0.1 -p "${PORTS[$d]}" -U ghost -d postgres -f - 2>&1 \
    | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | sort -n | awk '{a[NR] = $1} END {print a[int(NR / 2) + 1]}')
  say "one-way delay $d ms: round trip ${RTT[$d]} ms"
done

CONTENDERS=(ghost)
if [[ -n ${PG_GHOST_BEFORE_BIN:-} ]]; then
  [[ -x $PG_GHOST_BEFORE_BIN ]] || { echo "bench: PG_GHOST_BEFORE_BIN is not an executable" >&2; exit 2; }
  CONTENDERS+=(before)
fi

for run in $(seq 1 "$RUNS"); do
  for shape in $SHAPES; do
    for d in $DELAYS; do
      for c in "${CONTENDERS[@]}"; do
        fresh_db "$PORT" "tpl_$shape" run
        bin=$GHOST
        [[ $c == before ]] && bin=$PG_GHOST_BEFORE_BIN
        log="$OUT/latency-$shape-$d-$c-$run.log"
        t0=$(now)
        "$bin" run --conn "$(conninfo "${PORTS[$d]}" run)" --table orders --alter "$ALTER_CLAUSE" --execute \
          --ok-to-drop-table --skip-checksum --throttle-additional-flag-file '' >"$log" 2>&1 || { tail -n 20 "$log" >&2; exit 1; }
        secs=$(elapsed "$t0" "$(now)")
        held=$(grep -o 'cut-over committed.*lock_held_ms=[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || true)
        phases=$(python3 "$BENCH_DIR/phases.py" "$log" | cut -d: -f2-)
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$shape" "$d" "$c" "$run" "$secs" "${held:-?}" "$phases" | tee -a "$RAW" >&2
        drop_db "$PORT" run
      done
    done
  done
done

echo
echo "### Round trips: $ROWS rows, plain with dependents or in $PARTS partitions; \`$ALTER_CLAUSE\`, \`--skip-checksum\`"
echo
echo "$(machine_note). $RUNS interleaved runs; median (min–max)."
echo
echo "| table | round trip ms | contender | wall time s | cut-over lock held ms | inspect s | prepare s | copy s | cut-over s |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for shape in $SHAPES; do
  for d in $DELAYS; do
    for c in "${CONTENDERS[@]}"; do
      sel() { awk -F'\t' -v s="$shape" -v d="$d" -v c="$c" -v f="$1" '$1 == s && $2 == d && $3 == c {print $f}' "$RAW"; }
      phase() { sel 7 | sed -n "s/.* $1=\([0-9.]*\).*/\1/p"; }
      read -r w wl wh < <(sel 5 | stats3)
      read -r h hl hh < <(sel 6 | stats3)
      read -r i _ _ < <(phase inspect | stats3)
      read -r p _ _ < <(phase prepare | stats3)
      read -r y _ _ < <(phase copy | stats3)
      read -r k _ _ < <(phase cut-over | stats3)
      table=plain
      [[ $shape == part ]] && table="$PARTS partitions"
      echo "| $table | ${RTT[$d]} | $c | $w ($wl–$wh) | $h ($hl–$hh) | $i | $p | $y | $k |"
    done
  done
done
echo
echo "Raw runs: $RAW"
