//! The `gauges` job: every `gauges_interval_s`, reads the fleet and event figures from the
//! database ([`ebb_store::gauges`]) and sets the gauges an operator's dashboard and alerts read
//! (`ebb_site_power_watts`, `ebb_site_shed_watts`, `ebb_curtailment_events`, the heartbeat's
//! age, the outbox's lag, …). Reading the system of record means the figures do not depend on
//! which reconciler leads, and the heartbeat's age is reported by a process other than the one
//! it watches. Every worker that runs the job sets the same values.

use crate::WorkerConfig;
use ebb_obs::names;
use ebb_store::gauges::Figures;
use futures::future::BoxFuture;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub fn job(
    config: &WorkerConfig,
    ctx: ebb_runtime::Context,
) -> BoxFuture<'static, anyhow::Result<()>> {
    let every = Duration::from_secs(config.gauges_interval_s);
    Box::pin(async move {
        run(ctx.pool()?.clone(), every, ctx.shutdown.clone()).await;
        Ok(())
    })
}

/// Refreshes the gauges every `every` until `shutdown`.
pub async fn run(pool: ebb_store::PgPool, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let started = Instant::now();
        match ebb_store::gauges::read(&pool).await {
            Ok(figures) => set(&figures),
            // The gauges keep their last values; the refresh histogram stops moving, which
            // the dashboard shows.
            Err(error) => tracing::warn!(error = ?error, "reading the fleet gauges failed"),
        }
        metrics::histogram!(names::GAUGES_REFRESH_SECONDS).record(started.elapsed().as_secs_f64());
    }
}

/// Sets every gauge from `f`.
pub fn set(f: &Figures) {
    for s in &f.sites {
        let site = s.code.clone();
        metrics::gauge!(names::SITE_POWER_WATTS, "site" => site.clone()).set(s.power_w);
        metrics::gauge!(names::SITE_SHED_WATTS, "site" => site.clone()).set(s.shed_w);
        metrics::gauge!(names::SITE_PROMISED_SHED_WATTS, "site" => site.clone()).set(s.promised_w);
        for (state, n) in [
            ("hashing", s.hashing),
            ("sleeping", s.sleeping),
            ("unreachable", s.unreachable),
            ("unknown", s.unknown),
            ("maintenance", s.maintenance),
        ] {
            metrics::gauge!(names::SITE_MINERS, "site" => site.clone(), "state" => state)
                .set(n as f64);
        }
        if let Some(age) = s.telemetry_age_s {
            metrics::gauge!(names::SITE_TELEMETRY_AGE_SECONDS, "site" => site).set(age);
        }
    }
    for (state, n) in &f.events {
        metrics::gauge!(names::CURTAILMENT_EVENTS, "state" => state.clone()).set(*n as f64);
    }
    for (state, n) in &f.targets {
        metrics::gauge!(names::CURTAILMENT_TARGETS, "state" => state.clone()).set(*n as f64);
    }
    if let Some(age) = f.heartbeat_age_s {
        metrics::gauge!(names::RECONCILER_HEARTBEAT_AGE_SECONDS).set(age);
    }
    metrics::gauge!(names::OUTBOX_PENDING).set(f.outbox_pending as f64);
    metrics::gauge!(names::OUTBOX_LAG_SECONDS).set(f.outbox_lag_s);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ebb_store::gauges::SiteFigures;
    use ebb_testkit::metrics::{rendered, value};

    #[test]
    fn every_figure_becomes_its_gauge() {
        let f = Figures {
            sites: vec![SiteFigures {
                code: "site-a".into(),
                power_w: 1_000.0,
                shed_w: 2_940.0,
                promised_w: 3_000.0,
                hashing: 3,
                sleeping: 1,
                unreachable: 2,
                unknown: 0,
                maintenance: 1,
                telemetry_age_s: Some(4.5),
            }],
            events: vec![("active".into(), 1), ("completed".into(), 0)],
            targets: vec![("confirmed".into(), 1), ("restore_failed".into(), 0)],
            heartbeat_age_s: Some(2.0),
            outbox_pending: 7,
            outbox_lag_s: 1.5,
        };
        let text = rendered(|| set(&f));
        let get = |series: String| value(&text, &series);
        let site = |name: &str| get(format!("{name}{{site=\"site-a\"}}"));
        assert_eq!(site(names::SITE_POWER_WATTS), Some(1_000.0), "{text}");
        assert_eq!(site(names::SITE_SHED_WATTS), Some(2_940.0));
        assert_eq!(site(names::SITE_PROMISED_SHED_WATTS), Some(3_000.0));
        assert_eq!(site(names::SITE_TELEMETRY_AGE_SECONDS), Some(4.5));
        for (state, n) in [
            ("hashing", 3.0),
            ("sleeping", 1.0),
            ("unreachable", 2.0),
            ("unknown", 0.0),
            ("maintenance", 1.0),
        ] {
            let series = format!(
                "{}{{site=\"site-a\",state=\"{state}\"}}",
                names::SITE_MINERS
            );
            assert_eq!(get(series), Some(n), "{state}: {text}");
        }
        let state = |name: &str, s: &str| get(format!("{name}{{state=\"{s}\"}}"));
        assert_eq!(state(names::CURTAILMENT_EVENTS, "active"), Some(1.0));
        assert_eq!(state(names::CURTAILMENT_EVENTS, "completed"), Some(0.0));
        assert_eq!(state(names::CURTAILMENT_TARGETS, "confirmed"), Some(1.0));
        assert_eq!(
            state(names::CURTAILMENT_TARGETS, "restore_failed"),
            Some(0.0)
        );
        assert_eq!(
            get(names::RECONCILER_HEARTBEAT_AGE_SECONDS.into()),
            Some(2.0)
        );
        assert_eq!(get(names::OUTBOX_PENDING.into()), Some(7.0));
        assert_eq!(get(names::OUTBOX_LAG_SECONDS.into()), Some(1.5));
    }
}
