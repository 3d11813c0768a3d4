//! pg-ghost's integration tests: one binary, one shared primary cluster, a fresh database per test.

mod binary;
mod harness;

mod alter_compose;
mod autovacuum;
mod checksum;
mod copy_race;
mod dependents;
mod direct;
mod cutover_lock;
mod datacheck;
mod control;
mod controls_e2e;
mod engine_parts;
mod flush_strategy;
mod history;
mod hooks;
mod inspect;
mod libpq;
mod metrics;
mod migrate;
mod oracle;
mod oracle_selftest;
mod plan;
mod real_schema;
mod replica_test;
mod reconnect;
mod replication;
mod run_faults;
mod resume;
mod run_refusals;
mod scenarios;
mod smoke;
mod streaming;
mod throttle;
mod tls;
