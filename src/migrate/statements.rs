//! The statements of a migration file and how each is run, read from PostgreSQL's own parse
//! tree (`pg_query`):
//!
//! - `ALTER TABLE t <clauses>`: pg-ghost's online change (`run --strategy auto`: directly,
//!   without a copy, when no clause rewrites the table; through the ghost otherwise);
//! - `CREATE INDEX`: built `CONCURRENTLY` (an index a failure leaves invalid is dropped);
//! - anything else (and a statement preceded by `-- pg-ghost: direct`): as written, under a
//!   short `lock_timeout`, retried when the lock is not had in time.
//!
//! Atomicity: a file without a transaction block is a list of independent statements, as
//! psql runs it; each one done is recorded, and a failed file resumes at the statement that
//! failed. A file with a transaction block (`BEGIN` ... `COMMIT`) says its statements must
//! be atomic together: it runs as written, in one go, and it may hold no online step (those
//! cannot run inside a transaction), or it is refused with the reason.

use crate::error::{Error, Result};
use crate::sql::ident;
use pg_query::protobuf::{self, node::Node as N, ObjectType};

/// The table name the clauses of an ALTER are deparsed against, then stripped.
const PLACEHOLDER: &str = "pg_ghost_migrate_target";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// `pg-ghost run --strategy auto --table <table> --alter <clauses> --execute`.
    Online { table: String, clauses: String },
    /// `CREATE INDEX CONCURRENTLY` (`sql`); `index` is dropped when the build fails.
    /// `index`: the index's name; `table`: its table, as the statement names it.
    ConcurrentIndex { sql: String, table: String, index: String },
    /// As written, under a short lock_timeout, with retries.
    Direct { sql: String },
}

impl Action {
    pub fn how(&self) -> &'static str {
        match self {
            Action::Online { .. } => "online (pg-ghost run --strategy auto)",
            Action::ConcurrentIndex { .. } => "index built CONCURRENTLY",
            Action::Direct { .. } => "direct, under a short lock_timeout with retries",
        }
    }

    /// The SQL that runs (for an online change, the ALTER it makes).
    pub fn sql(&self) -> String {
        match self {
            Action::Online { table, clauses } => format!("ALTER TABLE {table} {clauses}"),
            Action::ConcurrentIndex { sql, .. } | Action::Direct { sql } => sql.clone(),
        }
    }

    pub fn is_online_step(&self) -> bool {
        !matches!(self, Action::Direct { .. })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    /// As written in the file, trimmed.
    pub text: String,
    pub action: Action,
}

/// How a file runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// Statement by statement; progress is recorded after each.
    Steps(Vec<Statement>),
    /// A transaction block: the whole text at once, under a short lock_timeout.
    Transaction { text: String, statements: usize },
}

/// Reads a file's statements and decides how it runs; refuses a file that mixes a
/// transaction block with online steps.
pub fn classify(file_text: &str) -> Result<Body> {
    let pieces = pg_query::split_with_parser(file_text).map_err(|e| Error::config(format!("not valid SQL: {e}")))?;
    let mut statements = Vec::new();
    let mut transaction = false;
    let mut previous_end = 0;
    for piece in pieces {
        // The pieces are slices of the text; the comments before a statement lie between the
        // end of the one before and its start.
        let start = (piece.as_ptr() as usize).saturating_sub(file_text.as_ptr() as usize).min(file_text.len());
        let before = file_text.get(previous_end.min(start)..start).unwrap_or("");
        previous_end = start + piece.len();
        let parsed = pg_query::parse(piece, pg_query::ParserOptions::DEFAULT).map_err(|e| Error::config(format!("not valid SQL: {e}")))?.protobuf;
        let Some(node) = parsed.stmts.first().and_then(|s| s.stmt.as_ref()).and_then(|n| n.node.as_ref()) else { continue };
        let text = strip_comments(piece);
        if matches!(node, N::TransactionStmt(_)) {
            transaction = true;
            statements.push(Statement { action: Action::Direct { sql: text.clone() }, text });
            continue;
        }
        let action = if opted_out(before) || opted_out(piece) { Action::Direct { sql: text.clone() } } else { action(&parsed, node, &text)? };
        statements.push(Statement { text, action });
    }
    if !transaction {
        return Ok(Body::Steps(statements));
    }
    if let Some((i, s)) = statements.iter().enumerate().find(|(_, s)| s.action.is_online_step()) {
        return Err(Error::refused(format!(
            "statement {} ({}) would run {}, but the file has a transaction block (BEGIN ... COMMIT), so its statements must be atomic \
             together, and an online step cannot run inside a transaction: move it to a file of its own, or mark it `-- pg-ghost: direct` \
             to run it as written inside the transaction",
            i + 1,
            one_line(&s.text),
            s.action.how()
        )));
    }
    Ok(Body::Transaction { text: file_text.to_string(), statements: statements.len() })
}

fn action(tree: &protobuf::ParseResult, node: &N, text: &str) -> Result<Action> {
    match node {
        N::AlterTableStmt(s) if s.objtype == ObjectType::ObjectTable as i32 => {
            let relation = s.relation.as_ref().ok_or_else(|| Error::internal("an ALTER TABLE without its table"))?;
            Ok(Action::Online { table: relation_sql(relation), clauses: clauses(tree)? })
        }
        N::IndexStmt(i) => {
            if i.idxname.is_empty() {
                return Err(Error::config(format!(
                    "{}: name the index, so that an invalid one a failed CONCURRENTLY build leaves can be dropped",
                    one_line(text)
                )));
            }
            let mut tree = tree.clone();
            if let Some(N::IndexStmt(i)) = tree.stmts[0].stmt.as_mut().and_then(|n| n.node.as_mut()) {
                i.concurrent = true;
            }
            let (schema, relation) = i.relation.as_ref().map(|r| (r.schemaname.clone(), r.relname.clone())).unwrap_or_default();
            let table = match schema.is_empty() {
                true => ident(&relation),
                false => format!("{}.{}", ident(&schema), ident(&relation)),
            };
            Ok(Action::ConcurrentIndex { sql: deparse(&tree)?, table, index: i.idxname.clone() })
        }
        _ => Ok(Action::Direct { sql: text.to_string() }),
    }
}

