//! `ebb bench command`: one `curtail{full}` batch to every miner of a fresh simulated fleet,
//! executed by the agent's own [`ebb_agent::execute_each`].

use super::fleet::{FirmwareFigures, Fleet, Registration, start_sim};
use super::measure::{
    cpu_delta, cpu_seconds, opens_delta, per_miner, percentile_ms, round, rss_bytes,
    tcp_active_opens,
};
use ebb_agent::{HASHING_EPSILON_THS, MinerPathSettings};
use ebb_bus::{CommandBatch, DeviceRef};
use ebb_domain::{BatchId, CommandKind, CurtailLevel, Outcome, SiteCode};
use ebb_minersim::Mode;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What one `curtail{full}` of every miner did.
#[derive(Clone, Debug, Serialize)]
pub struct CommandReport {
    /// Always `"command"`.
    pub benchmark: &'static str,
    /// Simulated miners, a third of each protocol.
    pub miners: usize,
    /// Miners driven at once.
    pub max_in_flight: usize,
    /// Starting the simulator (not part of any other figure).
    pub sim_start_seconds: f64,
    /// Identifying every miner once, before the command phase.
    pub identify_seconds: f64,
    /// Miners identified.
    pub identified: usize,
    /// Whether the inventory knew each miner's firmware (registered) or not (`--unregistered`:
    /// asic-rs alone, every miner identified first).
    pub registered: bool,
    /// asic-rs identifications during the measured phase (0 for registered miners).
    pub identifications: u64,
    /// Wall time of the command phase: every miner read, paused and read again.
    pub seconds: f64,
    /// Miners per second in the command phase.
    pub per_second: f64,
    /// Median time one miner took (state read, pause, read after).
    pub p50_ms: f64,
    /// 99th percentile of the same.
    pub p99_ms: f64,
    /// The slowest miner.
    pub max_ms: f64,
    /// Miners whose outcome was `ok`.
    pub ok: usize,
    /// Miners that were already asleep.
    pub already_in_state: usize,
    /// Miners with any other outcome.
    pub failed: usize,
    /// Miners the simulator says are asleep (not hashing) after the command phase.
    pub confirmed_asleep: usize,
    /// Process CPU time (agent and simulator) during the command phase.
    pub cpu_seconds: Option<f64>,
    /// TCP connections opened per miner during the command phase (counted for the whole network
    /// namespace, so only meaningful when the benchmark runs alone).
    pub connections_per_miner: Option<f64>,
    /// Growth of resident memory from the simulator's start to the end of the command phase
    /// (the agent's handles, with the HTTP clients asic-rs builds on first use), per miner.
    pub agent_bytes_per_miner: Option<u64>,
    /// The same figures per protocol.
    pub by_firmware: BTreeMap<String, FirmwareFigures>,
}

/// Sends `curtail{full}` to every miner of a fresh simulated fleet of `miners`, as one batch
/// executed on a miner path with `settings`.
///
/// The whole fleet is one batch, `max_in_flight` miners at a time, so the figures measure the
/// miner path alone; the running agent gets a large fleet as several bounded batches, one at a
/// time.
#[tracing::instrument(skip_all, fields(miners = miners), err)]
pub async fn bench_command(
    miners: usize,
    settings: MinerPathSettings,
    registration: Registration,
) -> anyhow::Result<CommandReport> {
    super::validate(miners, &settings)?;
    let started = Instant::now();
    let sim = start_sim(miners).await?;
    let sim_start_seconds = started.elapsed().as_secs_f64();
    let rss_sim = rss_bytes();
    let fleet = Fleet::with(&sim, registration);
    let path = fleet.path(settings);
    let (identify_seconds, identified) = fleet.warm(&path).await;
    let identifications_before = path.identifications();
    let batch = CommandBatch {
        batch_id: BatchId::new(),
        event_id: None,
        site: SiteCode::parse("bench")?,
        command: CommandKind::Curtail {
            level: CurtailLevel::Full,
        },
        devices: fleet
            .inventory
            .devices
            .iter()
            .map(|d| DeviceRef {
                device_id: d.device_id,
                address: d.address.clone(),
                restore_power_limit_w: None,
            })
            .collect(),
    };

    let cpu_before = cpu_seconds();
    let opens_before = tcp_active_opens();
    let started = Instant::now();
    let runs = ebb_agent::execute_each(&path, &batch, &fleet.inventory).await;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_delta(cpu_before);
    let connections = opens_delta(opens_before, miners);
    let rss_agent = rss_bytes();

    let confirmed_asleep = fleet
        .addresses
        .iter()
        .filter(|&&ip| {
            sim.truth(ip)
                .is_ok_and(|t| t.mode == Mode::Sleeping && t.hashrate_ths <= HASHING_EPSILON_THS)
        })
        .count();
    sim.shutdown().await;

    // `None`: deferred for the agent's own shortage (no outcome), counted as failed here.
    let done: Vec<(Option<Outcome>, Duration)> = runs
        .into_iter()
        .map(|r| (r.result.map(|r| r.outcome), r.took))
        .collect();
    let failed = |o: &Option<Outcome>| !matches!(o, Some(Outcome::Ok | Outcome::AlreadyInState));
    let latencies: Vec<Duration> = done.iter().map(|(_, took)| *took).collect();
    Ok(CommandReport {
        benchmark: "command",
        miners,
        max_in_flight: path.settings().max_in_flight,
        sim_start_seconds: round(sim_start_seconds, 3),
        identify_seconds: round(identify_seconds, 3),
        identified,
        registered: registration == Registration::Registered,
        identifications: path.identifications() - identifications_before,
        seconds: round(seconds, 3),
        per_second: round(miners as f64 / seconds, 1),
        p50_ms: percentile_ms(&latencies, 0.50),
        p99_ms: percentile_ms(&latencies, 0.99),
        max_ms: percentile_ms(&latencies, 1.0),
        ok: done.iter().filter(|(o, _)| *o == Some(Outcome::Ok)).count(),
        already_in_state: done
            .iter()
            .filter(|(o, _)| *o == Some(Outcome::AlreadyInState))
            .count(),
        failed: done.iter().filter(|(o, _)| failed(o)).count(),
        confirmed_asleep,
        cpu_seconds: cpu.map(|c| round(c, 2)),
        connections_per_miner: connections,
        agent_bytes_per_miner: per_miner(rss_agent, rss_sim, miners),
        by_firmware: fleet.by_firmware(&done, failed),
    })
}
