#!/usr/bin/env bash
# First come, first served, measured: coupon drops against one and two coupon
# worker processes, at full speed and offered at a steady rate, each reporting
# the FCFS inversion rate (winners accepted after some sold-out loser) and the
# largest inversion window. Results: bench/results/<time>-fairness/ (loadgen
# JSON and HTML per run, summary.md, index.html with the runs side by side).
#
# Environment: BENCH_REQUESTS (200000), BENCH_STOCK (10000), BENCH_RATE (20000),
# BENCH_RUNS (default "full-1 rate-1 full-2 rate-2": full speed or offered at
# BENCH_RATE, with 1 or 2 coupon worker processes).
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${BENCH_REQUESTS:-200000}
stock=${BENCH_STOCK:-10000}
rate=${BENCH_RATE:-20000}
out=bench/results/$(date -u +%Y%m%dT%H%M%SZ)-fairness
mkdir -p "$out"
source bench/common.sh fair

worker_port=9400
run_drop() { # name, workers, extra loadgen args...
  local name=$1 n=$2; shift 2
  start_workers "$n" coupon "$name"
  echo "== $name: $n coupon worker(s), $requests requests, $stock stock $*"
  "$bin" loadgen --scenario coupon-drop --requests "$requests" --stock "$stock" --quiet \
    --json "$out/$name.json" "$@" | tee "$out/$name.txt"
  stop_workers
}

runs=${BENCH_RUNS:-full-1 rate-1 full-2 rate-2}
for run in $runs; do
  case $run in
    full-*) run_drop "$run" "${run#full-}" ;;
    rate-*) run_drop "$run" "${run#rate-}" --rate "$rate" ;;
    *) echo "unknown run $run (full-N or rate-N)" >&2; exit 2 ;;
  esac
done

python3 - "$out" "$runs" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
rows = ["| run | workers | offered | results/s | p99 ms | winners | inverted winners | inversion rate | largest inversion ms |",
        "|---|---|---|---|---|---|---|---|---|"]
for name in sys.argv[2].split():
    r = json.loads((out / f"{name}.json").read_text())
    f = r.get("fairness") or {}
    rows.append(f"| {name} | {name[-1]} | {r['offered_rate'] or 'full speed'} | {r['throughput_per_sec']:.0f} | {r['latency']['p99_ms']:.1f} | "
                f"{f.get('winners', 0)} | {f.get('inverted_winners', 0)} | {100 * f.get('inversion_rate', 0):.2f}% | {f.get('max_inversion_ms', 0):.1f} |")
(out / "summary.md").write_text("\n".join(rows) + "\n")
print("\n".join(rows))
PY
"$bin" report $(for r in $runs; do echo "$out/$r.json"; done) --output "$out/index.html" --title "first come, first served: $requests requests, $stock stock"
