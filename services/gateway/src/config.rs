//! Gateway settings: defaults, `EBB_*` environment, flags, then [`GatewayConfig::validate`].

use ebb_obs::{CredUrl, Secret};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

#[derive(Clone, Debug, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "EBB_GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// PostgreSQL URL.
    #[arg(long = "database-url", env = "DATABASE_URL", default_value = "")]
    pub database_url: Secret,
    /// NATS URL.
    #[arg(
        long = "nats-url",
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: CredUrl,
    /// How long a request waits for the planner, in seconds.
    #[arg(long, env = "EBB_GATEWAY_PLANNER_TIMEOUT_S", default_value_t = 30)]
    pub planner_timeout_s: u64,
    /// Pool size.
    #[arg(long, env = "EBB_GATEWAY_DB_CONNECTIONS", default_value_t = 8)]
    pub db_connections: u32,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            database_url: Secret::default(),
            nats_url: "nats://127.0.0.1:4222".into(),
            planner_timeout_s: 30,
            db_connections: 8,
        }
    }
}

impl GatewayConfig {
    /// Every invalid setting, named.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut bad = Vec::new();
        if self.listen.parse::<SocketAddr>().is_err() {
            bad.push(format!(
                "listen must be an address like 127.0.0.1:8080, got {:?}",
                self.listen
            ));
        }
        if self.database_url.expose().is_empty() {
            bad.push("database_url (DATABASE_URL) must be set".to_owned());
        }
        if self.nats_url.as_str().is_empty() {
            bad.push("nats_url (NATS_URL) must be set".to_owned());
        }
        if !(1..=300).contains(&self.planner_timeout_s) {
            bad.push("planner_timeout_s must be between 1 and 300".to_owned());
        }
        if self.db_connections == 0 {
            bad.push("db_connections must be at least 1".to_owned());
        }
        if bad.is_empty() { Ok(()) } else { Err(bad) }
    }
}
