//! Lost connections, through the binary, under the oracle workload: `pg_terminate_backend` on
//! each of pg-ghost's sessions in turn (stream, apply, copy, the main session and the
//! throttler's), and a fast restart of the server, all during the copy. Each time the run
//! must reconnect, carry on and cut over, and the migrated table must then equal the control
//! table row for row, with no slot or publication left.
//!
//! pg-ghost's sessions are told apart by their application names. Every wait is on a
//! condition the test can see, with a deadline.

use crate::binary::{self, changelog_value};
use crate::harness::{Cluster, TestDb};
use crate::oracle::*;
use crate::run_faults::{wait_for_copy_past, wait_for_state, Running, POLL};
use std::process::Output;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

const TABLE: &str = "orders";
/// Enough rows, in chunks of 100 with a pause after each, for a copy of several seconds.
const ROWS: i64 = 8_000;
const ALTER: &str = "ALTER COLUMN n TYPE bigint";
/// Key the copy must have passed before a connection is cut: well into the copy.
const CUT_AFTER_KEY: i64 = 1_500;

fn run_args() -> Vec<&'static str> {
    vec![
        "--table", TABLE, "--alter", ALTER, "--execute",
        "--chunk-size", "100", "--chunk-time", "1ms", "--nice-ratio", "2", "--copy-workers", "2",
        "--status-interval", "1s",
    ]
}

fn workload_options() -> WorkloadOptions {
    WorkloadOptions::new(2).rate(Some(40))
}

/// The backends of pg-ghost's sessions named `application_name`, in this test's database only:
/// the tests on the shared primary run side by side.
async fn backends(client: &Client, application_name: &str) -> Vec<i32> {
    client
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database() ORDER BY pid",
            &[&application_name],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Terminates the backends in `pids`, waiting until they are gone. One may already be gone
/// by the time its turn comes: pg-ghost stops its other sessions once it has lost one.
async fn terminate(client: &Client, pids: &[i32]) {
    let terminated: i64 = client
        .query_one(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid) OR NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = p.pid))
               FROM unnest($1::int4[]) AS p(pid)",
            &[&pids],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(terminated, pids.len() as i64, "could not terminate every one of {pids:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: i64 =
            client.query_one("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)", &[&pids]).await.unwrap().get(0);
        if left == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "backends {pids:?} still there 10 s after pg_terminate_backend");
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the sessions named `application_name` are back, none of them one of `old`.
async fn wait_for_new_backends(client: &Client, run: &mut Running, application_name: &str, old: &[i32]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = backends(client, application_name).await;
        if !now.is_empty() && now.iter().all(|p| !old.contains(p)) {
            return;
        }
        run.assert_running(&format!("new {application_name:?} sessions")).await;
        assert!(Instant::now() < deadline, "no new {application_name:?} session within 30 s (now {now:?}, terminated {old:?})");
        tokio::time::sleep(POLL).await;
    }
}

/// Starts the run under the workload and waits until its copy is well under way.
async fn start_mid_copy(db: &TestDb<'_>, client: &Client) -> Running {
    let mut run = Running::spawn(db, "run", &run_args());
    wait_for_state(client, &mut run, TABLE, "copy", Duration::from_secs(60)).await;
    wait_for_copy_past(client, &mut run, TABLE, CUT_AFTER_KEY, Duration::from_secs(60)).await;
    run
}

/// The cut happened during the copy, not after it.
async fn assert_still_copying(client: &Client, run: &mut Running) {
    run.assert_running("the copy to go on after the cut").await;
    let state = changelog_value(client, TABLE, "state").await;
    assert_eq!(state.as_deref(), Some("copy"), "the copy was over before the connection was cut: test nothing");
}

