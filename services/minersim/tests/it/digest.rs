//! The Antminer pages sit behind real HTTP digest auth.

use std::net::Ipv4Addr;

use ebb_minersim::Model;
use md5::{Digest, Md5};
use reqwest::StatusCode;

use crate::{address_of, instant, one_of_each, spawn};

fn md5_hex(s: &str) -> String {
    hex::encode(Md5::digest(s.as_bytes()))
}

fn param<'a>(challenge: &'a str, name: &str) -> &'a str {
    let start = challenge
        .find(&format!("{name}=\""))
        .unwrap_or_else(|| panic!("{name} in {challenge}"))
        + name.len()
        + 2;
    let end = challenge[start..].find('"').unwrap() + start;
    &challenge[start..end]
}

/// An `Authorization` header answering `challenge`, built by hand from RFC 7616.
fn authorization(challenge: &str, method: &str, uri: &str, user: &str, pass: &str) -> String {
    let realm = param(challenge, "realm");
    let nonce = param(challenge, "nonce");
    let (nc, cnonce) = ("00000001", "6d2f8a1c");
    let ha1 = md5_hex(&format!("{user}:{realm}:{pass}"));
    let ha2 = md5_hex(&format!("{method}:{uri}"));
    let response = md5_hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"));
    format!(
        "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
         algorithm=MD5, qop=auth, nc={nc}, cnonce=\"{cnonce}\", response=\"{response}\""
    )
}

async fn get(ip: Ipv4Addr, path: &str, auth: Option<String>) -> reqwest::Response {
    let client = reqwest::Client::new();
    let mut req = client.get(format!("http://{ip}{path}"));
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    req.send().await.expect("the page answers")
}

#[tokio::test]
async fn pages_need_the_right_digest() {
    let sim = spawn(one_of_each(), instant()).await;
    let ip = address_of(&sim, Model::S19Pro);

    for path in ["/", "/cgi-bin/get_miner_conf.cgi", "/cgi-bin/summary.cgi"] {
        let resp = get(ip, path, None).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path}");
        let challenge = resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(challenge.starts_with("Digest "), "{challenge}");
        assert_eq!(param(&challenge, "realm"), "antMiner Configuration");
        assert_eq!(param(&challenge, "qop"), "auth");

        let wrong = authorization(&challenge, "GET", path, "root", "hunter2");
        assert_eq!(
            get(ip, path, Some(wrong)).await.status(),
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
        let other_uri = authorization(&challenge, "GET", "/cgi-bin/reboot.cgi", "root", "root");
        assert_eq!(
            get(ip, path, Some(other_uri)).await.status(),
            StatusCode::UNAUTHORIZED,
            "{path}"
        );

        let right = authorization(&challenge, "GET", path, "root", "root");
        let resp = get(ip, path, Some(right)).await;
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
    }

    let resp = get(ip, "/cgi-bin/get_miner_conf.cgi", None).await;
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    let right = authorization(
        &challenge,
        "GET",
        "/cgi-bin/get_miner_conf.cgi",
        "root",
        "root",
    );
    let conf: serde_json::Value = get(ip, "/cgi-bin/get_miner_conf.cgi", Some(right))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(conf["bitmain-work-mode"], "0");
    assert_eq!(conf["pools"].as_array().map(Vec::len), Some(3));
    sim.shutdown().await;
}
