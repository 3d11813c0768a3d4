//! From decoded pgoutput messages to what the apply loop needs: the keys each change
//! touched, where transactions end, and pg-ghost's own control messages.
//!
//! Pure: no I/O. Invariants: a transaction's keys leave only together with its commit (one
//! `Committed` item carrying the keys, the end LSN and the xid), so the apply loop never
//! flushes a key without knowing which transaction it must first see committed; keys of a
//! streamed (protocol v2) transaction wait for its Stream Commit and are dropped at its
//! Stream Abort; a Relation message for the original that does not match the
//! shape seen at the start, or a TRUNCATE of it, stops the run (someone changed the table).

use super::flush::Key;
use super::writer::StreamItem;
use crate::cutover::MESSAGE_PREFIX;
use crate::error::{Error, ErrorKind, Result};
use crate::lsn::Lsn;
use crate::replication::pgoutput::{ColumnValue, Message, OldTuple, Relation, TupleData, Xid};
use std::collections::{HashMap, HashSet};

/// A column of the original as pgoutput describes it: name and type OID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedColumn {
    pub name: String,
    pub type_oid: u32,
}

pub struct ChangeExtractor {
    relation_oid: u32,
    expected: Vec<ExpectedColumn>,
    key_names: Vec<String>,
    /// Positions of the key columns in tuples, known once the Relation message arrived.
    key_positions: Option<Vec<usize>>,
    in_transaction: bool,
    /// The open transaction's xid, and whether it changed the original.
    xid: Option<Xid>,
    touched: bool,
    /// Keys of streamed transactions not yet committed, by top-level xid.
    streamed: HashMap<Xid, HashSet<Key>>,
    current_block: Option<Xid>,
    /// The revert window's gate: see [`ChangeExtractor::skipping_through`].
    gate: Option<(Lsn, String)>,
    /// The open transaction carried the gate's marker.
    marker_xid: Option<Xid>,
    /// The publication sends only some columns ([`ChangeExtractor::publishing_only`]).
    narrowed: bool,
}

impl ChangeExtractor {
    pub fn new(relation_oid: u32, expected: Vec<ExpectedColumn>, key_names: Vec<String>) -> Self {
        ChangeExtractor {
            relation_oid,
            expected,
            key_names,
            key_positions: None,
            in_transaction: false,
            xid: None,
            touched: false,
            streamed: HashMap::new(),
            current_block: None,
            gate: None,
            marker_xid: None,
            narrowed: false,
        }
    }

    /// The publication sends only `published` of the table's columns (a column list): the
    /// Relation message then lists those, in the table's column order. Column changes outside
    /// the list no longer show on the stream (the cut-over checks the definition again).
    /// Every Relation message of the table then also yields [`StreamItem::RelationResent`]:
    /// pgoutput sends one again after any change to the table's definition, and only the
    /// catalog can tell whether a column outside the list changed.
    pub fn publishing_only(mut self, published: &[String]) -> Self {
        self.expected.retain(|c| published.contains(&c.name));
        self.narrowed = true;
        self
    }

    /// The revert window's gate: drops the keys of every transaction that committed at or
    /// before `through` (an LSN inside the swap's transaction: the position of its `marker`
    /// message) and of the transaction that carries `marker` (the swap's own, with its final
    /// flush into the ghost). Those are pg-ghost's own writes before the swap. Every write to
    /// the new table commits after the swap (it waits for the swap's lock), so its commit ends
    /// after `through` and it passes. The rule holds per transaction, with no state: a stream
    /// resumed from any position after a crash drops and keeps exactly the same transactions.
    pub fn skipping_through(mut self, through: Lsn, marker: String) -> Self {
        self.gate = Some((through, marker));
        self
    }

    /// At a commit ending at `end` of transaction `xid`: whether the gate drops it.
    fn gated(&mut self, xid: Option<Xid>, end: Lsn) -> bool {
        let Some((through, _)) = &self.gate else { return false };
        let carried_marker = xid.is_some() && xid == self.marker_xid;
        if carried_marker {
            self.marker_xid = None;
            tracing::info!("the swap's transaction passed the reverse stream: every later change is applied to the old table");
        }
        carried_marker || end <= *through
    }

    /// Forgets every transaction not committed yet, streamed blocks included: after a
    /// reconnect the server sends each of them again from its start. Returns how many keys of
    /// streamed transactions were dropped (the caller holds those of the open one).
    pub fn reset(&mut self) -> usize {
        self.in_transaction = false;
        self.xid = None;
        self.touched = false;
        self.current_block = None;
        self.marker_xid = None;
        let dropped = self.streamed.values().map(HashSet::len).sum();
        self.streamed.clear();
        dropped
    }

