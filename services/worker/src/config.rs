//! Worker settings: its own keys (the shared connection settings live in ebb-runtime), one
//! default each in [`Default`], checked by [`Settings::problems`].

use ebb_obs::Secret;
use ebb_runtime::{Key, Secrecy, Settings};
use ebb_webhooks::Keyring;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

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
    /// The keyring webhook secrets are sealed under (`EBB_SECRETS_KEY`, `kid:base64key,…`).
    /// Empty: webhooks are off, and the `deliver` job idles.
    pub secrets_key: Secret,
    /// Deliveries claimed per round at most (never more than free sending slots).
    pub webhook_batch: u32,
    /// Requests in flight at once, across endpoints (each endpoint has at most one).
    pub webhook_concurrency: u32,
    /// How long the `deliver` job waits after finding nothing due, in milliseconds.
    pub webhook_poll_ms: u64,
    /// How long a claimed delivery is this worker's alone, in seconds. It must outlast a whole
    /// attempt (`webhook_timeout_s`) with a margin, or a slow request could be sent twice; a
    /// worker that dies mid-delivery leaves it to another after this.
    pub webhook_lease_s: u64,
    /// The longest a TCP connect may take, in milliseconds.
    pub webhook_connect_timeout_ms: u64,
    /// The longest a TLS handshake may take, in milliseconds.
    pub webhook_tls_timeout_ms: u64,
    /// The longest a whole attempt may take (lookup, connect, TLS, request, response and its
    /// body), in seconds.
    pub webhook_timeout_s: u64,
    /// Whether webhooks may reach loopback addresses (`ebb dev` allows them).
    pub webhook_loopback: Reach,
    /// Whether webhooks may reach private networks (RFC 1918, unique local, CGNAT).
    pub webhook_private: Reach,
    /// PEM certificates trusted for https webhooks besides Mozilla's roots (a private CA);
    /// empty for none.
    pub webhook_ca_file: PathBuf,
}

pub use ebb_webhooks::ssrf::Reach;

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
            secrets_key: Secret::default(),
            webhook_batch: 64,
            webhook_concurrency: 64,
            webhook_poll_ms: 500,
            webhook_lease_s: 60,
            webhook_connect_timeout_ms: 5_000,
            webhook_tls_timeout_ms: 5_000,
            // The Standard Webhooks spec advises 15 to 30 s.
            webhook_timeout_s: 15,
            webhook_loopback: Reach::Refuse,
            webhook_private: Reach::Refuse,
            webhook_ca_file: PathBuf::new(),
        }
    }
}

/// How much longer than a whole attempt a delivery's lease must be: the outcome is written
/// after the request, and clocks of the worker and the database drift apart.
pub const WEBHOOK_LEASE_MARGIN_S: u64 = 10;

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
        Key::new(
            "secrets_key",
            "the keyring webhook secrets are sealed under, kid:base64key,… (empty: webhooks off)",
        )
        .env(ebb_webhooks::sealed::ENV)
        .secret(Secrecy::Whole),
        Key::new(
            "webhook_batch",
            "webhook deliveries claimed per round at most",
        ),
        Key::new(
            "webhook_concurrency",
            "webhook requests in flight at once, across endpoints",
        ),
        Key::new(
            "webhook_poll_ms",
            "how long webhook delivery waits after finding nothing due (ms)",
        ),
        Key::new(
            "webhook_lease_s",
            "how long a claimed webhook delivery is this worker's alone (s; > webhook_timeout_s)",
        ),
        Key::new(
            "webhook_connect_timeout_ms",
            "the longest a webhook's TCP connect may take (ms)",
        ),
        Key::new(
            "webhook_tls_timeout_ms",
            "the longest a webhook's TLS handshake may take (ms)",
        ),
        Key::new(
            "webhook_timeout_s",
            "the longest a whole webhook attempt may take, response body included (s)",
        ),
        Key::new(
            "webhook_loopback",
            "whether webhooks may reach loopback addresses: refuse or allow",
        ),
        Key::new(
            "webhook_private",
            "whether webhooks may reach private networks (rfc 1918, fc00::/7, cgnat): refuse or allow",
        ),
        Key::new(
            "webhook_ca_file",
            "pem certificates trusted for https webhooks besides mozilla's roots (empty: none)",
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
        bad.extend(self.webhook_problems());
        bad
    }
}

