//! The cut-over against autovacuum. A worker vacuuming the original holds SHARE UPDATE
//! EXCLUSIVE on it; PostgreSQL cancels it only after the waiting session's `deadlock_timeout`,
//! which is pg-ghost's default lock timeout, so without care every attempt gives up just as
//! the way would clear. Here the original's autovacuum is made slow (a cost limit of 1, a
//! delay of 100 ms) on a cluster that looks for work every second, so a worker holds the
//! table when the cut-over starts, under the control-table workload.
//!
//! The ghost's own autovacuum is off while pg-ghost writes it (pg-ghost vacuums it itself
//! before the swap), and the new table ends with the original's storage parameters.

use crate::binary;
use crate::harness::{Cluster, TestDb};
use crate::oracle::*;
use crate::run_faults::{flag_path, wait_for_state, Running, POLL};
use std::io::Write;
use std::time::{Duration, Instant};

const ALTER: &str = "ALTER COLUMN n TYPE bigint";
/// The original's storage parameters: a slow autovacuum that starts on any dead row, and a
/// TOAST parameter, which the new table must carry too.
const SLOW_AUTOVACUUM: &str = "autovacuum_vacuum_cost_delay = 100, autovacuum_vacuum_cost_limit = 1,
     autovacuum_vacuum_threshold = 0, autovacuum_vacuum_scale_factor = 0, toast.autovacuum_vacuum_cost_delay = 50";

fn autovacuum_cluster() -> Cluster {
    let cluster = Cluster::start("autovacuum");
    let mut conf = std::fs::OpenOptions::new().append(true).open(cluster.dir.join("postgresql.conf")).unwrap();
    writeln!(conf, "autovacuum_naptime = 1s").unwrap();
    cluster.restart();
    cluster
}

/// `reloptions` of `table` and of its TOAST table.
fn storage_parameters(db: &TestDb<'_>, table: &str) -> String {
    db.psql(&format!(
        "SELECT coalesce(c.reloptions::text, '') || ' / ' || coalesce(t.reloptions::text, '')
           FROM pg_class c LEFT JOIN pg_class t ON t.oid = c.reltoastrelid WHERE c.oid = {}::regclass",
        literal(&ident(table))
    ))
}

/// Waits until an autovacuum worker holds a lock on `table`; returns its pid.
async fn autovacuum_on(db: &TestDb<'_>, run: &mut Running, table: &str) -> i32 {
    let sql = format!(
        "SELECT a.pid FROM pg_locks l JOIN pg_stat_activity a USING (pid)
          WHERE a.backend_type = 'autovacuum worker' AND l.locktype = 'relation' AND l.granted
            AND l.relation = {}::regclass LIMIT 1",
        literal(&ident(table))
    );
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        if let Ok(pid) = db.psql(&sql).parse::<i32>() {
            return pid;
        }
        run.assert_running("an autovacuum worker on the original").await;
        assert!(Instant::now() < deadline, "no autovacuum worker took {table} within 45 s");
        tokio::time::sleep(POLL * 10).await;
    }
}

/// Who runs pg-ghost.
enum As {
    /// The cluster's superuser: it cancels the worker itself.
    Superuser,
    /// A role that may neither cancel the worker nor set `deadlock_timeout`, but reads other
    /// sessions' activity (`pg_read_all_stats`): it waits past `deadlock_timeout`.
    Plain,
    /// A role granted `SET ON PARAMETER deadlock_timeout`: PostgreSQL cancels the worker early
    /// in the LOCK's wait.
    MaySetDeadlockTimeout,
}

const OWNER: &str = "autovacuum_owner";
const ROLE_PASSWORD: &str = "autovacuum-pw";

