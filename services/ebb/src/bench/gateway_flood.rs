//! `ebb bench gateway-flood`: the gateway under a flood of bad bearer tokens, and what a valid key
//! sees meanwhile. The real gateway (`Gateway::build`, default settings) serves in this process on
//! loopback, over a fresh PostgreSQL database; a client fires `--requests` requests with bad
//! tokens, `--concurrency` at a time, while the valid key lists curtailments `--valid-per-s`
//! times a second, within its rate. Of the bad requests, `--distinct` carry a distinct unknown
//! token each (every one a lookup in PostgreSQL), spread evenly; the rest repeat one token (the
//! rate limit answers them after its burst).
//!
//! PostgreSQL and NATS are the benchmarks' throwaway ones ([`Infra`]): a fresh database in
//! `DATABASE_URL`'s server when it is set (its user must be allowed to create databases; the
//! database is dropped when done), else a throwaway cluster started like `ebb dev`'s; always a
//! throwaway nats-server on loopback.

use super::throwaway::with_infra;
use crate::bench::measure::{percentile_ms, round};
use anyhow::{Context, bail};
use ebb_gateway::{Gateway, GatewayConfig};
use futures::StreamExt;
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Debug, clap::Args)]
pub struct FloodArgs {
    /// Requests with bad tokens.
    #[arg(long, default_value_t = 10_000)]
    pub requests: usize,
    /// Bad requests in flight at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Bad requests that carry a distinct unknown token each; the rest repeat one token.
    #[arg(long, default_value_t = 5_000)]
    pub distinct: usize,
    /// Requests a second the valid key sends while the flood lasts.
    #[arg(long, default_value_t = 20)]
    pub valid_per_s: u32,
}

/// What `ebb bench gateway-flood` prints.
#[derive(Debug, Serialize)]
pub struct FloodReport {
    pub bad_requests: usize,
    pub valid_requests: usize,
    pub valid_p50_ms: f64,
    pub valid_p99_ms: f64,
    pub valid_max_ms: f64,
    /// Valid-key requests not answered 200.
    pub valid_failed: usize,
    pub bad_rejected_429: usize,
    pub bad_rejected_401: usize,
    /// Bad requests answered anything else (503 when shed, 0 when the request itself failed).
    pub bad_other: usize,
    /// Key lookups that reached PostgreSQL, the valid key's included.
    pub key_lookups: u64,
    pub max_lookups_in_flight: u64,
    /// Seconds the flood took.
    pub seconds: f64,
    pub bad_per_second: f64,
}

