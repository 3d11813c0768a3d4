//! Building the partitioned ghost of a plain table (see [`super::convert`] for the flags).
//!
//! The ghost is created `PARTITION BY` the new key and gets the DBA's partitions under
//! temporary names before anything else, so that every index made on it afterwards reaches
//! them. PostgreSQL allows no primary key or unique constraint on a partitioned table that
//! lacks a partition key column, yet the ALTER must find the original's to drop it: such a
//! constraint is made on the ghost as a stand-in with the partition key's columns added,
//! under the name the ALTER's `DROP CONSTRAINT` is redirected to. After the ALTER, a stand-in
//! still there means the ALTER kept a key PostgreSQL cannot have: refused, naming it (in the
//! trial, before anything is created). A unique index that is no constraint, or an exclusion
//! constraint, cannot be replaced by the ALTER and is refused at once.

use super::convert::Conversion;
use super::partitions::{Partition, PartitionTree};
use crate::error::{Context, Error, Result};
use crate::schema::TableInfo;
use crate::sql::{ident, ident_list, QualifiedName};
use tokio_postgres::GenericClient;

/// The tree the ghost of a converted table gets: the DBA's partitions, by their final names,
/// each with the table as its parent (bounds are read once they are created).
pub(super) fn tree(c: &Conversion, table: &QualifiedName) -> PartitionTree {
    PartitionTree {
        partition_by: c.partition_by.clone(),
        partitions: c
            .partitions
            .iter()
            .map(|p| Partition { name: p.final_name(table), parent: table.clone(), bound: String::new(), partition_by: None })
            .collect(),
        converted: true,
    }
}

/// Creates the ghost's partitions from the DBA's statements, and records each one's bound as
/// PostgreSQL prints it.
pub(super) async fn create_partitions(tx: &impl GenericClient, c: &Conversion, table: &QualifiedName, ghost: &QualifiedName, tree: &mut PartitionTree) -> Result<()> {
    for (p, node) in c.partitions.iter().zip(tree.partitions.iter_mut()) {
        let sql = p.ghost_sql(table, ghost)?;
        tx.batch_execute(&sql).await.map_err(|e| {
            let e = Error::from(e);
            Error::refused(format!("PostgreSQL rejected partition {} on the ghost table: {} ({sql})", node.name, e.message()))
        })?;
        let row = tx
            .query_one("SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE oid = $1::text::regclass", &[&node.ghost_name().sql()])
            .await
            .with_context(|| format!("reading the bound of partition {}", node.name))?;
        node.bound = row.try_get::<_, Option<String>>(0)?.unwrap_or_default();
    }
    Ok(())
}

/// Each partition of the DBA's statements with its bound as PostgreSQL prints it, in this
/// session: the statements are run on a temporary partitioned table with the original's
/// columns, in a transaction that is rolled back (for `--resume`, which compares them with
/// the earlier run's ghost).
pub async fn statement_bounds(client: &tokio_postgres::Client, orig: &TableInfo, c: &Conversion) -> Result<Vec<(QualifiedName, String)>> {
    client.batch_execute("BEGIN").await.context("starting to read the partitions' bounds")?;
    let read = read_statement_bounds(client, orig, c).await;
    let ended = client.batch_execute("ROLLBACK").await.context("ending the read of the partitions' bounds");
    let bounds = read?;
    ended?;
    Ok(bounds)
}

async fn read_statement_bounds(client: &tokio_postgres::Client, orig: &TableInfo, c: &Conversion) -> Result<Vec<(QualifiedName, String)>> {
    let scratch = QualifiedName::new("pg_temp", "pg_ghost_bounds");
    client
        .batch_execute(&format!("CREATE TABLE {} (LIKE {}) PARTITION BY {}", scratch.sql(), orig.name.sql(), c.partition_by))
        .await
        .context("making a temporary partitioned table to read the partitions' bounds")?;
    let mut out = Vec::new();
    for (i, p) in c.partitions.iter().enumerate() {
        let name = p.final_name(&orig.name);
        let temp = QualifiedName::new("pg_temp", format!("pg_ghost_bound_{i}"));
        let sql = p.sql_as(&temp, &scratch)?;
        client.batch_execute(&sql).await.map_err(|e| {
            let e = Error::from(e);
            Error::refused(format!("PostgreSQL rejected partition {name}: {} ({})", e.message(), p.sql))
        })?;
        let row = client
            .query_one("SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE oid = $1::text::regclass", &[&temp.sql()])
            .await
            .with_context(|| format!("reading the bound of partition {name}"))?;
        out.push((name, row.try_get::<_, Option<String>>(0)?.unwrap_or_default()));
    }
    Ok(out)
}

