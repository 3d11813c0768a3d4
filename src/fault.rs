//! Crash points for the fault-injection tests.
//!
//! Built with the `fault-injection` feature, `PG_GHOST_FAULT=<point>` makes the process
//! SIGKILL itself when it reaches that point, as an OOM kill or a lost host would: no
//! destructor, no cleanup, connections cut mid-transaction; at a [`reply_lost`] point, act as
//! if the server's answer to a COMMIT that went through had been lost with the connection; at
//! a [`freeze_point`], stop until continued, its connections silent. A normal build has no
//! such points: they do nothing.

/// Whether `PG_GHOST_FAULT` names `point` and this is the time it asks for (`<point>@<n>`:
/// the n-th time `count` says the point was reached).
#[cfg(feature = "fault-injection")]
fn reached(point: &str, count: &std::sync::atomic::AtomicU64) -> bool {
    let Ok(wanted) = std::env::var("PG_GHOST_FAULT") else { return false };
    let (name, nth) = match wanted.split_once('@') {
        Some((name, n)) => (name.to_string(), n.parse().unwrap_or(1)),
        None => (wanted, 1),
    };
    name == point && count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == nth
}

/// Sends `signal` to this process when `PG_GHOST_FAULT` names `point` and this is the time it
/// asks for (`count`: the point's own tally).
#[cfg(feature = "fault-injection")]
fn signal_self(point: &str, count: &std::sync::atomic::AtomicU64, signal: libc::c_int, what: &str) {
    if reached(point, count) {
        tracing::error!(point, "fault injection: {what}");
        // SAFETY: kill(2) on our own pid with a constant signal has no memory effects.
        unsafe {
            libc::kill(libc::getpid(), signal);
        }
    }
}

/// Dies here when `PG_GHOST_FAULT` names `point` (fault-injection builds only);
/// `<point>@<n>` dies the n-th time the point is reached.
#[cfg(feature = "fault-injection")]
pub fn crash_point(point: &str) {
    static REACHED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    signal_self(point, &REACHED, libc::SIGKILL, "killing the process");
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn crash_point(_point: &str) {}

/// Stops the process here (SIGSTOP, until a SIGCONT) when `PG_GHOST_FAULT` names `point`
/// (fault-injection builds only): its connections stay open and silent, as when the network
/// between pg-ghost and the server goes without either end closing them.
#[cfg(feature = "fault-injection")]
pub fn freeze_point(point: &str) {
    static REACHED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    signal_self(point, &REACHED, libc::SIGSTOP, "stopping the process");
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn freeze_point(_point: &str) {}

/// Whether `PG_GHOST_FAULT` names `point` (`<point>@<n>`: the n-th time it is reached): the
/// caller then acts as if the connection had been lost before the server's answer came (or
/// before its COMMIT reached the server).
#[cfg(feature = "fault-injection")]
pub fn reply_lost(point: &str) -> bool {
    static REACHED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let lost = reached(point, &REACHED);
    if lost {
        tracing::error!(point, "fault injection: the connection is taken as lost here");
    }
    lost
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn reply_lost(_point: &str) -> bool {
    false
}
