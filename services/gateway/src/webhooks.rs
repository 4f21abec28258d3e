//! Webhook endpoints (issue 8), for admins whose key reaches the whole org (an endpoint hears
//! every site's events): create (the `whsec_` secret shown once), read, change, delete, rotate
//! the secret (the old one signs too for a grace window), and the delivery log with redelivery.
//! Sending is the worker's (`deliver`); what is sent is written with each transition
//! (`ebb_store::events::announce`).
//!
//! A URL whose host is an IP address is checked against the deployment's SSRF policy here; a
//! host name is checked, with every address it resolves to, before each delivery (DNS answers
//! change, so a check here would prove nothing then).

use crate::AppState;
use crate::auth::Principal;
use crate::problem::{Kind, Problem};
use crate::routes::{bad_cursor, body, require};
use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use ebb_bus::Role;
use ebb_store::StoreError;
use ebb_store::webhooks::{
    self as store, DeliveryId, Enablement, Endpoint, EndpointId, EndpointPatch, NewEndpoint,
};
use ebb_webhooks::endpoint::{Description, EventFilter};
use ebb_webhooks::ssrf::WebhookUrl;
use serde::{Deserialize, Deserializer, Serialize};
use uuid::Uuid;

/// How long a rotated secret keeps signing unless the request says otherwise: a day.
const DEFAULT_GRACE_S: u32 = 24 * 3600;
/// The longest grace a rotation may give: a week.
const MAX_GRACE_S: u32 = 7 * 24 * 3600;
pub const DEFAULT_DELIVERY_PAGE: u32 = 50;
pub const MAX_DELIVERY_PAGE: u32 = 500;

/// An endpoint as the API shows it. `secret` is present only when it was just made.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WebhookEndpoint {
    pub id: Uuid,
    pub url: String,
    /// The event types it receives; absent for every type.
    pub event_types: Option<Vec<String>>,
    pub description: String,
    pub enabled: bool,
    /// `gone` (it answered 410), `failing` (a delivery exhausted its retries) or `manual`.
    pub disabled_reason: Option<String>,
    pub disabled_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// `whsec_…`: shown only in the answer that made it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

fn view(e: Endpoint, secret: Option<String>) -> WebhookEndpoint {
    WebhookEndpoint {
        id: e.id.0,
        url: e.url,
        event_types: e.event_types.names(),
        description: e.description,
        enabled: e.disabled.is_none(),
        disabled_reason: e.disabled.map(|d| d.reason.as_str().to_owned()),
        disabled_at: e.disabled.map(|d| d.at),
        created_at: e.created_at,
        updated_at: e.updated_at,
        secret,
    }
}

/// Webhooks hear every site's events: a key limited to some sites may not manage them.
fn org_wide_admin(p: &Principal) -> Result<(), Problem> {
    require(p, Role::Admin)?;
    if p.site_ids.is_some() {
        return Err(Problem::new(
            Kind::PermissionDenied,
            "webhooks hear every site's events: they need a key that reaches every site",
        ));
    }
    Ok(())
}

fn keyring(s: &AppState) -> Result<&ebb_webhooks::Keyring, Problem> {
    s.keyring.as_deref().ok_or_else(|| {
        Problem::new(
            Kind::Unavailable,
            "webhooks are off in this deployment: give the gateway the secrets keyring (EBB_SECRETS_KEY, the secrets_key setting)",
        )
    })
}

fn parse_url(s: &AppState, text: &str) -> Result<WebhookUrl, Problem> {
    let url = WebhookUrl::parse(text).map_err(|e| Problem::field("url", e.to_string()))?;
    let host = url.as_url().host();
    let ip = match host {
        Some(url::Host::Ipv4(ip)) => Some(std::net::IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Some(std::net::IpAddr::V6(ip)),
        _ => None,
    };
    if let Some(ip) = ip
        && let Err(class) = s.webhook_policy.check(ip)
    {
        return Err(Problem::field(
            "url",
            format!(
                "{ip} is {}, which this deployment does not let webhooks reach",
                class.describe()
            ),
        ));
    }
    Ok(url)
}

fn parse_types(types: Option<&[String]>) -> Result<EventFilter, Problem> {
    EventFilter::parse(types).map_err(|e| Problem::field("event_types", e.to_string()))
}

fn parse_description(text: &str) -> Result<Description, Problem> {
    Description::new(text).map_err(|e| Problem::field("description", e.to_string()))
}

fn parse_endpoint(id: &str) -> Result<EndpointId, Problem> {
    Uuid::parse_str(id)
        .map(EndpointId)
        .map_err(|_| Problem::field("id", "must be a UUID"))
}

fn not_found(e: StoreError) -> Problem {
    match e {
        StoreError::NotFound => Problem::new(Kind::NotFound, "webhook endpoint not found"),
        other => Problem::internal(other),
    }
}

async fn audit(s: &AppState, p: &Principal, action: &str, id: EndpointId, meta: serde_json::Value) {
    if let Err(e) = ebb_store::events::audit(
        &s.pool,
        p.org,
        "api_key",
        Some(p.key_id),
        action,
        Some(id.0),
        meta,
    )
    .await
    {
        tracing::error!(error = ?e, action, "writing an audit row");
    }
}

/// A new endpoint.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWebhook {
    /// Where deliveries are POSTed: http or https.
    url: String,
    /// The event types it receives (`ebb.curtailment.started`, …); absent for every type.
    #[serde(default)]
    event_types: Option<Vec<String>>,
    #[serde(default)]
    description: Option<String>,
}

