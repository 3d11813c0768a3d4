//! The partition tree of a partitioned table, and the ghost's copy of it.
//!
//! The ghost of a partitioned table is a partitioned table with the same tree: the same
//! `PARTITION BY`, and each partition (at every level, the default ones too) created
//! `PARTITION OF` its parent's ghost with the same bounds, under a temporary name
//! ([`super::temp_name`]), with its own storage parameters, tablespace, comment, owner,
//! grants, replica identity, the indexes it has apart from its parent's, and what else it has
//! of its own (constraints, column settings, statistics, row security: see
//! `super::partition_own`). The ALTER runs
//! on the ghost's root only: PostgreSQL carries it to every partition, as a plain `ALTER
//! TABLE` on the original's root would. The swap gives every partition and every object on
//! it back the name it has on the original (see `crate::cutover::swap`).
//!
//! The tree is read when the ghost is built and again under the cut-over's lock: a
//! partition attached or detached in between (pg_partman's maintenance does that) has rows
//! the ghost never saw, or none it should keep, so the cut-over is abandoned then (see
//! [`check_unchanged`]). The lock on the root covers every partition: no attach or detach
//! can slip in between the check and the swap.

use super::autovacuum::{self, AutovacuumSettings};
use super::create::grant_statements;
use super::temp_name;
use crate::error::{Context, Error, ErrorKind, Result};
use crate::sql::{ident, literal, QualifiedName};
use tokio_postgres::GenericClient;

/// One partition, at any level below the root.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Partition {
    pub name: QualifiedName,
    /// The partitioned table it is a partition of (the root or another partition).
    pub parent: QualifiedName,
    /// `pg_get_expr(relpartbound)`: `FOR VALUES ...` or `DEFAULT`.
    pub bound: String,
    /// `pg_get_partkeydef` when it is itself partitioned.
    pub partition_by: Option<String>,
}

impl Partition {
    pub fn is_leaf(&self) -> bool {
        self.partition_by.is_none()
    }

    /// The name it has on the ghost until the swap: `_<name>_gho`, in its own schema.
    pub fn ghost_name(&self) -> QualifiedName {
        self.name.sibling(temp_name(&self.name.name))
    }
}

/// The partitions of a partitioned table, parents before their partitions.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartitionTree {
    /// The root's `pg_get_partkeydef`, e.g. `RANGE (created_at)`.
    pub partition_by: String,
    pub partitions: Vec<Partition>,
    /// The tree is new: the original is a plain table converted into a partitioned one
    /// (`crate::ghost::convert`); its partitions' names are free until the swap takes them.
    #[serde(default)]
    pub converted: bool,
}

impl PartitionTree {
    /// Reads the tree under `root`; `None` when `root` is not a partitioned table.
    pub async fn read(client: &impl GenericClient, root: u32) -> Result<Option<PartitionTree>> {
        // One query (it runs under the cut-over's lock too): the root's key on every row, and
        // one row with no partition when the root has none.
        let rows = client
            .query(
                "SELECT k.partition_by, n.nspname::text, c.relname::text, pn.nspname::text, pc.relname::text,
                        pg_get_expr(c.relpartbound, c.oid), pg_get_partkeydef(c.oid)
                   FROM (SELECT pg_get_partkeydef($1) AS partition_by) k
                   LEFT JOIN pg_partition_tree($1::oid::regclass) t ON k.partition_by IS NOT NULL AND t.level > 0
                   LEFT JOIN pg_class c ON c.oid = t.relid LEFT JOIN pg_namespace n ON n.oid = c.relnamespace
                   LEFT JOIN pg_class pc ON pc.oid = t.parentrelid LEFT JOIN pg_namespace pn ON pn.oid = pc.relnamespace
                  ORDER BY t.level, n.nspname, c.relname",
                &[&root],
            )
            .await
            .context("reading the partition tree")?;
        let Some(partition_by) = rows.first().map(|r| r.try_get::<_, Option<String>>(0)).transpose()?.flatten() else { return Ok(None) };
        let mut partitions = Vec::new();
        for r in &rows {
            let Some(schema) = r.try_get::<_, Option<String>>(1)? else { continue };
            partitions.push(Partition {
                name: QualifiedName::new(schema, r.try_get::<_, String>(2)?),
                parent: QualifiedName::new(r.try_get::<_, String>(3)?, r.try_get::<_, String>(4)?),
                bound: r.try_get(5)?,
                partition_by: r.try_get(6)?,
            });
        }
        Ok(Some(PartitionTree { partition_by, partitions, converted: false }))
    }

