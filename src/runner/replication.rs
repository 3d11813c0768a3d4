//! The stream side of a run: publication, slot, the pump from the walsender and the apply
//! loop, started together and stopped together.

use crate::apply::changes::{ChangeExtractor, ExpectedColumn};
use crate::apply::pump::{Acks, Pump, Source, StreamPositions};
use crate::apply::{FlushSql, InFlight, Writer, WriterHandle};
use crate::conn::ConnInfo;
use crate::error::{Context, Error, ErrorKind, Result};
use crate::ghost::Ghost;
use crate::lsn::Lsn;
use crate::names::Names;
use crate::reconnect::Session;
use crate::replication::slot;
use crate::replication::transport::{
    ProtoVersion, ReplicationConnection, ReplicationStream, SlotKind, SlotSnapshot, StreamOptions,
};
use crate::schema::TableInfo;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio_postgres::Client;

/// How long slot creation may wait for open transactions before the run gives up.
const SLOT_CREATION_LIMIT: Duration = Duration::from_secs(600);

/// Creates the publication (FOR TABLE the original only).
///
/// From PostgreSQL 15 it publishes only the key and replica identity columns (a column
/// list, see [`slot::key_publication_columns`]): the apply reads nothing else from the
/// stream, since a flush re-reads each changed key's row from the original. The walsender
/// then converts and sends one or two values per change instead of the whole row (a quarter
/// less of its CPU on single-row transactions in `scripts/bench/apply.sh`). Older servers, and
/// tables whose identity is every column (`REPLICA IDENTITY FULL`), publish whole rows. What
/// the stream no longer shows is a DDL on a column outside the list (its Relation message
/// still lists the same columns): each Relation message of the table makes the apply read the
/// definition from the catalog (`FlushSql::check_definition`), and the cut-over checks it
/// again under its lock.
///
/// A partitioned table is published with `publish_via_partition_root = true`: every
/// partition's changes, at every level, arrive as changes of the partitioned table, under its
/// OID and in its column order (pgoutput converts each row). The apply then sees one
/// relation, as for an ordinary table, and finds rows by the key as before. An UPDATE that
/// moves a row to another partition is written to the WAL as a DELETE in one partition and
/// an INSERT in the other, and PostgreSQL 15 decodes it so: it arrives as a DELETE of the old
/// key and an INSERT of the new one, both under the root's OID and in the same transaction,
/// so the flush of that transaction deletes the old key's ghost row and writes the new one,
/// as for any key update (checked on PostgreSQL 15 with `pg_logical_slot_peek_binary_changes`).
/// A partition attached during the run is published too without touching the publication.
/// Per-partition publication would send each leaf under its own OID (and its own column
/// order): the apply would have to map every leaf to the root and would gain nothing, since
/// the ghost is written through its root anyway. pgoutput also sends a Relation message for
/// each leaf it meets; the apply ignores relations other than the root. The old key comes
/// from the leaf's own replica identity, which `inspect` requires to carry the key on every
/// leaf (a leaf without one would also make the application's UPDATEs and DELETEs fail once
/// the table is published). The root's column list applies to every leaf (PostgreSQL 15
/// accepts a column list on a partitioned table only with `publish_via_partition_root`); a
/// leaf's UPDATEs and DELETEs need its identity inside that list, hence whole rows as soon as
/// one leaf has `REPLICA IDENTITY FULL`.
pub async fn create_publication(client: &Client, names: &Names, orig: &TableInfo) -> Result<()> {
    create_key_publication(client, &names.publication, orig.oid, &orig.name, &orig.key.columns, orig.partitioned).await
}

/// The revert window's reverse publication, of the new table and its key: the same column
/// list as [`create_publication`]'s, through the root for a partitioned table.
pub async fn create_reverse_publication(client: &Client, publication: &str, new: &Ghost) -> Result<()> {
    create_key_publication(client, publication, new.oid, &new.name, &new.mapping.key_ghost, new.partitions.is_some()).await
}

async fn create_key_publication(client: &Client, publication: &str, oid: u32, table: &crate::sql::QualifiedName, key: &[String], via_root: bool) -> Result<()> {
    let columns = slot::key_publication_columns(client, oid, key).await?;
    let sql = slot::table_publication_sql(publication, table, columns.as_deref(), via_root)?;
    client.batch_execute(&sql).await.with_context(|| format!("creating publication {publication:?}"))?;
    let columns = columns.map_or_else(|| "all".to_string(), |c| c.join(", "));
    match via_root {
        true => tracing::info!(publication, columns, "publication created (via the partition root)"),
        false => tracing::info!(publication, columns, "publication created"),
    }
    Ok(())
}

