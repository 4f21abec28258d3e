//! One reconcile pass, the I/O half: apply the results that arrived, then drive every live event
//! one step, each event isolated from the others' errors and panics. What to do is decided by
//! [`crate::decide`] from what is loaded here; this module loads, executes the decisions with the
//! store's compare-and-set writes and JetStream publishes, and counts what happened.
//!
//! Work is proportional to what changed (issue 12, item 5). The targets of each live event are
//! kept between passes ([`Cached`]); a pass re-reads only the rows that a write of its own, a
//! result or telemetry named, and decides again only for an event where something changed or
//! a deadline it computed has come. The whole event is read again when it changes state (a
//! Stop sweeps every target), when it is new, and every `resync` as a safety net against a
//! write nobody announced. Every write stays a compare-and-set, so a stale row can cost at most a
//! lost race, which re-reads it.

use crate::Hooks;
use crate::config::ReconcilerConfig;
use crate::decide::{self, Decisions, EventStep, EventView, Move, Phase, Policy, Why};
use crate::intake::Incoming;
use crate::liveness::{Change, Liveness};
use anyhow::Context;
use async_nats::jetstream::{self, AckKind};
use chrono::Utc;
use ebb_bus::{BatchResult, DeviceRef, split, subjects};
use ebb_domain::backoff::Backoff;
use ebb_domain::confirm::ConfirmPolicy;
use ebb_domain::pacing::{SiteBudget, SiteRamp};
use ebb_domain::{
    BatchId, CommandKind, DeviceId, EventId, EventState, SiteCode, SiteId, StopCause, TargetState,
};
use ebb_obs::names;
use ebb_store::events::{self, EventRow, Failure, Retry, TargetChange, TargetRow};
use ebb_store::{PgPool, StoreError, fleet, tx::with_tx};
use futures::FutureExt;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::Instrument;

const ACTOR: &str = "reconciler";

pub struct Reconciler {
    pool: PgPool,
    js: jetstream::Context,
    hooks: Hooks,
    policy: Policy,
    /// The leader's lock backend pid: every dispatch stamp checks it still holds the lock.
    fence: Option<i32>,
    /// Site id → (subject token, ramp limit), refreshed every pass.
    sites: HashMap<SiteId, (SiteCode, Option<f64>)>,
    /// What each site was given back in the last minute, by every event: a site's ramp limit
    /// holds across all the events restoring there. Seeded from the database when a term
    /// starts, so a new leader does not hand out a minute twice.
    ramp: std::sync::Mutex<SiteRamp<SiteId>>,
    /// Whether `ramp` was seeded this term.
    ramp_seeded: bool,
    /// The targets of each live event as last read.
    cache: HashMap<EventId, Cached>,
    /// Devices whose telemetry was ingested since the last pass (filled by the telemetry
    /// intake, bounded by the fleet's size).
    touched: Arc<Mutex<HashSet<DeviceId>>>,
    /// How long a cached event is trusted before it is read whole again.
    resync: Duration,
    /// What the latest pass read and decided.
    last: PassStats,
    /// When each site was last heard from (fed by results here and telemetry in the intake).
    liveness: Arc<Mutex<Liveness>>,
    /// The sites silent as of this pass: their targets are charged nothing for it.
    silent: HashSet<SiteId>,
    /// When each site that was silent was heard from again: its deadlines count from there.
    back_at: HashMap<SiteId, chrono::DateTime<Utc>>,
}

/// How much work one pass did: what "proportional to what changed" is measured by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassStats {
    /// Target rows read from the database.
    pub targets_read: usize,
    /// Events whose decisions were computed (the others were quiet).
    pub events_decided: usize,
    /// Target rows the decisions went over.
    pub targets_decided: usize,
    /// Live events the pass saw.
    pub live_events: usize,
}

/// One live event's targets as last read, and what is known to have changed since.
struct Cached {
    state: EventState,
    updated_at: chrono::DateTime<Utc>,
    targets: Vec<TargetRow>,
    index: HashMap<DeviceId, usize>,
    /// Devices whose rows changed since they were read: re-read before the next decision.
    stale: HashSet<DeviceId>,
    /// Something changed since the last decision.
    dirty: bool,
    /// When time alone next changes the decision (a deadline, a backoff, a restore batch, the
    /// event's max duration); `None`: only a change does.
    due: Option<chrono::DateTime<Utc>>,
    loaded: Instant,
}

