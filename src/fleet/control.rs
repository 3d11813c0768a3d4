//! The fleet's control socket (`--serve-socket-file`), on the same listener as a run's
//! (`crate::control::server`): `status` (or `sup`), `pause` (no target starts until
//! `resume`; running ones go on), `resume`, `panic` (every running target stops as on
//! SIGTERM, cleanly, and none starts), `help`. The parser is pure.

use super::progress::FleetProgress;
use crate::control::Answer;
use futures_util::future::BoxFuture;
use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FleetCommand {
    Status,
    Pause,
    Resume,
    Panic,
    Help,
}

pub const HELP: &str = "status (or sup): the fleet's progress\n\
pause: start no more targets until resume (running ones go on)\n\
resume: start targets again\n\
panic: stop every running target now (cleanly, as on SIGTERM) and start no other\n\
help: this list\n";

pub fn parse(line: &str) -> Result<FleetCommand, String> {
    match line.trim() {
        "status" | "sup" => Ok(FleetCommand::Status),
        "pause" => Ok(FleetCommand::Pause),
        "resume" => Ok(FleetCommand::Resume),
        "panic" => Ok(FleetCommand::Panic),
        "help" => Ok(FleetCommand::Help),
        "" => Err("no command; send help for the list".into()),
        other => Err(format!("unknown command {other:?} for a fleet; send help for the list")),
    }
}

pub struct FleetControl {
    pub progress: watch::Receiver<FleetProgress>,
    pub paused: watch::Sender<bool>,
}

impl FleetControl {
    fn respond(&self, line: &str) -> String {
        let command = match parse(line) {
            Ok(c) => c,
            Err(e) => return format!("error: {e}\n"),
        };
        if command != FleetCommand::Status && command != FleetCommand::Help {
            tracing::info!(command = line.trim(), "fleet control command");
        }
        match command {
            FleetCommand::Status => format!("{}\n", self.progress.borrow().line()),
            FleetCommand::Help => HELP.to_string(),
            FleetCommand::Pause => {
                self.paused.send_replace(true);
                "paused: no target starts until resume; the running ones go on\n".into()
            }
            FleetCommand::Resume => {
                self.paused.send_replace(false);
                "resumed: targets start again\n".into()
            }
            FleetCommand::Panic => {
                crate::signals::notify(crate::signals::Signal::Panic);
                "panic: every running target stops, and no other starts\n".into()
            }
        }
    }
}

impl Answer for FleetControl {
    fn answer<'a>(&'a self, line: &'a str) -> BoxFuture<'a, String> {
        Box::pin(async move { self.respond(line) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        assert_eq!(parse("sup\n"), Ok(FleetCommand::Status));
        assert_eq!(parse(" pause "), Ok(FleetCommand::Pause));
        assert_eq!(parse("resume"), Ok(FleetCommand::Resume));
        assert!(parse("chunk-size=10").unwrap_err().contains("unknown command"));
        assert!(parse("").is_err());
    }

    #[test]
    fn pause_and_resume_reach_the_fleet() {
        let (_tx, progress) = watch::channel(FleetProgress { fleet_id: "f".into(), total: 2, ..Default::default() });
        let (paused, rx) = watch::channel(false);
        let c = FleetControl { progress, paused };
        assert!(c.respond("pause").starts_with("paused"));
        assert!(*rx.borrow());
        assert!(c.respond("resume").starts_with("resumed"));
        assert!(!*rx.borrow());
        assert!(c.respond("status").starts_with("fleet f: 0/2 ended"));
        assert!(c.respond("nope").starts_with("error: "));
    }
}
