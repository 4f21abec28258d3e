//! The rater against a real database: energy split at window edges and priced with integer
//! rounding, the exit-code contract of reference 002 (a routine run that deletes a rated row
//! exits 2 and logs ERROR; a backfill exits 0 and logs INFO), idempotent re-runs, fail-closed
//! anomalies, single-flight and the periodic job.

use chrono::{DateTime, TimeDelta, Utc};
use ebb_domain::selection::Selected;
use ebb_domain::{CommandKind, CurtailLevel, DeviceId, EventId, SiteId};
use ebb_rating::{Price, Span};
use ebb_store::events::{self, NewEvent};
use ebb_store::rating::{self as store, Interval};
use ebb_testkit::TestDb;
use ebb_testkit::world::World;
use ebb_worker::rate::{self, Anomaly, LockWait, Report};
use sqlx::Row;
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct Fx {
    db: TestDb,
    org: ebb_domain::OrgId,
    site: SiteId,
    event: EventId,
    devices: Vec<DeviceId>,
    now: DateTime<Utc>,
    /// Three hours before the end of the routine span: inside it, in a closed hour.
    base: DateTime<Utc>,
}

/// An org settling in `window_minutes`, one site of 3 miners, one event holding them.
async fn fixture(window_minutes: i32) -> Fx {
    let db = TestDb::new().await.unwrap();
    let world = World::builder()
        .site("site-a", |s| s.miners(3).watts(3000.0).hashing())
        .build(&db)
        .await
        .unwrap();
    sqlx::query("UPDATE org SET settlement_window_minutes = $2 WHERE id = $1")
        .bind(world.org.0)
        .bind(window_minutes)
        .execute(db.pool())
        .await
        .unwrap();
    let site = world.site("site-a");
    let e = NewEvent {
        id: EventId::new(),
        org_id: world.org,
        mode: "full".into(),
        mode_params: serde_json::json!({"mode": "full"}),
        command: CommandKind::Curtail {
            level: CurtailLevel::Full,
        },
        scope: serde_json::json!({}),
        priority: 0,
        reason: "rating test".into(),
        target_kw: None,
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
    let targets: Vec<Selected> = site
        .devices
        .iter()
        .map(|d| Selected {
            device_id: *d,
            site_id: site.site.id,
            baseline_power_w: 3000.0,
            efficiency_j_per_th: 30.0,
            shed_w: 3000.0,
        })
        .collect();
    let mut conn = db.pool().acquire().await.unwrap();
    let event = events::insert_event(&mut conn, &e, &targets)
        .await
        .unwrap()
        .id;
    drop(conn);
    let now = Utc::now();
    let (span, _) = Span::resolve(None, None, now).unwrap();
    Fx {
        org: world.org,
        site: site.site.id,
        devices: site.devices.clone(),
        event,
        now,
        base: span.until - TimeDelta::hours(3),
        db,
    }
}

impl Fx {
    /// A confirmed interval of device `i` from `from` to `to` (minutes after `base`; `None`:
    /// still open), baseline 3 kW, with these readings at entry and exit.
    async fn fact(
        &self,
        i: usize,
        from: TimeDelta,
        to: Option<TimeDelta>,
        start: f64,
        end: Option<f64>,
    ) {
        let interval = Interval {
            site: self.site,
            event: self.event,
            device: self.devices[i],
            started_at: self.base + from,
            ended_at: to.map(|t| self.base + t),
            baseline_power_w: 3000.0,
            start_power_w: Some(start),
            end_power_w: end,
        };
        store::insert_intervals(self.db.pool(), self.org, &[interval])
            .await
            .unwrap();
    }

    async fn price(&self, at: TimeDelta, price: &str) {
        let p = Price::parse(price).unwrap();
        store::upsert_prices(
            self.db.pool(),
            self.org,
            &[(self.base + at, p.micros_per_mwh())],
        )
        .await
        .unwrap();
    }

    /// A routine run (`None`, `None`) or a backfill, now.
    async fn rate(&self, since: Option<DateTime<Utc>>, until: Option<DateTime<Utc>>) -> Report {
        let (span, kind) = Span::resolve(since, until, self.now).unwrap();
        rate::rate_once(self.db.pool(), span, kind, self.now, LockWait::Skip)
            .await
            .unwrap()
            .expect("no other rater holds the lock")
    }

    /// (window start relative to base, curtailed_kwh as stored, amount, provisional), in
    /// window order.
    async fn rows(&self) -> Vec<(TimeDelta, String, i64, bool)> {
        sqlx::query(
            "SELECT window_start, curtailed_kwh::text, amount_micros, provisional, currency
             FROM rated_usage WHERE org_id = $1 ORDER BY window_start",
        )
        .bind(self.org.0)
        .fetch_all(self.db.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r.get::<String, _>(4), "USD");
            let at: DateTime<Utc> = r.get(0);
            (at - self.base, r.get(1), r.get(2), r.get(3))
        })
        .collect()
    }
}

