//! What each chaos trial kills, when, and for how long: a pure function of the seed, so a
//! failing trial can be run again exactly (`ebb chaos --seed S --trials K`).

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A process the harness may kill.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Victim {
    /// The reconciler holding the leader lock at the moment of the kill.
    ReconcilerLeader,
    /// The other reconciler, waiting for the lock.
    ReconcilerStandby,
    Agent,
    Planner,
    Gateway,
    Worker,
    NatsServer,
    Postgres,
}

impl Victim {
    pub const ALL: [Victim; 8] = [
        Victim::ReconcilerLeader,
        Victim::ReconcilerStandby,
        Victim::Agent,
        Victim::Planner,
        Victim::Gateway,
        Victim::Worker,
        Victim::NatsServer,
        Victim::Postgres,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Victim::ReconcilerLeader => "reconciler-leader",
            Victim::ReconcilerStandby => "reconciler-standby",
            Victim::Agent => "agent",
            Victim::Planner => "planner",
            Victim::Gateway => "gateway",
            Victim::Worker => "worker",
            Victim::NatsServer => "nats-server",
            Victim::Postgres => "postgres",
        }
    }
}

impl fmt::Display for Victim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Victim {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Victim::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Victim::ALL.iter().map(|v| v.as_str()).collect();
                format!("unknown victim {s:?}: one of {}", names.join(", "))
            })
    }
}

/// The part of an event's life a kill lands in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// After the Start's answer, while miners are being curtailed.
    Curtail,
    /// After the stop's answer, while miners are being restored.
    Restore,
}

/// One trial's kill.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Kill {
    pub victim: Victim,
    pub phase: Phase,
    /// From the phase's start (the Start's or the stop's answer) to the SIGKILL.
    #[serde(rename = "delay_ms", serialize_with = "millis")]
    pub delay: Duration,
    /// From the SIGKILL to the restart.
    #[serde(rename = "down_ms", serialize_with = "millis")]
    pub down: Duration,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The kills of `trials` trials from `seed`: every victim of `victims` in turn (in a seeded
/// order, so a short run still covers each once before any twice), each in a seeded phase, at a
/// seeded delay up to `max_delay` and down for 0.5 to 3 s.
pub fn plan(seed: u64, trials: usize, victims: &[Victim], max_delay: Duration) -> Vec<Kill> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut order = victims.to_vec();
    order.shuffle(&mut rng);
    let max_delay_ms = u64::try_from(max_delay.as_millis()).unwrap_or(u64::MAX);
    (0..trials)
        .filter_map(|i| {
            let victim = *order.get(i % order.len().max(1))?;
            let phase = if rng.random_bool(0.5) {
                Phase::Curtail
            } else {
                Phase::Restore
            };
            Some(Kill {
                victim,
                phase,
                delay: Duration::from_millis(rng.random_range(0..=max_delay_ms)),
                down: Duration::from_millis(rng.random_range(500..=3_000)),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_plan_and_covers_every_victim_first() {
        let max = Duration::from_secs(3);
        let a = plan(7, 20, &Victim::ALL, max);
        assert_eq!(a, plan(7, 20, &Victim::ALL, max));
        assert_ne!(a, plan(8, 20, &Victim::ALL, max));
        assert_eq!(a.len(), 20);
        let first: std::collections::HashSet<Victim> = a[..8].iter().map(|k| k.victim).collect();
        assert_eq!(first.len(), 8, "each victim once before any twice");
        assert!(a.iter().all(|k| k.delay <= max
            && (Duration::from_millis(500)..=Duration::from_secs(3)).contains(&k.down)));
        assert!(a.iter().any(|k| k.phase == Phase::Curtail));
        assert!(a.iter().any(|k| k.phase == Phase::Restore));
        assert!(plan(1, 3, &[], max).is_empty());
    }

    #[test]
    fn victims_parse_by_name() {
        for v in Victim::ALL {
            assert_eq!(v.as_str().parse::<Victim>(), Ok(v));
        }
        let err = "reconciler".parse::<Victim>().unwrap_err();
        assert!(err.contains("reconciler-leader"), "{err}");
    }
}
