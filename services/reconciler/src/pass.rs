//! One reconcile pass: apply the results that arrived, then drive every live event one step,
//! each event isolated from the others' errors and panics.

use crate::Hooks;
use crate::config::ReconcilerConfig;
use crate::intake::Incoming;
use anyhow::Context;
use async_nats::jetstream::{self, AckKind};
use chrono::{DateTime, Utc};
use ebb_bus::{BatchResult, CommandBatch, DeviceRef, Envelope, split, subjects};
use ebb_domain::confirm::{ConfirmPolicy, Evidence};
use ebb_domain::pacing::{RestorePacing, next_restore_batch};
use ebb_domain::state::restore_outcome;
use ebb_domain::{
    BatchId, CommandKind, DeviceId, EventState, SiteCode, SiteId, SpendReason, StopCause,
    TargetState,
};
use ebb_obs::names;
use ebb_obs::trace::TraceParent;
use ebb_store::events::{self, EventRow, Failure, Retry, TargetChange, TargetRow};
use ebb_store::{PgPool, StoreError, fleet, tx::with_tx};
use futures::FutureExt;
use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

const ACTOR: &str = "reconciler";

pub struct Reconciler {
    pool: PgPool,
    js: jetstream::Context,
    hooks: Hooks,
    policy: ConfirmPolicy,
    confirm_deadline: chrono::Duration,
    /// How long a published batch may wait for the agent's result before it costs an attempt.
    result_deadline: chrono::Duration,
    max_retries: u32,
    /// The leader's lock backend pid: every dispatch stamp checks it still holds the lock.
    fence: Option<i32>,
    /// Site id → (subject token, ramp limit), refreshed every pass.
    sites: HashMap<SiteId, (SiteCode, Option<f64>)>,
}

