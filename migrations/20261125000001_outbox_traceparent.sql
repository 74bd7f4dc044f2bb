-- The trace context of the request that caused each event, so a stats event
-- carries the requester's trace (W3C traceparent) onto order.stats.v1.
ALTER TABLE outbox ADD COLUMN traceparent TEXT;
