//! Durations and byte sizes as DBAs write them.
//!
//! Durations are one or more `<number><unit>` parts (`500ms`, `2s`, `1m30s`, `1.5s`) with
//! units `ms`, `s`, `m`, `h`. A bare number takes the unit the flag's name promises
//! (`--max-lag-millis 1500`, `--critical-load-hibernate-seconds 30`); a flag whose name
//! promises none refuses a bare number rather than guess.
//!
//! Sizes use postgresql.conf's units, powers of 1024 (`10GB`, `512MB`, `64kB`), so they
//! compare directly with `max_slot_wal_keep_size` and `pg_size_pretty`; a bare number is
//! bytes. Decimal fractions are computed exactly, never through floating point.

use crate::error::{Error, Result};
use std::time::Duration;

/// The unit of a bare number, given by the flag's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bare {
    Millis,
    Seconds,
    /// The flag's name has no unit: a bare number is refused.
    Refuse,
}

const NANOS_PER: [(&str, u128); 4] =
    [("ms", 1_000_000), ("s", 1_000_000_000), ("m", 60_000_000_000), ("h", 3_600_000_000_000)];

const BYTES_PER: [(&str, u128); 10] = [
    ("b", 1),
    ("kb", 1 << 10),
    ("kib", 1 << 10),
    ("mb", 1 << 20),
    ("mib", 1 << 20),
    ("gb", 1 << 30),
    ("gib", 1 << 30),
    ("tb", 1 << 40),
    ("tib", 1 << 40),
    ("k", 1 << 10),
];

/// Reads a duration for `flag`; the error names the flag and the value.
pub fn parse_duration(flag: &str, text: &str, bare: Bare) -> Result<Duration> {
    let t = text.trim();
    let bad = |why: &str| Error::config(format!("--{flag} {text:?}: {why}"));
    if t.is_empty() {
        return Err(bad("a duration is required, e.g. 500ms, 2s, 1m30s"));
    }
    if let Some(bare_nanos) = bare_unit_nanos(bare) {
        if t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            let nanos = scaled(t, bare_nanos).ok_or_else(|| bad("not a number"))?;
            return to_duration(nanos).ok_or_else(|| bad("too long"));
        }
    }
    let mut nanos: u128 = 0;
    for (number, unit) in parts(t).map_err(|why| bad(&why))? {
        let per = lookup(&NANOS_PER, &unit).ok_or_else(|| bad(&format!("unknown unit {unit:?}; use ms, s, m or h")))?;
        nanos += scaled(number, per).ok_or_else(|| bad(&format!("{number:?} is not a number")))?;
    }
    to_duration(nanos).ok_or_else(|| bad("too long"))
}

/// Reads a byte count for `flag`; the error names the flag and the value.
pub fn parse_bytes(flag: &str, text: &str) -> Result<u64> {
    let t = text.trim();
    let bad = |why: &str| Error::config(format!("--{flag} {text:?}: {why}"));
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = (&t[..split], t[split..].trim());
    if number.is_empty() {
        return Err(bad("expected a number of bytes, e.g. 512MB or 10GB"));
    }
    let per = if unit.is_empty() {
        1
    } else {
        lookup(&BYTES_PER, unit).ok_or_else(|| bad(&format!("unknown unit {unit:?}; use kB, MB, GB or TB")))?
    };
    let bytes = scaled(number, per).ok_or_else(|| bad(&format!("{number:?} is not a number")))?;
    u64::try_from(bytes).map_err(|_| bad("too large"))
}

/// Formats a byte count the way [`parse_bytes`] reads it back, in the largest exact unit
/// (`10GB`, `1536MB`, `100`), so `name=?` on the socket shows what was set.
pub fn format_bytes(bytes: u64) -> String {
    for (unit, per) in [("TB", 1u64 << 40), ("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)] {
        if bytes != 0 && bytes.is_multiple_of(per) {
            return format!("{}{unit}", bytes / per);
        }
    }
    bytes.to_string()
}

fn bare_unit_nanos(bare: Bare) -> Option<u128> {
    match bare {
        Bare::Millis => Some(1_000_000),
        Bare::Seconds => Some(1_000_000_000),
        Bare::Refuse => None,
    }
}

/// Splits `1m30.5s` into `[("1", "m"), ("30.5", "s")]`.
fn parts(text: &str) -> std::result::Result<Vec<(&str, String)>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_end == 0 {
            return Err(format!("expected a number at {rest:?}; write e.g. 500ms, 2s, 1m30s"));
        }
        let unit_end =
            rest[num_end..].find(|c: char| c.is_ascii_digit() || c == '.').map_or(rest.len(), |i| num_end + i);
        let unit = rest[num_end..unit_end].trim();
        if unit.is_empty() {
            return Err("a unit is required (ms, s, m or h), e.g. 500ms or 2s".to_string());
        }
        out.push((&rest[..num_end], unit.to_ascii_lowercase()));
        rest = &rest[unit_end..];
    }
    Ok(out)
}

