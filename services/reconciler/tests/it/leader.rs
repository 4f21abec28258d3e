//! Leadership (DESIGN §5.9, §5.10): one leader at a time, a new leader resumes from the database,
//! including a batch orphaned between its `dispatching` stamp and its publish.

use super::harness::harness;
use ebb_domain::{EventState, TargetState};
use ebb_reconciler::Hooks;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[tokio::test]
async fn a_new_leader_finishes_an_event_orphaned_between_stamp_and_publish() {
    let h = harness(4).await;
    // The first leader ingests telemetry, then dies right after its first dispatching stamp.
    let reached = Arc::new(AtomicBool::new(false));
    let flag = reached.clone();
    let hooks = Hooks {
        after_stamp: Some(Arc::new(move || {
            flag.store(true, Ordering::SeqCst);
            true
        })),
    };
    let first = h.spawn_reconciler("first", hooks);
    h.wait_for_telemetry().await;
    let id = h.start(h.start_request(5.0)).await;
    h.wait(
        "the first leader to stamp",
        Duration::from_secs(10),
        || async { reached.load(Ordering::SeqCst) },
    )
    .await;

    let states = h.target_states(id).await;
    assert!(
        states.values().any(|s| *s == TargetState::Dispatching),
        "{states:?}"
    );
    assert!(
        h.site_agent.batches().is_empty(),
        "nothing was published before the kill"
    );
    let (_, seq_before, _) = ebb_store::heartbeat::read(h.db.pool(), ebb_reconciler::HEARTBEAT)
        .await
        .unwrap()
        .unwrap();

    first.abort(); // the process dies: its lock connection closes with it
    let _ = first.await;

    let _second = h.spawn_reconciler("second", Hooks::default());
    h.wait_event(id, EventState::Active, Duration::from_secs(20))
        .await;
    let states = h.target_states(id).await;
    assert!(
        states.values().all(|s| *s == TargetState::Confirmed),
        "{states:?}"
    );
    let (holder, seq_after, _) = ebb_store::heartbeat::read(h.db.pool(), ebb_reconciler::HEARTBEAT)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(holder, "second");
    assert!(
        seq_after > seq_before,
        "heartbeat moved past {seq_before}: {seq_after}"
    );
}

#[tokio::test]
async fn only_one_reconciler_leads() {
    let h = harness(1).await;
    let _a = h.spawn_reconciler("a", Hooks::default());
    h.wait("a heartbeat", Duration::from_secs(10), || async {
        ebb_store::heartbeat::read(h.db.pool(), ebb_reconciler::HEARTBEAT)
            .await
            .unwrap()
            .is_some()
    })
    .await;
    let _b = h.spawn_reconciler("b", Hooks::default());
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (holder, _, _) = ebb_store::heartbeat::read(h.db.pool(), ebb_reconciler::HEARTBEAT)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            holder, "a",
            "the standby must not act while the leader holds the lock"
        );
    }
}
