//! The statements of the swap, read from the catalog inside the locked transaction.
//!
//! Afterwards the table under the original name must be what a plain `ALTER TABLE` would
//! have left: every index, constraint and identity sequence under its original name. The
//! original's objects step aside first (`_<name>_del`), then the ghost's take their names:
//! an object that came from the original (`_<name>_gho`) gets `<name>` back; one the ALTER
//! created gets the name PostgreSQL would have chosen on the original (the ghost table's
//! name prefix replaced by the original's).

use crate::dependents::materialized::Built;
use crate::dependents::{self, Validation};
use crate::error::{Context, Error, ErrorKind, Result};
use crate::ghost::partitions::{self, PartitionTree};
use crate::ghost::{statistics, temp_name, Ghost};
use std::collections::HashMap;
use crate::names::Names;
use crate::schema::TableInfo;
use crate::schema_names::SchemaNames;
use crate::sql::{fit_ident, ident, literal, QualifiedName};
use std::time::{Duration, Instant};
use tokio_postgres::GenericClient;

/// Where a name goes: the original's objects step aside with this.
pub fn old_object_name(name: &str) -> String {
    fit_ident(&format!("_{name}_del"))
}

/// The name a ghost object takes at the swap, or None when it keeps its own.
pub fn final_name(object: &str, ghost_table: &str, orig_table: &str, orig_names: &[String]) -> Option<String> {
    if let Some(original) = orig_names.iter().find(|n| temp_name(n) == object) {
        return Some(original.clone());
    }
    object
        .strip_prefix(ghost_table)
        .filter(|rest| rest.starts_with('_'))
        .map(|rest| fit_ident(&format!("{orig_table}{rest}")))
}

/// The names the new table's indexes and constraints end with, as a plain ALTER names them:
/// those of the original's objects come back as they were, then each one the ALTER created
/// takes the name PostgreSQL would have chosen on the original, which skips names already in
/// use there (`orders_amount_check` taken: `orders_amount_check1`) and in the schema: an
/// index's name among the schema's relations and constraints, a constraint's among its
/// constraints (an index of another table named `orders_pad_key` made the swap fail, after
/// the whole copy, on "already exists").
#[derive(Default)]
struct NewNames {
    taken: std::collections::HashSet<String>,
    /// The schema's other objects, outside both tables.
    schema: SchemaNames,
}

impl NewNames {
    fn in_schema(schema: SchemaNames) -> NewNames {
        NewNames { taken: Default::default(), schema }
    }

    /// A name that stays: the original's, or one the ghost kept as given.
    fn keep(&mut self, name: &str) {
        self.taken.insert(name.to_string());
    }

    /// The name for an object the ALTER created, whose name on the original would have been
    /// `wanted` had it been free: PostgreSQL's label (`_check`, `_key`, ...) numbered from 1.
    /// `index`: the name of an index (a relation), else of a constraint.
    fn choose(&mut self, wanted: &str, index: bool) -> String {
        let taken = |n: &str| self.taken.contains(n) || self.schema.taken(n, index);
        let candidate = crate::sql::first_free_name(wanted, taken);
        self.taken.insert(candidate.clone());
        candidate
    }
}

async fn names(tx: &impl GenericClient, sql: &str, oid: u32) -> Result<Vec<String>> {
    let rows = tx.query(sql, &[&oid]).await?;
    rows.iter().map(|r| r.try_get::<_, String>(0).map_err(Into::into)).collect()
}

const INDEXES: &str = "SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = $1 ORDER BY 1";
/// Checks, foreign keys and, from PostgreSQL 18, not-null constraints (which have names).
const PLAIN_CONSTRAINTS: &str = "SELECT conname::text FROM pg_constraint WHERE conrelid = $1 AND contype IN ('c', 'f', 'n') ORDER BY 1";

