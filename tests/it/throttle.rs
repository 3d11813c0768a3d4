//! The throttler on live servers: each check makes the decision say throttled with its
//! reason, and clears when the cause goes away; critical limits end the task as aborted.
//! Decisions are awaited on the watch with a deadline, never with fixed sleeps.

use crate::harness::{Cluster, TestDb};
use pg_ghost::config::{LoadLimits, ThrottleConfig, Tunables};
use pg_ghost::conn::{ConnInfo, Endpoint};
use pg_ghost::copy::GateState;
use pg_ghost::sql::QualifiedName;
use pg_ghost::throttle::{gate_state, Decision, Override, ThrottleHandle, ThrottleJob, Throttler};
use pg_ghost::ErrorKind;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::{CancelToken, NoTls};

const DEADLINE: Duration = Duration::from_secs(30);

fn changelog() -> QualifiedName {
    QualifiedName::new("public", "_t_ghc")
}

fn create_changelog(db: &TestDb) {
    db.psql(&format!(
        "CREATE TABLE {} (key text PRIMARY KEY, value text NOT NULL, updated_at timestamptz NOT NULL DEFAULT clock_timestamp())",
        changelog().sql()
    ));
}

fn config() -> ThrottleConfig {
    ThrottleConfig {
        heartbeat_interval: Duration::from_millis(100),
        critical_load_hibernate: None,
        flag_file: None,
        additional_flag_file: None,
        max_retained_wal: None,
        critical_retained_wal: None,
    }
}

fn tunables() -> Tunables {
    Tunables {
        chunk_size: 1000,
        nice_ratio: 0.0,
        max_lag: None,
        max_load: LoadLimits::default(),
        critical_load: LoadLimits::default(),
        throttle_query: None,
        throttle_control_replicas: Vec::new(),
    }
}

fn limits(text: &str) -> LoadLimits {
    LoadLimits::parse("max-load", text).unwrap()
}

fn local(port: u16) -> Endpoint {
    Endpoint::Tcp { host: "127.0.0.1".into(), port }
}

/// A throttler and the controls the runner would hold.
struct Running {
    handle: ThrottleHandle,
    tunables: watch::Sender<Tunables>,
    overrides: watch::Sender<Override>,
    locked: watch::Sender<bool>,
}

fn start(db: &TestDb, slot: &str, cfg: ThrottleConfig, tunables: Tunables) -> Running {
    let (tunables_tx, tunables_rx) = watch::channel(tunables);
    let (overrides_tx, overrides_rx) = watch::channel(Override::None);
    let (locked_tx, locked_rx) = watch::channel(false);
    let handle = Throttler::spawn(ThrottleJob {
        conn: ConnInfo::parse(&db.conninfo()).unwrap(),
        changelog: Some(changelog()),
        slot: slot.to_string(),
        cfg,
        tunables: tunables_rx,
        overrides: overrides_rx,
        cut_over_locked: locked_rx,
    });
    Running { handle, tunables: tunables_tx, overrides: overrides_tx, locked: locked_tx }
}

impl Running {
    /// Waits until the published decision satisfies `ok`; fails with the last one seen.
    async fn until(&mut self, what: &str, ok: impl Fn(&Decision) -> bool) -> Decision {
        let rx = &mut self.handle.decision;
        let waited = tokio::time::timeout(DEADLINE, async { rx.wait_for(|d| ok(d)).await.map(|d| d.clone()) }).await;
        match waited {
            Ok(Ok(d)) => d,
            Ok(Err(_)) => panic!("the throttler stopped while waiting for {what}; last: {:?}", *rx.borrow()),
            Err(_) => panic!("no decision {what} within {DEADLINE:?}; last: {:?}", *rx.borrow()),
        }
    }

    async fn until_reason(&mut self, prefix: &str) -> Decision {
        self.until(&format!("throttled with reason {prefix:?}"), |d| {
            d.throttled && d.reason.as_deref().is_some_and(|r| r.starts_with(prefix))
        })
        .await
    }

    async fn until_open(&mut self) -> Decision {
        self.until("open", |d| !d.throttled).await
    }

    fn set(&self, change: impl FnOnce(&mut Tunables)) {
        self.tunables.send_modify(change);
    }

