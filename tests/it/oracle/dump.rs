//! The dump contract: after the cut-over, `pg_dump --schema-only --table` of the table and
//! its data are exactly what a plain `ALTER TABLE` would have left.
//!
//! How the expectation is built: [`OriginalDump::take`] runs `pg_dump -Fc --table` on the
//! original *before* the run (schema and data). [`expected_after_plain_alter`] restores it
//! into a second database on the same cluster (same roles, so owner and grants restore),
//! with either the dumped rows or, when a workload changed the table meanwhile, the rows a
//! query returns at the end (the control table's), and runs the plain `ALTER TABLE` there.
//!
//! The comparison ([`compare_dump`]) is strict: both schema dumps are compared line for
//! line after normalizing only what must differ between two dumps of identical objects:
//! the database name, and the random key of the `\restrict`/`\unrestrict` lines that
//! pg_dump 15.14+ writes. Index, constraint and sequence names, defaults, storage,
//! reloptions, comments, owner and grants all count. Sequence positions are data
//! (`setval` is not in a schema-only dump) and do not. Data: the multiset of each row's
//! text form, compared through its md5, both ways.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::process::Command;
use tokio_postgres::Client;

use super::compare::db_message;
use super::{ident, literal, pg_bin, qualified, render_row_sql};
use crate::harness::{TestDb, PASSWORD, ROLE};

/// A `pg_dump -Fc --table` of one table (with its data), taken before the run.
pub struct OriginalDump {
    pub schema: String,
    pub table: String,
    /// The database it was taken from (the one [`ExpectedData::Query`] runs in).
    pub source_db: String,
    file: PathBuf,
}

impl Drop for OriginalDump {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

/// The rows the plain-ALTER table starts with, before its ALTER runs.
pub enum ExpectedData {
    /// The rows in the dump: for runs without concurrent writes.
    AsDumped,
    /// The rows this query returns in the source database at the time of
    /// [`expected_after_plain_alter`], in the original's shape: one output column per
    /// column of the original that is not generated, in the original's order. With a
    /// workload: [`super::OracleTable::control_rows_query`], after stopping it.
    Query(String),
}

/// The second database, holding the table a plain ALTER produced. Dropped with it.
pub struct PlainAlter<'c> {
    pub db: TestDb<'c>,
    pub schema: String,
    pub table: String,
    pub alter: String,
}

/// A `pg_dump --table` pattern matching exactly this table: inside double quotes every
/// character is literal to pg_dump's pattern matcher (`*`, `?`, `.` included).
fn dump_pattern(schema: &str, table: &str) -> String {
    qualified(schema, table)
}

fn pg_command(program: &str, port: u16) -> Command {
    let mut cmd = Command::new(pg_bin(program));
    cmd.arg("-h").arg("127.0.0.1").arg("-p").arg(port.to_string()).arg("-U").arg(ROLE);
    cmd.env("PGPASSWORD", PASSWORD).env_remove("PGDATABASE").env_remove("PGSERVICE");
    cmd.kill_on_drop(true);
    cmd
}

async fn run(mut cmd: Command, what: &str) -> String {
    let out = cmd.output().await.unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    if !out.status.success() {
        panic!("{what} failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8(out.stdout).unwrap_or_else(|e| panic!("{what}: output is not UTF-8: {e}"))
}

fn psql(port: u16, db: &str) -> Command {
    let mut cmd = pg_command("psql", port);
    cmd.args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", db]);
    cmd
}

impl OriginalDump {
    /// Dumps `schema.table` of `db` (schema and data) to a temporary file.
    pub async fn take(db: &TestDb<'_>, schema: &str, table: &str) -> OriginalDump {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let file = std::env::temp_dir().join(format!("pg-ghost-oracle-{}-{}.dump", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst)));
        let mut cmd = pg_command("pg_dump", db.cluster.port);
        cmd.args(["-Fc", "--strict-names", "-d", &db.name, "-f"]).arg(&file).arg("--table").arg(dump_pattern(schema, table));
        run(cmd, &format!("pg_dump of {}", qualified(schema, table))).await;
        OriginalDump { schema: schema.into(), table: table.into(), source_db: db.name.clone(), file }
    }
}

/// What a plain `ALTER TABLE <table> <alter>` leaves: the original restored into a second
/// database, with `data`, then altered there. `alter` is the text given to pg-ghost's
/// `--alter`. Panics with PostgreSQL's message if the plain ALTER fails.
pub async fn expected_after_plain_alter<'c>(
    source: &TestDb<'c>,
    original: &OriginalDump,
    alter: &str,
    data: ExpectedData,
) -> PlainAlter<'c> {
    assert_eq!(source.name, original.source_db, "the dump was taken from another database");
    let port = source.cluster.port;
    let db = source.cluster.fresh_db("expected");
    let q = qualified(&original.schema, &original.table);
    if original.schema != "public" {
        let mut cmd = psql(port, &db.name);
        cmd.arg("-c").arg(format!("CREATE SCHEMA IF NOT EXISTS {}", ident(&original.schema)));
        run(cmd, "create schema").await;
    }
    let restore = |section: Option<&str>| {
        let mut cmd = pg_command("pg_restore", port);
        cmd.args(["--exit-on-error", "--single-transaction", "-d", &db.name]);
        if let Some(s) = section {
            cmd.arg(format!("--section={s}"));
        }
        cmd.arg(&original.file);
        cmd
    };
    match data {
        ExpectedData::AsDumped => {
            run(restore(None), &format!("pg_restore of {q}")).await;
        }
        ExpectedData::Query(sql) => {
            run(restore(Some("pre-data")), &format!("pg_restore --section=pre-data of {q}")).await;
            copy_rows(port, &original.source_db, &sql, &db.name, &q).await;
            run(restore(Some("post-data")), &format!("pg_restore --section=post-data of {q}")).await;
        }
    }
    let client = db.client().await;
    client
        .batch_execute(&format!("ALTER TABLE {q} {alter}"))
        .await
        .unwrap_or_else(|e| panic!("the plain ALTER TABLE {q} {alter} failed: {}", db_message(&e)));
    PlainAlter { db, schema: original.schema.clone(), table: original.table.clone(), alter: alter.into() }
}

