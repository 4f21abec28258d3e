//! Fleet endpoints (issue 9): devices listed with their derived state and current curtailment,
//! a page at a time; one device read and its `maintenance` flag set; the per-site summary. A
//! key limited to some sites sees and touches only their devices: any other is "not found".

use crate::AppState;
use crate::auth::Principal;
use crate::problem::{Kind, Problem};
use crate::routes::{bad_cursor, body, query, require};
use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use chrono::{DateTime, Utc};
use ebb_bus::Role;
use ebb_domain::{DeviceId, RackId, SiteCode, SiteId};
use ebb_store::devices::{self, DeviceFilter, DeviceView};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

pub const DEFAULT_PAGE: u32 = 100;
pub const MAX_PAGE: u32 = 1000;
const MAX_MAKE: usize = 64;

/// A device as the API shows it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Device {
    pub id: Uuid,
    /// The site's code.
    pub site: String,
    pub site_id: Uuid,
    pub rack_id: Option<Uuid>,
    pub address: String,
    pub make: String,
    pub model: String,
    pub firmware: Option<String>,
    /// Left out of every curtailment while set.
    pub maintenance: bool,
    /// `hashing`, `sleeping`, `unreachable`, `unknown` (no telemetry yet) or `maintenance`,
    /// derived from the flag and the latest sample.
    #[schema(example = "hashing")]
    pub state: String,
    /// Latest sample; absent when the miner did not answer (never reported as zero).
    pub power_w: Option<f64>,
    pub hashrate_ths: Option<f64>,
    pub sampled_at: Option<DateTime<Utc>>,
    /// The curtailment that holds the device now, if any.
    pub curtailment: Option<DeviceCurtailment>,
}

/// The non-terminal curtailment holding a device, and the device's target state in it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeviceCurtailment {
    pub event_id: Uuid,
    #[schema(example = "confirmed")]
    pub target_state: String,
}

