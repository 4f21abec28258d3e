//! Configuration and entry point for `ebb sim serve`.
//!
//! The fleet comes from a TOML file (`--fleet`, see [`crate::fleet`]) or, without one, from
//! `--miners N --model M --site NAME`. Once every miner listens, [`run`] prints one JSON line per
//! miner to stdout (`{"address","make","model","model_name","firmware","site"}`) and serves until
//! the shutdown token fires.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::fleet::FleetSpec;
use crate::latency::Latency;
use crate::model::Model;
use crate::net::ListenMode;
use crate::physics::Physics;
use crate::{ClockStart, SimOptions};

/// Settings of `ebb sim serve`.
#[derive(Clone, Debug, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    /// TOML fleet description; without it, --miners/--model/--site describe one group.
    #[arg(long, env = "EBB_SIM_FLEET")]
    pub fleet: Option<PathBuf>,
    /// Number of miners when no fleet file is given.
    #[arg(long, env = "EBB_SIM_MINERS", default_value_t = 10)]
    pub miners: u32,
    /// Model of the miners when no fleet file is given.
    #[arg(long, env = "EBB_SIM_MODEL", value_enum, default_value = "s19_pro")]
    pub model: Model,
    /// Site name when no fleet file is given.
    #[arg(long, env = "EBB_SIM_SITE", default_value = "sim")]
    pub site: String,
    /// Seed for per-unit spread and random fault shares (overrides the fleet file's).
    #[arg(long, env = "EBB_SIM_SEED")]
    pub seed: Option<u64>,
    /// First miner address (127.x.y.z); random when absent.
    #[arg(long, env = "EBB_SIM_BASE_ADDRESS")]
    pub base_address: Option<Ipv4Addr>,
    /// Where the control API listens (port 0 picks a free port).
    #[arg(long, env = "EBB_SIM_CONTROL_ADDR", default_value = "127.0.0.1:0")]
    pub control_addr: SocketAddr,
    /// per-address (one listener per miner and port) or shared (one per port on 0.0.0.0).
    #[arg(long, env = "EBB_SIM_MODE", value_enum, default_value = "per-address")]
    pub mode: ListenMode,
    /// Seconds for a full power ramp (nominal to idle and back); default 20.
    #[arg(long, env = "EBB_SIM_RAMP_SECONDS")]
    pub ramp_seconds: Option<f64>,
    /// No ramps at all: power changes at once.
    #[arg(long, env = "EBB_SIM_INSTANT", conflicts_with = "ramp_seconds")]
    pub instant: bool,
    /// Start with the simulation clock paused (step it through the control API).
    #[arg(long, env = "EBB_SIM_PAUSED_CLOCK")]
    pub paused_clock: bool,
    /// Slow firmware: every reply waits a delay drawn from a log-normal distribution with this
    /// median and 99th percentile, `P50_MS,P99_MS` (for example `300,3000`).
    #[arg(long, env = "EBB_SIM_LATENCY", value_name = "P50_MS,P99_MS")]
    pub latency: Option<Latency>,
    /// Percent of the fleet (chosen by the seed) that acknowledges every command and never
    /// acts on it.
    #[arg(
        long,
        env = "EBB_SIM_FAULTY",
        value_name = "PCT",
        default_value_t = 0.0
    )]
    pub faulty: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            fleet: None,
            miners: 10,
            model: Model::S19Pro,
            site: "sim".to_owned(),
            seed: None,
            base_address: None,
            control_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            mode: ListenMode::PerAddress,
            ramp_seconds: None,
            instant: false,
            paused_clock: false,
            latency: None,
            faulty: 0.0,
        }
    }
}

