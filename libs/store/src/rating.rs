//! Settlement rating's tables (ADR 0012): the facts (`curtailment_interval`, written by the
//! target transitions in [`crate::events`]), the prices an admin sets (`price`), and the rater's
//! output (`rated_usage`), with its reconcile DELETE and the usage read of `GET /v1/usage`.
//! Every query is filtered by `org_id`.

use crate::error::StoreError;
use chrono::{DateTime, Utc};
use ebb_domain::{EventId, OrgId, SiteId};
use sqlx::{PgConnection, PgExecutor, Row};
use std::collections::BTreeMap;
use uuid::Uuid;

/// What rating needs to know of an org.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrgTerms {
    pub org: OrgId,
    /// `org.settlement_window_minutes`: 15 or 60.
    pub window_minutes: i32,
    /// ISO 4217, e.g. `USD`.
    pub currency: String,
}

fn terms_from_row(r: &sqlx::postgres::PgRow) -> OrgTerms {
    OrgTerms {
        org: OrgId(r.get(0)),
        window_minutes: r.get(1),
        currency: r.get(2),
    }
}

/// Every org, with its window and currency: a run visits each, so that an org whose facts all
/// vanished still has its rows reconciled away.
pub async fn orgs(db: impl PgExecutor<'_>) -> Result<Vec<OrgTerms>, StoreError> {
    let rows = sqlx::query("SELECT id, settlement_window_minutes, currency FROM org ORDER BY id")
        .fetch_all(db)
        .await?;
    Ok(rows.iter().map(terms_from_row).collect())
}

/// One org's window and currency.
pub async fn org_terms(db: impl PgExecutor<'_>, org: OrgId) -> Result<OrgTerms, StoreError> {
    let row = sqlx::query("SELECT id, settlement_window_minutes, currency FROM org WHERE id = $1")
        .bind(org.0)
        .fetch_optional(db)
        .await?
        .ok_or(StoreError::NotFound)?;
    Ok(terms_from_row(&row))
}

/// One interval during which a target was confirmed.
#[derive(Clone, Debug, PartialEq)]
pub struct Interval {
    pub site: SiteId,
    pub event: EventId,
    pub device: ebb_domain::DeviceId,
    pub started_at: DateTime<Utc>,
    /// `None` while the target is still confirmed.
    pub ended_at: Option<DateTime<Utc>>,
    pub baseline_power_w: f64,
    pub start_power_w: Option<f64>,
    pub end_power_w: Option<f64>,
}

