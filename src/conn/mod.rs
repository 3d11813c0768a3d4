//! Connection settings, read as libpq reads them: a `key=value` string or a
//! `postgresql://` URI (`conninfo`), completed from a connection service (`service`), then
//! from libpq's environment variables (`PGHOST`, `PGUSER`, `PGSSLMODE`, ...), then from
//! libpq's defaults; a password missing after all that comes from the password file
//! (`pgpass`). Several hosts are resolved to one when the run starts (`hosts`).
//!
//! The same settings open ordinary SQL sessions (tokio-postgres) and walsender connections
//! (our own transport), so both see the same server, role and database.
//!
//! Invariants: every libpq keyword given is either honored or refused with its name
//! (`keywords`), never dropped; the password never appears in `Debug`, a log line or an
//! error: a connection is described as `host:port/db as user`.

mod conninfo;
mod hosts;
mod keywords;
mod pgpass;
mod pin;
mod reconnects;
mod service;
mod ssl;

pub use hosts::TargetSession;
pub use pgpass::DEFAULT_SOCKET_DIR;
pub use pin::{ServerIdentity, ServerPin};
pub use reconnects::{Reconnects, DEFAULT_RECONNECT_TIMEOUT};
pub use service::DEFAULT_SYSCONFDIR;
pub use ssl::{ChannelBindingMode, RootCert, SslMode, SslSettings};

use crate::error::{Error, ErrorKind, Result};
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;
use tokio_postgres::Client;

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

#[derive(Clone)]
pub struct ConnInfo {
    /// The server every session of the run goes to: the first of `hosts` until
    /// [`ConnInfo::resolve`] has chosen one.
    pub endpoint: Endpoint,
    /// `host=a,b`: the servers to choose from, in order.
    pub hosts: Vec<Endpoint>,
    pub user: String,
    /// The password for `endpoint`: given, or from the password file.
    pub password: Option<Vec<u8>>,
    pub dbname: String,
    /// What the session is called in `pg_stat_activity`: pg-ghost's name for it (always
    /// starting with `pg-ghost`, which is how pg-ghost recognizes its own sessions), then
    /// the DBA's `application_name` in parentheses.
    pub application_name: String,
    /// `application_name` (or `PGAPPNAME`, or `fallback_application_name`) as given.
    pub user_application_name: Option<String>,
    pub ssl: SslSettings,
    /// `connect_timeout`: how long one attempt to open a session may take; `None`: no limit.
    pub connect_timeout: Option<Duration>,
    /// TCP keepalives and user timeout of every session.
    pub tcp: TcpSettings,
    pub target_session: TargetSession,
    /// The password file consulted for each host when no password was given.
    pub passfile: Option<PathBuf>,
    /// `password` came from `passfile` (said when the server refuses it).
    pub password_from_file: bool,
    /// How long a lost connection is tried again before the run gives up (`--reconnect-timeout`);
    /// zero: a lost connection stops the run at once. See `crate::reconnect`.
    pub reconnect_timeout: Duration,
    /// Reconnections so far, shared by every `ConnInfo` derived from this one.
    pub reconnects: Reconnects,
    /// The server every session must find once the run pinned it, shared by every `ConnInfo`
    /// of the same endpoint derived from this one (see `pin`).
    pub server: ServerPin,
}

/// A setting and where it came from, for messages.
struct Setting {
    value: String,
    from: String,
}

impl ConnInfo {
    /// Parses `conn` and fills what it leaves out from the environment, as libpq does.
    pub fn parse(conn: &str) -> Result<ConnInfo> {
        Self::parse_with_env(conn, |k| std::env::var(k).ok())
    }

