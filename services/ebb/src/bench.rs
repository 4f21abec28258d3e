//! `ebb bench command|poll --miners N`: the agent's benchmarks (`ebb_agent::bench`). Each starts
//! its own simulator, drives every miner the way the agent does, and prints one JSON object with
//! at least `miners`, `seconds` and `per_second`. The simulator binds the miner ports on 0.0.0.0,
//! so a benchmark runs alone: it fails, saying so, when anything else holds them (`ebb dev`
//! included).

use ebb_agent::bench::{self, BenchOptions};
use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// One `curtail{full}` to every miner, with p50 and p99 latency per miner.
    Command(BenchArgs),
    /// One full telemetry poll of every miner, with CPU seconds per 10,000 samples.
    Poll(BenchArgs),
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Simulated miners.
    #[arg(long, default_value_t = 10_000)]
    pub miners: usize,
    /// Miners driven at once (the agent's --max-in-flight).
    #[arg(long)]
    pub max_in_flight: Option<usize>,
}

impl BenchArgs {
    fn options(&self) -> BenchOptions {
        let mut options = BenchOptions::default();
        if let Some(n) = self.max_in_flight {
            options.max_in_flight = n;
        }
        options
    }
}

pub async fn run(command: BenchCommand) -> anyhow::Result<ExitCode> {
    let report = match command {
        BenchCommand::Command(args) => {
            serde_json::to_string(&bench::bench_command(args.miners, args.options()).await?)?
        }
        BenchCommand::Poll(args) => {
            serde_json::to_string(&bench::bench_poll(args.miners, args.options()).await?)?
        }
    };
    println!("{report}");
    Ok(ExitCode::SUCCESS)
}
