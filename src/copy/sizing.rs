//! Adaptive chunk size: aim every chunk at a target duration.

use std::time::Duration;

pub const MIN_CHUNK: u64 = 100;
pub const MAX_CHUNK: u64 = 1_000_000;

/// The size for the next chunk after one of `size` rows took `took`: proportional to how far
/// it was from `target`, but never more than doubling or halving at once, so a single slow
/// chunk (a checkpoint, a lock) does not swing it.
pub fn next_chunk_size(size: u64, took: Duration, target: Duration) -> u64 {
    // A size a DBA set below the floor (`chunk-size=50`) is kept as the floor.
    let floor = MIN_CHUNK.min(size.max(1));
    if took.is_zero() || target.is_zero() {
        return (size.saturating_mul(2)).clamp(floor, MAX_CHUNK);
    }
    let ratio = target.as_secs_f64() / took.as_secs_f64();
    let ratio = ratio.clamp(0.5, 2.0);
    ((size as f64 * ratio) as u64).clamp(floor, MAX_CHUNK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_towards_the_target_within_bounds() {
        let t = Duration::from_millis(500);
        assert_eq!(next_chunk_size(10_000, Duration::from_millis(500), t), 10_000);
        assert_eq!(next_chunk_size(10_000, Duration::from_millis(1000), t), 5_000);
        assert_eq!(next_chunk_size(10_000, Duration::from_secs(60), t), 5_000);
        assert_eq!(next_chunk_size(10_000, Duration::from_millis(400), t), 12_500);
        assert_eq!(next_chunk_size(10_000, Duration::from_millis(1), t), 20_000);
        assert_eq!(next_chunk_size(150, Duration::from_secs(10), t), MIN_CHUNK);
        assert_eq!(next_chunk_size(900_000, Duration::ZERO, t), MAX_CHUNK);
        assert_eq!(next_chunk_size(50, Duration::from_secs(10), t), 50);
    }
}
