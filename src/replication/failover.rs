//! A run that survives a failover (PostgreSQL 17+, `--failover-slot`).
//!
//! PostgreSQL 17 copies a logical slot created with `FAILOVER` to the physical standbys that
//! run with `sync_replication_slots = on`: after a promotion, `pg-ghost run --resume` against
//! the new primary finds the slot, the ghost and the changelog there and goes on. With the
//! standbys' physical slots named in `synchronized_standby_slots`, the primary never sends a
//! change to pg-ghost before those standbys have it, so the synchronized slot never points
//! past a change the new primary lacks.
//!
//! That is not enough for pg-ghost, whose consumer writes into the same server: a flush that
//! puts changes up to LSN X into the ghost commits later in the WAL than X. Confirming X as
//! soon as the flush commits on the primary would let the standby's copy of the slot move to
//! X while the standby does not have the flush yet; promoted then, the new primary would have
//! a slot past changes its ghost lacks, and a resume would never see them again. So, with a
//! failover slot, every flush (the commits after which changes are confirmed) waits until the standbys of
//! `synchronized_standby_slots` have flushed it ([`StandbyWait`]) before the changes it wrote
//! are confirmed: the confirmed position then never runs ahead of what a promoted standby
//! holds, as on one server it never runs ahead of what a crash keeps.
//!
//! The run itself does not follow a failover: a reconnect that finds another server or a new
//! timeline behind the same address stops the run (`crate::conn::pin`) and leaves
//! everything for `--resume`, which reads the copy's watermark and the applied position
//! from the new primary's changelog instead of trusting what this process remembers.

use crate::error::{Context, Error, ErrorKind, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use crate::sql::ident;
use std::time::{Duration, Instant};
use tokio_postgres::GenericClient;

/// The first server version whose slots can be synchronized to standbys.
const FAILOVER_SLOTS_FROM: i32 = 170000;

/// How often a waiting commit looks at the standbys' slots again, at most.
const POLL_MAX: Duration = Duration::from_millis(100);

/// How often a wait that goes on is reported.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Reads `synchronized_standby_slots` (empty before PostgreSQL 17 or when unset), with the
/// server's version.
async fn standby_slot_names(client: &impl GenericClient) -> Result<(i32, Vec<String>)> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int, coalesce(current_setting('synchronized_standby_slots', true), '')",
            &[],
        )
        .await
        .context("reading synchronized_standby_slots")?;
    let version: i32 = row.try_get(0)?;
    let setting: String = row.try_get(1)?;
    Ok((version, parse_slot_list(&setting)))
}

/// `synchronized_standby_slots` is a comma-separated list of slot names, read as identifiers:
/// folded to lower case unless quoted (slot names are lower case anyway).
fn parse_slot_list(setting: &str) -> Vec<String> {
    setting
        .split(',')
        .map(str::trim)
        .map(|s| match s.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
            Some(quoted) => quoted.to_string(),
            None => s.to_lowercase(),
        })
        .filter(|s| !s.is_empty())
        .collect()
}

/// What `--failover-slot` needs of the server: PostgreSQL 17 or later, and the standbys to
/// wait for named in `synchronized_standby_slots`. Returns their slot names.
pub async fn check_possible(client: &impl GenericClient) -> Result<Vec<String>> {
    let (version, slots) = standby_slot_names(client).await?;
    if version < FAILOVER_SLOTS_FROM {
        return Err(Error::refused(format!(
            "--failover-slot needs PostgreSQL 17 or later (this server is {}.{}): older servers cannot synchronize a logical slot to a standby",
            version / 10000,
            version % 10000 / 100
        )));
    }
    if slots.is_empty() {
        return Err(Error::refused(
            "--failover-slot needs synchronized_standby_slots set on the primary to the physical slots of the standbys that may be promoted: \
             pg-ghost waits for them before it confirms a change, so that a promoted standby has every change its copy of the slot has passed",
        ));
    }
    let readable: bool = client
        .query_one("SELECT has_function_privilege('pg_catalog.pg_control_system()', 'EXECUTE')", &[])
        .await
        .context("checking the privilege to read the server's identity")?
        .try_get(0)?;
    if !readable {
        return Err(Error::new(
            ErrorKind::Privilege,
            "--failover-slot: the role may not execute pg_control_system(), which tells pg-ghost that a reconnected session reached the same server \
             (GRANT EXECUTE ON FUNCTION pg_control_system() TO <role>)",
        ));
    }
    Ok(slots)
}

