//! Wire messages. Each is the `body` of an [`crate::Envelope`]; new fields are
//! `#[serde(default)]` so old and new services interoperate during a rolling upgrade.

use chrono::{DateTime, Utc};
use ebb_domain::selection::Mode;
use ebb_domain::{BatchId, Capabilities, CommandKind, DeviceId, EventId, OrgId, Outcome, SiteCode};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One device in a command batch: the agent needs its address, and on uncurtail the power limit it
/// had before the event (captured when it was curtailed), so that restore never applies firmware
/// defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceRef {
    pub device_id: DeviceId,
    pub address: String,
    #[serde(default)]
    pub restore_power_limit_w: Option<f64>,
}

/// A command for many devices of one site, one kind (DESIGN §3). Published on `ebb.cmd.<site>` with
/// `Nats-Msg-Id = batch_id`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommandBatch {
    pub batch_id: BatchId,
    #[serde(default)]
    pub event_id: Option<EventId>,
    pub site: SiteCode,
    pub command: CommandKind,
    pub devices: Vec<DeviceRef>,
}

/// What happened to one device of a batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceResult {
    pub device_id: DeviceId,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// The power limit the miner had before a curtail changed it, if it has one.
    #[serde(default)]
    pub prior_power_limit_w: Option<f64>,
}

/// The per-device outcomes of one batch, published on `ebb.result.<site>` before the batch is acked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchResult {
    pub batch_id: BatchId,
    #[serde(default)]
    pub event_id: Option<EventId>,
    pub site: SiteCode,
    /// `None` when the batch could not be decoded.
    #[serde(default)]
    pub command: Option<CommandKind>,
    pub results: Vec<DeviceResult>,
    pub finished_at: DateTime<Utc>,
}

/// One device's reading in a poll cycle. An unreachable miner carries no values: it is never
/// reported as zero power.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TelemetrySample {
    pub device_id: DeviceId,
    pub reachable: bool,
    #[serde(default)]
    pub power_w: Option<f64>,
    #[serde(default)]
    pub hashrate_ths: Option<f64>,
    /// Unix milliseconds.
    pub sampled_at_ms: i64,
}

/// One part of a site's poll cycle on `ebb.telemetry.<site>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TelemetryBatch {
    pub site: SiteCode,
    pub cycle: u64,
    pub samples: Vec<TelemetrySample>,
    /// Samples dropped at the agent because their values were impossible (NaN, negative, no time).
    #[serde(default)]
    pub dropped_invalid: u32,
}

/// A device an agent drives, as the planner knows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InventoryDevice {
    pub device_id: DeviceId,
    pub address: String,
    pub make: String,
    pub model: String,
    /// The firmware and its version as the scan that registered the miner found them (asic-rs's
    /// name, then the version: `LuxOS 2024.5.1`), so the agent drives a known miner without
    /// identifying it again.
    #[serde(default)]
    pub firmware: Option<String>,
    pub capabilities: Capabilities,
}

/// `ebb.svc.planner.inventory.<site>`: one page of the site's devices, in address order. The
/// site is the subject's, never the body's: an agent may call only its own site's endpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InventoryRequest {
    /// The page after this cursor (the `next` of the previous page); the first page without.
    #[serde(default)]
    pub after: Option<String>,
    /// Devices per page, at most [`INVENTORY_PAGE_MAX`] (the default).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// Most devices in one inventory page: a page of the largest devices stays far below NATS's
/// 1 MiB payload limit (each device is a few hundred bytes encoded).
pub const INVENTORY_PAGE_MAX: u32 = 1_000;

/// Most encoded bytes of the devices in one inventory page: a quarter of NATS's 1 MiB payload
/// limit, whatever the devices' text fields hold.
pub const INVENTORY_PAGE_BYTES: usize = 256 * 1024;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    pub devices: Vec<InventoryDevice>,
    /// The cursor of the next page (the last device's address); `None` on the last.
    #[serde(default)]
    pub next: Option<String>,
}

impl Inventory {
    /// A page of `rows`, the devices after the cursor in address order: as many as fit in
    /// [`INVENTORY_PAGE_BYTES`] (at least one). `more` says whether the store holds devices after
    /// the last row; the page has a `next` cursor if it does or if some rows did not fit.
    pub fn page(rows: Vec<InventoryDevice>, more: bool) -> Inventory {
        let fit = fitting(&rows, INVENTORY_PAGE_BYTES);
        let truncated = fit < rows.len();
        let mut devices = rows;
        devices.truncate(fit);
        let next = (more || truncated)
            .then(|| devices.last().map(|d| d.address.clone()))
            .flatten();
        Inventory { devices, next }
    }
}

