//! Confirmation rules (DESIGN §5.3): a target is confirmed only on positive evidence from a sample
//! taken after its command went out, and drift never fires on missing telemetry.

use crate::command::{CommandKind, CurtailLevel};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The latest telemetry for one device.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub power_w: f64,
    pub hashrate_ths: f64,
    pub sampled_at: DateTime<Utc>,
}

impl Sample {
    /// Whether the values could be real; the agent drops samples that are not, so this is a guard
    /// for data that reached the store some other way.
    pub fn is_valid(&self) -> bool {
        self.power_w.is_finite()
            && self.power_w >= 0.0
            && self.hashrate_ths.is_finite()
            && self.hashrate_ths >= 0.0
    }

    /// J/TH; `None` when the miner is not hashing, so efficiency cannot be known.
    pub fn efficiency_j_per_th(&self) -> Option<f64> {
        (self.hashrate_ths > HASHING_EPSILON_THS).then(|| self.power_w / self.hashrate_ths)
    }
}

/// Below this a miner counts as not hashing (rounding noise in firmware replies).
pub const HASHING_EPSILON_THS: f64 = 0.01;

/// Thresholds for confirming a curtail.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfirmPolicy {
    /// A full curtail is confirmed at or below this share of the baseline power. Sleeping miners
    /// still draw fans and control-board power (a few percent), so zero is never required.
    pub full_curtail_max_fraction: f64,
    /// A power-limited miner is confirmed at or below its target times this factor.
    pub power_target_tolerance: f64,
    /// A restored miner must hash at least this much (TH/s); kept low because hashrate ramps up
    /// over minutes on real hardware, and any hashing proves the wake took effect.
    pub restored_min_hashrate_ths: f64,
}

impl Default for ConfirmPolicy {
    fn default() -> Self {
        Self {
            full_curtail_max_fraction: 0.15,
            power_target_tolerance: 1.05,
            restored_min_hashrate_ths: HASHING_EPSILON_THS,
        }
    }
}

/// What a sample says about a target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Evidence {
    /// The sample shows the commanded state.
    Holds,
    /// The sample is fresh and shows the miner is not in the commanded state.
    Contradicts,
    /// No sample, a stale one, or one taken before the command: nothing can be concluded.
    None,
}

impl ConfirmPolicy {
    /// Whether `sample` (taken after `since`) shows `kind` in effect for a device whose power was
    /// `baseline_w` before the event.
    pub fn curtail_evidence(
        &self,
        kind: &CommandKind,
        baseline_w: f64,
        sample: Option<&Sample>,
        since: DateTime<Utc>,
    ) -> Evidence {
        let Some(s) = sample.filter(|s| s.sampled_at > since && s.is_valid()) else {
            return Evidence::None;
        };
        let holds = match *kind {
            CommandKind::Curtail {
                level: CurtailLevel::Full,
            } => {
                s.power_w <= baseline_w * self.full_curtail_max_fraction
                    && s.hashrate_ths <= HASHING_EPSILON_THS
            }
            CommandKind::SetPowerTarget { watts } => {
                s.power_w <= watts * self.power_target_tolerance
            }
            // Efficiency mode asks the firmware for its best operating point; any real drop counts.
            CommandKind::Curtail {
                level: CurtailLevel::Efficiency,
            } => s.power_w < baseline_w * 0.95,
            CommandKind::Uncurtail => return self.restore_evidence(kind, sample, since),
        };
        if holds {
            Evidence::Holds
        } else {
            Evidence::Contradicts
        }
    }

