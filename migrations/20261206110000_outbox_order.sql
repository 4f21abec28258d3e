-- The feed is in order per curtailment (issue 8): an outbox row carries the key it is ordered
-- by (the event's id for its transitions), and only the oldest unpublished, unparked row of a
-- key may be claimed, so a row that failed and waits for its retry is never overtaken by the
-- ones behind it. Rows without a key are not ordered against each other. A nullable column
-- without a default rewrites nothing.
ALTER TABLE outbox ADD COLUMN ordering_key uuid;
