//! Cut-over under lock contention: a session holds a lock that conflicts with the swap.
//! pg-ghost must wait no longer than its lock timeout at a time (a waiting LOCK stalls every
//! later query on the table), name the blocker, retry, and succeed once the lock is gone, or
//! give up after its retries with the original intact. With `--cut-over-kill-blockers-after`
//! it terminates the blocker instead; and a cut-over session terminated by someone else is
//! replaced rather than failing every later attempt.

use crate::binary::{self, changelog_value, narrow_table};
use crate::harness::{Cluster, TestDb};
use crate::oracle::*;
use crate::run_faults::{assert_unchanged_rows, flag_path, wait_for_state, Running, POLL};
use crate::run_refusals::assert_exit;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

const ALTER: &str = "ALTER COLUMN n TYPE bigint";
/// What pg-ghost logs for each session it terminated.
const TERMINATED: &str = "terminated a session that blocked the cut-over lock";

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

/// The blocker's session is alive: it was not terminated.
async fn assert_alive(blocker: &Client) {
    blocker.batch_execute("SELECT 1").await.expect("the blocker's session was terminated");
}

fn lines_with<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(needle)).collect()
}

fn column_type(db: &TestDb<'_>, table: &str, column: &str) -> String {
    db.psql(&format!(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = {}::regclass AND attname = {}",
        literal(&ident(table)),
        literal(column)
    ))
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

/// A blocker that never lets go, no `--cut-over-kill-blockers-after`: every attempt waits at
/// most the lock timeout, so no write waits much longer; after `--cut-over-retries` attempts
/// the run fails saying why, the blocker is left alone, and the original is as the workload
/// left it, still writable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gives_up_after_its_retries_without_stalling_writers() {
    let Contended { db, table, workload, run, blocker, blocker_pid, oid_before } = Contended::start(
        "cutover_giveup",
        "LOCK TABLE orders IN ROW EXCLUSIVE MODE",
        &["--cut-over-lock-timeout", "500ms", "--cut-over-retries", "3"],
    )
    .await;

    let out = run.wait(Duration::from_secs(60)).await;
    assert_exit(&out, 1, &["cut-over attempt 3", "could not lock"]);
    let log = binary::stderr(&out);
    assert_eq!(lines_with(&log, "cut-over attempt failed; retrying").len(), 2, "3 attempts make 2 retries:\n{log}");
    assert!(log.contains(&format!("blocker_pid={blocker_pid}")), "the blocker (pid {blocker_pid}) is not named:\n{log}");
    assert!(lines_with(&log, TERMINATED).is_empty(), "a session was terminated without the flag:\n{log}");
    assert_alive(&blocker).await;

    // The workload kept writing through the whole run, retries included.
    finish_workload(workload, Some(Duration::from_secs(2))).await;
    blocker.batch_execute("COMMIT").await.unwrap();
    let client = db.client().await;
    assert_eq!(db.psql("SELECT 'orders'::regclass::oid"), oid_before, "the original was swapped");
    assert_eq!(column_type(&db, "orders", "n"), "integer");
    table.assert_matches_control(&client, &table.projection()).await;
    assert_no_slots_or_publications(&client).await;
}