    /// Whether no transaction is open, so a keepalive's position can be acknowledged.
    pub fn idle(&self) -> bool {
        !self.in_transaction && self.streamed.is_empty() && self.current_block.is_none()
    }

    /// Feeds one message; appends keys and markers to `out`.
    pub fn on_message(&mut self, message: Message, keys: &mut Vec<Key>, out: &mut Vec<StreamItem>) -> Result<()> {
        match message {
            Message::Begin(b) => {
                self.in_transaction = true;
                self.xid = Some(b.xid);
                self.touched = false;
            }
            Message::Commit(c) => {
                self.in_transaction = false;
                let open = self.xid;
                if self.gated(open, c.end_lsn) {
                    keys.clear();
                }
                let xid = self.xid.take().filter(|_| self.touched && !keys.is_empty());
                out.push(StreamItem::Committed { keys: std::mem::take(keys), end_lsn: c.end_lsn, xid });
            }
            Message::Relation(r) => {
                self.on_relation(&r)?;
                if self.narrowed && r.id == self.relation_oid {
                    out.push(StreamItem::RelationResent);
                }
            }
            Message::Insert(m) if m.relation_id == self.relation_oid => {
                let key = self.key_of(&m.new, "inserted")?;
                self.collect(m.xid, key, keys);
            }
            Message::Update(m) if m.relation_id == self.relation_oid => {
                if let Some(old) = &m.old {
                    let key = self.key_of(old.tuple(), "old")?;
                    self.collect(m.xid, key, keys);
                }
                match self.key_of(&m.new, "updated") {
                    Ok(key) => self.collect(m.xid, key, keys),
                    // An unchanged TOASTed key is the old key, which then was sent.
                    Err(_) if m.old.is_some() && self.has_unchanged_key(&m.new) => {}
                    Err(e) => return Err(e),
                }
            }
            Message::Delete(m) if m.relation_id == self.relation_oid => {
                let tuple = match &m.old {
                    OldTuple::Key(t) | OldTuple::Full(t) => t,
                };
                let key = self.key_of(tuple, "deleted")?;
                self.collect(m.xid, key, keys);
            }
            Message::Truncate(t) if t.relation_ids.contains(&self.relation_oid) => {
                return Err(Error::new(
                    ErrorKind::SchemaChanged,
                    "the original table was truncated during the run; pg-ghost cannot carry a TRUNCATE over, so it stops (the original is untouched)",
                ));
            }
            Message::LogicalMessage(m) if m.prefix.as_ref() == MESSAGE_PREFIX.as_bytes() => {
                if self.gate.as_ref().is_some_and(|(_, want)| want.as_bytes() == m.content.as_ref()) {
                    self.marker_xid = self.current_block.or(self.xid);
                }
                out.push(StreamItem::Sentinel(String::from_utf8_lossy(&m.content).into_owned()));
            }
            Message::StreamStart(s) => self.current_block = Some(s.xid),
            Message::StreamStop => self.current_block = None,
            Message::StreamCommit(c) => {
                let mut streamed: Vec<Key> = self.streamed.remove(&c.xid).map(|set| set.into_iter().collect()).unwrap_or_default();
                if self.gated(Some(c.xid), c.end_lsn) {
                    streamed.clear();
                }
                let xid = (!streamed.is_empty()).then_some(c.xid);
                out.push(StreamItem::Committed { keys: streamed, end_lsn: c.end_lsn, xid });
            }
            Message::StreamAbort(a) => {
                if a.xid == a.subtransaction_xid {
                    self.streamed.remove(&a.xid);
                }
                // A subtransaction's keys stay: flushing a key too often is harmless.
            }
            _ => {}
        }
        Ok(())
    }

    /// The position to acknowledge for a keepalive at `wal_end`, when nothing is open.
    pub fn idle_item(&self, wal_end: Lsn) -> Option<StreamItem> {
        self.idle().then_some(StreamItem::Idle(wal_end))
    }

    /// Inside a stream block the keys wait under the block's top-level xid (a data message's
    /// own xid may be a subtransaction's, which Stream Commit does not name).
    fn collect(&mut self, _xid: Option<Xid>, key: Key, keys: &mut Vec<Key>) {
        self.touched = true;
        match self.current_block {
            Some(top) => {
                self.streamed.entry(top).or_default().insert(key);
            }
            None => keys.push(key),
        }
    }

