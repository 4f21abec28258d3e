//! The outbox relay: publishes every committed outbox row on the event feed with
//! `Nats-Msg-Id = outbox id`. The store says what happened ([`Notice`]); the subject and wire
//! encoding are decided here.
//!
//! A round claims rows with a lease (no transaction is held while publishing), publishes them
//! pipelined, then settles the claim in one short statement group:
//!
//! - acked rows are marked published;
//! - a row that failed through its own fault (unreadable, too big for the server, refused while
//!   other rows of the round went through) is retried with a doubling delay and parked once it
//!   has been claimed `relay_max_attempts` times: counted, logged at WARN, and never claimed
//!   again, so it holds up nothing behind it;
//! - a row that failed because the stream could not be reached at all goes back unpunished.
//!
//! A relay that dies between publish and settle leaves its rows to a later claim once the lease
//! runs out: they are published again under the same `Nats-Msg-Id`, inside the stream's duplicate
//! window, so the stream drops the copy. Rows are claimed oldest first, and only the oldest
//! unpublished row of each event (`outbox.ordering_key`), so an event's notices go out in order
//! even when one fails and waits for its retry; a parked one is skipped, logged at WARN.
//!
//! Published rows older than the retention are deleted in bounded batches every
//! [`PRUNE_EVERY`].

use crate::WorkerConfig;
use async_nats::jetstream;
use async_nats::jetstream::context::PublishErrorKind;
use ebb_bus::publish::PublishError;
use ebb_bus::subjects;
use ebb_store::outbox::{self, Failed, Message, Notice, Pending};
use ebb_store::{PgPool, StoreError};
use futures::future::BoxFuture;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

/// Rows published per round; a full round is followed at once by the next.
pub const BATCH: i64 = 500;
/// Rows deleted per pruning statement.
pub const PRUNE_BATCH: i64 = 1_000;
/// Pruning statements per pruning run at most; the rest waits for the next run.
pub const PRUNE_ROUNDS: usize = 100;
/// How often the relay prunes published rows.
pub const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// The longest wait before retrying a row that failed.
pub const MAX_RETRY: Duration = Duration::from_secs(300);

/// How the relay claims, retries, parks and prunes; from the worker's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct RelaySettings {
    /// Rows claimed per round.
    pub batch: i64,
    /// How long a claim is the relay's alone.
    pub lease: Duration,
    /// Claims of a failing row before it is parked.
    pub max_attempts: u32,
    /// Wait before the first retry of a failed row; doubles per attempt up to [`MAX_RETRY`].
    pub retry: Duration,
    /// How long published rows are kept.
    pub retention: Duration,
}

impl From<&WorkerConfig> for RelaySettings {
    fn from(c: &WorkerConfig) -> Self {
        Self {
            batch: BATCH,
            lease: Duration::from_secs(c.relay_lease_s),
            max_attempts: c.relay_max_attempts,
            retry: Duration::from_millis(c.relay_retry_ms),
            retention: Duration::from_secs(c.outbox_retention_h * 3600),
        }
    }
}

impl RelaySettings {
    /// The wait before retrying a row that has failed on its `attempts`-th claim.
    pub fn retry_in(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(20);
        self.retry.saturating_mul(1 << doublings).min(MAX_RETRY)
    }
}

/// The job entry: relays until shutdown.
pub fn job(
    config: &WorkerConfig,
    ctx: ebb_runtime::Context,
) -> BoxFuture<'static, anyhow::Result<()>> {
    let idle = Duration::from_millis(config.relay_idle_ms);
    let settings = RelaySettings::from(config);
    Box::pin(async move {
        run(
            ctx.pool()?.clone(),
            ctx.jetstream().clone(),
            settings,
            idle,
            ctx.shutdown.clone(),
        )
        .await;
        Ok(())
    })
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// The CloudEvents `source` of an org's events.
pub fn source(org: ebb_domain::OrgId) -> String {
    format!("urn:ebb:org:{org}")
}

/// The subject and payload of a row, or why it cannot be published: a curtailment's
/// transition is a CloudEvents 1.0 document in structured mode (JSON), the feed's public
/// contract.
pub fn wire(row: &Pending) -> Result<(String, Vec<u8>), String> {
    match &row.message {
        Message::Raw { subject, payload } => Ok((subject.clone(), payload.clone())),
        Message::Notice(Notice::EventTransition {
            event_id,
            org_id,
            state,
            at,
            data,
            ..
        }) => {
            // A row written before notices carried the event says what it knows.
            let data = data
                .clone()
                .unwrap_or_else(|| serde_json::json!({ "id": event_id, "state": state }));
            let event = ebb_webhooks::Event {
                id: row.id.into(),
                event_type: ebb_store::events::event_type(*state),
                time: *at,
                subject: event_id.to_string(),
                data,
            };
            let payload = serde_json::to_vec(&event.cloud_event(&source(*org_id)))
                .map_err(|e| e.to_string())?;
            Ok((subjects::event(*org_id, *event_id), payload))
        }
        Message::Notice(Notice::TargetsFailed {
            event_id,
            org_id,
            at,
            data,
        }) => {
            let event = ebb_webhooks::Event {
                id: row.id.into(),
                event_type: ebb_webhooks::EventType::TargetsFailed,
                time: *at,
                subject: event_id.to_string(),
                data: data.clone(),
            };
            let payload = serde_json::to_vec(&event.cloud_event(&source(*org_id)))
                .map_err(|e| e.to_string())?;
            Ok((subjects::event(*org_id, *event_id), payload))
        }
        Message::Unreadable { kind, error } => Err(format!(
            "outbox row of kind {} cannot be read: {error}",
            kind.as_deref().unwrap_or("(none)")
        )),
    }
}

