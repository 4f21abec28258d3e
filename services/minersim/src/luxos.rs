//! LuxOS (Luxor firmware on Antminer hardware): everything over the RPC on 4028.
//!
//! Reads are open. Writes (`curtail`, `ledset`, `rebootdevice`, `logoff`) take a session id as
//! the first comma-separated part of their parameter: `session` shows the current one (empty
//! when nobody is logged on) and `logon` opens one when there is none, as LuxOS allows a
//! single session at a time. `curtail` with `sleep` / `wakeup` is how LuxOS sleeps and wakes.

use serde_json::{Value, json};

use crate::antminer::pool_setup;
use crate::fleet::mix;
use crate::model::BOARDS;
use crate::net::Front;
use crate::rpc::{RpcRequest, status};
use crate::sim::{Command, SimCore, Telemetry};
use crate::wire::{int, num};

/// `Description` in every status.
pub(crate) const DESCRIPTION: &str = "LUXminer 2025.4.8.220305-57b389c7";
const LUXMINER: &str = "2025.4.8.220305-57b389c7";
const COMPILE_TIME: &str = "Tue Apr  8 22:05:35 UTC 2025";
const API: &str = "3.7";

/// Commands that change nothing, allowed in `a+b` multi-commands.
pub(crate) fn is_read_only(command: &str) -> bool {
    matches!(
        command,
        "version"
            | "config"
            | "summary"
            | "stats"
            | "pools"
            | "groups"
            | "devs"
            | "devdetails"
            | "fans"
            | "temps"
            | "power"
            | "profiles"
            | "events"
            | "tempctrl"
            | "atm"
    )
}

fn profile_name(freq: u32) -> String {
    format!("{freq}MHz")
}

