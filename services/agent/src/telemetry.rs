//! Telemetry: every `poll_interval` each inventory miner is read (power and hashrate only, the
//! cheapest commands each firmware has) with bounded parallelism, and the cycle's samples are
//! published on `ebb.telemetry.<site>`, split into bounded messages.
//!
//! Architecture invariant: a sample that reaches the bus is either `reachable: false` with no
//! values, or carries a finite, non-negative power in watts and hashrate in TH/s. Anything else
//! (NaN, infinite, negative, implausibly large or missing) is dropped here and counted, so it
//! never reaches `device_state`. A miner that does not answer is never reported as zero power.
//!
//! Polling needs no NATS: [`poll`] and the per-miner functions run on a [`MinerPath`]; only
//! [`publish`] and [`poll_loop`] belong to the running agent.

use crate::agent::Agent;
use crate::driver::{self, MinerError, Reading};
use crate::instruments;
use crate::inventory::Snapshot;
use crate::miner_path::MinerPath;
use crate::native::Want;
use ebb_bus::publish::{self, PublishError};
use ebb_bus::split::{self, SplitError};
use ebb_bus::{Envelope, TelemetryBatch, TelemetrySample, subjects};
use ebb_domain::{DeviceId, Watts};
use futures::StreamExt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A hashrate above this (TH/s) is not a single miner's: the reading is garbage.
pub const MAX_PLAUSIBLE_THS: f64 = 10_000.0;

/// What polling one miner produced.
#[derive(Clone, Debug, PartialEq)]
pub enum Polled {
    /// A sample to publish (reachable with values, or unreachable without).
    Sample(TelemetrySample),
    /// The miner answered with values that cannot be true; dropped and counted.
    Invalid,
    /// The agent ran short of its own resources before it could ask: no sample, since the
    /// miner said nothing either way.
    Deferred,
}

impl Polled {
    /// Whether this says something about the miner (a sample, or a dropped invalid reply).
    pub fn is_sample(&self) -> bool {
        !matches!(self, Polled::Deferred)
    }

