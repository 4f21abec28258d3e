//! `ebb bench command|poll --miners N`: benchmarks of the agent's miner path against a simulated
//! fleet, for the figures in `docs/BENCHMARKS.md` (and `ebb bench preview`, `ebb bench
//! reconcile-pass`: the planner's and the reconciler's own code against real PostgreSQL and NATS,
//! in their own modules). Each prints one JSON object; the miner-path ones have at least
//! `miners`, `seconds` and `per_second`:
//!
//! - [`bench_command`]: one `curtail{full}` to every miner, with the latency of each miner and
//!   the simulator's true state afterwards;
//! - [`bench_poll`]: one full telemetry poll of every miner, with the CPU it costs and the
//!   simulator's memory per miner.
//!
//! `ebb bench gateway-flood` ([`bench_gateway_flood`]) is not the agent's: the gateway under a
//! flood of bad tokens, without the simulator; see its module.
//!
//! The miners are driven by the agent's own code, not a copy of it: a [`MinerPath`] built with
//! the agent's settings, [`ebb_agent::execute_each`] and [`ebb_agent::poll_each`] (what the
//! agent's `execute` and `poll` run, device by device, with how long each took). Only NATS is
//! left out. The benchmarks live here, next to the binary, because they need the simulator and
//! the agent crate does not link it.
//!
//! Each benchmark starts its own simulator (minersim in shared mode, instant physics), which
//! binds ports 80, 4028 and 4433 on 0.0.0.0, so a benchmark runs alone: it fails, saying so,
//! when anything else holds them (`ebb dev` included).
//!
//! [`MinerPath`]: ebb_agent::MinerPath

mod command;
pub(crate) mod curtail;
mod fleet;
mod gateway_flood;
mod measure;
mod poll;
mod preview;
mod rate;
mod reconcile_pass;
mod throwaway;

pub use command::{CommandReport, bench_command};
pub use curtail::{CurtailArgs, CurtailReport, bench_curtail};
pub use fleet::{FirmwareFigures, Registration};
pub use gateway_flood::{FloodArgs, FloodReport, bench_gateway_flood};
pub use poll::{PollReport, bench_poll};
pub use preview::{PreviewReport, bench_preview};
pub use rate::{RateReport, bench_rate};
pub use reconcile_pass::{ReconcilePassReport, bench_reconcile_pass};

use ebb_agent::MinerPathSettings;
use std::process::ExitCode;

