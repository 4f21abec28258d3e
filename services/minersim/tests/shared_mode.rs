//! Shared mode: one listener per port on 0.0.0.0 for the whole fleet.
//!
//! This binary binds ports 80, 4028 and 4433 on 0.0.0.0, so it must run alone: it fails (it
//! does not skip) when anything else holds those ports, including a per-address simulator
//! from another test run. `cargo test` runs test binaries one after another, so
//! `cargo test -p ebb-minersim` is fine; run it by itself with
//! `cargo test -p ebb-minersim --test shared_mode`.
//!
//! One test function on purpose: two shared simulators cannot coexist.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use asic_rs::MinerFactory;
use asic_rs::core::data::hashrate::HashRateUnit;
use ebb_minersim::{FleetSpec, GroupSpec, ListenMode, Mode, Model, Physics, SimOptions, SiteSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_mode_serves_a_fleet_from_one_listener_per_port() {
    let spec = FleetSpec::new(vec![SiteSpec::new(
        "shared",
        Model::ALL.iter().map(|&m| GroupSpec::new(m, 40)).collect(),
    )]);
    let opts = SimOptions::default()
        .with_mode(ListenMode::Shared)
        .with_physics(Physics::instant());
    let sim = ebb_minersim::start(spec, opts)
        .await
        .expect("shared mode binds 0.0.0.0:80, :4028 and :4433 (they must be free)");
    assert_eq!(sim.len(), 320);

    // Every model is detected and read by address, through the shared listeners.
    for model in Model::ALL {
        let info = sim.miners().into_iter().find(|m| m.model == model).unwrap();
        let miner = MinerFactory::new()
            .get_miner(IpAddr::V4(info.address))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{model} detected"));
        let data = miner.get_data().await;
        let truth = sim.truth(info.address).unwrap();
        let read = data.wattage.unwrap().as_watts();
        assert!(
            (read - truth.power_w).abs() < truth.power_w * 0.02,
            "{model}: {read}"
        );
        let ths = data.hashrate.unwrap().as_unit(HashRateUnit::TeraHash).value;
        assert!(
            (ths - truth.hashrate_ths).abs() < truth.hashrate_ths * 0.02,
            "{model}"
        );
        assert!(miner.pause(None).await.unwrap(), "{model} pauses");
        assert_eq!(
            sim.truth(info.address).unwrap().mode,
            Mode::Sleeping,
            "{model}"
        );
    }

    // A scan of one /24 of the fleet finds exactly the miners in it.
    let first = sim.addresses()[0];
    let [a, b, c, d] = first.octets();
    let in_block = sim
        .addresses()
        .iter()
        .filter(|ip| ip.octets()[..3] == [a, b, c])
        .count();
    let found = MinerFactory::from_range(&format!("{a}.{b}.{c}.{d}-254"))
        .unwrap()
        .scan()
        .await
        .unwrap();
    assert_eq!(found.len(), in_block);

    // An address that is not a simulated miner is refused.
    let stranger = Ipv4Addr::new(127, 0, 0, 1);
    assert!(sim.miner(stranger).is_none());
    // The reset may beat the client to the end of its connect; either way, no reply.
    if let Ok(mut s) = TcpStream::connect((stranger, 4028)).await {
        let _ = s.write_all(b"{\"command\":\"version\"}").await;
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .expect("the connection is closed at once")
            .unwrap_or(0);
        assert_eq!(n, 0, "no reply for a stranger");
    }
    sim.shutdown().await;

    // Memory: 100,000 miners in one process.
    let before = rss_bytes();
    let big = FleetSpec::new(vec![SiteSpec::new(
        "big",
        Model::ALL
            .iter()
            .map(|&m| GroupSpec::new(m, 12_500))
            .collect(),
    )]);
    let sim = ebb_minersim::start(
        big,
        SimOptions::default()
            .with_mode(ListenMode::Shared)
            .with_physics(Physics::instant()),
    )
    .await
    .expect("100,000 miners start in shared mode");
    assert_eq!(sim.len(), 100_000);
    let per_miner = rss_bytes().saturating_sub(before) / 100_000;
    println!("resident memory per simulated miner: {per_miner} bytes");
    assert!(per_miner < 1024, "{per_miner} bytes per miner");
    let last = *sim.addresses().last().unwrap();
    let miner = MinerFactory::new()
        .get_miner(IpAddr::V4(last))
        .await
        .unwrap()
        .expect("the last of 100,000 is detected");
    assert!(miner.get_data().await.wattage.is_some());
    sim.shutdown().await;
}
