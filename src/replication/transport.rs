//! The walsender transport: a logical replication connection spoken directly with
//! postgres-protocol framing over TCP or a Unix socket (tokio-postgres cannot open one).
//!
//! ```no_run
//! # use pg_ghost::{conn::ConnInfo, lsn::Lsn, Result};
//! # use pg_ghost::replication::transport::*;
//! # async fn demo(info: &ConnInfo) -> Result<()> {
//! let mut conn = ReplicationConnection::connect(info).await?;
//! let slot = conn.create_slot("pg_ghost_42", SlotKind::Persistent, SlotSnapshot::Nothing).await?;
//! let mut stream = conn.start_replication("pg_ghost_42", Lsn::ZERO, &StreamOptions::new(["pg_ghost_42"])).await?;
//! while let Some(batch) = stream.recv().await? {
//!     for event in batch {
//!         if let StreamEvent::XLogData { data, .. } = event { /* decode, apply, commit */ }
//!     }
//!     // after the ghost transaction covering a Commit has committed:
//!     # let commit_end_lsn = slot.consistent_point;
//!     stream.set_flushed(commit_end_lsn);
//! #   break;
//! }
//! let mut conn = stream.stop().await?;
//! conn.drop_slot("pg_ghost_42", true).await?;
//! # Ok(()) }
//! ```
//!
//! Invariants:
//! - A [`ReplicationConnection`] is in command mode: one simple-query command at a time
//!   (walsenders refuse the extended protocol). If a command's future is dropped before
//!   its end, the connection refuses further commands: drop it and connect again.
//! - [`ReplicationConnection::start_replication`] hands the socket to a reader thread and
//!   a writer thread (out of tokio's reactor, so that packets arriving while the reader
//!   waits wake nobody) and returns a [`ReplicationStream`]; [`ReplicationStream::stop`]
//!   gives the connection back in command mode, so `DROP_REPLICATION_SLOT` can run on it.
//! - Every keepalive that asks for a reply is answered as soon as it is read, and a status
//!   update goes out at least every `status_interval` (by default no more than half the
//!   server's `wal_sender_timeout`), whether or not the consumer keeps up.
//! - The positions reported are only the ones the consumer set (write, flush, apply), and
//!   each only moves forward. The transport never acknowledges anything on its own: the
//!   slot advances exactly as far as the consumer says it has durably applied.
//! - Memory is bounded: a bounded channel of batches plus about 1 MiB read ahead; beyond
//!   that the reader stops reading the socket (status updates continue).
//! - Reads are coalesced: after a read that found the socket nearly empty, the reader
//!   sleeps `coalesce_delay` (1 ms) before reading again, so the walsender fills the socket
//!   instead of waking us for every message (it is the bottleneck, and each wake-up costs it).
//! - The end of a stream is never silent: EOF, and the CommandComplete that a walsender
//!   stopping for a server shutdown ends with, are `ErrorKind::Connection` errors, an
//!   ErrorResponse is an error of the kind its SQLSTATE maps to, all naming the slot.
//! - An exported snapshot is valid only until the next command on the same connection.

mod auth;
mod framing;
mod options;
mod stream;
mod tls;
mod wire;

pub use auth::AuthMethod;
pub use options::{ProtoVersion, SlotKind, SlotSnapshot, StreamOptions};
pub use stream::{Feedback, ReplicationStream, StreamStats};
pub use wire::{Positions, StreamEvent};

use crate::conn::ConnInfo;
use crate::error::{Context, Error, ErrorKind, Result};
use crate::lsn::Lsn;
use fallible_iterator::FallibleIterator;
use crate::tls::{Negotiation, TlsPlan};
use framing::{log_notice, server_error, Backend, Framed, Socket};
use postgres_protocol::message::backend::{DataRowBody, Message, RowDescriptionBody};
use postgres_protocol::message::frontend;
use std::collections::HashMap;
use std::time::Duration;

/// How long connecting and authenticating may take before giving up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The rows of one statement of a simple query, as text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
    /// The command tag, e.g. `SELECT 1` or `CREATE_REPLICATION_SLOT`.
    pub tag: String,
}

impl QueryResult {
    /// The value of `column` in row `row`; `None` for NULL or when either is missing.
    pub fn value(&self, row: usize, column: &str) -> Option<&str> {
        let col = self.columns.iter().position(|c| c == column)?;
        self.rows.get(row)?.get(col)?.as_deref()
    }
}

