//! The history of runs: every `pg-ghost run` records itself in a table of the target
//! database (`pgghost.runs` by default, `--history-table`, none with `--no-history`),
//! created on first use. `pg-ghost history` prints it ([`show`]).
//!
//! The row is inserted when the run starts and updated as phases pass (and every
//! [`REFRESH`] meanwhile, with the rows copied so far), so a killed run is left showing the
//! phase it died in and no end; `--resume` takes the same row over (its id is kept in the
//! changelog table) and counts the resume.
//!
//! Invariants:
//! - The history never fails, stops or slows the migration. Writes go through a session of
//!   their own, from a task of their own, each bounded by [`WRITE_LIMIT`]; a failed write is
//!   a warning (once, then debug) and the next one tries again. Only a malformed
//!   `--history-table` is an error: the user named a table, and it is no table.
//! - It takes no lock the cut-over could wait for: it writes one row of its own table, in
//!   autocommit statements, never inside the swap transaction (which runs on the cut-over's
//!   sessions).
//! - It is never published. pg-ghost's publication lists the original table only; a
//!   publication that would publish the history table (`FOR ALL TABLES`, `FOR TABLES IN
//!   SCHEMA` of its schema, or one that lists it) would send its rows to subscribers that do
//!   not have it and stop their apply: then the run goes on without history, and says why.
//! - A role that may not create the table (or write it) gets a warning, and the run goes on
//!   without history.

mod record;
mod show;
mod sql;

pub use record::{fingerprint, new_run_id, Origin, Outcome, StepRecord, STRATEGY_DIRECT, STRATEGY_GHOST};
pub use show::{render_json, render_text, show, Entry};

use crate::config::Config;
use crate::conn::ConnInfo;
use crate::copy::CopyProgress;
use crate::error::{Context, Error, ErrorKind, Result};
use crate::inspect;
use crate::phase::Phase;
use crate::sql::QualifiedName;
use record::{Earlier, Record};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

/// `--history-table`'s default.
pub const DEFAULT_TABLE: &str = "pgghost.runs";
/// The schema of a `--history-table` given without one. Not `pg_ghost`: PostgreSQL reserves
/// schema names starting with `pg_` for itself and refuses to create them.
pub const DEFAULT_SCHEMA: &str = "pgghost";
/// How often the row is refreshed between phases (rows copied, `updated_at`).
pub const REFRESH: Duration = Duration::from_secs(10);
/// The longest one write (or the opening) may take before it is given up.
pub const WRITE_LIMIT: Duration = Duration::from_secs(3);
/// How long the end of a run waits for its last write.
const FINAL_WAIT: Duration = Duration::from_secs(5);

/// The run's side of the history: cheap, synchronous updates of the record; a task writes it.
pub struct History {
    inner: Option<Inner>,
}

struct Inner {
    state: Arc<Mutex<State>>,
    wake: watch::Sender<u64>,
    task: JoinHandle<()>,
}

/// What the writer has to do before updating the row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Start {
    /// `--resume`: whether there is an earlier row to continue is not known yet.
    Waiting,
    Insert,
    /// Continue the earlier row of `record.run_id` (insert one if it is gone).
    TakeOver,
    Written,
}

struct State {
    record: Record,
    start: Start,
    copy: Option<Arc<CopyProgress>>,
}

impl History {
    /// No history (`--no-history`, or it cannot be written).
    pub fn off() -> History {
        History { inner: None }
    }

