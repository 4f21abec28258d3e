//! The agent's own limits (issue 12, items 3 and 7): how many miners it may talk to at once,
//! at most what the process's file-descriptor limit allows and, within that, as many as its CPU
//! keeps up with ([`crate::limit`], [`crate::pressure`]); and how it tells its own exhaustion
//! from a miner's failure.
//!
//! Architecture invariant: the agent's own limits are never a miner's fault. Running short of
//! file descriptors, socket buffers or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM), or waiting too
//! long for a slot, is back-pressure: the device waits or is deferred (no outcome, no sample, no
//! cached handle), never reported `unreachable`, `refused` or `unsupported`, so it never costs
//! a retry attempt at the reconciler.

use crate::limit::{self, Aimd, Release, Signal};
use crate::pressure::{self, Pressure};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Where an adaptive limit starts: fast enough for instant firmware on a small box, and slow
/// start reaches the descriptor budget within seconds when miners are slow.
pub const INITIAL_IN_FLIGHT: usize = 256;

/// The least an adaptive limit goes to: an overloaded agent still makes progress.
pub const MIN_IN_FLIGHT: usize = 16;

/// File descriptors one miner in flight may hold at once: asic-rs identifies with three probes
/// at the same time (RPC `version`, RPC `devdetails`, HTTP `GET /`) and reads stock Antminers
/// with up to three commands at once; one more for a connection closing behind them.
pub const FDS_PER_MINER: u64 = 4;

/// Descriptors kept for everything that is not a miner: the NATS connection, the runtime, logs,
/// the metrics listener, a scan's sockets. At least 32, an eighth of the limit, at most 1,024.
pub fn reserve(limit: u64) -> u64 {
    (limit / 8).clamp(32, 1_024)
}

/// How many miners the agent may drive at once: at most `max_in_flight` and at most what the
/// descriptors left after the reserve allow, but never zero (one slot still makes progress).
pub fn slots(fd_limit: u64, max_in_flight: usize) -> usize {
    let usable = fd_limit.saturating_sub(reserve(fd_limit)) / FDS_PER_MINER;
    usize::try_from(usable)
        .unwrap_or(usize::MAX)
        .clamp(1, max_in_flight.max(1))
}

/// The soft `RLIMIT_NOFILE` of this process, or a conservative 1,024 when it cannot be read.
pub fn fd_limit() -> u64 {
    match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok((soft, _hard)) => soft,
        Err(error) => {
            tracing::warn!(%error, "cannot read the file-descriptor limit, assuming 1024");
            1_024
        }
    }
}

/// The descriptors of this process, shared by every agent in it: `ebb dev` and the benchmarks
/// run one agent per site in one process, and a descriptor limit is the process's, not an
/// agent's. Sized once, from the limit, on first use.
fn process_slots() -> Arc<Semaphore> {
    static SLOTS: std::sync::OnceLock<Arc<Semaphore>> = std::sync::OnceLock::new();
    SLOTS
        .get_or_init(|| Arc::new(Semaphore::new(slots(fd_limit(), usize::MAX >> 4))))
        .clone()
}

/// The in-flight budget shared by every miner call of one agent (polls and command batches
/// alike, which run at the same time), within the budget of its process.
#[derive(Clone, Debug)]
pub struct Budget {
    /// One permit per miner in flight.
    slots: Arc<Semaphore>,
    /// The process's descriptors, shared with the other agents in it (`None`: a test budget).
    process: Option<Arc<Semaphore>>,
    /// The number of permits, for logs and tests.
    size: usize,
    /// The longest a device waits for a slot (or retries its own exhaustion) before it is
    /// deferred.
    wait: Duration,
    /// The limit within `size` that follows the runtime's pressure (`None`: always `size`).
    adaptive: Option<Arc<Adaptive>>,
}

/// An in-flight limit that follows the CPU: the permits of `slots` are the limit, added when it
/// grows and forgotten (at once when free, else as they come back) when it is cut.
#[derive(Debug)]
struct Adaptive {
    pressure: &'static Pressure,
    state: Mutex<Limit>,
}

#[derive(Debug)]
struct Limit {
    aimd: Aimd,
    /// The limit the semaphore's permits stand for now.
    granted: usize,
    /// Permits still to be forgotten as miners in flight come back, after a cut.
    debt: usize,
}

