//! Curtailment events and targets. Every state write is a compare-and-set on the prior state
//! (`UPDATE … WHERE state = $from`) whose returned rows say who actually moved, and every move is
//! logged in `event_transition` by the same statement.

use crate::error::StoreError;
use chrono::{DateTime, Utc};
use ebb_domain::confirm::Sample;
use ebb_domain::selection::Selected;
use ebb_domain::{
    BatchId, CommandKind, DeviceId, EventId, EventState, OrgId, SiteId, SpendReason, StopCause,
    TargetState,
};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use sqlx::{PgConnection, PgExecutor, PgPool, Row};
use std::collections::BTreeMap;
use uuid::Uuid;

/// A curtailment event row.
#[derive(Clone, Debug, PartialEq)]
pub struct EventRow {
    pub id: EventId,
    pub org_id: OrgId,
    pub state: EventState,
    pub mode: String,
    pub mode_params: Json,
    pub command: CommandKind,
    pub scope: Json,
    pub priority: i32,
    pub reason: String,
    pub target_kw: Option<f64>,
    pub selection: Json,
    pub restore_batch_size: u32,
    pub restore_batch_interval_s: u32,
    pub max_duration_s: Option<u32>,
    pub idempotency_key: Option<String>,
    pub external_source: Option<String>,
    pub external_reference: Option<String>,
    pub created_by: Option<Uuid>,
    pub source_actor: String,
    /// Why the event stopped curtailing: set exactly when it began restoring.
    pub stop_cause: Option<StopCause>,
    /// The stop's text for people (a request's own words, or the cause's description).
    pub stop_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub activated_at: Option<DateTime<Utc>>,
    pub restore_started_at: Option<DateTime<Utc>>,
    pub last_restore_batch_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    /// The W3C trace context of the request that started the event: work done for it later
    /// (dispatch, confirmation, the feed's notices) joins that request's trace.
    pub traceparent: Option<String>,
}

const EVENT_COLUMNS: &str = "id, org_id, state, mode, mode_params, command, scope, priority, reason, target_kw,
    selection, restore_batch_size, restore_batch_interval_s, max_duration_s, idempotency_key,
    external_source, external_reference, created_by, source_actor, stop_cause, stop_reason, created_at, updated_at,
    activated_at, restore_started_at, last_restore_batch_at, ended_at, traceparent";

fn event_from_row(r: &sqlx::postgres::PgRow) -> Result<EventRow, StoreError> {
    let state: String = r.get("state");
    let command: Json = r.get("command");
    Ok(EventRow {
        id: EventId(r.get("id")),
        org_id: OrgId(r.get("org_id")),
        state: state
            .parse()
            .map_err(|e: ebb_domain::state::UnknownState| StoreError::Encode(e.to_string()))?,
        mode: r.get("mode"),
        mode_params: r.get("mode_params"),
        command: serde_json::from_value(command).map_err(|e| StoreError::Encode(e.to_string()))?,
        scope: r.get("scope"),
        priority: r.get("priority"),
        reason: r.get("reason"),
        target_kw: r.get("target_kw"),
        selection: r.get("selection"),
        restore_batch_size: r.get::<i32, _>("restore_batch_size") as u32,
        restore_batch_interval_s: r.get::<i32, _>("restore_batch_interval_s") as u32,
        max_duration_s: r.get::<Option<i32>, _>("max_duration_s").map(|v| v as u32),
        idempotency_key: r.get("idempotency_key"),
        external_source: r.get("external_source"),
        external_reference: r.get("external_reference"),
        created_by: r.get("created_by"),
        source_actor: r.get("source_actor"),
        stop_cause: parse_opt(r.get("stop_cause"))?,
        stop_reason: r.get("stop_reason"),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
        activated_at: r.get("activated_at"),
        restore_started_at: r.get("restore_started_at"),
        last_restore_batch_at: r.get("last_restore_batch_at"),
        ended_at: r.get("ended_at"),
        traceparent: r.get("traceparent"),
    })
}

/// Parses an optional typed text column (a cause or a reason) into its enum.
fn parse_opt<T>(v: Option<String>) -> Result<Option<T>, StoreError>
where
    T: std::str::FromStr<Err = ebb_domain::state::UnknownState>,
{
    v.map(|s| {
        s.parse()
            .map_err(|e: ebb_domain::state::UnknownState| StoreError::Encode(e.to_string()))
    })
    .transpose()
}

/// What Start persists.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub id: EventId,
    pub org_id: OrgId,
    pub mode: String,
    pub mode_params: Json,
    pub command: CommandKind,
    pub scope: Json,
    pub priority: i32,
    pub reason: String,
    pub target_kw: Option<f64>,
    pub selection: Json,
    pub restore_batch_size: u32,
    pub restore_batch_interval_s: u32,
    pub max_duration_s: Option<u32>,
    pub idempotency_key: Option<String>,
    pub external_source: Option<String>,
    pub external_reference: Option<String>,
    pub created_by: Option<Uuid>,
    pub source_actor: String,
    /// The trace context of the Start request (`None` when traces are not exported).
    pub traceparent: Option<String>,
}

/// Inserts the event and all its targets (pending, baseline from the selection) in the caller's
/// transaction. A device already held by another live event fails the whole insert with the
/// exclusivity constraint, so two concurrent Starts can never claim the same miner.
pub async fn insert_event(
    conn: &mut PgConnection,
    e: &NewEvent,
    targets: &[Selected],
) -> Result<EventRow, StoreError> {
    let command = serde_json::to_value(e.command).map_err(|x| StoreError::Encode(x.to_string()))?;
    let row = sqlx::query(&format!(
        "INSERT INTO curtailment_event (id, org_id, state, mode, mode_params, command, scope, priority, reason,
            target_kw, selection, restore_batch_size, restore_batch_interval_s, max_duration_s,
            idempotency_key, external_source, external_reference, created_by, source_actor, traceparent)
         VALUES ($1, $2, 'pending', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)
         RETURNING {EVENT_COLUMNS}"
    ))
    .bind(e.id.0)
    .bind(e.org_id.0)
    .bind(&e.mode)
    .bind(&e.mode_params)
    .bind(&command)
    .bind(&e.scope)
    .bind(e.priority)
    .bind(&e.reason)
    .bind(e.target_kw)
    .bind(&e.selection)
    .bind(e.restore_batch_size as i32)
    .bind(e.restore_batch_interval_s as i32)
    .bind(e.max_duration_s.map(|v| v as i32))
    .bind(&e.idempotency_key)
    .bind(&e.external_source)
    .bind(&e.external_reference)
    .bind(e.created_by)
    .bind(&e.source_actor)
    .bind(&e.traceparent)
    .fetch_one(&mut *conn)
    .await
    .map_err(StoreError::classify)?;
    let event = event_from_row(&row)?;

    let devices: Vec<Uuid> = targets.iter().map(|t| t.device_id.0).collect();
    let sites: Vec<Uuid> = targets.iter().map(|t| t.site_id.0).collect();
    let baseline: Vec<f64> = targets.iter().map(|t| t.baseline_power_w).collect();
    sqlx::query(
        "INSERT INTO curtailment_target (event_id, device_id, org_id, site_id, state, baseline_power_w)
         SELECT $1, u.device, $2, u.site, 'pending', u.baseline
         FROM unnest($3::uuid[], $4::uuid[], $5::float8[]) AS u(device, site, baseline)",
    )
    .bind(e.id.0)
    .bind(e.org_id.0)
    .bind(&devices)
    .bind(&sites)
    .bind(&baseline)
    .execute(&mut *conn)
    .await
    .map_err(StoreError::classify)?;

    log_event_transition(
        &mut *conn,
        &event,
        None,
        EventState::Pending,
        &e.source_actor,
        Some(&e.reason),
    )
    .await?;
    Ok(event)
}

