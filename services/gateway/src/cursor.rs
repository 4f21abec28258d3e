//! Opaque page cursors: a JSON value in URL-safe base64, bound to the org and filters it was
//! issued for (a listing checks both before it uses one) and at most 1,024 characters.

use base64::Engine;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The longest cursor a listing accepts.
pub const MAX_LEN: usize = 1024;

pub fn encode(value: &impl Serialize) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(value).unwrap_or_default())
}

/// The value a cursor carries, or `None` when it is not one this API issued.
pub fn decode<T: DeserializeOwned>(cursor: &str) -> Option<T> {
    if cursor.len() > MAX_LEN {
        return None;
    }
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor.as_bytes())
        .ok()?;
    serde_json::from_slice(&raw).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_what_it_did_not_issue() {
        let c = encode(&("org", 7));
        assert_eq!(decode::<(String, i32)>(&c), Some(("org".into(), 7)));
        assert_eq!(decode::<(String, i32)>("not base64!"), None);
        assert_eq!(decode::<(String, i32)>(&encode(&"other")), None);
        let long = "A".repeat(MAX_LEN + 1);
        assert_eq!(decode::<serde_json::Value>(&long), None);
    }
}