/// The bounds of a converted ghost's partitions as they are, by final name (`None` for one
/// that is gone).
pub async fn ghost_bounds(client: &impl GenericClient, tree: &PartitionTree) -> Result<Vec<(QualifiedName, Option<String>)>> {
    let mut out = Vec::new();
    for p in &tree.partitions {
        let row = client
            .query_opt("SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE oid = to_regclass($1)", &[&p.ghost_name().sql()])
            .await
            .with_context(|| format!("reading the bound of the ghost's partition {}", p.ghost_name()))?;
        out.push((p.name.clone(), row.map(|r| r.try_get::<_, Option<String>>(0)).transpose()?.flatten()));
    }
    Ok(out)
}

/// The rows of the original no partition takes, as a condition over its columns; `None`
/// with a DEFAULT partition. Read from the ghost's partitions before the ALTER, when their
/// columns carry the original's names.
pub(super) async fn unrouted_condition(tx: &impl GenericClient, tree: &PartitionTree) -> Result<Option<String>> {
    if tree.partitions.iter().any(|p| p.bound == "DEFAULT") {
        return Ok(None);
    }
    let mut takes = Vec::new();
    for p in &tree.partitions {
        let row = tx
            .query_one("SELECT pg_get_partition_constraintdef($1::text::regclass)", &[&p.ghost_name().sql()])
            .await
            .with_context(|| format!("reading what partition {} takes", p.name))?;
        match row.try_get::<_, Option<String>>(0)? {
            Some(c) => takes.push(format!("coalesce(({c}), false)")),
            None => return Ok(None), // takes every row
        }
    }
    Ok(Some(format!("NOT ({})", if takes.is_empty() { "false".to_string() } else { takes.join(" OR ") })))
}

/// The rows of the original that no partition would take.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Unrouted {
    pub count: i64,
    /// The keys of the first few, as `(k1, k2)`.
    pub samples: Vec<String>,
}

impl Unrouted {
    /// The refusal of `pg-ghost run` when there are any.
    pub fn refusal(&self, orig: &TableInfo) -> Option<Error> {
        (self.count > 0).then(|| {
            Error::refused(format!(
                "{} row(s) of {} would have no partition (key ({}) = {}{}): add partitions that take them, or a DEFAULT partition; nothing was created",
                self.count,
                orig.name,
                ident_list(orig.key.columns.iter().map(String::as_str)),
                self.samples.join(", "),
                if self.count > self.samples.len() as i64 { ", ..." } else { "" }
            ))
        })
    }
}

/// Counts the rows of the original that match `condition` (see [`unrouted_condition`]) and
/// names the first few by their key. One statement that reads the whole table, holding
/// nothing but its ACCESS SHARE lock: it runs outside the trial ghost's transaction, whose
/// foreign keys lock the tables they reference against writes. The session's
/// `statement_timeout` bounds it.
pub async fn count_unrouted(client: &impl GenericClient, orig: &TableInfo, condition: &str) -> Result<Unrouted> {
    let keys: Vec<String> = orig.key.columns.iter().map(|k| format!("{}::text", ident(k))).collect();
    let key_list = ident_list(orig.key.columns.iter().map(String::as_str));
    let sql = format!(
        "SELECT count(*) OVER (), {} FROM {} WHERE {condition} ORDER BY {key_list} LIMIT 5",
        keys.join(" || ', ' || "),
        orig.name.sql()
    );
    tracing::info!(table = %orig.name, "counting the rows no partition would take (one read of the whole table)");
    let rows = client.query(sql.as_str(), &[]).await.map_err(|e| {
        let e = Error::from(e);
        match e.sqlstate() {
            Some("57014") => e.context(format!(
                "counting the rows of {} that no partition would take (one read of the whole table) was cancelled, by statement_timeout or by hand",
                orig.name
            )),
            _ => e.context("counting the rows no partition would take"),
        }
    })?;
    let Some(first) = rows.first() else { return Ok(Unrouted { count: 0, samples: Vec::new() }) };
    let count: i64 = first.try_get(0)?;
    let samples = rows.iter().map(|r| r.try_get::<_, Option<String>>(1).map(|k| format!("({})", k.unwrap_or_default()))).collect::<std::result::Result<_, _>>()?;
    Ok(Unrouted { count, samples })
}

