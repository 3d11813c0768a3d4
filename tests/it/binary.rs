//! Running the `pg-ghost` binary as a DBA would, asynchronously so that a workload keeps
//! writing meanwhile.

use crate::harness::TestDb;
use crate::oracle::{ident, qualified};
use std::process::Output;
use tokio::process::Command;

pub fn command(db: &TestDb<'_>, subcommand: &str, args: &[&str]) -> Command {
    command_with_conn(&db.conninfo(), subcommand, args)
}

/// As [`command`], with a connection string of the test's own.
///
/// `run` defaults to `--strategy auto`, which makes a change that rewrites nothing without
/// the ghost; the tests of the ghost's machinery (most of them, written with such changes)
/// ask for the ghost unless they name a strategy themselves (`tests/it/direct.rs` does).
pub fn command_with_conn(conn: &str, subcommand: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pg-ghost"));
    cmd.arg(subcommand).arg("--conn").arg(conn).args(args);
    if subcommand == "run" && !args.contains(&"--strategy") {
        cmd.args(["--strategy", "ghost"]);
    }
    cmd.env_remove("PGHOST").env_remove("PGPORT").env_remove("PGUSER").env_remove("PGPASSWORD").env_remove("PGDATABASE");
    cmd.kill_on_drop(true);
    cmd
}

/// Runs `pg-ghost run --conn <db> <args>` to the end.
pub async fn run(db: &TestDb<'_>, args: &[&str]) -> Output {
    command(db, "run", args).output().await.expect("start pg-ghost")
}

/// Runs `pg-ghost cleanup --conn <db> <args>` to the end.
pub async fn cleanup(db: &TestDb<'_>, args: &[&str]) -> Output {
    command(db, "cleanup", args).output().await.expect("start pg-ghost cleanup")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Panics with pg-ghost's log unless it exited with 0, and if its checksum had to repair a
/// range: the checksum repairs what the copy or the apply got wrong, so a run that needed it
/// would pass a comparison with the control table while hiding the defect.
pub fn assert_success(out: &Output) {
    assert!(out.status.success(), "pg-ghost failed ({}):\n{}", out.status, stderr(out));
    assert_checksum_repaired_nothing(out);
}

/// Panics with pg-ghost's log unless it exited with 0; for a workload whose checksum may
/// rightly repair: a row changed every few milliseconds can stay ahead of every re-check, and
/// its repair is of lag, not of a loss.
pub fn assert_exit_ok(out: &Output) {
    assert!(out.status.success(), "pg-ghost failed ({}):\n{}", out.status, stderr(out));
}

/// Panics if the run's checksum repaired a range. Where the apply is correct, only lag
/// separates the ghost from the original, and a checksum that repairs took lag for a
/// difference (or the apply lost a change).
pub fn assert_checksum_repaired_nothing(out: &Output) {
    let log = stderr(out);
    assert!(!log.contains("repairing it"), "the checksum repaired a range:\n{log}");
}

/// Panics unless pg-ghost exited with `code` and its one-line reason contains `needle`.
pub fn assert_failure(out: &Output, code: i32, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "expected exit code {code}:\n{err}");
    let reason = err.lines().rev().find(|l| l.starts_with("pg-ghost: ")).unwrap_or_else(|| panic!("no one-line reason on stderr:\n{err}"));
    assert!(reason.contains(needle), "the reason does not mention {needle:?}: {reason}\n{err}");
}

/// A value of the run's changelog table `"public"."_<table>_ghc"` (`state`, `copy_range`),
/// or None while the table (created once pg-ghost has prepared) or the row does not exist.
pub async fn changelog_value(client: &tokio_postgres::Client, table: &str, key: &str) -> Option<String> {
    let sql = format!("SELECT value FROM {} WHERE key = $1", qualified("public", &format!("_{table}_ghc")));
    client.query_opt(&sql, &[&key]).await.ok().flatten().map(|r| r.get(0))
}

/// A narrow table of `rows` rows (`id bigint` key 1..=rows) and a copy of it,
/// `<name>_before`, to compare the original with afterwards.
pub fn narrow_table(db: &TestDb<'_>, name: &str, rows: i64) {
    db.psql(&format!(
        "CREATE TABLE {t} (id bigint PRIMARY KEY, n int NOT NULL, pad text);
         CREATE INDEX ON {t} (n);
         INSERT INTO {t} SELECT g, g % 1000, md5(g::text) FROM generate_series(1, {rows}) g;
         CREATE TABLE {b} AS TABLE {t};
         ANALYZE {t};",
        t = ident(name),
        b = ident(&format!("{name}_before"))
    ));
}
