//! `ebb bench rate --miners N`: rating one day of an N-miner event (issue 8), through the
//! rater's own [`ebb_worker::rate::rate_once`] against a real PostgreSQL, and what keeping the
//! rater's facts adds to the reconciler's hot path.
//!
//! The fleet is one org settling in 15-minute windows, sites of at most 1,000 miners, one event
//! holding every miner. First the hot path: the event's targets are moved batch by batch (2,000
//! devices, a command batch's most) through `dispatching → dispatched → confirmed → drifted` by
//! [`ebb_store::events::transition_targets`], timing each batch; `dispatched` touches no
//! interval, `confirmed` opens one per target and `drifted` closes it, so the difference is
//! what the facts cost. Then the day: every miner was confirmed four times in the trailing 24
//! closed hours (each stretch ending in a drift a few minutes long), written as history, with
//! hourly prices; the routine run rates it (every row new), then `--runs` re-runs rate it again
//! (nothing changes, nothing is written).
//!
//! PostgreSQL is `DATABASE_URL` when set (a fresh database is created in it and dropped after),
//! else a throwaway cluster started like `ebb dev`'s.

use super::measure::round;
use super::throwaway::{connect, with_infra};
use anyhow::Context;
use chrono::{TimeDelta, Utc};
use ebb_domain::selection::Selected;
use ebb_domain::{
    BatchId, Capabilities, CommandKind, CurtailLevel, DeviceId, EventId, SiteCode, SiteId,
    TargetState,
};
use ebb_rating::{Price, Span};
use ebb_store::events::{self, NewEvent, TargetChange};
use ebb_store::fleet::{self, NewDevice, TelemetryRow};
use ebb_store::rating::{self as store, Interval};
use ebb_worker::rate::{LockWait, rate_once};
use serde::Serialize;
use std::time::Instant;

/// Devices per target transition (a command batch's most).
const BATCH: usize = 2_000;
/// Miners per site.
const SITE_MINERS: usize = 1_000;
/// Confirmed stretches per miner in the day.
const STRETCHES: i64 = 4;

/// What rating a day costs.
#[derive(Clone, Debug, Serialize)]
pub struct RateReport {
    /// Always `"rate"`.
    pub benchmark: &'static str,
    pub miners: usize,
    pub sites: usize,
    /// Confirmed intervals in the day.
    pub intervals: usize,
    /// 15-minute windows in the day.
    pub windows: usize,
    /// `rated_usage` rows the run produced (site × event × window).
    pub rows: usize,
    /// Seeding the fleet and the day (not part of any other figure).
    pub seed_seconds: f64,
    /// The routine run that rated the day, every row new.
    pub first_run_ms: f64,
    /// Rows it wrote.
    pub first_run_upserted: u64,
    /// Of the first run, in ms: reading the intervals and prices, rating, writing.
    pub first_run_read_ms: f64,
    pub first_run_rate_ms: f64,
    pub first_run_write_ms: f64,
    /// The median re-run over the same day: everything read and rated again, nothing written.
    pub rerun_ms: f64,
    pub reruns: usize,
    /// Intervals rated per second by the first run.
    pub intervals_per_second: f64,
    /// Devices per timed target transition.
    pub transition_batch: usize,
    /// Median ms of one batch's `dispatching → dispatched` (no interval touched).
    pub dispatched_batch_ms: f64,
    /// Median ms of one batch's `dispatched → confirmed` (opens an interval per target).
    pub confirm_batch_ms: f64,
    /// Median ms of one batch's `confirmed → drifted` (closes them).
    pub drift_batch_ms: f64,
}