impl SimConfig {
    /// Checks the settings, reporting every problem at once.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut problems = Vec::new();
        if self.fleet.is_none() && self.miners == 0 {
            problems.push("--miners must be at least 1".to_owned());
        }
        if self.fleet.is_none() && self.site.trim().is_empty() {
            problems.push("--site must not be empty".to_owned());
        }
        if let Some(r) = self.ramp_seconds
            && (!r.is_finite() || !(0.0..=3600.0).contains(&r))
        {
            problems.push(format!(
                "--ramp-seconds must be between 0 and 3600, got {r}"
            ));
        }
        if self.instant && self.ramp_seconds.is_some() {
            problems.push("--instant and --ramp-seconds contradict each other".to_owned());
        }
        if let Some(base) = self.base_address
            && base.octets()[0] != 127
        {
            problems.push(format!("--base-address {base} is not in 127.0.0.0/8"));
        }
        if !self.faulty.is_finite() || !(0.0..=100.0).contains(&self.faulty) {
            problems.push(format!(
                "--faulty must be a percentage between 0 and 100, got {}",
                self.faulty
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("invalid simulator settings: {}", problems.join("; "))
        }
    }

    /// The fleet these settings describe.
    pub fn fleet_spec(&self) -> anyhow::Result<FleetSpec> {
        let mut spec = match &self.fleet {
            Some(path) => FleetSpec::from_path(path)?,
            None => FleetSpec::single(self.site.clone(), self.model, self.miners),
        };
        if let Some(seed) = self.seed {
            spec.seed = seed;
        }
        if let Some(base) = self.base_address {
            spec.base_address = Some(base);
        }
        spec.validate()?;
        Ok(spec)
    }

    /// The simulator options these settings describe.
    pub fn options(&self) -> SimOptions {
        let mut physics = Physics::default();
        if self.instant {
            physics = Physics::instant();
        } else if let Some(r) = self.ramp_seconds {
            physics = physics.with_ramp(Duration::from_secs_f64(r));
        }
        SimOptions {
            mode: self.mode,
            base_address: self.base_address,
            control_addr: Some(self.control_addr),
            physics,
            clock: if self.paused_clock {
                ClockStart::Paused
            } else {
                ClockStart::Running
            },
            latency: self.latency,
            faulty_share: self.faulty / 100.0,
            ..SimOptions::default()
        }
    }
}

/// Runs the simulator until `shutdown` fires: prints one JSON line per miner once listening.
pub async fn run(config: SimConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    config.validate()?;
    let spec = config.fleet_spec()?;
    let sim = crate::start(spec, config.options()).await?;
    {
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::new(stdout.lock());
        for m in sim.miners() {
            let line = json!({
                "address": m.address,
                "make": m.make,
                "model": m.model,
                "model_name": m.model_name,
                "firmware": m.firmware,
                "site": m.site,
            });
            serde_json::to_writer(&mut out, &line)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
    }
    tracing::info!(
        miners = sim.len(),
        mode = ?sim.mode(),
        control_addr = ?sim.control_addr(),
        "miner simulator listening"
    );
    shutdown.cancelled().await;
    sim.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimConfig,
    }

    #[test]
    fn flags_parse_into_a_fleet_and_options() {
        let cli = Cli::try_parse_from([
            "sim",
            "--miners",
            "5",
            "--model",
            "m60s",
            "--site",
            "tx",
            "--mode",
            "shared",
            "--ramp-seconds",
            "3",
            "--base-address",
            "127.9.0.1",
            "--latency",
            "300,3000",
            "--faulty",
            "5",
        ])
        .unwrap();
        cli.sim.validate().unwrap();
        let spec = cli.sim.fleet_spec().unwrap();
        assert_eq!(spec.miner_count(), 5);
        assert_eq!(spec.sites[0].groups[0].model, Model::M60s);
        let opts = cli.sim.options();
        assert_eq!(opts.mode, ListenMode::Shared);
        assert_eq!(opts.physics.ramp_down_s, 3.0);
        assert_eq!(opts.latency, Some("300,3000".parse().unwrap()));
        assert_eq!(opts.faulty_share, 0.05);
        assert!(Cli::try_parse_from(["sim", "--latency", "3000,300"]).is_err());
    }

    #[test]
    fn defaults_match_between_clap_and_serde() {
        let cli = Cli::try_parse_from(["sim"]).unwrap();
        let from_serde: SimConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(cli.sim, from_serde);
        assert!(Cli::try_parse_from(["sim", "--instant", "--ramp-seconds", "2"]).is_err());
    }
}
