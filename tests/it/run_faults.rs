//! `pg-ghost run` when things go wrong, or wait, mid-run, through the binary: SIGKILL during
//! the copy, `cleanup` while a run streams, a schema change by someone else, the panic flag,
//! the postpone flag under load, a leftover ghost table, what happens to the old table, and copy
//! chunks and apply flushes the server fails with a deadlock.
//!
//! Every test waits on conditions it can see (the changelog's `state` and `copy_range` rows,
//! the process's exit, workload commits), each with a deadline; nothing sleeps to
//! synchronise.

use crate::binary::{self, changelog_value, narrow_table};
use crate::harness::{Cluster, TestDb};
use crate::oracle::*;
use crate::run_refusals::{assert_exit, reason, relation_exists};
use std::path::PathBuf;
use std::process::{ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::process::Child;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

/// Polling period for conditions in the database or on the process.
pub(crate) const POLL: Duration = Duration::from_millis(20);

/// A `pg-ghost` process running in the background, its stderr collected as it comes (so a
/// full pipe never blocks it).
pub(crate) struct Running {
    child: Child,
    stderr: Option<JoinHandle<String>>,
    status: Option<ExitStatus>,
}

impl Running {
    pub(crate) fn spawn(db: &TestDb<'_>, subcommand: &str, args: &[&str]) -> Running {
        Running::spawn_command(binary::command(db, subcommand, args))
    }

    /// Starts a command made by [`binary::command`] (with extra environment, say).
    pub(crate) fn spawn_command(mut command: tokio::process::Command) -> Running {
        let mut child = command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("start pg-ghost");
        let mut pipe = child.stderr.take().unwrap();
        let stderr = tokio::spawn(async move {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf).await;
            String::from_utf8_lossy(&buf).into_owned()
        });
        Running { child, stderr: Some(stderr), status: None }
    }

    /// The process id, while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Panics with the log if the process has exited (it was expected to keep running).
    pub(crate) async fn assert_running(&mut self, while_waiting_for: &str) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            self.status = Some(status);
            let log = self.stderr.take().unwrap().await.unwrap();
            panic!("pg-ghost exited ({status}) while the test waited for {while_waiting_for}:\n{log}");
        }
    }

    /// Waits for the exit (at most `timeout`, then kills it and panics).
    pub(crate) async fn wait(mut self, timeout: Duration) -> Output {
        let status = match self.status {
            Some(s) => s,
            None => match tokio::time::timeout(timeout, self.child.wait()).await {
                Ok(s) => s.expect("wait for pg-ghost"),
                Err(_) => {
                    let _ = self.child.start_kill();
                    let _ = self.child.wait().await;
                    let log = self.stderr.take().unwrap().await.unwrap();
                    panic!("pg-ghost did not exit within {timeout:?}:\n{log}");
                }
            },
        };
        let stderr = self.stderr.take().unwrap().await.unwrap();
        Output { status, stdout: Vec::new(), stderr: stderr.into_bytes() }
    }

    /// SIGKILL (what `start_kill` sends on Unix) and reap; returns the log so far.
    pub(crate) async fn kill9(mut self) -> (ExitStatus, String) {
        self.child.start_kill().expect("kill -9 pg-ghost");
        let status = self.child.wait().await.expect("reap pg-ghost");
        let log = self.stderr.take().unwrap().await.unwrap();
        (status, log)
    }
}

/// Waits until the changelog's `state` is `state`; panics if the run exits first or at the
/// deadline.
pub(crate) async fn wait_for_state(client: &Client, run: &mut Running, table: &str, state: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if changelog_value(client, table, "state").await.as_deref() == Some(state) {
            return;
        }
        run.assert_running(&format!("state {state:?}")).await;
        assert!(Instant::now() < deadline, "the changelog never said state = {state:?} within {timeout:?}");
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the copy has handed out a chunk starting above `lo` (single bigint key): at
/// least that many keys are behind it, and the copy is under way, not finished.
pub(crate) async fn wait_for_copy_past(client: &Client, run: &mut Running, table: &str, lo: i64, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(range) = changelog_value(client, table, "copy_range").await {
            let start = range.split("..").next().unwrap_or_default();
            if start.parse::<i64>().is_ok_and(|v| v >= lo) {
                return range;
            }
        }
        run.assert_running(&format!("copy_range past {lo}")).await;
        assert!(Instant::now() < deadline, "the copy did not get past key {lo} within {timeout:?}");
        tokio::time::sleep(POLL).await;
    }
}

pub(crate) async fn assert_unchanged_rows(client: &Client, table: &str, columns: &[&str]) {
    assert_same_rows(client, &ident(table), &ident(&format!("{table}_before")), &Projection::identity(columns)).await;
}

