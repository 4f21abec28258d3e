//! Keys and audit (issue 9), for admins: API keys created (the token shown once), listed and
//! revoked, at once or after a rotation's grace window; and the audit log, newest first. A key
//! limited to some sites can only mint keys limited to sites it reaches, so no key widens its
//! own reach.

use crate::AppState;
use crate::auth::Principal;
use crate::problem::{Kind, Problem};
use crate::routes::{bad_cursor, body, require};
use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use ebb_bus::Role;
use ebb_domain::{SiteCode, SiteId};
use ebb_store::access::{self, AuditFilter, KeyView};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use uuid::Uuid;

const MAX_NAME: usize = 200;
/// The longest rotation grace a revocation may give: a week.
const MAX_GRACE_S: u32 = 7 * 24 * 3600;
pub const DEFAULT_AUDIT_PAGE: u32 = 100;
pub const MAX_AUDIT_PAGE: u32 = 1000;

/// An API key as an admin sees it. `token` is present only in the answer to its creation.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApiKey {
    pub id: Uuid,
    pub name: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    /// Codes of the sites the key reaches; absent for every site of the org.
    pub sites: Option<Vec<String>>,
    pub expires_at: Option<DateTime<Utc>>,
    /// From this time on the key is refused; a future time is a rotation's grace window.
    pub revoked_at: Option<DateTime<Utc>>,
    /// When a gateway last looked the key up and it worked (at most once a minute).
    pub last_used_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// The bearer token: shown only here, once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// Site ids of the org by code and back.
struct Sites {
    by_code: HashMap<String, Uuid>,
    by_id: HashMap<Uuid, String>,
}

async fn org_sites(s: &AppState, p: &Principal) -> Result<Sites, Problem> {
    let sites = ebb_store::fleet::sites(&s.pool, p.org)
        .await
        .map_err(Problem::internal)?;
    Ok(Sites {
        by_code: sites
            .iter()
            .map(|x| (x.code.as_str().to_owned(), x.id.0))
            .collect(),
        by_id: sites
            .iter()
            .map(|x| (x.id.0, x.code.as_str().to_owned()))
            .collect(),
    })
}

fn api_key(k: KeyView, sites: &Sites, token: Option<String>) -> ApiKey {
    ApiKey {
        id: k.id,
        name: k.name,
        role: k.role,
        sites: k.site_ids.map(|ids| {
            ids.iter()
                .filter_map(|id| sites.by_id.get(id).cloned())
                .collect()
        }),
        expires_at: k.expires_at,
        revoked_at: k.revoked_at,
        last_used_at: k.last_used_at,
        created_at: k.created_at,
        token,
    }
}

/// A new key.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKeyBody {
    /// What the key is for (1-200 characters).
    name: String,
    /// `viewer`, `operator` or `admin`.
    role: String,
    /// Site codes the key is limited to; absent for every site of the org (only a key that
    /// reaches every site may create one).
    #[serde(default)]
    sites: Option<Vec<String>>,
    /// When the key stops working; in the future.
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
}

