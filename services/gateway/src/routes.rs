//! Handlers. Each parses its input into domain types at the edge (naming the field on error),
//! checks the caller's role, then asks the planner or reads the store.

use crate::AppState;
use crate::auth::Principal;
use crate::problem::{Kind, Problem};
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, request::Parts};
use axum::routing::get;
use axum::{Json, Router};
use ebb_bus::rpc::{CallError, call};
use ebb_bus::{
    Actor, PlanView, PreviewRequest, Role, Scope, StartReply, StartRequest, StopRequest,
};
use ebb_domain::selection::Mode;
use ebb_domain::{EventId, EventState, Kw, SiteCode, Watts};
use ebb_store::events::{self, EventRow, EventView};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The API's routes and the OpenAPI document they make: each route is registered with its
/// handler's `#[utoipa::path]`, so the document lists exactly the routes served.
pub fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    use utoipa::OpenApi;
    use utoipa_axum::{router::OpenApiRouter, routes};
    OpenApiRouter::with_openapi(crate::openapi::ApiDoc::openapi())
        .routes(routes!(start, list))
        .routes(routes!(preview))
        .routes(routes!(get_one, update))
        .routes(routes!(active))
        .routes(routes!(targets))
        .routes(routes!(stop))
        .routes(routes!(terminate))
        .routes(routes!(abort))
        .routes(routes!(crate::fleet::list_devices))
        .routes(routes!(
            crate::fleet::get_device,
            crate::fleet::patch_device
        ))
        .routes(routes!(crate::fleet::fleet_summary))
        .routes(routes!(crate::access::create_key, crate::access::list_keys))
        .routes(routes!(crate::access::revoke_key))
        .routes(routes!(crate::access::audit))
        .routes(routes!(crate::webhooks::create, crate::webhooks::list))
        .routes(routes!(
            crate::webhooks::get_one,
            crate::webhooks::patch,
            crate::webhooks::delete
        ))
        .routes(routes!(crate::webhooks::rotate))
        .routes(routes!(crate::webhooks::deliveries))
        .routes(routes!(crate::webhooks::redeliver))
        .routes(routes!(crate::usage::put_prices))
        .routes(routes!(crate::usage::get_usage))
        .split_for_parts()
}

/// Long-lived routes, outside the in-flight limit (they have their own bound).
fn streams() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    use utoipa_axum::{router::OpenApiRouter, routes};
    OpenApiRouter::new()
        .routes(routes!(crate::stream::events))
        .split_for_parts()
}

pub fn router(state: AppState) -> Router {
    let (api, mut doc) = api();
    let (streams, streams_doc) = streams();
    doc.merge(streams_doc);
    let doc = std::sync::Arc::new(doc.to_json().unwrap_or_else(|e| {
        tracing::error!(error = %e, "rendering the OpenAPI document");
        "{}".to_owned()
    }));
    // Health, metrics and the document stay outside the in-flight limit, so an overloaded
    // gateway still says so.
    api.route_layer(axum::middleware::from_fn_with_state(
        state.guard.clone(),
        crate::guard::limit_in_flight,
    ))
    .merge(streams)
    .route("/healthz", get(|| async { "ok" }))
    .route("/readyz", get(readyz))
    .route(
        "/v1/openapi.json",
        get(move || {
            let doc = doc.clone();
            async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    doc.as_str().to_owned(),
                )
            }
        }),
    )
    .with_state(state)
}

async fn readyz(State(s): State<AppState>) -> Result<&'static str, Problem> {
    let db = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        sqlx::query("SELECT 1").execute(&s.pool),
    )
    .await;
    if !matches!(db, Ok(Ok(_))) {
        return Err(Problem::new(
            Kind::Unavailable,
            "postgresql is not reachable",
        ));
    }
    if s.nats.connection_state() != async_nats::connection::State::Connected {
        return Err(Problem::new(Kind::Unavailable, "nats is not reachable"));
    }
    Ok("ready")
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let unauth = || Problem::new(Kind::Unauthenticated, "a valid bearer API key is required");
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(unauth)?;
        let token = header.strip_prefix("Bearer ").ok_or_else(unauth)?;
        state.guard.authenticate(&state.pool, token.trim()).await
    }
}

