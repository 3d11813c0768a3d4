//! What cannot follow the table, and what a plain `ALTER TABLE` would itself refuse, as
//! messages that name the object. Pure: the facts are read beforehand.

use super::Dependents;
use crate::sql::{ident, QualifiedName};

/// The columns the ALTER drops or changes the type of (original names).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ColumnChanges {
    pub dropped: Vec<String>,
    pub retyped: Vec<String>,
}

/// What the connected role may do beyond owning the table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoleRights {
    pub superuser: bool,
    /// `BYPASSRLS`: row-level security never filters what the role reads.
    pub bypass_rls: bool,
}

/// Every reason the dependents stop the change, in a fixed order; empty when they can all
/// move. A superuser needs to own none of the objects that move.
pub fn refusals(d: &Dependents, table: &QualifiedName, changes: &ColumnChanges, role: RoleRights) -> Vec<String> {
    let superuser = role.superuser;
    let mut out = plain_alter_refusals(d, table, changes);
    // A partition's columns carry the table's names: the ALTER drops or retypes them there
    // too. Its forced row security needs no rights: pg-ghost reads and writes rows through the
    // partitioned table, where a partition's policies do not apply.
    for p in &d.partitions {
        let through_root = Dependents { force_row_security: false, ..p.dependents.clone() };
        out.extend(refusals(&through_root, &p.partition, changes, role));
    }
    if d.force_row_security && !superuser && !role.bypass_rls {
        out.push(format!(
            "{table} has FORCE ROW LEVEL SECURITY, so its policies would decide which rows pg-ghost reads and writes even as the owner; connect as a role with BYPASSRLS or a superuser"
        ));
    }
    for m in d.materialized_views.iter().filter(|m| !m.others.is_empty()) {
        out.push(format!(
            "materialized view {} reads {table} and must be built again for the new table, but {} depend{} on it",
            m.name,
            m.others.join(", "),
            if m.others.len() == 1 { "s" } else { "" }
        ));
    }
    for fk in d.foreign_keys.iter().filter(|fk| fk.partitioned && !fk.validated) {
        out.push(format!(
            "foreign key {} on partitioned table {} references {table} and is NOT VALID; pg-ghost moves a partitioned table's key through its partitions and would leave it valid",
            ident(&fk.name),
            fk.table
        ));
    }
    for f in &d.functions {
        if f.in_extension {
            out.push(format!("function {} of an extension uses the row type of {table}; it cannot be created again for the new table", f.signature));
        } else if f.definition.is_none() {
            out.push(format!("aggregate {} uses the row type of {table}; pg-ghost cannot create aggregates again for the new table", f.signature));
        } else if !f.used_by.is_empty() {
            out.push(format!(
                "function {} uses the row type of {table} and must be created again for the new table, but {} depend{} on it",
                f.signature,
                f.used_by.join(", "),
                if f.used_by.len() == 1 { "s" } else { "" }
            ));
        }
    }
    for user in &d.row_type_users {
        out.push(format!(
            "{user} is of the row type of {table}; after the swap it would keep the old table's type (a plain ALTER TABLE changes the type in place), so pg-ghost cannot change this table"
        ));
    }
    if !superuser {
        let mut missing: Vec<String> = Vec::new();
        missing.extend(d.views.iter().filter(|v| !v.owned).map(|v| format!("view {}", v.name)));
        missing.extend(d.foreign_rules.iter().filter(|r| !r.owned).map(|r| format!("{} (rule {})", r.relation, ident(&r.name))));
        missing.extend(d.foreign_keys.iter().filter(|fk| !fk.owned).map(|fk| format!("table {} (foreign key {})", fk.table, ident(&fk.name))));
        missing.extend(d.functions.iter().filter(|f| !f.owned).map(|f| format!("function {}", f.signature)));
        missing.extend(d.publications.iter().filter(|p| !p.owned).map(|p| format!("publication {}", ident(&p.publication))));
        for m in &d.materialized_views {
            if !m.owned {
                missing.push(format!("materialized view {}", m.name));
            }
            missing.extend(m.views.iter().filter(|v| !v.owned).map(|v| format!("view {}", v.name)));
        }
        if !missing.is_empty() {
            out.push(format!(
                "the swap moves objects that depend on {table}, and the connected role does not own {}; connect as their owner or a superuser",
                missing.join(", ")
            ));
        }
    }
    out
}

