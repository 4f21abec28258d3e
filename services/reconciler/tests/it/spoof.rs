//! Results are checked like telemetry (issue 7): a result changes only targets of the site whose
//! subject it came on, and only those still on the batch it answers; a body that claims another
//! site than its subject is dropped.

use super::harness::harness_sites;
use async_nats::jetstream;
use ebb_bus::{BatchResult, DeviceResult, Envelope, subjects};
use ebb_domain::{BatchId, CommandKind, EventState, Outcome, SiteCode};
use ebb_reconciler::Hooks;
use std::time::Duration;

/// Waits until the reconciler's results consumer has nothing pending or unacked: every result
/// published before was applied (or dropped).
async fn results_drained(js: &jetstream::Context) {
    for _ in 0..200 {
        let mut consumer = js
            .get_consumer_from_stream::<jetstream::consumer::pull::Config, _, _>(
                "reconciler-results",
                ebb_bus::streams::RESULT,
            )
            .await
            .unwrap();
        let info = consumer.info().await.unwrap();
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the reconciler never drained its results");
}

#[tokio::test]
async fn a_spoofed_result_changes_nothing() {
    ebb_testkit::metrics::recorder();
    let h = harness_sites(&[2, 2]).await;
    let _r = h.spawn_reconciler("r", Hooks::default());
    h.wait_for_telemetry().await;
    let id = h.start(h.start_request(12.0)).await;
    h.wait_event(id, EventState::Active, Duration::from_secs(10))
        .await;
    let site_b = SiteCode::parse("site-b").unwrap();
    let targets_b: Vec<_> = ebb_store::events::targets(h.db.pool(), id)
        .await
        .unwrap()
        .into_iter()
        .filter(|t| {
            h.agents[1]
                .miners
                .lock()
                .unwrap()
                .contains_key(&t.device_id)
        })
        .collect();
    assert_eq!(targets_b.len(), 2, "site B's miners are in the event");
    let batch_b = targets_b[0].last_batch_id.expect("site B's batch");

    let js = jetstream::new(h.nats.client().await.unwrap());
    let forged = |site: &str, command: CommandKind, outcome: Outcome| BatchResult {
        batch_id: batch_b,
        event_id: Some(id),
        site: SiteCode::parse(site).unwrap(),
        command: Some(command),
        results: targets_b
            .iter()
            .map(|t| DeviceResult {
                device_id: t.device_id,
                outcome: outcome.clone(),
                // Plausible for the model, so only the site check can stop it being restored.
                prior_power_limit_w: Some(3_500.0),
            })
            .collect(),
        finished_at: chrono::Utc::now(),
    };
    let publish = |subject: String, body: BatchResult| {
        let js = js.clone();
        async move {
            let payload = ebb_bus::encode(&Envelope::new(Some(h.org), body)).unwrap();
            ebb_bus::publish::publish_acked(
                &js,
                subject,
                &uuid::Uuid::now_v7().to_string(),
                payload,
            )
            .await
            .unwrap();
        }
    };
    let site_a = SiteCode::parse("site-a").unwrap();
    // Site A's agent (its own subject and body) answering site B's batch of the event.
    publish(
        subjects::result(&site_a),
        forged(
            "site-a",
            CommandKind::Uncurtail,
            Outcome::Refused {
                reason: "forged".into(),
            },
        ),
    )
    .await;
    publish(
        subjects::result(&site_a),
        forged("site-a", CommandKind::Uncurtail, Outcome::Ok),
    )
    .await;
    // A body claiming site B on site A's subject.
    publish(
        subjects::result(&site_a),
        forged(
            site_b.as_str(),
            CommandKind::Uncurtail,
            Outcome::Refused {
                reason: "forged".into(),
            },
        ),
    )
    .await;
    results_drained(&js).await;
    // The body that named another site than its subject was refused at intake, and counted.
    assert_eq!(
        ebb_testkit::metrics::counter("ebb_reconciler_results_refused_total{reason=site_mismatch}"),
        1
    );

    let after: Vec<_> = ebb_store::events::targets(h.db.pool(), id)
        .await
        .unwrap()
        .into_iter()
        .filter(|t| targets_b.iter().any(|b| b.device_id == t.device_id))
        .collect();
    for (before, now) in targets_b.iter().zip(&after) {
        assert_eq!(now.state, before.state, "{}", now.device_id);
        assert_eq!(now.retry_count, before.retry_count, "{}", now.device_id);
        assert_eq!(now.prior_power_limit_w, None, "a forged limit was recorded");
        assert_eq!(now.last_batch_id, Some(batch_b));
    }
    assert_eq!(h.event_state(id).await, EventState::Active);

    // A stale result for a batch the targets are no longer on changes nothing either.
    let stale = BatchResult {
        batch_id: BatchId::new(),
        site: site_b.clone(),
        ..forged(
            site_b.as_str(),
            CommandKind::Uncurtail,
            Outcome::Refused {
                reason: "stale".into(),
            },
        )
    };
    publish(subjects::result(&site_b), stale).await;
    results_drained(&js).await;
    let again = ebb_store::events::targets(h.db.pool(), id).await.unwrap();
    assert!(
        again
            .iter()
            .filter(|t| targets_b.iter().any(|b| b.device_id == t.device_id))
            .all(|t| t.retry_count == 0 && t.prior_power_limit_w.is_none())
    );
}
