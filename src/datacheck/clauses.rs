//! Which clauses of the ALTER existing rows can break, read from the ghost's catalog.
//!
//! The ghost is built with the original's constraints and indexes, then the ALTER runs on
//! it (`crate::ghost`). Whatever has a new OID afterwards is what the ALTER added, or
//! rebuilt because it changed a column it covers (PostgreSQL rebuilds the constraints and
//! indexes on a column whose type changes): those are the constraints the copied rows will
//! meet for the first time. The rest hold already on the original. PostgreSQL's own
//! catalog says what each one is (`pg_get_expr`, `pg_get_indexdef`), so no SQL is parsed
//! here; column references are to the ghost's columns, which the checks compute from the
//! original's row as the copy does ([`Shaped`]).

use super::{Check, Checks, Kind, Length, Shaped};
use crate::error::{Context, Result};
use crate::ghost::Mapping;
use crate::schema::{Column, Identity, TableInfo};
use crate::sql::{ident, QualifiedName};
use std::collections::HashMap;
use tokio_postgres::GenericClient;

/// The ghost's constraints, indexes and NOT NULL columns right before the ALTER runs.
#[derive(Clone, Debug, Default)]
pub struct Before {
    constraints: Vec<u32>,
    indexes: Vec<u32>,
    /// Names of those constraints and indexes: one with a new OID and an old name was
    /// rebuilt by a type change rather than added.
    names: Vec<String>,
}

impl Before {
    pub async fn read(tx: &impl GenericClient, ghost_oid: u32) -> Result<Before> {
        let row = tx
            .query_one(
                "SELECT ARRAY(SELECT oid FROM pg_constraint WHERE conrelid = $1),
                        ARRAY(SELECT indexrelid FROM pg_index WHERE indrelid = $1),
                        ARRAY(SELECT conname::text FROM pg_constraint WHERE conrelid = $1
                              UNION SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = $1)",
                &[&ghost_oid],
            )
            .await
            .context("reading the ghost's constraints before the ALTER")?;
        Ok(Before { constraints: row.try_get(0)?, indexes: row.try_get(1)?, names: row.try_get(2)? })
    }
}

/// What the ALTER did to the ghost, as read right after it ran.
pub struct After<'a> {
    pub ghost_oid: u32,
    pub orig: &'a TableInfo,
    /// The ghost's columns after the ALTER.
    pub columns: &'a [Column],
    pub mapping: &'a Mapping,
    /// Original column name → its type change's `USING` expression.
    pub using: &'a HashMap<String, String>,
    /// The ghost's temporary constraint and index names → the original's names.
    pub original_names: &'a HashMap<String, String>,
}

struct Attr {
    has_default: bool,
    type_name: String,
    typmod: i32,
}

