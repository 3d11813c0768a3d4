//! From a command line to its effect and its answer.
//!
//! Every answer ends with a newline. Failures are one line: `error: ...` when the command
//! could not be read or its value is invalid, `refused: ...` when it names another table or
//! does not apply now. Only a command that was carried out is reported as
//! [`ControlEvent::Command`].

use super::command::{parse, Command};
use super::report::{status_report, HELP};
use super::{ControlContext, ControlEvent, ThrottleOverride};
use crate::phase::Phase;
use crate::status::status_line;
use std::time::Duration;

/// How long a command may wait for room in the runner's event channel. The runner drains
/// it continuously; a full channel for this long means it is no longer listening.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// Carries out commands against a [`ControlContext`].
pub struct Dispatcher {
    ctx: ControlContext,
}

/// The answer, and whether the command was carried out.
type Outcome = Result<String, String>;

impl Dispatcher {
    pub fn new(ctx: ControlContext) -> Dispatcher {
        Dispatcher { ctx }
    }

    /// Parses and carries out one command line; returns the text to send back.
    pub async fn answer(&self, line: &str) -> String {
        let trimmed = line.trim();
        let command = match parse(trimmed) {
            Ok(command) => command,
            Err(e) => return self.refused(trimmed, format!("error: {e}")),
        };
        let read = command.is_read();
        match self.execute(command).await {
            Ok(answer) => {
                if read {
                    tracing::debug!(command = trimmed, "control command");
                } else {
                    tracing::info!(command = trimmed, "control command");
                }
                // The command took effect whatever happens to its report: a runner that
                // stopped listening only misses the hook.
                if let Err(e) = self.send(ControlEvent::Command(trimmed.to_string())).await {
                    tracing::debug!(error = %e, "interactive command not reported");
                }
                terminated(answer)
            }
            Err(refusal) => self.refused(trimmed, refusal),
        }
    }

    fn refused(&self, line: &str, answer: String) -> String {
        tracing::info!(command = line, answer = %answer, "control command not carried out");
        terminated(answer)
    }

    async fn execute(&self, command: Command) -> Outcome {
        match command {
            Command::Help => Ok(HELP.to_string()),
            Command::Status => Ok(self.status()),
            Command::Sup => Ok(status_line(&self.progress())),
            Command::Coordinates => self.coordinates().await,
            Command::Get { name } => self.ctx.tunables.borrow().get(name).map_err(|e| format!("error: {e}")),
            Command::Set { name, value } => self.set(name, &value),
            Command::Throttle { ref table } => {
                self.guard("throttle", table.as_deref())?;
                self.act(ControlEvent::Throttle(ThrottleOverride::Force)).await?;
                Ok("throttling: the copy pauses after its current chunk; changes keep being applied. \
                    `no-throttle` ends it"
                    .into())
            }
            Command::NoThrottle { ref table } => {
                self.guard("no-throttle", table.as_deref())?;
                self.act(ControlEvent::Throttle(ThrottleOverride::Release)).await?;
                Ok("no longer throttling by command; other reasons to throttle still apply".into())
            }
            Command::Unpostpone { ref table } => {
                self.guard("unpostpone", table.as_deref())?;
                let phase = *self.ctx.phase.borrow();
                if phase != Phase::Postponed {
                    return Err(format!("refused: the cut-over is not being postponed now (phase: {phase})"));
                }
                self.act(ControlEvent::Unpostpone).await?;
                Ok("unpostponed: the cut-over starts".into())
            }
            Command::Revert { ref table } | Command::Finalize { ref table } => {
                let (name, event) = match command {
                    Command::Revert { .. } => ("revert", ControlEvent::Revert),
                    _ => ("finalize", ControlEvent::Finalize),
                };
                self.guard(name, table.as_deref())?;
                let phase = *self.ctx.phase.borrow();
                if phase != Phase::RevertWindow {
                    return Err(format!("refused: no revert window is open now (phase: {phase}); it opens after the swap with --revertible-for"));
                }
                self.act(event).await?;
                Ok(match name {
                    "revert" => "revert: swapping the old table back (the log says when it is done)".into(),
                    _ => "finalize: ending the revert window; the new table stays".into(),
                })
            }
            Command::Panic { ref table } => {
                self.guard("panic", table.as_deref())?;
                self.act(ControlEvent::Panic).await?;
                Ok("panic: aborting the run; the original table stays untouched, slot and publication are dropped".into())
            }
        }
    }

