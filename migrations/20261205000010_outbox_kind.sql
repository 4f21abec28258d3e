-- The store publishes nothing (issue 13): an outbox row now holds what happened, as JSON, and
-- the worker's relay decides its subject and wire encoding. Rows written before this migration
-- keep their subject and payload and are published verbatim.
ALTER TABLE outbox ADD COLUMN kind text;
ALTER TABLE outbox ALTER COLUMN subject DROP NOT NULL;
ALTER TABLE outbox ADD CONSTRAINT outbox_kind_or_subject CHECK (kind IS NOT NULL OR subject IS NOT NULL);
