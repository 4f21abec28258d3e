//! The PostgreSQL database and nats-server a benchmark of the services runs against: a fresh
//! database in `DATABASE_URL`'s server when it is set (dropped at the end), else a throwaway
//! cluster started like `ebb dev`'s; nats-server is always a throwaway one (JetStream, no auth,
//! loopback only).

use crate::dev::infra;
use anyhow::Context;
use sqlx::{Connection, PgConnection};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The benchmark's PostgreSQL database and nats-server.
pub struct Infra {
    pub database_url: String,
    /// Set when the database was created inside a `DATABASE_URL` server: dropped at the end.
    created: Option<(String, String)>,
    /// Set when a throwaway cluster was started.
    pg: Option<infra::Server>,
    nats: tokio::process::Child,
    pub nats_url: String,
}

impl Infra {
    pub async fn start(scratch: &Path) -> anyhow::Result<Infra> {
        let (database_url, created, pg) = match std::env::var("DATABASE_URL") {
            Ok(admin_url) => {
                let name = format!("ebb_bench_{}", uuid::Uuid::now_v7().simple());
                let mut admin = PgConnection::connect(&admin_url)
                    .await
                    .context("connecting to DATABASE_URL")?;
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut admin)
                    .await
                    .context("creating the benchmark database")?;
                admin.close().await.ok();
                let url = with_database(&admin_url, &name)?;
                (url, Some((admin_url, name)), None)
            }
            Err(_) => {
                let (server, url) =
                    infra::start_postgres(&scratch.join("pg"), free_port()?, &[]).await?;
                (url, None, Some(server))
            }
        };
        let nats_port = free_port()?;
        let store: PathBuf = scratch.join("nats");
        std::fs::create_dir_all(&store)?;
        let nats = tokio::process::Command::new(infra::find_nats_server()?)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &nats_port.to_string(),
                "-sd",
            ])
            .arg(&store)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting nats-server")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", nats_port))
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                anyhow::bail!("nats-server did not listen on {nats_port} within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Infra {
            database_url,
            created,
            pg,
            nats,
            nats_url: format!("nats://127.0.0.1:{nats_port}"),
        })
    }

    pub async fn stop(mut self) {
        self.nats.kill().await.ok();
        if let Some((admin_url, name)) = &self.created
            && let Ok(mut admin) = PgConnection::connect(admin_url).await
        {
            let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
            if let Err(e) = sqlx::query(&drop).execute(&mut admin).await {
                tracing::warn!(error = %e, database = %name, "dropping the benchmark database");
            }
        }
        if let Some(pg) = self.pg.take() {
            pg.stop().await;
        }
    }
}

/// Runs `body` against a fresh [`Infra`] whose files live in a scratch directory named after
/// `name`, and tears it down whatever `body` returned. `body` gets the database's and the
/// nats-server's URLs.
pub async fn with_infra<T, Fut>(
    name: &str,
    body: impl FnOnce(String, String) -> Fut,
) -> anyhow::Result<T>
where
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let scratch = std::env::temp_dir().join(format!("ebb-bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let infra = Infra::start(&scratch).await?;
    let result = body(infra.database_url.clone(), infra.nats_url.clone()).await;
    infra.stop().await;
    std::fs::remove_dir_all(&scratch).ok();
    result
}

/// A pool of 8 connections to `database_url`, migrated, and a NATS client of `nats_url`: what a
/// benchmark of one service's own code starts from.
pub async fn connect(
    database_url: &str,
    nats_url: &str,
) -> anyhow::Result<(sqlx::PgPool, async_nats::Client)> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(database_url)
        .await
        .context("connecting to the benchmark database")?;
    ebb_store::migrate(&pool).await.context("migrating")?;
    let client = ebb_bus::connect(nats_url, "ebb-bench")
        .await
        .context("connecting to nats-server")?;
    Ok((pool, client))
}

/// `url` with its database replaced by `name`.
fn with_database(url: &str, name: &str) -> anyhow::Result<String> {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").context("DATABASE_URL has no scheme")? + 3;
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    Ok(match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    })
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_name_is_replaced() {
        for (url, want) in [
            ("postgres://u@h:5/postgres", "postgres://u@h:5/x"),
            ("postgres://u@h:5", "postgres://u@h:5/x"),
            (
                "postgres://u@h/db?sslmode=disable",
                "postgres://u@h/x?sslmode=disable",
            ),
        ] {
            assert_eq!(with_database(url, "x").unwrap(), want);
        }
    }
}
