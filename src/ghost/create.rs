use super::autovacuum::{self, AutovacuumSettings};
use super::build_session::BuildSession;
use super::conversion::{self, ConversionFindings};
use super::convert::Conversion;
use super::mapping::Mapping;
use super::partitions::{self, PartitionTree};
use super::locks::{self, LockWait};
use crate::alter::{self, AlterPlan};
use crate::conn::ConnInfo;
use crate::datacheck::{self, Checks};
use crate::error::{Context, Error, ErrorKind, Result};
use crate::dependents::{ColumnChanges, Dependents};
use crate::schema::{Column, Identity, TableInfo};
use crate::sql::{fit_ident, ident, ident_list, literal, QualifiedName};
use crate::sqltree;
use std::collections::HashMap;
use tokio_postgres::{Client, GenericClient, Transaction};

/// An index or constraint of the ghost, dropped before the copy and built after it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Deferred {
    pub name: String,
    /// The statement that builds it again on the ghost.
    pub sql: String,
    /// Statements to run after `sql`: validating a foreign key added `NOT VALID`, giving back
    /// the comments dropping it took along.
    pub then: Option<String>,
    /// A plain `CREATE INDEX`: it takes SHARE on the ghost only, so it is built beside the
    /// other plain indexes (constraints take ACCESS EXCLUSIVE and are built one by one).
    #[serde(default)]
    pub plain_index: bool,
    /// A foreign key: adding it locks the referenced table too.
    #[serde(default)]
    pub foreign_key: bool,
}

impl Deferred {
    /// Whether building it takes a lock on a table other than the ghost, so that it must give
    /// up after the lock timeout rather than queue. Plans written before `foreign_key` existed
    /// marked a foreign key only by the validation that follows it: any constraint with a
    /// statement after it is taken for one (a bounded wait costs the others nothing).
    fn locks_another_table(&self) -> bool {
        self.foreign_key || (!self.plain_index && self.then.is_some())
    }
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Ghost {
    pub name: QualifiedName,
    pub oid: u32,
    pub mapping: Mapping,
    pub alter: AlterPlan,
    pub deferred: Vec<Deferred>,
    /// The unique index on the key, set aside for the copy like the others and built first
    /// after it: the copy then writes a table with no index at all. Until it exists the apply
    /// parks changed keys instead of writing them (see `crate::apply::park`). None: the key's
    /// index stays on the ghost through the copy (a partitioned ghost, a plan of an earlier
    /// version).
    #[serde(default)]
    pub key_index: Option<Deferred>,
    /// A unique index on the original key that the ALTER left without one; dropped at cut-over.
    pub temp_key_index: Option<String>,
    /// `REPLICA IDENTITY USING INDEX` to set once the deferred indexes exist.
    pub replica_identity_index: Option<String>,
    /// The index the original is clustered on (`CLUSTER ON`), by its name on the ghost.
    #[serde(default)]
    pub cluster_on: Option<String>,
    /// The ghost's `GENERATED ALWAYS` identity columns, made `BY DEFAULT` while it is fed:
    /// an upsert may not set an ALWAYS column to a value. The swap makes them ALWAYS again.
    #[serde(default)]
    pub identity_always: Vec<String>,
    /// The ghost's storage parameters before pg-ghost turned its autovacuum off, given back at
    /// the swap; `None` for a ghost created with its autovacuum on (by an earlier version).
    #[serde(default)]
    pub autovacuum: Option<AutovacuumSettings>,
    /// The partition tree the ghost was built with, for a partitioned table: checked again
    /// under the cut-over's lock, and renamed partition by partition in the swap.
    #[serde(default)]
    pub partitions: Option<PartitionTree>,
    /// For a partitioned ghost, the storage parameters of each leaf (by its ghost name)
    /// before pg-ghost turned its autovacuum off; the root itself has none.
    #[serde(default)]
    pub partition_autovacuum: Vec<(QualifiedName, AutovacuumSettings)>,
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
    clustered: bool,
}

/// Creates the ghost of `orig` with `alter` applied, in one transaction.
pub async fn create(client: &mut Client, orig: &TableInfo, ghost: &QualifiedName, alter: &str) -> Result<Ghost> {
    create_with_conversion(client, orig, ghost, alter, None, &LockWait::default()).await
}

/// [`create`], converting the table into a partitioned one when `conversion` says so. The
/// tables the foreign keys reference are locked as [`super::locks`] says, waiting as `wait`
/// allows; a wait that runs out starts the transaction again.
pub async fn create_with_conversion(
    client: &mut Client,
    orig: &TableInfo,
    ghost: &QualifiedName,
    alter: &str,
    conversion: Option<&Conversion>,
    wait: &LockWait,
) -> Result<Ghost> {
    let mut attempt = 0;
    let built = loop {
        attempt += 1;
        let tx = client.transaction().await.context("starting the ghost's transaction")?;
        match build(&tx, orig, ghost, alter, conversion, wait, &mut ConversionFindings::default()).await {
            Ok(built) => {
                tx.commit().await.context("committing the ghost table")?;
                break built;
            }
            Err(e) => {
                let _ = tx.rollback().await;
                locks::again(e, attempt, wait, "creating the ghost table").await?;
            }
        }
    };
    let g = built.ghost;
    tracing::info!(ghost = %ghost, deferred = g.deferred.len(), rewrites = g.alter.rewrites, "ghost table created");
    Ok(g)
}

/// What the trial ghost tells before anything is created.
pub struct Trial {
    pub changes: ColumnChanges,
    /// The clauses existing rows could break, to check before the copy.
    pub data_checks: Checks,
}

/// The table's dependents, read in a transaction that is rolled back, and the trial ghost
/// against them (see [`trial`]).
pub async fn trial_with_dependents(
    client: &mut Client,
    orig: &TableInfo,
    names: &crate::names::Names,
    alter: &str,
    conversion: Option<&Conversion>,
    wait: &LockWait,
) -> Result<(Dependents, Trial)> {
    let tx = client.transaction().await.context("starting to read the dependents")?;
    let deps = crate::dependents::read(&tx, orig.oid, &names.publication).await?;
    tx.rollback().await.context("ending the read of the dependents")?;
    let trial = trial_with_conversion(client, orig, &names.ghost, alter, &deps, conversion, wait).await?;
    Ok((deps, trial))
}

/// Builds the ghost in a transaction that is rolled back, to learn before anything is
/// created what the ALTER does to the columns and which of its clauses the existing rows
/// could break, and whether every foreign key that references the table can reference the
/// changed table (PostgreSQL itself checks the types). A foreign key that cannot is refused
/// with PostgreSQL's reason.
pub async fn trial(client: &mut Client, orig: &TableInfo, ghost: &QualifiedName, alter: &str, dependents: &Dependents) -> Result<Trial> {
    trial_with_conversion(client, orig, ghost, alter, dependents, None, &LockWait::default()).await
}

/// [`trial`] of a conversion into a partitioned table when `conversion` says so; refused
/// here too when rows would have no partition (counted once the trial is rolled back).
pub async fn trial_with_conversion(
    client: &mut Client,
    orig: &TableInfo,
    ghost: &QualifiedName,
    alter: &str,
    dependents: &Dependents,
    conversion: Option<&Conversion>,
    wait: &LockWait,
) -> Result<Trial> {
    let mut findings = ConversionFindings::default();
    let of = TrialOf { orig, ghost, alter, dependents, conversion, wait };
    let trial = trial_finding(client, of, &mut findings).await?;
    if let Some(condition) = &findings.unrouted {
        conversion::refuse_unrouted(&*client, orig, condition).await?;
    }
    Ok(trial)
}

/// The trial of a conversion as `pg-ghost plan` explains it: what the trial found (also when
/// it was refused midway) and its refusal, if any. The rows no partition takes are not
/// counted here (see [`conversion::count_unrouted`]).
pub async fn explain_conversion(
    client: &mut Client,
    orig: &TableInfo,
    names: &crate::names::Names,
    alter: &str,
    conversion: &Conversion,
) -> Result<(ConversionFindings, Option<Error>)> {
    let tx = client.transaction().await.context("starting to read the dependents")?;
    let deps = crate::dependents::read(&tx, orig.oid, &names.publication).await?;
    tx.rollback().await.context("ending the read of the dependents")?;
    let mut findings = ConversionFindings::default();
    let wait = LockWait::default();
    let of = TrialOf { orig, ghost: &names.ghost, alter, dependents: &deps, conversion: Some(conversion), wait: &wait };
    match trial_finding(client, of, &mut findings).await {
        Ok(_) => Ok((findings, None)),
        Err(e) if e.kind() == ErrorKind::Refused => Ok((findings, Some(e))),
        Err(e) => Err(e),
    }
}

/// What a trial ghost is built from.
#[derive(Clone, Copy)]
struct TrialOf<'a> {
    orig: &'a TableInfo,
    ghost: &'a QualifiedName,
    alter: &'a str,
    dependents: &'a Dependents,
    conversion: Option<&'a Conversion>,
    wait: &'a LockWait,
}

