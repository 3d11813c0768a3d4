//! Dropping a table pg-ghost made or set aside (the old table after the swap, a ghost left by
//! a failed run) without making the application queue behind it.
//!
//! `DROP TABLE` of a table with foreign keys takes ACCESS EXCLUSIVE on every table they
//! reference (their triggers live there), one after the other, each wait unbounded. While it
//! waits for a long transaction on a referenced table, every later read or write of that table
//! queues behind it, and holding one referenced table while waiting for the next could close a
//! deadlock with an application transaction. So the foreign keys are dropped first, one per
//! transaction, each waiting at most the cut-over's lock timeout (then tried again after a
//! back-off): each such transaction waits for one lock on an application table only. The table
//! itself is dropped last, when nothing it holds references another table.

use crate::error::{Context, Error, Result};
use crate::ghost::LockWait;
use crate::sql::{ident, QualifiedName};
use tokio_postgres::Client;

/// Drops `table` (if it exists) as the module says.
pub(crate) async fn drop_table(client: &Client, table: &QualifiedName, wait: &LockWait) -> Result<()> {
    for (on, name) in outgoing_foreign_keys(client, table).await? {
        let bounded = format!(
            "BEGIN; SET LOCAL lock_timeout = '{}ms'; ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}; COMMIT",
            wait.lock_timeout.as_millis().max(1),
            on.sql(),
            ident(&name)
        );
        let mut attempt = 0;
        loop {
            attempt += 1;
            match client.batch_execute(&bounded).await {
                Ok(()) => break,
                Err(e) => {
                    // The failed statement leaves its transaction block open.
                    let _ = client.batch_execute("ROLLBACK").await;
                    let e = Error::from(e).context(format!("dropping foreign key {} of {on} before dropping {table}", ident(&name)));
                    crate::ghost::retry_after_lock_timeout(e, attempt, wait, "dropping a foreign key").await?;
                }
            }
        }
    }
    client.batch_execute(&format!("DROP TABLE IF EXISTS {}", table.sql())).await.map_err(Error::from)
}

/// The foreign keys of `table` (or of one of its partitions) that reference another table.
async fn outgoing_foreign_keys(client: &Client, table: &QualifiedName) -> Result<Vec<(QualifiedName, String)>> {
    let rows = client
        .query(
            "WITH t AS (SELECT to_regclass($1) AS oid),
                  tree AS (SELECT t.oid AS relid FROM t WHERE t.oid IS NOT NULL
                           UNION SELECT p.relid FROM t, pg_partition_tree(t.oid) p WHERE t.oid IS NOT NULL)
             SELECT n.nspname::text, c.relname::text, con.conname::text
               FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE con.contype = 'f' AND con.conparentid = 0
                AND con.conrelid IN (SELECT relid FROM tree) AND con.confrelid NOT IN (SELECT relid FROM tree)
              ORDER BY 1, 2, 3",
            &[&table.sql()],
        )
        .await
        .with_context(|| format!("reading the foreign keys of {table}"))?;
    rows.iter()
        .map(|r| Ok((QualifiedName::new(r.try_get::<_, String>(0)?, r.try_get::<_, String>(1)?), r.try_get(2)?)))
        .collect()
}
