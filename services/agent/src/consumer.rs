//! The command loop: the site's durable pull consumer on `CMD` (one batch in flight, so a
//! curtail and the uncurtail queued behind it reach the miners in order), one batch at a time.
//!
//! Architecture invariant: a batch is acked only after its `BatchResult` was published and
//! acked by the `RESULT` stream. A batch that cannot be trusted is terminated (never
//! redelivered) after its `invalid_command` results are published; a batch interrupted by
//! shutdown is nak'ed so the next agent runs it again at once, which is harmless because every
//! command is idempotent. A batch in which the agent deferred devices for its own shortage
//! (`budget`) publishes the other devices' results and is nak'ed with a delay: the deferred
//! devices get no result, so they spend no attempt, and run again on redelivery.

use crate::agent::Agent;
use crate::execute::{self, Executed};
use crate::instruments;
use crate::telemetry;
use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use ebb_bus::publish::{self, PublishError};
use ebb_bus::split::{self, SplitError};
use ebb_bus::{BatchResult, CommandBatch, DeviceResult, Envelope, subjects};
use futures::StreamExt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// How long one pull waits for a batch; also the longest shutdown waits for an idle pull.
const PULL_WAIT: Duration = Duration::from_secs(2);
/// How often a long batch tells JetStream it is still being worked on (well inside the consumer's
/// short ack wait, which is what makes a dead agent's batch come back within seconds).
const PROGRESS_EVERY: Duration = ebb_bus::streams::AGENT_PROGRESS_EVERY;
/// Publish attempts for a batch's results before the batch is nak'ed for later.
const RESULT_ATTEMPTS: u32 = 5;
/// Delay before a batch whose results could not be published is delivered again.
const RETRY_DELAY: Duration = Duration::from_secs(5);