/// Writes to `table` (and the same to `<table>_before`) succeed promptly: it is not locked.
pub(crate) async fn assert_writable(client: &Client, table: &str) {
    let t = ident(table);
    let b = ident(&format!("{table}_before"));
    client
        .batch_execute(&format!(
            "SET statement_timeout = '5s';
             BEGIN;
             INSERT INTO {t} (id, n, pad) VALUES (-1, 7, 'written after'); INSERT INTO {b} (id, n, pad) VALUES (-1, 7, 'written after');
             UPDATE {t} SET n = n + 1 WHERE id = 5; UPDATE {b} SET n = n + 1 WHERE id = 5;
             DELETE FROM {t} WHERE id = 6; DELETE FROM {b} WHERE id = 6;
             COMMIT;
             RESET statement_timeout;"
        ))
        .await
        .unwrap_or_else(|e| panic!("{table} is not writable: {e:?}"));
}

/// This database's slots and publications, by name.
pub(crate) async fn stream_objects(client: &Client) -> (Vec<String>, Vec<String>) {
    let slots = client
        .query("SELECT slot_name::text FROM pg_replication_slots WHERE database = current_database() ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let pubs = client.query("SELECT pubname::text FROM pg_publication ORDER BY 1", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    (slots, pubs)
}

pub(crate) async fn count(client: &Client, table: &str) -> i64 {
    client.query_one(&format!("SELECT count(*) FROM {}", qualified("public", table)), &[]).await.unwrap().get(0)
}

/// A flag file path of this test's own.
pub(crate) fn flag_path(db: &TestDb<'_>, what: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("pg-ghost-{}-{}-{what}", std::process::id(), db.name));
    let _ = std::fs::remove_file(&p);
    p
}

/// Arguments that keep the copy slow (chunks of 100 rows, shrinking to stay there) so a test
/// can act while it runs.
const SLOW_COPY: [&str; 4] = ["--chunk-size", "100", "--chunk-time", "1ms"];

// ---- SIGKILL mid-copy --------------------------------------------------------------------

/// kill -9 during the copy: the original is intact and writable; slot and publication
/// survive the process (nobody could drop them), and `pg-ghost cleanup` then removes slot,
/// publication, ghost and changelog, leaving the catalogs as before the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_copy_then_cleanup() {
    let db = Cluster::primary().fresh_db("ft_kill");
    narrow_table(&db, "big", 100_000);
    let client = db.client().await;
    let before = CatalogSnapshot::take(&client).await;
    let oid: u32 = client.query_one("SELECT 'big'::regclass::oid", &[]).await.unwrap().get(0);
    let stream_name = format!("pg_ghost_{oid}");

    let mut args = vec!["--table", "big", "--alter", "ALTER COLUMN n TYPE bigint", "--execute"];
    args.extend(SLOW_COPY);
    let mut run = Running::spawn(&db, "run", &args);
    wait_for_state(&client, &mut run, "big", "copy", Duration::from_secs(30)).await;
    let range = wait_for_copy_past(&client, &mut run, "big", 1_000, Duration::from_secs(30)).await;
    let (status, log) = run.kill9().await;
    assert!(!status.success(), "pg-ghost was not killed: {status}\n{log}");

    // Killed mid-copy: the ghost has some rows, not all.
    let copied = count(&client, "_big_gho").await;
    assert!(copied > 0 && copied < 100_000, "killed at copy_range {range}, the ghost holds {copied} rows: not mid-copy");

    assert_unchanged_rows(&client, "big", &["id", "n", "pad"]).await;
    assert_writable(&client, "big").await;
    assert_unchanged_rows(&client, "big", &["id", "n", "pad"]).await;

    let (slots, pubs) = stream_objects(&client).await;
    assert_eq!(slots, vec![stream_name.clone()], "the killed run's slot");
    assert_eq!(pubs, vec![stream_name.clone()], "the killed run's publication");

    // The walsender of the dead process ends when the server sees the socket closed.
    let deadline = Instant::now() + Duration::from_secs(15);
    while client.query_one("SELECT active FROM pg_replication_slots WHERE slot_name = $1", &[&stream_name]).await.unwrap().get::<_, bool>(0)
    {
        assert!(Instant::now() < deadline, "slot {stream_name} still active 15 s after the kill");
        tokio::time::sleep(POLL).await;
    }

    let out = binary::cleanup(&db, &["--table", "big"]).await;
    binary::assert_success(&out);
    let (slots, pubs) = stream_objects(&client).await;
    assert!(slots.is_empty() && pubs.is_empty(), "after cleanup: slots {slots:?}, publications {pubs:?}");
    for leftover in ["_big_gho", "_big_ghc", "_big_del"] {
        assert!(!relation_exists(&client, "public", leftover).await, "{leftover} left after cleanup");
    }
    assert_catalog_unchanged(&before, &CatalogSnapshot::take(&client).await);
    assert_unchanged_rows(&client, "big", &["id", "n", "pad"]).await;

    // A second cleanup finds nothing and succeeds.
    binary::assert_success(&binary::cleanup(&db, &["--table", "big"]).await);
}

