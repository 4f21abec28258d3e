//! `ebb bench curtail`: the whole path, end to end. Every service runs in this process as in
//! `ebb dev` (the gateway over HTTP, planner, reconciler, worker, one agent per site over NATS
//! with the production auth), on a PostgreSQL and a nats-server it starts under `--data-dir`,
//! against one shared-mode simulator holding every site's miners. It drives one `full`
//! curtailment through the gateway's API, then its stop, and prints one JSON object
//! ([`CurtailReport`]).
//!
//! What it counts besides wall time, and how:
//! - the reconciler's CPU: the reconciler runs on a thread of its own (a current-thread tokio
//!   runtime with its own pool and NATS connection), whose CPU time `/proc` gives;
//! - PostgreSQL statements and rows: `pg_stat_statements` (the bench's server preloads it),
//!   reset just before the start;
//! - NATS messages: the server's `/varz` (`in_msgs`) on its loopback monitoring port;
//! - per-miner latencies: from the event's transition log (dispatch to confirmed), and the
//!   agent's `ebb_agent_miner_call_seconds` histogram for the command calls themselves;
//! - `ramp_excess_kw`: the most baseline power any site got back in any 60-second window of
//!   the restore, above its ramp limit (from the transition log; must be 0).

use super::measure::{cpu_seconds, peak_rss_bytes, round};
use crate::dev::{self, DevNats, fleet as devfleet, infra};
use crate::{admin, localhub, services};
use anyhow::{Context as _, bail, ensure};
use ebb_domain::{DeviceId, SiteCode, SiteId};
use ebb_minersim::{FleetSpec, GroupSpec, ListenMode, Physics, SimOptions, SiteSpec};
use ebb_runtime::{Common, Context, Entry, Instances, Needs, Sources, Supervisor};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// `ebb bench curtail` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct CurtailArgs {
    /// Simulated miners in all, split evenly over the sites (Whatsminer M60S, Antminer S19 Pro
    /// and LuxOS S19k Pro in thirds).
    #[arg(long, default_value_t = 10_000)]
    pub miners: usize,
    /// Sites, each with its own agent.
    #[arg(long, default_value_t = 1)]
    pub sites: u32,
    /// Each site's ramp limit in kW per minute. By default twelve times the biggest site's
    /// nameplate power, so a whole site may come back in five seconds: the restore measures
    /// Ebb, not the pacing (pass a lower limit to watch the pacing hold).
    #[arg(long)]
    pub ramp_kw_per_min: Option<f64>,
    /// Where the benchmark's PostgreSQL cluster and NATS files live (kept between runs; the
    /// database and the NATS store are recreated on every run).
    #[arg(long, default_value = ".ebb/bench")]
    pub data_dir: PathBuf,
    /// Every simulated miner's reply latency as `P50_MS,P99_MS` (log-normal, drawn per reply).
    #[arg(long)]
    pub latency: Option<ebb_minersim::Latency>,
    /// Percent of the miners that acknowledge every command and never curtail: they must end
    /// `failed` while every healthy miner confirms.
    #[arg(long, default_value_t = 0.0)]
    pub faulty: f64,
    /// How long the curtailment and the stop may each take before the benchmark gives up.
    #[arg(long, default_value = "600s", value_parser = ebb_agent::config::parse_duration)]
    pub timeout: Duration,
}

impl CurtailArgs {
    /// Every invalid setting, named.
    pub fn problems(&self) -> Vec<String> {
        let mut bad = Vec::new();
        if !(1..=100).contains(&self.sites) {
            bad.push(format!(
                "--sites must be between 1 and 100, got {}",
                self.sites
            ));
        }
        if !(1..=super::MAX_MINERS).contains(&self.miners) {
            bad.push(format!(
                "--miners must be between 1 and {}, got {}",
                super::MAX_MINERS,
                self.miners
            ));
        } else if self.miners < self.sites as usize {
            bad.push(format!(
                "--miners ({}) must be at least --sites ({})",
                self.miners, self.sites
            ));
        }
        if let Some(r) = self.ramp_kw_per_min
            && !(r.is_finite() && r > 0.0)
        {
            bad.push(format!("--ramp-kw-per-min must be positive, got {r}"));
        }
        if !(self.faulty.is_finite() && (0.0..=100.0).contains(&self.faulty)) {
            bad.push(format!(
                "--faulty must be a percentage between 0 and 100, got {}",
                self.faulty
            ));
        }
        if self.timeout.is_zero() {
            bad.push("--timeout must be positive".to_owned());
        }
        bad
    }
}