/// Answers one RPC command.
pub(crate) fn rpc(front: &Front, idx: u32, req: &RpcRequest) -> Value {
    let core = &front.core;
    let t = core.telemetry(idx);
    let spec = t.model.spec();
    let when = t.when;
    let ok = |code: u32, msg: &str| status("S", when, code, msg, DESCRIPTION);
    let err = |code: u32, msg: &str| json!({"STATUS": status("E", when, code, msg, DESCRIPTION), "id": 1});
    let param = req.parameter.as_deref().unwrap_or("");
    let board_param = || param.trim().parse::<usize>().ok().filter(|&b| b < BOARDS);
    match req.command.as_str() {
        "version" => json!({
            "STATUS": ok(22, "LUXminer versions"),
            "VERSION": [{"API": API, "CompileTime": COMPILE_TIME, "LUXminer": LUXMINER,
                         "Miner": spec.firmware_build, "Type": spec.name}],
            "id": 1
        }),
        "config" => {
            json!({"STATUS": ok(33, "LUXminer config"), "CONFIG": [config(core, idx, &t)], "id": 1})
        }
        "summary" => json!({"STATUS": ok(11, "Summary"), "SUMMARY": [summary(&t)], "id": 1}),
        "stats" => json!({
            "STATUS": ok(70, "LUXminer stats"),
            "STATS": [
                {"CompileTime": COMPILE_TIME, "Miner": spec.firmware_build, "Type": spec.name},
                stats(core, idx, &t)
            ],
            "id": 1
        }),
        "pools" => json!({"STATUS": ok(7, "3 Pool(s)"), "POOLS": pools(core, idx, &t), "id": 1}),
        "groups" => json!({
            "STATUS": ok(8, "1 Group(s)"),
            "GROUPS": [{"GROUP": 0, "Name": "Default", "Quota": 1, "Strategy": "Failover"}],
            "id": 1
        }),
        "devs" => json!({"STATUS": ok(9, "3 ASC(s)"), "DEVS": devs(core, idx, &t), "id": 1}),
        "devdetails" => json!({
            "STATUS": ok(69, "Device Details"),
            "DEVDETAILS": (0..BOARDS).map(|i| json!({
                "DEVDETAILS": i, "Name": "", "ID": i, "Driver": "bitmain", "Kernel": "",
                "Model": spec.name, "Device Path": "", "Board": spec.board_type
            })).collect::<Vec<_>>(),
            "id": 1
        }),
        "fans" => json!({
            "STATUS": ok(202, "4 Fan(s)"),
            "FANCTRL": [{"MinFans": 3, "PowerOffSpeed": 20}],
            "FANS": t.fans_rpm.iter().enumerate().map(|(i, rpm)| json!({
                "FAN": format!("FAN{}", i + 1), "ID": i, "RPM": rpm,
                "Speed": (f64::from(*rpm) / f64::from(spec.fan_max_rpm) * 100.0).round() as u64
            })).collect::<Vec<_>>(),
            "id": 1
        }),
        "temps" => temps(&t, ok(201, "3 Temp(s)")),
        "power" => json!({
            "STATUS": ok(311, "Power usage"),
            "POWER": [{"PSU": false, "Watts": int(t.power_w)}],
            "id": 1
        }),
        "profiles" => json!({"STATUS": ok(330, "Profiles"), "PROFILES": profiles(&t), "id": 1}),
        "events" => {
            let events: Vec<Value> = if t.sleeping {
                vec![json!({
                    "Code": "SLEEP", "CreatedAt": "", "Target": "MINER",
                    "Description": "Miner is sleeping (curtailed).",
                    "DocUrl": "https://docs.luxor.tech/firmware/kb/eventstroubleshooting#sleep"
                })]
            } else {
                Vec::new()
            };
            json!({"STATUS": ok(357, "Miner Events"), "EVENTS": events, "id": 1})
        }
        "tempctrl" => json!({
            "STATUS": ok(204, "Temperature control"),
            "TEMPCTRL": [{"Mode": "Auto", "Target": 75.0, "Hot": 85.0, "Dangerous": 95.0}],
            "id": 1
        }),
        "atm" => json!({
            "STATUS": ok(345, "ATM configuration values"),
            "ATM": [{"Enabled": true, "MaxProfile": profile_name(spec.freq_mhz + 50),
                     "MinProfile": profile_name(spec.freq_mhz - 100), "PostRampMinutes": 15,
                     "StartupMinutes": 15, "TempWindow": 7}],
            "id": 1
        }),
        "voltageget" => match board_param() {
            Some(b) => json!({
                "STATUS": ok(307, "Get Voltage"),
                "VOLTAGE": [{"Board": b, "Voltage": if t.boards[b].hash_ths > 0.0 { 11.88 } else { 0.0 }}],
                "id": 1
            }),
            None => err(308, "Invalid board"),
        },
        "healthchipget" => match board_param() {
            Some(b) => {
                json!({"STATUS": ok(330, "Chip health"), "CHIPS": chips(core, idx, &t, b), "id": 1})
            }
            None => err(308, "Invalid board"),
        },
        "session" => {
            let sid = core.with_slot(idx, |slot, _, _| slot.state.lux_session);
            json!({
                "STATUS": ok(300, "Session"),
                "SESSION": [{"SessionID": session_text(sid), "Username": if sid == 0 { "" } else { "root" }}],
                "id": 1
            })
        }
        "logon" => {
            let now = core.clock.now();
            let sid = core.with_slot(idx, |slot, _, _| {
                if slot.state.lux_session != 0 {
                    None
                } else {
                    let sid = (mix(core.seed ^ u64::from(idx) ^ now.as_millis().rotate_left(17))
                        as u32)
                        | 1;
                    slot.state.lux_session = sid;
                    Some(sid)
                }
            });
            match sid {
                Some(sid) => json!({
                    "STATUS": ok(301, "Logon"),
                    "SESSION": [{"SessionID": session_text(sid), "Username": "root"}],
                    "id": 1
                }),
                None => err(302, "Another session is active"),
            }
        }
        "logoff" | "curtail" | "ledset" | "rebootdevice" => {
            let mut parts = param.split(',').map(str::trim);
            let sid = parts.next().unwrap_or_default();
            let current = core.with_slot(idx, |slot, _, _| slot.state.lux_session);
            if current == 0 || sid != session_text(current) {
                return err(303, "Invalid session id");
            }
            let arg: Vec<&str> = parts.collect();
            privileged(core, idx, req.command.as_str(), &arg, ok, err)
        }
        _ => err(14, "Invalid command"),
    }
}

