//! Rating's tables: the confirmed intervals the target transitions keep, and the rater's
//! reconcile DELETE served by its own index.

use super::fixtures::{Fleet, fleet};
use chrono::{DateTime, TimeDelta, Utc};
use ebb_domain::selection::Selected;
use ebb_domain::{BatchId, CommandKind, CurtailLevel, DeviceId, EventId, StopCause, TargetState};
use ebb_store::events::{self, NewEvent, TargetChange};
use ebb_store::fleet::{self as fl, TelemetryRow};
use ebb_store::rating::{self, RECONCILE_DELETE};
use sqlx::Row;

async fn event(f: &Fleet, devices: &[DeviceId]) -> EventId {
    let e = NewEvent {
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
        idempotency_key: None,
        external_source: None,
        external_reference: None,
        created_by: None,
        source_actor: "api_key".into(),
        traceparent: None,
    };
    let targets: Vec<Selected> = devices
        .iter()
        .map(|d| Selected {
            device_id: *d,
            site_id: f.site.id,
            baseline_power_w: 3000.0,
            efficiency_j_per_th: 30.0,
            shed_w: 3000.0,
        })
        .collect();
    let mut conn = f.db.pool().acquire().await.unwrap();
    events::insert_event(&mut conn, &e, &targets)
        .await
        .unwrap()
        .id
}

async fn power(f: &Fleet, devices: &[DeviceId], w: f64, at_ms: i64) {
    let rows: Vec<TelemetryRow> = devices
        .iter()
        .map(|d| TelemetryRow {
            device_id: *d,
            reachable: true,
            power_w: Some(w),
            hashrate_ths: Some(0.0),
            sampled_at_ms: at_ms,
        })
        .collect();
    fl::ingest_telemetry(f.db.pool(), f.site.id, &rows)
        .await
        .unwrap();
}

async fn moves(f: &Fleet, ev: EventId, devices: &[DeviceId], path: &[TargetState]) {
    for pair in path.windows(2) {
        let change = TargetChange {
            batch: (pair[1] == TargetState::Dispatching).then(BatchId::new),
            ..Default::default()
        };
        let moved =
            events::transition_targets(f.db.pool(), ev, devices, pair[0], pair[1], &change, "t")
                .await
                .unwrap();
        assert_eq!(moved.len(), devices.len(), "{} -> {}", pair[0], pair[1]);
    }
}

/// (device, closed, start power, end power) of every interval, oldest first.
async fn intervals(f: &Fleet) -> Vec<(DeviceId, bool, Option<f64>, Option<f64>)> {
    sqlx::query(
        "SELECT device_id, ended_at IS NOT NULL, start_power_w, end_power_w, baseline_power_w
         FROM curtailment_interval ORDER BY id",
    )
    .fetch_all(f.db.pool())
    .await
    .unwrap()
    .iter()
    .map(|r| {
        assert_eq!(r.get::<f64, _>(4), 3000.0, "the target's baseline");
        (DeviceId(r.get(0)), r.get(1), r.get(2), r.get(3))
    })
    .collect()
}

#[tokio::test]
async fn confirmed_intervals_open_and_close_with_the_transitions_that_move_targets() {
    use TargetState::*;
    let f = fleet(3).await;
    let d = f.devices.clone();
    let ev = event(&f, &d).await;
    let now_ms = Utc::now().timestamp_millis();
    power(&f, &d, 100.0, now_ms).await;
    moves(&f, ev, &d, &[Pending, Dispatching, Dispatched]).await;
    assert!(intervals(&f).await.is_empty(), "nothing confirmed yet");

    // Two confirm: each interval opens with the power that confirmed it.
    moves(&f, ev, &d[..2], &[Dispatched, Confirmed]).await;
    assert_eq!(
        intervals(&f).await,
        vec![
            (d[0], false, Some(100.0), None),
            (d[1], false, Some(100.0), None)
        ]
    );

    // One drifts: its interval closes with the power it drifted to; it confirms again into a
    // new interval.
    power(&f, &d[..1], 2_500.0, now_ms + 1).await;
    moves(&f, ev, &d[..1], &[Confirmed, Drifted]).await;
    power(&f, &d[..1], 50.0, now_ms + 2).await;
    moves(&f, ev, &d[..1], &[Drifted, Confirmed]).await;
    assert_eq!(
        intervals(&f).await,
        vec![
            (d[0], true, Some(100.0), Some(2_500.0)),
            (d[1], false, Some(100.0), None),
            (d[0], false, Some(50.0), None),
        ]
    );

    // Stop's sweep closes what is still open, in its own statement.
    power(&f, &d[1..2], 120.0, now_ms + 3).await;
    let mut conn = f.db.pool().acquire().await.unwrap();
    let row = events::get_event(&mut *conn, f.org, ev)
        .await
        .unwrap()
        .unwrap();
    events::begin_restore(&mut conn, &row, StopCause::Requested, "stop", "t")
        .await
        .unwrap()
        .expect("the event began restoring");
    assert_eq!(
        intervals(&f).await,
        vec![
            (d[0], true, Some(100.0), Some(2_500.0)),
            (d[1], true, Some(100.0), Some(120.0)),
            (d[0], true, Some(50.0), Some(50.0)),
        ]
    );
    let read = rating::intervals(
        f.db.pool(),
        f.org,
        Utc::now() - TimeDelta::hours(1),
        Utc::now() + TimeDelta::hours(1),
    )
    .await
    .unwrap();
    assert_eq!(read.len(), 3);
    assert!(read.iter().all(|i| i.event == ev && i.site == f.site.id));
}

