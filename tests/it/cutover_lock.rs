//! Cut-over under lock contention: a session holds a lock that conflicts with the swap.
//! pg-ghost must wait no longer than its lock timeout at a time (a waiting LOCK stalls every
//! later query on the table), name the blocker, retry, and succeed once the lock is gone. A
//! cut-over session terminated by someone else is replaced rather than failing every later
//! attempt.

use crate::binary;
use crate::harness::{Cluster, TestDb};
use crate::oracle::*;
use crate::run_faults::{flag_path, wait_for_state, Running, POLL};
use std::time::{Duration, Instant};
use tokio_postgres::Client;

const ALTER: &str = "ALTER COLUMN n TYPE bigint";

/// A run on `orders` under a two-client workload, postponed until `blocker` holds a lock on
/// the table that ACCESS EXCLUSIVE conflicts with; the cut-over starts once this returns.
struct Contended {
    db: TestDb<'static>,
    table: OracleTable,
    workload: Workload,
    run: Running,
    blocker: Client,
    blocker_pid: i32,
    oid_before: String,
}

impl Contended {
    /// `lock_sql` is what the blocker runs inside its open transaction.
    async fn start(prefix: &str, lock_sql: &str, extra_args: &[&str]) -> Contended {
        let db = Cluster::primary().fresh_db(prefix);
        let table = OracleTable::create(&db, "orders", KeyKind::Identity, 2_000).await;
        let oid_before = db.psql("SELECT 'orders'::regclass::oid");
        let workload = Workload::start(&db, &table, WorkloadOptions::new(2).rate(Some(50))).await;
        workload.wait_for_more_commits(20, Duration::from_secs(30)).await;

        let flag = flag_path(&db, "postpone");
        std::fs::write(&flag, b"").unwrap();
        let flag_arg = flag.to_str().unwrap();
        let mut args = vec!["--table", "orders", "--alter", ALTER, "--execute", "--postpone-cut-over-flag-file", flag_arg];
        args.extend_from_slice(extra_args);
        let mut run = Running::spawn(&db, "run", &args);
        let watcher = db.client().await;
        wait_for_state(&watcher, &mut run, "orders", "postponed", Duration::from_secs(60)).await;

        let blocker = db.client().await;
        blocker.batch_execute(&format!("BEGIN; {lock_sql}")).await.unwrap();
        let blocker_pid: i32 = blocker.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
        std::fs::remove_file(&flag).unwrap();
        Contended { db, table, workload, run, blocker, blocker_pid, oid_before }
    }
}

/// The pid of the cut-over session once its LOCK waits, other than `except`.
async fn waiting_cut_over_pid(db: &TestDb<'_>, run: &mut Running, except: Option<i32>) -> i32 {
    let sql = format!(
        "SELECT a.pid FROM pg_locks l JOIN pg_stat_activity a USING (pid)
          WHERE NOT l.granted AND a.application_name = 'pg-ghost cut-over' AND a.datname = current_database()
            AND a.pid <> {} LIMIT 1",
        except.unwrap_or(0)
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(pid) = db.psql(&sql).parse::<i32>() {
            return pid;
        }
        run.assert_running("a cut-over LOCK to wait").await;
        assert!(Instant::now() < deadline, "no cut-over session (other than {except:?}) waited for its lock within 60 s");
        tokio::time::sleep(POLL).await;
    }
}

/// Stops the workload after some more commits; asserts it saw no error (none of its sessions
/// was terminated) and, given `max_wait`, that no write waited that long.
async fn finish_workload(workload: Workload, max_wait: Option<Duration>) {
    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;
    let report = workload.stop().await;
    assert!(report.errors.is_empty(), "workload errors (seed {}): {:#?}", report.seed, report.errors);
    if let Some(max_wait) = max_wait {
        // A waiting LOCK queues every later write on the table behind it: without a short
        // lock timeout the writers would wait as long as the blocker holds on.
        assert!(report.max_txn_latency < max_wait, "a writer waited {:?}", report.max_txn_latency);
    }
}

fn lines_with<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(needle)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_the_lock_and_names_the_blocker_without_stalling_writers() {
    let Contended { db, table, workload, mut run, blocker, blocker_pid, .. } =
        Contended::start("cutover_lock", "LOCK TABLE orders IN ACCESS SHARE MODE", &["--cut-over-lock-timeout", "300ms"]).await;
    // Let a few attempts time out against the blocker, then release it.
    waiting_cut_over_pid(&db, &mut run, None).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    blocker.batch_execute("COMMIT").await.unwrap();

    let out = run.wait(Duration::from_secs(60)).await;
    binary::assert_success(&out);
    let log = binary::stderr(&out);
    assert!(log.contains("cut-over attempt failed; retrying"), "no retry logged:\n{log}");
    assert!(log.contains(&format!("blocker_pid={blocker_pid}")), "the blocker (pid {blocker_pid}) is not named:\n{log}");

    // Over 2 s of blocking: the writers waited at most one lock timeout at a time.
    finish_workload(workload, Some(Duration::from_millis(1_800))).await;
    let client = db.client().await;
    table.assert_matches_control(&client, &table.projection().map("n", "n::bigint")).await;
    assert_no_slots_or_publications(&client).await;
}

/// A DBA terminates the cut-over's session while its LOCK waits: the next attempt runs on a
/// new session, and once the blocker lets go the cut-over commits with the data intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_over_session_terminated_while_waiting_is_replaced() {
    let Contended { db, table, workload, mut run, blocker, oid_before, .. } =
        Contended::start("cutover_terminated", "LOCK TABLE orders IN ROW EXCLUSIVE MODE", &["--cut-over-lock-timeout", "1s"]).await;

    let first = waiting_cut_over_pid(&db, &mut run, None).await;
    assert_eq!(db.psql(&format!("SELECT pg_terminate_backend({first}, 5000)")), "t");
    let second = waiting_cut_over_pid(&db, &mut run, Some(first)).await;
    blocker.batch_execute("COMMIT").await.unwrap();

    let out = run.wait(Duration::from_secs(60)).await;
    binary::assert_success(&out);
    let log = binary::stderr(&out);
    let reconnected = lines_with(&log, "the cut-over session was lost; reconnected");
    assert_eq!(reconnected.len(), 1, "{log}");
    assert!(reconnected[0].contains(&format!("old_pid={first} new_pid={second}")), "{log}");

    finish_workload(workload, None).await;
    let client = db.client().await;
    assert_ne!(db.psql("SELECT 'orders'::regclass::oid"), oid_before, "no swap");
    table.assert_matches_control(&client, &table.projection().map("n", "n::bigint")).await;
    assert_no_slots_or_publications(&client).await;
}
