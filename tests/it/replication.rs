//! The walsender transport and slot management against real PostgreSQL (and, for the
//! failure modes a real server will not produce on demand, a scripted fake walsender).

mod decoded;
mod fake;

use crate::harness::{Cluster, TestDb};
use bytes::Bytes;
use pg_ghost::conn::{ConnInfo, Endpoint};
use pg_ghost::error::{Backoff, ErrorKind};
use pg_ghost::lsn::Lsn;
use pg_ghost::replication::slot;
use pg_ghost::replication::transport::{
    AuthMethod, ProtoVersion, ReplicationConnection, ReplicationStream, SlotKind, SlotSnapshot, StreamEvent, StreamOptions,
};
use pg_ghost::sql::QualifiedName;
use std::collections::VecDeque;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(30);

fn info(db: &TestDb<'_>) -> ConnInfo {
    ConnInfo::parse(&db.conninfo()).expect("test conninfo parses")
}

fn info_as(db: &TestDb<'_>, user: &str, password: Option<&str>) -> ConnInfo {
    let mut info = info(db);
    info.user = user.to_string();
    info.password = password.map(|p| p.as_bytes().to_vec());
    info
}

async fn connect(db: &TestDb<'_>) -> ReplicationConnection {
    ReplicationConnection::connect(&info(db)).await.expect("replication connection")
}

/// A table `t(id int primary key, v text)` in publication `pub`.
fn table_and_publication(db: &TestDb<'_>) {
    db.psql("CREATE TABLE t(id int PRIMARY KEY, v text); CREATE PUBLICATION pub FOR TABLE t");
}

/// Roles are cluster-wide and the pg_hba lines name them exactly: create each once, under
/// an advisory lock so that tests running in parallel do not race on it.
fn ensure_role(cluster: &Cluster, name: &str, password_encryption: &str, password: &str) {
    cluster.psql(
        "postgres",
        &format!(
            "DO $$ BEGIN
               PERFORM pg_advisory_xact_lock(hashtext('{name}'));
               IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{name}') THEN
                 SET LOCAL password_encryption = '{password_encryption}';
                 CREATE ROLE {name} LOGIN REPLICATION PASSWORD '{password}';
               END IF;
             END $$"
        ),
    );
}

/// One decoded-enough transaction: the Commit's end LSN and the messages inside it.
struct Txn {
    end_lsn: Lsn,
    messages: Vec<Bytes>,
}

impl Txn {
    fn contains(&self, needle: &str) -> bool {
        self.messages
            .iter()
            .any(|m| m.windows(needle.len()).any(|w| w == needle.as_bytes()))
    }

    fn kinds(&self) -> String {
        self.messages.iter().filter_map(|m| m.first().map(|b| *b as char)).collect()
    }
}

/// Commit: tag, flags u8, commit LSN u64, end LSN u64, timestamp i64.
fn commit_end_lsn(commit: &[u8]) -> Lsn {
    let bytes: [u8; 8] = commit[10..18].try_into().expect("Commit message has an end LSN");
    Lsn(u64::from_be_bytes(bytes))
}

/// Groups the stream's XLogData into transactions (Begin .. Commit), keeping leftovers.
struct Txns {
    stream: ReplicationStream,
    queue: VecDeque<StreamEvent>,
    current: Option<Vec<Bytes>>,
}

impl Txns {
    fn new(stream: ReplicationStream) -> Self {
        Txns {
            stream,
            queue: VecDeque::new(),
            current: None,
        }
    }

    async fn next(&mut self) -> Txn {
        timeout(WAIT, async {
            loop {
                while let Some(event) = self.queue.pop_front() {
                    let StreamEvent::XLogData { data, .. } = event else { continue };
                    match data.first() {
                        Some(b'B') => self.current = Some(Vec::new()),
                        Some(b'C') => {
                            let messages = self.current.take().expect("Commit without Begin");
                            return Txn {
                                end_lsn: commit_end_lsn(&data),
                                messages,
                            };
                        }
                        _ => self.current.as_mut().expect("change outside a transaction").push(data),
                    }
                }
                let batch = self.stream.recv().await.expect("stream failed").expect("stream ended");
                self.queue.extend(batch);
            }
        })
        .await
        .expect("no transaction arrived in time")
    }