/// The run succeeded, said it reconnected `application_name`'s session, and the migrated table
/// equals its control; nothing of the run's stream is left.
async fn assert_reconnected_and_correct(out: &Output, application_name: &str, table: &OracleTable, workload: Workload, client: &Client) {
    binary::assert_success(out);
    let log = binary::stderr(out);
    for line in log.lines().filter(|l| l.contains("connection lost") || l.contains("reconnected")) {
        eprintln!("{line}");
    }
    let name = format!("connection={application_name} ");
    assert!(
        log.lines().any(|l| l.contains("connection lost") && l.contains(&name)),
        "the log does not say that {application_name:?} was lost:\n{log}"
    );
    assert!(
        log.lines().any(|l| l.contains("reconnected") && l.contains(&name)),
        "the log does not say that {application_name:?} reconnected:\n{log}"
    );
    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;
    let report = workload.stop().await;
    assert!(report.errors.is_empty(), "workload errors (seed {}): {:#?}", report.seed, report.errors);
    assert!(report.committed_after_swap > 0, "no writes after the swap: {report:?}");
    table.assert_matches_control(client, &table.projection().map("n", "n::bigint")).await;
    assert_no_slots_or_publications(client).await;
}

/// Cuts the sessions named in `cut` mid-copy on the shared primary and checks that the run
/// carries on to a correct result, each session back under a new backend, and that the log
/// reports the loss and the reconnection of the first one.
async fn survives_terminated(prefix: &str, cut: &[&str]) {
    let db = Cluster::primary().fresh_db(prefix);
    let table = OracleTable::create(&db, TABLE, KeyKind::Identity, ROWS).await;
    let client = db.client().await;
    let workload = Workload::start(&db, &table, workload_options()).await;
    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;

    let mut run = start_mid_copy(&db, &client).await;
    let mut victims = Vec::new();
    for name in cut {
        let pids = backends(&client, name).await;
        assert!(!pids.is_empty(), "no session named {name:?} during the copy");
        victims.push((*name, pids));
    }
    let all: Vec<i32> = victims.iter().flat_map(|(_, pids)| pids.iter().copied()).collect();
    terminate(&client, &all).await;
    assert_still_copying(&client, &mut run).await;
    for (name, pids) in &victims {
        wait_for_new_backends(&client, &mut run, name, pids).await;
    }

    let out = run.wait(Duration::from_secs(180)).await;
    assert_reconnected_and_correct(&out, cut[0], &table, workload, &client).await;
}

/// The walsender: the stream starts again from the slot's confirmed position; what it had
/// half-received is sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_connection_terminated_mid_copy() {
    survives_terminated("rc_stream", &["pg-ghost stream"]).await;
}

/// Both copy workers and the chunker: the chunks in flight roll back and are copied again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_connections_terminated_mid_copy() {
    survives_terminated("rc_copy", &["pg-ghost copy"]).await;
}

/// The main session (state, markers, cleanup) and the throttler's two (collector, heartbeat):
/// the first is opened again before its next use, the others at their next tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn main_and_throttler_sessions_terminated_mid_copy() {
    survives_terminated("rc_main", &["pg-ghost", "pg-ghost throttle", "pg-ghost heartbeat"]).await;
}

/// With `--reconnect-timeout 0s` a lost connection stops the run cleanly instead: here the
/// stream and the main session are cut together, so the cleanup needs a session of its own to
/// drop slot and publication. The original is untouched and still equals its control.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_off_stops_cleanly() {
    let db = Cluster::primary().fresh_db("rc_off");
    let table = OracleTable::create(&db, TABLE, KeyKind::Identity, ROWS).await;
    let client = db.client().await;
    let workload = Workload::start(&db, &table, workload_options()).await;
    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;

    let mut args = run_args();
    args.extend(["--reconnect-timeout", "0s"]);
    let mut run = Running::spawn(&db, "run", &args);
    wait_for_state(&client, &mut run, TABLE, "copy", Duration::from_secs(60)).await;
    wait_for_copy_past(&client, &mut run, TABLE, CUT_AFTER_KEY, Duration::from_secs(60)).await;
    let mut victims = backends(&client, "pg-ghost stream").await;
    victims.extend(backends(&client, "pg-ghost").await);
    assert_eq!(victims.len(), 2, "stream and main session: {victims:?}");
    terminate(&client, &victims).await;

    let out = run.wait(Duration::from_secs(60)).await;
    binary::assert_failure(&out, 1, "terminating connection");
    assert!(!binary::stderr(&out).contains("reconnected"), "reconnected with reconnecting off:\n{}", binary::stderr(&out));
    assert_no_slots_or_publications(&client).await;
    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;
    let report = workload.stop().await;
    assert!(report.errors.is_empty(), "workload errors (seed {}): {:#?}", report.seed, report.errors);
    assert_eq!(report.committed_after_swap, 0, "swapped although the run failed");
    table.assert_matches_control(&client, &table.projection()).await;
}

