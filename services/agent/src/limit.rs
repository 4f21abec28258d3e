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
//! one more per limit's worth of miners done, and only while the limit is what holds miners
//! back (a limit nothing fills says nothing about the CPU). A cut waits until the previous one
//! has taken effect (no more miners in flight than the limit) and at least [`COOLDOWN`], so one
//! overload does not collapse the limit while the miners already in flight drain.
//!
//! Two things count as congestion: a late runtime tick, and, like a lost packet, a share of
//! [`LOSS_SHARE`] or more of a window's miners timing out or losing their connection while the
//! runtime is busy ([`BUSY`] late). A busy agent's own listener queues and run queue drop
//! connections before its timer runs very late; dead miners on an idle agent cut nothing.

use tokio::time::{Duration, Instant};

/// The share of the limit kept by a cut.
pub const CUT: f64 = 0.5;

/// The least time between two cuts.
pub const COOLDOWN: Duration = Duration::from_millis(500);

/// The share of a window's miners that, lost (timed out, connection refused or reset) while
/// the runtime is busy, counts as congestion.
pub const LOSS_SHARE: f64 = 0.05;

/// The fewest miners done before a window's losses are judged.
pub const LOSS_WINDOW: u32 = 64;

/// Lateness at which the runtime counts as busy: losses then may be the agent's own doing.
pub const BUSY: Duration = Duration::from_millis(50);

/// What the runtime's pressure says when a miner's slot comes back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signal {
    /// Overloaded ticks so far ([`crate::pressure::Pressure::overloads`]).
    pub overloads: u64,
    /// Whether the latest tick was overloaded.
    pub behind: bool,
    /// Whether the latest tick was at least [`BUSY`] late.
    pub busy: bool,
}

