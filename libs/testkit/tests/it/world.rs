//! The test world writes what it declares: sites with their miners in declaration order, racks,
//! fresh telemetry for hashing sites only, and keys that verify with the role and reach asked for.

use chrono::{Duration, Utc};
use ebb_bus::Role;
use ebb_testkit::TestDb;
use ebb_testkit::world::{Key, World};
use uuid::Uuid;

#[tokio::test]
async fn a_world_is_written_as_declared() {
    let db = TestDb::new().await.unwrap();
    let expires = Utc::now() + Duration::hours(1);
    let world = World::builder()
        .org("initech")
        .site("site-a", |s| {
            s.miners(12)
                .watts(2500.0)
                .hashing()
                .hashrate_each(|i| 50.0 + i as f64)
                .rack("r1", 0..3)
                .rack("r2", 3..4)
        })
        .site("site-b", |s| s.name("B").miners(2).ramp_limit(600.0))
        .api_key(Key::new("limited", Role::Operator).sites(&["site-b"]))
        .api_key(Key::new("soon", Role::Viewer).expires_at(expires))
        .build(&db)
        .await
        .unwrap();
    let pool = db.pool();

    let org: String = sqlx::query_scalar("SELECT name FROM org WHERE id = $1")
        .bind(world.org.0)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(org, "initech");
    let (a, b) = (world.site("site-a"), world.site("site-b"));
    assert_eq!(
        (a.site.name.as_str(), a.site.ramp_limit_kw_per_min),
        ("site-a", None)
    );
    assert_eq!(
        (b.site.name.as_str(), b.site.ramp_limit_kw_per_min),
        ("B", Some(600.0))
    );
    assert_eq!((a.devices.len(), b.devices.len()), (12, 2));
    assert_eq!(world.devices().len(), 14);

    // Miner i of site-a hashes at 50 + i, so index order survives more than ten miners (the
    // inventory sorts addresses as text: 10.0.0.10 before 10.0.0.2).
    for (i, d) in a.devices.iter().enumerate() {
        let (power, hash, age_s, rack): (f64, f64, f64, Option<Uuid>) = sqlx::query_as(
            "SELECT s.power_w, s.hashrate_ths, extract(epoch FROM now() - s.sampled_at)::float8,
                    d.rack_id
             FROM device d JOIN device_state s ON s.device_id = d.id WHERE d.id = $1",
        )
        .bind(d.0)
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!((power, hash), (2500.0, 50.0 + i as f64), "miner {i}");
        assert!(age_s < 60.0, "fresh telemetry: {age_s} s old");
        let want = match i {
            0..3 => Some(a.racks["r1"].0),
            3 => Some(a.racks["r2"].0),
            _ => None,
        };
        assert_eq!(rack, want, "rack of miner {i}");
    }
    let b_samples: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM device_state s JOIN device d ON d.id = s.device_id
         WHERE d.site_id = $1",
    )
    .bind(b.site.id.0)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(b_samples, 0, "a site that is not hashing has no telemetry");

    // Keys: one org-wide per role, plus the declared ones, each verifying with its token.
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM api_key WHERE org_id = $1")
        .bind(world.org.0)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(keys, 5);
    for (name, role, sites, expiry) in [
        ("viewer", Role::Viewer, None, None),
        ("operator", Role::Operator, None, None),
        ("admin", Role::Admin, None, None),
        ("limited", Role::Operator, Some(vec![b.site.id.0]), None),
        ("soon", Role::Viewer, None, Some(expires)),
    ] {
        let key = world.key(name);
        assert_eq!(key.role, role);
        let (prefix, secret) = ebb_store::keys::parse(&key.token).unwrap();
        let row = ebb_store::fleet::api_key_by_prefix(pool, prefix)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.id, key.id, "{name}");
        assert_eq!(row.secret_hash, ebb_store::keys::hash(secret), "{name}");
        assert_eq!(row.role, role.as_str(), "{name}");
        assert_eq!(row.site_ids, sites, "{name}");
        assert_eq!(
            row.expires_at.map(|t| t.timestamp_micros()),
            expiry.map(|t| t.timestamp_micros()),
            "{name}"
        );
    }
    assert_eq!(world.token(Role::Admin), world.key("admin").token);
}

#[tokio::test]
async fn a_bad_declaration_is_refused_by_name() {
    let check = |builder: ebb_testkit::world::WorldBuilder, says: &'static str| async move {
        let db = TestDb::new().await.unwrap();
        let err = builder.build(&db).await.unwrap_err().to_string();
        assert!(err.contains(says), "{err}");
    };
    check(World::builder().site("Bad Site", |s| s), "Bad Site").await;
    check(
        World::builder().api_key(Key::new("k", Role::Admin).sites(&["site-z"])),
        "unknown site site-z",
    )
    .await;
    check(
        World::builder().api_key(Key::new("admin", Role::Viewer)),
        "api key admin is declared twice",
    )
    .await;
    check(
        World::builder().site("site-a", |s| s.miners(2).rack("r", 1..3)),
        "rack r of site site-a",
    )
    .await;
}
