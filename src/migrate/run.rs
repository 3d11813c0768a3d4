//! Applying, planning and listing the files: which are pending, in what order, where a
//! failed one resumes, and running each statement its way.

use super::files::{self, MigrationFile, Phase, Version};
use super::show;
use super::statements::{self, one_line, Action, Body, Statement};
use super::table::{self, Row};
use crate::config::Config;
use crate::conn::ConnInfo;
use crate::concurrent_index;
use crate::cutover::sessions::{LostStatement, Sessions};
use crate::cutover::waiting;
use crate::error::{Backoff, Error, ErrorKind, Result};
use crate::runner::{self, Outcome};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What `migrate` prints when every file is applied already (a fleet counts such a target
/// as skipped).
pub const NOTHING_TO_APPLY: &str = "nothing to apply\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Apply,
    Plan,
    Status,
}

/// No `Debug`: the connection may hold a password.
#[derive(Clone)]
pub struct MigrateConfig {
    pub conn: ConnInfo,
    pub dir: PathBuf,
    pub target: Option<Version>,
    pub phase: Option<Phase>,
    pub mode: Mode,
    /// Lock timeout and retries of each statement, and what each online change is given.
    pub runs: crate::config::MigrationRuns,
    /// `--out-of-order`.
    pub out_of_order: bool,
    /// How `--status` and `--plan` print.
    pub format: crate::plan::Format,
}

/// Runs `migrate` in its mode; returns what to print on stdout.
pub async fn migrate(cfg: &MigrateConfig) -> Result<String> {
    let files = files::discover(&cfg.dir)?;
    let conn = cfg.conn.clone().resolve().await?;
    let client = conn.with_application_name("pg-ghost migrate").connect().await?;
    let rows: HashMap<String, Row> = table::rows(&client).await?.into_iter().map(|r| (r.version.clone(), r)).collect();
    if cfg.mode == Mode::Status {
        return show::render_status(&show::status_rows(&files, &rows), cfg.format);
    }
    verify_checksums(&files, &rows)?;
    check_order(&files, &rows, cfg.out_of_order)?;
    match cfg.mode {
        Mode::Plan => plan(&conn, &pending(&files, &rows, cfg.target.as_ref(), cfg.phase), &rows, cfg.format).await,
        _ => {
            table::create(&client).await?;
            table::lock(&client).await?;
            // Read again under the lock: another migrate may have applied files meanwhile.
            let rows: HashMap<String, Row> = table::rows(&client).await?.into_iter().map(|r| (r.version.clone(), r)).collect();
            verify_checksums(&files, &rows)?;
            let pending = pending(&files, &rows, cfg.target.as_ref(), cfg.phase);
            apply(cfg, &conn, &client, &pending, &rows).await
        }
    }
}

/// An applied file whose bytes changed stops everything.
fn verify_checksums(files: &[MigrationFile], rows: &HashMap<String, Row>) -> Result<()> {
    for f in files {
        if let Some(row) = rows.get(&f.version.to_string()).filter(|r| r.is_applied()) {
            if row.checksum != f.checksum {
                return Err(Error::refused(format!(
                    "{} was applied with checksum {} but the file now has checksum {}: an applied migration must not change \
                     (restore the file, and put the change in a new version)",
                    f.name(),
                    row.checksum,
                    f.checksum
                )));
            }
        }
    }
    Ok(())
}

/// A pending file older than the newest applied one would run after what it was written
/// before: refused unless the DBA says it is fine.
fn check_order(files: &[MigrationFile], rows: &HashMap<String, Row>, out_of_order: bool) -> Result<()> {
    let applied = |f: &&MigrationFile| rows.get(&f.version.to_string()).is_some_and(Row::is_applied);
    let Some(newest) = files.iter().filter(applied).map(|f| &f.version).max() else { return Ok(()) };
    let late: Vec<String> = files.iter().filter(|f| !applied(f) && f.version < *newest).map(MigrationFile::name).collect();
    match (late.is_empty(), out_of_order) {
        (true, _) => Ok(()),
        (false, true) => {
            tracing::warn!(files = %late.join(", "), newest = %newest, "--out-of-order: applying files older than the newest applied version");
            Ok(())
        }
        (false, false) => Err(Error::refused(format!(
            "{} {} pending but V{newest} is applied already: {} would run after what {} written before; check, then run again with --out-of-order",
            late.join(", "),
            if late.len() == 1 { "is" } else { "are" },
            if late.len() == 1 { "it" } else { "they" },
            if late.len() == 1 { "it was" } else { "they were" },
        ))),
    }
}

