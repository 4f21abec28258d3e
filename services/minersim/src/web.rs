//! HTTP on port 80: the Antminer CGI pages behind digest auth, the Whatsminer redirect to
//! HTTPS and the LuxOS web UI page.
//!
//! Connections are served with hyper directly (so the accept path can apply connection-level
//! faults and knows which miner it serves); requests then go through an axum router per
//! firmware with the miner's index in a request extension. Reply-level faults (slow, no
//! answer, stall half-way) sit in a middleware so they apply per request, even on a kept-alive
//! connection.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use futures::StreamExt;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::digest::{self, Verdict};
use crate::model::Firmware;
use crate::net::Front;
use crate::sim::{Delivery, SimCore};
use crate::wire;

/// The miner a request was addressed to.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MinerIdx(pub u32);

/// State shared by the web handlers.
#[derive(Clone, Debug)]
pub(crate) struct WebState {
    pub core: Arc<SimCore>,
    pub shutdown: CancellationToken,
}

/// One prebuilt router per firmware.
#[derive(Clone, Debug)]
pub(crate) struct WebRouters {
    antminer: Router,
    whatsminer: Router,
    luxos: Router,
}

/// Largest request body accepted.
const MAX_BODY: usize = 64 * 1024;

impl WebRouters {
    pub fn new(state: WebState) -> WebRouters {
        let antminer = crate::antminer::router()
            .fallback(not_found)
            .layer(middleware::from_fn_with_state(state.clone(), digest_auth))
            .layer(middleware::from_fn_with_state(state.clone(), reply_faults))
            .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
            .with_state(state.clone());
        let whatsminer = Router::new()
            .fallback(whatsminer_redirect)
            .layer(middleware::from_fn_with_state(state.clone(), reply_faults))
            .with_state(state.clone());
        let luxos = Router::new()
            .route("/", axum::routing::get(luxos_index))
            .fallback(not_found)
            .layer(middleware::from_fn_with_state(state.clone(), reply_faults))
            .with_state(state);
        WebRouters {
            antminer,
            whatsminer,
            luxos,
        }
    }

    fn for_firmware(&self, fw: Firmware) -> Router {
        match fw {
            Firmware::AntminerStock => self.antminer.clone(),
            Firmware::WhatsminerV3 => self.whatsminer.clone(),
            Firmware::LuxOs => self.luxos.clone(),
        }
    }
}

/// A JSON reply as the CGI scripts send it (NaN written as firmware writes it).
pub(crate) fn json_response(v: &Value) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        wire::to_bytes(v),
    )
        .into_response()
}

/// Serves one HTTP connection.
pub(crate) async fn serve(front: &Front, idx: u32, stream: TcpStream) {
    let firmware = front.core.miner(idx).plate.model.firmware();
    let router = front.web.for_firmware(firmware);
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(MinerIdx(idx));
        let router = router.clone();
        async move { Ok::<_, Infallible>(router.oneshot(req).await.unwrap_or_else(|e| match e {})) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(front.core.limits.read_timeout)
        .max_buf_size(MAX_BODY)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    if let Err(error) = conn.await {
        tracing::trace!(%error, "http connection ended");
    }
}

async fn not_found() -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        Html("<html><body><h1>404 - Not Found</h1></body></html>"),
    )
}

/// Whatsminer's lighttpd sends every plain-HTTP request to the HTTPS LuCI.
async fn whatsminer_redirect(State(st): State<WebState>, req: Request) -> Response {
    let idx = req.extensions().get::<MinerIdx>().map_or(0, |m| m.0);
    let ip = st.core.miner(idx).address;
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{ip}{path}");
    let mut resp = StatusCode::TEMPORARY_REDIRECT.into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

async fn luxos_index() -> Html<&'static str> {
    Html(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>LuxOS | Luxor Firmware</title></head><body><div id=\"root\"></div>\
         <noscript>Luxor Firmware needs JavaScript.</noscript></body></html>",
    )
}

/// Digest auth in front of every Antminer page (root/root).
async fn digest_auth(State(st): State<WebState>, req: Request, next: Next) -> Response {
    let now = digest::now_unix();
    let uri = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    let verdict = digest::verify(
        &st.core.nonce_key,
        req.method().as_str(),
        &uri,
        header,
        "root",
        "root",
        now,
    );
    if verdict == Verdict::Granted {
        return next.run(req).await;
    }
    let challenge = digest::challenge(&st.core.nonce_key, now, verdict == Verdict::Stale);
    let mut resp = (
        StatusCode::UNAUTHORIZED,
        Html("<html><head><title>401 - Unauthorized</title></head><body><h1>401 - Unauthorized</h1></body></html>"),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

/// Slow, silent or stalling replies, per request.
async fn reply_faults(State(st): State<WebState>, req: Request, next: Next) -> Response {
    let idx = req.extensions().get::<MinerIdx>().map_or(0, |m| m.0);
    let plan = st.core.reply_plan(idx);
    let hold = st.core.limits.hold_max;
    if plan.delivery == Delivery::NoAnswer {
        tokio::select! {
            () = st.shutdown.cancelled() => {}
            () = tokio::time::sleep(hold) => {}
        }
        return aborted();
    }
    if let Some(delay) = plan.delay {
        tokio::time::sleep(delay).await;
    }
    let resp = next.run(req).await;
    if plan.delivery != Delivery::Stall {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY * 16).await else {
        return aborted();
    };
    let half = bytes.slice(..bytes.len() / 2);
    let shutdown = st.shutdown.clone();
    let stream = futures::stream::once(async move { Ok::<Bytes, std::io::Error>(half) }).chain(
        futures::stream::once(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(hold) => {}
            }
            Err(std::io::Error::other("stalled reply abandoned"))
        }),
    );
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    Response::from_parts(parts, Body::from_stream(stream))
}

/// A response whose body fails at once, so hyper drops the connection.
fn aborted() -> Response {
    let stream = futures::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::other("no answer"))
    });
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("1"));
    resp
}
