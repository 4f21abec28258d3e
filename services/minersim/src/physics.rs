//! Per-miner physics, computed lazily from a few numbers instead of ticking.
//!
//! A miner's electrical state is one *segment*: at simulated time `t0` it drew `p0` watts and
//! since then it has been moving toward its target power at a fixed slew rate (one full span,
//! nominal ↔ idle, takes the configured ramp time). Power, hashrate and the work done since
//! boot are closed-form functions of (segment, target, now), so a fleet of 100,000 miners costs
//! no timers and no tasks; a command just closes the current segment and opens a new one.
//!
//! Hashrate follows power: it is proportional to the power drawn above idle, so a miner
//! asleep draws idle power (fans and control board, a few percent of nominal) and hashes
//! nothing, and a power-limited miner hashes in proportion to its limit.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::SimTime;

/// Tunable physics shared by the whole simulated fleet.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Physics {
    /// Seconds to go from nominal power down to idle (partial spans take proportionally less).
    pub ramp_down_s: f64,
    /// Seconds to go from idle up to nominal power.
    pub ramp_up_s: f64,
    /// Power drawn while asleep, in percent of nominal (fans and control board).
    pub idle_pct: f64,
    /// Amplitude of the measurement noise on reported power and hashrate, in percent.
    pub noise_pct: f64,
    /// Seconds a reboot keeps the miner off the network before it ramps up again.
    pub reboot_s: f64,
}

impl Default for Physics {
    fn default() -> Self {
        Physics {
            ramp_down_s: 20.0,
            ramp_up_s: 20.0,
            idle_pct: 3.0,
            noise_pct: 0.5,
            reboot_s: 45.0,
        }
    }
}

impl Physics {
    /// Physics without ramps: every change of power is immediate. For benchmarks and fast tests.
    pub fn instant() -> Physics {
        Physics {
            ramp_down_s: 0.0,
            ramp_up_s: 0.0,
            ..Physics::default()
        }
    }

    /// Sets both ramps to the same duration.
    pub fn with_ramp(mut self, ramp: Duration) -> Physics {
        self.ramp_down_s = ramp.as_secs_f64();
        self.ramp_up_s = ramp.as_secs_f64();
        self
    }

    /// Checks every field, reporting all problems at once.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        let mut check = |name: &str, v: f64, max: f64| {
            if !v.is_finite() || v < 0.0 || v > max {
                problems.push(format!("{name} must be between 0 and {max}, got {v}"));
            }
        };
        check("ramp_down_s", self.ramp_down_s, 3600.0);
        check("ramp_up_s", self.ramp_up_s, 3600.0);
        check("idle_pct", self.idle_pct, 50.0);
        check("noise_pct", self.noise_pct, 20.0);
        check("reboot_s", self.reboot_s, 3600.0);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

/// A partial update of [`Physics`], as accepted by the control API.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhysicsPatch {
    /// Sets both ramps to zero when true.
    pub instant: Option<bool>,
    /// Sets both ramps at once.
    pub ramp_s: Option<f64>,
    /// See [`Physics::ramp_down_s`].
    pub ramp_down_s: Option<f64>,
    /// See [`Physics::ramp_up_s`].
    pub ramp_up_s: Option<f64>,
    /// See [`Physics::idle_pct`].
    pub idle_pct: Option<f64>,
    /// See [`Physics::noise_pct`].
    pub noise_pct: Option<f64>,
    /// See [`Physics::reboot_s`].
    pub reboot_s: Option<f64>,
}

impl PhysicsPatch {
    /// The physics after this patch.
    pub fn apply(&self, mut p: Physics) -> Physics {
        if self.instant == Some(true) {
            p.ramp_down_s = 0.0;
            p.ramp_up_s = 0.0;
        }
        if let Some(v) = self.ramp_s {
            p.ramp_down_s = v;
            p.ramp_up_s = v;
        }
        if let Some(v) = self.ramp_down_s {
            p.ramp_down_s = v;
        }
        if let Some(v) = self.ramp_up_s {
            p.ramp_up_s = v;
        }
        if let Some(v) = self.idle_pct {
            p.idle_pct = v;
        }
        if let Some(v) = self.noise_pct {
            p.noise_pct = v;
        }
        if let Some(v) = self.reboot_s {
            p.reboot_s = v;
        }
        p
    }
}

