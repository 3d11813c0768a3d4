use super::mapping::Mapping;
use crate::alter::{self, AlterPlan};
use crate::error::{Context, Error, ErrorKind, Result};
use crate::schema::TableInfo;
use crate::sql::{fit_ident, ident, ident_list, literal, QualifiedName};
use crate::sqltree;
use std::collections::HashMap;
use tokio_postgres::{Client, GenericClient};

/// An index or constraint of the ghost, dropped before the copy and built after it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Deferred {
    pub name: String,
    /// The statement that builds it again on the ghost.
    pub sql: String,
    /// A statement to run after `sql` (validating a foreign key added `NOT VALID`).
    pub then: Option<String>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Ghost {
    pub name: QualifiedName,
    pub oid: u32,
    pub mapping: Mapping,
    pub alter: AlterPlan,
    pub deferred: Vec<Deferred>,
    /// A unique index on the original key that the ALTER left without one; dropped at cut-over.
    pub temp_key_index: Option<String>,
    /// `REPLICA IDENTITY USING INDEX` to set once the deferred indexes exist.
    pub replica_identity_index: Option<String>,
}

/// The name an index or index-backed constraint of the original carries on the ghost until
/// the cut-over gives it back its own name.
pub fn temp_name(original: &str) -> String {
    fit_ident(&format!("_{original}_gho"))
}

struct OrigIndex {
    name: String,
    indexdef: String,
    constraint: Option<(String, String)>,
    index_comment: Option<String>,
    constraint_comment: Option<String>,
    replica_identity: bool,
}

/// Creates the ghost of `orig` with `alter` applied, in one transaction.
pub async fn create(client: &mut Client, orig: &TableInfo, ghost: &QualifiedName, alter: &str) -> Result<Ghost> {
    let tx = client.transaction().await.context("starting the ghost's transaction")?;
    let indexes = original_indexes(&tx, orig.oid).await?;
    let constraint_names: HashMap<String, String> =
        indexes.iter().filter_map(|i| i.constraint.as_ref().map(|(n, _)| (n.clone(), temp_name(&i.name)))).collect();
    let plan = alter::plan(alter, ghost, &constraint_names)?;

    create_table(&tx, orig, ghost).await?;
    copy_table_properties(&tx, orig, ghost).await?;
    for index in &indexes {
        create_original_index(&tx, ghost, index).await?;
    }
    copy_foreign_keys(&tx, orig.oid, ghost).await?;
    let ghost_oid = relation_oid(&tx, ghost).await?;
    let attnum_names: HashMap<i16, String> =
        crate::inspect::columns(&tx, ghost_oid).await?.into_iter().map(|c| (c.attnum, c.name)).collect();

    tx.batch_execute(&plan.ghost_sql).await.map_err(|e| {
        let e = Error::from(e);
        Error::new(if e.kind() == ErrorKind::Sql { ErrorKind::Refused } else { e.kind() }, format!(
            "PostgreSQL rejected the ALTER on the ghost table: {}",
            e.message()
        ))
    })?;

    let after = crate::inspect::columns(&tx, ghost_oid).await?;
    let source_key: Vec<(String, String)> =
        orig.key.columns.iter().cloned().zip(orig.key.types.iter().cloned()).collect();
    let mapping = Mapping::build(&attnum_names, &after, &plan.using, &source_key)?;
    let (deferred, temp_key_index) = set_aside_indexes(&tx, ghost, ghost_oid, &mapping).await?;
    let replica_identity_index = indexes.iter().find(|i| i.replica_identity).map(|i| temp_name(&i.name));
    tx.commit().await.context("committing the ghost table")?;
    tracing::info!(ghost = %ghost, deferred = deferred.len(), rewrites = plan.rewrites, "ghost table created");
    Ok(Ghost { name: ghost.clone(), oid: ghost_oid, mapping, alter: plan, deferred, temp_key_index, replica_identity_index })
}

/// Builds the indexes and constraints set aside before the copy.
pub async fn rebuild_deferred(client: &Client, ghost: &Ghost) -> Result<()> {
    for d in &ghost.deferred {
        let started = std::time::Instant::now();
        match built_on(client, ghost.oid, &d.name).await? {
            // A resumed run finds what the earlier one built (each build is one transaction).
            Built::Validated => continue,
            Built::NotValidated => {}
            Built::No => {
                client.batch_execute(&d.sql).await.with_context(|| format!("building {} on the ghost", ident(&d.name)))?;
            }
        }
        if let Some(then) = &d.then {
            client.batch_execute(then).await.with_context(|| format!("validating {} on the ghost", ident(&d.name)))?;
        }
        tracing::info!(name = %d.name, secs = started.elapsed().as_secs_f64(), "built on the ghost");
    }
    if let Some(index) = &ghost.replica_identity_index {
        let exists: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = $1 AND c.relname = $2",
                &[&ghost.oid, index],
            )
            .await?
            .try_get(0)?;
        if exists > 0 {
            client
                .batch_execute(&format!("ALTER TABLE {} REPLICA IDENTITY USING INDEX {}", ghost.name.sql(), ident(index)))
                .await
                .context("setting the ghost's replica identity")?;
        }
    }
    Ok(())
}

