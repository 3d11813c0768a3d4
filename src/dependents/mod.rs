//! Objects that depend on the table by OID and must follow the new table inside the swap
//! transaction: views, rules, triggers, policies, publication membership, incoming foreign
//! keys, functions typed with the table's row type, and materialized views (built again
//! on the ghost, see [`materialized`]); for a partitioned table, what its partitions have of
//! their own of these ([`partitions`]).
//!
//! Invariants:
//! - Definitions are read with an empty `search_path`, so every name in them is qualified
//!   and binds, when the statement runs again after the renames, to the table that now
//!   carries the name.
//! - Views keep their OID (`CREATE OR REPLACE VIEW`), so views on views, grants, owners and
//!   comments need nothing. Triggers, rules and policies are created on the new table and
//!   left on the old one, which no one writes any more; none of them ever exists on the
//!   ghost before the swap, so none fires on pg-ghost's own writes.
//! - Incoming foreign keys are dropped and added again `NOT VALID` in the swap, and
//!   validated after the commit, one at a time ([`Validation`]): validating under the lock
//!   would scan the referencing table while every writer waits.
//! - What a plain `ALTER TABLE` would refuse (a dropped or retyped column that a view,
//!   trigger, policy or publication uses) and what cannot be moved safely is refused by
//!   [`refusals`] before anything is created, each naming the object.
//! - After the swap the old table has nothing pointing at it: it drops without CASCADE.
//! - A revert (`--revertible-for`) moves them back with the same statements ([`back`]).

pub mod back;
mod catalog;
mod checks;
pub mod materialized;
mod partitions;
mod statements;
mod validation;

pub use catalog::read;
pub use checks::{refusals, ColumnChanges, RoleRights};
pub use materialized::MaterializedView;
pub use partitions::PartitionDependents;
pub use validation::{validate, PartitionedKey, Validation};

use crate::sql::QualifiedName;

#[derive(Clone, Debug, Default)]
pub struct Dependents {
    pub views: Vec<View>,
    /// Materialized views that read the table, directly or through one another, each after
    /// those it reads: built again on the ghost before the cut-over.
    pub materialized_views: Vec<MaterializedView>,
    /// Rules of other relations whose actions use the table.
    pub foreign_rules: Vec<Rule>,
    /// Rules on the table itself.
    pub rules: Vec<Rule>,
    pub triggers: Vec<Trigger>,
    pub policies: Vec<Policy>,
    pub publications: Vec<PublicationMember>,
    /// Foreign keys that reference the table, its own self-references included.
    pub foreign_keys: Vec<ForeignKey>,
    /// Functions whose arguments or result use the table's row type.
    pub functions: Vec<Function>,
    /// Other users of the row type (columns of other tables, domains), described as
    /// PostgreSQL describes them.
    pub row_type_users: Vec<String>,
    pub column_dependents: Vec<ColumnDependent>,
    pub force_row_security: bool,
    /// The table's and its columns' security labels, set on the new table in the swap.
    pub security_labels: Vec<SecurityLabel>,
    /// The partitions with triggers, policies, forced row security, views or publications of
    /// their own: each moves to the new partition of its name.
    pub partitions: Vec<PartitionDependents>,
}

/// `SECURITY LABEL FOR provider ON ... IS label`, of a relation or one of its columns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecurityLabel {
    pub provider: String,
    /// None: the relation itself.
    pub column: Option<String>,
    pub label: String,
}

impl SecurityLabel {
    /// The statement that sets it on `relation`, a `TABLE` or `MATERIALIZED VIEW`.
    pub fn sql(&self, kind: &str, relation: &QualifiedName) -> String {
        let on = match &self.column {
            None => format!("{kind} {}", relation.sql()),
            Some(c) => format!("COLUMN {}.{}", relation.sql(), crate::sql::ident(c)),
        };
        format!("SECURITY LABEL FOR {} ON {on} IS {}", crate::sql::ident(&self.provider), crate::sql::literal(&self.label))
    }
}

#[derive(Clone, Debug)]
pub struct View {
    pub name: QualifiedName,
    /// `pg_get_viewdef`, names qualified.
    pub definition: String,
    /// `reloptions`: `security_barrier=true`, `check_option=local`, ...
    pub options: Vec<String>,
    pub owned: bool,
}

#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    /// The relation the rule is on.
    pub relation: QualifiedName,
    /// `pg_get_ruledef`.
    pub definition: String,
    /// `ev_enabled`: `O` origin (default), `D` disabled, `R` replica, `A` always.
    pub enabled: String,
    pub comment: Option<String>,
    pub owned: bool,
}