/// The firmware work mode, where the firmware has one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PerfMode {
    /// Low-power mode: about 80 % of nominal power.
    Low,
    /// The nameplate operating point.
    #[default]
    Normal,
    /// High-performance mode: about 110 % of nominal power.
    High,
}

impl PerfMode {
    fn power_factor(self) -> f64 {
        match self {
            PerfMode::Low => 0.8,
            PerfMode::Normal => 1.0,
            PerfMode::High => 1.1,
        }
    }
}

/// What a miner is doing, as the simulator knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Mining at its work-mode power.
    Hashing,
    /// Told to sleep: heading to or sitting at idle power.
    Sleeping,
    /// Mining under a power limit below its work-mode power.
    PowerLimited,
    /// Rebooting: off the network, drawing idle power.
    Rebooting,
}

/// The constants of one miner's motion under the current [`Physics`].
#[derive(Clone, Copy, Debug)]
pub struct Kinematics {
    /// Power at the normal work mode.
    pub nominal_w: f64,
    /// Hashrate at the normal work mode.
    pub nominal_ths: f64,
    /// Power while asleep.
    pub idle_w: f64,
    /// Slew rate when power falls, in W/ms (infinite for instant physics).
    pub down_w_per_ms: f64,
    /// Slew rate when power rises, in W/ms (infinite for instant physics).
    pub up_w_per_ms: f64,
}

impl Kinematics {
    /// The kinematics of a miner with this nameplate under these physics.
    pub fn new(physics: &Physics, nominal_w: f64, nominal_ths: f64) -> Kinematics {
        let idle_w = nominal_w * physics.idle_pct / 100.0;
        let span = (nominal_w - idle_w).max(1.0);
        let rate = |secs: f64| {
            if secs <= 0.0 {
                f64::INFINITY
            } else {
                span / (secs * 1000.0)
            }
        };
        Kinematics {
            nominal_w,
            nominal_ths,
            idle_w,
            down_w_per_ms: rate(physics.ramp_down_s),
            up_w_per_ms: rate(physics.ramp_up_s),
        }
    }

    /// Hashrate at a given power draw: proportional to the power above idle.
    pub fn hash_for_power(&self, power_w: f64) -> f64 {
        let span = self.nominal_w - self.idle_w;
        if span <= 0.0 {
            return 0.0;
        }
        (self.nominal_ths * (power_w - self.idle_w) / span).max(0.0)
    }
}

/// Sentinel for "no automatic wake scheduled".
const NEVER: u64 = u64::MAX;

/// The mutable state of one miner. Kept small: a fleet holds 100,000 of these.
#[derive(Clone, Debug)]
pub struct MinerState {
    /// Told to sleep (Antminer sleep mode, Whatsminer service stopped, LuxOS curtailed).
    pub sleeping: bool,
    /// Work mode.
    pub perf: PerfMode,
    /// The fault LED is blinking.
    pub led: bool,
    /// Power limit in watts as last set; 0 when none was ever set.
    pub limit_w: f32,
    /// Start of the current segment (ms of simulated time).
    seg_t0: u64,
    /// Power at the start of the current segment.
    seg_p0: f32,
    /// Work done since boot up to `seg_t0`, in TH·s.
    work_ths_s: f64,
    /// Simulated time (ms) the firmware booted; negative for a unit that was up before the
    /// simulator started.
    pub boot_ms: i64,
    /// The miner is rebooting, off the network, until this time (ms); 0 when not.
    pub down_until: u64,
    /// A miner with the "wakes up by itself" fault wakes at this time (ms).
    auto_wake_at: u64,
    /// LuxOS session id (0 when nobody is logged on).
    pub lux_session: u32,
}

impl MinerState {
    /// A miner that has been hashing steadily for `uptime_s` seconds when the simulation starts.
    pub fn hashing_since(k: &Kinematics, uptime_s: u32) -> MinerState {
        MinerState {
            sleeping: false,
            perf: PerfMode::Normal,
            led: false,
            limit_w: 0.0,
            seg_t0: 0,
            seg_p0: k.nominal_w as f32,
            work_ths_s: k.nominal_ths * f64::from(uptime_s),
            boot_ms: -i64::from(uptime_s) * 1000,
            down_until: 0,
            auto_wake_at: NEVER,
            lux_session: 0,
        }
    }

