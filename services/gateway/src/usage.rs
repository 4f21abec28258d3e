//! Settlement endpoints (issue 8, ADR 0012): `PUT /v1/prices` sets an org's prices per
//! settlement window (admin, a key that reaches every site: prices apply to every site), from
//! CSV or JSON, all or nothing, every bad line and field named; `GET /v1/usage` reads what the
//! rater wrote to `rated_usage` (viewer), grouped by site or by event, and a key limited to some
//! sites sees only their rows.

use crate::AppState;
use crate::auth::Principal;
use crate::problem::{FieldError, Kind, Problem};
use crate::routes::require;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use chrono::{DateTime, TimeDelta, Utc};
use ebb_bus::Role;
use ebb_rating::{Price, WindowLen};
use ebb_store::rating::{self as store, Grouping};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use uuid::Uuid;

/// The most prices one request may set (a year of quarter-hours is 35,040).
pub const MAX_PRICES: usize = 50_000;
/// The most problems one answer lists; the detail says how many there were.
const MAX_ERRORS: usize = 50;
/// The longest span one usage read may cover.
pub const MAX_USAGE_DAYS: i64 = 92;

/// The JSON form of `PUT /v1/prices`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PricesBody {
    pub prices: Vec<PriceEntry>,
}

/// One window's price.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceEntry {
    /// RFC 3339; the start of one of the org's settlement windows (a whole quarter-hour or
    /// hour, as the org settles).
    #[schema(value_type = String, example = "2026-01-01T10:00:00Z")]
    pub window_start: Value,
    /// A decimal string in the org's currency per MWh, at most 6 decimal places; may be
    /// negative.
    #[schema(value_type = String, example = "42.50")]
    pub price_per_mwh: Value,
}

/// What `PUT /v1/prices` set.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PricesSet {
    /// Prices written (new or replaced).
    pub prices: usize,
    /// The org's currency, which the prices are in.
    pub currency: String,
    pub first_window_start: DateTime<Utc>,
    pub last_window_start: DateTime<Utc>,
}

/// A price as read from one line or entry, before the whole request is known to be valid.
struct Parsed {
    /// `line 3` or `prices[2]`: where problems point.
    at: String,
    window_start: Option<DateTime<Utc>>,
    price: Option<Price>,
}

fn problem_at(errors: &mut Vec<FieldError>, field: String, message: impl Into<String>) {
    errors.push(FieldError {
        field,
        message: message.into(),
    });
}

fn parse_window_start(
    text: &str,
    len: WindowLen,
    field: String,
    errors: &mut Vec<FieldError>,
) -> Option<DateTime<Utc>> {
    let Ok(t) = DateTime::parse_from_rfc3339(text) else {
        problem_at(
            errors,
            field,
            format!("{text:?} is not an RFC 3339 timestamp such as 2026-01-01T10:00:00Z"),
        );
        return None;
    };
    let t = t.with_timezone(&Utc);
    if !len.is_edge(t) {
        problem_at(
            errors,
            field,
            format!(
                "{text} does not start one of the org's {}-minute settlement windows",
                len.minutes()
            ),
        );
        return None;
    }
    Some(t)
}

fn parse_price(text: &str, field: String, errors: &mut Vec<FieldError>) -> Option<Price> {
    match Price::parse(text) {
        Ok(p) => Some(p),
        Err(e) => {
            problem_at(errors, field, format!("{text:?} {e}"));
            None
        }
    }
}

/// Reads `window_start,price_per_mwh` lines; a first line naming the columns is skipped, and so
/// are blank lines.
fn parse_csv(body: &[u8], len: WindowLen, errors: &mut Vec<FieldError>) -> Vec<Parsed> {
    let Ok(text) = std::str::from_utf8(body) else {
        problem_at(errors, "body".into(), "is not UTF-8 text");
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        let n = i + 1;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if out.is_empty() && fields == ["window_start", "price_per_mwh"] {
            continue;
        }
        let at = format!("line {n}");
        if fields.len() != 2 {
            problem_at(
                errors,
                at,
                format!(
                    "has {} fields; each line is window_start,price_per_mwh",
                    fields.len()
                ),
            );
            out.push(Parsed {
                at: format!("line {n}"),
                window_start: None,
                price: None,
            });
            continue;
        }
        let window_start =
            parse_window_start(fields[0], len, format!("{at}: window_start"), errors);
        let price = parse_price(fields[1], format!("{at}: price_per_mwh"), errors);
        out.push(Parsed {
            at,
            window_start,
            price,
        });
    }
    out
}

