//! Shared set-up: a migrated database with an org, a site and some devices.

use ebb_domain::{Capabilities, DeviceId, OrgId, SiteCode};
use ebb_store::fleet::{self, NewDevice, Site};
use ebb_testkit::TestDb;

pub struct Fleet {
    pub db: TestDb,
    pub org: OrgId,
    pub site: Site,
    pub devices: Vec<DeviceId>,
}

pub async fn migrated() -> TestDb {
    let db = TestDb::new().await.expect("test database");
    ebb_store::migrate(db.pool()).await.expect("migrations");
    db
}

pub async fn fleet(n: usize) -> Fleet {
    let db = migrated().await;
    let org = fleet::create_org(db.pool(), "acme").await.unwrap();
    let code = SiteCode::parse(&format!(
        "s{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    ))
    .unwrap();
    fleet::create_site(db.pool(), org, &code, "site", None)
        .await
        .unwrap();
    let site = fleet::site_by_code(db.pool(), &code)
        .await
        .unwrap()
        .unwrap();
    let devs: Vec<NewDevice> = (0..n)
        .map(|i| NewDevice {
            address: format!("127.0.9.{i}"),
            make: "WhatsMiner".into(),
            model: "M60S".into(),
            firmware: None,
            capabilities: Capabilities {
                curtail_full: true,
                ..Default::default()
            },
            nominal_power_w: Some(3400.0),
        })
        .collect();
    fleet::upsert_devices(db.pool(), &site, &devs)
        .await
        .unwrap();
    let devices = fleet::inventory(db.pool(), site.id)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.device_id)
        .collect();
    Fleet {
        db,
        org,
        site,
        devices,
    }
}
