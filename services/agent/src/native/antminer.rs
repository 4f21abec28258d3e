//! Stock Antminer's CGI on port 80 for sleep and wake: `get_miner_conf.cgi` (the work mode, and
//! the configuration a write must send back whole), then `set_miner_conf.cgi` with
//! `miner-mode`/`bitmain-work-mode` 1 (sleep) or 0 (normal), behind HTTP digest auth (MD5,
//! `qop=auth`, root/root).
//!
//! HTTP/1.1 is spoken directly, one request per connection, so no HTTP client (and no
//! certificate store) is built per miner. The last digest challenge of each miner is kept, so
//! a call answers it at once instead of being challenged first; a stale or unknown nonce costs
//! one more round trip.

use super::io;
use crate::driver::MinerError;
use md5::{Digest, Md5};
use serde_json::Value;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};

const PORT: u16 = 80;
const USER: &str = "root";
const PASSWORD: &str = "root";

/// Whether a stock Antminer compiled at `compiled` (`Mon Dec 11 15:26:02 CST 2023`) is the
/// 2023-07 web API generation, whose CGI this module speaks.
pub fn compiled_from_2023_07(compiled: &str) -> bool {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let words: Vec<String> = compiled
        .split_whitespace()
        .map(str::to_ascii_lowercase)
        .collect();
    let year = words.iter().rev().find_map(|w| w.parse::<u32>().ok());
    let month = words
        .iter()
        .find_map(|w| MONTHS.iter().position(|m| w.starts_with(m)));
    match (year, month) {
        (Some(y), Some(m)) => (y, m + 1) >= (2023, 7),
        (Some(y), None) => y >= 2024,
        _ => false,
    }
}

/// A miner's last digest challenge.
#[derive(Clone, Debug)]
struct Challenge {
    realm: String,
    nonce: String,
    opaque: Option<String>,
    /// Requests answered with this nonce so far (the `nc` count).
    count: u32,
}

/// The last challenge of each miner, bounded.
#[derive(Debug)]
pub struct DigestCache {
    challenges: Mutex<HashMap<IpAddr, Challenge>>,
    max: usize,
}

impl DigestCache {
    pub fn new(max: usize) -> Self {
        Self {
            challenges: Mutex::new(HashMap::new()),
            max: max.max(1),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Challenge>> {
        self.challenges
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The challenge to answer next, with its count advanced.
    fn next(&self, ip: IpAddr) -> Option<Challenge> {
        let mut map = self.map();
        let c = map.get_mut(&ip)?;
        c.count += 1;
        Some(c.clone())
    }

    fn store(&self, ip: IpAddr, challenge: Challenge) {
        let mut map = self.map();
        if map.len() < self.max || map.contains_key(&ip) {
            map.insert(ip, challenge);
        }
    }
}

fn md5_hex(text: &str) -> String {
    let digest = Md5::digest(text.as_bytes());
    let mut out = String::with_capacity(32);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The `Authorization` header answering `c` for `method uri`.
fn authorization(c: &Challenge, method: &str, uri: &str, cnonce: &str) -> String {
    let ha1 = md5_hex(&format!("{USER}:{}:{PASSWORD}", c.realm));
    let ha2 = md5_hex(&format!("{method}:{uri}"));
    let nc = format!("{:08x}", c.count);
    let response = md5_hex(&format!("{ha1}:{}:{nc}:{cnonce}:auth:{ha2}", c.nonce));
    let mut header = format!(
        "Digest username=\"{USER}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", algorithm=MD5, response=\"{response}\", qop=auth, nc={nc}, cnonce=\"{cnonce}\"",
        c.realm, c.nonce
    );
    if let Some(opaque) = &c.opaque {
        header.push_str(&format!(", opaque=\"{opaque}\""));
    }
    header
}

/// The parameters of a `WWW-Authenticate: Digest …` header.
fn parse_challenge(header: &str) -> Option<Challenge> {
    let rest = header.trim().strip_prefix("Digest")?;
    let mut params = HashMap::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let (key, after) = s.split_once('=')?;
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim(), &after[end..])
        };
        params.insert(key, value.to_owned());
        s = next.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
    }
    Some(Challenge {
        realm: params.remove("realm")?,
        nonce: params.remove("nonce")?,
        opaque: params.remove("opaque"),
        count: 0,
    })
}

/// One HTTP response, read to the end of the connection.
struct Response {
    status: u16,
    challenge: Option<Challenge>,
    body: Vec<u8>,
}

fn parse_response(raw: &[u8]) -> Result<Response, MinerError> {
    let bad = |why: &str| MinerError::InvalidReply(format!("http: {why}"));
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| bad("headers not utf-8"))?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let mut challenge = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim().to_ascii_lowercase();
        if name == "www-authenticate" {
            challenge = parse_challenge(value);
        } else if name == "transfer-encoding" && value.to_ascii_lowercase().contains("chunked") {
            chunked = true;
        }
    }
    let mut body = raw[split + 4..].to_vec();
    if chunked {
        body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    }
    Ok(Response {
        status,
        challenge,
        body,
    })
}

fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len());
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&raw[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
}