impl Adaptive {
    /// A slot came back (`lost`: its miner timed out or lost its connection): forget its
    /// permit if a cut is still owed, then let the limit move.
    fn release(&self, permit: OwnedSemaphorePermit, slots: &Semaphore, lost: bool) {
        let mut limit = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let saturated = slots.available_permits() == 0;
        if limit.debt > 0 {
            limit.debt -= 1;
            permit.forget();
        } else {
            drop(permit);
        }
        let last = self.pressure.last();
        let signal = Signal {
            overloads: self.pressure.overloads(),
            behind: last >= pressure::OVERLOADED,
            busy: last >= limit::BUSY,
        };
        let settled = limit.debt == 0;
        let target = limit.aimd.on_release(Release {
            signal,
            lost,
            settled,
            saturated,
            now: tokio::time::Instant::now(),
        });
        let granted = limit.granted;
        if target > granted {
            let grow = target - granted;
            let paid = grow.min(limit.debt);
            limit.debt -= paid;
            slots.add_permits(grow - paid);
        } else if target < granted {
            let cut = granted - target;
            let forgotten = slots.forget_permits(cut);
            limit.debt += cut - forgotten;
            tracing::debug!(
                from = granted,
                to = target,
                lag_ms = self.pressure.last().as_millis() as u64,
                "the runtime is late or miners are lost: fewer miners in flight"
            );
        }
        limit.granted = target;
        crate::instruments::in_flight_limit(target as f64 - granted as f64);
    }
}

impl Drop for Adaptive {
    fn drop(&mut self) {
        let granted = self
            .state
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .granted;
        crate::instruments::in_flight_limit(-(granted as f64));
    }
}

/// Why the agent could not serve a device just now: its own shortage, never the miner's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the agent is short of its own resources: {0}")]
pub struct Starved(pub String);

impl Budget {
    /// A budget of `slots` miners at once, each waiting at most `wait` for its turn.
    pub fn new(slots: usize, wait: Duration) -> Self {
        let size = slots.max(1);
        Self {
            slots: Arc::new(Semaphore::new(size)),
            process: None,
            size,
            wait,
            adaptive: None,
        }
    }

    /// A budget of at most `slots` miners at once whose limit follows `pressure`: it starts at
    /// [`INITIAL_IN_FLIGHT`] and moves between [`MIN_IN_FLIGHT`] and `slots`.
    pub fn adaptive(slots: usize, wait: Duration, pressure: &'static Pressure) -> Self {
        let size = slots.max(1);
        let initial = INITIAL_IN_FLIGHT.min(size);
        let aimd = Aimd::new(MIN_IN_FLIGHT, initial, size, pressure.overloads());
        crate::instruments::in_flight_limit(initial as f64);
        Self {
            slots: Arc::new(Semaphore::new(initial)),
            process: None,
            size,
            wait,
            adaptive: Some(Arc::new(Adaptive {
                pressure,
                state: Mutex::new(Limit {
                    aimd,
                    granted: initial,
                    debt: 0,
                }),
            })),
        }
    }

    /// The budget this process's file-descriptor limit allows.
    pub fn from_process(max_in_flight: usize, wait: Duration) -> Self {
        let limit = fd_limit();
        let size = slots(limit, max_in_flight);
        if size < max_in_flight {
            tracing::warn!(
                fd_limit = limit,
                max_in_flight,
                slots = size,
                "the file-descriptor limit allows fewer miners in flight than configured"
            );
        }
        Self::within(size, wait, process_slots())
    }

    /// A budget of at most `slots` miners at once, adaptive within that, within the shared
    /// `process` budget.
    fn within(slots: usize, wait: Duration, process: Arc<Semaphore>) -> Self {
        Self {
            process: Some(process),
            ..Self::adaptive(slots, wait, pressure::global())
        }
    }

    /// The most miners this budget ever drives at once.
    pub fn size(&self) -> usize {
        self.size
    }

    /// How many miners it may drive at once now.
    pub fn limit(&self) -> usize {
        match &self.adaptive {
            Some(a) => {
                a.state
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .granted
            }
            None => self.size,
        }
    }

    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// A slot for one miner (the agent's, then its process's), waiting at most the budget's
    /// `wait` for both: for polls, which come round again.
    pub async fn acquire(&self) -> Result<Slot, Starved> {
        match tokio::time::timeout(self.wait, self.acquire_in_turn()).await {
            Ok(slot) => slot,
            Err(_) => Err(Starved(format!(
                "no in-flight slot within {:?} ({} of at most {} slots, shared with the process's other agents)",
                self.wait,
                self.limit(),
                self.size
            ))),
        }
    }

