//! The phases of a run, in the order the runner walks them.
//!
//! The runner is the only writer: it publishes the current phase on a `watch` channel
//! ([`channel`]), and the status line, the control socket, metrics and hooks read it.
//! `Display` gives the words a DBA reads in the status line (`State: copying`);
//! [`Phase::name`] gives the stable one-word name for machines (JSON logs, hooks, socket).

use std::fmt;
use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Read-only discovery and preflight checks.
    Inspect,
    /// The direct way: catalog steps under a short lock, validations online; no copy.
    Direct,
    /// Changelog and ghost table created, the ALTER applied to the ghost.
    Prepare,
    /// Publication and slot created; changes stream from here on.
    Stream,
    /// Existing rows copied in chunks while changes are applied.
    Copy,
    /// Secondary indexes built on the ghost after the copy.
    BuildIndexes,
    /// The backlog of streamed changes drained before the swap.
    CatchUp,
    /// Waiting for the postpone flag file to go away (or `unpostpone`).
    Postponed,
    /// Lock, sentinel, final flush, swap.
    CutOver,
    /// `--revertible-for`: after the swap, the old table kept current by the reverse stream.
    RevertWindow,
    /// The swap back to the old table (`pg-ghost revert`).
    Revert,
    /// Slot, publication and changelog dropped.
    Cleanup,
    /// Finished successfully.
    Done,
    /// Finished with an error.
    Failed,
}

impl Phase {
    /// Every phase, in run order (`Failed` last: it can follow any of them).
    pub const ALL: [Phase; 14] = [
        Phase::Inspect,
        Phase::Direct,
        Phase::Prepare,
        Phase::Stream,
        Phase::Copy,
        Phase::BuildIndexes,
        Phase::CatchUp,
        Phase::Postponed,
        Phase::CutOver,
        Phase::RevertWindow,
        Phase::Revert,
        Phase::Cleanup,
        Phase::Done,
        Phase::Failed,
    ];

    /// A stable machine name: lower case, `-` between words (`build-indexes`).
    pub fn name(self) -> &'static str {
        match self {
            Phase::Inspect => "inspect",
            Phase::Direct => "direct",
            Phase::Prepare => "prepare",
            Phase::Stream => "stream",
            Phase::Copy => "copy",
            Phase::BuildIndexes => "build-indexes",
            Phase::CatchUp => "catch-up",
            Phase::Postponed => "postponed",
            Phase::CutOver => "cut-over",
            Phase::RevertWindow => "revert-window",
            Phase::Revert => "revert",
            Phase::Cleanup => "cleanup",
            Phase::Done => "done",
            Phase::Failed => "failed",
        }
    }

    /// The phase has ended the run; nothing will follow it.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Done | Phase::Failed)
    }

    /// All existing rows have been copied (the copy's ETA is due from here on).
    pub fn copy_is_complete(self) -> bool {
        matches!(
            self,
            Phase::BuildIndexes | Phase::CatchUp | Phase::Postponed | Phase::CutOver | Phase::Cleanup | Phase::Done
        )
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Inspect => "inspecting",
            Phase::Direct => "changing it directly",
            Phase::Prepare => "preparing",
            Phase::Stream => "starting the stream",
            Phase::Copy => "copying",
            Phase::BuildIndexes => "building indexes",
            Phase::CatchUp => "catching up",
            Phase::Postponed => "postponing cut-over",
            Phase::CutOver => "cutting over",
            Phase::RevertWindow => "keeping the old table current (revert window)",
            Phase::Revert => "swapping back",
            Phase::Cleanup => "cleaning up",
            Phase::Done => "done",
            Phase::Failed => "failed",
        })
    }
}

/// The channel the runner publishes phases on; it starts at [`Phase::Inspect`].
pub fn channel() -> (watch::Sender<Phase>, watch::Receiver<Phase>) {
    watch::channel(Phase::Inspect)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_lower_case_and_distinct() {
        let mut seen = std::collections::HashSet::new();
        for p in Phase::ALL {
            let words = p.to_string();
            assert_eq!(words, words.to_lowercase(), "{p:?}");
            assert!(seen.insert(words), "{p:?} repeats a word");
            assert!(p.name().chars().all(|c| c.is_ascii_lowercase() || c == '-'), "{p:?}");
        }
    }

    #[test]
    fn only_done_and_failed_are_terminal() {
        let terminal: Vec<_> = Phase::ALL.into_iter().filter(|p| p.is_terminal()).collect();
        assert_eq!(terminal, [Phase::Done, Phase::Failed]);
    }

    #[test]
    fn copy_completes_after_the_copy_phase() {
        for (phase, complete) in [
            (Phase::Stream, false),
            (Phase::Copy, false),
            (Phase::BuildIndexes, true),
            (Phase::Postponed, true),
            (Phase::Done, true),
            (Phase::Failed, false),
        ] {
            assert_eq!(phase.copy_is_complete(), complete, "{phase:?}");
        }
    }

    #[test]
    fn channel_starts_at_inspect_and_follows_the_runner() {
        let (tx, rx) = channel();
        assert_eq!(*rx.borrow(), Phase::Inspect);
        tx.send_replace(Phase::Copy);
        assert_eq!(*rx.borrow(), Phase::Copy);
    }
}
