//! Small edits to SQL through PostgreSQL's parse tree (`pg_query`), never through text.

use crate::error::{Error, Result};
use crate::sql::QualifiedName;
use pg_query::protobuf::{self, node::Node as N};

fn parse(sql: &str) -> Result<protobuf::ParseResult> {
    pg_query::parse(sql, pg_query::ParserOptions::DEFAULT)
        .map(|r| r.protobuf)
        .map_err(|e| Error::internal(format!("cannot parse {sql:?}: {e}")))
}

fn deparse(tree: &protobuf::ParseResult) -> Result<String> {
    pg_query::deparse(tree, Default::default()).map_err(|e| Error::internal(format!("cannot deparse: {e}")))
}

fn only_statement(tree: &mut protobuf::ParseResult) -> Option<&mut N> {
    match tree.stmts.as_mut_slice() {
        [one] => one.stmt.as_mut().and_then(|s| s.node.as_mut()),
        _ => None,
    }
}

/// The SQL text of one expression node.
pub fn deparse_expression(expr: &protobuf::Node) -> Result<String> {
    let mut select = parse("SELECT 1")?;
    let target = match only_statement(&mut select) {
        Some(N::SelectStmt(sel)) => sel.target_list.first_mut().and_then(|t| match t.node.as_mut() {
            Some(N::ResTarget(rt)) => Some(rt),
            _ => None,
        }),
        _ => None,
    }
    .ok_or_else(|| Error::internal("unexpected parse tree for SELECT 1"))?;
    target.val = Some(Box::new(expr.clone()));
    let sql = deparse(&select)?;
    sql.strip_prefix("SELECT ")
        .map(|s| format!("({s})"))
        .ok_or_else(|| Error::internal(format!("unexpected deparse output {sql:?}")))
}

/// Takes a `CREATE INDEX` statement (as `pg_get_indexdef` prints it) and makes it create an
/// index named `name` on `table` instead.
pub fn retarget_index(indexdef: &str, name: &str, table: &QualifiedName) -> Result<String> {
    let mut tree = parse(indexdef)?;
    match only_statement(&mut tree) {
        Some(N::IndexStmt(stmt)) => {
            stmt.idxname = name.to_string();
            let rel = stmt.relation.get_or_insert_with(Default::default);
            rel.schemaname = table.schema.clone();
            rel.relname = table.name.clone();
        }
        _ => return Err(Error::internal(format!("not a CREATE INDEX statement: {indexdef:?}"))),
    }
    deparse(&tree)
}

/// Turns a `CREATE RULE` statement (as `pg_get_ruledef` prints it) into `CREATE OR REPLACE
/// RULE`, which keeps the rule's OID, comment and enabled state.
pub fn replace_rule(ruledef: &str) -> Result<String> {
    let mut tree = parse(ruledef.trim().trim_end_matches(';'))?;
    match only_statement(&mut tree) {
        Some(N::RuleStmt(stmt)) => stmt.replace = true,
        _ => return Err(Error::internal(format!("not a CREATE RULE statement: {ruledef:?}"))),
    }
    deparse(&tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retargets_an_index_definition() {
        let def = "CREATE UNIQUE INDEX orders_email_idx ON public.orders USING btree (lower(email)) INCLUDE (id) WHERE (deleted_at IS NULL)";
        let out = retarget_index(def, "_orders email_gho", &QualifiedName::new("My S", "_orders_gho")).unwrap();
        assert_eq!(
            out,
            "CREATE UNIQUE INDEX \"_orders email_gho\" ON \"My S\"._orders_gho USING btree (lower(email)) INCLUDE (id) WHERE deleted_at IS NULL"
        );
        assert!(retarget_index("SELECT 1", "x", &QualifiedName::new("a", "b")).is_err());
    }

    #[test]
    fn replaces_a_rule() {
        let def = "CREATE RULE \"log it\" AS\n    ON INSERT TO public.v DO INSTEAD  INSERT INTO public.t (id) VALUES (new.id);";
        let out = replace_rule(def).unwrap();
        assert!(out.starts_with("CREATE OR REPLACE RULE \"log it\" AS ON INSERT TO public.v"), "{out}");
        assert!(replace_rule("SELECT 1").is_err());
    }
}
