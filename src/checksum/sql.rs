//! The checksum's SQL text, built from quoted identifiers only; no I/O here.
//!
//! Both sides of a comparison are rendered in the ghost's column types: the original's side
//! casts each mapped expression (the ALTER's transformation) to the ghost column's type, so a
//! row reads the same on both sides exactly when the ghost holds what the copy would write.
//! Key ranges are always taken in the original key's order (the order of the chunker and of
//! the copy chunks the flusher knows), with bounds given as text parameters cast to the
//! original key's types: lower bound `$1..$n` when there is one, then the upper bound.

use crate::keysql::KeyCols;
use crate::sql::{ident, QualifiedName};

/// Names the subqueries and columns the checksum introduces; a prefix no user column is
/// expected to carry.
const P: &str = "_pg_ghost";

/// One table as the checksum reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Side {
    pub table: QualifiedName,
    /// The row's values, in ghost column order, each rendering as the ghost's type.
    pub row: Vec<String>,
    /// Per row value: how it is hashed (see [`row_hash`]).
    pub hashing: Vec<Hashing>,
    /// Per key column: the expression compared with the bounds, in the original key's order.
    pub key: Vec<String>,
    /// Per key column: the key in the ghost's type and collation, to match rows across sides.
    pub key_as_ghost: Vec<String>,
    /// Per key column: the key in the original's type and collation, to find a range's end.
    pub key_as_source: Vec<String>,
}

/// The statements of one checksum job.
#[derive(Clone, Debug)]
pub(super) struct ChecksumSql {
    pub orig: Side,
    pub ghost: Side,
    /// The original key's types: bounds are cast to these.
    pub bounds: KeyCols,
    /// `INSERT INTO ghost (...) SELECT <transform> FROM orig`, shared with copy and apply.
    pub insert_head: String,
    /// Every range reads the whole ghost ([`GhostKeyOrder::CastToSource`]): a range's time is
    /// mostly that scan, whatever its rows.
    pub scans_ghost: bool,
}

/// `a` or `(a, b)`: one comparable value.
fn tuple(exprs: &[String]) -> String {
    if exprs.len() == 1 {
        exprs[0].clone()
    } else {
        format!("({})", exprs.join(", "))
    }
}

/// `ROW(...)::text`: the row's text form, in which NULLs and every type render the same
/// way on both sides (one session, one set of output settings).
fn row_text(row: &[String]) -> String {
    format!("ROW({})::text", row.join(", "))
}

/// How a row value is hashed: each way tells values apart exactly as their text does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Hashing {
    /// By its type's own hash: types whose equality is identity (integers, text under a
    /// deterministic collation, timestamps, uuid, ...).
    Native,
    /// bigint, whose own hash folds its two 32-bit halves into one: a value and its twin
    /// extended with zeros instead of its sign (-1 and 4294967295), the mistake an int to
    /// bigint conversion would make, hash alike. By its own hash and its high half too.
    NativeWide,
    /// numeric, whose own hash ignores the display scale (1.0 = 1.00), the sign (it hashes
    /// -2 as 2) and which of NaN and ±Infinity it is: by its binary form instead
    /// (`numeric_send`: sign, weight, display scale and digits, leading and trailing zero
    /// digits stripped), which two numerics share exactly when they print the same.
    NumericBinary,
    /// By its text: floats (-0 = 0), interval, json, arrays, ...
    Text,
}