impl From<DeviceView> for Device {
    fn from(d: DeviceView) -> Self {
        Self {
            id: d.id.0,
            site: d.site,
            site_id: d.site_id.0,
            rack_id: d.rack_id.map(|r| r.0),
            address: d.address,
            make: d.make,
            model: d.model,
            firmware: d.firmware,
            maintenance: d.maintenance,
            state: d.state,
            power_w: d.power_w,
            hashrate_ths: d.hashrate_ths,
            sampled_at: d.sampled_at,
            curtailment: d.curtailment.map(|(e, s)| DeviceCurtailment {
                event_id: e.0,
                target_state: s,
            }),
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeviceQuery {
    /// Only this site's devices (its code).
    #[serde(default)]
    site: Option<String>,
    /// Only this rack's devices.
    #[serde(default)]
    rack: Option<String>,
    /// Only devices in this derived state.
    #[serde(default)]
    state: Option<String>,
    /// Only this make (`antminer`, `whatsminer`, …).
    #[serde(default)]
    make: Option<String>,
    /// 1 to 1,000 (default 100).
    #[serde(default)]
    page_size: Option<u32>,
    /// The `next_cursor` of the previous page, with the same filters.
    #[serde(default)]
    cursor: Option<String>,
}

/// What a device cursor is bound to.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct DeviceCursor {
    org: Uuid,
    site: Option<String>,
    rack: Option<String>,
    state: Option<String>,
    make: Option<String>,
    after: Uuid,
}

/// One page of devices, in id order.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DevicePage {
    pub items: Vec<Device>,
    pub next_cursor: Option<String>,
}

/// The sites a listing covers: the key's reach, narrowed to `site` when one is asked for.
async fn sites_of(
    s: &AppState,
    p: &Principal,
    site: Option<&str>,
) -> Result<Option<Vec<SiteId>>, Problem> {
    let Some(code) = site else {
        return Ok(p
            .site_ids
            .as_ref()
            .map(|ids| ids.iter().copied().map(SiteId).collect()));
    };
    let code = SiteCode::parse(code).map_err(|e| Problem::field("site", e.to_string()))?;
    let found = ebb_store::fleet::site_by_code(&s.pool, &code)
        .await
        .map_err(Problem::internal)?
        .filter(|x| x.org_id == p.org);
    let Some(found) = found else {
        return Err(Problem::field("site", "is not a site of this organisation"));
    };
    if p.site_ids
        .as_ref()
        .is_some_and(|ids| !ids.contains(&found.id.0))
    {
        return Err(Problem::new(
            Kind::PermissionDenied,
            format!("this key cannot reach site {code}"),
        ));
    }
    Ok(Some(vec![found.id]))
}

#[utoipa::path(
    get,
    path = "/v1/devices",
    tag = "fleet",
    summary = "Devices with their derived state and current curtailment, in id order (viewer)",
    params(DeviceQuery),
    responses((status = 200, description = "A page", body = DevicePage), crate::openapi::Problems)
)]
pub async fn list_devices(
    State(s): State<AppState>,
    p: Principal,
    q: Result<Query<DeviceQuery>, QueryRejection>,
) -> Result<Json<DevicePage>, Problem> {
    require(&p, Role::Viewer)?;
    let q = query(q)?;
    let size = q.page_size.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&size) {
        return Err(Problem::field(
            "page_size",
            format!("must be between 1 and {MAX_PAGE}"),
        ));
    }
    if q.state
        .as_ref()
        .is_some_and(|st| !devices::STATES.contains(&st.as_str()))
    {
        return Err(Problem::field(
            "state",
            format!("must be one of {}", devices::STATES.join(", ")),
        ));
    }
    if q.make
        .as_ref()
        .is_some_and(|m| m.is_empty() || m.len() > MAX_MAKE)
    {
        return Err(Problem::field(
            "make",
            format!("must be 1 to {MAX_MAKE} characters"),
        ));
    }
    let rack = q
        .rack
        .as_deref()
        .map(|r| {
            Uuid::parse_str(r)
                .map(RackId)
                .map_err(|_| Problem::field("rack", "must be a UUID"))
        })
        .transpose()?;
    let after = match &q.cursor {
        None => None,
        Some(c) => {
            let cur: DeviceCursor = crate::cursor::decode(c)
                .filter(|cur: &DeviceCursor| {
                    cur.org == p.org.0
                        && cur.site == q.site
                        && cur.rack == q.rack
                        && cur.state == q.state
                        && cur.make == q.make
                })
                .ok_or_else(bad_cursor)?;
            Some(DeviceId(cur.after))
        }
    };
    let filter = DeviceFilter {
        sites: sites_of(&s, &p, q.site.as_deref()).await?,
        rack,
        state: q.state.clone(),
        make: q.make.clone(),
    };
    let mut rows = devices::list(&s.pool, p.org, &filter, after, i64::from(size) + 1)
        .await
        .map_err(Problem::internal)?;
    let more = rows.len() > size as usize;
    rows.truncate(size as usize);
    let next_cursor = if more {
        rows.last().map(|last| {
            crate::cursor::encode(&DeviceCursor {
                org: p.org.0,
                site: q.site.clone(),
                rack: q.rack.clone(),
                state: q.state.clone(),
                make: q.make.clone(),
                after: last.id.0,
            })
        })
    } else {
        None
    };
    Ok(Json(DevicePage {
        items: rows.into_iter().map(Device::from).collect(),
        next_cursor,
    }))
}

fn parse_device(id: &str) -> Result<DeviceId, Problem> {
    Uuid::parse_str(id)
        .map(DeviceId)
        .map_err(|_| Problem::field("id", "must be a UUID"))
}

/// The device, if the key reaches it.
async fn load_device(s: &AppState, p: &Principal, id: DeviceId) -> Result<DeviceView, Problem> {
    devices::get(&s.pool, p.org, id)
        .await
        .map_err(Problem::internal)?
        .filter(|d| {
            p.site_ids
                .as_ref()
                .is_none_or(|ids| ids.contains(&d.site_id.0))
        })
        .ok_or_else(|| Problem::new(Kind::NotFound, "device not found"))
}