/// Refuses the conversion when rows of the original would have no partition, counting them
/// and naming a few by their key.
pub(super) async fn refuse_unrouted(client: &impl GenericClient, orig: &TableInfo, condition: &str) -> Result<()> {
    match count_unrouted(client, orig, condition).await?.refusal(orig) {
        Some(refusal) => Err(refusal),
        None => Ok(()),
    }
}

/// What the trial ghost of a conversion found, as far as it got (filled as it goes, so a
/// trial refused midway still tells what it learnt before).
#[derive(Clone, Debug, Default)]
pub struct ConversionFindings {
    /// Each partition by its final name, with its bound as PostgreSQL prints it; empty until
    /// they are created on the trial ghost.
    pub partitions: Vec<(QualifiedName, String)>,
    /// The rows no partition takes, as a condition over the original's columns; `None` with a
    /// DEFAULT partition, or before the partitions are created.
    pub unrouted: Option<String>,
    /// The original's primary key and unique constraints that lack partition key columns;
    /// `None` until read.
    pub lacking: Option<Vec<StandIn>>,
    /// Those of `lacking` the ALTER left in place; `None` until the ALTER ran.
    pub kept: Option<Vec<StandIn>>,
}

/// A primary key or unique constraint of the original that lacks partition key columns,
/// made on the ghost with them added until the ALTER replaces it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StandIn {
    /// The original index's name (its constraint's temporary name on the ghost is
    /// [`super::temp_name`] of it).
    pub index: String,
    pub constraint: String,
    pub kind: &'static str,
    pub columns: Vec<String>,
    pub missing: Vec<String>,
}

/// The original's unique indexes and constraints that lack partition key columns: a primary
/// key or unique constraint on plain columns gets a stand-in; anything else is refused.
pub(super) async fn stand_ins(tx: &impl GenericClient, orig: &TableInfo, partition_columns: &[String]) -> Result<Vec<StandIn>> {
    let rows = tx
        .query(
            "SELECT ci.relname::text, c.conname::text, c.contype::text, i.indexprs IS NULL AND i.indpred IS NULL,
                    ARRAY(SELECT a.attname::text FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(n, o)
                            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n
                           WHERE k.o <= i.indnkeyatts ORDER BY k.o),
                    ARRAY(SELECT x FROM unnest($2::text[]) x WHERE x NOT IN (
                          SELECT a.attname::text FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(n, o)
                            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n WHERE k.o <= i.indnkeyatts))
               FROM pg_index i JOIN pg_class ci ON ci.oid = i.indexrelid
               LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid AND c.contype IN ('p', 'u', 'x')
              WHERE i.indrelid = $1 AND (i.indisunique OR i.indisexclusion)
              ORDER BY i.indexrelid",
            &[&orig.oid, &partition_columns],
        )
        .await
        .context("reading the original's unique indexes")?;
    let mut out = Vec::new();
    let mut refused = Vec::new();
    for r in rows {
        let index: String = r.try_get(0)?;
        let constraint: Option<String> = r.try_get(1)?;
        let contype: Option<String> = r.try_get(2)?;
        let plain: bool = r.try_get(3)?;
        let columns: Vec<String> = r.try_get(4)?;
        let missing: Vec<String> = r.try_get(5)?;
        if missing.is_empty() && contype.as_deref() != Some("x") {
            continue;
        }
        let missing_list = ident_list(missing.iter().map(String::as_str));
        match (constraint, contype.as_deref()) {
            (Some(constraint), Some(t @ ("p" | "u"))) if plain => out.push(StandIn {
                index,
                constraint,
                kind: if t == "p" { "PRIMARY KEY" } else { "UNIQUE" },
                columns,
                missing,
            }),
            (Some(constraint), Some("x")) => refused.push(format!(
                "exclusion constraint {} (PostgreSQL 15 allows none on a partitioned table; drop it before the run)",
                ident(&constraint)
            )),
            _ => refused.push(format!(
                "unique index {} lacks partition key column(s) {missing_list} (PostgreSQL allows no such index on a partitioned table, and an ALTER TABLE cannot drop an index: drop it before the run, or make it a constraint)",
                ident(&index)
            )),
        }
    }
    if !refused.is_empty() {
        return Err(Error::refused(format!("{} cannot become a partitioned table as it is: {}", orig.name, refused.join("; "))));
    }
    Ok(out)
}

