//! HTTP Digest authentication (RFC 7616 / RFC 2617), MD5 with `qop=auth`, as the Antminer's
//! lighttpd does it.
//!
//! Nonces are stateless: a timestamp plus a keyed MD5 of it, so 100,000 miners keep no nonce
//! tables. A nonce is good for [`NONCE_LIFETIME_S`] seconds of real time; a correct answer to an
//! expired nonce gets a fresh challenge with `stale=true`, as the RFC says. Replays within the
//! lifetime are not detected (the nonce count is not tracked), which no client relies on.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use md5::{Digest, Md5};

/// The realm stock Antminer firmware announces.
pub(crate) const REALM: &str = "antMiner Configuration";
/// How long a nonce stays valid.
pub(crate) const NONCE_LIFETIME_S: u64 = 300;

/// Outcome of checking an `Authorization` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Authenticated.
    Granted,
    /// Right credentials, expired nonce: challenge again with `stale=true`.
    Stale,
    /// Missing, malformed or wrong.
    Denied,
}

pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn md5_hex(parts: &[&str]) -> String {
    let mut h = Md5::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h.update(b":");
        }
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

fn nonce_mac(key: &[u8; 16], ts: u64) -> String {
    let mut h = Md5::new();
    h.update(key);
    h.update(ts.to_be_bytes());
    hex::encode(&h.finalize()[..12])
}

/// A fresh nonce for the given time.
pub(crate) fn make_nonce(key: &[u8; 16], ts: u64) -> String {
    format!("{ts:010x}{}", nonce_mac(key, ts))
}

/// Whether a nonce is ours; `Some(issued_at)` if so.
fn check_nonce(key: &[u8; 16], nonce: &str) -> Option<u64> {
    if nonce.len() != 34 || !nonce.is_ascii() {
        return None;
    }
    let ts = u64::from_str_radix(&nonce[..10], 16).ok()?;
    (nonce[10..] == nonce_mac(key, ts)).then_some(ts)
}

/// The `WWW-Authenticate` value for a 401.
pub(crate) fn challenge(key: &[u8; 16], now: u64, stale: bool) -> String {
    let nonce = make_nonce(key, now);
    let stale = if stale { ", stale=true" } else { "" };
    format!("Digest realm=\"{REALM}\", nonce=\"{nonce}\", algorithm=MD5, qop=\"auth\"{stale}")
}

/// Parses the parameters of a `Digest ...` header (quoted or token values).
pub(crate) fn parse_params(header: &str) -> Option<HashMap<String, String>> {
    let rest = header.trim();
    let rest = rest
        .strip_prefix("Digest")
        .or_else(|| rest.strip_prefix("digest"))?;
    let mut out = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            name.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return None;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '\\' => value.push(chars.next()?),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' || c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        if out.len() >= 32 {
            return None;
        }
        out.insert(name.to_ascii_lowercase(), value);
    }
    Some(out)
}

/// Checks an `Authorization` header for a request.
#[allow(clippy::too_many_arguments)]
pub(crate) fn verify(
    key: &[u8; 16],
    method: &str,
    request_uri: &str,
    header: Option<&str>,
    user: &str,
    password: &str,
    now: u64,
) -> Verdict {
    let Some(p) = header.and_then(parse_params) else {
        return Verdict::Denied;
    };
    let get = |k: &str| p.get(k).map(String::as_str);
    let (Some(username), Some(realm), Some(nonce), Some(uri), Some(response)) = (
        get("username"),
        get("realm"),
        get("nonce"),
        get("uri"),
        get("response"),
    ) else {
        return Verdict::Denied;
    };
    if username != user || realm != REALM || uri != request_uri {
        return Verdict::Denied;
    }
    let Some(issued) = check_nonce(key, nonce) else {
        return Verdict::Denied;
    };
    let algorithm = get("algorithm").unwrap_or("MD5");
    let mut ha1 = md5_hex(&[username, realm, password]);
    let cnonce = get("cnonce");
    match algorithm.to_ascii_uppercase().as_str() {
        "MD5" => {}
        "MD5-SESS" => {
            let Some(cnonce) = cnonce else {
                return Verdict::Denied;
            };
            ha1 = md5_hex(&[&ha1, nonce, cnonce]);
        }
        _ => return Verdict::Denied,
    }
    let ha2 = md5_hex(&[method, uri]);
    let expected = match get("qop") {
        Some(qop) if qop.eq_ignore_ascii_case("auth") => {
            let (Some(nc), Some(cnonce)) = (get("nc"), cnonce) else {
                return Verdict::Denied;
            };
            md5_hex(&[&ha1, nonce, nc, cnonce, qop, &ha2])
        }
        Some(_) => return Verdict::Denied,
        None => md5_hex(&[&ha1, nonce, &ha2]),
    };
    if !expected.eq_ignore_ascii_case(response) {
        return Verdict::Denied;
    }
    if now.saturating_sub(issued) > NONCE_LIFETIME_S || issued > now + 60 {
        return Verdict::Stale;
    }
    Verdict::Granted
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 16] = [7; 16];

    /// Answers a challenge the way a browser does.
    fn answer(challenge: &str, method: &str, uri: &str, user: &str, pass: &str) -> String {
        let p = parse_params(challenge).unwrap();
        let (realm, nonce) = (&p["realm"], &p["nonce"]);
        let ha1 = md5_hex(&[user, realm, pass]);
        let ha2 = md5_hex(&[method, uri]);
        let response = md5_hex(&[&ha1, nonce, "00000001", "0a4f113b", "auth", &ha2]);
        format!(
            "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
             algorithm=MD5, qop=auth, nc=00000001, cnonce=\"0a4f113b\", response=\"{response}\""
        )
    }

    #[test]
    fn the_rfc_2617_example_parses() {
        let p = parse_params(
            r#"Digest realm="testrealm@host.com", qop="auth,auth-int", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41""#,
        )
        .unwrap();
        assert_eq!(p["realm"], "testrealm@host.com");
        assert_eq!(p["qop"], "auth,auth-int");
        assert_eq!(p.len(), 4);
    }

    #[test]
    fn grants_the_right_password_and_denies_the_rest() {
        let now = 1_700_000_000;
        let c = challenge(&KEY, now, false);
        let uri = "/cgi-bin/get_miner_conf.cgi";
        let good = answer(&c, "GET", uri, "root", "root");
        assert_eq!(
            verify(&KEY, "GET", uri, Some(&good), "root", "root", now + 5),
            Verdict::Granted
        );

        let wrong = answer(&c, "GET", uri, "root", "admin");
        assert_eq!(
            verify(&KEY, "GET", uri, Some(&wrong), "root", "root", now),
            Verdict::Denied
        );
        // The answer is bound to the method and the URI.
        assert_eq!(
            verify(&KEY, "POST", uri, Some(&good), "root", "root", now),
            Verdict::Denied
        );
        assert_eq!(
            verify(&KEY, "GET", "/", Some(&good), "root", "root", now),
            Verdict::Denied
        );
        // A nonce we did not issue.
        let forged = good.replace(&make_nonce(&KEY, now), &make_nonce(&[9; 16], now));
        assert_eq!(
            verify(&KEY, "GET", uri, Some(&forged), "root", "root", now),
            Verdict::Denied
        );
        assert_eq!(
            verify(&KEY, "GET", uri, None, "root", "root", now),
            Verdict::Denied
        );
        // Right answer, old nonce.
        assert_eq!(
            verify(
                &KEY,
                "GET",
                uri,
                Some(&good),
                "root",
                "root",
                now + NONCE_LIFETIME_S + 1
            ),
            Verdict::Stale
        );
    }
}
