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
//! A fresh copy also publishes the region it has not handed out yet, `(cursor, max]`. The
//! flusher skips keys there: the chunk that will cover them registers after the flush looked
//! (registration moves the cursor, under the chunker's lock), so it reads them in a snapshot
//! taken after their change was visible, and no ghost row with such a key exists before its
//! chunk. That is what lets copy chunks insert without `ON CONFLICT`, which costs an extra
//! WAL record per row.
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
    /// For each registered chunk not started yet, the flush it must wait for.
    waits_for: BTreeMap<u64, Option<u64>>,
    /// The keys a fresh copy has not handed out yet: one region for the whole table, or one
    /// per partition copied on its own.
    uncopied: Vec<Range>,
    /// A fresh copy is about to start: no flush until it says which keys it will copy.
    copy_pending: bool,
}

/// What a flush must know of the copy, taken when it starts.
#[derive(Clone, Debug, Default)]
pub struct CopyView {
    /// Ranges of chunks in flight: their keys are deferred.
    pub in_flight: Vec<(u64, Range)>,
    /// Keys no chunk has reached yet: skipped, the copy will read them.
    pub uncopied: Vec<Range>,
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

/// A registered range that is released however its holder ends, cancellation included: a
/// range left registered would hold back the flusher's keys in it for the rest of the run.
pub struct Registered<'a> {
    inflight: &'a InFlight,
    ticket: Option<ChunkTicket>,
}

impl<'a> Registered<'a> {
    pub fn new(inflight: &'a InFlight, ticket: ChunkTicket) -> Registered<'a> {
        Registered { inflight, ticket: Some(ticket) }
    }

    /// Waits until no flush that started before the registration runs any more.
    pub async fn wait_for_earlier_flushes(&self) {
        if let Some(ticket) = &self.ticket {
            self.inflight.wait_for_earlier_flushes(ticket).await;
        }
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.inflight.chunk_ended(ticket);
        }
    }
}

