//! Options of `START_REPLICATION` and the text of the replication commands.
//!
//! The replication grammar is not SQL: its string constants know only `''` as an escape
//! (no `E'...'`, backslashes are literal), and pgoutput splits `publication_names` like
//! an identifier list, so each name is double-quoted inside the single-quoted value.

use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::sql::ident;
use std::time::Duration;

/// pgoutput's protocol version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtoVersion {
    /// Transactions arrive whole, after their commit.
    V1,
    /// Adds streaming of large in-progress transactions (`streaming`).
    V2,
}

impl ProtoVersion {
    fn as_str(self) -> &'static str {
        match self {
            ProtoVersion::V1 => "1",
            ProtoVersion::V2 => "2",
        }
    }
}

/// What to ask pgoutput for, and how the client side of the stream behaves.
#[derive(Clone, Debug)]
pub struct StreamOptions {
    /// Publications whose tables are streamed; at least one. Names are sent quoted, so
    /// they are matched exactly (case, spaces, commas).
    pub publication_names: Vec<String>,
    pub proto_version: ProtoVersion,
    /// Logical decoding messages (`pg_logical_emit_message`): pg-ghost's control markers
    /// travel this way, so the default is on.
    pub messages: bool,
    /// Stream large in-progress transactions (needs [`ProtoVersion::V2`]).
    pub streaming: bool,
    /// Column values in binary send/recv format instead of text.
    pub binary: bool,
    /// `origin 'none'` (PostgreSQL 16+): changes written under any replication origin are
    /// left out (see `crate::replication::origins`).
    pub origin_none: bool,
    /// Longest time between two standby status updates, sent whether or not the consumer
    /// keeps up.
    pub status_interval: Duration,
    /// Shorten `status_interval` to half the server's `wal_sender_timeout`, so that a
    /// consumer too slow for the reader to keep reading cannot get the connection cut.
    /// Turn off only to watch the server's keepalive requests being answered (tests).
    pub fit_status_interval_to_server: bool,
    /// Batches of events buffered between the reader task and the consumer.
    pub channel_capacity: usize,
    /// After a read that found little data, the pause before the next read, so the socket
    /// fills and the walsender is not woken for every message. Zero reads eagerly.
    pub coalesce_delay: Duration,
}

impl StreamOptions {
    /// pgoutput protocol 1 with logical messages, status every 10 s, reads coalesced.
    pub fn new<I, S>(publication_names: I) -> StreamOptions
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        StreamOptions {
            publication_names: publication_names.into_iter().map(Into::into).collect(),
            proto_version: ProtoVersion::V1,
            messages: true,
            streaming: false,
            binary: false,
            origin_none: false,
            status_interval: Duration::from_secs(10),
            fit_status_interval_to_server: true,
            channel_capacity: 16,
            coalesce_delay: Duration::from_millis(1),
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.publication_names.is_empty() {
            return Err(Error::config("START_REPLICATION needs at least one publication"));
        }
        if let Some(bad) = self.publication_names.iter().find(|p| p.is_empty() || p.contains('\0')) {
            return Err(Error::config(format!("invalid publication name {bad:?}")));
        }
        if self.streaming && self.proto_version == ProtoVersion::V1 {
            return Err(Error::config(
                "streaming of in-progress transactions needs pgoutput protocol version 2",
            ));
        }
        if self.status_interval.is_zero() {
            return Err(Error::config("the status update interval must be positive"));
        }
        if self.channel_capacity == 0 {
            return Err(Error::config("the stream's channel capacity must be at least 1"));
        }
        Ok(())
    }
}

/// A string constant of the replication grammar: only `'` needs (and allows) escaping.
pub(crate) fn repl_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// The `publication_names` value: each name double-quoted, comma-separated.
pub(crate) fn publication_list(names: &[String]) -> String {
    names.iter().map(|n| ident(n)).collect::<Vec<_>>().join(",")
}

pub(crate) fn start_replication_command(slot: &str, start: Lsn, o: &StreamOptions) -> String {
    let mut opts = vec![
        format!("proto_version {}", repl_literal(o.proto_version.as_str())),
        format!("publication_names {}", repl_literal(&publication_list(&o.publication_names))),
    ];
    // Off is pgoutput's default: leaving the option out keeps servers older than the
    // option (messages, streaming and binary came in PostgreSQL 14) working.
    for (on, name) in [(o.messages, "messages"), (o.streaming, "streaming"), (o.binary, "binary")] {
        if on {
            opts.push(format!("{name} 'true'"));
        }
    }
    if o.origin_none {
        opts.push("origin 'none'".to_string());
    }
    format!("START_REPLICATION SLOT {} LOGICAL {start} ({})", ident(slot), opts.join(", "))
}

/// Whether a new slot exports a snapshot for other sessions to read the database as of
/// the slot's consistent point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotSnapshot {
    /// Export it: the name stays valid until the next command on this connection.
    Export,
    Nothing,
}

/// Whether a slot outlives its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotKind {
    /// Survives disconnects and restarts (and retains WAL until dropped).
    Persistent,
    /// Dropped when the connection ends, whatever the reason; cannot be resumed.
    Temporary,
    /// Persistent, and copied to the standbys that synchronize slots (PostgreSQL 17+), so
    /// that it survives their promotion.
    Failover,
}

