//! The agent's settings: one typed struct (the shared NATS settings live in ebb-runtime), its
//! defaults written once in [`Default`], checked by [`Settings::problems`], which reports every
//! problem at once.
//!
//! Durations are written the way operators write them: `500ms`, `10s`, `2m`, `1h`.

use ebb_domain::SiteCode;
use ebb_runtime::{Key, Settings};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// Settings of one site's agent.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// The site this agent drives; it consumes `ebb.cmd.<site>` only. Required.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub site: Option<SiteCode>,

    /// Most miner calls in flight at once, per batch and per poll cycle.
    pub max_in_flight: usize,

    /// Deadline of each call that reads from a miner (identify, telemetry, state before a command).
    #[serde(with = "duration_text")]
    pub call_timeout: Duration,

    /// Deadline of each control call (pause, resume, set a power limit). One control is several
    /// requests, and stock Antminer firmware takes about 20 s to apply a sleep (asic-rs itself
    /// allows 120 s), so this is longer than `call_timeout`. A miner that does not answer at all
    /// is caught by the read before the command, within `call_timeout`.
    #[serde(with = "duration_text")]
    pub control_timeout: Duration,

    /// How often every miner of the inventory is polled for telemetry.
    #[serde(with = "duration_text")]
    pub poll_interval: Duration,

    /// How often the site's inventory is fetched again from the planner.
    #[serde(with = "duration_text")]
    pub inventory_refresh: Duration,

    /// The power limit a `curtail{efficiency}` sets, in percent of the miner's power limit before
    /// the curtail (or of its measured power when it has no readable limit).
    pub efficiency_limit_pct: f64,

    /// Most miner handles kept between calls; beyond it a handle is built for one use.
    pub max_cached_miners: usize,

    /// Addresses probed at once by a discovery scan.
    pub scan_concurrency: usize,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            site: None,
            // Slow firmware (p50 300 ms, p99 3 s) needs thousands of miners in flight for a
            // 100,000-miner poll to take seconds, not minutes; a fast fleet is CPU-bound and
            // indifferent to it (docs/BENCHMARKS.md). The file-descriptor budget caps it.
            max_in_flight: 4096,
            call_timeout: Duration::from_secs(10),
            control_timeout: Duration::from_secs(60),
            poll_interval: Duration::from_secs(5),
            inventory_refresh: Duration::from_secs(30),
            efficiency_limit_pct: 75.0,
            max_cached_miners: 100_000,
            scan_concurrency: 256,
        }
    }
}

impl Settings for AgentConfig {
    const KEYS: &'static [Key] = &[
        Key::new("site", "the site this agent drives (required)"),
        Key::new(
            "max_in_flight",
            "most miner calls in flight at once, per batch and per poll cycle",
        ),
        Key::new(
            "call_timeout",
            "deadline of each read from a miner, e.g. 10s",
        ),
        Key::new(
            "control_timeout",
            "deadline of each control call (pause, resume, power limit), e.g. 60s",
        ),
        Key::new("poll_interval", "how often every miner is polled, e.g. 5s"),
        Key::new(
            "inventory_refresh",
            "how often the site's inventory is fetched again from the planner, e.g. 30s",
        ),
        Key::new(
            "efficiency_limit_pct",
            "the power limit curtail{efficiency} sets, in % of the limit before",
        ),
        Key::new("max_cached_miners", "most miner handles kept between calls"),
        Key::new(
            "scan_concurrency",
            "addresses probed at once by a discovery scan",
        ),
    ];

    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.site.is_none() {
            problems.push("site must be set (--site or EBB_AGENT_SITE)".to_owned());
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
        problems
    }
}

/// Every problem found in a configuration, reported together.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("invalid agent configuration: {}", .problems.join("; "))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl AgentConfig {
    /// A configuration with every default, for `site`.
    pub fn new(site: SiteCode) -> Self {
        Self {
            site: Some(site),
            ..Self::default()
        }
    }

    /// The site, once the settings are valid.
    pub fn site(&self) -> Result<&SiteCode, ConfigError> {
        self.site.as_ref().ok_or_else(|| ConfigError {
            problems: vec!["site must be set (--site or EBB_AGENT_SITE)".to_owned()],
        })
    }

    /// Checks every field and reports all problems at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }

    /// The effective settings on one line, for the start-up log.
    pub fn describe(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for AgentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "site={} max_in_flight={} call_timeout={} control_timeout={} poll_interval={} \
             inventory_refresh={} efficiency_limit_pct={} max_cached_miners={} scan_concurrency={}",
            self.site.as_ref().map_or("(unset)", SiteCode::as_str),
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

impl fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
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
    use ebb_runtime::{Needs, Sources, conformance, settings};

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
        let c = AgentConfig::new(site());
        c.validate().unwrap();
        let line = c.describe();
        assert!(
            line.contains("site=site-a")
                && line.contains("call_timeout=10s")
                && line.contains("max_in_flight=4096"),
            "{line}"
        );
        assert!(
            AgentConfig::default().validate().is_err(),
            "site is required"
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let c = AgentConfig {
            max_in_flight: 0,
            call_timeout: Duration::ZERO,
            poll_interval: Duration::from_secs(100_000),
            efficiency_limit_pct: f64::NAN,
            ..AgentConfig::default()
        };
        let err = c.validate().unwrap_err();
        assert_eq!(err.problems.len(), 5, "{err}");
        let mut c = AgentConfig::new(site());
        c.scan_concurrency = 0;
        assert_eq!(c.validate().unwrap_err().problems.len(), 1);
    }

    #[test]
    fn layered_settings_fill_defaults_and_refuse_unknown_keys() {
        let load = |flags: &[(&str, &str)]| {
            settings::load::<AgentConfig>(
                "agent",
                Needs::Nats,
                &Sources::flags(flags.iter().copied()),
            )
        };
        let c = load(&[
            ("site", "site-a"),
            ("call_timeout", "2s"),
            ("poll_interval", "250ms"),
        ])
        .unwrap();
        assert_eq!(c.service.call_timeout, Duration::from_secs(2));
        assert_eq!(c.service.poll_interval, Duration::from_millis(250));
        assert_eq!(c.service.max_in_flight, 4096);
        assert_eq!(
            c.common.nats_url.as_str(),
            ebb_runtime::settings::DEFAULT_NATS_URL
        );
        assert!(load(&[("site", "Site A")]).is_err());
        assert!(load(&[("site", "site-a"), ("database_url", "postgres://x/y")]).is_err());
    }

    #[test]
    fn a_file_with_a_bad_value_and_an_unknown_key_fails_naming_both() {
        conformance::names_bad_value_and_unknown_key::<AgentConfig>(
            "agent",
            Needs::Nats,
            "site = \"site-a\"",
            "call_timeout = \"ten seconds\"",
        );
    }

    #[test]
    fn printed_settings_read_back_the_same() {
        conformance::print_reads_back::<AgentConfig>(
            "agent",
            Needs::Nats,
            &[
                ("site", "site-a"),
                ("poll_interval", "250ms"),
                ("nats_url", "nats://hub:4222"),
                ("max_in_flight", "64"),
            ],
        );
    }
}
