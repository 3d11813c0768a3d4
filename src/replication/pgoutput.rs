//! The pgoutput decoder: the bytes of one logical replication message in, one typed
//! [`Message`] out. No I/O, no clocks, no global state.
//!
//! Input is the payload of one XLogData (`'w'`) message after its 25-byte header, i.e.
//! starting with the message type byte. Formats are PostgreSQL 15's "Logical Replication
//! Message Formats", protocol versions 1 and 2.
//!
//! Invariants:
//! - Never panics, whatever the input. Every read is bounds-checked; lengths are checked
//!   for sign and overflow; no `Vec` is preallocated beyond what the remaining bytes
//!   could hold, so a forged count cannot allocate.
//! - A message decodes only if every byte is consumed: leftovers are an error, because
//!   they mean we misread the shape (e.g. v1 rules applied to a v2 streamed message).
//! - Errors say which message, at which byte offset (and in which column), and what was
//!   wrong ([`DecodeError`]); they convert into `crate::Error` of kind `Protocol`.
//! - Tuple values, logical message prefixes and contents are zero-copy `Bytes` slices of
//!   the input; only names (Relation, Type, Origin) are copied into `String`s.
//!
//! Protocol v2 streaming (`streaming 'on'`): a large transaction arrives in blocks, each
//! between Stream Start and Stream Stop, and ends with Stream Commit or Stream Abort.
//! Inside a block, Relation, Type, Insert, Update, Delete, Truncate and Message carry a
//! leading xid that they do not carry outside one, so the same bytes decode differently
//! depending on where they sit in the stream. [`Decoder`] tracks that position; the free
//! function [`decode`] takes it as an argument. Consequences for callers:
//! - Feed every message of a connection to one `Decoder`, in order, and
//!   [`Decoder::reset`] it on reconnect (a new START_REPLICATION never begins mid-block).
//! - A data message's xid may be a subtransaction's, not the Stream Start's xid. Stream
//!   Abort names the transaction and the subtransaction to discard (the same xid when
//!   the whole transaction aborts).
//! - Streamed changes are not committed until Stream Commit: buffer them, or drop them
//!   on Stream Abort. Acknowledge `end_lsn` of Commit or Stream Commit, never an LSN
//!   from a data message.
//! - Inside a block only data messages and Origin (sent after a block's Stream Start)
//!   can come; `Decoder` reports anything else as out of sequence without changing state.
//!
//! Not supported: protocol v3 (two-phase: Begin Prepare, Prepare, ...) and v4 (parallel
//! streaming's extra Stream Abort fields); their messages are reported as errors.

mod error;
mod messages;
mod parse;
mod reader;

#[cfg(test)]
mod tests;

use bytes::Bytes;

pub use error::{DecodeError, DecodeErrorKind};
pub use messages::*;

use reader::Reader;

/// Where a message sits relative to protocol v2 stream blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamBlock {
    /// Not between Stream Start and Stream Stop (always the case with protocol v1).
    Outside,
    /// Between Stream Start and Stream Stop: data messages carry a leading xid.
    Inside,
}

/// Decodes one message, given where it sits in the stream. Stateless; prefer [`Decoder`]
/// for a live stream, which knows `block` by itself.
///
/// # Errors
/// A [`DecodeError`] naming the message, the byte offset and the problem when `data` is
/// empty, truncated, of an unknown type, malformed, or longer than its fields.
pub fn decode(data: &Bytes, block: StreamBlock) -> Result<Message, DecodeError> {
    let mut r = Reader::new(data);
    let message = match r.tag()? {
        b'B' => Message::Begin(parse::begin(&mut r)?),
        b'C' => Message::Commit(parse::commit(&mut r)?),
        b'O' => Message::Origin(parse::origin(&mut r)?),
        b'R' => Message::Relation(parse::relation(&mut r, block)?),
        b'Y' => Message::Type(parse::type_message(&mut r, block)?),
        b'I' => Message::Insert(parse::insert(&mut r, block)?),
        b'U' => Message::Update(parse::update(&mut r, block)?),
        b'D' => Message::Delete(parse::delete(&mut r, block)?),
        b'T' => Message::Truncate(parse::truncate(&mut r, block)?),
        b'M' => Message::LogicalMessage(parse::logical_message(&mut r, block)?),
        b'S' => Message::StreamStart(parse::stream_start(&mut r)?),
        b'E' => Message::StreamStop,
        b'c' => Message::StreamCommit(parse::stream_commit(&mut r)?),
        b'A' => Message::StreamAbort(parse::stream_abort(&mut r)?),
        tag => return Err(r.error_at(0, DecodeErrorKind::UnknownMessage(tag))),
    };
    r.finish()?;
    Ok(message)
}

/// Decodes the messages of one replication connection, in order, for protocol v1 and v2
/// alike. Its only state is the stream block it is in, if any.
#[derive(Clone, Debug, Default)]
pub struct Decoder {
    /// The xid of the Stream Start whose block is open.
    open_block: Option<Xid>,
}

impl Decoder {
    pub fn new() -> Self {
        Decoder::default()
    }

    /// Decodes the next message of the stream. On error the decoder's state is unchanged.
    ///
    /// # Errors
    /// Everything [`decode`] reports, and [`DecodeErrorKind::OutOfSequence`] for a
    /// message that cannot come at this point (e.g. Begin inside a stream block).
    pub fn decode(&mut self, data: &Bytes) -> Result<Message, DecodeError> {
        let block = if self.open_block.is_some() { StreamBlock::Inside } else { StreamBlock::Outside };
        let message = decode(data, block)?;
        self.open_block = next_open_block(self.open_block, &message)
            .map_err(|reason| DecodeError::new(data.first().copied(), 0, DecodeErrorKind::OutOfSequence { reason }))?;
        Ok(message)
    }

    /// The xid of the open stream block, if the last message left one open.
    pub fn open_block(&self) -> Option<Xid> {
        self.open_block
    }

    /// Forgets any open stream block: call it when the connection is restarted.
    pub fn reset(&mut self) {
        self.open_block = None;
    }
}

/// The open stream block after `message`, or why `message` cannot come now.
fn next_open_block(open: Option<Xid>, message: &Message) -> Result<Option<Xid>, &'static str> {
    match (open, message) {
        (None, Message::StreamStart(start)) => Ok(Some(start.xid)),
        (Some(_), Message::StreamStart(_)) => Err("Stream Start inside an open stream block"),
        (Some(_), Message::StreamStop) => Ok(None),
        (None, Message::StreamStop) => Err("Stream Stop without a Stream Start"),
        (Some(_), Message::Begin(_)) => Err("Begin inside a stream block"),
        (Some(_), Message::Commit(_)) => Err("Commit inside a stream block"),
        (Some(_), Message::StreamCommit(_)) => Err("Stream Commit inside a stream block"),
        (Some(_), Message::StreamAbort(_)) => Err("Stream Abort inside a stream block"),
        (open, _) => Ok(open),
    }
}
