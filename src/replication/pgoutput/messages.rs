//! The typed messages of pgoutput (PostgreSQL 15, protocol versions 1 and 2).
//!
//! Field names follow the protocol documentation ("Logical Replication Message Formats").
//! `xid: Option<Xid>` on a data message is the transaction id that protocol v2 prefixes
//! to it inside a stream block; it is `None` outside one.

use std::str::Utf8Error;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::lsn::Lsn;

/// A PostgreSQL object id (relation, type).
pub type Oid = u32;
/// A PostgreSQL transaction id.
pub type Xid = u32;

/// A server timestamp: microseconds since 2000-01-01 00:00:00 UTC.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PgTimestamp(pub i64);

/// Seconds from the Unix epoch to PostgreSQL's epoch, 2000-01-01 UTC.
const PG_EPOCH_UNIX_SECS: u64 = 946_684_800;

impl PgTimestamp {
    /// The wall-clock time, or `None` for values outside what `SystemTime` can hold.
    pub fn to_system_time(self) -> Option<SystemTime> {
        let pg_epoch = SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(PG_EPOCH_UNIX_SECS))?;
        let offset = Duration::from_micros(self.0.unsigned_abs());
        if self.0 >= 0 {
            pg_epoch.checked_add(offset)
        } else {
            pg_epoch.checked_sub(offset)
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Begin(Begin),
    Commit(Commit),
    Origin(Origin),
    Relation(Relation),
    Type(Type),
    Insert(Insert),
    Update(Update),
    Delete(Delete),
    Truncate(Truncate),
    /// A `pg_logical_emit_message` record (sentinels and heartbeats travel this way).
    LogicalMessage(LogicalMessage),
    StreamStart(StreamStart),
    StreamStop,
    StreamCommit(StreamCommit),
    StreamAbort(StreamAbort),
}

impl Message {
    /// The xid a data message carries inside a protocol v2 stream block; `None` for
    /// every other message and for data messages outside a block.
    pub fn stream_xid(&self) -> Option<Xid> {
        match self {
            Message::Relation(m) => m.xid,
            Message::Type(m) => m.xid,
            Message::Insert(m) => m.xid,
            Message::Update(m) => m.xid,
            Message::Delete(m) => m.xid,
            Message::Truncate(m) => m.xid,
            Message::LogicalMessage(m) => m.xid,
            _ => None,
        }
    }

    /// The message's name as the protocol documentation spells it, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Begin(_) => "Begin",
            Message::Commit(_) => "Commit",
            Message::Origin(_) => "Origin",
            Message::Relation(_) => "Relation",
            Message::Type(_) => "Type",
            Message::Insert(_) => "Insert",
            Message::Update(_) => "Update",
            Message::Delete(_) => "Delete",
            Message::Truncate(_) => "Truncate",
            Message::LogicalMessage(_) => "Message",
            Message::StreamStart(_) => "Stream Start",
            Message::StreamStop => "Stream Stop",
            Message::StreamCommit(_) => "Stream Commit",
            Message::StreamAbort(_) => "Stream Abort",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Begin {
    /// The LSN of the transaction's commit record.
    pub final_lsn: Lsn,
    pub commit_time: PgTimestamp,
    pub xid: Xid,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    /// Unused by PostgreSQL 15 (always 0); kept so nothing is silently dropped.
    pub flags: u8,
    pub commit_lsn: Lsn,
    /// The end of the commit record: the position to acknowledge once applied.
    pub end_lsn: Lsn,
    pub commit_time: PgTimestamp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The commit LSN on the origin server.
    pub commit_lsn: Lsn,
    pub name: String,
}

/// How the old row of an Update or Delete is identified (`pg_class.relreplident`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// `'d'`: the primary key.
    Default,
    /// `'n'`: no old row at all.
    Nothing,
    /// `'f'`: the whole old row.
    Full,
    /// `'i'`: the columns of a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    pub(super) fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            b'd' => ReplicaIdentity::Default,
            b'n' => ReplicaIdentity::Nothing,
            b'f' => ReplicaIdentity::Full,
            b'i' => ReplicaIdentity::Index,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    pub xid: Option<Xid>,
    pub id: Oid,
    /// The schema; pgoutput sends an empty string for `pg_catalog`.
    pub namespace: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    pub columns: Vec<Column>,
}

impl Relation {
    /// The columns that form the replica identity key, with their positions in tuples.
    pub fn key_columns(&self) -> impl Iterator<Item = (usize, &Column)> + '_ {
        self.columns.iter().enumerate().filter(|(_, column)| column.is_key())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    /// Bit 1 marks a key column; no other bit is defined.
    pub flags: u8,
    pub name: String,
    pub type_oid: Oid,
    pub type_modifier: i32,
}

impl Column {
    const KEY_FLAG: u8 = 1;

