//! Connection settings: a libpq `key=value` string or a `postgres://` URL, completed from the
//! standard libpq environment (`PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`).
//!
//! The same settings open ordinary SQL sessions (tokio-postgres) and walsender connections
//! (our own transport), so both see the same server, role and database.

use crate::error::{Context, Error, ErrorKind, Result};
use std::path::PathBuf;
use std::time::Duration;
use tokio_postgres::config::Host;
use tokio_postgres::{Client, NoTls};

/// Where the server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Tcp { host: String, port: u16 },
    /// A Unix socket: the directory and port form the path `<dir>/.s.PGSQL.<port>`.
    Unix { dir: PathBuf, port: u16 },
}

impl Endpoint {
    pub fn describe(&self) -> String {
        match self {
            Endpoint::Tcp { host, port } => format!("{host}:{port}"),
            Endpoint::Unix { dir, port } => format!("{}/.s.PGSQL.{port}", dir.display()),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub endpoint: Endpoint,
    pub user: String,
    pub password: Option<Vec<u8>>,
    pub dbname: String,
    pub application_name: String,
    /// How long a lost connection is tried again before the run gives up (`--reconnect-timeout`);
    /// zero: a lost connection stops the run at once. See `crate::reconnect`.
    pub reconnect_timeout: Duration,
    /// Reconnections so far, shared by every `ConnInfo` derived from this one.
    pub reconnects: crate::reconnect::Reconnects,
}

impl ConnInfo {
    /// Parses `conn` and fills what it leaves out from the environment, as libpq does.
    pub fn parse(conn: &str) -> Result<ConnInfo> {
        Self::parse_with_env(conn, |k| std::env::var(k).ok())
    }

    pub fn parse_with_env(conn: &str, env: impl Fn(&str) -> Option<String>) -> Result<ConnInfo> {
        let cfg: tokio_postgres::Config = if conn.trim().is_empty() {
            tokio_postgres::Config::new()
        } else {
            conn.parse().map_err(|e| {
                Error::with_source(ErrorKind::Config, format!("cannot read the connection string: {e}"), e)
            })?
        };
        let port = match cfg.get_ports().first() {
            Some(p) => *p,
            None => match env("PGPORT") {
                Some(p) => p
                    .parse()
                    .map_err(|_| Error::config(format!("PGPORT={p:?} is not a port number")))?,
                None => 5432,
            },
        };
        let endpoint = match cfg.get_hosts().first() {
            Some(Host::Tcp(h)) => endpoint_for(h, port),
            Some(Host::Unix(p)) => Endpoint::Unix { dir: p.clone(), port },
            None => match env("PGHOST") {
                Some(h) if !h.is_empty() => endpoint_for(&h, port),
                _ if std::path::Path::new("/var/run/postgresql").is_dir() => {
                    Endpoint::Unix { dir: "/var/run/postgresql".into(), port }
                }
                _ => Endpoint::Tcp { host: "localhost".into(), port },
            },
        };
        let user = match cfg.get_user() {
            Some(u) => u.to_string(),
            None => env("PGUSER")
                .or_else(|| env("USER"))
                .ok_or_else(|| Error::config("no user given: set user= in --conn or PGUSER"))?,
        };
        let password = cfg.get_password().map(|p| p.to_vec()).or_else(|| env("PGPASSWORD").map(String::into_bytes));
        let dbname = cfg.get_dbname().map(str::to_string).or_else(|| env("PGDATABASE")).unwrap_or_else(|| user.clone());
        let application_name = cfg.get_application_name().unwrap_or("pg-ghost").to_string();
        Ok(ConnInfo {
            endpoint,
            user,
            password,
            dbname,
            application_name,
            reconnect_timeout: crate::reconnect::DEFAULT_TIMEOUT,
            reconnects: Default::default(),
        })
    }

    /// The same server and role, another database.
    pub fn with_dbname(&self, dbname: &str) -> ConnInfo {
        ConnInfo { dbname: dbname.to_string(), ..self.clone() }
    }

    pub fn with_application_name(&self, name: &str) -> ConnInfo {
        ConnInfo { application_name: name.to_string(), ..self.clone() }
    }

    pub fn to_config(&self) -> tokio_postgres::Config {
        let mut cfg = tokio_postgres::Config::new();
        match &self.endpoint {
            Endpoint::Tcp { host, port } => cfg.host(host).port(*port),
            Endpoint::Unix { dir, port } => cfg.host_path(dir).port(*port),
        };
        cfg.user(&self.user).dbname(&self.dbname).application_name(&self.application_name);
        // A query that row-level security would filter fails instead: pg-ghost must read and
        // write every row or none, never the rows a policy lets through.
        cfg.options("-c row_security=off");
        if let Some(p) = &self.password {
            cfg.password(p);
        }
        cfg
    }

    /// Opens an ordinary SQL session; its connection task runs on the current runtime.
    pub async fn connect(&self) -> Result<Client> {
        let (client, connection) = self
            .to_config()
            .connect(NoTls)
            .await
            .with_context(|| format!("connecting to {} as {}", self.endpoint.describe(), self.user))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended");
            }
        });
        Ok(client)
    }
}

fn endpoint_for(host: &str, port: u16) -> Endpoint {
    if host.starts_with('/') {
        Endpoint::Unix { dir: host.into(), port }
    } else {
        Endpoint::Tcp { host: host.to_string(), port }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn reads_key_value_and_url() {
        let a = ConnInfo::parse_with_env("host=127.0.0.1 port=5499 user=u password=p dbname=d", env(&[])).unwrap();
        assert_eq!(a.endpoint, Endpoint::Tcp { host: "127.0.0.1".into(), port: 5499 });
        assert_eq!((a.user.as_str(), a.dbname.as_str()), ("u", "d"));
        assert_eq!(a.password.as_deref(), Some(&b"p"[..]));
        let b = ConnInfo::parse_with_env("postgres://u:p@127.0.0.1:5499/d", env(&[])).unwrap();
        assert_eq!(b.endpoint, a.endpoint);
        assert_eq!(b.dbname, "d");
    }

    #[test]
    fn environment_fills_the_gaps() {
        let e = [("PGHOST", "10.1.2.3"), ("PGPORT", "6000"), ("PGUSER", "dba"), ("PGPASSWORD", "s"), ("PGDATABASE", "app")];
        let c = ConnInfo::parse_with_env("", env(&e)).unwrap();
        assert_eq!(c.endpoint, Endpoint::Tcp { host: "10.1.2.3".into(), port: 6000 });
        assert_eq!((c.user.as_str(), c.dbname.as_str()), ("dba", "app"));
        assert_eq!(c.password.as_deref(), Some(&b"s"[..]));
        let c = ConnInfo::parse_with_env("dbname=other", env(&e)).unwrap();
        assert_eq!(c.dbname, "other");
        let c = ConnInfo::parse_with_env("host=/tmp/sock", env(&e)).unwrap();
        assert_eq!(c.endpoint, Endpoint::Unix { dir: "/tmp/sock".into(), port: 6000 });
    }

    #[test]
    fn bad_input_is_a_config_error() {
        let e = ConnInfo::parse_with_env("host='unterminated", env(&[("USER", "x")])).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        let e = ConnInfo::parse_with_env("", env(&[("PGPORT", "abc"), ("USER", "x")])).unwrap_err();
        assert!(e.to_string().contains("PGPORT"));
    }
}
