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
    connect_with(url, name, &ClientAuth::default()).await
}

/// How a client proves who it is, where its replies arrive, and which CA it trusts.
#[derive(Clone, Debug, Default)]
pub struct ClientAuth<'a> {
    /// A NATS `.creds` file (user JWT and nkey seed).
    pub creds: Option<&'a std::path::Path>,
    /// The client's own inbox prefix (`_INBOX_<user>`): its permissions allow no other.
    pub inbox_prefix: Option<String>,
    /// A CA certificate file to trust; TLS is then required.
    pub ca: Option<&'a std::path::Path>,
}

/// [`connect`], with credentials, an inbox prefix and a CA as `auth` says.
pub async fn connect_with(
    url: &str,
    name: &str,
    auth: &ClientAuth<'_>,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    let mut options = match auth.creds {
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
    if let Some(prefix) = &auth.inbox_prefix {
        options = options.custom_inbox_prefix(prefix);
    }
    if let Some(ca) = auth.ca {
        options = options
            .add_root_certificates(ca.to_owned())
            .require_tls(true);
    }
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
