//! The agent's edge to miners, over asic-rs: a bounded cache of miner handles, reads that tell
//! an unreachable miner from one that answered nonsense, and the mapping of asic-rs errors onto
//! Ebb's per-device outcomes.
//!
//! asic-rs's own getters (`get_wattage`, `get_data`, …) swallow every error into `None`, which
//! would make a dead miner look like a miner without a power reading. Reads here therefore send
//! the backend's own commands through `get_api_result`, keep the errors, and hand the replies to
//! the backend's own parsers (`parse_wattage`, `parse_hashrate`, …): the miner-specific knowledge
//! stays in asic-rs, only the error handling is ours.

use crate::budget;
use crate::instruments::{self, Op};
use asic_rs::MinerFactory;
use asic_rs::core::data::collector::DataField;
use asic_rs::core::data::command::MinerCommand;
use asic_rs::core::data::hashrate::HashRateUnit;
use asic_rs::core::data::miner::TuningTarget;
use asic_rs::core::errors::RPCError;
use asic_rs::core::traits::miner::Miner;
use ebb_domain::Outcome;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A miner handle shared between the poller and the command executor.
pub type MinerHandle = Arc<dyn Miner>;

/// asic-rs gives its own sockets and HTTP clients a 5-second deadline and, in its web clients,
/// turns the error into text. A failure that took about this long was a timeout.
const ASIC_RS_IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a call to a miner did not succeed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MinerError {
    #[error("miner unreachable: {0}")]
    Unreachable(String),
    #[error("miner did not answer in time")]
    Timeout,
    #[error("miner refused: {0}")]
    Refused(String),
    #[error("miner sent an invalid reply: {0}")]
    InvalidReply(String),
    #[error("not supported by this miner's firmware")]
    Unsupported,
    /// The agent itself ran short (descriptors, buffers, memory, an in-flight slot): never the
    /// miner's fault, never reported as its outcome (see [`crate::budget`]).
    #[error("the agent is short of its own resources: {0}")]
    Starved(String),
}

impl From<budget::Starved> for MinerError {
    fn from(s: budget::Starved) -> Self {
        MinerError::Starved(s.0)
    }
}

impl MinerError {
    /// The per-device outcome this error is reported as; `None` for the agent's own shortage,
    /// which is never a miner's outcome.
    pub fn outcome(&self) -> Option<Outcome> {
        Some(match self {
            MinerError::Unreachable(_) => Outcome::Unreachable,
            MinerError::Timeout => Outcome::Timeout,
            MinerError::Refused(reason) => Outcome::Refused {
                reason: reason.clone(),
            },
            MinerError::InvalidReply(reason) => Outcome::Refused {
                reason: format!("invalid reply: {reason}"),
            },
            MinerError::Unsupported => Outcome::Unsupported,
            MinerError::Starved(_) => return None,
        })
    }

    /// Whether the agent, not the miner, ran short.
    pub fn is_starved(&self) -> bool {
        matches!(self, MinerError::Starved(_))
    }

    /// Whether the miner could not be talked to at all (as opposed to answering badly).
    pub fn is_transport(&self) -> bool {
        matches!(self, MinerError::Unreachable(_) | MinerError::Timeout)
    }

    /// Orders errors by how much they say about the miner: a miner that is unreachable on one
    /// command and slow on another is reported unreachable.
    fn severity(&self) -> u8 {
        match self {
            // A read that was starved on one command says nothing about the miner at all.
            MinerError::Starved(_) => 5,
            MinerError::Unreachable(_) => 4,
            MinerError::Timeout => 3,
            MinerError::Refused(_) => 2,
            MinerError::InvalidReply(_) => 1,
            MinerError::Unsupported => 0,
        }
    }
}

