//! The interactive control socket: gh-ost's protocol, one text command per connection, a
//! text answer, then the connection is closed (`echo sup | nc -U /tmp/pg-ghost.sock`).
//!
//! Split as the style asks: [`command`] parses a line without I/O, [`report`] writes the
//! texts, [`dispatch`] turns a command into its effect and its answer, [`server`] only
//! listens, reads a line and writes the answer back.
//!
//! The control socket is an adapter: it acts on the run only through what
//! [`ControlContext`] hands it: the tunables `watch` (changed in place, validated by
//! [`crate::config::Tunables::set`]) and a channel of [`ControlEvent`]s for what the runner
//! must do itself (throttle, unpostpone, panic) and for the `on-interactive-command` hook.
//!
//! Invariants: a malformed or refused command changes nothing and gets a one-line answer
//! starting with `error:` or `refused:`; the server never panics on input; the Unix socket
//! is created with mode 0600 and removed when the handle goes away. The TCP port listens on
//! 127.0.0.1 only, but any local user can reach it (as with gh-ost): it is opt-in for that
//! reason.

pub mod command;
mod coordinates;
mod dispatch;
mod report;
pub mod server;

pub use command::{parse, Command, TableGuard};
pub use coordinates::{Coordinates, CoordinatesSource, SlotPosition};
pub use dispatch::Dispatcher;
pub use report::{status_report, HELP};
pub use server::{Answer, ControlHandle, ControlServer};

use crate::config::Tunables;
use crate::phase::Phase;
use crate::status::Progress;
use tokio::sync::{mpsc, watch};

/// What the throttle command asks of the throttler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThrottleOverride {
    /// `throttle`: throttle the copy until released, whatever the other inputs say.
    Force,
    /// `no-throttle`: end the forced throttling; the other reasons still count.
    Release,
}

/// What the runner receives from the socket, in the order the commands arrived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlEvent {
    Throttle(ThrottleOverride),
    /// Sent only while the run is postponing the cut-over.
    Unpostpone,
    /// Abort the run, exactly as the panic flag file does.
    Panic,
    /// Sent only in the revert window: swap back (`revert`) or end the window (`finalize`).
    Revert,
    Finalize,
    /// A command that was carried out (reads included), as typed but trimmed, for the
    /// `on-interactive-command` hook. Sent after the command's own event, if any.
    Command(String),
}

/// Everything the socket's commands act on or read.
pub struct ControlContext {
    /// `chunk-size=` and friends change it; `name=?` and `status` read it.
    pub tunables: watch::Sender<Tunables>,
    /// For `status` and `sup`; refreshed by the runner (about once a second is enough).
    pub progress: watch::Receiver<Progress>,
    /// The runner's phase, exact at every moment: `unpostpone` is accepted only while it
    /// is [`Phase::Postponed`], and `status` shows it even between progress refreshes.
    pub phase: watch::Receiver<Phase>,
    /// `None` before the slot's name is known; `coordinates` says so.
    pub coordinates: Option<CoordinatesSource>,
    /// The migrated table, for commands that name one.
    pub table: TableGuard,
    /// Where throttle, unpostpone, panic and every carried-out command go.
    pub events: mpsc::Sender<ControlEvent>,
}
