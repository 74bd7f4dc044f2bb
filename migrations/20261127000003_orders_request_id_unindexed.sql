-- A paid order's row no longer carries a unique index on its request id,
-- for the reason a won coupon's row does not (`user_coupons_request_id_
-- unindexed`): the order commits in one transaction with the request's
-- stored result in `processed_requests`, whose primary key is the request
-- id. PostgreSQL alone inserted an order batch's rows in 3.7-4.2 µs per
-- order without the index against 6.0-8.3 with it. Which requests paid
-- (redeliveries finishing their holds) is read from the stored results.
ALTER TABLE orders DROP CONSTRAINT IF EXISTS orders_request_id_key;