    /// The partitions' names level by level, the root's own partitions first: each level's
    /// parents are in the levels before it.
    pub fn levels(&self) -> Vec<Vec<QualifiedName>> {
        let mut depth: std::collections::HashMap<&QualifiedName, usize> = std::collections::HashMap::new();
        let mut levels: Vec<Vec<QualifiedName>> = Vec::new();
        // Parents come before their partitions in `partitions`.
        for p in &self.partitions {
            let d = depth.get(&p.parent).map_or(0, |d| d + 1);
            depth.insert(&p.name, d);
            if levels.len() <= d {
                levels.resize(d + 1, Vec::new());
            }
            levels[d].push(p.name.clone());
        }
        levels
    }

    /// The ghost's name of `table`, the root or one of its partitions.
    pub fn ghost_of(&self, table: &QualifiedName, root: &QualifiedName, ghost_root: &QualifiedName) -> QualifiedName {
        if table == root {
            ghost_root.clone()
        } else {
            table.sibling(temp_name(&table.name))
        }
    }
}

/// Under the cut-over's lock: the tree must be the one the ghost was built from. A
/// partition attached since holds rows the ghost never received (attaching writes nothing
/// to the stream); one detached took rows away that the ghost still has.
pub fn check_unchanged(root: &QualifiedName, built: &PartitionTree, now: Option<&PartitionTree>) -> Result<()> {
    if now == Some(built) {
        return Ok(());
    }
    let names = |t: Option<&PartitionTree>| -> Vec<String> {
        t.map(|t| t.partitions.iter().map(|p| format!("{} {}", p.name, p.bound)).collect()).unwrap_or_default()
    };
    let (before, after) = (names(Some(built)), names(now));
    let added: Vec<&String> = after.iter().filter(|p| !before.contains(p)).collect();
    let gone: Vec<&String> = before.iter().filter(|p| !after.contains(p)).collect();
    Err(Error::new(
        ErrorKind::SchemaChanged,
        format!(
            "the partitions of {root} changed during the run (attached or changed: {added:?}; detached or changed: {gone:?}); \
             the ghost was built with the partitions as they were, so the cut-over is abandoned and the original is untouched; \
             run pg-ghost again once the partitions stay put (pause pg_partman's maintenance for the run)"
        ),
    ))
}

/// Creates the ghost's partitions under `ghost_root`, parents first, each with what a
/// partition has of its own.
///
/// Level by level: every partition of a level created in one batch, then given what it has
/// of its own in another (which reads what it took from its parent's ghost, so the level
/// below is created only after). Each batch's reads go out together (pipelined), so a tree
/// costs a few round trips per level, not a few dozen per partition: across a network, those
/// were most of a run on a tree of hundreds of partitions.
pub(super) async fn create(
    tx: &impl GenericClient,
    tree: &PartitionTree,
    root: &QualifiedName,
    ghost_root: &QualifiedName,
) -> Result<()> {
    let oids = oids(tx, tree.partitions.iter().map(|p| p.name.clone())).await?;
    let partitions: Vec<(&Partition, u32)> = tree.partitions.iter().zip(oids).collect();
    for level in tree.levels() {
        let members: Vec<(&Partition, u32)> = partitions.iter().filter(|(p, _)| level.contains(&p.name)).copied().collect();
        let created = futures_util::future::try_join_all(members.iter().map(|(p, oid)| creation_sql(tx, tree, p, *oid, root, ghost_root))).await?;
        execute_all(tx, created.concat(), "creating the ghost's partitions").await?;
        let own = members.iter().map(|(p, oid)| async move { super::partition_own::create_sql(tx, *oid, &p.ghost_name()).await });
        let own = futures_util::future::try_join_all(own).await?;
        execute_all(tx, own.concat(), "giving the ghost's partitions what the original's have of their own").await?;
    }
    Ok(())
}