/// The checks the ALTER calls for, in the order they run: casts first (every other check
/// computes the new types), then the row checks, then duplicates (one statement).
pub async fn read(tx: &impl GenericClient, before: &Before, after: &After<'_>) -> Result<Checks> {
    let attrs = attributes(tx, after.ghost_oid).await?;
    let mut out = Checks::default();
    let shapes: HashMap<i16, Option<Shaped>> = after.columns.iter().map(|c| (c.attnum, shape(after, &attrs, c))).collect();

    for col in after.columns {
        let Some(source) = source_of(after, col) else { continue };
        if col.generated || !retyped(after, source, col) || lossless(after, source, col) {
            continue;
        }
        let expr = after.using.get(source).cloned().unwrap_or_else(|| ident(source));
        let length = attrs.get(&col.attnum).and_then(|a| length(&a.type_name, a.typmod));
        let clause = match after.using.get(source) {
            Some(u) => format!("ALTER COLUMN {} TYPE {} USING {u}", ident(source), col.type_sql),
            None => format!("ALTER COLUMN {} TYPE {}", ident(source), col.type_sql),
        };
        out.checks.push(Check {
            clause,
            constraint: None,
            kind: Kind::Cast { column: source.to_string(), expr, target: col.type_sql.clone(), length },
            columns: Vec::new(),
        });
    }

    for col in after.columns.iter().filter(|c| c.not_null && !c.generated) {
        let newly = match source_of(after, col) {
            Some(source) => {
                !after.orig.column(source).is_some_and(|c| c.not_null) || (retyped(after, source, col) && !lossless(after, source, col))
            }
            // An added column is filled by its default, its identity, or nothing at all.
            None => col.identity == Identity::None && !attrs.get(&col.attnum).is_some_and(|a| a.has_default),
        };
        if !newly {
            continue;
        }
        let Some(Some(shaped)) = shapes.get(&col.attnum) else { continue };
        out.checks.push(Check {
            clause: format!("{} NOT NULL", ident(&col.name)),
            constraint: None,
            kind: Kind::NotNull { column: col.name.clone() },
            columns: vec![shaped.clone()],
        });
    }

    let rows = tx
        .query(
            "SELECT c.conname::text, c.contype::text, pg_get_constraintdef(c.oid), pg_get_expr(c.conbin, c.conrelid),
                    coalesce(c.conkey, '{}'), c.confrelid = c.conrelid,
                    (SELECT n.nspname::text FROM pg_class r JOIN pg_namespace n ON n.oid = r.relnamespace WHERE r.oid = c.confrelid),
                    (SELECT r.relname::text FROM pg_class r WHERE r.oid = c.confrelid),
                    ARRAY(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY k(n, i)
                            JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.i),
                    c.confmatchtype::text, c.convalidated,
                    coalesce((SELECT (to_jsonb(i) ->> 'indnullsnotdistinct')::boolean FROM pg_index i WHERE i.indexrelid = c.conindid), false)
               FROM pg_constraint c
              WHERE c.conrelid = $1 AND c.contype IN ('c', 'f', 'p', 'u', 'x') AND NOT (c.oid = ANY($2))
              ORDER BY c.oid",
            &[&after.ghost_oid, &before.constraints],
        )
        .await
        .context("reading the constraints the ALTER adds")?;
    for r in rows {
        let name: String = r.try_get(0)?;
        let contype: String = r.try_get(1)?;
        let def: String = r.try_get(2)?;
        let name_on_ghost = name.clone();
        let display = after.original_names.get(&name).cloned().unwrap_or(name);
        let conkey: Vec<i16> = r.try_get(4)?;
        let label = format!("{def} (constraint {})", ident(&display));
        let columns = match needed(after, &shapes, &conkey) {
            Ok(columns) => columns,
            Err(column) => {
                out.unchecked.push(format!("{label}: it reads column {}, which the copy does not fill", ident(&column)));
                continue;
            }
        };
        if before.names.contains(&name_on_ghost) && unchanged(after, &conkey) {
            continue;
        }
        let names: Vec<String> = columns.iter().map(|c| c.name.clone()).collect();
        let kind = match contype.as_str() {
            "c" => {
                // NOT VALID: existing rows are not checked (the ghost adds it after the copy).
                if !r.try_get::<_, bool>(10)? {
                    continue;
                }
                let Some(expr) = r.try_get::<_, Option<String>>(3)? else { continue };
                Kind::Check { expr }
            }
            "u" | "p" => Kind::Unique {
                exprs: conkey_names(after, &conkey).iter().map(|n| ident(n)).collect(),
                predicate: None,
                nulls_distinct: !r.try_get::<_, bool>(11)?,
            },
            "f" => {
                // NOT VALID: existing rows are not checked, on the ghost either.
                if !r.try_get::<_, bool>(10)? {
                    continue;
                }
                if r.try_get::<_, Option<bool>>(5)?.unwrap_or(false) {
                    out.unchecked.push(format!("{label}: it references the table itself"));
                    continue;
                }
                let (Some(schema), Some(table)) = (r.try_get::<_, Option<String>>(6)?, r.try_get::<_, Option<String>>(7)?) else { continue };
                Kind::ForeignKey {
                    columns: names,
                    referenced: QualifiedName::new(schema, table),
                    referenced_columns: r.try_get(8)?,
                    match_full: r.try_get::<_, String>(9)? == "f",
                }
            }
            _ => {
                out.unchecked.push(format!("{label}: exclusion constraints are checked when they are built after the copy"));
                continue;
            }
        };
        out.checks.push(Check { clause: def, constraint: Some(display), kind, columns });
    }

    // Unique indexes that are no constraint: new ones only come from a type change.
    let rows = tx
        .query(
            "SELECT ci.relname::text,
                    ARRAY(SELECT pg_get_indexdef(i.indexrelid, k, true) FROM generate_series(1, i.indnkeyatts::int) k ORDER BY k),
                    pg_get_expr(i.indpred, i.indrelid, true),
                    coalesce((to_jsonb(i) ->> 'indnullsnotdistinct')::boolean, false),
                    ARRAY(SELECT DISTINCT d.refobjsubid::int2 FROM pg_depend d
                           WHERE d.classid = 'pg_class'::regclass AND d.objid = i.indexrelid
                             AND d.refclassid = 'pg_class'::regclass AND d.refobjid = i.indrelid AND d.refobjsubid > 0)
               FROM pg_index i JOIN pg_class ci ON ci.oid = i.indexrelid
              WHERE i.indrelid = $1 AND i.indisunique AND NOT (i.indexrelid = ANY($2))
                AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid AND c.conrelid = i.indrelid)
              ORDER BY i.indexrelid",
            &[&after.ghost_oid, &before.indexes],
        )
        .await
        .context("reading the unique indexes the ALTER rebuilds")?;
    for r in rows {
        let name: String = r.try_get(0)?;
        let attnums: Vec<i16> = r.try_get(4)?;
        if before.names.contains(&name) && unchanged(after, &attnums) {
            continue;
        }
        let display = after.original_names.get(&name).cloned().unwrap_or(name);
        let exprs: Vec<String> = r.try_get(1)?;
        let predicate: Option<String> = r.try_get(2)?;
        let clause = format!(
            "UNIQUE ({}){}",
            exprs.join(", "),
            predicate.as_ref().map(|p| format!(" WHERE {p}")).unwrap_or_default()
        );
        match needed(after, &shapes, &attnums) {
            Ok(columns) => out.checks.push(Check {
                clause,
                constraint: Some(display),
                kind: Kind::Unique { exprs, predicate, nulls_distinct: !r.try_get::<_, bool>(3)? },
                columns,
            }),
            Err(column) => out.unchecked.push(format!(
                "{clause} (index {}): it reads column {}, which the copy does not fill",
                ident(&display),
                ident(&column)
            )),
        }
    }
    out.checks.sort_by_key(|c| c.kind.rank());
    Ok(out)
}

