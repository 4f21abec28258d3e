//! The reconciler's liveness row (DESIGN §5.10): an alert reads `beat_at` (through the worker's
//! `ebb_reconciler_heartbeat_age_seconds`), a test reads `seq`, an operator reads the rest: the
//! leader and its term (`epoch`), the last pass's start, finish and duration, the live events,
//! and whether the leader stopped cleanly.

use crate::error::StoreError;
use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, Row};

/// What one pass reports.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pass {
    /// The leader's term, from [`begin_term`].
    pub epoch: i64,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub live_events: usize,
}

/// The whole row.
#[derive(Clone, Debug, PartialEq)]
pub struct Heartbeat {
    pub holder: String,
    pub epoch: i64,
    /// The pass count, bumped by every beat.
    pub seq: i64,
    pub beat_at: DateTime<Utc>,
    pub pass_started_at: Option<DateTime<Utc>>,
    pub pass_finished_at: Option<DateTime<Utc>>,
    pub pass_ms: Option<f64>,
    pub live_events: Option<i32>,
    /// Set by a leader that stopped cleanly, cleared by the next beat.
    pub stopped_at: Option<DateTime<Utc>>,
}

/// Starts a term of leadership for `holder`: the epoch moves on, so every later beat says which
/// term wrote it. Returns the new epoch.
pub async fn begin_term(
    db: impl PgExecutor<'_>,
    name: &str,
    holder: &str,
) -> Result<i64, StoreError> {
    let row = sqlx::query(
        "INSERT INTO reconciler_heartbeat (name, holder, seq, beat_at, epoch) VALUES ($1, $2, 0, now(), 1)
         ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,
             epoch = reconciler_heartbeat.epoch + 1, stopped_at = NULL
         RETURNING epoch",
    )
    .bind(name)
    .bind(holder)
    .fetch_one(db)
    .await?;
    Ok(row.get(0))
}

/// Bumps the heartbeat for `name`, recording which process holds leadership and, when given,
/// what its last pass did.
pub async fn beat(
    db: impl PgExecutor<'_>,
    name: &str,
    holder: &str,
    pass: Option<&Pass>,
) -> Result<i64, StoreError> {
    let ms = pass.map(|p| {
        (p.finished_at - p.started_at)
            .num_microseconds()
            .unwrap_or(0) as f64
            / 1000.0
    });
    let row = sqlx::query(
        "INSERT INTO reconciler_heartbeat (name, holder, seq, beat_at, epoch, pass_started_at,
                 pass_finished_at, pass_ms, live_events)
         VALUES ($1, $2, 1, now(), coalesce($3, 0), $4, $5, $6, $7)
         ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,
             seq = reconciler_heartbeat.seq + 1, beat_at = now(),
             epoch = coalesce($3, reconciler_heartbeat.epoch),
             pass_started_at = coalesce($4, reconciler_heartbeat.pass_started_at),
             pass_finished_at = coalesce($5, reconciler_heartbeat.pass_finished_at),
             pass_ms = coalesce($6, reconciler_heartbeat.pass_ms),
             live_events = coalesce($7, reconciler_heartbeat.live_events),
             stopped_at = NULL
         RETURNING seq",
    )
    .bind(name)
    .bind(holder)
    .bind(pass.map(|p| p.epoch))
    .bind(pass.map(|p| p.started_at))
    .bind(pass.map(|p| p.finished_at))
    .bind(ms)
    .bind(pass.map(|p| i32::try_from(p.live_events).unwrap_or(i32::MAX)))
    .fetch_one(db)
    .await?;
    Ok(row.get(0))
}

/// The last write of a leader that stops cleanly (only its own term's row).
pub async fn stopped(
    db: impl PgExecutor<'_>,
    name: &str,
    holder: &str,
    epoch: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE reconciler_heartbeat SET stopped_at = now(), beat_at = now()
         WHERE name = $1 AND holder = $2 AND epoch = $3",
    )
    .bind(name)
    .bind(holder)
    .bind(epoch)
    .execute(db)
    .await?;
    Ok(())
}

/// The current heartbeat: (holder, seq, beat_at).
pub async fn read(
    db: impl PgExecutor<'_>,
    name: &str,
) -> Result<Option<(String, i64, DateTime<Utc>)>, StoreError> {
    let row = sqlx::query("SELECT holder, seq, beat_at FROM reconciler_heartbeat WHERE name = $1")
        .bind(name)
        .fetch_optional(db)
        .await?;
    Ok(row.map(|r| (r.get(0), r.get(1), r.get(2))))
}

/// The whole heartbeat row.
pub async fn read_full(
    db: impl PgExecutor<'_>,
    name: &str,
) -> Result<Option<Heartbeat>, StoreError> {
    let row = sqlx::query(
        "SELECT holder, epoch, seq, beat_at, pass_started_at, pass_finished_at, pass_ms,
                live_events, stopped_at
         FROM reconciler_heartbeat WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| Heartbeat {
        holder: r.get(0),
        epoch: r.get(1),
        seq: r.get(2),
        beat_at: r.get(3),
        pass_started_at: r.get(4),
        pass_finished_at: r.get(5),
        pass_ms: r.get(6),
        live_events: r.get(7),
        stopped_at: r.get(8),
    }))
}