impl InFlight {
    pub fn new() -> std::sync::Arc<InFlight> {
        std::sync::Arc::new(InFlight::default())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state stays consistent under every panic point (single assignments), so a
        // poisoned lock's data is still good.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh copy will follow: flushes wait for [`copy_planned`], so that none writes a
    /// key the copy is going to insert.
    ///
    /// [`copy_planned`]: InFlight::copy_planned
    pub fn expect_copy(&self) {
        self.lock().copy_pending = true;
    }

    /// The fresh copy will hand out every key in `regions` (none: nothing to copy), each
    /// region's in order, through [`register`]; flushes may run again.
    ///
    /// [`register`]: InFlight::register
    pub fn copy_planned(&self, regions: Vec<Range>) {
        let mut g = self.lock();
        g.uncopied = regions;
        g.copy_pending = false;
        drop(g);
        self.chunk_ended.notify_one();
    }

    /// False while a fresh copy is expected and has not said what it will copy.
    pub fn flushes_allowed(&self) -> bool {
        !self.lock().copy_pending
    }

    /// Registers `range` and waits until no flush that started before runs any more.
    pub async fn chunk_starting(&self, range: &Range) -> ChunkTicket {
        let ticket = self.register(range);
        self.wait_for_earlier_flushes(&ticket).await;
        ticket
    }

    /// Registers a range at once; a copy chunk calls it as it takes the range from the
    /// chunker, so the region not handed out shrinks in key order.
    pub fn register(&self, range: &Range) -> ChunkTicket {
        let mut g = self.lock();
        let id = g.next_id;
        g.next_id += 1;
        g.ranges.insert(id, range.clone());
        if let Some(i) = g.uncopied.iter().position(|region| region.part == range.part) {
            if range.hi == g.uncopied[i].hi {
                g.uncopied.remove(i);
            } else {
                g.uncopied[i].lo = Some(range.hi.clone());
            }
        }
        let running = (g.flush_started > g.flush_finished).then_some(g.flush_started);
        g.waits_for.insert(id, running);
        ChunkTicket(id)
    }

    /// Waits until no flush that started before the registration runs any more.
    pub async fn wait_for_earlier_flushes(&self, ticket: &ChunkTicket) {
        let wait_for = self.lock().waits_for.remove(&ticket.0).flatten();
        if let Some(flush) = wait_for {
            loop {
                let ended = self.flush_ended.notified();
                if self.lock().flush_finished >= flush {
                    break;
                }
                ended.await;
            }
        }
    }

    /// The chunk committed or rolled back: its range is free again.
    pub fn chunk_ended(&self, ticket: ChunkTicket) {
        let mut g = self.lock();
        g.ranges.remove(&ticket.0);
        g.waits_for.remove(&ticket.0);
        g.ended.push(ticket.0);
        drop(g);
        self.chunk_ended.notify_one();
    }

    /// Starts a flush: returns the ranges in flight, whose keys it must defer, and the
    /// region no chunk has reached, whose keys it skips. Call it once the flush's changes are
    /// visible, so that a chunk registering later sees them.
    pub fn flush_starting(&self) -> CopyView {
        let mut g = self.lock();
        g.flush_started += 1;
        CopyView { in_flight: g.ranges.iter().map(|(id, r)| (*id, r.clone())).collect(), uncopied: g.uncopied.clone() }
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
        Range::new(lo.map(|l| vec![l.to_string()]), vec![hi.to_string()])
    }

    #[tokio::test]
    async fn flushes_see_the_ranges_registered_before_them() {
        let f = InFlight::new();
        let a = f.chunk_starting(&range(None, "10")).await;
        let ranges = f.flush_starting().in_flight;
        assert_eq!(ranges.len(), 1);
        f.flush_ended();
        f.chunk_ended(a);
        assert_eq!(f.take_ended().len(), 1);
        assert!(f.flush_starting().in_flight.is_empty());
        f.flush_ended();
    }

    #[tokio::test(start_paused = true)]
    async fn a_chunk_waits_for_the_flush_that_did_not_know_its_range() {
        let f = InFlight::new();
        assert!(f.flush_starting().in_flight.is_empty());
        let f2 = f.clone();
        let chunk = tokio::spawn(async move { f2.chunk_starting(&range(Some("10"), "20")).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!chunk.is_finished(), "the chunk must wait for the running flush");
        // A flush starting now knows the range and need not be waited for.
        f.flush_ended();
        assert_eq!(f.flush_starting().in_flight.len(), 1);
        let ticket = tokio::time::timeout(Duration::from_secs(1), chunk).await.expect("chunk waited too long").unwrap();
        f.flush_ended();
        f.chunk_ended(ticket);
        assert_eq!(f.chunks_in_flight(), 0);
    }

    #[test]
    fn registering_chunks_shrinks_the_region_not_copied() {
        let f = InFlight::new();
        f.expect_copy();
        assert!(!f.flushes_allowed());
        f.copy_planned(vec![range(None, "30")]);
        assert!(f.flushes_allowed());
        let a = f.register(&range(None, "10"));
        assert_eq!(f.flush_starting().uncopied, vec![range(Some("10"), "30")]);
        f.flush_ended();
        let b = f.register(&range(Some("10"), "30"));
        let view = f.flush_starting();
        assert_eq!(view.uncopied, vec![], "the last chunk reaches the maximum");
        assert_eq!(view.in_flight.len(), 2);
        f.flush_ended();
        f.chunk_ended(a);
        f.chunk_ended(b);
    }

    #[test]
    fn each_partition_copied_on_its_own_shrinks_its_own_region() {
        let part = |n: &str| {
            Some(Arc::new(crate::copy::Part {
                orig: crate::sql::QualifiedName::new("public", n),
                ghost: crate::sql::QualifiedName::new("public", format!("_{n}_gho")),
                predicate: "true".into(),
            }))
        };
        let of = |p: &Option<Arc<crate::copy::Part>>, lo: Option<&str>, hi: &str| Range { part: p.clone(), ..range(lo, hi) };
        let (a, b) = (part("a"), part("b"));
        let f = InFlight::new();
        f.expect_copy();
        f.copy_planned(vec![of(&a, None, "30"), of(&b, None, "50")]);
        let t1 = f.register(&of(&b, None, "20"));
        assert_eq!(f.flush_starting().uncopied, vec![of(&a, None, "30"), of(&b, Some("20"), "50")]);
        f.flush_ended();
        let t2 = f.register(&of(&a, None, "30"));
        assert_eq!(f.flush_starting().uncopied, vec![of(&b, Some("20"), "50")], "a's only chunk reached its maximum");
        f.flush_ended();
        f.chunk_ended(t1);
        f.chunk_ended(t2);
    }

    #[tokio::test]
    async fn no_wait_without_a_running_flush() {
        let f = Arc::new(InFlight::default());
        let t = tokio::time::timeout(Duration::from_millis(100), f.chunk_starting(&range(None, "1"))).await;
        assert!(t.is_ok());
    }
}
