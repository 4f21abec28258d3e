//! Unmodified asic-rs detects, reads and controls every simulated model.

use std::net::IpAddr;
use std::time::Duration;

use asic_rs::MinerFactory;
use asic_rs::core::data::hashrate::HashRateUnit;
use ebb_minersim::{FleetSpec, Mode, Model, SimOptions};
use measurements::Power;

use crate::{address_of, assert_close, detect, instant, one_of_each, spawn};

/// What asic-rs must report for each model: (make, model, firmware).
fn expected(model: Model) -> (&'static str, &'static str, &'static str) {
    match model {
        Model::M30s => ("Whatsminer", "M30SVE10", "WhatsMiner Stock"),
        Model::M50 => ("Whatsminer", "M50VH50", "WhatsMiner Stock"),
        Model::M60 => ("Whatsminer", "M60VK10", "WhatsMiner Stock"),
        Model::M60s => ("Whatsminer", "M60SVK40", "WhatsMiner Stock"),
        Model::S19 => ("Antminer", "S19", "AntMiner Stock"),
        Model::S19Pro => ("Antminer", "S19Pro", "AntMiner Stock"),
        Model::S21 => ("Antminer", "S21", "AntMiner Stock"),
        Model::S19kProLuxos => ("Antminer", "S19KPro", "LuxOS"),
    }
}