    fn on_relation(&mut self, r: &Relation) -> Result<()> {
        if r.id != self.relation_oid {
            return Ok(());
        }
        let seen: Vec<ExpectedColumn> =
            r.columns.iter().map(|c| ExpectedColumn { name: c.name.clone(), type_oid: c.type_oid }).collect();
        if seen != self.expected {
            return Err(Error::new(
                ErrorKind::SchemaChanged,
                format!(
                    "the original table's definition changed during the run (columns now: {}); pg-ghost stops, the original is untouched",
                    seen.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        let positions = self
            .key_names
            .iter()
            .map(|k| seen.iter().position(|c| &c.name == k))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Error::protocol("the stream's relation lacks a key column"))?;
        self.key_positions = Some(positions);
        Ok(())
    }

    fn has_unchanged_key(&self, tuple: &TupleData) -> bool {
        self.key_positions
            .as_ref()
            .map_or(false, |p| p.iter().any(|i| matches!(tuple.get(*i), Some(ColumnValue::UnchangedToast))))
    }

    fn key_of(&self, tuple: &TupleData, which: &str) -> Result<Key> {
        let positions = self
            .key_positions
            .as_ref()
            .ok_or_else(|| Error::protocol("a change arrived before its Relation message"))?;
        positions
            .iter()
            .map(|i| match tuple.get(*i) {
                Some(ColumnValue::Text(bytes)) => String::from_utf8(bytes.to_vec())
                    .map_err(|_| Error::protocol(format!("a key value of the {which} row is not valid UTF-8"))),
                Some(other) => Err(Error::protocol(format!(
                    "the {which} row's key column {} came as {}, not a value",
                    self.key_names.get(positions.iter().position(|p| p == i).unwrap_or(0)).map_or("?", |s| s.as_str()),
                    match other {
                        ColumnValue::Null => "NULL",
                        ColumnValue::UnchangedToast => "an unchanged TOAST value",
                        _ => "binary",
                    }
                ))),
                None => Err(Error::protocol(format!("the {which} row has fewer columns than its relation"))),
            })
            .collect::<Result<Vec<_>>>()
            .map(Vec::into_boxed_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::pgoutput::Decoder;
    use bytes::{BufMut, Bytes, BytesMut};

    const REL: u32 = 16384;

    fn cstr(b: &mut BytesMut, s: &str) {
        b.put_slice(s.as_bytes());
        b.put_u8(0);
    }

    fn relation(xid: Option<u32>, cols: &[(&str, u32)]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'R');
        if let Some(x) = xid {
            b.put_u32(x);
        }
        b.put_u32(REL);
        cstr(&mut b, "public");
        cstr(&mut b, "orders");
        b.put_u8(b'd');
        b.put_u16(cols.len() as u16);
        for (i, (name, ty)) in cols.iter().enumerate() {
            b.put_u8(u8::from(i == 0));
            cstr(&mut b, name);
            b.put_u32(*ty);
            b.put_i32(-1);
        }
        b.freeze()
    }

    fn tuple(b: &mut BytesMut, values: &[Option<&str>]) {
        b.put_u16(values.len() as u16);
        for v in values {
            match v {
                Some(t) => {
                    b.put_u8(b't');
                    b.put_u32(t.len() as u32);
                    b.put_slice(t.as_bytes());
                }
                None => b.put_u8(b'n'),
            }
        }
    }

    fn insert(xid: Option<u32>, id: &str) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'I');
        if let Some(x) = xid {
            b.put_u32(x);
        }
        b.put_u32(REL);
        b.put_u8(b'N');
        tuple(&mut b, &[Some(id), Some("v")]);
        b.freeze()
    }

    fn update_key(old: &str, new: &str) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'U');
        b.put_u32(REL);
        b.put_u8(b'K');
        tuple(&mut b, &[Some(old), None]);
        b.put_u8(b'N');
        tuple(&mut b, &[Some(new), Some("v")]);
        b.freeze()
    }

