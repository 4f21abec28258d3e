//! Webhook endpoints, their sealed secrets and their deliveries (issue 8; ADR 0009 and 0010).
//!
//! - Endpoints belong to an org; every query here filters by it, except the worker's
//!   [`claim`] and [`record`], which act on what they claimed.
//! - Secrets are sealed with the [`Keyring`] (AES-256-GCM, bound to the secret row's id) and
//!   never stored in clear; [`rotate_secret`] keeps the old one valid for a grace window, during
//!   which [`valid_secrets`] (and so every delivery) carries both.
//! - [`enqueue`] writes one delivery per enabled endpoint of the org that wants the event type,
//!   idempotent per endpoint and message id. It takes any executor, so the caller can enqueue in
//!   the transaction that consumes the message it delivers.
//! - [`claim`] leases due deliveries to a worker: picked with `FOR UPDATE SKIP LOCKED`, the
//!   conditions rechecked in the `UPDATE` that stamps the lease, so two workers never hold one
//!   delivery at once; only an endpoint's oldest pending delivery (its head) can be claimed, so
//!   deliveries to one endpoint go out in order, one at a time, and a slow endpoint holds up only
//!   itself. The HTTP request happens outside any transaction; [`record`] then writes the
//!   outcome, checked against the claim's token, so a worker whose lease ran out and was
//!   reclaimed cannot overwrite the newer claim. A worker that dies leaves its delivery to a
//!   later claim once the lease runs out; the lease must outlast the request timeout.
//!
//! Lock order: an endpoint row before its deliveries, as deleting an endpoint (which cascades)
//! takes them; [`record`] locks the endpoint first for that reason.

use crate::error::StoreError;
use chrono::{DateTime, Utc};
use ebb_domain::OrgId;
use ebb_webhooks::attempt::{CappedBody, PhaseTimings, Verdict, verdict};
use ebb_webhooks::endpoint::{Description, EventFilter};
use ebb_webhooks::retry::{self, Jitter};
use ebb_webhooks::sealed::OpenError;
use ebb_webhooks::signing::SecretError;
use ebb_webhooks::ssrf::WebhookUrl;
use ebb_webhooks::{Event, EventType, Keyring, MessageId, Sealed, SigningSecret};
use sqlx::postgres::PgRow;
use sqlx::{PgExecutor, PgPool, Row};
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::time::Duration;
use uuid::Uuid;

/// A webhook endpoint's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointId(pub Uuid);

/// A delivery's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeliveryId(pub Uuid);

impl fmt::Display for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Why an endpoint is disabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisabledReason {
    /// The receiver answered 410 Gone.
    Gone,
    /// A delivery exhausted the retry schedule.
    Failing,
    /// An admin disabled it.
    Manual,
}

impl DisabledReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DisabledReason::Gone => "gone",
            DisabledReason::Failing => "failing",
            DisabledReason::Manual => "manual",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "gone" => Ok(DisabledReason::Gone),
            "failing" => Ok(DisabledReason::Failing),
            "manual" => Ok(DisabledReason::Manual),
            other => Err(StoreError::Encode(format!(
                "unknown disabled_reason {other:?}"
            ))),
        }
    }
}

/// When and why an endpoint was disabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Disabled {
    pub reason: DisabledReason,
    pub at: DateTime<Utc>,
}

/// An endpoint as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    pub id: EndpointId,
    pub org_id: OrgId,
    pub url: String,
    pub event_types: EventFilter,
    pub description: String,
    /// `None` while enabled.
    pub disabled: Option<Disabled>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A new endpoint, its fields parsed at the boundary. The store checks the URL's form only: the
/// caller refuses URLs whose addresses the SSRF policy refuses (`ssrf::resolve`) before storing
/// them, and the sender checks again before each attempt, since DNS answers change.
#[derive(Clone, Debug)]
pub struct NewEndpoint {
    pub url: WebhookUrl,
    pub event_types: EventFilter,
    pub description: Description,
}

