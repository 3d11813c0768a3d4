//! What one partition has of its own, apart from its parent's, given to the ghost's partition
//! before the ALTER runs (so that the ALTER changes it as a plain `ALTER TABLE` on the root
//! changes the original's): its own primary key, unique and exclusion constraints (under
//! temporary names, as the root's; [`create_keys`], once the root's indexes exist), CHECK
//! constraints and foreign keys, column defaults, storage, compression, statistics targets,
//! options and comments, extended statistics objects, and row level security ([`create`]).
//! Triggers, policies, `FORCE ROW LEVEL SECURITY`, views and publications wait for the swap
//! (see `crate::dependents`): on the ghost they would act on pg-ghost's writes.
//!
//! Index-backed constraints are set aside after the ALTER and built again after the copy, as
//! the partitions' own indexes are ([`set_aside_keys`]): a unique one would otherwise meet,
//! while the copy runs, a stale row of a chunk next to the row the stream brought.

use super::create::temp_name;
use super::Deferred;
use crate::error::{Context, Result};
use crate::sql::{ident, literal, QualifiedName};
use tokio_postgres::GenericClient;

/// The statements that give the ghost's partition `ghost` (already created `PARTITION OF` its
/// parent's ghost, whose column settings it took) what the original partition `orig` has of
/// its own, but its keys and other constraints.
pub(super) async fn create_sql(tx: &impl GenericClient, orig: u32, ghost: &QualifiedName) -> Result<Vec<String>> {
    let row_security = async {
        let row = tx.query_one("SELECT relrowsecurity FROM pg_class WHERE oid = $1", &[&orig]).await.context("reading a partition's row security")?;
        Ok::<bool, crate::error::Error>(row.try_get(0)?)
    };
    let (mut sql, row_security, statistics) =
        tokio::try_join!(biased; column_settings(tx, orig, ghost), row_security, super::statistics::create_like_sql(tx, orig, ghost))?;
    // Enabled only: as on the root, forcing it waits for the swap, where it would otherwise
    // filter pg-ghost's own reads of the ghost.
    if row_security {
        sql.push(format!("ALTER TABLE {} ENABLE ROW LEVEL SECURITY", ghost.sql()));
    }
    sql.extend(statistics);
    Ok(sql)
}

/// The statements that create on the ghost's partition `ghost` the CHECK constraints and
/// foreign keys the original partition `orig` has of its own (see
/// `super::partitions::create_own_constraints` for when).
pub(super) async fn constraints_sql(tx: &impl GenericClient, orig: u32, ghost: &QualifiedName) -> Result<Vec<String>> {
    constraints(tx, orig, ghost, false).await
}

/// The statements that create on the ghost's partition `ghost` the primary key, unique and
/// exclusion constraints the original partition `orig` has of its own, under the temporary
/// names the swap turns back into theirs (see `super::partitions::create_own_indexes` for
/// when).
pub(super) async fn keys_sql(tx: &impl GenericClient, orig: u32, ghost: &QualifiedName) -> Result<Vec<String>> {
    constraints(tx, orig, ghost, true).await
}

/// The partition's own constraints (not its parent's copies) with `pg_get_constraintdef`
/// (`NOT VALID` included when it is): the index-backed ones (`keys`), under temporary names,
/// or the others; with their comments.
async fn constraints(tx: &impl GenericClient, orig: u32, ghost: &QualifiedName, keys: bool) -> Result<Vec<String>> {
    let rows = tx
        .query(
            "SELECT conname::text, pg_get_constraintdef(oid), contype IN ('p', 'u', 'x'),
                    obj_description(oid, 'pg_constraint'), obj_description(conindid, 'pg_class')
               FROM pg_constraint
              WHERE conrelid = $1 AND conparentid = 0 AND coninhcount = 0
                AND contype IN ('c', 'f', 'p', 'u', 'x') AND (contype IN ('p', 'u', 'x')) = $2 ORDER BY oid",
            &[&orig, &keys],
        )
        .await
        .context("reading a partition's own constraints")?;
    let g = ghost.sql();
    let mut sql = Vec::new();
    for r in rows {
        let name: String = r.try_get(0)?;
        let definition: String = r.try_get(1)?;
        let indexed: bool = r.try_get(2)?;
        let comment: Option<String> = r.try_get(3)?;
        let index_comment: Option<String> = r.try_get(4)?;
        let name = if indexed { temp_name(&name) } else { name };
        sql.push(format!("ALTER TABLE {g} ADD CONSTRAINT {} {definition}", ident(&name)));
        sql.extend(comment_sql(&name, ghost, comment.as_deref(), index_comment.as_deref().filter(|_| indexed)));
    }
    Ok(sql)
}

