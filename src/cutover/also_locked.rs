//! What the swap locks besides the tables LOCK TABLE names, taken in the same bounded wait.
//!
//! The swap's statements lock more than the table, its ghost and the referencing tables:
//! `CREATE OR REPLACE VIEW` takes ACCESS EXCLUSIVE on each view that reads the table (or a
//! materialized view rebuilt on it), `CREATE OR REPLACE RULE` on the relation a rule naming the
//! table belongs to, `ALTER SEQUENCE ... RENAME` ACCESS EXCLUSIVE on an identity sequence and
//! `ALTER SEQUENCE ... OWNED BY` SHARE ROW EXCLUSIVE on a serial one. A statement that waits for
//! one of those after the LOCK waits while holding the table. A query on a view locks the view
//! and then the table; one that came while the LOCK waited holds the view and waits for the
//! table, and when the swap then waits for the view, that query, waiting since before, runs
//! its deadlock check first and is aborted, however low the cut-over's own `deadlock_timeout`
//! (a session that calls `nextval` and then writes the table does the same with a sequence).
//!
//! So each of them is locked with the tables, before the swap: a table with LOCK TABLE; a view
//! or a sequence by renaming it and back, which takes ACCESS EXCLUSIVE on it alone (LOCK TABLE
//! cannot lock a sequence, and on a view it locks every table the view reads too). All of it
//! runs as one statement (see [`one_statement`]) so that one `statement_timeout` bounds the
//! whole wait.

use crate::error::{Context, Result};
use crate::sql::{ident, QualifiedName};
use tokio_postgres::GenericClient;

/// A relation the swap changes that LOCK TABLE on the tables does not lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AlsoLocked {
    pub oid: u32,
    /// `pg_class.relkind`.
    pub kind: String,
    pub name: QualifiedName,
}

impl AlsoLocked {
    /// A table a rule belongs to: LOCK TABLE takes it with the others.
    pub fn is_table(&self) -> bool {
        matches!(self.kind.as_str(), "r" | "p")
    }

    /// For anything but a table: renamed and back, in the transaction that holds it after.
    pub fn rename_sql(&self) -> Option<[String; 2]> {
        let keyword = match self.kind.as_str() {
            "v" => "VIEW",
            "S" => "SEQUENCE",
            "f" => "FOREIGN TABLE",
            _ => return None,
        };
        let aside = self.name.sibling(format!("_pg_ghost_lock_{}", self.oid));
        Some([
            format!("ALTER {keyword} {} RENAME TO {}", self.name.sql(), ident(&aside.name)),
            format!("ALTER {keyword} {} RENAME TO {}", aside.sql(), ident(&self.name.name)),
        ])
    }
}

/// The relations other than `readees` whose rules (views included) read one of `readees` (the
/// table and the materialized views rebuilt on it; materialized views themselves are locked by
/// their own renames), and the sequences `table` owns, serial or identity; sorted by kind,
/// schema and name.
pub(crate) async fn read(client: &impl GenericClient, table: u32, readees: &[u32]) -> Result<Vec<AlsoLocked>> {
    let rows = client
        .query(
            "SELECT c.oid, c.relkind::text, n.nspname::text, c.relname::text
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind <> 'm' AND c.oid <> ALL ($2::oid[])
                AND (c.oid IN (SELECT r.ev_class FROM pg_rewrite r JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
                                WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = ANY ($2::oid[]))
                     OR (c.relkind = 'S' AND c.oid IN (SELECT d.objid FROM pg_depend d
                                WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
                                  AND d.refobjid = $1 AND d.deptype IN ('a', 'i'))))
              ORDER BY 2, 3, 4",
            &[&table, &readees],
        )
        .await
        .context("reading the views, rules and sequences the swap changes")?;
    rows.iter()
        .map(|r| Ok(AlsoLocked { oid: r.try_get(0)?, kind: r.try_get(1)?, name: QualifiedName::new(r.try_get::<_, String>(2)?, r.try_get::<_, String>(3)?) }))
        .collect()
}

/// The dollar-quote tag of [`one_statement`]'s block.
const TAG: &str = "$pg_ghost_lock$";

/// `statements` as one statement: a `DO` block when there are several. PostgreSQL starts
/// `statement_timeout` again for each statement of a query string, so several statements could
/// together wait several times as long as the cut-over allows.
pub(crate) fn one_statement(statements: &[String]) -> String {
    match statements {
        [one] => one.clone(),
        // Only a quoted identifier could hold the tag; such a name keeps the statements apart.
        _ if statements.iter().any(|s| s.contains(TAG)) => statements.join(";\n"),
        _ => format!("DO {TAG} BEGIN\n{};\nEND {TAG}", statements.join(";\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_statements_become_one_do_block() {
        let one = vec!["LOCK TABLE a".to_string()];
        assert_eq!(one_statement(&one), "LOCK TABLE a");
        let two = vec!["ALTER VIEW v RENAME TO w".to_string(), "LOCK TABLE a".to_string()];
        assert_eq!(one_statement(&two), "DO $pg_ghost_lock$ BEGIN\nALTER VIEW v RENAME TO w;\nLOCK TABLE a;\nEND $pg_ghost_lock$");
        let odd = vec!["ALTER VIEW \"$pg_ghost_lock$\" RENAME TO w".to_string(), "LOCK TABLE a".to_string()];
        assert_eq!(one_statement(&odd), "ALTER VIEW \"$pg_ghost_lock$\" RENAME TO w;\nLOCK TABLE a");
    }

    #[test]
    fn views_and_sequences_are_renamed_and_back_tables_locked() {
        let v = AlsoLocked { oid: 42, kind: "v".into(), name: QualifiedName::new("public", "totals") };
        let [aside, back] = v.rename_sql().unwrap();
        assert_eq!(aside, r#"ALTER VIEW "public"."totals" RENAME TO "_pg_ghost_lock_42""#);
        assert_eq!(back, r#"ALTER VIEW "public"."_pg_ghost_lock_42" RENAME TO "totals""#);
        let s = AlsoLocked { oid: 7, kind: "S".into(), name: QualifiedName::new("public", "t_id_seq") };
        assert!(s.rename_sql().unwrap()[0].starts_with("ALTER SEQUENCE"));
        let t = AlsoLocked { oid: 9, kind: "r".into(), name: QualifiedName::new("public", "log") };
        assert!(t.is_table() && t.rename_sql().is_none());
    }
}