/// What `IDENTIFY_SYSTEM` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemIdentity {
    pub system_id: u64,
    pub timeline: u32,
    /// The current WAL flush position.
    pub xlog_pos: Lsn,
    /// The database this connection is bound to.
    pub dbname: Option<String>,
}

/// A slot just created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedSlot {
    pub name: String,
    /// Every transaction committing after this point is in the stream; every one before
    /// it is visible to the exported snapshot.
    pub consistent_point: Lsn,
    /// The exported snapshot, for `SET TRANSACTION SNAPSHOT` in another session. Valid
    /// only until the next command on this connection.
    pub snapshot: Option<String>,
    pub plugin: String,
}

/// A walsender connection in command mode.
pub struct ReplicationConnection {
    framed: Framed,
    meta: ConnMeta,
    /// A command was sent and its answer not read to ReadyForQuery.
    busy: bool,
}

/// What a connection knows about itself, kept aside while a stream owns the socket.
struct ConnMeta {
    auth: AuthMethod,
    backend_pid: i32,
    params: HashMap<String, String>,
    peer: String,
    dbname: String,
    tls: bool,
}

impl ReplicationConnection {
    /// Connects with `replication=database` and authenticates (trust, cleartext, md5 or
    /// SCRAM-SHA-256). A refused password is an `ErrorKind::Auth` error carrying the
    /// server's message.
    pub async fn connect(info: &ConnInfo) -> Result<ReplicationConnection> {
        let peer = format!("{} as {}", info.endpoint.describe(), info.user);
        let plan = TlsPlan::for_conn(info).with_context(|| format!("opening a replication connection to {peer}"))?;
        let result = match plan.negotiation {
            // Plain text first; TLS only when the server refuses it (pg_hba.conf: hostssl).
            Negotiation::PlainThenTls => match Self::connect_once(info, &plan, false).await {
                Err(e) if e.sqlstate().is_some() => {
                    tracing::debug!(error = %e, "the server refused a plain-text replication connection; trying TLS (sslmode=allow)");
                    Self::connect_once(info, &plan, true).await
                }
                other => other,
            },
            Negotiation::Plain => Self::connect_once(info, &plan, false).await,
            Negotiation::TlsIfOffered | Negotiation::TlsOnly => Self::connect_once(info, &plan, true).await,
        };
        let (framed, session) = result.with_context(|| format!("opening a replication connection to {peer}, database {:?}", info.dbname))?;
        tracing::debug!(peer = %peer, pid = session.backend_pid, auth = ?session.auth, tls = session.tls, "replication connection open");
        let meta = ConnMeta {
            auth: session.auth,
            backend_pid: session.backend_pid,
            params: session.params,
            peer,
            dbname: info.dbname.clone(),
            tls: session.tls,
        };
        let mut conn = ReplicationConnection { framed, meta, busy: false };
        if info.server.is_pinned() {
            let system = conn.identify_system().await?;
            // IDENTIFY_SYSTEM names the timeline a standby replays: a standby writes none.
            let standby = conn.one_row("SELECT pg_is_in_recovery() AS standby").await?.value(0, "standby") == Some("t");
            let timeline = (!standby).then_some(system.timeline);
            let now = crate::conn::ServerIdentity { system_id: system.system_id, timeline };
            info.server.check_identity(now).with_context(|| format!("opening a replication connection to {}", conn.meta.peer))?;
        }
        Ok(conn)
    }

    /// One connection attempt; `try_tls` sends an SSLRequest first.
    async fn connect_once(info: &ConnInfo, plan: &TlsPlan, try_tls: bool) -> Result<(Framed, auth::Session)> {
        // libpq waits for ever without connect_timeout; a walsender that does not answer in
        // CONNECT_TIMEOUT is taken for gone.
        let timeout = info.connect_timeout.unwrap_or(CONNECT_TIMEOUT);
        let attempt = async {
            // Any failure to reach the server (a Unix socket missing while it restarts
            // included) is a connection failure, worth trying again.
            let socket = Socket::connect(&info.endpoint, &info.tcp)
                .await
                .map_err(|e| Error::with_source(ErrorKind::Connection, format!("cannot reach the server: {e}"), e))?;
            let (socket, certificate) = if try_tls { negotiate_tls(socket, plan).await? } else { (socket, None) };
            let tls = matches!(socket, Socket::Tls(_));
            let mut framed = Framed::new(socket);
            let binding = certificate.as_deref().and_then(crate::tls::server_end_point);
            let session = auth::startup(&mut framed, info, auth::Channel { tls, binding, mode: plan.channel_binding }).await?;
            Ok::<_, Error>((framed, session))
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(Error::new(ErrorKind::Connection, format!("no answer within {} s", timeout.as_secs()))),
        }
    }

