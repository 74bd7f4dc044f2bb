#!/usr/bin/env bash
# The long fault run: a mixed load (charges, coupon requests, orders) through
# stampede on Apache Kafka while faults are injected, then loadgen's verdict
# and `stampede audit` after every round. A short round of it runs in
# scripts/test.sh (and so in CI).
#
# The run has services of its own, so nothing it does touches the machine's
# shared ones: a Redis on CHAOS_REDIS_PORT, a PostgreSQL cluster on
# CHAOS_PG_PORT (initdb'd under the run's folder), and Apache Kafka: a
# single node of its own (CHAOS_KAFKA=single, default; data under the run's
# folder, so it survives its restarts) or three brokers of its own like
# `scripts/services.sh cluster up` (CHAOS_KAFKA=cluster; 127.0.0.1:19092-19094,
# so not beside a running `services.sh cluster`).
#
# Faults, each named in CHAOS_FAULTS (default: all), per round:
#   kill     SIGKILL a worker process CHAOS_KILLS times, restarting it each time
#   broker   single: restart the broker (SIGTERM); cluster: SIGKILL the
#            leader of a coupon request partition mid-drop, start it again later
#   stall    SIGSTOP a worker past its session timeout (6 s), then SIGCONT: the
#            group hands its partitions over while it still holds a batch
#   scale    scale the worker processes from CHAOS_WORKERS up by two and back (SIGTERM)
#   redis    restart Redis empty (counters are rebuilt from PostgreSQL)
#   snapshot restart Redis from an RDB snapshot taken a few seconds earlier
#            (grants, holds and stock as they were then)
#   postgres pause PostgreSQL (SIGSTOP) for CHAOS_PG_PAUSE seconds, longer than
#            the workers' max.poll.interval.ms (10 s here)
#
# Environment: CHAOS_ROUNDS (3), CHAOS_REQUESTS per round (30000), CHAOS_RATE
# (2000/s), CHAOS_WORKERS (2 processes, each running every flow), CHAOS_KILLS
# (3), CHAOS_PG_PAUSE (12), CHAOS_KAFKA (single|cluster), CHAOS_FAULTS
# ("kill broker stall scale redis snapshot postgres"), CHAOS_REDIS_PORT
# (6391), CHAOS_PG_PORT (5439), CHAOS_KAFKA_PORT (19392, single node only),
# CHAOS_BIN (a stampede binary to use instead of building target/release),
# CHAOS_KEEP (set: keep the services' data afterwards; PostgreSQL's is in
# /tmp/stampede-chaos-pg.*).
# Figures: bench/results/chaos-<time>/chaos.csv, one line per round.
# The sleeps below space the faults out in time; they synchronise nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
here=$PWD
rounds=${CHAOS_ROUNDS:-3}
requests=${CHAOS_REQUESTS:-30000}
rate=${CHAOS_RATE:-2000}
nworkers=${CHAOS_WORKERS:-2}
kills=${CHAOS_KILLS:-3}
pg_pause=${CHAOS_PG_PAUSE:-12}
kafka_mode=${CHAOS_KAFKA:-single}
faults_wanted=${CHAOS_FAULTS:-kill broker stall scale redis snapshot postgres}
redis_port=${CHAOS_REDIS_PORT:-6391}
pg_port=${CHAOS_PG_PORT:-5439}
kafka_port=${CHAOS_KAFKA_PORT:-19392}

say() { printf '[chaos] %s\n' "$*"; }
# Announces a fault of this round, saying so when it comes after the load
# ended (nothing in flight then: it tests recovery, not the requests).
fault() {
  if kill -0 "$load" 2>/dev/null; then
    say "round $round: $*"
  else
    after_load=$((after_load + 1))
    say "round $round: $* (after the load ended)"
  fi
}
wants() { [[ " $faults_wanted " == *" $1 "* ]]; }

tag=chaos-$(date -u +%Y%m%dT%H%M%SZ)
out=$here/bench/results/$tag
mkdir -p "$out"
bash scripts/services.sh up >/dev/null # installs PostgreSQL, Redis, Java, Kafka's jars when missing
# From here on, Kafka's data, logs and pids are the run's own.
export STAMPEDE_SERVICES_DIR=$out/services
mkdir -p "$STAMPEDE_SERVICES_DIR"
# shellcheck source=kafka.sh
source "$here/scripts/kafka.sh"
[ -n "${CHAOS_BIN:-}" ] || cargo build --release --locked
bin=${CHAOS_BIN:-$here/target/release/stampede}

