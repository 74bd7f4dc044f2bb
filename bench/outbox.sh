#!/usr/bin/env bash
# The outbox relay's PostgreSQL work per stats event, in isolation: the cycle
# of migration 20261126000008 (insert a batch of events, read the oldest
# queued, delete them once published) against the cycle before it (the same
# rows with order_id unique, a partial index of unpublished rows and a BRIN
# index of published_at, and each published row marked rather than deleted).
# One PostgreSQL session runs BENCH_OUTBOX_EVENTS (50,000) events in batches
# of 1,000 per shape, three rounds, interleaved; the figure is the session's
# time per event. Result: bench/results/<time>-outbox/outbox.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
events=${BENCH_OUTBOX_EVENTS:-50000}
batch=1000
out=bench/results/$(date -u +%Y%m%dT%H%M%SZ)-outbox
mkdir -p "$out"
bash scripts/services.sh up >/dev/null
db=outbox$(date +%s)
psql() { command psql -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1 -qAt "$@"; }
psql -c "CREATE DATABASE $db"
trap 'psql -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true' EXIT
psql -d "$db" <<'SQL'
CREATE TABLE marked (id BIGSERIAL PRIMARY KEY, topic TEXT NOT NULL, key TEXT NOT NULL, payload TEXT NOT NULL,
  order_id BIGINT UNIQUE, created_at TIMESTAMPTZ NOT NULL DEFAULT now(), published_at TIMESTAMPTZ, traceparent TEXT);
CREATE INDEX marked_unpublished ON marked (id) WHERE published_at IS NULL;
CREATE INDEX marked_published_at ON marked USING brin (published_at);
CREATE TABLE deleted (id BIGSERIAL PRIMARY KEY, topic TEXT NOT NULL, key TEXT NOT NULL, payload TEXT NOT NULL,
  order_id BIGINT, created_at TIMESTAMPTZ NOT NULL DEFAULT now(), published_at TIMESTAMPTZ, traceparent TEXT);
-- One relay cycle per batch, each its own transaction: the order
-- transaction's insert, the relay's read of the oldest queued rows, and its
-- mark (or delete) of what it published.
CREATE PROCEDURE relay(shape text, n int, batches int) LANGUAGE plpgsql AS $$
DECLARE ids bigint[]; base bigint := 0;
BEGIN
  FOR b IN 1..batches LOOP
    EXECUTE format('INSERT INTO %I (topic, key, payload, order_id)
      SELECT ''order.stats.v1'', o::text, repeat(''x'', 300), o FROM generate_series($1, $2) o', shape)
      USING base + 1, base + n;
    base := base + n;
    EXECUTE format('SELECT array_agg(id) FROM (SELECT id FROM %I WHERE published_at IS NULL ORDER BY id LIMIT $1) s', shape)
      INTO ids USING n;
    IF shape = 'marked' THEN
      UPDATE marked SET published_at = now() WHERE id = ANY(ids) AND published_at IS NULL;
    ELSE
      DELETE FROM deleted WHERE id = ANY(ids) AND published_at IS NULL;
    END IF;
    COMMIT;
  END LOOP;
END $$;
SQL
echo "outbox relay cycle, $events events in batches of $batch, one PostgreSQL session (µs per event)" | tee "$out/outbox.txt"
for round in 1 2 3; do
  line="round $round:"
  for shape in marked deleted; do
    psql -d "$db" -c "TRUNCATE $shape" -c "VACUUM $shape"
    start=$(date +%s%N)
    psql -d "$db" -c "CALL relay('$shape', $batch, $((events / batch)))"
    end=$(date +%s%N)
    line="$line $shape $(python3 -c "print(f'{($end - $start) / 1000 / $events:.1f}')")"
  done
  echo "$line" | tee -a "$out/outbox.txt"
done
