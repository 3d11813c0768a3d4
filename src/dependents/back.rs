//! The revert's half of the dependents: every object that followed the table to the new table
//! (and every one created on it during the revert window) goes back to the old table inside
//! the revert's locked transaction, by the statements the forward swap uses.
//!
//! Invariants:
//! - The dependents are read from the new table under the revert's lock, so one created
//!   during the window is not missed; the revert's reverse publication is not one of them.
//! - What a plain `ALTER TABLE` back to the old definition would refuse (a dependent that
//!   uses a column the ALTER added, or reads one it retyped), and what cannot move back, is
//!   refused naming the object, before any statement runs: the revert changes nothing.
//! - While the window is open the old table's own triggers and rules stay on it, disabled
//!   ([`quiet_old_table`]), and so do its partitions' own triggers and rules: the reverse
//!   stream writes them and none may fire on those writes. The revert drops them (the
//!   partitions' own triggers, rules and policies too) and creates the new table's and new partitions' again, so the
//!   old table ends with what the new one had, in the state it had them.
//! - The old table's columns carry the new table's names while the definitions (read with
//!   the new names) are created, and get their own names back at the end: a renamed column
//!   comes out renamed in its dependents, as a plain `ALTER TABLE ... RENAME COLUMN` does.

use super::materialized::Built;
use super::{checks, ColumnChanges, Dependents, RoleRights, Validation};
use crate::error::{Context, Error, Result};
use crate::schema::Column;
use crate::sql::{ident, QualifiedName};
use tokio_postgres::GenericClient;

/// The statements that move the dependents back, around the swap back's renames.
#[derive(Clone, Debug, Default)]
pub struct MoveBack {
    /// Run while the table's name still means the new table.
    pub before: Vec<String>,
    /// Run once the old table carries the name again.
    pub after: Vec<String>,
    /// Incoming foreign keys added back `NOT VALID`, to validate after the commit.
    pub validations: Vec<Validation>,
    /// How many objects move back, for the log.
    pub count: usize,
}

/// The two tables of a revert. `carried`: (new column, old column) pairs, the reverse
/// mapping's.
pub struct Tables<'a> {
    /// The table's name, carried by the new table until the swap back.
    pub name: &'a QualifiedName,
    pub new_oid: u32,
    pub new_columns: &'a [Column],
    /// The old table, under its `_del` name.
    pub old: &'a QualifiedName,
    pub old_oid: u32,
    pub carried: &'a [(String, String)],
}

/// Reads the new table's dependents and the old table's own triggers, rules and policies,
/// and returns the statements that move the dependents back; refuses, naming each, what
/// cannot move back. Runs under the revert's lock, and before it (to refuse early).
/// `materialized`: the materialized views built again on the old table before the lock
/// ([`super::materialized::build`]); under the lock they must be all that read the new table.
pub async fn read(tx: &impl GenericClient, t: &Tables<'_>, reverse_publication: &str, materialized: Option<&[Built]>) -> Result<MoveBack> {
    let mut deps = super::read(tx, t.new_oid, reverse_publication).await?;
    let old_columns = crate::inspect::columns(tx, t.old_oid).await?;
    let changes = changes_back(t.new_columns, &old_columns, t.carried);
    let role = tx
        .query_one("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user", &[])
        .await
        .context("reading the role's rights")?;
    let role = RoleRights { superuser: role.try_get(0)?, bypass_rls: role.try_get(1)? };
    let mut refused = refusals_back(&deps, t.name, &changes, role);
    // A conversion into a partitioned table reverts to a plain table: what a new partition has
    // of its own has no partition to go back to.
    if !deps.partitions.is_empty() && crate::ghost::partitions::tree_tables(tx, t.old_oid).await?.is_empty() {
        for p in &deps.partitions {
            refused.push(format!(
                "partition {} of the new table has triggers, policies, views, rules, publications or security labels of its own (or read by others), which the plain table cannot take back",
                p.partition
            ));
        }
    }
    if !refused.is_empty() {
        return Err(Error::refused(format!(
            "the revert cannot move every dependent of {} back to the old table: {}; nothing was changed (the window stays open: change or drop them, then revert again)",
            t.name,
            refused.join("; ")
        )));
    }
    if let Some(built) = materialized {
        crate::cutover::swap::check_materialized_built(&deps, built)?;
    }
    let built = materialized.unwrap_or_default();
    // Labels of a column the revert drops go with it, as under a plain ALTER.
    deps.retain_column_labels(|c| !changes.dropped.iter().any(|d| d == c));
    let renamed: Vec<&(String, String)> = t.carried.iter().filter(|(new, old)| new != old).collect();
    let mut before: Vec<String> =
        renamed.iter().map(|(new, old)| format!("ALTER TABLE {} RENAME COLUMN {} TO {}", t.old.sql(), ident(old), ident(new))).collect();
    before.extend(deps.before_renames(t.name));
    before.extend(own_objects(tx, t.old_oid).await?.drop_sql(t.old));
    for (oid, partition) in partitions_with_own_objects(tx, t.old_oid).await? {
        before.extend(own_objects(tx, oid).await?.drop_sql(&partition));
    }
    // As in the forward swap: the rebuilt views take their names, the views that read them
    // are pointed at them, and the ones that read the new table go (last built first).
    let mut after: Vec<String> = built.iter().flat_map(Built::rename_sql).collect();
    after.extend(deps.after_renames(t.name)?);
    after.extend(built.iter().rev().map(Built::drop_sql));
    after.extend(renamed.iter().map(|(new, old)| format!("ALTER TABLE {} RENAME COLUMN {} TO {}", t.name.sql(), ident(new), ident(old))));
    Ok(MoveBack { before, after, validations: deps.validations(), count: deps.count() })
}

