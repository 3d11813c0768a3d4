//! `table_info` and `columns`: what later phases need to know about the table.

use super::key::{self, Index};
use super::relation::{self, Relation};
use super::{get, resolve, server};
use crate::error::{Context, Error, Result};
use crate::schema::{Column, Identity, ReplicaIdentity, TableInfo};
use crate::sql::{ident, QualifiedName};
use tokio_postgres::Client;
use tracing::debug;

/// Describes the table `table` (as returned by [`resolve_table`](super::resolve_table)).
///
/// Refuses a server older than 13, anything but an ordinary permanent table outside any
/// partition or inheritance tree, and a table without a usable key: the primary key, or
/// with `key = Some(index)` that unique index (`index` is read like an SQL identifier, so
/// `'"My Index"'` keeps its case).
pub async fn table_info(client: &Client, table: &QualifiedName, key: Option<&str>) -> Result<TableInfo> {
    describe(client, table, key).await?.keyed
}

/// The table as both ways need it, and its key as only the ghost way needs it.
#[derive(Debug)]
pub struct Described {
    pub oid: u32,
    pub name: QualifiedName,
    pub owner: String,
    /// `reltuples`, or -1 when the table was never analyzed.
    pub estimated_rows: i64,
    /// A partitioned table: changed through a ghost only.
    pub partitioned: bool,
    /// The table with its key, or the refusal that says why no index serves as one: the
    /// ghost way copies and applies rows by the key and cannot go without; the direct way
    /// changes the table in place and does not need one.
    pub keyed: Result<TableInfo>,
}

/// As [`table_info`], but a missing or unusable key is not refused here: it is kept in
/// [`Described::keyed`] for the way that needs a key to refuse. The server version and the
/// kind of relation are refused at once (both ways change one ordinary table). A `key` that
/// is no index name at all is refused at once too: the DBA named it.
pub async fn describe(client: &Client, table: &QualifiedName, key: Option<&str>) -> Result<Described> {
    server::require_supported_version(client).await?;
    let rel = Relation::read(client, table).await?;
    relation::check_relation(&rel)?;
    let wanted = match key {
        Some(arg) => Some(key_index_name(client, table, arg).await?),
        None => None,
    };
    let indexes = key::indexes(client, rel.oid).await?;
    // PostgreSQL 14+ stores -1 for "never analyzed"; 13 stores 0.
    let estimated_rows = if rel.reltuples < 0.0 { -1 } else { rel.reltuples as i64 };
    let keyed = match key::choose_key(table, &indexes, wanted.as_deref()) {
        Err(e) => Err(e),
        Ok(key) => {
            let info = TableInfo {
                oid: rel.oid,
                name: rel.name.clone(),
                owner: rel.owner.clone(),
                columns: columns(client, rel.oid).await?,
                key,
                estimated_rows,
                replica_identity: replica_identity(&rel, &indexes),
                partitioned: rel.kind == "p",
            };
            // A partitioned table is changed through a ghost only: its partitions are checked
            // here, whichever way was asked for.
            if info.partitioned {
                super::partitions::check(client, &info).await?;
            }
            debug!(
                table = %info.name,
                oid = info.oid,
                key = %info.key.index_name,
                columns = info.columns.len(),
                estimated_rows = info.estimated_rows,
                "inspected table"
            );
            Ok(info)
        }
    };
    Ok(Described { oid: rel.oid, name: rel.name, owner: rel.owner, estimated_rows, partitioned: rel.kind == "p", keyed })
}

/// The live (not dropped) columns of a relation, in attnum order. The engine also reads
/// the ghost's columns with it after the ALTER, to map them by attnum.
pub async fn columns(client: &impl tokio_postgres::GenericClient, oid: u32) -> Result<Vec<Column>> {
    let sql = format!(
        "SELECT a.attnum, a.attname::text AS name, format_type(a.atttypid, a.atttypmod) AS type_sql,
                a.atttypid, {} AS attnotnull, a.attidentity::text AS identity, a.attgenerated::text AS generated
           FROM pg_attribute a
          WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
          ORDER BY a.attnum",
        super::NOT_NULL
    );
    let rows = client
        .query(
            sql.as_str(),
            &[&oid],
        )
        .await
        .with_context(|| format!("reading the columns of relation {oid}"))?;
    rows.iter().map(column).collect()
}

fn column(row: &tokio_postgres::Row) -> Result<Column> {
    let identity = match get::<String>(row, "identity")?.as_str() {
        "a" => Identity::Always,
        "d" => Identity::ByDefault,
        _ => Identity::None,
    };
    Ok(Column {
        attnum: get(row, "attnum")?,
        name: get(row, "name")?,
        type_sql: get(row, "type_sql")?,
        type_oid: get(row, "atttypid")?,
        not_null: get(row, "attnotnull")?,
        identity,
        // Stored (`s`) or, from PostgreSQL 18, virtual (`v`): computed by the server, never written.
        generated: !get::<String>(row, "generated")?.is_empty(),
    })
}

/// `--key` names an index; it may be written `schema.index`, but an index always lives in
/// its table's schema.
async fn key_index_name(client: &Client, table: &QualifiedName, arg: &str) -> Result<String> {
    let parts = resolve::parse_name(client, arg, "--key").await?;
    match parts.as_slice() {
        [name] => Ok(name.clone()),
        [schema, name] if *schema == table.schema => Ok(name.clone()),
        [schema, name] => Err(Error::refused(format!(
            "--key {}.{}: an index lives in its table's schema, and {table} is in schema {}",
            ident(schema),
            ident(name),
            ident(&table.schema)
        ))),
        _ => Err(Error::config(format!("--key {arg:?}: give the name of an index of the table"))),
    }
}

fn replica_identity(rel: &Relation, indexes: &[Index]) -> ReplicaIdentity {
    match rel.replica_identity.as_str() {
        "d" => ReplicaIdentity::Default,
        "f" => ReplicaIdentity::Full,
        // When the identity index is dropped, relreplident stays 'i' and PostgreSQL
        // behaves as NOTHING.
        "i" => indexes
            .iter()
            .find(|i| i.is_replica_identity)
            .map_or(ReplicaIdentity::Nothing, |i| ReplicaIdentity::Index(i.name.clone())),
        _ => ReplicaIdentity::Nothing,
    }
}
