//! Whatsminer stock firmware from 2024-11 on: the read-only RPC on 4028 and the v3 API on 4433.
//!
//! The v3 API frames each JSON message with a 4-byte little-endian length. Reads
//! (`get.device.info`, `get.miner.status`) are open; writes (`set.*`) carry
//! `token` = the first 8 characters of base64(sha256(cmd + password + salt + ts)) for account
//! `super`, where the salt comes from `get.device.info` with param `salt`. Units are the
//! firmware's: hashrate in TH/s, power in W, and `working` is the *string* "true" or "false".

use base64::Engine;
use base64::prelude::BASE64_STANDARD;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::antminer::pool_setup;
use crate::model::BOARDS;
use crate::net::{Front, deliver, hold};
use crate::physics::PerfMode;
use crate::rpc::{RpcRequest, status};
use crate::sim::{Command, Delivery, SimCore, Telemetry};
use crate::wire::{self, int, num};

/// Account and password of the v3 API's privileged user.
const ACCOUNT: &str = "super";
const PASSWORD: &str = "super";
/// Largest v3 frame accepted.
const MAX_FRAME: usize = 64 * 1024;
/// How far a request's `ts` may be from real time.
const TS_TOLERANCE_S: i64 = 600;
const API_V2: &str = "2.0.5";
const API_V3: &str = "3.0.1";