/// What the revert undoes, as the forward ALTER's inverse: the columns the ALTER added are
/// dropped, those it retyped change back (both by the new table's names).
fn changes_back(new_columns: &[Column], old_columns: &[Column], carried: &[(String, String)]) -> ColumnChanges {
    let mut changes = ColumnChanges::default();
    for c in new_columns {
        match carried.iter().find(|(new, _)| *new == c.name) {
            None => changes.dropped.push(c.name.clone()),
            Some((_, old)) => {
                if old_columns.iter().any(|o| &o.name == old && o.type_sql != c.type_sql) {
                    changes.retyped.push(c.name.clone());
                }
            }
        }
    }
    changes
}

/// Every reason the dependents cannot go back, each naming its object.
fn refusals_back(d: &Dependents, table: &QualifiedName, changes: &ColumnChanges, role: RoleRights) -> Vec<String> {
    checks::refusals(d, table, changes, role)
}

/// The old table's own triggers, rules and policies (or one old partition's: not the copies of
/// its parent's triggers): left on it by the forward swap, dropped by the revert before the new
/// table's are created on it.
#[derive(Debug, Default)]
struct OwnObjects {
    triggers: Vec<String>,
    rules: Vec<String>,
    policies: Vec<String>,
}

impl OwnObjects {
    fn drop_sql(&self, old: &QualifiedName) -> Vec<String> {
        let on = old.sql();
        let triggers = self.triggers.iter().map(|n| format!("DROP TRIGGER {} ON {on}", ident(n)));
        let rules = self.rules.iter().map(|n| format!("DROP RULE {} ON {on}", ident(n)));
        let policies = self.policies.iter().map(|n| format!("DROP POLICY {} ON {on}", ident(n)));
        triggers.chain(rules).chain(policies).collect()
    }
}

async fn own_objects(tx: &impl GenericClient, oid: u32) -> Result<OwnObjects> {
    let names = |sql: &'static str| async move {
        let rows = tx.query(sql, &[&oid]).await.context("reading the old table's triggers, rules and policies")?;
        rows.iter().map(|r| r.try_get::<_, String>(0).map_err(Error::from)).collect::<Result<Vec<String>>>()
    };
    Ok(OwnObjects {
        triggers: names("SELECT tgname::text FROM pg_trigger WHERE tgrelid = $1 AND NOT tgisinternal AND tgparentid = 0 ORDER BY 1").await?,
        rules: names("SELECT rulename::text FROM pg_rewrite WHERE ev_class = $1 AND rulename <> '_RETURN' ORDER BY 1").await?,
        policies: names("SELECT polname::text FROM pg_policy WHERE polrelid = $1 ORDER BY 1").await?,
    })
}