/// A target that spends an attempt, and why.
struct Spend<'a> {
    target: &'a TargetRow,
    reason: SpendReason,
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
            policy: ConfirmPolicy::default(),
            confirm_deadline: chrono::Duration::seconds(i64::from(cfg.confirm_deadline_s)),
            result_deadline: chrono::Duration::seconds(i64::from(cfg.result_deadline_s)),
            max_retries: cfg.max_retries,
            fence,
            sites: HashMap::new(),
        }
    }

    /// Runs one pass. Returns how soon the next pass is due for a deadline or a restore batch,
    /// if sooner than the safety tick.
    pub async fn pass(&mut self, results: Vec<Incoming>) -> Option<Duration> {
        let started = Instant::now();
        for Incoming { result, message } in results {
            match self.apply_result(&result).await {
                Ok(()) => {
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
        match fleet::all_sites(&self.pool).await {
            Ok(sites) => {
                self.sites = sites
                    .into_iter()
                    .map(|s| (s.id, (s.code, s.ramp_limit_kw_per_min)))
                    .collect()
            }
            Err(e) => tracing::warn!(error = ?e, "loading sites"),
        }
        let live = match events::live_events(&self.pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = ?e, "listing live events");
                metrics::counter!(names::RECONCILER_PASS_FAILURES).increment(1);
                return None;
            }
        };
        let mut next: Option<Duration> = None;
        for ev in live {
            let id = ev.id;
            match AssertUnwindSafe(self.reconcile_event(ev))
                .catch_unwind()
                .await
            {
                Ok(Ok(n)) => next = min_opt(next, n),
                Ok(Err(e)) => {
                    metrics::counter!(names::RECONCILER_EVENT_ERRORS).increment(1);
                    tracing::error!(event_id = %id, error = ?e, "reconciling event failed");
                }
                Err(_) => {
                    metrics::counter!(names::RECONCILER_EVENT_ERRORS).increment(1);
                    tracing::error!(event_id = %id, "reconciling event panicked");
                }
            }
        }
        metrics::histogram!(names::RECONCILER_PASS_SECONDS).record(started.elapsed().as_secs_f64());
        next
    }

    /// Records what the agent said about each device. Success changes nothing (telemetry
    /// confirms); any other outcome spends an attempt and queues the target again, or fails it.
    async fn apply_result(&self, r: &BatchResult) -> anyhow::Result<()> {
        let event = match r.event_id {
            Some(e) => Some(e),
            None => events::event_of_batch(&self.pool, r.batch_id).await?,
        };
        let Some(event) = event else { return Ok(()) };
        let commanded = match r.command {
            Some(CommandKind::SetPowerTarget { watts }) => Some(watts),
            _ => None,
        };
        // A prior limit equal to what this event commanded was set by this event (a retried
        // command that had taken effect): restoring it would keep the miner curtailed.
        let limits: Vec<(DeviceId, f64)> = r
            .results
            .iter()
            .filter(|d| d.outcome.is_success())
            .filter_map(|d| {
                d.prior_power_limit_w
                    .filter(|w| w.is_finite() && *w > 0.0)
                    .map(|w| (d.device_id, w))
            })
            .filter(|(_, w)| commanded.is_none_or(|c| (c - w).abs() > 1.0))
            .collect();
        events::record_prior_power_limits(&self.pool, event, &limits).await?;
        let ok: Vec<DeviceId> = r
            .results
            .iter()
            .filter(|d| d.outcome.is_success())
            .map(|d| d.device_id)
            .collect();
        events::record_results(&self.pool, event, r.batch_id, &ok).await?;

        let failed: HashMap<DeviceId, String> = r
            .results
            .iter()
            .filter(|d| !d.outcome.is_success())
            .map(|d| (d.device_id, d.outcome.to_string()))
            .collect();
        if failed.is_empty() {
            return Ok(());
        }
        let targets = events::targets_of_batch(&self.pool, event, r.batch_id).await?;
        let spends: Vec<Spend<'_>> = targets
            .iter()
            .filter(|t| failed.contains_key(&t.device_id))
            .filter(|t| {
                matches!(
                    t.state,
                    TargetState::Dispatched | TargetState::RestoreDispatched
                )
            })
            .map(|t| Spend {
                target: t,
                reason: SpendReason::CommandFailed,
            })
            .collect();
        for (device, outcome) in &failed {
            tracing::info!(event_id = %event, device_id = %device, outcome, "command failed on device");
        }
        self.spend(event, &spends, Some(r.batch_id)).await?;
        Ok(())
    }

    async fn reconcile_event(&self, ev: EventRow) -> anyhow::Result<Option<Duration>> {
        let now = Utc::now();
        match ev.state {
            EventState::Pending | EventState::Active => {
                if let Some(max) = ev.max_duration_s
                    && now >= ev.created_at + chrono::Duration::seconds(i64::from(max))
                {
                    tracing::info!(event_id = %ev.id, max_duration_s = max, "max duration elapsed; restoring");
                    self.stop_event(&ev, StopCause::MaxDuration).await?;
                    return Ok(Some(Duration::ZERO));
                }
                let targets = events::targets(&self.pool, ev.id).await?;
                self.curtail_side(&ev, &targets, now).await
            }
            EventState::Restoring => {
                let targets = events::targets(&self.pool, ev.id).await?;
                self.restore_side(&ev, &targets, now).await
            }
            _ => Ok(None),
        }
    }

    async fn curtail_side(
        &self,
        ev: &EventRow,
        targets: &[TargetRow],
        now: DateTime<Utc>,
    ) -> anyhow::Result<Option<Duration>> {
        let mut next = None;
        let mut dispatch: Vec<&TargetRow> = Vec::new();
        let mut orphans: BTreeMap<BatchId, Vec<&TargetRow>> = BTreeMap::new();
        let mut confirm: BTreeMap<TargetState, Vec<DeviceId>> = BTreeMap::new();
        let mut drift = Vec::new();
        let mut spends = Vec::new();
        for t in targets {
            match t.state {
                TargetState::Pending if t.device_missing => spends.push(Spend {
                    target: t,
                    reason: SpendReason::DeviceVanished,
                }),
                TargetState::Pending => dispatch.push(t),
                // An orphan of a leader that died between stamp and publish: republished under
                // its own batch id, so the stream drops it if the first publish landed. It never
                // reached the miner as far as we know, so it costs no attempt.
                TargetState::Dispatching => match t.last_batch_id {
                    Some(b) => orphans.entry(b).or_default().push(t),
                    None => spends.push(Spend {
                        target: t,
                        reason: SpendReason::StampedWithoutBatch,
                    }),
                },
                TargetState::Dispatched => {
                    let since = t.dispatched_at.unwrap_or(t.updated_at);
                    match self.policy.curtail_evidence(
                        &ev.command,
                        t.baseline_power_w,
                        t.sample.as_ref(),
                        since,
                    ) {
                        Evidence::Holds => confirm
                            .entry(TargetState::Dispatched)
                            .or_default()
                            .push(t.device_id),
                        _ => match self.overdue(t, now) {
                            Ok(wait) => next = min_opt(next, Some(wait)),
                            Err(reason) => spends.push(Spend { target: t, reason }),
                        },
                    }
                }
                TargetState::Confirmed => {
                    let since = t.confirmed_at.unwrap_or(t.updated_at);
                    // Drift needs a fresh sample that contradicts; missing telemetry never fires it.
                    if self.policy.curtail_evidence(
                        &ev.command,
                        t.baseline_power_w,
                        t.sample.as_ref(),
                        since,
                    ) == Evidence::Contradicts
                    {
                        drift.push(t);
                    }
                }
                TargetState::Drifted => {
                    let since = t.confirmed_at.unwrap_or(t.updated_at);
                    match self.policy.curtail_evidence(
                        &ev.command,
                        t.baseline_power_w,
                        t.sample.as_ref(),
                        since,
                    ) {
                        Evidence::Holds => confirm
                            .entry(TargetState::Drifted)
                            .or_default()
                            .push(t.device_id),
                        _ => spends.push(Spend {
                            target: t,
                            reason: SpendReason::Drifted,
                        }),
                    }
                }
                _ => {}
            }
        }

        for (from, devices) in &confirm {
            let change = TargetChange {
                set_confirmed_at: true,
                retry: Retry::Reset,
                failure: Failure::Clear,
                ..Default::default()
            };
            let moved = events::transition_targets(
                &self.pool,
                ev.id,
                devices,
                *from,
                TargetState::Confirmed,
                &change,
                ACTOR,
            )
            .await?;
            self.count(*from, TargetState::Confirmed, devices.len(), moved.len());
        }
        if !drift.is_empty() {
            let ids: Vec<DeviceId> = drift.iter().map(|t| t.device_id).collect();
            let change = TargetChange {
                flap: true,
                failure: Failure::Set(SpendReason::Drifted),
                ..Default::default()
            };
            let moved = events::transition_targets(
                &self.pool,
                ev.id,
                &ids,
                TargetState::Confirmed,
                TargetState::Drifted,
                &change,
                ACTOR,
            )
            .await?;
            self.count(
                TargetState::Confirmed,
                TargetState::Drifted,
                ids.len(),
                moved.len(),
            );
            for t in drift.iter().filter(|t| moved.contains(&t.device_id)) {
                tracing::info!(event_id = %ev.id, device_id = %t.device_id, "target drifted; re-sending");
                spends.push(Spend {
                    target: t,
                    reason: SpendReason::Drifted,
                });
            }
        }
        // Drifted targets spend from `drifted` even when they were `confirmed` a moment ago.
        let requeued = self.spend_from_drift_aware(ev, &spends).await?;
        dispatch.extend(
            targets
                .iter()
                .filter(|t| !t.device_missing && requeued.contains(&t.device_id)),
        );

        for (batch, ts) in orphans {
            // A fresh orphan from a leader that died mid-dispatch: republish under the same id, so
            // the stream drops it if the first publish did land.
            self.publish_and_mark(
                ev,
                batch,
                &ts,
                ev.command,
                TargetState::Dispatching,
                TargetState::Dispatched,
            )
            .await?;
        }
        self.dispatch(
            ev,
            &dispatch,
            ev.command,
            TargetState::Pending,
            TargetState::Dispatching,
            TargetState::Dispatched,
        )
        .await?;

        // Progress the event once nothing is in flight.
        let counts = events::target_counts(&self.pool, &[ev.id])
            .await?
            .remove(&ev.id)
            .unwrap_or_default();
        let n = |s: TargetState| counts.get(s.as_str()).copied().unwrap_or(0);
        let moving = n(TargetState::Pending)
            + n(TargetState::Dispatching)
            + n(TargetState::Dispatched)
            + n(TargetState::Drifted);
        if moving == 0 {
            if n(TargetState::Confirmed) == 0 {
                tracing::warn!(event_id = %ev.id, "every target failed; restoring what was touched");
                self.stop_event(ev, StopCause::AllFailed).await?;
                return Ok(Some(Duration::ZERO));
            }
            if ev.state == EventState::Pending {
                self.move_event(ev, EventState::Pending, EventState::Active, None)
                    .await?;
            }
        }
        if !dispatch.is_empty() {
            next = min_opt(
                next,
                Some(self.confirm_deadline.to_std().unwrap_or_default()),
            );
        }
        Ok(next)
    }

    async fn restore_side(
        &self,
        ev: &EventRow,
        targets: &[TargetRow],
        now: DateTime<Utc>,
    ) -> anyhow::Result<Option<Duration>> {
        let mut next = None;
        let mut pending: Vec<&TargetRow> = Vec::new();
        let mut orphans: BTreeMap<BatchId, Vec<&TargetRow>> = BTreeMap::new();
        let mut restored = Vec::new();
        let mut spends = Vec::new();
        for t in targets {
            match t.state {
                TargetState::RestorePending if t.device_missing => spends.push(Spend {
                    target: t,
                    reason: SpendReason::DeviceVanished,
                }),
                TargetState::RestorePending => pending.push(t),
                // An orphan of a leader that died between stamp and publish: republished under
                // its own batch id, so the stream drops it if the first publish landed. It never
                // reached the miner as far as we know, so it costs no attempt.
                TargetState::RestoreDispatching => match t.last_batch_id {
                    Some(b) => orphans.entry(b).or_default().push(t),
                    None => spends.push(Spend {
                        target: t,
                        reason: SpendReason::StampedWithoutBatch,
                    }),
                },
                TargetState::RestoreDispatched => {
                    let since = t.dispatched_at.unwrap_or(t.updated_at);
                    match self
                        .policy
                        .restore_evidence(&ev.command, t.sample.as_ref(), since)
                    {
                        Evidence::Holds => restored.push(t.device_id),
                        _ => match self.overdue(t, now) {
                            Ok(wait) => next = min_opt(next, Some(wait)),
                            Err(reason) => spends.push(Spend { target: t, reason }),
                        },
                    }
                }
                _ => {}
            }
        }
        if !restored.is_empty() {
            let change = TargetChange {
                failure: Failure::Clear,
                ..Default::default()
            };
            let moved = events::transition_targets(
                &self.pool,
                ev.id,
                &restored,
                TargetState::RestoreDispatched,
                TargetState::Restored,
                &change,
                ACTOR,
            )
            .await?;
            self.count(
                TargetState::RestoreDispatched,
                TargetState::Restored,
                restored.len(),
                moved.len(),
            );
        }
        let requeued = self.spend(ev.id, &spends, None).await?;
        pending.extend(
            targets
                .iter()
                .filter(|t| !t.device_missing && requeued.contains(&t.device_id)),
        );

        let uncurtail = CommandKind::Uncurtail;
        for (batch, ts) in orphans {
            self.publish_and_mark(
                ev,
                batch,
                &ts,
                uncurtail,
                TargetState::RestoreDispatching,
                TargetState::RestoreDispatched,
            )
            .await?;
        }

        let pacing = RestorePacing {
            batch_size: ev.restore_batch_size,
            interval: chrono::Duration::seconds(i64::from(ev.restore_batch_interval_s)),
        };
        if !pending.is_empty() {
            if pacing.due(ev.last_restore_batch_at, now) {
                let list: Vec<(SiteId, f64)> = pending
                    .iter()
                    .map(|t| (t.site_id, t.baseline_power_w / 1000.0))
                    .collect();
                let pick =
                    next_restore_batch(&list, &pacing, |s| self.sites.get(&s).and_then(|x| x.1));
                let chosen: Vec<&TargetRow> = pick.iter().map(|i| pending[*i]).collect();
                events::mark_restore_batch(&self.pool, ev.id, now).await?;
                self.dispatch(
                    ev,
                    &chosen,
                    uncurtail,
                    TargetState::RestorePending,
                    TargetState::RestoreDispatching,
                    TargetState::RestoreDispatched,
                )
                .await?;
                tracing::info!(event_id = %ev.id, devices = chosen.len(), left = pending.len() - chosen.len(), "restore batch sent");
                next = min_opt(next, Some(pacing.interval.to_std().unwrap_or_default()));
            } else if let Some(last) = ev.last_restore_batch_at {
                next = min_opt(next, Some(until(last + pacing.interval, now)));
            }
        }

        // Completion: every target settled.
        let counts = events::target_counts(&self.pool, &[ev.id])
            .await?
            .remove(&ev.id)
            .unwrap_or_default();
        let states = counts.keys().filter_map(|s| s.parse::<TargetState>().ok());
        // The schema requires a cause on every restoring event; without one, it was a request.
        let cause = ev.stop_cause.unwrap_or(StopCause::Requested);
        if let Some(end) = restore_outcome(states, cause) {
            self.move_event(ev, EventState::Restoring, end, None)
                .await?;
            tracing::info!(event_id = %ev.id, state = %end, "curtailment ended");
        }
        Ok(next)
    }

    /// How long a dispatched target may still wait, or why it is out of time. The confirmation
    /// deadline counts from the agent's success result; until a result arrives, the longer result
    /// deadline counts from the publish (a batch may queue behind others at a large site).
    fn overdue(&self, t: &TargetRow, now: DateTime<Utc>) -> Result<Duration, SpendReason> {
        match t.result_at {
            Some(r) if now - r > self.confirm_deadline => Err(SpendReason::NotConfirmed),
            Some(r) => Ok(until(r + self.confirm_deadline, now)),
            None => {
                let since = t.dispatched_at.unwrap_or(t.updated_at);
                if now - since > self.result_deadline {
                    Err(SpendReason::NoResult)
                } else {
                    Ok(until(since + self.result_deadline, now))
                }
            }
        }
    }

    /// Spends an attempt for each target; drifted targets are moved out of `drifted` (their state
    /// in `targets` may still say `confirmed` from before this pass).
    async fn spend_from_drift_aware(
        &self,
        ev: &EventRow,
        spends: &[Spend<'_>],
    ) -> anyhow::Result<Vec<DeviceId>> {
        let fixed: Vec<TargetRow> = spends
            .iter()
            .map(|s| {
                let mut t = s.target.clone();
                if s.reason == SpendReason::Drifted {
                    t.state = TargetState::Drifted;
                }
                t
            })
            .collect();
        let again: Vec<Spend<'_>> = fixed
            .iter()
            .zip(spends)
            .map(|(t, s)| Spend {
                target: t,
                reason: s.reason,
            })
            .collect();
        self.spend(ev.id, &again, None).await
    }

    /// Spends one attempt on each target: back to its queue (`pending`/`restore_pending`) while
    /// attempts remain, else `failed`/`restore_failed` (DESIGN §5.4: `retry_count >= max_retries`
    /// everywhere). Returns the devices queued again.
    async fn spend(
        &self,
        event: ebb_domain::EventId,
        spends: &[Spend<'_>],
        batch: Option<BatchId>,
    ) -> anyhow::Result<Vec<DeviceId>> {
        let mut groups: BTreeMap<(TargetState, TargetState, SpendReason), Vec<DeviceId>> =
            BTreeMap::new();
        for s in spends {
            let t = s.target;
            let restore_side = !t.state.is_curtail_phase();
            let exhausted = t.retry_count + 1 >= self.max_retries;
            let to = match (restore_side, exhausted) {
                (false, false) => TargetState::Pending,
                (false, true) => TargetState::Failed,
                (true, false) => TargetState::RestorePending,
                (true, true) => TargetState::RestoreFailed,
            };
            groups
                .entry((t.state, to, s.reason))
                .or_default()
                .push(t.device_id);
        }
        let mut requeued = Vec::new();
        for ((from, to, reason), devices) in groups {
            let change = TargetChange {
                retry: Retry::Spend,
                failure: Failure::Set(reason),
                expect_batch: batch,
                ..Default::default()
            };
            let moved =
                events::transition_targets(&self.pool, event, &devices, from, to, &change, ACTOR)
                    .await?;
            self.count(from, to, devices.len(), moved.len());
            if matches!(to, TargetState::Failed | TargetState::RestoreFailed) && !moved.is_empty() {
                tracing::warn!(event_id = %event, devices = moved.len(), reason = %reason, state = %to, "targets exhausted their attempts");
            }
            if matches!(to, TargetState::Pending | TargetState::RestorePending) {
                requeued.extend(moved);
            }
        }
        Ok(requeued)
    }

    /// Stamps, publishes and marks `targets` in bounded per-site batches (DESIGN §5.1): `stamped`
    /// is written before the publish, `done` after the stream acked it. A failed publish leaves
    /// the batch stamped, to be republished under the same id by the next pass at no cost.
    async fn dispatch(
        &self,
        ev: &EventRow,
        targets: &[&TargetRow],
        command: CommandKind,
        from: TargetState,
        stamped: TargetState,
        done: TargetState,
    ) -> anyhow::Result<()> {
        let mut by_site: BTreeMap<SiteId, Vec<&TargetRow>> = BTreeMap::new();
        for t in targets {
            by_site.entry(t.site_id).or_default().push(t);
        }
        for (_, site_targets) in by_site {
            for chunk in site_targets.chunks(split::MAX_BATCH_DEVICES) {
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
                self.publish_and_mark(ev, batch, &batch_targets, command, stamped, done)
                    .await?;
            }
        }
        Ok(())
    }

    async fn publish_and_mark(
        &self,
        ev: &EventRow,
        batch: BatchId,
        targets: &[&TargetRow],
        command: CommandKind,
        stamped: TargetState,
        done: TargetState,
    ) -> anyhow::Result<()> {
        let Some(first) = targets.first() else {
            return Ok(());
        };
        let Some((site, _)) = self.sites.get(&first.site_id) else {
            anyhow::bail!("site {} of event {} is unknown", first.site_id, ev.id);
        };
        let devices: Vec<DeviceRef> = targets
            .iter()
            .map(|t| DeviceRef {
                device_id: t.device_id,
                address: t.address.clone(),
                restore_power_limit_w: if command == CommandKind::Uncurtail {
                    t.prior_power_limit_w
                } else {
                    None
                },
            })
            .collect();
        let body = CommandBatch {
            batch_id: batch,
            event_id: Some(ev.id),
            site: site.clone(),
            command,
            devices,
        };
        let payload = ebb_bus::encode(&Envelope::new(Some(ev.org_id), body))
            .context("encoding a command batch")?;
        if payload.len() > split::MAX_BATCH_BYTES {
            anyhow::bail!(
                "command batch of {} devices encodes to {} bytes",
                targets.len(),
                payload.len()
            );
        }
        let trace = TraceParent::new_root();
        let published = ebb_bus::publish::publish_acked(
            &self.js,
            subjects::cmd(site),
            &batch.to_string(),
            payload,
            Some(&trace.to_string()),
        )
        .await;
        if let Err(e) = published {
            // Stays stamped: the next pass republishes under the same id, and it costs no attempt.
            tracing::warn!(event_id = %ev.id, batch_id = %batch, error = %e, "publishing a batch failed");
            return Ok(());
        }
        metrics::counter!(names::RECONCILER_BATCHES_PUBLISHED, "kind" => command.label())
            .increment(1);
        tracing::debug!(event_id = %ev.id, batch_id = %batch, site = %site, devices = targets.len(), trace_id = %trace.trace_id_hex(), "batch published");
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
    ) -> anyhow::Result<()> {
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
        Ok(())
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

fn min_opt(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

fn until(at: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    (at - now).to_std().unwrap_or(Duration::ZERO) + Duration::from_millis(50)
}
