//! The simulated fleet of `ebb dev`: one simulator per site, each on a fixed loopback block, so a
//! restart serves the same miners on the same addresses and reuses the same device rows.
//!
//! Site `i` (from 0) starts at `127.77.(1 + i·blocks).1`, where `blocks` is how many /24s one
//! site needs (254 usable addresses each): with the default 50 miners per site, site-a is
//! `127.77.1.1-50` and site-b `127.77.2.1-50`.
//!
//! Each site's simulator runs in its own child process (`ebb sim dev-site`, this binary), because
//! every simulated miner holds a listening socket per port it serves and a process may hold only
//! `ulimit -n` descriptors: two sites of 5,000 miners need about 23,000, more than one process may
//! have here (20,000). A child raises its soft limit to the hard one, serves its site, prints one
//! JSON line per miner once every listener is bound, and stops when its stdin reaches EOF, which
//! happens when `ebb dev` closes it after draining the services, or when `ebb dev` dies however it
//! dies. A site that would not fit in one process is refused before anything starts
//! ([`fd_problem`]).

use anyhow::{Context, bail};
use ebb_domain::{Capabilities, SiteCode};
use ebb_minersim::{
    Firmware, FleetSpec, GroupSpec, MinerInfo, Model, Physics, SimOptions, Simulator, SiteSpec,
};
use ebb_store::fleet::NewDevice;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio_util::sync::CancellationToken;

/// The second octet of every dev miner address.
const SECOND_OCTET: u8 = 77;
/// Usable host addresses per /24 (the simulator skips .0 and .255).
const PER_BLOCK: u32 = 254;
/// The mix of makes at every site: one third each, the remainder to the first.
pub const MODELS: [Model; 3] = [Model::M60s, Model::S19Pro, Model::S19kProLuxos];

/// How many /24 blocks one site of `miners` needs.
pub fn blocks_per_site(miners: u32) -> u32 {
    miners.div_ceil(PER_BLOCK).max(1)
}

/// The first address of site `index` (from 0), or `None` when the sites do not fit in 127.77/16.
pub fn site_base(index: u32, miners_per_site: u32) -> Option<Ipv4Addr> {
    let blocks = blocks_per_site(miners_per_site);
    let first = index.checked_mul(blocks)?.checked_add(1)?;
    if first.saturating_add(blocks - 1) > 254 {
        return None;
    }
    Some(Ipv4Addr::new(
        127,
        SECOND_OCTET,
        u8::try_from(first).ok()?,
        1,
    ))
}

/// `site-a` … `site-z`, then `site-27` and on.
pub fn site_code(index: u32) -> SiteCode {
    let code = match u8::try_from(index).ok().filter(|i| *i < 26) {
        Some(i) => format!("site-{}", char::from(b'a' + i)),
        None => format!("site-{}", index + 1),
    };
    SiteCode::parse(&code).expect("site-<letter or number> is a valid site code")
}

/// The fleet of one site: the mix of [`MODELS`], `miners` units in all.
pub fn site_fleet(code: &SiteCode, index: u32, miners: u32) -> FleetSpec {
    let n = MODELS.len() as u32;
    let groups = MODELS
        .iter()
        .enumerate()
        .map(|(i, model)| {
            let share = miners / n + u32::from((i as u32) < miners % n);
            GroupSpec::new(*model, share)
        })
        .filter(|g| g.count > 0)
        .collect();
    // A different seed per site, so the sites' units differ; the same one on every start.
    FleetSpec::new(vec![SiteSpec::new(code.as_str(), groups)])
        .with_seed(0xebb_0000 + u64::from(index))
}

/// Starts one site's simulator on its fixed block, with `ramp` as the power ramp (short, so that
/// curtailments confirm within seconds), accepting at most `max_connections` at once.
pub async fn start_site(
    code: &SiteCode,
    index: u32,
    miners: u32,
    ramp: Duration,
    max_connections: usize,
) -> anyhow::Result<Simulator> {
    let base = site_base(index, miners)
        .ok_or_else(|| anyhow::anyhow!("site {code} does not fit in 127.77.0.0/16"))?;
    let options = SimOptions {
        max_connections,
        ..SimOptions::default()
    }
    .with_base_address(base)
    .with_physics(Physics::default().with_ramp(ramp))
    // Nobody needs the simulator's control API in dev; it would only take a port.
    .with_control_addr(None);
    ebb_minersim::start(site_fleet(code, index, miners), options).await
}