fn comment_sql(constraint: &str, table: &QualifiedName, comment: Option<&str>, index_comment: Option<&str>) -> Vec<String> {
    let mut sql = Vec::new();
    if let Some(c) = comment {
        sql.push(format!("COMMENT ON CONSTRAINT {} ON {} IS {}", ident(constraint), table.sql(), literal(c)));
    }
    if let Some(c) = index_comment {
        sql.push(format!("COMMENT ON INDEX {} IS {}", table.sibling(constraint.to_string()).sql(), literal(c)));
    }
    sql
}

/// Column defaults, storage, compression, statistics targets, options and comments where the
/// original partition's differ from what the ghost's partition took from its parent
/// (`PARTITION OF` takes the parent's defaults, storage and compression, but not its
/// statistics targets or comments).
async fn column_settings(tx: &impl GenericClient, orig: u32, ghost: &QualifiedName) -> Result<Vec<String>> {
    let rows = tx
        .query(
            "SELECT a.attname::text, pg_get_expr(od.adbin, od.adrelid), pg_get_expr(gd.adbin, gd.adrelid),
                    a.attstorage::text, g.attstorage::text, a.attcompression::text, g.attcompression::text,
                    coalesce(a.attstattarget::int4, -1), coalesce(g.attstattarget::int4, -1), coalesce(a.attoptions, '{}'), coalesce(g.attoptions, '{}'),
                    col_description(a.attrelid, a.attnum), col_description(g.attrelid, g.attnum)
               FROM pg_attribute a
               JOIN pg_attribute g ON g.attrelid = $2::text::regclass AND g.attname = a.attname AND NOT g.attisdropped
               LEFT JOIN pg_attrdef od ON od.adrelid = a.attrelid AND od.adnum = a.attnum AND a.attgenerated = ''
               LEFT JOIN pg_attrdef gd ON gd.adrelid = g.attrelid AND gd.adnum = g.attnum AND g.attgenerated = ''
              WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY a.attnum",
            &[&orig, &ghost.sql()],
        )
        .await
        .context("reading a partition's own column settings")?;
    let g = ghost.sql();
    let mut sql = Vec::new();
    for r in rows {
        let column: String = r.try_get(0)?;
        let c = ident(&column);
        let alter = |what: String| format!("ALTER TABLE {g} ALTER COLUMN {c} {what}");
        let (default, ghost_default): (Option<String>, Option<String>) = (r.try_get(1)?, r.try_get(2)?);
        if default != ghost_default {
            sql.push(alter(default.map_or("DROP DEFAULT".to_string(), |d| format!("SET DEFAULT {d}"))));
        }
        let (storage, ghost_storage): (String, String) = (r.try_get(3)?, r.try_get(4)?);
        if storage != ghost_storage {
            if let Some(s) = storage_name(&storage) {
                sql.push(alter(format!("SET STORAGE {s}")));
            }
        }
        let (compression, ghost_compression): (String, String) = (r.try_get(5)?, r.try_get(6)?);
        if compression != ghost_compression {
            sql.push(alter(format!("SET COMPRESSION {}", compression_name(&compression))));
        }
        let (target, ghost_target): (i32, i32) = (r.try_get(7)?, r.try_get(8)?);
        if target != ghost_target {
            sql.push(alter(format!("SET STATISTICS {target}")));
        }
        let (options, ghost_options): (Vec<String>, Vec<String>) = (r.try_get(9)?, r.try_get(10)?);
        if options != ghost_options {
            let keys = |o: &[String]| o.iter().filter_map(|o| o.split_once('=').map(|(k, _)| k.to_string())).collect::<Vec<_>>();
            let stale: Vec<String> = keys(&ghost_options).into_iter().filter(|k| !keys(&options).contains(k)).map(|k| ident(&k)).collect();
            if !stale.is_empty() {
                sql.push(alter(format!("RESET ({})", stale.join(", "))));
            }
            let set: Vec<String> = options.iter().filter_map(|o| o.split_once('=')).map(|(k, v)| format!("{} = {}", ident(k), literal(v))).collect();
            if !set.is_empty() {
                sql.push(alter(format!("SET ({})", set.join(", "))));
            }
        }
        let (comment, ghost_comment): (Option<String>, Option<String>) = (r.try_get(11)?, r.try_get(12)?);
        if comment != ghost_comment {
            let is = comment.as_deref().map_or("NULL".to_string(), literal);
            sql.push(format!("COMMENT ON COLUMN {g}.{c} IS {is}"));
        }
    }
    Ok(sql)
}

