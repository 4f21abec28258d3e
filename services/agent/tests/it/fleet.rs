//! A site-sized batch: 2,000 miners across the three protocols curtail and restore in one batch
//! each, and the simulator's true power confirms every one.

use std::time::{Duration, Instant};

use ebb_domain::{CommandKind, CurtailLevel, Outcome};
use ebb_minersim::Mode;

use crate::{assert_all, instant_paused, mixed, spawn_agent};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_miners_curtail_and_restore() {
    // 2,000 miners need about 5,000 listening sockets; the test process may hold 20,000.
    let (wm, am, lux) = (667, 667, 666);
    let mut h = spawn_agent("fleet", mixed(wm, am, lux), instant_paused(), vec![], |c| {
        c.call_timeout = Duration::from_secs(10);
    })
    .await;
    let all = h.devices.clone();
    assert_eq!(all.len(), 2_000);
    let nominal: Vec<f64> = all
        .iter()
        .map(|d| h.sim.truth(h.address(d)).unwrap().power_w)
        .collect();
    let site_kw: f64 = nominal.iter().sum::<f64>() / 1000.0;

    let started = Instant::now();
    let curtail = h.batch(
        CommandKind::Curtail {
            level: CurtailLevel::Full,
        },
        &all,
    );
    let r = h.run(&curtail).await;
    let curtail_took = started.elapsed();
    assert_eq!(r.results.len(), all.len());
    assert_all(&r, "curtail", |o| *o == Outcome::Ok);
    let mut asleep_kw = 0.0;
    for (d, p0) in all.iter().zip(&nominal) {
        let t = h.sim.truth(h.address(d)).unwrap();
        assert_eq!(t.mode, Mode::Sleeping, "{} ({})", d.address, d.model);
        assert!(
            t.power_w < p0 * 0.05 && t.hashrate_ths == 0.0,
            "{} draws {} W",
            d.address,
            t.power_w
        );
        asleep_kw += t.power_w / 1000.0;
    }
    // The post-command telemetry covers the whole batch.
    let mut seen = 0;
    while seen < all.len() {
        let t = h.telemetry_where(|_| true).await;
        seen += t.samples.len() + t.dropped_invalid as usize;
    }

    let started = Instant::now();
    let mut restore = h.batch(CommandKind::Uncurtail, &all);
    for (d, res) in restore.devices.iter_mut().zip(&r.results) {
        d.restore_power_limit_w = res.prior_power_limit_w;
    }
    let r = h.run(&restore).await;
    let restore_took = started.elapsed();
    assert_all(&r, "restore", |o| *o == Outcome::Ok);
    for (d, p0) in all.iter().zip(&nominal) {
        let t = h.sim.truth(h.address(d)).unwrap();
        assert_eq!(t.mode, Mode::Hashing, "{} ({})", d.address, d.model);
        assert!(
            (t.power_w - p0).abs() / p0 < 0.02,
            "{} draws {} W, was {p0} W",
            d.address,
            t.power_w
        );
    }
    eprintln!(
        "2,000 miners ({wm} whatsminer v3, {am} antminer stock, {lux} luxos): \
         curtail {curtail_took:?} ({site_kw:.0} kW -> {asleep_kw:.0} kW), restore {restore_took:?}"
    );
    h.stop().await;
}
