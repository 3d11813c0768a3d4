//! `--failover-slot`: a run cut short by a failover goes on, with `--resume`, on the promoted
//! standby that PostgreSQL 17+ kept a copy of the slot on. The standby synchronizes slots
//! (its worker first, then `pg_sync_replication_slots()` called by the test at the moment it
//! chooses), and the primary names the standby's physical slot in `synchronized_standby_slots`.
//!
//! On servers before 17 these tests check the refusal only; `scripts/test.sh` runs this module
//! on 18 too.

use crate::binary;
use crate::harness::{Cluster, TestDb};
use crate::oracle::*;
use crate::run_faults::{flag_path, wait_for_state, Running};
use std::process::Command;
use std::time::{Duration, Instant};

const ALTER: &str = "ALTER COLUMN n TYPE bigint";

fn version_num(cluster: &Cluster) -> i32 {
    cluster.psql("postgres", "SHOW server_version_num").parse().expect("server_version_num")
}

/// Without a server that can synchronize slots, or without standbys to wait for, the flag is
/// refused before anything is made, naming what is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_slot_is_refused_without_what_it_needs() {
    let db = Cluster::primary().fresh_db("failover_refused");
    let _table = OracleTable::create(&db, "orders", KeyKind::Identity, 100).await;
    let client = db.client().await;
    let before = CatalogSnapshot::take(&client).await;
    let out = binary::run(&db, &["--table", "orders", "--alter", ALTER, "--execute", "--failover-slot"]).await;
    let log = binary::stderr(&out);
    assert_eq!(out.status.code(), Some(3), "not refused:\n{log}");
    let needed = if version_num(db.cluster) >= 170000 { "synchronized_standby_slots" } else { "PostgreSQL 17 or later" };
    assert!(log.contains(needed), "the refusal does not name {needed}:\n{log}");
    assert_catalog_unchanged(&before, &CatalogSnapshot::take(&client).await);

    // Asked for on the resume of a run made without it: refused alike, the slot left as it was.
    let flag = flag_path(&db, "postpone");
    std::fs::write(&flag, b"").unwrap();
    let flag_arg = flag.to_str().unwrap().to_string();
    let plain = ["--table", "orders", "--alter", ALTER, "--execute", "--postpone-cut-over-flag-file", &flag_arg];
    let mut run = Running::spawn(&db, "run", &plain);
    wait_for_state(&client, &mut run, "orders", "postponed", Duration::from_secs(60)).await;
    run.kill9().await;
    crate::resume::wait_slot_released(&client).await;
    let mut resume = plain.to_vec();
    resume.extend(["--resume", "--failover-slot"]);
    let out = binary::run(&db, &resume).await;
    let log = binary::stderr(&out);
    assert_eq!(out.status.code(), Some(3), "not refused:\n{log}");
    assert!(log.contains(needed), "the refusal does not name {needed}:\n{log}");
    assert_eq!(db.psql("SELECT count(*) FROM pg_replication_slots WHERE database = current_database()"), "1", "the slot is gone");
    let _ = std::fs::remove_file(&flag);
}