/// `COPY (query) TO STDOUT` in one database piped into `COPY table (...) FROM STDIN` in
/// another, without holding the rows in memory.
async fn copy_rows(port: u16, from_db: &str, query: &str, to_db: &str, table: &str) {
    let mut list = psql(port, to_db);
    list.arg("-c").arg(format!(
        "SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute
          WHERE attrelid = {}::regclass AND attnum > 0 AND NOT attisdropped AND attgenerated = ''",
        literal(table)
    ));
    let columns = run(list, "list the restored table's columns").await.trim().to_string();

    let mut out = psql(port, from_db);
    out.arg("-c").arg(format!("COPY ({query}) TO STDOUT")).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut producer = out.spawn().expect("start psql COPY TO");
    let pipe: Stdio = producer.stdout.take().unwrap().try_into().expect("pipe psql COPY TO into COPY FROM");
    let mut into = psql(port, to_db);
    into.arg("-c").arg(format!("COPY {table} ({columns}) FROM STDIN")).stdin(pipe);
    let consumer = into.output();
    let (produced, consumed) = tokio::join!(producer.wait_with_output(), consumer);
    let produced = produced.expect("psql COPY TO");
    let consumed = consumed.expect("psql COPY FROM");
    if !produced.status.success() || !consumed.status.success() {
        panic!(
            "copying the expected rows failed:\nCOPY ({query}) TO STDOUT: {}\nCOPY {table} ({columns}) FROM STDIN: {}",
            String::from_utf8_lossy(&produced.stderr),
            String::from_utf8_lossy(&consumed.stderr)
        );
    }
}

/// `pg_dump --schema-only --table` of one table, normalized (see the module docs).
pub async fn schema_dump(db: &TestDb<'_>, schema: &str, table: &str) -> String {
    let mut cmd = pg_command("pg_dump", db.cluster.port);
    cmd.args(["--schema-only", "--strict-names", "-d", &db.name, "--table"]).arg(dump_pattern(schema, table));
    let dump = run(cmd, &format!("pg_dump --schema-only of {} in {}", qualified(schema, table), db.name)).await;
    normalize(&dump, &db.name)
}