/// `cleanup` while a run streams (postponed, so it waits) is refused naming the walsender,
/// and removes nothing; the run then ends normally once the flag is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_is_refused_while_a_run_streams() {
    let db = Cluster::primary().fresh_db("ft_cleanup_active");
    narrow_table(&db, "t", 2_000);
    let client = db.client().await;
    let before = CatalogSnapshot::take(&client).await;
    let flag = flag_path(&db, "postpone");
    std::fs::write(&flag, b"").unwrap();

    let flag_arg = flag.to_str().unwrap();
    // A dry run: it postpones like a real one, and afterwards everything must be as before.
    let mut run = Running::spawn(&db, "run", &["--table", "t", "--alter", "ADD COLUMN x int", "--postpone-cut-over-flag-file", flag_arg]);
    wait_for_state(&client, &mut run, "t", "postponed", Duration::from_secs(60)).await;

    let during = CatalogSnapshot::take(&client).await;
    let out = binary::cleanup(&db, &["--table", "t"]).await;
    assert_exit(&out, 3, &["walsender", "still streaming"]);
    assert_catalog_unchanged(&during, &CatalogSnapshot::take(&client).await);
    assert!(relation_exists(&client, "public", "_t_gho").await);
    run.assert_running("nothing: cleanup must not have stopped the run").await;

    std::fs::remove_file(&flag).unwrap();
    let out = run.wait(Duration::from_secs(60)).await;
    binary::assert_success(&out);
    assert_catalog_unchanged(&before, &CatalogSnapshot::take(&client).await);
}

// ---- someone else changes the table -------------------------------------------------------

/// `ALTER TABLE t ADD COLUMN x int` from another session during the copy, then an UPDATE:
/// pg-ghost stops with a message saying the table's definition changed, before the copy
/// ends; the original is intact and writable, no slot or publication remains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_change_by_someone_else_aborts() {
    let db = Cluster::primary().fresh_db("ft_ddl");
    narrow_table(&db, "items", 100_000);
    let client = db.client().await;

    // The copy rests as long again as each chunk takes, so the ALTER below lands while it
    // runs even on a busy machine (it waits for a chunk to let go of the table).
    let mut args = vec!["--table", "items", "--alter", "ADD COLUMN flag int NOT NULL DEFAULT 0", "--execute", "--nice-ratio", "1"];
    args.extend(SLOW_COPY);
    let mut run = Running::spawn(&db, "run", &args);
    wait_for_state(&client, &mut run, "items", "copy", Duration::from_secs(30)).await;
    wait_for_copy_past(&client, &mut run, "items", 500, Duration::from_secs(30)).await;

    client
        .batch_execute(
            "SET lock_timeout = '10s';
             ALTER TABLE items ADD COLUMN x int;
             BEGIN;
             UPDATE items SET n = n + 1 WHERE id <= 10; UPDATE items_before SET n = n + 1 WHERE id <= 10;
             COMMIT;",
        )
        .await
        .expect("the concurrent ALTER and UPDATE");
    let changed_at = Instant::now();

    let out = run.wait(Duration::from_secs(60)).await;
    assert_exit(&out, 1, &["definition changed"]);
    let took = changed_at.elapsed();
    // Stopped on the stream's news, not at the end of the copy.
    let copied = count(&client, "_items_gho").await;
    assert!(
        copied < 100_000,
        "the run went on copying the whole table ({copied} rows, {took:?}) before noticing:\n{}",
        binary::stderr(&out)
    );

    assert_unchanged_rows(&client, "items", &["id", "n", "pad"]).await;
    assert_eq!(
        db.psql("SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute WHERE attrelid = 'items'::regclass AND attnum > 0 AND NOT attisdropped"),
        "id,n,pad,x"
    );
    assert_writable(&client, "items").await;
    assert_unchanged_rows(&client, "items", &["id", "n", "pad"]).await;
    let (slots, pubs) = stream_objects(&client).await;
    assert!(slots.is_empty() && pubs.is_empty(), "left behind: slots {slots:?}, publications {pubs:?}");

    binary::assert_success(&binary::cleanup(&db, &["--table", "items"]).await);
    assert!(!relation_exists(&client, "public", "_items_gho").await);
}

// ---- a UNIQUE constraint the data violates -------------------------------------------------

