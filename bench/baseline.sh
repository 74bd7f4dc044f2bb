#!/usr/bin/env bash
# The worker's CPU per request against the code this benchmark work began
# with, in the same sitting: the machine's speed moves by the hour (see
# bench/FINDINGS.md), so a figure from another sitting says little about a
# change. Builds that code once (commit BENCH_BASELINE_REV, d9418eb, the last
# before any change made for speed; a few minutes, cached under
# target/baseline/), then runs interleaved pairs — the start's worker, then
# today's, then today's first — of a coupon drop and of orders. Each side
# has its own database, topics and Redis keys, and its own load generator
# (the start's cannot use today's tables). A side's figure is its worker
# process's own CPU time (/proc/<pid>/stat) from the first batch it records
# to the load generator's last result, divided by the run's requests.
#
# Writes baseline.txt (one line per pair, one verdict per flow; each side's
# worker and load generator log beside it) to
# BENCH_BASELINE_OUT, else bench/results/<time>-baseline/.
# Environment: BENCH_BASELINE_REV (d9418eb), BENCH_BASELINE_PAIRS (3),
# BENCH_REQUESTS (200000), BENCH_STOCK (10000), BENCH_ORDERS (50000),
# BENCH_BATCH (2000).
#
# The same pairs compare a setting: BENCH_BASELINE_REV=today runs today's
# build on both sides, and BENCH_BASELINE_ENV ("NAME=value ...", e.g.
# GLIBC_TUNABLES=glibc.malloc.mxfast=0 or STAMPEDE_WORKER__BATCH_SIZE=4000)
# is given to the first side's worker alone (any revision's), not to its
# load generator. Its lines then read "with <setting>" for that side.
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${BENCH_BASELINE_REV:-d9418eb}
pairs=${BENCH_BASELINE_PAIRS:-3}
requests=${BENCH_REQUESTS:-200000}
stock=${BENCH_STOCK:-10000}
orders=${BENCH_ORDERS:-50000}
out=${BENCH_BASELINE_OUT:-bench/results/$(date -u +%Y%m%dT%H%M%SZ)-baseline}
mkdir -p "$out"
export STAMPEDE_WORKER__BATCH_SIZE=${BENCH_BATCH:-2000}
source bench/common.sh baseline

worker_env=${BENCH_BASELINE_ENV:-}
for kv in $worker_env; do
  [[ $kv == [A-Za-z_]*=* ]] || { echo "BENCH_BASELINE_ENV: $kv is not NAME=value" >&2; exit 2; }
done
if [ "$rev" = today ]; then
  [ -n "$worker_env" ] || { echo "BENCH_BASELINE_REV=today compares a setting: give it in BENCH_BASELINE_ENV" >&2; exit 2; }
  full=today base_bin=$bin
else
  full=$(git rev-parse --verify --quiet "$rev^{commit}") || {
    echo "commit $rev is not in this clone (a shallow clone? git fetch --unshallow)" >&2
    exit 1
  }
  base_dir=target/baseline/${full:0:12}
  base_bin=$base_dir/target/release/stampede
fi
label=${full:0:12}
start_label="at the start"
if [ -n "$worker_env" ]; then
  label="$label with $worker_env" start_label="with $worker_env"
fi
if [ ! -x "$base_bin" ]; then
  echo "== building the code of ${full:0:12} once (a few minutes; kept in $base_dir)"
  rm -rf "$base_dir/src"
  mkdir -p "$base_dir/src"
  git archive "$full" | tar -x -C "$base_dir/src"
  CARGO_TARGET_DIR=$base_dir/target cargo build --release --locked --bin stampede \
    --manifest-path "$base_dir/src/Cargo.toml" 2>&1 | grep -E "^(error|warning: unused)" || true
  [ -x "$base_bin" ] || { echo "the build of ${full:0:12} failed" >&2; exit 1; }
fi

