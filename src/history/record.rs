//! What one row of the history says, kept in memory by the run and written as it changes.
//!
//! Pure: the runner moves the record forward (phases, cut-over report, end), the writer
//! takes [`Record::values`] snapshots and writes them. Phase durations are measured here
//! with `Instant`s, so a phase that lasts a millisecond still counts even when the writer
//! only sees the phase after it; a resumed run adds its durations to the earlier process's.

use crate::error::{Error, ErrorKind};
use crate::phase::Phase;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The strategy a run used: a ghost table copied and swapped in, or the table changed
/// directly, step by step.
pub const STRATEGY_GHOST: &str = "ghost";
pub const STRATEGY_DIRECT: &str = "direct";

/// How a run ended, in the words the history keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    DryRun,
    ReplicaTest,
    Failed,
    Aborted,
    /// The change was made, then undone in its revert window (`pg-ghost revert`).
    Reverted,
}

impl Outcome {
    pub const ALL: [Outcome; 6] =
        [Outcome::Success, Outcome::DryRun, Outcome::ReplicaTest, Outcome::Failed, Outcome::Aborted, Outcome::Reverted];

    pub fn name(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::DryRun => "dry-run",
            Outcome::ReplicaTest => "replica-test",
            Outcome::Failed => "failed",
            Outcome::Aborted => "aborted",
            Outcome::Reverted => "reverted",
        }
    }

    /// An error ends a run as `aborted` when it was stopped on purpose (panic flag,
    /// signal, critical load), as `failed` otherwise (refusals included).
    pub fn of_error(e: &Error) -> Outcome {
        match e.kind() {
            ErrorKind::Aborted => Outcome::Aborted,
            _ => Outcome::Failed,
        }
    }
}

/// Who ran pg-ghost, and where: fixed for the life of the process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub version: String,
    pub client_host: String,
    pub client_user: String,
    pub pid: i32,
}

impl Origin {
    /// This process.
    pub fn this_process() -> Origin {
        Origin {
            version: env!("CARGO_PKG_VERSION").to_string(),
            client_host: hostname().unwrap_or_else(|| "unknown".into()),
            client_user: user_name()
                .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
                // SAFETY: getuid(2) cannot fail and touches no memory of ours.
                .unwrap_or_else(|| format!("uid {}", unsafe { libc::getuid() })),
            pid: i32::try_from(std::process::id()).unwrap_or(-1),
        }
    }
}

/// The name of the process's real user, from the password database.
fn user_name() -> Option<String> {
    // SAFETY: getpwuid_r writes only into `pwd` and `buf`, both valid for their whole size;
    // `pw_name` then points into `buf`, which outlives the read.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 4096];
        let mut found = std::ptr::null_mut();
        let rc = libc::getpwuid_r(libc::getuid(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found);
        if rc != 0 || found.is_null() || pwd.pw_name.is_null() {
            return None;
        }
        Some(std::ffi::CStr::from_ptr(pwd.pw_name).to_string_lossy().into_owned()).filter(|n| !n.is_empty())
    }
}

fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its whole length; gethostname NUL-terminates within it
    // or we cut at the end.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned()).filter(|h| !h.is_empty())
}

/// A run id: 16 hex digits, unique enough across hosts and time (the process's hash seed,
/// the clock and the pid).
pub fn new_run_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    h.write_u128(now.as_nanos());
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

/// One step of the direct way, as the history keeps it (`steps`, a JSON array).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepRecord {
    pub sql: String,
    /// `locked` (catalog only, under a short lock), `validate`, `concurrent-index`.
    pub kind: String,
    /// The locks it takes, e.g. `ACCESS EXCLUSIVE on "public"."t"`.
    pub lock: String,
    /// `pending`, `running`, `done`, `dry-run` (its locks taken and released), `failed`.
    pub outcome: String,
    pub attempts: u32,
    /// From its first attempt to its end (None before it ended).
    pub seconds: Option<f64>,
    pub error: Option<String>,
}

impl StepRecord {
    pub const PENDING: &'static str = "pending";
    pub const RUNNING: &'static str = "running";
    pub const DONE: &'static str = "done";
    pub const DRY_RUN: &'static str = "dry-run";
    pub const FAILED: &'static str = "failed";

    /// A step not started yet.
    pub fn pending(sql: String, kind: String, lock: String) -> StepRecord {
        StepRecord { sql, kind, lock, outcome: Self::PENDING.into(), attempts: 0, seconds: None, error: None }
    }
}

/// What the history holds about the earlier process of a resumed run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Earlier {
    pub rows_copied: u64,
    pub phase_seconds: BTreeMap<String, f64>,
    pub resumes: i32,
    pub cut_over_attempts: Option<i32>,
    pub lock_held_ms: Option<f64>,
}