/// The apply session, caught in a flush when possible: the flush's transaction rolls back and
/// its keys are flushed again on a new session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_connection_terminated_while_flushing() {
    const APPLY: &str = "pg-ghost apply";
    let db = Cluster::primary().fresh_db("rc_apply");
    let table = OracleTable::create(&db, TABLE, KeyKind::Identity, ROWS).await;
    let client = db.client().await;
    // Flat out, so that flushes follow one another.
    let workload = Workload::start(&db, &table, WorkloadOptions::new(2).rate(None)).await;
    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;

    let mut run = start_mid_copy(&db, &client).await;
    // Not long: the copy must still be running when the session is cut (during a fresh copy
    // the flusher leaves keys the copy has not reached to it, so flushes are short and rare).
    let victim = flushing_apply_session(&client, Duration::from_secs(2)).await;
    let victims = match victim {
        Some(pid) => vec![pid],
        None => {
            eprintln!("no flush caught in the act within 2 s: terminating the idle apply session");
            backends(&client, APPLY).await
        }
    };
    assert!(!victims.is_empty(), "no apply session during the copy");
    terminate(&client, &victims).await;
    assert_still_copying(&client, &mut run).await;
    wait_for_new_backends(&client, &mut run, APPLY, &victims).await;

    let out = run.wait(Duration::from_secs(180)).await;
    assert_reconnected_and_correct(&out, APPLY, &table, workload, &client).await;
}

/// The apply session's pid while it runs a statement or holds a transaction open (a flush).
async fn flushing_apply_session(client: &Client, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let row = client
            .query_opt(
                "SELECT pid FROM pg_stat_activity
                  WHERE application_name = 'pg-ghost apply' AND datname = current_database() AND state <> 'idle' LIMIT 1",
                &[],
            )
            .await
            .unwrap();
        if let Some(row) = row {
            return Some(row.get(0));
        }
    }
    None
}

/// `pg_ctl restart -m fast` mid-copy, on a cluster of its own: every session dies at once,
/// the server is away for a while, and the slot survives. The oracle workload does not ride
/// out a restart, so it is stopped before and a new one started after; the table and its
/// control stay equal through both, so the final comparison still holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_fast_restart_mid_copy() {
    let cluster = Cluster::start("reconnect_restart");
    let db = cluster.fresh_db("rc_restart");
    let table = OracleTable::create(&db, TABLE, KeyKind::Identity, ROWS).await;
    let client = db.client().await;
    let workload = Workload::start(&db, &table, workload_options()).await;
    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;

    let mut run = start_mid_copy(&db, &client).await;
    let before = workload.stop().await;
    assert!(before.errors.is_empty(), "workload errors before the restart (seed {}): {:#?}", before.seed, before.errors);
    assert_still_copying(&client, &mut run).await;
    let slot_before = db.psql("SELECT slot_name FROM pg_replication_slots");
    drop(client);

    // pg_ctl blocks; the run's log keeps being read on the other worker thread meanwhile.
    tokio::task::block_in_place(|| cluster.restart());

    let client = db.client().await;
    run.assert_running("the server to come back").await;
    assert_eq!(db.psql("SELECT slot_name FROM pg_replication_slots"), slot_before, "the slot did not survive the restart");
    let workload = Workload::start(&db, &table, workload_options()).await;
    workload.wait_for_more_commits(20, Duration::from_secs(60)).await;

    let out = run.wait(Duration::from_secs(240)).await;
    assert_reconnected_and_correct(&out, "pg-ghost stream", &table, workload, &client).await;
    let log = binary::stderr(&out);
    for session in ["pg-ghost apply", "pg-ghost copy", "pg-ghost"] {
        let name = format!("connection={session} ");
        assert!(
            log.lines().any(|l| l.contains("reconnected") && l.contains(&name)),
            "the log does not say that {session:?} reconnected after the restart:\n{log}"
        );
    }
}

