//! Injected faults show up on the wire exactly as a misbehaving miner would show them.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use ebb_minersim::{Fault, FaultSelector, Mode, Model, SimOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{address_of, detect, instant, one_of_each, spawn};

/// Sends one RPC command and reads until the reply ends, the peer closes or `wait` passes.
async fn rpc(ip: Ipv4Addr, command: &str, wait: Duration) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect((ip, 4028)).await.expect("connects");
    s.write_all(format!("{{\"command\":\"{command}\"}}").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (out, false),
        }
    }
}

#[tokio::test]
async fn nan_power_shows_up_on_the_wire() {
    let sim = spawn(one_of_each(), instant()).await;
    let lux = address_of(&sim, Model::S19kProLuxos);
    let am = address_of(&sim, Model::S19);
    sim.inject_fault(&FaultSelector::addresses([lux, am]), Fault::NanPower)
        .unwrap();

    let (reply, closed) = rpc(lux, "power", Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&reply);
    assert!(closed);
    assert!(text.contains("\"Watts\":nan"), "{text}");
    let (reply, _) = rpc(am, "stats", Duration::from_secs(5)).await;
    assert!(String::from_utf8_lossy(&reply).contains("\"chain_power\":\"nan W\""));

    // asic-rs parses the Antminer's "nan W" into a NaN wattage.
    let data = detect(am).await.get_data().await;
    assert!(
        data.wattage.is_some_and(|w| w.as_watts().is_nan()),
        "{:?}",
        data.wattage
    );
    // The truth is unaffected.
    assert!(sim.truth(am).unwrap().power_w > 1000.0);
    sim.shutdown().await;
}