async fn attributes(tx: &impl GenericClient, oid: u32) -> Result<HashMap<i16, Attr>> {
    let rows = tx
        .query(
            "SELECT a.attnum, a.atthasdef, t.typname::text, a.atttypmod
               FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
              WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped",
            &[&oid],
        )
        .await
        .context("reading the ghost's columns after the ALTER")?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, Attr { has_default: r.try_get(1)?, type_name: r.try_get(2)?, typmod: r.try_get(3)? })))
        .collect()
}

/// The original column a ghost column comes from; None for a column the ALTER adds.
fn source_of<'a>(after: &'a After<'_>, col: &Column) -> Option<&'a str> {
    after.mapping.carried.iter().find(|(_, g)| *g == col.name).map(|(s, _)| s.as_str())
}

fn retyped(after: &After<'_>, source: &str, col: &Column) -> bool {
    after.using.contains_key(source) || after.orig.column(source).is_some_and(|c| c.type_sql != col.type_sql)
}

/// A type change without `USING` that maps distinct values to distinct values and cannot
/// fail (`integer` to `bigint`, `varchar(20)` to `text`): it needs no cast check, and a
/// constraint it made PostgreSQL rebuild holds as it held on the original.
fn lossless(after: &After<'_>, source: &str, col: &Column) -> bool {
    let Some(from) = after.orig.column(source) else { return false };
    !after.using.contains_key(source) && widening(&from.type_sql, &col.type_sql)
}

/// Whether every column of a rebuilt constraint kept its values as they were.
fn unchanged(after: &After<'_>, attnums: &[i16]) -> bool {
    attnums.iter().all(|n| {
        let Some(col) = after.columns.iter().find(|c| c.attnum == *n) else { return false };
        source_of(after, col).is_some_and(|s| !retyped(after, s, col) || lossless(after, s, col))
    })
}

/// `format_type` names of a source and a target type where every value of the source
/// casts to a distinct value of the target without error.
fn widening(from: &str, to: &str) -> bool {
    let bounded = |t: &str, base: &str| -> Option<(u32, Option<u32>)> {
        let args = t.strip_prefix(base)?.strip_prefix('(')?.strip_suffix(')')?;
        let mut parts = args.split(',').map(|p| p.trim().parse::<u32>().ok());
        Some((parts.next()??, parts.next().flatten()))
    };
    match (from, to) {
        ("smallint", "integer" | "bigint" | "numeric") | ("integer", "bigint" | "numeric") | ("bigint", "numeric") => true,
        ("real", "double precision") => true,
        ("text" | "character varying", "text" | "character varying") => true,
        (f, "text" | "character varying") if bounded(f, "character varying").is_some() => true,
        (f, t) if f.starts_with("character varying(") => {
            matches!((bounded(f, "character varying"), bounded(t, "character varying")), (Some((a, None)), Some((b, None))) if b >= a)
        }
        (f, "numeric") if bounded(f, "numeric").is_some() => true,
        (f, t) if f.starts_with("numeric(") => {
            // The same scale and as many digits or more.
            matches!((bounded(f, "numeric"), bounded(t, "numeric")), (Some((p, s)), Some((q, r))) if q >= p && s.unwrap_or(0) == r.unwrap_or(0))
        }
        _ => false,
    }
}

