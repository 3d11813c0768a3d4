//! The ALTER cut into its clauses with PostgreSQL's parser, each as a statement of its own on
//! the table and on the plan's clone (see `probe`), and what existing rows can do to it.

use crate::error::{Error, Result};
use crate::sql::QualifiedName;
use pg_query::protobuf::{self, node::Node as N, AlterTableType, ConstrType};

/// One clause of the ALTER.
#[derive(Clone, Debug)]
pub struct Clause {
    /// `ALTER TABLE <table> <clause>`, as PostgreSQL's deparser writes it.
    pub statement: String,
    /// The clause's kind in PostgreSQL's terms (`AT_AlterColumnType`, ...), for tools.
    pub kind: String,
    /// The same clause on the clone, tables it references redirected to their clones.
    pub on_clone: String,
    /// Tables whose clones the clause needs (foreign keys), in the order of `on_clone`'s
    /// `pg_ghost_plan_ref<i>` names.
    pub references: Vec<QualifiedName>,
    /// What in existing rows makes it fail, when something can.
    pub can_fail: Option<&'static str>,
    /// For a CHECK or FOREIGN KEY added valid: the same clause `NOT VALID`.
    pub not_valid: Option<String>,
    /// The column the clause is on (`ALTER COLUMN c ...`), when it names one.
    pub column: Option<String>,
    /// For `ADD CONSTRAINT`: `check`, `foreign`, `unique`, `primary`, `exclusion`.
    pub constraint: Option<&'static str>,
    /// The clause names the constraint it adds (`ADD CONSTRAINT <name> ...`); otherwise
    /// PostgreSQL chooses its name.
    pub named: bool,
}

/// The name of the table's clone, in the session's temporary schema.
pub const CLONE: &str = "pg_ghost_plan";

pub fn reference_clone(i: usize) -> String {
    format!("pg_ghost_plan_ref{i}")
}

pub fn split(alter: &str, table: &QualifiedName) -> Result<Vec<Clause>> {
    let alter = alter.trim().trim_end_matches(';').trim();
    if alter.is_empty() {
        return Err(Error::config("--alter is empty: give the clauses that follow ALTER TABLE <name>"));
    }
    let text = format!("ALTER TABLE {} {}", table.sql(), alter);
    let parsed = pg_query::parse(&text, pg_query::ParserOptions::DEFAULT).map_err(|e| Error::config(format!("--alter is not valid SQL: {e}")))?;
    let tree = parsed.protobuf;
    if tree.stmts.len() != 1 {
        return Err(Error::config(format!("--alter must be the clauses of one ALTER TABLE statement; it makes {} statements", tree.stmts.len())));
    }
    let node = tree.stmts[0].stmt.as_ref().and_then(|n| n.node.as_ref()).ok_or_else(|| Error::config("--alter parsed to an empty statement"))?;
    match node {
        N::AlterTableStmt(s) => s
            .cmds
            .iter()
            .map(|cmd| {
                let Some(N::AlterTableCmd(cmd)) = cmd.node.as_ref() else {
                    return Err(Error::config("--alter has a clause pg-ghost does not understand"));
                };
                one_command(&tree, s, cmd, table)
            })
            .collect(),
        N::RenameStmt(_) => {
            let mut on_clone = tree.clone();
            if let Some(N::RenameStmt(r)) = on_clone.stmts[0].stmt.as_mut().and_then(|n| n.node.as_mut()) {
                r.relation = Some(clone_range_var(CLONE));
            }
            Ok(vec![Clause {
                statement: deparse(&tree)?,
                kind: "RENAME".into(),
                on_clone: deparse(&on_clone)?,
                references: Vec::new(),
                can_fail: None,
                not_valid: None,
                column: None,
                constraint: None,
                named: false,
            }])
        }
        _ => Err(Error::config("--alter must be the clauses of an ALTER TABLE statement")),
    }
}

