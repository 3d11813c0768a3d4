//! `pg-ghost run --resume` after a SIGKILL, with the oracle workload writing every change to
//! the table and to its control table in one transaction all along: killed during the copy,
//! inside a flush, while postponed, inside the cut-over before and after its commit. Each
//! time the original is intact and writable after the kill, the resumed run completes, and
//! the migrated table equals the control row for row.
//!
//! The crash points inside transactions need a build with the `fault-injection` feature
//! (`PG_GHOST_FAULT=<point>` makes pg-ghost SIGKILL itself there); the others kill the
//! process from outside.

use crate::binary::{self, changelog_value};
use crate::harness::{Cluster, TestDb};
use crate::oracle::*;
use crate::run_faults::{flag_path, stream_objects, wait_for_copy_past, wait_for_state, Running, POLL};
use crate::run_refusals::relation_exists;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

const ALTER: &str = "ALTER COLUMN n TYPE bigint";

/// Small chunks, each followed by a pause as long as itself: the copy of 10,000 rows lasts
/// long enough to be killed in the middle.
const SLOW_COPY: [&str; 6] = ["--chunk-size", "100", "--chunk-time", "1ms", "--nice-ratio", "1"];

struct Setup {
    db: TestDb<'static>,
    table: OracleTable,
    client: Client,
    workload: Workload,
    oid_before: String,
}

async fn setup(prefix: &str, rows: i64) -> Setup {
    let db = Cluster::primary().fresh_db(prefix);
    let table = OracleTable::create(&db, "orders", KeyKind::Identity, rows).await;
    let client = db.client().await;
    let oid_before = db.psql("SELECT 'orders'::regclass::oid");
    let workload = Workload::start(&db, &table, WorkloadOptions::new(3).rate(Some(50))).await;
    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;
    Setup { db, table, client, workload, oid_before }
}

fn run_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--table", "orders", "--alter", ALTER, "--execute", "--status-interval", "1s"];
    args.extend_from_slice(extra);
    args
}

/// Runs pg-ghost with a crash point armed; returns its log once it died there.
#[cfg(feature = "fault-injection")]
async fn die_at(db: &TestDb<'_>, point: &str, args: &[&str]) -> String {
    let mut cmd = binary::command(db, "run", args);
    cmd.env("PG_GHOST_FAULT", point);
    let out = Running::spawn_command(cmd).wait(Duration::from_secs(90)).await;
    let log = binary::stderr(&out);
    assert!(!out.status.success() && log.contains("fault injection"), "pg-ghost did not die at {point}:\n{log}");
    log
}

impl Setup {
    /// After the kill: the original kept its definition and name, and the workload's writes
    /// to it go on (each commits to table and control, so they are not blocked).
    async fn assert_original_intact_and_writable(&self) {
        assert_eq!(self.db.psql("SELECT 'orders'::regclass::oid"), self.oid_before, "the original was swapped out");
        assert_eq!(
            self.db.psql("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'orders'::regclass AND attname = 'n'"),
            "integer",
            "the original's definition changed"
        );
        assert!(!relation_exists(&self.client, "public", "_orders_del").await, "an old table exists: the swap happened");
        self.workload.wait_for_more_commits(30, Duration::from_secs(30)).await;
    }

    /// Resumes with `--resume` to the end; returns the log.
    async fn resume(&self, extra: &[&str]) -> String {
        let mut args = run_args(extra);
        args.push("--resume");
        let out = binary::run(&self.db, &args).await;
        binary::assert_success(&out);
        let log = binary::stderr(&out);
        assert!(log.contains("resuming the earlier run"), "the run did not say it resumed:\n{log}");
        log
    }