/// A run on `orders` under the workload whose cut-over starts while a slow autovacuum worker
/// holds the original. Returns pg-ghost's log and the worker's pid, once the data and the
/// storage parameters have been checked.
async fn cut_over_against_autovacuum(who: As) -> (String, i32) {
    let cluster = autovacuum_cluster();
    let db = cluster.fresh_db("autovacuum");
    let table = OracleTable::create(&db, "orders", KeyKind::Identity, 10_000).await;
    db.psql(&format!("ALTER TABLE orders SET ({SLOW_AUTOVACUUM})"));
    let parameters_before = storage_parameters(&db, "orders");
    let conn = match who {
        As::Superuser => db.conninfo(),
        As::Plain | As::MaySetDeadlockTimeout => {
            db.psql(&format!(
                "CREATE ROLE {OWNER} LOGIN REPLICATION PASSWORD '{ROLE_PASSWORD}' IN ROLE pg_read_all_stats;
                 ALTER TABLE orders OWNER TO {OWNER};
                 GRANT CREATE ON SCHEMA public TO {OWNER}; GRANT CREATE ON DATABASE {} TO {OWNER};",
                ident(&db.name)
            ));
            if matches!(who, As::MaySetDeadlockTimeout) {
                db.psql(&format!("GRANT SET ON PARAMETER deadlock_timeout TO {OWNER}"));
            }
            db.cluster.conninfo_as(OWNER, ROLE_PASSWORD, &db.name)
        }
    };
    let workload = Workload::start(&db, &table, WorkloadOptions::new(2).rate(Some(50))).await;
    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;

    let flag = flag_path(&db, "postpone");
    std::fs::write(&flag, b"").unwrap();
    let args = ["--table", "orders", "--alter", ALTER, "--execute", "--postpone-cut-over-flag-file", flag.to_str().unwrap()];
    let mut run = Running::spawn_command(binary::command_with_conn(&conn, "run", &args));
    let watcher = db.client().await;
    wait_for_state(&watcher, &mut run, "orders", "postponed", Duration::from_secs(60)).await;

    // The ghost, complete: autovacuum off on it and its TOAST table, vacuumed by pg-ghost.
    let ghost = storage_parameters(&db, "_orders_gho");
    assert!(ghost.contains("autovacuum_enabled=false} / {") && ghost.ends_with("autovacuum_enabled=false}"), "{ghost}");
    let vacuums = db.psql("SELECT vacuum_count || ' ' || autovacuum_count FROM pg_stat_user_tables WHERE relname = '_orders_gho'");
    assert_eq!(vacuums, "1 0", "the ghost is vacuumed once by pg-ghost and never by autovacuum");

    let worker = autovacuum_on(&db, &mut run, "orders").await;
    std::fs::remove_file(&flag).unwrap();
    let out = run.wait(Duration::from_secs(60)).await;
    binary::assert_success(&out);
    let log = binary::stderr(&out);
    assert!(!log.contains("cut-over attempt failed"), "an attempt failed:\n{log}");

    assert_eq!(storage_parameters(&db, "orders"), parameters_before, "the new table has the original's storage parameters");
    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;
    let report = workload.stop().await;
    assert!(report.errors.is_empty(), "workload errors (seed {}): {:#?}", report.seed, report.errors);
    let client = db.client().await;
    table.assert_matches_control(&client, &table.projection().map("n", "n::bigint")).await;
    assert_no_slots_or_publications(&client).await;
    (log, worker)
}