fn privileged(
    core: &SimCore,
    idx: u32,
    command: &str,
    arg: &[&str],
    ok: impl Fn(u32, &str) -> Value,
    err: impl Fn(u32, &str) -> Value,
) -> Value {
    let done = |code: u32, msg: &str| json!({"STATUS": ok(code, msg), "id": 1});
    match (command, arg) {
        ("logoff", _) => {
            core.with_slot(idx, |slot, _, _| slot.state.lux_session = 0);
            done(304, "Logoff")
        }
        ("curtail", ["sleep"]) => match core.command(idx, Command::Sleep) {
            Ok(()) => done(340, "Curtail sleep"),
            Err(_) => err(341, "Curtail failed"),
        },
        ("curtail", ["wakeup"]) => match core.command(idx, Command::Wake) {
            Ok(()) => done(340, "Curtail wakeup"),
            Err(_) => err(341, "Curtail failed"),
        },
        ("curtail", _) => err(342, "Invalid curtail mode; use sleep or wakeup"),
        ("ledset", [_, "blink" | "on"]) => {
            let _ = core.command(idx, Command::Led(true));
            done(350, "LED set")
        }
        ("ledset", [_, "auto" | "off"]) => {
            let _ = core.command(idx, Command::Led(false));
            done(350, "LED set")
        }
        ("ledset", _) => err(351, "Invalid LED parameters"),
        ("rebootdevice", _) => {
            let _ = core.command(idx, Command::Reboot);
            done(360, "Rebooting device")
        }
        _ => err(14, "Invalid command"),
    }
}

fn session_text(sid: u32) -> String {
    if sid == 0 {
        String::new()
    } else {
        format!("{sid:08x}")
    }
}

fn config(core: &SimCore, idx: u32, t: &Telemetry) -> Value {
    let spec = t.model.spec();
    let m = core.miner(idx);
    let [_, a, b, c] = m.address.octets();
    json!({
        "ASC Count": BOARDS, "BcastAddr": format!("127.{a}.{b}.255"),
        "ControlBoardType": spec.control_board, "Cooling": "Air",
        "CurtailMode": if t.sleeping { "Sleep" } else { "None" },
        "DHCP": true, "DNS Servers": "", "Device Code": "",
        "FPGABuildIdHex": "0x18351835", "FPGABuildIdStr": "2018-35-18 35:00",
        "FeeStatus": "Ok", "Gateway": format!("127.{a}.{b}.1"), "GreenLed": "auto",
        "Hostname": format!("luxos-{a}-{b}-{c}"), "Hotplug": "None",
        "IPAddr": m.address.to_string(), "ImmersionMode": false, "IsAtmEnabled": true,
        "IsPowerSupplyOn": true, "IsSingleVoltage": true, "IsTuning": false,
        "Log Interval": 0, "LogFileLevel": "info",
        "MACAddr": core.mac(idx).to_ascii_lowercase(),
        "Model": spec.name, "NameplateTHS": num(t.ideal_ths, 1), "Netmask": "255.255.255.0",
        "OS": "LuxOS", "PGA Count": 0, "PSUHwVersion": "75", "PSULabel": "APW121215e",
        "Pool Count": 3, "Profile": profile_name(spec.freq_mhz), "ProfileStep": "0",
        "RedLed": if t.led { "blink" } else { "auto" },
        "SerialNumber": core.serial(idx, 3, "JYZZ", 13), "Strategy": "Failover",
        "SystemStatus": if t.sleeping { "Sleeping" } else { "Normal" },
        "UpdateOnStartup": "off", "UpdateOnTimeout": "off", "UpdateOnUser": "full",
        "UpdateSource": "https://storage.googleapis.com/luxor-firmware/stable",
        "UpdateTimeout": 60
    })
}

