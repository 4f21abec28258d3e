//! The planner: the live fleet snapshot, preview, start and stop of curtailments, and the device
//! inventory agents drive. It answers over the NATS service API (`ebb.svc.planner.*`); the same
//! [`Planner`] methods are called directly by tests.

pub mod config;
pub mod snapshot;
mod validate;

pub use config::PlannerConfig;

use ebb_bus::{
    AbortRequest, Actor, Inventory, InventoryDevice, InventoryRequest, PlanView, PreviewRequest,
    RegisterDevicesReply, RegisterDevicesRequest, Request, Role, RpcError, RpcErrorKind, SiteShare,
    StartReply, StartRequest, StopReply, StopRequest, TerminateRequest, UpdateReply, UpdateRequest,
    subjects,
};
use ebb_domain::selection::{Plan, SelectionError, SelectionParams, select};
use ebb_domain::{EventId, EventState, SiteCode, SiteId, StopCause};
use ebb_store::events::{self, NewEvent};
use ebb_store::{PgPool, StoreError, fleet, tx::with_tx};
use futures::StreamExt;
use snapshot::Snapshot;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// The planner as a service of the runtime: answers `ebb.svc.planner.*` until shutdown.
#[derive(Debug)]
pub struct PlannerService;

impl ebb_runtime::Service for PlannerService {
    type Settings = PlannerConfig;
    const NAME: &'static str = "planner";
    const ABOUT: &'static str = "Selection, preview, start and stop of curtailments (NATS service)";
    const NEEDS: ebb_runtime::Needs = ebb_runtime::Needs::DatabaseAndNats;
    const STREAMS: &'static [&'static str] = &[];

    async fn run(config: PlannerConfig, ctx: ebb_runtime::Context) -> anyhow::Result<()> {
        let planner = Arc::new(Planner::new(ctx.pool()?.clone(), config));
        serve(planner, ctx.nats().clone(), ctx.shutdown.clone()).await
    }
}

/// Serves the planner's endpoints on `client` until `shutdown`, and feeds the fleet snapshot
/// from live telemetry meanwhile. Requests are handled concurrently, at most
/// [`MAX_CONCURRENT_REQUESTS`] at a time.
pub async fn serve(
    planner: Arc<Planner>,
    client: async_nats::Client,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let telemetry = client
        .subscribe(format!("{}.*", subjects::TELEMETRY_PREFIX))
        .await
        .map_err(|e| anyhow::anyhow!("subscribing to telemetry: {e}"))?;
    let feed = feed_telemetry(planner.snapshot.clone(), telemetry, shutdown.clone());
    let (served, ()) = tokio::join!(serve_requests(planner, client, shutdown), feed);
    served
}

/// Applies every telemetry message to the snapshot until `shutdown`. The site is the subject's
/// (NATS permissions bind it to the agent that published), never the body's.
async fn feed_telemetry(
    snapshot: Arc<Snapshot>,
    mut messages: async_nats::Subscriber,
    shutdown: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => return,
            m = messages.next() => match m {
                Some(m) => m,
                None => return,
            },
        };
        let Some(site) = subjects::site_of(subjects::TELEMETRY_PREFIX, &message.subject)
            .and_then(|s| SiteCode::parse(s).ok())
        else {
            continue;
        };
        match ebb_bus::decode::<ebb_bus::TelemetryBatch>(&message.payload) {
            Ok(env) => {
                let applied = snapshot.apply_telemetry(&site, &env.body);
                metrics::counter!(ebb_obs::names::PLANNER_TELEMETRY_SAMPLES)
                    .increment(applied as u64);
            }
            Err(e) => tracing::debug!(%site, error = %e, "undecodable telemetry ignored"),
        }
    }
}

async fn serve_requests(
    planner: Arc<Planner>,
    client: async_nats::Client,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use async_nats::service::ServiceExt;
    let service = client
        .service_builder()
        .description("ebb planner: preview, start, stop, inventory")
        .start(subjects::PLANNER_SERVICE, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| anyhow::anyhow!("starting planner service: {e}"))?;
    let group = service.group(subjects::PLANNER_GROUP);
    let mut streams = Vec::new();
    for verb in VERBS {
        // Per-site endpoints take the site from the subject's last token.
        let subject = if PER_SITE.contains(&verb) {
            format!("{verb}.*")
        } else {
            verb.to_owned()
        };
        let ep = group
            .endpoint_builder()
            .name(verb)
            .add(subject)
            .await
            .map_err(|e| anyhow::anyhow!("endpoint {verb}: {e}"))?;
        streams.push(ep.map(move |r| (verb, r)).boxed());
    }
    let requests = futures::stream::select_all(streams).take_until(shutdown.cancelled_owned());
    requests
        .for_each_concurrent(MAX_CONCURRENT_REQUESTS, |(verb, req)| {
            let planner = planner.clone();
            // The caller's (the gateway's) trace continues here.
            let span = tracing::info_span!(
                "planner request",
                ebb.service = "planner",
                otel.kind = "server",
                verb,
                event_id = tracing::field::Empty,
            );
            ebb_obs::trace::follow_headers(&span, req.message.headers.as_ref());
            async move {
                let payload = planner
                    .handle(verb, &req.message.subject, &req.message.payload)
                    .await;
                if let Err(e) = req.respond(Ok(payload)).await {
                    tracing::warn!(verb, error = %e, "could not send planner reply");
                }
            }
            .instrument(span)
        })
        .await;
    service.stop().await.ok();
    Ok(())
}

