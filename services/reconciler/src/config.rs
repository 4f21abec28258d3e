//! Reconciler settings: defaults, `EBB_*` environment, flags, then [`ReconcilerConfig::validate`].

use ebb_obs::{CredUrl, Secret};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcilerConfig {
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
    /// The slow safety tick, in milliseconds; results and telemetry wake the reconciler sooner.
    #[arg(long, env = "EBB_RECONCILER_TICK_MS", default_value_t = 10_000)]
    pub tick_ms: u64,
    /// A dispatched target not confirmed within this many seconds costs an attempt.
    #[arg(long, env = "EBB_RECONCILER_CONFIRM_DEADLINE_S", default_value_t = 90)]
    pub confirm_deadline_s: u32,
    /// A published batch without a result from the agent for this many seconds costs an attempt
    /// (the agent redelivers unacked batches after 300 s).
    #[arg(long, env = "EBB_RECONCILER_RESULT_DEADLINE_S", default_value_t = 600)]
    pub result_deadline_s: u32,
    /// Attempts per target per episode before it fails.
    #[arg(long, env = "EBB_RECONCILER_MAX_RETRIES", default_value_t = 3)]
    pub max_retries: u32,
    /// How often a standby retries the leader lock, in milliseconds.
    #[arg(long, env = "EBB_RECONCILER_STANDBY_POLL_MS", default_value_t = 2_000)]
    pub standby_poll_ms: u64,
    /// The name of this process in the heartbeat row (default: host and pid).
    #[arg(long, env = "EBB_RECONCILER_HOLDER", default_value = "")]
    pub holder: String,
    /// Pool size.
    #[arg(long, env = "EBB_RECONCILER_DB_CONNECTIONS", default_value_t = 8)]
    pub db_connections: u32,
}

impl Default for ReconcilerConfig {
    fn default() -> Self {
        Self {
            database_url: Secret::default(),
            nats_url: "nats://127.0.0.1:4222".into(),
            tick_ms: 10_000,
            confirm_deadline_s: 90,
            result_deadline_s: 600,
            max_retries: 3,
            standby_poll_ms: 2_000,
            holder: String::new(),
            db_connections: 8,
        }
    }
}

impl ReconcilerConfig {
    /// Every invalid setting, named.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut bad = Vec::new();
        if self.database_url.expose().is_empty() {
            bad.push("database_url (DATABASE_URL) must be set".to_owned());
        }
        if self.nats_url.as_str().is_empty() {
            bad.push("nats_url (NATS_URL) must be set".to_owned());
        }
        if !(10..=600_000).contains(&self.tick_ms) {
            bad.push("tick_ms must be between 10 and 600000".to_owned());
        }
        if self.confirm_deadline_s == 0 {
            bad.push("confirm_deadline_s must be at least 1".to_owned());
        }
        if self.result_deadline_s == 0 {
            bad.push("result_deadline_s must be at least 1".to_owned());
        }
        if !(1..=100).contains(&self.max_retries) {
            bad.push("max_retries must be between 1 and 100".to_owned());
        }
        if self.standby_poll_ms == 0 {
            bad.push("standby_poll_ms must be at least 1".to_owned());
        }
        if self.db_connections < 2 {
            bad.push("db_connections must be at least 2".to_owned());
        }
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
