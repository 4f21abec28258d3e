//! The simulation clock: real time by default, but tests and operators can pause and step it.
//!
//! All physics (ramps, reboots, a miner that wakes up by itself) reads this clock, never the
//! wall clock, so a paused clock freezes every miner exactly where it is. Network timeouts
//! (read deadlines, the "slow answer" fault) stay on real time: they protect the process, they
//! do not simulate hardware.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A point in simulated time: milliseconds since the simulator started.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct SimTime(pub u64);

impl SimTime {
    /// Milliseconds since the start of the simulation.
    pub fn as_millis(self) -> u64 {
        self.0
    }

    /// Seconds since the start of the simulation.
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1000.0
    }

    /// This time plus a duration.
    pub fn plus(self, d: Duration) -> SimTime {
        SimTime(
            self.0
                .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }
}

#[derive(Debug)]
struct ClockState {
    /// Real instant at which `anchor_sim` was true; only meaningful while running.
    anchor_real: Instant,
    /// Simulated time at `anchor_real`.
    anchor_sim: Duration,
    /// A paused clock reads `anchor_sim` until resumed or advanced.
    paused: bool,
}

/// The simulator's clock, shared by every miner. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SimClock {
    state: Arc<Mutex<ClockState>>,
    /// Unix time (ms) at simulated time zero; timestamps on the wire derive from it.
    epoch_unix_ms: i64,
}

impl SimClock {
    /// A clock that follows real time.
    pub fn running() -> SimClock {
        SimClock::new(false)
    }

    /// A clock that starts paused at zero and moves only when advanced.
    pub fn paused() -> SimClock {
        SimClock::new(true)
    }

    fn new(paused: bool) -> SimClock {
        let epoch_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        SimClock {
            state: Arc::new(Mutex::new(ClockState {
                anchor_real: Instant::now(),
                anchor_sim: Duration::ZERO,
                paused,
            })),
            epoch_unix_ms,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut ClockState) -> R) -> R {
        let mut guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut guard)
    }

    /// The current simulated time.
    pub fn now(&self) -> SimTime {
        let elapsed = self.with(|s| {
            if s.paused {
                s.anchor_sim
            } else {
                s.anchor_sim + s.anchor_real.elapsed()
            }
        });
        SimTime(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
    }

    /// Stops the clock where it is.
    pub fn pause(&self) {
        self.with(|s| {
            if !s.paused {
                s.anchor_sim += s.anchor_real.elapsed();
                s.paused = true;
            }
        });
    }

    /// Lets the clock follow real time again from where it stands.
    pub fn resume(&self) {
        self.with(|s| {
            if s.paused {
                s.anchor_real = Instant::now();
                s.paused = false;
            }
        });
    }

    /// Moves the clock forward, paused or not.
    pub fn advance(&self, by: Duration) {
        self.with(|s| s.anchor_sim += by);
    }

    /// Whether the clock is paused.
    pub fn is_paused(&self) -> bool {
        self.with(|s| s.paused)
    }

    /// Unix time in whole seconds for a simulated instant, for timestamps on the wire.
    pub fn unix_secs(&self, t: SimTime) -> i64 {
        (self.epoch_unix_ms + i64::try_from(t.0).unwrap_or(i64::MAX)) / 1000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paused_clock_moves_only_when_advanced() {
        let clock = SimClock::paused();
        assert_eq!(clock.now(), SimTime(0));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(clock.now(), SimTime(0));
        clock.advance(Duration::from_secs(3));
        assert_eq!(clock.now(), SimTime(3000));
    }

    #[test]
    fn pause_then_resume_keeps_time_continuous() {
        let clock = SimClock::running();
        clock.advance(Duration::from_secs(10));
        clock.pause();
        let at_pause = clock.now();
        assert!(at_pause >= SimTime(10_000));
        clock.resume();
        assert!(clock.now() >= at_pause);
        assert!(!clock.is_paused());
    }
}
