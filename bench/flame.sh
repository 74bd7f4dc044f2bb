#!/usr/bin/env bash
# Flame graphs per scenario: where a coupon drop and an orders run spend CPU.
# For each scenario, two profiles taken during the same loadgen run:
# - the worker process alone (perf, DWARF call stacks: Rust frames with
#   their callers), `<scenario>-worker.svg`;
# - the whole machine (every process: broker, PostgreSQL, Redis, load
#   generator, worker), `<scenario>-machine.svg`, to see who takes what share.
# Results: bench/results/<time>-flame/ with the SVGs, each run's loadgen JSON
# and summary.md (share of CPU samples per process, and the worker's heaviest
# frames).
#
# Environment: BENCH_REQUESTS (200000 drop requests), BENCH_ORDERS (50000).
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${BENCH_REQUESTS:-200000}
orders=${BENCH_ORDERS:-50000}
out=bench/results/$(date -u +%Y%m%dT%H%M%SZ)-flame
mkdir -p "$out"
command -v perf >/dev/null || { apt-get update -qq && apt-get install -y -qq linux-perf >/dev/null; }
command -v inferno-flamegraph >/dev/null || cargo install inferno --locked
export STAMPEDE_WORKER__BATCH_SIZE=${BENCH_BATCH:-2000}
source bench/common.sh flame