/// The files to apply, in order: not applied yet, up to `target`, and up to the first of a
/// phase later than `phase`.
fn pending<'f>(files: &'f [MigrationFile], rows: &HashMap<String, Row>, target: Option<&Version>, phase: Option<Phase>) -> Vec<&'f MigrationFile> {
    let mut out = Vec::new();
    for f in files {
        if rows.get(&f.version.to_string()).is_some_and(Row::is_applied) {
            continue;
        }
        if target.is_some_and(|t| f.version > *t) {
            break;
        }
        if let (Some(limit), Some(p)) = (phase, f.phase) {
            if p > limit {
                break;
            }
        }
        out.push(f);
    }
    out
}

fn classify(f: &MigrationFile) -> Result<Body> {
    statements::classify(&f.text).map_err(|e| e.context(f.name()))
}

/// Statement texts hashed, to tell whether the statements a failed file did are unchanged.
fn done_checksum(statements: &[Statement]) -> String {
    let joined: Vec<&str> = statements.iter().map(|s| s.text.as_str()).collect();
    files::sha256_hex(joined.join("\n;\n").as_bytes())
}

/// Where a file starts: after the statements a failed attempt did, when they are unchanged.
fn resume_at(f: &MigrationFile, body: &Body, row: Option<&Row>) -> Result<usize> {
    let Some(row) = row.filter(|r| r.statements_done > 0) else { return Ok(0) };
    let Body::Steps(steps) = body else { return Ok(0) };
    let done = row.statements_done as usize;
    if done > steps.len() || row.done_checksum.as_deref() != Some(done_checksum(&steps[..done]).as_str()) {
        return Err(Error::refused(format!(
            "{}: an earlier attempt did its first {done} statements, and they have changed since; only the statement that failed and \
             those after it may change (put the rest in a new version)",
            f.name()
        )));
    }
    Ok(done)
}

async fn apply(cfg: &MigrateConfig, conn: &ConnInfo, client: &tokio_postgres::Client, pending: &[&MigrationFile], rows: &HashMap<String, Row>) -> Result<String> {
    let mut out = String::new();
    if pending.is_empty() {
        out.push_str(NOTHING_TO_APPLY);
        return Ok(out);
    }
    let origin = crate::history::Origin::this_process();
    let by = format!("{} ({}@{})", conn_user(client).await, origin.client_user, origin.client_host);
    let mut sessions = Sessions::open(conn).await?;
    for f in pending {
        // Stopped between files: the next one is left pending, not marked failed.
        if let Some(stop) = crate::signals::requested() {
            return Err(Error::new(ErrorKind::Aborted, format!("stopped by {} before {}", stop.signal, f.name())));
        }
        let version = f.version.to_string();
        let body = classify(f)?;
        let start = resume_at(f, &body, rows.get(&version))?;
        let total = match &body {
            Body::Steps(s) => s.len(),
            Body::Transaction { statements, .. } => *statements,
        };
        table::start(client, &version, &f.description, f.phase.map(Phase::as_str), &f.checksum, total as i32, &by).await?;
        let started = Instant::now();
        tracing::info!(file = %f.name(), statements = total, from = start + 1, "applying");
        let result = match &body {
            Body::Steps(steps) => apply_steps(cfg, conn, client, &mut sessions, f, steps, start).await,
            Body::Transaction { text, .. } => direct(cfg, &mut sessions, conn, text, "transaction block").await.map_err(|e| e.context(format!("{} (one transaction)", f.name()))),
        };
        match result {
            Ok(()) => {
                table::finish(client, &version, None).await?;
                let _ = writeln!(out, "V{version} {}: applied ({total} statements, {:.1}s)", f.description, started.elapsed().as_secs_f64());
            }
            Err(e) => {
                if let Err(record) = table::finish(client, &version, Some(&e.chain())).await {
                    tracing::error!(error = %record.chain(), "could not record the failure in pgghost.migrations");
                }
                return Err(e);
            }
        }
    }
    Ok(out)
}

