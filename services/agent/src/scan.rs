//! Discovery: identify the miners in an address range with asic-rs (make, model, firmware,
//! capabilities, nominal power when the firmware reports a power limit), optionally register
//! them with the planner, and serve the same over `ebb.svc.agent.<site>.scan`.

use crate::agent::Agent;
use crate::driver::{self, Reading};
use asic_rs::MinerFactory;
use asic_rs::core::data::collector::DataField;
use asic_rs::core::traits::miner::Miner;
use ebb_bus::rpc::{self, CallError};
use ebb_bus::{
    DiscoveredDevice, Envelope, RegisterDevicesReply, RegisterDevicesRequest, RpcError,
    RpcErrorKind, ScanRequest, ScanResult, subjects,
};
use ebb_domain::{Capabilities, SiteCode};
use futures::StreamExt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The most addresses one scan covers (a /16).
pub const MAX_SCAN_ADDRESSES: u64 = 65_536;
/// Devices per registration request, well under the bus's message limits.
const REGISTER_CHUNK: usize = ebb_bus::REGISTER_MAX_DEVICES;

/// How a scan runs.
#[derive(Clone, Debug)]
pub struct ScanOptions {
    /// Addresses probed at once.
    pub concurrency: usize,
    /// Deadline of identifying one address (and of each read that describes a miner).
    pub identification_timeout: Duration,
    /// A progress report every this many addresses (and at the end).
    pub progress_every: u32,
}

impl Default for ScanOptions {
    fn default() -> Self {
        Self {
            concurrency: 256,
            identification_timeout: Duration::from_secs(10),
            progress_every: 256,
        }
    }
}

/// How far a scan has got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanProgress {
    pub scanned: u32,
    pub total: u32,
    pub found: u32,
}

/// Why a scan did not run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("invalid address range {range:?}: {reason}")]
    InvalidRange { range: String, reason: String },
    #[error(
        "range {range:?} holds {count} addresses, more than the {MAX_SCAN_ADDRESSES} one scan covers"
    )]
    TooLarge { range: String, count: u64 },
}

/// Counts the addresses of `127.0.0.1-50`, `10.0-3.0.1-254` or a CIDR such as `10.1.0.0/24`,
/// without building the list (an unchecked `/0` would not fit in memory).
pub fn count_addresses(range: &str) -> Result<u64, ScanError> {
    let invalid = |reason: &str| ScanError::InvalidRange {
        range: range.to_owned(),
        reason: reason.to_owned(),
    };
    if let Some((addr, prefix)) = range.split_once('/') {
        addr.parse::<std::net::Ipv4Addr>()
            .map_err(|_| invalid("expected an IPv4 network such as 10.1.0.0/24"))?;
        let prefix: u32 = prefix
            .parse()
            .map_err(|_| invalid("the prefix length must be a number"))?;
        if prefix > 32 {
            return Err(invalid("the prefix length must be at most 32"));
        }
        return Ok(1u64 << (32 - prefix));
    }
    let octets: Vec<&str> = range.split('.').collect();
    if octets.len() != 4 {
        return Err(invalid("expected four octets such as 127.0.0.1-50"));
    }
    let mut count = 1u64;
    for octet in octets {
        let (lo, hi) = octet.split_once('-').unwrap_or((octet, octet));
        let lo: u8 = lo
            .trim()
            .parse()
            .map_err(|_| invalid("each octet must be 0-255 or a range such as 1-254"))?;
        let hi: u8 = hi
            .trim()
            .parse()
            .map_err(|_| invalid("each octet must be 0-255 or a range such as 1-254"))?;
        if lo > hi {
            return Err(invalid("an octet range must not run backwards"));
        }
        count *= u64::from(hi - lo) + 1;
    }
    Ok(count)
}

