//! Executing one command batch on the miners, `max_in_flight` at a time, each read under
//! `call_timeout` and each control under `control_timeout`, and turning what happened into one
//! outcome per device.
//!
//! Every command is idempotent: the miner's state is read first, and a miner already where the
//! command would put it is reported `already_in_state` without being commanded again, so a
//! redelivered batch is harmless. A return value from asic-rs is not proof that the miner
//! changed (DESIGN §5.3): the reconciler confirms from telemetry, and the agent reports `ok`
//! unless the call failed.
//!
//! Batches that cannot be trusted (undecodable, out-of-range values, another site's) are
//! rejected whole before any miner is contacted: see [`validate`] and [`poison`].
//!
//! Execution needs no NATS: it runs on a [`MinerPath`] and an inventory [`Snapshot`], and the
//! caller (the command consumer, a test, a benchmark) decides what happens to the results.

use crate::driver::{self, MinerError, Reading};
use crate::instruments::{self, Op};
use crate::inventory::Snapshot;
use crate::miner_path::MinerPath;
use crate::native::{Native, Protocol, Want};
use crate::telemetry::{self, Polled, Samples};
use asic_rs::core::data::collector::DataField;
use asic_rs::core::traits::miner::Miner;
use chrono::Utc;
use ebb_bus::{BatchResult, CommandBatch, DeviceRef, DeviceResult};
use ebb_domain::{BatchId, CommandKind, CurtailLevel, DeviceId, EventId, Outcome, SiteCode};
use futures::StreamExt;
use measurements::Power;
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// What executing a batch produced: the per-device results, in batch order, the samples read
/// right after the commands, and the devices deferred because the agent itself ran short.
#[derive(Debug, Default)]
pub struct Executed {
    pub results: Vec<DeviceResult>,
    pub samples: Samples,
    /// Devices with no result: the agent could not serve them (its own descriptors, memory or
    /// in-flight slots ran out). They are not the miners' failures and must not cost an attempt;
    /// the batch is run again later instead.
    pub deferred: Vec<DeviceId>,
}

/// One device's part of an executed batch.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceRun {
    pub device_id: DeviceId,
    /// `None` when the device was deferred: the agent ran short of its own resources.
    pub result: Option<DeviceResult>,
    /// The read right after the command, when the miner was reached (`None` when it was never
    /// contacted or does not support the command).
    pub sample: Option<Polled>,
    /// From the device's turn (an in-flight slot) to its last reply: handle, state read,
    /// command, read after.
    pub took: Duration,
}

/// Checks what serde cannot: the command's ranges, the site, the per-device restore limits.
pub fn validate(batch: &CommandBatch, site: &SiteCode) -> Result<(), String> {
    batch.command.validate().map_err(|e| e.to_string())?;
    if &batch.site != site {
        return Err(format!(
            "batch is for site {} but this agent drives site {site}",
            batch.site
        ));
    }
    // A bad restore limit is one device's problem, handled when that device is restored
    // (`usable_restore_limit`): it never fails the batch and leaves no other miner asleep.
    Ok(())
}

/// Whether a restore limit is one any miner could have had. One that is not (corrupt, forged) is
/// ignored: the miner is woken without it rather than left asleep or set to nonsense.
pub fn usable_restore_limit(w: f64) -> bool {
    w.is_finite()
        && (CommandKind::MIN_POWER_TARGET_W..=CommandKind::MAX_POWER_TARGET_W).contains(&w)
}

