//! Orgs, API keys, sites, devices and the latest telemetry per device.

use crate::error::StoreError;
use chrono::{DateTime, Utc};
use ebb_domain::confirm::Sample;
use ebb_domain::selection::Candidate;
use ebb_domain::{Capabilities, DeviceId, OrgId, RackId, SiteCode, SiteId};
use sqlx::{PgExecutor, PgPool, Row};
use uuid::Uuid;

pub async fn create_org(db: impl PgExecutor<'_>, name: &str) -> Result<OrgId, StoreError> {
    let id = OrgId::new();
    sqlx::query("INSERT INTO org (id, name) VALUES ($1, $2)")
        .bind(id.0)
        .bind(name)
        .execute(db)
        .await?;
    Ok(id)
}

/// A device to add to a site, or to update there by address.
#[derive(Clone, Debug, PartialEq)]
pub struct NewDevice {
    pub address: String,
    pub make: String,
    pub model: String,
    pub firmware: Option<String>,
    pub capabilities: Capabilities,
    pub nominal_power_w: Option<f64>,
}

/// A device as its site's agent needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceRow {
    pub device_id: DeviceId,
    pub address: String,
    pub make: String,
    pub model: String,
    pub firmware: Option<String>,
    pub capabilities: Capabilities,
}

/// One telemetry sample to ingest: values as the agent reported them.
#[derive(Clone, Debug, PartialEq)]
pub struct TelemetryRow {
    pub device_id: DeviceId,
    pub reachable: bool,
    pub power_w: Option<f64>,
    pub hashrate_ths: Option<f64>,
    /// Unix milliseconds.
    pub sampled_at_ms: i64,
}

/// The devices of `org` in maintenance (a partial index keeps this a short read however big
/// the fleet).
pub async fn in_maintenance(
    db: impl PgExecutor<'_>,
    org: OrgId,
) -> Result<std::collections::HashSet<DeviceId>, StoreError> {
    let ids: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM device WHERE org_id = $1 AND maintenance")
            .bind(org.0)
            .fetch_all(db)
            .await?;
    Ok(ids.into_iter().map(DeviceId).collect())
}

/// An org's settings the planner needs.
#[derive(Clone, Debug)]
pub struct OrgSettings {
    pub default_max_duration_s: u32,
}

pub async fn org_settings(db: impl PgExecutor<'_>, org: OrgId) -> Result<OrgSettings, StoreError> {
    let row = sqlx::query("SELECT default_max_duration_s FROM org WHERE id = $1")
        .bind(org.0)
        .fetch_optional(db)
        .await?
        .ok_or(StoreError::NotFound)?;
    Ok(OrgSettings {
        default_max_duration_s: row.get::<i32, _>(0) as u32,
    })
}

/// A site row.
#[derive(Clone, Debug, PartialEq)]
pub struct Site {
    pub id: SiteId,
    pub org_id: OrgId,
    pub code: SiteCode,
    pub name: String,
    pub ramp_limit_kw_per_min: Option<f64>,
}

pub async fn create_site(
    db: impl PgExecutor<'_>,
    org: OrgId,
    code: &SiteCode,
    name: &str,
    ramp_limit_kw_per_min: Option<f64>,
) -> Result<SiteId, StoreError> {
    let id = SiteId::new();
    sqlx::query("INSERT INTO site (id, org_id, code, name, ramp_limit_kw_per_min) VALUES ($1, $2, $3, $4, $5)")
        .bind(id.0)
        .bind(org.0)
        .bind(code.as_str())
        .bind(name)
        .bind(ramp_limit_kw_per_min)
        .execute(db)
        .await
        .map_err(StoreError::classify)?;
    Ok(id)
}

fn site_from_row(r: &sqlx::postgres::PgRow) -> Result<Site, StoreError> {
    let code: String = r.get("code");
    Ok(Site {
        id: SiteId(r.get("id")),
        org_id: OrgId(r.get("org_id")),
        code: SiteCode::parse(&code).map_err(|e| StoreError::Encode(e.to_string()))?,
        name: r.get("name"),
        ramp_limit_kw_per_min: r.get("ramp_limit_kw_per_min"),
    })
}

pub async fn sites(db: impl PgExecutor<'_>, org: OrgId) -> Result<Vec<Site>, StoreError> {
    let rows = sqlx::query("SELECT id, org_id, code, name, ramp_limit_kw_per_min FROM site WHERE org_id = $1 ORDER BY code")
        .bind(org.0)
        .fetch_all(db)
        .await?;
    rows.iter().map(site_from_row).collect()
}

