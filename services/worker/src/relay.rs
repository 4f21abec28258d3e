//! The outbox relay: publishes every committed outbox row on the event feed with
//! `Nats-Msg-Id = outbox id`, so a crash between publish and marking only causes a deduplicated
//! republish. The store says what happened ([`Notice`]); the subject and wire encoding are
//! decided here.

use async_nats::jetstream;
use ebb_bus::{Envelope, EventNotice, subjects};
use ebb_store::outbox::{self, Message, Notice, Pending};
use ebb_store::{PgPool, StoreError};
use futures::future::BoxFuture;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Rows published per round; a full round is followed at once by the next.
pub const BATCH: i64 = 500;

/// The job entry: relays until shutdown.
pub fn job(
    config: &crate::WorkerConfig,
    ctx: ebb_runtime::Context,
) -> BoxFuture<'static, anyhow::Result<()>> {
    let idle = Duration::from_millis(config.relay_idle_ms);
    Box::pin(async move {
        run(
            ctx.pool()?.clone(),
            ctx.jetstream().clone(),
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
    Publish(#[from] ebb_bus::publish::PublishError),
}

/// The subject and payload of a row, or why it cannot be published.
pub fn wire(row: &Pending) -> Result<(String, Vec<u8>), String> {
    match &row.message {
        Message::Raw { subject, payload } => Ok((subject.clone(), payload.clone())),
        Message::Notice(Notice::EventTransition {
            event_id,
            org_id,
            state,
            from,
            reason,
            ..
        }) => {
            let notice = EventNotice {
                event_id: *event_id,
                state: *state,
                from: *from,
                reason: reason.clone(),
                targets: BTreeMap::new(),
            };
            let payload = ebb_bus::encode(&Envelope::new(Some(*org_id), notice))
                .map_err(|e| e.to_string())?;
            Ok((subjects::event(*org_id, *event_id), payload))
        }
        Message::Unreadable { kind, error } => Err(format!(
            "outbox row of kind {} cannot be read: {error}",
            kind.as_deref().unwrap_or("(none)")
        )),
    }
}

/// Publishes up to `limit` unpublished rows, oldest first, and marks them published. Returns how
/// many rows the round claimed.
pub async fn relay_once(
    pool: &PgPool,
    js: &jetstream::Context,
    limit: i64,
) -> Result<usize, RelayError> {
    let claim = outbox::claim(pool, limit).await?;
    let claimed = claim.rows.len();
    if claimed == 0 {
        return Ok(0);
    }
    match publish(js, &claim.rows).await {
        Ok(done) => {
            claim.finish(&done).await?;
            metrics::counter!(ebb_obs::names::OUTBOX_PUBLISHED).increment(done.len() as u64);
            Ok(claimed)
        }
        Err(e) => {
            // Nothing is marked: the rows go back for the next round, republished under the
            // same Nats-Msg-Id, which the stream deduplicates.
            if let Err(release) = claim.release().await {
                tracing::debug!(error = ?release, "releasing an outbox claim");
            }
            Err(e)
        }
    }
}

/// Publishes `rows`, pipelined, then awaits every ack; returns the ids the stream acked.
async fn publish(js: &jetstream::Context, rows: &[Pending]) -> Result<Vec<uuid::Uuid>, RelayError> {
    let mut acks = Vec::with_capacity(rows.len());
    for row in rows {
        match wire(row) {
            Ok((subject, payload)) => {
                let (subject, ack) =
                    ebb_bus::publish::send(js, subject, &row.id.to_string(), payload, None).await?;
                acks.push((row.id, subject, ack));
            }
            Err(error) => tracing::error!(outbox_id = %row.id, error, "unpublishable outbox row"),
        }
    }
    let mut done = Vec::with_capacity(acks.len());
    for (id, subject, ack) in acks {
        ack.await
            .map_err(|source| ebb_bus::publish::PublishError::Ack { subject, source })?;
        done.push(id);
    }
    Ok(done)
}

/// Runs the relay until `shutdown`: drains in batches, then waits `idle` before looking again.
/// A failed round is logged and retried; it never ends the loop.
pub async fn run(
    pool: PgPool,
    js: jetstream::Context,
    idle: Duration,
    shutdown: CancellationToken,
) {
    loop {
        let pause = match relay_once(&pool, &js, BATCH).await {
            Ok(n) if n as i64 >= BATCH => Duration::ZERO,
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