fn min(m: i64) -> TimeDelta {
    TimeDelta::minutes(m)
}

/// What `report.log()` writes, through a real `fmt` subscriber.
fn logged(report: &Report) -> String {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }
    let buf = Buf::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(buf.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE)
        .finish();
    tracing::subscriber::with_default(subscriber, || report.log());
    String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
}

/// The lines of `logs` at `level` that say `message`.
fn lines<'a>(logs: &'a str, level: &str, message: &str) -> Vec<&'a str> {
    logs.lines()
        .filter(|l| l.contains(&format!(" {level} ")) && l.contains(message))
        .collect()
}

#[tokio::test]
async fn energy_is_split_exactly_at_window_edges_and_priced_per_window() {
    let fx = fixture(15).await;
    // 2,800 W shed (baseline 3,000, mean of 100 and 300) from :10 to :20: five minutes in each
    // of two quarters, 0.233333… kWh each; an hourly price covers both.
    fx.fact(0, min(10), Some(min(20)), 100.0, Some(300.0)).await;
    fx.price(min(0), "42.5").await;
    // Another miner still confirmed since :50 of the next hour: rated up to the span's end,
    // provisionally, at the price of its own hour.
    fx.fact(1, min(110), None, 0.0, None).await;
    fx.price(min(60), "10").await;
    fx.price(min(120), "10").await;
    let report = fx.rate(None, None).await;
    assert_eq!(
        (report.exit_code, report.anomalies.clone()),
        (0, vec![]),
        "{report:?}"
    );
    // 233,333 µkWh × 42.5/MWh = 9,916.65… µ → 9,917; 3 kW for 10 minutes is 0.5 kWh, at 10/MWh
    // 5,000 µ; the quarters up to the span's end (an hour later) 0.75 kWh each.
    assert_eq!(
        fx.rows().await,
        vec![
            (min(0), "0.233333".into(), 9_917, false),
            (min(15), "0.233333".into(), 9_917, false),
            (min(105), "0.500000".into(), 5_000, true),
            (min(120), "0.750000".into(), 7_500, true),
            (min(135), "0.750000".into(), 7_500, true),
            (min(150), "0.750000".into(), 7_500, true),
            (min(165), "0.750000".into(), 7_500, true),
        ]
    );
    assert_eq!(report.rows, 7);
    assert_eq!(report.intervals, 2);
}

#[tokio::test]
async fn amounts_are_integers_rounded_half_away_from_zero() {
    let fx = fixture(60).await;
    // 1 W shed for 3.6 s is 1 µkWh (0.000001 kWh), in three hours at three prices.
    for h in 0..3 {
        fx.fact(
            h as usize,
            TimeDelta::hours(h),
            Some(TimeDelta::hours(h) + TimeDelta::milliseconds(3_600)),
            2_999.0,
            Some(2_999.0),
        )
        .await;
    }
    fx.price(min(0), "500").await; // 0.5 µ: rounds up
    fx.price(min(60), "-500").await; // -0.5 µ: rounds away from zero, down
    fx.price(min(120), "499.999999").await; // just under half: 0
    let report = fx.rate(None, None).await;
    assert_eq!(report.exit_code, 0, "{report:?}");
    assert_eq!(
        fx.rows().await,
        vec![
            (min(0), "0.000001".into(), 1, false),
            (min(60), "0.000001".into(), -1, false),
            (min(120), "0.000001".into(), 0, false),
        ]
    );
}

