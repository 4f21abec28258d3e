//! When a failed delivery is tried again: the Standard Webhooks example schedule (immediately,
//! then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h and 24 h: ten attempts over about three
//! days and three hours), each wait stretched or shrunk by up to 10 % so that deliveries that
//! failed together (an endpoint that was down) do not come back together. After the tenth failed
//! attempt the delivery is given up and its endpoint disabled.
//!
//! The jitter is a pure function of a seed (the delivery's id) and the attempt, so a schedule is
//! reproducible in tests and in an incident review.

use std::time::Duration;
use uuid::Uuid;

const MIN: u64 = 60;
const HOUR: u64 = 60 * MIN;

/// The wait before attempt `n + 2` after attempt `n + 1` failed, before jitter.
pub const SCHEDULE: [Duration; 9] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * MIN),
    Duration::from_secs(30 * MIN),
    Duration::from_secs(2 * HOUR),
    Duration::from_secs(5 * HOUR),
    Duration::from_secs(10 * HOUR),
    Duration::from_secs(14 * HOUR),
    Duration::from_secs(20 * HOUR),
    Duration::from_secs(24 * HOUR),
];

/// Attempts in all, the first one immediate.
pub const MAX_ATTEMPTS: u32 = SCHEDULE.len() as u32 + 1;

/// A wait is stretched or shrunk by at most this many per mille.
pub const JITTER_PER_MILLE: u64 = 100;

/// The jitter's seed: draws from it are deterministic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Jitter(pub u64);

impl Jitter {
    /// A delivery's seed: its id folded to 64 bits.
    pub fn from_uuid(id: Uuid) -> Self {
        let (hi, lo) = id.as_u64_pair();
        Self(hi ^ lo.rotate_left(29))
    }

    /// A number in `0..=2 * JITTER_PER_MILLE` drawn from the seed and the attempt (splitmix64).
    fn draw(self, attempt: u32) -> u64 {
        let mut z = self.0 ^ u64::from(attempt).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        z % (2 * JITTER_PER_MILLE + 1)
    }
}

/// The wait before the next attempt, when `attempts` attempts were made and all failed; `None`
/// once [`MAX_ATTEMPTS`] were made: give up. No attempt made yet: go at once.
pub fn next_delay(attempts: u32, jitter: Jitter) -> Option<Duration> {
    if attempts == 0 {
        return Some(Duration::ZERO);
    }
    let base = SCHEDULE.get(usize::try_from(attempts - 1).ok()?)?;
    let per_mille = 1000 - JITTER_PER_MILLE + jitter.draw(attempts);
    let ms = u64::try_from(base.as_millis()).unwrap_or(u64::MAX);
    Some(Duration::from_millis(ms.saturating_mul(per_mille) / 1000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_schedule_table() {
        let check = |attempts: u32, lo_s: f64, hi_s: f64| {
            for seed in [0, 1, 42, u64::MAX] {
                let d = next_delay(attempts, Jitter(seed)).unwrap().as_secs_f64();
                assert!((lo_s..=hi_s).contains(&d), "attempt {attempts}: {d} s");
            }
        };
        assert_eq!(next_delay(0, Jitter(9)), Some(Duration::ZERO));
        check(1, 4.5, 5.5);
        check(2, 270.0, 330.0);
        check(3, 1620.0, 1980.0);
        check(4, 6480.0, 7920.0);
        check(9, 77_760.0, 95_040.0);
        assert_eq!(
            next_delay(10, Jitter(0)),
            None,
            "ten failed attempts: give up"
        );
        assert_eq!(next_delay(11, Jitter(0)), None);
        assert_eq!(next_delay(u32::MAX, Jitter(0)), None);
        assert_eq!(MAX_ATTEMPTS, 10);
        let total: Duration = SCHEDULE.iter().sum();
        assert_eq!(total, Duration::from_secs(75 * HOUR + 35 * MIN + 5));
    }

    #[test]
    fn one_seed_gives_one_schedule_and_seeds_differ() {
        let a = Jitter::from_uuid(Uuid::now_v7());
        let b = Jitter::from_uuid(Uuid::now_v7());
        let of = |j| {
            (1..MAX_ATTEMPTS)
                .map(|n| next_delay(n, j))
                .collect::<Vec<_>>()
        };
        assert_eq!(of(a), of(a));
        assert_ne!(of(a), of(b));
    }

    proptest! {
        #[test]
        fn waits_stay_within_ten_percent_and_grow(seed: u64, attempts in 1u32..MAX_ATTEMPTS) {
            let base = SCHEDULE[(attempts - 1) as usize].as_secs_f64();
            let d = next_delay(attempts, Jitter(seed)).unwrap().as_secs_f64();
            prop_assert!(d >= base * 0.9 - 1e-9 && d <= base * 1.1 + 1e-9);
            if attempts >= 2 {
                // Jitter of ±10 % cannot reorder two waits whose bases differ by more than
                // 1.1 / 0.9; the last steps (14 h, 20 h, 24 h) are closer than that, and a
                // later wait may come out a little shorter than the one before it.
                let prev_base = SCHEDULE[(attempts - 2) as usize].as_secs_f64();
                let prev = next_delay(attempts - 1, Jitter(seed)).unwrap();
                if base / prev_base > 1.1 / 0.9 {
                    prop_assert!(prev.as_secs_f64() < d);
                }
            }
        }

        #[test]
        fn the_whole_schedule_spans_about_three_days(seed: u64) {
            let total: Duration = (1..MAX_ATTEMPTS).map(|n| next_delay(n, Jitter(seed)).unwrap()).sum();
            let hours = total.as_secs_f64() / 3600.0;
            prop_assert!((68.0..=84.0).contains(&hours), "{hours} h");
            prop_assert_eq!(next_delay(MAX_ATTEMPTS, Jitter(seed)), None);
        }
    }
}
