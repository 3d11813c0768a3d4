//! The SQL text of the data checks, built from quoted identifiers and from expressions
//! PostgreSQL printed itself (`pg_get_expr`, `pg_get_indexdef`, the deparsed `USING`).
//!
//! Every check but a cast reads the original's rows shaped as the ghost will hold them: a
//! subquery `_pg_ghost_g` over the original with one column per ghost column the check
//! needs, computed as the copy computes it (the column itself, or its type change), plus
//! the original's key as text (`_pg_ghost_k<i>`, for the report) and as it is
//! (`_pg_ghost_o<i>`, for the order). So a CHECK, a UNIQUE or a FOREIGN KEY is evaluated
//! under the ghost's column names and types, as it would be on the ghost, and the range of
//! keys a chunk covers is still a plain key range of the original.

use super::{Check, Kind, Length, Shaped};
use crate::keysql::KeyCols;
use crate::sql::{ident, QualifiedName};

/// The alias of the ghost-shaped subquery.
const G: &str = "_pg_ghost_g";

/// The original, its key, and what a chunk's filter looks like.
pub struct Table<'a> {
    pub name: &'a QualifiedName,
    pub key: &'a KeyCols,
}

impl Table<'_> {
    /// `key <= $1`: the first chunk.
    pub fn first(&self) -> String {
        format!("{} <= {}", self.key.tuple(), self.key.params(1))
    }

    /// `key > $lo AND key <= $hi`, the bound `hi` first (as the copy binds them).
    pub fn after(&self) -> String {
        format!("{} > {} AND {}", self.key.tuple(), self.key.params(1 + self.key.len()), self.first())
    }

    /// `key = $1`: one row.
    pub fn one(&self) -> String {
        format!("{} = {}", self.key.tuple(), self.key.params(1))
    }

    /// The keys of the rows that pass `filter`, as text, in key order.
    pub fn keys_sql(&self, filter: &str) -> String {
        format!("SELECT {} FROM {} WHERE {filter} ORDER BY {}", self.key.as_text(), self.name.sql(), self.key.order_by(false))
    }

    /// `SELECT k::text AS _pg_ghost_k0, k AS _pg_ghost_o0, <expr> AS <name>, ... FROM orig
    /// WHERE filter`, aliased `_pg_ghost_g`.
    fn shaped(&self, columns: &[Shaped], filter: &str) -> String {
        let mut out: Vec<String> = Vec::new();
        for (i, k) in self.key.names.iter().enumerate() {
            out.push(format!("{}::text AS _pg_ghost_k{i}", ident(k)));
            out.push(format!("{} AS _pg_ghost_o{i}", ident(k)));
        }
        out.extend(columns.iter().map(|c| format!("{} AS {}", c.expr, ident(&c.name))));
        format!("(SELECT {} FROM {} WHERE {filter}) AS {G}", out.join(", "), self.name.sql())
    }

    fn key_columns(&self, prefix: &str) -> Vec<String> {
        (0..self.key.len()).map(|i| format!("{prefix}{i}")).collect()
    }
}

/// What a row check reports beside the key: one value per label.
/// Each label is SQL: a quoted column name, or an index's expression.
pub fn labels(check: &Check) -> Vec<String> {
    match &check.kind {
        Kind::Cast { column, .. } => vec![ident(column)],
        Kind::NotNull { .. } => Vec::new(),
        Kind::Check { .. } => check.columns.iter().map(|c| ident(&c.name)).collect(),
        Kind::ForeignKey { columns, .. } => columns.iter().map(|c| ident(c)).collect(),
        Kind::Unique { exprs, .. } => exprs.clone(),
    }
}

/// The value expressions of a row check, as text, in the order of [`labels`].
fn values(check: &Check) -> Vec<String> {
    match &check.kind {
        Kind::Cast { column, .. } => vec![format!("{}::text", ident(column))],
        Kind::NotNull { .. } => Vec::new(),
        Kind::Check { .. } => check.columns.iter().map(|c| format!("{G}.{}::text", ident(&c.name))).collect(),
        Kind::ForeignKey { columns, .. } => columns.iter().map(|c| format!("{G}.{}::text", ident(c))).collect(),
        Kind::Unique { .. } => Vec::new(),
    }
}