/// The trial ghost, in a transaction that is rolled back (started again when a lock wait
/// runs out); `findings` is filled as it goes.
async fn trial_finding(client: &mut Client, of: TrialOf<'_>, findings: &mut ConversionFindings) -> Result<Trial> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        *findings = ConversionFindings::default();
        let tx = client.transaction().await.context("starting the trial ghost's transaction")?;
        match trial_once(&tx, of, findings).await {
            Ok(trial) => {
                tx.rollback().await.context("rolling back the trial ghost")?;
                return Ok(trial);
            }
            Err(e) => {
                let _ = tx.rollback().await;
                locks::again(e, attempt, of.wait, "building the trial ghost").await?;
            }
        }
    }
}

async fn trial_once(tx: &Transaction<'_>, of: TrialOf<'_>, findings: &mut ConversionFindings) -> Result<Trial> {
    let TrialOf { orig, ghost, alter, dependents, conversion, wait } = of;
    // A ghost left by an earlier run that this run may drop is dropped here too (rolled back).
    // Its foreign keys' tables are locked first, in one bounded wait, as building does.
    let leftover: Option<u32> = tx.query_one("SELECT to_regclass($1)::oid", &[&ghost.sql()]).await?.try_get(0)?;
    if let Some(oid) = leftover {
        let referenced = locks::referenced_tables(tx, oid, ghost, "").await?;
        locks::lock(tx, &referenced.tables, wait.lock_timeout).await?;
        tx.batch_execute(&format!("DROP TABLE {}", ghost.sql())).await.context("making room for the trial ghost")?;
    }
    let built = build(tx, orig, ghost, alter, conversion, wait, findings).await?;
    // A foreign key may reference a unique index set aside for the copy: the empty trial
    // ghost gets them all back at once, the key's first.
    for d in built.ghost.key_index.iter().chain(&built.ghost.deferred) {
        tx.batch_execute(&d.sql).await.with_context(|| format!("building {} on the trial ghost", ident(&d.name)))?;
    }
    let mapping = &built.ghost.mapping;
    let mut changes = ColumnChanges::default();
    for col in &orig.columns {
        match mapping.ghost_name_of(&col.name) {
            None => changes.dropped.push(col.name.clone()),
            Some(g) => {
                let now = built.after.iter().find(|c| c.name == g);
                if now.is_some_and(|c| c.type_sql != col.type_sql) || built.ghost.alter.using.contains_key(&col.name) {
                    changes.retyped.push(col.name.clone());
                }
            }
        }
    }
    for (i, fk) in dependents.foreign_keys.iter().enumerate() {
        let probe = ghost.sibling(fit_ident(&format!("{}_fk_trial_{i}", ghost.name)));
        let Some(referenced) = fk.referenced_columns.iter().map(|c| mapping.ghost_name_of(c)).collect::<Option<Vec<_>>>() else {
            continue; // a dropped column: refused as a plain ALTER would refuse it
        };
        let referencing = if fk.self_reference {
            let Some(cols) = fk.columns.iter().map(|c| mapping.ghost_name_of(c)).collect::<Option<Vec<_>>>() else { continue };
            (ghost.clone(), cols.into_iter().map(str::to_string).collect::<Vec<_>>())
        } else {
            tx.batch_execute(&format!(
                "CREATE TABLE {p} AS SELECT {} FROM {} WITH NO DATA",
                ident_list(fk.columns.iter().map(String::as_str)),
                fk.table.sql(),
                p = probe.sql()
            ))
            .await
            .with_context(|| format!("trying foreign key {} of {}", ident(&fk.name), fk.table))?;
            (probe, fk.columns.clone())
        };
        let sql = format!(
            "ALTER TABLE {} ADD FOREIGN KEY ({}) REFERENCES {} ({}) NOT VALID",
            referencing.0.sql(),
            ident_list(referencing.1.iter().map(String::as_str)),
            ghost.sql(),
            ident_list(referenced.iter().copied())
        );
        if let Err(e) = tx.batch_execute(&sql).await {
            let e = Error::from(e);
            if let Some(c) = conversion {
                return Err(Error::refused(format!(
                    "foreign key {} on {} references {} ({}) and could not reference it once it is partitioned by {}: {} \
                     (a foreign key must reference a primary key or unique constraint, and on a partitioned table those include the partition key); \
                     drop the foreign key for the run, or make it reference columns that include the partition key",
                    ident(&fk.name),
                    fk.table,
                    orig.name,
                    ident_list(fk.referenced_columns.iter().map(String::as_str)),
                    c.partition_by,
                    e.message()
                )));
            }
            return Err(Error::refused(format!(
                "foreign key {} on {} references {} and could not reference it after this ALTER: {} (a plain ALTER TABLE would fail the same way)",
                ident(&fk.name),
                fk.table,
                orig.name,
                e.message()
            )));
        }
    }
    crate::dependents::materialized::trial(tx, &dependents.materialized_views, &orig.name, orig.oid, ghost).await?;
    Ok(Trial { changes, data_checks: built.data_checks })
}

