#!/usr/bin/env bash
# PostgreSQL's own work for paid orders, with nothing else running: the
# statements an order batch and the outbox relay run (the replay lookup, the
# users' and products' locks, order ids, the order, its items, the balance,
# its history, the stock, the stats event, the stored result; then the
# relay's read and delete), on the tables `stampede migrate` makes, for
# BENCH_ORDER_ROWS (50,000) orders of 1-3 products in batches of 1,000 from
# 20,000 users, in one session. The figure is the session's time per order
# for each statement, from clock_timestamp() around it, and in all.
# Result: bench/results/<time>-order-rows/order-rows.txt, or in the folder
# BENCH_ORDER_ROWS_OUT names (bench/run.sh: the sitting's).
set -euo pipefail
cd "$(dirname "$0")/.."
batch=1000
orders=$(( ${BENCH_ORDER_ROWS:-50000} / batch * batch ))
(( orders > 0 )) || { echo "BENCH_ORDER_ROWS must be at least $batch" >&2; exit 1; }
out=${BENCH_ORDER_ROWS_OUT:-bench/results/$(date -u +%Y%m%dT%H%M%SZ)-order-rows}
mkdir -p "$out"
bash scripts/services.sh up >/dev/null
cargo build --release --locked
db=orderrows$(date +%s)
export STAMPEDE_DATABASE__URL=postgres://postgres@127.0.0.1:5432/$db
psql() { command psql -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1 -qAt "$@"; }
trap 'psql -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true' EXIT
target/release/stampede migrate >/dev/null
psql -d "$db" <<'SQL'
INSERT INTO users (id, balance) SELECT g, 1000000000 FROM generate_series(1, 20000) g;
INSERT INTO products (id, name, price, stock) SELECT g, 'p' || g, 1000, 100000000 FROM generate_series(1, 100) g;
ANALYZE;
CREATE TABLE timings (step text PRIMARY KEY, seconds float8 NOT NULL DEFAULT 0);
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
  INSERT INTO timings SELECT step_names[i], spent[i] FROM generate_series(1, 15) i;
  COMMIT;
END $$;
SQL
psql -d "$db" -c "CALL order_batches($batch, $((orders / batch)))"
{
  echo "PostgreSQL per paid order, one session, $orders orders in batches of $batch (µs per order)"
  psql -d "$db" -F ' ' -c "SELECT step || ':', round((seconds * 1e6 / $orders)::numeric, 1) FROM timings ORDER BY ctid"
  psql -d "$db" -F ' ' -c "SELECT 'in all:', round((sum(seconds) * 1e6 / $orders)::numeric, 1) FROM timings"
} | tee "$out/order-rows.txt"