    pub fn unreachable(device_id: DeviceId) -> Self {
        Polled::Sample(TelemetrySample {
            device_id,
            reachable: false,
            power_w: None,
            hashrate_ths: None,
            sampled_at_ms: now_ms(),
        })
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Turns a reading into a sample, or `Invalid` when a value is missing or impossible.
/// `sampled_at_ms` is when the read was asked, not answered: a poll that began before a command
/// and came back after it must not look newer than the command's own read-after.
pub fn sample(device_id: DeviceId, reading: &Reading, sampled_at_ms: i64) -> Polled {
    let power = reading
        .power_w
        .and_then(|p| Watts::new(p).ok())
        .map(Watts::get);
    let hashrate = reading
        .hashrate_ths
        .filter(|h| h.is_finite() && (0.0..=MAX_PLAUSIBLE_THS).contains(h));
    match (power, hashrate) {
        (Some(power_w), Some(hashrate_ths)) if sampled_at_ms > 0 => {
            Polled::Sample(TelemetrySample {
                device_id,
                reachable: true,
                power_w: Some(power_w),
                hashrate_ths: Some(hashrate_ths),
                sampled_at_ms,
            })
        }
        _ => Polled::Invalid,
    }
}

/// Reads one miner's power and hashrate through an existing handle.
pub async fn poll_handle(
    path: &MinerPath,
    device_id: DeviceId,
    ip: IpAddr,
    miner: &dyn asic_rs::core::traits::miner::Miner,
) -> Polled {
    let asked = now_ms();
    match driver::read(
        miner,
        driver::TELEMETRY_FIELDS,
        path.settings().call_timeout,
    )
    .await
    {
        Ok(reading) => sample(device_id, &reading, asked),
        Err(e) if e.is_starved() => Polled::Deferred,
        Err(e) if e.is_transport() => {
            path.pool.forget(ip);
            Polled::unreachable(device_id)
        }
        // It answered, but with nothing usable (a reply that does not parse, an error status).
        Err(_) => Polled::Invalid,
    }
}

/// Reads one miner by address: a registered miner of a firmware the agent speaks itself
/// (`firmware` as its registration stored it) in one connection and without identification,
/// any other through asic-rs, identifying it first if needed. A native answer the agent does
/// not understand (the miner may have been reflashed) falls back to asic-rs.
pub async fn poll_address(
    path: &MinerPath,
    device_id: DeviceId,
    address: &str,
    firmware: Option<&str>,
) -> Polled {
    let Ok(ip) = address.trim().parse::<IpAddr>() else {
        return Polled::unreachable(device_id);
    };
    if let Some((native, protocol)) = path.native_for(firmware) {
        let deadline = path.settings().call_timeout;
        let asked = now_ms();
        match native.read(protocol, ip, Want::Telemetry, deadline).await {
            Ok(r) if r.power_w.is_some() && r.hashrate_ths.is_some() => {
                return sample(device_id, &r, asked);
            }
            Err(e) if e.is_starved() => return Polled::Deferred,
            Err(e) if e.is_transport() => return Polled::unreachable(device_id),
            Ok(_) | Err(_) => {
                tracing::debug!(%ip, protocol = protocol.label(), "native read not understood, asking asic-rs");
            }
        }
    }
    match path.pool.get(ip).await {
        Ok(miner) => poll_handle(path, device_id, ip, &*miner).await,
        Err(MinerError::Timeout | MinerError::Unreachable(_)) => Polled::unreachable(device_id),
        Err(MinerError::Starved(_)) => Polled::Deferred,
        Err(_) => Polled::Invalid,
    }
}

/// One miner's part of a poll.
#[derive(Clone, Debug, PartialEq)]
pub struct DevicePoll {
    pub polled: Polled,
    /// From the miner's turn to its reply (or to giving up on it).
    pub took: Duration,
}

/// Times one miner from its turn: an in-flight slot of the agent's budget. A miner the agent
/// had no slot for is deferred to the next cycle.
async fn poll_indexed(
    path: &MinerPath,
    device_id: DeviceId,
    address: &str,
    firmware: Option<&str>,
    i: usize,
) -> (usize, DevicePoll) {
    // Commands first: while a batch executes, this miner's read waits (at most one call
    // timeout) and holds no slot.
    path.yield_to_commands(path.settings().call_timeout).await;
    let Ok(mut slot) = path.budget.acquire().await else {
        let polled = Polled::Deferred;
        let took = Duration::ZERO;
        return (i, DevicePoll { polled, took });
    };
    let started = Instant::now();
    let polled = poll_address(path, device_id, address, firmware).await;
    if matches!(&polled, Polled::Sample(s) if !s.reachable) {
        slot.lost();
    }
    let took = started.elapsed();
    (i, DevicePoll { polled, took })
}

/// The samples of one pass over some miners, plus how many were dropped or deferred.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Samples {
    pub samples: Vec<TelemetrySample>,
    pub dropped_invalid: u32,
    /// Miners not asked this pass because the agent ran short; they are not published.
    pub deferred: u32,
}

impl Samples {
    pub fn push(&mut self, polled: Polled) {
        match polled {
            Polled::Sample(s) => self.samples.push(s),
            Polled::Invalid => self.dropped_invalid += 1,
            Polled::Deferred => self.deferred += 1,
        }
    }

