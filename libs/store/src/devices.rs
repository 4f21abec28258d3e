//! The operator's view of the fleet (issue 9): devices with the state derived from their latest
//! telemetry and their current curtailment derived from events and targets, a page at a time by
//! id; the `maintenance` flag, set with one audited write; and the per-site summary.
//!
//! A device's state is derived in one place ([`DERIVED`]), so a filter on it applies after the
//! derivation, exactly as the listing shows it.

use crate::error::StoreError;
use chrono::{DateTime, Utc};
use ebb_domain::{DeviceId, EventId, OrgId, RackId, SiteId};
use sqlx::{PgExecutor, Row};
use uuid::Uuid;

/// The states a device is listed in, derived from its flag and latest sample.
pub const STATES: [&str; 5] = [
    "hashing",
    "sleeping",
    "unreachable",
    "unknown",
    "maintenance",
];

/// `d` a device, `ds` its `device_state` (LEFT JOIN): the derived state, the same rules as the
/// fleet gauges (`crate::gauges`).
const DERIVED: &str = "CASE WHEN d.maintenance THEN 'maintenance'
                           WHEN ds.device_id IS NULL THEN 'unknown'
                           WHEN NOT ds.reachable THEN 'unreachable'
                           WHEN ds.hashrate_ths > 0 THEN 'hashing'
                           ELSE 'sleeping' END";

/// Target states that still hold a device (the complement of the exclusivity index's terminal set).
const HELD: &str = "('failed', 'restored', 'restore_failed')";

/// One device as the API lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceView {
    pub id: DeviceId,
    pub site_id: SiteId,
    pub site: String,
    pub rack_id: Option<RackId>,
    pub address: String,
    pub make: String,
    pub model: String,
    pub firmware: Option<String>,
    pub maintenance: bool,
    pub state: String,
    pub power_w: Option<f64>,
    pub hashrate_ths: Option<f64>,
    pub sampled_at: Option<DateTime<Utc>>,
    /// The non-terminal event holding it, and its target's state there.
    pub curtailment: Option<(EventId, String)>,
}

/// What a listing keeps. Every filter is optional; `sites` is the caller's reach (`None`: the
/// whole org).
#[derive(Clone, Debug, Default)]
pub struct DeviceFilter {
    pub sites: Option<Vec<SiteId>>,
    pub rack: Option<RackId>,
    pub state: Option<String>,
    pub make: Option<String>,
}

fn select(filter_sql: &str) -> String {
    format!(
        "SELECT * FROM (
           SELECT d.id, d.site_id, s.code AS site, d.rack_id, d.address, d.make, d.model,
                  d.firmware, d.maintenance, {DERIVED} AS state, ds.power_w, ds.hashrate_ths,
                  ds.sampled_at, t.event_id, t.state AS target_state, d.org_id
           FROM device d
           JOIN site s ON s.id = d.site_id
           LEFT JOIN device_state ds ON ds.device_id = d.id
           LEFT JOIN curtailment_target t ON t.device_id = d.id AND t.state NOT IN {HELD}
         ) v
         WHERE {filter_sql}"
    )
}

fn view(r: &sqlx::postgres::PgRow) -> DeviceView {
    let event: Option<Uuid> = r.get("event_id");
    DeviceView {
        id: DeviceId(r.get("id")),
        site_id: SiteId(r.get("site_id")),
        site: r.get("site"),
        rack_id: r.get::<Option<Uuid>, _>("rack_id").map(RackId),
        address: r.get("address"),
        make: r.get("make"),
        model: r.get("model"),
        firmware: r.get("firmware"),
        maintenance: r.get("maintenance"),
        state: r.get("state"),
        power_w: r.get("power_w"),
        hashrate_ths: r.get("hashrate_ths"),
        sampled_at: r.get("sampled_at"),
        curtailment: event.map(|e| (EventId(e), r.get("target_state"))),
    }
}

/// Devices of `org` matching `filter` with an id after `after`, in id order, at most `limit`.
pub async fn list(
    db: impl PgExecutor<'_>,
    org: OrgId,
    filter: &DeviceFilter,
    after: Option<DeviceId>,
    limit: i64,
) -> Result<Vec<DeviceView>, StoreError> {
    let sites: Option<Vec<Uuid>> = filter
        .sites
        .as_ref()
        .map(|s| s.iter().map(|x| x.0).collect());
    let sql = select(
        "v.org_id = $1
           AND ($2::uuid[] IS NULL OR v.site_id = ANY($2))
           AND ($3::uuid IS NULL OR v.rack_id = $3)
           AND ($4::text IS NULL OR v.state = $4)
           AND ($5::text IS NULL OR v.make = $5)
           AND ($6::uuid IS NULL OR v.id > $6)
         ORDER BY v.id
         LIMIT $7",
    );
    let rows = sqlx::query(&sql)
        .bind(org.0)
        .bind(sites)
        .bind(filter.rack.map(|r| r.0))
        .bind(filter.state.as_deref())
        .bind(filter.make.as_deref())
        .bind(after.map(|a| a.0))
        .bind(limit)
        .fetch_all(db)
        .await?;
    Ok(rows.iter().map(view).collect())
}

