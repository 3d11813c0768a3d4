//! The key that copy and apply address rows by: the primary key, or the unique index the
//! DBA names with `--key`.
//!
//! The key must identify every row, now and while the run lasts: unique, on NOT NULL
//! columns, covering the whole table (not partial), on plain columns (copy compares key
//! values as rows), valid (not a failed `CREATE INDEX CONCURRENTLY`), and not deferrable
//! (`ON CONFLICT (key)` refuses a deferrable arbiter).

use super::get;
use crate::error::{Context, Error, Result};
use crate::schema::Key;
use crate::sql::{ident, QualifiedName};
use tokio_postgres::Client;

/// One index of the table, as the key choice needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Index {
    pub name: String,
    pub is_primary: bool,
    pub is_unique: bool,
    /// Valid, ready and live: usable by queries and as an arbiter.
    pub is_valid: bool,
    /// Not `DEFERRABLE`.
    pub is_immediate: bool,
    pub is_partial: bool,
    pub has_expressions: bool,
    pub is_replica_identity: bool,
    /// Key columns in index order (INCLUDE columns left out); expressions are absent here.
    pub columns: Vec<String>,
    pub types: Vec<String>,
    pub not_null: Vec<bool>,
}

impl Index {
    /// Every reason this index cannot serve as the key; empty when it can.
    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !self.is_unique {
            p.push("it is not unique".to_string());
        }
        if self.is_partial {
            p.push("it is partial (has a WHERE clause), so it does not cover every row".to_string());
        }
        if self.has_expressions {
            p.push("it indexes expressions, not only columns".to_string());
        }
        let nullable: Vec<String> =
            self.columns.iter().zip(&self.not_null).filter(|(_, nn)| !**nn).map(|(c, _)| ident(c)).collect();
        if !nullable.is_empty() {
            p.push(format!("column {} may be NULL (add NOT NULL)", nullable.join(", ")));
        }
        if !self.is_immediate {
            p.push("it is DEFERRABLE, which ON CONFLICT cannot use".to_string());
        }
        if !self.is_valid {
            p.push("it is not valid (a failed CREATE INDEX CONCURRENTLY?); REINDEX it".to_string());
        }
        p
    }

    fn to_key(&self) -> Key {
        Key {
            index_name: self.name.clone(),
            is_primary: self.is_primary,
            columns: self.columns.clone(),
            types: self.types.clone(),
        }
    }
}

/// Reads every index of the table.
pub(super) async fn indexes(client: &Client, table_oid: u32) -> Result<Vec<Index>> {
    // Key columns only: the first indnkeyatts entries of indkey; an expression has attnum 0
    // and joins no column.
    let sql = format!(
        "SELECT ic.relname::text AS name, i.indisprimary, i.indisunique,
                    (i.indisvalid AND i.indisready AND i.indislive) AS is_valid, i.indimmediate,
                    i.indpred IS NOT NULL AS is_partial, i.indexprs IS NOT NULL AS has_expressions,
                    i.indisreplident,
                    ARRAY(SELECT a.attname::text
                            FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
                            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                           WHERE k.ord <= i.indnkeyatts ORDER BY k.ord) AS columns,
                    ARRAY(SELECT format_type(a.atttypid, a.atttypmod)
                            FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
                            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                           WHERE k.ord <= i.indnkeyatts ORDER BY k.ord) AS types,
                    ARRAY(SELECT {not_null}
                            FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
                            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                           WHERE k.ord <= i.indnkeyatts ORDER BY k.ord) AS not_null
               FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
              WHERE i.indrelid = $1
              ORDER BY i.indisprimary DESC, ic.relname",
        not_null = super::NOT_NULL
    );
    let rows = client
        .query(
            sql.as_str(),
            &[&table_oid],
        )
        .await
        .context("reading the table's indexes")?;
    rows.iter()
        .map(|r| {
            Ok(Index {
                name: get(r, "name")?,
                is_primary: get(r, "indisprimary")?,
                is_unique: get(r, "indisunique")?,
                is_valid: get(r, "is_valid")?,
                is_immediate: get(r, "indimmediate")?,
                is_partial: get(r, "is_partial")?,
                has_expressions: get(r, "has_expressions")?,
                is_replica_identity: get(r, "indisreplident")?,
                columns: get(r, "columns")?,
                types: get(r, "types")?,
                not_null: get(r, "not_null")?,
            })
        })
        .collect()
}

