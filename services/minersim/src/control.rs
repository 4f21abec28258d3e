//! The simulator's own HTTP control API, for tests and operators.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/miners[?site=&mode=&offset=&limit=]` | every miner with its true state |
//! | GET | `/miners/{address}` | one miner |
//! | GET | `/summary` | fleet totals: power, hashrate, miners per mode |
//! | POST | `/faults` | `{"address"\|"addresses"\|"site"\|"share"\|"seed", "fault": {"kind": …}}` |
//! | DELETE | `/faults[?address=&site=]` | clear faults (all when no filter) |
//! | GET | `/clock` | simulated time and whether it is paused |
//! | POST | `/clock/pause`, `/clock/resume` | stop or restart the clock |
//! | POST | `/clock/advance` | `{"seconds": 30}` |
//! | GET, POST | `/physics` | read, or patch (`{"ramp_s": 5}`, `{"instant": true}`, …) |

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::fault::{Fault, FaultSelector};
use crate::physics::{Mode, Physics, PhysicsPatch};
use crate::sim::{MinerInfo, SimCore, SimError, TrueState};

/// A miner with its true state, as `/miners` lists it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MinerView {
    /// Static facts.
    #[serde(flatten)]
    pub info: MinerInfo,
    /// What it is really doing.
    pub state: TrueState,
}

/// Fleet totals.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FleetSummary {
    /// Number of miners.
    pub miners: usize,
    /// Total power drawn.
    pub power_w: f64,
    /// Total hashrate.
    pub hashrate_ths: f64,
    /// Miners hashing.
    pub hashing: usize,
    /// Miners asleep.
    pub sleeping: usize,
    /// Miners under a power limit.
    pub power_limited: usize,
    /// Miners rebooting.
    pub rebooting: usize,
    /// Miners with at least one fault.
    pub faulty: usize,
    /// Simulated time, seconds.
    pub sim_time_s: f64,
}

/// Errors the control API reports, each with its HTTP status.
#[derive(Debug)]
enum ApiError {
    Sim(SimError),
    BadRequest(String),
}

impl From<SimError> for ApiError {
    fn from(e: SimError) -> Self {
        ApiError::Sim(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ApiError::Sim(e @ (SimError::UnknownMiner(_) | SimError::UnknownSite(_))) => {
                (StatusCode::NOT_FOUND, e.to_string())
            }
            ApiError::Sim(e @ SimError::Invalid(_)) => (StatusCode::BAD_REQUEST, e.to_string()),
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
        };
        (status, Json(json!({"error": message}))).into_response()
    }
}

/// The control API's routes.
pub(crate) fn router(core: Arc<SimCore>) -> Router {
    Router::new()
        .route("/miners", get(list_miners))
        .route("/miners/{address}", get(one_miner))
        .route("/summary", get(summary))
        .route("/faults", post(add_fault).delete(clear_faults))
        .route("/clock", get(clock))
        .route("/clock/pause", post(pause))
        .route("/clock/resume", post(resume))
        .route("/clock/advance", post(advance))
        .route("/physics", get(get_physics).post(patch_physics))
        .with_state(core)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    site: Option<String>,
    mode: Option<Mode>,
    offset: Option<usize>,
    limit: Option<usize>,
}

pub(crate) fn view(core: &SimCore, idx: u32) -> MinerView {
    MinerView {
        info: core.info(idx),
        state: core.truth(idx),
    }
}