/// `--cut-over-kill-blockers-after 1s` with a blocker that never lets go: once the attempts
/// have gone on for 1 s the blocker is terminated (its session is gone, the log names it),
/// no workload session is, and the cut-over commits with the data intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_blockers_after_terminates_the_blocker_and_cuts_over() {
    let Contended { db, table, workload, run, blocker, blocker_pid, oid_before } = Contended::start(
        "cutover_kill",
        "LOCK TABLE orders IN ROW EXCLUSIVE MODE",
        &["--cut-over-lock-timeout", "500ms", "--cut-over-kill-blockers-after", "1s"],
    )
    .await;

    let out = run.wait(Duration::from_secs(60)).await;
    binary::assert_success(&out);
    let log = binary::stderr(&out);
    let killed = lines_with(&log, TERMINATED);
    assert_eq!(killed.len(), 1, "one session was in the way:\n{log}");
    assert!(killed[0].contains(&format!("blocker_pid={blocker_pid} ")), "the terminated session is not the blocker (pid {blocker_pid}):\n{log}");
    // The first attempt gave up after 500 ms, before the 1 s were up.
    let first_retry = log.find("cut-over attempt failed; retrying").unwrap_or_else(|| panic!("no attempt failed before the kill:\n{log}"));
    assert!(first_retry < log.find(TERMINATED).unwrap(), "the blocker was terminated before the first attempt gave up:\n{log}");
    let err = blocker.batch_execute("SELECT 1").await.expect_err("the blocker's session survived");
    assert!(err.is_closed() || err.code() == Some(&tokio_postgres::error::SqlState::ADMIN_SHUTDOWN), "the blocker saw {err:?}");

    finish_workload(workload, Some(Duration::from_secs(2))).await;
    let client = db.client().await;
    assert_ne!(db.psql("SELECT 'orders'::regclass::oid"), oid_before, "no swap");
    table.assert_matches_control(&client, &table.projection().map("n", "n::bigint")).await;
    assert_sequences_ahead(&client, &table.qualified()).await;
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

// ---- a role that may not terminate the blocker ----------------------------------------------

const ROLE_PASSWORD: &str = "kill-blockers-pw";

/// A login role with what pg-ghost needs (REPLICATION, owner of the table, CREATE on schema
/// and database) but not the right to terminate a superuser's session; dropped afterwards.
struct Role<'a> {
    db: &'a TestDb<'static>,
    name: String,
}

impl<'a> Role<'a> {
    fn create(db: &'a TestDb<'static>, table: &str) -> Role<'a> {
        // Roles are cluster-wide: the process id keeps parallel test runs apart.
        let name = format!("kill_blockers_{}", std::process::id());
        db.psql(&format!(
            "CREATE ROLE {name} LOGIN REPLICATION PASSWORD '{ROLE_PASSWORD}';
             ALTER TABLE {table} OWNER TO {name};
             GRANT CREATE ON SCHEMA public TO {name}; GRANT CREATE ON DATABASE {db} TO {name};",
            table = ident(table),
            db = ident(&db.name)
        ));
        Role { db, name }
    }
}

impl Drop for Role<'_> {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| {
            self.db.psql(&format!("DROP OWNED BY {}", self.name));
            self.db.cluster.psql("postgres", &format!("DROP ROLE IF EXISTS {}", self.name));
        });
    }
}