#[derive(Clone, Debug)]
pub struct Record {
    pub run_id: String,
    pub origin: Origin,
    /// `--table` as given until the table is resolved, then its name; the schema once known.
    pub schema: Option<String>,
    pub table: String,
    pub alter: String,
    /// For a conversion into a partitioned table: the partition key and the number of
    /// partitions (see [`Record::change`]).
    pub partition_by: Option<(String, usize)>,
    pub fingerprint: Option<String>,
    pub strategy: &'static str,
    pub execute: bool,
    phase: Phase,
    /// The phase the run was in when it failed (cleanup follows every phase).
    failed_in: Option<Phase>,
    phase_started: Instant,
    /// Closed phases, seconds (the earlier process's included).
    durations: BTreeMap<String, f64>,
    rows_earlier: u64,
    pub rows_copied: u64,
    pub resumes: i32,
    pub cut_over_attempts: Option<i32>,
    pub lock_held: Option<Duration>,
    lock_held_earlier_ms: Option<f64>,
    /// The direct way's steps, in order (empty for the ghost way).
    pub steps: Vec<StepRecord>,
    outcome: Option<Outcome>,
    error: Option<(String, &'static str)>,
}

/// One snapshot of the record, as the columns take it.
#[derive(Clone, Debug, PartialEq)]
pub struct Values {
    pub schema: Option<String>,
    pub table: String,
    pub fingerprint: Option<String>,
    pub phase: &'static str,
    pub rows_copied: i64,
    /// A JSON object, phase name → seconds.
    pub phase_seconds: String,
    pub cut_over_attempts: Option<i32>,
    pub lock_held_ms: Option<f64>,
    pub resumes: i32,
    pub outcome: Option<&'static str>,
    pub error: Option<String>,
    pub error_kind: Option<&'static str>,
    pub strategy: &'static str,
    /// The direct way's steps as a JSON array; None for the ghost way.
    pub steps: Option<String>,
}

impl Record {
    pub fn new(run_id: String, origin: Origin, table: &str, alter: &str, execute: bool) -> Record {
        Record {
            run_id,
            origin,
            schema: None,
            table: table.to_string(),
            alter: alter.to_string(),
            partition_by: None,
            fingerprint: fingerprint(table, alter),
            strategy: STRATEGY_GHOST,
            execute,
            phase: Phase::Inspect,
            failed_in: None,
            phase_started: Instant::now(),
            durations: BTreeMap::new(),
            rows_earlier: 0,
            rows_copied: 0,
            resumes: 0,
            cut_over_attempts: None,
            lock_held: None,
            lock_held_earlier_ms: None,
            steps: Vec::new(),
            outcome: None,
            error: None,
        }
    }

    /// The run converts the table into one partitioned by `partition_by` (as pg-ghost reads
    /// it: `RANGE ("at")`), in `partitions` partitions.
    pub fn conversion(&mut self, partition_by: &str, partitions: usize) {
        self.partition_by = Some((partition_by.to_string(), partitions));
        self.fingerprint = conversion_fingerprint(&self.table, partition_by, &self.alter);
    }

    /// The change as recorded (column `alter_clauses`): the ALTER as given; for a conversion,
    /// `PARTITION BY RANGE ("at") (12 partitions)`, then `; ` and the ALTER when there is one.
    pub fn change(&self) -> String {
        match &self.partition_by {
            None => self.alter.clone(),
            Some((by, count)) => {
                let mut change = format!("PARTITION BY {by} ({count} partition{})", if *count == 1 { "" } else { "s" });
                if !self.alter.trim().is_empty() {
                    change.push_str("; ");
                    change.push_str(self.alter.trim());
                }
                change
            }
        }
    }