fn one_command(tree: &protobuf::ParseResult, stmt: &protobuf::AlterTableStmt, cmd: &protobuf::AlterTableCmd, table: &QualifiedName) -> Result<Clause> {
    let single = |cmd: protobuf::AlterTableCmd, relation: protobuf::RangeVar| {
        let mut t = tree.clone();
        let s = protobuf::AlterTableStmt {
            relation: Some(relation),
            cmds: vec![protobuf::Node { node: Some(N::AlterTableCmd(Box::new(cmd))) }],
            ..stmt.clone()
        };
        t.stmts[0].stmt = Some(Box::new(protobuf::Node { node: Some(N::AlterTableStmt(s)) }));
        deparse(&t)
    };
    let statement = single(cmd.clone(), stmt.relation.clone().unwrap_or_default())?;
    let mut on_clone_cmd = cmd.clone();
    let mut references = Vec::new();
    for constraint in constraints_mut(&mut on_clone_cmd) {
        if let Some(pk) = constraint.pktable.as_mut() {
            let referenced = QualifiedName::new(if pk.schemaname.is_empty() { String::new() } else { pk.schemaname.clone() }, pk.relname.clone());
            let is_self = pk.relname == table.name && (pk.schemaname.is_empty() || pk.schemaname == table.schema);
            *pk = if is_self {
                clone_range_var(CLONE)
            } else {
                references.push(referenced);
                clone_range_var(&reference_clone(references.len() - 1))
            };
        }
    }
    let on_clone = single(on_clone_cmd, clone_range_var(CLONE))?;
    let subtype = AlterTableType::try_from(cmd.subtype).map_err(|_| Error::config("--alter has an unknown clause"))?;
    let added = match (subtype, cmd.def.as_ref().and_then(|d| d.node.as_ref())) {
        (AlterTableType::AtAddConstraint, Some(N::Constraint(c))) => Some(c.as_ref()),
        _ => None,
    };
    let constraint = added.and_then(|c| match ConstrType::try_from(c.contype).ok()? {
        ConstrType::ConstrCheck => Some("check"),
        ConstrType::ConstrForeign => Some("foreign"),
        ConstrType::ConstrUnique => Some("unique"),
        ConstrType::ConstrPrimary => Some("primary"),
        ConstrType::ConstrExclusion => Some("exclusion"),
        _ => None,
    });
    let not_valid = match (constraint, added) {
        (Some("check" | "foreign"), Some(c)) if !c.skip_validation => {
            let mut cmd = cmd.clone();
            if let Some(N::Constraint(c)) = cmd.def.as_mut().and_then(|d| d.node.as_mut()) {
                c.skip_validation = true;
                c.initially_valid = false;
            }
            Some(single(cmd, stmt.relation.clone().unwrap_or_default())?)
        }
        _ => None,
    };
    let column = Some(cmd.name.clone()).filter(|n| !n.is_empty());
    let named = added.is_some_and(|c| !c.conname.is_empty());
    Ok(Clause { statement, kind: format!("{subtype:?}"), on_clone, references, can_fail: can_fail(subtype, cmd), not_valid, column, constraint, named })
}