fn summary(t: &Telemetry) -> Value {
    json!({
        "Accepted": t.accepted, "Best Share": t.best_share, "Device Hardware%": 0.0,
        "Device Rejected%": 0.0, "Difficulty Accepted": t.accepted * 32_768,
        "Difficulty Rejected": t.rejected * 32_768, "Difficulty Stale": 0, "Discarded": 0,
        "Elapsed": t.uptime_s, "Found Blocks": 0,
        "GHS 15m": num(t.hash_15m_ths * 1000.0, 2), "GHS 1m": num(t.hash_1m_ths * 1000.0, 2),
        "GHS 24h": num(t.hash_avg_ths * 1000.0, 2), "GHS 30m": num(t.hash_30m_ths * 1000.0, 2),
        "GHS 5m": num(t.hash_5m_ths * 1000.0, 2), "GHS 5s": num(t.hash_ths * 1000.0, 2),
        "GHS av": num(t.hash_avg_ths * 1000.0, 2), "Get Failures": 0,
        "Getworks": t.accepted / 2, "Hardware Errors": t.hw_errors, "Last getwork": t.when,
        "Local Work": 0, "Network Blocks": 0,
        "Pool Rejected%": num(t.rejected as f64 * 100.0 / t.accepted.max(1) as f64, 4),
        "Pool Stale%": 0.0, "Rejected": t.rejected, "Remote Failures": 0, "Stale": 0,
        "Total MH": num(t.hash_avg_ths * 1e6 * t.uptime_s as f64, 0),
        "Utility": num(t.accepted as f64 * 60.0 / t.uptime_s.max(1) as f64, 2),
        "Work Utility": num(t.hash_avg_ths * 0.2, 2)
    })
}

fn dash4(values: [f64; 4]) -> String {
    values
        .iter()
        .map(|v| format!("{}", v.round() as i64))
        .collect::<Vec<_>>()
        .join("-")
}

fn stats(core: &SimCore, idx: u32, t: &Telemetry) -> Value {
    let spec = t.model.spec();
    let mut m = serde_json::Map::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_owned(), v);
    };
    put("Calls", json!(0));
    put("Elapsed", json!(t.uptime_s));
    put("GHS 5s", num(t.hash_ths * 1000.0, 2));
    put("GHS av", num(t.hash_avg_ths * 1000.0, 2));
    put("ID", json!("BTM_SOC0"));
    put("Max", json!(0));
    put("Min", json!(99_999_999));
    put("Mode", json!(2));
    put("STATS", json!(0));
    put("Wait", json!(0));
    for (i, b) in t.boards.iter().enumerate() {
        let n = i + 1;
        let chips: String = (0..b.chips)
            .map(|c| if c % 4 == 0 { " o" } else { "o" })
            .collect();
        put(&format!("chain_acn{n}"), json!(b.chips));
        put(&format!("chain_acs{n}"), json!(chips));
        put(&format!("chain_hw{n}"), json!(0));
        put(
            &format!("chain_rate{n}"),
            json!(format!("{:.2}", b.hash_ths * 1000.0)),
        );
        put(&format!("freq{n}"), num(b.freq_mhz, 1));
        put(
            &format!("temp_chip{n}"),
            json!(dash4([b.chip_max_c, b.pcb_in_c, b.pcb_in_c, b.chip_max_c])),
        );
        put(
            &format!("temp_pcb{n}"),
            json!(dash4([b.pcb_out_c, b.pcb_in_c, b.pcb_in_c, b.pcb_out_c])),
        );
        put(
            &format!("temp_pic{n}"),
            json!(dash4([b.pcb_out_c, b.pcb_in_c, b.pcb_in_c, b.pcb_out_c])),
        );
        put(&format!("temp2_{n}"), num(b.chip_max_c, 1));
        put(&format!("temp{n}"), num(b.pcb_out_c, 1));
    }
    put("chain_acn4", json!(0));
    put("chain_acs4", json!(""));
    put("chain_hw4", json!(0));
    put("chain_rate4", json!("0"));
    put("freq4", json!(0.0));
    put("temp_chip4", json!("0-0-0-0"));
    put("temp_pcb4", json!("0-0-0-0"));
    put("temp_pic4", json!("0-0-0-0"));
    for (i, rpm) in t.fans_rpm.iter().enumerate() {
        put(&format!("fan{}", i + 1), json!(rpm));
    }
    put("fan_num", json!(4));
    put("frequency", json!(spec.freq_mhz));
    put("miner_count", json!(BOARDS));
    put(
        "miner_id",
        json!(format!("{:012x}", core.ident(idx, 7) & 0xffff_ffff_ffff)),
    );
    put("miner_version", json!(spec.firmware_build));
    put("no_matching_work", json!(0));
    put("rate_30m", num(t.hash_30m_ths * 1000.0, 2));
    put("rate_unit", json!("GH"));
    put("temp_max", num(t.chip_max_c(), 1));
    put("temp_num", json!(BOARDS));
    put("total rate", num(t.hash_ths * 1000.0, 2));
    put(
        "total_acn",
        json!(u64::from(spec.chips_per_board) * BOARDS as u64),
    );
    put("total_freqavg", num(f64::from(spec.freq_mhz), 1));
    put("total_rateideal", num(t.ideal_ths * 1000.0, 2));
    Value::Object(m)
}

