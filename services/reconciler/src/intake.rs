//! What wakes the leader: command results (handed to the pass loop, acked after they are applied)
//! and telemetry (written to `device_state` here, one statement per batch, then acked; the pass
//! re-reads only the targets of the devices it named).

use async_nats::jetstream::{self, AckKind};
use ebb_bus::{BatchResult, TelemetryBatch, streams};
use ebb_domain::{DeviceId, SiteCode, SiteId};
use ebb_store::{PgPool, fleet};
use futures::StreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

/// Results waiting for the pass loop. When full, intake stops pulling and JetStream holds the rest.
pub const RESULT_QUEUE: usize = 256;

/// A decoded result, the site whose subject it came on, and the message to ack once it is
/// applied.
pub struct Incoming {
    pub result: BatchResult,
    pub site: SiteCode,
    pub message: jetstream::Message,
}

/// Pulls messages from a durable consumer for as long as `stop` is not cancelled, re-creating
/// the consumer and resubscribing after any failure, so an intake never dies silently.
async fn pull_forever<F, Fut>(
    js: &jetstream::Context,
    stream: &'static str,
    cfg: impl Fn() -> async_nats::jetstream::consumer::pull::Config,
    stop: &CancellationToken,
    mut handle: F,
) where
    F: FnMut(jetstream::Message) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    while !stop.is_cancelled() {
        let subscribed = async {
            let consumer = streams::ensure_consumer(js, stream, cfg()).await?;
            Ok::<_, async_nats::Error>(consumer.messages().await?)
        }
        .await;
        match subscribed {
            Ok(mut messages) => loop {
                let next = tokio::select! {
                    _ = stop.cancelled() => return,
                    m = messages.next() => m,
                };
                match next {
                    Some(Ok(m)) => {
                        if !handle(m).await {
                            return;
                        }
                    }
                    Some(Err(e)) => tracing::warn!(stream, error = %e, "intake stream error"),
                    None => {
                        tracing::warn!(stream, "intake stream ended; resubscribing");
                        break;
                    }
                }
            },
            Err(e) => tracing::warn!(stream, error = %e, "subscribing to intake"),
        }
        tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(Duration::from_secs(1)) => {} }
    }
}

pub async fn results(
    js: jetstream::Context,
    tx: mpsc::Sender<Incoming>,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    let stop2 = stop.clone();
    pull_forever(&js, streams::RESULT, streams::reconciler_results, &stop, |message| {
        let (tx, wake, stop) = (tx.clone(), wake.clone(), stop2.clone());
        async move {
            match ebb_bus::decode::<BatchResult>(&message.payload) {
                Ok(env) => {
                    // The subject names the site the agent may publish for (NATS permissions
                    // enforce it); a body that claims another site is not trusted.
                    let subject_site = ebb_bus::subjects::site_of(
                        ebb_bus::subjects::RESULT_PREFIX,
                        &message.subject,
                    );
                    if subject_site != Some(env.body.site.as_str()) {
                        tracing::warn!(subject = %message.subject, site = %env.body.site, batch_id = %env.body.batch_id, "result site does not match its subject, dropping it");
                        metrics::counter!(ebb_obs::names::RECONCILER_RESULTS_REFUSED, "reason" => "site_mismatch").increment(1);
                        message.ack_with(AckKind::Term).await.ok();
                        return true;
                    }
                    let site = env.body.site.clone();
                    let sent = tokio::select! {
                        _ = stop.cancelled() => return false,
                        r = tx.send(Incoming { result: env.body, site, message }) => r,
                    };
                    if sent.is_err() {
                        return false;
                    }
                    wake.notify_one();
                }
                Err(e) => {
                    // A result nobody can read will never become readable: drop it, loudly.
                    tracing::error!(error = %e, subject = %message.subject, "undecodable result, terminating it");
                    message.ack_with(AckKind::Term).await.ok();
                }
            }
            true
        }
    })
    .await;
}

