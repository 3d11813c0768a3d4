//! A partitioned table's partitions: what pg-ghost refuses before anything is created.
//!
//! The ghost's partitions get the partition key, bounds, storage parameters, tablespace,
//! comment, owner, grants, replica identity, own indexes, own constraints (primary key,
//! unique, exclusion, CHECK, foreign keys), column defaults, storage, compression and
//! statistics targets, statistics objects and row level security of the original's (see
//! `crate::ghost::partitions`). A partition's own triggers, rules, policies, forced row
//! security and security labels, the views and other relations' rules that read it and the
//! publications that list it move to the new partition in the swap (`crate::dependents`), as
//! foreign keys that reference the partitioned table or one of its partitions do. Refused,
//! each named: partitions whose rows cannot be copied or streamed (foreign, unlogged,
//! temporary), a replica identity that does not carry the key, and materialized views that
//! read a partition.

use super::get;
use crate::error::{Context, Error, Result};
use crate::schema::TableInfo;
use tokio_postgres::Client;

/// Refuses a partition tree pg-ghost cannot rebuild and swap, naming every object at fault.
pub(super) async fn check(client: &Client, table: &TableInfo) -> Result<()> {
    let t = &table.name;
    let rows = client
        .query(
            "WITH parts AS (
               SELECT c.oid, format('%I.%I', n.nspname, c.relname) AS name, c.relkind::text AS kind,
                      c.relpersistence::text AS persistence, c.relreplident::text AS replident
                 FROM pg_partition_tree($1::oid::regclass) t
                 JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE t.level > 0)
             SELECT p.name, 'is ' || CASE p.kind WHEN 'f' THEN 'a foreign table' ELSE 'not an ordinary table (relkind ' || p.kind || ')' END
                    || ': its rows live elsewhere and cannot be copied' FROM parts p WHERE p.kind NOT IN ('r', 'p')
             UNION ALL
             SELECT p.name, 'is ' || CASE p.persistence WHEN 'u' THEN 'UNLOGGED: its changes are not in the WAL' ELSE 'temporary' END
               FROM parts p WHERE p.persistence <> 'p'
             UNION ALL
             SELECT DISTINCT p.name, 'is read by materialized view ' || r.ev_class::regclass::text
               FROM parts p JOIN pg_depend d ON d.refobjid = p.oid AND d.refclassid = 'pg_class'::regclass AND d.classid = 'pg_rewrite'::regclass
               JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class v ON v.oid = r.ev_class
              WHERE r.ev_class <> p.oid AND v.relkind = 'm'
             UNION ALL
             SELECT p.name, 'has replica identity ' || CASE p.replident WHEN 'n' THEN 'NOTHING' WHEN 'i' THEN 'USING INDEX' ELSE 'DEFAULT without a primary key on the key' END
                    || ', so the stream would not carry the old key of its updates and deletes (make it REPLICA IDENTITY DEFAULT with the partitioned table''s primary key, or FULL)'
               FROM parts p
              WHERE p.kind = 'r' AND (p.replident IN ('n', 'i') OR (p.replident = 'd' AND NOT EXISTS (
                    SELECT 1 FROM pg_index i WHERE i.indrelid = p.oid AND i.indisprimary
                       AND (SELECT array_agg(a.attname::text ORDER BY a.attname::text) FROM unnest(i.indkey::int2[]) k
                              JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k)
                           = (SELECT array_agg(x ORDER BY x) FROM unnest($2::text[]) x))))
             ORDER BY 1, 2",
            &[&table.oid, &table.key.columns],
        )
        .await
        .with_context(|| format!("reading the partitions of {t}"))?;
    let mut problems: Vec<String> = Vec::new();
    for r in &rows {
        let name: String = get(r, "name")?;
        let what: String = r.try_get(1).context("reading a partition's problem")?;
        problems.push(format!("partition {name} {what}"));
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(Error::refused(format!(
        "{t} is a partitioned table, which pg-ghost changes with its whole partition tree, but: {}; \
         these are not carried over to the new partitions: remove them for the run, or change the table with a plain ALTER TABLE",
        problems.join("; ")
    )))
}
