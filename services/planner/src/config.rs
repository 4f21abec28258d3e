//! Planner settings: defaults, then `EBB_*` environment, then flags (clap), then [`validate`],
//! which reports every problem at once.

use ebb_obs::{CredUrl, Secret};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannerConfig {
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
    /// Telemetry older than this excludes a device as stale.
    #[arg(long, env = "EBB_PLANNER_STALE_AFTER_S", default_value_t = 60)]
    pub stale_after_s: u32,
    /// Devices drawing less than this are not worth curtailing.
    #[arg(long, env = "EBB_PLANNER_MIN_POWER_W", default_value_t = 200.0)]
    pub min_power_w: f64,
    /// Restore batch size when a Start does not say.
    #[arg(long, env = "EBB_PLANNER_RESTORE_BATCH_SIZE", default_value_t = 100)]
    pub restore_batch_size: u32,
    /// Seconds between restore batches when a Start does not say.
    #[arg(
        long,
        env = "EBB_PLANNER_RESTORE_BATCH_INTERVAL_S",
        default_value_t = 30
    )]
    pub restore_batch_interval_s: u32,
    /// The longest restore interval a non-admin may ask for.
    #[arg(
        long,
        env = "EBB_PLANNER_NON_ADMIN_MAX_INTERVAL_S",
        default_value_t = 300
    )]
    pub non_admin_max_interval_s: u32,
    /// Pool size.
    #[arg(long, env = "EBB_PLANNER_DB_CONNECTIONS", default_value_t = 8)]
    pub db_connections: u32,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        Self {
            database_url: Secret::default(),
            nats_url: "nats://127.0.0.1:4222".into(),
            stale_after_s: 60,
            min_power_w: 200.0,
            restore_batch_size: 100,
            restore_batch_interval_s: 30,
            non_admin_max_interval_s: 300,
            db_connections: 8,
        }
    }
}

impl PlannerConfig {
    /// Every invalid setting, named.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut bad = Vec::new();
        if self.database_url.expose().is_empty() {
            bad.push("database_url (DATABASE_URL) must be set".to_owned());
        }
        if self.nats_url.as_str().is_empty() {
            bad.push("nats_url (NATS_URL) must be set".to_owned());
        }
        if self.stale_after_s == 0 {
            bad.push("stale_after_s must be at least 1".to_owned());
        }
        if !(self.min_power_w.is_finite() && self.min_power_w >= 0.0) {
            bad.push("min_power_w must be a non-negative number".to_owned());
        }
        if self.restore_batch_size == 0 || self.restore_batch_size > 10_000 {
            bad.push("restore_batch_size must be between 1 and 10000".to_owned());
        }
        if self.non_admin_max_interval_s < self.restore_batch_interval_s {
            bad.push(
                "non_admin_max_interval_s must be at least restore_batch_interval_s".to_owned(),
            );
        }
        if self.db_connections == 0 {
            bad.push("db_connections must be at least 1".to_owned());
        }
        if bad.is_empty() { Ok(()) } else { Err(bad) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_reported_and_secrets_hidden() {
        let c = PlannerConfig {
            restore_batch_size: 0,
            stale_after_s: 0,
            ..Default::default()
        };
        let errs = c.validate().unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:?}");
        let ok = PlannerConfig {
            database_url: Secret("postgres://u:pw@h/db".into()),
            ..Default::default()
        };
        assert!(ok.validate().is_ok());
        assert!(!format!("{ok:?}").contains("pw"));
    }
}
