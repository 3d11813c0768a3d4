//! How a row of the original becomes a row of the ghost: one expression list shared by the
//! copy and the apply, so both write exactly what a plain `ALTER TABLE` would have written.
//!
//! Columns are matched by attnum across the ALTER: right after `CREATE TABLE ... (LIKE ...)`
//! the ghost's columns carry the original's names, so `attnum → original name` is known;
//! after the ALTER a ghost column whose attnum is in that map comes from that original
//! column (a `RENAME COLUMN` is followed), a column that is gone was dropped, and a column
//! with a new attnum was added and takes its default. A type change reads the original
//! through its `USING` expression, or the assignment cast that `INSERT` applies.

use crate::error::{Error, Result};
use crate::schema::{Column, Identity};
use crate::sql::ident;
use std::collections::HashMap;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mapping {
    /// Ghost column names to insert into, in order.
    pub ghost_columns: Vec<String>,
    /// One SQL expression over the original's columns per ghost column.
    pub source_exprs: Vec<String>,
    /// A `GENERATED ALWAYS` identity column receives explicit values.
    pub overriding_system_value: bool,
    /// The key: original column names, in key order.
    pub key_source: Vec<String>,
    /// The key on the ghost: column names and `format_type`s, in key order.
    pub key_ghost: Vec<String>,
    pub key_ghost_types: Vec<String>,
    /// `format_type`s of the original's key columns.
    pub key_source_types: Vec<String>,
    /// Every original column that lives on in the ghost: (original name, ghost name).
    pub carried: Vec<(String, String)>,
    /// The columns beyond the key of the unique index that writes conflict on: a table
    /// converted into a partitioned one can have no unique index on the key alone, so the
    /// ghost's is on the key and the partition key's columns (`crate::ghost::convert`). A
    /// flush still deletes by the key alone before writing again (the ghost's unique index
    /// is not the key's, so it never updates in place), so a row moves partition.
    #[serde(default)]
    pub conflict_extra: Vec<String>,
}

impl Mapping {
    /// The columns of the unique index that `ON CONFLICT` names: the key, and for a
    /// conversion the partition key's columns that are not in it.
    pub fn conflict_target(&self) -> Vec<&str> {
        self.key_ghost.iter().chain(&self.conflict_extra).map(String::as_str).collect()
    }

    /// The ghost's name for an original column, if the ALTER kept it.
    pub fn ghost_name_of(&self, source: &str) -> Option<&str> {
        self.carried.iter().find(|(s, _)| s == source).map(|(_, g)| g.as_str())
    }
}

impl Mapping {
    /// `attnum_names`: ghost attnum → original column name, read before the ALTER.
    /// `ghost_after`: the ghost's columns after the ALTER. `using`: original column name →
    /// USING expression. `source_key`: the original's key columns and their types.
    pub fn build(
        attnum_names: &HashMap<i16, String>,
        ghost_after: &[Column],
        using: &HashMap<String, String>,
        source_key: &[(String, String)],
    ) -> Result<Mapping> {
        let mut ghost_columns = Vec::new();
        let mut source_exprs = Vec::new();
        let mut overriding_system_value = false;
        let mut ghost_name_of = HashMap::new();
        let mut carried = Vec::new();
        for col in ghost_after {
            let Some(source) = attnum_names.get(&col.attnum) else { continue };
            ghost_name_of.insert(source.as_str(), col);
            carried.push((source.clone(), col.name.clone()));
            if col.generated {
                continue;
            }
            overriding_system_value |= col.identity == Identity::Always;
            ghost_columns.push(col.name.clone());
            source_exprs.push(using.get(source).cloned().unwrap_or_else(|| ident(source)));
        }
        let mut key_ghost = Vec::new();
        let mut key_ghost_types = Vec::new();
        for (name, _) in source_key {
            let col = ghost_name_of.get(name.as_str()).ok_or_else(|| {
                Error::refused(format!(
                    "the ALTER drops key column {}; pg-ghost needs the key to copy and apply by (give another unique NOT NULL index with --key)",
                    ident(name)
                ))
            })?;
            if using.contains_key(name) {
                return Err(Error::refused(format!(
                    "the ALTER changes key column {} with USING; the key must map one to one (change its type without USING, or use --key with another index)",
                    ident(name)
                )));
            }
            key_ghost.push(col.name.clone());
            key_ghost_types.push(col.type_sql.clone());
        }
        Ok(Mapping {
            ghost_columns,
            source_exprs,
            overriding_system_value,
            key_source: source_key.iter().map(|(n, _)| n.clone()).collect(),
            key_source_types: source_key.iter().map(|(_, t)| t.clone()).collect(),
            key_ghost,
            key_ghost_types,
            carried,
            conflict_extra: Vec::new(),
        })
    }
}