/// What one curtailment of the whole fleet and its stop did.
#[derive(Clone, Debug, Serialize)]
pub struct CurtailReport {
    /// Always `"curtail"`.
    pub benchmark: &'static str,
    pub miners: usize,
    pub sites: u32,
    /// The simulated reply latency (`--latency`), if any.
    pub latency_p50_ms: Option<u128>,
    pub latency_p99_ms: Option<u128>,
    /// Percent of miners that acknowledge and never curtail (`--faulty`).
    pub faulty_pct: f64,
    /// The event's targets (every eligible miner: all of them in a healthy fleet).
    pub targets: u64,
    /// Setting up (servers, simulator, registration, first telemetry of every miner); not part
    /// of any other figure.
    pub setup_s: f64,
    /// The Start request's own round trip (selection and writing every target).
    pub start_request_s: f64,
    /// From the Start's `201` to the event's `active`; `null` when it was not reached within
    /// `--timeout` (the run goes on to the stop and still reports).
    pub start_to_active_s: Option<f64>,
    /// From the stop's answer to the event's `completed`; `null` when it was not reached.
    pub stop_to_completed_s: Option<f64>,
    /// The event's state when the benchmark stopped waiting: `completed` for a clean run, else
    /// what it was (`completed_with_failures`, or still `restoring` after `--timeout`).
    pub ended: String,
    /// Targets confirmed when the event went `active`.
    pub confirmed: u64,
    /// Targets failed when the event went `active`.
    pub failed: u64,
    /// Targets restored at the end.
    pub restored: u64,
    /// Targets whose restore failed.
    pub restore_failed: u64,
    /// The most baseline power (kW) any site got back within 60 s beyond its ramp limit.
    pub ramp_excess_kw: f64,
    /// Each site's ramp limit (kW per minute).
    pub ramp_kw_per_min: f64,
    /// Reconciler CPU seconds (its own thread) from the Start to `completed`, per 1,000 targets.
    pub reconciler_cpu_s_per_1000_targets: Option<f64>,
    /// The whole process's CPU seconds (every service, the simulator and this driver) over the
    /// same span.
    pub process_cpu_s: Option<f64>,
    /// PostgreSQL statements executed over the same span, per target.
    pub pg_statements_per_target: Option<f64>,
    /// Rows those statements returned or changed, per target.
    pub pg_rows_per_target: Option<f64>,
    /// Messages the nats-server received over the same span, per target.
    pub nats_messages_per_target: Option<f64>,
    /// Peak resident memory of the process (services and simulator together), in MiB.
    pub peak_rss_mib: Option<f64>,
    /// Per miner, from its dispatch to its confirmation (the event's transition log).
    pub dispatch_to_confirmed_p50_s: f64,
    pub dispatch_to_confirmed_p99_s: f64,
    /// Per command call to a miner (pause, resume), interpolated within the agent's histogram
    /// buckets.
    pub command_call_p50_ms: Option<f64>,
    pub command_call_p99_ms: Option<f64>,
}

/// The ops the agent records for a command (as opposed to reads and identification).
const COMMAND_OPS: &[&str] = &["pause", "resume", "set_power_limit"];

pub async fn bench_curtail(args: CurtailArgs) -> anyhow::Result<CurtailReport> {
    let problems = args.problems();
    if !problems.is_empty() {
        bail!("invalid benchmark options: {}", problems.join("; "));
    }
    devfleet::raise_fd_limit()?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let dir = std::fs::canonicalize(&args.data_dir)?;
    let shutdown = CancellationToken::new();
    let mut servers = Vec::new();
    let outcome = run(&args, &dir, &mut servers, &shutdown).await;
    shutdown.cancel();
    while let Some(server) = servers.pop() {
        server.stop().await;
    }
    outcome
}

/// A free loopback port, for a server started right after.
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