    /// Whether this connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.meta.tls
    }

    /// The walsender's process id.
    pub fn backend_pid(&self) -> i32 {
        self.meta.backend_pid
    }

    /// How the server authenticated us.
    pub fn auth_method(&self) -> AuthMethod {
        self.meta.auth
    }

    /// A parameter the server reported (`server_version`, `server_encoding`, ...).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.meta.params.get(name).map(String::as_str)
    }

    /// Runs replication commands or SQL through the simple query protocol; one result per
    /// statement that completed. An error is returned once the server is ready again, so
    /// the connection stays usable.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<QueryResult>> {
        self.run(sql)
            .await
            .with_context(|| format!("running {} on {}", first_word(sql), self.meta.peer))
    }

    /// `IDENTIFY_SYSTEM`.
    pub async fn identify_system(&mut self) -> Result<SystemIdentity> {
        let r = self.one_row("IDENTIFY_SYSTEM").await?;
        let field = |name: &str| required(&r, "IDENTIFY_SYSTEM", name);
        Ok(SystemIdentity {
            system_id: parse_field(field("systemid")?, "IDENTIFY_SYSTEM", "systemid")?,
            timeline: parse_field(field("timeline")?, "IDENTIFY_SYSTEM", "timeline")?,
            xlog_pos: parse_field(field("xlogpos")?, "IDENTIFY_SYSTEM", "xlogpos")?,
            dbname: r.value(0, "dbname").map(str::to_string),
        })
    }

    /// `CREATE_REPLICATION_SLOT name [TEMPORARY] LOGICAL pgoutput (SNAPSHOT ...)`.
    ///
    /// The server waits for every transaction that holds an xid, in any database, to end
    /// before it answers; a caller that wants a deadline wraps this in a timeout, drops
    /// the connection when it fires, and reports the blockers (see `slot::slot_creation_blockers`).
    pub async fn create_slot(&mut self, name: &str, kind: SlotKind, snapshot: SlotSnapshot) -> Result<CreatedSlot> {
        tracing::info!(
            slot = name,
            ?kind,
            "creating replication slot; this waits for transactions that hold an xid to end"
        );
        let command = options::create_slot_command(name, kind, snapshot);
        let r = self.one_row(&command).await?;
        let what = "CREATE_REPLICATION_SLOT";
        let created = CreatedSlot {
            name: required(&r, what, "slot_name")?.to_string(),
            consistent_point: parse_field(required(&r, what, "consistent_point")?, what, "consistent_point")?,
            snapshot: r.value(0, "snapshot_name").map(str::to_string),
            plugin: r.value(0, "output_plugin").unwrap_or_default().to_string(),
        };
        tracing::info!(slot = name, consistent_point = %created.consistent_point, "replication slot created");
        Ok(created)
    }

    /// `ALTER_REPLICATION_SLOT name (FAILOVER true)` (PostgreSQL 17+): from now on the slot
    /// is synchronized to standbys.
    pub async fn make_failover_slot(&mut self, name: &str) -> Result<()> {
        self.simple_query(&options::failover_slot_command(name)).await?;
        tracing::info!(slot = name, "replication slot altered: synchronized to standbys from now on");
        Ok(())
    }

    /// `DROP_REPLICATION_SLOT name [WAIT]`. With `wait`, a slot still active elsewhere is
    /// waited for instead of failing with 55006 (`ErrorKind::Busy`).
    pub async fn drop_slot(&mut self, name: &str, wait: bool) -> Result<()> {
        self.simple_query(&options::drop_slot_command(name, wait)).await?;
        tracing::info!(slot = name, "replication slot dropped");
        Ok(())
    }

    /// `START_REPLICATION SLOT slot LOGICAL start (...)`: from `start`, or from the slot's
    /// `confirmed_flush_lsn` when that is later (`Lsn::ZERO` resumes where it left off).
    ///
    /// First checks that the publications exist (the server would only fail at the first
    /// change), and reads `wal_sender_timeout` to fit the status interval. A slot in use
    /// by another connection fails with 55006 (`ErrorKind::Busy`, retryable): right after
    /// a disconnect the old walsender may still hold it for a moment.
    pub async fn start_replication(mut self, slot: &str, start: Lsn, options: &StreamOptions) -> Result<ReplicationStream> {
        let context = || format!("starting replication from slot {slot:?} at {start}");
        options.validate().with_context(context)?;
        self.check_publications(&options.publication_names).await.with_context(context)?;
        let status_interval = self.fit_status_interval(options).await.with_context(context)?;
        let command = options::start_replication_command(slot, start, options);
        self.begin(&command).await.with_context(context)?;
        loop {
            match self.framed.recv().await.with_context(context)? {
                Backend::CopyBothResponse => break,
                Backend::Message(Message::ErrorResponse(e)) => {
                    let err = server_error(e.fields());
                    self.read_to_ready(None).await.with_context(context)?;
                    return Err(err.context(context()));
                }
                Backend::Message(Message::NoticeResponse(n)) => log_notice(n.fields()),
                Backend::Message(Message::ParameterStatus(_)) => {}
                other => {
                    return Err(
                        Error::protocol(format!("unexpected {} in answer to START_REPLICATION", other.describe())).context(context()),
                    )
                }
            }
        }
        tracing::info!(slot, %start, pid = self.meta.backend_pid, ?status_interval, "replication started");
        stream::spawn(self, slot, status_interval, options).with_context(context)
    }

    /// Says goodbye (Terminate) and closes the socket.
    pub async fn close(mut self) -> Result<()> {
        frontend::terminate(self.framed.write_buf());
        let sent = self.framed.flush().await;
        self.framed.shutdown().await;
        sent
    }

    async fn begin(&mut self, sql: &str) -> Result<()> {
        if self.busy {
            return Err(Error::new(
                ErrorKind::Connection,
                "the replication connection is unusable: an earlier command was interrupted before its end",
            ));
        }
        frontend::query(sql, self.framed.write_buf()).map_err(|e| Error::config(format!("cannot send this command: {e}")))?;
        self.busy = true;
        self.framed.flush().await
    }

    async fn run(&mut self, sql: &str) -> Result<Vec<QueryResult>> {
        self.begin(sql).await?;
        let mut results = Vec::new();
        self.read_to_ready(Some(&mut results)).await?;
        Ok(results)
    }

    /// Reads the answer to a simple query up to ReadyForQuery, collecting rows when asked.
    /// An ErrorResponse is returned after ReadyForQuery, leaving the connection usable.
    async fn read_to_ready(&mut self, mut results: Option<&mut Vec<QueryResult>>) -> Result<()> {
        let mut current: Option<QueryResult> = None;
        let mut error = None;
        loop {
            match self.framed.recv().await? {
                Backend::Message(Message::RowDescription(body)) => current = Some(columns(&body)?),
                Backend::Message(Message::DataRow(body)) => match current.as_mut() {
                    Some(r) => r.rows.push(row(&body)?),
                    None => return Err(Error::protocol("DataRow without RowDescription")),
                },
                Backend::Message(Message::CommandComplete(body)) => {
                    let mut r = current.take().unwrap_or_default();
                    r.tag = body
                        .tag()
                        .map_err(|e| Error::protocol(format!("malformed command tag: {e}")))?
                        .to_string();
                    if let Some(results) = results.as_deref_mut() {
                        results.push(r);
                    }
                }
                Backend::Message(Message::EmptyQueryResponse) => {}
                Backend::Message(Message::ErrorResponse(e)) => error = Some(server_error(e.fields())),
                Backend::Message(Message::NoticeResponse(n)) => log_notice(n.fields()),
                Backend::Message(Message::ParameterStatus(p)) => {
                    if let (Ok(k), Ok(v)) = (p.name(), p.value()) {
                        self.meta.params.insert(k.to_string(), v.to_string());
                    }
                }
                Backend::Message(Message::ReadyForQuery(_)) => {
                    self.busy = false;
                    return error.map_or(Ok(()), Err);
                }
                // A copy cannot be finished from here: the connection is left unusable.
                other => {
                    return Err(Error::protocol(format!(
                        "unexpected {} in answer to a simple query (commands that start a copy go through start_replication)",
                        other.describe()
                    )))
                }
            }
        }
    }

    /// Runs a command that answers exactly one row.
    async fn one_row(&mut self, command: &str) -> Result<QueryResult> {
        let what = first_word(command);
        let mut results = self.simple_query(command).await?;
        match (results.pop(), results.is_empty()) {
            (Some(r), true) if r.rows.len() == 1 => Ok(r),
            _ => Err(Error::protocol(format!("{what} did not answer exactly one row"))),
        }
    }

    /// Fails when a publication is missing: the server would accept START_REPLICATION and
    /// fail only when the first change is decoded, possibly much later.
    async fn check_publications(&mut self, names: &[String]) -> Result<()> {
        let list = names.iter().map(|n| crate::sql::literal(n)).collect::<Vec<_>>().join(", ");
        let sql = format!(
            "SELECT n FROM unnest(ARRAY[{list}]::text[]) AS n \
             WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_publication p WHERE p.pubname = n)"
        );
        let results = self.simple_query(&sql).await?;
        let missing: Vec<&str> = results
            .iter()
            .flat_map(|r| r.rows.iter())
            .filter_map(|row| row.first()?.as_deref())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::from_sqlstate("42704"),
            format!("publication {missing:?} does not exist in database {:?}", self.meta.dbname),
        )
        .set_sqlstate("42704"))
    }

    async fn fit_status_interval(&mut self, o: &StreamOptions) -> Result<Duration> {
        if !o.fit_status_interval_to_server {
            return Ok(o.status_interval);
        }
        let results = self.simple_query("SHOW wal_sender_timeout").await?;
        let shown = results.first().and_then(|r| r.value(0, "wal_sender_timeout")).unwrap_or_default();
        match options::parse_guc_duration(shown, Duration::from_millis(1)) {
            // Half the timeout, as the server itself waits half of it before it pings.
            Some(timeout) if !timeout.is_zero() => Ok(o.status_interval.min(timeout / 2)),
            Some(_) => Ok(o.status_interval),
            None => {
                tracing::warn!(shown, "cannot read wal_sender_timeout; keeping the configured status interval");
                Ok(o.status_interval)
            }
        }
    }
}

