//! The oracle table: every column type the contract names, and its control twin.
//!
//! The control has the same columns with a plain primary key (no identity, no other index)
//! and is never migrated: after a run it holds what the table must hold, in the original's
//! shape. The seed writes both in one transaction; the [`super::Workload`] keeps them equal.

use tokio_postgres::Client;

use super::compare::{assert_same_rows, db_message};
use super::{ident, qualified, Projection};
use crate::harness::TestDb;

/// Which primary key the oracle table has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// `id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY`.
    Identity,
    /// `tenant int NOT NULL`, `id bigint GENERATED ALWAYS AS IDENTITY`, `PRIMARY KEY (tenant, id)`.
    Composite,
}

/// Columns the workload writes with literals (besides the key).
pub const DATA_COLUMNS: [&str; 7] = ["n", "label", "amount", "doc", "tags", "at", "big"];
/// The column no workload statement ever names.
pub const SPARE: &str = "spare";

/// A table with every column type the contract names, and its control twin.
#[derive(Clone, Debug)]
pub struct OracleTable {
    pub schema: String,
    pub name: String,
    /// The control table's name, in the same schema: `<name>_control`.
    pub control: String,
    pub kind: KeyKind,
}

impl OracleTable {
    /// Creates `public.<name>` and `public.<name>_control` and seeds both with `rows` rows
    /// (ids 1..=rows), in one transaction. The table has, besides its columns: indexes on
    /// `n`, on `label`, a partial one on `at`, a GIN one on `tags`; a CHECK on `amount`;
    /// `fillfactor = 90`; `big` with `STORAGE EXTERNAL` (values of 8 kB and more, out of
    /// line); a comment on the table and on `spare`; `SELECT` granted to PUBLIC. All of it
    /// must survive the migration under its original names.
    pub async fn create(db: &TestDb<'_>, name: &str, kind: KeyKind, rows: i64) -> OracleTable {
        Self::create_in(db, "public", name, kind, rows).await
    }

    /// As [`OracleTable::create`], in `schema` (created if missing).
    pub async fn create_in(db: &TestDb<'_>, schema: &str, name: &str, kind: KeyKind, rows: i64) -> OracleTable {
        let control = format!("{name}_control");
        assert!(control.len() <= 63, "table name {name:?} too long: {control:?} must fit in 63 bytes");
        let table = OracleTable { schema: schema.to_string(), name: name.to_string(), control, kind };
        table.create_with(db, rows, None).await;
        table
    }

    /// As [`OracleTable::create`], but `public.<name>` is a partitioned table: `PARTITION BY
    /// <by>`, then `partitions` (statements in which `{t}` stands for the table's qualified
    /// name) create its partitions before the rows go in. `fillfactor = 90` is not set on the
    /// partitioned table, which takes no storage parameters; give it to partitions in
    /// `partitions`. The control stays an ordinary table.
    pub async fn create_partitioned(db: &TestDb<'_>, name: &str, kind: KeyKind, rows: i64, by: &str, partitions: &str) -> OracleTable {
        let table = OracleTable { schema: "public".to_string(), name: name.to_string(), control: format!("{name}_control"), kind };
        let partitions = partitions.replace("{t}", &table.qualified());
        table.create_with(db, rows, Some((by, &partitions))).await;
        table
    }

    async fn create_with(&self, db: &TestDb<'_>, rows: i64, partitioning: Option<(&str, &str)>) {
        let name = &self.name;
        let client = db.client().await;
        client
            .batch_execute(&self.create_sql(rows, partitioning))
            .await
            .unwrap_or_else(|e| panic!("creating oracle table {name:?}: {}", db_message(&e)));
    }

