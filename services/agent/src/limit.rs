//! How many miners an agent drives at once (issue 12, item 7), decided without I/O: additive
//! increase while the runtime keeps up, a cut by half when it falls behind ([`crate::pressure`]).
//!
//! Slow firmware does not lower the limit: a miner that takes 3 s to answer leaves the CPU idle,
//! the runtime stays on time, and the limit grows to the descriptor budget, so 100,000 slow
//! miners are driven thousands at a time. An agent whose CPU is saturated (a small site box, or
//! ten agents and a simulator on two cores) cuts it until its tasks no longer wait for the CPU,
//! so no call's deadline is spent in the run queue.
//!
//! Like TCP's congestion window: slow start (one more per miner done) up to the first cut, then
//! one more per limit's worth of miners done. A cut waits until the previous one has taken
//! effect (no more miners in flight than the limit) and at least [`COOLDOWN`], so one overload
//! does not collapse the limit while the miners already in flight drain.

use tokio::time::{Duration, Instant};

/// The share of the limit kept by a cut.
pub const CUT: f64 = 0.5;

/// The least time between two cuts.
pub const COOLDOWN: Duration = Duration::from_millis(500);

/// What the runtime's pressure says when a miner's slot comes back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signal {
    /// Overloaded ticks so far ([`crate::pressure::Pressure::overloads`]).
    pub overloads: u64,
    /// Whether the latest tick was overloaded.
    pub behind: bool,
}

/// The in-flight limit of one agent.
#[derive(Clone, Debug, PartialEq)]
pub struct Aimd {
    limit: f64,
    min: f64,
    max: f64,
    /// Slow start below this, congestion avoidance above.
    threshold: f64,
    /// The overload count at the last release.
    seen: u64,
    last_cut: Option<Instant>,
}

impl Aimd {
    /// A limit starting at `initial`, kept within `min..=max` (`min` of at least 1, and
    /// `min ≤ initial ≤ max` enforced), with `overloads` already counted.
    pub fn new(min: usize, initial: usize, max: usize, overloads: u64) -> Self {
        let max = max.max(1) as f64;
        let min = (min.max(1) as f64).min(max);
        Self {
            limit: (initial as f64).clamp(min, max),
            min,
            max,
            threshold: max,
            seen: overloads,
            last_cut: None,
        }
    }

    /// The limit now, in whole miners.
    pub fn limit(&self) -> usize {
        self.limit as usize
    }

    /// One miner's slot came back at `now`. `settled` says whether the last cut has taken
    /// effect (no more miners in flight than the limit). Returns the new limit.
    pub fn on_release(&mut self, signal: Signal, settled: bool, now: Instant) -> usize {
        let overloaded = signal.overloads != self.seen || signal.behind;
        self.seen = signal.overloads;
        if overloaded {
            let cooled = self
                .last_cut
                .is_none_or(|at| now.duration_since(at) >= COOLDOWN);
            if settled && cooled {
                self.limit = (self.limit * CUT).max(self.min);
                self.threshold = self.limit;
                self.last_cut = Some(now);
            }
            // A miner done while the runtime is behind never grows the limit.
        } else if self.limit < self.threshold {
            self.limit += 1.0;
        } else {
            self.limit += 1.0 / self.limit;
        }
        self.limit = self.limit.clamp(self.min, self.max);
        self.limit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn calm(overloads: u64) -> Signal {
        Signal {
            overloads,
            behind: false,
        }
    }

    fn overloaded(n: u64) -> Signal {
        Signal {
            overloads: n,
            behind: true,
        }
    }

    #[test]
    fn slow_start_doubles_per_window_until_the_descriptor_budget() {
        let t = Instant::now();
        let mut a = Aimd::new(16, 256, 4_744, 0);
        // 256 miners done while on time: 512.
        for _ in 0..256 {
            a.on_release(calm(0), true, t);
        }
        assert_eq!(a.limit(), 512);
        for _ in 0..10_000 {
            a.on_release(calm(0), true, t);
        }
        assert_eq!(a.limit(), 4_744, "never above the descriptor budget");
    }

    #[test]
    fn an_overload_halves_once_per_cooldown_and_only_when_settled() {
        let t0 = Instant::now();
        let mut a = Aimd::new(16, 4_000, 4_744, 0);
        assert_eq!(a.on_release(overloaded(1), true, t0), 2_000);
        // The same overload, seen again at once: no second cut.
        assert_eq!(a.on_release(overloaded(2), true, t0), 2_000);
        // After the cooldown, but with the first cut not yet in effect: none either.
        let t1 = t0 + COOLDOWN;
        assert_eq!(a.on_release(overloaded(3), false, t1), 2_000);
        // In effect and cooled: halved again.
        assert_eq!(a.on_release(overloaded(4), true, t1), 1_000);
        // Then additive: about 1,000 more miners done on time make one more.
        let t2 = t1 + Duration::from_secs(1);
        for _ in 0..1_001 {
            a.on_release(calm(4), true, t2);
        }
        assert_eq!(a.limit(), 1_001);
    }

    #[test]
    fn never_below_the_floor() {
        let mut t = Instant::now();
        let mut a = Aimd::new(16, 256, 4_744, 0);
        for n in 1..100 {
            t += COOLDOWN;
            a.on_release(overloaded(n), true, t);
        }
        assert_eq!(a.limit(), 16);
    }

    proptest! {
        #[test]
        fn the_limit_stays_within_its_bounds(
            min in 1usize..64, max in 1usize..10_000, initial in 0usize..20_000,
            steps in proptest::collection::vec((any::<bool>(), any::<bool>(), 0u64..2_000), 0..500),
        ) {
            let mut t = Instant::now();
            let mut a = Aimd::new(min, initial, max, 0);
            let mut overloads = 0;
            for (over, settled, ms) in steps {
                t += Duration::from_millis(ms);
                if over { overloads += 1; }
                let limit = a.on_release(Signal { overloads, behind: over }, settled, t);
                prop_assert!(limit >= min.min(max).max(1) && limit <= max.max(1));
            }
        }
    }
}
