//! The agent's typed configuration: one struct that is both a set of `clap` flags (with `EBB_*`
//! environment fallbacks) and a serde table (`deny_unknown_fields`), checked by
//! [`AgentConfig::validate`], which reports every problem at once.
//!
//! Durations are written the way operators write them: `500ms`, `10s`, `2m`, `1h`.

use clap::Args;
use ebb_domain::SiteCode;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// Where the agent connects when nothing else is said.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// Settings of one site's agent.
#[derive(Clone, PartialEq, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// NATS server the agent consumes commands from and publishes results and telemetry to.
    #[arg(long, env = "NATS_URL", default_value = DEFAULT_NATS_URL)]
    #[serde(default = "default_nats_url")]
    pub nats_url: String,

    /// The site this agent drives; it consumes `ebb.cmd.<site>` only.
    #[arg(long, env = "EBB_AGENT_SITE", value_parser = parse_site)]
    pub site: SiteCode,

    /// Most miner calls in flight at once, per batch and per poll cycle.
    #[arg(long, env = "EBB_AGENT_MAX_IN_FLIGHT", default_value_t = defaults::MAX_IN_FLIGHT)]
    #[serde(default = "defaults::max_in_flight")]
    pub max_in_flight: usize,

    /// Deadline of each call that reads from a miner (identify, telemetry, state before a command).
    #[arg(long, env = "EBB_AGENT_CALL_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    #[serde(default = "defaults::call_timeout", with = "duration_text")]
    pub call_timeout: Duration,

    /// Deadline of each control call (pause, resume, set a power limit). One control is several
    /// requests, and stock Antminer firmware takes about 20 s to apply a sleep (asic-rs itself
    /// allows 120 s), so this is longer than `call_timeout`. A miner that does not answer at all
    /// is caught by the read before the command, within `call_timeout`.
    #[arg(long, env = "EBB_AGENT_CONTROL_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    #[serde(default = "defaults::control_timeout", with = "duration_text")]
    pub control_timeout: Duration,

    /// How often every miner of the inventory is polled for telemetry.
    #[arg(long, env = "EBB_AGENT_POLL_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    #[serde(default = "defaults::poll_interval", with = "duration_text")]
    pub poll_interval: Duration,

    /// How often the site's inventory is fetched again from the planner.
    #[arg(long, env = "EBB_AGENT_INVENTORY_REFRESH", default_value = "30s", value_parser = parse_duration)]
    #[serde(default = "defaults::inventory_refresh", with = "duration_text")]
    pub inventory_refresh: Duration,

    /// The power limit a `curtail{efficiency}` sets, in percent of the miner's power limit before
    /// the curtail (or of its measured power when it has no readable limit).
    #[arg(long, env = "EBB_AGENT_EFFICIENCY_LIMIT_PCT", default_value_t = defaults::EFFICIENCY_LIMIT_PCT)]
    #[serde(default = "defaults::efficiency_limit_pct")]
    pub efficiency_limit_pct: f64,

    /// Most miner handles kept between calls; beyond it a handle is built for one use.
    #[arg(long, env = "EBB_AGENT_MAX_CACHED_MINERS", default_value_t = defaults::MAX_CACHED_MINERS)]
    #[serde(default = "defaults::max_cached_miners")]
    pub max_cached_miners: usize,

    /// Addresses probed at once by a discovery scan.
    #[arg(long, env = "EBB_AGENT_SCAN_CONCURRENCY", default_value_t = defaults::SCAN_CONCURRENCY)]
    #[serde(default = "defaults::scan_concurrency")]
    pub scan_concurrency: usize,
}

mod defaults {
    use std::time::Duration;

    pub const MAX_IN_FLIGHT: usize = 256;
    pub const EFFICIENCY_LIMIT_PCT: f64 = 75.0;
    pub const MAX_CACHED_MINERS: usize = 100_000;
    pub const SCAN_CONCURRENCY: usize = 256;

    pub fn max_in_flight() -> usize {
        MAX_IN_FLIGHT
    }
    pub fn call_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn control_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub fn poll_interval() -> Duration {
        Duration::from_secs(5)
    }
    pub fn inventory_refresh() -> Duration {
        Duration::from_secs(30)
    }
    pub fn efficiency_limit_pct() -> f64 {
        EFFICIENCY_LIMIT_PCT
    }
    pub fn max_cached_miners() -> usize {
        MAX_CACHED_MINERS
    }
    pub fn scan_concurrency() -> usize {
        SCAN_CONCURRENCY
    }
}