    /// Whether the column is part of the replica identity key.
    pub fn is_key(&self) -> bool {
        self.flags & Self::KEY_FLAG != 0
    }
}

/// A Type message: the name of a non-built-in type used by a relation's column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Type {
    pub xid: Option<Xid>,
    pub id: Oid,
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Insert {
    pub xid: Option<Xid>,
    pub relation_id: Oid,
    pub new: TupleData,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    pub xid: Option<Xid>,
    pub relation_id: Oid,
    /// Present only when the key changed (`Key`) or under REPLICA IDENTITY FULL (`Full`).
    pub old: Option<OldTuple>,
    pub new: TupleData,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delete {
    pub xid: Option<Xid>,
    pub relation_id: Oid,
    pub old: OldTuple,
}

/// The old row of an Update or Delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OldTuple {
    /// `'K'`: key columns hold values; every other column is sent as null, which cannot be
    /// told from a real null: use [`Relation::key_columns`].
    Key(TupleData),
    /// `'O'`: the whole old row (REPLICA IDENTITY FULL).
    Full(TupleData),
}

impl OldTuple {
    pub fn tuple(&self) -> &TupleData {
        match self {
            OldTuple::Key(tuple) | OldTuple::Full(tuple) => tuple,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truncate {
    pub xid: Option<Xid>,
    /// Bit 1: CASCADE, bit 2: RESTART IDENTITY.
    pub options: u8,
    pub relation_ids: Vec<Oid>,
}

impl Truncate {
    pub fn cascade(&self) -> bool {
        self.options & 1 != 0
    }

    pub fn restart_identity(&self) -> bool {
        self.options & 2 != 0
    }
}

/// A logical decoding message, from `pg_logical_emit_message(transactional, prefix, content)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogicalMessage {
    pub xid: Option<Xid>,
    /// Bit 1: transactional.
    pub flags: u8,
    pub lsn: Lsn,
    /// Raw bytes, not a `String`: any session may emit messages into the slot, and a
    /// foreign prefix must not stop the stream.
    pub prefix: Bytes,
    pub content: Bytes,
}

impl LogicalMessage {
    /// Whether the message was emitted as part of its transaction (delivered at commit).
    pub fn is_transactional(&self) -> bool {
        self.flags & 1 != 0
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamStart {
    pub xid: Xid,
    /// True for the first block of this transaction.
    pub first_segment: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamCommit {
    pub xid: Xid,
    /// Unused by PostgreSQL 15 (always 0).
    pub flags: u8,
    pub commit_lsn: Lsn,
    pub end_lsn: Lsn,
    pub commit_time: PgTimestamp,
}

/// Discards streamed changes: the whole transaction when `subtransaction_xid == xid`,
/// otherwise only the changes carrying `subtransaction_xid`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamAbort {
    pub xid: Xid,
    pub subtransaction_xid: Xid,
}

/// The columns of one row, in the relation's column order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TupleData {
    columns: Vec<ColumnValue>,
}

impl TupleData {
    pub(super) fn new(columns: Vec<ColumnValue>) -> Self {
        TupleData { columns }
    }

    pub fn len(&self) -> usize {
        self.columns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// The value of the column at `index` (the Relation's column position).
    pub fn get(&self, index: usize) -> Option<&ColumnValue> {
        self.columns.get(index)
    }

    pub fn columns(&self) -> &[ColumnValue] {
        &self.columns
    }

    pub fn iter(&self) -> std::slice::Iter<'_, ColumnValue> {
        self.columns.iter()
    }
}

impl<'a> IntoIterator for &'a TupleData {
    type Item = &'a ColumnValue;
    type IntoIter = std::slice::Iter<'a, ColumnValue>;

    fn into_iter(self) -> Self::IntoIter {
        self.columns.iter()
    }
}

/// One column of a tuple. `Text` and `Binary` share the message's buffer (no copy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ColumnValue {
    /// `'n'`
    Null,
    /// `'u'`: a TOASTed value the change did not touch; its value is not sent.
    UnchangedToast,
    /// `'t'`: the value in text format.
    Text(Bytes),
    /// `'b'`: the value in binary format (only with the `binary` option).
    Binary(Bytes),
}

impl ColumnValue {
    pub fn is_null(&self) -> bool {
        matches!(self, ColumnValue::Null)
    }

    pub fn is_unchanged_toast(&self) -> bool {
        matches!(self, ColumnValue::UnchangedToast)
    }

    /// The value's bytes for `Text` and `Binary`; `None` for `Null` and `UnchangedToast`.
    pub fn bytes(&self) -> Option<&Bytes> {
        match self {
            ColumnValue::Text(bytes) | ColumnValue::Binary(bytes) => Some(bytes),
            ColumnValue::Null | ColumnValue::UnchangedToast => None,
        }
    }

    /// A `Text` value as `&str`; `None` for every other variant. Text arrives in the
    /// connection's `client_encoding`, so an error means it was not set to UTF8.
    pub fn text(&self) -> Option<Result<&str, Utf8Error>> {
        match self {
            ColumnValue::Text(bytes) => Some(std::str::from_utf8(bytes)),
            _ => None,
        }
    }
}