    /// The task's result, which must come within the deadline.
    async fn ended(self) -> pg_ghost::Result<()> {
        tokio::time::timeout(DEADLINE, self.handle.task)
            .await
            .expect("the throttler did not end")
            .expect("task panicked")
    }
}

/// `n` sessions busy in `pg_sleep` (state `active`), cancelled on `release`.
struct Sleepers {
    tokens: Vec<CancelToken>,
    tasks: Vec<JoinHandle<()>>,
}

impl Sleepers {
    async fn start(db: &TestDb<'_>, n: usize) -> Sleepers {
        let mut sleepers = Sleepers { tokens: Vec::new(), tasks: Vec::new() };
        for _ in 0..n {
            let client = db.client().await;
            sleepers.tokens.push(client.cancel_token());
            sleepers.tasks.push(tokio::spawn(async move {
                let _ = client.simple_query("SELECT pg_sleep(120)").await;
            }));
        }
        sleepers
    }

    /// Only call once the sessions were seen active, or a cancel may come before the query.
    async fn release(self) {
        for token in self.tokens {
            token.cancel_query(NoTls).await.unwrap();
        }
        for task in self.tasks {
            task.await.unwrap();
        }
    }
}

/// A port nobody listens on: the kernel picked it free, and the listener is closed again.
fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn unique_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pg-ghost-throttle-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// ---- heartbeat and lag ----