    /// Whether the miner is back to normal after an uncurtail sent at `since`, for an event whose
    /// command was `curtailed_with`: hashing again, and for a power-limited miner also drawing
    /// more than its curtailed limit (a miner that hashed throughout proves nothing by hashing).
    pub fn restore_evidence(
        &self,
        curtailed_with: &CommandKind,
        sample: Option<&Sample>,
        since: DateTime<Utc>,
    ) -> Evidence {
        let Some(s) = sample.filter(|s| s.sampled_at > since && s.is_valid()) else {
            return Evidence::None;
        };
        let hashing = s.hashrate_ths >= self.restored_min_hashrate_ths;
        let unlimited = match *curtailed_with {
            CommandKind::SetPowerTarget { watts } => {
                s.power_w > watts * self.power_target_tolerance
            }
            _ => true,
        };
        if hashing && unlimited {
            Evidence::Holds
        } else {
            Evidence::Contradicts
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: CommandKind = CommandKind::Curtail {
        level: CurtailLevel::Full,
    };

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    fn sample(power_w: f64, hashrate_ths: f64, t: i64) -> Sample {
        Sample {
            power_w,
            hashrate_ths,
            sampled_at: at(t),
        }
    }

    #[test]
    fn full_curtail_needs_low_power_and_no_hashrate_after_the_command() {
        let p = ConfirmPolicy::default();
        let check = |s: Option<Sample>, want: Evidence| {
            assert_eq!(
                p.curtail_evidence(&FULL, 3000.0, s.as_ref(), at(10)),
                want,
                "{s:?}"
            );
        };
        check(Some(sample(90.0, 0.0, 11)), Evidence::Holds);
        // Power fell but the miner still hashes: firmware that lies about sleeping.
        check(Some(sample(90.0, 5.0, 11)), Evidence::Contradicts);
        check(Some(sample(2900.0, 0.0, 11)), Evidence::Contradicts);
        // Taken before (or exactly at) the command: proves nothing.
        check(Some(sample(90.0, 0.0, 10)), Evidence::None);
        check(Some(sample(90.0, 0.0, 5)), Evidence::None);
        check(None, Evidence::None);
        // Garbage never confirms and never drifts.
        check(Some(sample(f64::NAN, 0.0, 11)), Evidence::None);
        check(Some(sample(-1.0, 0.0, 11)), Evidence::None);
    }

    #[test]
    fn power_target_tolerance() {
        let p = ConfirmPolicy::default();
        let k = CommandKind::SetPowerTarget { watts: 2000.0 };
        let since = at(0);
        assert_eq!(
            p.curtail_evidence(&k, 3000.0, Some(&sample(2090.0, 80.0, 1)), since),
            Evidence::Holds
        );
        assert_eq!(
            p.curtail_evidence(&k, 3000.0, Some(&sample(2200.0, 80.0, 1)), since),
            Evidence::Contradicts
        );
    }

    #[test]
    fn restore_needs_hashrate_after_the_command() {
        let p = ConfirmPolicy::default();
        let check = |k: &CommandKind, s: Option<Sample>, since: i64, want: Evidence| {
            assert_eq!(
                p.restore_evidence(k, s.as_ref(), at(since)),
                want,
                "{k:?} {s:?}"
            );
        };
        check(&FULL, Some(sample(500.0, 20.0, 1)), 0, Evidence::Holds);
        check(&FULL, Some(sample(90.0, 0.0, 1)), 0, Evidence::Contradicts);
        check(&FULL, Some(sample(3000.0, 100.0, 0)), 0, Evidence::None);
        check(&FULL, None, 1, Evidence::None);
        // A power-limited miner hashes throughout: it is restored only once above its limit.
        let pt = CommandKind::SetPowerTarget { watts: 2000.0 };
        check(&pt, Some(sample(2000.0, 80.0, 1)), 0, Evidence::Contradicts);
        check(&pt, Some(sample(3000.0, 100.0, 1)), 0, Evidence::Holds);
    }

    #[test]
    fn efficiency_needs_a_hashing_miner() {
        assert_eq!(sample(3000.0, 100.0, 0).efficiency_j_per_th(), Some(30.0));
        assert_eq!(sample(90.0, 0.0, 0).efficiency_j_per_th(), None);
    }
}
