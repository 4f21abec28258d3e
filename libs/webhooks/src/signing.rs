//! Standard Webhooks signatures, symmetric scheme (`v1`, HMAC-SHA256), exactly as the spec
//! (standardwebhooks.com, "Signature scheme" and "Webhook headers") has them:
//!
//! - secrets are 24 to 64 random bytes, shown as `whsec_` + standard base64; Ebb makes 32;
//! - the signed content is `{webhook-id}.{webhook-timestamp}.{body}`, the body as sent, byte for
//!   byte; the timestamp is integer unix seconds of the attempt (a retry signs anew);
//! - `webhook-signature` is a space-delimited list of `v1,<base64 HMAC>`, one per secret still
//!   valid, so that a receiver that has not switched to a rotated secret yet still verifies.
//!
//! [`verify`] is the receiver's side, for Ebb's own tools and tests; its comparison runs in
//! constant time.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::fmt;

use crate::event::MessageId;

pub const HEADER_ID: &str = "webhook-id";
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
pub const HEADER_SIGNATURE: &str = "webhook-signature";
/// How a symmetric secret is shown.
pub const SECRET_PREFIX: &str = "whsec_";
/// The version identifier of HMAC-SHA256 signatures.
pub const SIGNATURE_VERSION: &str = "v1";

type HmacSha256 = Hmac<Sha256>;

/// A symmetric signing secret. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret {
    key: Box<[u8]>,
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningSecret({} bytes, redacted)", self.key.len())
    }
}

/// Why a text or a byte string is not a signing secret. The messages never quote the secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("a webhook secret starts with {SECRET_PREFIX}")]
    Prefix,
    #[error("a webhook secret is {SECRET_PREFIX} followed by standard base64")]
    Base64,
    #[error(
        "a webhook secret holds {min} to {max} bytes, not {len}",
        min = SigningSecret::MIN_LEN,
        max = SigningSecret::MAX_LEN
    )]
    Length { len: usize },
}

impl SigningSecret {
    /// The spec's bounds: 24 bytes (192 bits) to 64 bytes (512 bits).
    pub const MIN_LEN: usize = 24;
    pub const MAX_LEN: usize = 64;
    /// What [`SigningSecret::generate`] makes.
    pub const GENERATED_LEN: usize = 32;

    /// A fresh secret of 32 bytes from the thread's CSPRNG (seeded from the operating system).
    pub fn generate() -> Self {
        let mut key = vec![0u8; Self::GENERATED_LEN];
        rand::rng().fill_bytes(&mut key);
        Self {
            key: key.into_boxed_slice(),
        }
    }

    /// Parses `whsec_<base64>`.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let b64 = text
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::Prefix)?;
        let key = STANDARD.decode(b64).map_err(|_| SecretError::Base64)?;
        Self::from_bytes(key)
    }

    /// A secret from its raw bytes (as decrypted from storage).
    pub fn from_bytes(key: Vec<u8>) -> Result<Self, SecretError> {
        if !(Self::MIN_LEN..=Self::MAX_LEN).contains(&key.len()) {
            return Err(SecretError::Length { len: key.len() });
        }
        Ok(Self {
            key: key.into_boxed_slice(),
        })
    }

    /// The raw key, to seal it for storage.
    pub fn as_bytes(&self) -> &[u8] {
        &self.key
    }

    /// The secret as the receiver configures it: `whsec_<base64>`. Shown once, when it is made.
    pub fn expose_whsec(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(&self.key))
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        // HMAC takes a key of any length; new_from_slice cannot fail for it.
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("hmac accepts any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// One signature, `v1,<base64>`.
    pub fn signature(&self, id: &MessageId, timestamp: i64, body: &[u8]) -> String {
        let tag = self
            .mac(id.as_str(), timestamp, body)
            .finalize()
            .into_bytes();
        format!("{SIGNATURE_VERSION},{}", STANDARD.encode(tag))
    }
}

/// The three headers of one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedHeaders {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
}