/// A cursor that was not issued for this listing, its org and its filters.
pub(crate) fn bad_cursor() -> Problem {
    Problem::field("cursor", "is not a cursor issued for this listing")
}

pub(crate) fn require(p: &Principal, role: Role) -> Result<(), Problem> {
    if p.role >= role {
        Ok(())
    } else {
        Err(Problem::new(
            Kind::PermissionDenied,
            format!("this needs the {} role", role.as_str()),
        ))
    }
}

/// A query string parsed, or a problem saying what is wrong with it.
pub(crate) fn query<T>(
    q: Result<Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, Problem> {
    q.map(|Query(v)| v)
        .map_err(|e| Problem::new(Kind::InvalidArgument, e.body_text()))
}

/// A JSON body that may be left out (then `T::default()`); one that is there but malformed is a
/// problem, as with [`body`].
pub(crate) fn optional_body<T: serde::de::DeserializeOwned + Default>(
    raw: &[u8],
) -> Result<T, Problem> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(raw)
        .map_err(|e| Problem::new(Kind::InvalidArgument, format!("the body is not valid: {e}")))
}

pub(crate) fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, Problem> {
    b.map(|Json(v)| v)
        .map_err(|e| Problem::new(Kind::InvalidArgument, e.body_text()))
}

fn planner_error(e: CallError) -> Problem {
    match e {
        CallError::Remote(r) => r.into(),
        CallError::NoResponders(_) | CallError::Timeout(_) => {
            Problem::new(Kind::Unavailable, "the planner is not available")
        }
        other => Problem::internal(other),
    }
}

/// A Start the planner did not answer in time: the client cannot know whether it happened, and
/// only a retry under the same `Idempotency-Key` is safe.
fn outcome_unknown(keyed: bool) -> Problem {
    metrics::counter!(ebb_obs::names::GATEWAY_OUTCOME_UNKNOWN).increment(1);
    let detail = if keyed {
        "the planner did not answer in time: the curtailment may or may not have started; \
         retry with the same Idempotency-Key, which returns it if it did"
    } else {
        "the planner did not answer in time: the curtailment may or may not have started; \
         list curtailments to find out before retrying, and send an Idempotency-Key with \
         every Start so that a retry is safe"
    };
    Problem::new(Kind::OutcomeUnknown, detail).retry_after(1)
}

/// The body of a Start or a preview. `mode` decides which one of `target_kw`, `percent` and
/// `watts` is required; the others must be absent.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartBody {
    /// `kw`, `percent`, `full` or `power_target`.
    #[schema(example = "kw")]
    pub mode: String,
    #[serde(default)]
    pub target_kw: Option<f64>,
    #[serde(default)]
    pub percent: Option<f64>,
    #[serde(default)]
    pub watts: Option<f64>,
    #[serde(default)]
    pub scope: Option<ScopeBody>,
    pub reason: String,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub external_source: Option<String>,
    #[serde(default)]
    pub external_reference: Option<String>,
    #[serde(default)]
    pub max_duration_s: Option<u32>,
    #[serde(default)]
    pub allow_unbounded: bool,
    #[serde(default)]
    pub restore_batch_size: Option<u32>,
    #[serde(default)]
    pub restore_batch_interval_s: Option<u32>,
    #[serde(default)]
    pub force_include_maintenance: bool,
    #[serde(default)]
    pub min_power_w_override: Option<f64>,
}

/// Where to curtail: the org's sites by code (every site the key reaches when empty).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScopeBody {
    #[serde(default)]
    pub sites: Vec<String>,
}