struct Prepared {
    ghost: Ghost,
    /// The ghost's columns after the ALTER.
    after: Vec<Column>,
    data_checks: Checks,
}

/// Builds the ghost in `tx`. For a conversion, `findings` gets what is learnt on the way
/// (partitions and their bounds, the keys that lack the partition key, what the ALTER left).
/// The tables its foreign keys reference are locked as [`super::locks`] says.
async fn build(
    tx: &Transaction<'_>,
    orig: &TableInfo,
    ghost: &QualifiedName,
    alter: &str,
    conversion: Option<&Conversion>,
    wait: &LockWait,
    findings: &mut ConversionFindings,
) -> Result<Prepared> {
    let referenced = locks::referenced_tables(tx, orig.oid, &orig.name, alter).await?;
    let indexes = original_indexes(tx, orig.oid).await?;
    let constraint_names: HashMap<String, String> =
        indexes.iter().filter_map(|i| i.constraint.as_ref().map(|(n, _)| (n.clone(), temp_name(&i.name)))).collect();
    let plan = match conversion {
        Some(_) if alter.trim().is_empty() => AlterPlan::none(),
        _ => alter::plan(alter, ghost, &constraint_names)?,
    };

    let mut tree = match conversion {
        None => PartitionTree::read(tx, orig.oid).await?,
        Some(c) => Some(conversion::tree(c, &orig.name)),
    };
    let stand_ins = match conversion {
        None => Vec::new(),
        Some(c) => conversion::stand_ins(tx, orig, &c.columns).await?,
    };
    findings.lacking = Some(stand_ins.clone());
    create_table(tx, orig, ghost, tree.as_ref()).await?;
    copy_table_properties(tx, orig, ghost, tree.is_some()).await?;
    copy_column_settings(tx, orig.oid, ghost).await?;
    match (conversion, tree.as_mut()) {
        (Some(c), Some(tree)) => {
            conversion::create_partitions(tx, c, &orig.name, ghost, tree).await?;
            findings.partitions = tree.partitions.iter().map(|p| (p.name.clone(), p.bound.clone())).collect();
            findings.unrouted = conversion::unrouted_condition(tx, tree).await?;
        }
        (_, Some(tree)) => partitions::create(tx, tree, &orig.name, ghost).await?,
        (_, None) => {}
    }
    conversion::create_stand_ins(tx, ghost, &stand_ins).await?;
    for index in indexes.iter().filter(|i| !stand_ins.iter().any(|s| s.index == i.name)) {
        create_original_index(tx, ghost, index).await?;
    }
    if let (None, Some(tree)) = (conversion, tree.as_ref()) {
        partitions::create_own_indexes(tx, tree).await?;
    }
    // Locked as late as can be (ACCESS EXCLUSIVE stops reads too): just before the first
    // statement that touches a referenced table.
    locks::lock(tx, &referenced.tables, wait.lock_timeout).await?;
    if let (None, Some(tree)) = (conversion, tree.as_ref()) {
        partitions::create_own_constraints(tx, tree).await?;
    }
    copy_foreign_keys(tx, orig.oid, ghost).await?;
    let ghost_oid = relation_oid(tx, ghost).await?;
    super::statistics::copy_from_original(tx, orig.oid, ghost_oid).await?;
    let attnum_names: HashMap<i16, String> =
        crate::inspect::columns(tx, ghost_oid).await?.into_iter().map(|c| (c.attnum, c.name)).collect();
    let before = datacheck::Before::read(tx, ghost_oid).await?;

    tx.batch_execute(&plan.ghost_sql).await.map_err(|e| {
        let e = Error::from(e);
        match e.kind() {
            // Not the ALTER's fault: "out of shared memory" is the lock table, say.
            ErrorKind::Resources => e.context("running the ALTER on the ghost table, the server ran out of a resource"),
            kind => Error::new(
                if kind == ErrorKind::Sql { ErrorKind::Refused } else { kind },
                format!("PostgreSQL rejected the ALTER on the ghost table: {}", e.message()),
            ),
        }
    })?;

    if let Some(c) = conversion {
        let kept = conversion::kept_stand_ins(tx, ghost_oid, &stand_ins).await?;
        findings.kept = Some(kept.clone());
        if let Some(refusal) = conversion::kept_refusal(&orig.name, &c.partition_by, &kept) {
            return Err(refusal);
        }
    }
    let after = crate::inspect::columns(tx, ghost_oid).await?;
    let source_key: Vec<(String, String)> =
        orig.key.columns.iter().cloned().zip(orig.key.types.iter().cloned()).collect();
    let mut mapping = Mapping::build(&attnum_names, &after, &plan.using, &source_key)?;
    if let Some(c) = conversion {
        // No unique index on the key alone can exist: writes conflict on the key and the
        // partition key's columns (see `Mapping::conflict_extra`).
        for column in &c.columns {
            let g = mapping.ghost_name_of(column).map(str::to_string).ok_or_else(|| {
                Error::refused(format!("the ALTER drops partition key column {}", ident(column)))
            })?;
            if !mapping.key_ghost.contains(&g) && !mapping.conflict_extra.contains(&g) {
                mapping.conflict_extra.push(g);
            }
        }
    }
    let original_names: HashMap<String, String> =
        indexes.iter().map(|i| (temp_name(&i.name), i.constraint.as_ref().map_or(&i.name, |(c, _)| c).clone())).collect();
    let data_checks = datacheck::clauses::read(
        tx,
        &before,
        &datacheck::After { ghost_oid, orig, columns: &after, mapping: &mapping, using: &plan.using, original_names: &original_names },
    )
    .await?;
    let conflict_key: Vec<String> = mapping.conflict_target().into_iter().map(str::to_string).collect();
    let SetAside { mut deferred, key_index, temp_key_index } = set_aside_indexes(tx, ghost, ghost_oid, &conflict_key, tree.is_some()).await?;
    if let Some(tree) = &tree {
        deferred.extend(partitions::set_aside_own_indexes(tx, tree).await?);
        deferred.extend(partitions::set_aside_own_constraints(tx, tree).await?);
    }
    let replica_identity_index = indexes.iter().find(|i| i.replica_identity).map(|i| temp_name(&i.name));
    let cluster_on = indexes.iter().find(|i| i.clustered).map(|i| temp_name(&i.name));
    let identity_always: Vec<String> = after.iter().filter(|c| c.identity == Identity::Always).map(|c| c.name.clone()).collect();
    for column in &identity_always {
        tx.batch_execute(&format!("ALTER TABLE {} ALTER COLUMN {} SET GENERATED BY DEFAULT", ghost.sql(), ident(column)))
            .await
            .with_context(|| format!("making the ghost's identity column {} BY DEFAULT while it is fed", ident(column)))?;
    }
    // Last, once the ALTER has run: a TOAST table it creates gets the setting too.
    // A partitioned table has no storage of its own and takes no storage parameters: its
    // leaves get the setting instead.
    let (autovacuum, partition_autovacuum) = match &tree {
        None => (Some(autovacuum::turn_off(tx, ghost, ghost_oid).await?), Vec::new()),
        Some(tree) => (None, partitions::autovacuum_off(tx, tree).await?),
    };
    let ghost = Ghost {
        name: ghost.clone(),
        oid: ghost_oid,
        mapping,
        alter: plan,
        deferred,
        key_index,
        temp_key_index,
        replica_identity_index,
        cluster_on,
        identity_always,
        autovacuum,
        partitions: tree,
        partition_autovacuum,
    };
    Ok(Prepared { ghost, after, data_checks })
}