impl Cached {
    fn new(ev: &EventRow, targets: Vec<TargetRow>) -> Self {
        let index = targets
            .iter()
            .enumerate()
            .map(|(i, t)| (t.device_id, i))
            .collect();
        Self {
            state: ev.state,
            updated_at: ev.updated_at,
            targets,
            index,
            stale: HashSet::new(),
            dirty: true,
            due: None,
            loaded: Instant::now(),
        }
    }

    /// Marks these devices' rows as changed, if they are this event's.
    fn touch<'a>(&mut self, devices: impl IntoIterator<Item = &'a DeviceId>) {
        for d in devices {
            if self.index.contains_key(d) {
                self.stale.insert(*d);
            }
        }
    }

    /// Puts re-read rows in place, keeping the order decisions rely on.
    fn replace(&mut self, rows: Vec<TargetRow>) {
        for row in rows {
            if let Some(&i) = self.index.get(&row.device_id) {
                self.targets[i] = row;
            }
        }
        self.stale.clear();
        self.dirty = true;
    }
}

impl Reconciler {
    pub fn new(
        cfg: &ReconcilerConfig,
        hooks: Hooks,
        pool: PgPool,
        js: jetstream::Context,
        fence: Option<i32>,
    ) -> Self {
        Self {
            pool,
            js,
            hooks,
            policy: Policy {
                confirm: ConfirmPolicy::default(),
                confirm_deadline: chrono::Duration::seconds(i64::from(cfg.confirm_deadline_s)),
                result_deadline: chrono::Duration::seconds(i64::from(cfg.result_deadline_s)),
                max_retries: cfg.max_retries,
                backoff: Backoff {
                    base: chrono::Duration::milliseconds(cfg.backoff_base_ms as i64),
                    max: chrono::Duration::milliseconds(cfg.backoff_max_ms as i64),
                },
            },
            fence,
            sites: HashMap::new(),
            ramp: std::sync::Mutex::new(SiteRamp::default()),
            ramp_seeded: false,
            cache: HashMap::new(),
            touched: Arc::default(),
            resync: Duration::from_millis(cfg.resync_ms),
            last: PassStats::default(),
            liveness: Arc::new(Mutex::new(Liveness::new(
                Duration::from_secs(u64::from(cfg.site_silent_after_s)),
                Instant::now(),
            ))),
            silent: HashSet::new(),
            back_at: HashMap::new(),
        }
    }

    /// What the latest pass read and decided.
    /// Drops the targets passes kept after a pass panicked: the next pass reads every live
    /// event whole again from the database. (The ramp ledger is kept: forgetting it could only
    /// hand a site's minute out twice.)
    pub fn forget(&mut self) {
        self.cache.clear();
        self.last = PassStats::default();
    }

    pub fn last_pass(&self) -> PassStats {
        self.last
    }

    /// Where the telemetry intake records the devices it ingested samples for, so that a pass
    /// re-reads only those.
    pub fn telemetry_touched(&self) -> Arc<Mutex<HashSet<DeviceId>>> {
        self.touched.clone()
    }

    /// When each site was last heard from, for the telemetry intake to mark.
    pub fn liveness(&self) -> Arc<Mutex<Liveness>> {
        self.liveness.clone()
    }

    /// Marks the sites of `results` heard, reports the sites that went silent or came back,
    /// and notes which are silent for this pass's decisions.
    fn sweep_liveness(&mut self, results: &[Incoming]) {
        let now = Instant::now();
        let mut live = self
            .liveness
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for r in results {
            live.heard(&r.site, now);
        }
        for change in live.sweep(self.sites.values().map(|(code, _)| code), now) {
            match change {
                Change::Silent(site) => {
                    tracing::warn!(%site, silent_for_s = live.silent_for(&site, now).as_secs(), "the site's agent is silent (no results or telemetry): its targets are charged no attempts until it is back");
                    metrics::gauge!(names::RECONCILER_SITE_SILENT, "site" => site.to_string())
                        .set(1.0);
                }
                Change::Back(site) => {
                    tracing::info!(%site, "the site's agent is heard from again");
                    if let Some(id) = self
                        .sites
                        .iter()
                        .find_map(|(id, (code, _))| (*code == site).then_some(*id))
                    {
                        self.back_at.insert(id, Utc::now());
                    }
                    metrics::gauge!(names::RECONCILER_SITE_SILENT, "site" => site.to_string())
                        .set(0.0);
                }
            }
        }
        self.silent = self
            .sites
            .iter()
            .filter(|(_, (code, _))| live.is_silent(code, now))
            .map(|(id, _)| *id)
            .collect();
    }