    /// Opens the history for a run: its own session, the table resolved (and created when
    /// missing), the writer started. Anything but a malformed `--history-table` ends in a
    /// warning and a run without history.
    pub async fn open(cfg: &Config) -> Result<History> {
        let Some(given) = cfg.history_table.as_deref() else { return Ok(History::off()) };
        let conn = cfg.conn.with_application_name("pg-ghost history");
        let opened = match tokio::time::timeout(2 * WRITE_LIMIT, prepare(&conn, given, &cfg.table)).await {
            Ok(r) => r,
            Err(_) => Err(Error::new(ErrorKind::Connection, format!("no answer within {:?}", 2 * WRITE_LIMIT))),
        };
        let (client, table) = match opened {
            Ok(Some(opened)) => opened,
            Ok(None) => return Ok(History::off()),
            Err(e) if e.kind() == ErrorKind::Config => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e.chain(), "the run is not recorded in the history of runs (it goes on without)");
                return Ok(History::off());
            }
        };
        let mut record = Record::new(cfg.run_id.clone().unwrap_or_else(record::new_run_id), Origin::this_process(), &cfg.table, &cfg.alter, cfg.execute);
        if let Some(c) = &cfg.conversion {
            record.conversion(&c.partition_by, c.partitions.len());
        }
        tracing::info!(run_id = %record.run_id, history = %table, "recording the run in the history of runs");
        let start = if cfg.resume { Start::Waiting } else { Start::Insert };
        let state = Arc::new(Mutex::new(State { record, start, copy: None }));
        let (wake, woken) = watch::channel(0);
        let task = tokio::spawn(writer(state.clone(), conn, table, client, woken));
        Ok(History { inner: Some(Inner { state, wake, task }) })
    }

    /// The run's id (kept in the changelog table, for `--resume`); None without history.
    pub fn run_id(&self) -> Option<String> {
        self.update(|s| s.record.run_id.clone())
    }

    pub fn enter(&self, phase: Phase) {
        self.update(|s| s.record.enter(phase, Instant::now()));
    }

    /// The table is resolved: its name and the fingerprint of the change on it.
    pub fn resolved(&self, table: &QualifiedName) {
        self.update(|s| s.record.resolved(&table.schema, &table.name, &table.sql()));
    }

    /// `--resume` found the earlier run: continue its row (None: it had none, this run gets
    /// its own, marked as resumed).
    pub fn resumed(&self, run_id: Option<String>) {
        self.update(|s| match run_id {
            Some(id) => {
                s.record.run_id = id;
                s.start = Start::TakeOver;
            }
            None => {
                s.record.mark_resumed();
                s.start = Start::Insert;
            }
        });
    }

    /// The rows the copy has inserted are read at every write.
    pub fn follow_copy(&self, progress: Arc<CopyProgress>) {
        self.update(|s| s.copy = Some(progress));
    }

    /// The run took another way than the ghost's.
    pub fn strategy(&self, strategy: &'static str) {
        self.update(|s| s.record.strategy = strategy);
    }

    /// The direct way's steps, all pending.
    pub fn steps(&self, steps: Vec<StepRecord>) {
        self.update(|s| s.record.steps = steps);
    }

    /// One step of the direct way moved on.
    pub fn step(&self, index: usize, change: impl FnOnce(&mut StepRecord)) {
        self.update(|s| {
            if let Some(step) = s.record.steps.get_mut(index) {
                change(step);
            }
        });
    }

    pub fn cut_over(&self, attempts: u32, lock_held: Option<Duration>) {
        self.update(|s| {
            s.record.cut_over_attempts = Some(i32::try_from(attempts).unwrap_or(i32::MAX));
            if lock_held.is_some() {
                s.record.lock_held = lock_held;
            }
        });
    }

    /// The run has ended: the last write, waited for (briefly).
    pub async fn finish(&mut self, outcome: std::result::Result<Outcome, &Error>, failed_in_cleanup: bool) {
        self.update(|s| {
            if s.start == Start::Waiting {
                // A resume refused before it found the earlier run: a row of its own.
                s.record.mark_resumed();
                s.start = Start::Insert;
            }
            s.record.finish(outcome, failed_in_cleanup, Instant::now());
        });
        let Some(inner) = self.inner.take() else { return };
        drop(inner.wake);
        let mut task = inner.task;
        if tokio::time::timeout(FINAL_WAIT, &mut task).await.is_err() {
            task.abort();
            tracing::warn!("the history of runs could not be given the run's end in time");
        }
    }

    /// Changes the state and wakes the writer.
    fn update<T>(&self, f: impl FnOnce(&mut State) -> T) -> Option<T> {
        let inner = self.inner.as_ref()?;
        let out = {
            let mut state = inner.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut *state)
        };
        inner.wake.send_modify(|n| *n = n.wrapping_add(1));
        Some(out)
    }
}

/// Connects, resolves the table's name and makes sure the table exists. None: the history
/// must not be written here (it would be published).
async fn prepare(conn: &ConnInfo, given: &str, target: &str) -> Result<Option<(Client, QualifiedName)>> {
    let client = connect(conn).await?;
    let table = resolve_name(&client, given).await?;
    if inspect::resolve_table(&client, target).await.is_ok_and(|t| t == table) {
        tracing::warn!(table = %table, "the table to change is the history table: this run is not recorded in it");
        return Ok(None);
    }
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .context("reading the server version")?
        .try_get(0)?;
    let publishing: Vec<String> = client
        .query(&sql::publishing(&table, version >= 150000), &[])
        .await
        .context("reading publications")?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<std::result::Result<_, _>>()?;
    if !publishing.is_empty() {
        tracing::warn!(
            history = %table,
            publications = %publishing.join(", "),
            "the run is not recorded in the history of runs: these publications would publish it, and their subscribers would \
             fail on a table they do not have (choose another --history-table schema, or --no-history)"
        );
        return Ok(None);
    }
    let exists: bool =
        client.query_one("SELECT to_regclass($1) IS NOT NULL", &[&table.sql()]).await.context("looking for the history table")?.try_get(0)?;
    if !exists {
        create(&client, &table).await.map_err(|e| {
            let hint = if e.kind() == ErrorKind::Privilege {
                format!(
                    "; to keep a history, create it once as a role that may (pg-ghost does so on its first run), or grant this role CREATE on the database or on schema {}",
                    crate::sql::ident(&table.schema)
                )
            } else {
                String::new()
            };
            e.context(format!("creating the history table {table}{hint}"))
        })?;
        tracing::info!(history = %table, "history table created");
    } else if !has_steps_column(&client, &table).await? {
        // Made by an earlier pg-ghost: the direct way's steps need their column.
        client.batch_execute(&sql::add_steps_column(&table)).await.with_context(|| format!("adding the steps column to {table}"))?;
    }
    if exists {
        upgrade_outcome_check(&client, &table).await?;
    }
    Ok(Some((client, table)))
}