async fn run(
    args: &CurtailArgs,
    dir: &Path,
    servers: &mut Vec<infra::Server>,
    shutdown: &CancellationToken,
) -> anyhow::Result<CurtailReport> {
    let setup = Instant::now();
    // PostgreSQL, with pg_stat_statements to count statements; a fresh database every run.
    let (server, url) = infra::start_postgres(
        &dir.join("pg"),
        free_port()?,
        &["shared_preload_libraries=pg_stat_statements"],
    )
    .await?;
    servers.push(server);
    let database_url = fresh_database(&url, "bench_run").await?;
    let pool = ebb_store::connect(&database_url, 8).await?;
    ebb_store::migrate(&pool).await?;
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(&pool)
        .await
        .context("creating pg_stat_statements")?;

    // The simulator first: the sites' ramp limits follow from their nameplate power.
    let codes: Vec<SiteCode> = (0..args.sites).map(devfleet::site_code).collect();
    let sim = start_sim(args.miners, &codes, args.latency, args.faulty / 100.0).await?;
    let outcome = async {
        let miners = sim.miners();
        let mut site_kw: HashMap<String, f64> = HashMap::new();
        for m in &miners {
            *site_kw.entry(m.site.clone()).or_default() += m.nominal_power_w / 1000.0;
        }
        let ramp = args
            .ramp_kw_per_min
            .unwrap_or_else(|| 12.0 * site_kw.values().copied().fold(0.0, f64::max).ceil());
        let named: Vec<(SiteCode, String)> =
            codes.iter().map(|c| (c.clone(), c.to_string())).collect();
        let (org, sites) = admin::ensure_org_and_sites(&pool, "bench", &named, Some(ramp)).await?;
        let key = admin::ensure_admin_key(&pool, org, &dir.join("api-key")).await?;
        for site in &sites {
            let devices: Vec<_> = miners
                .iter()
                .filter(|m| m.site == site.code.as_str())
                .map(devfleet::device)
                .collect();
            ebb_store::fleet::upsert_devices(&pool, site, &devices)
                .await
                .with_context(|| format!("registering the miners of {}", site.code))?;
        }
        let wanted: HashSet<DeviceId> = ebb_store::fleet::candidates(&pool, org, &[])
            .await?
            .iter()
            .map(|c| c.device_id)
            .collect();
        ensure!(
            wanted.len() == args.miners,
            "registered {} of {} miners",
            wanted.len(),
            args.miners
        );

        // NATS with the production auth, fresh JetStream store, monitoring on loopback.
        let nats_dir = dir.join("nats");
        if nats_dir.exists() {
            std::fs::remove_dir_all(&nats_dir)
                .with_context(|| format!("clearing {}", nats_dir.display()))?;
        }
        let hub = localhub::prepare(&pool, &nats_dir, org, &sites).await?;
        let (nats_port, monitor_port) = (free_port()?, free_port()?);
        let listen = format!("127.0.0.1:{nats_port}");
        let http = format!("127.0.0.1:{monitor_port}");
        let store = nats_dir.join("store");
        let conf = hub.write_conf(&localhub::Local {
            listen: &listen,
            http: &http,
            leaf: "127.0.0.1:-1",
            store: Some(&store),
            tls: &hub.tls,
        })?;
        let (server, nats_url) =
            infra::start_nats(&nats_dir, &conf, &dir.join("nats.log"), nats_port).await?;
        servers.push(server);
        let nats = DevNats {
            url: nats_url,
            hub: Some(hub),
        };
        let gateway = format!("127.0.0.1:{}", free_port()?);
        let settings = BenchSettings {
            database_url: &database_url,
            nats: &nats,
            gateway: &gateway,
        };
        let world = World {
            pool: &pool,
            monitor: format!("http://{http}/varz"),
            base: format!("http://{gateway}"),
            token: key.token.clone(),
            ramp,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
        };
        run_services(
            args, &settings, &codes, &world, &wanted, org, setup, shutdown,
        )
        .await
    }
    .await;
    sim.shutdown().await;
    pool.close().await;
    outcome
}

/// Drops and creates `name` on the server of `url`; returns its URL.
pub(crate) async fn fresh_database(url: &str, name: &str) -> anyhow::Result<String> {
    let admin = ebb_store::connect(url, 1).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&admin)
        .await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await?;
    admin.close().await;
    let (server, _) = url
        .rsplit_once('/')
        .context("the database URL has no database name")?;
    Ok(format!("{server}/{name}"))
}

