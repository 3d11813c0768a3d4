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

/// Makes a query (as `pg_get_viewdef` prints it, every relation schema-qualified) read
/// other relations of the same schemas: each `(from, to)` replaces the relation `from` by
/// the one named `to` in `from`'s schema, and the columns qualified by `from`'s name follow
/// it. PostgreSQL's parser finds every reference and its scanner delimits the token to
/// replace, so the rest of the text stays byte for byte what the server printed.
///
/// Refuses (rather than guess) a reference it cannot retarget: a relation under an alias is
/// fine, but a column qualified by schema and table, or a name that does not read back as
/// expected, is an error.
pub fn retarget_relations(query: &str, renames: &[(QualifiedName, String)]) -> Result<String> {
    let tree = pg_query::parse(query, pg_query::ParserOptions::DEFAULT)
        .map_err(|e| Error::internal(format!("cannot parse {query:?}: {e}")))?
        .protobuf;
    let json = serde_json::to_value(&tree).map_err(|e| Error::internal(format!("cannot walk the parse tree: {e}")))?;
    let mut refs = References::default();
    refs.collect(&json);
    let tokens = pg_query::scan_tokens(query).map_err(|e| Error::internal(format!("cannot scan {query:?}: {e}")))?;
    // (start, end, replacement), applied from the end so earlier offsets stay valid.
    let mut splices: Vec<(usize, usize, String)> = Vec::new();
    for (from, to) in renames {
        let mut unaliased = false;
        for r in refs.relations.iter().filter(|r| r.schema == from.schema && r.name == from.name) {
            // schema '.' name: the name is the third token of the reference.
            let token = token_at(&tokens, r.location, 2).ok_or_else(|| unexpected(query, r.location))?;
            splices.push(expect_name(query, token, &from.name, to)?);
            unaliased |= !r.aliased;
        }
        if !unaliased {
            continue;
        }
        for c in refs.columns.iter().filter(|c| c.fields.first().map(String::as_str) == Some(from.name.as_str())) {
            if c.fields.len() > 2 {
                return Err(Error::internal(format!("a column of {from} is named with its schema in {query:?}")));
            }
            let token = token_at(&tokens, c.location, 0).ok_or_else(|| unexpected(query, c.location))?;
            splices.push(expect_name(query, token, &from.name, to)?);
        }
    }
    splices.sort_by_key(|s| std::cmp::Reverse(s.0));
    splices.dedup_by_key(|s| s.0);
    let mut out = query.to_string();
    for (start, end, with) in splices {
        out.replace_range(start..end, &with);
    }
    Ok(out)
}

#[derive(Default)]
struct References {
    relations: Vec<RelationRef>,
    columns: Vec<ColumnRef>,
}

struct RelationRef {
    schema: String,
    name: String,
    aliased: bool,
    location: i64,
}

struct ColumnRef {
    /// The name parts; `*` for a star.
    fields: Vec<String>,
    location: i64,
}

impl References {
    /// Walks the whole tree as data, so no node kind is left unvisited.
    fn collect(&mut self, v: &serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    match key.as_str() {
                        "RangeVar" => self.relations.push(RelationRef {
                            schema: text(value, "schemaname"),
                            name: text(value, "relname"),
                            aliased: !value["alias"].is_null(),
                            location: value["location"].as_i64().unwrap_or(-1),
                        }),
                        "ColumnRef" => self.columns.push(ColumnRef {
                            fields: value["fields"]
                                .as_array()
                                .map(|fields| {
                                    fields.iter().map(|f| f["node"]["String"]["sval"].as_str().unwrap_or("*").to_string()).collect()
                                })
                                .unwrap_or_default(),
                            location: value["location"].as_i64().unwrap_or(-1),
                        }),
                        _ => {}
                    }
                    self.collect(value);
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|i| self.collect(i)),
            _ => {}
        }
    }
}

fn text(v: &serde_json::Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_string()
}

/// The `skip`-th token (after the one starting at `location`) of a dotted name.
fn token_at(tokens: &[protobuf::ScanToken], location: i64, skip: usize) -> Option<&protobuf::ScanToken> {
    let first = tokens.iter().position(|t| i64::from(t.start) == location)?;
    tokens.get(first + skip)
}

fn unexpected(query: &str, location: i64) -> Error {
    Error::internal(format!("no name at offset {location} of {query:?}"))
}

/// The splice that replaces `token`, after checking it spells `name`.
fn expect_name(query: &str, token: &protobuf::ScanToken, name: &str, to: &str) -> Result<(usize, usize, String)> {
    let (start, end) = (token.start as usize, token.end as usize);
    let spelled = query.get(start..end).unwrap_or_default();
    let read = match spelled.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(quoted) => quoted.replace("\"\"", "\""),
        None => spelled.to_string(),
    };
    if read != name {
        return Err(Error::internal(format!("expected the name {name:?} at offset {start} of {query:?}, found {spelled:?}")));
    }
    Ok((start, end, crate::sql::ident(to)))
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
    #[test]
    fn retargets_relations_and_their_columns() {
        let orders = QualifiedName::new("public", "orders");
        let def = " SELECT orders.id,\n    sum(orders.total) AS sum\n   FROM public.orders\n  GROUP BY orders.id;";
        let out = retarget_relations(def, &[(orders.clone(), "_orders_gho".into())]).unwrap();
        assert_eq!(out, " SELECT \"_orders_gho\".id,\n    sum(\"_orders_gho\".total) AS sum\n   FROM public.\"_orders_gho\"\n  GROUP BY \"_orders_gho\".id;");
        // Under an alias, only the relation changes; other schemas' tables and CTEs of the
        // same name are left alone; subqueries, window clauses and row references are found.
        let def = " WITH orders AS (SELECT 1 AS id) SELECT o.id, row_to_json(o.*) AS j, x.n, \
                   count(*) OVER (PARTITION BY o.cust ORDER BY o.id) AS c FROM public.orders o \
                   JOIN other.orders x ON x.id = o.id WHERE EXISTS (SELECT 1 FROM orders) \
                   AND o.id IN (SELECT orders_1.id FROM public.orders orders_1 WHERE orders_1.total > 0)";
        let out = retarget_relations(def, &[(orders.clone(), "_orders_gho".into())]).unwrap();
        assert_eq!(out.matches("public.\"_orders_gho\"").count(), 2, "{out}");
        assert!(out.contains("other.orders x") && out.contains("FROM orders)") && out.contains("o.id"), "{out}");
        // Quoted names in and out.
        let q = QualifiedName::new("My S", "Order Items");
        let def = " SELECT \"Order Items\".\"Id\" FROM \"My S\".\"Order Items\"";
        let out = retarget_relations(def, &[(q, "_Order Items_gho".into())]).unwrap();
        assert_eq!(out, " SELECT \"_Order Items_gho\".\"Id\" FROM \"My S\".\"_Order Items_gho\"");
        // Several at once (a materialized view over another one).
        let def = " SELECT mv.n, orders.id FROM (public.mv JOIN public.orders ON ((orders.id = mv.n)))";
        let out = retarget_relations(def, &[(orders, "_orders_gho".into()), (QualifiedName::new("public", "mv"), "_mv_gho".into())]).unwrap();
        assert_eq!(out, " SELECT \"_mv_gho\".n, \"_orders_gho\".id FROM (public.\"_mv_gho\" JOIN public.\"_orders_gho\" ON ((\"_orders_gho\".id = \"_mv_gho\".n)))");
    }
}