fn pools(core: &SimCore, idx: u32, t: &Telemetry) -> Vec<Value> {
    let (urls, user) = pool_setup(core, idx);
    urls.iter()
        .enumerate()
        .map(|(i, url)| {
            let active = i == 0;
            json!({
                "Accepted": if active { t.accepted } else { 0 }, "AsicBoost": true, "Bad Work": 0,
                "Best Share": if active { t.best_share } else { 0 },
                "Current Block Height": 0, "Current Block Version": 536_870_912,
                "Diff": if active { "32K" } else { "0" }, "Diff1 Shares": 0,
                "Difficulty Accepted": if active { t.accepted * 32_768 } else { 0 },
                "Difficulty Rejected": 0, "Difficulty Stale": 0, "Discarded": 0, "GROUP": 0,
                "Get Failures": 0, "Getworks": if active { t.accepted / 2 } else { 0 },
                "Has GBT": false, "Has Stratum": true, "Has Vmask": true,
                "Last Share Difficulty": if active { 32_768 } else { 0 },
                "Last Share Time": if active { "00:00:02" } else { "00:00:00" },
                "Long Pool": "N", "POOL": i, "Pool Rejected%": 0.0, "Pool Stale%": 0.0,
                "Priority": i, "Proxy": "", "Proxy Type": "", "Quota": 1.0,
                "Rejected": if active { t.rejected } else { 0 }, "Remote Failures": 0, "Stale": 0,
                "Status": "Alive", "Stratum Active": active,
                "Stratum Difficulty": if active { 32_768 } else { 0 },
                "Stratum URL": url.trim_start_matches("stratum+tcp://"),
                "URL": url, "User": user, "Work Difficulty": if active { 32_768 } else { 0 },
                "Works": 0
            })
        })
        .collect()
}