    fn begin(xid: u32) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'B');
        b.put_u64(0x100);
        b.put_i64(0);
        b.put_u32(xid);
        b.freeze()
    }

    fn commit(end: u64) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'C');
        b.put_u8(0);
        b.put_u64(end - 8);
        b.put_u64(end);
        b.put_i64(0);
        b.freeze()
    }

    fn stream_start(xid: u32) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'S');
        b.put_u32(xid);
        b.put_u8(1);
        b.freeze()
    }

    fn stream_stop() -> Bytes {
        Bytes::from_static(b"E")
    }

    fn stream_commit(xid: u32, end: u64) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'c');
        b.put_u32(xid);
        b.put_u8(0);
        b.put_u64(end - 8);
        b.put_u64(end);
        b.put_i64(0);
        b.freeze()
    }

    fn stream_abort(xid: u32) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'A');
        b.put_u32(xid);
        b.put_u32(xid);
        b.freeze()
    }

    fn message(prefix: &str, content: &str) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'M');
        b.put_u8(1);
        b.put_u64(0x200);
        cstr(&mut b, prefix);
        b.put_u32(content.len() as u32);
        b.put_slice(content.as_bytes());
        b.freeze()
    }

    fn expected() -> Vec<ExpectedColumn> {
        vec![ExpectedColumn { name: "id".into(), type_oid: 20 }, ExpectedColumn { name: "v".into(), type_oid: 25 }]
    }

    struct Feed {
        decoder: Decoder,
        extractor: ChangeExtractor,
        keys: Vec<Key>,
    }

    impl Feed {
        fn new() -> Feed {
            Feed { decoder: Decoder::new(), extractor: ChangeExtractor::new(REL, expected(), vec!["id".into()]), keys: Vec::new() }
        }

        fn feed(&mut self, messages: &[Bytes]) -> Result<Vec<StreamItem>> {
            let mut out = Vec::new();
            for m in messages {
                let msg = self.decoder.decode(m).map_err(Error::from)?;
                self.extractor.on_message(msg, &mut self.keys, &mut out)?;
            }
            Ok(out)
        }
    }

    fn key(s: &str) -> Key {
        vec![s.to_string()].into_boxed_slice()
    }

    fn committed(items: &[StreamItem]) -> Vec<(Vec<Key>, u64, Option<u32>)> {
        items
            .iter()
            .filter_map(|i| match i {
                StreamItem::Committed { keys, end_lsn, xid } => {
                    let mut k = keys.clone();
                    k.sort();
                    Some((k, end_lsn.0, *xid))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn keys_leave_only_with_their_commit() {
        let mut f = Feed::new();
        let cols = [("id", 20), ("v", 25)];
        // A transaction split across reads: nothing leaves before its commit.
        let first = f.feed(&[begin(7), relation(None, &cols), insert(None, "1")]).unwrap();
        assert!(first.is_empty());
        assert!(!f.extractor.idle());
        let rest = f.feed(&[update_key("2", "3"), commit(0x500)]).unwrap();
        assert_eq!(committed(&rest), vec![(vec![key("1"), key("2"), key("3")], 0x500, Some(7))]);
        assert!(f.extractor.idle());
        // A transaction that did not touch the table carries no xid to wait for.
        let other = f.feed(&[begin(8), commit(0x600)]).unwrap();
        assert_eq!(committed(&other), vec![(vec![], 0x600, None)]);
    }

    #[test]
    fn streamed_transactions_wait_for_their_commit_and_vanish_on_abort() {
        let mut f = Feed::new();
        let cols = [("id", 20), ("v", 25)];
        let out = f
            .feed(&[
                stream_start(9),
                relation(Some(9), &cols),
                insert(Some(9), "5"),
                // A subtransaction of 9 carries its own xid.
                insert(Some(11), "7"),
                stream_stop(),
                stream_start(10),
                insert(Some(10), "6"),
                stream_stop(),
            ])
            .unwrap();
        assert!(out.is_empty());
        assert!(!f.extractor.idle());
        let out = f.feed(&[stream_abort(10), stream_commit(9, 0x700)]).unwrap();
        assert_eq!(committed(&out), vec![(vec![key("5"), key("7")], 0x700, Some(9))]);
        assert!(f.extractor.idle());
    }

    #[test]
    fn a_reset_drops_what_was_half_received_and_the_replay_counts_once() {
        let mut f = Feed::new();
        let cols = [("id", 20), ("v", 25)];
        let out = f
            .feed(&[
                stream_start(9),
                relation(Some(9), &cols),
                insert(Some(9), "5"),
                stream_stop(),
                begin(12),
                insert(None, "8"),
            ])
            .unwrap();
        assert!(out.is_empty());
        // The connection is lost mid-transaction: the caller drops the open one's keys.
        assert_eq!(f.extractor.reset(), 1);
        f.keys.clear();
        assert!(f.extractor.idle());
        // The new walsender starts over: the streamed transaction from its first block, then
        // the other one whole; each key comes out with its own commit only.
        f.decoder = Decoder::new();
        let out = f
            .feed(&[
                stream_start(9),
                relation(Some(9), &cols),
                insert(Some(9), "5"),
                stream_stop(),
                stream_commit(9, 0x900),
                begin(12),
                relation(None, &cols),
                insert(None, "8"),
                commit(0xa00),
            ])
            .unwrap();
        assert_eq!(committed(&out), vec![(vec![key("5")], 0x900, Some(9)), (vec![key("8")], 0xa00, Some(12))]);
        assert!(f.extractor.idle());
    }

    #[test]
    fn sentinels_pass_and_foreign_messages_do_not() {
        let mut f = Feed::new();
        let out = f.feed(&[begin(3), message("other", "x"), message(MESSAGE_PREFIX, "cut-over 1"), commit(0x800)]).unwrap();
        assert!(matches!(&out[0], StreamItem::Sentinel(s) if s == "cut-over 1"), "{out:?}");
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn a_changed_definition_or_truncate_stops_the_run() {
        let mut f = Feed::new();
        let e = f.feed(&[begin(1), relation(None, &[("id", 20), ("v", 25), ("added", 23)])]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::SchemaChanged);
        let mut f = Feed::new();
        let mut t = BytesMut::new();
        t.put_u8(b'T');
        t.put_u32(1);
        t.put_u8(0);
        t.put_u32(REL);
        let e = f.feed(&[begin(1), t.freeze()]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::SchemaChanged);
    }

    #[test]
    fn a_key_only_publication_carries_keys_and_still_stops_on_key_changes() {
        let mut f = Feed::new();
        f.extractor = ChangeExtractor::new(REL, expected(), vec!["id".into()]).publishing_only(&["id".to_string()]);
        let mut update = BytesMut::new();
        update.put_u8(b'U');
        update.put_u32(REL);
        update.put_u8(b'K');
        tuple(&mut update, &[Some("3")]);
        update.put_u8(b'N');
        tuple(&mut update, &[Some("4")]);
        let mut delete = BytesMut::new();
        delete.put_u8(b'D');
        delete.put_u32(REL);
        delete.put_u8(b'K');
        tuple(&mut delete, &[Some("9")]);
        let out = f.feed(&[begin(5), relation(None, &[("id", 20)]), update.freeze(), delete.freeze(), commit(0x300)]).unwrap();
        assert!(matches!(out[0], StreamItem::RelationResent), "{out:?}");
        assert_eq!(committed(&out), vec![(vec![key("3"), key("4"), key("9")], 0x300, Some(5))]);
        // A change of the key column's type still shows on the stream.
        let e = f.feed(&[begin(6), relation(None, &[("id", 23)])]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::SchemaChanged);
    }

    #[test]
    fn the_revert_gate_drops_everything_up_to_the_swap_and_nothing_after() {
        let cols = [("id", 20), ("v", 25)];
        let gated = || ChangeExtractor::new(REL, expected(), vec!["id".into()]).skipping_through(Lsn(0x650), "swap 1".into());
        let mut f = Feed::new();
        f.extractor = gated();
        // pg-ghost's own writes before the swap, one of them streamed; another attempt's
        // marker (a rolled-back attempt's is never sent, but it must not count either).
        let before = f
            .feed(&[
                begin(7),
                relation(None, &cols),
                insert(None, "1"),
                commit(0x500),
                stream_start(9),
                insert(Some(9), "2"),
                stream_stop(),
                stream_commit(9, 0x580),
                begin(8),
                insert(None, "3"),
                message(MESSAGE_PREFIX, "swap 0"),
                commit(0x600),
            ])
            .unwrap();
        assert_eq!(committed(&before), vec![(vec![], 0x500, None), (vec![], 0x580, None), (vec![], 0x600, None)]);
        // The swap's own transaction (its marker at 0x650, its commit after): dropped too.
        let swap = f.feed(&[begin(10), insert(None, "4"), message(MESSAGE_PREFIX, "swap 1"), commit(0x700)]).unwrap();
        assert_eq!(committed(&swap), vec![(vec![], 0x700, None)]);
        let after = f.feed(&[begin(11), insert(None, "5"), commit(0x800)]).unwrap();
        assert_eq!(committed(&after), vec![(vec![key("5")], 0x800, Some(11))]);

        // Resumed after a crash, from a position before the swap or after it: the same.
        let mut f = Feed::new();
        f.extractor = gated();
        let replay = f
            .feed(&[begin(10), relation(None, &cols), insert(None, "4"), message(MESSAGE_PREFIX, "swap 1"), commit(0x700), begin(11), insert(None, "5"), commit(0x800)])
            .unwrap();
        assert_eq!(committed(&replay), vec![(vec![], 0x700, None), (vec![key("5")], 0x800, Some(11))]);
        let mut f = Feed::new();
        f.extractor = gated();
        let later = f.feed(&[begin(12), relation(None, &cols), insert(None, "6"), commit(0x900)]).unwrap();
        assert_eq!(committed(&later), vec![(vec![key("6")], 0x900, Some(12))]);
    }
}
