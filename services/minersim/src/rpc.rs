//! The cgminer-style RPC on port 4028, shared by all three firmwares.
//!
//! Like cgminer, one connection carries one request: JSON (`{"command":"summary",
//! "parameter":"0"}`) or plain text (`summary|0`), ended by a newline, a NUL, the end of the
//! JSON object or the client half-closing. The reply is JSON followed by a NUL, then the
//! connection closes. `cmd1+cmd2` runs several read commands and nests their replies under
//! their names, as cgminer does.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::model::Firmware;
use crate::net::{Front, deliver, hold};
use crate::sim::Delivery;
use crate::wire;

/// Largest request accepted.
const MAX_REQUEST: usize = 64 * 1024;
/// Most commands in one `a+b+c` request.
const MAX_MULTI: usize = 10;

/// A parsed RPC request.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RpcRequest {
    /// The command name, lowercased.
    pub command: String,
    /// The parameter as text (`"sid,sleep"`, `"0"`), if any.
    pub parameter: Option<String>,
    /// Bitmain's top-level `new_api` flag.
    pub new_api: bool,
    /// The whole request object, for firmware that reads other keys.
    pub raw: Value,
}

impl RpcRequest {
    /// Parses a request, JSON or plain text.
    pub fn parse(bytes: &[u8]) -> Option<RpcRequest> {
        let text = String::from_utf8_lossy(bytes);
        let text = text.trim_matches(|c: char| c == '\0' || c.is_whitespace());
        if text.starts_with('{') {
            let raw: Value = serde_json::from_str(text).ok()?;
            let command = raw
                .get("command")
                .or_else(|| raw.get("cmd"))?
                .as_str()?
                .trim()
                .to_ascii_lowercase();
            let parameter = raw
                .get("parameter")
                .or_else(|| raw.get("param"))
                .map(|p| match p {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                });
            let new_api = raw.get("new_api").is_some_and(|v| {
                v.as_bool().unwrap_or(false) || v.as_str().is_some_and(|s| s == "true")
            });
            Some(RpcRequest {
                command,
                parameter,
                new_api,
                raw,
            })
        } else if text.is_empty() {
            None
        } else {
            let (command, parameter) = match text.split_once('|') {
                Some((c, p)) => (c, Some(p.to_owned())),
                None => (text, None),
            };
            Some(RpcRequest {
                command: command.trim().to_ascii_lowercase(),
                parameter,
                new_api: false,
                raw: Value::Null,
            })
        }
    }

    /// The same request with another command name (for the parts of `a+b`).
    fn with_command(&self, command: &str) -> RpcRequest {
        RpcRequest {
            command: command.to_owned(),
            ..self.clone()
        }
    }
}

/// Reads one request: until a terminator, a complete JSON object, or the client half-closes.
pub(crate) async fn read_request(stream: &mut TcpStream, timeout: Duration) -> Option<Vec<u8>> {
    let read = async {
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 2048];
        loop {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return (!buf.is_empty()).then_some(buf);
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.iter().position(|&b| b == b'\n' || b == 0) {
                buf.truncate(end);
                return Some(buf);
            }
            let trimmed = buf.trim_ascii_start();
            if trimmed.first() == Some(&b'{') {
                if serde_json::from_slice::<Value>(trimmed).is_ok() {
                    return Some(buf);
                }
            } else {
                // Plain-text commands come in one write, as cgminer assumes.
                return Some(buf);
            }
            if buf.len() > MAX_REQUEST {
                return None;
            }
        }
    };
    tokio::time::timeout(timeout, read).await.ok().flatten()
}

/// Serves one RPC connection.
pub(crate) async fn serve(front: &Front, idx: u32, mut stream: TcpStream) {
    let Some(bytes) = read_request(&mut stream, front.core.limits.read_timeout).await else {
        return;
    };
    let plan = front.core.reply_plan(idx);
    if plan.delivery == Delivery::NoAnswer {
        hold(front, &mut stream).await;
        return;
    }
    let firmware = front.core.miner(idx).plate.model.firmware();
    let reply = match RpcRequest::parse(&bytes) {
        Some(req) => {
            if matches!(req.command.as_str(), "version" | "devdetails") {
                front.core.count_probe(idx);
            }
            answer(front, idx, firmware, &req)
        }
        None => invalid_json(front, idx, firmware),
    };
    let mut out = wire::to_bytes(&reply);
    if firmware != Firmware::WhatsminerV3 {
        out.push(0);
    }
    let _ = deliver(front, &mut stream, plan, &out).await;
}

