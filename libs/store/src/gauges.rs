//! What an operator's dashboard and alerts read about the fleet and its events (issue 10), in a
//! few aggregate statements: power, shed and miners per site, events and targets by state, the
//! reconciler heartbeat's age and the outbox's lag. The worker's `gauges` job reads this every
//! few seconds and sets the gauges, so the figures come from the system of record, whichever
//! reconciler leads and even when none does.

use crate::error::StoreError;
use sqlx::{PgPool, Row};

/// One site's figures.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SiteFigures {
    pub code: String,
    /// Power drawn by its reachable miners, from their latest samples.
    pub power_w: f64,
    /// Baseline − latest observed power over the confirmed targets of live events.
    pub shed_w: f64,
    /// Baseline of the live events' targets here that have not failed.
    pub promised_w: f64,
    pub hashing: i64,
    pub sleeping: i64,
    pub unreachable: i64,
    /// No telemetry yet.
    pub unknown: i64,
    pub maintenance: i64,
    /// Age of the newest sample; `None` when the site has none.
    pub telemetry_age_s: Option<f64>,
}

/// Everything the gauges show.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Figures {
    pub sites: Vec<SiteFigures>,
    /// Events by state (every state, zero included).
    pub events: Vec<(String, i64)>,
    /// Targets of live events by state, plus `restore_failed` of events ended in the last 24 h.
    pub targets: Vec<(String, i64)>,
    /// `None` when no reconciler ever led.
    pub heartbeat_age_s: Option<f64>,
    pub outbox_pending: i64,
    /// Age of the oldest unpublished, unparked outbox row (0 when none).
    pub outbox_lag_s: f64,
}

/// A count for every state in `states`, zero for those `counted` (a `GROUP BY state`) lacks, so
/// a gauge falls back to 0 instead of keeping its last value.
fn every_state<'a>(
    states: impl Iterator<Item = &'a str>,
    counted: &[(String, i64)],
) -> Vec<(String, i64)> {
    states
        .map(|s| {
            let n = counted.iter().find(|(c, _)| c == s).map_or(0, |(_, n)| *n);
            (s.to_owned(), n)
        })
        .collect()
}

/// The events that hold their targets: pending, active, restoring.
const LIVE: &str = "('pending', 'active', 'restoring')";

/// Reads every figure, in one read-only snapshot.
pub async fn read(pool: &PgPool) -> Result<Figures, StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let fleet = sqlx::query(
        "SELECT s.code,
                coalesce(sum(ds.power_w) FILTER (WHERE ds.reachable), 0)::float8,
                count(d.id) FILTER (WHERE NOT d.maintenance AND ds.reachable AND ds.hashrate_ths > 0),
                count(d.id) FILTER (WHERE NOT d.maintenance AND ds.reachable
                                      AND coalesce(ds.hashrate_ths, 0) = 0),
                count(d.id) FILTER (WHERE NOT d.maintenance AND NOT ds.reachable),
                count(d.id) FILTER (WHERE NOT d.maintenance AND ds.device_id IS NULL),
                count(d.id) FILTER (WHERE d.maintenance),
                extract(epoch FROM now() - max(ds.sampled_at))::float8
         FROM site s
         LEFT JOIN device d ON d.site_id = s.id
         LEFT JOIN device_state ds ON ds.device_id = d.id
         GROUP BY s.code
         ORDER BY s.code",
    )
    .fetch_all(&mut *tx)
    .await?;
    let shed = sqlx::query(&format!(
        "SELECT s.code,
                coalesce(sum(t.baseline_power_w - least(coalesce(ds.power_w, t.baseline_power_w),
                                                        t.baseline_power_w))
                         FILTER (WHERE t.state = 'confirmed'), 0)::float8,
                coalesce(sum(t.baseline_power_w) FILTER (WHERE t.state <> 'failed'), 0)::float8
         FROM curtailment_target t
         JOIN curtailment_event e ON e.id = t.event_id AND e.state IN {LIVE}
         JOIN site s ON s.id = t.site_id
         LEFT JOIN device_state ds ON ds.device_id = t.device_id
         GROUP BY s.code"
    ))
    .fetch_all(&mut *tx)
    .await?;
    let shed: std::collections::HashMap<String, (f64, f64)> = shed
        .into_iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    let sites = fleet
        .into_iter()
        .map(|r| {
            let code: String = r.get(0);
            let (shed_w, promised_w) = shed.get(&code).copied().unwrap_or_default();
            SiteFigures {
                power_w: r.get(1),
                hashing: r.get(2),
                sleeping: r.get(3),
                unreachable: r.get(4),
                unknown: r.get(5),
                maintenance: r.get(6),
                telemetry_age_s: r.get::<Option<f64>, _>(7).map(|a| a.max(0.0)),
                shed_w,
                promised_w,
                code,
            }
        })
        .collect();
    let counted: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, count(*) FROM curtailment_event GROUP BY state")
            .fetch_all(&mut *tx)
            .await?;
    let events = every_state(
        ebb_domain::EventState::ALL.iter().map(|s| s.as_str()),
        &counted,
    );
    let counted: Vec<(String, i64)> = sqlx::query_as(&format!(
        "SELECT t.state, count(*) FROM curtailment_target t
         JOIN curtailment_event e ON e.id = t.event_id
         WHERE e.state IN {LIVE}
            OR (t.state = 'restore_failed' AND e.updated_at > now() - interval '24 hours')
         GROUP BY t.state"
    ))
    .fetch_all(&mut *tx)
    .await?;
    let targets = every_state(
        ebb_domain::TargetState::ALL.iter().map(|s| s.as_str()),
        &counted,
    );
    let heartbeat_age_s: Option<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM now() - beat_at)::float8 FROM reconciler_heartbeat
         WHERE name = 'reconciler'",
    )
    .fetch_optional(&mut *tx)
    .await?;
    let outbox = sqlx::query(
        "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8
         FROM outbox WHERE published_at IS NULL AND parked_at IS NULL",
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Figures {
        sites,
        events,
        targets,
        heartbeat_age_s: heartbeat_age_s.map(|a| a.max(0.0)),
        outbox_pending: outbox.get(0),
        outbox_lag_s: outbox.get::<f64, _>(1).max(0.0),
    })
}