/// Identifies every miner in `range`, reporting progress through `progress`.
pub async fn scan(
    range: &str,
    options: &ScanOptions,
    mut progress: impl FnMut(ScanProgress) + Send,
) -> Result<ScanResult, ScanError> {
    let range = range.trim();
    let count = count_addresses(range)?;
    if count > MAX_SCAN_ADDRESSES {
        return Err(ScanError::TooLarge {
            range: range.to_owned(),
            count,
        });
    }
    let factory = if range.contains('/') {
        MinerFactory::from_subnet(range)
    } else {
        MinerFactory::from_range(range)
    }
    .map_err(|e| ScanError::InvalidRange {
        range: range.to_owned(),
        reason: e.to_string().to_lowercase(),
    })?
    .with_concurrent_limit(options.concurrency.max(1))
    .with_identification_timeout(options.identification_timeout)
    // The agent's file-descriptor budget is its operator's business, not a library's.
    .with_nofile_adjustment(false);
    let total = u32::try_from(factory.len()).unwrap_or(u32::MAX);
    let every = options.progress_every.max(1);
    let mut miners: Vec<(IpAddr, Box<dyn Miner>)> = Vec::new();
    let mut scanned = 0u32;
    let mut stream = factory.scan_stream_with_ip();
    while let Some((ip, miner)) = stream.next().await {
        scanned += 1;
        if let Some(m) = miner {
            miners.push((ip, m));
        }
        if scanned.is_multiple_of(every) || scanned == total {
            progress(ScanProgress {
                scanned,
                total,
                found: u32::try_from(miners.len()).unwrap_or(u32::MAX),
            });
        }
    }
    let mut describes = Vec::with_capacity(miners.len());
    for (ip, miner) in miners {
        describes.push(describe_owned(ip, miner, options.identification_timeout));
    }
    let mut devices: Vec<(IpAddr, DiscoveredDevice)> = futures::stream::iter(describes)
        .buffer_unordered(options.concurrency.max(1))
        .collect()
        .await;
    devices.sort_by_key(|(ip, _)| *ip);
    let devices: Vec<DiscoveredDevice> = devices.into_iter().map(|(_, d)| d).collect();
    Ok(ScanResult {
        scanned,
        found: u32::try_from(devices.len()).unwrap_or(u32::MAX),
        devices,
        registered: 0,
        scan_id: None,
        next: None,
    })
}

async fn describe_owned(
    ip: IpAddr,
    miner: Box<dyn Miner>,
    deadline: Duration,
) -> (IpAddr, DiscoveredDevice) {
    (ip, describe(&*miner, ip, deadline).await)
}

/// What Ebb records about an identified miner.
pub async fn describe(miner: &dyn Miner, ip: IpAddr, deadline: Duration) -> DiscoveredDevice {
    let info = miner.get_device_info();
    let version = tokio::time::timeout(deadline, miner.get_firmware_version())
        .await
        .ok()
        .flatten();
    let firmware = match version {
        Some(v) if !v.trim().is_empty() => format!("{} {}", info.firmware, v.trim()),
        _ => info.firmware.clone(),
    };
    let limit = if miner.supports_set_power_limit() {
        driver::read(miner, &[DataField::TuningTarget], deadline)
            .await
            .ok()
            .and_then(|r: Reading| r.power_limit_w)
    } else {
        None
    };
    DiscoveredDevice {
        address: ip.to_string(),
        make: info.make.clone(),
        model: info.model.clone(),
        firmware: Some(firmware),
        capabilities: capabilities(miner),
        nominal_power_w: limit,
    }
}

/// The capability table entry of a miner, from what its asic-rs backend supports.
pub fn capabilities(miner: &dyn Miner) -> Capabilities {
    let limit = miner.supports_set_power_limit();
    Capabilities {
        curtail_full: miner.supports_pause() && miner.supports_resume(),
        curtail_efficiency: limit,
        power_target: limit,
    }
}

/// Registers discovered devices with the planner (`ebb.svc.planner.register`), in bounded
/// requests. Returns how many the planner registered.
pub async fn register(
    client: &async_nats::Client,
    site: &SiteCode,
    devices: &[DiscoveredDevice],
    timeout: Duration,
) -> Result<u32, CallError> {
    let mut registered = 0;
    for chunk in devices.chunks(REGISTER_CHUNK) {
        let req = RegisterDevicesRequest {
            devices: chunk.to_vec(),
        };
        let reply: RegisterDevicesReply = rpc::call(client, site, None, &req, timeout).await?;
        registered += reply.registered;
    }
    Ok(registered)
}

/// Finished scans kept for their further pages: at most this many, each for
/// [`ebb_bus::SCAN_KEPT_FOR_S`].
const SCANS_KEPT: usize = 4;

/// A finished scan whose pages may still be read.
struct Kept {
    id: uuid::Uuid,
    at: std::time::Instant,
    result: ScanResult,
}

/// Serves `ebb.svc.agent.<site>.scan` until `shutdown`. Scans run one at a time: a request that
/// arrives during a scan waits for it. Replies are paged (see [`ScanRequest`]).
pub(crate) async fn serve(agent: Arc<Agent>, shutdown: CancellationToken) -> anyhow::Result<()> {
    use async_nats::service::ServiceExt;
    let site = agent.site.clone();
    let service = agent
        .client
        .service_builder()
        .description("ebb site agent: discovery scans")
        .start("ebb-agent", env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| anyhow::anyhow!("starting the agent service: {e}"))?;
    let mut kept: std::collections::VecDeque<Kept> = std::collections::VecDeque::new();
    let mut endpoint = service
        .group(subjects::agent_group(&site))
        .endpoint("scan")
        .await
        .map_err(|e| anyhow::anyhow!("adding the scan endpoint: {e}"))?;
    loop {
        let request = tokio::select! {
            () = shutdown.cancelled() => break,
            r = endpoint.next() => match r {
                Some(r) => r,
                None => break,
            },
        };
        let reply = tokio::select! {
            () = shutdown.cancelled() => Err(RpcError::new(RpcErrorKind::Unavailable, "the agent is shutting down")),
            r = handle_scan(&agent, &request.message.payload, &mut kept) => r,
        };
        match rpc::reply(reply) {
            Ok(payload) => {
                if let Err(error) = request.respond(Ok(payload)).await {
                    tracing::warn!(%site, %error, "answering a scan request failed");
                }
            }
            Err(error) => tracing::error!(%site, %error, "encoding a scan reply failed"),
        }
    }
    if let Err(error) = service.stop().await {
        tracing::debug!(%site, %error, "stopping the agent service");
    }
    Ok(())
}