/// The statements that create the ghost's partition of `p` (whose OID is `oid`) with its
/// storage parameters, tablespace, comment, replica identity, owner and grants.
async fn creation_sql(
    tx: &impl GenericClient,
    tree: &PartitionTree,
    p: &Partition,
    oid: u32,
    root: &QualifiedName,
    ghost_root: &QualifiedName,
) -> Result<Vec<String>> {
    let parent = tree.ghost_of(&p.parent, root, ghost_root);
    let g = p.ghost_name();
    let props = async {
        tx.query_one(
            "SELECT coalesce(c.reloptions, '{}'), coalesce(t.reloptions, '{}'), ts.spcname::text,
                    obj_description(c.oid, 'pg_class'), c.relreplident::text,
                    pg_get_userbyid(c.relowner)::text, c.relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)
               FROM pg_class c LEFT JOIN pg_class t ON t.oid = c.reltoastrelid LEFT JOIN pg_tablespace ts ON ts.oid = c.reltablespace
              WHERE c.oid = $1",
            &[&oid],
        )
        .await
        .with_context(|| format!("reading partition {}", p.name))
    };
    let target = g.sql();
    let (row, grants) = tokio::try_join!(biased; props, grant_statements(tx, oid, &target))?;
    let options: Vec<String> = row.try_get(0)?;
    let toast: Vec<String> = row.try_get(1)?;
    let tablespace: Option<String> = row.try_get(2)?;
    let comment: Option<String> = row.try_get(3)?;
    let replident: String = row.try_get(4)?;
    let owner: String = row.try_get(5)?;
    let we_own: bool = row.try_get(6)?;
    let mut with: Vec<String> = options.iter().filter_map(|o| o.split_once('=')).map(|(k, v)| format!("{} = {}", ident(k), literal(v))).collect();
    with.extend(toast.iter().filter_map(|o| o.split_once('=')).map(|(k, v)| format!("toast.{} = {}", ident(k), literal(v))));
    let mut sql = format!("CREATE TABLE {} PARTITION OF {} {}", g.sql(), parent.sql(), p.bound);
    if let Some(by) = &p.partition_by {
        sql.push_str(&format!(" PARTITION BY {by}"));
    }
    if !with.is_empty() {
        sql.push_str(&format!(" WITH ({})", with.join(", ")));
    }
    if let Some(ts) = tablespace {
        sql.push_str(&format!(" TABLESPACE {}", ident(&ts)));
    }
    let mut statements = vec![sql];
    if let Some(c) = comment {
        statements.push(format!("COMMENT ON TABLE {} IS {}", g.sql(), literal(&c)));
    }
    match replident.as_str() {
        "f" => statements.push(format!("ALTER TABLE {} REPLICA IDENTITY FULL", g.sql())),
        "n" => statements.push(format!("ALTER TABLE {} REPLICA IDENTITY NOTHING", g.sql())),
        _ => {}
    }
    if !we_own {
        statements.push(format!("ALTER TABLE {} OWNER TO {}", g.sql(), ident(&owner)));
    }
    statements.extend(grants);
    Ok(statements)
}

/// Runs `statements` in one round trip, inside the caller's transaction. When the batch
/// fails, it is undone to a savepoint and run again one statement at a time, so that the
/// error names the statement that failed (the server's message alone may not name the
/// partition).
async fn execute_all(tx: &impl GenericClient, statements: Vec<String>, what: &str) -> Result<()> {
    if statements.is_empty() {
        return Ok(());
    }
    let batch = format!("SAVEPOINT pg_ghost_batch;\n{};\nRELEASE SAVEPOINT pg_ghost_batch", statements.join(";\n"));
    let Err(e) = tx.batch_execute(&batch).await else { return Ok(()) };
    let e = Error::from(e);
    if e.kind().is_lost_connection() {
        return Err(e.context(what.to_string()));
    }
    tx.batch_execute("ROLLBACK TO SAVEPOINT pg_ghost_batch").await.with_context(|| format!("{what}: undoing a failed batch"))?;
    for s in &statements {
        tx.batch_execute(s).await.with_context(|| format!("{what} ({s})"))?;
    }
    Err(e.context(format!("{what} ({} statements; one by one they went through)", statements.len())))
}