/// The plan PostgreSQL picks for [`RECONCILE_DELETE`] with these arguments, as text.
async fn plan(
    f: &Fleet,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    kept: &[(uuid::Uuid, uuid::Uuid, DateTime<Utc>)],
) -> String {
    let rows = sqlx::query(&format!("EXPLAIN {RECONCILE_DELETE}"))
        .bind(f.org.0)
        .bind(since)
        .bind(until)
        .bind(kept.iter().map(|k| k.0).collect::<Vec<_>>())
        .bind(kept.iter().map(|k| k.1).collect::<Vec<_>>())
        .bind(kept.iter().map(|k| k.2).collect::<Vec<_>>())
        .fetch_all(f.db.pool())
        .await
        .unwrap();
    rows.iter()
        .map(|r| r.get::<String, _>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

/// 002's finding: the reconcile DELETE filters on the run's window, which no index led by
/// org, site and event can serve (and the produced keys must be hashed, not scanned per row). On 12,000 rated rows (100 days of hourly windows for five
/// events), ANALYZEd, under default planner settings, the exact DELETE plans through
/// `rated_usage_reconcile`, and without that index it does not.
#[tokio::test]
async fn the_reconcile_delete_uses_its_own_index() {
    let f = fleet(1).await;
    let mut events = Vec::new();
    for _ in 0..5 {
        events.push(event(&f, &[]).await);
    }
    let start: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
    let ids: Vec<uuid::Uuid> = events.iter().map(|e| e.0).collect();
    sqlx::query(
        "INSERT INTO rated_usage (org_id, site_id, event_id, window_start, window_end,
             curtailed_kwh, amount_micros, currency, provisional)
         SELECT $1, $2, e, $4 + h * interval '1 hour', $4 + (h + 1) * interval '1 hour',
                1.5, 1000, 'USD', false
         FROM unnest($3::uuid[]) AS e, generate_series(0, 2399) AS h",
    )
    .bind(f.org.0)
    .bind(f.site.id.0)
    .bind(&ids)
    .bind(start)
    .execute(f.db.pool())
    .await
    .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM rated_usage")
        .fetch_one(f.db.pool())
        .await
        .unwrap();
    assert!(n >= 10_000, "{n} rows");
    sqlx::query("ANALYZE rated_usage")
        .execute(f.db.pool())
        .await
        .unwrap();

    // A routine run's day: 120 rows in the window, the run still produces all but one.
    let since = start + TimeDelta::days(50);
    let until = since + TimeDelta::hours(24);
    let mut kept = Vec::new();
    for e in &ids {
        for h in 0..24 {
            kept.push((f.site.id.0, *e, since + TimeDelta::hours(h)));
        }
    }
    kept.pop();
    let with_index = plan(&f, since, until, &kept).await;
    assert!(
        with_index.contains("rated_usage_reconcile"),
        "the reconcile DELETE does not use its index:\n{with_index}"
    );
    // The produced keys are hashed once, not scanned for every row (quadratic).
    assert!(with_index.contains("hashed SubPlan"), "{with_index}");

    // Without the index the same DELETE plans without it (the test can fail).
    sqlx::query("DROP INDEX rated_usage_reconcile")
        .execute(f.db.pool())
        .await
        .unwrap();
    let without = plan(&f, since, until, &kept).await;
    assert!(!without.contains("rated_usage_reconcile"), "{without}");

    // And the DELETE deletes exactly the row the run no longer produces.
    let mut conn = f.db.pool().acquire().await.unwrap();
    let rows: Vec<ebb_store::rating::RatedRow> = kept
        .iter()
        .map(|k| ebb_store::rating::RatedRow {
            site: ebb_domain::SiteId(k.0),
            event: EventId(k.1),
            window_start: k.2,
            window_end: k.2 + TimeDelta::hours(1),
            kwh_micros: 1_500_000,
            amount_micros: 1000,
            currency: "USD".into(),
            provisional: false,
        })
        .collect();
    let written = rating::write_rated(&mut conn, f.org, since, until, &rows)
        .await
        .unwrap();
    assert_eq!(written.upserted, 0, "the same figures touch nothing");
    assert_eq!(written.deleted.len(), 1);
    assert_eq!(written.deleted[0].window_start, until - TimeDelta::hours(1));
}