/// The endpoints served per site, `ebb.svc.planner.<verb>.<site>`.
const PER_SITE: [&str; 2] = [InventoryRequest::VERB, RegisterDevicesRequest::VERB];

/// The planner's endpoints, by verb.
pub const VERBS: [&str; 8] = [
    AbortRequest::VERB,
    PreviewRequest::VERB,
    StartRequest::VERB,
    StopRequest::VERB,
    TerminateRequest::VERB,
    UpdateRequest::VERB,
    InventoryRequest::VERB,
    RegisterDevicesRequest::VERB,
];

/// Bound on requests in progress at once.
pub const MAX_CONCURRENT_REQUESTS: usize = 64;

/// Start retries when a concurrent Start claimed some of the selected devices first.
const EXCLUSIVITY_RETRIES: u32 = 3;

/// A refusal (not enough load, nothing to select) decided on a snapshot older than this is
/// checked against a fresh one before it is returned.
const RECHECK_REFUSAL_AFTER: Duration = Duration::from_secs(1);

/// The planner's logic over the database and its fleet snapshot.
#[derive(Clone)]
pub struct Planner {
    pool: PgPool,
    config: PlannerConfig,
    /// The live fleet, shared by every request (and every clone of this planner).
    snapshot: Arc<Snapshot>,
}

impl Planner {
    pub fn new(pool: PgPool, config: PlannerConfig) -> Self {
        let snapshot = Arc::new(Snapshot::new(Duration::from_millis(
            config.snapshot_max_age_ms,
        )));
        Self {
            pool,
            config,
            snapshot,
        }
    }

