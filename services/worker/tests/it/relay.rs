//! The outbox relay: rows committed in a transaction are published after commit on the event
//! feed with Nats-Msg-Id = row id, exactly once per row; a rolled-back write publishes nothing.

use async_nats::jetstream;
use chrono::Utc;
use ebb_bus::EventNotice;
use ebb_domain::{EventId, EventState, OrgId};
use ebb_store::outbox::{self, Notice};
use ebb_worker::relay;
use futures::StreamExt;

#[tokio::test]
async fn relay_publishes_committed_rows_once_with_their_id() {
    let db = ebb_testkit::TestDb::new().await.unwrap();
    ebb_store::migrate(db.pool()).await.unwrap();
    let nats = ebb_testkit::NatsServer::start().await.unwrap();
    let js = jetstream::new(nats.client().await.unwrap());
    ebb_bus::streams::ensure_streams(&js).await.unwrap();
    let pool = db.pool();
    let (org, event) = (OrgId::new(), EventId::new());
    let notice = |state| Notice::EventTransition {
        event_id: event,
        org_id: org,
        state,
        from: Some(EventState::Pending),
        reason: Some("why".into()),
        at: Utc::now(),
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

    assert_eq!(relay::relay_once(pool, &js, 100).await.unwrap(), 1);
    assert_eq!(
        relay::relay_once(pool, &js, 100).await.unwrap(),
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
        let body = ebb_bus::decode::<EventNotice>(&m.payload).unwrap();
        got.push((m.subject.to_string(), msg_id, body.org, body.body));
    }
    assert_eq!(
        got,
        vec![(
            ebb_bus::subjects::event(org, event),
            Some(id.to_string()),
            Some(org),
            EventNotice {
                event_id: event,
                state: EventState::Active,
                from: Some(EventState::Pending),
                reason: Some("why".into()),
                targets: Default::default(),
            }
        )]
    );
}