/// Sends one request on its own connection and reads the whole response.
async fn exchange(
    ip: IpAddr,
    method: &str,
    uri: &str,
    auth: Option<&str>,
    body: Option<&[u8]>,
) -> Result<Response, MinerError> {
    let mut request = format!("{method} {uri} HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\n");
    if let Some(auth) = auth {
        request.push_str(&format!("Authorization: {auth}\r\n"));
    }
    if let Some(body) = body {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    if let Some(body) = body {
        bytes.extend_from_slice(body);
    }
    let mut stream = io::connect(ip, PORT).await?;
    io::send(&mut stream, &bytes).await?;
    let raw = read_all(&mut stream).await?;
    parse_response(&raw)
}

async fn read_all(stream: &mut tokio::net::TcpStream) -> Result<Vec<u8>, MinerError> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| io::io_error(&e))?;
        if n == 0 {
            return Ok(buf);
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > io::MAX_REPLY {
            return Err(MinerError::InvalidReply("reply too large".to_owned()));
        }
    }
}

/// A request with digest auth: answers the cached challenge, or the one a 401 brings (once).
async fn request(
    cache: &DigestCache,
    ip: IpAddr,
    method: &str,
    uri: &str,
    body: Option<&[u8]>,
) -> Result<Vec<u8>, MinerError> {
    let cnonce = format!("{:016x}", rand_u64());
    let mut auth = cache
        .next(ip)
        .map(|c| authorization(&c, method, uri, &cnonce));
    for _ in 0..2 {
        let response = exchange(ip, method, uri, auth.as_deref(), body).await?;
        match response.status {
            200..=299 => return Ok(response.body),
            401 => {
                let Some(mut challenge) = response.challenge else {
                    return Err(MinerError::Refused("unauthorized".to_owned()));
                };
                challenge.count = 1;
                auth = Some(authorization(&challenge, method, uri, &cnonce));
                cache.store(ip, challenge);
            }
            status => return Err(MinerError::Refused(format!("http status {status}"))),
        }
    }
    Err(MinerError::Refused(
        "digest authentication failed (wrong credentials?)".to_owned(),
    ))
}

/// A client nonce: the random half of a UUIDv7, unpredictable enough for MD5 digest.
fn rand_u64() -> u64 {
    let id = uuid::Uuid::now_v7();
    let bytes = id.as_bytes();
    u64::from_le_bytes(bytes[8..].try_into().unwrap_or_default())
}

/// The miner's configuration.
pub async fn miner_conf(cache: &DigestCache, ip: IpAddr) -> Result<Value, MinerError> {
    let body = request(cache, ip, "GET", "/cgi-bin/get_miner_conf.cgi", None).await?;
    let conf: Value = io::parse(&body)?;
    if conf.is_object() {
        Ok(conf)
    } else {
        Err(MinerError::InvalidReply(
            "the miner configuration is not an object".to_owned(),
        ))
    }
}

/// Whether the configuration says the miner works: mode 0 (normal), 2 (high) or 3 (low) is
/// mining; 1 (sleep) or 5 is not.
pub fn mining(conf: &Value) -> Option<bool> {
    let mode = ["miner-mode", "bitmain-work-mode"]
        .iter()
        .filter_map(|k| conf.get(k))
        .find_map(|v| {
            v.as_u64()
                .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
        })?;
    Some(!matches!(mode, 1 | 5))
}

/// Sleep (mode 1) or normal work (mode 0), writing back the configuration it read.
pub async fn set_sleep(cache: &DigestCache, ip: IpAddr, sleep: bool) -> Result<(), MinerError> {
    let mut conf = miner_conf(cache, ip).await?;
    let mode = if sleep { "1" } else { "0" };
    if let Some(map) = conf.as_object_mut() {
        map.insert("miner-mode".to_owned(), Value::from(mode));
        map.insert("bitmain-work-mode".to_owned(), Value::from(mode));
    }
    let body = serde_json::to_vec(&conf).map_err(|e| MinerError::InvalidReply(e.to_string()))?;
    let reply = request(
        cache,
        ip,
        "POST",
        "/cgi-bin/set_miner_conf.cgi",
        Some(&body),
    )
    .await?;
    let reply: Value = io::parse(&reply)?;
    match reply.get("code").and_then(Value::as_str) {
        Some("M000") => Ok(()),
        code => Err(MinerError::Refused(format!(
            "set_miner_conf answered {}",
            code.unwrap_or("without a code")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compile_times() {
        assert!(compiled_from_2023_07("Mon Dec 11 15:26:02 CST 2023"));
        assert!(compiled_from_2023_07("Thu Jul 13 16:55:15 CST 2023"));
        assert!(!compiled_from_2023_07("Tue Jan 10 10:00:00 CST 2023"));
        assert!(!compiled_from_2023_07(""));
    }

    #[test]
    fn digest_round_trip() {
        let c = parse_challenge(
            r#"Digest realm="antMiner Configuration", nonce="abc123", qop="auth", opaque="xyz""#,
        )
        .unwrap();
        assert_eq!(
            (c.realm.as_str(), c.nonce.as_str()),
            ("antMiner Configuration", "abc123")
        );
        assert_eq!(c.opaque.as_deref(), Some("xyz"));
        let header = authorization(&Challenge { count: 1, ..c }, "GET", "/cgi-bin/x.cgi", "cn");
        assert!(header.contains("nc=00000001") && header.contains("opaque=\"xyz\""));
    }

    #[test]
    fn responses_and_modes() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            (r.status, r.body.as_slice()),
            (200, b"{\"a\":1}".as_slice())
        );
        assert_eq!(mining(&serde_json::json!({"miner-mode": 1})), Some(false));
        assert_eq!(
            mining(&serde_json::json!({"bitmain-work-mode": "0"})),
            Some(true)
        );
        assert_eq!(mining(&serde_json::json!({})), None);
    }
}
