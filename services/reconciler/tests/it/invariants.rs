//! DESIGN §5 invariants that the reconciler enforces, each provoked through the scripted site.

use super::harness::{Behaviour, harness};
use ebb_bus::StartRequest;
use ebb_domain::{CommandKind, EventState, TargetState};
use ebb_reconciler::Hooks;
use std::time::Duration;

#[tokio::test]
async fn happy_path_confirms_from_telemetry_then_restores() {
    let h = harness(3).await;
    let _r = h.spawn_reconciler("r", Hooks::default());
    h.wait_for_telemetry().await;
    let id = h.start(h.start_request(5.0)).await;
    h.wait_event(id, EventState::Active, Duration::from_secs(10))
        .await;
    assert_eq!(
        h.site_agent.batches().len(),
        1,
        "one batch for all devices of the site"
    );
    h.stop(id).await;
    h.wait_event(id, EventState::Completed, Duration::from_secs(10))
        .await;
    let states = h.target_states(id).await;
    assert!(
        states.values().all(|s| matches!(s, TargetState::Restored)),
        "{states:?}"
    );
}

/// §5.3: an "ok" from firmware that did nothing never confirms; §5.4: attempts are bounded, the
/// event still progresses, and an event whose targets all failed restores what it touched and
/// ends failed.
#[tokio::test]
async fn ok_without_effect_never_confirms_and_retries_are_bounded() {
    let h = harness(2).await;
    for d in &h.devices {
        h.site_agent.set(*d, Behaviour::LiesOk);
    }
    let _r = h.spawn_reconciler("r", Hooks::default());
    h.wait_for_telemetry().await;
    let id = h.start(h.start_request(1.0)).await;
    h.wait_event(id, EventState::Failed, Duration::from_secs(30))
        .await;
    let curtails = h
        .site_agent
        .batches()
        .iter()
        .filter(|b| matches!(b.command, CommandKind::Curtail { .. }))
        .count();
    assert_eq!(curtails, 2, "max_retries = 2 attempts, then failed");
    let uncurtails = h
        .site_agent
        .batches()
        .iter()
        .filter(|b| b.command == CommandKind::Uncurtail)
        .count();
    assert!(
        uncurtails >= 1,
        "touched miners are restored even though they failed"
    );
    let failed: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT reason FROM event_transition WHERE event_id = $1 AND device_id IS NOT NULL AND to_state = 'failed'",
    )
    .bind(id.0)
    .fetch_all(h.db.pool())
    .await
    .unwrap();
    assert_eq!(
        failed,
        vec![Some("not confirmed before the deadline".to_owned())]
    );
}

/// §5.4: a refused outcome costs an attempt and the event still progresses without that miner.
#[tokio::test]
async fn a_refusing_miner_fails_alone() {
    ebb_testkit::metrics::recorder();
    let h = harness(3).await;
    h.site_agent.set(h.devices[0], Behaviour::Refuses);
    let _r = h.spawn_reconciler("r", Hooks::default());
    h.wait_for_telemetry().await;
    let req = StartRequest {
        mode: ebb_domain::selection::Mode::Full,
        ..h.start_request(1.0)
    };
    let id = h.start(req).await;
    h.wait_event(id, EventState::Active, Duration::from_secs(20))
        .await;
    let states = h.target_states(id).await;
    assert_eq!(states[&h.devices[0]], TargetState::Failed);
    // Counted by phase and reason (issue 10).
    assert_eq!(
        ebb_testkit::metrics::counter(
            "ebb_reconciler_target_failures_total{phase=curtail,reason=command_failed}"
        ),
        1
    );
    // Announced once, aggregated, with the event as the API shows it (issue 8).
    let failed: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT payload FROM outbox WHERE kind = 'targets_failed'")
            .fetch_all(h.db.pool())
            .await
            .unwrap();
    assert_eq!(failed.len(), 1);
    let notice: serde_json::Value = serde_json::from_slice(&failed[0]).unwrap();
    let data = &notice["data"];
    assert_eq!(data["id"], id.0.to_string(), "{notice}");
    assert_eq!(
        data["failed_targets"],
        serde_json::json!({
            "phase": "curtail",
            "reason": "command_failed",
            "count": 1,
            "batch_id": data["failed_targets"]["batch_id"],
            "device_ids": [h.devices[0].0.to_string()],
            "device_ids_truncated": false,
        })
    );
    assert!(
        data["failed_targets"]["batch_id"].is_string(),
        "a result failed it"
    );
    assert_eq!(
        states
            .values()
            .filter(|s| **s == TargetState::Confirmed)
            .count(),
        2
    );
    h.stop(id).await;
    h.wait_event(
        id,
        EventState::CompletedWithFailures,
        Duration::from_secs(20),
    )
    .await;
}

