//! One workload client: picks an operation, writes it to the table and the control in one
//! repeatable-read transaction, and checks that both sides changed the same rows. The
//! reasons for each choice are in [`super::workload`]'s module docs.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use super::compare::db_message;
use super::ident;
use super::table::{KeyKind, DATA_COLUMNS};
use super::values::value;
use super::workload::{Shared, TableSql};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Insert,
    /// Some of n, label, amount, doc, tags, at: the TOASTed `big` stays as it is.
    UpdateColumns,
    /// The TOASTed column itself.
    UpdateBig,
    /// A primary-key change.
    UpdateKey,
    Delete,
    /// `WHERE id BETWEEN a AND b`.
    UpdateRange,
    DeleteRange,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::UpdateColumns => "update_columns",
            Op::UpdateBig => "update_big",
            Op::UpdateKey => "update_key",
            Op::Delete => "delete",
            Op::UpdateRange => "update_range",
            Op::DeleteRange => "delete_range",
        }
    }
}

const MIX: [(Op, u32); 7] = [
    (Op::Insert, 22),
    (Op::UpdateColumns, 20),
    (Op::UpdateBig, 10),
    (Op::UpdateKey, 8),
    (Op::Delete, 12),
    (Op::UpdateRange, 18),
    (Op::DeleteRange, 10),
];

/// What to check in the messages of a write batch.
enum Check {
    /// `n` statements on the table, each followed by its twin on the control.
    Pairs(usize),
    /// One insert into both returning the new id.
    Insert,
    /// One statement returning (table rows changed, control rows expected, control rows changed, new id).
    KeyUpdate,
}

enum TxnError {
    Retry,
    Fatal(String),
}

pub(super) struct ClientLoop {
    index: usize,
    conninfo: String,
    sql: Arc<TableSql>,
    shared: Arc<Shared>,
    rng: StdRng,
    rate: Option<u32>,
}

impl ClientLoop {
    pub(super) fn new(index: usize, conninfo: String, sql: Arc<TableSql>, shared: Arc<Shared>, seed: u64, rate: Option<u32>) -> ClientLoop {
        ClientLoop { index, conninfo, sql, shared, rng: StdRng::seed_from_u64(seed), rate }
    }