/// One device of `org`.
pub async fn get(
    db: impl PgExecutor<'_>,
    org: OrgId,
    id: DeviceId,
) -> Result<Option<DeviceView>, StoreError> {
    let sql = select("v.org_id = $1 AND v.id = $2");
    let row = sqlx::query(&sql)
        .bind(org.0)
        .bind(id.0)
        .fetch_optional(db)
        .await?;
    Ok(row.as_ref().map(view))
}

/// Sets a device's `maintenance` flag, with its audit row, in one transaction. `None` when the
/// device is not `org`'s; `Some(false)` when the flag already had that value (nothing written,
/// no audit row).
pub async fn set_maintenance(
    conn: &mut sqlx::PgConnection,
    org: OrgId,
    id: DeviceId,
    maintenance: bool,
    actor_kind: &str,
    actor_id: Option<Uuid>,
) -> Result<Option<bool>, StoreError> {
    let before: Option<bool> = sqlx::query_scalar(
        "SELECT maintenance FROM device WHERE org_id = $1 AND id = $2 FOR UPDATE",
    )
    .bind(org.0)
    .bind(id.0)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(before) = before else {
        return Ok(None);
    };
    if before == maintenance {
        return Ok(Some(false));
    }
    sqlx::query(
        "UPDATE device SET maintenance = $3, updated_at = now() WHERE org_id = $1 AND id = $2",
    )
    .bind(org.0)
    .bind(id.0)
    .bind(maintenance)
    .execute(&mut *conn)
    .await?;
    crate::events::audit(
        &mut *conn,
        org,
        actor_kind,
        actor_id,
        "device_updated",
        Some(id.0),
        serde_json::json!({ "changed": { "maintenance": { "from": before, "to": maintenance } } }),
    )
    .await?;
    Ok(Some(true))
}

/// One site's part of the fleet summary.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SiteSummary {
    pub site_id: SiteId,
    pub code: String,
    pub name: String,
    /// Power drawn by its reachable miners, from their latest samples.
    pub power_w: f64,
    pub hashrate_ths: f64,
    /// Miners by derived state, every state of [`STATES`] present.
    pub miners: Vec<(String, i64)>,
    /// Miners held by a non-terminal curtailment.
    pub curtailed: i64,
}

/// Power, hashrate and miners by state for each site of `org` (within `sites` when given), in
/// one statement.
pub async fn summary(
    db: impl PgExecutor<'_>,
    org: OrgId,
    sites: Option<&[SiteId]>,
) -> Result<Vec<SiteSummary>, StoreError> {
    let sites: Option<Vec<Uuid>> = sites.map(|s| s.iter().map(|x| x.0).collect());
    let sql = format!(
        "SELECT s.id, s.code, s.name,
                coalesce(sum(ds.power_w) FILTER (WHERE ds.reachable), 0)::float8 AS power_w,
                coalesce(sum(ds.hashrate_ths) FILTER (WHERE ds.reachable), 0)::float8 AS hashrate_ths,
                count(d.id) FILTER (WHERE ({DERIVED}) = 'hashing') AS hashing,
                count(d.id) FILTER (WHERE ({DERIVED}) = 'sleeping') AS sleeping,
                count(d.id) FILTER (WHERE ({DERIVED}) = 'unreachable') AS unreachable,
                count(d.id) FILTER (WHERE d.id IS NOT NULL AND ({DERIVED}) = 'unknown') AS unknown,
                count(d.id) FILTER (WHERE ({DERIVED}) = 'maintenance') AS maintenance,
                count(t.device_id) AS curtailed
         FROM site s
         LEFT JOIN device d ON d.site_id = s.id
         LEFT JOIN device_state ds ON ds.device_id = d.id
         LEFT JOIN curtailment_target t ON t.device_id = d.id AND t.state NOT IN {HELD}
         WHERE s.org_id = $1 AND ($2::uuid[] IS NULL OR s.id = ANY($2))
         GROUP BY s.id, s.code, s.name
         ORDER BY s.code"
    );
    let rows = sqlx::query(&sql)
        .bind(org.0)
        .bind(sites)
        .fetch_all(db)
        .await?;
    Ok(rows
        .iter()
        .map(|r| SiteSummary {
            site_id: SiteId(r.get("id")),
            code: r.get("code"),
            name: r.get("name"),
            power_w: r.get("power_w"),
            hashrate_ths: r.get("hashrate_ths"),
            miners: STATES
                .iter()
                .map(|s| ((*s).to_owned(), r.get::<i64, _>(*s)))
                .collect(),
            curtailed: r.get("curtailed"),
        })
        .collect())
}
