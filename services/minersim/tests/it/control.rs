//! The control API reports the truth and drives faults, the clock and the physics.

use ebb_minersim::{FleetSpec, GroupSpec, Model, SimOptions, SiteSpec};
use serde_json::{Value, json};

use crate::spawn;

#[tokio::test]
async fn the_control_api_drives_the_simulation() {
    let spec = FleetSpec::new(vec![
        SiteSpec::new("north", vec![GroupSpec::new(Model::S21, 4)]),
        SiteSpec::new("south", vec![GroupSpec::new(Model::M60s, 6)]),
    ]);
    let sim = spawn(spec, SimOptions::default().with_paused_clock()).await;
    let base = format!("http://{}", sim.control_addr().expect("control api"));
    let http = reqwest::Client::new();
    let get = |path: &str| {
        let req = http.get(format!("{base}{path}"));
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let post = |path: &str, body: Value| {
        let req = http.post(format!("{base}{path}")).json(&body);
        async move { req.send().await.unwrap() }
    };

    let miners = get("/miners").await;
    assert_eq!(miners.as_array().unwrap().len(), 10);
    assert_eq!(get("/miners?site=south").await.as_array().unwrap().len(), 6);
    let first = &miners[0];
    assert_eq!(first["make"], "antminer");
    assert_eq!(first["model_name"], "Antminer S21");
    assert_eq!(first["state"]["mode"], "hashing");
    let addr = first["address"].as_str().unwrap().to_owned();
    assert_eq!(get(&format!("/miners/{addr}")).await["address"], addr);
    let missing = http
        .get(format!("{base}/miners/127.0.0.9"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    let resp = post(
        "/faults",
        json!({"site": "south", "share": 0.5, "fault": {"kind": "refuse_wake"}}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let affected: Value = resp.json().await.unwrap();
    assert_eq!(affected["affected"].as_array().unwrap().len(), 3);
    let bad = post(
        "/faults",
        json!({"address": addr, "fault": {"kind": "slow", "delay_ms": 10_000_000}}),
    )
    .await;
    assert_eq!(bad.status(), 400);
    assert_eq!(get("/summary").await["faulty"], 3);
    let cleared = http.delete(format!("{base}/faults")).send().await.unwrap();
    assert_eq!(cleared.json::<Value>().await.unwrap()["cleared"], 3);

    assert_eq!(get("/clock").await["paused"], true);
    let t0 = get("/clock").await["sim_time_s"].as_f64().unwrap();
    let adv: Value = post("/clock/advance", json!({"seconds": 30}))
        .await
        .json()
        .await
        .unwrap();
    assert!((adv["sim_time_s"].as_f64().unwrap() - t0 - 30.0).abs() < 1e-6);

    let physics: Value = post("/physics", json!({"ramp_s": 5, "idle_pct": 4}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(physics["ramp_down_s"], 5.0);
    assert_eq!(sim.physics().idle_pct, 4.0);
    assert_eq!(
        post("/physics", json!({"idle_pct": 90})).await.status(),
        400
    );

    let summary = get("/summary").await;
    assert_eq!(summary["miners"], 10);
    assert_eq!(summary["hashing"], 10);
    let total: f64 = sim.miners().iter().map(|m| m.nominal_power_w).sum();
    assert!((summary["power_w"].as_f64().unwrap() - total).abs() < 1.0);
    sim.shutdown().await;
}

#[tokio::test]
async fn run_serves_until_cancelled() {
    let config = ebb_minersim::SimConfig {
        miners: 3,
        model: Model::M50,
        instant: true,
        ..ebb_minersim::SimConfig::default()
    };
    let token = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(ebb_minersim::run(config, token.clone()));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!task.is_finished(), "serves until told to stop");
    token.cancel();
    let result = tokio::time::timeout(std::time::Duration::from_secs(5), task)
        .await
        .expect("stops promptly")
        .expect("does not panic");
    result.expect("runs cleanly");

    let bad = ebb_minersim::SimConfig {
        miners: 0,
        ..ebb_minersim::SimConfig::default()
    };
    let err = ebb_minersim::run(bad, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--miners"), "{err}");
}
