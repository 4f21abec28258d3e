//! The HELP text, type and unit of every metric family in [`crate::names`], described to the
//! recorder once when it is installed, so `/metrics` says what each family means (issue 10). A
//! test keeps the two lists in step: a name without a line here fails it.

use crate::names::*;
use metrics::Unit;

/// A metric family's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric family: its name, type, unit and HELP text.
#[derive(Clone, Copy, Debug)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Unit,
    pub help: &'static str,
}

const fn family(name: &'static str, kind: Kind, unit: Unit, help: &'static str) -> Family {
    Family {
        name,
        kind,
        unit,
        help,
    }
}

use Kind::{Counter, Gauge, Histogram};

/// Every family Ebb emits.
pub const FAMILIES: &[Family] = &[
    family(
        SITE_POWER_WATTS,
        Gauge,
        Unit::Count,
        "Power drawn per site by its reachable miners, from their latest telemetry, in watts.",
    ),
    family(
        SITE_SHED_WATTS,
        Gauge,
        Unit::Count,
        "Power shed per site in watts: baseline minus latest observed power over the confirmed targets of live events.",
    ),
    family(
        SITE_PROMISED_SHED_WATTS,
        Gauge,
        Unit::Count,
        "Power the live events promised to shed per site in watts: the baseline of their targets there that have not failed.",
    ),
    family(
        SITE_MINERS,
        Gauge,
        Unit::Count,
        "Miners per site by state: hashing, sleeping, unreachable, unknown (no telemetry yet), maintenance.",
    ),
    family(
        SITE_TELEMETRY_AGE_SECONDS,
        Gauge,
        Unit::Seconds,
        "Age of the newest telemetry sample of a site.",
    ),
    family(
        CURTAILMENT_EVENTS,
        Gauge,
        Unit::Count,
        "Curtailment events by state.",
    ),
    family(
        CURTAILMENT_TARGETS,
        Gauge,
        Unit::Count,
        "Targets of live events by state, plus restore_failed targets of events that ended within 24 hours (miners possibly left asleep).",
    ),
    family(
        RECONCILER_HEARTBEAT_AGE_SECONDS,
        Gauge,
        Unit::Seconds,
        "Age of the reconciler leader's heartbeat row, read from the database by the worker.",
    ),
    family(
        OUTBOX_LAG_SECONDS,
        Gauge,
        Unit::Seconds,
        "Age of the oldest outbox row not yet published to the event feed (0 when none).",
    ),
    family(
        OUTBOX_PENDING,
        Gauge,
        Unit::Count,
        "Outbox rows not yet published to the event feed, parked rows excluded.",
    ),
    family(
        GAUGES_REFRESH_SECONDS,
        Histogram,
        Unit::Seconds,
        "Time one refresh of the fleet and event gauges took in the worker.",
    ),
    family(
        CURTAILMENT_START_TO_ACTIVE_SECONDS,
        Histogram,
        Unit::Seconds,
        "Time from a Start to active, observed when the reconciler activates the event.",
    ),
    family(
        RECONCILER_PASS_PANICS,
        Counter,
        Unit::Count,
        "Panics caught in a reconcile pass outside any one event; the leader carries on with the next pass.",
    ),
    family(
        RECONCILER_TARGET_FAILURES,
        Counter,
        Unit::Count,
        "Targets that failed, by phase (curtail, restore) and reason.",
    ),
    family(
        RECONCILER_COMMANDS_PUBLISHED,
        Counter,
        Unit::Count,
        "Devices commanded in command batches published to JetStream, by command kind.",
    ),
    family(
        RECONCILER_PUBLISH_FAILURES,
        Counter,
        Unit::Count,
        "Command batches whose publish to JetStream failed; a later pass publishes them again.",
    ),
    family(
        AGENT_POLL_LAG_SECONDS,
        Gauge,
        Unit::Seconds,
        "How far a site's telemetry lags: from a poll cycle's scheduled start to its end, per site.",
    ),
    family(
        STORE_TX_RETRIES,
        Counter,
        Unit::Count,
        "Transactions retried after a serialization failure or deadlock.",
    ),
    family(
        OUTBOX_PUBLISHED,
        Counter,
        Unit::Count,
        "Outbox rows published to the event feed by the worker's relay.",
    ),
    family(
        OUTBOX_PARKED,
        Counter,
        Unit::Count,
        "Outbox rows parked after failing relay_max_attempts times; no longer published.",
    ),
    family(
        OUTBOX_PRUNED,
        Counter,
        Unit::Count,
        "Published outbox rows deleted after the retention.",
    ),
    family(
        GATEWAY_REQUESTS,
        Counter,
        Unit::Count,
        "HTTP requests answered by the gateway, by method, route and status class.",
    ),
    family(
        GATEWAY_REQUEST_SECONDS,
        Histogram,
        Unit::Seconds,
        "Time the gateway took to answer an HTTP request, by method and route.",
    ),
    family(
        GATEWAY_RATE_LIMITED,
        Counter,
        Unit::Count,
        "Requests refused with 429 because their API key was over its rate.",
    ),
    family(
        GATEWAY_SHED,
        Counter,
        Unit::Count,
        "Requests shed with 503 because the gateway was at its limit of requests or key lookups.",
    ),
    family(
        GATEWAY_KEY_LOOKUPS,
        Counter,
        Unit::Count,
        "API key lookups that reached PostgreSQL; the rest were answered from the cache.",
    ),
    family(
        GATEWAY_OUTCOME_UNKNOWN,
        Counter,
        Unit::Count,
        "Starts answered 504 outcome-unknown because the planner did not answer in time.",
    ),
    family(
        PLANNER_CANDIDATES_EXCLUDED,
        Counter,
        Unit::Count,
        "Miners left out of a started curtailment's selection, by reason.",
    ),
    family(
        PLANNER_STARTS,
        Counter,
        Unit::Count,
        "Curtailments started, by mode.",
    ),
    family(
        PLANNER_TELEMETRY_SAMPLES,
        Counter,
        Unit::Count,
        "Telemetry samples the planner took into its fleet snapshot.",
    ),
    family(
        RECONCILER_PASS_SECONDS,
        Histogram,
        Unit::Seconds,
        "Duration of one reconciler pass over every live event.",
    ),
    family(
        RECONCILER_PASS_FAILURES,
        Counter,
        Unit::Count,
        "Reconciler passes that failed before reaching the events (e.g. the database was down).",
    ),
    family(
        RECONCILER_EVENT_ERRORS,
        Counter,
        Unit::Count,
        "Events whose reconciliation failed or panicked in a pass; the next pass tries again.",
    ),
    family(
        RECONCILER_RACE_LOST,
        Counter,
        Unit::Count,
        "Compare-and-set state changes that found another state (what: event or target).",
    ),
    family(
        RECONCILER_BATCHES_PUBLISHED,
        Counter,
        Unit::Count,
        "Command batches published to the agents, by command kind.",
    ),
    family(
        RECONCILER_TARGET_TRANSITIONS,
        Counter,
        Unit::Count,
        "Target state changes, by from and to state.",
    ),
    family(
        RECONCILER_IS_LEADER,
        Gauge,
        Unit::Count,
        "1 while this reconciler holds the leader lock, else 0.",
    ),
    family(
        RECONCILER_TELEMETRY_SAMPLES,
        Counter,
        Unit::Count,
        "Telemetry samples the reconciler ingested.",
    ),
    family(
        RECONCILER_SITE_SILENT,
        Gauge,
        Unit::Count,
        "1 while a site's agent has sent neither results nor telemetry for longer than site_silent_after_s, else 0; its targets are charged no attempts meanwhile.",
    ),
    family(
        RECONCILER_RESULTS_REFUSED,
        Counter,
        Unit::Count,
        "Command results dropped unapplied, by reason (site_mismatch: the body names another site than its subject).",
    ),
    family(
        AGENT_COMMANDS,
        Counter,
        Unit::Count,
        "Per-miner command outcomes, by command kind and outcome.",
    ),
    family(
        AGENT_MINER_CALL_SECONDS,
        Histogram,
        Unit::Seconds,
        "Duration of one call to a miner, by operation (identify, read, pause, resume, set_power_limit).",
    ),
    family(
        AGENT_POLL_CYCLE_SECONDS,
        Histogram,
        Unit::Seconds,
        "Duration of one telemetry poll of every miner of the site.",
    ),
    family(
        AGENT_MINERS_UNREACHABLE,
        Gauge,
        Unit::Count,
        "Miners that did not answer the last telemetry poll.",
    ),
    family(
        AGENT_INVALID_SAMPLES,
        Counter,
        Unit::Count,
        "Telemetry samples dropped as invalid (NaN, negative or implausible values).",
    ),
    family(
        AGENT_POISON_BATCHES,
        Counter,
        Unit::Count,
        "Command batches terminated unexecuted as poison (undecodable, out of range, another site's).",
    ),
    family(
        AGENT_STARVED,
        Counter,
        Unit::Count,
        "Devices deferred because the agent ran short of its own descriptors, memory or in-flight slots (back-pressure, never a miner's outcome), by path.",
    ),
    family(
        AGENT_RUNTIME_LAG_SECONDS,
        Gauge,
        Unit::Seconds,
        "How late the agent's runtime woke its latest probe timer: its own CPU overload (a slow miner leaves the runtime idle). Past 0.1 s the in-flight limit is cut.",
    ),
    family(
        AGENT_IN_FLIGHT_LIMIT,
        Gauge,
        Unit::Count,
        "Miners this process's agents may drive at once now: their adaptive limits summed, each within its file-descriptor budget.",
    ),
    family(
        AGENT_RESTORE_LIMITS_IGNORED,
        Counter,
        Unit::Count,
        "Restore power limits outside what any miner supports, ignored: the miner was woken without it.",
    ),
];

