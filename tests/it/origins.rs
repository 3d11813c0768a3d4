//! Replication origins on the copy's sessions (PostgreSQL 16 and later): the stream leaves the
//! copy's own writes out of its decoding, and asks for that only while no other replication
//! origin exists, since it leaves out every origin's changes. On PostgreSQL 15 (CI) the same
//! tests check that nothing of it is used: no origin created, the swap made as before.
//! `PG_BINDIR=<PostgreSQL 16 bin> cargo test --features fault-injection --test it origins::`
//! runs them on 16.

use crate::binary;
use crate::harness::{Cluster, TestDb};
use crate::oracle::*;
use crate::run_faults::{flag_path, wait_for_state, Running};
use std::time::Duration;

const ALTER: &str = "ALTER COLUMN n TYPE bigint";

fn server_is_16_or_later(db: &TestDb<'_>) -> bool {
    db.psql("SELECT current_setting('server_version_num')::int >= 160000") == "t"
}

/// The cluster's replication origins whose name starts with `prefix`, comma-separated.
fn origins(db: &TestDb<'_>, prefix: &str) -> String {
    db.psql(&format!(
        "SELECT coalesce(string_agg(roname::text, ',' ORDER BY roname), '') FROM pg_replication_origin WHERE starts_with(roname, '{prefix}')"
    ))
}

/// Under the control-table workload with two copy workers: on 16 the copy's sessions write
/// under origins the stream leaves out, the table ends equal to the control and no origin is
/// left; on 15 none is ever made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_copy_writes_under_origins_the_stream_leaves_out() {
    let db = Cluster::primary().fresh_db("origins_copy");
    let table = OracleTable::create(&db, "orders", KeyKind::Identity, 6_000).await;
    let client = db.client().await;
    // Other tests' runs in the same cluster have origins of their own: only this run's.
    let ours = format!("pgghost_pg_ghost_{}_c", db.psql("SELECT 'orders'::regclass::oid"));
    let workload = Workload::start(&db, &table, WorkloadOptions::new(3).rate(Some(100))).await;
    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;
    let flag = flag_path(&db, "postpone");
    std::fs::write(&flag, b"").unwrap();
    let args = ["--table", "orders", "--alter", ALTER, "--execute", "--copy-workers", "2", "--chunk-size", "500", "--postpone-cut-over-flag-file", flag.to_str().unwrap()];
    let mut run = Running::spawn(&db, "run", &args);
    wait_for_state(&client, &mut run, "orders", "postponed", Duration::from_secs(120)).await;
    let during = origins(&db, &ours);
    std::fs::remove_file(&flag).unwrap();
    let out = run.wait(Duration::from_secs(120)).await;
    binary::assert_success(&out);
    let log = binary::stderr(&out);
    match server_is_16_or_later(&db) {
        true => {
            assert!(log.contains("left out of the stream's decoding"), "the stream did not leave the copy out:\n{log}");
            let slot_origins: Vec<&str> = during.split(',').collect();
            assert_eq!(slot_origins.len(), 2, "one origin per copy worker while the run lasts: {during}");
            assert_eq!(during, format!("{ours}0,{ours}1"));
        }
        false => {
            assert!(!log.contains("left out of the stream's decoding"), "{log}");
            assert_eq!(during, "", "an origin was made on a server older than 16");
        }
    }
    assert_eq!(origins(&db, &ours), "", "replication origins left behind");
    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;
    let report = workload.stop().await;
    assert!(report.errors.is_empty(), "workload errors (seed {}): {:#?}", report.seed, report.errors);
    table.assert_matches_control(&client, &table.projection().map("n", "n::bigint")).await;
}

/// A replication origin that appears during the run (a subscription made meanwhile, say):
/// on 16 the stream may have left out changes written under it, so the run stops before the
/// swap (while still postponed: the watch sees it) naming it, the table untouched; on 15
/// nothing was left out and the swap is made. One that exists from the start makes the
/// stream decode everything (16).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_appears_during_the_run_refuses_the_swap() {
    // A cluster of its own: an origin is the whole cluster's, and would refuse the other
    // tests' swaps on 16.
    let cluster = Cluster::start("origins");
    let db = cluster.fresh_db("origins_foreign");
    let _table = OracleTable::create(&db, "orders", KeyKind::Identity, 3_000).await;
    let client = db.client().await;
    let oid = db.psql("SELECT 'orders'::regclass::oid");
    let flag = flag_path(&db, "postpone");
    std::fs::write(&flag, b"").unwrap();
    let args = ["--table", "orders", "--alter", ALTER, "--execute", "--postpone-cut-over-flag-file", flag.to_str().unwrap()];
    let mut run = Running::spawn(&db, "run", &args);
    wait_for_state(&client, &mut run, "orders", "postponed", Duration::from_secs(120)).await;
    db.psql("SELECT pg_replication_origin_create('a subscription''s')");
    let sixteen = server_is_16_or_later(&db);
    // On 16 the run stops by itself while still postponed; on 15 it goes on to the swap.
    if !sixteen {
        std::fs::remove_file(&flag).unwrap();
    }
    let out = run.wait(Duration::from_secs(120)).await;
    let _ = std::fs::remove_file(&flag);
    if sixteen {
        binary::assert_failure(&out, 3, "replication origin(s) a subscription's appeared during the run");
        assert_eq!(db.psql("SELECT 'orders'::regclass::oid"), oid, "the table was swapped");
        assert_eq!(db.psql("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'orders'::regclass AND attname = 'n'"), "integer");
    } else {
        binary::assert_success(&out);
        assert_ne!(db.psql("SELECT 'orders'::regclass::oid"), oid, "no swap");
    }
    assert_eq!(origins(&db, ""), "a subscription's", "pg-ghost's origins left behind, or the foreign one dropped");
    assert_eq!(db.psql("SELECT count(*) FROM pg_replication_slots WHERE database = current_database()"), "0", "slot left behind");

    // With the origin there from the start, the stream decodes everything and the run succeeds.
    if sixteen {
        let out = binary::run(&db, &["--table", "orders", "--alter", ALTER, "--execute", "--initially-drop-ghost-table"]).await;
        binary::assert_success(&out);
        let log = binary::stderr(&out);
        assert!(log.contains("the stream decodes the copy's writes too") && log.contains("a subscription's"), "{log}");
    }
    db.psql("SELECT pg_replication_origin_drop('a subscription''s')");
}
