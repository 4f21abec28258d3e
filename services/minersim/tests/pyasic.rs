//! pyasic against the simulator: a second, independent client proves the fidelity.
//!
//! Issue 4 asks for a simulator that miner-management tools other than asic-rs accept, so this
//! binary drives a simulated fleet with [pyasic](https://pypi.org/project/pyasic/), the widely
//! used Python library, through `tests/pyasic/check.py`, and compares what pyasic detects, reads
//! and controls with the simulator's truth.
//!
//! It needs `EBB_PYASIC_PYTHON`: a Python with the pyasic release pinned as `PYASIC_VERSION` in
//! `scripts/lib.sh`. `scripts/test` installs that release into a virtualenv and sets the
//! variable; without it these tests fail (they never skip), and a different pyasic release
//! fails too, since the expectations below are that release's.
//!
//! What pyasic 0.79.0 does with each firmware (from its source):
//! - **Whatsminer v3**: detects `btminer`/`bitmicro` over RPC 4028, takes the model from `devdetails` and
//!   the firmware date from `get_version` (after 2024-11: its `BTMinerV3` backend), then reads
//!   and controls over the v3 API on 4433: `get.device.info`, `get.miner.status` (summary,
//!   edevs), and `set.miner.service` stop/start and `set.miner.power_limit` with the salted
//!   token. On v3 it never reads `is_mining`, and looks for pools in the `summary` reply,
//!   where the firmware does not put them.
//! - **Antminer stock**: detects the `antMiner` digest realm on port 80, the model from
//!   `get_system_info.cgi` or RPC `version`; reads per-board rates and chips from `stats.cgi`,
//!   fans and uptime from RPC `stats`, the MAC from `get_system_info.cgi` and the work mode from
//!   `get_miner_conf.cgi`; stops and resumes by rewriting `bitmain-work-mode` through
//!   `get_miner_conf.cgi` / `set_miner_conf.cgi`. It reads no power from stock Antminers and
//!   has no power limit for them.
//! - **LuxOS**: detects `LUXminer` over RPC 4028; reads boards from `stats` and power from
//!   `power`; stops and resumes with `session`/`logon` then `curtail` sleep/wakeup. It reports
//!   no MAC (its `_get_mac` returns early) and never `is_mining = false`. Its power limit
//!   picks a profile with `atmset` + `profileset`, which the simulator does not serve, so it is
//!   not exercised here.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use ebb_minersim::{
    FleetSpec, GroupSpec, MinerInfo, Mode, Model, Physics, SimOptions, Simulator, SiteSpec,
};
use serde::Deserialize;

/// The script that runs pyasic.
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pyasic/check.py");
/// Where the pinned pyasic release is written down.
const LIB_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/lib.sh");
/// Longest one run of the script may take (a handful of miners take about a second).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// One line of `check.py` output: what pyasic made of one miner.
#[derive(Debug, Deserialize)]
#[allow(dead_code)] // read through Debug in failure messages
struct Report {
    address: Ipv4Addr,
    pyasic: String,
    class: String,
    bases: Vec<String>,
    make: Option<String>,
    model: Option<String>,
    firmware: Option<String>,
    algo: Option<String>,
    action: String,
    returned: Option<bool>,
    hashrate_ths: Option<f64>,
    expected_hashrate_ths: Option<f64>,
    wattage_w: Option<f64>,
    wattage_limit_w: Option<f64>,
    is_mining: Option<bool>,
    boards: usize,
    board_hashrate_ths: Vec<Option<f64>>,
    chips: Option<u64>,
    expected_hashboards: Option<u64>,
    expected_chips: Option<u64>,
    fans: Vec<Option<f64>>,
    expected_fans: Option<u64>,
    mac: Option<String>,
    fw_ver: Option<String>,
    uptime_s: Option<u64>,
    pools: usize,
    errors: Vec<String>,
    warnings: Vec<String>,
}

/// What pyasic must make of a model.
struct Expected {
    class: &'static str,
    /// The backend class pyasic must have chosen (a base of `class`).
    backend: &'static str,
    make: &'static str,
    model: &'static str,
    firmware: &'static str,
    /// Whether this pyasic backend reads power, the MAC, pools, and `is_mining` from the miner.
    reads_power: bool,
    reads_mac: bool,
    reads_pools: bool,
    reads_is_mining: bool,
}