fn parse_mode(b: &StartBody) -> Result<Mode, Problem> {
    let only = |allowed: &[&str]| -> Result<(), Problem> {
        for (name, set) in [
            ("target_kw", b.target_kw.is_some()),
            ("percent", b.percent.is_some()),
            ("watts", b.watts.is_some()),
        ] {
            if set && !allowed.contains(&name) {
                return Err(Problem::field(
                    name,
                    format!("is not used by mode {}", b.mode),
                ));
            }
        }
        Ok(())
    };
    match b.mode.as_str() {
        "kw" => {
            only(&["target_kw"])?;
            let v = b
                .target_kw
                .ok_or_else(|| Problem::field("target_kw", "is required for mode kw"))?;
            Ok(Mode::Kw {
                target_kw: Kw::new(v).map_err(|e| Problem::field("target_kw", e.to_string()))?,
            })
        }
        "percent" => {
            only(&["percent"])?;
            let v = b
                .percent
                .ok_or_else(|| Problem::field("percent", "is required for mode percent"))?;
            if !(v.is_finite() && v > 0.0 && v <= 100.0) {
                return Err(Problem::field(
                    "percent",
                    "must be greater than 0 and at most 100",
                ));
            }
            Ok(Mode::Percent { percent: v })
        }
        "full" => {
            only(&[])?;
            Ok(Mode::Full)
        }
        "power_target" => {
            only(&["watts"])?;
            let v = b
                .watts
                .ok_or_else(|| Problem::field("watts", "is required for mode power_target"))?;
            let w = Watts::new(v).map_err(|e| Problem::field("watts", e.to_string()))?;
            if (ebb_domain::CommandKind::SetPowerTarget { watts: v })
                .validate()
                .is_err()
            {
                return Err(Problem::field(
                    "watts",
                    "is outside the range a miner accepts",
                ));
            }
            Ok(Mode::PowerTarget { watts: w })
        }
        other => Err(Problem::field(
            "mode",
            format!("must be one of kw, percent, full, power_target (got {other:?})"),
        )),
    }
}

async fn start_request(
    s: &AppState,
    p: &Principal,
    b: StartBody,
    headers: &HeaderMap,
) -> Result<StartRequest, Problem> {
    let mode = parse_mode(&b)?;
    let idempotency_key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .map(str::trim)
                .filter(|k| !k.is_empty() && k.len() <= 256)
                .ok_or_else(|| {
                    Problem::field("Idempotency-Key", "must be 1-256 visible characters")
                })?
                .to_owned(),
        ),
    };
    let mut sites = Vec::new();
    for (i, code) in b.scope.unwrap_or_default().sites.iter().enumerate() {
        sites.push(
            SiteCode::parse(code)
                .map_err(|e| Problem::field(&format!("scope.sites[{i}]"), e.to_string()))?,
        );
    }
    // A key limited to some sites sees and touches only those.
    if let Some(reach) = reach(s, p).await? {
        if reach.is_empty() {
            return Err(Problem::new(
                Kind::PermissionDenied,
                "this key reaches no site",
            ));
        }
        if sites.is_empty() {
            sites = reach;
        } else if let Some(out) = sites.iter().find(|c| !reach.contains(c)) {
            return Err(Problem::new(
                Kind::PermissionDenied,
                format!("this key cannot reach site {out}"),
            ));
        }
    }
    Ok(StartRequest {
        org: p.org,
        actor: Actor::ApiKey {
            key_id: p.key_id,
            role: p.role,
        },
        mode,
        scope: Scope { sites },
        reason: b.reason,
        priority: b.priority,
        idempotency_key,
        external_source: b.external_source,
        external_reference: b.external_reference,
        max_duration_s: b.max_duration_s,
        allow_unbounded: b.allow_unbounded,
        restore_batch_size: b.restore_batch_size,
        restore_batch_interval_s: b.restore_batch_interval_s,
        force_include_maintenance: b.force_include_maintenance,
        min_power_w_override: b.min_power_w_override,
    })
}

