//! The `rate` job and `ebb worker rate`: settlement rating (DESIGN §7, ADR 0012). A run reads,
//! org by org, the intervals during which targets were confirmed (`curtailment_interval`),
//! rates them into the org's settlement windows with [`ebb_rating`], prices each row, and writes
//! `rated_usage`, reconciling: rows of the run's span that it no longer produces are deleted
//! (what the latest run says is what bills).
//!
//! Single-flight: a run holds the advisory lock [`RATE_LOCK_KEY`] on a connection of its own for
//! its whole length, and does all its work on that connection; the lock goes with the
//! connection, so a killed rater frees it. The periodic job skips a turn when another rater holds
//! it; the CLI waits for it a while. The ordered upsert avoids deadlocks only within one run
//! (`ebb_store::rating::write_rated`): concurrent raters would not be safe, and the lock is
//! what excludes them.
//!
//! How a run ends follows reference `002_*` ([`ebb_rating::outcome`]): a routine run that
//! deletes a previously rated row logs ERROR and exits 2; an explicit backfill that does so logs
//! INFO and exits 0; any other anomaly (an unpriced window, an amount that does not fit, an
//! unknown window length) logs ERROR and exits 2 in both. An org with an anomaly is left as it
//! was, nothing written and nothing deleted, so a missing price never bills zero.

use crate::WorkerConfig;
use chrono::{DateTime, Utc};
use ebb_domain::{EventId, OrgId, SiteId};
use ebb_rating::money::{PRICE_HOLDS, price_in_force};
use ebb_rating::{Fact, Level, Price, RunKind, Span, WindowLen};
use ebb_store::rating::{self as store, Deleted, RatedRow};
use futures::future::BoxFuture;
use serde::Serialize;
use sqlx::{Connection, PgConnection};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The advisory lock every rater holds while it runs (`ebb_rate` in ASCII).
pub const RATE_LOCK_KEY: i64 = 0x6562_625f_7261_7465;

/// How often the periodic job rates the trailing closed hours.
pub const EVERY: Duration = Duration::from_secs(15 * 60);

/// How long `ebb worker rate` waits for a rater that holds the lock (a periodic run takes
/// seconds).
pub const CLI_LOCK_WAIT: Duration = Duration::from_secs(120);

/// The most deleted rows and anomalies logged one by one; the summary counts them all.
const LOGGED_ITEMS: usize = 20;

/// What makes a run's result doubtful: someone must look.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Anomaly {
    /// Energy was curtailed in a window no price covers: the org is not rated.
    Unpriced {
        org: OrgId,
        site: SiteId,
        event: EventId,
        window_start: DateTime<Utc>,
    },
    /// An amount beyond an `i64` of micro-units.
    AmountOverflow {
        org: OrgId,
        site: SiteId,
        event: EventId,
        window_start: DateTime<Utc>,
    },
    /// A stored price outside the accepted range (not written through the API).
    BadPrice {
        org: OrgId,
        window_start: DateTime<Utc>,
    },
    /// `org.settlement_window_minutes` is neither 15 nor 60.
    UnknownWindow { org: OrgId, minutes: i32 },
}

/// What one run did.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    /// `routine` or `backfill`.
    pub kind: &'static str,
    #[serde(skip)]
    pub run_kind: RunKind,
    pub orgs: usize,
    /// Confirmed intervals read.
    pub intervals: usize,
    /// Rows the run produced (written or already up to date).
    pub rows: usize,
    /// Rows inserted or changed.
    pub upserted: u64,
    /// Previously rated rows deleted, by org.
    pub deleted: Vec<(OrgId, Deleted)>,
    pub anomalies: Vec<Anomaly>,
    pub seconds: f64,
    /// Of `seconds`: reading intervals and prices, rating and pricing, writing.
    pub read_seconds: f64,
    pub rate_seconds: f64,
    pub write_seconds: f64,
    pub exit_code: u8,
}

impl Report {
    /// Deleted rows, as the exit-code contract counts them.
    pub fn reconciled_deletions(&self) -> u64 {
        self.deleted.len() as u64
    }

    /// How loudly this run is logged ([`ebb_rating::log_level`]).
    pub fn level(&self) -> Level {
        ebb_rating::log_level(
            self.reconciled_deletions(),
            self.run_kind,
            self.anomalies.len() as u64,
        )
    }

