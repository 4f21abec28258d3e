//! Known miners are not rediscovered (issue 12, item 2): a miner registered with its make, model
//! and firmware is polled and commanded through the agent's own protocol clients without an
//! identification, before and after an agent restart; a miner registered without a firmware is
//! identified through asic-rs, as before. The simulator counts identification probes (RPC
//! `version` and `devdetails`, which asic-rs sends whenever it identifies and never otherwise).

use std::time::Duration;

use ebb_domain::{CommandKind, CurtailLevel, Outcome};
use ebb_minersim::Mode;

use crate::{assert_all, instant_paused, mixed, spawn_agent};

const FULL: CommandKind = CommandKind::Curtail {
    level: CurtailLevel::Full,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_miner_is_not_reidentified_after_an_agent_restart() {
    let mut h = spawn_agent("known", mixed(2, 2, 2), instant_paused(), vec![], |_| {}).await;
    let devices = h.devices.clone();
    let probes = |h: &crate::Harness| -> Vec<u32> {
        h.devices
            .iter()
            .map(|d| h.sim.probes(h.address(d)).unwrap())
            .collect()
    };

    // First start: the agent's first poll (at once) and a curtail, all without identifying.
    let curtail = h.batch(FULL, &devices);
    let r = h.run(&curtail).await;
    assert_all(&r, "curtail", |o| *o == Outcome::Ok);
    h.telemetry_where(|t| t.samples.len() == devices.len())
        .await;
    for d in &devices {
        assert_eq!(
            h.sim.truth(h.address(d)).unwrap().mode,
            Mode::Sleeping,
            "{}",
            d.address
        );
    }
    assert_eq!(
        probes(&h),
        vec![0; devices.len()],
        "registered miners were identified"
    );

    // Restart, with one miner's firmware forgotten (as if registered by hand without a scan).
    h.stop_agent(Duration::from_secs(30)).await;
    h.devices[0].firmware = None;
    h.restart_agent();
    let uncurtail = h.batch(CommandKind::Uncurtail, &devices);
    let r = h.run(&uncurtail).await;
    assert_all(&r, "uncurtail", |o| *o == Outcome::Ok);
    for d in &devices {
        assert_eq!(
            h.sim.truth(h.address(d)).unwrap().mode,
            Mode::Hashing,
            "{}",
            d.address
        );
    }
    let after = probes(&h);
    // The unregistered one was identified through asic-rs: the count does count.
    assert!(after[0] > 0, "{after:?}");
    assert_eq!(
        &after[1..],
        vec![0; devices.len() - 1].as_slice(),
        "registered miners were re-identified after a restart"
    );
    h.stop().await;
}