/// The result for a batch that will not be executed: `invalid_command` for every device it can
/// name. `None` when not even one device can be named and no batch id is readable.
pub fn poison(
    payload: &[u8],
    decoded: Option<&CommandBatch>,
    site: &SiteCode,
    reason: &str,
) -> Option<BatchResult> {
    let (batch_id, event_id, command, devices) = match decoded {
        Some(b) => (
            Some(b.batch_id),
            b.event_id,
            Some(b.command),
            b.devices.iter().map(|d| d.device_id).collect(),
        ),
        None => {
            let named = lenient::names(payload);
            (named.batch_id, named.event_id, None, named.devices)
        }
    };
    if batch_id.is_none() && devices.is_empty() {
        return None;
    }
    let outcome = Outcome::InvalidCommand {
        reason: reason.to_owned(),
    };
    let mut seen = HashSet::new();
    let results: Vec<DeviceResult> = devices
        .into_iter()
        .filter(|id| seen.insert(*id))
        .map(|device_id| {
            instruments::command_outcome(command.as_ref(), &outcome);
            DeviceResult {
                device_id,
                outcome: outcome.clone(),
                prior_power_limit_w: None,
            }
        })
        .collect();
    Some(BatchResult {
        // Without a readable batch id the reconciler still matches results by device.
        batch_id: batch_id.unwrap_or_default(),
        event_id,
        site: site.clone(),
        command,
        results,
        finished_at: Utc::now(),
    })
}

/// A partial decode of a batch that does not decode: every field optional, every bad value
/// skipped, so the devices that can be named are.
mod lenient {
    use super::*;

    /// A value that decodes as `T`, or anything else (ignored).
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Maybe<T> {
        Good(T),
        Bad(serde::de::IgnoredAny),
    }

    impl<T> Maybe<T> {
        fn ok(self) -> Option<T> {
            match self {
                Maybe::Good(t) => Some(t),
                Maybe::Bad(_) => None,
            }
        }
    }

    #[derive(Deserialize)]
    struct Env {
        #[serde(default)]
        body: Option<Maybe<Body>>,
    }

    #[derive(Deserialize)]
    struct Body {
        #[serde(default)]
        batch_id: Option<Maybe<BatchId>>,
        #[serde(default)]
        event_id: Option<Maybe<EventId>>,
        #[serde(default)]
        devices: Option<Maybe<Vec<Maybe<Device>>>>,
    }

    #[derive(Deserialize)]
    struct Device {
        #[serde(default)]
        device_id: Option<Maybe<DeviceId>>,
    }

    #[derive(Debug, Default, PartialEq)]
    pub struct Named {
        pub batch_id: Option<BatchId>,
        pub event_id: Option<EventId>,
        pub devices: Vec<DeviceId>,
    }

    pub fn names(payload: &[u8]) -> Named {
        let Some(body) = rmp_serde::from_slice::<Env>(payload)
            .ok()
            .and_then(|e| e.body)
            .and_then(Maybe::ok)
        else {
            return Named::default();
        };
        Named {
            batch_id: body.batch_id.and_then(Maybe::ok),
            event_id: body.event_id.and_then(Maybe::ok),
            devices: body
                .devices
                .and_then(Maybe::ok)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|d| d.ok()?.device_id?.ok())
                .collect(),
        }
    }
}

/// Prior power limits captured when a power-limit curtail was applied, by device, so that a
/// redelivered curtail reports (and an uncurtail restores) the limit from before the episode,
/// not the curtailed one it reads now. Bounded; forgotten when the device is uncurtailed.
#[derive(Debug)]
pub struct Priors {
    limits: Mutex<HashMap<DeviceId, f64>>,
    max: usize,
}

