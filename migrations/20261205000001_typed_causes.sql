-- Typed causes: why an event stopped and why a target last spent an attempt, as closed sets the
-- reconciler branches on (ebb_domain::StopCause, ebb_domain::SpendReason). The free text beside
-- them (stop_reason, last_error) stays for people to read and is never compared by code.

ALTER TABLE curtailment_event ADD COLUMN stop_cause text
    CHECK (stop_cause IN ('requested', 'max_duration', 'all_failed'));

-- Before this column the reconciler recorded its own stops with these exact texts; any other
-- text came with a Stop request.
UPDATE curtailment_event SET stop_cause = CASE stop_reason
        WHEN 'every target failed' THEN 'all_failed'
        WHEN 'max_duration_s elapsed' THEN 'max_duration'
        ELSE 'requested' END
    WHERE stop_reason IS NOT NULL
       OR state IN ('restoring', 'completed', 'completed_with_failures');

-- An event that restores knows why: restore's end (failed for all_failed) depends on it. Only
-- restoring leads to completed and completed_with_failures; failed and cancelled are also reached
-- by an admin terminate, which is not a stop.
ALTER TABLE curtailment_event ADD CONSTRAINT curtailment_event_stop_cause_known
    CHECK (state NOT IN ('restoring', 'completed', 'completed_with_failures') OR stop_cause IS NOT NULL);

ALTER TABLE curtailment_target ADD COLUMN last_spend_reason text
    CHECK (last_spend_reason IN ('command_failed', 'not_confirmed', 'no_result', 'drifted',
                                 'device_vanished', 'stamped_without_batch'));

-- The texts the reconciler wrote into last_error for each reason; anything else stays NULL.
UPDATE curtailment_target SET last_spend_reason = CASE last_error
        WHEN 'command outcome was not success' THEN 'command_failed'
        WHEN 'not confirmed before the deadline' THEN 'not_confirmed'
        WHEN 'no result from the agent before the deadline' THEN 'no_result'
        WHEN 'drifted' THEN 'drifted'
        WHEN 'device vanished' THEN 'device_vanished'
        WHEN 'stamped without a batch' THEN 'stamped_without_batch' END
    WHERE last_error IS NOT NULL;