#[utoipa::path(
    get,
    path = "/v1/devices/{id}",
    tag = "fleet",
    summary = "One device (viewer)",
    params(("id" = Uuid, Path, description = "The device")),
    responses((status = 200, description = "The device", body = Device), crate::openapi::Problems)
)]
pub async fn get_device(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Device>, Problem> {
    require(&p, Role::Viewer)?;
    Ok(Json(load_device(&s, &p, parse_device(&id)?).await?.into()))
}

/// The fields of a device an operator may change. At least one is required.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DevicePatch {
    /// While set, the planner leaves the device out of every curtailment (unless a Start
    /// forces maintenance devices in).
    #[serde(default)]
    maintenance: Option<bool>,
}

#[utoipa::path(
    patch,
    path = "/v1/devices/{id}",
    tag = "fleet",
    summary = "Change a device: today its maintenance flag (operator). Audited when it changes",
    params(("id" = Uuid, Path, description = "The device")),
    request_body = DevicePatch,
    responses((status = 200, description = "The device as it now is", body = Device), crate::openapi::Problems)
)]
pub async fn patch_device(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    b: Result<Json<DevicePatch>, JsonRejection>,
) -> Result<Json<Device>, Problem> {
    require(&p, Role::Operator)?;
    let id = parse_device(&id)?;
    let patch = body(b)?;
    let Some(maintenance) = patch.maintenance else {
        return Err(Problem::new(
            Kind::InvalidArgument,
            "the request changes nothing: name at least one field (maintenance)",
        ));
    };
    load_device(&s, &p, id).await?; // 404 unless the key reaches the device
    let (org, key) = (p.org, p.key_id);
    let done = ebb_store::tx::with_tx(&s.pool, ebb_store::tx::DEFAULT_ATTEMPTS, move |conn| {
        Box::pin(async move {
            devices::set_maintenance(conn, org, id, maintenance, "api_key", Some(key)).await
        })
    })
    .await
    .map_err(Problem::internal)?;
    if done.is_none() {
        return Err(Problem::new(Kind::NotFound, "device not found"));
    }
    Ok(Json(load_device(&s, &p, id).await?.into()))
}

/// Power, hashrate and miners by state.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Figures {
    pub power_w: f64,
    pub hashrate_ths: f64,
    /// Miners by derived state; every state is present.
    pub miners: BTreeMap<String, i64>,
    /// Miners held by a curtailment now.
    pub curtailed: i64,
}

/// One site's figures.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SiteFigures {
    pub site_id: Uuid,
    pub code: String,
    pub name: String,
    #[serde(flatten)]
    pub figures: Figures,
}

/// The fleet the key reaches, per site and in total.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FleetSummary {
    pub sites: Vec<SiteFigures>,
    pub total: Figures,
}

#[utoipa::path(
    get,
    path = "/v1/fleet/summary",
    tag = "fleet",
    summary = "Power, hashrate and miners by state, per site and in total (viewer)",
    responses((status = 200, description = "The summary", body = FleetSummary), crate::openapi::Problems)
)]
pub async fn fleet_summary(
    State(s): State<AppState>,
    p: Principal,
) -> Result<Json<FleetSummary>, Problem> {
    require(&p, Role::Viewer)?;
    let reach: Option<Vec<SiteId>> = p
        .site_ids
        .as_ref()
        .map(|ids| ids.iter().copied().map(SiteId).collect());
    let rows = devices::summary(&s.pool, p.org, reach.as_deref())
        .await
        .map_err(Problem::internal)?;
    let mut total = Figures {
        miners: devices::STATES
            .iter()
            .map(|s| ((*s).to_owned(), 0))
            .collect(),
        ..Figures::default()
    };
    let sites = rows
        .into_iter()
        .map(|r| {
            total.power_w += r.power_w;
            total.hashrate_ths += r.hashrate_ths;
            total.curtailed += r.curtailed;
            for (state, n) in &r.miners {
                *total.miners.entry(state.clone()).or_default() += n;
            }
            SiteFigures {
                site_id: r.site_id.0,
                code: r.code,
                name: r.name,
                figures: Figures {
                    power_w: r.power_w,
                    hashrate_ths: r.hashrate_ths,
                    miners: r.miners.into_iter().collect(),
                    curtailed: r.curtailed,
                },
            }
        })
        .collect();
    Ok(Json(FleetSummary { sites, total }))
}
