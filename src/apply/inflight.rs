//! Copy chunks in flight, shared by the copy workers and the flusher.
//!
//! A copy chunk reads the original at its statement's snapshot. If a key of its range were
//! flushed while the chunk is uncommitted, two things go wrong: a row deleted after the
//! chunk's snapshot would be committed back by the chunk (the flush cannot delete a row it
//! does not yet see, and no later change comes to fix it), and the two transactions can
//! deadlock on each other's uncommitted rows. So the flusher never touches a key inside a
//! range in flight: it defers such keys until the chunk has committed, then flushes them
//! with a snapshot that sees the chunk's rows. A chunk registers its range before it starts
//! and waits for a flush already running (which did not know of the range) to finish.
//!
//! Keys are never compared here: the flusher asks the server which keys fall in which range.

use crate::copy::Range;
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use tokio::sync::Notify;

#[derive(Default)]
struct Inner {
    next_id: u64,
    ranges: BTreeMap<u64, Range>,
    /// Number of the last flush started and of the last one finished.
    flush_started: u64,
    flush_finished: u64,
    /// Chunks that ended since the flusher last looked.
    ended: Vec<u64>,
}

#[derive(Default)]
pub struct InFlight {
    inner: Mutex<Inner>,
    flush_ended: Notify,
    /// Wakes the flusher when a chunk ended, to release its deferred keys.
    pub chunk_ended: Notify,
}

/// A registered chunk; hand it back with [`InFlight::chunk_ended`].
#[must_use]
#[derive(Debug)]
pub struct ChunkTicket(u64);

impl InFlight {
    pub fn new() -> std::sync::Arc<InFlight> {
        std::sync::Arc::new(InFlight::default())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state stays consistent under every panic point (single assignments), so a
        // poisoned lock's data is still good.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `range` and waits until no flush that started before runs any more.
    pub async fn chunk_starting(&self, range: &Range) -> ChunkTicket {
        let (id, wait_for) = {
            let mut g = self.lock();
            let id = g.next_id;
            g.next_id += 1;
            g.ranges.insert(id, range.clone());
            (id, (g.flush_started > g.flush_finished).then_some(g.flush_started))
        };
        if let Some(flush) = wait_for {
            loop {
                let ended = self.flush_ended.notified();
                if self.lock().flush_finished >= flush {
                    break;
                }
                ended.await;
            }
        }
        ChunkTicket(id)
    }

    /// The chunk committed or rolled back: its range is free again.
    pub fn chunk_ended(&self, ticket: ChunkTicket) {
        let mut g = self.lock();
        g.ranges.remove(&ticket.0);
        g.ended.push(ticket.0);
        drop(g);
        self.chunk_ended.notify_one();
    }

    /// Starts a flush: returns the ranges in flight, whose keys it must defer.
    pub fn flush_starting(&self) -> Vec<(u64, Range)> {
        let mut g = self.lock();
        g.flush_started += 1;
        g.ranges.iter().map(|(id, r)| (*id, r.clone())).collect()
    }

    pub fn flush_ended(&self) {
        let mut g = self.lock();
        g.flush_finished = g.flush_started;
        drop(g);
        self.flush_ended.notify_waiters();
    }

    /// Chunks that ended since the last call.
    pub fn take_ended(&self) -> Vec<u64> {
        std::mem::take(&mut self.lock().ended)
    }

    pub fn is_in_flight(&self, id: u64) -> bool {
        self.lock().ranges.contains_key(&id)
    }

    pub fn chunks_in_flight(&self) -> usize {
        self.lock().ranges.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn range(lo: Option<&str>, hi: &str) -> Range {
        Range { lo: lo.map(|l| vec![l.to_string()]), hi: vec![hi.to_string()] }
    }

    #[tokio::test]
    async fn flushes_see_the_ranges_registered_before_them() {
        let f = InFlight::new();
        let a = f.chunk_starting(&range(None, "10")).await;
        let ranges = f.flush_starting();
        assert_eq!(ranges.len(), 1);
        f.flush_ended();
        f.chunk_ended(a);
        assert_eq!(f.take_ended().len(), 1);
        assert!(f.flush_starting().is_empty());
        f.flush_ended();
    }

    #[tokio::test(start_paused = true)]
    async fn a_chunk_waits_for_the_flush_that_did_not_know_its_range() {
        let f = InFlight::new();
        assert!(f.flush_starting().is_empty());
        let f2 = f.clone();
        let chunk = tokio::spawn(async move { f2.chunk_starting(&range(Some("10"), "20")).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!chunk.is_finished(), "the chunk must wait for the running flush");
        // A flush starting now knows the range and need not be waited for.
        f.flush_ended();
        assert_eq!(f.flush_starting().len(), 1);
        let ticket = tokio::time::timeout(Duration::from_secs(1), chunk).await.expect("chunk waited too long").unwrap();
        f.flush_ended();
        f.chunk_ended(ticket);
        assert_eq!(f.chunks_in_flight(), 0);
    }

    #[tokio::test]
    async fn no_wait_without_a_running_flush() {
        let f = Arc::new(InFlight::default());
        let t = tokio::time::timeout(Duration::from_millis(100), f.chunk_starting(&range(None, "1"))).await;
        assert!(t.is_ok());
    }
}