/// A table made by an earlier pg-ghost checks for fewer outcomes (`reverted` came later).
async fn upgrade_outcome_check(client: &Client, table: &QualifiedName) -> Result<()> {
    let outdated = client
        .query_opt(sql::OUTDATED_OUTCOME_CHECK, &[&table.sql(), &sql::newest_outcome_pattern()])
        .await
        .context("reading the history table's outcome check")?;
    let Some(row) = outdated else { return Ok(()) };
    let constraint: String = row.try_get(0)?;
    client
        .batch_execute(&sql::replace_outcome_check(table, &constraint))
        .await
        .with_context(|| format!("letting {table} record the outcomes of this pg-ghost"))?;
    tracing::info!(history = %table, "the history table's outcome check now lists every outcome of this pg-ghost");
    Ok(())
}

async fn has_steps_column(client: &Client, table: &QualifiedName) -> Result<bool> {
    let row = client
        .query_one("SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = $1::text::regclass AND attname = 'steps' AND NOT attisdropped)", &[&table.sql()])
        .await
        .context("reading the history table's columns")?;
    Ok(row.try_get(0)?)
}

/// `[schema.]name`, read as PostgreSQL reads identifiers; the schema defaults to `pgghost`.
async fn resolve_name(client: &Client, given: &str) -> Result<QualifiedName> {
    let parts: Vec<String> = match client.query_one("SELECT parse_ident($1)", &[&given]).await {
        Ok(row) => row.try_get(0)?,
        Err(e) => return Err(Error::config(format!("--history-table {given:?} is not a table name: {}", Error::from(e).message()))),
    };
    match parts.as_slice() {
        [name] => Ok(QualifiedName::new(DEFAULT_SCHEMA, name.clone())),
        [schema, name] => Ok(QualifiedName::new(schema.clone(), name.clone())),
        _ => Err(Error::config(format!("--history-table {given:?} has {} parts: give it as [schema.]name", parts.len()))),
    }
}

async fn create(client: &Client, table: &QualifiedName) -> Result<()> {
    // Another run may create it at the same moment: one at a time, each checking again.
    client.batch_execute("BEGIN").await?;
    let created = async {
        client.batch_execute(sql::CREATE_LOCK).await?;
        let schema_exists: bool =
            client.query_one("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", &[&table.schema]).await?.try_get(0)?;
        if !schema_exists {
            client.batch_execute(&sql::create_schema(table)).await?;
        }
        client.batch_execute(&sql::create_table(table)).await?;
        client.batch_execute("COMMIT").await?;
        Ok::<_, Error>(())
    }
    .await;
    if created.is_err() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    created
}

/// The history's own session. Its writes must never wait long: a short lock and statement
/// timeout, and no wait for synchronous standbys (a history row need not be on them).
async fn connect(conn: &ConnInfo) -> Result<Client> {
    let client = conn.connect().await?;
    client
        .batch_execute(&format!(
            "SET statement_timeout = '{}ms'; SET lock_timeout = '1s'; SET synchronous_commit = local",
            WRITE_LIMIT.as_millis()
        ))
        .await
        .context("setting up the history session")?;
    Ok(client)
}

