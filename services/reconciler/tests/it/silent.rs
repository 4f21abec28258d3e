//! Issue 11: a site whose agent went silent costs its targets no attempts. While the agent is
//! gone (no telemetry, its batch left unacked), the dispatched targets wait however long their
//! result deadline has passed; when it is back, the batch JetStream redelivered is executed and
//! the event goes active with every target on its first attempt.

use crate::harness::harness;
use ebb_domain::{EventState, TargetState};
use ebb_reconciler::{Hooks, ReconcilerConfig};
use std::time::Duration;

#[tokio::test]
async fn a_silent_sites_targets_are_charged_nothing_until_its_agent_is_back() {
    use ebb_testkit::metrics::gauge;
    ebb_testkit::metrics::recorder();
    let silent = r#"ebb_reconciler_site_silent{site="site-a"}"#;
    let h = harness(3).await;
    // The result deadline is longer than the agent consumer's ack wait (15 s), as in production
    // (600 s): a batch a dead agent held comes back to it before the deadline.
    let cfg = ReconcilerConfig {
        result_deadline_s: 20,
        site_silent_after_s: 5,
        ..h.reconciler_config("r")
    };
    let _r = h.spawn_reconciler_with(Hooks::default(), cfg);
    h.wait_for_telemetry().await;
    // The agent dies; the reconciler notices after 5 s of silence.
    h.site_agent.mute(true);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(gauge(silent), Some(1.0), "the silence is a metric");
    let id = h.start(h.start_request(5.0)).await;
    // Past the 20 s result deadline.
    tokio::time::sleep(Duration::from_secs(25)).await;
    let rows: Vec<(String, i32)> =
        sqlx::query_as("SELECT state, retry_count FROM curtailment_target WHERE event_id = $1")
            .bind(id.0)
            .fetch_all(h.db.pool())
            .await
            .unwrap();
    assert!(!rows.is_empty());
    assert!(
        rows.iter().all(|(s, n)| s == "dispatched" && *n == 0),
        "no attempt was charged while the site was silent: {rows:?}"
    );
    assert_eq!(h.event_state(id).await, EventState::Pending);

    // The agent is back: the redelivered batch runs and every target confirms.
    h.site_agent.mute(false);
    h.wait_event(id, EventState::Active, Duration::from_secs(40))
        .await;
    let states = h.target_states(id).await;
    assert!(
        states.values().all(|s| *s == TargetState::Confirmed),
        "{states:?}"
    );
    assert_eq!(gauge(silent), Some(0.0), "and so is its end");
}