/// A ghost column computed from the original's row as the copy computes it; None for a
/// column the copy leaves to the ghost (generated, or added with a default or identity).
fn shape(after: &After<'_>, attrs: &HashMap<i16, Attr>, col: &Column) -> Option<Shaped> {
    if col.generated {
        return None;
    }
    let expr = match source_of(after, col) {
        Some(source) if retyped(after, source, col) => {
            let from = after.using.get(source).cloned().unwrap_or_else(|| ident(source));
            format!("CAST(({from}) AS {})", col.type_sql)
        }
        Some(source) => ident(source),
        None if col.identity == Identity::None && !attrs.get(&col.attnum).is_some_and(|a| a.has_default) => {
            format!("CAST(NULL AS {})", col.type_sql)
        }
        None => return None,
    };
    Some(Shaped { name: col.name.clone(), expr })
}

/// The shaped columns for these attnums, or the name of one the copy does not fill.
fn needed(after: &After<'_>, shapes: &HashMap<i16, Option<Shaped>>, attnums: &[i16]) -> Result<Vec<Shaped>, String> {
    let mut out: Vec<Shaped> = Vec::new();
    for n in attnums {
        match shapes.get(n) {
            Some(Some(s)) => {
                if !out.iter().any(|o| o.name == s.name) {
                    out.push(s.clone());
                }
            }
            _ => return Err(after.columns.iter().find(|c| c.attnum == *n).map(|c| c.name.clone()).unwrap_or_else(|| format!("#{n}"))),
        }
    }
    Ok(out)
}

fn conkey_names(after: &After<'_>, attnums: &[i16]) -> Vec<String> {
    attnums.iter().filter_map(|n| after.columns.iter().find(|c| c.attnum == *n).map(|c| c.name.clone())).collect()
}

/// Where `INSERT`'s assignment cast to the type is stricter than `CAST`.
fn length(type_name: &str, typmod: i32) -> Option<Length> {
    if typmod < 0 {
        return None;
    }
    match type_name {
        "varchar" => Some(Length::Chars { unbounded: "pg_catalog.varchar", max: typmod - 4 }),
        "bpchar" => Some(Length::Chars { unbounded: "pg_catalog.bpchar", max: typmod - 4 }),
        "bit" => Some(Length::BitsExactly(typmod)),
        "varbit" => Some(Length::BitsAtMost(typmod)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widening_type_changes() {
        for (from, to) in [
            ("integer", "bigint"),
            ("smallint", "numeric"),
            ("character varying(20)", "text"),
            ("character varying(20)", "character varying(30)"),
            ("character varying(20)", "character varying"),
            ("numeric(10,2)", "numeric(12,2)"),
            ("numeric(10,2)", "numeric"),
            ("real", "double precision"),
        ] {
            assert!(widening(from, to), "{from} -> {to}");
        }
        for (from, to) in [
            ("bigint", "integer"),
            ("character varying(20)", "character varying(10)"),
            ("text", "character varying(10)"),
            ("numeric(10,2)", "numeric(12,1)"),
            ("numeric", "numeric(12,2)"),
            ("text", "integer"),
            ("double precision", "real"),
            ("integer", "real"),
        ] {
            assert!(!widening(from, to), "{from} -> {to}");
        }
    }

    #[test]
    fn lengths_that_assignment_enforces() {
        assert_eq!(length("varchar", 14), Some(Length::Chars { unbounded: "pg_catalog.varchar", max: 10 }));
        assert_eq!(length("bpchar", 5), Some(Length::Chars { unbounded: "pg_catalog.bpchar", max: 1 }));
        assert_eq!(length("bit", 8), Some(Length::BitsExactly(8)));
        assert_eq!(length("varbit", 3), Some(Length::BitsAtMost(3)));
        assert_eq!(length("varchar", -1), None);
        assert_eq!(length("numeric", 655366), None);
    }
}