#[tokio::test]
async fn asic_rs_identifies_and_reads_every_model() {
    let sim = spawn(one_of_each(), instant()).await;
    for info in sim.miners() {
        let miner = detect(info.address).await;
        let device = miner.get_device_info();
        let (make, model, firmware) = expected(info.model);
        assert_eq!(
            (
                device.make.as_str(),
                device.model.as_str(),
                device.firmware.as_str()
            ),
            (make, model, firmware),
            "{} at {}",
            info.model,
            info.address
        );

        let data = miner.get_data().await;
        let truth = sim.truth(info.address).unwrap();
        let watts = data.wattage.map(|w| w.as_watts()).expect("wattage is read");
        let ths = data
            .hashrate
            .map(|h| h.as_unit(HashRateUnit::TeraHash).value)
            .expect("hashrate is read");
        assert_close(&format!("{} power", info.model), watts, truth.power_w, 2.0);
        assert_close(
            &format!("{} hashrate", info.model),
            ths,
            truth.hashrate_ths,
            2.0,
        );
        assert!(data.is_mining, "{} reports mining", info.model);
        assert_eq!(data.hashboards.len(), 3, "{} boards", info.model);
        let board_sum: f64 = data
            .hashboards
            .iter()
            .filter_map(|b| b.hashrate.clone())
            .map(|h| h.as_unit(HashRateUnit::TeraHash).value)
            .sum();
        assert_close(
            &format!("{} board sum", info.model),
            board_sum,
            truth.hashrate_ths,
            2.0,
        );
        assert!(data.mac.is_some(), "{} mac", info.model);
        assert!(
            data.uptime.is_some_and(|u| u > Duration::from_secs(3000)),
            "{} uptime",
            info.model
        );
        assert!(!data.pools.is_empty(), "{} pools", info.model);
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn pause_resume_and_power_limit_change_the_truth() {
    let sim = spawn(one_of_each(), instant()).await;
    for info in sim.miners() {
        let miner = detect(info.address).await;
        let what = info.model;
        assert!(miner.supports_pause() && miner.supports_resume(), "{what}");

        assert!(
            miner.pause(None).await.expect("pause is sent"),
            "{what} confirms pause"
        );
        let truth = sim.truth(info.address).unwrap();
        assert_eq!(truth.mode, Mode::Sleeping, "{what}");
        assert!(
            truth.power_w > 0.0 && truth.power_w < info.nominal_power_w * 0.05,
            "{what} idles"
        );
        assert_eq!(truth.hashrate_ths, 0.0, "{what}");
        let data = miner.get_data().await;
        let watts = data.wattage.map(|w| w.as_watts()).expect("wattage");
        assert_close(&format!("{what} idle power"), watts, truth.power_w, 2.0);
        let ths = data
            .hashrate
            .map(|h| h.as_unit(HashRateUnit::TeraHash).value);
        assert_eq!(ths, Some(0.0), "{what} reports no hashrate asleep");
        if info.model != Model::S19kProLuxos {
            // LuxOS never reports is_mining=false (asic-rs #303).
            assert!(!data.is_mining, "{what} reports not mining");
        }

        assert!(
            miner.resume(None).await.expect("resume is sent"),
            "{what} confirms resume"
        );
        let truth = sim.truth(info.address).unwrap();
        assert_eq!(truth.mode, Mode::Hashing, "{what}");
        assert_close(
            &format!("{what} power"),
            truth.power_w,
            info.nominal_power_w,
            0.01,
        );

        let whatsminer = matches!(
            info.model,
            Model::M30s | Model::M50 | Model::M60 | Model::M60s
        );
        assert_eq!(miner.supports_set_power_limit(), whatsminer, "{what}");
        if whatsminer {
            let limited = miner
                .set_power_limit(Power::from_watts(2000.0))
                .await
                .expect("limit is sent");
            assert!(limited, "{what} confirms the limit");
            let truth = sim.truth(info.address).unwrap();
            assert_eq!(truth.mode, Mode::PowerLimited, "{what}");
            assert_close(
                &format!("{what} limited power"),
                truth.power_w,
                2000.0,
                0.01,
            );
            let idle = info.nominal_power_w * 0.03;
            let expected =
                info.nominal_hashrate_ths * (2000.0 - idle) / (info.nominal_power_w - idle);
            assert_close(
                &format!("{what} limited hashrate"),
                truth.hashrate_ths,
                expected,
                0.01,
            );
            let data = miner.get_data().await;
            assert_close(
                &format!("{what} limited power read"),
                data.wattage.map(|w| w.as_watts()).unwrap_or_default(),
                2000.0,
                2.0,
            );
        }
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn a_sleep_ramps_on_the_stepped_clock_and_asic_rs_sees_it() {
    let sim = spawn(
        FleetSpec::single("ramp", Model::M60s, 1),
        SimOptions::default().with_paused_clock(),
    )
    .await;
    let ip = address_of(&sim, Model::M60s);
    let nominal = sim.miner(ip).unwrap().nominal_power_w;
    let idle = nominal * 0.03;
    let miner = detect(ip).await;

    assert!(miner.pause(None).await.unwrap());
    let truth = sim.truth(ip).unwrap();
    assert!(truth.ramping);
    assert_close("before the ramp", truth.power_w, nominal, 0.01);

    sim.advance(Duration::from_secs(10));
    let truth = sim.truth(ip).unwrap();
    assert_close("halfway down", truth.power_w, (nominal + idle) / 2.0, 0.1);
    let read = miner.get_data().await.wattage.unwrap().as_watts();
    assert_close("halfway down, read", read, truth.power_w, 2.0);

    sim.advance(Duration::from_secs(15));
    let truth = sim.truth(ip).unwrap();
    assert!(!truth.ramping);
    assert_close("idle", truth.power_w, idle, 0.1);
    assert_eq!(truth.hashrate_ths, 0.0);

    assert!(miner.resume(None).await.unwrap());
    sim.advance(Duration::from_secs(5));
    let truth = sim.truth(ip).unwrap();
    assert_close(
        "a quarter up",
        truth.power_w,
        idle + (nominal - idle) / 4.0,
        0.1,
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn a_range_scan_finds_the_whole_fleet() {
    let spec = FleetSpec::new(vec![ebb_minersim::SiteSpec::new(
        "scan",
        Model::ALL
            .iter()
            .map(|&m| ebb_minersim::GroupSpec::new(m, 2))
            .collect(),
    )]);
    let sim = spawn(spec, instant()).await;
    let first = sim.addresses()[0];
    let [a, b, c, d] = first.octets();
    // Four addresses past the fleet stay empty and must not show up.
    let range = format!("{a}.{b}.{c}.{d}-{}", u16::from(d) + sim.len() as u16 + 3);
    let found = MinerFactory::from_range(&range)
        .expect("range parses")
        .scan()
        .await
        .expect("scan runs");
    let mut ips: Vec<IpAddr> = found.iter().map(|m| m.get_ip()).collect();
    ips.sort();
    let mut want: Vec<IpAddr> = sim.addresses().into_iter().map(IpAddr::V4).collect();
    want.sort();
    assert_eq!(ips, want);
    sim.shutdown().await;
}
