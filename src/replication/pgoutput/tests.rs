//! Every message type built by hand in its documented format and decoded field by field;
//! then the error paths. Truncation and mutation fuzzing live in `tests/fuzz.rs`.

mod build;
mod fuzz;

use bytes::Bytes;

use super::*;
use crate::lsn::Lsn;
use build::*;

use StreamBlock::{Inside, Outside};

fn decoded(data: &Bytes, block: StreamBlock) -> Message {
    match decode(data, block) {
        Ok(message) => message,
        Err(e) => panic!("valid message failed to decode: {e}"),
    }
}

fn decode_err(data: &Bytes, block: StreamBlock) -> DecodeError {
    match decode(data, block) {
        Ok(message) => panic!("malformed message decoded as {message:?}"),
        Err(e) => e,
    }
}

fn text(v: &[u8]) -> ColumnValue {
    ColumnValue::Text(Bytes::copy_from_slice(v))
}

#[test]
fn begin() {
    let expected = Begin { final_lsn: Lsn(LSN_A), commit_time: PgTimestamp(TS), xid: 747 };
    assert_eq!(decoded(&build::begin(), Outside), Message::Begin(expected));
}

#[test]
fn commit() {
    let expected = Commit { flags: 0, commit_lsn: Lsn(LSN_A), end_lsn: Lsn(LSN_B), commit_time: PgTimestamp(TS) };
    assert_eq!(decoded(&build::commit(), Outside), Message::Commit(expected));
}

#[test]
fn origin() {
    let expected = Origin { commit_lsn: Lsn(LSN_A), name: "node_a".into() };
    assert_eq!(decoded(&build::origin(), Outside), Message::Origin(expected));
}

#[test]
fn relation_with_key_flags() {
    for (xid, block) in [(None, Outside), (Some(901), Inside)] {
        let Message::Relation(rel) = decoded(&build::relation(xid), block) else { panic!("not a Relation") };
        assert_eq!(rel.xid, xid);
        assert_eq!(rel.id, RELID);
        assert_eq!((rel.namespace.as_str(), rel.name.as_str()), ("public", "orders"));
        assert_eq!(rel.replica_identity, ReplicaIdentity::Default);
        let column =
            |flags, name: &str, type_oid, type_modifier| Column { flags, name: name.into(), type_oid, type_modifier };
        let expected = vec![column(1, "id", 20, -1), column(0, "note", 25, -1), column(0, "price", 1700, 655_366)];
        assert_eq!(rel.columns, expected);
        let keys: Vec<(usize, &str)> = rel.key_columns().map(|(i, c)| (i, c.name.as_str())).collect();
        assert_eq!(keys, [(0, "id")]);
    }
}

#[test]
fn relation_replica_identities_and_catalog_namespace() {
    for (byte, identity) in [
        (b'd', ReplicaIdentity::Default),
        (b'n', ReplicaIdentity::Nothing),
        (b'f', ReplicaIdentity::Full),
        (b'i', ReplicaIdentity::Index),
    ] {
        let data = Msg::new(b'R').u32(7).cstr(b"").cstr(b"t").u8(byte).u16(0).bytes();
        let Message::Relation(rel) = decoded(&data, Outside) else { panic!("not a Relation") };
        assert_eq!(rel.replica_identity, identity);
        assert_eq!(rel.namespace, "");
        assert!(rel.columns.is_empty());
        assert_eq!(rel.key_columns().count(), 0);
    }
}

#[test]
fn composite_key_and_unknown_flag_bits() {
    let data = Msg::new(b'R')
        .u32(7)
        .cstr(b"s")
        .cstr(b"t")
        .u8(b'i')
        .u16(3)
        .raw(&[1, b'a', 0, 0, 0, 0, 23, 0xFF, 0xFF, 0xFF, 0xFF])
        .raw(&[2, b'b', 0, 0, 0, 0, 23, 0xFF, 0xFF, 0xFF, 0xFF])
        .raw(&[3, b'c', 0, 0, 0, 0, 23, 0xFF, 0xFF, 0xFF, 0xFF])
        .bytes();
    let Message::Relation(rel) = decoded(&data, Outside) else { panic!("not a Relation") };
    let keys: Vec<usize> = rel.key_columns().map(|(i, _)| i).collect();
    assert_eq!(keys, [0, 2]);
    assert_eq!(rel.columns[1].flags, 2);
}

#[test]
fn type_message() {
    for (xid, block) in [(None, Outside), (Some(901), Inside)] {
        let expected = Type { xid, id: 16_390, namespace: "public".into(), name: "mood".into() };
        assert_eq!(decoded(&build::type_message(xid), block), Message::Type(expected));
    }
}

