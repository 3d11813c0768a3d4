#!/usr/bin/env bash
# Throwaway PostgreSQL clusters on 127.0.0.1 for pg-ghost's demo, tests and benchmarks.
#
#   scripts/pg-local.sh start   DIR [PORT]            init (if new) and start a primary; prints its conninfo
#   scripts/pg-local.sh standby PRIMARY_DIR DIR [PORT] physical standby of PRIMARY_DIR (pg_basebackup -R)
#   scripts/pg-local.sh stop    DIR                    fast shutdown
#   scripts/pg-local.sh destroy DIR                    immediate shutdown, then remove DIR
#   scripts/pg-local.sh conninfo DIR                   print the connection string again
#   scripts/pg-local.sh watch   DIR PID                destroy DIR once process PID has exited
#
# The cluster has wal_level=logical, room for slots and walsenders, and SCRAM password
# auth for the role `ghost` (password `ghost`, SUPERUSER REPLICATION). Its Unix socket
# lives in DIR. PostgreSQL refuses to run as root: as root, the server binaries run as
# the `postgres` user. PG_BINDIR overrides where the server binaries are looked up.
set -euo pipefail

ROLE=ghost
PASSWORD=ghost

die() { echo "pg-local: $*" >&2; exit 1; }

bindir() {
  if [[ -n "${PG_BINDIR:-}" ]]; then echo "$PG_BINDIR"; return; fi
  for d in /usr/lib/postgresql/15/bin /usr/lib/postgresql/*/bin; do
    [[ -x "$d/initdb" ]] && { echo "$d"; return; }
  done
  if command -v pg_config >/dev/null && [[ -x "$(pg_config --bindir)/initdb" ]]; then
    pg_config --bindir; return
  fi
  die "PostgreSQL server binaries not found. Install them with 'apt-get update && apt-get install -y postgresql-15' (or set PG_BINDIR)."
}

BIN=$(bindir)

# Runs a server binary as the user that owns the cluster.
as_owner() {
  if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  local p
  for p in $(seq "${1:-54320}" 65000); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
  done
  die "no free port found"
}

prepare_dir() {
  local dir=$1
  mkdir -p "$dir"
  chmod 0700 "$dir"
  if [[ $(id -u) == 0 ]]; then
    chown postgres: "$dir"
    # The server must be able to reach DIR through its parents.
    local p; p=$(dirname "$(readlink -f "$dir")")
    while [[ "$p" != "/" ]]; do
      [[ -x "$p" ]] && runuser -u postgres -- test -x "$p" 2>/dev/null || chmod o+x "$p"
      p=$(dirname "$p")
    done
  fi
}

conninfo() {
  local dir=$1 port
  port=$(cat "$dir/pg-local.port")
  echo "host=127.0.0.1 port=$port user=$ROLE password=$PASSWORD dbname=postgres"
}

configure() {
  local dir=$1 port=$2
  cat >>"$dir/postgresql.conf" <<CONF
# pg-local
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
wal_level = logical
max_replication_slots = 32
max_wal_senders = 32
max_connections = 200
max_worker_processes = 16
max_logical_replication_workers = 8
hot_standby = on
hot_standby_feedback = on
wal_keep_size = 256MB
fsync = off
synchronous_commit = on
full_page_writes = off
shared_buffers = 256MB
logging_collector = off
log_min_messages = warning
password_encryption = 'scram-sha-256'
CONF
  # The test suite uses the md5, trust and cleartext roles to exercise each auth method.
  cat >"$dir/pg_hba.conf" <<HBA
local all all trust
local replication all trust
host all,replication ghost_trust 127.0.0.1/32 trust
host all,replication ghost_md5 127.0.0.1/32 md5
host all,replication ghost_cleartext 127.0.0.1/32 password
host all,replication all 127.0.0.1/32 scram-sha-256
HBA
  echo "$port" >"$dir/pg-local.port"
}

start_server() {
  local dir=$1
  as_owner "$BIN/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 start >/dev/null \
    || { tail -n 30 "$dir/server.log" >&2; die "server in $dir did not start"; }
}

psql_local() {
  local dir=$1; shift
  as_owner "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$dir" -p "$(cat "$dir/pg-local.port")" -U postgres -d postgres "$@"
}

cmd_start() {
  local dir=${1:?DIR}; local port=${2:-}
  if [[ ! -f "$dir/PG_VERSION" ]]; then
    [[ -n "$port" ]] || port=$(free_port)
    prepare_dir "$dir"
    as_owner "$BIN/initdb" -D "$dir" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >"$dir.initdb.log" 2>&1 \
      || { cat "$dir.initdb.log" >&2; die "initdb failed"; }
    rm -f "$dir.initdb.log"
    configure "$dir" "$port"
    start_server "$dir"
    psql_local "$dir" -c "CREATE ROLE $ROLE LOGIN SUPERUSER REPLICATION PASSWORD '$PASSWORD'"
  else
    as_owner "$BIN/pg_ctl" -D "$dir" status >/dev/null 2>&1 || start_server "$dir"
  fi
  conninfo "$dir"
}

cmd_standby() {
  local primary=${1:?PRIMARY_DIR} dir=${2:?DIR} port=${3:-}
  [[ -n "$port" ]] || port=$(free_port $(( $(cat "$primary/pg-local.port") + 1 )))
  prepare_dir "$dir"
  as_owner "$BIN/pg_basebackup" -h "$primary" -p "$(cat "$primary/pg-local.port")" -U postgres \
    -D "$dir" -R -X stream -c fast >/dev/null 2> >(grep -v "skipping special file" >&2)
  sed -i "s/^port = .*/port = $port/; s|^unix_socket_directories = .*|unix_socket_directories = '$dir'|" "$dir/postgresql.conf"
  echo "$port" >"$dir/pg-local.port"
  start_server "$dir"
  conninfo "$dir"
}

cmd_stop() {
  local dir=${1:?DIR}
  [[ -f "$dir/PG_VERSION" ]] || return 0
  as_owner "$BIN/pg_ctl" -D "$dir" -m fast -w stop >/dev/null 2>&1 || true
}

cmd_destroy() {
  local dir=${1:?DIR}
  if [[ -f "$dir/PG_VERSION" ]]; then
    as_owner "$BIN/pg_ctl" -D "$dir" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
}

cmd_watch() {
  local dir=${1:?DIR} pid=${2:?PID}
  ( trap '' HUP
    while kill -0 "$pid" 2>/dev/null; do sleep 1; done
    cmd_destroy "$dir"; rmdir "$(dirname "$dir")" 2>/dev/null ) </dev/null >/dev/null 2>&1 &
  disown || true
}

case "${1:-}" in
  start) shift; cmd_start "$@" ;;
  standby) shift; cmd_standby "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  destroy) shift; cmd_destroy "$@" ;;
  conninfo) shift; conninfo "$@" ;;
  watch) shift; cmd_watch "$@" ;;
  *) sed -n '2,15p' "$0"; exit 2 ;;
esac
