//! The race that loses rows (DESIGN.md, apply): deletes and updates aimed at the key range
//! a copy chunk is reading at that very moment. A chunk reads the original at its snapshot;
//! if a key of its range were flushed while the chunk is uncommitted, a deleted row would be
//! committed back and an updated row would stay stale. The workload aims its deletes and
//! updates at the range pg-ghost records as in flight, over many chunks and several runs.

use crate::binary;
use crate::harness::Cluster;
use crate::oracle::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Follows the copy range pg-ghost records in its changelog and aims the workload at it.
fn follow_copy_range(db_conninfo: String, changelog: String, target: TargetRange, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u32> {
    tokio::spawn(async move {
        let (client, conn) = tokio_postgres::connect(&db_conninfo, tokio_postgres::NoTls).await.expect("connect");
        tokio::spawn(conn);
        let sql = format!("SELECT value FROM {changelog} WHERE key = 'copy_range'");
        let mut ranges_seen = 0;
        let mut last = String::new();
        while !stop.load(Ordering::Relaxed) {
            // The changelog appears once the run has prepared; until then there is nothing to aim at.
            if let Ok(Some(row)) = client.query_opt(&sql, &[]).await {
                let value: String = row.get(0);
                if value != last {
                    if let Some((lo, hi)) = value.split_once("..") {
                        let lo: i64 = lo.parse().unwrap_or(0);
                        if let Ok(hi) = hi.parse::<i64>() {
                            *target.lock().unwrap() = Some((lo + 1, hi));
                            ranges_seen += 1;
                        }
                    }
                    last = value;
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        *target.lock().unwrap() = None;
        ranges_seen
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_aimed_at_the_chunk_in_flight_are_not_lost() {
    for round in 0..3 {
        let db = Cluster::primary().fresh_db("copy_race");
        let table = OracleTable::create(&db, "orders", KeyKind::Identity, 6_000).await;
        let workload = Workload::start(&db, &table, WorkloadOptions::new(3).rate(None)).await;
        workload.wait_for_more_commits(20, Duration::from_secs(30)).await;
        let stop = Arc::new(AtomicBool::new(false));
        let follower = follow_copy_range(db.conninfo(), "\"public\".\"_orders_ghc\"".into(), workload.target_range(), stop.clone());

        let workers = if round == 2 { "2" } else { "1" };
        let mut args = vec!["--table", "orders", "--alter", "ALTER COLUMN n TYPE bigint", "--execute", "--chunk-size", "150", "--chunk-time", "300ms", "--copy-workers", workers];
        // The checksum repairs what the copy and the apply got wrong: one round goes without it,
        // and the others must not have needed it, so that the control comparison sees the apply.
        if round == 1 {
            args.push("--skip-checksum");
        }
        let out = binary::run(&db, &args).await;
        stop.store(true, Ordering::Relaxed);
        let ranges_seen = follower.await.unwrap();
        binary::assert_success(&out);
        binary::assert_checksum_repaired_nothing(&out);
        let report = workload.stop().await;
        assert!(report.errors.is_empty(), "round {round}: workload errors (seed {}): {:#?}", report.seed, report.errors);
        assert!(ranges_seen >= 5, "round {round}: the workload aimed at only {ranges_seen} chunks");
        let deletes = report.committed_by_op.get("delete").copied().unwrap_or(0);
        assert!(deletes > 0, "round {round}: no deletes were aimed at the copy: {report:?}");

        let client = db.client().await;
        table.assert_matches_control(&client, &table.projection().map("n", "n::bigint")).await;
    }
}
