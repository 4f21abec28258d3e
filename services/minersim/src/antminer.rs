//! Antminer stock firmware (2023-07 generation): the bmminer RPC on 4028 and the CGI pages on 80.
//!
//! Sleep and wake go through the web UI's `set_miner_conf.cgi` (`miner-mode` /
//! `bitmain-work-mode`: 0 normal, 1 sleep, 2 high, 3 low), which is persisted in the miner's
//! configuration; telemetry is on both the RPC (`summary`, `stats`) and the CGI pages. There is
//! no power limit on stock firmware, only the work modes.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{any, get, post};
use serde_json::{Map, Value, json};

use crate::model::{BOARDS, Model};
use crate::net::Front;
use crate::physics::PerfMode;
use crate::rpc::{RpcRequest, status};
use crate::sim::{Command, SimCore, Telemetry};
use crate::web::{MinerIdx, WebState, json_response};
use crate::wire::{int, int_text, num};

/// `Description` in every RPC status.
pub(crate) const DESCRIPTION: &str = "cgminer 1.0.0";
const BMMINER: &str = "1.0.0";
const API: &str = "3.1";

fn miner_version(model: Model) -> &'static str {
    match model {
        Model::S21 => "58.0.1.4",
        _ => "49.0.1.3",
    }
}

/// The `miner-mode` value for the state the miner was told to be in.
fn work_mode(t: &Telemetry) -> u8 {
    match (t.sleeping, t.perf) {
        (true, _) => 1,
        (false, PerfMode::Normal) => 0,
        (false, PerfMode::High) => 2,
        (false, PerfMode::Low) => 3,
    }
}

/// Answers one RPC command.
pub(crate) fn rpc(front: &Front, idx: u32, req: &RpcRequest) -> Value {
    let core = &front.core;
    let t = core.telemetry(idx);
    let spec = t.model.spec();
    let ok = |code: u32, msg: &str| status("S", t.when, code, msg, DESCRIPTION);
    let info = json!({
        "BMMiner": BMMINER, "Miner": miner_version(t.model),
        "CompileTime": spec.firmware_build, "Type": spec.name
    });
    match req.command.as_str() {
        "version" => {
            let mut v = info.clone();
            v["API"] = json!(API);
            json!({"STATUS": ok(22, "CGMiner versions"), "VERSION": [v], "id": 1})
        }
        "summary" if req.new_api => json!({
            "STATUS": new_api_status(&t, "summary"),
            "INFO": new_api_info(&t),
            "SUMMARY": [new_api_summary(&t)],
        }),
        "summary" => json!({"STATUS": ok(11, "Summary"), "SUMMARY": [summary(&t)], "id": 1}),
        "stats" if req.new_api => json!({
            "STATUS": new_api_status(&t, "stats"),
            "INFO": new_api_info(&t),
            "STATS": [new_api_stats(core, idx, &t)],
        }),
        "stats" => json!({
            "STATUS": ok(70, "CGMiner stats"),
            "STATS": [info, stats(core, idx, &t)],
            "id": 1
        }),
        "pools" => json!({
            "STATUS": ok(7, "3 Pool(s)"),
            "POOLS": pools(core, idx, &t),
            "id": 1
        }),
        "devs" => json!({
            "STATUS": ok(9, "1 ASC(s)"),
            "DEVS": [{
                "ASC": 0, "Name": "BTM_SOC", "ID": 0, "Enabled": "Y",
                "Status": if t.sleeping { "Dead" } else { "Alive" },
                "Temperature": num(t.chip_avg_c(), 1),
                "MHS av": num(t.hash_avg_ths * 1e6, 2), "MHS 5s": num(t.hash_ths * 1e6, 2),
                "Accepted": t.accepted, "Rejected": t.rejected, "Hardware Errors": t.hw_errors,
                "Utility": num(t.accepted as f64 * 60.0 / t.uptime_s.max(1) as f64, 2),
                "Last Share Pool": 0, "Last Share Time": t.when - 3,
                "Total MH": num(t.hash_avg_ths * 1e6 * t.uptime_s as f64, 0),
                "Diff1 Work": 0, "Difficulty Accepted": (t.accepted * 524_288) as f64,
                "Difficulty Rejected": (t.rejected * 524_288) as f64,
                "Last Share Difficulty": 524_288.0, "Last Valid Work": t.when - 3,
                "Device Hardware%": 0.0, "Device Rejected%": 0.0, "Device Elapsed": t.uptime_s
            }],
            "id": 1
        }),
        "devdetails" => json!({
            "STATUS": ok(69, "Device Details"),
            "DEVDETAILS": [{
                "DEVDETAILS": 0, "Name": "BTM_SOC", "ID": 0, "Driver": "bitmain_soc",
                "Kernel": "", "Model": "", "Device Path": ""
            }],
            "id": 1
        }),
        _ => json!({
            "STATUS": status("E", t.when, 14, "Invalid command", DESCRIPTION),
            "id": 1
        }),
    }
}