/// Creates the persistent slot, reporting the transactions its creation waits for;
/// `failover`: synchronized to standbys (`--failover-slot`).
pub async fn create_slot(conn: &ConnInfo, monitor: &Client, names: &Names, failover: bool) -> Result<Lsn> {
    let mut repl = ReplicationConnection::connect(&conn.with_application_name("pg-ghost stream")).await?;
    let kind = if failover { SlotKind::Failover } else { SlotKind::Persistent };
    let create = repl.create_slot(&names.slot, kind, SlotSnapshot::Nothing);
    tokio::pin!(create);
    let started = std::time::Instant::now();
    let mut report = tokio::time::interval_at(tokio::time::Instant::now() + Duration::from_secs(2), Duration::from_secs(10));
    loop {
        tokio::select! {
            created = &mut create => {
                let created = created.context("creating the replication slot")?;
                return Ok(created.consistent_point);
            }
            _ = report.tick() => {
                if started.elapsed() > SLOT_CREATION_LIMIT {
                    return Err(Error::new(ErrorKind::Aborted, format!(
                        "the replication slot could not be created within {SLOT_CREATION_LIMIT:?}: transactions stayed open (see the warnings above)"
                    )));
                }
                report_open_transactions(monitor).await;
            }
        }
    }
}

/// `--failover-slot` on a resumed run whose slot was made without it (checked possible
/// before, with the other preflight checks): the slot is altered; it is idle, since a resume
/// waits for the earlier walsender to let it go.
pub async fn make_failover(conn: &ConnInfo, client: &Client, slot: &str) -> Result<()> {
    if crate::replication::failover::is_failover(client, slot).await? {
        return Ok(());
    }
    let mut repl = ReplicationConnection::connect(&conn.with_application_name("pg-ghost stream")).await?;
    repl.make_failover_slot(slot).await.with_context(|| format!("making slot {slot:?} synchronized to standbys (--failover-slot)"))
}

async fn report_open_transactions(monitor: &Client) {
    if let Ok(blockers) = slot::slot_creation_blockers(monitor).await {
        for b in blockers {
            tracing::warn!(
                pid = b.pid,
                database = b.database.as_deref().unwrap_or(""),
                user = b.user.as_deref().unwrap_or(""),
                application = b.application_name.as_deref().unwrap_or(""),
                transaction_age_secs = b.xact_age_secs.round(),
                "slot creation is waiting for this transaction to end"
            );
        }
    }
}

/// Handles on the running stream and apply loop.
pub struct Replication {
    pub writer: WriterHandle,
    pub inflight: Arc<InFlight>,
    pub positions: Arc<StreamPositions>,
    pub flush: FlushSql,
    /// The stream leaves out changes written under a replication origin (`origin 'none'`).
    pub origin_none: bool,
    /// What the flushes wait for before they are confirmed (a failover slot).
    pub standbys: Option<crate::replication::failover::StandbyWait>,
}

/// The background tasks of a run (stream, apply loop, throttler): watched for failure,
/// stopped at the end. A task that finished is polled no more.
pub struct Background {
    writer: WriterHandle,
    stop_pump: Option<oneshot::Sender<()>>,
    pump: Option<JoinHandle<Result<ReplicationStream>>>,
    writer_task: Option<JoinHandle<Result<()>>>,
    throttle: Option<JoinHandle<Result<()>>>,
    slot: String,
    /// The first failure found, kept across cancelled calls of [`Background::failed`].
    failure: Option<Error>,
    /// The pump ended without an error of its own (its apply loop had gone away).
    pump_stopped_cleanly: bool,
    /// What the apply's flushes wait for (a failover slot), given up when stopping.
    standbys: Option<crate::replication::failover::StandbyWait>,
}

impl Replication {
    /// `fresh_copy`: an empty ghost's copy follows; flushes wait until it has planned its ranges.
    /// `park`: the ghost has no index on its key yet; flushes park keys until it has.
    /// `origin_none`: the stream leaves out changes written under a replication origin (the
    /// copy's own, see [`crate::replication::origins`]).
    pub async fn start(
        conn: &ConnInfo,
        names: &Names,
        orig: &TableInfo,
        ghost: &Ghost,
        fresh_copy: bool,
        park: bool,
        origin_none: bool,
    ) -> Result<(Replication, Background)> {
        let flush = FlushSql::new(&orig.name, &ghost.name, &ghost.mapping).parking_in(&names.changelog, park);
        let recorded = flush.clone().recording_in(&names.changelog);
        let stream =
            Stream { slot: &names.slot, publication: &names.publication, table: orig, extractor: extractor_for(orig), flush, recorded, fresh_copy, origin_none };
        Self::start_stream(conn, stream, ghost).await
    }