    /// Live targets held between passes (for tests and benchmarks).
    pub fn cached_targets(&self) -> usize {
        self.cache.values().map(|c| c.targets.len()).sum()
    }

    /// Runs one pass. Returns how soon the next pass is due for a deadline or a restore batch,
    /// if sooner than the safety tick.
    pub async fn pass(&mut self, results: Vec<Incoming>) -> Option<Duration> {
        let started = Instant::now();
        self.last = PassStats::default();
        match fleet::all_sites(&self.pool).await {
            Ok(sites) => {
                self.sites = sites
                    .into_iter()
                    .map(|s| (s.id, (s.code, s.ramp_limit_kw_per_min)))
                    .collect()
            }
            Err(e) => tracing::warn!(error = ?e, "loading sites"),
        }
        self.sweep_liveness(&results);
        if !self.ramp_seeded {
            let since = Utc::now() - chrono::Duration::minutes(1);
            match events::recent_restore_sends(&self.pool, since).await {
                Ok(sent) => {
                    let mut ramp = self.ramp_ledger();
                    for (site, at, kw) in sent {
                        ramp.record(site, at, kw);
                    }
                    drop(ramp);
                    self.ramp_seeded = true;
                }
                Err(e) => tracing::warn!(error = ?e, "loading the last minute's restores"),
            }
        }
        for Incoming {
            result,
            site,
            message,
        } in results
        {
            let Some(site_id) = self
                .sites
                .iter()
                .find_map(|(id, (code, _))| (code == &site).then_some(*id))
            else {
                tracing::debug!(%site, "a result from an unknown site");
                message.ack().await.ok();
                continue;
            };
            // The agent's trace (the event's) continues here.
            let span = tracing::info_span!(
                "apply result",
                ebb.service = "reconciler",
                otel.kind = "consumer",
                %site,
                batch_id = %result.batch_id,
                event_id = result.event_id.map(tracing::field::display),
                devices = result.results.len(),
            );
            ebb_obs::trace::follow_headers(&span, message.headers.as_ref());
            match self.apply_result(&result, site_id).instrument(span).await {
                Ok(event) => {
                    if let Some(c) = event.and_then(|e| self.cache.get_mut(&e)) {
                        c.touch(result.results.iter().map(|r| &r.device_id));
                    }
                    message.ack().await.ok();
                }
                Err(e) => {
                    tracing::warn!(batch_id = %result.batch_id, error = ?e, "applying a result failed; redelivering");
                    message
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                        .await
                        .ok();
                }
            }
        }
        let live = match events::live_events(&self.pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = ?e, "listing live events");
                metrics::counter!(names::RECONCILER_PASS_FAILURES).increment(1);
                return None;
            }
        };
        self.last.live_events = live.len();
        let ids: HashSet<EventId> = live.iter().map(|e| e.id).collect();
        self.cache.retain(|id, _| ids.contains(id));
        let touched = std::mem::take(
            &mut *self
                .touched
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if !touched.is_empty() {
            for c in self.cache.values_mut() {
                c.touch(&touched);
            }
        }
        let mut next: Option<Duration> = None;
        for ev in live {
            let id = ev.id;
            let now = Utc::now();
            let cached = match self.refresh(&ev).await {
                Ok(c) => c,
                Err(e) => {
                    metrics::counter!(names::RECONCILER_EVENT_ERRORS).increment(1);
                    tracing::error!(event_id = %id, error = ?e, "reading event targets failed");
                    continue;
                }
            };
            let mut cached = cached;
            let quiet = !cached.dirty && cached.due.is_none_or(|d| now < d);
            if quiet {
                next = min_opt(next, cached.due.map(|d| until(d, now)));
                self.cache.insert(id, cached);
                continue;
            }
            self.last.events_decided += 1;
            self.last.targets_decided += cached.targets.len();
            let outcome =
                AssertUnwindSafe(self.reconcile_event(&ev, &cached.targets, &cached.index, now))
                    .catch_unwind()
                    .await;
            cached.dirty = false;
            cached.due = None;
            // An event whose pass failed is read whole again: what failed may have half-written.
            match outcome {
                Ok(Ok(done)) => {
                    cached.touch(&done.wrote);
                    cached.due = min_time(
                        done.wake
                            .map(|w| now + chrono::Duration::from_std(w).unwrap_or_default()),
                        max_duration_due(&ev),
                    );
                    next = min_opt(next, cached.due.map(|d| until(d, now)));
                }
                Ok(Err(e)) => {
                    metrics::counter!(names::RECONCILER_EVENT_ERRORS).increment(1);
                    tracing::error!(event_id = %id, error = ?e, "reconciling event failed");
                    continue;
                }
                Err(_) => {
                    metrics::counter!(names::RECONCILER_EVENT_ERRORS).increment(1);
                    tracing::error!(event_id = %id, "reconciling event panicked");
                    continue;
                }
            }
            self.cache.insert(id, cached);
        }
        metrics::histogram!(names::RECONCILER_PASS_SECONDS).record(started.elapsed().as_secs_f64());
        next
    }

    /// The event's cached targets, brought up to date: read whole if the event is new, changed
    /// state or was last read whole more than `resync` ago; else only its stale rows.
    async fn refresh(&mut self, ev: &EventRow) -> anyhow::Result<Cached> {
        let reuse = self
            .cache
            .remove(&ev.id)
            .filter(|c| c.state == ev.state && c.loaded.elapsed() < self.resync);
        let Some(mut c) = reuse else {
            let targets = events::targets(&self.pool, ev.id).await?;
            self.last.targets_read += targets.len();
            return Ok(Cached::new(ev, targets));
        };
        if c.updated_at != ev.updated_at {
            c.updated_at = ev.updated_at;
            c.dirty = true;
        }
        if !c.stale.is_empty() {
            let ids: Vec<DeviceId> = c.stale.iter().copied().collect();
            let rows = events::targets_of_devices(&self.pool, ev.id, &ids).await?;
            self.last.targets_read += rows.len();
            c.replace(rows);
        }
        Ok(c)
    }

    /// Records what the agent said about each device. Success changes nothing (telemetry
    /// confirms); any other outcome spends an attempt and queues the target again, or fails it.
    ///
    /// `site` is the result's subject's site, which NATS permissions bind to the agent that
    /// published it: a result changes only that site's targets still on the batch it answers,
    /// whatever event or devices its body names.
    /// Returns the event it was for, whose named targets may have changed.
    async fn apply_result(&self, r: &BatchResult, site: SiteId) -> anyhow::Result<Option<EventId>> {
        let event = match r.event_id {
            Some(e) => Some(e),
            None => events::event_of_batch(&self.pool, site, r.batch_id).await?,
        };
        let Some(event) = event else { return Ok(None) };
        let scope = events::BatchScope {
            event,
            site,
            batch: r.batch_id,
        };
        let d = decide::on_result(r);
        events::record_prior_power_limits(&self.pool, scope, &d.prior_limits).await?;
        events::record_results(&self.pool, scope, &d.succeeded).await?;
        if d.failed.is_empty() {
            return Ok(Some(event));
        }
        for (device, outcome) in &d.failed {
            tracing::info!(event_id = %event, device_id = %device, outcome, "command failed on device");
        }
        let failed: HashSet<DeviceId> = d.failed.iter().map(|(d, _)| *d).collect();
        let targets = events::targets_of_batch(&self.pool, scope).await?;
        let moves = decide::spend_failed(&targets, &failed, &self.policy);
        // Only targets still on this batch move: an older batch's result is stale.
        self.apply_moves(event, &moves, Some(r.batch_id), &mut HashSet::new())
            .await?;
        Ok(Some(event))
    }

    /// `index` is `targets`' position by device.
    async fn reconcile_event(
        &self,
        ev: &EventRow,
        targets: &[TargetRow],
        index: &HashMap<DeviceId, usize>,
        now: chrono::DateTime<Utc>,
    ) -> anyhow::Result<Done> {
        let view = EventView::from(ev);
        let budgets: HashMap<SiteId, SiteBudget> = {
            let ramp = self.ramp_ledger();
            self.sites
                .iter()
                .filter_map(|(id, (_, limit))| {
                    limit.map(|kw| (*id, ramp.budget(*id, kw, &view.pacing, now)))
                })
                .collect()
        };
        let budget = |s: SiteId| budgets.get(&s).copied();
        let agent = |s: SiteId| {
            if self.silent.contains(&s) {
                decide::Agent::Silent
            } else {
                self.back_at
                    .get(&s)
                    .map_or(decide::Agent::Live, |at| decide::Agent::BackSince(*at))
            }
        };
        let Some(d) = decide::decide_with(&view, targets, now, &self.policy, budget, agent) else {
            return Ok(Done::default());
        };
        // Every row these decisions may write is read again before the next decision.
        let wrote: Vec<DeviceId> = d
            .moves
            .iter()
            .flat_map(|m| m.devices.iter())
            .chain(d.republish.values().flatten())
            .chain(d.send.iter())
            .copied()
            .collect();
        let wake = self.execute(ev, targets, index, d, now).await?;
        Ok(Done { wake, wrote })
    }

    /// Carries out one event's decisions in order: target moves, orphan republishes, sends, and
    /// the event's step. A target whose compare-and-set lost a race is not advanced any further
    /// in this pass, and neither is the event (DESIGN §5.2): the next pass decides again from
    /// what the database says.
    async fn execute(
        &self,
        ev: &EventRow,
        targets: &[TargetRow],
        index: &HashMap<DeviceId, usize>,
        d: Decisions,
        now: chrono::DateTime<Utc>,
    ) -> anyhow::Result<Option<Duration>> {
        let mut lost = HashSet::new();
        self.apply_moves(ev.id, &d.moves, None, &mut lost).await?;

        let pick = |ids: &[DeviceId]| -> Vec<&TargetRow> {
            ids.iter()
                .filter(|id| !lost.contains(*id))
                .filter_map(|id| index.get(id).map(|&i| &targets[i]))
                .collect()
        };
        for (batch, ids) in &d.republish {
            self.publish_and_mark(ev, *batch, &pick(ids), d.phase)
                .await?;
        }
        let send = pick(&d.send);
        if !send.is_empty() {
            if d.sends_restore_batch() {
                events::mark_restore_batch(&self.pool, ev.id, now).await?;
                // Counted before the publish: a batch that then fails to go out only makes the
                // site wait longer, never ramp faster.
                let mut ramp = self.ramp_ledger();
                for t in &send {
                    ramp.record(t.site_id, now, t.baseline_power_w / 1000.0);
                }
            }
            self.dispatch(ev, &send, d.phase).await?;
            if d.phase == Phase::Restore {
                tracing::info!(event_id = %ev.id, devices = send.len(), "restore batch sent");
            }
        }

        match d.event {
            Some(_) if !lost.is_empty() => {
                tracing::info!(event_id = %ev.id, lost = lost.len(), "targets moved under us; the event waits for the next pass");
            }
            Some(EventStep::Activate)
                if self
                    .move_event(ev, EventState::Pending, EventState::Active, None)
                    .instrument(confirm_span(ev, EventState::Active))
                    .await? =>
            {
                let took = (Utc::now() - ev.created_at).to_std().unwrap_or_default();
                metrics::histogram!(names::CURTAILMENT_START_TO_ACTIVE_SECONDS)
                    .record(took.as_secs_f64());
            }
            Some(EventStep::Activate) => {}
            Some(EventStep::Stop(cause)) => {
                match cause {
                    StopCause::AllFailed => {
                        tracing::warn!(event_id = %ev.id, "every target failed; restoring what was touched")
                    }
                    _ => {
                        tracing::info!(event_id = %ev.id, cause = %cause, max_duration_s = ev.max_duration_s, "stopping; restoring")
                    }
                }
                self.stop_event(ev, cause).await?;
            }
            Some(EventStep::End(end)) => {
                self.move_event(ev, EventState::Restoring, end, None)
                    .instrument(confirm_span(ev, end))
                    .await?;
                tracing::info!(event_id = %ev.id, state = %end, "curtailment ended");
            }
            None => {}
        }
        Ok(d.wake)
    }

    /// Executes target moves in order as compare-and-sets. Devices in `lost` are skipped, and
    /// devices that did not move are added to it: nothing more is done for them this pass.
    async fn apply_moves(
        &self,
        event: EventId,
        moves: &[Move],
        expect_batch: Option<BatchId>,
        lost: &mut HashSet<DeviceId>,
    ) -> anyhow::Result<()> {
        for m in moves {
            let devices: Vec<DeviceId> = m
                .devices
                .iter()
                .filter(|d| !lost.contains(*d))
                .copied()
                .collect();
            if devices.is_empty() {
                continue;
            }
            let change = TargetChange {
                expect_batch,
                ..change_for(m)
            };
            // Targets that exhausted their attempts are announced (`ebb.targets.failed`) in the
            // transaction that moves them, aggregated: one message for the whole move.
            let failing = match m.why {
                Why::Spent(reason) if m.to.is_terminal() => Some((
                    if m.to == TargetState::RestoreFailed {
                        "restore"
                    } else {
                        "curtail"
                    },
                    reason,
                )),
                _ => None,
            };
            let moved = match failing {
                None => {
                    events::transition_targets(
                        &self.pool, event, &devices, m.from, m.to, &change, ACTOR,
                    )
                    .await?
                }
                Some((phase, reason)) => {
                    let mut tx = self.pool.begin().await?;
                    let moved = events::transition_targets(
                        &mut *tx, event, &devices, m.from, m.to, &change, ACTOR,
                    )
                    .await?;
                    events::announce_targets_failed(
                        &mut tx,
                        event,
                        expect_batch,
                        phase,
                        reason.as_str(),
                        &moved,
                    )
                    .await?;
                    tx.commit().await?;
                    moved
                }
            };
            self.count(m.from, m.to, devices.len(), moved.len());
            let moved: HashSet<DeviceId> = moved.into_iter().collect();
            lost.extend(devices.iter().filter(|d| !moved.contains(*d)));
            match m.why {
                Why::Drifted if !moved.is_empty() => {
                    tracing::info!(event_id = %event, devices = moved.len(), "targets drifted; re-sending")
                }
                Why::Spent(reason) if m.to.is_terminal() && !moved.is_empty() => {
                    let phase = if m.to == TargetState::RestoreFailed {
                        "restore"
                    } else {
                        "curtail"
                    };
                    metrics::counter!(names::RECONCILER_TARGET_FAILURES, "phase" => phase, "reason" => reason.as_str())
                        .increment(moved.len() as u64);
                    tracing::warn!(event_id = %event, devices = moved.len(), reason = %reason, state = %m.to, "targets exhausted their attempts")
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Stamps, publishes and marks `targets` in bounded per-site batches (DESIGN §5.1): the
    /// phase's stamped state is written before the publish, its sent state after the stream acked
    /// it. A failed publish leaves the batch stamped, to be republished under the same id by the
    /// next pass at no cost.
    async fn dispatch(
        &self,
        ev: &EventRow,
        targets: &[&TargetRow],
        phase: Phase,
    ) -> anyhow::Result<()> {
        let (from, stamped) = (phase.queued(), phase.stamped());
        let mut by_site: BTreeMap<SiteId, Vec<&TargetRow>> = BTreeMap::new();
        for t in targets {
            by_site.entry(t.site_id).or_default().push(t);
        }
        let command = phase.command(ev.command);
        for (site_id, site_targets) in by_site {
            let Some((site, _)) = self.sites.get(&site_id) else {
                anyhow::bail!("site {site_id} of event {} is unknown", ev.id);
            };
            let shape = split::CommandShape {
                org: Some(ev.org_id),
                site,
                event: Some(ev.id),
                command,
            };
            // Sized before the stamp: what is stamped is at most this chunk, so its batch fits.
            let chunks = split::command_chunks(site_targets, &shape, |t| device_ref(t, command))
                .context("splitting a command into batches")?;
            for chunk in chunks {
                let batch = BatchId::new();
                let ids: Vec<DeviceId> = chunk.iter().map(|t| t.device_id).collect();
                let evid = ev.id;
                let fence = self.fence;
                let stamped_ids = with_tx(&self.pool, ebb_store::tx::DEFAULT_ATTEMPTS, |conn| {
                    let ids = ids.clone();
                    Box::pin(async move {
                        // A deposed leader stamps nothing, so it can publish nothing.
                        if let Some(pid) = fence
                            && !events::holds_advisory_lock(&mut *conn, pid, crate::LEADER_LOCK_KEY)
                                .await?
                        {
                            return Err(StoreError::RaceLost(
                                "this reconciler no longer holds the leader lock".into(),
                            ));
                        }
                        events::stamp_dispatching(
                            conn,
                            evid,
                            &ids,
                            from,
                            stamped,
                            batch,
                            Retry::Keep,
                            ACTOR,
                        )
                        .await
                    })
                })
                .await?;
                self.count(from, stamped, ids.len(), stamped_ids.len());
                if stamped_ids.is_empty() {
                    continue;
                }
                if let Some(hook) = &self.hooks.after_stamp
                    && hook()
                {
                    // Simulated death between stamp and publish: never return.
                    futures::future::pending::<()>().await;
                }
                let batch_targets: Vec<&TargetRow> = chunk
                    .iter()
                    .copied()
                    .filter(|t| stamped_ids.contains(&t.device_id))
                    .collect();
                self.publish_and_mark(ev, batch, &batch_targets, phase)
                    .await?;
            }
        }
        Ok(())
    }

    /// Publishes one stamped batch under its id and marks its targets sent once the stream
    /// acked it.
    async fn publish_and_mark(
        &self,
        ev: &EventRow,
        batch: BatchId,
        targets: &[&TargetRow],
        phase: Phase,
    ) -> anyhow::Result<()> {
        let (command, stamped, done) = (phase.command(ev.command), phase.stamped(), phase.sent());
        let Some(first) = targets.first() else {
            return Ok(());
        };
        let Some((site, _)) = self.sites.get(&first.site_id) else {
            anyhow::bail!("site {} of event {} is unknown", first.site_id, ev.id);
        };
        let devices: Vec<DeviceRef> = targets.iter().map(|t| device_ref(t, command)).collect();
        let shape = split::CommandShape {
            org: Some(ev.org_id),
            site,
            event: Some(ev.id),
            command,
        };
        let payload =
            ebb_bus::encode(&shape.envelope(batch, devices)).context("encoding a command batch")?;
        if payload.len() > split::MAX_BATCH_BYTES {
            anyhow::bail!(
                "command batch of {} devices encodes to {} bytes",
                targets.len(),
                payload.len()
            );
        }
        // The event's trace (its Start request's): the agent's command span joins it through the
        // batch's headers.
        let span = tracing::info_span!(
            "dispatch",
            ebb.service = "reconciler",
            otel.kind = "producer",
            event_id = %ev.id,
            %site,
            batch_id = %batch,
            kind = command.label(),
            devices = targets.len(),
        );
        ebb_obs::trace::follow_traceparent(&span, ev.traceparent.as_deref());
        let trace_id = ebb_obs::trace::trace_id(&span);
        let published = ebb_bus::publish::publish_acked(
            &self.js,
            subjects::cmd(site),
            &batch.to_string(),
            payload,
        )
        .instrument(span)
        .await;
        if let Err(e) = published {
            // Stays stamped: the next pass republishes under the same id, and it costs no attempt.
            metrics::counter!(names::RECONCILER_PUBLISH_FAILURES, "kind" => command.label())
                .increment(1);
            tracing::warn!(event_id = %ev.id, batch_id = %batch, error = %e, "publishing a batch failed");
            return Ok(());
        }
        metrics::counter!(names::RECONCILER_BATCHES_PUBLISHED, "kind" => command.label())
            .increment(1);
        metrics::counter!(names::RECONCILER_COMMANDS_PUBLISHED, "kind" => command.label())
            .increment(targets.len() as u64);
        tracing::debug!(event_id = %ev.id, batch_id = %batch, site = %site, devices = targets.len(), trace_id = trace_id.as_deref(), "batch published");
        let ids: Vec<DeviceId> = targets.iter().map(|t| t.device_id).collect();
        let change = TargetChange {
            set_dispatched_at: true,
            expect_batch: Some(batch),
            ..Default::default()
        };
        let moved =
            events::transition_targets(&self.pool, ev.id, &ids, stamped, done, &change, ACTOR)
                .await?;
        self.count(stamped, done, ids.len(), moved.len());
        Ok(())
    }

    /// The reconciler's own stop: max duration elapsed, or every target failed.
    async fn stop_event(&self, ev: &EventRow, cause: StopCause) -> anyhow::Result<()> {
        let (org, id) = (ev.org_id, ev.id);
        let reason = cause.description();
        with_tx(&self.pool, ebb_store::tx::DEFAULT_ATTEMPTS, move |conn| {
            Box::pin(async move {
                let Some(event) = events::lock_event(conn, org, id).await? else {
                    return Ok(());
                };
                if !matches!(event.state, EventState::Pending | EventState::Active) {
                    return Ok(());
                }
                if let Some(moved) =
                    events::begin_restore(conn, &event, cause, reason, ACTOR).await?
                {
                    events::announce(conn, &moved, Some(event.state), Some(reason)).await?;
                }
                Ok::<(), StoreError>(())
            })
        })
        .await?;
        Ok(())
    }

    async fn move_event(
        &self,
        ev: &EventRow,
        from: EventState,
        to: EventState,
        reason: Option<&'static str>,
    ) -> anyhow::Result<bool> {
        let ev = ev.clone();
        let moved = with_tx(&self.pool, ebb_store::tx::DEFAULT_ATTEMPTS, move |conn| {
            let ev = ev.clone();
            Box::pin(async move {
                let moved = events::transition_event(conn, &ev, from, to, ACTOR, reason).await?;
                if let Some(m) = &moved {
                    events::announce(conn, m, Some(from), reason).await?;
                }
                Ok::<bool, StoreError>(moved.is_some())
            })
        })
        .await?;
        if !moved {
            metrics::counter!(names::RECONCILER_RACE_LOST, "what" => "event").increment(1);
            tracing::warn!(from = %from, to = %to, "event state moved under us; not advancing");
        }
        Ok(moved)
    }

    fn ramp_ledger(&self) -> std::sync::MutexGuard<'_, SiteRamp<SiteId>> {
        self.ramp
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn count(&self, from: TargetState, to: TargetState, wanted: usize, moved: usize) {
        if moved > 0 {
            metrics::counter!(names::RECONCILER_TARGET_TRANSITIONS, "from" => from.as_str(), "to" => to.as_str())
                .increment(moved as u64);
        }
        if moved < wanted {
            metrics::counter!(names::RECONCILER_RACE_LOST, "what" => "target")
                .increment((wanted - moved) as u64);
            tracing::warn!(from = %from, to = %to, lost = wanted - moved, "targets were not in the expected state");
        }
    }
}

/// What a target puts in a command batch: on uncurtail, the power limit its miner had before the
/// event, so that restore never applies firmware defaults.
fn device_ref(t: &TargetRow, command: CommandKind) -> DeviceRef {
    DeviceRef {
        device_id: t.device_id,
        address: t.address.clone(),
        restore_power_limit_w: if command == CommandKind::Uncurtail {
            t.prior_power_limit_w
        } else {
            None
        },
    }
}

/// How a move changes the rest of the row.
fn change_for(m: &Move) -> TargetChange {
    match m.why {
        // A (re)confirmation starts a new episode (DESIGN §5.4).
        Why::Settled if m.to == TargetState::Confirmed => TargetChange {
            set_confirmed_at: true,
            retry: Retry::Reset,
            failure: Failure::Clear,
            ..Default::default()
        },
        Why::Settled => TargetChange {
            failure: Failure::Clear,
            ..Default::default()
        },
        Why::Drifted => TargetChange {
            flap: true,
            failure: Failure::Set(ebb_domain::SpendReason::Drifted),
            ..Default::default()
        },
        Why::Spent(reason) => TargetChange {
            retry: Retry::Spend,
            failure: Failure::Set(reason),
            next_attempt_at: m.retry_at.clone(),
            ..Default::default()
        },
    }
}

/// What one event's pass did: when it wants the next, and the rows it may have written.
#[derive(Default)]
struct Done {
    wake: Option<Duration>,
    wrote: Vec<DeviceId>,
}

/// When a curtailing event's max duration elapses (DESIGN §5.5): a decision that time alone
/// changes, so a quiet event is still decided again then.
fn max_duration_due(ev: &EventRow) -> Option<chrono::DateTime<Utc>> {
    match ev.state {
        EventState::Pending | EventState::Active => ev
            .max_duration_s
            .map(|s| ev.created_at + chrono::Duration::seconds(i64::from(s))),
        _ => None,
    }
}

fn min_time(
    a: Option<chrono::DateTime<Utc>>,
    b: Option<chrono::DateTime<Utc>>,
) -> Option<chrono::DateTime<Utc>> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// The wait until `at`, plus a little so that the pass that wakes finds it passed.
fn until(at: chrono::DateTime<Utc>, now: chrono::DateTime<Utc>) -> Duration {
    (at - now).to_std().unwrap_or(Duration::ZERO) + Duration::from_millis(20)
}

fn min_opt(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// The span of the reconciler confirming an event's state from telemetry (`active`, or an end),
/// in the event's trace.
fn confirm_span(ev: &EventRow, to: EventState) -> tracing::Span {
    let span = tracing::info_span!(
        "confirm",
        ebb.service = "reconciler",
        event_id = %ev.id,
        from = ev.state.as_str(),
        to = to.as_str(),
    );
    ebb_obs::trace::follow_traceparent(&span, ev.traceparent.as_deref());
    span
}