/// Sends `signal` (`STOP`, `CONT`) to a server process.
fn signal(pid: &str, signal: &str) {
    let status = Command::new("kill").arg(format!("-{signal}")).arg(pid).status().expect("cannot run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// Waits until `standby` holds a persistent copy of the run's slot, made by the slot
/// synchronization worker; returns its name. Then stops the worker, so that the test decides
/// when the copy is brought up to date (`pg_sync_replication_slots()`). The first copy waits
/// until the primary's slot has moved past the catalog xmin the standby reserved for it, which
/// the primary's slot does every 15 s or so: the worker keeps its reservation meanwhile, a
/// call of the function would drop it at its end.
fn synchronized_copy(standby: &Cluster, db: &str, name_like: &str) -> String {
    standby.psql("postgres", "ALTER SYSTEM SET sync_replication_slots = on");
    standby.psql("postgres", "SELECT pg_reload_conf()");
    let deadline = Instant::now() + Duration::from_secs(120);
    let persisted = format!(
        "SELECT slot_name FROM pg_replication_slots WHERE database = '{db}' AND slot_type = 'logical' AND slot_name LIKE '{name_like}' AND synced AND NOT temporary"
    );
    let found = loop {
        let found = standby.psql("postgres", &persisted);
        if !found.is_empty() {
            break found;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(standby.dir.join("server.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(12).collect();
            panic!("the standby never held a persistent copy of the run's slot; its log, last lines first:\n{}", tail.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    standby.psql("postgres", "ALTER SYSTEM SET sync_replication_slots = off");
    standby.psql("postgres", "SELECT pg_reload_conf()");
    while standby.psql("postgres", "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'slotsync worker'") != "0" {
        assert!(Instant::now() < deadline, "the slot synchronization worker did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
    found
}

/// pg-ghost stops reading for a second while the workload writes and the standby keeps up;
/// then the standby's WAL receiver stops and pg-ghost goes on: it holds changes the standby
/// has, and flushes them into WAL the standby lacks (the stream itself sends nothing the
/// standby lacks). Returns the WAL receiver's pid.
async fn flush_past_the_standby(standby: &Cluster, ghost_pid: u32, workload: &Workload) -> String {
    let ghost_pid = ghost_pid.to_string();
    signal(&ghost_pid, "STOP");
    workload.wait_for_more_commits(100, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let receiver = standby.psql("postgres", "SELECT pid FROM pg_stat_wal_receiver");
    assert!(!receiver.is_empty(), "the standby has no WAL receiver");
    signal(&receiver, "STOP");
    signal(&ghost_pid, "CONT");
    receiver
}

/// The primary crashes, and so does the standby, whose WAL receiver is frozen: the WAL it
/// had received but not flushed is lost to it, as to a standby cut off by a network partition.
/// It comes back, is promoted, and takes the primary's address.
fn fail_over(primary: &Cluster, standby: &mut Cluster) {
    primary.stop_immediately();
    // The frozen receiver ignores the shutdown's SIGQUIT: the postmaster kills it after 5 s.
    standby.stop_immediately();
    standby.start_again();
    assert_eq!(standby.psql("postgres", "SELECT pg_promote(true, 60)"), "t", "the standby was not promoted");
    standby.move_to_port(primary.port);
}

/// Under the workload, makes `run` flush past the standby ([`flush_past_the_standby`]), stops
/// the workload, has the standby copy the slots as the primary has them now, then fails over
/// ([`fail_over`]): the run's sessions reconnect to the promoted standby and stop the run.
/// Returns the run's log.
async fn fail_over_under(run: Running, workload: Workload, primary: &Cluster, standby: &mut Cluster) -> String {
    flush_past_the_standby(standby, run.pid().expect("pg-ghost's pid"), &workload).await;
    workload.wait_for_more_commits(100, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = workload.stop().await;
    assert!(report.errors.is_empty(), "workload errors (seed {}): {:#?}", report.seed, report.errors);
    standby.psql("postgres", "SELECT pg_sync_replication_slots()");
    fail_over(primary, standby);
    let out = run.wait(Duration::from_secs(120)).await;
    let log = binary::stderr(&out);
    assert!(!out.status.success(), "the run went on on the promoted standby:\n{log}");
    assert!(log.contains("promoted or recovered"), "the run did not stop for the failover:\n{log}");
    log
}

/// A primary of its own and a standby that can keep copies of its slots: the standby streams
/// through the physical slot `sb`, which the primary names in `synchronized_standby_slots`.
/// `None` before PostgreSQL 17.
fn primary_and_standby() -> Option<(Cluster, Cluster)> {
    let primary = Cluster::start("failover");
    if version_num(&primary) < 170000 {
        eprintln!("slots are synchronized to standbys from PostgreSQL 17 only: nothing to check on this server");
        return None;
    }
    primary.psql("postgres", "SELECT pg_create_physical_replication_slot('sb', true)");
    let standby = primary.standby("failover");
    let primary_conninfo = format!("host=127.0.0.1 port={} user=ghost password=ghost dbname=postgres", primary.port);
    standby.psql("postgres", &format!("ALTER SYSTEM SET primary_conninfo = '{primary_conninfo}'"));
    standby.psql("postgres", "ALTER SYSTEM SET primary_slot_name = 'sb'");
    standby.psql("postgres", "SELECT pg_reload_conf()");
    primary.psql("postgres", "ALTER SYSTEM SET synchronized_standby_slots = 'sb'");
    primary.psql("postgres", "SELECT pg_reload_conf()");
    Some((primary, standby))
}

/// Flushes wait for a standby that has stopped receiving; the panic flag still ends the run at
/// once (the wait is given up, the flush left unconfirmed), and the run cleans up as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_panic_flag_ends_a_wait_for_a_standby() {
    let Some((primary, standby)) = primary_and_standby() else { return };
    let db = primary.fresh_db("failover_panic");
    let table = OracleTable::create(&db, "orders", KeyKind::Identity, 2_000).await;
    let client = db.client().await;
    let postpone = flag_path(&db, "postpone");
    std::fs::write(&postpone, b"").unwrap();
    let panic = flag_path(&db, "panic");
    let args = [
        "--table", "orders", "--alter", ALTER, "--execute", "--failover-slot", "--status-interval", "1s",
        "--postpone-cut-over-flag-file", postpone.to_str().unwrap(), "--panic-flag-file", panic.to_str().unwrap(),
    ];
    let mut run = Running::spawn(&db, "run", &args);
    wait_for_state(&client, &mut run, "orders", "postponed", Duration::from_secs(90)).await;
    let workload = Workload::start(&db, &table, WorkloadOptions::new(2)).await;
    workload.wait_for_more_commits(100, Duration::from_secs(30)).await;
    let receiver = flush_past_the_standby(&standby, run.pid().expect("pg-ghost's pid"), &workload).await;
    let report = workload.stop().await;
    assert!(report.errors.is_empty(), "workload errors (seed {}): {:#?}", report.seed, report.errors);
    tokio::time::sleep(Duration::from_secs(1)).await;
    run.assert_running("its flushes to wait for the standby").await;

    std::fs::write(&panic, b"").unwrap();
    let out = run.wait(Duration::from_secs(30)).await;
    signal(&receiver, "CONT");
    let log = binary::stderr(&out);
    assert_eq!(out.status.code(), Some(4), "the panic flag did not abort the run:\n{log}");
    assert_no_slots_or_publications(&client).await;
    let _ = std::fs::remove_file(&postpone);
    let _ = std::fs::remove_file(&panic);
}

/// A standby that stops receiving holds the flushes (the status line says for how long), as
/// it holds the primary's own stream, until the DBA takes it out of
/// `synchronized_standby_slots` and reloads: then the run goes on and completes, the table
/// equal to the control table row for row. With the list read once at the start, the run
/// waited for that standby for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_taken_out_of_synchronized_standby_slots_releases_the_run() {
    let Some((primary, standby)) = primary_and_standby() else { return };
    let db = primary.fresh_db("failover_released");
    let table = OracleTable::create(&db, "orders", KeyKind::Identity, 2_000).await;
    let client = db.client().await;
    let postpone = flag_path(&db, "postpone");
    std::fs::write(&postpone, b"").unwrap();
    let args = ["--table", "orders", "--alter", ALTER, "--execute", "--failover-slot", "--postpone-cut-over-flag-file", postpone.to_str().unwrap()];
    let mut run = crate::controls_e2e::Running::spawn(&db, &args);
    run.wait_log("State: postponing cut-over", Duration::from_secs(90)).await;
    let workload = Workload::start(&db, &table, WorkloadOptions::new(2)).await;
    workload.wait_for_more_commits(100, Duration::from_secs(30)).await;
    let receiver = flush_past_the_standby(&standby, run.pid().expect("pg-ghost's pid"), &workload).await;
    run.wait_log("Standbys: waited", Duration::from_secs(30)).await;
    let report = workload.stop().await;
    assert!(report.errors.is_empty(), "workload errors (seed {}): {:#?}", report.seed, report.errors);

    primary.psql("postgres", "ALTER SYSTEM SET synchronized_standby_slots = ''");
    primary.psql("postgres", "SELECT pg_reload_conf()");
    std::fs::remove_file(&postpone).unwrap();
    let out = run.wait(Duration::from_secs(120)).await;
    signal(&receiver, "CONT");
    binary::assert_success(&out);
    assert!(binary::stderr(&out).contains("synchronized_standby_slots changed"), "the change was not seen:\n{}", binary::stderr(&out));
    table.assert_matches_control(&client, &table.projection().map("n", "n::bigint")).await;
    assert_no_slots_or_publications(&client).await;
}

/// A run made without `--failover-slot`, killed, is resumed with it: its slot is altered.
/// Then the primary fails while the run waits to cut over, its standby a moment behind it: the
/// standby's WAL receiver is stopped while the workload and the apply go on, the standby then
/// copies the slot as it is, and the primary crashes, the standby with it (losing what it had
/// received but not flushed); the standby, promoted, takes over its address. The run's
/// sessions reconnect there, find the new timeline and stop, leaving everything. The resumed
/// run finds slot, ghost and changelog, and the table it swaps in equals the control table row
/// for row, the writes the standby never got missing from both alike. Without waiting for the
/// standby before confirming a flush, the copy of the slot points past flushes the standby
/// lacks, and the rows those flushes wrote differ (every run of two; the window's test below
/// likewise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_resumes_on_the_promoted_standby() {
    let Some((primary, mut standby)) = primary_and_standby() else { return };

    let db = primary.fresh_db("failover");
    let table = OracleTable::create(&db, "orders", KeyKind::Identity, 3_000).await;
    let client = db.client().await;
    let flag = flag_path(&db, "postpone");
    std::fs::write(&flag, b"").unwrap();
    let flag_arg = flag.to_str().unwrap().to_string();
    // A first run without the flag, killed: its resume asks for the flag, and the slot it
    // takes over is altered.
    let plain = ["--table", "orders", "--alter", ALTER, "--execute", "--postpone-cut-over-flag-file", &flag_arg, "--status-interval", "1s"];
    let mut run = Running::spawn(&db, "run", &plain);
    wait_for_state(&client, &mut run, "orders", "postponed", Duration::from_secs(90)).await;
    run.kill9().await;
    crate::resume::wait_slot_released(&client).await;
    assert_eq!(db.psql("SELECT string_agg(failover::text, ',') FROM pg_replication_slots WHERE database = current_database()"), "false");
    let args = ["--table", "orders", "--alter", ALTER, "--execute", "--failover-slot", "--postpone-cut-over-flag-file", &flag_arg, "--status-interval", "1s", "--resume"];
    let mut run = Running::spawn(&db, "run", &args);
    let deadline = Instant::now() + Duration::from_secs(30);
    while db.psql("SELECT string_agg(failover::text, ',') FROM pg_replication_slots WHERE database = current_database() AND active") != "true" {
        run.assert_running("the resumed run's slot to be synchronized to standbys and streamed from").await;
        assert!(Instant::now() < deadline, "the resumed run's slot was not altered to FAILOVER");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let workload = Workload::start(&db, &table, WorkloadOptions::new(3)).await;
    let slot = synchronized_copy(&standby, &db.name, "%");
    workload.wait_for_more_commits(200, Duration::from_secs(30)).await;

    // pg-ghost stops reading for a second while the standby keeps up: the changes of that
    // second wait for it, each already on the standby. Then the standby's WAL receiver stops,
    // and pg-ghost goes on: it writes those changes into the ghost after the last WAL the
    // standby got, and may confirm them only once the standby has that write, never here.
    let log = fail_over_under(run, workload, &primary, &mut standby).await;
    // It stops there and leaves what it made for a resume.
    assert!(log.contains("left for `pg-ghost run --resume`"), "the run did not leave its objects for a resume:\n{log}");

    let promoted = TestDb { cluster: &standby, name: db.name.clone() };
    // The old primary is gone: nothing to drop there.
    std::mem::forget(db);
    assert!(!promoted.psql(&format!("SELECT slot_name FROM pg_replication_slots WHERE slot_name = '{slot}'")).is_empty(), "the run dropped its slot");
    std::fs::remove_file(&flag).unwrap();
    // Without the checksum, which would find and mend rows a lost flush left stale: the
    // stream alone must bring the ghost to the control's rows.
    let mut resume_args = args.to_vec();
    resume_args.push("--skip-checksum");
    let out = binary::run(&promoted, &resume_args).await;
    binary::assert_success(&out);
    let resumed = binary::stderr(&out);
    assert!(resumed.contains("resuming the earlier run"), "the run did not resume:\n{resumed}\n(first run:\n{log})");
    let new_client = promoted.client().await;
    table.assert_matches_control(&new_client, &table.projection().map("n", "n::bigint")).await;
    assert_no_slots_or_publications(&new_client).await;
    assert!(
        standby.psql("postgres", &format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'")) == "0",
        "the run's slot was left on the promoted standby"
    );
}

/// A failover in the revert window: the window's reverse slot is synchronized to the standby
/// like the run's, the primary fails (as in the test above) while the reverse apply has flushed
/// writes the standby lacks, and the run, finding the promoted standby behind its address,
/// leaves the window open.
/// `pg-ghost revert` on the new primary takes the window up from the copy of the reverse slot
/// and swaps back: the original, in its old shape, equals the control table row for row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revert_window_is_taken_up_on_the_promoted_standby() {
    let Some((primary, mut standby)) = primary_and_standby() else { return };
    let db = primary.fresh_db("failover_window");
    let table = OracleTable::create(&db, "orders", KeyKind::Identity, 2_000).await;
    let client = db.client().await;
    let workload = Workload::start(&db, &table, WorkloadOptions::new(3)).await;
    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;
    let args = ["--table", "orders", "--alter", ALTER, "--execute", "--failover-slot", "--revertible-for", "10m", "--status-interval", "1s"];
    let mut run = Running::spawn(&db, "run", &args);
    wait_for_state(&client, &mut run, "orders", "revert-window", Duration::from_secs(120)).await;
    let slot = synchronized_copy(&standby, &db.name, "%\\_rev");
    workload.wait_for_more_commits(100, Duration::from_secs(30)).await;

    let log = fail_over_under(run, workload, &primary, &mut standby).await;
    assert!(log.contains("is left open"), "the run did not leave the window open for the failover:\n{log}");

    let promoted = TestDb { cluster: &standby, name: db.name.clone() };
    std::mem::forget(db);
    assert!(!promoted.psql(&format!("SELECT slot_name FROM pg_replication_slots WHERE slot_name = '{slot}'")).is_empty(), "the run dropped the reverse slot");
    let revert = binary::command(&promoted, "revert", &["--table", "orders"]).output().await.expect("start pg-ghost revert");
    binary::assert_success(&revert);
    assert!(binary::stderr(&revert).contains("taking it up here"), "{}", binary::stderr(&revert));
    let new_client = promoted.client().await;
    table.assert_matches_control(&new_client, &table.projection()).await;
    assert_eq!(promoted.psql("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'public.orders'::regclass AND attname = 'n'"), "integer");
    assert_no_slots_or_publications(&new_client).await;
}

/// `migrate --failover-slot` gives the flag to the online changes it makes: where the flag is
/// refused, so is a migration whose change goes through a ghost, before it is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_gives_failover_slot_to_its_online_changes() {
    let db = Cluster::primary().fresh_db("failover_migrate");
    db.psql("CREATE TABLE public.t (id int PRIMARY KEY, n int); INSERT INTO public.t SELECT g, g FROM generate_series(1, 100) g");
    let dir = crate::migrate::migrations_dir("failover", &[("V1__widen.sql", "ALTER TABLE t ALTER COLUMN n TYPE bigint;\n")]);
    let out = binary::command(&db, "migrate", &["--dir", dir.to_str().unwrap(), "--failover-slot"]).output().await.expect("start pg-ghost migrate");
    let needed = if version_num(db.cluster) >= 170000 { "synchronized_standby_slots" } else { "PostgreSQL 17 or later" };
    binary::assert_failure(&out, 3, needed);
    assert_eq!(db.psql("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'public.t'::regclass AND attname = 'n'"), "integer");
    let _ = std::fs::remove_dir_all(&dir);
}
