//! Check 10 of the ghost way: the server's lock table must hold what one transaction of the
//! run takes on a partitioned table.
//!
//! PostgreSQL keeps every lock a transaction holds until it ends, in one table shared by all
//! sessions, sized at start from `max_locks_per_transaction` times the number of server
//! processes and prepared transactions. Two of pg-ghost's transactions lock a whole partition
//! tree at once: the ghost's creation (tried first on a trial ghost, then for real), which
//! locks every new partition, its TOAST table, TOAST index, row types and indexes; and the
//! cut-over, which locks both trees and renames every partition and index of both. On a
//! tree of many partitions either can run the table out ("out of shared memory"): the trial
//! fails with a message that blames the ALTER, or, worse, the cut-over fails after hours of
//! copying. Counted here first, the run is refused before anything is made, with the setting
//! to raise.

use super::get;
use crate::error::{Context, Error, Result};
use crate::sql::QualifiedName;
use tokio_postgres::Client;
use tracing::warn;

/// Locks the ghost's creation takes per table of the tree besides its indexes, as measured
/// on PostgreSQL 15: the table, its TOAST table (two modes), the TOAST table's index and the
/// two row types (the table's and its array's), with one to spare.
const CREATION_LOCKS_PER_TABLE: i64 = 7;

/// What the run will lock, and what the server can hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct LockCapacity {
    /// Tables of the tree: the root and every partition (1 for a plain table).
    pub tables: i64,
    /// Indexes on them.
    pub indexes: i64,
    pub max_locks_per_transaction: i64,
    /// Server processes and prepared transactions the lock table is sized for.
    pub slots: i64,
}

impl LockCapacity {
    pub(super) async fn read(client: &Client, oid: u32) -> Result<LockCapacity> {
        let row = client
            .query_one(
                // pg_partition_tree lists nothing for a table outside any partition tree.
                "WITH tree AS (SELECT relid FROM pg_partition_tree($1::oid::regclass) UNION SELECT $1::oid::regclass)
                 SELECT (SELECT count(*) FROM tree) AS tables,
                        (SELECT count(*) FROM tree t JOIN pg_index i ON i.indrelid = t.relid) AS indexes,
                        current_setting('max_locks_per_transaction')::int8 AS max_locks,
                        current_setting('max_connections')::int8
                          -- PostgreSQL 18 sizes for autovacuum_worker_slots and two special workers.
                          + coalesce(current_setting('autovacuum_worker_slots', true)::int8 + 2, current_setting('autovacuum_max_workers')::int8 + 1)
                          + current_setting('max_worker_processes')::int8 + current_setting('max_wal_senders')::int8
                          + current_setting('max_prepared_transactions')::int8 AS slots",
                &[&oid],
            )
            .await
            .context("reading the size of the lock table")?;
        Ok(LockCapacity {
            tables: get(&row, "tables")?,
            indexes: get(&row, "indexes")?,
            max_locks_per_transaction: get(&row, "max_locks")?,
            slots: get(&row, "slots")?,
        })
    }

    /// The same server with this plain table converted into one partitioned into
    /// `partitions` (`--partition-by`): each partition gets the table's indexes.
    pub(super) fn converted_into(&self, partitions: usize) -> LockCapacity {
        let tables = 1 + partitions as i64;
        LockCapacity { tables, indexes: self.indexes * tables, ..self.clone() }
    }

    /// Locks held at once by the larger of the two transactions.
    pub(super) fn needed(&self) -> i64 {
        let creation = self.tables * CREATION_LOCKS_PER_TABLE + self.indexes;
        let cut_over = 2 * (self.tables + self.indexes);
        creation.max(cut_over)
    }

    pub(super) fn capacity(&self) -> i64 {
        self.max_locks_per_transaction * self.slots
    }
}

/// Refuses when the run's largest transaction would not fit in the lock table; warns when it
/// would take more than half of it (the application's sessions share it).
pub(super) fn check(table: &QualifiedName, l: &LockCapacity) -> Result<()> {
    let (needed, capacity) = (l.needed(), l.capacity());
    // Room for the run and as much again for everyone else.
    let advised = (2 * needed + l.slots - 1) / l.slots.max(1);
    let what = format!(
        "the ghost of {table} (a tree of {} tables and {} indexes) takes about {needed} locks in one transaction (the ghost's creation, \
         then the cut-over, which renames every partition and index of both trees), and this server's lock table holds \
         about {capacity} (max_locks_per_transaction {} times {} server processes and prepared transactions)",
        l.tables, l.indexes, l.max_locks_per_transaction, l.slots
    );
    if needed > capacity {
        return Err(Error::refused(format!(
            "{what}: the run would fail with \"out of shared memory\"; raise max_locks_per_transaction to {advised}, room for \
             the run and as much again for the application (ALTER SYSTEM SET max_locks_per_transaction = {advised}, then \
             restart the server)"
        )));
    }
    if 2 * needed > capacity {
        warn!(
            table = %table, needed, capacity,
            "{what}: more than half of it, which the application's sessions share; if the cut-over fails with \"out of \
             shared memory\", raise max_locks_per_transaction to {advised} (a restart)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn tree(tables: i64, indexes: i64, max_locks: i64) -> LockCapacity {
        LockCapacity { tables, indexes, max_locks_per_transaction: max_locks, slots: 122 }
    }

    #[test]
    fn the_larger_transaction_counts() {
        // 500 partitions with 3 indexes each: creating the ghost's tree locks more.
        assert_eq!(tree(501, 1503, 64).needed(), 501 * 7 + 1503);
        // Many indexes per partition: the cut-over locks more.
        assert_eq!(tree(11, 110, 64).needed(), 2 * 121);
        assert_eq!(tree(1, 3, 64).capacity(), 64 * 122);
    }

    #[test]
    fn a_tree_the_lock_table_cannot_hold_is_refused_with_the_setting_to_raise() {
        let t = QualifiedName::new("public", "events");
        let e = check(&t, &tree(1001, 3003, 64)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Refused);
        let m = e.to_string();
        assert!(m.contains("1001 tables and 3003 indexes"), "{m}");
        assert!(m.contains("about 10010 locks"), "{m}");
        assert!(m.contains("holds about 7808"), "{m}");
        // Twice what the run needs, spread over the 122 slots: 20020 / 122, rounded up.
        assert!(m.contains("max_locks_per_transaction = 165"), "{m}");
    }

    #[test]
    fn a_conversion_counts_the_partitions_it_makes() {
        let plain = tree(1, 2, 64);
        let converted = plain.converted_into(1095);
        assert_eq!((converted.tables, converted.indexes), (1096, 2192));
        assert!(check(&QualifiedName::new("public", "events"), &converted).is_err());
        assert!(check(&QualifiedName::new("public", "events"), &plain.converted_into(36)).is_ok());
    }

    #[test]
    fn a_plain_table_or_a_small_tree_passes() {
        let t = QualifiedName::new("public", "orders");
        assert!(check(&t, &tree(1, 4, 64)).is_ok());
        assert!(check(&t, &tree(61, 183, 64)).is_ok());
        // 5010 of 7808: over half the table, a warning, not a refusal.
        assert!(check(&t, &tree(501, 1503, 64)).is_ok());
        assert!(check(&t, &tree(501, 1503, 40)).is_err());
    }
}
