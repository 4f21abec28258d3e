//! ebb-agent: the per-site device driver (DESIGN §3, §8).
//!
//! One agent runs per site. It
//! - learns the site's miners from the planner ([`InventorySource`]),
//! - consumes the site's command batches from the `CMD` work queue, executes each on its miners
//!   through asic-rs with bounded parallelism and a deadline per call, publishes one
//!   `BatchResult` per batch on `ebb.result.<site>`, then acks,
//! - polls every miner's power and hashrate each `poll_interval` and publishes the cycle on
//!   `ebb.telemetry.<site>`, dropping and counting impossible values,
//! - identifies miners in an address range on request ([`scan()`], `ebb.svc.agent.<site>.scan`).
//!
//! Entry points: [`run`] (inventory from the planner) and [`run_with`] (any source), both until
//! the shutdown token is cancelled; [`AgentConfig`] with [`AgentConfig::validate`] and
//! [`AgentConfig::describe`] for the CLI.
//!
//! The miner path runs without NATS too: a [`MinerPath`] (handles, remembered power limits,
//! deadlines) with an inventory [`Snapshot`] is all that [`execute()`] and [`poll()`] need, so
//! tests and the benchmarks (`ebb bench`) drive miners with the agent's own code.

#![forbid(unsafe_code)]

mod agent;
pub mod budget;
pub mod config;
mod consumer;
mod driver;
mod execute;
pub mod instruments;
mod inventory;
pub mod limit;
mod miner_path;
mod native;
pub mod pressure;
pub mod scan;
mod telemetry;

pub use agent::{AgentService, run_with};
pub use budget::Budget;
pub use config::{AgentConfig, ConfigError};
pub use driver::{HASHING_EPSILON_THS, MinerError};
pub use execute::{DeviceRun, Executed, execute, execute_each};
pub use inventory::{InventorySource, Snapshot};
pub use miner_path::{MinerPath, MinerPathSettings};
pub use scan::{ScanError, ScanOptions, ScanProgress, register, scan};
pub use telemetry::{DevicePoll, Polled, Samples, poll, poll_address, poll_each};

/// An error and its sources on one line: for log fields, and for reasons that travel to the
/// reconciler.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}