/// One row's 64-bit hash. Values of types whose equality is identity are hashed by their type
/// (`hash_record_extended`, PostgreSQL 14+), which is about 2.8 times faster than hashing the
/// row's text (measured on 1M rows of bigint, int, text, timestamptz, numeric: 0.31 s against
/// 0.85 s), and numeric by its binary form (on 2M such rows, numeric through its text took
/// 1.30 s, through its binary form 0.97 s); the others keep their text, hashed as one more
/// value of the row.
fn row_hash(row: &[String], hashing: &[Hashing]) -> String {
    let mut native = Vec::new();
    let mut text = Vec::new();
    for (expr, how) in row.iter().zip(hashing) {
        match how {
            Hashing::Native => native.push(expr.clone()),
            Hashing::NativeWide => native.extend([expr.clone(), format!("({expr} >> 32)::int4")]),
            Hashing::NumericBinary => native.push(format!("numeric_send({expr})")),
            Hashing::Text => text.push(expr.clone()),
        }
    }
    match (native.is_empty(), text.is_empty()) {
        (true, _) => format!("hashtextextended({}, 0)", row_text(&text)),
        (false, true) => format!("hash_record_extended(ROW({}), 0)", native.join(", ")),
        (false, false) => format!("hash_record_extended(ROW({}, hashtextextended({}, 0)), 0)", native.join(", "), row_text(&text)),
    }
}

impl ChecksumSql {
    /// The filter for rows of `key` inside the range; `true` when it is unbounded.
    fn predicate(&self, key: &[String], has_lo: bool, has_hi: bool) -> String {
        let n = key.len();
        let key = tuple(key);
        let mut parts = Vec::new();
        if has_lo {
            parts.push(format!("{key} > {}", self.bounds.params(1)));
        }
        if has_hi {
            let first = if has_lo { 1 + n } else { 1 };
            parts.push(format!("{key} <= {}", self.bounds.params(first)));
        }
        if parts.is_empty() {
            "true".to_string()
        } else {
            parts.join(" AND ")
        }
    }

    /// Count and an order-independent hash of one side: the XOR of every row's 64-bit hash
    /// ([`row_hash`]). Keys are unique on both sides, so no two equal rows cancel out; two
    /// differing ranges escape with a chance of 2^-64. No md5, which FIPS servers refuse.
    fn aggregate(&self, side: &Side, has_lo: bool, has_hi: bool) -> String {
        format!(
            "SELECT count(*)::int8 AS n, coalesce(bit_xor({}), 0) AS h FROM {} WHERE {}",
            row_hash(&side.row, &side.hashing),
            side.table.sql(),
            self.predicate(&side.key, has_lo, has_hi)
        )
    }

    /// Both sides' aggregates in one statement, hence one snapshot: four int8 columns,
    /// the original's (count, hash) then the ghost's.
    pub fn compare(&self, has_lo: bool, has_hi: bool) -> String {
        format!(
            "SELECT o.n, o.h, g.n, g.h FROM ({}) o CROSS JOIN ({}) g",
            self.aggregate(&self.orig, has_lo, has_hi),
            self.aggregate(&self.ghost, has_lo, has_hi)
        )
    }

    /// Keys inside the range whose rows differ or exist on one side only, as text in the
    /// original key's types, at most `limit` of them, each row also carrying how many keys
    /// differ in all. With `among`, only keys of a set are looked at: one `text[]` parameter
    /// per key column after the bounds (the keys an earlier call returned).
    pub fn differing_keys(&self, has_lo: bool, has_hi: bool, among: bool, limit: u32) -> String {
        let n = self.orig.key.len();
        let first_set = 1 + n * (usize::from(has_lo) + usize::from(has_hi));
        let side = |s: &Side| {
            let keys: Vec<String> = s.key_as_ghost.iter().enumerate().map(|(i, k)| format!("{k} AS {P}_k{i}")).collect();
            let shown: Vec<String> = s.key_as_source.iter().enumerate().map(|(i, k)| format!("{k} AS {P}_s{i}")).collect();
            let mut filter = self.predicate(&s.key, has_lo, has_hi);
            if among {
                filter = format!("{filter} AND {}", self.in_key_set(&s.key_as_source, first_set));
            }
            format!(
                "SELECT {}, {}, {} AS {P}_h FROM {} WHERE {filter}",
                keys.join(", "),
                shown.join(", "),
                row_text(&s.row),
                s.table.sql(),
            )
        };
        // Key columns are NOT NULL, so a NULL key column means the row is on the other side.
        let shown: Vec<String> = (0..n).map(|i| format!("coalesce(o.{P}_s{i}, g.{P}_s{i})")).collect();
        let join: Vec<String> = (0..n).map(|i| format!("o.{P}_k{i} = g.{P}_k{i}")).collect();
        format!(
            "SELECT {}, count(*) OVER ()::int8 FROM ({}) o FULL JOIN ({}) g ON {} \
             WHERE o.{P}_h IS DISTINCT FROM g.{P}_h ORDER BY {} LIMIT {limit}",
            shown.iter().map(|s| format!("{s}::text")).collect::<Vec<_>>().join(", "),
            side(&self.orig),
            side(&self.ghost),
            join.join(" AND "),
            shown.join(", ")
        )
    }

