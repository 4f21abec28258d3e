-- W3C trace context (issue 10): the `traceparent` of the request that started an event, so the
-- reconciler's dispatch and confirmation spans and the agents' command spans join that request's
-- trace, and of the change an outbox row announces, so its publish on the event feed joins it too.
-- NULL when traces were not exported (or for rows written before this column).
ALTER TABLE curtailment_event ADD COLUMN traceparent text;
ALTER TABLE outbox ADD COLUMN traceparent text;
