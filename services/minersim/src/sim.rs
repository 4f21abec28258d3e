//! The simulated fleet's state: one compact slot per miner, and the operations every protocol
//! front end and the control API share (telemetry snapshots, commands, faults, the truth).
//!
//! Architecture invariant: protocol code never touches physics directly. It asks for a
//! [`Telemetry`] snapshot (what the firmware would report, faults and noise included) and sends
//! [`Command`]s (which faults may swallow or refuse). The truth, what the miner really does, is
//! only read by [`SimCore::truth`].

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::clock::{SimClock, SimTime};
use crate::fault::{Fault, FaultSelector, FaultSet};
use crate::fleet::{Nameplate, SplitMix64, mix};
use crate::model::{BOARDS, Firmware, Make, Model};
use crate::physics::{Kinematics, MinerState, Mode, PerfMode, Physics};

/// Errors from operations on the simulated fleet.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// No simulated miner has this address.
    #[error("no simulated miner at {0}")]
    UnknownMiner(Ipv4Addr),
    /// No site has this name.
    #[error("no site named {0:?}")]
    UnknownSite(String),
    /// The request itself is malformed.
    #[error("invalid request: {0}")]
    Invalid(String),
}

/// Static facts about one simulated miner.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MinerInfo {
    /// The loopback address it answers on.
    pub address: Ipv4Addr,
    /// Its site.
    pub site: String,
    /// Hardware maker.
    pub make: Make,
    /// Firmware it runs.
    pub firmware: Firmware,
    /// Model identifier.
    pub model: Model,
    /// The model as the firmware spells it.
    pub model_name: String,
    /// Nameplate power of this unit (spread applied).
    pub nominal_power_w: f64,
    /// Nameplate hashrate of this unit (spread applied).
    pub nominal_hashrate_ths: f64,
}

impl MinerInfo {
    /// The firmware as an asic-rs 0.8.6 scan of this miner reports it and a registration
    /// stores it: asic-rs's firmware name, then the version it reads
    /// (`WhatsMiner Stock 20250101.22.REL`, `AntMiner Stock Mon Dec 11 15:26:02 CST 2023`,
    /// `LuxOS 2025.4.8.220305`). The agent's scan test checks it against a real scan.
    pub fn scanned_firmware(&self) -> String {
        let name = match self.firmware {
            Firmware::WhatsminerV3 => "WhatsMiner Stock",
            Firmware::AntminerStock => "AntMiner Stock",
            Firmware::LuxOs => "LuxOS",
        };
        format!("{name} {}", self.model.spec().firmware_build)
    }
}

/// What a miner is really doing, as opposed to what it reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrueState {
    /// The miner's address.
    pub address: Ipv4Addr,
    /// What it is doing.
    pub mode: Mode,
    /// Power drawn now.
    pub power_w: f64,
    /// Hashrate now.
    pub hashrate_ths: f64,
    /// The power it is heading to.
    pub target_power_w: f64,
    /// The power limit set on it, if any.
    pub power_limit_w: Option<f64>,
    /// Its work mode.
    pub perf_mode: PerfMode,
    /// Whether power is still moving toward the target.
    pub ramping: bool,
    /// Seconds since the firmware booted.
    pub uptime_s: u64,
    /// Whether the fault LED blinks.
    pub led_blinking: bool,
    /// When it will wake up by itself (simulated seconds), if scheduled.
    pub auto_wake_at_s: Option<f64>,
    /// Active faults.
    pub faults: Vec<Fault>,
    /// Simulated time of this reading, in seconds.
    pub sim_time_s: f64,
}

/// A state change requested over a miner protocol.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Command {
    /// Stop hashing (sleep, curtail, service stop).
    Sleep,
    /// Resume hashing.
    Wake,
    /// Set a work mode, which also decides asleep or awake (Antminer `miner-mode`).
    WorkMode { sleep: bool, perf: PerfMode },
    /// Change only the work mode.
    Perf(PerfMode),
    /// Limit power.
    PowerLimit(f64),
    /// Reboot the whole unit.
    Reboot,
    /// Fault LED on or off.
    Led(bool),
}

/// Why a command was not carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CommandError {
    /// A fault made the miner refuse it.
    Refused,
}

/// Limits that keep the network front ends bounded.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NetLimits {
    /// How long a client may take to send a request (and idle between requests).
    pub read_timeout: Duration,
    /// Longest a faulty miner holds a connection it will never answer.
    pub hold_max: Duration,
    /// Every reply's added delay, when the fleet is slow on purpose.
    pub latency: Option<crate::latency::Latency>,
}