/// Identity sequences of a table: (column, sequence's relation name).
async fn identity_sequences(tx: &impl GenericClient, oid: u32) -> Result<Vec<(String, String, String)>> {
    let rows = tx
        .query(
            "SELECT a.attname::text, s.relname::text, n.nspname::text
               FROM pg_attribute a
               JOIN pg_depend d ON d.refobjid = a.attrelid AND d.refobjsubid = a.attnum AND d.classid = 'pg_class'::regclass AND d.deptype = 'i'
               JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
               JOIN pg_namespace n ON n.oid = s.relnamespace
              WHERE a.attrelid = $1 AND a.attidentity <> '' AND NOT a.attisdropped",
            &[&oid],
        )
        .await
        .context("reading identity sequences")?;
    rows.iter()
        .map(|r| Ok((r.try_get::<_, String>(0)?, r.try_get::<_, String>(1)?, r.try_get::<_, String>(2)?)))
        .collect()
}

/// Serial sequences: owned by a column (`OWNED BY`) without being an identity.
async fn owned_sequences(tx: &impl GenericClient, oid: u32) -> Result<Vec<(String, QualifiedName)>> {
    let rows = tx
        .query(
            "SELECT a.attname::text, n.nspname::text, s.relname::text
               FROM pg_depend d
               JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
               JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
               JOIN pg_namespace n ON n.oid = s.relnamespace
              WHERE d.refobjid = $1 AND d.classid = 'pg_class'::regclass AND d.deptype = 'a'",
            &[&oid],
        )
        .await
        .context("reading serial sequences")?;
    rows.iter()
        .map(|r| Ok((r.try_get::<_, String>(0)?, QualifiedName::new(r.try_get::<_, String>(1)?, r.try_get::<_, String>(2)?))))
        .collect()
}

/// What the swap did.
#[derive(Clone, Debug, Default)]
pub struct Swapped {
    pub statements: Vec<String>,
    /// Foreign keys moved `NOT VALID`, to validate after the commit.
    pub validations: Vec<Validation>,
    /// Objects that depend on the table and moved with it.
    pub dependents: usize,
    /// Reading the dependents' definitions under the lock.
    pub dependents_read: Duration,
    /// Publications that listed the original and now list the new table.
    pub publications: Vec<String>,
}

/// What the swap reads of both tables' catalog, besides their dependents.
struct Catalog {
    orig_owned_sequences: Vec<(String, QualifiedName)>,
    ghost_owned_sequences: Vec<(String, QualifiedName)>,
    orig_identity: Vec<(String, String, String)>,
    ghost_identity: Vec<(String, String, String)>,
    orig_indexes: Vec<String>,
    orig_statistics: Vec<QualifiedName>,
    ghost_indexes: Vec<String>,
    ghost_constraints: Vec<String>,
    ghost_statistics: Vec<QualifiedName>,
    partitions: Option<PartitionRenames>,
    schema_names: SchemaNames,
}

impl Catalog {
    /// Every query goes out at once (pipelined on the one connection).
    async fn read(tx: &impl GenericClient, orig: &TableInfo, ghost: &Ghost) -> Result<Catalog> {
        let partitions = async {
            match &ghost.partitions {
                Some(tree) if tree.converted => Ok(Some(converted_partition_renames(tx, orig, ghost, tree).await?)),
                Some(tree) => Ok(Some(partition_renames(tx, orig, ghost, tree).await?)),
                None => Ok(None),
            }
        };
        let (orig_sql, both) = (orig.name.sql(), [orig.oid, ghost.oid]);
        let (
            orig_owned_sequences,
            ghost_owned_sequences,
            orig_identity,
            ghost_identity,
            orig_indexes,
            orig_statistics,
            ghost_indexes,
            ghost_constraints,
            ghost_statistics,
            partitions,
            schema_names,
        ) = tokio::try_join!(
            biased;
            owned_sequences(tx, orig.oid),
            owned_sequences(tx, ghost.oid),
            identity_sequences(tx, orig.oid),
            identity_sequences(tx, ghost.oid),
            names(tx, INDEXES, orig.oid),
            statistics::names(tx, orig.oid),
            names(tx, INDEXES, ghost.oid),
            names(tx, PLAIN_CONSTRAINTS, ghost.oid),
            statistics::names(tx, ghost.oid),
            partitions,
            SchemaNames::read(tx, &orig_sql, &both),
        )?;
        Ok(Catalog {
            orig_owned_sequences,
            ghost_owned_sequences,
            orig_identity,
            ghost_identity,
            orig_indexes,
            orig_statistics,
            ghost_indexes,
            ghost_constraints,
            ghost_statistics,
            partitions,
            schema_names,
        })
    }
}

