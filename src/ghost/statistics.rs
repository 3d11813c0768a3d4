//! Extended statistics (`CREATE STATISTICS`) on the ghost: `LIKE ... INCLUDING STATISTICS`
//! copies them under generated names in the ghost's schema, without their target or owner.
//! Each is paired with the original's it came from and given what that one has, under the
//! temporary name the swap turns back into the original's (as for indexes).

use super::create::temp_name;
use crate::error::{Context, Result};
use crate::sql::{ident, QualifiedName};
use tokio_postgres::GenericClient;

struct Statistics {
    oid: u32,
    name: QualifiedName,
    /// What it is on: `pg_get_statisticsobjdef_columns` and the kinds.
    definition: (String, String),
    target: i32,
    owner: String,
}

async fn read(tx: &impl GenericClient, table_oid: u32) -> Result<Vec<Statistics>> {
    let rows = tx
        .query(
            "SELECT n.nspname::text, s.stxname::text, pg_get_statisticsobjdef_columns(s.oid), s.stxkind::text,
                    coalesce(s.stxstattarget::int4, -1), pg_get_userbyid(s.stxowner)::text, s.oid
               FROM pg_statistic_ext s JOIN pg_namespace n ON n.oid = s.stxnamespace
              WHERE s.stxrelid = $1 ORDER BY s.oid",
            &[&table_oid],
        )
        .await
        .context("reading extended statistics")?;
    rows.iter()
        .map(|r| {
            Ok(Statistics {
                name: QualifiedName::new(r.try_get::<_, String>(0)?, r.try_get::<_, String>(1)?),
                definition: (r.try_get(2)?, r.try_get(3)?),
                target: r.try_get(4)?,
                owner: r.try_get(5)?,
                oid: r.try_get(6)?,
            })
        })
        .collect::<Result<_>>()
        .context("reading extended statistics")
}

/// Gives the ghost's statistics the original's schema, target and owner, under temporary
/// names. Runs before the ALTER, while both tables still have the same columns.
pub async fn copy_from_original(tx: &impl GenericClient, orig_oid: u32, ghost_oid: u32) -> Result<()> {
    let orig = read(tx, orig_oid).await?;
    let mut ghost = read(tx, ghost_oid).await?;
    for o in &orig {
        let Some(at) = ghost.iter().position(|g| g.definition == o.definition) else { continue };
        let g = ghost.remove(at);
        let temp = temp_name(&o.name.name);
        let mut sql = vec![format!("ALTER STATISTICS {} RENAME TO {}", g.name.sql(), ident(&temp))];
        let mut current = g.name.sibling(temp);
        if g.name.schema != o.name.schema {
            sql.push(format!("ALTER STATISTICS {} SET SCHEMA {}", current.sql(), ident(&o.name.schema)));
            current = o.name.sibling(current.name.clone());
        }
        if o.target >= 0 {
            sql.push(format!("ALTER STATISTICS {} SET STATISTICS {}", current.sql(), o.target));
        }
        if g.owner != o.owner {
            sql.push(format!("ALTER STATISTICS {} OWNER TO {}", current.sql(), ident(&o.owner)));
        }
        for s in sql {
            tx.batch_execute(&s).await.with_context(|| format!("giving the ghost the statistics {} ({s})", o.name))?;
        }
    }
    Ok(())
}

/// Creates on `ghost` (a partition's ghost, which `PARTITION OF` gave none) the statistics
/// the partition `orig_oid` has, under temporary names, with their target, owner and comment.
/// Runs before the ALTER, while both tables still have the same columns.
pub async fn create_like(tx: &impl GenericClient, orig_oid: u32, ghost: &QualifiedName) -> Result<()> {
    for s in create_like_sql(tx, orig_oid, ghost).await? {
        tx.batch_execute(&s).await.with_context(|| format!("creating extended statistics on {ghost} ({s})"))?;
    }
    Ok(())
}

/// The statements of [`create_like`], read but not run.
pub async fn create_like_sql(tx: &impl GenericClient, orig_oid: u32, ghost: &QualifiedName) -> Result<Vec<String>> {
    let mut sql = Vec::new();
    for o in read(tx, orig_oid).await? {
        let temp = o.name.sibling(temp_name(&o.name.name));
        let row = tx
            .query_one("SELECT obj_description($1, 'pg_statistic_ext'), $2 = current_user::text", &[&o.oid, &o.owner])
            .await
            .context("reading a statistics object's comment")?;
        let (comment, ours): (Option<String>, bool) = (row.try_get(0)?, row.try_get(1)?);
        let kinds = kinds_sql(&o.definition.1);
        sql.push(format!("CREATE STATISTICS {}{kinds} ON {} FROM {}", temp.sql(), o.definition.0, ghost.sql()));
        if o.target >= 0 {
            sql.push(format!("ALTER STATISTICS {} SET STATISTICS {}", temp.sql(), o.target));
        }
        if !ours {
            sql.push(format!("ALTER STATISTICS {} OWNER TO {}", temp.sql(), ident(&o.owner)));
        }
        if let Some(c) = comment {
            sql.push(format!("COMMENT ON STATISTICS {} IS {}", temp.sql(), crate::sql::literal(&c)));
        }
    }
    Ok(sql)
}

/// `stxkind` as the kinds clause of `CREATE STATISTICS`: the kinds other than the expression
/// statistics (`e`), which PostgreSQL adds by itself and which alone takes no clause.
fn kinds_sql(stxkind: &str) -> String {
    let kinds: Vec<&str> = stxkind
        .trim_matches(|c| c == '{' || c == '}')
        .split(',')
        .filter_map(|k| match k {
            "d" => Some("ndistinct"),
            "f" => Some("dependencies"),
            "m" => Some("mcv"),
            _ => None,
        })
        .collect();
    match kinds.is_empty() {
        true => String::new(),
        false => format!(" ({})", kinds.join(", ")),
    }
}

/// The statistics on the partitions of `root` (not on `root` itself), by the partition's
/// oid: one query for the whole tree, as the swap reads them under its lock.
pub async fn names_on_partitions(tx: &impl GenericClient, root: u32) -> Result<Vec<(u32, QualifiedName)>> {
    let rows = tx
        .query(
            "SELECT s.stxrelid, n.nspname::text, s.stxname::text
               FROM pg_statistic_ext s JOIN pg_namespace n ON n.oid = s.stxnamespace
              WHERE s.stxrelid IN (SELECT relid FROM pg_partition_tree($1::oid::regclass) WHERE level > 0) ORDER BY s.oid",
            &[&root],
        )
        .await
        .context("reading the extended statistics of the partitions")?;
    rows.iter().map(|r| Ok((r.try_get(0)?, QualifiedName::new(r.try_get::<_, String>(1)?, r.try_get::<_, String>(2)?)))).collect()
}

/// The statistics of a table, schema-qualified, for the swap's renames.
pub async fn names(tx: &impl GenericClient, table_oid: u32) -> Result<Vec<QualifiedName>> {
    Ok(read(tx, table_oid).await?.into_iter().map(|s| s.name).collect())
}

#[cfg(test)]
mod tests {
    use super::kinds_sql;

    #[test]
    fn kinds_as_create_statistics_takes_them() {
        assert_eq!(kinds_sql("{d,f,m}"), " (ndistinct, dependencies, mcv)");
        assert_eq!(kinds_sql("{d,e}"), " (ndistinct)");
        assert_eq!(kinds_sql("{e}"), "");
    }
}
