//! Reading the user's ALTER with PostgreSQL's own parser (`pg_query`).
//!
//! The ALTER is given as the clauses that follow `ALTER TABLE name`. It is placed after the
//! ghost's quoted name, parsed, and accepted only when the result is exactly one statement
//! that alters that table in a way an online change can carry: one `ALTER TABLE` with
//! supported sub-commands, or one `RENAME COLUMN` / `RENAME CONSTRAINT`. From the parse
//! tree we learn the `USING` expression of each type change (the copy and the apply must
//! use the very same expression) and whether the change would rewrite the table at all.
//! Clauses that act on one column together are refused where the ghost's definition after
//! the ALTER does not tell what a plain ALTER would leave in the existing rows (`compose`).
//! The text that runs on the ghost is the user's own, unless constraint names must be
//! redirected to the ghost's temporary names, in which case it is deparsed from the tree.

use crate::error::{Error, Result};
use crate::sql::{ident, QualifiedName};
use pg_query::protobuf::{self, node::Node as N, AlterTableType, ObjectType};
use std::collections::HashMap;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AlterPlan {
    /// The statement to run on the ghost table.
    pub ghost_sql: String,
    /// Column name (as before the ALTER) → the `USING` expression of its type change.
    pub using: HashMap<String, String>,
    /// Whether a plain `ALTER TABLE` would rewrite or scan the whole table. When false the
    /// change is catalog-only and a plain ALTER would be instant.
    pub rewrites: bool,
    /// Names the ALTER gives to constraints or columns it renames (old → new).
    pub renamed_constraints: HashMap<String, String>,
}

impl AlterPlan {
    /// No ALTER at all: a conversion into a partitioned table given without `--alter`
    /// (the conversion itself rewrites the table).
    pub fn none() -> AlterPlan {
        AlterPlan { ghost_sql: String::new(), using: HashMap::new(), rewrites: true, renamed_constraints: HashMap::new() }
    }
}

/// Parses `alter` as it would apply to `ghost`. `constraint_names` maps constraint names of
/// the original table to the temporary names they carry on the ghost, so that clauses such
/// as `DROP CONSTRAINT orders_pkey` find what they name.
pub fn plan(alter: &str, ghost: &QualifiedName, constraint_names: &HashMap<String, String>) -> Result<AlterPlan> {
    let alter = alter.trim().trim_end_matches(';').trim();
    if alter.is_empty() {
        return Err(Error::config("--alter is empty: give the clauses that follow ALTER TABLE <name>"));
    }
    let text = format!("ALTER TABLE {} {}", ghost.sql(), alter);
    let parsed = pg_query::parse(&text, pg_query::ParserOptions::DEFAULT)
        .map_err(|e| Error::config(format!("--alter is not valid SQL: {}", parse_message(&e))))?;
    let mut tree = parsed.protobuf;
    if tree.stmts.len() != 1 {
        return Err(Error::config(format!(
            "--alter must be the clauses of one ALTER TABLE statement; it makes {} statements",
            tree.stmts.len()
        )));
    }
    let stmt = tree.stmts[0]
        .stmt
        .as_mut()
        .and_then(|n| n.node.as_mut())
        .ok_or_else(|| Error::config("--alter parsed to an empty statement"))?;
    let mut plan = AlterPlan {
        ghost_sql: text.clone(),
        using: HashMap::new(),
        rewrites: false,
        renamed_constraints: HashMap::new(),
    };
    let mut redirected = false;
    match stmt {
        N::AlterTableStmt(s) => {
            check_target(s.relation.as_ref(), ghost)?;
            if s.objtype != ObjectType::ObjectTable as i32 {
                return Err(Error::config("--alter must alter a table"));
            }
            compose(&s.cmds, &mut plan)?;
            for cmd in &mut s.cmds {
                let Some(N::AlterTableCmd(cmd)) = cmd.node.as_mut() else {
                    return Err(Error::config("--alter has a clause pg-ghost does not understand"));
                };
                redirected |= read_command(cmd, constraint_names, &mut plan)?;
            }
        }
        N::RenameStmt(s) => {
            check_target(s.relation.as_ref(), ghost)?;
            match ObjectType::try_from(s.rename_type) {
                Ok(ObjectType::ObjectColumn) => {}
                Ok(ObjectType::ObjectTabconstraint) => {
                    plan.renamed_constraints.insert(s.subname.clone(), s.newname.clone());
                    if let Some(tmp) = constraint_names.get(&s.subname) {
                        s.subname = tmp.clone();
                        redirected = true;
                    }
                }
                Ok(ObjectType::ObjectTable) => {
                    return Err(Error::refused(
                        "--alter renames the table (RENAME TO); that is not a schema change pg-ghost performs: rename the table with a plain ALTER TABLE, it is instant",
                    ))
                }
                _ => return Err(Error::refused("--alter renames something pg-ghost does not support; only RENAME COLUMN and RENAME CONSTRAINT are")),
            }
        }
        N::AlterObjectSchemaStmt(_) => {
            return Err(Error::refused(
                "--alter moves the table to another schema (SET SCHEMA); do that with a plain ALTER TABLE, it is instant",
            ))
        }
        _ => return Err(Error::config("--alter must be the clauses of an ALTER TABLE statement")),
    }
    if redirected {
        plan.ghost_sql = pg_query::deparse(&tree, Default::default())
            .map_err(|e| Error::internal(format!("cannot deparse the ALTER after redirecting constraint names: {e}")))?;
    }
    Ok(plan)
}

