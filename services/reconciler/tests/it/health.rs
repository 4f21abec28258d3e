//! The control loop's own health (issue 10): a pass that panics outside any event is counted and
//! the next pass runs; the heartbeat row says who leads, in which term, what the last pass did,
//! and whether the leader stopped cleanly.

use crate::harness::harness;
use ebb_domain::EventState;
use ebb_reconciler::Hooks;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

#[tokio::test]
async fn a_pass_that_panics_is_survived_and_the_event_completes() {
    use ebb_obs::names;
    use ebb_testkit::metrics::{counter, histogram};
    ebb_testkit::metrics::recorder();
    let h = harness(3).await;
    // The first five passes panic before doing anything.
    let passes = Arc::new(AtomicUsize::new(0));
    let counted = passes.clone();
    let hooks = Hooks {
        before_pass: Some(Arc::new(move || {
            if counted.fetch_add(1, Ordering::SeqCst) < 5 {
                panic!("injected: a pass panics outside any event");
            }
        })),
        ..Hooks::default()
    };
    let r = h.spawn_reconciler("r", hooks);
    h.wait_for_telemetry().await;
    h.wait("five panicking passes", Duration::from_secs(20), || async {
        passes.load(Ordering::SeqCst) > 5
    })
    .await;
    assert!(!r.is_finished(), "the reconciler survived its panics");
    let id = h.start(h.start_request(5.0)).await;
    h.wait_event(id, EventState::Active, Duration::from_secs(20))
        .await;
    h.stop(id).await;
    h.wait_event(id, EventState::Completed, Duration::from_secs(30))
        .await;
    // The control loop's metrics (issue 10): the panics, the time to active, the commands.
    assert!(counter(names::RECONCILER_PASS_PANICS) >= 5);
    assert!(!histogram(names::RECONCILER_PASS_SECONDS).is_empty());
    assert_eq!(
        ebb_testkit::metrics::gauge(names::RECONCILER_IS_LEADER),
        Some(1.0),
        "the running reconciler leads"
    );
    assert!(counter(names::RECONCILER_TELEMETRY_SAMPLES) >= 3);
    assert!(
        counter(&format!(
            "{}{{kind=uncurtail}}",
            names::RECONCILER_BATCHES_PUBLISHED
        )) >= 1
    );
    assert!(
        counter(&format!(
            "{}{{from=dispatched,to=confirmed}}",
            names::RECONCILER_TARGET_TRANSITIONS
        )) >= 1,
        "targets moved, counted by from and to"
    );
    let took = histogram(names::CURTAILMENT_START_TO_ACTIVE_SECONDS);
    assert_eq!(took.len(), 1, "{took:?}");
    assert!(took[0] > 0.0 && took[0] < 20.0, "{took:?}");
    let targets = h.target_states(id).await.len() as u64;
    assert_eq!(
        counter(&format!(
            "{}{{kind=curtail_full}}",
            names::RECONCILER_COMMANDS_PUBLISHED
        )) + counter(&format!(
            "{}{{kind=curtail_efficiency}}",
            names::RECONCILER_COMMANDS_PUBLISHED
        )) + counter(&format!(
            "{}{{kind=set_power_target}}",
            names::RECONCILER_COMMANDS_PUBLISHED
        )),
        targets,
        "one command per target, by kind"
    );
    assert_eq!(
        counter(&format!(
            "{}{{kind=uncurtail}}",
            names::RECONCILER_COMMANDS_PUBLISHED
        )),
        targets
    );
}

