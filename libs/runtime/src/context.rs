//! The context a process builds once and hands to every service it runs: the PostgreSQL pool
//! (for services that use the database), the NATS client and its JetStream context, and the
//! shutdown token. `ebb dev` builds one for all its services; `ebb <service>` one for its one.

use crate::settings::{Common, Needs};
use crate::supervisor::Supervisor;
use anyhow::Context as _;
use async_nats::jetstream;
use ebb_store::PgPool;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What every service of a process shares. Cheap to clone.
#[derive(Clone)]
pub struct Context {
    inner: Arc<Inner>,
    /// Cancelled when the process shuts down; every service drains and returns.
    pub shutdown: CancellationToken,
}

struct Inner {
    /// The settings the connections were made with (the database URL for dedicated
    /// connections such as the reconciler's leader lock).
    common: Common,
    /// Absent in a process whose services need no database.
    pool: Option<PgPool>,
    nats: async_nats::Client,
    js: jetstream::Context,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("common", &self.inner.common)
            .field("database", &self.inner.pool.is_some())
            .finish_non_exhaustive()
    }
}

impl Context {
    /// Connects to what `needs` names. NATS is connected with reconnects from the first attempt
    /// (a site agent may start before its server); PostgreSQL must answer now.
    pub async fn connect(
        common: &Common,
        needs: Needs,
        client_name: &str,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let pool = match needs {
            Needs::Nats => None,
            Needs::DatabaseAndNats => Some(
                ebb_store::connect_with(
                    common.database_url.as_str(),
                    common.db_connections,
                    &common.db_session(),
                )
                .await
                .with_context(|| {
                    format!(
                        "connecting to postgresql at {}",
                        common.database_url.redacted()
                    )
                })?,
            ),
        };
        let nats = connect_nats(common, client_name).await?;
        let js = jetstream::new(nats.clone());
        Ok(Self {
            inner: Arc::new(Inner {
                common: common.clone(),
                pool,
                nats,
                js,
            }),
            shutdown,
        })
    }

    /// The same pool, with a NATS connection of its own made with `common`'s NATS settings (a
    /// service of a shared process connecting as itself).
    pub async fn with_nats(&self, common: &Common, client_name: &str) -> anyhow::Result<Self> {
        let nats = connect_nats(common, client_name).await?;
        let js = jetstream::new(nats.clone());
        let mut own = self.inner.common.clone();
        own.nats_url = common.nats_url.clone();
        own.nats_creds = common.nats_creds.clone();
        own.nats_ca = common.nats_ca.clone();
        Ok(Self {
            inner: Arc::new(Inner {
                common: own,
                pool: self.inner.pool.clone(),
                nats,
                js,
            }),
            shutdown: self.shutdown.clone(),
        })
    }

    /// The same connections under another shutdown token (a service a test stops alone).
    pub fn with_shutdown(&self, shutdown: CancellationToken) -> Self {
        Self {
            inner: self.inner.clone(),
            shutdown,
        }
    }

    /// The database pool.
    pub fn pool(&self) -> anyhow::Result<&PgPool> {
        self.inner
            .pool
            .as_ref()
            .context("this process was started without a database connection")
    }

    /// The database URL, for a connection outside the pool.
    pub fn database_url(&self) -> &str {
        self.inner.common.database_url.as_str()
    }

    /// The options of a dedicated PostgreSQL connection outside the pool (the reconciler's
    /// leader lock), with the same session settings as the pool's.
    pub fn db_connect_options(&self) -> anyhow::Result<sqlx::postgres::PgConnectOptions> {
        let common = &self.inner.common;
        ebb_store::connect_options(common.database_url.as_str(), &common.db_session()).with_context(
            || {
                format!(
                    "reading the postgresql url {}",
                    common.database_url.redacted()
                )
            },
        )
    }

    /// The shared settings the process runs with.
    pub fn common(&self) -> &Common {
        &self.inner.common
    }

    pub fn nats(&self) -> &async_nats::Client {
        &self.inner.nats
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.inner.js
    }

    /// A supervisor whose tasks stop with this context.
    pub fn supervisor(&self) -> Supervisor {
        Supervisor::new(&self.shutdown)
    }

    /// Creates the JetStream streams `names`, retrying with backoff until it works or shutdown
    /// (then `false`): a service started before its NATS server waits for it instead of exiting.
    pub async fn ensure_streams(&self, names: &[&str]) -> bool {
        if names.is_empty() {
            return true;
        }
        retry_until(&self.shutdown, "creating the jetstream streams", || {
            ebb_bus::streams::ensure(self.jetstream(), names)
        })
        .await
        .is_some()
    }

    /// Flushes what the NATS client still buffers and closes the pool; for the end of a process.
    pub async fn close(&self) {
        if let Err(error) = self.inner.nats.flush().await {
            tracing::debug!(%error, "flushing nats on shutdown");
        }
        if let Some(pool) = &self.inner.pool {
            pool.close().await;
        }
    }
}

/// A NATS client with `common`'s URL, credentials and CA. With credentials, the client's inbox
/// prefix is its user's own (`_INBOX_<user>`), the only one its permissions let it read.
pub async fn connect_nats(
    common: &Common,
    client_name: &str,
) -> anyhow::Result<async_nats::Client> {
    let creds = (!common.nats_creds.is_empty()).then(|| Path::new(&common.nats_creds));
    let inbox_prefix = match creds {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading nats credentials {}", path.display()))?;
            Some(
                ebb_natsauth::creds::inbox_prefix(&text)
                    .with_context(|| format!("reading the user of {}", path.display()))?,
            )
        }
        None => None,
    };
    let auth = ebb_bus::ClientAuth {
        creds,
        inbox_prefix,
        ca: (!common.nats_ca.is_empty()).then(|| Path::new(&common.nats_ca)),
    };
    ebb_bus::connect_with(common.nats_url.as_str(), client_name, &auth)
        .await
        .with_context(|| format!("connecting to nats at {}", common.nats_url.redacted()))
}

/// Retries a start-up step with backoff (100 ms doubling to 10 s) until it succeeds or
/// `shutdown` is cancelled (then `None`), logging each failure.
pub async fn retry_until<T, E, F, Fut>(
    shutdown: &CancellationToken,
    what: &str,
    mut step: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut delay = Duration::from_millis(100);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return None,
            r = step() => match r {
                Ok(v) => return Some(v),
                Err(error) => tracing::warn!(step = what, %error, retry_in_ms = delay.as_millis() as u64, "start-up step failed, retrying"),
            },
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}
