//! The agent's own limits (issue 12, item 3): how many miners it may talk to at once, derived
//! from the process's file-descriptor limit, and how it tells its own exhaustion from a
//! miner's failure.
//!
//! Architecture invariant: the agent's own limits are never a miner's fault. Running short of
//! file descriptors, socket buffers or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM), or waiting too
//! long for a slot, is back-pressure: the device waits or is deferred (no outcome, no sample, no
//! cached handle), never reported `unreachable`, `refused` or `unsupported`, so it never costs
//! a retry attempt at the reconciler.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

    /// A budget of `slots` miners at once within the shared `process` budget.
    fn within(slots: usize, wait: Duration, process: Arc<Semaphore>) -> Self {
        Self {
            process: Some(process),
            ..Self::new(slots, wait)
        }
    }

    pub fn size(&self) -> usize {
        self.size
    }

    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// A slot for one miner (the agent's, then its process's), waiting at most the budget's
    /// `wait` for both.
    pub async fn acquire(&self) -> Result<Slot, Starved> {
        let both = async {
            let own = self.slots.clone().acquire_owned().await?;
            let process = match &self.process {
                Some(p) => Some(p.clone().acquire_owned().await?),
                None => None,
            };
            Ok::<_, tokio::sync::AcquireError>(Slot {
                _own: own,
                _process: process,
            })
        };
        match tokio::time::timeout(self.wait, both).await {
            Ok(Ok(slot)) => Ok(slot),
            // The semaphores are never closed; treat it as the agent's problem all the same.
            Ok(Err(_)) => Err(Starved("the in-flight budget is closed".to_owned())),
            Err(_) => Err(Starved(format!(
                "no in-flight slot within {:?} ({} slots, shared with the process's other agents)",
                self.wait, self.size
            ))),
        }
    }
}

/// One miner's place in flight, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    _own: OwnedSemaphorePermit,
    _process: Option<OwnedSemaphorePermit>,
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

    #[tokio::test]
    async fn a_slot_not_freed_in_time_is_starvation() {
        let budget = Budget::new(1, Duration::from_millis(20));
        let held = budget.acquire().await.unwrap();
        assert!(budget.acquire().await.is_err());
        drop(held);
        assert!(budget.acquire().await.is_ok());
    }
}