async fn apply_steps(
    cfg: &MigrateConfig,
    conn: &ConnInfo,
    client: &tokio_postgres::Client,
    sessions: &mut Sessions,
    f: &MigrationFile,
    steps: &[Statement],
    start: usize,
) -> Result<()> {
    let version = f.version.to_string();
    for (i, s) in steps.iter().enumerate().skip(start) {
        let at = |e: Error| e.context(format!("{}, statement {} of {} ({})", f.name(), i + 1, steps.len(), one_line(&s.text)));
        // A signal (or a fleet's `panic`) stops between statements: the file is recorded as
        // failed here, and the next `migrate` resumes at this statement.
        if let Some(stop) = crate::signals::requested() {
            return Err(at(Error::new(ErrorKind::Aborted, format!("stopped by {} before this statement", stop.signal))));
        }
        tracing::info!(file = %f.name(), statement = i + 1, how = s.action.how(), sql = %one_line(&s.action.sql()), "statement");
        match &s.action {
            Action::Online { table, clauses } => {
                let run_id = crate::history::new_run_id();
                table::add_run_id(client, &version, &run_id).await?;
                let config = Config::for_migration(conn.clone(), table, clauses, &cfg.runs, run_id)?;
                match runner::run_or_resume(config).await.map_err(at)? {
                    Outcome::CutOver | Outcome::Direct { .. } => {}
                    other => return Err(at(Error::internal(format!("the online change ended as {other:?}")))),
                }
            }
            Action::ConcurrentIndex { sql, table, index } => index_concurrently(cfg, sessions, conn, sql, table, index).await.map_err(at)?,
            Action::Direct { sql } => direct(cfg, sessions, conn, sql, "statement").await.map_err(at)?,
        }
        table::progress(client, &version, (i + 1) as i32, &done_checksum(&steps[..=i])).await?;
    }
    Ok(())
}

/// One statement run under the lock timeout: as written, or an index built concurrently.
enum Attempt<'a> {
    /// `sql` as written, its lock waits bounded by the lock timeout (its work is not: a
    /// backfill takes what it takes).
    Direct { sql: &'a str, what: &'a str },
    /// `CREATE INDEX CONCURRENTLY` of `index` on `table`; an invalid index a failed build
    /// leaves is dropped, so that a retry can build it again.
    Index { sql: &'a str, table: &'a str, index: &'a str },
}

async fn direct(cfg: &MigrateConfig, sessions: &mut Sessions, conn: &ConnInfo, sql: &str, what: &str) -> Result<()> {
    retrying(cfg, sessions, conn, &Attempt::Direct { sql, what }).await
}

async fn index_concurrently(cfg: &MigrateConfig, sessions: &mut Sessions, conn: &ConnInfo, sql: &str, table: &str, index: &str) -> Result<()> {
    // An earlier attempt that died may have left its invalid index behind: each attempt drops it.
    retrying(cfg, sessions, conn, &Attempt::Index { sql, table, index }).await
}

async fn attempt(cfg: &MigrateConfig, sessions: &Sessions, what: &Attempt<'_>, n: u32) -> Result<()> {
    let c = &sessions.client;
    c.batch_execute(&format!("SET lock_timeout = '{}ms'", cfg.runs.lock_timeout.as_millis().max(1))).await?;
    let r = match what {
        Attempt::Direct { sql, what } => {
            let r = waiting::run(sessions, sql, cfg.runs.lock_timeout, n, None, what).await;
            if r.is_err() {
                // A transaction block that failed halfway is left open and aborted.
                let _ = c.batch_execute("ROLLBACK").await;
            }
            r
        }
        Attempt::Index { sql, table, index } => {
            // After a lost session (waited for, see `retrying`), the build it was making may
            // have gone through.
            if n > 1 && concurrent_index::valid(c, table, index).await? == Some(true) {
                tracing::warn!(index, "the index an attempt whose session was lost was building is built and valid: kept");
                Ok(())
            } else {
                concurrent_index::drop_if_invalid(c, table, index).await?;
                let r = waiting::run(sessions, sql, cfg.runs.lock_timeout, n, None, "index build").await;
                match &r {
                    // Its session is gone, and may go on building: the next attempt looks.
                    Err(e) if e.kind().is_lost_connection() => {}
                    Err(_) => {
                        if let Err(e) = concurrent_index::drop_if_invalid(c, table, index).await {
                            tracing::error!(index, error = %e.chain(), "could not drop the invalid index the failed build left; drop it by hand");
                        }
                    }
                    Ok(()) => {}
                }
                r
            }
        }
    };
    let _ = c.batch_execute("RESET lock_timeout").await;
    r
}

