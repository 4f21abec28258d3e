//! Discovery and the planner edge: scanning identifies each protocol with its capabilities, the
//! scan endpoint registers what it found, and the inventory comes from the planner.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ebb_agent::{ScanOptions, ScanProgress};
use ebb_bus::{
    Inventory, InventoryRequest, RegisterDevicesReply, RegisterDevicesRequest, ScanRequest,
    ScanResult, TelemetryBatch, rpc, subjects,
};
use ebb_domain::{Capabilities, SiteCode};
use ebb_minersim::Firmware;
use ebb_testkit::NatsServer;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::{instant_paused, inventory_device, one_per_protocol, start_sim, test_config};

fn range_of(addrs: &[Ipv4Addr]) -> String {
    let (first, last) = (addrs[0].octets(), addrs[addrs.len() - 1].octets());
    assert_eq!(first[..3], last[..3], "a small fleet stays in one /24");
    format!(
        "{}.{}.{}.{}-{}",
        first[0], first[1], first[2], first[3], last[3]
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_identifies_each_protocol() {
    let sim = start_sim(one_per_protocol(), instant_paused()).await;
    let addrs = sim.addresses();
    let progress = Arc::new(Mutex::new(Vec::<ScanProgress>::new()));
    let seen = progress.clone();
    let options = ScanOptions {
        progress_every: 1,
        ..ScanOptions::default()
    };
    let result = ebb_agent::scan(&range_of(&addrs), &options, move |p| {
        seen.lock().unwrap().push(p)
    })
    .await
    .unwrap();
    assert_eq!(result.scanned, 3);
    assert_eq!(result.devices.len(), 3);
    let progress = progress.lock().unwrap().clone();
    assert_eq!(
        progress.last(),
        Some(&ScanProgress {
            scanned: 3,
            total: 3,
            found: 3
        })
    );
    for d in &result.devices {
        let info = sim.miner(d.address.parse().unwrap()).unwrap();
        let limit = Capabilities {
            curtail_full: true,
            curtail_efficiency: true,
            power_target: true,
        };
        let pause_only = Capabilities {
            curtail_full: true,
            ..Capabilities::default()
        };
        let (caps, has_nominal) = match info.firmware {
            Firmware::WhatsminerV3 => (limit, true),
            Firmware::AntminerStock | Firmware::LuxOs => (pause_only, false),
        };
        assert_eq!(d.capabilities, caps, "{d:?}");
        assert_eq!(d.nominal_power_w.is_some(), has_nominal, "{d:?}");
        assert!(!d.make.is_empty() && !d.model.is_empty(), "{d:?}");
        // Registration stores what the scan read; the agent picks its protocol from it, and the
        // simulator's fixtures say the same.
        assert_eq!(
            d.firmware.as_deref(),
            Some(info.scanned_firmware().as_str()),
            "{d:?}"
        );
    }
    assert!(
        ebb_agent::scan("127.0.0.1-0", &options, |_| {})
            .await
            .is_err()
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_planner_supplies_the_inventory_and_takes_registrations() {
    ebb_testkit::init_tracing();
    let nats = NatsServer::start().await.unwrap();
    let client = nats.client().await.unwrap();
    let sim = start_sim(one_per_protocol(), instant_paused()).await;
    let site = SiteCode::parse("planned").unwrap();
    let devices: Vec<_> = sim
        .addresses()
        .into_iter()
        .map(|a| inventory_device(&sim, a))
        .collect();

    // A stand-in planner answering inventory and register requests.
    let registered = Arc::new(Mutex::new(Vec::new()));
    let planner = {
        let (client, devices, registered, site) = (
            client.clone(),
            devices.clone(),
            registered.clone(),
            site.clone(),
        );
        let mut inventory = client
            .subscribe(subjects::planner::inventory(&site))
            .await
            .unwrap();
        let mut register = client
            .subscribe(subjects::planner::register(&site))
            .await
            .unwrap();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(msg) = inventory.next() => {
                        let req = ebb_bus::decode::<InventoryRequest>(&msg.payload).unwrap().body;
                        assert_eq!(req.after, None, "one page");
                        let reply = rpc::reply(Ok(Inventory { devices: devices.clone(), next: None })).unwrap();
                        client.publish(msg.reply.unwrap(), reply).await.unwrap();
                    }
                    Some(msg) = register.next() => {
                        let req = ebb_bus::decode::<RegisterDevicesRequest>(&msg.payload).unwrap().body;
                        let n = req.devices.len() as u32;
                        registered.lock().unwrap().extend(req.devices);
                        let reply = rpc::reply(Ok(RegisterDevicesReply { registered: n })).unwrap();
                        client.publish(msg.reply.unwrap(), reply).await.unwrap();
                    }
                    else => return,
                }
            }
        })
    };
    let mut telemetry = client.subscribe(subjects::telemetry(&site)).await.unwrap();
    client.flush().await.unwrap();

    let mut config = test_config(&site);
    config.poll_interval = Duration::from_millis(300);
    config.inventory_refresh = Duration::from_millis(300);
    let shutdown = CancellationToken::new();
    let agent = crate::spawn_run(
        nats.url(),
        config,
        ebb_agent::InventorySource::Planner,
        shutdown.clone(),
    );

    // Telemetry for exactly the planner's devices shows the inventory arrived.
    let t = loop {
        let msg = tokio::time::timeout(crate::WAIT, telemetry.next())
            .await
            .unwrap()
            .unwrap();
        let t = ebb_bus::decode::<TelemetryBatch>(&msg.payload)
            .unwrap()
            .body;
        if t.samples.len() == devices.len() {
            break t;
        }
    };
    let ids: Vec<_> = t.samples.iter().map(|s| s.device_id).collect();
    assert_eq!(ids, devices.iter().map(|d| d.device_id).collect::<Vec<_>>());
    assert!(t.samples.iter().all(|s| s.reachable));

    // The scan endpoint, with registration, read in pages of two devices.
    let request = ScanRequest {
        range: range_of(&sim.addresses()),
        register: true,
        limit: Some(2),
        ..ScanRequest::default()
    };
    let result: ScanResult = rpc::call(&client, &site, None, &request, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        (
            result.scanned,
            result.found,
            result.devices.len(),
            result.registered
        ),
        (3, 3, 2, 3)
    );
    assert_eq!(registered.lock().unwrap().len(), 3);
    let next = ScanRequest {
        scan_id: result.scan_id,
        after: result.next.clone(),
        limit: Some(2),
        ..ScanRequest::default()
    };
    let rest: ScanResult = rpc::call(&client, &site, None, &next, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!((rest.devices.len(), rest.next.as_deref()), (1, None));
    let mut addresses: Vec<String> = result
        .devices
        .iter()
        .chain(&rest.devices)
        .map(|d| d.address.clone())
        .collect();
    addresses.sort();
    addresses.dedup();
    assert_eq!(addresses.len(), 3, "{addresses:?}");
    // Reading a further page did not scan or register again.
    assert_eq!(registered.lock().unwrap().len(), 3);
    // A scan the agent does not hold is the caller's error, with the field named.
    let unknown = ScanRequest {
        scan_id: Some(uuid::Uuid::now_v7()),
        after: result.next,
        ..ScanRequest::default()
    };
    let err = rpc::call(&client, &site, None, &unknown, Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, rpc::CallError::Remote(e) if e.field.as_deref() == Some("scan_id")),
        "{err:?}"
    );
    // A bad range is the caller's error, with the field named.
    let bad = ScanRequest {
        range: "not a range".into(),
        ..ScanRequest::default()
    };
    let err = rpc::call(&client, &site, None, &bad, Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, rpc::CallError::Remote(e) if e.field.as_deref() == Some("range")),
        "{err:?}"
    );

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    planner.abort();
    sim.shutdown().await;
}