/// `ADD CONSTRAINT ... UNIQUE (n)` where two rows share `n`, past the data checks
/// (`--skip-data-checks`; with them the run is refused before anything is created, see
/// `datacheck`): the index build fails naming the constraint and the duplicate key, the
/// original keeps every row, no slot or publication is left; `cleanup` removes the ghost
/// and the catalogs are as before.
#[tokio::test]
async fn unique_constraint_on_duplicates_fails_loudly() {
    let db = Cluster::primary().fresh_db("ft_unique");
    db.psql(
        "CREATE TABLE dup (id bigint PRIMARY KEY, n int NOT NULL, pad text);
         INSERT INTO dup SELECT g, CASE WHEN g = 2500 THEN 1234 ELSE g END, md5(g::text) FROM generate_series(1, 3000) g;
         CREATE TABLE dup_before AS TABLE dup;",
    );
    let client = db.client().await;
    let before = CatalogSnapshot::take(&client).await;

    let out =
        binary::run(&db, &["--table", "dup", "--alter", "ADD CONSTRAINT dup_n_unique UNIQUE (n)", "--execute", "--chunk-size", "500", "--skip-data-checks"])
            .await;
    let err = binary::stderr(&out);
    assert!(!out.status.success(), "the run succeeded on duplicate data:\n{err}");
    let why = reason(&out);
    assert!(why.contains("dup_n_unique"), "the reason does not name the constraint: {why}\n{err}");
    assert!(why.contains("(n)=(1234)"), "the reason does not name the duplicate key: {why}\n{err}");

    assert_unchanged_rows(&client, "dup", &["id", "n", "pad"]).await;
    assert_eq!(count(&client, "dup").await, 3000);
    let (slots, pubs) = stream_objects(&client).await;
    assert!(slots.is_empty() && pubs.is_empty(), "left behind: slots {slots:?}, publications {pubs:?}");

    binary::assert_success(&binary::cleanup(&db, &["--table", "dup"]).await);
    assert_catalog_unchanged(&before, &CatalogSnapshot::take(&client).await);
}

// ---- the panic flag -----------------------------------------------------------------------

/// The panic flag file appearing during the copy: exit 4 within 2 s, the original untouched
/// and writable, slot and publication dropped, the ghost kept for inspection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_flag_aborts_at_once() {
    let db = Cluster::primary().fresh_db("ft_panic");
    narrow_table(&db, "p", 100_000);
    let client = db.client().await;
    let flag = flag_path(&db, "panic");

    let flag_arg = flag.to_str().unwrap();
    let mut args = vec!["--table", "p", "--alter", "ALTER COLUMN n TYPE bigint", "--execute", "--panic-flag-file", flag_arg];
    args.extend(SLOW_COPY);
    let mut run = Running::spawn(&db, "run", &args);
    wait_for_state(&client, &mut run, "p", "copy", Duration::from_secs(30)).await;
    wait_for_copy_past(&client, &mut run, "p", 500, Duration::from_secs(30)).await;

    std::fs::write(&flag, b"").unwrap();
    let created = Instant::now();
    let out = run.wait(Duration::from_secs(30)).await;
    let took = created.elapsed();
    let _ = std::fs::remove_file(&flag);
    assert_exit(&out, 4, &["panic flag"]);
    assert!(took < Duration::from_secs(2), "exited {took:?} after the panic flag appeared:\n{}", binary::stderr(&out));

    assert_unchanged_rows(&client, "p", &["id", "n", "pad"]).await;
    assert_writable(&client, "p").await;
    assert_unchanged_rows(&client, "p", &["id", "n", "pad"]).await;
    let (slots, pubs) = stream_objects(&client).await;
    assert!(slots.is_empty() && pubs.is_empty(), "left behind: slots {slots:?}, publications {pubs:?}");
    assert!(relation_exists(&client, "public", "_p_gho").await, "the ghost was not kept for inspection");
    assert_eq!(
        db.psql("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'p'::regclass AND attname = 'n'"),
        "integer"
    );
}

// ---- statements the server refuses ----------------------------------------------------------

/// How many statements of each session (copy, apply) the trigger of
/// [`a_deadlocked_chunk_or_flush_is_rolled_back_and_run_again`] fails.
const STAGED_DEADLOCKS: i64 = 3;

/// Puts a trigger on `ghost` that fails the `INSERT`s of pg-ghost's copy sessions (the first
/// `copy` of them) and of its apply session (the first `apply`) with `errcode` and `message`,
/// counting them in the sequences `staged_copy` and `staged_apply` (a sequence keeps counting
/// when the transaction rolls back). Dropped by [`drop_failing_trigger`].
async fn put_failing_trigger(client: &Client, ghost: &str, (copy, apply): (i64, i64), errcode: &str, message: &str) {
    client
        .batch_execute(&format!(
            "CREATE SEQUENCE staged_copy;
             CREATE SEQUENCE staged_apply;
             CREATE FUNCTION stage_failure() RETURNS trigger LANGUAGE plpgsql AS $$
             DECLARE
                 counter regclass := CASE current_setting('application_name')
                     WHEN 'pg-ghost copy' THEN 'staged_copy' WHEN 'pg-ghost apply' THEN 'staged_apply' END;
                 failures bigint := CASE counter WHEN 'staged_copy'::regclass THEN {copy} ELSE {apply} END;
             BEGIN
                 IF counter IS NOT NULL THEN
                     IF nextval(counter) <= failures THEN
                         RAISE EXCEPTION '{message}' USING ERRCODE = '{errcode}';
                     END IF;
                 END IF;
                 RETURN NULL;
             END $$;
             CREATE TRIGGER stage_failure BEFORE INSERT ON {ghost} FOR EACH STATEMENT EXECUTE FUNCTION stage_failure();"
        ))
        .await
        .unwrap();
}

