//! Reconciler settings: its own keys (the shared connection settings live in ebb-runtime), one
//! default each in [`Default`], checked by [`Settings::problems`].

use ebb_runtime::{Key, Settings};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReconcilerConfig {
    /// The slow safety tick, in milliseconds; results and telemetry wake the reconciler sooner.
    pub tick_ms: u64,
    /// A dispatched target not confirmed within this many seconds costs an attempt.
    pub confirm_deadline_s: u32,
    /// A published batch without a result from the agent for this many seconds costs an attempt
    /// (JetStream redelivers a batch a dead agent held after 15 s; a site whose agent is silent
    /// is not charged at all).
    pub result_deadline_s: u32,
    /// A site with neither results nor telemetry for this many seconds is silent: logged,
    /// shown by `ebb_reconciler_site_silent`, and its targets are not charged attempts for it.
    pub site_silent_after_s: u32,
    /// Attempts per target per episode before it fails.
    pub max_retries: u32,
    /// The wait before a target's second attempt, in milliseconds (jittered, doubling with each
    /// further attempt), counted from when the failed attempt went out.
    pub backoff_base_ms: u64,
    /// The longest wait between a target's attempts, in milliseconds.
    pub backoff_max_ms: u64,
    /// How long the leader trusts the targets it holds in memory before reading an event whole
    /// again, in milliseconds: a safety net for a write nobody announced.
    pub resync_ms: u64,
    /// How often a standby retries the leader lock, in milliseconds.
    pub standby_poll_ms: u64,
    /// The name of this process in the heartbeat row (default: host and pid).
    pub holder: String,
}

impl Default for ReconcilerConfig {
    fn default() -> Self {
        Self {
            tick_ms: 10_000,
            confirm_deadline_s: 90,
            result_deadline_s: 600,
            max_retries: 3,
            site_silent_after_s: 30,
            backoff_base_ms: 5_000,
            backoff_max_ms: 300_000,
            resync_ms: 300_000,
            standby_poll_ms: 2_000,
            holder: String::new(),
        }
    }
}

impl Settings for ReconcilerConfig {
    const KEYS: &'static [Key] = &[
        Key::new(
            "tick_ms",
            "the slow safety tick (ms); results and telemetry wake the reconciler sooner",
        ),
        Key::new(
            "confirm_deadline_s",
            "a target not confirmed this long (s) after the agent's result costs an attempt",
        ),
        Key::new(
            "result_deadline_s",
            "a published batch without a result for this long (s) costs an attempt",
        ),
        Key::new(
            "site_silent_after_s",
            "a site with no results or telemetry for this long (s) is silent and charged no attempts",
        ),
        Key::new(
            "max_retries",
            "attempts per target per episode before it fails",
        ),
        Key::new(
            "backoff_base_ms",
            "the wait before a target's second attempt (ms), jittered and doubling after",
        ),
        Key::new(
            "backoff_max_ms",
            "the longest wait between a target's attempts (ms)",
        ),
        Key::new(
            "resync_ms",
            "how long cached targets are trusted before an event is read whole again (ms)",
        ),
        Key::new(
            "standby_poll_ms",
            "how often a standby retries the leader lock (ms)",
        ),
        Key::new(
            "holder",
            "this process's name in the heartbeat row (empty: host and pid)",
        ),
    ];

    fn problems(&self) -> Vec<String> {
        let mut bad = Vec::new();
        if !(10..=600_000).contains(&self.tick_ms) {
            bad.push(format!(
                "tick_ms must be between 10 and 600000, got {}",
                self.tick_ms
            ));
        }
        if self.confirm_deadline_s == 0 {
            bad.push("confirm_deadline_s must be at least 1".to_owned());
        }
        if self.result_deadline_s == 0 {
            bad.push("result_deadline_s must be at least 1".to_owned());
        }
        if !(5..=3_600).contains(&self.site_silent_after_s) {
            bad.push(format!(
                "site_silent_after_s must be between 5 and 3600, got {}",
                self.site_silent_after_s
            ));
        }
        if !(1..=100).contains(&self.max_retries) {
            bad.push(format!(
                "max_retries must be between 1 and 100, got {}",
                self.max_retries
            ));
        }
        if self.backoff_base_ms > self.backoff_max_ms {
            bad.push(format!(
                "backoff_base_ms ({}) must not exceed backoff_max_ms ({})",
                self.backoff_base_ms, self.backoff_max_ms
            ));
        }
        if self.backoff_max_ms > 86_400_000 {
            bad.push(format!(
                "backoff_max_ms must be at most 86400000 (a day), got {}",
                self.backoff_max_ms
            ));
        }
        if !(1_000..=3_600_000).contains(&self.resync_ms) {
            bad.push(format!(
                "resync_ms must be between 1000 and 3600000, got {}",
                self.resync_ms
            ));
        }
        if self.standby_poll_ms == 0 {
            bad.push("standby_poll_ms must be at least 1".to_owned());
        }
        bad
    }
}

impl ReconcilerConfig {
    /// Every invalid setting, named.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let bad = self.problems();
        if bad.is_empty() { Ok(()) } else { Err(bad) }
    }

    pub fn holder_name(&self) -> String {
        if self.holder.is_empty() {
            let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
            format!("{}-{}", host.trim(), std::process::id())
        } else {
            self.holder.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ebb_runtime::{Needs, conformance};

    #[test]
    fn a_file_with_a_bad_value_and_an_unknown_key_fails_naming_both() {
        conformance::names_bad_value_and_unknown_key::<ReconcilerConfig>(
            "reconciler",
            Needs::DatabaseAndNats,
            "database_url = \"postgres://db/ebb\"",
            "tick_ms = 5",
        );
    }

    #[test]
    fn printed_settings_read_back_the_same() {
        conformance::print_reads_back::<ReconcilerConfig>(
            "reconciler",
            Needs::DatabaseAndNats,
            &[
                ("database_url", "postgres://db/ebb"),
                ("holder", "rec-1"),
                ("max_retries", "5"),
            ],
        );
    }
}
