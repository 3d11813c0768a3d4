//! `preflight`: the checks on server, role and surroundings of a table already described by
//! `table_info`, in the fixed order listed in the module docs of `inspect`. Each check is a
//! pure function over facts read beforehand, so each refusal message is unit-tested.

use super::server::{self, ServerInfo};
use super::{get, shell_quote, texts};
use crate::error::{Context, Error, Result};
use crate::names::Names;
use crate::schema::{ReplicaIdentity, TableInfo};
use crate::sql::{ident, QualifiedName};
use tokio_postgres::Client;
use tracing::info;

/// The names the engine will use for this run, and what it may replace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreflightOptions {
    /// An existing ghost table is not a leftover: the engine drops it. Other leftovers
    /// (changelog, slot, publication) still refuse.
    pub initially_drop_ghost_table: bool,
    /// `--resume`: the earlier run's ghost, changelog, slot and publication are expected;
    /// only an old table is in the way.
    pub resuming: bool,
    pub ghost_name: QualifiedName,
    pub changelog_name: QualifiedName,
    pub old_name: QualifiedName,
    pub publication_name: String,
    pub slot_name: String,
}

impl PreflightOptions {
    pub fn new(names: &Names, initially_drop_ghost_table: bool) -> PreflightOptions {
        PreflightOptions {
            initially_drop_ghost_table,
            resuming: false,
            ghost_name: names.ghost.clone(),
            changelog_name: names.changelog.clone(),
            old_name: names.old.clone(),
            publication_name: names.publication.clone(),
            slot_name: names.slot.clone(),
        }
    }
}

/// Runs checks 1 to 10 and returns what was learned about the server. Reads only.
pub async fn preflight(client: &Client, table: &TableInfo, opts: &PreflightOptions) -> Result<ServerInfo> {
    let server = ServerInfo::read(client).await?;
    server::check_version(server.server_version_num, &server.server_version)?;
    server::check_replication(&server)?;
    check_privileges(table, &server, &Privileges::read(client, table.oid).await?)?;
    check_replica_identity(table)?;
    check_covering_publications(table, &covering_publications(client, table.oid, server.server_version_num).await?)?;
    check_leftovers(table, opts, &Leftovers::read(client, opts).await?)?;
    super::lock_capacity::check(&table.name, &super::lock_capacity::LockCapacity::read(client, table.oid).await?)?;
    info!(
        table = %table.name,
        server_version = %server.server_version,
        role = %server.current_user,
        superuser = server.is_superuser,
        free_slots = server.max_replication_slots - server.used_replication_slots,
        "preflight checks passed"
    );
    Ok(server)
}

/// The checks both ways need, run before the way is chosen, and all the direct way needs
/// (it creates nothing and streams nothing): server version (1), a primary (2), and a role
/// that may alter the table (part of 6: its owner, or a member of the owner's role). What
/// only the ghost way needs is not asked: logical WAL, slots and walsenders, REPLICATION,
/// CREATE on schema and database, a key, the replica identity, publications that cover the
/// table, leftovers of an earlier run. Reads only.
pub async fn preflight_shared(client: &Client, table: &QualifiedName, oid: u32, owner: &str) -> Result<ServerInfo> {
    let server = ServerInfo::read(client).await?;
    server::check_version(server.server_version_num, &server.server_version)?;
    server::check_primary(&server)?;
    check_owner(table, owner, &server, &Privileges::read(client, oid).await?)?;
    info!(table = %table, server_version = %server.server_version, role = %server.current_user, "preflight checks of both ways passed");
    Ok(server)
}

/// The direct way's part of check 6: ALTER TABLE, VALIDATE and CREATE INDEX need the
/// table's owner (or a member of the owner's role), or a superuser.
fn check_owner(table: &QualifiedName, owner: &str, server: &ServerInfo, p: &Privileges) -> Result<()> {
    if server.is_superuser || p.owns_table {
        return Ok(());
    }
    let role = ident(&server.current_user);
    let owner = ident(owner);
    Err(Error::refused(format!(
        "role {role} may not alter {table}: it is owned by {owner}, and ALTER TABLE needs its owner \
         (GRANT {owner} TO {role}, or connect as {owner} or a superuser)"
    )))
}

/// What the connected role may do with the table, its schema and the database.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Privileges {
    /// Owner, or a member inheriting the owner's privileges: what ALTER and
    /// CREATE PUBLICATION check (`has_privs_of_role`, i.e. `pg_has_role(.., 'USAGE')`).
    owns_table: bool,
    create_on_schema: bool,
    create_on_database: bool,
    database: String,
}

