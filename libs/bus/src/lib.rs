//! Ebb's bus contract: subject names, the versioned MessagePack envelope, the wire messages,
//! JetStream stream and consumer definitions, bounded batch splitting, publishing with
//! `Nats-Msg-Id`, and typed request/reply. Wire types live here, not in libs/domain: they carry a
//! version and are converted at the edge.

pub mod codec;
pub mod messages;
pub mod publish;
pub mod rpc;
pub mod split;
pub mod streams;
pub mod subjects;

pub use codec::{CodecError, Envelope, decode, encode};
pub use messages::*;

/// Connects to NATS with the settings every Ebb service uses: a name, bounded reconnects backoff,
/// and a request timeout.
pub async fn connect(
    url: &str,
    name: &str,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    async_nats::ConnectOptions::new()
        .name(name)
        .request_timeout(Some(std::time::Duration::from_secs(10)))
        .retry_on_initial_connect()
        .connect(url)
        .await
}
