-- When the agent reported a successful outcome for the target's latest batch. The confirmation
-- deadline counts from here, not from the publish: a batch queued behind others at a large site
-- must not be charged for time it spent waiting for the agent.
ALTER TABLE curtailment_target ADD COLUMN result_at timestamptz;