    /// Precedence as libpq's: `conn`, then the service it names (or `PGSERVICE`), then
    /// the environment `env`, then the defaults.
    pub fn parse_with_env(conn: &str, env: impl Fn(&str) -> Option<String>) -> Result<ConnInfo> {
        let mut set: HashMap<&'static str, Setting> = HashMap::new();
        for (key, value) in conninfo::parse(conn)? {
            let kw = keywords::known(&key)?;
            set.insert(kw.name, Setting { value, from: "the connection string".into() });
        }
        let service = set.get("service").map(|s| s.value.clone()).or_else(|| env("PGSERVICE")).filter(|s| !s.is_empty());
        if let Some(name) = service {
            let servicefile = set.get("servicefile").map(|s| s.value.clone());
            let (pairs, file) = service::lookup(&name, servicefile.as_deref(), &env)?;
            for (key, value) in pairs {
                let kw = keywords::known(&key)?;
                set.entry(kw.name).or_insert_with(|| Setting { value, from: format!("service \"{name}\" in {}", file.display()) });
            }
        }
        for kw in keywords::KEYWORDS {
            if let (Some(var), false) = (kw.env, set.contains_key(kw.name)) {
                if let Some(value) = env(var) {
                    set.insert(kw.name, Setting { value, from: var.to_string() });
                }
            }
        }
        for (var, setting) in keywords::SESSION_VARIABLES {
            if env(var).is_some_and(|v| !v.is_empty()) {
                return Err(Error::config(format!(
                    "{var} is set: pg-ghost does not pass {setting} to its sessions; unset it (set it per role with ALTER ROLE ... SET if needed)"
                )));
            }
        }
        for (name, setting) in &set {
            keywords::check(keywords::known(name)?, &setting.value, &setting.from)?;
        }
        Self::from_settings(&set, &env)
    }

    fn from_settings(set: &HashMap<&'static str, Setting>, env: &dyn Fn(&str) -> Option<String>) -> Result<ConnInfo> {
        let get = |k: &str| set.get(k).map(|s| s.value.as_str()).filter(|v| !v.is_empty());
        let from = |k: &str| set.get(k).map_or(String::new(), |s| format!(" ({})", s.from));
        let hosts = hosts::endpoints(get("host").unwrap_or(""), get("port").unwrap_or(""), &default_host)
            .map_err(|e| e.context(format!("host/port{}", from("port"))))?;
        let user = match get("user") {
            Some(u) => u.to_string(),
            None => env("USER").filter(|u| !u.is_empty()).ok_or_else(|| Error::config("no user given: set user= in --conn or PGUSER"))?,
        };
        let dbname = get("dbname").unwrap_or(&user).to_string();
        let user_application_name = get("application_name").or_else(|| get("fallback_application_name")).map(str::to_string);
        let password = set.get("password").map(|s| s.value.as_bytes().to_vec()).filter(|p| !p.is_empty());
        let passfile = match (&password, get("passfile")) {
            (Some(_), _) => None,
            (None, Some(f)) => Some(PathBuf::from(f)),
            (None, None) => env("HOME").filter(|h| !h.is_empty()).map(|h| PathBuf::from(h).join(".pgpass")),
        };
        let parsed = |k: &str, e: Error| e.context(format!("{k}{}", from(k)));
        let ssl = SslSettings {
            mode: get("sslmode").map(str::parse).transpose().map_err(|e| parsed("sslmode", e))?.unwrap_or_default(),
            root_cert: get("sslrootcert").map(RootCert::parse),
            cert: get("sslcert").map(PathBuf::from),
            key: get("sslkey").map(PathBuf::from),
            crl: get("sslcrl").map(PathBuf::from),
            channel_binding: get("channel_binding")
                .map(str::parse)
                .transpose()
                .map_err(|e| parsed("channel_binding", e))?
                .unwrap_or_default(),
        };
        let connect_timeout = get("connect_timeout").map(connect_timeout).transpose().map_err(|e| parsed("connect_timeout", e))?.flatten();
        let positive = |k: &str| get(k).map(positive).transpose().map_err(|e| parsed(k, e));
        let default = TcpSettings::default();
        let tcp = TcpSettings {
            idle: positive("keepalives_idle")?.map_or(default.idle, |s| Duration::from_secs(s.into())),
            interval: positive("keepalives_interval")?.map_or(default.interval, |s| Duration::from_secs(s.into())),
            count: positive("keepalives_count")?.unwrap_or(default.count),
            user_timeout: match get("tcp_user_timeout") {
                Some(v) => tcp_user_timeout(v).map_err(|e| parsed("tcp_user_timeout", e))?,
                None => default.user_timeout,
            },
        };
        let target_session =
            get("target_session_attrs").map(str::parse).transpose().map_err(|e| parsed("target_session_attrs", e))?.unwrap_or_default();
        let endpoint = hosts[0].clone();
        let info = ConnInfo {
            endpoint: endpoint.clone(),
            hosts,
            user,
            password,
            dbname,
            application_name: String::new(),
            user_application_name,
            ssl,
            connect_timeout,
            tcp,
            target_session,
            passfile,
            password_from_file: false,
            reconnect_timeout: DEFAULT_RECONNECT_TIMEOUT,
            reconnects: Default::default(),
            server: ServerPin::default(),
        };
        Ok(info.at(&endpoint).with_application_name("pg-ghost"))
    }