fn parse_json(body: &[u8], len: WindowLen, errors: &mut Vec<FieldError>) -> Vec<Parsed> {
    let parsed: PricesBody = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => {
            problem_at(
                errors,
                "body".into(),
                format!("is not a prices document: {e}"),
            );
            return Vec::new();
        }
    };
    let text = |v: &Value, field: &str, errors: &mut Vec<FieldError>, what: &str| match v {
        Value::String(s) => Some(s.clone()),
        other => {
            problem_at(
                errors,
                field.to_owned(),
                format!("must be a string ({what}), not {other}"),
            );
            None
        }
    };
    parsed
        .prices
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let at = format!("prices[{i}]");
            let ws_field = format!("{at}.window_start");
            let price_field = format!("{at}.price_per_mwh");
            let window_start = text(&e.window_start, &ws_field, errors, "RFC 3339")
                .and_then(|s| parse_window_start(&s, len, ws_field, errors));
            let price = text(
                &e.price_per_mwh,
                &price_field,
                errors,
                "a decimal such as \"42.50\": a JSON number could be rounded",
            )
            .and_then(|s| parse_price(&s, price_field, errors));
            Parsed {
                at,
                window_start,
                price,
            }
        })
        .collect()
}

/// The content type's media type, without parameters, lowercased.
fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// The problem listing `errors` (at most [`MAX_ERRORS`] of them), its detail naming the first.
fn invalid(mut errors: Vec<FieldError>) -> Problem {
    let total = errors.len();
    errors.truncate(MAX_ERRORS);
    let first = &errors[0];
    let more = if total > 1 {
        format!(" (and {} more problems)", total - 1)
    } else {
        String::new()
    };
    Problem {
        errors: errors.clone(),
        ..Problem::new(
            Kind::InvalidArgument,
            format!(
                "{}: {}{more}; nothing was written",
                first.field, first.message
            ),
        )
    }
}

