//! API key tokens, `ebb_<prefix>_<secret>`, and the form they are stored in. The prefix finds the
//! `api_key` row; only a SHA-256 of the secret is stored (keys are 256-bit random, so a slow hash
//! adds nothing). The token format lives here, beside the table, so that everything that mints a
//! key (`ebb admin`, the test world) and the gateway that checks one agree on it.

use rand::Rng;
use sha2::{Digest, Sha256};

/// A freshly generated key: show `token` once, store `prefix` and `secret_hash`.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub token: String,
    pub prefix: String,
    pub secret_hash: Vec<u8>,
}

/// A new random key.
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

/// The stored form of a key's secret.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_back_to_their_parts() {
        let k = generate();
        let (prefix, secret) = parse(&k.token).unwrap();
        assert_eq!(prefix, k.prefix);
        assert_eq!(hash(secret), k.secret_hash);
        assert_ne!(generate().token, k.token);
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
}