    /// The progress snapshot with the phase as it is now: the snapshot may be up to one
    /// refresh old.
    fn progress(&self) -> crate::status::Progress {
        let mut p = self.ctx.progress.borrow().clone();
        p.phase = *self.ctx.phase.borrow();
        p
    }

    fn status(&self) -> String {
        let tunables = self.ctx.tunables.borrow().clone();
        let progress = self.progress();
        format!("{}\n{}", status_report(self.ctx.table.table(), &progress, &tunables), status_line(&progress))
    }

    async fn coordinates(&self) -> Outcome {
        match &self.ctx.coordinates {
            None => Err("refused: the slot is not known yet; try again once the stream has started".into()),
            Some(source) => match source.read().await {
                Ok(c) => Ok(c.to_string()),
                Err(e) => Err(format!("error: {e}")),
            },
        }
    }

    /// Changes a tunable; on a bad value nothing changes and no reader is woken.
    fn set(&self, name: &'static str, value: &str) -> Outcome {
        let mut result = Ok(());
        self.ctx.tunables.send_if_modified(|t| match t.set(name, value) {
            Ok(()) => true,
            Err(e) => {
                result = Err(e);
                false
            }
        });
        result.map_err(|e| format!("error: {e}"))?;
        let now = self.ctx.tunables.borrow().get(name).map_err(|e| format!("error: {e}"))?;
        Ok(format!("{name}={now}"))
    }

    fn guard(&self, command: &str, table: Option<&str>) -> Result<(), String> {
        self.ctx.table.check(command, table)
    }

    /// Delivers an event the command cannot do without.
    async fn act(&self, event: ControlEvent) -> Result<(), String> {
        self.send(event).await.map_err(|e| format!("error: {e}; nothing done"))
    }

    async fn send(&self, event: ControlEvent) -> Result<(), String> {
        match tokio::time::timeout(SEND_TIMEOUT, self.ctx.events.send(event)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err("the run is no longer taking commands".into()),
            Err(_) => Err(format!("the run did not take the command within {SEND_TIMEOUT:?}")),
        }
    }
}