    /// The migrated table equals the control, and nothing of pg-ghost's is left.
    async fn assert_migrated(self) {
        assert_ne!(self.db.psql("SELECT 'orders'::regclass::oid"), self.oid_before, "no swap");
        self.workload.wait_for_more_commits(30, Duration::from_secs(30)).await;
        let report = self.workload.stop().await;
        assert!(report.errors.is_empty(), "workload errors (seed {}): {:#?}", report.seed, report.errors);
        assert!(report.committed_after_swap > 0, "no writes after the swap: {report:?}");
        self.table.assert_matches_control(&self.client, &self.table.projection().map("n", "n::bigint")).await;
        assert_sequences_ahead(&self.client, &self.table.qualified()).await;
        assert_no_slots_or_publications(&self.client).await;
        assert!(!relation_exists(&self.client, "public", "_orders_ghc").await, "changelog left");
        assert!(!relation_exists(&self.client, "public", "_orders_gho").await, "ghost left");
    }
}

/// Waits until no walsender streams from the killed run's slot any more.
pub(crate) async fn wait_slot_released(client: &Client) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let active: i64 = client
            .query_one("SELECT count(*) FROM pg_replication_slots WHERE database = current_database() AND active", &[])
            .await
            .unwrap()
            .get(0);
        if active == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the killed run's slot is still active after 15 s");
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until every session of the killed run has ended: a chunk whose COMMIT reached the
/// server before the kill may still be committing when the walsender is gone.
async fn wait_sessions_gone(client: &Client) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left: i64 = client
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE 'pg-ghost%'", &[])
            .await
            .unwrap()
            .get(0);
        if left == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the killed run's sessions are still there after 15 s");
        tokio::time::sleep(POLL).await;
    }
}

async fn count(client: &Client, table: &str) -> i64 {
    client.query_one(&format!("SELECT count(*) FROM {}", ident(table)), &[]).await.unwrap().get(0)
}

// ---- killed during the copy ------------------------------------------------------------------

/// kill -9 mid-copy. Then: a new run without --resume is refused and points at --resume;
/// --resume with another ALTER is refused naming both; the resumed run continues the copy
/// after the recorded watermark (it does not start over) and completes correctly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_the_copy_resumes_after_the_watermark() {
    let s = setup("rs_copy", 10_000).await;
    let mut args = run_args(&SLOW_COPY);
    args.extend(["--copy-workers", "4"]);
    let mut run = Running::spawn(&s.db, "run", &args);
    wait_for_state(&s.client, &mut run, "orders", "copy", Duration::from_secs(30)).await;
    wait_for_copy_past(&s.client, &mut run, "orders", 3_000, Duration::from_secs(60)).await;
    let (status, log) = run.kill9().await;
    assert!(!status.success(), "pg-ghost was not killed: {status}\n{log}");
    s.assert_original_intact_and_writable().await;

    let watermark = changelog_value(&s.client, "orders", "copy_watermark").await.expect("no copy watermark recorded");
    let mark: Vec<String> = serde_json::from_str(&watermark).expect("the watermark is a JSON array of key values");
    let mark: i64 = mark[0].parse().unwrap();
    // Every row at or below the watermark is in the ghost (the claim a resume relies on).
    let missing: i64 = s
        .client
        .query_one(
            "SELECT count(*) FROM orders o WHERE o.id <= $1 AND o.id <= 10000 AND NOT EXISTS (SELECT 1 FROM _orders_gho g WHERE g.id = o.id)",
            &[&mark],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(missing, 0, "rows at or below the watermark {mark} are missing from the ghost");
    assert!(mark >= 1_000, "the watermark {mark} lags far behind the copy (past 3000 when killed)");
    // The copy writes a ghost with no index at all, its key's included.
    assert_eq!(s.db.psql("SELECT count(*) FROM pg_index WHERE indrelid = '_orders_gho'::regclass"), "0", "the ghost had indexes during the copy");
    wait_slot_released(&s.client).await;

    let ghost_rows = count(&s.client, "_orders_gho").await;
    // A new run without --resume is refused, and says how to go on.
    let out = binary::run(&s.db, &run_args(&[])).await;
    binary::assert_failure(&out, 3, "--resume");
    // Resuming with another ALTER is refused, naming both.
    let other = ["--table", "orders", "--alter", "ALTER COLUMN amount TYPE float8", "--execute", "--resume"];
    let out = binary::run(&s.db, &other).await;
    binary::assert_failure(&out, 3, "differs from the earlier run");
    assert_eq!(count(&s.client, "_orders_gho").await, ghost_rows, "the refusals changed the ghost");

    let log = s.resume(&["--chunk-size", "500"]).await;
    assert!(log.contains(&format!("after={mark}")) || log.contains(&format!("after key ({mark})")), "the copy did not continue after the watermark {mark}:\n{log}");
    // Chunks past the watermark may have committed (4 workers): without a key index to skip
    // them by, they go and are copied again.
    assert!(log.contains("its rows past the watermark were removed"), "the resumed copy did not clear past the watermark:\n{log}");
    s.assert_migrated().await;
}

