//! The outbox relay: rows committed in a transaction are published after commit on the event
//! feed with Nats-Msg-Id = row id, exactly once per row; a rolled-back write publishes nothing.
//! A row that keeps failing is parked and holds up nothing; an unreachable stream costs the rows
//! nothing; a relay that died after publishing leaves a republish the stream drops; published
//! rows are pruned after the retention, and nothing else is.

use async_nats::jetstream;
use chrono::Utc;
use ebb_domain::{EventId, EventState, OrgId};
use ebb_store::outbox::{self, Notice};
use ebb_worker::relay::{self, RelaySettings};
use futures::StreamExt;
use std::time::Duration;
use uuid::Uuid;

fn settings() -> RelaySettings {
    RelaySettings {
        batch: 100,
        lease: Duration::from_secs(30),
        max_attempts: 2,
        retry: Duration::from_millis(1),
        retention: Duration::from_secs(3600),
    }
}

fn notice(org: OrgId, state: EventState) -> Notice {
    Notice::EventTransition {
        event_id: EventId::new(),
        org_id: org,
        state,
        from: Some(EventState::Pending),
        reason: None,
        at: Utc::now(),
        data: None,
    }
}

async fn enqueue(pool: &ebb_store::PgPool, org: OrgId) -> Uuid {
    let mut tx = pool.begin().await.unwrap();
    let id = outbox::enqueue(&mut tx, Some(org), &notice(org, EventState::Active))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    id
}