#[utoipa::path(
    post,
    path = "/v1/webhooks",
    tag = "webhooks",
    summary = "Create a webhook endpoint; its signing secret is in this answer only (admin)",
    request_body = NewWebhook,
    responses((status = 201, description = "The endpoint and its secret", body = WebhookEndpoint), crate::openapi::Problems)
)]
pub async fn create(
    State(s): State<AppState>,
    p: Principal,
    b: Result<Json<NewWebhook>, JsonRejection>,
) -> Result<(StatusCode, Json<WebhookEndpoint>), Problem> {
    org_wide_admin(&p)?;
    let b = body(b)?;
    let new = NewEndpoint {
        url: parse_url(&s, &b.url)?,
        event_types: parse_types(b.event_types.as_deref())?,
        description: parse_description(b.description.as_deref().unwrap_or(""))?,
    };
    let ring = keyring(&s)?;
    let (endpoint, secret) = store::create_endpoint(&s.pool, ring, p.org, &new)
        .await
        .map_err(Problem::internal)?;
    audit(
        &s,
        &p,
        "webhook_created",
        endpoint.id,
        serde_json::json!({ "url": endpoint.url, "event_types": endpoint.event_types.names() }),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(view(endpoint, Some(secret.expose_whsec()))),
    ))
}

/// Every endpoint of the org.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WebhookList {
    pub items: Vec<WebhookEndpoint>,
}

#[utoipa::path(
    get,
    path = "/v1/webhooks",
    tag = "webhooks",
    summary = "The org's webhook endpoints (admin)",
    responses((status = 200, description = "The endpoints", body = WebhookList), crate::openapi::Problems)
)]
pub async fn list(State(s): State<AppState>, p: Principal) -> Result<Json<WebhookList>, Problem> {
    org_wide_admin(&p)?;
    let endpoints = store::list_endpoints(&s.pool, p.org)
        .await
        .map_err(Problem::internal)?;
    Ok(Json(WebhookList {
        items: endpoints.into_iter().map(|e| view(e, None)).collect(),
    }))
}

#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    summary = "One webhook endpoint (admin)",
    params(("id" = Uuid, Path, description = "The endpoint")),
    responses((status = 200, description = "The endpoint", body = WebhookEndpoint), crate::openapi::Problems)
)]
pub async fn get_one(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<WebhookEndpoint>, Problem> {
    org_wide_admin(&p)?;
    let id = parse_endpoint(&id)?;
    let e = store::get_endpoint(&s.pool, p.org, id)
        .await
        .map_err(not_found)?;
    Ok(Json(view(e, None)))
}

/// A field that may be absent (unchanged) or null (a value of its own).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// A change to an endpoint: at least one field.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookPatch {
    #[serde(default)]
    url: Option<String>,
    /// The types it receives; `null` for every type.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<String>>)]
    event_types: Option<Option<Vec<String>>>,
    #[serde(default)]
    description: Option<String>,
    /// `true` enables it again (whatever disabled it), `false` disables it.
    #[serde(default)]
    enabled: Option<bool>,
}

