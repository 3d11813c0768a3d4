#!/usr/bin/env bash
# Benchmark: the fleet's overhead per target. N small tenant databases (a 1,000-row table
# each, made from one template) spread over two clusters, a registry database listing them,
# and `pg-ghost fleet` applying two migration files to every one (an ADD COLUMN, made
# directly, and a CREATE INDEX CONCURRENTLY). Prints the total time, the time per target
# (from the report) and pg-ghost's peak RSS (GNU time -v).
#
#   scripts/bench/fleet.sh [--tenants N] [--concurrency C] [--per-server M]
set -euo pipefail
source "$(dirname "$0")/lib.sh"

TENANTS=200 CONCURRENCY=4 PER_SERVER=2
while [[ $# -gt 0 ]]; do
  case $1 in
    --tenants) TENANTS=$2; shift 2 ;;
    --concurrency) CONCURRENCY=$2; shift 2 ;;
    --per-server) PER_SERVER=$2; shift 2 ;;
    *) sed -n '2,8p' "$0"; exit 2 ;;
  esac
done

need_tools /usr/bin/time
build_ghost
bench_workdir

say "starting two clusters in $WORK"
PORTS=("$(cluster_start a)" "$(cluster_start b)")
for port in "${PORTS[@]}"; do
  q "$port" postgres -c "CREATE DATABASE tenant_template"
  q "$port" tenant_template -c "CREATE TABLE accounts (id bigint PRIMARY KEY, n int NOT NULL, note text);
                                INSERT INTO accounts SELECT g, g % 100, md5(g::text) FROM generate_series(1, 1000) g;"
done
q "${PORTS[0]}" postgres -c "CREATE DATABASE registry"
q "${PORTS[0]}" registry -c "CREATE TABLE tenants (name text PRIMARY KEY, conninfo text NOT NULL, server text NOT NULL)"
say "creating $TENANTS tenant databases"
for ((i = 0; i < TENANTS; i++)); do
  port=${PORTS[$((i % 2))]}
  q "$port" postgres -c "CREATE DATABASE tenant_$i TEMPLATE tenant_template STRATEGY FILE_COPY"
  q "${PORTS[0]}" registry -c "INSERT INTO tenants VALUES ('tenant_$i', '$(conninfo "$port" "tenant_$i")', 'cluster-$((i % 2))')"
done

mkdir -p "$WORK/migrations"
printf -- '-- pg-ghost: phase=expand\nALTER TABLE accounts ADD COLUMN region text;\n' >"$WORK/migrations/V1__region.sql"
printf 'CREATE INDEX accounts_n_idx ON accounts (n);\n' >"$WORK/migrations/V2__index_n.sql"

say "fleet: $TENANTS targets, --concurrency $CONCURRENCY --per-server $PER_SERVER"
start=$(now)
/usr/bin/time -v "$GHOST" fleet --registry "$(conninfo "${PORTS[0]}" registry)" \
  --targets-query "SELECT name, conninfo, server FROM tenants" --dir "$WORK/migrations" \
  --concurrency "$CONCURRENCY" --per-server "$PER_SERVER" --report "$WORK/report.json" \
  >"$WORK/report.txt" 2>"$WORK/fleet.log"
total=$(elapsed "$start" "$(now)")
rss=$(grep "Maximum resident set size" "$WORK/fleet.log" | awk '{print $NF}')
python3 - "$WORK/report.json" "$total" "$rss" <<'PY'
import json, statistics, sys
report = json.load(open(sys.argv[1]))
secs = [r["seconds"] for r in report["results"] if r["seconds"] is not None]
print(f"targets {report['targets']}, succeeded {report['succeeded']}, failed {report['failed']}")
print(f"total {float(sys.argv[2]):.1f} s, {float(sys.argv[2]) / report['targets'] * 1000:.0f} ms of wall time per target")
print(f"per target (its own run): median {statistics.median(secs) * 1000:.0f} ms, max {max(secs) * 1000:.0f} ms")
print(f"peak RSS {int(sys.argv[3]) / 1024:.1f} MB")
PY
