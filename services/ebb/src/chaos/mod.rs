//! `ebb chaos`: crashes at random points of curtail and restore, and what they cost (issue 11).
//!
//! The harness runs the production topology on this machine: its own PostgreSQL and nats-server
//! (operator-mode auth and TLS, as `ebb dev`), every service as its own process of this binary
//! (gateway, planner, two reconcilers, worker, one agent), and a simulated site in this process
//! (per-address mode, on a random loopback block). Each trial starts a `full` curtailment through
//! the gateway, stops it once `active`, and SIGKILLs one process (a planned [`plan::Kill`]:
//! the leading or standby reconciler, the agent, the planner, the gateway, the worker,
//! nats-server or PostgreSQL) at a seeded point of the curtail or the restore, restarting it
//! after a seeded down time. A client that loses its answer retries as the API says: the same
//! `Idempotency-Key` for a Start, the stop again for a stop.
//!
//! At the end of each trial it checks the truth: the event `completed`, every event of the
//! deployment terminal, every target restored (none lost), and every simulated miner hashing.
//! It prints one JSON line per trial ([`TrialReport`]) and a summary ([`Summary`]); the exit
//! status is 1 when any trial failed its checks.

pub mod plan;

use crate::bench::curtail::fresh_database;
use crate::dev::{self, fleet as devfleet, infra};
use crate::{admin, localhub, services};
use anyhow::{Context as _, bail};
use ebb_domain::{DeviceId, OrgId, SiteCode};
use ebb_minersim::{FleetSpec, GroupSpec, Mode as SimMode, Physics, SimOptions, SiteSpec};
use ebb_natsauth::Identity;
use ebb_runtime::{Common, Context, Needs};
use plan::{Kill, Phase, Victim};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// `ebb chaos` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct ChaosArgs {
    /// Simulated miners (one site; Whatsminer M60S, Antminer S19 Pro and LuxOS S19k Pro in
    /// thirds).
    #[arg(long, default_value_t = 300)]
    pub miners: u32,
    /// Trials, each one curtailment and its restore with one kill.
    #[arg(long, default_value_t = 3)]
    pub trials: usize,
    /// Seed of the kill plan (printed in every line, so a run can be repeated); random if unset.
    #[arg(long)]
    pub seed: Option<u64>,
    /// The processes that may be killed, comma-separated (default: all of reconciler-leader,
    /// reconciler-standby, agent, planner, gateway, worker, nats-server, postgres).
    #[arg(long, value_delimiter = ',', value_parser = parse_victim)]
    pub victims: Vec<Victim>,
    /// Latest point of a kill after its phase began, e.g. `3s`.
    #[arg(long, default_value = "3s", value_parser = ebb_agent::config::parse_duration)]
    pub max_delay: Duration,
    /// How long an event may take to reach `active`, and then `completed`, before the trial
    /// fails.
    #[arg(long, default_value = "120s", value_parser = ebb_agent::config::parse_duration)]
    pub phase_timeout: Duration,
    /// Where the harness's PostgreSQL cluster, NATS files and logs live (kept between runs; the
    /// database and the NATS store are recreated on every run).
    #[arg(long, default_value = ".ebb/chaos")]
    pub data_dir: PathBuf,
}

fn parse_victim(s: &str) -> Result<Victim, String> {
    s.parse()
}

impl ChaosArgs {
    /// Every invalid setting, named.
    pub fn problems(&self) -> Vec<String> {
        let mut bad = Vec::new();
        if !(3..=5_000).contains(&self.miners) {
            bad.push(format!(
                "--miners must be between 3 and 5000, got {}",
                self.miners
            ));
        }
        if !(1..=1_000).contains(&self.trials) {
            bad.push(format!(
                "--trials must be between 1 and 1000, got {}",
                self.trials
            ));
        }
        if self.max_delay > Duration::from_secs(60) {
            bad.push(format!(
                "--max-delay must be at most 60s, got {:?}",
                self.max_delay
            ));
        }
        if self.phase_timeout < Duration::from_secs(10) {
            bad.push(format!(
                "--phase-timeout must be at least 10s, got {:?}",
                self.phase_timeout
            ));
        }
        bad
    }
}