/// Whether a cast's result breaks the ghost column's type. A plain `CAST` evaluates every
/// row (`num_nulls` is opaque to the planner, and never above 1: only an error can make a
/// row show up, and the narrowing finds it). Where `INSERT`'s assignment cast is stricter
/// than `CAST` (an explicit cast to `varchar(n)`, `char(n)` or `bit(n)` cuts a value to
/// fit, the copy's assignment fails), the value is cast to the unbounded type and measured
/// as the assignment would measure it.
fn cast_violates(expr: &str, target: &str, length: Option<Length>) -> String {
    match length {
        None => format!("pg_catalog.num_nulls(CAST(({expr}) AS {target})) > 1"),
        // Only trailing spaces may be cut: the value must fit once they are gone.
        Some(Length::Chars { unbounded, max }) => {
            format!("pg_catalog.length(pg_catalog.rtrim(CAST(({expr}) AS {unbounded})::text)) > {max}")
        }
        Some(Length::BitsExactly(n)) => format!("pg_catalog.length(CAST(({expr}) AS pg_catalog.varbit)) <> {n}"),
        Some(Length::BitsAtMost(n)) => format!("pg_catalog.length(CAST(({expr}) AS pg_catalog.varbit)) > {n}"),
    }
}

/// The condition an offending row meets, over the ghost-shaped row.
fn violates(check: &Check) -> String {
    match &check.kind {
        Kind::Cast { expr, target, length, .. } => cast_violates(expr, target, *length),
        Kind::NotNull { column } => format!("{G}.{} IS NULL", ident(column)),
        // A CHECK passes on NULL, as PostgreSQL's does.
        Kind::Check { expr } => format!("NOT ({expr})"),
        Kind::ForeignKey { columns, referenced, referenced_columns, match_full } => {
            let cols: Vec<String> = columns.iter().map(|c| format!("{G}.{}", ident(c))).collect();
            let join: Vec<String> = columns
                .iter()
                .zip(referenced_columns)
                .map(|(c, r)| format!("_pg_ghost_r.{} = {G}.{}", ident(r), ident(c)))
                .collect();
            let missing = format!("NOT EXISTS (SELECT 1 FROM {} AS _pg_ghost_r WHERE {})", referenced.sql(), join.join(" AND "));
            let nulls = format!("pg_catalog.num_nulls({})", cols.join(", "));
            match match_full {
                // MATCH SIMPLE: a row with a NULL in the key is not checked.
                false => format!("{nulls} = 0 AND {missing}"),
                // MATCH FULL: all NULL passes, some NULL fails, none NULL must match.
                true => format!("{nulls} < {} AND ({nulls} > 0 OR {missing})", cols.len()),
            }
        }
        Kind::Unique { .. } => "false".to_string(),
    }
}

/// The offending rows among those that pass `filter`, in key order: the key columns as
/// text, then the [`labels`]' values as text. None for a UNIQUE, which is not read by rows.
pub fn rows_sql(table: &Table<'_>, check: &Check, filter: &str) -> Option<String> {
    if matches!(check.kind, Kind::Unique { .. }) {
        return None;
    }
    let mut out = table.key_columns("_pg_ghost_k");
    out.extend(values(check));
    let (from, filter) = match &check.kind {
        // A cast reads the original itself: the column it changes is all it needs.
        Kind::Cast { column, .. } => {
            let key = table.key.names.iter().enumerate().map(|(i, k)| format!("{k}::text AS _pg_ghost_k{i}, {k} AS _pg_ghost_o{i}", k = ident(k)));
            let from = format!(
                "(SELECT {}, {} FROM {} WHERE ({filter}) AND {}) AS {G}",
                key.collect::<Vec<_>>().join(", "),
                ident(column),
                table.name.sql(),
                violates(check)
            );
            (from, "true".to_string())
        }
        _ => (table.shaped(&check.columns, filter), violates(check)),
    };
    Some(format!("SELECT {} FROM {from} WHERE {filter} ORDER BY {}", out.join(", "), table.key_columns("_pg_ghost_o").join(", ")))
}

