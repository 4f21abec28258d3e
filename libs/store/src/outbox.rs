//! The outbox (DESIGN §3): a change that must be announced inserts a row in the same transaction,
//! and the worker's relay publishes it afterwards with `Nats-Msg-Id = outbox id`, so a crash
//! between commit and publish only delays the message and a double publish is deduplicated.
//!
//! The relay claims rows with a lease ([`claim`]): one statement stamps them with a lease and a
//! claim token and returns them, oldest first; the publishing happens outside any transaction;
//! [`Claim::settle`] then marks what was published, schedules a retry of what failed, and parks a
//! row that failed too often, so it no longer holds up the rows behind it. A relay that dies
//! between publish and settle leaves its rows to a later claim once the lease runs out: they are
//! published again under the same `Nats-Msg-Id`, which the stream drops as a duplicate. Published
//! rows are deleted after a retention ([`prune`]).
//!
//! Architecture invariant: the store publishes nothing and knows no subject or wire format. A row
//! says what happened ([`Notice`], stored as JSON); the relay in the worker turns it into a
//! message.

use crate::error::StoreError;
use chrono::{DateTime, Utc};
use ebb_domain::{EventId, EventState, OrgId};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool, Row};
use std::time::Duration;
use uuid::Uuid;

/// What an outbox row announces.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Notice {
    /// A curtailment event changed state (or was created: `from` is `None`).
    EventTransition {
        event_id: EventId,
        org_id: OrgId,
        state: EventState,
        from: Option<EventState>,
        reason: Option<String>,
        at: DateTime<Utc>,
        /// The event as the API showed it in the transition's transaction (absent in rows
        /// written before the feed carried it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<serde_json::Value>,
    },
    /// Targets of an event exhausted their attempts together (one result batch, or one pass's
    /// deadlines): counted, with up to [`crate::events::FAILED_IDS_SHOWN`] device ids.
    TargetsFailed {
        event_id: EventId,
        org_id: OrgId,
        at: DateTime<Utc>,
        /// The event as the API showed it, with the aggregate under `failed_targets`.
        data: serde_json::Value,
    },
}

impl Notice {
    /// The key its row is ordered by: rows of one key are published in the order written.
    pub fn ordering_key(&self) -> Option<Uuid> {
        match self {
            Notice::EventTransition { event_id, .. } | Notice::TargetsFailed { event_id, .. } => {
                Some(event_id.0)
            }
        }
    }

    /// The `kind` column's value.
    pub fn kind(&self) -> &'static str {
        match self {
            Notice::EventTransition { .. } => "event_transition",
            Notice::TargetsFailed { .. } => "targets_failed",
        }
    }
}

/// Queues `notice` inside the caller's transaction.
pub async fn enqueue(
    conn: &mut PgConnection,
    org: Option<OrgId>,
    notice: &Notice,
) -> Result<Uuid, StoreError> {
    enqueue_traced(conn, org, notice, None).await
}

/// [`enqueue`], with the W3C trace context its publish is to join.
pub async fn enqueue_traced(
    conn: &mut PgConnection,
    org: Option<OrgId>,
    notice: &Notice,
    traceparent: Option<&str>,
) -> Result<Uuid, StoreError> {
    let id = Uuid::now_v7();
    let payload = serde_json::to_vec(notice).map_err(|e| StoreError::Encode(e.to_string()))?;
    sqlx::query(
        // clock_timestamp(), not the transaction's start: the row is written after the change
        // it announces took its lock, so rows of one event are ordered as their changes were.
        "INSERT INTO outbox (id, org_id, kind, payload, traceparent, ordering_key, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, clock_timestamp())",
    )
    .bind(id)
    .bind(org.map(|o| o.0))
    .bind(notice.kind())
    .bind(payload)
    .bind(traceparent)
    .bind(notice.ordering_key())
    .execute(conn)
    .await?;
    Ok(id)
}

/// One claimed row.
#[derive(Clone, Debug, PartialEq)]
pub struct Pending {
    pub id: Uuid,
    pub org_id: Option<OrgId>,
    pub created_at: DateTime<Utc>,
    /// Claims of this row so far, this one included.
    pub attempts: u32,
    pub message: Message,
    /// The trace context the publish joins (the event's), if any.
    pub traceparent: Option<String>,
}