/// An org's intervals that overlap `[since, until)` (still open ones included). Query: the
/// `curtailment_interval_rating` index, from `since` on.
pub async fn intervals(
    db: impl PgExecutor<'_>,
    org: OrgId,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<Vec<Interval>, StoreError> {
    let rows = sqlx::query(
        "SELECT site_id, event_id, device_id, started_at, ended_at, baseline_power_w,
                start_power_w, end_power_w
         FROM curtailment_interval
         WHERE org_id = $1 AND COALESCE(ended_at, 'infinity'::timestamptz) > $2 AND started_at < $3",
    )
    .bind(org.0)
    .bind(since)
    .bind(until)
    .fetch_all(db)
    .await?;
    Ok(rows
        .iter()
        .map(|r| Interval {
            site: SiteId(r.get(0)),
            event: EventId(r.get(1)),
            device: ebb_domain::DeviceId(r.get(2)),
            started_at: r.get(3),
            ended_at: r.get(4),
            baseline_power_w: r.get(5),
            start_power_w: r.get(6),
            end_power_w: r.get(7),
        })
        .collect())
}

/// Writes intervals as given, times included: history for benchmarks and tests, which cannot
/// wait a day for the reconciler's transitions to write it. One statement.
pub async fn insert_intervals(
    db: impl PgExecutor<'_>,
    org: OrgId,
    intervals: &[Interval],
) -> Result<u64, StoreError> {
    let col = |f: fn(&Interval) -> Uuid| intervals.iter().map(f).collect::<Vec<Uuid>>();
    let done = sqlx::query(
        "INSERT INTO curtailment_interval (org_id, site_id, event_id, device_id, started_at,
             ended_at, baseline_power_w, start_power_w, end_power_w)
         SELECT $1, u.* FROM unnest($2::uuid[], $3::uuid[], $4::uuid[], $5::timestamptz[],
             $6::timestamptz[], $7::float8[], $8::float8[], $9::float8[]) AS u",
    )
    .bind(org.0)
    .bind(col(|i| i.site.0))
    .bind(col(|i| i.event.0))
    .bind(col(|i| i.device.0))
    .bind(intervals.iter().map(|i| i.started_at).collect::<Vec<_>>())
    .bind(intervals.iter().map(|i| i.ended_at).collect::<Vec<_>>())
    .bind(
        intervals
            .iter()
            .map(|i| i.baseline_power_w)
            .collect::<Vec<_>>(),
    )
    .bind(
        intervals
            .iter()
            .map(|i| i.start_power_w)
            .collect::<Vec<_>>(),
    )
    .bind(intervals.iter().map(|i| i.end_power_w).collect::<Vec<_>>())
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// Sets an org's prices (micro-units of its currency per MWh) by window start, replacing any
/// already set for those windows. One statement: all of them or none.
pub async fn upsert_prices(
    db: impl PgExecutor<'_>,
    org: OrgId,
    prices: &[(DateTime<Utc>, i64)],
) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "INSERT INTO price (org_id, window_start, price_micros_per_mwh, updated_at)
         SELECT $1, u.at, u.micros, now() FROM unnest($2::timestamptz[], $3::int8[]) AS u(at, micros)
         ORDER BY u.at
         ON CONFLICT (org_id, window_start) DO UPDATE
            SET price_micros_per_mwh = EXCLUDED.price_micros_per_mwh, updated_at = now()",
    )
    .bind(org.0)
    .bind(prices.iter().map(|p| p.0).collect::<Vec<_>>())
    .bind(prices.iter().map(|p| p.1).collect::<Vec<_>>())
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// An org's prices with a window start in `[from, until)`, by window start. Query: the
/// primary key.
pub async fn prices(
    db: impl PgExecutor<'_>,
    org: OrgId,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<BTreeMap<DateTime<Utc>, i64>, StoreError> {
    let rows = sqlx::query(
        "SELECT window_start, price_micros_per_mwh FROM price
         WHERE org_id = $1 AND window_start >= $2 AND window_start < $3",
    )
    .bind(org.0)
    .bind(from)
    .bind(until)
    .fetch_all(db)
    .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// One `rated_usage` row as the rater produces it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RatedRow {
    pub site: SiteId,
    pub event: EventId,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    /// `curtailed_kwh` × 10⁶.
    pub kwh_micros: i64,
    pub amount_micros: i64,
    pub currency: String,
    pub provisional: bool,
}

/// A previously rated row the latest run deleted.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Deleted {
    pub site: SiteId,
    pub event: EventId,
    pub window_start: DateTime<Utc>,
    pub amount_micros: i64,
    pub provisional: bool,
}

/// What writing a run's rows did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// Rows inserted or changed; a row rated again with the same figures is not touched.
    pub upserted: u64,
    /// Rows in the run's span that it no longer produces, deleted.
    pub deleted: Vec<Deleted>,
}