#[test]
fn insert_with_every_column_kind() {
    for (xid, block) in [(None, Outside), (Some(901), Inside)] {
        let Message::Insert(insert) = decoded(&build::insert(xid), block) else { panic!("not an Insert") };
        assert_eq!((insert.xid, insert.relation_id), (xid, RELID));
        let row = &insert.new;
        assert_eq!(row.len(), 4);
        assert_eq!(row.get(0), Some(&text(b"42")));
        assert_eq!(row.get(0).and_then(ColumnValue::text), Some(Ok("42")));
        assert!(row.get(1).is_some_and(ColumnValue::is_null));
        assert!(row.get(2).is_some_and(ColumnValue::is_unchanged_toast));
        assert_eq!(row.get(3), Some(&ColumnValue::Binary(Bytes::from_static(&[0, 1, 0xFF]))));
        assert_eq!(row.get(3).and_then(ColumnValue::text), None);
        assert_eq!(row.get(4), None);
        assert_eq!(row.iter().count(), 4);
    }
}

#[test]
fn column_values_share_the_input_buffer() {
    let data = build::insert(None);
    let Message::Insert(insert) = decoded(&data, Outside) else { panic!("not an Insert") };
    let value = insert.new.get(0).and_then(ColumnValue::bytes).expect("a text value");
    let input = data.as_ptr_range();
    assert!(input.contains(&value.as_ptr()), "value was copied out of the message");
}

#[test]
fn update_without_old_tuple() {
    for (xid, block) in [(None, Outside), (Some(901), Inside)] {
        let Message::Update(update) = decoded(&build::update(xid, None), block) else { panic!("not an Update") };
        assert_eq!((update.xid, update.relation_id, &update.old), (xid, RELID, &None));
        assert_eq!(update.new.columns(), [text(b"42"), text(b""), ColumnValue::UnchangedToast]);
    }
}

#[test]
fn update_with_old_key_or_full_row() {
    let old_columns = [text(b"41"), ColumnValue::Null, ColumnValue::Null];
    for (xid, block) in [(None, Outside), (Some(901), Inside)] {
        for marker in [b'K', b'O'] {
            let Message::Update(update) = decoded(&build::update(xid, Some(marker)), block) else {
                panic!("not an Update")
            };
            assert_eq!((update.xid, update.relation_id), (xid, RELID));
            let old = update.old.expect("an old tuple");
            assert_eq!(matches!(old, OldTuple::Key(_)), marker == b'K');
            assert_eq!(old.tuple().columns(), old_columns);
            assert_eq!(update.new.columns(), [text(b"42"), text(b""), ColumnValue::UnchangedToast]);
        }
    }
}

#[test]
fn delete_with_old_key_or_full_row() {
    for (xid, block) in [(None, Outside), (Some(901), Inside)] {
        for marker in [b'K', b'O'] {
            let Message::Delete(delete) = decoded(&build::delete(xid, marker), block) else { panic!("not a Delete") };
            assert_eq!((delete.xid, delete.relation_id), (xid, RELID));
            assert_eq!(matches!(delete.old, OldTuple::Full(_)), marker == b'O');
            assert_eq!(delete.old.tuple().columns(), [text(b"42"), ColumnValue::Null, ColumnValue::Null]);
        }
    }
}

#[test]
fn truncate() {
    for (xid, block) in [(None, Outside), (Some(901), Inside)] {
        let Message::Truncate(truncate) = decoded(&build::truncate(xid), block) else { panic!("not a Truncate") };
        assert_eq!(truncate, Truncate { xid, options: 3, relation_ids: vec![RELID, RELID + 7] });
        assert!(truncate.cascade() && truncate.restart_identity());
    }
    let plain = Msg::new(b'T').i32(1).u8(0).u32(RELID).bytes();
    let Message::Truncate(truncate) = decoded(&plain, Outside) else { panic!("not a Truncate") };
    assert!(!truncate.cascade() && !truncate.restart_identity());
}

#[test]
fn logical_message() {
    for (xid, block) in [(None, Outside), (Some(901), Inside)] {
        let Message::LogicalMessage(m) = decoded(&build::logical_message(xid), block) else { panic!("not a Message") };
        assert_eq!((m.xid, m.flags, m.lsn), (xid, 1, Lsn(LSN_A)));
        assert!(m.is_transactional());
        assert_eq!((&m.prefix[..], &m.content[..]), (&b"pg-ghost"[..], &b"cutover:42"[..]));
    }
    // Non-transactional, empty content, a prefix that is not UTF-8: still decoded.
    let data = Msg::new(b'M').u8(0).u64(LSN_B).cstr(&[0xFF, b'x']).counted(b"").bytes();
    let Message::LogicalMessage(m) = decoded(&data, Outside) else { panic!("not a Message") };
    assert!(!m.is_transactional());
    assert_eq!((&m.prefix[..], m.content.len()), (&[0xFF, b'x'][..], 0));
}

