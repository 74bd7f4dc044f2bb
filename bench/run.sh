#!/usr/bin/env bash
# One benchmark run on this machine, every number from the same run:
#   (a) the raw Kafka limit: consume → produce passthrough of same-size messages,
#       at full speed and offered at 20,000/s (the transport's own latency)
#   (b) Redis running the coupon Lua script (redis-benchmark)
#   (c) the classic design: a PostgreSQL row-lock issue (SELECT … FOR UPDATE + insert, pgbench)
#   (d) stampede: a coupon drop (200,000 requests, 10,000 stock) and orders, with worker peak memory;
#       and PostgreSQL alone running the statements of the same drop and orders (bench/pg-rows.sh)
#   (e) scale-out: the same drop with 1, 2 and 4 worker processes in one group
#   (f) the HTTP path: a drop through `stampede gateway` against the same drop
#       straight to Kafka, with the gateway's CPU per request (loadgen's HTTP
#       client over HTTP/1.1 and HTTP/2; wrk from 256 and from 1,024
#       connections); the gateway's intake alone under wrk (HTTP/1.1) and
#       under h2load (HTTP/2), and the HTTP exchange alone (GET /healthz);
#       the drop straight to Kafka offered at half its own rate (the HTTP
#       target's pace);
#       the drop straight to Kafka offered at the HTTP drop's rate
#   (g) worker memory under a backlog four times larger: drops of 2N then 8N
#       requests straight to Kafka at full speed, each drop's own peak
#   (h) idle: `stampede run` (gateway and every worker) and the broker with no
#       traffic, their CPU over BENCH_IDLE_SECS (30) once stampede is ready
#       (bench/idle.sh)
#   (i) the worker's CPU per request against the code this work began with,
#       in interleaved pairs of a drop and of orders (bench/baseline.sh)
#   CPU per request of the worker, broker, PostgreSQL, Redis and load generator
#   over the drop, the orders run, both runs at 20,000/s and the HTTP path's
#   runs (cpu.txt), and the broker's split by thread: its request threads,
#   the JVM's compiler, its GC (bench/broker_threads.py)
# Results: bench/results/<time>/ (JSON + HTML per run, summary.md, index.html
# with every run side by side); ratios printed at the end.
#
# Environment: BENCH_REQUESTS (200000), BENCH_STOCK (10000), BENCH_ORDERS (50000),
# BENCH_HTTP_REQUESTS (50000),
# BENCH_SCALE ("1 2 4"), BENCH_BATCH (2000).
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${BENCH_REQUESTS:-200000}
stock=${BENCH_STOCK:-10000}
orders=${BENCH_ORDERS:-50000}
http_requests=${BENCH_HTTP_REQUESTS:-50000}
scale=${BENCH_SCALE:-1 2 4}
stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=bench/results/$stamp
mkdir -p "$out"

command -v pgbench >/dev/null || { apt-get update -qq && apt-get install -y -qq postgresql-contrib >/dev/null; }
command -v redis-benchmark >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-tools >/dev/null; }
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
command -v h2load >/dev/null || { apt-get update -qq && apt-get install -y -qq nghttp2-client >/dev/null; }
export STAMPEDE_WORKER__BATCH_SIZE=${BENCH_BATCH:-2000}
source bench/common.sh bench
kafka_version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' scripts/kafka/pom.xml)
echo "Apache Kafka $kafka_version (KRaft, one combined broker+controller on ${STAMPEDE_KAFKA__BROKERS:-127.0.0.1:9092}), PostgreSQL $(psql -h 127.0.0.1 -U postgres -Atc 'show server_version' | cut -d' ' -f1), Redis $(redis-cli info server | sed -n 's/^redis_version:\(.*\)\r$/\1/p'); $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB" | tee "$out/machine.txt"