/// Runs the swap inside the caller's transaction, which holds ACCESS EXCLUSIVE on both
/// tables and on the tables whose foreign keys reference the original.
///
/// The dependents' definitions are read here, under the lock, so that one created during
/// the run is not missed. A view or trigger that reads a column the ALTER renames must come
/// out with the new name: the original's columns are renamed the same way first, and back
/// on the old table at the end, all inside this transaction.
///
/// `materialized` holds the materialized views built on the ghost; it is `None` for the
/// rehearsal that swaps straight back (`--test-on-replica`): the dependents then stay where
/// they are.
pub async fn swap(tx: &impl GenericClient, orig: &TableInfo, ghost: &Ghost, old_table: &str, materialized: Option<&[Built]>) -> Result<Swapped> {
    let move_dependents = materialized.is_some();
    let materialized = materialized.unwrap_or_default();
    let o = &orig.name;
    let g = &ghost.name;
    let renamed: Vec<&(String, String)> = match move_dependents {
        true => ghost.mapping.carried.iter().filter(|(from, to)| from != to).collect(),
        false => Vec::new(),
    };
    let started = Instant::now();
    if !renamed.is_empty() {
        let renames: Vec<String> = renamed
            .iter()
            .map(|(from, to)| format!("ALTER TABLE {} RENAME COLUMN {} TO {}", o.sql(), ident(from), ident(to)))
            .collect();
        tx.batch_execute(&renames.join(";\n")).await.context("renaming the original's columns as the ALTER does")?;
    }
    let own_publication = Names::for_table(o, orig.oid).publication;
    let deps_read = async {
        match move_dependents {
            true => dependents::read(tx, orig.oid, &own_publication).await,
            false => Ok(dependents::Dependents::default()),
        }
    };
    // Every read goes out at once (see `dependents::read`): under the lock, round trips
    // are what writers wait for, and a partitioned table's would grow with its partitions.
    // The catalog's queries may run before, under or after the dependents' empty
    // search_path: they read names and OIDs only, nothing the server deparses.
    let (mut deps, catalog) = tokio::try_join!(biased; deps_read, Catalog::read(tx, orig, ghost))?;
    // A column the ALTER drops loses its labels, as under a plain ALTER; the others' are
    // read under the names the ALTER gives them (the original's columns were renamed above).
    deps.retain_column_labels(|c| ghost.mapping.carried.iter().any(|(_, to)| to == c));
    let dependents_read = started.elapsed();
    check_materialized_built(&deps, materialized)?;
    let mut sql = deps.before_renames(o);

    // Sequences first: serial ownership moves before anything could drop the original.
    for (column, seq) in &catalog.orig_owned_sequences {
        if let Some(ghost_col) = ghost.mapping.ghost_name_of(column) {
            sql.push(format!("ALTER SEQUENCE {} OWNED BY {}.{}", seq.sql(), g.sql(), ident(ghost_col)));
        }
    }
    // Serial columns the ALTER added: their sequences take the name a plain ALTER gives them.
    let mut sequence_renames = Vec::new();
    for (_, seq) in &catalog.ghost_owned_sequences {
        if let Some(name) = final_name(&seq.name, &g.name, &o.name, &[]) {
            sequence_renames.push((seq.clone(), name));
        }
    }
    // The ghost's GENERATED ALWAYS columns were BY DEFAULT while it was fed (see
    // `Ghost::identity_always`); they become what the ALTER made them.
    for column in &ghost.identity_always {
        sql.push(format!("ALTER TABLE {} ALTER COLUMN {} SET GENERATED ALWAYS", g.sql(), ident(column)));
    }
    // The ghost's autovacuum was off while pg-ghost wrote it; the new table gets back its own
    // settings (the original's, or what the ALTER made them).
    if let Some(settings) = &ghost.autovacuum {
        sql.extend(crate::ghost::autovacuum::restore_sql(g, settings));
    }
    let mut identity_renames = Vec::new();
    for (ghost_col, ghost_seq, schema) in &catalog.ghost_identity {
        let source = ghost.mapping.carried.iter().find(|(_, gc)| gc == ghost_col).map(|(s, _)| s);
        let orig_seq = source.and_then(|s| catalog.orig_identity.iter().find(|(c, _, _)| c == s));
        let ghost_seq_name = QualifiedName::new(schema.clone(), ghost_seq.clone());
        if let Some((_, orig_seq, orig_schema)) = orig_seq {
            let orig_seq_name = QualifiedName::new(orig_schema.clone(), orig_seq.clone());
            sql.push(carry_sequence_value(&orig_seq_name, &ghost_seq_name));
            sql.push(format!("ALTER SEQUENCE {} RENAME TO {}", orig_seq_name.sql(), ident(&old_object_name(orig_seq))));
            identity_renames.push((ghost_seq_name, orig_seq.clone()));
        } else if let Some(name) = final_name(ghost_seq, &g.name, &o.name, &[]) {
            identity_renames.push((ghost_seq_name, name));
        }
    }

    // The original steps aside.
    let Catalog { orig_indexes, orig_statistics, ghost_indexes, ghost_constraints, ghost_statistics, partitions, schema_names, .. } = catalog;
    for index in &orig_indexes {
        sql.push(format!("ALTER INDEX {} RENAME TO {}", o.sibling(index.clone()).sql(), ident(&old_object_name(index))));
    }
    for s in &orig_statistics {
        sql.push(format!("ALTER STATISTICS {} RENAME TO {}", s.sql(), ident(&old_object_name(&s.name))));
    }
    sql.push(format!("ALTER TABLE {} RENAME TO {}", o.sql(), ident(old_table)));
    if let Some(p) = &partitions {
        sql.extend(p.aside.iter().cloned());
    }

    // The ghost takes the original's names.
    if let Some(temp) = &ghost.temp_key_index {
        sql.push(format!("DROP INDEX {}", g.sibling(temp.clone()).sql()));
    }
    let ghost_indexes: Vec<String> = ghost_indexes.into_iter().filter(|i| Some(i) != ghost.temp_key_index.as_ref()).collect();
    let mut new_names = NewNames::in_schema(schema_names);
    for index in &ghost_indexes {
        match orig_indexes.iter().find(|n| &temp_name(n) == index) {
            Some(original) => new_names.keep(original),
            None if final_name(index, &g.name, &o.name, &[]).is_none() => new_names.keep(index),
            None => {}
        }
    }
    for constraint in ghost_constraints.iter().filter(|c| final_name(c, &g.name, &o.name, &[]).is_none()) {
        new_names.keep(constraint);
    }
    for index in &ghost_indexes {
        let new = match orig_indexes.iter().find(|n| &temp_name(n) == index) {
            Some(original) => Some(original.clone()),
            None => final_name(index, &g.name, &o.name, &[]).map(|wanted| new_names.choose(&wanted, true)),
        };
        if let Some(new) = new {
            sql.push(format!("ALTER INDEX {} RENAME TO {}", g.sibling(index.clone()).sql(), ident(&new)));
        }
    }
    for constraint in &ghost_constraints {
        if let Some(wanted) = final_name(constraint, &g.name, &o.name, &[]) {
            let new = new_names.choose(&wanted, false);
            sql.push(format!("ALTER TABLE {} RENAME CONSTRAINT {} TO {}", g.sql(), ident(constraint), ident(&new)));
        }
    }
    let orig_statistics_names: Vec<String> = orig_statistics.iter().map(|s| s.name.clone()).collect();
    for s in ghost_statistics {
        if let Some(new) = final_name(&s.name, &g.name, &o.name, &orig_statistics_names) {
            sql.push(format!("ALTER STATISTICS {} RENAME TO {}", s.sql(), ident(&new)));
        }
    }
    if let Some(p) = partitions {
        sql.extend(p.take);
    }
    for (seq, new) in identity_renames.into_iter().chain(sequence_renames) {
        sql.push(format!("ALTER SEQUENCE {} RENAME TO {}", seq.sql(), ident(&new)));
    }
    sql.push(format!("ALTER TABLE {} RENAME TO {}", g.sql(), ident(&o.name)));
    sql.extend(materialized.iter().flat_map(Built::rename_sql));
    sql.extend(deps.after_renames(o)?);
    // Last built first: one built on another goes before it.
    sql.extend(materialized.iter().rev().map(Built::drop_sql));
    let old = o.sibling(old_table.to_string());
    for (from, to) in &renamed {
        sql.push(format!("ALTER TABLE {} RENAME COLUMN {} TO {}", old.sql(), ident(to), ident(from)));
    }

    // One round trip: every statement here runs while writers wait on the lock.
    tx.batch_execute(&sql.join(";\n")).await.context("swapping the tables")?;
    let partitions_publications = deps.partitions.iter().flat_map(|p| &p.dependents.publications);
    let publications = deps.publications.iter().chain(partitions_publications).map(|p| p.publication.clone()).collect();
    Ok(Swapped { statements: sql, validations: deps.validations(), dependents: deps.count(), dependents_read, publications })
}