/// How many of `rows`, from the first, fit in `max_bytes` encoded (at least one, so a page always
/// advances). A row that cannot be encoded counts as too large, so the page ends before it.
pub fn fitting<T: Serialize>(rows: &[T], max_bytes: usize) -> usize {
    let mut used: usize = 0;
    let mut fit = 0;
    for row in rows {
        let size = rmp_serde::to_vec_named(row).map_or(usize::MAX, |b| b.len());
        if fit > 0 && used.saturating_add(size) > max_bytes {
            break;
        }
        used = used.saturating_add(size);
        fit += 1;
    }
    fit
}

/// Who asked for something; recorded on events and audit rows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Actor {
    ApiKey { key_id: uuid::Uuid, role: Role },
    Scheduler,
    Policy,
}

impl Actor {
    pub fn role(&self) -> Role {
        match self {
            Actor::ApiKey { role, .. } => *role,
            Actor::Scheduler | Actor::Policy => Role::Operator,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Actor::ApiKey { .. } => "api_key",
            Actor::Scheduler => "scheduler",
            Actor::Policy => "policy",
        }
    }
}

/// API roles, ordered by privilege.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// Which devices a curtailment may touch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Scope {
    /// Site codes; empty means every site of the org.
    #[serde(default)]
    pub sites: Vec<SiteCode>,
}

/// `ebb.svc.planner.preview` and `.start`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StartRequest {
    pub org: OrgId,
    pub actor: Actor,
    pub mode: Mode,
    #[serde(default)]
    pub scope: Scope,
    pub reason: String,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub idempotency_key: Option<String>,
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

/// `ebb.svc.planner.stop`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StopRequest {
    pub org: OrgId,
    pub actor: Actor,
    pub event_id: EventId,
    #[serde(default)]
    pub reason: Option<String>,
    /// Restore this many targets per batch instead of the event's setting (admin).
    #[serde(default)]
    pub restore_batch_size_override: Option<u32>,
    /// Restore batches this many seconds apart instead (admin above the non-admin cap).
    #[serde(default)]
    pub restore_batch_interval_s_override: Option<u32>,
}

/// The result of a preview.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PlanView {
    /// The mode as asked: `{"mode": "kw", "target_kw": …}` and so on.
    #[schema(value_type = Object)]
    pub mode: Mode,
    pub selected_count: u32,
    pub expected_shed_kw: f64,
    pub scope_kw: f64,
    pub available_kw: f64,
    pub skipped: BTreeMap<String, u32>,
    pub per_site: BTreeMap<String, SiteShare>,
}

/// One site's part of a plan.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SiteShare {
    pub devices: u32,
    pub shed_kw: f64,
}

/// A typed reply: the value or an error whose kind callers match on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Reply<T> {
    Ok { value: T },
    Err { error: RpcError },
}

/// An error returned over request/reply, with a closed kind the gateway maps to an HTTP status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct RpcError {
    pub kind: RpcErrorKind,
    pub message: String,
    #[serde(default)]
    pub field: Option<String>,
    #[serde(default)]
    pub detail: BTreeMap<String, f64>,
    #[serde(default)]
    pub skipped: BTreeMap<String, u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RpcErrorKind {
    InvalidArgument,
    InsufficientLoad,
    EmptyPlan,
    NotFound,
    FailedPrecondition,
    /// The event is not in a state the request applies to.
    InvalidState,
    /// The event changed state between the request's read and its write.
    StateRace,
    PermissionDenied,
    Conflict,
    Unavailable,
    Internal,
}