/// A row's content.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    Notice(Notice),
    /// A row written before rows had a kind: published as it is.
    Raw {
        subject: String,
        payload: Vec<u8>,
    },
    /// A row whose content this version cannot read (a newer kind, or corrupt JSON).
    Unreadable {
        kind: Option<String>,
        error: String,
    },
}

/// Rows claimed by one relay round, leased to it until [`Claim::settle`] (or the lease runs out).
/// No transaction and no row lock is held while the claim is out.
#[derive(Debug)]
pub struct Claim {
    pool: PgPool,
    /// Stamped on the rows: settling touches only rows still claimed by this claim, so a relay
    /// whose lease ran out cannot undo a later claim's.
    token: Uuid,
    pub rows: Vec<Pending>,
}

/// A claimed row that could not be published, through its own fault (unreadable, too big): it
/// is tried again after `retry_in`, and parked once it has been claimed `max_attempts` times.
#[derive(Clone, Debug, PartialEq)]
pub struct Failed {
    pub id: Uuid,
    pub error: String,
    pub retry_in: Duration,
}

/// A row that [`Claim::settle`] parked: it is no longer claimed until an operator re-queues it
/// (`UPDATE outbox SET parked_at = NULL, attempts = 0 WHERE id = …`).
#[derive(Clone, Debug, PartialEq)]
pub struct Parked {
    pub id: Uuid,
    pub kind: Option<String>,
    pub attempts: u32,
    pub error: String,
}

/// Claims up to `limit` rows that are neither published nor parked nor leased to another
/// relay, oldest first, leasing them for `lease`. Rows are picked with `FOR UPDATE SKIP LOCKED`
/// inside the one statement, so relays side by side never claim a row twice at once.
pub async fn claim(pool: &PgPool, limit: i64, lease: Duration) -> Result<Claim, StoreError> {
    let token = Uuid::now_v7();
    let rows = sqlx::query(
        "UPDATE outbox o SET claimed_until = now() + make_interval(secs => $2),
                claim_token = $3, attempts = o.attempts + 1
         FROM (SELECT id FROM outbox r
               WHERE published_at IS NULL AND parked_at IS NULL
                 AND (claimed_until IS NULL OR claimed_until <= now())
                 -- Only the head of its key: an older row of the same key, still to be
                 -- published (or waiting for its retry), goes first.
                 AND NOT EXISTS (
                     SELECT 1 FROM outbox p
                     WHERE p.ordering_key = r.ordering_key
                       AND p.published_at IS NULL AND p.parked_at IS NULL
                       AND (p.created_at, p.id) < (r.created_at, r.id))
               ORDER BY created_at, id LIMIT $1 FOR UPDATE SKIP LOCKED) c
         WHERE o.id = c.id
         RETURNING o.id, o.org_id, o.created_at, o.attempts, o.kind, o.subject, o.payload,
                   o.traceparent",
    )
    .bind(limit)
    .bind(lease.as_secs_f64())
    .bind(token)
    .fetch_all(pool)
    .await?;
    let mut rows: Vec<Pending> = rows
        .into_iter()
        .map(|r| {
            let kind: Option<String> = r.get("kind");
            let payload: Vec<u8> = r.get("payload");
            let message = match (kind, r.get::<Option<String>, _>("subject")) {
                (Some(kind), _) => match serde_json::from_slice::<Notice>(&payload) {
                    Ok(n) => Message::Notice(n),
                    Err(e) => Message::Unreadable {
                        kind: Some(kind),
                        error: e.to_string(),
                    },
                },
                (None, Some(subject)) => Message::Raw { subject, payload },
                (None, None) => Message::Unreadable {
                    kind: None,
                    error: "a row with neither kind nor subject".to_owned(),
                },
            };
            Pending {
                id: r.get("id"),
                org_id: r.get::<Option<Uuid>, _>("org_id").map(OrgId),
                created_at: r.get("created_at"),
                attempts: u32::try_from(r.get::<i32, _>("attempts")).unwrap_or(0),
                message,
                traceparent: r.get("traceparent"),
            }
        })
        .collect();
    // RETURNING keeps no order; publishing does.
    rows.sort_by_key(|a| (a.created_at, a.id));
    Ok(Claim {
        pool: pool.clone(),
        token,
        rows,
    })
}