/// The constraints a clause adds: the one of `ADD CONSTRAINT`, those of a column it adds.
fn constraints_mut(cmd: &mut protobuf::AlterTableCmd) -> Vec<&mut protobuf::Constraint> {
    match cmd.def.as_mut().and_then(|d| d.node.as_mut()) {
        Some(N::Constraint(c)) => vec![c.as_mut()],
        Some(N::ColumnDef(def)) => def
            .constraints
            .iter_mut()
            .filter_map(|c| match c.node.as_mut() {
                Some(N::Constraint(c)) => Some(c.as_mut()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn constraints(cmd: &protobuf::AlterTableCmd) -> Vec<&protobuf::Constraint> {
    match cmd.def.as_ref().and_then(|d| d.node.as_ref()) {
        Some(N::Constraint(c)) => vec![c.as_ref()],
        Some(N::ColumnDef(def)) => def
            .constraints
            .iter()
            .filter_map(|c| match c.node.as_ref() {
                Some(N::Constraint(c)) => Some(c.as_ref()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// What can make the clause fail on existing rows. Not observable on an empty clone, so
/// these are rules, each checked against PostgreSQL by the tests.
fn can_fail(subtype: AlterTableType, cmd: &protobuf::AlterTableCmd) -> Option<&'static str> {
    use AlterTableType as T;
    let kinds: Vec<(ConstrType, bool)> =
        constraints(cmd).iter().filter_map(|c| ConstrType::try_from(c.contype).ok().map(|k| (k, c.skip_validation))).collect();
    let by_constraint = |kinds: &[(ConstrType, bool)]| {
        kinds.iter().find_map(|(k, not_valid)| match k {
            ConstrType::ConstrCheck if !not_valid => Some("rows that violate the CHECK"),
            ConstrType::ConstrForeign if !not_valid => Some("rows without a matching row in the referenced table"),
            ConstrType::ConstrUnique => Some("duplicate values"),
            ConstrType::ConstrPrimary => Some("duplicate or NULL values"),
            ConstrType::ConstrExclusion => Some("rows that conflict under the exclusion constraint"),
            ConstrType::ConstrNotnull => Some("NULL values"),
            _ => None,
        })
    };
    match subtype {
        T::AtAddConstraint | T::AtAddIndex | T::AtAddIndexConstraint => by_constraint(&kinds).or(match subtype {
            T::AtAddIndex | T::AtAddIndexConstraint => Some("duplicate values"),
            _ => None,
        }),
        T::AtAddColumn => {
            let has_default = kinds.iter().any(|(k, _)| matches!(k, ConstrType::ConstrDefault | ConstrType::ConstrIdentity | ConstrType::ConstrGenerated));
            match kinds.iter().any(|(k, _)| *k == ConstrType::ConstrNotnull) && !has_default {
                true => Some("any row at all: the new column has no default for its NOT NULL"),
                false => by_constraint(&kinds.into_iter().filter(|(k, _)| *k != ConstrType::ConstrNotnull).collect::<Vec<_>>()),
            }
        }
        T::AtSetNotNull => Some("NULL values"),
        T::AtAlterColumnType => Some("values that do not convert to the new type"),
        T::AtValidateConstraint => Some("rows that violate the constraint"),
        T::AtSetExpression | T::AtAddIdentity => None,
        _ => None,
    }
}

fn clone_range_var(name: &str) -> protobuf::RangeVar {
    protobuf::RangeVar { schemaname: "pg_temp".into(), relname: name.into(), inh: true, relpersistence: "p".into(), ..Default::default() }
}

fn deparse(tree: &protobuf::ParseResult) -> Result<String> {
    pg_query::deparse(tree, Default::default()).map_err(|e| Error::internal(format!("cannot deparse a clause of the ALTER: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> QualifiedName {
        QualifiedName::new("public", "orders")
    }

    #[test]
    fn each_clause_becomes_a_statement_of_its_own() {
        let c = split("ALTER COLUMN n TYPE bigint, ADD CONSTRAINT c_fk FOREIGN KEY (c) REFERENCES customers (id), ADD CHECK (n > 0) NOT VALID", &table()).unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(c[0].statement, "ALTER TABLE public.orders ALTER COLUMN n TYPE bigint");
        assert_eq!(c[0].on_clone, "ALTER TABLE pg_temp.pg_ghost_plan ALTER COLUMN n TYPE bigint");
        assert_eq!(c[0].can_fail, Some("values that do not convert to the new type"));
        assert_eq!(c[1].references, vec![QualifiedName::new("", "customers")]);
        assert!(c[1].on_clone.contains("REFERENCES pg_temp.pg_ghost_plan_ref0"), "{}", c[1].on_clone);
        assert!(c[1].can_fail.is_some());
        assert_eq!(c[2].can_fail, None, "NOT VALID checks nothing");
    }

    #[test]
    fn a_self_reference_points_at_the_clone() {
        let c = split("ADD FOREIGN KEY (parent) REFERENCES orders (id)", &table()).unwrap();
        assert!(c[0].references.is_empty());
        assert!(c[0].on_clone.contains("REFERENCES pg_temp.pg_ghost_plan "), "{}", c[0].on_clone);
    }

    #[test]
    fn columns_added_say_what_rows_can_do_to_them() {
        let c = split("ADD COLUMN a int NOT NULL, ADD COLUMN b int NOT NULL DEFAULT 0, ADD COLUMN d int UNIQUE", &table()).unwrap();
        assert!(c[0].can_fail.unwrap().contains("no default"));
        assert_eq!(c[1].can_fail, None);
        assert!(c[2].can_fail.unwrap().contains("duplicate"));
    }

    #[test]
    fn bad_input_is_a_config_error() {
        assert!(split("", &table()).is_err());
        assert!(split("ADD COLUMN", &table()).is_err());
        assert!(split("ADD COLUMN a int; DROP TABLE x", &table()).is_err());
    }
}
