//! Injectable faults: the ways real miners misbehave, per miner or for a share of the fleet.
//!
//! Faults are stored off the hot path (a miner without faults carries one empty pointer) and
//! apply at three levels: the connection (refuse, gone), the reply (slow, no answer, stall
//! half-way) and the state machine (acknowledge and do nothing, refuse to wake, wake up by
//! itself, bad or stale telemetry).

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::clock::SimTime;

/// A way a miner can misbehave.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// Accepts the connection and reads the request, then never replies (nor acts on it).
    NoAnswer,
    /// Resets every connection as soon as it is accepted.
    Refuse,
    /// Replies only after a delay (real time).
    Slow {
        /// Delay before each reply, in milliseconds (at most 600,000).
        delay_ms: u64,
    },
    /// Answers every command with success and does nothing.
    AckNoop,
    /// After being put to sleep, wakes up by itself this many simulated seconds later.
    SelfWake {
        /// Seconds asleep before waking up unasked.
        after_s: f64,
    },
    /// While asleep, power drops but the reported (and true) hashrate stays above zero.
    PowerDropHashStays {
        /// Hashrate kept while asleep, in percent of nominal.
        #[serde(default = "default_residual_pct")]
        residual_pct: f64,
    },
    /// Reports power as NaN (`nan` on the wire, as C firmware prints it).
    NanPower,
    /// Reports an implausible power value.
    GarbagePower {
        /// The value reported, in watts.
        watts: f64,
    },
    /// Keeps reporting the telemetry sample taken when the fault was injected.
    StaleTelemetry,
    /// Rejects every command that would wake it up (with an error status).
    RefuseWake,
    /// Writes part of each reply, then hangs.
    StallMidReply,
    /// Gone for good: stops accepting connections (the listeners close in per-address mode;
    /// in shared mode connections are reset).
    Gone,
}

fn default_residual_pct() -> f64 {
    10.0
}

impl Fault {
    /// A short name for the fault, as used in the JSON `kind` tag.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::NoAnswer => "no_answer",
            Fault::Refuse => "refuse",
            Fault::Slow { .. } => "slow",
            Fault::AckNoop => "ack_noop",
            Fault::SelfWake { .. } => "self_wake",
            Fault::PowerDropHashStays { .. } => "power_drop_hash_stays",
            Fault::NanPower => "nan_power",
            Fault::GarbagePower { .. } => "garbage_power",
            Fault::StaleTelemetry => "stale_telemetry",
            Fault::RefuseWake => "refuse_wake",
            Fault::StallMidReply => "stall_mid_reply",
            Fault::Gone => "gone",
        }
    }

    /// Checks the fault's parameters.
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            Fault::Slow { delay_ms } if delay_ms > 600_000 => Err(format!(
                "slow delay_ms must be at most 600000, got {delay_ms}"
            )),
            Fault::SelfWake { after_s } if !after_s.is_finite() || after_s < 0.0 => Err(format!(
                "self_wake after_s must be a non-negative number, got {after_s}"
            )),
            Fault::PowerDropHashStays { residual_pct }
                if !residual_pct.is_finite() || !(0.0..=100.0).contains(&residual_pct) =>
            {
                Err(format!(
                    "residual_pct must be between 0 and 100, got {residual_pct}"
                ))
            }
            Fault::GarbagePower { watts } if !watts.is_finite() => Err(
                "garbage_power watts must be a finite number (use nan_power for NaN)".to_owned(),
            ),
            _ => Ok(()),
        }
    }
}

/// The faults active on one miner.
#[derive(Clone, Debug, Default)]
pub struct FaultSet {
    /// Active faults, at most one of each kind.
    faults: Vec<Fault>,
    /// When stale telemetry began: reports are computed as of this time.
    stale_at: SimTime,
}

impl FaultSet {
    /// Adds a fault, replacing one of the same kind.
    pub fn insert(&mut self, fault: Fault, now: SimTime) {
        if matches!(fault, Fault::StaleTelemetry)
            && !self.has(|f| matches!(f, Fault::StaleTelemetry))
        {
            self.stale_at = now;
        }
        self.faults.retain(|f| f.kind() != fault.kind());
        self.faults.push(fault);
    }

