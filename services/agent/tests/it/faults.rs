//! Every simulator fault, on every protocol, gives the outcome an operator would expect and
//! never a panic; and what the agent says is compared with the simulator's truth.

use std::time::Duration;

use ebb_bus::InventoryDevice;
use ebb_domain::{CommandKind, CurtailLevel, Outcome};
use ebb_minersim::{Fault, FaultSelector, Mode};

use crate::{Harness, instant_paused, mixed, spawn_agent};

const FULL: CommandKind = CommandKind::Curtail {
    level: CurtailLevel::Full,
};

/// One fault, what a full curtail must report for it, and what the miner must really do.
struct Case {
    fault: Option<Fault>,
    outcome: fn(&Outcome) -> bool,
    truth: Option<Mode>,
}

fn ok(o: &Outcome) -> bool {
    *o == Outcome::Ok
}

fn cases() -> Vec<Case> {
    vec![
        // The control group.
        Case {
            fault: None,
            outcome: ok,
            truth: Some(Mode::Sleeping),
        },
        Case {
            fault: Some(Fault::NoAnswer),
            outcome: |o| matches!(o, Outcome::Timeout | Outcome::Unreachable),
            truth: Some(Mode::Hashing),
        },
        // Slow, but within the call timeout: it works.
        Case {
            fault: Some(Fault::Slow { delay_ms: 400 }),
            outcome: ok,
            truth: Some(Mode::Sleeping),
        },
        // Acknowledged and ignored: the agent reports ok and the reconciler catches it from
        // telemetry; asic-rs's Antminer backend re-reads the work mode after a sleep and says
        // false, which the agent reports as refused.
        Case {
            fault: Some(Fault::AckNoop),
            outcome: |o| matches!(o, Outcome::Ok | Outcome::Refused { .. }),
            truth: Some(Mode::Hashing),
        },
        // Bad power readings do not stop the command.
        Case {
            fault: Some(Fault::NanPower),
            outcome: ok,
            truth: Some(Mode::Sleeping),
        },
        Case {
            fault: Some(Fault::GarbagePower { watts: -250.0 }),
            outcome: ok,
            truth: Some(Mode::Sleeping),
        },
        Case {
            fault: Some(Fault::StaleTelemetry),
            outcome: ok,
            truth: Some(Mode::Sleeping),
        },
        Case {
            fault: Some(Fault::StallMidReply),
            outcome: |o| *o == Outcome::Timeout,
            truth: Some(Mode::Hashing),
        },
        Case {
            fault: Some(Fault::Gone),
            outcome: |o| *o == Outcome::Unreachable,
            truth: None,
        },
        Case {
            fault: Some(Fault::Refuse),
            outcome: |o| *o == Outcome::Unreachable,
            truth: Some(Mode::Hashing),
        },
        Case {
            fault: Some(Fault::PowerDropHashStays { residual_pct: 10.0 }),
            outcome: ok,
            truth: Some(Mode::Sleeping),
        },
    ]
}

