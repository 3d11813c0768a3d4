//! `--throttle-control-replicas host[:port],...`: the standbys lag is measured on.
//!
//! Only where to connect is given; role, password and database are those of `--conn`
//! ([`replica_conn`]), since a physical standby is a copy of the primary. The port
//! defaults to 5432, as gh-ost's list defaults to MySQL's port: predictable, whatever
//! port the primary listens on. IPv6 addresses go in brackets, since a bare one cannot be
//! told from `host:port`.

use crate::conn::{ConnInfo, Endpoint};
use crate::error::{Error, Result};

pub const DEFAULT_PORT: u16 = 5432;

/// Reads a comma-separated list given to `flag`; empty text means no replicas.
pub fn parse_replicas(flag: &str, text: &str) -> Result<Vec<Endpoint>> {
    let mut out: Vec<Endpoint> = Vec::new();
    if text.trim().is_empty() {
        return Ok(out);
    }
    for entry in text.split(',') {
        let endpoint = parse_endpoint(flag, entry.trim())?;
        if out.contains(&endpoint) {
            return Err(Error::config(format!("--{flag} {text:?}: {} is given twice", endpoint.describe())));
        }
        out.push(endpoint);
    }
    Ok(out)
}

/// Formats a list the way [`parse_replicas`] reads it back (for `name=?` on the socket).
pub fn format_replicas(endpoints: &[Endpoint]) -> String {
    let one = |e: &Endpoint| match e {
        Endpoint::Tcp { host, port } if host.contains(':') => format!("[{host}]:{port}"),
        Endpoint::Tcp { host, port } => format!("{host}:{port}"),
        Endpoint::Unix { dir, port } => format!("{}:{port}", dir.display()),
    };
    endpoints.iter().map(one).collect::<Vec<_>>().join(",")
}

/// The connection settings for a replica: the primary's, at another address (with the
/// password file's password for that address when no password was given).
pub fn replica_conn(primary: &ConnInfo, endpoint: &Endpoint) -> ConnInfo {
    primary.at(endpoint)
}

fn parse_endpoint(flag: &str, entry: &str) -> Result<Endpoint> {
    let bad = |why: &str| Error::config(format!("--{flag} {entry:?}: {why}"));
    let (host, port) = split_host_port(entry).map_err(bad)?;
    if host.is_empty() {
        return Err(bad("a host is required, e.g. replica1:5432"));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(bad(&format!("{p:?} is not a port number (1-65535)"))),
        },
    };
    Ok(if host.starts_with('/') {
        Endpoint::Unix { dir: host.into(), port }
    } else {
        Endpoint::Tcp { host: host.to_string(), port }
    })
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`, `/socket/dir:port`.
fn split_host_port(entry: &str) -> std::result::Result<(&str, Option<&str>), &'static str> {
    if let Some(rest) = entry.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("a '[' without its ']'")?;
        return match after {
            "" => Ok((host, None)),
            _ => after.strip_prefix(':').map(|p| (host, Some(p))).ok_or("expected :port after ']'"),
        };
    }
    match entry.split_once(':') {
        None => Ok((entry, None)),
        Some((host, port)) if !port.contains(':') => Ok((host, Some(port))),
        Some(_) => Err("write an IPv6 address in brackets, e.g. [::1]:5432"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16) -> Endpoint {
        Endpoint::Tcp { host: host.into(), port }
    }

    #[test]
    fn reads_lists_of_endpoints() {
        for (text, want) in [
            ("", vec![]),
            ("replica1", vec![tcp("replica1", 5432)]),
            ("replica1:5433, 10.0.0.2:6000", vec![tcp("replica1", 5433), tcp("10.0.0.2", 6000)]),
            ("[::1]:5499,[fe80::1]", vec![tcp("::1", 5499), tcp("fe80::1", 5432)]),
            ("/tmp/standby:5500", vec![Endpoint::Unix { dir: "/tmp/standby".into(), port: 5500 }]),
        ] {
            assert_eq!(parse_replicas("throttle-control-replicas", text).unwrap(), want, "{text:?}");
        }
    }

    #[test]
    fn bad_lists_name_the_flag_and_entry() {
        for (text, why) in [
            (":5432", "a host is required"),
            ("r1,", "a host is required"),
            ("r1:", "is not a port number"),
            ("r1:0", "is not a port number"),
            ("r1:99999", "is not a port number"),
            ("r1:abc", "is not a port number"),
            ("::1", "in brackets"),
            ("[::1", "without its ']'"),
            ("[::1]5432", "expected :port"),
            ("r1:5432,r1", "r1:5432 is given twice"),
        ] {
            let e = parse_replicas("throttle-control-replicas", text).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Config);
            let msg = e.to_string();
            assert!(msg.starts_with("--throttle-control-replicas "), "{msg}");
            assert!(msg.contains(why), "{text:?}: {msg}");
        }
    }

    #[test]
    fn formatted_lists_read_back() {
        let text = "r1:5433,[::1]:5499,/tmp/standby:5500";
        let parsed = parse_replicas("x", text).unwrap();
        assert_eq!(format_replicas(&parsed), text);
    }

    #[test]
    fn replicas_use_the_primarys_role_and_database() {
        let primary = ConnInfo::parse_with_env("host=p port=5432 user=dba password=s dbname=app", |_| None).unwrap();
        let r = replica_conn(&primary, &tcp("r1", 5433));
        assert_eq!(r.endpoint, tcp("r1", 5433));
        assert_eq!((r.user.as_str(), r.dbname.as_str()), ("dba", "app"));
        assert_eq!(r.password, primary.password);
    }
}