fn expected(model: Model) -> Expected {
    let whatsminer = |class, model| Expected {
        class,
        backend: "BTMinerV3",
        make: "WhatsMiner",
        model,
        firmware: "Stock",
        reads_power: true,
        reads_mac: true,
        reads_pools: false,
        reads_is_mining: false,
    };
    let antminer = |class, model| Expected {
        class,
        backend: "AntminerModern",
        make: "AntMiner",
        model,
        firmware: "Stock",
        reads_power: false,
        reads_mac: true,
        reads_pools: true,
        reads_is_mining: true,
    };
    match model {
        Model::M30s => whatsminer("BTMinerM30SVE10", "M30S VE10"),
        Model::M50 => whatsminer("BTMinerM50VH50", "M50 VH50"),
        Model::M60 => whatsminer("BTMinerM60VK10", "M60 VK10"),
        Model::M60s => whatsminer("BTMinerM60SVK40", "M60S VK40"),
        Model::S19 => antminer("BMMinerS19", "S19"),
        Model::S19Pro => antminer("BMMinerS19Pro", "S19 Pro"),
        Model::S21 => antminer("BMMinerS21", "S21"),
        Model::S19kProLuxos => Expected {
            class: "LUXMinerS19kPro",
            backend: "LUXMiner",
            make: "AntMiner",
            model: "S19k Pro",
            firmware: "LuxOS",
            reads_power: true,
            reads_mac: false,
            reads_pools: true,
            reads_is_mining: false,
        },
    }
}

fn is_whatsminer(model: Model) -> bool {
    matches!(model, Model::M30s | Model::M50 | Model::M60 | Model::M60s)
}

/// The pyasic release pinned in scripts/lib.sh (`PYASIC_VERSION=...`).
fn pinned_version() -> String {
    let lib = std::fs::read_to_string(LIB_SH).unwrap_or_else(|e| panic!("reading {LIB_SH}: {e}"));
    lib.lines()
        .find_map(|l| l.trim().strip_prefix("PYASIC_VERSION="))
        .map(|v| v.trim_matches(['"', '\'']).to_owned())
        .unwrap_or_else(|| panic!("{LIB_SH} sets no PYASIC_VERSION"))
}

/// The Python to run pyasic with; fails the test when it is not configured.
fn pyasic_python() -> PathBuf {
    match std::env::var_os("EBB_PYASIC_PYTHON").filter(|p| !p.is_empty()) {
        Some(python) => PathBuf::from(python),
        None => {
            let version = pinned_version();
            panic!(
                "EBB_PYASIC_PYTHON is not set, so pyasic cannot be run. Run the tests with \
                 scripts/test (it installs pyasic=={version} into a virtualenv and sets \
                 EBB_PYASIC_PYTHON), or set EBB_PYASIC_PYTHON to a Python that has \
                 pyasic=={version} installed"
            )
        }
    }
}

/// Runs `check.py ACTION ADDRESS...` and returns one report per address, in order.
async fn pyasic(action: &str, addresses: &[Ipv4Addr]) -> Vec<Report> {
    let python = pyasic_python();
    let run = tokio::process::Command::new(&python)
        .arg(SCRIPT)
        .arg(action)
        .args(addresses.iter().map(ToString::to_string))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(SCRIPT_TIMEOUT, run)
        .await
        .unwrap_or_else(|_| panic!("check.py {action} took longer than {SCRIPT_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("running {} {SCRIPT}: {e}", python.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "check.py {action} failed ({}):\n{stderr}\nstdout:\n{stdout}",
        output.status
    );
    let reports: Vec<Report> = stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("check.py printed an unexpected line ({e}): {l}"))
        })
        .collect();
    let seen: Vec<Ipv4Addr> = reports.iter().map(|r| r.address).collect();
    assert_eq!(seen, addresses, "one report per address\nstderr:\n{stderr}");
    let pinned = pinned_version();
    for r in &reports {
        assert_eq!(
            r.pyasic,
            pinned,
            "EBB_PYASIC_PYTHON={} runs pyasic {}, but these tests are written for {pinned} \
             (PYASIC_VERSION in scripts/lib.sh); run scripts/test to install it",
            python.display(),
            r.pyasic
        );
    }
    reports
}