/// The 8-character salt `get.device.info` hands out; stable per miner.
fn salt(core: &SimCore, idx: u32) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut v = core.ident(idx, 11);
    (0..8)
        .map(|_| {
            let c = ALPHABET[(v % ALPHABET.len() as u64) as usize] as char;
            v /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

/// The token a client must send with `cmd` at time `ts`.
pub(crate) fn token(cmd: &str, password: &str, salt: &str, ts: &str) -> String {
    let digest = Sha256::digest(format!("{cmd}{password}{salt}{ts}").as_bytes());
    BASE64_STANDARD.encode(digest).chars().take(8).collect()
}

fn mode_code(perf: PerfMode) -> &'static str {
    match perf {
        PerfMode::Low => "0",
        PerfMode::Normal => "1",
        PerfMode::High => "2",
    }
}

fn power_limit(t: &Telemetry) -> f64 {
    t.power_limit_w
        .unwrap_or_else(|| (t.nominal_w * 1.06 / 100.0).ceil() * 100.0)
}

// --- port 4028 ---------------------------------------------------------------------------

/// Answers one RPC command on port 4028.
pub(crate) fn rpc(front: &Front, idx: u32, req: &RpcRequest) -> Value {
    let core = &front.core;
    let t = core.telemetry(idx);
    let spec = t.model.spec();
    let when = t.when;
    let plain = |code: u32, msg: Value| json!({"STATUS": "S", "When": when, "Code": code, "Msg": msg, "Description": ""});
    let ok = |code: u32, msg: &str| status("S", when, code, msg, "btminer");
    match req.command.as_str() {
        "devdetails" => {
            let boards: Vec<Value> = (0..BOARDS)
                .map(|i| {
                    json!({"DEVDETAILS": i, "Name": "SM", "ID": i, "Driver": "bitmicro",
                           "Kernel": "", "Model": spec.devdetails_name})
                })
                .collect();
            json!({"STATUS": ok(69, "Device Details"), "DEVDETAILS": boards, "id": 1})
        }
        "get_version" => plain(
            131,
            json!({"api_ver": API_V2, "fw_ver": spec.firmware_build, "platform": spec.control_board,
                   "chip": "IC_MODEL_BM1370"}),
        ),
        "summary" => {
            json!({"STATUS": ok(11, "Summary"), "SUMMARY": [v2_summary(core, idx, &t)], "id": 1})
        }
        "devs" | "edevs" => {
            json!({"STATUS": ok(9, "3 ASC(s)"), "DEVS": v2_devs(core, idx, &t), "id": 1})
        }
        "pools" => json!({"STATUS": ok(7, "3 Pool(s)"), "POOLS": v2_pools(core, idx, &t), "id": 1}),
        "status" => plain(
            131,
            json!({
                "mineroff": if t.sleeping { "true" } else { "false" },
                "mineroff_reason": if t.sleeping { "user" } else { "" },
                "mineroff_time": "",
                "FirmwareVersion": format!("'{}'", spec.firmware_build),
                "power_mode": match t.perf { PerfMode::Low => "low", PerfMode::Normal => "normal", PerfMode::High => "high" },
                "hash_percent": "100",
                "power_limit_set": int(power_limit(&t)).to_string(),
            }),
        ),
        "get_miner_info" => plain(
            131,
            json!({
                "ip": core.miner(idx).address.to_string(), "proto": "dhcp", "netmask": "255.255.255.0",
                "dns": "", "mac": core.mac(idx), "ledstat": if t.led { "red" } else { "auto" },
                "gateway": "", "hostname": "WhatsMiner"
            }),
        ),
        "get_psu" => plain(
            131,
            json!({
                "name": "P221B", "hw_version": "RT0159", "sw_version": "230224.220429",
                "model": "P221B", "iin": num(t.power_w / 220.0, 2), "vin": "22000",
                "fan_speed": t.psu_fan_rpm.to_string(), "version": "",
                "serial_no": core.serial(idx, 5, "1436B", 10)
            }),
        ),
        "get_error_code" => plain(131, json!({"error_code": []})),
        // Writes on 4028 use the v2 encrypted API, which v3 firmware no longer opens.
        "get_token" | "open_write_api" | "power_off" | "power_on" | "reboot"
        | "restart_btminer" | "set_led" | "adjust_power_limit" | "set_low_power"
        | "set_normal_power" | "set_high_power" | "update_pools" => json!({
            "STATUS": "E", "When": when, "Code": 45, "Msg": "permission denied", "Description": ""
        }),
        _ => json!({
            "STATUS": "E", "When": when, "Code": 14, "Msg": "invalid cmd", "Description": ""
        }),
    }
}

fn v2_summary(core: &SimCore, idx: u32, t: &Telemetry) -> Value {
    json!({
        "Elapsed": t.uptime_s,
        "MHS av": num(t.hash_avg_ths * 1e6, 2),
        "MHS 5s": num(t.hash_ths * 1e6, 2),
        "MHS 1m": num(t.hash_1m_ths * 1e6, 2),
        "MHS 5m": num(t.hash_5m_ths * 1e6, 2),
        "MHS 15m": num(t.hash_15m_ths * 1e6, 2),
        "HS RT": num(t.hash_ths * 1e6, 2),
        "Accepted": t.accepted,
        "Rejected": t.rejected,
        "Total MH": num(t.hash_avg_ths * 1e6 * t.uptime_s as f64, 0),
        "Temperature": num(t.chip_avg_c(), 2),
        "freq_avg": t.model.spec().freq_mhz,
        "Fan Speed In": t.fans_rpm[0],
        "Fan Speed Out": t.fans_rpm[1],
        "Power": int(t.power_w),
        "Power Rate": num(t.power_w / t.hash_ths.max(0.001), 2),
        "Pool Rejected%": num(t.rejected as f64 * 100.0 / t.accepted.max(1) as f64, 4),
        "Pool Stale%": 0.0,
        "Last getwork": t.when,
        "Uptime": t.uptime_s + 60,
        "Security Mode": 0,
        "Hash Stable": !t.sleeping,
        "Hash Stable Cost Seconds": 1320,
        "Hash Deviation%": 0.12,
        "Target Freq": t.model.spec().freq_mhz,
        "Target MHS": num(t.ideal_ths * 1e6, 0),
        "Env Temp": num(t.ambient_c, 2),
        "Power Mode": match t.perf { PerfMode::Low => "Low", PerfMode::Normal => "Normal", PerfMode::High => "High" },
        "Factory Error Code": 0,
        "Factory GHS": num(t.ideal_ths * 1000.0, 0),
        "Power Limit": int(power_limit(t)),
        "Chip Temp Min": num(t.chip_min_c(), 2),
        "Chip Temp Max": num(t.chip_max_c(), 2),
        "Chip Temp Avg": num(t.chip_avg_c(), 2),
        "Debug": "",
        "Btminer Fast Boot": "disable",
        "Upfreq Complete": 1,
        "MAC": core.mac(idx)
    })
}

fn v2_devs(core: &SimCore, idx: u32, t: &Telemetry) -> Vec<Value> {
    t.boards
        .iter()
        .enumerate()
        .map(|(i, b)| {
            json!({
                "ASC": i, "Slot": i, "Enabled": "Y",
                "Status": if b.hash_ths > 0.0 { "Alive" } else { "Dead" },
                "Temperature": num(b.pcb_out_c, 2),
                "Chip Frequency": b.freq_mhz.round() as u64,
                "Fan Speed In": t.fans_rpm[0], "Fan Speed Out": t.fans_rpm[1],
                "MHS av": num(b.hash_ths * 1e6, 2), "MHS 5s": num(b.hash_ths * 1e6, 2),
                "Accepted": t.accepted / BOARDS as u64, "Rejected": t.rejected / BOARDS as u64,
                "Device Elapsed": t.uptime_s,
                "Effective Chips": b.chips,
                "PCB SN": core.serial(idx, 30 + i as u64, "HEM3CS", 14),
                "Chip Temp Min": num(b.chip_min_c, 2), "Chip Temp Max": num(b.chip_max_c, 2),
                "Chip Temp Avg": num(b.chip_avg_c, 2),
                "Factory GHS": num(b.ideal_ths * 1000.0, 0),
                "Upfreq Complete": 1, "ID": i, "Name": "SM"
            })
        })
        .collect()
}

fn v2_pools(core: &SimCore, idx: u32, t: &Telemetry) -> Vec<Value> {
    let (urls, user) = pool_setup(core, idx);
    urls.iter()
        .enumerate()
        .map(|(i, url)| {
            let active = i == 0;
            json!({
                "POOL": i + 1, "URL": url, "Status": "Alive", "Priority": i, "Quota": 1,
                "Long Poll": "N", "Getworks": if active { t.accepted / 4 } else { 0 },
                "Accepted": if active { t.accepted } else { 0 },
                "Rejected": if active { t.rejected } else { 0 },
                "Works": 0, "Discarded": 0, "Stale": 0, "Get Failures": 0, "Remote Failures": 0,
                "User": user, "Last Share Time": if active { t.when - 4 } else { 0 },
                "Diff1 Shares": 0, "Proxy": "", "Difficulty Accepted": 0.0,
                "Difficulty Rejected": 0.0, "Difficulty Stale": 0.0,
                "Last Share Difficulty": if active { 131_072.0 } else { 0.0 },
                "Has Stratum": true, "Stratum Active": active,
                "Stratum URL": url.trim_start_matches("stratum+tcp://").split(':').next().unwrap_or_default(),
                "Stratum Difficulty": 131_072.0, "Has GBT": false, "Best Share": t.best_share,
                "Pool Rejected%": 0.0, "Pool Stale%": 0.0, "Bad Work": 0,
                "Current Block Height": 0, "Current Block Version": 536_870_912
            })
        })
        .collect()
}

// --- port 4433 ---------------------------------------------------------------------------

/// Serves one v3 API connection: length-prefixed requests until the client closes or idles.
pub(crate) async fn serve_v3(front: &Front, idx: u32, mut stream: TcpStream) {
    let timeout = front.core.limits.read_timeout;
    loop {
        let read = async {
            let mut len = [0u8; 4];
            stream.read_exact(&mut len).await.ok()?;
            let len = u32::from_le_bytes(len) as usize;
            if len == 0 || len > MAX_FRAME {
                return None;
            }
            let mut body = vec![0u8; len];
            stream.read_exact(&mut body).await.ok()?;
            Some(body)
        };
        let Ok(Some(body)) = tokio::time::timeout(timeout, read).await else {
            return;
        };
        let plan = front.core.reply_plan(idx);
        if plan.delivery == Delivery::NoAnswer {
            hold(front, &mut stream).await;
            return;
        }
        let reply = v3_answer(&front.core, idx, &body);
        let json = wire::to_bytes(&reply);
        let mut frame = Vec::with_capacity(json.len() + 4);
        frame.extend_from_slice(&(json.len() as u32).to_le_bytes());
        frame.extend_from_slice(&json);
        if deliver(front, &mut stream, plan, &frame).await.is_err()
            || plan.delivery != Delivery::Normal
        {
            return;
        }
    }
}

fn v3_reply(code: i64, msg: Value, cmd: &str, when: i64) -> Value {
    json!({"code": code, "msg": msg, "desc": cmd, "when": when})
}

fn v3_answer(core: &SimCore, idx: u32, body: &[u8]) -> Value {
    let when = core.clock.unix_secs(core.clock.now());
    let Ok(req) = serde_json::from_slice::<Value>(body) else {
        return v3_reply(-3, json!("invalid json"), "", when);
    };
    let Some(cmd) = req.get("cmd").and_then(Value::as_str) else {
        return v3_reply(-1, json!("invalid command"), "", when);
    };
    let param = req.get("param");
    match cmd {
        "get.device.info" => device_info(core, idx, cmd, param),
        "get.miner.status" => miner_status(core, idx, cmd, param),
        "get.miner.setting" => {
            let t = core.telemetry(idx);
            v3_reply(
                0,
                json!({
                    "pools": pool_list(core, idx, &t),
                    "power-limit": int(power_limit(&t)),
                    "power-mode": mode_code(t.perf),
                    "fast-boot": "disable",
                    "heat-mode": "normal",
                    "target-freq": t.model.spec().freq_mhz
                }),
                cmd,
                t.when,
            )
        }
        _ if cmd.starts_with("set.") => {
            if let Err(why) = check_token(core, idx, cmd, &req) {
                return v3_reply(-4, json!(why), cmd, when);
            }
            set(core, idx, cmd, param, when)
        }
        _ => v3_reply(-1, json!("invalid command"), cmd, when),
    }
}

fn check_token(core: &SimCore, idx: u32, cmd: &str, req: &Value) -> Result<(), &'static str> {
    if req.get("account").and_then(Value::as_str) != Some(ACCOUNT) {
        return Err("invalid account");
    }
    let ts = match req.get("ts") {
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) => s.clone(),
        _ => return Err("missing ts"),
    };
    let ts_num: i64 = ts.parse().map_err(|_| "invalid ts")?;
    if (ts_num - crate::digest::now_unix() as i64).abs() > TS_TOLERANCE_S {
        return Err("token expired");
    }
    let expected = token(cmd, PASSWORD, &salt(core, idx), &ts);
    if req.get("token").and_then(Value::as_str) != Some(expected.as_str()) {
        return Err("permission denied");
    }
    Ok(())
}

