//! What wakes the leader: command results (handed to the pass loop, acked after they are applied)
//! and telemetry (written to `device_state` here, one statement per batch, then acked).

use async_nats::jetstream::{self, AckKind};
use ebb_bus::{BatchResult, TelemetryBatch, streams};
use ebb_domain::{SiteCode, SiteId};
use ebb_store::{PgPool, fleet};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

/// Results waiting for the pass loop. When full, intake stops pulling and JetStream holds the rest.
pub const RESULT_QUEUE: usize = 256;

/// A decoded result and the message to ack once it is applied.
pub struct Incoming {
    pub result: BatchResult,
    pub message: jetstream::Message,
}

pub async fn results(
    js: jetstream::Context,
    tx: mpsc::Sender<Incoming>,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    let consumer = loop {
        match streams::ensure_consumer(&js, streams::RESULT, streams::reconciler_results()).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!(error = %e, "creating the results consumer");
                tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(Duration::from_secs(1)) => {} }
            }
        }
    };
    let mut messages = match consumer.messages().await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "subscribing to results");
            return;
        }
    };
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return,
            m = messages.next() => m,
        };
        let Some(next) = next else { return };
        let message = match next {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "results stream error");
                continue;
            }
        };
        match ebb_bus::decode::<BatchResult>(&message.payload) {
            Ok(env) => {
                if tx
                    .send(Incoming {
                        result: env.body,
                        message,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
                wake.notify_one();
            }
            Err(e) => {
                // A result nobody can read will never become readable: drop it, loudly.
                tracing::error!(error = %e, subject = %message.subject, "undecodable result, terminating it");
                message.ack_with(AckKind::Term).await.ok();
            }
        }
    }
}

pub async fn telemetry(
    js: jetstream::Context,
    pool: PgPool,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    let consumer = loop {
        match streams::ensure_consumer(&js, streams::TELEMETRY, streams::reconciler_telemetry())
            .await
        {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!(error = %e, "creating the telemetry consumer");
                tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(Duration::from_secs(1)) => {} }
            }
        }
    };
    let mut messages = match consumer.messages().await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "subscribing to telemetry");
            return;
        }
    };
    let mut sites: HashMap<SiteCode, SiteId> = HashMap::new();
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return,
            m = messages.next() => m,
        };
        let Some(next) = next else { return };
        let Ok(message) = next else { continue };
        let batch = match ebb_bus::decode::<TelemetryBatch>(&message.payload) {
            Ok(env) => env.body,
            Err(e) => {
                tracing::error!(error = %e, subject = %message.subject, "undecodable telemetry, terminating it");
                message.ack_with(AckKind::Term).await.ok();
                continue;
            }
        };
        // The subject names the site the agent may publish for (NATS permissions enforce it);
        // a body that claims another site is not trusted.
        let subject_site =
            ebb_bus::subjects::site_of(ebb_bus::subjects::TELEMETRY_PREFIX, &message.subject);
        if subject_site != Some(batch.site.as_str()) {
            tracing::warn!(subject = %message.subject, site = %batch.site, "telemetry site does not match its subject");
            message.ack_with(AckKind::Term).await.ok();
            continue;
        }
        let site_id = match sites.get(&batch.site) {
            Some(id) => Some(*id),
            None => match fleet::site_by_code(&pool, &batch.site).await {
                Ok(Some(s)) => {
                    sites.insert(batch.site.clone(), s.id);
                    Some(s.id)
                }
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!(error = ?e, "looking up a telemetry site");
                    message
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                        .await
                        .ok();
                    continue;
                }
            },
        };
        let Some(site_id) = site_id else {
            tracing::debug!(site = %batch.site, "telemetry for an unknown site");
            message.ack().await.ok();
            continue;
        };
        match fleet::ingest_telemetry(&pool, site_id, &batch.samples).await {
            Ok(_) => {
                metrics::counter!(ebb_obs::names::RECONCILER_TELEMETRY_SAMPLES)
                    .increment(batch.samples.len() as u64);
                message.ack().await.ok();
                wake.notify_one();
            }
            Err(e) => {
                tracing::warn!(error = ?e, "writing telemetry");
                message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await
                    .ok();
            }
        }
    }
}
