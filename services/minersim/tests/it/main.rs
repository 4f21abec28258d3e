//! Integration tests for ebb-minersim: an unmodified asic-rs against the simulated fleet, the
//! digest auth of the Antminer pages, faults on the wire and the control API.
//!
//! Every test starts its own simulator in per-address mode on a random 127.x.y.0 block, so the
//! tests run in parallel. Shared mode binds 0.0.0.0 and lives in its own binary
//! (`tests/shared_mode.rs`).

mod control;
mod detect;
mod digest;
mod faults;

use std::net::{IpAddr, Ipv4Addr};

use asic_rs::MinerFactory;
use asic_rs::core::traits::miner::Miner;
use ebb_minersim::{FleetSpec, GroupSpec, Model, Physics, SimOptions, Simulator, SiteSpec};

/// Starts a simulator for a test.
pub async fn spawn(spec: FleetSpec, opts: SimOptions) -> Simulator {
    ebb_minersim::start(spec, opts)
        .await
        .expect("the simulator starts")
}

/// One unit of every supported model at one site.
pub fn one_of_each() -> FleetSpec {
    FleetSpec::new(vec![SiteSpec::new(
        "it",
        Model::ALL.iter().map(|&m| GroupSpec::new(m, 1)).collect(),
    )])
}

/// Instant ramps: every command shows in the truth at once.
pub fn instant() -> SimOptions {
    SimOptions::default().with_physics(Physics::instant())
}

/// Finds a miner the way any asic-rs user would.
pub async fn detect(ip: Ipv4Addr) -> Box<dyn Miner> {
    MinerFactory::new()
        .get_miner(IpAddr::V4(ip))
        .await
        .expect("detection does not fail")
        .unwrap_or_else(|| panic!("asic-rs identifies the miner at {ip}"))
}

/// The address of the first miner of a model.
pub fn address_of(sim: &Simulator, model: Model) -> Ipv4Addr {
    sim.miners()
        .into_iter()
        .find(|m| m.model == model)
        .map(|m| m.address)
        .expect("the fleet has this model")
}

/// Whether `a` is within `pct` percent of `b` (or both are near zero).
#[track_caller]
pub fn assert_close(what: &str, a: f64, b: f64, pct: f64) {
    let ok = (a - b).abs() <= b.abs() * pct / 100.0 + 0.05;
    assert!(ok, "{what}: read {a}, truth {b} (tolerance {pct}%)");
}
