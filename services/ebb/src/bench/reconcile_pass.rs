//! `ebb bench reconcile-pass --targets N`: what one reconciler pass costs over N live targets
//! (issue 12, item 5), through the reconciler's own [`Reconciler::pass`] against a real
//! PostgreSQL and nats-server.
//!
//! The fleet is one active event whose N targets are all confirmed, with fresh telemetry showing
//! every miner asleep: the steady state of a big curtailment. Three passes are timed: the first
//! (the event read whole and decided), a pass with nothing new (what every safety tick and every
//! wake for another event costs), and a pass after one telemetry batch named 2,000 of the
//! miners (re-read only those rows, decide the event again). Each figure is the median of
//! `--runs`.
//!
//! PostgreSQL is `DATABASE_URL` when set (a fresh database is created in it and dropped after),
//! else a throwaway cluster started like `ebb dev`'s; nats-server is always a throwaway one.

use super::measure::round;
use super::throwaway::{connect, with_infra};
use anyhow::Context;
use chrono::Utc;
use ebb_domain::selection::Selected;
use ebb_domain::{Capabilities, CommandKind, CurtailLevel, DeviceId, EventId, SiteCode};
use ebb_reconciler::{Hooks, Reconciler, ReconcilerConfig};
use ebb_store::events::{self, NewEvent};
use ebb_store::fleet::{self, NewDevice, TelemetryRow};
use serde::Serialize;
use std::time::Instant;

/// Miners one telemetry batch names (the agent's batches carry at most 2,000 samples).
const TELEMETRY_BATCH: usize = 2_000;

/// What one pass costs.
#[derive(Clone, Debug, Serialize)]
pub struct ReconcilePassReport {
    /// Always `"reconcile-pass"`.
    pub benchmark: &'static str,
    /// Live targets, all in one active event.
    pub targets: usize,
    /// Timed runs of each pass; the figures are medians.
    pub runs: usize,
    /// Seeding the fleet (not part of any other figure).
    pub seed_seconds: f64,
    /// The first pass: the event read whole and decided.
    pub first_pass_ms: f64,
    /// Target rows the first pass read.
    pub first_pass_targets_read: usize,
    /// A pass with nothing new.
    pub quiet_pass_ms: f64,
    /// Target rows a pass with nothing new read.
    pub quiet_pass_targets_read: usize,
    /// Target rows a pass with nothing new decided over.
    pub quiet_pass_targets_decided: usize,
    /// A pass after one telemetry batch named `telemetry_batch` miners.
    pub telemetry_pass_ms: f64,
    /// Miners the telemetry batch named.
    pub telemetry_batch: usize,
    /// Target rows that pass read.
    pub telemetry_pass_targets_read: usize,
    /// Target rows that pass decided over.
    pub telemetry_pass_targets_decided: usize,
    /// Each run's figures, in order: first, quiet, telemetry (ms).
    pub raw_ms: Vec<[f64; 3]>,
}

/// Seeds `targets` confirmed targets and times the passes, `runs` times each.
pub async fn bench_reconcile_pass(
    targets: usize,
    runs: usize,
) -> anyhow::Result<ReconcilePassReport> {
    if !(1..=super::MAX_MINERS).contains(&targets) {
        anyhow::bail!(
            "targets must be between 1 and {}, got {targets}",
            super::MAX_MINERS
        );
    }
    if !(1..=50).contains(&runs) {
        anyhow::bail!("runs must be between 1 and 50, got {runs}");
    }
    with_infra("reconcile", |db, nats| async move {
        run(&db, &nats, targets, runs).await
    })
    .await
}

