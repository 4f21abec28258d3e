//! The gauges job against a real database: each refresh is timed, and the figures it reads
//! become the gauges a dashboard reads.

use ebb_testkit::metrics::{gauge, histogram, recorder};
use ebb_testkit::world::World;
use std::time::{Duration, Instant};

#[tokio::test]
async fn each_refresh_is_timed_and_sets_the_fleet_gauges() {
    recorder();
    let db = ebb_testkit::TestDb::new().await.unwrap();
    World::builder()
        .site("site-a", |s| s.miners(3).watts(3000.0).hashing())
        .build(&db)
        .await
        .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let job = tokio::spawn(ebb_worker::gauges::run(
        db.pool().clone(),
        Duration::from_millis(50),
        stop.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    while histogram("ebb_worker_gauges_refresh_seconds").len() < 2 {
        assert!(Instant::now() < deadline, "no refresh was timed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        gauge(r#"ebb_site_miners{site="site-a",state="hashing"}"#),
        Some(3.0)
    );
    assert_eq!(
        gauge(r#"ebb_site_power_watts{site="site-a"}"#),
        Some(9000.0)
    );
    stop.cancel();
    job.await.unwrap();
}
