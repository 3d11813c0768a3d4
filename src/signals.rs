//! SIGINT and SIGTERM, turned into a cancellation request the runner can wait on.
//!
//! Signals belong to the process, so their state does too: [`install`] registers the
//! handlers once, and every signal received is counted in a process-wide `watch`. Waiters
//! never miss a signal that came before they started waiting ([`shutdown_requested`]
//! resolves at once then), and any number of tasks may wait. The first signal asks for a
//! clean stop (roll back, drop slot and publication); `main` treats a second one as
//! "exit now".
//!
//! Once installed, SIGINT and SIGTERM no longer end the process by themselves: something
//! must wait on them. Install from the runtime that lives as long as the process, since
//! the task that forwards signals runs on it.

use crate::error::{Error, Result};
use std::fmt;
use std::sync::{Mutex, OnceLock};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Interrupt,
    Terminate,
    /// Not a signal: a fleet's `panic` command, which stops everything as SIGTERM does.
    Panic,
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
            Signal::Panic => "the panic command",
        })
    }
}

/// The latest signal and how many have come so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shutdown {
    pub signal: Signal,
    pub count: u32,
}

fn state() -> &'static watch::Sender<Option<Shutdown>> {
    static STATE: OnceLock<watch::Sender<Option<Shutdown>>> = OnceLock::new();
    STATE.get_or_init(|| watch::channel(None).0)
}

/// Registers the SIGINT and SIGTERM handlers; later calls do nothing.
pub fn install() -> Result<()> {
    static INSTALLED: Mutex<bool> = Mutex::new(false);
    // A panic while holding this lock cannot leave the flag half-written: take it anyway.
    let mut installed = INSTALLED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if *installed {
        return Ok(());
    }
    let handler =
        |kind, name| signal(kind).map_err(|e| Error::from(e).context(format!("installing the {name} handler")));
    let mut interrupt = handler(SignalKind::interrupt(), "SIGINT")?;
    let mut terminate = handler(SignalKind::terminate(), "SIGTERM")?;
    tokio::spawn(async move {
        loop {
            let received = tokio::select! {
                Some(()) = interrupt.recv() => Signal::Interrupt,
                Some(()) = terminate.recv() => Signal::Terminate,
                else => break,
            };
            notify(received);
        }
    });
    *installed = true;
    Ok(())
}

/// Counts a signal as received: the seam tests use instead of real signals, and the fleet's
/// `panic` command (every run in the process stops as on SIGTERM).
pub(crate) fn notify(received: Signal) {
    state().send_modify(|s| {
        let count = s.map_or(0, |s| s.count).saturating_add(1);
        *s = Some(Shutdown { signal: received, count });
    });
}

/// The latest signal, if any has come; never waits.
pub fn requested() -> Option<Shutdown> {
    *state().borrow()
}

/// Resolves when SIGINT or SIGTERM has been received, at once if one already was.
pub async fn shutdown_requested() -> Result<Shutdown> {
    signals_received(1).await
}

/// Resolves once `n` signals have been received in all.
pub async fn signals_received(n: u32) -> Result<Shutdown> {
    install()?;
    let mut rx = state().subscribe();
    let seen = rx
        .wait_for(|s| s.is_some_and(|s| s.count >= n))
        .await
        .map_err(|_| Error::internal("the signal state was dropped"))?;
    (*seen).ok_or_else(|| Error::internal("signal state empty after a signal"))
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test: the state is process-wide, and a second test could see this one's signals.
    #[tokio::test]
    async fn waiters_see_signals_sent_before_and_after_they_wait() {
        assert_eq!(requested(), None);
        let waiter = tokio::spawn(shutdown_requested());
        tokio::task::yield_now().await;
        notify(Signal::Terminate);
        let first = waiter.await.unwrap().unwrap();
        assert_eq!(first, Shutdown { signal: Signal::Terminate, count: 1 });
        // A late waiter resolves at once.
        assert_eq!(shutdown_requested().await.unwrap(), first);
        let second = tokio::spawn(signals_received(2));
        notify(Signal::Interrupt);
        assert_eq!(second.await.unwrap().unwrap(), Shutdown { signal: Signal::Interrupt, count: 2 });
        assert_eq!(requested().map(|s| s.signal), Some(Signal::Interrupt));
        assert_eq!((Signal::Interrupt.to_string(), Signal::Terminate.to_string()), ("SIGINT".into(), "SIGTERM".into()));
    }
}
