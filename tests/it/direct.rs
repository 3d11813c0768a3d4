//! `pg-ghost run --strategy direct`: a change that rewrites nothing made on the table itself,
//! under the control-table workload; the result is what a plain ALTER TABLE leaves, for the
//! whole database and the data. A blocker is waited for, named and retried without
//! stalling writers; a rewriting change is refused; a dry run changes nothing.

use crate::binary;
use crate::harness::Cluster;
use crate::oracle::*;
use crate::run_faults::{assert_unchanged_rows, Running};
use crate::run_refusals::assert_exit;
use std::time::Duration;

const ALTER: &str = "ADD COLUMN flag boolean NOT NULL DEFAULT true, ADD CONSTRAINT amount_bounded CHECK (amount < 1000000), \
                     ADD CONSTRAINT orders_id_n_key UNIQUE (id, n), DROP COLUMN spare";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_without_a_rewrite_is_made_directly_under_load() {
    let db = Cluster::primary().fresh_db("direct_load");
    let table = OracleTable::create(&db, "orders", KeyKind::Identity, 3_000).await;
    let before = WholeSchema::take(&db).await;
    let oid = db.psql("SELECT 'orders'::regclass::oid");
    let workload = Workload::start(&db, &table, WorkloadOptions::new(3).rate(Some(80))).await;
    workload.wait_for_more_commits(30, Duration::from_secs(30)).await;

    let out = binary::run(&db, &["--table", "orders", "--alter", ALTER, "--execute", "--strategy", "direct"]).await;
    binary::assert_success(&out);
    let log = binary::stderr(&out);
    assert!(log.contains("changed directly"), "{log}");
    assert!(log.contains("VALIDATE CONSTRAINT") && log.contains("CONCURRENTLY"), "{log}");

    workload.wait_for_more_commits(30, Duration::from_secs(30)).await;
    let report = workload.stop().await;
    assert!(report.errors.is_empty(), "workload errors (seed {}): {:#?}", report.seed, report.errors);
    let client = db.client().await;
    assert_eq!(db.psql("SELECT 'orders'::regclass::oid"), oid, "the table itself was changed, not swapped");
    table.assert_matches_control(&client, &table.projection().add("flag", "true").drop("spare")).await;
    let twin = before.twin_after_plain_alter(&db, "public.orders", ALTER).await;
    assert_whole_schema_equal(&db, &twin, ALTER).await;
    assert_no_slots_or_publications(&client).await;
    assert_eq!(db.psql("SELECT count(*) FROM pg_index WHERE NOT indisvalid"), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocker_is_named_and_waited_for_without_stalling_writers() {
    let db = Cluster::primary().fresh_db("direct_blocked");
    let table = OracleTable::create(&db, "orders", KeyKind::Identity, 1_000).await;
    let workload = Workload::start(&db, &table, WorkloadOptions::new(2).rate(Some(50))).await;
    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;
    let blocker = db.client().await;
    blocker.batch_execute("BEGIN; LOCK TABLE orders IN ACCESS SHARE MODE").await.unwrap();

    let alter = "ADD COLUMN note text";
    let mut run = Running::spawn(&db, "run", &["--table", "orders", "--alter", alter, "--execute", "--strategy", "direct", "--cut-over-lock-timeout", "300ms"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    run.assert_running("the blocker to go").await;
    blocker.batch_execute("COMMIT").await.unwrap();
    let out = run.wait(Duration::from_secs(60)).await;
    binary::assert_success(&out);
    let log = binary::stderr(&out);
    assert!(log.contains("direct step is waiting for this session"), "{log}");
    assert!(log.contains("direct step failed; retrying"), "{log}");

    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;
    let report = workload.stop().await;
    assert!(report.errors.is_empty(), "workload errors (seed {}): {:#?}", report.seed, report.errors);
    // Writers queue behind a waiting ALTER; the lock timeout bounds how long.
    assert!(report.max_txn_latency < Duration::from_millis(1_500), "a writer waited {:?}", report.max_txn_latency);
    table.assert_matches_control(&db.client().await, &table.projection().add("note", "NULL::text")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewrite_is_refused_and_a_dry_run_changes_nothing() {
    let db = Cluster::primary().fresh_db("direct_refused");
    binary::narrow_table(&db, "t", 500);
    let client = db.client().await;
    let before = CatalogSnapshot::take(&client).await;

    let out = binary::run(&db, &["--table", "t", "--alter", "ALTER COLUMN n TYPE bigint", "--execute", "--strategy", "direct"]).await;
    assert_exit(&out, 3, &["--strategy direct", "clause 1 rewrites the table"]);
    assert_catalog_unchanged(&before, &CatalogSnapshot::take(&client).await);

    let out = binary::run(&db, &["--table", "t", "--alter", "ADD CHECK (n >= 0), ADD COLUMN x int DEFAULT 1", "--strategy", "direct"]).await;
    binary::assert_success(&out);
    let log = binary::stderr(&out);
    assert!(log.contains("locks were taken and released"), "{log}");
    assert_catalog_unchanged(&before, &CatalogSnapshot::take(&client).await);
    assert_unchanged_rows(&client, "t", &["id", "n", "pad"]).await;

    let out = binary::run(&db, &["--table", "t", "--alter", "ADD COLUMN x int", "--strategy", "direct", "--resume"]).await;
    assert_exit(&out, 2, &["--strategy direct and --resume"]);
}

/// Each kind of change that rewrites nothing, made directly under the workload, each against
/// a plain ALTER on a twin: schema and data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_without_a_rewrite_is_made_directly() {
    type Project = fn(Projection) -> Projection;
    let cases: &[(&str, Project)] = &[
        ("ADD COLUMN note text DEFAULT 'none'", |p| p.add("note", "'none'::text")),
        ("DROP COLUMN spare", |p| p.drop("spare")),
        ("RENAME COLUMN spare TO reserve", |p| p.rename("spare", "reserve")),
        ("ALTER COLUMN amount SET DEFAULT 0, ALTER COLUMN n SET STATISTICS 500", |p| p),
        ("ALTER COLUMN id SET NOT NULL, ADD CHECK (n > -1000000)", |p| p),
        ("ADD CONSTRAINT orders_id_label_key UNIQUE (id, label)", |p| p),
        ("SET (fillfactor = 70), ALTER COLUMN label SET STORAGE EXTERNAL", |p| p),
        ("ADD CONSTRAINT self_ref FOREIGN KEY (id) REFERENCES orders (id)", |p| p),
        ("ADD CONSTRAINT n_bounded CHECK (n < 1000000) NOT VALID, ALTER COLUMN label DROP DEFAULT", |p| p),
    ];
    for (alter, project) in cases {
        let db = Cluster::primary().fresh_db("direct_kind");
        let table = OracleTable::create(&db, "orders", KeyKind::Identity, 1_500).await;
        let before = WholeSchema::take(&db).await;
        let workload = Workload::start(&db, &table, WorkloadOptions::new(2).rate(Some(60))).await;
        workload.wait_for_more_commits(15, Duration::from_secs(30)).await;
        let out = binary::run(&db, &["--table", "orders", "--alter", alter, "--execute", "--strategy", "auto"]).await;
        binary::assert_success(&out);
        assert!(binary::stderr(&out).contains("changed directly"), "{alter}: {}", binary::stderr(&out));
        workload.wait_for_more_commits(15, Duration::from_secs(30)).await;
        let report = workload.stop().await;
        assert!(report.errors.is_empty(), "{alter}: workload errors (seed {}): {:#?}", report.seed, report.errors);
        let client = db.client().await;
        table.assert_matches_control(&client, &project(table.projection())).await;
        let twin = before.twin_after_plain_alter(&db, "public.orders", alter).await;
        assert_whole_schema_equal(&db, &twin, alter).await;
    }
}

/// With --cut-over-kill-blockers-after, a session that keeps a step from its lock is
/// terminated, as at the cut-over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_blockers_after_terminates_what_holds_a_step_back() {
    let db = Cluster::primary().fresh_db("direct_kill");
    binary::narrow_table(&db, "t", 500);
    let blocker = db.client().await;
    blocker.batch_execute("BEGIN; LOCK TABLE t IN ACCESS SHARE MODE").await.unwrap();
    let pid: i32 = blocker.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    let args = ["--table", "t", "--alter", "ADD COLUMN x int", "--execute", "--strategy", "direct", "--cut-over-lock-timeout", "300ms", "--cut-over-kill-blockers-after", "1s"];
    let out = tokio::time::timeout(Duration::from_secs(60), binary::run(&db, &args)).await.expect("pg-ghost did not finish");
    binary::assert_success(&out);
    let log = binary::stderr(&out);
    assert!(log.contains("terminated a session that blocked the cut-over lock") && log.contains(&format!("blocker_pid={pid}")), "{log}");
    assert!(blocker.batch_execute("SELECT 1").await.is_err(), "the blocker is still alive");
    assert_eq!(db.psql("SELECT count(*) FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'x'"), "1");
}

/// A validation reads the whole table: it waits while the run is throttled, as the copy does
/// (the data checks, which would wait first, are skipped here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validation_waits_while_throttled() {
    let db = Cluster::primary().fresh_db("direct_throttle");
    binary::narrow_table(&db, "t", 500);
    let flag = crate::run_faults::flag_path(&db, "throttle");
    std::fs::write(&flag, b"").unwrap();
    let args = ["--table", "t", "--alter", "ADD CONSTRAINT n_positive CHECK (n >= 0)", "--execute", "--strategy", "direct", "--skip-data-checks", "--throttle-flag-file", flag.to_str().unwrap()];
    let mut run = Running::spawn(&db, "run", &args);
    let validated = "SELECT convalidated FROM pg_constraint WHERE conrelid = 't'::regclass AND conname = 'n_positive'";
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while db.psql(validated) != "f" {
        run.assert_running("the constraint to be added NOT VALID").await;
        assert!(std::time::Instant::now() < deadline, "the NOT VALID step did not run");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    run.assert_running("the flag file to go").await;
    assert_eq!(db.psql(validated), "f", "validated while throttled");
    std::fs::remove_file(&flag).unwrap();
    binary::assert_success(&run.wait(Duration::from_secs(60)).await);
    assert_eq!(db.psql(validated), "t");
}

/// The postpone flag holds the direct way as it holds the swap: nothing changes until it goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postpone_flag_holds_a_direct_change() {
    let db = Cluster::primary().fresh_db("direct_postpone");
    binary::narrow_table(&db, "t", 500);
    let flag = crate::run_faults::flag_path(&db, "postpone");
    std::fs::write(&flag, b"").unwrap();
    let args = ["--table", "t", "--alter", "ADD COLUMN x int", "--execute", "--postpone-cut-over-flag-file", flag.to_str().unwrap()];
    let mut run = Running::spawn(&db, "run", &["--strategy", "auto"].iter().chain(args.iter()).copied().collect::<Vec<_>>());
    tokio::time::sleep(Duration::from_secs(3)).await;
    run.assert_running("the postpone flag to go").await;
    let has_x = "SELECT count(*) FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'x'";
    assert_eq!(db.psql(has_x), "0", "the change was made while postponed");
    std::fs::remove_file(&flag).unwrap();
    let out = run.wait(Duration::from_secs(60)).await;
    binary::assert_success(&out);
    assert!(binary::stderr(&out).contains("the change is postponed while the flag file exists"), "{}", binary::stderr(&out));
    assert_eq!(db.psql(has_x), "1");
}

/// A validation that the rows fail (data checks skipped) leaves nothing behind: the
/// constraint its clause added `NOT VALID` is dropped again. An abort (panic flag) while a
/// long validation reads the table cancels it, and leaves nothing either (without the cancel
/// the validation would finish and the constraint stay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_or_aborted_validation_leaves_nothing_behind() {
    let db = Cluster::primary().fresh_db("direct_undo");
    binary::narrow_table(&db, "t", 500);
    db.psql("CREATE FUNCTION slow_true(int) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.05); RETURN true; END $$");
    let client = db.client().await;
    let before = CatalogSnapshot::take(&client).await;

    let args = ["--table", "t", "--alter", "ADD CONSTRAINT n_negative CHECK (n < 0)", "--execute", "--strategy", "direct", "--skip-data-checks"];
    let out = binary::run(&db, &args).await;
    assert!(!out.status.success(), "{}", binary::stderr(&out));
    let why = crate::run_refusals::reason(&out);
    assert!(why.contains("n_negative") && why.contains("violated"), "{why}");
    assert!(binary::stderr(&out).contains("the failed step's clause was undone"), "{}", binary::stderr(&out));
    assert_catalog_unchanged(&before, &CatalogSnapshot::take(&client).await);

    let flag = crate::run_faults::flag_path(&db, "panic");
    let args = [
        "--table", "t", "--alter", "ADD CONSTRAINT n_slow CHECK (slow_true(n))", "--execute", "--strategy", "direct", "--skip-data-checks",
        "--panic-flag-file", flag.to_str().unwrap(),
    ];
    let mut run = Running::spawn(&db, "run", &args);
    let validated = "SELECT convalidated FROM pg_constraint WHERE conrelid = 't'::regclass AND conname = 'n_slow'";
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while db.psql(validated) != "f" {
        run.assert_running("the constraint to be added NOT VALID").await;
        assert!(std::time::Instant::now() < deadline, "the NOT VALID step did not run");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The validation reads 500 rows at 50 ms each: it is under way for 25 s.
    tokio::time::sleep(Duration::from_secs(1)).await;
    std::fs::write(&flag, b"").unwrap();
    let out = run.wait(Duration::from_secs(60)).await;
    let _ = std::fs::remove_file(&flag);
    assert_exit(&out, 4, &[]);
    assert!(binary::stderr(&out).contains("cancelling the step's statement"), "{}", binary::stderr(&out));
    assert_catalog_unchanged(&before, &CatalogSnapshot::take(&client).await);
    assert_unchanged_rows(&client, "t", &["id", "n", "pad"]).await;
}

/// A unique index the rows break (data checks skipped), built CONCURRENTLY, fails and leaves
/// no invalid index behind: nothing changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_index_build_leaves_no_invalid_index() {
    let db = Cluster::primary().fresh_db("direct_index_fail");
    binary::narrow_table(&db, "t", 500);
    db.psql("UPDATE t SET n = 7 WHERE id = 120; UPDATE t_before SET n = 7 WHERE id = 120;");
    let client = db.client().await;
    let before = CatalogSnapshot::take(&client).await;
    let out = binary::run(&db, &["--table", "t", "--alter", "ADD CONSTRAINT t_n_key UNIQUE (n)", "--execute", "--strategy", "direct", "--skip-data-checks"]).await;
    assert!(!out.status.success(), "{}", binary::stderr(&out));
    let why = crate::run_refusals::reason(&out);
    assert!(why.contains("t_n_key") && why.contains("CONCURRENTLY"), "{why}");
    assert_eq!(db.psql("SELECT count(*) FROM pg_index WHERE NOT indisvalid"), "0");
    assert_catalog_unchanged(&before, &CatalogSnapshot::take(&client).await);
    assert_unchanged_rows(&client, "t", &["id", "n", "pad"]).await;
}

/// The answer to a locked step's COMMIT is lost with its connection, the step having gone
/// through: pg-ghost asks how its transaction ended instead of running the step again (which
/// would fail on the column it made, and undo the step before); the change completes, the
/// whole schema as a plain ALTER leaves it.
#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_whose_commit_answer_is_lost_is_not_run_again() {
    let db = Cluster::primary().fresh_db("direct_lost_commit");
    let _table = OracleTable::create(&db, "orders", KeyKind::Identity, 500).await;
    let before = WholeSchema::take(&db).await;
    let alter = "ADD COLUMN flag boolean NOT NULL DEFAULT true";
    let mut cmd = binary::command(&db, "run", &["--table", "orders", "--alter", alter, "--execute", "--strategy", "direct"]);
    cmd.env("PG_GHOST_FAULT", "direct-commit");
    let out = Running::spawn_command(cmd).wait(Duration::from_secs(60)).await;
    let log = binary::stderr(&out);
    assert!(log.contains("fault injection: the connection is taken as lost here"), "the fault was not reached:\n{log}");
    binary::assert_success(&out);
    assert!(log.contains("but the COMMIT went through"), "{log}");
    let twin = before.twin_after_plain_alter(&db, "public.orders", alter).await;
    assert_whole_schema_equal(&db, &twin, alter).await;
}

// ---- names, and sessions lost mid-step ------------------------------------------------------

/// A step would create a constraint or an index under a name the DBA gave that is taken (by
/// an index of another table, by a constraint of the table), or under one PostgreSQL cuts to
/// 63 bytes (on the table, or on the trial's clone only): refused before anything changes,
/// naming the name and what holds it. (An index build that failed on a taken name used to
/// drop whatever index had it; a name cut on the clone only was made shorter than a plain
/// ALTER makes it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_a_step_would_take_is_refused_before_anything_changes() {
    let db = Cluster::primary().fresh_db("direct_names");
    binary::narrow_table(&db, "t", 200);
    let long = "t".repeat(60);
    binary::narrow_table(&db, &long, 20);
    db.psql(
        "CREATE TABLE u (x int); CREATE INDEX foo ON u (x);
         CREATE TABLE p (id int PRIMARY KEY); INSERT INTO p SELECT generate_series(0, 999);
         ALTER TABLE t ADD CONSTRAINT t_to_p FOREIGN KEY (n) REFERENCES p (id)",
    );
    let column = "c".repeat(52);
    db.psql(&format!("CREATE TABLE tc (id int PRIMARY KEY, {column} int); INSERT INTO tc VALUES (1, 1)"));
    let check_long_column = format!("ADD CHECK ({column} > 0)");
    let client = db.client().await;
    let before = CatalogSnapshot::take(&client).await;
    let cases = [
        ("t", "ADD CONSTRAINT foo UNIQUE (n)", "\"foo\", which index foo already has"),
        ("t", "ADD CONSTRAINT t_to_p FOREIGN KEY (id) REFERENCES p (id)", "\"t_to_p\", which constraint t_to_p of t already has"),
        (long.as_str(), "ADD UNIQUE (n)", "PostgreSQL cuts to 63 bytes"),
        // Cut on the trial's clone (its name is longer than `tc`), not on the table.
        ("tc", &check_long_column, "PostgreSQL cuts to 63 bytes"),
    ];
    for (table, alter, needle) in cases {
        let out = binary::run(&db, &["--table", table, "--alter", alter, "--execute", "--strategy", "direct", "--skip-data-checks"]).await;
        assert_exit(&out, 3, &[needle, "name it in the ALTER"]);
    }
    assert_catalog_unchanged(&before, &CatalogSnapshot::take(&client).await);
    assert_unchanged_rows(&client, "t", &["id", "n", "pad"]).await;
}