fn logged(log: &str, needle: &str, worker: i32) -> bool {
    log.lines().any(|l| l.contains(needle) && l.contains(&format!("autovacuum_pid={worker}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superuser_cancels_the_worker_and_no_attempt_fails() {
    let (log, worker) = cut_over_against_autovacuum(As::Superuser).await;
    assert!(logged(&log, "cancelled an autovacuum worker", worker), "the worker (pid {worker}) was not cancelled:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_may_not_cancel_waits_past_deadlock_timeout_and_no_attempt_fails() {
    let (log, worker) = cut_over_against_autovacuum(As::Plain).await;
    assert!(log.contains("the role may not cancel autovacuum workers"), "{log}");
    assert!(logged(&log, "waits for that table past deadlock_timeout", worker), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_may_set_deadlock_timeout_lets_postgres_cancel_early_and_no_attempt_fails() {
    let (log, worker) = cut_over_against_autovacuum(As::MaySetDeadlockTimeout).await;
    assert!(logged(&log, "deadlock_timeout is lowered", worker), "{log}");
}

/// The direct way's steps meet autovacuum as the cut-over does: a worker on the table is
/// cancelled (superuser here) and no step fails for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_step_gets_past_an_autovacuum_worker() {
    let cluster = autovacuum_cluster();
    let db = cluster.fresh_db("autovacuum_direct");
    let table = OracleTable::create(&db, "orders", KeyKind::Identity, 10_000).await;
    db.psql(&format!("ALTER TABLE orders SET ({SLOW_AUTOVACUUM})"));
    let workload = Workload::start(&db, &table, WorkloadOptions::new(2).rate(Some(50))).await;
    let holding = "SELECT a.pid FROM pg_locks l JOIN pg_stat_activity a USING (pid)
                    WHERE a.backend_type = 'autovacuum worker' AND l.locktype = 'relation' AND l.granted
                      AND l.relation = 'orders'::regclass LIMIT 1";
    let deadline = Instant::now() + Duration::from_secs(45);
    let worker = loop {
        if let Ok(pid) = db.psql(holding).parse::<i32>() {
            break pid;
        }
        assert!(Instant::now() < deadline, "no autovacuum worker took orders within 45 s");
        tokio::time::sleep(POLL * 10).await;
    };
    let alter = "ADD COLUMN note text";
    let out = binary::run(&db, &["--table", "orders", "--alter", alter, "--execute", "--strategy", "direct", "--skip-data-checks"]).await;
    binary::assert_success(&out);
    let log = binary::stderr(&out);
    assert!(logged(&log, "cancelled an autovacuum worker", worker), "the worker (pid {worker}) was not cancelled:\n{log}");
    assert!(!log.contains("direct step failed"), "a step failed:\n{log}");
    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;
    let report = workload.stop().await;
    assert!(report.errors.is_empty(), "workload errors (seed {}): {:#?}", report.seed, report.errors);
    table.assert_matches_control(&db.client().await, &table.projection().add("note", "NULL::text")).await;
}

/// An anti-wraparound worker (PostgreSQL never cancels one) is never cancelled by pg-ghost
/// either, even as a superuser: the cut-over's attempts fail, the run ends naming the worker
/// with advice, the original is untouched, and the worker is still vacuuming. The table's own
/// `autovacuum_freeze_max_age` is lowered and transaction IDs are used up while the cut-over
/// is postponed (before that, creating the publication would itself wait for the worker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anti_wraparound_worker_is_never_cancelled() {
    let cluster = autovacuum_cluster();
    let db = cluster.fresh_db("wraparound");
    // About 1,700 pages at a tenth of a second each: the worker outlasts the test. No other
    // autovacuum may ever run on it (one would leave the pages all-visible, and the
    // anti-wraparound pass would skip them): autovacuum is off on it from the start, which
    // an anti-wraparound vacuum ignores.
    db.psql(
        "CREATE TABLE t (id bigint PRIMARY KEY, n int NOT NULL, pad text)
           WITH (autovacuum_enabled = false, autovacuum_vacuum_cost_delay = 100, autovacuum_vacuum_cost_limit = 1,
                 autovacuum_freeze_max_age = 100000);
         INSERT INTO t SELECT g, g % 1000, md5(g::text) FROM generate_series(1, 200000) g;
         ANALYZE t;",
    );
    let oid_before = db.psql("SELECT 't'::regclass::oid");
    let flag = flag_path(&db, "postpone");
    std::fs::write(&flag, b"").unwrap();
    let args = [
        "--table", "t", "--alter", ALTER, "--execute", "--postpone-cut-over-flag-file", flag.to_str().unwrap(),
        "--cut-over-lock-timeout", "300ms", "--cut-over-retries", "3",
    ];
    let mut run = Running::spawn(&db, "run", &args);
    let watcher = db.client().await;
    wait_for_state(&watcher, &mut run, "t", "postponed", Duration::from_secs(60)).await;

    // Each subtransaction that writes takes a transaction ID of its own.
    db.psql(
        "CREATE TABLE burn (x int);
         DO $$ BEGIN FOR i IN 1..130000 LOOP BEGIN INSERT INTO burn VALUES (i); EXCEPTION WHEN others THEN NULL; END; END LOOP; END $$;",
    );
    let worker_sql = "SELECT a.pid FROM pg_locks l JOIN pg_stat_activity a USING (pid)
                       WHERE a.backend_type = 'autovacuum worker' AND a.query LIKE '%to prevent wraparound%'
                         AND l.locktype = 'relation' AND l.granted AND l.relation = 't'::regclass LIMIT 1";
    let deadline = Instant::now() + Duration::from_secs(120);
    let worker: i32 = loop {
        if let Ok(pid) = db.psql(worker_sql).parse::<i32>() {
            break pid;
        }
        run.assert_running("an anti-wraparound worker on the original").await;
        assert!(
            Instant::now() < deadline,
            "no anti-wraparound worker took t within 120 s; age of t: {}; workers: {}",
            db.psql("SELECT age(relfrozenxid) FROM pg_class WHERE relname = 't'"),
            db.psql("SELECT string_agg(query, '; ') FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'")
        );
        tokio::time::sleep(POLL * 10).await;
    };
    std::fs::remove_file(&flag).unwrap();
    let out = run.wait(Duration::from_secs(60)).await;
    binary::assert_failure(&out, 1, "an anti-wraparound autovacuum of \"public\".\"t\" holds a lock the cut-over needs");
    let log = binary::stderr(&out);
    assert!(!logged(&log, "cancelled an autovacuum worker", worker), "the worker was cancelled:\n{log}");
    assert_eq!(db.psql(worker_sql), worker.to_string(), "the anti-wraparound worker is still at work");
    assert_eq!(db.psql("SELECT 't'::regclass::oid"), oid_before, "the original was swapped out");
    let ghost_workers = db.psql("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker' AND query LIKE '%\\_t\\_gho%'");
    assert_eq!(ghost_workers, "0", "the ghost, held to the server's freeze age while fed, needed no anti-wraparound vacuum");
}
