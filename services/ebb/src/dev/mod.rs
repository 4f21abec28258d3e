//! `ebb dev`: the whole system in one process, for development (DESIGN §2).
//!
//! 1. Infrastructure: `DATABASE_URL` and `NATS_URL` when set; otherwise a PostgreSQL cluster in
//!    `<data-dir>/pg` and `nats-server -js` with its store in `<data-dir>/nats`, as child processes
//!    on fixed loopback ports ([`infra`]).
//! 2. Migrations, then (idempotently) a dev org with one site per simulated site and an admin API
//!    key kept in `<data-dir>/dev-api-key` (mode 0600), so a second start prints the same key.
//! 3. A simulated fleet, one simulator per site on a fixed address block, each in its own child
//!    process so that big fleets fit the open-file limit ([`fleet`]), registered as the sites'
//!    devices.
//! 4. Every service in-process: gateway, planner, reconciler, worker and one agent per site.
//! 5. Once the gateway is ready and every simulated miner has reported telemetry, it prints the
//!    gateway URL, the key and curl lines that work as printed.
//!
//! Ctrl-C (or SIGTERM) drains the services, stops the simulators and then the servers.

pub mod fleet;
pub mod infra;

use crate::{admin, localhub, services};
use anyhow::{Context as _, bail};
use ebb_bus::{Inventory, InventoryRequest};
use ebb_domain::{DeviceId, OrgId, SiteCode};
use ebb_obs::Secret;
use ebb_runtime::cli::report_invalid;
use ebb_runtime::{Common, Context, Entry, Instances, Needs, Signals, Supervisor};
use ebb_store::PgPool;
use ebb_store::fleet::Site;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// `ebb dev` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Where the dev PostgreSQL cluster, the NATS store, logs and the API key live.
    #[arg(long, env = "EBB_DEV_DIR", default_value = ".ebb")]
    pub data_dir: PathBuf,
    /// The gateway's address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// PostgreSQL to use instead of starting one.
    #[arg(long = "database-url", env = "DATABASE_URL")]
    pub database_url: Option<Secret>,
    /// NATS (with JetStream) to use instead of starting one.
    #[arg(long = "nats-url", env = "NATS_URL")]
    pub nats_url: Option<String>,
    /// Port of the PostgreSQL that `ebb dev` starts (on 127.0.0.1).
    #[arg(long, default_value_t = 54329)]
    pub pg_port: u16,
    /// Port of the nats-server that `ebb dev` starts (on 127.0.0.1).
    #[arg(long, default_value_t = 4222)]
    pub nats_port: u16,
    /// Simulated sites.
    #[arg(long, default_value_t = 2)]
    pub sites: u32,
    /// Simulated miners per site: Whatsminer M60S, Antminer S19 Pro and LuxOS S19k Pro in thirds.
    #[arg(long, default_value_t = 50)]
    pub miners_per_site: u32,
    /// Seconds a simulated miner takes to ramp its power down after a sleep (and up after a wake).
    #[arg(long, default_value_t = 5.0)]
    pub ramp_seconds: f64,
    /// How often each agent polls its miners, e.g. `5s`.
    #[arg(long, default_value = "5s", value_parser = ebb_agent::config::parse_duration)]
    pub poll_interval: Duration,
}

impl DevArgs {
    /// Every invalid setting, named.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut bad = Vec::new();
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            bad.push(format!(
                "--listen must be an address like 127.0.0.1:8080, got {:?}",
                self.listen
            ));
        }
        if !(1..=100).contains(&self.sites) {
            bad.push(format!(
                "--sites must be between 1 and 100, got {}",
                self.sites
            ));
        }
        if !(1..=5_000).contains(&self.miners_per_site) {
            bad.push(format!(
                "--miners-per-site must be between 1 and 5000, got {}",
                self.miners_per_site
            ));
        } else if (1..=100).contains(&self.sites)
            && fleet::site_base(self.sites - 1, self.miners_per_site).is_none()
        {
            bad.push(format!(
                "{} sites of {} miners do not fit in 127.77.0.0/16 (254 /24 blocks of 254 addresses): use fewer",
                self.sites, self.miners_per_site
            ));
        }
        if (1..=5_000).contains(&self.miners_per_site)
            && let Some(problem) =
                fleet::fd_limit().and_then(|limit| fleet::fd_problem(self.miners_per_site, limit))
        {
            bad.push(problem);
        }
        if let Some(problem) = fleet::port_80_problem() {
            bad.push(problem);
        }
        if !(self.ramp_seconds.is_finite() && (0.0..=600.0).contains(&self.ramp_seconds)) {
            bad.push(format!(
                "--ramp-seconds must be between 0 and 600, got {}",
                self.ramp_seconds
            ));
        }
        if self.pg_port == 0 || self.nats_port == 0 {
            bad.push("--pg-port and --nats-port must be fixed ports, not 0".to_owned());
        }
        if self
            .database_url
            .as_ref()
            .is_some_and(|u| u.expose().is_empty())
        {
            bad.push(
                "DATABASE_URL is set but empty: unset it to let ebb dev start postgresql"
                    .to_owned(),
            );
        }
        if self.nats_url.as_ref().is_some_and(|u| u.is_empty()) {
            bad.push(
                "NATS_URL is set but empty: unset it to let ebb dev start nats-server".to_owned(),
            );
        }
        if bad.is_empty() { Ok(()) } else { Err(bad) }
    }
}

