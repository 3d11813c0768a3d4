//! A partitioned table's partitions: what pg-ghost can rebuild on the ghost and rename in
//! the swap, and what it refuses (for now) before anything is created.
//!
//! The ghost's partitions get the partition key, bounds, storage parameters, tablespace,
//! comment, owner, grants, replica identity and own indexes of the original's (see
//! `crate::ghost::partitions`). Objects that hang on one partition rather than on the
//! partitioned table (its own triggers, rules, policies, primary key, unique or exclusion
//! constraints, statistics objects, publications, views reading it) would stay behind on the
//! old partition: they are refused, each named. Its own CHECK constraints and foreign keys are
//! created on the ghost's partition (`crate::ghost::partitions`). Foreign keys that reference the partitioned table, or one of its partitions,
//! move with it like any table's (`crate::dependents`).

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
                      c.relpersistence::text AS persistence, c.relreplident::text AS replident, c.relrowsecurity, t.parentrelid
                 FROM pg_partition_tree($1::oid::regclass) t
                 JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE t.level > 0)
             SELECT p.name, 'is ' || CASE p.kind WHEN 'f' THEN 'a foreign table' ELSE 'not an ordinary table (relkind ' || p.kind || ')' END
                    || ': its rows live elsewhere and cannot be copied' FROM parts p WHERE p.kind NOT IN ('r', 'p')
             UNION ALL
             SELECT p.name, 'is ' || CASE p.persistence WHEN 'u' THEN 'UNLOGGED: its changes are not in the WAL' ELSE 'temporary' END
               FROM parts p WHERE p.persistence <> 'p'
             UNION ALL
             SELECT p.name, 'has row level security enabled on the partition itself' FROM parts p WHERE p.relrowsecurity
             UNION ALL
             SELECT p.name, 'has trigger ' || quote_ident(g.tgname) || ' of its own (not the partitioned table''s)'
               FROM parts p JOIN pg_trigger g ON g.tgrelid = p.oid WHERE NOT g.tgisinternal AND g.tgparentid = 0
             UNION ALL
             SELECT p.name, 'has rule ' || quote_ident(r.rulename) FROM parts p JOIN pg_rewrite r ON r.ev_class = p.oid
             UNION ALL
             SELECT DISTINCT p.name, 'is read by ' || r.ev_class::regclass::text
               FROM parts p JOIN pg_depend d ON d.refobjid = p.oid AND d.refclassid = 'pg_class'::regclass AND d.classid = 'pg_rewrite'::regclass
               JOIN pg_rewrite r ON r.oid = d.objid WHERE r.ev_class <> p.oid
             UNION ALL
             SELECT p.name, 'has policy ' || quote_ident(pol.polname) FROM parts p JOIN pg_policy pol ON pol.polrelid = p.oid
             UNION ALL
             SELECT p.name, 'is listed in publication ' || quote_ident(pub.pubname)
               FROM parts p JOIN pg_publication_rel pr ON pr.prrelid = p.oid JOIN pg_publication pub ON pub.oid = pr.prpubid
             UNION ALL
             SELECT p.name, 'has statistics object ' || quote_ident(s.stxname) FROM parts p JOIN pg_statistic_ext s ON s.stxrelid = p.oid
             UNION ALL
             SELECT p.name, 'has constraint ' || quote_ident(con.conname) || ' of its own'
               FROM parts p JOIN pg_constraint con ON con.conrelid = p.oid
              WHERE con.conparentid = 0 AND con.coninhcount = 0 AND con.contype IN ('p', 'u', 'x')
             UNION ALL
             SELECT p.name, 'has its own default for column ' || quote_ident(a.attname)
               FROM parts p JOIN pg_attribute a ON a.attrelid = p.oid AND a.attnum > 0 AND NOT a.attisdropped
               JOIN pg_attribute pa ON pa.attrelid = p.parentrelid AND pa.attname = a.attname
              WHERE (SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d WHERE d.adrelid = a.attrelid AND d.adnum = a.attnum)
                    IS DISTINCT FROM
                    (SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d WHERE d.adrelid = pa.attrelid AND d.adnum = pa.attnum)
             UNION ALL
             SELECT p.name, 'has its own ' || concat_ws(', ',
                      CASE WHEN a.attstorage <> pa.attstorage THEN 'storage' END,
                      CASE WHEN a.attstattarget <> pa.attstattarget THEN 'statistics target' END)
                    || ' for column ' || quote_ident(a.attname)
               FROM parts p JOIN pg_attribute a ON a.attrelid = p.oid AND a.attnum > 0 AND NOT a.attisdropped
               JOIN pg_attribute pa ON pa.attrelid = p.parentrelid AND pa.attname = a.attname
              WHERE a.attstorage <> pa.attstorage OR a.attstattarget <> pa.attstattarget
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
         these are not carried over to the new partitions yet: remove them for the run, or change the table with a plain ALTER TABLE",
        problems.join("; ")
    )))
}