/// The ALTER as PostgreSQL's parser reads it, so that two spellings of the same change
/// (spacing, case of keywords, a trailing `;`) compare equal.
pub fn canonical(alter: &str) -> Result<String> {
    let alter = alter.trim().trim_end_matches(';').trim();
    // Only a conversion into a partitioned table runs without an ALTER (see `AlterPlan::none`).
    if alter.is_empty() {
        return Ok(String::new());
    }
    let parsed = pg_query::parse(&format!("ALTER TABLE pg_ghost_t {alter}"), pg_query::ParserOptions::DEFAULT)
        .map_err(|e| Error::config(format!("--alter is not valid SQL: {}", parse_message(&e))))?;
    pg_query::deparse(&parsed.protobuf, Default::default()).map_err(|e| Error::internal(format!("cannot deparse the ALTER: {e}")))
}

fn parse_message(e: &pg_query::Error) -> String {
    match e {
        pg_query::Error::Parse(m) => m.clone(),
        other => other.to_string(),
    }
}

fn check_target(relation: Option<&protobuf::RangeVar>, ghost: &QualifiedName) -> Result<()> {
    match relation {
        Some(r) if r.relname == ghost.name && r.schemaname == ghost.schema => Ok(()),
        _ => Err(Error::config("--alter must apply to the table itself")),
    }
}