fn storage_name(code: &str) -> Option<&'static str> {
    match code {
        "p" => Some("PLAIN"),
        "e" => Some("EXTERNAL"),
        "m" => Some("MAIN"),
        "x" => Some("EXTENDED"),
        _ => None,
    }
}

fn compression_name(code: &str) -> &'static str {
    match code {
        "p" => "pglz",
        "l" => "lz4",
        _ => "DEFAULT",
    }
}

/// The index-backed constraints the ghost's partition `ghost` has of its own (as the ALTER
/// left them), to set aside until after the copy: the statements that drop them, and what
/// adds them again with their comments.
pub(super) async fn keys_to_set_aside(tx: &impl GenericClient, ghost: &QualifiedName) -> Result<(Vec<String>, Vec<Deferred>)> {
    let rows = tx
        .query(
            "SELECT conname::text, pg_get_constraintdef(oid), obj_description(oid, 'pg_constraint'), obj_description(conindid, 'pg_class')
               FROM pg_constraint
              WHERE conrelid = $1::text::regclass AND conparentid = 0 AND coninhcount = 0 AND contype IN ('p', 'u', 'x') ORDER BY oid",
            &[&ghost.sql()],
        )
        .await
        .with_context(|| format!("reading the own keys of the ghost's partition {ghost}"))?;
    let g = ghost.sql();
    let (mut drops, mut deferred) = (Vec::new(), Vec::new());
    for r in rows {
        let name: String = r.try_get(0)?;
        let definition: String = r.try_get(1)?;
        let comments = comment_sql(&name, ghost, r.try_get::<_, Option<String>>(2)?.as_deref(), r.try_get::<_, Option<String>>(3)?.as_deref());
        drops.push(format!("ALTER TABLE {g} DROP CONSTRAINT {}", ident(&name)));
        deferred.push(Deferred {
            sql: format!("ALTER TABLE {g} ADD CONSTRAINT {} {definition}", ident(&name)),
            then: (!comments.is_empty()).then(|| comments.join(";\n")),
            name,
            plain_index: false,
            foreign_key: false,
        });
    }
    Ok((drops, deferred))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_of_a_key_and_its_index() {
        let t = QualifiedName::new("public", "_orders_t1_gho");
        assert_eq!(
            comment_sql("_orders_t1_u_gho", &t, Some("it's"), Some("idx")),
            [
                r#"COMMENT ON CONSTRAINT "_orders_t1_u_gho" ON "public"."_orders_t1_gho" IS 'it''s'"#,
                r#"COMMENT ON INDEX "public"."_orders_t1_u_gho" IS 'idx'"#,
            ]
        );
        assert!(comment_sql("c", &t, None, None).is_empty());
        assert_eq!(storage_name("m"), Some("MAIN"));
        assert_eq!(compression_name(""), "DEFAULT");
    }
}