pub async fn log_event_transition(
    db: impl PgExecutor<'_>,
    event: &EventRow,
    from: Option<EventState>,
    to: EventState,
    actor: &str,
    reason: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO event_transition (org_id, event_id, from_state, to_state, actor, reason)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(event.org_id.0)
    .bind(event.id.0)
    .bind(from.map(|s| s.as_str()))
    .bind(to.as_str())
    .bind(actor)
    .bind(reason)
    .execute(db)
    .await?;
    Ok(())
}

pub async fn audit(
    db: impl PgExecutor<'_>,
    org: OrgId,
    actor_kind: &str,
    actor_id: Option<Uuid>,
    action: &str,
    subject: Option<Uuid>,
    metadata: Json,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_log (org_id, actor_kind, actor_id, action, subject_id, metadata) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(org.0)
    .bind(actor_kind)
    .bind(actor_id)
    .bind(action)
    .bind(subject)
    .bind(metadata)
    .execute(db)
    .await?;
    Ok(())
}

/// The persisted event a Start with this idempotency key or external reference already created.
/// The key is checked first.
pub async fn find_replay(
    db: &mut PgConnection,
    org: OrgId,
    idempotency_key: Option<&str>,
    external: Option<(&str, &str)>,
) -> Result<Option<EventRow>, StoreError> {
    if let Some(key) = idempotency_key {
        let row = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM curtailment_event WHERE org_id = $1 AND idempotency_key = $2"
        ))
        .bind(org.0)
        .bind(key)
        .fetch_optional(&mut *db)
        .await?;
        if let Some(r) = row {
            return event_from_row(&r).map(Some);
        }
    }
    if let Some((source, reference)) = external {
        let row = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM curtailment_event
             WHERE org_id = $1 AND external_source = $2 AND external_reference = $3"
        ))
        .bind(org.0)
        .bind(source)
        .bind(reference)
        .fetch_optional(&mut *db)
        .await?;
        if let Some(r) = row {
            return event_from_row(&r).map(Some);
        }
    }
    Ok(None)
}

pub async fn get_event(
    db: impl PgExecutor<'_>,
    org: OrgId,
    id: EventId,
) -> Result<Option<EventRow>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {EVENT_COLUMNS} FROM curtailment_event WHERE org_id = $1 AND id = $2"
    ))
    .bind(org.0)
    .bind(id.0)
    .fetch_optional(db)
    .await?;
    row.as_ref().map(event_from_row).transpose()
}

/// Locks an event row for a state change (`FOR UPDATE`).
pub async fn lock_event(
    conn: &mut PgConnection,
    org: OrgId,
    id: EventId,
) -> Result<Option<EventRow>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {EVENT_COLUMNS} FROM curtailment_event WHERE org_id = $1 AND id = $2 FOR UPDATE"
    ))
    .bind(org.0)
    .bind(id.0)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(event_from_row).transpose()
}

/// An event as the API shows it: summary and counts, never per-target rows.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventView {
    #[schema(value_type = uuid::Uuid)]
    pub id: EventId,
    /// `pending`, `active`, `restoring`, `completed`, `completed_with_failures`, `cancelled`
    /// or `failed`.
    #[schema(value_type = String, example = "active")]
    pub state: EventState,
    pub mode: String,
    pub mode_params: Json,
    pub scope: Json,
    pub reason: String,
    pub priority: i32,
    pub target_kw: Option<f64>,
    pub selection: Json,
    pub restore_batch_size: u32,
    pub restore_batch_interval_s: u32,
    pub max_duration_s: Option<u32>,
    pub external_source: Option<String>,
    pub external_reference: Option<String>,
    pub source_actor: String,
    pub stop_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub activated_at: Option<DateTime<Utc>>,
    pub restore_started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    /// Target counts by state.
    pub targets: BTreeMap<String, i64>,
    /// What the event sheds now, in kW: baseline minus latest observed power over its confirmed
    /// targets, from telemetry (0 once nothing is confirmed).
    pub observed_shed_kw: f64,
    /// What its plan expected it to shed, in kW (the selection's).
    pub expected_shed_kw: f64,
}

impl EventView {
    pub fn new(e: EventRow, targets: BTreeMap<String, i64>, observed_shed_w: f64) -> Self {
        let expected_shed_kw = e
            .selection
            .get("expected_shed_kw")
            .and_then(Json::as_f64)
            .unwrap_or(0.0);
        Self {
            id: e.id,
            state: e.state,
            mode: e.mode,
            mode_params: e.mode_params,
            scope: e.scope,
            reason: e.reason,
            priority: e.priority,
            target_kw: e.target_kw,
            selection: e.selection,
            restore_batch_size: e.restore_batch_size,
            restore_batch_interval_s: e.restore_batch_interval_s,
            max_duration_s: e.max_duration_s,
            external_source: e.external_source,
            external_reference: e.external_reference,
            source_actor: e.source_actor,
            stop_reason: e.stop_reason,
            created_at: e.created_at,
            activated_at: e.activated_at,
            restore_started_at: e.restore_started_at,
            ended_at: e.ended_at,
            targets,
            observed_shed_kw: observed_shed_w.round() / 1000.0,
            expected_shed_kw,
        }
    }
}