/// Whether an endpoint should be enabled (PATCH `enabled`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enablement {
    /// Enabled again, whatever disabled it.
    Enable,
    /// Disabled by an admin (an endpoint already disabled keeps its reason).
    Disable,
}

/// A change to an endpoint; `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct EndpointPatch {
    pub url: Option<WebhookUrl>,
    pub event_types: Option<EventFilter>,
    pub description: Option<Description>,
    pub enablement: Option<Enablement>,
}

const ENDPOINT_COLUMNS: &str = "id, org_id, url, event_types, description, disabled_at, \
                                disabled_reason, created_at, updated_at";

fn endpoint_from_row(r: &PgRow) -> Result<Endpoint, StoreError> {
    let event_types = match r.get::<Option<Vec<String>>, _>("event_types") {
        None => EventFilter::All,
        Some(names) => {
            // A type this version does not know (written by a newer one) is skipped, not fatal.
            let types: BTreeSet<EventType> = names.iter().filter_map(|n| n.parse().ok()).collect();
            EventFilter::Only(types)
        }
    };
    let disabled = match (
        r.get::<Option<DateTime<Utc>>, _>("disabled_at"),
        r.get::<Option<String>, _>("disabled_reason"),
    ) {
        (Some(at), Some(reason)) => Some(Disabled {
            reason: DisabledReason::parse(&reason)?,
            at,
        }),
        _ => None,
    };
    Ok(Endpoint {
        id: EndpointId(r.get("id")),
        org_id: OrgId(r.get("org_id")),
        url: r.get("url"),
        event_types,
        description: r.get("description"),
        disabled,
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
    })
}

/// A secret row, still sealed.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredSecret {
    pub id: Uuid,
    pub sealed: Sealed,
    /// `None` for the current secret; a rotated one is valid strictly before this.
    pub expires_at: Option<DateTime<Utc>>,
}

/// Why a stored secret could not be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretOpenError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("a stored webhook secret is malformed: {0}")]
    Malformed(#[from] SecretError),
}

impl StoredSecret {
    /// Decrypts the secret. The row's id is the associated data it was sealed with.
    pub fn open(&self, keyring: &Keyring) -> Result<SigningSecret, SecretOpenError> {
        let key = keyring.open(&self.sealed, self.id.as_bytes())?;
        Ok(SigningSecret::from_bytes(key)?)
    }
}

async fn insert_secret(
    conn: &mut sqlx::PgConnection,
    keyring: &Keyring,
    org: OrgId,
    endpoint: EndpointId,
) -> Result<SigningSecret, StoreError> {
    let secret = SigningSecret::generate();
    let id = Uuid::now_v7();
    let sealed = keyring.seal(secret.as_bytes(), id.as_bytes());
    sqlx::query(
        "INSERT INTO webhook_secret (id, org_id, endpoint_id, key_id, ciphertext)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(org.0)
    .bind(endpoint.0)
    .bind(&sealed.key_id)
    .bind(&sealed.ciphertext)
    .execute(conn)
    .await?;
    Ok(secret)
}

/// Creates an endpoint with a fresh secret, returned in clear this once (the API shows it in
/// its 201 and never again).
pub async fn create_endpoint(
    pool: &PgPool,
    keyring: &Keyring,
    org: OrgId,
    new: &NewEndpoint,
) -> Result<(Endpoint, SigningSecret), StoreError> {
    let mut tx = pool.begin().await?;
    let id = EndpointId(Uuid::now_v7());
    let row = sqlx::query(&format!(
        "INSERT INTO webhook_endpoint (id, org_id, url, event_types, description)
         VALUES ($1, $2, $3, $4, $5) RETURNING {ENDPOINT_COLUMNS}"
    ))
    .bind(id.0)
    .bind(org.0)
    .bind(new.url.as_str())
    .bind(new.event_types.names())
    .bind(new.description.as_str())
    .fetch_one(&mut *tx)
    .await
    .map_err(StoreError::classify)?;
    let endpoint = endpoint_from_row(&row)?;
    let secret = insert_secret(&mut tx, keyring, org, id).await?;
    tx.commit().await?;
    Ok((endpoint, secret))
}

/// The org's endpoints, oldest first.
pub async fn list_endpoints(
    db: impl PgExecutor<'_>,
    org: OrgId,
) -> Result<Vec<Endpoint>, StoreError> {
    sqlx::query(&format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoint WHERE org_id = $1 ORDER BY created_at, id"
    ))
    .bind(org.0)
    .fetch_all(db)
    .await?
    .iter()
    .map(endpoint_from_row)
    .collect()
}

