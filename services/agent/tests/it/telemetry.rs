//! Poll cycles: the samples match the simulator's truth in the units Ebb uses (W, TH/s) on every
//! protocol, and miners that do not answer are reported unreachable, never as zero power.

use std::time::Duration;

use ebb_bus::InventoryDevice;
use ebb_domain::{Capabilities, DeviceId};
use ebb_minersim::{Fault, FaultSelector};

use crate::{instant_paused, mixed, spawn_agent};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_cycle_matches_the_truth() {
    // An inventory device where nothing listens (a miner unplugged before the agent started).
    let nobody = InventoryDevice {
        device_id: DeviceId::new(),
        address: "127.255.255.253".into(),
        make: "antminer".into(),
        model: "Antminer S19".into(),
        firmware: None,
        capabilities: Capabilities {
            curtail_full: true,
            ..Capabilities::default()
        },
    };
    let mut h = spawn_agent(
        "poll",
        mixed(2, 2, 2),
        instant_paused(),
        vec![nobody.clone()],
        |c| {
            c.poll_interval = Duration::from_millis(500);
            c.call_timeout = Duration::from_secs(2);
        },
    )
    .await;
    let n = h.devices.len();
    let gone = h.devices[0].clone();
    let t = h.telemetry_where(|t| t.samples.len() == n).await;
    assert_eq!(t.site, h.site);
    assert_eq!(t.dropped_invalid, 0);
    for (d, s) in h.devices.iter().zip(&t.samples) {
        assert_eq!(s.device_id, d.device_id, "samples keep inventory order");
        if d.device_id == nobody.device_id {
            assert!(
                !s.reachable && s.power_w.is_none() && s.hashrate_ths.is_none(),
                "{s:?}"
            );
            continue;
        }
        let truth = h.sim.truth(h.address(d)).unwrap();
        assert!(s.reachable, "{}", d.address);
        let (p, ths) = (s.power_w.unwrap(), s.hashrate_ths.unwrap());
        assert!(
            (p - truth.power_w).abs() <= truth.power_w * 0.03,
            "{} ({}): {p} W vs {} W",
            d.address,
            d.model,
            truth.power_w
        );
        assert!(
            (ths - truth.hashrate_ths).abs() <= truth.hashrate_ths * 0.03,
            "{} ({}): {ths} TH/s vs {} TH/s",
            d.address,
            d.model,
            truth.hashrate_ths
        );
        assert!(s.sampled_at_ms > 1_600_000_000_000);
    }

    // A miner that goes away is reported unreachable in the following cycles, with no values.
    h.sim
        .inject_fault(&FaultSelector::address(h.address(&gone)), Fault::Gone)
        .unwrap();
    let t = h
        .telemetry_where(|t| {
            t.samples
                .iter()
                .any(|s| s.device_id == gone.device_id && !s.reachable)
        })
        .await;
    let s = t
        .samples
        .iter()
        .find(|s| s.device_id == gone.device_id)
        .unwrap();
    assert!(s.power_w.is_none() && s.hashrate_ths.is_none());
    assert_eq!(t.samples.iter().filter(|s| !s.reachable).count(), 2);
    // The cycles are metrics: how long one takes, how late the site's telemetry is, how many
    // miners did not answer, how long each read took.
    use ebb_testkit::metrics::{gauge, histogram};
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while gauge("ebb_agent_miners_unreachable") != Some(2.0) {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            gauge("ebb_agent_miners_unreachable")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!histogram("ebb_agent_poll_cycle_seconds").is_empty());
    assert!(!histogram("ebb_agent_miner_call_seconds{op=read}").is_empty());
    let lag = gauge(&format!(
        r#"ebb_agent_poll_lag_seconds{{site="{}"}}"#,
        h.site
    ));
    assert!(lag.is_some_and(|s| (0.0..5.0).contains(&s)), "{lag:?}");

    // A miner reporting NaN power is dropped and counted, the others are still published.
    let nan = h.devices[3].clone();
    h.sim
        .inject_fault(&FaultSelector::address(h.address(&nan)), Fault::NanPower)
        .unwrap();
    let t = h.telemetry_where(|t| t.dropped_invalid == 1).await;
    assert!(t.samples.iter().all(|s| s.device_id != nan.device_id));
    assert_eq!(t.samples.len(), n - 1);
    h.stop().await;
}