/// The event as the API shows it now: its row, its target counts and what it sheds.
pub async fn view(conn: &mut PgConnection, ev: &EventRow) -> Result<EventView, StoreError> {
    let counts = target_counts(&mut *conn, &[ev.id])
        .await?
        .remove(&ev.id)
        .unwrap_or_default();
    let shed = observed_shed_w(&mut *conn, &[ev.id])
        .await?
        .remove(&ev.id)
        .unwrap_or(0.0);
    Ok(EventView::new(ev.clone(), counts, shed))
}

/// Target counts by state for each of `events`.
pub async fn target_counts(
    db: impl PgExecutor<'_>,
    events: &[EventId],
) -> Result<BTreeMap<EventId, BTreeMap<String, i64>>, StoreError> {
    let ids: Vec<Uuid> = events.iter().map(|e| e.0).collect();
    let rows = sqlx::query(
        "SELECT event_id, state, count(*) FROM curtailment_target WHERE event_id = ANY($1) GROUP BY event_id, state",
    )
    .bind(&ids)
    .fetch_all(db)
    .await?;
    let mut out: BTreeMap<EventId, BTreeMap<String, i64>> = BTreeMap::new();
    for r in rows {
        out.entry(EventId(r.get(0)))
            .or_default()
            .insert(r.get(1), r.get(2));
    }
    Ok(out)
}

/// The power each event sheds now, in watts: baseline minus latest observed power (never below 0
/// per target) over its confirmed targets. It is derived from telemetry, never from a stored copy,
/// by the same rule as `ebb_site_shed_watts` ([`crate::gauges`]). Events without confirmed
/// targets are absent (they shed nothing).
pub async fn observed_shed_w(
    db: impl PgExecutor<'_>,
    events: &[EventId],
) -> Result<BTreeMap<EventId, f64>, StoreError> {
    let ids: Vec<Uuid> = events.iter().map(|e| e.0).collect();
    let rows = sqlx::query(
        "SELECT t.event_id,
                sum(t.baseline_power_w - least(coalesce(ds.power_w, t.baseline_power_w),
                                               t.baseline_power_w))::float8
         FROM curtailment_target t
         LEFT JOIN device_state ds ON ds.device_id = t.device_id
         WHERE t.event_id = ANY($1) AND t.state = 'confirmed'
         GROUP BY t.event_id",
    )
    .bind(&ids)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (EventId(r.get(0)), r.get(1)))
        .collect())
}

/// One page of an org's events, newest first, after the keyset cursor `before` (an event id).
pub async fn list_events(
    db: impl PgExecutor<'_>,
    org: OrgId,
    state: Option<EventState>,
    before: Option<EventId>,
    limit: i64,
) -> Result<Vec<EventRow>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {EVENT_COLUMNS} FROM curtailment_event
         WHERE org_id = $1 AND ($2::text IS NULL OR state = $2) AND ($3::uuid IS NULL OR id < $3)
         ORDER BY id DESC LIMIT $4"
    ))
    .bind(org.0)
    .bind(state.map(|s| s.as_str()))
    .bind(before.map(|b| b.0))
    .bind(limit)
    .fetch_all(db)
    .await?;
    rows.iter().map(event_from_row).collect()
}

/// Fields of an event an operator may change while it is pending or active; `None` leaves one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EventPatch {
    pub reason: Option<String>,
    pub max_duration_s: Option<u32>,
    pub restore_batch_size: Option<u32>,
    pub restore_batch_interval_s: Option<u32>,
}

/// Applies `patch` to `event` if it is still in `state`: the conditional write re-asserts the
/// state the caller read. `false` when it no longer was (a lost race; nothing written).
pub async fn update_event(
    db: impl PgExecutor<'_>,
    org: OrgId,
    event: EventId,
    state: EventState,
    patch: &EventPatch,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE curtailment_event SET reason = COALESCE($4, reason),
                max_duration_s = COALESCE($5, max_duration_s),
                restore_batch_size = COALESCE($6, restore_batch_size),
                restore_batch_interval_s = COALESCE($7, restore_batch_interval_s),
                updated_at = now()
         WHERE org_id = $1 AND id = $2 AND state = $3",
    )
    .bind(org.0)
    .bind(event.0)
    .bind(state.as_str())
    .bind(patch.reason.as_deref())
    .bind(patch.max_duration_s.map(|v| v as i32))
    .bind(patch.restore_batch_size.map(|v| v as i32))
    .bind(patch.restore_batch_interval_s.map(|v| v as i32))
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// One state change of an event (not of its targets).
#[derive(Clone, Debug, PartialEq)]
pub struct EventTransition {
    pub id: i64,
    pub from: Option<String>,
    pub to: String,
    pub actor: String,
    pub reason: Option<String>,
    pub at: DateTime<Utc>,
}

/// `event`'s own transitions after `after` (a transition id), oldest first, at most `limit`.
pub async fn event_transitions(
    db: impl PgExecutor<'_>,
    event: EventId,
    after: i64,
    limit: i64,
) -> Result<Vec<EventTransition>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, from_state, to_state, actor, reason, at FROM event_transition
         WHERE event_id = $1 AND device_id IS NULL AND id > $2
         ORDER BY id LIMIT $3",
    )
    .bind(event.0)
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows
        .iter()
        .map(|r| EventTransition {
            id: r.get(0),
            from: r.get(1),
            to: r.get(2),
            actor: r.get(3),
            reason: r.get(4),
            at: r.get(5),
        })
        .collect())
}

/// An org's live events (pending, active, restoring), newest first.
pub async fn live_events_of(
    db: impl PgExecutor<'_>,
    org: OrgId,
) -> Result<Vec<EventRow>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {EVENT_COLUMNS} FROM curtailment_event
         WHERE org_id = $1 AND state IN ('pending', 'active', 'restoring') ORDER BY id DESC"
    ))
    .bind(org.0)
    .fetch_all(db)
    .await?;
    rows.iter().map(event_from_row).collect()
}

/// One target as the API lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetView {
    pub device_id: DeviceId,
    pub site: String,
    pub address: String,
    pub state: TargetState,
    pub baseline_power_w: f64,
    /// The device's latest sample: `None` when it did not answer.
    pub observed_power_w: Option<f64>,
    pub sampled_at: Option<DateTime<Utc>>,
    pub retry_count: u32,
    pub last_error: Option<String>,
    pub confirmed_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// A page of `event`'s targets (in `state` when given) after device `after`, by device id.