    /// A slot for one miner, waiting its turn however long the queue: for command batches,
    /// whose devices all queue at once and may be many times the limit. Every slot is held for
    /// at most one device's calls, each under its deadline, so the queue always moves, and the
    /// batch acks progress meanwhile.
    pub async fn acquire_in_turn(&self) -> Result<Slot, Starved> {
        if let Some(a) = &self.adaptive {
            a.pressure.ensure_probe();
        }
        let both = async {
            let own = self.slots.clone().acquire_owned().await?;
            let process = match &self.process {
                Some(p) => Some(p.clone().acquire_owned().await?),
                None => None,
            };
            Ok::<_, tokio::sync::AcquireError>(Slot {
                lost: false,
                own: Some(own),
                _process: process,
                adaptive: self.adaptive.clone(),
                slots: self.slots.clone(),
            })
        };
        // The semaphores are never closed; treat it as the agent's problem all the same.
        both.await
            .map_err(|_| Starved("the in-flight budget is closed".to_owned()))
    }
}

/// One miner's place in flight, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    /// Its miner timed out or lost its connection: with a busy runtime, a sign of congestion.
    lost: bool,
    own: Option<OwnedSemaphorePermit>,
    _process: Option<OwnedSemaphorePermit>,
    adaptive: Option<Arc<Adaptive>>,
    slots: Arc<Semaphore>,
}

impl Slot {
    /// Says that this slot's miner timed out or lost its connection.
    pub fn lost(&mut self) {
        self.lost = true;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let (Some(adaptive), Some(permit)) = (&self.adaptive, self.own.take()) {
            adaptive.release(permit, &self.slots, self.lost);
        }
    }
}

/// Linux errno values that mean this process (or the host) ran short, not the peer.
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;
const ENOBUFS: i32 = 105;
const ENOMEM: i32 = 12;

/// Whether an I/O error is the agent's own exhaustion.
pub fn is_own_exhaustion(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(EMFILE | ENFILE | ENOBUFS | ENOMEM)
    ) || error.kind() == std::io::ErrorKind::OutOfMemory
}

/// Words of the same errors once a library has flattened them into text.
pub fn mentions_own_exhaustion(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    text.contains("too many open files")
        || text.contains("os error 24")
        || text.contains("os error 23")
        || text.contains("no buffer space")
        || text.contains("os error 105")
        || text.contains("cannot allocate memory")
        || text.contains("os error 12)")
}

