# Shared helpers for the benchmark drivers in scripts/bench/ (sourced, not run).
#
# Every driver starts its own throwaway clusters with scripts/pg-local.sh plus the
# settings below, identical for every contender, and tears them down on exit.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/../.." && pwd)
PG_LOCAL="$REPO/scripts/pg-local.sh"
# PG_GHOST_BIN: time another build (e.g. a copy of an earlier one) instead of this tree's.
GHOST=${PG_GHOST_BIN:-"$REPO/target/release/pg-ghost"}
export PGPASSWORD=ghost

# Settings added to pg-local.sh's (wal_level=logical, fsync=off, shared_buffers=256MB, ...)
# on every cluster, for every contender:
#   - checkpoints only when asked (each run starts right after a CHECKPOINT), so a timed
#     checkpoint does not land on a random contender;
#   - wal_sender_timeout=0: the apply benchmark freezes pg-ghost (SIGSTOP) while the burst
#     is written, so that it starts from a full backlog like the native subscriber does;
#   - maintenance_work_mem=256MB for every index build (ALTER TABLE, pg_repack, pg-ghost);
#   - pg_stat_statements, for the diagnosis.
BENCH_SETTINGS=(
  "max_wal_size = '16GB'"
  "checkpoint_timeout = '1h'"
  "wal_sender_timeout = 0"
  "maintenance_work_mem = '256MB'"
  "shared_preload_libraries = 'pg_stat_statements'"
  "track_io_timing = on"
)

say() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$1" "$2"; }

need_tools() {
  local t
  for t in psql pgbench python3 "$@"; do
    command -v "$t" >/dev/null || { echo "bench: $t is missing (apt-get install -y postgresql-15 postgresql-client-15 postgresql-15-repack)" >&2; exit 1; }
  done
}

build_ghost() {
  [[ -n ${PG_GHOST_BIN:-} ]] && return 0
  (cd "$REPO" && cargo build --release --quiet) || { echo "bench: cargo build --release failed" >&2; exit 1; }
}

# Where results go: $OUT ($BENCH_OUT, or a new directory); with a name, also an empty
# $RAW=$OUT/<name>.tsv for the script's measurements.
bench_output() {
  OUT=${BENCH_OUT:-$(mktemp -d /tmp/pg-ghost-bench-out.XXXXXX)}
  mkdir -p "$OUT"
  if [[ -n ${1:-} ]]; then
    RAW="$OUT/$1.tsv"
    : >"$RAW"
  fi
}

