//! A fresh, empty PostgreSQL database per test.
//!
//! The database is created in the server named by `DATABASE_URL` (connected to as an admin who
//! may `CREATE DATABASE`), or else in this process's throwaway cluster (see `cluster`). It is
//! dropped again when the [`TestDb`] drops.

use std::{str::FromStr, sync::mpsc, time::Duration};

use sqlx::{
    ConnectOptions, Connection, Executor, PgConnection, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::{Error, Result, cluster};

/// Each test gets a small pool; the cluster allows 500 connections in all.
const POOL_SIZE: u32 = 5;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// `Drop` waits this long for `DROP DATABASE` before giving up on it.
const DROP_TIMEOUT: Duration = Duration::from_secs(30);

/// An empty database of its own for one test; dropped (with `FORCE`) when this drops.
///
/// ```no_run
/// # async fn demo() -> ebb_testkit::Result<()> {
/// let db = ebb_testkit::TestDb::new().await?;
/// sqlx::query("CREATE TABLE t (id int)").execute(db.pool()).await.unwrap();
/// # Ok(()) }
/// ```
///
/// Create it before `tokio::time::pause()`: sqlx's timeouts run on tokio's clock.
#[derive(Debug)]
pub struct TestDb {
    /// `ebb_test_<uuid>`; unique, so tests can run side by side in one server.
    name: String,
    /// URL of this database, for code under test that takes a URL.
    url: String,
    /// URL of the server's admin database, used again to drop this one.
    admin_url: String,
    /// Pool on this database; its connections are terminated by the `FORCE` drop.
    pool: PgPool,
}

impl TestDb {
    /// Creates a new, empty database: in `DATABASE_URL`'s server if set, else in a throwaway
    /// cluster that this process starts on first use.
    pub async fn new() -> Result<TestDb> {
        let admin_url = match std::env::var("DATABASE_URL") {
            Ok(url) if !url.is_empty() => url,
            _ => cluster::admin_url().await?,
        };
        Self::create_in(admin_url).await
    }

    async fn create_in(admin_url: String) -> Result<TestDb> {
        let started = std::time::Instant::now();
        let name = format!("ebb_test_{}", uuid::Uuid::now_v7().simple());
        let url = with_database(&admin_url, &name).ok_or_else(|| {
            Error::pg(
                "DATABASE_URL is not a postgres://host/db URL",
                sqlx::Error::Configuration("unparseable url".into()),
            )
        })?;
        let options = PgConnectOptions::from_str(&url)
            .map_err(|e| Error::pg("parsing the test database url", e))?;

        let mut admin = connect(&admin_url).await?;
        let created = timeout(
            "creating the test database",
            admin.execute(format!(r#"CREATE DATABASE "{name}""#).as_str()),
        )
        .await;
        let _ = admin.close().await;
        created?.map_err(|e| Error::pg(format!("creating database {name}"), e))?;

        // From here on, dropping `db` drops the database, even if connecting fails.
        let db = TestDb {
            pool: PgPoolOptions::new()
                .max_connections(POOL_SIZE)
                .acquire_timeout(CONNECT_TIMEOUT)
                .connect_lazy_with(options),
            name,
            url,
            admin_url,
        };
        db.pool
            .acquire()
            .await
            .map_err(|e| Error::pg(format!("connecting to database {}", db.name), e))?;
        tracing::debug!(db = %db.name, elapsed = ?started.elapsed(), "created test database");
        Ok(db)
    }

    /// The database's name, `ebb_test_<uuid>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A URL for the database, for code that connects by itself.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A pool of at most five connections to the database.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Stop handing out connections; `FORCE` terminates the open ones.
        drop(self.pool.close());
        // Drop is synchronous and may run inside a runtime, where blocking on a future panics.
        // A separate thread with its own runtime does the work; waiting for it keeps "gone after
        // drop" true for the next statement of the test.
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        let spawned = std::thread::Builder::new()
            .name("ebb-testkit-dropdb".into())
            .spawn(move || {
                let _ = done_tx.send(drop_database(&admin_url, &name));
            });
        let outcome = match spawned {
            Ok(_) => done_rx.recv_timeout(DROP_TIMEOUT).unwrap_or_else(|_| {
                Err(Error::Timeout {
                    context: format!("dropping database {}", self.name),
                    after: DROP_TIMEOUT,
                })
            }),
            Err(e) => Err(Error::io("spawning a thread to drop the test database", e)),
        };
        match outcome {
            Ok(()) => tracing::debug!(db = %self.name, "dropped test database"),
            Err(err) => {
                tracing::warn!(db = %self.name, error = %err, "could not drop test database")
            }
        }
    }
}

fn drop_database(admin_url: &str, name: &str) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("building a runtime to drop the test database", e))?;
    runtime.block_on(async {
        let mut admin = connect(admin_url).await?;
        let dropped = timeout("dropping the test database", async {
            terminate_backends(&mut admin, name).await?;
            admin
                .execute(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str())
                .await?;
            Ok::<_, sqlx::Error>(())
        })
        .await;
        let _ = admin.close().await;
        dropped?.map_err(|e| Error::pg(format!("dropping database {name}"), e))?;
        Ok(())
    })
}

/// Terminates the database's sessions and waits until they are gone.
///
/// `WITH (FORCE)` alone does the same but then polls for the sessions to exit in steps of
/// 100 ms, which would add a tenth of a second to every test; they exit within milliseconds.
async fn terminate_backends(admin: &mut PgConnection, name: &str) -> Result<(), sqlx::Error> {
    const POLL: Duration = Duration::from_millis(2);
    loop {
        let remaining: i64 = sqlx::query_scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(name)
        .fetch_one(&mut *admin)
        .await?;
        if remaining == 0 {
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn connect(url: &str) -> Result<PgConnection> {
    let options = PgConnectOptions::from_str(url)
        .map_err(|e| Error::pg("parsing the admin database url", e))?
        .disable_statement_logging();
    timeout("connecting to postgresql", options.connect())
        .await?
        .map_err(|e| Error::pg("connecting to the admin database", e))
}

async fn timeout<T>(context: &str, fut: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(CONNECT_TIMEOUT, fut)
        .await
        .map_err(|_| Error::Timeout {
            context: context.into(),
            after: CONNECT_TIMEOUT,
        })
}

/// `url` with its database (the path) replaced by `name`; user, host and query are kept.
fn with_database(url: &str, name: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    if !scheme.starts_with("postgres") {
        return None;
    }
    let (before_query, query) = rest.split_at(rest.find(['?', '#']).unwrap_or(rest.len()));
    let authority = before_query.split('/').next()?;
    Some(format!("{scheme}://{authority}/{name}{query}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(url: &str, expected: Option<&str>) {
        assert_eq!(with_database(url, "x").as_deref(), expected, "{url}");
    }

    #[test]
    fn replaces_only_the_database() {
        check("postgres://u@h:5/postgres", Some("postgres://u@h:5/x"));
        check("postgres://u@h:5", Some("postgres://u@h:5/x"));
        check("postgres://u@h:5/", Some("postgres://u@h:5/x"));
        check(
            "postgresql://u:p%2Fw@h/db?sslmode=disable",
            Some("postgresql://u:p%2Fw@h/x?sslmode=disable"),
        );
        check(
            "postgres://%2Ftmp%2Fpg/db?host=/tmp",
            Some("postgres://%2Ftmp%2Fpg/x?host=/tmp"),
        );
        check("mysql://h/db", None);
        check("host=/tmp dbname=x", None);
    }
}