/// Restore pacing of the harness's planner: quick, but paced (several batches per restore).
const RESTORE_BATCH_SIZE: u32 = 100;
const RESTORE_BATCH_INTERVAL_S: u32 = 2;
/// The event states that end an event.
const TERMINAL: &[&str] = &[
    "completed",
    "completed_with_failures",
    "cancelled",
    "failed",
];

/// One trial: what was killed, when, and what it cost.
#[derive(Clone, Debug, Serialize)]
pub struct TrialReport {
    pub trial: usize,
    pub seed: u64,
    #[serde(flatten)]
    pub kill: Kill,
    /// The process that was killed (`reconciler-2`, `agent-site-a`, …).
    pub killed: String,
    /// From the Start's answer to `active`.
    pub to_active_s: Option<f64>,
    /// From the stop's answer to `completed`.
    pub to_completed_s: Option<f64>,
    pub targets: u64,
    pub confirmed: u64,
    pub restored: u64,
    /// Simulated miners not hashing at the end.
    pub asleep_after: usize,
    /// Events of the deployment not in a terminal state at the end.
    pub events_not_terminal: i64,
    /// Targets the event lost: selected but not restored.
    pub targets_lost: u64,
    pub ok: bool,
    /// Why the trial failed, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The whole run.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub summary: bool,
    pub seed: u64,
    pub miners: u32,
    pub trials: usize,
    pub passed: usize,
    pub failed: usize,
    pub asleep_after: usize,
    pub to_active_p50_s: Option<f64>,
    pub to_active_max_s: Option<f64>,
    pub to_completed_p50_s: Option<f64>,
    pub to_completed_max_s: Option<f64>,
    /// What a restore of every miner takes by its pacing alone.
    pub restore_pacing_s: f64,
}