/// Writes the record whenever it changes and every [`REFRESH`], until the run has ended and
/// its end is written (or could not be, after a few tries).
async fn writer(state: Arc<Mutex<State>>, conn: ConnInfo, table: QualifiedName, client: Client, mut woken: watch::Receiver<u64>) {
    let mut session = Some(client);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + REFRESH, REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    let mut last_tries = 0;
    loop {
        let written = match tokio::time::timeout(WRITE_LIMIT, write(&state, &conn, &table, &mut session)).await {
            Ok(r) => r,
            Err(_) => {
                // The session's state is unknown after a cancelled statement: a new one next time.
                session = None;
                Err(Error::new(ErrorKind::Connection, format!("no answer within {WRITE_LIMIT:?}")))
            }
        };
        match written {
            Ok(finished) => {
                if failing {
                    tracing::info!(history = %table, "the history of runs is written again");
                    failing = false;
                }
                if finished {
                    return;
                }
            }
            Err(e) => {
                if e.kind().is_lost_connection() {
                    session = None;
                }
                if failing {
                    tracing::debug!(history = %table, error = %e.chain(), "the history of runs still cannot be written");
                } else {
                    tracing::warn!(history = %table, error = %e.chain(), "the history of runs cannot be written; the run goes on");
                    failing = true;
                }
                if woken.has_changed().is_err() {
                    // The run has ended: a few more tries for its end, then give up.
                    last_tries += 1;
                    if last_tries >= 3 {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
        }
        tokio::select! {
            changed = woken.changed() => {
                if changed.is_err() && !is_finished(&state) {
                    // The run dropped its history without giving it an end.
                    return;
                }
            }
            _ = tick.tick() => {}
        }
    }
}

fn is_finished(state: &Mutex<State>) -> bool {
    state.lock().unwrap_or_else(|p| p.into_inner()).record.is_finished()
}

/// One write of the whole row; returns whether it wrote the run's end.
async fn write(state: &Mutex<State>, conn: &ConnInfo, table: &QualifiedName, session: &mut Option<Client>) -> Result<bool> {
    let (start, record) = {
        let s = state.lock().unwrap_or_else(|p| p.into_inner());
        (s.start, s.record.clone())
    };
    if start == Start::Waiting {
        return Ok(false);
    }
    if session.as_ref().map_or(true, Client::is_closed) {
        *session = Some(connect(conn).await?);
    }
    let Some(client) = session.as_ref() else { return Err(Error::internal("no history session")) };
    match start {
        Start::Insert => insert(client, table, &record).await?,
        Start::TakeOver => {
            let earlier = take_over(client, table, &record).await?;
            let found = earlier.is_some();
            {
                let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                match earlier {
                    Some(earlier) => {
                        s.record.continue_from(earlier);
                        // Taken over once: a failed update below must not add it again.
                        s.start = Start::Written;
                    }
                    None => s.record.mark_resumed(),
                }
            }
            if !found {
                // The earlier row is gone (or the earlier run had none): this run's own.
                insert(client, table, &record).await?;
            }
        }
        Start::Waiting | Start::Written => {}
    }
    let values = {
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        if s.start != Start::Waiting {
            s.start = Start::Written;
        }
        if let Some(copy) = &s.copy {
            s.record.rows_copied = copy.rows.load(Ordering::Relaxed);
        }
        (s.record.run_id.clone(), s.record.values(Instant::now()), s.record.is_finished())
    };
    let (run_id, v, finished) = values;
    client
        .execute(
            &sql::update(table),
            &[
                &run_id,
                &v.schema,
                &v.table,
                &v.fingerprint,
                &v.phase,
                &v.rows_copied,
                &v.phase_seconds,
                &v.cut_over_attempts,
                &v.lock_held_ms,
                &v.resumes,
                &v.outcome,
                &v.error,
                &v.error_kind,
                &v.strategy,
                &v.steps,
            ],
        )
        .await
        .context("updating the run's row")?;
    Ok(finished)
}

async fn insert(client: &Client, table: &QualifiedName, r: &Record) -> Result<()> {
    client
        .execute(
            &sql::insert(table),
            &[
                &r.run_id,
                &r.table,
                &r.change(),
                &r.strategy,
                &r.origin.version,
                &r.origin.client_host,
                &r.origin.client_user,
                &r.origin.pid,
                &r.execute,
                &r.phase().name(),
            ],
        )
        .await
        .context("inserting the run's row")?;
    Ok(())
}

async fn take_over(client: &Client, table: &QualifiedName, r: &Record) -> Result<Option<Earlier>> {
    let o = &r.origin;
    let row = client
        .query_opt(&sql::take_over(table), &[&r.run_id, &o.pid, &o.client_host, &o.client_user, &o.version])
        .await
        .context("taking over the earlier run's row")?;
    let Some(row) = row else { return Ok(None) };
    let rows: i64 = row.try_get(0)?;
    let seconds: String = row.try_get(1)?;
    Ok(Some(Earlier {
        rows_copied: u64::try_from(rows).unwrap_or(0),
        phase_seconds: serde_json::from_str(&seconds).unwrap_or_default(),
        resumes: row.try_get(2)?,
        cut_over_attempts: row.try_get(3)?,
        lock_held_ms: row.try_get(4)?,
    }))
}