impl Privileges {
    async fn read(client: &Client, oid: u32) -> Result<Privileges> {
        let row = client
            .query_one(
                "SELECT pg_has_role(c.relowner, 'USAGE') AS owns_table,
                        has_schema_privilege(c.relnamespace, 'CREATE') AS create_on_schema,
                        has_database_privilege(current_database(), 'CREATE') AS create_on_database,
                        current_database()::text AS database
                   FROM pg_class c WHERE c.oid = $1",
                &[&oid],
            )
            .await
            .context("reading privileges")?;
        Ok(Privileges {
            owns_table: get(&row, "owns_table")?,
            create_on_schema: get(&row, "create_on_schema")?,
            create_on_database: get(&row, "create_on_database")?,
            database: get(&row, "database")?,
        })
    }
}

/// Check 6: a superuser, or REPLICATION (for the slot), the table's owner (for the
/// publication and the swap), CREATE on the schema (ghost, changelog) and on the database
/// (publication).
fn check_privileges(table: &TableInfo, server: &ServerInfo, p: &Privileges) -> Result<()> {
    if server.is_superuser {
        return Ok(());
    }
    let role = ident(&server.current_user);
    let mut missing = Vec::new();
    if !server.has_replication {
        missing.push(format!(
            "the REPLICATION attribute, to create a logical replication slot (ALTER ROLE {role} REPLICATION)"
        ));
    }
    if !p.owns_table {
        let owner = ident(&table.owner);
        missing.push(format!(
            "ownership of {}, to publish and swap it (it is owned by {owner}: GRANT {owner} TO {role})",
            table.name
        ));
    }
    if !p.create_on_schema {
        let schema = ident(&table.name.schema);
        missing.push(format!(
            "CREATE on schema {schema}, for the ghost and changelog tables (GRANT CREATE ON SCHEMA {schema} TO {role})"
        ));
    }
    if !p.create_on_database {
        let db = ident(&p.database);
        missing.push(format!("CREATE on database {db}, for the publication (GRANT CREATE ON DATABASE {db} TO {role})"));
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::refused(format!(
        "role {role} lacks what pg-ghost needs to change {}: {}; or connect as a superuser",
        table.name,
        missing.join("; ")
    )))
}

/// Check 7: pgoutput identifies the old row of an UPDATE or DELETE by the replica identity,
/// and apply needs the old key: the identity must contain the key.
fn check_replica_identity(table: &TableInfo) -> Result<()> {
    let key = &table.key;
    let ok = match &table.replica_identity {
        ReplicaIdentity::Full => true,
        ReplicaIdentity::Default => key.is_primary,
        ReplicaIdentity::Index(index) => *index == key.index_name,
        ReplicaIdentity::Nothing => false,
    };
    if ok {
        return Ok(());
    }
    let t = &table.name;
    let current = match &table.replica_identity {
        ReplicaIdentity::Default => "DEFAULT (the primary key, or nothing when there is none)".to_string(),
        ReplicaIdentity::Index(index) => format!("USING INDEX {}", ident(index)),
        ReplicaIdentity::Nothing => "NOTHING".to_string(),
        ReplicaIdentity::Full => "FULL".to_string(),
    };
    let fix = if key.is_primary {
        format!("ALTER TABLE {t} REPLICA IDENTITY DEFAULT")
    } else {
        format!("ALTER TABLE {t} REPLICA IDENTITY USING INDEX {}", ident(&key.index_name))
    };
    Err(Error::refused(format!(
        "the replica identity of {t} is {current}, so the change stream would not carry the old value of the key {} \
         for updates and deletes (and where there is no identity at all, UPDATE and DELETE fail once the table is \
         published): run {fix} (or REPLICA IDENTITY FULL, which logs whole old rows)",
        ident(&key.index_name)
    )))
}