/// Whether `a` is within `pct` percent of `b`, give or take `abs` (for near-zero readings).
#[track_caller]
fn assert_close(what: &str, a: f64, b: f64, pct: f64, abs: f64) {
    assert!(
        (a - b).abs() <= b.abs() * pct / 100.0 + abs,
        "{what}: pyasic read {a}, truth {b} (tolerance {pct}% + {abs})"
    );
}

/// One unit of every model, instant physics: a command shows in the truth at once.
async fn fleet() -> Simulator {
    let spec = FleetSpec::new(vec![SiteSpec::new(
        "pyasic",
        Model::ALL.iter().map(|&m| GroupSpec::new(m, 1)).collect(),
    )]);
    ebb_minersim::start(spec, SimOptions::default().with_physics(Physics::instant()))
        .await
        .expect("the simulator starts")
}

/// Checks what pyasic identified, and that it did so without complaint.
#[track_caller]
fn assert_identified(info: &MinerInfo, r: &Report) {
    let want = expected(info.model);
    let what = format!("{} at {}", info.model, info.address);
    assert_eq!(
        (
            r.class.as_str(),
            r.make.as_deref(),
            r.model.as_deref(),
            r.firmware.as_deref()
        ),
        (
            want.class,
            Some(want.make),
            Some(want.model),
            Some(want.firmware)
        ),
        "{what}: pyasic's class, make, model, firmware"
    );
    assert!(
        r.bases.iter().any(|b| b == want.backend),
        "{what}: pyasic backend {} expected among {:?}",
        want.backend,
        r.bases
    );
    assert_eq!(r.algo.as_deref(), Some("SHA256"), "{what}: algorithm");
    assert!(
        r.warnings.is_empty(),
        "{what}: pyasic warned: {:?}",
        r.warnings
    );
    assert!(
        r.errors.is_empty(),
        "{what}: pyasic reports errors: {:?}",
        r.errors
    );
}

/// Checks that what pyasic read matches the simulator's truth.
#[track_caller]
fn assert_reads_truth(sim: &Simulator, info: &MinerInfo, r: &Report) {
    let want = expected(info.model);
    let what = format!("{} at {} after {}", info.model, info.address, r.action);
    let truth = sim.truth(info.address).expect("the miner exists");
    let ths = r
        .hashrate_ths
        .unwrap_or_else(|| panic!("{what}: no hashrate: {r:?}"));
    assert_close(
        &format!("{what}: hashrate"),
        ths,
        truth.hashrate_ths,
        3.0,
        0.01,
    );
    assert_eq!(r.boards, 3, "{what}: boards");
    let board_sum: f64 = r.board_hashrate_ths.iter().flatten().sum();
    assert_close(
        &format!("{what}: board sum"),
        board_sum,
        truth.hashrate_ths,
        3.0,
        0.01,
    );
    match r.wattage_w {
        Some(w) => assert_close(&format!("{what}: power"), w, truth.power_w, 3.0, 1.0),
        None => assert!(!want.reads_power, "{what}: no power read: {r:?}"),
    }
    if want.reads_is_mining {
        assert_eq!(
            r.is_mining,
            Some(truth.mode != Mode::Sleeping),
            "{what}: is_mining"
        );
    }
}