/// The values of [`labels`] for the rows that pass `filter` (one row, after an error).
pub fn values_sql(table: &Table<'_>, check: &Check, filter: &str) -> String {
    let values = values(check);
    let list = if values.is_empty() { "NULL".to_string() } else { values.join(", ") };
    match check.kind {
        Kind::Cast { ref column, .. } => format!("SELECT {}::text FROM {} WHERE {filter}", ident(column), table.name.sql()),
        _ => format!("SELECT {list} FROM {}", table.shaped(&check.columns, filter)),
    }
}

/// Duplicates of a UNIQUE over the whole table: the value (as text), how many rows share
/// it, and their keys (one `text[]` per key column, in key order, at most `keys` of them),
/// at most `limit` values in value order; every one without `limit`.
pub fn duplicates_sql(table: &Table<'_>, check: &Check, limit: Option<usize>, keys: usize) -> Option<String> {
    let Kind::Unique { exprs, predicate, nulls_distinct } = &check.kind else { return None };
    let order = table.key_columns("_pg_ghost_o").join(", ");
    let mut out: Vec<String> = exprs.iter().map(|e| format!("({e})::text")).collect();
    out.push("pg_catalog.count(*)".to_string());
    for k in table.key_columns("_pg_ghost_k") {
        out.push(match limit {
            Some(_) => format!("(pg_catalog.array_agg({k} ORDER BY {order}))[1:{keys}]"),
            None => format!("pg_catalog.array_agg({k} ORDER BY {order})"),
        });
    }
    let mut filter: Vec<String> = predicate.iter().map(|p| format!("({p})")).collect();
    // NULLs never collide, unless the constraint is NULLS NOT DISTINCT.
    if *nulls_distinct {
        filter.extend(exprs.iter().map(|e| format!("({e}) IS NOT NULL")));
    }
    let filter = if filter.is_empty() { String::new() } else { format!(" WHERE {}", filter.join(" AND ")) };
    let positions: Vec<String> = (1..=exprs.len()).map(|i| i.to_string()).collect();
    let group: Vec<String> = exprs.iter().map(|e| format!("({e})")).collect();
    let limit = limit.map(|n| format!(" LIMIT {n}")).unwrap_or_default();
    Some(format!(
        "SELECT {} FROM {}{filter} GROUP BY {} HAVING pg_catalog.count(*) > 1 ORDER BY {}{limit}",
        out.join(", "),
        table.shaped(&check.columns, "true"),
        group.join(", "),
        positions.join(", ")
    ))
}

/// A query the DBA can run to list every offending row. A failing cast cannot be listed by
/// a plain SELECT (the first failure ends it): that one is a `DO` block that tries each row
/// and raises a NOTICE for each that fails.
pub fn listing_sql(table: &Table<'_>, check: &Check) -> String {
    match &check.kind {
        Kind::Unique { .. } => duplicates_sql(table, check, None, 0).unwrap_or_default(),
        Kind::Cast { .. } => cast_listing(table, check),
        _ => rows_sql(table, check, "true").unwrap_or_default(),
    }
}