/// Publications that cover the table without listing it: `FOR ALL TABLES`, and (from
/// PostgreSQL 15) `FOR TABLES IN SCHEMA` of the table's schema.
async fn covering_publications(client: &Client, oid: u32, version_num: i32) -> Result<Vec<(String, &'static str)>> {
    let mut found: Vec<(String, &'static str)> =
        texts(client, "SELECT pubname::text FROM pg_publication WHERE puballtables ORDER BY 1", &[])
            .await
            .context("reading publications")?
            .into_iter()
            .map(|p| (p, "FOR ALL TABLES"))
            .collect();
    if version_num >= 150000 {
        let per_schema = texts(
            client,
            "SELECT p.pubname::text FROM pg_publication_namespace pn
               JOIN pg_publication p ON p.oid = pn.pnpubid
               JOIN pg_class c ON c.relnamespace = pn.pnnspid
              WHERE c.oid = $1 ORDER BY 1",
            &[&oid],
        )
        .await
        .context("reading schema publications")?;
        found.extend(per_schema.into_iter().map(|p| (p, "FOR TABLES IN SCHEMA")));
    }
    Ok(found)
}

/// Check 8: such a publication would also publish the ghost and changelog tables, and its
/// subscribers would fail on tables they do not have.
fn check_covering_publications(table: &TableInfo, publications: &[(String, &str)]) -> Result<()> {
    if publications.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = publications.iter().map(|(name, kind)| format!("{} ({kind})", ident(name))).collect();
    Err(Error::refused(format!(
        "publication {} would also publish pg-ghost's ghost and changelog tables next to {}, and its subscribers \
         would fail on tables they do not have: list its tables explicitly (ALTER PUBLICATION ... SET TABLE ...) \
         or drop it for the duration of the change",
        list.join(", "),
        table.name
    )))
}

/// What an earlier run may have left under this run's names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Leftovers {
    ghost: bool,
    changelog: bool,
    old: bool,
    publication: bool,
    /// The slot's database (`None` for a physical slot) when a slot of that name exists.
    slot: Option<Option<String>>,
}

impl Leftovers {
    async fn read(client: &Client, opts: &PreflightOptions) -> Result<Leftovers> {
        let slot = client
            .query_opt(
                "SELECT database::text AS database FROM pg_replication_slots WHERE slot_name = $1",
                &[&opts.slot_name],
            )
            .await
            .context("reading replication slots")?
            .map(|row| get::<Option<String>>(&row, "database"))
            .transpose()?;
        let publication = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1) AS found",
                &[&opts.publication_name],
            )
            .await
            .context("reading publications")?;
        Ok(Leftovers {
            ghost: relation_exists(client, &opts.ghost_name).await?,
            changelog: relation_exists(client, &opts.changelog_name).await?,
            old: relation_exists(client, &opts.old_name).await?,
            publication: get(&publication, "found")?,
            slot,
        })
    }
}

async fn relation_exists(client: &Client, name: &QualifiedName) -> Result<bool> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                             WHERE n.nspname = $1 AND c.relname = $2) AS found",
            &[&name.schema, &name.name],
        )
        .await
        .with_context(|| format!("looking for {name}"))?;
    get(&row, "found")
}

/// Check 9: nothing may exist under this run's names, except a ghost table the engine was
/// told to drop. The old-table name must be free too, or the cut-over's rename would fail
/// at the very end.
fn check_leftovers(table: &TableInfo, opts: &PreflightOptions, found: &Leftovers) -> Result<()> {
    if opts.resuming {
        let only_old = Leftovers { old: found.old, ..Leftovers::default() };
        return check_leftovers(table, &PreflightOptions { resuming: false, ..opts.clone() }, &only_old);
    }
    let mut items = Vec::new();
    let ghost = found.ghost && !opts.initially_drop_ghost_table;
    if ghost {
        items.push(format!("ghost table {}", opts.ghost_name));
    }
    if found.changelog {
        items.push(format!("changelog table {}", opts.changelog_name));
    }
    if let Some(database) = &found.slot {
        let place = database.as_deref().map(|d| format!(" (database {})", ident(d))).unwrap_or_default();
        items.push(format!("replication slot {}{place}", ident(&opts.slot_name)));
    }
    if found.publication {
        items.push(format!("publication {}", ident(&opts.publication_name)));
    }
    if found.old {
        items.push(format!("old table {} (the original kept by an earlier cut-over)", opts.old_name));
    }
    if items.is_empty() {
        return Ok(());
    }
    let mut hints = Vec::new();
    let stream_or_state = found.changelog || found.slot.is_some() || found.publication;
    if ghost || stream_or_state {
        let quoted = shell_quote(&table.name.to_string());
        let mut hint = if found.changelog && found.slot.is_some() && found.publication && found.ghost {
            format!("continue that run with the same flags and --resume, or remove them with `pg-ghost cleanup --table {quoted}`")
        } else {
            format!("remove them with `pg-ghost cleanup --table {quoted}`")
        };
        if found.slot.is_some() {
            hint.push_str(" soon: a leftover slot keeps WAL on the server until it is dropped");
        }
        if ghost && !stream_or_state {
            hint.push_str(", or pass --initially-drop-ghost-table to drop the ghost table");
        }
        hints.push(hint);
    }
    if found.old {
        hints.push(format!("drop {} once it is no longer needed, or use --timestamp-old-table", opts.old_name));
    }
    Err(Error::refused(format!(
        "an earlier pg-ghost run on {} left {}; {}",
        table.name,
        items.join(", "),
        hints.join("; ")
    )))
}

#[cfg(test)]
mod tests;
