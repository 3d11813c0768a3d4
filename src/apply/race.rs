//! The copy/apply race that loses rows, and its guard.
//!
//! A copy chunk reads the original at its statement's snapshot. A key deleted after that
//! snapshot and flushed while the chunk is still uncommitted is invisible to the flush (the
//! chunk's row is not yet there to delete), and the chunk then commits the stale row; no
//! later change comes to fix it. The guard numbers every committed flush and remembers, for
//! each chunk in flight, the number it started at. When a chunk commits, every key flushed
//! since it started is handed back to be flushed once more, now that the chunk's rows are
//! visible. Keys are never compared here: the second flush re-reads the original by key.

use super::flush::Key;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

#[derive(Default)]
struct Inner {
    /// Number of the last committed flush.
    seq: u64,
    next_chunk: u64,
    /// Chunk id → flush number when it started.
    in_flight: BTreeMap<u64, u64>,
    /// Flushes committed while some chunk was in flight: (flush number, keys).
    log: VecDeque<(u64, Arc<Vec<Key>>)>,
    /// Keys to flush again.
    requeue: Vec<Arc<Vec<Key>>>,
}

#[derive(Default)]
pub struct RaceGuard {
    inner: Mutex<Inner>,
    /// Wakes the writer when keys were handed back.
    pub requeued: Notify,
}

#[must_use]
pub struct ChunkTicket(u64);

impl RaceGuard {
    pub fn new() -> Arc<RaceGuard> {
        Arc::new(RaceGuard::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the maps half-updated in a way that
        // matters more than losing the process, so recover the data instead of propagating.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Call before a chunk's statement starts.
    pub fn chunk_started(&self) -> ChunkTicket {
        let mut g = self.lock();
        let id = g.next_chunk;
        g.next_chunk += 1;
        let seq = g.seq;
        g.in_flight.insert(id, seq);
        ChunkTicket(id)
    }

    /// Call after the chunk committed: keys flushed since it started are flushed again.
    pub fn chunk_committed(&self, ticket: ChunkTicket) {
        let mut g = self.lock();
        if let Some(start) = g.in_flight.remove(&ticket.0) {
            let again: Vec<_> = g.log.iter().filter(|(seq, _)| *seq > start).map(|(_, k)| k.clone()).collect();
            if !again.is_empty() {
                g.requeue.extend(again);
                drop(g);
                self.requeued.notify_one();
                self.prune();
                return;
            }
        }
        drop(g);
        self.prune();
    }

    /// Call when a chunk rolled back: it wrote nothing, so nothing needs flushing again.
    pub fn chunk_abandoned(&self, ticket: ChunkTicket) {
        self.lock().in_flight.remove(&ticket.0);
        self.prune();
    }

    /// Call after a flush of `keys` committed.
    pub fn flushed(&self, keys: Arc<Vec<Key>>) {
        let mut g = self.lock();
        g.seq += 1;
        if !g.in_flight.is_empty() {
            let seq = g.seq;
            g.log.push_back((seq, keys));
        }
    }

    /// Keys handed back by committed chunks.
    pub fn take_requeued(&self) -> Vec<Key> {
        let batches = std::mem::take(&mut self.lock().requeue);
        batches.iter().flat_map(|b| b.iter().cloned()).collect()
    }

    pub fn chunks_in_flight(&self) -> usize {
        self.lock().in_flight.len()
    }

    /// Forgets flushes that no chunk in flight started before.
    fn prune(&self) {
        let mut g = self.lock();
        let oldest = g.in_flight.values().min().copied();
        match oldest {
            None => g.log.clear(),
            Some(start) => {
                while g.log.front().map_or(false, |(seq, _)| *seq <= start) {
                    g.log.pop_front();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(v: &[&str]) -> Arc<Vec<Key>> {
        Arc::new(v.iter().map(|s| vec![s.to_string()].into_boxed_slice()).collect())
    }

    fn flat(v: Vec<Key>) -> Vec<String> {
        let mut out: Vec<String> = v.into_iter().map(|k| k[0].clone()).collect();
        out.sort();
        out
    }

    #[test]
    fn keys_flushed_during_a_chunk_are_flushed_again_after_it() {
        let g = RaceGuard::new();
        g.flushed(keys(&["before"]));
        let t = g.chunk_started();
        g.flushed(keys(&["during1"]));
        g.flushed(keys(&["during2"]));
        assert!(g.take_requeued().is_empty());
        g.chunk_committed(t);
        assert_eq!(flat(g.take_requeued()), ["during1", "during2"]);
        assert!(g.take_requeued().is_empty());
    }

    #[test]
    fn overlapping_chunks_each_get_what_overlapped_them() {
        let g = RaceGuard::new();
        let a = g.chunk_started();
        g.flushed(keys(&["x"]));
        let b = g.chunk_started();
        g.flushed(keys(&["y"]));
        g.chunk_committed(a);
        assert_eq!(flat(g.take_requeued()), ["x", "y"]);
        g.flushed(keys(&["z"]));
        g.chunk_committed(b);
        assert_eq!(flat(g.take_requeued()), ["y", "z"]);
        assert_eq!(g.chunks_in_flight(), 0);
    }

    #[test]
    fn abandoned_chunks_and_idle_flushes_hand_nothing_back() {
        let g = RaceGuard::new();
        g.flushed(keys(&["idle"]));
        let t = g.chunk_started();
        g.flushed(keys(&["during"]));
        g.chunk_abandoned(t);
        assert!(g.take_requeued().is_empty());
        let t = g.chunk_started();
        g.chunk_committed(t);
        assert!(g.take_requeued().is_empty());
    }
}