fn set(core: &SimCore, idx: u32, cmd: &str, param: Option<&Value>, when: i64) -> Value {
    let command = match (cmd, param) {
        ("set.miner.service", Some(Value::String(s))) => match s.as_str() {
            "stop" | "disable" => Some(Command::Sleep),
            "start" | "enable" | "restart" => Some(Command::Wake),
            _ => return v3_reply(-2, json!("invalid parameter"), cmd, when),
        },
        ("set.miner.power_limit", Some(p)) => {
            let watts = p
                .as_f64()
                .or_else(|| p.as_str().and_then(|s| s.trim().parse().ok()));
            match watts {
                Some(w) if w.is_finite() && w > 0.0 && w <= 100_000.0 => {
                    Some(Command::PowerLimit(w))
                }
                _ => return v3_reply(-2, json!("invalid parameter"), cmd, when),
            }
        }
        ("set.miner.mode", Some(Value::String(s))) => match s.as_str() {
            "low" => Some(Command::Perf(PerfMode::Low)),
            "normal" => Some(Command::Perf(PerfMode::Normal)),
            "high" => Some(Command::Perf(PerfMode::High)),
            _ => return v3_reply(-2, json!("invalid parameter"), cmd, when),
        },
        ("set.system.led", Some(Value::String(s))) if s == "auto" => Some(Command::Led(false)),
        ("set.system.led", Some(Value::Array(_) | Value::Object(_))) => Some(Command::Led(true)),
        ("set.system.reboot", _) => Some(Command::Reboot),
        // Pools arrive AES-encrypted; the simulated pools are fixed, so acknowledge them.
        ("set.miner.pools", Some(_)) => None,
        (
            "set.miner.service"
            | "set.miner.power_limit"
            | "set.miner.mode"
            | "set.system.led"
            | "set.miner.pools",
            _,
        ) => return v3_reply(-2, json!("invalid parameter"), cmd, when),
        _ => return v3_reply(-1, json!("invalid command"), cmd, when),
    };
    match command.map(|c| core.command(idx, c)) {
        None | Some(Ok(())) => v3_reply(0, json!("ok"), cmd, when),
        Some(Err(_)) => v3_reply(-5, json!("command failed"), cmd, when),
    }
}