// ---- killed with keys parked -------------------------------------------------------------------

/// The process dies after the copy, before the key's index is built: the keys the workload
/// changed during the copy are parked in the changelog. The resumed run builds the index and
/// writes them; the table then equals the control.
#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_with_keys_parked_resumes() {
    let s = setup("rs_parked", 3_000).await;
    die_at(&s.db, "before-key-index", &run_args(&SLOW_COPY)).await;
    s.assert_original_intact_and_writable().await;
    let parked: i64 = s.db.psql("SELECT count(*) FROM _orders_ghc WHERE starts_with(key, 'parked:')").parse().unwrap();
    assert!(parked > 0, "no keys were parked during the copy");
    assert_eq!(s.db.psql("SELECT count(*) FROM pg_index WHERE indrelid = '_orders_gho'::regclass"), "0", "the key index was built before the crash");
    wait_slot_released(&s.client).await;
    let log = s.resume(&[]).await;
    let written = log
        .lines()
        .find(|l| l.contains("keys changed during the copy written to the ghost"))
        .and_then(|l| l.split("keys=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no parked keys were written:\n{log}"));
    assert!(written > 0, "the parked keys were not written:\n{log}");
    assert!(!log.contains("repairing it"), "the checksum had to repair what the parked keys should have written:\n{log}");
    s.assert_migrated().await;
}

// ---- killed between an index build and its comments ---------------------------------------------

/// The process dies right after the key's index is built on the ghost, before the comments
/// dropping it took along are given back. The resumed run finds the index built and still
/// gives them back: the migrated table has every comment the original had.
#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_a_build_and_its_comments_resumes() {
    let s = setup("rs_comments", 3_000).await;
    s.db.psql(
        "COMMENT ON CONSTRAINT orders_pkey ON orders IS 'the key';
         COMMENT ON INDEX orders_pkey IS 'the key''s index';
         COMMENT ON INDEX orders_label_idx IS 'by label'",
    );
    let log = die_at(&s.db, "built-before-finishing", &run_args(&[])).await;
    assert!(log.contains("building") || log.contains("build-indexes"), "the crash was not in the index builds:\n{log}");
    s.assert_original_intact_and_writable().await;
    wait_slot_released(&s.client).await;
    s.resume(&[]).await;
    let comments = s.db.psql(
        "SELECT concat_ws(' / ', obj_description(c.oid, 'pg_constraint'), obj_description('orders_pkey'::regclass, 'pg_class'),
                obj_description('orders_label_idx'::regclass, 'pg_class'))
           FROM pg_constraint c WHERE c.conrelid = 'orders'::regclass AND c.conname = 'orders_pkey'",
    );
    assert_eq!(comments, "the key / the key's index / by label", "comments lost by the resumed run");
    s.assert_migrated().await;
}

// ---- killed inside a flush --------------------------------------------------------------------