/// Asks the server for TLS (SSLRequest) and, if it agrees, does the handshake; returns the
/// socket to speak on and the server's certificate. A server that declines is spoken to in
/// plain text only where the plan allows it.
async fn negotiate_tls(socket: Socket, plan: &TlsPlan) -> Result<(Socket, Option<Vec<u8>>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = match socket {
        Socket::Tcp(tcp) => tcp,
        other => return Ok((other, None)),
    };
    let mut request = bytes::BytesMut::new();
    frontend::ssl_request(&mut request);
    tcp.write_all(&request).await.map_err(|e| Error::from(e).context("sending the TLS request"))?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.map_err(|e| Error::from(e).context("reading the answer to the TLS request"))?;
    match answer[0] {
        b'S' => {
            let tls = tls::AsyncTls::handshake(tcp, plan).await?;
            let certificate = tls.peer_certificate();
            Ok((Socket::Tls(Box::new(tls)), certificate))
        }
        b'N' if plan.negotiation == Negotiation::TlsOnly => Err(Error::new(ErrorKind::Config, crate::tls::no_tls_on_server())),
        b'N' => Ok((Socket::Tcp(tcp), None)),
        other => Err(Error::protocol(format!("unexpected answer {:?} to the TLS request", other as char))),
    }
}

fn first_word(sql: &str) -> &str {
    sql.split_whitespace().next().unwrap_or("an empty query")
}

