//! The direct way, step by step, and the rules for clauses a clone cannot run.

use super::probe::Observation;
use super::ClausePlan;
use crate::sql::{fit_ident, ident, QualifiedName};

/// What PostgreSQL does for a clause that names an object an empty clone has not (a
/// foreign key, a trigger, a rule of the original). Each rule is checked against
/// PostgreSQL by the tests (`tests/it/plan.rs`).
/// `referenced`: the table of the foreign key the clause names, if it names one.
pub fn rule_for(kind: &str, error: Option<String>, referenced: Option<String>) -> Observation {
    let (lock, scans) = match kind {
        "AtValidateConstraint" => ("ShareUpdateExclusiveLock", true),
        "AtEnableTrig" | "AtEnableAlwaysTrig" | "AtEnableReplicaTrig" | "AtDisableTrig" | "AtEnableTrigAll" | "AtDisableTrigAll"
        | "AtEnableTrigUser" | "AtDisableTrigUser" => ("ShareRowExclusiveLock", false),
        "AtClusterOn" | "AtDropCluster" | "AtSetStatistics" => ("ShareUpdateExclusiveLock", false),
        _ => ("AccessExclusiveLock", false),
    };
    // Validating reads the referenced table (ROW SHARE); dropping the key drops the
    // triggers it has there, under ACCESS EXCLUSIVE in PostgreSQL 15.
    let other = match kind {
        "AtValidateConstraint" => Some("RowShareLock"),
        "AtDropConstraint" => Some("AccessExclusiveLock"),
        _ => None,
    };
    let other_locks = referenced.into_iter().zip(other).map(|(t, m)| (t, m.to_string())).collect();
    Observation { observed: false, error, scans, lock: Some(lock.to_string()), other_locks, ..Default::default() }
}

/// One statement of the direct way.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Step {
    pub sql: String,
    pub kind: StepKind,
    /// The tables it locks and how (`pg_locks` modes): what a dry run takes and releases.
    pub locks: Vec<(String, String)>,
    /// When this step fails: the statement that removes what the steps before it added for
    /// the same clause (a constraint added `NOT VALID` that would not validate), so that a
    /// failed change leaves no half of a clause behind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undo: Option<String>,
    /// The name of the constraint or index this step creates, which must be free before the
    /// first step runs: a taken one would make the step fail or take another name, and the
    /// clean-up after a failure (an invalid index dropped, a constraint's undo) hit the object
    /// that holds it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creates: Option<NewName>,
}

/// A name a step gives to what it creates, on the step's table.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NewName {
    pub name: String,
    /// An index (or a constraint with one): the name is a relation's, unique in the schema.
    /// Otherwise a constraint's.
    pub index: bool,
    /// PostgreSQL chose it and may have cut it on the trial's clone, where it would not have
    /// on the table, or elsewhere (see `Observation::names_cut`): the DBA names it instead.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cut: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepKind {
    /// Catalog only, under a short lock: retried when the lock is not had in time.
    Locked,
    /// `VALIDATE CONSTRAINT`: reads the table under SHARE UPDATE EXCLUSIVE; writes go on.
    Validate,
    /// `CREATE INDEX CONCURRENTLY`; an index a failure leaves invalid is dropped.
    ConcurrentIndex { index: String },
}