#[utoipa::path(
    post,
    path = "/v1/curtailments:preview",
    tag = "curtailments",
    summary = "What a Start with this body would select, without starting it (viewer)",
    request_body = StartBody,
    responses((status = 200, description = "The plan", body = ebb_bus::PlanView), crate::openapi::Problems)
)]
async fn preview(
    State(s): State<AppState>,
    p: Principal,
    headers: HeaderMap,
    b: Result<Json<StartBody>, JsonRejection>,
) -> Result<Json<PlanView>, Problem> {
    require(&p, Role::Viewer)?;
    let req = PreviewRequest(start_request(&s, &p, body(b)?, &headers).await?);
    let view: PlanView = call(&s.nats, &(), Some(p.org), &req, s.planner_timeout)
        .await
        .map_err(planner_error)?;
    Ok(Json(view))
}

#[utoipa::path(
    post,
    path = "/v1/curtailments",
    tag = "curtailments",
    summary = "Start a curtailment (operator)",
    params(("Idempotency-Key" = Option<String>, Header,
        description = "1-256 characters: a retry with the same key returns the same event")),
    request_body = StartBody,
    responses(
        (status = 201, description = "Started", body = EventView),
        (status = 200, description = "A replay of a Start with the same Idempotency-Key", body = EventView),
        crate::openapi::Problems
    )
)]
async fn start(
    State(s): State<AppState>,
    p: Principal,
    headers: HeaderMap,
    b: Result<Json<StartBody>, JsonRejection>,
) -> Result<(StatusCode, Json<EventView>), Problem> {
    require(&p, Role::Operator)?;
    let req = start_request(&s, &p, body(b)?, &headers).await?;
    let keyed = req.idempotency_key.is_some();
    let reply: StartReply = call(&s.nats, &(), Some(p.org), &req, s.planner_timeout)
        .await
        .map_err(|e| match e {
            // The request may have reached the planner, which may have started the event.
            CallError::Timeout(_) => outcome_unknown(keyed),
            other => planner_error(other),
        })?;
    // The request's span (see `instruments::record`) names the event it started.
    tracing::Span::current().record("event_id", tracing::field::display(reply.event_id));
    let view = load_view(&s, &p, reply.event_id).await?;
    let status = if reply.replayed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(view)))
}

/// Why the event is stopped (recorded with it).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct StopBody {
    #[serde(default)]
    reason: Option<String>,
    /// Restore this many targets per batch (admin; at most 10,000).
    #[serde(default)]
    restore_batch_size_override: Option<u32>,
    /// Restore batches this many seconds apart (admin above the non-admin cap).
    #[serde(default)]
    restore_batch_interval_s_override: Option<u32>,
}

#[utoipa::path(
    post,
    path = "/v1/curtailments/{id}/stop",
    tag = "curtailments",
    summary = "Stop a curtailment: its miners are restored in paced batches (operator)",
    params(("id" = uuid::Uuid, Path, description = "The curtailment")),
    request_body(content = Option<StopBody>),
    responses((status = 200, description = "The event, now restoring", body = EventView), crate::openapi::Problems)
)]
async fn stop(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    raw: axum::body::Bytes,
) -> Result<Json<EventView>, Problem> {
    require(&p, Role::Operator)?;
    let event_id = parse_id(&id)?;
    load_view(&s, &p, event_id).await?; // 404 unless the key reaches the event
    let b: StopBody = optional_body(&raw)?;
    let req = StopRequest {
        org: p.org,
        actor: actor(&p),
        event_id,
        reason: b.reason,
        restore_batch_size_override: b.restore_batch_size_override,
        restore_batch_interval_s_override: b.restore_batch_interval_s_override,
    };
    planner_write(&s, &p, event_id, &req).await
}

/// How a stopped event that cannot settle is ended.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct TerminateBody {
    /// `cancelled` or `failed`.
    target_state: String,
    reason: String,
}