/// Seeds `miners` miners, times the transitions, seeds a day and rates it `1 + runs` times.
pub async fn bench_rate(miners: usize, runs: usize) -> anyhow::Result<RateReport> {
    if !(1..=super::MAX_MINERS).contains(&miners) {
        anyhow::bail!(
            "miners must be between 1 and {}, got {miners}",
            super::MAX_MINERS
        );
    }
    if !(1..=50).contains(&runs) {
        anyhow::bail!("runs must be between 1 and 50, got {runs}");
    }
    with_infra("rate", |db, nats| async move {
        run(&db, &nats, miners, runs).await
    })
    .await
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// A small deterministic spread (0..m) per miner and stretch, so stretches do not all share
/// one edge.
fn spread(i: usize, k: i64, m: i64) -> i64 {
    let x = (i as u64)
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(k as u64 * 1_442_695_040_888_963_407);
    ((x >> 33) % m as u64) as i64
}

async fn run(
    database_url: &str,
    nats_url: &str,
    n: usize,
    runs: usize,
) -> anyhow::Result<RateReport> {
    let (pool, _nats) = connect(database_url, nats_url).await?;
    let seeding = Instant::now();
    let (org, sites, devices, event) = seed(&pool, n).await?;

    // The hot path: batches through the transitions the facts ride on.
    let mut timings: [Vec<f64>; 3] = Default::default();
    for chunk in devices.chunks(BATCH) {
        let ids: Vec<DeviceId> = chunk.iter().map(|(d, _)| *d).collect();
        use TargetState::*;
        for (i, (from, to)) in [
            (Pending, Dispatching),
            (Dispatching, Dispatched),
            (Dispatched, Confirmed),
            (Confirmed, Drifted),
        ]
        .into_iter()
        .enumerate()
        {
            let change = TargetChange {
                batch: (to == Dispatching).then(BatchId::new),
                ..Default::default()
            };
            let started = Instant::now();
            let moved =
                events::transition_targets(&pool, event, &ids, from, to, &change, "bench").await?;
            let ms = started.elapsed().as_secs_f64() * 1_000.0;
            anyhow::ensure!(moved.len() == ids.len(), "{from} -> {to} lost a race");
            if i > 0 {
                timings[i - 1].push(ms);
            }
        }
    }

    // The day: the routine span, every miner confirmed four times in it.
    let now = Utc::now();
    let (span, kind) = Span::resolve(None, None, now)?;
    let stretch = TimeDelta::hours(24 / STRETCHES);
    let mut intervals = Vec::with_capacity(n * STRETCHES as usize);
    for (i, (device, site)) in devices.iter().enumerate() {
        for k in 0..STRETCHES {
            let from = span.since
                + stretch * k as i32
                + TimeDelta::microseconds(spread(i, k, 600_000_000));
            let to = span.since + stretch * (k as i32 + 1)
                - TimeDelta::microseconds(60_000_000 + spread(i, k + 7, 600_000_000));
            intervals.push(Interval {
                site: *site,
                event,
                device: *device,
                started_at: from,
                ended_at: Some(to),
                baseline_power_w: 3_000.0 + spread(i, 0, 400) as f64,
                start_power_w: Some(50.0 + spread(i, k, 40) as f64),
                end_power_w: Some(60.0 + spread(i, k + 1, 2_000) as f64),
            });
        }
    }
    for chunk in intervals.chunks(10_000) {
        store::insert_intervals(&pool, org, chunk).await?;
    }
    let prices: Vec<(chrono::DateTime<Utc>, i64)> = (0..24)
        .map(|h| {
            let p = Price::parse(&format!("{}.{:02}", 30 + h, h)).map(Price::micros_per_mwh);
            (span.since + TimeDelta::hours(h), p.unwrap_or(0))
        })
        .collect();
    store::upsert_prices(&pool, org, &prices).await?;
    sqlx::query("ANALYZE").execute(&pool).await?;
    let seed_seconds = round(seeding.elapsed().as_secs_f64(), 2);

    let started = Instant::now();
    let first = rate_once(&pool, span, kind, now, LockWait::Skip)
        .await?
        .context("the rating lock was held")?;
    let first_ms = started.elapsed().as_secs_f64() * 1_000.0;
    anyhow::ensure!(
        first.exit_code == 0,
        "the first run ended with code {}: {:?}",
        first.exit_code,
        first.anomalies
    );
    let mut reruns = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let again = rate_once(&pool, span, kind, now, LockWait::Skip)
            .await?
            .context("the rating lock was held")?;
        reruns.push(started.elapsed().as_secs_f64() * 1_000.0);
        anyhow::ensure!(
            again.upserted == 0 && again.deleted.is_empty() && again.exit_code == 0,
            "a re-run changed something: {} upserted, {} deleted",
            again.upserted,
            again.deleted.len()
        );
    }
    pool.close().await;
    let [dispatched, confirm, drift] = timings.map(|t| round(median(t), 2));
    Ok(RateReport {
        benchmark: "rate",
        miners: n,
        sites: sites.len(),
        intervals: first.intervals,
        windows: 96,
        rows: first.rows,
        seed_seconds,
        first_run_ms: round(first_ms, 1),
        first_run_upserted: first.upserted,
        first_run_read_ms: round(first.read_seconds * 1_000.0, 1),
        first_run_rate_ms: round(first.rate_seconds * 1_000.0, 1),
        first_run_write_ms: round(first.write_seconds * 1_000.0, 1),
        rerun_ms: round(median(reruns), 1),
        reruns: runs,
        intervals_per_second: round(first.intervals as f64 / (first_ms / 1_000.0), 0),
        transition_batch: BATCH.min(n),
        dispatched_batch_ms: dispatched,
        confirm_batch_ms: confirm,
        drift_batch_ms: drift,
    })
}