/// Describes every family to the installed recorder.
pub fn describe() {
    for f in FAMILIES {
        match f.kind {
            Kind::Counter => metrics::describe_counter!(f.name, f.unit, f.help),
            Kind::Gauge => metrics::describe_gauge!(f.name, f.unit, f.help),
            Kind::Histogram => metrics::describe_histogram!(f.name, f.unit, f.help),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::PrometheusBuilder;
    use std::collections::HashSet;

    /// Every `pub const NAME: &str = "ebb_…"` in names.rs.
    fn declared() -> Vec<String> {
        include_str!("names.rs")
            .lines()
            .filter_map(|l| {
                let l = l.trim();
                let rest = l.strip_prefix("pub const ")?;
                let (_, value) = rest.split_once(": &str = \"")?;
                let name = value.strip_suffix("\";")?;
                name.starts_with("ebb_").then(|| name.to_owned())
            })
            .collect()
    }

    #[test]
    fn every_declared_name_has_one_family_with_help_that_fits_its_type() {
        let names = declared();
        assert!(names.len() >= 20, "names.rs was read: {names:?}");
        let described: HashSet<&str> = FAMILIES.iter().map(|f| f.name).collect();
        assert_eq!(
            described.len(),
            FAMILIES.len(),
            "a family is described twice"
        );
        for name in &names {
            assert!(
                described.contains(name.as_str()),
                "{name} has no HELP text in catalogue.rs"
            );
        }
        for f in FAMILIES {
            assert!(
                names.iter().any(|n| n == f.name),
                "{} is not in names.rs",
                f.name
            );
            assert!(
                f.help.len() > 10 && f.help.ends_with('.'),
                "{}: {:?}",
                f.name,
                f.help
            );
            match f.kind {
                Kind::Counter => assert!(f.name.ends_with("_total"), "{}", f.name),
                Kind::Histogram => assert!(f.name.ends_with("_seconds"), "{}", f.name),
                Kind::Gauge => assert!(!f.name.ends_with("_total"), "{}", f.name),
            }
        }
    }

    #[test]
    fn the_rendering_carries_help_and_type_for_every_family() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe();
            for f in FAMILIES {
                match f.kind {
                    Kind::Counter => metrics::counter!(f.name).increment(1),
                    Kind::Gauge => metrics::gauge!(f.name).set(1.0),
                    Kind::Histogram => metrics::histogram!(f.name).record(0.5),
                }
            }
        });
        let text = handle.render();
        for f in FAMILIES {
            let kind = match f.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                // Without buckets the exporter renders histograms as summaries.
                Kind::Histogram => "summary",
            };
            assert!(
                text.contains(&format!("# HELP {} {}", f.name, f.help)),
                "{} has no HELP line:\n{text}",
                f.name
            );
            assert!(
                text.contains(&format!("# TYPE {} {kind}", f.name)),
                "{} has no TYPE line",
                f.name
            );
        }
    }
}