/// Constraints the ALTER adds without a name take the names PostgreSQL would give them on the
/// table, which skip names in use in the schema: a UNIQUE on a column that has an index named
/// `t_pad_key` is `t_pad_key1`, a second CHECK on `n` `t_n_check1`, a UNIQUE whose name an
/// index of another table has `..._key1`. The whole schema ends as a plain ALTER leaves it.
/// (The names came from a trial on a clone, which sees none of them: the build and the
/// validation then hit the objects that had them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_in_use_are_numbered_as_under_a_plain_alter() {
    let db = Cluster::primary().fresh_db("direct_numbered");
    binary::narrow_table(&db, "t", 200);
    db.psql("CREATE INDEX t_pad_key ON t (pad); ALTER TABLE t ADD CHECK (n < 5000); CREATE TABLE u (x int); CREATE INDEX t_id_n_key ON u (x)");
    let before = WholeSchema::take(&db).await;
    let alter = "ADD UNIQUE (pad), ADD CHECK (n < 2000), ADD UNIQUE (id, n)";
    let out = binary::run(&db, &["--table", "t", "--alter", alter, "--execute", "--strategy", "direct"]).await;
    binary::assert_success(&out);
    assert_eq!(
        db.psql("SELECT string_agg(conname, ',' ORDER BY conname) FROM pg_constraint WHERE conrelid = 't'::regclass AND contype IN ('u', 'c')"),
        "t_id_n_key1,t_n_check,t_n_check1,t_pad_key1"
    );
    let twin = before.twin_after_plain_alter(&db, "public.t", alter).await;
    assert_whole_schema_equal(&db, &twin, alter).await;
}

