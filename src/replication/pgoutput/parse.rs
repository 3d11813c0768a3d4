//! One function per message body. Each reads exactly the fields the protocol
//! documentation lists, in order; the caller has read the type byte and checks that
//! nothing is left over.

use super::error::{DecodeError, DecodeErrorKind};
use super::messages::{
    Begin, Column, ColumnValue, Commit, Delete, Insert, LogicalMessage, OldTuple, Origin, PgTimestamp, Relation,
    ReplicaIdentity, StreamAbort, StreamCommit, StreamStart, Truncate, TupleData, Type, Update, Xid,
};
use super::reader::Reader;
use super::StreamBlock;

/// The leading xid that data messages carry inside a protocol v2 stream block.
fn streamed_xid(r: &mut Reader<'_>, block: StreamBlock) -> Result<Option<Xid>, DecodeError> {
    match block {
        StreamBlock::Inside => Ok(Some(r.u32("streamed transaction xid")?)),
        StreamBlock::Outside => Ok(None),
    }
}

/// Capacity for `count` items of at least `min_item_len` bytes each: never more than
/// the rest of the message could hold, so a forged count cannot allocate gigabytes.
fn bounded_capacity(r: &Reader<'_>, count: usize, min_item_len: usize) -> usize {
    count.min(r.remaining() / min_item_len.max(1))
}

pub(super) fn begin(r: &mut Reader<'_>) -> Result<Begin, DecodeError> {
    Ok(Begin {
        final_lsn: r.lsn("final LSN")?,
        commit_time: PgTimestamp(r.i64("commit timestamp")?),
        xid: r.u32("xid")?,
    })
}

pub(super) fn commit(r: &mut Reader<'_>) -> Result<Commit, DecodeError> {
    Ok(Commit {
        flags: r.u8("flags")?,
        commit_lsn: r.lsn("commit LSN")?,
        end_lsn: r.lsn("end LSN")?,
        commit_time: PgTimestamp(r.i64("commit timestamp")?),
    })
}

pub(super) fn origin(r: &mut Reader<'_>) -> Result<Origin, DecodeError> {
    Ok(Origin { commit_lsn: r.lsn("origin commit LSN")?, name: r.string("origin name")? })
}

pub(super) fn relation(r: &mut Reader<'_>, block: StreamBlock) -> Result<Relation, DecodeError> {
    let xid = streamed_xid(r, block)?;
    let id = r.u32("relation id")?;
    let namespace = r.string("namespace")?;
    let name = r.string("relation name")?;
    let replica_identity = replica_identity(r)?;
    let count = usize::from(r.u16("column count")?);
    // flags, an empty name's NUL, type oid and type modifier: 10 bytes at least.
    let mut columns = Vec::with_capacity(bounded_capacity(r, count, 10));
    for index in 0..count {
        columns.push(relation_column(r).map_err(|e| e.in_column(index))?);
    }
    Ok(Relation { xid, id, namespace, name, replica_identity, columns })
}

fn replica_identity(r: &mut Reader<'_>) -> Result<ReplicaIdentity, DecodeError> {
    let at = r.offset();
    let field = "replica identity";
    let byte = r.u8(field)?;
    ReplicaIdentity::from_byte(byte).ok_or_else(|| {
        r.error_at(at, DecodeErrorKind::UnexpectedByte { field, byte, expected: "'d', 'n', 'f' or 'i'" })
    })
}

fn relation_column(r: &mut Reader<'_>) -> Result<Column, DecodeError> {
    Ok(Column {
        flags: r.u8("column flags")?,
        name: r.string("column name")?,
        type_oid: r.u32("column type oid")?,
        type_modifier: r.i32("column type modifier")?,
    })
}

pub(super) fn type_message(r: &mut Reader<'_>, block: StreamBlock) -> Result<Type, DecodeError> {
    Ok(Type {
        xid: streamed_xid(r, block)?,
        id: r.u32("type oid")?,
        namespace: r.string("type namespace")?,
        name: r.string("type name")?,
    })
}

pub(super) fn insert(r: &mut Reader<'_>, block: StreamBlock) -> Result<Insert, DecodeError> {
    let xid = streamed_xid(r, block)?;
    let relation_id = r.u32("relation id")?;
    expect_byte(r, b'N', "new tuple marker", "'N'")?;
    Ok(Insert { xid, relation_id, new: tuple(r)? })
}

pub(super) fn update(r: &mut Reader<'_>, block: StreamBlock) -> Result<Update, DecodeError> {
    let xid = streamed_xid(r, block)?;
    let relation_id = r.u32("relation id")?;
    let at = r.offset();
    let field = "tuple marker";
    let old = match r.u8(field)? {
        b'N' => None,
        marker @ (b'K' | b'O') => {
            let old = old_tuple(r, marker)?;
            expect_byte(r, b'N', "new tuple marker", "'N'")?;
            Some(old)
        }
        byte => {
            return Err(r.error_at(at, DecodeErrorKind::UnexpectedByte { field, byte, expected: "'K', 'O' or 'N'" }))
        }
    };
    Ok(Update { xid, relation_id, old, new: tuple(r)? })
}