/// One org, sites of [`SITE_MINERS`] miners with a fresh sample each, one event holding them
/// all (pending). Returns the org, the sites, every (device, site) and the event.
#[allow(clippy::type_complexity)] // reason: a seed's four outputs, read once
async fn seed(
    pool: &sqlx::PgPool,
    n: usize,
) -> anyhow::Result<(
    ebb_domain::OrgId,
    Vec<SiteId>,
    Vec<(DeviceId, SiteId)>,
    EventId,
)> {
    let org = fleet::create_org(pool, "bench").await?;
    let mut sites = Vec::new();
    let mut devices = Vec::new();
    for s in 0..n.div_ceil(SITE_MINERS) {
        let code = SiteCode::parse(&format!("bench-{s}")).context("site code")?;
        fleet::create_site(pool, org, &code, "Bench", None).await?;
        let site = fleet::site_by_code(pool, &code)
            .await?
            .context("the site vanished after its insert")?;
        let count = SITE_MINERS.min(n - s * SITE_MINERS);
        let new: Vec<NewDevice> = (0..count)
            .map(|i| NewDevice {
                address: format!("10.{s}.{}.{}", i / 256, i % 256),
                make: "AntMiner".into(),
                model: "S19".into(),
                firmware: None,
                capabilities: Capabilities {
                    curtail_full: true,
                    ..Default::default()
                },
                nominal_power_w: Some(3000.0),
            })
            .collect();
        fleet::upsert_devices(pool, &site, &new).await?;
        let ids: Vec<DeviceId> = fleet::inventory(pool, site.id)
            .await?
            .into_iter()
            .map(|d| d.device_id)
            .collect();
        let at = Utc::now().timestamp_millis();
        let samples: Vec<TelemetryRow> = ids
            .iter()
            .map(|d| TelemetryRow {
                device_id: *d,
                reachable: true,
                power_w: Some(60.0),
                hashrate_ths: Some(0.0),
                sampled_at_ms: at,
            })
            .collect();
        fleet::ingest_telemetry(pool, site.id, &samples).await?;
        devices.extend(ids.into_iter().map(|d| (d, site.id)));
        sites.push(site.id);
    }
    let selected: Vec<Selected> = devices
        .iter()
        .map(|(d, site)| Selected {
            device_id: *d,
            site_id: *site,
            baseline_power_w: 3000.0,
            efficiency_j_per_th: 30.0,
            shed_w: 3000.0,
        })
        .collect();
    let new_event = NewEvent {
        id: EventId::new(),
        org_id: org,
        mode: "full".into(),
        mode_params: serde_json::json!({"mode": "full"}),
        command: CommandKind::Curtail {
            level: CurtailLevel::Full,
        },
        scope: serde_json::json!({}),
        priority: 0,
        reason: "bench".into(),
        target_kw: None,
        selection: serde_json::json!({}),
        restore_batch_size: 1_000,
        restore_batch_interval_s: 5,
        max_duration_s: Some(86_400),
        idempotency_key: None,
        external_source: None,
        external_reference: None,
        created_by: None,
        source_actor: "scheduler".into(),
        traceparent: None,
    };
    let mut conn = pool.acquire().await?;
    let event = events::insert_event(&mut conn, &new_event, &selected)
        .await?
        .id;
    Ok((org, sites, devices, event))
}