    /// `key IN (...)` for the key set given as one `text[]` per key column from `$first`,
    /// cast to the original key's types (the text [`ChecksumSql::differing_keys`] returns).
    fn in_key_set(&self, key_as_source: &[String], first: usize) -> String {
        let cols: Vec<String> = (0..key_as_source.len()).map(|i| format!("{P}_in{i}")).collect();
        let casts: Vec<String> = cols.iter().zip(&self.bounds.types).map(|(c, t)| format!("{c}::{t}")).collect();
        let arrays: Vec<String> = (0..cols.len()).map(|i| format!("${}::text[]", first + i)).collect();
        format!(
            "{} IN (SELECT {} FROM unnest({}) AS {P}_in({}))",
            tuple(key_as_source),
            casts.join(", "),
            arrays.join(", "),
            cols.join(", ")
        )
    }

    /// Removes the ghost's rows of a bounded range before it is copied again.
    pub fn delete(&self, has_lo: bool) -> String {
        format!("DELETE FROM {} WHERE {}", self.ghost.table.sql(), self.predicate(&self.ghost.key, has_lo, true))
    }

    /// Removes the ghost's rows past a key (all of them without one).
    pub fn delete_after(&self, has_lo: bool) -> String {
        format!("DELETE FROM {} WHERE {}", self.ghost.table.sql(), self.predicate(&self.ghost.key, has_lo, false))
    }

    /// Copies the original's rows of a bounded range into the ghost, as the copy does.
    pub fn insert(&self, has_lo: bool) -> String {
        format!("{} WHERE {}", self.insert_head, self.predicate(&self.orig.key, has_lo, true))
    }

    /// The greatest key above the lower bound on either side, as the original key's text:
    /// the end of the open last range, so its repair covers every row either side has now.
    pub fn greatest_key(&self, has_lo: bool) -> String {
        let n = self.orig.key.len();
        let side = |s: &Side| {
            let keys: Vec<String> =
                s.key_as_source.iter().enumerate().map(|(i, k)| format!("{k} AS {P}_k{i}")).collect();
            let desc: Vec<String> = s.key.iter().map(|k| format!("{k} DESC")).collect();
            format!(
                "(SELECT {} FROM {} WHERE {} ORDER BY {} LIMIT 1)",
                keys.join(", "),
                s.table.sql(),
                self.predicate(&s.key, has_lo, false),
                desc.join(", ")
            )
        };
        let text: Vec<String> = (0..n).map(|i| format!("{P}_k{i}::text")).collect();
        let desc: Vec<String> = (0..n).map(|i| format!("{P}_k{i} DESC")).collect();
        format!(
            "SELECT {} FROM ({} UNION ALL {}) {P}_ends ORDER BY {} LIMIT 1",
            text.join(", "),
            side(&self.orig),
            side(&self.ghost),
            desc.join(", ")
        )
    }
}

/// One key column of both tables, as the catalog describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct KeyColumn {
    pub source: String,
    pub ghost: String,
    pub source_type: String,
    pub ghost_type: String,
    /// Quoted, schema-qualified collation names, for collatable types.
    pub source_collation: Option<String>,
    pub ghost_collation: Option<String>,
}

