-- Curtailment events, their targets, and the logs around them (DESIGN §4, §5).

CREATE TABLE curtailment_event (
    id uuid PRIMARY KEY,
    org_id uuid NOT NULL REFERENCES org (id),
    state text NOT NULL CHECK (state IN ('pending', 'active', 'restoring', 'completed',
        'completed_with_failures', 'cancelled', 'failed')),
    mode text NOT NULL CHECK (mode IN ('kw', 'percent', 'full', 'power_target')),
    mode_params jsonb NOT NULL,
    -- The command every target receives (from the mode), as the bus encodes it.
    command jsonb NOT NULL,
    scope jsonb NOT NULL,
    priority integer NOT NULL DEFAULT 0,
    reason text NOT NULL CHECK (length(btrim(reason)) > 0),
    target_kw double precision,
    -- Selection snapshot: counts, expected shed, skipped aggregate by reason, per-site shares.
    selection jsonb NOT NULL,
    restore_batch_size integer NOT NULL CHECK (restore_batch_size > 0),
    restore_batch_interval_s integer NOT NULL CHECK (restore_batch_interval_s >= 0),
    -- NULL only when an admin allowed an unbounded event.
    max_duration_s integer CHECK (max_duration_s > 0),
    idempotency_key text,
    external_source text,
    external_reference text,
    created_by uuid,
    source_actor text NOT NULL CHECK (source_actor IN ('user', 'api_key', 'scheduler', 'policy')),
    stop_reason text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    activated_at timestamptz,
    restore_started_at timestamptz,
    last_restore_batch_at timestamptz,
    ended_at timestamptz
);
-- Start is idempotent on these (DESIGN §5.8).
CREATE UNIQUE INDEX curtailment_event_idempotency ON curtailment_event (org_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE UNIQUE INDEX curtailment_event_external ON curtailment_event (org_id, external_source, external_reference)
    WHERE external_source IS NOT NULL AND external_reference IS NOT NULL;
-- Query: GET /v1/curtailments, newest first, keyset on id (UUIDv7 is time-ordered).
CREATE INDEX curtailment_event_org_list ON curtailment_event (org_id, id DESC);
-- Query: the reconciler's scan of live events.
CREATE INDEX curtailment_event_live ON curtailment_event (state)
    WHERE state IN ('pending', 'active', 'restoring');

CREATE TABLE curtailment_target (
    event_id uuid NOT NULL REFERENCES curtailment_event (id),
    device_id uuid NOT NULL REFERENCES device (id),
    org_id uuid NOT NULL,
    site_id uuid NOT NULL REFERENCES site (id),
    state text NOT NULL CHECK (state IN ('pending', 'dispatching', 'dispatched', 'confirmed', 'drifted',
        'failed', 'restore_pending', 'restore_dispatching', 'restore_dispatched', 'restored', 'restore_failed')),
    baseline_power_w double precision NOT NULL,
    last_power_w double precision,
    -- Attempts in the current episode; reset when the target (re)confirms (DESIGN §5.4).
    retry_count integer NOT NULL DEFAULT 0,
    -- Lifetime count of drifts, never reset.
    flap_count integer NOT NULL DEFAULT 0,
    last_error text,
    -- Set when a batch is stamped; non-NULL means the miner may have been touched and must be restored.
    last_batch_id uuid,
    -- The power limit the miner had before the curtail, restored on uncurtail.
    prior_power_limit_w double precision,
    dispatched_at timestamptz,
    confirmed_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, device_id)
);
-- A device is in at most one non-terminal event: two concurrent Starts cannot claim the same miner.
CREATE UNIQUE INDEX curtailment_target_device_exclusive ON curtailment_target (device_id)
    WHERE state NOT IN ('failed', 'restored', 'restore_failed');
-- Query: the reconciler loads one event's targets by state; the result handler finds by batch.
CREATE INDEX curtailment_target_event_state ON curtailment_target (event_id, state);
CREATE INDEX curtailment_target_batch ON curtailment_target (last_batch_id) WHERE last_batch_id IS NOT NULL;

-- Append-only log of every event and target state change.
CREATE TABLE event_transition (
    id bigserial PRIMARY KEY,
    org_id uuid NOT NULL,
    event_id uuid NOT NULL REFERENCES curtailment_event (id),
    device_id uuid,
    from_state text,
    to_state text NOT NULL,
    actor text NOT NULL,
    reason text,
    at timestamptz NOT NULL DEFAULT now()
);
-- Query: an event's history.
CREATE INDEX event_transition_event ON event_transition (event_id, id);

CREATE TABLE audit_log (
    id bigserial PRIMARY KEY,
    org_id uuid NOT NULL,
    actor_kind text NOT NULL,
    actor_id uuid,
    action text NOT NULL,
    subject_id uuid,
    metadata jsonb NOT NULL DEFAULT '{}',
    at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_org ON audit_log (org_id, id DESC);

-- Messages to publish, written in the same transaction as the change they announce.
CREATE TABLE outbox (
    id uuid PRIMARY KEY,
    org_id uuid,
    subject text NOT NULL,
    payload bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
-- Query: the relay's scan of unpublished rows, oldest first.
CREATE INDEX outbox_unpublished ON outbox (created_at) WHERE published_at IS NULL;

-- Reconciler liveness, readable by an alert: the leader bumps seq and beat_at on every pass.
CREATE TABLE reconciler_heartbeat (
    name text PRIMARY KEY,
    holder text NOT NULL,
    seq bigint NOT NULL,
    beat_at timestamptz NOT NULL
);