fn summary(t: &Telemetry) -> Value {
    json!({
        "Elapsed": t.uptime_s,
        "GHS 5s": num(t.hash_ths * 1000.0, 2),
        "GHS av": num(t.hash_avg_ths * 1000.0, 2),
        "GHS 30m": num(t.hash_30m_ths * 1000.0, 2),
        "Found Blocks": 0,
        "Getwork": t.accepted / 4 + 7,
        "Accepted": t.accepted,
        "Rejected": t.rejected,
        "Hardware Errors": t.hw_errors,
        "Utility": num(t.accepted as f64 * 60.0 / t.uptime_s.max(1) as f64, 2),
        "Discarded": t.accepted * 3,
        "Stale": t.rejected / 3,
        "Get Failures": 1,
        "Local Work": t.accepted * 9,
        "Remote Failures": 0,
        "Network Blocks": t.uptime_s / 600,
        "Total MH": num(t.hash_avg_ths * 1e6 * t.uptime_s as f64, 0),
        "Work Utility": num(t.hash_avg_ths * 14_000.0, 2),
        "Difficulty Accepted": (t.accepted * 524_288) as f64,
        "Difficulty Rejected": (t.rejected * 524_288) as f64,
        "Difficulty Stale": 0.0,
        "Best Share": t.best_share,
        "Device Hardware%": 0.0,
        "Device Rejected%": 0.0,
        "Pool Rejected%": num(t.rejected as f64 * 100.0 / t.accepted.max(1) as f64, 4),
        "Pool Stale%": 0.0,
        "Last getwork": t.when
    })
}

fn dash4(values: [f64; 4]) -> String {
    values
        .iter()
        .map(|v| format!("{}", v.round() as i64))
        .collect::<Vec<_>>()
        .join("-")
}

fn acs(chips: u16) -> String {
    let mut s = String::with_capacity(usize::from(chips) + usize::from(chips) / 8 + 1);
    for i in 0..chips {
        if i % 8 == 0 {
            s.push(' ');
        }
        s.push('o');
    }
    s
}