#[utoipa::path(
    put,
    path = "/v1/prices",
    tag = "usage",
    summary = "Set the org's prices per settlement window, in its currency per MWh (admin)",
    description = "As `text/csv` (lines `window_start,price_per_mwh`, an optional header line) \
        or JSON. A price holds from its window until the next price, for at most an hour. All \
        or nothing: any bad line or field fails the request, naming each, and writes nothing.",
    request_body(
        content(
            (PricesBody = "application/json"),
            (String = "text/csv", example = json!("window_start,price_per_mwh\n2026-01-01T10:00:00Z,42.50\n"))
        ),
        description = "The prices"
    ),
    responses((status = 200, description = "The prices were set", body = PricesSet), crate::openapi::Problems)
)]
pub async fn put_prices(
    p: Principal,
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<PricesSet>, Problem> {
    require(&p, Role::Admin)?;
    if p.site_ids.is_some() {
        return Err(Problem::new(
            Kind::PermissionDenied,
            "prices apply to every site: setting them needs a key that reaches every site",
        ));
    }
    let terms = store::org_terms(&s.pool, p.org)
        .await
        .map_err(Problem::internal)?;
    let len = WindowLen::from_minutes(terms.window_minutes).ok_or_else(|| {
        Problem::internal(format!(
            "org {} settles in {}-minute windows",
            p.org, terms.window_minutes
        ))
    })?;
    let mut errors = Vec::new();
    let parsed = match media_type(&headers).as_str() {
        "text/csv" => parse_csv(&body, len, &mut errors),
        "application/json" => parse_json(&body, len, &mut errors),
        other => {
            problem_at(
                &mut errors,
                "content-type".into(),
                format!("must be text/csv or application/json, not {other:?}"),
            );
            return Err(invalid(errors));
        }
    };
    if parsed.is_empty() && errors.is_empty() {
        problem_at(&mut errors, "body".into(), "sets no price");
    }
    if parsed.len() > MAX_PRICES {
        problem_at(
            &mut errors,
            "body".into(),
            format!(
                "sets {} prices; at most {MAX_PRICES} per request",
                parsed.len()
            ),
        );
    }
    let mut seen: BTreeMap<DateTime<Utc>, &str> = BTreeMap::new();
    let mut prices = Vec::with_capacity(parsed.len());
    for entry in &parsed {
        let (Some(at), Some(price)) = (entry.window_start, entry.price) else {
            continue;
        };
        if let Some(first) = seen.insert(at, &entry.at) {
            let field = if entry.at.starts_with("line") {
                format!("{}: window_start", entry.at)
            } else {
                format!("{}.window_start", entry.at)
            };
            problem_at(
                &mut errors,
                field,
                format!("{at} is priced twice (also in {first})"),
            );
            continue;
        }
        prices.push((at, price.micros_per_mwh()));
    }
    if !errors.is_empty() {
        return Err(invalid(errors));
    }
    prices.sort_unstable();
    let (first, last) = (prices[0].0, prices[prices.len() - 1].0);
    let (org, key, n) = (p.org, p.key_id, prices.len());
    ebb_store::tx::with_tx(&s.pool, ebb_store::tx::DEFAULT_ATTEMPTS, move |conn| {
        let prices = prices.clone();
        Box::pin(async move {
            store::upsert_prices(&mut *conn, org, &prices).await?;
            ebb_store::events::audit(
                &mut *conn,
                org,
                "api_key",
                Some(key),
                "prices_set",
                None,
                serde_json::json!({ "prices": n, "first_window_start": first, "last_window_start": last }),
            )
            .await
        })
    })
    .await
    .map_err(Problem::internal)?;
    Ok(Json(PricesSet {
        prices: n,
        currency: terms.currency,
        first_window_start: first,
        last_window_start: last,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// RFC 3339: rows whose window starts at or after this (default: 24 hours before `to`).
    #[serde(default)]
    from: Option<String>,
    /// RFC 3339: rows whose window starts before this (default: now).
    #[serde(default)]
    to: Option<String>,
    /// `site` (summed over events) or `event` (summed over sites); absent: one row per site,
    /// event and window, as rated.
    #[serde(default)]
    group_by: Option<String>,
}

/// One row of rated usage.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsageRow {
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    /// The site's code; null when grouped by event.
    pub site: Option<String>,
    /// Null when grouped by site.
    pub event_id: Option<Uuid>,
    /// Six decimal places at most.
    pub curtailed_kwh: f64,
    /// Integer micro-units of `currency` (10⁻⁶).
    pub amount_micros: i64,
    pub currency: String,
    /// The window had not closed, or a target was still confirmed in it, when it was rated: a
    /// later rating may change it.
    pub provisional: bool,
}

/// Rated usage over a span.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Usage {
    pub rows: Vec<UsageRow>,
}

fn instant(field: &str, v: Option<&str>) -> Result<Option<DateTime<Utc>>, Problem> {
    v.map(|s| {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| {
                Problem::field(
                    field,
                    format!("{s:?} is not an RFC 3339 timestamp such as 2026-01-01T10:00:00Z"),
                )
            })
    })
    .transpose()
}

#[utoipa::path(
    get,
    path = "/v1/usage",
    tag = "usage",
    summary = "Rated curtailed energy and its amount per settlement window (viewer)",
    params(UsageQuery),
    responses((status = 200, description = "The rated rows, by window", body = Usage), crate::openapi::Problems)
)]
pub async fn get_usage(
    p: Principal,
    State(s): State<AppState>,
    q: Result<Query<UsageQuery>, QueryRejection>,
) -> Result<Json<Usage>, Problem> {
    require(&p, Role::Viewer)?;
    let q = crate::routes::query(q)?;
    let grouping = match q.group_by.as_deref() {
        None => Grouping::SiteAndEvent,
        Some("site") => Grouping::Site,
        Some("event") => Grouping::Event,
        Some(other) => {
            return Err(Problem::field(
                "group_by",
                format!("must be site or event, not {other:?}"),
            ));
        }
    };
    let to = instant("to", q.to.as_deref())?.unwrap_or_else(Utc::now);
    let from = instant("from", q.from.as_deref())?.unwrap_or(to - TimeDelta::hours(24));
    if from >= to {
        return Err(Problem::field("from", "must be before to"));
    }
    if to - from > TimeDelta::days(MAX_USAGE_DAYS) {
        return Err(Problem::field(
            "to",
            format!("a read covers at most {MAX_USAGE_DAYS} days"),
        ));
    }
    let rows = store::usage(&s.pool, p.org, from, to, p.site_ids.as_deref(), grouping)
        .await
        .map_err(Problem::internal)?;
    Ok(Json(Usage {
        rows: rows
            .into_iter()
            .map(|r| UsageRow {
                window_start: r.window_start,
                window_end: r.window_end,
                site: r.site,
                event_id: r.event.map(|e| e.0),
                // Exact: the integer is below 2⁵³ and the division is correctly rounded, so
                // the number printed is the six-decimal figure stored.
                curtailed_kwh: r.kwh_micros as f64 / 1e6,
                amount_micros: r.amount_micros,
                currency: r.currency,
                provisional: r.provisional,
            })
            .collect(),
    }))
}