pub async fn target_page(
    db: impl PgExecutor<'_>,
    event: EventId,
    state: Option<TargetState>,
    after: Option<DeviceId>,
    limit: i64,
) -> Result<Vec<TargetView>, StoreError> {
    let rows = sqlx::query(
        "SELECT t.device_id, s.code, d.address, t.state, t.baseline_power_w, ds.power_w,
                ds.sampled_at, t.retry_count, t.last_error, t.confirmed_at, t.updated_at
         FROM curtailment_target t
         JOIN site s ON s.id = t.site_id
         LEFT JOIN device d ON d.id = t.device_id
         LEFT JOIN device_state ds ON ds.device_id = t.device_id
         WHERE t.event_id = $1 AND ($2::text IS NULL OR t.state = $2)
           AND ($3::uuid IS NULL OR t.device_id > $3)
         ORDER BY t.device_id LIMIT $4",
    )
    .bind(event.0)
    .bind(state.map(|s| s.as_str()))
    .bind(after.map(|a| a.0))
    .bind(limit)
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|r| {
            let state: String = r.get(3);
            Ok(TargetView {
                device_id: DeviceId(r.get(0)),
                site: r.get(1),
                address: r.get::<Option<String>, _>(2).unwrap_or_default(),
                state: state
                    .parse()
                    .map_err(|_| StoreError::Encode(format!("unknown target state {state:?}")))?,
                baseline_power_w: r.get(4),
                observed_power_w: r.get(5),
                sampled_at: r.get(6),
                retry_count: u32::try_from(r.get::<i32, _>(7)).unwrap_or(0),
                last_error: r.get(8),
                confirmed_at: r.get(9),
                updated_at: r.get(10),
            })
        })
        .collect()
}

/// Events the reconciler drives.
pub async fn live_events(db: impl PgExecutor<'_>) -> Result<Vec<EventRow>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {EVENT_COLUMNS} FROM curtailment_event WHERE state IN ('pending', 'active', 'restoring') ORDER BY id"
    ))
    .fetch_all(db)
    .await?;
    rows.iter().map(event_from_row).collect()
}

/// Compare-and-set on an event's state. Returns the updated row, or `None` if it was not in
/// `from` (a lost race). Sets the timestamp that belongs to the new state. Restoring is entered
/// only through [`begin_restore`], which records why.
pub async fn transition_event(
    conn: &mut PgConnection,
    event: &EventRow,
    from: EventState,
    to: EventState,
    actor: &str,
    reason: Option<&str>,
) -> Result<Option<EventRow>, StoreError> {
    debug_assert!(from.can_transition(to), "{from} -> {to}");
    // The database refuses it too: a restoring event must have a stop cause.
    debug_assert!(
        to != EventState::Restoring,
        "restoring is entered by begin_restore"
    );
    let row = sqlx::query(&format!(
        "UPDATE curtailment_event SET state = $3, updated_at = now(),
            activated_at = CASE WHEN $3 = 'active' THEN now() ELSE activated_at END,
            ended_at = CASE WHEN $3 IN ('completed', 'completed_with_failures', 'cancelled', 'failed')
                            THEN now() ELSE ended_at END
         WHERE id = $1 AND state = $2
         RETURNING {EVENT_COLUMNS}"
    ))
    .bind(event.id.0)
    .bind(from.as_str())
    .bind(to.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let updated = event_from_row(&row)?;
    log_event_transition(&mut *conn, &updated, Some(from), to, actor, reason).await?;
    Ok(Some(updated))
}

/// Stop, in the caller's transaction: compare-and-set of a pending or active event to
/// `restoring` that records its typed `cause` and the `reason` text, then
/// [`sweep_targets_for_restore`]. Returns the updated row, or `None` if the event was no longer
/// in `event.state` (a lost race).
pub async fn begin_restore(
    conn: &mut PgConnection,
    event: &EventRow,
    cause: StopCause,
    reason: &str,
    actor: &str,
) -> Result<Option<EventRow>, StoreError> {
    let from = event.state;
    debug_assert!(
        from.can_transition(EventState::Restoring),
        "{from} -> restoring"
    );
    let row = sqlx::query(&format!(
        "UPDATE curtailment_event SET state = 'restoring', updated_at = now(),
            restore_started_at = now(), stop_cause = $3, stop_reason = $4
         WHERE id = $1 AND state = $2
         RETURNING {EVENT_COLUMNS}"
    ))
    .bind(event.id.0)
    .bind(from.as_str())
    .bind(cause.as_str())
    .bind(reason)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let updated = event_from_row(&row)?;
    log_event_transition(
        &mut *conn,
        &updated,
        Some(from),
        EventState::Restoring,
        actor,
        Some(reason),
    )
    .await?;
    sweep_targets_for_restore(conn, event.id, actor).await?;
    Ok(Some(updated))
}

/// Stop's target sweep, in the caller's transaction after the event moved to `restoring`:
/// never-sent targets (no batch ever stamped) end `restored` at once; everything that may have been touched (including
/// failed targets that received a command) goes to `restore_pending`. A failed target whose device
/// another live event has since claimed is left alone: that event owns the miner now.
pub async fn sweep_targets_for_restore(
    conn: &mut PgConnection,
    event: EventId,
    actor: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "WITH moved AS (
            UPDATE curtailment_target t SET
                state = CASE WHEN t.state = 'pending' AND t.last_batch_id IS NULL THEN 'restored'
                             ELSE 'restore_pending' END,
                -- Restore is a new episode: no curtail backoff carries over.
                retry_count = 0, next_attempt_at = NULL, updated_at = now()
            FROM curtailment_target old
            WHERE t.event_id = $1 AND old.event_id = t.event_id AND old.device_id = t.device_id
              AND (t.state IN ('pending', 'dispatching', 'dispatched', 'confirmed', 'drifted')
                   OR (t.state = 'failed' AND t.last_batch_id IS NOT NULL
                       AND NOT EXISTS (SELECT 1 FROM curtailment_target o WHERE o.device_id = t.device_id
                                       AND o.event_id <> t.event_id
                                       AND o.state NOT IN ('failed', 'restored', 'restore_failed'))))
            RETURNING t.org_id, t.device_id, old.state AS from_state, t.state AS to_state),
         -- A confirmed target stops being confirmed here: its interval closes with this
         -- statement (see transition_targets).
         closed AS (
            UPDATE curtailment_interval i SET ended_at = now(),
                end_power_w = (SELECT ds.power_w FROM device_state ds WHERE ds.device_id = i.device_id)
            WHERE i.ended_at IS NULL AND i.event_id = $1
              AND i.device_id = ANY(ARRAY(SELECT m.device_id FROM moved m
                                          WHERE m.from_state = 'confirmed')))
         INSERT INTO event_transition (org_id, event_id, device_id, from_state, to_state, actor, reason)
         SELECT org_id, $1, device_id, from_state, to_state, $2, 'stop' FROM moved",
    )
    .bind(event.0)
    .bind(actor)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A target as the reconciler sees it: its row, its device's address and site, and the device's
