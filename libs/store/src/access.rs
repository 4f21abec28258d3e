//! Who may act and what they did (issue 9): an org's API keys listed, read and revoked (now, or
//! at a future time that makes a rotation's grace window), their last use recorded at lookup;
//! and the audit log read newest first, filtered, a page at a time.

use crate::error::StoreError;
use chrono::{DateTime, Utc};
use ebb_domain::OrgId;
use sqlx::{PgExecutor, Row};
use uuid::Uuid;

/// An API key as an admin sees it: never its secret.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyView {
    pub id: Uuid,
    pub name: String,
    pub role: String,
    pub site_ids: Option<Vec<Uuid>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

const KEY_COLUMNS: &str =
    "id, name, role, site_ids, expires_at, revoked_at, last_used_at, created_at";

fn key_view(r: &sqlx::postgres::PgRow) -> KeyView {
    KeyView {
        id: r.get("id"),
        name: r.get("name"),
        role: r.get("role"),
        site_ids: r.get("site_ids"),
        expires_at: r.get("expires_at"),
        revoked_at: r.get("revoked_at"),
        last_used_at: r.get("last_used_at"),
        created_at: r.get("created_at"),
    }
}

/// Every key of `org`, oldest first.
pub async fn keys(db: impl PgExecutor<'_>, org: OrgId) -> Result<Vec<KeyView>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {KEY_COLUMNS} FROM api_key WHERE org_id = $1 ORDER BY id"
    ))
    .bind(org.0)
    .fetch_all(db)
    .await?;
    Ok(rows.iter().map(key_view).collect())
}

pub async fn key(
    db: impl PgExecutor<'_>,
    org: OrgId,
    id: Uuid,
) -> Result<Option<KeyView>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {KEY_COLUMNS} FROM api_key WHERE org_id = $1 AND id = $2"
    ))
    .bind(org.0)
    .bind(id)
    .fetch_optional(db)
    .await?;
    Ok(row.as_ref().map(key_view))
}

/// Revokes a key of `org` from `at` on (a future `at` is a rotation's grace window). A key
/// already revoked earlier keeps its earlier cut-off. `None` when the key is not `org`'s.
pub async fn revoke_key(
    db: impl PgExecutor<'_>,
    org: OrgId,
    id: Uuid,
    at: DateTime<Utc>,
) -> Result<Option<KeyView>, StoreError> {
    let row = sqlx::query(&format!(
        "UPDATE api_key SET revoked_at = CASE WHEN revoked_at IS NOT NULL AND revoked_at <= $3
                                              THEN revoked_at ELSE $3 END
         WHERE org_id = $1 AND id = $2
         RETURNING {KEY_COLUMNS}"
    ))
    .bind(org.0)
    .bind(id)
    .bind(at)
    .fetch_optional(db)
    .await?;
    Ok(row.as_ref().map(key_view))
}

/// Records that a key was just seen working; at most one write a minute per key, whatever the
/// number of gateways.
pub async fn touch_key(db: impl PgExecutor<'_>, id: Uuid) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE api_key SET last_used_at = now()
         WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
    )
    .bind(id)
    .execute(db)
    .await?;
    Ok(())
}

/// One audit row.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor_kind: String,
    pub actor_id: Option<Uuid>,
    pub action: String,
    pub subject_id: Option<Uuid>,
    pub metadata: serde_json::Value,
}

/// What an audit listing keeps; every filter optional.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub actor: Option<Uuid>,
    pub action: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

/// Audit rows of `org` matching `filter` older than `before`, newest first, at most `limit`.
pub async fn audit_log(
    db: impl PgExecutor<'_>,
    org: OrgId,
    filter: &AuditFilter,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<AuditRow>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, at, actor_kind, actor_id, action, subject_id, metadata FROM audit_log
         WHERE org_id = $1
           AND ($2::uuid IS NULL OR actor_id = $2)
           AND ($3::text IS NULL OR action = $3)
           AND ($4::timestamptz IS NULL OR at >= $4)
           AND ($5::timestamptz IS NULL OR at < $5)
           AND ($6::bigint IS NULL OR id < $6)
         ORDER BY id DESC
         LIMIT $7",
    )
    .bind(org.0)
    .bind(filter.actor)
    .bind(filter.action.as_deref())
    .bind(filter.from)
    .bind(filter.to)
    .bind(before)
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows
        .iter()
        .map(|r| AuditRow {
            id: r.get("id"),
            at: r.get("at"),
            actor_kind: r.get("actor_kind"),
            actor_id: r.get("actor_id"),
            action: r.get("action"),
            subject_id: r.get("subject_id"),
            metadata: r.get("metadata"),
        })
        .collect())
}