async fn drop_failing_trigger(client: &Client, ghost: &str) {
    client.batch_execute(&format!("DROP TRIGGER stage_failure ON {ghost}; DROP FUNCTION stage_failure()")).await.unwrap();
}

/// How many statements of the sessions counted in `counter` the trigger has seen.
async fn times_staged(client: &Client, counter: &str) -> i64 {
    client.query_one(&format!("SELECT last_value FROM {counter}"), &[]).await.unwrap().get(0)
}

/// The tests below: `orders` under the workload, and a run started on it with the postpone
/// flag (which the test removes), small chunks with pauses so that the copy lasts a few
/// seconds, two copy workers; the copy under way.
struct Staged {
    db: TestDb<'static>,
    table: OracleTable,
    client: Client,
    flag: PathBuf,
    workload: Workload,
    run: Running,
}

async fn start_staged(prefix: &str) -> Staged {
    let db = Cluster::primary().fresh_db(prefix);
    let table = OracleTable::create(&db, "orders", KeyKind::Identity, 8_000).await;
    let client = db.client().await;
    let flag = flag_path(&db, "postpone");
    std::fs::write(&flag, b"").unwrap();
    let workload = Workload::start(&db, &table, WorkloadOptions::new(2).rate(Some(40))).await;
    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;
    let args = [
        "--table", "orders", "--alter", "ALTER COLUMN n TYPE bigint", "--execute", "--postpone-cut-over-flag-file", flag.to_str().unwrap(),
        "--chunk-size", "100", "--chunk-time", "1ms", "--nice-ratio", "2", "--copy-workers", "2",
    ];
    let mut run = Running::spawn(&db, "run", &args);
    wait_for_state(&client, &mut run, "orders", "copy", Duration::from_secs(60)).await;
    Staged { db, table, client, flag, workload, run }
}

/// Copy chunks and apply writes whose `INSERT` into the ghost fails on the server with a
/// deadlock, staged by a trigger the test puts on the ghost mid-copy (SQLSTATE 40P01, raised a
/// few times for each of the two sessions). A chunk's statements are pipelined: those behind the
/// `INSERT` fail on the aborted transaction, and what must be reported is the deadlock, so that
/// the chunk is rolled back and copied again. The ghost has no key index during the copy, so a
/// chunk copied twice would stay twice (and the key's index would then fail); a chunk or flush
/// left out would be repaired by the checksum, which `assert_success` refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadlocked_chunk_or_flush_is_rolled_back_and_run_again() {
    let Staged { db: _db, table, client, flag, workload, mut run } = start_staged("ft_deadlock").await;
    wait_for_copy_past(&client, &mut run, "orders", 1_500, Duration::from_secs(60)).await;
    let staged_errors = (STAGED_DEADLOCKS, STAGED_DEADLOCKS);
    put_failing_trigger(&client, "_orders_gho", staged_errors, "deadlock_detected", "deadlock staged by the test").await;
    wait_for_state(&client, &mut run, "orders", "postponed", Duration::from_secs(120)).await;
    let copy_statements = times_staged(&client, "staged_copy").await;
    assert!(copy_statements > STAGED_DEADLOCKS, "the copy ended before {STAGED_DEADLOCKS} chunks had failed ({copy_statements} seen): test nothing");
    // The apply writes the ghost once it has its key's index; the workload keeps it busy.
    let deadline = Instant::now() + Duration::from_secs(60);
    while times_staged(&client, "staged_apply").await <= STAGED_DEADLOCKS {
        run.assert_running("the apply's staged deadlocks").await;
        assert!(Instant::now() < deadline, "the apply did not write the ghost {STAGED_DEADLOCKS} times within 60 s");
        tokio::time::sleep(POLL).await;
    }
    drop_failing_trigger(&client, "_orders_gho").await;

    std::fs::remove_file(&flag).unwrap();
    let out = run.wait(Duration::from_secs(120)).await;
    binary::assert_success(&out);
    let log = binary::stderr(&out);
    // The apply's first writes to the ghost are the keys it parked during the copy.
    for (session, whats) in [("copy", &["copying a chunk"][..]), ("apply", &["writing parked keys", "flushing changed keys"][..])] {
        let retried = log
            .lines()
            .filter(|l| l.contains("retrying") && whats.iter().any(|w| l.contains(w)) && l.contains("deadlock staged by the test"))
            .count();
        assert_eq!(retried as i64, STAGED_DEADLOCKS, "each staged deadlock of the {session} should be retried, as a deadlock:\n{log}");
    }

    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;
    let report = workload.stop().await;
    assert!(report.errors.is_empty(), "workload errors (seed {}): {:#?}", report.seed, report.errors);
    table.assert_matches_control(&client, &table.projection().map("n", "n::bigint")).await;
    assert_no_slots_or_publications(&client).await;
}