/// The renames of a partitioned table's partitions and of what is on them.
struct PartitionRenames {
    /// The original's partitions and their indexes step aside (`_<name>_del`).
    aside: Vec<String>,
    /// The ghost's take the names: each partition its original's, each index of a partition
    /// the name of the original's index it corresponds to (the partition's index of the same
    /// index of the parent, or the partition's own index), or, for one the ALTER created, the
    /// name PostgreSQL gives it on the original's partition. A foreign key the ALTER added is
    /// copied onto each partition under the parent's name, so it follows the parent's.
    take: Vec<String>,
}

async fn partition_renames(tx: &impl GenericClient, orig: &TableInfo, ghost: &Ghost, tree: &PartitionTree) -> Result<PartitionRenames> {
    let (o, g) = (&orig.name, &ghost.name);
    let (orig_tables, ghost_tables, orig_indexes, ghost_indexes, orig_statistics, ghost_statistics, last) = tokio::try_join!(
        biased;
        partitions::tree_tables(tx, orig.oid),
        partitions::tree_tables(tx, ghost.oid),
        partitions::tree_indexes(tx, orig.oid),
        partitions::tree_indexes(tx, ghost.oid),
        statistics::names_on_partitions(tx, orig.oid),
        statistics::names_on_partitions(tx, ghost.oid),
        partition_constraints_and_names(tx, orig, ghost, tree),
    )?;
    let orig_tables: HashMap<u32, QualifiedName> = orig_tables.into_iter().collect();
    let ghost_tables: HashMap<u32, QualifiedName> = ghost_tables.into_iter().collect();
    // The original partition each ghost table stands for, by oid.
    let orig_oid_of = |name: &QualifiedName| orig_tables.iter().find(|(_, n)| *n == name).map(|(oid, _)| *oid);
    let mut counterpart: HashMap<u32, u32> = HashMap::new();
    counterpart.insert(ghost.oid, orig.oid);
    for p in &tree.partitions {
        let ghost_oid = ghost_tables.iter().find(|(_, n)| **n == p.ghost_name()).map(|(oid, _)| *oid);
        match (ghost_oid, orig_oid_of(&p.name)) {
            (Some(go), Some(oo)) => counterpart.insert(go, oo),
            _ => return Err(Error::internal(format!("partition {} has no counterpart on the ghost", p.name))),
        };
    }
    let mut aside = Vec::new();
    for i in orig_indexes.iter().filter(|i| i.table != orig.oid) {
        aside.push(format!("ALTER INDEX {} RENAME TO {}", QualifiedName::new(i.schema.clone(), i.name.clone()).sql(), ident(&old_object_name(&i.name))));
    }
    for p in &tree.partitions {
        aside.push(format!("ALTER TABLE {} RENAME TO {}", p.name.sql(), ident(&old_object_name(&p.name.name))));
    }

    let root_names: Vec<String> = orig_indexes.iter().filter(|i| i.table == orig.oid).map(|i| i.name.clone()).collect();
    // Ghost index -> the original's index it stands for; the temporary key's are dropped.
    let mut matched: HashMap<u32, u32> = HashMap::new();
    let mut dropped: Vec<u32> = Vec::new();
    let mut take = Vec::new();
    for gi in &ghost_indexes {
        let Some(&orig_table) = counterpart.get(&gi.table) else { continue };
        if gi.table == ghost.oid {
            if Some(&gi.name) == ghost.temp_key_index.as_ref() {
                dropped.push(gi.oid);
            } else if let Some(name) = final_name(&gi.name, &g.name, &o.name, &root_names) {
                if let Some(oi) = orig_indexes.iter().find(|i| i.table == orig.oid && i.name == name) {
                    matched.insert(gi.oid, oi.oid);
                }
            }
            continue; // renamed with the root's indexes
        }
        if gi.parent.is_some_and(|p| dropped.contains(&p)) {
            dropped.push(gi.oid);
            continue;
        }
        let (Some(ghost_table), Some(orig_table_name)) = (ghost_tables.get(&gi.table), orig_tables.get(&orig_table)) else {
            return Err(Error::internal(format!("index {} of the ghost's partition tree has no table", gi.name)));
        };
        let own: Vec<String> =
            orig_indexes.iter().filter(|i| i.table == orig_table && i.parent.is_none()).map(|i| i.name.clone()).collect();
        let counterpart_index = match gi.parent {
            Some(parent) => matched
                .get(&parent)
                .and_then(|op| orig_indexes.iter().find(|i| i.table == orig_table && i.parent == Some(*op))),
            None => own.iter().find(|n| temp_name(n) == gi.name).and_then(|n| orig_indexes.iter().find(|i| i.table == orig_table && &i.name == n)),
        };
        let new = match counterpart_index {
            Some(oi) => {
                matched.insert(gi.oid, oi.oid);
                Some(oi.name.clone())
            }
            None => final_name(&gi.name, &ghost_table.name, &orig_table_name.name, &[]),
        };
        if let Some(new) = new.filter(|n| *n != gi.name) {
            take.push(format!("ALTER INDEX {} RENAME TO {}", QualifiedName::new(gi.schema.clone(), gi.name.clone()).sql(), ident(&new)));
        }
    }
    // A partition's own statistics objects: the original's step aside, the ghost's take
    // their names.
    for (_, s) in &orig_statistics {
        aside.push(format!("ALTER STATISTICS {} RENAME TO {}", s.sql(), ident(&old_object_name(&s.name))));
    }
    for (table, s) in ghost_statistics {
        let Some(&orig_table) = counterpart.get(&table) else { continue };
        let original = orig_statistics.iter().find(|(t, o)| *t == orig_table && temp_name(&o.name) == s.name);
        if let Some((_, o)) = original {
            take.push(format!("ALTER STATISTICS {} RENAME TO {}", s.sql(), ident(&o.name)));
        }
    }
    take.extend(last);
    Ok(PartitionRenames { aside, take })
}