/// The same restart with the workload writing flat out through it, so that pg-ghost has changes
/// it has received and not flushed yet when the server stops. A walsender stopping for a
/// shutdown waits until its client confirms everything it sent, which pg-ghost cannot do
/// without a session to flush with: it must let the stream go, or the restart waits out
/// pg_ctl's 60 s and the run its reconnect timeout. The workload's own transactions cut by
/// the restart rolled back on both sides (or committed on both), so table and control still
/// agree; the workload sessions that cannot reconnect while the server is down just end, and
/// a new workload writes after the restart. Whether changes are pending at the very moment of
/// the shutdown is up to timing: most runs have some.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_fast_restart_under_writes() {
    let cluster = Cluster::start("reconnect_restart_writes");
    let db = cluster.fresh_db("rc_restart_writes");
    let table = OracleTable::create(&db, TABLE, KeyKind::Identity, ROWS).await;
    let client = db.client().await;
    let through = Workload::start(&db, &table, WorkloadOptions::new(2).rate(None)).await;
    through.wait_for_more_commits(20, Duration::from_secs(30)).await;

    let mut run = start_mid_copy(&db, &client).await;
    assert_still_copying(&client, &mut run).await;
    drop(client);
    // pg_ctl gives up (and the harness panics) if the shutdown waits 60 s for pg-ghost.
    tokio::task::block_in_place(|| cluster.restart());
    let report = through.stop().await;
    let connection_lost = ["(57P01)", "connection closed", "connect:", "(57P03)"];
    let other: Vec<&String> = report.errors.iter().filter(|e| !connection_lost.iter().any(|c| e.contains(c))).collect();
    assert!(other.is_empty(), "workload errors besides lost connections (seed {}): {other:#?}", report.seed);

    let client = db.client().await;
    run.assert_running("the server to come back").await;
    let workload = Workload::start(&db, &table, workload_options()).await;
    workload.wait_for_more_commits(20, Duration::from_secs(60)).await;
    let out = run.wait(Duration::from_secs(240)).await;
    assert_reconnected_and_correct(&out, "pg-ghost apply", &table, workload, &client).await;
}

