//! Hooks: gh-ost's `--hooks-path`, for PostgreSQL. At the edges of the run the runner fires
//! an event ([`HookEvent`]); what that does depends on the [`Hooks`] implementation:
//! [`ScriptHooks`] runs executables from a directory, [`NoHooks`] does nothing, and
//! [`RecordingHooks`] remembers the events for tests (and can fail one on purpose).
//!
//! Invariants: hooks fire from the runner only; `fire` returns once every hook for the
//! event has finished or one has failed, and dropping its future kills a hook still
//! running. Different events may fire concurrently (`on-status` from a timer,
//! `on-interactive-command` as commands arrive); nothing is shared between them. A failure is an
//! [`ErrorKind::Aborted`] error naming the hook; whether it stops the run is the runner's
//! call (a failing `on-before-cut-over` hook must prevent the swap; a failing `on-failure`
//! hook must not hide the error that fired it).
//!
//! [`ErrorKind::Aborted`]: crate::error::ErrorKind::Aborted

mod env;
mod script;

pub use env::{HookEnv, ENV_NAMES};
pub use script::ScriptHooks;

use crate::config::HooksConfig;
use crate::error::{Error, ErrorKind, Result};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

/// The future [`Hooks::fire`] returns (boxed, so the trait can be used as `dyn Hooks`).
pub type HookFuture<'a> = Pin<Box<dyn Future<Output = Result<()>> + Send + 'a>>;

/// Where the runner reports the edges of the run.
pub trait Hooks: Send + Sync {
    /// Runs whatever `event` calls for, with `env` describing the run.
    fn fire<'a>(&'a self, event: HookEvent, env: &'a HookEnv) -> HookFuture<'a>;
}

/// The events, with gh-ost's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HookEvent {
    /// The run starts, before anything is read.
    Startup,
    /// Inspection and preflight checks passed.
    Validated,
    /// The rows to copy are estimated.
    RowCountComplete,
    /// The copy is about to start.
    BeforeRowCopy,
    /// Every existing row is copied.
    RowCopyComplete,
    /// Every `--hooks-status-interval`.
    Status,
    /// A command came through the control socket.
    InteractiveCommand,
    /// The cut-over is postponed while the flag file exists.
    BeginPostponed,
    /// The swap is about to be attempted; a failing hook prevents it.
    BeforeCutOver,
    /// In the revert window, a row of the new table cannot be written back to the old one:
    /// the window ends, the new table stays (`PG_GHOST_ERROR` names the key).
    RevertImpossible,
    Success,
    Failure,
}

impl HookEvent {
    pub const ALL: [HookEvent; 12] = [
        HookEvent::Startup,
        HookEvent::Validated,
        HookEvent::RowCountComplete,
        HookEvent::BeforeRowCopy,
        HookEvent::RowCopyComplete,
        HookEvent::Status,
        HookEvent::InteractiveCommand,
        HookEvent::BeginPostponed,
        HookEvent::BeforeCutOver,
        HookEvent::RevertImpossible,
        HookEvent::Success,
        HookEvent::Failure,
    ];

    pub fn name(self) -> &'static str {
        match self {
            HookEvent::Startup => "startup",
            HookEvent::Validated => "validated",
            HookEvent::RowCountComplete => "rowcount-complete",
            HookEvent::BeforeRowCopy => "before-row-copy",
            HookEvent::RowCopyComplete => "row-copy-complete",
            HookEvent::Status => "status",
            HookEvent::InteractiveCommand => "interactive-command",
            HookEvent::BeginPostponed => "begin-postponed",
            HookEvent::BeforeCutOver => "before-cut-over",
            HookEvent::RevertImpossible => "revert-impossible",
            HookEvent::Success => "success",
            HookEvent::Failure => "failure",
        }
    }

    /// The file name prefix of this event's scripts: `pg-ghost-on-<event>`.
    pub fn script_prefix(self) -> String {
        format!("{SCRIPT_PREFIX}{}", self.name())
    }
}

/// What every hook script's name starts with.
pub const SCRIPT_PREFIX: &str = "pg-ghost-on-";

impl fmt::Display for HookEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "on-{}", self.name())
    }
}