/// Every site of every org: the reconciler maps site ids to subject tokens with this.
pub async fn all_sites(db: impl PgExecutor<'_>) -> Result<Vec<Site>, StoreError> {
    let rows =
        sqlx::query("SELECT id, org_id, code, name, ramp_limit_kw_per_min FROM site ORDER BY code")
            .fetch_all(db)
            .await?;
    rows.iter().map(site_from_row).collect()
}

pub async fn site_by_code(
    db: impl PgExecutor<'_>,
    code: &SiteCode,
) -> Result<Option<Site>, StoreError> {
    let row = sqlx::query(
        "SELECT id, org_id, code, name, ramp_limit_kw_per_min FROM site WHERE code = $1",
    )
    .bind(code.as_str())
    .fetch_optional(db)
    .await?;
    row.as_ref().map(site_from_row).transpose()
}

/// Creates a rack in a site. Rack names are unique within their site.
pub async fn create_rack(
    db: impl PgExecutor<'_>,
    site: &Site,
    name: &str,
) -> Result<RackId, StoreError> {
    let id = RackId::new();
    sqlx::query("INSERT INTO rack (id, org_id, site_id, name) VALUES ($1, $2, $3, $4)")
        .bind(id.0)
        .bind(site.org_id.0)
        .bind(site.id.0)
        .bind(name)
        .execute(db)
        .await
        .map_err(StoreError::classify)?;
    Ok(id)
}

/// Puts devices in a rack, one statement for the list. Only devices of the rack's own site move;
/// returns how many did.
pub async fn place_in_rack(
    db: impl PgExecutor<'_>,
    org: OrgId,
    rack: RackId,
    devices: &[DeviceId],
) -> Result<u64, StoreError> {
    let ids: Vec<Uuid> = devices.iter().map(|d| d.0).collect();
    let r = sqlx::query(
        "UPDATE device d SET rack_id = r.id, updated_at = now()
         FROM rack r
         WHERE r.id = $2 AND r.org_id = $1 AND d.org_id = $1 AND d.site_id = r.site_id
           AND d.id = ANY($3)",
    )
    .bind(org.0)
    .bind(rack.0)
    .bind(&ids)
    .execute(db)
    .await?;
    Ok(r.rows_affected())
}

/// Adds or updates a site's devices by address, one statement for the whole list. Returns how many
/// rows were written.
pub async fn upsert_devices(
    db: impl PgExecutor<'_>,
    site: &Site,
    devices: &[NewDevice],
) -> Result<u64, StoreError> {
    let ids: Vec<Uuid> = devices.iter().map(|_| Uuid::now_v7()).collect();
    let addr: Vec<&str> = devices.iter().map(|d| d.address.as_str()).collect();
    let make: Vec<&str> = devices.iter().map(|d| d.make.as_str()).collect();
    let model: Vec<&str> = devices.iter().map(|d| d.model.as_str()).collect();
    let fw: Vec<Option<&str>> = devices.iter().map(|d| d.firmware.as_deref()).collect();
    let nominal: Vec<Option<f64>> = devices.iter().map(|d| d.nominal_power_w).collect();
    let full: Vec<bool> = devices
        .iter()
        .map(|d| d.capabilities.curtail_full)
        .collect();
    let eff: Vec<bool> = devices
        .iter()
        .map(|d| d.capabilities.curtail_efficiency)
        .collect();
    let pt: Vec<bool> = devices
        .iter()
        .map(|d| d.capabilities.power_target)
        .collect();
    let r = sqlx::query(
        "INSERT INTO device (id, org_id, site_id, address, make, model, firmware, nominal_power_w,
                             curtail_full, curtail_efficiency, power_target)
         SELECT u.id, $1, $2, u.address, u.make, u.model, u.firmware, u.nominal, u.cap_full, u.cap_eff, u.cap_pt
         FROM unnest($3::uuid[], $4::text[], $5::text[], $6::text[], $7::text[], $8::float8[],
                     $9::bool[], $10::bool[], $11::bool[])
              AS u(id, address, make, model, firmware, nominal, cap_full, cap_eff, cap_pt)
         ON CONFLICT (site_id, address) DO UPDATE SET
             make = excluded.make, model = excluded.model, firmware = excluded.firmware,
             nominal_power_w = excluded.nominal_power_w, curtail_full = excluded.curtail_full,
             curtail_efficiency = excluded.curtail_efficiency, power_target = excluded.power_target,
             updated_at = now()",
    )
    .bind(site.org_id.0)
    .bind(site.id.0)
    .bind(&ids)
    .bind(&addr)
    .bind(&make)
    .bind(&model)
    .bind(&fw)
    .bind(&nominal)
    .bind(&full)
    .bind(&eff)
    .bind(&pt)
    .execute(db)
    .await?;
    Ok(r.rows_affected())
}

