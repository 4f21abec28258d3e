//! The worker: background jobs that announce and account for what the other services decided
//! (DESIGN §7). Each job is one module and one line in [`JOBS`]; `ebb worker` runs the jobs its
//! settings name (all by default) under one supervisor, so a failing job stops the worker and
//! its siblings drain.
//!
//! Jobs today: [`relay`] (the outbox → the event feed), [`gauges`] (the fleet and event
//! figures an operator's dashboard and alerts read) and [`deliver`] (webhook deliveries: claimed
//! with a lease, signed with every valid secret, sent only to addresses the SSRF guard checked,
//! each phase timed, the outcome recorded; idle when no `EBB_SECRETS_KEY` is configured) and
//! [`rate`] (settlement rating of curtailed energy). Several workers may run side by side: each job claims its rows with
//! `FOR UPDATE SKIP LOCKED`.

pub mod config;
pub mod deliver;
pub mod gauges;
pub mod rate;
pub mod relay;

pub use config::WorkerConfig;

use futures::future::BoxFuture;

/// A background job of the worker.
#[derive(Clone, Copy)]
pub struct Job {
    /// Its name in the `jobs` setting and in logs.
    pub name: &'static str,
    /// Runs the job until `ctx.shutdown`.
    pub run: fn(&WorkerConfig, ebb_runtime::Context) -> BoxFuture<'static, anyhow::Result<()>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// Every job the worker knows.
pub const JOBS: &[Job] = &[
    Job {
        name: "relay",
        run: relay::job,
    },
    Job {
        name: "gauges",
        run: gauges::job,
    },
    Job {
        name: "deliver",
        run: deliver::job,
    },
    Job {
        name: "rate",
        run: rate::job,
    },
];

/// The worker as a service of the runtime.
#[derive(Debug)]
pub struct WorkerService;

impl ebb_runtime::Service for WorkerService {
    type Settings = WorkerConfig;
    const NAME: &'static str = "worker";
    const ABOUT: &'static str = "Background jobs: the outbox relay to the event feed, the fleet and event gauges, webhook delivery";
    const NEEDS: ebb_runtime::Needs = ebb_runtime::Needs::DatabaseAndNats;
    const STREAMS: &'static [&'static str] = &[ebb_bus::streams::EVENT];

    async fn run(config: WorkerConfig, ctx: ebb_runtime::Context) -> anyhow::Result<()> {
        let mut jobs = ctx.supervisor();
        for job in JOBS
            .iter()
            .filter(|j| config.jobs.iter().any(|n| n == j.name))
        {
            jobs.spawn(job.name, (job.run)(&config, ctx.clone()));
        }
        tracing::info!(jobs = ?config.jobs, "worker running");
        jobs.run().await
    }
}