/// Reads one sub-command; returns whether a constraint name in it was redirected.
fn read_command(
    cmd: &mut protobuf::AlterTableCmd,
    constraint_names: &HashMap<String, String>,
    plan: &mut AlterPlan,
) -> Result<bool> {
    use AlterTableType as T;
    let subtype = T::try_from(cmd.subtype).map_err(|_| Error::config("--alter has an unknown clause"))?;
    let refuse = |what: &str, why: &str| Err(Error::refused(format!("--alter {what}: {why}")));
    match subtype {
        T::AtAlterColumnType => plan.rewrites = true,
        T::AtAddColumn => {
            if let Some(N::ColumnDef(def)) = cmd.def.as_ref().and_then(|d| d.node.as_ref()) {
                // A constant default is catalog-only since PostgreSQL 11; anything else rewrites.
                let volatile_or_constraint = def.constraints.iter().any(|c| match c.node.as_ref() {
                    Some(N::Constraint(c)) => {
                        let kind = protobuf::ConstrType::try_from(c.contype).ok();
                        !matches!(kind, Some(protobuf::ConstrType::ConstrDefault) | Some(protobuf::ConstrType::ConstrNull))
                            || c.raw_expr.as_ref().map_or(false, |e| !is_constant(e))
                    }
                    _ => true,
                });
                plan.rewrites |= volatile_or_constraint || !def.identity.is_empty() || !def.generated.is_empty();
            }
        }
        T::AtSetNotNull | T::AtAddConstraint | T::AtAddIndex | T::AtValidateConstraint | T::AtAddIdentity => {
            plan.rewrites = true;
        }
        T::AtDropColumn
        | T::AtColumnDefault
        | T::AtDropNotNull
        | T::AtSetStatistics
        | T::AtSetOptions
        | T::AtResetOptions
        | T::AtSetStorage
        | T::AtSetCompression
        | T::AtSetRelOptions
        | T::AtResetRelOptions
        | T::AtSetIdentity
        | T::AtDropIdentity
        | T::AtDropExpression
        | T::AtReplicaIdentity
        | T::AtChangeOwner
        | T::AtSetTableSpace
        | T::AtSetAccessMethod => {}
        T::AtSetExpression => plan.rewrites = true,
        T::AtDropConstraint | T::AtAlterConstraint => {
            let name = match (subtype, cmd.def.as_mut().and_then(|d| d.node.as_mut())) {
                (T::AtAlterConstraint, Some(N::AtalterConstraint(c))) => &mut c.conname,
                _ => &mut cmd.name,
            };
            if let Some(tmp) = constraint_names.get(name.as_str()) {
                *name = tmp.clone();
                return Ok(true);
            }
        }
        T::AtSetLogged | T::AtSetUnLogged => return refuse("changes persistence (SET LOGGED/UNLOGGED)", "unlogged tables cannot be streamed; use a plain ALTER TABLE"),
        T::AtAddInherit | T::AtDropInherit | T::AtAddOf | T::AtDropOf => return refuse("changes inheritance or the table's type", "not supported"),
        T::AtAttachPartition | T::AtDetachPartition | T::AtDetachPartitionFinalize => return refuse("attaches or detaches partitions", "partitioned tables are not supported"),
        T::AtEnableTrig
        | T::AtEnableAlwaysTrig
        | T::AtEnableReplicaTrig
        | T::AtDisableTrig
        | T::AtEnableTrigAll
        | T::AtDisableTrigAll
        | T::AtEnableTrigUser
        | T::AtDisableTrigUser
        | T::AtEnableRule
        | T::AtEnableAlwaysRule
        | T::AtEnableReplicaRule
        | T::AtDisableRule
        | T::AtEnableRowSecurity
        | T::AtDisableRowSecurity
        | T::AtForceRowSecurity
        | T::AtNoForceRowSecurity
        | T::AtClusterOn
        | T::AtDropCluster => return refuse("changes triggers, rules, row security or clustering", "these are instant with a plain ALTER TABLE and need no copy"),
        _ => return refuse("has a clause pg-ghost does not support", "use a plain ALTER TABLE for it"),
    }
    Ok(false)
}