async fn list_miners(
    State(core): State<Arc<SimCore>>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<MinerView>>, ApiError> {
    let site = match &q.site {
        Some(name) => Some(
            core.sites
                .iter()
                .position(|s| &s.name == name)
                .ok_or_else(|| SimError::UnknownSite(name.clone()))?,
        ),
        None => None,
    };
    let views = (0..core.miners.len() as u32)
        .filter(|&i| site.is_none_or(|s| usize::from(core.miner(i).plate.site) == s))
        .map(|i| view(&core, i))
        .filter(|v| q.mode.is_none_or(|m| v.state.mode == m))
        .skip(q.offset.unwrap_or(0))
        .take(q.limit.unwrap_or(usize::MAX))
        .collect();
    Ok(Json(views))
}

async fn one_miner(
    State(core): State<Arc<SimCore>>,
    Path(address): Path<Ipv4Addr>,
) -> Result<Json<MinerView>, ApiError> {
    let idx = core
        .index_of(address)
        .ok_or(SimError::UnknownMiner(address))?;
    Ok(Json(view(&core, idx)))
}

pub(crate) fn fleet_summary(core: &SimCore) -> FleetSummary {
    let mut s = FleetSummary {
        miners: core.miners.len(),
        sim_time_s: core.clock.now().as_secs_f64(),
        ..FleetSummary::default()
    };
    for i in 0..core.miners.len() as u32 {
        let t = core.truth(i);
        s.power_w += t.power_w;
        s.hashrate_ths += t.hashrate_ths;
        match t.mode {
            Mode::Hashing => s.hashing += 1,
            Mode::Sleeping => s.sleeping += 1,
            Mode::PowerLimited => s.power_limited += 1,
            Mode::Rebooting => s.rebooting += 1,
        }
        if !t.faults.is_empty() {
            s.faulty += 1;
        }
    }
    s
}

async fn summary(State(core): State<Arc<SimCore>>) -> Json<FleetSummary> {
    Json(fleet_summary(&core))
}

/// `POST /faults` body: a selector plus the fault.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultRequest {
    #[serde(default)]
    address: Option<Ipv4Addr>,
    #[serde(default)]
    addresses: Vec<Ipv4Addr>,
    #[serde(default)]
    site: Option<String>,
    #[serde(default)]
    share: Option<f64>,
    #[serde(default)]
    seed: Option<u64>,
    fault: Fault,
}

async fn add_fault(
    State(core): State<Arc<SimCore>>,
    Json(req): Json<FaultRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let selector = FaultSelector {
        address: req.address,
        addresses: req.addresses,
        site: req.site,
        share: req.share,
        seed: req.seed,
    };
    let affected = core.inject(&selector, req.fault)?;
    Ok(Json(json!({"affected": affected})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClearQuery {
    address: Option<Ipv4Addr>,
    site: Option<String>,
}

async fn clear_faults(
    State(core): State<Arc<SimCore>>,
    Query(q): Query<ClearQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let selector = FaultSelector {
        address: q.address,
        site: q.site,
        ..FaultSelector::default()
    };
    let cleared = core.clear(&selector)?;
    Ok(Json(json!({"cleared": cleared})))
}

fn clock_json(core: &SimCore) -> serde_json::Value {
    let now = core.clock.now();
    json!({
        "sim_time_s": now.as_secs_f64(),
        "unix_s": core.clock.unix_secs(now),
        "paused": core.clock.is_paused()
    })
}

async fn clock(State(core): State<Arc<SimCore>>) -> Json<serde_json::Value> {
    Json(clock_json(&core))
}

async fn pause(State(core): State<Arc<SimCore>>) -> Json<serde_json::Value> {
    core.clock.pause();
    Json(clock_json(&core))
}

async fn resume(State(core): State<Arc<SimCore>>) -> Json<serde_json::Value> {
    core.clock.resume();
    core.bump_reachability();
    Json(clock_json(&core))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Advance {
    seconds: f64,
}

async fn advance(
    State(core): State<Arc<SimCore>>,
    Json(a): Json<Advance>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !a.seconds.is_finite() || !(0.0..=31_536_000.0).contains(&a.seconds) {
        return Err(ApiError::BadRequest(format!(
            "seconds must be between 0 and 31536000, got {}",
            a.seconds
        )));
    }
    core.clock.advance(Duration::from_secs_f64(a.seconds));
    core.bump_reachability();
    Ok(Json(clock_json(&core)))
}

async fn get_physics(State(core): State<Arc<SimCore>>) -> Json<Physics> {
    Json(core.physics())
}

async fn patch_physics(
    State(core): State<Arc<SimCore>>,
    Json(patch): Json<PhysicsPatch>,
) -> Result<Json<Physics>, ApiError> {
    let physics = patch.apply(core.physics());
    physics.validate().map_err(ApiError::BadRequest)?;
    core.set_physics(physics);
    Ok(Json(physics))
}
