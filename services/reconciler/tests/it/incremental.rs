//! Issue 12, item 5: a pass does work proportional to what changed. It reads an event's targets
//! whole once, then only the rows its own writes, a result or telemetry named; with nothing new
//! it reads no target and decides nothing.

use crate::harness::harness;
use ebb_reconciler::{Hooks, PassStats, Reconciler};
use ebb_store::fleet::{self, TelemetryRow};

#[tokio::test]
async fn a_pass_reads_only_what_changed() {
    const N: usize = 40;
    let h = harness(N).await;
    let site = fleet::site_by_code(h.db.pool(), &ebb_domain::SiteCode::parse("site-a").unwrap())
        .await
        .unwrap()
        .unwrap();
    // Every miner hashing, so the planner can select them (no reconciler intake runs here).
    let sample = |device_id, power_w, hashrate_ths| TelemetryRow {
        device_id,
        reachable: true,
        power_w: Some(power_w),
        hashrate_ths: Some(hashrate_ths),
        sampled_at_ms: chrono::Utc::now().timestamp_millis(),
    };
    let awake: Vec<TelemetryRow> = h
        .devices
        .iter()
        .map(|d| sample(*d, 3000.0, 100.0))
        .collect();
    fleet::ingest_telemetry(h.db.pool(), site.id, &awake)
        .await
        .unwrap();
    let id = h.start(h.start_request(N as f64 * 3.0)).await;
    let js = async_nats::jetstream::new(h.nats.client().await.unwrap());
    let mut rec = Reconciler::new(
        &h.reconciler_config("incremental"),
        Hooks::default(),
        h.db.pool().clone(),
        js,
        None,
    );
    let stats = |targets_read, events_decided| PassStats {
        targets_read,
        events_decided,
        targets_decided: events_decided * N,
        live_events: 1,
    };

    // A new event is read whole, decided, and every target is sent.
    rec.pass(Vec::new()).await;
    assert_eq!(rec.last_pass(), stats(N, 1));
    assert_eq!(rec.cached_targets(), N);
    // The pass's own writes named every target: those rows (and only those) are read again.
    rec.pass(Vec::new()).await;
    assert_eq!(rec.last_pass(), stats(N, 1));
    // Nothing new: no target read, nothing decided, though every target is live.
    rec.pass(Vec::new()).await;
    assert_eq!(rec.last_pass(), stats(0, 0));

    // Telemetry for one device: its row alone is read, and the event decided again.
    let device = h.devices[0];
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    fleet::ingest_telemetry(h.db.pool(), site.id, &[sample(device, 50.0, 0.0)])
        .await
        .unwrap();
    rec.telemetry_touched().lock().unwrap().insert(device);
    rec.pass(Vec::new()).await;
    assert_eq!(rec.last_pass(), stats(1, 1));
    // It confirmed: that write is read back, then quiet again.
    let states = h.target_states(id).await;
    assert_eq!(states[&device], ebb_domain::TargetState::Confirmed);
    rec.pass(Vec::new()).await;
    assert_eq!(rec.last_pass(), stats(1, 1));
    rec.pass(Vec::new()).await;
    assert_eq!(rec.last_pass(), stats(0, 0));

    // A Stop by the planner changes the event's state: the event is read whole again.
    h.stop(id).await;
    rec.pass(Vec::new()).await;
    assert_eq!(rec.last_pass().targets_read, N);
}