/// The process dies inside an apply transaction (ghost rows written, not committed).
#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_inside_a_flush_resumes() {
    let s = setup("rs_apply", 3_000).await;
    die_at(&s.db, "apply-before-commit@3", &run_args(&SLOW_COPY)).await;
    s.assert_original_intact_and_writable().await;
    wait_slot_released(&s.client).await;
    s.resume(&[]).await;
    s.assert_migrated().await;
}

// ---- killed while postponed --------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_postponed_resumes() {
    let s = setup("rs_postponed", 3_000).await;
    let flag = flag_path(&s.db, "postpone");
    std::fs::write(&flag, b"").unwrap();
    let flag_arg = flag.to_str().unwrap().to_string();
    let mut run = Running::spawn(&s.db, "run", &run_args(&["--postpone-cut-over-flag-file", &flag_arg]));
    wait_for_state(&s.client, &mut run, "orders", "postponed", Duration::from_secs(60)).await;
    s.workload.wait_for_more_commits(20, Duration::from_secs(30)).await;
    let (status, log) = run.kill9().await;
    assert!(!status.success(), "pg-ghost was not killed: {status}\n{log}");
    s.assert_original_intact_and_writable().await;
    wait_slot_released(&s.client).await;

    std::fs::remove_file(&flag).unwrap();
    let log = s.resume(&["--postpone-cut-over-flag-file", &flag_arg]).await;
    assert!(log.contains("the copy is skipped"), "the resumed run copied again although the copy had finished:\n{log}");
    s.assert_migrated().await;
}

// ---- killed inside the cut-over -----------------------------------------------------------------

/// Dies holding the cut-over's lock, with the swap done but not committed: the server rolls it
/// back, the original is back in service at once.
#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_inside_the_cut_over_before_commit_resumes() {
    let s = setup("rs_cutover", 3_000).await;
    let log = die_at(&s.db, "cut-over-before-commit", &run_args(&[])).await;
    assert!(log.contains("cut-over lock acquired"), "the crash was not inside the cut-over:\n{log}");
    s.assert_original_intact_and_writable().await;
    wait_slot_released(&s.client).await;
    s.resume(&[]).await;
    s.assert_migrated().await;
}

/// With a materialized view on the table: it was built on the ghost before the crash; the
/// resumed run drops that build, builds it again, and the swap gives it the view's place.
#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_inside_the_cut_over_with_a_materialized_view_resumes() {
    let s = setup("rs_matview", 2_000).await;
    s.db.psql("CREATE MATERIALIZED VIEW public.order_count AS SELECT count(*) AS c FROM public.orders");
    let log = die_at(&s.db, "cut-over-before-commit", &run_args(&[])).await;
    assert!(log.contains("materialized view built again"), "{log}");
    assert!(relation_exists(&s.client, "public", "_order_count_gho").await, "the build before the crash");
    s.assert_original_intact_and_writable().await;
    wait_slot_released(&s.client).await;
    let log = s.resume(&[]).await;
    assert!(log.contains("dropped a materialized view an earlier attempt built on the ghost"), "{log}");
    assert!(!relation_exists(&s.client, "public", "_order_count_gho").await);
    let reads: i64 = s
        .client
        .query_one(
            "SELECT count(*) FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
              WHERE r.ev_class = 'public.order_count'::regclass AND d.refobjid = 'public.orders'::regclass",
            &[],
        )
        .await
        .expect("dependencies")
        .get(0);
    assert!(reads > 0, "the materialized view reads the new table");
    s.client.batch_execute("DROP TABLE public._orders_del").await.expect("the old table drops without CASCADE");
    s.assert_migrated().await;
}

/// Dies right after the cut-over committed: the resumed run sees the swap was done and only
/// removes what is left (slot, publication, changelog).
#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_the_cut_over_committed_resume_cleans_up() {
    let s = setup("rs_committed", 2_000).await;
    die_at(&s.db, "cut-over-after-commit", &run_args(&[])).await;
    let (slots, _) = stream_objects(&s.client).await;
    assert_eq!(slots.len(), 1, "the killed run's slot");
    wait_slot_released(&s.client).await;
    let log = s.resume(&[]).await;
    assert!(log.contains("cut-over had committed"), "{log}");
    s.assert_migrated().await;
}

