#!/usr/bin/env bash
# Overload: is memory flat when stampede is offered far more than it can take?
#
# One gateway process (a small gateway.max_in_flight) and one coupon worker
# process. Coupon drops, each larger than the one before:
#   http-small   N/8 requests over HTTP from 2,048 concurrent clients
#   http-large   N/2 requests over HTTP from 2,048 concurrent clients
#   kafka-medium 2N  requests straight to Kafka at full speed (a backlog builds
#                    in the broker, since producing is faster than deciding)
#   kafka-large  8N  requests the same way: four times the backlog
# (both Kafka drops last long enough for the worker to reach its steady state).
# The resident memory of both processes is sampled every 0.5 s throughout
# (overload-rss.csv) and each drop's own peak recorded (the kernel's peak is
# reset before it): flat means the peaks do not grow with the offered load.
# Every drop must still pass loadgen's verdict (nothing lost, exactly the
# stock issued).
#
# Environment: BENCH_REQUESTS (N, 200000), BENCH_STOCK (10000),
# BENCH_MAX_IN_FLIGHT (128).
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${BENCH_REQUESTS:-200000}
stock=${BENCH_STOCK:-10000}
max_in_flight=${BENCH_MAX_IN_FLIGHT:-128}
out=bench/results/$(date -u +%Y%m%dT%H%M%SZ)-overload
mkdir -p "$out"

source bench/common.sh overload

gw_port=9390
metrics_port=9391
STAMPEDE_GATEWAY__LISTEN=127.0.0.1:$gw_port STAMPEDE_GATEWAY__MAX_IN_FLIGHT=$max_in_flight \
  "$bin" gateway >"$out/gateway.log" 2>&1 &
gateway=$!
pids+=("$gateway")
"$bin" worker --only coupon --metrics-addr "127.0.0.1:$metrics_port" >"$out/worker.log" 2>&1 &
worker=$!
pids+=("$worker")
deadline=$((SECONDS + 60))
until curl -sf "http://127.0.0.1:$gw_port/healthz" >/dev/null &&
  curl -sf "http://127.0.0.1:$metrics_port/metrics" | grep -q '^stampede_consumer_assigned_partitions{.*} [1-9]'; do
  ((SECONDS < deadline)) || { echo "gateway or worker never became ready" >&2; exit 1; }
  sleep 0.2
done

rss() { awk '/VmRSS/{print int($2 / 1024)}' "/proc/$1/status" 2>/dev/null || echo 0; }
echo "t_secs,gateway_rss_mib,worker_rss_mib" >"$out/overload-rss.csv"
(
  start=$EPOCHREALTIME
  while kill -0 "$worker" 2>/dev/null; do
    printf '%s,%s,%s\n' "$(awk -v s="$start" -v n="$EPOCHREALTIME" 'BEGIN { printf "%.1f", n - s }')" "$(rss "$gateway")" "$(rss "$worker")"
    sleep 0.5
  done
) >>"$out/overload-rss.csv" &
pids+=($!)

echo "run,requests,via,answered,per_second,turned_away,verdict,gateway_peak_mib,worker_peak_mib" >"$out/overload.csv"
drop() { # name, requests, extra loadgen args…
  local name=$1 n=$2
  shift 2
  echo "== $name: $n requests $*"
  reset_peak "$gateway" "$worker" # each drop's own peak
  "$bin" loadgen --scenario coupon-drop --requests "$n" --stock "$stock" --timeout-secs 900 --quiet \
    --json "$out/$name.json" "$@" | sed -n 2,4p
  python3 - "$out/$name.json" "$name" "$(peak_mib "$gateway")" "$(peak_mib "$worker")" >>"$out/overload.csv" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
ok = r["answered"] == r["requests"] and all(c["passed"] for c in r["checks"])
print(f'{sys.argv[2]},{r["requests"]},{r["via"]},{r["answered"]},{r["throughput_per_sec"]:.0f},{r.get("turned_away", 0)},{"pass" if ok else "FAIL"},{sys.argv[3]},{sys.argv[4]}')
PY
}
http=(--via http --http-url "http://127.0.0.1:$gw_port" --concurrency 2048)
drop http-small $((requests / 8)) "${http[@]}"
drop http-large $((requests / 2)) "${http[@]}"
drop kafka-medium $((requests * 2))
drop kafka-large $((requests * 8))

column -s, -t <"$out/overload.csv" | tee "$out/overload.txt"
! grep -q ',FAIL,' "$out/overload.csv"