# CPU per request: each process's own CPU time (user + system, /proc/<pid>/stat)
# divided by its requests. Over a loadgen run, loadgen itself counts from the
# first publish to the last result (`--cpu`: setup and verdict excluded);
# PostgreSQL is every postgres process (the workers' backends live through a
# run). cpu_start/cpu_end measure the same around a command (the wrk drop).
tick=$(getconf CLK_TCK)
kafka_pid=$(cat .services/kafka/kafka.pid 2>/dev/null || pgrep -f kafka.Kafka | head -n 1)
redis_pid=$(pgrep -f 'redis-server 127.0.0.1:6379' | head -n 1)
gateway_pid=
cpu_of() { local t=0 p; for p in "$@"; do [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
worker_pids() { local w; for w in "${workers[@]}"; do echo "${w%%:*}"; done; }
# The broker's CPU by thread between the two calls (bench/broker_threads.py):
# how much went to serving requests, and how much to the JVM's compiler and GC.
broker_threads_start() { python3 bench/broker_threads.py snap "$kafka_pid" "$out/.broker-before.json"; }
broker_threads_end() { # name, requests: prints the split
  python3 bench/broker_threads.py snap "$kafka_pid" "$out/.broker-after.json"
  python3 bench/broker_threads.py diff "$out/.broker-before.json" "$out/.broker-after.json" "$2" "$1, the broker's threads"
  rm -f "$out/.broker-before.json" "$out/.broker-after.json"
}
loadgen_measured() { # name, loadgen arguments…: one run, its CPU per request in cpu.txt
  local name=$1; shift
  local pids; pids=$(worker_pids | paste -sd,)
  broker_threads_start
  "$bin" loadgen "$@" ${pids:+--cpu "stampede worker=$pids"} --cpu "broker=$kafka_pid" --cpu PostgreSQL=postgres \
    --cpu "Redis=$redis_pid" ${gateway_pid:+--cpu "gateway=$gateway_pid"} | sed -n 2,3p
  python3 - "$name" "$out" "$@" <<'PY' | tee -a "$out/cpu.txt"
import json, sys
name, out, args = sys.argv[1], sys.argv[2], sys.argv[3:]
cpu = json.load(open(args[args.index("--json") + 1]))["cpu_us_per_request"]
order = ["stampede worker", "gateway", "broker", "PostgreSQL", "Redis", "load generator"]
print(f"{name}: " + ", ".join(f"{who} {cpu[who]:.1f} µs" for who in order if who in cpu) + " of CPU per request")
PY
  broker_threads_end "$name" "$(sed -n 's/.*--requests \([0-9]*\).*/\1/p' <<<"$*")" | tee -a "$out/cpu.txt"
}
declare -A pg_before
cpu_start() {
  broker_threads_start
  w0=$(cpu_of $(worker_pids)); k0=$(cpu_of "$kafka_pid"); r0=$(cpu_of "$redis_pid")
  pg_before=(); local p; for p in $(pgrep -x postgres); do pg_before[$p]=$(cpu_of "$p"); done
}
cpu_end() { # name, requests, load generator's ticks
  local pg=0 p w1 k1 r1
  w1=$(cpu_of $(worker_pids)); k1=$(cpu_of "$kafka_pid"); r1=$(cpu_of "$redis_pid")
  for p in $(pgrep -x postgres); do pg=$((pg + $(cpu_of "$p") - ${pg_before[$p]:-0})); done
  us() { python3 -c "print(f'{$1 * 1e6 / $tick / $2:.1f}')"; }
  echo "$1: stampede worker $(us $((w1 - w0)) "$2") µs, broker $(us $((k1 - k0)) "$2") µs, PostgreSQL $(us "$pg" "$2") µs, Redis $(us $((r1 - r0)) "$2") µs, load generator $(us "$3" "$2") µs of CPU per request" | tee -a "$out/cpu.txt"
  broker_threads_end "$1" "$2" | tee -a "$out/cpu.txt"
}
peak_rss_mib() { local m=0 p v; for p in $(worker_pids); do v=$(peak_mib "$p"); (( v > m )) && m=$v; done; echo "$m"; }

echo "== (a) Kafka passthrough, $requests messages"
"$bin" loadgen --scenario passthrough --requests "$requests" --quiet --no-verify --json "$out/passthrough.json" | sed -n 2,3p
echo "== (a) Kafka passthrough offered at 20,000 messages/s: the transport's own latency"
workers=()
loadgen_measured "passthrough offered at 20,000/s" --scenario passthrough --requests "$requests" --rate 20000 --quiet --no-verify --json "$out/passthrough-rate20k.json"

echo "== (b) redis-benchmark: issue_coupons.lua, one request per call"
lua_key="$tag:{coupon:bench}"
redis-cli SET "$lua_key:stock" "$stock" >/dev/null
redis-benchmark -q -n "$requests" -c 50 -r 1000000000 EVAL "$(cat src/counters/lua/prelude.lua src/counters/lua/issue_coupons.lua)" 3 "$lua_key:stock" "$lua_key:holders" "$lua_key:grants" "req:__rand_int__" "__rand_int__" | tr '\r' '\n' | grep -E "requests per second" | tail -1 | tee "$out/redis.txt"
redis-cli DEL "$lua_key:stock" "$lua_key:holders" "$lua_key:grants" >/dev/null

echo "== (c) PostgreSQL row-lock issue (pgbench, 16 clients), $requests requests against $stock stock"
db=$tag
psql -h 127.0.0.1 -U postgres -d "$db" -q <<SQL
CREATE TABLE bench_coupon (id int PRIMARY KEY, total_quantity bigint NOT NULL, issued bigint NOT NULL DEFAULT 0 CHECK (issued <= total_quantity));
CREATE TABLE bench_issue (user_id bigint NOT NULL, coupon_id int NOT NULL, PRIMARY KEY (user_id, coupon_id));
INSERT INTO bench_coupon VALUES (1, $stock, 0);
SQL
cat >"$out/rowlock.sql" <<'SQL'
\set uid random(1, 1000000000)
BEGIN;
SELECT issued < total_quantity AS open FROM bench_coupon WHERE id = 1 FOR UPDATE \gset
\if :open
INSERT INTO bench_issue (user_id, coupon_id) VALUES (:uid, 1) ON CONFLICT DO NOTHING;
UPDATE bench_coupon SET issued = issued + 1 WHERE id = 1;
\endif
COMMIT;
SQL
pgbench -h 127.0.0.1 -U postgres -n -c 16 -j 2 -t $((requests / 16)) -f "$out/rowlock.sql" "$db" 2>/dev/null | grep -E "^tps" | head -1 | tee "$out/rowlock.txt"

echo "== (d) stampede coupon drop: $requests requests, $stock stock, 1 worker process"
start_workers 1 coupon
# Warm-up, not reported: the first drop after a start pays for cold caches
# (PostgreSQL buffers and plans, connections, Redis scripts) once.
"$bin" loadgen --scenario coupon-drop --requests $((requests / 10)) --stock "$stock" --quiet --no-verify --json "$out/warmup.json" >/dev/null
loadgen_measured "coupon drop" --scenario coupon-drop --requests "$requests" --stock "$stock" --quiet --json "$out/drop-1.json"
echo "worker peak RSS: $(peak_rss_mib) MiB" | tee "$out/drop-1-memory.txt"
stop_workers

echo "== (d) stampede orders: $orders orders of 1-3 products, 1 worker process"
start_workers 1 order
# Warm-up, not reported, as for the drop: the first orders after a start pay
# once for cold caches, and the broker meets its transactions (the relay's)
# for the first time in the sitting, which its JIT compiler then works on.
"$bin" loadgen --scenario orders --requests $((orders / 10)) --users 20000 --stock 1000000 --quiet --no-verify --json "$out/warmup-orders.json" >/dev/null
loadgen_measured orders --scenario orders --requests "$orders" --users 20000 --stock 1000000 --quiet --json "$out/orders.json"
echo "worker peak RSS: $(peak_rss_mib) MiB" | tee "$out/orders-memory.txt"
stop_workers
echo "== (d) PostgreSQL alone: the statements of the same drop and orders (bench/pg-rows.sh)"
BENCH_PG_ROWS_OUT=$out BENCH_REQUESTS=$requests BENCH_STOCK=$stock BENCH_ORDERS=$orders bash bench/pg-rows.sh | grep -E "^(PostgreSQL|in all)"

echo "== (d) stampede coupon drop at an offered 20,000 requests/s"
start_workers 1 coupon
# Warmed up as in (d): the latency of a worker that has served before, not of
# its first batches with cold caches.
"$bin" loadgen --scenario coupon-drop --requests $((requests / 10)) --stock "$stock" --quiet --no-verify --json "$out/warmup-rate.json" >/dev/null
# Its CPU per request too: how busy the machine is at this rate.
loadgen_measured "drop offered at 20,000/s" --scenario coupon-drop --requests "$requests" --stock "$stock" --rate 20000 --quiet --json "$out/drop-rate20k.json"
stop_workers

for n in $scale; do
  echo "== (e) coupon drop with $n worker process(es)"
  start_workers "$n" coupon
  "$bin" loadgen --scenario coupon-drop --requests "$requests" --stock "$stock" --quiet --json "$out/scale-$n.json" | sed -n 2,3p
  stop_workers
done

echo "== (f) the HTTP path: the same drop ($http_requests requests) through the gateway and straight to Kafka"
gw_port=18080
STAMPEDE_GATEWAY__LISTEN=127.0.0.1:$gw_port "$bin" gateway >"$out/gateway.log" 2>&1 &
gateway_pid=$!
pids+=("$gateway_pid")
deadline=$((SECONDS + 60))
until curl -sf "http://127.0.0.1:$gw_port/healthz" >/dev/null; do
  (( SECONDS < deadline )) || { echo "the gateway never answered" >&2; exit 1; }
  sleep 0.2
done
start_workers 1 coupon
loadgen_measured "drop via Kafka" --scenario coupon-drop --requests "$http_requests" --stock "$stock" --quiet --json "$out/drop-kafka.json"
# The same drop straight to Kafka offered at half the rate it just ran at:
# the pace the HTTP target (0.5x) asks for, and what the worker, broker,
# PostgreSQL and Redis cost per request at that pace.
half_rate=$(python3 -c "import json, sys; print(max(1, int(json.load(open(sys.argv[1]))['throughput_per_sec'] / 2)))" "$out/drop-kafka.json")
loadgen_measured "drop via Kafka at half its rate" --scenario coupon-drop --requests "$http_requests" --stock "$stock" --rate "$half_rate" --quiet --json "$out/drop-kafka-half.json"
loadgen_measured "drop via HTTP" --scenario coupon-drop --requests "$http_requests" --stock "$stock" --via http --http-url "http://127.0.0.1:$gw_port" --quiet --json "$out/drop-http.json"
loadgen_measured "drop via HTTP/2" --scenario coupon-drop --requests "$http_requests" --stock "$stock" --via http2 --http-url "http://127.0.0.1:$gw_port" --quiet --json "$out/drop-http2.json"

# The same drop through the gateway with wrk as the load generator (C, far
# cheaper per request than loadgen's HTTP client): each of $http_requests new
# users posts once (bench/wrk/drop.lua); the run ends when the worker has
# published the last result (stampede_messages_consumed_total counts a batch
# once its results are out). Verdict: exactly min(stock, users) issued, and
# `stampede audit` passes. Twice: from 256 connections, and from 1,024 (a
# drop's buyers all press at once; more requests wait in the gateway's
# producer together, so its batches to the broker are larger).
wrk_drop() { # connections, result name, CPU line name
  local connections=$1 name=$2 label=$3
  local first_user wrk_coupon c0 t0 t1 wrk_wrapper deadline issued audit_ok
  first_user=$(psql -h 127.0.0.1 -U postgres -d "$tag" -Atc "SELECT COALESCE(max(id), 0) + 1 FROM users")
  wrk_coupon=$(psql -h 127.0.0.1 -U postgres -d "$tag" -Atc "SELECT COALESCE(max(id), 0) + 1 FROM coupons")
  "$bin" seed --users "$http_requests" --first-user-id "$first_user" --coupons 1 --first-coupon-id "$wrk_coupon" --coupon-stock "$stock" >/dev/null
  c0=$(consumed "${workers[0]#*:}"); cpu_start; g0=$(cpu_of "$gateway_pid")
  t0=$(date +%s.%N)
  bash -c 'wrk -t 2 -c "$7" -d 600s -s bench/wrk/drop.lua "$1" -- "$2" "$3" "$4" 2 >"$5"; read -r -a f </proc/$$/stat; echo $((f[15] + f[16])) >"$6"' _ \
    "http://127.0.0.1:$gw_port" "$first_user" "$http_requests" "$wrk_coupon" "$out/$name.txt" "$out/.wrk-ticks" "$connections" &
  wrk_wrapper=$!
  deadline=$((SECONDS + 300))
  until (( $(consumed "${workers[0]#*:}") >= c0 + http_requests )); do
    (( SECONDS < deadline )) || { echo "the wrk drop's results never all came out" >&2; break; }
    sleep 0.02
  done
  t1=$(date +%s.%N)
  pkill -INT -P "$wrk_wrapper" wrk || true
  wait "$wrk_wrapper" || true
  cpu_end "$label" "$http_requests" "$(cat "$out/.wrk-ticks")"; rm -f "$out/.wrk-ticks"
  echo "$label: gateway $(python3 -c "print(f'{($(cpu_of "$gateway_pid") - $g0) * 1e6 / $tick / $http_requests:.1f}')") µs of CPU per request" | tee -a "$out/cpu.txt"
  issued=$(psql -h 127.0.0.1 -U postgres -d "$tag" -Atc "SELECT issued FROM coupons WHERE id = $wrk_coupon")
  audit_ok=false; "$bin" audit >"$out/$name-audit.txt" 2>&1 && audit_ok=true
  python3 - "$out" "$http_requests" "$stock" "$t0" "$t1" "$(( $(consumed "${workers[0]#*:}") - c0 ))" "$issued" "$audit_ok" "$name" "$connections" <<'PY'
import json, sys
out, n, stock, t0, t1, answered, issued, audit_ok, name, connections = sys.argv[1:]
n, stock, answered, issued = int(n), int(stock), int(answered), int(issued or -1)
secs = float(t1) - float(t0)
json.dump({"scenario": "coupon-drop", "via": f"http (wrk, {connections} connections)", "requests": n, "answered": min(answered, n),
           "duration_secs": secs, "throughput_per_sec": min(answered, n) / secs,
           "checks": [{"name": "issued = min(stock, users)", "passed": issued == min(stock, n), "detail": f"{issued} issued"},
                      {"name": "stampede audit", "passed": audit_ok == "true", "detail": f"{name}-audit.txt"}]},
          open(f"{out}/{name}.json", "w"), indent=1)
print(f"wrk drop, {connections} connections: {min(answered, n)} answered in {secs:.2f}s: {min(answered, n) / secs:,.0f} requests/s (first post → last result published)")
PY
}
wrk_drop 256 drop-http-wrk "drop via HTTP (wrk)"
wrk_drop 1024 drop-http-wrk-1024 "drop via HTTP (wrk, 1024 connections)"
# The same drop straight to Kafka, offered at the rate the wrk drop from 1,024
# connections ran at: what the worker, broker, PostgreSQL and Redis cost per
# request when requests arrive at that pace, not as a backlog read at full speed.
http_rate=$(python3 -c "import json, sys; print(max(1, int(json.load(open(sys.argv[1]))['throughput_per_sec'])))" "$out/drop-http-wrk-1024.json")
loadgen_measured "drop via Kafka at the wrk drop's rate" --scenario coupon-drop --requests "$http_requests" --stock "$stock" --rate "$http_rate" --quiet --json "$out/drop-kafka-at-http-rate.json"
stop_workers
# wrk: the gateway's own intake (202 answers) with a load generator that costs little.
cat >"$out/wrk-issue.lua" <<'LUA'
-- POST /v1/coupons/1/issue for users 1, 2, 3, … (one counter per wrk thread, interleaved)
local n = 0
function setup(thread) thread:set("offset", tonumber(thread.id or 0)) end
function request()
  n = n + 1
  return wrk.format("POST", "/v1/coupons/1/issue", {["Content-Type"] = "application/json"},
    '{"user_id": ' .. (n * 2 + (offset or 0)) .. '}')
end
LUA
g0=$(cpu_of "$gateway_pid"); k0=$(cpu_of "$kafka_pid")
wrk -t 2 -c 64 -d 10s -s "$out/wrk-issue.lua" "http://127.0.0.1:$gw_port" >"$out/wrk.txt" 2>&1 || true
wrk_requests=$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' "$out/wrk.txt")
python3 - "$out" "$wrk_requests" "$(( $(cpu_of "$gateway_pid") - g0 ))" "$(( $(cpu_of "$kafka_pid") - k0 ))" "$tick" <<'PY' | tee -a "$out/cpu.txt"
import sys
out, n, g, k, tick = sys.argv[1], int(sys.argv[2] or 0), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
rate = open(f"{out}/wrk.txt").read().split("Requests/sec:")[1].split()[0] if n else "0"
print(f"wrk intake: {float(rate):,.0f} requests/s accepted; gateway {g * 1e6 / tick / max(n, 1):.1f} µs, broker {k * 1e6 / tick / max(n, 1):.1f} µs of CPU per request")
PY
# The same intake over HTTP/2 without TLS, as a proxy in front of the gateway
# sends it: h2load, 4 connections with up to 64 requests at once on each (one
# body for every request: it measures the intake, not a drop).
printf '{"user_id": 1}' >"$out/h2load-issue.json"
g0=$(cpu_of "$gateway_pid"); k0=$(cpu_of "$kafka_pid")
bash -c 'h2load -D 10 -c 4 -m 64 -t 1 -d "$2" -H "content-type: application/json" "$1/v1/coupons/1/issue" >"$3" 2>&1; read -r -a f </proc/$$/stat; echo $((f[15] + f[16])) >"$4"' _ \
  "http://127.0.0.1:$gw_port" "$out/h2load-issue.json" "$out/h2load.txt" "$out/.h2load-ticks" || true
python3 - "$out" "$(( $(cpu_of "$gateway_pid") - g0 ))" "$(( $(cpu_of "$kafka_pid") - k0 ))" "$(cat "$out/.h2load-ticks")" "$tick" <<'PY' | tee -a "$out/cpu.txt"
import re, sys
out, g, k, h, tick = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4] or 0), int(sys.argv[5])
text = open(f"{out}/h2load.txt").read()
done = re.search(r"requests: \d+ total, \d+ started, (\d+) done", text)
codes = re.search(r"status codes: (\d+) 2xx", text)
secs = re.search(r"finished in ([\d.]+)s", text)
n, ok = (int(done[1]), int(codes[1])) if done and codes else (0, 0)
rate = n / float(secs[1]) if n and secs else 0
per = lambda t: t * 1e6 / tick / max(n, 1)
print(f"h2load intake (HTTP/2, 4 connections × 64 streams): {rate:,.0f} requests/s accepted ({ok:,} of {n:,} answered 2xx); gateway {per(g):.1f} µs, broker {per(k):.1f} µs, load generator {per(h):.1f} µs of CPU per request")
PY
rm -f "$out/.h2load-ticks"
# The HTTP exchange alone: the same connections asking GET /healthz, which
# publishes nothing. What a request through any gateway costs here before
# it does any work (the gateway's and wrk's CPU per request).
g0=$(cpu_of "$gateway_pid")
bash -c 'wrk -t 2 -c 256 -d 10s "$1/healthz" >"$2" 2>&1; read -r -a f </proc/$$/stat; echo $((f[15] + f[16])) >"$3"' _ \
  "http://127.0.0.1:$gw_port" "$out/wrk-healthz.txt" "$out/.wrk-ticks" || true
python3 - "$out" "$(( $(cpu_of "$gateway_pid") - g0 ))" "$(cat "$out/.wrk-ticks")" "$tick" <<'PY' | tee -a "$out/cpu.txt"
import sys
out, g, w, tick = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
text = open(f"{out}/wrk-healthz.txt").read()
n = int(text.split(" requests in")[0].split()[-1]) if " requests in" in text else 0
rate = float(text.split("Requests/sec:")[1].split()[0]) if n else 0
print(f"HTTP exchange alone (wrk, GET /healthz, 256 connections, {rate:,.0f}/s): gateway {g * 1e6 / tick / max(n, 1):.1f} µs, load generator {w * 1e6 / tick / max(n, 1):.1f} µs of CPU per request")
PY
rm -f "$out/.wrk-ticks"
kill -TERM "$gateway_pid" 2>/dev/null || true
wait "$gateway_pid" 2>/dev/null || true

echo "== (g) worker memory under a backlog four times larger: $((requests * 2)), then $((requests * 8)) requests straight to Kafka"
start_workers 1 coupon
: >"$out/backlog-memory.txt"
for n in $((requests * 2)) $((requests * 8)); do
  reset_peak $(worker_pids)
  "$bin" loadgen --scenario coupon-drop --requests "$n" --stock "$stock" --timeout-secs 900 --quiet --json "$out/backlog-$n.json" | sed -n 2p
  echo "$n: $(peak_rss_mib) MiB" | tee -a "$out/backlog-memory.txt"
done
stop_workers

echo "== (h) idle: stampede run and the broker with no traffic"
BENCH_IDLE_OUT="$out/idle" bash bench/idle.sh

echo "== (i) the worker against the code this work began with (bench/baseline.sh)"
BENCH_BASELINE_OUT=$out bash bench/baseline.sh || echo "(i) not measured: see the message above" >&2

python3 bench/summary.py "$out"
runs=()
for name in passthrough passthrough-rate20k drop-1 drop-rate20k orders scale-1 scale-2 scale-4 drop-kafka drop-http drop-kafka-at-http-rate; do
  [ -f "$out/$name.json" ] && runs+=("$out/$name.json")
done
"$bin" report "${runs[@]}" --output "$out/index.html" --title "stampede bench sitting $stamp"