impl Priors {
    pub fn new(max: usize) -> Self {
        Self {
            limits: Mutex::new(HashMap::new()),
            max,
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceId, f64>> {
        self.limits.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn get(&self, id: &DeviceId) -> Option<f64> {
        self.map().get(id).copied()
    }

    fn remember(&self, id: DeviceId, watts: f64) {
        let mut map = self.map();
        if map.len() < self.max || map.contains_key(&id) {
            map.entry(id).or_insert(watts);
        }
    }

    fn forget(&self, id: &DeviceId) {
        self.map().remove(id);
    }
}

/// Executes `batch` (already validated) on `path`'s miners, with `inventory` for the devices'
/// capabilities and the addresses a batch leaves out. Devices listed twice are executed once.
/// Counts every outcome.
pub async fn execute(path: &MinerPath, batch: &CommandBatch, inventory: &Snapshot) -> Executed {
    let mut out = Executed::default();
    for run in execute_each(path, batch, inventory).await {
        match run.result {
            Some(result) => {
                instruments::command_outcome(Some(&batch.command), &result.outcome);
                out.results.push(result);
            }
            None => out.deferred.push(run.device_id),
        }
        if let Some(s) = run.sample {
            out.samples.push(s);
        }
    }
    instruments::starved(instruments::Starved::Command, out.deferred.len() as u64);
    out
}

/// What [`execute`] does, device by device: each distinct device of `batch` in batch order,
/// `max_in_flight` at a time, with how long it took. Counts nothing.
pub async fn execute_each(
    path: &MinerPath,
    batch: &CommandBatch,
    inventory: &Snapshot,
) -> Vec<DeviceRun> {
    // Polls give way while this batch runs.
    let _commanding = path.commanding();
    let mut seen = HashSet::new();
    let devices: Vec<&DeviceRef> = batch
        .devices
        .iter()
        .filter(|d| seen.insert(d.device_id))
        .collect();
    // Futures built in a loop rather than by a closure over borrowed items: a closure taking a
    // reference argument makes the spawned task's future fail the `Send` check.
    let mut runs = Vec::with_capacity(devices.len());
    for (i, d) in devices.into_iter().enumerate() {
        runs.push(execute_indexed(path, batch.command, d, inventory, i));
    }
    let mut done: Vec<(usize, DeviceRun)> = futures::stream::iter(runs)
        .buffer_unordered(path.settings().max_in_flight)
        .collect()
        .await;
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, run)| run).collect()
}

/// Times one device from its turn: an in-flight slot of the agent's budget.
async fn execute_indexed(
    path: &MinerPath,
    kind: CommandKind,
    dev: &DeviceRef,
    inventory: &Snapshot,
    i: usize,
) -> (usize, DeviceRun) {
    let deferred = |took| DeviceRun {
        device_id: dev.device_id,
        result: None,
        sample: None,
        took,
    };
    // In turn, however long the queue: a batch's devices all wait at once, and an adaptive
    // limit may be a small part of the batch.
    let Ok(mut slot) = path.budget.acquire_in_turn().await else {
        return (i, deferred(Duration::ZERO));
    };
    let started = Instant::now();
    // The agent's own shortage is waited out with back-off, for as long as a slot may be
    // waited for; then the device is deferred, never failed.
    let mut backoff = Duration::from_millis(50);
    loop {
        match execute_device(path, kind, dev, inventory).await {
            Ok((result, sample)) => {
                if matches!(result.outcome, Outcome::Timeout | Outcome::Unreachable) {
                    slot.lost();
                }
                let took = started.elapsed();
                let run = DeviceRun {
                    device_id: dev.device_id,
                    result: Some(result),
                    sample,
                    took,
                };
                return (i, run);
            }
            Err(starved) if started.elapsed() + backoff >= path.budget.wait() => {
                tracing::warn!(device_id = %dev.device_id, error = %starved, "the agent is starved; deferring the device");
                return (i, deferred(started.elapsed()));
            }
            Err(starved) => {
                tracing::debug!(device_id = %dev.device_id, error = %starved, "the agent is starved; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Executes the command on one device and, when the miner was reached, reads it again at once
/// so that confirmation does not wait for the next poll cycle.
/// `Err` only when the agent itself ran short: nothing is reported for the device then.
async fn execute_device(
    path: &MinerPath,
    kind: CommandKind,
    dev: &DeviceRef,
    inventory: &Snapshot,
) -> Result<(DeviceResult, Option<Polled>), MinerError> {
    let result = |outcome: Outcome, prior: Option<f64>| DeviceResult {
        device_id: dev.device_id,
        outcome,
        prior_power_limit_w: prior,
    };
    let known = inventory.get(&dev.device_id);
    let address = match (dev.address.trim(), known) {
        (a, _) if !a.is_empty() => a,
        ("", Some(k)) if !k.address.trim().is_empty() => k.address.trim(),
        _ => {
            let reason =
                "unknown device: not in the site inventory and no address given".to_owned();
            return Ok((result(Outcome::Refused { reason }, None), None));
        }
    };
    // The capability table is the same one the planner selects by; refusing by it here means a
    // device the planner would never pick is never contacted either.
    if let Some(k) = known
        && !k.capabilities.allows(&kind)
    {
        return Ok((result(Outcome::Unsupported, None), None));
    }
    let Ok(ip) = address.parse::<IpAddr>() else {
        let reason = format!("invalid address {address:?}");
        return Ok((result(Outcome::Refused { reason }, None), None));
    };
    let firmware = known.and_then(|k| k.firmware.as_deref());
    if let Some((native, protocol)) = path.native_for(firmware)
        && let Some(step) = NativeStep::of(path, protocol, kind, dev)
    {
        match drive_native(path, native, protocol, ip, step, dev.device_id).await {
            Ok((outcome, prior)) => {
                let sample = native_sample(path, native, protocol, ip, dev.device_id).await;
                return Ok((result(outcome, prior), sample));
            }
            Err(e) if e.is_starved() => return Err(e),
            Err(e) if e.is_transport() => {
                let outcome = e.outcome().unwrap_or(Outcome::Unreachable);
                return Ok((
                    result(outcome, None),
                    Some(Polled::unreachable(dev.device_id)),
                ));
            }
            Err(e) => {
                // Refused, or a reply the agent does not understand (a reflashed miner?):
                // asic-rs has the last word, identifying the miner afresh.
                tracing::debug!(%ip, protocol = protocol.label(), error = %e, "native command not carried out, asking asic-rs");
            }
        }
    }
    let miner = match path.pool.get(ip).await {
        Ok(m) => m,
        Err(e) => {
            let Some(outcome) = e.outcome() else {
                return Err(e);
            };
            if e.is_transport() {
                path.pool.forget(ip);
            }
            return Ok((
                result(outcome, None),
                Some(Polled::unreachable(dev.device_id)).filter(|_| e.is_transport()),
            ));
        }
    };
    match drive(path, &*miner, kind, dev).await {
        Ok((outcome, prior)) => {
            let sample = telemetry::poll_handle(path, dev.device_id, ip, &*miner).await;
            Ok((
                result(outcome, prior),
                Some(sample).filter(Polled::is_sample),
            ))
        }
        Err(e) => {
            let Some(outcome) = e.outcome() else {
                return Err(e);
            };
            if e.is_transport() {
                path.pool.forget(ip);
                return Ok((
                    result(outcome, None),
                    Some(Polled::unreachable(dev.device_id)),
                ));
            }
            if e == MinerError::Unsupported {
                return Ok((result(outcome, None), None));
            }
            // It answered but would not do it: read what it is doing now.
            let sample = telemetry::poll_handle(path, dev.device_id, ip, &*miner).await;
            Ok((
                result(outcome, None),
                Some(sample).filter(Polled::is_sample),
            ))
        }
    }
}

/// What the native protocols do for a command: sleep, or wake without a power limit to put
/// back. Everything else (power limits, firmware without native controls) goes through asic-rs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NativeStep {
    Sleep,
    Wake,
}

impl NativeStep {
    fn of(
        path: &MinerPath,
        protocol: Protocol,
        kind: CommandKind,
        dev: &DeviceRef,
    ) -> Option<Self> {
        if !protocol.controls() {
            return None;
        }
        match kind {
            CommandKind::Curtail {
                level: CurtailLevel::Full,
            } => Some(NativeStep::Sleep),
            CommandKind::Uncurtail => {
                let restore = dev
                    .restore_power_limit_w
                    .filter(|w| usable_restore_limit(*w))
                    .or(path.priors.get(&dev.device_id));
                (restore.is_none() || !protocol.limits_power()).then_some(NativeStep::Wake)
            }
            _ => None,
        }
    }
}

/// [`drive`] for a miner spoken to natively: read its state, and sleep or wake it unless it is
/// already there.
async fn drive_native(
    path: &MinerPath,
    native: &Native,
    protocol: Protocol,
    ip: IpAddr,
    step: NativeStep,
    id: DeviceId,
) -> Result<(Outcome, Option<f64>), MinerError> {
    let (read, control) = (
        path.settings().call_timeout,
        path.settings().control_timeout,
    );
    let state = native.read(protocol, ip, Want::State, read).await?;
    match step {
        NativeStep::Sleep => {
            let prior = path
                .priors
                .get(&id)
                .or(state.power_limit_w.filter(|_| protocol.limits_power()));
            if state.asleep() {
                return Ok((Outcome::AlreadyInState, prior));
            }
            native.sleep(protocol, ip, true, control).await?;
            Ok((Outcome::Ok, prior))
        }
        NativeStep::Wake => {
            if !state.awake(protocol.trusts_mining_flag()) {
                native.sleep(protocol, ip, false, control).await?;
                path.priors.forget(&id);
                return Ok((Outcome::Ok, None));
            }
            path.priors.forget(&id);
            Ok((Outcome::AlreadyInState, None))
        }
    }
}

/// The read right after a native command, for confirmation without waiting for the next poll.
async fn native_sample(
    path: &MinerPath,
    native: &Native,
    protocol: Protocol,
    ip: IpAddr,
    id: DeviceId,
) -> Option<Polled> {
    // Stamped when asked, not when answered: a reply describes the miner at some point after
    // the question, so a read that began before a command is never taken as news after it.
    let asked = chrono::Utc::now().timestamp_millis();
    match native
        .read(protocol, ip, Want::Telemetry, path.settings().call_timeout)
        .await
    {
        Ok(reading) => Some(telemetry::sample(id, &reading, asked)),
        Err(e) if e.is_starved() => None,
        Err(e) if e.is_transport() => Some(Polled::unreachable(id)),
        Err(_) => Some(Polled::Invalid),
    }
}

/// Two power limits are the same setting when they differ by under 0.5 % (firmware rounds).
fn same_limit(a: f64, b: f64) -> bool {
    (a - b).abs() <= (b.abs() * 0.005).max(1.0)
}

/// Reads the miner's state; a miner that answers with nothing usable is treated as in an
/// unknown state (the command is sent), one that does not answer fails the command.
async fn read_state(
    path: &MinerPath,
    miner: &dyn Miner,
    with_limit: bool,
) -> Result<Reading, MinerError> {
    let mut fields = driver::STATE_FIELDS.to_vec();
    if with_limit {
        fields.push(DataField::TuningTarget);
    }
    match driver::read(miner, &fields, path.settings().call_timeout).await {
        Ok(r) => Ok(r),
        Err(e) if e.is_transport() || e.is_starved() => Err(e),
        Err(e) => {
            tracing::debug!(error = %e, "state unreadable before a command, sending it anyway");
            Ok(Reading::default())
        }
    }
}

/// Brings one miner to the state `kind` asks for. Returns `ok` or `already_in_state`, and the
/// power limit the miner had before, when a curtail reads one.
async fn drive(
    path: &MinerPath,
    miner: &dyn Miner,
    kind: CommandKind,
    dev: &DeviceRef,
) -> Result<(Outcome, Option<f64>), MinerError> {
    let deadline = path.settings().control_timeout;
    let id = dev.device_id;
    let can_limit = miner.supports_set_power_limit();
    match kind {
        CommandKind::Curtail {
            level: CurtailLevel::Full,
        } => {
            if !(miner.supports_pause() && miner.supports_resume()) {
                return Err(MinerError::Unsupported);
            }
            let state = read_state(path, miner, can_limit).await?;
            let prior = path
                .priors
                .get(&id)
                .or(state.power_limit_w.filter(|_| can_limit));
            if state.asleep() {
                return Ok((Outcome::AlreadyInState, prior));
            }
            driver::control(Op::Pause, deadline, miner.pause(None)).await?;
            Ok((Outcome::Ok, prior))
        }
        CommandKind::Curtail {
            level: CurtailLevel::Efficiency,
        }
        | CommandKind::SetPowerTarget { .. } => {
            if !can_limit {
                return Err(MinerError::Unsupported);
            }
            let state = read_state(path, miner, true).await?;
            let remembered = path.priors.get(&id);
            let target = match kind {
                CommandKind::SetPowerTarget { watts } => watts,
                _ => {
                    let base = remembered
                        .or(state.power_limit_w)
                        .or(state.power_w.filter(|p| p.is_finite() && *p > 0.0 && !state.asleep()))
                        .ok_or_else(|| {
                            MinerError::Refused(
                                "cannot work out an efficiency limit: the miner reports neither a power limit nor its power"
                                    .to_owned(),
                            )
                        })?;
                    (base * path.settings().efficiency_limit_pct / 100.0)
                        .clamp(
                            CommandKind::MIN_POWER_TARGET_W,
                            CommandKind::MAX_POWER_TARGET_W,
                        )
                        .round()
                }
            };
            if state.power_limit_w.is_some_and(|l| same_limit(l, target)) {
                // Without a remembered prior, the limit read now is the curtailed one: say nothing
                // rather than report it as the limit to restore.
                return Ok((Outcome::AlreadyInState, remembered));
            }
            driver::control(
                Op::SetPowerLimit,
                deadline,
                miner.set_power_limit(Power::from_watts(target)),
            )
            .await?;
            let prior = remembered.or(state.power_limit_w);
            if let Some(p) = prior {
                path.priors.remember(id, p);
            }
            Ok((Outcome::Ok, prior))
        }
        CommandKind::Uncurtail => {
            // Restore the limit from before the event, never a firmware default: the one the
            // reconciler captured, else the one this agent remembers.
            let given = match dev.restore_power_limit_w {
                Some(w) if !usable_restore_limit(w) => {
                    tracing::warn!(device_id = %id, restore_power_limit_w = w, "ignoring an impossible restore limit; waking the miner without it");
                    instruments::restore_limit_ignored();
                    None
                }
                other => other,
            };
            let restore = given.or(path.priors.get(&id)).filter(|_| can_limit);
            let state = read_state(path, miner, restore.is_some()).await?;
            let limit_ok =
                restore.is_none_or(|w| state.power_limit_w.is_some_and(|l| same_limit(l, w)));
            let awake = state.awake(driver::trusts_mining_flag(miner));
            if limit_ok && awake {
                path.priors.forget(&id);
                return Ok((Outcome::AlreadyInState, None));
            }
            if let Some(w) = restore.filter(|_| !limit_ok) {
                // The limit first, so the miner ramps up to it rather than overshooting.
                driver::control(
                    Op::SetPowerLimit,
                    deadline,
                    miner.set_power_limit(Power::from_watts(w)),
                )
                .await?;
            }
            if !awake {
                if miner.supports_resume() {
                    driver::control(Op::Resume, deadline, miner.resume(None)).await?;
                } else if state.asleep() {
                    return Err(MinerError::Unsupported);
                }
            }
            path.priors.forget(&id);
            Ok((Outcome::Ok, None))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ebb_bus::{Envelope, encode};

    fn site() -> SiteCode {
        SiteCode::parse("site-a").unwrap()
    }

    fn batch(command: CommandKind, n: usize) -> CommandBatch {
        CommandBatch {
            batch_id: BatchId::new(),
            event_id: Some(EventId::new()),
            site: site(),
            command,
            devices: (0..n)
                .map(|i| DeviceRef {
                    device_id: DeviceId::new(),
                    address: format!("127.0.0.{}", i + 1),
                    restore_power_limit_w: None,
                })
                .collect(),
        }
    }

    #[test]
    fn validation() {
        let ok = batch(CommandKind::SetPowerTarget { watts: 2000.0 }, 2);
        assert!(validate(&ok, &site()).is_ok());
        let bad = batch(CommandKind::SetPowerTarget { watts: 1e9 }, 2);
        assert!(validate(&bad, &site()).is_err());
        let other = batch(CommandKind::Uncurtail, 1);
        assert!(
            validate(&other, &SiteCode::parse("b").unwrap())
                .unwrap_err()
                .contains("site")
        );
        // A bad restore limit is handled per device when it is restored, never for the batch.
        let mut restore = batch(CommandKind::Uncurtail, 2);
        restore.devices[0].restore_power_limit_w = Some(f64::NAN);
        assert!(validate(&restore, &site()).is_ok());
        assert!(!usable_restore_limit(f64::NAN) && !usable_restore_limit(1e9));
        assert!(!usable_restore_limit(-1.0) && usable_restore_limit(3_000.0));
    }

    #[test]
    fn poison_names_every_device_it_can() {
        let b = batch(CommandKind::SetPowerTarget { watts: -1.0 }, 3);
        let r = poison(&[], Some(&b), &site(), "watts out of range").unwrap();
        assert_eq!(r.batch_id, b.batch_id);
        assert_eq!(r.results.len(), 3);
        assert!(
            r.results
                .iter()
                .all(|d| matches!(d.outcome, Outcome::InvalidCommand { .. }))
        );

        // An unknown command kind: the typed decode fails, the lenient one names the devices.
        #[derive(serde::Serialize)]
        struct Future<'a> {
            batch_id: BatchId,
            site: &'a str,
            command: serde_json::Value,
            devices: Vec<DeviceRef>,
        }
        let b = batch(CommandKind::Uncurtail, 2);
        let payload = encode(&Envelope::new(
            None,
            Future {
                batch_id: b.batch_id,
                site: "site-a",
                command: serde_json::json!({"kind": "melt"}),
                devices: b.devices.clone(),
            },
        ))
        .unwrap();
        assert!(ebb_bus::decode::<CommandBatch>(&payload).is_err());
        let r = poison(&payload, None, &site(), "undecodable").unwrap();
        assert_eq!(r.batch_id, b.batch_id);
        assert_eq!(r.command, None);
        assert_eq!(
            r.results.iter().map(|d| d.device_id).collect::<Vec<_>>(),
            b.devices.iter().map(|d| d.device_id).collect::<Vec<_>>()
        );

        // Garbage names nothing.
        assert!(poison(b"\xc1\x00garbage", None, &site(), "undecodable").is_none());
    }

    #[test]
    fn lenient_decode_skips_bad_devices() {
        let good = DeviceId::new();
        let payload = rmp_serde::to_vec_named(&serde_json::json!({
            "v": 1, "id": "x", "at": "2024-01-01T00:00:00Z",
            "body": {"batch_id": "not a uuid", "devices": [{"device_id": good.to_string()}, {"device_id": 7}, "junk"]}
        }))
        .unwrap();
        let named = lenient::names(&payload);
        assert_eq!(named.batch_id, None);
        assert_eq!(named.devices, vec![good]);
    }

    #[test]
    fn priors_are_bounded_and_keep_the_first_value() {
        let p = Priors::new(1);
        let (a, b) = (DeviceId::new(), DeviceId::new());
        p.remember(a, 3000.0);
        p.remember(a, 2250.0);
        p.remember(b, 1000.0);
        assert_eq!((p.get(&a), p.get(&b)), (Some(3000.0), None));
        p.forget(&a);
        assert_eq!(p.get(&a), None);
    }

    #[test]
    fn limits_compare_with_firmware_rounding() {
        assert!(same_limit(2499.6, 2500.0));
        assert!(same_limit(3010.0, 3000.0));
        assert!(!same_limit(2250.0, 3000.0));
    }
}