fn stats(core: &SimCore, idx: u32, t: &Telemetry) -> Value {
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_owned(), v);
    };
    put("STATS", json!(0));
    put("ID", json!("BTM_SOC0"));
    put("Elapsed", json!(t.uptime_s));
    put("Calls", json!(0));
    put("Wait", json!(0.0));
    put("Max", json!(0.0));
    put("Min", json!(99_999_999.0));
    put("GHS 5s", num(t.hash_ths * 1000.0, 2));
    put("GHS av", num(t.hash_avg_ths * 1000.0, 2));
    put("rate_30m", num(t.hash_30m_ths * 1000.0, 2));
    put("Mode", json!(2));
    put("miner_count", json!(BOARDS));
    put("frequency", json!(t.model.spec().freq_mhz));
    put("fan_num", json!(4));
    for (i, rpm) in t.fans_rpm.iter().enumerate() {
        put(&format!("fan{}", i + 1), json!(rpm));
    }
    put("temp_num", json!(BOARDS));
    for (i, b) in t.boards.iter().enumerate() {
        let n = i + 1;
        put(&format!("temp{n}"), int(b.pcb_out_c));
        put(&format!("temp2_{n}"), int(b.chip_max_c));
        put(
            &format!("temp_pcb{n}"),
            json!(dash4([
                b.pcb_out_c,
                b.pcb_in_c,
                b.pcb_in_c + 19.0,
                b.pcb_out_c - 1.0
            ])),
        );
        put(
            &format!("temp_chip{n}"),
            json!(dash4([
                b.chip_max_c,
                b.chip_min_c,
                b.chip_avg_c,
                b.chip_avg_c + 1.0
            ])),
        );
        put(
            &format!("temp_pic{n}"),
            json!(dash4([
                b.pcb_out_c - 10.0,
                b.pcb_in_c - 10.0,
                b.pcb_in_c + 9.0,
                b.pcb_out_c - 11.0
            ])),
        );
        put(&format!("chain_acn{n}"), json!(b.chips));
        put(&format!("chain_acs{n}"), json!(acs(b.chips)));
        put(&format!("chain_hw{n}"), json!(t.hw_errors / BOARDS as u64));
        put(
            &format!("chain_rate{n}"),
            json!(format!("{:.2}", b.hash_ths * 1000.0)),
        );
        put(&format!("freq{n}"), json!(b.freq_mhz.round() as u64));
    }
    // The fourth chain slot exists on the controller but is empty.
    put("temp_pcb4", json!("0-0-0-0"));
    put("temp_chip4", json!("0-0-0-0"));
    put("temp_pic4", json!("0-0-0-0"));
    put("chain_acn4", json!(0));
    put("chain_acs4", json!(""));
    put("chain_hw4", json!(0));
    put("chain_rate4", json!(""));
    put("freq4", json!(0));
    put("temp_max", int(t.chip_max_c()));
    put("total_rateideal", num(t.ideal_ths * 1000.0, 2));
    put("rate_unit", json!("GH"));
    put("total_freqavg", json!(t.model.spec().freq_mhz));
    put(
        "total_acn",
        json!(u64::from(t.model.spec().chips_per_board) * BOARDS as u64),
    );
    put("total rate", num(t.hash_avg_ths * 1000.0, 2));
    put("no_matching_work", json!(t.hw_errors));
    put("chain_power", json!(format!("{} W", int_text(t.power_w))));
    put("miner_version", json!(miner_version(t.model)));
    put("miner_id", json!(format!("{:016x}", core.ident(idx, 7))));
    Value::Object(m)
}

fn new_api_status(t: &Telemetry, msg: &str) -> Value {
    json!({"STATUS": "S", "when": t.when, "Msg": msg, "api_version": "1.0.0"})
}

fn new_api_info(t: &Telemetry) -> Value {
    let spec = t.model.spec();
    json!({
        "miner_version": miner_version(t.model),
        "CompileTime": spec.firmware_build,
        "type": spec.name
    })
}

fn status_list(t: &Telemetry) -> Value {
    let fans_ok = t.fans_rpm.iter().all(|&r| r > 0);
    json!([
        {"type": "rate", "status": "s", "code": 0, "msg": ""},
        {"type": "network", "status": "s", "code": 0, "msg": ""},
        {"type": "fans", "status": if fans_ok { "s" } else { "e" }, "code": 0, "msg": ""},
        {"type": "temp", "status": if t.chip_max_c() < 95.0 { "s" } else { "w" }, "code": 0, "msg": ""}
    ])
}

fn new_api_summary(t: &Telemetry) -> Value {
    json!({
        "elapsed": t.uptime_s,
        "rate_5s": num(t.hash_ths * 1000.0, 2),
        "rate_30m": num(t.hash_30m_ths * 1000.0, 2),
        "rate_avg": num(t.hash_avg_ths * 1000.0, 2),
        "rate_ideal": num(t.ideal_ths * 1000.0, 2),
        "rate_unit": "GH/s",
        "hw_all": t.hw_errors,
        "bestshare": t.best_share,
        "status": status_list(t)
    })
}

