//! Real traffic through the transport and the pgoutput decoder: every message type, with
//! its content asserted (values, old keys, unchanged TOAST, NULLs, relations, LSNs).

use super::{connect, WAIT};
use crate::harness::{Cluster, TestDb};
use pg_ghost::lsn::Lsn;
use pg_ghost::replication::pgoutput::{Begin, ColumnValue, Commit, Decoder, Message, OldTuple, Relation, ReplicaIdentity, TupleData};
use pg_ghost::replication::transport::{ProtoVersion, ReplicationStream, SlotKind, SlotSnapshot, StreamEvent, StreamOptions};
use std::collections::VecDeque;
use tokio::time::timeout;

/// Decoded messages of one stream, in order; keepalives skipped.
struct Decoded {
    stream: ReplicationStream,
    decoder: Decoder,
    queue: VecDeque<StreamEvent>,
}

impl Decoded {
    async fn start(db: &TestDb<'_>, options: StreamOptions, setup: &str) -> Decoded {
        let mut conn = connect(db).await;
        if !setup.is_empty() {
            conn.simple_query(setup).await.expect("session setup on the walsender");
        }
        conn.create_slot(&db.name, SlotKind::Temporary, SlotSnapshot::Nothing)
            .await
            .expect("slot");
        let stream = conn.start_replication(&db.name, Lsn::ZERO, &options).await.expect("start");
        Decoded {
            stream,
            decoder: Decoder::new(),
            queue: VecDeque::new(),
        }
    }

    async fn next(&mut self) -> Message {
        timeout(WAIT, async {
            loop {
                while let Some(event) = self.queue.pop_front() {
                    if let StreamEvent::XLogData { data, .. } = event {
                        return self.decoder.decode(&data).unwrap_or_else(|e| panic!("decode: {e}"));
                    }
                }
                let batch = self.stream.recv().await.expect("stream failed").expect("stream ended");
                self.queue.extend(batch);
            }
        })
        .await
        .expect("no message arrived in time")
    }

    /// Begin, the messages inside, Commit.
    async fn txn(&mut self) -> (Begin, Vec<Message>, Commit) {
        let begin = match self.next().await {
            Message::Begin(b) => b,
            other => panic!("expected Begin, got {other:?}"),
        };
        let mut inside = Vec::new();
        loop {
            match self.next().await {
                Message::Commit(c) => {
                    assert_eq!(c.commit_lsn, begin.final_lsn, "Begin announces the commit's LSN");
                    assert!(c.end_lsn > c.commit_lsn);
                    return (begin, inside, c);
                }
                m => inside.push(m),
            }
        }
    }
}

fn text(v: Option<&ColumnValue>) -> Option<&str> {
    match v {
        Some(ColumnValue::Text(b)) => std::str::from_utf8(b).ok(),
        _ => None,
    }
}

fn texts(t: &TupleData) -> Vec<Option<&str>> {
    t.iter().map(|v| text(Some(v))).collect()
}

fn relation(m: &Message) -> &Relation {
    match m {
        Message::Relation(r) => r,
        other => panic!("expected Relation, got {other:?}"),
    }
}

fn oid(db: &TestDb<'_>, table: &str) -> u32 {
    db.psql(&format!("SELECT '{table}'::regclass::oid")).parse().expect("oid")
}

#[tokio::test]
async fn multi_row_transaction_and_nulls() {
    let db = Cluster::primary().fresh_db("dec_rows");
    db.psql("CREATE TABLE t(id int PRIMARY KEY, v text, n int); CREATE PUBLICATION pub FOR TABLE t");
    let mut s = Decoded::start(&db, StreamOptions::new(["pub"]), "").await;
    db.psql("BEGIN; INSERT INTO t VALUES (1, 'one', 10), (2, NULL, NULL); INSERT INTO t VALUES (3, 'three', 30); COMMIT");
    let (begin, inside, commit) = s.txn().await;
    assert!(begin.xid > 0);
    assert_eq!(inside.len(), 4, "{inside:?}");
    let rel = relation(&inside[0]);
    assert_eq!((rel.namespace.as_str(), rel.name.as_str(), rel.id), ("public", "t", oid(&db, "t")));
    assert_eq!(rel.columns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["id", "v", "n"]);
    assert_eq!(rel.columns.iter().map(|c| c.is_key()).collect::<Vec<_>>(), [true, false, false]);
    assert_eq!(rel.replica_identity, ReplicaIdentity::Default);
    let rows: Vec<_> = inside[1..]
        .iter()
        .map(|m| match m {
            Message::Insert(i) => {
                assert_eq!(i.relation_id, rel.id);
                texts(&i.new)
            }
            other => panic!("expected Insert, got {other:?}"),
        })
        .collect();
    assert_eq!(
        rows,
        [
            vec![Some("1"), Some("one"), Some("10")],
            vec![Some("2"), None, None],
            vec![Some("3"), Some("three"), Some("30")]
        ]
    );
    if let Message::Insert(i) = &inside[2] {
        assert!(i.new.get(1).is_some_and(ColumnValue::is_null) && i.new.get(2).is_some_and(ColumnValue::is_null));
    }
    // The slot position to acknowledge is the Commit's end_lsn.
    s.stream.set_flushed(commit.end_lsn);
}

