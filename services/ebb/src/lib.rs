//! `ebb`: one binary for every Ebb service (DESIGN §1).
//!
//! - `ebb gateway|planner|reconciler|worker|agent [flags]` runs one service until SIGINT or
//!   SIGTERM; `--check-config` prints its effective settings (secrets hidden) and exits non-zero
//!   naming every bad setting at once. This is how `compose.yaml` runs them, one per process.
//! - `ebb agent scan <range>` identifies the miners in an address range.
//! - `ebb sim serve` runs the miner simulator.
//! - `ebb admin …` migrates the database and creates orgs, sites and API keys.
//! - `ebb bench command|poll --miners N` runs the agent's benchmarks against a simulator.
//! - `ebb dev` runs everything in one process against a throwaway PostgreSQL and nats-server
//!   under `.ebb/`, with a simulated fleet (see [`dev`]).
//!
//! [`cli`] is the clap definition; tests check `compose.yaml`'s commands against it.

pub mod admin;
pub mod agent;
pub mod bench;
pub mod dev;
pub mod service;
pub mod signals;

use clap::{CommandFactory, Parser, Subcommand};
use std::process::ExitCode;

/// Every `ebb` command.
#[derive(Debug, Parser)]
#[command(
    name = "ebb",
    version,
    about = "Ebb: shed the load of Bitcoin-mining fleets on demand"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The operator HTTP API.
    Gateway(service::GatewayArgs),
    /// Selection, preview, start and stop of curtailments (NATS service).
    Planner(service::PlannerArgs),
    /// Drives curtailment events through their state machines (leader-elected).
    Reconciler(service::ReconcilerArgs),
    /// Background jobs: the outbox relay.
    Worker(service::WorkerArgs),
    /// One site's device driver; `ebb agent scan <range>` identifies miners.
    Agent(agent::AgentArgs),
    /// The miner simulator.
    Sim {
        #[command(subcommand)]
        command: SimCommand,
    },
    /// Database migrations, orgs, sites and API keys.
    Admin(admin::AdminArgs),
    /// Everything in one process, with a simulated fleet, for development.
    Dev(dev::DevArgs),
    /// Benchmarks of the miner path; each prints one JSON object.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Serve a simulated fleet: prints one JSON line per miner once listening.
    Serve(ebb_minersim::SimConfig),
    /// One site's simulator for `ebb dev`, which runs it as a child process.
    #[command(hide = true)]
    DevSite(dev::fleet::SiteArgs),
}

/// The clap definition of every command, for tests and completions.
pub fn cli() -> clap::Command {
    Cli::command()
}

/// Runs a parsed command line. The tracing subscriber and the Prometheus recorder are installed
/// by the caller, once per process.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Gateway(args) => service::gateway(args).await,
        Command::Planner(args) => service::planner(args).await,
        Command::Reconciler(args) => service::reconciler(args).await,
        Command::Worker(args) => service::worker(args).await,
        Command::Agent(args) => agent::run(args).await,
        Command::Sim {
            command: SimCommand::Serve(config),
        } => {
            let signals = signals::Signals::install()?;
            ebb_minersim::run(config, signals.token()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sim {
            command: SimCommand::DevSite(args),
        } => dev::fleet::serve_site(args).await,
        Command::Admin(args) => admin::run(args).await,
        Command::Dev(args) => dev::run(args).await,
        Command::Bench { command } => bench::run(command).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_definition_is_consistent() {
        cli().debug_assert();
    }

    #[test]
    fn agent_scan_and_agent_run_parse_apart() {
        let m = cli().try_get_matches_from(["ebb", "agent", "scan", "127.0.0.1-5"]);
        assert!(m.is_ok(), "{m:?}");
        let parsed = Cli::try_parse_from(["ebb", "agent", "scan", "127.0.0.1-5"]).unwrap();
        assert!(matches!(
            parsed.command,
            Command::Agent(agent::AgentArgs::Scan(_))
        ));
        let parsed =
            Cli::try_parse_from(["ebb", "agent", "--site", "site-a", "--check-config"]).unwrap();
        assert!(matches!(
            parsed.command,
            Command::Agent(agent::AgentArgs::Run { .. })
        ));
    }
}