/// `ADD UNIQUE` on `t (n)` under `--cut-over-lock-timeout 60s`, its index build held by a
/// transaction of the test's (a `CREATE INDEX CONCURRENTLY` waits for the transactions that
/// may write the table); returns the run, the blocking session and the build's backend pid
/// and client port, once the build waits with its invalid index in the catalog.
async fn index_build_held_back(db: &crate::harness::TestDb<'_>) -> (Running, tokio_postgres::Client, i32, i32) {
    binary::narrow_table(db, "t", 500);
    let blocker = db.client().await;
    blocker.batch_execute("BEGIN; UPDATE t SET pad = pad WHERE id = 1").await.unwrap();
    let args = ["--table", "t", "--alter", "ADD UNIQUE (n)", "--execute", "--strategy", "direct", "--skip-data-checks", "--cut-over-lock-timeout", "60s"];
    let mut run = Running::spawn(db, "run", &args);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let found = db.psql(
            "SELECT pid || ' ' || client_port FROM pg_stat_activity
              WHERE datname = current_database() AND application_name = 'pg-ghost cut-over' AND state = 'active'
                AND query LIKE 'CREATE UNIQUE INDEX CONCURRENTLY%' AND to_regclass('t_n_key') IS NOT NULL",
        );
        if let Some((pid, port)) = found.split_once(' ') {
            return (run, blocker, pid.parse().unwrap(), port.parse().unwrap());
        }
        run.assert_running("the index build").await;
        assert!(std::time::Instant::now() < deadline, "the index build never waited for the blocker");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The run succeeded, and `t` has its unique constraint, valid, and no invalid index.
fn assert_unique_made(db: &crate::harness::TestDb<'_>, out: &std::process::Output) {
    binary::assert_success(out);
    assert_eq!(db.psql("SELECT conname || ' ' || convalidated FROM pg_constraint WHERE conrelid = 't'::regclass AND contype = 'u'"), "t_n_key true");
    assert_eq!(db.psql("SELECT count(*) FROM pg_index WHERE NOT indisvalid"), "0");
}

/// The index build's backend is terminated while it waits: its invalid index is dropped on
/// the next attempt and built again (it used to fail on its own leftover, "already exists").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_build_whose_backend_is_terminated_is_made_again() {
    let db = Cluster::primary().fresh_db("direct_cic_term");
    let (run, blocker, pid, _) = index_build_held_back(&db).await;
    db.psql(&format!("SELECT pg_terminate_backend({pid})"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    blocker.batch_execute("COMMIT").await.unwrap();
    let out = run.wait(Duration::from_secs(90)).await;
    assert_unique_made(&db, &out);
    assert!(binary::stderr(&out).contains("dropping the invalid index a failed CONCURRENTLY build left"), "{}", binary::stderr(&out));
}

/// The index build's connection drops on pg-ghost's side (the server does not know, and goes
/// on building): the next attempt waits for that build to end and keeps the index it made
/// (it used to start a second build beside the first, and fail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_build_whose_connection_drops_is_waited_for_and_kept() {
    let db = Cluster::primary().fresh_db("direct_cic_drop");
    let (run, blocker, pid, port) = index_build_held_back(&db).await;
    crate::reconnect::drop_connection(&db, port);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(db.psql(&format!("SELECT state FROM pg_stat_activity WHERE pid = {pid}")), "active", "the server stopped the build: test nothing");
    blocker.batch_execute("COMMIT").await.unwrap();
    let out = run.wait(Duration::from_secs(90)).await;
    assert_unique_made(&db, &out);
    assert!(binary::stderr(&out).contains("is built and valid: kept"), "{}", binary::stderr(&out));
}

/// A validation's connection drops on pg-ghost's side while the server goes on validating
/// under its lock: that backend is ended (its transaction can never commit) and the step run
/// again (each attempt used to wait for it, pg-ghost's own session, until the retries ran out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validation_whose_connection_drops_is_ended_and_run_again() {
    let db = Cluster::primary().fresh_db("direct_validate_drop");
    binary::narrow_table(&db, "t", 100);
    db.psql("CREATE FUNCTION slow_true(int) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.03); RETURN true; END $$");
    let args = ["--table", "t", "--alter", "ADD CONSTRAINT n_slow CHECK (slow_true(n))", "--execute", "--strategy", "direct", "--skip-data-checks", "--cut-over-retries", "5"];
    let mut run = Running::spawn(&db, "run", &args);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (pid, port) = loop {
        let found = db.psql(
            "SELECT pid || ' ' || client_port FROM pg_stat_activity
              WHERE datname = current_database() AND application_name = 'pg-ghost cut-over' AND state = 'active' AND query LIKE '%VALIDATE CONSTRAINT%'",
        );
        if let Some((pid, port)) = found.split_once(' ') {
            break (pid.to_string(), port.parse::<i32>().unwrap());
        }
        run.assert_running("the validation").await;
        assert!(std::time::Instant::now() < deadline, "the validation never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    crate::reconnect::drop_connection(&db, port);
    let out = run.wait(Duration::from_secs(90)).await;
    binary::assert_success(&out);
    assert!(binary::stderr(&out).contains("the lost session's backend was still there"), "{}", binary::stderr(&out));
    assert_eq!(db.psql("SELECT convalidated::text FROM pg_constraint WHERE conname = 'n_slow'"), "true");
    assert_eq!(db.psql(&format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}")), "0");
}

/// The server restarts (fast shutdown) in the middle of a validation: the step's sessions
/// come back once the server does (they were tried once, and the run failed, leaving its
/// constraint `NOT VALID`), and the validation runs again to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validation_cut_by_a_server_restart_is_run_again() {
    let cluster = Cluster::start("direct_restart");
    let db = cluster.fresh_db("direct_restart");
    binary::narrow_table(&db, "t", 100);
    db.psql("CREATE FUNCTION slow_true(int) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.03); RETURN true; END $$");
    let args = ["--table", "t", "--alter", "ADD CONSTRAINT n_slow CHECK (slow_true(n))", "--execute", "--strategy", "direct", "--skip-data-checks"];
    let mut run = Running::spawn(&db, "run", &args);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while db.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg-ghost cut-over' AND state = 'active' AND query LIKE '%VALIDATE CONSTRAINT%'") != "1" {
        run.assert_running("the validation").await;
        assert!(std::time::Instant::now() < deadline, "the validation never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::task::block_in_place(|| cluster.restart());
    let out = run.wait(Duration::from_secs(120)).await;
    binary::assert_success(&out);
    assert_eq!(db.psql("SELECT convalidated::text FROM pg_constraint WHERE conname = 'n_slow'"), "true");
}

/// pg-ghost stops dead between a locked step's statement and its COMMIT, its connection open
/// and silent, as when the network goes: the server ends the step's transaction after 5 s
/// idle, and the application writes again while pg-ghost is still stopped (they waited until
/// the server found the client gone: hours). Continued, pg-ghost finds its session gone and
/// makes the step again; the whole schema ends as a plain ALTER leaves it.
#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_step_whose_client_goes_silent_lets_go_of_the_table() {
    let db = Cluster::primary().fresh_db("direct_silent");
    let table = OracleTable::create(&db, "orders", KeyKind::Identity, 500).await;
    let before = WholeSchema::take(&db).await;
    let workload = Workload::start(&db, &table, WorkloadOptions::new(2).rate(Some(40))).await;
    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;
    let alter = "ADD COLUMN flag boolean NOT NULL DEFAULT true";
    let mut cmd = binary::command(&db, "run", &["--table", "orders", "--alter", alter, "--execute", "--strategy", "direct"]);
    cmd.env("PG_GHOST_FAULT", "direct-freeze-before-commit");
    let mut run = Running::spawn_command(cmd);
    let pid = run.pid().expect("the run's pid");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !crate::run_faults::stopped(pid) {
        run.assert_running("the freeze before the step's COMMIT").await;
        assert!(std::time::Instant::now() < deadline, "pg-ghost did not reach the step's COMMIT within 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;
    assert!(crate::run_faults::stopped(pid), "pg-ghost was continued by someone else: test nothing");
    assert_eq!(db.psql("SELECT count(*) FROM pg_attribute WHERE attrelid = 'orders'::regclass AND attname = 'flag'"), "0", "the step committed while pg-ghost was stopped");

    assert!(std::process::Command::new("kill").args(["-CONT", &pid.to_string()]).status().expect("cannot run kill").success());
    let out = run.wait(Duration::from_secs(60)).await;
    binary::assert_success(&out);
    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;
    let report = workload.stop().await;
    assert!(report.errors.is_empty(), "workload errors (seed {}): {:#?}", report.seed, report.errors);
    table.assert_matches_control(&db.client().await, &table.projection().add("flag", "true")).await;
    let twin = before.twin_after_plain_alter(&db, "public.orders", alter).await;
    assert_whole_schema_equal(&db, &twin, alter).await;
}
