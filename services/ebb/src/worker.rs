//! `ebb worker rate [--since T] [--until T]`: one settlement rating run now
//! ([`ebb_worker::rate`]), printing its report as one JSON line and exiting with the run's code
//! (reference `002_*`): without flags a routine run over the trailing 24 closed hours, which
//! exits 2 if it deleted a previously rated row; with either flag an explicit backfill, which
//! exits 0 then; any other anomaly exits 2 in both. (`ebb worker [flags]` itself runs the
//! worker: a line of the service table.) The subcommand excludes the worker's own settings.

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Args;
use std::process::ExitCode;

/// Rate curtailed energy into settlement windows once.
#[derive(Debug, Clone, Args)]
pub struct RateArgs {
    /// Backfill from this instant (RFC 3339), widened down to the hour.
    #[arg(long)]
    pub since: Option<DateTime<Utc>>,
    /// Backfill until this instant (RFC 3339, exclusive), widened up to the hour.
    #[arg(long)]
    pub until: Option<DateTime<Utc>>,
    /// PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: ebb_obs::CredUrl,
}

/// Adds `rate` to the worker's subcommand: either the worker's settings or `rate`, not both.
pub fn with_rate(worker: clap::Command) -> clap::Command {
    worker
        .subcommand(RateArgs::augment_args(clap::Command::new("rate").about(
            "Rate curtailed energy into settlement windows once (a routine run without \
                 flags; a backfill with --since and/or --until)",
        )))
        .args_conflicts_with_subcommands(true)
        .subcommand_negates_reqs(true)
}

/// Runs `ebb worker rate`.
pub async fn rate(args: RateArgs) -> anyhow::Result<ExitCode> {
    let pool = ebb_store::connect(args.database_url.as_str(), 2)
        .await
        .with_context(|| format!("connecting to {}", args.database_url.redacted()))?;
    let report = ebb_worker::rate::rate_cli(&pool, args.since, args.until).await;
    pool.close().await;
    let report = report?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(ExitCode::from(report.exit_code))
}