fn new_api_stats(core: &SimCore, idx: u32, t: &Telemetry) -> Value {
    let spec = t.model.spec();
    let chains: Vec<Value> = t
        .boards
        .iter()
        .enumerate()
        .map(|(i, b)| {
            json!({
                "index": i,
                "freq_avg": b.freq_mhz.round() as u64,
                "rate_ideal": num(b.ideal_ths * 1000.0, 2),
                "rate_real": num(b.hash_ths * 1000.0, 2),
                "asic_num": b.chips,
                "temp_pic": [int(b.pcb_out_c - 10.0), int(b.pcb_in_c - 10.0), int(b.pcb_in_c + 9.0), int(b.pcb_out_c - 11.0)],
                "temp_pcb": [int(b.pcb_out_c), int(b.pcb_in_c), int(b.pcb_in_c + 19.0), int(b.pcb_out_c - 1.0)],
                "temp_chip": [int(b.chip_max_c), int(b.chip_min_c), int(b.chip_avg_c), int(b.chip_avg_c + 1.0)],
                "hw": t.hw_errors / BOARDS as u64,
                "eeprom_loaded": true,
                "sn": core.serial(idx, 20 + i as u64, "", 17),
                "hwp": 0.0
            })
        })
        .collect();
    json!({
        "elapsed": t.uptime_s,
        "rate_5s": num(t.hash_ths * 1000.0, 2),
        "rate_30m": num(t.hash_30m_ths * 1000.0, 2),
        "rate_avg": num(t.hash_avg_ths * 1000.0, 2),
        "rate_ideal": num(t.ideal_ths * 1000.0, 2),
        "rate_unit": "GH/s",
        "chain_num": BOARDS,
        "fan_num": 4,
        "fan": t.fans_rpm,
        "hwp_total": 0.0,
        "miner-mode": work_mode(t),
        "freq-level": 100,
        "power": int(t.power_w),
        "chain": chains,
        "freq": spec.freq_mhz
    })
}

/// Pool URL and worker for this miner.
pub(crate) fn pool_setup(core: &SimCore, idx: u32) -> (Vec<String>, String) {
    let m = core.miner(idx);
    let site = &core.sites[usize::from(m.plate.site)].name;
    let site_slug: String = site
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let [_, a, b, c] = m.address.octets();
    (
        vec![
            "stratum+tcp://btc.pool.example:3333".to_owned(),
            "stratum+tcp://btc-eu.pool.example:3333".to_owned(),
            "stratum+tcp://btc-backup.pool.example:443".to_owned(),
        ],
        format!("ebb.{site_slug}x{a}x{b}x{c}"),
    )
}

fn pools(core: &SimCore, idx: u32, t: &Telemetry) -> Value {
    let (urls, user) = pool_setup(core, idx);
    let list: Vec<Value> = urls
        .iter()
        .enumerate()
        .map(|(i, url)| {
            let active = i == 0;
            let accepted = if active { t.accepted } else { 0 };
            let host = url.trim_start_matches("stratum+tcp://");
            json!({
                "POOL": i, "URL": url, "Status": "Alive", "Priority": i, "Quota": 1,
                "Long Poll": "N", "Getworks": if active { t.accepted / 4 + 7 } else { 3 },
                "Accepted": accepted, "Rejected": if active { t.rejected } else { 0 },
                "Discarded": if active { t.accepted * 3 } else { 0 },
                "Stale": 0, "Get Failures": 0, "Remote Failures": 0,
                "User": user,
                "Last Share Time": if active { "0:00:03" } else { "0" },
                "Diff": if active { "524K" } else { "" },
                "Diff1 Shares": 0, "Proxy Type": "", "Proxy": "",
                "Difficulty Accepted": (accepted * 524_288) as f64,
                "Difficulty Rejected": 0.0, "Difficulty Stale": 0.0,
                "Last Share Difficulty": if active { 524_288.0 } else { 0.0 },
                "Has Stratum": true, "Stratum Active": active,
                "Stratum URL": if active { host.split(':').next().unwrap_or_default() } else { "" },
                "Has GBT": false,
                "Best Share": if active { t.best_share } else { 0 },
                "Pool Rejected%": 0.0, "Pool Stale%%": 0.0
            })
        })
        .collect();
    Value::Array(list)
}

// --- CGI pages ---------------------------------------------------------------------------

/// The CGI routes; the digest layer in `web` protects all of them.
pub(crate) fn router() -> Router<WebState> {
    Router::new()
        .route("/", get(index))
        .route("/cgi-bin/miner_type.cgi", get(miner_type))
        .route("/cgi-bin/summary.cgi", get(summary_cgi))
        .route("/cgi-bin/stats.cgi", get(stats_cgi))
        .route("/cgi-bin/pools.cgi", get(pools_cgi))
        .route("/cgi-bin/get_system_info.cgi", get(system_info))
        .route("/cgi-bin/get_network_info.cgi", get(network_info))
        .route("/cgi-bin/get_miner_conf.cgi", get(get_miner_conf))
        .route("/cgi-bin/set_miner_conf.cgi", post(set_miner_conf))
        .route("/cgi-bin/get_blink_status.cgi", get(blink_status))
        .route("/cgi-bin/blink.cgi", post(blink))
        .route("/cgi-bin/reboot.cgi", any(reboot))
        .route("/cgi-bin/log.cgi", get(log))
}