/// How long the services may take to drain after Ctrl-C before they are abandoned.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// How long start-up waits for the first telemetry of every simulated miner.
const TELEMETRY_TIMEOUT: Duration = Duration::from_secs(90);

pub async fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    if let Err(problems) = args.validate() {
        return Ok(report_invalid("dev", &problems));
    }
    let signals = Signals::install()?;
    let shutdown = signals.token();
    // The agents' connections to their miners are descriptors too; the simulators have their own.
    let fd_limit = fleet::raise_fd_limit()?;
    tracing::debug!(fd_limit, "open-file limit");
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let dir = std::fs::canonicalize(&args.data_dir)
        .with_context(|| format!("resolving {}", args.data_dir.display()))?;

    let mut servers = Vec::new();
    let outcome = run_with_servers(&args, &dir, &mut servers, shutdown).await;
    // Last in, first out: nats-server (the services' bus) before postgresql.
    while let Some(server) = servers.pop() {
        server.stop().await;
    }
    outcome?;
    println!("ebb dev stopped");
    Ok(ExitCode::SUCCESS)
}

/// Runs until `shutdown`; the servers it starts are pushed onto `servers` for the caller to stop,
/// whatever happens here.
async fn run_with_servers(
    args: &DevArgs,
    dir: &Path,
    servers: &mut Vec<infra::Server>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let database_url = match &args.database_url {
        Some(url) => {
            tracing::info!("using DATABASE_URL");
            url.expose().to_owned()
        }
        None => {
            let (server, url) = cancellable(
                &shutdown,
                infra::start_postgres(&dir.join("pg"), args.pg_port, &[]),
            )
            .await??;
            servers.push(server);
            url
        }
    };
    let pool = ebb_store::connect(&database_url, 4)
        .await
        .context("connecting to postgresql")?;
    ebb_store::migrate(&pool)
        .await
        .context("running migrations")?;
    let codes: Vec<(SiteCode, String)> = (0..args.sites)
        .map(|i| {
            let code = fleet::site_code(i);
            let name = format!(
                "Dev {}",
                code.as_str().trim_start_matches("site-").to_uppercase()
            );
            (code, name)
        })
        .collect();
    let (org, sites) = admin::ensure_org_and_sites(&pool, "dev", &codes, None).await?;
    let key_file = dir.join("dev-api-key");
    let key = admin::ensure_admin_key(&pool, org, &key_file).await?;
    // Webhook secrets are sealed under this keyring, kept beside the data so they stay readable
    // across restarts.
    let secrets_key_file = dir.join("secrets.key");
    if !secrets_key_file.exists() {
        let entry = ebb_webhooks::Keyring::generate_entry("dev")?;
        admin::write_secret_file(&secrets_key_file, &entry)
            .with_context(|| format!("writing {}", secrets_key_file.display()))?;
    }
    tracing::info!(%org, key_file = %key_file.display(), reused = !key.created, "dev org, sites and admin key ready");

    // NATS runs the production auth: nats/hub.conf in operator mode with TLS, one credential per
    // service and per site agent under <data-dir>/nats (unless NATS_URL names another server).
    let nats = match &args.nats_url {
        Some(url) => {
            tracing::info!(url = %ebb_obs::CredUrl::from(url.as_str()).redacted(), "using NATS_URL");
            DevNats {
                url: url.clone(),
                hub: None,
            }
        }
        None => {
            let nats_dir = dir.join("nats");
            let hub = localhub::prepare(&pool, &nats_dir, org, &sites).await?;
            let listen = format!("127.0.0.1:{}", args.nats_port);
            let store = nats_dir.join("store");
            let conf = hub.write_conf(&localhub::Local {
                listen: &listen,
                http: "127.0.0.1:-1",
                leaf: "127.0.0.1:-1",
                store: Some(&store),
                tls: &hub.tls,
            })?;
            let (server, url) = cancellable(
                &shutdown,
                infra::start_nats(&nats_dir, &conf, &dir.join("nats.log"), args.nats_port),
            )
            .await??;
            servers.push(server);
            tracing::info!(creds = %nats_dir.display(), "nats runs operator-mode auth over tls; each service has its own credentials");
            DevNats {
                url,
                hub: Some(hub),
            }
        }
    };

    let mut sims = Vec::with_capacity(sites.len());
    let outcome = async {
        let wanted = start_fleet(args, dir, &pool, &sites, &mut sims).await?;
        run_services(
            args,
            &pool,
            org,
            &sites,
            &wanted,
            &sims,
            &key.token,
            &key_file,
            &secrets_key_file,
            &database_url,
            &nats,
            shutdown,
        )
        .await
    }
    .await;
    for sim in sims {
        sim.shutdown().await;
    }
    pool.close().await;
    outcome
}