#[test]
fn stream_control_messages() {
    let start = StreamStart { xid: 900, first_segment: true };
    assert_eq!(decoded(&build::stream_start(), Outside), Message::StreamStart(start));
    let later = Msg::new(b'S').u32(900).u8(0).bytes();
    assert_eq!(decoded(&later, Outside), Message::StreamStart(StreamStart { xid: 900, first_segment: false }));
    assert_eq!(decoded(&build::stream_stop(), Inside), Message::StreamStop);
    let commit =
        StreamCommit { xid: 900, flags: 0, commit_lsn: Lsn(LSN_A), end_lsn: Lsn(LSN_B), commit_time: PgTimestamp(TS) };
    assert_eq!(decoded(&build::stream_commit(), Outside), Message::StreamCommit(commit));
    let abort = StreamAbort { xid: 900, subtransaction_xid: 901 };
    assert_eq!(decoded(&build::stream_abort(), Outside), Message::StreamAbort(abort));
}

#[test]
fn decoder_follows_stream_blocks() {
    let mut decoder = Decoder::new();
    let mut next = |data: Bytes| decoder.decode(&data).expect("valid in sequence");
    // A streamed block: data messages carry the (sub)transaction's xid.
    assert!(matches!(next(build::stream_start()), Message::StreamStart(_)));
    assert_eq!(next(build::origin()).stream_xid(), None);
    assert_eq!(next(build::relation(Some(901))).stream_xid(), Some(901));
    assert_eq!(next(build::insert(Some(902))).stream_xid(), Some(902));
    assert_eq!(next(build::logical_message(Some(901))).stream_xid(), Some(901));
    assert_eq!(next(build::stream_stop()), Message::StreamStop);
    // An ordinary transaction between blocks: no xid on its data messages.
    assert!(matches!(next(build::begin()), Message::Begin(_)));
    assert_eq!(next(build::insert(None)).stream_xid(), None);
    assert!(matches!(next(build::commit()), Message::Commit(_)));
    assert!(matches!(next(build::stream_commit()), Message::StreamCommit(_)));
}

#[test]
fn decoder_rejects_out_of_sequence_without_changing_state() {
    let mut decoder = Decoder::new();
    let err = decoder.decode(&build::stream_stop()).expect_err("stop without start");
    assert!(matches!(err.kind(), DecodeErrorKind::OutOfSequence { .. }), "{err}");
    assert_eq!(decoder.open_block(), None);

    decoder.decode(&build::stream_start()).expect("start");
    assert_eq!(decoder.open_block(), Some(900));
    for message in
        [build::stream_start(), build::begin(), build::commit(), build::stream_commit(), build::stream_abort()]
    {
        let err = decoder.decode(&message).expect_err("not allowed inside a block");
        assert!(matches!(err.kind(), DecodeErrorKind::OutOfSequence { .. }), "{err}");
        assert_eq!(decoder.open_block(), Some(900));
    }
    // A v1-shaped Insert inside a block is misframed: an error, not a wrong row.
    assert!(decoder.decode(&build::insert(None)).is_err());
    assert_eq!(decoder.open_block(), Some(900));
    decoder.reset();
    assert_eq!(decoder.open_block(), None);
    decoder.decode(&build::insert(None)).expect("v1 Insert after reset");
}

#[test]
fn data_messages_decoded_in_the_wrong_block_fail() {
    for (xid, wrong_block) in [(None, Inside), (Some(901), Outside)] {
        for data in [build::insert(xid), build::update(xid, Some(b'K')), build::delete(xid, b'K'), build::truncate(xid)]
        {
            assert!(decode(&data, wrong_block).is_err(), "{data:?} decoded in {wrong_block:?}");
        }
    }
}