/// The clauses of a one-statement ALTER TABLE, as text: the statement deparsed against a
/// placeholder table, the placeholder then stripped.
fn clauses(tree: &protobuf::ParseResult) -> Result<String> {
    let mut tree = tree.clone();
    if let Some(N::AlterTableStmt(s)) = tree.stmts[0].stmt.as_mut().and_then(|n| n.node.as_mut()) {
        s.relation = Some(protobuf::RangeVar { relname: PLACEHOLDER.into(), inh: true, relpersistence: "p".into(), ..Default::default() });
        s.missing_ok = false;
    }
    let text = deparse(&tree)?;
    text.strip_prefix(&format!("ALTER TABLE {PLACEHOLDER} "))
        .map(str::to_string)
        .ok_or_else(|| Error::internal(format!("unexpected deparsed ALTER TABLE: {text}")))
}

fn relation_sql(r: &protobuf::RangeVar) -> String {
    match r.schemaname.is_empty() {
        true => ident(&r.relname),
        false => format!("{}.{}", ident(&r.schemaname), ident(&r.relname)),
    }
}

/// `-- pg-ghost: direct` on a comment line before the statement (`text`: what lies between
/// the statement before and this one's first token, or the statement's own leading lines).
fn opted_out(text: &str) -> bool {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    // Only the comment lines right before the statement: not a directive that ends the
    // statement before on its own line.
    lines.iter().rev().skip_while(|l| l.is_empty()).take_while(|l| l.is_empty() || l.starts_with("--")).any(|l| super::files::directive(l) == Some("direct"))
        || lines.iter().take_while(|l| l.is_empty() || l.starts_with("--")).any(|l| super::files::directive(l) == Some("direct"))
}

/// The statement without the comment lines and blank lines before it.
fn strip_comments(piece: &str) -> String {
    let lines: Vec<&str> = piece.lines().skip_while(|l| l.trim().is_empty() || l.trim().starts_with("--")).collect();
    lines.join("\n").trim().trim_end_matches(';').trim().to_string()
}

pub fn one_line(text: &str) -> String {
    let t = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match t.chars().count() > 100 {
        true => format!("{}...", t.chars().take(100).collect::<String>()),
        false => t,
    }
}

fn deparse(tree: &protobuf::ParseResult) -> Result<String> {
    pg_query::deparse(tree, Default::default()).map_err(|e| Error::internal(format!("cannot deparse a statement: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(text: &str) -> Vec<Statement> {
        match classify(text).unwrap() {
            Body::Steps(s) => s,
            other => panic!("not steps: {other:?}"),
        }
    }

    #[test]
    fn each_statement_the_safest_way() {
        let s = steps(
            "-- pg-ghost: phase=expand\nALTER TABLE public.\"Orders\" ADD COLUMN region text, ALTER COLUMN n TYPE bigint;\n\
             CREATE INDEX orders_region ON orders (region);\nUPDATE orders SET region = 'eu' WHERE region IS NULL;\n",
        );
        assert_eq!(s.len(), 3);
        assert_eq!(
            s[0].action,
            Action::Online { table: "\"public\".\"Orders\"".into(), clauses: "ADD COLUMN region text, ALTER COLUMN n TYPE bigint".into() }
        );
        assert_eq!(s[1].action, Action::ConcurrentIndex { sql: "CREATE INDEX CONCURRENTLY orders_region ON orders USING btree (region)".into(), table: "\"orders\"".into(), index: "orders_region".into() });
        assert_eq!(s[2].action, Action::Direct { sql: "UPDATE orders SET region = 'eu' WHERE region IS NULL".into() });
        assert_eq!(s[2].text, "UPDATE orders SET region = 'eu' WHERE region IS NULL");
    }

    #[test]
    fn a_statement_can_opt_out() {
        let s = steps("ALTER TABLE t ADD COLUMN a int;\n-- pg-ghost: direct\nALTER TABLE t ADD COLUMN b int;\n");
        assert!(matches!(s[0].action, Action::Online { .. }));
        assert_eq!(s[1].action, Action::Direct { sql: "ALTER TABLE t ADD COLUMN b int".into() });
    }

    #[test]
    fn other_alters_run_directly() {
        let s = steps("ALTER INDEX i RENAME TO j; ALTER TABLE t RENAME COLUMN a TO b; CREATE TABLE x (id int);");
        assert!(s.iter().all(|s| matches!(s.action, Action::Direct { .. })), "{s:?}");
    }

    #[test]
    fn a_transaction_block_with_online_steps_is_refused() {
        let e = classify("BEGIN;\nINSERT INTO t VALUES (1);\nALTER TABLE t ADD COLUMN c int;\nCOMMIT;\n").unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::Refused);
        assert!(e.to_string().contains("statement 3 (ALTER TABLE t ADD COLUMN c int)"), "{e}");
        let ok = classify("BEGIN;\nINSERT INTO t VALUES (1);\n-- pg-ghost: direct\nALTER TABLE t ADD COLUMN c int;\nCOMMIT;\n").unwrap();
        assert!(matches!(ok, Body::Transaction { statements: 4, .. }), "{ok:?}");
    }

    #[test]
    fn an_unnamed_index_is_refused() {
        assert!(classify("CREATE INDEX ON t (a);").is_err());
    }
}