fn default_nats_url() -> String {
    DEFAULT_NATS_URL.to_owned()
}

/// Every problem found in a configuration, reported together.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("invalid agent configuration: {}", .problems.join("; "))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl AgentConfig {
    /// A configuration with every default, for `site` on `nats_url`.
    pub fn new(nats_url: impl Into<String>, site: SiteCode) -> Self {
        Self {
            nats_url: nats_url.into(),
            site,
            max_in_flight: defaults::MAX_IN_FLIGHT,
            call_timeout: defaults::call_timeout(),
            control_timeout: defaults::control_timeout(),
            poll_interval: defaults::poll_interval(),
            inventory_refresh: defaults::inventory_refresh(),
            efficiency_limit_pct: defaults::EFFICIENCY_LIMIT_PCT,
            max_cached_miners: defaults::MAX_CACHED_MINERS,
            scan_concurrency: defaults::SCAN_CONCURRENCY,
        }
    }

    /// Checks every field and reports all problems at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let url = self.nats_url.trim();
        if url.is_empty() {
            problems.push("nats_url must not be empty".to_owned());
        } else if let Some((scheme, rest)) = url.split_once("://") {
            if !matches!(scheme, "nats" | "tls" | "ws" | "wss") || rest.is_empty() {
                problems.push(format!(
                    "nats_url {url:?} must be nats://, tls://, ws:// or wss:// with a host"
                ));
            }
        } else if url.contains(char::is_whitespace) {
            problems.push(format!("nats_url {url:?} must not contain whitespace"));
        }
        if !(1..=10_000).contains(&self.max_in_flight) {
            problems.push(format!(
                "max_in_flight must be between 1 and 10000, got {}",
                self.max_in_flight
            ));
        }
        let mut range = |name: &str, d: Duration, min: Duration, max: Duration| {
            if d < min || d > max {
                problems.push(format!(
                    "{name} must be between {} and {}, got {}",
                    format_duration(min),
                    format_duration(max),
                    format_duration(d)
                ));
            }
        };
        range(
            "call_timeout",
            self.call_timeout,
            Duration::from_millis(50),
            Duration::from_secs(300),
        );
        range(
            "control_timeout",
            self.control_timeout,
            Duration::from_millis(50),
            Duration::from_secs(600),
        );
        range(
            "poll_interval",
            self.poll_interval,
            Duration::from_millis(100),
            Duration::from_secs(3600),
        );
        range(
            "inventory_refresh",
            self.inventory_refresh,
            Duration::from_millis(100),
            Duration::from_secs(86_400),
        );
        let pct = self.efficiency_limit_pct;
        if !pct.is_finite() || !(10.0..=100.0).contains(&pct) {
            problems.push(format!(
                "efficiency_limit_pct must be between 10 and 100, got {pct}"
            ));
        }
        if !(1..=10_000_000).contains(&self.max_cached_miners) {
            problems.push(format!(
                "max_cached_miners must be between 1 and 10000000, got {}",
                self.max_cached_miners
            ));
        }
        if !(1..=10_000).contains(&self.scan_concurrency) {
            problems.push(format!(
                "scan_concurrency must be between 1 and 10000, got {}",
                self.scan_concurrency
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }

    /// The effective settings on one line, for the start-up log and `--check-config`.
    pub fn describe(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for AgentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "site={} nats_url={} max_in_flight={} call_timeout={} control_timeout={} poll_interval={} \
             inventory_refresh={} efficiency_limit_pct={} max_cached_miners={} scan_concurrency={}",
            self.site,
            redact_url(&self.nats_url),
            self.max_in_flight,
            format_duration(self.call_timeout),
            format_duration(self.control_timeout),
            format_duration(self.poll_interval),
            format_duration(self.inventory_refresh),
            self.efficiency_limit_pct,
            self.max_cached_miners,
            self.scan_concurrency,
        )
    }
}

