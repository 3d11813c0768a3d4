//! The apply loop's acknowledgements, driven item by item on a real ghost: the slot never
//! passes a change whose key is neither written nor in a committed park, so a process killed
//! at any moment resumes from a slot that still carries every change it had not written.

use crate::checksum::build;
use pg_ghost::apply::{FlushSql, InFlight, Key, StreamItem, Writer};
use pg_ghost::copy::Range;
use pg_ghost::lsn::Lsn;
use pg_ghost::reconnect::Session;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const TABLE: &str = "
CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL);
INSERT INTO t SELECT i, 0 FROM generate_series(1, 1000) i;
";

fn key(id: &str) -> Key {
    vec![id.to_string()].into_boxed_slice()
}

/// A key changed inside a copy chunk in flight waits for the chunk (the flush defers it);
/// meanwhile the stream goes idle. The idle position is past the key's change: acknowledging
/// it would let a crash lose the change, since no flush holds the key yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_positions_wait_for_keys_deferred_behind_a_chunk() {
    let b = build("acks_deferred", TABLE, "t", "ALTER COLUMN v TYPE bigint").await;
    let inflight = InFlight::new();
    let acked = Arc::new(AtomicU64::new(0));
    let seen = acked.clone();
    let (items, items_rx) = tokio::sync::mpsc::channel(16);
    let (writer, task) = Writer::spawn(
        Session::connect(b.conn.clone()).await.unwrap(),
        FlushSql::new(&b.orig, &b.ghost.name, &b.ghost.mapping),
        inflight.clone(),
        Arc::new(move |lsn: Lsn| {
            seen.fetch_max(lsn.0, Ordering::SeqCst);
        }),
        items_rx,
    );
    let mut stats = writer.stats.clone();
    let settled = |at: u64| move |s: &pg_ghost::apply::ApplyStats| s.received >= Lsn(at) && s.backlog_keys == 0 && !s.flushing;

    // A chunk copying keys up to 100 is in flight; key 50 changes and its change is streamed.
    let chunk = inflight.chunk_starting(&Range::new(None, vec!["100".to_string()])).await;
    b.db.psql("UPDATE t SET v = 7 WHERE id = 50");
    items.send(StreamItem::Committed { keys: vec![key("50")], end_lsn: Lsn(1_000), xid: None }).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), stats.wait_for(settled(1_000))).await.expect("the flush did not end").unwrap();
    // The stream goes idle past it; an empty transaction after, to know the idle was seen.
    items.send(StreamItem::Idle(Lsn(2_000))).await.unwrap();
    items.send(StreamItem::Committed { keys: Vec::new(), end_lsn: Lsn(2_500), xid: None }).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), stats.wait_for(settled(2_500))).await.expect("the writer stalled").unwrap();
    let before_chunk_end = acked.load(Ordering::SeqCst);
    assert!(before_chunk_end < 1_000, "acknowledged {before_chunk_end} while key 50's change (ending at 1000) waited for the chunk");
    assert_eq!(b.db.psql(&format!("SELECT v FROM {} WHERE id = 50", b.ghost.name.sql())), "0", "the key was written inside the chunk");

    // The chunk commits: the key is written, and then the idle position may be acknowledged.
    // (An idle position that arrives while a flush runs is not acknowledged: the next one is.)
    inflight.chunk_ended(chunk);
    tokio::time::timeout(Duration::from_secs(10), stats.wait_for(|s| s.applied_keys >= 1 && s.backlog_keys == 0 && !s.flushing))
        .await
        .expect("the deferred key was never flushed once its chunk ended")
        .unwrap();
    items.send(StreamItem::Idle(Lsn(3_000))).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while acked.load(Ordering::SeqCst) < 3_000 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the idle position was never acknowledged once the key was written");
    assert_eq!(b.db.psql(&format!("SELECT v FROM {} WHERE id = 50", b.ghost.name.sql())), "7", "the deferred key was not written");
    writer.stop().await.unwrap();
    task.await.unwrap().unwrap();
}