    pub fn unreachable(&self) -> usize {
        self.samples.iter().filter(|s| !s.reachable).count()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty() && self.dropped_invalid == 0
    }
}

/// Polls every miner of `inventory` once, `max_in_flight` at a time; samples keep inventory
/// order.
pub async fn poll(path: &MinerPath, inventory: &Snapshot) -> Samples {
    let mut out = Samples::default();
    for p in poll_each(path, inventory).await {
        out.push(p.polled);
    }
    out
}

/// What [`poll`] does, miner by miner: each inventory device in inventory order, with how long
/// it took.
pub async fn poll_each(path: &MinerPath, inventory: &Snapshot) -> Vec<DevicePoll> {
    let mut polls = Vec::with_capacity(inventory.devices.len());
    for (i, d) in inventory.devices.iter().enumerate() {
        polls.push(poll_indexed(
            path,
            d.device_id,
            &d.address,
            d.firmware.as_deref(),
            i,
        ));
    }
    let mut polled: Vec<(usize, DevicePoll)> = futures::stream::iter(polls)
        .buffer_unordered(path.settings().max_in_flight)
        .collect()
        .await;
    polled.sort_by_key(|(i, _)| *i);
    polled.into_iter().map(|(_, p)| p).collect()
}

/// Publishes samples as one or more `TelemetryBatch` messages of one cycle, all sent before any
/// ack is awaited. The dropped count travels in the first message only.
pub async fn publish(agent: &Agent, samples: Samples) -> Result<(), TelemetryError> {
    if samples.is_empty() {
        return Ok(());
    }
    let site = agent.site.clone();
    let cycle = agent.next_cycle();
    let dropped = samples.dropped_invalid;
    let items: Vec<(bool, TelemetrySample)> = samples
        .samples
        .into_iter()
        .enumerate()
        .map(|(i, s)| (i == 0, s))
        .collect();
    let wrap = |chunk: Vec<(bool, TelemetrySample)>| {
        let first = chunk.first().is_none_or(|(first, _)| *first);
        Envelope::new(
            None,
            TelemetryBatch {
                site: site.clone(),
                cycle,
                dropped_invalid: if first { dropped } else { 0 },
                samples: chunk.into_iter().map(|(_, s)| s).collect(),
            },
        )
    };
    let messages = if items.is_empty() {
        vec![ebb_bus::encode(&wrap(Vec::new())).map_err(SplitError::from)?]
    } else {
        split::split_encode(
            items,
            split::MAX_BATCH_DEVICES,
            split::MAX_BATCH_BYTES,
            wrap,
        )?
    };
    let subject = subjects::telemetry(&site);
    let mut acks = Vec::with_capacity(messages.len());
    for payload in messages {
        let id = uuid::Uuid::now_v7().to_string();
        acks.push(publish::send(&agent.js, subject.clone(), &id, payload).await?);
    }
    for (subject, ack) in acks {
        ack.await
            .map_err(|source| PublishError::Ack { subject, source })?;
    }
    Ok(())
}

/// Why a telemetry publish failed; telemetry is latest-wins, so the caller logs and moves on.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(transparent)]
    Split(#[from] SplitError),
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// Polls the inventory every `poll_interval` until `shutdown`. A cycle cut short by shutdown
/// publishes and records nothing.
pub async fn poll_loop(agent: Arc<Agent>, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(agent.config.poll_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let scheduled = tokio::select! {
            () = shutdown.cancelled() => return,
            at = ticker.tick() => at,
        };
        let inventory = agent.inventory.snapshot();
        if inventory.devices.is_empty() {
            continue;
        }
        let started = Instant::now();
        let samples = tokio::select! {
            () = shutdown.cancelled() => return,
            s = poll(&agent.miners, &inventory) => s,
        };
        let unreachable = samples.unreachable();
        instruments::poll_cycle(started.elapsed(), unreachable);
        instruments::poll_lag(&agent.site, scheduled.elapsed());
        if samples.deferred > 0 {
            tracing::warn!(site = %agent.site, deferred = samples.deferred, "the agent was starved: some miners were not polled this cycle");
            instruments::starved(instruments::Starved::Poll, u64::from(samples.deferred));
        }
        instruments::invalid_samples(samples.dropped_invalid);
        tracing::debug!(
            site = %agent.site,
            samples = samples.samples.len(),
            unreachable,
            dropped_invalid = samples.dropped_invalid,
            took_ms = started.elapsed().as_millis() as u64,
            "poll cycle done"
        );
        tokio::select! {
            () = shutdown.cancelled() => return,
            r = publish(&agent, samples) => if let Err(error) = r {
                tracing::warn!(site = %agent.site, error = %crate::error_chain(&error), "publishing telemetry failed");
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(power: Option<f64>, ths: Option<f64>) -> Reading {
        Reading {
            power_w: power,
            hashrate_ths: ths,
            ..Reading::default()
        }
    }

    #[test]
    fn impossible_values_are_dropped() {
        let id = DeviceId::new();
        let check = |power: Option<f64>, ths: Option<f64>, valid: bool| {
            let got = sample(id, &reading(power, ths), 1_700_000_000_000);
            assert_eq!(matches!(got, Polled::Sample(_)), valid, "{power:?} {ths:?}");
        };
        check(Some(3250.0), Some(110.0), true);
        check(Some(0.0), Some(0.0), true);
        check(Some(f64::NAN), Some(110.0), false);
        check(Some(f64::INFINITY), Some(110.0), false);
        check(Some(-5.0), Some(110.0), false);
        check(Some(1e9), Some(110.0), false);
        check(Some(3250.0), Some(-1.0), false);
        check(Some(3250.0), Some(f64::NAN), false);
        check(None, Some(110.0), false);
        check(Some(3250.0), None, false);
        assert_eq!(
            sample(id, &reading(Some(1.0), Some(1.0)), 0),
            Polled::Invalid
        );
    }

    #[test]
    fn unreachable_carries_no_values() {
        let Polled::Sample(s) = Polled::unreachable(DeviceId::new()) else {
            panic!("not a sample")
        };
        assert!(!s.reachable && s.power_w.is_none() && s.hashrate_ths.is_none());
    }

    #[test]
    fn samples_count_what_they_drop() {
        let mut s = Samples::default();
        assert!(s.is_empty());
        s.push(Polled::Invalid);
        s.push(Polled::unreachable(DeviceId::new()));
        assert_eq!(
            (s.samples.len(), s.dropped_invalid, s.unreachable()),
            (1, 1, 1)
        );
    }
}