fn answer(front: &Front, idx: u32, firmware: Firmware, req: &RpcRequest) -> Value {
    let single = |req: &RpcRequest| match firmware {
        Firmware::WhatsminerV3 => crate::whatsminer::rpc(front, idx, req),
        Firmware::AntminerStock => crate::antminer::rpc(front, idx, req),
        Firmware::LuxOs => crate::luxos::rpc(front, idx, req),
    };
    if firmware == Firmware::WhatsminerV3 || !req.command.contains('+') {
        return single(req);
    }
    let parts: Vec<&str> = req.command.split('+').filter(|c| !c.is_empty()).collect();
    let when = front.core.clock.unix_secs(front.core.clock.now());
    if parts.len() > MAX_MULTI || parts.iter().any(|c| !is_read_only(firmware, c)) {
        let desc = description(firmware);
        return json!({
            "STATUS": [{"STATUS": "E", "When": when, "Code": 45,
                        "Msg": "Invalid command in multi", "Description": desc}],
            "id": 1
        });
    }
    let mut out = serde_json::Map::new();
    for part in parts {
        out.insert(part.to_owned(), json!([single(&req.with_command(part))]));
    }
    out.insert("id".to_owned(), json!(1));
    Value::Object(out)
}

fn is_read_only(firmware: Firmware, command: &str) -> bool {
    match firmware {
        Firmware::LuxOs => crate::luxos::is_read_only(command),
        _ => matches!(
            command,
            "version" | "summary" | "stats" | "pools" | "devs" | "devdetails" | "estats"
        ),
    }
}

fn description(firmware: Firmware) -> &'static str {
    match firmware {
        Firmware::LuxOs => crate::luxos::DESCRIPTION,
        _ => crate::antminer::DESCRIPTION,
    }
}

fn invalid_json(front: &Front, _idx: u32, firmware: Firmware) -> Value {
    let when = front.core.clock.unix_secs(front.core.clock.now());
    match firmware {
        Firmware::WhatsminerV3 => json!({
            "STATUS": "E", "When": when, "Code": 23, "Msg": "invalid JSON message", "Description": ""
        }),
        _ => json!({
            "STATUS": [{"STATUS": "E", "When": when, "Code": 23,
                        "Msg": "Invalid JSON", "Description": description(firmware)}],
            "id": 1
        }),
    }
}

/// The `STATUS` array of a cgminer reply.
pub(crate) fn status(kind: &str, when: i64, code: u32, msg: &str, description: &str) -> Value {
    json!([{"STATUS": kind, "When": when, "Code": code, "Msg": msg, "Description": description}])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(input: &str, command: &str, parameter: Option<&str>, new_api: bool) {
        let req = RpcRequest::parse(input.as_bytes()).expect("parses");
        assert_eq!(req.command, command);
        assert_eq!(req.parameter.as_deref(), parameter);
        assert_eq!(req.new_api, new_api);
    }

    #[test]
    fn parses_the_request_shapes_clients_send() {
        check(r#"{"command":"version"}"#, "version", None, false);
        check(
            "{\"command\":\"stats\",\"new_api\":true}\n",
            "stats",
            None,
            true,
        );
        check(
            r#"{"command":"curtail","parameter":"abc,sleep"}"#,
            "curtail",
            Some("abc,sleep"),
            false,
        );
        check(r#"{"cmd":"get_version"}"#, "get_version", None, false);
        check(
            r#"{"command":"healthchipget","parameter":0}"#,
            "healthchipget",
            Some("0"),
            false,
        );
        check("summary|0", "summary", Some("0"), false);
        check("SUMMARY+Pools", "summary+pools", None, false);
        assert!(RpcRequest::parse(b"{\"nope\":1}").is_none());
        assert!(RpcRequest::parse(b"").is_none());
    }
}
