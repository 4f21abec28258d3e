//! The agent's CPU pressure, read off its own runtime (issue 12, item 7): how late a timer that
//! should fire every [`PROBE_EVERY`] actually fires.
//!
//! A miner that answers slowly leaves the runtime idle while its socket waits; an agent driving
//! more miners than its CPU can serve leaves every ready task, the probe's included, waiting in
//! the run queue. So lateness is the agent's own overload, never a miner's slowness, and it is
//! used twice:
//! - the in-flight limit ([`crate::limit`]) is cut when a tick finds the runtime overloaded, and
//!   grows again while none does;
//! - a call that timed out or lost its connection while the runtime ran late enough for the
//!   waits to eat a good part of its deadline is the agent's fault ([`Pressure::blames_agent`]):
//!   back-pressure, never a miner's outcome or a spent attempt (the architecture invariant of
//!   [`crate::budget`]).
//!
//! Lateness is also what the whole machine's load does to the agent (PostgreSQL beside it, a
//! compile): the limit then falls to its floor, which costs throughput, never a miner's attempt.
//!
//! One pressure per process (CPU is the process's), probed by one task on whatever runtime used
//! it last: the probe ends with its runtime and the next budget to acquire starts another.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// How often the probe asks to be woken.
pub const PROBE_EVERY: Duration = Duration::from_millis(50);

/// Lateness at which a tick counts as overloaded: miners in flight wait this long for the CPU
/// at each step of a call (connect, write, each read), far more than the work of a step, and
/// eight such waits come near a 10 s read deadline. Below it, more in flight costs latency but
/// not throughput; and the load of other processes on the machine rarely reaches it.
pub const OVERLOADED: Duration = Duration::from_millis(500);

/// The waits for the CPU one miner call takes: connect, write, reads, close.
pub const WAITS_PER_CALL: u32 = 8;

/// The lateness of a process's runtime.
#[derive(Debug, Default)]
pub struct Pressure {
    /// Lateness summed over every tick, microseconds.
    lag_total_us: AtomicU64,
    /// Ticks so far.
    ticks: AtomicU64,
    /// The latest tick's lateness, microseconds.
    lag_last_us: AtomicU64,
    /// Ticks that found the runtime overloaded.
    overloads: AtomicU64,
    /// Whether a probe task is running.
    probing: AtomicBool,
}

/// The pressure summed up to some moment, to tell how late the runtime ran while a call ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    lag_total_us: u64,
    ticks: u64,
}

impl Pressure {
    pub const fn new() -> Self {
        Self {
            lag_total_us: AtomicU64::new(0),
            ticks: AtomicU64::new(0),
            lag_last_us: AtomicU64::new(0),
            overloads: AtomicU64::new(0),
            probing: AtomicBool::new(false),
        }
    }

    /// Records one tick's lateness.
    pub fn record(&self, lag: Duration) {
        let us = u64::try_from(lag.as_micros()).unwrap_or(u64::MAX);
        self.lag_total_us.fetch_add(us, Ordering::Relaxed);
        self.ticks.fetch_add(1, Ordering::Relaxed);
        self.lag_last_us.store(us, Ordering::Relaxed);
        if lag >= OVERLOADED {
            self.overloads.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The lateness summed so far.
    pub fn mark(&self) -> Mark {
        Mark {
            lag_total_us: self.lag_total_us.load(Ordering::Relaxed),
            ticks: self.ticks.load(Ordering::Relaxed),
        }
    }

    /// How many ticks found the runtime overloaded so far.
    pub fn overloads(&self) -> u64 {
        self.overloads.load(Ordering::Relaxed)
    }

    /// The latest tick's lateness.
    pub fn last(&self) -> Duration {
        Duration::from_micros(self.lag_last_us.load(Ordering::Relaxed))
    }

    /// How late the runtime ran on average since `since` (the latest tick's lateness when no
    /// tick ended since).
    pub fn lateness_since(&self, since: Mark) -> Duration {
        let now = self.mark();
        match now.ticks.saturating_sub(since.ticks) {
            0 => self.last(),
            ticks => {
                Duration::from_micros(now.lag_total_us.saturating_sub(since.lag_total_us) / ticks)
            }
        }
    }

    /// Whether a call under `deadline` that began at `since` and failed for want of an answer
    /// (a timeout, a connection refused or reset: an overloaded listener drops connections too)
    /// lost it to this process's own overload: the runtime ran overloaded, and its waits
    /// ([`WAITS_PER_CALL`] of them) came to a quarter of the deadline or more.
    pub fn blames_agent(&self, since: Mark, deadline: Duration) -> bool {
        let late = self.lateness_since(since);
        late >= OVERLOADED && late * WAITS_PER_CALL >= deadline / 4
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

    const DEADLINE: Duration = Duration::from_secs(10);

    #[test]
    fn a_runtime_on_time_never_blames_the_agent_a_late_one_does() {
        let p = Pressure::new();
        let mark = p.mark();
        for _ in 0..100 {
            p.record(Duration::from_millis(2));
        }
        p.record(Duration::from_millis(600));
        assert_eq!(p.overloads(), 1, "only the 600 ms tick was overloaded");
        assert!(
            !p.blames_agent(mark, DEADLINE),
            "8 ms late on average while the call ran: the miner was slow"
        );
        // A call that began since runs 520 ms late at every step: 4.2 s of its 10 s.
        let late = p.mark();
        for _ in 0..10 {
            p.record(Duration::from_millis(520));
        }
        assert!(p.blames_agent(late, DEADLINE));
        // The same lateness is not enough to blame the agent for a 60 s control call.
        assert!(!p.blames_agent(late, DEADLINE * 6));
        // A call that failed before any tick ended is judged on the latest tick.
        assert!(p.blames_agent(p.mark(), DEADLINE));
        p.record(Duration::from_millis(1));
        assert!(!p.blames_agent(p.mark(), DEADLINE));
    }

    #[tokio::test(start_paused = true)]
    async fn the_probe_reads_an_idle_runtime_as_on_time() {
        static P: Pressure = Pressure::new();
        P.ensure_probe();
        P.ensure_probe();
        let since = P.mark();
        tokio::time::sleep(PROBE_EVERY * 20).await;
        assert_eq!(P.overloads(), 0);
        assert!(P.mark().ticks >= 19, "the probe ticks");
        assert!(
            P.lateness_since(since) < Duration::from_millis(5),
            "an idle runtime is on time"
        );
        assert!(P.probing.load(Ordering::Acquire));
    }

    #[test]
    fn a_blocked_runtime_is_overloaded_and_its_probe_ends_with_it() {
        static P: Pressure = Pressure::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            P.ensure_probe();
            tokio::task::yield_now().await;
            // Hogs the only thread: the probe's tick comes a long way late.
            std::thread::sleep(Duration::from_millis(700));
            tokio::time::sleep(PROBE_EVERY * 2).await;
        });
        assert!(P.overloads() >= 1, "a 700 ms stall is an overload");
        drop(rt);
        assert!(
            !P.probing.load(Ordering::Acquire),
            "the probe ends with its runtime"
        );
    }
}
