//! Per-target retry backoff (issue 12, item 9): exponential with jitter between attempts, so an
//! unreachable miner does not spend its attempts in seconds, and thousands of miners that failed
//! together do not retry together.
//!
//! The wait is counted from when the failed attempt was sent, not from when it was found to have
//! failed: a target that already waited out a long deadline (90 s for confirmation) is retried at
//! once, while one whose command failed a second after it went waits its turn. The jitter is a
//! pure function of the device and the attempt, so decisions stay reproducible.

use crate::DeviceId;
use chrono::{DateTime, Duration, Utc};

/// How long a target waits between attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The wait before the second attempt (before jitter); each later one doubles it.
    pub base: Duration,
    /// No wait is longer than this.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::seconds(5),
            max: Duration::minutes(5),
        }
    }
}

impl Backoff {
    /// The wait after `attempts` spent attempts (1 for the first failure): `base × 2^(attempts-1)`
    /// capped at `max`, of which the second half is jitter ("equal jitter": never less than half
    /// the exponential step, so the spacing still grows).
    pub fn delay(&self, device: DeviceId, attempts: u32) -> Duration {
        if attempts == 0 {
            return Duration::zero();
        }
        let base = self.base.num_milliseconds().max(0);
        let max = self.max.num_milliseconds().max(0);
        let step = base.saturating_mul(1i64 << (attempts - 1).min(30)).min(max);
        let half = step / 2;
        let jitter = (unit(device, attempts) * (step - half) as f64) as i64;
        Duration::milliseconds(half + jitter)
    }

    /// When a target whose attempt went out at `sent_at` may be sent again, having spent
    /// `attempts` attempts in this episode.
    pub fn next_attempt_at(
        &self,
        device: DeviceId,
        attempts: u32,
        sent_at: DateTime<Utc>,
    ) -> DateTime<Utc> {
        sent_at + self.delay(device, attempts)
    }
}

/// A number in [0, 1) drawn from the device and the attempt (splitmix64 of both).
fn unit(device: DeviceId, attempts: u32) -> f64 {
    let (hi, lo) = device.0.as_u64_pair();
    let mut z = hi ^ lo.rotate_left(17) ^ u64::from(attempts).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use uuid::Uuid;

    fn b() -> Backoff {
        Backoff {
            base: Duration::seconds(5),
            max: Duration::seconds(60),
        }
    }

    #[test]
    fn doubles_within_its_jitter_and_stops_at_max() {
        let d = DeviceId(Uuid::from_u128(7));
        assert_eq!(b().delay(d, 0), Duration::zero());
        for (attempts, step) in [(1, 5), (2, 10), (3, 20), (4, 40), (5, 60), (40, 60)] {
            let got = b().delay(d, attempts);
            let step = Duration::seconds(step);
            assert!(got >= step / 2 && got <= step, "{attempts}: {got}");
        }
    }

    #[test]
    fn jitter_spreads_devices_that_failed_together() {
        let delays: std::collections::BTreeSet<i64> = (0..100u128)
            .map(|n| {
                b().delay(DeviceId(Uuid::from_u128(n)), 3)
                    .num_milliseconds()
            })
            .collect();
        assert!(delays.len() > 90, "{} distinct waits", delays.len());
        let sent = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let d = DeviceId(Uuid::from_u128(1));
        assert_eq!(
            b().next_attempt_at(d, 2, sent),
            sent + b().delay(d, 2),
            "the wait counts from the send"
        );
    }

    proptest! {
        #[test]
        fn delay_is_bounded_and_grows(n in any::<u128>(), attempts in 1u32..64) {
            let d = DeviceId(Uuid::from_u128(n));
            let this = b().delay(d, attempts);
            prop_assert!(this <= b().max);
            prop_assert!(this >= b().base / 2);
            // Each step's least wait is at least the previous step's: waits never shrink on average.
            let next = b().delay(d, attempts + 1);
            prop_assert!(next * 2 >= this);
        }
    }
}