// ---------------------------------------------------------------------------------------------
// File descriptors

/// Listening sockets one miner holds: one per port its firmware serves, as minersim binds them
/// (Whatsminer 80, 4028 and 4433; stock Antminer and LuxOS 80 and 4028).
pub fn listeners_per_miner(firmware: Firmware) -> u64 {
    match firmware {
        Firmware::WhatsminerV3 => 3,
        Firmware::AntminerStock | Firmware::LuxOs => 2,
    }
}

/// Listening sockets of a site of `miners` (the mix of [`MODELS`]).
pub fn site_listeners(miners: u32) -> u64 {
    site_fleet(&site_code(0), 0, miners).sites[0]
        .groups
        .iter()
        .map(|g| u64::from(g.count) * listeners_per_miner(g.model.firmware()))
        .sum()
}

/// Descriptors a simulator process needs beside its listeners: the connections its site's agent
/// opens at once (up to the agent's `max_in_flight`, 4,096 by default since ADR 0008, capped by
/// the agent's descriptor budget) and the runtime's own (stdio, epoll, the log). Measured with
/// 256 in flight: a site of 5,000 held at most 1,351 beyond its 11,667 listeners during a `full`
/// curtailment of 2 × 5,000. Beyond it the simulator makes connections wait (`max_connections`)
/// rather than fail, so a bigger agent concurrency is slowed here, never failed.
pub const SIM_FD_HEADROOM: u64 = 2_048;
/// The part of [`SIM_FD_HEADROOM`] the simulator keeps for itself rather than for connections.
const SIM_FD_BASE: u64 = 64;

/// Descriptors the simulator process of a site of `miners` needs.
pub fn site_fd_need(miners: u32) -> u64 {
    site_listeners(miners) + SIM_FD_HEADROOM
}

/// Why a site of `miners` does not fit in one simulator process allowed `limit` descriptors (the
/// hard `RLIMIT_NOFILE`, which the simulator raises its soft limit to), or `None` when it fits.
pub fn fd_problem(miners: u32, limit: u64) -> Option<String> {
    let need = site_fd_need(miners);
    if need <= limit {
        return None;
    }
    let listeners = site_listeners(miners);
    // The need grows with the miners: the largest site that fits is where it crosses the limit.
    let fits = (1..=miners)
        .collect::<Vec<_>>()
        .partition_point(|m| site_fd_need(*m) <= limit);
    let advice = if fits == 0 {
        format!("raise the hard limit to at least {need}")
    } else {
        format!("use --miners-per-site {fits} or fewer, or raise the hard limit")
    };
    Some(format!(
        "a site of {miners} simulated miners needs {need} file descriptors in its simulator process \
         ({listeners} listening sockets, 3 per Whatsminer and 2 per Antminer or LuxOS, plus \
         {SIM_FD_HEADROOM} for connections), but a process may open only {limit} here (`ulimit -Hn`): \
         {advice} (LimitNOFILE= in systemd, nofile in /etc/security/limits.conf, or --ulimit for docker)"
    ))
}

/// The hard limit on open descriptors, which any process here may raise its soft limit to;
/// `None` when it cannot be read.
pub fn fd_limit() -> Option<u64> {
    rlimit::Resource::NOFILE.get().ok().map(|(_, hard)| hard)
}

/// Raises the soft limit on open descriptors to the hard one; returns the limit now in force.
pub fn raise_fd_limit() -> anyhow::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX).context("raising the open-file limit (RLIMIT_NOFILE)")
}

// ---------------------------------------------------------------------------------------------
// Port 80

/// The lowest port a process without `CAP_NET_BIND_SERVICE` may bind.
const UNPRIVILEGED_PORT_START: &str = "/proc/sys/net/ipv4/ip_unprivileged_port_start";
/// `CAP_NET_BIND_SERVICE`'s bit in the capability masks of `/proc/self/status`.
const CAP_NET_BIND_SERVICE_BIT: u32 = 10;

/// Whether a process with effective capabilities `cap_eff` may not bind port 80, given the
/// lowest unprivileged port.
fn port_80_denied(unprivileged_port_start: u32, cap_eff: u64) -> bool {
    unprivileged_port_start > 80 && cap_eff & (1 << CAP_NET_BIND_SERVICE_BIT) == 0
}

