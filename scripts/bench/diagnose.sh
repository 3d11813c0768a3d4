#!/usr/bin/env bash
# Where pg-ghost's copy time goes, against the physical limit, on one throwaway cluster:
#
#   1. the physical limit, step by step: INSERT ... SELECT into an index-less table, then
#      the key and the two index builds;
#   2. the same rows in one INSERT ... SELECT ... ON CONFLICT (id) DO NOTHING into a table
#      that has its key index (pg-ghost's copy statement, unchunked, no slot), and without
#      the ON CONFLICT;
#   3. pg-ghost run --execute (--copy-workers W), with pg_stat_statements reset before,
#      its phase times, its top statements, and the CPU seconds each server process
#      used during the run (walsender decoding included), sampled from /proc.
#
#   4. pg-ghost applying a backlog of CHANGES single-row UPDATEs (as in apply.sh: frozen
#      while the burst is written, timed from SIGCONT), with the same statistics.
#
#   scripts/bench/diagnose.sh [--rows N] [--workers W] [--changes N]
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ROWS=2000000 WORKERS=1 CHANGES=200000
while [[ $# -gt 0 ]]; do
  case $1 in
    --rows) ROWS=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    --changes) CHANGES=$2; shift 2 ;;
    *) sed -n '2,14p' "$0"; exit 2 ;;
  esac
done

need_tools
build_ghost
bench_workdir
bench_output

PORT=$(cluster_start pg)
load_template "$PORT" tpl "$ROWS" "$BURST_PROC"
install_waiters "$PORT"
PM=$(head -1 "$WORK/pg/postmaster.pid")

# CPU seconds per server process between cpu_start and cpu_report, sampled from /proc
# (processes that end between samples lose their last 0.25 s).
cpu_start() {
  SAMPLES="$OUT/diagnose-cpu-$1.txt"; : >"$SAMPLES"
  BASE="$OUT/diagnose-cpu-$1-before.txt"
  APPS="$OUT/diagnose-apps-$1.txt"; : >"$APPS"
  for p in $(pgrep -P "$PM"); do echo "$p $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null)"; done >"$BASE"
  (
    while true; do
      for p in $(pgrep -P "$PM"); do
        [[ -r /proc/$p/stat ]] || continue
        echo "$p $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null) $(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | cut -c1-60)"
      done >>"$SAMPLES" 2>/dev/null
      qc "$PORT" postgres "SELECT pid, coalesce(nullif(application_name, ''), backend_type) FROM pg_stat_activity" >>"$APPS" 2>/dev/null || true
      sleep 0.25
    done
  ) &
  SAMPLER=$!
  BG_PIDS+=("$SAMPLER")
}
cpu_report() {
  kill "$SAMPLER"; wait "$SAMPLER" 2>/dev/null || true
  echo "  server CPU seconds, by process (sampled every 0.25 s from /proc):"
  python3 - "$SAMPLES" "$APPS" "$BASE" <<'PY' | sed 's/^/    /'
import sys, collections
last, cmd = {}, {}
base = {}
for line in open(sys.argv[3]):
    p = line.split()
    if len(p) == 2: base[p[0]] = int(p[1])
for line in open(sys.argv[1]):
    parts = line.split(None, 2)
    if len(parts) < 2: continue
    pid, ticks = parts[0], int(parts[1])
    last[pid] = ticks
    cmd[pid] = parts[2].strip() if len(parts) > 2 else ""
app = {}
for line in open(sys.argv[2]):
    if "|" in line:
        pid, name = line.strip().split("|", 1)
        if name: app[pid] = name
by = collections.Counter()
for pid in last:
    used = last[pid] - base.get(pid, 0)
    label = app.get(pid) or cmd[pid].replace("postgres: ", "")[:40]
    if "walsender" in cmd[pid] and "pg-ghost" not in label: label = "walsender"
    by[label] += used / 100.0
for label, secs in by.most_common(12):
    if secs >= 0.05: print(f"{secs:7.2f}  {label}")
PY
}
top_statements() {
  echo "  top statements by total time (pg_stat_statements):"
  qc "$PORT" run "SELECT to_char(total_exec_time / 1000, 'FM9990.00') || ' s  ' || calls || ' calls  ' || rows || ' rows  ' || regexp_replace(left(query, 110), '\s+', ' ', 'g')
                  FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat_statements%' AND query NOT LIKE '%wait_slot%' AND query NOT LIKE '%pg_stat_activity%' ORDER BY total_exec_time DESC LIMIT 8" | sed 's/^/    /'
}

timed() { # timed LABEL SQL
  local t0 t1; t0=$(now); qc "$PORT" run "$2" >/dev/null; t1=$(now)
  printf '  %-58s %7.2f s\n' "$1" "$(elapsed "$t0" "$t1")"
}