/// The most miners one benchmark simulates: the simulator's address space from a random base
/// holds a few hundred thousand, and 200,000 is twice the fleet the issue asks for.
pub const MAX_MINERS: usize = 200_000;

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// One `curtail{full}` to every miner, with p50 and p99 latency per miner.
    Command(BenchArgs),
    /// One full telemetry poll of every miner, with CPU seconds per 10,000 samples.
    Poll(BenchArgs),
    /// The whole path end to end: one `full` curtailment of every miner through the gateway,
    /// then its stop, with every service in this process.
    Curtail(CurtailArgs),
    /// Previews over N candidates asked of the planner over NATS: the first, then the median
    /// of --runs sequential ones and of --runs rounds of 8 concurrent ones.
    Preview {
        /// Candidates (hashing miners with fresh telemetry) in the preview's scope.
        #[arg(long, default_value_t = 100_000)]
        miners: usize,
        /// Sequential previews, and rounds of concurrent ones.
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// One reconciler pass over N live targets: the first, one with nothing new, one after a
    /// telemetry batch (medians of --runs).
    ReconcilePass {
        /// Live targets, all confirmed in one active event.
        #[arg(long, default_value_t = 100_000)]
        targets: usize,
        /// Timed runs of each pass.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// The gateway under a flood of bad tokens, with a valid key's latency meanwhile (needs
    /// DATABASE_URL; see `bench/gateway_flood.rs`).
    GatewayFlood(FloodArgs),
    /// Rating one day of an N-miner event, and what the rater's facts add to the target
    /// transitions (see `bench/rate.rs`).
    Rate {
        /// Miners in the event.
        #[arg(long, default_value_t = 10_000)]
        miners: usize,
        /// Timed re-runs over the same day.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Simulated miners.
    #[arg(long, default_value_t = 10_000)]
    pub miners: usize,
    /// Miners driven at once (the agent's --max-in-flight).
    #[arg(long)]
    pub max_in_flight: Option<usize>,
    /// Leave the miners' firmware out of the inventory and drive them through asic-rs alone,
    /// identifying each first (the agent before ADR 0008).
    #[arg(long)]
    pub unregistered: bool,
    /// Slow firmware: every simulated reply waits a draw from a log-normal distribution with
    /// this median and 99th percentile, `P50_MS,P99_MS` (for example `300,3000`).
    #[arg(long, value_name = "P50_MS,P99_MS")]
    pub latency: Option<ebb_minersim::Latency>,
}

impl BenchArgs {
    /// The agent's default settings, with `--max-in-flight` if given.
    fn settings(&self) -> MinerPathSettings {
        let mut settings = MinerPathSettings::default();
        if let Some(n) = self.max_in_flight {
            settings.max_in_flight = n;
        }
        settings
    }

    fn registration(&self) -> Registration {
        if self.unregistered {
            Registration::Unregistered
        } else {
            Registration::Registered
        }
    }
}

pub async fn run(command: BenchCommand) -> anyhow::Result<ExitCode> {
    let report = match command {
        BenchCommand::Command(args) => serde_json::to_string(
            &bench_command(
                args.miners,
                args.settings(),
                args.registration(),
                args.latency,
            )
            .await?,
        )?,
        BenchCommand::Poll(args) => serde_json::to_string(
            &bench_poll(
                args.miners,
                args.settings(),
                args.registration(),
                args.latency,
            )
            .await?,
        )?,
        BenchCommand::Curtail(args) => serde_json::to_string(&bench_curtail(args).await?)?,
        BenchCommand::Preview { miners, runs } => {
            serde_json::to_string(&bench_preview(miners, runs).await?)?
        }
        BenchCommand::ReconcilePass { targets, runs } => {
            serde_json::to_string(&bench_reconcile_pass(targets, runs).await?)?
        }
        BenchCommand::GatewayFlood(args) => {
            serde_json::to_string(&bench_gateway_flood(&args).await?)?
        }
        BenchCommand::Rate { miners, runs } => {
            serde_json::to_string(&bench_rate(miners, runs).await?)?
        }
    };
    println!("{report}");
    Ok(ExitCode::SUCCESS)
}

/// Checks the fleet size and the settings a benchmark was given, reporting every problem.
fn validate(miners: usize, settings: &MinerPathSettings) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    if !(1..=MAX_MINERS).contains(&miners) {
        problems.push(format!(
            "miners must be between 1 and {MAX_MINERS}, got {miners}"
        ));
    }
    if !(1..=10_000).contains(&settings.max_in_flight) {
        problems.push(format!(
            "max_in_flight must be between 1 and 10000, got {}",
            settings.max_in_flight
        ));
    }
    if settings.call_timeout.is_zero() || settings.control_timeout.is_zero() {
        problems.push("call_timeout and control_timeout must be positive".to_owned());
    }
    if settings.max_cached_miners == 0 {
        problems.push("max_cached_miners must be positive".to_owned());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("invalid benchmark options: {}", problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_default_to_the_agent_and_are_checked() {
        let o = MinerPathSettings::default();
        assert_eq!(o.max_in_flight, 4096);
        assert!(validate(100_000, &o).is_ok());
        let err = validate(
            0,
            &MinerPathSettings {
                max_in_flight: 0,
                ..o
            },
        )
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
        let registered = Registration::Registered;
        assert_send(bench_command(
            1,
            MinerPathSettings::default(),
            registered,
            None,
        ));
        assert_send(bench_poll(
            1,
            MinerPathSettings::default(),
            registered,
            None,
        ));
    }
}