pub(crate) fn normalize(dump: &str, db_name: &str) -> String {
    dump.lines()
        .map(|line| {
            if line.starts_with("\\restrict ") {
                "\\restrict <key>".to_string()
            } else if line.starts_with("\\unrestrict ") {
                "\\unrestrict <key>".to_string()
            } else {
                line.replace(db_name, "<database>")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Where the migrated table and the plain-ALTER table differ.
#[derive(Debug, Default)]
pub struct DumpDiff {
    /// Schema dump lines, `-` expected (plain ALTER), `+` actual (migrated), with context.
    pub schema: Vec<String>,
    pub actual_rows: usize,
    pub expected_rows: usize,
    /// Rows (rendered, abbreviated) only in the migrated table, and how many.
    pub only_in_actual: usize,
    pub sample_only_in_actual: Vec<String>,
    pub only_in_expected: usize,
    pub sample_only_in_expected: Vec<String>,
}

impl DumpDiff {
    pub fn is_empty(&self) -> bool {
        self.schema.is_empty() && self.only_in_actual == 0 && self.only_in_expected == 0
    }
}

impl std::fmt::Display for DumpDiff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.schema.is_empty() {
            writeln!(f, "schema dumps differ (- plain ALTER, + migrated):")?;
            for l in &self.schema {
                writeln!(f, "  {l}")?;
            }
        }
        writeln!(
            f,
            "data: migrated {} rows, plain ALTER {}; {} only in migrated, {} only in plain ALTER",
            self.actual_rows, self.expected_rows, self.only_in_actual, self.only_in_expected
        )?;
        for r in &self.sample_only_in_actual {
            writeln!(f, "  only in migrated:    {r}")?;
        }
        for r in &self.sample_only_in_expected {
            writeln!(f, "  only in plain ALTER: {r}")?;
        }
        Ok(())
    }
}

/// Compares `schema.table` in `actual` (after pg-ghost) with the plain-ALTER table.
pub async fn compare_dump(actual: &TestDb<'_>, schema: &str, table: &str, expected: &PlainAlter<'_>) -> DumpDiff {
    let want = schema_dump(&expected.db, &expected.schema, &expected.table).await;
    let got = schema_dump(actual, schema, table).await;
    let mut diff = DumpDiff { schema: line_diff(&want, &got), ..DumpDiff::default() };

    let q_actual = qualified(schema, table);
    let q_expected = qualified(&expected.schema, &expected.table);
    let (a, e) = (actual.client().await, expected.db.client().await);
    let actual_hashes = row_hashes(&a, &q_actual).await;
    let expected_hashes = row_hashes(&e, &q_expected).await;
    diff.actual_rows = actual_hashes.len();
    diff.expected_rows = expected_hashes.len();
    let (only_a, only_e) = multiset_difference(&actual_hashes, &expected_hashes);
    diff.only_in_actual = only_a.len();
    diff.only_in_expected = only_e.len();
    diff.sample_only_in_actual = render_rows(&a, &q_actual, &only_a).await;
    diff.sample_only_in_expected = render_rows(&e, &q_expected, &only_e).await;
    diff
}

/// Panics unless the migrated table's schema dump and data equal the plain ALTER's.
pub async fn assert_dump_equal(actual: &TestDb<'_>, schema: &str, table: &str, expected: &PlainAlter<'_>) {
    let diff = compare_dump(actual, schema, table, expected).await;
    assert!(diff.is_empty(), "{} is not what a plain `ALTER TABLE ... {}` leaves:\n{diff}", qualified(schema, table), expected.alter);
}

async fn row_hashes(client: &Client, table: &str) -> Vec<String> {
    let sql = format!("SELECT md5(x::text) FROM ONLY {table} x");
    let mut hashes: Vec<String> = client
        .query(&sql, &[])
        .await
        .unwrap_or_else(|e| panic!("reading rows of {table}: {}", db_message(&e)))
        .iter()
        .map(|r| r.get(0))
        .collect();
    hashes.sort_unstable();
    hashes
}

/// Both differences of two sorted multisets.
fn multiset_difference(a: &[String], b: &[String]) -> (Vec<String>, Vec<String>) {
    let (mut i, mut j) = (0, 0);
    let (mut only_a, mut only_b) = (Vec::new(), Vec::new());
    while i < a.len() || j < b.len() {
        match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x == y => {
                i += 1;
                j += 1;
            }
            (Some(x), Some(y)) if x < y => {
                only_a.push(x.clone());
                i += 1;
            }
            (Some(_), Some(y)) => {
                only_b.push(y.clone());
                j += 1;
            }
            (Some(x), None) => {
                only_a.push(x.clone());
                i += 1;
            }
            (None, Some(y)) => {
                only_b.push(y.clone());
                j += 1;
            }
            (None, None) => unreachable!(),
        }
    }
    (only_a, only_b)
}

async fn render_rows(client: &Client, table: &str, hashes: &[String]) -> Vec<String> {
    if hashes.is_empty() {
        return Vec::new();
    }
    let some: Vec<String> = hashes.iter().take(5).cloned().collect();
    let sql = format!("SELECT {} FROM ONLY {table} x WHERE md5(x::text) = ANY($1) ORDER BY 1", render_row_sql("x"));
    client
        .query(&sql, &[&some])
        .await
        .unwrap_or_else(|e| panic!("rendering rows of {table}: {}", db_message(&e)))
        .iter()
        .map(|r| r.get::<_, Option<String>>(0).unwrap_or_default())
        .collect()
}

/// A line diff (longest common subsequence) with two lines of context around changes.
fn line_diff(expected: &str, actual: &str) -> Vec<String> {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = actual.lines().collect();
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let mut script: Vec<(char, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            script.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            script.push(('-', a[i]));
            i += 1;
        } else {
            script.push(('+', b[j]));
            j += 1;
        }
    }
    const CONTEXT: usize = 2;
    let changed: Vec<usize> = script.iter().enumerate().filter(|(_, (c, _))| *c != ' ').map(|(k, _)| k).collect();
    let mut out = Vec::new();
    let mut last_shown: Option<usize> = None;
    for (k, (c, line)) in script.iter().enumerate() {
        let near = changed.iter().any(|&x| x.abs_diff(k) <= CONTEXT);
        if !near {
            continue;
        }
        if let Some(l) = last_shown {
            if k > l + 1 {
                out.push("...".to_string());
            }
        }
        out.push(format!("{c} {line}"));
        last_shown = Some(k);
    }
    out
}