/// One miner's slot coming back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Release {
    pub signal: Signal,
    /// The miner timed out or lost its connection.
    pub lost: bool,
    /// The last cut has taken effect: no more miners in flight than the limit.
    pub settled: bool,
    /// Every slot of the limit was in use: the limit is what held miners back.
    pub saturated: bool,
    pub now: Instant,
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
    /// Miners done, and of them lost, in the current loss window.
    done: u32,
    lost: u32,
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
            done: 0,
            lost: 0,
        }
    }

    /// The limit now, in whole miners.
    pub fn limit(&self) -> usize {
        self.limit as usize
    }

    /// One miner's slot came back. Returns the new limit.
    pub fn on_release(&mut self, r: Release) -> usize {
        let signal = r.signal;
        let overloaded = signal.overloads != self.seen || signal.behind;
        self.seen = signal.overloads;
        self.done += 1;
        self.lost += u32::from(r.lost);
        let judged = self.done >= LOSS_WINDOW.max(self.limit as u32);
        let lossy = self.done >= LOSS_WINDOW
            && f64::from(self.lost) >= LOSS_SHARE * f64::from(self.done)
            && signal.busy;
        if judged || lossy {
            self.done = 0;
            self.lost = 0;
        }
        if overloaded || lossy {
            let cooled = self
                .last_cut
                .is_none_or(|at| r.now.duration_since(at) >= COOLDOWN);
            if r.settled && cooled {
                self.limit = (self.limit * CUT).max(self.min);
                self.threshold = self.limit;
                self.last_cut = Some(r.now);
            }
            // A miner done while the runtime is behind never grows the limit.
        } else if r.lost || !r.saturated {
            // A lost miner, or a limit nothing fills, says nothing for a bigger one.
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

    /// A miner done on time, with every slot in use.
    fn ok(overloads: u64, now: Instant) -> Release {
        Release {
            signal: Signal {
                overloads,
                behind: false,
                busy: false,
            },
            lost: false,
            settled: true,
            saturated: true,
            now,
        }
    }

    fn overloaded(overloads: u64, settled: bool, now: Instant) -> Release {
        Release {
            signal: Signal {
                overloads,
                behind: true,
                busy: true,
            },
            settled,
            ..ok(overloads, now)
        }
    }

    #[test]
    fn slow_start_doubles_per_window_until_the_descriptor_budget() {
        let t = Instant::now();
        let mut a = Aimd::new(16, 256, 4_744, 0);
        // 256 miners done while on time: 512.
        for _ in 0..256 {
            a.on_release(ok(0, t));
        }
        assert_eq!(a.limit(), 512);
        for _ in 0..10_000 {
            a.on_release(ok(0, t));
        }
        assert_eq!(a.limit(), 4_744, "never above the descriptor budget");
    }

    #[test]
    fn a_limit_nothing_fills_does_not_grow() {
        let t = Instant::now();
        let mut a = Aimd::new(16, 256, 4_744, 0);
        for _ in 0..1_000 {
            a.on_release(Release {
                saturated: false,
                ..ok(0, t)
            });
        }
        assert_eq!(a.limit(), 256);
    }

    #[test]
    fn an_overload_halves_once_per_cooldown_and_only_when_settled() {
        let t0 = Instant::now();
        let mut a = Aimd::new(16, 4_000, 4_744, 0);
        assert_eq!(a.on_release(overloaded(1, true, t0)), 2_000);
        // The same overload, seen again at once: no second cut.
        assert_eq!(a.on_release(overloaded(2, true, t0)), 2_000);
        // After the cooldown, but with the first cut not yet in effect: none either.
        let t1 = t0 + COOLDOWN;
        assert_eq!(a.on_release(overloaded(3, false, t1)), 2_000);
        // In effect and cooled: halved again.
        assert_eq!(a.on_release(overloaded(4, true, t1)), 1_000);
        // Then additive: about 1,000 more miners done on time make one more.
        let t2 = t1 + Duration::from_secs(1);
        for _ in 0..1_001 {
            a.on_release(ok(4, t2));
        }
        assert_eq!(a.limit(), 1_001);
    }

    #[test]
    fn losses_on_a_busy_runtime_cut_and_on_an_idle_one_do_not() {
        let t = Instant::now();
        let lost = |busy: bool, i: u32| Release {
            signal: Signal {
                overloads: 0,
                behind: false,
                busy,
            },
            lost: i.is_multiple_of(10),
            ..ok(0, t)
        };
        // One miner in ten dead, the runtime idle: the limit does not fall (nor grow on the
        // dead ones).
        let mut idle = Aimd::new(16, 1_000, 4_744, 0);
        for i in 0..1_000 {
            idle.on_release(lost(false, i));
        }
        assert!(idle.limit() >= 1_000, "{}", idle.limit());
        // The same losses while the runtime is busy: congestion, halved (from 1,057: slow
        // start grew it on the 57 miners that answered).
        let mut busy = Aimd::new(16, 1_000, 4_744, 0);
        for i in 0..LOSS_WINDOW {
            busy.on_release(lost(true, i));
        }
        assert_eq!(busy.limit(), 528);
    }

    #[test]
    fn never_below_the_floor() {
        let mut t = Instant::now();
        let mut a = Aimd::new(16, 256, 4_744, 0);
        for n in 1..100 {
            t += COOLDOWN;
            a.on_release(overloaded(n, true, t));
        }
        assert_eq!(a.limit(), 16);
    }

    proptest! {
        #[test]
        fn the_limit_stays_within_its_bounds(
            min in 1usize..64, max in 1usize..10_000, initial in 0usize..20_000,
            steps in proptest::collection::vec(
                (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>(), 0u64..2_000),
                0..500,
            ),
        ) {
            let mut t = Instant::now();
            let mut a = Aimd::new(min, initial, max, 0);
            let mut overloads = 0;
            for (over, lost, settled, saturated, ms) in steps {
                t += Duration::from_millis(ms);
                if over { overloads += 1; }
                let signal = Signal { overloads, behind: over, busy: over || lost };
                let limit = a.on_release(Release { signal, lost, settled, saturated, now: t });
                prop_assert!(limit >= min.min(max).max(1) && limit <= max.max(1));
            }
        }
    }
}
