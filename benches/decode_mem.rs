//! In-memory pgoutput decode speed: synthetic Insert messages of an `orders`-like row,
//! decoded through `Decoder` as the stream reader would, timed with `std::time::Instant`.
//!
//! Run: `cargo bench --bench decode_mem [-- MESSAGES]` (default 1,000,000 messages).
//! The first run builds every dependency in release mode (~5 min on 2 cores). For a quick
//! figure from the already-built dev dependencies, optimise only this crate:
//! `cargo bench --bench decode_mem --profile dev --config 'profile.dev.package.pg-ghost.opt-level=3'`.
//! The messages are slices of one buffer, as they are when the transport reads many
//! CopyData frames at once; decoding them involves no copy of column values.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use pg_ghost::replication::pgoutput::{Decoder, Message};

const DEFAULT_MESSAGES: usize = 1_000_000;
const TIMED_RUNS: usize = 5;

/// One Insert in pgoutput's format: id, customer, status, amount, created_at, a null note.
fn put_insert(buf: &mut BytesMut, id: u64) {
    let customer = (id * 7919 % 100_000).to_string();
    let id = id.to_string();
    let columns: [Option<&[u8]>; 6] = [
        Some(id.as_bytes()),
        Some(customer.as_bytes()),
        Some(b"shipped"),
        Some(b"1234.50"),
        Some(b"2024-05-01 12:34:56.789012+00"),
        None,
    ];
    buf.put_u8(b'I');
    buf.put_u32(16_384);
    buf.put_u8(b'N');
    buf.put_u16(columns.len() as u16);
    for column in columns {
        match column {
            Some(value) => {
                buf.put_u8(b't');
                buf.put_i32(value.len() as i32);
                buf.put_slice(value);
            }
            None => buf.put_u8(b'n'),
        }
    }
}

/// `count` messages, each a slice of one shared buffer.
fn synthetic_inserts(count: usize) -> Vec<Bytes> {
    let mut buf = BytesMut::new();
    let mut ends = Vec::with_capacity(count);
    for id in 0..count as u64 {
        put_insert(&mut buf, id + 1);
        ends.push(buf.len());
    }
    let buf = buf.freeze();
    let mut start = 0;
    ends.into_iter()
        .map(|end| {
            let message = buf.slice(start..end);
            start = end;
            message
        })
        .collect()
}

/// Decodes every message once; returns the columns seen so nothing is optimised away.
fn decode_all(messages: &[Bytes]) -> usize {
    let mut decoder = Decoder::new();
    let mut columns = 0;
    for data in messages {
        match decoder.decode(data) {
            Ok(Message::Insert(insert)) => columns += black_box(insert).new.len(),
            other => panic!("benchmark message did not decode as an Insert: {other:?}"),
        }
    }
    columns
}

fn message_count() -> usize {
    // `cargo bench` passes `--bench`; the first numeric argument is the message count.
    std::env::args().skip(1).find_map(|arg| arg.replace('_', "").parse().ok()).unwrap_or(DEFAULT_MESSAGES)
}

fn main() {
    let count = message_count();
    let messages = synthetic_inserts(count);
    let total_bytes: usize = messages.iter().map(Bytes::len).sum();
    decode_all(&messages); // warm-up: page in the buffer, settle the allocator

    let mut runs: Vec<Duration> = (0..TIMED_RUNS)
        .map(|_| {
            let started = Instant::now();
            let columns = decode_all(black_box(&messages));
            let elapsed = started.elapsed();
            assert_eq!(columns, count * 6);
            elapsed
        })
        .collect();
    runs.sort();
    let median = runs[runs.len() / 2];
    let best = runs[0];
    let rate = |d: Duration| count as f64 / d.as_secs_f64();
    println!("decode_mem: {count} Insert messages of 6 columns, {:.1} MB, {TIMED_RUNS} runs", total_bytes as f64 / 1e6);
    println!(
        "  median {:.1} ms: {:.2} M messages/s, {:.0} MB/s, {:.0} ns/message",
        median.as_secs_f64() * 1e3,
        rate(median) / 1e6,
        total_bytes as f64 / median.as_secs_f64() / 1e6,
        median.as_secs_f64() * 1e9 / count as f64
    );
    println!("  best   {:.1} ms: {:.2} M messages/s", best.as_secs_f64() * 1e3, rate(best) / 1e6);
}