/// The `i`-th group of three (one per protocol) of a `mixed(n, n, n)` fleet.
fn group(h: &Harness, n: usize, i: usize) -> Vec<InventoryDevice> {
    vec![
        h.devices[i].clone(),
        h.devices[n + i].clone(),
        h.devices[2 * n + i].clone(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_gives_the_right_outcome() {
    let cases = cases();
    let n = cases.len();
    let mut h = spawn_agent(
        "faults",
        mixed(n as u32, n as u32, n as u32),
        instant_paused(),
        vec![],
        |c| {
            c.call_timeout = Duration::from_secs(2);
        },
    )
    .await;
    let total = h.devices.len();
    // The start-up poll identifies every miner, so faults hit cached handles as in production.
    h.telemetry_where(|t| t.samples.len() == total && t.samples.iter().all(|s| s.reachable))
        .await;

    for (i, case) in cases.iter().enumerate() {
        if let Some(fault) = &case.fault {
            let addrs: Vec<_> = group(&h, n, i).iter().map(|d| h.address(d)).collect();
            h.sim
                .inject_fault(&FaultSelector::addresses(addrs), fault.clone())
                .unwrap();
        }
    }
    // Stale telemetry is frozen at the moment of injection; let simulated time move on from it.
    h.sim.advance(Duration::from_secs(10));
    let invalid_before = crate::counter("ebb_agent_invalid_samples_total");
    let batch = h.batch(FULL, &h.devices.clone());
    let r = h.run(&batch).await;
    let by_device: std::collections::HashMap<_, _> = r
        .results
        .iter()
        .map(|d| (d.device_id, d.outcome.clone()))
        .collect();
    for (i, case) in cases.iter().enumerate() {
        for d in group(&h, n, i) {
            let outcome = &by_device[&d.device_id];
            let what = format!("{:?} on {} ({})", case.fault, d.address, d.model);
            assert!((case.outcome)(outcome), "{what}: got {outcome}");
            if let Some(mode) = case.truth {
                assert_eq!(h.sim.truth(h.address(&d)).unwrap().mode, mode, "{what}");
            }
        }
    }

    // Right after the batch the agent publishes what it read: bad readings are dropped and
    // counted, silent miners are unreachable without values, stale ones say what they say.
    let t = h
        .telemetry_where(|t| t.samples.len() + t.dropped_invalid as usize >= 20)
        .await;
    let sample = |d: &InventoryDevice| t.samples.iter().find(|s| s.device_id == d.device_id);
    let fault_group = |f: fn(&Fault) -> bool| {
        cases
            .iter()
            .position(|c| c.fault.as_ref().is_some_and(f))
            .unwrap()
    };
    let nan = group(&h, n, fault_group(|f| matches!(f, Fault::NanPower)));
    let garbage = group(
        &h,
        n,
        fault_group(|f| matches!(f, Fault::GarbagePower { .. })),
    );
    for d in nan.into_iter().chain(garbage) {
        assert!(
            sample(&d).is_none(),
            "{} ({}) was not dropped: {:?}",
            d.address,
            d.model,
            sample(&d)
        );
    }
    assert!(t.dropped_invalid >= 6, "{t:?}");
    assert!(crate::counter("ebb_agent_invalid_samples_total") >= invalid_before + 6);
    for f in [
        (|f: &Fault| matches!(f, Fault::NoAnswer)) as fn(&Fault) -> bool,
        |f| matches!(f, Fault::Gone),
        |f| matches!(f, Fault::StallMidReply),
    ] {
        for d in group(&h, n, fault_group(f)) {
            let s = sample(&d).unwrap_or_else(|| panic!("{} has a sample", d.address));
            assert!(
                !s.reachable && s.power_w.is_none() && s.hashrate_ths.is_none(),
                "{s:?}"
            );
        }
    }
    for d in group(&h, n, fault_group(|f| matches!(f, Fault::StaleTelemetry))) {
        let s = sample(&d).expect("a stale miner still answers");
        let truth = h.sim.truth(h.address(&d)).unwrap();
        assert!(
            s.power_w.unwrap() > truth.power_w * 5.0,
            "stale {s:?} vs truth {truth:?}"
        );
    }

    // A miner that refuses to wake: refused, or ok while it stays asleep; never a panic.
    let control = group(&h, n, 0);
    let addrs: Vec<_> = control.iter().map(|d| h.address(d)).collect();
    h.sim
        .inject_fault(&FaultSelector::addresses(addrs), Fault::RefuseWake)
        .unwrap();
    let r = h.run(&h.batch(CommandKind::Uncurtail, &control)).await;
    for (d, res) in control.iter().zip(&r.results) {
        let truth = h.sim.truth(h.address(d)).unwrap();
        assert_eq!(truth.mode, Mode::Sleeping, "{}", d.model);
        assert!(
            matches!(res.outcome, Outcome::Refused { .. } | Outcome::Ok),
            "{}: {}",
            d.model,
            res.outcome
        );
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miner_that_comes_back_is_identified_again() {
    let mut h = spawn_agent("comeback", mixed(1, 1, 1), instant_paused(), vec![], |c| {
        c.call_timeout = Duration::from_secs(2)
    })
    .await;
    let all = h.devices.clone();
    let addrs: Vec<_> = all.iter().map(|d| h.address(d)).collect();
    h.sim
        .inject_fault(&FaultSelector::addresses(addrs.clone()), Fault::Gone)
        .unwrap();
    let r = h.run(&h.batch(FULL, &all)).await;
    crate::assert_all(&r, "gone", |o| *o == Outcome::Unreachable);
    h.sim
        .clear_faults(&FaultSelector::addresses(addrs))
        .unwrap();
    // The listeners come back asynchronously.
    let mut last = None;
    for _ in 0..20 {
        let r = h.run(&h.batch(FULL, &all)).await;
        if r.results.iter().all(|d| d.outcome == Outcome::Ok) {
            last = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(last.is_some(), "miners that came back are curtailed");
    assert!(
        all.iter()
            .all(|d| h.sim.truth(h.address(d)).unwrap().mode == Mode::Sleeping)
    );
    h.stop().await;
}