today=$bin
# run SIDE BINARY FLOW PAIR: one warmed-up run of FLOW (drop or orders) with
# a worker of BINARY; prints "<µs per request> <requests/s end to end>".
run() {
  local side=$1 b=$2 flow=$3 pair=$4 only args n warm
  local name=$tag-$side-$flow-$pair
  if [ "$flow" = drop ]; then
    only=coupon n=$requests warm=$((requests / 10))
    args=(--scenario coupon-drop --stock "$stock")
  else
    only=order n=$orders warm=$((orders / 10))
    args=(--scenario orders --users 20000 --stock 1000000)
  fi
  (
    export STAMPEDE_DATABASE__URL=postgres://postgres@127.0.0.1:5432/$name
    export STAMPEDE_KAFKA__TOPIC_PREFIX=$name. STAMPEDE_KAFKA__GROUP_ID=$name STAMPEDE_REDIS__KEY_PREFIX=$name
    "$b" migrate >/dev/null
    "$b" topics create >/dev/null
    # common.sh's start_workers, with this side's binary (and the first
    # side's environment, for its worker alone).
    local bin=$b kv
    if [ "$side" = start ]; then for kv in $worker_env; do export "$kv"; done; fi
    start_workers 1 "$only" "baseline-$side-$flow-$pair"
    if [ "$side" = start ]; then for kv in $worker_env; do unset "${kv%%=*}"; done; fi
    local w=${workers[0]%%:*} port=${workers[0]#*:}
    "$b" loadgen "${args[@]}" --requests "$warm" --quiet --no-verify --json "$out/.baseline-warm.json" >/dev/null 2>>"$out/baseline-$side-$flow-$pair-loadgen.log"
    local c0; c0=$(consumed "$port")
    "$b" loadgen "${args[@]}" --requests "$n" --quiet --no-verify --json "$out/.baseline-run.json" >"$out/.baseline-run.txt" 2>>"$out/baseline-$side-$flow-$pair-loadgen.log" &
    local lg=$!
    until [ "$(consumed "$port")" != "$c0" ]; do
      kill -0 "$lg" 2>/dev/null || break
      sleep 0.02
    done
    local t0 t1
    t0=$(awk '{print $14 + $15}' "/proc/$w/stat")
    wait "$lg" || { echo "the $side load generator failed: $(cat "$out/.baseline-run.txt")" >&2; stop_workers; exit 1; }
    t1=$(awk '{print $14 + $15}' "/proc/$w/stat")
    stop_workers
    bin=$today drop_stampede "$name"
    python3 -c "import sys; print(f'{($t1 - $t0) * 1e6 / $tick / $n:.2f}', sys.argv[1])" \
      "$(grep -o '[0-9]* requests/s end to end' "$out/.baseline-run.txt" | cut -d' ' -f1)"
  )
}
tick=$(getconf CLK_TCK)
: >"$out/baseline.txt"
for flow in drop orders; do
  echo "== $flow: the worker of $label against today's, $pairs interleaved pairs"
  for pair in $(seq 1 "$pairs"); do
    if (( pair % 2 )); then order="start now"; else order="now start"; fi
    declare -A us=() rate=()
    for side in $order; do
      b=$bin; [ "$side" = start ] && b=$base_bin
      read -r us[$side] rate[$side] < <(run "$side" "$b" "$flow" "$pair")
      # run's start_workers took the next port in a subshell: move past it.
      worker_port=$((worker_port + 1))
    done
    python3 - "$flow" "$pair" "${us[start]}" "${us[now]}" "${rate[start]}" "${rate[now]}" "$start_label" <<'PY' | tee -a "$out/baseline.txt"
import sys
flow, pair, start, now, r_start, r_now, start_label = sys.argv[1:]
start, now = float(start), float(now)
print(f"{flow}, pair {pair}: worker {start:.2f} µs per request {start_label}, {now:.2f} now ({now / start:.2f}×);"
      f" end to end {int(r_start):,}/s and {int(r_now):,}/s")
PY
  done
done
rm -f "$out"/.baseline-*
python3 - "$out/baseline.txt" "$label" "$worker_env" <<'PY' | tee -a "$out/baseline.txt"
import re, statistics, sys
path, rev, setting = sys.argv[1:]
runs = {}
for line in open(path):
    if (m := re.match(r"(\w+), pair \d+: worker ([\d.]+) µs .* ([\d.]+) now \(([\d.]+)×\)", line)):
        runs.setdefault(m.group(1), []).append((float(m.group(2)), float(m.group(3)), float(m.group(4))))
for flow, rs in runs.items():
    ratio = statistics.median(r for _, _, r in rs)
    first, now = statistics.median(s for s, _, _ in rs), statistics.median(n for _, n, _ in rs)
    if setting:  # both sides today's build: name them by the setting, not "start"
        print(f"{flow}: worker CPU per request without / with {setting}, median of {len(rs)} pairs: {ratio:.2f}×"
              f" (with it {first:.2f} µs, without {now:.2f} µs)")
    else:  # the line summary.py reads
        print(f"{flow}: worker CPU per request now / at {rev}, median of {len(rs)} pairs: {ratio:.2f}×"
              f" (start {first:.2f} µs, now {now:.2f} µs)")
PY
