//! Worker settings: defaults, `EBB_*` environment, flags, then [`WorkerConfig::validate`], which
//! reports every problem at once.

use ebb_obs::{CredUrl, Secret};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
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
    /// How long the relay waits after finding the outbox empty, in milliseconds. A full batch is
    /// followed at once by the next, so this only bounds the latency of a quiet system.
    #[arg(long, env = "EBB_WORKER_RELAY_IDLE_MS", default_value_t = 200)]
    pub relay_idle_ms: u64,
    /// Pool size.
    #[arg(long, env = "EBB_WORKER_DB_CONNECTIONS", default_value_t = 4)]
    pub db_connections: u32,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            database_url: Secret::default(),
            nats_url: "nats://127.0.0.1:4222".into(),
            relay_idle_ms: 200,
            db_connections: 4,
        }
    }
}

impl WorkerConfig {
    /// Every invalid setting, named.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut bad = Vec::new();
        if self.database_url.expose().is_empty() {
            bad.push("database_url (DATABASE_URL) must be set".to_owned());
        }
        if self.nats_url.as_str().is_empty() {
            bad.push("nats_url (NATS_URL) must be set".to_owned());
        }
        if !(10..=60_000).contains(&self.relay_idle_ms) {
            bad.push(format!(
                "relay_idle_ms must be between 10 and 60000, got {}",
                self.relay_idle_ms
            ));
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
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        worker: WorkerConfig,
    }

    #[test]
    fn every_problem_is_reported_and_secrets_hidden() {
        let c = WorkerConfig {
            relay_idle_ms: 0,
            db_connections: 0,
            nats_url: CredUrl::default(),
            ..Default::default()
        };
        let errs = c.validate().unwrap_err();
        assert_eq!(errs.len(), 4, "{errs:?}");
        let ok = WorkerConfig {
            database_url: Secret("postgres://u:pw@h/db".into()),
            ..Default::default()
        };
        assert!(ok.validate().is_ok());
        assert!(!format!("{ok:?}").contains("pw"));
        let creds = WorkerConfig {
            nats_url: "nats://worker:hunter2@nats:4222".into(),
            ..ok
        };
        let shown = format!("{creds:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("nats://worker:***@nats:4222"),
            "{shown}"
        );
    }

    #[test]
    fn clap_and_serde_defaults_agree() {
        let cli = Cli::try_parse_from([
            "worker",
            "--database-url",
            "",
            "--nats-url",
            "nats://127.0.0.1:4222",
        ])
        .unwrap();
        assert_eq!(cli.worker, WorkerConfig::default());
        let c: WorkerConfig = serde_json::from_str(
            r#"{"database_url":"","nats_url":"nats://127.0.0.1:4222","relay_idle_ms":200,"db_connections":4}"#,
        )
        .unwrap();
        assert_eq!(c, WorkerConfig::default());
        assert!(serde_json::from_str::<WorkerConfig>(r#"{"bogus":1}"#).is_err());
    }
}
