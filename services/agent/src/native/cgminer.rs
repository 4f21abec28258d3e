//! cgminer-style RPC on port 4028 (JSON request, JSON reply ended by a NUL, one request per
//! connection), as LuxOS and stock Antminer serve it. A poll is one connection: LuxOS takes
//! `power+stats` as one multi-command, and an Antminer's `stats` carries both power and
//! hashrate.

use super::io;
use crate::driver::{MinerError, Reading};
use serde::Deserialize;
use std::net::IpAddr;

const PORT: u16 = 4028;

/// Sends one request and returns the raw reply.
async fn rpc(ip: IpAddr, command: &str, parameter: Option<&str>) -> Result<Vec<u8>, MinerError> {
    let request = match parameter {
        Some(p) => serde_json::json!({"command": command, "parameter": p}),
        None => serde_json::json!({"command": command}),
    };
    let mut stream = io::connect(ip, PORT).await?;
    io::send(&mut stream, request.to_string().as_bytes()).await?;
    io::read_to_end_or_nul(&mut stream).await
}

/// A number that firmware writes either as a number or as text.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Num {
    Number(f64),
    Text(String),
}

impl Num {
    pub fn value(&self) -> Option<f64> {
        match self {
            Num::Number(n) => Some(*n),
            // "3250 W", "110.5"
            Num::Text(t) => t.split_whitespace().next()?.parse().ok(),
        }
    }
}

/// One entry of a `STATUS` array.
#[derive(Debug, Deserialize)]
struct Status {
    #[serde(rename = "STATUS")]
    status: String,
    #[serde(rename = "Msg", default)]
    msg: String,
}

/// Whether a reply's `STATUS` says success (`S`) or information (`I`).
fn check(status: Option<&[Status]>) -> Result<(), MinerError> {
    match status.and_then(|s| s.first()) {
        Some(s) if s.status == "S" || s.status == "I" => Ok(()),
        Some(s) => Err(MinerError::Refused(s.msg.to_lowercase())),
        None => Err(MinerError::InvalidReply(
            "no STATUS in the reply".to_owned(),
        )),
    }
}

/// The fields of a `stats` entry that carry power and hashrate.
#[derive(Debug, Default, Deserialize)]
struct StatsEntry {
    #[serde(rename = "GHS 5s")]
    ghs_5s: Option<Num>,
    #[serde(rename = "THS 5s")]
    ths_5s: Option<Num>,
    #[serde(rename = "MHS 5s")]
    mhs_5s: Option<Num>,
    chain_power: Option<Num>,
    power: Option<Num>,
    #[serde(rename = "Power")]
    power_cap: Option<Num>,
    watt: Option<Num>,
}

impl StatsEntry {
    fn hashrate_ths(&self) -> Option<f64> {
        let scaled = |n: &Option<Num>, per_th: f64| n.as_ref()?.value().map(|v| v / per_th);
        scaled(&self.ths_5s, 1.0)
            .or_else(|| scaled(&self.ghs_5s, 1e3))
            .or_else(|| scaled(&self.mhs_5s, 1e6))
    }

    fn power_w(&self) -> Option<f64> {
        [&self.chain_power, &self.power, &self.power_cap, &self.watt]
            .into_iter()
            .find_map(|n| n.as_ref()?.value())
    }
}

#[derive(Debug, Deserialize)]
struct StatsReply {
    #[serde(rename = "STATUS")]
    status: Option<Vec<Status>>,
    #[serde(rename = "STATS", default)]
    stats: Vec<StatsEntry>,
}

impl StatsReply {
    fn hashrate_ths(&self) -> Option<f64> {
        self.stats.iter().find_map(StatsEntry::hashrate_ths)
    }
}

/// Stock Antminer: one `stats`, whose second entry holds `chain_power` and `GHS 5s`.
pub async fn read_antminer(ip: IpAddr) -> Result<Reading, MinerError> {
    let reply = rpc(ip, "stats", None).await?;
    let stats: StatsReply = io::parse(&reply)?;
    check(stats.status.as_deref())?;
    Ok(Reading {
        power_w: stats.stats.iter().find_map(StatsEntry::power_w),
        hashrate_ths: stats.hashrate_ths(),
        ..Reading::default()
    })
}

#[derive(Debug, Deserialize)]
struct PowerEntry {
    #[serde(rename = "Watts")]
    watts: Option<Num>,
}

