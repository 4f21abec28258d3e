//! Events and targets: device exclusivity, compare-and-set, the dispatch stamp's liveness guard,
//! Stop's sweep, and telemetry ingest.

use super::fixtures::{Fleet, fleet};
use chrono::Utc;
use ebb_domain::selection::Selected;
use ebb_domain::{
    BatchId, CommandKind, CurtailLevel, DeviceId, EventId, EventState, SpendReason, StopCause,
    TargetState,
};
use ebb_store::events::{self, Failure, NewEvent, Retry, TargetChange};
use ebb_store::{StoreError, fleet as fl};

fn new_event(f: &Fleet, key: Option<&str>) -> NewEvent {
    NewEvent {
        id: EventId::new(),
        org_id: f.org,
        mode: "kw".into(),
        mode_params: serde_json::json!({"mode": "kw", "target_kw": 10.0}),
        command: CommandKind::Curtail {
            level: CurtailLevel::Full,
        },
        scope: serde_json::json!({}),
        priority: 0,
        reason: "test".into(),
        target_kw: Some(10.0),
        selection: serde_json::json!({}),
        restore_batch_size: 10,
        restore_batch_interval_s: 0,
        max_duration_s: Some(3600),
        idempotency_key: key.map(str::to_owned),
        external_source: None,
        external_reference: None,
        created_by: None,
        source_actor: "api_key".into(),
        traceparent: None,
    }
}

fn selected(f: &Fleet, devices: &[DeviceId]) -> Vec<Selected> {
    devices
        .iter()
        .map(|d| Selected {
            device_id: *d,
            site_id: f.site.id,
            baseline_power_w: 3000.0,
            efficiency_j_per_th: 30.0,
            shed_w: 3000.0,
        })
        .collect()
}

async fn insert(f: &Fleet, devices: &[DeviceId]) -> Result<EventId, StoreError> {
    let mut conn = f.db.pool().acquire().await.unwrap();
    events::insert_event(&mut conn, &new_event(f, None), &selected(f, devices))
        .await
        .map(|e| e.id)
}

#[tokio::test]
async fn a_device_is_in_at_most_one_live_event() {
    let f = fleet(3).await;
    let first = insert(&f, &f.devices[0..2]).await.unwrap();
    let err = insert(&f, &f.devices[1..3]).await.unwrap_err();
    assert_eq!(
        err.unique_constraint(),
        Some("curtailment_target_device_exclusive"),
        "{err:?}"
    );
    // Once the first event lets go of the device, it can be claimed again.
    let moved = events::transition_targets(
        f.db.pool(),
        first,
        &f.devices[1..2],
        TargetState::Pending,
        TargetState::Restored,
        &TargetChange::default(),
        "test",
    )
    .await
    .unwrap();
    assert_eq!(moved.len(), 1);
    insert(&f, &f.devices[1..3]).await.unwrap();
}

#[tokio::test]
async fn concurrent_starts_cannot_claim_the_same_miner() {
    let f = fleet(50).await;
    let (a, b) = tokio::join!(insert(&f, &f.devices), insert(&f, &f.devices));
    assert!(a.is_ok() != b.is_ok(), "exactly one wins: {a:?} {b:?}");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM curtailment_target")
        .fetch_one(f.db.pool())
        .await
        .unwrap();
    assert_eq!(n, 50);
}

#[tokio::test]
async fn transitions_are_compare_and_set_and_logged() {
    let f = fleet(2).await;
    let ev = insert(&f, &f.devices).await.unwrap();
    let pool = f.db.pool();
    let c = TargetChange::default();
    // Wrong prior state: nothing moves.
    let moved = events::transition_targets(
        pool,
        ev,
        &f.devices,
        TargetState::Dispatching,
        TargetState::Dispatched,
        &c,
        "t",
    )
    .await
    .unwrap();
    assert!(moved.is_empty());
    let moved = events::transition_targets(
        pool,
        ev,
        &f.devices[..1],
        TargetState::Pending,
        TargetState::Dispatching,
        &c,
        "t",
    )
    .await
    .unwrap();
    assert_eq!(moved, f.devices[..1].to_vec());
    // The same write again loses: the target is no longer pending.
    let again = events::transition_targets(
        pool,
        ev,
        &f.devices[..1],
        TargetState::Pending,
        TargetState::Dispatching,
        &c,
        "t",
    )
    .await
    .unwrap();
    assert!(again.is_empty());
    let logged: Vec<(String, String)> = sqlx::query_as("SELECT coalesce(from_state, ''), to_state FROM event_transition WHERE event_id = $1 AND device_id IS NOT NULL")
        .bind(ev.0).fetch_all(pool).await.unwrap();
    assert_eq!(logged, vec![("pending".into(), "dispatching".into())]);
    // Retry spend and reset.
    let spend = TargetChange {
        retry: Retry::Spend,
        ..Default::default()
    };
    events::transition_targets(
        pool,
        ev,
        &f.devices[..1],
        TargetState::Dispatching,
        TargetState::Pending,
        &spend,
        "t",
    )
    .await
    .unwrap();
    let t = events::targets(pool, ev).await.unwrap();
    assert_eq!(
        t.iter()
            .find(|x| x.device_id == f.devices[0])
            .unwrap()
            .retry_count,
        1
    );
}

