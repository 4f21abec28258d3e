//! What one delivery attempt records, in types that cannot hold a wrong value:
//!
//! - [`Verdict`] of a response status: 2xx succeeded, 410 Gone disables the endpoint at once,
//!   anything else (3xx included: redirects are not followed) failed;
//! - [`PhaseTimings`], each phase timed only when it completed, from marks on the monotonic
//!   clock, so a phase that never finished is absent rather than negative or zero (the prior
//!   art's bug: a start without an end recorded a huge negative duration);
//! - [`CappedBody`], the first 4 KiB of a response body and the length it had.

use std::time::Duration;
use tokio::time::Instant;

/// How a response's status counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// 410: the receiver wants no more webhooks; the endpoint is disabled at once.
    Gone,
    Failed,
}

/// The verdict of a response with `status`.
pub fn verdict(status: u16) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        410 => Verdict::Gone,
        _ => Verdict::Failed,
    }
}

/// Instants an attempt passed, on the monotonic clock; `None` for one it never reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Marks {
    /// The connect started.
    pub started: Instant,
    pub connected: Option<Instant>,
    /// The TLS handshake finished (https only).
    pub tls_done: Option<Instant>,
    /// The request was written.
    pub request_sent: Option<Instant>,
    /// The response's first byte (its status line) arrived.
    pub first_byte: Option<Instant>,
}

impl Marks {
    pub fn start(now: Instant) -> Self {
        Self {
            started: now,
            connected: None,
            tls_done: None,
            request_sent: None,
            first_byte: None,
        }
    }
}

/// How long each phase took; a phase that did not complete has none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PhaseTimings {
    /// From the start to the TCP connection.
    pub connect: Option<Duration>,
    /// From the connection to the end of the TLS handshake.
    pub tls: Option<Duration>,
    /// From the request written to the response's first byte.
    pub first_byte: Option<Duration>,
}

fn between(from: Option<Instant>, to: Option<Instant>) -> Option<Duration> {
    // checked_duration_since is None for an end before its start: no negative phase, even if a
    // caller passes marks out of order.
    to?.checked_duration_since(from?)
}

impl PhaseTimings {
    pub fn from_marks(m: &Marks) -> Self {
        Self {
            connect: between(Some(m.started), m.connected),
            tls: between(m.connected, m.tls_done),
            first_byte: between(m.request_sent, m.first_byte),
        }
    }

    /// A duration as whole milliseconds for an `integer` column, saturating.
    pub fn millis(d: Option<Duration>) -> Option<i32> {
        d.map(|d| i32::try_from(d.as_millis()).unwrap_or(i32::MAX))
    }
}

/// The most of a response body that is kept.
pub const RESPONSE_BODY_CAP: usize = 4096;

/// The start of a response body, at most [`RESPONSE_BODY_CAP`] bytes, and the body's length.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CappedBody {
    bytes: Vec<u8>,
    original_len: u64,
}

impl CappedBody {
    /// Keeps the start of a body read whole.
    pub fn capture(body: &[u8]) -> Self {
        Self::from_prefix(body.to_vec(), body.len() as u64)
    }

    /// A body read in part: `prefix` is what was read (cut to the cap here), `original_len` the
    /// length counted (or announced); never less than what was read.
    pub fn from_prefix(mut prefix: Vec<u8>, original_len: u64) -> Self {
        let original_len = original_len.max(prefix.len() as u64);
        prefix.truncate(RESPONSE_BODY_CAP);
        Self {
            bytes: prefix,
            original_len,
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn original_len(&self) -> u64 {
        self.original_len
    }

    /// Whether bytes were dropped (one WARN per truncation is the caller's).
    pub fn truncated(&self) -> bool {
        self.original_len > self.bytes.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        let check = |status: u16, want: Verdict| assert_eq!(verdict(status), want, "{status}");
        check(200, Verdict::Delivered);
        check(204, Verdict::Delivered);
        check(299, Verdict::Delivered);
        check(301, Verdict::Failed);
        check(308, Verdict::Failed);
        check(400, Verdict::Failed);
        check(404, Verdict::Failed);
        check(410, Verdict::Gone);
        check(429, Verdict::Failed);
        check(500, Verdict::Failed);
        check(199, Verdict::Failed);
    }

    #[test]
    fn phases_are_timed_only_when_they_completed() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        // A refused connection: nothing completed.
        assert_eq!(
            PhaseTimings::from_marks(&Marks::start(t0)),
            PhaseTimings::default()
        );
        // A stalled TLS handshake: connected, then nothing.
        let stalled = Marks {
            connected: Some(ms(3)),
            ..Marks::start(t0)
        };
        assert_eq!(
            PhaseTimings::from_marks(&stalled),
            PhaseTimings {
                connect: Some(Duration::from_millis(3)),
                tls: None,
                first_byte: None,
            }
        );
        let whole = Marks {
            started: t0,
            connected: Some(ms(3)),
            tls_done: Some(ms(10)),
            request_sent: Some(ms(11)),
            first_byte: Some(ms(50)),
        };
        assert_eq!(
            PhaseTimings::from_marks(&whole),
            PhaseTimings {
                connect: Some(Duration::from_millis(3)),
                tls: Some(Duration::from_millis(7)),
                first_byte: Some(Duration::from_millis(39)),
            }
        );
        // Marks out of order never give a negative phase.
        let backwards = Marks {
            started: ms(10),
            connected: Some(ms(5)),
            tls_done: Some(ms(1)),
            request_sent: Some(ms(9)),
            first_byte: Some(ms(2)),
        };
        assert_eq!(
            PhaseTimings::from_marks(&backwards),
            PhaseTimings::default()
        );
        assert_eq!(
            PhaseTimings::millis(Some(Duration::from_secs(1))),
            Some(1000)
        );
        assert_eq!(
            PhaseTimings::millis(Some(Duration::from_secs(u64::MAX))),
            Some(i32::MAX)
        );
        assert_eq!(PhaseTimings::millis(None), None);
    }

    #[test]
    fn bodies_are_capped_at_four_kib() {
        let small = CappedBody::capture(b"ok");
        assert_eq!(small.bytes(), b"ok");
        assert!(!small.truncated());
        let exact = CappedBody::capture(&[b'x'; RESPONSE_BODY_CAP]);
        assert!(!exact.truncated());
        let big = CappedBody::capture(&[b'x'; RESPONSE_BODY_CAP + 1]);
        assert_eq!(big.bytes().len(), RESPONSE_BODY_CAP);
        assert_eq!(big.original_len(), 4097);
        assert!(big.truncated());
        let streamed = CappedBody::from_prefix(vec![b'y'; 100], 1_000_000);
        assert!(streamed.truncated());
        assert_eq!(streamed.original_len(), 1_000_000);
        let understated = CappedBody::from_prefix(vec![b'y'; 100], 10);
        assert_eq!(understated.original_len(), 100);
        assert!(!understated.truncated());
    }
}
