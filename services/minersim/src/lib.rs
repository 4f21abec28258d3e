//! ebb-minersim: a fleet of simulated Bitcoin miners that real management software cannot tell
//! from the real thing.
//!
//! Each simulated miner answers on its own loopback address (127.x.y.z; Linux routes all of
//! 127.0.0.0/8 to loopback) with the wire protocols its firmware speaks:
//!
//! - **Whatsminer** (M30S, M50, M60, M60S on 2024-11+ firmware): RPC on 4028, the v3
//!   length-prefixed API on 4433 (sleep, wake and power limit), a redirect on 80;
//! - **Antminer stock** (S19, S19 Pro, S21, 2023-07 firmware): cgminer RPC on 4028 and the
//!   CGI pages behind digest auth on 80 (sleep and wake through `set_miner_conf.cgi`);
//! - **LuxOS** (S19k Pro): RPC on 4028 with sessions and `curtail`, its web page on 80.
//!
//! Behind the protocols sits lazy physics (power ramps after sleep, a nonzero idle, hashrate
//! in proportion to power), a clock tests can pause and step, and injectable faults. The
//! simulator's own control API reports the *truth* so tests can compare it with what a client
//! read over the wire.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use ebb_minersim::{FleetSpec, Model, SimOptions, Physics};
//! let sim = ebb_minersim::start(
//!     FleetSpec::single("site-a", Model::M60s, 3),
//!     SimOptions::default().with_physics(Physics::instant()),
//! )
//! .await?;
//! for miner in sim.miners() {
//!     println!("{} {}", miner.address, miner.model_name);
//! }
//! sim.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Code map: [`fleet`] describes fleets, `sim` holds their state, [`physics`] the motion,
//! [`fault`] the misbehaviour, `net` the listeners, `rpc`/`whatsminer`/`antminer`/`luxos`/`web`
//! the protocols, `control` the control API and [`config`] the `ebb sim serve` entry point.

// Firmware replies are large `json!` literals.
#![recursion_limit = "512"]

mod antminer;
mod clock;
pub mod config;
mod control;
mod digest;
pub mod fault;
pub mod fleet;
pub mod latency;
mod luxos;
mod model;
mod net;
pub mod physics;
mod rpc;
mod sim;
mod web;
mod whatsminer;
mod wire;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::clock::{SimClock, SimTime};
pub use crate::config::{SimConfig, run};
pub use crate::control::{FleetSummary, MinerView};
pub use crate::fault::{Fault, FaultSelector};
pub use crate::fleet::{FleetSpec, GroupSpec, SiteSpec};
pub use crate::latency::Latency;
pub use crate::model::{Firmware, Make, Model};
pub use crate::net::ListenMode;
pub use crate::physics::{Mode, PerfMode, Physics, PhysicsPatch};
pub use crate::sim::{MinerInfo, SimError, TrueState};

use crate::fleet::{addresses_from, random_base};
use crate::net::{BindError, Front};
use crate::sim::{NetLimits, SimCore, SiteInfo};
use crate::web::{WebRouters, WebState};

/// Whether the clock starts running or paused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClockStart {
    /// Follows real time.
    #[default]
    Running,
    /// Stays at zero until advanced or resumed.
    Paused,
}

/// How to run a simulator.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Per-address listeners (default) or shared ones.
    pub mode: ListenMode,
    /// First miner address; overrides the fleet's. Random when neither gives one.
    pub base_address: Option<Ipv4Addr>,
    /// Where the control API listens (port 0: any free port); `None` for no control API.
    pub control_addr: Option<SocketAddr>,
    /// Physics of the fleet.
    pub physics: Physics,
    /// Whether the clock starts paused.
    pub clock: ClockStart,
    /// How long a client may take to send a request.
    pub read_timeout: Duration,
    /// Connections open at once (each is a file descriptor: keep it under `ulimit -n`).
    pub max_connections: usize,
    /// Longest a faulty miner keeps a connection it will never answer.
    pub hold_max: Duration,
    /// How long every reply waits (real time), drawn per reply; `None` answers at once.
    pub latency: Option<Latency>,
    /// Share of the fleet (0..=1, chosen by the fleet seed) that acknowledges every command
    /// and never acts on it (the `ack_noop` fault), injected at start.
    pub faulty_share: f64,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            mode: ListenMode::PerAddress,
            base_address: None,
            control_addr: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))),
            physics: Physics::default(),
            clock: ClockStart::Running,
            read_timeout: Duration::from_secs(10),
            max_connections: 16_384,
            hold_max: Duration::from_secs(120),
            latency: None,
            faulty_share: 0.0,
        }
    }
}

