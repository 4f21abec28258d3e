//! Webhook secrets at rest: AES-256-GCM under a keyring read from `EBB_SECRETS_KEY`.
//!
//! Ebb must sign with the secret itself, so it cannot store a hash of it as it does for API keys.
//! A database dump or backup alone then yields no secret: each is sealed under a key that lives
//! only in the deployment's environment.
//!
//! The keyring's text form is a comma-separated list of `kid:base64key` entries:
//!
//! ```text
//! EBB_SECRETS_KEY=k2026:<base64 of 32 random bytes>,k2025:<base64 of 32 random bytes>
//! ```
//!
//! - `kid` is 1 to 32 ASCII letters, digits, `-` or `_`, unique in the list; it is stored beside
//!   every ciphertext;
//! - `base64key` is 32 random bytes in standard base64 (`openssl rand -base64 32`, or
//!   [`Keyring::generate_entry`]);
//! - the first entry is the current key: every new ciphertext is sealed under it; every entry can
//!   open what was sealed under it. To re-key: put a new entry first, keep the old ones, re-seal
//!   the rows whose key id is not the current one ([`Keyring::needs_reseal`]), then drop the old
//!   entries.
//!
//! A sealed value is `nonce (12 bytes) || ciphertext || tag (16 bytes)`, the nonce random per
//! seal. The caller passes a context (the row's id) as associated data, so a ciphertext copied
//! into another row does not open there.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;
use std::fmt;

/// The environment variable the keyring is read from.
pub const ENV: &str = "EBB_SECRETS_KEY";
const NONCE_LEN: usize = 12;
const KEY_LEN: usize = 32;
const MAX_KID_LEN: usize = 32;

/// A value sealed under one key of the keyring.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    /// nonce || ciphertext || tag.
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealed")
            .field("key_id", &self.key_id)
            .field("len", &self.ciphertext.len())
            .finish()
    }
}

/// The keys that seal and open secrets; the first seals. Its `Debug` shows key ids only.
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<(String, Aes256Gcm)>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field(
                "key_ids",
                &self.keys.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// What is wrong with a keyring's text. Never quotes a key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    #[error("{ENV} is empty: it holds kid:base64key entries, separated by commas")]
    Empty,
    #[error("{ENV} entry {index}: {reason}")]
    Entry { index: usize, reason: String },
    #[error("{ENV} names key id {0:?} twice")]
    DuplicateId(String),
}

/// Why a sealed value did not open.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("secret sealed under key {0:?}, which {ENV} does not hold")]
    UnknownKey(String),
    #[error("secret sealed under key {0:?} does not authenticate (corrupt, or another row's)")]
    Corrupt(String),
}

