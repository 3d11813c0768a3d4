//! The CopyData payloads of the replication sub-protocol, without I/O: XLogData and
//! primary keepalive in, standby status update out, and the server's clock.

use crate::error::{Error, Result};
use crate::lsn::Lsn;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One message of the replication stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEvent {
    /// A chunk of output-plugin data: exactly one pgoutput message.
    XLogData {
        /// The WAL position the message was decoded at (0/0 for some, e.g. Relation).
        wal_start: Lsn,
        /// The server's current end of WAL when it was sent.
        wal_end: Lsn,
        server_clock: SystemTime,
        /// The pgoutput message, for the decoder.
        data: Bytes,
    },
    /// The server's heartbeat. When `reply_requested`, the reader task has already
    /// answered it; it is passed on because an idle consumer with nothing pending may
    /// acknowledge `wal_end` to let the slot advance.
    Keepalive {
        wal_end: Lsn,
        server_clock: SystemTime,
        reply_requested: bool,
    },
}

const XLOG_DATA: u8 = b'w';
const KEEPALIVE: u8 = b'k';
const STATUS_UPDATE: u8 = b'r';
const XLOG_DATA_HEADER: usize = 1 + 8 + 8 + 8;
const KEEPALIVE_LEN: usize = 1 + 8 + 8 + 1;
const STATUS_UPDATE_LEN: usize = 1 + 8 + 8 + 8 + 8 + 1;

/// Seconds from the Unix epoch to PostgreSQL's, 2000-01-01 00:00:00 UTC.
const PG_EPOCH_UNIX_SECS: u64 = 946_684_800;

/// Decodes one CopyData payload sent by a walsender in logical streaming mode.
pub(crate) fn parse_copy_data(mut data: Bytes) -> Result<StreamEvent> {
    match data.first().copied() {
        Some(XLOG_DATA) => {
            if data.len() < XLOG_DATA_HEADER {
                return Err(Error::protocol(format!(
                    "XLogData of {} bytes is shorter than its header",
                    data.len()
                )));
            }
            data.advance(1);
            let wal_start = Lsn(data.get_u64());
            let wal_end = Lsn(data.get_u64());
            let server_clock = pg_clock_to_system_time(data.get_i64());
            Ok(StreamEvent::XLogData {
                wal_start,
                wal_end,
                server_clock,
                data,
            })
        }
        Some(KEEPALIVE) => {
            if data.len() < KEEPALIVE_LEN {
                return Err(Error::protocol(format!("keepalive of {} bytes is too short", data.len())));
            }
            data.advance(1);
            let wal_end = Lsn(data.get_u64());
            let server_clock = pg_clock_to_system_time(data.get_i64());
            let reply_requested = data.get_u8() != 0;
            Ok(StreamEvent::Keepalive {
                wal_end,
                server_clock,
                reply_requested,
            })
        }
        Some(other) => Err(Error::protocol(format!("unknown replication message kind {:?}", other as char))),
        None => Err(Error::protocol("empty CopyData in the replication stream")),
    }
}

/// The positions a standby status update reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Positions {
    /// Received and written somewhere (reported at least as far as `flushed`).
    pub written: Lsn,
    /// Durably applied: the slot's `confirmed_flush_lsn` follows this.
    pub flushed: Lsn,
    /// Applied and visible.
    pub applied: Lsn,
}

/// Appends a standby status update (`'r'`), framed as CopyData, to `buf`.
pub(crate) fn encode_status_update(buf: &mut BytesMut, p: Positions, clock: SystemTime, reply_requested: bool) {
    buf.reserve(1 + 4 + STATUS_UPDATE_LEN);
    buf.put_u8(b'd');
    buf.put_i32(4 + STATUS_UPDATE_LEN as i32);
    buf.put_u8(STATUS_UPDATE);
    // Whatever is flushed has been written, whatever the consumer last said.
    buf.put_u64(p.written.max(p.flushed).0);
    buf.put_u64(p.flushed.0);
    buf.put_u64(p.applied.0);
    buf.put_i64(system_time_to_pg_clock(clock));
    buf.put_u8(reply_requested as u8);
}

/// Microseconds since 2000-01-01 UTC, as the server counts, to a `SystemTime`.
pub(crate) fn pg_clock_to_system_time(micros: i64) -> SystemTime {
    let epoch = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_UNIX_SECS);
    let offset = Duration::from_micros(micros.unsigned_abs());
    let t = if micros >= 0 {
        epoch.checked_add(offset)
    } else {
        epoch.checked_sub(offset)
    };
    // Only a corrupt clock overflows SystemTime; the clock is informative, not a reason to fail.
    t.unwrap_or(epoch)
}

pub(crate) fn system_time_to_pg_clock(t: SystemTime) -> i64 {
    let epoch = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_UNIX_SECS);
    match t.duration_since(epoch) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_micros()).map(|m| -m).unwrap_or(i64::MIN),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn parses_xlog_data() {
        let mut b = BytesMut::new();
        b.put_u8(b'w');
        b.put_u64(0x1_0000_0020);
        b.put_u64(0x1_0000_0040);
        b.put_i64(1_000_000);
        b.put_slice(b"B...");
        match parse_copy_data(b.freeze()) {
            Ok(StreamEvent::XLogData {
                wal_start,
                wal_end,
                server_clock,
                data,
            }) => {
                assert_eq!(wal_start.to_string(), "1/20");
                assert_eq!(wal_end.to_string(), "1/40");
                assert_eq!(server_clock, UNIX_EPOCH + Duration::from_secs(PG_EPOCH_UNIX_SECS + 1));
                assert_eq!(&data[..], b"B...");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_keepalive() {
        let mut b = BytesMut::new();
        b.put_u8(b'k');
        b.put_u64(42);
        b.put_i64(-5);
        b.put_u8(1);
        assert_eq!(
            parse_copy_data(b.freeze()).ok(),
            Some(StreamEvent::Keepalive {
                wal_end: Lsn(42),
                server_clock: pg_clock_to_system_time(-5),
                reply_requested: true
            })
        );
    }

    #[test]
    fn rejects_short_and_unknown_payloads() {
        for bad in [&b""[..], b"w1234567", b"k123456789012345", b"x"] {
            let e = parse_copy_data(Bytes::copy_from_slice(bad)).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Protocol, "{bad:?}");
        }
    }

    #[test]
    fn encodes_status_update() {
        let mut buf = BytesMut::new();
        let p = Positions {
            written: Lsn(5),
            flushed: Lsn(7),
            applied: Lsn(3),
        };
        let clock = pg_clock_to_system_time(123_456);
        encode_status_update(&mut buf, p, clock, false);
        assert_eq!(buf.len(), 1 + 4 + 34);
        assert_eq!(&buf[..6], &[b'd', 0, 0, 0, 38, b'r']);
        let mut body = &buf[6..];
        assert_eq!(body.get_u64(), 7, "write is raised to flush");
        assert_eq!(body.get_u64(), 7);
        assert_eq!(body.get_u64(), 3);
        assert_eq!(body.get_i64(), 123_456);
        assert_eq!(body.get_u8(), 0);
    }

    #[test]
    fn clock_round_trips() {
        for micros in [0, 1, -1, 789_000_000_000_000, -946_684_800_000_000] {
            assert_eq!(system_time_to_pg_clock(pg_clock_to_system_time(micros)), micros);
        }
    }
}
