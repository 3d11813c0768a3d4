//! Phase 1, Inspect: read-only discovery of the table and the server, and the checks that
//! refuse what pg-ghost cannot change online.
//!
//! Invariants:
//! - Inspect never writes: every statement here is a `SELECT` over catalogs and settings
//!   with bind parameters. A refusal leaves the database exactly as it was.
//! - Names from the user are read by PostgreSQL's own parser (`parse_ident`) and looked up
//!   with `to_regclass`, never split or case-folded by hand.
//! - Every refusal is an [`ErrorKind::Refused`](crate::ErrorKind::Refused) whose message
//!   names the object at fault and what the DBA can do about it.
//!
//! A caller runs these steps in this order, and the checks run in this fixed order
//! (the first failing check refuses):
//!
//! 1. [`resolve_table`]: the `[schema.]name` argument; a missing table is refused.
//! 2. [`describe`]: (a) server version, (b) the relation: a system catalog, a view,
//!    materialized view, foreign table, partition, inheritance parent or child, an
//!    unlogged or temporary table are refused; a partitioned table's partitions must each
//!    be permanent tables with a replica identity that carries the key and nothing that
//!    pg-ghost does not carry over yet (`partitions`); (c) the key: the primary key,
//!    or the `--key` index, which must be unique, valid, immediate, non-partial, without
//!    expressions and on NOT NULL columns. A missing or unusable key is not refused here but
//!    kept in [`Described::keyed`]: only the ghost way needs a key. [`table_info`] is
//!    `describe` for the ghost way, refusing without a key: a
//!    [`TableInfo`](crate::schema::TableInfo) only ever describes an ordinary table with a
//!    usable key.
//! 3. [`preflight_shared`], what both ways need and all the direct way needs (it creates
//!    nothing and streams nothing): (1) server version >= 14, (2) not a standby, and of (6)
//!    only the table's ownership that ALTER TABLE needs.
//! 4. The run decides its way from the plan (`crate::plan`), then runs that way's checks:
//!    - [`preflight`], the ghost way: (1) server version >= 14, (2) not a standby, (3)
//!      `wal_level = logical`, (4) a free replication slot, (5) a free walsender, (6)
//!      privileges, (7) replica identity matches the key, (8) no `FOR ALL TABLES` or `FOR
//!      TABLES IN SCHEMA` publication covers the table, (9) no leftovers of an earlier run,
//!      (10) the lock table holds what the run locks at once on a partition tree;
//!      then, for a conversion into a partitioned table (`--partition-by`),
//!      [`conversion::check`]: each partition's parent is the table, its name is free, the
//!      table has no storage parameters.
//!    - the direct way: none beyond step 3.
//!
//! For the ghost way, the objects that depend on the table are checked after these, against
//! the ALTER as it applies to a rolled-back trial ghost (`crate::dependents`).

pub mod conversion;
mod key;
mod lock_capacity;
mod partitions;
mod preflight;
mod relation;
mod resolve;
mod server;
mod table;

/// Whether column `a` (a pg_attribute row) holds no NULL: `attnotnull`, unless that comes
/// from a not-null constraint added `NOT VALID` (PostgreSQL 18), which spares the rows that
/// were there.
const NOT_NULL: &str = "(a.attnotnull AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint nn
      WHERE nn.conrelid = a.attrelid AND nn.contype = 'n' AND NOT nn.convalidated AND nn.conkey[1] = a.attnum))";

pub use preflight::{preflight, preflight_shared, PreflightOptions};
pub use resolve::resolve_table;
pub use server::{ServerInfo, MIN_SERVER_VERSION_NUM};
pub use table::{columns, describe, table_info, Described};

use crate::error::{Context, Result};
use tokio_postgres::types::FromSql;
use tokio_postgres::Row;

/// Reads one column of a catalog row, naming the column if its type is not what we expect.
fn get<'a, T: FromSql<'a>>(row: &'a Row, column: &str) -> Result<T> {
    row.try_get(column).with_context(|| format!("reading column {column}"))
}

/// Runs a query whose rows have a single text column and collects it.
async fn texts(
    client: &tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<String>> {
    let rows = client.query(sql, params).await?;
    rows.iter().map(|r| r.try_get::<_, String>(0).context("reading a name")).collect()
}

/// Quotes an argument for a POSIX shell, so that a suggested command can be pasted as is.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