#[utoipa::path(
    post,
    path = "/v1/curtailments/{id}/terminate",
    tag = "curtailments",
    summary = "End a stopped event once nothing can still be curtailed or in flight (admin)",
    params(("id" = uuid::Uuid, Path, description = "The curtailment")),
    request_body = TerminateBody,
    responses((status = 200, description = "The ended event", body = EventView), crate::openapi::Problems)
)]
async fn terminate(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    b: Result<Json<TerminateBody>, JsonRejection>,
) -> Result<Json<EventView>, Problem> {
    require(&p, Role::Admin)?;
    let event_id = parse_id(&id)?;
    let b = body(b)?;
    load_view(&s, &p, event_id).await?; // 404 unless the key reaches the event
    let target_state = match b.target_state.as_str() {
        "cancelled" => EventState::Cancelled,
        "failed" => EventState::Failed,
        _ => {
            return Err(Problem::field(
                "target_state",
                "must be cancelled or failed",
            ));
        }
    };
    let req = ebb_bus::TerminateRequest {
        org: p.org,
        actor: actor(&p),
        event_id,
        target_state,
        reason: b.reason,
    };
    planner_write(&s, &p, event_id, &req).await
}

/// The caller as the planner records it.
fn actor(p: &Principal) -> Actor {
    Actor::ApiKey {
        key_id: p.key_id,
        role: p.role,
    }
}

/// Asks the planner to change `event_id` with `req`, then answers the event as it now is.
async fn planner_write<R>(
    s: &AppState,
    p: &Principal,
    event_id: EventId,
    req: &R,
) -> Result<Json<EventView>, Problem>
where
    R: ebb_bus::Request<Route = ()>,
{
    let _: R::Reply = call(&s.nats, &(), Some(p.org), req, s.planner_timeout)
        .await
        .map_err(planner_error)?;
    Ok(Json(load_view(s, p, event_id).await?))
}

pub(crate) fn parse_id(id: &str) -> Result<EventId, Problem> {
    Uuid::parse_str(id)
        .map(EventId)
        .map_err(|_| Problem::field("id", "must be a UUID"))
}

#[utoipa::path(
    get,
    path = "/v1/curtailments/{id}",
    tag = "curtailments",
    summary = "One curtailment: its state, counts by target state and observed shed (viewer)",
    params(("id" = uuid::Uuid, Path, description = "The curtailment")),
    responses((status = 200, description = "The event", body = EventView), crate::openapi::Problems)
)]
async fn get_one(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<EventView>, Problem> {
    require(&p, Role::Viewer)?;
    Ok(Json(load_view(&s, &p, parse_id(&id)?).await?))
}

/// The sites a key may see and touch: `None` for every site of its org.
async fn reach(s: &AppState, p: &Principal) -> Result<Option<Vec<SiteCode>>, Problem> {
    let Some(allowed) = &p.site_ids else {
        return Ok(None);
    };
    let org_sites = ebb_store::fleet::sites(&s.pool, p.org)
        .await
        .map_err(Problem::internal)?;
    Ok(Some(
        org_sites
            .into_iter()
            .filter(|x| allowed.contains(&x.id.0))
            .map(|x| x.code)
            .collect(),
    ))
}

/// Whether an event lies wholly within a key's reach. An event scoped to the whole org is visible
/// only to keys that reach the whole org.
fn visible(reach: &Option<Vec<SiteCode>>, ev: &EventRow) -> bool {
    let Some(reach) = reach else { return true };
    let scope: Scope = serde_json::from_value(ev.scope.clone()).unwrap_or_default();
    !scope.sites.is_empty() && scope.sites.iter().all(|c| reach.contains(c))
}

pub(crate) async fn load_view(
    s: &AppState,
    p: &Principal,
    id: EventId,
) -> Result<EventView, Problem> {
    let not_found = || Problem::new(Kind::NotFound, "curtailment not found");
    let ev = events::get_event(&s.pool, p.org, id)
        .await
        .map_err(Problem::internal)?
        .ok_or_else(not_found)?;
    if !visible(&reach(s, p).await?, &ev) {
        return Err(not_found());
    }
    let counts = events::target_counts(&s.pool, &[id])
        .await
        .map_err(Problem::internal)?
        .remove(&id)
        .unwrap_or_default();
    let shed = events::observed_shed_w(&s.pool, &[id])
        .await
        .map_err(Problem::internal)?
        .remove(&id)
        .unwrap_or(0.0);
    Ok(EventView::new(ev, counts, shed))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only events in this state.
    #[serde(default)]
    state: Option<String>,
    /// 1 to 200 (default 50).
    #[serde(default)]
    page_size: Option<u32>,
    /// The `next_cursor` of the previous page, with the same filters.
    #[serde(default)]
    cursor: Option<String>,
}

/// An opaque cursor, bound to the org and filter it was issued for.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Cursor {
    org: Uuid,
    state: Option<String>,
    before: Uuid,
}

