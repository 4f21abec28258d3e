-- What the reconciler's heartbeat says about the control loop (issue 10): which term of
-- leadership wrote it (epoch, bumped when a leader starts), when the last pass started and
-- finished, how long it took, how many events were live, and when the leader stopped cleanly.
ALTER TABLE reconciler_heartbeat
    ADD COLUMN epoch bigint NOT NULL DEFAULT 0,
    ADD COLUMN pass_started_at timestamptz,
    ADD COLUMN pass_finished_at timestamptz,
    ADD COLUMN pass_ms double precision,
    ADD COLUMN live_events integer,
    ADD COLUMN stopped_at timestamptz;
