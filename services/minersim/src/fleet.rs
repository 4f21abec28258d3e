//! The fleet description: sites, groups of identical models, and how units differ.
//!
//! A [`FleetSpec`] is plain data (serde, loadable from TOML) that expands deterministically
//! into one nameplate per miner: the same spec and seed always give the same fleet, so tests
//! and benchmarks can rely on exact numbers.
//!
//! ```toml
//! seed = 7
//! base_address = "127.20.0.1"   # optional; chosen at random when absent
//!
//! [[sites]]
//! name = "texas-a"
//! ambient_c = 32.0              # optional, default 25
//!
//! [[sites.groups]]
//! model = "m60s"
//! count = 120
//! nominal_power_w = 3400.0      # optional, model default
//! efficiency_j_per_th = 18.5    # optional, model default
//! spread_pct = 2.0              # optional, default 2
//! ```

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::model::Model;

/// Most miners one simulator serves.
pub const MAX_MINERS: usize = 1_000_000;

/// A whole simulated fleet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSpec {
    /// Seed for the per-unit spread and every other random choice.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// First miner address; consecutive miners take the following addresses (skipping `.0`
    /// and `.255`). Chosen at random in 127.100–250.x.1 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_address: Option<Ipv4Addr>,
    /// The sites, in address order.
    pub sites: Vec<SiteSpec>,
}

fn default_seed() -> u64 {
    0x00eb_b5eed
}

/// One site.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSpec {
    /// Site name, unique within the fleet.
    pub name: String,
    /// Air temperature at the intakes.
    #[serde(default = "default_ambient")]
    pub ambient_c: f64,
    /// Groups of identical models.
    pub groups: Vec<GroupSpec>,
}

fn default_ambient() -> f64 {
    25.0
}

/// A group of identical units at one site.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    /// The model.
    pub model: Model,
    /// How many units.
    pub count: u32,
    /// Nameplate power; the model's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nominal_power_w: Option<f64>,
    /// Nameplate efficiency; the model's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub efficiency_j_per_th: Option<f64>,
    /// How much units differ from the nameplate (uniform ± this percent, power and efficiency
    /// drawn independently).
    #[serde(default = "default_spread")]
    pub spread_pct: f64,
}

fn default_spread() -> f64 {
    2.0
}

impl GroupSpec {
    /// A group of `count` units with the model's defaults.
    pub fn new(model: Model, count: u32) -> GroupSpec {
        GroupSpec {
            model,
            count,
            nominal_power_w: None,
            efficiency_j_per_th: None,
            spread_pct: default_spread(),
        }
    }
}

impl SiteSpec {
    /// A site with the given groups at 25 °C.
    pub fn new(name: impl Into<String>, groups: Vec<GroupSpec>) -> SiteSpec {
        SiteSpec {
            name: name.into(),
            ambient_c: default_ambient(),
            groups,
        }
    }
}

impl FleetSpec {
    /// A fleet of the given sites with the default seed.
    pub fn new(sites: Vec<SiteSpec>) -> FleetSpec {
        FleetSpec {
            seed: default_seed(),
            base_address: None,
            sites,
        }
    }

    /// One site with `count` units of one model.
    pub fn single(site: impl Into<String>, model: Model, count: u32) -> FleetSpec {
        FleetSpec::new(vec![SiteSpec::new(
            site,
            vec![GroupSpec::new(model, count)],
        )])
    }

    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> FleetSpec {
        self.seed = seed;
        self
    }

    /// Sets the first address.
    pub fn with_base_address(mut self, base: Ipv4Addr) -> FleetSpec {
        self.base_address = Some(base);
        self
    }

    /// Parses a TOML fleet description.
    pub fn from_toml_str(text: &str) -> anyhow::Result<FleetSpec> {
        let spec: FleetSpec = toml::from_str(text).context("parsing fleet description")?;
        spec.validate()?;
        Ok(spec)
    }

