//! `ebb dev`'s simulator child (`ebb sim dev-site`), run as `ebb dev` runs it: it serves its site
//! with the descriptors [`fleet::site_listeners`] counts, and stops when its stdin closes.

use ebb::dev::fleet;
use std::path::Path;
use std::time::Duration;

/// Far above the sites a running `ebb dev` uses (127.77.1-4.x by default), so both can run.
const INDEX: u32 = 200;

#[tokio::test]
async fn the_site_simulator_holds_the_descriptors_counted_and_stops_with_its_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sim.log");
    let miners = 30;
    let exe = Path::new(env!("CARGO_BIN_EXE_ebb"));
    let mut sim = fleet::spawn_site(exe, INDEX, miners, Duration::from_secs(1), &log).unwrap();
    sim.wait_listening().await.unwrap();
    assert_eq!(sim.len(), miners as usize);
    let base = fleet::site_base(INDEX, miners).unwrap();
    assert_eq!(sim.address_range().map(|(first, _)| first), Some(base));

    // Every miner answers on its RPC port.
    for m in sim.miners() {
        tokio::net::TcpStream::connect((m.address, 4028))
            .await
            .unwrap_or_else(|e| panic!("{} does not answer on 4028: {e}", m.address));
    }

    let pid = sim.id().expect("the child runs");
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64;
    let listeners = fleet::site_listeners(miners);
    assert!(
        (listeners..listeners + 64).contains(&open),
        "{open} descriptors open for {listeners} listeners"
    );

    sim.shutdown().await;
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|stat| stat.contains(") Z ")),
        "the simulator still runs after its stdin closed"
    );
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(
        log_text.contains("simulated miners listening"),
        "{log_text}"
    );
}

#[tokio::test]
async fn a_site_simulator_that_fails_reports_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sim.log");
    let exe = Path::new(env!("CARGO_BIN_EXE_ebb"));
    // Site 254 of 300 miners is past 127.77.0.0/16: the child refuses.
    let mut sim = fleet::spawn_site(exe, 254, 300, Duration::from_secs(1), &log).unwrap();
    let err = format!("{:#}", sim.wait_listening().await.unwrap_err());
    assert!(err.contains("does not fit in 127.77.0.0/16"), "{err}");
    assert!(err.contains("site-255"), "{err}");
    sim.shutdown().await;
}
