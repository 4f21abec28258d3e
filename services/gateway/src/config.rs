//! Gateway settings: its own keys (the shared connection settings live in ebb-runtime), one
//! default each in [`Default`], checked by [`Settings::problems`].

use ebb_runtime::{Key, Settings};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Address to listen on; port 0 picks a free port.
    pub listen: String,
    /// How long a request waits for the planner, in seconds.
    pub planner_timeout_s: u64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            planner_timeout_s: 30,
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
        bad
    }
}

impl GatewayConfig {
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
            ],
        );
    }
}