#[tokio::test]
async fn heartbeat_row_is_written_and_advances() {
    let db = Cluster::primary().fresh_db("thr_heartbeat");
    create_changelog(&db);
    let running = start(&db, "none", config(), tunables());
    let read =
        || db.psql("SELECT value || ' ' || (value::timestamptz = updated_at) FROM _t_ghc WHERE key = 'heartbeat'");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let first = loop {
        let row = read();
        if !row.is_empty() {
            break row;
        }
        assert!(tokio::time::Instant::now() < deadline, "no heartbeat row");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(first.ends_with(" true"), "value and updated_at are the same instant: {first}");
    loop {
        let row = read();
        if row != first {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the heartbeat did not advance");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.handle.stop().await;
}

#[tokio::test]
async fn replica_lag_from_the_heartbeat_and_from_pg_stat_replication() {
    // A primary of its own: pausing replay must not disturb other tests.
    let primary = Cluster::start("throttle_lag");
    let db = primary.fresh_db("thr_lag");
    create_changelog(&db);
    let standby = primary.standby("throttle_lag");
    let name = format!("127.0.0.1:{}", standby.port);
    let mut t = tunables();
    t.max_lag = Some(Duration::from_millis(1000));
    t.throttle_control_replicas = vec![local(standby.port)];
    let mut running = start(&db, "none", config(), t);

    let d = running.until("open with the standby's lag measured", |d| !d.throttled && d.lag.is_some()).await;
    assert!(d.lag < Some(Duration::from_millis(1000)), "{d:?}");

    standby.psql(&db.name, "SELECT pg_wal_replay_pause()");
    let d = running.until_reason("lag ").await;
    let reason = d.reason.unwrap();
    assert!(reason.ends_with(&format!(" > 1.0s on {name}")), "{reason}");
    // It keeps growing while replay stays paused.
    let grown = running.until("lag past 2s", |d| d.lag.is_some_and(|l| l > Duration::from_secs(2))).await;
    assert!(grown.throttled);

    standby.psql(&db.name, "SELECT pg_wal_replay_resume()");
    let d = running.until_open().await;
    assert!(d.lag < Some(Duration::from_millis(1000)), "{d:?}");

    // Without a replica list, replay_lag of the physical standbys in pg_stat_replication.
    running.set(|t| t.throttle_control_replicas.clear());
    running.until("open, lag from pg_stat_replication", |d| !d.throttled && d.lag.is_some()).await;
    standby.psql(&db.name, "SELECT pg_wal_replay_pause()");
    let d = running.until_reason("lag ").await;
    let reason = d.reason.unwrap();
    // The standby streams over the primary's Unix socket: no address, so its walsender's pid.
    assert!(reason.contains(" > 1.0s on walreceiver (pid "), "{reason}");
    standby.psql(&db.name, "SELECT pg_wal_replay_resume()");
    running.until_open().await;
    running.handle.stop().await;
}

#[tokio::test]
async fn unreachable_replica_throttles_as_unmeasured() {
    let db = Cluster::primary().fresh_db("thr_unreachable");
    create_changelog(&db);
    let port = dead_port();
    let mut t = tunables();
    t.max_lag = Some(Duration::from_millis(1000));
    t.throttle_control_replicas = vec![local(port)];
    let mut running = start(&db, "none", config(), t);
    let d = running.until_reason(&format!("lag on 127.0.0.1:{port} cannot be measured: ")).await;
    assert!(d.lag.is_none(), "{d:?}");
    assert!(matches!(gate_state(&d), GateState::Throttled(_)));
    // Dropping the replica from the list (the socket's throttle-control-replicas=) lifts it.
    running.set(|t| t.throttle_control_replicas.clear());
    running.until_open().await;
    running.handle.stop().await;
}

#[tokio::test]
async fn missing_heartbeat_is_unmeasured_until_it_appears() {
    // The primary stands in for a standby here: it "replays" instantly, so only the missing
    // heartbeat can be the reason.
    let db = Cluster::primary().fresh_db("thr_noheartbeat");
    let mut t = tunables();
    t.max_lag = Some(Duration::from_millis(1000));
    t.throttle_control_replicas = vec![local(db.cluster.port)];
    let mut running = start(&db, "none", config(), t);
    let d = running.until_reason("lag on ").await;
    assert!(d.reason.unwrap().ends_with("cannot be measured: no heartbeat replayed yet"));
    create_changelog(&db);
    let d = running.until_open().await;
    assert!(d.lag.is_some_and(|l| l < Duration::from_millis(1000)), "{d:?}");
    running.handle.stop().await;
}

// ---- load ----

#[tokio::test]
async fn active_and_waiting_sessions_throttle_until_they_end() {
    let db = Cluster::primary().fresh_db("thr_load");
    create_changelog(&db);
    db.psql("CREATE TABLE t (id int PRIMARY KEY)");
    let mut t = tunables();
    t.max_load = limits("active_sessions=3");
    let mut running = start(&db, "none", config(), t);
    running.until_open().await;

    let sleepers = Sleepers::start(&db, 3).await;
    let d = running.until_reason("max-load active_sessions=").await;
    assert_eq!(d.reason.as_deref(), Some("max-load active_sessions=3 >= 3"), "pg-ghost's own sessions are not counted");
    sleepers.release().await;
    running.until_open().await;

    running.set(|t| t.max_load = limits("waiting_sessions=1"));
    let holder = db.client().await;
    holder.batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let waiter = db.client().await;
    let waiting = tokio::spawn(async move { waiter.simple_query("SELECT count(*) FROM t").await.map(|_| ()) });
    let d = running.until_reason("max-load waiting_sessions=").await;
    assert_eq!(d.reason.as_deref(), Some("max-load waiting_sessions=1 >= 1"));
    holder.batch_execute("COMMIT").await.unwrap();
    waiting.await.unwrap().unwrap();
    running.until_open().await;

    // The heartbeat alone writes WAL, so a rate limit of 1 byte/s is always reached.
    running.set(|t| t.max_load = limits("wal_bytes_per_sec=1"));
    running.until_reason("max-load wal_bytes_per_sec=").await;
    running.set(|t| t.max_load = LoadLimits::default());
    running.until_open().await;
    running.handle.stop().await;
}

#[tokio::test]
async fn critical_load_aborts_the_task() {
    let db = Cluster::primary().fresh_db("thr_critical");
    create_changelog(&db);
    let mut t = tunables();
    t.max_load = limits("active_sessions=1");
    t.critical_load = limits("active_sessions=2");
    let mut running = start(&db, "none", config(), t);
    running.until_open().await;
    let sleepers = Sleepers::start(&db, 2).await;
    let d = running.until("an abort", |d| d.abort.is_some()).await;
    assert_eq!(d.abort.as_deref(), Some("critical-load active_sessions=2 >= 2"));
    assert_eq!(gate_state(&d), GateState::Abort("critical-load active_sessions=2 >= 2".into()));
    let e = running.ended().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Aborted);
    assert_eq!(e.to_string(), "critical-load active_sessions=2 >= 2");
    sleepers.release().await;
}

#[tokio::test]
async fn critical_load_hibernates_then_checks_again() {
    let db = Cluster::primary().fresh_db("thr_hibernate");
    create_changelog(&db);
    let mut cfg = config();
    cfg.critical_load_hibernate = Some(Duration::from_secs(1));
    let mut t = tunables();
    t.critical_load = limits("active_sessions=2");
    let mut running = start(&db, "none", cfg, t);
    running.until_open().await;
    let sleepers = Sleepers::start(&db, 2).await;
    let d = running.until_reason("critical-load active_sessions=2 >= 2").await;
    assert!(d.hibernate && d.abort.is_none(), "{d:?}");
    running.until_reason("hibernating after critical-load active_sessions=2 >= 2 (").await;
    // Still critical after the first hibernation: it hibernates again rather than run.
    running.until("a second hibernation", |d| d.hibernate).await;
    sleepers.release().await;
    running.until_open().await;
    assert!(!running.handle.task.is_finished(), "hibernation does not end the run");
    running.handle.stop().await;
}

// ---- throttle query, flag files, user, cut-over ----

#[tokio::test]
async fn throttle_query_runs_read_only_and_follows_the_tunables() {
    let db = Cluster::primary().fresh_db("thr_query");
    create_changelog(&db);
    db.psql("CREATE TABLE ctl (v int); INSERT INTO ctl VALUES (1); CREATE SEQUENCE s");
    let mut t = tunables();
    t.throttle_query = Some("SELECT v FROM ctl".into());
    let mut running = start(&db, "none", config(), t);
    let d = running.until_reason("throttle-query").await;
    assert_eq!(d.reason.as_deref(), Some("throttle-query returned 1"));
    db.psql("UPDATE ctl SET v = 0");
    running.until_open().await;

    for (query, reason) in [
        ("SELECT nextval('s')", "read-only transaction"),
        ("SELECT 1/0", "division by zero"),
        ("SELECT 1 FROM pg_sleep(5)", "statement timeout"),
        ("SELECT v FROM ctl WHERE false", "returned no rows"),
        ("SELECT NULL::int", "returned NULL"),
    ] {
        running.set(|t| t.throttle_query = Some(query.into()));
        let d = running.until_reason("throttle-query failed: ").await;
        assert!(d.reason.as_deref().unwrap().contains(reason), "{query}: {d:?}");
        running.set(|t| t.throttle_query = Some("SELECT 0".into()));
        running.until_open().await;
    }
    assert_eq!(db.psql("SELECT last_value FROM s"), "1", "nextval never ran");
    assert_eq!(db.psql("SELECT is_called FROM s"), "f");

    running.set(|t| t.throttle_query = Some("SELECT count(*) > 0 FROM ctl -- any row?".into()));
    let d = running.until_reason("throttle-query").await;
    assert_eq!(d.reason.as_deref(), Some("throttle-query returned 1"));
    running.set(|t| t.throttle_query = None);
    running.until_open().await;
    running.handle.stop().await;
}

#[tokio::test]
async fn flag_files_throttle_while_they_exist() {
    let db = Cluster::primary().fresh_db("thr_flags");
    create_changelog(&db);
    let dir = unique_dir("flags");
    let (flag, shared) = (dir.join("throttle.flag"), dir.join("shared.flag"));
    let mut cfg = config();
    cfg.flag_file = Some(flag.clone());
    cfg.additional_flag_file = Some(shared.clone());
    let mut running = start(&db, "none", cfg, tunables());
    running.until_open().await;
    std::fs::write(&flag, "").unwrap();
    let d = running.until_reason("throttle flag file").await;
    assert_eq!(d.reason, Some(format!("throttle flag file {} exists", flag.display())));
    std::fs::write(&shared, "").unwrap();
    let d = running.until("both flags", |d| d.reasons.len() == 2).await;
    assert_eq!(d.reasons[1].text, format!("throttle flag file {} exists", shared.display()));
    std::fs::remove_file(&flag).unwrap();
    let d = running.until("only the shared flag", |d| d.reasons.len() == 1).await;
    assert_eq!(d.reason, Some(format!("throttle flag file {} exists", shared.display())));
    std::fs::remove_file(&shared).unwrap();
    running.until_open().await;
    running.handle.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn user_command_throttles_except_while_cut_over_holds_locks() {
    let db = Cluster::primary().fresh_db("thr_user");
    create_changelog(&db);
    let mut running = start(&db, "none", config(), tunables());
    running.until_open().await;
    running.overrides.send_replace(Override::ForceThrottle);
    let d = running.until_reason("commanded by user").await;
    assert_eq!(gate_state(&d), GateState::Throttled("commanded by user".into()));
    running.locked.send_replace(true);
    running.until_open().await;
    running.locked.send_replace(false);
    running.until_reason("commanded by user").await;
    running.overrides.send_replace(Override::None);
    running.until_open().await;
    running.handle.stop().await;
}

// ---- WAL held by slots ----

/// A logical slot of the test's own, holding WAL from now on.
fn create_slot(db: &TestDb, name: &str) {
    db.psql(&format!("SELECT pg_create_logical_replication_slot('{name}', 'pgoutput')"));
}

/// About `mib` MiB of WAL, written directly.
fn write_wal(db: &TestDb, mib: u32) {
    db.psql(&format!(
        "SELECT count(pg_logical_emit_message(false, 'pg-ghost-test', repeat('x', 1024 * 1024))) FROM generate_series(1, {mib})"
    ));
}

fn retained(db: &TestDb, slot: &str) -> u64 {
    db.psql(&format!(
        "SELECT (pg_current_wal_lsn() - restart_lsn)::int8 FROM pg_replication_slots WHERE slot_name = '{slot}'"
    ))
    .parse()
    .unwrap()
}

#[tokio::test]
async fn retained_wal_throttles_then_aborts() {
    let db = Cluster::primary().fresh_db("thr_wal");
    create_changelog(&db);
    let slot = format!("{}_slot", db.name);
    create_slot(&db, &slot);

    let mut cfg = config();
    cfg.max_retained_wal = Some(1 << 20);
    let mut running = start(&db, &slot, cfg.clone(), tunables());
    write_wal(&db, 2);
    let d = running.until_reason("retained WAL ").await;
    assert!(d.reason.as_deref().unwrap().ends_with(" > 1.0 MiB"), "{d:?}");
    assert!(d.abort.is_none());
    running.handle.stop().await;

    // Other servers' writes count too (the slot holds all WAL), so the critical limit is
    // set above what the slot holds already.
    let critical = retained(&db, &slot) + (4 << 20);
    cfg.critical_retained_wal = Some(critical);
    let running = start(&db, &slot, cfg, tunables());
    write_wal(&db, 6);
    let e = running.ended().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Aborted);
    assert!(e.to_string().starts_with("critical retained WAL "), "{e}");
}

#[tokio::test]
async fn other_slots_lag_is_a_load_metric_and_ours_is_not_counted() {
    // A primary of its own, so that every slot on it is this test's.
    let cluster = Cluster::start("throttle_slots");
    let db = cluster.fresh_db("thr_slots");
    create_changelog(&db);
    let ours = format!("{}_ours", db.name);
    create_slot(&db, &ours);
    write_wal(&db, 2);
    let mut t = tunables();
    t.max_load = limits("replication_slot_lag_bytes=1MB");
    let mut running = start(&db, &ours, config(), t);
    // Our slot holds more than 1 MiB, but only other slots count.
    let d = running.until("open with the other slots' lag measured", |d| !d.throttled).await;
    assert!(d.reasons.is_empty());

    let other = format!("{}_other", db.name);
    create_slot(&db, &other);
    write_wal(&db, 2);
    let d = running.until_reason("max-load replication_slot_lag_bytes=").await;
    assert!(d.reason.as_deref().unwrap().ends_with(" >= 1.0 MiB"), "{d:?}");
    db.psql(&format!("SELECT pg_drop_replication_slot('{other}')"));
    running.until_open().await;
    running.handle.stop().await;
}