/// Maps an asic-rs error to a [`MinerError`]. Typed errors (its RPC error enum, I/O errors,
/// JSON errors) are matched exactly; web clients that flatten errors into text are matched on
/// the text, and a failure that took as long as asic-rs's own I/O deadline is a timeout.
pub fn classify(err: &anyhow::Error, took: Duration) -> MinerError {
    for cause in err.chain() {
        if let Some(rpc) = cause.downcast_ref::<RPCError>() {
            return match rpc {
                RPCError::ConnectionFailed | RPCError::ConnectionReset | RPCError::BrokenPipe => {
                    MinerError::Unreachable(lowercase(&rpc.to_string()))
                }
                RPCError::ReadTimeout | RPCError::WriteTimeout => MinerError::Timeout,
                RPCError::StatusCheckFailed(msg) => MinerError::Refused(msg.clone()),
                RPCError::DeserializationFailed(e) => MinerError::InvalidReply(e.to_string()),
            };
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if budget::is_own_exhaustion(io) {
                return MinerError::Starved(io.to_string());
            }
            return match io.kind() {
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
                    MinerError::Timeout
                }
                _ => MinerError::Unreachable(io.to_string()),
            };
        }
        if cause
            .downcast_ref::<tokio::time::error::Elapsed>()
            .is_some()
        {
            return MinerError::Timeout;
        }
        if let Some(json) = cause.downcast_ref::<serde_json::Error>() {
            return MinerError::InvalidReply(json.to_string());
        }
    }
    let text = lowercase(&format!("{err:#}"));
    if budget::mentions_own_exhaustion(&text) {
        return MinerError::Starved(text);
    }
    if text.contains("timed out")
        || text.contains("timeout")
        || took >= ASIC_RS_IO_TIMEOUT.mul_f64(0.95)
    {
        MinerError::Timeout
    } else if text.contains("not supported") {
        MinerError::Unsupported
    } else if text.contains("connection refused")
        || text.contains("error sending request")
        || text.contains("connection reset")
        || text.contains("failed to connect")
    {
        MinerError::Unreachable(text)
    } else if text.contains("expected value")
        || text.contains("error decoding")
        || text.contains("deserializ")
    {
        MinerError::InvalidReply(text)
    } else {
        MinerError::Refused(text)
    }
}

fn lowercase(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Runs one miner call under `deadline`, records its duration, and classifies its error.
pub async fn call<T, F>(op: Op, deadline: Duration, fut: F) -> Result<T, MinerError>
where
    F: Future<Output = anyhow::Result<T>>,
{
    let started = Instant::now();
    let since = crate::pressure::global().mark();
    let result = tokio::time::timeout(deadline, fut).await;
    let took = started.elapsed();
    instruments::miner_call(op, took);
    let error = match result {
        Ok(Ok(v)) => return Ok(v),
        Err(_) => MinerError::Timeout,
        Ok(Err(e)) => classify(&e, took),
    };
    Err(blame(error, since, deadline))
}

/// A transport failure (a timeout, a refused or lost connection) is the agent's, not the
/// miner's, while this process cannot open a socket (asic-rs reports a connect that failed for
/// want of a descriptor as a plain connection failure) or when the call spent its time waiting
/// for the agent's own CPU ([`crate::pressure`]).
pub(crate) fn blame(
    error: MinerError,
    since: crate::pressure::Mark,
    deadline: Duration,
) -> MinerError {
    if !error.is_transport() {
        return error;
    }
    if let Err(starved) = budget::can_open_socket() {
        return starved.into();
    }
    let pressure = crate::pressure::global();
    if pressure.blames_agent(since, deadline) {
        return MinerError::Starved(format!(
            "{error}, while the agent's runtime ran {} ms late at each step",
            pressure.lateness_since(since).as_millis()
        ));
    }
    error
}

/// Runs a control call (pause, resume, set a power limit). asic-rs controls answer
/// `Ok(false)` when the firmware did not accept the command (Whatsminer v3 does so for every
/// failure); that is a refusal, since the read before the command showed the miner answering.
pub async fn control<F>(op: Op, deadline: Duration, fut: F) -> Result<(), MinerError>
where
    F: Future<Output = anyhow::Result<bool>>,
{
    match call(op, deadline, fut).await? {
        true => Ok(()),
        false => Err(MinerError::Refused(format!(
            "the miner did not accept {}",
            op.label()
        ))),
    }
}

/// What one read of a miner said. Every field is as reported; nothing is validated here.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reading {
    pub power_w: Option<f64>,
    pub hashrate_ths: Option<f64>,
    /// Whether the firmware says it is mining, when the reply carried the field at all.
    pub mining: Option<bool>,
    /// The power limit in force, when the firmware reports one as watts.
    pub power_limit_w: Option<f64>,
}

/// Below this a miner is not hashing (TH/s).
pub const HASHING_EPSILON_THS: f64 = 0.01;

impl Reading {
    /// Positive evidence that the miner is asleep: the firmware says it is not mining, or it
    /// reports no hashrate.
    pub fn asleep(&self) -> bool {
        self.mining == Some(false) || self.hashrate_ths.is_some_and(|h| h <= HASHING_EPSILON_THS)
    }

    /// Positive evidence that the miner is awake. `trusts_mining_flag` says whether this
    /// firmware's mining flag reflects a sleep command (LuxOS's does not: it reports mining
    /// while curtailed, so a LuxOS miner still ramping down would look awake).
    pub fn awake(&self, trusts_mining_flag: bool) -> bool {
        trusts_mining_flag
            && self.mining == Some(true)
            && self.hashrate_ths.is_some_and(|h| h > HASHING_EPSILON_THS)
    }
}