/// The statements of the direct way: catalog-only clauses as they are, each under a short
/// lock_timeout; CHECK and FOREIGN KEY as `NOT VALID` then `VALIDATE CONSTRAINT` (which
/// lets writes go on); `SET NOT NULL` through a validated CHECK, which PostgreSQL 12+ takes
/// as proof and skips its scan; UNIQUE and PRIMARY KEY through `CREATE UNIQUE INDEX
/// CONCURRENTLY` and `ADD CONSTRAINT ... USING INDEX`.
pub fn direct(table: &QualifiedName, clauses: &[ClausePlan], details: &[super::Clause]) -> Vec<Step> {
    let t = table.sql();
    let mut out = Vec::new();
    let exclusive = || vec![(t.clone(), "AccessExclusiveLock".to_string())];
    let locked = |sql: String, locks: Vec<(String, String)>| Step { sql, kind: StepKind::Locked, locks, undo: None, creates: None };
    let creating = |step: Step, name: &str, index: bool, cut: bool| Step { creates: Some(NewName { name: name.to_string(), index, cut }), ..step };
    let validate =
        |sql: String, undo: Option<String>| Step { sql, kind: StepKind::Validate, locks: vec![(t.clone(), "ShareUpdateExclusiveLock".to_string())], undo, creates: None };
    let drop_constraint = |name: &str| Some(format!("ALTER TABLE {t} DROP CONSTRAINT IF EXISTS {}", ident(name)));
    for (plan, clause) in clauses.iter().zip(details) {
        let o = &plan.observed;
        let mut clause_locks = vec![(t.clone(), o.lock.clone().unwrap_or_else(|| "AccessExclusiveLock".into()))];
        clause_locks.extend(o.other_locks.iter().cloned());
        let name = o.new_constraints.first();
        match (clause.constraint, &clause.not_valid, name) {
            (Some("check" | "foreign"), Some(not_valid), Some(name)) => {
                // Named as on the clone, so that the VALIDATE and the undo find what it made.
                let not_valid = named(not_valid, name).unwrap_or_else(|| not_valid.clone());
                out.push(creating(locked(not_valid, clause_locks), name, false, o.names_cut && !clause.named));
                out.push(validate(format!("ALTER TABLE {t} VALIDATE CONSTRAINT {}", ident(name)), drop_constraint(name)));
                continue;
            }
            (Some(kind @ ("unique" | "primary")), _, Some(name)) => {
                if let Some(index) = o.new_indexes.first().and_then(|def| concurrently(def)) {
                    let build = Step { sql: index, kind: StepKind::ConcurrentIndex { index: name.clone() }, locks: vec![(t.clone(), "ShareUpdateExclusiveLock".into())], undo: None, creates: None };
                    out.push(creating(build, name, true, o.names_cut && !clause.named));
                    let what = if kind == "unique" { "UNIQUE" } else { "PRIMARY KEY" };
                    out.push(locked(format!("ALTER TABLE {t} ADD CONSTRAINT {0} {what} USING INDEX {0}", ident(name)), exclusive()));
                    continue;
                }
            }
            _ => {}
        }
        if clause.kind == "AtSetNotNull" {
            if let Some(column) = &clause.column {
                // Not `<table>_<column>_not_null`: from PostgreSQL 18 that is the name SET NOT
                // NULL gives the column's own not-null constraint, which the check must not take.
                let check = fit_ident(&format!("{}_{column}_not_null_scan", table.name));
                let add = locked(format!("ALTER TABLE {t} ADD CONSTRAINT {} CHECK ({} IS NOT NULL) NOT VALID", ident(&check), ident(column)), exclusive());
                out.push(creating(add, &check, false, false));
                out.push(validate(format!("ALTER TABLE {t} VALIDATE CONSTRAINT {}", ident(&check)), drop_constraint(&check)));
                out.push(locked(plan.statement.clone(), exclusive()));
                out.push(locked(format!("ALTER TABLE {t} DROP CONSTRAINT {}", ident(&check)), exclusive()));
                continue;
            }
        }
        match o.scans && !o.builds_index && clause.kind == "AtValidateConstraint" {
            // The DBA's own VALIDATE: the constraint was there before; nothing to undo.
            true => out.push(validate(plan.statement.clone(), None)),
            false => out.push(locked(plan.statement.clone(), clause_locks)),
        }
    }
    out
}

/// An `ALTER TABLE ... ADD [CONSTRAINT] ...` whose constraint is given `name`, through
/// PostgreSQL's parser.
fn named(alter: &str, name: &str) -> Option<String> {
    use pg_query::protobuf::node::Node;
    let mut parsed = pg_query::parse(alter, pg_query::ParserOptions::DEFAULT).ok()?.protobuf;
    let Node::AlterTableStmt(stmt) = parsed.stmts.first_mut()?.stmt.as_mut()?.node.as_mut()? else { return None };
    let Node::AlterTableCmd(cmd) = stmt.cmds.first_mut()?.node.as_mut()? else { return None };
    let Node::Constraint(c) = cmd.def.as_mut()?.node.as_mut()? else { return None };
    c.conname = name.to_string();
    pg_query::deparse(&parsed, Default::default()).ok()
}

/// `CREATE INDEX` made `CONCURRENTLY`, through PostgreSQL's parser.
fn concurrently(indexdef: &str) -> Option<String> {
    let mut parsed = pg_query::parse(indexdef, pg_query::ParserOptions::DEFAULT).ok()?.protobuf;
    let node = parsed.stmts.first_mut()?.stmt.as_mut()?.node.as_mut()?;
    match node {
        pg_query::protobuf::node::Node::IndexStmt(i) => i.concurrent = true,
        _ => return None,
    }
    pg_query::deparse(&parsed, Default::default()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_constraint_added_not_valid_is_given_its_name() {
        let alter = "ALTER TABLE public.\"Orders\" ADD CHECK (qty > 0) NOT VALID";
        assert_eq!(named(alter, "Orders_qty_check").as_deref(), Some("ALTER TABLE public.\"Orders\" ADD CONSTRAINT \"Orders_qty_check\" CHECK (qty > 0) NOT VALID"));
        let fk = "ALTER TABLE t ADD CONSTRAINT old FOREIGN KEY (c) REFERENCES c (id) NOT VALID";
        assert_eq!(named(fk, "t_c_fkey").as_deref(), Some("ALTER TABLE t ADD CONSTRAINT t_c_fkey FOREIGN KEY (c) REFERENCES c (id) NOT VALID"));
    }

    #[test]
    fn an_index_is_built_concurrently() {
        let def = "CREATE UNIQUE INDEX \"Orders_email_key\" ON public.\"Orders\" USING btree (email)";
        assert_eq!(concurrently(def).as_deref(), Some("CREATE UNIQUE INDEX CONCURRENTLY \"Orders_email_key\" ON public.\"Orders\" USING btree (email)"));
    }
}