    /// Nothing but keepalives arrives for `quiet`.
    async fn expect_quiet(&mut self, quiet: Duration) {
        let _ = timeout(quiet, async {
            loop {
                for event in self.queue.drain(..) {
                    if let StreamEvent::XLogData { data, .. } = event {
                        panic!("unexpected message {:?}", data.first().map(|b| *b as char));
                    }
                }
                let batch = self.stream.recv().await.expect("stream failed").expect("stream ended");
                self.queue.extend(batch);
            }
        })
        .await;
    }
}

async fn start(conn: ReplicationConnection, slot: &str, options: &StreamOptions) -> Txns {
    Txns::new(conn.start_replication(slot, Lsn::ZERO, options).await.expect("START_REPLICATION"))
}

// ---------------------------------------------------------------- authentication

async fn auth_as(user: &str, password: Option<&str>, expected: AuthMethod) {
    let db = Cluster::primary().fresh_db("auth");
    let mut conn = ReplicationConnection::connect(&info_as(&db, user, password))
        .await
        .expect("connect");
    assert_eq!(conn.auth_method(), expected);
    let id = conn.identify_system().await.expect("IDENTIFY_SYSTEM");
    assert_eq!(id.dbname.as_deref(), Some(db.name.as_str()));
    conn.close().await.expect("close");
}

#[tokio::test]
async fn scram_authentication() {
    auth_as("ghost", Some("ghost"), AuthMethod::ScramSha256).await;
}

#[tokio::test]
async fn md5_authentication() {
    ensure_role(Cluster::primary(), "ghost_md5", "md5", "md5-secret");
    auth_as("ghost_md5", Some("md5-secret"), AuthMethod::Md5).await;
}

#[tokio::test]
async fn trust_authentication() {
    ensure_role(Cluster::primary(), "ghost_trust", "scram-sha-256", "unused");
    auth_as("ghost_trust", None, AuthMethod::Trust).await;
}

#[tokio::test]
async fn cleartext_authentication() {
    ensure_role(Cluster::primary(), "ghost_cleartext", "scram-sha-256", "clear-secret");
    auth_as("ghost_cleartext", Some("clear-secret"), AuthMethod::Cleartext).await;
}

#[tokio::test]
async fn wrong_password_is_an_auth_error() {
    ensure_role(Cluster::primary(), "ghost_md5", "md5", "md5-secret");
    let db = Cluster::primary().fresh_db("badpw");
    for user in ["ghost", "ghost_md5"] {
        let err = ReplicationConnection::connect(&info_as(&db, user, Some("wrong")))
            .await
            .err()
            .expect("a wrong password must fail");
        assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
        assert_eq!(err.sqlstate(), Some("28P01"), "{err}");
        let text = err.to_string();
        assert!(
            text.contains(&format!("password authentication failed for user \"{user}\"")),
            "{text}"
        );
        assert!(text.contains("opening a replication connection"), "{text}");
    }
    let err = ReplicationConnection::connect(&info_as(&db, "ghost", None))
        .await
        .err()
        .expect("no password");
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
}

#[tokio::test]
async fn unix_socket_connection() {
    let cluster = Cluster::primary();
    let db = cluster.fresh_db("unix");
    let mut info = info(&db);
    info.endpoint = Endpoint::Unix {
        dir: cluster.dir.clone(),
        port: cluster.port,
    };
    info.password = None;
    let mut conn = ReplicationConnection::connect(&info).await.expect("connect over the Unix socket");
    // pg_hba.conf: `local replication all trust`.
    assert_eq!(conn.auth_method(), AuthMethod::Trust);
    conn.identify_system().await.expect("IDENTIFY_SYSTEM");
}