pub(crate) fn create_slot_command(name: &str, kind: SlotKind, snapshot: SlotSnapshot) -> String {
    let (temporary, failover) = match kind {
        SlotKind::Persistent => ("", ""),
        SlotKind::Temporary => (" TEMPORARY", ""),
        SlotKind::Failover => ("", ", FAILOVER"),
    };
    let snapshot = match snapshot {
        SlotSnapshot::Export => "export",
        SlotSnapshot::Nothing => "nothing",
    };
    format!(
        "CREATE_REPLICATION_SLOT {}{temporary} LOGICAL pgoutput (SNAPSHOT '{snapshot}'{failover})",
        ident(name)
    )
}

pub(crate) fn failover_slot_command(name: &str) -> String {
    format!("ALTER_REPLICATION_SLOT {} (FAILOVER true)", ident(name))
}

pub(crate) fn drop_slot_command(name: &str, wait: bool) -> String {
    format!("DROP_REPLICATION_SLOT {}{}", ident(name), if wait { " WAIT" } else { "" })
}

/// Reads a time setting as `SHOW` prints it (`60s`, `1min`, `500ms`, `0`). A bare number
/// is in `default_unit`.
pub(crate) fn parse_guc_duration(text: &str, default_unit: Duration) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u32 = number.parse().ok()?;
    let unit = match unit.trim() {
        "" => default_unit,
        "us" => Duration::from_micros(1),
        "ms" => Duration::from_millis(1),
        "s" => Duration::from_secs(1),
        "min" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        "d" => Duration::from_secs(86400),
        _ => return None,
    };
    unit.checked_mul(number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_command_quotes_slot_and_publications() {
        let mut o = StreamOptions::new(["orders_pub", "My \"odd\", pub's"]);
        assert_eq!(
            start_replication_command("pg_ghost_1", Lsn(0x1_0000_0010), &o),
            "START_REPLICATION SLOT \"pg_ghost_1\" LOGICAL 1/10 (proto_version '1', \
             publication_names '\"orders_pub\",\"My \"\"odd\"\", pub''s\"', messages 'true')"
        );
        o.messages = false;
        o.proto_version = ProtoVersion::V2;
        o.streaming = true;
        o.binary = true;
        o.publication_names = vec!["a\\b".into()];
        assert_eq!(
            start_replication_command("s", Lsn::ZERO, &o),
            "START_REPLICATION SLOT \"s\" LOGICAL 0/0 (proto_version '2', publication_names '\"a\\b\"', \
             streaming 'true', binary 'true')"
        );
        o.origin_none = true;
        assert!(start_replication_command("s", Lsn::ZERO, &o).ends_with("binary 'true', origin 'none')"));
    }

    #[test]
    fn validates_options() {
        assert!(StreamOptions::new(["p"]).validate().is_ok());
        assert!(StreamOptions::new(Vec::<String>::new()).validate().is_err());
        assert!(StreamOptions::new([""]).validate().is_err());
        let mut o = StreamOptions::new(["p"]);
        o.streaming = true;
        assert!(o.validate().is_err());
        o.proto_version = ProtoVersion::V2;
        assert!(o.validate().is_ok());
        o.status_interval = Duration::ZERO;
        assert!(o.validate().is_err());
    }

    #[test]
    fn slot_commands() {
        assert_eq!(
            create_slot_command("s", SlotKind::Persistent, SlotSnapshot::Export),
            "CREATE_REPLICATION_SLOT \"s\" LOGICAL pgoutput (SNAPSHOT 'export')"
        );
        assert_eq!(
            create_slot_command("s", SlotKind::Temporary, SlotSnapshot::Nothing),
            "CREATE_REPLICATION_SLOT \"s\" TEMPORARY LOGICAL pgoutput (SNAPSHOT 'nothing')"
        );
        assert_eq!(
            create_slot_command("s", SlotKind::Failover, SlotSnapshot::Nothing),
            "CREATE_REPLICATION_SLOT \"s\" LOGICAL pgoutput (SNAPSHOT 'nothing', FAILOVER)"
        );
        assert_eq!(drop_slot_command("a\"b", true), "DROP_REPLICATION_SLOT \"a\"\"b\" WAIT");
        assert_eq!(failover_slot_command("s"), "ALTER_REPLICATION_SLOT \"s\" (FAILOVER true)");
        assert_eq!(drop_slot_command("s", false), "DROP_REPLICATION_SLOT \"s\"");
    }

    #[test]
    fn reads_guc_durations() {
        let ms = Duration::from_millis(1);
        assert_eq!(parse_guc_duration("1min", ms), Some(Duration::from_secs(60)));
        assert_eq!(parse_guc_duration("3s", ms), Some(Duration::from_secs(3)));
        assert_eq!(parse_guc_duration("1500ms", ms), Some(Duration::from_millis(1500)));
        assert_eq!(parse_guc_duration("0", ms), Some(Duration::ZERO));
        assert_eq!(parse_guc_duration("250", ms), Some(Duration::from_millis(250)));
        assert_eq!(parse_guc_duration("2h", ms), Some(Duration::from_secs(7200)));
        for bad in ["", "s", "-1s", "1 fortnight", "1.5s"] {
            assert_eq!(parse_guc_duration(bad, ms), None, "{bad:?}");
        }
    }
}
