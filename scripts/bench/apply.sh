#!/usr/bin/env bash
# Benchmark 2, apply throughput: how fast a backlog of streamed changes is applied, by
# pg-ghost (copy finished, cut-over postponed) and by PostgreSQL's native logical
# replication (a subscriber on a second cluster, CREATE SUBSCRIPTION ... copy_data = false).
#
# The burst: CHANGES single-row UPDATEs of distinct keys spread over the table, committed one
# per transaction, or ROWS_PER_TX per transaction in the variant (a procedure, so the
# client's round trips do not pace it). Both consumers start from the whole burst waiting
# in the slot:
#   - pg-ghost is frozen (SIGSTOP) while the burst is written, then resumed (SIGCONT): the
#     clock starts at SIGCONT;
#   - the subscription is created disabled, then enabled: the clock starts when its apply
#     worker starts (pg_stat_activity.backend_start), so the launcher's
#     wal_retrieve_retry_interval wait is not counted.
# The clock stops when the consumer's slot has confirmed_flush_lsn >= pg_current_wal_lsn()
# taken right after the burst (pg-ghost acknowledges an LSN only once the ghost rows for
# every change up to it are committed; the native worker once its commits are flushed).
# This build's pg-ghost has no control socket (`sup`), so the slot is what is watched.
#
# Each run also records the CPU seconds (utime + stime from /proc/<pid>/stat) of the
# walsender, of the process that applies (pg-ghost's apply backend; the subscriber's apply
# worker) and of pg-ghost itself, over the same interval (pg-ghost: from before the burst,
# since its walsender decodes while the burst is written; the part spent before the clock
# starts is recorded apart).
#
# Contenders: `ghost` (this build, or PG_GHOST_BIN), `native`, and `before`, an earlier
# build given as PG_GHOST_BEFORE_BIN, interleaved with the others for a before/after.
#
# --shared-buffers SIZE sets shared_buffers on both clusters (default: pg-local.sh's 256MB,
# less than the 2M-row table and its indexes, let alone pg-ghost's original and ghost
# together: the apply then reads and writes pages through the kernel's cache).
#
# --one-way-ms D puts the publisher a network away from both consumers: pg-ghost and the
# subscription connect through delay_proxy.py, which holds every byte D ms each way.
#
#   scripts/bench/apply.sh [--rows N] [--changes N] [--runs N] [--per-tx "1 10"] [--contenders "ghost native"] [--shared-buffers SIZE] [--one-way-ms D]
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ROWS=2000000 CHANGES=200000 RUNS=3 PER_TX="1 10" CONTENDERS="ghost native" SHARED_BUFFERS=256MB ONE_WAY_MS=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --rows) ROWS=$2; shift 2 ;;
    --changes) CHANGES=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --per-tx) PER_TX=$2; shift 2 ;;
    --contenders) CONTENDERS=$2; shift 2 ;;
    --shared-buffers) BENCH_SETTINGS+=("shared_buffers = '$2'"); SHARED_BUFFERS=$2; shift 2 ;;
    --one-way-ms) ONE_WAY_MS=$2; shift 2 ;;
    *) sed -n '2,37p' "$0"; exit 2 ;;
  esac
done
[[ " $CONTENDERS " != *" before "* || -x ${PG_GHOST_BEFORE_BIN:-} ]] || { echo "bench: the contender 'before' needs PG_GHOST_BEFORE_BIN" >&2; exit 2; }

# cpu_ticks PID: utime + stime of a process, in clock ticks (0 when it is gone).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
ticks_to_s() { python3 -c "import os, sys; print(f'{(int(sys.argv[2]) - int(sys.argv[1])) / os.sysconf(\"SC_CLK_TCK\"):.2f}')" "$1" "$2"; }

need_tools
build_ghost
bench_workdir
bench_output apply


say "starting the publisher and the subscriber clusters in $WORK"
PUB=$(cluster_start pub)
SUB=$(cluster_start sub)
install_waiters "$PUB"
# Where the consumers reach the publisher: itself, or the delaying proxy in front of it.
PUB_VIA=$PUB
if [[ -n $ONE_WAY_MS ]]; then
  PUB_VIA=$((PUB + 100))
  python3 "$BENCH_DIR/delay_proxy.py" "$PUB_VIA" "$PUB" "$ONE_WAY_MS" &
  BG_PIDS+=($!)
  sleep 1
  say "the consumers reach the publisher through a proxy delaying every byte $ONE_WAY_MS ms each way"
