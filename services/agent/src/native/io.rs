//! Sockets for the native protocols: connect, send, read a bounded reply, and the mapping of
//! I/O errors onto [`MinerError`], where the agent's own exhaustion is never the miner's.

use crate::budget;
use crate::driver::{MinerError, blame};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest reply read from a miner: full cgminer `stats` replies are a few KiB.
pub const MAX_REPLY: usize = 1 << 20;

/// Runs `fut` under `deadline`; a late answer is a timeout, checked against the agent's own
/// exhaustion like every transport failure.
pub async fn within<T>(
    deadline: Duration,
    fut: impl Future<Output = Result<T, MinerError>>,
) -> Result<T, MinerError> {
    let since = crate::pressure::global().mark();
    match tokio::time::timeout(deadline, fut).await {
        Ok(r) => r.map_err(|e| blame(e, since, deadline)),
        Err(_) => Err(blame(MinerError::Timeout, since, deadline)),
    }
}

/// Maps a socket error: the agent's exhaustion, a timeout, or an unreachable miner.
pub fn io_error(error: &std::io::Error) -> MinerError {
    if budget::is_own_exhaustion(error) {
        return MinerError::Starved(error.to_string());
    }
    match error.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => MinerError::Timeout,
        _ => MinerError::Unreachable(error.to_string()),
    }
}

pub async fn connect(ip: IpAddr, port: u16) -> Result<TcpStream, MinerError> {
    let stream = TcpStream::connect(SocketAddr::new(ip, port))
        .await
        .map_err(|e| io_error(&e))?;
    // Requests are single small writes; Nagle would only delay them.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

pub async fn send(stream: &mut TcpStream, bytes: &[u8]) -> Result<(), MinerError> {
    stream.write_all(bytes).await.map_err(|e| io_error(&e))
}

/// Reads until the peer closes or a NUL arrives (cgminer ends its reply with one, then
/// closes), at most [`MAX_REPLY`] bytes.
pub async fn read_to_end_or_nul(stream: &mut TcpStream) -> Result<Vec<u8>, MinerError> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|e| io_error(&e))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if chunk[..n].contains(&0) {
            break;
        }
        if buf.len() > MAX_REPLY {
            return Err(MinerError::InvalidReply("reply too large".to_owned()));
        }
    }
    while matches!(buf.last(), Some(0 | b'\n' | b'\r' | b' ')) {
        buf.pop();
    }
    if buf.is_empty() {
        return Err(MinerError::Unreachable(
            "the miner closed the connection without a reply".to_owned(),
        ));
    }
    Ok(buf)
}

/// Reads one frame of a 4-byte little-endian length and that many bytes.
pub async fn read_frame(stream: &mut TcpStream) -> Result<Vec<u8>, MinerError> {
    let mut len = [0u8; 4];
    stream
        .read_exact(&mut len)
        .await
        .map_err(|e| io_error(&e))?;
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 || len > MAX_REPLY {
        return Err(MinerError::InvalidReply(format!("frame of {len} bytes")));
    }
    let mut body = vec![0u8; len];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|e| io_error(&e))?;
    Ok(body)
}

/// Parses a JSON reply into `T`.
pub fn parse<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, MinerError> {
    serde_json::from_slice(bytes).map_err(|e| MinerError::InvalidReply(e.to_string()))
}
