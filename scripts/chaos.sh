#!/usr/bin/env bash
# A long chaos run: load through stampede while faults are injected, then
# loadgen's verdict and `stampede audit` after every round. Not part of CI.
#
# Each round offers a mixed load (charges, coupon requests, orders) and, while
# it runs: SIGKILLs a worker and restarts it, scales the group from 1 to 3
# workers and back, restarts Redis empty, pauses PostgreSQL for a few seconds,
# and restarts the broker (only when its topics survive a restart:
# STAMPEDE_BROKER_STORAGE=sqlite://tansu.db scripts/services.sh up).
#
# Environment: CHAOS_ROUNDS (3), CHAOS_REQUESTS (30000), CHAOS_RATE (3000/s).
# The sleeps below space the faults out in time; they synchronise nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${CHAOS_ROUNDS:-3}
requests=${CHAOS_REQUESTS:-30000}
rate=${CHAOS_RATE:-3000}
state_dir=${STAMPEDE_SERVICES_DIR:-$PWD/.services}
bash scripts/services.sh up
cargo build --release --locked
bin=target/release/stampede
tag=chaos$(date +%s)
out=bench/results/$tag
mkdir -p "$out"
export STAMPEDE_DATABASE__URL=postgres://postgres@127.0.0.1:5432/$tag
export STAMPEDE_KAFKA__TOPIC_PREFIX=$tag.
export STAMPEDE_KAFKA__GROUP_ID=$tag
export STAMPEDE_REDIS__KEY_PREFIX=$tag
export STAMPEDE_LOG__FILTER=warn
"$bin" migrate >/dev/null
"$bin" topics create >/dev/null

workers=()
start_worker() { "$bin" worker >>"$out/workers.log" 2>&1 & workers+=($!); }
stop_all() { for p in "${workers[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; for p in "${workers[@]}"; do wait "$p" 2>/dev/null || true; done; workers=(); }
trap stop_all EXIT
sqlite_broker=false
[[ "${STAMPEDE_BROKER_STORAGE:-}" == sqlite* ]] && sqlite_broker=true

printf 'round,requests,faults,loadgen_verdict,audit_violations\n' >"$out/chaos.csv"
total_faults=0
for round in $(seq 1 "$rounds"); do
  faults=0
  start_worker
  "$bin" loadgen --scenario mixed --requests "$requests" --rate "$rate" --timeout-secs 900 --quiet --json "$out/round-$round.json" >"$out/round-$round.txt" 2>&1 &
  load=$!
  sleep 3; echo "[chaos] round $round: SIGKILL a worker, restart it"
  kill -9 "${workers[0]}"; workers=("${workers[@]:1}"); start_worker; faults=$((faults + 1))
  sleep 3; echo "[chaos] round $round: scale 1 → 3 workers"
  start_worker; start_worker; faults=$((faults + 1))
  sleep 4; echo "[chaos] round $round: scale 3 → 1 worker"
  for p in "${workers[@]:1}"; do kill -TERM "$p"; wait "$p" 2>/dev/null || true; done; workers=("${workers[0]}"); faults=$((faults + 1))
  sleep 3; echo "[chaos] round $round: restart Redis empty"
  redis-cli -h 127.0.0.1 shutdown nosave >/dev/null 2>&1 || true
  bash scripts/services.sh up >/dev/null; faults=$((faults + 1))
  sleep 3; echo "[chaos] round $round: pause PostgreSQL for 5 s"
  pkill -STOP -x postgres || true; sleep 5; pkill -CONT -x postgres || true; faults=$((faults + 1))
  if $sqlite_broker; then
    sleep 3; echo "[chaos] round $round: restart the broker"
    kill "$(cat "$state_dir/tansu.pid")" 2>/dev/null || true
    bash scripts/services.sh up >/dev/null; faults=$((faults + 1))
  fi
  verdict=pass
  wait "$load" || verdict=FAIL
  stop_all
  start_worker  # drains anything left, then audit
  "$bin" loadgen --scenario charges --requests 10 --quiet --no-verify --json "$out/round-$round-drain.json" >/dev/null 2>&1 || true
  stop_all
  violations=$("$bin" audit --json | python3 -c 'import json,sys; print(sum(not c["passed"] for c in json.load(sys.stdin)["checks"]))' || echo "?")
  total_faults=$((total_faults + faults))
  printf '%s,%s,%s,%s,%s\n' "$round" "$requests" "$faults" "$verdict" "$violations" | tee -a "$out/chaos.csv"
done
echo "[chaos] $rounds rounds, $((rounds * requests)) requests, $total_faults faults injected; results in $out/chaos.csv"
! grep -qE ',FAIL,|,[1-9][0-9]*$' "$out/chaos.csv"
