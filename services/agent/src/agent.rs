//! Start-up, the shared state of one running agent, and its owned tasks: the inventory
//! refresher, the telemetry poller, the command consumer and the scan service. Every task is
//! tracked, stops on the shutdown token, and is drained before [`run_with`] returns; a task that
//! fails stops the others.

use crate::config::AgentConfig;
use crate::inventory::{self, Inventory, InventorySource};
use crate::miner_path::MinerPath;
use crate::{consumer, scan, telemetry};
use async_nats::jetstream;
use ebb_bus::streams;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// What the agent's tasks share.
#[derive(Debug)]
pub struct Agent {
    /// Validated settings.
    pub config: AgentConfig,
    /// The site it drives (its settings' `site`, required).
    pub site: ebb_domain::SiteCode,
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

/// The agent as a service of the runtime: inventory from the planner.
#[derive(Debug)]
pub struct AgentService;

impl ebb_runtime::Service for AgentService {
    type Settings = AgentConfig;
    const NAME: &'static str = "agent";
    const ABOUT: &'static str =
        "One site's device driver; `ebb agent scan <range>` identifies miners";
    const NEEDS: ebb_runtime::Needs = ebb_runtime::Needs::Nats;
    const STREAMS: &'static [&'static str] = &[];

    fn run(
        config: AgentConfig,
        ctx: ebb_runtime::Context,
    ) -> impl Future<Output = anyhow::Result<()>> + Send + 'static {
        run_with(config, InventorySource::Planner, ctx)
    }
}

/// Runs the agent with the given inventory source until `ctx.shutdown` is cancelled.
pub async fn run_with(
    config: AgentConfig,
    source: InventorySource,
    ctx: ebb_runtime::Context,
) -> anyhow::Result<()> {
    config.validate()?;
    tracing::info!(settings = %config.describe(), "starting agent");
    let site = config.site()?.clone();
    let client = ctx.nats().clone();
    let js = ctx.jetstream().clone();
    let shutdown = ctx.shutdown.clone();

    let Some(consumer) =
        ebb_runtime::retry_until(&shutdown, "creating the command consumer", || {
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
        site: site.clone(),
        config,
    });

    let mut tasks = ctx.supervisor();
    let stop = tasks.token();
    {
        let (a, s) = (agent.clone(), stop.clone());
        tasks.spawn("inventory", async move {
            inventory::maintain(source, a, s).await;
            Ok(())
        });
    }
    {
        let (a, s) = (agent.clone(), stop.clone());
        tasks.spawn("telemetry poller", async move {
            telemetry::poll_loop(a, s).await;
            Ok(())
        });
    }
    {
        let (a, s) = (agent.clone(), stop.clone());
        tasks.spawn("command consumer", consumer::consume(a, consumer, s));
    }
    {
        let (a, s) = (agent.clone(), stop.clone());
        tasks.spawn("scan service", scan::serve(a, s));
    }
    tracing::info!(%site, "agent running");
    let outcome = tasks.run().await;
    if let Err(error) = client.flush().await {
        tracing::debug!(%site, %error, "flushing nats on shutdown");
    }
    tracing::info!(%site, "agent stopped");
    outcome
}