impl Claim {
    /// Gives every row back at once, without counting this claim against it (a round that could
    /// not reach the stream at all: not the rows' fault).
    pub async fn release(self) -> Result<(), StoreError> {
        self.settle(&[], &[], u32::MAX).await.map(drop)
    }

    /// Marks `published` as published and gives every other row back, as [`Claim::release`].
    pub async fn finish(self, published: &[Uuid]) -> Result<(), StoreError> {
        self.settle(published, &[], u32::MAX).await.map(drop)
    }

    /// Ends the claim: marks `published` as published; schedules each of `failed` for another
    /// try, or parks it if it has been claimed `max_attempts` times; gives every other row back
    /// as [`Claim::release`] does. Returns the rows it parked. One short transaction; nothing is
    /// published inside it.
    pub async fn settle(
        self,
        published: &[Uuid],
        failed: &[Failed],
        max_attempts: u32,
    ) -> Result<Vec<Parked>, StoreError> {
        let mut tx = self.pool.begin().await?;
        if !published.is_empty() {
            // Whoever holds the claim now: a row that was published is published.
            sqlx::query(
                "UPDATE outbox SET published_at = now(), claimed_until = NULL, claim_token = NULL
                 WHERE id = ANY($1) AND published_at IS NULL",
            )
            .bind(published)
            .execute(&mut *tx)
            .await?;
        }
        let mut parked = Vec::new();
        if !failed.is_empty() {
            let ids: Vec<Uuid> = failed.iter().map(|f| f.id).collect();
            let errors: Vec<&str> = failed.iter().map(|f| f.error.as_str()).collect();
            let retry_s: Vec<f64> = failed.iter().map(|f| f.retry_in.as_secs_f64()).collect();
            let max = i32::try_from(max_attempts).unwrap_or(i32::MAX);
            let rows = sqlx::query(
                "UPDATE outbox o SET last_error = f.error, claim_token = NULL,
                        parked_at = CASE WHEN o.attempts >= $4 THEN now() END,
                        claimed_until = CASE WHEN o.attempts >= $4 THEN NULL
                                             ELSE now() + make_interval(secs => f.retry_s) END
                 FROM UNNEST($1::uuid[], $2::text[], $3::float8[]) AS f(id, error, retry_s)
                 WHERE o.id = f.id AND o.claim_token = $5 AND o.published_at IS NULL
                 RETURNING o.id, o.kind, o.attempts, o.parked_at IS NOT NULL AS parked",
            )
            .bind(&ids)
            .bind(&errors)
            .bind(&retry_s)
            .bind(max)
            .bind(self.token)
            .fetch_all(&mut *tx)
            .await?;
            for r in rows {
                if r.get::<bool, _>("parked") {
                    let id: Uuid = r.get("id");
                    parked.push(Parked {
                        id,
                        kind: r.get("kind"),
                        attempts: u32::try_from(r.get::<i32, _>("attempts")).unwrap_or(0),
                        error: failed
                            .iter()
                            .find(|f| f.id == id)
                            .map(|f| f.error.clone())
                            .unwrap_or_default(),
                    });
                }
            }
        }
        let settled: Vec<Uuid> = published
            .iter()
            .copied()
            .chain(failed.iter().map(|f| f.id))
            .collect();
        let rest: Vec<Uuid> = self
            .rows
            .iter()
            .map(|r| r.id)
            .filter(|id| !settled.contains(id))
            .collect();
        if !rest.is_empty() {
            sqlx::query(
                "UPDATE outbox SET claimed_until = NULL, claim_token = NULL,
                        attempts = greatest(attempts - 1, 0)
                 WHERE id = ANY($1) AND claim_token = $2 AND published_at IS NULL",
            )
            .bind(&rest)
            .bind(self.token)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(parked)
    }
}

/// Deletes up to `limit` rows published longer than `retention` ago, oldest first; returns how
/// many. Unpublished and parked rows are never pruned. Bounded, so that a big backlog is deleted
/// in short statements that hold few locks and little WAL each.
pub async fn prune(pool: &PgPool, retention: Duration, limit: i64) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "DELETE FROM outbox WHERE id IN (
             SELECT id FROM outbox WHERE published_at < now() - make_interval(secs => $1)
             ORDER BY published_at LIMIT $2)",
    )
    .bind(retention.as_secs_f64())
    .bind(limit)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
