//! Publications and replication slots over ordinary SQL (a tokio-postgres `Client`).
//!
//! Slots are created on the walsender connection (`transport::ReplicationConnection::create_slot`),
//! which can export a snapshot; everything else about them is here: existence, progress,
//! retained WAL, and dropping one even while a walsender still streams from it.
//!
//! Invariants: every name reaching SQL is quoted (`crate::sql`) or bound as a parameter;
//! dropping is idempotent (a missing slot or publication is not an error), because
//! cleanup runs again after crashes.

use crate::error::{Backoff, Context, Error, Result};
use crate::lsn::Lsn;
use crate::sql::{ident, QualifiedName};
use tokio_postgres::Client;

/// SQLSTATE undefined_object: the slot vanished between our look-up and the drop.
const UNDEFINED_OBJECT: &str = "42704";

pub fn create_publication_sql(name: &str, tables: &[QualifiedName]) -> Result<String> {
    if tables.is_empty() {
        return Err(Error::internal(format!("publication {name:?} needs at least one table")));
    }
    let list = tables.iter().map(QualifiedName::sql).collect::<Vec<_>>().join(", ");
    Ok(format!("CREATE PUBLICATION {} FOR TABLE {list}", ident(name)))
}

/// `CREATE PUBLICATION name FOR TABLE table [(columns)] [WITH (publish_via_partition_root = true)]`.
/// `columns`: a column list (PostgreSQL 15+), in any order; pgoutput then sends only those
/// columns, in the table's column order.
pub fn table_publication_sql(name: &str, table: &QualifiedName, columns: Option<&[String]>, via_root: bool) -> Result<String> {
    let mut sql = create_publication_sql(name, std::slice::from_ref(table))?;
    if let Some(columns) = columns {
        if columns.is_empty() {
            return Err(Error::internal(format!("publication {name:?}: an empty column list")));
        }
        sql.push_str(&format!(" ({})", crate::sql::ident_list(columns.iter().map(String::as_str))));
    }
    if via_root {
        sql.push_str(" WITH (publish_via_partition_root = true)");
    }
    Ok(sql)
}

/// The columns a publication of `table` (by OID) must carry for pg-ghost: the key columns
/// and, on the table and on each of its partitions, the replica identity's (PostgreSQL
/// refuses an UPDATE or DELETE on a published table whose identity the column list does not
/// cover). Nothing else is read from the stream: a flush re-reads the rows by key.
///
/// `None` when a column list cannot be used, so the whole row is published: before
/// PostgreSQL 15 (no column lists), with `REPLICA IDENTITY FULL` on the table or a partition
/// (its identity is every column), or with a generated column among them (not allowed in a
/// column list).
pub async fn key_publication_columns(client: &Client, table: u32, key: &[String]) -> Result<Option<Vec<String>>> {
    let row = client
        .query_one(
            // pg_partition_tree() lists nothing for a table outside any partition tree.
            "WITH tree AS (SELECT $1::oid AS relid UNION SELECT relid FROM pg_catalog.pg_partition_tree($1::oid::regclass))
             SELECT current_setting('server_version_num')::int >= 150000
                AND NOT EXISTS (SELECT 1 FROM tree t JOIN pg_catalog.pg_class c ON c.oid = t.relid
                                 WHERE c.relreplident = 'f'),
                    ARRAY(SELECT DISTINCT a.attname::text
                            FROM tree t
                            JOIN pg_catalog.pg_class c ON c.oid = t.relid
                            JOIN pg_catalog.pg_index i ON i.indrelid = c.oid
                                 AND ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident))
                            JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey::int2[]))",
            &[&table],
        )
        .await
        .context("reading the key and replica identity columns to publish")?;
    let usable: bool = row.try_get(0)?;
    let identity: Vec<String> = row.try_get(1)?;
    if !usable {
        return Ok(None);
    }
    let mut columns: Vec<String> = key.to_vec();
    for c in identity {
        if !columns.contains(&c) {
            columns.push(c);
        }
    }
    // PostgreSQL refuses a generated column in a column list.
    let any_generated: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
                               AND a.attgenerated <> '' AND a.attname::text = ANY($2))",
            &[&table, &columns],
        )
        .await
        .context("reading the columns to publish")?
        .try_get(0)?;
    Ok((!any_generated).then_some(columns))
}