enum Built {
    No,
    /// A foreign key added `NOT VALID`, not validated yet.
    NotValidated,
    Validated,
}

async fn built_on(client: &Client, ghost_oid: u32, name: &str) -> Result<Built> {
    let row = client
        .query_one(
            "SELECT (SELECT convalidated FROM pg_constraint WHERE conrelid = $1 AND conname = $2),
                    EXISTS (SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = $1 AND c.relname = $2)",
            &[&ghost_oid, &name],
        )
        .await
        .context("looking for the ghost's indexes and constraints")?;
    let constraint: Option<bool> = row.try_get(0)?;
    let index: bool = row.try_get(1)?;
    Ok(match (constraint, index) {
        (Some(false), _) => Built::NotValidated,
        (Some(true), _) | (None, true) => Built::Validated,
        (None, false) => Built::No,
    })
}

async fn create_table(tx: &impl GenericClient, orig: &TableInfo, ghost: &QualifiedName) -> Result<()> {
    let row = tx
        .query_one(
            "SELECT t.spcname FROM pg_class c LEFT JOIN pg_tablespace t ON t.oid = c.reltablespace WHERE c.oid = $1",
            &[&orig.oid],
        )
        .await?;
    let tablespace: Option<String> = row.try_get(0)?;
    let mut sql = format!("CREATE TABLE {} (LIKE {} INCLUDING ALL EXCLUDING INDEXES)", ghost.sql(), orig.name.sql());
    if let Some(ts) = tablespace {
        sql.push_str(&format!(" TABLESPACE {}", ident(&ts)));
    }
    tx.batch_execute(&sql).await.context("creating the ghost table")?;
    Ok(())
}

/// What `LIKE ... INCLUDING ALL` leaves out: owner, grants, storage parameters, the table's
/// comment, replica identity and row security.
async fn copy_table_properties(tx: &impl GenericClient, orig: &TableInfo, ghost: &QualifiedName) -> Result<()> {
    let g = ghost.sql();
    let row = tx
        .query_one(
            "SELECT pg_get_userbyid(c.relowner), c.relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user),
                    coalesce(c.reloptions, '{}'), obj_description(c.oid, 'pg_class'), c.relreplident::text,
                    c.relrowsecurity, c.relforcerowsecurity
               FROM pg_class c WHERE c.oid = $1",
            &[&orig.oid],
        )
        .await?;
    let owner: String = row.try_get(0)?;
    let we_own: bool = row.try_get(1)?;
    let reloptions: Vec<String> = row.try_get(2)?;
    let comment: Option<String> = row.try_get(3)?;
    let replident: String = row.try_get(4)?;
    let mut sql = Vec::new();
    if !we_own {
        sql.push(format!("ALTER TABLE {g} OWNER TO {}", ident(&owner)));
    }
    for opt in &reloptions {
        if let Some((k, v)) = opt.split_once('=') {
            sql.push(format!("ALTER TABLE {g} SET ({} = {})", ident(k), literal(v)));
        }
    }
    if let Some(c) = comment {
        sql.push(format!("COMMENT ON TABLE {g} IS {}", literal(&c)));
    }
    match replident.as_str() {
        "f" => sql.push(format!("ALTER TABLE {g} REPLICA IDENTITY FULL")),
        "n" => sql.push(format!("ALTER TABLE {g} REPLICA IDENTITY NOTHING")),
        _ => {}
    }
    if row.try_get::<_, bool>(5)? {
        sql.push(format!("ALTER TABLE {g} ENABLE ROW LEVEL SECURITY"));
    }
    if row.try_get::<_, bool>(6)? {
        sql.push(format!("ALTER TABLE {g} FORCE ROW LEVEL SECURITY"));
    }
    for grant in grants(tx, orig.oid).await? {
        sql.push(format!("GRANT {} ON {g} TO {}", grant.privilege, grant.grantee));
    }
    for s in sql {
        tx.batch_execute(&s).await.with_context(|| format!("copying a table property to the ghost ({s})"))?;
    }
    Ok(())
}

