//! Command batches end to end: idempotent redelivery, poison batches, the capability table,
//! unknown devices, power limits and their restore.

use std::time::Duration;

use async_nats::jetstream;
use ebb_bus::InventoryDevice;
use ebb_bus::{CommandBatch, DeviceRef, Envelope};
use ebb_domain::{BatchId, CommandKind, CurtailLevel, DeviceId, Outcome};
use ebb_minersim::{Firmware, Mode};

use crate::{assert_all, instant_paused, mixed, one_per_protocol, outcomes, spawn_agent};

const FULL: CommandKind = CommandKind::Curtail {
    level: CurtailLevel::Full,
};
const EFFICIENCY: CommandKind = CommandKind::Curtail {
    level: CurtailLevel::Efficiency,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_batch_is_harmless() {
    let mut h = spawn_agent(
        "redeliver",
        mixed(2, 2, 2),
        instant_paused(),
        vec![],
        |_| {},
    )
    .await;
    let all = h.devices.clone();
    let curtail = h.batch(FULL, &all);
    let first = h.run(&curtail).await;
    assert_all(&first, "first curtail", |o| *o == Outcome::Ok);
    let truth_after_first: Vec<_> = all
        .iter()
        .map(|d| h.sim.truth(h.address(d)).unwrap())
        .collect();
    assert!(
        truth_after_first.iter().all(|t| t.mode == Mode::Sleeping),
        "{truth_after_first:?}"
    );

    // The same batch again (a redelivery after a lost ack looks exactly like this).
    let again = h.run(&curtail).await;
    assert_all(&again, "redelivered curtail", |o| {
        *o == Outcome::AlreadyInState
    });
    for (d, before) in all.iter().zip(&truth_after_first) {
        let now = h.sim.truth(h.address(d)).unwrap();
        assert_eq!(
            (now.mode, now.power_w, now.power_limit_w),
            (before.mode, before.power_w, before.power_limit_w)
        );
    }

    // Uncurtail, twice. LuxOS reports "mining" while curtailed, so the agent cannot tell it is
    // awake and wakes it again (harmless); the others say already_in_state.
    let uncurtail = h.batch(CommandKind::Uncurtail, &all);
    assert_all(&h.run(&uncurtail).await, "uncurtail", |o| *o == Outcome::Ok);
    let again = h.run(&uncurtail).await;
    for (d, r) in all.iter().zip(&again.results) {
        let lux = h.sim.miner(h.address(d)).unwrap().firmware == Firmware::LuxOs;
        let want = if lux {
            Outcome::Ok
        } else {
            Outcome::AlreadyInState
        };
        assert_eq!(r.outcome, want, "{}", d.address);
        assert_eq!(h.sim.truth(h.address(d)).unwrap().mode, Mode::Hashing);
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_batches_are_terminated_without_touching_miners() {
    let mut h = spawn_agent(
        "poison",
        one_per_protocol(),
        instant_paused(),
        vec![],
        |_| {},
    )
    .await;
    let all = h.devices.clone();

    // Out-of-range watts: every device is named invalid_command, no miner is contacted.
    let bad_watts = h.batch(CommandKind::SetPowerTarget { watts: 1e9 }, &all);
    let r = h.run(&bad_watts).await;
    assert_all(&r, "out-of-range watts", |o| {
        matches!(o, Outcome::InvalidCommand { .. })
    });
    assert_eq!(r.command, Some(bad_watts.command));

    // An unknown command kind from a newer reconciler: undecodable, but the devices are named.
    #[derive(serde::Serialize)]
    struct Newer {
        batch_id: BatchId,
        site: String,
        command: serde_json::Value,
        devices: Vec<DeviceRef>,
    }
    let newer = h.batch(FULL, &all);
    let payload = ebb_bus::encode(&Envelope::new(
        None,
        Newer {
            batch_id: newer.batch_id,
            site: h.site.to_string(),
            command: serde_json::json!({"kind": "overclock", "level": 11}),
            devices: newer.devices.clone(),
        },
    ))
    .unwrap();
    h.send_raw(payload).await;
    let r = h.result(newer.batch_id, all.len()).await;
    assert_all(&r, "unknown kind", |o| {
        matches!(o, Outcome::InvalidCommand { .. })
    });
    assert_eq!(r.command, None);

    // Garbage bytes: nothing can be named, so nothing is published, and the message is gone.
    h.send_raw(b"\x00\x01 definitely not msgpack".to_vec())
        .await;

    // A batch for another site.
    let mut foreign = h.batch(FULL, &all);
    foreign.site = ebb_domain::SiteCode::parse("elsewhere").unwrap();
    let r = h.run(&foreign).await;
    assert_all(&r, "foreign site", |o| {
        matches!(o, Outcome::InvalidCommand { .. })
    });

    // Nothing is redelivered: a valid batch behind the poison runs, and nothing else arrives.
    let probe = h.batch(CommandKind::Uncurtail, &all[..1]);
    h.run(&probe).await;
    h.no_more_results(Duration::from_secs(2)).await;
    let info = h.consumer_info().await;
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0), "{info:?}");
    for d in &all {
        let t = h.sim.truth(h.address(d)).unwrap();
        assert_eq!(
            (t.mode, t.power_limit_w),
            (Mode::Hashing, None),
            "{} untouched",
            d.address
        );
    }
    assert!(crate::counter("ebb_agent_poison_batches_total") >= 4);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capability_table_unknown_devices_and_bad_addresses() {
    let mut h = spawn_agent("caps", one_per_protocol(), instant_paused(), vec![], |_| {}).await;
    let all = h.devices.clone();
    // Antminer stock and LuxOS have no power limit: unsupported, without being contacted.
    let r = h
        .run(&h.batch(CommandKind::SetPowerTarget { watts: 2500.0 }, &all))
        .await;
    for (d, o) in all.iter().zip(outcomes(&r)) {
        let wm = h.sim.miner(h.address(d)).unwrap().firmware == Firmware::WhatsminerV3;
        assert_eq!(
            o,
            if wm {
                Outcome::Ok
            } else {
                Outcome::Unsupported
            },
            "{}",
            d.address
        );
    }

    // A device the inventory does not know: with an address it is driven (the miner's own
    // capabilities decide), without one it is refused.
    let wm = h.of(Firmware::WhatsminerV3).remove(0);
    let mut b = h.batch(FULL, &[]);
    b.devices = vec![
        DeviceRef {
            device_id: DeviceId::new(),
            address: String::new(),
            restore_power_limit_w: None,
        },
        DeviceRef {
            device_id: DeviceId::new(),
            address: "not-an-address".into(),
            restore_power_limit_w: None,
        },
        DeviceRef {
            device_id: DeviceId::new(),
            address: wm.address.clone(),
            restore_power_limit_w: None,
        },
    ];
    let r = h.run(&b).await;
    assert!(
        matches!(&r.results[0].outcome, Outcome::Refused { reason } if reason.contains("unknown device")),
        "{r:?}"
    );
    assert!(
        matches!(&r.results[1].outcome, Outcome::Refused { reason } if reason.contains("invalid address")),
        "{r:?}"
    );
    assert_eq!(r.results[2].outcome, Outcome::Ok);
    assert_eq!(h.sim.truth(h.address(&wm)).unwrap().mode, Mode::Sleeping);

    // A device listed without an address is found through the inventory.
    let lux = h.of(Firmware::LuxOs).remove(0);
    let mut b = h.batch(FULL, std::slice::from_ref(&lux));
    b.devices[0].address.clear();
    assert_eq!(outcomes(&h.run(&b).await), vec![Outcome::Ok]);
    assert_eq!(h.sim.truth(h.address(&lux)).unwrap().mode, Mode::Sleeping);
    h.stop().await;
}

/// Issue 7: a restore batch carrying one impossible prior limit (a corrupt or forged value)
/// restores every other miner as asked, and wakes that one without the bad limit: nothing is
/// left asleep and no batch fails for one device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_restore_limit_fails_no_batch() {
    let mut h = spawn_agent("badlimit", mixed(3, 0, 0), instant_paused(), vec![], |c| {
        c.efficiency_limit_pct = 70.0
    })
    .await;
    let wm = h.devices.clone();
    let r = h.run(&h.batch(EFFICIENCY, &wm)).await;
    assert_all(&r, "efficiency curtail", |o| *o == Outcome::Ok);
    let priors: Vec<f64> = r
        .results
        .iter()
        .map(|d| d.prior_power_limit_w.expect("a prior"))
        .collect();
    let full = h.run(&h.batch(FULL, &wm)).await;
    assert_all(&full, "full curtail", |o| *o == Outcome::Ok);

    let mut b = h.batch(CommandKind::Uncurtail, &wm);
    for (d, prior) in b.devices.iter_mut().zip(&priors) {
        d.restore_power_limit_w = Some(*prior);
    }
    b.devices[1].restore_power_limit_w = Some(1e9);
    let restored = h.run(&b).await;
    assert_all(&restored, "restore with one bad limit", |o| {
        *o == Outcome::Ok
    });
    assert_eq!(crate::counter("ebb_agent_restore_limits_ignored_total"), 1);
    assert_eq!(
        crate::counter("ebb_agent_commands_total{kind=uncurtail,outcome=ok}"),
        3,
        "outcomes are counted by kind"
    );
    for (i, d) in wm.iter().enumerate() {
        let t = h.sim.truth(h.address(d)).unwrap();
        assert_eq!(t.mode, Mode::Hashing, "miner {i} is awake");
        if i != 1 {
            assert_eq!(
                t.power_limit_w,
                Some(priors[i]),
                "miner {i}'s limit is restored"
            );
        } else {
            assert_ne!(t.power_limit_w, Some(1e9), "the bad limit is never set");
        }
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_limits_are_captured_and_restored() {
    let mut h = spawn_agent("limits", mixed(2, 0, 0), instant_paused(), vec![], |c| {
        c.efficiency_limit_pct = 70.0
    })
    .await;
    let wm = h.devices.clone();
    let before: Vec<f64> = wm
        .iter()
        .map(|d| h.sim.truth(h.address(d)).unwrap().target_power_w)
        .collect();

    // Efficiency curtail: 70 % of the limit the firmware reports, and that limit comes back as
    // the prior.
    let r = h.run(&h.batch(EFFICIENCY, &wm)).await;
    assert_all(&r, "efficiency curtail", |o| *o == Outcome::Ok);
    let mut restore = Vec::new();
    for (d, res) in wm.iter().zip(&r.results) {
        let prior = res
            .prior_power_limit_w
            .expect("the prior limit is captured");
        let t = h.sim.truth(h.address(d)).unwrap();
        let limit = t.power_limit_w.expect("a limit is set");
        assert!(
            (limit - prior * 0.7).abs() <= 1.0,
            "limit {limit} vs prior {prior}"
        );
        assert_eq!(t.mode, Mode::PowerLimited);
        restore.push(prior);
    }
    // Redelivered: already in state, and the prior reported is still the one from before.
    let again = h.run(&h.batch(EFFICIENCY, &wm)).await;
    assert_all(&again, "redelivered efficiency", |o| {
        *o == Outcome::AlreadyInState
    });
    for (res, prior) in again.results.iter().zip(&restore) {
        assert_eq!(res.prior_power_limit_w, Some(*prior));
    }

    // Uncurtail with the captured limit: it is set back (not a firmware default), full power.
    let mut b = h.batch(CommandKind::Uncurtail, &wm);
    for (d, prior) in b.devices.iter_mut().zip(&restore) {
        d.restore_power_limit_w = Some(*prior);
    }
    assert_all(&h.run(&b).await, "uncurtail", |o| *o == Outcome::Ok);
    for ((d, prior), nominal) in wm.iter().zip(&restore).zip(&before) {
        let t = h.sim.truth(h.address(d)).unwrap();
        assert_eq!(t.power_limit_w, Some(*prior));
        assert_eq!(t.mode, Mode::Hashing);
        assert!(
            (t.power_w - nominal).abs() / nominal < 0.01,
            "{} vs {nominal}",
            t.power_w
        );
    }

    // A power target, then a full curtail reports the prior limit, and the uncurtail that
    // carries it leaves the limit alone and wakes the miner.
    let target = h
        .run(&h.batch(CommandKind::SetPowerTarget { watts: 2000.0 }, &wm))
        .await;
    assert_all(&target, "power target", |o| *o == Outcome::Ok);
    assert!(
        wm.iter()
            .all(|d| h.sim.truth(h.address(d)).unwrap().power_limit_w == Some(2000.0))
    );
    let full = h.run(&h.batch(FULL, &wm)).await;
    assert_all(&full, "full curtail", |o| *o == Outcome::Ok);
    assert!(
        full.results
            .iter()
            .zip(&restore)
            .all(|(r, p)| r.prior_power_limit_w == Some(*p)),
        "{full:?}"
    );
    let mut b: CommandBatch = h.batch(CommandKind::Uncurtail, &wm);
    for (d, prior) in b.devices.iter_mut().zip(&restore) {
        d.restore_power_limit_w = Some(*prior);
    }
    assert_all(&h.run(&b).await, "restore", |o| *o == Outcome::Ok);
    for (d, prior) in wm.iter().zip(&restore) {
        let t = h.sim.truth(h.address(d)).unwrap();
        assert_eq!((t.mode, t.power_limit_w), (Mode::Hashing, Some(*prior)));
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_mid_batch_hands_the_batch_back() {
    let mut h = spawn_agent(
        "midway",
        one_per_protocol(),
        instant_paused(),
        vec![],
        |c| {
            c.call_timeout = Duration::from_secs(20);
        },
    )
    .await;
    let addrs: Vec<_> = h.devices.iter().map(|d| h.address(d)).collect();
    h.sim
        .inject_fault(
            &ebb_minersim::FaultSelector::addresses(addrs),
            ebb_minersim::Fault::NoAnswer,
        )
        .unwrap();
    let all = h.devices.clone();
    let batch = h.batch(FULL, &all);
    h.send(&batch).await;
    // Wait until the agent holds the batch, then stop it long before the miners would time out.
    for _ in 0..100 {
        if h.consumer_info().await.num_ack_pending == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = std::time::Instant::now();
    h.stop_agent(Duration::from_secs(10)).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopped in {:?}",
        started.elapsed()
    );
    // No results were published for the interrupted run.
    h.no_more_results(Duration::from_millis(500)).await;

    // The batch was handed back, not left to wait out the ack_wait: the next agent
    // runs it at once.
    h.sim
        .clear_faults(&ebb_minersim::FaultSelector::all())
        .unwrap();
    h.restart_agent();
    let started = std::time::Instant::now();
    let r = h.result(batch.batch_id, all.len()).await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "redelivered after {:?}",
        started.elapsed()
    );
    crate::assert_all(&r, "after restart", |o| *o == Outcome::Ok);
    h.stop().await;
}

#[test]
fn an_invalid_configuration_is_refused_with_every_problem() {
    let sources =
        ebb_runtime::Sources::flags([("site", "x"), ("nats_url", ""), ("max_in_flight", "0")]);
    let err = ebb_runtime::settings::load::<ebb_agent::AgentConfig>(
        "agent",
        ebb_runtime::Needs::Nats,
        &sources,
    )
    .unwrap_err();
    assert_eq!(err.0.len(), 2, "{err}");
}

/// Issue 11: an agent killed while executing a batch (no hand-back, no ack) costs seconds, not the
/// minutes of a long ack wait: the restarted agent commands the batch's remaining miners within
/// 30 s of the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_batch_costs_seconds() {
    let mut h = spawn_agent("killed", mixed(4, 4, 4), instant_paused(), vec![], |c| {
        // Long enough that the hung miners are still being waited on when the agent dies.
        c.call_timeout = Duration::from_secs(60);
        c.control_timeout = Duration::from_secs(60);
    })
    .await;
    let all = h.devices.clone();
    let (fast, hung) = all.split_at(6);
    let hung_addrs: Vec<_> = hung.iter().map(|d| h.address(d)).collect();
    h.sim
        .inject_fault(
            &ebb_minersim::FaultSelector::addresses(hung_addrs),
            ebb_minersim::Fault::NoAnswer,
        )
        .unwrap();
    let batch = h.batch(FULL, &all);
    h.send(&batch).await;
    // The agent curtails the miners that answer, and waits on the others.
    let asleep = |h: &crate::Harness, ds: &[InventoryDevice]| {
        ds.iter()
            .filter(|d| h.sim.truth(h.address(d)).unwrap().mode != Mode::Hashing)
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while asleep(&h, fast) < fast.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "the answering miners were curtailed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        h.consumer_info().await.num_ack_pending,
        1,
        "the agent holds the batch"
    );
    h.kill_agent().await;
    let killed = std::time::Instant::now();
    assert_eq!(asleep(&h, hung), 0, "the hung miners were not touched yet");

    // The miners answer again; a new agent starts at once.
    h.sim
        .clear_faults(&ebb_minersim::FaultSelector::all())
        .unwrap();
    h.restart_agent();
    while asleep(&h, &all) < all.len() {
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "only {} of {} miners curtailed {:?} after the kill",
            asleep(&h, &all),
            all.len(),
            killed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = h.result(batch.batch_id, all.len()).await;
    crate::assert_all(&r, "after the restart", |o| {
        matches!(o, Outcome::Ok | Outcome::AlreadyInState)
    });
    h.stop().await;
}

/// A consumer an older release created with a long ack wait is brought to today's settings when
/// the agent starts, without losing its position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_consumer_gets_the_short_ack_wait() {
    let mut h = spawn_agent(
        "upgraded",
        one_per_protocol(),
        instant_paused(),
        vec![],
        |_| {},
    )
    .await;
    assert_eq!(
        h.consumer_info().await.config.ack_wait,
        ebb_bus::streams::AGENT_ACK_WAIT
    );
    h.stop_agent(Duration::from_secs(10)).await;
    let old = jetstream::consumer::pull::Config {
        ack_wait: Duration::from_secs(300),
        ..ebb_bus::streams::agent_consumer(&h.site)
    };
    let stream = h.js.get_stream(ebb_bus::streams::CMD).await.unwrap();
    stream.create_consumer(old).await.unwrap();
    assert_eq!(
        h.consumer_info().await.config.ack_wait,
        Duration::from_secs(300),
        "nats-server took the old setting"
    );
    h.restart_agent();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while h.consumer_info().await.config.ack_wait != ebb_bus::streams::AGENT_ACK_WAIT {
        assert!(
            std::time::Instant::now() < deadline,
            "the consumer was updated"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    h.stop().await;
}