/// Reads what several clauses of the ALTER do to one column together, where the ghost's
/// definition after the ALTER does not tell what the existing rows must hold; sets
/// `plan.using`.
///
/// PostgreSQL runs the clauses in passes, whatever their order in the statement (drops;
/// type changes; added columns; NOT NULL, identity; defaults and constraints), and only
/// then rewrites the rows. A type change's expression is read against the table as it was
/// and is evaluated over the row as it was. Measured on PostgreSQL 15:
/// - Two type changes of one column: accepted only while every clause but the last keeps
///   the column's type (`cannot alter type of column "a" twice` otherwise). The rewrite
///   evaluates every clause's expression on every row, in order, and keeps the last
///   clause's result: `TYPE int USING a + 10, TYPE text` leaves `a` as it was, as text,
///   and `TYPE int USING a / 0, TYPE text` fails with a division by zero. So the last
///   clause's `USING` (or none) is the column's expression; an earlier `USING` is refused,
///   since its errors and side effects would happen in PostgreSQL and not in the copy.
/// - `ADD COLUMN x ... DEFAULT d` followed by `ALTER COLUMN x SET DEFAULT e` (in any
///   order, also after `DROP COLUMN x`): the existing rows get `d` (NULL without a DEFAULT,
///   `nextval` for a serial) and `e` serves only later inserts. The ghost ends with `e`,
///   and the copy takes the ghost's default for a new column: refused. The same holds for
///   `ALTER COLUMN x ADD GENERATED ... AS IDENTITY` on an added column (the existing rows
///   stay NULL and the ALTER fails on a non-empty table; the copy would number them).
///   (`ADD COLUMN IF NOT EXISTS` of a column the table has is refused the same way; the
///   ALTER cannot tell.)
/// - `ADD COLUMN x`, then `ALTER COLUMN x TYPE`, `DROP DEFAULT`, `DROP NOT NULL`,
///   `DROP EXPRESSION` or `DROP COLUMN x`: PostgreSQL fails (`column "x" does not exist`:
///   those passes run before columns are added), and so does the ALTER on the ghost.
/// - A type change's `USING` naming a column the ALTER drops, or another column whose type
///   it changes: evaluated over the row as it was, as the copy does.
/// - A type change with `SET DEFAULT`, `DROP DEFAULT` or `SET NOT NULL` on the same column,
///   `DROP COLUMN a, ADD COLUMN a`: the ghost's final definition says it all (an added
///   column has a new attnum and takes the ADD COLUMN's default).
fn compose(cmds: &[protobuf::Node], plan: &mut AlterPlan) -> Result<()> {
    use AlterTableType as T;
    let mut type_changes: Vec<(&str, Vec<&protobuf::AlterTableCmd>)> = Vec::new();
    let mut added: Vec<&protobuf::AlterTableCmd> = Vec::new();
    let commands = cmds.iter().filter_map(|c| match c.node.as_ref() {
        Some(N::AlterTableCmd(cmd)) => Some(cmd),
        _ => None,
    });
    for cmd in commands.clone() {
        match T::try_from(cmd.subtype) {
            Ok(T::AtAlterColumnType) => match type_changes.iter_mut().find(|(name, _)| *name == cmd.name) {
                Some((_, clauses)) => clauses.push(cmd),
                None => type_changes.push((&cmd.name, vec![cmd])),
            },
            Ok(T::AtAddColumn) => added.push(cmd),
            _ => {}
        }
    }
    for (column, clauses) in &type_changes {
        let Some((last, earlier)) = clauses.split_last() else { continue };
        if earlier.iter().any(|c| using_of(c).is_some()) {
            return Err(Error::refused(format!(
                "--alter changes the type of column {} more than once ({}): PostgreSQL computes every one of these USING expressions on every row and keeps only the last clause's result; pg-ghost does not reproduce that. Give the column one TYPE clause",
                ident(column),
                clauses_text(clauses)
            )));
        }
        match using_of(last) {
            Some(expr) => plan.using.insert(column.to_string(), crate::sqltree::deparse_expression(expr)?),
            None => plan.using.remove(*column),
        };
    }
    for cmd in commands {
        let (what, why) = match T::try_from(cmd.subtype) {
            Ok(T::AtColumnDefault) if cmd.def.is_some() => (
                "sets its default",
                "PostgreSQL fills the existing rows from the ADD COLUMN clause and keeps the new default for later rows, while pg-ghost's copy would fill them from the new default. Add the column with the value the existing rows should get, and change its default with a plain ALTER TABLE after the cut-over (that is instant)",
            ),
            Ok(T::AtAddIdentity) => (
                "makes it an identity column",
                "PostgreSQL leaves the existing rows without a value (so the ALTER fails on a table with rows), while pg-ghost's copy would number them. Declare the identity in the ADD COLUMN clause",
            ),
            _ => continue,
        };
        if let Some(add) = added.iter().find(|a| added_column(a) == Some(cmd.name.as_str())) {
            return Err(Error::refused(format!(
                "--alter adds column {} and {what} in the same statement ({}): {why}",
                ident(&cmd.name),
                clauses_text(&[add, cmd])
            )));
        }
    }
    Ok(())
}

fn using_of(cmd: &protobuf::AlterTableCmd) -> Option<&protobuf::Node> {
    match cmd.def.as_ref().and_then(|d| d.node.as_ref()) {
        Some(N::ColumnDef(def)) => def.raw_default.as_deref(),
        _ => None,
    }
}

fn added_column(cmd: &protobuf::AlterTableCmd) -> Option<&str> {
    match cmd.def.as_ref().and_then(|d| d.node.as_ref()) {
        Some(N::ColumnDef(def)) => Some(def.colname.as_str()),
        _ => None,
    }
}

