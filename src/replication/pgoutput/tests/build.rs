//! Builds messages byte by byte, the way the protocol documentation lists their fields,
//! and a corpus of valid messages for the truncation and mutation tests.

use bytes::Bytes;

use super::super::StreamBlock;

/// A message under construction: big-endian fields appended in order.
pub(super) struct Msg(Vec<u8>);

/// One TupleData column as it goes on the wire.
#[derive(Clone, Debug)]
pub(super) enum Col<'a> {
    Null,
    Unchanged,
    Text(&'a [u8]),
    Binary(&'a [u8]),
}

impl Msg {
    pub(super) fn new(tag: u8) -> Self {
        Msg(vec![tag])
    }

    pub(super) fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }

    pub(super) fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub(super) fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub(super) fn i32(mut self, v: i32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub(super) fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub(super) fn i64(mut self, v: i64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// A NUL-terminated string.
    pub(super) fn cstr(mut self, s: &[u8]) -> Self {
        self.0.extend_from_slice(s);
        self.0.push(0);
        self
    }

    /// An Int32 length and the bytes.
    pub(super) fn counted(self, bytes: &[u8]) -> Self {
        let len = i32::try_from(bytes.len()).expect("test value fits an Int32 length");
        self.i32(len).raw(bytes)
    }

    pub(super) fn raw(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }

    /// TupleData: Int16 count, then each column's kind byte and value.
    pub(super) fn tuple(self, columns: &[Col<'_>]) -> Self {
        let count = u16::try_from(columns.len()).expect("test tuple fits an Int16 count");
        columns.iter().fold(self.u16(count), |msg, column| match column {
            Col::Null => msg.u8(b'n'),
            Col::Unchanged => msg.u8(b'u'),
            Col::Text(v) => msg.u8(b't').counted(v),
            Col::Binary(v) => msg.u8(b'b').counted(v),
        })
    }

    /// The leading xid of a data message inside a stream block, if `xid` is given.
    pub(super) fn xid(self, xid: Option<u32>) -> Self {
        match xid {
            Some(xid) => self.u32(xid),
            None => self,
        }
    }

    pub(super) fn bytes(self) -> Bytes {
        Bytes::from(self.0)
    }
}

pub(super) const LSN_A: u64 = 0x16_B374_D848;
pub(super) const LSN_B: u64 = 0x16_B374_D8F0;
pub(super) const TS: i64 = 774_000_000_123_456;
pub(super) const RELID: u32 = 16_384;

pub(super) fn begin() -> Bytes {
    Msg::new(b'B').u64(LSN_A).i64(TS).u32(747).bytes()
}

pub(super) fn commit() -> Bytes {
    Msg::new(b'C').u8(0).u64(LSN_A).u64(LSN_B).i64(TS).bytes()
}

pub(super) fn origin() -> Bytes {
    Msg::new(b'O').u64(LSN_A).cstr(b"node_a").bytes()
}

pub(super) fn relation(xid: Option<u32>) -> Bytes {
    Msg::new(b'R')
        .xid(xid)
        .u32(RELID)
        .cstr(b"public")
        .cstr(b"orders")
        .u8(b'd')
        .u16(3)
        .u8(1)
        .cstr(b"id")
        .u32(20)
        .i32(-1)
        .u8(0)
        .cstr(b"note")
        .u32(25)
        .i32(-1)
        .u8(0)
        .cstr(b"price")
        .u32(1700)
        .i32(655_366)
        .bytes()
}

pub(super) fn type_message(xid: Option<u32>) -> Bytes {
    Msg::new(b'Y').xid(xid).u32(16_390).cstr(b"public").cstr(b"mood").bytes()
}

pub(super) fn insert(xid: Option<u32>) -> Bytes {
    Msg::new(b'I')
        .xid(xid)
        .u32(RELID)
        .u8(b'N')
        .tuple(&[Col::Text(b"42"), Col::Null, Col::Unchanged, Col::Binary(&[0, 1, 0xFF])])
        .bytes()
}

pub(super) fn update(xid: Option<u32>, old: Option<u8>) -> Bytes {
    let msg = Msg::new(b'U').xid(xid).u32(RELID);
    let msg = match old {
        Some(marker) => msg.u8(marker).tuple(&[Col::Text(b"41"), Col::Null, Col::Null]),
        None => msg,
    };
    msg.u8(b'N').tuple(&[Col::Text(b"42"), Col::Text(b""), Col::Unchanged]).bytes()
}

pub(super) fn delete(xid: Option<u32>, marker: u8) -> Bytes {
    Msg::new(b'D').xid(xid).u32(RELID).u8(marker).tuple(&[Col::Text(b"42"), Col::Null, Col::Null]).bytes()
}

pub(super) fn truncate(xid: Option<u32>) -> Bytes {
    Msg::new(b'T').xid(xid).i32(2).u8(3).u32(RELID).u32(RELID + 7).bytes()
}

pub(super) fn logical_message(xid: Option<u32>) -> Bytes {
    Msg::new(b'M').xid(xid).u8(1).u64(LSN_A).cstr(b"pg-ghost").counted(b"cutover:42").bytes()
}

pub(super) fn stream_start() -> Bytes {
    Msg::new(b'S').u32(900).u8(1).bytes()
}

pub(super) fn stream_stop() -> Bytes {
    Msg::new(b'E').bytes()
}

pub(super) fn stream_commit() -> Bytes {
    Msg::new(b'c').u32(900).u8(0).u64(LSN_A).u64(LSN_B).i64(TS).bytes()
}

pub(super) fn stream_abort() -> Bytes {
    Msg::new(b'A').u32(900).u32(901).bytes()
}

/// Every valid message shape, with the stream position it must be decoded in.
pub(super) fn corpus() -> Vec<(&'static str, Bytes, StreamBlock)> {
    use StreamBlock::{Inside, Outside};
    let mut corpus = vec![
        ("begin", begin(), Outside),
        ("commit", commit(), Outside),
        ("origin", origin(), Outside),
        ("stream start", stream_start(), Outside),
        ("stream stop", stream_stop(), Inside),
        ("stream commit", stream_commit(), Outside),
        ("stream abort", stream_abort(), Outside),
    ];
    for (xid, block) in [(None, Outside), (Some(901), Inside)] {
        corpus.extend([
            ("relation", relation(xid), block),
            ("type", type_message(xid), block),
            ("insert", insert(xid), block),
            ("update", update(xid, None), block),
            ("update K", update(xid, Some(b'K')), block),
            ("update O", update(xid, Some(b'O')), block),
            ("delete K", delete(xid, b'K'), block),
            ("delete O", delete(xid, b'O'), block),
            ("truncate", truncate(xid), block),
            ("message", logical_message(xid), block),
        ]);
    }
    corpus
}
