#!/usr/bin/env bash
# Runs pg-ghost's whole test suite. Installs what it needs when it is missing (PostgreSQL 15
# server and client, libclang for the SQL parser's build), then runs `cargo test`: the tests
# start their own throwaway clusters on 127.0.0.1 and remove them afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
[[ -x /usr/lib/postgresql/15/bin/initdb ]] || missing+=(postgresql-15)
[[ -x /usr/lib/postgresql/15/bin/pg_basebackup ]] || missing+=(postgresql-client-15)
# pg_query's build runs bindgen, which needs libclang itself (not only libclang-cpp).
if command -v dpkg >/dev/null; then
  dpkg -s libclang-dev >/dev/null 2>&1 || missing+=(libclang-dev)
else
  compgen -G "/usr/lib/llvm-*/lib/libclang.so" >/dev/null || missing+=(libclang-dev)
fi
command -v runuser >/dev/null || missing+=(util-linux)
if (( ${#missing[@]} )); then
  echo "test.sh: installing ${missing[*]}" >&2
  sudo=""
  [[ $(id -u) == 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# tests/it/real_schema.rs runs pg-ghost on DAViCal's schema, taken from Debian's packages (apt-get
# download, nothing installed) and kept under target/sample-schema.
scripts/sample-schema.sh >/dev/null || echo "test.sh: without it the real-schema test will fail" >&2
command -v cargo >/dev/null || { echo "test.sh: cargo is needed (https://rustup.rs)" >&2; exit 1; }

export PG_BINDIR=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
# The fault-injection feature compiles in the crash points the resume tests use.
cargo test --locked --features fault-injection "$@"
