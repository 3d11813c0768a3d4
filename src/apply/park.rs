//! Keys parked while the ghost has no index on its key.
//!
//! The copy writes a ghost with no index at all and builds the key's unique index right after
//! it: built in bulk, the index costs a fraction of inserting an entry for every row as the
//! row comes, and the copy's rows write a third less WAL for the walsender to decode. Until
//! that index exists the apply cannot write the ghost by key, so a flush parks the keys
//! instead: in the changelog table, in the flush's own transaction. The slot is acknowledged
//! for them exactly as if they had been written, and a crash loses none (a resumed run finds
//! them where they were). Once the index exists, the apply loop takes them back one parked
//! batch at a time, each written to the ghost and removed from the changelog in one
//! transaction.
//!
//! A parked key needs nothing more than any other changed key: its row is read again from the
//! original when it is written. So parked and new keys may be written in any order, as long as
//! one flush runs at a time, which is the apply loop's rule.

use super::flush::Key;
use crate::error::{Context, Error, Result};
use crate::sql::QualifiedName;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio_postgres::types::ToSql;
use tokio_postgres::GenericClient;

/// The changelog keys of parked batches start with this (a resume reads nothing from them);
/// a random suffix tells them apart.
pub const PREFIX: &str = "parked:";

/// Where keys are parked, and whether flushes park them now; clones share the switch.
#[derive(Clone, Debug)]
pub struct Parking {
    changelog: QualifiedName,
    active: Arc<AtomicBool>,
}

impl Parking {
    pub fn new(changelog: &QualifiedName, active: bool) -> Parking {
        Parking { changelog: changelog.clone(), active: Arc::new(AtomicBool::new(active)) }
    }

    /// Whether flushes park keys instead of writing them.
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// From now on flushes write the ghost: its key's index exists.
    pub fn stop(&self) {
        self.active.store(false, Ordering::Relaxed);
    }

    /// Parks one batch of keys, given column by column as `text[]` values, in the caller's
    /// transaction.
    pub async fn park(&self, client: &impl GenericClient, columns: &[Vec<&str>]) -> Result<()> {
        let arrays: Vec<String> = (1..=columns.len()).map(|i| format!("${i}::text[]")).collect();
        let sql = format!(
            "INSERT INTO {} (key, value) SELECT '{PREFIX}' || gen_random_uuid(), json_build_array({})::text",
            self.changelog.sql(),
            arrays.join(", ")
        );
        let params: Vec<&(dyn ToSql + Sync)> = columns.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
        client.execute(&sql, &params).await.context("parking changed keys until the ghost's key index exists")?;
        Ok(())
    }

    /// Takes parked batches out of the changelog, in the caller's transaction (which then
    /// writes them to the ghost): as many as fit in about `budget` keys, at least one; None
    /// when none is left.
    pub async fn take(&self, client: &impl GenericClient, key_len: usize, budget: usize) -> Result<Option<Vec<Key>>> {
        let columns: Vec<String> =
            (0..key_len).map(|i| format!("ARRAY(SELECT json_array_elements_text(_pg_ghost_t.v -> {i}))")).collect();
        // Batches are looked at a bounded number at a time, so the running count reads little.
        let sql = format!(
            "WITH _pg_ghost_n AS (
                 SELECT key, json_array_length(value::json -> 0) AS n FROM {0} WHERE starts_with(key, '{PREFIX}') LIMIT 64),
             _pg_ghost_c AS (SELECT key, sum(n) OVER (ORDER BY key) - n AS before FROM _pg_ghost_n),
             _pg_ghost_t AS (
                 DELETE FROM {0} WHERE key IN (SELECT key FROM _pg_ghost_c WHERE before < $1) RETURNING value::json AS v)
             SELECT {1} FROM _pg_ghost_t",
            self.changelog.sql(),
            columns.join(", ")
        );
        let budget = i64::try_from(budget).unwrap_or(i64::MAX).max(1);
        let rows = client.query(&sql, &[&budget]).await.context("taking parked keys back")?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut keys = Vec::new();
        for row in rows {
            let columns: Vec<Vec<String>> = (0..key_len).map(|i| row.try_get(i)).collect::<Result<_, _>>()?;
            keys.extend(keys_of(columns)?);
        }
        Ok(Some(keys))
    }

    /// How many keys are parked now.
    pub async fn count(&self, client: &impl GenericClient) -> Result<u64> {
        let sql = format!(
            "SELECT coalesce(sum(json_array_length(value::json -> 0)), 0)::int8 FROM {} WHERE starts_with(key, '{PREFIX}')",
            self.changelog.sql()
        );
        let n: i64 = client.query_one(&sql, &[]).await.context("counting parked keys")?.try_get(0)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

/// Keys from their values given column by column.
fn keys_of(columns: Vec<Vec<String>>) -> Result<Vec<Key>> {
    let n = columns.first().map_or(0, Vec::len);
    if columns.iter().any(|c| c.len() != n) {
        return Err(Error::internal("a parked batch of keys has columns of different lengths"));
    }
    let mut iters: Vec<_> = columns.into_iter().map(Vec::into_iter).collect();
    let mut keys = Vec::with_capacity(n);
    for _ in 0..n {
        let key: Vec<String> = iters.iter_mut().filter_map(Iterator::next).collect();
        keys.push(key.into_boxed_slice());
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_back_row_by_row() {
        let keys = keys_of(vec![vec!["1".into(), "2".into()], vec!["a".into(), "b".into()]]).unwrap();
        assert_eq!(keys, vec![Key::from(["1".to_string(), "a".to_string()]), Key::from(["2".to_string(), "b".to_string()])]);
        assert!(keys_of(vec![vec!["1".into()], vec![]]).is_err());
        assert_eq!(keys_of(vec![vec![], vec![]]).unwrap(), Vec::<Key>::new());
    }
}
