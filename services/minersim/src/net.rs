//! Listening: one listener per miner address and port, or one per port for the whole fleet.
//!
//! Per-address mode binds every miner's own 127.x.y.z on each port its firmware serves, so a
//! gone or rebooting miner can really stop listening (clients see "connection refused").
//! Shared mode binds each port once on 0.0.0.0 and dispatches on the local address each
//! connection arrived at; it needs no per-miner listener or task, which is what lets one
//! process simulate 100,000 miners.
//!
//! Architecture invariant: every connection is bounded: a global cap on open connections,
//! a deadline for the client to send its request, a cap on how long a faulty miner holds a
//! connection, and a maximum lifetime. Every task is tracked and stops on the shutdown token.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::model::Firmware;
use crate::sim::{Delivery, Gate, ReplyPlan, SimCore};
use crate::web::WebRouters;

/// The longest any single connection may live, whatever it is doing.
const CONNECTION_MAX_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// How long an accepted connection waits for a slot when the simulator is at its cap.
const ADMISSION_WAIT: Duration = Duration::from_secs(1);

/// How the simulator listens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ListenMode {
    /// Each miner binds its own loopback address on each of its ports (a few thousand miners).
    #[default]
    PerAddress,
    /// One listener per port on 0.0.0.0, dispatching on the local address (any fleet size;
    /// needs exclusive use of ports 80, 4028 and 4433).
    Shared,
}

/// A port a miner serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum PortKind {
    /// cgminer-style JSON RPC.
    Rpc,
    /// Whatsminer v3 length-prefixed API.
    WmApi,
    /// HTTP.
    Web,
}

impl PortKind {
    pub const ALL: [PortKind; 3] = [PortKind::Rpc, PortKind::WmApi, PortKind::Web];

    pub fn port(self) -> u16 {
        match self {
            PortKind::Rpc => 4028,
            PortKind::WmApi => 4433,
            PortKind::Web => 80,
        }
    }
}

/// The ports a firmware serves. Whatsminer and LuxOS also answer on 80 as the real units do
/// (a redirect to HTTPS, the LuxOS web UI), which is also how asic-rs's web probe knows them.
pub(crate) fn ports_for(fw: Firmware) -> &'static [PortKind] {
    match fw {
        Firmware::WhatsminerV3 => &[PortKind::Rpc, PortKind::WmApi, PortKind::Web],
        Firmware::AntminerStock | Firmware::LuxOs => &[PortKind::Rpc, PortKind::Web],
    }
}

/// Everything a connection handler needs.
#[derive(Debug)]
pub(crate) struct Front {
    pub core: Arc<SimCore>,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    pub connections: Arc<Semaphore>,
    pub web: WebRouters,
}

/// Why binding failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BindError {
    /// The address and port are taken.
    #[error("{addr} is already in use")]
    InUse { addr: SocketAddr },
    /// Anything else.
    #[error("binding {addr}: {source}")]
    Other { addr: SocketAddr, source: io::Error },
}

/// Accept queue of a listener. A shared listener takes every miner's connections, so a burst
/// of thousands of connects must not overflow it (an overflow costs the client a SYN
/// retransmit, a full second); the kernel caps it at `net.core.somaxconn`. Per-address
/// listeners serve one miner each.
fn backlog(addr: SocketAddr) -> u32 {
    if addr.ip().is_unspecified() {
        4096
    } else {
        256
    }
}

pub(crate) fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    let map = |source: io::Error| {
        if source.kind() == io::ErrorKind::AddrInUse {
            BindError::InUse { addr }
        } else {
            BindError::Other { addr, source }
        }
    };
    let socket = TcpSocket::new_v4().map_err(map)?;
    socket.set_reuseaddr(true).map_err(map)?;
    socket.bind(addr).map_err(map)?;
    socket.listen(backlog(addr)).map_err(map)
}