/// A plain table converted into a partitioned one: the original has no partitions to step
/// aside; each of the ghost's takes the name the DBA gave it, and its indexes the names
/// PostgreSQL gives them under that name (those of the temporary key go with it).
async fn converted_partition_renames(tx: &impl GenericClient, orig: &TableInfo, ghost: &Ghost, tree: &PartitionTree) -> Result<PartitionRenames> {
    let (ghost_tables, ghost_indexes, last) = tokio::try_join!(
        biased;
        partitions::tree_tables(tx, ghost.oid),
        partitions::tree_indexes(tx, ghost.oid),
        partition_constraints_and_names(tx, orig, ghost, tree),
    )?;
    let ghost_tables: HashMap<u32, QualifiedName> = ghost_tables.into_iter().collect();
    let mut dropped: Vec<u32> =
        ghost_indexes.iter().filter(|i| i.table == ghost.oid && Some(&i.name) == ghost.temp_key_index.as_ref()).map(|i| i.oid).collect();
    let mut take = Vec::new();
    for gi in ghost_indexes.iter().filter(|i| i.table != ghost.oid) {
        if gi.parent.is_some_and(|p| dropped.contains(&p)) {
            dropped.push(gi.oid);
            continue;
        }
        let Some(table) = ghost_tables.get(&gi.table) else { continue };
        let Some(p) = tree.partitions.iter().find(|p| &p.ghost_name() == table) else {
            return Err(Error::internal(format!("the ghost's partition {table} is not one pg-ghost created")));
        };
        if let Some(new) = final_name(&gi.name, &table.name, &p.name.name, &[]).filter(|n| *n != gi.name) {
            take.push(format!("ALTER INDEX {} RENAME TO {}", QualifiedName::new(gi.schema.clone(), gi.name.clone()).sql(), ident(&new)));
        }
    }
    take.extend(last);
    Ok(PartitionRenames { aside: Vec::new(), take })
}

