//! The oracle: the test kit that judges pg-ghost's result.
//!
//! pg-ghost's contract (issue 3): after the cut-over the table is indistinguishable from what
//! a plain `ALTER TABLE` would have produced, schema and data, and no concurrent write was
//! lost. This kit gives the scenario tests what they need to check that, independently of
//! the engine's own code (nothing here uses the `pg_ghost` crate):
//!
//! - [`workload`]: an [`OracleTable`] (every column type the contract names, TOASTed values,
//!   NULLs, indexes, a comment, a grant, a storage setting, a reloption) with a *control*
//!   table, and a concurrent [`Workload`] whose every transaction writes the same change to
//!   both. The control is never migrated, so after the run it says what the table must hold.
//! - [`compare`]: row-for-row comparison of two queries (both directions of `EXCEPT ALL`),
//!   with a [`Projection`] that applies the ALTER's transformation to the control side.
//! - [`dump`]: the dump contract. The original is dumped before the run, restored into a
//!   second database where the plain ALTER is run, and `pg_dump --schema-only --table` of
//!   both sides must be identical, byte for byte after removing only what must differ.
//! - [`catalog`]: a snapshot of a database's catalogs, to prove that a dry run or a refusal
//!   changed nothing.
//!
//! Every identifier that reaches SQL here goes through [`ident`] / [`qualified`]; every
//! value through [`literal`].
//!
//! A scenario test, end to end (`run_pg_ghost` stands for however the test runs the binary;
//! run it asynchronously, e.g. `tokio::process`, so the workload keeps going meanwhile):
//!
//! ```ignore
//! #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
//! async fn int_to_bigint_under_load() {
//!     let db = Cluster::primary().fresh_db("scenario_bigint");
//!     let table = OracleTable::create(&db, "orders", KeyKind::Identity, 20_000).await;
//!     let alter = "ALTER COLUMN n TYPE bigint";
//!     let original = OriginalDump::take(&db, "public", "orders").await;
//!     let workload = Workload::start(&db, &table, WorkloadOptions::new(4).rate(Some(100))).await;
//!     workload.wait_for_more_commits(50, Duration::from_secs(30)).await;
//!
//!     let out = run_pg_ghost(&db, &["--table", "orders", "--alter", alter, "--execute"]).await;
//!     assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
//!
//!     workload.wait_for_more_commits(50, Duration::from_secs(30)).await; // writes go on after the swap
//!     let report = workload.stop().await;
//!     assert!(report.errors.is_empty(), "workload errors (seed {}): {:#?}", report.seed, report.errors);
//!     assert!(report.committed_after_swap_by_op.get("insert").copied().unwrap_or(0) > 0, "{report:?}");
//!     let client = db.client().await;
//!     table.assert_matches_control(&client, &table.projection().map("n", "n::bigint")).await;
//!     assert_sequences_ahead(&client, &table.qualified()).await;
//!     let expected = expected_after_plain_alter(&db, &original, alter, ExpectedData::Query(table.control_rows_query())).await;
//!     assert_dump_equal(&db, "public", "orders", &expected).await;
//!     assert_no_slots_or_publications(&client).await;
//! }
//! ```
//!
//! A dry run or a refusal: `let before = CatalogSnapshot::take(&client).await;`, run, then
//! `assert_catalog_unchanged(&before, &CatalogSnapshot::take(&client).await)`.

#![allow(dead_code)]

pub mod catalog;
pub mod compare;
pub mod dump;
pub mod table;
pub mod values;
pub mod workload;
mod writer;

#[allow(unused_imports)]
pub use catalog::{assert_catalog_unchanged, assert_no_slots_or_publications, CatalogSnapshot};
#[allow(unused_imports)]
pub use compare::{assert_same_rows, assert_sequences_ahead, compare_rows, RowDiff};
#[allow(unused_imports)]
pub use dump::{
    assert_dump_equal, assert_whole_schema_equal, compare_dump, expected_after_plain_alter, DumpDiff, ExpectedData, OriginalDump,
    PlainAlter, WholeSchema,
};
#[allow(unused_imports)]
pub use table::{KeyKind, OracleTable};
#[allow(unused_imports)]
pub use workload::{TargetRange, Workload, WorkloadOptions, WorkloadReport};

use std::path::PathBuf;

/// `"name"` with embedded double quotes doubled: PostgreSQL's `quote_ident`, always quoting.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `"schema"."name"`.
pub fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", ident(schema), ident(name))
}

/// `'value'` with embedded single quotes doubled (`standard_conforming_strings` is on, so a
/// backslash is an ordinary character).
pub fn literal(value: &str) -> String {
    assert!(!value.contains('\0'), "a SQL literal cannot hold NUL");
    format!("'{}'", value.replace('\'', "''"))
}

