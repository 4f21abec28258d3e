-- Settlement rating (issue 8, ADR 0012): the facts a rater reads (the intervals during which each
-- target was confirmed), the prices it applies, and what it writes (rated_usage).

-- The currency an org's prices and amounts are in (ISO 4217).
ALTER TABLE org ADD COLUMN currency text NOT NULL DEFAULT 'USD' CHECK (currency ~ '^[A-Z]{3}$');

-- One row per stretch of time a target spent `confirmed`: opened by the statement that moves it
-- into `confirmed`, closed by the one that moves it out (store::events::transition_targets and
-- sweep_targets_for_restore write it as a CTE of the same statement, never a statement per
-- target). Powers are the device's latest sample (device_state.power_w) when it entered and when
-- it left: the rater takes their mean as the power observed during the interval (ADR 0012).
CREATE TABLE curtailment_interval (
    id bigserial PRIMARY KEY,
    org_id uuid NOT NULL,
    event_id uuid NOT NULL REFERENCES curtailment_event (id),
    device_id uuid NOT NULL,
    site_id uuid NOT NULL,
    started_at timestamptz NOT NULL,
    -- NULL while the target is still confirmed.
    ended_at timestamptz CHECK (ended_at >= started_at),
    -- curtailment_target.baseline_power_w: what the miner drew before the event.
    baseline_power_w double precision NOT NULL,
    -- NULL when the device had no power reading at that moment (never taken as zero).
    start_power_w double precision CHECK (start_power_w >= 0),
    end_power_w double precision CHECK (end_power_w >= 0)
);
-- At most one open interval per target. Query: closing the open intervals of a batch's moved
-- devices (device_id = ANY(the batch) AND event_id = $1): the device leads, so the batch is
-- probed in the index whatever the planner guesses of the batch's size.
CREATE UNIQUE INDEX curtailment_interval_open ON curtailment_interval (device_id, event_id)
    WHERE ended_at IS NULL;
-- Query: the rater's read of an org's intervals that overlap its run
-- (COALESCE(ended_at, 'infinity') > since AND started_at < until): recent runs read recent rows.
CREATE INDEX curtailment_interval_rating ON curtailment_interval
    (org_id, (COALESCE(ended_at, 'infinity'::timestamptz)));

-- Prices per org and settlement window, in the org's currency per MWh, as integer micro-units
-- (6 decimal places: no floats in money). A price holds from window_start until the next one,
-- for at most an hour.
CREATE TABLE price (
    org_id uuid NOT NULL REFERENCES org (id),
    window_start timestamptz NOT NULL,
    price_micros_per_mwh bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, window_start)
);

-- The rater's output: one row per org, site, event and settlement window.
CREATE TABLE rated_usage (
    org_id uuid NOT NULL REFERENCES org (id),
    site_id uuid NOT NULL REFERENCES site (id),
    event_id uuid NOT NULL REFERENCES curtailment_event (id),
    window_start timestamptz NOT NULL,
    window_end timestamptz NOT NULL CHECK (window_end > window_start),
    curtailed_kwh numeric(24, 6) NOT NULL CHECK (curtailed_kwh >= 0),
    amount_micros bigint NOT NULL,
    currency text NOT NULL,
    -- The window had not closed, or a target was still confirmed in it, when it was rated.
    provisional boolean NOT NULL,
    rated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, site_id, event_id, window_start)
);
-- Query: the rater's reconcile DELETE (org_id = $1 AND window_start >= $2 AND window_start < $3
-- AND NOT EXISTS (the run's rows)), and GET /v1/usage's range read. The primary key leads with
-- org_id but window_start trails site and event, so it cannot serve the range (002's finding).
CREATE INDEX rated_usage_reconcile ON rated_usage (org_id, window_start);