    /// The live fleet snapshot (benchmarks and tests feed and inspect it).
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
    }

    /// Decodes a request for `verb` that arrived on `subject`, runs it, and encodes the reply;
    /// never panics on bad input.
    pub async fn handle(&self, verb: &str, subject: &str, payload: &[u8]) -> bytes::Bytes {
        use ebb_bus::rpc::answer;
        let site = || {
            ebb_bus::endpoints::site_of_planner_subject(verb, subject).ok_or_else(|| {
                RpcError::new(
                    RpcErrorKind::InvalidArgument,
                    format!("{subject} names no site"),
                )
            })
        };
        let reply = match verb {
            PreviewRequest::VERB => {
                answer(payload, |r: PreviewRequest| async move {
                    self.preview(&r.0).await
                })
                .await
            }
            StartRequest::VERB => {
                answer(
                    payload,
                    |r: StartRequest| async move { self.start(&r).await },
                )
                .await
            }
            StopRequest::VERB => {
                answer(payload, |r: StopRequest| async move { self.stop(&r).await }).await
            }
            TerminateRequest::VERB => {
                answer(payload, |r: TerminateRequest| async move {
                    self.terminate(&r).await
                })
                .await
            }
            AbortRequest::VERB => {
                answer(
                    payload,
                    |r: AbortRequest| async move { self.abort(&r).await },
                )
                .await
            }
            UpdateRequest::VERB => {
                answer(
                    payload,
                    |r: UpdateRequest| async move { self.update(&r).await },
                )
                .await
            }
            InventoryRequest::VERB => {
                answer(payload, |r: InventoryRequest| async move {
                    self.inventory(&site()?, &r).await
                })
                .await
            }
            RegisterDevicesRequest::VERB => {
                answer(payload, |r: RegisterDevicesRequest| async move {
                    self.register(&site()?, &r).await
                })
                .await
            }
            other => ebb_bus::rpc::reply::<()>(Err(RpcError::new(
                RpcErrorKind::NotFound,
                format!("no verb {other}"),
            ))),
        };
        reply.unwrap_or_else(|e| {
            tracing::error!(error = %e, "encoding planner reply");
            bytes::Bytes::new()
        })
    }

    /// What a Start would select, with no side effects (no rows, no metrics).
    pub async fn preview(&self, req: &StartRequest) -> Result<PlanView, RpcError> {
        let valid = validate::start(req, &self.config, None)?;
        let (plan, codes, _) = self.plan_checked(req, &valid, None).await?;
        Ok(plan_view(req, &plan, &codes))
    }

    /// Persists an event and its targets in one transaction, or returns the event an earlier Start
    /// with the same idempotency key or external reference created.
    pub async fn start(&self, req: &StartRequest) -> Result<StartReply, RpcError> {
        if req.actor.role() < Role::Operator {
            return Err(RpcError::new(
                RpcErrorKind::PermissionDenied,
                "starting a curtailment needs the operator role",
            ));
        }
        // The replay check comes first: a retried request returns what was persisted, even if the
        // fleet (or the request's other fields) changed since.
        if let Some(found) = self.replay(req).await? {
            return Ok(StartReply {
                event_id: found,
                replayed: true,
            });
        }
        let org = fleet::org_settings(&self.pool, req.org)
            .await
            .map_err(|e| match e {
                StoreError::NotFound => {
                    RpcError::new(RpcErrorKind::NotFound, "organisation not found")
                }
                other => internal(other),
            })?;
        let valid = validate::start(req, &self.config, Some(&org))?;

        let mut not_before = None;
        for _ in 0..EXCLUSIVITY_RETRIES {
            let (plan, codes, built) = self.plan_checked(req, &valid, not_before).await?;
            match self.persist(req, &valid, &plan, &codes).await {
                Ok(id) => {
                    let chosen: Vec<ebb_domain::DeviceId> =
                        plan.selected.iter().map(|s| s.device_id).collect();
                    self.snapshot.mark_busy(req.org, &chosen);
                    for (reason, n) in &plan.skipped {
                        metrics::counter!(ebb_obs::names::PLANNER_CANDIDATES_EXCLUDED, "reason" => reason.label())
                            .increment(u64::from(*n));
                    }
                    metrics::counter!(ebb_obs::names::PLANNER_STARTS, "mode" => req.mode.label())
                        .increment(1);
                    tracing::Span::current().record("event_id", tracing::field::display(id));
                    tracing::info!(event_id = %id, org = %req.org, devices = plan.selected.len(),
                        shed_kw = plan.expected_shed_kw, "curtailment started");
                    return Ok(StartReply {
                        event_id: id,
                        replayed: false,
                    });
                }
                Err(StoreError::RaceLost(why)) => {
                    tracing::info!(%why, "the snapshot was behind the database; selecting again");
                    not_before = Some(built);
                    continue;
                }
                Err(StoreError::Unique { constraint })
                    if constraint == "curtailment_target_device_exclusive" =>
                {
                    tracing::info!("selected devices were claimed concurrently; selecting again");
                    // The snapshot did not know of that claim: select from a fresh one.
                    not_before = Some(built);
                    continue;
                }
                Err(StoreError::Unique { constraint })
                    if constraint == "curtailment_event_idempotency"
                        || constraint == "curtailment_event_external" =>
                {
                    // A concurrent duplicate won the insert: converge on its event.
                    return match self.replay(req).await? {
                        Some(id) => Ok(StartReply {
                            event_id: id,
                            replayed: true,
                        }),
                        None => Err(RpcError::new(
                            RpcErrorKind::Conflict,
                            "a conflicting curtailment already exists",
                        )),
                    };
                }
                Err(e) => return Err(internal(e)),
            }
        }
        Err(RpcError::new(
            RpcErrorKind::Conflict,
            "devices kept being claimed by concurrent curtailments; try again",
        ))
    }

    async fn replay(&self, req: &StartRequest) -> Result<Option<EventId>, RpcError> {
        if req.idempotency_key.is_none() && req.external_source.is_none() {
            return Ok(None);
        }
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| internal(StoreError::Db(e)))?;
        let external = req
            .external_source
            .as_deref()
            .zip(req.external_reference.as_deref());
        // A failed lookup is an error, never a fall-through to a second insert.
        let found =
            events::find_replay(&mut conn, req.org, req.idempotency_key.as_deref(), external)
                .await
                .map_err(internal)?;
        Ok(found.map(|e| e.id))
    }

    /// [`Self::plan`], with a refusal decided on a snapshot older than
    /// [`RECHECK_REFUSAL_AFTER`] checked once more against a fresh one: what the snapshot cannot
    /// know yet (devices freed by an event that ended) never refuses a request.
    async fn plan_checked(
        &self,
        req: &StartRequest,
        valid: &validate::ValidStart,
        not_before: Option<Instant>,
    ) -> Result<(Plan, BTreeMap<SiteId, String>, Instant), RpcError> {
        let (planned, built) = self.plan(req, valid, not_before).await?;
        match planned {
            Err(SelectionError::InsufficientLoad { .. } | SelectionError::EmptyPlan { .. })
                if built.elapsed() > RECHECK_REFUSAL_AFTER =>
            {
                let (again, built) = self.plan(req, valid, Some(built)).await?;
                again.map(|(p, c)| (p, c, built)).map_err(selection_error)
            }
            other => other.map(|(p, c)| (p, c, built)).map_err(selection_error),
        }
    }

    /// Selects from the snapshot (rebuilt first if older than `not_before`); returns the
    /// selection and when the snapshot it used was built.
    #[allow(clippy::type_complexity)] // reason: one private helper; the tuple is unpacked at once
    async fn plan(
        &self,
        req: &StartRequest,
        valid: &validate::ValidStart,
        not_before: Option<Instant>,
    ) -> Result<
        (
            Result<(Plan, BTreeMap<SiteId, String>), SelectionError>,
            Instant,
        ),
        RpcError,
    > {
        let sites = fleet::sites(&self.pool, req.org).await.map_err(internal)?;
        let mut scope = Vec::new();
        for code in &req.scope.sites {
            match sites.iter().find(|s| &s.code == code) {
                Some(s) => scope.push(s.id),
                None => {
                    return Err(RpcError::invalid(
                        "scope.sites",
                        format!("unknown site {code}"),
                    ));
                }
            }
        }
        let codes: BTreeMap<SiteId, String> =
            sites.iter().map(|s| (s.id, s.code.to_string())).collect();
        let params = SelectionParams {
            now: chrono::Utc::now(),
            stale_after: chrono::Duration::seconds(i64::from(self.config.stale_after_s)),
            min_power_w: valid.min_power_w,
            force_include_maintenance: req.force_include_maintenance,
        };
        let fleet = self
            .snapshot
            .org(&self.pool, req.org, not_before)
            .await
            .map_err(internal)?;
        let fleet = snapshot::read(&fleet);
        let built = fleet.built;
        let plan = fleet.with_scope(&scope, |candidates| select(&req.mode, candidates, &params));
        Ok((plan.map(|p| (p, codes)), built))
    }

    async fn persist(
        &self,
        req: &StartRequest,
        valid: &validate::ValidStart,
        plan: &Plan,
        codes: &BTreeMap<SiteId, String>,
    ) -> Result<EventId, StoreError> {
        let view = plan_view(req, plan, codes);
        let (actor_id, actor_kind) = match &req.actor {
            Actor::ApiKey { key_id, .. } => (Some(*key_id), "api_key"),
            other => (None, other.kind()),
        };
        let new = NewEvent {
            id: EventId::new(),
            org_id: req.org,
            mode: req.mode.label().to_owned(),
            mode_params: serde_json::to_value(req.mode)
                .map_err(|e| StoreError::Encode(e.to_string()))?,
            command: req.mode.command(),
            scope: serde_json::to_value(&req.scope)
                .map_err(|e| StoreError::Encode(e.to_string()))?,
            priority: req.priority,
            reason: valid.reason.clone(),
            target_kw: match req.mode {
                ebb_domain::selection::Mode::Kw { target_kw } => Some(target_kw.get()),
                _ => None,
            },
            selection: serde_json::to_value(&view)
                .map_err(|e| StoreError::Encode(e.to_string()))?,
            restore_batch_size: valid.restore_batch_size,
            restore_batch_interval_s: valid.restore_batch_interval_s,
            max_duration_s: valid.max_duration_s,
            idempotency_key: req.idempotency_key.clone(),
            external_source: req.external_source.clone(),
            external_reference: req.external_reference.clone(),
            created_by: actor_id,
            source_actor: actor_kind.to_owned(),
            // The planner's span is the Start request's (a child of the gateway's): everything
            // done for the event later joins this trace.
            traceparent: ebb_obs::trace::current_traceparent(),
        };
        let selected = plan.selected.clone();
        let flags = serde_json::json!({
            "mode": req.mode.label(),
            "devices": selected.len(),
            "expected_shed_kw": plan.expected_shed_kw,
            "force_include_maintenance": req.force_include_maintenance,
            "allow_unbounded": req.allow_unbounded,
        });
        let org = req.org;
        let unbounded = req.allow_unbounded;
        let forced = req.force_include_maintenance;
        with_tx(&self.pool, ebb_store::tx::DEFAULT_ATTEMPTS, move |conn| {
            let new = new.clone();
            let selected = selected.clone();
            let flags = flags.clone();
            Box::pin(async move {
                // The snapshot learns of a maintenance flag only when rebuilt: a device put in
                // maintenance since is never curtailed on its word (the caller selects again
                // from a fresh snapshot).
                if !forced {
                    let held = ebb_store::fleet::in_maintenance(&mut *conn, org).await?;
                    if selected.iter().any(|s| held.contains(&s.device_id)) {
                        return Err(StoreError::RaceLost(
                            "a selected device was put in maintenance".into(),
                        ));
                    }
                }
                let event = events::insert_event(conn, &new, &selected).await?;
                events::audit(
                    &mut *conn,
                    org,
                    actor_kind,
                    actor_id,
                    "curtailment_started",
                    Some(event.id.0),
                    flags,
                )
                .await?;
                if unbounded {
                    events::audit(
                        &mut *conn,
                        org,
                        actor_kind,
                        actor_id,
                        "curtailment_unbounded_start",
                        Some(event.id.0),
                        serde_json::json!({}),
                    )
                    .await?;
                }
                if forced {
                    events::audit(
                        &mut *conn,
                        org,
                        actor_kind,
                        actor_id,
                        "curtailment_force_include_maintenance",
                        Some(event.id.0),
                        serde_json::json!({"force_include_maintenance": true}),
                    )
                    .await?;
                }
                events::announce(conn, &event, None, Some(&event.reason)).await?;
                Ok(event.id)
            })
        })
        .await
    }

    /// Moves a pending or active event to `restoring` and queues every touched target for restore.
    /// Stopping an event that is already restoring or ended changes nothing and says so.
    pub async fn stop(&self, req: &StopRequest) -> Result<StopReply, RpcError> {
        if req.actor.role() < Role::Operator {
            return Err(RpcError::new(
                RpcErrorKind::PermissionDenied,
                "stopping a curtailment needs the operator role",
            ));
        }
        let reason = match req.reason.as_deref().map(str::trim) {
            Some(r) if r.chars().count() > validate::MAX_TEXT => {
                return Err(RpcError::invalid(
                    "reason",
                    format!("must be at most {} characters", validate::MAX_TEXT),
                ));
            }
            Some("") | None => "stopped by operator".to_owned(),
            Some(r) => r.to_owned(),
        };
        // Restore pacing overrides (issue 9): a bigger batch is an admin's call; a slower
        // interval is anyone's within the non-admin cap.
        let admin = req.actor.role() >= Role::Admin;
        let gate = |field: &str, what: String| RpcError {
            field: Some(field.to_owned()),
            ..RpcError::new(
                RpcErrorKind::PermissionDenied,
                format!("{what} needs the admin role"),
            )
        };
        if let Some(n) = req.restore_batch_size_override {
            if !(1..=validate::MAX_RESTORE_BATCH).contains(&n) {
                return Err(RpcError::invalid(
                    "restore_batch_size_override",
                    format!("must be between 1 and {}", validate::MAX_RESTORE_BATCH),
                ));
            }
            if !admin {
                return Err(gate(
                    "restore_batch_size_override",
                    "overriding the restore batch size".into(),
                ));
            }
        }
        if let Some(s) = req.restore_batch_interval_s_override {
            if !(1..=validate::MAX_RESTORE_INTERVAL_S).contains(&s) {
                return Err(RpcError::invalid(
                    "restore_batch_interval_s_override",
                    format!("must be between 1 and {}", validate::MAX_RESTORE_INTERVAL_S),
                ));
            }
            if s > self.config.non_admin_max_interval_s && !admin {
                return Err(gate(
                    "restore_batch_interval_s_override",
                    format!(
                        "a restore interval above {} s",
                        self.config.non_admin_max_interval_s
                    ),
                ));
            }
        }
        let pacing = events::EventPatch {
            restore_batch_size: req.restore_batch_size_override,
            restore_batch_interval_s: req.restore_batch_interval_s_override,
            ..events::EventPatch::default()
        };
        let (actor_kind, actor_id) = match &req.actor {
            Actor::ApiKey { key_id, .. } => ("api_key", Some(*key_id)),
            other => (other.kind(), None),
        };
        let (org, id) = (req.org, req.event_id);
        let changed = with_tx(&self.pool, ebb_store::tx::DEFAULT_ATTEMPTS, move |conn| {
            let (reason, pacing) = (reason.clone(), pacing.clone());
            Box::pin(async move {
                let Some(event) = events::lock_event(conn, org, id).await? else {
                    return Err(StoreError::NotFound);
                };
                if !matches!(event.state, EventState::Pending | EventState::Active) {
                    // Overrides are not dropped quietly: the restore already has its pace.
                    if pacing != events::EventPatch::default() {
                        return Ok(Err(event.state));
                    }
                    return Ok(Ok(false));
                }
                if pacing != events::EventPatch::default()
                    && !events::update_event(&mut *conn, org, id, event.state, &pacing).await?
                {
                    return Err(StoreError::RaceLost(format!(
                        "event {id} moved while locked"
                    )));
                }
                let Some(moved) =
                    events::begin_restore(conn, &event, StopCause::Requested, &reason, actor_kind)
                        .await?
                else {
                    return Err(StoreError::RaceLost(format!(
                        "event {id} moved while locked"
                    )));
                };
                events::audit(
                    &mut *conn,
                    org,
                    actor_kind,
                    actor_id,
                    "curtailment_stopped",
                    Some(id.0),
                    serde_json::json!({
                        "reason": reason,
                        "restore_batch_size_override": pacing.restore_batch_size,
                        "restore_batch_interval_s_override": pacing.restore_batch_interval_s,
                    }),
                )
                .await?;
                events::announce(conn, &moved, Some(event.state), Some(&reason)).await?;
                Ok(Ok(true))
            })
        })
        .await
        .map_err(|e| match e {
            StoreError::NotFound => RpcError::new(RpcErrorKind::NotFound, "curtailment not found"),
            other => internal(other),
        })?
        .map_err(|state| {
            RpcError::new(
                RpcErrorKind::InvalidState,
                format!(
                    "the curtailment is {state}: its restore pacing can no longer be overridden"
                ),
            )
        })?;
        Ok(StopReply {
            event_id: id,
            changed,
        })
    }

    /// Changes a pending or active event (issue 9). Fields equal to the stored value are dropped
    /// first; an empty effective change is a no-op with no audit row; the admin gates of DESIGN
    /// invariant 11 apply to the effective change; the write re-asserts the state read, and a
    /// lost race is [`RpcErrorKind::StateRace`], distinct from [`RpcErrorKind::InvalidState`].
    pub async fn update(&self, req: &UpdateRequest) -> Result<UpdateReply, RpcError> {
        if req.actor.role() < Role::Operator {
            return Err(RpcError::new(
                RpcErrorKind::PermissionDenied,
                "changing a curtailment needs the operator role",
            ));
        }
        if req.reason.is_none()
            && req.max_duration_s.is_none()
            && req.restore_batch_size.is_none()
            && req.restore_batch_interval_s.is_none()
        {
            return Err(RpcError::new(
                RpcErrorKind::InvalidArgument,
                "the request changes nothing: name at least one of reason, max_duration_s, \
                 restore_batch_size, restore_batch_interval_s",
            ));
        }
        let reason = match req.reason.as_deref().map(str::trim) {
            Some("") => return Err(RpcError::invalid("reason", "must not be blank")),
            Some(r) if r.chars().count() > validate::MAX_TEXT => {
                return Err(RpcError::invalid(
                    "reason",
                    format!("must be at most {} characters", validate::MAX_TEXT),
                ));
            }
            other => other.map(str::to_owned),
        };
        let within = |field: &str, v: Option<u32>, hi: u32| match v {
            Some(v) if !(1..=hi).contains(&v) => Err(RpcError::invalid(
                field,
                format!("must be between 1 and {hi}"),
            )),
            _ => Ok(()),
        };
        within(
            "max_duration_s",
            req.max_duration_s,
            validate::MAX_DURATION_S,
        )?;
        within(
            "restore_batch_size",
            req.restore_batch_size,
            validate::MAX_RESTORE_BATCH,
        )?;
        within(
            "restore_batch_interval_s",
            req.restore_batch_interval_s,
            validate::MAX_RESTORE_INTERVAL_S,
        )?;
        let not_found = || RpcError::new(RpcErrorKind::NotFound, "curtailment not found");
        let event = events::get_event(&self.pool, req.org, req.event_id)
            .await
            .map_err(internal)?
            .ok_or_else(not_found)?;
        if !matches!(event.state, EventState::Pending | EventState::Active) {
            return Err(RpcError::new(
                RpcErrorKind::InvalidState,
                format!(
                    "a curtailment can be changed while pending or active, and this one is {}",
                    event.state
                ),
            ));
        }
        // Only what differs from the stored value is a change.
        let patch = events::EventPatch {
            reason: reason.filter(|r| *r != event.reason),
            max_duration_s: req
                .max_duration_s
                .filter(|v| Some(*v) != event.max_duration_s),
            restore_batch_size: req
                .restore_batch_size
                .filter(|v| *v != event.restore_batch_size),
            restore_batch_interval_s: req
                .restore_batch_interval_s
                .filter(|v| *v != event.restore_batch_interval_s),
        };
        let mut changed = serde_json::Map::new();
        let mut note = |field: &str, from: serde_json::Value, to: serde_json::Value| {
            changed.insert(
                field.to_owned(),
                serde_json::json!({"from": from, "to": to}),
            );
        };
        if let Some(r) = &patch.reason {
            note("reason", event.reason.clone().into(), r.clone().into());
        }
        if let Some(v) = patch.max_duration_s {
            note("max_duration_s", event.max_duration_s.into(), v.into());
        }
        if let Some(v) = patch.restore_batch_size {
            note(
                "restore_batch_size",
                event.restore_batch_size.into(),
                v.into(),
            );
        }
        if let Some(v) = patch.restore_batch_interval_s {
            note(
                "restore_batch_interval_s",
                event.restore_batch_interval_s.into(),
                v.into(),
            );
        }
        if changed.is_empty() {
            return Ok(UpdateReply {
                event_id: event.id,
                changed: Vec::new(),
            });
        }
        // DESIGN invariant 11, on the effective change.
        let admin = req.actor.role() >= Role::Admin;
        let gate = |field: &str, what: &str| RpcError {
            field: Some(field.to_owned()),
            ..RpcError::new(
                RpcErrorKind::PermissionDenied,
                format!("{what} needs the admin role"),
            )
        };
        if let Some(v) = patch.max_duration_s {
            let org = ebb_store::fleet::org_settings(&self.pool, req.org)
                .await
                .map_err(internal)?;
            if v > org.default_max_duration_s && !admin {
                return Err(gate(
                    "max_duration_s",
                    "a max_duration_s above the organisation default",
                ));
            }
        }
        if let Some(v) = patch.restore_batch_interval_s
            && v > self.config.non_admin_max_interval_s
            && !admin
        {
            return Err(gate(
                "restore_batch_interval_s",
                &format!(
                    "a restore interval above {} s",
                    self.config.non_admin_max_interval_s
                ),
            ));
        }
        let (actor_kind, actor_id) = match &req.actor {
            Actor::ApiKey { key_id, .. } => ("api_key", Some(*key_id)),
            other => (other.kind(), None),
        };
        let (org, id, state) = (req.org, event.id, event.state);
        let fields: Vec<String> = changed.keys().cloned().collect();
        let metadata = serde_json::json!({ "changed": changed });
        let applied = with_tx(&self.pool, ebb_store::tx::DEFAULT_ATTEMPTS, move |conn| {
            let (patch, metadata) = (patch.clone(), metadata.clone());
            Box::pin(async move {
                if !events::update_event(&mut *conn, org, id, state, &patch).await? {
                    return Ok(false);
                }
                events::audit(
                    &mut *conn,
                    org,
                    actor_kind,
                    actor_id,
                    "curtailment_updated",
                    Some(id.0),
                    metadata,
                )
                .await?;
                Ok(true)
            })
        })
        .await
        .map_err(internal)?;
        if !applied {
            return Err(RpcError::new(
                RpcErrorKind::StateRace,
                "the curtailment changed state while it was being updated: read it and try again",
            ));
        }
        Ok(UpdateReply {
            event_id: id,
            changed: fields,
        })
    }

    /// An admin releases a stuck event (issue 9): the event ends `failed` and every target it
    /// holds is released without a restore being sent (`restore_failed` when its miner may be
    /// left curtailed, `restored` when it was never sent anything), so its devices can be used
    /// again. Unlike terminate it does not wait for anything in flight: it is the way out when
    /// a restore cannot finish (docs/runbook.md says when).
    pub async fn abort(&self, req: &AbortRequest) -> Result<StopReply, RpcError> {
        if req.actor.role() < Role::Admin {
            return Err(RpcError::new(
                RpcErrorKind::PermissionDenied,
                "aborting a curtailment needs the admin role",
            ));
        }
        let reason = req.reason.trim().to_owned();
        if reason.is_empty() || reason.chars().count() > validate::MAX_TEXT {
            return Err(RpcError::invalid(
                "reason",
                format!("must be 1-{} characters", validate::MAX_TEXT),
            ));
        }
        let key_id = match &req.actor {
            Actor::ApiKey { key_id, .. } => Some(*key_id),
            _ => None,
        };
        let (org, id, kind) = (req.org, req.event_id, req.actor.kind());
        let ended = with_tx(&self.pool, ebb_store::tx::DEFAULT_ATTEMPTS, move |conn| {
            let reason = reason.clone();
            Box::pin(async move {
                let Some(event) = events::lock_event(conn, org, id).await? else {
                    return Err(StoreError::NotFound);
                };
                if event.state.is_terminal() {
                    return Ok(Some(event.state));
                }
                let why = format!("aborted: {reason}");
                let Some(moved) = events::transition_event(
                    conn,
                    &event,
                    event.state,
                    EventState::Failed,
                    kind,
                    Some(&why),
                )
                .await?
                else {
                    return Err(StoreError::RaceLost(format!(
                        "event {id} moved while locked"
                    )));
                };
                let (untouched, asleep) = events::abort_targets(conn, id, kind).await?;
                events::audit(
                    &mut *conn,
                    org,
                    kind,
                    key_id,
                    "curtailment_aborted",
                    Some(id.0),
                    serde_json::json!({
                        "reason": reason,
                        "from_state": event.state.as_str(),
                        "released_untouched": untouched,
                        "possibly_left_curtailed": asleep,
                    }),
                )
                .await?;
                events::announce(conn, &moved, Some(event.state), Some(&why)).await?;
                Ok(None)
            })
        })
        .await
        .map_err(|e| match e {
            StoreError::NotFound => RpcError::new(RpcErrorKind::NotFound, "curtailment not found"),
            other => internal(other),
        })?;
        match ended {
            None => Ok(StopReply {
                event_id: id,
                changed: true,
            }),
            Some(state) => Err(RpcError::new(
                RpcErrorKind::InvalidState,
                format!("the curtailment already ended as {state}"),
            )),
        }
    }

    /// An admin ends an event for good. Refused while any miner may still be curtailed or has a
    /// command in flight (Stop first): the event row is locked `FOR UPDATE`, and the reconciler's
    /// dispatch stamp takes it `FOR SHARE`, so the two cannot interleave (DESIGN §5.1).
    pub async fn terminate(&self, req: &TerminateRequest) -> Result<StopReply, RpcError> {
        if req.actor.role() < Role::Admin {
            return Err(RpcError::new(
                RpcErrorKind::PermissionDenied,
                "terminating a curtailment needs the admin role",
            ));
        }
        if !matches!(req.target_state, EventState::Cancelled | EventState::Failed) {
            return Err(RpcError::invalid(
                "target_state",
                "must be cancelled or failed",
            ));
        }
        let reason = req.reason.trim().to_owned();
        if reason.is_empty() || reason.chars().count() > validate::MAX_TEXT {
            return Err(RpcError::invalid(
                "reason",
                format!("must be 1-{} characters", validate::MAX_TEXT),
            ));
        }
        let key_id = match &req.actor {
            Actor::ApiKey { key_id, .. } => Some(*key_id),
            _ => None,
        };
        let (org, id, to, kind) = (req.org, req.event_id, req.target_state, req.actor.kind());
        let outcome = with_tx(&self.pool, ebb_store::tx::DEFAULT_ATTEMPTS, move |conn| {
            let reason = reason.clone();
            Box::pin(async move {
                let Some(event) = events::lock_event(conn, org, id).await? else {
                    return Err(StoreError::NotFound);
                };
                if event.state == to {
                    return Ok(Terminate::Unchanged);
                }
                if event.state.is_terminal() {
                    return Ok(Terminate::AlreadyEnded(event.state));
                }
                let blocking = events::targets_blocking_terminate(conn, id).await?;
                if blocking > 0 {
                    return Ok(Terminate::InFlight(blocking));
                }
                let Some(moved) =
                    events::transition_event(conn, &event, event.state, to, kind, Some(&reason))
                        .await?
                else {
                    return Err(StoreError::RaceLost(format!(
                        "event {id} moved while locked"
                    )));
                };
                events::sweep_targets_for_terminate(conn, id, kind).await?;
                events::audit(
                    &mut *conn,
                    org,
                    kind,
                    key_id,
                    "curtailment_admin_terminated",
                    Some(id.0),
                    serde_json::json!({"reason": reason, "target_state": to.as_str()}),
                )
                .await?;
                events::announce(conn, &moved, Some(event.state), Some(&reason)).await?;
                Ok(Terminate::Done)
            })
        })
        .await
        .map_err(|e| match e {
            StoreError::NotFound => RpcError::new(RpcErrorKind::NotFound, "curtailment not found"),
            other => internal(other),
        })?;
        match outcome {
            Terminate::Done => Ok(StopReply {
                event_id: id,
                changed: true,
            }),
            Terminate::Unchanged => Ok(StopReply {
                event_id: id,
                changed: false,
            }),
            Terminate::AlreadyEnded(s) => Err(RpcError::new(
                RpcErrorKind::FailedPrecondition,
                format!("the curtailment already ended as {s}"),
            )),
            Terminate::InFlight(n) => Err(RpcError::new(
                RpcErrorKind::FailedPrecondition,
                format!(
                    "{n} miners may still be curtailed or have a command in flight; stop the curtailment first"
                ),
            )),
        }
    }

    /// One page of `code`'s devices, in address order, for its agent.
    pub async fn inventory(
        &self,
        code: &SiteCode,
        req: &InventoryRequest,
    ) -> Result<Inventory, RpcError> {
        let limit = match req.limit {
            None => ebb_bus::INVENTORY_PAGE_MAX,
            Some(n) if (1..=ebb_bus::INVENTORY_PAGE_MAX).contains(&n) => n,
            Some(n) => {
                return Err(RpcError::invalid(
                    "limit",
                    format!(
                        "must be between 1 and {}, got {n}",
                        ebb_bus::INVENTORY_PAGE_MAX
                    ),
                ));
            }
        };
        if req
            .after
            .as_ref()
            .is_some_and(|a| a.len() > validate::MAX_ADDRESS)
        {
            return Err(RpcError::invalid(
                "after",
                "is not a cursor this planner gave",
            ));
        }
        let site = self.site(code).await?;
        let rows = fleet::inventory_page(&self.pool, site.id, req.after.as_deref(), limit)
            .await
            .map_err(internal)?;
        let more = rows.len() == limit as usize;
        let devices = rows
            .into_iter()
            .map(|d| InventoryDevice {
                device_id: d.device_id,
                address: d.address,
                make: d.make,
                model: d.model,
                firmware: d.firmware,
                capabilities: d.capabilities,
            })
            .collect();
        // Cut by encoded bytes as well as by count, so a reply always fits a NATS message.
        Ok(Inventory::page(devices, more))
    }

    /// Adds or updates devices found by `code`'s agent's scan. Every field is checked first:
    /// one bad device refuses the request, naming it, and changes nothing.
    pub async fn register(
        &self,
        code: &SiteCode,
        req: &RegisterDevicesRequest,
    ) -> Result<RegisterDevicesReply, RpcError> {
        validate::registration(&req.devices)?;
        let site = self.site(code).await?;
        let devices: Vec<fleet::NewDevice> = req
            .devices
            .iter()
            .map(|d| fleet::NewDevice {
                address: d.address.clone(),
                make: d.make.clone(),
                model: d.model.clone(),
                firmware: d.firmware.clone(),
                capabilities: d.capabilities,
                nominal_power_w: d.nominal_power_w,
            })
            .collect();
        let n = fleet::upsert_devices(&self.pool, &site, &devices)
            .await
            .map_err(internal)?;
        // New devices are selectable from the next request on.
        self.snapshot.invalidate(site.org_id);
        Ok(RegisterDevicesReply {
            registered: n as u32,
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn site(&self, code: &SiteCode) -> Result<fleet::Site, RpcError> {
        fleet::site_by_code(&self.pool, code)
            .await
            .map_err(internal)?
            .ok_or_else(|| RpcError::new(RpcErrorKind::NotFound, format!("unknown site {code}")))
    }
}

fn plan_view(req: &StartRequest, plan: &Plan, codes: &BTreeMap<SiteId, String>) -> PlanView {
    // Summed by site id first (in selection order, as before): one name per site, not one
    // string per selected device.
    let mut by_id: BTreeMap<SiteId, SiteShare> = BTreeMap::new();
    for s in &plan.selected {
        let e = by_id.entry(s.site_id).or_default();
        e.devices += 1;
        e.shed_kw += s.shed_w / 1000.0;
    }
    let per_site: BTreeMap<String, SiteShare> = by_id
        .into_iter()
        .map(|(id, share)| {
            let code = codes.get(&id).cloned().unwrap_or_else(|| id.to_string());
            (code, share)
        })
        .collect();
    PlanView {
        mode: req.mode,
        selected_count: plan.selected.len() as u32,
        expected_shed_kw: plan.expected_shed_kw,
        scope_kw: plan.scope_kw,
        available_kw: plan.available_kw,
        skipped: plan
            .skipped
            .iter()
            .map(|(r, n)| (r.label().to_owned(), *n))
            .collect(),
        per_site,
    }
}

fn selection_error(e: SelectionError) -> RpcError {
    let msg = e.to_string();
    match e {
        SelectionError::InsufficientLoad {
            requested_kw,
            available_kw,
            skipped,
        } => RpcError {
            detail: [
                ("requested_kw".to_owned(), requested_kw),
                ("available_kw".to_owned(), available_kw),
            ]
            .into(),
            skipped: skipped
                .iter()
                .map(|(r, n)| (r.label().to_owned(), *n))
                .collect(),
            ..RpcError::new(RpcErrorKind::InsufficientLoad, msg)
        },
        SelectionError::EmptyPlan { skipped } => RpcError {
            skipped: skipped
                .iter()
                .map(|(r, n)| (r.label().to_owned(), *n))
                .collect(),
            ..RpcError::new(RpcErrorKind::EmptyPlan, msg)
        },
        SelectionError::InvalidPercent => RpcError::invalid("percent", msg),
    }
}

/// Logs the full error once and returns a reply that does not leak it.
fn internal(e: StoreError) -> RpcError {
    tracing::error!(error = ?e, "planner store error");
    RpcError::new(RpcErrorKind::Internal, "internal error")
}

enum Terminate {
    Done,
    Unchanged,
    AlreadyEnded(EventState),
    InFlight(i64),
}