    /// The power limit, if one is set.
    pub fn power_limit(&self) -> Option<f64> {
        (self.limit_w > 0.0).then_some(f64::from(self.limit_w))
    }

    /// The power the miner is heading to.
    pub fn target_w(&self, k: &Kinematics) -> f64 {
        if self.sleeping {
            return k.idle_w;
        }
        let mut target = k.nominal_w * self.perf.power_factor();
        if let Some(limit) = self.power_limit() {
            target = target.min(limit.clamp(k.idle_w, k.nominal_w));
        }
        target
    }

    /// How long (ms) the current ramp takes from `seg_p0` to the target.
    fn ramp_ms(&self, k: &Kinematics) -> f64 {
        let p0 = f64::from(self.seg_p0);
        let target = self.target_w(k);
        let rate = if target < p0 {
            k.down_w_per_ms
        } else {
            k.up_w_per_ms
        };
        if rate.is_infinite() {
            0.0
        } else {
            (target - p0).abs() / rate
        }
    }

    /// Power drawn at `t`.
    pub fn power_at(&self, k: &Kinematics, t: SimTime) -> f64 {
        let p0 = f64::from(self.seg_p0);
        if t.0 < self.seg_t0 {
            // Before the segment starts (a reboot's hold): power stays where it was put.
            return p0;
        }
        let target = self.target_w(k);
        let ramp = self.ramp_ms(k);
        let dt = (t.0 - self.seg_t0) as f64;
        if dt >= ramp {
            target
        } else {
            p0 + (target - p0) * dt / ramp
        }
    }

    /// Hashrate at `t`.
    pub fn hash_at(&self, k: &Kinematics, t: SimTime) -> f64 {
        k.hash_for_power(self.power_at(k, t))
    }

    /// Work done since boot, in TH·s, at `t`.
    pub fn work_at(&self, k: &Kinematics, t: SimTime) -> f64 {
        if t.0 <= self.seg_t0 {
            return self.work_ths_s;
        }
        let p0 = f64::from(self.seg_p0);
        let target = self.target_w(k);
        let dt = (t.0 - self.seg_t0) as f64;
        let ramp = self.ramp_ms(k).min(dt);
        let p_ramp_end = if ramp >= self.ramp_ms(k) {
            target
        } else {
            p0 + (target - p0) * ramp / self.ramp_ms(k)
        };
        let ramp_work = ramp / 1000.0 * (k.hash_for_power(p0) + k.hash_for_power(p_ramp_end)) / 2.0;
        let steady_work = (dt - ramp) / 1000.0 * k.hash_for_power(target);
        self.work_ths_s + ramp_work + steady_work
    }

    /// Whether power is still moving at `t`.
    pub fn ramping(&self, k: &Kinematics, t: SimTime) -> bool {
        let target = self.target_w(k);
        (self.power_at(k, t) - target).abs() > 0.01
    }

    /// What the miner is doing at `t`.
    pub fn mode(&self, k: &Kinematics, t: SimTime) -> Mode {
        if self.is_down(t) {
            Mode::Rebooting
        } else if self.sleeping {
            Mode::Sleeping
        } else if self.target_w(k) < k.nominal_w * self.perf.power_factor() - 0.01 {
            Mode::PowerLimited
        } else {
            Mode::Hashing
        }
    }

    /// Whether the miner is rebooting (off the network) at `t`.
    pub fn is_down(&self, t: SimTime) -> bool {
        t.0 < self.down_until
    }

    /// Seconds since the firmware booted, at `t`.
    pub fn uptime_s(&self, t: SimTime) -> u64 {
        let up = i64::try_from(t.0).unwrap_or(i64::MAX) - self.boot_ms;
        u64::try_from(up.max(0) / 1000).unwrap_or(0)
    }

    /// The scheduled automatic wake, if any.
    pub fn auto_wake_at(&self) -> Option<SimTime> {
        (self.auto_wake_at != NEVER).then_some(SimTime(self.auto_wake_at))
    }

    /// Drops a scheduled automatic wake (the fault that scheduled it was cleared).
    pub fn cancel_auto_wake(&mut self) {
        self.auto_wake_at = NEVER;
    }

    /// Applies whatever was due by `t` (a scheduled automatic wake).
    pub fn settle(&mut self, k: &Kinematics, t: SimTime) {
        if self.auto_wake_at != NEVER && self.auto_wake_at <= t.0 {
            let at = SimTime(self.auto_wake_at);
            self.auto_wake_at = NEVER;
            if self.sleeping {
                self.rebase(k, at);
                self.sleeping = false;
            }
        }
    }