    fn create_sql(&self, rows: i64, partitioning: Option<(&str, &str)>) -> String {
        let q = self.qualified();
        let qc = self.control_qualified();
        let (key_cols, id_col, pk) = match self.kind {
            KeyKind::Identity => ("", "id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY", String::new()),
            KeyKind::Composite => {
                ("tenant int NOT NULL,", "id bigint GENERATED ALWAYS AS IDENTITY", ", PRIMARY KEY (tenant, id)".to_string())
            }
        };
        let (ctl_key_cols, ctl_pk) = match self.kind {
            KeyKind::Identity => ("", "PRIMARY KEY (id)"),
            KeyKind::Composite => ("tenant int NOT NULL,", "PRIMARY KEY (tenant, id)"),
        };
        let columns = "n int,
             label text,
             amount numeric(12,2) CHECK (amount > -10000000),
             doc jsonb,
             tags text[],
             at timestamptz,
             big text,
             spare int";
        let seed_tenant = if self.kind == KeyKind::Composite { "g % 4 + 1," } else { "" };
        let insert_cols = self.columns().iter().filter(|c| **c != "id").map(|c| ident(c)).collect::<Vec<_>>().join(", ");
        let all_cols = self.columns().iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ");
        format!(
            "BEGIN;
             {create_schema}
             CREATE TABLE {q} ({key_cols} {id_col}, {columns} {pk}) {storage};
             ALTER TABLE {q} ALTER COLUMN big SET STORAGE EXTERNAL;
             CREATE INDEX ON {q} (n);
             CREATE INDEX ON {q} (label);
             CREATE INDEX ON {q} (at) WHERE amount IS NOT NULL;
             CREATE INDEX ON {q} USING gin (tags);
             COMMENT ON TABLE {q} IS 'pg-ghost oracle table';
             COMMENT ON COLUMN {q}.spare IS 'never written by the workload';
             GRANT SELECT ON {q} TO PUBLIC;
             CREATE TABLE {qc} ({ctl_key_cols} id bigint NOT NULL, {columns}, {ctl_pk});
             INSERT INTO {q} ({insert_cols})
             SELECT {seed_tenant}
               CASE WHEN g % 11 = 0 THEN NULL ELSE (g * 7919) % 100000 END,
               CASE WHEN g % 13 = 0 THEN NULL ELSE 'seed ' || g || CASE g % 3
                    WHEN 0 THEN ' \"quoted\" ''single'''
                    WHEN 1 THEN ' ünïcødé ✓'
                    ELSE E' tab\\tback\\\\slash' END END,
               CASE WHEN g % 17 = 0 THEN NULL ELSE round(((g * 37) % 1000000) / 100.0 - 5000, 2) END,
               CASE WHEN g % 19 = 0 THEN NULL
                    ELSE jsonb_build_object('g', g, 'h', md5(g::text), 'a', jsonb_build_array(g % 5, NULL, true)) END,
               CASE WHEN g % 23 = 0 THEN NULL
                    ELSE ARRAY['t' || g % 5, 't' || g % 7, CASE WHEN g % 2 = 0 THEN NULL ELSE 'odd' END] END,
               CASE WHEN g % 29 = 0 THEN NULL ELSE timestamptz '2024-01-01 00:00:00+00' + g * interval '61.5 seconds' END,
               CASE WHEN g % 10 = 0 THEN NULL
                    WHEN g % 10 < 5 THEN md5(g::text)
                    ELSE (SELECT string_agg(md5(g::text || '.' || i || random()::text), '')
                          FROM generate_series(1, 260 + g % 7) i) END,
               CASE WHEN g % 31 = 0 THEN NULL ELSE g % 1000 END
             FROM generate_series(1, {rows}) g;
             INSERT INTO {qc} ({all_cols}) SELECT {all_cols} FROM {q};
             COMMIT;
             ANALYZE {q}; ANALYZE {qc};",
            storage = match partitioning {
                None => "WITH (fillfactor = 90)".to_string(),
                Some((by, partitions)) => format!("PARTITION BY {by}; {partitions}"),
            },
            create_schema =
                if self.schema == "public" { String::new() } else { format!("CREATE SCHEMA IF NOT EXISTS {};", ident(&self.schema)) },
        )
    }

    /// `"schema"."name"`.
    pub fn qualified(&self) -> String {
        qualified(&self.schema, &self.name)
    }

    /// `"schema"."name_control"`.
    pub fn control_qualified(&self) -> String {
        qualified(&self.schema, &self.control)
    }

    /// The original's columns, in order.
    pub fn columns(&self) -> Vec<&'static str> {
        let mut cols = match self.kind {
            KeyKind::Identity => vec!["id"],
            KeyKind::Composite => vec!["tenant", "id"],
        };
        cols.extend(DATA_COLUMNS);
        cols.push(SPARE);
        cols
    }

    /// The primary key's columns.
    pub fn key_columns(&self) -> Vec<&'static str> {
        match self.kind {
            KeyKind::Identity => vec!["id"],
            KeyKind::Composite => vec!["tenant", "id"],
        }
    }

    /// The identity projection over the original's columns; apply the ALTER to it.
    pub fn projection(&self) -> Projection {
        Projection::identity(&self.columns())
    }

    /// `SELECT <the original's columns> FROM <control>`: the rows the table must hold, in
    /// the original's shape (for [`super::ExpectedData::Query`]).
    pub fn control_rows_query(&self) -> String {
        let cols = self.columns().iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ");
        format!("SELECT {cols} FROM ONLY {}", self.control_qualified())
    }

    /// The table equals its control transformed by `projection`, row for row.
    pub async fn assert_matches_control(&self, client: &Client, projection: &Projection) {
        assert_same_rows(client, &self.qualified(), &self.control_qualified(), projection).await;
    }
}
