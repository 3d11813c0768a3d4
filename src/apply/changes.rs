//! From decoded pgoutput messages to what the apply loop needs: the keys each change
//! touched, where transactions end, and pg-ghost's own control messages.
//!
//! Pure: no I/O. Invariants: keys of a streamed (protocol v2) transaction are released only
//! at its Stream Commit, after the commit is visible to a re-read of the original, and
//! dropped at its Stream Abort; a Relation message for the original that does not match the
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
        }
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
                self.emit_keys(keys, out);
                let xid = self.xid.take().filter(|_| self.touched);
                out.push(StreamItem::Committed { end_lsn: c.end_lsn, xid });
            }
            Message::Relation(r) => self.on_relation(&r)?,
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
                self.emit_keys(keys, out);
                out.push(StreamItem::Sentinel(String::from_utf8_lossy(&m.content).into_owned()));
            }
            Message::StreamStart(s) => self.current_block = Some(s.xid),
            Message::StreamStop => self.current_block = None,
            Message::StreamCommit(c) => {
                let touched = match self.streamed.remove(&c.xid) {
                    Some(set) => {
                        keys.extend(set);
                        true
                    }
                    None => false,
                };
                self.emit_keys(keys, out);
                out.push(StreamItem::Committed { end_lsn: c.end_lsn, xid: touched.then_some(c.xid) });
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

    /// Moves collected keys into `out` as one item.
    pub fn emit_keys(&self, keys: &mut Vec<Key>, out: &mut Vec<StreamItem>) {
        if !keys.is_empty() {
            out.push(StreamItem::Keys(std::mem::take(keys)));
        }
    }

    /// The position to acknowledge for a keepalive at `wal_end`, when nothing is open.
    pub fn idle_item(&self, wal_end: Lsn) -> Option<StreamItem> {
        self.idle().then_some(StreamItem::Idle(wal_end))
    }

    fn collect(&mut self, xid: Option<Xid>, key: Key, keys: &mut Vec<Key>) {
        self.touched = true;
        match xid.or(self.current_block) {
            Some(xid) if self.current_block.is_some() => {
                self.streamed.entry(xid).or_default().insert(key);
            }
            _ => keys.push(key),
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
