//! The agent's metric names and the helpers that record them. The recorder is installed by the
//! binary; without one every call here is a no-op. Labels are low-cardinality by construction:
//! a command kind, an outcome, an operation name — never a device id or an address.

use ebb_domain::{CommandKind, Outcome};
use std::time::Duration;

/// Per-device outcomes of executed commands, labelled `kind` and `outcome`.
pub const COMMANDS_TOTAL: &str = ebb_obs::names::AGENT_COMMANDS;
/// Duration of each call to a miner, labelled `op` (identify, read, pause, resume, set_power_limit).
pub const MINER_CALL_SECONDS: &str = ebb_obs::names::AGENT_MINER_CALL_SECONDS;
/// Duration of a complete telemetry poll cycle (cycles cut short by shutdown record nothing).
pub const POLL_CYCLE_SECONDS: &str = ebb_obs::names::AGENT_POLL_CYCLE_SECONDS;
/// Miners that did not answer in the last poll cycle.
pub const MINERS_UNREACHABLE: &str = ebb_obs::names::AGENT_MINERS_UNREACHABLE;
/// Telemetry samples dropped because a value was NaN, infinite, negative or missing.
pub const INVALID_SAMPLES_TOTAL: &str = ebb_obs::names::AGENT_INVALID_SAMPLES;
/// Command batches terminated as poison (undecodable or out of range).
pub const POISON_BATCHES_TOTAL: &str = ebb_obs::names::AGENT_POISON_BATCHES;
/// Restore limits outside what any miner supports, ignored: the miner was woken without it.
pub const RESTORE_LIMITS_IGNORED_TOTAL: &str = ebb_obs::names::AGENT_RESTORE_LIMITS_IGNORED;

/// Devices the agent deferred because it ran short of its own resources (descriptors, memory,
/// in-flight slots), labelled `path` (command, poll): back-pressure, never a miner's outcome.
pub const STARVED_TOTAL: &str = ebb_obs::names::AGENT_STARVED;

/// Where the agent deferred a device for its own shortage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Starved {
    Command,
    Poll,
}

pub fn starved(path: Starved, devices: u64) {
    let path = match path {
        Starved::Command => "command",
        Starved::Poll => "poll",
    };
    metrics::counter!(STARVED_TOTAL, "path" => path).increment(devices);
}

/// The operations timed by [`MINER_CALL_SECONDS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Identify,
    Read,
    Pause,
    Resume,
    SetPowerLimit,
}

impl Op {
    pub fn label(self) -> &'static str {
        match self {
            Op::Identify => "identify",
            Op::Read => "read",
            Op::Pause => "pause",
            Op::Resume => "resume",
            Op::SetPowerLimit => "set_power_limit",
        }
    }
}

pub fn command_outcome(kind: Option<&CommandKind>, outcome: &Outcome) {
    let kind = kind.map_or("undecodable", CommandKind::label);
    metrics::counter!(COMMANDS_TOTAL, "kind" => kind, "outcome" => outcome.label()).increment(1);
}

/// Records a call that completed (successfully or with an answer); calls cut short by
/// cancellation are never recorded because the future is dropped before this runs.
pub fn miner_call(op: Op, took: Duration) {
    metrics::histogram!(MINER_CALL_SECONDS, "op" => op.label()).record(took.as_secs_f64());
}

/// How late the runtime woke the pressure probe ([`crate::pressure`]).
pub fn runtime_lag(lag: Duration) {
    metrics::gauge!(ebb_obs::names::AGENT_RUNTIME_LAG_SECONDS).set(lag.as_secs_f64());
}

/// An adaptive in-flight limit moved by `delta` miners ([`crate::budget`]).
pub fn in_flight_limit(delta: f64) {
    metrics::gauge!(ebb_obs::names::AGENT_IN_FLIGHT_LIMIT).increment(delta);
}

pub fn poll_cycle(took: Duration, unreachable: usize) {
    metrics::histogram!(POLL_CYCLE_SECONDS).record(took.as_secs_f64());
    metrics::gauge!(MINERS_UNREACHABLE).set(unreachable as f64);
}

/// How far the site's telemetry lags: from when a poll cycle was due to when it ended.
pub fn poll_lag(site: &ebb_domain::SiteCode, lag: Duration) {
    metrics::gauge!(ebb_obs::names::AGENT_POLL_LAG_SECONDS, "site" => site.to_string())
        .set(lag.as_secs_f64());
}

pub fn invalid_samples(n: u32) {
    if n > 0 {
        metrics::counter!(INVALID_SAMPLES_TOTAL).increment(u64::from(n));
    }
}

pub fn poison_batch() {
    metrics::counter!(POISON_BATCHES_TOTAL).increment(1);
}

pub fn restore_limit_ignored() {
    metrics::counter!(RESTORE_LIMITS_IGNORED_TOTAL).increment(1);
}