    /// The same settings at `endpoint`, with the password file's password for it when no
    /// password was given (libpq looks it up per host).
    pub fn at(&self, endpoint: &Endpoint) -> ConnInfo {
        let mut info = ConnInfo { endpoint: endpoint.clone(), ..self.clone() };
        if *endpoint != self.endpoint {
            // Another server (a replica, another host of the list): pinned on its own.
            info.server = ServerPin::default();
        }
        if let Some(file) = &self.passfile {
            let lookup = pgpass::Lookup { endpoint, dbname: &self.dbname, user: &self.user };
            info.password = pgpass::password(file, lookup);
            info.password_from_file = info.password.is_some();
        }
        info
    }

    /// The same server and role, another database.
    pub fn with_dbname(&self, dbname: &str) -> ConnInfo {
        let info = ConnInfo { dbname: dbname.to_string(), ..self.clone() };
        info.at(&self.endpoint)
    }

    /// The session called `name` (which starts with `pg-ghost`), the DBA's
    /// `application_name` after it.
    pub fn with_application_name(&self, name: &str) -> ConnInfo {
        let application_name = match &self.user_application_name {
            Some(user) => format!("{name} ({user})"),
            None => name.to_string(),
        };
        ConnInfo { application_name, ..self.clone() }
    }

    /// `host:port/db as user`: how a connection is named in messages.
    pub fn describe(&self) -> String {
        format!("{}/{} as {}", self.endpoint.describe(), self.dbname, self.user)
    }

    /// The connection as a libpq string without its password, to print in a command a DBA
    /// runs next (the password file or PGPASSWORD supplies it again).
    pub fn redacted(&self) -> String {
        let quote = |v: &str| match v.is_empty() || v.contains([' ', '\'', '\\', '=']) {
            true => format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'")),
            false => v.to_string(),
        };
        let mut parts = Vec::new();
        match &self.endpoint {
            Endpoint::Tcp { host, port } => parts.extend([format!("host={}", quote(host)), format!("port={port}")]),
            Endpoint::Unix { dir, port } => parts.extend([format!("host={}", quote(&dir.display().to_string())), format!("port={port}")]),
        }
        parts.push(format!("dbname={}", quote(&self.dbname)));
        parts.push(format!("user={}", quote(&self.user)));
        if self.ssl.mode != SslMode::Prefer {
            parts.push(format!("sslmode={}", crate::tls::mode_name(self.ssl.mode)));
        }
        if let Some(root) = &self.ssl.root_cert {
            let value = match root {
                RootCert::System => "system".to_string(),
                RootCert::File(p) => p.display().to_string(),
            };
            parts.push(format!("sslrootcert={}", quote(&value)));
        }
        parts.join(" ")
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
        if let Some(t) = self.connect_timeout {
            cfg.connect_timeout(t);
        }
        cfg.keepalives(true).keepalives_idle(self.tcp.idle).keepalives_interval(self.tcp.interval).keepalives_retries(self.tcp.count);
        if let Some(t) = self.tcp.user_timeout {
            cfg.tcp_user_timeout(t);
        }
        cfg
    }

    /// Opens an ordinary SQL session; its connection task runs on the current runtime.
    pub async fn connect(&self) -> Result<Client> {
        let client = crate::tls::connect_sql(&self.to_config(), self).await.map_err(|e| {
            // libpq's hint: a refused password may be a stale line of the password file.
            let hint = match (&self.passfile, self.password_from_file, e.kind()) {
                (Some(file), true, ErrorKind::Auth) => format!(" (password retrieved from file \"{}\")", file.display()),
                _ => String::new(),
            };
            e.context(format!("connecting to {}{hint}", self.describe()))
        })?;
        self.server.check(&client).await.map_err(|e| e.context(format!("connecting to {}", self.describe())))?;
        Ok(client)
    }
}

impl fmt::Debug for ConnInfo {
    /// Everything but the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnInfo")
            .field("endpoint", &self.endpoint)
            .field("hosts", &self.hosts)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dbname", &self.dbname)
            .field("application_name", &self.application_name)
            .field("ssl", &self.ssl)
            .field("connect_timeout", &self.connect_timeout)
            .field("tcp", &self.tcp)
            .field("target_session", &self.target_session)
            .field("passfile", &self.passfile)
            .field("reconnect_timeout", &self.reconnect_timeout)
            .finish()
    }
}

