//! The `deliver` job: sends webhook deliveries (issue 8; ADR 0009, 0010).
//!
//! A round claims due deliveries ([`ebb_store::webhooks::claim`]: `FOR UPDATE SKIP LOCKED`, a
//! lease, only each endpoint's oldest pending delivery), never more than there are free sending
//! slots, so a claimed delivery goes out at once instead of waiting while its lease runs. Each
//! claimed delivery is one task of this job:
//!
//! 1. its endpoint's valid secrets are opened with the keyring (`EBB_SECRETS_KEY`) and the stored
//!    payload is signed, byte for byte, with every one of them (Standard Webhooks headers, the
//!    timestamp of this attempt);
//! 2. [`send::Sender::post`] resolves the URL through the SSRF guard, connects only to the
//!    addresses it checked, never follows a redirect, and times each phase that completed;
//! 3. [`ebb_store::webhooks::record`] writes the outcome against the claim's token: 2xx
//!    delivered; 410 fails it and disables the endpoint at once; anything else (3xx, 4xx, 5xx, a
//!    refused or timed-out connection, a refused address) is a failed attempt, retried after the
//!    schedule's wait ([`ebb_webhooks::retry`]), and once the schedule is exhausted the store
//!    disables the endpoint. A disabled endpoint is logged at WARN with its id and reason.
//!
//! Order and isolation: an endpoint has at most one delivery in flight and gets them in order
//! (the claim's rule); endpoints are served concurrently, up to `webhook_concurrency` requests,
//! each bounded by its timeouts, so a slow endpoint holds one slot for at most
//! `webhook_timeout_s` and delays nobody else.
//!
//! Cancel and failure: on shutdown the job stops claiming and lets requests in flight finish for
//! up to [`DRAIN`] (`DeliverSettings::drain`); those still running are dropped and their claims released (the attempt not
//! counted), so another worker sends them at once. A worker that dies mid-delivery records
//! nothing: its lease runs out and another worker sends the delivery again with the same
//! `webhook-id` (receivers deduplicate on it). A failed claim or record is logged and the loop
//! goes on; nothing here ends the worker. Without a keyring the job logs that webhooks are off
//! and waits for shutdown.

pub mod send;

use crate::WorkerConfig;
use bytes::Bytes;
use chrono::Utc;
use ebb_store::webhooks::{self, Attempt, Claimed, Recorded};
use ebb_store::{PgPool, StoreError};
use ebb_webhooks::ssrf::Policy;
use ebb_webhooks::{Keyring, SigningSecret, signing};
use futures::future::BoxFuture;
use send::{Sender, Timeouts};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::{AbortHandle, Id, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// How long requests in flight may finish after shutdown before they are dropped.
pub const DRAIN: Duration = Duration::from_secs(10);
/// The longest a name's resolution may take (less if the whole attempt is shorter).
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// How the job claims; from the worker's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliverSettings {
    /// Deliveries claimed per round at most.
    pub batch: usize,
    /// Requests in flight at most.
    pub concurrency: usize,
    /// How long a claim is this worker's alone; longer than a whole attempt.
    pub lease: Duration,
    /// The wait after a round that found less than it could take.
    pub poll: Duration,
    /// This worker's name on its claims.
    pub holder: String,
    /// How long requests in flight may finish after shutdown.
    pub drain: Duration,
}

impl From<&WorkerConfig> for DeliverSettings {
    fn from(c: &WorkerConfig) -> Self {
        Self {
            batch: c.webhook_batch as usize,
            concurrency: c.webhook_concurrency as usize,
            lease: Duration::from_secs(c.webhook_lease_s),
            poll: Duration::from_millis(c.webhook_poll_ms),
            holder: format!("worker-{}", uuid::Uuid::now_v7()),
            drain: DRAIN,
        }
    }
}

/// The SSRF policy and the timeouts of the worker's settings.
pub fn sender_settings(c: &WorkerConfig) -> (Policy, Timeouts) {
    let total = Duration::from_secs(c.webhook_timeout_s);
    let policy = Policy {
        loopback: c.webhook_loopback.into(),
        private: c.webhook_private.into(),
        lookup_timeout: LOOKUP_TIMEOUT.min(total),
    };
    let timeouts = Timeouts {
        connect: Duration::from_millis(c.webhook_connect_timeout_ms),
        tls: Duration::from_millis(c.webhook_tls_timeout_ms),
        total,
    };
    (policy, timeouts)
}