/// What to do with a freshly accepted connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Gate {
    /// Serve it.
    Open,
    /// Reset it at once (refusing, gone, or rebooting).
    Reset,
}

/// How to deliver a reply, given the miner's faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Write it.
    Normal,
    /// Never write anything (and do not act on the request).
    NoAnswer,
    /// Write part of it, then hang.
    Stall,
}

/// The reply plan for one request.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ReplyPlan {
    pub delay: Option<Duration>,
    pub delivery: Delivery,
}

/// One hashboard's reported numbers.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct BoardTele {
    pub hash_ths: f64,
    pub ideal_ths: f64,
    pub chips: u16,
    pub chip_min_c: f64,
    pub chip_avg_c: f64,
    pub chip_max_c: f64,
    pub pcb_in_c: f64,
    pub pcb_out_c: f64,
    pub freq_mhz: f64,
}

/// What the firmware would report right now: a single consistent sample.
#[derive(Clone, Debug)]
pub(crate) struct Telemetry {
    pub model: Model,
    /// Unix seconds of the sample ("When").
    pub when: i64,
    pub uptime_s: u64,
    /// Reported power (NaN or garbage under the matching faults).
    pub power_w: f64,
    /// Reported hashrate now.
    pub hash_ths: f64,
    /// Average since boot.
    pub hash_avg_ths: f64,
    pub hash_1m_ths: f64,
    pub hash_5m_ths: f64,
    pub hash_15m_ths: f64,
    pub hash_30m_ths: f64,
    /// Nameplate hashrate.
    pub ideal_ths: f64,
    /// Nameplate power.
    pub nominal_w: f64,
    pub boards: [BoardTele; BOARDS],
    pub fans_rpm: [u32; 4],
    pub psu_fan_rpm: u32,
    pub ambient_c: f64,
    pub sleeping: bool,
    pub perf: PerfMode,
    pub led: bool,
    pub power_limit_w: Option<f64>,
    pub accepted: u64,
    pub rejected: u64,
    pub hw_errors: u64,
    pub best_share: u64,
}

impl Telemetry {
    /// The hottest chip on the unit.
    pub fn chip_max_c(&self) -> f64 {
        self.boards.iter().map(|b| b.chip_max_c).fold(0.0, f64::max)
    }

    /// The coolest chip on the unit.
    pub fn chip_min_c(&self) -> f64 {
        self.boards
            .iter()
            .map(|b| b.chip_min_c)
            .fold(f64::MAX, f64::min)
    }

    /// The average chip temperature.
    pub fn chip_avg_c(&self) -> f64 {
        self.boards.iter().map(|b| b.chip_avg_c).sum::<f64>() / BOARDS as f64
    }
}

/// The mutable part of a miner slot.
#[derive(Debug)]
pub(crate) struct Slot {
    pub state: MinerState,
    /// Active faults; `None` for the healthy majority, to keep slots small.
    pub faults: Option<Box<FaultSet>>,
}

impl Slot {
    fn has(&self, pred: impl Fn(&Fault) -> bool) -> bool {
        self.faults.as_ref().is_some_and(|f| f.has(pred))
    }
}

/// One simulated miner.
#[derive(Debug)]
pub(crate) struct MinerSlot {
    pub address: Ipv4Addr,
    pub plate: Nameplate,
    pub slot: Mutex<Slot>,
    /// Identification probes answered (RPC `version` and `devdetails`, which every asic-rs
    /// identification sends and no read or command does): tests count re-identifications.
    pub probes: std::sync::atomic::AtomicU32,
}

/// A site's name and climate.
#[derive(Clone, Debug)]
pub(crate) struct SiteInfo {
    pub name: String,
    pub ambient_c: f64,
}

/// The whole simulated fleet, shared by every front end.
#[derive(Debug)]
pub(crate) struct SimCore {
    pub miners: Box<[MinerSlot]>,
    pub by_addr: HashMap<Ipv4Addr, u32>,
    pub sites: Vec<SiteInfo>,
    pub clock: SimClock,
    physics: RwLock<Physics>,
    /// Fleet seed: identities, noise and random fault shares derive from it.
    pub seed: u64,
    /// Key for stateless digest nonces.
    pub nonce_key: [u8; 16],
    /// Bumped whenever a miner may have become reachable or unreachable.
    pub reach_epoch: watch::Sender<u64>,
    pub limits: NetLimits,
}