/// Awaits `f` unless `shutdown` fires first.
async fn cancellable<T>(
    shutdown: &CancellationToken,
    f: impl std::future::Future<Output = T>,
) -> anyhow::Result<T> {
    tokio::select! {
        () = shutdown.cancelled() => bail!("interrupted during start-up"),
        v = f => Ok(v),
    }
}

/// Starts one simulator process per site and registers its miners; returns the device ids to
/// wait for. The simulators are pushed onto `sims` as they start, for the caller to stop.
async fn start_fleet(
    args: &DevArgs,
    dir: &Path,
    pool: &PgPool,
    sites: &[Site],
    sims: &mut Vec<fleet::SiteSim>,
) -> anyhow::Result<HashSet<DeviceId>> {
    let ramp = Duration::from_secs_f64(args.ramp_seconds);
    let exe = std::env::current_exe().context("finding this binary to run the simulators")?;
    // Every child binds its listeners at the same time; then they are read one by one.
    for (index, site) in (0u32..).zip(sites) {
        let log = dir.join(format!("sim-{}.log", site.code));
        sims.push(fleet::spawn_site(
            &exe,
            index,
            args.miners_per_site,
            ramp,
            &log,
        )?);
    }
    let mut wanted = HashSet::new();
    for (sim, site) in sims.iter_mut().zip(sites) {
        sim.wait_listening()
            .await
            .with_context(|| format!("starting the simulated miners of {}", site.code))?;
        let devices: Vec<_> = sim.miners().iter().map(fleet::device).collect();
        ebb_store::fleet::upsert_devices(pool, site, &devices)
            .await
            .with_context(|| format!("registering the miners of {}", site.code))?;
        let addresses: HashSet<&str> = devices.iter().map(|d| d.address.as_str()).collect();
        let inventory = ebb_store::fleet::inventory(pool, site.id)
            .await
            .context("reading the inventory back")?;
        wanted.extend(
            inventory
                .iter()
                .filter(|d| addresses.contains(d.address.as_str()))
                .map(|d| d.device_id),
        );
        if inventory.len() > devices.len() {
            tracing::warn!(
                site = %site.code,
                simulated = devices.len(),
                registered = inventory.len(),
                "the site has devices that are not simulated now (an earlier --miners-per-site?): they will show as unreachable"
            );
        }
        let (first, last) = sim.address_range().unzip();
        tracing::info!(site = %site.code, miners = sim.len(), ?first, ?last, "simulated miners listening");
    }
    Ok(wanted)
}

/// The NATS `ebb dev` runs on: its own local hub (with every credential), or `NATS_URL`'s.
#[derive(Debug)]
pub(crate) struct DevNats {
    pub(crate) url: String,
    pub(crate) hub: Option<localhub::Prepared>,
}

impl DevNats {
    /// The settings that make a service connect as itself: its own credentials and the CA.
    pub(crate) fn settings(&self, identity: &ebb_natsauth::Identity) -> Vec<(String, String)> {
        let mut s = vec![("nats_url".to_owned(), self.url.clone())];
        if let Some(hub) = &self.hub {
            s.push((
                "nats_creds".into(),
                hub.creds(identity).display().to_string(),
            ));
            s.push(("nats_ca".into(), hub.tls.ca.display().to_string()));
        }
        s
    }
}

/// The settings `ebb dev` gives each service of the table, on top of its defaults.
struct DevSettings<'a> {
    args: &'a DevArgs,
    database_url: &'a str,
    nats: &'a DevNats,
    /// The webhook secrets' keyring (kept in `<data-dir>/secrets.key`).
    secrets_key: String,
}

