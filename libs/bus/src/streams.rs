//! JetStream streams and consumers (DESIGN §3), created idempotently at start-up. Only features
//! nats-server 2.9 has: one filter subject per consumer, no per-message TTL, no KV creation.

use async_nats::jetstream::{self, consumer, stream};
use ebb_domain::SiteCode;
use std::time::Duration;

pub const CMD: &str = "CMD";
pub const RESULT: &str = "RESULT";
pub const TELEMETRY: &str = "TELEMETRY";
pub const EVENT: &str = "EVENT";

/// Inside this window a republished batch with the same `Nats-Msg-Id` is dropped as a duplicate.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// The stream definitions. Command batches are a work queue: each is consumed once by its site's
/// agent and removed when acked.
pub fn configs() -> Vec<stream::Config> {
    let base = |name: &str, subject: &str, retention, max_age| stream::Config {
        name: name.into(),
        subjects: vec![subject.into()],
        retention,
        max_age,
        storage: stream::StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        discard: stream::DiscardPolicy::Old,
        ..Default::default()
    };
    vec![
        stream::Config {
            // A backlog this large means no agent is consuming: refuse new batches rather than
            // silently growing without bound.
            max_messages: 1_000_000,
            discard: stream::DiscardPolicy::New,
            ..base(
                CMD,
                "ebb.cmd.>",
                stream::RetentionPolicy::WorkQueue,
                Duration::from_secs(24 * 3600),
            )
        },
        base(
            RESULT,
            "ebb.result.>",
            stream::RetentionPolicy::Limits,
            Duration::from_secs(24 * 3600),
        ),
        stream::Config {
            max_bytes: 8 * 1024 * 1024 * 1024,
            ..base(
                TELEMETRY,
                "ebb.telemetry.>",
                stream::RetentionPolicy::Limits,
                Duration::from_secs(3600),
            )
        },
        base(
            EVENT,
            "ebb.event.>",
            stream::RetentionPolicy::Limits,
            Duration::from_secs(30 * 24 * 3600),
        ),
    ]
}

/// Creates every stream if missing; an existing stream with the same config is left as is.
/// (Tests and tools with the operator's rights; a service creates only its own: [`ensure`].)
pub async fn ensure_streams(js: &jetstream::Context) -> Result<(), async_nats::Error> {
    ensure(js, &[CMD, RESULT, TELEMETRY, EVENT]).await
}

/// Creates the streams named `names` if missing (each service owns some: the reconciler the
/// command, result and telemetry streams, the worker the event feed; NATS permissions let it
/// create no other).
pub async fn ensure(js: &jetstream::Context, names: &[&str]) -> Result<(), async_nats::Error> {
    for cfg in configs()
        .into_iter()
        .filter(|c| names.contains(&c.name.as_str()))
    {
        js.get_or_create_stream(cfg).await?;
    }
    Ok(())
}

/// How long a batch may go without word from its agent before JetStream redelivers it. A live
/// agent sends an in-progress ack every [`AGENT_PROGRESS_EVERY`] however long the batch takes,
/// so this bounds only what an agent's death costs: its batch goes to the restarted agent within
/// seconds (issue 11 measured 300 s here as an event stuck `pending` past a grid deadline).
/// Executing a batch twice is harmless: the agent reads each miner's state first.
pub const AGENT_ACK_WAIT: Duration = Duration::from_secs(15);

/// How often an agent tells JetStream it is still working on a batch: three times per
/// [`AGENT_ACK_WAIT`], so one lost progress ack does not cost a redelivery.
pub const AGENT_PROGRESS_EVERY: Duration = Duration::from_secs(5);
const _: () = assert!(AGENT_PROGRESS_EVERY.as_secs() * 3 <= AGENT_ACK_WAIT.as_secs());

/// The durable consumer of one site's agent: one batch in flight at a time, so a curtail and the
/// uncurtail queued after it reach the miners in order, even across a redelivery.
pub fn agent_consumer(site: &SiteCode) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(format!("agent-{site}")),
        filter_subject: crate::subjects::cmd(site),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: AGENT_ACK_WAIT,
        max_ack_pending: 1,
        max_deliver: 10,
        ..Default::default()
    }
}

/// The reconciler's consumer of every site's results.
pub fn reconciler_results() -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some("reconciler-results".into()),
        filter_subject: "ebb.result.>".into(),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(60),
        max_ack_pending: 1_000,
        // A result the database keeps refusing is retried for a while, not forever.
        max_deliver: 100,
        ..Default::default()
    }
}

/// The reconciler's consumer of telemetry. New messages only: telemetry is latest-wins, so
/// replaying an hour of it after a first start would only repeat what device_state will get anyway.
pub fn reconciler_telemetry() -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some("reconciler-telemetry".into()),
        filter_subject: "ebb.telemetry.>".into(),
        deliver_policy: consumer::DeliverPolicy::New,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(60),
        max_ack_pending: 1_000,
        // Telemetry is latest-wins: a batch that cannot be written is soon superseded.
        max_deliver: 5,
        ..Default::default()
    }
}

/// Gets or creates a durable pull consumer on `stream`. A consumer created by an older release
/// with other delivery settings (ack wait, deliveries, batches in flight) is updated to `cfg`'s,
/// so an upgrade changes them without anyone deleting the consumer (and its position).
pub async fn ensure_consumer(
    js: &jetstream::Context,
    stream: &str,
    cfg: consumer::pull::Config,
) -> Result<consumer::PullConsumer, async_nats::Error> {
    let name = cfg.durable_name.clone().unwrap_or_default();
    let s = js.get_stream(stream).await?;
    let mut existing: consumer::PullConsumer = s.get_or_create_consumer(&name, cfg.clone()).await?;
    let now = existing.info().await?.config.clone();
    if delivery_differs(&now, &cfg) {
        tracing::info!(
            stream,
            consumer = %name,
            ack_wait_s = cfg.ack_wait.as_secs(),
            was_s = now.ack_wait.as_secs(),
            "updating the consumer's delivery settings"
        );
        return Ok(s.create_consumer(cfg).await?);
    }
    Ok(existing)
}

/// Whether an existing consumer's delivery settings differ from those wanted.
fn delivery_differs(now: &consumer::Config, wanted: &consumer::pull::Config) -> bool {
    now.ack_wait != wanted.ack_wait
        || now.max_deliver != wanted.max_deliver
        || now.max_ack_pending != wanted.max_ack_pending
}