/// Whether this process can open a socket right now. asic-rs reports a connect that failed for
/// want of a descriptor as a plain connection failure (or, while identifying, as no miner at
/// all), so a failure is checked against this before it is blamed on the miner.
pub fn can_open_socket() -> Result<(), Starved> {
    match std::net::UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, 0)) {
        Ok(_) => Ok(()),
        Err(e) if is_own_exhaustion(&e) => Err(Starved(e.to_string())),
        // Anything else (no loopback in a sandbox) says nothing about descriptors.
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_come_from_the_limit_minus_a_reserve() {
        let check = |limit: u64, max: usize, want: usize| {
            assert_eq!(slots(limit, max), want, "limit {limit}, max {max}");
        };
        check(20_000, 256, 256);
        // 20,000 − 1,024 reserved, 4 each.
        check(20_000, 100_000, 4_744);
        // 1,024 − 128 reserved, 4 each.
        check(1_024, 256, 224);
        // A tiny limit still makes progress, one miner at a time.
        check(40, 256, 2);
        check(8, 256, 1);
        check(0, 0, 1);
    }

    #[test]
    fn own_exhaustion_is_told_from_a_peer_failure() {
        let own = |errno: i32| is_own_exhaustion(&std::io::Error::from_raw_os_error(errno));
        assert!(own(EMFILE) && own(ENFILE) && own(ENOBUFS) && own(ENOMEM));
        // ECONNREFUSED, ETIMEDOUT, EHOSTUNREACH: the miner's side.
        assert!(!own(111) && !own(110) && !own(113));
        assert!(mentions_own_exhaustion(
            "error sending request: Too many open files (os error 24)"
        ));
        assert!(!mentions_own_exhaustion(
            "connection refused (os error 111)"
        ));
    }

    #[tokio::test]
    async fn agents_in_one_process_share_its_descriptors() {
        // A process with descriptors for 3 miners and two agents of 8 slots each.
        let process = Arc::new(Semaphore::new(3));
        let a = Budget::within(8, Duration::from_millis(20), process.clone());
        let b = Budget::within(8, Duration::from_millis(20), process.clone());
        let held = [
            a.acquire().await.unwrap(),
            a.acquire().await.unwrap(),
            b.acquire().await.unwrap(),
        ];
        // The second agent does not get a descriptor budget of its own: the process's is spent.
        assert!(b.acquire().await.is_err());
        assert!(a.acquire().await.is_err());
        drop(held);
        assert!(b.acquire().await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn an_overloaded_runtime_cuts_the_limit_and_a_calm_one_grows_it_again() {
        static P: Pressure = Pressure::new();
        let budget = Budget::adaptive(1_000, Duration::from_millis(20), &P);
        assert_eq!((budget.limit(), budget.size()), (INITIAL_IN_FLIGHT, 1_000));
        let held = hold(&budget, 256).await;
        assert!(
            budget.acquire().await.is_err(),
            "256 in flight is the limit"
        );

        // The runtime falls behind while all 256 are in flight: the limit halves, and the
        // permits of miners still in flight are forgotten as they come back.
        P.record(pressure::OVERLOADED);
        drop(held);
        assert_eq!(budget.limit(), 128);
        let held = hold(&budget, 128).await;
        assert!(
            budget.acquire().await.is_err(),
            "only 128 may be in flight now"
        );
        drop(held);

        // On time again, every slot in use: the limit grows back.
        P.record(Duration::from_millis(1));
        let mut held = hold(&budget, 128).await;
        for _ in 0..3_000 {
            held.pop();
            while held.len() < budget.limit() {
                held.push(budget.acquire().await.unwrap());
            }
        }
        let grown = budget.limit();
        assert!(
            grown > 140,
            "the limit grows back while the runtime keeps up: {grown}"
        );
        drop(held);
        // Not while nothing fills it.
        for _ in 0..3_000 {
            drop(budget.acquire().await.unwrap());
        }
        assert_eq!(budget.limit(), grown, "a limit nothing fills stays");
        drop(hold(&budget, grown).await);
    }

    #[test]
    fn the_limit_and_the_lateness_are_metrics() {
        use ebb_obs::names::{AGENT_IN_FLIGHT_LIMIT, AGENT_RUNTIME_LAG_SECONDS};
        static P: Pressure = Pressure::new();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let mut kept = None;
        let text = ebb_testkit::metrics::rendered(|| {
            let budget = Budget::adaptive(1_000, Duration::from_millis(20), &P);
            let held = runtime.block_on(hold(&budget, 256));
            P.record(pressure::OVERLOADED);
            drop(held);
            crate::instruments::runtime_lag(Duration::from_millis(750));
            kept = Some(budget);
        });
        let value = |name| ebb_testkit::metrics::value(&text, name);
        assert_eq!(value(AGENT_IN_FLIGHT_LIMIT), Some(128.0), "{text}");
        assert_eq!(value(AGENT_RUNTIME_LAG_SECONDS), Some(0.75), "{text}");
        drop(kept);
    }

    async fn hold(budget: &Budget, n: usize) -> Vec<Slot> {
        let mut slots = Vec::with_capacity(n);
        for i in 0..n {
            let slot = budget.acquire().await;
            slots.push(slot.unwrap_or_else(|e| panic!("slot {i} of {n}: {e}")));
        }
        slots
    }

    #[tokio::test(start_paused = true)]
    async fn a_command_waits_its_turn_past_the_polls_wait() {
        let budget = Budget::new(1, Duration::from_millis(20));
        let held = budget.acquire().await.unwrap();
        let queued = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.acquire_in_turn().await.map(drop) })
        };
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!queued.is_finished(), "still in the queue, not deferred");
        drop(held);
        assert!(queued.await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn a_slot_not_freed_in_time_is_starvation() {
        let budget = Budget::new(1, Duration::from_millis(20));
        let held = budget.acquire().await.unwrap();
        assert!(budget.acquire().await.is_err());
        drop(held);
        assert!(budget.acquire().await.is_ok());
    }
}