pub(super) fn delete(r: &mut Reader<'_>, block: StreamBlock) -> Result<Delete, DecodeError> {
    let xid = streamed_xid(r, block)?;
    let relation_id = r.u32("relation id")?;
    let at = r.offset();
    let field = "old tuple marker";
    let old = match r.u8(field)? {
        marker @ (b'K' | b'O') => old_tuple(r, marker)?,
        byte => return Err(r.error_at(at, DecodeErrorKind::UnexpectedByte { field, byte, expected: "'K' or 'O'" })),
    };
    Ok(Delete { xid, relation_id, old })
}

/// The tuple after a `'K'` or `'O'` marker the caller has already checked.
fn old_tuple(r: &mut Reader<'_>, marker: u8) -> Result<OldTuple, DecodeError> {
    let tuple = tuple(r)?;
    Ok(if marker == b'K' { OldTuple::Key(tuple) } else { OldTuple::Full(tuple) })
}

pub(super) fn truncate(r: &mut Reader<'_>, block: StreamBlock) -> Result<Truncate, DecodeError> {
    let xid = streamed_xid(r, block)?;
    let at = r.offset();
    let field = "relation count";
    let declared = r.i32(field)?;
    let Ok(count) = usize::try_from(declared) else {
        return Err(r.error_at(at, DecodeErrorKind::NegativeLength { field, length: declared }));
    };
    let options = r.u8("options")?;
    let mut relation_ids = Vec::with_capacity(bounded_capacity(r, count, 4));
    for _ in 0..count {
        relation_ids.push(r.u32("relation id")?);
    }
    Ok(Truncate { xid, options, relation_ids })
}

pub(super) fn logical_message(r: &mut Reader<'_>, block: StreamBlock) -> Result<LogicalMessage, DecodeError> {
    Ok(LogicalMessage {
        xid: streamed_xid(r, block)?,
        flags: r.u8("flags")?,
        lsn: r.lsn("message LSN")?,
        prefix: r.cstring_bytes("prefix")?,
        content: r.length_prefixed("content")?,
    })
}

pub(super) fn stream_start(r: &mut Reader<'_>) -> Result<StreamStart, DecodeError> {
    let xid = r.u32("xid")?;
    let at = r.offset();
    let field = "first segment flag";
    let first_segment = match r.u8(field)? {
        0 => false,
        1 => true,
        byte => return Err(r.error_at(at, DecodeErrorKind::UnexpectedByte { field, byte, expected: "0 or 1" })),
    };
    Ok(StreamStart { xid, first_segment })
}

pub(super) fn stream_commit(r: &mut Reader<'_>) -> Result<StreamCommit, DecodeError> {
    Ok(StreamCommit {
        xid: r.u32("xid")?,
        flags: r.u8("flags")?,
        commit_lsn: r.lsn("commit LSN")?,
        end_lsn: r.lsn("end LSN")?,
        commit_time: PgTimestamp(r.i64("commit timestamp")?),
    })
}

pub(super) fn stream_abort(r: &mut Reader<'_>) -> Result<StreamAbort, DecodeError> {
    Ok(StreamAbort { xid: r.u32("xid")?, subtransaction_xid: r.u32("subtransaction xid")? })
}

fn expect_byte(r: &mut Reader<'_>, wanted: u8, field: &'static str, expected: &'static str) -> Result<(), DecodeError> {
    let at = r.offset();
    match r.u8(field)? {
        byte if byte == wanted => Ok(()),
        byte => Err(r.error_at(at, DecodeErrorKind::UnexpectedByte { field, byte, expected })),
    }
}

/// TupleData: an Int16 column count, then one kind byte per column, with an Int32 length
/// and the value after `'t'` and `'b'`.
fn tuple(r: &mut Reader<'_>) -> Result<TupleData, DecodeError> {
    let count = usize::from(r.u16("tuple column count")?);
    // Every column takes at least its kind byte.
    let mut columns = Vec::with_capacity(bounded_capacity(r, count, 1));
    for index in 0..count {
        columns.push(column_value(r).map_err(|e| e.in_column(index))?);
    }
    Ok(TupleData::new(columns))
}

fn column_value(r: &mut Reader<'_>) -> Result<ColumnValue, DecodeError> {
    let at = r.offset();
    let field = "column value kind";
    match r.u8(field)? {
        b'n' => Ok(ColumnValue::Null),
        b'u' => Ok(ColumnValue::UnchangedToast),
        b't' => Ok(ColumnValue::Text(r.length_prefixed("text column value")?)),
        b'b' => Ok(ColumnValue::Binary(r.length_prefixed("binary column value")?)),
        byte => Err(r.error_at(at, DecodeErrorKind::UnexpectedByte { field, byte, expected: "'n', 'u', 't' or 'b'" })),
    }
}