/// Builds the indexes and constraints set aside before the copy.
pub async fn rebuild_deferred(client: &Client, ghost: &Ghost) -> Result<()> {
    rebuild_deferred_waiting(client, ghost, &LockWait::default()).await
}

/// [`rebuild_deferred`], adding foreign keys with waits bounded by `wait`: adding one takes
/// SHARE ROW EXCLUSIVE on the table it references, and while that waits for a long
/// transaction that wrote the referenced table, every write to it queues behind.
pub async fn rebuild_deferred_waiting(client: &Client, ghost: &Ghost, wait: &LockWait) -> Result<()> {
    rebuild(client, None, ghost, wait).await
}

/// [`rebuild_deferred_waiting`], building the plain indexes [`INDEXES_AT_ONCE`] at a time, on
/// sessions of `conn` beside `client` (a session of `conn` too), each opened again when its
/// connection is lost (see [`BuildSession`]). `client` may be left lost: the caller opens its
/// session again before its next use.
pub async fn rebuild_deferred_beside(client: &Client, conn: &ConnInfo, ghost: &Ghost, wait: &LockWait) -> Result<()> {
    rebuild(client, Some(conn), ghost, wait).await
}

/// How many plain indexes are built at once: measured on 2 cores, two `CREATE INDEX` of a
/// 2,000,000-row table side by side took 1.8 s against 2.7 s one after the other (each build
/// also has its parallel workers; more at once only queue for the same cores).
pub const INDEXES_AT_ONCE: usize = 2;

