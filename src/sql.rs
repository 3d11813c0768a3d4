//! SQL text, built from quoted identifiers and literals only.
//!
//! Every identifier that reaches the server passes through [`ident`] (PostgreSQL's
//! `quote_ident` rules, always quoting) and every literal through [`literal`]; nothing from
//! the user or the catalog is spliced in unquoted. Statement builders live beside these.

use std::fmt;

/// Quotes an identifier: `"` around it, inner `"` doubled. Always quotes, so upper case,
/// spaces, unicode and reserved words keep their exact meaning.
pub fn ident(name: &str) -> String {
    let mut s = String::with_capacity(name.len() + 2);
    s.push('"');
    for c in name.chars() {
        if c == '"' {
            s.push('"');
        }
        s.push(c);
    }
    s.push('"');
    s
}

/// Quotes a string literal as `'...'`, inner `'` doubled; uses `E'...'` when a backslash
/// is present so that the result means the same whatever `standard_conforming_strings` is.
pub fn literal(value: &str) -> String {
    let mut s = String::with_capacity(value.len() + 3);
    if value.contains('\\') {
        s.push('E');
    }
    s.push('\'');
    for c in value.chars() {
        match c {
            '\'' => s.push_str("''"),
            '\\' => s.push_str("\\\\"),
            _ => s.push(c),
        }
    }
    s.push('\'');
    s
}

/// A schema-qualified name, e.g. `"public"."orders"`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct QualifiedName {
    pub schema: String,
    pub name: String,
}

impl QualifiedName {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        QualifiedName { schema: schema.into(), name: name.into() }
    }

    /// The same schema, another relation name.
    pub fn sibling(&self, name: impl Into<String>) -> Self {
        QualifiedName { schema: self.schema.clone(), name: name.into() }
    }

    /// The quoted SQL form.
    pub fn sql(&self) -> String {
        format!("{}.{}", ident(&self.schema), ident(&self.name))
    }
}

impl fmt::Display for QualifiedName {
    /// The form a DBA reads in messages: quoted only where needed is not attempted; the
    /// quoted form is unambiguous and what they would paste back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.sql())
    }
}

/// A comma-separated list of quoted identifiers.
pub fn ident_list<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    names.into_iter().map(ident).collect::<Vec<_>>().join(", ")
}

/// PostgreSQL's limit on identifier length, in bytes.
pub const MAX_IDENT_BYTES: usize = 63;

/// Fits `name` within 63 bytes: longer names keep a prefix (cut on a character boundary)
/// and get a short hash of the whole name appended, so distinct long names stay distinct.
pub fn fit_ident(name: &str) -> String {
    if name.len() <= MAX_IDENT_BYTES {
        return name.to_string();
    }
    let suffix = format!("_{:08x}", fnv1a32(name.as_bytes()));
    let mut cut = MAX_IDENT_BYTES - suffix.len();
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{}", &name[..cut], suffix)
}

fn fnv1a32(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= *b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// `wanted`, or when `taken` says it is in use, the name PostgreSQL numbers it into for an
/// object it names itself: its label (`_check`, `_key`, ...) followed by 1, 2, ...
/// (`orders_amount_check` taken: `orders_amount_check1`).
pub fn first_free_name(wanted: &str, taken: impl Fn(&str) -> bool) -> String {
    let base = chosen_base(wanted);
    let mut candidate = wanted.to_string();
    let mut n = 0;
    while taken(&candidate) {
        n += 1;
        candidate = fit_ident(&format!("{base}{n}"));
    }
    candidate
}

/// `orders_amount_check2` → `orders_amount_check`: the name PostgreSQL numbers when taken.
/// Only the digits after one of its labels are its number.
pub fn chosen_base(name: &str) -> &str {
    const LABELS: [&str; 7] = ["_check", "_key", "_idx", "_fkey", "_pkey", "_excl", "_not_null"];
    let trimmed = name.trim_end_matches(|c: char| c.is_ascii_digit());
    match LABELS.iter().any(|l| trimmed.ends_with(l)) {
        true => trimmed,
        false => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_in_use_is_numbered_as_postgres_numbers_it() {
        let taken = ["orders_amount_check", "orders_amount_check1", "orders_pad_key"];
        let free = |w: &str| first_free_name(w, |n| taken.contains(&n));
        assert_eq!(free("orders_amount_check"), "orders_amount_check2");
        assert_eq!(free("orders_pad_key"), "orders_pad_key1");
        assert_eq!(free("orders_n_check"), "orders_n_check");
        assert_eq!(chosen_base("orders_total2_check12"), "orders_total2_check");
        assert_eq!(chosen_base("orders_amount2"), "orders_amount2");
    }

    #[test]
    fn quotes_identifiers() {
        assert_eq!(ident("orders"), "\"orders\"");
        assert_eq!(ident("Order Items"), "\"Order Items\"");
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(ident("x\"; DROP TABLE t; --"), "\"x\"\"; DROP TABLE t; --\"");
        assert_eq!(ident("café"), "\"café\"");
    }

    #[test]
    fn quotes_literals() {
        assert_eq!(literal("abc"), "'abc'");
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal("a\\b"), "E'a\\\\b'");
    }

    #[test]
    fn qualified_names() {
        let q = QualifiedName::new("My Schema", "t\"1");
        assert_eq!(q.sql(), "\"My Schema\".\"t\"\"1\"");
        assert_eq!(q.sibling("_t_gho").sql(), "\"My Schema\".\"_t_gho\"");
        assert_eq!(ident_list(["a", "B"]), "\"a\", \"B\"");
    }

    #[test]
    fn fits_long_names_within_63_bytes() {
        assert_eq!(fit_ident("short"), "short");
        let long = format!("_{}_gho", "x".repeat(70));
        let fitted = fit_ident(&long);
        assert!(fitted.len() <= 63, "{}", fitted.len());
        assert_ne!(fit_ident(&format!("_{}_gho", "x".repeat(71))), fitted);
        let unicode = format!("_{}_gho", "é".repeat(40));
        let fitted = fit_ident(&unicode);
        assert!(fitted.len() <= 63);
        assert!(fitted.is_char_boundary(fitted.len()));
    }
}
