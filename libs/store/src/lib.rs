//! PostgreSQL, the system of record: the pool, embedded migrations, the transaction helper with
//! bounded serialization retries, the outbox and its relay, and one repository module per group of
//! tables. Queries live here, next to the tables they touch, and every one filters by `org_id`
//! where the table has one.

pub mod error;
pub mod events;
pub mod fleet;
pub mod heartbeat;
pub mod keys;
pub mod natscreds;
pub mod outbox;
pub mod tx;

pub use error::StoreError;
pub use sqlx::PgPool;

use sqlx::postgres::PgPoolOptions;
use std::time::Duration;

/// The migrations in `migrations/`, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// Opens a pool with bounded size and acquire timeout.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
}

/// Applies pending migrations. Safe to call from several processes at once: sqlx takes an
/// advisory lock.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}
