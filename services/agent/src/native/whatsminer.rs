//! Whatsminer's v3 API on port 4433: JSON messages framed by a 4-byte little-endian length,
//! several per connection. Reads are open; `set.*` writes carry account `super`, a unix `ts`
//! and `token` = the first 8 characters of base64(sha256(cmd + password + salt + ts)), where the
//! salt comes from `get.device.info` with param `salt`. Power is in W, hashrate in TH/s, and
//! `working` is the text "true" or "false".

use super::Want;
use super::cgminer::Num;
use super::io;
use crate::driver::{MinerError, Reading};
use base64::Engine;
use base64::prelude::BASE64_STANDARD;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use tokio::net::TcpStream;

const PORT: u16 = 4433;
/// The privileged account and its factory password.
const ACCOUNT: &str = "super";
const PASSWORD: &str = "super";

#[derive(Debug, Deserialize)]
struct Reply<T> {
    code: i64,
    msg: Option<T>,
}

/// An error reply's `msg` is text; a success's is an object.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Msg<T> {
    Ok(T),
    Text(String),
}

async fn call<T: for<'de> Deserialize<'de>>(
    stream: &mut TcpStream,
    request: serde_json::Value,
) -> Result<T, MinerError> {
    let body = request.to_string();
    let mut frame = Vec::with_capacity(body.len() + 4);
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(body.as_bytes());
    io::send(stream, &frame).await?;
    let reply = io::read_frame(stream).await?;
    let reply: Reply<Msg<T>> = io::parse(&reply)?;
    match (reply.code, reply.msg) {
        (0, Some(Msg::Ok(msg))) => Ok(msg),
        (0, _) => Err(MinerError::InvalidReply("no msg in a success".to_owned())),
        (code, Some(Msg::Text(text))) => Err(MinerError::Refused(format!("{text} (code {code})"))),
        (code, _) => Err(MinerError::Refused(format!("code {code}"))),
    }
}

#[derive(Debug, Deserialize)]
struct Summary {
    #[serde(rename = "power-realtime")]
    power: Option<Num>,
    #[serde(rename = "hash-realtime")]
    hashrate: Option<Num>,
    #[serde(rename = "power-limit")]
    power_limit: Option<Num>,
}

#[derive(Debug, Deserialize)]
struct Status {
    summary: Option<Summary>,
}

#[derive(Debug, Deserialize)]
struct MinerInfo {
    working: Option<String>,
}

#[derive(Debug, Deserialize)]
struct DeviceInfo {
    miner: Option<MinerInfo>,
    salt: Option<String>,
}

/// Power and hashrate from `get.miner.status` `summary`; for a state read also the power
/// limit and `working` from `get.device.info` `miner`, on the same connection.
pub async fn read(ip: IpAddr, want: Want) -> Result<Reading, MinerError> {
    let mut stream = io::connect(ip, PORT).await?;
    let status: Status = call(
        &mut stream,
        serde_json::json!({"cmd": "get.miner.status", "param": "summary"}),
    )
    .await?;
    let summary = status
        .summary
        .ok_or_else(|| MinerError::InvalidReply("no summary in the status".to_owned()))?;
    let mut reading = Reading {
        power_w: summary.power.as_ref().and_then(Num::value),
        hashrate_ths: summary.hashrate.as_ref().and_then(Num::value),
        ..Reading::default()
    };
    if want == Want::State {
        reading.power_limit_w = summary
            .power_limit
            .as_ref()
            .and_then(Num::value)
            .filter(|w| w.is_finite() && *w > 0.0);
        let info: DeviceInfo = call(
            &mut stream,
            serde_json::json!({"cmd": "get.device.info", "param": "miner"}),
        )
        .await?;
        reading.mining = info
            .miner
            .and_then(|m| m.working)
            .and_then(|w| match w.trim() {
                "true" => Some(true),
                "false" => Some(false),
                _ => None,
            });
    }
    Ok(reading)
}

/// The token for `cmd` at `ts`.
fn token(cmd: &str, salt: &str, ts: &str) -> String {
    let digest = Sha256::digest(format!("{cmd}{PASSWORD}{salt}{ts}").as_bytes());
    BASE64_STANDARD.encode(digest).chars().take(8).collect()
}

/// `set.miner.service` `stop` (sleep) or `start` (wake).
pub async fn set_service(ip: IpAddr, sleep: bool) -> Result<(), MinerError> {
    let mut stream = io::connect(ip, PORT).await?;
    let info: DeviceInfo = call(
        &mut stream,
        serde_json::json!({"cmd": "get.device.info", "param": "salt"}),
    )
    .await?;
    let salt = info
        .salt
        .ok_or_else(|| MinerError::InvalidReply("no salt in the device info".to_owned()))?;
    let cmd = "set.miner.service";
    let ts = chrono::Utc::now().timestamp().to_string();
    let request = serde_json::json!({
        "cmd": cmd,
        "param": if sleep { "stop" } else { "start" },
        "ts": ts.parse::<i64>().unwrap_or_default(),
        "account": ACCOUNT,
        "token": token(cmd, &salt, &ts),
    });
    let _: serde_json::Value = call(&mut stream, request).await.or_else(|e| match e {
        // Some builds answer a write with `"msg":"ok"` text and code 0: success all the same.
        MinerError::InvalidReply(_) => Ok(serde_json::Value::Null),
        other => Err(other),
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_eight_characters_of_base64_sha256() {
        let t = token("set.miner.service", "uhCiDyVj", "1700000000");
        assert_eq!(t.len(), 8);
        assert_eq!(t, token("set.miner.service", "uhCiDyVj", "1700000000"));
        assert_ne!(t, token("set.miner.service", "uhCiDyVj", "1700000001"));
    }

    #[test]
    fn replies() {
        let ok: Reply<Msg<Status>> = io::parse(
            br#"{"code":0,"msg":{"summary":{"power-realtime":3100.5,"hash-realtime":180.123,"power-limit":3700}},"when":1}"#,
        )
        .unwrap();
        let Some(Msg::Ok(Status { summary: Some(s) })) = ok.msg else {
            panic!("not a summary")
        };
        assert_eq!(s.power.unwrap().value(), Some(3100.5));
        let err: Reply<Msg<Status>> =
            io::parse(br#"{"code":-4,"msg":"permission denied","when":1}"#).unwrap();
        assert!(matches!(err.msg, Some(Msg::Text(t)) if t == "permission denied"));
    }
}
