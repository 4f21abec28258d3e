//! Bounded batch splitting (DESIGN §3): at most [`MAX_BATCH_DEVICES`] items and
//! [`MAX_BATCH_BYTES`] encoded per message, well under nats-server's default 1 MiB max_payload.

use crate::codec::{CodecError, Envelope, encode};
use serde::Serialize;

pub const MAX_BATCH_DEVICES: usize = 2_000;
pub const MAX_BATCH_BYTES: usize = 512 * 1024;

/// Splits `items` into chunks of at most `max_items`, then halves any chunk whose encoded message
/// (built by `wrap`) exceeds `max_bytes`. Returns the encoded messages with their chunk. A single
/// item that alone exceeds `max_bytes` is an error, never a silent drop.
pub fn split_encode<I, T, F>(
    items: Vec<I>,
    max_items: usize,
    max_bytes: usize,
    wrap: F,
) -> Result<Vec<Vec<u8>>, SplitError>
where
    I: Clone,
    T: Serialize,
    F: Fn(Vec<I>) -> Envelope<T>,
{
    let max_items = max_items.max(1);
    let mut out = Vec::new();
    let mut stack: Vec<Vec<I>> = items.chunks(max_items).rev().map(<[I]>::to_vec).collect();
    while let Some(chunk) = stack.pop() {
        let n = chunk.len();
        let bytes = encode(&wrap(chunk.clone()))?;
        if bytes.len() <= max_bytes {
            out.push(bytes);
        } else if n <= 1 {
            return Err(SplitError::ItemTooLarge {
                bytes: bytes.len(),
                max_bytes,
            });
        } else {
            let mut left = chunk;
            let right = left.split_off(n / 2);
            stack.push(right);
            stack.push(left);
        }
    }
    Ok(out)
}

#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("one item encodes to {bytes} bytes, above the {max_bytes}-byte message limit")]
    ItemTooLarge { bytes: usize, max_bytes: usize },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::decode;

    fn wrap(v: Vec<String>) -> Envelope<Vec<String>> {
        Envelope::new(None, v)
    }

    #[test]
    fn splits_by_count_and_size_preserving_order() {
        let items: Vec<String> = (0..5000).map(|i| format!("{i:0>100}")).collect();
        let msgs = split_encode(items.clone(), 2000, 64 * 1024, wrap).unwrap();
        let mut back = Vec::new();
        for m in &msgs {
            assert!(m.len() <= 64 * 1024);
            let v = decode::<Vec<String>>(m).unwrap().body;
            assert!(v.len() <= 2000);
            back.extend(v);
        }
        assert_eq!(back, items);
        assert!(msgs.len() >= 8); // 5000 × ~100 B needs at least 8 × 64 KiB
    }

    #[test]
    fn empty_and_oversized() {
        assert!(
            split_encode(Vec::<String>::new(), 10, 1024, wrap)
                .unwrap()
                .is_empty()
        );
        let huge = vec!["x".repeat(2048)];
        assert!(matches!(
            split_encode(huge, 10, 1024, wrap),
            Err(SplitError::ItemTooLarge { .. })
        ));
    }
}