profile() { # name, worker kind, loadgen args...
  local name=$1 kind=$2
  shift 2
  start_workers 1 "$kind" "$name"
  local pid=${workers[0]%%:*} port=${workers[0]#*:}
  echo "== $name: $*"
  "$bin" loadgen "$@" --quiet --no-verify --json "$out/$name.json" >"$out/$name.txt" &
  local loadgen=$!
  # Profile the run itself, not loadgen's setup (seeding users, loading
  # stock): from the worker's first decided message to the last result.
  until curl -sf "http://127.0.0.1:$port/metrics" | grep -q '^stampede_messages_consumed_total{.*} [1-9]'; do
    kill -0 "$loadgen" 2>/dev/null || { echo "loadgen ended before the worker decided anything" >&2; exit 1; }
    sleep 0.05
  done
  perf record -q -F 199 --call-graph dwarf,16384 -p "$pid" -o "$out/$name-worker.data" >"$out/perf-$name-worker.log" 2>&1 &
  local worker_perf=$!
  perf record -q -F 99 -a -g -o "$out/$name-machine.data" >"$out/perf-$name-machine.log" 2>&1 &
  local machine_perf=$!
  wait "$loadgen"
  sed -n 2,3p "$out/$name.txt"
  kill -INT "$worker_perf" "$machine_perf" 2>/dev/null || true
  wait "$worker_perf" "$machine_perf" 2>/dev/null || true
  stop_workers
  echo "   folding the stacks (takes a while for DWARF stacks)"
  perf script -i "$out/$name-worker.data" 2>/dev/null | inferno-collapse-perf >"$out/$name-worker.folded"
  perf script -F +pid -i "$out/$name-machine.data" 2>/dev/null | inferno-collapse-perf --pid --kernel >"$out/$name-machine.folded"
  # Which process each pid of the machine profile was.
  { echo "broker $(pgrep -d, -f kafka.Kafka)"; echo "worker $pid"; } >"$out/$name-pids.txt"
  inferno-flamegraph --title "$name: the $kind worker process" <"$out/$name-worker.folded" >"$out/$name-worker.svg"
  inferno-flamegraph --title "$name: the whole machine, every process" <"$out/$name-machine.folded" >"$out/$name-machine.svg"
  rm -f "$out/$name-worker.data" "$out/$name-machine.data"
}

profile drop coupon --scenario coupon-drop --requests "$requests" --stock 10000
profile orders order --scenario orders --requests "$orders" --stock 1000000

python3 - "$out" <<'PY' | tee "$out/summary.md"
import collections, json, pathlib, re, sys
out = pathlib.Path(sys.argv[1])

def stacks(name):
    for line in (out / name).read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        yield stack.split(";"), int(n)

def known_pids(scenario):
    pids = {}
    for line in (out / f"{scenario}-pids.txt").read_text().splitlines():
        role, _, ids = line.partition(" ")
        for p in filter(None, ids.split(",")):
            pids[p] = role
    return pids

def process(frame, pids):
    # `--pid` folds start with "command-pid".
    command, _, pid = frame.rpartition("-")
    if pids.get(pid) == "broker":
        return "Kafka broker"
    if pids.get(pid) == "worker":
        return "stampede worker"
    if command.startswith("postgres"):
        return "PostgreSQL"
    if command.startswith("redis"):
        return "Redis"
    if command.startswith("swapper"):
        return "idle"
    if command.startswith("stampede") or command.startswith("tokio") or command.startswith("rdk:"):
        return "load generator"
    return "other (kernel threads, perf, shell)"

# Where the worker's time goes, by what the frame belongs to (callees included).
PARTS = [
    ("deciding a batch (workers::*::decide…)", r"stampede::workers::(coupon|order|charge)::"),
    ("PostgreSQL client (sqlx)", r"^sqlx"),
    ("Redis client", r"^redis::"),
    ("JSON decode", r"serde_json::de::"),
    ("JSON encode", r"serde_json::ser::"),
    ("publishing results (Producer::send_all)", r"kafka::producer::Producer::send_all"),
    ("taking messages in (intake, merge)", r"kafka::(intake|merge)::"),
    ("librdkafka threads", r"^rdk:|librdkafka|rd_kafka"),
    ("stats outbox relay", r"workers::outbox::"),
    ("logs and spans (tracing)", r"^tracing"),
    ("metrics", r"telemetry::metrics|^metrics"),
]

# The same CPU split once: each sample counted in the first of these its
# stack falls in. The first three together are what the Kafka client costs
# the worker: consuming, producing and acknowledging, whatever it decides.
ONCE = [
    ("the Kafka client: librdkafka's own threads", r"^rdk:"),
    ("the stats outbox relay", r"workers::outbox::"),
    ("the Kafka client: publishing results, delivery reports", r"kafka::producer::|kafka::consumer::spawn_publish"),
    ("reading each request's requested_at (ordering a batch)", r"pipeline::requested_at"),
    ("the Kafka client: taking messages in", r"kafka::(intake|merge|incoming)::|MessageStream|BaseConsumer"),
    ("PostgreSQL client (sqlx)", r"^sqlx"),
    ("Redis client", r"^redis::|stampede::counters::"),
    ("JSON, decoding and encoding", r"^serde_json::"),
    ("deciding a batch, the rest", r"stampede::"),
]
KAFKA_CLIENT = [name for name, _ in ONCE if name.startswith("the Kafka client")]

def short(frame):
    frame = re.sub(r"::h[0-9a-f]{16}$", "", frame)
    return frame[:100]

print(f"# Flame graphs ({out.name})\n")
print("Each scenario was profiled with perf during one loadgen run: the worker")
print("process alone (DWARF call stacks) and the whole machine. Shares are of")
print("CPU time sampled.\n")
for scenario in ("drop", "orders"):
    report = json.loads((out / f"{scenario}.json").read_text())
    pids = known_pids(scenario)
    print(f"## {scenario}: {report['answered']:,} requests, {report['throughput_per_sec']:,.0f}/s\n")
    print(f"[whole machine]({scenario}-machine.svg) · [worker process]({scenario}-worker.svg)\n")
    per = collections.Counter()
    for stack, n in stacks(f"{scenario}-machine.folded"):
        per[process(stack[0], pids)] += n
    busy = sum(n for p, n in per.items() if p != "idle") or 1
    print("| process | share of the machine's busy CPU |\n|---|---|")
    for p, n in per.most_common():
        if p != "idle":
            print(f"| {p} | {100 * n / busy:.1f}% |")
    total, parts, once, leaves = 0, collections.Counter(), collections.Counter(), collections.Counter()
    for stack, n in stacks(f"{scenario}-worker.folded"):
        total += n
        leaves[short(stack[-1])] += n
        for name, pattern in PARTS:
            if any(re.search(pattern, f) for f in stack):
                parts[name] += n
        once[next((name for name, pattern in ONCE if any(re.search(pattern, f) for f in stack)),
                  "the runtime and the kernel (scheduling, waiting, the rest)")] += n
    total = max(total, 1)
    print("\nThe worker process, by part (callees included; parts overlap):\n")
    print("| part | share of the worker's CPU |\n|---|---|")
    for name, _ in PARTS:
        print(f"| {name} | {100 * parts[name] / total:.1f}% |")
    print("\nThe same, each sample counted once (in the first of these its stack falls in):\n")
    print("| part | share of the worker's CPU |\n|---|---|")
    for name in [name for name, _ in ONCE] + ["the runtime and the kernel (scheduling, waiting, the rest)"]:
        print(f"| {name} | {100 * once[name] / total:.1f}% |")
    print(f"| **the Kafka client in all** | **{100 * sum(once[k] for k in KAFKA_CLIENT) / total:.1f}%** |")
    print("\nIts hottest functions (self time):\n")
    print("| function | share |\n|---|---|")
    for f, n in leaves.most_common(10):
        print(f"| `{f}` | {100 * n / total:.1f}% |")
    print()
PY
rm -f "$out"/*.folded "$out"/*-pids.txt "$out"/perf-*.log
"$bin" report "$out/drop.json" "$out/orders.json" --output "$out/index.html" --title "flame graph runs" >/dev/null
echo "flame graphs in $out"