fn wanted(param: Option<&Value>) -> Vec<String> {
    match param {
        Some(Value::String(s)) => s
            .split(',')
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
            .collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

fn device_info(core: &SimCore, idx: u32, cmd: &str, param: Option<&Value>) -> Value {
    let t = core.telemetry(idx);
    let spec = t.model.spec();
    let m = core.miner(idx);
    let mut miner = Map::new();
    miner.insert("board-num".into(), json!(BOARDS.to_string()));
    for i in 0..BOARDS {
        miner.insert(
            format!("chipdata{i}"),
            json!(core.serial(idx, 40 + i as u64, "K8", 12)),
        );
        miner.insert(
            format!("pcbsn{i}"),
            json!(core.serial(idx, 30 + i as u64, "HEM3CS", 14)),
        );
    }
    let detect: Vec<String> = t
        .boards
        .iter()
        .map(|b| format!("{}", (b.ideal_ths * 1000.0 * 0.98).round() as u64))
        .collect();
    miner.insert("detect-hash-rate".into(), json!(detect.join(":")));
    miner.insert("fast-boot".into(), json!("disable"));
    miner.insert("hash-board".into(), json!(spec.board_type));
    miner.insert("hash-percent".into(), json!("0"));
    miner.insert("miner-sn".into(), json!(core.serial(idx, 2, "HTM3", 29)));
    miner.insert("pool-strategy".into(), json!("FAILOVER"));
    miner.insert("type".into(), json!(spec.name));
    miner.insert(
        "working".into(),
        json!(if t.sleeping { "false" } else { "true" }),
    );
    miner.insert("heat-mode".into(), json!("normal"));

    let mut all = Map::new();
    all.insert("miner".into(), Value::Object(miner));
    all.insert(
        "network".into(),
        json!({
            "dns": "", "gateway": "", "hostname": "WhatsMiner", "ip": m.address.to_string(),
            "mac": core.mac(idx), "netmask": "255.255.255.0", "proto": "dhcp"
        }),
    );
    all.insert(
        "power".into(),
        json!({
            "fanspeed": t.psu_fan_rpm, "hwversion": "RT0159", "mode": mode_code(t.perf),
            "model": "P221B", "sn": core.serial(idx, 5, "1436B", 10), "swversion": "230224.220429",
            "type": "P221B", "vendor": "1", "iin": num(t.power_w / 220.0, 2), "vin": 220.0
        }),
    );
    all.insert("salt".into(), json!(salt(core, idx)));
    all.insert(
        "system".into(),
        json!({
            "api": API_V3, "apiswitch": "1", "control-board-version": "CB6V10",
            "fwversion": spec.firmware_build, "ledstatus": if t.led { "red" } else { "auto" },
            "platform": spec.control_board
        }),
    );
    all.insert("error-code".into(), json!([]));

    let want = wanted(param);
    let msg = if want.is_empty() {
        Value::Object(all)
    } else {
        let mut some = Map::new();
        for key in want {
            if let Some(v) = all.get(&key) {
                some.insert(key, v.clone());
            } else {
                return v3_reply(-2, json!("invalid parameter"), cmd, t.when);
            }
        }
        Value::Object(some)
    };
    v3_reply(0, msg, cmd, t.when)
}

fn pool_list(core: &SimCore, idx: u32, t: &Telemetry) -> Value {
    let (urls, user) = pool_setup(core, idx);
    Value::Array(
        urls.iter()
            .enumerate()
            .map(|(i, url)| {
                json!({
                    "id": i, "url": url, "account": user, "status": "alive",
                    "stratum-active": i == 0, "pool-priority": i,
                    "reject-rate": 0.0, "last-share-time": if i == 0 { t.when - 4 } else { 0 }
                })
            })
            .collect(),
    )
}

fn miner_status(core: &SimCore, idx: u32, cmd: &str, param: Option<&Value>) -> Value {
    let t = core.telemetry(idx);
    let mut want = wanted(param);
    if want.is_empty() {
        want.push("summary".to_owned());
    }
    let mut msg = Map::new();
    for part in want {
        let v = match part.as_str() {
            "summary" => json!({
                "elapsed": t.uptime_s,
                "bootup-time": 1320,
                "hash-realtime": num(t.hash_ths, 3),
                "hash-1min": num(t.hash_1m_ths, 3),
                "hash-15min": num(t.hash_15m_ths, 3),
                "hash-average": num(t.hash_avg_ths, 3),
                "factory-hash": num(t.ideal_ths, 3),
                "power-realtime": num(t.power_w, 1),
                "power-5min": num(t.power_w, 1),
                "power-limit": int(power_limit(&t)),
                "power-rate": num(t.power_w / t.hash_ths.max(0.001), 2),
                "environment-temperature": num(t.ambient_c, 1),
                "board-temperature": t.boards.iter().map(|b| num(b.pcb_out_c, 1)).collect::<Vec<_>>(),
                "chip-temp-min": num(t.chip_min_c(), 1),
                "chip-temp-avg": num(t.chip_avg_c(), 1),
                "chip-temp-max": num(t.chip_max_c(), 1),
                "fan-speed-in": t.fans_rpm[0],
                "fan-speed-out": t.fans_rpm[1],
                "freq-avg": t.model.spec().freq_mhz,
                "up-freq-finish": if t.sleeping { 0 } else { 1 },
                "Debug": ""
            }),
            "pools" => pool_list(core, idx, &t),
            "edevs" => Value::Array(
                t.boards
                    .iter()
                    .enumerate()
                    .map(|(i, b)| {
                        json!({
                            "id": i,
                            "status": if b.hash_ths > 0.0 { "alive" } else { "dead" },
                            "hash-realtime": num(b.hash_ths, 3),
                            "hash-average": num(b.hash_ths, 3),
                            "factory-hash": num(b.ideal_ths, 3),
                            "effective-chips": b.chips,
                            "chip-temp-min": num(b.chip_min_c, 1),
                            "chip-temp-avg": num(b.chip_avg_c, 1),
                            "chip-temp-max": num(b.chip_max_c, 1),
                            "freq": num(b.freq_mhz, 1)
                        })
                    })
                    .collect(),
            ),
            _ => return v3_reply(-2, json!("invalid parameter"), cmd, t.when),
        };
        msg.insert(part, v);
    }
    v3_reply(0, Value::Object(msg), cmd, t.when)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_eight_chars_of_base64_sha256() {
        // sha256("set.miner.servicesuperuhCiDyVj1700000000"), base64, first 8 characters.
        let t = token("set.miner.service", "super", "uhCiDyVj", "1700000000");
        assert_eq!(t.len(), 8);
        let full =
            BASE64_STANDARD.encode(Sha256::digest(b"set.miner.servicesuperuhCiDyVj1700000000"));
        assert_eq!(t, full[..8]);
    }
}
