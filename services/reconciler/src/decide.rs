//! The reconciler's decisions, with no I/O: from an event, its targets, the time and the policy
//! to what one pass does (settle, drift, spend, republish, send, and the event's own step). The
//! I/O layer ([`crate::pass`]) loads the inputs and executes the [`Decisions`]; everything that
//! DESIGN §5 says about *what* happens is decided here and tested by the tables below it.
//!
//! Curtail and restore are one shape selected by [`Phase`]: queued → stamped → sent → settled, or
//! back to queued while attempts remain, else failed. Only curtail watches settled targets for
//! drift, and only restore is paced.

use chrono::{DateTime, Utc};
use ebb_bus::BatchResult;
use ebb_domain::backoff::Backoff;
use ebb_domain::confirm::{ConfirmPolicy, Evidence};
use ebb_domain::pacing::{RestorePacing, SiteBudget, next_restore_batch_within};
use ebb_domain::state::restore_outcome;
use ebb_domain::{
    BatchId, CommandKind, DeviceId, EventState, SiteId, SpendReason, StopCause, TargetState,
};
use ebb_store::events::{EventRow, TargetRow};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

/// What the decisions read besides the event and its targets.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy {
    pub confirm: ConfirmPolicy,
    /// How long telemetry may take to confirm a command once the agent reported success.
    pub confirm_deadline: chrono::Duration,
    /// How long a published batch may wait for the agent's result before it costs an attempt
    /// (a batch may queue behind others at a large site).
    pub result_deadline: chrono::Duration,
    /// Attempts per target per episode (DESIGN §5.4).
    pub max_retries: u32,
    /// The wait between a target's attempts (issue 12, item 9).
    pub backoff: Backoff,
}

/// The fields of an event that decide its pass.
#[derive(Clone, Debug, PartialEq)]
pub struct EventView {
    pub state: EventState,
    /// The command every target receives while curtailing.
    pub command: CommandKind,
    pub created_at: DateTime<Utc>,
    pub max_duration_s: Option<u32>,
    pub stop_cause: Option<StopCause>,
    pub pacing: RestorePacing,
    pub last_restore_batch_at: Option<DateTime<Utc>>,
}

impl From<&EventRow> for EventView {
    fn from(ev: &EventRow) -> Self {
        Self {
            state: ev.state,
            command: ev.command,
            created_at: ev.created_at,
            max_duration_s: ev.max_duration_s,
            stop_cause: ev.stop_cause,
            pacing: RestorePacing {
                batch_size: ev.restore_batch_size,
                interval: chrono::Duration::seconds(i64::from(ev.restore_batch_interval_s)),
            },
            last_restore_batch_at: ev.last_restore_batch_at,
        }
    }
}

/// Which half of the target state machine a pass drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Curtail,
    Restore,
}

impl Phase {
    /// The phase a target state belongs to.
    pub fn of(state: TargetState) -> Phase {
        if state.is_curtail_phase() {
            Phase::Curtail
        } else {
            Phase::Restore
        }
    }

    /// Waiting to be sent.
    pub fn queued(self) -> TargetState {
        match self {
            Phase::Curtail => TargetState::Pending,
            Phase::Restore => TargetState::RestorePending,
        }
    }

    /// Written before the publish (DESIGN §5.1).
    pub fn stamped(self) -> TargetState {
        match self {
            Phase::Curtail => TargetState::Dispatching,
            Phase::Restore => TargetState::RestoreDispatching,
        }
    }

    /// Written after the stream acked the publish.
    pub fn sent(self) -> TargetState {
        match self {
            Phase::Curtail => TargetState::Dispatched,
            Phase::Restore => TargetState::RestoreDispatched,
        }
    }

    /// Telemetry showed the command in effect.
    pub fn settled(self) -> TargetState {
        match self {
            Phase::Curtail => TargetState::Confirmed,
            Phase::Restore => TargetState::Restored,
        }
    }

    /// Attempts exhausted.
    pub fn failed(self) -> TargetState {
        match self {
            Phase::Curtail => TargetState::Failed,
            Phase::Restore => TargetState::RestoreFailed,
        }
    }

    /// The command this phase sends for an event that curtails with `curtail`.
    pub fn command(self, curtail: CommandKind) -> CommandKind {
        match self {
            Phase::Curtail => curtail,
            Phase::Restore => CommandKind::Uncurtail,
        }
    }

    /// What a target's latest sample, taken after `since`, says about this phase's command.
    fn evidence(self, p: &ConfirmPolicy, curtail: &CommandKind, t: &TargetRow) -> Evidence {
        let since = match t.state {
            TargetState::Confirmed | TargetState::Drifted => t.confirmed_at,
            _ => t.dispatched_at,
        }
        .unwrap_or(t.updated_at);
        match self {
            Phase::Curtail => {
                p.curtail_evidence(curtail, t.baseline_power_w, t.sample.as_ref(), since)
            }
            Phase::Restore => p.restore_evidence(curtail, t.sample.as_ref(), since),
        }
    }
}

/// Why a target moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Why {
    /// Fresh telemetry shows the command in effect: confirmed (a new episode starts) or restored.
    Settled,
    /// A confirmed target's fresh telemetry contradicts its command: one more flap.
    Drifted,
    /// One attempt spent.
    Spent(SpendReason),
}

/// One compare-and-set over some targets of the event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    pub from: TargetState,
    pub to: TargetState,
    pub why: Why,
    pub devices: Vec<DeviceId>,
    /// For a spend back into the queue: when each device may be sent again (its backoff).
    pub retry_at: Vec<(DeviceId, DateTime<Utc>)>,
}

/// The event's own step, taken once its targets' moves are done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventStep {
    /// Pending → active: nothing is in flight and some target is confirmed.
    Activate,
    /// Stop curtailing and restore what was touched.
    Stop(StopCause),
    /// Restore finished: the event ends in this state.
    End(EventState),
}

/// Everything one pass does for one live event, in the order the I/O layer executes it.
#[derive(Clone, Debug, PartialEq)]
pub struct Decisions {
    pub phase: Phase,
    /// Compare-and-sets, in order: a drift comes before the spend out of `drifted`.
    pub moves: Vec<Move>,
    /// Orphans stamped by a leader that died before publishing: published again under their own
    /// batch id, so the stream drops the copy if the first publish landed. Costs no attempt.
    pub republish: BTreeMap<BatchId, Vec<DeviceId>>,
    /// Targets to stamp and send now, in order: queued ones and those just queued again by a
    /// spend. A restore batch is already paced. A target whose move lost a race is skipped.
    pub send: Vec<DeviceId>,
    /// Taken only if every move above moved what it expected; else the next pass decides again
    /// from what the database says.
    pub event: Option<EventStep>,
    /// How soon the next pass is due for a deadline or a restore batch.
    pub wake: Option<Duration>,
}