impl services::Overrides for DevSettings<'_> {
    fn settings(&self, entry: &Entry, site: Option<&SiteCode>) -> Vec<(String, String)> {
        let mut s = self.nats.settings(&services::identity(entry, site));
        if entry.needs == Needs::DatabaseAndNats {
            s.push(("database_url".into(), self.database_url.into()));
        }
        let mut set = |k: &str, v: String| s.push((k.to_owned(), v));
        match entry.name {
            "gateway" => {
                set("listen", self.args.listen.clone());
                // A receiver on the developer's machine may get webhooks.
                set("webhook_loopback", "allow".into());
                set("secrets_key", self.secrets_key.clone());
            }
            // Paced, but quick enough to watch: 25 miners every 5 s.
            "planner" => {
                set("restore_batch_size", "25".into());
                set("restore_batch_interval_s", "5".into());
            }
            "reconciler" => {
                set("tick_ms", "2000".into());
                set("holder", "ebb-dev".into());
            }
            // Webhook receivers on the developer's machine.
            "worker" => {
                set("webhook_loopback", "allow".into());
                set("secrets_key", self.secrets_key.clone());
            }
            "agent" => {
                set(
                    "poll_interval",
                    ebb_agent::config::format_duration(self.args.poll_interval),
                );
                set("inventory_refresh", "10s".into());
            }
            _ => {}
        }
        if let Some(site) = site {
            set("site", site.to_string());
        }
        s
    }
}

#[allow(clippy::too_many_arguments)] // reason: one call site, every argument a distinct piece of state
async fn run_services(
    args: &DevArgs,
    pool: &PgPool,
    org: OrgId,
    sites: &[Site],
    wanted: &HashSet<DeviceId>,
    sims: &[fleet::SiteSim],
    token: &str,
    key_file: &Path,
    secrets_key_file: &Path,
    database_url: &str,
    nats: &DevNats,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let settings = DevSettings {
        args,
        database_url,
        nats,
        secrets_key: std::fs::read_to_string(secrets_key_file)
            .with_context(|| format!("reading {}", secrets_key_file.display()))?
            .trim()
            .to_owned(),
    };
    // The process's own connections: one pool for every service, and NATS as the operator (each
    // service connects again as itself).
    let mut common = Common {
        database_url: database_url.into(),
        // One pool for every service of the process.
        db_connections: 24,
        ..Common::default()
    };
    for (k, v) in nats.settings(&ebb_natsauth::Identity::Ops) {
        match k.as_str() {
            "nats_url" => common.nats_url = v.as_str().into(),
            "nats_creds" => common.nats_creds = v,
            "nats_ca" => common.nats_ca = v,
            _ => {}
        }
    }
    let ctx =
        Context::connect(&common, Needs::DatabaseAndNats, "ebb-dev", shutdown.clone()).await?;
    let mut tasks = Supervisor::new(&shutdown).with_drain(DRAIN_TIMEOUT);
    let codes: Vec<SiteCode> = sites.iter().map(|s| s.code.clone()).collect();
    let outcome = async {
        services::spawn(&mut tasks, &ctx, Instances::One, &codes, &settings).await?;
        // Agents learn their miners from the planner: start them once it answers.
        tasks
            .watch(wait_for_planner(ctx.nats(), &sites[0].code))
            .await??;
        services::spawn(&mut tasks, &ctx, Instances::PerSite, &codes, &settings).await?;
        let base = format!("http://{}", args.listen);
        tasks.watch(wait_for_gateway(&base)).await??;
        let started = Instant::now();
        let fresh = tasks.watch(wait_for_telemetry(pool, org, wanted)).await??;
        tracing::info!(miners = fresh, elapsed = ?started.elapsed(), "first telemetry arrived");
        print_banner(
            &base,
            token,
            key_file,
            sims,
            sites,
            args,
            database_url,
            nats,
        );
        Ok::<(), anyhow::Error>(())
    }
    .await;
    // Run until Ctrl-C, or until a service stops by itself (which is a failure here).
    let outcome = match outcome {
        Ok(()) => tasks.run().await,
        Err(e) => {
            tracing::info!("stopping the services");
            tasks.shutdown().await;
            Err(e)
        }
    };
    ctx.close().await;
    outcome
}