/// The blocker is a superuser's session, pg-ghost's role may not terminate it: pg-ghost says
/// so once, keeps retrying without it, and fails after its retries; the blocker lives on and
/// the original is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_blockers_without_the_privilege_keeps_retrying() {
    let db = Cluster::primary().fresh_db("cutover_kill_denied");
    narrow_table(&db, "t", 2_000);
    let role = Role::create(&db, "t");
    let client = db.client().await;
    let flag = flag_path(&db, "postpone");
    std::fs::write(&flag, b"").unwrap();

    let conninfo = db.cluster.conninfo_as(&role.name, ROLE_PASSWORD, &db.name);
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_pg-ghost"));
    cmd.args(["run", "--conn", &conninfo, "--table", "t", "--alter", ALTER, "--execute"])
        .args(["--postpone-cut-over-flag-file", flag.to_str().unwrap()])
        .args(["--cut-over-lock-timeout", "500ms", "--cut-over-retries", "2", "--cut-over-kill-blockers-after", "100ms"])
        .env_remove("PGHOST")
        .env_remove("PGPORT")
        .env_remove("PGUSER")
        .env_remove("PGPASSWORD")
        .env_remove("PGDATABASE")
        .kill_on_drop(true);
    let run = tokio::spawn(cmd.output());

    let deadline = Instant::now() + Duration::from_secs(60);
    while changelog_value(&client, "t", "state").await.as_deref() != Some("postponed") {
        if run.is_finished() {
            let out = run.await;
            panic!("pg-ghost exited before postponing: {out:?}");
        }
        assert!(Instant::now() < deadline, "the run never postponed within 60 s");
        tokio::time::sleep(POLL).await;
    }
    let blocker = db.client().await;
    blocker.batch_execute("BEGIN; LOCK TABLE t IN ROW EXCLUSIVE MODE").await.unwrap();
    let blocker_pid: i32 = blocker.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    std::fs::remove_file(&flag).unwrap();

    let out = tokio::time::timeout(Duration::from_secs(60), run).await.expect("pg-ghost did not finish").unwrap().unwrap();
    assert_exit(&out, 1, &["could not lock"]);
    let log = binary::stderr(&out);
    let denied = lines_with(&log, "cannot terminate a session that blocks the cut-over lock");
    assert_eq!(denied.len(), 1, "the refusal is not reported exactly once over both attempts:\n{log}");
    assert!(denied[0].contains(&format!("blocker_pid={blocker_pid} ")), "{log}");
    assert_eq!(lines_with(&log, "cut-over attempt failed; retrying").len(), 1, "{log}");
    assert!(lines_with(&log, TERMINATED).is_empty(), "{log}");
    assert_alive(&blocker).await;
    blocker.batch_execute("COMMIT").await.unwrap();

    assert_eq!(column_type(&db, "t", "n"), "integer");
    assert_unchanged_rows(&client, "t", &["id", "n", "pad"]).await;
    assert_no_slots_or_publications(&client).await;
    drop(role);
}

// ---- a write caught between two tables the cut-over locks ----------------------------------

/// The cut-over locks the table and the tables whose foreign keys move in one LOCK. A write
/// that holds the referencing table and then checks its foreign key waits behind the LOCK for
/// the table, while the LOCK waits for the referencing table: a deadlock, and PostgreSQL aborts
/// whichever session looks for it first. The write here queues while the LOCK still waits for
/// a reader of the table, so with a lock wait as long as `deadlock_timeout` the write would be
/// the one to look, and be aborted. pg-ghost must give up first, and the write go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_between_two_locked_tables_is_never_the_deadlock_victim() {
    let db = Cluster::primary().fresh_db("cutover_deadlock");
    db.psql(
        "CREATE TABLE parent (id int PRIMARY KEY, n int NOT NULL);
         INSERT INTO parent SELECT g, g FROM generate_series(1, 1000) g;
         CREATE TABLE child (id int PRIMARY KEY, parent_id int NOT NULL REFERENCES parent, note text);
         INSERT INTO child SELECT g, g, '' FROM generate_series(1, 100) g;",
    );
    assert_eq!(db.psql("SHOW deadlock_timeout"), "1s");
    let flag = flag_path(&db, "postpone");
    std::fs::write(&flag, b"").unwrap();
    let args = ["--table", "parent", "--alter", ALTER, "--execute", "--cut-over-lock-timeout", "1s", "--postpone-cut-over-flag-file", flag.to_str().unwrap()];
    let mut run = Running::spawn(&db, "run", &args);
    let watcher = db.client().await;
    wait_for_state(&watcher, &mut run, "parent", "postponed", Duration::from_secs(60)).await;

    let reader = db.client().await;
    reader.batch_execute("BEGIN; SELECT count(*) FROM parent").await.unwrap();
    let writer = db.client().await;
    writer.batch_execute("BEGIN; UPDATE child SET note = 'held' WHERE id = 1").await.unwrap();
    std::fs::remove_file(&flag).unwrap();
    waiting_cut_over_pid(&db, &mut run, None).await;

    // Its foreign-key check takes ROW SHARE on parent: it queues behind the waiting LOCK.
    let insert = tokio::spawn(async move {
        let r = writer.batch_execute("INSERT INTO child VALUES (1001, 2, 'new')").await;
        (writer, r)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The LOCK now gets parent and waits for child, which the writer holds.
    reader.batch_execute("COMMIT").await.unwrap();
    let (writer, inserted) = tokio::time::timeout(Duration::from_secs(20), insert).await.expect("the write never finished").unwrap();
    if let Err(e) = inserted {
        panic!("the write was aborted: {}", crate::oracle::compare::db_message(&e));
    }
    writer.batch_execute("COMMIT").await.unwrap();

    let out = run.wait(Duration::from_secs(60)).await;
    binary::assert_success(&out);
    assert_eq!(column_type(&db, "parent", "n"), "bigint");
    assert_eq!(db.psql("SELECT note FROM child WHERE id = 1001"), "new");
    assert_eq!(db.psql("SELECT confrelid::regclass::text FROM pg_constraint WHERE conrelid = 'child'::regclass AND contype = 'f'"), "parent");
}

// ---- a write caught by the ghost's creation ------------------------------------------------

/// The pid of a pg-ghost session whose lock request waits (other than the cut-over's: any).
async fn waiting_pg_ghost_pid(db: &TestDb<'_>, run: &mut Running) -> i32 {
    let sql = "SELECT a.pid FROM pg_locks l JOIN pg_stat_activity a USING (pid)
                WHERE NOT l.granted AND a.application_name LIKE 'pg-ghost%' AND a.datname = current_database() LIMIT 1";
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(pid) = db.psql(sql).parse::<i32>() {
            return pid;
        }
        run.assert_running("a pg-ghost session to wait for a lock").await;
        assert!(Instant::now() < deadline, "no pg-ghost session waited for a lock within 60 s");
        tokio::time::sleep(POLL).await;
    }
}