#[tokio::test]
async fn a_late_price_correction_then_a_backfill_changes_the_amount_and_exits_0() {
    let fx = fixture(60).await;
    fx.fact(0, min(0), Some(min(30)), 200.0, Some(200.0)).await; // 2.8 kW for 30 min: 1.4 kWh
    fx.price(min(0), "40").await;
    let routine = fx.rate(None, None).await;
    assert_eq!(routine.exit_code, 0);
    assert_eq!(
        fx.rows().await,
        vec![(min(0), "1.400000".into(), 56_000, false)]
    );

    // The market corrects the hour's price; an operator backfills from it.
    fx.price(min(0), "45.5").await;
    let backfill = fx.rate(Some(fx.base), None).await;
    assert_eq!(backfill.kind, "backfill");
    assert_eq!(
        (
            backfill.exit_code,
            backfill.upserted,
            backfill.deleted.len()
        ),
        (0, 1, 0),
        "{backfill:?}"
    );
    assert_eq!(
        fx.rows().await,
        vec![(min(0), "1.400000".into(), 63_700, false)]
    );
    assert!(lines(&logged(&backfill), "ERROR", "").is_empty());
}

#[tokio::test]
async fn a_vanished_fact_in_a_routine_run_exits_2_and_logs_an_error() {
    let fx = fixture(60).await;
    fx.fact(0, min(0), Some(min(30)), 200.0, Some(200.0)).await;
    fx.price(min(0), "40").await;
    assert_eq!(fx.rate(None, None).await.exit_code, 0);
    assert_eq!(fx.rows().await.len(), 1);

    sqlx::query("DELETE FROM curtailment_interval WHERE org_id = $1")
        .bind(fx.org.0)
        .execute(fx.db.pool())
        .await
        .unwrap();
    let report = fx.rate(None, None).await;
    assert_eq!(report.kind, "routine");
    assert_eq!(
        (report.exit_code, report.deleted.len()),
        (2, 1),
        "{report:?}"
    );
    assert!(
        report.anomalies.is_empty(),
        "a deletion is not an anomaly: {report:?}"
    );
    assert!(
        fx.rows().await.is_empty(),
        "what the latest run says is what bills"
    );
    let logs = logged(&report);
    assert_eq!(
        lines(&logs, "ERROR", "rating deleted a previously rated row").len(),
        1,
        "{logs}"
    );
    assert_eq!(
        lines(&logs, "ERROR", "rating run finished").len(),
        1,
        "{logs}"
    );
    assert!(lines(&logs, "INFO", "").is_empty(), "{logs}");
}

#[tokio::test]
async fn the_same_deletion_in_a_backfill_exits_0_and_logs_info() {
    let fx = fixture(60).await;
    fx.fact(0, min(0), Some(min(30)), 200.0, Some(200.0)).await;
    fx.price(min(0), "40").await;
    assert_eq!(fx.rate(None, None).await.exit_code, 0);
    sqlx::query("DELETE FROM curtailment_interval WHERE org_id = $1")
        .bind(fx.org.0)
        .execute(fx.db.pool())
        .await
        .unwrap();
    // --until alone makes it a backfill.
    let report = fx.rate(None, Some(fx.base + TimeDelta::hours(3))).await;
    assert_eq!(report.kind, "backfill");
    assert_eq!(
        (report.exit_code, report.deleted.len()),
        (0, 1),
        "{report:?}"
    );
    assert!(fx.rows().await.is_empty());
    let logs = logged(&report);
    assert_eq!(
        lines(&logs, "INFO", "rating deleted a previously rated row").len(),
        1,
        "{logs}"
    );
    assert_eq!(
        lines(&logs, "INFO", "rating run finished").len(),
        1,
        "{logs}"
    );
    assert!(lines(&logs, "ERROR", "").is_empty(), "{logs}");
}