/// §5.3 and §5.4: a miner that wakes by itself is detected as drifted, re-sent, and reconfirmed;
/// the flap counter keeps the lifetime total.
#[tokio::test]
async fn drift_is_detected_and_resent() {
    let h = harness(1).await;
    let _r = h.spawn_reconciler("r", Hooks::default());
    h.wait_for_telemetry().await;
    let id = h.start(h.start_request(1.0)).await;
    h.wait_event(id, EventState::Active, Duration::from_secs(10))
        .await;
    h.site_agent.wake_by_itself(h.devices[0]);
    h.wait("a re-sent curtail", Duration::from_secs(10), || async {
        h.site_agent.batches().len() >= 2
    })
    .await;
    h.wait("reconfirmation", Duration::from_secs(10), || async {
        h.target_states(id).await[&h.devices[0]] == TargetState::Confirmed
    })
    .await;
    let flaps: i32 =
        sqlx::query_scalar("SELECT flap_count FROM curtailment_target WHERE event_id = $1")
            .bind(id.0)
            .fetch_one(h.db.pool())
            .await
            .unwrap();
    assert_eq!(flaps, 1);
    let retries: i32 =
        sqlx::query_scalar("SELECT retry_count FROM curtailment_target WHERE event_id = $1")
            .bind(id.0)
            .fetch_one(h.db.pool())
            .await
            .unwrap();
    assert_eq!(retries, 0, "the episode count resets on reconfirmation");
}

/// §5.5: the event starts restoring when max_duration_s elapses.
#[tokio::test]
async fn max_duration_is_enforced() {
    let h = harness(2).await;
    let _r = h.spawn_reconciler("r", Hooks::default());
    h.wait_for_telemetry().await;
    let id = h
        .start(StartRequest {
            max_duration_s: Some(2),
            ..h.start_request(1.0)
        })
        .await;
    h.wait_event(id, EventState::Completed, Duration::from_secs(15))
        .await;
    let ev = ebb_store::events::get_event(h.db.pool(), h.org, id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev.stop_reason.as_deref(), Some("max_duration_s elapsed"));
}

/// §5.6: restore goes out in batches of at most restore_batch_size, one per interval.
#[tokio::test]
async fn restore_is_staggered() {
    let h = harness(6).await;
    let _r = h.spawn_reconciler("r", Hooks::default());
    h.wait_for_telemetry().await;
    let req = StartRequest {
        mode: ebb_domain::selection::Mode::Full,
        restore_batch_size: Some(2),
        restore_batch_interval_s: Some(1),
        ..h.start_request(1.0)
    };
    let id = h.start(req).await;
    h.wait_event(id, EventState::Active, Duration::from_secs(10))
        .await;
    h.stop(id).await;
    h.wait_event(id, EventState::Completed, Duration::from_secs(20))
        .await;
    let restores: Vec<_> = h
        .site_agent
        .batches()
        .into_iter()
        .filter(|b| b.command == CommandKind::Uncurtail)
        .collect();
    assert_eq!(restores.len(), 3, "{restores:?}");
    for r in &restores {
        assert!(r.devices.len() <= 2);
    }
    for w in restores.windows(2) {
        let gap = w[1].at - w[0].at;
        assert!(gap >= Duration::from_millis(900), "batches {gap:?} apart");
    }
}