/// A `pg_dump -Fc --schema-only` of a whole database, taken before the run: the twin a
/// plain ALTER runs on is restored from it ([`WholeSchema::twin_after_plain_alter`]).
pub struct WholeSchema {
    pub source_db: String,
    file: PathBuf,
}

impl Drop for WholeSchema {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

impl WholeSchema {
    pub async fn take(db: &TestDb<'_>) -> WholeSchema {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let file = std::env::temp_dir().join(format!("pg-ghost-whole-{}-{}.dump", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst)));
        let mut cmd = pg_command("pg_dump", db.cluster.port);
        cmd.args(["-Fc", "--schema-only", "--exclude-schema=pgghost", "-d", &db.name, "-f"]).arg(&file);
        run(cmd, &format!("pg_dump --schema-only of {}", db.name)).await;
        WholeSchema { source_db: db.name.clone(), file }
    }

    /// A database restored from the dump (schema only: data does not change what a plain
    /// ALTER does to the schema), where `ALTER TABLE <table> <alter>` then ran.
    pub async fn twin_after_plain_alter<'c>(&self, source: &TestDb<'c>, table: &str, alter: &str) -> TestDb<'c> {
        self.twin_after_plain_sql(source, &format!("ALTER TABLE {table} {alter}")).await
    }

    /// A database restored from the dump where `sql` (statements, a whole file) then ran as
    /// psql would run it.
    pub async fn twin_after_plain_sql<'c>(&self, source: &TestDb<'c>, sql: &str) -> TestDb<'c> {
        let db = source.cluster.fresh_db("twin");
        let mut cmd = pg_command("pg_restore", source.cluster.port);
        cmd.args(["--exit-on-error", "--single-transaction", "-d", &db.name]).arg(&self.file);
        run(cmd, &format!("pg_restore of {} into {}", self.source_db, db.name)).await;
        let client = db.client().await;
        client.batch_execute(sql).await.unwrap_or_else(|e| panic!("the plain {sql} failed on the twin: {}", db_message(&e)));
        db
    }
}

/// `pg_dump --schema-only` of a whole database, normalized (see the module docs).
pub async fn whole_schema_dump(db: &TestDb<'_>) -> String {
    let mut cmd = pg_command("pg_dump", db.cluster.port);
    // Schema `pgghost` holds the history of runs, which every run adds by design (gone with
    // --no-history): the one thing a plain ALTER does not leave.
    cmd.args(["--schema-only", "--exclude-schema=pgghost", "-d", &db.name]);
    let dump = run(cmd, &format!("pg_dump --schema-only of {}", db.name)).await;
    normalize(&dump, &db.name)
}

/// Panics unless the two databases' whole schema dumps are identical.
pub async fn assert_whole_schema_equal(actual: &TestDb<'_>, twin: &TestDb<'_>, what: &str) {
    let want = whole_schema_dump(twin).await;
    let got = whole_schema_dump(actual).await;
    let diff = line_diff(&want, &got);
    assert!(diff.is_empty(), "the whole database is not what a plain `ALTER TABLE` leaves ({what}); - plain ALTER, + pg-ghost:\n{}", diff.join("\n"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_diff_shows_changes_with_context() {
        let want = "a\nb\nc\nd\ne\nf\ng\nh\nj";
        let got = "a\nb\nc\nD\ne\nf\ng\nh\nj\ni";
        assert_eq!(line_diff(want, want), Vec::<String>::new());
        assert_eq!(line_diff(want, got), vec!["  b", "  c", "- d", "+ D", "  e", "  f", "...", "  h", "  j", "+ i"]);
    }

    #[test]
    fn multisets_keep_duplicates() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let (a, b) = multiset_difference(&s(&["a", "a", "b", "d"]), &s(&["a", "b", "c"]));
        assert_eq!((a, b), (s(&["a", "d"]), s(&["c"])));
    }

    #[test]
    fn normalize_only_touches_the_restrict_key_and_database_name() {
        let dump = "\\restrict abc123\nCREATE TABLE public.t (id int);\n-- db_7 here\n\\unrestrict abc123";
        assert_eq!(normalize(dump, "db_7"), "\\restrict <key>\nCREATE TABLE public.t (id int);\n-- <database> here\n\\unrestrict <key>");
    }
}
