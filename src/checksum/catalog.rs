//! What the checksum reads from the catalog: the ghost's column types (the types both sides
//! are rendered in) and both tables' key types and collations (how ranges are compared).

use super::sql::{self, ChecksumSql, GhostKeyOrder, Hashing, KeyColumn, RowColumn};
use crate::error::{Context, Error, Result};
use crate::ghost::Mapping;
use crate::keysql::{insert_select, KeyCols};
use crate::sql::QualifiedName;
use std::collections::HashMap;
use tokio_postgres::Client;

/// A live column's type and collation.
struct ColType {
    type_sql: String,
    /// Quoted, schema-qualified collation name; None for types without collation.
    collation: Option<String>,
    /// How its values are hashed (see `sql::row_hash`).
    hashing: Hashing,
}

/// Built-in types (or domains over them) whose equality is identity: equal values print the
/// same. Not numeric (1.0 = 1.00: hashed by its binary form), floats (-0 = 0), interval (1 day =
/// 24 hours), bpchar (trailing spaces), timetz, arrays (bounds), json and the like (no hash at
/// all).
const HASH_IS_IDENTITY: &[&str] =
    &["int2", "int4", "int8", "oid", "bool", "text", "varchar", "name", "char", "bytea", "uuid", "date", "timestamp", "timestamptz", "time"];

fn how_hashed(identity: bool, numeric: bool, bigint: bool) -> Hashing {
    match (identity, numeric) {
        (true, _) if bigint => Hashing::NativeWide,
        (true, _) => Hashing::Native,
        (false, true) => Hashing::NumericBinary,
        (false, false) => Hashing::Text,
    }
}

async fn columns(client: &Client, table: &QualifiedName) -> Result<HashMap<String, ColType>> {
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), n.nspname::text, c.collname::text,
                    bt.typnamespace = 'pg_catalog'::regnamespace AND bt.typname::text = ANY ($2) AND coalesce(c.collisdeterministic, true),
                    bt.oid = 'pg_catalog.numeric'::regtype, bt.oid = 'pg_catalog.int8'::regtype
               FROM pg_attribute a
               JOIN pg_type t ON t.oid = a.atttypid
               JOIN pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
               LEFT JOIN pg_collation c ON c.oid = a.attcollation
               LEFT JOIN pg_namespace n ON n.oid = c.collnamespace
              WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped",
            &[&table.sql(), &HASH_IS_IDENTITY],
        )
        .await
        .with_context(|| format!("reading the columns of {table}"))?;
    let mut out = HashMap::new();
    for row in rows {
        let schema: Option<String> = row.try_get(2)?;
        let name: Option<String> = row.try_get(3)?;
        let collation = schema.zip(name).map(|(s, n)| QualifiedName::new(s, n).sql());
        let hashing = how_hashed(row.try_get(4)?, row.try_get(5)?, row.try_get(6)?);
        out.insert(row.try_get(0)?, ColType { type_sql: row.try_get(1)?, collation, hashing });
    }
    Ok(out)
}

fn column<'a>(cols: &'a HashMap<String, ColType>, table: &QualifiedName, name: &str) -> Result<&'a ColType> {
    cols.get(name).ok_or_else(|| {
        Error::internal(format!("column {} of {table} is missing from the catalog", crate::sql::ident(name)))
    })
}

/// Reads the catalog and builds the statements comparing `orig` with `ghost`.
pub(super) async fn load(client: &Client, orig: &QualifiedName, ghost: &QualifiedName, m: &Mapping) -> Result<ChecksumSql> {
    let orig_cols = columns(client, orig).await?;
    let ghost_cols = columns(client, ghost).await?;
    let mut row = Vec::new();
    for (name, expr) in m.ghost_columns.iter().zip(&m.source_exprs) {
        let c = column(&ghost_cols, ghost, name)?;
        row.push(RowColumn { ghost: name, ghost_type: &c.type_sql, source_expr: expr, hashing: c.hashing });
    }
    let mut key = Vec::new();
    for (source, ghost_name) in m.key_source.iter().zip(&m.key_ghost) {
        let s = column(&orig_cols, orig, source)?;
        let g = column(&ghost_cols, ghost, ghost_name)?;
        key.push(KeyColumn {
            source: source.clone(),
            ghost: ghost_name.clone(),
            source_type: s.type_sql.clone(),
            ghost_type: g.type_sql.clone(),
            source_collation: s.collation.clone(),
            ghost_collation: g.collation.clone(),
        });
    }
    let bounds = KeyCols::source(m);
    let order = key_order(client, orig, ghost, &row, &key, &bounds).await;
    let (orig_side, ghost_side) = sql::sides(orig, ghost, &row, &key, order);
    Ok(ChecksumSql {
        orig: orig_side,
        ghost: ghost_side,
        bounds,
        insert_head: insert_select(orig, ghost, m),
        scans_ghost: order == GhostKeyOrder::CastToSource,
    })
}

/// Compares the ghost's key columns themselves with the original's bounds whenever that
/// orders like the original: always when the key is unchanged, and after a type change when
/// the server has operators across the two types (`bigint > integer`) and the collation is the
/// same. Otherwise each range casts the ghost's key back, which is correct but scans.
async fn key_order(
    client: &Client,
    orig: &QualifiedName,
    ghost: &QualifiedName,
    row: &[RowColumn<'_>],
    key: &[KeyColumn],
    bounds: &KeyCols,
) -> GhostKeyOrder {
    if sql::key_unchanged(key) {
        return GhostKeyOrder::Native;
    }
    if sql::collations_unchanged(key) {
        let (_, ghost_side) = sql::sides(orig, ghost, row, key, GhostKeyOrder::Native);
        let probe = ChecksumSql {
            orig: ghost_side.clone(),
            ghost: ghost_side,
            bounds: bounds.clone(),
            insert_head: String::new(),
            scans_ghost: false,
        }
        .delete(true);
        // Preparing only plans the statement: nothing is deleted.
        if client.prepare(&probe).await.is_ok() {
            return GhostKeyOrder::Native;
        }
    }
    tracing::warn!(
        ghost = %ghost,
        "the key's type or collation changes in a way the server cannot compare across: each checksum range scans the ghost"
    );
    GhostKeyOrder::CastToSource
}