#[tokio::test]
async fn stale_results_do_not_move_a_target() {
    let f = fleet(1).await;
    let ev = insert(&f, &f.devices).await.unwrap();
    let pool = f.db.pool();
    let b1 = BatchId::new();
    let mut conn = pool.acquire().await.unwrap();
    events::stamp_dispatching(
        &mut conn,
        ev,
        &f.devices,
        TargetState::Pending,
        TargetState::Dispatching,
        b1,
        Retry::Keep,
        "t",
    )
    .await
    .unwrap();
    drop(conn);
    let other = TargetChange {
        expect_batch: Some(BatchId::new()),
        ..Default::default()
    };
    let moved = events::transition_targets(
        pool,
        ev,
        &f.devices,
        TargetState::Dispatching,
        TargetState::Dispatched,
        &other,
        "t",
    )
    .await
    .unwrap();
    assert!(moved.is_empty());
    let same = TargetChange {
        expect_batch: Some(b1),
        ..Default::default()
    };
    let moved = events::transition_targets(
        pool,
        ev,
        &f.devices,
        TargetState::Dispatching,
        TargetState::Dispatched,
        &same,
        "t",
    )
    .await
    .unwrap();
    assert_eq!(moved.len(), 1);
}

#[tokio::test]
async fn nothing_is_stamped_for_a_terminal_event() {
    let f = fleet(2).await;
    let ev = insert(&f, &f.devices).await.unwrap();
    let pool = f.db.pool();
    sqlx::query("UPDATE curtailment_event SET state = 'cancelled' WHERE id = $1")
        .bind(ev.0)
        .execute(pool)
        .await
        .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let stamped = events::stamp_dispatching(
        &mut conn,
        ev,
        &f.devices,
        TargetState::Pending,
        TargetState::Dispatching,
        BatchId::new(),
        Retry::Keep,
        "t",
    )
    .await
    .unwrap();
    assert!(
        stamped.is_empty(),
        "a terminated event must never get a new command"
    );
}