#[tokio::test]
async fn key_changing_update_carries_the_old_key_and_delete_too() {
    let db = Cluster::primary().fresh_db("dec_update");
    db.psql("CREATE TABLE t(id int PRIMARY KEY, v text); CREATE PUBLICATION pub FOR TABLE t; INSERT INTO t VALUES (1, 'a')");
    let mut s = Decoded::start(&db, StreamOptions::new(["pub"]), "").await;
    db.psql("UPDATE t SET v = 'b' WHERE id = 1");
    db.psql("UPDATE t SET id = 10 WHERE id = 1");
    db.psql("DELETE FROM t WHERE id = 10");

    let (_, inside, _) = s.txn().await;
    match &inside[1] {
        Message::Update(u) => {
            assert_eq!(u.old, None, "no key change: no old tuple");
            assert_eq!(texts(&u.new), [Some("1"), Some("b")]);
        }
        other => panic!("expected Update, got {other:?}"),
    }
    let (_, inside, _) = s.txn().await;
    match &inside[..] {
        [Message::Update(u)] => {
            match &u.old {
                Some(OldTuple::Key(old)) => {
                    assert_eq!(text(old.get(0)), Some("1"), "the old key");
                    assert!(old.get(1).is_some_and(ColumnValue::is_null), "non-key columns are sent as null");
                }
                other => panic!("expected an old key ('K'), got {other:?}"),
            }
            assert_eq!(texts(&u.new), [Some("10"), Some("b")]);
        }
        other => panic!("expected one Update, got {other:?}"),
    }
    let (_, inside, _) = s.txn().await;
    match &inside[..] {
        [Message::Delete(d)] => {
            assert!(matches!(&d.old, OldTuple::Key(k) if text(k.get(0)) == Some("10")), "{d:?}");
        }
        other => panic!("expected one Delete, got {other:?}"),
    }
}

#[tokio::test]
async fn unchanged_toast_is_marked_and_replica_identity_full_sends_the_old_row() {
    let db = Cluster::primary().fresh_db("dec_toast");
    // EXTERNAL storage: large values go out of line uncompressed, so 10 kB is TOASTed.
    db.psql(
        "CREATE TABLE t(id int PRIMARY KEY, v text, big text);
         ALTER TABLE t ALTER COLUMN big SET STORAGE EXTERNAL;
         CREATE TABLE f(id int PRIMARY KEY, v text);
         ALTER TABLE f REPLICA IDENTITY FULL;
         CREATE PUBLICATION pub FOR TABLE t, f;
         INSERT INTO t VALUES (1, 'a', repeat('0123456789', 1000));
         INSERT INTO f VALUES (1, 'old')",
    );
    let mut s = Decoded::start(&db, StreamOptions::new(["pub"]), "").await;
    db.psql("UPDATE t SET v = 'b' WHERE id = 1");
    db.psql("UPDATE t SET big = repeat('z', 10000) WHERE id = 1");
    db.psql("UPDATE f SET v = 'new' WHERE id = 1");

    let (_, inside, _) = s.txn().await;
    match &inside[1] {
        Message::Update(u) => {
            assert_eq!(text(u.new.get(1)), Some("b"));
            assert_eq!(u.new.get(2), Some(&ColumnValue::UnchangedToast), "the untouched TOAST value is 'u'");
        }
        other => panic!("expected Update, got {other:?}"),
    }
    let (_, inside, _) = s.txn().await;
    match &inside[..] {
        [Message::Update(u)] => assert_eq!(text(u.new.get(2)).map(str::len), Some(10000)),
        other => panic!("expected one Update, got {other:?}"),
    }
    let (_, inside, _) = s.txn().await;
    assert_eq!(relation(&inside[0]).replica_identity, ReplicaIdentity::Full);
    match &inside[1] {
        Message::Update(u) => {
            assert!(
                matches!(&u.old, Some(OldTuple::Full(old)) if texts(old) == [Some("1"), Some("old")]),
                "{u:?}"
            );
            assert_eq!(texts(&u.new), [Some("1"), Some("new")]);
        }
        other => panic!("expected Update, got {other:?}"),
    }
}