/// Publishes up to `settings.batch` rows, oldest first, and settles them: published, retried,
/// parked or given back (see the module docs). Returns how many rows the round claimed, or the
/// error that kept the round from reaching the stream (after settling what it could).
pub async fn relay_once(
    pool: &PgPool,
    js: &jetstream::Context,
    settings: &RelaySettings,
) -> Result<usize, RelayError> {
    let claim = outbox::claim(pool, settings.batch, settings.lease).await?;
    let claimed = claim.rows.len();
    if claimed == 0 {
        return Ok(0);
    }
    let round = publish(js, &claim.rows, settings).await;
    for f in &round.failed {
        tracing::info!(outbox_id = %f.id, error = %f.error, retry_in_ms = f.retry_in.as_millis() as u64, "outbox row not published");
    }
    let parked = claim
        .settle(&round.published, &round.failed, settings.max_attempts)
        .await?;
    metrics::counter!(ebb_obs::names::OUTBOX_PUBLISHED).increment(round.published.len() as u64);
    metrics::counter!(ebb_obs::names::OUTBOX_PARKED).increment(parked.len() as u64);
    for p in &parked {
        tracing::warn!(
            outbox_id = %p.id,
            kind = p.kind.as_deref().unwrap_or("(none)"),
            attempts = p.attempts,
            error = %p.error,
            "outbox row parked: it kept failing and is no longer published; re-queue it by clearing parked_at and attempts"
        );
    }
    match round.unreachable {
        // Nothing is counted against the rows: they go back for the next round, republished
        // under the same Nats-Msg-Id, which the stream deduplicates.
        Some(e) => Err(e.into()),
        None => Ok(claimed),
    }
}

/// What became of a round's rows.
#[derive(Debug, Default)]
struct Round {
    published: Vec<Uuid>,
    /// Failures charged to their row.
    failed: Vec<Failed>,
    /// Why the stream could not be reached, if it could not: the rows not published go back.
    unreachable: Option<PublishError>,
}

/// Whether a publish error is the row's own fault, the stream's, or cannot be told alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Blame {
    Row,
    Transport,
    /// The row's if other rows of the round went through, else the transport's.
    Unclear,
}

fn blame(e: &PublishError) -> Blame {
    let (PublishError::Send { source, .. } | PublishError::Ack { source, .. }) = e;
    match source.kind() {
        PublishErrorKind::MaxPayloadExceeded => Blame::Row,
        PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::MaxAckPending => Blame::Transport,
        _ => Blame::Unclear,
    }
}

/// `e` with its sources, for the row's `last_error`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Publishes `rows`, pipelined, then awaits every ack, and sorts out what failed and whose fault
/// it was.
async fn publish(js: &jetstream::Context, rows: &[Pending], settings: &RelaySettings) -> Round {
    let mut round = Round::default();
    let row_failure = |row: &Pending, error: String| Failed {
        id: row.id,
        error,
        retry_in: settings.retry_in(row.attempts),
    };
    let mut unclear: Vec<(&Pending, PublishError)> = Vec::new();
    let mut transport: Vec<PublishError> = Vec::new();
    let mut acks = Vec::with_capacity(rows.len());
    for row in rows {
        if row.attempts > settings.max_attempts {
            // Claimed that often without ever being settled: the relay dies on it.
            round.failed.push(row_failure(
                row,
                format!(
                    "claimed {} times without being settled (a relay died publishing it?)",
                    row.attempts - 1
                ),
            ));
            continue;
        }
        match wire(row) {
            Err(error) => round.failed.push(row_failure(row, error)),
            Ok((subject, payload)) => {
                // The publish joins the trace of the change it announces (the event's).
                let span = tracing::info_span!(
                    "relay",
                    ebb.service = "worker",
                    otel.kind = "producer",
                    outbox_id = %row.id,
                    event_id = event_of(row).map(tracing::field::display),
                    %subject,
                );
                ebb_obs::trace::follow_traceparent(&span, row.traceparent.as_deref());
                let sent = ebb_bus::publish::send(js, subject, &row.id.to_string(), payload)
                    .instrument(span)
                    .await;
                match sent {
                    Ok((subject, ack)) => acks.push((row, subject, ack)),
                    Err(e) => match blame(&e) {
                        Blame::Row => round.failed.push(row_failure(row, chain(&e))),
                        Blame::Transport => transport.push(e),
                        Blame::Unclear => unclear.push((row, e)),
                    },
                }
            }
        }
    }
    for (row, subject, ack) in acks {
        match ack.await {
            Ok(_) => round.published.push(row.id),
            Err(source) => {
                let e = PublishError::Ack { subject, source };
                match blame(&e) {
                    Blame::Row => round.failed.push(row_failure(row, chain(&e))),
                    Blame::Transport => transport.push(e),
                    Blame::Unclear => unclear.push((row, e)),
                }
            }
        }
    }
    if round.published.is_empty() {
        transport.extend(unclear.into_iter().map(|(_, e)| e));
    } else {
        for (row, e) in unclear {
            round.failed.push(row_failure(row, chain(&e)));
        }
    }
    round.unreachable = transport.into_iter().next();
    round
}