    /// Closes the current segment at `t`, so the control fields can change from there on.
    fn rebase(&mut self, k: &Kinematics, t: SimTime) {
        if t.0 <= self.seg_t0 {
            // Still holding (a reboot in progress): the hold ends where it was going to.
            return;
        }
        self.work_ths_s = self.work_at(k, t);
        self.seg_p0 = self.power_at(k, t) as f32;
        self.seg_t0 = t.0;
    }

    /// Puts the miner to sleep or wakes it at `t`; a sleep may schedule an automatic wake.
    pub fn set_sleeping(
        &mut self,
        k: &Kinematics,
        t: SimTime,
        sleeping: bool,
        wake_after: Option<Duration>,
    ) {
        self.settle(k, t);
        self.rebase(k, t);
        self.sleeping = sleeping;
        self.auto_wake_at = match (sleeping, wake_after) {
            (true, Some(after)) => t.plus(after).0,
            _ => NEVER,
        };
    }

    /// Sets (or with `None`, clears) the power limit at `t`.
    pub fn set_power_limit(&mut self, k: &Kinematics, t: SimTime, limit_w: Option<f64>) {
        self.settle(k, t);
        self.rebase(k, t);
        self.limit_w = limit_w.map_or(0.0, |w| w as f32);
    }

    /// Changes the work mode at `t`.
    pub fn set_perf(&mut self, k: &Kinematics, t: SimTime, perf: PerfMode) {
        self.settle(k, t);
        self.rebase(k, t);
        self.perf = perf;
    }