fn cast_listing(table: &Table<'_>, check: &Check) -> String {
    let keys: Vec<String> = table.key.names.iter().map(|k| ident(k)).collect();
    let row: Vec<String> = keys.iter().map(|k| format!("r.{k}")).collect();
    let row = if row.len() == 1 { row.join("") } else { format!("({})", row.join(", ")) };
    let body = format!(
        "DECLARE r record; BEGIN FOR r IN SELECT {keys} FROM {t} ORDER BY {keys} LOOP BEGIN \
         IF EXISTS (SELECT FROM {t} WHERE {tuple} = {row} AND {violates}) THEN RAISE NOTICE 'key %: does not fit the new type', r; END IF; \
         EXCEPTION WHEN data_exception OR integrity_constraint_violation THEN RAISE NOTICE 'key %: %', r, SQLERRM; END; END LOOP; END",
        keys = keys.join(", "),
        t = table.name.sql(),
        tuple = table.key.tuple(),
        violates = violates(check),
    );
    let mut tag = "$pg_ghost$".to_string();
    let mut n = 0;
    while body.contains(&tag) {
        n += 1;
        tag = format!("$pg_ghost_{n}$");
    }
    format!("DO {tag} {body} {tag}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(names: &[&str], types: &[&str]) -> KeyCols {
        KeyCols { names: names.iter().map(|s| s.to_string()).collect(), types: types.iter().map(|s| s.to_string()).collect() }
    }

    fn check(kind: Kind, columns: &[(&str, &str)]) -> Check {
        Check {
            clause: "c".into(),
            constraint: None,
            kind,
            columns: columns.iter().map(|(n, e)| Shaped { name: n.to_string(), expr: e.to_string() }).collect(),
        }
    }

    #[test]
    fn chunk_filters_follow_the_copy() {
        let (name, k) = (QualifiedName::new("public", "t"), key(&["a", "b"], &["integer", "text"]));
        let t = Table { name: &name, key: &k };
        assert_eq!(t.first(), "(\"a\", \"b\") <= ($1::text::integer, $2::text::text)");
        assert_eq!(t.after(), "(\"a\", \"b\") > ($3::text::integer, $4::text::text) AND (\"a\", \"b\") <= ($1::text::integer, $2::text::text)");
        assert_eq!(t.one(), "(\"a\", \"b\") = ($1::text::integer, $2::text::text)");
    }

    #[test]
    fn a_check_reads_the_ghost_shaped_row() {
        let (name, k) = (QualifiedName::new("s", "Odd \"T\""), key(&["id"], &["bigint"]));
        let t = Table { name: &name, key: &k };
        let c = check(Kind::Check { expr: "(\"Menge\" > 0)".into() }, &[("Menge", "CAST((\"qty\") AS integer)")]);
        assert_eq!(
            rows_sql(&t, &c, "true").unwrap(),
            "SELECT _pg_ghost_k0, _pg_ghost_g.\"Menge\"::text FROM (SELECT \"id\"::text AS _pg_ghost_k0, \"id\" AS _pg_ghost_o0, \
             CAST((\"qty\") AS integer) AS \"Menge\" FROM \"s\".\"Odd \"\"T\"\"\" WHERE true) AS _pg_ghost_g \
             WHERE NOT ((\"Menge\" > 0)) ORDER BY _pg_ghost_o0"
        );
        let n = check(Kind::NotNull { column: "x".into() }, &[("x", "\"x\"")]);
        assert!(rows_sql(&t, &n, "true").unwrap().contains("WHERE _pg_ghost_g.\"x\" IS NULL ORDER BY"));
    }

    #[test]
    fn a_cast_is_evaluated_for_every_row_and_assignment_lengths_are_measured() {
        let (name, k) = (QualifiedName::new("public", "t"), key(&["id"], &["integer"]));
        let t = Table { name: &name, key: &k };
        let cast = |length| check(Kind::Cast { column: "v".into(), expr: "\"v\"".into(), target: "integer".into(), length }, &[]);
        let sql = rows_sql(&t, &cast(None), &t.first()).unwrap();
        assert_eq!(
            sql,
            "SELECT _pg_ghost_k0, \"v\"::text FROM (SELECT \"id\"::text AS _pg_ghost_k0, \"id\" AS _pg_ghost_o0, \"v\" FROM \"public\".\"t\" \
             WHERE (\"id\" <= $1::text::integer) AND pg_catalog.num_nulls(CAST((\"v\") AS integer)) > 1) AS _pg_ghost_g WHERE true ORDER BY _pg_ghost_o0"
        );
        let chars = rows_sql(&t, &cast(Some(Length::Chars { unbounded: "pg_catalog.varchar", max: 3 })), "true").unwrap();
        assert!(chars.contains("pg_catalog.length(pg_catalog.rtrim(CAST((\"v\") AS pg_catalog.varchar)::text)) > 3"), "{chars}");
        let bits = rows_sql(&t, &cast(Some(Length::BitsExactly(8))), "true").unwrap();
        assert!(bits.contains("pg_catalog.length(CAST((\"v\") AS pg_catalog.varbit)) <> 8"), "{bits}");
        let listing = listing_sql(&t, &cast(None));
        assert!(listing.starts_with("DO $pg_ghost$ DECLARE r record;") && listing.ends_with("END $pg_ghost$"), "{listing}");
        assert!(listing.contains("WHERE \"id\" = r.\"id\" AND"), "{listing}");
        let tricky = check(Kind::Cast { column: "v".into(), expr: "'$pg_ghost$'".into(), target: "text".into(), length: None }, &[]);
        assert!(listing_sql(&t, &tricky).starts_with("DO $pg_ghost_1$ "));
    }

    #[test]
    fn foreign_keys_follow_their_match_type() {
        let (name, k) = (QualifiedName::new("public", "t"), key(&["id"], &["integer"]));
        let t = Table { name: &name, key: &k };
        let fk = |full| {
            check(
                Kind::ForeignKey {
                    columns: vec!["a".into(), "b".into()],
                    referenced: QualifiedName::new("public", "p"),
                    referenced_columns: vec!["x".into(), "y".into()],
                    match_full: full,
                },
                &[("a", "\"a\""), ("b", "\"b\"")],
            )
        };
        let simple = rows_sql(&t, &fk(false), "true").unwrap();
        assert!(
            simple.contains(
                "WHERE pg_catalog.num_nulls(_pg_ghost_g.\"a\", _pg_ghost_g.\"b\") = 0 AND NOT EXISTS (SELECT 1 FROM \"public\".\"p\" AS _pg_ghost_r \
                 WHERE _pg_ghost_r.\"x\" = _pg_ghost_g.\"a\" AND _pg_ghost_r.\"y\" = _pg_ghost_g.\"b\")"
            ),
            "{simple}"
        );
        let full = rows_sql(&t, &fk(true), "true").unwrap();
        assert!(full.contains("num_nulls(_pg_ghost_g.\"a\", _pg_ghost_g.\"b\") < 2 AND (pg_catalog.num_nulls"), "{full}");
    }

    #[test]
    fn duplicates_are_grouped_over_the_whole_table() {
        let (name, k) = (QualifiedName::new("public", "t"), key(&["t", "id"], &["integer", "integer"]));
        let t = Table { name: &name, key: &k };
        let u = |nulls_distinct| {
            check(
                Kind::Unique { exprs: vec!["\"e\"".into(), "lower(n)".into()], predicate: Some("d IS NULL".into()), nulls_distinct },
                &[("e", "\"e\""), ("n", "\"n\""), ("d", "\"d\"")],
            )
        };
        let sql = duplicates_sql(&t, &u(true), Some(10), 5).unwrap();
        assert!(sql.starts_with("SELECT (\"e\")::text, (lower(n))::text, pg_catalog.count(*), (pg_catalog.array_agg(_pg_ghost_k0 ORDER BY _pg_ghost_o0, _pg_ghost_o1))[1:5], "), "{sql}");
        assert!(sql.ends_with(
            "WHERE (d IS NULL) AND (\"e\") IS NOT NULL AND (lower(n)) IS NOT NULL GROUP BY (\"e\"), (lower(n)) HAVING pg_catalog.count(*) > 1 ORDER BY 1, 2 LIMIT 10"
        ), "{sql}");
        let all = listing_sql(&t, &u(false));
        assert!(!all.contains("LIMIT") && !all.contains("IS NOT NULL") && !all.contains("[1:"), "{all}");
        assert!(rows_sql(&t, &u(true), "true").is_none());
    }
}
