//! Random values for the workload, as SQL literals.
//!
//! Literals are untyped where possible (`'...'`, bare numbers), so they take the type of the
//! column that receives them, before or after a type change.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

use super::literal;

/// A random SQL literal for `column` (untyped where possible, so it takes the column's
/// type even after a type change), NULL about one time in twelve.
pub fn value(rng: &mut StdRng, column: &str) -> String {
    if column != "big" && rng.gen_ratio(1, 12) {
        return "NULL".into();
    }
    match column {
        "n" => rng.gen_range(-1000..1_000_000).to_string(),
        "label" => {
            const FLAVOURS: [&str; 6] = ["", " 'single'", " \"double\"", " back\\slash", " ünïcødé ✓ 日本", " tab\tnewline\n"];
            literal(&format!("w{}{}", rng.gen_range(0..100_000), FLAVOURS.choose(rng).unwrap()))
        }
        "amount" => {
            let cents: i64 = rng.gen_range(-9_999_999..=9_999_999);
            format!("{}{}.{:02}", if cents < 0 { "-" } else { "" }, cents.abs() / 100, cents.abs() % 100)
        }
        "doc" => literal(&format!(
            r#"{{"k": {}, "s": "v{} ü", "nested": {{"a": [1, null, true], "f": {}.5}}}}"#,
            rng.gen_range(0..1000),
            rng.gen_range(0..1000),
            rng.gen_range(-50..50)
        )),
        "tags" => {
            let n = rng.gen_range(0..4);
            let items: Vec<String> =
                (0..n).map(|_| if rng.gen_ratio(1, 5) { "NULL".into() } else { format!("\"t{} ü\"", rng.gen_range(0..20)) }).collect();
            literal(&format!("{{{}}}", items.join(",")))
        }
        "at" => literal(&format!(
            "2024-{:02}-{:02} {:02}:{:02}:{:02}.{:06}+00",
            rng.gen_range(1..=12),
            rng.gen_range(1..=28),
            rng.gen_range(0..24),
            rng.gen_range(0..60),
            rng.gen_range(0..60),
            rng.gen_range(0..1_000_000)
        )),
        "big" => match rng.gen_range(0..10) {
            0 => "NULL".into(),
            1 | 2 => literal(&random_hex(rng, 32)),
            // Random hex: nothing for pglz to find, kept out of line (STORAGE EXTERNAL).
            _ => {
                let len = rng.gen_range(8_200..12_000);
                literal(&random_hex(rng, len))
            }
        },
        other => panic!("the workload does not write {other:?}"),
    }
}

fn random_hex(rng: &mut StdRng, len: usize) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    (0..len).map(|_| HEX[rng.gen_range(0..16)] as char).collect()
}
