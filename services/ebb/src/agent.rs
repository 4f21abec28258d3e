//! `ebb agent scan <range>` identifies the miners in an address range, shows progress on stderr,
//! prints one JSON line per miner found on stdout and, with `--register --site`, registers them
//! with the planner over NATS. (`ebb agent [flags]` itself runs the agent: a line of the service
//! table.) The scan subcommand excludes the agent's own settings.

use anyhow::Context;
use clap::Args;
use ebb_agent::{ScanOptions, ScanProgress};
use ebb_domain::SiteCode;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

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
    #[arg(long, env = "NATS_URL", default_value = ebb_runtime::settings::DEFAULT_NATS_URL)]
    pub nats_url: ebb_obs::CredUrl,
    /// NATS credentials file (with --register).
    #[arg(long, env = "EBB_NATS_CREDS")]
    pub nats_creds: Option<std::path::PathBuf>,
    /// CA the NATS server's certificate chains to (with --register).
    #[arg(long, env = "EBB_NATS_CA")]
    pub nats_ca: Option<std::path::PathBuf>,
}

fn parse_site(s: &str) -> Result<SiteCode, String> {
    SiteCode::parse(s).map_err(|e| e.to_string())
}

/// Adds `scan` to the agent's subcommand: either the agent's settings or `scan`, not both.
pub fn with_scan(agent: clap::Command) -> clap::Command {
    agent
        .subcommand(ScanArgs::augment_args(
            clap::Command::new("scan")
                .about("Identify the miners in an address range, with progress"),
        ))
        .args_conflicts_with_subcommands(true)
        .subcommand_negates_reqs(true)
}

/// Runs `ebb agent scan`.
pub async fn scan(args: ScanArgs) -> anyhow::Result<ExitCode> {
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
        let path = |p: &Option<std::path::PathBuf>| {
            p.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        let common = ebb_runtime::Common {
            nats_url: args.nats_url.clone(),
            nats_creds: path(&args.nats_creds),
            nats_ca: path(&args.nats_ca),
            ..ebb_runtime::Common::default()
        };
        let client = ebb_runtime::context::connect_nats(&common, "ebb-agent-scan").await?;
        let registered =
            ebb_agent::register(&client, &site, &result.devices, Duration::from_secs(30))
                .await
                .context("registering the miners with the planner")?;
        eprintln!("registered {registered} devices in site {site}");
    }
    Ok(ExitCode::SUCCESS)
}
