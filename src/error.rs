//! The one error type of pg-ghost.
//!
//! Every failure carries an [`ErrorKind`]; SQLSTATE codes are mapped to kinds here and
//! nowhere else, and [`ErrorKind::is_retryable`] is the one retry policy. Context is added
//! where an error is raised (`.context("copying chunk 12")`); the error is logged once,
//! at the boundary (`main`), with its whole chain.

use std::fmt;
use std::time::Duration;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Flags or input that cannot be used as given.
    Config,
    /// A preflight check refused the table, the server or the ALTER.
    Refused,
    /// The connection failed or was lost; the operation may be retried on a new one.
    Connection,
    /// Authentication failed.
    Auth,
    /// The role lacks a privilege.
    Privilege,
    /// The server said something the protocol does not allow here.
    Protocol,
    /// A lock could not be had within `lock_timeout`.
    LockTimeout,
    /// Deadlock or serialization failure: the transaction may simply be run again.
    Serialization,
    /// The object is in use (e.g. a replication slot still active after a disconnect).
    Busy,
    /// Data violates a constraint of the ghost table (e.g. a UNIQUE the ALTER adds).
    Constraint,
    /// The original table's definition changed during the run.
    SchemaChanged,
    /// The server ran out of a resource (SQLSTATE class 53: memory, disk, connections, its
    /// lock table): nothing wrong with the statement; the server needs more.
    Resources,
    /// Any other error reported by PostgreSQL.
    Sql,
    /// Local I/O (files, sockets, hooks).
    Io,
    /// The run was stopped on purpose: panic flag, signal, critical load.
    Aborted,
    /// A broken invariant inside pg-ghost.
    Internal,
    /// A row of the new table cannot be written back to the old one in its old shape (a
    /// value past the old type's range, say): the revert window cannot go back.
    RevertImpossible,
    /// A reconnect found a promoted standby, another cluster or a new timeline behind the
    /// run's address: the run stops and leaves what it made for `--resume` there.
    FailedOver,
}

impl ErrorKind {
    /// The retry policy: which failures are worth trying again after a back-off.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::Connection | ErrorKind::LockTimeout | ErrorKind::Serialization | ErrorKind::Busy
        )
    }

    /// The session is gone: trying again needs a new connection first (see
    /// `crate::reconnect`), never the same client.
    pub fn is_lost_connection(self) -> bool {
        self == ErrorKind::Connection
    }

    /// A stable lower-case name for machines (the history of runs, JSON).
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Config => "config",
            ErrorKind::Refused => "refused",
            ErrorKind::Connection => "connection",
            ErrorKind::Auth => "auth",
            ErrorKind::Privilege => "privilege",
            ErrorKind::Protocol => "protocol",
            ErrorKind::LockTimeout => "lock-timeout",
            ErrorKind::Serialization => "serialization",
            ErrorKind::Busy => "busy",
            ErrorKind::Constraint => "constraint",
            ErrorKind::SchemaChanged => "schema-changed",
            ErrorKind::Resources => "resources",
            ErrorKind::Sql => "sql",
            ErrorKind::Io => "io",
            ErrorKind::Aborted => "aborted",
            ErrorKind::Internal => "internal",
            ErrorKind::RevertImpossible => "revert-impossible",
            ErrorKind::FailedOver => "failed-over",
        }
    }

    /// Maps a SQLSTATE code to a kind. The single place where codes are interpreted.
    pub fn from_sqlstate(code: &str) -> ErrorKind {
        match code {
            "55P03" => ErrorKind::LockTimeout,
            "40001" | "40P01" => ErrorKind::Serialization,
            "55006" => ErrorKind::Busy,
            "42501" => ErrorKind::Privilege,
            "57P01" | "57P02" | "57P03" => ErrorKind::Connection,
            // The server ended the session for sitting idle (in a transaction, or at all): it
            // is gone like a terminated one.
            "25P03" | "57P05" => ErrorKind::Connection,
            c if c.starts_with("08") => ErrorKind::Connection,
            c if c.starts_with("28") => ErrorKind::Auth,
            c if c.starts_with("23") => ErrorKind::Constraint,
            c if c.starts_with("53") => ErrorKind::Resources,
            _ => ErrorKind::Sql,
        }
    }
}

