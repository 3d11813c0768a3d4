//! What a revert window cannot serve, refused before anything is created for it, each
//! refusal naming its object.

use crate::error::{Context, Error, Result};
use crate::ghost::Ghost;
use crate::schema::TableInfo;
use tokio_postgres::Client;

/// What the window cannot serve, refused before anything is created for it: a ghost whose
/// UPDATEs and DELETEs a publication would make fail (no primary key and no replica identity
/// index).
pub(super) async fn refuse_unserved(client: &Client, info: &TableInfo, ghost: &Ghost) -> Result<()> {
    let row = client
        .query_one(
            "SELECT c.relreplident::text, EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND (i.indisprimary OR i.indisreplident))
               FROM pg_class c WHERE c.oid = $1",
            &[&ghost.oid],
        )
        .await
        .context("reading the ghost's replica identity")?;
    let (identity, has_index): (String, bool) = (row.try_get(0)?, row.try_get(1)?);
    if identity == "n" || (identity != "f" && !has_index) {
        return Err(Error::refused(format!(
            "--revertible-for: the new table would have no primary key or replica identity, and the reverse stream's publication would make the application's UPDATEs and DELETEs on {} fail",
            info.name
        )));
    }
    Ok(())
}

/// A column the ALTER drops keeps its values on the old table only while rows are written back
/// in place (an upsert that leaves it alone). With a unique index besides the key, rows are
/// deleted and written again instead (two rows may swap values), which would lose them: that
/// combination is refused before anything is created. A partitioned table's partitions count,
/// with the unique indexes of their own (the write-back chooses its way by them too), but not
/// their copies of the key's index.
pub(in crate::runner) async fn refuse_lossy_write_back(client: &Client, info: &TableInfo, dropped: &[String]) -> Result<()> {
    let Some(first) = dropped.first() else { return Ok(()) };
    let others: Vec<String> = client
        .query(
            "WITH key AS (SELECT i.indexrelid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = $1 AND c.relname = $2)
             SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
              WHERE (i.indrelid = $1 OR i.indrelid IN (SELECT relid FROM pg_partition_tree($1::oid::regclass)))
                AND (i.indisunique OR i.indisexclusion)
                AND i.indexrelid NOT IN (SELECT indexrelid FROM key)
                AND NOT EXISTS (SELECT 1 FROM pg_partition_ancestors(i.indexrelid) a WHERE a.relid IN (SELECT indexrelid FROM key))
              ORDER BY 1",
            &[&info.oid, &info.key.index_name],
        )
        .await
        .context("reading the table's unique indexes")?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<std::result::Result<_, _>>()?;
    if let Some(index) = others.first() {
        return Err(Error::refused(format!(
            "--revertible-for: the ALTER drops column {} and {} has unique index {} besides its key; the old table could not keep the dropped column's values \
             while rows are written back (they would be deleted and written again), so the revert window is refused",
            crate::sql::ident(first),
            info.name,
            crate::sql::ident(index)
        )));
    }
    Ok(())
}

/// Rows are written back by upsert, which cannot set a `GENERATED ALWAYS` identity column
/// outside the key (the forward apply makes the ghost's `BY DEFAULT` for the copy; the old
/// table is the original and stays as it is): refused before anything is created.
pub(in crate::runner) fn refuse_identity_always(info: &TableInfo) -> Result<()> {
    let always = info.columns.iter().find(|c| c.identity == crate::schema::Identity::Always && !info.key.columns.contains(&c.name));
    match always {
        Some(c) => Err(Error::refused(format!(
            "--revertible-for: column {} of {} is GENERATED ALWAYS AS IDENTITY outside the key; rows could not be written back to the old table with its values, so the revert window is refused",
            crate::sql::ident(&c.name),
            info.name
        ))),
        None => Ok(()),
    }
}
