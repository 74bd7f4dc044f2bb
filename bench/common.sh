# Sourced by the bench scripts: services up, a release build, and a stampede
# of its own (database, topic prefix, groups, Redis keys named after $1) that
# is dropped on exit (database, topics, Redis keys) along with every process
# listed in $pids.
bash scripts/services.sh up
cargo build --release --locked
bin=target/release/stampede
tag=$1$(date +%s)
export STAMPEDE_DATABASE__URL=postgres://postgres@127.0.0.1:5432/$tag
export STAMPEDE_KAFKA__TOPIC_PREFIX=$tag.
export STAMPEDE_KAFKA__GROUP_ID=$tag
export STAMPEDE_REDIS__KEY_PREFIX=$tag
export STAMPEDE_LOG__FILTER=warn
"$bin" migrate >/dev/null
"$bin" topics create >/dev/null
pids=()
# drop_stampede NAME: the topics under the exported prefix (deleted by
# "$bin"), then the Redis keys and the database named NAME.
drop_stampede() {
  "$bin" topics delete --yes >/dev/null 2>&1 || true
  redis-cli -h 127.0.0.1 --scan --pattern "$1:*" | xargs -r -n 1000 redis-cli -h 127.0.0.1 del >/dev/null
  psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS \"$1\" WITH (FORCE)" >/dev/null
}
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  drop_stampede "$tag" >/dev/null 2>&1 || true
}
trap cleanup EXIT
# consumed PORT: the sum of stampede_messages_consumed_total at a worker's
# metrics address (a batch counts once its results are out).
consumed() { curl -sf "http://127.0.0.1:$1/metrics" | awk '/^stampede_messages_consumed_total[{]/ {s += $2} END {printf "%d", s}'; }

# Worker processes. start_workers N ONLY [NAME] starts N `stampede worker
# --only ONLY`, each serving metrics on a port of its own (logs in
# $out/worker-NAME-i.log), and returns once every one holds partitions;
# $workers lists them as pid:port. stop_workers stops them (SIGTERM: they
# finish their batch and commit) and waits for them.
# A process's peak resident memory (VmHWM) in MiB; reset_peak starts each
# given process's peak afresh (writing 5 to clear_refs; Linux ≥ 4.0).
peak_mib() { awk '/VmHWM/{print int($2 / 1024)}' "/proc/$1/status" 2>/dev/null || echo 0; }
reset_peak() { local p; for p in "$@"; do { echo 5 >"/proc/$p/clear_refs"; } 2>/dev/null || true; done; }

worker_port=${worker_port:-9300}
start_workers() {
  local n=$1 only=$2 name=${3:-$2-$1}
  workers=()
  for i in $(seq 1 "$n"); do
    worker_port=$((worker_port + 1))
    "$bin" worker --only "$only" --metrics-addr "127.0.0.1:$worker_port" >"$out/worker-$name-$i.log" 2>&1 &
    pids+=($!)
    workers+=("$!:$worker_port")
  done
  local w deadline
  for w in "${workers[@]}"; do
    deadline=$((SECONDS + 60))
    until curl -sf "http://127.0.0.1:${w#*:}/metrics" | grep -q '^stampede_consumer_assigned_partitions{.*} [1-9]'; do
      (( SECONDS < deadline )) || { echo "worker ${w%%:*} never got partitions" >&2; exit 1; }
      sleep 0.2
    done
  done
}
stop_workers() {
  local w
  for w in "${workers[@]}"; do kill -TERM "${w%%:*}" 2>/dev/null || true; done
  for w in "${workers[@]}"; do wait "${w%%:*}" 2>/dev/null || true; done
}