/// Why this process may not bind port 80, which every simulated miner serves as real ones do (the
/// agent finds and drives stock Antminers there), or `None` (also when it cannot tell).
pub fn port_80_problem() -> Option<String> {
    let start: u32 = std::fs::read_to_string(UNPRIVILEGED_PORT_START)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())?;
    port_80_denied(start, cap_eff).then(|| {
        format!(
            "the simulated miners listen on port 80 as real ones do, and this user may not bind ports below {start} \
             (net.ipv4.ip_unprivileged_port_start): allow it with `sudo sysctl -w net.ipv4.ip_unprivileged_port_start=80` \
             (keep it with a line in /etc/sysctl.d/), or run ebb dev as root"
        )
    })
}

// ---------------------------------------------------------------------------------------------
// The simulator child process

/// `ebb sim dev-site`: what `ebb dev` runs as one site's simulator (hidden, not for people).
#[derive(Debug, Clone, clap::Args)]
pub struct SiteArgs {
    /// The site's index (0 is site-a): fixes its code, seed and address block.
    #[arg(long)]
    pub index: u32,
    /// Simulated miners.
    #[arg(long)]
    pub miners: u32,
    /// Seconds of the power ramp after a sleep or a wake.
    #[arg(long)]
    pub ramp_seconds: f64,
}