/// Consumes command batches until `shutdown`; errors pulling from the consumer are logged and
/// retried with backoff (a NATS outage must not stop the agent).
///
/// Each pull asks for one batch and is never cut short: a pull request the client abandons stays
/// open on the server until it expires, and a batch delivered into it would sit out the whole
/// `ack_wait` before anyone else gets it. So shutdown waits for the current pull to end (at most
/// [`PULL_WAIT`]) and hands back whatever it brought.
pub async fn consume(
    agent: Arc<Agent>,
    consumer: PullConsumer,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let site = agent.site.clone();
    wait_for_inventory(&agent, &shutdown).await;
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let mut pulled = match consumer
            .batch()
            .max_messages(1)
            .expires(PULL_WAIT)
            .messages()
            .await
        {
            Ok(pulled) => pulled,
            Err(error) => {
                tracing::warn!(%site, %error, "pulling command batches failed, retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        while let Some(next) = pulled.next().await {
            match next {
                Ok(message) if shutdown.is_cancelled() => hand_back(&site, &message).await,
                Ok(message) => handle(&agent, message, &shutdown).await,
                Err(error) => tracing::warn!(%site, %error, "command stream error"),
            }
        }
    }
    Ok(())
}

/// Waits, for a bounded time, until the first inventory is loaded: it says which firmware each
/// miner runs, so a batch that arrives first would otherwise identify every miner it names
/// through asic-rs instead of driving registered ones directly. Without an inventory in time
/// (planner down) batches run anyway, on the addresses they carry.
async fn wait_for_inventory(agent: &Agent, shutdown: &CancellationToken) {
    let bound = tokio::time::Instant::now() + agent.config.call_timeout;
    while !agent.inventory.snapshot().loaded && tokio::time::Instant::now() < bound {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    if !agent.inventory.snapshot().loaded {
        tracing::warn!(site = %agent.site, "no inventory yet; executing batches on the addresses they carry");
    }
}

/// Gives a batch back for immediate redelivery (to this agent's successor).
async fn hand_back(site: &ebb_domain::SiteCode, message: &jetstream::Message) {
    if let Err(error) = message.double_ack_with(AckKind::Nak(None)).await {
        tracing::warn!(%site, %error, "nak failed; the batch comes back after ack_wait");
    }
}

/// Handles one delivered batch in its span, which continues the trace the batch's headers carry
/// (the event's): its results are published in the same trace.
async fn handle(agent: &Agent, message: jetstream::Message, shutdown: &CancellationToken) {
    let span = tracing::info_span!(
        "command batch",
        ebb.service = "agent",
        otel.kind = "consumer",
        site = %agent.site,
        batch_id = tracing::field::Empty,
        event_id = tracing::field::Empty,
        kind = tracing::field::Empty,
        devices = tracing::field::Empty,
    );
    ebb_obs::trace::follow_headers(&span, message.headers.as_ref());
    // Boxed: the spawned consumer's future type is otherwise too deep for the Send check.
    let run: futures::future::BoxFuture<'_, ()> = Box::pin(run_batch(agent, message, shutdown));
    run.instrument(span).await
}

/// Runs or rejects one delivered batch, publishes its results, then acks.
async fn run_batch(agent: &Agent, message: jetstream::Message, shutdown: &CancellationToken) {
    let site = &agent.site;
    let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
    let decoded = ebb_bus::decode::<CommandBatch>(&message.payload);
    let batch = match decoded {
        Ok(env) => match execute::validate(&env.body, site) {
            Ok(()) => env.body,
            Err(reason) => {
                return reject(agent, &message, Some(&env.body), &reason).await;
            }
        },
        Err(error) => {
            let reason = format!("undecodable command batch: {}", crate::error_chain(&error));
            return reject(agent, &message, None, &reason).await;
        }
    };
    let started = Instant::now();
    let span = tracing::Span::current();
    span.record("batch_id", tracing::field::display(batch.batch_id));
    if let Some(event) = batch.event_id {
        span.record("event_id", tracing::field::display(event));
    }
    span.record("kind", batch.command.label());
    span.record("devices", batch.devices.len());
    tracing::info!(
        %site,
        batch_id = %batch.batch_id,
        kind = batch.command.label(),
        devices = batch.devices.len(),
        delivered,
        "executing command batch"
    );

    // Execute, telling JetStream it is still in progress now and then, or give the batch back
    // at once if the agent is shutting down.
    let inventory = agent.inventory.snapshot();
    let run = execute::execute(&agent.miners, &batch, &inventory);
    tokio::pin!(run);
    let mut progress =
        tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
    let executed: Executed = loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                tracing::info!(%site, batch_id = %batch.batch_id, "shutting down mid-batch, handing it back");
                return hand_back(site, &message).await;
            }
            _ = progress.tick() => {
                if let Err(error) = message.ack_with(AckKind::Progress).await {
                    tracing::warn!(%site, %error, "progress ack failed");
                }
            }
            e = &mut run => break e,
        }
    };

    let deferred = executed.deferred.len();
    let result = BatchResult {
        batch_id: batch.batch_id,
        event_id: batch.event_id,
        site: site.clone(),
        command: Some(batch.command),
        results: executed.results,
        finished_at: chrono::Utc::now(),
    };
    let summary = Summary::of(&result.results);
    let published = (result.results.is_empty() && deferred > 0)
        || publish_result_with_retry(agent, result, shutdown).await;
    if !published || deferred > 0 {
        if deferred > 0 {
            tracing::warn!(%site, batch_id = %batch.batch_id, deferred, delivered, "the agent was starved: running the batch again later for its deferred devices");
        }
        if let Err(error) = message.ack_with(AckKind::Nak(Some(RETRY_DELAY))).await {
            tracing::warn!(%site, %error, "nak failed; the batch comes back after ack_wait");
        }
        return;
    }
    if let Err(error) = message.double_ack().await {
        // The results are out; a redelivery runs the batch again, harmlessly.
        tracing::warn!(%site, batch_id = %batch.batch_id, %error, "ack failed");
    }
    tracing::info!(
        %site,
        batch_id = %batch.batch_id,
        ok = summary.ok,
        already = summary.already,
        failed = summary.failed,
        took_ms = started.elapsed().as_millis() as u64,
        "command batch done"
    );
    instruments::invalid_samples(executed.samples.dropped_invalid);
    if let Err(error) = telemetry::publish(agent, executed.samples).await {
        tracing::warn!(%site, error = %crate::error_chain(&error), "publishing post-command telemetry failed");
    }
}

