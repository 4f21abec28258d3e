//! `ebb bench poll`: one full telemetry poll of every miner of a fresh simulated fleet, by the
//! agent's own [`ebb_agent::poll_each`].

use super::fleet::{FirmwareFigures, Fleet, Registration, start_sim};
use super::measure::{
    cpu_delta, cpu_seconds, opens_delta, per_miner, percentile_ms, round, rss_bytes,
    tcp_active_opens,
};
use ebb_agent::{MinerPathSettings, Polled};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What one telemetry poll of every miner did.
#[derive(Clone, Debug, Serialize)]
pub struct PollReport {
    /// Always `"poll"`.
    pub benchmark: &'static str,
    /// Simulated miners, a third of each protocol.
    pub miners: usize,
    /// Miners polled at once.
    pub max_in_flight: usize,
    /// Starting the simulator (not part of any other figure).
    pub sim_start_seconds: f64,
    /// Identifying every miner once, before the poll (the agent's first cycle does this too).
    pub identify_seconds: f64,
    /// Miners identified.
    pub identified: usize,
    /// Whether the inventory knew each miner's firmware (registered) or not (`--unregistered`:
    /// asic-rs alone, every miner identified first).
    pub registered: bool,
    /// asic-rs identifications during the measured phase (0 for registered miners).
    pub identifications: u64,
    /// Wall time of the poll: every miner's power and hashrate read and validated.
    pub seconds: f64,
    /// Miners per second in the poll.
    pub per_second: f64,
    /// Median time one miner's read took.
    pub p50_ms: f64,
    /// 99th percentile of the same.
    pub p99_ms: f64,
    /// Process CPU time (agent and simulator) during the poll.
    pub cpu_seconds: Option<f64>,
    /// `cpu_seconds` per 10,000 valid samples.
    pub cpu_seconds_per_10k_samples: Option<f64>,
    /// TCP connections opened per miner during the poll (counted for the whole network
    /// namespace, so only meaningful when the benchmark runs alone).
    pub connections_per_miner: Option<f64>,
    /// Growth of resident memory while the simulator started, per miner.
    pub sim_bytes_per_miner: Option<u64>,
    /// Growth of resident memory while the agent identified every miner (its handle cache),
    /// per miner.
    pub agent_bytes_per_miner: Option<u64>,
    /// Samples with a valid power and hashrate.
    pub valid_samples: usize,
    /// Miners reported unreachable.
    pub unreachable: usize,
    /// Samples dropped as invalid.
    pub invalid: usize,
    /// The same figures per protocol.
    pub by_firmware: BTreeMap<String, FirmwareFigures>,
}

/// Polls every miner of a fresh simulated fleet of `miners` once, on a miner path with
/// `settings`.
#[tracing::instrument(skip_all, fields(miners = miners), err)]
pub async fn bench_poll(
    miners: usize,
    settings: MinerPathSettings,
    registration: Registration,
) -> anyhow::Result<PollReport> {
    super::validate(miners, &settings)?;
    let rss_before = rss_bytes();
    let started = Instant::now();
    let sim = start_sim(miners).await?;
    let sim_start_seconds = started.elapsed().as_secs_f64();
    let rss_sim = rss_bytes();
    let fleet = Fleet::with(&sim, registration);
    let path = fleet.path(settings);
    let (identify_seconds, identified) = fleet.warm(&path).await;
    let identifications_before = path.identifications();
    let rss_agent = rss_bytes();

    let cpu_before = cpu_seconds();
    let opens_before = tcp_active_opens();
    let started = Instant::now();
    let polls = ebb_agent::poll_each(&path, &fleet.inventory).await;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_delta(cpu_before);
    let connections = opens_delta(opens_before, miners);
    sim.shutdown().await;

    let polled: Vec<(Polled, Duration)> = polls.into_iter().map(|p| (p.polled, p.took)).collect();
    let valid_samples = polled
        .iter()
        .filter(|(p, _)| matches!(p, Polled::Sample(s) if s.reachable))
        .count();
    let unreachable = polled
        .iter()
        .filter(|(p, _)| matches!(p, Polled::Sample(s) if !s.reachable))
        .count();
    let invalid = polled.iter().filter(|(p, _)| *p == Polled::Invalid).count();
    let latencies: Vec<Duration> = polled.iter().map(|(_, took)| *took).collect();
    Ok(PollReport {
        benchmark: "poll",
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
        cpu_seconds: cpu.map(|c| round(c, 2)),
        cpu_seconds_per_10k_samples: cpu
            .filter(|_| valid_samples > 0)
            .map(|c| round(c * 10_000.0 / valid_samples as f64, 3)),
        connections_per_miner: connections,
        sim_bytes_per_miner: per_miner(rss_sim, rss_before, miners),
        agent_bytes_per_miner: per_miner(rss_agent, rss_sim, miners),
        valid_samples,
        unreachable,
        invalid,
        by_firmware: fleet.by_firmware(&polled, |p| !matches!(p, Polled::Sample(s) if s.reachable)),
    })
}
