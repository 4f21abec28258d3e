-- Per-target backoff between attempts (issue 12, item 9): after a spent attempt, the reconciler
-- does not send the target again before this time. NULL: no wait. Read with the target row by
-- the reconciler's pass (no index: it is never searched by).
ALTER TABLE curtailment_target ADD COLUMN next_attempt_at timestamptz;
