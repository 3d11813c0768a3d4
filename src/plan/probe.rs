//! What PostgreSQL does for each clause, asked of PostgreSQL itself: the clause runs on an
//! empty clone of the table (`CREATE TEMP TABLE ... (LIKE ... INCLUDING ALL)`, so it lives
//! only in this session and vanishes with it) in a transaction that is rolled back. Whether
//! the table was rewritten shows in its relfilenode; a scan in the transaction's own
//! statistics (`pg_stat_xact_all_tables.seq_scan`), which count a scan even of an empty
//! table; a new or rebuilt index in `pg_index`; the lock in `pg_locks`. Clones of the tables
//! a foreign key references stand in for them, so the lock it takes there shows too.

use super::clauses::{reference_clone, Clause, CLONE};
use crate::error::{Context, Error, Result};
use crate::sql::{ident, QualifiedName};
use std::collections::BTreeMap;
use tokio_postgres::Client;

/// Lock modes, weakest first.
pub const LOCK_MODES: [&str; 8] = [
    "AccessShareLock",
    "RowShareLock",
    "RowExclusiveLock",
    "ShareUpdateExclusiveLock",
    "ShareLock",
    "ShareRowExclusiveLock",
    "ExclusiveLock",
    "AccessExclusiveLock",
];

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Observation {
    /// False when the clause could not run on the clone (it names an object the clone has
    /// not, such as a foreign key or trigger of the original); `error` says why.
    pub observed: bool,
    pub error: Option<String>,
    pub rewrites: bool,
    pub scans: bool,
    pub builds_index: bool,
    pub rebuilds_indexes: bool,
    /// The strongest lock on the table, as `pg_locks` names it.
    pub lock: Option<String>,
    /// The strongest lock on each other table (referenced tables).
    pub other_locks: Vec<(String, String)>,
    /// Constraints the clause creates, by the names PostgreSQL gives them on the table.
    pub new_constraints: Vec<String>,
    /// `CREATE INDEX` statements of the indexes it creates, on the table.
    pub new_indexes: Vec<String>,
    /// A name PostgreSQL gave on the clone is as long as a name may be: cut, perhaps, where
    /// the table's own name (another length) would have been cut elsewhere or not at all.
    pub names_cut: bool,
}

/// Observes every clause; leaves nothing behind (the clones are dropped, and are temporary).
pub async fn observe(client: &Client, table: &QualifiedName, clauses: &[Clause]) -> Result<Vec<Observation>> {
    let clone = QualifiedName::new("pg_temp", CLONE);
    client
        .batch_execute(&format!("DROP TABLE IF EXISTS {0}; CREATE TEMP TABLE {1} (LIKE {2} INCLUDING ALL)", clone.sql(), ident(CLONE), table.sql()))
        .await
        .with_context(|| format!("creating an empty temporary clone of {table} (the role needs TEMPORARY on the database)"))?;
    give_original_index_names(client, table).await?;
    let mut out = Vec::new();
    for clause in clauses {
        out.push(observe_one(client, table, clause).await?);
    }
    client.batch_execute(&format!("DROP TABLE IF EXISTS {}", clone.sql())).await.context("dropping the clone")?;
    Ok(out)
}

async fn observe_one(client: &Client, table: &QualifiedName, clause: &Clause) -> Result<Observation> {
    let mut refs = Vec::new();
    for (i, referenced) in clause.references.iter().enumerate() {
        let name = reference_clone(i);
        let source = match referenced.schema.is_empty() {
            true => ident(&referenced.name),
            false => referenced.sql(),
        };
        let created = client.batch_execute(&format!("DROP TABLE IF EXISTS pg_temp.{0}; CREATE TEMP TABLE {0} (LIKE {source} INCLUDING ALL)", ident(&name))).await;
        if let Err(e) = created {
            return Ok(Observation { error: Some(format!("cannot read the referenced table {source}: {}", Error::from(e).message())), ..Default::default() });
        }
        refs.push((name, source));
    }
    client.batch_execute("BEGIN").await.context("starting the probe's transaction")?;
    let before = Snapshot::take(client).await?;
    let ran = client.batch_execute(&clause.on_clone).await;
    let result = match ran {
        Err(e) => Ok(Observation { error: Some(Error::from(e).message().to_string()), ..Default::default() }),
        Ok(()) => {
            let after = Snapshot::take(client).await?;
            let locks = locks(client).await?;
            let new_indexes: Vec<String> = after.indexes.iter().filter(|(oid, _)| !before.indexes.contains_key(oid)).map(|(_, (_, def))| on_table(def, table)).collect();
            let rebuilt = before.indexes.iter().any(|(oid, (node, _))| after.indexes.get(oid).is_some_and(|(n, _)| n != node));
            let rewrites = after.filenode != before.filenode;
            let new_constraints: Vec<&String> = after.constraints.iter().filter(|c| !before.constraints.contains(c)).collect();
            Ok(Observation {
                observed: true,
                error: None,
                rewrites,
                scans: after.seq_scan > before.seq_scan || !new_indexes.is_empty(),
                builds_index: !new_indexes.is_empty(),
                rebuilds_indexes: rebuilt || (rewrites && !before.indexes.is_empty()),
                lock: locks.get(CLONE).cloned(),
                other_locks: refs.iter().filter_map(|(name, source)| locks.get(name).map(|m| (source.clone(), m.clone()))).collect(),
                new_constraints: new_constraints.iter().map(|c| on_table(c, table)).collect(),
                names_cut: new_constraints.iter().any(|c| c.len() >= crate::sql::MAX_IDENT_BYTES),
                new_indexes,
            })
        }
    };
    client.batch_execute("ROLLBACK").await.context("rolling the probe back")?;
    for (name, _) in &refs {
        client.batch_execute(&format!("DROP TABLE IF EXISTS pg_temp.{}", ident(name))).await.context("dropping a referenced table's clone")?;
    }
    result
}

