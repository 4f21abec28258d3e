//! Running one service as its own process: `--check-config`, an optional `/metrics` and
//! `/healthz` listener, and a clean shutdown on SIGINT or SIGTERM.
//!
//! Each service logs its own start-up line with its effective settings (secrets hidden by their
//! `Debug`), so the line is the same whether the service runs here or inside `ebb dev`.

use crate::signals::Signals;
use anyhow::Context;
use ebb_gateway::GatewayConfig;
use ebb_planner::PlannerConfig;
use ebb_reconciler::ReconcilerConfig;
use ebb_worker::WorkerConfig;
use std::fmt::Debug;
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Exit status of `--check-config` (and of a start) with an invalid configuration.
pub const EXIT_INVALID_CONFIG: u8 = 2;

/// `--check-config`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct CheckConfig {
    /// Print the effective settings (secrets hidden) and exit: status 0 when they are valid,
    /// 2 naming every invalid setting otherwise.
    #[arg(long)]
    pub check_config: bool,
}

/// Flags of a service that does not serve HTTP itself.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Standalone {
    #[command(flatten)]
    pub check: CheckConfig,
    /// Serve `GET /metrics` and `GET /healthz` on this address (e.g. 0.0.0.0:9090); off when
    /// absent (in `ebb dev` the gateway serves the process-wide metrics).
    #[arg(long, env = "EBB_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

#[derive(Debug, clap::Args)]
pub struct GatewayArgs {
    #[command(flatten)]
    pub config: GatewayConfig,
    #[command(flatten)]
    pub check: CheckConfig,
}

#[derive(Debug, clap::Args)]
pub struct PlannerArgs {
    #[command(flatten)]
    pub config: PlannerConfig,
    #[command(flatten)]
    pub standalone: Standalone,
}

#[derive(Debug, clap::Args)]
pub struct ReconcilerArgs {
    #[command(flatten)]
    pub config: ReconcilerConfig,
    #[command(flatten)]
    pub standalone: Standalone,
}

#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub config: WorkerConfig,
    #[command(flatten)]
    pub standalone: Standalone,
}

pub async fn gateway(args: GatewayArgs) -> anyhow::Result<ExitCode> {
    let valid = args.config.validate();
    if args.check.check_config {
        return Ok(check_config("gateway", &args.config, valid));
    }
    if let Err(problems) = valid {
        return Ok(report_invalid("gateway", &problems));
    }
    // The gateway serves /metrics and /healthz on its own listener.
    serve("gateway", None, |shutdown| {
        ebb_gateway::run(args.config, shutdown)
    })
    .await
}

pub async fn planner(args: PlannerArgs) -> anyhow::Result<ExitCode> {
    let valid = args.config.validate();
    if args.standalone.check.check_config {
        return Ok(check_config("planner", &args.config, valid));
    }
    if let Err(problems) = valid {
        return Ok(report_invalid("planner", &problems));
    }
    serve("planner", args.standalone.metrics_listen, |shutdown| {
        ebb_planner::run(args.config, shutdown)
    })
    .await
}

pub async fn reconciler(args: ReconcilerArgs) -> anyhow::Result<ExitCode> {
    let valid = args.config.validate();
    if args.standalone.check.check_config {
        return Ok(check_config("reconciler", &args.config, valid));
    }
    if let Err(problems) = valid {
        return Ok(report_invalid("reconciler", &problems));
    }
    serve("reconciler", args.standalone.metrics_listen, |shutdown| {
        ebb_reconciler::run(args.config, shutdown)
    })
    .await
}

pub async fn worker(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let valid = args.config.validate();
    if args.standalone.check.check_config {
        return Ok(check_config("worker", &args.config, valid));
    }
    if let Err(problems) = valid {
        return Ok(report_invalid("worker", &problems));
    }
    serve("worker", args.standalone.metrics_listen, |shutdown| {
        ebb_worker::run(args.config, shutdown)
    })
    .await
}

/// Prints the effective settings, then either "valid" or every problem; the exit status says
/// which.
pub fn check_config(
    service: &str,
    config: &impl Debug,
    valid: Result<(), Vec<String>>,
) -> ExitCode {
    println!("{service} settings: {config:#?}");
    match valid {
        Ok(()) => {
            println!("{service} settings are valid");
            ExitCode::SUCCESS
        }
        Err(problems) => report_invalid(service, &problems),
    }
}

/// Names every invalid setting on stderr.
pub fn report_invalid(service: &str, problems: &[String]) -> ExitCode {
    eprintln!(
        "error: invalid {service} settings ({} problems):",
        problems.len()
    );
    for p in problems {
        eprintln!("  - {p}");
    }
    ExitCode::from(EXIT_INVALID_CONFIG)
}

/// Runs `service` until SIGINT or SIGTERM, with an optional metrics listener beside it. The
/// listener is bound before the service starts, so a taken port fails the start at once.
pub async fn serve<F, Fut>(
    name: &'static str,
    metrics_listen: Option<SocketAddr>,
    service: F,
) -> anyhow::Result<ExitCode>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let signals = Signals::install()?;
    let shutdown = signals.token();
    let tasks = TaskTracker::new();
    if let Some(addr) = metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics listener on {addr}"))?;
        tracing::info!(service = name, addr = %listener.local_addr()?, "serving /metrics and /healthz");
        tasks.spawn(serve_metrics(listener, shutdown.clone()));
    }
    let outcome = service(shutdown.clone()).await;
    // The service is done (drained, or failed): the metrics listener goes with it.
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    outcome.with_context(|| format!("{name} failed"))?;
    tracing::info!(service = name, "stopped");
    Ok(ExitCode::SUCCESS)
}

/// The router every standalone service serves: the process-wide Prometheus registry and a
/// liveness probe.
pub fn metrics_app() -> axum::Router {
    ebb_obs::metrics_router().route("/healthz", axum::routing::get(|| async { "ok" }))
}

async fn serve_metrics(listener: tokio::net::TcpListener, shutdown: CancellationToken) {
    if let Err(error) = axum::serve(listener, metrics_app())
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::warn!(%error, "metrics listener stopped");
    }
}