/// (attempts, parked, last_error) of a row.
async fn row_state(pool: &ebb_store::PgPool, id: Uuid) -> (i32, bool, Option<String>) {
    sqlx::query_as("SELECT attempts, parked_at IS NOT NULL, last_error FROM outbox WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The Nats-Msg-Id of every message on the event stream.
async fn published_ids(js: &jetstream::Context) -> Vec<String> {
    let stream = js.get_stream(ebb_bus::streams::EVENT).await.unwrap();
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config::default())
        .await
        .unwrap();
    let mut msgs = consumer
        .fetch()
        .max_messages(100)
        .expires(Duration::from_millis(500))
        .messages()
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Some(Ok(m)) = msgs.next().await {
        got.push(
            m.headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .map(|v| v.to_string())
                .unwrap_or_default(),
        );
    }
    got
}

#[tokio::test]
async fn relay_publishes_committed_rows_once_with_their_id() {
    let db = ebb_testkit::TestDb::new().await.unwrap();
    ebb_store::migrate(db.pool()).await.unwrap();
    let nats = ebb_testkit::NatsServer::start().await.unwrap();
    let js = jetstream::new(nats.client().await.unwrap());
    ebb_bus::streams::ensure_streams(&js).await.unwrap();
    let pool = db.pool();
    let (org, event) = (OrgId::new(), EventId::new());
    let at = Utc::now();
    let notice = |state| Notice::EventTransition {
        event_id: event,
        org_id: org,
        state,
        from: Some(EventState::Pending),
        reason: Some("why".into()),
        at,
        data: Some(serde_json::json!({"id": event, "state": state, "observed_shed_kw": 1.5})),
    };

    let mut tx = pool.begin().await.unwrap();
    let id = outbox::enqueue(&mut tx, Some(org), &notice(EventState::Active))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut rolled = pool.begin().await.unwrap();
    outbox::enqueue(&mut rolled, Some(org), &notice(EventState::Failed))
        .await
        .unwrap();
    rolled.rollback().await.unwrap();

    assert_eq!(relay::relay_once(pool, &js, &settings()).await.unwrap(), 1);
    assert_eq!(
        relay::relay_once(pool, &js, &settings()).await.unwrap(),
        0,
        "published rows are not sent again"
    );

    let stream = js.get_stream(ebb_bus::streams::EVENT).await.unwrap();
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("t".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut msgs = consumer
        .fetch()
        .max_messages(10)
        .expires(std::time::Duration::from_millis(500))
        .messages()
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Some(Ok(m)) = msgs.next().await {
        let msg_id = m
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.to_string());
        let body: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        got.push((m.subject.to_string(), msg_id, body));
    }
    // The feed's contract: a CloudEvents 1.0 document in structured mode, its id the
    // message's Nats-Msg-Id, its data the event as the API shows it.
    assert_eq!(
        got,
        vec![(
            ebb_bus::subjects::event(org, event),
            Some(id.to_string()),
            serde_json::json!({
                "specversion": "1.0",
                "id": id.to_string(),
                "source": format!("urn:ebb:org:{org}"),
                "type": "ebb.curtailment.active",
                "time": at,
                "subject": event.to_string(),
                "datacontenttype": "application/json",
                "data": {"id": event, "state": "active", "observed_shed_kw": 1.5},
            })
        )]
    );
    // Each is a valid CloudEvent to the crate that defines them.
    let parsed: ebb_webhooks::CloudEvent = serde_json::from_value(got[0].2.clone()).unwrap();
    assert_eq!(
        parsed.event_type,
        ebb_webhooks::EventType::CurtailmentActive
    );
}

#[tokio::test]
async fn a_row_that_keeps_failing_is_parked_and_holds_up_nothing() {
    ebb_testkit::metrics::recorder();
    let db = ebb_testkit::TestDb::new().await.unwrap();
    ebb_store::migrate(db.pool()).await.unwrap();
    let nats = ebb_testkit::NatsServer::start().await.unwrap();
    let js = jetstream::new(nats.client().await.unwrap());
    ebb_bus::streams::ensure_streams(&js).await.unwrap();
    let pool = db.pool();
    // The oldest row is one this version cannot read; a good row waits behind it.
    let (bad,): (Uuid,) = sqlx::query_as(
        "INSERT INTO outbox (id, kind, payload, created_at)
         VALUES (gen_random_uuid(), 'from_the_future', '\\x7b7d', now() - interval '1 minute')
         RETURNING id",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let good = enqueue(pool, OrgId::new()).await;

    assert_eq!(relay::relay_once(pool, &js, &settings()).await.unwrap(), 2);
    let (attempts, parked, error) = row_state(pool, bad).await;
    assert_eq!((attempts, parked), (1, false));
    assert!(error.unwrap().contains("from_the_future"));
    assert_eq!(published_ids(&js).await, [good.to_string()]);

    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(relay::relay_once(pool, &js, &settings()).await.unwrap(), 1);
    assert_eq!(row_state(pool, bad).await.0, 2);
    assert!(row_state(pool, bad).await.1, "parked at max_attempts");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        relay::relay_once(pool, &js, &settings()).await.unwrap(),
        0,
        "a parked row is not claimed again"
    );

    // A row whose relay keeps dying on it (claimed, never settled) is parked too.
    let doomed = enqueue(pool, OrgId::new()).await;
    for _ in 0..3 {
        drop(outbox::claim(pool, 10, Duration::ZERO).await.unwrap());
    }
    assert_eq!(relay::relay_once(pool, &js, &settings()).await.unwrap(), 1);
    let (attempts, parked, error) = row_state(pool, doomed).await;
    assert_eq!((attempts, parked), (4, true));
    assert!(error.unwrap().contains("without being settled"));
    assert!(!published_ids(&js).await.contains(&doomed.to_string()));
    // Counted: the good row published, the bad and the doomed ones parked.
    use ebb_testkit::metrics::counter;
    assert_eq!(counter("ebb_worker_outbox_published_total"), 1);
    assert_eq!(counter("ebb_worker_outbox_parked_total"), 2);
}

#[tokio::test]
async fn an_unreachable_stream_costs_the_rows_nothing() {
    let db = ebb_testkit::TestDb::new().await.unwrap();
    ebb_store::migrate(db.pool()).await.unwrap();
    let nats = ebb_testkit::NatsServer::start().await.unwrap();
    let js = jetstream::new(nats.client().await.unwrap());
    let pool = db.pool();
    let id = enqueue(pool, OrgId::new()).await;

    // No stream yet: every round fails, more often than max_attempts, and nothing is parked.
    for _ in 0..4 {
        assert!(relay::relay_once(pool, &js, &settings()).await.is_err());
    }
    assert_eq!(row_state(pool, id).await, (0, false, None));

    ebb_bus::streams::ensure_streams(&js).await.unwrap();
    assert_eq!(relay::relay_once(pool, &js, &settings()).await.unwrap(), 1);
    assert_eq!(published_ids(&js).await, [id.to_string()]);
}

#[tokio::test]
async fn a_relay_that_died_after_publishing_leaves_a_dropped_duplicate() {
    let db = ebb_testkit::TestDb::new().await.unwrap();
    ebb_store::migrate(db.pool()).await.unwrap();
    let nats = ebb_testkit::NatsServer::start().await.unwrap();
    let js = jetstream::new(nats.client().await.unwrap());
    ebb_bus::streams::ensure_streams(&js).await.unwrap();
    let pool = db.pool();
    let id = enqueue(pool, OrgId::new()).await;

    // It claimed the row, published it and died before settling.
    let dead = outbox::claim(pool, 10, Duration::from_millis(200))
        .await
        .unwrap();
    let (subject, payload) = relay::wire(&dead.rows[0]).unwrap();
    let (_, ack) = ebb_bus::publish::send(&js, subject, &id.to_string(), payload)
        .await
        .unwrap();
    ack.await.unwrap();
    drop(dead);
    assert_eq!(
        relay::relay_once(pool, &js, &settings()).await.unwrap(),
        0,
        "leased to the dead relay"
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(relay::relay_once(pool, &js, &settings()).await.unwrap(), 1);
    assert_eq!(relay::relay_once(pool, &js, &settings()).await.unwrap(), 0);
    assert_eq!(published_ids(&js).await, [id.to_string()], "one copy");
}

#[tokio::test]
async fn pruning_deletes_only_rows_published_before_the_retention() {
    ebb_testkit::metrics::recorder();
    let db = ebb_testkit::TestDb::new().await.unwrap();
    ebb_store::migrate(db.pool()).await.unwrap();
    let pool = db.pool();
    let org = OrgId::new();
    let (old, fresh, unpublished, parked) = (
        enqueue(pool, org).await,
        enqueue(pool, org).await,
        enqueue(pool, org).await,
        enqueue(pool, org).await,
    );
    sqlx::query(
        "UPDATE outbox SET published_at = now() - interval '2 hours', created_at = now() - interval '3 hours' WHERE id = $1;",
    )
    .bind(old)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("UPDATE outbox SET published_at = now() WHERE id = $1")
        .bind(fresh)
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("UPDATE outbox SET created_at = now() - interval '3 hours' WHERE id = $1")
        .bind(unpublished)
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE outbox SET parked_at = now() - interval '3 hours', created_at = now() - interval '3 hours' WHERE id = $1",
    )
    .bind(parked)
    .execute(pool)
    .await
    .unwrap();

    let shutdown = tokio_util::sync::CancellationToken::new();
    let retention = Duration::from_secs(3600);
    assert_eq!(relay::prune(pool, retention, &shutdown).await.unwrap(), 1);
    assert_eq!(
        ebb_testkit::metrics::counter("ebb_worker_outbox_pruned_total"),
        1
    );
    let mut left: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM outbox")
        .fetch_all(pool)
        .await
        .unwrap();
    left.sort();
    let mut want = vec![fresh, unpublished, parked];
    want.sort();
    assert_eq!(left, want);
    assert_eq!(relay::prune(pool, retention, &shutdown).await.unwrap(), 0);
}
