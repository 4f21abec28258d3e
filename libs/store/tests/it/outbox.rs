//! The outbox: rows written in a transaction are published after commit with Nats-Msg-Id = row
//! id, exactly once per row; a rolled-back write publishes nothing.

use async_nats::jetstream;
use ebb_store::outbox;
use futures::StreamExt;

#[tokio::test]
async fn relay_publishes_committed_rows_once_with_their_id() {
    let db = super::fixtures::migrated().await;
    let nats = ebb_testkit::NatsServer::start().await.unwrap();
    let js = jetstream::new(nats.client().await.unwrap());
    ebb_bus::streams::ensure_streams(&js).await.unwrap();
    let pool = db.pool();

    let mut tx = pool.begin().await.unwrap();
    let id = outbox::enqueue(&mut tx, None, "ebb.event.o.e1", b"one")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut rolled = pool.begin().await.unwrap();
    outbox::enqueue(&mut rolled, None, "ebb.event.o.e2", b"two")
        .await
        .unwrap();
    rolled.rollback().await.unwrap();

    assert_eq!(outbox::relay_once(pool, &js, 100).await.unwrap(), 1);
    assert_eq!(
        outbox::relay_once(pool, &js, 100).await.unwrap(),
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
        got.push((m.subject.to_string(), msg_id, m.payload.to_vec()));
    }
    assert_eq!(
        got,
        vec![(
            "ebb.event.o.e1".to_owned(),
            Some(id.to_string()),
            b"one".to_vec()
        )]
    );
}
