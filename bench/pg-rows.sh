#!/usr/bin/env bash
# PostgreSQL's own work per request, with nothing else running: the
# statements a coupon-drop batch and an order batch (with the outbox relay's
# cycle) run, on the tables `stampede migrate` makes, timed one by one with
# clock_timestamp() in a single session (bench/pg-rows.sql). The drop: the
# sitting's requests and stock, one user each; orders: 1-3 of 100 products
# from 20,000 users. Batches of BENCH_BATCH, as the sitting's workers take
# them. Each figure is µs per request; "in all" is their sum. Next to what
# PostgreSQL spent in a sitting, it says how much of that the rows alone
# cost, and so what is left for the other processes.
# Result: drop-rows.txt and order-rows.txt in bench/results/<time>-pg-rows/,
# or in the folder BENCH_PG_ROWS_OUT names (bench/run.sh: the sitting's).
#
# Environment: BENCH_REQUESTS (200000), BENCH_STOCK (10000), BENCH_ORDERS
# (50000), BENCH_BATCH (2000).
set -euo pipefail
cd "$(dirname "$0")/.."
batch=${BENCH_BATCH:-2000}
requests=$(( ${BENCH_REQUESTS:-200000} / batch * batch ))
orders=$(( ${BENCH_ORDERS:-50000} / batch * batch ))
stock=${BENCH_STOCK:-10000}
(( requests > 0 && orders > 0 )) || { echo "BENCH_REQUESTS and BENCH_ORDERS must be at least BENCH_BATCH ($batch)" >&2; exit 1; }
out=${BENCH_PG_ROWS_OUT:-bench/results/$(date -u +%Y%m%dT%H%M%SZ)-pg-rows}
mkdir -p "$out"
bash scripts/services.sh up >/dev/null
cargo build --release --locked
db=pgrows$(date +%s)
export STAMPEDE_DATABASE__URL=postgres://postgres@127.0.0.1:5432/$db
psql() { command psql -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1 -qAt "$@"; }
trap 'psql -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true' EXIT
target/release/stampede migrate >/dev/null
psql -d "$db" -v users="$requests" -v stock="$stock" -v products=100 -f bench/pg-rows.sql
report() { # run, requests, file, title
  {
    echo "$4"
    psql -d "$db" -F ' ' -c "SELECT step || ':', round((seconds * 1e6 / $2)::numeric, 1) FROM timings WHERE run = '$1' ORDER BY ord"
    psql -d "$db" -F ' ' -c "SELECT 'in all:', round((sum(seconds) * 1e6 / $2)::numeric, 1) FROM timings WHERE run = '$1'"
  } | tee "$out/$3"
}
psql -d "$db" -c "CALL drop_batches($batch, $((requests / batch)), $requests)"
report drop "$requests" drop-rows.txt "PostgreSQL per coupon-drop request, one session, $requests requests for $stock coupons in batches of $batch (µs per request)"
psql -d "$db" -c "CALL order_batches($batch, $((orders / batch)))"
report orders "$orders" order-rows.txt "PostgreSQL per paid order, one session, $orders orders in batches of $batch (µs per order)"