#[utoipa::path(
    post,
    path = "/v1/keys",
    tag = "access",
    summary = "Create an API key; its token is shown in this answer only (admin)",
    request_body = NewKeyBody,
    responses((status = 201, description = "The key, with its token", body = ApiKey), crate::openapi::Problems)
)]
pub async fn create_key(
    State(s): State<AppState>,
    p: Principal,
    b: Result<Json<NewKeyBody>, JsonRejection>,
) -> Result<(StatusCode, Json<ApiKey>), Problem> {
    require(&p, Role::Admin)?;
    let b = body(b)?;
    let name = b.name.trim();
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(Problem::field(
            "name",
            format!("must be 1 to {MAX_NAME} characters"),
        ));
    }
    let role = Role::parse(&b.role)
        .ok_or_else(|| Problem::field("role", "must be viewer, operator or admin"))?;
    if b.expires_at.is_some_and(|t| t <= Utc::now()) {
        return Err(Problem::field("expires_at", "must be in the future"));
    }
    let sites = org_sites(&s, &p).await?;
    let site_ids: Option<Vec<SiteId>> = match &b.sites {
        None => None,
        Some(codes) => {
            let mut ids = Vec::with_capacity(codes.len());
            for (i, code) in codes.iter().enumerate() {
                let field = format!("sites[{i}]");
                SiteCode::parse(code).map_err(|e| Problem::field(&field, e.to_string()))?;
                let id = sites
                    .by_code
                    .get(code)
                    .ok_or_else(|| Problem::field(&field, "is not a site of this organisation"))?;
                ids.push(SiteId(*id));
            }
            Some(ids)
        }
    };
    // No key widens its own reach.
    if let Some(reach) = &p.site_ids {
        match &site_ids {
            None => {
                return Err(Problem::new(
                    Kind::PermissionDenied,
                    "a key limited to some sites cannot create one that reaches every site",
                ));
            }
            Some(ids) => {
                if let Some(out) = ids.iter().find(|id| !reach.contains(&id.0)) {
                    return Err(Problem::new(
                        Kind::PermissionDenied,
                        format!(
                            "this key cannot reach site {}",
                            sites.by_id.get(&out.0).map_or("?", String::as_str)
                        ),
                    ));
                }
            }
        }
    }
    let minted = ebb_store::keys::generate();
    let (org, actor) = (p.org, p.key_id);
    let name = name.to_owned();
    let expires_at = b.expires_at;
    let (prefix, secret_hash) = (minted.prefix.clone(), minted.secret_hash.clone());
    let id = ebb_store::tx::with_tx(&s.pool, ebb_store::tx::DEFAULT_ATTEMPTS, move |conn| {
        let (name, prefix, secret_hash, site_ids) = (
            name.clone(),
            prefix.clone(),
            secret_hash.clone(),
            site_ids.clone(),
        );
        Box::pin(async move {
            let id = ebb_store::fleet::insert_api_key(
                &mut *conn,
                &ebb_store::fleet::NewApiKey {
                    org,
                    prefix: &prefix,
                    secret_hash: &secret_hash,
                    role: role.as_str(),
                    name: &name,
                    expires_at,
                    site_ids: site_ids.as_deref(),
                },
            )
            .await?;
            ebb_store::events::audit(
                &mut *conn,
                org,
                "api_key",
                Some(actor),
                "key_created",
                Some(id),
                serde_json::json!({ "name": name, "role": role.as_str(),
                    "sites": site_ids.map(|s| s.iter().map(|x| x.0).collect::<Vec<_>>()),
                    "expires_at": expires_at }),
            )
            .await?;
            Ok(id)
        })
    })
    .await
    .map_err(Problem::internal)?;
    let view = access::key(&s.pool, p.org, id)
        .await
        .map_err(Problem::internal)?
        .ok_or_else(|| Problem::internal("a key just created is missing"))?;
    Ok((
        StatusCode::CREATED,
        Json(api_key(view, &sites, Some(minted.token))),
    ))
}

/// Every key of the org.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyList {
    pub items: Vec<ApiKey>,
}

/// Whether `p` may see a key limited to `key_sites`: a key limited to some sites sees only keys
/// limited within them.
fn sees(p: &Principal, key_sites: &Option<Vec<Uuid>>) -> bool {
    match (&p.site_ids, key_sites) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(reach), Some(ids)) => ids.iter().all(|id| reach.contains(id)),
    }
}

