//! `ebb bench preview --miners N`: how long a preview over N candidates takes (issue 12, item
//! 8), asked over NATS of the planner's own service (`ebb.svc.planner.preview`, what the
//! gateway calls) against a real PostgreSQL and nats-server.
//!
//! The fleet is one org of N hashing miners with fresh telemetry (efficiency spread, so the
//! selection sorts), on sites of at most 50,000. The preview asks for half the fleet's power,
//! so every candidate is considered and half selected. The first request (which reads the
//! fleet into the snapshot) is reported apart; then `--runs` sequential previews (median, p90,
//! max) and `--runs` rounds of 8 concurrent previews (median wall time of a round).

use super::measure::round;
use super::throwaway::{connect, with_infra};
use anyhow::Context;
use chrono::Utc;
use ebb_bus::{Actor, PlanView, PreviewRequest, Role, Scope, StartRequest};
use ebb_domain::selection::Mode;
use ebb_domain::{Capabilities, Kw, OrgId, SiteCode};
use ebb_planner::{Planner, PlannerConfig};
use ebb_store::fleet::{self, NewDevice, TelemetryRow};
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Miners per site (the fleet's sites are filled in turn).
const SITE_MINERS: usize = 50_000;
/// Previews at once in a concurrent round.
const CONCURRENT: usize = 8;
const WATTS: f64 = 3_000.0;

#[derive(Clone, Debug, Serialize)]
pub struct PreviewReport {
    /// Always `"preview"`.
    pub benchmark: &'static str,
    /// Candidates in the preview's scope.
    pub miners: usize,
    pub runs: usize,
    /// Seeding the fleet (not part of any other figure).
    pub seed_seconds: f64,
    /// The first preview: the planner reads the org into its snapshot.
    pub first_ms: f64,
    /// Median of the sequential previews after it.
    pub median_ms: f64,
    pub p90_ms: f64,
    pub max_ms: f64,
    /// Median wall time of a round of 8 concurrent previews.
    pub concurrent_8_median_ms: f64,
    /// Times the planner read the fleet from the database during the benchmark.
    pub snapshot_builds: u64,
    /// What the preview selected (a check that it considered the fleet).
    pub selected: u32,
    pub expected_shed_kw: f64,
    /// Each sequential preview, in order (ms).
    pub raw_ms: Vec<f64>,
}

pub async fn bench_preview(miners: usize, runs: usize) -> anyhow::Result<PreviewReport> {
    if !(1..=super::MAX_MINERS).contains(&miners) {
        anyhow::bail!(
            "miners must be between 1 and {}, got {miners}",
            super::MAX_MINERS
        );
    }
    if !(1..=100).contains(&runs) {
        anyhow::bail!("runs must be between 1 and 100, got {runs}");
    }
    with_infra("preview", |db, nats| async move {
        run(&db, &nats, miners, runs).await
    })
    .await
}

async fn run(
    database_url: &str,
    nats_url: &str,
    miners: usize,
    runs: usize,
) -> anyhow::Result<PreviewReport> {
    let (pool, client) = connect(database_url, nats_url).await?;
    let seeding = Instant::now();
    let org = seed(&pool, miners).await?;
    let seed_seconds = round(seeding.elapsed().as_secs_f64(), 2);

    let planner = Arc::new(Planner::new(pool.clone(), PlannerConfig::default()));
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(ebb_planner::serve(
        planner.clone(),
        client.clone(),
        stop.clone(),
    ));
    let request = PreviewRequest(StartRequest {
        org,
        actor: Actor::ApiKey {
            key_id: uuid::Uuid::nil(),
            role: Role::Viewer,
        },
        mode: Mode::Kw {
            target_kw: Kw::new(miners as f64 * WATTS / 1000.0 / 2.0).context("target")?,
        },
        scope: Scope::default(),
        reason: "bench".into(),
        priority: 0,
        idempotency_key: None,
        external_source: None,
        external_reference: None,
        max_duration_s: None,
        allow_unbounded: false,
        restore_batch_size: None,
        restore_batch_interval_s: None,
        force_include_maintenance: false,
        min_power_w_override: None,
    });
    let ask = |client: async_nats::Client, request: PreviewRequest| async move {
        let started = Instant::now();
        let view: PlanView =
            ebb_bus::rpc::call(&client, &(), Some(org), &request, Duration::from_secs(30)).await?;
        Ok::<_, anyhow::Error>((started.elapsed(), view))
    };
    // The service may take a moment to subscribe.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (first, view) = loop {
        match ask(client.clone(), request.clone()).await {
            Ok(r) => break r,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "waiting for the planner");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.context("the first preview")),
        }
    };
    let mut sequential = Vec::with_capacity(runs);
    for _ in 0..runs {
        sequential.push(ask(client.clone(), request.clone()).await?.0);
    }
    let mut rounds = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let all = futures::future::try_join_all(
            (0..CONCURRENT).map(|_| ask(client.clone(), request.clone())),
        )
        .await?;
        debug_assert_eq!(all.len(), CONCURRENT);
        rounds.push(started.elapsed());
    }
    stop.cancel();
    server.await.context("the planner task")??;
    pool.close().await;
    let ms = |d: Duration| round(d.as_secs_f64() * 1000.0, 2);
    let quantile = |values: &[Duration], q: f64| {
        let mut v = values.to_vec();
        v.sort();
        ms(v[((v.len() - 1) as f64 * q).round() as usize])
    };
    Ok(PreviewReport {
        benchmark: "preview",
        miners,
        runs,
        seed_seconds,
        first_ms: ms(first),
        median_ms: quantile(&sequential, 0.5),
        p90_ms: quantile(&sequential, 0.9),
        max_ms: quantile(&sequential, 1.0),
        concurrent_8_median_ms: quantile(&rounds, 0.5),
        snapshot_builds: planner.snapshot().builds(),
        selected: view.selected_count,
        expected_shed_kw: view.expected_shed_kw,
        raw_ms: sequential.into_iter().map(ms).collect(),
    })
}