/// One page of events, newest first.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventPage {
    pub items: Vec<EventView>,
    pub next_cursor: Option<String>,
}

pub const DEFAULT_PAGE: u32 = 50;
pub const MAX_PAGE: u32 = 200;

#[utoipa::path(
    get,
    path = "/v1/curtailments",
    tag = "curtailments",
    summary = "Curtailments, newest first, a page at a time (viewer)",
    params(ListQuery),
    responses((status = 200, description = "A page", body = EventPage), crate::openapi::Problems)
)]
async fn list(
    State(s): State<AppState>,
    p: Principal,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<EventPage>, Problem> {
    require(&p, Role::Viewer)?;
    let q = crate::routes::query(q)?;
    let state = q
        .state
        .as_deref()
        .map(|st| {
            st.parse::<EventState>()
                .map_err(|_| Problem::field("state", "is not an event state"))
        })
        .transpose()?;
    let size = q.page_size.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&size) {
        return Err(Problem::field(
            "page_size",
            format!("must be between 1 and {MAX_PAGE}"),
        ));
    }
    let before = match q.cursor {
        None => None,
        Some(c) => {
            let cur: Cursor = crate::cursor::decode(&c)
                .filter(|cur: &Cursor| cur.org == p.org.0 && cur.state == q.state)
                .ok_or_else(bad_cursor)?;
            Some(EventId(cur.before))
        }
    };
    let mut rows = events::list_events(&s.pool, p.org, state, before, i64::from(size) + 1)
        .await
        .map_err(Problem::internal)?;
    let more = rows.len() > size as usize;
    rows.truncate(size as usize);
    let next_cursor = if more {
        rows.last().map(|last| {
            crate::cursor::encode(&Cursor {
                org: p.org.0,
                state: q.state.clone(),
                before: last.id.0,
            })
        })
    } else {
        None
    };
    // The cursor follows the unfiltered page, so a key limited to some sites may get short pages.
    let reach = reach(&s, &p).await?;
    rows.retain(|r| visible(&reach, r));
    let ids: Vec<EventId> = rows.iter().map(|r| r.id).collect();
    let mut counts = events::target_counts(&s.pool, &ids)
        .await
        .map_err(Problem::internal)?;
    let mut shed = events::observed_shed_w(&s.pool, &ids)
        .await
        .map_err(Problem::internal)?;
    let items = rows
        .into_iter()
        .map(|r| {
            let c = counts.remove(&r.id).unwrap_or_default();
            let w = shed.remove(&r.id).unwrap_or(0.0);
            EventView::new(r, c, w)
        })
        .collect();
    Ok(Json(EventPage { items, next_cursor }))
}

