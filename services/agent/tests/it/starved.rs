//! An agent starved of file descriptors (issue 12, item 3): its own exhaustion is back-pressure,
//! never a miner's outcome. Spends no attempt (no failed result), marks nothing unsupported or
//! unreachable, publishes no unreachable sample, and caches no identification made while
//! starved: once descriptors are free again the same miner path drives every miner.
//!
//! Exhausting descriptors would break every other test running in this process, so the agent
//! side runs in a child process (this test binary again, running [`starved_child`] alone) that
//! lowers its own `RLIMIT_NOFILE`; the simulated miners stay in the parent.

use std::time::Duration;

use ebb_agent::{Budget, MinerPath, MinerPathSettings, Polled, Snapshot};
use ebb_bus::{CommandBatch, DeviceRef, InventoryDevice};
use ebb_domain::{BatchId, CommandKind, CurtailLevel, Outcome, SiteCode};
use serde::{Deserialize, Serialize};

use crate::{instant_paused, inventory_device, mixed, start_sim};

/// Set in the child's environment: the inventory it drives, as JSON.
const CHILD_ENV: &str = "EBB_AGENT_STARVED_CHILD";
/// The child's report line starts with this.
const REPORT: &str = "starved-report ";

/// What the child saw in one phase.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Phase {
    /// Outcome labels of the devices that got a result.
    outcomes: Vec<String>,
    /// Devices deferred (no result).
    deferred: usize,
    /// Poll: samples of miners that answered with values.
    valid: usize,
    /// Poll: samples that said "unreachable".
    unreachable: usize,
    /// Poll: miners not asked.
    poll_deferred: usize,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Report {
    /// The child's lowered descriptor limit.
    fd_limit: u64,
    /// In-flight slots a miner path built under that limit has.
    slots_from_limit: usize,
    /// Every descriptor taken.
    exhausted: Phase,
    /// Command devices the child's `ebb_agent_starved_total{path=command}` counted while
    /// exhausted.
    starved_commands: u64,
    /// The descriptors given back; the same miner path.
    recovered: Phase,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starved_agent_spends_no_attempt_and_marks_nothing_unsupported() {
    ebb_testkit::init_tracing();
    let sim = start_sim(mixed(2, 2, 2), instant_paused()).await;
    let devices: Vec<InventoryDevice> = sim
        .addresses()
        .into_iter()
        .map(|a| inventory_device(&sim, a))
        .collect();
    let exe = std::env::current_exe().expect("the test binary");
    let child = tokio::process::Command::new(exe)
        .args([
            "starved::starved_child",
            "--exact",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, serde_json::to_string(&devices).unwrap())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), child)
        .await
        .expect("the child finishes")
        .expect("the child runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.split_once(REPORT).map(|(_, report)| report))
        .unwrap_or_else(|| {
            panic!(
                "no report from the child\nstdout:\n{stdout}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let report: Report = serde_json::from_str(line).unwrap();
    let n = devices.len();

    // Starved: nobody's outcome, no unreachable sample, every device deferred.
    let e = &report.exhausted;
    assert!(e.outcomes.is_empty(), "a starved agent reported {e:?}");
    assert_eq!(e.deferred, n, "{e:?}");
    assert_eq!(
        report.starved_commands, n as u64,
        "the deferral is a metric"
    );
    assert_eq!(
        (e.valid, e.unreachable, e.poll_deferred),
        (0, 0, n),
        "{e:?}"
    );

    // Recovered, on the same miner path: nothing cached while starved stands in the way.
    let r = &report.recovered;
    assert_eq!(r.deferred, 0, "{r:?}");
    assert_eq!(r.outcomes.len(), n, "{r:?}");
    assert!(
        r.outcomes
            .iter()
            .all(|o| o == "ok" || o == "already_in_state"),
        "{r:?}"
    );
    assert_eq!(
        (r.valid, r.unreachable, r.poll_deferred),
        (n, 0, 0),
        "{r:?}"
    );

    // The lowered limit (open descriptors + 64) leaves a handful of slots, never none.
    assert_eq!(
        report.slots_from_limit,
        ebb_agent::budget::slots(report.fd_limit, MinerPathSettings::default().max_in_flight)
    );
    assert!((1..64).contains(&report.slots_from_limit), "{report:?}");
    sim.shutdown().await;
}

/// The agent side of the test above. Without its environment variable (an ordinary test run)
/// there is nothing to drive, and it returns at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starved_child() {
    let Ok(inventory) = std::env::var(CHILD_ENV) else {
        return;
    };
    ebb_testkit::metrics::recorder();
    let devices: Vec<InventoryDevice> = serde_json::from_str(&inventory).unwrap();
    let inventory = Snapshot::new(devices.clone());
    let batch = CommandBatch {
        batch_id: BatchId::new(),
        event_id: None,
        site: SiteCode::parse("starved").unwrap(),
        command: CommandKind::Curtail {
            level: CurtailLevel::Full,
        },
        devices: devices
            .iter()
            .map(|d| DeviceRef {
                device_id: d.device_id,
                address: d.address.clone(),
                restore_power_limit_w: None,
            })
            .collect(),
    };
    let settings = MinerPathSettings {
        call_timeout: Duration::from_secs(2),
        control_timeout: Duration::from_secs(2),
        ..MinerPathSettings::default()
    };
    // Slots wait at most a second: a starved device is deferred after about that long.
    let path = MinerPath::with_budget(settings.clone(), Budget::new(4, Duration::from_secs(1)));

    // A limit just above what is open now, so filling it takes few descriptors.
    let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    rlimit::setrlimit(rlimit::Resource::NOFILE, open + 64, hard).unwrap();
    let mut report = Report {
        fd_limit: open + 64,
        slots_from_limit: MinerPath::new(settings).budget().size(),
        ..Report::default()
    };

    let mut filler = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        filler.push(f);
        assert!(filler.len() < 1_000, "the lowered limit did not hold");
    }
    report.exhausted = phase(&path, &batch, &inventory).await;
    report.starved_commands =
        ebb_testkit::metrics::counter("ebb_agent_starved_total{path=command}");
    drop(filler);
    report.recovered = phase(&path, &batch, &inventory).await;
    println!("{REPORT}{}", serde_json::to_string(&report).unwrap());
}

async fn phase(path: &MinerPath, batch: &CommandBatch, inventory: &Snapshot) -> Phase {
    let executed = ebb_agent::execute(path, batch, inventory).await;
    let polled = ebb_agent::poll_each(path, inventory).await;
    let sample =
        |p: &Polled, reachable: bool| matches!(p, Polled::Sample(s) if s.reachable == reachable);
    Phase {
        outcomes: executed
            .results
            .iter()
            .map(|r| Outcome::label(&r.outcome).to_owned())
            .collect(),
        deferred: executed.deferred.len(),
        valid: polled.iter().filter(|p| sample(&p.polled, true)).count(),
        unreachable: polled.iter().filter(|p| sample(&p.polled, false)).count(),
        poll_deferred: polled
            .iter()
            .filter(|p| p.polled == Polled::Deferred)
            .count(),
    }
}