fn devs(core: &SimCore, idx: u32, t: &Telemetry) -> Vec<Value> {
    let spec = t.model.spec();
    t.boards
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let mhs = b.hash_ths * 1e6;
            json!({
                "ASC": i, "Accepted": t.accepted / BOARDS as u64, "Board": spec.board_type,
                "Connector": format!("J{}", i + 7), "ControllerIPVersionHex": "0x18351835",
                "ControllerIPVersionStr": "N/A", "Device Elapsed": t.uptime_s,
                "Device Hardware%": 0, "Device Rejected%": 0, "Diff1 Work": 0,
                "Difficulty Accepted": t.accepted / BOARDS as u64 * 32_768, "Difficulty Rejected": 0,
                "Enabled": "Y", "Hardware Error MHS 15m": 0, "Hardware Errors": 0, "ID": i,
                "IsRamping": false, "IsUserShutdown": t.sleeping,
                "Last Share Difficulty": 32_768, "Last Share Pool": 0,
                "Last Share Time": t.when - 2, "Last Valid Work": t.when - 2,
                "MHS 15m": num(mhs, 2), "MHS 1m": num(mhs, 2), "MHS 30m": num(mhs, 2),
                "MHS 5m": num(mhs, 2), "MHS 5s": num(mhs, 2), "MHS 60m": num(mhs, 2),
                "MHS av": num(t.hash_avg_ths * 1e6 / BOARDS as f64, 2), "Name": "",
                "Nominal MHS": num(b.ideal_ths * 1e6, 1), "Profile": profile_name(spec.freq_mhz),
                "Rejected": 0, "SerialNumber": core.serial(idx, 30 + i as u64, "JYZZ", 13),
                "Status": if b.hash_ths > 0.0 { "Alive" } else { "Sleeping" },
                "Temperature": num(b.pcb_out_c, 1),
                "Total MH": num(t.hash_avg_ths * 1e6 / BOARDS as f64 * t.uptime_s as f64, 0),
                "Utility": 0
            })
        })
        .collect()
}

fn temps(t: &Telemetry, status: Value) -> Value {
    json!({
        "METADATA": [{
            "BottomLeft": {"Label": "Board Exhaust (bottom)", "Position": [1, 0]},
            "BottomRight": {"Label": "Board Intake (bottom)", "Position": [1, 1]},
            "TopLeft": {"Label": "Board Exhaust (top)", "Position": [0, 0]},
            "TopRight": {"Label": "Board Intake (top)", "Position": [0, 1]}
        }],
        "STATUS": status,
        "TEMPS": t.boards.iter().enumerate().map(|(i, b)| json!({
            "BottomLeft": num(b.pcb_out_c, 1), "BottomRight": num(b.pcb_in_c, 1), "ID": i,
            "TEMP": i, "TopLeft": num(b.pcb_out_c + 0.5, 1), "TopRight": num(b.pcb_in_c + 0.5, 1)
        })).collect::<Vec<_>>(),
        "id": 1
    })
}

fn profiles(t: &Telemetry) -> Vec<Value> {
    let spec = t.model.spec();
    (-4i32..=2)
        .map(|step| {
            let freq = (i64::from(spec.freq_mhz) + i64::from(step) * 25).max(50) as u32;
            let scale = f64::from(freq) / f64::from(spec.freq_mhz);
            json!({
                "CanRestore": true, "Frequency": freq, "HasOverrides": false,
                "Hashrate": num(t.ideal_ths * scale, 1), "IsDynamic": true,
                "IsTuned": step == 0, "Profile Name": profile_name(freq),
                "Step": step.to_string(), "Voltage": 11.88,
                "Watts": (t.nominal_w * scale.powf(1.3)).round() as u64
            })
        })
        .collect()
}

fn chips(core: &SimCore, idx: u32, t: &Telemetry, board: usize) -> Vec<Value> {
    let b = &t.boards[board];
    let per_chip = b.hash_ths * 1000.0 / f64::from(b.chips.max(1));
    let when_ms = t.when * 1000;
    (0..b.chips)
        .map(|c| {
            let wobble = 1.0 + 0.03 * ((mix(core.ident(idx, 50 + board as u64) ^ u64::from(c)) % 2001) as f64 / 1000.0 - 1.0);
            let ghs = per_chip * wobble;
            json!({
                "Board": board, "Chip": c, "Column": c % 4, "Domain": c / 4,
                "Frequency": b.freq_mhz.round() as u64,
                "GHS 15m": num(ghs, 2), "GHS 1m": num(ghs, 2), "GHS 5m": num(ghs, 2),
                "HashCount": (ghs * 1.7).round() as u64, "HashExpected": (per_chip * 1.7).round() as u64,
                "HashMin": 91, "Healthy": if ghs > 0.0 { "Y" } else { "Unknown" },
                "IsChecking": false, "Row": c / 4,
                "Score": num(wobble * 100.0, 2), "When": when_ms
            })
        })
        .collect()
}