/// One target of a curtailment.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TargetItem {
    pub device_id: Uuid,
    /// The site's code.
    pub site: String,
    pub address: String,
    #[schema(example = "confirmed")]
    pub state: String,
    /// What it drew when selected, in W.
    pub baseline_power_w: f64,
    /// Its latest sample, in W: absent when it did not answer.
    pub last_observed_power_w: Option<f64>,
    pub sampled_at: Option<chrono::DateTime<chrono::Utc>>,
    pub retry_count: u32,
    pub last_error: Option<String>,
    pub confirmed_at: Option<chrono::DateTime<chrono::Utc>>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct TargetQuery {
    /// Only targets in this state (`dispatched`, `confirmed`, `failed`, `restore_failed`, …).
    #[serde(default)]
    state: Option<String>,
    /// 1 to 1,000 (default 100).
    #[serde(default)]
    page_size: Option<u32>,
    /// The `next_cursor` of the previous page, with the same filter.
    #[serde(default)]
    cursor: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct TargetCursor {
    org: Uuid,
    event: Uuid,
    state: Option<String>,
    after: Uuid,
}

/// One page of a curtailment's targets, by device id.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TargetPage {
    pub items: Vec<TargetItem>,
    pub next_cursor: Option<String>,
}

pub const MAX_TARGET_PAGE: u32 = 1000;

#[utoipa::path(
    get,
    path = "/v1/curtailments/{id}/targets",
    tag = "curtailments",
    summary = "A curtailment's targets: which miners failed, and whether they are still asleep (viewer)",
    params(("id" = uuid::Uuid, Path, description = "The curtailment"), TargetQuery),
    responses((status = 200, description = "A page", body = TargetPage), crate::openapi::Problems)
)]
async fn targets(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    q: Result<Query<TargetQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<TargetPage>, Problem> {
    require(&p, Role::Viewer)?;
    let event_id = parse_id(&id)?;
    let q = crate::routes::query(q)?;
    let state = q
        .state
        .as_deref()
        .map(|st| {
            st.parse::<ebb_domain::TargetState>()
                .map_err(|_| Problem::field("state", "is not a target state"))
        })
        .transpose()?;
    let size = q.page_size.unwrap_or(100);
    if !(1..=MAX_TARGET_PAGE).contains(&size) {
        return Err(Problem::field(
            "page_size",
            format!("must be between 1 and {MAX_TARGET_PAGE}"),
        ));
    }
    let after = match &q.cursor {
        None => None,
        Some(c) => Some(ebb_domain::DeviceId(
            crate::cursor::decode::<TargetCursor>(c)
                .filter(|cur| cur.org == p.org.0 && cur.event == event_id.0 && cur.state == q.state)
                .ok_or_else(bad_cursor)?
                .after,
        )),
    };
    load_view(&s, &p, event_id).await?; // 404 unless the key reaches the event
    let mut rows = events::target_page(&s.pool, event_id, state, after, i64::from(size) + 1)
        .await
        .map_err(Problem::internal)?;
    let more = rows.len() > size as usize;
    rows.truncate(size as usize);
    let next_cursor = more.then(|| rows.last()).flatten().map(|last| {
        crate::cursor::encode(&TargetCursor {
            org: p.org.0,
            event: event_id.0,
            state: q.state.clone(),
            after: last.device_id.0,
        })
    });
    Ok(Json(TargetPage {
        items: rows
            .into_iter()
            .map(|t| TargetItem {
                device_id: t.device_id.0,
                site: t.site,
                address: t.address,
                state: t.state.as_str().to_owned(),
                baseline_power_w: t.baseline_power_w,
                last_observed_power_w: t.observed_power_w,
                sampled_at: t.sampled_at,
                retry_count: t.retry_count,
                last_error: t.last_error,
                confirmed_at: t.confirmed_at,
                updated_at: t.updated_at,
            })
            .collect(),
        next_cursor,
    }))
}

/// The org's live curtailments (within the key's reach), with what each promised and sheds.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ActiveList {
    pub items: Vec<EventView>,
    /// Sum over the items of the shed their plans expected, in kW.
    pub expected_shed_kw: f64,
    /// Sum over the items of what telemetry says they shed now, in kW.
    pub observed_shed_kw: f64,
}

