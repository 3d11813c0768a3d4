//! pg-ghost's integration tests: one binary, one shared primary cluster, a fresh database per test.

mod harness;

mod engine_parts;
mod inspect;
mod oracle;
mod oracle_selftest;
mod replication;
mod smoke;