    /// Reboots at `t`: power falls to idle at once, the miner is off the network for
    /// `duration`, then ramps back up to whatever it was told to do.
    pub fn reboot(&mut self, k: &Kinematics, t: SimTime, duration: Duration) {
        self.settle(k, t);
        self.rebase(k, t);
        let back = t.plus(duration);
        self.seg_t0 = back.0;
        self.seg_p0 = k.idle_w as f32;
        self.boot_ms = i64::try_from(back.0).unwrap_or(i64::MAX);
        self.work_ths_s = 0.0;
        self.down_until = back.0;
        self.lux_session = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kin(physics: &Physics) -> Kinematics {
        Kinematics::new(physics, 3400.0, 180.0)
    }

    fn at(secs: f64) -> SimTime {
        SimTime((secs * 1000.0) as u64)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-3 * b.abs().max(1.0)
    }

    #[track_caller]
    fn check(state: &MinerState, k: &Kinematics, t: f64, power: f64, hash: f64) {
        let p = state.power_at(k, at(t));
        let h = state.hash_at(k, at(t));
        assert!(close(p, power), "power at {t}s: {p} != {power}");
        assert!(close(h, hash), "hash at {t}s: {h} != {hash}");
    }

    #[test]
    fn sleep_ramps_down_to_a_nonzero_idle_and_back_up() {
        let physics = Physics::default();
        let k = kin(&physics);
        let idle = 3400.0 * 0.03;
        let mut s = MinerState::hashing_since(&k, 3600);
        check(&s, &k, 0.0, 3400.0, 180.0);

        s.set_sleeping(&k, at(10.0), true, None);
        check(&s, &k, 10.0, 3400.0, 180.0);
        check(&s, &k, 20.0, (3400.0 + idle) / 2.0, 90.0);
        check(&s, &k, 30.0, idle, 0.0);
        check(&s, &k, 300.0, idle, 0.0);
        assert!(idle > 0.0);
        assert_eq!(s.mode(&k, at(30.0)), Mode::Sleeping);
        assert!(!s.ramping(&k, at(30.0)));

        s.set_sleeping(&k, at(100.0), false, None);
        check(&s, &k, 105.0, idle + (3400.0 - idle) / 4.0, 45.0);
        check(&s, &k, 120.0, 3400.0, 180.0);
        assert_eq!(s.mode(&k, at(120.0)), Mode::Hashing);
    }

    #[test]
    fn a_command_mid_ramp_starts_from_where_power_is() {
        let k = kin(&Physics::default());
        let idle = 3400.0 * 0.03;
        let mut s = MinerState::hashing_since(&k, 0);
        s.set_sleeping(&k, at(0.0), true, None);
        // Halfway down after 10 s, then woken: 10 s back up.
        s.set_sleeping(&k, at(10.0), false, None);
        check(&s, &k, 10.0, (3400.0 + idle) / 2.0, 90.0);
        check(
            &s,
            &k,
            15.0,
            (3400.0 + idle) / 2.0 + (3400.0 - idle) / 4.0,
            135.0,
        );
        check(&s, &k, 20.0, 3400.0, 180.0);
    }

    #[test]
    fn power_limit_settles_at_the_limit_with_proportional_hashrate() {
        let k = kin(&Physics::default());
        let idle = 3400.0 * 0.03;
        let mut s = MinerState::hashing_since(&k, 0);
        s.set_power_limit(&k, at(0.0), Some(2000.0));
        let hash = 180.0 * (2000.0 - idle) / (3400.0 - idle);
        check(&s, &k, 60.0, 2000.0, hash);
        assert_eq!(s.mode(&k, at(60.0)), Mode::PowerLimited);

        // Never above nominal, never below idle.
        s.set_power_limit(&k, at(60.0), Some(9000.0));
        check(&s, &k, 120.0, 3400.0, 180.0);
        assert_eq!(s.mode(&k, at(120.0)), Mode::Hashing);
        s.set_power_limit(&k, at(120.0), Some(10.0));
        check(&s, &k, 200.0, idle, 0.0);

        // Asleep the limit is moot; awake again it applies.
        s.set_power_limit(&k, at(200.0), Some(2500.0));
        s.set_sleeping(&k, at(200.0), true, None);
        check(&s, &k, 300.0, idle, 0.0);
        s.set_sleeping(&k, at(300.0), false, None);
        check(
            &s,
            &k,
            400.0,
            2500.0,
            180.0 * (2500.0 - idle) / (3400.0 - idle),
        );
    }

    #[test]
    fn instant_physics_jumps() {
        let k = kin(&Physics::instant());
        let mut s = MinerState::hashing_since(&k, 0);
        s.set_sleeping(&k, at(5.0), true, None);
        check(&s, &k, 5.001, 102.0, 0.0);
        s.set_sleeping(&k, at(6.0), false, None);
        check(&s, &k, 6.001, 3400.0, 180.0);
    }

    #[test]
    fn a_scheduled_wake_happens_without_a_command() {
        let k = kin(&Physics::instant());
        let mut s = MinerState::hashing_since(&k, 0);
        s.set_sleeping(&k, at(0.0), true, Some(Duration::from_secs(30)));
        s.settle(&k, at(29.0));
        assert!(s.sleeping);
        s.settle(&k, at(31.0));
        assert!(!s.sleeping);
        check(&s, &k, 31.0, 3400.0, 180.0);
    }

    #[test]
    fn reboot_holds_idle_then_ramps_up() {
        let k = kin(&Physics::default());
        let idle = 3400.0 * 0.03;
        let mut s = MinerState::hashing_since(&k, 100);
        s.reboot(&k, at(10.0), Duration::from_secs(45));
        assert!(s.is_down(at(30.0)));
        assert_eq!(s.mode(&k, at(30.0)), Mode::Rebooting);
        check(&s, &k, 30.0, idle, 0.0);
        assert!(!s.is_down(at(55.0)));
        check(&s, &k, 65.0, idle + (3400.0 - idle) / 2.0, 90.0);
        check(&s, &k, 80.0, 3400.0, 180.0);
        assert_eq!(s.uptime_s(at(80.0)), 25);
    }

    #[test]
    fn work_integral_matches_a_numeric_integral() {
        let k = kin(&Physics::default());
        let mut s = MinerState::hashing_since(&k, 0);
        let mut numeric = 0.0;
        let step = 0.01;
        for i in 0..8000 {
            let t = f64::from(i) * step;
            match i {
                500 => s.set_sleeping(&k, at(5.0), true, None),
                1200 => s.set_sleeping(&k, at(12.0), false, None),
                4000 => s.set_power_limit(&k, at(40.0), Some(2200.0)),
                _ => {}
            }
            numeric += s.hash_at(&k, at(t + step / 2.0)) * step;
        }
        let analytic = s.work_at(&k, at(80.0));
        assert!((numeric - analytic).abs() < 1.0, "{numeric} vs {analytic}");
    }
}