#[tokio::test]
async fn ok_but_nothing_leaves_the_miner_hashing() {
    let sim = spawn(one_of_each(), instant()).await;
    let wm = address_of(&sim, Model::M60s);
    let lux = address_of(&sim, Model::S19kProLuxos);
    sim.inject_fault(&FaultSelector::addresses([wm, lux]), Fault::AckNoop)
        .unwrap();
    for ip in [wm, lux] {
        let miner = detect(ip).await;
        assert!(miner.pause(None).await.unwrap(), "{ip} acknowledges");
        let truth = sim.truth(ip).unwrap();
        assert_eq!(truth.mode, Mode::Hashing, "{ip}");
        assert!(miner.get_data().await.wattage.unwrap().as_watts() > 2000.0);
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn refuses_wake_and_wakes_by_itself() {
    let sim = spawn(one_of_each(), instant().with_paused_clock()).await;
    let am = address_of(&sim, Model::S21);
    let lux = address_of(&sim, Model::S19kProLuxos);
    sim.inject_fault(&FaultSelector::address(am), Fault::RefuseWake)
        .unwrap();
    sim.inject_fault(
        &FaultSelector::address(lux),
        Fault::SelfWake { after_s: 60.0 },
    )
    .unwrap();

    let antminer = detect(am).await;
    assert!(antminer.pause(None).await.unwrap());
    assert!(!antminer.resume(None).await.unwrap(), "the wake is refused");
    assert_eq!(sim.truth(am).unwrap().mode, Mode::Sleeping);

    let luxos = detect(lux).await;
    assert!(luxos.pause(None).await.unwrap());
    sim.advance(Duration::from_secs(59));
    assert_eq!(sim.truth(lux).unwrap().mode, Mode::Sleeping);
    sim.advance(Duration::from_secs(2));
    assert_eq!(sim.truth(lux).unwrap().mode, Mode::Hashing);
    sim.shutdown().await;
}

#[tokio::test]
async fn stale_telemetry_and_residual_hashrate_mislead_the_reader() {
    let sim = spawn(one_of_each(), instant()).await;
    let wm = address_of(&sim, Model::M50);
    let am = address_of(&sim, Model::S19Pro);
    sim.inject_fault(&FaultSelector::address(wm), Fault::StaleTelemetry)
        .unwrap();
    sim.inject_fault(
        &FaultSelector::address(am),
        Fault::PowerDropHashStays { residual_pct: 10.0 },
    )
    .unwrap();

    let whatsminer = detect(wm).await;
    assert!(whatsminer.pause(None).await.unwrap());
    assert_eq!(sim.truth(wm).unwrap().mode, Mode::Sleeping);
    let read = whatsminer.get_data().await.wattage.unwrap().as_watts();
    assert!(read > 3000.0, "still reports the old sample: {read}");

    let antminer = detect(am).await;
    assert!(antminer.pause(None).await.unwrap());
    let truth = sim.truth(am).unwrap();
    assert!(truth.power_w < 200.0);
    assert!(truth.hashrate_ths > 5.0);
    let data = antminer.get_data().await;
    assert!(data.hashrate.is_some_and(|h| {
        h.as_unit(asic_rs::core::data::hashrate::HashRateUnit::TeraHash)
            .value
            > 5.0
    }));
    sim.shutdown().await;
}

#[tokio::test]
async fn connections_hang_stall_slow_and_vanish() {
    let sim = spawn(one_of_each(), instant()).await;
    let [silent, stall, slow, gone] =
        [Model::S19, Model::S19Pro, Model::S21, Model::M30s].map(|m| address_of(&sim, m));
    sim.inject_fault(&FaultSelector::address(silent), Fault::NoAnswer)
        .unwrap();
    sim.inject_fault(&FaultSelector::address(stall), Fault::StallMidReply)
        .unwrap();
    sim.inject_fault(
        &FaultSelector::address(slow),
        Fault::Slow { delay_ms: 1200 },
    )
    .unwrap();

    let (reply, closed) = rpc(silent, "summary", Duration::from_millis(800)).await;
    assert!(reply.is_empty() && !closed, "no answer at all");

    let (reply, closed) = rpc(stall, "summary", Duration::from_millis(800)).await;
    assert!(
        !reply.is_empty() && !closed,
        "part of a reply, then nothing"
    );
    assert!(!reply.contains(&0), "the reply never ends");
    assert!(serde_json::from_slice::<serde_json::Value>(&reply).is_err());

    let started = Instant::now();
    let (reply, closed) = rpc(slow, "summary", Duration::from_secs(5)).await;
    assert!(closed && reply.ends_with(&[0]));
    assert!(started.elapsed() >= Duration::from_millis(1200));

    // Gone: the per-address listeners close, so connecting is refused.
    sim.inject_fault(&FaultSelector::address(gone), Fault::Gone)
        .unwrap();
    let addr = SocketAddr::from((gone, 4028));
    let refused = wait_for(|| async move { TcpStream::connect(addr).await.is_err() }).await;
    assert!(refused, "a gone miner refuses connections");
    sim.clear_faults(&FaultSelector::address(gone)).unwrap();
    let back = wait_for(|| async move { TcpStream::connect(addr).await.is_ok() }).await;
    assert!(back, "a cleared miner listens again");
    sim.shutdown().await;
}

async fn wait_for<F, Fut>(check: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..50 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn a_random_share_is_deterministic() {
    let sim = spawn(
        ebb_minersim::FleetSpec::single("share", Model::M60, 40),
        SimOptions::default().with_control_addr(None),
    )
    .await;
    let a = sim
        .inject_fault(&FaultSelector::share(0.25).with_seed(9), Fault::AckNoop)
        .unwrap();
    assert_eq!(a.len(), 10);
    assert_eq!(sim.clear_faults(&FaultSelector::all()).unwrap(), 10);
    let b = sim
        .inject_fault(&FaultSelector::share(0.25).with_seed(9), Fault::AckNoop)
        .unwrap();
    assert_eq!(a, b);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_faulty_share_acks_and_never_acts_and_replies_take_the_latency() {
    let latency: ebb_minersim::Latency = "200,400".parse().unwrap();
    let opts = instant().with_faulty_share(1.0).with_latency(latency);
    let sim = spawn(one_of_each(), opts).await;
    let lux = address_of(&sim, Model::S19kProLuxos);
    let started = Instant::now();
    let miner = detect(lux).await;
    // Identification alone is several replies in sequence, each at least ~100 ms here.
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
    assert!(miner.pause(None).await.unwrap(), "acknowledges");
    assert_eq!(sim.truth(lux).unwrap().mode, Mode::Hashing);
    sim.shutdown().await;

    // Without the options: no fault, no delay.
    let sim = spawn(one_of_each(), instant()).await;
    let lux = address_of(&sim, Model::S19kProLuxos);
    let miner = detect(lux).await;
    assert!(miner.pause(None).await.unwrap());
    assert_eq!(sim.truth(lux).unwrap().mode, Mode::Sleeping);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_client_that_never_sends_a_request_is_dropped() {
    let opts = ebb_minersim::SimOptions {
        read_timeout: Duration::from_millis(300),
        ..instant()
    };
    let sim = spawn(one_of_each(), opts).await;
    for port in [4028u16, 4433, 80] {
        let ip = address_of(&sim, Model::M60s);
        let mut s = TcpStream::connect((ip, port)).await.expect("connects");
        let mut buf = [0u8; 16];
        let started = Instant::now();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "port {port}: closed, not answered"
        );
        assert!(started.elapsed() < Duration::from_secs(3), "port {port}");
    }
    sim.shutdown().await;
}
