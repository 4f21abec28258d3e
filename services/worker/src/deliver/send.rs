//! One webhook attempt over the wire: resolve the URL with the SSRF guard, connect to the checked
//! addresses only, TLS for https, one HTTP/1.1 POST on a fresh connection, the response read up
//! to a bound. What happened becomes an [`Attempt`] for the store; nothing here returns an error.
//!
//! Why a hand-driven hyper connection and not a pooled client: the guard's answer must be the
//! only thing the socket connects to (a client that resolves the name again could be sent
//! elsewhere by a DNS answer that changed after the check), and each phase must be timed on its
//! own. The phases are marked on tokio's monotonic clock ([`Marks`]): connected when the TCP
//! connect returns, TLS done when the handshake does, the request sent when its last byte was
//! written before the response began, the first byte when the response's first byte was read.
//! A phase that did not complete has no mark, so it is absent from the record, never negative.
//!
//! Redirects are never followed: a 3xx is a response like any other, and a failed attempt.
//! Everything is bounded: the lookup, the connect and the TLS handshake have their own timeouts,
//! the whole attempt (body included) has one, response headers are held to [`MAX_HEAD_BYTES`]
//! and the body is read to [`BODY_READ_LIMIT`] at most, of which the first 4 KiB are kept.

use bytes::Bytes;
use ebb_store::webhooks::Attempt;
use ebb_webhooks::SignedHeaders;
use ebb_webhooks::attempt::{CappedBody, Marks, PhaseTimings, RESPONSE_BODY_CAP};
use ebb_webhooks::ssrf::{self, Destination, Policy, WebhookUrl};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The most of a response body read: past it the connection is dropped, and the recorded length
/// is the larger of what was read and what `Content-Length` announced.
pub const BODY_READ_LIMIT: u64 = 1024 * 1024;
/// The most bytes of response head (status line and headers) hyper buffers.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

const USER_AGENT_VALUE: &str = concat!("ebb-webhooks/", env!("CARGO_PKG_VERSION"));

/// How long each part of an attempt may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub tls: Duration,
    /// The whole attempt: lookup, connect, TLS, request, response and its body.
    pub total: Duration,
}

/// Why the sender could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SenderError {
    #[error("setting up tls for webhooks")]
    Tls(#[from] rustls::Error),
    #[error("reading the webhook ca file {path}")]
    CaFile {
        path: String,
        source: rustls::pki_types::pem::Error,
    },
}