/// The hooks `--hooks-path` asks for: scripts from the directory (checked now), or none.
pub fn from_config(cfg: &HooksConfig) -> Result<Arc<dyn Hooks>> {
    Ok(match &cfg.path {
        Some(dir) => Arc::new(ScriptHooks::new(dir, cfg.timeout)?),
        None => Arc::new(NoHooks),
    })
}

/// No hooks: every event succeeds at once.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoHooks;

impl Hooks for NoHooks {
    fn fire<'a>(&'a self, _event: HookEvent, _env: &'a HookEnv) -> HookFuture<'a> {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Remembers every event with its environment; for tests of the runner.
#[derive(Debug, Default)]
pub struct RecordingHooks {
    fired: Mutex<Vec<(HookEvent, HookEnv)>>,
    fail_on: Option<HookEvent>,
}

impl RecordingHooks {
    pub fn new() -> RecordingHooks {
        RecordingHooks::default()
    }

    /// Records as [`RecordingHooks::new`] does, and fails `event` as a failing script would.
    pub fn failing_on(event: HookEvent) -> RecordingHooks {
        RecordingHooks { fail_on: Some(event), ..RecordingHooks::default() }
    }

    /// The events fired so far, in order (a failed one included).
    pub fn events(&self) -> Vec<HookEvent> {
        self.fired().into_iter().map(|(e, _)| e).collect()
    }

    pub fn fired(&self) -> Vec<(HookEvent, HookEnv)> {
        // A poisoned lock only means a test thread panicked while recording; the list is
        // still what was recorded.
        self.fired.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Hooks for RecordingHooks {
    fn fire<'a>(&'a self, event: HookEvent, env: &'a HookEnv) -> HookFuture<'a> {
        self.fired.lock().unwrap_or_else(|p| p.into_inner()).push((event, env.clone()));
        let result = if self.fail_on == Some(event) {
            Err(Error::new(ErrorKind::Aborted, format!("hook {} (recorded) failed as the test asked", event.script_prefix())))
        } else {
            Ok(())
        };
        Box::pin(std::future::ready(result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_prefixes_follow_gh_ost_and_never_overlap() {
        assert_eq!(HookEvent::BeforeCutOver.script_prefix(), "pg-ghost-on-before-cut-over");
        assert_eq!(HookEvent::RowCountComplete.script_prefix(), "pg-ghost-on-rowcount-complete");
        assert_eq!(HookEvent::InteractiveCommand.to_string(), "on-interactive-command");
        // A script is matched by prefix, so no event's prefix may start another's: its
        // scripts would run for both.
        for a in HookEvent::ALL {
            for b in HookEvent::ALL {
                if a != b {
                    assert!(!b.script_prefix().starts_with(&a.script_prefix()), "{a} is a prefix of {b}");
                }
            }
        }
    }

    #[tokio::test]
    async fn recording_hooks_record_and_fail_on_demand() {
        let env = HookEnv::new("db", "t", "x", false);
        let hooks = RecordingHooks::failing_on(HookEvent::BeforeCutOver);
        hooks.fire(HookEvent::Startup, &env).await.unwrap();
        let e = hooks.fire(HookEvent::BeforeCutOver, &env).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Aborted);
        assert!(e.to_string().contains("pg-ghost-on-before-cut-over"), "{e}");
        assert_eq!(hooks.events(), [HookEvent::Startup, HookEvent::BeforeCutOver]);
        assert_eq!(hooks.fired()[0].1, env);
        NoHooks.fire(HookEvent::Failure, &env).await.unwrap();
    }

    #[test]
    fn no_path_means_no_hooks_and_a_bad_path_is_refused() {
        let cfg = |path: Option<&str>| HooksConfig {
            path: path.map(Into::into),
            timeout: std::time::Duration::from_secs(1),
            status_interval: std::time::Duration::from_secs(1),
        };
        assert!(from_config(&cfg(None)).is_ok());
        let missing = from_config(&cfg(Some("/nonexistent/pg-ghost-hooks"))).err().unwrap();
        assert_eq!(missing.kind(), ErrorKind::Config);
        assert!(missing.to_string().contains("--hooks-path /nonexistent/pg-ghost-hooks: does not exist"), "{missing}");
        let file = from_config(&cfg(Some(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")))).err().unwrap();
        assert!(file.to_string().contains("is not a directory"), "{file}");
    }
}
