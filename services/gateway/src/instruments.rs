//! Request metrics and spans (issue 10): every answer counted by method, route and status class,
//! timed by method and route, and handled in a span that starts its trace. Labels stay low-cardinality: the route is the matched pattern
//! (`/v1/curtailments/{id}`, never an id), an unknown method is `other`, an unmatched path is
//! `unmatched`.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use ebb_obs::names::{GATEWAY_REQUEST_SECONDS, GATEWAY_REQUESTS};
use std::time::Instant;
use tracing::Instrument;

pub async fn record(req: Request, next: Next) -> Response {
    let method: &'static str = match req.method().as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    };
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    // The request's span: the trace every hop of a curtailment it starts joins.
    let span = tracing::info_span!(
        "http request",
        ebb.service = "gateway",
        otel.kind = "server",
        otel.name = format!("{method} {route}"),
        http.request.method = method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        event_id = tracing::field::Empty,
    );
    // A caller that traces its own work (a `traceparent` header) has the request join its trace.
    ebb_obs::trace::follow_http(&span, req.headers());
    let response = next.run(req).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    let status = match response.status().as_u16() / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    };
    metrics::counter!(GATEWAY_REQUESTS, "method" => method, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!(GATEWAY_REQUEST_SECONDS, "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}