    /// The active faults.
    pub fn faults(&self) -> &[Fault] {
        &self.faults
    }

    /// Whether any active fault matches.
    pub fn has(&self, pred: impl Fn(&Fault) -> bool) -> bool {
        self.faults.iter().any(pred)
    }

    /// The time telemetry froze at, when stale.
    pub fn stale_at(&self) -> Option<SimTime> {
        self.has(|f| matches!(f, Fault::StaleTelemetry))
            .then_some(self.stale_at)
    }

    /// The reply delay, if slow.
    pub fn delay_ms(&self) -> Option<u64> {
        self.faults.iter().find_map(|f| match f {
            Fault::Slow { delay_ms } => Some(*delay_ms),
            _ => None,
        })
    }
}

/// Which miners a fault operation applies to.
///
/// Explicit addresses win; otherwise the candidates are every miner (or one site's), of which
/// `share` picks a random fraction (deterministic for a given `seed`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSelector {
    /// One miner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
    /// Several miners.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<Ipv4Addr>,
    /// Restrict to one site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// A fraction (0..=1) of the candidates, chosen at random.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<f64>,
    /// Seed for the random choice (default: the fleet seed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

impl FaultSelector {
    /// Every miner.
    pub fn all() -> FaultSelector {
        FaultSelector::default()
    }

    /// One miner.
    pub fn address(address: Ipv4Addr) -> FaultSelector {
        FaultSelector {
            address: Some(address),
            ..FaultSelector::default()
        }
    }

    /// These miners.
    pub fn addresses(addresses: impl IntoIterator<Item = Ipv4Addr>) -> FaultSelector {
        FaultSelector {
            addresses: addresses.into_iter().collect(),
            ..FaultSelector::default()
        }
    }

    /// A random fraction of the fleet.
    pub fn share(fraction: f64) -> FaultSelector {
        FaultSelector {
            share: Some(fraction),
            ..FaultSelector::default()
        }
    }

    /// Restricts to one site.
    pub fn in_site(mut self, site: impl Into<String>) -> FaultSelector {
        self.site = Some(site.into());
        self
    }

    /// Fixes the random choice.
    pub fn with_seed(mut self, seed: u64) -> FaultSelector {
        self.seed = Some(seed);
        self
    }

    /// Whether this names miners explicitly.
    pub fn is_explicit(&self) -> bool {
        self.address.is_some() || !self.addresses.is_empty()
    }

    /// Checks the selector's parameters.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(share) = self.share
            && (!share.is_finite() || !(0.0..=1.0).contains(&share))
        {
            return Err(format!("share must be between 0 and 1, got {share}"));
        }
        if self.is_explicit() && (self.share.is_some() || self.site.is_some()) {
            return Err("give either addresses or a site/share, not both".to_owned());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_from_tagged_json() {
        let f: Fault = serde_json::from_str(r#"{"kind":"slow","delay_ms":2500}"#).unwrap();
        assert_eq!(f, Fault::Slow { delay_ms: 2500 });
        let f: Fault = serde_json::from_str(r#"{"kind":"power_drop_hash_stays"}"#).unwrap();
        assert_eq!(f, Fault::PowerDropHashStays { residual_pct: 10.0 });
        assert!(serde_json::from_str::<Fault>(r#"{"kind":"melt"}"#).is_err());
    }

    #[test]
    fn a_fault_of_the_same_kind_replaces_the_old_one() {
        let mut set = FaultSet::default();
        set.insert(Fault::Slow { delay_ms: 1 }, SimTime(0));
        set.insert(Fault::Slow { delay_ms: 2 }, SimTime(0));
        set.insert(Fault::StaleTelemetry, SimTime(5));
        set.insert(Fault::StaleTelemetry, SimTime(9));
        assert_eq!(set.faults().len(), 2);
        assert_eq!(set.delay_ms(), Some(2));
        assert_eq!(set.stale_at(), Some(SimTime(5)));
    }

    #[test]
    fn selectors_reject_contradictions() {
        assert!(FaultSelector::share(1.5).validate().is_err());
        let mut s = FaultSelector::address(Ipv4Addr::LOCALHOST);
        s.share = Some(0.5);
        assert!(s.validate().is_err());
        assert!(FaultSelector::share(0.2).in_site("a").validate().is_ok());
    }
}