/// One endpoint of the org; [`StoreError::NotFound`] for another org's.
pub async fn get_endpoint(
    db: impl PgExecutor<'_>,
    org: OrgId,
    id: EndpointId,
) -> Result<Endpoint, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoint WHERE id = $1 AND org_id = $2"
    ))
    .bind(id.0)
    .bind(org.0)
    .fetch_optional(db)
    .await?
    .ok_or(StoreError::NotFound)?;
    endpoint_from_row(&row)
}

/// Applies `patch`; returns the endpoint as it is now.
pub async fn update_endpoint(
    db: impl PgExecutor<'_>,
    org: OrgId,
    id: EndpointId,
    patch: &EndpointPatch,
) -> Result<Endpoint, StoreError> {
    let enablement = patch.enablement.map(|e| match e {
        Enablement::Enable => "enable",
        Enablement::Disable => "disable",
    });
    let row = sqlx::query(&format!(
        "UPDATE webhook_endpoint SET
             url = COALESCE($3::text, url),
             event_types = CASE WHEN $4::bool THEN $5::text[] ELSE event_types END,
             description = COALESCE($6::text, description),
             disabled_at = CASE $7::text WHEN 'enable' THEN NULL
                                   WHEN 'disable' THEN COALESCE(disabled_at, now())
                                   ELSE disabled_at END,
             disabled_reason = CASE $7::text WHEN 'enable' THEN NULL
                                       WHEN 'disable' THEN COALESCE(disabled_reason, 'manual')
                                       ELSE disabled_reason END,
             updated_at = now()
         WHERE id = $1 AND org_id = $2
         RETURNING {ENDPOINT_COLUMNS}"
    ))
    .bind(id.0)
    .bind(org.0)
    .bind(patch.url.as_ref().map(|u| u.as_str()))
    .bind(patch.event_types.is_some())
    .bind(patch.event_types.as_ref().and_then(|f| f.names()))
    .bind(patch.description.as_ref().map(|d| d.as_str()))
    .bind(enablement)
    .fetch_optional(db)
    .await?
    .ok_or(StoreError::NotFound)?;
    endpoint_from_row(&row)
}

/// Deletes an endpoint with its secrets and deliveries. A worker holding one of its deliveries
/// finds its claim gone when it records the outcome.
pub async fn delete_endpoint(
    db: impl PgExecutor<'_>,
    org: OrgId,
    id: EndpointId,
) -> Result<(), StoreError> {
    let done = sqlx::query("DELETE FROM webhook_endpoint WHERE id = $1 AND org_id = $2")
        .bind(id.0)
        .bind(org.0)
        .execute(db)
        .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

/// Makes a new current secret, returned in clear this once; the old current one stays valid for
/// `grace` (zero: not at all). Secrets whose grace is over are deleted.
pub async fn rotate_secret(
    pool: &PgPool,
    keyring: &Keyring,
    org: OrgId,
    id: EndpointId,
    grace: Duration,
) -> Result<SigningSecret, StoreError> {
    let mut tx = pool.begin().await?;
    // Two rotations at once queue here, so each sees one current secret.
    sqlx::query("SELECT 1 FROM webhook_endpoint WHERE id = $1 AND org_id = $2 FOR NO KEY UPDATE")
        .bind(id.0)
        .bind(org.0)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound)?;
    sqlx::query("DELETE FROM webhook_secret WHERE endpoint_id = $1 AND expires_at <= now()")
        .bind(id.0)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE webhook_secret SET expires_at = now() + make_interval(secs => $2)
         WHERE endpoint_id = $1 AND expires_at IS NULL",
    )
    .bind(id.0)
    .bind(grace.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    let secret = insert_secret(&mut tx, keyring, org, id).await?;
    tx.commit().await?;
    Ok(secret)
}

