//! The concurrent workload on an oracle table and its control.
//!
//! Invariant: every workload transaction applies the same change to the table and to its
//! control, in one transaction, so at every commit boundary the two hold the same rows. The
//! control is a plain table nobody migrates; after a run the migrated table must equal it,
//! transformed by the ALTER (see [`super::compare`]).
//!
//! Choices worth knowing:
//!
//! - **Key changes with `GENERATED ALWAYS`.** PostgreSQL rejects `UPDATE t SET id = 42` on an
//!   identity `ALWAYS` column ("column "id" can only be updated to DEFAULT"); `UPDATE` has no
//!   `OVERRIDING` clause. It does accept `SET id = DEFAULT`, which draws the next value of the
//!   identity sequence: a real primary-key change (the row leaves its key and appears at the
//!   top of the key range). The workload uses that, reads the new id with `RETURNING` and
//!   gives the control row the same id in the same statement. The composite variant
//!   (`PRIMARY KEY (tenant, id)`) also changes `tenant`, a key column with no identity.
//!   After the cut-over `SET id = DEFAULT` draws from the migrated table's sequence, so a
//!   sequence not carried past the original's values shows up as a duplicate-key error.
//!
//! - **The table swapped underneath.** At cut-over the name stays and the OID changes. Seen
//!   on PostgreSQL 15 with a server-side prepared statement: `SELECT * FROM t` prepared
//!   before a swap to a table of another shape fails with "cached plan must not change result
//!   type" (0A000); `INSERT ... RETURNING id` with an unchanged result type is silently
//!   re-planned against the new table; a literal bound at prepare time for a column whose
//!   type changed fails with "invalid input syntax for type integer". So the workload uses
//!   the simple query protocol only (nothing is prepared or cached; every statement is parsed
//!   against the table the name points to when it runs) and writes untyped literals, which
//!   take the type of whichever column receives them.
//!
//! - **Columns the ALTER changes incompatibly** (`TYPE int USING length(label)`, a drop):
//!   writing them after the swap would fail, and writing them before it is what tests the
//!   engine's transformation of streamed changes. [`WorkloadOptions::freeze_at_swap`] names
//!   them; each transaction starts with `LOCK TABLE t IN ROW EXCLUSIVE MODE` (the lock its
//!   writes take anyway) and reads `'t'::regclass`. Holding that lock, the name cannot be
//!   swapped before the transaction ends (the cut-over's ACCESS EXCLUSIVE waits for it), so
//!   the OID read tells exactly which table this transaction writes: before the swap it
//!   writes every column, after it it leaves the frozen columns alone (inserts leave them
//!   NULL on both sides). It also counts the transactions committed after the swap.
//!
//! - **Row counts are checked per statement.** Each statement on the table and its twin on
//!   the control must touch the same number of rows; a difference means the table lost or
//!   gained a row, and is reported as an error at once (the final comparison may no longer
//!   see it if a later delete removed the row from both).
//!
//! - **Repeatable read.** The statement on the table and its twin on the control must see the
//!   same rows, or the per-statement count check above would fire on a race of the workload
//!   itself: under read committed each statement takes a new snapshot, so a concurrent insert
//!   committing between the two is seen by the second only. Under repeatable read both share
//!   the transaction's snapshot, and a row changed concurrently makes the statement fail with
//!   a serialization error instead of re-reading it. The snapshot is taken by the `SELECT`
//!   after the `LOCK` (`LOCK TABLE` takes none), so it already sees a completed swap.
//!
//! - **Errors.** Deadlock (40P01), serialization failure (40001) and lock timeout (55P03) are
//!   retried (with newly drawn targets); anything else is recorded in
//!   [`WorkloadReport::errors`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::compare::db_message;
use super::literal;
use super::table::{KeyKind, OracleTable, DATA_COLUMNS};
use super::writer::ClientLoop;
use crate::harness::TestDb;

/// How the workload runs.
#[derive(Clone, Debug)]
pub struct WorkloadOptions {
    /// Concurrent clients, each on its own connection.
    pub clients: usize,
    /// Pace per client; `None` runs flat out (mind the two cores).
    pub ops_per_sec_per_client: Option<u32>,
    /// Columns written only while the original table is in place (see the module docs).
    pub freeze_at_swap: Vec<String>,
    /// Client `i` draws from `StdRng::seed_from_u64(seed + i)`; printed on failure.
    pub seed: u64,
}

