//! Every metric name, defined once: `ebb_<service>_<thing>_<unit>`. Labels are low-cardinality:
//! never a device id.

pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Buckets of the time from a Start to `active`: grid programs give 3 to 10 minutes.
pub const START_TO_ACTIVE_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 180.0, 300.0, 600.0,
];

// fleet and events, read from the database by the worker's `gauges` job (one writer, whichever
// service it runs in, so the figures do not depend on which reconciler leads)
/// Power drawn per site by its reachable miners, from their latest telemetry.
pub const SITE_POWER_WATTS: &str = "ebb_site_power_watts";
/// Power shed per site: baseline − latest observed power, over the confirmed targets of live
/// events.
pub const SITE_SHED_WATTS: &str = "ebb_site_shed_watts";
/// Power the live events promised to shed per site: the baseline of their targets there that
/// have not failed.
pub const SITE_PROMISED_SHED_WATTS: &str = "ebb_site_promised_shed_watts";
/// Miners per site by state (hashing, sleeping, unreachable, unknown, maintenance).
pub const SITE_MINERS: &str = "ebb_site_miners";
/// Age of the newest telemetry sample of a site.
pub const SITE_TELEMETRY_AGE_SECONDS: &str = "ebb_site_telemetry_age_seconds";
/// Curtailment events by state.
pub const CURTAILMENT_EVENTS: &str = "ebb_curtailment_events";
/// Targets of live events by state, plus `restore_failed` targets of events that ended within
/// the last 24 hours (miners possibly left asleep).
pub const CURTAILMENT_TARGETS: &str = "ebb_curtailment_targets";
/// Age of the reconciler leader's heartbeat row.
pub const RECONCILER_HEARTBEAT_AGE_SECONDS: &str = "ebb_reconciler_heartbeat_age_seconds";
/// Oldest unpublished outbox row's age.
pub const OUTBOX_LAG_SECONDS: &str = "ebb_worker_outbox_lag_seconds";
/// Outbox rows not yet published (parked rows excluded).
pub const OUTBOX_PENDING: &str = "ebb_worker_outbox_pending";
/// How long one refresh of these gauges took.
pub const GAUGES_REFRESH_SECONDS: &str = "ebb_worker_gauges_refresh_seconds";

// store
pub const STORE_TX_RETRIES: &str = "ebb_store_tx_retries_total";
pub const OUTBOX_PUBLISHED: &str = "ebb_worker_outbox_published_total";
/// Outbox rows parked after failing `relay_max_attempts` times (each is also logged at WARN).
pub const OUTBOX_PARKED: &str = "ebb_worker_outbox_parked_total";
/// Published outbox rows deleted after the retention.
pub const OUTBOX_PRUNED: &str = "ebb_worker_outbox_pruned_total";

// gateway
pub const GATEWAY_REQUESTS: &str = "ebb_gateway_requests_total";
pub const GATEWAY_REQUEST_SECONDS: &str = "ebb_gateway_request_seconds";
/// Requests refused with 429 because their key was over its rate.
pub const GATEWAY_RATE_LIMITED: &str = "ebb_gateway_rate_limited_total";
/// Requests shed with 503 because the gateway was at its limit of requests or key lookups.
pub const GATEWAY_SHED: &str = "ebb_gateway_shed_total";
/// API key lookups that reached PostgreSQL (the rest were answered from the cache).
pub const GATEWAY_KEY_LOOKUPS: &str = "ebb_gateway_key_lookups_total";
/// Starts answered 504 `outcome-unknown` because the planner did not answer in time.
pub const GATEWAY_OUTCOME_UNKNOWN: &str = "ebb_gateway_outcome_unknown_total";

// planner
pub const PLANNER_CANDIDATES_EXCLUDED: &str = "ebb_planner_candidates_excluded_total";
pub const PLANNER_STARTS: &str = "ebb_planner_starts_total";
pub const PLANNER_TELEMETRY_SAMPLES: &str = "ebb_planner_telemetry_samples_total";

// reconciler
pub const RECONCILER_PASS_SECONDS: &str = "ebb_reconciler_pass_seconds";
pub const RECONCILER_PASS_FAILURES: &str = "ebb_reconciler_pass_failures_total";
pub const RECONCILER_EVENT_ERRORS: &str = "ebb_reconciler_event_errors_total";
pub const RECONCILER_RACE_LOST: &str = "ebb_reconciler_race_lost_total";
pub const RECONCILER_BATCHES_PUBLISHED: &str = "ebb_reconciler_batches_published_total";
pub const RECONCILER_TARGET_TRANSITIONS: &str = "ebb_reconciler_target_transitions_total";
pub const RECONCILER_IS_LEADER: &str = "ebb_reconciler_is_leader";
pub const RECONCILER_TELEMETRY_SAMPLES: &str = "ebb_reconciler_telemetry_samples_total";
/// 1 while a site's agent is silent (no results or telemetry), by site.
pub const RECONCILER_SITE_SILENT: &str = "ebb_reconciler_site_silent";
/// Results dropped unapplied, by reason (a body naming another site than its subject).
pub const RECONCILER_RESULTS_REFUSED: &str = "ebb_reconciler_results_refused_total";
/// Time from a Start to `active`, observed when the reconciler activates the event.
pub const CURTAILMENT_START_TO_ACTIVE_SECONDS: &str = "ebb_curtailment_start_to_active_seconds";
/// Panics caught in a reconcile pass outside any one event; the next pass runs.
pub const RECONCILER_PASS_PANICS: &str = "ebb_reconciler_pass_panics_total";
/// Targets that failed, by phase (curtail, restore) and reason.
pub const RECONCILER_TARGET_FAILURES: &str = "ebb_reconciler_target_failures_total";
/// Devices commanded in published batches, by command kind.
pub const RECONCILER_COMMANDS_PUBLISHED: &str = "ebb_reconciler_commands_published_total";
/// Command batches whose publish to JetStream failed (they are published again by a later pass).
pub const RECONCILER_PUBLISH_FAILURES: &str = "ebb_reconciler_publish_failures_total";

// agent
pub const AGENT_COMMANDS: &str = "ebb_agent_commands_total";
pub const AGENT_MINER_CALL_SECONDS: &str = "ebb_agent_miner_call_seconds";
pub const AGENT_POLL_CYCLE_SECONDS: &str = "ebb_agent_poll_cycle_seconds";
/// How far a site's telemetry lags: from a poll cycle's scheduled start to its end.
pub const AGENT_POLL_LAG_SECONDS: &str = "ebb_agent_poll_lag_seconds";
pub const AGENT_MINERS_UNREACHABLE: &str = "ebb_agent_miners_unreachable";
pub const AGENT_INVALID_SAMPLES: &str = "ebb_agent_invalid_samples_total";
/// Command batches terminated as poison (undecodable or out of range).
pub const AGENT_POISON_BATCHES: &str = "ebb_agent_poison_batches_total";
/// Restore limits outside what any miner supports, ignored: the miner was woken without it.
pub const AGENT_RESTORE_LIMITS_IGNORED: &str = "ebb_agent_restore_limits_ignored_total";
/// Devices deferred because the agent ran short of its own resources (back-pressure).
pub const AGENT_STARVED: &str = "ebb_agent_starved_total";
/// How late the agent's runtime wakes a timer: its own CPU overload, never a miner's slowness.
pub const AGENT_RUNTIME_LAG_SECONDS: &str = "ebb_agent_runtime_lag_seconds";
/// Miners the process's agents may drive at once now (their adaptive limits, summed).
pub const AGENT_IN_FLIGHT_LIMIT: &str = "ebb_agent_in_flight_limit";