impl WorkerConfig {
    /// Every invalid setting, named.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let bad = self.problems();
        if bad.is_empty() { Ok(()) } else { Err(bad) }
    }

    /// The keyring, `None` when webhooks are off (no `secrets_key`).
    pub fn keyring(&self) -> Result<Option<Keyring>, ebb_webhooks::sealed::KeyringError> {
        if self.secrets_key.expose().trim().is_empty() {
            return Ok(None);
        }
        Keyring::parse(self.secrets_key.expose()).map(Some)
    }

    fn webhook_problems(&self) -> Vec<String> {
        let mut bad = Vec::new();
        // The keyring's errors never quote a key.
        if let Err(e) = self.keyring() {
            bad.push(format!("secrets_key: {e}"));
        }
        if !(1..=1_000).contains(&self.webhook_batch) {
            bad.push(format!(
                "webhook_batch must be between 1 and 1000, got {}",
                self.webhook_batch
            ));
        }
        if !(1..=4_096).contains(&self.webhook_concurrency) {
            bad.push(format!(
                "webhook_concurrency must be between 1 and 4096, got {}",
                self.webhook_concurrency
            ));
        }
        if !(10..=60_000).contains(&self.webhook_poll_ms) {
            bad.push(format!(
                "webhook_poll_ms must be between 10 and 60000, got {}",
                self.webhook_poll_ms
            ));
        }
        if !(1..=300).contains(&self.webhook_timeout_s) {
            bad.push(format!(
                "webhook_timeout_s must be between 1 and 300, got {}",
                self.webhook_timeout_s
            ));
        }
        let total_ms = self.webhook_timeout_s.saturating_mul(1_000);
        for (key, ms) in [
            (
                "webhook_connect_timeout_ms",
                self.webhook_connect_timeout_ms,
            ),
            ("webhook_tls_timeout_ms", self.webhook_tls_timeout_ms),
        ] {
            if ms == 0 || ms > total_ms.max(1) {
                bad.push(format!(
                    "{key} must be between 1 and webhook_timeout_s ({total_ms} ms), got {ms}"
                ));
            }
        }
        let min_lease = self
            .webhook_timeout_s
            .saturating_add(WEBHOOK_LEASE_MARGIN_S);
        if !(min_lease..=3_600).contains(&self.webhook_lease_s) {
            bad.push(format!(
                "webhook_lease_s must be between {min_lease} (webhook_timeout_s plus \
                 {WEBHOOK_LEASE_MARGIN_S} s, so a request never outlives its claim) and 3600, got {}",
                self.webhook_lease_s
            ));
        }
        bad
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
            ..WorkerConfig::default()
        };
        let errs = c.validate().unwrap_err();
        assert_eq!(errs.len(), 7, "{errs:?}");
        assert!(WorkerConfig::default().validate().is_ok());
    }

    #[test]
    fn every_webhook_problem_is_reported_without_quoting_the_key() {
        let c = WorkerConfig {
            secrets_key: Secret("k1:c2VjcmV0LWJ1dC10b28tc2hvcnQ=".into()),
            webhook_batch: 0,
            webhook_concurrency: 0,
            webhook_poll_ms: 1,
            webhook_timeout_s: 20,
            webhook_connect_timeout_ms: 0,
            webhook_tls_timeout_ms: 20_001,
            webhook_lease_s: 29,
            ..WorkerConfig::default()
        };
        let errs = c.validate().unwrap_err();
        assert_eq!(errs.len(), 7, "{errs:?}");
        assert!(errs.iter().all(|e| !e.contains("c2VjcmV0")), "{errs:?}");
        assert!(
            errs.iter()
                .any(|e| e.starts_with("webhook_lease_s must be between 30")),
            "{errs:?}"
        );
        let ok = WorkerConfig {
            webhook_timeout_s: 20,
            webhook_lease_s: 30,
            ..WorkerConfig::default()
        };
        assert!(ok.validate().is_ok());
        // No key: webhooks are off, which is valid.
        assert!(WorkerConfig::default().keyring().unwrap().is_none());
        let on = WorkerConfig {
            secrets_key: Secret(Keyring::generate_entry("k1").unwrap()),
            ..WorkerConfig::default()
        };
        assert_eq!(on.keyring().unwrap().unwrap().current(), "k1");
        assert!(!format!("{on:?}").contains(&on.secrets_key.0), "{on:?}");
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
                ("webhook_loopback", "allow"),
                ("webhook_timeout_s", "5"),
                ("webhook_lease_s", "15"),
                ("webhook_ca_file", "/etc/ebb/webhook-ca.pem"),
            ],
        );
    }
}
