-- The retention sweeper deletes by age: BRIN indexes (rows arrive in time
-- order) find old rows without a full scan and cost next to nothing to keep.
CREATE INDEX processed_requests_processed_at ON processed_requests USING brin (processed_at);
CREATE INDEX outbox_published_at ON outbox USING brin (published_at);
