//! The site's inventory: which miners this agent drives, at which address, with which
//! capabilities. It comes from the planner (`ebb.svc.planner.inventory`) at start and every
//! `inventory_refresh`, or from a fixed list (tests, a site without a planner).
//!
//! A failed refresh keeps the last good inventory: a planner outage must not make the agent
//! forget its miners.

use crate::agent::Agent;
use crate::miner_path::MinerPath;
use ebb_bus::InventoryDevice;
use ebb_bus::rpc::CallError;
use ebb_domain::{DeviceId, SiteCode};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Where the agent learns its site's miners.
#[derive(Clone, Debug, PartialEq)]
pub enum InventorySource {
    /// Ask the planner at start and every `inventory_refresh`.
    Planner,
    /// A fixed list.
    Static(Vec<InventoryDevice>),
}

/// One inventory snapshot, indexed by device id.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The devices, in the order the source listed them (telemetry keeps that order).
    pub devices: Vec<InventoryDevice>,
    /// Index into `devices` by id.
    by_id: HashMap<DeviceId, usize>,
    /// Whether any inventory was loaded yet.
    pub loaded: bool,
}

impl Snapshot {
    pub fn new(devices: Vec<InventoryDevice>) -> Self {
        let by_id = devices
            .iter()
            .enumerate()
            .map(|(i, d)| (d.device_id, i))
            .collect();
        Self {
            devices,
            by_id,
            loaded: true,
        }
    }

    pub fn get(&self, id: &DeviceId) -> Option<&InventoryDevice> {
        self.by_id.get(id).map(|&i| &self.devices[i])
    }

    /// The addresses that parse as IP addresses.
    pub fn addresses(&self) -> HashSet<IpAddr> {
        self.devices
            .iter()
            .filter_map(|d| d.address.parse().ok())
            .collect()
    }
}

/// The current snapshot, swapped whole on refresh so readers never see half an update.
#[derive(Debug, Default)]
pub struct Inventory {
    current: RwLock<Arc<Snapshot>>,
}

impl Inventory {
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn replace(&self, snapshot: Snapshot) {
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(snapshot);
    }
}

/// Asks the planner for `site`'s devices, page by page (each page fits a NATS message whatever
/// the site's size), each page under `timeout`. The paging protocol is the bus's.
pub async fn fetch(
    client: &async_nats::Client,
    site: &SiteCode,
    timeout: Duration,
) -> Result<Vec<InventoryDevice>, CallError> {
    ebb_bus::endpoints::fetch_inventory(client, site, timeout).await
}

/// Keeps the agent's inventory current until `shutdown`. A static source is installed once.
pub async fn maintain(source: InventorySource, agent: Arc<Agent>, shutdown: CancellationToken) {
    if let InventorySource::Static(devices) = source {
        tracing::info!(site = %agent.site, devices = devices.len(), "static inventory installed");
        install(&agent.inventory, &agent.miners, devices);
        // Nothing to refresh, but the task lives as long as the agent: its supervisor takes an
        // early end for a failure.
        shutdown.cancelled().await;
        return;
    }
    let site = &agent.site;
    let mut ticker = tokio::time::interval(agent.config.inventory_refresh);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let fetched = tokio::select! {
            () = shutdown.cancelled() => return,
            r = fetch(&agent.client, site, agent.config.call_timeout) => r,
        };
        match fetched {
            Ok(devices) => {
                let n = devices.len();
                let first = !agent.inventory.snapshot().loaded;
                install(&agent.inventory, &agent.miners, devices);
                if first {
                    tracing::info!(%site, devices = n, "inventory loaded");
                } else {
                    tracing::debug!(%site, devices = n, "inventory refreshed");
                }
            }
            Err(error) => {
                tracing::warn!(%site, %error, "inventory refresh failed, keeping the last one")
            }
        }
    }
}

fn install(inventory: &Inventory, miners: &MinerPath, devices: Vec<InventoryDevice>) {
    let snapshot = Snapshot::new(devices);
    miners.retain(&snapshot.addresses());
    inventory.replace(snapshot);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ebb_domain::Capabilities;

    #[test]
    fn snapshot_indexes_by_id_and_keeps_order() {
        let dev = |addr: &str| InventoryDevice {
            device_id: DeviceId::new(),
            address: addr.into(),
            make: "m".into(),
            model: "x".into(),
            firmware: None,
            capabilities: Capabilities::default(),
        };
        let devices = vec![dev("127.0.0.2"), dev("not an ip"), dev("127.0.0.1")];
        let s = Snapshot::new(devices.clone());
        assert_eq!(s.get(&devices[2].device_id).unwrap().address, "127.0.0.1");
        assert!(s.get(&DeviceId::new()).is_none());
        assert_eq!(s.addresses().len(), 2);
        assert_eq!(s.devices[0].address, "127.0.0.2");
        assert!(!Snapshot::default().loaded);
    }
}