    /// Logs the run: each deleted row (up to a few) and anomaly at the run's level, then one
    /// summary line.
    pub fn log(&self) {
        let level = self.level();
        macro_rules! at_level {
            ($($t:tt)*) => {
                match level {
                    Level::Error => tracing::error!($($t)*),
                    Level::Info => tracing::info!($($t)*),
                }
            };
        }
        for (org, d) in self.deleted.iter().take(LOGGED_ITEMS) {
            at_level!(
                org = %org, site = %d.site, event = %d.event, window_start = %d.window_start,
                amount_micros = d.amount_micros, provisional = d.provisional, run = self.kind,
                "rating deleted a previously rated row"
            );
        }
        for a in self.anomalies.iter().take(LOGGED_ITEMS) {
            tracing::error!(anomaly = ?a, run = self.kind, "rating anomaly");
        }
        at_level!(
            run = self.kind, since = %self.since, until = %self.until, orgs = self.orgs,
            intervals = self.intervals, rows = self.rows, upserted = self.upserted,
            deleted = self.deleted.len(), anomalies = self.anomalies.len(),
            seconds = self.seconds, exit_code = self.exit_code,
            "rating run finished"
        );
    }
}

/// How long a run waits for the lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockWait {
    /// Not at all: another rater is running, this turn is skipped.
    Skip,
    /// Up to this long.
    UpTo(Duration),
}

