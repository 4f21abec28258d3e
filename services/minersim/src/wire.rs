//! Small helpers for writing replies the way firmware writes them.
//!
//! The one subtlety is NaN: JSON has no NaN, but firmware written in C prints one as a bare
//! `nan` token (which strict parsers then reject). Replies are built as `serde_json::Value`
//! with a sentinel string where a NaN goes, and the sentinel is swapped for the bare token
//! when the reply is serialised.

use serde_json::Value;

/// Stands in for a NaN number until [`to_bytes`] writes it as `nan`.
const NAN_SENTINEL: &str = "\u{1}ebb-sim-nan\u{1}";

/// A JSON number rounded to `decimals` places, or the NaN sentinel.
pub fn num(x: f64, decimals: i32) -> Value {
    if x.is_nan() {
        return Value::String(NAN_SENTINEL.to_owned());
    }
    let scale = 10f64.powi(decimals);
    let rounded = (x * scale).round() / scale;
    serde_json::Number::from_f64(rounded).map_or(Value::Null, Value::Number)
}

/// A JSON integer (rounded), or the NaN sentinel.
pub fn int(x: f64) -> Value {
    if x.is_nan() {
        return Value::String(NAN_SENTINEL.to_owned());
    }
    Value::from(x.round() as i64)
}

/// A number as firmware prints it inside a string (`"3250 W"`), `nan` for NaN.
pub fn int_text(x: f64) -> String {
    if x.is_nan() {
        "nan".to_owned()
    } else {
        format!("{}", x.round() as i64)
    }
}

/// Serialises a reply, writing NaN sentinels as bare `nan` tokens.
pub fn to_bytes(v: &Value) -> Vec<u8> {
    let text = v.to_string();
    let quoted = serde_json::to_string(NAN_SENTINEL).unwrap_or_default();
    if text.contains(&quoted) {
        text.replace(&quoted, "nan").into_bytes()
    } else {
        text.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nan_is_written_as_a_bare_token() {
        let v = json!({"Watts": num(f64::NAN, 0), "GHS 5s": num(123.456, 2)});
        let text = String::from_utf8(to_bytes(&v)).unwrap();
        assert!(text.contains("\"Watts\":nan"), "{text}");
        assert!(text.contains("123.46"), "{text}");
        assert_eq!(int_text(f64::NAN), "nan");
        assert_eq!(int_text(3249.6), "3250");
    }
}
