//! SQL that selects rows by key, shared by the copy (ranges) and the apply (key sets).
//!
//! Key values travel as text: the stream delivers them in text form, and boundaries read
//! for chunking come back as `key::text`. Every use casts them back to the column's type on
//! the server, so ordering and equality are PostgreSQL's own (collations included); pg-ghost
//! never compares key values itself.

use crate::ghost::Mapping;
use crate::sql::{ident, ident_list, QualifiedName};

/// The key columns of one table and their types.
#[derive(Clone, Debug)]
pub struct KeyCols {
    pub names: Vec<String>,
    pub types: Vec<String>,
}

impl KeyCols {
    pub fn source(m: &Mapping) -> Self {
        KeyCols { names: m.key_source.clone(), types: m.key_source_types.clone() }
    }

    pub fn ghost(m: &Mapping) -> Self {
        KeyCols { names: m.key_ghost.clone(), types: m.key_ghost_types.clone() }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// `"a"` or `("a", "b")`: the key as one comparable value.
    pub fn tuple(&self) -> String {
        if self.names.len() == 1 {
            ident(&self.names[0])
        } else {
            format!("({})", ident_list(self.names.iter().map(String::as_str)))
        }
    }

    /// The key as bind parameters `$first..`, each cast from text to its column's type.
    pub fn params(&self, first: usize) -> String {
        let casts: Vec<String> =
            self.types.iter().enumerate().map(|(i, t)| format!("${}::text::{t}", first + i)).collect();
        if casts.len() == 1 {
            casts.into_iter().next().unwrap_or_default()
        } else {
            format!("({})", casts.join(", "))
        }
    }

    /// Matches rows whose key is in the set given as one `text[]` parameter per key column,
    /// starting at `$first`.
    pub fn in_set(&self, first: usize) -> String {
        if self.names.len() == 1 {
            return format!("{} = ANY(${first}::text[]::{}[])", ident(&self.names[0]), self.types[0]);
        }
        let cols: Vec<String> = (0..self.len()).map(|i| format!("_pg_ghost_k{i}")).collect();
        let casts: Vec<String> = cols.iter().zip(&self.types).map(|(c, t)| format!("{c}::{t}")).collect();
        let arrays: Vec<String> = (0..self.len()).map(|i| format!("${}::text[]", first + i)).collect();
        format!(
            "{} IN (SELECT {} FROM unnest({}) AS _pg_ghost_k({}))",
            self.tuple(),
            casts.join(", "),
            arrays.join(", "),
            cols.join(", ")
        )
    }

    /// The set given as one `text[]` parameter per key column, starting at `$first`, as a
    /// `SELECT` of typed keys.
    pub fn set(&self, first: usize) -> String {
        let cols: Vec<String> = (0..self.len()).map(|i| format!("_pg_ghost_k{i}")).collect();
        let casts: Vec<String> = cols.iter().zip(&self.types).map(|(c, t)| format!("{c}::{t}")).collect();
        let arrays: Vec<String> = (0..self.len()).map(|i| format!("${}::text[]", first + i)).collect();
        format!("SELECT {} FROM unnest({}) AS _pg_ghost_k({})", casts.join(", "), arrays.join(", "), cols.join(", "))
    }

    /// The given columns (holding this key's values as text) cast to the key's types, as one
    /// comparable value.
    pub fn typed(&self, columns: &[String]) -> String {
        let casts: Vec<String> = columns.iter().zip(&self.types).map(|(c, t)| format!("{c}::{t}")).collect();
        if casts.len() == 1 {
            casts.into_iter().next().unwrap_or_default()
        } else {
            format!("({})", casts.join(", "))
        }
    }

    /// `ORDER BY` list, ascending or descending, in key order.
    pub fn order_by(&self, descending: bool) -> String {
        let dir = if descending { " DESC" } else { "" };
        self.names.iter().map(|n| format!("{}{dir}", ident(n))).collect::<Vec<_>>().join(", ")
    }

    /// Each key column as text, for reading boundaries. The output columns get names of
    /// their own: `ORDER BY "id"` would otherwise sort by the text output column `id`.
    pub fn as_text(&self) -> String {
        self.names
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{}::text AS _pg_ghost_b{i}", ident(n)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `INSERT INTO ghost (cols) [OVERRIDING SYSTEM VALUE] SELECT exprs FROM orig`: the part of
/// the copy and the apply that turns original rows into ghost rows.
pub fn insert_select(orig: &QualifiedName, ghost: &QualifiedName, m: &Mapping) -> String {
    format!(
        "INSERT INTO {} ({}){} SELECT {} FROM {}",
        ghost.sql(),
        ident_list(m.ghost_columns.iter().map(String::as_str)),
        if m.overriding_system_value { " OVERRIDING SYSTEM VALUE" } else { "" },
        m.source_exprs.join(", "),
        orig.sql()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: &[&str], t: &[&str]) -> KeyCols {
        KeyCols { names: n.iter().map(|s| s.to_string()).collect(), types: t.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn single_column_keys() {
        let k = keys(&["id"], &["bigint"]);
        assert_eq!(k.tuple(), "\"id\"");
        assert_eq!(k.params(1), "$1::text::bigint");
        assert_eq!(k.in_set(1), "\"id\" = ANY($1::text[]::bigint[])");
        assert_eq!(k.order_by(true), "\"id\" DESC");
    }

    #[test]
    fn composite_keys_compare_as_rows() {
        let k = keys(&["Tenant", "id"], &["integer", "bigint"]);
        assert_eq!(k.tuple(), "(\"Tenant\", \"id\")");
        assert_eq!(k.params(3), "($3::text::integer, $4::text::bigint)");
        assert_eq!(
            k.in_set(1),
            "(\"Tenant\", \"id\") IN (SELECT _pg_ghost_k0::integer, _pg_ghost_k1::bigint FROM unnest($1::text[], $2::text[]) AS _pg_ghost_k(_pg_ghost_k0, _pg_ghost_k1))"
        );
        assert_eq!(k.as_text(), "\"Tenant\"::text AS _pg_ghost_b0, \"id\"::text AS _pg_ghost_b1");
    }
}