/// An apply write the server refuses for good (a trigger on the ghost raising an error that is
/// no deadlock, every time): the run stops naming the server's error, not only that its apply
/// loop went away; the original is untouched and the workload goes on writing it, the slot and
/// publication dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_write_the_server_refuses_stops_the_run_naming_the_error() {
    let Staged { db, table, client, flag, workload, run } = start_staged("ft_apply_refused").await;
    let oid_before = db.psql("SELECT 'orders'::regclass::oid");
    put_failing_trigger(&client, "_orders_gho", (0, i64::MAX), "P0001", "write refused by the test").await;
    let out = run.wait(Duration::from_secs(120)).await;
    let _ = std::fs::remove_file(&flag);
    assert_exit(&out, 1, &["write refused by the test"]);
    assert!(times_staged(&client, "staged_apply").await > 0, "the trigger never saw the apply: test nothing");

    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;
    let report = workload.stop().await;
    assert!(report.errors.is_empty(), "workload errors (seed {}): {:#?}", report.seed, report.errors);
    assert_eq!(db.psql("SELECT 'orders'::regclass::oid"), oid_before, "the original was swapped");
    table.assert_matches_control(&client, &table.projection()).await;
    assert_no_slots_or_publications(&client).await;
}

// ---- the postpone flag ---------------------------------------------------------------------

/// With the postpone flag present from the start, the run copies, then waits (state
/// `postponed`) while the workload keeps writing; removing the flag lets it cut over, and the
/// table then equals its control.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postponed_cut_over_waits_for_the_flag_under_load() {
    let db = Cluster::primary().fresh_db("ft_postpone");
    let table = OracleTable::create(&db, "orders", KeyKind::Identity, 3_000).await;
    let client = db.client().await;
    let oid_before = db.psql("SELECT 'orders'::regclass::oid");
    let flag = flag_path(&db, "postpone");
    std::fs::write(&flag, b"").unwrap();
    let workload = Workload::start(&db, &table, WorkloadOptions::new(3).rate(Some(50))).await;
    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;

    let flag_arg = flag.to_str().unwrap();
    let alter = "ALTER COLUMN n TYPE bigint";
    let mut run = Running::spawn(
        &db,
        "run",
        &["--table", "orders", "--alter", alter, "--execute", "--chunk-size", "500", "--postpone-cut-over-flag-file", flag_arg],
    );
    wait_for_state(&client, &mut run, "orders", "postponed", Duration::from_secs(60)).await;

    // Postponed: writes go on, to the original, and the run waits.
    workload.wait_for_more_commits(40, Duration::from_secs(30)).await;
    run.assert_running("the postponed cut-over").await;
    assert_eq!(changelog_value(&client, "orders", "state").await.as_deref(), Some("postponed"));
    assert_eq!(db.psql("SELECT 'orders'::regclass::oid"), oid_before, "cut over while postponed");
    assert_eq!(workload.committed_after_swap(), 0);

    std::fs::remove_file(&flag).unwrap();
    let out = run.wait(Duration::from_secs(60)).await;
    binary::assert_success(&out);
    assert_ne!(db.psql("SELECT 'orders'::regclass::oid"), oid_before, "no swap after the flag was removed");

    workload.wait_for_more_commits(30, Duration::from_secs(30)).await;
    let report = workload.stop().await;
    assert!(report.errors.is_empty(), "workload errors (seed {}): {:#?}", report.seed, report.errors);
    assert!(report.committed_after_swap_by_op.get("insert").copied().unwrap_or(0) > 0, "no inserts after the swap: {report:?}");
    table.assert_matches_control(&client, &table.projection().map("n", "n::bigint")).await;
    assert_sequences_ahead(&client, &table.qualified()).await;
    assert_no_slots_or_publications(&client).await;
    assert!(!relation_exists(&client, "public", "_orders_ghc").await);
    assert!(!relation_exists(&client, "public", "_orders_gho").await);
}

// ---- a leftover ghost table ------------------------------------------------------------------

