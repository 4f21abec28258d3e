//! Planner settings: its own keys (the shared connection settings live in ebb-runtime), one
//! default each in [`Default`], checked by [`Settings::problems`], which names every problem.

use ebb_runtime::{Key, Settings};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlannerConfig {
    /// Telemetry older than this excludes a device as stale.
    pub stale_after_s: u32,
    /// Devices drawing less than this are not worth curtailing.
    pub min_power_w: f64,
    /// Restore batch size when a Start does not say.
    pub restore_batch_size: u32,
    /// Seconds between restore batches when a Start does not say.
    pub restore_batch_interval_s: u32,
    /// The longest restore interval a non-admin may ask for.
    pub non_admin_max_interval_s: u32,
    /// How long the fleet snapshot is used before it is read from the database again, in
    /// milliseconds (telemetry keeps its samples current meanwhile).
    pub snapshot_max_age_ms: u64,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        Self {
            stale_after_s: 60,
            min_power_w: 200.0,
            restore_batch_size: 100,
            restore_batch_interval_s: 30,
            non_admin_max_interval_s: 300,
            snapshot_max_age_ms: 10_000,
        }
    }
}

impl Settings for PlannerConfig {
    const KEYS: &'static [Key] = &[
        Key::new(
            "stale_after_s",
            "telemetry older than this (seconds) excludes a device as stale",
        ),
        Key::new(
            "min_power_w",
            "devices drawing less than this (W) are not worth curtailing",
        ),
        Key::new(
            "restore_batch_size",
            "restore batch size when a Start does not say",
        ),
        Key::new(
            "restore_batch_interval_s",
            "seconds between restore batches when a Start does not say",
        ),
        Key::new(
            "non_admin_max_interval_s",
            "the longest restore interval (seconds) a non-admin may ask for",
        ),
        Key::new(
            "snapshot_max_age_ms",
            "how long the fleet snapshot is used before it is read again (ms)",
        ),
    ];

    fn problems(&self) -> Vec<String> {
        let mut bad = Vec::new();
        if self.stale_after_s == 0 {
            bad.push("stale_after_s must be at least 1".to_owned());
        }
        if !(self.min_power_w.is_finite() && self.min_power_w >= 0.0) {
            bad.push(format!(
                "min_power_w must be a non-negative number, got {}",
                self.min_power_w
            ));
        }
        if self.restore_batch_size == 0 || self.restore_batch_size > 10_000 {
            bad.push(format!(
                "restore_batch_size must be between 1 and 10000, got {}",
                self.restore_batch_size
            ));
        }
        if self.non_admin_max_interval_s < self.restore_batch_interval_s {
            bad.push(
                "non_admin_max_interval_s must be at least restore_batch_interval_s".to_owned(),
            );
        }
        if !(100..=600_000).contains(&self.snapshot_max_age_ms) {
            bad.push(format!(
                "snapshot_max_age_ms must be between 100 and 600000, got {}",
                self.snapshot_max_age_ms
            ));
        }
        bad
    }
}

impl PlannerConfig {
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
        let c = PlannerConfig {
            restore_batch_size: 0,
            stale_after_s: 0,
            ..Default::default()
        };
        let errs = c.validate().unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(PlannerConfig::default().validate().is_ok());
    }

    #[test]
    fn a_file_with_a_bad_value_and_an_unknown_key_fails_naming_both() {
        conformance::names_bad_value_and_unknown_key::<PlannerConfig>(
            "planner",
            Needs::DatabaseAndNats,
            "database_url = \"postgres://db/ebb\"",
            "stale_after_s = -3",
        );
    }

    #[test]
    fn printed_settings_read_back_the_same() {
        conformance::print_reads_back::<PlannerConfig>(
            "planner",
            Needs::DatabaseAndNats,
            &[
                ("database_url", "postgres://db/ebb"),
                ("restore_batch_size", "25"),
                ("min_power_w", "150.5"),
            ],
        );
    }
}