/// One page of a site's devices in address order: those after `after` (an address), at most
/// `limit`. Query: the agent's inventory; served by the `(site_id, address)` unique index.
pub async fn inventory_page(
    db: impl PgExecutor<'_>,
    site: SiteId,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<DeviceRow>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, address, make, model, firmware, curtail_full, curtail_efficiency, power_target
         FROM device WHERE site_id = $1 AND ($2::text IS NULL OR address > $2)
         ORDER BY address LIMIT $3",
    )
    .bind(site.0)
    .bind(after)
    .bind(i64::from(limit))
    .fetch_all(db)
    .await?;
    Ok(rows.iter().map(device_row).collect())
}

fn device_row(r: &sqlx::postgres::PgRow) -> DeviceRow {
    DeviceRow {
        device_id: DeviceId(r.get("id")),
        address: r.get("address"),
        make: r.get("make"),
        model: r.get("model"),
        firmware: r.get("firmware"),
        capabilities: Capabilities {
            curtail_full: r.get("curtail_full"),
            curtail_efficiency: r.get("curtail_efficiency"),
            power_target: r.get("power_target"),
        },
    }
}

/// Every device of a site, in address order (tests and `ebb dev`; agents page through
/// [`inventory_page`]).
pub async fn inventory(
    db: impl PgExecutor<'_>,
    site: SiteId,
) -> Result<Vec<DeviceRow>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, address, make, model, firmware, curtail_full, curtail_efficiency, power_target
         FROM device WHERE site_id = $1 ORDER BY address",
    )
    .bind(site.0)
    .fetch_all(db)
    .await?;
    Ok(rows.iter().map(device_row).collect())
}

/// Writes one telemetry batch into `device_state` in one statement. A sample older than the stored
/// one is ignored, so a late or replayed batch never moves a device back in time; a device listed
/// twice keeps its newest sample; a timestamp ahead of the database clock is clamped. Samples for
/// devices that are not in `site` are ignored: an agent reports only its own site.
pub async fn ingest_telemetry(
    db: impl PgExecutor<'_>,
    site: SiteId,
    samples: &[TelemetryRow],
) -> Result<u64, StoreError> {
    let ids: Vec<Uuid> = samples.iter().map(|s| s.device_id.0).collect();
    let reachable: Vec<bool> = samples.iter().map(|s| s.reachable).collect();
    // Defence in depth: impossible values never reach device_state even if an agent sent them.
    let clean = |v: Option<f64>| v.filter(|x| x.is_finite() && *x >= 0.0);
    let power: Vec<Option<f64>> = samples.iter().map(|s| clean(s.power_w)).collect();
    let hash: Vec<Option<f64>> = samples.iter().map(|s| clean(s.hashrate_ths)).collect();
    let at: Vec<DateTime<Utc>> = samples
        .iter()
        .map(|s| DateTime::from_timestamp_millis(s.sampled_at_ms).unwrap_or(DateTime::UNIX_EPOCH))
        .collect();
    let r = sqlx::query(
        "INSERT INTO device_state (device_id, org_id, reachable, power_w, hashrate_ths, sampled_at)
         SELECT DISTINCT ON (d.id) d.id, d.org_id, u.reachable, u.power, u.hash,
                -- An agent clock running ahead must not freeze the row in the future.
                LEAST(u.at, now() + interval '5 seconds')
         FROM unnest($2::uuid[], $3::bool[], $4::float8[], $5::float8[], $6::timestamptz[])
              AS u(id, reachable, power, hash, at)
         JOIN device d ON d.id = u.id AND d.site_id = $1
         ORDER BY d.id, u.at DESC
         ON CONFLICT (device_id) DO UPDATE SET
             reachable = excluded.reachable, power_w = excluded.power_w,
             hashrate_ths = excluded.hashrate_ths, sampled_at = excluded.sampled_at, updated_at = now()
         WHERE device_state.sampled_at < excluded.sampled_at",
    )
    .bind(site.0)
    .bind(&ids)
    .bind(&reachable)
    .bind(&power)
    .bind(&hash)
    .bind(&at)
    .execute(db)
    .await?;
    Ok(r.rows_affected())
}