impl SimOptions {
    /// Sets the listening mode.
    pub fn with_mode(mut self, mode: ListenMode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets the physics.
    pub fn with_physics(mut self, physics: Physics) -> Self {
        self.physics = physics;
        self
    }

    /// Starts with a paused clock.
    pub fn with_paused_clock(mut self) -> Self {
        self.clock = ClockStart::Paused;
        self
    }

    /// Sets the first miner address.
    pub fn with_base_address(mut self, base: Ipv4Addr) -> Self {
        self.base_address = Some(base);
        self
    }

    /// Makes every reply wait a delay drawn from `latency`.
    pub fn with_latency(mut self, latency: Latency) -> Self {
        self.latency = Some(latency);
        self
    }

    /// Makes a share (0..=1) of the fleet acknowledge commands and never act on them.
    pub fn with_faulty_share(mut self, share: f64) -> Self {
        self.faulty_share = share;
        self
    }

    /// Sets (or with `None`, disables) the control API address.
    pub fn with_control_addr(mut self, addr: Option<SocketAddr>) -> Self {
        self.control_addr = addr;
        self
    }

    fn validate(&self) -> anyhow::Result<()> {
        let mut problems = Vec::new();
        if let Err(e) = self.physics.validate() {
            problems.push(e);
        }
        if self.read_timeout.is_zero() || self.read_timeout > Duration::from_secs(300) {
            problems.push("read_timeout must be between 1 ms and 300 s".to_owned());
        }
        if self.max_connections == 0 || self.max_connections > 1_000_000 {
            problems.push("max_connections must be between 1 and 1000000".to_owned());
        }
        if !(0.0..=1.0).contains(&self.faulty_share) {
            problems.push(format!(
                "faulty_share must be between 0 and 1, got {}",
                self.faulty_share
            ));
        }
        if self.hold_max > Duration::from_secs(600) {
            problems.push("hold_max must be at most 600 s".to_owned());
        }
        if let Some(base) = self.base_address
            && base.octets()[0] != 127
        {
            problems.push(format!("base address {base} is not in 127.0.0.0/8"));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("invalid simulator options: {}", problems.join("; "))
        }
    }
}

/// Attempts at a random address block before giving up.
const BIND_ATTEMPTS: usize = 12;

/// A running simulated fleet. Dropping it stops the simulator without waiting; prefer
/// [`Simulator::shutdown`].
#[derive(Debug)]
pub struct Simulator {
    core: Arc<SimCore>,
    mode: ListenMode,
    control_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

/// Starts a simulated fleet; returns once every listener is bound.
#[tracing::instrument(skip_all, fields(miners = spec.miner_count(), mode = ?opts.mode), err)]
pub async fn start(spec: FleetSpec, opts: SimOptions) -> anyhow::Result<Simulator> {
    spec.validate()?;
    opts.validate()?;
    let plates = spec.expand();
    let sites: Vec<SiteInfo> = spec
        .sites
        .iter()
        .map(|s| SiteInfo {
            name: s.name.clone(),
            ambient_c: s.ambient_c,
        })
        .collect();
    let clock = match opts.clock {
        ClockStart::Running => SimClock::running(),
        ClockStart::Paused => SimClock::paused(),
    };
    let limits = NetLimits {
        read_timeout: opts.read_timeout,
        hold_max: opts.hold_max,
        latency: opts.latency,
    };
    let explicit_base = opts.base_address.or(spec.base_address);
    let build = |base: Ipv4Addr| -> anyhow::Result<SimCore> {
        let addresses = addresses_from(base, plates.len())?;
        Ok(SimCore::new(
            plates.clone(),
            addresses,
            sites.clone(),
            clock.clone(),
            opts.physics,
            spec.seed,
            limits,
        ))
    };

    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let (core, listeners) = match opts.mode {
        ListenMode::PerAddress => {
            let mut attempt = 0;
            loop {
                attempt += 1;
                let base = explicit_base.unwrap_or_else(random_base);
                let core = build(base)?;
                match net::bind_per_address(&core) {
                    Ok(listeners) => break (core, Listeners::PerAddress(listeners)),
                    Err(BindError::InUse { addr })
                        if explicit_base.is_none() && attempt < BIND_ATTEMPTS =>
                    {
                        tracing::debug!(%addr, "address block in use; trying another");
                    }
                    Err(BindError::InUse { addr }) => anyhow::bail!(
                        "cannot bind {addr}: address already in use (another simulator on the \
                         same addresses, or a shared-mode simulator holding the port on 0.0.0.0)"
                    ),
                    Err(e) => {
                        return Err(anyhow::Error::new(e).context(
                            "binding per-miner listeners (port 80 needs root or \
                             CAP_NET_BIND_SERVICE; thousands of miners need a high `ulimit -n`)",
                        ));
                    }
                }
            }
        }
        ListenMode::Shared => {
            let core = build(explicit_base.unwrap_or_else(random_base))?;
            let listeners = net::bind_shared(&core)?;
            (core, Listeners::Shared(listeners))
        }
    };
    let core = Arc::new(core);
    if opts.faulty_share > 0.0 {
        let faulty = FaultSelector {
            share: Some(opts.faulty_share),
            ..FaultSelector::all()
        };
        let chosen = core
            .inject(&faulty, Fault::AckNoop)
            .map_err(|e| anyhow::anyhow!("injecting the faulty share: {e}"))?;
        tracing::debug!(faulty = chosen.len(), "miners that ack and never act");
    }
    let web = WebRouters::new(WebState {
        core: Arc::clone(&core),
        shutdown: shutdown.clone(),
    });
    let front = Arc::new(Front {
        core: Arc::clone(&core),
        shutdown: shutdown.clone(),
        tracker: tracker.clone(),
        connections: Arc::new(Semaphore::new(opts.max_connections)),
        web,
    });
    match listeners {
        Listeners::PerAddress(l) => net::spawn_per_address(&front, l),
        Listeners::Shared(l) => net::spawn_shared(&front, l),
    }

    let control_addr = match opts.control_addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the control API on {addr}"))?;
            let bound = listener.local_addr()?;
            let app = control::router(Arc::clone(&core));
            let stop = shutdown.clone();
            tracker.spawn(async move {
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
                if let Err(error) = served {
                    tracing::warn!(%error, "control api stopped");
                }
            });
            Some(bound)
        }
        None => None,
    };
    tracing::debug!(miners = core.miners.len(), mode = ?opts.mode, ?control_addr, "miner simulator started");
    Ok(Simulator {
        core,
        mode: opts.mode,
        control_addr,
        shutdown,
        tracker,
    })
}