fn lookup(table: &[(&str, u128)], unit: &str) -> Option<u128> {
    let unit = unit.to_ascii_lowercase();
    table.iter().find(|(name, _)| *name == unit).map(|(_, per)| *per)
}

/// `number * per`, exactly, for a decimal `number` such as `1.5`; `None` when it is not
/// one (`1.2.3`, `.`, ``) or overflows. Fractions finer than the unit's base are truncated.
fn scaled(number: &str, per: u128) -> Option<u128> {
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && frac.is_empty() || frac.contains('.') || frac.len() > 18 {
        return None;
    }
    let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
    let mut total = whole.checked_mul(per)?;
    if !frac.is_empty() {
        let digits: u128 = frac.parse().ok()?;
        total = total.checked_add(digits.checked_mul(per)? / 10u128.pow(frac.len() as u32))?;
    }
    Some(total)
}

fn to_duration(nanos: u128) -> Option<Duration> {
    let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
    Some(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn durations_with_units() {
        for (text, want) in [
            ("500ms", MS(500)),
            ("2s", MS(2_000)),
            ("1m", MS(60_000)),
            ("1h", MS(3_600_000)),
            ("1m30s", MS(90_000)),
            ("1.5s", MS(1_500)),
            ("0.1s", MS(100)),
            (".25s", MS(250)),
            (" 2S ", MS(2_000)),
            ("1h2m3s4ms", MS(3_723_004)),
            ("0s", MS(0)),
        ] {
            assert_eq!(parse_duration("chunk-time", text, Bare::Refuse).unwrap(), want, "{text:?}");
        }
    }

    #[test]
    fn bare_numbers_take_the_flags_unit() {
        assert_eq!(parse_duration("max-lag-millis", "1500", Bare::Millis).unwrap(), MS(1_500));
        assert_eq!(parse_duration("max-lag-millis", "2s", Bare::Millis).unwrap(), MS(2_000));
        assert_eq!(parse_duration("x-seconds", "30", Bare::Seconds).unwrap(), MS(30_000));
        assert_eq!(parse_duration("x-seconds", "0.5", Bare::Seconds).unwrap(), MS(500));
    }

    #[test]
    fn bad_durations_name_the_flag_and_value() {
        for (text, bare, why) in [
            ("500", Bare::Refuse, "unit is required"),
            ("", Bare::Millis, "duration is required"),
            ("   ", Bare::Refuse, "duration is required"),
            ("fast", Bare::Refuse, "expected a number"),
            ("5 parsecs", Bare::Refuse, "unknown unit \"parsecs\""),
            ("5d", Bare::Refuse, "unknown unit \"d\""),
            ("-1s", Bare::Refuse, "expected a number"),
            ("1.2.3s", Bare::Refuse, "not a number"),
            ("1.2.3", Bare::Millis, "not a number"),
            (".s", Bare::Refuse, "not a number"),
            ("1s2", Bare::Refuse, "unit is required"),
            ("99999999999999999999999h", Bare::Refuse, "too long"),
        ] {
            let e = parse_duration("chunk-time", text, bare).unwrap_err();
            let msg = e.to_string();
            assert_eq!(e.kind(), crate::ErrorKind::Config);
            assert!(msg.starts_with(&format!("--chunk-time {text:?}")), "{msg}");
            assert!(msg.contains(why), "{text:?}: {msg}");
        }
    }

    #[test]
    fn sizes() {
        for (text, want) in [
            ("0", 0),
            ("1234", 1234),
            ("1kB", 1024),
            ("64k", 64 << 10),
            ("512MB", 512 << 20),
            ("10GB", 10 << 30),
            ("10 GB", 10 << 30),
            ("10gib", 10 << 30),
            ("1.5GB", 3 << 29),
            ("2TB", 2 << 40),
            ("100B", 100),
        ] {
            assert_eq!(parse_bytes("max-retained-wal", text).unwrap(), want, "{text:?}");
        }
    }

    #[test]
    fn bad_sizes_name_the_flag_and_value() {
        for (text, why) in [
            ("", "expected a number of bytes"),
            ("GB", "expected a number of bytes"),
            ("-1GB", "expected a number of bytes"),
            ("10 furlongs", "unknown unit"),
            ("10GBs", "unknown unit"),
            ("1.2.3MB", "not a number"),
            ("99999999999TB", "too large"),
        ] {
            let msg = parse_bytes("max-retained-wal", text).unwrap_err().to_string();
            assert!(msg.starts_with(&format!("--max-retained-wal {text:?}")), "{msg}");
            assert!(msg.contains(why), "{text:?}: {msg}");
        }
    }

    #[test]
    fn formatted_sizes_read_back() {
        for (bytes, text) in [(0, "0"), (100, "100"), (1024, "1kB"), (10 << 30, "10GB"), (1536 << 20, "1536MB")] {
            assert_eq!(format_bytes(bytes), text);
            assert_eq!(parse_bytes("x", text).unwrap(), bytes);
        }
    }
}