    /// The revert window's reverse stream: the changes of `new` (the table that now carries
    /// the name) applied to `old` (the original, as a [`Ghost`] with the reverse mapping),
    /// through the slot and publication created before the swap. Every transaction that
    /// committed up to `through` (the position of the swap's `marker`) and the swap's own are
    /// skipped: those are pg-ghost's own writes to the ghost. Flushes check that each value survives the cast back (`cast_back`).
    pub async fn start_reverse(
        conn: &ConnInfo,
        slot: &str,
        publication: &str,
        (through, marker): (Lsn, &str),
        new: &TableInfo,
        old: &Ghost,
        cast_back: &[crate::ghost::CastBack],
    ) -> Result<(Replication, Background)> {
        let flush = FlushSql::new(&new.name, &old.name, &old.mapping).checking_cast_back(&new.name, &old.mapping, cast_back);
        let extractor = extractor_for(new).skipping_through(through, marker.to_string());
        let stream = Stream { slot, publication, table: new, extractor, recorded: flush.clone(), flush, fresh_copy: false, origin_none: false };
        Self::start_stream(conn, stream, old).await
    }

    async fn start_stream(conn: &ConnInfo, s: Stream<'_>, ghost: &Ghost) -> Result<(Replication, Background)> {
        let mut options = StreamOptions::new([s.publication.to_string()]);
        options.proto_version = ProtoVersion::V2;
        options.streaming = true;
        options.origin_none = s.origin_none;
        let source = Source::new(conn.with_application_name("pg-ghost stream"), s.slot.to_string(), options);
        let stream = source.open().await?;
        let acks = Acks::new(stream.feedback());
        let (items_tx, items_rx) = mpsc::channel(1024);
        let positions = Arc::new(StreamPositions::default());
        let (stop_tx, stop_rx) = oneshot::channel();
        let release = Arc::new(Notify::new());
        let apply_session = Session::connect(conn.with_application_name("pg-ghost apply")).await?.tell_when_unreachable(release.clone());
        // Read from the catalog, not assumed: a resumed run streams from the publication an
        // earlier run (perhaps an earlier version) created.
        let (extractor, recorded) = match slot::published_columns(apply_session.client(), s.publication, s.table.oid).await? {
            Some(columns) => (s.extractor.publishing_only(&columns), s.recorded.checking_definition(s.table)),
            None => (s.extractor, s.recorded),
        };
        // A slot a promoted standby would have: the run's sessions must keep finding this
        // server, and its flushes are confirmed once the standbys have them.
        let recorded = match crate::replication::failover::synchronized(apply_session.client(), s.slot).await? {
            Some(synchronized) => {
                conn.server.pin(crate::conn::ServerIdentity::of(apply_session.client()).await?);
                recorded.waiting_for_standbys(synchronized.wait)
            }
            None => recorded,
        };
        let ack = acks.acker();
        let pump = Pump { source, acks, extractor, items: items_tx, positions: positions.clone(), release };
        // While the stream leaves origins out, an origin that appears stops the run, through
        // the stream's task.
        let watch = s.origin_none.then(|| crate::replication::origins::watch_for_foreign(conn.clone(), crate::replication::origins::WATCH_EVERY));
        let pump = tokio::spawn(async move {
            match watch {
                None => pump.run(stream, stop_rx).await,
                Some(watch) => tokio::select! {
                    r = pump.run(stream, stop_rx) => r,
                    refused = watch => Err(refused),
                },
            }
        });
        let inflight = InFlight::new();
        if s.fresh_copy {
            inflight.expect_copy();
        }
        let flush = s.flush;
        flush.choose_strategy(apply_session.client(), ghost.oid, &ghost.mapping.key_ghost).await?;
        let recorded_standbys = recorded.standbys().cloned();
        let (writer, writer_task) = Writer::spawn(apply_session, recorded, inflight.clone(), ack, items_rx);
        let background = Background {
            writer: writer.clone(),
            stop_pump: Some(stop_tx),
            pump: Some(pump),
            writer_task: Some(writer_task),
            throttle: None,
            slot: s.slot.to_string(),
            failure: None,
            pump_stopped_cleanly: false,
            standbys: recorded_standbys.clone(),
        };
        Ok((Replication { writer, inflight, positions, flush, origin_none: s.origin_none, standbys: recorded_standbys }, background))
    }
}

/// One stream and its apply loop, as [`Replication::start_stream`] starts them.
struct Stream<'a> {
    slot: &'a str,
    publication: &'a str,
    /// The table streamed (the original; the new table for the revert window).
    table: &'a TableInfo,
    extractor: ChangeExtractor,
    /// The flush the cut-over runs under its lock, and the one the apply loop runs (which may
    /// also record the applied LSN); clones of one another.
    flush: FlushSql,
    recorded: FlushSql,
    fresh_copy: bool,
    origin_none: bool,
}

