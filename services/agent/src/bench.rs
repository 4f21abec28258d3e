//! Benchmarks of the agent's miner path against a simulated fleet, for `ebb bench command` and
//! `ebb bench poll` and the figures in `docs/BENCHMARKS.md`:
//!
//! - [`bench_command`]: one `curtail{full}` to every miner, with the latency of each miner and
//!   the simulator's true state afterwards;
//! - [`bench_poll`]: one full telemetry poll of every miner, with the CPU it costs and the
//!   simulator's memory per miner.
//!
//! Each call starts its own simulator (minersim in shared mode, instant physics) with a third
//! each of Whatsminer v3, stock Antminer and LuxOS miners, and returns a report that serializes
//! as one JSON object. Shared mode binds ports 80, 4028 and 4433 on 0.0.0.0, so a benchmark
//! must run alone: it fails, saying so, when anything holds those ports.
//!
//! The miners are driven the way the agent drives them: the same handle pool (asic-rs
//! `MinerFactory` identification, cached per address), the same reads and controls
//! (`driver::read`, `driver::control`) with the agent's default deadlines, the same sample
//! validation, `max_in_flight` miners at a time. Only NATS is left out. `execute::execute` and
//! `telemetry::poll_inventory` take an `Agent`, which can only be built by `run_with` with a
//! NATS connection, so the per-miner steps they run for a curtail and a poll are restated here
//! (`curtail_one`, `poll_one`); keep them in step with `execute::drive` and
//! `telemetry::poll_address`.
//!
//! Identification (the first contact with each miner, which the agent does once and caches) is
//! timed as its own phase, before the phase a benchmark measures. Durations come from a
//! monotonic clock; CPU time is the whole process's (agent and simulator together).

use crate::config::AgentConfig;
use crate::driver::{self, MinerError, MinerPool, Reading};
use crate::instruments::Op;
use crate::telemetry::{self, Polled};
use anyhow::Context;
use asic_rs::core::data::collector::DataField;
use asic_rs::core::traits::miner::Miner;
use ebb_domain::{DeviceId, SiteCode};
use ebb_minersim::{
    Firmware, FleetSpec, GroupSpec, ListenMode, Mode, Model, Physics, SimOptions, Simulator,
    SiteSpec,
};
use futures::StreamExt;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

/// The most miners one benchmark simulates: the simulator's address space from a random base
/// holds a few hundred thousand, and 200,000 is twice the fleet the issue asks for.
pub const MAX_MINERS: usize = 200_000;

/// Kernel clock ticks per second for `/proc/self/stat` times. Linux exports these in USER_HZ,
/// which is 100 on every architecture Ebb runs on (`getconf CLK_TCK` prints 100).
const CLK_TCK: f64 = 100.0;

/// How a benchmark drives the miners; the defaults are the agent's.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchOptions {
    /// Miners driven at once (the agent's `max_in_flight`).
    pub max_in_flight: usize,
    /// Deadline of each read and of each identification (the agent's `call_timeout`).
    pub call_timeout: Duration,
    /// Deadline of each control call (the agent's `control_timeout`).
    pub control_timeout: Duration,
    /// Miner handles kept between calls (the agent's `max_cached_miners`).
    pub max_cached_miners: usize,
}

impl BenchOptions {
    /// The settings an agent with `config` would use.
    pub fn from_config(config: &AgentConfig) -> Self {
        Self {
            max_in_flight: config.max_in_flight,
            call_timeout: config.call_timeout,
            control_timeout: config.control_timeout,
            max_cached_miners: config.max_cached_miners,
        }
    }