#[utoipa::path(
    patch,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    summary = "Change a webhook endpoint, or enable or disable it (admin)",
    params(("id" = Uuid, Path, description = "The endpoint")),
    request_body = WebhookPatch,
    responses((status = 200, description = "The endpoint as it now is", body = WebhookEndpoint), crate::openapi::Problems)
)]
pub async fn patch(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    b: Result<Json<WebhookPatch>, JsonRejection>,
) -> Result<Json<WebhookEndpoint>, Problem> {
    org_wide_admin(&p)?;
    let id = parse_endpoint(&id)?;
    let b = body(b)?;
    let patch = EndpointPatch {
        url: b.url.as_deref().map(|u| parse_url(&s, u)).transpose()?,
        event_types: b
            .event_types
            .as_ref()
            .map(|t| parse_types(t.as_deref()))
            .transpose()?,
        description: b
            .description
            .as_deref()
            .map(parse_description)
            .transpose()?,
        enablement: b.enabled.map(|on| {
            if on {
                Enablement::Enable
            } else {
                Enablement::Disable
            }
        }),
    };
    if patch.url.is_none()
        && patch.event_types.is_none()
        && patch.description.is_none()
        && patch.enablement.is_none()
    {
        return Err(Problem::new(
            Kind::InvalidArgument,
            "the request changes nothing: name at least one of url, event_types, description, enabled",
        ));
    }
    let e = store::update_endpoint(&s.pool, p.org, id, &patch)
        .await
        .map_err(not_found)?;
    audit(
        &s,
        &p,
        "webhook_updated",
        id,
        serde_json::json!({
            "url": b.url, "event_types": b.event_types, "description": b.description,
            "enabled": b.enabled,
        }),
    )
    .await;
    Ok(Json(view(e, None)))
}

#[utoipa::path(
    delete,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    summary = "Delete a webhook endpoint with its secrets and delivery log (admin)",
    params(("id" = Uuid, Path, description = "The endpoint")),
    responses((status = 204, description = "Deleted"), crate::openapi::Problems)
)]
pub async fn delete(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    org_wide_admin(&p)?;
    let id = parse_endpoint(&id)?;
    store::delete_endpoint(&s.pool, p.org, id)
        .await
        .map_err(not_found)?;
    audit(&s, &p, "webhook_deleted", id, serde_json::json!({})).await;
    Ok(StatusCode::NO_CONTENT)
}

/// How long the secret being replaced keeps signing.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rotation {
    /// Seconds the old secret stays valid (0 to 604800; default 86400).
    #[serde(default)]
    grace_s: Option<u32>,
}

/// A new signing secret.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RotatedSecret {
    /// `whsec_…`: shown only here.
    pub secret: String,
    /// Until then deliveries carry a signature by the old secret too.
    pub previous_valid_until: DateTime<Utc>,
}

#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/rotate-secret",
    tag = "webhooks",
    summary = "Make a new signing secret; the old one also signs for a grace window (admin)",
    params(("id" = Uuid, Path, description = "The endpoint")),
    request_body(content = Option<Rotation>),
    responses((status = 200, description = "The new secret", body = RotatedSecret), crate::openapi::Problems)
)]
pub async fn rotate(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    raw: axum::body::Bytes,
) -> Result<Json<RotatedSecret>, Problem> {
    org_wide_admin(&p)?;
    let id = parse_endpoint(&id)?;
    let rotation: Rotation = crate::routes::optional_body(&raw)?;
    let grace = rotation.grace_s.unwrap_or(DEFAULT_GRACE_S);
    if grace > MAX_GRACE_S {
        return Err(Problem::field(
            "grace_s",
            format!("must be between 0 and {MAX_GRACE_S}"),
        ));
    }
    let ring = keyring(&s)?;
    let secret = store::rotate_secret(
        &s.pool,
        ring,
        p.org,
        id,
        std::time::Duration::from_secs(u64::from(grace)),
    )
    .await
    .map_err(not_found)?;
    audit(
        &s,
        &p,
        "webhook_secret_rotated",
        id,
        serde_json::json!({ "grace_s": grace }),
    )
    .await;
    Ok(Json(RotatedSecret {
        secret: secret.expose_whsec(),
        previous_valid_until: Utc::now() + chrono::Duration::seconds(i64::from(grace)),
    }))
}

/// One delivery of the log: its last attempt.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeliveryView {
    pub id: Uuid,
    /// The `webhook-id`: the feed message's CloudEvent id.
    pub message_id: String,
    pub event_type: String,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    pub attempts: u32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    /// Phase timings of the last attempt, present only for phases that completed.
    pub connect_ms: Option<u64>,
    pub tls_ms: Option<u64>,
    pub first_byte_ms: Option<u64>,
    /// The receiver's answer, at most 4 KiB (lossy UTF-8).
    pub response_body: Option<String>,
    pub response_truncated: bool,
    pub response_length: Option<u64>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

