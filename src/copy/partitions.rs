//! Which partitions the copy walks on their own.
//!
//! A partitioned original is copied partition by partition: each leaf's rows are read from
//! the original's leaf by its own key index and written into the ghost's leaf, and the
//! workers spread over the leaves. While a fresh copy runs, the apply must tell for every
//! changed key whether a chunk has reached it yet, and with one walk per leaf that depends on
//! the leaf the key's row lives in. The stream carries only the key, so the leaf is found
//! from the key alone, by each leaf's partition constraint: that works when every level's
//! partition key is made of key columns, which PostgreSQL demands of a primary key or unique
//! index on a partitioned table (and an expression in the partition key rules such a key
//! out). Otherwise the table is copied by ranges of its key through the partitioned table.

use super::chunker::Part;
use crate::error::{Context, Result};
use crate::ghost::partitions::PartitionTree;
use crate::sql::QualifiedName;
use std::sync::Arc;
use tokio_postgres::GenericClient;

/// The leaves of `root` to copy one by one, or None (with the reason) when the table is
/// copied by key ranges instead.
pub async fn walks(
    client: &impl GenericClient,
    root_oid: u32,
    tree: &PartitionTree,
    key: &[String],
) -> Result<std::result::Result<Vec<Arc<Part>>, String>> {
    if tree.converted {
        return Ok(Err("the original is a plain table".into()));
    }
    let levels = client
        .query(
            "SELECT t.relid::regclass::text, pt.partexprs IS NOT NULL,
                    ARRAY(SELECT a.attname::text FROM unnest(pt.partattrs::int2[]) k
                            JOIN pg_attribute a ON a.attrelid = pt.partrelid AND a.attnum = k)
               FROM pg_partition_tree($1::oid::regclass) t JOIN pg_partitioned_table pt ON pt.partrelid = t.relid",
            &[&root_oid],
        )
        .await
        .context("reading the partition keys")?;
    for row in &levels {
        let (table, expressions, columns): (String, bool, Vec<String>) = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        if expressions {
            return Ok(Err(format!("{table} is partitioned by an expression")));
        }
        if let Some(c) = columns.iter().find(|c| !key.contains(c)) {
            return Ok(Err(format!("{table}'s partition key column {c} is not in the key")));
        }
    }
    let leaves = client
        .query(
            "SELECT n.nspname::text, c.relname::text, coalesce(pg_get_partition_constraintdef(c.oid), 'true')
               FROM pg_partition_tree($1::oid::regclass) t
               JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE t.isleaf AND t.level > 0",
            &[&root_oid],
        )
        .await
        .context("reading the partitions' constraints")?;
    let mut parts = Vec::with_capacity(leaves.len());
    for row in &leaves {
        let orig = QualifiedName::new(row.try_get::<_, String>(0)?, row.try_get::<_, String>(1)?);
        let Some(p) = tree.partitions.iter().find(|p| p.name == orig && p.is_leaf()) else {
            return Ok(Err(format!("partition {orig} is not in the tree the ghost was built from")));
        };
        parts.push(Arc::new(Part { ghost: p.ghost_name(), orig, predicate: row.try_get(2)? }));
    }
    Ok(Ok(parts))
}
