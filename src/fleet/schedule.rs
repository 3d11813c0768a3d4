//! Which target starts next: the order (smallest first), the canaries, `--concurrency`,
//! `--per-server` and the stop rules. Pure: the fleet's loop asks and reports, and does the
//! waiting (interval, window) and the I/O.
//!
//! Invariants:
//! - targets start in order, except that one whose server is full is passed over for the
//!   next one on another server (never reordered otherwise);
//! - the first `canary` targets run one at a time, before any other; a canary that fails
//!   stops the fleet;
//! - once the fleet is stopped (a canary failed, `--max-failures` reached, a signal), no
//!   target starts; the running ones finish.

use std::collections::{HashMap, VecDeque};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Targets running at once; at least 1.
    pub concurrency: usize,
    /// Targets running at once on one server; `None`: only `concurrency` limits.
    pub per_server: Option<usize>,
    /// The first N targets run alone, one at a time, and stop the fleet if one fails.
    pub canary: usize,
    /// Stop starting targets after this many failures; `None`: never.
    pub max_failures: Option<usize>,
}

/// What the fleet should do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Start the target at this index (of the list the scheduler was given).
    Start(usize),
    /// Wait for a running target to end.
    Wait,
    /// Nothing runs and nothing more will start.
    Done,
}

pub struct Scheduler {
    limits: Limits,
    /// Each target's server, by index.
    servers: Vec<String>,
    queue: VecDeque<usize>,
    running: HashMap<usize, bool>,
    per_server: HashMap<String, usize>,
    /// Canaries not yet ended.
    canaries_left: usize,
    failures: usize,
    stopped: Option<String>,
}

impl Scheduler {
    /// `servers[i]` is the server of target `i`; `order` the indexes to run, in order (a
    /// resumed fleet leaves out those already done).
    pub fn new(limits: Limits, servers: Vec<String>, order: Vec<usize>) -> Scheduler {
        let canaries_left = limits.canary.min(order.len());
        Scheduler { limits, servers, queue: order.into(), running: HashMap::new(), per_server: HashMap::new(), canaries_left, failures: 0, stopped: None }
    }

    pub fn decide(&mut self) -> Next {
        let Some(pos) = self.pick() else {
            return if self.running.is_empty() && (self.stopped.is_some() || self.queue.is_empty()) { Next::Done } else { Next::Wait };
        };
        let Some(i) = self.queue.remove(pos) else { return Next::Wait };
        let canary = self.canaries_left > 0;
        self.running.insert(i, canary);
        *self.per_server.entry(self.servers[i].clone()).or_default() += 1;
        Next::Start(i)
    }

    /// Whether [`Scheduler::decide`] would start a target now (the fleet checks its window
    /// and interval only then).
    pub fn can_start(&self) -> bool {
        self.pick().is_some()
    }

    /// The queue position of the target to start now, if any.
    fn pick(&self) -> Option<usize> {
        if self.stopped.is_some() || self.queue.is_empty() {
            return None;
        }
        let room = if self.canaries_left > 0 { 1 } else { self.limits.concurrency.max(1) };
        if self.running.len() >= room {
            return None;
        }
        // A canary is the next in line, never one passed over for its server.
        let candidates = if self.canaries_left > 0 { 1 } else { self.queue.len() };
        let fits = |i: usize| self.limits.per_server.is_none_or(|m| self.per_server.get(&self.servers[i]).copied().unwrap_or(0) < m.max(1));
        (0..candidates).find(|&p| fits(self.queue[p]))
    }

    /// Target `i` ended; `ok` is false when it failed.
    pub fn ended(&mut self, i: usize, ok: bool) {
        let Some(canary) = self.running.remove(&i) else { return };
        if let Some(n) = self.per_server.get_mut(&self.servers[i]) {
            *n = n.saturating_sub(1);
        }
        if canary {
            self.canaries_left = self.canaries_left.saturating_sub(1);
        }
        if ok {
            return;
        }
        self.failures += 1;
        if canary {
            self.stop("a canary target failed".to_string());
        } else if self.limits.max_failures.is_some_and(|k| self.failures >= k) {
            self.stop(format!("{} targets failed (--max-failures {})", self.failures, self.limits.max_failures.unwrap_or_default()));
        }
    }

