//! What went wrong while decoding, and where.

use std::fmt;

use crate::error::{Error, ErrorKind};

/// A message that could not be decoded: which message, at which byte offset of it, and
/// why. Offsets count from the message type byte (offset 0).
///
/// Boxed so that every `Result` the decoder passes around stays one word wide: errors
/// are rare, successful reads are the hot path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError(Box<Details>);

#[derive(Clone, Debug, PartialEq, Eq)]
struct Details {
    tag: Option<u8>,
    offset: usize,
    /// The tuple or relation column being read, when the problem is inside one.
    column: Option<usize>,
    kind: DecodeErrorKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeErrorKind {
    /// A zero-length message.
    Empty,
    /// A message type byte this decoder does not know (e.g. protocol v3 two-phase messages).
    UnknownMessage(u8),
    /// The message ended inside a field.
    Truncated { field: &'static str, needed: usize, available: usize },
    /// A string with no terminating NUL before the end of the message.
    Unterminated { field: &'static str },
    /// A name that is not UTF-8.
    InvalidUtf8 { field: &'static str },
    /// A length field below zero.
    NegativeLength { field: &'static str, length: i32 },
    /// A byte outside the values the protocol allows at this place.
    UnexpectedByte { field: &'static str, byte: u8, expected: &'static str },
    /// Bytes left over after the last field of the message.
    TrailingBytes { count: usize },
    /// A message that cannot come at this point of the stream, e.g. Stream Stop without
    /// Stream Start. Reported by [`Decoder`](super::Decoder), which tracks stream blocks.
    OutOfSequence { reason: &'static str },
}

impl DecodeError {
    pub(super) fn new(tag: Option<u8>, offset: usize, kind: DecodeErrorKind) -> Self {
        DecodeError(Box::new(Details { tag, offset, column: None, kind }))
    }

    /// Notes the column being read; the innermost column wins.
    pub(super) fn in_column(mut self, index: usize) -> Self {
        self.0.column.get_or_insert(index);
        self
    }

    /// The message type byte, if the message had one.
    pub fn tag(&self) -> Option<u8> {
        self.0.tag
    }

    /// Byte offset within the message where the problem was found.
    pub fn offset(&self) -> usize {
        self.0.offset
    }

    /// Zero-based index of the column being decoded, if the problem is inside a column.
    pub fn column(&self) -> Option<usize> {
        self.0.column
    }

    pub fn kind(&self) -> &DecodeErrorKind {
        &self.0.kind
    }
}

/// The name the protocol documentation gives to a message type byte.
pub(super) fn message_name(tag: u8) -> Option<&'static str> {
    Some(match tag {
        b'B' => "Begin",
        b'C' => "Commit",
        b'O' => "Origin",
        b'R' => "Relation",
        b'Y' => "Type",
        b'I' => "Insert",
        b'U' => "Update",
        b'D' => "Delete",
        b'T' => "Truncate",
        b'M' => "Message",
        b'S' => "Stream Start",
        b'E' => "Stream Stop",
        b'c' => "Stream Commit",
        b'A' => "Stream Abort",
        _ => return None,
    })
}

/// A byte as the protocol documentation writes it: `'N'` when printable, hex otherwise.
struct ShowByte(u8);

impl fmt::Display for ShowByte {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() {
            write!(f, "'{}'", self.0 as char)
        } else {
            write!(f, "0x{:02X}", self.0)
        }
    }
}

impl fmt::Display for DecodeErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeErrorKind::Empty => f.write_str("empty message"),
            DecodeErrorKind::UnknownMessage(tag) => write!(f, "unknown message type {}", ShowByte(*tag)),
            DecodeErrorKind::Truncated { field, needed, available } => {
                write!(f, "truncated {field}: needs {needed} bytes, {available} left")
            }
            DecodeErrorKind::Unterminated { field } => write!(f, "{field} has no terminating NUL"),
            DecodeErrorKind::InvalidUtf8 { field } => write!(f, "{field} is not valid UTF-8"),
            DecodeErrorKind::NegativeLength { field, length } => write!(f, "{field} has negative length {length}"),
            DecodeErrorKind::UnexpectedByte { field, byte, expected } => {
                write!(f, "{field} is {}, expected {expected}", ShowByte(*byte))
            }
            DecodeErrorKind::TrailingBytes { count } => write!(f, "{count} unexpected bytes after the last field"),
            DecodeErrorKind::OutOfSequence { reason } => f.write_str(reason),
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("pgoutput ")?;
        match self.tag() {
            Some(tag) => match message_name(tag) {
                Some(name) => write!(f, "{name} ({}) message", ShowByte(tag))?,
                None => write!(f, "message {}", ShowByte(tag))?,
            },
            None => f.write_str("message")?,
        }
        write!(f, " at byte {}", self.offset())?;
        if let Some(column) = self.column() {
            write!(f, " (column {column})")?;
        }
        write!(f, ": {}", self.kind())
    }
}

impl std::error::Error for DecodeError {}

impl From<DecodeError> for Error {
    fn from(e: DecodeError) -> Self {
        Error::new(ErrorKind::Protocol, e.to_string())
    }
}