/// Tries until the statement runs, it fails for a reason a retry cannot cure, or the tries
/// run out; the sessions in its way are named in the log on each wait.
async fn retrying(cfg: &MigrateConfig, sessions: &mut Sessions, conn: &ConnInfo, what: &Attempt<'_>) -> Result<()> {
    let backoff = Backoff { initial: Duration::from_millis(250), max: Duration::from_secs(5), attempts: u32::MAX };
    let mut n = 0;
    loop {
        n += 1;
        match attempt(cfg, sessions, what, n).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_retryable() && n < cfg.runs.lock_retries.max(1) => {
                if e.kind() == ErrorKind::Connection {
                    // The lost session's backend may go on (the network went, not the server),
                    // and is waited for: an index build, to be kept if it went through; a
                    // statement as written, which commits by itself (a transaction block in
                    // it too), may have done its work, and is not run again: the migration
                    // stops at it, for the DBA to look.
                    match what {
                        Attempt::Index { index, .. } => {
                            let what = format!("the build of index {index}");
                            sessions.replace_after_loss(conn, LostStatement::OnItsOwn { what: &what }).await?;
                        }
                        Attempt::Direct { .. } => {
                            sessions.replace_after_loss(conn, LostStatement::OnItsOwn { what: "the lost statement" }).await?;
                            return Err(e.context(
                                "the connection was lost while the statement ran, and the server may have carried it out (it commits by itself): \
                                 look at what it does before running the migration again, which starts with it",
                            ));
                        }
                    }
                }
                let delay = backoff.delay(n);
                tracing::warn!(attempt = n, retry_in_ms = delay.as_millis() as u64, error = %e, "statement failed; retrying");
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn conn_user(client: &tokio_postgres::Client) -> String {
    match client.query_one("SELECT current_user::text", &[]).await {
        Ok(r) => r.get(0),
        Err(_) => "?".into(),
    }
}

/// What would run, file by file and statement by statement, and how.
async fn plan(conn: &ConnInfo, pending: &[&MigrationFile], rows: &HashMap<String, Row>, format: crate::plan::Format) -> Result<String> {
    let mut planned = Vec::new();
    for f in pending {
        let body = classify(f)?;
        let start = resume_at(f, &body, rows.get(&f.version.to_string()))?;
        let mut file = show::PlannedFile::new(f, &body, start);
        if let Body::Steps(steps) = &body {
            for (s, p) in steps.iter().zip(file.statements.iter_mut()).skip(start) {
                show::plan_online(conn, &s.action, p).await;
            }
        }
        planned.push(file);
    }
    show::render_plan(&planned, format)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(version: &str, phase: Option<Phase>) -> MigrationFile {
        MigrationFile {
            version: Version::parse(version).unwrap(),
            description: "x".into(),
            path: PathBuf::from(format!("V{version}__x.sql")),
            phase,
            text: String::new(),
            checksum: "c".into(),
        }
    }

    fn applied(version: &str) -> (String, Row) {
        let row = Row {
            version: version.into(),
            description: "x".into(),
            phase: None,
            checksum: "c".into(),
            status: "applied".into(),
            statements_done: 1,
            statements_total: 1,
            done_checksum: None,
            applied_at: None,
            duration: "0".into(),
            applied_by: "me".into(),
            run_ids: vec![],
            error: None,
        };
        (version.into(), row)
    }

    #[test]
    fn pending_stops_at_a_later_phase_and_the_target() {
        let files = [file("1", Some(Phase::Expand)), file("2", None), file("3", Some(Phase::Migrate)), file("4", Some(Phase::Contract)), file("5", Some(Phase::Expand))];
        let rows: HashMap<String, Row> = [applied("1")].into_iter().collect();
        let names = |v: Vec<&MigrationFile>| v.iter().map(|f| f.version.to_string()).collect::<Vec<_>>();
        assert_eq!(names(pending(&files, &rows, None, None)), ["2", "3", "4", "5"]);
        assert_eq!(names(pending(&files, &rows, None, Some(Phase::Expand))), ["2"]);
        assert_eq!(names(pending(&files, &rows, None, Some(Phase::Migrate))), ["2", "3"]);
        assert_eq!(names(pending(&files, &rows, Version::parse("3").as_ref(), None)), ["2", "3"]);
    }

    #[test]
    fn a_file_older_than_the_newest_applied_is_refused_unless_asked() {
        let files = [file("1", None), file("2", None), file("3", None)];
        let rows: HashMap<String, Row> = [applied("1"), applied("3")].into_iter().collect();
        let e = check_order(&files, &rows, false).unwrap_err();
        assert!(e.to_string().contains("V2__x.sql is pending but V3 is applied already"), "{e}");
        assert!(check_order(&files, &rows, true).is_ok());
        let rows: HashMap<String, Row> = [applied("1"), applied("2")].into_iter().collect();
        assert!(check_order(&files, &rows, false).is_ok());
    }

    #[test]
    fn a_changed_applied_file_is_refused_with_both_checksums() {
        let mut f = file("1", None);
        f.checksum = "new".into();
        let rows: HashMap<String, Row> = [applied("1")].into_iter().collect();
        let e = verify_checksums(&[f], &rows).unwrap_err();
        assert!(e.to_string().contains("checksum c but the file now has checksum new"), "{e}");
    }
}
