//! The worker: background jobs that announce and account for what the other services decided
//! (DESIGN §7). Today it runs the outbox relay, which publishes every committed outbox row on its
//! subject with `Nats-Msg-Id = outbox id` (so a crash between publish and marking only causes a
//! deduplicated republish); the rater and webhook delivery join it here.
//!
//! Entry point: [`run`] with a [`WorkerConfig`], until the shutdown token is cancelled. Several
//! workers may run side by side: the relay claims rows with `FOR UPDATE SKIP LOCKED`.

pub mod config;

pub use config::WorkerConfig;

use anyhow::Context;
use async_nats::jetstream;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Starts the worker and runs until `shutdown`: connects to PostgreSQL and NATS, makes sure the
/// streams exist, then relays the outbox. On shutdown the relay finishes the round it is in (its
/// publishes are acked or the round's transaction rolls back), so nothing is half-marked.
pub async fn run(config: WorkerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    if let Err(errs) = config.validate() {
        anyhow::bail!("invalid worker config: {}", errs.join("; "));
    }
    tracing::info!(config = ?config, "worker starting");
    let pool = ebb_store::connect(config.database_url.expose(), config.db_connections)
        .await
        .context("connecting to postgresql")?;
    let client = ebb_bus::connect(config.nats_url.as_str(), "ebb-worker")
        .await
        .context("connecting to nats")?;
    let js = jetstream::new(client.clone());
    ebb_bus::streams::ensure_streams(&js)
        .await
        .map_err(|e| anyhow::anyhow!("creating streams: {e}"))?;

    let tasks = TaskTracker::new();
    tasks.spawn(ebb_store::outbox::run_relay(
        pool.clone(),
        js,
        Duration::from_millis(config.relay_idle_ms),
        shutdown.clone(),
    ));
    tasks.close();
    tracing::info!("worker running");
    shutdown.cancelled().await;
    tasks.wait().await;
    if let Err(error) = client.flush().await {
        tracing::debug!(%error, "flushing nats on shutdown");
    }
    pool.close().await;
    tracing::info!("worker stopped");
    Ok(())
}