/// Runs one site's simulator until stdin reaches EOF or a signal arrives: the body of
/// `ebb sim dev-site`. Prints one [`MinerInfo`] JSON line per miner once every listener is bound.
pub async fn serve_site(args: SiteArgs) -> anyhow::Result<ExitCode> {
    let limit = raise_fd_limit()?;
    if let Some(problem) = fd_problem(args.miners, limit) {
        bail!(problem);
    }
    if !(args.ramp_seconds.is_finite() && args.ramp_seconds >= 0.0) {
        bail!(
            "--ramp-seconds must be a number of seconds, got {}",
            args.ramp_seconds
        );
    }
    let code = site_code(args.index);
    // What the listeners leave, less the runtime's own: accepting more would fail with EMFILE.
    let spare = limit.saturating_sub(site_listeners(args.miners) + SIM_FD_BASE);
    let max_connections = usize::try_from(spare)
        .unwrap_or(usize::MAX)
        .clamp(1, 16_384);
    let sim = start_site(
        &code,
        args.index,
        args.miners,
        Duration::from_secs_f64(args.ramp_seconds),
        max_connections,
    )
    .await?;
    {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        for m in sim.miners() {
            serde_json::to_writer(&mut out, &m)?;
            out.write_all(b"\n")?;
        }
        out.flush().context("writing the miners to stdout")?;
    }
    tracing::info!(site = %code, miners = sim.len(), fd_limit = limit, max_connections, "simulated miners listening");
    let signals = ebb_runtime::Signals::install()?;
    let stop = signals.token();
    watch_stdin(stop.clone());
    stop.cancelled().await;
    sim.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// Cancels `stop` once stdin reaches EOF (or fails): `ebb dev` closed its end, or died.
///
/// A plain thread, not tokio's stdin: a read blocked in tokio's blocking pool would hold up the
/// runtime's shutdown after a signal, while a blocked thread does not hold up the process's exit.
fn watch_stdin(stop: CancellationToken) {
    std::thread::spawn(move || {
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin().lock();
        while matches!(std::io::Read::read(&mut stdin, &mut sink), Ok(n) if n > 0) {}
        stop.cancel();
    });
}

/// How long a simulator child may take to bind its listeners (5,000 miners take about a second).
const SITE_START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a simulator child may take to stop once its stdin closes.
const SITE_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// One site's simulator, in its child process.
#[derive(Debug)]
pub struct SiteSim {
    code: SiteCode,
    miners_wanted: u32,
    child: Child,
    /// Closing it tells the child to stop; it is also closed when this process dies.
    stdin: Option<ChildStdin>,
    /// The child's stderr: its log, and why it failed.
    log: PathBuf,
    /// Filled by [`SiteSim::wait_listening`].
    miners: Vec<MinerInfo>,
}

/// Starts the simulator of site `index` as a child process of `exe` (this binary), with its log
/// in `log`; [`SiteSim::wait_listening`] waits until it serves.
pub fn spawn_site(
    exe: &Path,
    index: u32,
    miners: u32,
    ramp: Duration,
    log: &Path,
) -> anyhow::Result<SiteSim> {
    let code = site_code(index);
    let err = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut child = Command::new(exe)
        .args(["sim", "dev-site", "--index"])
        .arg(index.to_string())
        .arg("--miners")
        .arg(miners.to_string())
        .arg("--ramp-seconds")
        .arg(ramp.as_secs_f64().to_string())
        // Colour codes would only clutter the log file.
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(err)
        // Its own process group: a Ctrl-C in the terminal reaches only `ebb dev`, which drains
        // the agents before it lets the miners go.
        .process_group(0)
        // Only if this process unwinds without stopping it; a clean stop closes stdin instead.
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {} sim dev-site", exe.display()))?;
    let stdin = child.stdin.take();
    Ok(SiteSim {
        code,
        miners_wanted: miners,
        child,
        stdin,
        log: log.to_path_buf(),
        miners: Vec::new(),
    })
}

impl SiteSim {
    /// Reads the child's miners as it prints them once listening; fails with its log when it
    /// exits first or takes too long.
    pub async fn wait_listening(&mut self) -> anyhow::Result<()> {
        let stdout = self
            .child
            .stdout
            .take()
            .context("the simulator's stdout was already read")?;
        let mut lines = BufReader::new(stdout).lines();
        let wanted = self.miners_wanted as usize;
        let mut miners = Vec::with_capacity(wanted);
        let read = async {
            while miners.len() < wanted {
                match lines.next_line().await? {
                    Some(line) => {
                        miners.push(serde_json::from_str::<MinerInfo>(&line).with_context(
                            || format!("reading a miner from the simulator: {line}"),
                        )?)
                    }
                    None => break,
                }
            }
            anyhow::Ok(())
        };
        let outcome = tokio::time::timeout(SITE_START_TIMEOUT, read).await;
        if let Ok(Ok(())) = outcome
            && miners.len() == wanted
        {
            self.miners = miners;
            return Ok(());
        }
        let why = match outcome {
            Err(_) => format!("was not listening after {SITE_START_TIMEOUT:?}"),
            Ok(Err(e)) => format!("failed: {e:#}"),
            Ok(Ok(())) => {
                let status = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
                match status {
                    Ok(Ok(status)) => format!("exited with {status} before its miners listened"),
                    _ => "closed its output before its miners listened".to_owned(),
                }
            }
        };
        bail!(
            "the simulator of {} {why}; its log ({}):\n{}",
            self.code,
            self.log.display(),
            super::infra::tail(&self.log)
        )
    }

    /// The site.
    pub fn code(&self) -> &SiteCode {
        &self.code
    }

    /// Every simulated miner, in address order.
    pub fn miners(&self) -> &[MinerInfo] {
        &self.miners
    }

    /// Number of miners listening.
    pub fn len(&self) -> usize {
        self.miners.len()
    }

    /// Whether no miner listens (before [`SiteSim::wait_listening`]).
    pub fn is_empty(&self) -> bool {
        self.miners.is_empty()
    }

    /// The child's process id, while it runs.
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// The first and the last miner's address.
    pub fn address_range(&self) -> Option<(Ipv4Addr, Ipv4Addr)> {
        Some((self.miners.first()?.address, self.miners.last()?.address))
    }

    /// Tells the child to stop and waits until it has (killing it after [`SITE_STOP_TIMEOUT`]).
    pub async fn shutdown(mut self) {
        drop(self.stdin.take());
        match tokio::time::timeout(SITE_STOP_TIMEOUT, self.child.wait()).await {
            Ok(Ok(status)) if status.success() => {
                tracing::debug!(site = %self.code, "simulator stopped")
            }
            Ok(Ok(status)) => {
                tracing::warn!(site = %self.code, %status, log = %self.log.display(), "simulator exited with an error")
            }
            Ok(Err(error)) => {
                tracing::warn!(site = %self.code, %error, "waiting for the simulator to stop")
            }
            Err(_) => {
                tracing::warn!(site = %self.code, "simulator did not stop in time; killing it");
                let _ = self.child.kill().await;
            }
        }
    }
}

/// What the agent can do with a miner of this firmware, per the capability table (issue 4):
/// Whatsminer v3 pauses and takes a power limit; stock Antminer and LuxOS only pause.
pub fn capabilities(firmware: Firmware) -> Capabilities {
    match firmware {
        Firmware::WhatsminerV3 => Capabilities {
            curtail_full: true,
            curtail_efficiency: true,
            power_target: true,
        },
        Firmware::AntminerStock | Firmware::LuxOs => Capabilities {
            curtail_full: true,
            curtail_efficiency: false,
            power_target: false,
        },
    }
}

/// The device row of a simulated miner.
pub fn device(m: &MinerInfo) -> NewDevice {
    let make = match m.make {
        ebb_minersim::Make::Whatsminer => "Whatsminer",
        ebb_minersim::Make::Antminer => "Antminer",
    };
    NewDevice {
        address: m.address.to_string(),
        make: make.to_owned(),
        model: m.model_name.clone(),
        // As a scan stores it (`LuxOS 2025.4.8.220305`), so the agent drives the miner on its
        // native hot path without identifying it (ADR 0008), as it would a scanned fleet.
        firmware: Some(m.scanned_firmware()),
        capabilities: capabilities(m.firmware),
        nominal_power_w: Some(m.nominal_power_w),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sites_get_fixed_disjoint_blocks() {
        let check = |index, miners, want: Option<[u8; 4]>| {
            assert_eq!(
                site_base(index, miners),
                want.map(Ipv4Addr::from),
                "site {index} with {miners} miners"
            );
        };
        check(0, 50, Some([127, 77, 1, 1]));
        check(1, 50, Some([127, 77, 2, 1]));
        check(0, 254, Some([127, 77, 1, 1]));
        check(1, 255, Some([127, 77, 3, 1]));
        check(253, 50, Some([127, 77, 254, 1]));
        check(254, 50, None);
        check(127, 300, None);
    }

    #[test]
    fn site_codes_and_mixes() {
        assert_eq!(site_code(0).as_str(), "site-a");
        assert_eq!(site_code(25).as_str(), "site-z");
        assert_eq!(site_code(26).as_str(), "site-27");
        let spec = site_fleet(&site_code(0), 0, 50);
        let counts: Vec<u32> = spec.sites[0].groups.iter().map(|g| g.count).collect();
        assert_eq!(counts, vec![17, 17, 16]);
        assert_eq!(site_fleet(&site_code(0), 0, 1).sites[0].groups.len(), 1);
        spec.validate().unwrap();
    }

    #[test]
    fn port_80_needs_the_sysctl_or_the_capability() {
        let cap = 1u64 << CAP_NET_BIND_SERVICE_BIT;
        assert!(port_80_denied(1024, 0));
        assert!(port_80_denied(81, cap - 1));
        assert!(!port_80_denied(80, 0));
        assert!(!port_80_denied(0, 0));
        assert!(!port_80_denied(1024, cap));
        assert!(!port_80_denied(1024, 0x1ff_feff_ffff));
    }

    #[test]
    fn listeners_follow_the_mix_of_makes() {
        // 17 Whatsminers with 3 listeners, 17 + 16 Antminer and LuxOS units with 2.
        assert_eq!(site_listeners(50), 17 * 3 + 33 * 2);
        assert_eq!(site_listeners(1), 3);
        assert_eq!(site_listeners(5_000), 1_667 * 3 + 3_333 * 2);
        assert_eq!(site_fd_need(5_000), 11_667 + SIM_FD_HEADROOM);
    }

    #[test]
    fn a_site_that_does_not_fit_its_process_is_refused_with_the_numbers() {
        // The limit here: one site of 5,000 fits a process of 20,000, two did not (issue 13).
        assert_eq!(fd_problem(5_000, 20_000), None);
        assert!(site_fd_need(5_000) * 2 > 20_000);
        assert_eq!(fd_problem(50, 1_024 + SIM_FD_HEADROOM), None);

        let problem = fd_problem(5_000, 12_000).expect("5,000 miners need more than 12,000");
        for number in ["5000", "13715", "11667", "12000"] {
            assert!(problem.contains(number), "{number} missing from: {problem}");
        }
        let fits: u32 = problem
            .split("--miners-per-site ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .expect("the advice names a site size");
        assert!(site_fd_need(fits) <= 12_000 && site_fd_need(fits + 1) > 12_000);
        assert_eq!(fd_problem(fits, 12_000), None);

        let hopeless = fd_problem(10, 1_024).expect("the headroom alone exceeds 1,024");
        assert!(
            hopeless.contains("raise the hard limit to at least"),
            "{hopeless}"
        );
    }
}