/// The fields a telemetry sample needs.
pub const TELEMETRY_FIELDS: &[DataField] = &[DataField::Wattage, DataField::Hashrate];
/// The fields read before a command, to tell whether it is already in effect.
pub const STATE_FIELDS: &[DataField] =
    &[DataField::Wattage, DataField::Hashrate, DataField::IsMining];

/// Reads `fields` from a miner. Fails only when no command got an answer; a reply that parsed
/// but lacked a value leaves that value `None`.
pub async fn read(
    miner: &dyn Miner,
    fields: &[DataField],
    deadline: Duration,
) -> Result<Reading, MinerError> {
    let mut commands: Vec<MinerCommand> = Vec::new();
    for field in fields {
        for (command, _) in miner.get_locations(*field) {
            if !commands.contains(&command) {
                commands.push(command);
            }
        }
    }
    if commands.is_empty() {
        return Ok(Reading::default());
    }
    let replies = futures::future::join_all(
        commands
            .iter()
            .map(|c| call(Op::Read, deadline, miner.get_api_result(c))),
    )
    .await;
    let mut answered: HashMap<MinerCommand, Value> = HashMap::new();
    let mut worst: Option<MinerError> = None;
    for (command, reply) in commands.into_iter().zip(replies) {
        match reply {
            Ok(v) => {
                answered.insert(command, v);
            }
            Err(e) => {
                if worst.as_ref().is_none_or(|w| e.severity() > w.severity()) {
                    worst = Some(e);
                }
            }
        }
    }
    if let Some(starved) = worst.as_ref().filter(|w| w.is_starved()) {
        return Err(starved.clone());
    }
    if answered.is_empty() {
        return Err(worst.unwrap_or(MinerError::Timeout));
    }
    let data = extract(miner, fields, &answered);
    Ok(Reading {
        power_w: miner.parse_wattage(&data).map(|p| p.as_watts()),
        hashrate_ths: miner
            .parse_hashrate(&data)
            .map(|h| h.as_unit(HashRateUnit::TeraHash).value),
        mining: data
            .contains_key(&DataField::IsMining)
            .then(|| miner.parse_is_mining(&data)),
        power_limit_w: data
            .contains_key(&DataField::TuningTarget)
            .then(|| miner.parse_tuning_target(&data))
            .flatten()
            .and_then(|t| match t {
                TuningTarget::Power(p) if p.as_watts().is_finite() && p.as_watts() > 0.0 => {
                    Some(p.as_watts())
                }
                _ => None,
            }),
    })
}

/// Pulls each field out of the replies the way asic-rs's own collector does: every location of
/// a field that answered contributes, tagged values are wrapped under their tag, and the parts
/// are merged.
fn extract(
    miner: &dyn Miner,
    fields: &[DataField],
    answered: &HashMap<MinerCommand, Value>,
) -> HashMap<DataField, Value> {
    let mut data = HashMap::new();
    for &field in fields {
        let mut merged: Option<Value> = None;
        for (command, extractor) in miner.get_locations(field) {
            let Some(reply) = answered.get(&command) else {
                continue;
            };
            let Some(value) = (extractor.func)(reply, extractor.key) else {
                continue;
            };
            let part = match extractor.tag {
                Some(tag) => json!({ tag: value.clone() }),
                None => value.clone(),
            };
            merge(merged.get_or_insert_with(|| json!({})), part);
        }
        if let Some(v) = merged {
            data.insert(field, v);
        }
    }
    data
}

fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (Value::Array(a), Value::Array(b)) => a.extend(b),
        (slot, b) => *slot = b,
    }
}

/// Whether this firmware's "is mining" flag changes when the miner is told to sleep. Stock
/// Antminer (work mode) and Whatsminer (`working`) firmware report it; LuxOS and others report
/// mining regardless (asic-rs issue #303).
pub fn trusts_mining_flag(miner: &dyn Miner) -> bool {
    miner
        .get_device_info()
        .firmware
        .to_ascii_lowercase()
        .contains("stock")
}

/// Most asic-rs identifications at once (the agent's in-flight bound before ADR 0008).
const MAX_IDENTIFYING: usize = 256;

/// One address's slot: at most one identification runs per address at a time.
type Slot = Arc<tokio::sync::Mutex<Option<MinerHandle>>>;