fn valid_kid(kid: &str) -> bool {
    (1..=MAX_KID_LEN).contains(&kid.len())
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Keyring {
    /// Parses the text form (see the module doc).
    pub fn parse(text: &str) -> Result<Self, KeyringError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(KeyringError::Empty);
        }
        let mut keys: Vec<(String, Aes256Gcm)> = Vec::new();
        for (index, entry) in text.split(',').map(str::trim).enumerate() {
            let bad = |reason: &str| KeyringError::Entry {
                index,
                reason: reason.to_owned(),
            };
            let (kid, b64) = entry
                .split_once(':')
                .ok_or_else(|| bad("expected kid:base64key"))?;
            if !valid_kid(kid) {
                return Err(bad("a key id is 1 to 32 ASCII letters, digits, '-' or '_'"));
            }
            let key = STANDARD
                .decode(b64)
                .map_err(|_| bad("the key is not standard base64"))?;
            if key.len() != KEY_LEN {
                return Err(bad(&format!(
                    "the key is {} bytes; AES-256 needs 32",
                    key.len()
                )));
            }
            if keys.iter().any(|(k, _)| k == kid) {
                return Err(KeyringError::DuplicateId(kid.to_owned()));
            }
            let cipher = Aes256Gcm::new_from_slice(&key).map_err(|_| bad("the key is unusable"))?;
            keys.push((kid.to_owned(), cipher));
        }
        Ok(Self { keys })
    }

    /// A fresh entry `kid:base64key` for the text form, with 32 random bytes.
    pub fn generate_entry(kid: &str) -> Result<String, KeyringError> {
        if !valid_kid(kid) {
            return Err(KeyringError::Entry {
                index: 0,
                reason: "a key id is 1 to 32 ASCII letters, digits, '-' or '_'".to_owned(),
            });
        }
        let mut key = [0u8; KEY_LEN];
        rand::rng().fill_bytes(&mut key);
        Ok(format!("{kid}:{}", STANDARD.encode(key)))
    }

    /// The id of the key that seals.
    pub fn current(&self) -> &str {
        &self.keys[0].0
    }

    /// Whether a value sealed under `key_id` should be sealed again under the current key.
    pub fn needs_reseal(&self, key_id: &str) -> bool {
        key_id != self.current()
    }

    /// Seals `plaintext` under the current key, bound to `context`.
    pub fn seal(&self, plaintext: &[u8], context: &[u8]) -> Sealed {
        let (kid, cipher) = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: context,
                },
            )
            // AES-GCM refuses only messages of more than 64 GiB.
            .expect("aes-gcm seals a webhook secret");
        let mut ciphertext = Vec::with_capacity(NONCE_LEN + sealed.len());
        ciphertext.extend_from_slice(&nonce);
        ciphertext.extend_from_slice(&sealed);
        Sealed {
            key_id: kid.clone(),
            ciphertext,
        }
    }

    /// Opens `sealed` with the key it names, checking it was sealed with `context`.
    pub fn open(&self, sealed: &Sealed, context: &[u8]) -> Result<Vec<u8>, OpenError> {
        let (_, cipher) = self
            .keys
            .iter()
            .find(|(k, _)| *k == sealed.key_id)
            .ok_or_else(|| OpenError::UnknownKey(sealed.key_id.clone()))?;
        let corrupt = || OpenError::Corrupt(sealed.key_id.clone());
        if sealed.ciphertext.len() < NONCE_LEN {
            return Err(corrupt());
        }
        let (nonce, body) = sealed.ciphertext.split_at(NONCE_LEN);
        cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: context,
                },
            )
            .map_err(|_| corrupt())
    }

    /// Opens `sealed` and seals it again under the current key (re-keying one row).
    pub fn reseal(&self, sealed: &Sealed, context: &[u8]) -> Result<Sealed, OpenError> {
        Ok(self.seal(&self.open(sealed, context)?, context))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> String {
        STANDARD.encode([byte; 32])
    }

    #[test]
    fn seal_and_open_bound_to_the_context() {
        let ring = Keyring::parse(&format!("k1:{}", key(1))).unwrap();
        let a = ring.seal(b"whsec secret bytes", b"endpoint-a");
        assert_eq!(a.key_id, "k1");
        assert_eq!(a.ciphertext.len(), 12 + 18 + 16);
        assert_eq!(ring.open(&a, b"endpoint-a").unwrap(), b"whsec secret bytes");
        assert_ne!(
            ring.seal(b"whsec secret bytes", b"endpoint-a").ciphertext,
            a.ciphertext,
            "a fresh nonce per seal"
        );
        assert_eq!(
            ring.open(&a, b"endpoint-b"),
            Err(OpenError::Corrupt("k1".to_owned())),
            "a ciphertext moved to another row does not open"
        );
        let mut flipped = a.clone();
        flipped.ciphertext[20] ^= 1;
        assert!(ring.open(&flipped, b"endpoint-a").is_err());
        let short = Sealed {
            key_id: "k1".to_owned(),
            ciphertext: vec![1, 2, 3],
        };
        assert!(ring.open(&short, b"endpoint-a").is_err());
    }

    #[test]
    fn rekeying_with_an_old_key_still_in_the_ring() {
        let old = Keyring::parse(&format!("k1:{}", key(1))).unwrap();
        let sealed = old.seal(b"s", b"row");
        let both = Keyring::parse(&format!("k2:{}, k1:{}", key(2), key(1))).unwrap();
        assert_eq!(both.current(), "k2");
        assert!(both.needs_reseal(&sealed.key_id));
        assert_eq!(both.open(&sealed, b"row").unwrap(), b"s");
        let resealed = both.reseal(&sealed, b"row").unwrap();
        assert_eq!(resealed.key_id, "k2");
        assert!(!both.needs_reseal(&resealed.key_id));
        let new_only = Keyring::parse(&format!("k2:{}", key(2))).unwrap();
        assert_eq!(new_only.open(&resealed, b"row").unwrap(), b"s");
        assert_eq!(
            new_only.open(&sealed, b"row"),
            Err(OpenError::UnknownKey("k1".to_owned()))
        );
    }

    #[test]
    fn bad_keyrings_are_refused_without_quoting_keys() {
        let check = |text: &str, want: KeyringError| {
            let got = Keyring::parse(text).unwrap_err();
            assert_eq!(got, want, "{text}");
            assert!(!got.to_string().contains(&key(1)), "{got}");
        };
        check("", KeyringError::Empty);
        check(
            &key(1),
            KeyringError::Entry {
                index: 0,
                reason: "expected kid:base64key".to_owned(),
            },
        );
        check(
            &format!("k1:{},k.2:{}", key(1), key(2)),
            KeyringError::Entry {
                index: 1,
                reason: "a key id is 1 to 32 ASCII letters, digits, '-' or '_'".to_owned(),
            },
        );
        check(
            "k1:AAAA",
            KeyringError::Entry {
                index: 0,
                reason: "the key is 3 bytes; AES-256 needs 32".to_owned(),
            },
        );
        check(
            "k1:!!!",
            KeyringError::Entry {
                index: 0,
                reason: "the key is not standard base64".to_owned(),
            },
        );
        check(
            &format!("k1:{},k1:{}", key(1), key(2)),
            KeyringError::DuplicateId("k1".to_owned()),
        );
    }

    #[test]
    fn debug_shows_key_ids_only() {
        let entry = Keyring::generate_entry("k9").unwrap();
        let ring = Keyring::parse(&entry).unwrap();
        let debug = format!("{ring:?}");
        assert_eq!(debug, r#"Keyring { key_ids: ["k9"] }"#);
        let b64 = entry.split_once(':').unwrap().1;
        assert!(!debug.contains(b64));
        let sealed = ring.seal(b"secret", b"ctx");
        assert_eq!(format!("{sealed:?}"), r#"Sealed { key_id: "k9", len: 34 }"#);
        assert!(Keyring::generate_entry("no good").is_err());
    }
}