// ---------------------------------------------------------------- commands and slots

#[tokio::test]
async fn identify_system_and_simple_query() {
    let db = Cluster::primary().fresh_db("identify");
    let mut conn = connect(&db).await;
    let id = conn.identify_system().await.expect("IDENTIFY_SYSTEM");
    assert!(id.system_id > 0);
    assert_eq!(id.timeline, 1);
    assert!(id.xlog_pos > Lsn::ZERO);
    assert_eq!(id.dbname.as_deref(), Some(db.name.as_str()));
    assert_eq!(conn.parameter("server_version"), Some(db.psql("SHOW server_version").as_str()));

    let r = conn
        .simple_query("SELECT 1 AS a, NULL::text AS b; SELECT 'x' AS c")
        .await
        .expect("SQL");
    assert_eq!(r.len(), 2);
    assert_eq!(
        (r[0].value(0, "a"), r[0].value(0, "b"), r[0].tag.as_str()),
        (Some("1"), None, "SELECT 1")
    );
    assert_eq!(r[1].value(0, "c"), Some("x"));

    // A failed command leaves the connection usable, and the error has its SQLSTATE.
    let err = conn.simple_query("SELECT * FROM no_such_table").await.expect_err("must fail");
    assert_eq!(err.sqlstate(), Some("42P01"));
    assert!(err.to_string().contains("no_such_table"), "{err}");
    assert_eq!(conn.identify_system().await.expect("still usable").timeline, 1);
}

#[tokio::test]
async fn persistent_and_temporary_slots() {
    let db = Cluster::primary().fresh_db("slots");
    let client = db.client().await;
    let name = db.name.clone();
    let mut conn = connect(&db).await;
    let created = conn
        .create_slot(&name, SlotKind::Persistent, SlotSnapshot::Nothing)
        .await
        .expect("create");
    assert_eq!((created.name.as_str(), created.plugin.as_str()), (name.as_str(), "pgoutput"));
    assert!(created.consistent_point > Lsn::ZERO);
    assert_eq!(created.snapshot, None);
    let info = slot::slot_info(&client, &name).await.expect("slot_info").expect("slot exists");
    assert!(!info.temporary);
    assert_eq!(info.plugin.as_deref(), Some("pgoutput"));
    assert_eq!(info.database.as_deref(), Some(db.name.as_str()));
    assert_eq!(info.confirmed_flush_lsn, Some(created.consistent_point));

    // The same name again is refused with the server's error.
    let err = conn
        .create_slot(&name, SlotKind::Persistent, SlotSnapshot::Nothing)
        .await
        .expect_err("duplicate");
    assert_eq!(err.sqlstate(), Some("42710"), "{err}");

    let temp = format!("{name}_tmp");
    let mut other = connect(&db).await;
    let t = other
        .create_slot(&temp, SlotKind::Temporary, SlotSnapshot::Nothing)
        .await
        .expect("temporary");
    assert!(t.consistent_point > Lsn::ZERO);
    assert!(slot::slot_info(&client, &temp).await.expect("slot_info").expect("exists").temporary);
    other.close().await.expect("close");
    // A temporary slot goes with its connection (once the walsender has exited).
    timeout(WAIT, async {
        while slot::slot_exists(&client, &temp).await.expect("slot_exists") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("temporary slot outlived its connection");

    conn.drop_slot(&name, true).await.expect("drop");
    assert!(!slot::slot_exists(&client, &name).await.expect("slot_exists"));
    let err = conn.drop_slot(&name, false).await.expect_err("already gone");
    assert_eq!(err.sqlstate(), Some("42704"), "{err}");
}

#[tokio::test]
async fn exported_snapshot_is_importable() {
    let db = Cluster::primary().fresh_db("snapshot");
    db.psql("CREATE TABLE t(id int PRIMARY KEY); INSERT INTO t VALUES (1)");
    let mut conn = connect(&db).await;
    let created = conn
        .create_slot(&db.name, SlotKind::Temporary, SlotSnapshot::Export)
        .await
        .expect("create");
    let snapshot = created.snapshot.expect("an exported snapshot");
    // Committed after the consistent point: in the stream, not in the snapshot.
    db.psql("INSERT INTO t VALUES (2)");

    // Nothing may run on the walsender before the snapshot is imported.
    let client = db.client().await;
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT {}",
            pg_ghost::sql::literal(&snapshot)
        ))
        .await
        .expect("import the snapshot");
    let seen: i64 = client.query_one("SELECT count(*) FROM t", &[]).await.expect("count").get(0);
    assert_eq!(seen, 1, "the snapshot sees the table as of the consistent point");
    client.batch_execute("COMMIT").await.expect("commit");
    let now: i64 = client.query_one("SELECT count(*) FROM t", &[]).await.expect("count").get(0);
    assert_eq!(now, 2);

    conn.drop_slot(&db.name, false).await.expect("drop");
}