#[tokio::test]
async fn two_relations_truncate_and_logical_messages() {
    let db = Cluster::primary().fresh_db("dec_multi");
    db.psql(
        "CREATE TABLE a(id int PRIMARY KEY); CREATE TABLE \"B b\"(k text PRIMARY KEY, x int);
         CREATE PUBLICATION pub FOR TABLE a, \"B b\"",
    );
    let mut s = Decoded::start(&db, StreamOptions::new(["pub"]), "").await;
    db.psql("BEGIN; INSERT INTO a VALUES (1); INSERT INTO \"B b\" VALUES ('k1', 5); COMMIT");
    db.psql("TRUNCATE a, \"B b\"");
    db.psql("SELECT pg_logical_emit_message(true, 'pg-ghost', 'sentinel-7')");
    db.psql("SELECT pg_logical_emit_message(false, 'pg-ghost', 'heartbeat')");

    let (_, inside, _) = s.txn().await;
    assert_eq!(
        inside.iter().map(Message::name).collect::<Vec<_>>(),
        ["Relation", "Insert", "Relation", "Insert"]
    );
    let (ra, rb) = (relation(&inside[0]), relation(&inside[2]));
    assert_eq!((ra.name.as_str(), ra.id), ("a", oid(&db, "a")));
    assert_eq!((rb.name.as_str(), rb.id), ("B b", oid(&db, "\"B b\"")));
    assert!(matches!(&inside[3], Message::Insert(i) if i.relation_id == rb.id && texts(&i.new) == [Some("k1"), Some("5")]));

    let (_, inside, _) = s.txn().await;
    match inside.last() {
        Some(Message::Truncate(t)) => {
            let mut ids = t.relation_ids.clone();
            ids.sort_unstable();
            let mut expected = vec![ra.id, rb.id];
            expected.sort_unstable();
            assert_eq!(ids, expected);
            assert!(!t.cascade() && !t.restart_identity());
        }
        other => panic!("expected Truncate, got {other:?}"),
    }

    let (_, inside, commit) = s.txn().await;
    match &inside[..] {
        [Message::LogicalMessage(m)] => {
            assert!(m.is_transactional());
            assert_eq!((&m.prefix[..], &m.content[..]), (&b"pg-ghost"[..], &b"sentinel-7"[..]));
            assert!(m.lsn < commit.end_lsn);
        }
        other => panic!("expected one logical message, got {other:?}"),
    }
    // A non-transactional message comes on its own, outside any Begin/Commit.
    match s.next().await {
        Message::LogicalMessage(m) => {
            assert!(!m.is_transactional());
            assert_eq!(&m.content[..], b"heartbeat");
        }
        other => panic!("expected a logical message, got {other:?}"),
    }
}

#[tokio::test]
async fn protocol_v2_streams_a_large_transaction_in_blocks() {
    let db = Cluster::primary().fresh_db("dec_v2");
    db.psql("CREATE TABLE t(id int PRIMARY KEY, v text); CREATE PUBLICATION pub FOR TABLE t");
    let mut options = StreamOptions::new(["pub"]);
    options.proto_version = ProtoVersion::V2;
    options.streaming = true;
    // The walsender streams a transaction once it exceeds its decoding memory: make that small.
    let mut s = Decoded::start(&db, options, "SET logical_decoding_work_mem = '64kB'").await;
    db.psql("INSERT INTO t SELECT g, repeat('v', 100) FROM generate_series(1, 5000) g");

    let mut inserts = 0;
    let mut blocks = 0;
    let xid = match s.next().await {
        Message::StreamStart(start) => {
            assert!(start.first_segment);
            start.xid
        }
        other => panic!("expected Stream Start, got {other:?}"),
    };
    let mut in_block = true;
    let end_lsn = loop {
        match s.next().await {
            Message::StreamStart(start) => {
                assert!(!in_block && start.xid == xid && !start.first_segment);
                in_block = true;
            }
            Message::StreamStop => {
                assert!(in_block);
                in_block = false;
                blocks += 1;
            }
            Message::Relation(r) => assert_eq!(r.xid, Some(xid)),
            Message::Insert(i) => {
                assert_eq!(i.xid, Some(xid));
                inserts += 1;
            }
            Message::StreamCommit(c) => {
                assert!(!in_block && c.xid == xid);
                break c.end_lsn;
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(inserts, 5000);
    assert!(blocks >= 2, "{blocks} blocks");
    assert!(end_lsn > Lsn::ZERO);
}