fn delivery_view(d: store::Delivery) -> DeliveryView {
    let ms = |v: Option<std::time::Duration>| v.map(|d| d.as_millis() as u64);
    DeliveryView {
        id: d.id.0,
        message_id: d.message_id,
        event_type: d.event_type,
        state: d.state.as_str().to_owned(),
        attempts: d.attempts,
        next_attempt_at: d.next_attempt_at,
        last_attempt_at: d.last_attempt_at,
        last_status: d.last_status,
        last_error: d.last_error,
        connect_ms: ms(d.timings.connect),
        tls_ms: ms(d.timings.tls),
        first_byte_ms: ms(d.timings.first_byte),
        response_body: d
            .response_body
            .map(|b| String::from_utf8_lossy(&b).into_owned()),
        response_truncated: d.response_truncated,
        response_length: d.response_length,
        created_at: d.created_at,
        delivered_at: d.delivered_at,
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveryQuery {
    /// 1 to 500 (default 50).
    #[serde(default)]
    page_size: Option<u32>,
    /// The `next_cursor` of the previous page.
    #[serde(default)]
    cursor: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct DeliveryCursor {
    org: Uuid,
    endpoint: Uuid,
    before: i64,
}

/// One page of the delivery log, newest first.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeliveryPage {
    pub items: Vec<DeliveryView>,
    pub next_cursor: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}/deliveries",
    tag = "webhooks",
    summary = "An endpoint's deliveries, newest first, each with its last attempt (admin)",
    params(("id" = Uuid, Path, description = "The endpoint"), DeliveryQuery),
    responses((status = 200, description = "A page", body = DeliveryPage), crate::openapi::Problems)
)]
pub async fn deliveries(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    q: Result<Query<DeliveryQuery>, QueryRejection>,
) -> Result<Json<DeliveryPage>, Problem> {
    org_wide_admin(&p)?;
    let id = parse_endpoint(&id)?;
    let q = crate::routes::query(q)?;
    let size = q.page_size.unwrap_or(DEFAULT_DELIVERY_PAGE);
    if !(1..=MAX_DELIVERY_PAGE).contains(&size) {
        return Err(Problem::field(
            "page_size",
            format!("must be between 1 and {MAX_DELIVERY_PAGE}"),
        ));
    }
    let before = match &q.cursor {
        None => None,
        Some(c) => Some(
            crate::cursor::decode::<DeliveryCursor>(c)
                .filter(|cur| cur.org == p.org.0 && cur.endpoint == id.0)
                .ok_or_else(bad_cursor)?
                .before,
        ),
    };
    // 404 for another org's endpoint, rather than an empty log.
    store::get_endpoint(&s.pool, p.org, id)
        .await
        .map_err(not_found)?;
    let page = store::list_deliveries(&s.pool, p.org, id, before, i64::from(size))
        .await
        .map_err(Problem::internal)?;
    Ok(Json(DeliveryPage {
        items: page.rows.into_iter().map(delivery_view).collect(),
        next_cursor: page.next.map(|before| {
            crate::cursor::encode(&DeliveryCursor {
                org: p.org.0,
                endpoint: id.0,
                before,
            })
        }),
    }))
}

#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/deliveries/{delivery}/redeliver",
    tag = "webhooks",
    summary = "Send a delivered or failed delivery again, after the endpoint's pending ones (admin)",
    params(
        ("id" = Uuid, Path, description = "The endpoint"),
        ("delivery" = Uuid, Path, description = "The delivery")
    ),
    responses((status = 202, description = "Queued again", body = DeliveryView), crate::openapi::Problems)
)]
pub async fn redeliver(
    State(s): State<AppState>,
    p: Principal,
    Path((id, delivery)): Path<(String, String)>,
) -> Result<(StatusCode, Json<DeliveryView>), Problem> {
    org_wide_admin(&p)?;
    let id = parse_endpoint(&id)?;
    let delivery = Uuid::parse_str(&delivery)
        .map(DeliveryId)
        .map_err(|_| Problem::field("delivery", "must be a UUID"))?;
    let d = store::redeliver(&s.pool, p.org, id, delivery)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => Problem::new(Kind::NotFound, "delivery not found"),
            StoreError::RaceLost(_) => Problem::new(
                Kind::Conflict,
                "the delivery is still pending: it will be sent without being asked again",
            ),
            other => Problem::internal(other),
        })?;
    audit(
        &s,
        &p,
        "webhook_redelivered",
        id,
        serde_json::json!({ "delivery": delivery.0 }),
    )
    .await;
    Ok((StatusCode::ACCEPTED, Json(delivery_view(d))))
}
