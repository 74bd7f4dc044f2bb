#!/usr/bin/env bash
# Scale-out on the three-broker cluster (replication factor 3, min.insync.replicas 2,
# started here if needed): the same coupon drop with 1, 2 and 4 coupon worker
# processes in one consumer group, and the Kafka passthrough on the same
# cluster for the ratio. Results: bench/results/<time>-cluster/ (loadgen JSON
# and HTML per run, summary.md, index.html).
#
# Environment: BENCH_REQUESTS (200000), BENCH_STOCK (10000), BENCH_SCALE ("1 2 4").
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${BENCH_REQUESTS:-200000}
stock=${BENCH_STOCK:-10000}
scale=${BENCH_SCALE:-1 2 4}
out=bench/results/$(date -u +%Y%m%dT%H%M%SZ)-cluster
mkdir -p "$out"
bash scripts/services.sh cluster up
export STAMPEDE_KAFKA__BROKERS=127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094
export STAMPEDE_KAFKA__REPLICATION_FACTOR=3
export STAMPEDE_WORKER__BATCH_SIZE=${BENCH_BATCH:-2000}
source bench/common.sh cluster

echo "== Kafka passthrough on the cluster, $requests messages"
"$bin" loadgen --scenario passthrough --requests "$requests" --quiet --no-verify --json "$out/passthrough.json" | sed -n 2,3p
worker_port=9500
for n in $scale; do
  echo "== coupon drop with $n worker process(es)"
  start_workers "$n" coupon "$n"
  "$bin" loadgen --scenario coupon-drop --requests "$requests" --stock "$stock" --quiet --json "$out/scale-$n.json" | sed -n 2,3p
  stop_workers
done

python3 - "$out" "$scale" <<'PY' | tee "$out/summary.md"
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
load = lambda n: json.loads((out / n).read_text())
pt = load("passthrough.json")["throughput_per_sec"]
print(f"# Scale-out on the three-broker cluster ({out.name})\n")
print(f"Kafka passthrough on the same cluster: {pt:,.0f} messages/s\n")
print("| coupon workers | drop per second | / passthrough | p99 ms | verdict |\n|---|---|---|---|---|")
for n in sys.argv[2].split():
    r = load(f"scale-{n}.json")
    ok = r["answered"] == r["requests"] and all(c["passed"] for c in r["checks"])
    print(f"| {n} | {r['throughput_per_sec']:,.0f} | {r['throughput_per_sec'] / pt:.2f} | {r['latency']['p99_ms']:.0f} | {'pass' if ok else 'FAIL'} |")
PY
"$bin" report "$out/passthrough.json" $(for n in $scale; do echo "$out/scale-$n.json"; done) --output "$out/index.html" --title "scale-out on the three-broker cluster"