async fn index(
    State(st): State<WebState>,
    Extension(MinerIdx(idx)): Extension<MinerIdx>,
) -> Html<String> {
    let name = st.core.miner(idx).plate.model.spec().name;
    Html(format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{name}</title></head>\
         <body><div id=\"app\">{name}</div><script src=\"/js/app.js\"></script></body></html>"
    ))
}

async fn miner_type(
    State(st): State<WebState>,
    Extension(MinerIdx(idx)): Extension<MinerIdx>,
) -> Response {
    let spec = st.core.miner(idx).plate.model.spec();
    json_response(
        &json!({"miner_type": spec.name, "subtype": spec.control_board, "fw_version": ""}),
    )
}

async fn summary_cgi(
    State(st): State<WebState>,
    Extension(MinerIdx(idx)): Extension<MinerIdx>,
) -> Response {
    let t = st.core.telemetry(idx);
    json_response(&json!({
        "STATUS": new_api_status(&t, "summary"),
        "INFO": new_api_info(&t),
        "SUMMARY": [new_api_summary(&t)]
    }))
}

async fn stats_cgi(
    State(st): State<WebState>,
    Extension(MinerIdx(idx)): Extension<MinerIdx>,
) -> Response {
    let t = st.core.telemetry(idx);
    json_response(&json!({
        "STATUS": new_api_status(&t, "stats"),
        "INFO": new_api_info(&t),
        "STATS": [new_api_stats(&st.core, idx, &t)]
    }))
}

async fn pools_cgi(
    State(st): State<WebState>,
    Extension(MinerIdx(idx)): Extension<MinerIdx>,
) -> Response {
    let t = st.core.telemetry(idx);
    let pools: Vec<Value> = pools(&st.core, idx, &t)
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            json!({
                "index": p["POOL"], "url": p["URL"], "user": p["User"],
                "status": p["Status"],
                "priority": p["Priority"], "getworks": p["Getworks"],
                "accepted": p["Accepted"], "rejected": p["Rejected"], "discarded": p["Discarded"],
                "stale": 0, "diff": p["Diff"], "diff1": 0, "diffa": p["Difficulty Accepted"],
                "diffr": 0.0, "diffs": 0.0, "lsdiff": p["Last Share Difficulty"], "lstime": p["Last Share Time"]
            })
        })
        .collect();
    json_response(&json!({
        "STATUS": new_api_status(&t, "pools"),
        "INFO": new_api_info(&t),
        "POOLS": pools
    }))
}

async fn system_info(
    State(st): State<WebState>,
    Extension(MinerIdx(idx)): Extension<MinerIdx>,
) -> Response {
    let core = &st.core;
    let m = core.miner(idx);
    let spec = m.plate.model.spec();
    json_response(&json!({
        "minertype": spec.name,
        "nettype": "DHCP",
        "netdevice": "eth0",
        "macaddr": core.mac(idx),
        "hostname": "Antminer",
        "ipaddress": m.address.to_string(),
        "netmask": "255.255.255.0",
        "gateway": "",
        "dnsservers": "",
        "system_mode": "GNU/Linux",
        "system_kernel_version": "Linux 4.9.113 #1 SMP PREEMPT Mon Jul 10 11:02:31 CST 2023",
        "system_filesystem_version": spec.firmware_build,
        "firmware_type": "Release",
        "serinum": core.serial(idx, 3, "", 17)
    }))
}

async fn network_info(
    State(st): State<WebState>,
    Extension(MinerIdx(idx)): Extension<MinerIdx>,
) -> Response {
    let core = &st.core;
    let m = core.miner(idx);
    json_response(&json!({
        "nettype": "DHCP",
        "netdevice": "eth0",
        "macaddr": core.mac(idx),
        "ipaddress": m.address.to_string(),
        "netmask": "255.255.255.0",
        "conf_nettype": "DHCP",
        "conf_hostname": "Antminer",
        "conf_ipaddress": "",
        "conf_netmask": "",
        "conf_gateway": "",
        "conf_dnsservers": ""
    }))
}