impl Decisions {
    fn new(phase: Phase) -> Self {
        Self {
            phase,
            moves: Vec::new(),
            republish: BTreeMap::new(),
            send: Vec::new(),
            event: None,
            wake: None,
        }
    }

    /// Whether executing these sends a restore batch, which the pacing gate must remember.
    pub fn sends_restore_batch(&self) -> bool {
        self.phase == Phase::Restore && !self.send.is_empty()
    }

    fn wake_within(&mut self, d: Duration) {
        self.wake = Some(self.wake.map_or(d, |w| w.min(d)));
    }
}

/// What one target needs this pass.
enum Verdict {
    /// Nothing now.
    Keep,
    /// In flight; its deadline is this far away.
    Wait(Duration),
    Send,
    Republish(BatchId),
    Settle,
    /// Confirmed → drifted, then a spend out of drifted.
    Drift,
    Spend(SpendReason),
}

/// How soon a pass looks again at a target whose deadline passed while its site was silent.
pub const SILENT_RECHECK: Duration = Duration::from_secs(5);

/// What the reconciler knows of a site's agent (issue 11).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Agent {
    /// Heard from throughout.
    Live,
    /// Neither results nor telemetry for a while: its targets are charged nothing.
    Silent,
    /// Heard from again at this moment after a silence: deadlines count from here, so the
    /// agent has its full time for the backlog it was handed back.
    BackSince(DateTime<Utc>),
}

/// [`decide_with`] with every site's agent heard from (the decision tables).
#[cfg(test)]
pub fn decide(
    ev: &EventView,
    targets: &[TargetRow],
    now: DateTime<Utc>,
    policy: &Policy,
    site_budget: impl Fn(SiteId) -> Option<SiteBudget>,
) -> Option<Decisions> {
    decide_with(ev, targets, now, policy, site_budget, |_| Agent::Live)
}

/// The decisions of one pass over a live event, or `None` for an event that is not live. A
/// target of a site whose agent is [`Agent::Silent`] is never charged an attempt for a missing
/// result or confirmation: it waits for the agent; once the agent is back, its deadlines count
/// from its return.
pub fn decide_with(
    ev: &EventView,
    targets: &[TargetRow],
    now: DateTime<Utc>,
    policy: &Policy,
    site_budget: impl Fn(SiteId) -> Option<SiteBudget>,
    agent: impl Fn(SiteId) -> Agent,
) -> Option<Decisions> {
    let phase = match ev.state {
        EventState::Pending | EventState::Active => Phase::Curtail,
        EventState::Restoring => Phase::Restore,
        _ => return None,
    };
    let mut d = Decisions::new(phase);
    if phase == Phase::Curtail
        && let Some(max) = ev.max_duration_s
        && now >= ev.created_at + chrono::Duration::seconds(i64::from(max))
    {
        d.event = Some(EventStep::Stop(StopCause::MaxDuration));
        d.wake = Some(Duration::ZERO);
        return Some(d);
    }

    let mut moves = MoveSet::default();
    let mut ready: Vec<&TargetRow> = Vec::new();
    // Each target's state once this pass's moves are done: the event's step reads these.
    let mut after: Vec<TargetState> = Vec::with_capacity(targets.len());
    for t in targets {
        let state = match verdict(phase, ev, t, now, policy, agent(t.site_id)) {
            Verdict::Keep => t.state,
            Verdict::Wait(w) => {
                d.wake_within(w);
                t.state
            }
            Verdict::Send => {
                ready.push(t);
                t.state
            }
            Verdict::Republish(b) => {
                d.republish.entry(b).or_default().push(t.device_id);
                t.state
            }
            Verdict::Settle => {
                moves.settle.entry(t.state).or_default().push(t.device_id);
                phase.settled()
            }
            Verdict::Drift => {
                moves.drift.push(t.device_id);
                let to =
                    moves.spend_one(phase, t, TargetState::Drifted, SpendReason::Drifted, policy);
                queue_again(phase, t, to, now, &mut ready, &mut d)
            }
            Verdict::Spend(reason) => {
                let to = moves.spend_one(phase, t, t.state, reason, policy);
                queue_again(phase, t, to, now, &mut ready, &mut d)
            }
        };
        after.push(state);
    }
    d.moves = moves.into_moves(phase);

    match phase {
        Phase::Curtail => {
            d.send = ready.iter().map(|t| t.device_id).collect();
            if !d.send.is_empty() {
                d.wake_within(policy.confirm_deadline.to_std().unwrap_or_default());
            }
        }
        Phase::Restore if !ready.is_empty() => {
            if ev.pacing.due(ev.last_restore_batch_at, now) {
                let load: Vec<(SiteId, f64)> = ready
                    .iter()
                    .map(|t| (t.site_id, t.baseline_power_w / 1000.0))
                    .collect();
                d.send = next_restore_batch_within(&load, ev.pacing.batch_size, site_budget)
                    .into_iter()
                    .map(|i| ready[i].device_id)
                    .collect();
                d.wake_within(ev.pacing.interval.to_std().unwrap_or_default());
            } else if let Some(last) = ev.last_restore_batch_at {
                d.wake_within(until(last + ev.pacing.interval, now));
            }
        }
        Phase::Restore => {}
    }

    d.event = event_step(phase, ev, &after);
    if matches!(d.event, Some(EventStep::Stop(_))) {
        // Restore starts on the very next pass.
        d.wake = Some(Duration::ZERO);
    }
    Some(d)
}

fn verdict(
    phase: Phase,
    ev: &EventView,
    t: &TargetRow,
    now: DateTime<Utc>,
    policy: &Policy,
    agent: Agent,
) -> Verdict {
    let s = t.state;
    if s == phase.queued() || s == phase.stamped() {
        if t.device_missing {
            return Verdict::Spend(SpendReason::DeviceVanished);
        }
        if s == phase.queued() {
            // A target that spent an attempt waits out its backoff (counted from that attempt).
            return match t
                .next_attempt_at
                .filter(|at| t.retry_count > 0 && *at > now)
            {
                Some(at) => Verdict::Wait(until(at, now)),
                None => Verdict::Send,
            };
        }
        // An orphan of a leader that died between stamp and publish. It never reached the miner
        // as far as anyone knows, so republishing it costs no attempt.
        return match t.last_batch_id {
            Some(b) => Verdict::Republish(b),
            None => Verdict::Spend(SpendReason::StampedWithoutBatch),
        };
    }
    let evidence = || phase.evidence(&policy.confirm, &ev.command, t);
    if s == phase.sent() {
        return match evidence() {
            Evidence::Holds => Verdict::Settle,
            _ => match overdue(t, now, policy, agent) {
                Ok(wait) => Verdict::Wait(wait),
                // The agent's absence is not the miner's failure (issue 11).
                Err(_) if agent == Agent::Silent => Verdict::Wait(SILENT_RECHECK),
                Err(reason) => Verdict::Spend(reason),
            },
        };
    }
    match (phase, s) {
        // Drift needs a fresh sample that contradicts; missing telemetry never fires it.
        (Phase::Curtail, TargetState::Confirmed) if evidence() == Evidence::Contradicts => {
            Verdict::Drift
        }
        (Phase::Curtail, TargetState::Drifted) => match evidence() {
            Evidence::Holds => Verdict::Settle,
            _ => Verdict::Spend(SpendReason::Drifted),
        },
        _ => Verdict::Keep,
    }
}

