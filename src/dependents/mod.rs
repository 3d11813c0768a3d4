//! Objects that depend on the table by OID and must follow the new table inside the swap
//! transaction: views, rules, triggers, policies, publication membership, incoming foreign
//! keys, functions typed with the table's row type, and materialized views (built again
//! on the ghost, see [`materialized`]).
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

mod catalog;
mod checks;
pub mod materialized;
mod statements;

pub use catalog::read;
pub use checks::{refusals, ColumnChanges, RoleRights};
pub use materialized::MaterializedView;

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
    pub security_labels: bool,
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

/// A foreign key added `NOT VALID` in the swap, validated after the commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validation {
    pub constraint: String,
    pub table: QualifiedName,
}

impl Validation {
    pub fn sql(&self) -> String {
        format!("ALTER TABLE {} VALIDATE CONSTRAINT {}", self.table.sql(), crate::sql::ident(&self.constraint))
    }
}

impl Dependents {
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
            .map(|fk| Validation { constraint: fk.name.clone(), table: fk.table.clone() })
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
    }
}

/// Validates the foreign keys the swap added `NOT VALID`, one at a time (each takes SHARE
/// UPDATE EXCLUSIVE on its table: writes go on). One that fails stays `NOT VALID`, is
/// named with PostgreSQL's reason (which names a violating key), and fails the run after
/// the others were tried: the swap itself has committed.
pub async fn validate(client: &tokio_postgres::Client, validations: &[Validation]) -> crate::Result<()> {
    let mut failed = Vec::new();
    for (i, v) in validations.iter().enumerate() {
        let started = std::time::Instant::now();
        tracing::info!(constraint = %v.constraint, table = %v.table, done = i, of = validations.len(), "validating a moved foreign key");
        match client.batch_execute(&v.sql()).await {
            Ok(()) => tracing::info!(constraint = %v.constraint, table = %v.table, secs = started.elapsed().as_secs_f64(), "foreign key valid"),
            Err(e) => {
                let e = crate::Error::from(e);
                tracing::error!(constraint = %v.constraint, table = %v.table, error = %e, "foreign key could not be validated; it stays NOT VALID");
                failed.push(format!("{} on {} ({}): fix the rows, then run {}", crate::sql::ident(&v.constraint), v.table, e.message(), v.sql()));
            }
        }
    }
    if failed.is_empty() {
        return Ok(());
    }
    Err(crate::Error::new(
        crate::ErrorKind::Sql,
        format!("the swap committed, but these foreign keys are NOT VALID: {}", failed.join("; ")),
    ))
}