/// Sends webhook attempts: the SSRF policy, the timeouts and the TLS configuration, shared.
#[derive(Clone)]
pub struct Sender {
    policy: Policy,
    timeouts: Timeouts,
    tls: TlsConnector,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("policy", &self.policy)
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

impl Sender {
    /// A sender trusting Mozilla's roots (compiled in, so a host without a CA bundle still
    /// verifies) and `extra_roots` (a deployment's private CA).
    pub fn new(
        policy: Policy,
        timeouts: Timeouts,
        extra_roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, SenderError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().cloned());
        for cert in extra_roots {
            roots.add(cert)?;
        }
        // The provider is named rather than taken from the process default, which is ambiguous
        // (and panics) when two providers are compiled in.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            policy,
            timeouts,
            tls: TlsConnector::from(Arc::new(config)),
        })
    }

    /// PEM certificates from `path`, for [`Sender::new`].
    pub fn read_roots(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, SenderError> {
        use rustls::pki_types::pem::PemObject;
        CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|source| SenderError::CaFile {
                path: path.display().to_string(),
                source,
            })
    }

    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// POSTs `body` to `url` with the signed headers and `content-type: application/json`, and
    /// says what happened. Never resolves the name after the guard checked it.
    pub async fn post(&self, url: &str, signed: &SignedHeaders, body: Bytes) -> Attempt {
        let mut marks = Marks::start(Instant::now());
        let deadline = marks.started + self.timeouts.total;
        let io_marks = IoMarks::shared();
        let result = tokio::time::timeout_at(
            deadline,
            self.attempt(url, signed, body, &mut marks, &io_marks),
        )
        .await;
        {
            let io = io_marks.lock().unwrap_or_else(|p| p.into_inner());
            marks.request_sent = io.written;
            marks.first_byte = io.first_read;
        }
        let timings = PhaseTimings::from_marks(&marks);
        match result {
            Ok(Ok(response)) => Attempt {
                status: Some(response.status),
                error: response.error,
                timings,
                body: Some(response.body),
            },
            Ok(Err(error)) => Attempt {
                status: None,
                error: Some(error),
                timings,
                body: None,
            },
            Err(_) => Attempt {
                status: None,
                error: Some(format!(
                    "no response within {:?} (the attempt's timeout)",
                    self.timeouts.total
                )),
                timings,
                body: None,
            },
        }
    }

    async fn attempt(
        &self,
        url: &str,
        signed: &SignedHeaders,
        body: Bytes,
        marks: &mut Marks,
        io_marks: &Arc<Mutex<IoMarks>>,
    ) -> Result<Received, String> {
        let deadline = marks.started + self.timeouts.total;
        let url = WebhookUrl::parse(url).map_err(|e| e.to_string())?;
        let dest = ssrf::resolve(&url, &self.policy)
            .await
            .map_err(|e| error_chain(&e))?;
        let tcp = self.connect(&dest).await?;
        marks.connected = Some(Instant::now());
        let stream = match dest.url.scheme() {
            "https" => {
                let tls = self.handshake(&dest, tcp).await?;
                marks.tls_done = Some(Instant::now());
                Stream::Tls(Box::new(tls))
            }
            _ => Stream::Plain(tcp),
        };
        let io = TokioIo::new(Timed {
            inner: stream,
            marks: io_marks.clone(),
        });
        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            .max_buf_size(MAX_HEAD_BYTES)
            .handshake::<_, Full<Bytes>>(io)
            .await
            .map_err(|e| format!("starting http/1.1 with {}: {}", dest.host, error_chain(&e)))?;
        let request = request(&dest, signed, body)?;
        let exchange = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| format!("sending the webhook: {}", error_chain(&e)))?;
            Ok::<_, String>(read(response, deadline).await)
        };
        // The connection is driven here, in this future, not in a task of its own: when the
        // attempt ends or times out, the connection goes with it.
        let mut conn = std::pin::pin!(conn);
        let mut exchange = std::pin::pin!(exchange);
        tokio::select! {
            r = &mut exchange => r,
            c = &mut conn => match c {
                Err(e) => Err(format!("the connection to {} failed: {}", dest.host, error_chain(&e))),
                // Closed cleanly before the exchange ended: the exchange says why.
                Ok(()) => exchange.await,
            },
        }
    }

    /// Connects to the checked addresses in turn, all within the connect timeout.
    async fn connect(&self, dest: &Destination) -> Result<TcpStream, String> {
        let attempt = async {
            let mut last = None;
            for addr in &dest.addrs {
                match TcpStream::connect(addr).await {
                    Ok(s) => return Ok(s),
                    Err(e) => last = Some((*addr, e)),
                }
            }
            Err(last)
        };
        match tokio::time::timeout(self.timeouts.connect, attempt).await {
            Ok(Ok(s)) => {
                // Small requests go out at once rather than waiting on Nagle.
                let _ = s.set_nodelay(true);
                Ok(s)
            }
            Ok(Err(Some((addr, e)))) => Err(format!("connecting to {addr}: {e}")),
            Ok(Err(None)) => Err(format!("the webhook host {} has no address", dest.host)),
            Err(_) => Err(format!(
                "connecting to {} timed out after {:?}",
                show_addrs(&dest.addrs),
                self.timeouts.connect
            )),
        }
    }

    async fn handshake(
        &self,
        dest: &Destination,
        tcp: TcpStream,
    ) -> Result<TlsStream<TcpStream>, String> {
        let name = ServerName::try_from(dest.host.clone())
            .map_err(|e| format!("{:?} is not a tls server name: {e}", dest.host))?;
        match tokio::time::timeout(self.timeouts.tls, self.tls.connect(name, tcp)).await {
            Ok(Ok(tls)) => Ok(tls),
            Ok(Err(e)) => Err(format!(
                "the tls handshake with {}: {}",
                dest.host,
                error_chain(&e)
            )),
            Err(_) => Err(format!(
                "the tls handshake with {} timed out after {:?}",
                dest.host, self.timeouts.tls
            )),
        }
    }
}