#[test]
fn errors_name_message_offset_and_problem() {
    let err = decode_err(&Bytes::new(), Outside);
    assert_eq!((err.kind(), err.offset(), err.tag()), (&DecodeErrorKind::Empty, 0, None));

    let err = decode_err(&Msg::new(b'b').bytes(), Outside);
    assert_eq!(err.kind(), &DecodeErrorKind::UnknownMessage(b'b'));

    let err = decode_err(&build::begin().slice(..10), Outside);
    assert_eq!(
        err.to_string(),
        "pgoutput Begin ('B') message at byte 9: truncated commit timestamp: needs 8 bytes, 1 left"
    );

    let bad_kind = Msg::new(b'I').u32(RELID).u8(b'N').tuple(&[Col::Null]).bytes();
    let mut bytes = bad_kind.to_vec();
    bytes[8] = b'x';
    let err = decode_err(&Bytes::from(bytes), Outside);
    assert_eq!((err.offset(), err.column()), (8, Some(0)));
    assert!(err.to_string().contains("column value kind is 'x'"), "{err}");

    let negative = Msg::new(b'I').u32(RELID).u8(b'N').u16(2).u8(b'n').u8(b't').i32(-1).bytes();
    let err = decode_err(&negative, Outside);
    assert_eq!(err.kind(), &DecodeErrorKind::NegativeLength { field: "text column value", length: -1 });
    assert_eq!((err.offset(), err.column()), (10, Some(1)));

    let trailing = Msg::new(b'E').u8(0).bytes();
    assert_eq!(decode_err(&trailing, Inside).kind(), &DecodeErrorKind::TrailingBytes { count: 1 });

    let unterminated = Msg::new(b'O').u64(LSN_A).raw(b"node").bytes();
    assert_eq!(decode_err(&unterminated, Outside).kind(), &DecodeErrorKind::Unterminated { field: "origin name" });

    let not_utf8 = Msg::new(b'O').u64(LSN_A).cstr(&[0xC3, 0x28]).bytes();
    assert_eq!(decode_err(&not_utf8, Outside).kind(), &DecodeErrorKind::InvalidUtf8 { field: "origin name" });

    let identity = Msg::new(b'R').u32(7).cstr(b"s").cstr(b"t").u8(b'x').u16(0).bytes();
    assert!(matches!(decode_err(&identity, Outside).kind(), DecodeErrorKind::UnexpectedByte { byte: b'x', .. }));

    let segment = Msg::new(b'S').u32(900).u8(2).bytes();
    assert!(matches!(decode_err(&segment, Outside).kind(), DecodeErrorKind::UnexpectedByte { byte: 2, .. }));

    let no_new_tuple = Msg::new(b'U').u32(RELID).u8(b'K').tuple(&[Col::Null]).u8(b'K').bytes();
    assert!(decode_err(&no_new_tuple, Outside).to_string().contains("new tuple marker is 'K'"));
}

#[test]
fn forged_counts_fail_fast_without_allocating() {
    let relids = Msg::new(b'T').i32(i32::MAX).u8(0).u32(1).bytes();
    assert!(matches!(decode_err(&relids, Outside).kind(), DecodeErrorKind::Truncated { .. }));
    let negative = Msg::new(b'T').i32(-5).u8(0).bytes();
    assert!(matches!(decode_err(&negative, Outside).kind(), DecodeErrorKind::NegativeLength { length: -5, .. }));
    let columns = Msg::new(b'I').u32(RELID).u8(b'N').u16(u16::MAX).u8(b'n').bytes();
    assert_eq!(decode_err(&columns, Outside).column(), Some(1));
    let value = Msg::new(b'I').u32(RELID).u8(b'N').u16(1).u8(b't').i32(i32::MAX).bytes();
    assert!(
        matches!(decode_err(&value, Outside).kind(), DecodeErrorKind::Truncated { needed, .. } if *needed == i32::MAX as usize)
    );
    let content = Msg::new(b'M').u8(1).u64(0).cstr(b"p").i32(i32::MAX).bytes();
    assert!(matches!(decode_err(&content, Outside).kind(), DecodeErrorKind::Truncated { .. }));
}

#[test]
fn converts_into_a_protocol_error() {
    let err: crate::Error = decode_err(&Bytes::from_static(b"Z"), Outside).into();
    assert_eq!(err.kind(), crate::ErrorKind::Protocol);
    assert!(err.message().contains("unknown message type 'Z'"), "{err}");
}

#[test]
fn timestamps_count_from_the_year_2000() {
    use std::time::{Duration, UNIX_EPOCH};
    let y2k = UNIX_EPOCH + Duration::from_secs(946_684_800);
    assert_eq!(PgTimestamp(0).to_system_time(), Some(y2k));
    assert_eq!(PgTimestamp(1_500_000).to_system_time(), Some(y2k + Duration::from_micros(1_500_000)));
    assert_eq!(PgTimestamp(-1_000_000).to_system_time(), Some(y2k - Duration::from_secs(1)));
}

#[test]
fn message_names_match_the_documentation() {
    let names: Vec<&str> = corpus().iter().map(|(_, data, block)| decoded(data, *block).name()).collect();
    assert!(names.contains(&"Stream Start") && names.contains(&"Message") && names.contains(&"Truncate"));
}