    fn validate(&self, miners: usize) -> anyhow::Result<()> {
        let mut problems = Vec::new();
        if !(1..=MAX_MINERS).contains(&miners) {
            problems.push(format!(
                "miners must be between 1 and {MAX_MINERS}, got {miners}"
            ));
        }
        if !(1..=10_000).contains(&self.max_in_flight) {
            problems.push(format!(
                "max_in_flight must be between 1 and 10000, got {}",
                self.max_in_flight
            ));
        }
        if self.call_timeout.is_zero() || self.control_timeout.is_zero() {
            problems.push("call_timeout and control_timeout must be positive".to_owned());
        }
        if self.max_cached_miners == 0 {
            problems.push("max_cached_miners must be positive".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("invalid benchmark options: {}", problems.join("; "))
        }
    }
}

impl Default for BenchOptions {
    fn default() -> Self {
        let site = SiteCode::parse("bench").expect("\"bench\" is a valid site code");
        Self::from_config(&AgentConfig::new(site))
    }
}

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

/// Sends `curtail{full}` to every miner of a fresh simulated fleet of `miners`.
#[tracing::instrument(skip_all, fields(miners = miners), err)]
pub async fn bench_command(miners: usize, options: BenchOptions) -> anyhow::Result<CommandReport> {
    options.validate(miners)?;
    let started = Instant::now();
    let sim = start_sim(miners).await?;
    let sim_start_seconds = started.elapsed().as_secs_f64();
    let rss_sim = rss_bytes();
    let fleet = Fleet::of(&sim);
    let pool = MinerPool::new(options.max_cached_miners, options.call_timeout);
    let (identify_seconds, identified) = identify(&pool, &fleet, options.max_in_flight).await;

    let cpu_before = cpu_seconds();
    let opens_before = tcp_active_opens();
    let started = Instant::now();
    let mut runs = Vec::with_capacity(fleet.len());
    for (i, &ip) in fleet.addresses.iter().enumerate() {
        runs.push(indexed(i, curtail_one(&pool, IpAddr::V4(ip), &options)));
    }
    let done = in_order(
        futures::stream::iter(runs)
            .buffer_unordered(options.max_in_flight)
            .collect()
            .await,
    );
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_delta(cpu_before);
    let connections = opens_delta(opens_before, miners);
    let rss_agent = rss_bytes();

    let confirmed_asleep = fleet
        .addresses
        .iter()
        .filter(|&&ip| {
            sim.truth(ip).is_ok_and(|t| {
                t.mode == Mode::Sleeping && t.hashrate_ths <= driver::HASHING_EPSILON_THS
            })
        })
        .count();
    sim.shutdown().await;

    let count = |want: Done| done.iter().filter(|(d, _)| *d == want).count();
    let latencies: Vec<Duration> = done.iter().map(|(_, took)| *took).collect();
    Ok(CommandReport {
        benchmark: "command",
        miners,
        max_in_flight: options.max_in_flight,
        sim_start_seconds: round(sim_start_seconds, 3),
        identify_seconds: round(identify_seconds, 3),
        identified,
        seconds: round(seconds, 3),
        per_second: round(miners as f64 / seconds, 1),
        p50_ms: percentile_ms(&latencies, 0.50),
        p99_ms: percentile_ms(&latencies, 0.99),
        max_ms: percentile_ms(&latencies, 1.0),
        ok: count(Done::Ok),
        already_in_state: count(Done::AlreadyInState),
        failed: count(Done::Failed),
        confirmed_asleep,
        cpu_seconds: cpu.map(|c| round(c, 2)),
        connections_per_miner: connections,
        agent_bytes_per_miner: per_miner(rss_agent, rss_sim, miners),
        by_firmware: fleet.by_firmware(&done, |d| *d == Done::Failed),
    })
}

/// Polls every miner of a fresh simulated fleet of `miners` once.
#[tracing::instrument(skip_all, fields(miners = miners), err)]
pub async fn bench_poll(miners: usize, options: BenchOptions) -> anyhow::Result<PollReport> {
    options.validate(miners)?;
    let rss_before = rss_bytes();
    let started = Instant::now();
    let sim = start_sim(miners).await?;
    let sim_start_seconds = started.elapsed().as_secs_f64();
    let rss_sim = rss_bytes();
    let fleet = Fleet::of(&sim);
    let pool = MinerPool::new(options.max_cached_miners, options.call_timeout);
    let (identify_seconds, identified) = identify(&pool, &fleet, options.max_in_flight).await;
    let rss_agent = rss_bytes();

    let cpu_before = cpu_seconds();
    let opens_before = tcp_active_opens();
    let started = Instant::now();
    let mut polls = Vec::with_capacity(fleet.len());
    for (i, &ip) in fleet.addresses.iter().enumerate() {
        polls.push(indexed(
            i,
            poll_one(&pool, IpAddr::V4(ip), options.call_timeout),
        ));
    }
    let polled = in_order(
        futures::stream::iter(polls)
            .buffer_unordered(options.max_in_flight)
            .collect()
            .await,
    );
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_delta(cpu_before);
    let connections = opens_delta(opens_before, miners);
    sim.shutdown().await;

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
        max_in_flight: options.max_in_flight,
        sim_start_seconds: round(sim_start_seconds, 3),
        identify_seconds: round(identify_seconds, 3),
        identified,
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

/// Starts a shared-mode simulator of `miners`, a third of each protocol, with instant physics.
async fn start_sim(miners: usize) -> anyhow::Result<Simulator> {
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

/// The simulated fleet in address order, with each miner's protocol.
struct Fleet {
    addresses: Vec<Ipv4Addr>,
    firmware: Vec<Firmware>,
}

impl Fleet {
    fn of(sim: &Simulator) -> Self {
        let (addresses, firmware) = sim
            .miners()
            .into_iter()
            .map(|m| (m.address, m.firmware))
            .unzip();
        Self {
            addresses,
            firmware,
        }
    }

    fn len(&self) -> usize {
        self.addresses.len()
    }

    /// Latency percentiles and failures per protocol; `done` is in fleet order.
    fn by_firmware<T>(
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

/// Identifies every miner into the pool, as the agent's first contact with each does. Returns
/// the phase's seconds and how many were identified.
async fn identify(pool: &MinerPool, fleet: &Fleet, max_in_flight: usize) -> (f64, usize) {
    let started = Instant::now();
    let mut gets = Vec::with_capacity(fleet.len());
    for &ip in &fleet.addresses {
        gets.push(pool.get(IpAddr::V4(ip)));
    }
    let identified = futures::stream::iter(gets)
        .buffer_unordered(max_in_flight)
        .filter(|r| std::future::ready(r.is_ok()))
        .count()
        .await;
    (started.elapsed().as_secs_f64(), identified)
}

/// Tags a miner's future with its place in the fleet. The phases run like the agent's
/// (`buffer_unordered`, so a slow miner holds one slot, not the queue) and sort afterwards.
async fn indexed<T>(i: usize, run: impl Future<Output = T>) -> (usize, T) {
    (i, run.await)
}

fn in_order<T>(mut done: Vec<(usize, T)>) -> Vec<T> {
    done.sort_unstable_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, t)| t).collect()
}

/// A command's outcome, as far as the benchmark counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Done {
    Ok,
    AlreadyInState,
    Failed,
}

/// One miner's `curtail{full}` as `execute::execute_device` and `execute::drive` run it: the
/// handle, the state read (with the power limit where the firmware can set one), the pause
/// unless already asleep, then the read right after the command. Returns the outcome and how
/// long the miner took.
async fn curtail_one(pool: &MinerPool, ip: IpAddr, options: &BenchOptions) -> (Done, Duration) {
    let started = Instant::now();
    let done = match pool.get(ip).await {
        Ok(miner) => {
            let done = match pause(&*miner, options).await {
                Ok(done) => done,
                Err(e) => {
                    if e.is_transport() {
                        pool.forget(ip);
                    }
                    Done::Failed
                }
            };
            if done != Done::Failed {
                // The agent reads the miner again at once so confirmation need not wait.
                let _after = poll_handle(pool, ip, &*miner, options.call_timeout).await;
            }
            done
        }
        Err(e) => {
            if e.is_transport() {
                pool.forget(ip);
            }
            Done::Failed
        }
    };
    (done, started.elapsed())
}

/// The `curtail{full}` branch of `execute::drive`.
async fn pause(miner: &dyn Miner, options: &BenchOptions) -> Result<Done, MinerError> {
    if !(miner.supports_pause() && miner.supports_resume()) {
        return Err(MinerError::Unsupported);
    }
    let mut fields = driver::STATE_FIELDS.to_vec();
    if miner.supports_set_power_limit() {
        fields.push(DataField::TuningTarget);
    }
    let state = match driver::read(miner, &fields, options.call_timeout).await {
        Ok(r) => r,
        Err(e) if e.is_transport() => return Err(e),
        Err(_) => Reading::default(),
    };
    if state.asleep() {
        return Ok(Done::AlreadyInState);
    }
    driver::control(Op::Pause, options.control_timeout, miner.pause(None)).await?;
    Ok(Done::Ok)
}

/// One miner's poll as `telemetry::poll_address` runs it. Returns the sample and how long the
/// miner took.
async fn poll_one(pool: &MinerPool, ip: IpAddr, deadline: Duration) -> (Polled, Duration) {
    let started = Instant::now();
    let polled = match pool.get(ip).await {
        Ok(miner) => poll_handle(pool, ip, &*miner, deadline).await,
        Err(MinerError::Timeout | MinerError::Unreachable(_)) => {
            Polled::unreachable(DeviceId::new())
        }
        Err(_) => Polled::Invalid,
    };
    (polled, started.elapsed())
}

/// `telemetry::poll_handle`: power and hashrate, validated into a sample.
async fn poll_handle(
    pool: &MinerPool,
    ip: IpAddr,
    miner: &dyn Miner,
    deadline: Duration,
) -> Polled {
    let device_id = DeviceId::new();
    match driver::read(miner, driver::TELEMETRY_FIELDS, deadline).await {
        Ok(reading) => {
            telemetry::sample(device_id, &reading, chrono::Utc::now().timestamp_millis())
        }
        Err(e) if e.is_transport() => {
            pool.forget(ip);
            Polled::unreachable(device_id)
        }
        Err(_) => Polled::Invalid,
    }
}

/// The `p` quantile (nearest rank) of `values`, in milliseconds to 0.1 ms; 0 when empty.
fn percentile_ms(values: &[Duration], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    round(sorted[rank - 1].as_secs_f64() * 1000.0, 1)
}

fn round(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}

/// User plus system CPU time of this process so far, from `/proc/self/stat` (Linux only).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_cpu_seconds(&stat)
}

/// Fields 14 and 15 (utime, stime) of a `/proc/<pid>/stat` line, counted after the command
/// name, which is parenthesized and may hold spaces.
fn parse_cpu_seconds(stat: &str) -> Option<f64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / CLK_TCK)
}

