//! Maintenance windows: `--window "02:00-06:00"` in `--timezone` (default UTC). No target
//! starts outside the window; a running one finishes. A window may span midnight
//! (`22:00-04:00`).
//!
//! The time of day in the zone comes from PostgreSQL (`now() AT TIME ZONE`), which carries
//! the time zone database, so pg-ghost needs none of its own and a zone name is checked
//! once, when the fleet starts. Tests replace the clock with a file that holds the time
//! (`PG_GHOST_TEST_CLOCK_FILE`, read by nothing else).

use crate::error::{Context, Error, Result};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;
use tokio_postgres::Client;

/// The environment variable the tests set to control the clock.
pub const TEST_CLOCK_ENV: &str = "PG_GHOST_TEST_CLOCK_FILE";
const DAY: u32 = 24 * 3600;

/// Seconds since midnight, start included, end excluded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start: u32,
    pub end: u32,
}

impl Window {
    pub fn parse(text: &str) -> Result<Window> {
        let bad = |why: &str| Error::config(format!("--window {text:?}: {why}; give HH:MM-HH:MM, e.g. 02:00-06:00"));
        let (a, b) = text.split_once('-').ok_or_else(|| bad("no '-' between start and end"))?;
        let start = time_of_day(a).ok_or_else(|| bad(&format!("{:?} is not a time of day", a.trim())))?;
        let end = time_of_day(b).ok_or_else(|| bad(&format!("{:?} is not a time of day", b.trim())))?;
        if start == end {
            return Err(bad("the window is empty (start and end are equal)"));
        }
        Ok(Window { start, end })
    }

    /// How long until the window opens, from `now` (seconds since midnight); zero inside it.
    pub fn until_open(&self, now: u32) -> Duration {
        let inside = match self.start < self.end {
            true => (self.start..self.end).contains(&now),
            false => now >= self.start || now < self.end,
        };
        match inside {
            true => Duration::ZERO,
            false => Duration::from_secs(u64::from((self.start + DAY - now) % DAY)),
        }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", hhmm(self.start), hhmm(self.end))
    }
}

/// `HH:MM` or `HH:MM:SS` → seconds since midnight (`24:00` is the end of the day).
pub fn time_of_day(text: &str) -> Option<u32> {
    let parts: Vec<&str> = text.trim().split(':').collect();
    if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.is_empty() || p.len() > 2 || !p.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    let n: Vec<u32> = parts.iter().map(|p| p.parse().unwrap_or(99)).collect();
    let (h, m, s) = (n[0], n[1], n.get(2).copied().unwrap_or(0));
    match (h, m, s) {
        (24, 0, 0) => Some(DAY),
        (0..=23, 0..=59, 0..=59) => Some(h * 3600 + m * 60 + s),
        _ => None,
    }
    .map(|t| t % DAY)
}

pub fn hhmm(secs: u32) -> String {
    format!("{:02}:{:02}", secs / 3600 % 24, secs / 60 % 60)
}

/// The time of day in the window's zone.
pub enum Clock {
    /// Asked of a PostgreSQL session.
    Server { client: Client, timezone: String },
    /// A file holding `HH:MM[:SS]`, written by a test.
    File(PathBuf),
}

impl Clock {
    /// The test clock when its variable is set, else the server's; the zone is checked here.
    pub async fn open(client: Client, timezone: &str) -> Result<Clock> {
        if let Some(path) = std::env::var_os(TEST_CLOCK_ENV) {
            return Ok(Clock::File(path.into()));
        }
        let clock = Clock::Server { client, timezone: timezone.to_string() };
        clock.now().await.map_err(|e| match e.sqlstate() {
            Some("22023") => Error::config(format!("--timezone {timezone:?}: PostgreSQL knows no such time zone (see pg_timezone_names)")),
            _ => e,
        })?;
        Ok(clock)
    }

    /// Seconds since midnight.
    pub async fn now(&self) -> Result<u32> {
        match self {
            Clock::Server { client, timezone } => {
                let row = client
                    .query_one("SELECT extract(epoch FROM (now() AT TIME ZONE $1)::time)::int", &[timezone])
                    .await
                    .context("reading the time of day for --window")?;
                Ok(row.get::<_, i32>(0).clamp(0, DAY as i32 - 1) as u32)
            }
            Clock::File(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading the test clock {}", path.display()))?;
                time_of_day(&text).ok_or_else(|| Error::config(format!("the test clock {} holds {:?}, not HH:MM", path.display(), text.trim())))
            }
        }
    }

    /// How long to sleep before looking at the clock again while the window is shut: the
    /// test clock moves when the test says so; the real one is looked at every minute
    /// (and at the opening), so a clock change or a daylight-saving jump is noticed.
    pub fn recheck(&self, until_open: Duration) -> Duration {
        match self {
            Clock::File(_) => Duration::from_millis(100),
            Clock::Server { .. } => until_open.min(Duration::from_secs(60)).max(Duration::from_secs(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_and_say_how_long_until_they_open() {
        let w = Window::parse("02:00-06:00").unwrap();
        assert_eq!(w, Window { start: 7200, end: 21600 });
        assert_eq!(w.until_open(7200), Duration::ZERO);
        assert_eq!(w.until_open(21599), Duration::ZERO);
        assert_eq!(w.until_open(21600), Duration::from_secs(20 * 3600));
        assert_eq!(w.until_open(3600), Duration::from_secs(3600));
        assert_eq!(w.to_string(), "02:00-06:00");
    }

    #[test]
    fn a_window_may_span_midnight() {
        let w = Window::parse("22:00 - 04:00").unwrap();
        assert_eq!(w.until_open(23 * 3600), Duration::ZERO);
        assert_eq!(w.until_open(3600), Duration::ZERO);
        assert_eq!(w.until_open(4 * 3600), Duration::from_secs(18 * 3600));
        assert_eq!(Window::parse("22:00-24:00").unwrap().until_open(23 * 3600), Duration::ZERO);
    }

    #[test]
    fn bad_windows_name_the_problem() {
        for (text, why) in [("02:00", "no '-'"), ("2am-6am", "not a time of day"), ("02:00-25:00", "not a time of day"), ("03:00-03:00", "empty")] {
            let e = Window::parse(text).unwrap_err();
            assert!(e.to_string().contains(why), "{text}: {e}");
        }
    }
}