#[tokio::test]
async fn re_runs_are_idempotent() {
    let fx = fixture(15).await;
    fx.fact(0, min(5), Some(min(50)), 100.0, Some(150.0)).await;
    fx.fact(1, min(20), Some(min(80)), 0.0, Some(0.0)).await;
    fx.price(min(0), "33.3").await;
    fx.price(min(60), "35").await;
    let first = fx.rate(None, None).await;
    assert_eq!((first.exit_code, first.upserted as usize), (0, first.rows));
    let rated_at = || async {
        sqlx::query_scalar::<_, DateTime<Utc>>("SELECT max(rated_at) FROM rated_usage")
            .fetch_one(fx.db.pool())
            .await
            .unwrap()
    };
    let (rows, at) = (fx.rows().await, rated_at().await);
    for _ in 0..2 {
        let again = fx.rate(None, None).await;
        assert_eq!(
            (
                again.exit_code,
                again.rows,
                again.upserted,
                again.deleted.len()
            ),
            (0, first.rows, 0, 0),
            "{again:?}"
        );
        assert_eq!(fx.rows().await, rows);
        assert_eq!(rated_at().await, at, "an unchanged row is not rewritten");
    }
}

#[tokio::test]
async fn an_unpriced_window_fails_closed_in_both_kinds_of_run() {
    let fx = fixture(60).await;
    fx.fact(0, min(0), Some(min(30)), 200.0, Some(200.0)).await;
    fx.price(min(0), "40").await;
    assert_eq!(fx.rate(None, None).await.exit_code, 0);
    let before = fx.rows().await;
    // The price vanishes and more energy appears in the next hour, unpriced.
    sqlx::query("DELETE FROM price")
        .execute(fx.db.pool())
        .await
        .unwrap();
    fx.fact(1, min(60), Some(min(90)), 200.0, Some(200.0)).await;
    for (since, kind) in [(None, "routine"), (Some(fx.base), "backfill")] {
        let report = fx.rate(since, None).await;
        assert_eq!((report.kind, report.exit_code), (kind, 2), "{report:?}");
        assert_eq!(report.anomalies.len(), 2, "{report:?}");
        assert!(matches!(report.anomalies[0], Anomaly::Unpriced { .. }));
        assert!(report.deleted.is_empty());
        assert_eq!(fx.rows().await, before, "nothing written, nothing deleted");
        let logs = logged(&report);
        assert_eq!(lines(&logs, "ERROR", "rating anomaly").len(), 2, "{logs}");
        assert_eq!(
            lines(&logs, "ERROR", "rating run finished").len(),
            1,
            "{logs}"
        );
    }
}

#[tokio::test]
async fn one_rater_at_a_time() {
    let fx = fixture(60).await;
    let mut holder = fx.db.pool().acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(rate::RATE_LOCK_KEY)
        .execute(&mut *holder)
        .await
        .unwrap();
    let (span, kind) = Span::resolve(None, None, fx.now).unwrap();
    let skipped = rate::rate_once(fx.db.pool(), span, kind, fx.now, LockWait::Skip)
        .await
        .unwrap();
    assert!(skipped.is_none(), "a second rater ran");
    let waited = rate::rate_once(
        fx.db.pool(),
        span,
        kind,
        fx.now,
        LockWait::UpTo(Duration::from_millis(700)),
    )
    .await
    .unwrap();
    assert!(waited.is_none(), "a second rater ran");
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(rate::RATE_LOCK_KEY)
        .execute(&mut *holder)
        .await
        .unwrap();
    let ran = rate::rate_once(fx.db.pool(), span, kind, fx.now, LockWait::Skip)
        .await
        .unwrap();
    assert!(ran.is_some());
    // The run let go of the lock when it finished.
    let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(rate::RATE_LOCK_KEY)
        .fetch_one(&mut *holder)
        .await
        .unwrap();
    assert!(free);
}

#[tokio::test]
async fn the_periodic_job_rates_the_trailing_closed_hours() {
    let fx = fixture(60).await;
    fx.fact(0, min(0), Some(min(30)), 200.0, Some(200.0)).await;
    fx.price(min(0), "40").await;
    let stop = tokio_util::sync::CancellationToken::new();
    let job = tokio::spawn(rate::run(
        fx.db.pool().clone(),
        Duration::from_millis(50),
        stop.clone(),
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while fx.rows().await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the job rated nothing"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        fx.rows().await,
        vec![(min(0), "1.400000".into(), 56_000, false)]
    );
    stop.cancel();
    job.await.unwrap();
}