/// How the ghost's key is compared with bounds in the original key's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum GhostKeyOrder {
    /// The ghost's columns themselves (same type, or a type whose operators compare across
    /// with the same collation): the ghost's key index serves the ranges.
    Native,
    /// Each column that differs is cast back to the original's type and collation: correct
    /// for any type change, but every range scans the ghost.
    CastToSource,
}

fn collate(expr: String, collation: &Option<String>) -> String {
    match collation {
        Some(c) => format!("{expr} COLLATE {c}"),
        None => expr,
    }
}

impl KeyColumn {
    fn same_on_both_sides(&self) -> bool {
        self.source_type == self.ghost_type && self.source_collation == self.ghost_collation
    }

    fn ghost_as_source(&self) -> String {
        collate(format!("{}::text::{}", ident(&self.ghost), self.source_type), &self.source_collation)
    }

    fn ghost_compared(&self, order: GhostKeyOrder) -> String {
        match order {
            GhostKeyOrder::CastToSource if !self.same_on_both_sides() => format!("({})", self.ghost_as_source()),
            _ => ident(&self.ghost),
        }
    }
}

/// Whether the key can be compared natively without a probe of the server: every column has
/// the same type and collation on both sides.
pub(super) fn key_unchanged(key: &[KeyColumn]) -> bool {
    key.iter().all(KeyColumn::same_on_both_sides)
}

/// Whether native comparison may work at all: a changed collation would order differently.
pub(super) fn collations_unchanged(key: &[KeyColumn]) -> bool {
    key.iter().all(|k| k.source_collation == k.ghost_collation)
}

/// Column names and ghost types of the rows compared, in ghost column order, with the
/// original's expression for each.
pub(super) struct RowColumn<'a> {
    pub ghost: &'a str,
    pub ghost_type: &'a str,
    pub source_expr: &'a str,
    /// How the ghost type's values are hashed (see [`row_hash`]).
    pub hashing: Hashing,
}