echo "## 1. Physical limit, step by step ($ROWS rows)"
fresh_db "$PORT" tpl run
timed "CREATE TABLE (LIKE) + ALTER on the empty table" "CREATE TABLE orders_new (LIKE orders INCLUDING DEFAULTS); ALTER TABLE orders_new $ALTER_CLAUSE"
timed "INSERT ... SELECT (no index)" "INSERT INTO orders_new SELECT * FROM orders"
timed "ADD PRIMARY KEY (id)" "ALTER TABLE orders_new ADD PRIMARY KEY (id)"
timed "CREATE INDEX (customer_id)" "CREATE INDEX ON orders_new (customer_id)"
timed "CREATE INDEX (created_at)" "CREATE INDEX ON orders_new (created_at)"

echo "## 2. pg-ghost's copy statement in one piece, no slot"
fresh_db "$PORT" tpl run
timed "CREATE TABLE (LIKE) + ALTER + PRIMARY KEY" "CREATE TABLE orders_new (LIKE orders INCLUDING DEFAULTS); ALTER TABLE orders_new $ALTER_CLAUSE; ALTER TABLE orders_new ADD PRIMARY KEY (id)"
timed "INSERT ... SELECT ... ON CONFLICT (id) DO NOTHING (key index)" "INSERT INTO orders_new SELECT * FROM orders ON CONFLICT (id) DO NOTHING"
timed "the same without ON CONFLICT (key index)" "TRUNCATE orders_new; INSERT INTO orders_new SELECT * FROM orders"

echo "## 3. pg-ghost run --execute --copy-workers $WORKERS"
fresh_db "$PORT" tpl run
qc "$PORT" run "SELECT pg_stat_statements_reset()" >/dev/null
qc "$PORT" run "SELECT pg_stat_reset_shared('wal')" >/dev/null
cpu_start copy
LOG="$OUT/diagnose-ghost.log"
t0=$(now)
/usr/bin/time -f "%U %S" -o "$OUT/diagnose-ghost.time" "$GHOST" run --conn "$(conninfo "$PORT" run)" --table orders --alter "$ALTER_CLAUSE" --execute --ok-to-drop-table \
  --copy-workers "$WORKERS" --throttle-additional-flag-file '' -v >"$LOG" 2>&1 || { tail -n 20 "$LOG" >&2; exit 1; }
t1=$(now)
cpu_report
printf '  wall time %.2f s; pg-ghost process CPU %s s (user + system)\n' "$(elapsed "$t0" "$t1")" "$(awk '{print $1 + $2}' "$OUT/diagnose-ghost.time")"
echo "  phases (s): $(python3 "$BENCH_DIR/phases.py" "$LOG" | cut -d' ' -f2-)"
top_statements
echo "  WAL: $(qc "$PORT" run "SELECT wal_records || ' records, ' || pg_size_pretty(wal_bytes) || ', ' || wal_fpi || ' full-page images' FROM pg_stat_wal")"

echo "## 4. pg-ghost applying a backlog of $CHANGES single-row UPDATEs (cut-over postponed)"
fresh_db "$PORT" tpl run
FLAG="$WORK/postpone"; touch "$FLAG"
LOG="$OUT/diagnose-apply.log"
"$GHOST" run --conn "$(conninfo "$PORT" run)" --table orders --alter "$ALTER_CLAUSE" \
  --postpone-cut-over-flag-file "$FLAG" --throttle-additional-flag-file '' -v >"$LOG" 2>&1 &
GPID=$!
BG_PIDS+=("$GPID")
wait_log "$LOG" "cut-over postponed" 1800 "$GPID"
qc "$PORT" run "VACUUM ANALYZE _orders_gho"
SLOT=$(qc "$PORT" postgres "SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE 'pg_ghost_%'")
kill -STOP "$GPID"
t0=$(now)
qc "$PORT" run "CALL burst($CHANGES, 1, $ROWS)"
t1=$(now)
TARGET=$(wal_lsn "$PORT")
printf '  writing the burst: %.2f s (%s WAL)\n' "$(elapsed "$t0" "$t1")" "$(qc "$PORT" postgres "SELECT pg_size_pretty(pg_wal_lsn_diff('$TARGET', confirmed_flush_lsn)) FROM pg_replication_slots WHERE slot_name = '$SLOT'")"
qc "$PORT" postgres "CHECKPOINT"
qc "$PORT" run "SELECT pg_stat_statements_reset()" >/dev/null
cpu_start apply
GCPU0=$(awk '{print $14 + $15}' "/proc/$GPID/stat")
t0=$(now)
kill -CONT "$GPID"
t_end=$(qc "$PORT" postgres "SELECT wait_slot('$SLOT', '$TARGET', 1800)")
GCPU1=$(awk '{print $14 + $15}' "/proc/$GPID/stat")
cpu_report
echo "  pg-ghost process CPU: $(( (GCPU1 - GCPU0) / 100 )).$(printf '%02d' $(( (GCPU1 - GCPU0) % 100 ))) s"
printf '  applying: %.2f s, %.0f changes/s\n' "$(elapsed "$t0" "$t_end")" "$(python3 -c "print($CHANGES / ($t_end - $t0))")"
top_statements
rm -f "$FLAG"
wait "$GPID" || true
BG_PIDS=()