/// One privilege on the table or a column, as the parts of a GRANT statement.
struct Grant {
    /// `SELECT` or `SELECT ("col")`.
    privilege: String,
    /// `"role"` or `PUBLIC`, with `WITH GRANT OPTION` when it applies.
    grantee: String,
}

/// The table's and its columns' privileges other than the owner's own.
async fn grants(tx: &impl GenericClient, oid: u32) -> Result<Vec<Grant>> {
    let rows = tx
        .query(
            "SELECT NULL::text AS col, a.privilege_type, CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END, a.is_grantable
               FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = $1 AND a.grantee <> c.relowner
             UNION ALL
             SELECT att.attname::text, a.privilege_type, CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END, a.is_grantable
               FROM pg_attribute att, aclexplode(att.attacl) a
              WHERE att.attrelid = $1 AND att.attacl IS NOT NULL AND NOT att.attisdropped",
            &[&oid],
        )
        .await
        .context("reading the table's grants")?;
    let mut out = Vec::new();
    for row in rows {
        let col: Option<String> = row.try_get(0)?;
        let privilege: String = row.try_get(1)?;
        let grantee: Option<String> = row.try_get(2)?;
        let grantable: bool = row.try_get(3)?;
        let cols = col.map(|c| format!(" ({})", ident(&c))).unwrap_or_default();
        let to = grantee.map(|g| ident(&g)).unwrap_or_else(|| "PUBLIC".to_string());
        let option = if grantable { " WITH GRANT OPTION" } else { "" };
        out.push(Grant { privilege: format!("{privilege}{cols}"), grantee: format!("{to}{option}") });
    }
    Ok(out)
}

async fn original_indexes(tx: &impl GenericClient, oid: u32) -> Result<Vec<OrigIndex>> {
    let rows = tx
        .query(
            "SELECT ci.relname::text, pg_get_indexdef(i.indexrelid), c.conname::text, pg_get_constraintdef(c.oid),
                    obj_description(i.indexrelid, 'pg_class'), obj_description(c.oid, 'pg_constraint'), i.indisreplident
               FROM pg_index i
               JOIN pg_class ci ON ci.oid = i.indexrelid
               LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid AND c.contype IN ('p', 'u', 'x')
              WHERE i.indrelid = $1
              ORDER BY i.indexrelid",
            &[&oid],
        )
        .await
        .context("reading the original's indexes")?;
    rows.iter()
        .map(|r| {
            let conname: Option<String> = r.try_get(2)?;
            let condef: Option<String> = r.try_get(3)?;
            Ok(OrigIndex {
                name: r.try_get(0)?,
                indexdef: r.try_get(1)?,
                constraint: conname.zip(condef),
                index_comment: r.try_get(4)?,
                constraint_comment: r.try_get(5)?,
                replica_identity: r.try_get(6)?,
            })
        })
        .collect()
}

async fn create_original_index(tx: &impl GenericClient, ghost: &QualifiedName, index: &OrigIndex) -> Result<()> {
    let tmp = temp_name(&index.name);
    let mut sql = vec![match &index.constraint {
        Some((_, def)) => format!("ALTER TABLE {} ADD CONSTRAINT {} {def}", ghost.sql(), ident(&tmp)),
        None => sqltree::retarget_index(&index.indexdef, &tmp, ghost)?,
    }];
    if let Some(c) = &index.index_comment {
        sql.push(format!("COMMENT ON INDEX {} IS {}", ghost.sibling(tmp.clone()).sql(), literal(c)));
    }
    if let Some(c) = &index.constraint_comment {
        sql.push(format!("COMMENT ON CONSTRAINT {} ON {} IS {}", ident(&tmp), ghost.sql(), literal(c)));
    }
    for s in sql {
        tx.batch_execute(&s).await.with_context(|| format!("creating index {} on the ghost", ident(&index.name)))?;
    }
    Ok(())
}

async fn copy_foreign_keys(tx: &impl GenericClient, oid: u32, ghost: &QualifiedName) -> Result<()> {
    let rows = tx
        .query(
            "SELECT conname::text, pg_get_constraintdef(oid), obj_description(oid, 'pg_constraint')
               FROM pg_constraint WHERE conrelid = $1 AND contype = 'f' ORDER BY oid",
            &[&oid],
        )
        .await
        .context("reading the original's foreign keys")?;
    for r in rows {
        let name: String = r.try_get(0)?;
        let def: String = r.try_get(1)?;
        let comment: Option<String> = r.try_get(2)?;
        tx.batch_execute(&format!("ALTER TABLE {} ADD CONSTRAINT {} {def}", ghost.sql(), ident(&name)))
            .await
            .with_context(|| format!("copying foreign key {} to the ghost", ident(&name)))?;
        if let Some(c) = comment {
            tx.batch_execute(&format!("COMMENT ON CONSTRAINT {} ON {} IS {}", ident(&name), ghost.sql(), literal(&c)))
                .await?;
        }
    }
    Ok(())
}