/// DAViCal's `dav_binding` as it was when an application write on it was chosen as a deadlock
/// victim: foreign keys to `principal` (the older one) and `collection`, and a CHECK calling a
/// function that reads `collection`. An INSERT reads `collection` in its CHECK, then checks its
/// foreign keys (ROW SHARE on `principal`). The ghost's creation adds the original's foreign
/// keys to the ghost and drops them again for the copy, which takes ACCESS EXCLUSIVE on each
/// referenced table in turn: holding `principal`, it waited for `collection`, which the write
/// held, and the write then waited for `principal`. pg-ghost's wait began first, so its one
/// deadlock check (after `deadlock_timeout`) came before the cycle closed and found nothing; the
/// write's came later and aborted the write. pg-ghost must take the referenced tables all at
/// once with a wait shorter than any write's `deadlock_timeout`, holding nothing a write
/// waits for while it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_is_never_the_deadlock_victim_of_the_ghosts_creation() {
    let db = Cluster::primary().fresh_db("creation_deadlock");
    db.psql(
        "CREATE TABLE principal (principal_id int8 PRIMARY KEY, displayname text);
         INSERT INTO principal SELECT g, 'p' || g FROM generate_series(1, 100) g;
         CREATE TABLE collection (collection_id int8 PRIMARY KEY, dav_name text UNIQUE NOT NULL);
         INSERT INTO collection SELECT g, '/c' || g || '/' FROM generate_series(1, 100) g;
         CREATE FUNCTION real_path_exists(in_path text) RETURNS boolean LANGUAGE plpgsql AS $$
           BEGIN RETURN EXISTS (SELECT 1 FROM collection WHERE dav_name = in_path); END $$;
         CREATE TABLE dav_binding (
           bind_id int8 PRIMARY KEY,
           dav_owner_id int8 NOT NULL REFERENCES principal (principal_id) ON UPDATE CASCADE ON DELETE CASCADE,
           bound_source_id int8 REFERENCES collection (collection_id) ON UPDATE CASCADE ON DELETE CASCADE,
           dav_name text UNIQUE NOT NULL CONSTRAINT dav_name_does_not_exist CHECK (NOT real_path_exists(dav_name)),
           n int NOT NULL);
         INSERT INTO dav_binding SELECT g, g, g, '/b' || g || '/', g FROM generate_series(1, 100) g;",
    );
    assert_eq!(db.psql("SHOW deadlock_timeout"), "1s");
    // The write's CHECK has read `collection` when pg-ghost starts.
    let writer = db.client().await;
    writer.batch_execute("BEGIN; SELECT real_path_exists('/b101/')").await.unwrap();
    let mut run = Running::spawn(&db, "run", &["--table", "dav_binding", "--alter", ALTER, "--execute"]);
    waiting_pg_ghost_pid(&db, &mut run).await;
    // Past pg-ghost's own deadlock check, as when the write's foreign-key check came late.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let insert = writer.batch_execute("INSERT INTO dav_binding VALUES (101, 1, 1, '/b101/', 101)");
    let inserted = tokio::time::timeout(Duration::from_secs(20), insert).await.expect("the write never finished");
    if let Err(e) = inserted {
        panic!("the write was aborted: {}", crate::oracle::compare::db_message(&e));
    }
    writer.batch_execute("COMMIT").await.unwrap();

    let out = run.wait(Duration::from_secs(60)).await;
    binary::assert_success(&out);
    assert_eq!(column_type(&db, "dav_binding", "n"), "bigint");
    assert_eq!(db.psql("SELECT dav_name FROM dav_binding WHERE bind_id = 101"), "/b101/");
}

