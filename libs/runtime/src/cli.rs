//! A service as its own process, `ebb <service> [flags]`: a flag per setting (`--<key>`, from the
//! same key list as the file and the environment, so nothing is declared twice), `--config FILE`,
//! `--print-config`, `--check-config`; then signals, the context, an optional `/metrics`
//! listener and the service under one supervisor.

use crate::context::Context;
use crate::service::Entry;
use crate::settings::Sources;
use crate::signals::Signals;
use crate::supervisor::Supervisor;
use anyhow::Context as _;
use clap::{Arg, ArgAction, ArgMatches, Command};
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit status for invalid settings.
pub const EXIT_INVALID_CONFIG: u8 = 2;

/// The ids of the flags every service has besides its settings.
const CONFIG: &str = "config";
const PRINT_CONFIG: &str = "print-config";
const CHECK_CONFIG: &str = "check-config";

/// The subcommand of `entry`, with a flag per setting.
pub fn command(entry: &Entry) -> Command {
    let mut cmd = Command::new(entry.name).about(entry.about).arg(
        Arg::new(CONFIG)
            .long(CONFIG)
            .value_name("FILE")
            .value_parser(clap::value_parser!(PathBuf))
            .help("Read settings from this TOML file (else $EBB_CONFIG)"),
    );
    cmd = cmd
        .arg(
            Arg::new(PRINT_CONFIG)
                .long(PRINT_CONFIG)
                .action(ArgAction::SetTrue)
                .help("Print the effective settings as TOML (secrets hidden) and exit"),
        )
        .arg(
            Arg::new(CHECK_CONFIG)
                .long(CHECK_CONFIG)
                .action(ArgAction::SetTrue)
                .help("Check the settings and exit: 0 when valid, 2 naming every bad one"),
        );
    for key in entry.keys() {
        cmd = cmd.arg(
            Arg::new(key.name)
                .long(key.flag())
                .value_name("VALUE")
                .help(format!("{} [env: {}]", key.help, key.env_var(entry.name))),
        );
    }
    cmd
}

/// The settings named on the command line, as `(key, text)`.
pub fn flags(entry: &Entry, matches: &ArgMatches) -> Vec<(String, String)> {
    entry
        .keys()
        .into_iter()
        .filter_map(|key| {
            matches
                .get_one::<String>(key.name)
                .map(|v| (key.name.to_owned(), v.clone()))
        })
        .collect()
}

/// Runs `ebb <service>` as parsed into `matches`.
pub async fn main(entry: &Entry, matches: &ArgMatches) -> anyhow::Result<ExitCode> {
    let file = matches.get_one::<PathBuf>(CONFIG).cloned();
    let sources = Sources::from_process(file, flags(entry, matches));
    let loaded = match entry.load(&sources) {
        Ok(l) => l,
        Err(problems) => return Ok(report_invalid(entry.name, &problems.0)),
    };
    if matches.get_flag(PRINT_CONFIG) {
        print!("{}", loaded.printed);
        return Ok(ExitCode::SUCCESS);
    }
    if matches.get_flag(CHECK_CONFIG) {
        print!("{}", loaded.printed);
        println!("# the {} settings are valid", entry.name);
        return Ok(ExitCode::SUCCESS);
    }
    let signals = Signals::install()?;
    let shutdown = signals.token();
    let common = loaded.common.clone();
    let ctx = Context::connect(
        &common,
        loaded.needs,
        &format!("ebb-{}", entry.name),
        shutdown.clone(),
    )
    .await?;
    let mut supervisor = Supervisor::new(&shutdown);
    if !common.metrics_listen.is_empty() {
        let listener = tokio::net::TcpListener::bind(&common.metrics_listen)
            .await
            .with_context(|| {
                format!("binding the metrics listener on {}", common.metrics_listen)
            })?;
        tracing::info!(service = entry.name, addr = %listener.local_addr()?, "serving /metrics and /healthz");
        supervisor.spawn("metrics", serve_metrics(listener, supervisor.token()));
    }
    supervisor.spawn(entry.name, loaded.start(ctx.clone()));
    let outcome = supervisor.run().await;
    ctx.close().await;
    outcome?;
    Ok(ExitCode::SUCCESS)
}

/// Names every invalid setting on stderr; the exit status for it.
pub fn report_invalid(service: &str, problems: &[String]) -> ExitCode {
    eprintln!(
        "error: invalid {service} settings ({} problem{}):",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        eprintln!("  - {p}");
    }
    ExitCode::from(EXIT_INVALID_CONFIG)
}

/// The router a service without its own HTTP server serves: the process-wide Prometheus
/// registry and a liveness probe.
pub fn metrics_app() -> axum::Router {
    ebb_obs::metrics_router().route("/healthz", axum::routing::get(|| async { "ok" }))
}

/// Serves [`metrics_app`] on `listener` until `stop`.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    axum::serve(listener, metrics_app())
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
        .context("serving /metrics")
}