#[utoipa::path(
    get,
    path = "/v1/keys",
    tag = "access",
    summary = "The org's API keys, never their secrets (admin)",
    responses((status = 200, description = "The keys", body = KeyList), crate::openapi::Problems)
)]
pub async fn list_keys(State(s): State<AppState>, p: Principal) -> Result<Json<KeyList>, Problem> {
    require(&p, Role::Admin)?;
    let sites = org_sites(&s, &p).await?;
    let keys = access::keys(&s.pool, p.org)
        .await
        .map_err(Problem::internal)?;
    Ok(Json(KeyList {
        items: keys
            .into_iter()
            .filter(|k| sees(&p, &k.site_ids))
            .map(|k| api_key(k, &sites, None))
            .collect(),
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RevokeQuery {
    /// Seconds the key keeps working, for a rotation (0 to 604800; default 0: now).
    #[serde(default)]
    grace_s: Option<u32>,
}

#[utoipa::path(
    delete,
    path = "/v1/keys/{id}",
    tag = "access",
    summary = "Revoke a key, now or after a grace window (admin)",
    params(("id" = Uuid, Path, description = "The key"), RevokeQuery),
    responses((status = 200, description = "The key, revoked", body = ApiKey), crate::openapi::Problems)
)]
pub async fn revoke_key(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    q: Result<Query<RevokeQuery>, QueryRejection>,
) -> Result<Json<ApiKey>, Problem> {
    require(&p, Role::Admin)?;
    let id = Uuid::parse_str(&id).map_err(|_| Problem::field("id", "must be a UUID"))?;
    let q = crate::routes::query(q)?;
    let grace = q.grace_s.unwrap_or(0);
    if grace > MAX_GRACE_S {
        return Err(Problem::field(
            "grace_s",
            format!("must be between 0 and {MAX_GRACE_S}"),
        ));
    }
    let not_found = || Problem::new(Kind::NotFound, "key not found");
    // 404 unless the key is the org's and within this key's sites.
    access::key(&s.pool, p.org, id)
        .await
        .map_err(Problem::internal)?
        .filter(|k| sees(&p, &k.site_ids))
        .ok_or_else(not_found)?;
    let at = Utc::now() + chrono::Duration::seconds(i64::from(grace));
    let (org, actor) = (p.org, p.key_id);
    let revoked = ebb_store::tx::with_tx(&s.pool, ebb_store::tx::DEFAULT_ATTEMPTS, move |conn| {
        Box::pin(async move {
            let revoked = access::revoke_key(&mut *conn, org, id, at).await?;
            if let Some(k) = &revoked {
                ebb_store::events::audit(
                    &mut *conn,
                    org,
                    "api_key",
                    Some(actor),
                    "key_revoked",
                    Some(id),
                    serde_json::json!({ "revoked_at": k.revoked_at, "grace_s": grace }),
                )
                .await?;
            }
            Ok(revoked)
        })
    })
    .await
    .map_err(Problem::internal)?
    .ok_or_else(not_found)?;
    // This gateway forgets what it cached at once; others within their cache's time to live.
    s.guard.forget_keys();
    let sites = org_sites(&s, &p).await?;
    Ok(Json(api_key(revoked, &sites, None)))
}

/// One audit row.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// `api_key`, `system`, …
    pub actor_kind: String,
    pub actor_id: Option<Uuid>,
    #[schema(example = "curtailment_started")]
    pub action: String,
    pub subject_id: Option<Uuid>,
    pub metadata: serde_json::Value,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only what this API key did.
    #[serde(default)]
    actor: Option<String>,
    /// Only this action (`curtailment_started`, `device_updated`, `key_created`, …).
    #[serde(default)]
    action: Option<String>,
    /// From this time (RFC 3339, inclusive).
    #[serde(default)]
    from: Option<DateTime<Utc>>,
    /// Before this time (RFC 3339, exclusive).
    #[serde(default)]
    to: Option<DateTime<Utc>>,
    /// 1 to 1,000 (default 100).
    #[serde(default)]
    page_size: Option<u32>,
    /// The `next_cursor` of the previous page, with the same filters.
    #[serde(default)]
    cursor: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct AuditCursor {
    org: Uuid,
    actor: Option<String>,
    action: Option<String>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    before: i64,
}

/// One page of the audit log, newest first.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditPage {
    pub items: Vec<AuditEntry>,
    pub next_cursor: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/audit",
    tag = "access",
    summary = "Every write, with who did it and what changed, newest first (admin)",
    params(AuditQuery),
    responses((status = 200, description = "A page", body = AuditPage), crate::openapi::Problems)
)]
pub async fn audit(
    State(s): State<AppState>,
    p: Principal,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<AuditPage>, Problem> {
    require(&p, Role::Admin)?;
    // The log is the org's; a key limited to some sites does not read it.
    if p.site_ids.is_some() {
        return Err(Problem::new(
            Kind::PermissionDenied,
            "the audit log needs a key that reaches every site",
        ));
    }
    let q = crate::routes::query(q)?;
    let size = q.page_size.unwrap_or(DEFAULT_AUDIT_PAGE);
    if !(1..=MAX_AUDIT_PAGE).contains(&size) {
        return Err(Problem::field(
            "page_size",
            format!("must be between 1 and {MAX_AUDIT_PAGE}"),
        ));
    }
    let actor = q
        .actor
        .as_deref()
        .map(|a| Uuid::parse_str(a).map_err(|_| Problem::field("actor", "must be a UUID")))
        .transpose()?;
    if q.action
        .as_ref()
        .is_some_and(|a| a.is_empty() || a.len() > 64)
    {
        return Err(Problem::field("action", "must be 1 to 64 characters"));
    }
    if let (Some(from), Some(to)) = (q.from, q.to)
        && from >= to
    {
        return Err(Problem::field("to", "must be after from"));
    }
    let before = match &q.cursor {
        None => None,
        Some(c) => Some(
            crate::cursor::decode::<AuditCursor>(c)
                .filter(|cur| {
                    cur.org == p.org.0
                        && cur.actor == q.actor
                        && cur.action == q.action
                        && cur.from == q.from
                        && cur.to == q.to
                })
                .ok_or_else(bad_cursor)?
                .before,
        ),
    };
    let filter = AuditFilter {
        actor,
        action: q.action.clone(),
        from: q.from,
        to: q.to,
    };
    let mut rows = access::audit_log(&s.pool, p.org, &filter, before, i64::from(size) + 1)
        .await
        .map_err(Problem::internal)?;
    let more = rows.len() > size as usize;
    rows.truncate(size as usize);
    let next_cursor = more.then(|| rows.last()).flatten().map(|last| {
        crate::cursor::encode(&AuditCursor {
            org: p.org.0,
            actor: q.actor.clone(),
            action: q.action.clone(),
            from: q.from,
            to: q.to,
            before: last.id,
        })
    });
    Ok(Json(AuditPage {
        items: rows
            .into_iter()
            .map(|r| AuditEntry {
                id: r.id,
                at: r.at,
                actor_kind: r.actor_kind,
                actor_id: r.actor_id,
                action: r.action,
                subject_id: r.subject_id,
                metadata: r.metadata,
            })
            .collect(),
        next_cursor,
    }))
}
