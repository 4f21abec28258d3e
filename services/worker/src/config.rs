//! Worker settings: its own keys (the shared connection settings live in ebb-runtime), one
//! default each in [`Default`], checked by [`Settings::problems`].

use ebb_runtime::{Key, Settings};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// The jobs this worker runs (every job in [`crate::JOBS`] by default).
    pub jobs: Vec<String>,
    /// How long the relay waits after finding the outbox empty, in milliseconds. A full batch is
    /// followed at once by the next, so this only bounds the latency of a quiet system.
    pub relay_idle_ms: u64,
    /// How long a claimed row is the relay's alone, in seconds; a relay that dies holding it
    /// leaves it to the next claim after this. Below the event stream's duplicate window, so
    /// that the republish of a row published just before the crash is dropped as a duplicate.
    pub relay_lease_s: u64,
    /// Claims of a row that keeps failing before it is parked.
    pub relay_max_attempts: u32,
    /// Wait before the first retry of a row that failed, in milliseconds; it doubles with each
    /// attempt, up to five minutes.
    pub relay_retry_ms: u64,
    /// How long published rows are kept before the relay deletes them, in hours.
    pub outbox_retention_h: u64,
    /// How often the `gauges` job reads the fleet and event figures, in seconds.
    pub gauges_interval_s: u64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            jobs: crate::JOBS.iter().map(|j| j.name.to_owned()).collect(),
            relay_idle_ms: 200,
            relay_lease_s: 30,
            relay_max_attempts: 10,
            relay_retry_ms: 1_000,
            outbox_retention_h: 7 * 24,
            gauges_interval_s: 10,
        }
    }
}

impl Settings for WorkerConfig {
    const KEYS: &'static [Key] = &[
        Key::new("jobs", "the jobs to run, comma-separated (default: all)"),
        Key::new(
            "relay_idle_ms",
            "how long the outbox relay waits after finding nothing to publish (ms)",
        ),
        Key::new(
            "relay_lease_s",
            "how long a claimed outbox row is the relay's alone before another may take it (s)",
        ),
        Key::new(
            "relay_max_attempts",
            "claims of an outbox row that keeps failing before it is parked",
        ),
        Key::new(
            "relay_retry_ms",
            "wait before retrying an outbox row that failed (ms; doubles per attempt, up to 5 min)",
        ),
        Key::new(
            "outbox_retention_h",
            "how long published outbox rows are kept before they are deleted (hours)",
        ),
        Key::new(
            "gauges_interval_s",
            "how often the gauges job reads the fleet and event figures for /metrics (s)",
        ),
    ];

    fn problems(&self) -> Vec<String> {
        let mut bad = Vec::new();
        if self.jobs.is_empty() {
            bad.push("jobs must name at least one job".to_owned());
        }
        for job in &self.jobs {
            if !crate::JOBS.iter().any(|j| j.name == job) {
                let known: Vec<&str> = crate::JOBS.iter().map(|j| j.name).collect();
                bad.push(format!(
                    "jobs: unknown job {job:?} (known: {})",
                    known.join(", ")
                ));
            }
        }
        if !(10..=60_000).contains(&self.relay_idle_ms) {
            bad.push(format!(
                "relay_idle_ms must be between 10 and 60000, got {}",
                self.relay_idle_ms
            ));
        }
        // Half the duplicate window: a row republished after a lapsed lease is still a duplicate.
        let max_lease = ebb_bus::streams::DUPLICATE_WINDOW.as_secs() / 2;
        if !(1..=max_lease).contains(&self.relay_lease_s) {
            bad.push(format!(
                "relay_lease_s must be between 1 and {max_lease} (half the event stream's \
                 duplicate window), got {}",
                self.relay_lease_s
            ));
        }
        if !(1..=1_000).contains(&self.relay_max_attempts) {
            bad.push(format!(
                "relay_max_attempts must be between 1 and 1000, got {}",
                self.relay_max_attempts
            ));
        }
        if !(1..=300_000).contains(&self.relay_retry_ms) {
            bad.push(format!(
                "relay_retry_ms must be between 1 and 300000, got {}",
                self.relay_retry_ms
            ));
        }
        if !(1..=3_600).contains(&self.gauges_interval_s) {
            bad.push(format!(
                "gauges_interval_s must be between 1 and 3600, got {}",
                self.gauges_interval_s
            ));
        }
        if !(1..=24 * 366).contains(&self.outbox_retention_h) {
            bad.push(format!(
                "outbox_retention_h must be between 1 and 8784 (a year), got {}",
                self.outbox_retention_h
            ));
        }
        bad
    }
}

impl WorkerConfig {
    /// Every invalid setting, named.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let bad = self.problems();
        if bad.is_empty() { Ok(()) } else { Err(bad) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ebb_runtime::{Needs, conformance};

    #[test]
    fn every_problem_is_reported() {
        let c = WorkerConfig {
            relay_idle_ms: 0,
            jobs: vec!["relay".into(), "mine-bitcoin".into()],
            relay_lease_s: 61,
            relay_max_attempts: 0,
            relay_retry_ms: 0,
            outbox_retention_h: 0,
            gauges_interval_s: 0,
        };
        let errs = c.validate().unwrap_err();
        assert_eq!(errs.len(), 7, "{errs:?}");
        assert!(WorkerConfig::default().validate().is_ok());
    }

    #[test]
    fn a_file_with_a_bad_value_and_an_unknown_key_fails_naming_both() {
        conformance::names_bad_value_and_unknown_key::<WorkerConfig>(
            "worker",
            Needs::DatabaseAndNats,
            "database_url = \"postgres://db/ebb\"",
            "relay_idle_ms = \"fast\"",
        );
    }

    #[test]
    fn printed_settings_read_back_the_same() {
        conformance::print_reads_back::<WorkerConfig>(
            "worker",
            Needs::DatabaseAndNats,
            &[
                ("database_url", "postgres://db/ebb"),
                ("relay_idle_ms", "50"),
                ("jobs", "relay"),
                ("relay_lease_s", "10"),
                ("relay_max_attempts", "3"),
                ("relay_retry_ms", "20"),
                ("outbox_retention_h", "24"),
            ],
        );
    }
}
