//! `ebb agent [flags]` runs one site's agent; `ebb agent scan <range>` identifies the miners in
//! an address range, shows progress on stderr, prints one JSON line per miner found on stdout and,
//! with `--register --site`, registers them with the planner over NATS.
//!
//! The two forms share the command name, and the agent's `--site` is required only to run it, so
//! [`AgentArgs`] is parsed by hand: the scan subcommand excludes the agent's own flags.

use crate::service::{self, CheckConfig, Standalone};
use anyhow::Context;
use clap::{ArgMatches, Args, FromArgMatches};
use ebb_agent::{AgentConfig, ScanOptions, ScanProgress};
use ebb_domain::SiteCode;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

/// `ebb agent`: run the agent, or scan.
#[derive(Debug)]
pub enum AgentArgs {
    Run {
        config: AgentConfig,
        standalone: Standalone,
    },
    Scan(ScanArgs),
}

/// Identify the miners in an address range, with progress.
#[derive(Debug, Clone, Args)]
pub struct ScanArgs {
    /// The addresses to probe: `127.77.1.1-50`, `10.0-3.0.1-254` or a CIDR such as `10.1.0.0/24`.
    pub range: String,
    /// Addresses probed at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Deadline of identifying one address, e.g. `5s`.
    #[arg(long, default_value = "10s", value_parser = ebb_agent::config::parse_duration)]
    pub timeout: Duration,
    /// Register what was found with the planner, as devices of this site.
    #[arg(long, requires = "site")]
    pub register: bool,
    /// The site the miners belong to (with --register).
    #[arg(long, value_parser = parse_site)]
    pub site: Option<SiteCode>,
    /// NATS server of the planner (with --register).
    #[arg(long, env = "NATS_URL", default_value = ebb_agent::config::DEFAULT_NATS_URL)]
    pub nats_url: String,
}

fn parse_site(s: &str) -> Result<SiteCode, String> {
    SiteCode::parse(s).map_err(|e| e.to_string())
}

impl Args for AgentArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        let cmd = Standalone::augment_args(AgentConfig::augment_args(cmd));
        cmd.subcommand(ScanArgs::augment_args(
            clap::Command::new("scan")
                .about("Identify the miners in an address range, with progress"),
        ))
        .args_conflicts_with_subcommands(true)
        .subcommand_negates_reqs(true)
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for AgentArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        match m.subcommand() {
            Some(("scan", sub)) => Ok(AgentArgs::Scan(ScanArgs::from_arg_matches(sub)?)),
            _ => Ok(AgentArgs::Run {
                config: AgentConfig::from_arg_matches(m)?,
                standalone: Standalone::from_arg_matches(m)?,
            }),
        }
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

pub async fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    match args {
        AgentArgs::Run {
            config,
            standalone:
                Standalone {
                    check: CheckConfig { check_config },
                    metrics_listen,
                },
        } => {
            let valid = config.validate().map_err(|e| e.problems);
            if check_config {
                return Ok(service::check_config("agent", &config, valid));
            }
            if let Err(problems) = valid {
                return Ok(service::report_invalid("agent", &problems));
            }
            service::serve("agent", metrics_listen, |shutdown| {
                ebb_agent::run(config, shutdown)
            })
            .await
        }
        AgentArgs::Scan(args) => scan(args).await,
    }
}

async fn scan(args: ScanArgs) -> anyhow::Result<ExitCode> {
    let options = ScanOptions {
        concurrency: args.concurrency.max(1),
        identification_timeout: args.timeout,
        ..ScanOptions::default()
    };
    let mut last_line = 0usize;
    let result = ebb_agent::scan(&args.range, &options, |p: ScanProgress| {
        // One line rewritten in place; a terminal shows it as a counter.
        let line = format!(
            "scanned {}/{} addresses, {} miners found",
            p.scanned, p.total, p.found
        );
        let pad = last_line.saturating_sub(line.len());
        eprint!("\r{line}{:pad$}", "");
        last_line = line.len();
    })
    .await?;
    eprintln!();
    {
        let mut out = std::io::stdout().lock();
        for device in &result.devices {
            serde_json::to_writer(&mut out, device)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
    }
    eprintln!(
        "{} miners found in {} addresses",
        result.devices.len(),
        result.scanned
    );
    if args.register {
        let site = args.site.context("--register needs --site")?;
        if result.devices.is_empty() {
            eprintln!("nothing to register");
            return Ok(ExitCode::SUCCESS);
        }
        let client = ebb_bus::connect(&args.nats_url, "ebb-agent-scan")
            .await
            .with_context(|| format!("connecting to nats at {}", args.nats_url))?;
        let registered =
            ebb_agent::register(&client, &site, &result.devices, Duration::from_secs(30))
                .await
                .context("registering the miners with the planner")?;
        eprintln!("registered {registered} devices in site {site}");
    }
    Ok(ExitCode::SUCCESS)
}
