//! Observability shared by every service: the tracing subscriber (JSON or pretty, by env) with
//! OpenTelemetry span export over OTLP when configured, the Prometheus recorder and its
//! `/metrics` route, the metric names (defined once, here), and W3C trace context carried in a
//! `traceparent` NATS header.

pub mod catalogue;
pub mod export;
pub mod names;
mod secret;
pub use secret::{CredUrl, Secret, redact_url};
pub mod trace;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

impl LogFormat {
    /// `EBB_LOG_FORMAT=json` selects JSON; anything else is human-readable.
    pub fn from_env() -> Self {
        match std::env::var("EBB_LOG_FORMAT").as_deref() {
            Ok("json") => LogFormat::Json,
            _ => LogFormat::Pretty,
        }
    }
}

/// Installs the global tracing subscriber, filtered by `RUST_LOG` (default `info`), with span
/// export over OTLP when the standard `OTEL_*` variables ask for it (see [`export`]); `service`
/// is the `service.name` unless `OTEL_SERVICE_NAME` says otherwise. Calling it twice is harmless:
/// the second call keeps the first subscriber.
pub fn init_tracing(format: LogFormat, service: &str) {
    match export::TraceExport::from_env(service) {
        Ok(export) => init_tracing_with(format, export),
        Err(problem) => {
            init_tracing_with(format, None);
            tracing::error!(%problem, "trace export is off");
        }
    }
}

/// [`init_tracing`] with the export settings given rather than read from the environment.
pub fn init_tracing_with(format: LogFormat, export: Option<export::TraceExport>) {
    use tracing_subscriber::{EnvFilter, fmt, layer::SubscriberExt, util::SubscriberInitExt};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let provider = match export
        .as_ref()
        .map(export::TraceExport::provider)
        .transpose()
    {
        Ok(p) => p,
        Err(problem) => {
            init_tracing_with(format, None);
            tracing::error!(%problem, "trace export is off");
            return;
        }
    };
    let otel = provider.as_ref().map(|p| {
        use opentelemetry::trace::TracerProvider as _;
        tracing_opentelemetry::layer().with_tracer(p.tracer("ebb"))
    });
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let result = match format {
        // Logs go to stderr: stdout belongs to commands that print results (`ebb agent scan`,
        // `ebb sim serve`).
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .with_writer(std::io::stderr)
                    .json()
                    .with_current_span(true),
            )
            .try_init(),
        LogFormat::Pretty => registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init(),
    };
    match (result, provider) {
        (Ok(()), Some(p)) => {
            // Only the installed provider is kept: its spans are the ones to flush at shutdown.
            let _ = export::PROVIDER.set(p);
        }
        // Already installed (tests, or `ebb dev` composing services): keep the first, and stop
        // the exporter that no span will reach.
        (Err(_), Some(p)) => drop(p.shutdown()),
        (_, None) => {}
    }
}

/// Exports the spans still buffered; a no-op when traces are not exported.
pub fn flush_tracing() {
    if let Some(p) = export::PROVIDER.get()
        && let Err(error) = p.force_flush()
    {
        tracing::warn!(%error, "flushing spans failed");
    }
}

/// Exports the spans still buffered and stops the exporter, at the end of the process. Spans
/// ended after this are dropped.
pub fn shutdown_tracing() {
    if let Some(p) = export::PROVIDER.get()
        && let Err(error) = p.shutdown()
    {
        tracing::warn!(%error, "shutting the span exporter down failed");
    }
}

/// Installs the Prometheus recorder once per process and returns its handle.
pub fn prometheus() -> PrometheusHandle {
    PROMETHEUS
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets(names::LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full(
                            names::CURTAILMENT_START_TO_ACTIVE_SECONDS.to_owned(),
                        ),
                        names::START_TO_ACTIVE_BUCKETS,
                    )
                })
                .expect("static non-empty buckets")
                .install_recorder();
            match handle {
                Ok(h) => {
                    catalogue::describe();
                    h
                }
                // Another recorder is installed (a test harness): render an empty, detached one.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

/// An axum router serving `GET /metrics` in the Prometheus text format.
pub fn metrics_router() -> axum::Router {
    let handle = prometheus();
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let h = handle.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    h.render(),
                )
            }
        }),
    )
}
