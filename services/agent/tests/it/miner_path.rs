//! The miner path without NATS: a [`MinerPath`] the test builds itself executes batches and polls
//! the simulated fleet with the agent's own code. No nats-server runs in these tests.

use std::time::Duration;

use ebb_agent::{MinerPath, MinerPathSettings, Polled, Snapshot};
use ebb_bus::{CommandBatch, DeviceRef, InventoryDevice, TelemetrySample};
use ebb_domain::{BatchId, Capabilities, CommandKind, CurtailLevel, DeviceId, Outcome, SiteCode};
use ebb_minersim::{Firmware, Mode, Simulator};

use crate::{instant_paused, inventory_device, mixed, start_sim};

const FULL: CommandKind = CommandKind::Curtail {
    level: CurtailLevel::Full,
};

fn batch(kind: CommandKind, devices: &[InventoryDevice]) -> CommandBatch {
    CommandBatch {
        batch_id: BatchId::new(),
        event_id: None,
        site: SiteCode::parse("no-nats").unwrap(),
        command: kind,
        devices: devices
            .iter()
            .map(|d| DeviceRef {
                device_id: d.device_id,
                address: d.address.clone(),
                restore_power_limit_w: None,
            })
            .collect(),
    }
}

fn truth_mode(sim: &Simulator, d: &InventoryDevice) -> Mode {
    sim.truth(d.address.parse().unwrap()).unwrap().mode
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_and_polls_run_without_nats() {
    ebb_testkit::init_tracing();
    let sim = start_sim(mixed(2, 2, 2), instant_paused()).await;
    let miners: Vec<InventoryDevice> = sim
        .addresses()
        .into_iter()
        .map(|a| inventory_device(&sim, a))
        .collect();
    // An inventory device where nothing listens.
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
    let mut devices = miners.clone();
    devices.push(nobody.clone());
    let inventory = Snapshot::new(devices.clone());
    let path = MinerPath::new(MinerPathSettings {
        call_timeout: Duration::from_secs(3),
        efficiency_limit_pct: 70.0,
        ..MinerPathSettings::default()
    });

    // A poll: every miner in inventory order, the silent one unreachable without values.
    let polled = ebb_agent::poll(&path, &inventory).await;
    assert_eq!(polled.dropped_invalid, 0);
    let ids = |s: &[TelemetrySample]| s.iter().map(|s| s.device_id).collect::<Vec<_>>();
    assert_eq!(
        ids(&polled.samples),
        devices.iter().map(|d| d.device_id).collect::<Vec<_>>()
    );
    for (d, s) in devices.iter().zip(&polled.samples) {
        if d.device_id == nobody.device_id {
            assert!(
                !s.reachable && s.power_w.is_none() && s.hashrate_ths.is_none(),
                "{s:?}"
            );
        } else {
            let truth = sim.truth(d.address.parse().unwrap()).unwrap();
            let p = s.power_w.expect("a reachable miner has a power reading");
            assert!(s.reachable && (p - truth.power_w).abs() <= truth.power_w * 0.03);
        }
    }

    // `curtail{full}` with a device listed twice: executed once per device, every miner asleep,
    // each read right after its command.
    let mut curtail = batch(FULL, &miners);
    curtail.devices.push(curtail.devices[0].clone());
    let executed = ebb_agent::execute(&path, &curtail, &inventory).await;
    assert_eq!(
        executed
            .results
            .iter()
            .map(|r| (r.device_id, r.outcome.clone()))
            .collect::<Vec<_>>(),
        miners
            .iter()
            .map(|d| (d.device_id, Outcome::Ok))
            .collect::<Vec<_>>()
    );
    assert_eq!(executed.samples.samples.len(), miners.len());
    assert!(executed.samples.samples.iter().all(|s| s.reachable));
    for d in &miners {
        assert_eq!(truth_mode(&sim, d), Mode::Sleeping, "{}", d.address);
    }

    // The same batch again is harmless: already in state, nothing commanded.
    let runs = ebb_agent::execute_each(&path, &curtail, &inventory).await;
    assert_eq!(runs.len(), miners.len());
    for (d, run) in miners.iter().zip(&runs) {
        let result = run.result.as_ref().expect("no device deferred");
        assert_eq!(result.device_id, d.device_id);
        assert_eq!(result.outcome, Outcome::AlreadyInState, "{}", d.address);
        assert!(matches!(&run.sample, Some(Polled::Sample(s)) if s.reachable));
        assert!(run.took > Duration::ZERO);
    }

    // Polling after the curtail: no miner hashes.
    let asleep = ebb_agent::poll_each(&path, &Snapshot::new(miners.clone())).await;
    assert_eq!(asleep.len(), miners.len());
    for (d, p) in miners.iter().zip(&asleep) {
        let Polled::Sample(s) = &p.polled else {
            panic!("{}: {:?}", d.address, p.polled)
        };
        assert_eq!(s.device_id, d.device_id);
        assert!(
            s.hashrate_ths
                .is_some_and(|h| h <= ebb_agent::HASHING_EPSILON_THS),
            "{}: {s:?}",
            d.address
        );
    }

    // A command to the silent device: unreachable, and reported so.
    let r = ebb_agent::execute(
        &path,
        &batch(FULL, std::slice::from_ref(&nobody)),
        &inventory,
    )
    .await;
    assert_eq!(r.results[0].outcome, Outcome::Unreachable);
    assert!(r.samples.samples.iter().all(|s| !s.reachable));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_miner_path_remembers_power_limits() {
    ebb_testkit::init_tracing();
    let sim = start_sim(mixed(2, 0, 0), instant_paused()).await;
    let miners: Vec<InventoryDevice> = sim
        .addresses()
        .into_iter()
        .map(|a| inventory_device(&sim, a))
        .collect();
    assert!(
        miners
            .iter()
            .all(|d| sim.miner(d.address.parse().unwrap()).unwrap().firmware
                == Firmware::WhatsminerV3)
    );
    let inventory = Snapshot::new(miners.clone());
    let path = MinerPath::new(MinerPathSettings {
        call_timeout: Duration::from_secs(3),
        efficiency_limit_pct: 70.0,
        ..MinerPathSettings::default()
    });
    let efficiency = batch(
        CommandKind::Curtail {
            level: CurtailLevel::Efficiency,
        },
        &miners,
    );
    let first = ebb_agent::execute(&path, &efficiency, &inventory).await;
    let mut priors = Vec::new();
    for (d, r) in miners.iter().zip(&first.results) {
        assert_eq!(r.outcome, Outcome::Ok, "{}", d.address);
        let prior = r.prior_power_limit_w.expect("the prior limit is captured");
        let limit = sim
            .truth(d.address.parse().unwrap())
            .unwrap()
            .power_limit_w
            .expect("a limit is set");
        assert!((limit - prior * 0.7).abs() <= 1.0, "{limit} vs {prior}");
        priors.push(prior);
    }
    // The path remembers the limit from before: a redelivery reports it, not the curtailed one.
    let again = ebb_agent::execute(&path, &efficiency, &inventory).await;
    for (r, prior) in again.results.iter().zip(&priors) {
        assert_eq!(r.outcome, Outcome::AlreadyInState);
        assert_eq!(r.prior_power_limit_w, Some(*prior));
    }
    // An uncurtail that carries no limit restores the remembered one.
    let restore =
        ebb_agent::execute(&path, &batch(CommandKind::Uncurtail, &miners), &inventory).await;
    for ((d, r), prior) in miners.iter().zip(&restore.results).zip(&priors) {
        assert_eq!(r.outcome, Outcome::Ok, "{}", d.address);
        let t = sim.truth(d.address.parse().unwrap()).unwrap();
        assert_eq!((t.mode, t.power_limit_w), (Mode::Hashing, Some(*prior)));
    }
    sim.shutdown().await;
}