// ---- what cannot be resumed -----------------------------------------------------------------------

/// Nothing to resume; a ghost or an original whose columns changed since; a run whose slot
/// was dropped: each refused with the reason, nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_is_refused_without_a_run_or_without_its_slot() {
    let db = Cluster::primary().fresh_db("rs_refuse");
    binary::narrow_table(&db, "big", 20_000);
    let client = db.client().await;
    let args = ["--table", "big", "--alter", ALTER, "--execute", "--resume"];
    let out = binary::run(&db, &args).await;
    binary::assert_failure(&out, 3, "nothing to resume");
    assert!(!relation_exists(&client, "public", "_big_ghc").await);

    let mut run = Running::spawn(&db, "run", &["--table", "big", "--alter", ALTER, "--execute", "--chunk-size", "100", "--chunk-time", "1ms", "--nice-ratio", "2"]);
    wait_for_copy_past(&client, &mut run, "big", 2_000, Duration::from_secs(60)).await;
    run.kill9().await;
    wait_slot_released(&client).await;
    wait_sessions_gone(&client).await;
    let ghost_rows = count(&client, "_big_gho").await;

    // Someone changed the ghost, then the original: each is refused by name.
    client.batch_execute("ALTER TABLE _big_gho ADD COLUMN extra int").await.unwrap();
    let out = binary::run(&db, &args).await;
    binary::assert_failure(&out, 3, "the columns of the ghost table");
    client.batch_execute("ALTER TABLE _big_gho DROP COLUMN extra; ALTER TABLE big ADD COLUMN extra int").await.unwrap();
    let out = binary::run(&db, &args).await;
    binary::assert_failure(&out, 3, "the columns of \"public\".\"big\" changed");
    client.batch_execute("ALTER TABLE big DROP COLUMN extra").await.unwrap();

    // The slot is gone: the changes since the checkpoint cannot be had.
    let (slots, _) = stream_objects(&client).await;
    client.execute("SELECT pg_drop_replication_slot($1)", &[&slots[0]]).await.unwrap();
    let out = binary::run(&db, &args).await;
    binary::assert_failure(&out, 3, "is gone");
    assert_eq!(count(&client, "_big_gho").await, ghost_rows, "a refused resume wrote to the ghost");
    binary::assert_success(&binary::cleanup(&db, &["--table", "big"]).await);
}

// ---- killed, then the server restarted ------------------------------------------------------------

/// kill -9 mid-copy, then a fast restart of the server before the resume: the slot (and with
/// it every change since its confirmed position) survives the restart, and the resume
/// completes correctly. The oracle workload cannot ride out a restart, so it is stopped before
/// and a new one started after; table and control stay equal through both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_then_server_restarted_resumes() {
    let cluster = Cluster::start("resume_restart");
    let db = cluster.fresh_db("rs_restart");
    let table = OracleTable::create(&db, "orders", KeyKind::Identity, 10_000).await;
    let client = db.client().await;
    let workload = Workload::start(&db, &table, WorkloadOptions::new(3).rate(Some(50))).await;
    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;

    let mut run = Running::spawn(&db, "run", &run_args(&SLOW_COPY));
    wait_for_copy_past(&client, &mut run, "orders", 3_000, Duration::from_secs(60)).await;
    let (status, log) = run.kill9().await;
    assert!(!status.success(), "pg-ghost was not killed: {status}\n{log}");
    let before = workload.stop().await;
    assert!(before.errors.is_empty(), "workload errors before the restart (seed {}): {:#?}", before.seed, before.errors);
    let (slots, _) = stream_objects(&client).await;
    assert_eq!(slots.len(), 1, "the killed run's slot");
    drop(client);

    tokio::task::block_in_place(|| cluster.restart());

    let client = db.client().await;
    assert_eq!(stream_objects(&client).await.0, slots, "the slot did not survive the restart");
    let workload = Workload::start(&db, &table, WorkloadOptions::new(3).rate(Some(50))).await;
    workload.wait_for_more_commits(20, Duration::from_secs(60)).await;

    let mut args = run_args(&[]);
    args.push("--resume");
    let out = binary::run(&db, &args).await;
    binary::assert_success(&out);
    assert!(binary::stderr(&out).contains("resuming the earlier run"), "{}", binary::stderr(&out));

    workload.wait_for_more_commits(30, Duration::from_secs(30)).await;
    let report = workload.stop().await;
    assert!(report.errors.is_empty(), "workload errors (seed {}): {:#?}", report.seed, report.errors);
    assert!(report.committed_after_swap > 0, "no writes after the swap: {report:?}");
    table.assert_matches_control(&client, &table.projection().map("n", "n::bigint")).await;
    assert_no_slots_or_publications(&client).await;
}

