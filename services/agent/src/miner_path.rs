//! The agent's miner path without NATS: the value that command execution
//! ([`execute`](crate::execute())) and polling ([`poll`](crate::poll())) run on.
//!
//! It owns what talking to the site's miners needs and nothing about how batches arrive or where
//! results and telemetry go: the handle pool, the power limits remembered from before
//! power-limit curtails, the deadlines, the concurrency bound and the efficiency-limit
//! percentage. The running agent holds one next to its NATS client; tests and the benchmarks
//! build one directly and drive miners with the agent's own code.

use crate::budget::Budget;
use crate::config::AgentConfig;
use crate::driver::{MinerError, MinerPool};
use crate::execute::Priors;
use crate::native::{Native, Protocol};
use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;

/// The settings a [`MinerPath`] runs with: the miner-facing part of [`AgentConfig`].
///
/// They are not checked here: [`AgentConfig::validate`] checks them for the agent, and a
/// caller that builds them by hand keeps them in the same ranges (`max_in_flight` of 0 would
/// never contact a miner).
#[derive(Clone, Debug, PartialEq)]
pub struct MinerPathSettings {
    /// Most miners driven at once, per batch and per poll.
    pub max_in_flight: usize,
    /// Deadline of each read and of each identification.
    pub call_timeout: Duration,
    /// Deadline of each control call (pause, resume, set a power limit).
    pub control_timeout: Duration,
    /// The power limit a `curtail{efficiency}` sets, in percent of the limit before it.
    pub efficiency_limit_pct: f64,
    /// Most miner handles (and remembered power limits) kept between calls.
    pub max_cached_miners: usize,
}

impl From<&AgentConfig> for MinerPathSettings {
    fn from(config: &AgentConfig) -> Self {
        Self {
            max_in_flight: config.max_in_flight,
            call_timeout: config.call_timeout,
            control_timeout: config.control_timeout,
            efficiency_limit_pct: config.efficiency_limit_pct,
            max_cached_miners: config.max_cached_miners,
        }
    }
}

/// The agent's defaults.
impl Default for MinerPathSettings {
    fn default() -> Self {
        // The defaults live with the agent's configuration.
        Self::from(&AgentConfig::default())
    }
}

/// The agent's miner path: everything command execution and polling share, without NATS.
#[derive(Debug)]
pub struct MinerPath {
    /// Miner handles by address, shared by commands and polls so a miner is identified once.
    pub(crate) pool: MinerPool,
    /// Power limits captured before power-limit curtails, for redeliveries and restores.
    pub(crate) priors: Priors,
    /// Miners in flight across polls and batches, sized from the file-descriptor limit.
    pub(crate) budget: Budget,
    /// The agent's own protocol clients for registered miners of the common firmwares (ADR
    /// 0008); `None` drives every miner through asic-rs.
    pub(crate) native: Option<Native>,
    /// Deadlines, concurrency and the efficiency limit.
    settings: MinerPathSettings,
    /// Command batches executing now. Polls yield to them: a grid deadline is met by commands,
    /// and a commanded miner's read-after already is its telemetry.
    commanding: tokio::sync::watch::Sender<usize>,
}

/// A command batch executing; polls yield until it is dropped.
#[derive(Debug)]
pub(crate) struct Commanding<'a>(&'a tokio::sync::watch::Sender<usize>);

impl Drop for Commanding<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl MinerPath {
    /// A miner path with an empty handle pool and nothing remembered, its in-flight budget
    /// sized from this process's file-descriptor limit.
    pub fn new(settings: MinerPathSettings) -> Self {
        let budget = Budget::from_process(settings.max_in_flight, settings.control_timeout);
        Self::with_budget(settings, budget)
    }

    /// A miner path with the given in-flight budget.
    pub fn with_budget(settings: MinerPathSettings, budget: Budget) -> Self {
        Self {
            pool: MinerPool::new(settings.max_cached_miners, settings.call_timeout),
            priors: Priors::new(settings.max_cached_miners),
            budget,
            native: Some(Native::new(settings.max_cached_miners)),
            settings,
            commanding: tokio::sync::watch::channel(0).0,
        }
    }