    /// No target starts any more; the first reason is kept.
    pub fn stop(&mut self, why: String) {
        self.stopped.get_or_insert(why);
    }

    pub fn stopped(&self) -> Option<&str> {
        self.stopped.as_deref()
    }

    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// The targets that will not start (after a stop), in order.
    pub fn left(&self) -> Vec<usize> {
        self.queue.iter().copied().collect()
    }
}

/// Smallest first; equal sizes by name, so the order is the same every time.
pub fn smallest_first(sizes: &[(String, i64)]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by(|&a, &b| sizes[a].1.cmp(&sizes[b].1).then_with(|| sizes[a].0.cmp(&sizes[b].0)));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(concurrency: usize) -> Limits {
        Limits { concurrency, per_server: None, canary: 0, max_failures: None }
    }

    fn sched(l: Limits, servers: &[&str]) -> Scheduler {
        Scheduler::new(l, servers.iter().map(|s| s.to_string()).collect(), (0..servers.len()).collect())
    }

    #[test]
    fn smallest_first_ties_by_name() {
        let sizes = vec![("c".into(), 30), ("b".into(), 10), ("a".into(), 10), ("d".into(), 5)];
        assert_eq!(smallest_first(&sizes), [3, 2, 1, 0]);
    }

    #[test]
    fn concurrency_bounds_the_running_targets() {
        let mut s = sched(limits(2), &["x", "x", "x"]);
        assert_eq!(s.decide(), Next::Start(0));
        assert_eq!(s.decide(), Next::Start(1));
        assert_eq!(s.decide(), Next::Wait);
        s.ended(1, true);
        assert_eq!(s.decide(), Next::Start(2));
        assert_eq!(s.decide(), Next::Wait);
        s.ended(0, true);
        s.ended(2, true);
        assert_eq!(s.decide(), Next::Done);
    }

    #[test]
    fn per_server_passes_over_a_full_server() {
        let mut s = sched(Limits { per_server: Some(1), ..limits(3) }, &["a", "a", "b", "a"]);
        assert_eq!(s.decide(), Next::Start(0));
        assert_eq!(s.decide(), Next::Start(2));
        assert_eq!(s.decide(), Next::Wait, "both servers hold one");
        s.ended(0, true);
        assert_eq!(s.decide(), Next::Start(1));
        s.ended(1, true);
        assert_eq!(s.decide(), Next::Start(3));
    }

    #[test]
    fn canaries_run_alone_and_a_failed_one_stops_the_fleet() {
        let mut s = sched(Limits { canary: 2, ..limits(4) }, &["x", "x", "x", "x"]);
        assert_eq!(s.decide(), Next::Start(0));
        assert_eq!(s.decide(), Next::Wait, "a canary runs alone");
        s.ended(0, true);
        assert_eq!(s.decide(), Next::Start(1));
        assert_eq!(s.decide(), Next::Wait);
        s.ended(1, true);
        assert_eq!(s.decide(), Next::Start(2));
        assert_eq!(s.decide(), Next::Start(3), "after the canaries, the concurrency");

        let mut s = sched(Limits { canary: 1, ..limits(4) }, &["x", "x", "x"]);
        assert_eq!(s.decide(), Next::Start(0));
        s.ended(0, false);
        assert_eq!(s.decide(), Next::Done);
        assert_eq!(s.stopped(), Some("a canary target failed"));
        assert_eq!(s.left(), [1, 2]);
    }

    #[test]
    fn max_failures_stops_new_starts_and_lets_running_ones_end() {
        let mut s = sched(Limits { max_failures: Some(2), ..limits(2) }, &["x", "x", "x", "x", "x"]);
        assert_eq!(s.decide(), Next::Start(0));
        assert_eq!(s.decide(), Next::Start(1));
        s.ended(0, false);
        assert_eq!(s.decide(), Next::Start(2));
        s.ended(2, false);
        assert_eq!(s.decide(), Next::Wait, "target 1 still runs");
        s.ended(1, true);
        assert_eq!(s.decide(), Next::Done);
        assert_eq!(s.left(), [3, 4]);
        assert!(s.stopped().is_some_and(|w| w.contains("--max-failures 2")));
    }
}