#[derive(Clone, Debug)]
pub struct Trigger {
    pub name: String,
    /// `pg_get_triggerdef`.
    pub definition: String,
    /// `tgenabled`, as for rules.
    pub enabled: String,
    pub comment: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Policy {
    pub name: String,
    pub permissive: bool,
    /// `polcmd`: `*` all, `r` select, `a` insert, `w` update, `d` delete.
    pub command: String,
    /// None: PUBLIC.
    pub roles: Option<Vec<String>>,
    pub using: Option<String>,
    pub with_check: Option<String>,
    pub comment: Option<String>,
}

#[derive(Clone, Debug)]
pub struct PublicationMember {
    pub publication: String,
    pub owned: bool,
    /// The column list, when the publication has one for the table.
    pub columns: Option<Vec<String>>,
    pub row_filter: Option<String>,
}

#[derive(Clone, Debug)]
pub struct ForeignKey {
    pub name: String,
    /// The referencing table.
    pub table: QualifiedName,
    pub partitioned: bool,
    /// On a partitioned table: its leaf partitions and the name the key has on each.
    pub leaves: Vec<(QualifiedName, String)>,
    /// `pg_get_constraintdef`.
    pub definition: String,
    pub comment: Option<String>,
    pub self_reference: bool,
    pub owned: bool,
    pub validated: bool,
    pub columns: Vec<String>,
    pub referenced_columns: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Function {
    /// `regprocedure` text, e.g. `public.report(integer)`; names the new table's type once
    /// the new table carries the name.
    pub signature: String,
    /// `prokind`: `f`, `p`, `a`, `w`.
    pub kind: String,
    pub owner: String,
    pub owned: bool,
    /// `(provider, label)`.
    pub security_labels: Vec<(String, String)>,
    /// `pg_get_functiondef` (None for aggregates, which it cannot print).
    pub definition: Option<String>,
    pub comment: Option<String>,
    /// The ACL was changed from the default; `grants` then lists it.
    pub explicit_acl: bool,
    pub grants: Vec<Grant>,
    pub in_extension: bool,
    /// Objects that depend on the function.
    pub used_by: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Grant {
    pub privilege: String,
    /// None: PUBLIC.
    pub grantee: Option<String>,
    pub grantable: bool,
}

#[derive(Clone, Debug)]
pub struct ColumnDependent {
    pub column: String,
    /// The catalog of the dependent object: `pg_rewrite`, `pg_trigger`, `pg_policy`, ...
    pub catalog: String,
    /// As PostgreSQL describes it: `view v`, `trigger t_touch on table t`, ...
    pub object: String,
}

impl Dependents {
    /// Keeps the security labels of the table's columns (and of its partitions' columns) for
    /// which `keep` holds: a column the ALTER drops loses its labels, as under a plain ALTER.
    pub fn retain_column_labels(&mut self, keep: impl Fn(&str) -> bool + Copy) {
        self.security_labels.retain(|l| l.column.as_deref().is_none_or(keep));
        for p in &mut self.partitions {
            p.dependents.retain_column_labels(keep);
        }
    }

    /// The tables the swap alters besides the table itself: those whose foreign keys it
    /// moves. The cut-over locks them together with the table.
    pub fn referencing_tables(&self) -> Vec<QualifiedName> {
        let mut tables: Vec<QualifiedName> =
            self.foreign_keys.iter().filter(|fk| !fk.self_reference).map(|fk| fk.table.clone()).collect();
        tables.sort_by(|a, b| (&a.schema, &a.name).cmp(&(&b.schema, &b.name)));
        tables.dedup();
        tables
    }

    pub fn validations(&self) -> Vec<Validation> {
        self.foreign_keys
            .iter()
            .filter(|fk| fk.validated)
            .map(|fk| Validation {
                constraint: fk.name.clone(),
                table: fk.table.clone(),
                partitioned: fk.partitioned.then(|| PartitionedKey {
                    definition: fk.definition.clone(),
                    comment: fk.comment.clone(),
                    leaves: fk
                        .leaves
                        .iter()
                        .map(|(leaf, name)| Validation { constraint: name.clone(), table: leaf.clone(), partitioned: None })
                        .collect(),
                }),
            })
            .collect()
    }

    /// How many objects move, for the log.
    pub fn count(&self) -> usize {
        self.views.len()
            + self.foreign_rules.len()
            + self.rules.len()
            + self.triggers.len()
            + self.policies.len()
            + self.publications.len()
            + self.foreign_keys.len()
            + self.functions.len()
            + self.materialized_views.len()
            + self.partitions.iter().map(|p| p.dependents.count()).sum::<usize>()
    }
}
