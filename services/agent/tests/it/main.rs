//! Integration tests of the agent against a real nats-server (ebb-testkit) and the miner
//! simulator (ebb-minersim) speaking Whatsminer v3, Antminer stock and LuxOS on loopback.
//!
//! Each test spawns its own nats-server, simulator (on a random 127.x.y.0 block) and agent
//! through [`spawn_agent`], so tests run side by side. The tests in `miner_path` start only a
//! simulator: they drive it through the agent's miner path without NATS.

mod batch;
mod faults;
mod fleet;
mod known;
mod miner_path;
mod scan;
mod starved;
mod telemetry;

use std::net::Ipv4Addr;
use std::time::Duration;

use async_nats::jetstream;
use ebb_agent::{AgentConfig, InventorySource};
use ebb_bus::{
    BatchResult, CommandBatch, DeviceRef, Envelope, InventoryDevice, TelemetryBatch, publish,
    streams, subjects,
};
use ebb_domain::{BatchId, Capabilities, CommandKind, DeviceId, EventId, Outcome, SiteCode};
use ebb_minersim::{
    Firmware, FleetSpec, GroupSpec, Model, Physics, SimOptions, Simulator, SiteSpec,
};
use ebb_testkit::NatsServer;
use futures::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a test waits for a message before failing.
pub const WAIT: Duration = Duration::from_secs(60);

/// One agent under test with everything it talks to.
pub struct Harness {
    pub sim: Simulator,
    pub site: SiteCode,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    /// One inventory device per simulated miner, in address order, then any extra ones.
    pub devices: Vec<InventoryDevice>,
    results: async_nats::Subscriber,
    telemetry: async_nats::Subscriber,
    shutdown: CancellationToken,
    /// `None` once [`Harness::stop_agent`] ran.
    agent: Option<JoinHandle<anyhow::Result<()>>>,
    /// The running agent's settings, for [`Harness::restart_agent`].
    config: AgentConfig,
    /// Dropped last: the agent must stop before its server does.
    _nats: NatsServer,
}

/// Agent settings for tests: short call timeouts, and polling only when a test asks for it.
pub fn test_config(site: &SiteCode) -> AgentConfig {
    let mut c = AgentConfig::new(site.clone());
    c.call_timeout = Duration::from_secs(3);
    c.poll_interval = Duration::from_secs(3600);
    c
}

/// Runs an agent on its own NATS connection to `nats_url` until `shutdown`.
pub fn spawn_run(
    nats_url: &str,
    config: AgentConfig,
    source: InventorySource,
    shutdown: CancellationToken,
) -> JoinHandle<anyhow::Result<()>> {
    let common = ebb_runtime::Common {
        nats_url: nats_url.into(),
        ..ebb_runtime::Common::default()
    };
    tokio::spawn(async move {
        let ctx = ebb_runtime::Context::connect(
            &common,
            ebb_runtime::Needs::Nats,
            "test-agent",
            shutdown,
        )
        .await?;
        // What the runtime does before it starts an agent.
        ctx.ensure_streams(&[
            ebb_bus::streams::CMD,
            ebb_bus::streams::RESULT,
            ebb_bus::streams::TELEMETRY,
        ])
        .await;
        ebb_agent::run_with(config, source, ctx).await
    })
}

/// What the planner would list for a simulated miner: capabilities and firmware as a scan
/// finds them.
pub fn inventory_device(sim: &Simulator, address: Ipv4Addr) -> InventoryDevice {
    let info = sim.miner(address).expect("a simulated miner");
    let capabilities = match info.firmware {
        Firmware::WhatsminerV3 => Capabilities {
            curtail_full: true,
            curtail_efficiency: true,
            power_target: true,
        },
        Firmware::AntminerStock | Firmware::LuxOs => Capabilities {
            curtail_full: true,
            ..Capabilities::default()
        },
    };
    InventoryDevice {
        device_id: DeviceId::new(),
        address: address.to_string(),
        make: info.make.to_string(),
        model: info.model_name.clone(),
        // What registration stores from a scan: the agent drives it without identifying it.
        firmware: Some(info.scanned_firmware()),
        capabilities,
    }
}