/// The refusals a plain `ALTER TABLE` would give, with PostgreSQL's own wording.
fn plain_alter_refusals(d: &Dependents, table: &QualifiedName, changes: &ColumnChanges) -> Vec<String> {
    let mut out = Vec::new();
    for column in &changes.dropped {
        let users: Vec<&str> = d.column_dependents.iter().filter(|c| &c.column == column).map(|c| c.object.as_str()).collect();
        if !users.is_empty() {
            out.push(format!(
                "cannot drop column {} of table {table} because other objects depend on it: {} (as a plain ALTER TABLE would refuse)",
                ident(column),
                users.join(", ")
            ));
        }
    }
    for column in &changes.retyped {
        for dep in d.column_dependents.iter().filter(|c| &c.column == column) {
            let what = match dep.catalog.as_str() {
                "pg_rewrite" => "used by a view or rule",
                "pg_trigger" => "used in a trigger definition",
                "pg_policy" => "used in a policy definition",
                "pg_publication_rel" => "used by a publication WHERE clause or column list",
                // Indexes, constraints and statistics are rebuilt by the ALTER itself; a
                // foreign key that references the column is checked on the ghost.
                "pg_constraint" | "pg_class" | "pg_statistic_ext" | "pg_attrdef" => continue,
                _ => "used by another object",
            };
            out.push(format!(
                "cannot alter type of a column {what}: {} depends on column {} of {table} (as a plain ALTER TABLE would refuse)",
                dep.object,
                ident(column)
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::*;

    fn t() -> QualifiedName {
        QualifiedName::new("public", "orders")
    }

    fn dep(column: &str, catalog: &str, object: &str) -> ColumnDependent {
        ColumnDependent { column: column.into(), catalog: catalog.into(), object: object.into() }
    }

    #[test]
    fn refuses_what_a_plain_alter_refuses() {
        let d = Dependents {
            column_dependents: vec![
                dep("total", "pg_rewrite", "rule _RETURN on view totals"),
                dep("total", "pg_trigger", "trigger audit on table orders"),
                dep("id", "pg_constraint", "constraint items_fk on table items"),
                dep("note", "pg_policy", "policy p on table orders"),
            ],
            ..Dependents::default()
        };
        let su = RoleRights { superuser: true, bypass_rls: true };
        let none = refusals(&d, &t(), &ColumnChanges::default(), su);
        assert!(none.is_empty(), "{none:?}");
        let retyped = refusals(&d, &t(), &ColumnChanges { retyped: vec!["total".into(), "id".into()], ..Default::default() }, su);
        assert_eq!(retyped.len(), 2, "{retyped:#?}");
        assert!(retyped[0].contains("used by a view or rule: rule _RETURN on view totals depends on column \"total\""));
        assert!(retyped[1].contains("trigger definition"));
        let dropped = refusals(&d, &t(), &ColumnChanges { dropped: vec!["note".into()], ..Default::default() }, su);
        assert_eq!(dropped, vec!["cannot drop column \"note\" of table \"public\".\"orders\" because other objects depend on it: policy p on table orders (as a plain ALTER TABLE would refuse)"]);
    }

    #[test]
    fn a_partitions_dependents_are_checked_under_its_name() {
        let part = QualifiedName::new("public", "orders_t1");
        let d = Dependents {
            partitions: vec![PartitionDependents {
                partition: part,
                dependents: Dependents {
                    column_dependents: vec![dep("note", "pg_rewrite", "rule _RETURN on view t1_notes")],
                    force_row_security: true,
                    ..Dependents::default()
                },
            }],
            ..Dependents::default()
        };
        let su = RoleRights { superuser: true, bypass_rls: true };
        let dropped = refusals(&d, &t(), &ColumnChanges { dropped: vec!["note".into()], ..Default::default() }, su);
        assert_eq!(dropped.len(), 1, "{dropped:#?}");
        assert!(dropped[0].starts_with("cannot drop column \"note\" of table \"public\".\"orders_t1\""), "{dropped:#?}");
        // Rows go through the partitioned table: a partition's forced row security needs no rights.
        assert!(refusals(&d, &t(), &ColumnChanges::default(), RoleRights::default()).is_empty());
    }

    #[test]
    fn names_what_cannot_move() {
        let d = Dependents {
            materialized_views: vec![MaterializedView {
                others: vec!["function f(mv)".into()],
                ..MaterializedView::example(QualifiedName::new("public", "mv"))
            }],
            row_type_users: vec!["column o of table holder".into()],
            views: vec![View { name: QualifiedName::new("s", "v"), definition: String::new(), options: vec![], owned: false }],
            ..Dependents::default()
        };
        let all = refusals(&d, &t(), &ColumnChanges::default(), RoleRights::default());
        assert_eq!(all.len(), 3, "{all:#?}");
        assert!(all[0].contains("materialized view \"public\".\"mv\" reads \"public\".\"orders\" and must be built again for the new table, but function f(mv) depends on it"), "{all:#?}");
        assert!(all[1].starts_with("column o of table holder is of the row type"));
        assert!(all[2].contains("does not own view \"s\".\"v\""));
        let su = RoleRights { superuser: true, bypass_rls: true };
        assert_eq!(refusals(&d, &t(), &ColumnChanges::default(), su).len(), 2);
        let forced = Dependents { force_row_security: true, ..Dependents::default() };
        assert!(refusals(&forced, &t(), &ColumnChanges::default(), RoleRights::default())[0].contains("BYPASSRLS"));
        assert!(refusals(&forced, &t(), &ColumnChanges::default(), RoleRights { superuser: false, bypass_rls: true }).is_empty());
    }
}