async fn rebuild(client: &Client, beside: Option<&ConnInfo>, ghost: &Ghost, wait: &LockWait) -> Result<()> {
    let mut main = BuildSession::new(client, beside);
    build_key_index_on(&mut main, ghost).await?;
    let (plain, others): (Vec<&Deferred>, Vec<&Deferred>) = ghost.deferred.iter().partition(|d| d.plain_index && beside.is_some());
    // Plain indexes first: nothing depends on them. Then the constraints in their order, the
    // foreign keys last (one may reference a unique constraint built just before).
    if let Some(conn) = beside.filter(|_| !plain.is_empty()) {
        let side_conn = conn.with_application_name("pg-ghost index build");
        let mut sessions = Vec::new();
        for _ in 1..INDEXES_AT_ONCE.min(plain.len()) {
            sessions.push(side_conn.connect().await?);
        }
        let queue = tokio::sync::Mutex::new(plain.into_iter());
        let mut side: Vec<BuildSession> = sessions.iter().map(|c| BuildSession::new(c, Some(&side_conn))).collect();
        let mut builders: Vec<futures_util::future::BoxFuture<'_, Result<()>>> = vec![Box::pin(build_from(&mut main, &queue, ghost, wait))];
        for session in side.iter_mut() {
            builders.push(Box::pin(build_from(session, &queue, ghost, wait)));
        }
        // The first failure drops the other builds: their sessions close and roll back.
        futures_util::future::try_join_all(builders).await?;
    }
    for d in others {
        build_one_on(&mut main, ghost, d, wait).await?;
    }
    let client = main.client();
    if let Some(index) = &ghost.replica_identity_index {
        if index_exists(client, ghost.oid, index).await? {
            client
                .batch_execute(&format!("ALTER TABLE {} REPLICA IDENTITY USING INDEX {}", ghost.name.sql(), ident(index)))
                .await
                .context("setting the ghost's replica identity")?;
        }
    }
    if let Some(index) = &ghost.cluster_on {
        if index_exists(client, ghost.oid, index).await? {
            client
                .batch_execute(&format!("ALTER TABLE {} CLUSTER ON {}", ghost.name.sql(), ident(index)))
                .await
                .context("marking the ghost's clustering index")?;
        }
    }
    Ok(())
}

/// Builds the key's unique index set aside for the copy, if it is not there yet; from then
/// on the apply can write the ghost by key. With `conn` (the session's own), a lost
/// connection is opened again and the build made good (see [`BuildSession`]); `client` may
/// then be left lost.
pub async fn build_key_index(client: &Client, conn: Option<&ConnInfo>, ghost: &Ghost) -> Result<()> {
    build_key_index_on(&mut BuildSession::new(client, conn), ghost).await
}

async fn build_key_index_on(session: &mut BuildSession<'_>, ghost: &Ghost) -> Result<()> {
    match &ghost.key_index {
        Some(d) => build_one_on(session, ghost, d, &LockWait::default()).await,
        None => Ok(()),
    }
}

/// Builds what `queue` hands out on `session`, until it is empty.
async fn build_from(session: &mut BuildSession<'_>, queue: &tokio::sync::Mutex<std::vec::IntoIter<&Deferred>>, ghost: &Ghost, wait: &LockWait) -> Result<()> {
    loop {
        let next = queue.lock().await.next();
        let Some(d) = next else { return Ok(()) };
        build_one_on(session, ghost, d, wait).await?;
    }
}

/// [`build_one`] on a session that is opened again when lost, the build then made good.
async fn build_one_on(session: &mut BuildSession<'_>, ghost: &Ghost, d: &Deferred, wait: &LockWait) -> Result<()> {
    let what = format!("building {} on the ghost", ident(&d.name));
    loop {
        let attempt = match session.prepare().await {
            Ok(()) => build_one(session.client(), ghost, d, wait).await,
            Err(e) => Err(e),
        };
        if !session.again(attempt, &what).await? {
            return Ok(());
        }
    }
}

/// Whether the ghost has the index on the key the apply writes by: true unless it was set
/// aside for the copy and is not built yet.
pub async fn has_key_index(client: &Client, ghost: &Ghost) -> Result<bool> {
    match &ghost.key_index {
        Some(d) => Ok(!matches!(built_on(client, ghost.oid, &d.name).await?, Built::No)),
        None => Ok(true),
    }
}

async fn build_one(client: &Client, ghost: &Ghost, d: &Deferred, wait: &LockWait) -> Result<()> {
    let started = std::time::Instant::now();
    match built_on(client, ghost.oid, &d.name).await? {
        // A resumed run finds what the earlier one built (each build is one transaction),
        // and still runs what follows it: the earlier run may have died in between, and
        // validating or commenting again changes nothing.
        Built::Validated | Built::NotValidated => {}
        // Only foreign keys are validated afterwards; an index locks nothing but the ghost.
        Built::No if d.locks_another_table() => add_foreign_key(client, d, wait).await?,
        Built::No => {
            client.batch_execute(&d.sql).await.with_context(|| format!("building {} on the ghost", ident(&d.name)))?;
        }
    }
    crate::fault::crash_point("built-before-finishing");
    if let Some(then) = &d.then {
        client.batch_execute(then).await.with_context(|| format!("finishing {} on the ghost (validating it, giving back its comments)", ident(&d.name)))?;
    }
    tracing::info!(name = %d.name, secs = started.elapsed().as_secs_f64(), "built on the ghost");
    Ok(())
}

