//! Migration files: timestamp versions, no duplicates, and a clean apply.

use std::collections::BTreeMap;

#[test]
fn versions_are_unique_timestamps() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../migrations");
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if !name.ends_with(".sql") {
            continue;
        }
        let version = name.split('_').next().unwrap().to_owned();
        assert!(
            version.len() == 14 && version.bytes().all(|b| b.is_ascii_digit()),
            "{name}: version must be YYYYMMDDhhmmss"
        );
        if let Some(other) = seen.insert(version.clone(), name.clone()) {
            panic!("duplicate migration version {version}: {other} and {name}");
        }
    }
    assert!(!seen.is_empty());
    // The embedded set is the same set of files.
    assert_eq!(ebb_store::MIGRATOR.iter().count(), seen.len());
}

#[tokio::test]
async fn migrations_apply_and_reapply() {
    let db = super::fixtures::migrated().await;
    ebb_store::migrate(db.pool())
        .await
        .expect("second run is a no-op");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(n as usize, ebb_store::MIGRATOR.iter().count());
}

/// The typed-causes migration maps the texts written before it to their causes and reasons.
#[tokio::test]
async fn typed_causes_are_backfilled_from_the_old_texts() {
    const TYPED: i64 = 20261205000001;
    let db = ebb_testkit::TestDb::new().await.unwrap();
    let pool = db.pool();
    for m in ebb_store::MIGRATOR.iter().filter(|m| m.version < TYPED) {
        sqlx::raw_sql(&m.sql).execute(pool).await.unwrap();
    }
    let org = uuid::Uuid::now_v7();
    let site = uuid::Uuid::now_v7();
    sqlx::raw_sql(&format!(
        "INSERT INTO org (id, name) VALUES ('{org}', 'acme');
         INSERT INTO site (id, org_id, code, name) VALUES ('{site}', '{org}', 'site-a', 'A');"
    ))
    .execute(pool)
    .await
    .unwrap();
    // (state, stop_reason) before → stop_cause after
    let events = [
        ("failed", Some("every target failed"), Some("all_failed")),
        (
            "completed",
            Some("max_duration_s elapsed"),
            Some("max_duration"),
        ),
        ("restoring", Some("shed for the grid"), Some("requested")),
        (
            "completed_with_failures",
            Some("stopped by operator"),
            Some("requested"),
        ),
        ("active", None, None),
        ("cancelled", None, None),
    ];
    let mut ids = Vec::new();
    for (state, reason, _) in events {
        let id = uuid::Uuid::now_v7();
        sqlx::query(
            "INSERT INTO curtailment_event (id, org_id, state, mode, mode_params, command, scope, reason,
                 selection, restore_batch_size, restore_batch_interval_s, source_actor, stop_reason)
             VALUES ($1, $2, $3, 'full', '{}', '{}', '{}', 'test', '{}', 10, 5, 'api_key', $4)",
        )
        .bind(id)
        .bind(org)
        .bind(state)
        .bind(reason)
        .execute(pool)
        .await
        .unwrap();
        ids.push(id);
    }
    // last_error before → last_spend_reason after, one target each in the last event
    let targets = [
        ("command outcome was not success", Some("command_failed")),
        ("not confirmed before the deadline", Some("not_confirmed")),
        (
            "no result from the agent before the deadline",
            Some("no_result"),
        ),
        ("drifted", Some("drifted")),
        ("device vanished", Some("device_vanished")),
        ("stamped without a batch", Some("stamped_without_batch")),
        ("something a person wrote", None),
    ];
    let event = ids[5];
    let mut devices = Vec::new();
    for (i, (error, _)) in targets.iter().enumerate() {
        let device = uuid::Uuid::now_v7();
        sqlx::query(
            "INSERT INTO device (id, org_id, site_id, address, make, model) VALUES ($1, $2, $3, $4, 'm', 'm')",
        )
        .bind(device)
        .bind(org)
        .bind(site)
        .bind(format!("127.0.0.{i}"))
        .execute(pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO curtailment_target (event_id, device_id, org_id, site_id, state, baseline_power_w, last_error)
             VALUES ($1, $2, $3, $4, 'failed', 3000, $5)",
        )
        .bind(event)
        .bind(device)
        .bind(org)
        .bind(site)
        .bind(error)
        .execute(pool)
        .await
        .unwrap();
        devices.push(device);
    }

    let typed = ebb_store::MIGRATOR
        .iter()
        .find(|m| m.version == TYPED)
        .expect("the typed-causes migration");
    sqlx::raw_sql(&typed.sql).execute(pool).await.unwrap();

    for (id, (state, _, want)) in ids.iter().zip(events) {
        let got: Option<String> =
            sqlx::query_scalar("SELECT stop_cause FROM curtailment_event WHERE id = $1")
                .bind(id)
                .fetch_one(pool)
                .await
                .unwrap();
        assert_eq!(got.as_deref(), want, "{state}");
        if let Some(c) = got {
            c.parse::<ebb_domain::StopCause>().unwrap();
        }
    }
    for (device, (error, want)) in devices.iter().zip(targets) {
        let got: Option<String> = sqlx::query_scalar(
            "SELECT last_spend_reason FROM curtailment_target WHERE device_id = $1",
        )
        .bind(device)
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(got.as_deref(), want, "{error}");
        if let Some(r) = got {
            r.parse::<ebb_domain::SpendReason>().unwrap();
        }
    }
}
