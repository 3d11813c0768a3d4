//! An index built `CONCURRENTLY` on a table (a direct way's step, a migration's statement):
//! what a failed or lost build left under its name.
//!
//! A failed `CREATE INDEX CONCURRENTLY` leaves its index invalid; one whose session was lost
//! may have gone on to the end. Only an index of that name on that table is looked at or
//! dropped: a name alone, read through `search_path`, could be another table's index.

use crate::error::{Context, Result};
use tokio_postgres::Client;

/// Whether the index `name` of `table` (as SQL text, resolved as the build's statement
/// resolves it) is valid, with its qualified name; None when the table has none of that name.
async fn find(client: &Client, table: &str, name: &str) -> Result<Option<(bool, String)>> {
    let row = client
        .query_opt(
            "SELECT i.indisvalid, i.indexrelid::regclass::text FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
              WHERE i.indrelid = to_regclass($1) AND c.relname = $2",
            &[&table, &name],
        )
        .await
        .context("looking at the index the build makes")?;
    Ok(row.map(|r| Ok::<_, tokio_postgres::Error>((r.try_get(0)?, r.try_get(1)?))).transpose()?)
}

/// Whether `table` has a valid index `name`; None when it has none of that name.
pub async fn valid(client: &Client, table: &str, name: &str) -> Result<Option<bool>> {
    Ok(find(client, table, name).await?.map(|(valid, _)| valid))
}

/// Drops the index `name` of `table` if it is invalid (what a failed build leaves); anything
/// else of that name is left alone.
pub async fn drop_if_invalid(client: &Client, table: &str, name: &str) -> Result<()> {
    if let Some((false, index)) = find(client, table, name).await? {
        tracing::warn!(index = %index, "dropping the invalid index a failed CONCURRENTLY build left");
        client.batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {index}")).await.context("dropping the invalid index a failed build left")?;
    }
    Ok(())
}