impl SignedHeaders {
    /// `(name, value)` pairs, to add to a request.
    pub fn pairs(&self) -> [(&'static str, &str); 3] {
        [
            (HEADER_ID, &self.id),
            (HEADER_TIMESTAMP, &self.timestamp),
            (HEADER_SIGNATURE, &self.signature),
        ]
    }
}

/// A delivery with no secret to sign it with: its endpoint has none valid (a bug or a row
/// deleted underneath), and it must not go out unsigned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no valid secret to sign the webhook with")]
pub struct NoSecret;

/// Signs one attempt of message `id` at `timestamp` (unix seconds) with every secret in
/// `secrets`, in their order (the current one first, by convention).
pub fn sign(
    id: &MessageId,
    timestamp: i64,
    body: &[u8],
    secrets: &[SigningSecret],
) -> Result<SignedHeaders, NoSecret> {
    if secrets.is_empty() {
        return Err(NoSecret);
    }
    let signature = secrets
        .iter()
        .map(|s| s.signature(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ");
    Ok(SignedHeaders {
        id: id.as_str().to_owned(),
        timestamp: timestamp.to_string(),
        signature,
    })
}

/// Why [`verify`] refused a request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("webhook-timestamp is not an integer")]
    Timestamp,
    #[error("webhook-timestamp is {skew_s} s away from now, more than the tolerance")]
    Stale { skew_s: i64 },
    #[error("no v1 signature matches")]
    NoMatch,
}

/// Checks a received request as a Standard Webhooks receiver does: the timestamp within
/// `tolerance_s` of `now` (unix seconds), and at least one `v1` signature of the list made with
/// `secret`.
pub fn verify(
    secret: &SigningSecret,
    headers: &SignedHeaders,
    body: &[u8],
    now: i64,
    tolerance_s: i64,
) -> Result<(), VerifyError> {
    let timestamp: i64 = headers
        .timestamp
        .parse()
        .map_err(|_| VerifyError::Timestamp)?;
    let skew_s = timestamp.saturating_sub(now);
    if skew_s.saturating_abs() > tolerance_s {
        return Err(VerifyError::Stale { skew_s });
    }
    let matched = headers
        .signature
        .split(' ')
        .filter_map(|s| s.split_once(','))
        .filter(|(version, _)| *version == SIGNATURE_VERSION)
        .filter_map(|(_, b64)| STANDARD.decode(b64).ok())
        // verify_slice compares in constant time.
        .any(|tag| {
            secret
                .mac(&headers.id, timestamp, body)
                .verify_slice(&tag)
                .is_ok()
        });
    if matched {
        Ok(())
    } else {
        Err(VerifyError::NoMatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> MessageId {
        MessageId::new(s).unwrap()
    }

    /// The test vector every reference library of the spec repository checks
    /// (standard-webhooks/standard-webhooks, libraries/*: "TestWebhookSign" and its kin).
    #[test]
    fn the_published_test_vector() {
        let secret = SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let signed = sign(
            &id("msg_p5jXN8AQM9LWM0D4loKWxJek"),
            1614265330,
            body,
            &[secret],
        )
        .unwrap();
        assert_eq!(
            signed.signature,
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert_eq!(signed.id, "msg_p5jXN8AQM9LWM0D4loKWxJek");
        assert_eq!(signed.timestamp, "1614265330");
    }

    /// The Rust reference library's own vector (libraries/rust/src/lib.rs, `test_sign`).
    #[test]
    fn the_rust_reference_library_vector() {
        let secret = SigningSecret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        assert_eq!(
            secret.signature(
                &id("msg_27UH4WbU6Z5A5EzD8u03UvzRbpk"),
                1649367553,
                br#"{"email":"test@example.com","username":"test_user"}"#
            ),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn secrets_parse_with_clear_errors_and_never_print() {
        let generated = SigningSecret::generate();
        assert_eq!(generated.as_bytes().len(), 32);
        assert_ne!(generated, SigningSecret::generate());
        let shown = generated.expose_whsec();
        assert!(shown.starts_with("whsec_"));
        assert_eq!(SigningSecret::parse(&shown), Ok(generated.clone()));

        let debug = format!("{generated:?}");
        assert!(!debug.contains(&shown["whsec_".len()..]), "{debug}");
        assert_eq!(debug, "SigningSecret(32 bytes, redacted)");

        assert_eq!(
            SigningSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            Err(SecretError::Prefix)
        );
        assert_eq!(
            SigningSecret::parse("whsec_not base64!"),
            Err(SecretError::Base64)
        );
        // 16 bytes: below the spec's minimum.
        assert_eq!(
            SigningSecret::parse("whsec_AAAAAAAAAAAAAAAAAAAAAA=="),
            Err(SecretError::Length { len: 16 })
        );
        assert_eq!(
            SigningSecret::from_bytes(vec![7; 65]),
            Err(SecretError::Length { len: 65 })
        );
        assert!(SigningSecret::from_bytes(vec![7; 24]).is_ok());
        assert!(SigningSecret::from_bytes(vec![7; 64]).is_ok());
        let err = SecretError::Length { len: 3 }.to_string();
        assert_eq!(err, "a webhook secret holds 24 to 64 bytes, not 3");
    }

    #[test]
    fn one_signature_per_valid_secret_each_verifying_alone() {
        let current = SigningSecret::generate();
        let previous = SigningSecret::generate();
        let body =
            br#"{"type":"ebb.curtailment.started","timestamp":"2026-12-07T10:00:00Z","data":{}}"#;
        let msg = id("0193a5d2-7f3e-7000-8000-000000000001");
        let signed = sign(
            &msg,
            1_800_000_000,
            body,
            &[current.clone(), previous.clone()],
        )
        .unwrap();
        let parts: Vec<&str> = signed.signature.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], current.signature(&msg, 1_800_000_000, body));
        assert_eq!(parts[1], previous.signature(&msg, 1_800_000_000, body));
        for s in [&current, &previous] {
            assert_eq!(verify(s, &signed, body, 1_800_000_010, 300), Ok(()));
        }
        let stranger = SigningSecret::generate();
        assert_eq!(
            verify(&stranger, &signed, body, 1_800_000_010, 300),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify(&current, &signed, b"{}", 1_800_000_010, 300),
            Err(VerifyError::NoMatch),
            "a changed body fails"
        );
        assert_eq!(
            verify(&current, &signed, body, 1_800_000_301, 300),
            Err(VerifyError::Stale { skew_s: -301 })
        );
        assert_eq!(sign(&msg, 1, body, &[]), Err(NoSecret));
    }

    /// A receiver built on the spec's own Rust library (an independent implementation) accepts
    /// Ebb's headers, with one secret and with two during a rotation. (Version 1.0.1 checks the
    /// timestamp against the real clock, so the attempt is signed now.)
    #[test]
    fn the_reference_library_verifies_ebb_signatures() {
        let current = SigningSecret::generate();
        let previous = SigningSecret::generate();
        let body = br#"{"type":"ebb.curtailment.completed","timestamp":"2026-12-07T10:00:00Z","data":{"id":"x"}}"#;
        let now = chrono::Utc::now().timestamp();
        let msg = id("0193a5d2-7f3e-7000-8000-000000000001");
        let signed = sign(&msg, now, body, &[current.clone(), previous.clone()]).unwrap();
        let mut headers = http::HeaderMap::new();
        for (name, value) in signed.pairs() {
            headers.insert(name, value.parse().unwrap());
        }
        for s in [&current, &previous] {
            let receiver = standardwebhooks::Webhook::new(&s.expose_whsec()).unwrap();
            receiver
                .verify(body, &headers)
                .expect("the reference library verifies");
            assert_eq!(
                receiver.sign(msg.as_str(), now, body).unwrap(),
                s.signature(&msg, now, body)
            );
        }
        let stranger =
            standardwebhooks::Webhook::new(&SigningSecret::generate().expose_whsec()).unwrap();
        assert!(stranger.verify(body, &headers).is_err());
        let mut tampered = headers.clone();
        tampered.insert(HEADER_ID, "another".parse().unwrap());
        let receiver = standardwebhooks::Webhook::new(&current.expose_whsec()).unwrap();
        assert!(
            receiver.verify(body, &tampered).is_err(),
            "the id is signed"
        );
    }
}