/// latest sample.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetRow {
    pub device_id: DeviceId,
    pub site_id: SiteId,
    pub address: String,
    pub state: TargetState,
    pub baseline_power_w: f64,
    pub retry_count: u32,
    /// Why the target last spent an attempt, cleared when it (re)confirms or restores.
    pub last_spend_reason: Option<SpendReason>,
    pub last_batch_id: Option<BatchId>,
    pub prior_power_limit_w: Option<f64>,
    pub dispatched_at: Option<DateTime<Utc>>,
    pub confirmed_at: Option<DateTime<Utc>>,
    /// When the agent reported success for the latest batch.
    pub result_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    pub sample: Option<Sample>,
    /// The device row is gone or moved out of the event's org.
    pub device_missing: bool,
    /// After a spent attempt: not sent again before this (its backoff).
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// Every target of one event (the reconciler reads them once, then only what changed).
pub async fn targets(
    db: impl PgExecutor<'_>,
    event: EventId,
) -> Result<Vec<TargetRow>, StoreError> {
    targets_where(db, event, None, None).await
}

/// The targets of one event on these devices: what the reconciler re-reads after a write, a
/// result or telemetry named them. Query: the target primary key `(event_id, device_id)`.
pub async fn targets_of_devices(
    db: impl PgExecutor<'_>,
    event: EventId,
    devices: &[DeviceId],
) -> Result<Vec<TargetRow>, StoreError> {
    if devices.is_empty() {
        return Ok(Vec::new());
    }
    targets_where(db, event, None, Some(devices)).await
}

/// The targets of one event whose latest batch is `batch` (the result handler's view).
pub async fn targets_of_batch(
    db: impl PgExecutor<'_>,
    scope: BatchScope,
) -> Result<Vec<TargetRow>, StoreError> {
    targets_where(db, scope.event, Some((scope.site, scope.batch)), None).await
}

/// What a site's result may touch: the targets of `event` at `site` whose latest batch is
/// `batch`. A result names its event and batch in its body, which an agent writes; the site is
/// its subject's, which NATS permissions bind to the agent that published it. So a site can only
/// ever change its own targets, and only those still on the batch the result answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchScope {
    pub event: EventId,
    pub site: SiteId,
    pub batch: BatchId,
}

async fn targets_where(
    db: impl PgExecutor<'_>,
    event: EventId,
    batch: Option<(SiteId, BatchId)>,
    devices: Option<&[DeviceId]>,
) -> Result<Vec<TargetRow>, StoreError> {
    let devices: Option<Vec<Uuid>> = devices.map(|d| d.iter().map(|d| d.0).collect());
    let rows = sqlx::query(
        "SELECT t.device_id, t.site_id, d.address, t.state, t.baseline_power_w, t.retry_count, t.last_spend_reason, t.last_batch_id,
                t.prior_power_limit_w, t.dispatched_at, t.confirmed_at, t.result_at, t.updated_at,
                s.reachable, s.power_w, s.hashrate_ths, s.sampled_at, d.id IS NULL AS missing,
                t.next_attempt_at
         FROM curtailment_target t
         LEFT JOIN device d ON d.id = t.device_id AND d.org_id = t.org_id
         LEFT JOIN device_state s ON s.device_id = t.device_id
         WHERE t.event_id = $1 AND ($2::uuid IS NULL OR (t.site_id = $3 AND t.last_batch_id = $2))
           AND ($4::uuid[] IS NULL OR t.device_id = ANY($4))
         ORDER BY t.site_id, t.baseline_power_w DESC, t.device_id",
    )
    .bind(event.0)
    .bind(batch.map(|b| b.1.0))
    .bind(batch.map(|b| b.0.0))
    .bind(devices)
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|r| {
            let state: String = r.get("state");
            let sample = match (
                r.get::<Option<bool>, _>("reachable"),
                r.get::<Option<f64>, _>("power_w"),
                r.get::<Option<f64>, _>("hashrate_ths"),
                r.get::<Option<DateTime<Utc>>, _>("sampled_at"),
            ) {
                (Some(true), Some(power_w), Some(hashrate_ths), Some(sampled_at)) => Some(Sample {
                    power_w,
                    hashrate_ths,
                    sampled_at,
                }),
                _ => None,
            };
            Ok(TargetRow {
                device_id: DeviceId(r.get("device_id")),
                site_id: SiteId(r.get("site_id")),
                address: r.get::<Option<String>, _>("address").unwrap_or_default(),
                state: state
                    .parse()
                    .map_err(|e: ebb_domain::state::UnknownState| {
                        StoreError::Encode(e.to_string())
                    })?,
                baseline_power_w: r.get("baseline_power_w"),
                retry_count: r.get::<i32, _>("retry_count") as u32,
                last_spend_reason: parse_opt(r.get("last_spend_reason"))?,
                last_batch_id: r.get::<Option<Uuid>, _>("last_batch_id").map(BatchId),
                prior_power_limit_w: r.get("prior_power_limit_w"),
                dispatched_at: r.get("dispatched_at"),
                confirmed_at: r.get("confirmed_at"),
                result_at: r.get("result_at"),
                updated_at: r.get("updated_at"),
                sample,
                device_missing: r.get("missing"),
                next_attempt_at: r.get("next_attempt_at"),
            })
        })
        .collect()
}

/// What else changes with a target's state.
#[derive(Clone, Debug, Default)]
pub struct TargetChange {
    /// Stamp this batch id (on `dispatching`).
    pub batch: Option<BatchId>,
    pub set_dispatched_at: bool,
    pub set_confirmed_at: bool,
    pub retry: Retry,
    pub flap: bool,
    pub failure: Failure,
    /// Only move targets whose latest batch is this one (a result for an older batch is stale).
    pub expect_batch: Option<BatchId>,
    /// When each of these devices may be sent again (a spend back into the queue); the others
    /// keep theirs.
    pub next_attempt_at: Vec<(DeviceId, DateTime<Utc>)>,
}

/// What happens to a target's last failure: the typed `last_spend_reason`, with its description
/// in `last_error` and in the transition log's reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Failure {
    #[default]
    Keep,
    /// The target (re)confirmed or restored: nothing is wrong any more.
    Clear,
    Set(SpendReason),
}

/// What happens to the retry counter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Retry {
    #[default]
    Keep,
    /// One more attempt was spent.
    Spend,
    /// The target (re)confirmed: a new episode starts.
    Reset,
}