/// A run's slot (fresh or resumed) that PostgreSQL synchronizes to standbys.
pub struct Synchronized {
    /// The standbys each commit of the apply waits for: those named in
    /// `synchronized_standby_slots`, read again at every wait.
    pub wait: StandbyWait,
}

/// Whether `slot` is synchronized to standbys (created with `FAILOVER`, PostgreSQL 17+).
pub async fn synchronized(client: &impl GenericClient, slot: &str) -> Result<Option<Synchronized>> {
    let (version, slots) = standby_slot_names(client).await?;
    if version < FAILOVER_SLOTS_FROM {
        return Ok(None);
    }
    if !is_failover(client, slot).await? {
        return Ok(None);
    }
    if slots.is_empty() {
        tracing::warn!(
            slot,
            "the slot is synchronized to standbys but synchronized_standby_slots is empty: a promoted standby may miss changes the slot has passed, and a resume there would not see them"
        );
    } else {
        tracing::info!(slot, standbys = slots.join(", "), "the slot is synchronized to standbys: each flush is confirmed once they have it");
    }
    Ok(Some(Synchronized { wait: StandbyWait::new(slots) }))
}

/// Whether `slot` was created (or altered) with `FAILOVER`; never before PostgreSQL 17, whose
/// `pg_replication_slots` has no such column (read through `to_jsonb`, absent there).
pub async fn is_failover(client: &impl GenericClient, slot: &str) -> Result<bool> {
    let failover: Option<Option<bool>> = client
        .query_opt("SELECT (to_jsonb(s) ->> 'failover')::bool FROM pg_catalog.pg_replication_slots s WHERE slot_name = $1", &[&slot])
        .await
        .with_context(|| format!("reading whether slot {slot:?} is synchronized to standbys"))?
        .map(|r| r.try_get(0))
        .transpose()?;
    Ok(failover.flatten() == Some(true))
}

/// Waits, after a commit, for the standbys named in `synchronized_standby_slots` to have
/// flushed it (their physical slots' `restart_lsn`, as PostgreSQL itself reads them).
///
/// The setting is read again at every poll, as PostgreSQL's walsenders read it: a DBA who
/// takes a standby that is gone for good out of it (and reloads) releases the run as well as
/// the stream.
#[derive(Clone, Debug)]
pub struct StandbyWait {
    /// The list as last read, the one the next wait starts with.
    slots: Arc<Mutex<Vec<String>>>,
    /// Set when the stream stops: a wait in progress ends with an error, its flush
    /// unconfirmed, instead of holding the stop until the standbys come back.
    give_up: Arc<AtomicBool>,
    /// Since when the flush under way has been waiting; `None` when none waits.
    waiting_since: Arc<Mutex<Option<Instant>>>,
}

/// Clears [`StandbyWait::waiting_since`] however a wait ends (returned, failed, cancelled).
struct Waiting<'a>(&'a Mutex<Option<Instant>>);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

impl StandbyWait {
    fn new(slots: Vec<String>) -> StandbyWait {
        StandbyWait { slots: Arc::new(Mutex::new(slots)), give_up: Arc::default(), waiting_since: Arc::default() }
    }

    /// In the flush's transaction, before its commit: a session with `synchronous_commit =
    /// off` commits `local` (its commit record flushed before COMMIT returns), so that the
    /// flushed position after it covers the commit, and no standby waits for WAL nobody
    /// flushes.
    pub async fn before_commit(&self, client: &impl GenericClient) -> Result<()> {
        client
            .execute("SELECT set_config('synchronous_commit', 'local', true) WHERE current_setting('synchronous_commit') = 'off'", &[])
            .await
            .context("making the flush's commit flushed before it returns")?;
        Ok(())
    }

