//! Gateway settings: its own keys (the shared connection settings live in ebb-runtime), one
//! default each in [`Default`], checked by [`Settings::problems`].

use ebb_obs::Secret;
use ebb_runtime::{Key, Secrecy, Settings};
use ebb_webhooks::ssrf::Reach;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Address to listen on; port 0 picks a free port.
    pub listen: String,
    /// How long a request waits for the planner, in seconds.
    pub planner_timeout_s: u64,
    /// Requests a second one API key may send, sustained.
    pub rate_limit_per_s: u32,
    /// Requests one API key may send at once before the sustained rate applies.
    pub rate_limit_burst: u32,
    /// Requests under `/v1` served at once; more are shed with 503, never queued.
    pub max_in_flight: u32,
    /// How long a key lookup, found or not, is reused, in seconds: also how long a revoked key
    /// may still be accepted.
    pub key_cache_ttl_s: u64,
    /// Tokens the key cache and the rate limiter remember at most.
    pub key_cache_size: u32,
    /// Whether webhook URLs may name loopback addresses (`ebb dev` allows them).
    pub webhook_loopback: Reach,
    /// Whether webhook URLs may name private addresses (receivers on the deployment's network).
    pub webhook_private: Reach,
    /// The keyring webhook secrets are sealed under (`EBB_SECRETS_KEY`, `kid:base64key,…`).
    /// Empty: webhook endpoints cannot be made.
    pub secrets_key: Secret,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            planner_timeout_s: 30,
            rate_limit_per_s: 20,
            rate_limit_burst: 40,
            max_in_flight: 512,
            key_cache_ttl_s: 10,
            key_cache_size: 100_000,
            webhook_loopback: Reach::Refuse,
            webhook_private: Reach::Refuse,
            secrets_key: Secret::default(),
        }
    }
}

impl Settings for GatewayConfig {
    const KEYS: &'static [Key] = &[
        Key::new(
            "listen",
            "the HTTP API's address (host:port; port 0 picks a free one)",
        ),
        Key::new(
            "planner_timeout_s",
            "how long a request waits for the planner (seconds)",
        ),
        Key::new(
            "rate_limit_per_s",
            "requests a second one API key may send, sustained (more get 429)",
        ),
        Key::new(
            "rate_limit_burst",
            "requests one API key may send at once before the sustained rate applies",
        ),
        Key::new(
            "max_in_flight",
            "requests under /v1 served at once; more are shed with 503",
        ),
        Key::new(
            "key_cache_ttl_s",
            "how long an API key lookup, found or not, is reused (seconds; a revocation takes this long)",
        ),
        Key::new(
            "key_cache_size",
            "tokens the key cache and the rate limiter remember at most",
        ),
        Key::new(
            "webhook_loopback",
            "whether webhook URLs may name loopback addresses: refuse or allow (ebb dev)",
        ),
        Key::new(
            "webhook_private",
            "whether webhook URLs may name private addresses: refuse or allow",
        ),
        Key::new(
            "secrets_key",
            "the keyring webhook secrets are sealed under, kid:base64key,… (empty: webhooks off)",
        )
        .env(ebb_webhooks::sealed::ENV)
        .secret(Secrecy::Whole),
    ];

    fn problems(&self) -> Vec<String> {
        let mut bad = Vec::new();
        if self.listen.parse::<SocketAddr>().is_err() {
            bad.push(format!(
                "listen must be an address like 127.0.0.1:8080, got {:?}",
                self.listen
            ));
        }
        if !(1..=300).contains(&self.planner_timeout_s) {
            bad.push(format!(
                "planner_timeout_s must be between 1 and 300, got {}",
                self.planner_timeout_s
            ));
        }
        let mut within = |field: &str, value: u64, lo: u64, hi: u64| {
            if !(lo..=hi).contains(&value) {
                bad.push(format!(
                    "{field} must be between {lo} and {hi}, got {value}"
                ));
            }
        };
        within("rate_limit_per_s", self.rate_limit_per_s.into(), 1, 100_000);
        within("rate_limit_burst", self.rate_limit_burst.into(), 1, 100_000);
        within("max_in_flight", self.max_in_flight.into(), 1, 100_000);
        within("key_cache_ttl_s", self.key_cache_ttl_s, 1, 300);
        within(
            "key_cache_size",
            self.key_cache_size.into(),
            100,
            10_000_000,
        );
        // The keyring's errors never quote a key.
        if let Err(e) = self.keyring() {
            bad.push(format!("secrets_key: {e}"));
        }
        bad
    }
}

impl GatewayConfig {
    /// Which addresses a webhook URL may name.
    pub fn webhook_policy(&self) -> ebb_webhooks::ssrf::Policy {
        ebb_webhooks::ssrf::Policy {
            loopback: self.webhook_loopback.into(),
            private: self.webhook_private.into(),
            ..ebb_webhooks::ssrf::Policy::strict()
        }
    }

    /// The keyring, `None` when webhooks are off (no `secrets_key`).
    pub fn keyring(
        &self,
    ) -> Result<Option<ebb_webhooks::Keyring>, ebb_webhooks::sealed::KeyringError> {
        if self.secrets_key.expose().trim().is_empty() {
            return Ok(None);
        }
        ebb_webhooks::Keyring::parse(self.secrets_key.expose()).map(Some)
    }

    /// The guard's settings.
    pub fn guard(&self) -> crate::guard::GuardSettings {
        crate::guard::GuardSettings {
            rate: crate::guard::Rate {
                per_s: self.rate_limit_per_s,
                burst: self.rate_limit_burst,
            },
            max_in_flight: self.max_in_flight as usize,
            key_cache_ttl: std::time::Duration::from_secs(self.key_cache_ttl_s),
            key_cache_size: self.key_cache_size as usize,
        }
    }

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
    fn a_file_with_a_bad_value_and_an_unknown_key_fails_naming_both() {
        conformance::names_bad_value_and_unknown_key::<GatewayConfig>(
            "gateway",
            Needs::DatabaseAndNats,
            "database_url = \"postgres://db/ebb\"",
            "listen = \"everywhere\"",
        );
    }

    #[test]
    fn printed_settings_read_back_the_same() {
        conformance::print_reads_back::<GatewayConfig>(
            "gateway",
            Needs::DatabaseAndNats,
            &[
                ("database_url", "postgres://db/ebb"),
                ("listen", "0.0.0.0:9000"),
                ("planner_timeout_s", "5"),
                ("rate_limit_per_s", "7"),
                ("rate_limit_burst", "9"),
                ("max_in_flight", "64"),
                ("key_cache_ttl_s", "3"),
                ("key_cache_size", "1000"),
            ],
        );
    }

    #[test]
    fn every_bad_limit_is_named() {
        let c = GatewayConfig {
            rate_limit_per_s: 0,
            rate_limit_burst: 0,
            max_in_flight: 0,
            key_cache_ttl_s: 301,
            key_cache_size: 5,
            ..GatewayConfig::default()
        };
        let errs = c.validate().unwrap_err();
        for field in [
            "rate_limit_per_s",
            "rate_limit_burst",
            "max_in_flight",
            "key_cache_ttl_s",
            "key_cache_size",
        ] {
            assert!(
                errs.iter().any(|e| e.starts_with(field)),
                "{field}: {errs:?}"
            );
        }
        assert_eq!(errs.len(), 5, "{errs:?}");
        assert!(GatewayConfig::default().validate().is_ok());
    }
}