// ---------------------------------------------------------------- streaming

#[tokio::test]
async fn streams_an_insert() {
    let db = Cluster::primary().fresh_db("stream");
    table_and_publication(&db);
    let mut conn = connect(&db).await;
    let created = conn
        .create_slot(&db.name, SlotKind::Persistent, SlotSnapshot::Nothing)
        .await
        .expect("slot");
    let mut txns = start(conn, &db.name, &StreamOptions::new(["pub"])).await;
    let client = db.client().await;
    client
        .batch_execute("INSERT INTO t VALUES (1, 'hello-stream')")
        .await
        .expect("insert");
    let txn = txns.next().await;
    assert_eq!(txn.kinds(), "RI", "Relation, then Insert");
    assert!(txn.contains("hello-stream"));
    assert!(txn.end_lsn > created.consistent_point);
    let stats = txns.stream.stats();
    assert!(stats.xlog_data >= 4 && stats.reads >= 1 && stats.bytes_read > 0, "{stats:?}");
}

#[tokio::test]
async fn reconnect_resumes_after_the_flushed_commit() {
    let db = Cluster::primary().fresh_db("resume");
    table_and_publication(&db);
    let client = db.client().await;
    let name = db.name.clone();
    let mut conn = connect(&db).await;
    conn.create_slot(&name, SlotKind::Persistent, SlotSnapshot::Nothing)
        .await
        .expect("slot");
    let mut txns = start(conn, &name, &StreamOptions::new(["pub"])).await;
    for (id, v) in [(1, "txn-A"), (2, "txn-B")] {
        client.execute("INSERT INTO t VALUES ($1, $2)", &[&id, &v]).await.expect("insert");
    }
    let a = txns.next().await;
    let b = txns.next().await;
    assert!(a.contains("txn-A") && b.contains("txn-B"));
    assert!(a.end_lsn < b.end_lsn);

    // Acknowledge A only, then go away; flushed never moves back.
    txns.stream.set_flushed(a.end_lsn);
    txns.stream.set_flushed(Lsn(a.end_lsn.0 - 1));
    assert_eq!(txns.stream.feedback().positions().flushed, a.end_lsn);
    txns.stream.stop().await.expect("stop").close().await.expect("close");
    assert_eq!(slot::confirmed_flush_lsn(&client, &name).await.expect("confirmed"), Some(a.end_lsn));
    client.execute("INSERT INTO t VALUES (3, 'txn-C')", &[]).await.expect("insert");

    // Right after a disconnect the old walsender may still hold the slot (55006): retry.
    let mut txns = Txns::new(
        Backoff::default()
            .retry("restarting replication", || async {
                ReplicationConnection::connect(&info(&db))
                    .await?
                    .start_replication(&name, Lsn::ZERO, &StreamOptions::new(["pub"]))
                    .await
            })
            .await
            .expect("restart"),
    );
    let again_b = txns.next().await;
    assert!(again_b.contains("txn-B") && !again_b.contains("txn-A"), "{}", again_b.kinds());
    assert_eq!(again_b.end_lsn, b.end_lsn);
    let c = txns.next().await;
    assert!(c.contains("txn-C"));
    txns.expect_quiet(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn stop_then_drop_slot_on_the_same_connection() {
    let db = Cluster::primary().fresh_db("stopdrop");
    table_and_publication(&db);
    let client = db.client().await;
    let mut conn = connect(&db).await;
    conn.create_slot(&db.name, SlotKind::Persistent, SlotSnapshot::Nothing)
        .await
        .expect("slot");
    let mut txns = start(conn, &db.name, &StreamOptions::new(["pub"])).await;
    // A burst still in flight when we stop: the drain must get past it.
    client
        .batch_execute("INSERT INTO t SELECT g, 'x' FROM generate_series(1, 20000) g")
        .await
        .expect("insert");
    let first = txns.next().await;
    assert!(first.contains("x"));
    let mut conn = timeout(WAIT, txns.stream.stop()).await.expect("stop in time").expect("stop");
    conn.drop_slot(&db.name, true).await.expect("DROP_REPLICATION_SLOT after stop");
    assert!(!slot::slot_exists(&client, &db.name).await.expect("slot_exists"));
    assert_eq!(conn.identify_system().await.expect("still in command mode").timeline, 1);
}

#[tokio::test]
async fn dropping_a_stream_closes_its_connection() {
    let db = Cluster::primary().fresh_db("dropped");
    table_and_publication(&db);
    let client = db.client().await;
    let mut conn = connect(&db).await;
    conn.create_slot(&db.name, SlotKind::Temporary, SlotSnapshot::Nothing)
        .await
        .expect("slot");
    let stream = conn
        .start_replication(&db.name, Lsn::ZERO, &StreamOptions::new(["pub"]))
        .await
        .expect("start");
    drop(stream);
    // The walsender sees the connection close, and its temporary slot goes with it.
    timeout(WAIT, async {
        while slot::slot_exists(&client, &db.name).await.expect("slot_exists") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the connection of a dropped stream stays open");
}

#[tokio::test]
async fn terminated_walsender_is_a_clear_error() {
    let db = Cluster::primary().fresh_db("killed");
    table_and_publication(&db);
    let mut conn = connect(&db).await;
    conn.create_slot(&db.name, SlotKind::Temporary, SlotSnapshot::Nothing)
        .await
        .expect("slot");
    let mut stream = conn
        .start_replication(&db.name, Lsn::ZERO, &StreamOptions::new(["pub"]))
        .await
        .expect("start");
    let pid = stream.backend_pid();
    db.psql(&format!("SELECT pg_terminate_backend({pid})"));
    let err = timeout(WAIT, async {
        loop {
            match stream.recv().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("a terminated walsender is not a clean end"),
                Err(e) => return e,
            }
        }
    })
    .await
    .expect("the stream must fail, not hang");
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    let text = err.to_string();
    assert!(text.contains("terminating connection due to administrator command"), "{text}");
    assert!(text.contains(&format!("slot \"{}\"", db.name)), "{text}");
    assert!(stream.recv().await.is_err(), "a failed stream stays failed");
    assert!(stream.stop().await.is_err(), "stop reports the failure");
}

#[tokio::test]
async fn missing_publication_fails_at_start() {
    let db = Cluster::primary().fresh_db("nopub");
    table_and_publication(&db);
    let mut conn = connect(&db).await;
    conn.create_slot(&db.name, SlotKind::Temporary, SlotSnapshot::Nothing)
        .await
        .expect("slot");
    let err = conn
        .start_replication(&db.name, Lsn::ZERO, &StreamOptions::new(["pub", "nope"]))
        .await
        .err()
        .expect("a missing publication must fail at once");
    assert_eq!(err.sqlstate(), Some("42704"), "{err}");
    assert!(err.to_string().contains("\"nope\""), "{err}");
}

#[tokio::test]
async fn odd_publication_names_and_protocol_options() {
    let db = Cluster::primary().fresh_db("options");
    let publication = "Odd \"Pub\", it's";
    db.psql("CREATE TABLE t(id int PRIMARY KEY, v text)");
    let client = db.client().await;
    slot::create_publication(&client, publication, &[QualifiedName::new("public", "t")])
        .await
        .expect("publication");
    assert!(slot::publication_exists(&client, publication).await.expect("exists"));
    let mut conn = connect(&db).await;
    conn.create_slot(&db.name, SlotKind::Temporary, SlotSnapshot::Nothing)
        .await
        .expect("slot");
    let mut options = StreamOptions::new([publication]);
    options.proto_version = ProtoVersion::V2;
    options.streaming = true;
    options.binary = true;
    options.messages = true;
    let mut txns = start(conn, &db.name, &options).await;
    client
        .batch_execute("INSERT INTO t VALUES (7, 'odd-name-row')")
        .await
        .expect("insert");
    client
        .batch_execute("SELECT pg_logical_emit_message(true, 'pg-ghost', 'sentinel-1')")
        .await
        .expect("emit message");
    let insert = txns.next().await;
    assert!(insert.contains("odd-name-row"));
    let message = txns.next().await;
    assert_eq!(message.kinds(), "M");
    assert!(message.contains("pg-ghost") && message.contains("sentinel-1"));

    slot::drop_publication(&client, publication).await.expect("drop publication");
    slot::drop_publication(&client, publication).await.expect("dropping twice is fine");
    assert!(!slot::publication_exists(&client, publication).await.expect("exists"));
}

// ---------------------------------------------------------------- slot management over SQL

#[tokio::test]
async fn slot_progress_and_forced_drop() {
    let db = Cluster::primary().fresh_db("slotsql");
    table_and_publication(&db);
    let client = db.client().await;
    let name = db.name.clone();
    let mut conn = connect(&db).await;
    conn.create_slot(&name, SlotKind::Persistent, SlotSnapshot::Nothing)
        .await
        .expect("slot");
    let retained_before = slot::retained_wal_bytes(&client, &name)
        .await
        .expect("retained")
        .expect("slot exists");
    let mut txns = start(conn, &name, &StreamOptions::new(["pub"])).await;
    client
        .batch_execute("INSERT INTO t SELECT g, repeat('w', 100) FROM generate_series(1, 5000) g")
        .await
        .expect("insert");
    let txn = txns.next().await;
    let retained = slot::retained_wal_bytes(&client, &name)
        .await
        .expect("retained")
        .expect("slot exists");
    assert!(retained > retained_before + 500_000, "{retained_before} -> {retained}");

    // Acknowledged on request, not at the next interval.
    txns.stream.set_flushed(txn.end_lsn);
    txns.stream.send_status_now();
    timeout(WAIT, async {
        while slot::confirmed_flush_lsn(&client, &name).await.expect("confirmed") != Some(txn.end_lsn) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("confirmed_flush_lsn follows the acknowledged LSN");
    let info = slot::slot_info(&client, &name).await.expect("info").expect("exists");
    assert_eq!(info.active_pid, Some(txns.stream.backend_pid()));

    // Dropping an active slot terminates its walsender first.
    assert!(slot::drop_slot(&client, &name, &Backoff::default()).await.expect("drop"));
    assert!(!slot::slot_exists(&client, &name).await.expect("exists"));
    assert!(!slot::drop_slot(&client, &name, &Backoff::default()).await.expect("idempotent"));
    let err = timeout(WAIT, async {
        loop {
            if let Err(e) = txns.stream.recv().await {
                return e;
            }
        }
    })
    .await
    .expect("the stream notices");
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert_eq!(slot::retained_wal_bytes(&client, &name).await.expect("retained"), None);
}

#[tokio::test]
async fn slot_creation_blockers_are_listed() {
    let db = Cluster::primary().fresh_db("blockers");
    db.psql("CREATE TABLE t(id int)");
    let writer = db.client().await;
    writer
        .batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .expect("open a writing transaction");
    let writer_pid: i32 = writer.query_one("SELECT pg_backend_pid()", &[]).await.expect("pid").get(0);
    let observer = db.client().await;
    let blockers = slot::slot_creation_blockers(&observer).await.expect("blockers");
    let mine = blockers.iter().find(|b| b.pid == writer_pid).expect("the open writer is listed");
    assert_eq!(mine.database.as_deref(), Some(db.name.as_str()));

    // And it really blocks: creation completes only once the writer commits.
    let mut conn = connect(&db).await;
    let create = conn.create_slot(&db.name, SlotKind::Temporary, SlotSnapshot::Nothing);
    tokio::pin!(create);
    assert!(
        timeout(Duration::from_millis(300), &mut create).await.is_err(),
        "creation waits for the writer"
    );
    writer.batch_execute("COMMIT").await.expect("commit");
    timeout(WAIT, create).await.expect("creation finishes").expect("slot");
}

// ---------------------------------------------------------------- keepalives and timeouts

/// A cluster with wal_sender_timeout = 2s, shared by the tests that need it.
fn impatient_cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let c = Cluster::start("impatient");
        c.psql("postgres", "ALTER SYSTEM SET wal_sender_timeout = '2s'");
        c.psql("postgres", "SELECT pg_reload_conf()");
        c
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_replies_keep_an_idle_stream_alive() {
    let cluster = impatient_cluster();
    let db = cluster.fresh_db("keepalive");
    table_and_publication(&db);
    assert_eq!(db.psql("SHOW wal_sender_timeout"), "2s");
    let mut conn = connect(&db).await;
    conn.create_slot(&db.name, SlotKind::Temporary, SlotSnapshot::Nothing)
        .await
        .expect("slot");
    // No periodic updates at all: only answers to the server's requests keep us alive.
    let mut options = StreamOptions::new(["pub"]);
    options.status_interval = Duration::from_secs(3600);
    options.fit_status_interval_to_server = false;
    let mut txns = start(conn, &db.name, &options).await;
    assert_eq!(txns.stream.status_interval(), Duration::from_secs(3600));
    txns.expect_quiet(Duration::from_secs(7)).await;
    let stats = txns.stream.stats();
    assert!(stats.replies_requested >= 2, "{stats:?}");
    assert!(stats.status_updates >= 2, "{stats:?}");

    let client = db.client().await;
    client
        .batch_execute("INSERT INTO t VALUES (1, 'still-here')")
        .await
        .expect("insert");
    assert!(txns.next().await.contains("still-here"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_consumer_stays_connected() {
    let cluster = impatient_cluster();
    let db = cluster.fresh_db("stalled");
    table_and_publication(&db);
    let mut conn = connect(&db).await;
    conn.create_slot(&db.name, SlotKind::Temporary, SlotSnapshot::Nothing)
        .await
        .expect("slot");
    let mut options = StreamOptions::new(["pub"]);
    options.channel_capacity = 2;
    let mut txns = start(conn, &db.name, &options).await;
    assert_eq!(
        txns.stream.status_interval(),
        Duration::from_secs(1),
        "fitted to half of wal_sender_timeout"
    );
    let client = db.client().await;
    // Far more than the channel and the read-ahead hold: the reader stops reading.
    client
        .batch_execute("INSERT INTO t SELECT g, repeat('s', 200) FROM generate_series(1, 200000) g")
        .await
        .expect("insert");
    client.batch_execute("INSERT INTO t VALUES (0, 'last-one')").await.expect("insert");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let stats = txns.stream.stats();
    assert!(stats.status_updates >= 4, "periodic updates while stalled: {stats:?}");
    let big = txns.next().await;
    assert_eq!(big.messages.len(), 1 + 200000);
    assert!(txns.next().await.contains("last-one"));
}