// ---- what the swap changes besides the tables ----------------------------------------------

/// Runs `alter` on `table` with a long lock timeout while a blocker holds the table, so that
/// the cut-over's LOCK waits; then the application session, after `setup` in its open
/// transaction, runs `statement`, which queues behind the LOCK. It waits long enough that its
/// deadlock check would come before the cut-over's; then the blocker lets go. The statement
/// must go through and the run succeed.
async fn queued_behind_the_cut_over(db: &TestDb<'static>, table: &str, alter: &str, setup: &str, statement: &'static str) {
    let flag = flag_path(db, "postpone");
    std::fs::write(&flag, b"").unwrap();
    let args = ["--table", table, "--alter", alter, "--execute", "--cut-over-lock-timeout", "5s", "--postpone-cut-over-flag-file", flag.to_str().unwrap()];
    let mut run = Running::spawn(db, "run", &args);
    let watcher = db.client().await;
    wait_for_state(&watcher, &mut run, table, "postponed", Duration::from_secs(60)).await;

    let blocker = db.client().await;
    blocker.batch_execute(&format!("BEGIN; LOCK TABLE {} IN ACCESS SHARE MODE", ident(table))).await.unwrap();
    let app = db.client().await;
    app.batch_execute(&format!("BEGIN; {setup}")).await.unwrap();
    std::fs::remove_file(&flag).unwrap();
    waiting_cut_over_pid(db, &mut run, None).await;

    let queued = tokio::spawn(async move {
        let r = app.batch_execute(statement).await;
        (app, r)
    });
    tokio::time::sleep(Duration::from_millis(900)).await;
    blocker.batch_execute("COMMIT").await.unwrap();
    let (app, done) = tokio::time::timeout(Duration::from_secs(20), queued).await.expect("the statement never finished").unwrap();
    if let Err(e) = done {
        panic!("the application's statement was aborted: {}", crate::oracle::compare::db_message(&e));
    }
    app.batch_execute("COMMIT").await.unwrap();
    binary::assert_success(&run.wait(Duration::from_secs(60)).await);
}

/// A view on the table is replaced in the swap (`CREATE OR REPLACE VIEW`, ACCESS EXCLUSIVE on
/// the view), which LOCK TABLE on the table does not take. A query on the view locks the view,
/// then the table: one that arrives while the cut-over's LOCK waits holds the view and queues
/// for the table; once the LOCK is granted the swap waits for the view, and the query, waiting
/// since before, looks for the deadlock first and is aborted, whatever the cut-over's own
/// `deadlock_timeout`. The cut-over must take the view in its bounded wait, with the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_on_a_view_the_swap_replaces_is_never_the_deadlock_victim() {
    let db = Cluster::primary().fresh_db("cutover_view_deadlock");
    db.psql(
        "CREATE TABLE accounts (id int PRIMARY KEY, n int NOT NULL);
         INSERT INTO accounts SELECT g, g FROM generate_series(1, 1000) g;
         CREATE VIEW account_totals AS SELECT id, n FROM accounts;",
    );
    queued_behind_the_cut_over(&db, "accounts", "ADD COLUMN note text", "SELECT 1", "SELECT count(*) FROM account_totals").await;
    assert_eq!(db.psql("SELECT count(*) FROM account_totals"), "1000");
    assert_eq!(db.psql("SELECT count(*) FROM pg_attribute WHERE attrelid = 'accounts'::regclass AND attname = 'note'"), "1");
}