/// A bounded cache of miner handles by address. A handle is built once, with
/// `MinerFactory::get_miner`, and dropped when a call finds the miner unreachable, so the next
/// call identifies it afresh (its firmware may have changed across the outage).
pub struct MinerPool {
    /// Identifies miners; its identification timeout is the agent's call timeout.
    factory: MinerFactory,
    /// Handles by address; never more than `max` entries.
    slots: Mutex<HashMap<IpAddr, Slot>>,
    /// The bound on `slots`; beyond it handles are built for one use.
    max: usize,
    /// Deadline of an identification.
    deadline: Duration,
    /// Identifications started (each one probes the address with asic-rs's detection).
    identifications: std::sync::atomic::AtomicU64,
    /// Identifications at once: each builds HTTP clients and certificate stores in asic-rs, so
    /// thousands at once (the in-flight default suits the native path) would starve the CPU
    /// and time out. Waiting for a permit is back-pressure, outside the call's deadline.
    identifying: tokio::sync::Semaphore,
}

impl std::fmt::Debug for MinerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MinerPool")
            .field("cached", &self.len())
            .field("max", &self.max)
            .finish()
    }
}

impl MinerPool {
    pub fn new(max: usize, deadline: Duration) -> Self {
        Self {
            factory: MinerFactory::new().with_identification_timeout(deadline),
            slots: Mutex::new(HashMap::new()),
            max: max.max(1),
            deadline,
            identifications: std::sync::atomic::AtomicU64::new(0),
            identifying: tokio::sync::Semaphore::new(MAX_IDENTIFYING),
        }
    }