#[utoipa::path(
    get,
    path = "/v1/curtailments/active",
    tag = "curtailments",
    summary = "Live curtailments with target counts by state and expected and observed shed (viewer)",
    responses((status = 200, description = "The live events", body = ActiveList), crate::openapi::Problems)
)]
async fn active(State(s): State<AppState>, p: Principal) -> Result<Json<ActiveList>, Problem> {
    require(&p, Role::Viewer)?;
    let reach = reach(&s, &p).await?;
    let mut rows = events::live_events_of(&s.pool, p.org)
        .await
        .map_err(Problem::internal)?;
    rows.retain(|r| visible(&reach, r));
    let ids: Vec<EventId> = rows.iter().map(|r| r.id).collect();
    let mut counts = events::target_counts(&s.pool, &ids)
        .await
        .map_err(Problem::internal)?;
    let mut shed = events::observed_shed_w(&s.pool, &ids)
        .await
        .map_err(Problem::internal)?;
    let items: Vec<EventView> = rows
        .into_iter()
        .map(|r| {
            let c = counts.remove(&r.id).unwrap_or_default();
            let w = shed.remove(&r.id).unwrap_or(0.0);
            EventView::new(r, c, w)
        })
        .collect();
    Ok(Json(ActiveList {
        expected_shed_kw: items.iter().map(|e| e.expected_shed_kw).sum(),
        observed_shed_kw: items.iter().map(|e| e.observed_shed_kw).sum(),
        items,
    }))
}

/// What may change on a pending or active curtailment; at least one field.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    #[serde(default)]
    reason: Option<String>,
    /// Above the organisation's default needs admin.
    #[serde(default)]
    max_duration_s: Option<u32>,
    #[serde(default)]
    restore_batch_size: Option<u32>,
    /// Above the non-admin cap needs admin.
    #[serde(default)]
    restore_batch_interval_s: Option<u32>,
}

#[utoipa::path(
    patch,
    path = "/v1/curtailments/{id}",
    tag = "curtailments",
    summary = "Change a pending or active curtailment's reason, maximum duration or restore pacing (operator)",
    params(("id" = uuid::Uuid, Path, description = "The curtailment")),
    request_body = UpdateBody,
    responses((status = 200, description = "The event as it now is", body = EventView), crate::openapi::Problems)
)]
async fn update(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    b: Result<Json<UpdateBody>, JsonRejection>,
) -> Result<Json<EventView>, Problem> {
    require(&p, Role::Operator)?;
    let event_id = parse_id(&id)?;
    let b = body(b)?;
    load_view(&s, &p, event_id).await?; // 404 unless the key reaches the event
    let req = ebb_bus::UpdateRequest {
        org: p.org,
        actor: actor(&p),
        event_id,
        reason: b.reason,
        max_duration_s: b.max_duration_s,
        restore_batch_size: b.restore_batch_size,
        restore_batch_interval_s: b.restore_batch_interval_s,
    };
    planner_write(&s, &p, event_id, &req).await
}

/// Why an event is aborted (required: the audit log keeps it).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct AbortBody {
    reason: String,
}

#[utoipa::path(
    post,
    path = "/v1/curtailments/{id}/abort",
    tag = "curtailments",
    summary = "Release a stuck curtailment's miners without restoring them (admin; see the runbook)",
    params(("id" = uuid::Uuid, Path, description = "The curtailment")),
    request_body = AbortBody,
    responses((status = 200, description = "The event, failed, its targets released", body = EventView), crate::openapi::Problems)
)]
async fn abort(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    b: Result<Json<AbortBody>, JsonRejection>,
) -> Result<Json<EventView>, Problem> {
    require(&p, Role::Admin)?;
    let event_id = parse_id(&id)?;
    let b = body(b)?;
    load_view(&s, &p, event_id).await?; // 404 unless the key reaches the event
    let req = ebb_bus::AbortRequest {
        org: p.org,
        actor: actor(&p),
        event_id,
        reason: b.reason,
    };
    planner_write(&s, &p, event_id, &req).await
}