/// The swap renames the table's identity sequence (ACCESS EXCLUSIVE on it), which LOCK TABLE
/// cannot take. A transaction that took a value from it (`nextval`, ROW EXCLUSIVE until it
/// ends) and then writes the table queues behind the LOCK; once the LOCK is granted the rename
/// waits for it. The cut-over must take the sequence in its bounded wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_took_a_sequence_value_is_never_the_deadlock_victim() {
    let db = Cluster::primary().fresh_db("cutover_sequence_deadlock");
    db.psql(
        "CREATE TABLE tickets (id int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, n int NOT NULL);
         INSERT INTO tickets (n) SELECT g FROM generate_series(1, 1000) g;",
    );
    let statement = "INSERT INTO tickets (id, n) VALUES (100001, 0)";
    queued_behind_the_cut_over(&db, "tickets", "ADD COLUMN note text", "SELECT nextval(pg_get_serial_sequence('tickets', 'id'))", statement).await;
    assert_eq!(db.psql("SELECT count(*) FROM tickets"), "1001");
    assert_eq!(db.psql("SELECT pg_get_serial_sequence('tickets', 'id')"), "public.tickets_id_seq");
}

// ---- the foreign keys added back after the copy ----------------------------------------------

/// A foreign key of the table, set aside for the copy, is added back to the ghost with a
/// bounded wait: while a long transaction that wrote the referenced table holds it, pg-ghost's
/// request gives up after `--cut-over-lock-timeout` and tries again, so other writes to the
/// referenced table go through meanwhile instead of queueing behind it; the run completes once
/// the long transaction ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_foreign_key_back_never_holds_up_writes_to_the_referenced_table() {
    let db = Cluster::primary().fresh_db("cl_fk_back");
    accounts_and_entries(&db, 20_000);
    let client = db.client().await;
    let args = ["--table", "entries", "--alter", "ALTER COLUMN n TYPE bigint", "--execute", "--cut-over-lock-timeout", "200ms", "--chunk-size", "500"];
    let mut run = Running::spawn(&db, "run", &args);
    wait_for_state(&client, &mut run, "entries", "copy", Duration::from_secs(60)).await;
    // A long transaction that wrote the referenced table: ROW EXCLUSIVE, which adding a
    // foreign key that references the table (SHARE ROW EXCLUSIVE) must wait for.
    let long = db.client().await;
    long.batch_execute("BEGIN; UPDATE accounts SET balance = balance + 1 WHERE id = 1").await.unwrap();

    wait_until_pg_ghost_waits_for(&client, &mut run, "accounts").await;
    assert_write_gets_through(&db, "UPDATE accounts SET balance = balance + 1 WHERE id = 2").await;
    long.batch_execute("COMMIT").await.unwrap();

    let out = run.wait(Duration::from_secs(60)).await;
    binary::assert_success(&out);
    let log = binary::stderr(&out);
    assert!(log.contains("adding a foreign key to the ghost: retrying"), "{log}");
    assert_eq!(column_type(&db, "entries", "n"), "bigint");
    assert_eq!(
        db.psql("SELECT confrelid::regclass::text || ' ' || convalidated FROM pg_constraint WHERE conrelid = 'entries'::regclass AND contype = 'f'"),
        "accounts true"
    );
}