/// The job entry: delivers until shutdown, or idles if webhooks are off.
pub fn job(
    config: &WorkerConfig,
    ctx: ebb_runtime::Context,
) -> BoxFuture<'static, anyhow::Result<()>> {
    let config = config.clone();
    Box::pin(async move {
        use anyhow::Context as _;
        let keyring = config.keyring().context("reading secrets_key")?;
        let Some(keyring) = keyring else {
            tracing::info!(
                env = ebb_webhooks::sealed::ENV,
                "webhooks are off: no secrets key is configured, so no delivery is sent"
            );
            ctx.shutdown.cancelled().await;
            return Ok(());
        };
        let roots = if config.webhook_ca_file.as_os_str().is_empty() {
            Vec::new()
        } else {
            Sender::read_roots(&config.webhook_ca_file)?
        };
        let (policy, timeouts) = sender_settings(&config);
        let sender = Sender::new(policy, timeouts, roots).context("building the webhook sender")?;
        let settings = DeliverSettings::from(&config);
        tracing::info!(
            holder = %settings.holder,
            concurrency = settings.concurrency,
            loopback = ?policy.loopback,
            private = ?policy.private,
            "webhook delivery running"
        );
        run(
            ctx.pool()?.clone(),
            Arc::new(keyring),
            sender,
            settings,
            ctx.shutdown.clone(),
        )
        .await;
        Ok(())
    })
}

/// Delivers until `shutdown` (see the module docs).
pub async fn run(
    pool: PgPool,
    keyring: Arc<Keyring>,
    sender: Sender,
    settings: DeliverSettings,
    shutdown: CancellationToken,
) {
    let mut in_flight: JoinSet<()> = JoinSet::new();
    // What each task holds, so that a task dropped at shutdown can give its claim back.
    let mut held: HashMap<Id, (AbortHandle, Claimed)> = HashMap::new();
    let mut next_claim = Instant::now();
    loop {
        let free = settings.concurrency.saturating_sub(in_flight.len());
        if free > 0 && Instant::now() >= next_claim {
            let limit = settings.batch.min(free);
            match webhooks::claim(&pool, limit as i64, settings.lease, &settings.holder).await {
                Ok(claimed) => {
                    // A full round may have left more behind: claim again as soon as a slot is
                    // free. Otherwise nothing more is due now; look again after the poll.
                    next_claim = if claimed.len() >= limit {
                        Instant::now()
                    } else {
                        Instant::now() + settings.poll
                    };
                    for c in claimed {
                        let task =
                            deliver(pool.clone(), keyring.clone(), sender.clone(), c.clone());
                        let handle = in_flight.spawn(task);
                        held.insert(handle.id(), (handle, c));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = ?e, "claiming webhook deliveries failed");
                    next_claim = Instant::now() + settings.poll.max(Duration::from_secs(1));
                }
            }
        }
        let can_claim = settings.concurrency > in_flight.len();
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(done) = in_flight.join_next_with_id(), if !in_flight.is_empty() => {
                let id = match &done {
                    Ok((id, ())) => *id,
                    Err(e) => e.id(),
                };
                if let Some((_, c)) = held.remove(&id)
                    && let Err(e) = done
                {
                    // The lease runs out and another attempt follows.
                    tracing::error!(delivery_id = %c.id, endpoint_id = %c.endpoint_id, error = %e, "a webhook delivery task failed");
                }
            }
            () = tokio::time::sleep_until(next_claim), if can_claim => {}
        }
    }
    drain(&pool, settings.drain, in_flight, held).await;
}