/// How long a sent target may still wait, or why it is out of time. The confirmation deadline
/// counts from the agent's success result; until a result arrives, the longer result deadline
/// counts from the publish.
fn overdue(
    t: &TargetRow,
    now: DateTime<Utc>,
    policy: &Policy,
    agent: Agent,
) -> Result<Duration, SpendReason> {
    let (since, deadline, reason) = match t.result_at {
        Some(r) => (r, policy.confirm_deadline, SpendReason::NotConfirmed),
        None => (
            t.dispatched_at.unwrap_or(t.updated_at),
            policy.result_deadline,
            SpendReason::NoResult,
        ),
    };
    let since = match agent {
        Agent::BackSince(back) => since.max(back),
        _ => since,
    };
    if now - since > deadline {
        Err(reason)
    } else {
        Ok(until(since + deadline, now))
    }
}

/// Where a target goes when it spends one attempt: back to its phase's queue while attempts
/// remain, else failed. DESIGN §5.4: `retry_count >= max_retries` on every path, here counting
/// the attempt being spent.
pub fn spend_to(phase: Phase, retry_count: u32, max_retries: u32) -> TargetState {
    let spent = retry_count.saturating_add(1);
    if spent >= max_retries {
        phase.failed()
    } else {
        phase.queued()
    }
}

/// A target that spent back into its queue is sent again in the same pass if its backoff has
/// already passed (its attempt went out long ago, as after a deadline), unless its device is
/// gone; otherwise the pass wakes when the backoff ends. Returns the state it is in after the
/// spend.
fn queue_again<'t>(
    phase: Phase,
    t: &'t TargetRow,
    to: (TargetState, Option<DateTime<Utc>>),
    now: DateTime<Utc>,
    ready: &mut Vec<&'t TargetRow>,
    d: &mut Decisions,
) -> TargetState {
    let (to, retry_at) = to;
    if to == phase.queued() && !t.device_missing {
        match retry_at.filter(|at| *at > now) {
            Some(at) => d.wake_within(until(at, now)),
            None => ready.push(t),
        }
    }
    to
}

/// The event's step implied by its targets' states after this pass.
fn event_step(phase: Phase, ev: &EventView, after: &[TargetState]) -> Option<EventStep> {
    match phase {
        Phase::Curtail => {
            let moving = after.iter().any(|s| {
                matches!(
                    s,
                    TargetState::Pending
                        | TargetState::Dispatching
                        | TargetState::Dispatched
                        | TargetState::Drifted
                )
            });
            if moving {
                None
            } else if !after.contains(&TargetState::Confirmed) {
                Some(EventStep::Stop(StopCause::AllFailed))
            } else if ev.state == EventState::Pending {
                Some(EventStep::Activate)
            } else {
                None
            }
        }
        // The schema requires a cause on every restoring event; without one, it was a request.
        Phase::Restore => restore_outcome(
            after.iter().copied(),
            ev.stop_cause.unwrap_or(StopCause::Requested),
        )
        .map(EventStep::End),
    }
}

/// Moves grouped so that each becomes one statement.
#[derive(Default)]
struct MoveSet {
    /// By prior state.
    settle: BTreeMap<TargetState, Vec<DeviceId>>,
    drift: Vec<DeviceId>,
    spend: BTreeMap<(TargetState, TargetState, SpendReason), Vec<DeviceId>>,
    /// When each device spent back into its queue may be sent again.
    retry_at: Vec<(DeviceId, DateTime<Utc>)>,
}

impl MoveSet {
    /// Spends one attempt of `t` from `from` (its state, or `drifted` right after a drift) and
    /// returns where it goes, with when it may be sent again if that is back to its queue: its
    /// backoff, counted from when the attempt went out.
    fn spend_one(
        &mut self,
        phase: Phase,
        t: &TargetRow,
        from: TargetState,
        reason: SpendReason,
        policy: &Policy,
    ) -> (TargetState, Option<DateTime<Utc>>) {
        let to = spend_to(phase, t.retry_count, policy.max_retries);
        self.spend
            .entry((from, to, reason))
            .or_default()
            .push(t.device_id);
        let retry_at = (to == phase.queued()).then(|| {
            policy.backoff.next_attempt_at(
                t.device_id,
                t.retry_count.saturating_add(1),
                t.dispatched_at.unwrap_or(t.updated_at),
            )
        });
        if let Some(at) = retry_at {
            self.retry_at.push((t.device_id, at));
        }
        (to, retry_at)
    }

    fn into_moves(self, phase: Phase) -> Vec<Move> {
        let retry_at = self.retry_at;
        let mut out: Vec<Move> = self
            .settle
            .into_iter()
            .map(|(from, devices)| Move {
                from,
                to: phase.settled(),
                why: Why::Settled,
                devices,
                retry_at: Vec::new(),
            })
            .collect();
        if !self.drift.is_empty() {
            out.push(Move {
                from: TargetState::Confirmed,
                to: TargetState::Drifted,
                why: Why::Drifted,
                devices: self.drift,
                retry_at: Vec::new(),
            });
        }
        out.extend(self.spend.into_iter().map(|((from, to, reason), devices)| {
            let mine: HashSet<DeviceId> = devices.iter().copied().collect();
            let retry_at = retry_at
                .iter()
                .filter(|(d, _)| mine.contains(d))
                .copied()
                .collect();
            Move {
                from,
                to,
                why: Why::Spent(reason),
                devices,
                retry_at,
            }
        }));
        out
    }
}

/// What a batch's result decides before the event's pass.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResultDecisions {
    /// The power limits the miners had before this event's command, to put back on restore.
    pub prior_limits: Vec<(DeviceId, f64)>,
    /// Devices on which the command succeeded: their confirmation deadline starts now. Success
    /// moves nothing; telemetry confirms.
    pub succeeded: Vec<DeviceId>,
    /// Devices on which it failed, with the outcome for the log.
    pub failed: Vec<(DeviceId, String)>,
}

/// Sorts a batch's per-device outcomes.
pub fn on_result(r: &BatchResult) -> ResultDecisions {
    let commanded = match r.command {
        Some(CommandKind::SetPowerTarget { watts }) => Some(watts),
        _ => None,
    };
    let mut out = ResultDecisions::default();
    for d in &r.results {
        if !d.outcome.is_success() {
            out.failed.push((d.device_id, d.outcome.to_string()));
            continue;
        }
        out.succeeded.push(d.device_id);
        // A prior limit equal to what this event commanded was set by this event (a retried
        // command that had taken effect): restoring it would keep the miner curtailed.
        if let Some(w) = d.prior_power_limit_w.filter(|w| w.is_finite() && *w > 0.0)
            && commanded.is_none_or(|c| (c - w).abs() > 1.0)
        {
            out.prior_limits.push((d.device_id, w));
        }
    }
    out
}

