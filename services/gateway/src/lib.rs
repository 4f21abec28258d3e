//! The operator HTTP API (DESIGN §6): bearer API keys, validation with field-level
//! `problem+json` errors, and the curtailment endpoints. Writes go to the planner over NATS;
//! reads come from PostgreSQL through the store.

pub mod auth;
pub mod config;
pub mod problem;
mod routes;

pub use config::GatewayConfig;

use anyhow::Context;
use axum::Router;
use ebb_store::PgPool;
use std::net::SocketAddr;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub nats: async_nats::Client,
    pub planner_timeout: Duration,
}

/// The full router: API, health, metrics.
pub fn router(state: AppState) -> Router {
    routes::router(state).merge(ebb_obs::metrics_router())
}

/// A bound, not yet serving gateway: tests read [`Gateway::addr`] when they asked for port 0.
pub struct Gateway {
    listener: tokio::net::TcpListener,
    app: Router,
}

impl Gateway {
    pub async fn build(config: &GatewayConfig) -> anyhow::Result<Self> {
        if let Err(errs) = config.validate() {
            anyhow::bail!("invalid gateway config: {}", errs.join("; "));
        }
        let pool = ebb_store::connect(config.database_url.expose(), config.db_connections)
            .await
            .context("connecting to postgresql")?;
        let nats = ebb_bus::connect(config.nats_url.as_str(), "ebb-gateway")
            .await
            .context("connecting to nats")?;
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let state = AppState {
            pool,
            nats,
            planner_timeout: Duration::from_secs(config.planner_timeout_s),
        };
        Ok(Self {
            listener,
            app: router(state),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown`, then lets in-flight requests finish.
    pub async fn serve(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(addr = %self.addr(), "gateway listening");
        axum::serve(self.listener, self.app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .context("serving http")
    }
}

/// Starts the gateway and serves until `shutdown`.
pub async fn run(config: GatewayConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    tracing::info!(config = ?config, "gateway starting");
    Gateway::build(&config).await?.serve(shutdown).await
}