const SECRET_COLUMNS: &str = "id, endpoint_id, key_id, ciphertext, expires_at";
/// Valid now: current, or rotated and still in its grace window (half-open).
const SECRET_VALID: &str = "(expires_at IS NULL OR expires_at > now())";
/// The current secret first, then the rotated ones, latest expiry first.
const SECRET_ORDER: &str = "expires_at IS NOT NULL, expires_at DESC";

fn secret_from_row(r: &PgRow) -> StoredSecret {
    StoredSecret {
        id: r.get("id"),
        sealed: Sealed {
            key_id: r.get("key_id"),
            ciphertext: r.get("ciphertext"),
        },
        expires_at: r.get("expires_at"),
    }
}

/// The endpoint's secrets valid now, the current one first.
pub async fn valid_secrets(
    db: impl PgExecutor<'_>,
    org: OrgId,
    endpoint: EndpointId,
) -> Result<Vec<StoredSecret>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {SECRET_COLUMNS} FROM webhook_secret
         WHERE endpoint_id = $1 AND org_id = $2 AND {SECRET_VALID}
         ORDER BY {SECRET_ORDER}"
    ))
    .bind(endpoint.0)
    .bind(org.0)
    .fetch_all(db)
    .await?;
    Ok(rows.iter().map(secret_from_row).collect())
}

/// Seals again, under the keyring's current key, up to `limit` secrets sealed under another;
/// returns how many. Run until it returns 0, then the old key can leave `EBB_SECRETS_KEY`.
pub async fn reseal_secrets(
    pool: &PgPool,
    keyring: &Keyring,
    limit: i64,
) -> Result<u64, StoreError> {
    let mut tx = pool.begin().await?;
    let rows = sqlx::query(&format!(
        "SELECT {SECRET_COLUMNS} FROM webhook_secret WHERE key_id <> $1
         ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED"
    ))
    .bind(keyring.current())
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    let mut ids = Vec::with_capacity(rows.len());
    let mut ciphertexts = Vec::with_capacity(rows.len());
    for r in &rows {
        let s = secret_from_row(r);
        let resealed = keyring
            .reseal(&s.sealed, s.id.as_bytes())
            .map_err(|e| StoreError::Encode(format!("secret {}: {e}", s.id)))?;
        ids.push(s.id);
        ciphertexts.push(resealed.ciphertext);
    }
    let done = sqlx::query(
        "UPDATE webhook_secret s SET key_id = $3, ciphertext = n.ciphertext
         FROM UNNEST($1::uuid[], $2::bytea[]) AS n(id, ciphertext) WHERE s.id = n.id",
    )
    .bind(&ids)
    .bind(&ciphertexts)
    .bind(keyring.current())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(done.rows_affected())
}

/// Queues `event` for every enabled endpoint of `org` that wants its type; returns how many
/// deliveries were new (an endpoint that already has this message id gets none).
pub async fn enqueue(
    db: impl PgExecutor<'_>,
    org: OrgId,
    event: &Event,
) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "INSERT INTO webhook_delivery (id, org_id, endpoint_id, message_id, event_type, payload)
         SELECT gen_random_uuid(), e.org_id, e.id, $2, $3, $4 FROM webhook_endpoint e
         WHERE e.org_id = $1 AND e.disabled_at IS NULL
           AND (e.event_types IS NULL OR $3 = ANY (e.event_types))
         ORDER BY e.id
         ON CONFLICT (endpoint_id, message_id) DO NOTHING",
    )
    .bind(org.0)
    .bind(event.id.as_str())
    .bind(event.event_type.as_str())
    .bind(event.webhook_json())
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// A claim on one delivery, held until [`record`] or [`release`] (or the lease runs out).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub holder: String,
    /// This claim's own token: recording checks it.
    pub token: Uuid,
    pub until: DateTime<Utc>,
}