/// Takes [`RATE_LOCK_KEY`] on a new connection made with `pool`'s options; `None` if another
/// rater held it for longer than `wait`.
async fn lock(pool: &ebb_store::PgPool, wait: LockWait) -> anyhow::Result<Option<PgConnection>> {
    let mut conn = PgConnection::connect_with(&pool.connect_options()).await?;
    let deadline = Instant::now()
        + match wait {
            LockWait::Skip => Duration::ZERO,
            LockWait::UpTo(d) => d,
        };
    loop {
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(RATE_LOCK_KEY)
            .fetch_one(&mut conn)
            .await?;
        if got {
            return Ok(Some(conn));
        }
        if Instant::now() >= deadline {
            conn.close().await.ok();
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One run over `span` at `now`, single-flight: `None` if another rater held the lock past
/// `wait`.
pub async fn rate_once(
    pool: &ebb_store::PgPool,
    span: Span,
    kind: RunKind,
    now: DateTime<Utc>,
    wait: LockWait,
) -> anyhow::Result<Option<Report>> {
    let Some(mut conn) = lock(pool, wait).await? else {
        return Ok(None);
    };
    let report = rate_locked(&mut conn, span, kind, now).await;
    // Released at once; closing the connection would release it too, but only once the
    // server's backend has exited, which the next rater may beat.
    let unlocked = sqlx::query_scalar::<_, bool>("SELECT pg_advisory_unlock($1)")
        .bind(RATE_LOCK_KEY)
        .fetch_one(&mut conn)
        .await;
    if let Err(e) = unlocked {
        tracing::warn!(error = ?e, "releasing the rating lock; closing its connection releases it");
    }
    conn.close().await.ok();
    report.map(Some)
}

async fn rate_locked(
    conn: &mut PgConnection,
    span: Span,
    kind: RunKind,
    now: DateTime<Utc>,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let orgs = store::orgs(&mut *conn).await?;
    let mut report = Report {
        since: span.since,
        until: span.until,
        kind: match kind {
            RunKind::Routine => "routine",
            RunKind::Backfill => "backfill",
        },
        run_kind: kind,
        orgs: orgs.len(),
        intervals: 0,
        rows: 0,
        upserted: 0,
        deleted: Vec::new(),
        anomalies: Vec::new(),
        seconds: 0.0,
        read_seconds: 0.0,
        rate_seconds: 0.0,
        write_seconds: 0.0,
        exit_code: 0,
    };
    let mut read = Duration::ZERO;
    let mut rating = Duration::ZERO;
    let mut writing = Duration::ZERO;
    for terms in orgs {
        let org = terms.org;
        let Some(len) = WindowLen::from_minutes(terms.window_minutes) else {
            report.anomalies.push(Anomaly::UnknownWindow {
                org,
                minutes: terms.window_minutes,
            });
            continue;
        };
        let step = Instant::now();
        let intervals = store::intervals(&mut *conn, org, span.since, span.until).await?;
        report.intervals += intervals.len();
        let facts: Vec<Fact<(SiteId, EventId)>> = intervals
            .into_iter()
            .map(|i| Fact {
                key: (i.site, i.event),
                started_at: i.started_at,
                ended_at: i.ended_at,
                baseline_w: i.baseline_power_w,
                start_power_w: i.start_power_w,
                end_power_w: i.end_power_w,
            })
            .collect();
        // A price set up to an hour before the span still holds at its start.
        let stored = store::prices(&mut *conn, org, span.since - PRICE_HOLDS, span.until).await?;
        read += step.elapsed();
        let step = Instant::now();
        let rated = ebb_rating::rate(&facts, span, len, now);
        let mut anomalies = Vec::new();
        let mut prices = BTreeMap::new();
        for (at, micros) in stored {
            match Price::from_micros(micros) {
                Some(p) => {
                    prices.insert(at, p);
                }
                None => anomalies.push(Anomaly::BadPrice {
                    org,
                    window_start: at,
                }),
            }
        }
        let mut rows = Vec::with_capacity(rated.len());
        for r in rated {
            let (site, event) = r.key;
            let kwh_micros = r.energy.kwh_micros();
            let amount = if kwh_micros == 0 {
                Some(0)
            } else {
                match price_in_force(&prices, r.window_start) {
                    None => {
                        anomalies.push(Anomaly::Unpriced {
                            org,
                            site,
                            event,
                            window_start: r.window_start,
                        });
                        None
                    }
                    Some(p) => {
                        let a = ebb_rating::amount_micros(kwh_micros, p);
                        if a.is_none() {
                            anomalies.push(Anomaly::AmountOverflow {
                                org,
                                site,
                                event,
                                window_start: r.window_start,
                            });
                        }
                        a
                    }
                }
            };
            rows.push(RatedRow {
                site,
                event,
                window_start: r.window_start,
                window_end: r.window_end,
                kwh_micros,
                amount_micros: amount.unwrap_or(0),
                currency: terms.currency.clone(),
                provisional: r.provisional,
            });
        }
        rating += step.elapsed();
        if !anomalies.is_empty() {
            // Fail closed: the org's rows stay as the last good run left them.
            report.anomalies.extend(anomalies);
            continue;
        }
        report.rows += rows.len();
        let step = Instant::now();
        let mut tx = conn.begin().await?;
        let written = store::write_rated(&mut tx, org, span.since, span.until, &rows).await?;
        tx.commit().await?;
        writing += step.elapsed();
        report.upserted += written.upserted;
        report
            .deleted
            .extend(written.deleted.into_iter().map(|d| (org, d)));
    }
    let secs = |d: Duration| (d.as_secs_f64() * 1_000.0).round() / 1_000.0;
    report.seconds = secs(started.elapsed());
    report.read_seconds = secs(read);
    report.rate_seconds = secs(rating);
    report.write_seconds = secs(writing);
    report.exit_code = ebb_rating::exit_code(
        report.reconciled_deletions(),
        kind,
        report.anomalies.len() as u64,
    );
    Ok(report)
}

/// The worker's `rate` job: a routine run every [`EVERY`].
pub fn job(
    _config: &WorkerConfig,
    ctx: ebb_runtime::Context,
) -> BoxFuture<'static, anyhow::Result<()>> {
    Box::pin(async move {
        run(ctx.pool()?.clone(), EVERY, ctx.shutdown.clone()).await;
        Ok(())
    })
}

/// Rates the trailing closed hours every `every` until `shutdown`. A run that fails is logged
/// and retried at the next turn; one that finds another rater running skips its turn.
pub async fn run(pool: ebb_store::PgPool, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Utc::now();
        let (span, kind) = match Span::resolve(None, None, now) {
            Ok(s) => s,
            Err(error) => {
                tracing::error!(error = %error, "rating: no routine span");
                continue;
            }
        };
        let run = rate_once(&pool, span, kind, now, LockWait::Skip);
        tokio::select! {
            () = shutdown.cancelled() => return,
            result = run => match result {
                Ok(Some(report)) => report.log(),
                Ok(None) => tracing::info!("rating: another rater holds the lock, skipping this turn"),
                Err(error) => tracing::error!(error = ?error, "rating run failed"),
            },
        }
    }
}

/// `ebb worker rate [--since T] [--until T]`: one run now, waiting for the lock up to
/// [`CLI_LOCK_WAIT`]. Returns the report; its `exit_code` is the process's.
pub async fn rate_cli(
    pool: &ebb_store::PgPool,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
) -> anyhow::Result<Report> {
    let now = Utc::now();
    let (span, kind) = Span::resolve(since, until, now)?;
    let report = rate_once(pool, span, kind, now, LockWait::UpTo(CLI_LOCK_WAIT))
        .await?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "another rater held the rating lock for {} s; try again",
                CLI_LOCK_WAIT.as_secs()
            )
        })?;
    report.log();
    Ok(report)
}