/// The columns `publication` sends for the table with OID `table` when it has a column list
/// (PostgreSQL 15+); `None` when it sends whole rows (no list, or an older server).
pub async fn published_columns(client: &Client, publication: &str, table: u32) -> Result<Option<Vec<String>>> {
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .context("reading the server version")?
        .try_get(0)?;
    if version < 150000 {
        return Ok(None);
    }
    let row = client
        .query_opt(
            "SELECT ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a
                           WHERE a.attrelid = pr.prrelid AND a.attnum = ANY(pr.prattrs::int2[]) ORDER BY a.attnum)
               FROM pg_catalog.pg_publication_rel pr JOIN pg_catalog.pg_publication p ON p.oid = pr.prpubid
              WHERE p.pubname = $1 AND pr.prrelid = $2 AND pr.prattrs IS NOT NULL",
            &[&publication, &table],
        )
        .await
        .with_context(|| format!("reading the column list of publication {publication:?}"))?;
    Ok(row.map(|r| r.try_get(0)).transpose()?)
}

pub fn drop_publication_sql(name: &str) -> String {
    format!("DROP PUBLICATION IF EXISTS {}", ident(name))
}

/// `CREATE PUBLICATION name FOR TABLE ...`.
pub async fn create_publication(client: &Client, name: &str, tables: &[QualifiedName]) -> Result<()> {
    client
        .batch_execute(&create_publication_sql(name, tables)?)
        .await
        .with_context(|| format!("creating publication {name:?}"))?;
    tracing::info!(publication = name, tables = tables.len(), "publication created");
    Ok(())
}

/// Drops the publication if it exists.
pub async fn drop_publication(client: &Client, name: &str) -> Result<()> {
    client
        .batch_execute(&drop_publication_sql(name))
        .await
        .with_context(|| format!("dropping publication {name:?}"))
}

pub async fn publication_exists(client: &Client, name: &str) -> Result<bool> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1)",
            &[&name],
        )
        .await
        .with_context(|| format!("looking up publication {name:?}"))?;
    Ok(row.try_get(0)?)
}

pub async fn slot_exists(client: &Client, name: &str) -> Result<bool> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = $1)",
            &[&name],
        )
        .await
        .with_context(|| format!("looking up slot {name:?}"))?;
    Ok(row.try_get(0)?)
}

/// What `pg_replication_slots` says about one slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotInfo {
    pub name: String,
    pub plugin: Option<String>,
    pub database: Option<String>,
    pub temporary: bool,
    /// The walsender streaming from it, if any.
    pub active_pid: Option<i32>,
    pub restart_lsn: Option<Lsn>,
    pub confirmed_flush_lsn: Option<Lsn>,
    /// WAL kept for this slot: `pg_current_wal_lsn() - restart_lsn`.
    pub retained_wal_bytes: Option<u64>,
}

pub async fn slot_info(client: &Client, name: &str) -> Result<Option<SlotInfo>> {
    let row = client
        .query_opt(
            "SELECT slot_name::text, plugin::text, database::text, temporary, active_pid,
                    restart_lsn::text, confirmed_flush_lsn::text,
                    (pg_current_wal_lsn() - restart_lsn)::int8
               FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[&name],
        )
        .await
        .with_context(|| format!("reading slot {name:?}"))?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(SlotInfo {
        name: row.try_get(0)?,
        plugin: row.try_get(1)?,
        database: row.try_get(2)?,
        temporary: row.try_get(3)?,
        active_pid: row.try_get(4)?,
        restart_lsn: parse_lsn(row.try_get(5)?)?,
        confirmed_flush_lsn: parse_lsn(row.try_get(6)?)?,
        retained_wal_bytes: row.try_get::<_, Option<i64>>(7)?.map(|b| b.max(0) as u64),
    }))
}

/// How much WAL the slot makes the server keep; `None` if the slot does not exist.
/// A slot that reserves nothing (no restart_lsn) retains 0 bytes.
pub async fn retained_wal_bytes(client: &Client, name: &str) -> Result<Option<u64>> {
    let row = client
        .query_opt(
            "SELECT COALESCE((pg_current_wal_lsn() - restart_lsn)::int8, 0)
               FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[&name],
        )
        .await
        .with_context(|| format!("measuring WAL retained by slot {name:?}"))?;
    Ok(row.map(|r| r.try_get::<_, i64>(0)).transpose()?.map(|b| b.max(0) as u64))
}

/// The slot's `confirmed_flush_lsn`; `None` if the slot does not exist or has none yet.
pub async fn confirmed_flush_lsn(client: &Client, name: &str) -> Result<Option<Lsn>> {
    let row = client
        .query_opt(
            "SELECT confirmed_flush_lsn::text FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[&name],
        )
        .await
        .with_context(|| format!("reading confirmed_flush_lsn of slot {name:?}"))?;
    match row {
        Some(r) => parse_lsn(r.try_get(0)?),
        None => Ok(None),
    }
}