impl RpcError {
    pub fn new(kind: RpcErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            field: None,
            detail: BTreeMap::new(),
            skipped: BTreeMap::new(),
        }
    }

    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.to_owned()),
            ..Self::new(RpcErrorKind::InvalidArgument, message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Envelope, decode, encode};
    use ebb_domain::CurtailLevel;

    #[test]
    fn batch_round_trip() {
        let b = CommandBatch {
            batch_id: BatchId::new(),
            event_id: Some(EventId::new()),
            site: SiteCode::parse("a").unwrap(),
            command: CommandKind::Curtail {
                level: CurtailLevel::Full,
            },
            devices: vec![DeviceRef {
                device_id: DeviceId::new(),
                address: "127.0.0.1".into(),
                restore_power_limit_w: None,
            }],
        };
        let env = Envelope::new(None, b);
        assert_eq!(decode::<CommandBatch>(&encode(&env).unwrap()).unwrap(), env);
        let r = BatchResult {
            batch_id: BatchId::new(),
            event_id: None,
            site: SiteCode::parse("a").unwrap(),
            command: None,
            results: vec![DeviceResult {
                device_id: DeviceId::new(),
                outcome: Outcome::Refused {
                    reason: "no".into(),
                },
                prior_power_limit_w: Some(3000.0),
            }],
            finished_at: Utc::now(),
        };
        let env = Envelope::new(None, r);
        assert_eq!(decode::<BatchResult>(&encode(&env).unwrap()).unwrap(), env);
    }

    #[test]
    fn an_inventory_page_fits_whatever_its_devices_hold() {
        let dev = |i: usize, text: usize| InventoryDevice {
            device_id: DeviceId::new(),
            address: format!("10.0.{}.{}", i / 256, i % 256),
            make: "m".repeat(text),
            model: "x".repeat(text),
            firmware: Some("f".repeat(text)),
            capabilities: ebb_domain::Capabilities::default(),
        };
        let check = |rows: Vec<InventoryDevice>, more: bool| {
            let page = Inventory::page(rows.clone(), more);
            let bytes = encode(&Envelope::new(
                None,
                Reply::Ok {
                    value: page.clone(),
                },
            ))
            .unwrap();
            assert!(
                bytes.len() <= INVENTORY_PAGE_BYTES + 1024,
                "{} bytes",
                bytes.len()
            );
            assert!(!page.devices.is_empty());
            assert_eq!(page.devices[..], rows[..page.devices.len()]);
            page
        };
        // Small devices: the whole page, with a cursor only if the store has more.
        let small: Vec<_> = (0..1_000).map(|i| dev(i, 10)).collect();
        assert_eq!(check(small.clone(), false).next, None);
        assert_eq!(
            check(small.clone(), true).next.as_deref(),
            Some("10.0.3.231")
        );
        // 1,000 devices of ~8 KiB each (~8 MiB) are cut short, and the cursor resumes after the
        // last one sent.
        let large: Vec<_> = (0..1_000).map(|i| dev(i, 4096)).collect();
        let page = check(large.clone(), false);
        assert!(page.devices.len() < 40, "{}", page.devices.len());
        assert_eq!(page.next, page.devices.last().map(|d| d.address.clone()));
        // One device larger than a page still goes, alone: a page always advances.
        let page = Inventory::page(vec![dev(0, INVENTORY_PAGE_BYTES / 2), dev(1, 1)], false);
        assert_eq!(page.devices.len(), 1);
        assert!(page.next.is_some());
    }

    #[test]
    fn a_scan_is_read_in_pages_that_fit() {
        let dev = |i: usize, text: usize| DiscoveredDevice {
            address: format!("10.0.{}.{}", i / 256, i % 256),
            make: "x".repeat(text),
            model: "S19".into(),
            firmware: None,
            capabilities: Capabilities::default(),
            nominal_power_w: None,
        };
        let id = uuid::Uuid::now_v7();
        let all: Vec<_> = (0..25).map(|i| dev(i, 10)).collect();
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = ScanResult::page(id, 300, 0, &all, after.as_deref(), 10);
            assert_eq!((page.found, page.scan_id), (25, Some(id)));
            assert!(page.devices.len() <= 10);
            seen.extend(page.devices);
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        assert_eq!(seen, all);
        // Large devices are cut by bytes, whatever the limit; every page still fits a message.
        let large: Vec<_> = (0..500).map(|i| dev(i, 4096)).collect();
        let page = ScanResult::page(id, 500, 0, &large, None, SCAN_PAGE_MAX);
        assert!(page.devices.len() < 100, "{}", page.devices.len());
        let bytes = encode(&Envelope::new(
            None,
            Reply::Ok {
                value: page.clone(),
            },
        ))
        .unwrap();
        assert!(
            bytes.len() <= INVENTORY_PAGE_BYTES + 1024,
            "{}",
            bytes.len()
        );
        assert_eq!(page.next, page.devices.last().map(|d| d.address.clone()));
        // A cursor past the end (or unknown) reads an empty last page.
        let page = ScanResult::page(id, 500, 0, &large, Some("10.9.9.9"), 10);
        assert!(page.devices.is_empty() && page.next.is_none());
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        for r in [Role::Viewer, Role::Operator, Role::Admin] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
    }
}

/// A miner found by a discovery scan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiscoveredDevice {
    pub address: String,
    pub make: String,
    pub model: String,
    #[serde(default)]
    pub firmware: Option<String>,
    pub capabilities: Capabilities,
    #[serde(default)]
    pub nominal_power_w: Option<f64>,
}

