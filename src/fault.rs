//! Crash points for the fault-injection tests.
//!
//! Built with the `fault-injection` feature, `PG_GHOST_FAULT=<point>` makes the process
//! SIGKILL itself when it reaches that point, as an OOM kill or a lost host would: no
//! destructor, no cleanup, connections cut mid-transaction. A normal build has no such
//! points: [`crash_point`] does nothing.

/// Dies here when `PG_GHOST_FAULT` names `point` (fault-injection builds only);
/// `<point>@<n>` dies the n-th time the point is reached.
#[cfg(feature = "fault-injection")]
pub fn crash_point(point: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static REACHED: AtomicU64 = AtomicU64::new(0);
    let Ok(wanted) = std::env::var("PG_GHOST_FAULT") else { return };
    let (name, nth) = match wanted.split_once('@') {
        Some((name, n)) => (name.to_string(), n.parse().unwrap_or(1)),
        None => (wanted, 1),
    };
    if name == point && REACHED.fetch_add(1, Ordering::SeqCst) + 1 == nth {
        tracing::error!(point, "fault injection: killing the process");
        // SAFETY: kill(2) on our own pid with a constant signal has no memory effects.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn crash_point(_point: &str) {}