/// A delivery claimed for sending.
#[derive(Clone, Debug, PartialEq)]
pub struct Claimed {
    pub id: DeliveryId,
    pub org_id: OrgId,
    pub endpoint_id: EndpointId,
    /// Resolve and check it (`ssrf::resolve`) before connecting, and connect to the checked
    /// addresses only.
    pub url: String,
    pub message_id: MessageId,
    pub event_type: String,
    /// The body to sign and send, byte for byte.
    pub payload: String,
    /// Attempts started, this one included.
    pub attempts: u32,
    pub lease: Lease,
    /// The endpoint's valid secrets, the current one first: sign with every one.
    pub secrets: Vec<StoredSecret>,
}

/// Leases up to `limit` due deliveries to `holder` for `lease`: of each enabled endpoint only its
/// oldest pending delivery, and only if it is due and not leased to a live claim. Counts the
/// attempt. Picked with `FOR UPDATE SKIP LOCKED`; the `UPDATE` rechecks that each is still
/// pending, unleased and its endpoint enabled, so concurrent claimers get disjoint rows.
pub async fn claim(
    pool: &PgPool,
    limit: i64,
    lease: Duration,
    holder: &str,
) -> Result<Vec<Claimed>, StoreError> {
    let token = Uuid::now_v7();
    let rows = sqlx::query(
        "UPDATE webhook_delivery d
         SET lease_holder = $3, lease_token = $4,
             lease_until = now() + make_interval(secs => $2), attempts = d.attempts + 1
         FROM (SELECT w.id FROM webhook_delivery w
               WHERE w.id IN (
                     SELECT h.id FROM webhook_endpoint e
                     CROSS JOIN LATERAL (
                         SELECT p.id, p.next_attempt_at, p.lease_until FROM webhook_delivery p
                         WHERE p.endpoint_id = e.id AND p.state = 'pending'
                         ORDER BY p.seq LIMIT 1) h
                     WHERE e.disabled_at IS NULL AND h.next_attempt_at <= now()
                       AND (h.lease_until IS NULL OR h.lease_until <= now())
                     ORDER BY h.next_attempt_at LIMIT $1)
                 AND w.state = 'pending' AND w.next_attempt_at <= now()
                 AND (w.lease_until IS NULL OR w.lease_until <= now())
               FOR UPDATE OF w SKIP LOCKED) c,
              webhook_endpoint e
         WHERE d.id = c.id AND e.id = d.endpoint_id
           -- The claim rechecked on the row as it is now, not as the pick saw it.
           AND d.state = 'pending' AND (d.lease_until IS NULL OR d.lease_until <= now())
           AND e.disabled_at IS NULL
         RETURNING d.id, d.org_id, d.endpoint_id, e.url, d.message_id, d.event_type, d.payload,
                   d.attempts, d.lease_until, d.seq",
    )
    .bind(limit.max(0))
    .bind(lease.as_secs_f64())
    .bind(holder)
    .bind(token)
    .fetch_all(pool)
    .await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let endpoints: Vec<Uuid> = rows.iter().map(|r| r.get("endpoint_id")).collect();
    let secret_rows = sqlx::query(&format!(
        "SELECT {SECRET_COLUMNS} FROM webhook_secret
         WHERE endpoint_id = ANY($1) AND {SECRET_VALID}
         ORDER BY endpoint_id, {SECRET_ORDER}"
    ))
    .bind(&endpoints)
    .fetch_all(pool)
    .await?;
    let mut secrets: HashMap<Uuid, Vec<StoredSecret>> = HashMap::new();
    for r in &secret_rows {
        secrets
            .entry(r.get("endpoint_id"))
            .or_default()
            .push(secret_from_row(r));
    }
    let mut claimed = Vec::with_capacity(rows.len());
    let mut order = Vec::with_capacity(rows.len());
    for r in rows {
        let endpoint: Uuid = r.get("endpoint_id");
        let message_id = MessageId::new(r.get::<String, _>("message_id"))
            .map_err(|e| StoreError::Encode(e.to_string()))?;
        order.push(r.get::<i64, _>("seq"));
        claimed.push(Claimed {
            id: DeliveryId(r.get("id")),
            org_id: OrgId(r.get("org_id")),
            endpoint_id: EndpointId(endpoint),
            url: r.get("url"),
            message_id,
            event_type: r.get("event_type"),
            payload: r.get("payload"),
            attempts: u32::try_from(r.get::<i32, _>("attempts")).unwrap_or(0),
            lease: Lease {
                holder: holder.to_owned(),
                token,
                until: r.get("lease_until"),
            },
            secrets: secrets.remove(&endpoint).unwrap_or_default(),
        });
    }
    // RETURNING keeps no order; oldest first is the fairest order to send them in.
    let mut paired: Vec<(i64, Claimed)> = order.into_iter().zip(claimed).collect();
    paired.sort_by_key(|(seq, _)| *seq);
    Ok(paired.into_iter().map(|(_, c)| c).collect())
}