/// Drops every index and constraint the copy does not need, remembering how to build it
/// again; makes sure a unique index on the key remains.
async fn set_aside_indexes(
    tx: &impl GenericClient,
    ghost: &QualifiedName,
    ghost_oid: u32,
    mapping: &Mapping,
) -> Result<(Vec<Deferred>, Option<String>)> {
    let rows = tx
        .query(
            "SELECT ci.relname::text, pg_get_indexdef(i.indexrelid), c.conname::text, pg_get_constraintdef(c.oid),
                    i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
                      AND (SELECT array_agg(a.attname::text ORDER BY a.attname)
                             FROM unnest(i.indkey::int2[]) k JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k)
                          = (SELECT array_agg(x ORDER BY x) FROM unnest($2::text[]) x)
                      AND i.indnkeyatts = cardinality($2::text[])
               FROM pg_index i
               JOIN pg_class ci ON ci.oid = i.indexrelid
               LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid AND c.contype IN ('p', 'u', 'x')
              WHERE i.indrelid = $1
              ORDER BY c.contype = 'p' DESC NULLS LAST, i.indexrelid",
            &[&ghost_oid, &mapping.key_ghost],
        )
        .await
        .context("reading the ghost's indexes")?;
    let mut deferred = Vec::new();
    let mut key_kept = false;
    for r in rows {
        let name: String = r.try_get(0)?;
        let indexdef: String = r.try_get(1)?;
        let constraint: Option<String> = r.try_get(2)?;
        let condef: Option<String> = r.try_get(3)?;
        let is_key: bool = r.try_get::<_, Option<bool>>(4)?.unwrap_or(false);
        if is_key && !key_kept {
            key_kept = true;
            continue;
        }
        let (drop, sql) = match (constraint, condef) {
            (Some(con), Some(def)) => (
                format!("ALTER TABLE {} DROP CONSTRAINT {}", ghost.sql(), ident(&con)),
                format!("ALTER TABLE {} ADD CONSTRAINT {} {def}", ghost.sql(), ident(&con)),
            ),
            _ => (format!("DROP INDEX {}", ghost.sibling(name.clone()).sql()), indexdef),
        };
        tx.batch_execute(&drop).await.with_context(|| format!("setting aside {} until after the copy", ident(&name)))?;
        deferred.push(Deferred { name, sql, then: None });
    }
    deferred.extend(set_aside_foreign_keys(tx, ghost, ghost_oid).await?);
    let temp_key_index = if key_kept {
        None
    } else {
        let name = fit_ident(&format!("{}_key", ghost.name));
        tx.batch_execute(&format!(
            "CREATE UNIQUE INDEX {} ON {} ({})",
            ident(&name),
            ghost.sql(),
            ident_list(mapping.key_ghost.iter().map(String::as_str))
        ))
        .await
        .context("creating a unique index on the key for the copy")?;
        Some(name)
    };
    Ok((deferred, temp_key_index))
}

/// Foreign keys are checked once, after the copy (`NOT VALID`, then `VALIDATE`), rather
/// than row by row during it.
async fn set_aside_foreign_keys(tx: &impl GenericClient, ghost: &QualifiedName, ghost_oid: u32) -> Result<Vec<Deferred>> {
    let rows = tx
        .query(
            "SELECT conname::text, pg_get_constraintdef(oid), convalidated FROM pg_constraint
              WHERE conrelid = $1 AND contype = 'f' ORDER BY oid",
            &[&ghost_oid],
        )
        .await?;
    let mut out = Vec::new();
    for r in rows {
        let name: String = r.try_get(0)?;
        let def: String = r.try_get(1)?;
        let validated: bool = r.try_get(2)?;
        let g = ghost.sql();
        tx.batch_execute(&format!("ALTER TABLE {g} DROP CONSTRAINT {}", ident(&name))).await?;
        let def = if validated { format!("{def} NOT VALID") } else { def };
        out.push(Deferred {
            sql: format!("ALTER TABLE {g} ADD CONSTRAINT {} {def}", ident(&name)),
            then: validated.then(|| format!("ALTER TABLE {g} VALIDATE CONSTRAINT {}", ident(&name))),
            name,
        });
    }
    Ok(out)
}

async fn relation_oid(tx: &impl GenericClient, name: &QualifiedName) -> Result<u32> {
    let row = tx
        .query_one(
            "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
            &[&name.schema, &name.name],
        )
        .await
        .with_context(|| format!("looking up {name}"))?;
    Ok(row.try_get(0)?)
}