#[tokio::test]
async fn the_stamp_waits_for_a_concurrent_terminate() {
    // Terminate holds the event FOR UPDATE; the stamp takes it FOR SHARE, so it waits, then sees
    // the terminal state and stamps nothing.
    let f = fleet(1).await;
    let ev = insert(&f, &f.devices).await.unwrap();
    let pool = f.db.pool().clone();
    let mut term = pool.begin().await.unwrap();
    let row = events::lock_event(&mut term, f.org, ev)
        .await
        .unwrap()
        .unwrap();
    let stamp = {
        let pool = pool.clone();
        let devices = f.devices.clone();
        tokio::spawn(async move {
            let mut conn = pool.acquire().await.unwrap();
            events::stamp_dispatching(
                &mut conn,
                ev,
                &devices,
                TargetState::Pending,
                TargetState::Dispatching,
                BatchId::new(),
                Retry::Keep,
                "t",
            )
            .await
            .unwrap()
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        !stamp.is_finished(),
        "the stamp must wait for the terminate's lock"
    );
    events::transition_event(
        &mut term,
        &row,
        EventState::Pending,
        EventState::Cancelled,
        "admin",
        Some("test"),
    )
    .await
    .unwrap()
    .unwrap();
    term.commit().await.unwrap();
    assert!(stamp.await.unwrap().is_empty());
}

#[tokio::test]
async fn stop_sweep_restores_what_was_touched() {
    let f = fleet(4).await;
    let ev = insert(&f, &f.devices).await.unwrap();
    let pool = f.db.pool();
    let c = TargetChange::default();
    let d = &f.devices;
    // d0 never sent; d1 sent and confirmed; d2 sent, failed; d3 sent then re-queued (pending again).
    let mut conn = pool.acquire().await.unwrap();
    events::stamp_dispatching(
        &mut conn,
        ev,
        &d[1..4],
        TargetState::Pending,
        TargetState::Dispatching,
        BatchId::new(),
        Retry::Keep,
        "t",
    )
    .await
    .unwrap();
    drop(conn);
    events::transition_targets(
        pool,
        ev,
        &d[1..2],
        TargetState::Dispatching,
        TargetState::Dispatched,
        &c,
        "t",
    )
    .await
    .unwrap();
    events::transition_targets(
        pool,
        ev,
        &d[1..2],
        TargetState::Dispatched,
        TargetState::Confirmed,
        &c,
        "t",
    )
    .await
    .unwrap();
    events::transition_targets(
        pool,
        ev,
        &d[2..3],
        TargetState::Dispatching,
        TargetState::Failed,
        &c,
        "t",
    )
    .await
    .unwrap();
    events::transition_targets(
        pool,
        ev,
        &d[3..4],
        TargetState::Dispatching,
        TargetState::Pending,
        &c,
        "t",
    )
    .await
    .unwrap();
    let mut tx = pool.begin().await.unwrap();
    events::sweep_targets_for_restore(&mut tx, ev, "t")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let t = events::targets(pool, ev).await.unwrap();
    let state = |i: usize| t.iter().find(|x| x.device_id == d[i]).unwrap().state;
    assert_eq!(state(0), TargetState::Restored);
    assert_eq!(state(1), TargetState::RestorePending);
    assert_eq!(
        state(2),
        TargetState::RestorePending,
        "a failed target that got a command is restored"
    );
    assert_eq!(
        state(3),
        TargetState::RestorePending,
        "a re-queued target may have been touched"
    );
}

#[tokio::test]
async fn telemetry_ingest_keeps_the_newest_valid_sample() {
    let f = fleet(2).await;
    let pool = f.db.pool();
    let now = Utc::now().timestamp_millis();
    let s = |d: DeviceId, t: i64, p: f64| fl::TelemetryRow {
        device_id: d,
        reachable: true,
        power_w: Some(p),
        hashrate_ths: Some(100.0),
        sampled_at_ms: t,
    };
    fl::ingest_telemetry(
        pool,
        f.site.id,
        &[s(f.devices[0], now, 3000.0), s(f.devices[1], now, f64::NAN)],
    )
    .await
    .unwrap();
    // An older sample never moves a device back in time.
    fl::ingest_telemetry(pool, f.site.id, &[s(f.devices[0], now - 1000, 10.0)])
        .await
        .unwrap();
    // A sample for another site's id is ignored.
    fl::ingest_telemetry(
        pool,
        ebb_domain::SiteId::new(),
        &[s(f.devices[0], now + 1000, 20.0)],
    )
    .await
    .unwrap();
    let c = fl::candidates(pool, f.org, &[]).await.unwrap();
    let by = |d: DeviceId| c.iter().find(|x| x.device_id == d).unwrap().sample;
    assert_eq!(by(f.devices[0]).unwrap().power_w, 3000.0);
    assert_eq!(
        by(f.devices[1]),
        None,
        "NaN power never reaches device_state as a value"
    );
}

#[tokio::test]
async fn the_fence_sees_who_holds_the_leader_lock() {
    let f = fleet(0).await;
    let key = 0x6562_625f_7265_6331_i64;
    let mut leader = f.db.pool().acquire().await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *leader)
        .await
        .unwrap();
    assert!(
        !events::holds_advisory_lock(f.db.pool(), pid, key)
            .await
            .unwrap()
    );
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(key)
        .fetch_one(&mut *leader)
        .await
        .unwrap();
    assert!(got);
    assert!(
        events::holds_advisory_lock(f.db.pool(), pid, key)
            .await
            .unwrap()
    );
    assert!(
        !events::holds_advisory_lock(f.db.pool(), pid, key + 1)
            .await
            .unwrap()
    );
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(key)
        .execute(&mut *leader)
        .await
        .unwrap();
    assert!(
        !events::holds_advisory_lock(f.db.pool(), pid, key)
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn a_stop_records_its_typed_cause_and_restoring_needs_one() {
    let f = fleet(2).await;
    let pool = f.db.pool();
    let ev = insert(&f, &f.devices[..1]).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    let row = events::lock_event(&mut tx, f.org, ev)
        .await
        .unwrap()
        .unwrap();
    let moved = events::begin_restore(
        &mut tx,
        &row,
        StopCause::MaxDuration,
        "max_duration_s elapsed",
        "t",
    )
    .await
    .unwrap()
    .expect("a pending event stops");
    tx.commit().await.unwrap();
    assert_eq!(moved.state, EventState::Restoring);
    assert_eq!(moved.stop_cause, Some(StopCause::MaxDuration));
    assert_eq!(moved.stop_reason.as_deref(), Some("max_duration_s elapsed"));
    assert!(moved.restore_started_at.is_some());
    let read = events::get_event(pool, f.org, ev).await.unwrap().unwrap();
    assert_eq!(read.stop_cause, Some(StopCause::MaxDuration));
    // The sweep ran: the never-sent target has nothing to undo.
    let t = events::targets(pool, ev).await.unwrap();
    assert_eq!(t[0].state, TargetState::Restored);

    // A second stop from the old state is a lost race, not a second cause.
    let mut tx = pool.begin().await.unwrap();
    assert!(
        events::begin_restore(
            &mut tx,
            &row,
            StopCause::AllFailed,
            "every target failed",
            "t"
        )
        .await
        .unwrap()
        .is_none()
    );
    tx.rollback().await.unwrap();
    assert_eq!(
        events::get_event(pool, f.org, ev)
            .await
            .unwrap()
            .unwrap()
            .stop_cause,
        Some(StopCause::MaxDuration)
    );

    // The schema refuses a restoring event that does not say why.
    let other = insert(&f, &f.devices[1..]).await.unwrap();
    let err = sqlx::query("UPDATE curtailment_event SET state = 'restoring' WHERE id = $1")
        .bind(other.0)
        .execute(pool)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("curtailment_event_stop_cause_known"),
        "{err}"
    );
}

#[tokio::test]
async fn a_spend_records_its_typed_reason_and_a_confirm_clears_it() {
    let f = fleet(1).await;
    let ev = insert(&f, &f.devices).await.unwrap();
    let pool = f.db.pool();
    let mut conn = pool.acquire().await.unwrap();
    events::stamp_dispatching(
        &mut conn,
        ev,
        &f.devices,
        TargetState::Pending,
        TargetState::Dispatching,
        BatchId::new(),
        Retry::Keep,
        "t",
    )
    .await
    .unwrap();
    drop(conn);
    let devices = &f.devices;
    let go = |from, to, change: TargetChange| async move {
        let moved = events::transition_targets(pool, ev, devices, from, to, &change, "t")
            .await
            .unwrap();
        assert_eq!(moved.len(), 1, "{from} -> {to}");
        events::targets(pool, ev).await.unwrap().remove(0)
    };
    let t = go(
        TargetState::Dispatching,
        TargetState::Dispatched,
        TargetChange::default(),
    )
    .await;
    assert_eq!(t.last_spend_reason, None);
    let t = go(
        TargetState::Dispatched,
        TargetState::Pending,
        TargetChange {
            retry: Retry::Spend,
            failure: Failure::Set(SpendReason::NotConfirmed),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(t.last_spend_reason, Some(SpendReason::NotConfirmed));
    assert_eq!(t.retry_count, 1);
    // People read the description, in the row and in the transition log.
    let (error, logged): (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT t.last_error, (SELECT reason FROM event_transition WHERE event_id = t.event_id
                                 AND to_state = 'pending' ORDER BY id DESC LIMIT 1)
         FROM curtailment_target t WHERE t.event_id = $1",
    )
    .bind(ev.0)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(error.as_deref(), Some("not confirmed before the deadline"));
    assert_eq!(logged, error);
    // Keep leaves it; Clear clears it.
    let t = go(
        TargetState::Pending,
        TargetState::Dispatching,
        TargetChange::default(),
    )
    .await;
    assert_eq!(t.last_spend_reason, Some(SpendReason::NotConfirmed));
    go(
        TargetState::Dispatching,
        TargetState::Dispatched,
        TargetChange::default(),
    )
    .await;
    let t = go(
        TargetState::Dispatched,
        TargetState::Confirmed,
        TargetChange {
            retry: Retry::Reset,
            failure: Failure::Clear,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(t.last_spend_reason, None);
    assert_eq!(t.retry_count, 0);
}
