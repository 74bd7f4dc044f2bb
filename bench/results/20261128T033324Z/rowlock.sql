\set uid random(1, 1000000000)
BEGIN;
SELECT issued < total_quantity AS open FROM bench_coupon WHERE id = 1 FOR UPDATE \gset
\if :open
INSERT INTO bench_issue (user_id, coupon_id) VALUES (:uid, 1) ON CONFLICT DO NOTHING;
UPDATE bench_coupon SET issued = issued + 1 WHERE id = 1;
\endif
COMMIT;