/// Starts nats-server, a simulator of `spec`, and an agent whose inventory is the simulator's
/// miners plus `extra`.
pub async fn spawn_agent(
    site: &str,
    spec: FleetSpec,
    sim_opts: SimOptions,
    extra: Vec<InventoryDevice>,
    tweak: impl FnOnce(&mut AgentConfig),
) -> Harness {
    ebb_testkit::init_tracing();
    recorder();
    let nats = NatsServer::start().await.expect("nats-server starts");
    let client = nats.client().await.expect("connects to nats");
    let js = jetstream::new(client.clone());
    streams::ensure_streams(&js).await.expect("streams");
    let site = SiteCode::parse(site).expect("a site code");
    let sim = start_sim(spec, sim_opts).await;
    let mut devices: Vec<InventoryDevice> = sim
        .addresses()
        .into_iter()
        .map(|a| inventory_device(&sim, a))
        .collect();
    devices.extend(extra);
    let results = client
        .subscribe(subjects::result(&site))
        .await
        .expect("subscribes to results");
    let telemetry = client
        .subscribe(subjects::telemetry(&site))
        .await
        .expect("subscribes to telemetry");
    client.flush().await.expect("flush");
    let mut config = test_config(&site);
    tweak(&mut config);
    let shutdown = CancellationToken::new();
    let agent = spawn_run(
        nats.url(),
        config.clone(),
        InventorySource::Static(devices.clone()),
        shutdown.clone(),
    );
    Harness {
        sim,
        site,
        client,
        js,
        devices,
        results,
        telemetry,
        shutdown,
        agent: Some(agent),
        config,
        _nats: nats,
    }
}

/// Starts a simulator without its control API. A shared-mode simulator (another crate's
/// benchmark) holds the miner ports on 0.0.0.0 while it runs, so binding is retried for a while.
pub async fn start_sim(spec: FleetSpec, opts: SimOptions) -> Simulator {
    let opts = opts.with_control_addr(None);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match ebb_minersim::start(spec.clone(), opts.clone()).await {
            Ok(sim) => return sim,
            Err(e) if attempt < 60 && format!("{e:#}").contains("already in use") => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("the simulator starts: {e:#}"),
        }
    }
}

/// Instant ramps on a paused clock: the truth changes only by command, exactly.
pub fn instant_paused() -> SimOptions {
    SimOptions::default()
        .with_physics(Physics::instant())
        .with_paused_clock()
}

/// One unit of each firmware family.
pub fn one_per_protocol() -> FleetSpec {
    mixed(1, 1, 1)
}