/// What one attempt came to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attempt {
    /// The response's status; `None` when there was no response (refused, timed out, TLS).
    pub status: Option<u16>,
    /// What went wrong without a response, or with a non-2xx one.
    pub error: Option<String>,
    pub timings: PhaseTimings,
    pub body: Option<CappedBody>,
}

impl Attempt {
    fn verdict(&self) -> Verdict {
        self.status.map_or(Verdict::Failed, verdict)
    }
}

/// What [`record`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    Delivered,
    /// Tried again at `at`.
    Retry {
        at: DateTime<Utc>,
    },
    /// The delivery failed for good and its endpoint is now disabled (410, or the schedule is
    /// exhausted): the caller announces it.
    EndpointDisabled {
        reason: DisabledReason,
    },
}

/// Records the outcome of `claimed`'s attempt and ends the claim: delivered on a 2xx; on 410
/// the delivery fails and the endpoint is disabled at once; any other failure is retried after
/// the schedule's wait, or, once the schedule is exhausted, fails and disables the endpoint.
/// [`StoreError::RaceLost`] if the claim is no longer this one's (its lease ran out and another
/// worker claimed the delivery, or the endpoint was deleted): nothing is written then.
pub async fn record(
    pool: &PgPool,
    claimed: &Claimed,
    attempt: &Attempt,
) -> Result<Recorded, StoreError> {
    let (state, retry_in, disable) = match attempt.verdict() {
        Verdict::Delivered => ("delivered", None, None),
        Verdict::Gone => ("failed", None, Some(DisabledReason::Gone)),
        Verdict::Failed => {
            match retry::next_delay(claimed.attempts, Jitter::from_uuid(claimed.id.0)) {
                Some(wait) => ("pending", Some(wait), None),
                None => ("failed", None, Some(DisabledReason::Failing)),
            }
        }
    };
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT 1 FROM webhook_endpoint WHERE id = $1 FOR NO KEY UPDATE")
        .bind(claimed.endpoint_id.0)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::RaceLost("the delivery's endpoint was deleted".to_owned()))?;
    let body = attempt.body.as_ref();
    let row = sqlx::query(
        "UPDATE webhook_delivery SET
             state = $3,
             next_attempt_at = CASE WHEN $4::float8 IS NULL THEN next_attempt_at
                                    ELSE now() + make_interval(secs => $4) END,
             delivered_at = CASE WHEN $3 = 'delivered' THEN now() END,
             lease_holder = NULL, lease_token = NULL, lease_until = NULL,
             last_attempt_at = now(), last_status = $5, last_error = $6,
             connect_ms = $7, tls_ms = $8, first_byte_ms = $9,
             response_body = $10, response_truncated = $11, response_length = $12
         WHERE id = $1 AND lease_token = $2 AND state = 'pending'
         RETURNING next_attempt_at",
    )
    .bind(claimed.id.0)
    .bind(claimed.lease.token)
    .bind(state)
    .bind(retry_in.map(|d| d.as_secs_f64()))
    .bind(attempt.status.map(|s| i16::try_from(s).unwrap_or(i16::MAX)))
    .bind(attempt.error.as_deref())
    .bind(PhaseTimings::millis(attempt.timings.connect))
    .bind(PhaseTimings::millis(attempt.timings.tls))
    .bind(PhaseTimings::millis(attempt.timings.first_byte))
    .bind(body.map(|b| b.bytes()))
    .bind(body.is_some_and(|b| b.truncated()))
    .bind(body.map(|b| i64::try_from(b.original_len()).unwrap_or(i64::MAX)))
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| StoreError::RaceLost("the delivery's lease was lost".to_owned()))?;
    if let Some(reason) = disable {
        sqlx::query(
            "UPDATE webhook_endpoint SET disabled_at = now(), disabled_reason = $2,
                    updated_at = now()
             WHERE id = $1 AND disabled_at IS NULL",
        )
        .bind(claimed.endpoint_id.0)
        .bind(reason.as_str())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(match (disable, retry_in) {
        (Some(reason), _) => Recorded::EndpointDisabled { reason },
        (None, Some(_)) => Recorded::Retry {
            at: row.get("next_attempt_at"),
        },
        (None, None) => Recorded::Delivered,
    })
}