fn validate(a: &FloodArgs) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    if !(1..=1_000_000).contains(&a.requests) {
        problems.push(format!(
            "requests must be between 1 and 1000000, got {}",
            a.requests
        ));
    }
    if !(1..=10_000).contains(&a.concurrency) {
        problems.push(format!(
            "concurrency must be between 1 and 10000, got {}",
            a.concurrency
        ));
    }
    if a.distinct > a.requests {
        problems.push(format!(
            "distinct must be at most requests ({}), got {}",
            a.requests, a.distinct
        ));
    }
    if !(1..=1_000).contains(&a.valid_per_s) {
        problems.push(format!(
            "valid_per_s must be between 1 and 1000, got {}",
            a.valid_per_s
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!("invalid benchmark options: {}", problems.join("; "))
    }
}

/// A well-formed token of no key.
fn unknown_token(i: usize) -> String {
    format!("ebb_{:012x}_{:064x}", 0xbad0_0000_0000_u64 + i as u64, i)
}

/// Whether bad request `i` of `requests` carries its own token: `distinct` of them, evenly spread.
fn is_distinct(i: usize, requests: usize, distinct: usize) -> bool {
    (i * distinct) / requests != ((i + 1) * distinct) / requests
}

pub async fn bench_gateway_flood(args: &FloodArgs) -> anyhow::Result<FloodReport> {
    validate(args)?;
    with_infra(
        "flood",
        |db, nats| async move { flood(args, &db, &nats).await },
    )
    .await
}

async fn flood(args: &FloodArgs, url: &str, nats_url: &str) -> anyhow::Result<FloodReport> {
    let shutdown = CancellationToken::new();
    let common = ebb_runtime::Common {
        database_url: url.into(),
        nats_url: nats_url.into(),
        ..ebb_runtime::Common::default()
    };
    let ctx = ebb_runtime::Context::connect(
        &common,
        ebb_runtime::Needs::DatabaseAndNats,
        "bench-gateway-flood",
        shutdown.clone(),
    )
    .await?;
    let pool = ctx.pool()?.clone();
    ebb_store::migrate(&pool).await.context("migrating")?;
    let org = ebb_store::fleet::create_org(&pool, "bench").await?;
    let key = ebb_store::keys::generate();
    ebb_store::fleet::insert_api_key(
        &pool,
        &ebb_store::fleet::NewApiKey {
            org,
            prefix: &key.prefix,
            secret_hash: &key.secret_hash,
            role: "viewer",
            name: "bench",
            expires_at: None,
            site_ids: None,
        },
    )
    .await?;

    let config = GatewayConfig {
        listen: "127.0.0.1:0".into(),
        ..GatewayConfig::default()
    };
    let gateway = Gateway::build(&config, &ctx).await?;
    let stats = gateway.stats();
    let endpoint = format!("http://{}/v1/curtailments", gateway.addr());
    let server = tokio::spawn(gateway.serve(shutdown.clone()));

    // The valid key is in use before the flood, as a real integration's would be.
    let valid_client = reqwest::Client::new();
    let status = valid_client
        .get(&endpoint)
        .bearer_auth(&key.token)
        .send()
        .await?
        .status();
    if status != reqwest::StatusCode::OK {
        bail!("the valid key was answered {status} before the flood");
    }

    let done = Arc::new(AtomicBool::new(false));
    let valid = {
        let (done, endpoint, token) = (done.clone(), endpoint.clone(), key.token.clone());
        let every = Duration::from_secs(1) / args.valid_per_s;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let (mut latencies, mut failed) = (Vec::new(), 0);
            while !done.load(Ordering::Relaxed) {
                tick.tick().await;
                let t = Instant::now();
                let r = valid_client.get(&endpoint).bearer_auth(&token).send().await;
                match r {
                    Ok(r) if r.status() == reqwest::StatusCode::OK => {
                        let _ = r.bytes().await;
                        latencies.push(t.elapsed());
                    }
                    _ => failed += 1,
                }
            }
            (latencies, failed)
        })
    };

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    // Distinct tokens use indexes below `requests`: this one is none of them.
    let repeated = unknown_token(args.requests);
    let started = Instant::now();
    let statuses: Vec<u16> = futures::stream::iter(0..args.requests)
        .map(|i| {
            let token = if is_distinct(i, args.requests, args.distinct) {
                unknown_token(i)
            } else {
                repeated.clone()
            };
            let (client, endpoint) = (&client, &endpoint);
            async move {
                match client.get(endpoint).bearer_auth(token).send().await {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let _ = r.bytes().await;
                        status
                    }
                    Err(_) => 0,
                }
            }
        })
        .buffer_unordered(args.concurrency)
        .collect()
        .await;
    let seconds = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let (latencies, valid_failed) = valid.await?;

    shutdown.cancel();
    server.await??;
    pool.close().await;

    let count = |s: u16| statuses.iter().filter(|x| **x == s).count();
    let (r429, r401) = (count(429), count(401));
    Ok(FloodReport {
        bad_requests: statuses.len(),
        valid_requests: latencies.len() + valid_failed,
        valid_p50_ms: percentile_ms(&latencies, 0.50),
        valid_p99_ms: percentile_ms(&latencies, 0.99),
        valid_max_ms: percentile_ms(&latencies, 1.0),
        valid_failed,
        bad_rejected_429: r429,
        bad_rejected_401: r401,
        bad_other: statuses.len() - r429 - r401,
        key_lookups: stats.key_lookups.load(Ordering::Relaxed),
        max_lookups_in_flight: stats.max_lookups_in_flight.load(Ordering::Relaxed),
        seconds: round(seconds, 3),
        bad_per_second: round(statuses.len() as f64 / seconds, 1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_tokens_are_spread_evenly_and_counted_exactly() {
        for (requests, distinct) in [(10_000, 5_000), (10, 3), (7, 7), (5, 0)] {
            let picked: Vec<usize> = (0..requests)
                .filter(|&i| is_distinct(i, requests, distinct))
                .collect();
            assert_eq!(picked.len(), distinct, "{requests} {distinct}");
        }
        assert_eq!(unknown_token(3).len(), "ebb_".len() + 12 + 1 + 64);
        assert!(ebb_store::keys::parse(&unknown_token(1_000_000)).is_some());
    }

    #[test]
    fn options_are_checked() {
        let err = validate(&FloodArgs {
            requests: 0,
            concurrency: 0,
            distinct: 1,
            valid_per_s: 0,
        })
        .unwrap_err()
        .to_string();
        for field in ["requests", "concurrency", "distinct", "valid_per_s"] {
            assert!(err.contains(field), "{field}: {err}");
        }
    }
}