async fn handle_scan(
    agent: &Agent,
    payload: &[u8],
    kept: &mut std::collections::VecDeque<Kept>,
) -> Result<ScanResult, RpcError> {
    let site = &agent.site;
    let request: Envelope<ScanRequest> = ebb_bus::decode(payload).map_err(|e| {
        RpcError::new(
            RpcErrorKind::InvalidArgument,
            format!("undecodable scan request: {e}"),
        )
    })?;
    let keep_for = Duration::from_secs(ebb_bus::SCAN_KEPT_FOR_S);
    kept.retain(|k| k.at.elapsed() < keep_for);
    let limit = request.body.limit.unwrap_or(ebb_bus::SCAN_PAGE_MAX);
    if limit == 0 || limit > ebb_bus::SCAN_PAGE_MAX {
        return Err(RpcError::invalid(
            "limit",
            format!("must be 1 to {}", ebb_bus::SCAN_PAGE_MAX),
        ));
    }
    if let Some(id) = request.body.scan_id {
        let Some(k) = kept.iter().find(|k| k.id == id) else {
            return Err(RpcError::invalid(
                "scan_id",
                format!(
                    "no finished scan {id} on this agent (scans are kept {} s); scan again",
                    ebb_bus::SCAN_KEPT_FOR_S
                ),
            ));
        };
        let r = &k.result;
        return Ok(ScanResult::page(
            id,
            r.scanned,
            r.registered,
            &r.devices,
            request.body.after.as_deref(),
            limit,
        ));
    }
    let range = request.body.range;
    let options = ScanOptions {
        concurrency: agent.config.scan_concurrency,
        identification_timeout: agent.config.call_timeout,
        ..ScanOptions::default()
    };
    tracing::info!(%site, %range, "scan started");
    let mut result = scan(&range, &options, |p| {
        tracing::info!(%site, scanned = p.scanned, total = p.total, found = p.found, "scan progress");
    })
    .await
    .map_err(|e| RpcError::invalid("range", e.to_string()))?;
    if request.body.register && !result.devices.is_empty() {
        result.registered = register(
            &agent.client,
            site,
            &result.devices,
            agent.config.call_timeout,
        )
        .await
        .map_err(|e| match e {
            CallError::Remote(remote) => remote,
            other => RpcError::new(
                RpcErrorKind::Unavailable,
                format!("registering with the planner: {other}"),
            ),
        })?;
    }
    let id = uuid::Uuid::now_v7();
    tracing::info!(%site, %range, scan_id = %id, scanned = result.scanned, found = result.devices.len(), registered = result.registered, "scan done");
    let first = ScanResult::page(
        id,
        result.scanned,
        result.registered,
        &result.devices,
        None,
        limit,
    );
    if first.next.is_some() {
        if kept.len() >= SCANS_KEPT {
            kept.pop_front();
        }
        kept.push_back(Kept {
            id,
            at: std::time::Instant::now(),
            result,
        });
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_counts() {
        let check = |range: &str, want: Option<u64>| {
            assert_eq!(count_addresses(range).ok(), want, "{range}")
        };
        check("127.0.0.1", Some(1));
        check("127.0.0.1-50", Some(50));
        check("10.0-3.0.1-254", Some(4 * 254));
        check("10.1.0.0/24", Some(256));
        check("10.0.0.0/8", Some(1 << 24));
        check("0-255.0-255.0-255.0-255", Some(1 << 32));
        check("10.1.0.0/33", None);
        check("::1/64", None);
        check("127.0.0.50-1", None);
        check("127.0.0", None);
        check("127.0.0.300", None);
    }

    #[tokio::test]
    async fn oversized_ranges_are_refused_before_any_work() {
        let err = scan("10.0.0.0/8", &ScanOptions::default(), |_| {})
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ScanError::TooLarge {
                    count: 16_777_216,
                    ..
                }
            ),
            "{err}"
        );
    }
}
