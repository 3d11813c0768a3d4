//! Where the fleet's targets come from: a query the DBA writes against a registry database
//! (`SELECT name, conninfo [, size_bytes, server] FROM ...`), or a file with one
//! `name conninfo` per line.
//!
//! Invariants: the query's columns are checked before it runs (from its prepared
//! statement's description), and every column missing or of the wrong type is named in one
//! message; a malformed file is refused with the line number; names are unique. Nothing
//! here connects to a target.

use crate::error::{Context, Error, Result};
use std::collections::HashSet;
use std::path::Path;
use tokio_postgres::types::Type;
use tokio_postgres::Client;

/// One database to change.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    /// The DBA's name for it (a tenant), unique in the fleet.
    pub name: String,
    /// A libpq connection string or URI; may hold a password, so never logged.
    pub conninfo: String,
    /// From the registry; `None`: measured when the fleet starts.
    pub size_bytes: Option<i64>,
    /// The server it lives on, for `--per-server`; `None`: its host and port.
    pub server: Option<String>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("name", &self.name).field("size_bytes", &self.size_bytes).field("server", &self.server).finish()
    }
}

/// The columns a targets query must (and may) return.
const REQUIRED: [&str; 2] = ["name", "conninfo"];
const OPTIONAL: [&str; 2] = ["size_bytes", "server"];

/// Checks the names and types of the query's columns; the error names every problem.
pub fn check_columns(columns: &[(String, Type)]) -> Result<()> {
    let mut problems = Vec::new();
    let missing: Vec<&str> = REQUIRED.iter().copied().filter(|r| !columns.iter().any(|(n, _)| n == r)).collect();
    if !missing.is_empty() {
        problems.push(format!("it returns no column {} (name the columns with AS)", missing.iter().map(|m| format!("{m:?}")).collect::<Vec<_>>().join(" and no column ")));
    }
    for (name, ty) in columns {
        let ok = match name.as_str() {
            "name" | "conninfo" | "server" => [Type::TEXT, Type::VARCHAR, Type::NAME, Type::BPCHAR].contains(ty),
            "size_bytes" => [Type::INT8, Type::INT4, Type::INT2].contains(ty),
            _ => true,
        };
        if !ok {
            let want = if name == "size_bytes" { "an integer (bigint)" } else { "text" };
            problems.push(format!("column {name:?} is {} but must be {want}", ty.name()));
        }
    }
    let mut seen = HashSet::new();
    for (name, _) in columns {
        if !seen.insert(name) {
            problems.push(format!("column {name:?} appears twice"));
        }
    }
    let unknown: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).filter(|n| !REQUIRED.contains(n) && !OPTIONAL.contains(n)).collect();
    if !unknown.is_empty() {
        tracing::warn!(columns = %unknown.join(", "), "the targets query returns columns pg-ghost does not use (it reads name, conninfo, size_bytes, server)");
    }
    match problems.is_empty() {
        true => Ok(()),
        false => Err(Error::config(format!("--targets-query: {}", problems.join("; ")))),
    }
}

/// Runs the DBA's query on the registry and reads the targets it returns.
pub async fn from_registry(client: &Client, query: &str) -> Result<Vec<Target>> {
    let statement = client.prepare(query).await.context("--targets-query")?;
    let columns: Vec<(String, Type)> = statement.columns().iter().map(|c| (c.name().to_string(), c.type_().clone())).collect();
    check_columns(&columns)?;
    let index = |name: &str| columns.iter().position(|(n, _)| n == name);
    let rows = client.query(&statement, &[]).await.context("running --targets-query")?;
    let mut targets = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let text = |name: &str| -> Result<Option<String>> {
            match index(name) {
                None => Ok(None),
                Some(c) => row.try_get::<_, Option<String>>(c).with_context(|| format!("--targets-query, row {}: column {name}", i + 1)),
            }
        };
        let size_bytes = match index("size_bytes") {
            None => None,
            Some(c) => size_value(row, c).with_context(|| format!("--targets-query, row {}: column size_bytes", i + 1))?,
        };
        let name = text("name")?.ok_or_else(|| Error::config(format!("--targets-query, row {}: name is NULL", i + 1)))?;
        let conninfo = text("conninfo")?.ok_or_else(|| Error::config(format!("--targets-query, row {} ({name}): conninfo is NULL", i + 1)))?;
        targets.push(Target { name, conninfo, size_bytes, server: text("server")? });
    }
    check_names(&targets, "--targets-query")?;
    Ok(targets)
}