/// No host given: libpq's default socket directory if it exists, else TCP to localhost.
fn default_host(port: u16) -> Endpoint {
    if std::path::Path::new(DEFAULT_SOCKET_DIR).is_dir() {
        Endpoint::Unix { dir: DEFAULT_SOCKET_DIR.into(), port }
    } else {
        Endpoint::Tcp { host: "localhost".into(), port }
    }
}

/// TCP settings of pg-ghost's sessions (libpq's `keepalives_idle`, `keepalives_interval` and
/// `keepalives_count`, in seconds and probes, and `tcp_user_timeout`, in milliseconds).
///
/// Without them the system's are used, whose first probe comes after two hours of silence: a
/// server gone with the network (no FIN, no RST reaches pg-ghost) would leave a run waiting
/// that long for an answer, its slot retaining WAL. pg-ghost's own defaults find it within a
/// minute, and keep idle sessions through middleboxes that drop quiet connections. A server
/// that answers its probes is never taken for gone, however long its statement runs. Linux
/// sends no probe while sent data waits for its acknowledgement (the stream sends a status
/// update every few seconds): the user timeout, as long as the probes take to give up,
/// bounds that wait too, which retransmissions would otherwise stretch to a quarter of an
/// hour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSettings {
    /// Silence before the first probe.
    pub idle: Duration,
    /// Between probes.
    pub interval: Duration,
    /// Probes unanswered before the connection is dropped.
    pub count: u32,
    /// How long sent data may stay unacknowledged (Linux); `None`: the system's.
    pub user_timeout: Option<Duration>,
}

impl Default for TcpSettings {
    fn default() -> Self {
        let (idle, interval, count) = (Duration::from_secs(30), Duration::from_secs(10), 3);
        TcpSettings { idle, interval, count, user_timeout: Some(idle + interval * count) }
    }
}

/// A whole number of at least 1 (libpq's 0, the system's setting, is what pg-ghost moves
/// away from: see [`TcpSettings`]).
fn positive(text: &str) -> Result<u32> {
    match text.trim().parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(Error::config(format!("invalid value {text:?}: a whole number of at least 1"))),
    }
}

/// Milliseconds; 0 is the system's setting.
fn tcp_user_timeout(text: &str) -> Result<Option<Duration>> {
    let ms: u64 = text.trim().parse().map_err(|_| Error::config(format!("invalid integer value {text:?}")))?;
    Ok((ms > 0).then(|| Duration::from_millis(ms)))
}

