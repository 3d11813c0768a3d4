//! The `--table [schema.]name` argument, read by the server's own identifier parser.
//!
//! `parse_ident` applies SQL's rules (unquoted parts fold to lower case, `""` inside quotes
//! is a quote, unicode is kept), and `to_regclass` resolves the result exactly as a query
//! would: an unqualified name through `search_path` (temporary schema first), a qualified
//! one in its schema. The parts travel as bind parameters and are re-quoted server-side by
//! `quote_ident`, so no argument can change the SQL that runs.

use crate::error::{Error, Result};
use crate::sql::{ident, QualifiedName};
use tokio_postgres::Client;
use tracing::debug;

/// SQLSTATE of `parse_ident` on a malformed name (invalid_parameter_value).
const INVALID_PARAMETER_VALUE: &str = "22023";

/// Resolves the CLI's table argument to the schema and name of an existing relation.
///
/// The relation may be of any kind; `table_info` decides whether pg-ghost can change it.
pub async fn resolve_table(client: &Client, arg: &str) -> Result<QualifiedName> {
    let parts = parse_name(client, arg, "--table").await?;
    let row = match parts.as_slice() {
        [name] => {
            client
                .query_opt(
                    "SELECT n.nspname::text AS schema, c.relname::text AS name
                       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                      WHERE c.oid = to_regclass(quote_ident($1))",
                    &[name],
                )
                .await?
        }
        [schema, name] => {
            client
                .query_opt(
                    "SELECT n.nspname::text AS schema, c.relname::text AS name
                       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                      WHERE c.oid = to_regclass(quote_ident($1) || '.' || quote_ident($2))",
                    &[schema, name],
                )
                .await?
        }
        _ => return Err(Error::config(format!("--table {arg:?} has {} parts: give it as [schema.]name", parts.len()))),
    };
    match row {
        Some(row) => {
            let table = QualifiedName::new(super::get::<String>(&row, "schema")?, super::get::<String>(&row, "name")?);
            debug!(arg, table = %table, "resolved table");
            Ok(table)
        }
        None => Err(missing(client, &parts).await),
    }
}

/// Splits a possibly qualified, possibly quoted name into its parts, server-side.
pub(super) async fn parse_name(client: &Client, arg: &str, flag: &str) -> Result<Vec<String>> {
    match client.query_one("SELECT parse_ident($1) AS parts", &[&arg]).await {
        Ok(row) => super::get(&row, "parts"),
        Err(e) => {
            let e = Error::from(e);
            if e.sqlstate() == Some(INVALID_PARAMETER_VALUE) {
                Err(Error::config(format!(
                    "{flag} {arg:?} is not a valid name ({}); quote parts with special characters as in SQL: '\"My Schema\".\"My Table\"'",
                    e.message()
                )))
            } else {
                Err(e.context(format!("reading {flag} {arg:?}")))
            }
        }
    }
}

/// The refusal for a name that resolves to nothing, saying where we looked.
async fn missing(client: &Client, parts: &[String]) -> Error {
    match parts {
        [name] => {
            // Only decorates the refusal: an error reading the setting must not replace it.
            let path = client
                .query_one("SELECT current_setting('search_path') AS path", &[])
                .await
                .ok()
                .and_then(|r| r.try_get::<_, String>("path").ok())
                .unwrap_or_default();
            Error::refused(format!(
                "table {} does not exist in any schema of the search_path ({path}); qualify it as schema.name",
                ident(name)
            ))
        }
        [schema, name] => Error::refused(format!("table {} does not exist", QualifiedName::new(schema, name))),
        _ => Error::refused(format!("table {} does not exist", parts.join("."))),
    }
}