/// `ebb.svc.agent.<site>.scan`: identify the miners in an address range (`127.0.0.1-50` or a CIDR).
///
/// The reply is paged (a /16 can hold far more miners than one message carries): the first reply
/// holds the scan's first page, its `scan_id` and a `next` cursor while more remain; a request
/// naming that `scan_id` and `after` = the cursor reads the next page of the finished scan
/// without scanning again (`range` and `register` are then ignored). The agent keeps its latest
/// scans for [`SCAN_KEPT_FOR_S`] seconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScanRequest {
    pub range: String,
    /// Also register what was found with the planner.
    #[serde(default)]
    pub register: bool,
    /// A finished scan to read a further page of.
    #[serde(default)]
    pub scan_id: Option<uuid::Uuid>,
    /// The page after this cursor (the `next` of the previous page).
    #[serde(default)]
    pub after: Option<String>,
    /// Devices per page, at most [`SCAN_PAGE_MAX`] (the default); pages are also cut at
    /// [`INVENTORY_PAGE_BYTES`] encoded.
    #[serde(default)]
    pub limit: Option<u32>,
}

/// Most devices in one scan page.
pub const SCAN_PAGE_MAX: u32 = 1_000;
/// How long an agent keeps a finished scan's result for further pages.
pub const SCAN_KEPT_FOR_S: u64 = 900;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScanResult {
    pub scanned: u32,
    /// This page's devices, in address order.
    pub devices: Vec<DiscoveredDevice>,
    #[serde(default)]
    pub registered: u32,
    /// The scan these pages belong to.
    #[serde(default)]
    pub scan_id: Option<uuid::Uuid>,
    /// Every device the scan found, over all pages.
    #[serde(default)]
    pub found: u32,
    /// The cursor of the next page; `None` on the last.
    #[serde(default)]
    pub next: Option<String>,
}

impl ScanResult {
    /// The page of `all` (a finished scan's devices in address order) after `after`: at most
    /// `limit` devices and [`INVENTORY_PAGE_BYTES`] encoded, at least one.
    pub fn page(
        scan_id: uuid::Uuid,
        scanned: u32,
        registered: u32,
        all: &[DiscoveredDevice],
        after: Option<&str>,
        limit: u32,
    ) -> ScanResult {
        let start = after.map_or(0, |a| {
            all.iter()
                .position(|d| d.address == a)
                .map_or(all.len(), |i| i + 1)
        });
        let rest = &all[start..];
        let take = rest.len().min(limit.clamp(1, SCAN_PAGE_MAX) as usize);
        let fit = fitting(&rest[..take], INVENTORY_PAGE_BYTES);
        let devices = rest[..fit].to_vec();
        let next = (fit < rest.len())
            .then(|| devices.last().map(|d| d.address.clone()))
            .flatten();
        ScanResult {
            scanned,
            devices,
            registered,
            scan_id: Some(scan_id),
            found: u32::try_from(all.len()).unwrap_or(u32::MAX),
            next,
        }
    }
}

/// `ebb.svc.planner.register.<site>`: add or update a site's devices by address. The site is
/// the subject's, never the body's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegisterDevicesRequest {
    pub devices: Vec<DiscoveredDevice>,
}

/// Most devices in one registration request.
pub const REGISTER_MAX_DEVICES: usize = 1_000;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegisterDevicesReply {
    pub registered: u32,
}

/// Reply to a Start: the persisted event, and whether this was a replay of an earlier Start.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StartReply {
    pub event_id: EventId,
    pub replayed: bool,
}

/// Reply to a Stop: whether this call moved the event (false: it was already stopping or ended).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StopReply {
    pub event_id: EventId,
    pub changed: bool,
}

/// `ebb.svc.planner.update`: changes a pending or active event's reason, maximum duration or
/// restore pacing. `None` leaves a field as it is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpdateRequest {
    pub org: OrgId,
    pub actor: Actor,
    pub event_id: EventId,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub max_duration_s: Option<u32>,
    #[serde(default)]
    pub restore_batch_size: Option<u32>,
    #[serde(default)]
    pub restore_batch_interval_s: Option<u32>,
}

/// Reply to an Update: the fields it changed (none when every field already had its value).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpdateReply {
    pub event_id: EventId,
    pub changed: Vec<String>,
}

/// `ebb.svc.planner.abort`: an admin releases a stuck event's miners without restoring them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AbortRequest {
    pub org: OrgId,
    pub actor: Actor,
    pub event_id: EventId,
    pub reason: String,
}

/// `ebb.svc.planner.terminate`: an admin ends an event that has nothing in flight.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TerminateRequest {
    pub org: OrgId,
    pub actor: Actor,
    pub event_id: EventId,
    /// `cancelled` or `failed`.
    pub target_state: ebb_domain::EventState,
    pub reason: String,
}
