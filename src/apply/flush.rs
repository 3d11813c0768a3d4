//! Flushing a set of changed keys: every ghost row with one of those keys is deleted and
//! written again from the original's current row, if it still has one.
//!
//! No row image from the stream is used, so unchanged TOAST values, type changes and key
//! changes (old and new key are both in the set) come out right. The insert is an upsert on
//! the key because a copy chunk may have written the row meanwhile.

use crate::error::{Context, Result};
use crate::ghost::Mapping;
use crate::keysql::{insert_select, KeyCols};
use crate::sql::{ident, QualifiedName};
use tokio_postgres::types::ToSql;
use tokio_postgres::GenericClient;

/// A key as text values, one per key column, in key order.
pub type Key = Box<[String]>;

#[derive(Clone, Debug)]
pub struct FlushSql {
    pub delete: String,
    pub upsert: String,
    key_len: usize,
}

impl FlushSql {
    pub fn new(orig: &QualifiedName, ghost: &QualifiedName, m: &Mapping) -> FlushSql {
        let ghost_key = KeyCols::ghost(m);
        let source_key = KeyCols::source(m);
        let delete = format!("DELETE FROM {} WHERE {}", ghost.sql(), ghost_key.in_set(1));
        let updates: Vec<String> = m
            .ghost_columns
            .iter()
            .filter(|c| !m.key_ghost.contains(c))
            .map(|c| format!("{0} = EXCLUDED.{0}", ident(c)))
            .collect();
        let on_conflict = if updates.is_empty() {
            "DO NOTHING".to_string()
        } else {
            format!("DO UPDATE SET {}", updates.join(", "))
        };
        let upsert = format!(
            "{} WHERE {} ON CONFLICT ({}) {}",
            insert_select(orig, ghost, m),
            source_key.in_set(1),
            crate::sql::ident_list(m.key_ghost.iter().map(String::as_str)),
            on_conflict
        );
        FlushSql { delete, upsert, key_len: m.key_ghost.len() }
    }

    /// Column-wise arrays of the keys: one `Vec<&str>` per key column.
    fn columns<'k>(&self, keys: &'k [Key]) -> Vec<Vec<&'k str>> {
        let mut cols = vec![Vec::with_capacity(keys.len()); self.key_len];
        for key in keys {
            for (col, value) in cols.iter_mut().zip(key.iter()) {
                col.push(value.as_str());
            }
        }
        cols
    }

    /// Runs the delete and the upsert for `keys` on `client`; the caller owns the transaction.
    /// Returns the number of ghost rows written.
    pub async fn run(&self, client: &impl GenericClient, keys: &[Key]) -> Result<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        let cols = self.columns(keys);
        let params: Vec<&(dyn ToSql + Sync)> = cols.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
        client.execute(&self.delete, &params).await.context("deleting changed keys from the ghost")?;
        let written = client.execute(&self.upsert, &params).await.context("writing changed keys to the ghost")?;
        Ok(written)
    }
}