#[tokio::test]
async fn the_heartbeat_says_who_leads_what_the_last_pass_did_and_how_it_stopped() {
    let h = harness(3).await;
    let stop_first = h.shutdown.child_token();
    let r = h.spawn_reconciler_until(
        Hooks::default(),
        h.reconciler_config("first"),
        stop_first.clone(),
    );
    h.wait_for_telemetry().await;
    let id = h.start(h.start_request(5.0)).await;
    h.wait_event(id, EventState::Active, Duration::from_secs(20))
        .await;
    let beat = || async {
        ebb_store::heartbeat::read_full(h.db.pool(), ebb_reconciler::HEARTBEAT)
            .await
            .unwrap()
            .unwrap()
    };
    h.wait(
        "a beat that saw the live event",
        Duration::from_secs(10),
        || async { beat().await.live_events == Some(1) },
    )
    .await;
    let b = beat().await;
    assert_eq!((b.holder.as_str(), b.epoch), ("first", 1));
    let (started, finished) = (b.pass_started_at.unwrap(), b.pass_finished_at.unwrap());
    assert!(started <= finished && finished <= b.beat_at, "{b:?}");
    assert!(b.pass_ms.unwrap() >= 0.0 && b.stopped_at.is_none(), "{b:?}");

    // A clean stop is the leader's last write.
    stop_first.cancel();
    tokio::time::timeout(Duration::from_secs(30), r)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let b = beat().await;
    assert!(b.stopped_at.is_some(), "{b:?}");

    // The next leader starts a new term, and its beats clear the stop.
    let _second = h.spawn_reconciler_with(Hooks::default(), h.reconciler_config("second"));
    h.wait(
        "the second term's first beat",
        Duration::from_secs(10),
        || async {
            let b = beat().await;
            b.holder == "second" && b.epoch == 2 && b.stopped_at.is_none()
        },
    )
    .await;
}

#[tokio::test]
async fn the_fleet_figures_show_what_a_live_event_sheds() {
    let h = harness(4).await;
    let _r = h.spawn_reconciler("r", Hooks::default());
    h.wait_for_telemetry().await;
    let id = h.start(h.start_request(5.0)).await;
    h.wait_event(id, EventState::Active, Duration::from_secs(20))
        .await;
    let targets = h.target_states(id).await.len();
    assert!(targets > 0);
    // Every target's miner asleep in telemetry: the shed is its baseline less what it still draws.
    h.wait(
        "telemetry of the sleeping miners",
        Duration::from_secs(10),
        || async {
            let f = ebb_store::gauges::read(h.db.pool()).await.unwrap();
            f.sites[0].sleeping == targets as i64
        },
    )
    .await;
    let f = ebb_store::gauges::read(h.db.pool()).await.unwrap();
    let site = &f.sites[0];
    let expected_shed = targets as f64 * (crate::harness::BASELINE_W - 60.0);
    assert!((site.shed_w - expected_shed).abs() < 1e-6, "{site:?}");
    assert!((site.promised_w - targets as f64 * crate::harness::BASELINE_W).abs() < 1e-6);
    assert_eq!(site.hashing + site.sleeping, 4, "{site:?}");
    let hashing = (4 - targets) as f64;
    assert!(
        (site.power_w - (hashing * crate::harness::BASELINE_W + targets as f64 * 60.0)).abs()
            < 1e-6,
        "{site:?}"
    );
    assert!(site.telemetry_age_s.unwrap() < 30.0);
    let count = |list: &[(String, i64)], state: &str| {
        list.iter().find(|(s, _)| s == state).map(|(_, n)| *n)
    };
    assert_eq!(count(&f.events, "active"), Some(1));
    assert_eq!(
        count(&f.events, "completed"),
        Some(0),
        "every state is listed"
    );
    assert_eq!(count(&f.targets, "confirmed"), Some(targets as i64));
    assert!(f.heartbeat_age_s.unwrap() < 30.0);

    // Once it has ended, nothing is promised or shed.
    h.stop(id).await;
    h.wait_event(id, EventState::Completed, Duration::from_secs(30))
        .await;
    let f = ebb_store::gauges::read(h.db.pool()).await.unwrap();
    assert_eq!((f.sites[0].shed_w, f.sites[0].promised_w), (0.0, 0.0));
    assert_eq!(count(&f.events, "completed"), Some(1));
}