fn miner_conf(core: &Arc<SimCore>, idx: u32) -> Value {
    let t = core.telemetry(idx);
    let (urls, user) = pool_setup(core, idx);
    let pools: Vec<Value> = urls
        .iter()
        .map(|u| json!({"url": u, "user": user, "pass": "x"}))
        .collect();
    let mode = work_mode(&t);
    json!({
        "pools": pools,
        "api-listen": true,
        "api-network": true,
        "api-groups": "A:stats:pools:devs:summary:version",
        "api-allow": "A:0/0,W:*",
        "bitmain-fan-ctrl": false,
        "bitmain-fan-pwm": "100",
        "bitmain-use-vil": true,
        "bitmain-freq": t.model.spec().freq_mhz.to_string(),
        "bitmain-voltage": "1360",
        "bitmain-ccdelay": "0",
        "bitmain-pwth": "0",
        "bitmain-work-mode": mode.to_string(),
        "bitmain-freq-level": "100",
        "miner-mode": mode
    })
}

async fn get_miner_conf(
    State(st): State<WebState>,
    Extension(MinerIdx(idx)): Extension<MinerIdx>,
) -> Response {
    json_response(&miner_conf(&st.core, idx))
}

fn mode_from(v: &Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
}

fn conf_result(code: &str, ok: bool) -> Response {
    json_response(&json!({
        "stats": if ok { "success" } else { "error" },
        "code": code,
        "msg": if ok { "OK!" } else { "FAIL!" }
    }))
}

async fn set_miner_conf(
    State(st): State<WebState>,
    Extension(MinerIdx(idx)): Extension<MinerIdx>,
    body: Bytes,
) -> Response {
    let Ok(conf) = serde_json::from_slice::<Value>(&body) else {
        return conf_result("M001", false);
    };
    if !conf.is_object() {
        return conf_result("M001", false);
    }
    let mode = conf
        .get("miner-mode")
        .or_else(|| conf.get("bitmain-work-mode"))
        .map(mode_from);
    let command = match mode {
        None => None,
        Some(Some(0)) => Some(Command::WorkMode {
            sleep: false,
            perf: PerfMode::Normal,
        }),
        Some(Some(1)) => Some(Command::WorkMode {
            sleep: true,
            perf: PerfMode::Normal,
        }),
        Some(Some(2)) => Some(Command::WorkMode {
            sleep: false,
            perf: PerfMode::High,
        }),
        Some(Some(3)) => Some(Command::WorkMode {
            sleep: false,
            perf: PerfMode::Low,
        }),
        Some(_) => return conf_result("M001", false),
    };
    // Sleep keeps the work mode it had; only the asleep/awake part applies.
    let command = match command {
        Some(Command::WorkMode { sleep: true, .. }) => Some(Command::Sleep),
        other => other,
    };
    match command.map(|c| st.core.command(idx, c)) {
        None | Some(Ok(())) => conf_result("M000", true),
        Some(Err(_)) => conf_result("M001", false),
    }
}

async fn blink_status(
    State(st): State<WebState>,
    Extension(MinerIdx(idx)): Extension<MinerIdx>,
) -> Response {
    let led = st.core.telemetry(idx).led;
    json_response(&json!({"blink": led}))
}

async fn blink(
    State(st): State<WebState>,
    Extension(MinerIdx(idx)): Extension<MinerIdx>,
    body: Bytes,
) -> Response {
    let on = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("blink").cloned())
        .is_some_and(|v| v.as_bool().unwrap_or(false) || v.as_str() == Some("true"));
    let _ = st.core.command(idx, Command::Led(on));
    json_response(&json!({"code": if on { "B000" } else { "B100" }}))
}

async fn reboot(
    State(st): State<WebState>,
    Extension(MinerIdx(idx)): Extension<MinerIdx>,
) -> Response {
    let _ = st.core.command(idx, Command::Reboot);
    json_response(&json!({"stats": "success", "code": "R000", "msg": "OK!"}))
}

async fn log(
    State(st): State<WebState>,
    Extension(MinerIdx(idx)): Extension<MinerIdx>,
) -> impl IntoResponse {
    let t = st.core.telemetry(idx);
    let text = format!(
        "{} Miner started, elapsed {} s\n{} chain power {} W, rate {:.2} GH/s\n",
        t.when - t.uptime_s as i64,
        t.uptime_s,
        t.when,
        int_text(t.power_w),
        t.hash_ths * 1000.0
    );
    (StatusCode::OK, text)
}
