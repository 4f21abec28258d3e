-- The outbox relay claims rows with a lease instead of holding a transaction (and row locks)
-- across its publishes (issue 7): a claim stamps claimed_until and its claim_token, publishing
-- happens outside any transaction, and a second statement marks what was published. A relay that
-- dies leaves its rows to the next claim once the lease runs out. attempts counts claims; a row
-- that keeps failing is parked (parked_at) with its last error and no longer claimed, so it never
-- holds up the rows behind it. An operator re-queues a parked row by clearing parked_at and
-- attempts. Adding columns with constant defaults rewrites nothing.
ALTER TABLE outbox ADD COLUMN attempts integer NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN claimed_until timestamptz;
ALTER TABLE outbox ADD COLUMN claim_token uuid;
ALTER TABLE outbox ADD COLUMN parked_at timestamptz;
ALTER TABLE outbox ADD COLUMN last_error text;