#[tokio::test]
async fn pyasic_identifies_and_reads_every_model() {
    let sim = fleet().await;
    let miners = sim.miners();
    let reports = pyasic("read", &sim.addresses()).await;
    for (info, r) in miners.iter().zip(&reports) {
        let want = expected(info.model);
        let what = format!("{} at {}", info.model, info.address);
        assert_identified(info, r);
        assert_reads_truth(&sim, info, r);
        assert_eq!(r.is_mining, Some(true), "{what}: is_mining");

        // The simulator's datasheet agrees with pyasic's own idea of the model.
        assert_eq!(r.expected_hashboards, Some(3), "{what}: expected boards");
        assert!(
            r.expected_chips.is_some(),
            "{what}: pyasic knows the chip count"
        );
        assert_eq!(r.chips, r.expected_chips, "{what}: chips on all boards");
        assert_eq!(
            Some(r.fans.len() as u64),
            r.expected_fans,
            "{what}: fans {:?}",
            r.fans
        );
        assert!(
            r.fans.iter().all(|f| f.is_some_and(|rpm| rpm > 1000.0)),
            "{what}: fans spin: {:?}",
            r.fans
        );
        let expected_ths = r.expected_hashrate_ths.expect("an expected hashrate");
        assert_close(
            &format!("{what}: expected hashrate"),
            expected_ths,
            info.nominal_hashrate_ths,
            3.0,
            0.01,
        );
        if is_whatsminer(info.model) {
            // The v3 API's own power limit, which pyasic reports as the limit.
            assert!(
                r.wattage_limit_w.is_some_and(|w| w >= info.nominal_power_w),
                "{what}: power limit {:?}",
                r.wattage_limit_w
            );
        }
        if want.reads_mac {
            let mac = r.mac.as_deref().unwrap_or_default();
            assert_eq!(mac.len(), 17, "{what}: mac {mac:?}");
        }
        if want.reads_pools {
            assert_eq!(r.pools, 3, "{what}: pools");
        }
        assert!(r.fw_ver.is_some(), "{what}: firmware version");
        assert!(
            r.uptime_s.is_some_and(|u| u > 3000),
            "{what}: uptime {:?}",
            r.uptime_s
        );
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn pyasic_stops_and_resumes_every_model() {
    let sim = fleet().await;
    let miners = sim.miners();
    let addresses = sim.addresses();

    let stopped = pyasic("stop", &addresses).await;
    for (info, r) in miners.iter().zip(&stopped) {
        let what = format!("{} at {}", info.model, info.address);
        assert_identified(info, r);
        assert_eq!(r.returned, Some(true), "{what}: stop_mining returns");
        let truth = sim.truth(info.address).unwrap();
        assert_eq!(truth.mode, Mode::Sleeping, "{what}: asleep");
        assert_eq!(truth.hashrate_ths, 0.0, "{what}: no hashrate");
        assert!(
            truth.power_w > 0.0 && truth.power_w < info.nominal_power_w * 0.05,
            "{what}: idles at {} W",
            truth.power_w
        );
        assert_reads_truth(&sim, info, r);
    }

    let resumed = pyasic("resume", &addresses).await;
    for (info, r) in miners.iter().zip(&resumed) {
        let what = format!("{} at {}", info.model, info.address);
        assert_identified(info, r);
        assert_eq!(r.returned, Some(true), "{what}: resume_mining returns");
        let truth = sim.truth(info.address).unwrap();
        assert_eq!(truth.mode, Mode::Hashing, "{what}: hashing again");
        assert_close(
            &format!("{what}: power back"),
            truth.power_w,
            info.nominal_power_w,
            1.0,
            0.0,
        );
        assert_reads_truth(&sim, info, r);
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn pyasic_sets_a_whatsminer_power_limit() {
    const LIMIT_W: f64 = 2000.0;
    let sim = fleet().await;
    let whatsminers: Vec<MinerInfo> = sim
        .miners()
        .into_iter()
        .filter(|m| is_whatsminer(m.model))
        .collect();
    let addresses: Vec<Ipv4Addr> = whatsminers.iter().map(|m| m.address).collect();

    let limited = pyasic(&format!("limit={LIMIT_W}"), &addresses).await;
    for (info, r) in whatsminers.iter().zip(&limited) {
        let what = format!("{} at {}", info.model, info.address);
        assert_identified(info, r);
        assert_eq!(r.returned, Some(true), "{what}: set_power_limit returns");
        let truth = sim.truth(info.address).unwrap();
        assert_eq!(truth.mode, Mode::PowerLimited, "{what}: limited");
        assert_eq!(truth.power_limit_w, Some(LIMIT_W), "{what}: the limit");
        assert_close(&format!("{what}: power"), truth.power_w, LIMIT_W, 1.0, 0.0);
        assert!(
            truth.hashrate_ths > 0.0 && truth.hashrate_ths < info.nominal_hashrate_ths,
            "{what}: hashrate {} follows the limit",
            truth.hashrate_ths
        );
        assert_reads_truth(&sim, info, r);
        assert_eq!(r.wattage_limit_w, Some(LIMIT_W), "{what}: limit read back");
    }
    sim.shutdown().await;
}
