//! Start-up, the shared state of one running agent, and its owned tasks: the inventory
//! refresher, the telemetry poller, the command consumer and the scan service. Every task is
//! tracked, stops on the shutdown token, and is drained before [`run_with`] returns; a task that
//! fails stops the others.

use crate::config::AgentConfig;
use crate::inventory::{self, Inventory, InventorySource};
use crate::miner_path::MinerPath;
use crate::{consumer, scan, telemetry};
use anyhow::Context;
use async_nats::jetstream;
use ebb_bus::streams;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What the agent's tasks share.
#[derive(Debug)]
pub struct Agent {
    /// Validated settings.
    pub config: AgentConfig,
    /// Core NATS: request/reply with the planner and the scan service.
    pub client: async_nats::Client,
    /// JetStream: the command consumer and acked publishes of results and telemetry.
    pub js: jetstream::Context,
    /// The site's miners, refreshed from the planner.
    pub inventory: Arc<Inventory>,
    /// The miner path: handles, remembered power limits, deadlines; everything but NATS.
    pub miners: MinerPath,
    /// Numbers the telemetry messages this agent publishes, poll cycles and post-command reads alike.
    cycle: AtomicU64,
}

impl Agent {
    pub fn next_cycle(&self) -> u64 {
        self.cycle.fetch_add(1, Ordering::Relaxed)
    }
}

/// Runs the agent with its inventory from the planner until `shutdown` is cancelled.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with(config, InventorySource::Planner, shutdown).await
}

/// Runs the agent with the given inventory source until `shutdown` is cancelled.
pub async fn run_with(
    config: AgentConfig,
    source: InventorySource,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.validate()?;
    tracing::info!(settings = %config.describe(), "starting agent");
    let site = config.site.clone();
    let client = ebb_bus::connect(&config.nats_url, &format!("ebb-agent-{site}"))
        .await
        .with_context(|| format!("connecting to nats at {}", config.nats_url))?;
    let js = jetstream::new(client.clone());

    let Some(()) = retry_until(&shutdown, "creating streams", || {
        streams::ensure_streams(&js)
    })
    .await
    else {
        return Ok(());
    };
    let Some(consumer) = retry_until(&shutdown, "creating the command consumer", || {
        streams::ensure_consumer(&js, streams::CMD, streams::agent_consumer(&site))
    })
    .await
    else {
        return Ok(());
    };

    let agent = Arc::new(Agent {
        miners: MinerPath::from_config(&config),
        inventory: Arc::new(Inventory::default()),
        cycle: AtomicU64::new(0),
        client: client.clone(),
        js,
        config,
    });

    let stop = shutdown.child_token();
    let failure: Arc<Mutex<Option<anyhow::Error>>> = Arc::default();
    let tracker = TaskTracker::new();
    let fail = |name: &'static str,
                stop: CancellationToken,
                failure: Arc<Mutex<Option<anyhow::Error>>>| {
        move |r: anyhow::Result<()>| {
            if let Err(e) = r {
                tracing::error!(
                    task = name,
                    error = format!("{e:#}"),
                    "agent task failed, stopping"
                );
                failure
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get_or_insert(e.context(name));
                stop.cancel();
            }
        }
    };
    {
        let (a, s) = (agent.clone(), stop.clone());
        tracker.spawn(async move { inventory::maintain(source, a, s).await });
    }
    {
        let (a, s) = (agent.clone(), stop.clone());
        tracker.spawn(async move { telemetry::poll_loop(a, s).await });
    }
    {
        let (a, s) = (agent.clone(), stop.clone());
        let done = fail("command consumer", stop.clone(), failure.clone());
        tracker.spawn(async move { done(consumer::consume(a, consumer, s).await) });
    }
    {
        let (a, s) = (agent.clone(), stop.clone());
        let done = fail("scan service", stop.clone(), failure.clone());
        tracker.spawn(async move { done(scan::serve(a, s).await) });
    }
    tracker.close();
    tracing::info!(%site, "agent running");

    stop.cancelled().await;
    tracker.wait().await;
    if let Err(error) = client.flush().await {
        tracing::debug!(%site, %error, "flushing nats on shutdown");
    }
    tracing::info!(%site, "agent stopped");
    match failure
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
    {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Retries a start-up step with backoff until it succeeds or `shutdown` is cancelled (then
/// `None`): a site agent started before its NATS server must wait for it, not exit.
async fn retry_until<T, E, F, Fut>(
    shutdown: &CancellationToken,
    what: &str,
    mut step: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut delay = Duration::from_millis(100);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return None,
            r = step() => match r {
                Ok(v) => return Some(v),
                Err(error) => tracing::warn!(step = what, %error, retry_in_ms = delay.as_millis() as u64, "start-up step failed, retrying"),
            },
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}