fn cpu_delta(before: Option<f64>) -> Option<f64> {
    Some(cpu_seconds()? - before?)
}

/// Growth of resident memory between two readings, per miner.
fn per_miner(after: Option<u64>, before: Option<u64>, miners: usize) -> Option<u64> {
    Some(after?.saturating_sub(before?) / miners as u64)
}

/// TCP connections this network namespace has opened (`ActiveOpens` in `/proc/net/snmp`).
fn tcp_active_opens() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    parse_active_opens(&snmp)
}

/// The `ActiveOpens` column of the two `Tcp:` lines (names, then values).
fn parse_active_opens(snmp: &str) -> Option<u64> {
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next()?, tcp.next()?);
    let column = names.split_whitespace().position(|n| n == "ActiveOpens")?;
    values.split_whitespace().nth(column)?.parse().ok()
}

fn opens_delta(before: Option<u64>, miners: usize) -> Option<f64> {
    let opened = tcp_active_opens()?.checked_sub(before?)?;
    Some(round(opened as f64 / miners as f64, 2))
}

/// Resident memory of this process, from `VmRSS` in `/proc/self/status` (Linux only).
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_rss_bytes(&status)
}

fn parse_rss_bytes(status: &str) -> Option<u64> {
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_figures() {
        let stat = "4242 (tokio (rt) 1) S 1 4242 4242 0 -1 4194560 9000 0 0 0 1234 56 0 0 20 0 \
                    9 0 100 1000000 2000 18446744073709551615";
        assert_eq!(parse_cpu_seconds(stat), Some(12.9));
        assert_eq!(parse_cpu_seconds("garbage"), None);
        let status = "Name:\tebb\nVmPeak:\t  9000 kB\nVmRSS:\t   20480 kB\nThreads:\t3\n";
        assert_eq!(parse_rss_bytes(status), Some(20 * 1024 * 1024));
        assert_eq!(parse_rss_bytes("Name:\tebb\n"), None);
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\nTcp: RtoAlgorithm RtoMin ActiveOpens PassiveOpens\nTcp: 1 200 4711 4700\n";
        assert_eq!(parse_active_opens(snmp), Some(4711));
        assert_eq!(parse_active_opens("Tcp: ActiveOpens\n"), None);
        assert!(cpu_seconds().is_some() && rss_bytes().is_some() && tcp_active_opens().is_some());
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let ms =
            |v: &[u64]| -> Vec<Duration> { v.iter().map(|&m| Duration::from_millis(m)).collect() };
        let hundred: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile_ms(&ms(&hundred), 0.50), 50.0);
        assert_eq!(percentile_ms(&ms(&hundred), 0.99), 99.0);
        assert_eq!(percentile_ms(&ms(&hundred), 1.0), 100.0);
        assert_eq!(percentile_ms(&ms(&[7]), 0.99), 7.0);
        assert_eq!(percentile_ms(&[], 0.5), 0.0);
    }

    #[test]
    fn options_default_to_the_agent_and_are_checked() {
        let o = BenchOptions::default();
        assert_eq!(o.max_in_flight, 256);
        assert!(o.validate(100_000).is_ok());
        let err = BenchOptions {
            max_in_flight: 0,
            ..o
        }
        .validate(0)
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("miners") && err.contains("max_in_flight"),
            "{err}"
        );
    }

    #[test]
    fn benchmarks_can_run_on_a_spawned_task() {
        fn assert_send<T: Send>(_: T) {}
        assert_send(bench_command(1, BenchOptions::default()));
        assert_send(bench_poll(1, BenchOptions::default()));
    }
}