/// A name or definition on the clone, as it would read on the table: PostgreSQL derives
/// generated names from the table's name.
fn on_table(text: &str, table: &QualifiedName) -> String {
    let temp_prefix = format!("pg_temp.{CLONE}");
    text.replace(&temp_prefix, &table.sql()).replace(CLONE, &table.name)
}

struct Snapshot {
    filenode: Option<u32>,
    seq_scan: i64,
    /// index oid → (relfilenode, definition)
    indexes: BTreeMap<u32, (Option<u32>, String)>,
    constraints: Vec<String>,
}

impl Snapshot {
    async fn take(client: &Client) -> Result<Snapshot> {
        let clone = format!("pg_temp.{CLONE}");
        let row = client
            .query_one(
                "SELECT pg_relation_filenode(c.oid)::oid, coalesce(s.seq_scan, 0)
                   FROM pg_class c LEFT JOIN pg_stat_xact_all_tables s ON s.relid = c.oid
                  WHERE c.oid = $1::text::regclass",
                &[&clone],
            )
            .await
            .context("reading the clone's file and scans")?;
        let indexes = client
            .query(
                "SELECT indexrelid, pg_relation_filenode(indexrelid)::oid, pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = $1::text::regclass",
                &[&clone],
            )
            .await
            .context("reading the clone's indexes")?;
        let constraints = client
            .query("SELECT conname::text FROM pg_constraint WHERE conrelid = $1::text::regclass ORDER BY 1", &[&clone])
            .await
            .context("reading the clone's constraints")?;
        Ok(Snapshot {
            filenode: row.try_get(0)?,
            seq_scan: row.try_get(1)?,
            indexes: indexes.iter().map(|r| Ok((r.try_get(0)?, (r.try_get(1)?, r.try_get(2)?)))).collect::<Result<_>>()?,
            constraints: constraints.iter().map(|r| r.try_get(0).map_err(Error::from)).collect::<Result<_>>()?,
        })
    }
}

/// The strongest lock this session holds on each temporary table.
async fn locks(client: &Client) -> Result<BTreeMap<String, String>> {
    let rows = client
        .query(
            "SELECT c.relname::text, l.mode FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
              WHERE l.pid = pg_backend_pid() AND l.granted AND c.relnamespace = pg_my_temp_schema() AND c.relkind IN ('r', 'p')",
            &[],
        )
        .await
        .context("reading the probe's locks")?;
    let mut strongest: BTreeMap<String, String> = BTreeMap::new();
    for r in rows {
        let (rel, mode): (String, String) = (r.try_get(0)?, r.try_get(1)?);
        let entry = strongest.entry(rel).or_insert_with(|| mode.clone());
        if strength(&mode) > strength(entry) {
            *entry = mode;
        }
    }
    Ok(strongest)
}

pub fn strength(mode: &str) -> usize {
    LOCK_MODES.iter().position(|m| *m == mode).unwrap_or(0)
}

/// The clone's indexes take the names of the original's they copy, so that clauses naming
/// one (`DROP CONSTRAINT orders_pkey`, `REPLICA IDENTITY USING INDEX ...`) find it.
async fn give_original_index_names(client: &Client, table: &QualifiedName) -> Result<()> {
    let rows = client
        .query(
            "SELECT DISTINCT ON (c.indexrelid) c.indexrelid::regclass::text, oc.relname::text
               FROM pg_index c JOIN pg_index o
                 ON o.indrelid = $1::text::regclass
                AND (o.indkey::text, o.indclass::text, o.indoption::text, o.indisunique, o.indisprimary,
                     coalesce(pg_get_expr(o.indexprs, o.indrelid), ''), coalesce(pg_get_expr(o.indpred, o.indrelid), ''))
                  = (c.indkey::text, c.indclass::text, c.indoption::text, c.indisunique, c.indisprimary,
                     coalesce(pg_get_expr(c.indexprs, c.indrelid), ''), coalesce(pg_get_expr(c.indpred, c.indrelid), ''))
               JOIN pg_class oc ON oc.oid = o.indexrelid
              WHERE c.indrelid = $2::text::regclass
              ORDER BY c.indexrelid, o.indexrelid",
            &[&table.sql(), &format!("pg_temp.{CLONE}")],
        )
        .await
        .context("pairing the clone's indexes with the original's")?;
    for r in rows {
        let (clone_index, name): (String, String) = (r.try_get(0)?, r.try_get(1)?);
        // Two identical indexes on the original pair with the same clone index; the second
        // rename would fail, and the first name is as good.
        let _ = client.batch_execute(&format!("ALTER INDEX {clone_index} RENAME TO {}", ident(&name))).await;
    }
    Ok(())
}
