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

# What the catalog of newer majors changes is checked on PostgreSQL 18 too (binaries from
# scripts/pg-binaries.sh): named and NOT VALID not-null constraints, replication origins
# (16+), failover slots (17+), the names the swap gives, on plain and partitioned tables. Not when a filter was given.
if [[ $# == 0 ]]; then
  newer=(postgres18:: origins:: failover:: scenarios::add_column_with_default scenarios::identity_columns
         direct::each_kind dependents::every_dependent partitioned::hash_partitioned
         convert::converted_with_a_default alter_compose:: engine_parts:: replica_test::rehearses_a_partitioned_table)
  echo "test.sh: the tests of what changed in newer majors, on PostgreSQL 18" >&2
  PG_BINDIR=$(scripts/pg-binaries.sh 18) cargo test --locked --features fault-injection --test it -- "${newer[@]}"
fi