/// A column the ALTER retyped, as the revert window writes it back: read from the new table
/// under `column`, cast back to `old_type`, and checked to come back to `new_type` unchanged.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CastBack {
    pub column: String,
    pub old_type: String,
    pub new_type: String,
}

/// The mapping of the revert window, from the new table (source) back to the old one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reverse {
    pub mapping: Mapping,
    /// The retyped columns: every value written back must survive the cast both ways.
    pub cast_back: Vec<CastBack>,
}

impl Mapping {
    /// The reverse of this mapping, for the revert window: rows of the new table (`new`, the
    /// ghost's columns after the ALTER) written into the old table (`old`, the original's
    /// columns). Columns the ALTER added are left out; retyped ones are cast back
    /// explicitly (an explicit cast fails on a value past the old type's range, and
    /// [`Reverse::cast_back`] catches what a cast would change silently); renamed ones are
    /// read under their new name; columns the ALTER dropped are not written, so an existing
    /// row keeps its value and a new one takes the column's default. A column rewritten
    /// with `USING` has no way back and is refused.
    pub fn reverse(&self, old: &[Column], new: &[Column]) -> Result<Reverse> {
        let mut ghost_columns = Vec::new();
        let mut source_exprs = Vec::new();
        let mut overriding_system_value = false;
        let mut cast_back = Vec::new();
        for (source, expr) in self.ghost_columns.iter().zip(&self.source_exprs) {
            let Some((orig_name, _)) = self.carried.iter().find(|(_, g)| g == source) else { continue };
            if *expr != ident(orig_name) {
                return Err(Error::refused(format!(
                    "--revertible-for: the ALTER rewrites column {} with USING, which has no way back; revert windows take type changes without USING only",
                    ident(orig_name)
                )));
            }
        }
        for col in old {
            if col.generated {
                continue;
            }
            let Some(new_name) = self.ghost_name_of(&col.name) else { continue };
            let new_col = new.iter().find(|c| c.name == new_name).ok_or_else(|| {
                Error::internal(format!("the new table has no column {} (the old table's {})", ident(new_name), ident(&col.name)))
            })?;
            overriding_system_value |= col.identity == Identity::Always;
            ghost_columns.push(col.name.clone());
            if new_col.type_sql == col.type_sql {
                source_exprs.push(ident(new_name));
            } else {
                source_exprs.push(format!("CAST({} AS {})", ident(new_name), col.type_sql));
                cast_back.push(CastBack { column: new_name.to_string(), old_type: col.type_sql.clone(), new_type: new_col.type_sql.clone() });
            }
        }
        let mapping = Mapping {
            ghost_columns,
            source_exprs,
            overriding_system_value,
            key_source: self.key_ghost.clone(),
            key_source_types: self.key_ghost_types.clone(),
            key_ghost: self.key_source.clone(),
            key_ghost_types: self.key_source_types.clone(),
            carried: self.carried.iter().map(|(o, g)| (g.clone(), o.clone())).collect(),
            conflict_extra: Vec::new(),
        };
        Ok(Reverse { mapping, cast_back })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(attnum: i16, name: &str, ty: &str) -> Column {
        Column {
            attnum,
            name: name.into(),
            type_sql: ty.into(),
            type_oid: 0,
            not_null: false,
            identity: Identity::None,
            generated: false,
        }
    }

    fn names(pairs: &[(i16, &str)]) -> HashMap<i16, String> {
        pairs.iter().map(|(a, n)| (*a, n.to_string())).collect()
    }

    #[test]
    fn follows_renames_drops_additions_and_using() {
        let before = names(&[(1, "id"), (2, "old name"), (3, "gone"), (4, "body")]);
        let mut id = col(1, "id", "bigint");
        id.identity = Identity::Always;
        let mut generated = col(6, "len", "integer");
        generated.generated = true;
        let after = vec![id, col(2, "new name", "text"), col(4, "body", "integer"), col(5, "added", "boolean"), generated];
        let using = HashMap::from([("body".to_string(), "(length(body))".to_string())]);
        let m = Mapping::build(&before, &after, &using, &[("id".into(), "integer".into())]).unwrap();
        assert_eq!(m.ghost_columns, ["id", "new name", "body"]);
        assert_eq!(m.source_exprs, ["\"id\"", "\"old name\"", "(length(body))"]);
        assert!(m.overriding_system_value);
        assert_eq!(m.key_ghost, ["id"]);
        assert_eq!(m.key_ghost_types, ["bigint"]);
        assert_eq!(m.key_source_types, ["integer"]);
        assert_eq!(m.ghost_name_of("old name"), Some("new name"));
        assert_eq!(m.ghost_name_of("gone"), None);
    }

    #[test]
    fn refuses_a_dropped_or_rewritten_key() {
        let before = names(&[(1, "id"), (2, "v")]);
        let e = Mapping::build(&before, &[col(2, "v", "text")], &HashMap::new(), &[("id".into(), "int".into())]).unwrap_err();
        assert!(e.to_string().contains("drops key column \"id\""), "{e}");
        let using = HashMap::from([("id".to_string(), "(id * 2)".to_string())]);
        let e = Mapping::build(&before, &[col(1, "id", "bigint")], &using, &[("id".into(), "int".into())]).unwrap_err();
        assert!(e.to_string().contains("USING"), "{e}");
    }

    #[test]
    fn reverses_renames_drops_additions_and_retypes() {
        let before = names(&[(1, "id"), (2, "old name"), (3, "gone"), (4, "n")]);
        let old = vec![col(1, "id", "integer"), col(2, "old name", "text"), col(3, "gone", "integer"), col(4, "n", "integer")];
        let new = vec![col(1, "id", "bigint"), col(2, "new name", "text"), col(4, "n", "bigint"), col(5, "added", "boolean")];
        let m = Mapping::build(&before, &new, &HashMap::new(), &[("id".into(), "integer".into())]).unwrap();
        let r = m.reverse(&old, &new).unwrap();
        assert_eq!(r.mapping.ghost_columns, ["id", "old name", "n"]);
        assert_eq!(r.mapping.source_exprs, ["CAST(\"id\" AS integer)", "\"new name\"", "CAST(\"n\" AS integer)"]);
        assert_eq!(r.mapping.key_source, ["id"]);
        assert_eq!(r.mapping.key_source_types, ["bigint"]);
        assert_eq!(r.mapping.key_ghost_types, ["integer"]);
        assert_eq!(r.mapping.ghost_name_of("new name"), Some("old name"));
        assert_eq!(
            r.cast_back.iter().map(|c| (c.column.as_str(), c.old_type.as_str(), c.new_type.as_str())).collect::<Vec<_>>(),
            [("id", "integer", "bigint"), ("n", "integer", "bigint")]
        );
    }

    #[test]
    fn a_column_rewritten_with_using_has_no_way_back() {
        let before = names(&[(1, "id"), (2, "body")]);
        let old = vec![col(1, "id", "integer"), col(2, "body", "text")];
        let new = vec![col(1, "id", "integer"), col(2, "body", "integer")];
        let using = HashMap::from([("body".to_string(), "(length(body))".to_string())]);
        let m = Mapping::build(&before, &new, &using, &[("id".into(), "integer".into())]).unwrap();
        let e = m.reverse(&old, &new).unwrap_err();
        assert!(e.to_string().contains("USING"), "{e}");
    }
}
