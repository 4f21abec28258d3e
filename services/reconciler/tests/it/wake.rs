//! A Start is acted on at once: the planner's transaction notifies the leader when it commits,
//! so the first batch does not wait for the next telemetry message or safety tick.

use crate::harness::harness;
use ebb_domain::TargetState;
use ebb_reconciler::{Hooks, ReconcilerConfig};
use std::time::Duration;

#[tokio::test]
async fn a_start_wakes_the_leader_without_telemetry_or_a_tick() {
    let h = harness(3).await;
    // A safety tick far longer than the test: only a notification can wake the leader.
    let cfg = ReconcilerConfig {
        tick_ms: 120_000,
        ..h.reconciler_config("r")
    };
    let _r = h.spawn_reconciler_with(Hooks::default(), cfg);
    h.wait_for_telemetry().await;
    // No telemetry from here on, and the passes it woke are done.
    h.site_agent.mute(true);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let id = h.start(h.start_request(5.0)).await;
    h.wait(
        "the Start's targets dispatched",
        Duration::from_secs(20),
        || async {
            let states = h.target_states(id).await;
            !states.is_empty() && states.values().all(|s| *s != TargetState::Pending)
        },
    )
    .await;
}