/// The reconcile DELETE: an org's rows in `[$2, $3)` that the run (`$4`, `$5`, `$6`: site,
/// event and window start of each row it produced) no longer produces. Served by
/// `rated_usage_reconcile` (org_id, window_start); a test EXPLAINs this exact text.
///
/// `NOT IN` rather than `NOT EXISTS`: an anti-join's plan follows the planner's estimate of the
/// rows in the span, and with stale statistics (a new table, windows past the histogram) it
/// picked a nested loop over the produced keys, quadratic (9,600 rows: 46 million comparisons,
/// 18 s). `NOT IN` over a subquery becomes one hash of the produced keys probed once per row,
/// whatever the estimates; every column is `NOT NULL`, so its null semantics never apply. The
/// hash must fit in `work_mem`, which is why [`write_rated`] deletes a day at a time.
pub const RECONCILE_DELETE: &str = "DELETE FROM rated_usage r
     WHERE r.org_id = $1 AND r.window_start >= $2 AND r.window_start < $3
       AND (r.site_id, r.event_id, r.window_start) NOT IN
           (SELECT k.site, k.event, k.ws FROM unnest($4::uuid[], $5::uuid[], $6::timestamptz[]) AS k(site, event, ws))
     RETURNING r.site_id, r.event_id, r.window_start, r.amount_micros, r.provisional";

/// The reconcile DELETE's span is cut into days, so that the produced keys it hashes stay small
/// (a day of 100 sites in quarter-hours is 9,600 keys, well inside the default `work_mem`)
/// however long a backfill is.
const DELETE_CHUNK: chrono::TimeDelta = chrono::TimeDelta::days(1);

/// Writes one org's rows of a run over `[since, until)` in the caller's transaction, then
/// deletes the rows of that span the run no longer produces: what the latest run says is what
/// bills.
///
/// The upsert goes in a fixed key order (site, event, window start: `rows` are sorted here
/// first), so one rater never deadlocks against itself. Deadlock safety between raters holds
/// only under single-flight: the ordered upsert of one run and the reconcile DELETE of another
/// could still lock the same rows in opposite orders. The rater therefore runs under an
/// advisory lock (`ebb_worker::rate`), and nothing else writes `rated_usage`.
pub async fn write_rated(
    conn: &mut PgConnection,
    org: OrgId,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    rows: &[RatedRow],
) -> Result<Written, StoreError> {
    let mut rows: Vec<&RatedRow> = rows.iter().collect();
    rows.sort_by_key(|r| (r.site, r.event, r.window_start));
    let sites: Vec<Uuid> = rows.iter().map(|r| r.site.0).collect();
    let events: Vec<Uuid> = rows.iter().map(|r| r.event.0).collect();
    let starts: Vec<DateTime<Utc>> = rows.iter().map(|r| r.window_start).collect();
    let upserted = sqlx::query(
        "INSERT INTO rated_usage (org_id, site_id, event_id, window_start, window_end,
             curtailed_kwh, amount_micros, currency, provisional, rated_at)
         SELECT $1, u.site, u.event, u.ws, u.we, u.kwh::numeric / 1000000, u.amount, u.currency,
                u.provisional, now()
         FROM unnest($2::uuid[], $3::uuid[], $4::timestamptz[], $5::timestamptz[], $6::int8[],
                     $7::int8[], $8::text[], $9::bool[])
              AS u(site, event, ws, we, kwh, amount, currency, provisional)
         ORDER BY u.site, u.event, u.ws
         ON CONFLICT (org_id, site_id, event_id, window_start) DO UPDATE
            SET window_end = EXCLUDED.window_end, curtailed_kwh = EXCLUDED.curtailed_kwh,
                amount_micros = EXCLUDED.amount_micros, currency = EXCLUDED.currency,
                provisional = EXCLUDED.provisional, rated_at = now()
            WHERE (rated_usage.window_end, rated_usage.curtailed_kwh, rated_usage.amount_micros,
                   rated_usage.currency, rated_usage.provisional)
                  IS DISTINCT FROM (EXCLUDED.window_end, EXCLUDED.curtailed_kwh,
                   EXCLUDED.amount_micros, EXCLUDED.currency, EXCLUDED.provisional)",
    )
    .bind(org.0)
    .bind(&sites)
    .bind(&events)
    .bind(&starts)
    .bind(rows.iter().map(|r| r.window_end).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.kwh_micros).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.amount_micros).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.currency.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.provisional).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?
    .rows_affected();
    // Each produced row's index, by the day of the span its window starts in.
    let mut by_day: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    for (i, ws) in starts.iter().enumerate() {
        let day = (*ws - since)
            .num_seconds()
            .div_euclid(DELETE_CHUNK.num_seconds());
        by_day.entry(day).or_default().push(i);
    }
    let mut deleted = Vec::new();
    let (mut from, mut day) = (since, 0);
    while from < until {
        let to = (from + DELETE_CHUNK).min(until);
        let inside = by_day.remove(&day).unwrap_or_default();
        day += 1;
        let pick = |v: &Vec<Uuid>| inside.iter().map(|&i| v[i]).collect::<Vec<Uuid>>();
        let found = sqlx::query(RECONCILE_DELETE)
            .bind(org.0)
            .bind(from)
            .bind(to)
            .bind(pick(&sites))
            .bind(pick(&events))
            .bind(inside.iter().map(|&i| starts[i]).collect::<Vec<_>>())
            .fetch_all(&mut *conn)
            .await?;
        deleted.extend(found.iter().map(|r| Deleted {
            site: SiteId(r.get(0)),
            event: EventId(r.get(1)),
            window_start: r.get(2),
            amount_micros: r.get(3),
            provisional: r.get(4),
        }));
        from = to;
    }
    Ok(Written { upserted, deleted })
}