fi
say "loading $ROWS rows on both (the subscriber's table already has the new column type, like the ghost)"
load_template "$PUB" tpl "$ROWS" "$BURST_PROC"
load_template "$SUB" tpl "$ROWS" "ALTER TABLE orders $ALTER_CLAUSE;"

burst() {
  local per_tx=$1
  qc "$PUB" run "CALL burst($CHANGES, $per_tx, $ROWS)"
  wal_lsn "$PUB"
}

run_native() {
  local per_tx=$1
  fresh_db "$PUB" tpl run
  fresh_db "$SUB" tpl run
  qc "$PUB" run "CREATE PUBLICATION bench_pub FOR TABLE orders"
  qc "$SUB" run "CREATE SUBSCRIPTION bench_sub CONNECTION '$(conninfo "$PUB_VIA" run)' PUBLICATION bench_pub WITH (copy_data = false, enabled = false)"
  local target t_end t_start
  target=$(burst "$per_tx")
  qc "$PUB" postgres "CHECKPOINT"; qc "$SUB" postgres "CHECKPOINT"
  qc "$SUB" run "ALTER SUBSCRIPTION bench_sub ENABLE"
  t_end=$(qc "$PUB" postgres "SELECT wait_slot('bench_sub', '$target', 1800)")
  [[ -n $t_end ]] || { echo "bench: the subscriber did not catch up" >&2; exit 1; }
  local wal_pid worker_pid
  wal_pid=$(qc "$PUB" postgres "SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'bench_sub'")
  worker_pid=$(qc "$SUB" run "SELECT pid FROM pg_stat_subscription WHERE subname = 'bench_sub' AND relid IS NULL")
  # Both started with the subscription: every tick they used is this run's.
  CPU_WAL=$(ticks_to_s 0 "$(cpu_ticks "$wal_pid")") CPU_APPLY=$(ticks_to_s 0 "$(cpu_ticks "$worker_pid")") CPU_GHOST="" CPU_WAL_BURST=""
  t_start=$(qc "$SUB" run "SELECT extract(epoch FROM a.backend_start) FROM pg_stat_subscription s JOIN pg_stat_activity a USING (pid) WHERE s.subname = 'bench_sub' AND s.relid IS NULL")
  local same
  same=$(qc "$PUB" run "SELECT sum(qty) FROM orders")=$(qc "$SUB" run "SELECT sum(qty) FROM orders")
  [[ ${same%=*} == "${same#*=}" ]] || { echo "bench: subscriber differs ($same)" >&2; exit 1; }
  qc "$SUB" run "DROP SUBSCRIPTION bench_sub"
  drop_db "$SUB" run
  drop_db "$PUB" run
  SECS=$(elapsed "$t_start" "$t_end")
}

run_ghost() {
  local per_tx=$1 log=$2 bin=$3 flag="$WORK/postpone" pid target t0 t_end
  fresh_db "$PUB" tpl run
  touch "$flag"
  "$bin" run --conn "$(conninfo "$PUB_VIA" run)" --table orders --alter "$ALTER_CLAUSE" \
    --postpone-cut-over-flag-file "$flag" --throttle-additional-flag-file '' >"$log" 2>&1 &
  pid=$!
  BG_PIDS+=("$pid")
  wait_log "$log" "cut-over postponed" 1800 "$pid"
  # The ghost as vacuumed as the subscriber's table, then a clean start.
  qc "$PUB" run "VACUUM ANALYZE _orders_gho"
  qc "$PUB" postgres "CHECKPOINT"
  local slot
  slot=$(qc "$PUB" postgres "SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE 'pg_ghost_%'")
  local wal_pid apply_pid w0 a0 g0
  wal_pid=$(qc "$PUB" postgres "SELECT active_pid FROM pg_replication_slots WHERE slot_name = '$slot'")
  apply_pid=$(qc "$PUB" postgres "SELECT pid FROM pg_stat_activity WHERE application_name = 'pg-ghost apply'")
  w0=$(cpu_ticks "$wal_pid") a0=$(cpu_ticks "$apply_pid") g0=$(cpu_ticks "$pid")
  kill -STOP "$pid"
  target=$(burst "$per_tx")
  qc "$PUB" postgres "CHECKPOINT"
  CPU_WAL_BURST=$(ticks_to_s "$w0" "$(cpu_ticks "$wal_pid")")
  t0=$(now)
  kill -CONT "$pid"
  t_end=$(qc "$PUB" postgres "SELECT wait_slot('$slot', '$target', 1800)")
  [[ -n $t_end ]] || { echo "bench: pg-ghost did not catch up" >&2; exit 1; }
  CPU_WAL=$(ticks_to_s "$w0" "$(cpu_ticks "$wal_pid")") CPU_APPLY=$(ticks_to_s "$a0" "$(cpu_ticks "$apply_pid")") CPU_GHOST=$(ticks_to_s "$g0" "$(cpu_ticks "$pid")")
  local stale
  stale=$(qc "$PUB" run "SELECT count(*) FROM orders o JOIN _orders_gho g USING (id) WHERE o.qty <> g.qty")
  [[ $stale == 0 ]] || { echo "bench: $stale ghost rows are stale after catching up" >&2; exit 1; }
  rm -f "$flag"
  wait "$pid" || { tail -n 20 "$log" >&2; exit 1; }
  BG_PIDS=()
  drop_db "$PUB" run
  SECS=$(elapsed "$t0" "$t_end")
}