/// Creates on the ghost's partitions the indexes and index-backed constraints the original's
/// have of their own, once the root's indexes exist: created earlier, one equal to an index of
/// the root would be taken by it as its partition's copy (as PostgreSQL does when a partitioned
/// table's index finds an equal one on a partition), no longer of its own. Before the ALTER,
/// so that an index the ALTER creates on the root takes an equal one as it would on the
/// original. Reads the original only: all reads at once, then one batch, parents first.
pub(super) async fn create_own_indexes(tx: &impl GenericClient, tree: &PartitionTree) -> Result<()> {
    let oids = oids(tx, tree.partitions.iter().map(|p| p.name.clone())).await?;
    let reads = tree.partitions.iter().zip(oids).map(|(p, oid)| async move {
        let g = p.ghost_name();
        let (indexes, keys) = tokio::try_join!(biased; own_indexes(tx, oid), super::partition_own::keys_sql(tx, oid, &g))?;
        let mut sql = Vec::new();
        for (name, indexdef, comment) in indexes {
            let temp = temp_name(&name);
            sql.push(crate::sqltree::retarget_index(&indexdef, &temp, &g)?);
            sql.extend(comment.map(|c| index_comment(&g.sibling(temp), &c)));
        }
        sql.extend(keys);
        Ok::<_, Error>(sql)
    });
    let sql = futures_util::future::try_join_all(reads).await?;
    execute_all(tx, sql.concat(), "creating the indexes and keys the partitions have of their own on the ghost's").await
}

/// Creates on the ghost's partitions the CHECK constraints and foreign keys the original's
/// have of their own. Apart from the partitions' creation, so that the tables those foreign
/// keys reference are locked (see `super::locks`) only from here, not while 60 partitions are
/// created; before the ALTER, which changes them as it changes the original's.
pub(super) async fn create_own_constraints(tx: &impl GenericClient, tree: &PartitionTree) -> Result<()> {
    let oids = oids(tx, tree.partitions.iter().map(|p| p.name.clone())).await?;
    let reads = tree.partitions.iter().zip(oids).map(|(p, oid)| async move { super::partition_own::constraints_sql(tx, oid, &p.ghost_name()).await });
    let sql = futures_util::future::try_join_all(reads).await?;
    execute_all(tx, sql.concat(), "creating the constraints the partitions have of their own on the ghost's").await
}

/// Sets aside, until after the copy, what the ghost's leaf partitions have of their own that
/// would check every copied row (foreign keys, `NOT VALID` CHECKs), as the table's own are.
pub(super) async fn set_aside_own_constraints(tx: &impl GenericClient, tree: &PartitionTree) -> Result<Vec<super::Deferred>> {
    let leaves: Vec<QualifiedName> = tree.partitions.iter().filter(|p| p.is_leaf()).map(Partition::ghost_name).collect();
    let oids = oids(tx, leaves.iter().cloned()).await?;
    let reads = leaves.iter().zip(oids).map(|(g, oid)| super::create::foreign_keys_to_set_aside(tx, g, oid, false));
    let (drops, deferred): (Vec<Vec<String>>, Vec<Vec<super::Deferred>>) = futures_util::future::try_join_all(reads).await?.into_iter().unzip();
    execute_all(tx, drops.concat(), "setting aside the constraints of the ghost's partitions until after the copy").await?;
    Ok(deferred.concat())
}

/// The OIDs of `tables`, in their order, in one round trip (a tree may have thousands of
/// partitions).
async fn oids(tx: &impl GenericClient, tables: impl Iterator<Item = QualifiedName>) -> Result<Vec<u32>> {
    let names: Vec<String> = tables.map(|t| t.sql()).collect();
    let rows = tx
        .query("SELECT n::regclass::oid FROM unnest($1::text[]) WITH ORDINALITY AS t(n, i) ORDER BY i", &[&names])
        .await
        .context("looking up the partitions")?;
    rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
}

fn index_comment(index: &QualifiedName, comment: &str) -> String {
    format!("COMMENT ON INDEX {} IS {}", index.sql(), literal(comment))
}

/// The indexes of a partition that belong to no index of its parent (created on the
/// partition alone): (name, `pg_get_indexdef`, comment).
async fn own_indexes(tx: &impl GenericClient, partition: u32) -> Result<Vec<(String, String, Option<String>)>> {
    let rows = tx
        .query(
            "SELECT ci.relname::text, pg_get_indexdef(i.indexrelid), obj_description(i.indexrelid, 'pg_class')
               FROM pg_index i JOIN pg_class ci ON ci.oid = i.indexrelid
              WHERE i.indrelid = $1 AND NOT EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = i.indexrelid)
                AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid AND c.conrelid = i.indrelid)
              ORDER BY i.indexrelid",
            &[&partition],
        )
        .await
        .context("reading a partition's own indexes")?;
    rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))).collect()
}

