-- no-transaction
-- Query: the relay's claim, oldest first, of rows neither published nor parked
-- (outbox::claim). Replaces outbox_unpublished, which still listed parked rows. Built
-- concurrently: the outbox of a running system is written all the time.
CREATE INDEX CONCURRENTLY IF NOT EXISTS outbox_claimable ON outbox (created_at, id)
    WHERE published_at IS NULL AND parked_at IS NULL;