/// The last renames of a partitioned ghost's partitions: the foreign keys on them, their
/// storage parameters given back, then their names.
async fn partition_constraints_and_names(tx: &impl GenericClient, orig: &TableInfo, ghost: &Ghost, tree: &PartitionTree) -> Result<Vec<String>> {
    let (o, g) = (&orig.name, &ghost.name);
    let mut take = Vec::new();
    // Foreign keys the ALTER added reach the partitions under the parent's name. One query
    // for the whole tree: this runs under the lock, where each round trip holds up writers.
    let rows = tx
        .query(
            "SELECT n.nspname::text, c.relname::text, con.conname::text
               FROM pg_partition_tree($1::oid::regclass) t
               JOIN pg_constraint con ON con.conrelid = t.relid AND con.contype = 'f' AND con.conparentid <> 0
               JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE t.level > 0 ORDER BY 3",
            &[&ghost.oid],
        )
        .await
        .context("reading the foreign keys of the ghost's partitions")?;
    let mut foreign_keys: HashMap<QualifiedName, Vec<String>> = HashMap::new();
    for r in rows {
        let table = QualifiedName::new(r.try_get::<_, String>(0)?, r.try_get::<_, String>(1)?);
        foreign_keys.entry(table).or_default().push(r.try_get(2)?);
    }
    for p in &tree.partitions {
        let gp = p.ghost_name();
        for name in foreign_keys.get(&gp).into_iter().flatten() {
            if let Some(new) = final_name(name, &g.name, &o.name, &[]) {
                take.push(format!("ALTER TABLE {} RENAME CONSTRAINT {} TO {}", gp.sql(), ident(name), ident(&new)));
            }
        }
    }
    // Each leaf gets back its storage parameters, then its name.
    for (leaf, settings) in &ghost.partition_autovacuum {
        take.extend(crate::ghost::autovacuum::restore_sql(leaf, settings));
    }
    for p in &tree.partitions {
        take.push(format!("ALTER TABLE {} RENAME TO {}", p.ghost_name().sql(), ident(&p.name.name)));
    }
    Ok(take)
}