/// Deletes published rows older than `retention`, [`PRUNE_BATCH`] at a time, at most
/// [`PRUNE_ROUNDS`] statements, stopping early at shutdown; returns how many it deleted.
pub async fn prune(
    pool: &PgPool,
    retention: Duration,
    shutdown: &CancellationToken,
) -> Result<u64, StoreError> {
    let mut total = 0;
    for _ in 0..PRUNE_ROUNDS {
        let n = outbox::prune(pool, retention, PRUNE_BATCH).await?;
        total += n;
        metrics::counter!(ebb_obs::names::OUTBOX_PRUNED).increment(n);
        if n < PRUNE_BATCH as u64 || shutdown.is_cancelled() {
            break;
        }
    }
    Ok(total)
}

/// Runs the relay until `shutdown`: drains in batches, then waits `idle` before looking again,
/// and prunes every [`PRUNE_EVERY`]. A failed round is logged and retried; it never ends the
/// loop.
pub async fn run(
    pool: PgPool,
    js: jetstream::Context,
    settings: RelaySettings,
    idle: Duration,
    shutdown: CancellationToken,
) {
    let mut next_prune = Instant::now();
    loop {
        if Instant::now() >= next_prune {
            next_prune = Instant::now() + PRUNE_EVERY;
            match prune(&pool, settings.retention, &shutdown).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(rows = n, "pruned published outbox rows"),
                Err(e) => tracing::warn!(error = ?e, "pruning the outbox failed"),
            }
        }
        let pause = match relay_once(&pool, &js, &settings).await {
            Ok(n) if n as i64 >= settings.batch => Duration::ZERO,
            Ok(_) => idle,
            Err(e) => {
                tracing::warn!(error = ?e, "outbox relay round failed");
                idle.max(Duration::from_secs(1))
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// The event a row announces a change of, for its span.
fn event_of(row: &Pending) -> Option<ebb_domain::EventId> {
    match &row.message {
        Message::Notice(
            Notice::EventTransition { event_id, .. } | Notice::TargetsFailed { event_id, .. },
        ) => Some(*event_id),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_double_up_to_the_cap() {
        let s = RelaySettings::from(&WorkerConfig::default());
        let got: Vec<u64> = (1..=12).map(|a| s.retry_in(a).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(s.retry_in(u32::MAX), MAX_RETRY);
        assert_eq!(s.retry_in(0), Duration::from_secs(1));
    }

    /// An aggregate of failed targets is an `ebb.targets.failed` CloudEvent on its event's
    /// subject, its data as written.
    #[test]
    fn failed_targets_are_a_cloud_event_of_their_own_type() {
        let (org, event) = (ebb_domain::OrgId::new(), ebb_domain::EventId::new());
        let data = serde_json::json!({"id": event, "failed_targets": {"count": 3}});
        let row = Pending {
            id: uuid::Uuid::now_v7(),
            org_id: Some(org),
            created_at: chrono::Utc::now(),
            attempts: 1,
            message: Message::Notice(Notice::TargetsFailed {
                event_id: event,
                org_id: org,
                at: chrono::Utc::now(),
                data: data.clone(),
            }),
            traceparent: None,
        };
        let (subject, payload) = wire(&row).unwrap();
        assert_eq!(subject, subjects::event(org, event));
        let ce: ebb_webhooks::CloudEvent = serde_json::from_slice(&payload).unwrap();
        assert_eq!(ce.event_type, ebb_webhooks::EventType::TargetsFailed);
        assert_eq!(ce.id.as_str(), row.id.to_string());
        assert_eq!(ce.subject, event.to_string());
        assert_eq!(ce.data, data);
    }
}