pub async fn run(args: ChaosArgs) -> anyhow::Result<ExitCode> {
    let problems = args.problems();
    if !problems.is_empty() {
        return Ok(ebb_runtime::cli::report_invalid("chaos", &problems));
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    let victims = if args.victims.is_empty() {
        Victim::ALL.to_vec()
    } else {
        args.victims.clone()
    };
    let kills = plan::plan(seed, args.trials, &victims, args.max_delay);
    devfleet::raise_fd_limit()?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let dir = std::fs::canonicalize(&args.data_dir)?;
    let mut topology = Topology::new(&dir)?;
    let outcome = run_trials(&args, seed, &kills, &mut topology).await;
    topology.stop_all().await;
    let reports = outcome?;
    let summary = summarize(&args, seed, &reports);
    println!("{}", serde_json::to_string(&summary)?);
    Ok(if summary.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn summarize(args: &ChaosArgs, seed: u64, reports: &[TrialReport]) -> Summary {
    let passed = reports.iter().filter(|r| r.ok).count();
    let stat = |f: fn(&TrialReport) -> Option<f64>| {
        let mut v: Vec<f64> = reports.iter().filter_map(f).collect();
        v.sort_by(f64::total_cmp);
        let p50 = (!v.is_empty()).then(|| v[(v.len() - 1) / 2]);
        (p50, v.last().copied())
    };
    let (to_active_p50_s, to_active_max_s) = stat(|r| r.to_active_s);
    let (to_completed_p50_s, to_completed_max_s) = stat(|r| r.to_completed_s);
    let batches = args.miners.div_ceil(RESTORE_BATCH_SIZE).saturating_sub(1);
    Summary {
        summary: true,
        seed,
        miners: args.miners,
        trials: reports.len(),
        passed,
        failed: reports.len() - passed,
        asleep_after: reports.iter().map(|r| r.asleep_after).sum(),
        to_active_p50_s,
        to_active_max_s,
        to_completed_p50_s,
        to_completed_max_s,
        restore_pacing_s: f64::from(batches * RESTORE_BATCH_INTERVAL_S),
    }
}

/// Everything a trial talks to.
struct World {
    pool: ebb_store::PgPool,
    sim: ebb_minersim::Simulator,
    org: OrgId,
    wanted: HashSet<DeviceId>,
    base: String,
    token: String,
    http: reqwest::Client,
}

async fn run_trials(
    args: &ChaosArgs,
    seed: u64,
    kills: &[Kill],
    topology: &mut Topology,
) -> anyhow::Result<Vec<TrialReport>> {
    let world = topology.start(args).await?;
    let mut reports = Vec::with_capacity(kills.len());
    let outcome = async {
        for (i, kill) in kills.iter().enumerate() {
            let trial = i + 1;
            // Every miner hashing and freshly sampled, so that `full` selects them all.
            world
                .wait_all_hashing(Duration::from_secs(60))
                .await
                .with_context(|| format!("before trial {trial}"))?;
            dev::wait_for_telemetry(&world.pool, world.org, &world.wanted).await?;
            let report = run_trial(args, seed, trial, *kill, &world, topology).await;
            println!("{}", serde_json::to_string(&report)?);
            reports.push(report);
        }
        Ok::<(), anyhow::Error>(())
    }
    .await;
    world.sim.shutdown().await;
    world.pool.close().await;
    outcome.map(|()| reports)
}

async fn run_trial(
    args: &ChaosArgs,
    seed: u64,
    trial: usize,
    kill: Kill,
    world: &World,
    topology: &mut Topology,
) -> TrialReport {
    let mut report = TrialReport {
        trial,
        seed,
        kill,
        killed: String::new(),
        to_active_s: None,
        to_completed_s: None,
        targets: 0,
        confirmed: 0,
        restored: 0,
        asleep_after: 0,
        events_not_terminal: 0,
        targets_lost: 0,
        ok: false,
        error: None,
    };
    let outcome = drive(args, seed, trial, kill, world, topology, &mut report).await;
    // However the trial went, the victim runs again before the next one.
    if let Err(e) = topology.revive_all().await {
        report.error = Some(format!("restarting the processes: {e:#}"));
        return report;
    }
    let checks = async {
        report.asleep_after = world.asleep_after(Duration::from_secs(30)).await;
        report.events_not_terminal =
            sqlx::query_scalar("SELECT count(*) FROM curtailment_event WHERE state <> ALL($1)")
                .bind(TERMINAL)
                .fetch_one(&world.pool)
                .await?;
        Ok::<(), anyhow::Error>(())
    }
    .await;
    match (outcome, checks) {
        (Err(e), _) | (Ok(()), Err(e)) => report.error = Some(format!("{e:#}")),
        (Ok(()), Ok(())) => {
            report.targets_lost = report.targets.saturating_sub(report.restored);
            report.ok = report.asleep_after == 0
                && report.events_not_terminal == 0
                && report.targets_lost == 0
                && report.targets > 0;
            if !report.ok {
                report.error = Some("the end state failed a check".to_owned());
            }
        }
    }
    report
}

#[allow(clippy::too_many_arguments)] // reason: one call site; the trial's whole context
async fn drive(
    args: &ChaosArgs,
    seed: u64,
    trial: usize,
    kill: Kill,
    world: &World,
    topology: &mut Topology,
    report: &mut TrialReport,
) -> anyhow::Result<()> {
    let key = format!("chaos-{seed}-{trial}");
    let created = world.start(&key, args.phase_timeout).await?;
    let answered = Instant::now();
    let id = created["id"]
        .as_str()
        .context("the start's answer has no id")?
        .to_owned();
    if kill.phase == Phase::Curtail {
        report.killed = topology.inflict(kill, &world.pool).await?;
    }
    let active = world
        .wait_for_state(&id, &["active"], args.phase_timeout)
        .await?;
    report.to_active_s = Some(round(answered.elapsed().as_secs_f64()));
    report.confirmed = count(&active, "confirmed");

    world.stop(&id, args.phase_timeout).await?;
    let stopped = Instant::now();
    if kill.phase == Phase::Restore {
        report.killed = topology.inflict(kill, &world.pool).await?;
    }
    let done = world
        .wait_for_state(&id, &["completed"], args.phase_timeout)
        .await?;
    report.to_completed_s = Some(round(stopped.elapsed().as_secs_f64()));
    report.targets = done["targets"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    report.restored = count(&done, "restored");
    Ok(())
}

fn count(event: &Value, state: &str) -> u64 {
    event["targets"][state].as_u64().unwrap_or(0)
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

impl World {
    /// Starts a `full` curtailment, retrying with the same `Idempotency-Key` while the gateway or
    /// what is behind it is down, as a client should.
    async fn start(&self, key: &str, within: Duration) -> anyhow::Result<Value> {
        let body = json!({"mode": "full", "reason": "ebb chaos", "max_duration_s": 3600});
        self.retrying("the start", within, || async {
            let r = self
                .http
                .post(format!("{}/v1/curtailments", self.base))
                .bearer_auth(&self.token)
                .header("Idempotency-Key", key)
                .json(&body)
                .send()
                .await?;
            let status = r.status();
            let answer: Value = r.json().await.unwrap_or(Value::Null);
            match status.as_u16() {
                200 | 201 => Ok(Some(answer)),
                s if s >= 500 => Ok(None),
                _ => bail!("the start answered {status}: {answer}"),
            }
        })
        .await
    }

    /// Stops the event, retrying while the gateway or what is behind it is down; a stop that
    /// already landed (the event restoring or done) counts.
    async fn stop(&self, id: &str, within: Duration) -> anyhow::Result<()> {
        self.retrying("the stop", within, || async {
            let r = self
                .http
                .post(format!("{}/v1/curtailments/{id}/stop", self.base))
                .bearer_auth(&self.token)
                .json(&json!({"reason": "ebb chaos"}))
                .send()
                .await?;
            let status = r.status();
            if status.is_success() {
                return Ok(Some(()));
            }
            if status.is_server_error() {
                return Ok(None);
            }
            let state = self.state(id).await?;
            if matches!(state["state"].as_str(), Some("restoring" | "completed")) {
                return Ok(Some(()));
            }
            bail!(
                "the stop answered {status} with the event {}",
                state["state"]
            )
        })
        .await
    }

    async fn state(&self, id: &str) -> anyhow::Result<Value> {
        Ok(self
            .http
            .get(format!("{}/v1/curtailments/{id}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// Polls the event until it is in one of `states`, riding out a dead gateway or database;
    /// fails on another terminal state or after `within`.
    async fn wait_for_state(
        &self,
        id: &str,
        states: &[&str],
        within: Duration,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + within;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            if let Ok(event) = self.state(id).await {
                let now = event["state"].as_str().unwrap_or_default();
                if states.contains(&now) {
                    return Ok(event);
                }
                if TERMINAL.contains(&now) {
                    bail!("the event ended {now}: {}", event["targets"]);
                }
                last = event;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "the event was still {} after {within:?} (waiting for {}): {}",
            last["state"],
            states.join(" or "),
            last["targets"]
        )
    }

    /// Runs `attempt` until it returns `Some`, retrying on `None` and on transport errors
    /// (connection refused while the gateway restarts) for up to `within`.
    async fn retrying<T, F, Fut>(
        &self,
        what: &str,
        within: Duration,
        attempt: F,
    ) -> anyhow::Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
    {
        let deadline = Instant::now() + within;
        loop {
            let last = match attempt().await {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => "a server error".to_owned(),
                Err(e) if e.is::<reqwest::Error>() => format!("{e:#}"),
                Err(e) => return Err(e),
            };
            if Instant::now() >= deadline {
                bail!("{what} did not go through within {within:?}: {last}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Simulated miners not hashing once they have had `within` to wake.
    async fn asleep_after(&self, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            let asleep = self.asleep();
            if asleep == 0 || Instant::now() >= deadline {
                return asleep;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn asleep(&self) -> usize {
        self.sim
            .addresses()
            .into_iter()
            .filter(|a| {
                self.sim
                    .truth(*a)
                    .map_or(true, |t| t.mode != SimMode::Hashing)
            })
            .count()
    }

    async fn wait_all_hashing(&self, within: Duration) -> anyhow::Result<()> {
        let asleep = self.asleep_after(within).await;
        if asleep > 0 {
            bail!("{asleep} simulated miners are not hashing");
        }
        Ok(())
    }
}

/// The processes of the deployment, by name, with how to start each again.
struct Topology {
    dir: PathBuf,
    exe: PathBuf,
    pg_port: u16,
    nats_port: u16,
    gateway: String,
    database_url: String,
    hub: Option<localhub::Prepared>,
    nats_conf: PathBuf,
    /// Running processes; a killed one is absent until revived.
    running: BTreeMap<String, infra::Server>,
    /// Every process the topology has, in start order.
    all: Vec<String>,
    /// Starts so far per process, for log file names.
    starts: BTreeMap<String, u32>,
    site: SiteCode,
    ops: Option<Context>,
}

const SERVICES: &[&str] = &[
    "gateway",
    "planner",
    "reconciler-1",
    "reconciler-2",
    "worker",
];

impl Topology {
    fn new(dir: &Path) -> anyhow::Result<Self> {
        let port = || -> anyhow::Result<u16> {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            Ok(l.local_addr()?.port())
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            exe: std::env::current_exe().context("finding this binary to run the services")?,
            pg_port: port()?,
            nats_port: port()?,
            gateway: format!("127.0.0.1:{}", port()?),
            database_url: String::new(),
            hub: None,
            nats_conf: PathBuf::new(),
            running: BTreeMap::new(),
            all: Vec::new(),
            starts: BTreeMap::new(),
            site: devfleet::site_code(0),
            ops: None,
        })
    }

    fn agent_name(&self) -> String {
        format!("agent-{}", self.site)
    }

    /// Servers, fleet, org and every service; returns the world trials run in.
    async fn start(&mut self, args: &ChaosArgs) -> anyhow::Result<World> {
        self.start_postgres().await?;
        let server_url = self.database_url.clone();
        self.database_url = fresh_database(&server_url, "chaos_run").await?;
        let pool = ebb_store::connect(&self.database_url, 4).await?;
        ebb_store::migrate(&pool).await?;
        let (org, sites) = admin::ensure_org_and_sites(
            &pool,
            "chaos",
            &[(self.site.clone(), "Chaos A".to_owned())],
            None,
        )
        .await?;
        let key = admin::ensure_admin_key(&pool, org, &self.dir.join("api-key")).await?;

        let sim = start_sim(args.miners, &self.site).await?;
        let devices: Vec<_> = sim.miners().iter().map(devfleet::device).collect();
        ebb_store::fleet::upsert_devices(&pool, &sites[0], &devices).await?;
        let wanted = ebb_store::fleet::inventory(&pool, sites[0].id)
            .await?
            .iter()
            .map(|d| d.device_id)
            .collect();

        let nats_dir = self.dir.join("nats");
        if nats_dir.exists() {
            std::fs::remove_dir_all(&nats_dir)
                .with_context(|| format!("clearing {}", nats_dir.display()))?;
        }
        let hub = localhub::prepare(&pool, &nats_dir, org, &sites).await?;
        let listen = format!("127.0.0.1:{}", self.nats_port);
        let store = nats_dir.join("store");
        self.nats_conf = hub.write_conf(&localhub::Local {
            listen: &listen,
            http: "127.0.0.1:-1",
            leaf: "127.0.0.1:-1",
            store: Some(&store),
            tls: &hub.tls,
        })?;
        self.hub = Some(hub);
        self.start_nats().await?;

        let mut ops = Common {
            database_url: self.database_url.as_str().into(),
            ..Common::default()
        };
        for (k, v) in self.nats_settings(&Identity::Ops) {
            match k.as_str() {
                "nats_url" => ops.nats_url = v.as_str().into(),
                "nats_creds" => ops.nats_creds = v,
                "nats_ca" => ops.nats_ca = v,
                _ => {}
            }
        }
        let ops =
            Context::connect(&ops, Needs::Nats, "ebb-chaos", CancellationToken::new()).await?;
        self.all = SERVICES.iter().map(|s| (*s).to_owned()).collect();
        self.all.push(self.agent_name());
        for name in SERVICES {
            self.spawn(name)?;
        }
        dev::wait_for_planner(ops.nats(), &self.site).await?;
        let agent = self.agent_name();
        self.spawn(&agent)?;
        self.ops = Some(ops);
        let base = format!("http://{}", self.gateway);
        dev::wait_for_gateway(&base).await?;
        Ok(World {
            pool,
            sim,
            org,
            wanted,
            base,
            token: key.token,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
        })
    }

    async fn start_postgres(&mut self) -> anyhow::Result<()> {
        self.wait_for_dead_postmaster().await;
        let (server, url) = infra::start_postgres(&self.dir.join("pg"), self.pg_port, &[]).await?;
        self.running.insert("postgres".into(), server);
        if self.database_url.is_empty() {
            self.database_url = url;
        }
        Ok(())
    }

    /// A killed postmaster can outlive its SIGKILL for a moment (tearing down, or a zombie until
    /// init reaps it), and a new one refuses to start while its lock file names a live PID.
    /// Waits until the PID in the lock file is gone or a zombie (then the file is stale).
    async fn wait_for_dead_postmaster(&self) {
        let lock = self.dir.join("pg").join("data").join("postmaster.pid");
        let Some(pid) = std::fs::read_to_string(&lock)
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
        else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                Err(_) => return,
                Ok(stat)
                    if stat
                        .rsplit_once(") ")
                        .is_some_and(|(_, s)| s.starts_with('Z')) =>
                {
                    tracing::info!(
                        pid,
                        "the killed postmaster is a zombie: its lock file is stale"
                    );
                    let _ = std::fs::remove_file(&lock);
                    return;
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    async fn start_nats(&mut self) -> anyhow::Result<()> {
        let nats_dir = self.dir.join("nats");
        let (server, _) = infra::start_nats(
            &nats_dir,
            &self.nats_conf,
            &self.dir.join("nats.log"),
            self.nats_port,
        )
        .await?;
        self.running.insert("nats-server".into(), server);
        Ok(())
    }

    fn nats_settings(&self, identity: &Identity) -> Vec<(String, String)> {
        let mut s = vec![(
            "nats_url".to_owned(),
            format!("tls://127.0.0.1:{}", self.nats_port),
        )];
        if let Some(hub) = &self.hub {
            s.push((
                "nats_creds".into(),
                hub.creds(identity).display().to_string(),
            ));
            s.push(("nats_ca".into(), hub.tls.ca.display().to_string()));
        }
        s
    }

    /// The command line of process `name`: its service and settings.
    fn command_line(&self, name: &str) -> anyhow::Result<Vec<String>> {
        let (service, site) = match name.strip_prefix("agent-") {
            Some(_) => ("agent", Some(&self.site)),
            None => (name.split('-').next().unwrap_or(name), None),
        };
        let entry = services::find(service).with_context(|| format!("no service {service}"))?;
        let mut s = self.nats_settings(&services::identity(entry, site));
        if entry.needs == Needs::DatabaseAndNats {
            s.push(("database_url".into(), self.database_url.clone()));
            s.push(("db_connections".into(), "4".into()));
        }
        let mut set = |k: &str, v: String| s.push((k.to_owned(), v));
        match service {
            "gateway" => set("listen", self.gateway.clone()),
            "planner" => {
                set("restore_batch_size", RESTORE_BATCH_SIZE.to_string());
                set(
                    "restore_batch_interval_s",
                    RESTORE_BATCH_INTERVAL_S.to_string(),
                );
            }
            "reconciler" => set("holder", format!("chaos-{name}")),
            "agent" => {
                set("poll_interval", "2s".into());
                set("inventory_refresh", "10s".into());
            }
            _ => {}
        }
        if let Some(site) = site {
            set("site", site.to_string());
        }
        let mut line = vec![service.to_owned()];
        for (k, v) in s {
            line.push(format!("--{}", k.replace('_', "-")));
            line.push(v);
        }
        Ok(line)
    }

    fn spawn(&mut self, name: &str) -> anyhow::Result<()> {
        let n = self.starts.entry(name.to_owned()).or_default();
        *n += 1;
        let log = self.dir.join("logs").join(format!("{name}.{n}.log"));
        std::fs::create_dir_all(self.dir.join("logs"))?;
        let line = self.command_line(name)?;
        let server = infra::spawn_process(name, &self.exe, &line, &log, &self.dir)?;
        self.running.insert(name.to_owned(), server);
        Ok(())
    }

    /// The process a victim names now (the leader is whoever holds the lock).
    async fn resolve(&self, victim: Victim, pool: &ebb_store::PgPool) -> anyhow::Result<String> {
        Ok(match victim {
            Victim::ReconcilerLeader | Victim::ReconcilerStandby => {
                let holder: Option<String> = sqlx::query_scalar(
                    "SELECT holder FROM reconciler_heartbeat ORDER BY beat_at DESC LIMIT 1",
                )
                .fetch_optional(pool)
                .await?;
                let leader = holder
                    .and_then(|h| h.strip_prefix("chaos-").map(str::to_owned))
                    .unwrap_or_else(|| "reconciler-1".to_owned());
                let standby = if leader == "reconciler-1" {
                    "reconciler-2"
                } else {
                    "reconciler-1"
                };
                if victim == Victim::ReconcilerLeader {
                    leader
                } else {
                    standby.to_owned()
                }
            }
            Victim::Agent => self.agent_name(),
            Victim::Planner => "planner".into(),
            Victim::Gateway => "gateway".into(),
            Victim::Worker => "worker".into(),
            Victim::NatsServer => "nats-server".into(),
            Victim::Postgres => "postgres".into(),
        })
    }

    /// Waits for the kill's delay, SIGKILLs its victim, waits its down time and starts it again.
    async fn inflict(&mut self, kill: Kill, pool: &ebb_store::PgPool) -> anyhow::Result<String> {
        tokio::time::sleep(kill.delay).await;
        let name = self.resolve(kill.victim, pool).await?;
        let server = self
            .running
            .remove(&name)
            .with_context(|| format!("{name} is not running"))?;
        tracing::info!(%name, "SIGKILL");
        server.kill().await;
        tokio::time::sleep(kill.down).await;
        self.revive(&name).await?;
        Ok(name)
    }

    async fn revive(&mut self, name: &str) -> anyhow::Result<()> {
        tracing::info!(%name, "restarting");
        match name {
            "postgres" => self.start_postgres().await,
            "nats-server" => self.start_nats().await,
            _ => self.spawn(name),
        }
    }

    /// Starts whatever is not running (a trial that failed between a kill and its restart, or a
    /// process that died by itself).
    async fn revive_all(&mut self) -> anyhow::Result<()> {
        for name in ["postgres", "nats-server"] {
            let dead = self.running.get_mut(name).is_none_or(|s| !s.is_running());
            if dead {
                if let Some(s) = self.running.remove(name) {
                    s.kill().await;
                }
                self.revive(name).await?;
            }
        }
        for name in self.all.clone() {
            let dead = self.running.get_mut(&name).is_none_or(|s| !s.is_running());
            if dead {
                tracing::warn!(%name, "not running: starting it again");
                if let Some(s) = self.running.remove(&name) {
                    s.kill().await;
                }
                self.spawn(&name)?;
            }
        }
        Ok(())
    }

    /// Stops the services, then nats-server, then PostgreSQL.
    async fn stop_all(&mut self) {
        if let Some(ops) = self.ops.take() {
            ops.close().await;
        }
        for name in self.all.iter().rev() {
            if let Some(s) = self.running.remove(name) {
                s.stop().await;
            }
        }
        for name in ["nats-server", "postgres"] {
            if let Some(s) = self.running.remove(name) {
                s.stop().await;
            }
        }
    }
}

/// One site's simulated miners (the dev mix) on a random loopback block, per-address mode, so a
/// run shares the machine with tests and other simulators.
async fn start_sim(miners: u32, site: &SiteCode) -> anyhow::Result<ebb_minersim::Simulator> {
    let k = devfleet::MODELS.len() as u32;
    let groups = devfleet::MODELS
        .iter()
        .zip(0u32..)
        .map(|(m, j)| GroupSpec::new(*m, miners / k + u32::from(j < miners % k)))
        .filter(|g| g.count > 0)
        .collect();
    let spec = FleetSpec::new(vec![SiteSpec::new(site.as_str(), groups)]);
    let options = SimOptions::default()
        .with_physics(Physics::instant())
        .with_control_addr(None);
    ebb_minersim::start(spec, options)
        .await
        .context("starting the simulated miners")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_options_are_named() {
        let args = ChaosArgs {
            miners: 1,
            trials: 0,
            seed: None,
            victims: vec![],
            max_delay: Duration::from_secs(600),
            phase_timeout: Duration::from_secs(1),
            data_dir: PathBuf::from(".ebb/chaos"),
        };
        let p = args.problems().join("; ");
        for name in ["--miners", "--trials", "--max-delay", "--phase-timeout"] {
            assert!(p.contains(name), "{p}");
        }
    }

    #[test]
    fn the_summary_counts_failures_and_pacing() {
        let args = ChaosArgs {
            miners: 300,
            trials: 2,
            seed: Some(1),
            victims: vec![],
            max_delay: Duration::from_secs(3),
            phase_timeout: Duration::from_secs(120),
            data_dir: PathBuf::from(".ebb/chaos"),
        };
        let kill = plan::plan(1, 1, &[Victim::Agent], Duration::from_secs(1))[0];
        let report = |ok, active| TrialReport {
            trial: 1,
            seed: 1,
            kill,
            killed: "agent-site-a".into(),
            to_active_s: Some(active),
            to_completed_s: Some(5.0),
            targets: 300,
            confirmed: 300,
            restored: if ok { 300 } else { 299 },
            asleep_after: usize::from(!ok),
            events_not_terminal: 0,
            targets_lost: u64::from(!ok),
            ok,
            error: None,
        };
        let s = summarize(&args, 1, &[report(true, 10.0), report(false, 20.0)]);
        assert_eq!((s.passed, s.failed, s.asleep_after), (1, 1, 1));
        assert_eq!(
            (s.to_active_p50_s, s.to_active_max_s),
            (Some(10.0), Some(20.0))
        );
        assert_eq!(s.restore_pacing_s, 4.0);
        let line = serde_json::to_value(report(true, 1.0)).unwrap();
        assert_eq!(line["victim"], "agent");
        assert!(line["delay_ms"].is_u64() && line["down_ms"].is_u64());
    }
}
