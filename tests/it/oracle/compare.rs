//! Row-for-row comparison of two queries as multisets: both directions of `EXCEPT ALL`.
//!
//! `EXCEPT ALL` keeps duplicates, so a row copied twice or lost once is a difference; one
//! direction alone would miss rows the other side has in excess. Counts are compared too,
//! but only as a summary: the differences are what fail.

use std::fmt;

use tokio_postgres::Client;

use super::{render_row_sql, Projection};

/// How many differing rows of each side a failure message shows.
const SAMPLES: i64 = 5;

/// What two queries disagree on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RowDiff {
    pub table_rows: i64,
    pub control_rows: i64,
    /// Rows the table has and the control does not (counted with multiplicity).
    pub only_in_table: i64,
    /// Rows the control has and the table does not (counted with multiplicity).
    pub only_in_control: i64,
    /// A few of each, rendered `col=value, ...`, long values abbreviated.
    pub sample_only_in_table: Vec<String>,
    pub sample_only_in_control: Vec<String>,
}

impl RowDiff {
    pub fn is_empty(&self) -> bool {
        self.only_in_table == 0 && self.only_in_control == 0
    }
}

impl fmt::Display for RowDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "table has {} rows, control {}; {} rows only in the table, {} only in the control",
            self.table_rows, self.control_rows, self.only_in_table, self.only_in_control
        )?;
        for row in &self.sample_only_in_table {
            writeln!(f, "  only in table:   {row}")?;
        }
        for row in &self.sample_only_in_control {
            writeln!(f, "  only in control: {row}")?;
        }
        Ok(())
    }
}

/// Compares the rows of two complete queries (same number of columns, comparable types,
/// `EXCEPT` needs an equality operator for each: `json` will not do, `jsonb` will).
pub async fn compare_rows(client: &Client, table_query: &str, control_query: &str) -> RowDiff {
    let ctes = format!("WITH a AS MATERIALIZED ({table_query}), b AS MATERIALIZED ({control_query})");
    let counts = format!(
        "{ctes} SELECT (SELECT count(*) FROM a), (SELECT count(*) FROM b), \
                (SELECT count(*) FROM (TABLE a EXCEPT ALL TABLE b) x), \
                (SELECT count(*) FROM (TABLE b EXCEPT ALL TABLE a) x)"
    );
    let row = client.query_one(&counts, &[]).await.unwrap_or_else(|e| panic!("comparison query failed: {}\n{counts}", db_message(&e)));
    let mut diff = RowDiff {
        table_rows: row.get(0),
        control_rows: row.get(1),
        only_in_table: row.get(2),
        only_in_control: row.get(3),
        ..RowDiff::default()
    };
    if diff.only_in_table > 0 {
        diff.sample_only_in_table = samples(client, &ctes, "a", "b").await;
    }
    if diff.only_in_control > 0 {
        diff.sample_only_in_control = samples(client, &ctes, "b", "a").await;
    }
    diff
}

async fn samples(client: &Client, ctes: &str, from: &str, minus: &str) -> Vec<String> {
    let sql = format!("{ctes} SELECT {} FROM (TABLE {from} EXCEPT ALL TABLE {minus}) x ORDER BY 1 LIMIT {SAMPLES}", render_row_sql("x"));
    client
        .query(&sql, &[])
        .await
        .unwrap_or_else(|e| panic!("sampling differing rows failed: {}\n{sql}", db_message(&e)))
        .iter()
        .map(|r| r.get::<_, Option<String>>(0).unwrap_or_default())
        .collect()
}

/// The migrated `table` (a quoted, possibly qualified name) holds exactly the rows of
/// `control` transformed by `projection`, as a multiset. Panics with counts and samples.
/// The table is read with its partitions, where a partitioned table keeps its rows (pg-ghost
/// refuses inheritance children, so nothing else is read).
pub async fn assert_same_rows(client: &Client, table: &str, control: &str, projection: &Projection) {
    let diff = compare_rows(
        client,
        &format!("SELECT {} FROM {table}", projection.table_select_list()),
        &format!("SELECT {} FROM ONLY {control}", projection.control_select_list()),
    )
    .await;
    assert!(diff.is_empty(), "{table} does not hold the rows of {control} (transformed by the ALTER):\n{diff}");
}

/// A PostgreSQL error with its SQLSTATE, message and detail, or the client error.
pub(crate) fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({}){}", db.message(), db.code().code(), db.detail().map(|d| format!(" DETAIL: {d}")).unwrap_or_default()),
        None => e.to_string(),
    }
}

/// Every identity or serial column of `table` (a quoted, possibly qualified name) has a
/// sequence whose next value lies above the column's maximum: inserts through the default
/// will not collide. (After a cut-over that forgot to carry the sequence over, they would.)
pub async fn assert_sequences_ahead(client: &Client, table: &str) {
    let sql = format!(
        "SELECT a.attname::text, pg_get_serial_sequence({lit}, a.attname)
           FROM pg_attribute a
          WHERE a.attrelid = {lit}::regclass AND a.attnum > 0 AND NOT a.attisdropped
            AND pg_get_serial_sequence({lit}, a.attname) IS NOT NULL",
        lit = super::literal(table)
    );
    let columns = client.query(&sql, &[]).await.unwrap_or_else(|e| panic!("sequences of {table}: {}", db_message(&e)));
    for row in columns {
        let (column, sequence): (String, String) = (row.get(0), row.get(1));
        let check = format!(
            "SELECT s.last_value + CASE WHEN s.is_called THEN p.seqincrement ELSE 0 END, p.seqincrement,
                    (SELECT max({col})::bigint FROM {table})
               FROM {sequence} s, pg_sequence p WHERE p.seqrelid = {seq_lit}::regclass",
            col = super::ident(&column),
            seq_lit = super::literal(&sequence)
        );
        let r = client.query_one(&check, &[]).await.unwrap_or_else(|e| panic!("reading {sequence}: {}", db_message(&e)));
        let (next, increment, max): (i64, i64, Option<i64>) = (r.get(0), r.get(1), r.get(2));
        if let Some(max) = max {
            assert!(increment > 0, "{sequence} counts down ({increment}); not checked");
            assert!(next > max, "{table}.{column}: the next value of {sequence} is {next}, but the column already holds {max}");
        }
    }
}
