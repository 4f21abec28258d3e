-- no-transaction
-- Query: an event's own transitions after a given id (GET /v1/curtailments/{id}/events polls
-- it), without walking its targets' transitions, which are 100,000 rows for a big event.
CREATE INDEX CONCURRENTLY IF NOT EXISTS event_transition_event_only ON event_transition (event_id, id)
    WHERE device_id IS NULL;