/// libpq's rule: whole seconds; 0 or less is no limit; under 2 is 2.
fn connect_timeout(text: &str) -> Result<Option<Duration>> {
    let secs: i64 = text.trim().parse().map_err(|_| Error::config(format!("invalid integer value {text:?}")))?;
    Ok(match secs {
        s if s <= 0 => None,
        1 => Some(Duration::from_secs(2)),
        s => Some(Duration::from_secs(s as u64)),
    })
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

    #[test]
    fn precedence_string_then_service_then_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("services");
        std::fs::write(&file, "[app]\nhost=from-service\nport=6001\nuser=svc\ndbname=svcdb\n").unwrap();
        let file = file.display().to_string();
        let e = [("PGSERVICEFILE", file.as_str()), ("PGSYSCONFDIR", "/nonexistent"), ("PGPORT", "7000"), ("PGUSER", "envuser"), ("PGHOST", "from-env"), ("PGCONNECT_TIMEOUT", "9")];
        let c = ConnInfo::parse_with_env("service=app user=given", env(&e)).unwrap();
        assert_eq!(c.endpoint, Endpoint::Tcp { host: "from-service".into(), port: 6001 });
        assert_eq!((c.user.as_str(), c.dbname.as_str()), ("given", "svcdb"));
        assert_eq!(c.connect_timeout, Some(Duration::from_secs(9)));
        let mut with_env_service = e.to_vec();
        with_env_service.push(("PGSERVICE", "app"));
        let c = ConnInfo::parse_with_env("port=5000", env(&with_env_service)).unwrap();
        assert_eq!(c.endpoint, Endpoint::Tcp { host: "from-service".into(), port: 5000 });
        assert_eq!(c.user, "svc");
        let err = ConnInfo::parse_with_env("service=nope", env(&e)).unwrap_err().to_string();
        assert!(err.contains("definition of service \"nope\" not found") && err.contains(&file), "{err}");
    }

    #[test]
    fn password_file_only_without_a_password() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pgpass");
        std::fs::write(&file, "db1:5432:app:dba:from-file\ndb2:5432:app:dba:second-host\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let f = file.display().to_string();
        let c = ConnInfo::parse_with_env("host=db1,db2 user=dba dbname=app", env(&[("PGPASSFILE", &f)])).unwrap();
        assert_eq!(c.password.as_deref(), Some(&b"from-file"[..]));
        assert!(c.password_from_file);
        let second = c.at(&c.hosts[1]);
        assert_eq!(second.password.as_deref(), Some(&b"second-host"[..]), "looked up per host");
        let c = ConnInfo::parse_with_env("host=db1 user=dba dbname=app password=given", env(&[("PGPASSFILE", &f)])).unwrap();
        assert_eq!(c.password.as_deref(), Some(&b"given"[..]));
        let c = ConnInfo::parse_with_env("host=db1 user=dba dbname=app", env(&[("PGPASSFILE", &f), ("PGPASSWORD", "env")])).unwrap();
        assert_eq!(c.password.as_deref(), Some(&b"env"[..]));
        let c = ConnInfo::parse_with_env(&format!("host=db1 user=dba dbname=app passfile={f}"), env(&[("HOME", "/nonexistent")])).unwrap();
        assert_eq!(c.password.as_deref(), Some(&b"from-file"[..]));
        let c = ConnInfo::parse_with_env("host=db1 user=dba dbname=app", env(&[("HOME", dir.path().to_str().unwrap())])).unwrap();
        assert_eq!(c.password, None, "no ~/.pgpass there");
    }

    #[test]
    fn unsupported_and_unknown_keys_are_refused_by_name() {
        let e = |conn: &str, vars: &[(&str, &str)]| ConnInfo::parse_with_env(conn, env(vars)).unwrap_err();
        let err = e("host=h user=u gssencmode=require", &[]);
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("gssencmode=require (the connection string) is not supported"), "{err}");
        assert!(e("host=h user=u", &[("PGGSSENCMODE", "require")]).to_string().contains("(PGGSSENCMODE)"));
        assert!(e("host=h user=u options='-c x=1'", &[]).to_string().contains("options"));
        assert!(e("host=h user=u target_session_attrs=standby", &[]).to_string().contains("must run on the primary"));
        assert!(e("host=h user=u load_balance_hosts=random", &[]).to_string().contains("load_balance_hosts=random"));
        assert!(e("host=h user=u hostaddr=10.0.0.1", &[]).to_string().contains("hostaddr"));
        assert!(e("host=h user=u tty=x", &[]).to_string().contains("invalid connection option \"tty\""));
        assert!(e("host=h user=u", &[("PGTZ", "UTC")]).to_string().contains("PGTZ"));
        let err = e("host=h user=u sslpassword=hunter2", &[]).to_string();
        assert!(err.contains("sslpassword") && !err.contains("hunter2"), "{err}");
        // What pg-ghost does anyway is accepted.
        let ok = "host=h user=u gssencmode=disable sslsni=1 keepalives=1 client_encoding=utf8 target_session_attrs=primary";
        assert_eq!(ConnInfo::parse_with_env(ok, env(&[])).unwrap().target_session, TargetSession::Primary);
        assert!(e("host=h user=u keepalives=0", &[]).to_string().contains("find a server gone with the network"));
    }

    #[test]
    fn tcp_keepalives_are_pg_ghosts_unless_given() {
        let tcp = |c: &str| ConnInfo::parse_with_env(c, env(&[])).map(|c| c.tcp);
        let given = tcp("host=h user=u keepalives_idle=5 keepalives_interval=2 keepalives_count=4 tcp_user_timeout=9000").unwrap();
        assert_eq!(given, TcpSettings { idle: Duration::from_secs(5), interval: Duration::from_secs(2), count: 4, user_timeout: Some(Duration::from_secs(9)) });
        assert_eq!(tcp("host=h user=u").unwrap(), TcpSettings::default());
        assert_eq!(tcp("host=h user=u tcp_user_timeout=0").unwrap().user_timeout, None);
        for bad in ["keepalives_idle=0", "keepalives_interval=-1", "keepalives_count=x", "tcp_user_timeout=soon"] {
            let err = tcp(&format!("host=h user=u {bad}")).unwrap_err().to_string();
            assert!(err.contains(bad.split('=').next().unwrap_or_default()), "{bad}: {err}");
        }
        let cfg = ConnInfo::parse_with_env("host=h user=u keepalives_idle=5", env(&[])).unwrap().to_config();
        assert_eq!(cfg.get_keepalives_idle(), Duration::from_secs(5));
        assert!(cfg.get_keepalives());
    }

    #[test]
    fn tls_settings_from_string_and_environment() {
        let e = [("PGSSLROOTCERT", "/env/ca.pem"), ("PGSSLCERT", "/env/c.pem"), ("PGSSLKEY", "/env/k.pem"), ("PGSSLCRL", "/env/crl.pem"), ("PGCHANNELBINDING", "require")];
        let c = ConnInfo::parse_with_env("host=h user=u sslmode=verify-full sslrootcert=system", env(&e)).unwrap();
        assert_eq!(c.ssl.mode, SslMode::VerifyFull);
        assert_eq!(c.ssl.root_cert, Some(RootCert::System));
        assert_eq!(c.ssl.cert, Some("/env/c.pem".into()));
        assert_eq!(c.ssl.key, Some("/env/k.pem".into()));
        assert_eq!(c.ssl.crl, Some("/env/crl.pem".into()));
        assert_eq!(c.ssl.channel_binding, ChannelBindingMode::Require);
        let c = ConnInfo::parse_with_env("postgresql://u@h/d?sslmode=require", env(&[("PGSSLMODE", "disable")])).unwrap();
        assert_eq!(c.ssl.mode, SslMode::Require);
        assert_eq!(ConnInfo::parse_with_env("host=h user=u", env(&[("PGSSLMODE", "disable")])).unwrap().ssl.mode, SslMode::Disable);
        let err = ConnInfo::parse_with_env("host=h user=u", env(&[("PGSSLMODE", "bogus")])).unwrap_err().to_string();
        assert!(err.contains("sslmode (PGSSLMODE)") && err.contains("bogus"), "{err}");
    }

    #[test]
    fn connect_timeout_as_libpq_reads_it() {
        let t = |v: &str| ConnInfo::parse_with_env(&format!("host=h user=u connect_timeout={v}"), env(&[])).map(|c| c.connect_timeout);
        assert_eq!(t("10").unwrap(), Some(Duration::from_secs(10)));
        assert_eq!(t("1").unwrap(), Some(Duration::from_secs(2)));
        assert_eq!(t("0").unwrap(), None);
        assert_eq!(t("-3").unwrap(), None);
        assert!(t("ten").unwrap_err().to_string().contains("connect_timeout"));
        assert_eq!(ConnInfo::parse_with_env("host=h user=u", env(&[])).unwrap().connect_timeout, None);
    }

    #[test]
    fn several_hosts_start_at_the_first() {
        let c = ConnInfo::parse_with_env("postgresql://u@a:1,b:2/db?target_session_attrs=read-write", env(&[])).unwrap();
        assert_eq!(c.hosts, vec![Endpoint::Tcp { host: "a".into(), port: 1 }, Endpoint::Tcp { host: "b".into(), port: 2 }]);
        assert_eq!(c.endpoint, c.hosts[0]);
        assert_eq!(c.target_session, TargetSession::ReadWrite);
    }

    #[test]
    fn the_dbas_application_name_follows_pg_ghosts() {
        let c = ConnInfo::parse_with_env("host=h user=u", env(&[])).unwrap();
        assert_eq!(c.application_name, "pg-ghost");
        assert_eq!(c.with_application_name("pg-ghost copy").application_name, "pg-ghost copy");
        let c = ConnInfo::parse_with_env("host=h user=u", env(&[("PGAPPNAME", "nightly")])).unwrap();
        assert_eq!(c.application_name, "pg-ghost (nightly)");
        assert_eq!(c.with_application_name("pg-ghost cut-over").application_name, "pg-ghost cut-over (nightly)");
        let c = ConnInfo::parse_with_env("host=h user=u fallback_application_name=fb", env(&[])).unwrap();
        assert_eq!(c.application_name, "pg-ghost (fb)");
        let c = ConnInfo::parse_with_env("host=h user=u application_name=mine fallback_application_name=fb", env(&[])).unwrap();
        assert_eq!(c.with_application_name("pg-ghost apply").to_config().get_application_name(), Some("pg-ghost apply (mine)"));
    }

    #[test]
    fn debug_and_descriptions_never_show_the_password() {
        let c = ConnInfo::parse_with_env("postgresql://dba:Sup3rSecret@db1:5433/app", env(&[])).unwrap();
        let shown = format!("{c:?} {} {}", c.describe(), c.endpoint.describe());
        assert!(!shown.contains("Sup3rSecret"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert_eq!(c.describe(), "db1:5433/app as dba");
    }
}