    /// Reads a TOML fleet description from a file.
    pub fn from_path(path: &Path) -> anyhow::Result<FleetSpec> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading fleet file {}", path.display()))?;
        FleetSpec::from_toml_str(&text).with_context(|| format!("in {}", path.display()))
    }

    /// Total number of miners.
    pub fn miner_count(&self) -> usize {
        self.sites
            .iter()
            .flat_map(|s| &s.groups)
            .map(|g| g.count as usize)
            .sum()
    }

    /// Checks the whole description, reporting every problem at once.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut problems = Vec::new();
        if self.sites.is_empty() {
            problems.push("a fleet needs at least one site".to_owned());
        }
        if self.sites.len() > usize::from(u16::MAX) {
            problems.push(format!("too many sites ({})", self.sites.len()));
        }
        let mut names = HashSet::new();
        for site in &self.sites {
            if site.name.trim().is_empty() {
                problems.push("site names must not be empty".to_owned());
            } else if !names.insert(site.name.as_str()) {
                problems.push(format!("site {:?} appears twice", site.name));
            }
            if !site.ambient_c.is_finite() || !(-40.0..=60.0).contains(&site.ambient_c) {
                problems.push(format!(
                    "site {:?}: ambient_c must be between -40 and 60",
                    site.name
                ));
            }
            if site.groups.is_empty() {
                problems.push(format!("site {:?} has no groups", site.name));
            }
            for (i, g) in site.groups.iter().enumerate() {
                let at = format!("site {:?} group {i} ({})", site.name, g.model);
                if g.count == 0 {
                    problems.push(format!("{at}: count must be at least 1"));
                }
                if let Some(w) = g.nominal_power_w
                    && (!w.is_finite() || !(100.0..=20_000.0).contains(&w))
                {
                    problems.push(format!(
                        "{at}: nominal_power_w must be between 100 and 20000"
                    ));
                }
                if let Some(e) = g.efficiency_j_per_th
                    && (!e.is_finite() || !(5.0..=200.0).contains(&e))
                {
                    problems.push(format!(
                        "{at}: efficiency_j_per_th must be between 5 and 200"
                    ));
                }
                if !g.spread_pct.is_finite() || !(0.0..=30.0).contains(&g.spread_pct) {
                    problems.push(format!("{at}: spread_pct must be between 0 and 30"));
                }
            }
        }
        let total = self.miner_count();
        if total > MAX_MINERS {
            problems.push(format!(
                "{total} miners is more than the limit of {MAX_MINERS}"
            ));
        }
        if let Some(base) = self.base_address
            && base.octets()[0] != 127
        {
            problems.push(format!("base_address {base} is not in 127.0.0.0/8"));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("invalid fleet description: {}", problems.join("; "))
        }
    }

    /// One nameplate per miner, in address order.
    pub(crate) fn expand(&self) -> Vec<Nameplate> {
        let mut out = Vec::with_capacity(self.miner_count());
        let mut serial = 0u64;
        for (site_idx, site) in self.sites.iter().enumerate() {
            for group in &site.groups {
                let spec = group.model.spec();
                let power = group.nominal_power_w.unwrap_or(spec.default_power_w);
                let eff = group
                    .efficiency_j_per_th
                    .unwrap_or(spec.default_efficiency_j_per_th);
                for _ in 0..group.count {
                    let mut rng = SplitMix64::new(self.seed ^ serial.wrapping_mul(0x9E37_79B9));
                    serial += 1;
                    let spread = group.spread_pct / 100.0;
                    let unit_power = power * (1.0 + spread * rng.next_signed());
                    let unit_eff = eff * (1.0 + spread * rng.next_signed());
                    // Up between one hour and thirty days when the simulation starts.
                    let uptime_s = 3600 + (rng.next_u64() % (29 * 86_400)) as u32;
                    out.push(Nameplate {
                        model: group.model,
                        site: u16::try_from(site_idx).unwrap_or(u16::MAX),
                        nominal_w: unit_power as f32,
                        nominal_ths: (unit_power / unit_eff) as f32,
                        uptime_s,
                    });
                }
            }
        }
        out
    }
}

/// What one unit is, fixed for the life of the simulation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Nameplate {
    pub model: Model,
    pub site: u16,
    pub nominal_w: f32,
    pub nominal_ths: f32,
    /// Seconds the unit had been up when the simulation started.
    pub uptime_s: u32,
}

/// The addresses for `count` miners starting at `base`: consecutive, skipping host parts
/// `.0` and `.255`, all inside 127.0.0.0/8.
pub(crate) fn addresses_from(base: Ipv4Addr, count: usize) -> anyhow::Result<Vec<Ipv4Addr>> {
    if base.octets()[0] != 127 {
        anyhow::bail!("base address {base} is not in 127.0.0.0/8");
    }
    let mut out = Vec::with_capacity(count);
    let mut a = u32::from(base);
    while out.len() < count {
        let last = (a & 0xff) as u8;
        if last == 0 || last == 255 {
            a += 1;
            continue;
        }
        let ip = Ipv4Addr::from(a);
        if ip.octets()[0] != 127 {
            anyhow::bail!("{count} miners starting at {base} run past 127.255.255.254");
        }
        out.push(ip);
        a += 1;
    }
    Ok(out)
}