/// Wakes the pass loop whenever an event changes outside it (a Start or a Stop in the planner,
/// announced on [`ebb_store::events::EVENT_CHANNEL`] when its transaction commits), until
/// `stop`. A lost listening connection is opened again; what changed meanwhile is picked up by
/// the next pass, woken here once the listener is back.
pub async fn event_changes(pool: PgPool, wake: Arc<Notify>, stop: CancellationToken) {
    use sqlx::postgres::PgListener;
    let channel = ebb_store::events::EVENT_CHANNEL;
    while !stop.is_cancelled() {
        let listening = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(channel).await?;
            // Anything announced while no one listened is read by this pass.
            wake.notify_one();
            loop {
                // `try_recv` returns `None` when the connection was lost: listen afresh.
                match listener.try_recv().await? {
                    Some(_) => wake.notify_one(),
                    None => return Ok::<(), sqlx::Error>(()),
                }
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            r = listening => {
                if let Err(error) = r {
                    tracing::warn!(%error, "listening for event changes failed; retrying");
                }
            }
        }
        tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(Duration::from_secs(1)) => {} }
    }
}

/// Ingests telemetry until `stop`: one statement per batch, then the batch's devices go into
/// `touched`, so the next pass re-reads only those targets, and the pass loop is woken.
pub async fn telemetry(
    js: jetstream::Context,
    pool: PgPool,
    touched: Arc<std::sync::Mutex<HashSet<DeviceId>>>,
    liveness: Arc<std::sync::Mutex<crate::liveness::Liveness>>,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    let sites: Arc<tokio::sync::Mutex<HashMap<SiteCode, SiteId>>> = Arc::default();
    pull_forever(
        &js,
        streams::TELEMETRY,
        streams::reconciler_telemetry,
        &stop,
        |message| {
            let (pool, wake, sites, touched, liveness) = (
                pool.clone(),
                wake.clone(),
                sites.clone(),
                touched.clone(),
                liveness.clone(),
            );
            async move {
                if let Some((site, devices)) = ingest(message, &pool, &sites).await {
                    liveness
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .heard(&site, std::time::Instant::now());
                    touched
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .extend(devices);
                    wake.notify_one();
                }
                true
            }
        },
    )
    .await;
}

/// Writes one telemetry message into `device_state`; returns its site and the devices it named
/// once it was written (and acked).
async fn ingest(
    message: jetstream::Message,
    pool: &PgPool,
    sites: &tokio::sync::Mutex<HashMap<SiteCode, SiteId>>,
) -> Option<(SiteCode, Vec<DeviceId>)> {
    let batch = match ebb_bus::decode::<TelemetryBatch>(&message.payload) {
        Ok(env) => env.body,
        Err(e) => {
            tracing::error!(error = %e, subject = %message.subject, "undecodable telemetry, terminating it");
            message.ack_with(AckKind::Term).await.ok();
            return None;
        }
    };
    // The subject names the site the agent may publish for (NATS permissions enforce it); a
    // body that claims another site is not trusted.
    let subject_site =
        ebb_bus::subjects::site_of(ebb_bus::subjects::TELEMETRY_PREFIX, &message.subject);
    if subject_site != Some(batch.site.as_str()) {
        tracing::warn!(subject = %message.subject, site = %batch.site, "telemetry site does not match its subject");
        message.ack_with(AckKind::Term).await.ok();
        return None;
    }
    let cached = sites.lock().await.get(&batch.site).copied();
    let site_id = match cached {
        Some(id) => id,
        None => match fleet::site_by_code(pool, &batch.site).await {
            Ok(Some(s)) => {
                sites.lock().await.insert(batch.site.clone(), s.id);
                s.id
            }
            Ok(None) => {
                tracing::debug!(site = %batch.site, "telemetry for an unknown site");
                message.ack().await.ok();
                return None;
            }
            Err(e) => {
                tracing::warn!(error = ?e, "looking up a telemetry site");
                message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await
                    .ok();
                return None;
            }
        },
    };
    let rows: Vec<fleet::TelemetryRow> = batch
        .samples
        .iter()
        .map(|s| fleet::TelemetryRow {
            device_id: s.device_id,
            reachable: s.reachable,
            power_w: s.power_w,
            hashrate_ths: s.hashrate_ths,
            sampled_at_ms: s.sampled_at_ms,
        })
        .collect();
    match fleet::ingest_telemetry(pool, site_id, &rows).await {
        Ok(_) => {
            metrics::counter!(ebb_obs::names::RECONCILER_TELEMETRY_SAMPLES)
                .increment(batch.samples.len() as u64);
            message.ack().await.ok();
            Some((
                batch.site.clone(),
                batch.samples.iter().map(|s| s.device_id).collect(),
            ))
        }
        Err(e) => {
            tracing::warn!(error = ?e, "writing telemetry");
            message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await
                .ok();
            None
        }
    }
}
