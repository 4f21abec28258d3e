//! NATS JWTs (the JWT v2 format nats-server 2.9 reads), encoded over `nkeys`: three base64url
//! parts without padding, a fixed `ed25519-nkey` header, claims with `iss` (the signer's public
//! key), `sub` (the subject's public key), `iat`, `name`, `jti` (base32 of a SHA-256 of the
//! claims) and `nats` (the type's own fields), and the ed25519 signature of `header.payload` by
//! the issuer. We encode the small subset Ebb needs instead of depending on a thinly kept crate
//! (ADR 0007).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use nkeys::KeyPair;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The only header a NATS JWT has.
const HEADER: &str = r#"{"typ":"JWT","alg":"ed25519-nkey"}"#;

#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("not a JWT: {0}")]
    Malformed(String),
    #[error("signing failed: {0}")]
    Sign(String),
    #[error("the signature does not verify against the issuer {0}")]
    BadSignature(String),
    #[error("encoding claims: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The claims every NATS JWT carries, around its type's own `nats` fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Claims<N> {
    pub jti: String,
    /// Issued at, unix seconds. A revocation revokes every user JWT issued before its time.
    pub iat: i64,
    pub iss: String,
    pub name: String,
    pub sub: String,
    pub nats: N,
}

/// An operator's own fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Operator {
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_account: Option<String>,
}

/// An account's limits; `-1` is unlimited. JetStream is enabled for an account whose storage
/// limits are not zero.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AccountLimits {
    pub subs: i64,
    pub data: i64,
    pub payload: i64,
    pub imports: i64,
    pub exports: i64,
    pub wildcards: bool,
    pub conn: i64,
    pub leaf: i64,
    pub mem_storage: i64,
    pub disk_storage: i64,
    pub streams: i64,
    pub consumer: i64,
}

impl AccountLimits {
    /// No limits, JetStream enabled.
    pub fn unlimited_with_jetstream() -> Self {
        Self {
            subs: -1,
            data: -1,
            payload: -1,
            imports: -1,
            exports: -1,
            wildcards: true,
            conn: -1,
            leaf: -1,
            mem_storage: -1,
            disk_storage: -1,
            streams: -1,
            consumer: -1,
        }
    }

    /// No limits, no JetStream (the system account).
    pub fn unlimited_without_jetstream() -> Self {
        Self {
            mem_storage: 0,
            disk_storage: 0,
            streams: 0,
            consumer: 0,
            ..Self::unlimited_with_jetstream()
        }
    }
}

/// An account's own fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Account {
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u8,
    pub limits: AccountLimits,
    /// User public key → unix seconds: every JWT of that user issued before it is revoked.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub revocations: BTreeMap<String, i64>,
}

/// Subjects a user may (or may not) publish or subscribe to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

/// Permission to answer the requests a user receives (`allow_responses`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Responses {
    /// Replies per request.
    pub max: i64,
    /// How long the permission lasts after the request, in nanoseconds; 0 is unbounded.
    pub ttl: i64,
}

/// A user's own fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct User {
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u8,
    #[serde(rename = "pub")]
    pub publish: Permission,
    #[serde(rename = "sub")]
    pub subscribe: Permission,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resp: Option<Responses>,
    pub subs: i64,
    pub data: i64,
    pub payload: i64,
}

/// Signs `claims` with `issuer`, filling `iss` and `jti`.
pub fn encode<N: Serialize>(mut claims: Claims<N>, issuer: &KeyPair) -> Result<String, JwtError> {
    claims.iss = issuer.public_key();
    claims.jti = String::new();
    let digest = Sha256::digest(serde_json::to_vec(&claims)?);
    claims.jti = data_encoding::BASE32_NOPAD.encode(&digest);
    let header = URL_SAFE_NO_PAD.encode(HEADER);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims)?);
    let signed = format!("{header}.{payload}");
    let signature = issuer
        .sign(signed.as_bytes())
        .map_err(|e| JwtError::Sign(e.to_string()))?;
    Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

/// Reads a JWT's claims and checks its signature against its own issuer.
pub fn decode<N: for<'de> Deserialize<'de>>(jwt: &str) -> Result<Claims<N>, JwtError> {
    let parts: Vec<&str> = jwt.trim().split('.').collect();
    let [header, payload, signature] = parts[..] else {
        return Err(JwtError::Malformed("a JWT has three parts".into()));
    };
    let bytes = |part: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|e| JwtError::Malformed(e.to_string()))
    };
    let claims: Claims<N> = serde_json::from_slice(&bytes(payload)?)?;
    let issuer = KeyPair::from_public_key(&claims.iss)
        .map_err(|e| JwtError::Malformed(format!("issuer {}: {e}", claims.iss)))?;
    issuer
        .verify(format!("{header}.{payload}").as_bytes(), &bytes(signature)?)
        .map_err(|_| JwtError::BadSignature(claims.iss.clone()))?;
    Ok(claims)
}

/// Claims with the fields the signer fills left empty.
pub fn claims<N>(name: &str, subject: &str, issued_at: i64, nats: N) -> Claims<N> {
    Claims {
        jti: String::new(),
        iat: issued_at,
        iss: String::new(),
        name: name.to_owned(),
        sub: subject.to_owned(),
        nats,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_jwt_decodes_and_a_tampered_one_does_not() {
        let operator = KeyPair::new_operator();
        let account = KeyPair::new_account();
        let nats = Account {
            kind: "account".into(),
            version: 2,
            limits: AccountLimits::unlimited_with_jetstream(),
            revocations: BTreeMap::from([("UABC".to_owned(), 1_700_000_000)]),
        };
        let jwt = encode(
            claims("EBB", &account.public_key(), 1_700_000_001, nats.clone()),
            &operator,
        )
        .unwrap();
        assert_eq!(jwt.split('.').count(), 3);
        assert!(!jwt.contains('='), "no padding");
        let back: Claims<Account> = decode(&jwt).unwrap();
        assert_eq!(back.iss, operator.public_key());
        assert_eq!(back.sub, account.public_key());
        assert_eq!(back.nats, nats);
        assert_eq!(back.jti.len(), 52, "base32 of a SHA-256 without padding");

        let mut parts: Vec<String> = jwt.split('.').map(str::to_owned).collect();
        let mut payload: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
        payload["name"] = "EVIL".into();
        parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).unwrap());
        assert!(matches!(
            decode::<Account>(&parts.join(".")),
            Err(JwtError::BadSignature(_))
        ));
    }

    #[test]
    fn the_header_is_the_nats_one() {
        let jwt = encode(
            claims(
                "op",
                "O",
                0,
                Operator {
                    kind: "operator".into(),
                    version: 2,
                    system_account: None,
                },
            ),
            &KeyPair::new_operator(),
        )
        .unwrap();
        let header = URL_SAFE_NO_PAD
            .decode(jwt.split('.').next().unwrap())
            .unwrap();
        assert_eq!(header, HEADER.as_bytes());
    }
}