/// The spends for devices whose command failed: each target of the batch still waiting on it
/// (sent, in either phase) spends one attempt. Targets that moved on since are left alone.
pub fn spend_failed(
    targets: &[TargetRow],
    failed: &HashSet<DeviceId>,
    policy: &Policy,
) -> Vec<Move> {
    let mut moves = MoveSet::default();
    for t in targets.iter().filter(|t| failed.contains(&t.device_id)) {
        let phase = Phase::of(t.state);
        if t.state == phase.sent() {
            moves.spend_one(phase, t, t.state, SpendReason::CommandFailed, policy);
        }
    }
    // No settles or drifts here, so the phase only names the settled state of an empty list.
    moves.into_moves(Phase::Curtail)
}

/// The wait until `at`, plus a little so that the pass that wakes finds the deadline passed.
fn until(at: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    (at - now).to_std().unwrap_or(Duration::ZERO) + Duration::from_millis(50)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ebb_bus::DeviceResult;
    use ebb_domain::confirm::Sample;
    use ebb_domain::{CurtailLevel, Outcome, SiteCode};
    use std::fmt::Write;
    use uuid::Uuid;

    const FULL: CommandKind = CommandKind::Curtail {
        level: CurtailLevel::Full,
    };
    const MAX: u32 = 3;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    fn policy() -> Policy {
        Policy {
            confirm: ConfirmPolicy::default(),
            confirm_deadline: chrono::Duration::seconds(90),
            result_deadline: chrono::Duration::seconds(600),
            max_retries: MAX,
            backoff: Backoff {
                base: chrono::Duration::seconds(10),
                max: chrono::Duration::seconds(120),
            },
        }
    }

    fn site(n: u128) -> SiteId {
        SiteId(Uuid::from_u128(1000 + n))
    }

    fn device(n: u128) -> DeviceId {
        DeviceId(Uuid::from_u128(n))
    }

    const BATCH: BatchId = BatchId(Uuid::from_u128(77));

    /// An event created at 0, bounded to an hour, restoring 10 per 5 s, stopped by a request
    /// when restoring.
    fn event(state: EventState) -> EventView {
        EventView {
            state,
            command: FULL,
            created_at: at(0),
            max_duration_s: Some(3600),
            stop_cause: (state == EventState::Restoring).then_some(StopCause::Requested),
            pacing: RestorePacing {
                batch_size: 10,
                interval: chrono::Duration::seconds(5),
            },
            last_restore_batch_at: None,
        }
    }

    /// Target `n` in `state`: sent (and confirmed, where that applies) at 100 with batch 77 if
    /// it ever was, 3 kW baseline, no attempts spent, no telemetry.
    fn target(n: u128, state: TargetState) -> TargetRow {
        let touched = !matches!(state, TargetState::Pending);
        TargetRow {
            device_id: device(n),
            site_id: site(1),
            address: format!("127.0.0.{n}"),
            state,
            baseline_power_w: 3000.0,
            retry_count: 0,
            last_spend_reason: None,
            last_batch_id: touched.then_some(BATCH),
            prior_power_limit_w: None,
            dispatched_at: touched.then(|| at(100)),
            confirmed_at: matches!(state, TargetState::Confirmed | TargetState::Drifted)
                .then(|| at(100)),
            result_at: None,
            updated_at: at(100),
            sample: None,
            device_missing: false,
            next_attempt_at: None,
        }
    }

    fn asleep(t: i64) -> Option<Sample> {
        Some(Sample {
            power_w: 60.0,
            hashrate_ths: 0.0,
            sampled_at: at(t),
        })
    }

    fn awake(t: i64) -> Option<Sample> {
        Some(Sample {
            power_w: 3000.0,
            hashrate_ths: 100.0,
            sampled_at: at(t),
        })
    }

    fn ids(devices: &[DeviceId]) -> String {
        devices
            .iter()
            .map(|d| d.0.as_u128().to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// One line per decision, in execution order; `-` for an event that is not live.
    fn render(d: &Option<Decisions>) -> String {
        let Some(d) = d else { return "-".into() };
        let mut out = Vec::new();
        for m in &d.moves {
            let why = match m.why {
                Why::Settled => "settled".to_owned(),
                Why::Drifted => "drifted".to_owned(),
                Why::Spent(r) => format!("spent {r}"),
            };
            out.push(format!("{}->{} {why} {}", m.from, m.to, ids(&m.devices)));
        }
        for (b, devices) in &d.republish {
            assert_eq!(*b, BATCH);
            out.push(format!("republish {}", ids(devices)));
        }
        if !d.send.is_empty() {
            out.push(format!("send {}", ids(&d.send)));
        }
        match d.event {
            Some(EventStep::Activate) => out.push("activate".into()),
            Some(EventStep::Stop(c)) => out.push(format!("stop {c}")),
            Some(EventStep::End(s)) => out.push(format!("end {s}")),
            None => {}
        }
        if let Some(w) = d.wake {
            let mut s = String::new();
            write!(s, "wake {w:?}").unwrap();
            out.push(s);
        }
        out.join("; ")
    }

    fn run(ev: &EventView, targets: &[TargetRow], now: i64) -> String {
        render(&decide(ev, targets, at(now), &policy(), |_| None))
    }

    /// Table: (what, the event, its targets, now in seconds, expected decisions).
    type Case = (&'static str, EventView, Vec<TargetRow>, i64, &'static str);

    fn check(cases: Vec<Case>) {
        let mut failures = String::new();
        for (what, ev, targets, now, want) in cases {
            let got = run(&ev, &targets, now);
            if got != want {
                writeln!(failures, "{what}:\n   want {want}\n    got {got}").unwrap();
            }
        }
        assert!(failures.is_empty(), "\n{failures}");
    }

    fn with(mut t: TargetRow, f: impl FnOnce(&mut TargetRow)) -> TargetRow {
        f(&mut t);
        t
    }

    /// Issue 11: a site whose agent went silent is not charged for its absence, in either
    /// phase, for a missing result or a missing confirmation; another site's targets are.
    #[test]
    fn a_silent_sites_targets_wait_without_spending() {
        use TargetState::*;
        let other = |mut t: TargetRow| {
            t.device_id = device(2);
            t.site_id = site(2);
            t
        };
        let cases = [
            (EventState::Active, target(1, Dispatched)),
            (
                EventState::Active,
                with(target(1, Dispatched), |t| t.result_at = Some(at(100))),
            ),
            (EventState::Restoring, target(1, RestoreDispatched)),
        ];
        for (state, t) in cases {
            let ev = event(state);
            let targets = vec![t.clone(), other(t.clone())];
            // Long past both deadlines.
            let now = at(100 + 601);
            let silent = |s: SiteId| {
                if s == site(1) {
                    Agent::Silent
                } else {
                    Agent::Live
                }
            };
            let d = decide_with(&ev, &targets, now, &policy(), |_| None, silent).unwrap();
            let spent: Vec<u128> = d
                .moves
                .iter()
                .filter(|m| matches!(m.why, Why::Spent(_)))
                .flat_map(|m| m.devices.iter().map(|d| d.0.as_u128()))
                .collect();
            assert_eq!(
                spent.len(),
                1,
                "{state:?} {t:?}: only the live site's target spends: {}",
                render(&Some(d.clone()))
            );
            assert!(
                d.wake.is_some_and(|w| w <= SILENT_RECHECK),
                "the silent one is looked at again soon"
            );
            let live = decide(&ev, &targets, now, &policy(), |_| None).unwrap();
            let spent_live: usize = live
                .moves
                .iter()
                .filter(|m| matches!(m.why, Why::Spent(_)))
                .map(|m| m.devices.len())
                .sum();
            assert_eq!(spent_live, 2, "without silence both spend");
            // Back a second ago: the deadline counts from the return, so nothing spends yet.
            let back = |_| Agent::BackSince(now - chrono::Duration::seconds(1));
            let d = decide_with(&ev, &targets, now, &policy(), |_| None, back).unwrap();
            assert!(
                d.moves.iter().all(|m| !matches!(m.why, Why::Spent(_))),
                "{}",
                render(&Some(d.clone()))
            );
        }
    }

    /// Every target state, one at a time, in an active event (a second, confirmed target keeps
    /// the event's own step out of the way unless the row is about it).
    #[test]
    fn curtail_phase_every_target_state() {
        use TargetState::*;
        let ev = event(EventState::Active);
        let ok = |t: TargetRow| vec![t, target(9, Confirmed)];
        let cases: Vec<Case> = vec![
            (
                "pending is sent",
                ev.clone(),
                ok(target(1, Pending)),
                120,
                "send 1; wake 90s",
            ),
            (
                "pending whose device vanished spends where it is",
                ev.clone(),
                ok(with(target(1, Pending), |t| t.device_missing = true)),
                120,
                "pending->pending spent device_vanished 1",
            ),
            (
                "an orphan is republished under its batch id, at no cost",
                ev.clone(),
                ok(target(1, Dispatching)),
                120,
                "republish 1",
            ),
            (
                "an orphan without a batch spends and is sent again",
                ev.clone(),
                ok(with(target(1, Dispatching), |t| t.last_batch_id = None)),
                120,
                "dispatching->pending spent stamped_without_batch 1; send 1; wake 90s",
            ),
            (
                "an orphan whose device vanished spends instead of a republish",
                ev.clone(),
                ok(with(target(1, Dispatching), |t| t.device_missing = true)),
                120,
                "dispatching->pending spent device_vanished 1",
            ),
            (
                "dispatched without telemetry waits for the result deadline",
                ev.clone(),
                ok(target(1, Dispatched)),
                120,
                "wake 580.05s",
            ),
            (
                "dispatched with a fresh sample in effect confirms",
                ev.clone(),
                ok(with(target(1, Dispatched), |t| t.sample = asleep(110))),
                120,
                "dispatched->confirmed settled 1",
            ),
            (
                "a sample from before the command proves nothing",
                ev.clone(),
                ok(with(target(1, Dispatched), |t| t.sample = asleep(100))),
                120,
                "wake 580.05s",
            ),
            (
                "a contradicting sample before the deadline is waited out",
                ev.clone(),
                ok(with(target(1, Dispatched), |t| t.sample = awake(110))),
                120,
                "wake 580.05s",
            ),
            (
                "after the agent's result the confirm deadline counts from it",
                ev.clone(),
                ok(with(target(1, Dispatched), |t| t.result_at = Some(at(110)))),
                120,
                "wake 80.05s",
            ),
            (
                "past the confirm deadline after a result: not confirmed",
                ev.clone(),
                ok(with(target(1, Dispatched), |t| t.result_at = Some(at(110)))),
                201,
                "dispatched->pending spent not_confirmed 1; send 1; wake 90s",
            ),
            (
                "exactly at the confirm deadline is still in time",
                ev.clone(),
                ok(with(target(1, Dispatched), |t| t.result_at = Some(at(110)))),
                200,
                "wake 50ms",
            ),
            (
                "the confirm deadline does not apply before a result arrives",
                ev.clone(),
                ok(target(1, Dispatched)),
                201,
                "wake 499.05s",
            ),
            (
                "past the result deadline without a result: no result",
                ev.clone(),
                ok(target(1, Dispatched)),
                701,
                "dispatched->pending spent no_result 1; send 1; wake 90s",
            ),
            (
                "confirmed and holding stays",
                ev.clone(),
                ok(with(target(1, Confirmed), |t| t.sample = asleep(130))),
                140,
                "",
            ),
            (
                "confirmed without telemetry never drifts",
                ev.clone(),
                ok(target(1, Confirmed)),
                140,
                "",
            ),
            (
                "confirmed with a stale contradicting sample never drifts",
                ev.clone(),
                ok(with(target(1, Confirmed), |t| t.sample = awake(90))),
                140,
                "",
            ),
            (
                "confirmed with a fresh contradicting sample drifts and is sent again",
                ev.clone(),
                ok(with(target(1, Confirmed), |t| t.sample = awake(130))),
                140,
                "confirmed->drifted drifted 1; drifted->pending spent drifted 1; send 1; wake 90s",
            ),
            (
                "drifted and holding again reconfirms",
                ev.clone(),
                ok(with(target(1, Drifted), |t| t.sample = asleep(130))),
                140,
                "drifted->confirmed settled 1",
            ),
            (
                "drifted without evidence spends and is sent again",
                ev.clone(),
                ok(target(1, Drifted)),
                140,
                "drifted->pending spent drifted 1; send 1; wake 90s",
            ),
            (
                "failed stays failed",
                ev.clone(),
                ok(target(1, Failed)),
                140,
                "",
            ),
            // Restore states never occur in a curtailing event; if one did, nothing touches it.
            (
                "restore_pending is left alone",
                ev.clone(),
                ok(target(1, RestorePending)),
                140,
                "",
            ),
            (
                "restore_dispatching is left alone",
                ev.clone(),
                ok(target(1, RestoreDispatching)),
                140,
                "",
            ),
            (
                "restore_dispatched is left alone",
                ev.clone(),
                ok(with(target(1, RestoreDispatched), |t| {
                    t.sample = awake(130)
                })),
                140,
                "",
            ),
            (
                "restored is left alone",
                ev.clone(),
                ok(target(1, Restored)),
                140,
                "",
            ),
            (
                "restore_failed is left alone",
                ev.clone(),
                ok(target(1, RestoreFailed)),
                140,
                "",
            ),
        ];
        covers_every_state(&cases);
        check(cases);
    }

    /// Every target state, one at a time, in a restoring event stopped by a request (a second,
    /// restored target is there to show when the event ends).
    #[test]
    fn restore_phase_every_target_state() {
        use TargetState::*;
        let ev = event(EventState::Restoring);
        let done = |t: TargetRow| vec![t, target(9, Restored)];
        let cases: Vec<Case> = vec![
            (
                "restore_pending is sent in a paced batch",
                ev.clone(),
                done(target(1, RestorePending)),
                120,
                "send 1; wake 5s",
            ),
            (
                "restore_pending whose device vanished spends where it is",
                ev.clone(),
                done(with(target(1, RestorePending), |t| t.device_missing = true)),
                120,
                "restore_pending->restore_pending spent device_vanished 1",
            ),
            (
                "a restore orphan is republished at no cost",
                ev.clone(),
                done(target(1, RestoreDispatching)),
                120,
                "republish 1",
            ),
            (
                "a restore orphan without a batch spends and is sent again",
                ev.clone(),
                done(with(target(1, RestoreDispatching), |t| {
                    t.last_batch_id = None
                })),
                120,
                "restore_dispatching->restore_pending spent stamped_without_batch 1; send 1; wake 5s",
            ),
            (
                "restore_dispatched without telemetry waits",
                ev.clone(),
                done(target(1, RestoreDispatched)),
                120,
                "wake 580.05s",
            ),
            (
                "restore_dispatched hashing again is restored, and the event completes",
                ev.clone(),
                done(with(target(1, RestoreDispatched), |t| {
                    t.sample = awake(110)
                })),
                120,
                "restore_dispatched->restored settled 1; end completed",
            ),
            (
                "a sleeping miner is not restored",
                ev.clone(),
                done(with(target(1, RestoreDispatched), |t| {
                    t.sample = asleep(110)
                })),
                120,
                "wake 580.05s",
            ),
            (
                "past the confirm deadline after a result: not confirmed, sent again",
                ev.clone(),
                done(with(target(1, RestoreDispatched), |t| {
                    t.result_at = Some(at(110))
                })),
                201,
                "restore_dispatched->restore_pending spent not_confirmed 1; send 1; wake 5s",
            ),
            (
                "past the result deadline: no result",
                ev.clone(),
                done(target(1, RestoreDispatched)),
                701,
                "restore_dispatched->restore_pending spent no_result 1; send 1; wake 5s",
            ),
            (
                "restored is done",
                ev.clone(),
                done(target(1, Restored)),
                120,
                "end completed",
            ),
            (
                "restore_failed ends the event with failures",
                ev.clone(),
                done(target(1, RestoreFailed)),
                120,
                "end completed_with_failures",
            ),
            (
                "a failed target never sent has nothing to restore: a failure",
                ev.clone(),
                done(target(1, Failed)),
                120,
                "end completed_with_failures",
            ),
            // Stop's sweep leaves no other curtail state behind; if one were, restore waits.
            (
                "pending holds the end",
                ev.clone(),
                done(target(1, Pending)),
                120,
                "",
            ),
            (
                "dispatching holds the end",
                ev.clone(),
                done(target(1, Dispatching)),
                120,
                "",
            ),
            (
                "dispatched holds the end and is not confirmed",
                ev.clone(),
                done(with(target(1, Dispatched), |t| t.sample = asleep(110))),
                120,
                "",
            ),
            (
                "confirmed holds the end and never drifts",
                ev.clone(),
                done(with(target(1, Confirmed), |t| t.sample = awake(130))),
                140,
                "",
            ),
            (
                "drifted holds the end",
                ev.clone(),
                done(target(1, Drifted)),
                140,
                "",
            ),
        ];
        covers_every_state(&cases);
        check(cases);
    }

    fn covers_every_state(cases: &[Case]) {
        for s in TargetState::ALL {
            assert!(
                cases.iter().any(|c| c.2[0].state == *s),
                "no row for a target in {s}"
            );
        }
    }

    /// DESIGN §5.4: `retry_count >= max_retries` on every path that spends. With 3 attempts, a
    /// target that spent 1 goes back to its queue; one that spent 2 (or more, after the limit
    /// was lowered) fails.
    #[test]
    fn the_retry_boundary_on_every_spending_path() {
        use TargetState::*;
        let curtail = event(EventState::Active);
        let restore = event(EventState::Restoring);
        // (event, the target, now, the state it spends from)
        let paths: Vec<(&EventView, TargetRow, i64, TargetState)> = vec![
            (
                &curtail,
                with(target(1, Pending), |t| t.device_missing = true),
                120,
                Pending,
            ),
            (
                &curtail,
                with(target(1, Dispatching), |t| t.last_batch_id = None),
                120,
                Dispatching,
            ),
            (
                &curtail,
                with(target(1, Dispatched), |t| t.result_at = Some(at(100))),
                191,
                Dispatched,
            ),
            (&curtail, target(1, Dispatched), 701, Dispatched),
            (
                &curtail,
                with(target(1, Confirmed), |t| t.sample = awake(130)),
                140,
                Drifted,
            ),
            (&curtail, target(1, Drifted), 140, Drifted),
            (
                &restore,
                with(target(1, RestorePending), |t| t.device_missing = true),
                120,
                RestorePending,
            ),
            (
                &restore,
                with(target(1, RestoreDispatching), |t| t.last_batch_id = None),
                120,
                RestoreDispatching,
            ),
            (
                &restore,
                target(1, RestoreDispatched),
                701,
                RestoreDispatched,
            ),
        ];
        for (ev, t, now, from) in paths {
            let phase = Phase::of(from);
            for (retry_count, want) in [
                (0, phase.queued()),
                (MAX - 2, phase.queued()),
                (MAX - 1, phase.failed()),
                (MAX, phase.failed()),
            ] {
                let t = TargetRow {
                    retry_count,
                    ..t.clone()
                };
                let d = decide(ev, std::slice::from_ref(&t), at(now), &policy(), |_| None).unwrap();
                let spend = d.moves.last().unwrap();
                assert_eq!(
                    (spend.from, spend.to),
                    (from, want),
                    "{} retry_count {retry_count}",
                    t.state
                );
                assert!(matches!(spend.why, Why::Spent(_)));
                let sent_again = d.send.contains(&t.device_id);
                assert_eq!(
                    sent_again,
                    want == phase.queued() && !t.device_missing,
                    "{} retry_count {retry_count}: sent again",
                    t.state
                );
            }
        }
        // A single attempt: the first spend fails.
        assert_eq!(spend_to(Phase::Curtail, 0, 1), TargetState::Failed);
        assert_eq!(
            spend_to(Phase::Restore, u32::MAX, 3),
            TargetState::RestoreFailed
        );
    }

    #[test]
    fn event_progress() {
        use TargetState::*;
        let pending = event(EventState::Pending);
        let active = event(EventState::Active);
        let restoring = |cause| EventView {
            stop_cause: Some(cause),
            ..event(EventState::Restoring)
        };
        let last = |t: TargetRow| with(t, |t| t.retry_count = MAX - 1);
        let cases: Vec<Case> = vec![
            (
                "pending with everything settled and something confirmed activates",
                pending.clone(),
                vec![target(1, Confirmed), target(2, Failed)],
                120,
                "activate",
            ),
            (
                "the confirmation that settles the last target activates in the same pass",
                pending.clone(),
                vec![
                    target(1, Confirmed),
                    with(target(2, Dispatched), |t| t.sample = asleep(110)),
                ],
                120,
                "dispatched->confirmed settled 2; activate",
            ),
            (
                "pending waits while anything is in flight",
                pending.clone(),
                vec![target(1, Confirmed), target(2, Dispatched)],
                120,
                "wake 580.05s",
            ),
            (
                "pending waits while anything is queued",
                pending.clone(),
                vec![target(1, Confirmed), target(2, Pending)],
                120,
                "send 2; wake 90s",
            ),
            (
                "an active event stays active",
                active.clone(),
                vec![target(1, Confirmed), target(2, Failed)],
                120,
                "",
            ),
            (
                "every target failed: stop with cause all_failed",
                pending.clone(),
                vec![target(1, Failed), target(2, Failed)],
                120,
                "stop all_failed; wake 0ns",
            ),
            (
                "the last attempt failing makes it all failed in the same pass",
                active.clone(),
                vec![
                    target(1, Failed),
                    last(with(target(2, Dispatched), |t| t.result_at = Some(at(100)))),
                ],
                191,
                "dispatched->failed spent not_confirmed 2; stop all_failed; wake 0ns",
            ),
            (
                "an active event that drifted to all failed stops",
                active.clone(),
                vec![last(target(1, Drifted))],
                140,
                "drifted->failed spent drifted 1; stop all_failed; wake 0ns",
            ),
            (
                "restore ends completed when everything is restored",
                restoring(StopCause::Requested),
                vec![target(1, Restored), target(2, Restored)],
                120,
                "end completed",
            ),
            (
                "restore ends completed_with_failures when something failed",
                restoring(StopCause::Requested),
                vec![target(1, Restored), target(2, RestoreFailed)],
                120,
                "end completed_with_failures",
            ),
            (
                "a max-duration stop ends like a request",
                restoring(StopCause::MaxDuration),
                vec![target(1, Restored), target(2, Failed)],
                120,
                "end completed_with_failures",
            ),
            (
                "an all-failed event ends failed even after a clean restore",
                restoring(StopCause::AllFailed),
                vec![target(1, Restored), target(2, Restored)],
                120,
                "end failed",
            ),
            (
                "the last restore failing ends the event in the same pass",
                restoring(StopCause::AllFailed),
                vec![target(1, Restored), last(target(2, RestoreDispatched))],
                701,
                "restore_dispatched->restore_failed spent no_result 2; end failed",
            ),
            (
                "restore waits for a target in flight",
                restoring(StopCause::Requested),
                vec![target(1, Restored), target(2, RestoreDispatched)],
                120,
                "wake 580.05s",
            ),
            (
                "a terminal event is not driven",
                event(EventState::Completed),
                vec![target(1, Restored)],
                120,
                "-",
            ),
            (
                "a cancelled event is not driven",
                event(EventState::Cancelled),
                vec![target(1, Pending)],
                120,
                "-",
            ),
            (
                "a failed event is not driven",
                event(EventState::Failed),
                vec![target(1, Failed)],
                120,
                "-",
            ),
        ];
        check(cases);
    }

    /// DESIGN §5.5: a curtailing event stops when max_duration_s has elapsed, before anything
    /// else is decided; a restoring one is past that.
    #[test]
    fn max_duration() {
        use TargetState::*;
        let bounded = |state, max| EventView {
            max_duration_s: max,
            ..event(state)
        };
        let busy = || vec![target(1, Pending), target(2, Confirmed)];
        check(vec![
            (
                "one second before, it curtails on",
                bounded(EventState::Active, Some(100)),
                busy(),
                99,
                "send 1; wake 90s",
            ),
            (
                "when it elapses, it stops",
                bounded(EventState::Active, Some(100)),
                busy(),
                100,
                "stop max_duration; wake 0ns",
            ),
            (
                "a pending event stops too",
                bounded(EventState::Pending, Some(100)),
                busy(),
                5000,
                "stop max_duration; wake 0ns",
            ),
            (
                "an unbounded event never does",
                bounded(EventState::Active, None),
                busy(),
                1_000_000,
                "send 1; wake 90s",
            ),
            (
                "a restoring event is not stopped again",
                bounded(EventState::Restoring, Some(100)),
                vec![target(1, RestorePending)],
                5000,
                "send 1; wake 5s",
            ),
        ]);
    }

    /// DESIGN §5.6: at most batch_size per interval, within each site's ramp limit.
    #[test]
    fn restore_pacing() {
        use TargetState::*;
        let paced = |size, last: Option<i64>| EventView {
            pacing: RestorePacing {
                batch_size: size,
                interval: chrono::Duration::seconds(5),
            },
            last_restore_batch_at: last.map(at),
            ..event(EventState::Restoring)
        };
        let queue = || {
            (1..=4)
                .map(|n| target(n, RestorePending))
                .collect::<Vec<_>>()
        };
        check(vec![
            (
                "a batch of at most batch_size",
                paced(2, None),
                queue(),
                120,
                "send 1,2; wake 5s",
            ),
            (
                "the interval has passed",
                paced(2, Some(115)),
                queue(),
                120,
                "send 1,2; wake 5s",
            ),
            (
                "within the interval nothing goes, and the pass wakes when it ends",
                paced(2, Some(118)),
                queue(),
                120,
                "wake 3.05s",
            ),
            (
                "requeued targets join the queue in the same pass",
                paced(2, None),
                vec![
                    with(target(1, RestoreDispatched), |t| {
                        t.result_at = Some(at(100))
                    }),
                    target(2, RestorePending),
                    target(3, RestorePending),
                ],
                191,
                "restore_dispatched->restore_pending spent not_confirmed 1; send 1,2; wake 5s",
            ),
        ]);
        // 6 kW/min over 5 s is 0.5 kW at site 1: its 3 kW miners go one per batch; site 2 has no
        // limit.
        let mut targets = queue();
        targets[2].site_id = site(2);
        targets[3].site_id = site(2);
        let pacing = paced(10, None);
        let d = decide(&pacing, &targets, at(120), &policy(), |s| {
            (s == site(1)).then(|| SiteBudget::alone(&pacing.pacing, 6.0))
        });
        assert_eq!(render(&d), "send 1,3,4; wake 5s");
    }

    /// Issue 12, item 9: a target waits out an exponential, jittered backoff between attempts,
    /// counted from when the failed attempt went out; one whose attempt went out long ago (a
    /// deadline already spaced it) goes again at once.
    #[test]
    fn backoff_between_attempts() {
        use TargetState::*;
        let ev = event(EventState::Active);
        let p = policy();
        // Its command failed a second after it went out at 100: it waits, and the pass wakes
        // when the wait is over.
        let refused = |retry_count: u32| {
            with(target(1, Pending), |t| {
                t.retry_count = retry_count;
                t.last_batch_id = Some(BATCH);
                t.dispatched_at = Some(at(100));
                t.next_attempt_at =
                    Some(p.backoff.next_attempt_at(device(1), retry_count, at(100)));
            })
        };
        let wait1 = p.backoff.delay(device(1), 1);
        let wait2 = p.backoff.delay(device(1), 2);
        assert!(
            wait1 >= chrono::Duration::seconds(5) && wait2 > wait1,
            "{wait1} {wait2}"
        );
        let due1 = 100 + wait1.num_seconds() + 1;
        let due2 = 100 + wait2.num_seconds() + 1;
        assert_eq!(
            run(&ev, &[refused(1)], 101),
            format!("wake {:?}", until(at(100) + wait1, at(101)))
        );
        assert_eq!(run(&ev, &[refused(1)], due1), "send 1; wake 90s");
        // The second failure waits about twice as long.
        assert!(
            run(&ev, &[refused(2)], due1).starts_with("wake"),
            "{}",
            run(&ev, &[refused(2)], due1)
        );
        assert_eq!(run(&ev, &[refused(2)], due2), "send 1; wake 90s");
        // A fresh episode (no attempts spent) never waits on an old backoff.
        assert_eq!(run(&ev, &[refused(0)], 101), "send 1; wake 90s");

        // The spend itself records when the device may go again, and a target whose attempt
        // went out long ago (not confirmed after the 90 s deadline) is sent in the same pass.
        let late = with(target(1, Dispatched), |t| t.result_at = Some(at(100)));
        let d = decide(&ev, &[late], at(191), &p, |_| None).unwrap();
        assert_eq!(d.send, vec![device(1)]);
        assert_eq!(d.moves[0].retry_at, vec![(device(1), at(100) + wait1)]);
        // One whose attempt went out just now (a drift right after its send) waits instead.
        let drifted = with(target(1, Drifted), |t| {
            t.dispatched_at = Some(at(139));
            t.sample = awake(140);
        });
        let d = decide(&ev, &[drifted], at(140), &p, |_| None).unwrap();
        assert!(d.send.is_empty(), "{:?}", d.send);
        assert_eq!(d.wake, Some(until(at(139) + wait1, at(140))));

        // The result path spends with the same backoff.
        let sent = with(target(2, Dispatched), |t| t.dispatched_at = Some(at(100)));
        let moves = spend_failed(&[sent], &[device(2)].into(), &p);
        assert_eq!(
            moves[0].retry_at,
            vec![(device(2), p.backoff.next_attempt_at(device(2), 1, at(100)))]
        );
    }

    /// Drift and a spend out of `drifted` come in that order, and spends group by reason.
    #[test]
    fn moves_are_grouped_and_ordered() {
        use TargetState::*;
        let ev = event(EventState::Active);
        let targets = vec![
            with(target(1, Confirmed), |t| t.sample = awake(130)),
            with(target(2, Dispatched), |t| t.sample = asleep(110)),
            with(target(3, Confirmed), |t| t.sample = awake(130)),
            with(target(4, Dispatched), |t| t.result_at = Some(at(20))),
            with(target(5, Drifted), |t| t.retry_count = MAX - 1),
            with(target(6, Dispatched), |t| t.result_at = Some(at(20))),
        ];
        assert_eq!(
            run(&ev, &targets, 140),
            "dispatched->confirmed settled 2; confirmed->drifted drifted 1,3; \
             dispatched->pending spent not_confirmed 4,6; drifted->pending spent drifted 1,3; \
             drifted->failed spent drifted 5; send 1,3,4,6; wake 90s"
        );
    }

    fn result(command: CommandKind, results: Vec<(u128, Outcome, Option<f64>)>) -> BatchResult {
        BatchResult {
            batch_id: BATCH,
            event_id: None,
            site: SiteCode::parse("site-a").unwrap(),
            command: Some(command),
            results: results
                .into_iter()
                .map(|(n, outcome, prior_power_limit_w)| DeviceResult {
                    device_id: device(n),
                    outcome,
                    prior_power_limit_w,
                })
                .collect(),
            finished_at: at(110),
        }
    }

    #[test]
    fn results_sort_outcomes_and_keep_only_real_prior_limits() {
        let refused = || Outcome::Refused {
            reason: "busy".into(),
        };
        let r = result(
            CommandKind::SetPowerTarget { watts: 2000.0 },
            vec![
                (1, Outcome::Ok, Some(3200.0)),
                // Equal to what this event commanded: a retry that had already taken effect.
                (2, Outcome::AlreadyInState, Some(2000.5)),
                (3, Outcome::Ok, Some(f64::NAN)),
                (4, Outcome::Ok, Some(0.0)),
                (5, refused(), Some(3100.0)),
                (6, Outcome::Ok, None),
            ],
        );
        let d = on_result(&r);
        assert_eq!(d.prior_limits, vec![(device(1), 3200.0)]);
        assert_eq!(
            d.succeeded,
            vec![device(1), device(2), device(3), device(4), device(6)]
        );
        assert_eq!(d.failed.len(), 1);
        assert_eq!(d.failed[0].0, device(5));
        // Without a power target, any real prior limit is kept.
        let r = result(FULL, vec![(1, Outcome::Ok, Some(2000.0))]);
        assert_eq!(on_result(&r).prior_limits, vec![(device(1), 2000.0)]);
    }

    #[test]
    fn a_failed_outcome_spends_only_targets_still_waiting_on_it() {
        use TargetState::*;
        let failed: HashSet<DeviceId> = (1..=5).map(device).collect();
        let targets = vec![
            target(1, Dispatched),
            with(target(2, Dispatched), |t| t.retry_count = MAX - 1),
            target(3, RestoreDispatched),
            // Moved on (confirmed by telemetry, or a newer stamp): the outcome is stale for it.
            target(4, Confirmed),
            target(5, RestoreDispatching),
            // Succeeded.
            target(6, Dispatched),
        ];
        let moves = spend_failed(&targets, &failed, &policy());
        let got: Vec<String> = moves
            .iter()
            .map(|m| format!("{}->{} {}", m.from, m.to, ids(&m.devices)))
            .collect();
        assert_eq!(
            got,
            vec![
                "dispatched->pending 1",
                "dispatched->failed 2",
                "restore_dispatched->restore_pending 3"
            ]
        );
        assert!(
            moves
                .iter()
                .all(|m| m.why == Why::Spent(SpendReason::CommandFailed))
        );
    }
}
