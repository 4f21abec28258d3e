-- no-transaction
-- Replaced by outbox_claimable.
DROP INDEX CONCURRENTLY IF EXISTS outbox_unpublished;
