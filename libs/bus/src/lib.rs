//! Ebb's bus contract: subject names, the versioned MessagePack envelope, the wire messages,
//! JetStream stream and consumer definitions, bounded batch splitting, publishing with
//! `Nats-Msg-Id`, and typed request/reply. Wire types live here, not in libs/domain: they carry a
//! version and are converted at the edge.

pub mod codec;
pub mod endpoints;
pub mod messages;
pub mod publish;
pub mod rpc;
pub mod split;
pub mod streams;
pub mod subjects;

pub use codec::{CodecError, Envelope, decode, encode};
pub use endpoints::PreviewRequest;
pub use messages::*;
pub use rpc::Request;

/// Connects to NATS with the settings every Ebb service uses: a name, reconnects from the first
/// attempt, and a request timeout. Credentials in the URL (`nats://user:password@host:port`) are
/// passed as user and password, which async-nats does not take from the URL by itself.
pub async fn connect(
    url: &str,
    name: &str,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    connect_with(url, name, None).await
}

/// [`connect`], authenticating with a NATS `.creds` file (user JWT and nkey seed) when given.
pub async fn connect_with(
    url: &str,
    name: &str,
    creds: Option<&std::path::Path>,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    let mut options = match creds {
        Some(path) => async_nats::ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|e| {
                async_nats::ConnectError::with_source(async_nats::ConnectErrorKind::Io, e)
            })?,
        None => async_nats::ConnectOptions::new(),
    }
    .name(name)
    .request_timeout(Some(std::time::Duration::from_secs(10)))
    .retry_on_initial_connect();
    let mut addrs = Vec::new();
    for part in url.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let addr: async_nats::ServerAddr = part.parse().map_err(|e: std::io::Error| {
            async_nats::ConnectError::with_source(async_nats::ConnectErrorKind::ServerParse, e)
        })?;
        if let (Some(user), Some(pass)) = (addr.username(), addr.password()) {
            options = options.user_and_password(user.to_owned(), pass.to_owned());
        }
        addrs.push(addr);
    }
    options.connect(addrs).await
}