fn size_value(row: &tokio_postgres::Row, c: usize) -> std::result::Result<Option<i64>, tokio_postgres::Error> {
    match *row.columns()[c].type_() {
        Type::INT4 => row.try_get::<_, Option<i32>>(c).map(|v| v.map(i64::from)),
        Type::INT2 => row.try_get::<_, Option<i16>>(c).map(|v| v.map(i64::from)),
        _ => row.try_get::<_, Option<i64>>(c),
    }
}

/// `name conninfo` per line; blank lines and `#` comments are skipped. The conninfo is the
/// rest of the line (a `key=value` string has spaces).
pub fn parse_file(text: &str, file: &str) -> Result<Vec<Target>> {
    let mut targets = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, conninfo)) = line.split_once(char::is_whitespace).map(|(n, c)| (n, c.trim())).filter(|(_, c)| !c.is_empty()) else {
            return Err(Error::config(format!(
                "--targets-file {file}, line {}: expected `name conninfo` (e.g. `tenant_1 host=db1 dbname=tenant_1`), got {:?}",
                i + 1,
                crate::migrate::statements::one_line(line)
            )));
        };
        targets.push(Target { name: name.to_string(), conninfo: conninfo.to_string(), size_bytes: None, server: None });
    }
    check_names(&targets, &format!("--targets-file {file}"))?;
    Ok(targets)
}

pub fn read_file(path: &Path) -> Result<Vec<Target>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::config(format!("--targets-file {}: {e}", path.display())))?;
    parse_file(&text, &path.display().to_string())
}

fn check_names(targets: &[Target], from: &str) -> Result<()> {
    if targets.is_empty() {
        return Err(Error::config(format!("{from}: no targets")));
    }
    let mut seen = HashSet::new();
    for t in targets {
        if t.name.trim().is_empty() {
            return Err(Error::config(format!("{from}: a target has an empty name")));
        }
        if !seen.insert(t.name.as_str()) {
            return Err(Error::config(format!("{from}: target {:?} appears twice", t.name)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(c: &[(&str, Type)]) -> Vec<(String, Type)> {
        c.iter().map(|(n, t)| (n.to_string(), t.clone())).collect()
    }

    #[test]
    fn the_query_needs_name_and_conninfo_and_says_which_are_missing() {
        assert!(check_columns(&cols(&[("name", Type::TEXT), ("conninfo", Type::TEXT)])).is_ok());
        assert!(check_columns(&cols(&[("name", Type::VARCHAR), ("conninfo", Type::TEXT), ("size_bytes", Type::INT8), ("server", Type::TEXT)])).is_ok());
        let e = check_columns(&cols(&[("tenant", Type::TEXT), ("dsn", Type::TEXT)])).unwrap_err();
        assert!(e.to_string().contains("no column \"name\" and no column \"conninfo\""), "{e}");
        let e = check_columns(&cols(&[("name", Type::TEXT), ("dsn", Type::TEXT)])).unwrap_err();
        assert!(e.to_string().contains("no column \"conninfo\"") && !e.to_string().contains("\"name\""), "{e}");
        let e = check_columns(&cols(&[("name", Type::TEXT), ("conninfo", Type::TEXT), ("size_bytes", Type::TEXT)])).unwrap_err();
        assert!(e.to_string().contains("column \"size_bytes\" is text but must be an integer"), "{e}");
    }

    #[test]
    fn a_targets_file_is_name_then_conninfo() {
        let t = parse_file("# tenants\n\ntenant_1 host=db1 dbname=t1\n  tenant_2   postgresql://db2/t2  \n", "f").unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].name.as_str(), t[0].conninfo.as_str()), ("tenant_1", "host=db1 dbname=t1"));
        assert_eq!((t[1].name.as_str(), t[1].conninfo.as_str()), ("tenant_2", "postgresql://db2/t2"));
    }

    #[test]
    fn a_malformed_targets_file_names_the_line() {
        let e = parse_file("tenant_1 host=db1\ntenant_2\n", "f").unwrap_err();
        assert!(e.to_string().contains("line 2: expected `name conninfo`"), "{e}");
        let e = parse_file("a host=x\na host=y\n", "f").unwrap_err();
        assert!(e.to_string().contains("target \"a\" appears twice"), "{e}");
        assert!(parse_file("# nothing\n", "f").unwrap_err().to_string().contains("no targets"));
    }
}