# --- the run's own services ----------------------------------------------------
redis_dir=$out/redis
mkdir -p "$redis_dir"
redis_start() {
  redis-server --daemonize yes --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no \
    --dir "$redis_dir" --dbfilename dump.rdb --pidfile "$redis_dir/redis.pid" --logfile "$redis_dir/redis.log"
  until [ "$(redis-cli -p "$redis_port" ping 2>/dev/null)" = PONG ]; do sleep 0.1; done
}
redis_stop() { redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true; while redis-cli -p "$redis_port" ping >/dev/null 2>&1; do sleep 0.1; done; }
# Redis loads $redis_dir/dump.rdb at start when there is one.
redis_restart_empty() { redis_stop; rm -f "$redis_dir/dump.rdb"; redis_start; }

pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
# The PostgreSQL cluster runs as the postgres user, which may not reach the
# run's folder (a checkout under /root): its data lives under /tmp instead.
pg_dir=$(mktemp -d /tmp/stampede-chaos-pg.XXXXXX)
chown postgres:postgres "$pg_dir"
pg_as() { runuser -u postgres -- "$@"; }
pg_start() {
  if [ ! -f "$pg_dir/PG_VERSION" ]; then
    pg_as "$pg_bin/initdb" -D "$pg_dir" -A trust -U postgres >"$out/initdb.log"
  fi
  pg_as "$pg_bin/pg_ctl" -D "$pg_dir" -l "$pg_dir/server.log" -w \
    -o "-p $pg_port -k /tmp -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=on" start >/dev/null
}
pg_stop() { pg_as "$pg_bin/pg_ctl" -D "$pg_dir" -m fast -w stop >/dev/null 2>&1 || true; }
pg_postmaster() { head -n 1 "$pg_dir/postmaster.pid"; }

if [ "$kafka_mode" = cluster ]; then
  bash scripts/services.sh cluster up >/dev/null
  brokers=$(cluster_brokers)
  replication=3
else
  chaos_kafka_dir=$out/kafka
  mkdir -p "$chaos_kafka_dir"
  kafka_start() {
    kafka_node_start "$chaos_kafka_dir" 1 "$kafka_port" $((kafka_port + 1)) "1@127.0.0.1:$((kafka_port + 1))" 1 1 768m "$chaos_kafka_dir/cluster.id"
    kafka_wait "$kafka_port" 1 120 "$chaos_kafka_dir/kafka.log"
  }
  kafka_start
  brokers=127.0.0.1:$kafka_port
  replication=1
fi
redis_start
pg_start

cat >"$out/chaos.toml" <<EOF
[kafka]
brokers = "$brokers"
topic_prefix = "$tag."
group_id = "$tag"
replication_factor = $replication
session_timeout_ms = 6000
heartbeat_interval_ms = 500
# Below the PostgreSQL pause, so a worker retrying one batch in place outlives
# its place in the group and another worker takes the partition over.
max_poll_interval_ms = 10000

[database]
url = "postgres://postgres@127.0.0.1:$pg_port/stampede"
max_connections = 8

[redis]
url = "redis://127.0.0.1:$redis_port"
key_prefix = "$tag"

[log]
filter = "warn"
EOF
run() { "$bin" --config "$out/chaos.toml" "$@"; }
run migrate >/dev/null
run topics create >/dev/null

workers=()
# Started directly (not through `run`), so $! is the worker itself and the
# signals below reach it.
start_worker() { "$bin" --config "$out/chaos.toml" worker >>"$out/workers.log" 2>&1 & workers+=($!); }
stop_all() {
  for p in "${workers[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${workers[@]}"; do wait "$p" 2>/dev/null || true; done
  workers=()
}
finish() {
  stop_all
  redis_stop
  pg_stop
  if [ "$kafka_mode" = cluster ]; then kafka_cluster_down >/dev/null; else kafka_node_stop "$chaos_kafka_dir" TERM; fi
  # The services' data (gigabytes after a long run) goes; figures and logs stay.
  [ -f "$pg_dir/server.log" ] && cp "$pg_dir/server.log" "$out/postgres.log"
  [ -n "${CHAOS_KEEP:-}" ] || rm -rf "$pg_dir" "$out/redis" "$out/kafka" "$out/services"
}
trap finish EXIT