/// A `_<t>_gho` left by a failed run: without --initially-drop-ghost-table the run is refused
/// (exit 3) naming it, and nothing changes; with the flag it is dropped and the run succeeds.
#[tokio::test]
async fn leftover_ghost_is_refused_or_dropped_on_request() {
    let db = Cluster::primary().fresh_db("ft_leftover");
    narrow_table(&db, "t", 3_000);
    db.psql("CREATE TABLE _t_gho (junk text); INSERT INTO _t_gho VALUES ('from a failed run');");
    let client = db.client().await;
    let before = CatalogSnapshot::take(&client).await;
    let alter = "ADD COLUMN flag int NOT NULL DEFAULT 7";

    let out = binary::run(&db, &["--table", "t", "--alter", alter, "--execute"]).await;
    assert_exit(&out, 3, &["_t_gho", "--initially-drop-ghost-table"]);
    assert_catalog_unchanged(&before, &CatalogSnapshot::take(&client).await);
    assert_eq!(db.psql("SELECT junk FROM _t_gho"), "from a failed run");

    let out = binary::run(&db, &["--table", "t", "--alter", alter, "--execute", "--initially-drop-ghost-table"]).await;
    binary::assert_success(&out);
    assert_same_rows(&client, "t", "t_before", &Projection::identity(&["id", "n", "pad"]).add("flag", "7")).await;
    assert!(!relation_exists(&client, "public", "_t_gho").await, "a ghost table is left");
    assert!(!relation_exists(&client, "public", "_t_ghc").await, "the changelog is left");
    assert!(relation_exists(&client, "public", "_t_del").await, "the old table was dropped without --ok-to-drop-table");
    assert_no_slots_or_publications(&client).await;
}

// ---- the old table --------------------------------------------------------------------------

/// Old tables of `t` now in the catalog: `_t_del` and names like `_t_<14 digits>_del`.
async fn old_tables(client: &Client) -> Vec<String> {
    client
        .query("SELECT relname::text FROM pg_class WHERE relname LIKE '\\_t\\_%del' AND relkind = 'r' ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn is_timestamped_old_name(name: &str) -> bool {
    let Some(stamp) = name.strip_prefix("_t_").and_then(|s| s.strip_suffix("_del")) else {
        return false;
    };
    stamp.len() == 14 && stamp.bytes().all(|b| b.is_ascii_digit())
}

async fn cut_over_with(prefix: &str, extra: &[&str]) -> (TestDb<'static>, Client) {
    let db = Cluster::primary().fresh_db(prefix);
    narrow_table(&db, "t", 2_000);
    let client = db.client().await;
    let mut args = vec!["--table", "t", "--alter", "ALTER COLUMN n TYPE bigint", "--execute"];
    args.extend_from_slice(extra);
    let out = binary::run(&db, &args).await;
    binary::assert_success(&out);
    assert_same_rows(&client, "t", "t_before", &Projection::identity(&["id", "n", "pad"]).map("n", "n::bigint")).await;
    assert_no_slots_or_publications(&client).await;
    (db, client)
}

/// --timestamp-old-table without --ok-to-drop-table: the original is kept as
/// `_t_<YYYYMMDDhhmmss>_del`, with its rows and its old shape.
#[tokio::test]
async fn timestamp_old_table_keeps_it_under_a_timestamped_name() {
    let (db, client) = cut_over_with("ft_ts", &["--timestamp-old-table"]).await;
    let old = old_tables(&client).await;
    assert_eq!(old.len(), 1, "old tables: {old:?}");
    assert!(is_timestamped_old_name(&old[0]), "{:?} is not _t_<14 digits>_del", old[0]);
    assert_same_rows(&client, &ident(&old[0]), "t_before", &Projection::identity(&["id", "n", "pad"])).await;
    assert_eq!(
        db.psql(&format!(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = {}::regclass AND attname = 'n'",
            literal(&ident(&old[0]))
        )),
        "integer"
    );
}

/// --ok-to-drop-table (no timestamp): no `_t_del` after the cut-over.
#[tokio::test]
async fn ok_to_drop_table_drops_the_old_table() {
    let (_db, client) = cut_over_with("ft_drop", &["--ok-to-drop-table"]).await;
    assert_eq!(old_tables(&client).await, Vec::<String>::new());
}

/// Both flags: the old table is dropped too (the timestamp only names it). gh-ost drops it.
#[tokio::test]
async fn ok_to_drop_table_with_timestamp_drops_the_old_table() {
    let (_db, client) = cut_over_with("ft_drop_ts", &["--ok-to-drop-table", "--timestamp-old-table"]).await;
    assert_eq!(old_tables(&client).await, Vec::<String>::new(), "--ok-to-drop-table left the timestamped old table");
}

// ---- the cut-over's sentinel -------------------------------------------------------------------

/// Several cut-overs of an idle table, each with a session writing to it meanwhile: every
/// cut-over commits at its first attempt, no attempt waits out the sentinel while holding the
/// ACCESS EXCLUSIVE lock, and the writer never waits longer than the lock timeout (1 s).
///
/// Nothing competes for the lock here, so a missed sentinel can only be pg-ghost's own doing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_over_gets_its_sentinel_at_the_first_attempt() {
    let db = Cluster::primary().fresh_db("ft_sentinel");
    let client = db.client().await;
    for i in 0..8 {
        let t = format!("s{i}");
        db.psql(&format!(
            "CREATE TABLE {t} (id bigint PRIMARY KEY, n int NOT NULL); INSERT INTO {t} SELECT g, g FROM generate_series(1, 500) g;"
        ));

        // A writer on its own connection, timing each statement.
        let writer = db.client().await;
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let update = format!("UPDATE {t} SET n = n + 1 WHERE id = 1");
        let writes = tokio::spawn(async move {
            let (mut max, mut count) = (Duration::ZERO, 0u32);
            while !*stop_rx.borrow_and_update() {
                let started = Instant::now();
                writer.batch_execute(&update).await.expect("the writer's UPDATE");
                max = max.max(started.elapsed());
                count += 1;
                let _ = tokio::time::timeout(Duration::from_millis(5), stop_rx.changed()).await;
            }
            (max, count)
        });

        let out = binary::run(&db, &["--table", &t, "--alter", "ALTER COLUMN n TYPE bigint", "--execute", "--ok-to-drop-table"]).await;
        let _ = stop_tx.send(true);
        let (max_wait, writes_done) = writes.await.unwrap();
        // One row updated every 5 ms: the checksum may repair it as lag.
        binary::assert_exit_ok(&out);
        let log = binary::stderr(&out);
        let missed: Vec<&str> = log.lines().filter(|l| l.contains("sentinel")).collect();
        assert!(writes_done > 0);
        assert!(
            max_wait < Duration::from_secs(1),
            "cut-over {i}: a write to {t} waited {max_wait:?} for the cut-over lock\n{}\n--- log:\n{log}",
            missed.join("\n")
        );
        assert!(missed.is_empty(), "cut-over {i}: attempts waited for a sentinel under the lock:\n{}\n--- log:\n{log}", missed.join("\n"));
        assert!(log.contains("cut-over committed attempt=1 "), "cut-over {i} did not commit at its first attempt:\n{log}");
        assert_eq!(
            db.psql(&format!(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = '{t}'::regclass AND attname = 'n'"
            )),
            "bigint"
        );
    }
    assert_no_slots_or_publications(&client).await;
}