/// Adds a foreign key set aside for the copy (`NOT VALID`), giving up on the referenced
/// table's lock after `wait.lock_timeout` and trying again after a back-off, so that writes
/// to that table never queue behind it for longer.
async fn add_foreign_key(client: &Client, d: &Deferred, wait: &LockWait) -> Result<()> {
    let bounded = format!("BEGIN; SET LOCAL lock_timeout = '{}ms'; {}; COMMIT", wait.lock_timeout.as_millis().max(1), d.sql);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match client.batch_execute(&bounded).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                // The failed statement leaves its transaction block open.
                let _ = client.batch_execute("ROLLBACK").await;
                let e = Error::from(e).context(format!("adding {} to the ghost", ident(&d.name)));
                locks::again(e, attempt, wait, "adding a foreign key to the ghost").await?;
            }
        }
    }
}

/// Whether the ALTER left this index of the original on the ghost.
async fn index_exists(client: &Client, table_oid: u32, index: &str) -> Result<bool> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = $1 AND c.relname = $2)",
            &[&table_oid, &index],
        )
        .await
        .context("looking for an index of the ghost")?;
    Ok(row.try_get(0)?)
}

/// Whether `name` exists on the ghost: a constraint or an index of it or of one of its
/// partitions (a partition's own index and foreign key are built again too).
enum Built {
    No,
    /// A foreign key added `NOT VALID`, not validated yet.
    NotValidated,
    Validated,
}

