//! The copy's watermark: a key at or below which every row has been copied.
//!
//! Workers commit chunks out of order, so the watermark is the end of the longest prefix of
//! chunks that all committed. A chunk records, in its own transaction, the watermark that
//! its commit makes true: its own end when every chunk before it has committed, the
//! committed prefix otherwise. Whatever value ends up in the changelog is therefore true
//! once visible, if sometimes behind (a resume then copies a few chunks twice).

use super::chunker::Bound;
use std::collections::BTreeMap;
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct Watermark {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The number of the next chunk handed out.
    issued: u64,
    /// The lowest chunk not committed yet.
    lowest_open: u64,
    /// Chunks committed above `lowest_open`, with their ends.
    committed_above: BTreeMap<u64, Bound>,
    /// The end of the committed prefix; the resume point at the start.
    prefix_end: Option<Bound>,
}

impl Watermark {
    /// `start`: the watermark a resumed copy starts from.
    pub fn new(start: Option<Bound>) -> Watermark {
        Watermark { state: Mutex::new(State { prefix_end: start, ..State::default() }) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: every update is one step.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Numbers a chunk; call in the order the chunks are handed out.
    pub fn issue(&self) -> u64 {
        let mut s = self.state();
        s.issued += 1;
        s.issued - 1
    }

    /// The value to record in chunk `seq`'s transaction, ending at `hi`.
    pub fn value_at_commit_of(&self, seq: u64, hi: &Bound) -> Option<Bound> {
        let s = self.state();
        if seq == s.lowest_open {
            // Everything before this chunk is committed: its own commit completes the prefix
            // up to its end (chunks above it that committed already only push it further,
            // but recording those would claim more than this transaction knows).
            Some(hi.clone())
        } else {
            s.prefix_end.clone()
        }
    }

    /// Chunk `seq`, ending at `hi`, committed.
    pub fn committed(&self, seq: u64, hi: Bound) {
        let mut s = self.state();
        s.committed_above.insert(seq, hi);
        loop {
            let next = s.lowest_open;
            match s.committed_above.remove(&next) {
                Some(end) => {
                    s.prefix_end = Some(end);
                    s.lowest_open += 1;
                }
                None => break,
            }
        }
    }

    /// The end of the committed prefix.
    #[cfg(test)]
    pub fn current(&self) -> Option<Bound> {
        self.state().prefix_end.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(v: i64) -> Bound {
        vec![v.to_string()]
    }

    #[test]
    fn follows_the_committed_prefix_when_chunks_finish_out_of_order() {
        let w = Watermark::new(None);
        let (c0, c1, c2) = (w.issue(), w.issue(), w.issue());
        // Chunk 1 commits first: chunk 0 is still open, nothing is known to be copied.
        assert_eq!(w.value_at_commit_of(c1, &b(20)), None);
        w.committed(c1, b(20));
        assert_eq!(w.current(), None);
        // Chunk 0 completes the prefix through its own end.
        assert_eq!(w.value_at_commit_of(c0, &b(10)), Some(b(10)));
        w.committed(c0, b(10));
        // ... and the chunk that had committed above it joins the prefix.
        assert_eq!(w.current(), Some(b(20)));
        assert_eq!(w.value_at_commit_of(c2, &b(30)), Some(b(30)));
        w.committed(c2, b(30));
        assert_eq!(w.current(), Some(b(30)));
    }

    #[test]
    fn a_resumed_copy_starts_from_its_watermark() {
        let w = Watermark::new(Some(b(500)));
        let (c0, c1) = (w.issue(), w.issue());
        assert_eq!(w.value_at_commit_of(c1, &b(700)), Some(b(500)));
        assert_eq!(w.value_at_commit_of(c0, &b(600)), Some(b(600)));
    }
}
