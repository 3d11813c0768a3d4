//! The run's abort signal (panic flag, signal, critical load) as the long waits read it: a
//! `watch` channel that holds the reason once the run must stop.

use crate::error::{Error, ErrorKind, Result};
use std::time::Duration;
use tokio::sync::watch;

/// `Err(Aborted)` with the reason once the run must stop.
pub fn check(abort: &watch::Receiver<Option<String>>) -> Result<()> {
    match abort.borrow().as_ref() {
        Some(why) => Err(Error::new(ErrorKind::Aborted, why.clone())),
        None => Ok(()),
    }
}

/// Sleeps `delay`, or less when the run must stop meanwhile (then `Err(Aborted)`).
pub async fn sleep_unless_aborted(abort: &watch::Receiver<Option<String>>, delay: Duration) -> Result<()> {
    let mut watching = abort.clone();
    tokio::select! {
        _ = tokio::time::sleep(delay) => Ok(()),
        _ = watching.wait_for(|a| a.is_some()) => check(abort),
    }
}