enum Listeners {
    PerAddress(Vec<(u32, net::PortKind, tokio::net::TcpListener)>),
    Shared(Vec<(net::PortKind, tokio::net::TcpListener)>),
}

impl Simulator {
    /// Every simulated miner, in address order.
    pub fn miners(&self) -> Vec<MinerInfo> {
        (0..self.core.miners.len() as u32)
            .map(|i| self.core.info(i))
            .collect()
    }

    /// Every miner's address, in order.
    pub fn addresses(&self) -> Vec<Ipv4Addr> {
        self.core.miners.iter().map(|m| m.address).collect()
    }

    /// Number of miners.
    pub fn len(&self) -> usize {
        self.core.miners.len()
    }

    /// Whether the fleet is empty (never, for a started simulator).
    pub fn is_empty(&self) -> bool {
        self.core.miners.is_empty()
    }

    /// Static facts about one miner.
    pub fn miner(&self, address: Ipv4Addr) -> Option<MinerInfo> {
        self.core.index_of(address).map(|i| self.core.info(i))
    }

    /// What a miner is really doing.
    pub fn truth(&self, address: Ipv4Addr) -> Result<TrueState, SimError> {
        let idx = self
            .core
            .index_of(address)
            .ok_or(SimError::UnknownMiner(address))?;
        Ok(self.core.truth(idx))
    }

    /// How many identification probes a miner answered: RPC `version` and `devdetails`, which
    /// asic-rs sends whenever it identifies a miner and never to read or command one.
    pub fn probes(&self, address: Ipv4Addr) -> Result<u32, SimError> {
        let idx = self
            .core
            .index_of(address)
            .ok_or(SimError::UnknownMiner(address))?;
        Ok(self
            .core
            .miner(idx)
            .probes
            .load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Fleet totals.
    pub fn summary(&self) -> FleetSummary {
        control::fleet_summary(&self.core)
    }

    /// Adds a fault to the selected miners; returns their addresses.
    pub fn inject_fault(
        &self,
        selector: &FaultSelector,
        fault: Fault,
    ) -> Result<Vec<Ipv4Addr>, SimError> {
        self.core.inject(selector, fault)
    }

    /// Clears every fault on the selected miners; returns how many had faults.
    pub fn clear_faults(&self, selector: &FaultSelector) -> Result<usize, SimError> {
        self.core.clear(selector)
    }

    /// The simulation clock (pause, resume, advance).
    pub fn clock(&self) -> &SimClock {
        &self.core.clock
    }

    /// Moves the clock forward and lets listeners notice reboots that ended.
    pub fn advance(&self, by: Duration) {
        self.core.clock.advance(by);
        self.core.bump_reachability();
    }

    /// The current physics.
    pub fn physics(&self) -> Physics {
        self.core.physics()
    }

    /// Replaces the physics; ramps in progress continue at the new rates.
    pub fn set_physics(&self, physics: Physics) -> Result<(), SimError> {
        physics.validate().map_err(SimError::Invalid)?;
        self.core.set_physics(physics);
        Ok(())
    }

    /// Where the control API listens, if enabled.
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.control_addr
    }

    /// The listening mode.
    pub fn mode(&self) -> ListenMode {
        self.mode
    }

    /// Stops every listener and connection and waits for them to finish.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