async fn built_on(client: &Client, ghost_oid: u32, name: &str) -> Result<Built> {
    let row = client
        .query_one(
            "WITH tree AS (SELECT $1::oid AS relid UNION SELECT relid FROM pg_partition_tree($1::oid::regclass))
             SELECT (SELECT bool_and(convalidated) FROM pg_constraint WHERE conrelid IN (SELECT relid FROM tree) AND conname = $2),
                    EXISTS (SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                             WHERE i.indrelid IN (SELECT relid FROM tree) AND c.relname = $2)",
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

async fn create_table(tx: &impl GenericClient, orig: &TableInfo, ghost: &QualifiedName, tree: Option<&PartitionTree>) -> Result<()> {
    let row = tx
        .query_one(
            "SELECT t.spcname FROM pg_class c LEFT JOIN pg_tablespace t ON t.oid = c.reltablespace WHERE c.oid = $1",
            &[&orig.oid],
        )
        .await?;
    let tablespace: Option<String> = row.try_get(0)?;
    let mut sql = format!("CREATE TABLE {} (LIKE {} INCLUDING ALL EXCLUDING INDEXES)", ghost.sql(), orig.name.sql());
    if let Some(tree) = tree {
        sql.push_str(&format!(" PARTITION BY {}", tree.partition_by));
    }
    if let Some(ts) = tablespace {
        sql.push_str(&format!(" TABLESPACE {}", ident(&ts)));
    }
    tx.batch_execute(&sql).await.context("creating the ghost table")?;
    keep_not_valid_not_nulls(tx, orig.oid, ghost).await
}

/// `LIKE` copies a not-null constraint added `NOT VALID` (PostgreSQL 18) as a valid one,
/// which the NULLs the original kept would break in the copy: on the ghost it is made
/// `NOT VALID` again, under its name and with its comment, as a plain ALTER keeps it.
async fn keep_not_valid_not_nulls(tx: &impl GenericClient, orig_oid: u32, ghost: &QualifiedName) -> Result<()> {
    let rows = tx
        .query(
            "SELECT conname::text, pg_get_constraintdef(oid), obj_description(oid, 'pg_constraint') FROM pg_catalog.pg_constraint
              WHERE conrelid = $1 AND contype = 'n' AND NOT convalidated ORDER BY oid",
            &[&orig_oid],
        )
        .await
        .context("reading the original's not-null constraints added NOT VALID")?;
    let g = ghost.sql();
    for r in rows {
        let (name, def, comment): (String, String, Option<String>) = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
        let name_sql = ident(&name);
        let mut sql = format!("ALTER TABLE {g} DROP CONSTRAINT {name_sql}; ALTER TABLE {g} ADD CONSTRAINT {name_sql} {def}");
        if let Some(c) = comment {
            sql.push_str(&format!("; COMMENT ON CONSTRAINT {name_sql} ON {g} IS {}", literal(&c)));
        }
        tx.batch_execute(&sql).await.with_context(|| format!("making not-null constraint {name:?} NOT VALID on the ghost, as on the original"))?;
    }
    Ok(())
}

/// What `LIKE ... INCLUDING ALL` leaves out: owner, grants, storage parameters (the TOAST
/// table's too), the table's comment, replica identity and row security. `FORCE ROW LEVEL SECURITY` waits for the swap:
/// forced on the ghost, policies would filter pg-ghost's own writes.
async fn copy_table_properties(tx: &impl GenericClient, orig: &TableInfo, ghost: &QualifiedName, partitioned: bool) -> Result<()> {
    let g = ghost.sql();
    let row = tx
        .query_one(
            "SELECT pg_get_userbyid(c.relowner), c.relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user),
                    coalesce(c.reloptions, '{}'), obj_description(c.oid, 'pg_class'), c.relreplident::text,
                    c.relrowsecurity, coalesce(t.reloptions, '{}')
               FROM pg_class c LEFT JOIN pg_class t ON t.oid = c.reltoastrelid WHERE c.oid = $1",
            &[&orig.oid],
        )
        .await?;
    let owner: String = row.try_get(0)?;
    let we_own: bool = row.try_get(1)?;
    // A partitioned table takes no storage parameters (a conversion refuses a table with
    // any, see `crate::inspect::conversion`).
    let reloptions: Vec<String> = if partitioned { Vec::new() } else { row.try_get(2)? };
    let comment: Option<String> = row.try_get(3)?;
    let replident: String = row.try_get(4)?;
    let toast_options: Vec<String> = if partitioned { Vec::new() } else { row.try_get(6)? };
    let mut sql = Vec::new();
    if !we_own {
        sql.push(format!("ALTER TABLE {g} OWNER TO {}", ident(&owner)));
    }
    for opt in &reloptions {
        if let Some((k, v)) = opt.split_once('=') {
            sql.push(format!("ALTER TABLE {g} SET ({} = {})", ident(k), literal(v)));
        }
    }
    // The TOAST table's own parameters are set through the table, as `pg_dump` does.
    for opt in &toast_options {
        if let Some((k, v)) = opt.split_once('=') {
            sql.push(format!("ALTER TABLE {g} SET (toast.{} = {})", ident(k), literal(v)));
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
    sql.extend(grant_statements(tx, orig.oid, &g).await?);
    for s in sql {
        tx.batch_execute(&s).await.with_context(|| format!("copying a table property to the ghost ({s})"))?;
    }
    Ok(())
}

/// Per-column statistics targets and options (`n_distinct`), which `LIKE` leaves out; set
/// before the ALTER runs, as they were on the original when a plain ALTER would run.
async fn copy_column_settings(tx: &impl GenericClient, oid: u32, ghost: &QualifiedName) -> Result<()> {
    let rows = tx
        .query(
            "SELECT attname::text, coalesce(attstattarget::int4, -1), coalesce(attoptions, '{}') FROM pg_attribute
              WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped AND (attstattarget >= 0 OR attoptions IS NOT NULL)
              ORDER BY attnum",
            &[&oid],
        )
        .await
        .context("reading column statistics settings")?;
    let g = ghost.sql();
    for r in rows {
        let column: String = r.try_get(0)?;
        let target: i32 = r.try_get(1)?;
        let options: Vec<String> = r.try_get(2)?;
        let c = ident(&column);
        let mut sql = Vec::new();
        if target >= 0 {
            sql.push(format!("ALTER TABLE {g} ALTER COLUMN {c} SET STATISTICS {target}"));
        }
        for opt in &options {
            if let Some((k, v)) = opt.split_once('=') {
                sql.push(format!("ALTER TABLE {g} ALTER COLUMN {c} SET ({} = {})", ident(k), literal(v)));
            }
        }
        for s in sql {
            tx.batch_execute(&s).await.with_context(|| format!("copying a column setting to the ghost ({s})"))?;
        }
    }
    Ok(())
}

/// The GRANTs that give `target` the privileges others hold on the relation `oid` and its
/// columns (the owner's own come with ownership).
pub(crate) async fn grant_statements(tx: &impl GenericClient, oid: u32, target: &str) -> Result<Vec<String>> {
    Ok(grants(tx, oid).await?.into_iter().map(|g| format!("GRANT {} ON {target} TO {}", g.privilege, g.grantee)).collect())
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
                    obj_description(i.indexrelid, 'pg_class'), obj_description(c.oid, 'pg_constraint'), i.indisreplident,
                    i.indisclustered
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
                clustered: r.try_get(7)?,
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

/// The original's foreign keys to other tables. A self-reference is left out: on the ghost it
/// would reference the original, and the ghost is not consistent with itself until the
/// swap, which adds it (see `crate::dependents`).
async fn copy_foreign_keys(tx: &impl GenericClient, oid: u32, ghost: &QualifiedName) -> Result<()> {
    let rows = tx
        .query(
            "SELECT conname::text, pg_get_constraintdef(oid), obj_description(oid, 'pg_constraint')
               FROM pg_constraint WHERE conrelid = $1 AND contype = 'f' AND confrelid <> $1 ORDER BY oid",
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
/// What [`set_aside_indexes`] dropped from the ghost, to build again after the copy.
struct SetAside {
    deferred: Vec<Deferred>,
    key_index: Option<Deferred>,
    temp_key_index: Option<String>,
}

/// Drops the ghost's indexes and index-backed constraints (and its foreign keys) to build
/// them after the copy: bulk-built indexes cost a fraction of row-by-row maintenance. The
/// key's unique index goes too, built first after the copy (the apply parks keys until
/// then; on a partitioned ghost it is built on every leaf in one statement), and a ghost
/// whose ALTER leaves the key without a unique index gets one of pg-ghost's own, built then
/// too, for the apply.
async fn set_aside_indexes(
    tx: &impl GenericClient,
    ghost: &QualifiedName,
    ghost_oid: u32,
    key: &[String],
    partitioned: bool,
) -> Result<SetAside> {
    let rows = tx
        .query(
            "SELECT ci.relname::text, pg_get_indexdef(i.indexrelid), c.conname::text, pg_get_constraintdef(c.oid),
                    i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
                      AND (SELECT array_agg(a.attname::text ORDER BY a.attname)
                             FROM unnest(i.indkey::int2[]) k JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k)
                          = (SELECT array_agg(x ORDER BY x) FROM unnest($2::text[]) x)
                      AND i.indnkeyatts = cardinality($2::text[]),
                    obj_description(i.indexrelid, 'pg_class'), obj_description(c.oid, 'pg_constraint')
               FROM pg_index i
               JOIN pg_class ci ON ci.oid = i.indexrelid
               LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid AND c.contype IN ('p', 'u', 'x')
              WHERE i.indrelid = $1
              ORDER BY c.contype = 'p' DESC NULLS LAST, i.indexrelid",
            &[&ghost_oid, &key],
        )
        .await
        .context("reading the ghost's indexes")?;
    let mut deferred = Vec::new();
    let mut key_index = None;
    let mut key_kept = false;
    for r in rows {
        let name: String = r.try_get(0)?;
        let indexdef: String = r.try_get(1)?;
        let constraint: Option<String> = r.try_get(2)?;
        let condef: Option<String> = r.try_get(3)?;
        let is_key: bool = r.try_get::<_, Option<bool>>(4)?.unwrap_or(false);
        let is_the_key = is_key && !key_kept;
        key_kept |= is_the_key;
        // Dropping it takes its comments along: given back once it is built again.
        let index_comment: Option<String> = r.try_get(5)?;
        let constraint_comment: Option<String> = r.try_get(6)?;
        let comments: Vec<String> = index_comment
            .map(|c| format!("COMMENT ON INDEX {} IS {}", ghost.sibling(name.clone()).sql(), literal(&c)))
            .into_iter()
            .chain(constraint.as_ref().zip(constraint_comment).map(|(con, c)| {
                format!("COMMENT ON CONSTRAINT {} ON {} IS {}", ident(con), ghost.sql(), literal(&c))
            }))
            .collect();
        let then = (!comments.is_empty()).then(|| comments.join(";\n"));
        let plain_index = constraint.is_none();
        let (drop, sql) = match (constraint, condef) {
            (Some(con), Some(def)) => (
                format!("ALTER TABLE {} DROP CONSTRAINT {}", ghost.sql(), ident(&con)),
                format!("ALTER TABLE {} ADD CONSTRAINT {} {def}", ghost.sql(), ident(&con)),
            ),
            // A partitioned table's index reads `ON ONLY`: built again, it must reach the partitions.
            _ if partitioned => (format!("DROP INDEX {}", ghost.sibling(name.clone()).sql()), sqltree::retarget_index(&indexdef, &name, ghost)?),
            _ => (format!("DROP INDEX {}", ghost.sibling(name.clone()).sql()), indexdef),
        };
        tx.batch_execute(&drop).await.with_context(|| format!("setting aside {} until after the copy", ident(&name)))?;
        match is_the_key {
            true => key_index = Some(Deferred { name, sql, then, plain_index, foreign_key: false }),
            false => deferred.push(Deferred { name, sql, then, plain_index, foreign_key: false }),
        }
    }
    deferred.extend(set_aside_foreign_keys(tx, ghost, ghost_oid, partitioned).await?);
    let temp_key_index = if key_kept {
        None
    } else {
        let name = fit_ident(&format!("{}_key", ghost.name));
        let create = format!("CREATE UNIQUE INDEX {} ON {} ({})", ident(&name), ghost.sql(), ident_list(key.iter().map(String::as_str)));
        key_index = Some(Deferred { name: name.clone(), sql: create, then: None, plain_index: true, foreign_key: false });
        Some(name)
    };
    Ok(SetAside { deferred, key_index, temp_key_index })
}

/// Foreign keys are checked once, after the copy (`NOT VALID`, then `VALIDATE`), rather
/// than row by row during it.
/// Foreign keys, and CHECKs and not-null constraints (PostgreSQL 18) added `NOT VALID`, are
/// dropped from the ghost and added back after the copy: a `NOT VALID` constraint spares
/// the rows that exist when it is added, which for a plain ALTER are all of them, while
/// every row the copy writes would be checked. A foreign key that was valid is validated
/// once it is back.
///
/// PostgreSQL 15 cannot add a foreign key `NOT VALID` on a partitioned table: there the
/// foreign keys stay on the ghost and check the rows as they are copied.
///
/// Only the table's own constraints: on a partition, those it has as copies of its parent's
/// go with the parent's.
pub(super) async fn set_aside_foreign_keys(tx: &impl GenericClient, ghost: &QualifiedName, ghost_oid: u32, partitioned: bool) -> Result<Vec<Deferred>> {
    let (drops, deferred) = foreign_keys_to_set_aside(tx, ghost, ghost_oid, partitioned).await?;
    for d in drops {
        tx.batch_execute(&d).await?;
    }
    Ok(deferred)
}

/// What [`set_aside_foreign_keys`] sets aside: the statements that drop them, and what adds
/// them again.
pub(super) async fn foreign_keys_to_set_aside(
    tx: &impl GenericClient,
    ghost: &QualifiedName,
    ghost_oid: u32,
    partitioned: bool,
) -> Result<(Vec<String>, Vec<Deferred>)> {
    let rows = tx
        .query(
            "SELECT conname::text, pg_get_constraintdef(oid), convalidated, obj_description(oid, 'pg_constraint'), contype = 'f' FROM pg_constraint
              WHERE conrelid = $1 AND conparentid = 0 AND coninhcount = 0
                AND ((contype = 'f' AND NOT $2) OR (contype IN ('c', 'n') AND NOT convalidated)) ORDER BY oid",
            &[&ghost_oid, &partitioned],
        )
        .await?;
    let (mut drops, mut out) = (Vec::new(), Vec::new());
    for r in rows {
        let name: String = r.try_get(0)?;
        let def: String = r.try_get(1)?;
        let validated: bool = r.try_get(2)?;
        let comment: Option<String> = r.try_get(3)?;
        let foreign_key: bool = r.try_get(4)?;
        let g = ghost.sql();
        drops.push(format!("ALTER TABLE {g} DROP CONSTRAINT {}", ident(&name)));
        let def = if validated { format!("{def} NOT VALID") } else { def };
        // Dropping it took its comment along.
        let then: Vec<String> = validated
            .then(|| format!("ALTER TABLE {g} VALIDATE CONSTRAINT {}", ident(&name)))
            .into_iter()
            .chain(comment.map(|c| format!("COMMENT ON CONSTRAINT {} ON {g} IS {}", ident(&name), literal(&c))))
            .collect();
        out.push(Deferred {
            sql: format!("ALTER TABLE {g} ADD CONSTRAINT {} {def}", ident(&name)),
            then: (!then.is_empty()).then(|| then.join(";\n")),
            name,
            plain_index: false,
            foreign_key,
        });
    }
    Ok((drops, out))
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
