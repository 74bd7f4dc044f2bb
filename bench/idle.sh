#!/usr/bin/env bash
# Idle cost: CPU used by `stampede run` (gateway + every worker) and by the
# broker while no request arrives, from each process's own CPU time
# (/proc/<pid>/stat) over BENCH_IDLE_SECS (30) once stampede is ready.
# Result: idle.txt in BENCH_IDLE_OUT (bench/run.sh: its sitting's idle/),
# else in bench/results/<time>-idle/.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${BENCH_IDLE_SECS:-30}
out=${BENCH_IDLE_OUT:-bench/results/$(date -u +%Y%m%dT%H%M%SZ)-idle}
mkdir -p "$out"
source bench/common.sh idle

kafka_pid=$(cat .services/kafka/kafka.pid 2>/dev/null || pgrep -f kafka.Kafka | head -n 1)
[ -n "$kafka_pid" ] || { echo "no kafka.Kafka process found" >&2; exit 1; }
port=9395
STAMPEDE_GATEWAY__LISTEN=127.0.0.1:$port "$bin" run >"$out/run.log" 2>&1 &
run_pid=$!
pids+=("$run_pid")
deadline=$((SECONDS + 120))
until curl -sf "http://127.0.0.1:$port/readyz" >/dev/null; do
  (( SECONDS < deadline )) || { echo "stampede run never became ready (log: $out/run.log)" >&2; exit 1; }
  sleep 0.5
done

tick=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
s0=$(cpu_ticks "$run_pid"); k0=$(cpu_ticks "$kafka_pid")
sleep "$secs" # the measurement window, not a wait for anything
s1=$(cpu_ticks "$run_pid"); k1=$(cpu_ticks "$kafka_pid")
percent() { python3 -c "print(f'{($2 - $1) / $tick / $secs * 100:.1f}')"; }
{
  echo "idle for ${secs}s, share of one core:"
  echo "stampede run: $(percent "$s0" "$s1")%"
  echo "Apache Kafka broker: $(percent "$k0" "$k1")%"
} | tee "$out/idle.txt"
