//! Bearer API keys: `ebb_<prefix>_<secret>`. The prefix finds the row; only a SHA-256 of the
//! secret is stored (keys are 256-bit random, so a slow hash adds nothing). Both cut-offs are
//! half-open: a key is valid strictly before `expires_at` and strictly before `revoked_at`.

use chrono::{DateTime, Utc};
use ebb_bus::Role;
use ebb_domain::OrgId;
use ebb_store::fleet::ApiKeyRow;
use rand::Rng;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// A freshly generated key: show `token` once, store `prefix` and `secret_hash`.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub token: String,
    pub prefix: String,
    pub secret_hash: Vec<u8>,
}

pub fn generate() -> NewKey {
    let mut rng = rand::rng();
    let prefix = hex::encode(rng.random::<[u8; 6]>());
    let secret = hex::encode(rng.random::<[u8; 32]>());
    NewKey {
        token: format!("ebb_{prefix}_{secret}"),
        secret_hash: hash(&secret),
        prefix,
    }
}

pub fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Splits a token into (prefix, secret), or `None` if it is not shaped like a key.
pub fn parse(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix("ebb_")?;
    let (prefix, secret) = rest.split_once('_')?;
    let hexy = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hexy(prefix, 12) && hexy(secret, 64)).then_some((prefix, secret))
}

/// Who a request acts as.
#[derive(Clone, Debug, PartialEq)]
pub struct Principal {
    pub key_id: Uuid,
    pub org: OrgId,
    pub role: Role,
    /// `None`: every site of the org.
    pub site_ids: Option<Vec<Uuid>>,
}

/// Checks a stored key against a presented secret at `now`.
pub fn verify(row: &ApiKeyRow, secret: &str, now: DateTime<Utc>) -> Option<Principal> {
    if hash(secret) != row.secret_hash {
        return None;
    }
    if row.expires_at.is_some_and(|t| now >= t) || row.revoked_at.is_some_and(|t| now >= t) {
        return None;
    }
    Some(Principal {
        key_id: row.id,
        org: row.org_id,
        role: Role::parse(&row.role)?,
        site_ids: row.site_ids.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn row(secret: &str) -> ApiKeyRow {
        ApiKeyRow {
            id: Uuid::nil(),
            org_id: OrgId::new(),
            role: "operator".into(),
            secret_hash: hash(secret),
            site_ids: None,
            expires_at: None,
            revoked_at: None,
        }
    }

    #[test]
    fn generated_keys_parse_and_verify() {
        let k = generate();
        let (prefix, secret) = parse(&k.token).unwrap();
        assert_eq!(prefix, k.prefix);
        let now = Utc::now();
        let r = ApiKeyRow {
            secret_hash: k.secret_hash.clone(),
            ..row("x")
        };
        assert!(verify(&r, secret, now).is_some());
        assert!(verify(&r, "nope", now).is_none());
        for bad in [
            "",
            "ebb_",
            "ebb_abc_def",
            "Bearer x",
            &format!("{}x", k.token),
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn cut_offs_are_half_open() {
        let now = Utc::now();
        let check = |expires: Option<DateTime<Utc>>, revoked: Option<DateTime<Utc>>, ok: bool| {
            let r = ApiKeyRow {
                expires_at: expires,
                revoked_at: revoked,
                ..row("s")
            };
            assert_eq!(
                verify(&r, "s", now).is_some(),
                ok,
                "{expires:?} {revoked:?}"
            );
        };
        check(None, None, true);
        check(Some(now), None, false);
        check(None, Some(now), false);
        check(Some(now + Duration::seconds(1)), None, true);
        // A future revocation is a rotation grace window.
        check(None, Some(now + Duration::seconds(1)), true);
        check(Some(now - Duration::seconds(1)), None, false);
    }
}