/// Run in the forward swap of a run with a revert window, once the original is the old table:
/// its triggers and rules are disabled and its row security no longer forced, so that none
/// acts on the reverse stream's writes (a `last_update = now()` trigger would change the rows
/// it writes back). The revert replaces them with the new table's.
///
/// Its foreign keys to itself are dropped too: the reverse stream writes rows back in batches
/// (deleting a key before writing it again), which a self-reference checked at each statement's
/// end would refuse. The new table keeps them; the revert adds them back on the old table
/// `NOT VALID` and validates them, as any foreign key that moves.
pub async fn quiet_old_table(tx: &impl GenericClient, old_oid: u32, old: &QualifiedName) -> Result<Vec<String>> {
    let own = own_objects(tx, old_oid).await?;
    let on = old.sql();
    let mut sql = vec![format!("ALTER TABLE {on} DISABLE TRIGGER USER"), format!("ALTER TABLE {on} NO FORCE ROW LEVEL SECURITY")];
    sql.extend(own.rules.iter().map(|r| format!("ALTER TABLE {on} DISABLE RULE {}", ident(r))));
    // On a partitioned table that reaches only the copies of its own triggers: a partition's
    // own triggers and rules are disabled on the partition.
    for (oid, partition) in partitions_with_own_objects(tx, old_oid).await? {
        let own = own_objects(tx, oid).await?;
        let on = partition.sql();
        if !own.triggers.is_empty() {
            sql.push(format!("ALTER TABLE {on} DISABLE TRIGGER USER"));
        }
        sql.extend(own.rules.iter().map(|r| format!("ALTER TABLE {on} DISABLE RULE {}", ident(r))));
    }
    let self_references = tx
        .query("SELECT conname::text FROM pg_constraint WHERE contype = 'f' AND conrelid = $1 AND confrelid = $1 ORDER BY 1", &[&old_oid])
        .await
        .context("reading the old table's foreign keys to itself")?;
    for r in &self_references {
        sql.push(format!("ALTER TABLE {on} DROP CONSTRAINT {}", ident(&r.try_get::<_, String>(0)?)));
    }
    tx.batch_execute(&sql.join(";\n")).await.context("disabling the old table's triggers and rules for the revert window")?;
    Ok(sql)
}

/// The partitions of `root` that have triggers, rules or policies of their own, under their
/// current names (none when it is not partitioned).
async fn partitions_with_own_objects(tx: &impl GenericClient, root: u32) -> Result<Vec<(u32, QualifiedName)>> {
    let having = "EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = c.oid AND NOT g.tgisinternal AND g.tgparentid = 0)
                  OR EXISTS (SELECT 1 FROM pg_rewrite r WHERE r.ev_class = c.oid AND r.rulename <> '_RETURN')
                  OR EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid)";
    let found = super::partitions::partitions_where(tx, root, having, "triggers, rules or policies of their own").await?;
    Ok(found.into_iter().map(|(oid, name, _)| (oid, name)).collect())
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::*;
    use crate::schema::Identity;

    fn col(name: &str, ty: &str) -> Column {
        Column { attnum: 0, name: name.into(), type_sql: ty.into(), type_oid: 0, not_null: false, identity: Identity::None, generated: false }
    }

    #[test]
    fn the_revert_drops_added_columns_and_retypes_changed_ones() {
        let new = vec![col("id", "bigint"), col("reserve", "integer"), col("flag", "boolean")];
        let old = vec![col("id", "integer"), col("spare", "integer"), col("pad", "text")];
        let carried = vec![("id".to_string(), "id".to_string()), ("reserve".to_string(), "spare".to_string())];
        let c = changes_back(&new, &old, &carried);
        assert_eq!(c, ColumnChanges { dropped: vec!["flag".into()], retyped: vec!["id".into()] });
    }

    #[test]
    fn a_dependent_on_an_added_column_is_refused_by_name() {
        let d = Dependents {
            column_dependents: vec![ColumnDependent { column: "flag".into(), catalog: "pg_rewrite".into(), object: "view reporting.flags".into() }],
            ..Dependents::default()
        };
        let t = QualifiedName::new("public", "orders");
        let su = RoleRights { superuser: true, bypass_rls: true };
        let out = refusals_back(&d, &t, &ColumnChanges { dropped: vec!["flag".into()], retyped: vec![] }, su);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(out[0].contains("view reporting.flags") && out[0].contains("\"flag\""), "{out:?}");
        assert!(refusals_back(&d, &t, &ColumnChanges::default(), su).is_empty());
    }

    #[test]
    fn the_old_tables_own_objects_are_dropped_by_name() {
        let own = OwnObjects { triggers: vec!["t touch".into()], rules: vec!["r".into()], policies: vec!["p".into()] };
        let old = QualifiedName::new("public", "_orders_del");
        assert_eq!(
            own.drop_sql(&old),
            [
                r#"DROP TRIGGER "t touch" ON "public"."_orders_del""#,
                r#"DROP RULE "r" ON "public"."_orders_del""#,
                r#"DROP POLICY "p" ON "public"."_orders_del""#,
            ]
        );
    }
}
