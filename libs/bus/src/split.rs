//! Bounded batch splitting (DESIGN §3): at most [`MAX_BATCH_DEVICES`] items and
//! [`MAX_BATCH_BYTES`] encoded per message, well under nats-server's default 1 MiB max_payload.

use crate::codec::{CodecError, Envelope, encode};
use crate::messages::{CommandBatch, DeviceRef};
use ebb_domain::{BatchId, CommandKind, EventId, OrgId, SiteCode};
use serde::Serialize;

pub const MAX_BATCH_DEVICES: usize = 2_000;
pub const MAX_BATCH_BYTES: usize = 512 * 1024;
/// Room kept in every command batch for what differs between sizing it and publishing it: the
/// envelope's id and time and the batch id are the same length or within a few bytes.
pub const COMMAND_HEADROOM: usize = 256;

/// What every batch of one command to one site shares.
#[derive(Clone, Copy, Debug)]
pub struct CommandShape<'a> {
    pub org: Option<OrgId>,
    pub site: &'a SiteCode,
    pub event: Option<EventId>,
    pub command: CommandKind,
}

impl CommandShape<'_> {
    /// The message of one batch of this command.
    pub fn envelope(&self, batch_id: BatchId, devices: Vec<DeviceRef>) -> Envelope<CommandBatch> {
        Envelope::new(
            self.org,
            CommandBatch {
                batch_id,
                event_id: self.event,
                site: self.site.clone(),
                command: self.command,
                devices,
            },
        )
    }
}

/// Splits the items of one command into batches (DESIGN §3): at most [`MAX_BATCH_DEVICES`]
/// devices, and at most [`MAX_BATCH_BYTES`] encoded, however long each device's entry is.
/// `device` says what an item puts in the batch. Order is kept.
pub fn command_chunks<I: Clone>(
    items: Vec<I>,
    shape: &CommandShape<'_>,
    device: impl Fn(&I) -> DeviceRef,
) -> Result<Vec<Vec<I>>, SplitError> {
    chunks_within(
        items,
        MAX_BATCH_DEVICES,
        MAX_BATCH_BYTES - COMMAND_HEADROOM,
        |chunk| {
            let devices = chunk.iter().map(&device).collect();
            Ok(encode(&shape.envelope(BatchId::new(), devices))?)
        },
    )
}

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
    let mut out = Vec::new();
    split_with(
        items,
        max_items,
        max_bytes,
        |chunk| encode(&wrap(chunk.to_vec())).map_err(SplitError::from),
        |_, bytes| out.push(bytes),
    )?;
    Ok(out)
}

/// Splits `items` into consecutive chunks, in order, of at most `max_items` each and whose
/// message, as `encode` builds it, is at most `max_bytes`. For callers that must act on a chunk
/// before its message exists (the reconciler stamps a batch `dispatching` before it builds and
/// publishes it): the chunks are returned, not the bytes. A single item that alone exceeds
/// `max_bytes` is an error, never a silent drop.
pub fn chunks_within<I, F>(
    items: Vec<I>,
    max_items: usize,
    max_bytes: usize,
    encode: F,
) -> Result<Vec<Vec<I>>, SplitError>
where
    I: Clone,
    F: Fn(&[I]) -> Result<Vec<u8>, SplitError>,
{
    let mut out = Vec::new();
    split_with(items, max_items, max_bytes, encode, |chunk, _| {
        out.push(chunk)
    })?;
    Ok(out)
}

/// The one splitting loop: chunks by count, then halves a chunk until its encoding fits, handing
/// each fitting chunk and its bytes to `emit` in order.
fn split_with<I, F, E>(
    items: Vec<I>,
    max_items: usize,
    max_bytes: usize,
    encode: F,
    mut emit: E,
) -> Result<(), SplitError>
where
    I: Clone,
    F: Fn(&[I]) -> Result<Vec<u8>, SplitError>,
    E: FnMut(Vec<I>, Vec<u8>),
{
    let max_items = max_items.max(1);
    let mut stack: Vec<Vec<I>> = items.chunks(max_items).rev().map(<[I]>::to_vec).collect();
    while let Some(chunk) = stack.pop() {
        let n = chunk.len();
        let bytes = encode(&chunk)?;
        if bytes.len() <= max_bytes {
            emit(chunk, bytes);
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
    Ok(())
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

    fn shape(site: &SiteCode) -> CommandShape<'_> {
        CommandShape {
            org: Some(OrgId::new()),
            site,
            event: Some(EventId::new()),
            command: CommandKind::Uncurtail,
        }
    }

    fn device(address_len: usize) -> DeviceRef {
        DeviceRef {
            device_id: ebb_domain::DeviceId::new(),
            address: "a".repeat(address_len),
            restore_power_limit_w: Some(3250.5),
        }
    }

    /// Encodes each chunk as the batch it becomes and checks the limits, the order and that
    /// every device is in exactly one batch.
    fn check_command_chunks(devices: Vec<DeviceRef>) -> usize {
        let site = SiteCode::parse("site-a").unwrap();
        let shape = shape(&site);
        let chunks = command_chunks(devices.clone(), &shape, DeviceRef::clone).unwrap();
        let mut back = Vec::new();
        for chunk in &chunks {
            assert!(!chunk.is_empty());
            assert!(chunk.len() <= MAX_BATCH_DEVICES);
            let bytes = encode(&shape.envelope(BatchId::new(), chunk.clone())).unwrap();
            assert!(bytes.len() <= MAX_BATCH_BYTES, "{} bytes", bytes.len());
            back.extend(chunk.iter().cloned());
        }
        assert_eq!(back, devices);
        chunks.len()
    }

    #[test]
    fn a_batch_of_large_devices_splits_by_bytes() {
        // 2,000 devices fit the count limit, but at ~1 KiB each they are ~2 MiB encoded: only
        // the byte limit splits them, into at least four batches.
        let n = check_command_chunks((0..MAX_BATCH_DEVICES).map(|_| device(1024)).collect());
        assert!(n >= 4, "{n} batches");
        // Small devices split by count alone.
        let n = check_command_chunks((0..4_001).map(|_| device(15)).collect());
        assert_eq!(n, 3);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        #[test]
        fn command_batches_never_exceed_either_limit(
            lens in proptest::collection::vec(0usize..4096, 0..3000),
        ) {
            check_command_chunks(lens.into_iter().map(device).collect());
        }
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
