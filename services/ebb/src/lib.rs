//! `ebb`: one binary for every Ebb service (DESIGN §1, ADR 0005).
//!
//! - `ebb <service> [flags]` for each line of [`services::SERVICES`] (gateway, planner,
//!   reconciler, worker, agent) runs one service until SIGINT or SIGTERM, with its settings read
//!   in layers (defaults → `--config FILE` → environment → flags); `--print-config` prints them
//!   as TOML, `--check-config` also says whether they are valid. This is how `compose.yaml` runs
//!   them, one per process.
//! - `ebb agent scan <range>` identifies the miners in an address range.
//! - `ebb worker rate [--since T] [--until T]` rates curtailed energy once (see [`worker`]).
//! - `ebb sim serve` runs the miner simulator.
//! - `ebb admin …` migrates the database and creates orgs, sites and API keys.
//! - `ebb bench command|poll --miners N` runs the agent's benchmarks against a simulator;
//!   `ebb bench curtail` the whole path end to end; `ebb bench gateway-flood` the gateway under a
//!   flood of bad tokens.
//! - `ebb chaos` kills processes at random points of curtail and restore (see [`chaos`]).
//! - `ebb dev` runs every service of the table in one process against a throwaway PostgreSQL and
//!   nats-server under `.ebb/`, with a simulated fleet (see [`dev`]).
//!
//! [`cli`] is the clap definition; tests check `compose.yaml`'s commands against it.

pub mod admin;
pub mod agent;
pub mod bench;
pub mod chaos;
pub mod dev;
pub mod localhub;
pub mod services;
pub mod worker;

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::process::ExitCode;

/// The commands that are not services of the table.
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
    /// Kills services, nats-server and PostgreSQL at random points of curtail and restore, and
    /// checks nothing was lost; prints one JSON line per trial and a summary.
    Chaos(chaos::ChaosArgs),
}

#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Serve a simulated fleet: prints one JSON line per miner once listening.
    Serve(ebb_minersim::SimConfig),
    /// One site's simulator for `ebb dev`, which runs it as a child process.
    #[command(hide = true)]
    DevSite(dev::fleet::SiteArgs),
}

/// The clap definition of every command: the ones above and a subcommand per service of the
/// table, with a flag per setting.
pub fn cli() -> clap::Command {
    let mut cmd = Cli::command();
    for entry in services::SERVICES {
        let mut sub = ebb_runtime::cli::command(entry);
        if entry.name == <ebb_agent::AgentService as ebb_runtime::Service>::NAME {
            sub = agent::with_scan(sub);
        }
        if entry.name == <ebb_worker::WorkerService as ebb_runtime::Service>::NAME {
            sub = worker::with_rate(sub);
        }
        cmd = cmd.subcommand(sub);
    }
    cmd
}

/// The default `service.name` of the process `ebb <subcommand>` starts: the service's own name
/// when it runs one service of the table, `ebb` otherwise (`ebb dev` runs them all in one
/// process, and each span's `ebb.service` attribute tells them apart).
pub fn service_name(subcommand: Option<&str>) -> &'static str {
    subcommand
        .and_then(services::find)
        .map_or("ebb", |entry| entry.name)
}

/// Runs a parsed command line. The tracing subscriber and the Prometheus recorder are installed
/// by the caller, once per process.
pub async fn run(matches: ArgMatches) -> anyhow::Result<ExitCode> {
    if let Some((name, sub)) = matches.subcommand()
        && let Some(entry) = services::find(name)
    {
        if let Some(("scan", scan)) = sub.subcommand() {
            return agent::scan(agent::ScanArgs::from_arg_matches(scan)?).await;
        }
        if let Some(("rate", rate)) = sub.subcommand() {
            return worker::rate(worker::RateArgs::from_arg_matches(rate)?).await;
        }
        return ebb_runtime::cli::main(entry, sub).await;
    }
    match Cli::from_arg_matches(&matches)?.command {
        Command::Sim {
            command: SimCommand::Serve(config),
        } => {
            let signals = ebb_runtime::Signals::install()?;
            ebb_minersim::run(config, signals.token()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sim {
            command: SimCommand::DevSite(args),
        } => dev::fleet::serve_site(args).await,
        Command::Admin(args) => admin::run(args).await,
        Command::Dev(args) => dev::run(args).await,
        Command::Bench { command } => bench::run(command).await,
        Command::Chaos(args) => chaos::run(args).await,
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
    fn a_service_process_is_named_after_its_service() {
        for (sub, name) in [
            (Some("planner"), "planner"),
            (Some("agent"), "agent"),
            (Some("dev"), "ebb"),
            (Some("admin"), "ebb"),
            (None, "ebb"),
        ] {
            assert_eq!(service_name(sub), name, "{sub:?}");
        }
    }

    #[test]
    fn every_service_of_the_table_is_a_subcommand() {
        for entry in services::SERVICES {
            let m = cli().try_get_matches_from(["ebb", entry.name, "--print-config"]);
            assert!(m.is_ok(), "{}: {m:?}", entry.name);
        }
    }

    #[test]
    fn worker_rate_and_worker_run_parse_apart() {
        let m = cli()
            .try_get_matches_from([
                "ebb",
                "worker",
                "rate",
                "--since",
                "2026-01-01T00:00:00Z",
                "--database-url",
                "postgres://db/ebb",
            ])
            .unwrap();
        let (name, sub) = m.subcommand().unwrap();
        assert_eq!(name, "worker");
        let (rate, args) = sub.subcommand().unwrap();
        assert_eq!(rate, "rate");
        let args = worker::RateArgs::from_arg_matches(args).unwrap();
        assert!(args.since.is_some() && args.until.is_none());
        assert!(
            cli()
                .try_get_matches_from(["ebb", "worker", "rate", "--until", "yesterday"])
                .is_err(),
            "--until is an RFC 3339 instant"
        );
        let m = cli()
            .try_get_matches_from(["ebb", "worker", "--check-config"])
            .unwrap();
        assert_eq!(m.subcommand().unwrap().1.subcommand_name(), None);
    }

    #[test]
    fn agent_scan_and_agent_run_parse_apart() {
        let m = cli()
            .try_get_matches_from(["ebb", "agent", "scan", "127.0.0.1-5"])
            .unwrap();
        let (name, sub) = m.subcommand().unwrap();
        assert_eq!(name, "agent");
        assert_eq!(sub.subcommand_name(), Some("scan"));
        let m = cli()
            .try_get_matches_from(["ebb", "agent", "--site", "site-a", "--check-config"])
            .unwrap();
        assert_eq!(m.subcommand().unwrap().1.subcommand_name(), None);
        assert!(
            cli()
                .try_get_matches_from(["ebb", "agent", "--site", "a", "scan", "127.0.0.1-5"])
                .is_err(),
            "the agent's settings do not mix with scan"
        );
    }
}