impl WorkloadOptions {
    pub fn new(clients: usize) -> WorkloadOptions {
        WorkloadOptions { clients, ops_per_sec_per_client: Some(200), freeze_at_swap: Vec::new(), seed: rand::random() }
    }

    pub fn rate(mut self, ops_per_sec_per_client: Option<u32>) -> WorkloadOptions {
        self.ops_per_sec_per_client = ops_per_sec_per_client;
        self
    }

    pub fn freeze_at_swap(mut self, columns: &[&str]) -> WorkloadOptions {
        for c in columns {
            assert!(DATA_COLUMNS.contains(c), "the workload only writes {DATA_COLUMNS:?} (and the key); cannot freeze {c:?}");
        }
        self.freeze_at_swap = columns.iter().map(|c| c.to_string()).collect();
        self
    }

    pub fn seed(mut self, seed: u64) -> WorkloadOptions {
        self.seed = seed;
        self
    }
}

/// What the workload did.
#[derive(Clone, Debug, Default)]
pub struct WorkloadReport {
    pub committed_txns: u64,
    /// Transactions that wrote the table after its OID changed (after the cut-over).
    pub committed_after_swap: u64,
    /// Committed transactions per kind of operation.
    pub committed_by_op: BTreeMap<&'static str, u64>,
    /// The same, counting only transactions after the swap (e.g. `"insert"`: inserts through
    /// the migrated table's identity default).
    pub committed_after_swap_by_op: BTreeMap<&'static str, u64>,
    /// Deadlocks, serialization failures and lock timeouts that were retried.
    pub retried: u64,
    /// The longest transaction attempt, from `BEGIN` to the end of `COMMIT` or to its error
    /// (lock waits included).
    pub max_txn_latency: Duration,
    /// Every other error, and every row-count disagreement between table and control.
    pub errors: Vec<String>,
    pub seed: u64,
}

/// The `(lo, hi)` key range deletes and updates aim at while set (inclusive), e.g. the
/// range a copy chunk is reading right now. Inserts go on as usual.
pub type TargetRange = Arc<Mutex<Option<(i64, i64)>>>;

pub(super) struct Shared {
    pub(super) committed: AtomicU64,
    pub(super) committed_after_swap: AtomicU64,
    pub(super) retried: AtomicU64,
    pub(super) max_latency_us: AtomicU64,
    pub(super) max_id: AtomicI64,
    pub(super) by_op: Mutex<BTreeMap<&'static str, u64>>,
    pub(super) after_swap_by_op: Mutex<BTreeMap<&'static str, u64>>,
    pub(super) errors: Mutex<Vec<String>>,
    pub(super) target: TargetRange,
    pub(super) progress: Notify,
}

impl Shared {
    pub(super) fn error(&self, msg: String) {
        self.errors.lock().unwrap().push(msg);
        self.progress.notify_waiters();
    }
}

/// A running workload; [`Workload::stop`] it to get the report.
pub struct Workload {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
    seed: u64,
}

/// The SQL a client needs, computed once.
pub(super) struct TableSql {
    pub(super) q: String,
    pub(super) qc: String,
    pub(super) regclass: String,
    pub(super) kind: KeyKind,
    pub(super) original_oid: String,
    pub(super) frozen: Vec<String>,
}

