//! Where spans go: OTLP export configured by the standard OpenTelemetry variables, and off when
//! no endpoint is set.
//!
//! - `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is) or `OTEL_EXPORTER_OTLP_ENDPOINT` (`/v1/traces`
//!   appended for HTTP): where to send spans. Neither set: no export.
//! - `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` or `OTEL_EXPORTER_OTLP_PROTOCOL`: `http/protobuf`
//!   (the default) or `grpc`.
//! - `OTEL_SERVICE_NAME`: the resource's `service.name`; by default the service's own name when it
//!   runs as its own process, `ebb` when `ebb dev` runs them all in one.
//!
//! Spans are exported in batches from the SDK's own thread; [`crate::shutdown_tracing`] sends
//! what is left when the process ends.

use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::sync::OnceLock;

/// The provider the global subscriber exports through, kept to flush it.
pub(crate) static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// The OTLP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Protobuf over HTTP (`POST <endpoint>/v1/traces`).
    HttpProtobuf,
    /// gRPC (tonic).
    Grpc,
}

/// Where and how spans are exported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceExport {
    /// The full URL spans are sent to (for HTTP, including `/v1/traces`).
    pub endpoint: String,
    pub protocol: Protocol,
    /// The resource's `service.name`.
    pub service_name: String,
}

impl TraceExport {
    /// Reads the process environment; `None` when no endpoint is set.
    pub fn from_env(default_service: &str) -> Result<Option<Self>, String> {
        Self::from_vars(|k| std::env::var(k).ok(), default_service)
    }

    /// Reads the variables `get` returns (empty counts as unset); `None` when no endpoint is set.
    pub fn from_vars(
        get: impl Fn(&str) -> Option<String>,
        default_service: &str,
    ) -> Result<Option<Self>, String> {
        let var = |k: &str| {
            get(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let protocol = match var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .as_deref()
        {
            None | Some("http/protobuf") => Protocol::HttpProtobuf,
            Some("grpc") => Protocol::Grpc,
            Some(other) => {
                return Err(format!(
                    "OTEL_EXPORTER_OTLP_PROTOCOL must be http/protobuf or grpc (got {other:?})"
                ));
            }
        };
        let endpoint = match (
            var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            var("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(e), _) => e,
            // The generic endpoint is the collector's base URL; HTTP adds the signal's path.
            (None, Some(base)) => match protocol {
                Protocol::HttpProtobuf => format!("{}/v1/traces", base.trim_end_matches('/')),
                Protocol::Grpc => base,
            },
            (None, None) => return Ok(None),
        };
        Ok(Some(Self {
            endpoint,
            protocol,
            service_name: var("OTEL_SERVICE_NAME").unwrap_or_else(|| default_service.to_owned()),
        }))
    }

    /// Builds the batching tracer provider. gRPC needs a tokio runtime to be current.
    pub(crate) fn provider(&self) -> Result<SdkTracerProvider, String> {
        let builder = opentelemetry_otlp::SpanExporter::builder();
        let exporter = match self.protocol {
            Protocol::HttpProtobuf => builder
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(&self.endpoint)
                .build(),
            Protocol::Grpc => builder.with_tonic().with_endpoint(&self.endpoint).build(),
        }
        .map_err(|e| format!("building the OTLP span exporter for {}: {e}", self.endpoint))?;
        Ok(SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                Resource::builder()
                    .with_service_name(self.service_name.clone())
                    .build(),
            )
            .build())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(vars: &[(&str, &str)], expected: Result<Option<(&str, Protocol, &str)>, ()>) {
        let got = TraceExport::from_vars(
            |k| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            },
            "planner",
        );
        let got = got
            .map(|o| o.map(|e| (e.endpoint, e.protocol, e.service_name)))
            .map_err(|_| ());
        let expected = expected.map(|o| o.map(|(e, p, s)| (e.to_owned(), p, s.to_owned())));
        assert_eq!(got, expected, "{vars:?}");
    }

    #[test]
    fn off_unless_an_endpoint_is_set() {
        check(&[], Ok(None));
        check(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")], Ok(None));
        check(&[("OTEL_SERVICE_NAME", "x")], Ok(None));
    }

    #[test]
    fn standard_variables() {
        use Protocol::*;
        check(
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")],
            Ok(Some(("http://c:4318/v1/traces", HttpProtobuf, "planner"))),
        );
        check(
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_SERVICE_NAME", "ebb-west"),
            ],
            Ok(Some(("http://c:4317", Grpc, "ebb-west"))),
        );
        check(
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:9/traces"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ],
            Ok(Some(("http://t:9/traces", HttpProtobuf, "planner"))),
        );
        check(
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ],
            Err(()),
        );
    }

    /// Both transports build (gRPC inside a runtime, as `ebb` starts it), and shutting down an
    /// exporter that never reached its collector returns.
    #[tokio::test]
    async fn both_protocols_build() {
        for protocol in [Protocol::HttpProtobuf, Protocol::Grpc] {
            let export = TraceExport {
                endpoint: "http://127.0.0.1:9/v1/traces".into(),
                protocol,
                service_name: "test".into(),
            };
            let provider = export.provider().expect("a provider");
            drop(provider.shutdown());
        }
    }
}
