//! `--test-on-replica`'s swap: the real swap, then straight back, inside the cut-over's one
//! locked transaction.
//!
//! Running [`swap::swap`] itself exercises exactly the statements a production cut-over runs
//! (a name clash or a sequence that cannot move fails here as it would there). Undoing it
//! before the commit means no session ever sees the ghost under the original's name, and a
//! subscription's apply worker, which finds its tables by name, can never write into the
//! ghost.
//!
//! The undo does not mirror the swap statement by statement, so that it cannot drift from
//! it: the names of both tables' relations (tables, indexes, identity and serial sequences)
//! and plain constraints, and the owners of serial sequences, are read before the swap and
//! put back by OID afterwards. The result is read again and must equal what was read
//! before; anything else fails the transaction, which rolls back with the original as it was.
//! The one change that stays is the one the swap makes for good: the ghost's temporary key
//! index is dropped.
//!
//! The revert window ([`record_names`], [`revert`]) uses the same undo across two
//! transactions: the names are recorded inside the forward swap's transaction, before its
//! renames, and put back by the revert's, which also carries identity sequences back.

use super::swap;
use crate::dependents::back::MoveBack;
use crate::error::{Context, Error, Result};
use crate::ghost::Ghost;
use crate::schema::TableInfo;
use crate::sql::{fit_ident, ident, QualifiedName};
use std::collections::HashMap;
use tokio_postgres::GenericClient;

/// A relation of either table: the table itself, an index, an identity or serial sequence.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Relation {
    oid: u32,
    kind: String,
    name: QualifiedName,
}

/// A CHECK or NOT NULL-like constraint, not backed by an index (those follow their index's
/// name). Foreign keys are left out: the swap never renames one (a ghost's carries the
/// original's name), and those that move between the tables are dropped and added again by
/// `crate::dependents`, under new OIDs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Constraint {
    oid: u32,
    table: u32,
    name: String,
    /// A partition's copy of its parent's (`coninhcount > 0`): renaming the parent's renames
    /// it, and it cannot be renamed on its own.
    #[serde(default)]
    inherited: bool,
}

/// A serial sequence and the column that owns it (`OWNED BY`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Owner {
    sequence: u32,
    table: u32,
    column: String,
}

/// An extended statistics object on either table (`CREATE STATISTICS`): the swap renames the
/// original's aside and gives the ghost's their names.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Statistic {
    oid: u32,
    name: QualifiedName,
}

/// What the undo restores: read before the swap, compared after the undo.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct NamesOf {
    relations: Vec<Relation>,
    constraints: Vec<Constraint>,
    owners: Vec<Owner>,
    #[serde(default)]
    statistics: Vec<Statistic>,
}

/// Both tables and, for partitioned tables, every partition of their trees: the swap renames
/// partitions too.
const TREES: &str = "WITH trees AS (SELECT $1::oid AS relid UNION SELECT $2::oid
                      UNION SELECT relid FROM pg_partition_tree($1::oid::regclass)
                      UNION SELECT relid FROM pg_partition_tree($2::oid::regclass))";

const RELATIONS: &str = "SELECT c.oid, c.relkind::text, n.nspname::text, c.relname::text
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.oid IN (SELECT relid FROM trees)
         OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid IN (SELECT relid FROM trees))
         OR (c.relkind = 'S' AND c.oid IN (SELECT objid FROM pg_depend
                                            WHERE classid = 'pg_class'::regclass AND refclassid = 'pg_class'::regclass
                                              AND refobjid IN (SELECT relid FROM trees) AND deptype IN ('a', 'i')))
      ORDER BY c.oid";

/// A constraint trigger's (`t`) is not renamed by the swap: it moves with the triggers, which
/// the swap creates again on the new table and the revert on the old one; foreign keys (`f`),
/// see [`Constraint`].
const CONSTRAINTS: &str = "SELECT oid, conrelid, conname::text, coninhcount > 0 FROM pg_constraint
      WHERE conrelid IN (SELECT relid FROM trees) AND contype NOT IN ('p', 'u', 'x', 't', 'f') ORDER BY oid";

const STATISTICS: &str = "SELECT s.oid, n.nspname::text, s.stxname::text
       FROM pg_statistic_ext s JOIN pg_namespace n ON n.oid = s.stxnamespace
      WHERE s.stxrelid IN (SELECT relid FROM trees) ORDER BY s.oid";