    /// Marks a command batch as executing until the returned guard is dropped.
    pub(crate) fn commanding(&self) -> Commanding<'_> {
        self.commanding.send_modify(|n| *n += 1);
        Commanding(&self.commanding)
    }

    /// Waits until no command batch is executing, or `at_most`: a poll gives way to commands
    /// (issue 12), but is never held off for longer than that per miner, so telemetry goes on.
    pub(crate) async fn yield_to_commands(&self, at_most: Duration) {
        let mut running = self.commanding.subscribe();
        let _ = tokio::time::timeout(at_most, running.wait_for(|n| *n == 0)).await;
    }

    /// The same path driving every miner through asic-rs, identified on first contact: what
    /// the agent did before ADR 0008, kept for comparisons.
    pub fn asic_rs_only(mut self) -> Self {
        self.native = None;
        self
    }

    /// The native client and protocol for a miner registered with `firmware`, when this path
    /// speaks it.
    pub(crate) fn native_for(&self, firmware: Option<&str>) -> Option<(&Native, Protocol)> {
        Some((self.native.as_ref()?, Protocol::of(firmware)?))
    }

    /// How many miners were identified through asic-rs (detection probes) since the path was
    /// built: a registered miner of a native firmware never is.
    pub fn identifications(&self) -> u64 {
        self.pool.identifications()
    }

    /// The in-flight budget: how many miners this path drives at once.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// The miner path an agent with `config` runs.
    pub fn from_config(config: &AgentConfig) -> Self {
        Self::new(MinerPathSettings::from(config))
    }

    pub fn settings(&self) -> &MinerPathSettings {
        &self.settings
    }

    /// Identifies the miner at `ip` into the handle pool, as the first command or poll of it
    /// would; later calls reuse the handle. For warming the pool before a measurement.
    pub async fn identify(&self, ip: IpAddr) -> Result<(), MinerError> {
        self.pool.get(ip).await.map(drop)
    }

    /// Keeps only the handles of `addresses` (after an inventory refresh).
    pub(crate) fn retain(&self, addresses: &HashSet<IpAddr>) {
        self.pool.retain(addresses);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ebb_domain::SiteCode;

    #[tokio::test(start_paused = true)]
    async fn polls_give_way_to_a_running_batch_for_at_most_their_bound() {
        let path = std::sync::Arc::new(MinerPath::with_budget(
            MinerPathSettings::default(),
            Budget::new(4, Duration::from_secs(1)),
        ));
        // Nothing running: no wait.
        let t = tokio::time::Instant::now();
        path.yield_to_commands(Duration::from_secs(10)).await;
        assert_eq!(t.elapsed(), Duration::ZERO);
        // A batch that ends after 2 s releases the poll then.
        let batch = {
            let path = path.clone();
            tokio::spawn(async move {
                let _running = path.commanding();
                tokio::time::sleep(Duration::from_secs(2)).await;
            })
        };
        tokio::task::yield_now().await;
        let t = tokio::time::Instant::now();
        path.yield_to_commands(Duration::from_secs(10)).await;
        assert_eq!(t.elapsed(), Duration::from_secs(2));
        batch.await.unwrap();
        // A batch that outlasts the bound holds the poll off for the bound only.
        let _long = path.commanding();
        let t = tokio::time::Instant::now();
        path.yield_to_commands(Duration::from_secs(3)).await;
        assert_eq!(t.elapsed(), Duration::from_secs(3));
    }

    #[test]
    fn settings_are_the_agents() {
        let site = SiteCode::parse("site-a").unwrap();
        let mut config = AgentConfig::new(site);
        assert_eq!(
            MinerPathSettings::default(),
            MinerPathSettings::from(&config)
        );
        config.max_in_flight = 7;
        config.call_timeout = Duration::from_millis(250);
        config.control_timeout = Duration::from_secs(3);
        config.efficiency_limit_pct = 60.0;
        config.max_cached_miners = 9;
        let path = MinerPath::from_config(&config);
        assert_eq!(
            path.settings(),
            &MinerPathSettings {
                max_in_flight: 7,
                call_timeout: Duration::from_millis(250),
                control_timeout: Duration::from_secs(3),
                efficiency_limit_pct: 60.0,
                max_cached_miners: 9,
            }
        );
    }
}