/// Terminates a batch that must not run, after publishing `invalid_command` for every device
/// it names. If even those results cannot be published the batch is terminated anyway: running
/// it again would only fail the same way.
async fn reject(
    agent: &Agent,
    message: &jetstream::Message,
    decoded: Option<&CommandBatch>,
    reason: &str,
) {
    let site = &agent.site;
    instruments::poison_batch();
    tracing::warn!(%site, batch_id = ?decoded.map(|b| b.batch_id), %reason, "terminating poison command batch");
    if let Some(result) = execute::poison(&message.payload, decoded, site, reason)
        && !result.results.is_empty()
        && let Err(error) = publish_result(agent, &result).await
    {
        tracing::error!(%site, error = %crate::error_chain(&error), "publishing invalid_command results failed");
    }
    if let Err(error) = message.double_ack_with(AckKind::Term).await {
        tracing::warn!(%site, %error, "terminating the batch failed");
    }
}

async fn publish_result_with_retry(
    agent: &Agent,
    result: BatchResult,
    shutdown: &CancellationToken,
) -> bool {
    let site = &agent.site;
    let messages = match encode_result(&result) {
        Ok(m) => m,
        Err(error) => {
            tracing::error!(%site, batch_id = %result.batch_id, %error, "encoding results failed");
            return false;
        }
    };
    let mut delay = Duration::from_millis(200);
    for attempt in 1..=RESULT_ATTEMPTS {
        match send_all(agent, &messages).await {
            Ok(()) => return true,
            Err(error) => {
                tracing::warn!(%site, batch_id = %result.batch_id, attempt, error = %crate::error_chain(&error), "publishing results failed")
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(delay) => {}
        }
        delay *= 2;
    }
    false
}

async fn publish_result(agent: &Agent, result: &BatchResult) -> Result<(), ResultError> {
    send_all(agent, &encode_result(result)?).await
}

/// Encodes a batch's results as bounded messages that share the batch id, each with its own
/// `Nats-Msg-Id`, fixed here so that a retried publish is deduplicated while a redelivered
/// batch's results (encoded afresh) are not mistaken for the first run's.
fn encode_result(result: &BatchResult) -> Result<Vec<(String, Vec<u8>)>, ResultError> {
    let wrap = |results: Vec<DeviceResult>| {
        Envelope::new(
            None,
            BatchResult {
                results,
                ..result.clone()
            },
        )
    };
    let messages = if result.results.is_empty() {
        vec![ebb_bus::encode(&wrap(Vec::new())).map_err(SplitError::from)?]
    } else {
        split::split_encode(
            result.results.clone(),
            split::MAX_BATCH_DEVICES,
            split::MAX_BATCH_BYTES,
            wrap,
        )?
    };
    Ok(messages
        .into_iter()
        .map(|m| (uuid::Uuid::now_v7().to_string(), m))
        .collect())
}

/// Publishes every message on `ebb.result.<site>`, all sent before any ack is awaited.
async fn send_all(agent: &Agent, messages: &[(String, Vec<u8>)]) -> Result<(), ResultError> {
    let subject = subjects::result(&agent.site);
    let mut acks = Vec::with_capacity(messages.len());
    for (id, payload) in messages {
        acks.push(publish::send(&agent.js, subject.clone(), id, payload.clone()).await?);
    }
    for (subject, ack) in acks {
        ack.await
            .map_err(|source| PublishError::Ack { subject, source })?;
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
enum ResultError {
    #[error(transparent)]
    Split(#[from] SplitError),
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// Counts for the batch-done log line.
struct Summary {
    ok: usize,
    already: usize,
    failed: usize,
}

impl Summary {
    fn of(results: &[DeviceResult]) -> Self {
        let mut s = Summary {
            ok: 0,
            already: 0,
            failed: 0,
        };
        for r in results {
            match r.outcome {
                ebb_domain::Outcome::Ok => s.ok += 1,
                ebb_domain::Outcome::AlreadyInState => s.already += 1,
                _ => s.failed += 1,
            }
        }
        s
    }
}
