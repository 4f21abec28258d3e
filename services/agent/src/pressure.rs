//! The agent's CPU pressure, read off its own runtime (issue 12, item 7): how late a timer that
//! should fire every [`PROBE_EVERY`] actually fires.
//!
//! A miner that answers slowly leaves the runtime idle while its socket waits; an agent driving
//! more miners than its CPU can serve leaves every ready task, the probe's included, waiting in
//! the run queue. So lateness is the agent's own overload, never a miner's slowness, and it is
//! used twice:
//! - the in-flight limit ([`crate::limit`]) is cut when a tick finds the runtime overloaded, and
//!   grows again while none does;
//! - a call that timed out or lost its connection while the runtime was behind by
//!   [`BLAME`] or more is the agent's fault ([`Pressure::blames_agent`]): back-pressure, never a
//!   miner's outcome or a spent attempt (the architecture invariant of [`crate::budget`]).
//!
//! One pressure per process (CPU is the process's), probed by one task on whatever runtime used
//! it last: the probe ends with its runtime and the next budget to acquire starts another.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// How often the probe asks to be woken.
pub const PROBE_EVERY: Duration = Duration::from_millis(50);

/// Lateness at which a tick counts as overloaded: miners in flight wait this long for the CPU
/// between two steps, far more than the work of a step.
pub const OVERLOADED: Duration = Duration::from_millis(100);

/// Lateness, summed while a call ran (or of the latest tick), at which a call's timeout or
/// transport failure is blamed on the agent: a second of a call's deadline was spent waiting
/// for the CPU, not for the miner.
pub const BLAME: Duration = Duration::from_secs(1);

/// The lateness of a process's runtime.
#[derive(Debug, Default)]
pub struct Pressure {
    /// Lateness summed over every tick, microseconds.
    lag_total_us: AtomicU64,
    /// The latest tick's lateness, microseconds.
    lag_last_us: AtomicU64,
    /// Ticks that found the runtime overloaded.
    overloads: AtomicU64,
    /// Whether a probe task is running.
    probing: AtomicBool,
}

/// The pressure summed up to some moment, to tell how much came while a call ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark(u64);

impl Pressure {
    pub const fn new() -> Self {
        Self {
            lag_total_us: AtomicU64::new(0),
            lag_last_us: AtomicU64::new(0),
            overloads: AtomicU64::new(0),
            probing: AtomicBool::new(false),
        }
    }

    /// Records one tick's lateness.
    pub fn record(&self, lag: Duration) {
        let us = u64::try_from(lag.as_micros()).unwrap_or(u64::MAX);
        self.lag_total_us.fetch_add(us, Ordering::Relaxed);
        self.lag_last_us.store(us, Ordering::Relaxed);
        if lag >= OVERLOADED {
            self.overloads.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The lateness summed so far.
    pub fn mark(&self) -> Mark {
        Mark(self.lag_total_us.load(Ordering::Relaxed))
    }

    /// How many ticks found the runtime overloaded so far.
    pub fn overloads(&self) -> u64 {
        self.overloads.load(Ordering::Relaxed)
    }

    /// The latest tick's lateness.
    pub fn last(&self) -> Duration {
        Duration::from_micros(self.lag_last_us.load(Ordering::Relaxed))
    }

    /// Whether a call that began at `since` and failed for want of an answer (a timeout, a
    /// connection refused or reset) lost it to this process's own overload.
    pub fn blames_agent(&self, since: Mark) -> bool {
        let during = self.mark().0.saturating_sub(since.0);
        Duration::from_micros(during) >= BLAME || self.last() >= BLAME
    }

    /// Starts the probe on the current runtime unless one runs; outside a runtime it does
    /// nothing (the next call from inside one starts it).
    pub fn ensure_probe(&'static self) {
        if self.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(probe(self));
            }
            Err(_) => self.probing.store(false, Ordering::Release),
        }
    }
}

/// This process's pressure.
pub fn global() -> &'static Pressure {
    static GLOBAL: Pressure = Pressure::new();
    &GLOBAL
}

/// Ticks forever, recording how late each tick is; ends with its runtime.
async fn probe(pressure: &'static Pressure) {
    /// Lets the next runtime start a probe once this one's runtime drops the task.
    struct Probing(&'static Pressure);
    impl Drop for Probing {
        fn drop(&mut self) {
            self.0.probing.store(false, Ordering::Release);
        }
    }
    let _probing = Probing(pressure);
    loop {
        let asked = tokio::time::Instant::now();
        tokio::time::sleep(PROBE_EVERY).await;
        let lag = asked.elapsed().saturating_sub(PROBE_EVERY);
        pressure.record(lag);
        crate::instruments::runtime_lag(lag);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_stall_is_not_the_agents_fault_a_long_one_is() {
        let p = Pressure::new();
        let mark = p.mark();
        p.record(Duration::from_millis(2));
        p.record(Duration::from_millis(150));
        assert_eq!(p.overloads(), 1, "only the 150 ms tick was overloaded");
        assert!(
            !p.blames_agent(mark),
            "152 ms behind during a call is the miner's slowness"
        );
        for _ in 0..6 {
            p.record(Duration::from_millis(150));
        }
        assert!(
            p.blames_agent(mark),
            "1.05 s behind during the call is the agent's"
        );
        // A call that began after the stall sees only what came since, unless the latest tick
        // alone was a second late.
        let later = p.mark();
        assert!(!p.blames_agent(later));
        p.record(Duration::from_millis(1_200));
        assert!(p.blames_agent(later));
    }

    #[tokio::test(start_paused = true)]
    async fn the_probe_reads_an_idle_runtime_as_on_time() {
        static P: Pressure = Pressure::new();
        P.ensure_probe();
        P.ensure_probe();
        tokio::time::sleep(PROBE_EVERY * 20).await;
        assert_eq!(P.overloads(), 0);
        assert!(P.mark().0 < 20_000, "an idle runtime is not behind");
        assert!(P.probing.load(Ordering::Acquire));
    }

    #[test]
    fn a_blocked_runtime_is_overloaded() {
        static P: Pressure = Pressure::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            P.ensure_probe();
            tokio::task::yield_now().await;
            // Hogs the only thread: the probe's tick comes a long way late.
            std::thread::sleep(Duration::from_millis(300));
            tokio::time::sleep(PROBE_EVERY * 2).await;
        });
        assert!(P.overloads() >= 1, "a 300 ms stall is an overload");
        drop(rt);
        assert!(
            !P.probing.load(Ordering::Acquire),
            "the probe ends with its runtime"
        );
    }
}
