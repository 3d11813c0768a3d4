//! Several hosts (`host=a,b port=5432,5433`) and `target_session_attrs`.
//!
//! pg-ghost opens many sessions and a replication stream, and all of them must reach the
//! same server: the list is resolved once, when the run starts ([`super::ConnInfo::resolve`]),
//! by trying each host in order as libpq does, and the one chosen is pinned as
//! `ConnInfo::endpoint` for the rest of the run. A reconnect goes back to that server, never
//! to the next host: a failover in the middle of a run is not followed.
//!
//! `target_session_attrs`: `any` takes the first host that accepts a session; `read-write`
//! the first whose sessions may write (`transaction_read_only` is off); `primary` the first
//! not in recovery. `read-only`, `standby` and `prefer-standby` are refused by the keyword
//! table: pg-ghost writes the table.

use super::{ConnInfo, Endpoint};
use crate::error::{Error, ErrorKind, Result};
use std::path::Path;
use std::str::FromStr;

/// `target_session_attrs`, as far as pg-ghost accepts it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TargetSession {
    #[default]
    Any,
    ReadWrite,
    Primary,
}

impl FromStr for TargetSession {
    type Err = Error;
    fn from_str(s: &str) -> Result<TargetSession> {
        match s {
            "" | "any" => Ok(TargetSession::Any),
            "read-write" => Ok(TargetSession::ReadWrite),
            "primary" => Ok(TargetSession::Primary),
            other => Err(Error::config(format!("invalid target_session_attrs {other:?}: use any, read-write or primary"))),
        }
    }
}

/// The endpoints of `host` and `port` lists: one port for all hosts or one per host; an
/// empty host is `default_host`, an empty port 5432.
pub fn endpoints(hosts: &str, ports: &str, default_host: &dyn Fn(u16) -> Endpoint) -> Result<Vec<Endpoint>> {
    let hosts: Vec<&str> = hosts.split(',').collect();
    let ports: Vec<u16> = ports.split(',').map(port).collect::<Result<_>>()?;
    if ports.len() != 1 && ports.len() != hosts.len() {
        return Err(Error::config(format!("could not match {} port numbers to {} hosts", ports.len(), hosts.len())));
    }
    Ok(hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = if ports.len() == 1 { ports[0] } else { ports[i] };
            if h.is_empty() {
                default_host(port)
            } else if h.starts_with('/') {
                Endpoint::Unix { dir: Path::new(h).into(), port }
            } else {
                Endpoint::Tcp { host: h.to_string(), port }
            }
        })
        .collect())
}

fn port(text: &str) -> Result<u16> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(5432);
    }
    text.parse().ok().filter(|p| *p != 0).ok_or_else(|| Error::config(format!("invalid port number: {text:?}")))
}

impl ConnInfo {
    /// Chooses the server of the run among `hosts`, as `target_session_attrs` asks, and pins
    /// it. One host and `any`: nothing to choose, no session is opened.
    pub async fn resolve(self) -> Result<ConnInfo> {
        if self.hosts.len() <= 1 && self.target_session == TargetSession::Any {
            return Ok(self);
        }
        let mut refusals = Vec::new();
        for endpoint in &self.hosts {
            let candidate = self.at(endpoint);
            match accepts(&candidate).await {
                Ok(()) => {
                    tracing::info!(host = %endpoint.describe(), target_session_attrs = ?self.target_session, "connecting to {}", endpoint.describe());
                    return Ok(candidate);
                }
                Err(e) => {
                    tracing::debug!(host = %endpoint.describe(), error = %e, "host not chosen");
                    refusals.push(format!("{}: {e}", endpoint.describe()));
                }
            }
        }
        Err(Error::new(ErrorKind::Connection, format!("no host could be used ({})", refusals.join("; "))))
    }
}

/// Whether `candidate`'s server is one `target_session_attrs` accepts.
async fn accepts(candidate: &ConnInfo) -> Result<()> {
    let client = candidate.with_application_name("pg-ghost resolve").connect().await?;
    let row = client
        .query_one("SELECT pg_catalog.pg_is_in_recovery(), pg_catalog.current_setting('transaction_read_only')", &[])
        .await?;
    let (in_recovery, read_only): (bool, String) = (row.try_get(0)?, row.try_get(1)?);
    match candidate.target_session {
        TargetSession::Any => Ok(()),
        TargetSession::ReadWrite if read_only == "on" => Err(Error::new(ErrorKind::Refused, "session is read-only")),
        TargetSession::Primary if in_recovery => Err(Error::new(ErrorKind::Refused, "server is in hot standby mode")),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(port: u16) -> Endpoint {
        Endpoint::Unix { dir: "/sock".into(), port }
    }

    fn tcp(host: &str, port: u16) -> Endpoint {
        Endpoint::Tcp { host: host.into(), port }
    }

    #[test]
    fn hosts_and_ports_pair_up() {
        assert_eq!(endpoints("a,b", "1,2", &local).unwrap(), vec![tcp("a", 1), tcp("b", 2)]);
        assert_eq!(endpoints("a,b", "7", &local).unwrap(), vec![tcp("a", 7), tcp("b", 7)]);
        assert_eq!(endpoints("a,,/tmp", "1,,3", &local).unwrap(), vec![tcp("a", 1), local(5432), Endpoint::Unix { dir: "/tmp".into(), port: 3 }]);
        let e = endpoints("a,b,c", "1,2", &local).unwrap_err().to_string();
        assert!(e.contains("could not match 2 port numbers to 3 hosts"), "{e}");
        assert!(endpoints("a", "x", &local).unwrap_err().to_string().contains("invalid port number"));
        assert!(endpoints("a", "70000", &local).is_err());
    }

    #[test]
    fn target_session_attrs_values() {
        assert_eq!("read-write".parse::<TargetSession>().unwrap(), TargetSession::ReadWrite);
        assert_eq!("".parse::<TargetSession>().unwrap(), TargetSession::Any);
        assert!("standby".parse::<TargetSession>().is_err());
    }
}
