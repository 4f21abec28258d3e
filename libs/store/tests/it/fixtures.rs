//! Shared set-up: a migrated database, and the test world (`ebb_testkit::world`) cut down to what
//! these tests use: one site of miners without telemetry.

use ebb_domain::{DeviceId, OrgId};
use ebb_store::fleet::Site;
use ebb_testkit::TestDb;
use ebb_testkit::world::World;

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

/// An org with one site of `n` miners.
pub async fn fleet(n: usize) -> Fleet {
    let db = TestDb::new().await.expect("test database");
    let mut world = World::builder()
        .site("site-a", |s| s.miners(n))
        .build(&db)
        .await
        .expect("test world");
    let site = world.sites.remove(0);
    Fleet {
        org: world.org,
        site: site.site,
        devices: site.devices,
        db,
    }
}
