//! `coordinates`: where this run's slot stands against the server's WAL.
//!
//! Read on demand over a short-lived connection of its own, so the answer is current and
//! no connection of the run is borrowed or kept busy. The slot may not exist yet (before
//! the stream phase) or any more (after cleanup); that is an answer, not an error.

use crate::conn::ConnInfo;
use crate::error::{Context, Error, Result};
use crate::lsn::Lsn;
use crate::status::human_bytes;
use std::fmt;
use std::time::Duration;

/// How long reading the coordinates may take, connection included.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Where to read the coordinates of this run's slot.
#[derive(Clone, Debug)]
pub struct CoordinatesSource {
    pub conn: ConnInfo,
    pub slot: String,
}

/// The slot's row in `pg_replication_slots`, as far as the socket reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotPosition {
    /// Up to here the apply has acknowledged; `None` before the slot's first consistent point.
    pub confirmed_flush: Option<Lsn>,
    /// WAL from here on is retained for the slot.
    pub restart: Option<Lsn>,
    /// A walsender is streaming from the slot.
    pub active: bool,
    /// Synchronized to standbys (`FAILOVER`, PostgreSQL 17+).
    pub failover: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Coordinates {
    pub slot: String,
    /// `None`: the slot does not exist.
    pub position: Option<SlotPosition>,
    /// `pg_current_wal_lsn()`.
    pub current: Lsn,
}

impl CoordinatesSource {
    pub async fn read(&self) -> Result<Coordinates> {
        tokio::time::timeout(READ_TIMEOUT, self.query())
            .await
            .map_err(|_| Error::new(crate::ErrorKind::Connection, format!("no answer within {READ_TIMEOUT:?}")))?
            .context("reading the coordinates")
    }

    async fn query(&self) -> Result<Coordinates> {
        let client = self.conn.with_application_name("pg-ghost control").connect().await?;
        // One statement, so the slot and the current position are read at the same moment;
        // the LEFT JOIN keeps a row when the slot does not exist.
        let row = client
            .query_one(
                "SELECT pg_current_wal_lsn()::text AS current, s.slot_name IS NOT NULL AS exists,
                        s.confirmed_flush_lsn::text AS confirmed, s.restart_lsn::text AS restart,
                        coalesce(s.active, false) AS active,
                        coalesce((to_jsonb(s) ->> 'failover')::bool, false) AS failover
                   FROM (SELECT 1) AS one LEFT JOIN pg_replication_slots s ON s.slot_name = $1",
                &[&self.slot],
            )
            .await?;
        let exists: bool = row.try_get("exists")?;
        let position = if exists {
            Some(SlotPosition {
                confirmed_flush: lsn(row.try_get("confirmed")?)?,
                restart: lsn(row.try_get("restart")?)?,
                active: row.try_get("active")?,
                failover: row.try_get("failover")?,
            })
        } else {
            None
        };
        let current = lsn(row.try_get("current")?)?.ok_or_else(|| Error::protocol("pg_current_wal_lsn() returned NULL"))?;
        Ok(Coordinates { slot: self.slot.clone(), position, current })
    }
}

fn lsn(text: Option<String>) -> Result<Option<Lsn>> {
    text.map(|t| t.parse::<Lsn>().map_err(|e| Error::protocol(e.to_string()))).transpose()
}

impl fmt::Display for Coordinates {
    /// One `name: value` per line, LSNs as PostgreSQL writes them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(pos) = &self.position else {
            writeln!(f, "slot: {} (does not exist)", self.slot)?;
            return writeln!(f, "current_wal_lsn: {}", self.current);
        };
        writeln!(f, "slot: {} ({})", self.slot, if pos.active { "streaming" } else { "not streaming" })?;
        writeln!(f, "confirmed_flush_lsn: {}", show(pos.confirmed_flush))?;
        writeln!(f, "restart_lsn: {}", show(pos.restart))?;
        writeln!(f, "current_wal_lsn: {}", self.current)?;
        if pos.failover {
            writeln!(f, "synchronized to standbys: yes (failover slot)")?;
        }
        if let Some(confirmed) = pos.confirmed_flush {
            writeln!(f, "unconfirmed: {}", human_bytes(self.current.bytes_since(confirmed)))?;
        }
        if let Some(restart) = pos.restart {
            writeln!(f, "retained: {}", human_bytes(self.current.bytes_since(restart)))?;
        }
        Ok(())
    }
}

fn show(lsn: Option<Lsn>) -> String {
    lsn.map_or("N/A".into(), |l| l.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_positions_and_distances() {
        let c = Coordinates {
            slot: "pg_ghost_16384".into(),
            position: Some(SlotPosition {
                confirmed_flush: Some("0/1000".parse().unwrap()),
                restart: Some("0/800".parse().unwrap()),
                active: true,
                failover: false,
            }),
            current: "0/1C00".parse().unwrap(),
        };
        assert_eq!(
            c.to_string(),
            "slot: pg_ghost_16384 (streaming)\nconfirmed_flush_lsn: 0/1000\nrestart_lsn: 0/800\n\
             current_wal_lsn: 0/1C00\nunconfirmed: 3.0kB\nretained: 5.0kB\n"
        );
    }

    #[test]
    fn a_missing_slot_or_position_is_said_plainly() {
        let missing = Coordinates { slot: "s".into(), position: None, current: "0/10".parse().unwrap() };
        assert_eq!(missing.to_string(), "slot: s (does not exist)\ncurrent_wal_lsn: 0/10\n");
        let fresh = Coordinates {
            slot: "s".into(),
            position: Some(SlotPosition { confirmed_flush: None, restart: None, active: false, failover: false }),
            current: "0/10".parse().unwrap(),
        };
        assert_eq!(fresh.to_string(), "slot: s (not streaming)\nconfirmed_flush_lsn: N/A\nrestart_lsn: N/A\ncurrent_wal_lsn: 0/10\n");
        let failover = Coordinates { position: Some(SlotPosition { failover: true, ..fresh.position.clone().unwrap() }), ..fresh };
        assert!(failover.to_string().ends_with("current_wal_lsn: 0/10\nsynchronized to standbys: yes (failover slot)\n"), "{failover}");
    }
}
