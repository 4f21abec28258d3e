//! `TestDb`: each test gets its own database, and it is gone after drop.

use anyhow::Context;
use ebb_testkit::TestDb;
use sqlx::Connection;

async fn current_database(pool: &sqlx::PgPool) -> anyhow::Result<String> {
    Ok(sqlx::query_scalar("SELECT current_database()")
        .fetch_one(pool)
        .await?)
}

async fn database_exists(pool: &sqlx::PgPool, name: &str) -> anyhow::Result<bool> {
    // pg_database is shared by all databases of a cluster, so any pool can see the others.
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(pool)
            .await?,
    )
}

#[tokio::test]
async fn each_test_db_is_distinct_and_empty() -> anyhow::Result<()> {
    ebb_testkit::init_tracing();
    let (a, b) = tokio::try_join!(TestDb::new(), TestDb::new())?;
    assert_ne!(a.name(), b.name());
    assert!(a.name().starts_with("ebb_test_"));
    assert_eq!(current_database(a.pool()).await?, a.name());
    assert_eq!(current_database(b.pool()).await?, b.name());

    sqlx::query("CREATE TABLE only_in_a (id int)")
        .execute(a.pool())
        .await?;
    let tables_in_b: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_one(b.pool())
    .await?;
    assert_eq!(tables_in_b, 0);
    Ok(())
}

#[tokio::test]
async fn url_reaches_the_same_database() -> anyhow::Result<()> {
    ebb_testkit::init_tracing();
    let db = TestDb::new().await?;
    let mut conn = sqlx::PgConnection::connect(db.url())
        .await
        .with_context(|| format!("connecting to {}", db.url()))?;
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut conn)
        .await?;
    assert_eq!(name, db.name());
    conn.close().await?;
    Ok(())
}

#[tokio::test]
async fn database_is_dropped_on_drop_even_with_open_connections() -> anyhow::Result<()> {
    ebb_testkit::init_tracing();
    let (doomed, witness) = tokio::try_join!(TestDb::new(), TestDb::new())?;
    let name = doomed.name().to_owned();
    let held = doomed.pool().acquire().await?;
    assert!(database_exists(witness.pool(), &name).await?);

    drop(doomed);

    assert!(!database_exists(witness.pool(), &name).await?);
    drop(held);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_databases_at_once() -> anyhow::Result<()> {
    ebb_testkit::init_tracing();
    let dbs = futures::future::try_join_all((0..8).map(|_| TestDb::new())).await?;
    let mut names: Vec<&str> = dbs.iter().map(TestDb::name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), 8);
    for db in &dbs {
        assert_eq!(current_database(db.pool()).await?, db.name());
    }
    Ok(())
}