/// Binds every miner's listeners (per-address mode). All or nothing.
pub(crate) fn bind_per_address(
    core: &SimCore,
) -> Result<Vec<(u32, PortKind, TcpListener)>, BindError> {
    let mut out = Vec::new();
    for (idx, m) in core.miners.iter().enumerate() {
        for &kind in ports_for(m.plate.model.firmware()) {
            let addr = SocketAddr::V4(SocketAddrV4::new(m.address, kind.port()));
            out.push((idx as u32, kind, bind(addr)?));
        }
    }
    Ok(out)
}

/// Binds the shared listeners on 0.0.0.0 for the ports the fleet needs.
pub(crate) fn bind_shared(core: &SimCore) -> anyhow::Result<Vec<(PortKind, TcpListener)>> {
    let mut out = Vec::new();
    for kind in PortKind::ALL {
        let needed = core
            .miners
            .iter()
            .any(|m| ports_for(m.plate.model.firmware()).contains(&kind));
        if !needed {
            continue;
        }
        let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, kind.port()));
        match bind(addr) {
            Ok(l) => out.push((kind, l)),
            Err(BindError::InUse { .. }) => anyhow::bail!(
                "port {} on 0.0.0.0 is taken: shared mode needs exclusive use of ports 80, 4028 \
                 and 4433 (another simulator, a per-address test run or a real service holds it); \
                 stop it or use per-address mode",
                kind.port()
            ),
            Err(e) => {
                return Err(anyhow::Error::new(e).context(
                    "shared mode binds ports 80, 4028 and 4433 on 0.0.0.0, which needs root or \
                     CAP_NET_BIND_SERVICE for port 80",
                ));
            }
        }
    }
    Ok(out)
}

/// Starts the accept loops for per-address listeners.
pub(crate) fn spawn_per_address(front: &Arc<Front>, listeners: Vec<(u32, PortKind, TcpListener)>) {
    for (idx, kind, listener) in listeners {
        let front = Arc::clone(front);
        front
            .tracker
            .clone()
            .spawn(per_address_loop(front, idx, kind, listener));
    }
}