/// Picks the key: the primary key, or the index named by `--key` (already split into its
/// unquoted name). Refuses, listing the usable alternatives, when there is none.
pub(super) fn choose_key(table: &QualifiedName, indexes: &[Index], wanted: Option<&str>) -> Result<Key> {
    match wanted {
        None => {
            let pk = indexes.iter().find(|i| i.is_primary).ok_or_else(|| {
                Error::refused(format!(
                    "{table} has no primary key, and pg-ghost copies and applies rows by a unique key: \
                     add a primary key, or name a unique index on NOT NULL columns with --key{}",
                    candidates(indexes)
                ))
            })?;
            usable(table, pk, "the primary key")
        }
        Some(name) => {
            let index = indexes.iter().find(|i| i.name == name).ok_or_else(|| {
                Error::refused(format!(
                    "--key {}: {table} has no index of that name{}",
                    ident(name),
                    candidates(indexes)
                ))
            })?;
            usable(table, index, "--key")
        }
    }
}

fn usable(table: &QualifiedName, index: &Index, what: &str) -> Result<Key> {
    let problems = index.problems();
    if problems.is_empty() {
        return Ok(index.to_key());
    }
    Err(Error::refused(format!(
        "{what} {} on {table} cannot serve as the key: {}",
        ident(&index.name),
        problems.join("; ")
    )))
}

/// "; usable with --key: ..." when some index qualifies, to save the DBA a catalog search.
fn candidates(indexes: &[Index]) -> String {
    let names: Vec<String> = indexes.iter().filter(|i| i.problems().is_empty()).map(|i| ident(&i.name)).collect();
    if names.is_empty() {
        String::new()
    } else {
        format!(" (indexes usable with --key: {})", names.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn unique(name: &str) -> Index {
        Index {
            name: name.into(),
            is_primary: false,
            is_unique: true,
            is_valid: true,
            is_immediate: true,
            is_partial: false,
            has_expressions: false,
            is_replica_identity: false,
            columns: vec!["a".into(), "b".into()],
            types: vec!["integer".into(), "text".into()],
            not_null: vec![true, true],
        }
    }

    fn t() -> QualifiedName {
        QualifiedName::new("public", "t")
    }

    #[test]
    fn prefers_the_primary_key() {
        let pk = Index { is_primary: true, ..unique("t_pkey") };
        let key = choose_key(&t(), &[pk, unique("t_a_b_key")], None).unwrap();
        assert_eq!(key.index_name, "t_pkey");
        assert!(key.is_primary);
        assert_eq!(key.columns, ["a", "b"]);
        assert_eq!(key.types, ["integer", "text"]);
    }

    #[test]
    fn no_primary_key_lists_candidates() {
        let e = choose_key(&t(), &[unique("t_a_b_key")], None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Refused);
        assert!(e.message().contains("has no primary key"), "{e}");
        assert!(e.message().contains("usable with --key: \"t_a_b_key\""), "{e}");
    }

    #[test]
    fn named_key_must_qualify() {
        assert_eq!(choose_key(&t(), &[unique("k")], Some("k")).unwrap().index_name, "k");
        let bad = Index {
            is_unique: false,
            is_partial: true,
            not_null: vec![true, false],
            is_immediate: false,
            ..unique("k")
        };
        let m = choose_key(&t(), &[bad], Some("k")).unwrap_err().message().to_string();
        for part in ["not unique", "partial", "column \"b\" may be NULL", "DEFERRABLE"] {
            assert!(m.contains(part), "{part} missing from {m}");
        }
        let m = choose_key(&t(), &[unique("k")], Some("nope")).unwrap_err().message().to_string();
        assert!(m.contains("no index of that name"), "{m}");
    }

    #[test]
    fn a_deferrable_primary_key_is_refused() {
        let pk = Index { is_primary: true, is_immediate: false, ..unique("t_pkey") };
        let m = choose_key(&t(), &[pk], None).unwrap_err().message().to_string();
        assert!(m.contains("the primary key \"t_pkey\" on \"public\".\"t\" cannot serve"), "{m}");
    }
}