/// Compare-and-set for many targets of one event from one state to another. Returns the devices
/// that moved; the others were not in `from` (lost races) and are left untouched.
///
/// The same statement keeps the rater's facts: a move into `confirmed` opens a
/// `curtailment_interval` per moved target (its baseline and the device's latest power), a move
/// out of it closes the open one (the power at exit). Both are CTEs of this one statement, so a
/// batch costs no extra round trip and the facts commit or roll back with the moves; for any
/// other pair of states their one-time filter skips them (ADR 0012).
pub async fn transition_targets(
    db: impl PgExecutor<'_>,
    event: EventId,
    devices: &[DeviceId],
    from: TargetState,
    to: TargetState,
    change: &TargetChange,
    actor: &str,
) -> Result<Vec<DeviceId>, StoreError> {
    debug_assert!(from.can_transition(to), "{from} -> {to}");
    if devices.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = devices.iter().map(|d| d.0).collect();
    let (set_failure, failure) = match change.failure {
        Failure::Keep => (false, None),
        Failure::Clear => (true, None),
        Failure::Set(r) => (true, Some(r)),
    };
    let rows = sqlx::query(
        "WITH moved AS (
            UPDATE curtailment_target SET state = $4, updated_at = now(),
                last_batch_id = COALESCE($5, last_batch_id),
                result_at = CASE WHEN $5::uuid IS NULL THEN result_at ELSE NULL END,
                dispatched_at = CASE WHEN $6 THEN now() ELSE dispatched_at END,
                confirmed_at = CASE WHEN $7 THEN now() ELSE confirmed_at END,
                retry_count = CASE $8 WHEN 'spend' THEN retry_count + 1 WHEN 'reset' THEN 0 ELSE retry_count END,
                flap_count = flap_count + CASE WHEN $9 THEN 1 ELSE 0 END,
                last_error = CASE WHEN $10 THEN $11 ELSE last_error END,
                last_spend_reason = CASE WHEN $10 THEN $14 ELSE last_spend_reason END,
                next_attempt_at = COALESCE(
                    (SELECT u.at FROM unnest($15::uuid[], $16::timestamptz[]) AS u(id, at)
                     WHERE u.id = curtailment_target.device_id LIMIT 1),
                    next_attempt_at)
            WHERE event_id = $1 AND device_id = ANY($2) AND state = $3
              AND ($13::uuid IS NULL OR last_batch_id = $13)
            RETURNING org_id, device_id, site_id, baseline_power_w),
         opened AS (
            INSERT INTO curtailment_interval (org_id, event_id, device_id, site_id, started_at,
                                              baseline_power_w, start_power_w)
            SELECT m.org_id, $1, m.device_id, m.site_id, now(), m.baseline_power_w,
                   (SELECT ds.power_w FROM device_state ds WHERE ds.device_id = m.device_id)
            FROM moved m
            WHERE $4 = 'confirmed'
            ON CONFLICT (device_id, event_id) WHERE ended_at IS NULL DO NOTHING),
         -- The moved devices as an array, probed in `curtailment_interval_open` (device first):
         -- a join with `moved`, whose row estimate is a guess, can turn into a nested loop
         -- quadratic in the batch.
         closed AS (
            UPDATE curtailment_interval i SET ended_at = now(),
                end_power_w = (SELECT ds.power_w FROM device_state ds WHERE ds.device_id = i.device_id)
            WHERE $3 = 'confirmed' AND i.ended_at IS NULL AND i.event_id = $1
              AND i.device_id = ANY(ARRAY(SELECT m.device_id FROM moved m)))
         INSERT INTO event_transition (org_id, event_id, device_id, from_state, to_state, actor, reason)
         SELECT org_id, $1, device_id, $3, $4, $12, $11 FROM moved
         RETURNING device_id",
    )
    .bind(event.0)
    .bind(&ids)
    .bind(from.as_str())
    .bind(to.as_str())
    .bind(change.batch.map(|b| b.0))
    .bind(change.set_dispatched_at)
    .bind(change.set_confirmed_at)
    .bind(match change.retry {
        Retry::Keep => "keep",
        Retry::Spend => "spend",
        Retry::Reset => "reset",
    })
    .bind(change.flap)
    .bind(set_failure)
    .bind(failure.map(SpendReason::description))
    .bind(actor)
    .bind(change.expect_batch.map(|b| b.0))
    .bind(failure.map(SpendReason::as_str))
    .bind(
        change
            .next_attempt_at
            .iter()
            .map(|(d, _)| d.0)
            .collect::<Vec<Uuid>>(),
    )
    .bind(
        change
            .next_attempt_at
            .iter()
            .map(|(_, at)| *at)
            .collect::<Vec<DateTime<Utc>>>(),
    )
    .fetch_all(db)
    .await?;
    Ok(rows.iter().map(|r| DeviceId(r.get(0))).collect())
}

/// Stamps `dispatching` on targets of a live event before their batch is published
/// (DESIGN §5.1). The event row is held `FOR SHARE` for the transaction, so an admin terminate
/// (which takes it `FOR UPDATE`) cannot interleave; a terminal event stamps nothing.
#[allow(clippy::too_many_arguments)] // reason: one compare-and-set, every argument is part of it
pub async fn stamp_dispatching(
    conn: &mut PgConnection,
    event: EventId,
    devices: &[DeviceId],
    from: TargetState,
    to: TargetState,
    batch: BatchId,
    retry: Retry,
    actor: &str,
) -> Result<Vec<DeviceId>, StoreError> {
    let state: Option<String> =
        sqlx::query_scalar("SELECT state FROM curtailment_event WHERE id = $1 FOR SHARE")
            .bind(event.0)
            .fetch_optional(&mut *conn)
            .await?;
    let live = state
        .and_then(|s| s.parse::<EventState>().ok())
        .is_some_and(|s| !s.is_terminal());
    if !live {
        return Ok(Vec::new());
    }
    let change = TargetChange {
        batch: Some(batch),
        retry,
        ..Default::default()
    };
    transition_targets(&mut *conn, event, devices, from, to, &change, actor).await
}

