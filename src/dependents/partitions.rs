//! What hangs on one partition of a partitioned table rather than on the table, and moves
//! to the new partition of the same name in the swap as the table's own dependents move to
//! the new table: its own triggers (not the copies of the table's), rules, policies, `FORCE ROW
//! LEVEL SECURITY`, views and other relations' rules that read it, publications that list it,
//! and its and its columns' security labels.
//!
//! Invariants:
//! - Read under the same empty `search_path` as the table's dependents: a trigger's or view's
//!   text names `public.orders_t1`, which after the renames means the new partition.
//! - None of them exists on the ghost's partitions before the swap, so none acts on pg-ghost's
//!   writes (a partition's triggers fire on rows the copy and the apply route into it; its
//!   rules would act only on statements that name it, which pg-ghost's do not).
//! - One query finds the partitions that have any (most have none), so that reading them under
//!   the cut-over's lock costs one round trip for a tree of many bare partitions.
//! - Materialized views that read a partition stay refused (`crate::inspect::partitions`).

use super::catalog;
use super::Dependents;
use crate::error::{Context, Result};
use crate::sql::QualifiedName;
use tokio_postgres::GenericClient;

/// One partition and what it has of its own that moves with it. In `dependents` only the
/// views, rules (its own and other relations' that read it), triggers, policies,
/// publications, row security, security labels and column dependents are read.
#[derive(Clone, Debug)]
pub struct PartitionDependents {
    pub partition: QualifiedName,
    pub dependents: Dependents,
}

/// The partitions of `root` (none when it is not partitioned) that have anything of their
/// own to move, parents first.
pub(super) async fn read(tx: &impl GenericClient, root: u32, own_publication: &str) -> Result<Vec<PartitionDependents>> {
    let having = "c.relforcerowsecurity
                  OR EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = c.oid AND NOT g.tgisinternal AND g.tgparentid = 0)
                  OR EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid)
                  OR EXISTS (SELECT 1 FROM pg_rewrite r WHERE r.ev_class = c.oid AND r.rulename <> '_RETURN')
                  OR EXISTS (SELECT 1 FROM pg_publication_rel pr WHERE pr.prrelid = c.oid)
                  OR EXISTS (SELECT 1 FROM pg_seclabel l WHERE l.classoid = 'pg_class'::regclass AND l.objoid = c.oid)
                  OR EXISTS (SELECT 1 FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
                              WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
                                AND d.refobjid = c.oid AND r.ev_class <> c.oid)";
    let found = partitions_where(tx, root, having, "objects of their own").await?;
    // Under the cut-over's lock: every partition's reads go out together (see `catalog::read`).
    let reads = found.into_iter().map(|(oid, partition, force_row_security)| async move {
        let ((views, foreign_rules, _), rules, triggers, policies, publications, column_dependents, security_labels) = tokio::try_join!(
            biased;
            catalog::rewrite_dependents(tx, oid),
            catalog::rules(tx, oid),
            catalog::triggers(tx, oid),
            catalog::policies(tx, oid),
            catalog::publications(tx, oid, own_publication),
            catalog::column_dependents(tx, oid),
            catalog::security_labels(tx, oid),
        )?;
        let dependents = Dependents {
            views,
            foreign_rules,
            rules,
            triggers,
            policies,
            publications,
            column_dependents,
            force_row_security,
            security_labels,
            ..Dependents::default()
        };
        Ok::<_, crate::error::Error>(PartitionDependents { partition, dependents })
    });
    futures_util::future::try_join_all(reads).await
}

/// The partitions of `root` (none when it is not partitioned), parents first, for which
/// `having` holds (an SQL condition on `c`, the partition's `pg_class` row), with whether row
/// security is forced on each; `what` names the condition in an error. One query, however many
/// partitions the tree has: it runs under the cut-over's lock.
pub(super) async fn partitions_where(tx: &impl GenericClient, root: u32, having: &str, what: &str) -> Result<Vec<(u32, QualifiedName, bool)>> {
    let rows = tx
        .query(
            &format!(
                "SELECT c.oid, n.nspname::text, c.relname::text, c.relforcerowsecurity
                   FROM pg_partition_tree($1::oid::regclass) t
                   JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE t.level > 0 AND ({having})
                  ORDER BY t.level, n.nspname, c.relname"
            ),
            &[&root],
        )
        .await
        .with_context(|| format!("reading which partitions have {what}"))?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, QualifiedName::new(r.try_get::<_, String>(1)?, r.try_get::<_, String>(2)?), r.try_get(3)?)))
        .collect()
}
