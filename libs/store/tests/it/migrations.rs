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