/// The select-list that turns the control table (the original's shape) into the migrated
/// table's shape: one `(output column, expression over the control)` pair per column of the
/// migrated table, in any order (both sides of a comparison select the same names).
///
/// Start from [`OracleTable::projection`] (identity over the original's columns) and apply
/// what the ALTER does:
///
/// ```ignore
/// table.projection().map("label", "length(label)")          // ALTER COLUMN label TYPE int USING length(label)
/// table.projection().map("n", "n::bigint")                  // ALTER COLUMN n TYPE bigint
/// table.projection().drop("spare")                          // DROP COLUMN spare
/// table.projection().rename("spare", "extra")               // RENAME COLUMN spare TO extra
/// table.projection().add("flag", "true")                    // ADD COLUMN flag boolean NOT NULL DEFAULT true
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Projection {
    columns: Vec<(String, String)>,
}

impl Projection {
    /// Identity over the given columns.
    pub fn identity<S: AsRef<str>>(columns: &[S]) -> Projection {
        Projection { columns: columns.iter().map(|c| (c.as_ref().to_string(), ident(c.as_ref()))).collect() }
    }

    fn position(&self, column: &str) -> usize {
        self.columns
            .iter()
            .position(|(name, _)| name == column)
            .unwrap_or_else(|| panic!("projection has no column {column:?}; it has {:?}", self.names()))
    }

    /// The migrated column `column` is `expr` evaluated over the control row.
    pub fn map(mut self, column: &str, expr: &str) -> Projection {
        let i = self.position(column);
        self.columns[i].1 = format!("({expr})");
        self
    }

    /// The migrated table no longer has `column`.
    pub fn drop(mut self, column: &str) -> Projection {
        let i = self.position(column);
        self.columns.remove(i);
        self
    }

    /// The migrated table calls `from` `to`.
    pub fn rename(mut self, from: &str, to: &str) -> Projection {
        let i = self.position(from);
        self.columns[i].0 = to.to_string();
        self
    }

    /// The migrated table has a new column `column`, whose value for every row is `expr`
    /// (a constant default: a volatile default cannot be predicted).
    pub fn add(mut self, column: &str, expr: &str) -> Projection {
        assert!(!self.columns.iter().any(|(n, _)| n == column), "projection already has {column:?}");
        self.columns.push((column.to_string(), format!("({expr})")));
        self
    }

    /// Output column names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.columns.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// `"a", "b", ...`: the select-list for the migrated table.
    pub fn table_select_list(&self) -> String {
        self.columns.iter().map(|(n, _)| ident(n)).collect::<Vec<_>>().join(", ")
    }

    /// `expr AS "a", ...`: the select-list for the control table.
    pub fn control_select_list(&self) -> String {
        self.columns.iter().map(|(n, e)| format!("{e} AS {}", ident(n))).collect::<Vec<_>>().join(", ")
    }
}

/// A PostgreSQL client binary (`pg_dump`, `pg_restore`, `psql`) of the server's major
/// version: `PG_BINDIR`, then `/usr/lib/postgresql/15/bin`, then `PATH`.
pub fn pg_bin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BINDIR") {
        return PathBuf::from(dir).join(name);
    }
    let debian = PathBuf::from("/usr/lib/postgresql/15/bin").join(name);
    if debian.exists() {
        return debian;
    }
    PathBuf::from(name)
}

/// A SQL expression rendering the row `alias` (of any query) readably and briefly:
/// `col=value, ...` in column order, long values cut to their start, length and md5, so a
/// difference in an 8 kB value is still visible in a failure message.
pub(crate) fn render_row_sql(alias: &str) -> String {
    format!(
        "(SELECT string_agg(e.key || '=' || CASE WHEN e.value IS NULL THEN 'NULL' \
              WHEN length(e.value) > 80 THEN left(e.value, 32) || '…(' || length(e.value) || ' chars, md5 ' || left(md5(e.value), 10) || ')' \
              ELSE e.value END, ', ' ORDER BY e.ord) \
          FROM json_each_text(row_to_json({alias})) WITH ORDINALITY AS e(key, value, ord))"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(ident(r#"a "b" ü"#), r#""a ""b"" ü""#);
        assert_eq!(qualified("s", "t.x"), r#""s"."t.x""#);
        assert_eq!(literal(r"it's \n"), r"'it''s \n'");
    }

    #[test]
    fn projection_follows_the_alter() {
        let p = Projection::identity(&["id", "n", "label", "spare"])
            .map("n", "n::bigint")
            .drop("label")
            .rename("spare", "extra")
            .add("flag", "true");
        assert_eq!(p.names(), vec!["id", "n", "extra", "flag"]);
        assert_eq!(p.table_select_list(), r#""id", "n", "extra", "flag""#);
        assert_eq!(p.control_select_list(), r#""id" AS "id", (n::bigint) AS "n", "spare" AS "extra", (true) AS "flag""#);
    }
}
