//! The names of the objects pg-ghost creates for one table.
//!
//! Every phase (inspect's leftover check, prepare, stream, cut-over, `pg-ghost cleanup`)
//! computes them here, so a later run finds exactly what an earlier one left. Tables live in
//! the original's schema; publication and slot are named after the table's OID, because a
//! slot name allows only lower-case letters, digits and `_`, and an OID is stable across
//! renames of the table. Names longer than PostgreSQL's 63 bytes are shortened by
//! [`fit_ident`] (prefix plus a hash), exactly as the server would otherwise truncate them
//! silently and make two long names collide.

use crate::sql::{fit_ident, QualifiedName};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    /// `_<table>_gho`: the new shape, filled by copy and apply.
    pub ghost: QualifiedName,
    /// `_<table>_ghc`: state, heartbeat and checkpoints.
    pub changelog: QualifiedName,
    /// `_<table>_del`: the original after the cut-over.
    pub old: QualifiedName,
    /// `pg_ghost_<oid>`.
    pub publication: String,
    /// `pg_ghost_<oid>`.
    pub slot: String,
    /// `pg_ghost_<oid>_rev`: the revert window's publication and slot (`--revertible-for`),
    /// streaming the new table's changes back to the old one.
    pub reverse: String,
}

impl Names {
    pub fn for_table(table: &QualifiedName, oid: u32) -> Names {
        let sibling = |suffix: &str| table.sibling(fit_ident(&format!("_{}_{suffix}", table.name)));
        let stream = format!("pg_ghost_{oid}");
        Names {
            ghost: sibling("gho"),
            changelog: sibling("ghc"),
            old: sibling("del"),
            publication: stream.clone(),
            reverse: format!("{stream}_rev"),
            slot: stream,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_gh_ost() {
        let n = Names::for_table(&QualifiedName::new("public", "orders"), 16384);
        assert_eq!(n.ghost, QualifiedName::new("public", "_orders_gho"));
        assert_eq!(n.changelog, QualifiedName::new("public", "_orders_ghc"));
        assert_eq!(n.old, QualifiedName::new("public", "_orders_del"));
        assert_eq!(n.publication, "pg_ghost_16384");
        assert_eq!(n.slot, "pg_ghost_16384");
        assert_eq!(n.reverse, "pg_ghost_16384_rev");
    }

    #[test]
    fn keeps_quotes_and_schema_verbatim() {
        let n = Names::for_table(&QualifiedName::new("My Schema", "Order \"Items\""), 1);
        assert_eq!(n.ghost.schema, "My Schema");
        assert_eq!(n.ghost.name, "_Order \"Items\"_gho");
    }

    #[test]
    fn long_names_fit_and_stay_distinct() {
        let n = Names::for_table(&QualifiedName::new("s", "é".repeat(40)), 7);
        for t in [&n.ghost, &n.changelog, &n.old] {
            assert!(t.name.len() <= 63, "{} is {} bytes", t.name, t.name.len());
        }
        assert_ne!(n.ghost, n.changelog);
        assert_ne!(n.ghost, n.old);
        assert_ne!(n.changelog, n.old);
    }
}