/// The clauses as PostgreSQL's deparser writes them, for messages.
fn clauses_text(cmds: &[&protobuf::AlterTableCmd]) -> String {
    let fallback = || cmds.iter().map(|c| format!("a clause on {}", ident(&c.name))).collect::<Vec<_>>().join(", ");
    let Ok(parsed) = pg_query::parse("ALTER TABLE t DROP COLUMN x", pg_query::ParserOptions::DEFAULT) else { return fallback() };
    let mut tree = parsed.protobuf;
    let Some(N::AlterTableStmt(stmt)) = tree.stmts.first_mut().and_then(|s| s.stmt.as_mut()).and_then(|n| n.node.as_mut()) else {
        return fallback();
    };
    stmt.cmds = cmds.iter().map(|c| protobuf::Node { node: Some(N::AlterTableCmd(Box::new((*c).clone()))) }).collect();
    match pg_query::deparse(&tree, Default::default()) {
        Ok(sql) => sql.strip_prefix("ALTER TABLE t ").map(str::to_string).unwrap_or(sql),
        Err(_) => fallback(),
    }
}

fn is_constant(node: &protobuf::Node) -> bool {
    match node.node.as_ref() {
        Some(N::AConst(_)) => true,
        Some(N::TypeCast(c)) => c.arg.as_deref().map_or(false, is_constant),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ghost() -> QualifiedName {
        QualifiedName::new("public", "_orders_gho")
    }

    fn ok(alter: &str) -> AlterPlan {
        plan(alter, &ghost(), &HashMap::new()).unwrap_or_else(|e| panic!("{alter}: {e}"))
    }

    fn err(alter: &str) -> String {
        plan(alter, &ghost(), &HashMap::new()).expect_err(alter).to_string()
    }

    #[test]
    fn canonical_form_ignores_spelling_but_not_meaning() {
        let c = |a: &str| canonical(a).unwrap_or_else(|e| panic!("{a}: {e}"));
        assert_eq!(c("alter column n type bigint;"), c("ALTER COLUMN n  TYPE  BIGINT"));
        assert_ne!(c("ALTER COLUMN n SET DEFAULT 5"), c("ALTER COLUMN n SET DEFAULT 6"));
        assert_ne!(c("ALTER COLUMN n TYPE bigint"), c("ALTER COLUMN m TYPE bigint"));
        assert!(canonical("ALTER COLUMN").is_err());
    }

    #[test]
    fn accepts_several_clauses_and_keeps_the_text() {
        let p = ok("ALTER COLUMN n TYPE bigint, ADD COLUMN f boolean NOT NULL DEFAULT false");
        assert_eq!(p.ghost_sql, "ALTER TABLE \"public\".\"_orders_gho\" ALTER COLUMN n TYPE bigint, ADD COLUMN f boolean NOT NULL DEFAULT false");
        assert!(p.rewrites);
        assert!(p.using.is_empty());
    }

    #[test]
    fn reads_using_expressions() {
        let p = ok("ALTER COLUMN body TYPE int USING length(body), ALTER COLUMN \"Odd \"\"Name\" TYPE text USING \"Odd \"\"Name\"::text || 'x'");
        assert_eq!(p.using["body"], "(length(body))");
        assert_eq!(p.using["Odd \"Name"], "(\"Odd \"\"Name\"::text || 'x')");
    }

    #[test]
    fn the_last_type_change_of_a_column_gives_its_expression() {
        let p = ok("ALTER COLUMN a TYPE int, ALTER COLUMN a TYPE text USING a::text || 'x', ALTER COLUMN b TYPE int USING length(b)");
        assert_eq!(p.using["a"], "(a::text || 'x')");
        assert_eq!(p.using["b"], "(length(b))");
        let p = ok("ALTER COLUMN a TYPE int, ALTER COLUMN a TYPE text");
        assert!(p.using.is_empty(), "{:?}", p.using);
        // Each USING reads the row as it was, as the copy does.
        let p = ok("ALTER COLUMN a TYPE numeric USING c, ALTER COLUMN c TYPE int USING a, DROP COLUMN b");
        assert_eq!((p.using["a"].as_str(), p.using["c"].as_str()), ("(c)", "(a)"));
    }

    #[test]
    fn refuses_a_using_that_a_later_type_change_overrides() {
        let e = err("ALTER COLUMN a TYPE int USING a + 10, ALTER COLUMN a TYPE text");
        assert!(e.contains("column \"a\" more than once"), "{e}");
        assert!(e.contains("(ALTER COLUMN a TYPE int USING a + 10, ALTER COLUMN a TYPE text)"), "{e}");
        let e = err("ALTER COLUMN \"Odd\" SET DATA TYPE int USING 1, ALTER COLUMN b DROP DEFAULT, ALTER COLUMN \"Odd\" TYPE int USING 2");
        assert!(e.contains("column \"Odd\" more than once"), "{e}");
        assert!(e.contains("USING 1") && e.contains("USING 2") && !e.contains("DROP DEFAULT"), "{e}");
    }

    #[test]
    fn refuses_a_default_set_on_a_column_the_alter_adds() {
        for alter in [
            "ADD COLUMN x int DEFAULT 5, ALTER COLUMN x SET DEFAULT 7",
            "ALTER COLUMN x SET DEFAULT 7, ADD COLUMN x int",
            "DROP COLUMN x, ADD COLUMN x int DEFAULT 3, ALTER COLUMN x SET DEFAULT 4",
            "ADD COLUMN x serial, ALTER COLUMN x SET DEFAULT 0",
        ] {
            let e = err(alter);
            assert!(e.contains("adds column \"x\" and sets its default"), "{alter}: {e}");
            assert!(e.contains("ADD COLUMN x") && e.contains("ALTER COLUMN x SET DEFAULT"), "{alter}: {e}");
        }
        let e = err("ADD COLUMN x int NOT NULL, ALTER COLUMN x ADD GENERATED ALWAYS AS IDENTITY");
        assert!(e.contains("adds column \"x\" and makes it an identity column"), "{e}");
        // What PostgreSQL runs before adding columns, or what leaves the rows' values alone.
        ok("ADD COLUMN x int DEFAULT 5, ALTER COLUMN x SET NOT NULL, ALTER COLUMN x SET STATISTICS 10");
        ok("ADD COLUMN x int DEFAULT 5, ALTER COLUMN a SET DEFAULT 7, ALTER COLUMN a TYPE bigint");
        ok("ALTER COLUMN x DROP DEFAULT, DROP COLUMN x, ADD COLUMN x int DEFAULT 3");
    }

    #[test]
    fn tells_catalog_only_changes() {
        assert!(!ok("ADD COLUMN note text").rewrites);
        assert!(!ok("ADD COLUMN flag boolean DEFAULT false").rewrites);
        assert!(ok("ADD COLUMN t timestamptz DEFAULT clock_timestamp()").rewrites);
        assert!(!ok("DROP COLUMN note").rewrites);
        assert!(ok("ADD CONSTRAINT c CHECK (n > 0)").rewrites);
        assert!(!ok("RENAME COLUMN a TO b").rewrites);
    }

    #[test]
    fn refuses_what_is_not_an_online_change() {
        assert!(err("RENAME TO other").contains("RENAME TO"));
        assert!(err("SET SCHEMA other").contains("SET SCHEMA"));
        assert!(err("ADD COLUMN x int; DROP TABLE users").contains("2 statements"));
        assert!(err("ADD COLUMN x int); DROP TABLE users; --").contains("not valid SQL"));
        assert!(err("SET UNLOGGED").contains("persistence"));
        assert!(err("DISABLE TRIGGER ALL").contains("triggers"));
        assert!(err("").contains("empty"));
        assert!(err("ADD COLUMN").contains("not valid SQL"));
    }

    #[test]
    fn redirects_constraint_names_to_the_ghost() {
        let names = HashMap::from([("orders_pkey".to_string(), "_orders_pkey_gho".to_string())]);
        let p = plan("DROP CONSTRAINT orders_pkey, ADD PRIMARY KEY (id, n)", &ghost(), &names).unwrap();
        assert!(p.ghost_sql.contains("DROP CONSTRAINT _orders_pkey_gho"), "{}", p.ghost_sql);
        assert!(p.ghost_sql.contains("ADD PRIMARY KEY (id, n)"), "{}", p.ghost_sql);
        let p = plan("RENAME CONSTRAINT orders_pkey TO pk", &ghost(), &names).unwrap();
        assert!(p.ghost_sql.contains("_orders_pkey_gho"), "{}", p.ghost_sql);
        assert_eq!(p.renamed_constraints["orders_pkey"], "pk");
    }
}
