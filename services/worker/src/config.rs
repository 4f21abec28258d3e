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
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            jobs: crate::JOBS.iter().map(|j| j.name.to_owned()).collect(),
            relay_idle_ms: 200,
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
        };
        let errs = c.validate().unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
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
            ],
        );
    }
}
