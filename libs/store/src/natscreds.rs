//! The NATS credentials `ebb admin` minted: recorded when minted, revoked by user name, and read
//! back as the revocations the Ebb account JWT carries.

use crate::error::StoreError;
use chrono::{DateTime, Utc};
use ebb_domain::{OrgId, SiteId};
use sqlx::PgExecutor;
use std::collections::BTreeMap;

/// Records a minted credential.
pub async fn record(
    db: impl PgExecutor<'_>,
    public_key: &str,
    name: &str,
    site: Option<SiteId>,
    org: Option<OrgId>,
    issued_at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO nats_credential (public_key, name, site_id, org_id, issued_at)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(public_key)
    .bind(name)
    .bind(site.map(|s| s.0))
    .bind(org.map(|o| o.0))
    .bind(issued_at)
    .execute(db)
    .await?;
    Ok(())
}

/// Revokes every unrevoked credential of user `name`; returns how many.
pub async fn revoke_by_name(db: impl PgExecutor<'_>, name: &str) -> Result<u64, StoreError> {
    let r = sqlx::query(
        "UPDATE nats_credential SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL",
    )
    .bind(name)
    .execute(db)
    .await?;
    Ok(r.rows_affected())
}

/// Every revoked credential: user public key → the revocation time in unix seconds (every JWT of
/// that key issued at or before it is refused).
pub async fn revocations(db: impl PgExecutor<'_>) -> Result<BTreeMap<String, i64>, StoreError> {
    let rows: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT public_key, revoked_at FROM nats_credential WHERE revoked_at IS NOT NULL",
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(k, at)| (k, at.timestamp()))
        .collect())
}
