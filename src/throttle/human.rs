//! Numbers as the reasons show them to a DBA: `2.3s`, `180ms`, `12.0 GiB`.

use std::time::Duration;

/// Milliseconds below a second (sub-second limits are common), else seconds to the
/// millisecond without trailing zeros (`2.3s`, `1.042s`): a lag of 1.04s must not read as
/// `1.0s > 1.0s`.
pub fn duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        return format!("{}ms", d.as_millis());
    }
    let millis = d.as_millis();
    let (secs, frac) = (millis / 1000, millis % 1000);
    let frac = format!("{frac:03}");
    let frac = frac.trim_end_matches('0');
    format!("{secs}.{}s", if frac.is_empty() { "0" } else { frac })
}

/// Powers of 1024 with one decimal (the units `pg_size_pretty` and the flags use); plain
/// bytes below 1 KiB.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (d, want) in [
            (Duration::ZERO, "0ms"),
            (Duration::from_millis(180), "180ms"),
            (Duration::from_millis(999), "999ms"),
            (Duration::from_millis(1000), "1.0s"),
            (Duration::from_millis(2300), "2.3s"),
            (Duration::from_millis(1042), "1.042s"),
            (Duration::from_micros(1_040_900), "1.04s"),
            (Duration::from_secs(75), "75.0s"),
        ] {
            assert_eq!(duration(d), want);
        }
    }

    #[test]
    fn sizes() {
        for (n, want) in [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1.0 KiB"),
            (1536, "1.5 KiB"),
            (64 << 20, "64.0 MiB"),
            (12 << 30, "12.0 GiB"),
            (3 << 40, "3.0 TiB"),
            (u64::MAX, "16384.0 PiB"),
        ] {
            assert_eq!(bytes(n), want);
        }
    }
}