/// One shared-mode simulator with every site's miners (the dev mix), instant physics.
async fn start_sim(
    miners: usize,
    codes: &[SiteCode],
    latency: Option<ebb_minersim::Latency>,
    faulty_share: f64,
) -> anyhow::Result<ebb_minersim::Simulator> {
    let sites = codes.len();
    let spec = FleetSpec::new(
        codes
            .iter()
            .enumerate()
            .map(|(i, code)| {
                let n = miners / sites + usize::from(i < miners % sites);
                let k = devfleet::MODELS.len();
                let groups = devfleet::MODELS
                    .iter()
                    .enumerate()
                    .map(|(j, m)| GroupSpec::new(*m, (n / k + usize::from(j < n % k)) as u32))
                    .filter(|g| g.count > 0)
                    .collect();
                SiteSpec::new(code.as_str(), groups)
            })
            .collect(),
    );
    let mut options = SimOptions::default()
        .with_mode(ListenMode::Shared)
        .with_physics(Physics::instant())
        .with_control_addr(None)
        .with_faulty_share(faulty_share);
    if let Some(l) = latency {
        options = options.with_latency(l);
    }
    ebb_minersim::start(spec, options).await.context(
        "starting the simulator: a benchmark binds ports 80, 4028 and 4433 on 0.0.0.0 and must \
         run alone (no other benchmark, `ebb dev`, simulator or agent test at the same time)",
    )
}

/// The settings the benchmark gives each service.
struct BenchSettings<'a> {
    database_url: &'a str,
    nats: &'a DevNats,
    gateway: &'a str,
}

impl services::Overrides for BenchSettings<'_> {
    fn settings(&self, entry: &Entry, site: Option<&SiteCode>) -> Vec<(String, String)> {
        let mut s = self.nats.settings(&services::identity(entry, site));
        if entry.needs == Needs::DatabaseAndNats {
            s.push(("database_url".into(), self.database_url.into()));
        }
        let mut set = |k: &str, v: &str| s.push((k.to_owned(), v.to_owned()));
        match entry.name {
            "gateway" => set("listen", self.gateway),
            // Restore as fast as the sites' ramp limits allow: the ramp is what paces it.
            "planner" => {
                set("restore_batch_size", "10000");
                set("restore_batch_interval_s", "1");
            }
            "reconciler" => set("holder", "ebb-bench"),
            _ => {}
        }
        if let Some(site) = site {
            set("site", site.as_str());
        }
        s
    }
}

/// What the measuring phase needs.
struct World<'a> {
    pool: &'a ebb_store::PgPool,
    monitor: String,
    base: String,
    token: String,
    ramp: f64,
    http: reqwest::Client,
}

/// The reconciler on a thread of its own: its CPU time is that thread's.
struct ReconcilerThread {
    tid: u64,
    handle: std::thread::JoinHandle<anyhow::Result<()>>,
}

impl ReconcilerThread {
    fn start(
        entry: &Entry,
        overrides: &impl services::Overrides,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let loaded = entry
            .load(&Sources::flags(overrides.settings(entry, None)))
            .map_err(|p| anyhow::anyhow!("reconciler: {p}"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("reconciler".into())
            .spawn(move || {
                let _ = tx.send(thread_id());
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let ctx = Context::connect(
                        &loaded.common,
                        Needs::DatabaseAndNats,
                        "ebb-reconciler",
                        shutdown,
                    )
                    .await?;
                    let outcome = loaded.start(ctx.clone()).await;
                    ctx.close().await;
                    outcome
                })
            })?;
        let tid = rx
            .recv()
            .context("the reconciler thread did not start")?
            .context("finding the reconciler thread's id")?;
        Ok(Self { tid, handle })
    }

    fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{}/stat", self.tid)).ok()?;
        super::measure::parse_cpu_seconds(&stat)
    }
}

/// This thread's kernel id, from `/proc/thread-self` (`<pid>/task/<tid>`).
fn thread_id() -> Option<u64> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}

