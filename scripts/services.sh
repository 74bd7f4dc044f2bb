#!/usr/bin/env bash
# Makes PostgreSQL, Redis (plus a three-node Redis Cluster) and Apache Kafka
# run on loopback, idempotently: uses what is already running, starts what is
# installed, installs what is missing (Debian packages; Kafka's jars from Maven
# Central, see scripts/kafka.sh), and waits until each one answers.
#
#   scripts/services.sh up              start (and install) what is missing
#   scripts/services.sh status          say what runs
#   scripts/services.sh down            stop what this script started (Kafka, Redis)
#   scripts/services.sh cluster up|down|status
#                                       a three-broker Kafka cluster on
#                                       127.0.0.1:19092-19094 for fault runs
#
# Environment:
#   STAMPEDE_SERVICES_DIR  where data, logs and pid files go (default .services)
#   STAMPEDE_CACHE_DIR     where Kafka's jars are cached (default ~/.cache/stampede)
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
state_dir=${STAMPEDE_SERVICES_DIR:-$here/.services}
mkdir -p "$state_dir"
# shellcheck source=kafka.sh
source "$here/scripts/kafka.sh"

say() { printf '[services] %s\n' "$*"; }
fail() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }


wait_for() { # name, seconds, command...
  local name=$1 seconds=$2; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if (( SECONDS >= deadline )); then fail "$name did not answer within ${seconds}s"; fi
    sleep 0.5
  done
  say "$name answers"
}

apt_updated=""
apt_install() {
  command -v apt-get >/dev/null || fail "apt-get not found: install $* yourself"
  if [ -z "$apt_updated" ]; then
    say "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  say "installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

pg_ok() { pg_isready -h 127.0.0.1 -p 5432 -q && psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'select 1' | grep -q 1; }

postgres_up() {
  if command -v pg_isready >/dev/null && pg_ok; then say "PostgreSQL already running on 127.0.0.1:5432"; return; fi
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then apt_install postgresql postgresql-client; fi
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  local hba=/etc/postgresql/$version/main/pg_hba.conf
  # Local development trusts loopback (as the contract's defaults assume).
  if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
    sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
    say "PostgreSQL: loopback connections trusted in $hba"
  fi
  if pg_isready -h 127.0.0.1 -p 5432 -q; then
    pg_ctlcluster --skip-systemctl-redirect "$version" main reload || true
  else
    say "starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
  fi
  wait_for PostgreSQL 60 pg_ok
}

redis_up() {
  if command -v redis-cli >/dev/null && [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = PONG ]; then say "Redis already running on 127.0.0.1:6379"; return; fi
  command -v redis-server >/dev/null || apt_install redis-server
  say "starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no \
    --pidfile "$state_dir/redis.pid" --logfile "$state_dir/redis.log" --dir "$state_dir"
  wait_for Redis 30 sh -c '[ "$(redis-cli -h 127.0.0.1 -p 6379 ping)" = PONG ]'
}

# A three-node Redis Cluster on 127.0.0.1:7001-7003, for redis.cluster = true
# (tests use it to show coupons spreading over shards).
cluster_ports="7001 7002 7003"
cluster_ok() { redis-cli -p 7001 cluster info 2>/dev/null | grep -q 'cluster_state:ok'; }

redis_cluster_up() {
  if cluster_ok; then say "Redis Cluster already running on 127.0.0.1:7001-7003"; return; fi
  command -v redis-server >/dev/null || apt_install redis-server
  for p in $cluster_ports; do
    if ! redis-cli -p "$p" ping >/dev/null 2>&1; then
      mkdir -p "$state_dir/cluster-$p"
      rm -f "$state_dir/cluster-$p/nodes.conf"
      redis-server --daemonize yes --bind 127.0.0.1 --port "$p" --cluster-enabled yes \
        --cluster-config-file "$state_dir/cluster-$p/nodes.conf" --save '' --appendonly no \
        --pidfile "$state_dir/cluster-$p.pid" --logfile "$state_dir/cluster-$p.log" --dir "$state_dir/cluster-$p"
    fi
  done
  for p in $cluster_ports; do wait_for "Redis cluster node $p" 30 redis-cli -p "$p" ping; done
  redis-cli --cluster create 127.0.0.1:7001 127.0.0.1:7002 127.0.0.1:7003 --cluster-replicas 0 --cluster-yes >"$state_dir/cluster-create.log" 2>&1 \
    || { cat "$state_dir/cluster-create.log" >&2; fail "could not form the Redis Cluster"; }
  wait_for "Redis Cluster" 30 cluster_ok
}

status() {
  if command -v pg_isready >/dev/null && pg_ok; then say "PostgreSQL: up"; else say "PostgreSQL: down"; fi
  if [ "$(redis-cli -h 127.0.0.1 ping 2>/dev/null)" = PONG ]; then say "Redis: up"; else say "Redis: down"; fi
  if cluster_ok; then say "Redis Cluster: up"; else say "Redis Cluster: down"; fi
  kafka_status || true
  kafka_cluster_status || true
}

stop_pidfile() {
  local name=$1 file=$state_dir/$2
  if [ -f "$file" ] && kill -0 "$(cat "$file")" 2>/dev/null; then
    kill "$(cat "$file")" && say "stopped $name"
  fi
  rm -f "$file"
}

case "${1:-up}" in
  up) postgres_up; redis_up; redis_cluster_up; kafka_up; say "all services up" ;;
  status) status ;;
  cluster) kafka_main cluster "${2:-up}" "${3:-}" ;;
  down)
    kafka_down
    kafka_cluster_down
    stop_pidfile Redis redis.pid
    for p in $cluster_ports; do stop_pidfile "Redis cluster node $p" "cluster-$p.pid"; done ;;
  -h|--help|help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' ;;
  *) echo "usage: $0 up|status|down|cluster up|down|status (--help)" >&2; exit 2 ;;
esac