fn columns(body: &RowDescriptionBody) -> Result<QueryResult> {
    let mut columns = Vec::new();
    let mut fields = body.fields();
    while let Some(f) = fields
        .next()
        .map_err(|e| Error::protocol(format!("malformed RowDescription: {e}")))?
    {
        columns.push(f.name().to_string());
    }
    Ok(QueryResult {
        columns,
        ..QueryResult::default()
    })
}

fn row(body: &DataRowBody) -> Result<Vec<Option<String>>> {
    let buf = body.buffer();
    let mut values = Vec::new();
    let mut ranges = body.ranges();
    while let Some(range) = ranges.next().map_err(|e| Error::protocol(format!("malformed DataRow: {e}")))? {
        let value = match range {
            None => None,
            Some(r) => {
                let bytes = buf
                    .get(r)
                    .ok_or_else(|| Error::protocol("malformed DataRow: value out of bounds"))?;
                let text =
                    std::str::from_utf8(bytes).map_err(|_| Error::protocol("a value is not UTF-8 although client_encoding is UTF8"))?;
                Some(text.to_string())
            }
        };
        values.push(value);
    }
    Ok(values)
}

fn required<'a>(r: &'a QueryResult, what: &str, column: &str) -> Result<&'a str> {
    r.value(0, column)
        .ok_or_else(|| Error::protocol(format!("{what} returned no {column}")))
}

fn parse_field<T: std::str::FromStr>(text: &str, what: &str, column: &str) -> Result<T> {
    text.parse()
        .map_err(|_| Error::protocol(format!("{what} returned {column} = {text:?}, which cannot be read")))
}