/// Starts every service (the reconciler on its own thread) as `ebb dev` does, waits for every
/// miner's first telemetry, measures, then stops them.
#[allow(clippy::too_many_arguments)] // reason: one call site, every argument a distinct piece of state
async fn run_services(
    args: &CurtailArgs,
    settings: &BenchSettings<'_>,
    codes: &[SiteCode],
    world: &World<'_>,
    wanted: &HashSet<DeviceId>,
    org: ebb_domain::OrgId,
    setup: Instant,
    shutdown: &CancellationToken,
) -> anyhow::Result<CurtailReport> {
    let mut common = Common {
        database_url: settings.database_url.into(),
        db_connections: 24,
        ..Common::default()
    };
    for (k, v) in settings.nats.settings(&ebb_natsauth::Identity::Ops) {
        match k.as_str() {
            "nats_url" => common.nats_url = v.as_str().into(),
            "nats_creds" => common.nats_creds = v,
            "nats_ca" => common.nats_ca = v,
            _ => {}
        }
    }
    let ctx = Context::connect(
        &common,
        Needs::DatabaseAndNats,
        "ebb-bench",
        shutdown.clone(),
    )
    .await?;
    let mut tasks = Supervisor::new(shutdown).with_drain(Duration::from_secs(20));
    let reconciler_stop = CancellationToken::new();
    let reconciler = services::find("reconciler").context("no reconciler in the service table")?;
    let reconciler = ReconcilerThread::start(reconciler, settings, reconciler_stop.clone())?;
    let outcome = async {
        services::spawn_where(&mut tasks, &ctx, Instances::One, codes, settings, |e| {
            e.name != "reconciler"
        })
        .await?;
        tasks
            .watch(dev::wait_for_planner(ctx.nats(), &codes[0]))
            .await??;
        services::spawn(&mut tasks, &ctx, Instances::PerSite, codes, settings).await?;
        tasks.watch(dev::wait_for_gateway(&world.base)).await??;
        tasks
            .watch(dev::wait_for_telemetry(world.pool, org, wanted))
            .await??;
        let setup_s = setup.elapsed().as_secs_f64();
        tracing::info!(setup_s, "every miner has reported: measuring");
        tasks
            .watch(measure(args, world, &reconciler, setup_s))
            .await?
    }
    .await;
    tasks.shutdown().await;
    reconciler_stop.cancel();
    let joined = tokio::task::spawn_blocking(move || reconciler.handle.join()).await?;
    match joined {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "the reconciler stopped with an error"),
        Err(_) => tracing::warn!("the reconciler thread panicked"),
    }
    ctx.close().await;
    outcome
}

/// Counters read before and after the measured span.
#[derive(Debug, Default)]
struct Counters {
    cpu: Option<f64>,
    reconciler_cpu: Option<f64>,
    nats_in: Option<u64>,
    calls: Vec<(f64, u64)>,
}

impl Counters {
    async fn read(w: &World<'_>, reconciler: &ReconcilerThread) -> Self {
        Self {
            cpu: cpu_seconds(),
            reconciler_cpu: reconciler.cpu_seconds(),
            nats_in: nats_in_msgs(w).await,
            calls: command_call_buckets(&ebb_obs::prometheus().render()),
        }
    }
}

async fn nats_in_msgs(w: &World<'_>) -> Option<u64> {
    let varz: Value = w
        .http
        .get(&w.monitor)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    varz["in_msgs"].as_u64()
}