/// One org with `n` hashing miners on sites of at most [`SITE_MINERS`], each with a fresh
/// sample; hashrates spread so that efficiencies differ.
async fn seed(pool: &sqlx::PgPool, n: usize) -> anyhow::Result<OrgId> {
    let org = fleet::create_org(pool, "bench").await?;
    let now = Utc::now().timestamp_millis();
    for (k, start) in (0..n).step_by(SITE_MINERS).enumerate() {
        let count = SITE_MINERS.min(n - start);
        let code = SiteCode::parse(&format!("bench-{k}")).context("site code")?;
        fleet::create_site(pool, org, &code, &format!("Bench {k}"), None).await?;
        let site = fleet::site_by_code(pool, &code)
            .await?
            .context("the site vanished after its insert")?;
        let new: Vec<NewDevice> = (0..count)
            .map(|i| NewDevice {
                address: format!("10.{k}.{}.{}", i / 256, i % 256),
                make: "AntMiner".into(),
                model: "S19".into(),
                firmware: None,
                capabilities: Capabilities {
                    curtail_full: true,
                    ..Default::default()
                },
                nominal_power_w: Some(WATTS),
            })
            .collect();
        for chunk in new.chunks(10_000) {
            fleet::upsert_devices(pool, &site, chunk).await?;
        }
        let samples: Vec<TelemetryRow> = fleet::inventory(pool, site.id)
            .await?
            .into_iter()
            .enumerate()
            .map(|(i, d)| TelemetryRow {
                device_id: d.device_id,
                reachable: true,
                power_w: Some(WATTS),
                hashrate_ths: Some(80.0 + (i % 400) as f64 / 10.0),
                sampled_at_ms: now,
            })
            .collect();
        for chunk in samples.chunks(2_000) {
            fleet::ingest_telemetry(pool, site.id, chunk).await?;
        }
    }
    Ok(org)
}