killed_leader=""
broker_fault() {
  if [ "$kafka_mode" = cluster ]; then
    local topic="$tag.coupon.requests.v1" leader
    leader=$(python3 scripts/kafka/metadata.py leader "${brokers%%,*}" "$topic" 0 2>/dev/null \
      || python3 scripts/kafka/metadata.py leader "$(echo "$brokers" | cut -d, -f2)" "$topic" 0)
    fault "SIGKILL broker $leader, leader of $topic-0"
    bash scripts/kafka.sh cluster kill "$leader" >/dev/null
    killed_leader=$leader
  else
    fault "restart the broker"
    kafka_node_stop "$chaos_kafka_dir" TERM
    kafka_start
  fi
}

printf 'round,requests,rate,workers,faults,kills,loadgen_verdict,audit_violations,answered_per_s\n' >"$out/chaos.csv"
total_faults=0
for round in $(seq 1 "$rounds"); do
  faults=0 round_kills=0 after_load=0
  for _ in $(seq 1 "$nworkers"); do start_worker; done
  run loadgen --scenario mixed --requests "$requests" --rate "$rate" --timeout-secs 1200 --quiet \
    --json "$out/round-$round.json" >"$out/round-$round.txt" 2>&1 &
  load=$!
  if wants kill; then
    for kill_no in $(seq 1 "$kills"); do
      sleep 2; fault "SIGKILL a worker ($kill_no/$kills), restart it"
      kill -9 "${workers[0]}"; wait "${workers[0]}" 2>/dev/null || true
      workers=("${workers[@]:1}"); start_worker; faults=$((faults + 1)); round_kills=$((round_kills + 1))
    done
  fi
  if wants broker; then sleep 2; broker_fault; faults=$((faults + 1)); fi
  if wants scale; then
    sleep 3; fault "scale $nworkers → $((nworkers + 2)) workers"
    start_worker; start_worker; faults=$((faults + 1))
    sleep 5; fault "scale back to $nworkers"
    for p in "${workers[@]:$nworkers}"; do kill -TERM "$p"; wait "$p" 2>/dev/null || true; done
    workers=("${workers[@]:0:$nworkers}"); faults=$((faults + 1))
  fi
  if wants stall; then
    sleep 2; fault "SIGSTOP a worker for 10 s (past its 6 s session timeout)"
    kill -STOP "${workers[0]}"; sleep 10; kill -CONT "${workers[0]}"; faults=$((faults + 1))
  fi
  if wants redis; then
    sleep 3; fault "restart Redis empty"
    redis_restart_empty; faults=$((faults + 1))
  fi
  if wants snapshot; then
    sleep 2; fault "snapshot Redis, then 4 s later restart it from that snapshot"
    redis-cli -p "$redis_port" save >/dev/null
    sleep 4; redis_stop; redis_start; faults=$((faults + 1))
  fi
  if wants postgres; then
    sleep 3; fault "pause PostgreSQL for $pg_pause s"
    pm=$(pg_postmaster)
    pkill -STOP -P "$pm" || true; kill -STOP "$pm"
    sleep "$pg_pause"
    kill -CONT "$pm"; pkill -CONT -P "$pm" || true; faults=$((faults + 1))
  fi
  if [ -n "$killed_leader" ]; then
    sleep 2; say "round $round: start broker $killed_leader again"
    bash scripts/kafka.sh cluster start "$killed_leader" >/dev/null; killed_leader=""
  fi
  verdict=pass
  wait "$load" || verdict=FAIL
  grep -E '^(answered|latency|outcomes|verdict)' "$out/round-$round.txt" | sed "s/^/[chaos] round $round: /" || true
  if (( after_load > 0 )); then
    say "round $round: $after_load fault(s) came after the load ended; more CHAOS_REQUESTS or a lower CHAOS_RATE keeps them under load"
  fi
  stop_all
  run audit >"$out/round-$round-audit.txt" 2>&1 || true
  violations=$( (run audit --json || true) | python3 -c 'import json,sys; print(sum(not c["passed"] for c in json.load(sys.stdin)["checks"]))' 2>/dev/null || echo "?")
  per_s=$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["throughput_per_sec"]))' "$out/round-$round.json" 2>/dev/null || echo "?")
  total_faults=$((total_faults + faults))
  printf '%s,%s,%s,%s,%s,%s,%s,%s,%s\n' "$round" "$requests" "$rate" "$nworkers" "$faults" "$round_kills" "$verdict" "$violations" "$per_s" | tee -a "$out/chaos.csv"
done
say "$rounds rounds, $((rounds * requests)) requests, $total_faults faults injected on Apache Kafka ($kafka_mode); results in $out/chaos.csv"
! grep -qE ',FAIL,|,([1-9][0-9]*|\?),[^,]*$' "$out/chaos.csv"