impl Workload {
    /// Starts `options.clients` clients writing to `table` and its control until stopped.
    /// Call it from a multi-threaded runtime (`#[tokio::test(flavor = "multi_thread")]`) if
    /// the test also blocks (psql, std::process): a blocked current-thread runtime stalls the
    /// clients mid-transaction, with their locks held.
    pub async fn start(db: &TestDb<'_>, table: &OracleTable, options: WorkloadOptions) -> Workload {
        assert!(options.clients > 0, "a workload needs at least one client");
        let client = db.client().await;
        let regclass = literal(&table.qualified());
        let original_oid: String = client
            .query_one(&format!("SELECT {regclass}::regclass::oid::text"), &[])
            .await
            .unwrap_or_else(|e| panic!("table {} not found: {}", table.qualified(), db_message(&e)))
            .get(0);
        let max_id: i64 =
            client.query_one(&format!("SELECT coalesce(max(id), 0) FROM {}", table.control_qualified()), &[]).await.unwrap().get(0);
        let sql = Arc::new(TableSql {
            q: table.qualified(),
            qc: table.control_qualified(),
            regclass,
            kind: table.kind,
            original_oid,
            frozen: options.freeze_at_swap.clone(),
        });
        let shared = Arc::new(Shared {
            committed: AtomicU64::new(0),
            committed_after_swap: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            max_latency_us: AtomicU64::new(0),
            max_id: AtomicI64::new(max_id),
            by_op: Mutex::new(BTreeMap::new()),
            after_swap_by_op: Mutex::new(BTreeMap::new()),
            errors: Mutex::new(Vec::new()),
            target: Arc::new(Mutex::new(None)),
            progress: Notify::new(),
        });
        let (stop, stop_rx) = watch::channel(false);
        let tasks = (0..options.clients)
            .map(|i| {
                let conninfo = format!("{} application_name=oracle_workload_{i}", db.client_conninfo());
                let client = ClientLoop::new(
                    i,
                    conninfo,
                    sql.clone(),
                    shared.clone(),
                    options.seed.wrapping_add(i as u64),
                    options.ops_per_sec_per_client,
                );
                tokio::spawn(client.run(stop_rx.clone()))
            })
            .collect();
        Workload { stop, tasks, shared, seed: options.seed }
    }

    /// The shared key range the next deletes and updates aim at; set it to `Some((lo, hi))`,
    /// back to `None` to spread them over all keys again.
    pub fn target_range(&self) -> TargetRange {
        self.shared.target.clone()
    }

    pub fn committed(&self) -> u64 {
        self.shared.committed.load(Ordering::SeqCst)
    }

    pub fn committed_after_swap(&self) -> u64 {
        self.shared.committed_after_swap.load(Ordering::SeqCst)
    }

    pub fn error_count(&self) -> usize {
        self.shared.errors.lock().unwrap().len()
    }

    /// Waits until `n` more transactions than now have committed (at most `timeout`).
    pub async fn wait_for_more_commits(&self, n: u64, timeout: Duration) {
        let goal = self.committed() + n;
        self.wait_until(timeout, &format!("{goal} committed transactions"), || self.committed() >= goal).await;
    }

    /// Waits until at least `n` errors have been recorded (at most `timeout`).
    pub async fn wait_for_errors(&self, n: usize, timeout: Duration) {
        self.wait_until(timeout, &format!("{n} workload errors"), || self.error_count() >= n).await;
    }

    async fn wait_until(&self, timeout: Duration, what: &str, cond: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before the check: a notification between check and await is kept.
            let notified = self.shared.progress.notified();
            if cond() {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "workload: waited {timeout:?} for {what}; committed {}, errors {:?}",
                    self.committed(),
                    self.shared.errors.lock().unwrap()
                );
            }
        }
    }

    /// Stops the clients after their current transaction and reports. A client stuck longer
    /// than 60 s (a lock never released) is aborted and reported as an error.
    pub async fn stop(self) -> WorkloadReport {
        let _ = self.stop.send(true);
        for (i, task) in self.tasks.into_iter().enumerate() {
            let abort = task.abort_handle();
            match tokio::time::timeout(Duration::from_secs(60), task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => self.shared.error(format!("client {i} panicked: {e}")),
                Err(_) => {
                    abort.abort();
                    self.shared.error(format!("client {i} did not stop within 60 s (blocked on a lock?)"));
                }
            }
        }
        let s = &self.shared;
        WorkloadReport {
            committed_txns: s.committed.load(Ordering::SeqCst),
            committed_after_swap: s.committed_after_swap.load(Ordering::SeqCst),
            committed_by_op: s.by_op.lock().unwrap().clone(),
            committed_after_swap_by_op: s.after_swap_by_op.lock().unwrap().clone(),
            retried: s.retried.load(Ordering::SeqCst),
            max_txn_latency: Duration::from_micros(s.max_latency_us.load(Ordering::SeqCst)),
            errors: s.errors.lock().unwrap().clone(),
            seed: self.seed,
        }
    }
}