/// The materialized views read under the lock must be those built before it: one created
/// since cannot be built now, with every writer waiting.
pub(crate) fn check_materialized_built(deps: &dependents::Dependents, built: &[Built]) -> Result<()> {
    let mut now: Vec<&QualifiedName> = deps.materialized_views.iter().map(|m| &m.name).collect();
    let mut before: Vec<&QualifiedName> = built.iter().map(|b| &b.view.name).collect();
    now.sort_by_key(|n| (&n.schema, &n.name));
    before.sort_by_key(|n| (&n.schema, &n.name));
    if now == before {
        return Ok(());
    }
    let list = |names: &[&QualifiedName]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ");
    Err(Error::new(
        ErrorKind::SchemaChanged,
        format!(
            "the materialized views that read the table changed during the run (built before the cut-over: [{}]; now: [{}]); the cut-over is abandoned and the original is untouched",
            list(&before),
            list(&now)
        ),
    ))
}

/// The tables other than the original whose foreign keys reference it: the swap moves those
/// keys, which takes ACCESS EXCLUSIVE on each, so the cut-over locks them up front.
pub async fn referencing_tables(client: &impl GenericClient, orig_oid: u32) -> Result<Vec<QualifiedName>> {
    let rows = client
        .query(
            "SELECT DISTINCT n.nspname::text, c.relname::text
               FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE con.contype = 'f' AND con.confrelid = $1 AND con.conrelid <> $1 AND con.conparentid = 0
              ORDER BY 1, 2",
            &[&orig_oid],
        )
        .await
        .context("reading the tables that reference the original")?;
    rows.iter().map(|r| Ok(QualifiedName::new(r.try_get::<_, String>(0)?, r.try_get::<_, String>(1)?))).collect()
}