/// Records the power limit each miner had before its curtail, as the agent reported it.
pub async fn record_prior_power_limits(
    db: impl PgExecutor<'_>,
    scope: BatchScope,
    limits: &[(DeviceId, f64)],
) -> Result<(), StoreError> {
    if limits.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = limits.iter().map(|l| l.0.0).collect();
    let w: Vec<f64> = limits.iter().map(|l| l.1).collect();
    // A limit above what the miner's model draws at most (with room for overclocked firmware)
    // is not the miner's: restoring it would be a forged command. It is not recorded.
    sqlx::query(
        "UPDATE curtailment_target t SET prior_power_limit_w = u.w
         FROM unnest($2::uuid[], $3::float8[]) AS u(id, w), device d
         WHERE t.event_id = $1 AND t.device_id = u.id AND t.prior_power_limit_w IS NULL
           AND t.site_id = $4 AND t.last_batch_id = $5
           AND d.id = t.device_id AND (d.nominal_power_w IS NULL OR u.w <= d.nominal_power_w * 1.5)",
    )
    .bind(scope.event.0)
    .bind(&ids)
    .bind(&w)
    .bind(scope.site.0)
    .bind(scope.batch.0)
    .execute(db)
    .await?;
    Ok(())
}

/// Records that the agent executed `batch` successfully on these devices: the confirmation
/// deadline starts now. Only targets still waiting on that batch are touched.
pub async fn record_results(
    db: impl PgExecutor<'_>,
    scope: BatchScope,
    devices: &[DeviceId],
) -> Result<(), StoreError> {
    if devices.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = devices.iter().map(|d| d.0).collect();
    sqlx::query(
        "UPDATE curtailment_target SET result_at = now()
         WHERE event_id = $1 AND last_batch_id = $2 AND device_id = ANY($3) AND site_id = $4
           AND state IN ('dispatched', 'restore_dispatched') AND result_at IS NULL",
    )
    .bind(scope.event.0)
    .bind(scope.batch.0)
    .bind(&ids)
    .bind(scope.site.0)
    .execute(db)
    .await?;
    Ok(())
}

/// Whether the backend `pid` still holds the advisory lock `key`: the reconciler's fence, checked
/// inside each dispatch stamp so a deposed leader cannot stamp (and so publish) anything.
pub async fn holds_advisory_lock(
    db: impl PgExecutor<'_>,
    pid: i32,
    key: i64,
) -> Result<bool, StoreError> {
    let held: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = $1
                          AND classid::bigint = ($2 >> 32) AND objid::bigint = ($2 & 4294967295) AND objsubid = 1)",
    )
    .bind(pid)
    .bind(key)
    .fetch_one(db)
    .await?;
    Ok(held)
}

/// Marks the time of the latest restore batch (the pacing gate reads it).
pub async fn mark_restore_batch(
    db: impl PgExecutor<'_>,
    event: EventId,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE curtailment_event SET last_restore_batch_at = $2, updated_at = now() WHERE id = $1",
    )
    .bind(event.0)
    .bind(at)
    .execute(db)
    .await?;
    Ok(())
}

/// The restores sent since `since`, by site: when each target's restore batch went out and the
/// kW it draws again. Read once when a reconciler becomes leader, so that a site's ramp limit
/// also holds across a change of leader. Query: a scan of the live events' restore targets.
pub async fn recent_restore_sends(
    db: impl PgExecutor<'_>,
    since: DateTime<Utc>,
) -> Result<Vec<(SiteId, DateTime<Utc>, f64)>, StoreError> {
    let rows = sqlx::query(
        "SELECT t.site_id, t.dispatched_at, t.baseline_power_w FROM curtailment_target t
         JOIN curtailment_event e ON e.id = t.event_id
         WHERE (e.state = 'restoring' OR e.ended_at > $1) AND t.dispatched_at > $1
           AND t.state IN ('restore_dispatching', 'restore_dispatched', 'restored', 'restore_failed')",
    )
    .bind(since)
    .fetch_all(db)
    .await?;
    Ok(rows
        .iter()
        .map(|r| (SiteId(r.get(0)), r.get(1), r.get::<f64, _>(2) / 1000.0))
        .collect())
}

/// The event a batch belongs to, found from a result message.
pub async fn event_of_batch(
    db: &PgPool,
    site: SiteId,
    batch: BatchId,
) -> Result<Option<EventId>, StoreError> {
    let id: Option<Uuid> = sqlx::query_scalar(
        "SELECT event_id FROM curtailment_target WHERE last_batch_id = $1 AND site_id = $2 LIMIT 1",
    )
    .bind(batch.0)
    .bind(site.0)
    .fetch_optional(db)
    .await?;
    Ok(id.map(EventId))
}

/// The PostgreSQL `NOTIFY` channel of event changes: every transition [`announce`]s on it (the
/// payload is the event id), delivered when its transaction commits. The reconciler's leader
/// listens, so a Start or a Stop is acted on at once instead of at the next telemetry or
/// safety tick.
pub const EVENT_CHANNEL: &str = "ebb.events";

/// Device ids an `ebb.targets.failed` message lists at most: a 100,000-miner event's failures
/// stay one message, with the count.
pub const FAILED_IDS_SHOWN: usize = 100;

/// Announces, in the caller's transaction (the one that moved them), that `devices` of `event`
/// exhausted their attempts in `phase` (`curtail` or `restore`) for `reason`: one
/// `ebb.targets.failed` message on the feed and one delivery per webhook endpoint that wants it,
/// its data the event as the API shows it plus the aggregate (`failed_targets`: phase, reason,
/// count, the batch when one result failed them, and up to [`FAILED_IDS_SHOWN`] device ids).
pub async fn announce_targets_failed(
    conn: &mut PgConnection,
    event: EventId,
    batch: Option<BatchId>,
    phase: &str,
    reason: &str,
    devices: &[DeviceId],
) -> Result<(), StoreError> {
    if devices.is_empty() {
        return Ok(());
    }
    let row = sqlx::query(&format!(
        "SELECT {EVENT_COLUMNS} FROM curtailment_event WHERE id = $1"
    ))
    .bind(event.0)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(StoreError::NotFound)?;
    let ev = event_from_row(&row)?;
    let mut data = serde_json::to_value(view(&mut *conn, &ev).await?)
        .map_err(|e| StoreError::Encode(e.to_string()))?;
    let mut shown: Vec<String> = devices.iter().map(|d| d.0.to_string()).collect();
    shown.sort();
    shown.truncate(FAILED_IDS_SHOWN);
    data["failed_targets"] = serde_json::json!({
        "phase": phase,
        "reason": reason,
        "count": devices.len(),
        "batch_id": batch.map(|b| b.0),
        "device_ids": shown,
        "device_ids_truncated": devices.len() > FAILED_IDS_SHOWN,
    });
    let at = Utc::now();
    let notice = crate::outbox::Notice::TargetsFailed {
        event_id: ev.id,
        org_id: ev.org_id,
        at,
        data: data.clone(),
    };
    let id = crate::outbox::enqueue_traced(
        &mut *conn,
        Some(ev.org_id),
        &notice,
        ev.traceparent.as_deref(),
    )
    .await?;
    let message = ebb_webhooks::Event {
        id: id.into(),
        event_type: ebb_webhooks::EventType::TargetsFailed,
        time: at,
        subject: ev.id.to_string(),
        data,
    };
    crate::webhooks::enqueue(&mut *conn, ev.org_id, &message).await?;
    Ok(())
}