/// The old table, dropped after the swap (`--ok-to-drop-table`), gives up its foreign keys
/// first, each with a bounded wait: while a long transaction reads the referenced table,
/// pg-ghost's ACCESS EXCLUSIVE request on it gives up and tries again, so other sessions'
/// writes to it go through meanwhile; the old table is gone once the long transaction ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_old_table_never_holds_up_the_tables_it_references() {
    let db = Cluster::primary().fresh_db("cl_drop_old");
    accounts_and_entries(&db, 2_000);
    let client = db.client().await;
    let flag = flag_path(&db, "postpone");
    std::fs::write(&flag, b"").unwrap();
    let args = [
        "--table", "entries", "--alter", "ALTER COLUMN n TYPE bigint", "--execute", "--ok-to-drop-table",
        "--cut-over-lock-timeout", "200ms", "--postpone-cut-over-flag-file", flag.to_str().unwrap(),
    ];
    let mut run = Running::spawn(&db, "run", &args);
    wait_for_state(&client, &mut run, "entries", "postponed", Duration::from_secs(60)).await;
    // A long reader of the referenced table: ACCESS SHARE, which dropping a foreign key that
    // references the table (ACCESS EXCLUSIVE there) must wait for.
    let long = db.client().await;
    long.batch_execute("BEGIN; SELECT count(*) FROM accounts").await.unwrap();
    std::fs::remove_file(&flag).unwrap();

    wait_until_pg_ghost_waits_for(&client, &mut run, "accounts").await;
    assert_write_gets_through(&db, "UPDATE accounts SET balance = balance + 1 WHERE id = 2").await;
    long.batch_execute("COMMIT").await.unwrap();

    let out = run.wait(Duration::from_secs(60)).await;
    binary::assert_success(&out);
    let log = binary::stderr(&out);
    assert!(log.contains("dropping a foreign key: retrying"), "{log}");
    assert_eq!(column_type(&db, "entries", "n"), "bigint");
    assert_eq!(db.psql("SELECT count(*) FROM pg_class WHERE relname = '_entries_del'"), "0", "the old table was not dropped");
    assert_eq!(
        db.psql("SELECT confrelid::regclass::text FROM pg_constraint WHERE conrelid = 'entries'::regclass AND contype = 'f'"),
        "accounts"
    );
}

/// `entries` (`rows` of them), whose foreign key references `accounts` (10 rows).
fn accounts_and_entries(db: &TestDb<'_>, rows: u32) {
    db.psql(&format!(
        "CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL);
         INSERT INTO accounts SELECT i, 0 FROM generate_series(1, 10) i;
         CREATE TABLE entries (id int PRIMARY KEY, account int NOT NULL REFERENCES accounts, n int NOT NULL);
         INSERT INTO entries SELECT i, i % 10 + 1, i FROM generate_series(1, {rows}) i;"
    ));
}

/// Waits until one of pg-ghost's sessions waits for a lock on `table`.
async fn wait_until_pg_ghost_waits_for(client: &Client, run: &mut Running, table: &str) {
    let waiting = "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                    WHERE NOT l.granted AND l.relation = to_regclass($1) AND a.application_name LIKE 'pg-ghost%'";
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.query_one(waiting, &[&table]).await.unwrap().get::<_, i64>(0) == 0 {
        run.assert_running(&format!("pg-ghost to wait for a lock on {table}")).await;
        assert!(Instant::now() < deadline, "pg-ghost never waited for a lock on {table}");
        tokio::time::sleep(POLL).await;
    }
}

/// `sql`, run by another session while pg-ghost waits for a lock, is not held up behind it
/// (for as long as a statement timeout of 3 s; pg-ghost's waits here are 200 ms).
async fn assert_write_gets_through(db: &TestDb<'_>, sql: &str) {
    let writer = db.client().await;
    writer
        .batch_execute(&format!("SET statement_timeout = '3s'; {sql}"))
        .await
        .unwrap_or_else(|e| panic!("{sql} was held up behind pg-ghost: {}", crate::oracle::compare::db_message(&e)));
}