/// Sets the ghost's identity sequence to where the original's stands: a statement of the
/// swap's batch, before the original's sequence steps aside.
fn carry_sequence_value(from: &QualifiedName, to: &QualifiedName) -> String {
    let (from, to) = (literal(&from.sql()), literal(&to.sql()));
    format!(
        "SELECT setval({to}::regclass, coalesce(pg_sequence_last_value({from}::regclass), s.seqstart),
                       pg_sequence_last_value({from}::regclass) IS NOT NULL)
           FROM pg_sequence s WHERE s.seqrelid = {from}::regclass"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_back_or_follow_the_original() {
        let orig = vec!["orders_pkey".to_string(), "orders_email_idx".to_string()];
        assert_eq!(final_name("_orders_pkey_gho", "_orders_gho", "orders", &orig).as_deref(), Some("orders_pkey"));
        assert_eq!(final_name("_orders_gho_n_check", "_orders_gho", "orders", &orig).as_deref(), Some("orders_n_check"));
        assert_eq!(final_name("_orders_gho_id_seq", "_orders_gho", "orders", &orig).as_deref(), Some("orders_id_seq"));
        assert_eq!(final_name("my_own_idx", "_orders_gho", "orders", &orig), None);
        assert_eq!(final_name("_orders_ghostly", "_orders_gho", "orders", &orig), None);
        assert_eq!(old_object_name("orders_pkey"), "_orders_pkey_del");
    }

    #[test]
    fn a_name_the_alter_created_skips_names_in_use_as_postgres_does() {
        let schema = SchemaNames { relations: ["orders_pad_key".to_string()].into(), constraints: ["orders_x_check".to_string()].into() };
        let mut names = NewNames::in_schema(schema);
        names.keep("orders_amount_check");
        names.keep("orders_pkey");
        assert_eq!(names.choose("orders_amount_check", false), "orders_amount_check1");
        assert_eq!(names.choose("orders_amount_check1", false), "orders_amount_check2");
        assert_eq!(names.choose("orders_n_check", false), "orders_n_check");
        assert_eq!(names.choose("orders_n_check", false), "orders_n_check1");
        // Another table's index is in the way of an index, not of a constraint; another's
        // constraint of both.
        assert_eq!(names.choose("orders_pad_key", true), "orders_pad_key1");
        assert_eq!(names.choose("orders_pad_check", false), "orders_pad_check");
        assert_eq!(names.choose("orders_x_check", false), "orders_x_check1");
    }
}
