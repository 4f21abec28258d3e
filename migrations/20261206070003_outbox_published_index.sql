-- no-transaction
-- Query: the relay's pruning of rows published longer ago than the retention, oldest first, in
-- bounded batches (outbox::prune).
CREATE INDEX CONCURRENTLY IF NOT EXISTS outbox_published ON outbox (published_at)
    WHERE published_at IS NOT NULL;
