//! The operator HTTP API (DESIGN §6): bearer API keys, validation with field-level
//! `problem+json` errors, the curtailment, fleet, key, audit and webhook endpoints. Curtailment
//! writes go to the planner over NATS; reads, and the writes no plan depends on (ADR 0011), use
//! PostgreSQL through the store.

mod access;
pub mod auth;
pub mod config;
mod cursor;
mod fleet;
pub mod guard;
mod instruments;
pub mod openapi;
pub mod problem;
mod routes;
mod stream;
mod usage;
mod webhooks;

pub use config::GatewayConfig;

use anyhow::Context;
use axum::Router;
use ebb_store::PgPool;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub nats: async_nats::Client,
    pub planner_timeout: Duration,
    /// Rate limit, key cache and limits (see [`guard`]).
    pub guard: Arc<guard::Guard>,
    /// Seals webhook secrets (`EBB_SECRETS_KEY`); without it webhook endpoints cannot be made.
    pub keyring: Option<Arc<ebb_webhooks::Keyring>>,
    /// Which addresses a webhook URL may name.
    pub webhook_policy: ebb_webhooks::ssrf::Policy,
    /// Event streams open at once (`stream::MAX_STREAMS`).
    pub streams: Arc<tokio::sync::Semaphore>,
}

/// The full router: API, health, metrics, every route counted and timed.
pub fn router(state: AppState) -> Router {
    routes::router(state)
        .merge(ebb_obs::metrics_router())
        .route_layer(axum::middleware::from_fn(instruments::record))
}

/// A bound, not yet serving gateway: tests read [`Gateway::addr`] when they asked for port 0.
pub struct Gateway {
    listener: tokio::net::TcpListener,
    app: Router,
    stats: Arc<guard::GuardStats>,
}

impl Gateway {
    /// Binds the listener; the pool and NATS client come from the process's context, the
    /// webhook secrets' keyring from `secrets_key` (`EBB_SECRETS_KEY`; webhooks are off without it).
    pub async fn build(config: &GatewayConfig, ctx: &ebb_runtime::Context) -> anyhow::Result<Self> {
        let keyring = config
            .keyring()
            .map_err(|e| anyhow::anyhow!("secrets_key: {e}"))?;
        if keyring.is_none() {
            tracing::info!(
                "secrets_key ({}) is not set: webhook endpoints cannot be created",
                ebb_webhooks::sealed::ENV
            );
        }
        Self::build_with(config, ctx, keyring).await
    }

    /// [`Gateway::build`] with this keyring.
    pub async fn build_with(
        config: &GatewayConfig,
        ctx: &ebb_runtime::Context,
        keyring: Option<ebb_webhooks::Keyring>,
    ) -> anyhow::Result<Self> {
        if let Err(errs) = config.validate() {
            anyhow::bail!("invalid gateway config: {}", errs.join("; "));
        }
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let pool = ctx.pool()?.clone();
        let guard = Arc::new(guard::Guard::new(
            config.guard(),
            pool.options().get_max_connections(),
        ));
        let state = AppState {
            pool,
            nats: ctx.nats().clone(),
            planner_timeout: Duration::from_secs(config.planner_timeout_s),
            guard: guard.clone(),
            keyring: keyring.map(Arc::new),
            webhook_policy: config.webhook_policy(),
            streams: Arc::new(tokio::sync::Semaphore::new(stream::MAX_STREAMS)),
        };
        Ok(Self {
            listener,
            app: router(state),
            stats: guard.stats.clone(),
        })
    }

    /// The guard's counters (key lookups, requests rate-limited and shed).
    pub fn stats(&self) -> Arc<guard::GuardStats> {
        self.stats.clone()
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

/// The gateway as a service of the runtime: binds, then serves until shutdown.
#[derive(Debug)]
pub struct GatewayService;

impl ebb_runtime::Service for GatewayService {
    type Settings = GatewayConfig;
    const NAME: &'static str = "gateway";
    const ABOUT: &'static str = "The operator HTTP API";
    const NEEDS: ebb_runtime::Needs = ebb_runtime::Needs::DatabaseAndNats;
    const STREAMS: &'static [&'static str] = &[];

    async fn run(config: GatewayConfig, ctx: ebb_runtime::Context) -> anyhow::Result<()> {
        Gateway::build(&config, &ctx)
            .await?
            .serve(ctx.shutdown.clone())
            .await
    }
}