/// How `GET /v1/usage` groups an org's rated rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grouping {
    /// One row per site, event and window, as rated.
    SiteAndEvent,
    /// Per site and window, summed over events.
    Site,
    /// Per event and window, summed over the sites the caller may see.
    Event,
}

/// One row of `GET /v1/usage`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRow {
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    /// The site's code; `None` when grouped by event.
    pub site: Option<String>,
    /// `None` when grouped by site.
    pub event: Option<EventId>,
    /// `curtailed_kwh` × 10⁶, summed from the rated rows (each already rounded).
    pub kwh_micros: i64,
    pub amount_micros: i64,
    pub currency: String,
    pub provisional: bool,
}

/// An org's rated rows with a window start in `[from, to)`, within `sites` when given (a
/// site-limited key), grouped. Query: `rated_usage_reconcile` (org_id, window_start).
pub async fn usage(
    db: impl PgExecutor<'_>,
    org: OrgId,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    sites: Option<&[Uuid]>,
    grouping: Grouping,
) -> Result<Vec<UsageRow>, StoreError> {
    let by = match grouping {
        Grouping::SiteAndEvent => "both",
        Grouping::Site => "site",
        Grouping::Event => "event",
    };
    let rows = sqlx::query(
        "SELECT r.window_start, r.window_end,
                CASE WHEN $5 <> 'event' THEN s.code END AS site,
                CASE WHEN $5 <> 'site' THEN r.event_id END AS event_id,
                (sum(r.curtailed_kwh) * 1000000)::int8, sum(r.amount_micros)::int8, r.currency,
                bool_or(r.provisional)
         FROM rated_usage r JOIN site s ON s.id = r.site_id AND s.org_id = r.org_id
         WHERE r.org_id = $1 AND r.window_start >= $2 AND r.window_start < $3
           AND ($4::uuid[] IS NULL OR r.site_id = ANY($4))
         GROUP BY 1, 2, 3, 4, 7
         ORDER BY 1, 3, 4, 7",
    )
    .bind(org.0)
    .bind(from)
    .bind(to)
    .bind(sites)
    .bind(by)
    .fetch_all(db)
    .await?;
    Ok(rows
        .iter()
        .map(|r| UsageRow {
            window_start: r.get(0),
            window_end: r.get(1),
            site: r.get(2),
            event: r.get::<Option<Uuid>, _>(3).map(EventId),
            kwh_micros: r.get(4),
            amount_micros: r.get(5),
            currency: r.get(6),
            provisional: r.get(7),
        })
        .collect())
}