async fn measure(
    args: &CurtailArgs,
    w: &World<'_>,
    reconciler: &ReconcilerThread,
    setup_s: f64,
) -> anyhow::Result<CurtailReport> {
    sqlx::query("SELECT pg_stat_statements_reset()")
        .execute(w.pool)
        .await
        .context("resetting pg_stat_statements")?;
    let before = Counters::read(w, reconciler).await;

    let sent = Instant::now();
    let started = w
        .http
        .post(format!("{}/v1/curtailments", w.base))
        .bearer_auth(&w.token)
        .json(&json!({
            "mode": "full",
            "reason": "ebb bench curtail",
            "max_duration_s": 3600,
        }))
        .send()
        .await
        .context("starting the curtailment")?;
    let status = started.status();
    let body: Value = started.json().await.context("reading the start's answer")?;
    ensure!(
        status.as_u16() == 201,
        "the start answered {status}: {body}"
    );
    let created = Instant::now();
    let start_request_s = created.duration_since(sent).as_secs_f64();
    let id = body["id"]
        .as_str()
        .context("the start's answer has no id")?
        .to_owned();
    let waited = wait_for_state(w, &id, "active", args.timeout).await?;
    let start_to_active_s = waited.reached.then(|| created.elapsed().as_secs_f64());
    let active = waited.event;
    tracing::info!(?start_to_active_s, targets = %active["targets"], "active, or given up on");
    let state = active["state"].as_str().unwrap_or_default().to_owned();
    ensure!(
        matches!(state.as_str(), "pending" | "active"),
        "the event ended {state} before its stop: {}",
        active["targets"]
    );

    let stopped = w
        .http
        .post(format!("{}/v1/curtailments/{id}/stop", w.base))
        .bearer_auth(&w.token)
        .json(&json!({"reason": "ebb bench curtail"}))
        .send()
        .await
        .context("stopping the curtailment")?;
    let status = stopped.status();
    ensure!(
        status.is_success(),
        "the stop answered {status}: {}",
        stopped.text().await.unwrap_or_default()
    );
    let stop_sent = Instant::now();
    let waited = wait_for_state(w, &id, "completed", args.timeout).await?;
    let stop_to_completed_s = waited.reached.then(|| stop_sent.elapsed().as_secs_f64());
    let done = waited.event;
    let ended = done["state"].as_str().unwrap_or_default().to_owned();
    if waited.reached {
        tracing::info!(?stop_to_completed_s, targets = %done["targets"], "completed");
    } else {
        tracing::warn!(state = %ended, targets = %done["targets"], "the event did not complete cleanly; reporting what was measured");
    }
    let after = Counters::read(w, reconciler).await;

    let count = |v: &Value, state: &str| v["targets"][state].as_u64().unwrap_or(0);
    let targets: u64 = done["targets"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    let per_target = |x: f64| (targets > 0).then(|| round(x / targets as f64, 2));
    let event: uuid::Uuid = id.parse().context("the event id is not a uuid")?;
    let (statements, rows): (Option<i64>, Option<i64>) = sqlx::query_as(
        "SELECT sum(calls)::bigint, sum(rows)::bigint FROM pg_stat_statements \
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(w.pool)
    .await
    .context("reading pg_stat_statements")?;
    let latencies = dispatch_to_confirmed(w.pool, event).await?;
    let restores = restore_log(w.pool, event).await?;
    let calls = bucket_delta(&before.calls, &after.calls);
    Ok(CurtailReport {
        benchmark: "curtail",
        miners: args.miners,
        sites: args.sites,
        latency_p50_ms: args.latency.map(|l| l.p50.as_millis()),
        latency_p99_ms: args.latency.map(|l| l.p99.as_millis()),
        faulty_pct: args.faulty,
        targets,
        setup_s: round(setup_s, 2),
        start_request_s: round(start_request_s, 3),
        start_to_active_s: start_to_active_s.map(|s| round(s, 3)),
        stop_to_completed_s: stop_to_completed_s.map(|s| round(s, 3)),
        ended,
        confirmed: count(&active, "confirmed"),
        failed: count(&active, "failed"),
        restored: count(&done, "restored"),
        restore_failed: count(&done, "restore_failed"),
        ramp_excess_kw: round(ramp_excess_kw(&restores, |_| w.ramp), 3),
        ramp_kw_per_min: w.ramp,
        reconciler_cpu_s_per_1000_targets: after
            .reconciler_cpu
            .zip(before.reconciler_cpu)
            .and_then(|(a, b)| per_target((a - b) * 1000.0)),
        process_cpu_s: after.cpu.zip(before.cpu).map(|(a, b)| round(a - b, 2)),
        pg_statements_per_target: statements.and_then(|n| per_target(n as f64)),
        pg_rows_per_target: rows.and_then(|n| per_target(n as f64)),
        nats_messages_per_target: after
            .nats_in
            .zip(before.nats_in)
            .and_then(|(a, b)| per_target(a.saturating_sub(b) as f64)),
        peak_rss_mib: peak_rss_bytes().map(|b| round(b as f64 / 1_048_576.0, 1)),
        dispatch_to_confirmed_p50_s: round(quantile(&latencies, 0.50), 3),
        dispatch_to_confirmed_p99_s: round(quantile(&latencies, 0.99), 3),
        command_call_p50_ms: bucket_quantile(&calls, 0.50).map(|s| round(s * 1000.0, 1)),
        command_call_p99_ms: bucket_quantile(&calls, 0.99).map(|s| round(s * 1000.0, 1)),
    })
}

/// The event as last read, and whether it reached the state waited for.
struct Waited {
    event: Value,
    reached: bool,
}

/// Polls the event until it is in `state`, another terminal state, or the timeout; only a
/// failing request is an error, so a run that misses its aim still reports what it measured.
async fn wait_for_state(
    w: &World<'_>,
    id: &str,
    state: &str,
    timeout: Duration,
) -> anyhow::Result<Waited> {
    const TERMINAL: &[&str] = &[
        "completed",
        "completed_with_failures",
        "cancelled",
        "failed",
    ];
    let deadline = Instant::now() + timeout;
    let mut last_log = Instant::now();
    loop {
        let event: Value = w
            .http
            .get(format!("{}/v1/curtailments/{id}", w.base))
            .bearer_auth(&w.token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let now = event["state"].as_str().unwrap_or_default().to_owned();
        if now == state {
            return Ok(Waited {
                event,
                reached: true,
            });
        }
        if TERMINAL.contains(&now.as_str()) {
            tracing::warn!(state = %now, targets = %event["targets"], "the event ended while waiting for {state}");
            return Ok(Waited {
                event,
                reached: false,
            });
        }
        if Instant::now() >= deadline {
            tracing::warn!(state = %now, targets = %event["targets"], "still not {state} after {timeout:?}; giving up on it");
            return Ok(Waited {
                event,
                reached: false,
            });
        }
        if last_log.elapsed() >= Duration::from_secs(5) {
            tracing::info!(state = now, targets = %event["targets"], "waiting for {state}");
            last_log = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Seconds from each target's first dispatch to its first confirmation.
async fn dispatch_to_confirmed(
    pool: &ebb_store::PgPool,
    event: uuid::Uuid,
) -> anyhow::Result<Vec<f64>> {
    let rows: Vec<(Option<f64>,)> = sqlx::query_as(
        "SELECT extract(epoch FROM min(at) FILTER (WHERE to_state = 'confirmed') \
                                - min(at) FILTER (WHERE to_state = 'dispatching'))::float8 \
         FROM event_transition WHERE event_id = $1 AND device_id IS NOT NULL GROUP BY device_id",
    )
    .bind(event)
    .fetch_all(pool)
    .await
    .context("reading the transition log")?;
    Ok(rows.into_iter().filter_map(|(s,)| s).collect())
}

/// When each target's restore was dispatched, its site and its baseline power (kW).
async fn restore_log(
    pool: &ebb_store::PgPool,
    event: uuid::Uuid,
) -> anyhow::Result<Vec<(SiteId, f64, f64)>> {
    let rows: Vec<(uuid::Uuid, f64, f64)> = sqlx::query_as(
        "SELECT t.site_id, extract(epoch FROM tr.at)::float8, t.baseline_power_w / 1000.0 \
         FROM event_transition tr \
         JOIN curtailment_target t ON t.event_id = tr.event_id AND t.device_id = tr.device_id \
         WHERE tr.event_id = $1 AND tr.to_state = 'restore_dispatching'",
    )
    .bind(event)
    .fetch_all(pool)
    .await
    .context("reading the restore log")?;
    Ok(rows
        .into_iter()
        .map(|(site, at, kw)| (SiteId::from(site), at, kw))
        .collect())
}

/// The most power any site got back in a 60-second window `[t, t + 60)` above its ramp limit
/// (kW per minute), from `(site, seconds, kW)` restore dispatches; 0 when every window held.
pub fn ramp_excess_kw<S: Copy + Eq + std::hash::Hash>(
    restores: &[(S, f64, f64)],
    ramp_kw_per_min: impl Fn(S) -> f64,
) -> f64 {
    let mut by_site: HashMap<S, Vec<(f64, f64)>> = HashMap::new();
    for &(site, at, kw) in restores {
        by_site.entry(site).or_default().push((at, kw));
    }
    let mut worst = 0.0f64;
    for (site, mut log) in by_site {
        log.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (mut start, mut sum) = (0, 0.0);
        for end in 0..log.len() {
            sum += log[end].1;
            while log[end].0 - log[start].0 >= 60.0 {
                sum -= log[start].1;
                start += 1;
            }
            worst = worst.max(sum - ramp_kw_per_min(site));
        }
    }
    worst.max(0.0)
}

/// The `q` quantile (nearest rank) of `values`; 0 when empty.
fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// The cumulative buckets `(le, count)` of the agent's command calls (every op in
/// [`COMMAND_OPS`], summed) from a Prometheus text rendering; `+Inf` as infinity.
fn command_call_buckets(text: &str) -> Vec<(f64, u64)> {
    let prefix = format!("{}_bucket{{", ebb_obs::names::AGENT_MINER_CALL_SECONDS);
    let mut sums: BTreeMap<u64, (f64, u64)> = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(&prefix) else {
            continue;
        };
        let Some((labels, count)) = rest.split_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels.split(',').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k.trim() == name).then(|| v.trim().trim_matches('"').to_owned())
            })
        };
        let (Some(op), Some(le)) = (label("op"), label("le")) else {
            continue;
        };
        if !COMMAND_OPS.contains(&op.as_str()) {
            continue;
        }
        let le: f64 = if le == "+Inf" {
            f64::INFINITY
        } else {
            match le.parse() {
                Ok(v) => v,
                Err(_) => continue,
            }
        };
        let Ok(count) = count.trim().parse::<f64>() else {
            continue;
        };
        let entry = sums.entry(le.to_bits()).or_insert((le, 0));
        entry.1 += count as u64;
    }
    let mut buckets: Vec<(f64, u64)> = sums.into_values().collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

/// `after - before`, bucket by bucket (a bucket missing before counts from 0).
fn bucket_delta(before: &[(f64, u64)], after: &[(f64, u64)]) -> Vec<(f64, u64)> {
    after
        .iter()
        .map(|&(le, n)| {
            let was = before
                .iter()
                .find(|b| b.0.to_bits() == le.to_bits())
                .map_or(0, |b| b.1);
            (le, n.saturating_sub(was))
        })
        .collect()
}

/// The `q` quantile of cumulative buckets, interpolated linearly within the bucket it falls in
/// (as Prometheus's `histogram_quantile`); `None` without observations.
fn bucket_quantile(buckets: &[(f64, u64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let (mut lower, mut below) = (0.0, 0u64);
    for &(le, count) in buckets {
        if count as f64 >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let within = (count - below) as f64;
            let share = if within > 0.0 {
                (rank - below as f64) / within
            } else {
                1.0
            };
            return Some(lower + (le - lower) * share);
        }
        (lower, below) = (le, count);
    }
    Some(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramp_excess_is_what_a_minute_window_holds_beyond_the_limit() {
        // 10 kW every 10 s at one site: any 60 s window holds six restores, 60 kW.
        let log: Vec<(u8, f64, f64)> = (0..20).map(|i| (1, f64::from(i) * 10.0, 10.0)).collect();
        assert_eq!(ramp_excess_kw(&log, |_| 60.0), 0.0);
        assert_eq!(ramp_excess_kw(&log, |_| 50.0), 10.0);
        // A second site's restores do not count against the first's limit.
        let mut two = log.clone();
        two.extend((0..20).map(|i| (2, f64::from(i) * 10.0, 10.0)));
        assert_eq!(ramp_excess_kw(&two, |_| 60.0), 0.0);
        // A burst: 70 kW within a second.
        let burst = [(1u8, 0.0, 40.0), (1, 0.5, 30.0), (1, 61.0, 10.0)];
        assert_eq!(ramp_excess_kw(&burst, |_| 60.0), 10.0);
        assert_eq!(ramp_excess_kw::<u8>(&[], |_| 1.0), 0.0);
    }

    #[test]
    fn histogram_quantiles_interpolate_within_buckets() {
        let text = "\
# TYPE ebb_agent_miner_call_seconds histogram
ebb_agent_miner_call_seconds_bucket{op=\"pause\",le=\"0.1\"} 50
ebb_agent_miner_call_seconds_bucket{op=\"pause\",le=\"0.5\"} 90
ebb_agent_miner_call_seconds_bucket{op=\"pause\",le=\"+Inf\"} 100
ebb_agent_miner_call_seconds_bucket{op=\"read\",le=\"0.1\"} 1000
ebb_agent_miner_call_seconds_bucket{op=\"read\",le=\"0.5\"} 1000
ebb_agent_miner_call_seconds_bucket{op=\"read\",le=\"+Inf\"} 1000
";
        let b = command_call_buckets(text);
        assert_eq!(b.len(), 3, "reads are not command calls: {b:?}");
        let p50 = bucket_quantile(&b, 0.5).unwrap();
        assert!((p50 - 0.1).abs() < 1e-9, "{p50}");
        let p70 = bucket_quantile(&b, 0.7).unwrap();
        assert!((p70 - 0.3).abs() < 1e-9, "{p70}");
        assert_eq!(bucket_quantile(&b, 0.99), Some(0.5));
        let none = bucket_delta(&b, &b);
        assert_eq!(bucket_quantile(&none, 0.5), None);
        assert_eq!(quantile(&[3.0, 1.0, 2.0], 0.5), 2.0);
    }

    #[test]
    fn bad_options_are_named() {
        let args = CurtailArgs {
            miners: 1,
            sites: 2,
            ramp_kw_per_min: Some(-1.0),
            data_dir: PathBuf::from(".ebb/bench"),
            timeout: Duration::ZERO,
            latency: None,
            faulty: 101.0,
        };
        let p = args.problems().join("; ");
        for name in ["--miners", "--ramp-kw-per-min", "--timeout", "--faulty"] {
            assert!(p.contains(name), "{p}");
        }
    }
}