    /// The table is resolved: its real name, and the fingerprint of the statement on it.
    pub fn resolved(&mut self, schema: &str, table: &str, qualified_sql: &str) {
        self.schema = Some(schema.to_string());
        self.table = table.to_string();
        self.fingerprint = match &self.partition_by {
            None => fingerprint(qualified_sql, &self.alter),
            Some((by, _)) => conversion_fingerprint(qualified_sql, by, &self.alter),
        };
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Enters `phase` at `now`, closing the one before.
    pub fn enter(&mut self, phase: Phase, now: Instant) {
        if phase == self.phase {
            return;
        }
        self.close_phase(now);
        if phase == Phase::Cleanup && self.failed_in.is_none() {
            self.failed_in = Some(self.phase);
        }
        self.phase = phase;
    }

    fn close_phase(&mut self, now: Instant) {
        let took = now.saturating_duration_since(self.phase_started).as_secs_f64();
        *self.durations.entry(self.phase.name().to_string()).or_default() += took;
        self.phase_started = now;
    }

    /// A resumed run continues the earlier process's row: its durations and rows go on.
    pub fn continue_from(&mut self, earlier: Earlier) {
        for (phase, secs) in earlier.phase_seconds {
            *self.durations.entry(phase).or_default() += secs;
        }
        self.rows_earlier = earlier.rows_copied;
        self.resumes = earlier.resumes + 1;
        self.cut_over_attempts = self.cut_over_attempts.or(earlier.cut_over_attempts);
        self.lock_held_earlier_ms = earlier.lock_held_ms;
    }

    /// A run that resumes but whose earlier row is not there: a row of its own that says so.
    pub fn mark_resumed(&mut self) {
        self.resumes = self.resumes.max(1);
    }

    /// The run ended at `now`; `failed_in_cleanup` when only the cleanup failed.
    pub fn finish(&mut self, outcome: std::result::Result<Outcome, &Error>, failed_in_cleanup: bool, now: Instant) {
        self.close_phase(now);
        match outcome {
            Ok(o) => {
                self.outcome = Some(o);
                self.phase = Phase::Done;
            }
            Err(e) => {
                self.outcome = Some(Outcome::of_error(e));
                self.error = Some((e.chain(), e.kind().name()));
                self.phase = match (failed_in_cleanup, self.failed_in) {
                    (false, Some(p)) => p,
                    _ => self.phase,
                };
            }
        }
    }

    pub fn is_finished(&self) -> bool {
        self.outcome.is_some()
    }

    /// The columns as of `now` (the phase under way counts up to `now`).
    pub fn values(&self, now: Instant) -> Values {
        let mut durations = self.durations.clone();
        if self.outcome.is_none() {
            let running = now.saturating_duration_since(self.phase_started).as_secs_f64();
            *durations.entry(self.phase.name().to_string()).or_default() += running;
        }
        Values {
            schema: self.schema.clone(),
            table: self.table.clone(),
            fingerprint: self.fingerprint.clone(),
            phase: self.phase.name(),
            rows_copied: i64::try_from(self.rows_earlier.saturating_add(self.rows_copied)).unwrap_or(i64::MAX),
            phase_seconds: phase_seconds_json(&durations),
            cut_over_attempts: self.cut_over_attempts,
            lock_held_ms: self.lock_held.map(|d| round_ms(d.as_secs_f64() * 1000.0)).or(self.lock_held_earlier_ms),
            resumes: self.resumes,
            outcome: self.outcome.map(Outcome::name),
            error: self.error.as_ref().map(|(text, _)| text.clone()),
            error_kind: self.error.as_ref().map(|(_, kind)| *kind),
            strategy: self.strategy,
            steps: match self.steps.is_empty() {
                true => None,
                false => Some(serde_json::to_string(&self.steps).unwrap_or_else(|_| "[]".into())),
            },
        }
    }
}

/// The pg_query fingerprint of `ALTER TABLE <table> <alter>`: the same change written
/// differently (spacing, case, constants) has the same fingerprint. None when it does not
/// parse (a refused ALTER is still recorded).
pub fn fingerprint(table_sql: &str, alter: &str) -> Option<String> {
    let alter = alter.trim().trim_end_matches(';').trim();
    pg_query::fingerprint(&format!("ALTER TABLE {table_sql} {alter}"), pg_query::ParserOptions::DEFAULT, pg_query::FingerprintOptions::DEFAULT)
        .ok()
        .map(|f| f.hex)
}

/// The fingerprint of a conversion: that of `CREATE TABLE <table> () PARTITION BY <key>`
/// followed by the ALTER, if any. The same key and ALTER give the same one, whatever the
/// partitions; it differs from the ALTER's alone.
pub fn conversion_fingerprint(table_sql: &str, partition_by: &str, alter: &str) -> Option<String> {
    let alter = alter.trim().trim_end_matches(';').trim();
    let mut sql = format!("CREATE TABLE {table_sql} () PARTITION BY {partition_by}");
    if !alter.is_empty() {
        sql.push_str(&format!("; ALTER TABLE {table_sql} {alter}"));
    }
    pg_query::fingerprint(&sql, pg_query::ParserOptions::DEFAULT, pg_query::FingerprintOptions::DEFAULT).ok().map(|f| f.hex)
}

fn round_ms(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

/// `{"copy": 3.4, "inspect": 0.012}`: phase name → seconds, to the millisecond.
fn phase_seconds_json(durations: &BTreeMap<String, f64>) -> String {
    let map: serde_json::Map<String, serde_json::Value> =
        durations.iter().map(|(name, secs)| (name.clone(), serde_json::json!((secs * 1000.0).round() / 1000.0))).collect();
    serde_json::Value::Object(map).to_string()
}

#[cfg(test)]
mod tests;