/// A random base address in 127.(100..=250).x.1, so that simulators started side by side
/// (parallel tests, a running dev stack) rarely collide.
pub(crate) fn random_base() -> Ipv4Addr {
    use rand::Rng;
    let mut rng = rand::rng();
    Ipv4Addr::new(127, rng.random_range(100..=250), rng.random(), 1)
}

/// A small, stable pseudo-random generator: the same seed gives the same fleet on every
/// platform and every version of the `rand` crate.
#[derive(Clone, Debug)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in [0, 1).
    pub fn next_unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [-1, 1).
    pub fn next_signed(&mut self) -> f64 {
        self.next_unit() * 2.0 - 1.0
    }
}

/// The SplitMix64 finaliser: a good 64-bit hash of a 64-bit value.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_toml() {
        let spec = FleetSpec::from_toml_str(
            r#"
            seed = 7
            base_address = "127.20.0.1"

            [[sites]]
            name = "texas-a"
            ambient_c = 32.0

            [[sites.groups]]
            model = "m60s"
            count = 120
            nominal_power_w = 3400.0
            efficiency_j_per_th = 18.5
            spread_pct = 2.0

            [[sites.groups]]
            model = "s19_pro"
            count = 3

            [[sites]]
            name = "quebec"
            [[sites.groups]]
            model = "s19k_pro_luxos"
            count = 2
            "#,
        )
        .unwrap();
        assert_eq!(spec.miner_count(), 125);
        assert_eq!(spec.sites[1].groups[0].model, Model::S19kProLuxos);
        assert_eq!(spec.base_address, Some(Ipv4Addr::new(127, 20, 0, 1)));
    }

    #[test]
    fn the_example_fleet_file_is_valid() {
        let spec = FleetSpec::from_toml_str(include_str!("../fleet.example.toml")).unwrap();
        assert_eq!(spec.miner_count(), 100);
        assert_eq!(spec.sites.len(), 2);
    }

    #[test]
    fn rejects_every_problem_at_once() {
        let err = FleetSpec::from_toml_str(
            r#"
            [[sites]]
            name = "a"
            [[sites.groups]]
            model = "s21"
            count = 0
            spread_pct = 90.0
            [[sites]]
            name = "a"
            groups = []
            "#,
        )
        .unwrap_err();
        let msg = format!("{err:#}");
        for needle in [
            "count must be at least 1",
            "spread_pct",
            "appears twice",
            "has no groups",
        ] {
            assert!(msg.contains(needle), "{needle} missing from {msg}");
        }
        assert!(FleetSpec::from_toml_str("[[sites]]\nname='a'\nbogus=1\ngroups=[]").is_err());
    }

    #[test]
    fn expansion_is_deterministic_and_within_spread() {
        let spec = FleetSpec::single("a", Model::S21, 500).with_seed(42);
        let a = spec.expand();
        let b = spec.expand();
        assert_eq!(a.len(), 500);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.nominal_w, y.nominal_w);
            assert_eq!(x.nominal_ths, y.nominal_ths);
            assert!((3430.0..=3570.0).contains(&x.nominal_w), "{}", x.nominal_w);
        }
        let distinct: HashSet<u32> = a.iter().map(|n| n.nominal_w.to_bits()).collect();
        assert!(distinct.len() > 400);
    }

    #[test]
    fn addresses_skip_network_and_broadcast_parts() {
        let ips = addresses_from(Ipv4Addr::new(127, 1, 0, 253), 4).unwrap();
        assert_eq!(
            ips,
            vec![
                Ipv4Addr::new(127, 1, 0, 253),
                Ipv4Addr::new(127, 1, 0, 254),
                Ipv4Addr::new(127, 1, 1, 1),
                Ipv4Addr::new(127, 1, 1, 2),
            ]
        );
        assert!(addresses_from(Ipv4Addr::new(127, 255, 255, 250), 10).is_err());
        assert!(addresses_from(Ipv4Addr::new(10, 0, 0, 1), 1).is_err());
    }
}