/// Written by hand so that credentials in `nats_url` never reach a log.
impl fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentConfig")
            .field("nats_url", &redact_url(&self.nats_url))
            .field("site", &self.site)
            .field("max_in_flight", &self.max_in_flight)
            .field("call_timeout", &self.call_timeout)
            .field("control_timeout", &self.control_timeout)
            .field("poll_interval", &self.poll_interval)
            .field("inventory_refresh", &self.inventory_refresh)
            .field("efficiency_limit_pct", &self.efficiency_limit_pct)
            .field("max_cached_miners", &self.max_cached_miners)
            .field("scan_concurrency", &self.scan_concurrency)
            .finish()
    }
}

/// A URL with any `user:password@` part hidden, so it can be logged.
fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

fn parse_site(s: &str) -> Result<SiteCode, String> {
    SiteCode::parse(s).map_err(|e| e.to_string())
}

/// Parses `500ms`, `10s`, `1.5s`, `2m` or `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 500ms, 10s, 2m or 1h"))?;
    let secs = match unit.trim() {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "" if value == 0.0 => 0.0,
        _ => return Err(format!("{s:?} needs a unit: ms, s, m or h")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{s:?} is out of range"))
}

/// Writes a duration in the largest unit that keeps it whole.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0s".to_owned()
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// serde adapter for durations written as text.
mod duration_text {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn site() -> SiteCode {
        SiteCode::parse("site-a").unwrap()
    }

    #[test]
    fn durations() {
        let check = |input: &str, want: Option<Duration>| {
            assert_eq!(parse_duration(input).ok(), want, "{input}")
        };
        check("500ms", Some(Duration::from_millis(500)));
        check("10s", Some(Duration::from_secs(10)));
        check("1.5s", Some(Duration::from_millis(1500)));
        check("2m", Some(Duration::from_secs(120)));
        check("1h", Some(Duration::from_secs(3600)));
        check("0", Some(Duration::ZERO));
        check("10", None);
        check("ten seconds", None);
        check("-1s", None);
        for d in [
            Duration::from_millis(250),
            Duration::from_secs(10),
            Duration::from_secs(180),
            Duration::from_secs(7200),
        ] {
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }

    #[test]
    fn defaults_are_valid_and_described() {
        let c = AgentConfig::new(DEFAULT_NATS_URL, site());
        c.validate().unwrap();
        let line = c.describe();
        assert!(
            line.contains("site=site-a")
                && line.contains("call_timeout=10s")
                && line.contains("max_in_flight=256"),
            "{line}"
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut c = AgentConfig::new("", site());
        c.max_in_flight = 0;
        c.call_timeout = Duration::ZERO;
        c.poll_interval = Duration::from_secs(100_000);
        c.efficiency_limit_pct = f64::NAN;
        let err = c.validate().unwrap_err();
        assert_eq!(err.problems.len(), 5, "{err}");
        let mut c = AgentConfig::new("http://x", site());
        c.scan_concurrency = 0;
        assert_eq!(c.validate().unwrap_err().problems.len(), 2);
    }

    #[test]
    fn serde_table_fills_defaults_and_refuses_unknown_fields() {
        let c: AgentConfig =
            serde_json::from_str(r#"{"site":"site-a","call_timeout":"2s"}"#).unwrap();
        assert_eq!(c.call_timeout, Duration::from_secs(2));
        assert_eq!(c.poll_interval, Duration::from_secs(5));
        assert_eq!(c.nats_url, DEFAULT_NATS_URL);
        assert!(serde_json::from_str::<AgentConfig>(r#"{"site":"site-a","bogus":1}"#).is_err());
        assert!(serde_json::from_str::<AgentConfig>(r#"{"site":"Site A"}"#).is_err());
        let back: AgentConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn flags() {
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            agent: AgentConfig,
        }
        let cli =
            Cli::try_parse_from(["ebb", "--site", "site-a", "--poll-interval", "250ms"]).unwrap();
        assert_eq!(cli.agent.poll_interval, Duration::from_millis(250));
        assert_eq!(cli.agent.max_in_flight, 256);
        assert!(Cli::try_parse_from(["ebb", "--site", "A.B"]).is_err());
    }

    #[test]
    fn credentials_are_not_logged() {
        let c = AgentConfig::new("nats://agent:secret@hub:4222", site());
        assert!(!c.describe().contains("secret"));
        assert!(!format!("{c:?}").contains("secret"));
    }
}