/// Keys and changes of `table` as pgoutput describes them.
fn extractor_for(table: &TableInfo) -> ChangeExtractor {
    let expected = table
        .columns
        .iter()
        .filter(|c| !c.generated)
        .map(|c| ExpectedColumn { name: c.name.clone(), type_oid: c.type_oid })
        .collect();
    ChangeExtractor::new(table.oid, expected, table.key.columns.clone())
}

impl Background {
    /// Watches the throttler's task too: a critical limit ends it with an error.
    pub fn watch_throttler(&mut self, task: JoinHandle<Result<()>>) {
        self.throttle = Some(task);
    }

    /// Resolves with the error of whichever background task ended first; never resolves
    /// while all of them run. When the stream fails, the apply loop fails right after it
    /// (its input closed): the stream's error, which says why, is the one reported.
    ///
    /// Cancel-safe: a caller that polls it in a `select!` with other branches may drop it at
    /// any await; the failure found is kept for the next call.
    pub async fn failed(&mut self) -> Error {
        if self.failure.is_none() {
            let first = self.first_failure().await;
            self.failure = Some(first);
        }
        if self.writer_task.is_none() {
            if let Some(pump) = self.pump.as_mut() {
                if let Ok(ended) = tokio::time::timeout(Duration::from_secs(2), pump).await {
                    // A finished task is polled no more.
                    self.pump = None;
                    if let Ok(Err(cause)) = ended {
                        self.failure = None;
                        return cause;
                    }
                }
            }
        } else if self.pump.is_none() && self.pump_stopped_cleanly {
            // The pump ends cleanly when the apply loop went away: the loop's error says why.
            if let Some(writer) = self.writer_task.as_mut() {
                if let Ok(ended) = tokio::time::timeout(Duration::from_secs(2), writer).await {
                    self.writer_task = None;
                    if let Ok(Err(cause)) = ended {
                        self.failure = None;
                        return cause;
                    }
                }
            }
        }
        self.failure.take().unwrap_or_else(|| Error::internal("a background task failure was reported twice"))
    }

    async fn first_failure(&mut self) -> Error {
        tokio::select! {
            biased;
            r = async { self.pump.as_mut().expect("guarded by the branch condition").await }, if self.pump.is_some() => {
                self.pump = None;
                match r {
                    Ok(Ok(_)) => {
                        self.pump_stopped_cleanly = true;
                        Error::new(ErrorKind::Connection, "the replication stream stopped")
                    }
                    Ok(Err(e)) => e,
                    Err(e) => Error::internal(format!("the stream task failed: {e}")),
                }
            }
            r = async { self.writer_task.as_mut().expect("guarded by the branch condition").await }, if self.writer_task.is_some() => {
                self.writer_task = None;
                match r {
                    Ok(Ok(())) => Error::internal("the apply loop stopped"),
                    Ok(Err(e)) => e,
                    Err(e) => Error::internal(format!("the apply task failed: {e}")),
                }
            }
            r = async { self.throttle.as_mut().expect("guarded by the branch condition").await }, if self.throttle.is_some() => {
                self.throttle = None;
                match r {
                    Ok(Ok(())) => Error::internal("the throttler stopped"),
                    Ok(Err(e)) => e,
                    Err(e) => Error::internal(format!("the throttler failed: {e}")),
                }
            }
            else => std::future::pending().await,
        }
    }

    /// Stops every task, then drops the slot on the stream's own connection; when that is
    /// not possible (the stream failed) the caller drops it over SQL.
    pub async fn shutdown(self) -> Result<()> {
        self.stop(true).await
    }

    /// Stops the stream and leaves its slot where its flushed position stands, for a later
    /// run to take up (a revert window stopped by a signal).
    pub async fn stop_keeping_slot(self) -> Result<()> {
        self.stop(false).await
    }

    async fn stop(mut self, drop_slot: bool) -> Result<()> {
        if let Some(task) = self.throttle.take() {
            task.abort();
            let _ = task.await;
        }
        if let Some(standbys) = &self.standbys {
            standbys.give_up();
        }
        let _ = self.writer.stop().await;
        if let Some(task) = self.writer_task.take() {
            task.abort();
        }
        if let Some(stop) = self.stop_pump.take() {
            let _ = stop.send(());
        }
        let Some(mut pump) = self.pump.take() else {
            return Err(Error::new(ErrorKind::Connection, "the stream had already ended"));
        };
        let stream = match tokio::time::timeout(Duration::from_secs(10), &mut pump).await {
            Ok(Ok(Ok(stream))) => stream,
            _ => {
                pump.abort();
                return Err(Error::new(ErrorKind::Connection, "the stream did not stop cleanly"));
            }
        };
        let mut conn = stream.stop().await?;
        if drop_slot {
            conn.drop_slot(&self.slot, true).await?;
        }
        let _ = conn.close().await;
        Ok(())
    }
}
