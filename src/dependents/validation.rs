//! The foreign keys the swap added `NOT VALID`, validated after the commit, one at a time:
//! `VALIDATE CONSTRAINT` takes SHARE UPDATE EXCLUSIVE on its table, so writes go on.

use super::ForeignKey;
use crate::error::{Error, ErrorKind, Result};
use crate::sql::{ident, literal, QualifiedName};
use std::time::Duration;
use tokio_postgres::Client;

/// A foreign key added `NOT VALID` in the swap, validated after the commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validation {
    pub constraint: String,
    pub table: QualifiedName,
    /// The key of a partitioned table. PostgreSQL 15 cannot add it `NOT VALID` there, and
    /// adding it valid would scan every partition under the swap's lock; so the swap adds it
    /// `NOT VALID` on each leaf partition, each is validated after the commit, and then the
    /// key is added on the partitioned table, which adopts the valid copies without a scan.
    pub partitioned: Option<PartitionedKey>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionedKey {
    /// `pg_get_constraintdef` of the key on the partitioned table.
    pub definition: String,
    pub comment: Option<String>,
    pub leaves: Vec<Validation>,
}

impl Validation {
    pub fn sql(&self) -> String {
        format!("ALTER TABLE {} VALIDATE CONSTRAINT {}", self.table.sql(), ident(&self.constraint))
    }

    /// What the swap runs, after the renames, to add the key again.
    pub(super) fn add_sql(fk: &ForeignKey) -> Vec<String> {
        let name = ident(&fk.name);
        if fk.partitioned {
            return fk
                .leaves
                .iter()
                .map(|(leaf, constraint)| {
                    format!("ALTER TABLE {} ADD CONSTRAINT {} {} NOT VALID", leaf.sql(), ident(constraint), fk.definition)
                })
                .collect();
        }
        let not_valid = if fk.validated { " NOT VALID" } else { "" };
        let mut sql = vec![format!("ALTER TABLE {} ADD CONSTRAINT {name} {}{not_valid}", fk.table.sql(), fk.definition)];
        if let Some(c) = &fk.comment {
            sql.push(format!("COMMENT ON CONSTRAINT {name} ON {} IS {}", fk.table.sql(), literal(c)));
        }
        sql
    }

    /// Adds the key on the partitioned table once every leaf's copy is valid.
    fn adopt_sql(&self) -> Vec<String> {
        let Some(p) = &self.partitioned else { return Vec::new() };
        let name = ident(&self.constraint);
        let mut sql = vec![format!("ALTER TABLE {} ADD CONSTRAINT {name} {}", self.table.sql(), p.definition)];
        if let Some(c) = &p.comment {
            sql.push(format!("COMMENT ON CONSTRAINT {name} ON {} IS {}", self.table.sql(), literal(c)));
        }
        sql
    }
}

/// Validates them, one at a time. One that fails stays `NOT VALID`, is named with
/// PostgreSQL's reason (which names a violating key), and fails the run after the others
/// were tried: the swap itself has committed. A partitioned table's key is added back on the
/// partitioned table once all its partitions' copies are valid; that takes ACCESS EXCLUSIVE
/// on the new table for a moment (no scan), so its lock wait is bounded by `lock_timeout`
/// and retried up to `retries` times, as the cut-over's.
pub async fn validate(client: &Client, validations: &[Validation], lock_timeout: Duration, retries: u32) -> Result<()> {
    let mut failed = Vec::new();
    for (i, v) in validations.iter().enumerate() {
        tracing::info!(constraint = %v.constraint, table = %v.table, done = i, of = validations.len(), "validating a moved foreign key");
        let Some(p) = &v.partitioned else {
            failed.extend(validate_one(client, v).await);
            continue;
        };
        let leaves_failed: Vec<String> = {
            let mut out = Vec::new();
            for leaf in &p.leaves {
                out.extend(validate_one(client, leaf).await);
            }
            out
        };
        if !leaves_failed.is_empty() {
            failed.push(format!(
                "{} on partitioned table {} exists NOT VALID on each partition until every partition's copy is valid ({}); then run {}",
                ident(&v.constraint),
                v.table,
                leaves_failed.join("; "),
                v.adopt_sql().join("; ")
            ));
            continue;
        }
        if let Err(e) = adopt(client, v, lock_timeout, retries).await {
            tracing::error!(constraint = %v.constraint, table = %v.table, error = %e, "the key could not be added back on the partitioned table");
            failed.push(format!(
                "{} on partitioned table {} is valid on each partition but could not be added back on {} ({}); run {}",
                ident(&v.constraint),
                v.table,
                v.table,
                e.message(),
                v.adopt_sql().join("; ")
            ));
        }
    }
    if failed.is_empty() {
        return Ok(());
    }
    Err(Error::new(ErrorKind::Sql, format!("the swap committed, but these foreign keys are NOT VALID: {}", failed.join("; "))))
}

async fn validate_one(client: &Client, v: &Validation) -> Option<String> {
    let started = std::time::Instant::now();
    match client.batch_execute(&v.sql()).await {
        Ok(()) => {
            tracing::info!(constraint = %v.constraint, table = %v.table, secs = started.elapsed().as_secs_f64(), "foreign key valid");
            None
        }
        Err(e) => {
            let e = Error::from(e);
            tracing::error!(constraint = %v.constraint, table = %v.table, error = %e, "foreign key could not be validated; it stays NOT VALID");
            Some(format!("{} on {} ({}): fix the rows, then run {}", ident(&v.constraint), v.table, e.message(), v.sql()))
        }
    }
}

/// Adds the key on the partitioned table, which adopts its partitions' valid copies.
async fn adopt(client: &Client, v: &Validation, lock_timeout: Duration, retries: u32) -> Result<()> {
    let sql = format!(
        "BEGIN; SET LOCAL lock_timeout = '{}ms'; {}; COMMIT",
        lock_timeout.as_millis().max(1),
        v.adopt_sql().join("; ")
    );
    let backoff = crate::error::Backoff { initial: Duration::from_millis(250), max: Duration::from_secs(5), attempts: u32::MAX };
    let mut attempt = 0;
    loop {
        attempt += 1;
        match client.batch_execute(&sql).await.map_err(Error::from) {
            Ok(()) => {
                tracing::info!(constraint = %v.constraint, table = %v.table, "foreign key added back on the partitioned table; it adopted its partitions' valid copies");
                return Ok(());
            }
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                if e.kind() != ErrorKind::LockTimeout || attempt >= retries.max(1) {
                    return Err(e);
                }
                tracing::warn!(constraint = %v.constraint, table = %v.table, attempt, "adding the key back on the partitioned table waited too long for its locks; retrying");
                tokio::time::sleep(backoff.delay(attempt)).await;
            }
        }
    }
}
