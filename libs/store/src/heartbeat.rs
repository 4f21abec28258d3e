//! The reconciler's liveness row (DESIGN §5.10): an alert reads `beat_at`, a test reads `seq`.

use crate::error::StoreError;
use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, Row};

/// Bumps the heartbeat for `name`, recording which process holds leadership.
pub async fn beat(db: impl PgExecutor<'_>, name: &str, holder: &str) -> Result<i64, StoreError> {
    let row = sqlx::query(
        "INSERT INTO reconciler_heartbeat (name, holder, seq, beat_at) VALUES ($1, $2, 1, now())
         ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,
             seq = reconciler_heartbeat.seq + 1, beat_at = now()
         RETURNING seq",
    )
    .bind(name)
    .bind(holder)
    .fetch_one(db)
    .await?;
    Ok(row.get(0))
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
