//! The hot path spoken by the agent itself (ADR 0008): poll, curtail and resume for the
//! firmwares most fleets run (Whatsminer v3, stock Antminer, LuxOS), for miners whose make and
//! firmware were stored when they were registered. asic-rs keeps detection (scans, unknown or
//! changed miners) and the long tail: every other firmware, power limits, and any reply this
//! module does not recognise.
//!
//! Why: asic-rs 0.8.6 has no public constructor from a known make, model and firmware (every
//! handle comes from `MinerFactory::get_miner`, which probes the address again), builds an HTTP
//! client with its own certificate store for every discovery probe and every Antminer handle,
//! and reads telemetry with one connection per command. Here a poll is one connection per
//! miner (cgminer multi-commands on LuxOS, one `stats` on Antminer, one frame on Whatsminer v3),
//! replies are parsed into the few typed fields needed, and nothing is identified.
//!
//! The protocols follow the firmwares' own documentation and observed replies
//! (`/work/shared/notes/asic-rs.md` summarises them); no asic-rs source is copied.

mod antminer;
mod cgminer;
mod io;
mod whatsminer;

use crate::driver::{MinerError, Reading};
use crate::instruments::{self, Op};
use std::net::IpAddr;
use std::time::Duration;
use std::time::Instant;

pub(crate) use antminer::DigestCache;

/// A firmware this module speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Whatsminer stock firmware from 2024-11 on: the v3 API on 4433.
    WhatsminerV3,
    /// Stock Antminer: cgminer RPC on 4028 for reads; CGI with digest auth for sleep/wake,
    /// spoken natively only on firmware compiled from 2023-07 on (asic-rs's v2023_07).
    AntminerStock { controls: bool },
    /// LuxOS: everything over cgminer RPC on 4028.
    LuxOs,
}

impl Protocol {
    /// The protocol for a miner whose registration stored `firmware` (asic-rs's firmware name
    /// and the version the scan read: `WhatsMiner Stock 20250101.22.REL`, `AntMiner Stock Mon
    /// Dec 11 15:26:02 CST 2023`, `LuxOS 2025.4.8.220305`). `None`: asic-rs drives it.
    pub fn of(firmware: Option<&str>) -> Option<Protocol> {
        let firmware = firmware?.trim();
        if let Some(version) = firmware.strip_prefix("LuxOS") {
            return version
                .trim()
                .starts_with(|c: char| c.is_ascii_digit())
                .then_some(Protocol::LuxOs);
        }
        if let Some(version) = firmware.strip_prefix("WhatsMiner Stock") {
            // The v3 API opened with the builds of 2024-11-01; older builds speak v1/v2.
            let date: u64 = version.trim().get(..8)?.parse().ok()?;
            return (date >= 20_241_101).then_some(Protocol::WhatsminerV3);
        }
        if let Some(compiled) = firmware.strip_prefix("AntMiner Stock") {
            return Some(Protocol::AntminerStock {
                controls: antminer::compiled_from_2023_07(compiled.trim()),
            });
        }
        None
    }

    /// Whether the firmware's "mining" flag follows a sleep command (LuxOS reports mining
    /// while curtailed).
    pub fn trusts_mining_flag(self) -> bool {
        !matches!(self, Protocol::LuxOs)
    }

    /// Whether sleep and wake are spoken here (else asic-rs does them).
    pub fn controls(self) -> bool {
        match self {
            Protocol::WhatsminerV3 | Protocol::LuxOs => true,
            Protocol::AntminerStock { controls } => controls,
        }
    }

    /// Whether the firmware takes a power limit (the commands that set one go through asic-rs).
    pub fn limits_power(self) -> bool {
        matches!(self, Protocol::WhatsminerV3)
    }

    pub fn label(self) -> &'static str {
        match self {
            Protocol::WhatsminerV3 => "whatsminer_v3",
            Protocol::AntminerStock { .. } => "antminer_stock",
            Protocol::LuxOs => "luxos",
        }
    }
}