    /// Identifications started since the pool was built.
    pub fn identifications(&self) -> u64 {
        self.identifications
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many handles are cached.
    fn len(&self) -> usize {
        self.slots().len()
    }

    /// The handle for `ip`, identifying the miner if it has none yet.
    pub async fn get(&self, ip: IpAddr) -> Result<MinerHandle, MinerError> {
        let slot = {
            let mut slots = self.slots();
            match slots.get(&ip) {
                Some(slot) => Some(slot.clone()),
                None if slots.len() < self.max => {
                    let slot: Slot = Arc::default();
                    slots.insert(ip, slot.clone());
                    Some(slot)
                }
                None => None,
            }
        };
        let Some(slot) = slot else {
            return self.identify(ip).await;
        };
        let mut guard = slot.lock().await;
        if let Some(handle) = guard.as_ref() {
            return Ok(handle.clone());
        }
        let handle = self.identify(ip).await?;
        *guard = Some(handle.clone());
        Ok(handle)
    }

    async fn identify(&self, ip: IpAddr) -> Result<MinerHandle, MinerError> {
        let _permit = self
            .identifying
            .acquire()
            .await
            .map_err(|_| MinerError::Starved("identification closed".to_owned()))?;
        self.identifications
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(%ip, "identifying a miner through asic-rs");
        let started = Instant::now();
        // get_miner bounds itself by the identification timeout; the outer deadline only guards
        // against a backend that ignores it.
        let found = call(
            Op::Identify,
            self.deadline + Duration::from_secs(1),
            self.factory.get_miner(ip),
        )
        .await?;
        // asic-rs turns every failed probe into "no miner", and a probe that failed for want of
        // a descriptor may leave a different firmware's probe to win: identification while the
        // agent is starved is neither a verdict nor a handle worth keeping.
        budget::can_open_socket()?;
        match found {
            Some(miner) => Ok(Arc::from(miner)),
            None if started.elapsed() >= self.deadline.mul_f64(0.95) => Err(MinerError::Timeout),
            None => Err(MinerError::Unreachable(
                "no supported miner answered at this address".to_owned(),
            )),
        }
    }

    /// Drops the handle for `ip`, so the next call identifies the miner again.
    pub fn forget(&self, ip: IpAddr) {
        self.slots().remove(&ip);
    }

    /// Keeps only the handles of `addresses` (after an inventory refresh).
    pub fn retain(&self, addresses: &HashSet<IpAddr>) {
        self.slots().retain(|ip, _| addresses.contains(ip));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_errors_map_exactly() {
        let check =
            |e: anyhow::Error, want: MinerError| assert_eq!(classify(&e, Duration::ZERO), want);
        check(
            RPCError::ConnectionFailed.into(),
            MinerError::Unreachable("failed to connect to RPC API".into()),
        );
        check(RPCError::ReadTimeout.into(), MinerError::Timeout);
        check(
            RPCError::StatusCheckFailed("busy".into()).into(),
            MinerError::Refused("busy".into()),
        );
        let json = serde_json::from_str::<Value>("{\"Watts\":nan}").unwrap_err();
        assert!(matches!(
            classify(&RPCError::from(json).into(), Duration::ZERO),
            MinerError::InvalidReply(_)
        ));
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(matches!(
            classify(
                &anyhow::Error::from(refused).context("sending"),
                Duration::ZERO
            ),
            MinerError::Unreachable(_)
        ));
    }

    #[test]
    fn text_errors_fall_back_on_words_and_time() {
        let check = |text: &str, took: Duration, want: fn(&MinerError) -> bool| {
            let got = classify(&anyhow::anyhow!(text.to_owned()), took);
            assert!(want(&got), "{text}: {got:?}");
        };
        check(
            "error sending request for url (http://127.0.0.1/cgi-bin/x)",
            Duration::ZERO,
            |e| matches!(e, MinerError::Unreachable(_)),
        );
        check(
            "error sending request for url (http://127.0.0.1/cgi-bin/x)",
            Duration::from_secs(5),
            |e| *e == MinerError::Timeout,
        );
        check(
            "HTTP request failed with status code 500",
            Duration::ZERO,
            |e| matches!(e, MinerError::Refused(_)),
        );
        check(
            "Pausing is not supported on this platform",
            Duration::ZERO,
            |e| *e == MinerError::Unsupported,
        );
    }

    #[test]
    fn outcomes() {
        assert_eq!(MinerError::Timeout.outcome(), Some(Outcome::Timeout));
        assert_eq!(
            MinerError::Unreachable("x".into()).outcome(),
            Some(Outcome::Unreachable)
        );
        assert_eq!(
            MinerError::Refused("no".into()).outcome(),
            Some(Outcome::Refused {
                reason: "no".into()
            })
        );
        assert_eq!(
            MinerError::Unsupported.outcome(),
            Some(Outcome::Unsupported)
        );
        // The agent's own shortage is nobody's outcome.
        assert_eq!(MinerError::Starved("emfile".into()).outcome(), None);
    }

    #[test]
    fn the_agents_exhaustion_is_starvation() {
        let emfile = std::io::Error::from_raw_os_error(24);
        assert!(
            classify(
                &anyhow::Error::from(emfile).context("connecting"),
                Duration::ZERO
            )
            .is_starved()
        );
        let text = anyhow::anyhow!("error sending request: Too many open files (os error 24)");
        assert!(classify(&text, Duration::from_secs(5)).is_starved());
    }

    #[test]
    fn a_deadline_lost_to_the_agents_own_cpu_is_not_the_miners_fault() {
        let pressure = crate::pressure::global();
        let deadline = Duration::from_secs(10);
        let since = pressure.mark();
        // The runtime on time: a timeout and a refused connection are the miner's.
        pressure.record(Duration::from_millis(2));
        assert_eq!(
            blame(MinerError::Timeout, since, deadline),
            MinerError::Timeout
        );
        let refused = MinerError::Unreachable("connection refused".into());
        assert_eq!(blame(refused.clone(), since, deadline), refused);
        // The runtime 600 ms late at every step while the call waited: the agent's.
        let since = pressure.mark();
        for _ in 0..5 {
            pressure.record(Duration::from_millis(600));
        }
        assert!(blame(MinerError::Timeout, since, deadline).is_starved());
        assert!(blame(refused.clone(), since, deadline).is_starved());
        let outcome = blame(refused.clone(), since, deadline).outcome();
        assert_eq!(outcome, None, "no outcome, no attempt");
        // What the miner said is never the agent's fault, however late the runtime.
        let invalid = MinerError::InvalidReply("garbage".into());
        assert_eq!(blame(invalid.clone(), since, deadline), invalid);
        // A call that starts after the stall is judged on its own time.
        pressure.record(Duration::from_millis(1));
        let fresh = pressure.mark();
        assert_eq!(
            blame(MinerError::Timeout, fresh, deadline),
            MinerError::Timeout
        );
    }

    #[test]
    fn sleep_and_wake_evidence() {
        let r = |mining: Option<bool>, ths: Option<f64>| Reading {
            mining,
            hashrate_ths: ths,
            ..Reading::default()
        };
        assert!(r(Some(false), Some(100.0)).asleep());
        assert!(r(Some(true), Some(0.0)).asleep());
        assert!(!r(None, None).asleep());
        assert!(r(Some(true), Some(100.0)).awake(true));
        // LuxOS says mining while curtailed: no evidence either way.
        assert!(!r(Some(true), Some(100.0)).awake(false));
        assert!(!r(None, Some(100.0)).awake(true));
    }

    #[test]
    fn merges_tagged_parts_like_asic_rs() {
        let mut a = json!({"mode": "1"});
        merge(&mut a, json!({"limit": 3000.0}));
        assert_eq!(a, json!({"mode": "1", "limit": 3000.0}));
    }
}