/// Drops the slot if it exists, and the copy's replication origins named after it; returns
/// whether the slot existed. A walsender still streaming from
/// it is terminated first, and 55006 (still active: the walsender has not exited yet) is
/// retried with `backoff`.
pub async fn drop_slot(client: &Client, name: &str, backoff: &Backoff) -> Result<bool> {
    let dropped = backoff
        .retry("dropping a replication slot", || async move {
            terminate_walsender(client, name).await?;
            match client
                .execute(
                    "SELECT pg_catalog.pg_drop_replication_slot(slot_name)
                       FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
                    &[&name],
                )
                .await
            {
                Ok(n) => Ok(n > 0),
                Err(e) => {
                    let e = Error::from(e);
                    if e.sqlstate() == Some(UNDEFINED_OBJECT) {
                        Ok(false)
                    } else {
                        Err(e)
                    }
                }
            }
        })
        .await
        .with_context(|| format!("dropping slot {name:?}"))?;
    if dropped {
        tracing::info!(slot = name, "replication slot dropped");
    }
    // The copy's replication origins go with the slot they were made for.
    super::origins::drop_for_slot(client, name).await?;
    Ok(dropped)
}

/// Terminates the walsender using the slot, if any (never our own session).
pub async fn terminate_walsender(client: &Client, name: &str) -> Result<Option<i32>> {
    let row = client
        .query_opt(
            "SELECT active_pid, pg_catalog.pg_terminate_backend(active_pid)
               FROM pg_catalog.pg_replication_slots
              WHERE slot_name = $1 AND active_pid IS NOT NULL AND active_pid <> pg_backend_pid()",
            &[&name],
        )
        .await
        .with_context(|| format!("terminating the walsender of slot {name:?}"))?;
    let pid = row.map(|r| r.try_get::<_, i32>(0)).transpose()?;
    if let Some(pid) = pid {
        tracing::info!(slot = name, pid, "terminated the walsender still using the slot");
    }
    Ok(pid)
}

/// A session holding a transaction id, which `CREATE_REPLICATION_SLOT` waits for.
#[derive(Clone, Debug, PartialEq)]
pub struct Blocker {
    pub pid: i32,
    pub database: Option<String>,
    pub user: Option<String>,
    pub application_name: Option<String>,
    /// Seconds since its transaction started.
    pub xact_age_secs: f64,
    pub state: Option<String>,
}

/// Sessions that would make slot creation wait (in every database), oldest first. Their
/// queries are left out on purpose: they may carry row values.
pub async fn slot_creation_blockers(client: &Client) -> Result<Vec<Blocker>> {
    let rows = client
        .query(
            "SELECT pid, datname::text, usename::text, application_name,
                    COALESCE(EXTRACT(EPOCH FROM now() - xact_start), 0)::float8, state
               FROM pg_catalog.pg_stat_activity
              WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()
              ORDER BY xact_start",
            &[],
        )
        .await
        .context("listing transactions that hold an xid")?;
    rows.iter()
        .map(|r| {
            Ok(Blocker {
                pid: r.try_get(0)?,
                database: r.try_get(1)?,
                user: r.try_get(2)?,
                application_name: r.try_get(3)?,
                xact_age_secs: r.try_get(4)?,
                state: r.try_get(5)?,
            })
        })
        .collect()
}

fn parse_lsn(text: Option<String>) -> Result<Option<Lsn>> {
    text.map(|t| t.parse::<Lsn>().map_err(|e| Error::protocol(e.to_string())))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publication_sql_quotes_everything() {
        let tables = [
            QualifiedName::new("public", "orders"),
            QualifiedName::new("Sales", "Line \"Items\""),
        ];
        assert_eq!(
            create_publication_sql("pg_ghost_1", &tables).unwrap(),
            "CREATE PUBLICATION \"pg_ghost_1\" FOR TABLE \"public\".\"orders\", \"Sales\".\"Line \"\"Items\"\"\""
        );
        assert_eq!(drop_publication_sql("p\"; DROP"), "DROP PUBLICATION IF EXISTS \"p\"\"; DROP\"");
        assert!(create_publication_sql("p", &[]).is_err());
    }

    #[test]
    fn table_publication_sql_lists_columns_and_the_root() {
        let t = QualifiedName::new("public", "orders");
        let cols = vec!["id".to_string(), "Region \"A\"".to_string()];
        assert_eq!(
            table_publication_sql("p", &t, Some(&cols), false).unwrap(),
            "CREATE PUBLICATION \"p\" FOR TABLE \"public\".\"orders\" (\"id\", \"Region \"\"A\"\"\")"
        );
        assert_eq!(
            table_publication_sql("p", &t, Some(&cols[..1]), true).unwrap(),
            "CREATE PUBLICATION \"p\" FOR TABLE \"public\".\"orders\" (\"id\") WITH (publish_via_partition_root = true)"
        );
        assert_eq!(table_publication_sql("p", &t, None, false).unwrap(), create_publication_sql("p", &[t.clone()]).unwrap());
        assert!(table_publication_sql("p", &t, Some(&[]), false).is_err());
    }
}
