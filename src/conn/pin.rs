//! Which server a run's sessions must find behind its address, once that matters.
//!
//! A run whose slot is synchronized to standbys (`crate::replication::failover`) may find, on
//! reconnecting to the same address, a promoted standby that has the slot, the ghost and the
//! changelog, but not the last moments of the old primary. A copy worker or the apply
//! session carrying on there from what this process remembers could record a copy watermark
//! past rows that server never got. So once the run's slot is such a slot, the identity of
//! its server is pinned, and every session opened after that (first or again) checks it.

use crate::error::{Context, Error, ErrorKind, Result};
use std::sync::{Arc, Mutex};
use tokio_postgres::GenericClient;

/// A server as a session sees it: the cluster, and the timeline it writes WAL on (`None`
/// on a standby, which writes none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerIdentity {
    pub system_id: u64,
    pub timeline: Option<u32>,
}

impl ServerIdentity {
    /// Reads the identity of `client`'s server. The timeline is that of the WAL being
    /// written (the first 8 digits of its file name), which changes at a promotion.
    pub async fn of(client: &impl GenericClient) -> Result<ServerIdentity> {
        let row = client
            .query_one(
                "SELECT system_identifier::text,
                        CASE WHEN pg_is_in_recovery() THEN NULL ELSE substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END
                   FROM pg_control_system()",
                &[],
            )
            .await
            .context("reading which server this is")?;
        let system: String = row.try_get(0)?;
        let timeline: Option<String> = row.try_get(1)?;
        let bad = |what: &str, v: &str| Error::new(ErrorKind::Protocol, format!("the server reported {what} {v:?}"));
        Ok(ServerIdentity {
            system_id: system.parse().map_err(|_| bad("system identifier", &system))?,
            timeline: timeline.map(|t| u32::from_str_radix(&t, 16).map_err(|_| bad("WAL file timeline", &t))).transpose()?,
        })
    }
}

/// The identity sessions must find, shared by every `ConnInfo` of the run's server.
#[derive(Clone, Debug, Default)]
pub struct ServerPin(Arc<Mutex<Option<ServerIdentity>>>);

impl ServerPin {
    fn get(&self) -> Option<ServerIdentity> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// From now on, every session must find `identity`.
    pub fn pin(&self, identity: ServerIdentity) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(identity);
    }

    pub fn is_pinned(&self) -> bool {
        self.get().is_some()
    }

    /// Fails with [`ErrorKind::FailedOver`] when `client`'s server is not the pinned one.
    pub async fn check(&self, client: &impl GenericClient) -> Result<()> {
        match self.is_pinned() {
            true => self.check_identity(ServerIdentity::of(client).await?),
            false => Ok(()),
        }
    }

    /// Fails with [`ErrorKind::FailedOver`] when `now` is not the pinned server.
    pub fn check_identity(&self, now: ServerIdentity) -> Result<()> {
        match self.get().and_then(|pinned| changed(pinned, now)) {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }
}

/// The error for finding `now` where the run pinned `first`, if they differ.
pub fn changed(first: ServerIdentity, now: ServerIdentity) -> Option<Error> {
    let what = if now.system_id != first.system_id {
        format!("another cluster (system identifier {} instead of {})", now.system_id, first.system_id)
    } else if now.timeline != first.timeline {
        let show = |t: Option<u32>| t.map_or_else(|| "none (a standby)".to_string(), |t| t.to_string());
        format!(
            "a server on timeline {} instead of {}: it was promoted or recovered to a point in time",
            show(now.timeline),
            show(first.timeline)
        )
    } else {
        return None;
    };
    Some(Error::new(
        ErrorKind::FailedOver,
        format!(
            "a session reconnected to {what}; the run stops and leaves its ghost, changelog, slot and publication: \
             `pg-ghost run --resume` against the new primary goes on from what that server's changelog says, \
             `pg-ghost cleanup` removes them"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_timeline_or_cluster_is_a_failover() {
        let first = ServerIdentity { system_id: 7, timeline: Some(1) };
        assert!(changed(first, first).is_none());
        let promoted = changed(first, ServerIdentity { system_id: 7, timeline: Some(2) }).map(|e| (e.kind(), e.to_string()));
        assert!(matches!(&promoted, Some((ErrorKind::FailedOver, m)) if m.contains("timeline 2 instead of 1") && m.contains("--resume")), "{promoted:?}");
        let other = changed(first, ServerIdentity { system_id: 8, timeline: Some(1) }).map(|e| e.to_string());
        assert!(other.is_some_and(|m| m.contains("another cluster")));
        let standby = changed(first, ServerIdentity { system_id: 7, timeline: None }).map(|e| e.to_string());
        assert!(standby.is_some_and(|m| m.contains("none (a standby)")));
    }
}