async fn run(
    database_url: &str,
    nats_url: &str,
    n: usize,
    runs: usize,
) -> anyhow::Result<ReconcilePassReport> {
    let (pool, client) = connect(database_url, nats_url).await?;
    let seeding = Instant::now();
    let (site, devices) = seed(&pool, n).await?;
    let seed_seconds = round(seeding.elapsed().as_secs_f64(), 2);

    let js = async_nats::jetstream::new(client);
    ebb_bus::streams::ensure_streams(&js)
        .await
        .map_err(|e| anyhow::anyhow!("creating the streams: {e}"))?;

    let mut raw = Vec::new();
    let mut reads = [0usize; 3];
    let mut decided = [0usize; 3];
    for _ in 0..runs {
        // A fresh leader each run, so the first pass reads the event whole.
        let mut rec = Reconciler::new(
            &ReconcilerConfig::default(),
            Hooks::default(),
            pool.clone(),
            js.clone(),
            None,
        );
        let first = timed(&mut rec).await;
        let quiet = timed(&mut rec).await;
        // One telemetry batch: written in one statement as the intake does, then handed over.
        let named = &devices[..TELEMETRY_BATCH.min(devices.len())];
        let now = Utc::now().timestamp_millis();
        let samples: Vec<TelemetryRow> = named.iter().map(|d| asleep(*d, now)).collect();
        fleet::ingest_telemetry(&pool, site, &samples).await?;
        rec.telemetry_touched()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(named.iter().copied());
        let telemetry = timed(&mut rec).await;
        for (i, (_, stats)) in [first, quiet, telemetry].iter().enumerate() {
            reads[i] = stats.targets_read;
            decided[i] = stats.targets_decided;
        }
        raw.push([first.0, quiet.0, telemetry.0]);
    }
    pool.close().await;
    let median = |i: usize| {
        let mut v: Vec<f64> = raw.iter().map(|r| r[i]).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok(ReconcilePassReport {
        benchmark: "reconcile-pass",
        targets: n,
        runs,
        seed_seconds,
        first_pass_ms: median(0),
        first_pass_targets_read: reads[0],
        quiet_pass_ms: median(1),
        quiet_pass_targets_read: reads[1],
        quiet_pass_targets_decided: decided[1],
        telemetry_pass_ms: median(2),
        telemetry_batch: TELEMETRY_BATCH.min(n),
        telemetry_pass_targets_read: reads[2],
        telemetry_pass_targets_decided: decided[2],
        raw_ms: raw,
    })
}

async fn timed(rec: &mut Reconciler) -> (f64, ebb_reconciler::PassStats) {
    let started = Instant::now();
    rec.pass(Vec::new()).await;
    let ms = round(started.elapsed().as_secs_f64() * 1000.0, 2);
    (ms, rec.last_pass())
}

fn asleep(device_id: DeviceId, at_ms: i64) -> TelemetryRow {
    TelemetryRow {
        device_id,
        reachable: true,
        power_w: Some(60.0),
        hashrate_ths: Some(0.0),
        sampled_at_ms: at_ms,
    }
}

/// One org, one site of `n` miners, one active event holding them all, every target confirmed a
/// minute ago and every miner's latest sample asleep. Written through the store where it has a
/// function for it; the jump of every target to `confirmed` is one statement of its own, as no
/// service ever writes it that way.
async fn seed(
    pool: &sqlx::PgPool,
    n: usize,
) -> anyhow::Result<(ebb_domain::SiteId, Vec<DeviceId>)> {
    let org = fleet::create_org(pool, "bench").await?;
    let code = SiteCode::parse("bench").context("site code")?;
    fleet::create_site(pool, org, &code, "Bench", None).await?;
    let site = fleet::site_by_code(pool, &code)
        .await?
        .context("the site vanished after its insert")?;
    let new: Vec<NewDevice> = (0..n)
        .map(|i| NewDevice {
            address: format!("10.{}.{}.{}", i / 65_536, (i / 256) % 256, i % 256),
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
    for chunk in new.chunks(10_000) {
        fleet::upsert_devices(pool, &site, chunk).await?;
    }
    let devices: Vec<DeviceId> = fleet::inventory(pool, site.id)
        .await?
        .into_iter()
        .map(|d| d.device_id)
        .collect();
    let selected: Vec<Selected> = devices
        .iter()
        .map(|d| Selected {
            device_id: *d,
            site_id: site.id,
            baseline_power_w: 3000.0,
            efficiency_j_per_th: 30.0,
            shed_w: 3000.0,
        })
        .collect();
    let event = EventId::new();
    let new_event = NewEvent {
        id: event,
        org_id: org,
        mode: "full".into(),
        mode_params: serde_json::json!({"mode": "full"}),
        command: CommandKind::Curtail {
            level: CurtailLevel::Full,
        },
        scope: serde_json::json!({"sites": []}),
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
    events::insert_event(&mut conn, &new_event, &selected).await?;
    sqlx::query(
        "UPDATE curtailment_target SET state = 'confirmed', last_batch_id = $2,
             dispatched_at = now() - interval '1 minute', confirmed_at = now() - interval '1 minute',
             result_at = now() - interval '1 minute'
         WHERE event_id = $1",
    )
    .bind(event.0)
    .bind(uuid::Uuid::now_v7())
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE curtailment_event SET state = 'active', activated_at = now() WHERE id = $1",
    )
    .bind(event.0)
    .execute(&mut *conn)
    .await?;
    let now = Utc::now().timestamp_millis();
    let samples: Vec<TelemetryRow> = devices.iter().map(|d| asleep(*d, now)).collect();
    for chunk in samples.chunks(TELEMETRY_BATCH) {
        fleet::ingest_telemetry(pool, site.id, chunk).await?;
    }
    Ok((site.id, devices))
}
