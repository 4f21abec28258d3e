//! The outbox (DESIGN §3): a change that must be announced inserts a row in the same transaction,
//! and the worker's relay publishes it afterwards with `Nats-Msg-Id = outbox id`, so a crash
//! between commit and publish only delays the message and a double publish is deduplicated.
//!
//! Architecture invariant: the store publishes nothing and knows no subject or wire format. A row
//! says what happened ([`Notice`], stored as JSON); the relay in the worker turns it into a
//! message.

use crate::error::StoreError;
use chrono::{DateTime, Utc};
use ebb_domain::{EventId, EventState, OrgId};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool, Postgres, Row, Transaction};
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
    },
}

impl Notice {
    /// The `kind` column's value.
    pub fn kind(&self) -> &'static str {
        match self {
            Notice::EventTransition { .. } => "event_transition",
        }
    }
}

/// Queues `notice` inside the caller's transaction.
pub async fn enqueue(
    conn: &mut PgConnection,
    org: Option<OrgId>,
    notice: &Notice,
) -> Result<Uuid, StoreError> {
    let id = Uuid::now_v7();
    let payload = serde_json::to_vec(notice).map_err(|e| StoreError::Encode(e.to_string()))?;
    sqlx::query("INSERT INTO outbox (id, org_id, kind, payload) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(org.map(|o| o.0))
        .bind(notice.kind())
        .bind(payload)
        .execute(conn)
        .await?;
    Ok(id)
}

/// One unpublished row.
#[derive(Clone, Debug, PartialEq)]
pub struct Pending {
    pub id: Uuid,
    pub org_id: Option<OrgId>,
    pub created_at: DateTime<Utc>,
    pub message: Message,
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

/// Rows claimed by one relay round: locked until [`Claim::finish`] (or dropped, which rolls the
/// claim back and leaves them for the next round).
#[derive(Debug)]
pub struct Claim {
    tx: Transaction<'static, Postgres>,
    pub rows: Vec<Pending>,
}

/// Claims up to `limit` unpublished rows, oldest first, with `FOR UPDATE SKIP LOCKED`, so several
/// relays can run side by side without sending one row twice at once.
pub async fn claim(pool: &PgPool, limit: i64) -> Result<Claim, StoreError> {
    let mut tx = pool.begin().await?;
    let rows = sqlx::query(
        "SELECT id, org_id, created_at, kind, subject, payload FROM outbox WHERE published_at IS NULL
         ORDER BY created_at, id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    let rows = rows
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
                message,
            }
        })
        .collect();
    Ok(Claim { tx, rows })
}

impl Claim {
    /// Releases the claim on every row without publishing any (the next round takes them).
    pub async fn release(self) -> Result<(), StoreError> {
        self.tx.rollback().await?;
        Ok(())
    }

    /// Marks `published` as published and releases the claim on every row.
    pub async fn finish(mut self, published: &[Uuid]) -> Result<(), StoreError> {
        if !published.is_empty() {
            sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
                .bind(published)
                .execute(&mut *self.tx)
                .await?;
        }
        self.tx.commit().await?;
        Ok(())
    }
}
