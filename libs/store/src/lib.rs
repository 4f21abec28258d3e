//! PostgreSQL, the system of record: the pool, embedded migrations, the transaction helper with
//! bounded serialization retries, the outbox and its relay, and one repository module per group of
//! tables (webhook endpoints and deliveries in [`webhooks`]; rating's facts, prices and output in
//! [`rating`]). Queries live here, next to the tables they touch, and every one filters by `org_id`
//! where the table has one.

pub mod access;
pub mod devices;
pub mod error;
pub mod events;
pub mod fleet;
pub mod gauges;
pub mod heartbeat;
pub mod keys;
pub mod natscreds;
pub mod outbox;
pub mod rating;
pub mod tx;
pub mod webhooks;

pub use error::StoreError;
pub use sqlx::PgPool;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::str::FromStr;
use std::time::Duration;

/// The migrations in `migrations/`, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// What every connection to PostgreSQL starts with, set in the startup packet (`-c name=value`
/// options) so no connection runs a statement before they apply.
///
/// The keepalives are the server's (`tcp_keepalives_*`): sqlx sets no socket keepalive of its
/// own, and it is the server that must notice a client that vanished without closing its socket
/// (a power cut, a network partition). Linux's default would take over two hours, during which
/// the dead client's session keeps its locks, the reconciler's leader lock among them. With
/// these settings the server drops it after `keepalive_idle + keepalive_interval *
/// keepalive_count`. They apply to TCP connections only; a Unix-socket session reports 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session {
    /// Longest a statement may run before the server cancels it; zero for no limit.
    pub statement_timeout: Duration,
    /// Idle time before the server's first keepalive probe.
    pub keepalive_idle: Duration,
    /// Time between unanswered probes.
    pub keepalive_interval: Duration,
    /// Unanswered probes before the server drops the connection.
    pub keepalive_count: u32,
}

impl Default for Session {
    fn default() -> Self {
        Self {
            statement_timeout: Duration::from_secs(30),
            keepalive_idle: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(10),
            keepalive_count: 3,
        }
    }
}

impl Session {
    /// The startup options, as `(name, value)` in the server's units (ms and s).
    fn options(&self) -> [(&'static str, String); 4] {
        [
            (
                "statement_timeout",
                self.statement_timeout.as_millis().to_string(),
            ),
            (
                "tcp_keepalives_idle",
                self.keepalive_idle.as_secs().to_string(),
            ),
            (
                "tcp_keepalives_interval",
                self.keepalive_interval.as_secs().to_string(),
            ),
            ("tcp_keepalives_count", self.keepalive_count.to_string()),
        ]
    }
}

/// The options of every connection to `url`: the pool's and dedicated ones (the reconciler's
/// leader lock) alike, built once here so none goes without the session settings.
pub fn connect_options(url: &str, session: &Session) -> Result<PgConnectOptions, sqlx::Error> {
    Ok(PgConnectOptions::from_str(url)?.options(session.options()))
}

/// Opens a pool with bounded size and acquire timeout, each connection set up as `session`
/// says.
pub async fn connect_with(
    url: &str,
    max_connections: u32,
    session: &Session,
) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(connect_options(url, session)?)
        .await
}

/// [`connect_with`] the default [`Session`]: for tools (`ebb admin`, `ebb dev`'s set-up).
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    connect_with(url, max_connections, &Session::default()).await
}

/// Applies pending migrations. Safe to call from several processes at once: sqlx takes an
/// advisory lock. A migration may take longer than the statement timeout (an index built
/// concurrently on a big table), so it runs on one connection with the timeout lifted, which
/// is reset before the connection goes back to the pool.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SET statement_timeout = 0")
        .execute(&mut *conn)
        .await?;
    let applied = MIGRATOR.run(&mut *conn).await;
    if let Err(error) = sqlx::query("RESET statement_timeout")
        .execute(&mut *conn)
        .await
    {
        // A connection that cannot be reset must not serve anyone with the timeout lifted.
        tracing::warn!(%error, "resetting statement_timeout after migrations; closing the connection");
        drop(conn.detach());
    }
    applied
}