    /// Ends waits in progress, and any to come, with an error.
    pub fn give_up(&self) {
        self.give_up.store(true, Ordering::Relaxed);
    }

    /// How long the flush under way has waited for the standbys so far; `None` when no flush
    /// waits.
    pub fn waiting(&self) -> Option<Duration> {
        self.waiting_since.lock().unwrap_or_else(|e| e.into_inner()).map(|since| since.elapsed())
    }

    fn slots(&self) -> Vec<String> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Returns once every standby has flushed the WAL flushed so far on `client`'s server,
    /// which covers what `client` has just committed (see [`StandbyWait::before_commit`]). A
    /// standby that is down or gone makes it wait, as it makes the primary hold back the
    /// stream itself; the wait is reported every 10 s, and ends when the stream stops or when
    /// the standby is no longer named in `synchronized_standby_slots`.
    pub async fn wait(&self, client: &impl GenericClient) -> Result<()> {
        let target: String = client
            .query_one("SELECT pg_current_wal_flush_lsn()::text", &[])
            .await
            .context("reading the position the standbys must reach")?
            .try_get(0)?;
        let started = Instant::now();
        *self.waiting_since.lock().unwrap_or_else(|e| e.into_inner()) = Some(started);
        let _waiting = Waiting(&self.waiting_since);
        let mut slots = self.slots();
        let mut reported = started;
        let mut pause = Duration::from_millis(1);
        loop {
            let row = client
                .query_one(
                    "WITH behind AS (
                       SELECT n, s.restart_lsn::text AS at
                         FROM unnest($1::text[]) AS n
                         LEFT JOIN pg_catalog.pg_replication_slots s ON s.slot_name = n AND s.slot_type = 'physical'
                        WHERE s.restart_lsn IS NULL OR s.restart_lsn < $2::text::pg_lsn)
                     SELECT coalesce(current_setting('synchronized_standby_slots', true), ''),
                            ARRAY(SELECT n FROM behind ORDER BY n), ARRAY(SELECT at FROM behind ORDER BY n)",
                    &[&slots, &target],
                )
                .await
                .context("waiting for the standbys of synchronized_standby_slots")?;
            let now_named = parse_slot_list(&row.try_get::<_, String>(0)?);
            if now_named != slots {
                tracing::info!(
                    standbys = now_named.join(", "),
                    was = slots.join(", "),
                    "synchronized_standby_slots changed: the apply waits for the standbys it names now"
                );
                *self.slots.lock().unwrap_or_else(|e| e.into_inner()) = now_named.clone();
                slots = now_named;
                continue;
            }
            let behind: Vec<String> = row.try_get(1)?;
            if behind.is_empty() {
                return Ok(());
            }
            if self.give_up.load(Ordering::Relaxed) {
                return Err(Error::new(
                    ErrorKind::Aborted,
                    "the stream stopped while a flush waited for the standbys of synchronized_standby_slots: its changes stay unconfirmed, and come again",
                ));
            }
            if reported.elapsed() >= REPORT_EVERY {
                reported = Instant::now();
                let at: Vec<Option<String>> = row.try_get(2)?;
                let laggards: Vec<String> = behind
                    .iter()
                    .zip(at.iter().chain(std::iter::repeat(&None)))
                    .map(|(name, at)| match at {
                        Some(at) => format!("{} at {at}", ident(name)),
                        None => format!("{} (no such physical slot, or it reserves no WAL)", ident(name)),
                    })
                    .collect();
                tracing::warn!(
                    waited_secs = started.elapsed().as_secs(),
                    target = %target,
                    standbys = laggards.join(", "),
                    "the apply waits for standbys of synchronized_standby_slots to flush its last commit before confirming it \
                     (one that is gone for good: take it out of synchronized_standby_slots and reload)"
                );
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(POLL_MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_slot_list() {
        assert_eq!(parse_slot_list(""), Vec::<String>::new());
        assert_eq!(parse_slot_list("sb1"), vec!["sb1"]);
        assert_eq!(parse_slot_list("sb1, SB2 ,\"sb3\""), vec!["sb1", "sb2", "sb3"]);
    }
}
