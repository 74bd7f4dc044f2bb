-- bench/pg-rows.sh: PostgreSQL's own work per request, the statements the
-- workers run, timed one by one in a single session. psql variables: users,
-- stock (the drop's coupon), products.
INSERT INTO users (id, balance) SELECT g, 1000000000 FROM generate_series(1, :users) g;
INSERT INTO products (id, name, price, stock) SELECT g, 'p' || g, 1000, 100000000 FROM generate_series(1, :products) g;
INSERT INTO coupons (id, name, discount_kind, discount_value, total_quantity, expires_at)
  VALUES (1, 'drop', 'fixed', 1000, :stock, now() + interval '1 day');
ANALYZE;
CREATE TABLE timings (run text NOT NULL, ord int NOT NULL, step text NOT NULL, seconds float8 NOT NULL,
  PRIMARY KEY (run, ord));

-- The statements of one coupon-drop batch (src/workers/coupon.rs), each its
-- own transaction like the worker's: the replay lookup and the missing-users
-- probe (outside the batch's transaction), the coupon, then in one
-- transaction the coupon's lock, the issued coupons, the issued count and
-- every request's stored result.
CREATE PROCEDURE drop_batches(n int, batches int, users int) LANGUAGE plpgsql AS $$
DECLARE
  t timestamptz; base bigint := 0; redis_left bigint;
  rids text[]; uids bigint[]; winners int;
  step_names text[] := ARRAY['replay lookup', 'missing users', 'coupon', 'lock coupon',
    'issued coupons', 'issued count', 'stored results', 'commit'];
  spent float8[] := array_fill(0::float8, ARRAY[8]);
  k int;
BEGIN
  SET LOCAL plan_cache_mode = force_custom_plan;
  SET LOCAL random_page_cost = 1.1;
  -- Redis's counter: it decides the winners, PostgreSQL records them.
  SELECT total_quantity - issued INTO redis_left FROM coupons WHERE id = 1;
  FOR b IN 1..batches LOOP
    rids := ARRAY(SELECT 'lg-' || md5(random()::text) || '-' || g FROM generate_series(base + 1, base + n) g);
    uids := ARRAY(SELECT (g * 7919) % users + 1 FROM generate_series(base + 1, base + n) g);
    base := base + n;
    k := 0;
    t := clock_timestamp();
    PERFORM p.request_id, p.kind, p.user_id, p.result
      FROM unnest(rids) AS q(id) JOIN processed_requests p ON p.request_id = q.id;
    k := k + 1; spent[k] := spent[k] + extract(epoch FROM clock_timestamp() - t); t := clock_timestamp();
    PERFORM q.id FROM unnest(ARRAY(SELECT DISTINCT x FROM unnest(uids) x ORDER BY 1)) AS q(id)
      WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.id = q.id);
    k := k + 1; spent[k] := spent[k] + extract(epoch FROM clock_timestamp() - t); t := clock_timestamp();
    PERFORM id, total_quantity, issued, expires_at FROM coupons WHERE id = 1;
    k := k + 1; spent[k] := spent[k] + extract(epoch FROM clock_timestamp() - t); t := clock_timestamp();
    winners := least(n, redis_left)::int;
    redis_left := redis_left - winners;
    IF winners > 0 THEN
      PERFORM id, total_quantity - issued FROM coupons WHERE id = ANY(ARRAY[1::int8]) ORDER BY id FOR NO KEY UPDATE;
    END IF;
    k := k + 1; spent[k] := spent[k] + extract(epoch FROM clock_timestamp() - t); t := clock_timestamp();
    IF winners > 0 THEN
      INSERT INTO user_coupons (user_id, coupon_id, request_id)
        SELECT u, 1, r FROM unnest(uids[1:winners], rids[1:winners]) AS v(u, r)
        ON CONFLICT DO NOTHING;
    END IF;
    k := k + 1; spent[k] := spent[k] + extract(epoch FROM clock_timestamp() - t); t := clock_timestamp();
    IF winners > 0 THEN
      UPDATE coupons SET issued = issued + winners WHERE id = 1;
    END IF;
    k := k + 1; spent[k] := spent[k] + extract(epoch FROM clock_timestamp() - t); t := clock_timestamp();
    INSERT INTO processed_requests (request_id, kind, user_id, status, error_code, result)
      SELECT r, 'coupon', u,
             CASE WHEN i <= winners THEN 'succeeded' ELSE 'rejected' END,
             CASE WHEN i <= winners THEN NULL ELSE 'coupon_sold_out' END,
             repeat('r', 180)
      FROM unnest(rids, uids) WITH ORDINALITY AS v(r, u, i);
    k := k + 1; spent[k] := spent[k] + extract(epoch FROM clock_timestamp() - t); t := clock_timestamp();
    COMMIT;
    SET LOCAL plan_cache_mode = force_custom_plan;
    SET LOCAL random_page_cost = 1.1;
    k := k + 1; spent[k] := spent[k] + extract(epoch FROM clock_timestamp() - t);
  END LOOP;
  INSERT INTO timings SELECT 'drop', i, step_names[i], spent[i] FROM generate_series(1, 8) i;
  COMMIT;
END $$;

-- One order batch and one relay cycle per round, each its own transaction,
-- with the workers' planner settings (src/store/mod.rs).
CREATE PROCEDURE order_batches(n int, batches int) LANGUAGE plpgsql AS $$
DECLARE
  t timestamptz; base bigint := 0;
  rids text[]; uids bigint[]; oids bigint[]; pids bigint[]; ids bigint[];
  step_names text[] := ARRAY['replay lookup', 'lock users', 'lock products', 'order ids', 'order',
    'items', 'balances', 'history', 'stock', 'stats event', 'stored result', 'commit',
    'relay: read queued', 'relay: delete published', 'relay: commit'];
  spent float8[] := array_fill(0::float8, ARRAY[15]);
  k int;
BEGIN
  SET LOCAL plan_cache_mode = force_custom_plan;
  SET LOCAL random_page_cost = 1.1;
  FOR b IN 1..batches LOOP
    rids := ARRAY(SELECT 'lg-' || md5(random()::text) || '-' || g FROM generate_series(base + 1, base + n) g);
    uids := ARRAY(SELECT (random() * 19999)::int8 + 1 FROM generate_series(1, n));
    base := base + n;
    k := 0;
    t := clock_timestamp();
    PERFORM p.request_id, p.kind, p.user_id, p.result
      FROM unnest(rids) AS q(id) JOIN processed_requests p ON p.request_id = q.id;
    k := k + 1; spent[k] := spent[k] + extract(epoch FROM clock_timestamp() - t); t := clock_timestamp();
    PERFORM u.id, u.balance FROM unnest(ARRAY(SELECT DISTINCT x FROM unnest(uids) x ORDER BY 1)) AS q(id)
      JOIN users u ON u.id = q.id ORDER BY u.id FOR NO KEY UPDATE OF u;
    k := k + 1; spent[k] := spent[k] + extract(epoch FROM clock_timestamp() - t); t := clock_timestamp();
    pids := ARRAY(SELECT g FROM generate_series(1, 100) g);
    PERFORM id, price, stock FROM products WHERE id = ANY(pids) ORDER BY id FOR NO KEY UPDATE;
    k := k + 1; spent[k] := spent[k] + extract(epoch FROM clock_timestamp() - t); t := clock_timestamp();
    oids := ARRAY(SELECT nextval('orders_id_seq') FROM generate_series(1, n));
    k := k + 1; spent[k] := spent[k] + extract(epoch FROM clock_timestamp() - t); t := clock_timestamp();
    INSERT INTO orders (id, request_id, user_id, status, total_amount, discount_amount, paid_amount, coupon_id, coupon_applied, ordered_at)
      SELECT o, r, u, 'paid', 3000, 0, 3000, NULL, false, now() FROM unnest(oids, rids, uids) AS v(o, r, u);
    k := k + 1; spent[k] := spent[k] + extract(epoch FROM clock_timestamp() - t); t := clock_timestamp();
    INSERT INTO order_items (order_id, product_id, quantity, unit_price)
      SELECT o, 1 + (o * 31 + j * 17) % 100, 1 + (o + j) % 2, 1000
      FROM unnest(oids) AS o, generate_series(0, 2) AS j WHERE j <= o % 3;
    k := k + 1; spent[k] := spent[k] + extract(epoch FROM clock_timestamp() - t); t := clock_timestamp();
    UPDATE users u SET balance = u.balance - v.c * 3000, updated_at = now()
      FROM (SELECT x AS id, count(*) AS c FROM unnest(uids) x GROUP BY x) AS v WHERE u.id = v.id;
    k := k + 1; spent[k] := spent[k] + extract(epoch FROM clock_timestamp() - t); t := clock_timestamp();
    INSERT INTO balance_history (user_id, kind, amount, balance_after, request_id, order_id)
      SELECT u, 'payment', -3000, 1000000, r, o FROM unnest(uids, rids, oids) AS v(u, r, o);
    k := k + 1; spent[k] := spent[k] + extract(epoch FROM clock_timestamp() - t); t := clock_timestamp();
    UPDATE products p SET stock = p.stock - 1 WHERE p.id = ANY(pids);
    k := k + 1; spent[k] := spent[k] + extract(epoch FROM clock_timestamp() - t); t := clock_timestamp();
    INSERT INTO outbox (topic, key, payload, order_id, traceparent)
      SELECT 'order.stats.v1', o::text, repeat('s', 260), o, '00-' || md5(o::text) || '-' || left(md5(r), 16) || '-01'
      FROM unnest(oids, rids) AS v(o, r);
    PERFORM pg_notify('stampede_outbox', '');
    k := k + 1; spent[k] := spent[k] + extract(epoch FROM clock_timestamp() - t); t := clock_timestamp();
    INSERT INTO processed_requests (request_id, kind, user_id, status, error_code, result)
      SELECT r, 'order', u, 'succeeded', NULL, repeat('r', 320) FROM unnest(rids, uids) AS v(r, u);
    k := k + 1; spent[k] := spent[k] + extract(epoch FROM clock_timestamp() - t); t := clock_timestamp();
    COMMIT;
    SET LOCAL plan_cache_mode = force_custom_plan;
    SET LOCAL random_page_cost = 1.1;
    k := k + 1; spent[k] := spent[k] + extract(epoch FROM clock_timestamp() - t); t := clock_timestamp();
    ids := ARRAY(SELECT id FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT n);
    k := k + 1; spent[k] := spent[k] + extract(epoch FROM clock_timestamp() - t); t := clock_timestamp();
    DELETE FROM outbox WHERE id = ANY(ids) AND published_at IS NULL;
    INSERT INTO outbox_relay_position (topic, partition, next_offset) VALUES ('order.stats.v1', 0, base)
      ON CONFLICT (topic, partition) DO UPDATE SET next_offset = GREATEST(outbox_relay_position.next_offset, EXCLUDED.next_offset);
    k := k + 1; spent[k] := spent[k] + extract(epoch FROM clock_timestamp() - t); t := clock_timestamp();
    COMMIT;
    SET LOCAL plan_cache_mode = force_custom_plan;
    SET LOCAL random_page_cost = 1.1;
    k := k + 1; spent[k] := spent[k] + extract(epoch FROM clock_timestamp() - t);
  END LOOP;
  INSERT INTO timings SELECT 'orders', i, step_names[i], spent[i] FROM generate_series(1, 15) i;
  COMMIT;
END $$;
