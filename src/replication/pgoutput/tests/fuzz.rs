//! Robustness: truncation at every length, trailing bytes, random tuples round-tripped,
//! and a fixed-seed mutation loop over the valid corpus. A panic anywhere fails the test;
//! the seed makes every failure reproducible.

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::super::*;
use super::build::{corpus, Col, Msg};

/// Decodes `data` in both stream positions and through a `Decoder` in either state:
/// whatever the result, nothing may panic and errors must point inside the message.
fn decode_every_way(data: &Bytes) {
    for block in [StreamBlock::Outside, StreamBlock::Inside] {
        if let Err(e) = decode(data, block) {
            assert!(e.offset() <= data.len(), "offset {} beyond {} bytes: {e}", e.offset(), data.len());
            let _ = e.to_string();
        }
    }
    let mut decoder = Decoder::new();
    let _ = decoder.decode(data);
    let _ = decoder.decode(&Bytes::from_static(&[b'S', 0, 0, 0, 1, 1]));
    let _ = decoder.decode(data);
}

#[test]
fn every_truncation_of_every_message_is_an_error() {
    for (name, data, block) in corpus() {
        decode(&data, block).unwrap_or_else(|e| panic!("{name}: valid message failed: {e}"));
        for len in 0..data.len() {
            let cut = data.slice(..len);
            assert!(decode(&cut, block).is_err(), "{name} cut to {len} bytes decoded");
            decode_every_way(&cut);
        }
    }
}

#[test]
fn a_trailing_byte_after_any_message_is_an_error() {
    for (name, data, block) in corpus() {
        let mut longer = data.to_vec();
        longer.push(0);
        let err = decode(&Bytes::from(longer), block).expect_err(name);
        assert_eq!(err.kind(), &DecodeErrorKind::TrailingBytes { count: 1 }, "{name}");
    }
}

fn random_value(rng: &mut StdRng) -> Vec<u8> {
    let len = rng.gen_range(0..64);
    (0..len).map(|_| rng.gen()).collect()
}

#[test]
fn random_tuples_round_trip() {
    let mut rng = StdRng::seed_from_u64(0x5eed_7001);
    for _ in 0..2_000 {
        let values: Vec<(u8, Vec<u8>)> =
            (0..rng.gen_range(0..40)).map(|_| (rng.gen_range(0..4), random_value(&mut rng))).collect();
        let columns: Vec<Col<'_>> = values
            .iter()
            .map(|(kind, v)| match kind {
                0 => Col::Null,
                1 => Col::Unchanged,
                2 => Col::Text(v),
                _ => Col::Binary(v),
            })
            .collect();
        let data = Msg::new(b'I').u32(1).u8(b'N').tuple(&columns).bytes();
        let Ok(Message::Insert(insert)) = decode(&data, StreamBlock::Outside) else { panic!("{data:?} failed") };
        assert_eq!(insert.new.len(), columns.len());
        for (index, column) in columns.iter().enumerate() {
            let got = insert.new.get(index);
            let matches = match (column, got) {
                (Col::Null, Some(ColumnValue::Null)) | (Col::Unchanged, Some(ColumnValue::UnchangedToast)) => true,
                (Col::Text(v), Some(ColumnValue::Text(b))) | (Col::Binary(v), Some(ColumnValue::Binary(b))) => v == b,
                _ => false,
            };
            assert!(matches, "column {index}: sent {column:?}, decoded {got:?}");
        }
    }
}

/// Values that break length and count arithmetic when written over a field.
const HOSTILE_WORDS: [u32; 8] = [0, 1, 0x7F, 0xFF, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFE, 0xFFFF_FFFF];

fn mutate(rng: &mut StdRng, data: &mut Vec<u8>, donor: &[u8]) {
    if data.is_empty() {
        data.push(rng.gen());
        return;
    }
    let at = rng.gen_range(0..data.len());
    match rng.gen_range(0..8) {
        0 => data[at] ^= 1 << rng.gen_range(0..8),
        1 => data[at] = rng.gen(),
        2 => {
            let word = HOSTILE_WORDS[rng.gen_range(0..HOSTILE_WORDS.len())].to_be_bytes();
            let width = if rng.gen() { 2 } else { 4 };
            for (offset, byte) in word[4 - width..].iter().enumerate() {
                if let Some(slot) = data.get_mut(at + offset) {
                    *slot = *byte;
                }
            }
        }
        3 => data.truncate(at),
        4 => data.insert(at, rng.gen()),
        5 => {
            let end = rng.gen_range(at..=data.len());
            data.drain(at..end);
        }
        6 => {
            let end = rng.gen_range(at..=data.len());
            let copy = data[at..end].to_vec();
            data.splice(at..at, copy);
        }
        _ => {
            let from = rng.gen_range(0..=donor.len());
            data.truncate(at);
            data.extend_from_slice(&donor[from..]);
        }
    }
}

#[test]
fn mutated_messages_never_panic() {
    let corpus: Vec<Vec<u8>> = corpus().into_iter().map(|(_, data, _)| data.to_vec()).collect();
    let mut rng = StdRng::seed_from_u64(0xDEC0_DE15);
    for _ in 0..150_000 {
        let mut data = corpus[rng.gen_range(0..corpus.len())].clone();
        let donor = &corpus[rng.gen_range(0..corpus.len())];
        for _ in 0..rng.gen_range(1..=4) {
            mutate(&mut rng, &mut data, donor);
        }
        decode_every_way(&Bytes::from(data));
    }
}

#[test]
fn random_bytes_after_a_valid_tag_never_panic() {
    const TAGS: &[u8] = b"BCORYIUDTMSEcA";
    let mut rng = StdRng::seed_from_u64(0xB17E_5EED);
    for _ in 0..60_000 {
        let len = rng.gen_range(0..48);
        let mut data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        if let Some(first) = data.first_mut() {
            *first = TAGS[rng.gen_range(0..TAGS.len())];
        }
        decode_every_way(&Bytes::from(data));
    }
}