# A work directory the postgres user can reach (pg-local.sh runs the server as postgres).
WORK=""
BG_PIDS=()
bench_workdir() {
  WORK=$(mktemp -d /tmp/pg-ghost-bench.XXXXXX)
  chmod 755 "$WORK"
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
}
bench_cleanup() {
  local p d
  for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  # Every cluster under $WORK (cluster_start runs in $(...), so no list survives it).
  for d in "$WORK"/*/; do
    [[ -f $d/PG_VERSION ]] && { "$PG_LOCAL" destroy "${d%/}" >/dev/null 2>&1 || true; }
  done
  [[ -n "${KEEP_WORK:-}" ]] || rm -rf "$WORK"
}

# cluster_start NAME: starts $WORK/NAME with the bench settings; prints its port.
cluster_start() {
  local dir="$WORK/$1" s
  "$PG_LOCAL" start "$dir" >/dev/null
  for s in "${BENCH_SETTINGS[@]}"; do echo "$s" >>"$dir/postgresql.conf"; done
  "$PG_LOCAL" stop "$dir"
  "$PG_LOCAL" start "$dir" >/dev/null
  cat "$dir/pg-local.port"
}

# conninfo PORT DB
conninfo() { echo "host=127.0.0.1 port=$1 user=ghost password=ghost dbname=$2"; }

# q PORT DB SQL...: one value (or rows), unaligned, no headers.
q() { local port=$1 db=$2; shift 2; PGOPTIONS="-c client_min_messages=warning" psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U ghost -d "$db" "$@"; }
qc() { local port=$1 db=$2 sql=$3; q "$port" "$db" -c "$sql"; }

# The benchmark table: bigint identity key, a few ints, text, numeric, timestamptz, two
# secondary indexes; deterministic contents (no random(), no now()), so two clusters loaded
# with the same ROWS hold the same rows.
TABLE_DDL="
CREATE TABLE orders (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id int NOT NULL,
    qty int NOT NULL,
    status int NOT NULL,
    amount numeric(12,2) NOT NULL,
    note text,
    created_at timestamptz NOT NULL DEFAULT now()
);"
ALTER_CLAUSE="ALTER COLUMN customer_id TYPE bigint"

# The apply burst: CALL burst(n, per_tx, total) updates n distinct keys spread over the
# table, id = (i * 7919) mod total + 1 (a bijection when total has no factor 7919),
# committing every per_tx rows. A procedure, so client round trips do not pace it.
BURST_PROC="
CREATE PROCEDURE burst(n int, per_tx int, total bigint) LANGUAGE plpgsql AS \$\$
BEGIN
  FOR i IN 0 .. n - 1 LOOP
    UPDATE orders SET qty = qty + 1 WHERE id = (i::bigint * 7919) % total + 1;
    IF (i + 1) % per_tx = 0 THEN COMMIT; END IF;
  END LOOP;
END \$\$;"

# load_template PORT DB ROWS [EXTRA_SQL]: creates DB with the table and ROWS rows, frozen
# and analyzed (hint bits and visibility map set, so no run pays for them), for
# CREATE DATABASE ... TEMPLATE.
load_template() {
  local port=$1 db=$2 rows=$3 extra=${4:-}
  qc "$port" postgres "CREATE DATABASE $db"
  q "$port" "$db" <<SQL
$TABLE_DDL
INSERT INTO orders (customer_id, qty, status, amount, note, created_at)
SELECT g % 50000, g % 97, g % 5, (g % 100000) / 100.0,
       CASE WHEN g % 5 = 0 THEN NULL ELSE md5(g::text) END,
       timestamptz '2024-01-01 00:00:00+00' - g * interval '1 second'
  FROM generate_series(1, $rows) g;
CREATE INDEX orders_customer_idx ON orders (customer_id);
CREATE INDEX orders_created_idx ON orders (created_at);
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
SELECT 'CREATE EXTENSION IF NOT EXISTS pg_repack' FROM pg_available_extensions WHERE name = 'pg_repack' \\gexec
$extra
VACUUM (FREEZE, ANALYZE) orders;
SQL
}

# fresh_db PORT TEMPLATE DB: DB as a file copy of TEMPLATE (fast, little WAL), then a
# checkpoint so every run starts with a clean buffer of dirty pages.
fresh_db() {
  local port=$1 tpl=$2 db=$3
  qc "$port" postgres "DROP DATABASE IF EXISTS $db WITH (FORCE)"
  qc "$port" postgres "CREATE DATABASE $db TEMPLATE $tpl STRATEGY FILE_COPY"
  qc "$port" postgres "CHECKPOINT"
}
drop_db() { qc "$1" postgres "DROP DATABASE IF EXISTS $2 WITH (FORCE)"; }

wal_lsn() { qc "$1" postgres "SELECT pg_current_wal_lsn()"; }
wal_diff() { qc "$1" postgres "SELECT pg_wal_lsn_diff('$3', '$2')::bigint"; }

# median/min/max of the numbers on stdin: "median min max"
stats3() { python3 "$BENCH_DIR/stats.py" mmm; }

# Helpers in the postgres database of a cluster, for waiting inside the server (no client
# polling loop competing for the 2 cores).
#   wait_slot(slot, lsn, timeout_s): Unix time at which the slot's confirmed_flush_lsn
#   reached lsn (polled every 5 ms), NULL on timeout.
install_waiters() {
  q "$1" postgres <<'SQL'
CREATE OR REPLACE FUNCTION wait_slot(s name, target pg_lsn, timeout_s float8) RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE deadline timestamptz := clock_timestamp() + timeout_s * interval '1 second';
BEGIN
  LOOP
    IF (SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = s) >= target THEN
      RETURN extract(epoch FROM clock_timestamp());
    END IF;
    IF clock_timestamp() > deadline THEN RETURN NULL; END IF;
    PERFORM pg_sleep(0.005);
  END LOOP;
END $$;
SQL
}

# wait_log FILE PATTERN TIMEOUT_S PID: waits for PATTERN in FILE while PID lives.
wait_log() {
  local file=$1 pattern=$2 timeout=$3 pid=$4 i
  for ((i = 0; i < timeout * 10; i++)); do
    grep -q "$pattern" "$file" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || { echo "bench: process $pid ended before '$pattern':" >&2; tail -n 20 "$file" >&2; return 1; }
    sleep 0.1
  done
  echo "bench: '$pattern' not seen in $file within ${timeout}s" >&2
  return 1
}

machine_note() {
  echo "Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), $(free -h | awk '/^Mem:/ {print $2}') RAM; PostgreSQL $(psql --version | awk '{print $3}'); $(date -u +%Y-%m-%d)"
}