label_of() {
  case $1 in
    ghost) echo "pg-ghost (postponed cut-over)" ;;
    before) echo "pg-ghost, earlier build (postponed cut-over)" ;;
    *) echo "native logical replication (subscriber)" ;;
  esac
}

for run in $(seq 1 "$RUNS"); do
  for per_tx in $PER_TX; do
    for c in $CONTENDERS; do
      case $c in
        ghost) run_ghost "$per_tx" "$OUT/apply-ghost-$per_tx-$run.log" "$GHOST" ;;
        before) run_ghost "$per_tx" "$OUT/apply-before-$per_tx-$run.log" "$PG_GHOST_BEFORE_BIN" ;;
        native) run_native "$per_tx" ;;
        *) echo "bench: unknown contender $c" >&2; exit 2 ;;
      esac
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$c" "$per_tx" "$run" "$SECS" "$CPU_WAL" "$CPU_APPLY" "${CPU_GHOST:-}" "$(cut -d' ' -f1 /proc/loadavg)" "${CPU_WAL_BURST:-}" | tee -a "$RAW" >&2
    done
  done
done

echo
echo "### Apply throughput: a backlog of $CHANGES single-row UPDATEs on a $ROWS-row table (shared_buffers $SHARED_BUFFERS${ONE_WAY_MS:+, consumers $ONE_WAY_MS ms away each way})"
echo
echo "$(machine_note). $RUNS interleaved runs; median (min–max). Clock: from the consumer's start (pg-ghost: SIGCONT; native: apply worker's backend_start) until its slot's confirmed_flush_lsn reaches the WAL position after the burst. CPU: seconds of utime + stime from /proc (pg-ghost's walsender counted from before the burst, since it decodes while the burst is written); load: the 1-minute load average at each run's end."
echo
echo "| consumer | rows per transaction | time s | changes/s | walsender CPU s | of which while the burst was written | apply backend CPU s | pg-ghost CPU s | load |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for per_tx in $PER_TX; do
  for c in $CONTENDERS; do
    read -r med lo hi < <(awk -F'\t' -v c="$c" -v p="$per_tx" '$1 == c && $2 == p {print $4}' "$RAW" | stats3)
    read -r rmed rlo rhi < <(awk -F'\t' -v c="$c" -v p="$per_tx" -v n="$CHANGES" '$1 == c && $2 == p {print n / $4}' "$RAW" | stats3)
    cpu() { awk -F'\t' -v c="$c" -v p="$per_tx" -v f="$1" '$1 == c && $2 == p && $f != "" {print $f}' "$RAW" | stats3 | awk 'NF == 3 && $1 != "nan" {printf "%.2f (%.2f–%.2f)", $1, $2, $3}'; }
    printf '| %s | %s | %.2f (%.2f–%.2f) | %.0f (%.0f–%.0f) | %s | %s | %s | %s | %s |\n' "$(label_of "$c")" "$per_tx" "$med" "$lo" "$hi" "$rmed" "$rlo" "$rhi" "$(cpu 5)" "$(cpu 9)" "$(cpu 6)" "$(cpu 7)" "$(cpu 8)"
  done
done
echo
echo "Raw runs: $RAW (contender, rows per transaction, run, seconds, walsender CPU s, apply CPU s, pg-ghost CPU s, load, walsender CPU s while the burst was written)"