/// The checksum's session, terminated while it waits to read the ghost (the test holds the
/// ghost locked for a moment): the range is compared again on a new session, and the run
/// completes with the original's rows in the migrated table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checksum_connection_terminated_mid_check() {
    const CHECKSUM: &str = "pg-ghost checksum";
    let db = Cluster::primary().fresh_db("rc_checksum");
    crate::binary::narrow_table(&db, "big", 300_000);
    let client = db.client().await;
    let mut run = Running::spawn(&db, "run", &["--table", "big", "--alter", ALTER, "--execute", "--copy-workers", "1"]);
    wait_for_state(&client, &mut run, "big", "checksum", Duration::from_secs(120)).await;

    let locker = db.client().await;
    locker.batch_execute("BEGIN; LOCK TABLE _big_gho IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let waiting = loop {
        let pids: Vec<i32> = client
            .query(
                "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database() AND wait_event_type = 'Lock'",
                &[&CHECKSUM],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !pids.is_empty() {
            break pids;
        }
        run.assert_running("a checksum session waiting for the ghost").await;
        assert!(Instant::now() < deadline, "no checksum session waited for the locked ghost within 20 s");
        tokio::time::sleep(POLL).await;
    };
    terminate(&client, &waiting).await;
    locker.batch_execute("COMMIT").await.unwrap();

    let out = run.wait(Duration::from_secs(120)).await;
    binary::assert_success(&out);
    let log = binary::stderr(&out);
    let name = format!("connection={CHECKSUM} ");
    assert!(log.lines().any(|l| l.contains("connection lost") && l.contains(&name)), "the loss is not reported:\n{log}");
    assert!(log.lines().any(|l| l.contains("reconnected") && l.contains(&name)), "no reconnection reported:\n{log}");
    assert!(log.contains("checksum clean"), "{log}");
    crate::run_faults::assert_unchanged_rows(&client, "big", &["id", "n", "pad"]).await;
    assert_no_slots_or_publications(&client).await;
}

/// An index of the table whose build on the ghost takes seconds: its expression sleeps a
/// millisecond a row (declared immutable, which an index needs and a test may lie about).
fn slow_index(db: &TestDb<'_>) {
    db.psql(
        "CREATE FUNCTION public.slow_n(v bigint) RETURNS bigint IMMUTABLE LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.001); RETURN v; END $$;
         CREATE INDEX orders_slow ON public.orders (public.slow_n(n))",
    );
}

/// A run, under the workload, of a table with [`slow_index`].
async fn run_with_slow_index(prefix: &str) -> (TestDb<'static>, OracleTable, Client, Workload, Running) {
    let db = Cluster::primary().fresh_db(prefix);
    let table = OracleTable::create(&db, TABLE, KeyKind::Identity, 3_000).await;
    slow_index(&db);
    let client = db.client().await;
    let workload = Workload::start(&db, &table, workload_options()).await;
    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;
    let run = Running::spawn(&db, "run", &["--table", TABLE, "--alter", ALTER, "--execute", "--status-interval", "1s"]);
    (db, table, client, workload, run)
}

/// Waits until a session of pg-ghost runs a statement that `condition` (SQL on
/// `pg_stat_activity`) tells apart; returns its backend's pid, client port and application
/// name.
async fn active_session(client: &Client, run: &mut Running, condition: &str, what: &str) -> (i32, i32, String) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let sql = format!(
        "SELECT pid, client_port, application_name FROM pg_stat_activity
          WHERE datname = current_database() AND application_name LIKE 'pg-ghost%' AND state = 'active' AND {condition}"
    );
    loop {
        if let Some(row) = client.query_opt(&sql, &[]).await.unwrap() {
            return (row.get(0), row.get(1), row.get(2));
        }
        run.assert_running(what).await;
        assert!(Instant::now() < deadline, "no session of pg-ghost ran {what} within 120 s");
        tokio::time::sleep(POLL).await;
    }
}

/// The slow index's build after the copy (the ghost's creation makes it too, on the empty
/// ghost, before setting it aside).
async fn building_slow_index(client: &Client, run: &mut Running) -> (i32, i32, String) {
    wait_for_state(client, run, TABLE, "build-indexes", Duration::from_secs(120)).await;
    active_session(client, run, "query LIKE '%slow_n%'", "the slow index's build on the ghost").await
}

/// Destroys the socket of pg-ghost's side of the connection from `client_port` (as a network
/// fault would end it): pg-ghost finds it lost, the server does not notice.
pub(crate) fn drop_connection(db: &TestDb<'_>, client_port: i32) {
    let killed = std::process::Command::new("ss")
        .args(["-K", "dport", "=", &format!(":{}", db.cluster.port), "sport", "=", &format!(":{client_port}")])
        .output()
        .expect("cannot run ss");
    assert!(killed.status.success(), "ss -K failed: {}", String::from_utf8_lossy(&killed.stderr));
    // ss lists what it destroyed: nothing, where the kernel cannot destroy sockets.
    let listed = String::from_utf8_lossy(&killed.stdout);
    assert!(listed.contains(&format!(":{client_port} ")), "ss -K destroyed no socket from port {client_port}:\n{listed}");
}