/// The feed's and the webhooks' type for an event that reached `state` (a pending event was
/// just started).
pub fn event_type(state: EventState) -> ebb_webhooks::EventType {
    use ebb_webhooks::EventType as T;
    match state {
        EventState::Pending => T::CurtailmentStarted,
        EventState::Active => T::CurtailmentActive,
        EventState::Restoring => T::CurtailmentRestoring,
        EventState::Completed => T::CurtailmentCompleted,
        EventState::CompletedWithFailures => T::CurtailmentCompletedWithFailures,
        EventState::Cancelled => T::CurtailmentCancelled,
        EventState::Failed => T::CurtailmentFailed,
    }
}

/// Queues the notice of a state change (published on the event feed by the worker, in the trace
/// of the request that started the event), in the caller's transaction, and notifies [`EVENT_CHANNEL`] when it commits.
pub async fn announce(
    conn: &mut PgConnection,
    event: &EventRow,
    from: Option<EventState>,
    reason: Option<&str>,
) -> Result<(), StoreError> {
    // The feed and the webhooks carry the event as `GET /v1/curtailments/{id}` shows it.
    let data = serde_json::to_value(view(&mut *conn, event).await?)
        .map_err(|e| StoreError::Encode(e.to_string()))?;
    let notice = crate::outbox::Notice::EventTransition {
        event_id: event.id,
        org_id: event.org_id,
        state: event.state,
        from,
        reason: reason.map(str::to_owned),
        at: event.updated_at,
        data: Some(data.clone()),
    };
    let id = crate::outbox::enqueue_traced(
        &mut *conn,
        Some(event.org_id),
        &notice,
        event.traceparent.as_deref(),
    )
    .await?;
    // Webhook deliveries are written with the transition, under the same id as its feed
    // message: a receiver can deduplicate across both.
    let message = ebb_webhooks::Event {
        id: id.into(),
        event_type: event_type(event.state),
        time: event.updated_at,
        subject: event.id.to_string(),
        data,
    };
    crate::webhooks::enqueue(&mut *conn, event.org_id, &message).await?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(EVENT_CHANNEL)
        .bind(event.id.0.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// How many targets of `event` may still be curtailed or have a command in flight: those block an
/// admin terminate (DESIGN §5.1). The states are the domain's
/// ([`TargetState::blocks_terminate`]), so the rule is written once. A queued target that already
/// received a command counts too.
pub async fn targets_blocking_terminate(
    conn: &mut PgConnection,
    event: EventId,
) -> Result<i64, StoreError> {
    let blocking: Vec<&str> = TargetState::ALL
        .iter()
        .filter(|s| s.blocks_terminate())
        .map(|s| s.as_str())
        .collect();
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM curtailment_target WHERE event_id = $1 AND (
            state = ANY($2)
            OR (state IN ('pending', 'failed') AND last_batch_id IS NOT NULL
                AND NOT EXISTS (SELECT 1 FROM curtailment_target o WHERE o.device_id = curtailment_target.device_id
                                AND o.event_id <> curtailment_target.event_id
                                AND o.state NOT IN ('failed', 'restored', 'restore_failed'))))",
    )
    .bind(event.0)
    .bind(&blocking)
    .fetch_one(&mut *conn)
    .await?;
    Ok(n)
}

/// Terminate's sweep: targets that never received a command end `restored` (nothing to undo).
/// An abort's release of every target `event` still holds, without restoring anything (the
/// break-glass path outside the target state machine): a target never sent anything ends
/// `restored`, every other one `restore_failed` (its miner may be left curtailed), so the
/// exclusivity index frees every device. Returns (released untouched, possibly left asleep).
pub async fn abort_targets(
    conn: &mut PgConnection,
    event: EventId,
    actor: &str,
) -> Result<(u64, u64), StoreError> {
    let rows = sqlx::query(
        "WITH moved AS (
            UPDATE curtailment_target t SET
                state = CASE WHEN t.state = 'pending' AND t.last_batch_id IS NULL
                             THEN 'restored' ELSE 'restore_failed' END,
                last_error = CASE WHEN t.state = 'pending' AND t.last_batch_id IS NULL
                                  THEN t.last_error
                                  ELSE 'aborted: its miner was never restored' END,
                updated_at = now()
            FROM curtailment_target old
            WHERE t.event_id = $1 AND old.event_id = t.event_id AND old.device_id = t.device_id
              AND (t.state NOT IN ('failed', 'restored', 'restore_failed')
                   -- A failed target that was sent a command may have been curtailed: a stop
                   -- would restore it (sweep_targets_for_restore), an abort says it may be
                   -- asleep, unless another live event holds its device now.
                   OR (t.state = 'failed' AND t.last_batch_id IS NOT NULL
                       AND NOT EXISTS (SELECT 1 FROM curtailment_target o WHERE o.device_id = t.device_id
                                       AND o.event_id <> t.event_id
                                       AND o.state NOT IN ('failed', 'restored', 'restore_failed'))))
            RETURNING t.org_id, t.device_id, old.state AS from_state, t.state AS to_state)
         , logged AS (
            INSERT INTO event_transition (org_id, event_id, device_id, from_state, to_state, actor, reason)
            SELECT org_id, $1, device_id, from_state, to_state, $2, 'abort' FROM moved)
         SELECT count(*) FILTER (WHERE to_state = 'restored'),
                count(*) FILTER (WHERE to_state = 'restore_failed')
         FROM moved",
    )
    .bind(event.0)
    .bind(actor)
    .fetch_one(&mut *conn)
    .await?;
    Ok((
        u64::try_from(rows.get::<i64, _>(0)).unwrap_or(0),
        u64::try_from(rows.get::<i64, _>(1)).unwrap_or(0),
    ))
}

pub async fn sweep_targets_for_terminate(
    conn: &mut PgConnection,
    event: EventId,
    actor: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "WITH moved AS (
            UPDATE curtailment_target SET state = 'restored', updated_at = now()
            WHERE event_id = $1 AND state = 'pending' AND last_batch_id IS NULL
            RETURNING org_id, device_id)
         INSERT INTO event_transition (org_id, event_id, device_id, from_state, to_state, actor, reason)
         SELECT org_id, $1, device_id, 'pending', 'restored', $2, 'terminate' FROM moved",
    )
    .bind(event.0)
    .bind(actor)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