// ---- a cut-over whose client goes silent ---------------------------------------------------

/// Whether process `pid` is stopped (SIGSTOP): its state in `/proc/<pid>/stat`.
pub(crate) fn stopped(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('T'))
}

/// pg-ghost stops dead under the cut-over's lock, its connections open and silent, as when the
/// network between it and the server goes: the server ends the cut-over's transaction once it
/// has sat idle past the sentinel's bound, and the application writes again while pg-ghost is
/// still stopped (they waited until the server found the client gone: hours). Continued,
/// pg-ghost finds its session gone, tries again and cuts over; the table equals its control.
#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_over_whose_client_goes_silent_lets_go_of_the_table() {
    let db = Cluster::primary().fresh_db("ft_silent");
    let table = OracleTable::create(&db, "orders", KeyKind::Identity, 3_000).await;
    let client = db.client().await;
    let oid_before = db.psql("SELECT 'orders'::regclass::oid");
    let workload = Workload::start(&db, &table, WorkloadOptions::new(2).rate(Some(40))).await;
    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;

    let args = ["--table", "orders", "--alter", "ALTER COLUMN n TYPE bigint", "--execute", "--cut-over-lock-timeout", "500ms"];
    let mut cmd = binary::command(&db, "run", &args);
    cmd.env("PG_GHOST_FAULT", "cut-over-freeze-before-commit");
    let mut run = Running::spawn_command(cmd);
    let pid = run.pid().expect("the run's pid");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !stopped(pid) {
        run.assert_running("the freeze under the cut-over's lock").await;
        assert!(Instant::now() < deadline, "pg-ghost did not reach the cut-over within 120 s");
        tokio::time::sleep(POLL).await;
    }
    // Stopped with the tables locked: the writes wait, then go on once the server ends the
    // silent transaction (7 s: the sentinel's 2 s bound and 5 s).
    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;
    assert!(stopped(pid), "pg-ghost was continued by someone else: test nothing");
    assert_eq!(db.psql("SELECT 'orders'::regclass::oid"), oid_before, "the swap committed while pg-ghost was stopped");
    assert_eq!(workload.committed_after_swap(), 0);

    let continued = std::process::Command::new("kill").args(["-CONT", &pid.to_string()]).status().expect("cannot run kill");
    assert!(continued.success());
    let out = run.wait(Duration::from_secs(120)).await;
    binary::assert_success(&out);
    assert_ne!(db.psql("SELECT 'orders'::regclass::oid"), oid_before, "no swap after pg-ghost was continued");
    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;
    let report = workload.stop().await;
    assert!(report.errors.is_empty(), "workload errors (seed {}): {:#?}", report.seed, report.errors);
    table.assert_matches_control(&client, &table.projection().map("n", "n::bigint")).await;
    assert_no_slots_or_publications(&client).await;
}