/// Lets the tasks in flight finish for up to `grace`, then drops the rest and releases their
/// claims.
async fn drain(
    pool: &PgPool,
    grace: Duration,
    mut in_flight: JoinSet<()>,
    mut held: HashMap<Id, (AbortHandle, Claimed)>,
) {
    let finished = tokio::time::timeout(grace, async {
        while let Some(done) = in_flight.join_next_with_id().await {
            let id = match &done {
                Ok((id, ())) => *id,
                Err(e) => e.id(),
            };
            held.remove(&id);
        }
    })
    .await;
    if finished.is_ok() {
        return;
    }
    for (handle, _) in held.values() {
        handle.abort();
    }
    // Wait for the aborts, so no task records after its claim is released.
    while in_flight.join_next().await.is_some() {}
    for (_, claimed) in held.values() {
        match webhooks::release(pool, claimed).await {
            Ok(()) => {
                tracing::info!(delivery_id = %claimed.id, "webhook delivery given back at shutdown")
            }
            // Recorded just before the abort, or its lease ran out: nothing to give back.
            Err(e) => {
                tracing::info!(delivery_id = %claimed.id, error = %e, "webhook delivery not given back")
            }
        }
    }
}

/// One delivery's whole life in this worker: sign, send, record, log.
async fn deliver(pool: PgPool, keyring: Arc<Keyring>, sender: Sender, claimed: Claimed) {
    let span = tracing::info_span!(
        "deliver",
        delivery_id = %claimed.id,
        endpoint_id = %claimed.endpoint_id,
        attempt = claimed.attempts,
        event_type = %claimed.event_type,
    );
    async {
        match deliver_once(&pool, &keyring, &sender, &claimed).await {
            Ok(_) => {}
            Err(StoreError::RaceLost(why)) => tracing::warn!(
                why,
                "webhook outcome not recorded: the claim is no longer this worker's"
            ),
            // The lease runs out and the delivery is sent again.
            Err(e) => tracing::warn!(error = ?e, "recording a webhook outcome failed"),
        }
    }
    .instrument(span)
    .await;
}

/// Signs and sends `claimed`, records the outcome and logs it; returns what the store recorded.
pub async fn deliver_once(
    pool: &PgPool,
    keyring: &Keyring,
    sender: &Sender,
    claimed: &Claimed,
) -> Result<Recorded, StoreError> {
    let attempt = attempt(keyring, sender, claimed).await;
    if let Some(body) = attempt.body.as_ref().filter(|b| b.truncated()) {
        tracing::warn!(
            delivery_id = %claimed.id,
            endpoint_id = %claimed.endpoint_id,
            status = attempt.status,
            kept = body.bytes().len(),
            original_len = body.original_len(),
            "webhook response body truncated"
        );
    }
    let recorded = webhooks::record(pool, claimed, &attempt).await?;
    let status = attempt.status;
    let error = attempt.error.as_deref();
    match recorded {
        Recorded::Delivered => tracing::debug!(status, "webhook delivered"),
        Recorded::Retry { at } => tracing::info!(
            status,
            error,
            retry_at = %at,
            "webhook attempt failed; it is retried"
        ),
        Recorded::EndpointDisabled { reason } => tracing::warn!(
            delivery_id = %claimed.id,
            endpoint_id = %claimed.endpoint_id,
            org_id = %claimed.org_id.0,
            reason = reason.as_str(),
            status,
            error,
            attempts = claimed.attempts,
            "webhook endpoint disabled"
        ),
    }
    Ok(recorded)
}

/// The attempt: signed with every secret that opens, then sent. A delivery with no secret that
/// opens is not sent unsigned: it is a failed attempt saying why.
async fn attempt(keyring: &Keyring, sender: &Sender, claimed: &Claimed) -> Attempt {
    let mut secrets: Vec<SigningSecret> = Vec::with_capacity(claimed.secrets.len());
    for stored in &claimed.secrets {
        match stored.open(keyring) {
            Ok(s) => secrets.push(s),
            // A deployment fault (a key dropped from EBB_SECRETS_KEY before re-sealing): the
            // other secrets still sign, but a receiver on this one will refuse.
            Err(e) => tracing::error!(
                secret_id = %stored.id,
                key_id = %stored.sealed.key_id,
                error = %e,
                "a webhook secret does not open"
            ),
        }
    }
    let body = Bytes::from(claimed.payload.clone());
    let timestamp = Utc::now().timestamp();
    match signing::sign(&claimed.message_id, timestamp, &body, &secrets) {
        Ok(signed) => sender.post(&claimed.url, &signed, body).await,
        Err(e) => Attempt {
            error: Some(format!(
                "not sent: {e} (the endpoint has {} secret(s), none opens with {})",
                claimed.secrets.len(),
                ebb_webhooks::sealed::ENV
            )),
            ..Attempt::default()
        },
    }
}