pub struct Error {
    kind: ErrorKind,
    /// Context, outermost first.
    context: Vec<String>,
    message: String,
    sqlstate: Option<String>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error { kind, context: Vec::new(), message: message.into(), sqlstate: None, source: None }
    }

    pub fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error { source: Some(Box::new(source)), ..Error::new(kind, message) }
    }

    pub fn refused(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Refused, message)
    }

    pub fn config(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Config, message)
    }

    pub fn protocol(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Protocol, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Internal, message)
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn sqlstate(&self) -> Option<&str> {
        self.sqlstate.as_deref()
    }

    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }

    /// The server could not compute a value for a row: a data exception (SQLSTATE class
    /// 22: a failing cast, an overflow, a division by zero) or an integrity violation
    /// (class 23: e.g. a domain's CHECK). The row is at fault, not the session.
    pub fn is_row_error(&self) -> bool {
        self.sqlstate.as_deref().is_some_and(|c| c.starts_with("22") || c.starts_with("23"))
    }

    /// The innermost message, without context.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The error and its sources, each once (a source's text is often already in the
    /// message): what is logged at the boundary and recorded in the history of runs.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            let part = s.to_string();
            if !text.contains(&part) {
                text.push_str(": ");
                text.push_str(&part);
            }
            source = s.source();
        }
        text
    }

    /// Adds what was being done when the error happened.
    pub fn context(mut self, ctx: impl Into<String>) -> Self {
        self.context.insert(0, ctx.into());
        self
    }

    pub(crate) fn set_sqlstate(mut self, code: impl Into<String>) -> Self {
        self.sqlstate = Some(code.into());
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.context {
            write!(f, "{c}: ")?;
        }
        f.write_str(&self.message)?;
        if let Some(code) = &self.sqlstate {
            write!(f, " (SQLSTATE {code})")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        if let Some(db) = e.as_db_error() {
            let code = db.code().code().to_string();
            let mut message = db.message().to_string();
            // Check and NOT NULL violations detail the whole failing row: row values stay
            // out of messages and logs.
            if let Some(detail) = db.detail().filter(|_| !matches!(code.as_str(), "23514" | "23502")) {
                message.push_str(". ");
                message.push_str(detail);
            }
            if let Some(hint) = db.hint() {
                message.push_str(". Hint: ");
                message.push_str(hint);
            }
            return Error::new(ErrorKind::from_sqlstate(&code), message).set_sqlstate(code);
        }
        let kind = if e.is_closed() || std::error::Error::source(&e).map_or(false, |s| s.is::<std::io::Error>()) {
            ErrorKind::Connection
        } else {
            ErrorKind::Sql
        };
        let message = match std::error::Error::source(&e) {
            Some(s) => format!("{e}: {s}"),
            None => e.to_string(),
        };
        Error::new(kind, message)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        let kind = match e.kind() {
            std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::TimedOut => ErrorKind::Connection,
            _ => ErrorKind::Io,
        };
        Error::new(kind, e.to_string())
    }
}

/// Adds context to any result whose error converts into [`Error`].
pub trait Context<T> {
    fn context(self, ctx: impl Into<String>) -> Result<T>;
    fn with_context<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context(self, ctx: impl Into<String>) -> Result<T> {
        self.map_err(|e| e.into().context(ctx))
    }
    fn with_context<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| e.into().context(f()))
    }
}

/// Exponential back-off for retryable errors.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub attempts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(5), attempts: 8 }
    }
}

impl Backoff {
    /// Delay before retry number `attempt` (1-based): doubles each time, capped at `max`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// Runs `op` until it succeeds, fails with a non-retryable error, or the attempts run out.
    /// A lost connection is returned at once: `op` runs on a session that is gone, and only
    /// its owner can open another (`crate::reconnect`).
    pub async fn retry<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() && !e.kind().is_lost_connection() && attempt < self.attempts => {
                    let delay = self.delay(attempt);
                    tracing::warn!(what, attempt, delay_ms = delay.as_millis() as u64, error = %e, "retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_sqlstates() {
        assert_eq!(ErrorKind::from_sqlstate("55P03"), ErrorKind::LockTimeout);
        assert_eq!(ErrorKind::from_sqlstate("53200"), ErrorKind::Resources);
        assert_eq!(ErrorKind::from_sqlstate("25P03"), ErrorKind::Connection);
        assert_eq!(ErrorKind::from_sqlstate("23505"), ErrorKind::Constraint);
        assert_eq!(ErrorKind::from_sqlstate("08006"), ErrorKind::Connection);
        assert_eq!(ErrorKind::from_sqlstate("28P01"), ErrorKind::Auth);
        assert_eq!(ErrorKind::from_sqlstate("42501"), ErrorKind::Privilege);
        assert_eq!(ErrorKind::from_sqlstate("42601"), ErrorKind::Sql);
        assert!(ErrorKind::LockTimeout.is_retryable());
        assert!(!ErrorKind::Constraint.is_retryable());
    }

    #[test]
    fn the_chain_names_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = Error::with_source(ErrorKind::Io, "reading hooks", io).context("startup");
        assert_eq!(e.chain(), "startup: reading hooks: no such file");
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = Error::with_source(ErrorKind::Io, "reading hooks: no such file", io);
        assert_eq!(e.chain(), "reading hooks: no such file");
    }

    #[test]
    fn kind_names_are_distinct_and_lower_case() {
        use ErrorKind::*;
        let all = [Config, Refused, Connection, Auth, Privilege, Protocol, LockTimeout, Serialization, Busy, Constraint, SchemaChanged, Sql, Io, Aborted, Internal];
        let names: std::collections::HashSet<_> = all.iter().map(|k| k.name()).collect();
        assert_eq!(names.len(), all.len());
        assert!(names.iter().all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '-')));
    }

    #[test]
    fn context_reads_outermost_first() {
        let e = Error::new(ErrorKind::Sql, "boom").context("inner").context("outer");
        assert_eq!(e.to_string(), "outer: inner: boom");
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(1), attempts: 10 };
        assert_eq!(b.delay(1), Duration::from_millis(100));
        assert_eq!(b.delay(2), Duration::from_millis(200));
        assert_eq!(b.delay(5), Duration::from_secs(1));
        assert_eq!(b.delay(40), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_leaves_a_lost_connection_to_its_owner() {
        let b = Backoff { initial: Duration::from_millis(1), max: Duration::from_millis(1), attempts: 5 };
        let mut runs = 0;
        let r: Result<()> = b
            .retry("x", || {
                runs += 1;
                async { Err(Error::new(ErrorKind::Connection, "gone")) }
            })
            .await;
        assert_eq!((runs, r.unwrap_err().kind()), (1, ErrorKind::Connection));
        let mut runs = 0;
        let r: Result<()> = b
            .retry("x", || {
                runs += 1;
                async { Err(Error::new(ErrorKind::Serialization, "again")) }
            })
            .await;
        assert_eq!((runs, r.unwrap_err().kind()), (5, ErrorKind::Serialization));
    }
}