/// Drops the indexes and index-backed constraints the ghost's partitions have of their own
/// (created before the ALTER, so that it changes them as it changes the original's), to be
/// built after the copy as the root's are: a unique one would otherwise meet, while the copy
/// runs, a stale row of a chunk next to the row the stream brought.
pub(super) async fn set_aside_own_indexes(tx: &impl GenericClient, tree: &PartitionTree) -> Result<Vec<super::Deferred>> {
    let ghosts: Vec<QualifiedName> = tree.partitions.iter().map(Partition::ghost_name).collect();
    let oids = oids(tx, ghosts.iter().cloned()).await?;
    let reads = ghosts.iter().zip(oids).map(|(g, oid)| async move {
        let (indexes, (mut drops, keys)) = tokio::try_join!(biased; own_indexes(tx, oid), super::partition_own::keys_to_set_aside(tx, g))?;
        let mut deferred = Vec::new();
        for (name, indexdef, comment) in indexes {
            let sql = crate::sqltree::retarget_index(&indexdef, &name, g)?;
            let index = g.sibling(name.clone());
            drops.push(format!("DROP INDEX {}", index.sql()));
            deferred.push(super::Deferred { then: comment.map(|c| index_comment(&index, &c)), name, sql, plain_index: false, foreign_key: false });
        }
        deferred.extend(keys);
        Ok::<_, Error>((drops, deferred))
    });
    let (drops, deferred): (Vec<Vec<String>>, Vec<Vec<super::Deferred>>) = futures_util::future::try_join_all(reads).await?.into_iter().unzip();
    execute_all(tx, drops.concat(), "setting aside the indexes and keys of the ghost's partitions until after the copy").await?;
    Ok(deferred.concat())
}

/// Turns autovacuum off on every leaf of the ghost (a partitioned table has no storage and
/// takes no storage parameters); returns each leaf's parameters as they were, by its ghost
/// name, for the swap to give back.
pub(super) async fn autovacuum_off(tx: &impl GenericClient, tree: &PartitionTree) -> Result<Vec<(QualifiedName, AutovacuumSettings)>> {
    let leaves: Vec<QualifiedName> = tree.partitions.iter().filter(|p| p.is_leaf()).map(Partition::ghost_name).collect();
    let oids = oids(tx, leaves.iter().cloned()).await?;
    let reads = leaves.iter().zip(oids).map(|(g, oid)| autovacuum::turn_off_sql(tx, g, oid));
    let (settings, sql): (Vec<AutovacuumSettings>, Vec<String>) = futures_util::future::try_join_all(reads).await?.into_iter().unzip();
    execute_all(tx, sql, "turning the autovacuum of the ghost's partitions off while pg-ghost writes them").await?;
    Ok(leaves.into_iter().zip(settings).collect())
}

/// Every index of a partitioned table's tree: (index oid, name, schema, table oid, the index
/// of the parent table it belongs to).
#[derive(Clone, Debug)]
pub struct TreeIndex {
    pub oid: u32,
    pub name: String,
    pub schema: String,
    pub table: u32,
    pub parent: Option<u32>,
}

pub async fn tree_indexes(tx: &impl GenericClient, root: u32) -> Result<Vec<TreeIndex>> {
    let rows = tx
        .query(
            "SELECT i.indexrelid, ci.relname::text, n.nspname::text, i.indrelid, h.inhparent
               FROM pg_partition_tree($1::oid::regclass) t
               JOIN pg_index i ON i.indrelid = t.relid
               JOIN pg_class ci ON ci.oid = i.indexrelid JOIN pg_namespace n ON n.oid = ci.relnamespace
               LEFT JOIN pg_inherits h ON h.inhrelid = i.indexrelid
              ORDER BY t.level, i.indexrelid",
            &[&root],
        )
        .await
        .context("reading the indexes of the partition tree")?;
    rows.iter()
        .map(|r| Ok(TreeIndex { oid: r.try_get(0)?, name: r.try_get(1)?, schema: r.try_get(2)?, table: r.try_get(3)?, parent: r.try_get(4)? }))
        .collect()
}

/// The oid of each table of the tree by name: the root's and its partitions'.
pub async fn tree_tables(tx: &impl GenericClient, root: u32) -> Result<Vec<(u32, QualifiedName)>> {
    let rows = tx
        .query(
            "SELECT c.oid, n.nspname::text, c.relname::text FROM pg_partition_tree($1::oid::regclass) t
               JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace",
            &[&root],
        )
        .await
        .context("reading the tables of the partition tree")?;
    rows.iter().map(|r| Ok((r.try_get(0)?, QualifiedName::new(r.try_get::<_, String>(1)?, r.try_get::<_, String>(2)?)))).collect()
}
