//! The versioned envelope and its MessagePack encoding (`rmp_serde::to_vec_named`: maps, so new
//! `#[serde(default)]` fields stay compatible both ways).

use chrono::{DateTime, Utc};
use ebb_domain::OrgId;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// The current envelope version. A reader refuses versions newer than it knows.
pub const VERSION: u16 = 1;

/// Every message on the bus is wrapped in one of these.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub v: u16,
    /// UUIDv7 of this message.
    pub id: String,
    pub at: DateTime<Utc>,
    #[serde(default)]
    pub org: Option<OrgId>,
    pub body: T,
}

impl<T> Envelope<T> {
    pub fn new(org: Option<OrgId>, body: T) -> Self {
        Self {
            v: VERSION,
            id: uuid::Uuid::now_v7().to_string(),
            at: Utc::now(),
            org,
            body,
        }
    }
}

/// A message that could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("encoding message")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("decoding message")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("unsupported envelope version {0} (this build reads up to {VERSION})")]
    Version(u16),
}

pub fn encode<T: Serialize>(env: &Envelope<T>) -> Result<Vec<u8>, CodecError> {
    Ok(rmp_serde::to_vec_named(env)?)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<Envelope<T>, CodecError> {
    let env: Envelope<T> = rmp_serde::from_slice(bytes)?;
    if env.v > VERSION {
        return Err(CodecError::Version(env.v));
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct V1 {
        a: u32,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct V2 {
        a: u32,
        #[serde(default)]
        b: Option<String>,
    }

    #[test]
    fn round_trip_and_forward_compatible_fields() {
        let e = Envelope::new(
            None,
            V2 {
                a: 1,
                b: Some("x".into()),
            },
        );
        let bytes = encode(&e).unwrap();
        assert_eq!(decode::<V2>(&bytes).unwrap(), e);
        // An old reader ignores the new field; a new reader defaults it.
        assert_eq!(decode::<V1>(&bytes).unwrap().body, V1 { a: 1 });
        let old = encode(&Envelope::new(None, V1 { a: 2 })).unwrap();
        assert_eq!(decode::<V2>(&old).unwrap().body, V2 { a: 2, b: None });
    }

    #[test]
    fn newer_versions_and_garbage_are_refused() {
        let mut e = Envelope::new(None, V1 { a: 1 });
        e.v = VERSION + 1;
        assert!(matches!(
            decode::<V1>(&encode(&e).unwrap()),
            Err(CodecError::Version(_))
        ));
        assert!(matches!(
            decode::<V1>(b"\xc1garbage"),
            Err(CodecError::Decode(_))
        ));
    }
}