/// The run completed, the index it builds again after the copy is on the new table, the data
/// equals the control's, and the log says the build's session was lost and came back.
async fn assert_built_again_and_correct(out: &Output, session: &str, table: &OracleTable, workload: Workload, db: &TestDb<'_>, client: &Client) {
    assert_reconnected_and_correct(out, session, table, workload, client).await;
    assert_eq!(
        db.psql("SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = 'public.orders'::regclass AND pg_get_indexdef(indexrelid) LIKE '%slow_n%'"),
        "CREATE INDEX orders_slow ON public.orders USING btree (slow_n(n))"
    );
}

/// The connection of the session building an index on the ghost drops on pg-ghost's side (its
/// socket destroyed, as by a network fault), while the server goes on building: the run
/// opens a new session, waits for the lost backend's build to end rather than start a second
/// one beside it, keeps the index that build committed, and completes. Before, losing an index
/// build's session stopped the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_build_whose_connection_drops_is_waited_for_and_kept() {
    if !crate::harness::is_root() {
        eprintln!("destroying a socket of another process (ss -K) needs root: not checked here");
        return;
    }
    let (db, table, client, workload, mut run) = run_with_slow_index("rc_index_drop").await;
    let (pid, client_port, session) = building_slow_index(&client, &mut run).await;
    drop_connection(&db, client_port);
    // The server does not notice: its backend still builds.
    let state = db.psql(&format!("SELECT state FROM pg_stat_activity WHERE pid = {pid}"));
    assert_eq!(state, "active", "the lost session's backend no longer builds: test nothing");

    let out = run.wait(Duration::from_secs(180)).await;
    let log = binary::stderr(&out);
    assert!(log.contains("still runs its statement on the server"), "the run did not wait for the lost build:\n{log}");
    assert_built_again_and_correct(&out, &session, &table, workload, &db, &client).await;
}

/// The backend building an index on the ghost is terminated: its build rolls back, and the
/// run builds the index again on a new session and completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_build_whose_backend_is_terminated_is_made_again() {
    let (db, table, client, workload, mut run) = run_with_slow_index("rc_index_term").await;
    let (pid, _, session) = building_slow_index(&client, &mut run).await;
    terminate(&client, &[pid]).await;

    let out = run.wait(Duration::from_secs(180)).await;
    assert_built_again_and_correct(&out, &session, &table, workload, &db, &client).await;
}

/// The ghost's `VACUUM (ANALYZE)` loses its connection on pg-ghost's side (its `ANALYZE` of
/// the slow index's expression takes seconds) while the server goes on: the run waits for the
/// lost statement, vacuums again on a new session and completes. Before, the run stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ghosts_vacuum_whose_connection_drops_is_waited_for() {
    if !crate::harness::is_root() {
        eprintln!("destroying a socket of another process (ss -K) needs root: not checked here");
        return;
    }
    let (db, table, client, workload, mut run) = run_with_slow_index("rc_vacuum_drop").await;
    let (pid, client_port, session) = active_session(&client, &mut run, "query LIKE 'VACUUM%'", "the ghost's VACUUM").await;
    drop_connection(&db, client_port);
    let state = db.psql(&format!("SELECT state FROM pg_stat_activity WHERE pid = {pid}"));
    assert_eq!(state, "active", "the lost session's backend no longer vacuums: test nothing");

    let out = run.wait(Duration::from_secs(180)).await;
    let log = binary::stderr(&out);
    assert!(log.contains("still runs its statement on the server"), "the run did not wait for the lost VACUUM:\n{log}");
    assert_built_again_and_correct(&out, &session, &table, workload, &db, &client).await;
}