/// Gives a claim back unsent, without spending its attempt (a worker shutting down before it
/// sent). [`StoreError::RaceLost`] if the claim is no longer this one's.
pub async fn release(pool: &PgPool, claimed: &Claimed) -> Result<(), StoreError> {
    let done = sqlx::query(
        "UPDATE webhook_delivery SET lease_holder = NULL, lease_token = NULL, lease_until = NULL,
                attempts = greatest(attempts - 1, 0)
         WHERE id = $1 AND lease_token = $2 AND state = 'pending'",
    )
    .bind(claimed.id.0)
    .bind(claimed.lease.token)
    .execute(pool)
    .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::RaceLost(
            "the delivery's lease was lost".to_owned(),
        ));
    }
    Ok(())
}

/// Where a delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryState {
    Pending,
    Delivered,
    /// Given up: 410, or the schedule exhausted.
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "pending" => Ok(DeliveryState::Pending),
            "delivered" => Ok(DeliveryState::Delivered),
            "failed" => Ok(DeliveryState::Failed),
            other => Err(StoreError::Encode(format!(
                "unknown delivery state {other:?}"
            ))),
        }
    }
}

/// A delivery as the log shows it, with its last attempt.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    pub id: DeliveryId,
    /// The log's order and its cursor.
    pub seq: i64,
    pub endpoint_id: EndpointId,
    pub message_id: String,
    pub event_type: String,
    pub payload: String,
    pub state: DeliveryState,
    pub attempts: u32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub timings: PhaseTimings,
    pub response_body: Option<Vec<u8>>,
    pub response_truncated: bool,
    pub response_length: Option<u64>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

const DELIVERY_COLUMNS: &str = "id, seq, endpoint_id, message_id, event_type, payload, state, \
     attempts, next_attempt_at, last_attempt_at, last_status, last_error, connect_ms, tls_ms, \
     first_byte_ms, response_body, response_truncated, response_length, created_at, delivered_at";