const OWNERS: &str = "SELECT d.objid, d.refobjid, a.attname::text
       FROM pg_depend d
       JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
       JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
      WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
        AND d.refobjid IN (SELECT relid FROM trees) AND d.deptype = 'a'
      ORDER BY d.objid";

/// One of the statements above, over both trees.
fn over_trees(sql: &str) -> String {
    format!("{TREES} {sql}")
}

impl NamesOf {
    async fn read(tx: &impl GenericClient, orig: u32, ghost: u32) -> Result<NamesOf> {
        // Under the lock (the swap's, or the revert's): the four reads go out together.
        let rows = |sql: &'static str, what: &'static str| async move {
            tx.query(&over_trees(sql), &[&orig, &ghost]).await.with_context(|| format!("reading {what}"))
        };
        let (relations, constraints, owners, statistics) = tokio::try_join!(
            biased;
            rows(RELATIONS, "the names of both tables' relations"),
            rows(CONSTRAINTS, "the names of both tables' constraints"),
            rows(OWNERS, "the owners of serial sequences"),
            rows(STATISTICS, "the names of both tables' statistics objects"),
        )?;
        let relations = relations
            .iter()
            .map(|r| {
                Ok(Relation {
                    oid: r.try_get(0)?,
                    kind: r.try_get(1)?,
                    name: QualifiedName::new(r.try_get::<_, String>(2)?, r.try_get::<_, String>(3)?),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let constraints = constraints
            .iter()
            .map(|r| Ok(Constraint { oid: r.try_get(0)?, table: r.try_get(1)?, name: r.try_get(2)?, inherited: r.try_get(3)? }))
            .collect::<Result<Vec<_>>>()?;
        let owners = owners
            .iter()
            .map(|r| Ok(Owner { sequence: r.try_get(0)?, table: r.try_get(1)?, column: r.try_get(2)? }))
            .collect::<Result<Vec<_>>>()?;
        let statistics = statistics
            .iter()
            .map(|r| Ok(Statistic { oid: r.try_get(0)?, name: QualifiedName::new(r.try_get::<_, String>(1)?, r.try_get::<_, String>(2)?) }))
            .collect::<Result<Vec<_>>>()?;
        Ok(NamesOf { relations, constraints, owners, statistics })
    }

    fn relation(&self, oid: u32) -> Option<&Relation> {
        self.relations.iter().find(|r| r.oid == oid)
    }

    /// These names, less the relations the swap dropped for good.
    fn without_dropped(&self, now: &NamesOf) -> NamesOf {
        let mut kept = self.clone();
        kept.relations.retain(|r| now.relation(r.oid).is_some());
        kept.statistics.retain(|st| now.statistics.iter().any(|n| n.oid == st.oid));
        kept
    }
}

/// A name no user object is expected to carry, unique per object, so that the undo can move
/// every object aside first and then onto its old name without two names ever clashing.
fn parking_name(oid: u32) -> String {
    fit_ident(&format!("_pg_ghost_swap_back_{oid}"))
}

fn alter_relation(kind: &str) -> &'static str {
    match kind {
        "i" | "I" => "ALTER INDEX",
        "S" => "ALTER SEQUENCE",
        _ => "ALTER TABLE",
    }
}

/// The statements that put `before`'s names back, given the names `now`; serial owners last,
/// once every name is back.
fn undo_statements(before: &NamesOf, now: &NamesOf) -> Vec<String> {
    let mut park = Vec::new();
    let mut restore = Vec::new();
    for old in &before.relations {
        let Some(cur) = now.relation(old.oid) else { continue };
        if cur.name != old.name {
            let parked = cur.name.sibling(parking_name(old.oid));
            park.push(format!("{} {} RENAME TO {}", alter_relation(&cur.kind), cur.name.sql(), ident(&parked.name)));
            restore.push(format!("{} {} RENAME TO {}", alter_relation(&cur.kind), parked.sql(), ident(&old.name.name)));
        }
    }
    for old in &before.statistics {
        let Some(cur) = now.statistics.iter().find(|st| st.oid == old.oid) else { continue };
        if cur.name != old.name {
            let parked = cur.name.sibling(parking_name(old.oid));
            park.push(format!("ALTER STATISTICS {} RENAME TO {}", cur.name.sql(), ident(&parked.name)));
            restore.push(format!("ALTER STATISTICS {} RENAME TO {}", parked.sql(), ident(&old.name.name)));
        }
    }
    // Constraint names are per table; the tables carry their old names again by now.
    let table_name = |oid: u32| before.relation(oid).map(|r| r.name.sql());
    let mut constraints = Vec::new();
    for old in before.constraints.iter().filter(|c| !c.inherited) {
        let Some(cur) = now.constraints.iter().find(|c| c.oid == old.oid) else { continue };
        let Some(table) = table_name(old.table) else { continue };
        if cur.name != old.name {
            let parked = parking_name(old.oid);
            constraints.push((
                format!("ALTER TABLE {table} RENAME CONSTRAINT {} TO {}", ident(&cur.name), ident(&parked)),
                format!("ALTER TABLE {table} RENAME CONSTRAINT {} TO {}", ident(&parked), ident(&old.name)),
            ));
        }
    }
    let mut owners = Vec::new();
    for old in &before.owners {
        if now.owners.contains(old) {
            continue;
        }
        if let (Some(seq), Some(table)) = (before.relation(old.sequence), table_name(old.table)) {
            owners.push(format!("ALTER SEQUENCE {} OWNED BY {table}.{}", seq.name.sql(), ident(&old.column)));
        }
    }
    let (park_constraints, restore_constraints): (Vec<_>, Vec<_>) = constraints.into_iter().unzip();
    park.into_iter().chain(restore).chain(park_constraints).chain(restore_constraints).chain(owners).collect()
}

/// What still differs from `want`, one line per object, for the error message.
fn differences(want: &NamesOf, got: &NamesOf) -> Vec<String> {
    let mut out = Vec::new();
    let got_relations: HashMap<u32, &Relation> = got.relations.iter().map(|r| (r.oid, r)).collect();
    for r in &want.relations {
        match got_relations.get(&r.oid) {
            Some(g) if g.name == r.name => {}
            Some(g) => out.push(format!("{} is named {}", r.name, g.name)),
            None => out.push(format!("{} is gone", r.name)),
        }
    }
    if got.relations.len() != want.relations.len() {
        out.push(format!("{} relations instead of {}", got.relations.len(), want.relations.len()));
    }
    let names = |n: &NamesOf| n.constraints.iter().map(|c| (c.oid, c.table, c.name.clone())).collect::<Vec<_>>();
    if names(got) != names(want) {
        out.push("constraint names differ".to_string());
    }
    if got.owners != want.owners {
        out.push("serial sequence owners differ".to_string());
    }
    if got.statistics != want.statistics {
        out.push("statistics object names differ".to_string());
    }
    out
}

/// Swaps the ghost in and straight back inside the caller's transaction, which holds ACCESS
/// EXCLUSIVE on both tables. Returns every statement run, for the log.
pub async fn swap_and_back(tx: &impl GenericClient, orig: &TableInfo, ghost: &Ghost, old_table: &str) -> Result<Vec<String>> {
    let before = NamesOf::read(tx, orig.oid, ghost.oid).await?;
    let mut sql = swap::swap(tx, orig, ghost, old_table, None).await?.statements;
    let now = NamesOf::read(tx, orig.oid, ghost.oid).await?;
    let undo = undo_statements(&before, &now);
    if !undo.is_empty() {
        tx.batch_execute(&undo.join(";\n")).await.context("swapping the tables back")?;
    }
    let after = NamesOf::read(tx, orig.oid, ghost.oid).await?;
    let want = before.without_dropped(&now);
    let left = differences(&want, &after);
    if !left.is_empty() {
        return Err(Error::internal(format!(
            "swapping {} back did not restore every name ({}); the transaction is rolled back",
            orig.name,
            left.join("; ")
        )));
    }
    sql.extend(undo);
    Ok(sql)
}

/// The names of both tables' relations and constraints as they are now, as JSON: read
/// inside the forward swap's transaction, before its renames, for [`revert`].
pub async fn record_names(tx: &impl GenericClient, orig: u32, ghost: u32) -> Result<String> {
    let names = NamesOf::read(tx, orig, ghost).await?;
    serde_json::to_string(&names).map_err(|e| Error::internal(format!("cannot encode the names before the swap: {e}")))
}

/// The revert window's swap back, inside the caller's transaction, which holds ACCESS
/// EXCLUSIVE on both tables: `old` (the original, by its OID) and `new` (the table that
/// carried the change) get back every name `recorded` says they had before the forward swap,
/// identity sequences included; serial sequences go back to their old owner; each identity
/// sequence of the old table is set to where the new table's stands (rows inserted during
/// the window drew from it). `carried`: (old column, new column) pairs. The result is read
/// again and must equal what was recorded, or the transaction fails. The dependents move back
/// around the renames (`back`, see [`crate::dependents::back`]).
pub async fn revert(
    tx: &impl GenericClient,
    recorded: &str,
    old: &QualifiedName,
    new: &QualifiedName,
    carried: &[(String, String)],
    back: &MoveBack,
) -> Result<Vec<String>> {
    let before: NamesOf = serde_json::from_str(recorded).map_err(|e| Error::internal(format!("cannot read the names recorded at the swap: {e}")))?;
    let (Some(old_oid), Some(new_oid)) = (oid_of(tx, old).await?, oid_of(tx, new).await?) else {
        return Err(Error::internal(format!("{old} or {new} is missing; cannot swap back")));
    };
    // Identities first: they are found by the old table's own column names.
    let mut sql = carry_identities(tx, old, new, carried).await?;
    if !back.before.is_empty() {
        tx.batch_execute(&back.before.join(";\n")).await.context("letting go of the new table's dependents")?;
        sql.extend(back.before.iter().cloned());
    }
    let now = NamesOf::read(tx, old_oid, new_oid).await?;
    let undo = undo_statements(&before, &now);
    if !undo.is_empty() {
        tx.batch_execute(&undo.join(";\n")).await.context("swapping the tables back")?;
    }
    let after = NamesOf::read(tx, old_oid, new_oid).await?;
    let left = differences(&before.without_dropped(&now), &after);
    if !left.is_empty() {
        return Err(Error::internal(format!(
            "swapping {old} back did not restore every name ({}); the transaction is rolled back",
            left.join("; ")
        )));
    }
    sql.extend(undo);
    if !back.after.is_empty() {
        tx.batch_execute(&back.after.join(";\n")).await.context("moving the dependents back to the old table")?;
        sql.extend(back.after.iter().cloned());
    }
    Ok(sql)
}

async fn oid_of(tx: &impl GenericClient, table: &QualifiedName) -> Result<Option<u32>> {
    let row = tx.query_one("SELECT to_regclass($1)::oid", &[&table.sql()]).await.context("looking up a table to swap back")?;
    Ok(row.try_get(0)?)
}

/// Sets each identity sequence of `old` to the value of its column's on `new`; returns the
/// statements, for the log.
async fn carry_identities(tx: &impl GenericClient, old: &QualifiedName, new: &QualifiedName, carried: &[(String, String)]) -> Result<Vec<String>> {
    let mut done = Vec::new();
    for (old_col, new_col) in carried {
        let row = tx
            .query_one(
                // The column name is taken literally (not parsed as an identifier).
                "SELECT (SELECT pg_get_serial_sequence($1, $2) FROM pg_attribute
                          WHERE attrelid = $1::text::regclass AND attname = $2 AND attidentity <> ''),
                        (SELECT pg_get_serial_sequence($3, $4) FROM pg_attribute
                          WHERE attrelid = $3::text::regclass AND attname = $4 AND attidentity <> '')",
                &[&old.sql(), &old_col, &new.sql(), &new_col],
            )
            .await
            .context("reading the identity sequences to carry back")?;
        let (Some(to), Some(from)) = (row.try_get::<_, Option<String>>(0)?, row.try_get::<_, Option<String>>(1)?) else { continue };
        tx.execute(
            "SELECT setval($2::text::regclass, coalesce(pg_sequence_last_value($1::text::regclass), s.seqstart),
                           pg_sequence_last_value($1::text::regclass) IS NOT NULL)
               FROM pg_sequence s WHERE s.seqrelid = $1::text::regclass",
            &[&from, &to],
        )
        .await
        .with_context(|| format!("carrying the value of {from} back to {to}"))?;
        done.push(format!("SELECT setval('{to}', <value of {from}>)"));
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(oid: u32, kind: &str, name: &str) -> Relation {
        Relation { oid, kind: kind.into(), name: QualifiedName::new("public", name) }
    }

    fn before() -> NamesOf {
        NamesOf {
            relations: vec![
                rel(10, "r", "orders"),
                rel(11, "i", "orders_pkey"),
                rel(12, "S", "orders_id_seq"),
                rel(20, "r", "_orders_gho"),
                rel(21, "i", "_orders_pkey_gho"),
                rel(22, "i", "_orders_id_key_gho"),
            ],
            constraints: vec![Constraint { oid: 30, table: 20, name: "_orders_gho_n_check".into(), inherited: false }],
            owners: vec![Owner { sequence: 12, table: 10, column: "id".into() }],
            statistics: vec![Statistic { oid: 40, name: QualifiedName::new("public", "orders_stats") }],
        }
    }

    #[test]
    fn every_moved_name_is_parked_then_restored_and_owners_come_last() {
        let now = NamesOf {
            relations: vec![
                rel(10, "r", "_orders_del"),
                rel(11, "i", "_orders_pkey_del"),
                rel(12, "S", "orders_id_seq"),
                rel(20, "r", "orders"),
                rel(21, "i", "orders_pkey"),
            ],
            constraints: vec![Constraint { oid: 30, table: 20, name: "orders_n_check".into(), inherited: false }],
            owners: vec![Owner { sequence: 12, table: 20, column: "id".into() }],
            statistics: vec![Statistic { oid: 40, name: QualifiedName::new("public", "_orders_stats_del") }],
        };
        let sql = undo_statements(&before(), &now);
        assert_eq!(
            sql,
            [
                r#"ALTER TABLE "public"."_orders_del" RENAME TO "_pg_ghost_swap_back_10""#,
                r#"ALTER INDEX "public"."_orders_pkey_del" RENAME TO "_pg_ghost_swap_back_11""#,
                r#"ALTER TABLE "public"."orders" RENAME TO "_pg_ghost_swap_back_20""#,
                r#"ALTER INDEX "public"."orders_pkey" RENAME TO "_pg_ghost_swap_back_21""#,
                r#"ALTER STATISTICS "public"."_orders_stats_del" RENAME TO "_pg_ghost_swap_back_40""#,
                r#"ALTER TABLE "public"."_pg_ghost_swap_back_10" RENAME TO "orders""#,
                r#"ALTER INDEX "public"."_pg_ghost_swap_back_11" RENAME TO "orders_pkey""#,
                r#"ALTER TABLE "public"."_pg_ghost_swap_back_20" RENAME TO "_orders_gho""#,
                r#"ALTER INDEX "public"."_pg_ghost_swap_back_21" RENAME TO "_orders_pkey_gho""#,
                r#"ALTER STATISTICS "public"."_pg_ghost_swap_back_40" RENAME TO "orders_stats""#,
                r#"ALTER TABLE "public"."_orders_gho" RENAME CONSTRAINT "orders_n_check" TO "_pg_ghost_swap_back_30""#,
                r#"ALTER TABLE "public"."_orders_gho" RENAME CONSTRAINT "_pg_ghost_swap_back_30" TO "_orders_gho_n_check""#,
                r#"ALTER SEQUENCE "public"."orders_id_seq" OWNED BY "public"."orders"."id""#,
            ]
        );
        // The dropped index (22) is not expected back.
        let want = before().without_dropped(&now);
        assert!(want.relation(22).is_none());
        assert_eq!(want.relations.len(), 5);
    }

    #[test]
    fn nothing_to_undo_when_nothing_moved() {
        assert!(undo_statements(&before(), &before()).is_empty());
        assert!(differences(&before(), &before()).is_empty());
    }

    #[test]
    fn a_name_left_behind_is_named() {
        let mut got = before();
        got.relations[1].name.name = "_orders_pkey_del".into();
        got.owners[0].table = 20;
        let left = differences(&before(), &got);
        assert_eq!(left, [r#""public"."orders_pkey" is named "public"."_orders_pkey_del""#, "serial sequence owners differ"]);
    }
}