fn show_addrs(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(SocketAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The request: origin-form target, `Host` as the URL names it, the signed headers.
fn request(
    dest: &Destination,
    signed: &SignedHeaders,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, String> {
    let url = &dest.url;
    let target = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    // The URL's host as written (brackets kept for IPv6), with its port only when it is not the
    // scheme's default, as a browser sends it. Userinfo is never sent.
    let host = match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap_or(&dest.host)),
        None => url.host_str().unwrap_or(&dest.host).to_owned(),
    };
    let mut builder = Request::post(target)
        .header(HOST, host)
        .header(CONTENT_TYPE, "application/json")
        .header(USER_AGENT, USER_AGENT_VALUE);
    for (name, value) in signed.pairs() {
        builder = builder.header(name, value);
    }
    // hyper writes Content-Length from the body's exact size.
    builder
        .body(Full::new(body))
        .map_err(|e| format!("building the webhook request: {e}"))
}

/// A response as far as it was read.
struct Received {
    status: u16,
    body: CappedBody,
    /// Why the body was not read to its end, if it was not.
    error: Option<String>,
}

/// Reads the body up to [`BODY_READ_LIMIT`] and until `deadline`, keeping the first
/// [`RESPONSE_BODY_CAP`] bytes. A body that does not end in time keeps the status: the receiver
/// answered (the attempt's own timeout fires at the same instant, but polls this first).
async fn read(response: Response<Incoming>, deadline: Instant) -> Received {
    let status = response.status().as_u16();
    let announced = response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = response.into_body();
    let mut kept = Vec::new();
    let mut seen: u64 = 0;
    let mut error = None;
    loop {
        if seen > BODY_READ_LIMIT {
            break;
        }
        let Ok(frame) = tokio::time::timeout_at(deadline, body.frame()).await else {
            error = Some(format!(
                "the response body did not end within the attempt's timeout ({seen} bytes read)"
            ));
            break;
        };
        match frame {
            None => break,
            Some(Err(e)) => {
                error = Some(format!(
                    "reading the response body after {seen} bytes: {}",
                    error_chain(&e)
                ));
                break;
            }
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    seen += data.len() as u64;
                    let room = RESPONSE_BODY_CAP.saturating_sub(kept.len());
                    kept.extend_from_slice(&data[..room.min(data.len())]);
                }
            }
        }
    }
    let original_len = if seen > BODY_READ_LIMIT {
        seen.max(announced.unwrap_or(0))
    } else {
        seen
    };
    Received {
        status,
        body: CappedBody::from_prefix(kept, original_len),
        error,
    }
}

/// `e` and its sources, `: `-separated.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        // Some errors repeat their source in their own message.
        if !text.ends_with(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// When the request's bytes went out and the response's came in, seen at the socket.
#[derive(Debug, Default)]
struct IoMarks {
    /// The last write before the response began: the request sent.
    written: Option<Instant>,
    /// The first byte read after a write: the response's first byte.
    first_read: Option<Instant>,
}

impl IoMarks {
    fn shared() -> Arc<Mutex<Self>> {
        Arc::new(Mutex::new(Self::default()))
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// A connection that marks, on the monotonic clock, when the request was written and when the
/// response's first byte was read (after TLS, so the handshake's own bytes do not count).
struct Timed {
    inner: Stream,
    marks: Arc<Mutex<IoMarks>>,
}

impl Timed {
    fn mark(&self, f: impl FnOnce(&mut IoMarks)) {
        f(&mut self.marks.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

impl AsyncRead for Timed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = match &mut this.inner {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.mark(|m| {
                if m.first_read.is_none() && m.written.is_some() {
                    m.first_read = Some(Instant::now());
                }
            });
        }
        polled
    }
}

impl AsyncWrite for Timed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = match &mut this.inner {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, data),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        };
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.mark(|m| {
                if m.first_read.is_none() {
                    m.written = Some(Instant::now());
                }
            });
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = match &mut this.inner {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        };
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.mark(|m| {
                if m.first_read.is_none() {
                    m.written = Some(Instant::now());
                }
            });
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        match &self.inner {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chains_do_not_repeat_themselves() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer: inner")]
        struct Repeats(#[source] io::Error);
        let e = Repeats(io::Error::other("inner"));
        assert_eq!(error_chain(&e), "outer: inner");
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Wraps(#[source] io::Error);
        assert_eq!(
            error_chain(&Wraps(io::Error::other("inner"))),
            "outer: inner"
        );
    }
}