/// `wm` Whatsminer M60S (v3), `am` Antminer S19 Pro (stock) and `lux` S19k Pro (LuxOS).
pub fn mixed(wm: u32, am: u32, lux: u32) -> FleetSpec {
    let groups = [
        (Model::M60s, wm),
        (Model::S19Pro, am),
        (Model::S19kProLuxos, lux),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .map(|(m, n)| GroupSpec::new(m, n))
    .collect();
    FleetSpec::new(vec![SiteSpec::new("it", groups)])
}

impl Harness {
    /// A batch of `kind` for these devices.
    pub fn batch(&self, kind: CommandKind, devices: &[InventoryDevice]) -> CommandBatch {
        CommandBatch {
            batch_id: BatchId::new(),
            event_id: Some(EventId::new()),
            site: self.site.clone(),
            command: kind,
            devices: devices
                .iter()
                .map(|d| DeviceRef {
                    device_id: d.device_id,
                    address: d.address.clone(),
                    restore_power_limit_w: None,
                })
                .collect(),
        }
    }

    /// Publishes a batch on `ebb.cmd.<site>` with a fresh `Nats-Msg-Id`, so the same batch can be
    /// sent twice.
    pub async fn send(&self, batch: &CommandBatch) {
        let payload = ebb_bus::encode(&Envelope::new(None, batch.clone())).expect("encodes");
        self.send_raw(payload).await;
    }

    pub async fn send_raw(&self, payload: Vec<u8>) {
        let id = uuid::Uuid::now_v7().to_string();
        publish::publish_acked(&self.js, subjects::cmd(&self.site), &id, payload)
            .await
            .expect("the batch is published");
    }

    /// The results of `batch_id` (all of its parts, until `devices` results arrived).
    pub async fn result(&mut self, batch_id: BatchId, devices: usize) -> BatchResult {
        let mut merged: Option<BatchResult> = None;
        while merged.as_ref().is_none_or(|m| m.results.len() < devices) {
            let msg = tokio::time::timeout(WAIT, self.results.next())
                .await
                .expect("results arrive in time")
                .expect("the subscription is open");
            let part = ebb_bus::decode::<BatchResult>(&msg.payload)
                .expect("results decode")
                .body;
            if part.batch_id != batch_id {
                continue;
            }
            match merged.as_mut() {
                None => merged = Some(part),
                Some(m) => m.results.extend(part.results),
            }
        }
        merged.expect("at least one part")
    }

    /// Sends a batch and waits for its results.
    pub async fn run(&mut self, batch: &CommandBatch) -> BatchResult {
        self.send(batch).await;
        self.result(batch.batch_id, batch.devices.len()).await
    }

    /// The next telemetry message that satisfies `want`.
    pub async fn telemetry_where(
        &mut self,
        want: impl Fn(&TelemetryBatch) -> bool,
    ) -> TelemetryBatch {
        loop {
            let msg = tokio::time::timeout(WAIT, self.telemetry.next())
                .await
                .expect("telemetry arrives in time")
                .expect("the subscription is open");
            let batch = ebb_bus::decode::<TelemetryBatch>(&msg.payload)
                .expect("telemetry decodes")
                .body;
            if want(&batch) {
                return batch;
            }
        }
    }

    /// Asserts that no result message arrives within `wait`.
    pub async fn no_more_results(&mut self, wait: Duration) {
        if let Ok(Some(msg)) = tokio::time::timeout(wait, self.results.next()).await {
            let part = ebb_bus::decode::<BatchResult>(&msg.payload).map(|e| e.body);
            panic!("unexpected result: {part:?}");
        }
    }

    /// The agent's durable consumer, as the server sees it (waiting for the agent to create it).
    pub async fn consumer_info(&self) -> jetstream::consumer::Info {
        let stream = self
            .js
            .get_stream(streams::CMD)
            .await
            .expect("the CMD stream");
        let name = format!("agent-{}", self.site);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match stream
                .get_consumer::<jetstream::consumer::pull::Config>(&name)
                .await
            {
                Ok(mut consumer) => return consumer.info().await.expect("consumer info").clone(),
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "waiting for the agent's consumer");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("the agent's consumer: {e}"),
            }
        }
    }

    pub fn address(&self, d: &InventoryDevice) -> Ipv4Addr {
        d.address.parse().expect("an IPv4 address")
    }

    /// Devices whose simulated model runs `firmware`.
    pub fn of(&self, firmware: Firmware) -> Vec<InventoryDevice> {
        self.devices
            .iter()
            .filter(|d| {
                d.address
                    .parse()
                    .ok()
                    .and_then(|a| self.sim.miner(a))
                    .is_some_and(|m| m.firmware == firmware)
            })
            .cloned()
            .collect()
    }

    /// Stops the agent, which must exit cleanly within `within`; nats and the simulator stay up.
    pub async fn stop_agent(&mut self, within: Duration) {
        self.shutdown.cancel();
        if let Some(agent) = self.agent.take() {
            let exited = tokio::time::timeout(within, agent)
                .await
                .expect("the agent stops in time");
            exited
                .expect("the agent task does not panic")
                .expect("the agent exits cleanly");
        }
    }

    /// Kills the agent outright: its task is aborted mid-whatever, nothing is handed back or
    /// acked, and its NATS connection goes with it (as when the process is SIGKILLed).
    pub async fn kill_agent(&mut self) {
        if let Some(agent) = self.agent.take() {
            agent.abort();
            let joined = agent.await;
            assert!(
                joined
                    .as_ref()
                    .is_err_and(tokio::task::JoinError::is_cancelled),
                "the agent was running until killed: {joined:?}"
            );
        }
    }

    /// Starts a new agent, with the same settings and inventory, after [`Harness::stop_agent`].
    pub fn restart_agent(&mut self) {
        assert!(self.agent.is_none(), "stop the running agent first");
        self.shutdown = CancellationToken::new();
        let source = InventorySource::Static(self.devices.clone());
        self.agent = Some(spawn_run(
            self._nats.url(),
            self.config.clone(),
            source,
            self.shutdown.clone(),
        ));
    }

    /// Stops the agent (which must exit cleanly), then the simulator.
    pub async fn stop(mut self) {
        self.stop_agent(Duration::from_secs(30)).await;
        self.sim.shutdown().await;
    }
}

/// The outcome of each result, in result order.
pub fn outcomes(r: &BatchResult) -> Vec<Outcome> {
    r.results.iter().map(|d| d.outcome.clone()).collect()
}

/// Asserts every device got an outcome matching `want`, naming the first that did not.
#[track_caller]
pub fn assert_all(r: &BatchResult, what: &str, want: impl Fn(&Outcome) -> bool) {
    if let Some(bad) = r.results.iter().find(|d| !want(&d.outcome)) {
        let mut counts = std::collections::BTreeMap::new();
        for d in &r.results {
            *counts.entry(d.outcome.to_string()).or_insert(0) += 1;
        }
        panic!(
            "{what}: device {} got {} (all outcomes: {counts:?})",
            bad.device_id, bad.outcome
        );
    }
}

pub use ebb_testkit::metrics::{counter, recorder};