    async fn connect(&self) -> Option<Client> {
        match tokio_postgres::connect(&self.conninfo, NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Some(client)
            }
            Err(e) => {
                self.shared.error(format!("client {}: connect: {e}", self.index));
                None
            }
        }
    }

    pub(super) async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let Some(mut client) = self.connect().await else { return };
        let mut pace = self.rate.map(|r| {
            let mut iv = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(r.max(1))));
            iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            iv
        });
        loop {
            if *stop.borrow() {
                return;
            }
            if let Some(iv) = pace.as_mut() {
                tokio::select! {
                    _ = iv.tick() => {}
                    _ = stop.changed() => return,
                }
            }
            let op = MIX.choose_weighted(&mut self.rng, |(_, w)| *w).unwrap().0;
            let mut attempts = 0;
            loop {
                attempts += 1;
                let started = Instant::now();
                let outcome = self.txn(&client, op).await;
                // Every attempt counts: one that waited on a lock and then failed waited too.
                self.shared.max_latency_us.fetch_max(started.elapsed().as_micros() as u64, Ordering::SeqCst);
                match outcome {
                    Ok(after_swap) => {
                        *self.shared.by_op.lock().unwrap().entry(op.name()).or_default() += 1;
                        if after_swap {
                            *self.shared.after_swap_by_op.lock().unwrap().entry(op.name()).or_default() += 1;
                            self.shared.committed_after_swap.fetch_add(1, Ordering::SeqCst);
                        }
                        self.shared.committed.fetch_add(1, Ordering::SeqCst);
                        self.shared.progress.notify_waiters();
                        break;
                    }
                    Err(TxnError::Retry) if attempts < 50 => {
                        self.shared.retried.fetch_add(1, Ordering::SeqCst);
                        let _ = client.simple_query("ROLLBACK").await;
                    }
                    Err(TxnError::Retry) => {
                        self.shared.error(format!("client {}: {}: still failing after {attempts} retries", self.index, op.name()));
                        let _ = client.simple_query("ROLLBACK").await;
                        break;
                    }
                    Err(TxnError::Fatal(msg)) => {
                        self.shared.error(format!("client {}: {}: {msg}", self.index, op.name()));
                        if client.is_closed() {
                            match self.connect().await {
                                Some(c) => client = c,
                                None => return,
                            }
                        } else {
                            let _ = client.simple_query("ROLLBACK").await;
                        }
                        break;
                    }
                }
            }
        }
    }

    /// One transaction; returns whether it wrote the swapped-in table.
    async fn txn(&mut self, client: &Client, op: Op) -> Result<bool, TxnError> {
        let s = self.sql.clone();
        let head = format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; LOCK TABLE {} IN ROW EXCLUSIVE MODE; SELECT {}::regclass::oid::text",
            s.q, s.regclass
        );
        let msgs = client.simple_query(&head).await.map_err(|e| classify(&e, &head))?;
        let oid =
            rows(&msgs).first().and_then(|r| r.first().cloned().flatten()).ok_or_else(|| TxnError::Fatal("no OID returned".into()))?;
        let swapped = oid != s.original_oid;
        let (sql, check) = self.render(op, swapped);
        let batch = format!("{sql}; COMMIT");
        let msgs = client.simple_query(&batch).await.map_err(|e| classify(&e, &sql))?;
        self.verify(&check, &msgs, &sql)?;
        Ok(swapped)
    }

    fn verify(&self, check: &Check, msgs: &[SimpleQueryMessage], sql: &str) -> Result<(), TxnError> {
        let counts: Vec<u64> = msgs
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::CommandComplete(n) => Some(*n),
                _ => None,
            })
            .collect();
        let mismatch = |what: String| TxnError::Fatal(format!("table and control disagree: {what}; in {}", abbreviate(sql)));
        match check {
            Check::Pairs(n) => {
                for i in 0..*n {
                    let (t, c) = (counts[2 * i], counts[2 * i + 1]);
                    if t != c {
                        return Err(mismatch(format!("statement {} changed {t} rows in the table, {c} in the control", i + 1)));
                    }
                }
            }
            Check::Insert => {
                let r = rows(msgs);
                let id = r.first().and_then(|r| r[0].as_deref()).and_then(|v| v.parse::<i64>().ok());
                match id {
                    Some(id) => {
                        self.shared.max_id.fetch_max(id, Ordering::SeqCst);
                    }
                    None => return Err(mismatch("insert returned no id".into())),
                }
            }
            Check::KeyUpdate => {
                let r = rows(msgs);
                let row = r.first().ok_or_else(|| mismatch("key update returned nothing".into()))?;
                let n = |i: usize| row[i].as_deref().and_then(|v| v.parse::<i64>().ok());
                let (t, expected, c) = (n(0).unwrap_or(-1), n(1).unwrap_or(-1), n(2).unwrap_or(-1));
                if t != expected || c != expected {
                    return Err(mismatch(format!("key update changed {t} rows in the table, {c} in the control, which had {expected}")));
                }
                if let Some(id) = n(3) {
                    self.shared.max_id.fetch_max(id, Ordering::SeqCst);
                }
            }
        }
        Ok(())
    }

    fn writable(&self, swapped: bool, column: &str) -> bool {
        !(swapped && self.sql.frozen.iter().any(|c| c == column))
    }

    /// One key in the live range (or in the target range when one is set).
    fn pick_id(&mut self) -> i64 {
        let (lo, hi) = self.range();
        self.rng.gen_range(lo..=hi)
    }

    fn range(&self) -> (i64, i64) {
        match *self.shared.target.lock().unwrap() {
            Some((lo, hi)) => (lo.min(hi), hi.max(lo)),
            None => (1, self.shared.max_id.load(Ordering::SeqCst).max(1)),
        }
    }

    /// `[a, b]` of up to `width + 1` keys inside the live (or target) range.
    fn pick_span(&mut self, width: i64) -> (i64, i64) {
        let (lo, hi) = self.range();
        let a = self.rng.gen_range(lo..=hi);
        (a, (a + self.rng.gen_range(0..=width)).min(hi))
    }

    fn render(&mut self, op: Op, swapped: bool) -> (String, Check) {
        let (q, qc) = (self.sql.q.clone(), self.sql.qc.clone());
        let pair = |stmt: &dyn Fn(&str) -> String| format!("{}; {}", stmt(&q), stmt(&qc));
        match op {
            Op::Insert => {
                let mut cols: Vec<String> = Vec::new();
                let mut vals: Vec<String> = Vec::new();
                if self.sql.kind == KeyKind::Composite {
                    cols.push(ident("tenant"));
                    vals.push(self.rng.gen_range(1..=8).to_string());
                }
                for c in DATA_COLUMNS {
                    if self.writable(swapped, c) {
                        cols.push(ident(c));
                        vals.push(value(&mut self.rng, c));
                    }
                }
                let (cols, vals) = (cols.join(", "), vals.join(", "));
                (
                    format!(
                        "WITH i AS (INSERT INTO {q} ({cols}) VALUES ({vals}) RETURNING id) \
                         INSERT INTO {qc} (id, {cols}) VALUES ((SELECT id FROM i), {vals}) RETURNING id"
                    ),
                    Check::Insert,
                )
            }
            Op::UpdateColumns | Op::UpdateBig | Op::UpdateRange => {
                let candidates: Vec<&str> = match op {
                    Op::UpdateBig => vec!["big"],
                    Op::UpdateRange => vec!["n", "amount", "label", "tags"],
                    _ => vec!["n", "label", "amount", "doc", "tags", "at"],
                };
                let candidates: Vec<&str> = candidates.into_iter().filter(|c| self.writable(swapped, c)).collect();
                if candidates.is_empty() {
                    return self.render(Op::Delete, swapped);
                }
                let k = self.rng.gen_range(1..=candidates.len().min(3));
                let chosen: Vec<&str> = candidates.choose_multiple(&mut self.rng, k).copied().collect();
                let mut set: Vec<String> = chosen.iter().map(|c| format!("{} = {}", ident(c), value(&mut self.rng, c))).collect();
                if op == Op::UpdateBig && self.rng.gen_bool(0.3) && self.writable(swapped, "n") {
                    set.push(format!("n = {}", value(&mut self.rng, "n")));
                }
                let set = set.join(", ");
                let filter = if op == Op::UpdateRange {
                    let (a, b) = self.pick_span(10);
                    format!("id BETWEEN {a} AND {b}")
                } else {
                    format!("id = {}", self.pick_id())
                };
                (pair(&|t| format!("UPDATE {t} SET {set} WHERE {filter}")), Check::Pairs(1))
            }
            Op::UpdateKey => {
                let id = self.pick_id();
                if self.sql.kind == KeyKind::Composite && self.rng.gen_bool(0.5) {
                    let tenant = self.rng.gen_range(1..=8);
                    return (pair(&|t| format!("UPDATE {t} SET tenant = {tenant} WHERE id = {id}")), Check::Pairs(1));
                }
                (
                    format!(
                        "WITH u AS (UPDATE {q} SET id = DEFAULT WHERE id = {id} RETURNING id), \
                              c AS (UPDATE {qc} AS ctl SET id = u.id FROM u WHERE ctl.id = {id} RETURNING 1) \
                         SELECT (SELECT count(*) FROM u), (SELECT count(*) FROM {qc} WHERE id = {id}), \
                                (SELECT count(*) FROM c), (SELECT max(id) FROM u)"
                    ),
                    Check::KeyUpdate,
                )
            }
            Op::Delete => {
                let id = self.pick_id();
                (pair(&|t| format!("DELETE FROM {t} WHERE id = {id}")), Check::Pairs(1))
            }
            Op::DeleteRange => {
                let (a, b) = self.pick_span(3);
                (pair(&|t| format!("DELETE FROM {t} WHERE id BETWEEN {a} AND {b}")), Check::Pairs(1))
            }
        }
    }
}

fn rows(msgs: &[SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect()),
            _ => None,
        })
        .collect()
}

fn classify(e: &tokio_postgres::Error, sql: &str) -> TxnError {
    use tokio_postgres::error::SqlState;
    match e.code() {
        Some(c)
            if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::LOCK_NOT_AVAILABLE =>
        {
            TxnError::Retry
        }
        _ => TxnError::Fatal(format!("{} in {}", db_message(e), abbreviate(sql))),
    }
}

/// SQL cut to a readable length (the TOASTed literals are kilobytes long).
fn abbreviate(sql: &str) -> String {
    const MAX: usize = 300;
    if sql.len() <= MAX {
        return sql.to_string();
    }
    let mut end = MAX;
    while !sql.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…({} bytes)", &sql[..end], sql.len())
}