/// Runs pg-ghost to the end with `PG_GHOST_FAULT=point` armed at a point where the connection
/// is taken as lost around a COMMIT; returns the log.
#[cfg(feature = "fault-injection")]
async fn run_losing_a_commit_answer(db: &TestDb<'_>, point: &str, args: &[&str]) -> String {
    let mut cmd = binary::command(db, "run", args);
    cmd.env("PG_GHOST_FAULT", point);
    let out = Running::spawn_command(cmd).wait(Duration::from_secs(120)).await;
    let log = binary::stderr(&out);
    assert!(log.contains("fault injection: the connection is taken as lost here"), "the fault was not reached at {point}:\n{log}");
    binary::assert_success(&out);
    log
}

/// The answer to the cut-over's COMMIT is lost with its connection, the swap having gone
/// through: pg-ghost asks how the transaction ended instead of taking the attempt for failed
/// (a second attempt would find the ghost's name gone and fail the run, the swap done), and
/// completes.
#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_over_whose_commit_answer_is_lost_completes() {
    let s = setup("lost_commit_cut", 2_000).await;
    let log = run_losing_a_commit_answer(&s.db, "cut-over-commit", &run_args(&["--ok-to-drop-table"])).await;
    assert!(log.contains("but the COMMIT went through"), "{log}");
    assert!(!log.contains("cut-over attempt failed"), "the committed swap was taken for a failed attempt:\n{log}");
    assert!(!relation_exists(&s.client, "public", "_orders_del").await, "the old table was not dropped");
    s.assert_migrated().await;
}

/// The answer to a copy chunk's COMMIT is lost with its connection, the chunk having committed:
/// it is not copied again (its rows would be twice in a ghost with no key index, and the key's
/// index could not be built), and the run completes.
#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_chunk_whose_commit_answer_is_lost_is_not_copied_again() {
    let s = setup("lost_commit_copy", 3_000).await;
    let log = run_losing_a_commit_answer(&s.db, "copy-commit@3", &run_args(&["--chunk-size", "500", "--chunk-time", "1ms"])).await;
    assert!(log.contains("the lost chunk's COMMIT went through"), "{log}");
    s.assert_migrated().await;
}

/// The connection is lost before the cut-over's COMMIT reaches the server: its session sits
/// idle in the transaction, holding the table's lock. pg-ghost, asking how the transaction
/// ended, ends that session (the transaction rolls back, the lock goes), and the next attempt
/// swaps.
#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_over_whose_commit_never_arrived_is_tried_again() {
    let s = setup("lost_commit_unsent", 2_000).await;
    let log = run_losing_a_commit_answer(&s.db, "cut-over-commit-unsent", &run_args(&["--ok-to-drop-table"])).await;
    assert!(log.contains("did not go through"), "{log}");
    assert!(log.contains("cut-over committed attempt=2"), "the second attempt did not swap:\n{log}");
    s.assert_migrated().await;
}
