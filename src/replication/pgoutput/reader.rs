//! A bounds-checked cursor over one message's bytes.
//!
//! Every read checks the remaining length first and reports a short read as
//! [`DecodeErrorKind::Truncated`] at the offset where the field starts, so nothing in the
//! decoder indexes a slice directly. Invariant: `pos <= data.len()` at all times.

use bytes::Bytes;

use super::error::{DecodeError, DecodeErrorKind};
use crate::lsn::Lsn;

pub(super) struct Reader<'a> {
    data: &'a Bytes,
    pos: usize,
    /// The message type byte once it has been read, so that every error names its message.
    tag: Option<u8>,
}

impl<'a> Reader<'a> {
    pub(super) fn new(data: &'a Bytes) -> Self {
        Reader { data, pos: 0, tag: None }
    }

    pub(super) fn offset(&self) -> usize {
        self.pos
    }

    pub(super) fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    /// Reads the message type byte; every later error carries it.
    pub(super) fn tag(&mut self) -> Result<u8, DecodeError> {
        if self.data.is_empty() {
            return Err(self.error_at(0, DecodeErrorKind::Empty));
        }
        let tag = self.u8("message type")?;
        self.tag = Some(tag);
        Ok(tag)
    }

    pub(super) fn error_at(&self, offset: usize, kind: DecodeErrorKind) -> DecodeError {
        DecodeError::new(self.tag, offset, kind)
    }

    fn truncated(&self, field: &'static str, needed: usize) -> DecodeError {
        self.error_at(self.pos, DecodeErrorKind::Truncated { field, needed, available: self.remaining() })
    }

    fn rest(&self) -> &'a [u8] {
        let data: &'a Bytes = self.data;
        data.get(self.pos..).unwrap_or_default()
    }

    /// Advances past `len` bytes and returns where they start and end.
    fn advance(&mut self, len: usize, field: &'static str) -> Result<(usize, usize), DecodeError> {
        if len > self.remaining() {
            return Err(self.truncated(field, len));
        }
        let start = self.pos;
        self.pos += len;
        Ok((start, self.pos))
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let bytes = *self.rest().first_chunk::<N>().ok_or_else(|| self.truncated(field, N))?;
        self.pos += N;
        Ok(bytes)
    }

    pub(super) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(u8::from_be_bytes(self.array(field)?))
    }

    pub(super) fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    pub(super) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    pub(super) fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(field)?))
    }

    pub(super) fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(field)?))
    }

    pub(super) fn lsn(&mut self, field: &'static str) -> Result<Lsn, DecodeError> {
        Ok(Lsn(u64::from_be_bytes(self.array(field)?)))
    }

    /// Advances past a NUL-terminated string and returns its range, without the NUL.
    fn cstring_range(&mut self, field: &'static str) -> Result<(usize, usize), DecodeError> {
        let Some(len) = self.rest().iter().position(|&b| b == 0) else {
            return Err(self.error_at(self.pos, DecodeErrorKind::Unterminated { field }));
        };
        let range = self.advance(len, field)?;
        self.advance(1, field)?;
        Ok(range)
    }

    /// A NUL-terminated string as a zero-copy slice of the message.
    pub(super) fn cstring_bytes(&mut self, field: &'static str) -> Result<Bytes, DecodeError> {
        let (start, end) = self.cstring_range(field)?;
        Ok(self.data.slice(start..end))
    }

    /// A NUL-terminated string that must be UTF-8 (names: the transport asks for
    /// `client_encoding` UTF8, so anything else means the stream is not what we think).
    pub(super) fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let (start, end) = self.cstring_range(field)?;
        let bytes = self.data.get(start..end).unwrap_or_default();
        match std::str::from_utf8(bytes) {
            Ok(text) => Ok(text.to_owned()),
            Err(_) => Err(self.error_at(start, DecodeErrorKind::InvalidUtf8 { field })),
        }
    }

    /// An Int32 length followed by that many bytes, returned as a zero-copy slice.
    pub(super) fn length_prefixed(&mut self, field: &'static str) -> Result<Bytes, DecodeError> {
        let at = self.pos;
        let declared = self.i32(field)?;
        let Ok(len) = usize::try_from(declared) else {
            return Err(self.error_at(at, DecodeErrorKind::NegativeLength { field, length: declared }));
        };
        let (start, end) = self.advance(len, field)?;
        Ok(self.data.slice(start..end))
    }

    /// Fails unless every byte of the message has been consumed: leftovers mean the
    /// message was not the shape we decoded it as.
    pub(super) fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(self.error_at(self.pos, DecodeErrorKind::TrailingBytes { count })),
        }
    }
}