/// What a read asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// Power and hashrate: a telemetry sample (one connection).
    Telemetry,
    /// Power, hashrate, the mining flag and the power limit: the state before a command.
    State,
}

/// The agent's native miner client: what the native protocols share across miners.
#[derive(Debug)]
pub struct Native {
    /// The latest digest challenge of each Antminer, so a CGI call answers it without being
    /// challenged again (bounded).
    digest: DigestCache,
}

impl Native {
    pub fn new(max_cached: usize) -> Self {
        Self {
            digest: DigestCache::new(max_cached),
        }
    }

    /// Reads a miner. An answer without power or hashrate leaves them `None`.
    pub async fn read(
        &self,
        protocol: Protocol,
        ip: IpAddr,
        want: Want,
        deadline: Duration,
    ) -> Result<Reading, MinerError> {
        let read = async {
            match protocol {
                Protocol::LuxOs => cgminer::read_luxos(ip).await,
                Protocol::AntminerStock { .. } => {
                    let mut reading = cgminer::read_antminer(ip).await?;
                    if want == Want::State {
                        let conf = antminer::miner_conf(&self.digest, ip).await?;
                        reading.mining = antminer::mining(&conf);
                    }
                    Ok(reading)
                }
                Protocol::WhatsminerV3 => whatsminer::read(ip, want).await,
            }
        };
        let started = Instant::now();
        let result = io::within(deadline, read).await;
        instruments::miner_call(Op::Read, started.elapsed());
        result
    }

    /// Puts a miner to sleep (`sleep`) or wakes it.
    pub async fn sleep(
        &self,
        protocol: Protocol,
        ip: IpAddr,
        sleep: bool,
        deadline: Duration,
    ) -> Result<(), MinerError> {
        let call = async {
            match protocol {
                Protocol::LuxOs => cgminer::luxos_curtail(ip, sleep).await,
                Protocol::AntminerStock { controls: true } => {
                    antminer::set_sleep(&self.digest, ip, sleep).await
                }
                Protocol::AntminerStock { controls: false } => Err(MinerError::Unsupported),
                Protocol::WhatsminerV3 => whatsminer::set_service(ip, sleep).await,
            }
        };
        let started = Instant::now();
        let result = io::within(deadline, call).await;
        let op = if sleep { Op::Pause } else { Op::Resume };
        instruments::miner_call(op, started.elapsed());
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_from_what_a_scan_stored() {
        let check = |firmware: Option<&str>, want: Option<Protocol>| {
            assert_eq!(Protocol::of(firmware), want, "{firmware:?}");
        };
        check(
            Some("WhatsMiner Stock 20250101.22.REL"),
            Some(Protocol::WhatsminerV3),
        );
        check(
            Some("WhatsMiner Stock 20241101.1"),
            Some(Protocol::WhatsminerV3),
        );
        // v2 firmware, or no version read: asic-rs.
        check(Some("WhatsMiner Stock 20230301.1.REL"), None);
        check(Some("WhatsMiner Stock"), None);
        check(
            Some("AntMiner Stock Mon Dec 11 15:26:02 CST 2023"),
            Some(Protocol::AntminerStock { controls: true }),
        );
        check(
            Some("AntMiner Stock Thu Jul 13 16:55:15 CST 2023"),
            Some(Protocol::AntminerStock { controls: true }),
        );
        check(
            Some("AntMiner Stock Tue Jan 10 10:00:00 CST 2023"),
            Some(Protocol::AntminerStock { controls: false }),
        );
        check(
            Some("AntMiner Stock"),
            Some(Protocol::AntminerStock { controls: false }),
        );
        check(Some("LuxOS 2025.4.8.220305"), Some(Protocol::LuxOs));
        check(Some("LuxOS"), None);
        check(Some("Braiins OS 25.07"), None);
        check(None, None);
    }
}
