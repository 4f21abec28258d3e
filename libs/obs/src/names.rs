//! Every metric name, defined once: `ebb_<service>_<thing>_<unit>`. Labels are low-cardinality:
//! never a device id.

pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

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

// agent
pub const AGENT_COMMANDS: &str = "ebb_agent_commands_total";
pub const AGENT_MINER_CALL_SECONDS: &str = "ebb_agent_miner_call_seconds";
pub const AGENT_POLL_CYCLE_SECONDS: &str = "ebb_agent_poll_cycle_seconds";
pub const AGENT_MINERS_UNREACHABLE: &str = "ebb_agent_miners_unreachable";
pub const AGENT_INVALID_SAMPLES: &str = "ebb_agent_invalid_samples_total";
/// Command batches terminated as poison (undecodable or out of range).
pub const AGENT_POISON_BATCHES: &str = "ebb_agent_poison_batches_total";
/// Restore limits outside what any miner supports, ignored: the miner was woken without it.
pub const AGENT_RESTORE_LIMITS_IGNORED: &str = "ebb_agent_restore_limits_ignored_total";
/// Devices deferred because the agent ran short of its own resources (back-pressure).
pub const AGENT_STARVED: &str = "ebb_agent_starved_total";