fn delivery_from_row(r: &PgRow) -> Result<Delivery, StoreError> {
    let ms = |col: &str| {
        r.get::<Option<i32>, _>(col)
            .and_then(|v| u64::try_from(v).ok())
            .map(Duration::from_millis)
    };
    Ok(Delivery {
        id: DeliveryId(r.get("id")),
        seq: r.get("seq"),
        endpoint_id: EndpointId(r.get("endpoint_id")),
        message_id: r.get("message_id"),
        event_type: r.get("event_type"),
        payload: r.get("payload"),
        state: DeliveryState::parse(r.get("state"))?,
        attempts: u32::try_from(r.get::<i32, _>("attempts")).unwrap_or(0),
        next_attempt_at: r.get("next_attempt_at"),
        last_attempt_at: r.get("last_attempt_at"),
        last_status: r
            .get::<Option<i16>, _>("last_status")
            .and_then(|s| u16::try_from(s).ok()),
        last_error: r.get("last_error"),
        timings: PhaseTimings {
            connect: ms("connect_ms"),
            tls: ms("tls_ms"),
            first_byte: ms("first_byte_ms"),
        },
        response_body: r.get("response_body"),
        response_truncated: r.get("response_truncated"),
        response_length: r
            .get::<Option<i64>, _>("response_length")
            .and_then(|l| u64::try_from(l).ok()),
        created_at: r.get("created_at"),
        delivered_at: r.get("delivered_at"),
    })
}

/// One page of an endpoint's delivery log, newest first.
#[derive(Clone, Debug, PartialEq)]
pub struct DeliveryPage {
    pub rows: Vec<Delivery>,
    /// Pass as `before` for the next page; `None` on the last.
    pub next: Option<i64>,
}

/// Up to `limit` deliveries of an endpoint of the org, newest first, older than the cursor
/// `before` (a [`DeliveryPage::next`]) if given.
pub async fn list_deliveries(
    db: impl PgExecutor<'_>,
    org: OrgId,
    endpoint: EndpointId,
    before: Option<i64>,
    limit: i64,
) -> Result<DeliveryPage, StoreError> {
    let limit = limit.max(1);
    let rows = sqlx::query(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_delivery
         WHERE endpoint_id = $1 AND org_id = $2 AND ($3::bigint IS NULL OR seq < $3)
         ORDER BY seq DESC LIMIT $4"
    ))
    .bind(endpoint.0)
    .bind(org.0)
    .bind(before)
    .bind(limit + 1)
    .fetch_all(db)
    .await?;
    let mut rows = rows
        .iter()
        .map(delivery_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let more = rows.len() as i64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let next = if more {
        rows.last().map(|d| d.seq)
    } else {
        None
    };
    Ok(DeliveryPage { rows, next })
}

/// Sends a delivered or failed delivery again, from a fresh schedule, behind the endpoint's
/// pending ones (a fresh `seq`). It goes out once its endpoint is enabled. A pending one is
/// refused with [`StoreError::RaceLost`]: it is going out already.
pub async fn redeliver(
    db: &PgPool,
    org: OrgId,
    endpoint: EndpointId,
    delivery: DeliveryId,
) -> Result<Delivery, StoreError> {
    let row = sqlx::query(&format!(
        "UPDATE webhook_delivery SET state = 'pending', seq = DEFAULT, attempts = 0,
                next_attempt_at = now(), delivered_at = NULL,
                lease_holder = NULL, lease_token = NULL, lease_until = NULL
         WHERE id = $1 AND endpoint_id = $2 AND org_id = $3
           AND state IN ('delivered', 'failed')
         RETURNING {DELIVERY_COLUMNS}"
    ))
    .bind(delivery.0)
    .bind(endpoint.0)
    .bind(org.0)
    .fetch_optional(db)
    .await?;
    if let Some(row) = row {
        return delivery_from_row(&row);
    }
    let exists: Option<String> = sqlx::query_scalar(
        "SELECT state FROM webhook_delivery WHERE id = $1 AND endpoint_id = $2 AND org_id = $3",
    )
    .bind(delivery.0)
    .bind(endpoint.0)
    .bind(org.0)
    .fetch_optional(db)
    .await?;
    match exists {
        None => Err(StoreError::NotFound),
        Some(_) => Err(StoreError::RaceLost(
            "the delivery is still pending".to_owned(),
        )),
    }
}
