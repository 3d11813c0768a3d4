//! The whole fleet's progress, as one snapshot: published by the fleet's loop on a `watch`,
//! read by the status line and the control socket's `status`. Pure.

use std::fmt::Write as _;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetProgress {
    pub fleet_id: String,
    /// Targets this run of the fleet is to run (a resumed fleet leaves out those done).
    pub total: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub skipped: usize,
    /// Names of the targets running now.
    pub running: Vec<String>,
    /// `pause` from the control socket: no target starts until `resume`.
    pub paused: bool,
    /// Outside the window: until when no target starts.
    pub waiting: Option<String>,
    /// Why no target starts any more.
    pub stopped: Option<String>,
}

impl FleetProgress {
    pub fn ended(&self) -> usize {
        self.succeeded + self.failed + self.skipped
    }

    pub fn pending(&self) -> usize {
        self.total.saturating_sub(self.ended() + self.running.len())
    }

    /// One line: `fleet ab12: 12/40 ended (10 succeeded, 1 failed, 1 skipped); running: t3, t4; 26 pending`.
    pub fn line(&self) -> String {
        let mut s = format!(
            "fleet {}: {}/{} ended ({} succeeded, {} failed, {} skipped); running: {}; {} pending",
            self.fleet_id,
            self.ended(),
            self.total,
            self.succeeded,
            self.failed,
            self.skipped,
            if self.running.is_empty() { "none".to_string() } else { self.running.join(", ") },
            self.pending()
        );
        if self.paused {
            s.push_str("; paused (send resume to continue)");
        }
        if let Some(w) = &self.waiting {
            let _ = write!(s, "; waiting: {w}");
        }
        if let Some(why) = &self.stopped {
            let _ = write!(s, "; stopped: {why}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line() {
        let p = FleetProgress { fleet_id: "f".into(), total: 10, succeeded: 3, failed: 1, skipped: 1, running: vec!["a".into(), "b".into()], ..Default::default() };
        assert_eq!(p.line(), "fleet f: 5/10 ended (3 succeeded, 1 failed, 1 skipped); running: a, b; 3 pending");
        let p = FleetProgress { paused: true, waiting: Some("window 02:00-06:00 opens at 02:00".into()), running: vec![], ..p };
        assert!(p.line().ends_with("running: none; 5 pending; paused (send resume to continue); waiting: window 02:00-06:00 opens at 02:00"), "{}", p.line());
    }
}
