-- no-transaction
-- Query: the claim's check for an older pending row of the same key (outbox::claim). Built
-- concurrently: the outbox of a running system is written all the time.
CREATE INDEX CONCURRENTLY IF NOT EXISTS outbox_pending_by_key ON outbox (ordering_key, created_at, id)
    WHERE published_at IS NULL AND parked_at IS NULL AND ordering_key IS NOT NULL;