/// The planner's live snapshot of an org's devices in the given sites (all sites when empty),
/// with each device's latest valid sample and whether another live event holds it.
pub async fn candidates(
    db: &PgPool,
    org: OrgId,
    sites: &[SiteId],
) -> Result<Vec<Candidate>, StoreError> {
    let site_ids: Vec<Uuid> = sites.iter().map(|s| s.0).collect();
    let rows = sqlx::query(
        "SELECT d.id, d.site_id, d.curtail_full, d.curtail_efficiency, d.power_target, d.maintenance,
                d.priority, s.reachable, s.power_w, s.hashrate_ths, s.sampled_at,
                EXISTS (SELECT 1 FROM curtailment_target t WHERE t.device_id = d.id
                        AND t.state NOT IN ('failed', 'restored', 'restore_failed')) AS busy
         FROM device d LEFT JOIN device_state s ON s.device_id = d.id
         WHERE d.org_id = $1 AND (cardinality($2::uuid[]) = 0 OR d.site_id = ANY($2))",
    )
    .bind(org.0)
    .bind(&site_ids)
    .fetch_all(db)
    .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let reachable: Option<bool> = r.get("reachable");
            let power: Option<f64> = r.get("power_w");
            let hash: Option<f64> = r.get("hashrate_ths");
            let at: Option<DateTime<Utc>> = r.get("sampled_at");
            let sample = match (reachable, power, hash, at) {
                (Some(true), Some(power_w), Some(hashrate_ths), Some(sampled_at)) => Some(Sample {
                    power_w,
                    hashrate_ths,
                    sampled_at,
                }),
                _ => None,
            };
            Candidate {
                device_id: DeviceId(r.get("id")),
                site_id: SiteId(r.get("site_id")),
                capabilities: Capabilities {
                    curtail_full: r.get("curtail_full"),
                    curtail_efficiency: r.get("curtail_efficiency"),
                    power_target: r.get("power_target"),
                },
                maintenance: r.get("maintenance"),
                in_active_event: r.get("busy"),
                priority: r.get("priority"),
                sample,
            }
        })
        .collect())
}

/// A verified API key.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiKeyRow {
    pub id: Uuid,
    pub org_id: OrgId,
    pub role: String,
    pub secret_hash: Vec<u8>,
    pub site_ids: Option<Vec<Uuid>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// An API key to store: the prefix and hash of a [`crate::keys::NewKey`] and what it may do.
#[derive(Clone, Debug)]
pub struct NewApiKey<'a> {
    pub org: OrgId,
    pub prefix: &'a str,
    pub secret_hash: &'a [u8],
    pub role: &'a str,
    pub name: &'a str,
    pub expires_at: Option<DateTime<Utc>>,
    /// The sites the key reaches: `None` for every site of the org, `Some(&[])` for none.
    pub site_ids: Option<&'a [SiteId]>,
}

pub async fn insert_api_key(
    db: impl PgExecutor<'_>,
    key: &NewApiKey<'_>,
) -> Result<Uuid, StoreError> {
    let id = Uuid::now_v7();
    let site_ids: Option<Vec<Uuid>> = key.site_ids.map(|s| s.iter().map(|s| s.0).collect());
    sqlx::query(
        "INSERT INTO api_key (id, org_id, prefix, secret_hash, role, name, expires_at, site_ids)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(id)
    .bind(key.org.0)
    .bind(key.prefix)
    .bind(key.secret_hash)
    .bind(key.role)
    .bind(key.name)
    .bind(key.expires_at)
    .bind(site_ids)
    .execute(db)
    .await
    .map_err(StoreError::classify)?;
    Ok(id)
}

pub async fn api_key_by_prefix(
    db: impl PgExecutor<'_>,
    prefix: &str,
) -> Result<Option<ApiKeyRow>, StoreError> {
    let row = sqlx::query(
        "SELECT id, org_id, role, secret_hash, site_ids, expires_at, revoked_at FROM api_key WHERE prefix = $1",
    )
    .bind(prefix)
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| ApiKeyRow {
        id: r.get("id"),
        org_id: OrgId(r.get("org_id")),
        role: r.get("role"),
        secret_hash: r.get("secret_hash"),
        site_ids: r.get("site_ids"),
        expires_at: r.get("expires_at"),
        revoked_at: r.get("revoked_at"),
    }))
}