/// Answers end with exactly one newline, so `nc` output ends cleanly.
fn terminated(mut text: String) -> String {
    while text.ends_with('\n') {
        text.pop();
    }
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LoadLimits;
    use crate::control::TableGuard;
    use crate::sql::QualifiedName;
    use crate::status::Progress;
    use tokio::sync::{mpsc, watch};

    struct Fixture {
        d: Dispatcher,
        tunables: watch::Receiver<crate::config::Tunables>,
        phase: watch::Sender<Phase>,
        events: mpsc::Receiver<ControlEvent>,
    }

    fn fixture() -> Fixture {
        let (tunables_tx, tunables) = watch::channel(crate::config::Tunables {
            chunk_size: 1000,
            nice_ratio: 0.0,
            max_lag: None,
            max_load: LoadLimits::default(),
            critical_load: LoadLimits::default(),
            throttle_query: None,
            throttle_control_replicas: Vec::new(),
        });
        let (_progress_tx, progress) = watch::channel(Progress::new(Phase::Copy));
        let (phase, phase_rx) = watch::channel(Phase::Copy);
        let (events_tx, events) = mpsc::channel(16);
        let ctx = super::super::ControlContext {
            tunables: tunables_tx,
            progress,
            phase: phase_rx,
            coordinates: None,
            table: TableGuard::new("orders", &QualifiedName::new("public", "orders")),
            events: events_tx,
        };
        Fixture { d: Dispatcher::new(ctx), tunables, phase, events }
    }

    fn drain(rx: &mut mpsc::Receiver<ControlEvent>) -> Vec<ControlEvent> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    #[tokio::test]
    async fn sets_validate_and_read_back() {
        let mut f = fixture();
        assert_eq!(f.d.answer("chunk-size=500").await, "chunk-size=500\n");
        assert!(f.tunables.has_changed().unwrap());
        assert_eq!(f.tunables.borrow_and_update().chunk_size, 500);
        assert_eq!(f.d.answer("chunk-size=?").await, "500\n");
        let bad = f.d.answer("chunk-size=0").await;
        assert!(bad.starts_with("error: --chunk-size 0: give between 1"), "{bad}");
        assert!(!f.tunables.has_changed().unwrap(), "a refused value must not wake readers");
        assert_eq!(drain(&mut f.events), [ControlEvent::Command("chunk-size=500".into()), ControlEvent::Command("chunk-size=?".into())]);
    }

    #[tokio::test]
    async fn actions_send_their_event_then_the_command() {
        let mut f = fixture();
        assert!(f.d.answer("throttle").await.starts_with("throttling"));
        assert!(f.d.answer("no-throttle public.orders").await.starts_with("no longer throttling"));
        assert!(f.d.answer("panic=orders").await.starts_with("panic: aborting"));
        assert_eq!(
            drain(&mut f.events),
            [
                ControlEvent::Throttle(ThrottleOverride::Force),
                ControlEvent::Command("throttle".into()),
                ControlEvent::Throttle(ThrottleOverride::Release),
                ControlEvent::Command("no-throttle public.orders".into()),
                ControlEvent::Panic,
                ControlEvent::Command("panic=orders".into()),
            ]
        );
    }

    #[tokio::test]
    async fn unpostpone_only_while_postponed() {
        let mut f = fixture();
        let early = f.d.answer("unpostpone").await;
        assert_eq!(early, "refused: the cut-over is not being postponed now (phase: copying)\n");
        f.phase.send_replace(Phase::Postponed);
        assert_eq!(f.d.answer("unpostpone orders").await, "unpostponed: the cut-over starts\n");
        assert_eq!(drain(&mut f.events), [ControlEvent::Unpostpone, ControlEvent::Command("unpostpone orders".into())]);
    }

    #[tokio::test]
    async fn another_table_is_refused_and_nothing_is_sent() {
        let mut f = fixture();
        f.phase.send_replace(Phase::Postponed);
        for line in ["throttle users", "no-throttle=users", "unpostpone other.orders", "panic orders2"] {
            let answer = f.d.answer(line).await;
            assert!(answer.starts_with("refused: `"), "{line}: {answer}");
            assert_eq!(answer.lines().count(), 1, "{answer}");
        }
        assert!(drain(&mut f.events).is_empty());
    }

    #[tokio::test]
    async fn reads_answer_and_are_reported() {
        let mut f = fixture();
        assert!(f.d.answer("help").await.starts_with("commands"));
        let status = f.d.answer("status").await;
        assert!(status.contains("table: \"public\".\"orders\"\nphase: copying"), "{status}");
        assert!(status.contains("  chunk-size=1000\n"), "{status}");
        assert!(status.trim_end().ends_with("ETA: N/A"), "{status}");
        let sup = f.d.answer("sup").await;
        assert!(sup.starts_with("Copy: 0/N/A;") && sup.ends_with("\n") && sup.lines().count() == 1, "{sup}");
        assert_eq!(f.d.answer("coordinates").await, "refused: the slot is not known yet; try again once the stream has started\n");
        let reported: Vec<_> = drain(&mut f.events);
        assert_eq!(reported, ["help", "status", "sup"].map(|c| ControlEvent::Command(c.into())));
    }

    #[tokio::test]
    async fn malformed_lines_get_an_error_line() {
        let mut f = fixture();
        for line in ["", "bogus", "chunk-size", "status\u{7}"] {
            let answer = f.d.answer(line).await;
            assert!(answer.starts_with("error: ") && answer.lines().count() == 1, "{line:?}: {answer}");
        }
        assert!(drain(&mut f.events).is_empty());
    }

    #[tokio::test]
    async fn a_runner_that_stopped_listening_gets_no_action() {
        let f = fixture();
        drop(f.events);
        let answer = f.d.answer("panic").await;
        assert_eq!(answer, "error: the run is no longer taking commands; nothing done\n");
        // Reads still answer; only their report is lost.
        assert_eq!(f.d.answer("chunk-size=?").await, "1000\n");
    }
}
