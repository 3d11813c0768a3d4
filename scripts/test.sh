#!/usr/bin/env bash
# Runs pg-ghost's whole test suite. Installs what it needs when it is missing (PostgreSQL 15
# server and client, libclang for the SQL parser's build), then runs `cargo test`: the tests
# start their own throwaway clusters on 127.0.0.1 and remove them afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
# tests/it/real_schema.rs runs pg-ghost on DAViCal's schema, taken from Debian's packages (apt-get
# download, nothing installed) and kept under target/sample-schema.
scripts/sample-schema.sh >/dev/null || echo "test.sh: without it the real-schema test will fail" >&2

export PG_BINDIR=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
# The fault-injection feature compiles in the crash points the resume tests use.
cargo test --locked --features fault-injection "$@"
