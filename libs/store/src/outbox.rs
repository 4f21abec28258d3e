//! The outbox (DESIGN §3): a change that must be announced inserts its message in the same
//! transaction, and the relay publishes it afterwards with `Nats-Msg-Id = outbox id`, so a crash
//! between commit and publish only delays the message and a double publish is deduplicated.

use crate::error::StoreError;
use async_nats::jetstream;
use ebb_domain::OrgId;
use sqlx::{PgConnection, PgPool};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Queues a message inside the caller's transaction.
pub async fn enqueue(
    conn: &mut PgConnection,
    org: Option<OrgId>,
    subject: &str,
    payload: &[u8],
) -> Result<Uuid, StoreError> {
    let id = Uuid::now_v7();
    sqlx::query("INSERT INTO outbox (id, org_id, subject, payload) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(org.map(|o| o.0))
        .bind(subject)
        .bind(payload)
        .execute(conn)
        .await?;
    Ok(id)
}

/// Publishes up to `limit` unpublished rows, oldest first, and marks them published. Rows are
/// claimed with `FOR UPDATE SKIP LOCKED`, so several relays can run side by side. Returns how many
/// were published.
pub async fn relay_once(
    pool: &PgPool,
    js: &jetstream::Context,
    limit: i64,
) -> Result<usize, RelayError> {
    let mut tx = pool.begin().await.map_err(StoreError::from)?;
    let rows: Vec<(Uuid, String, Vec<u8>)> = sqlx::query_as(
        "SELECT id, subject, payload FROM outbox WHERE published_at IS NULL
         ORDER BY created_at, id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    if rows.is_empty() {
        return Ok(0);
    }
    // Pipeline the publishes, then await every ack before marking anything published.
    let mut acks = Vec::with_capacity(rows.len());
    for (id, subject, payload) in rows {
        let (subject, ack) =
            ebb_bus::publish::send(js, subject, &id.to_string(), payload, None).await?;
        acks.push((id, subject, ack));
    }
    let mut done = Vec::with_capacity(acks.len());
    for (id, subject, ack) in acks {
        ack.await
            .map_err(|source| ebb_bus::publish::PublishError::Ack { subject, source })?;
        done.push(id);
    }
    sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
        .bind(&done)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
    tx.commit().await.map_err(StoreError::from)?;
    metrics::counter!(ebb_obs::names::OUTBOX_PUBLISHED).increment(done.len() as u64);
    Ok(done.len())
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Publish(#[from] ebb_bus::publish::PublishError),
}

/// Runs the relay until `shutdown`: drains in batches, then waits `idle` before looking again.
/// A failed round is logged and retried; it never ends the loop.
pub async fn run_relay(
    pool: PgPool,
    js: jetstream::Context,
    idle: Duration,
    shutdown: CancellationToken,
) {
    loop {
        let pause = match relay_once(&pool, &js, 500).await {
            Ok(500) => Duration::ZERO,
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