/// Makes the stand-in of each constraint on the ghost, under its temporary name.
pub(super) async fn create_stand_ins(tx: &impl GenericClient, ghost: &QualifiedName, stand_ins: &[StandIn]) -> Result<()> {
    for s in stand_ins {
        let cols = ident_list(s.columns.iter().chain(&s.missing).map(String::as_str));
        // UNIQUE even for a primary key: a stand-in must not make the partition key's columns
        // NOT NULL, which a key the ALTER puts in its place may not do.
        tx.batch_execute(&format!("ALTER TABLE {} ADD CONSTRAINT {} UNIQUE ({cols})", ghost.sql(), ident(&super::temp_name(&s.index))))
            .await
            .with_context(|| format!("standing in for {} on the partitioned ghost", ident(&s.constraint)))?;
    }
    Ok(())
}

/// After the ALTER: the stand-ins it left in place (each should be replaced by a key with
/// the partition key).
pub(super) async fn kept_stand_ins(tx: &impl GenericClient, ghost_oid: u32, stand_ins: &[StandIn]) -> Result<Vec<StandIn>> {
    let mut kept = Vec::new();
    for s in stand_ins {
        let row = tx
            .query_one("SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = $1 AND conname = $2)", &[&ghost_oid, &super::temp_name(&s.index)])
            .await
            .context("looking for the constraints the ALTER was to replace")?;
        if row.try_get::<_, bool>(0)? {
            kept.push(s.clone());
        }
    }
    Ok(kept)
}

impl StandIn {
    /// `primary key "t_pkey" ("id") lacks partition key column(s) "at"`
    pub fn describe(&self) -> String {
        format!(
            "{} {} ({}) lacks partition key column(s) {}",
            if self.kind == "PRIMARY KEY" { "primary key" } else { "unique constraint" },
            ident(&self.constraint),
            ident_list(self.columns.iter().map(String::as_str)),
            ident_list(self.missing.iter().map(String::as_str))
        )
    }

    /// The clauses that replace it with one that includes the partition key.
    pub fn replacement(&self) -> String {
        let cols = ident_list(self.columns.iter().chain(&self.missing).map(String::as_str));
        format!("DROP CONSTRAINT {}, ADD {} ({cols})", ident(&self.constraint), self.kind)
    }
}

/// The refusal when the ALTER left keys PostgreSQL does not allow on a partitioned table.
pub(super) fn kept_refusal(table: &QualifiedName, partition_by: &str, kept: &[StandIn]) -> Option<Error> {
    let first = kept.first()?;
    let list: Vec<String> = kept.iter().map(StandIn::describe).collect();
    Some(Error::refused(format!(
        "{table} cannot be partitioned by {partition_by} as it is: {}; PostgreSQL requires every primary key and unique constraint of a partitioned table \
         to include the partition key: replace it in --alter, e.g. --alter {}; nothing was created",
        list.join("; "),
        crate::inspect::shell_quote(&first.replacement()),
    )))
}
