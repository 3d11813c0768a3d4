//! Cut-over under lock contention: a session holds a lock that conflicts with the swap.
//! pg-ghost must wait no longer than its lock timeout at a time (a waiting LOCK stalls every
//! later query on the table), name the blocker, retry, and succeed once the lock is gone.

use crate::binary;
use crate::harness::Cluster;
use crate::oracle::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_the_lock_and_names_the_blocker_without_stalling_writers() {
    let db = Cluster::primary().fresh_db("cutover_lock");
    let table = OracleTable::create(&db, "orders", KeyKind::Identity, 2_000).await;
    let workload = Workload::start(&db, &table, WorkloadOptions::new(2).rate(Some(50))).await;
    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;

    // The blocker: an open transaction holding a lock on the table that ACCESS EXCLUSIVE
    // conflicts with, but that lets the workload's row writes through.
    let blocker = db.client().await;
    blocker.batch_execute("BEGIN; LOCK TABLE orders IN ACCESS SHARE MODE").await.unwrap();
    let blocker_pid: i32 = blocker.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);

    let flag = tempfile_path("postpone");
    std::fs::write(&flag, b"").unwrap();
    let child = binary::command(
        &db,
        "run",
        &["--table", "orders", "--alter", "ALTER COLUMN n TYPE bigint", "--execute", "--cut-over-lock-timeout", "300ms", "--postpone-cut-over-flag-file", flag.to_str().unwrap()],
    )
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let watcher = db.client().await;
    wait_until(|| async { binary::changelog_value(&watcher, "orders", "state").await.as_deref() == Some("postponed") }).await;
    std::fs::remove_file(&flag).unwrap();
    // Let a few attempts time out against the blocker, then release it.
    wait_until(|| async {
        db.psql(&format!(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE NOT l.granted AND a.application_name = 'pg-ghost cut-over'"
        )) != "0"
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    blocker.batch_execute("COMMIT").await.unwrap();

    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()).await.expect("pg-ghost did not finish").unwrap();
    binary::assert_success(&out);
    let log = binary::stderr(&out);
    assert!(log.contains("cut-over attempt failed; retrying"), "no retry logged:\n{log}");
    assert!(log.contains(&format!("blocker_pid={blocker_pid}")), "the blocker (pid {blocker_pid}) is not named:\n{log}");

    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;
    let report = workload.stop().await;
    assert!(report.errors.is_empty(), "workload errors (seed {}): {:#?}", report.seed, report.errors);
    // Without a short lock timeout the writers would have queued behind the waiting LOCK for
    // as long as the blocker held on (over 2 s).
    assert!(report.max_txn_latency < Duration::from_millis(1_800), "a writer waited {:?}", report.max_txn_latency);
    let client = db.client().await;
    table.assert_matches_control(&client, &table.projection().map("n", "n::bigint")).await;
    assert_no_slots_or_publications(&client).await;
}

fn tempfile_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("pg-ghost-test-{}-{name}-{}", std::process::id(), rand::random::<u32>()))
}

async fn wait_until<F, Fut>(mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "condition not reached within 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