/// Builds the two sides from the mapped columns and the key.
pub(super) fn sides(
    orig: &QualifiedName,
    ghost: &QualifiedName,
    row: &[RowColumn<'_>],
    key: &[KeyColumn],
    order: GhostKeyOrder,
) -> (Side, Side) {
    let orig_side = Side {
        table: orig.clone(),
        row: row.iter().map(|c| format!("CAST(({}) AS {})", c.source_expr, c.ghost_type)).collect(),
        hashing: row.iter().map(|c| c.hashing).collect(),
        key: key.iter().map(|k| ident(&k.source)).collect(),
        key_as_ghost: key
            .iter()
            .map(|k| collate(format!("CAST({} AS {})", ident(&k.source), k.ghost_type), &k.ghost_collation))
            .collect(),
        key_as_source: key.iter().map(|k| collate(ident(&k.source), &k.source_collation)).collect(),
    };
    let ghost_side = Side {
        table: ghost.clone(),
        row: row.iter().map(|c| ident(c.ghost)).collect(),
        hashing: row.iter().map(|c| c.hashing).collect(),
        key: key.iter().map(|k| k.ghost_compared(order)).collect(),
        key_as_ghost: key.iter().map(|k| ident(&k.ghost)).collect(),
        key_as_source: key.iter().map(|k| format!("({})", k.ghost_as_source())).collect(),
    };
    (orig_side, ghost_side)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(source: &str, ghost: &str, st: &str, gt: &str) -> KeyColumn {
        KeyColumn {
            source: source.into(),
            ghost: ghost.into(),
            source_type: st.into(),
            ghost_type: gt.into(),
            source_collation: None,
            ghost_collation: None,
        }
    }

    fn build(keys: &[KeyColumn], order: GhostKeyOrder) -> ChecksumSql {
        let orig = QualifiedName::new("s", "T");
        let ghost = QualifiedName::new("s", "_T_gho");
        let row = [
            RowColumn { ghost: "id", ghost_type: "bigint", source_expr: "\"id\"", hashing: Hashing::Text },
            RowColumn { ghost: "len", ghost_type: "integer", source_expr: "(length(label))", hashing: Hashing::Text },
        ];
        let (o, g) = sides(&orig, &ghost, &row, keys, order);
        ChecksumSql {
            orig: o,
            ghost: g,
            bounds: KeyCols {
                names: keys.iter().map(|k| k.source.clone()).collect(),
                types: keys.iter().map(|k| k.source_type.clone()).collect(),
            },
            insert_head: "INSERT INTO \"s\".\"_T_gho\" (\"id\", \"len\") SELECT \"id\", (length(label)) FROM \"s\".\"T\"".into(),
            scans_ghost: order == GhostKeyOrder::CastToSource,
        }
    }

    #[test]
    fn both_sides_render_in_ghost_types_over_the_same_range() {
        let s = build(&[key("id", "id", "integer", "bigint")], GhostKeyOrder::Native);
        let sql = s.compare(true, true);
        assert!(sql.contains("bit_xor(hashtextextended(ROW(CAST((\"id\") AS bigint), CAST(((length(label))) AS integer))::text, 0)), 0) AS h FROM \"s\".\"T\" WHERE \"id\" > $1::text::integer AND \"id\" <= $2::text::integer"), "{sql}");
        assert!(sql.contains("bit_xor(hashtextextended(ROW(\"id\", \"len\")::text, 0)), 0) AS h FROM \"s\".\"_T_gho\" WHERE \"id\" > $1::text::integer AND \"id\" <= $2::text::integer"), "{sql}");
    }

    #[test]
    fn open_ends_drop_their_bound() {
        let s = build(&[key("id", "id", "integer", "integer")], GhostKeyOrder::Native);
        assert!(s.compare(false, true).contains("WHERE \"id\" <= $1::text::integer)"));
        assert!(s.compare(true, false).contains("WHERE \"id\" > $1::text::integer)"));
        assert!(s.compare(false, false).contains("WHERE true)"));
        assert_eq!(s.delete(false), "DELETE FROM \"s\".\"_T_gho\" WHERE \"id\" <= $1::text::integer");
        assert!(s.insert(true).ends_with("FROM \"s\".\"T\" WHERE \"id\" > $1::text::integer AND \"id\" <= $2::text::integer"));
    }

    #[test]
    fn composite_keys_compare_as_rows_with_bounds_lo_then_hi() {
        let keys = [key("Tenant", "Tenant", "integer", "integer"), key("id", "id", "bigint", "bigint")];
        let s = build(&keys, GhostKeyOrder::Native);
        assert_eq!(
            s.delete(true),
            "DELETE FROM \"s\".\"_T_gho\" WHERE (\"Tenant\", \"id\") > ($1::text::integer, $2::text::bigint) AND (\"Tenant\", \"id\") <= ($3::text::integer, $4::text::bigint)"
        );
        let diff = s.differing_keys(false, true, false, 5);
        assert!(diff.contains("FULL JOIN"), "{diff}");
        assert!(diff.contains("ON o._pg_ghost_k0 = g._pg_ghost_k0 AND o._pg_ghost_k1 = g._pg_ghost_k1"), "{diff}");
        assert!(diff.contains("coalesce(o._pg_ghost_s1, g._pg_ghost_s1)::text"), "{diff}");
        assert!(diff.ends_with("LIMIT 5"), "{diff}");
        assert!(!diff.contains("unnest"), "{diff}");
        // The key set's arrays follow the bounds (here only the upper one, $1 and $2).
        let among = s.differing_keys(false, true, true, 5);
        assert!(
            among.contains("AND (\"Tenant\", \"id\") IN (SELECT _pg_ghost_in0::integer, _pg_ghost_in1::bigint FROM unnest($3::text[], $4::text[]) AS _pg_ghost_in(_pg_ghost_in0, _pg_ghost_in1))"),
            "{among}"
        );
    }

    #[test]
    fn a_changed_key_type_is_cast_back_only_when_asked() {
        let mut k = key("code", "code", "text", "text");
        k.source_collation = Some("\"pg_catalog\".\"default\"".into());
        k.ghost_collation = Some("\"pg_catalog\".\"C\"".into());
        assert!(!key_unchanged(std::slice::from_ref(&k)));
        assert!(!collations_unchanged(std::slice::from_ref(&k)));
        let s = build(std::slice::from_ref(&k), GhostKeyOrder::CastToSource);
        assert_eq!(
            s.delete(false),
            "DELETE FROM \"s\".\"_T_gho\" WHERE (\"code\"::text::text COLLATE \"pg_catalog\".\"default\") <= $1::text::text"
        );
        // Rows are matched in the ghost's collation, ends are found in the original's.
        assert_eq!(s.orig.key_as_ghost, ["CAST(\"code\" AS text) COLLATE \"pg_catalog\".\"C\""]);
        assert_eq!(s.orig.key_as_source, ["\"code\" COLLATE \"pg_catalog\".\"default\""]);
        let unchanged = key("id", "id", "integer", "integer");
        assert!(key_unchanged(std::slice::from_ref(&unchanged)));
        let s = build(&[unchanged], GhostKeyOrder::CastToSource);
        assert_eq!(s.ghost.key, ["\"id\""]);
    }

    #[test]
    fn the_open_range_ends_at_the_greatest_key_of_either_side() {
        let s = build(&[key("id", "id", "integer", "bigint")], GhostKeyOrder::Native);
        let sql = s.greatest_key(true);
        assert!(sql.starts_with("SELECT _pg_ghost_k0::text FROM ((SELECT \"id\" AS _pg_ghost_k0 FROM \"s\".\"T\" WHERE \"id\" > $1::text::integer ORDER BY \"id\" DESC LIMIT 1) UNION ALL (SELECT (\"id\"::text::integer) AS _pg_ghost_k0 FROM \"s\".\"_T_gho\""), "{sql}");
        assert!(sql.ends_with("ORDER BY _pg_ghost_k0 DESC LIMIT 1"), "{sql}");
    }

    #[test]
    fn hashes_by_type_where_equality_is_identity_numeric_by_its_binary_form_and_by_text_elsewhere() {
        use Hashing::{Native, NumericBinary, Text};
        let row = vec!["\"id\"".to_string(), "\"amount\"".to_string(), "\"label\"".to_string(), "\"span\"".to_string()];
        assert_eq!(
            row_hash(&row, &[Native, Text, Native, Text]),
            "hash_record_extended(ROW(\"id\", \"label\", hashtextextended(ROW(\"amount\", \"span\")::text, 0)), 0)"
        );
        assert_eq!(row_hash(&row[..3], &[Native, Native, Native]), "hash_record_extended(ROW(\"id\", \"amount\", \"label\"), 0)");
        assert_eq!(row_hash(&row[..3], &[Text, Text, Text]), "hashtextextended(ROW(\"id\", \"amount\", \"label\")::text, 0)");
        assert_eq!(
            row_hash(&row, &[Native, NumericBinary, Native, Text]),
            "hash_record_extended(ROW(\"id\", numeric_send(\"amount\"), \"label\", hashtextextended(ROW(\"span\")::text, 0)), 0)"
        );
        // A numeric alone is still hashed without its text.
        assert_eq!(row_hash(&row[1..2], &[NumericBinary]), "hash_record_extended(ROW(numeric_send(\"amount\")), 0)");
        assert_eq!(
            row_hash(&row[..2], &[Hashing::NativeWide, Text]),
            "hash_record_extended(ROW(\"id\", (\"id\" >> 32)::int4, hashtextextended(ROW(\"amount\")::text, 0)), 0)"
        );
    }
}
