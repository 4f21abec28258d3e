//! The control loop meets its dependencies' faults (issue 10): a command stream that refuses
//! batches, a conditional update another writer won, a table it cannot read. Each is counted
//! by its own metric family, costs no attempt, and the event still completes once the fault is
//! gone.

use crate::harness::harness;
use async_nats::jetstream;
use ebb_bus::streams;
use ebb_domain::EventState;
use ebb_reconciler::Hooks;
use ebb_testkit::metrics::counter;
use std::time::Duration;

#[tokio::test]
async fn the_loop_counts_and_survives_its_dependencies_faults() {
    ebb_testkit::metrics::recorder();
    let h = harness(3).await;
    let _r = h.spawn_reconciler("r", Hooks::default());
    h.wait_for_telemetry().await;
    let pool = h.db.pool();
    let exec = |sql: &'static str| async move {
        sqlx::query(sql).execute(pool).await.unwrap();
    };

    // The command stream takes nothing more: every publish is refused.
    let js = jetstream::new(h.nats.client().await.unwrap());
    let mut cmd = js.get_stream(streams::CMD).await.unwrap();
    let open = cmd.info().await.unwrap().config.clone();
    js.update_stream(jetstream::stream::Config {
        max_bytes: 1,
        discard: jetstream::stream::DiscardPolicy::New,
        ..open.clone()
    })
    .await
    .unwrap();
    // And a concurrent writer wins every confirmation.
    exec(
        "CREATE FUNCTION lose_confirm() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.state = 'confirmed' AND OLD.state <> 'confirmed' THEN RETURN NULL; END IF;
           RETURN NEW;
         END $$",
    )
    .await;

    let id = h.start(h.start_request(5.0)).await;
    h.wait("a refused publish", Duration::from_secs(20), || async {
        counter("ebb_reconciler_publish_failures_total{kind=curtail_full}")
            + counter("ebb_reconciler_publish_failures_total{kind=curtail_efficiency}")
            + counter("ebb_reconciler_publish_failures_total{kind=set_power_target}")
            > 0
    })
    .await;
    let spent: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(retry_count), 0) FROM curtailment_target WHERE event_id = $1",
    )
    .bind(id.0)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(spent, 0, "a batch the stream refused costs no attempt");

    exec(
        "CREATE TRIGGER lose_confirm BEFORE UPDATE ON curtailment_target
         FOR EACH ROW EXECUTE FUNCTION lose_confirm()",
    )
    .await;
    js.update_stream(open).await.unwrap();
    h.wait("a lost confirmation", Duration::from_secs(20), || async {
        counter("ebb_reconciler_race_lost_total{what=target}") > 0
    })
    .await;
    exec("DROP TRIGGER lose_confirm ON curtailment_target").await;
    h.wait_event(id, EventState::Active, Duration::from_secs(20))
        .await;

    // The targets cannot be read: the event's work fails, the pass goes on.
    exec("ALTER TABLE curtailment_target RENAME TO curtailment_target_away").await;
    h.wait("an event error", Duration::from_secs(20), || async {
        counter("ebb_reconciler_event_errors_total") > 0
    })
    .await;
    exec("ALTER TABLE curtailment_target_away RENAME TO curtailment_target").await;
    // The live events cannot be listed: the pass fails, the next one runs.
    exec("ALTER TABLE curtailment_event RENAME TO curtailment_event_away").await;
    h.wait("a failed pass", Duration::from_secs(20), || async {
        counter("ebb_reconciler_pass_failures_total") > 0
    })
    .await;
    exec("ALTER TABLE curtailment_event_away RENAME TO curtailment_event").await;

    h.stop(id).await;
    h.wait_event(id, EventState::Completed, Duration::from_secs(30))
        .await;
}
