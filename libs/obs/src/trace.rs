//! W3C trace context on NATS headers, through OpenTelemetry's [`TraceContextPropagator`]. A
//! publisher injects the context of its current span ([`headers`], [`inject`]); a consumer
//! extracts it and makes it the parent of the span it handles the message in
//! ([`follow_headers`]), so one curtailment is one trace across gateway, planner, reconciler and
//! agent. An event stores the context of the request that started it as a `traceparent` string
//! ([`current_traceparent`], [`follow_traceparent`]), so work done for it later joins that trace.
//!
//! Without the OpenTelemetry layer (no `OTEL_EXPORTER_OTLP_ENDPOINT`) spans have no context:
//! nothing is injected, and extracting is harmless.

use async_nats::HeaderMap;
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header that carries the trace context (`00-<trace id>-<span id>-<flags>`).
pub const TRACEPARENT: &str = "traceparent";

/// Writes trace context into NATS headers.
pub struct HeaderInjector<'a>(pub &'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value);
    }
}

/// Reads trace context from NATS headers.
pub struct HeaderExtractor<'a>(pub &'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// One `traceparent` (or nothing), as a carrier for the propagator.
struct One<'a>(Option<&'a str>);

impl Extractor for One<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.filter(|_| key == TRACEPARENT)
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
    }
}

/// Collects what the propagator writes, to keep the `traceparent` alone.
#[derive(Default)]
struct Collect(Option<String>);

impl Injector for Collect {
    fn set(&mut self, key: &str, value: String) {
        if key == TRACEPARENT {
            self.0 = Some(value);
        }
    }
}

/// Injects the current span's context into `headers`; nothing when the span has none.
pub fn inject(headers: &mut HeaderMap) {
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
}

/// New headers carrying the current span's context.
pub fn headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    inject(&mut h);
    h
}

/// The context a message's headers carry: empty (so a span parented on it is a new root) when
/// there are no headers or the `traceparent` is missing or malformed.
pub fn extract(headers: Option<&HeaderMap>) -> Context {
    match headers {
        Some(h) => TraceContextPropagator::new().extract(&HeaderExtractor(h)),
        None => Context::new(),
    }
}

/// The context a stored `traceparent` names; empty when it is missing or malformed.
pub fn extract_traceparent(traceparent: Option<&str>) -> Context {
    TraceContextPropagator::new().extract(&One(traceparent))
}

/// Makes `span` a child of the context `headers` carry. Call it before the span is first
/// entered. A missing or malformed context leaves the span a new root: a message never fails
/// for its trace context.
pub fn follow_headers(span: &tracing::Span, headers: Option<&HeaderMap>) {
    follow(span, extract(headers));
}

/// Makes `span` a child of the context an HTTP request carries (a caller that traces its own
/// work), like [`follow_headers`].
pub fn follow_http(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    let tp = headers.get(TRACEPARENT).and_then(|v| v.to_str().ok());
    follow(span, extract_traceparent(tp));
}

/// Makes `span` a child of a stored `traceparent`, like [`follow_headers`].
pub fn follow_traceparent(span: &tracing::Span, traceparent: Option<&str>) {
    follow(span, extract_traceparent(traceparent));
}

fn follow(span: &tracing::Span, cx: Context) {
    if !cx.span().span_context().is_valid() {
        return;
    }
    // Fails only without the OpenTelemetry layer, when there is no trace to join.
    let _ = span.set_parent(cx);
}

/// The current span's context as a `traceparent`, to store with what outlives the request (an
/// event); `None` without the OpenTelemetry layer.
pub fn current_traceparent() -> Option<String> {
    let cx = tracing::Span::current().context();
    let mut out = Collect::default();
    TraceContextPropagator::new().inject_context(&cx, &mut out);
    out.0
}

/// The trace id of a span's context in hex, for log lines; `None` without one.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::layer::SubscriberExt;

    /// Runs `f` under a subscriber with the OpenTelemetry layer (no exporter).
    fn with_otel<T>(f: impl FnOnce() -> T) -> T {
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, f)
    }

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn headers_round_trip_through_the_propagator() {
        with_otel(|| {
            let span = tracing::info_span!("publisher");
            let _g = span.enter();
            let h = headers();
            let tp = h.get(TRACEPARENT).expect("a traceparent header").as_str();
            let parts: Vec<&str> = tp.split('-').collect();
            assert_eq!(parts.len(), 4, "{tp}");
            assert_eq!((parts[0], parts[1].len(), parts[2].len()), ("00", 32, 16));
            assert_eq!(Some(tp.to_owned()), current_traceparent());

            let cx = extract(Some(&h));
            let got = cx.span().span_context().clone();
            assert!(got.is_remote() && got.is_sampled());
            assert_eq!(Some(got.trace_id().to_string()), trace_id(&span));

            // A consumer's span joins the publisher's trace.
            let consumer = tracing::info_span!("consumer");
            follow_headers(&consumer, Some(&h));
            assert_eq!(trace_id(&consumer), trace_id(&span));
        });
    }

    #[test]
    fn a_stored_traceparent_is_followed() {
        with_otel(|| {
            let span = tracing::info_span!("later");
            follow_traceparent(&span, Some(VALID));
            assert_eq!(
                trace_id(&span).as_deref(),
                Some("4bf92f3577b34da6a3ce929d0e0e4736")
            );
            let _g = span.enter();
            let tp = current_traceparent().unwrap();
            assert!(
                tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
                "{tp}"
            );
            assert_ne!(tp, VALID, "a child has its own span id");
        });
    }

    #[test]
    fn an_http_caller_s_trace_is_joined() {
        with_otel(|| {
            let mut h = axum::http::HeaderMap::new();
            h.insert(TRACEPARENT, VALID.parse().unwrap());
            let span = tracing::info_span!("http request");
            follow_http(&span, &h);
            assert_eq!(
                trace_id(&span).as_deref(),
                Some("4bf92f3577b34da6a3ce929d0e0e4736")
            );
            h.insert(TRACEPARENT, "garbage".parse().unwrap());
            let span = tracing::info_span!("http request");
            follow_http(&span, &h);
            assert_ne!(
                trace_id(&span).as_deref(),
                Some("4bf92f3577b34da6a3ce929d0e0e4736")
            );
        });
    }

    #[test]
    fn malformed_context_yields_a_new_root() {
        for bad in [
            None,
            Some(""),
            Some("01-4bf92f3577b34da6a3ce929d0e0e4736"),
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            Some("00-xyz-00f067aa0ba902b7-01"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"),
        ] {
            assert!(
                !extract_traceparent(bad).span().span_context().is_valid(),
                "{bad:?}"
            );
            let mut h = HeaderMap::new();
            if let Some(b) = bad {
                h.insert(TRACEPARENT, b);
            }
            assert!(!extract(Some(&h)).span().span_context().is_valid());
            with_otel(|| {
                let span = tracing::info_span!("consumer");
                follow_headers(&span, Some(&h));
                let id = trace_id(&span).expect("a root of its own");
                assert_ne!(id, "4bf92f3577b34da6a3ce929d0e0e4736", "{bad:?}");
            });
        }
        assert!(!extract(None).span().span_context().is_valid());
    }

    #[test]
    fn without_the_layer_nothing_is_injected() {
        let span = tracing::info_span!("plain");
        let _g = span.enter();
        assert!(headers().is_empty());
        assert_eq!(current_traceparent(), None);
        follow_traceparent(&span, Some(VALID));
    }
}