#[derive(Debug, Deserialize)]
struct PowerReply {
    #[serde(rename = "STATUS")]
    status: Option<Vec<Status>>,
    #[serde(rename = "POWER", default)]
    power: Vec<PowerEntry>,
}

/// A `power+stats` multi-reply: each part nested under its command's name.
#[derive(Debug, Deserialize)]
struct LuxMulti {
    #[serde(rename = "STATUS")]
    status: Option<Vec<Status>>,
    #[serde(default)]
    power: Vec<PowerReply>,
    #[serde(default)]
    stats: Vec<StatsReply>,
}

/// LuxOS: `power+stats` in one request.
pub async fn read_luxos(ip: IpAddr) -> Result<Reading, MinerError> {
    let reply = rpc(ip, "power+stats", None).await?;
    let multi: LuxMulti = io::parse(&reply)?;
    let (Some(power), Some(stats)) = (multi.power.first(), multi.stats.first()) else {
        // A refused multi-command answers with a top-level STATUS only.
        check(multi.status.as_deref())?;
        return Err(MinerError::InvalidReply(
            "no power or stats in the reply".to_owned(),
        ));
    };
    check(power.status.as_deref())?;
    check(stats.status.as_deref())?;
    Ok(Reading {
        power_w: power.power.first().and_then(|p| p.watts.as_ref()?.value()),
        hashrate_ths: stats.hashrate_ths(),
        ..Reading::default()
    })
}

#[derive(Debug, Deserialize)]
struct SessionEntry {
    #[serde(rename = "SessionID", default)]
    session_id: String,
}

#[derive(Debug, Deserialize)]
struct SessionReply {
    #[serde(rename = "STATUS")]
    status: Option<Vec<Status>>,
    #[serde(rename = "SESSION", default)]
    session: Vec<SessionEntry>,
}

#[derive(Debug, Deserialize)]
struct PlainReply {
    #[serde(rename = "STATUS")]
    status: Option<Vec<Status>>,
}

/// LuxOS sleep or wake: the open session (or a new one), then `curtail` with `sid,sleep` or
/// `sid,wakeup`.
pub async fn luxos_curtail(ip: IpAddr, sleep: bool) -> Result<(), MinerError> {
    let session = |reply: Vec<u8>| -> Result<String, MinerError> {
        let r: SessionReply = io::parse(&reply)?;
        check(r.status.as_deref())?;
        Ok(r.session
            .into_iter()
            .next()
            .map(|s| s.session_id)
            .unwrap_or_default())
    };
    let mut sid = session(rpc(ip, "session", None).await?)?;
    if sid.is_empty() {
        sid = session(rpc(ip, "logon", None).await?)?;
    }
    if sid.is_empty() {
        return Err(MinerError::Refused("no luxos session".to_owned()));
    }
    let mode = if sleep { "sleep" } else { "wakeup" };
    let reply = rpc(ip, "curtail", Some(&format!("{sid},{mode}"))).await?;
    let r: PlainReply = io::parse(&reply)?;
    check(r.status.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn antminer_stats_give_power_and_hashrate() {
        let reply = br#"{"STATUS":[{"STATUS":"S","Msg":"CGMiner stats"}],"STATS":[{"Type":"Antminer S19"},{"GHS 5s":"110123.45","chain_power":"3250 W"}],"id":1}"#;
        let r: StatsReply = io::parse(reply).unwrap();
        assert_eq!(r.stats.iter().find_map(StatsEntry::power_w), Some(3250.0));
        assert!((r.hashrate_ths().unwrap() - 110.12345).abs() < 1e-9);
    }

    #[test]
    fn luxos_multi_reply() {
        let reply = br#"{"power":[{"STATUS":[{"STATUS":"S"}],"POWER":[{"PSU":false,"Watts":3010}]}],"stats":[{"STATUS":[{"STATUS":"S"}],"STATS":[{"Type":"x"},{"GHS 5s":0.0}]}],"id":1}"#;
        let m: LuxMulti = io::parse(reply).unwrap();
        assert_eq!(
            m.power[0].power[0].watts.as_ref().unwrap().value(),
            Some(3010.0)
        );
        assert_eq!(m.stats[0].hashrate_ths(), Some(0.0));
        let refused = br#"{"STATUS":[{"STATUS":"E","Msg":"Invalid command in multi"}],"id":1}"#;
        let m: LuxMulti = io::parse(refused).unwrap();
        assert!(matches!(
            check(m.status.as_deref()),
            Err(MinerError::Refused(msg)) if msg == "invalid command in multi"
        ));
    }
}
