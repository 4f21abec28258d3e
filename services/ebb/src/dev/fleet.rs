//! The simulated fleet of `ebb dev`: one simulator per site, each on a fixed loopback block, so a
//! restart serves the same miners on the same addresses and reuses the same device rows.
//!
//! Site `i` (from 0) starts at `127.77.(1 + i·blocks).1`, where `blocks` is how many /24s one
//! site needs (254 usable addresses each): with the default 50 miners per site, site-a is
//! `127.77.1.1-50` and site-b `127.77.2.1-50`.

use ebb_domain::{Capabilities, SiteCode};
use ebb_minersim::{
    Firmware, FleetSpec, GroupSpec, MinerInfo, Model, Physics, SimOptions, Simulator, SiteSpec,
};
use ebb_store::fleet::NewDevice;
use std::net::Ipv4Addr;
use std::time::Duration;

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
/// curtailments confirm within seconds).
pub async fn start_site(
    code: &SiteCode,
    index: u32,
    miners: u32,
    ramp: Duration,
) -> anyhow::Result<Simulator> {
    let base = site_base(index, miners)
        .ok_or_else(|| anyhow::anyhow!("site {code} does not fit in 127.77.0.0/16"))?;
    let options = SimOptions::default()
        .with_base_address(base)
        .with_physics(Physics::default().with_ramp(ramp))
        // Nobody needs the simulator's control API in dev; it would only take a port.
        .with_control_addr(None);
    ebb_minersim::start(site_fleet(code, index, miners), options).await
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
        firmware: Some(m.firmware.to_string()),
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
}