async fn per_address_loop(front: Arc<Front>, idx: u32, kind: PortKind, listener: TcpListener) {
    let addr = SocketAddr::V4(SocketAddrV4::new(
        front.core.miner(idx).address,
        kind.port(),
    ));
    let mut epoch = front.core.reach_epoch.subscribe();
    let mut listener = Some(listener);
    loop {
        epoch.mark_unchanged();
        let listening = front.core.listening(idx);
        match (listener.as_ref(), listening) {
            (Some(_), false) => {
                // Gone or rebooting: close, so connecting is refused as with a real host.
                listener = None;
                continue;
            }
            (None, true) => {
                match bind(addr) {
                    Ok(l) => listener = Some(l),
                    Err(error) => {
                        tracing::warn!(%addr, %error, "cannot re-bind miner listener");
                        tokio::select! {
                            () = front.shutdown.cancelled() => return,
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                }
                continue;
            }
            (None, false) => {
                // Rebooting ends on the simulated clock, so look again now and then.
                tokio::select! {
                    () = front.shutdown.cancelled() => return,
                    _ = epoch.changed() => {}
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
                continue;
            }
            (Some(l), true) => {
                tokio::select! {
                    () = front.shutdown.cancelled() => return,
                    _ = epoch.changed() => {}
                    accepted = l.accept() => match accepted {
                        Ok((stream, _)) => dispatch(&front, idx, kind, stream).await,
                        Err(error) => {
                            tracing::debug!(%addr, %error, "accept failed");
                            // Out of descriptors, most likely: back off instead of spinning.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    },
                }
            }
        }
    }
}

/// Starts the accept loops for shared listeners.
pub(crate) fn spawn_shared(front: &Arc<Front>, listeners: Vec<(PortKind, TcpListener)>) {
    for (kind, listener) in listeners {
        let front = Arc::clone(front);
        front
            .tracker
            .clone()
            .spawn(shared_loop(front, kind, listener));
    }
}

async fn shared_loop(front: Arc<Front>, kind: PortKind, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            () = front.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::debug!(port = kind.port(), %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let miner = match stream.local_addr() {
            Ok(SocketAddr::V4(local)) if local.ip().octets()[0] == 127 => {
                front.core.index_of(*local.ip()).filter(|&idx| {
                    ports_for(front.core.miner(idx).plate.model.firmware()).contains(&kind)
                })
            }
            _ => None,
        };
        match miner {
            Some(idx) => dispatch(&front, idx, kind, stream).await,
            // Not a simulated miner (or not one serving this port): refuse.
            None => reset(stream),
        }
    }
}

/// Resets a connection (RST rather than an orderly close).
pub(crate) fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Admits an accepted connection and hands it to its protocol. At the connection cap it
/// waits a little for a slot (holding up the accept loop, which pushes back on clients through
/// the listen backlog) before giving up on the connection.
async fn dispatch(front: &Arc<Front>, idx: u32, kind: PortKind, stream: TcpStream) {
    if front.core.gate(idx) == Gate::Reset {
        reset(stream);
        return;
    }
    let permit = match Arc::clone(&front.connections).try_acquire_owned() {
        Ok(permit) => permit,
        Err(_) => {
            let wait = Arc::clone(&front.connections).acquire_owned();
            match tokio::time::timeout(ADMISSION_WAIT, wait).await {
                Ok(Ok(permit)) => permit,
                _ => {
                    tracing::debug!("connection limit reached; dropping a connection");
                    reset(stream);
                    return;
                }
            }
        }
    };
    let _ = stream.set_nodelay(true);
    let front2 = Arc::clone(front);
    front
        .tracker
        .spawn(serve_connection(front2, idx, kind, stream, permit));
}

async fn serve_connection(
    front: Arc<Front>,
    idx: u32,
    kind: PortKind,
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
) {
    let serve = async {
        match kind {
            PortKind::Rpc => crate::rpc::serve(&front, idx, stream).await,
            PortKind::WmApi => crate::whatsminer::serve_v3(&front, idx, stream).await,
            PortKind::Web => crate::web::serve(&front, idx, stream).await,
        }
    };
    tokio::select! {
        () = front.shutdown.cancelled() => {}
        _ = tokio::time::timeout(CONNECTION_MAX_LIFETIME, serve) => {}
    }
}

/// Delivers a reply as the miner's faults dictate. The caller has already checked that the
/// plan is not [`Delivery::NoAnswer`] before acting on the request.
pub(crate) async fn deliver(
    front: &Front,
    stream: &mut TcpStream,
    plan: ReplyPlan,
    bytes: &[u8],
) -> io::Result<()> {
    if let Some(delay) = plan.delay {
        tokio::time::sleep(delay).await;
    }
    let timeout = front.core.limits.read_timeout;
    match plan.delivery {
        Delivery::Normal => write_all(stream, bytes, timeout).await,
        Delivery::NoAnswer => {
            hold(front, stream).await;
            Ok(())
        }
        Delivery::Stall => {
            write_all(stream, &bytes[..bytes.len() / 2], timeout).await?;
            hold(front, stream).await;
            Ok(())
        }
    }
}

async fn write_all(stream: &mut TcpStream, bytes: &[u8], timeout: Duration) -> io::Result<()> {
    tokio::time::timeout(timeout, async {
        stream.write_all(bytes).await?;
        stream.flush().await
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "write timed out"))?
}

/// Keeps a connection open without answering, until the client gives up, the hold cap
/// passes, or the simulator shuts down.
pub(crate) async fn hold(front: &Front, stream: &mut TcpStream) {
    let drain = async {
        let mut buf = [0u8; 512];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::select! {
        () = front.shutdown.cancelled() => {}
        () = tokio::time::sleep(front.core.limits.hold_max) => {}
        () = drain => {}
    }
}