impl SimCore {
    pub fn new(
        plates: Vec<Nameplate>,
        addresses: Vec<Ipv4Addr>,
        sites: Vec<SiteInfo>,
        clock: SimClock,
        physics: Physics,
        seed: u64,
        limits: NetLimits,
    ) -> SimCore {
        let miners: Box<[MinerSlot]> = plates
            .into_iter()
            .zip(addresses)
            .map(|(plate, address)| {
                let k = Kinematics::new(
                    &physics,
                    f64::from(plate.nominal_w),
                    f64::from(plate.nominal_ths),
                );
                MinerSlot {
                    address,
                    plate,
                    slot: Mutex::new(Slot {
                        state: MinerState::hashing_since(&k, plate.uptime_s),
                        faults: None,
                    }),
                    probes: std::sync::atomic::AtomicU32::new(0),
                }
            })
            .collect();
        let by_addr = miners
            .iter()
            .enumerate()
            .map(|(i, m)| (m.address, i as u32))
            .collect();
        let nonce_key = rand::random();
        SimCore {
            miners,
            by_addr,
            sites,
            clock,
            physics: RwLock::new(physics),
            seed,
            nonce_key,
            reach_epoch: watch::Sender::new(0),
            limits,
        }
    }

    /// The current physics.
    pub fn physics(&self) -> Physics {
        *self.physics.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces the physics. Ramps in progress continue at the new rates.
    pub fn set_physics(&self, p: Physics) {
        *self.physics.write().unwrap_or_else(PoisonError::into_inner) = p;
    }

    pub fn index_of(&self, addr: Ipv4Addr) -> Option<u32> {
        self.by_addr.get(&addr).copied()
    }

    pub fn miner(&self, idx: u32) -> &MinerSlot {
        &self.miners[idx as usize]
    }

    /// Counts an identification probe (see [`MinerSlot::probes`]).
    pub fn count_probe(&self, idx: u32) {
        self.miner(idx)
            .probes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn kin(&self, idx: u32) -> Kinematics {
        let plate = &self.miner(idx).plate;
        Kinematics::new(
            &self.physics(),
            f64::from(plate.nominal_w),
            f64::from(plate.nominal_ths),
        )
    }

    /// Runs `f` on a miner's slot with its state settled at the current time.
    pub fn with_slot<R>(
        &self,
        idx: u32,
        f: impl FnOnce(&mut Slot, &Kinematics, SimTime) -> R,
    ) -> R {
        let k = self.kin(idx);
        let now = self.clock.now();
        let mut slot = self
            .miner(idx)
            .slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        slot.state.settle(&k, now);
        f(&mut slot, &k, now)
    }

    /// Tells connection-level listeners to look again.
    pub fn bump_reachability(&self) {
        self.reach_epoch.send_modify(|e| *e = e.wrapping_add(1));
    }

    /// Static facts about a miner.
    pub fn info(&self, idx: u32) -> MinerInfo {
        let m = self.miner(idx);
        let spec = m.plate.model.spec();
        MinerInfo {
            address: m.address,
            site: self.sites[usize::from(m.plate.site)].name.clone(),
            make: spec.make,
            firmware: spec.firmware,
            model: m.plate.model,
            model_name: spec.name.to_owned(),
            nominal_power_w: f64::from(m.plate.nominal_w),
            nominal_hashrate_ths: f64::from(m.plate.nominal_ths),
        }
    }

    /// What a miner is really doing.
    pub fn truth(&self, idx: u32) -> TrueState {
        let address = self.miner(idx).address;
        self.with_slot(idx, |slot, k, now| {
            let s = &slot.state;
            let mut hash = s.hash_at(k, now);
            if s.sleeping
                && let Some(residual) = residual_pct(slot)
            {
                hash = hash.max(k.nominal_ths * residual / 100.0);
            }
            TrueState {
                address,
                mode: s.mode(k, now),
                power_w: s.power_at(k, now),
                hashrate_ths: hash,
                target_power_w: s.target_w(k),
                power_limit_w: s.power_limit(),
                perf_mode: s.perf,
                ramping: s.ramping(k, now),
                uptime_s: s.uptime_s(now),
                led_blinking: s.led,
                auto_wake_at_s: s.auto_wake_at().map(SimTime::as_secs_f64),
                faults: slot
                    .faults
                    .as_ref()
                    .map(|f| f.faults().to_vec())
                    .unwrap_or_default(),
                sim_time_s: now.as_secs_f64(),
            }
        })
    }

    /// A telemetry sample as the firmware would report it now.
    pub fn telemetry(&self, idx: u32) -> Telemetry {
        let m = self.miner(idx);
        let spec = m.plate.model.spec();
        let ambient_c = self.sites[usize::from(m.plate.site)].ambient_c;
        let noise_pct = self.physics().noise_pct;
        let seed = self.seed;
        self.with_slot(idx, |slot, k, now| {
            // Stale telemetry keeps reporting the sample of the moment it froze.
            let t = slot
                .faults
                .as_ref()
                .and_then(|f| f.stale_at())
                .unwrap_or(now);
            let s = &slot.state;
            let residual = if s.sleeping { residual_pct(slot) } else { None };
            let hash_at = |t: SimTime| {
                let h = s.hash_at(k, t);
                residual.map_or(h, |r| h.max(k.nominal_ths * r / 100.0))
            };
            let back = |secs: u64| SimTime(t.0.saturating_sub(secs * 1000));
            let bucket = t.0 / 5000;
            let noise = |channel: u64| {
                1.0 + noise_pct / 100.0
                    * signed(mix(seed ^ (u64::from(idx) << 24) ^ (bucket << 4) ^ channel))
            };

            let true_power = s.power_at(k, t);
            let mut power_w = true_power * noise(1);
            if let Some(faults) = &slot.faults {
                for f in faults.faults() {
                    match f {
                        Fault::NanPower => power_w = f64::NAN,
                        Fault::GarbagePower { watts } => power_w = *watts,
                        _ => {}
                    }
                }
            }
            let hash_ths = hash_at(t) * noise(2);
            let uptime_s = s.uptime_s(t);
            let work = s.work_at(k, t);
            let hash_avg_ths = if uptime_s > 0 {
                work / uptime_s as f64
            } else {
                0.0
            };
            let load = ((true_power - k.idle_w) / (k.nominal_w - k.idle_w)).clamp(0.0, 1.2);

            let mut boards = [BoardTele::default(); BOARDS];
            let weights: [f64; BOARDS] = std::array::from_fn(|b| {
                1.0 + 0.015 * signed(mix(seed ^ (u64::from(idx) << 8) ^ (b as u64 + 100)))
            });
            let weight_sum: f64 = weights.iter().sum();
            for (b, board) in boards.iter_mut().enumerate() {
                let share = weights[b] / weight_sum;
                let offset = 2.0 * signed(mix(seed ^ (u64::from(idx) << 8) ^ (b as u64 + 200)));
                let chip_avg = ambient_c + 4.0 + (spec.hot_chip_c - 29.0) * load.min(1.0) + offset;
                *board = BoardTele {
                    hash_ths: hash_ths * share,
                    ideal_ths: k.nominal_ths * share,
                    chips: spec.chips_per_board,
                    chip_min_c: chip_avg - 1.0 - 6.0 * load.min(1.0),
                    chip_avg_c: chip_avg,
                    chip_max_c: chip_avg + 1.0 + 6.0 * load.min(1.0),
                    pcb_in_c: ambient_c + 2.0 + 15.0 * load.min(1.0) + offset / 2.0,
                    pcb_out_c: ambient_c + 3.0 + 30.0 * load.min(1.0) + offset / 2.0,
                    freq_mhz: if load > 0.0 {
                        f64::from(spec.freq_mhz) * (0.5 + 0.5 * load.min(1.1))
                    } else {
                        0.0
                    },
                };
            }
            let fan = |i: u64| {
                let base = 1500.0 + (f64::from(spec.fan_max_rpm) - 1500.0) * load.min(1.0);
                (base * (1.0 + 0.02 * signed(mix(seed ^ u64::from(idx) ^ (i + 300))))).round()
                    as u32
            };
            let share_work = (k.nominal_ths * 20.0).max(1.0);
            let accepted = (work / share_work) as u64;
            Telemetry {
                model: m.plate.model,
                when: self.clock.unix_secs(t),
                uptime_s,
                power_w,
                hash_ths,
                hash_avg_ths,
                hash_1m_ths: hash_at(back(30)),
                hash_5m_ths: hash_at(back(150)),
                hash_15m_ths: hash_at(back(450)),
                hash_30m_ths: hash_at(back(900)),
                ideal_ths: k.nominal_ths,
                nominal_w: k.nominal_w,
                boards,
                fans_rpm: [fan(0), fan(1), fan(2), fan(3)],
                psu_fan_rpm: (2000.0 + 4000.0 * load.min(1.0)) as u32,
                ambient_c,
                sleeping: s.sleeping,
                perf: s.perf,
                led: s.led,
                power_limit_w: s.power_limit(),
                accepted,
                rejected: accepted / 700,
                hw_errors: accepted / 40,
                best_share: 1 + (mix(seed ^ u64::from(idx)) % 50_000_000_000),
            }
        })
    }

    /// Carries out a command, unless a fault swallows or refuses it.
    pub fn command(&self, idx: u32, cmd: Command) -> Result<(), CommandError> {
        let physics = self.physics();
        let reboot = matches!(cmd, Command::Reboot);
        let result = self.with_slot(idx, |slot, k, now| {
            if slot.has(|f| matches!(f, Fault::AckNoop)) {
                return Ok(());
            }
            let s = &mut slot.state;
            let wakes = match cmd {
                Command::Wake => s.sleeping,
                Command::WorkMode { sleep, .. } => s.sleeping && !sleep,
                _ => false,
            };
            if wakes && slot.has(|f| matches!(f, Fault::RefuseWake)) {
                return Err(CommandError::Refused);
            }
            let wake_after = slot.faults.as_ref().and_then(|f| {
                f.faults().iter().find_map(|f| match f {
                    Fault::SelfWake { after_s } => Some(Duration::from_secs_f64(*after_s)),
                    _ => None,
                })
            });
            let s = &mut slot.state;
            match cmd {
                Command::Sleep => {
                    if !s.sleeping {
                        s.set_sleeping(k, now, true, wake_after);
                    }
                }
                Command::Wake => {
                    if s.sleeping {
                        s.set_sleeping(k, now, false, None);
                    }
                }
                Command::WorkMode { sleep, perf } => {
                    if s.perf != perf {
                        s.set_perf(k, now, perf);
                    }
                    if s.sleeping != sleep {
                        s.set_sleeping(k, now, sleep, wake_after);
                    }
                }
                Command::Perf(perf) => s.set_perf(k, now, perf),
                Command::PowerLimit(w) => s.set_power_limit(k, now, Some(w)),
                Command::Reboot => {
                    s.reboot(k, now, Duration::from_secs_f64(physics.reboot_s));
                }
                Command::Led(on) => s.led = on,
            }
            Ok(())
        });
        if reboot {
            self.bump_reachability();
        }
        result
    }

    /// Whether a new connection to this miner should be served.
    pub fn gate(&self, idx: u32) -> Gate {
        self.with_slot(idx, |slot, _, now| {
            if slot.state.is_down(now) || slot.has(|f| matches!(f, Fault::Refuse | Fault::Gone)) {
                Gate::Reset
            } else {
                Gate::Open
            }
        })
    }

    /// Whether the miner's listeners should exist (per-address mode closes them when gone or
    /// rebooting, so connecting is refused as with a real host).
    pub fn listening(&self, idx: u32) -> bool {
        self.with_slot(idx, |slot, _, now| {
            !slot.state.is_down(now) && !slot.has(|f| matches!(f, Fault::Gone))
        })
    }

    /// How to deliver the reply to one request.
    pub fn reply_plan(&self, idx: u32) -> ReplyPlan {
        let mut plan = self.fault_plan(idx);
        if let Some(latency) = &self.limits.latency {
            plan.delay = Some(plan.delay.unwrap_or_default() + latency.sample());
        }
        plan
    }

    fn fault_plan(&self, idx: u32) -> ReplyPlan {
        self.with_slot(idx, |slot, _, _| {
            let Some(faults) = &slot.faults else {
                return ReplyPlan {
                    delay: None,
                    delivery: Delivery::Normal,
                };
            };
            let delivery = if faults.has(|f| matches!(f, Fault::NoAnswer)) {
                Delivery::NoAnswer
            } else if faults.has(|f| matches!(f, Fault::StallMidReply)) {
                Delivery::Stall
            } else {
                Delivery::Normal
            };
            ReplyPlan {
                delay: faults.delay_ms().map(Duration::from_millis),
                delivery,
            }
        })
    }

    /// The miners a selector names.
    pub fn select(&self, sel: &FaultSelector) -> Result<Vec<u32>, SimError> {
        sel.validate().map_err(SimError::Invalid)?;
        if sel.is_explicit() {
            return sel
                .address
                .iter()
                .chain(&sel.addresses)
                .map(|a| self.index_of(*a).ok_or(SimError::UnknownMiner(*a)))
                .collect();
        }
        let mut candidates: Vec<u32> = match &sel.site {
            Some(name) => {
                let site = self
                    .sites
                    .iter()
                    .position(|s| &s.name == name)
                    .ok_or_else(|| SimError::UnknownSite(name.clone()))?;
                (0..self.miners.len() as u32)
                    .filter(|&i| usize::from(self.miner(i).plate.site) == site)
                    .collect()
            }
            None => (0..self.miners.len() as u32).collect(),
        };
        if let Some(share) = sel.share {
            let mut want = (share * candidates.len() as f64).round() as usize;
            if share > 0.0 && want == 0 && !candidates.is_empty() {
                want = 1;
            }
            let mut rng = SplitMix64::new(sel.seed.unwrap_or(self.seed));
            // Partial Fisher–Yates: the first `want` entries are a uniform sample.
            for i in 0..want.min(candidates.len()) {
                let j = i + (rng.next_u64() % (candidates.len() - i) as u64) as usize;
                candidates.swap(i, j);
            }
            candidates.truncate(want);
            candidates.sort_unstable();
        }
        Ok(candidates)
    }

    /// Adds a fault to the selected miners; returns their addresses.
    pub fn inject(&self, sel: &FaultSelector, fault: Fault) -> Result<Vec<Ipv4Addr>, SimError> {
        fault.validate().map_err(SimError::Invalid)?;
        let targets = self.select(sel)?;
        for &idx in &targets {
            self.with_slot(idx, |slot, _, now| {
                slot.faults
                    .get_or_insert_with(Box::default)
                    .insert(fault.clone(), now);
            });
        }
        self.bump_reachability();
        Ok(targets.iter().map(|&i| self.miner(i).address).collect())
    }

    /// Removes every fault from the selected miners (cancelling any pending self-wake);
    /// returns how many miners had faults.
    pub fn clear(&self, sel: &FaultSelector) -> Result<usize, SimError> {
        let targets = self.select(sel)?;
        let mut cleared = 0;
        for &idx in &targets {
            self.with_slot(idx, |slot, _, _| {
                if slot.faults.take().is_some() {
                    cleared += 1;
                    slot.state.cancel_auto_wake();
                }
            });
        }
        self.bump_reachability();
        Ok(cleared)
    }

    /// A stable per-miner random value for identities (MAC, serials, salt).
    pub fn ident(&self, idx: u32, purpose: u64) -> u64 {
        mix(self.seed ^ (u64::from(idx) << 16) ^ purpose.wrapping_mul(0x51_7CC1_B727_220A))
    }

    /// The miner's MAC address, stable for a given fleet seed.
    pub fn mac(&self, idx: u32) -> String {
        let prefix: [u8; 3] = match self.miner(idx).plate.model.make() {
            Make::Whatsminer => [0xC6, 0x07, 0x1A],
            Make::Antminer => [0x02, 0x8B, 0x4E],
        };
        let r = self.ident(idx, 1).to_be_bytes();
        format!(
            "{:02X}:{:02X}:{:02X}:{:02X}:{:02X}:{:02X}",
            prefix[0], prefix[1], prefix[2], r[0], r[1], r[2]
        )
    }

    /// A serial number with the given prefix and `digits` alphanumerics.
    pub fn serial(&self, idx: u32, purpose: u64, prefix: &str, digits: usize) -> String {
        const ALPHABET: &[u8] = b"0123456789ABCDEFGHJKLMNPRSTUVWXYZ";
        let mut v = self.ident(idx, purpose);
        let mut out = String::with_capacity(prefix.len() + digits);
        out.push_str(prefix);
        for i in 0..digits {
            if i % 12 == 11 {
                v = mix(v);
            }
            out.push(ALPHABET[(v % ALPHABET.len() as u64) as usize] as char);
            v /= ALPHABET.len() as u64;
        }
        out
    }
}

fn residual_pct(slot: &Slot) -> Option<f64> {
    slot.faults.as_ref().and_then(|f| {
        f.faults().iter().find_map(|f| match f {
            Fault::PowerDropHashStays { residual_pct } => Some(*residual_pct),
            _ => None,
        })
    })
}

/// Maps a hash to [-1, 1).
fn signed(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
}
