//! The simulated fleet a benchmark drives: a shared-mode simulator with a third each of
//! Whatsminer v3, stock Antminer and LuxOS miners, the agent's inventory of it, and the
//! identification phase that fills the agent's handle pool before the measured phase.

use super::measure::percentile_ms;
use anyhow::Context;
use ebb_agent::{MinerPath, MinerPathSettings, Snapshot};
use ebb_bus::InventoryDevice;
use ebb_domain::{Capabilities, DeviceId};
use ebb_minersim::{
    Firmware, FleetSpec, GroupSpec, ListenMode, Model, Physics, SimOptions, Simulator, SiteSpec,
};
use futures::StreamExt;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

/// One protocol's share of a benchmark.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FirmwareFigures {
    /// Miners of this protocol.
    pub miners: usize,
    /// Median time one miner took.
    pub p50_ms: f64,
    /// 99th percentile of the same.
    pub p99_ms: f64,
    /// Miners whose command failed or whose sample was not valid.
    pub failed: usize,
}

/// Starts a shared-mode simulator of `miners`, a third of each protocol, with instant physics.
pub async fn start_sim(miners: usize) -> anyhow::Result<Simulator> {
    let third = miners / 3;
    let counts = [
        (Model::M60s, miners - 2 * third),
        (Model::S19Pro, third),
        (Model::S19kProLuxos, third),
    ];
    let mut groups = Vec::new();
    for (model, count) in counts {
        if count > 0 {
            groups.push(GroupSpec::new(model, u32::try_from(count)?));
        }
    }
    let spec = FleetSpec::new(vec![SiteSpec::new("bench", groups)]);
    let options = SimOptions::default()
        .with_mode(ListenMode::Shared)
        .with_physics(Physics::instant())
        .with_control_addr(None);
    ebb_minersim::start(spec, options).await.context(
        "starting the simulator: a benchmark binds ports 80, 4028 and 4433 on 0.0.0.0 and must \
         run alone (no other benchmark, simulator, `ebb sim serve` or agent test at the same time)",
    )
}

/// Whether the agent's inventory knows each miner's firmware, as registration after a scan
/// stores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Registration {
    /// Make, model and firmware known: a restarted agent drives the miners without identifying
    /// them, over its own protocols where it has them (ADR 0008).
    Registered,
    /// No firmware known, and asic-rs only: every miner is identified on first contact, as the
    /// agent did before ADR 0008.
    Unregistered,
}

/// The simulated fleet in address order, with each miner's protocol, and the inventory the
/// agent would have of it (same order).
pub struct Fleet {
    pub addresses: Vec<Ipv4Addr>,
    firmware: Vec<Firmware>,
    pub inventory: Snapshot,
    pub registration: Registration,
}

impl Fleet {
    /// The fleet as a restarted agent knows it: registered.
    #[allow(
        dead_code,
        reason = "kept for benchmarks that need no unregistered variant"
    )]
    pub fn of(sim: &Simulator) -> Self {
        Self::with(sim, Registration::Registered)
    }

    pub fn with(sim: &Simulator, registration: Registration) -> Self {
        let miners = sim.miners();
        let inventory = miners
            .iter()
            .map(|m| InventoryDevice {
                device_id: DeviceId::new(),
                address: m.address.to_string(),
                make: m.make.to_string(),
                model: m.model_name.clone(),
                // As registration stores it after a scan.
                firmware: (registration == Registration::Registered).then(|| m.scanned_firmware()),
                // Every simulated firmware can sleep, which is all `curtail{full}` asks.
                capabilities: Capabilities {
                    curtail_full: true,
                    ..Capabilities::default()
                },
            })
            .collect();
        let (addresses, firmware) = miners.into_iter().map(|m| (m.address, m.firmware)).unzip();
        Self {
            addresses,
            firmware,
            inventory: Snapshot::new(inventory),
            registration,
        }
    }

    /// The agent's miner path for this fleet: its own protocols for registered miners, asic-rs
    /// alone otherwise.
    pub fn path(&self, settings: MinerPathSettings) -> MinerPath {
        match self.registration {
            Registration::Registered => MinerPath::new(settings),
            Registration::Unregistered => MinerPath::new(settings).asic_rs_only(),
        }
    }

    /// What the agent does before its first command or poll of this fleet: nothing for
    /// registered miners, identifying every one otherwise. Returns seconds and identified.
    pub async fn warm(&self, path: &MinerPath) -> (f64, usize) {
        match self.registration {
            Registration::Registered => (0.0, 0),
            Registration::Unregistered => self.identify(path).await,
        }
    }

    /// Identifies every miner into the path's handle pool, `max_in_flight` at a time, as the
    /// agent's first contact with each does. Returns the phase's seconds and how many were
    /// identified.
    pub async fn identify(&self, path: &MinerPath) -> (f64, usize) {
        let started = Instant::now();
        let mut gets = Vec::with_capacity(self.addresses.len());
        for &ip in &self.addresses {
            gets.push(path.identify(IpAddr::V4(ip)));
        }
        let identified = futures::stream::iter(gets)
            .buffer_unordered(path.settings().max_in_flight)
            .filter(|r| std::future::ready(r.is_ok()))
            .count()
            .await;
        (started.elapsed().as_secs_f64(), identified)
    }

    /// Latency percentiles and failures per protocol; `done` is in fleet order.
    pub fn by_firmware<T>(
        &self,
        done: &[(T, Duration)],
        failed: impl Fn(&T) -> bool,
    ) -> BTreeMap<String, FirmwareFigures> {
        let mut groups: BTreeMap<String, (Vec<Duration>, usize)> = BTreeMap::new();
        for (fw, (outcome, took)) in self.firmware.iter().zip(done) {
            let (latencies, failures) = groups.entry(fw.to_string()).or_default();
            latencies.push(*took);
            *failures += usize::from(failed(outcome));
        }
        groups
            .into_iter()
            .map(|(fw, (latencies, failed))| {
                let figures = FirmwareFigures {
                    miners: latencies.len(),
                    p50_ms: percentile_ms(&latencies, 0.50),
                    p99_ms: percentile_ms(&latencies, 0.99),
                    failed,
                };
                (fw, figures)
            })
            .collect()
    }
}