pub(crate) async fn wait_for_planner(
    client: &async_nats::Client,
    site: &SiteCode,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let req = InventoryRequest::default();
        let reply: Result<Inventory, _> =
            ebb_bus::rpc::call(client, site, None, &req, Duration::from_secs(2)).await;
        match reply {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(anyhow::Error::new(e).context("the planner did not answer"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

pub(crate) async fn wait_for_gateway(base: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .map(|r| r.status());
        match status {
            Ok(s) if s.is_success() => return Ok(()),
            _ if Instant::now() >= deadline => {
                bail!("the gateway at {base} was not ready after 60 s (last answer: {status:?})")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Waits until every simulated miner has a sample newer than the call; returns how many have one
/// at the end. A timeout only warns: the system is up, some miners are just slow.
pub(crate) async fn wait_for_telemetry(
    pool: &PgPool,
    org: OrgId,
    wanted: &HashSet<DeviceId>,
) -> anyhow::Result<usize> {
    let since = chrono::Utc::now();
    let deadline = Instant::now() + TELEMETRY_TIMEOUT;
    loop {
        let candidates = ebb_store::fleet::candidates(pool, org, &[])
            .await
            .context("reading device state")?;
        let fresh = candidates
            .iter()
            .filter(|c| {
                wanted.contains(&c.device_id)
                    && c.sample.as_ref().is_some_and(|s| s.sampled_at >= since)
            })
            .count();
        if fresh >= wanted.len() {
            return Ok(fresh);
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                fresh,
                miners = wanted.len(),
                "not every simulated miner reported within {TELEMETRY_TIMEOUT:?}"
            );
            return Ok(fresh);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A target the default fleet satisfies with room to spare: 20 kW, or a tenth of a small fleet.
pub fn example_target_kw(fleet_kw: f64) -> u32 {
    if fleet_kw >= 200.0 {
        20
    } else {
        ((fleet_kw / 10.0).floor() as u32).max(1)
    }
}

#[allow(clippy::too_many_arguments)] // reason: one call site; a banner shows many things
fn print_banner(
    base: &str,
    token: &str,
    key_file: &Path,
    sims: &[fleet::SiteSim],
    sites: &[Site],
    args: &DevArgs,
    database_url: &str,
    nats: &DevNats,
) {
    let fleet_kw: f64 = sims
        .iter()
        .flat_map(|s| s.miners())
        .map(|m| m.nominal_power_w)
        .sum::<f64>()
        / 1000.0;
    let miners: usize = sims.iter().map(fleet::SiteSim::len).sum();
    let target = example_target_kw(fleet_kw);
    let auth = format!("-H 'Authorization: Bearer {token}'");
    let codes: Vec<&str> = sites.iter().map(|s| s.code.as_str()).collect();
    let database = if args.database_url.is_some() {
        "DATABASE_URL".to_owned()
    } else {
        database_url.to_owned()
    };
    println!();
    println!(
        "ebb dev is up: {miners} simulated miners ({} per site: Whatsminer M60S, Antminer S19 Pro, LuxOS S19k Pro) at {}, about {fleet_kw:.0} kW",
        args.miners_per_site,
        codes.join(", ")
    );
    println!();
    println!("  gateway   {base}");
    println!("  api key   {token}");
    println!("            (admin; kept in {})", key_file.display());
    println!("  postgres  {database}");
    match &nats.hub {
        Some(hub) => {
            println!("  nats      {} (operator-mode auth over tls)", nats.url);
            println!(
                "            credentials and CA in {} (ops.creds: every subject)",
                hub.dir.display()
            );
        }
        None => println!("  nats      {}", nats.url),
    }
    let org = sites
        .first()
        .map(|s| s.org_id.to_string())
        .unwrap_or_default();
    println!(
        "  feed      {}.{org}.> on stream {} (CloudEvents JSON)",
        ebb_bus::subjects::EVENT_PREFIX,
        ebb_bus::streams::EVENT
    );
    if let Some(hub) = &nats.hub {
        println!(
            "            its reader's credentials: {} (durable consumer integration-{})",
            hub.dir.join("integration.creds").display(),
            crate::localhub::DEV_INTEGRATION
        );
    }
    println!("  webhooks  POST {base}/v1/webhooks (receivers on loopback allowed here)");
    println!("  metrics   {base}/metrics");
    println!();
    println!("Start a curtailment of {target} kW:");
    println!(
        "  curl -sS -X POST {base}/v1/curtailments {auth} -H 'Content-Type: application/json' -d '{{\"mode\":\"kw\",\"target_kw\":{target},\"reason\":\"dev test\"}}'"
    );
    println!("List curtailments (or GET {base}/v1/curtailments/<id> for one):");
    println!("  curl -sS {base}/v1/curtailments {auth}");
    println!("Stop one (restores its miners in paced batches), with <id> from the start reply:");
    println!("  curl -sS -X POST {base}/v1/curtailments/<id>/stop {auth}");
    println!();
    println!("Ctrl-C stops everything.");
}
